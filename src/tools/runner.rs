//! An event-source runner: polls a DynamoDB stream and invokes the function the way Lambda's
//! event source mapping does, including what it does with a partial batch response.
//!
//! Per shard, in lineage order (a child after its parent is finished):
//! - batches of at most `batch_size` records and 6 MB of payload, gathered for at most the
//!   batching window;
//! - `batchItemFailures`: checkpoint just before the lowest reported record and deliver again
//!   from it (records after it included); an identifier that is null, empty or not in the batch
//!   fails the whole batch, as Lambda treats it;
//! - an error (whole batch failed): retry the same batch, split in halves first when `bisect`
//!   is on; after `max_retry_attempts` retries, give the batch up and move on (recorded in the
//!   report, as Lambda sends it to the on-failure destination);
//! - every retry of a batch that made no progress waits first, exponentially longer up to a cap
//!   (as the event source mapping backs off), and logs what failed and when it tries again.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use aws_lambda_events::event::streams::DynamoDbEventResponse;
use aws_sdk_dynamodbstreams::Client;
use aws_sdk_dynamodbstreams::types::{Record, ShardIteratorType};

use crate::handler::{Indexer, Summary};
use crate::sink::backoff::Backoff;
use crate::tools::ddb_json;

/// Lambda's invocation payload limit.
pub const MAX_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;

/// How the runner batches and retries, named after the event source mapping's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `BatchSize`: 1..=10,000 records per invocation.
    pub batch_size: usize,
    /// `MaximumBatchingWindowInSeconds`: how long to gather a batch.
    pub batching_window: Duration,
    /// `StartingPosition`: TRIM_HORIZON (true) or LATEST (false).
    pub trim_horizon: bool,
    /// `MaximumRetryAttempts`: retries of a failing batch; `None` = forever (Lambda's -1).
    pub max_retry_attempts: Option<u32>,
    /// `BisectBatchOnFunctionError`.
    pub bisect: bool,
    /// Stop once every shard has been read to its end and nothing new arrived for this long.
    pub stop_when_idle: Option<Duration>,
    /// The wait before retry `k` of a batch that made no progress: `base × 2^(k-1)`, capped.
    pub retry_backoff: Backoff,
}

impl Settings {
    /// The default wait between retries of one batch: 500 ms, doubling up to 30 s.
    pub const RETRY_BACKOFF: Backoff = Backoff {
        base: Duration::from_millis(500),
        max: Duration::from_secs(30),
    };
}

/// How often the runner logs its totals while it delivers.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// What the runner did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub invocations: u64,
    /// Records delivered, counting re-deliveries.
    pub delivered: u64,
    /// Records checkpointed (done, as far as Lambda is concerned).
    pub completed: u64,
    pub partial_failures: u64,
    /// Deliveries of records that had been delivered before (after a partial failure or a
    /// function error); a record given up is not delivered again, so not counted again.
    pub redelivered: u64,
    pub function_errors: u64,
    pub bisections: u64,
    /// Records given up after the retry limit (what Lambda sends to the on-failure destination).
    pub gave_up: u64,
    /// Sequence numbers given up.
    pub gave_up_sequence_numbers: Vec<String>,
}

/// The function under the runner: in-process, or over the Lambda Invoke API.
pub trait Function {
    /// Invokes the function; `Err` is a function error (the whole batch failed).
    fn invoke(
        &self,
        payload: String,
    ) -> impl std::future::Future<Output = Result<DynamoDbEventResponse, String>> + Send;
}

/// The handler, called in this process; it keeps the invocations' record counts.
pub struct InProcess<'a> {
    pub indexer: &'a Indexer,
    /// The function timeout Lambda would give each invocation.
    pub timeout: Duration,
    pub totals: std::sync::Mutex<Summary>,
}

impl<'a> InProcess<'a> {
    pub fn new(indexer: &'a Indexer, timeout: Duration) -> InProcess<'a> {
        InProcess {
            indexer,
            timeout,
            totals: Default::default(),
        }
    }

    /// The record counts of every invocation so far.
    pub fn totals(&self) -> Summary {
        self.totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Function for InProcess<'_> {
    async fn invoke(&self, payload: String) -> Result<DynamoDbEventResponse, String> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let (response, summary) = self
            .indexer
            .handle(&payload, deadline)
            .await
            .map_err(|e| e.to_string())?;
        self.totals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(&summary);
        Ok(response)
    }
}

/// A function behind the Lambda Invoke API, e.g. `cargo lambda watch` on
/// `http://127.0.0.1:9000` with function name `stream-indexer`.
pub struct InvokeApi {
    pub endpoint: String,
    pub function_name: String,
    pub client: reqwest::Client,
}

impl Function for InvokeApi {
    async fn invoke(&self, payload: String) -> Result<DynamoDbEventResponse, String> {
        let url = format!(
            "{}/2015-03-31/functions/{}/invocations",
            self.endpoint.trim_end_matches('/'),
            self.function_name
        );
        let res = self
            .client
            .post(url)
            .body(payload)
            .send()
            .await
            .map_err(|e| format!("invoke: {e}"))?;
        let failed =
            res.headers().contains_key("x-amz-function-error") || !res.status().is_success();
        let body = res
            .text()
            .await
            .map_err(|e| format!("invoke response: {e}"))?;
        if failed {
            return Err(format!("function error: {body}"));
        }
        if body.trim().is_empty() || body.trim() == "null" {
            return Ok(DynamoDbEventResponse::default());
        }
        serde_json::from_str(&body)
            .map_err(|e| format!("unreadable function response ({e}): {body}"))
    }
}

/// One stream record as Lambda delivers it, and its sequence number.
struct Pending {
    sequence_number: String,
    json: String,
    /// Whether an invocation has had this record already.
    delivered: bool,
}

/// Runs until stopped by `stop_when_idle` (or forever).
pub async fn run<F: Function>(
    client: &Client,
    stream_arn: &str,
    function: &F,
    settings: &Settings,
) -> Result<Report, RunnerError> {
    let mut report = Report::default();
    let mut finished: Vec<String> = Vec::new();
    // Open shards' positions: the next iterator to read, and records read but not yet done.
    let mut iterators: HashMap<String, Option<String>> = HashMap::new();
    let mut buffers: HashMap<String, VecDeque<Pending>> = HashMap::new();
    let mut idle_since = tokio::time::Instant::now();
    let mut logged = (tokio::time::Instant::now(), Report::default());
    loop {
        if logged.0.elapsed() >= PROGRESS_EVERY && logged.1 != report {
            tracing::info!(
                invocations = report.invocations,
                delivered = report.delivered,
                completed = report.completed,
                redelivered = report.redelivered,
                gave_up = report.gave_up,
                "runner progress"
            );
            logged = (tokio::time::Instant::now(), report.clone());
        }
        let shards = describe_shards(client, stream_arn).await?;
        let mut progressed = false;
        for shard in &shards {
            if finished.contains(&shard.id) {
                continue;
            }
            if let Some(parent) = &shard.parent
                && shards.iter().any(|s| &s.id == parent)
                && !finished.contains(parent)
            {
                continue;
            }
            if !iterators.contains_key(&shard.id) {
                let kind = if settings.trim_horizon {
                    ShardIteratorType::TrimHorizon
                } else {
                    ShardIteratorType::Latest
                };
                let it = client
                    .get_shard_iterator()
                    .stream_arn(stream_arn)
                    .shard_id(&shard.id)
                    .shard_iterator_type(kind)
                    .send()
                    .await
                    .map_err(|e| {
                        RunnerError(format!(
                            "GetShardIterator {}: {}",
                            shard.id,
                            crate::telemetry::error_chain(&e)
                        ))
                    })?;
                iterators.insert(shard.id.clone(), it.shard_iterator);
            }
            let buffer = buffers.entry(shard.id.clone()).or_default();
            let iterator = iterators.get_mut(&shard.id).expect("inserted above");
            let read = fill(client, iterator, buffer, settings).await?;
            if buffer.is_empty() {
                if iterator.is_none() {
                    finished.push(shard.id.clone());
                }
                progressed |= read > 0;
                continue;
            }
            progressed = true;
            deliver(function, buffer, settings, &mut report).await;
        }
        if progressed {
            idle_since = tokio::time::Instant::now();
        } else if let Some(idle) = settings.stop_when_idle {
            if idle_since.elapsed() >= idle {
                return Ok(report);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Reads records into the buffer until it holds a batch or the window has passed. Returns how
/// many were read.
async fn fill(
    client: &Client,
    iterator: &mut Option<String>,
    buffer: &mut VecDeque<Pending>,
    settings: &Settings,
) -> Result<usize, RunnerError> {
    let started = tokio::time::Instant::now();
    let mut read = 0;
    while buffer.len() < settings.batch_size {
        let Some(it) = iterator.clone() else { break };
        let out = client
            .get_records()
            .shard_iterator(it)
            .limit(settings.batch_size.min(1000) as i32)
            .send()
            .await
            .map_err(|e| {
                RunnerError(format!("GetRecords: {}", crate::telemetry::error_chain(&e)))
            })?;
        *iterator = out.next_shard_iterator;
        let records = out.records.unwrap_or_default();
        read += records.len();
        let empty = records.is_empty();
        for r in &records {
            buffer.push_back(to_lambda_record(r));
        }
        if empty && started.elapsed() >= settings.batching_window {
            break;
        }
        if empty {
            tokio::time::sleep(Duration::from_millis(50).min(settings.batching_window)).await;
        }
    }
    Ok(read)
}

/// Delivers batches from the front of the buffer until it is empty, following Lambda's rules.
async fn deliver<F: Function>(
    function: &F,
    buffer: &mut VecDeque<Pending>,
    settings: &Settings,
    report: &mut Report,
) {
    let mut attempts = 0u32;
    let mut limit = settings.batch_size;
    while !buffer.is_empty() {
        let n = batch_len(buffer, limit);
        let payload = format!(
            "{{\"Records\":[{}]}}",
            buffer
                .iter()
                .take(n)
                .map(|p| p.json.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        report.invocations += 1;
        report.delivered += n as u64;
        for p in buffer.iter_mut().take(n) {
            report.redelivered += u64::from(p.delivered);
            p.delivered = true;
        }
        let first = buffer[0].sequence_number.clone();
        let result = function.invoke(payload).await;
        let failed_at = match &result {
            Ok(response) => lowest_reported(response, buffer.iter().take(n)),
            Err(_) => Err(()),
        };
        let failure = match failed_at {
            Ok(None) => {
                buffer.drain(..n);
                report.completed += n as u64;
                attempts = 0;
                limit = settings.batch_size;
                continue;
            }
            Ok(Some(p)) => {
                report.partial_failures += 1;
                buffer.drain(..p);
                report.completed += p as u64;
                if p > 0 {
                    // Progress: the next batch starts at the reported record, first attempt.
                    attempts = 0;
                    continue;
                }
                attempts += 1;
                if give_up(attempts, settings) {
                    give_up_batch(buffer, n, report, attempts);
                    attempts = 0;
                    continue;
                }
                let reported = result.as_ref().map_or(0, |r| r.batch_item_failures.len());
                format!("{reported} of {n} records reported as failed")
            }
            Err(()) => {
                report.function_errors += 1;
                attempts += 1;
                if give_up(attempts, settings) {
                    give_up_batch(buffer, n, report, attempts);
                    attempts = 0;
                    limit = settings.batch_size;
                    continue;
                }
                if settings.bisect && n > 1 {
                    report.bisections += 1;
                    limit = n.div_ceil(2);
                }
                match &result {
                    Err(e) => format!("function error: {e}"),
                    Ok(_) => "the response fails the whole batch (an unknown, empty or null itemIdentifier)".into(),
                }
            }
        };
        let delay = settings.retry_backoff.ceiling(attempts);
        tracing::warn!(
            batch = n,
            first_sequence_number = %first,
            attempt = attempts,
            retry_in_ms = delay.as_millis() as u64,
            "batch failed: {failure}; retrying"
        );
        Backoff::wait(delay).await;
    }
}

/// How many records from the front of the buffer make the next batch: at most `limit` and
/// 6 MB of payload, and at least one.
fn batch_len(buffer: &VecDeque<Pending>, limit: usize) -> usize {
    let mut size = "{\"Records\":[]}".len();
    let mut n = 0;
    for p in buffer.iter().take(limit) {
        if n > 0 && size + p.json.len() + 1 > MAX_PAYLOAD_BYTES {
            break;
        }
        size += p.json.len() + 1;
        n += 1;
    }
    n
}

fn give_up(attempts: u32, settings: &Settings) -> bool {
    settings
        .max_retry_attempts
        .is_some_and(|max| attempts > max)
}

fn give_up_batch(buffer: &mut VecDeque<Pending>, n: usize, report: &mut Report, attempts: u32) {
    tracing::warn!(
        batch = n,
        first_sequence_number = %buffer[0].sequence_number,
        attempts,
        "gave up a batch after the retry limit"
    );
    for p in buffer.drain(..n.min(buffer.len())) {
        report.gave_up += 1;
        report.gave_up_sequence_numbers.push(p.sequence_number);
    }
}

/// The batch position of the lowest reported record; `Err` when the response fails the whole
/// batch (a null, empty or unknown identifier).
fn lowest_reported<'a>(
    response: &DynamoDbEventResponse,
    batch: impl Iterator<Item = &'a Pending>,
) -> Result<Option<usize>, ()> {
    if response.batch_item_failures.is_empty() {
        return Ok(None);
    }
    let seqs: Vec<&str> = batch.map(|p| p.sequence_number.as_str()).collect();
    let mut lowest = usize::MAX;
    for f in &response.batch_item_failures {
        let id = f
            .item_identifier
            .as_deref()
            .filter(|s| !s.is_empty())
            .ok_or(())?;
        let p = seqs.iter().position(|s| *s == id).ok_or(())?;
        lowest = lowest.min(p);
    }
    Ok(Some(lowest))
}

/// A record from GetRecords in the shape Lambda puts in the event.
fn to_lambda_record(r: &Record) -> Pending {
    let d = r.dynamodb.as_ref();
    let seq = d
        .and_then(|d| d.sequence_number.clone())
        .unwrap_or_default();
    let mut out = String::from("{");
    let str_field = |out: &mut String, name: &str, v: &str| {
        out.push_str(&format!(
            "\"{name}\":{},",
            serde_json::to_string(v).expect("string")
        ));
    };
    if let Some(id) = &r.event_id {
        str_field(&mut out, "eventID", id);
    }
    if let Some(name) = &r.event_name {
        str_field(&mut out, "eventName", name.as_str());
    }
    str_field(
        &mut out,
        "eventVersion",
        r.event_version.as_deref().unwrap_or("1.1"),
    );
    str_field(&mut out, "eventSource", "aws:dynamodb");
    str_field(&mut out, "awsRegion", r.aws_region.as_deref().unwrap_or(""));
    if let Some(u) = &r.user_identity {
        out.push_str(&format!(
            "\"userIdentity\":{{\"type\":{},\"principalId\":{}}},",
            serde_json::to_string(u.r#type.as_deref().unwrap_or("")).expect("string"),
            serde_json::to_string(u.principal_id.as_deref().unwrap_or("")).expect("string")
        ));
    }
    out.push_str("\"dynamodb\":{");
    if let Some(d) = d {
        if let Some(t) = d.approximate_creation_date_time {
            // Lambda delivers whole epoch seconds.
            out.push_str(&format!("\"ApproximateCreationDateTime\":{},", t.secs()));
        }
        for (name, image) in [
            ("Keys", &d.keys),
            ("NewImage", &d.new_image),
            ("OldImage", &d.old_image),
        ] {
            if let Some(image) = image {
                out.push_str(&format!("\"{name}\":"));
                ddb_json::stream::write_item(&mut out, image);
                out.push(',');
            }
        }
        if let Some(size) = d.size_bytes {
            out.push_str(&format!("\"SizeBytes\":{size},"));
        }
        if let Some(v) = &d.stream_view_type {
            str_field(&mut out, "StreamViewType", v.as_str());
        }
        str_field(&mut out, "SequenceNumber", &seq);
    }
    if out.ends_with(',') {
        out.pop();
    }
    out.push('}');
    out.push('}');
    Pending {
        sequence_number: seq,
        json: out,
        delivered: false,
    }
}

struct ShardInfo {
    id: String,
    parent: Option<String>,
}

async fn describe_shards(client: &Client, stream_arn: &str) -> Result<Vec<ShardInfo>, RunnerError> {
    let mut shards = Vec::new();
    let mut start: Option<String> = None;
    loop {
        let out = client
            .describe_stream()
            .stream_arn(stream_arn)
            .set_exclusive_start_shard_id(start.clone())
            .send()
            .await
            .map_err(|e| {
                RunnerError(format!(
                    "DescribeStream: {}",
                    crate::telemetry::error_chain(&e)
                ))
            })?;
        let desc = out
            .stream_description
            .ok_or_else(|| RunnerError("DescribeStream: no description".into()))?;
        for s in desc.shards.unwrap_or_default() {
            shards.push(ShardInfo {
                id: s.shard_id.unwrap_or_default(),
                parent: s.parent_shard_id,
            });
        }
        match desc.last_evaluated_shard_id {
            Some(last) => start = Some(last),
            None => return Ok(shards),
        }
    }
}

/// The stream could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RunnerError(pub String);
