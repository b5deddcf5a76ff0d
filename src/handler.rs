//! One invocation: stream batch → changes → bulk delivery → quarantine → `batchItemFailures`,
//! with one log line that accounts for every record.

use std::time::{Duration, SystemTime};

use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use tokio::time::Instant;

use crate::config::Config;
use crate::pipeline::bulk::{self, ItemOutcome};
use crate::pipeline::change::{self, Disposition, NotAStreamEvent};
use crate::pipeline::plan::{self, Plan};
use crate::pipeline::version::VersionSource;
use crate::redact;
use crate::sink::backoff::Backoff;
use crate::sink::dispatch::{self, DeliveryStats, Limits};
use crate::sink::quarantine::{Entry, Quarantine};
use crate::sink::transport::OpenSearch;

/// What became of one record of the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    Indexed,
    Deleted,
    /// Already represented in the index: a 409 under external versioning, or a later record
    /// of the same key in this batch that was applied.
    Superseded,
    /// Could never succeed; stored in the quarantine index with its payload.
    Quarantined(String),
    /// Reported in `batchItemFailures` for Lambda to deliver again.
    Reported(String),
    /// Routed to no index (`ROUTES`).
    Skipped,
}

/// Counts for the invocation's log line. `records` equals the sum of the outcome counts
/// unless `unaccounted` is non-zero.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub records: usize,
    pub indexed: usize,
    pub deleted: usize,
    pub ttl_deleted: usize,
    pub superseded: usize,
    /// Routed to no index.
    pub skipped: usize,
    pub quarantined: usize,
    /// Reported for retry: retryable failures still unconfirmed when time ran out.
    pub retryable: usize,
    /// Reported for retry: permanent failures that could not be quarantined (or quarantine off).
    pub permanent: usize,
    pub unaccounted: usize,
    pub bulk_requests: u64,
    pub bulk_bytes: u64,
    /// Delivery rounds after the first (each re-sends what was retryable).
    pub retry_rounds: u64,
    /// Whole `_bulk` requests answered 429.
    pub throttled: u64,
    /// Milliseconds per `_bulk` request (at most 100 values).
    pub bulk_latency_ms: Vec<u64>,
    /// Replication lag: now − the records' `ApproximateCreationDateTime`, in ms (max, median).
    pub lag_ms_max: Option<u64>,
    pub lag_ms_p50: Option<u64>,
    pub millis: u64,
}

impl Summary {
    /// Adds another invocation's record counts (a runner's or a tool's totals).
    pub fn add(&mut self, other: &Summary) {
        self.records += other.records;
        self.indexed += other.indexed;
        self.deleted += other.deleted;
        self.ttl_deleted += other.ttl_deleted;
        self.superseded += other.superseded;
        self.skipped += other.skipped;
        self.quarantined += other.quarantined;
        self.retryable += other.retryable;
        self.permanent += other.permanent;
        self.unaccounted += other.unaccounted;
        self.bulk_requests += other.bulk_requests;
        self.bulk_bytes += other.bulk_bytes;
    }

    /// The records by outcome, as the tools print them.
    pub fn outcome_line(&self) -> String {
        format!(
            "records {} indexed {} deleted {} superseded {} skipped {} quarantined {} reported {}",
            self.records,
            self.indexed,
            self.deleted,
            self.superseded,
            self.skipped,
            self.quarantined,
            self.retryable + self.permanent + self.unaccounted
        )
    }
}

/// The result of one batch.
#[derive(Debug)]
pub struct Handled {
    pub response: DynamoDbEventResponse,
    pub summary: Summary,
    /// One per record, in batch order.
    pub outcomes: Vec<RecordOutcome>,
}

/// The invocation failed as a whole: Lambda retries the entire batch.
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    #[error(transparent)]
    NotAStreamEvent(#[from] NotAStreamEvent),
    /// Records that cannot be named by a sequence number and could not be quarantined: failing
    /// the whole batch is the only way not to lose them.
    #[error(
        "{count} record(s) have no SequenceNumber and could not be quarantined (positions {positions:?}): {reason}"
    )]
    Unreportable {
        count: usize,
        positions: Vec<usize>,
        reason: String,
    },
}

impl InvocationError {
    /// A stable name for the error, reported to Lambda as the `errorType` (alarms and log
    /// queries match on it; a Rust type name would change with the code).
    pub fn kind(&self) -> &'static str {
        match self {
            InvocationError::NotAStreamEvent(_) => "NotAStreamEvent",
            InvocationError::Unreportable { .. } => "UnreportableRecords",
        }
    }
}

/// Everything an invocation needs, built once at cold start.
#[derive(Clone)]
pub struct Indexer {
    pub config: Config,
    pub opensearch: OpenSearch,
    pub quarantine: Option<Quarantine>,
}

impl Indexer {
    pub async fn new(config: Config) -> Result<Indexer, crate::sink::transport::ClientError> {
        let opensearch = OpenSearch::connect(&config).await?;
        let quarantine = config.quarantine_index.clone().map(Quarantine::new);
        Ok(Indexer {
            config,
            opensearch,
            quarantine,
        })
    }

    /// At cold start: each fixed index the function writes to must record the function's write
    /// settings, or record none yet (then it records them). A mismatch is an error: the
    /// function must not start (Lambda keeps the records in the stream until the settings
    /// agree). An index that cannot be read now (the cluster down, a role without GET on
    /// `_mapping`) is logged and passed over: the check is the tools' guard too, and the
    /// stream must not wait for it. Indexes named per table are checked by the tools, which
    /// know their table.
    pub async fn check_write_settings(
        &self,
    ) -> Result<(), crate::sink::template::WriteSettingsError> {
        use crate::sink::template::{self, WriteSettingsError};
        for index in self.config.router.every_index(None) {
            match template::record_or_check(&self.opensearch, &index, &self.config.write, true)
                .await
            {
                Ok(_) => {}
                Err(WriteSettingsError::Request(e)) => tracing::warn!(
                    index = &*index,
                    error = %e,
                    "could not check the index's recorded write settings; starting without"
                ),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Where this indexer's versions come from (configuration).
    pub fn versions(&self) -> VersionSource {
        match &self.config.version_attribute {
            Some(name) => VersionSource::Attribute(name.clone()),
            None => VersionSource::StreamTime,
        }
    }

    /// Handles one batch. `deadline` is when Lambda ends the invocation.
    pub async fn handle(
        &self,
        payload: &str,
        deadline: Instant,
    ) -> Result<(DynamoDbEventResponse, Summary), InvocationError> {
        self.handle_detailed(payload, deadline)
            .await
            .map(|h| (h.response, h.summary))
    }

    /// Like [`Indexer::handle`], also returning each record's outcome in batch order.
    pub async fn handle_detailed(
        &self,
        payload: &str,
        deadline: Instant,
    ) -> Result<Handled, InvocationError> {
        self.handle_versioned(payload, deadline, &self.versions())
            .await
    }

    /// Handles a batch with the given versions: the backfill's records are versioned by the
    /// time of their read, not by their (synthetic) stream time.
    pub async fn handle_versioned(
        &self,
        payload: &str,
        deadline: Instant,
        versions: &VersionSource,
    ) -> Result<Handled, InvocationError> {
        let started = Instant::now();
        let plan = plan::plan(
            payload,
            versions,
            &self.config.shape(),
            self.config.bulk_max_bytes,
        )?;
        let (outcomes, stats) = self.deliver(&plan, deadline).await;
        let quarantined = self.quarantine(&plan, &outcomes, deadline).await;
        account(&plan, outcomes, &quarantined, &stats, started)
    }

    /// Sends changes that no stream record carries (`verify --repair`'s deletes) under the same
    /// limits and retries as a batch's; returns each change's outcome.
    pub async fn apply(&self, changes: &[change::Change], deadline: Instant) -> Vec<ItemOutcome> {
        dispatch::deliver(&self.opensearch, changes, &self.limits(deadline))
            .await
            .0
    }

    /// The limits of one delivery that must stop starting requests at `stop_at`.
    fn limits(&self, stop_at: Instant) -> Limits {
        let cfg = &self.config;
        Limits {
            max_bytes: cfg.bulk_max_bytes,
            max_actions: cfg.bulk_max_actions,
            concurrency: cfg.bulk_concurrency,
            request_timeout: cfg.request_timeout,
            backoff: Backoff {
                base: cfg.retry_base,
                max: cfg.retry_max,
            },
            stop_at,
        }
    }

    /// Sends the plan's changes; returns each record's outcome, in batch order: its own
    /// change's, or that of the change that superseded it in the batch, unless a further change
    /// it depends on (a delete from its item's previous index) failed.
    async fn deliver(
        &self,
        plan: &Plan<'_>,
        deadline: Instant,
    ) -> (Vec<ItemOutcome>, DeliveryStats) {
        let stop_at = deadline
            .checked_sub(self.config.deadline_margin)
            .unwrap_or_else(Instant::now);
        let (mut change_outcomes, stats) =
            dispatch::deliver(&self.opensearch, &plan.changes, &self.limits(stop_at)).await;
        // A mapping refusal names the field; the quarantine entry also says what it is in the
        // item and what the index maps it as.
        for (change, outcome) in plan.changes.iter().zip(&mut change_outcomes) {
            if let (ItemOutcome::Permanent(reason), Some(document)) = (outcome, change.document())
                && let Some(explained) = bulk::explain_refusal(reason, document)
            {
                reason.push_str(&explained);
            }
        }
        let outcomes = plan
            .records
            .iter()
            .map(|r| {
                let own = match &r.disposition {
                    Disposition::Change(i) | Disposition::Superseded(i) => {
                        change_outcomes[*i].clone()
                    }
                    Disposition::Invalid(reason) => ItemOutcome::Permanent(reason.clone()),
                    Disposition::Skipped => ItemOutcome::Skipped,
                };
                // The worst of its changes: a retry, else a refusal, else its own outcome.
                let extra = r.extra.iter().map(|&i| &change_outcomes[i]);
                let worst = extra.clone().find(|o| o.is_retry()).or_else(|| {
                    extra
                        .clone()
                        .find(|o| matches!(o, ItemOutcome::Permanent(_)))
                });
                match worst {
                    Some(o) if !own.is_retry() => o.clone(),
                    _ => own,
                }
            })
            .collect();
        (outcomes, stats)
    }

    /// Stores the permanent failures in the quarantine: invalid records, and winning changes
    /// the index refused. In-batch superseded records follow their winner and are not stored
    /// twice. Returns, per record, whether it is durably quarantined.
    async fn quarantine(
        &self,
        plan: &Plan<'_>,
        outcomes: &[ItemOutcome],
        deadline: Instant,
    ) -> Vec<bool> {
        let mut quarantined = vec![false; plan.records.len()];
        let Some(q) = &self.quarantine else {
            return quarantined;
        };
        let targets: Vec<usize> = (0..plan.records.len())
            .filter(|&p| {
                matches!(outcomes[p], ItemOutcome::Permanent(_))
                    && !matches!(plan.records[p].disposition, Disposition::Superseded(_))
            })
            .collect();
        if targets.is_empty() {
            return quarantined;
        }
        let raws = plan.raw_records();
        let entries: Vec<Entry> = targets
            .iter()
            .map(|&p| {
                let r = &plan.records[p];
                let ItemOutcome::Permanent(reason) = &outcomes[p] else {
                    unreachable!("targets are permanent failures")
                };
                // The index the record was for; an invalid record has none of its own.
                let index = match r.disposition {
                    Disposition::Change(i) | Disposition::Superseded(i) => &*plan.changes[i].index,
                    _ => self.config.index.as_deref().unwrap_or(""),
                };
                Entry::new(
                    index,
                    reason,
                    r.sequence_number.as_deref(),
                    r.event_id.as_deref(),
                    raws.get(p).map_or("", |raw| raw.get()),
                )
            })
            .collect();
        // Whatever time the deadline margin left, less a moment to return the response.
        let stop_at = deadline
            .checked_sub(RESPONSE_RESERVE)
            .unwrap_or_else(Instant::now);
        let stored = q
            .put(&self.opensearch, &entries, &self.limits(stop_at))
            .await;
        for (&p, ok) in targets.iter().zip(stored) {
            quarantined[p] = ok;
        }
        for (p, r) in plan.records.iter().enumerate() {
            if let Disposition::Superseded(i) = r.disposition {
                quarantined[p] = quarantined[plan.changes[i].record];
            }
        }
        quarantined
    }
}

/// The longest a Lambda invocation can run (15 minutes), plus clock slack: a deadline further
/// ahead than this is not one Lambda gave.
const MAX_INVOCATION: Duration = Duration::from_secs(15 * 60 + 60);

/// The budget used when the runtime's deadline is unusable.
pub const FALLBACK_BUDGET: Duration = Duration::from_secs(60);

/// The invocation's deadline on tokio's clock, from the runtime's wall-clock deadline. A
/// deadline already past or absurdly far when the invocation starts is not one to honour:
/// `cargo lambda watch` sends `Lambda-Runtime-Deadline-Ms: 600000` (a duration, read as a time in
/// 1970), which would report every record "not attempted before the deadline". Then
/// [`FALLBACK_BUDGET`] applies, and the second value is true so the caller can say so.
pub fn invocation_deadline(deadline: SystemTime, now: SystemTime) -> (Instant, bool) {
    match deadline.duration_since(now) {
        Ok(left) if !left.is_zero() && left <= MAX_INVOCATION => (Instant::now() + left, false),
        _ => (Instant::now() + FALLBACK_BUDGET, true),
    }
}

/// Time kept after the quarantine write to return the response to Lambda.
const RESPONSE_RESERVE: Duration = Duration::from_millis(250);

/// Turns each record's outcome into its [`RecordOutcome`], the `batchItemFailures` and the
/// summary, and logs the accounting line.
fn account(
    plan: &Plan<'_>,
    outcomes: Vec<ItemOutcome>,
    quarantined: &[bool],
    stats: &DeliveryStats,
    started: Instant,
) -> Result<Handled, InvocationError> {
    let mut summary = Summary {
        records: plan.records.len(),
        bulk_requests: stats.requests,
        bulk_bytes: stats.bytes,
        retry_rounds: u64::from(stats.rounds.saturating_sub(1)),
        throttled: stats.throttled,
        bulk_latency_ms: stats.latencies_ms.clone(),
        ..Summary::default()
    };
    let mut response = DynamoDbEventResponse::default();
    let mut unreportable = Vec::new();
    let mut first_unreportable_reason = String::new();
    let mut record_outcomes = Vec::with_capacity(plan.records.len());
    for ((p, r), outcome) in plan.records.iter().enumerate().zip(outcomes) {
        let in_batch_superseded = matches!(r.disposition, Disposition::Superseded(_));
        let permanent = matches!(outcome, ItemOutcome::Permanent(_));
        let record_outcome = match outcome {
            ItemOutcome::Indexed | ItemOutcome::Deleted if in_batch_superseded => {
                RecordOutcome::Superseded
            }
            ItemOutcome::Indexed => RecordOutcome::Indexed,
            ItemOutcome::Skipped => RecordOutcome::Skipped,
            ItemOutcome::Deleted => RecordOutcome::Deleted,
            ItemOutcome::Superseded => RecordOutcome::Superseded,
            ItemOutcome::Permanent(reason) if quarantined[p] => RecordOutcome::Quarantined(reason),
            ItemOutcome::Permanent(reason) | ItemOutcome::Retry(reason) => {
                RecordOutcome::Reported(reason)
            }
        };
        match &record_outcome {
            RecordOutcome::Indexed => summary.indexed += 1,
            RecordOutcome::Deleted => {
                summary.deleted += 1;
                if let Disposition::Change(i) = r.disposition
                    && plan.changes[i].ttl
                {
                    summary.ttl_deleted += 1;
                }
            }
            RecordOutcome::Superseded => summary.superseded += 1,
            RecordOutcome::Skipped => summary.skipped += 1,
            RecordOutcome::Quarantined(_) => summary.quarantined += 1,
            RecordOutcome::Reported(reason) => match &r.sequence_number {
                Some(seq) if !seq.is_empty() => {
                    // Only ever an identifier copied from the batch (SEMANTICS: an unknown
                    // one is undocumented).
                    let mut failure = DynamoDbBatchItemFailure::default();
                    failure.item_identifier = Some(seq.to_string());
                    response.batch_item_failures.push(failure);
                    if permanent {
                        summary.permanent += 1;
                    } else {
                        summary.retryable += 1;
                    }
                }
                _ => {
                    summary.unaccounted += 1;
                    if unreportable.is_empty() {
                        first_unreportable_reason = redact::reason(reason);
                    }
                    unreportable.push(p);
                }
            },
        }
        record_outcomes.push(record_outcome);
    }
    summary.millis = started.elapsed().as_millis() as u64;
    (summary.lag_ms_max, summary.lag_ms_p50) = replication_lag(&plan.records, SystemTime::now());
    log_summary(&summary, &plan.records, &record_outcomes);
    if !unreportable.is_empty() {
        return Err(InvocationError::Unreportable {
            count: unreportable.len(),
            positions: unreportable,
            reason: first_unreportable_reason,
        });
    }
    Ok(Handled {
        response,
        summary,
        outcomes: record_outcomes,
    })
}

/// The largest and the median of now − `ApproximateCreationDateTime` over the batch, in ms
/// (a record time ahead of this clock counts as no lag).
fn replication_lag(records: &[change::Record<'_>], now: SystemTime) -> (Option<u64>, Option<u64>) {
    let now_ms = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut lags: Vec<u64> = records
        .iter()
        .filter_map(|r| r.created_secs)
        .filter(|t| t.is_finite() && *t >= 0.0)
        .map(|t| now_ms.saturating_sub((t * 1000.0) as u64))
        .collect();
    if lags.is_empty() {
        return (None, None);
    }
    lags.sort_unstable();
    (lags.last().copied(), Some(lags[(lags.len() - 1) / 2]))
}

/// How many failed records the log names one by one per invocation.
const MAX_NAMED_FAILURES: usize = 10;

/// One line per invocation: counts only, never item contents. Failed records are named by
/// sequence number, eventID and reason, with the reason's values redacted.
fn log_summary(s: &Summary, records: &[change::Record<'_>], outcomes: &[RecordOutcome]) {
    let accounted = s.indexed
        + s.deleted
        + s.superseded
        + s.skipped
        + s.quarantined
        + s.retryable
        + s.permanent;
    let complete = accounted == s.records && s.unaccounted == 0;
    tracing::info!(
        records = s.records,
        indexed = s.indexed,
        deleted = s.deleted,
        ttl_deleted = s.ttl_deleted,
        superseded = s.superseded,
        skipped = s.skipped,
        quarantined = s.quarantined,
        retryable = s.retryable,
        permanent = s.permanent,
        unaccounted = s.unaccounted,
        bulk_requests = s.bulk_requests,
        bulk_bytes = s.bulk_bytes,
        ms = s.millis,
        complete,
        "{}",
        if complete {
            format!("all {} records accounted for", s.records)
        } else {
            format!(
                "{} of {} records unaccounted for",
                s.records - accounted.min(s.records),
                s.records
            )
        }
    );
    // Name the failed records, a bounded few: an outage can fail a whole batch of 10,000.
    let mut named = 0;
    for (r, o) in records.iter().zip(outcomes) {
        if named == MAX_NAMED_FAILURES {
            let rest = s.quarantined + s.retryable + s.permanent + s.unaccounted - named;
            tracing::warn!(more = rest, "further failed records not named");
            break;
        }
        if matches!(
            o,
            RecordOutcome::Quarantined(_) | RecordOutcome::Reported(_)
        ) {
            named += 1;
        }
        match o {
            RecordOutcome::Quarantined(reason) => {
                tracing::warn!(sequence_number = r.sequence_number.as_deref(), event_id = r.event_id.as_deref(), reason = %redact::reason(reason), "record quarantined")
            }
            RecordOutcome::Reported(reason) => {
                tracing::warn!(sequence_number = r.sequence_number.as_deref(), event_id = r.event_id.as_deref(), reason = %redact::reason(reason), "record reported for retry")
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod deadline_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_epoch_deadline_is_honoured_and_an_unusable_one_falls_back() {
        let now = SystemTime::now();
        let (at, fallback) = invocation_deadline(now + Duration::from_secs(30), now);
        assert!(!fallback);
        assert_eq!(at - Instant::now(), Duration::from_secs(30));
        // cargo lambda's header: 600000 ms after the epoch.
        let cargo_lambda = SystemTime::UNIX_EPOCH + Duration::from_millis(600_000);
        let (at, fallback) = invocation_deadline(cargo_lambda, now);
        assert!(fallback);
        assert_eq!(at - Instant::now(), FALLBACK_BUDGET);
        let (_, fallback) = invocation_deadline(now + Duration::from_secs(86_400), now);
        assert!(fallback, "a day ahead is no Lambda deadline");
        let (_, fallback) = invocation_deadline(now, now);
        assert!(fallback);
    }
}
