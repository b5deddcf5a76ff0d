//! Backfill: a parallel, resumable, rate-limited scan of the table into the index, through the
//! same conversion, ids, bulk path, outcomes, versions and quarantine as the stream function.
//!
//! Each scanned page becomes a synthetic stream batch (INSERT records with the item as
//! `NewImage`) handled by [`Indexer::handle_versioned`]. Versions, so that running beside the live
//! stream is safe (README, "Backfill beside the live stream"):
//! - stream-time versions: a page read at time `r` is written with version
//!   `floor(r − skew)·1000 − 1` ms, below every stream change made at or after the read (their
//!   versions are whole seconds ≥ floor(r)·1000), and above every change made more than `skew`
//!   before it. A stream change after the read always wins; the read wins over older records.
//!   Losing to a change made shortly before the read is safe: the stream delivers that change's
//!   image, or a later one.
//! - a version attribute: the item's own version, as the stream uses; equal means same change.
//!
//! Deletes made during the run leave tombstones that keep the backfill's older copies out; they
//! must outlive the run, so `index.gc_deletes` is raised for it and restored afterwards.
//!
//! The scan lives here; [`from_export`] reads a DynamoDB export instead and [`worker`] runs that
//! as steps for the Step Functions state machine. All three write through `Sink` and version
//! with [`read_versions`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::sink::transport::Method;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::handler::{Indexer, RecordOutcome};
use crate::pipeline::change::VersionSource;
use crate::sink::transport::RequestError;
use crate::tools::ddb_json;
use crate::tools::rate::RateLimiter;
use crate::tools::verify;

pub mod from_export;
pub mod worker;

/// How a backfill runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub table: String,
    /// Parallel scan segments; `None`: from the table size (see [`default_segments`]).
    pub segments: Option<u32>,
    /// Items per Scan page.
    pub page_size: u32,
    /// Most items read per second across all segments.
    pub max_items_per_second: Option<f64>,
    /// Most read capacity units consumed per second across all segments.
    pub max_read_units_per_second: Option<f64>,
    /// How far the local clock may be ahead of DynamoDB's; widens the margin of read versions.
    pub clock_skew: Duration,
    /// `index.gc_deletes` for the run (restored afterwards); `None` leaves it alone.
    pub gc_deletes: Option<String>,
    pub checkpoint: PathBuf,
    pub resume: bool,
    pub dry_run: bool,
    /// Time each page may take to land, retries included.
    pub page_timeout: Duration,
}

/// What a backfill did; `unaccounted()` is zero when every scanned item is accounted for.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub scanned: u64,
    pub indexed: u64,
    pub superseded: u64,
    /// Routed to no index (`ROUTES`).
    pub skipped: u64,
    pub quarantined: u64,
    pub failed: u64,
    pub pages: u64,
    /// The handler's record counts over every page, as the runner prints them.
    #[serde(skip)]
    pub records: crate::handler::Summary,
    pub millis: u64,
    pub interrupted: bool,
}

impl Summary {
    pub fn unaccounted(&self) -> u64 {
        self.scanned
            .saturating_sub(self.indexed + self.superseded + self.skipped + self.quarantined)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error("{0}")]
    Dynamo(String),
    #[error(transparent)]
    OpenSearch(#[from] RequestError),
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: String, reason: String },
    #[error(transparent)]
    Verify(#[from] verify::VerifyError),
    #[error(transparent)]
    Export(#[from] crate::tools::export::ExportError),
    /// A data file that cannot be read as an export: names the file, the line and why.
    #[error("{0}")]
    ExportData(String),
    /// An export too old for the index's delete memory (`from_export` module docs).
    #[error("{0}")]
    StaleExport(String),
    /// Another export load holds the index (`worker::Lease`).
    #[error("{0}")]
    LoadInProgress(String),
    /// The index is written with other settings (`sink::template`).
    #[error(transparent)]
    WriteSettings(#[from] crate::sink::template::WriteSettingsError),
}

impl BackfillError {
    /// A stable name for the kind of failure (a Lambda `errorType`, which a workflow's retry
    /// rules match): `ExportData` and `StaleExport` do not get better by retrying.
    pub fn kind(&self) -> &'static str {
        match self {
            BackfillError::Dynamo(_) => "Dynamo",
            BackfillError::OpenSearch(_) => "OpenSearch",
            BackfillError::Checkpoint { .. } => "Checkpoint",
            BackfillError::Verify(_) => "Verify",
            BackfillError::Export(_) => "Export",
            BackfillError::ExportData(_) => "ExportData",
            BackfillError::StaleExport(_) => "StaleExport",
            BackfillError::WriteSettings(_) => "WriteSettings",
            BackfillError::LoadInProgress(_) => "LoadInProgress",
        }
    }
}

/// Segment positions, written after each page is confirmed in OpenSearch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub table: String,
    pub index: String,
    pub total_segments: u32,
    pub segments: Vec<SegmentPosition>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SegmentPosition {
    pub done: bool,
    /// The scan's LastEvaluatedKey after the last confirmed page, as DynamoDB JSON.
    pub last_key: Option<String>,
    pub scanned: u64,
}

impl Checkpoint {
    pub fn load(path: &Path) -> Result<Checkpoint, BackfillError> {
        load_json(path)
    }

    pub fn save(&self, path: &Path) -> Result<(), BackfillError> {
        save_json(path, self)
    }
}

/// Reads a checkpoint file.
pub(crate) fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, BackfillError> {
    let fail = |reason: String| BackfillError::Checkpoint {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| fail(e.to_string()))
}

/// Writes a checkpoint file: to a temporary file renamed over the old one, so a crash leaves
/// either the old or the new checkpoint, never half of one.
pub(crate) fn save_json<T: Serialize>(path: &Path, value: &T) -> Result<(), BackfillError> {
    let fail = |e: std::io::Error| BackfillError::Checkpoint {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let tmp = path.with_extension("tmp");
    let text = serde_json::to_vec_pretty(value).expect("a checkpoint serializes");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp).map_err(fail)?;
        f.write_all(&text).map_err(fail)?;
        f.sync_all().map_err(fail)?;
    }
    std::fs::rename(&tmp, path).map_err(fail)
}

/// A sensible number of segments: one per 512 MiB of table, and at least twice the bulk
/// concurrency, so that while some segments wait for their page to land others are reading;
/// at most 256.
pub fn default_segments(table_size_bytes: i64, bulk_concurrency: usize) -> u32 {
    let per = 512 * 1024 * 1024;
    let floor = (2 * bulk_concurrency as u32).clamp(1, 256);
    let by_size = (table_size_bytes.max(0) / per).min(255) as u32 + 1;
    by_size.clamp(floor, 256)
}

struct Shared<'a> {
    indexer: &'a Indexer,
    ddb: &'a aws_sdk_dynamodb::Client,
    opts: &'a Options,
    key_names: Vec<String>,
    checkpoint: Mutex<Checkpoint>,
    items_limit: Option<RateLimiter>,
    units_limit: Option<RateLimiter>,
    stop: &'a AtomicBool,
    scanned: &'a AtomicU64,
    sink: Sink<'a>,
}

/// The write side every backfill source shares: a page becomes a synthetic stream batch that
/// goes through the handler and is confirmed before its source moves on; outcomes are counted
/// into one summary.
pub(crate) struct Sink<'a> {
    indexer: &'a Indexer,
    dry_run: bool,
    /// Time each page may take to land, retries included.
    page_timeout: Duration,
    summary: Mutex<Summary>,
    /// Pages being written at once, across segments or files: BULK_CONCURRENCY, as in the
    /// function.
    writing: tokio::sync::Semaphore,
}

/// Runs the backfill. `scanned` counts items as they are read (for a progress bar); setting
/// `stop` ends the run after the pages in flight, leaving a checkpoint to resume from.
pub async fn run(
    indexer: &Indexer,
    ddb: &aws_sdk_dynamodb::Client,
    opts: &Options,
    stop: &AtomicBool,
    scanned: &AtomicU64,
) -> Result<Summary, BackfillError> {
    let started = Instant::now();
    // Every index the routes can send this table's items to (one, without ROUTES).
    let indexes = every_index(indexer, &opts.table);
    let index = indexes.join(",");
    let key_names = verify::key_names(ddb, &opts.table).await?;
    if key_names.is_empty() {
        return Err(BackfillError::Dynamo(format!(
            "table {} has no key schema",
            opts.table
        )));
    }
    let checkpoint = if opts.resume {
        let c = Checkpoint::load(&opts.checkpoint)?;
        if c.table != opts.table || c.index != index {
            return Err(BackfillError::Checkpoint {
                path: opts.checkpoint.display().to_string(),
                reason: format!(
                    "it is for table {} and index {}, not {} and {index}",
                    c.table, c.index, opts.table
                ),
            });
        }
        scanned.store(
            c.segments.iter().map(|s| s.scanned).sum(),
            Ordering::Relaxed,
        );
        c
    } else {
        let total = match opts.segments {
            Some(n) => n,
            None => default_segments(
                table_size(ddb, &opts.table).await?.1,
                indexer.config.bulk_concurrency,
            ),
        };
        Checkpoint {
            table: opts.table.clone(),
            index: index.clone(),
            total_segments: total,
            segments: vec![
                SegmentPosition {
                    done: false,
                    last_key: None,
                    scanned: 0
                };
                total as usize
            ],
        }
    };
    if !opts.dry_run {
        checkpoint.save(&opts.checkpoint)?;
    }
    let previous_gc = if opts.dry_run {
        Vec::new()
    } else {
        prepare_indexes(indexer, &indexes, opts.gc_deletes.as_deref()).await?
    };
    let total = checkpoint.total_segments;
    let todo: Vec<u32> = (0..total)
        .filter(|&i| !checkpoint.segments[i as usize].done)
        .collect();
    let shared = Shared {
        indexer,
        ddb,
        opts,
        key_names,
        checkpoint: Mutex::new(checkpoint),
        items_limit: opts.max_items_per_second.map(RateLimiter::new),
        units_limit: opts.max_read_units_per_second.map(RateLimiter::new),
        stop,
        scanned,
        sink: Sink::new(indexer, opts.dry_run, opts.page_timeout),
    };
    let results = futures::future::join_all(
        todo.into_iter()
            .map(|segment| scan_segment(&shared, segment, total)),
    )
    .await;
    restore_gc_deletes(indexer, previous_gc).await?;
    let mut summary = shared.sink.summary.into_inner();
    summary.millis = started.elapsed().as_millis() as u64;
    summary.interrupted = stop.load(Ordering::Relaxed);
    for r in results {
        r?;
    }
    Ok(summary)
}

/// The table's estimated item count and size in bytes (DescribeTable, updated about every 6 h).
pub async fn table_size(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<(i64, i64), BackfillError> {
    let t = ddb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| {
            BackfillError::Dynamo(format!(
                "DescribeTable {table}: {}",
                crate::telemetry::error_chain(&e)
            ))
        })?
        .table
        .ok_or_else(|| BackfillError::Dynamo(format!("DescribeTable {table}: no table")))?;
    Ok((t.item_count.unwrap_or(0), t.table_size_bytes.unwrap_or(0)))
}

async fn scan_segment(shared: &Shared<'_>, segment: u32, total: u32) -> Result<(), BackfillError> {
    let opts = shared.opts;
    let mut start_key: Option<HashMap<String, AttributeValue>> = {
        let c = shared.checkpoint.lock().await;
        c.segments[segment as usize]
            .last_key
            .as_deref()
            .map(parse_key)
            .transpose()?
    };
    let mut page_number = 0u64;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if let Some(l) = &shared.items_limit {
            l.acquire(opts.page_size as f64).await;
        }
        // The read time is taken before the request: the page reflects the table at some point
        // after it, so versions from it are never too high.
        let read_at = SystemTime::now();
        let page = shared
            .ddb
            .scan()
            .table_name(&opts.table)
            .segment(segment as i32)
            .total_segments(total as i32)
            .consistent_read(true)
            .limit(opts.page_size as i32)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .set_exclusive_start_key(start_key.clone())
            .send()
            .await
            .map_err(|e| {
                BackfillError::Dynamo(format!(
                    "Scan {} segment {segment}: {}",
                    opts.table,
                    crate::telemetry::error_chain(&e)
                ))
            })?;
        if let (Some(l), Some(units)) = (
            &shared.units_limit,
            page.consumed_capacity
                .as_ref()
                .and_then(|c| c.capacity_units),
        ) {
            l.acquire(units).await;
        }
        let items = page.items.unwrap_or_default();
        shared
            .scanned
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        page_number += 1;
        if !items.is_empty() {
            land_page(shared, segment, page_number, &items, read_at).await?;
        }
        let last = page.last_evaluated_key.filter(|k| !k.is_empty());
        if !opts.dry_run {
            let mut c = shared.checkpoint.lock().await;
            let pos = &mut c.segments[segment as usize];
            pos.scanned += items.len() as u64;
            pos.done = last.is_none();
            pos.last_key = last.as_ref().map(|k| {
                let mut s = String::new();
                ddb_json::table::write_item(&mut s, k);
                s
            });
            c.save(&opts.checkpoint)?;
        }
        match last {
            Some(k) => start_key = Some(k),
            None => return Ok(()),
        }
    }
}

/// Writes one scanned page through the sink.
async fn land_page(
    shared: &Shared<'_>,
    segment: u32,
    page: u64,
    items: &[HashMap<String, AttributeValue>],
    read_at: SystemTime,
) -> Result<(), BackfillError> {
    let (versions, approximate_secs) = read_versions(
        read_at,
        shared.opts.clock_skew,
        shared.indexer.config.version_attribute.as_deref(),
    );
    let payload = synthetic_batch(
        &shared.opts.table,
        &shared.key_names,
        items,
        approximate_secs,
    );
    shared
        .sink
        .land(
            &format!("segment {segment} page {page}"),
            &payload,
            items.len() as u64,
            &versions,
        )
        .await
}

impl<'a> Sink<'a> {
    pub(crate) fn new(indexer: &'a Indexer, dry_run: bool, page_timeout: Duration) -> Sink<'a> {
        Sink {
            indexer,
            dry_run,
            page_timeout,
            summary: Mutex::new(Summary::default()),
            writing: tokio::sync::Semaphore::new(indexer.config.bulk_concurrency),
        }
    }

    pub(crate) fn into_summary(self) -> Summary {
        self.summary.into_inner()
    }

    /// Writes one page (`items` records in `payload`) through the handler and waits until every
    /// item is accounted for; returns an error naming `page` if some item could not be
    /// confirmed, so that its source keeps its position before this page.
    pub(crate) async fn land(
        &self,
        page: &str,
        payload: &str,
        items: u64,
        versions: &VersionSource,
    ) -> Result<(), BackfillError> {
        let config = &self.indexer.config;
        if self.dry_run {
            let plan = crate::pipeline::change::plan(
                payload,
                versions,
                &config.shape(),
                config.bulk_max_bytes,
            )
            .map_err(|e| BackfillError::Dynamo(e.to_string()))?;
            let mut s = self.summary.lock().await;
            s.scanned += items;
            s.pages += 1;
            for r in &plan.records {
                match &r.disposition {
                    crate::pipeline::change::Disposition::Invalid(_) => s.failed += 1,
                    _ => s.indexed += 1,
                }
            }
            return Ok(());
        }
        let _permit = self
            .writing
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let deadline = Instant::now() + self.page_timeout;
        let handled = self
            .indexer
            .handle_versioned(payload, deadline, versions)
            .await
            .map_err(|e| BackfillError::Dynamo(format!("{page}: {e}")))?;
        let mut s = self.summary.lock().await;
        s.scanned += items;
        s.pages += 1;
        s.records.add(&handled.summary);
        let mut failed = 0;
        for o in &handled.outcomes {
            match o {
                RecordOutcome::Indexed | RecordOutcome::Deleted => s.indexed += 1,
                RecordOutcome::Superseded => s.superseded += 1,
                RecordOutcome::Skipped => s.skipped += 1,
                RecordOutcome::Quarantined(_) => s.quarantined += 1,
                RecordOutcome::Reported(_) => failed += 1,
            }
        }
        s.failed += failed;
        if failed > 0 {
            let reason = handled
                .outcomes
                .iter()
                .find_map(|o| match o {
                    RecordOutcome::Reported(r) => Some(crate::redact::reason(r)),
                    _ => None,
                })
                .unwrap_or_default();
            return Err(BackfillError::Dynamo(format!(
                "{page}: {failed} item(s) not confirmed in time ({reason}); --resume continues from the last confirmed page"
            )));
        }
        Ok(())
    }
}

/// Every index the routes can send `table`'s items to (one, without ROUTES).
pub fn every_index(indexer: &Indexer, table: &str) -> Vec<String> {
    indexer
        .config
        .router
        .every_index(Some(table))
        .iter()
        .map(|i| i.to_string())
        .collect()
}

/// Creates `indexes` (their settings change here; the first write would create them anyway),
/// checks that each is written with this configuration's settings (recording them where the
/// index has no record yet) and sets `index.gc_deletes` to `gc_deletes` on each; returns what
/// [`restore_gc_deletes`] puts back.
pub async fn prepare_indexes(
    indexer: &Indexer,
    indexes: &[String],
    gc_deletes: Option<&str>,
) -> Result<Vec<(String, Option<String>)>, BackfillError> {
    for index in indexes {
        crate::sink::template::create_index(&indexer.opensearch, index).await?;
    }
    crate::sink::template::check_all(&indexer.opensearch, indexes, &indexer.config.write, true)
        .await?;
    let mut previous = Vec::new();
    if let Some(value) = gc_deletes {
        for index in indexes {
            previous.push((
                index.clone(),
                set_gc_deletes(indexer, index, Some(value)).await?,
            ));
        }
    }
    Ok(previous)
}

/// Puts back the `index.gc_deletes` values [`prepare_indexes`] replaced.
pub async fn restore_gc_deletes(
    indexer: &Indexer,
    previous: Vec<(String, Option<String>)>,
) -> Result<(), BackfillError> {
    for (index, value) in previous {
        set_gc_deletes(indexer, &index, value.as_deref()).await?;
    }
    Ok(())
}

/// The versions for copies of items read at `read_at` (module docs): with stream-time versions
/// `floor(read − skew)·1000 − 1`, below every stream change made at or after the read; with a
/// version attribute, the item's own. Also the `ApproximateCreationDateTime` to give the
/// copies' synthetic records.
pub fn read_versions(
    read_at: SystemTime,
    clock_skew: Duration,
    version_attribute: Option<&str>,
) -> (VersionSource, u64) {
    let read_secs = read_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let safe_secs = read_secs.saturating_sub(clock_skew.as_secs().max(1));
    let versions = match version_attribute {
        Some(name) => VersionSource::Attribute(name.to_string()),
        None => VersionSource::Fixed((safe_secs * 1000).saturating_sub(1)),
    };
    (versions, safe_secs.saturating_sub(1))
}

/// A page as a stream batch of INSERT records: the same conversion, ids and quarantine entries
/// (with a replayable record) as the stream.
pub fn synthetic_batch(
    table: &str,
    key_names: &[String],
    items: &[HashMap<String, AttributeValue>],
    approximate_secs: u64,
) -> String {
    let mut batch = SyntheticBatch::new(table, approximate_secs);
    let (mut keys_json, mut item_json) = (String::new(), String::new());
    for item in items {
        let keys: HashMap<String, AttributeValue> = key_names
            .iter()
            .filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        keys_json.clear();
        ddb_json::table::write_item(&mut keys_json, &keys);
        item_json.clear();
        ddb_json::table::write_item(&mut item_json, item);
        batch.push(&keys_json, &item_json);
    }
    batch.finish()
}

/// A stream batch of INSERT records built one item at a time, from DynamoDB JSON text.
///
/// Each record's eventID (and SequenceNumber) is a digest of the table, the item's key and the
/// read's time: unique per item copy, and the same if one read is handled twice. Ids from a
/// page counter would restart with every `--resume` and make two items share a quarantine entry.
pub struct SyntheticBatch {
    out: String,
    table: String,
    /// The table's stream ARN shape as a JSON string, so that routing finds the table for
    /// `{table}`.
    arn: String,
    approximate_secs: u64,
    records: usize,
}

impl SyntheticBatch {
    pub fn new(table: &str, approximate_secs: u64) -> SyntheticBatch {
        SyntheticBatch {
            out: String::from("{\"Records\":["),
            table: table.to_string(),
            arn: serde_json::to_string(&format!(
                "arn:aws:dynamodb:::table/{table}/stream/backfill"
            ))
            .expect("string"),
            approximate_secs,
            records: 0,
        }
    }

    /// Adds an item: `keys_json` its key attributes and `item_json` the whole item, each a
    /// DynamoDB JSON object.
    pub fn push(&mut self, keys_json: &str, item_json: &str) {
        use sha2::{Digest, Sha256};
        use std::fmt::Write as _;
        if self.records > 0 {
            self.out.push(',');
        }
        self.records += 1;
        let digest = Sha256::new()
            .chain_update(self.table.as_bytes())
            .chain_update([0])
            .chain_update(keys_json.as_bytes())
            .chain_update([0])
            .chain_update(self.approximate_secs.to_be_bytes())
            .finalize();
        let id = format!("backfill-{digest:x}");
        let _ = write!(
            self.out,
            "{{\"eventID\":\"{id}\",\"eventName\":\"INSERT\",\"eventSource\":\"backfill\",\"eventSourceARN\":{},\"dynamodb\":{{\"ApproximateCreationDateTime\":{},\"SequenceNumber\":\"{id}\",\"StreamViewType\":\"NEW_IMAGE\",\"Keys\":{keys_json},\"NewImage\":{item_json}}}}}",
            self.arn, self.approximate_secs
        );
    }

    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> usize {
        self.out.len()
    }

    pub fn finish(mut self) -> String {
        self.out.push_str("]}");
        self.out
    }
}

fn parse_key(text: &str) -> Result<HashMap<String, AttributeValue>, BackfillError> {
    #[derive(Deserialize)]
    enum V {
        S(String),
        N(String),
        B(String),
    }
    let bad = |e: String| BackfillError::Checkpoint {
        path: "checkpoint".into(),
        reason: format!("bad last_key: {e}"),
    };
    let map: HashMap<String, V> = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    map.into_iter()
        .map(|(k, v)| {
            Ok((
                k,
                match v {
                    V::S(s) => AttributeValue::S(s),
                    V::N(n) => AttributeValue::N(n),
                    V::B(b) => {
                        use base64::Engine as _;
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .map_err(|e| bad(e.to_string()))?;
                        AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(bytes))
                    }
                },
            ))
        })
        .collect()
}

/// Sets `index.gc_deletes` on `index` (or resets it with `None`); returns the previous value
/// (`None` when it was the default).
pub async fn set_gc_deletes(
    indexer: &Indexer,
    index: &str,
    value: Option<&str>,
) -> Result<Option<String>, RequestError> {
    let previous = gc_deletes(indexer, index).await?.set;
    let body = serde_json::json!({"index": {"gc_deletes": value}});
    indexer
        .opensearch
        .request(
            Method::Put,
            &format!("/{index}/_settings"),
            Some(body.to_string().into_bytes()),
            Duration::from_secs(30),
        )
        .await?;
    Ok(previous)
}

/// An index's `index.gc_deletes`: the value set on it, and OpenSearch's default.
pub(crate) struct GcDeletes {
    pub set: Option<String>,
    pub default: Option<String>,
}

/// Reads `index`'s `index.gc_deletes` (with the default, `include_defaults`).
pub(crate) async fn gc_deletes(indexer: &Indexer, index: &str) -> Result<GcDeletes, RequestError> {
    let (_, body) = indexer
        .opensearch
        .request(
            Method::Get,
            &format!("/{index}/_settings/index.gc_deletes?include_defaults=true"),
            None,
            Duration::from_secs(30),
        )
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let of = |part: &str| {
        v.as_object()
            .and_then(|m| m.values().next())
            .and_then(|s| s[part]["index"]["gc_deletes"].as_str())
            .map(str::to_string)
    };
    Ok(GcDeletes {
        set: of("settings"),
        default: of("defaults"),
    })
}

/// Stops the run after the pages in flight on Ctrl-C.
pub fn stop_on_ctrl_c(stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.store(true, Ordering::Relaxed);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_grow_with_the_table() {
        assert_eq!(default_segments(0, 4), 8);
        assert_eq!(default_segments(0, 1), 2);
        assert_eq!(default_segments(10 * 1024 * 1024 * 1024, 4), 21);
        assert_eq!(default_segments(i64::MAX, 4), 256);
    }

    #[test]
    fn a_key_survives_the_checkpoint() {
        let mut key = HashMap::new();
        key.insert("pk".to_string(), AttributeValue::S("a|\"b".into()));
        key.insert("sk".to_string(), AttributeValue::N("1E+3".into()));
        key.insert(
            "bk".to_string(),
            AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(vec![0u8, 255])),
        );
        let mut s = String::new();
        ddb_json::table::write_item(&mut s, &key);
        assert_eq!(parse_key(&s).unwrap(), key);
    }
}
