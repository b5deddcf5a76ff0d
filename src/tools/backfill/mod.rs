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
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::handler::{Indexer, RecordOutcome};
use crate::pipeline::version::VersionSource;
use crate::sink::gc_deletes;
use crate::sink::transport::RequestError;
use crate::tools::ddb_json;
use crate::tools::rate::RateLimiter;
use crate::tools::read_time::{read_versions, synthetic_batch};
use crate::tools::table::{self, default_segments, table_size};

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
    Describe(#[from] table::DescribeError),
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
            BackfillError::Describe(_) => "Dynamo",
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
    let key_names = table::key_names(ddb, &opts.table).await?;
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
            let plan = crate::pipeline::plan::plan(
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
                gc_deletes::set(&indexer.opensearch, index, Some(value)).await?,
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
        gc_deletes::set(&indexer.opensearch, &index, value.as_deref()).await?;
    }
    Ok(())
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
