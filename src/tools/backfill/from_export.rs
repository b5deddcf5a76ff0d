//! Backfill from a DynamoDB export in S3 instead of a scan: no read capacity spent on the table.
//!
//! Data files are loaded in parallel, each streamed (gunzip and line split as it downloads),
//! through the same synthetic batches, handler, ids, quarantine and routing as the scan.
//!
//! Versions: the export reflects the table at its `exportTime` `e`, so its copies get the read
//! version of a scan at `e` ([`super::read_versions`]): below every stream change made after the
//! export, which therefore always wins, whenever the export is loaded.
//!
//! Deletes: a stream delete made after `e` leaves a tombstone that keeps the export's older copy
//! out only while OpenSearch remembers it (`index.gc_deletes`, 60 s by default). A tombstone
//! created since `e` is still there now only if the window is at least the export's age, so a
//! load refuses to start when it is not (see [`Options::allow_old_export`]); the window is then
//! raised for the run. `backfill --export` raises it before requesting the export.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{BackfillError, Sink, Summary};
use crate::handler::Indexer;
use crate::pipeline::version::{MAX_CLOCK_AHEAD_SECS, VersionSource};
use crate::sink::gc_deletes;
use crate::tools::export::{DataFile, Export, Share};
use crate::tools::read_time::{SyntheticBatch, read_versions};

/// A page is sent once it holds this many bytes of records, even short of `page_size` items:
/// bounds the memory of each file in flight whatever the items' size.
const PAGE_MAX_BYTES: usize = 4 * 1024 * 1024;

/// How an export is loaded.
#[derive(Debug, Clone)]
pub struct Options {
    /// The table the export is of: `{table}` in index names and routes.
    pub table: String,
    /// The table's key attribute names (partition key first).
    pub key_names: Vec<String>,
    /// The point in time the export reflects.
    pub export_time: SystemTime,
    /// Which of the data files this run loads (`--files i/N`).
    pub share: Share,
    /// Data files read at once.
    pub files_in_parallel: usize,
    /// Items per page (each page is confirmed before the file's next one is sent).
    pub page_size: usize,
    /// How far DynamoDB's clock may be behind a stream change's timestamp; widens the margin.
    pub clock_skew: Duration,
    /// `index.gc_deletes` for the run; `None` leaves it alone.
    pub gc_deletes: Option<String>,
    /// Put `index.gc_deletes` back once every file is loaded (not after a failure or Ctrl-C:
    /// the resumed load needs it). Off when other machines load other shares.
    pub restore_gc_deletes: bool,
    /// Load even if the index may have forgotten deletes made since the export (module docs);
    /// run `verify --repair` afterwards.
    pub allow_old_export: bool,
    /// Checkpoint file; `None`: not kept (a retried file starts over, which is safe).
    pub checkpoint: Option<PathBuf>,
    pub resume: bool,
    pub dry_run: bool,
    /// Time each page may take to land, retries included.
    pub page_timeout: Duration,
}

/// Counters a progress display follows.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    pub items: Arc<AtomicU64>,
    /// Compressed bytes downloaded.
    pub bytes: Arc<AtomicU64>,
}

/// Per data file: lines confirmed in OpenSearch, written after each page.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Checkpoint {
    pub export: String,
    pub index: String,
    pub files: BTreeMap<String, FilePosition>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FilePosition {
    /// Lines (items) of the file confirmed so far.
    pub lines: u64,
    pub done: bool,
}

/// Loads the export's data files (this run's share) into the index.
pub async fn run(
    indexer: &Indexer,
    s3: &aws_sdk_s3::Client,
    export: &Export,
    opts: &Options,
    stop: &AtomicBool,
    counters: &Counters,
) -> Result<Summary, BackfillError> {
    let started = Instant::now();
    check_export_time(opts.export_time, SystemTime::now())?;
    let indexes = super::every_index(indexer, &opts.table);
    let index = indexes.join(",");
    if opts.key_names.is_empty() {
        return Err(BackfillError::Dynamo(format!(
            "table {} has no key schema",
            opts.table
        )));
    }
    let files = opts.share.select(&export.files);
    let checkpoint = match (&opts.checkpoint, opts.resume) {
        (Some(path), true) => {
            let c: Checkpoint = super::load_json(path)?;
            if c.export != export.location.url() || c.index != index {
                return Err(BackfillError::Checkpoint {
                    path: path.display().to_string(),
                    reason: format!(
                        "it is for export {} and index {}, not {} and {index}",
                        c.export,
                        c.index,
                        export.location.url()
                    ),
                });
            }
            c
        }
        _ => Checkpoint {
            export: export.location.url(),
            index: index.clone(),
            files: files
                .iter()
                .map(|f| (f.key.clone(), FilePosition::default()))
                .collect(),
        },
    };
    counters.items.store(
        checkpoint.files.values().map(|p| p.lines).sum(),
        Ordering::Relaxed,
    );
    let previous_gc = if opts.dry_run {
        Vec::new()
    } else {
        if !opts.allow_old_export {
            for index in &indexes {
                check_deletes_remembered(indexer, index, opts.export_time, opts.clock_skew).await?;
            }
        }
        super::prepare_indexes(indexer, &indexes, opts.gc_deletes.as_deref()).await?
    };
    if let (Some(path), false) = (&opts.checkpoint, opts.dry_run) {
        super::save_json(path, &checkpoint)?;
    }
    let loader = Loader::new(indexer, s3, &export.location.bucket, opts, stop, counters);
    let checkpoint = Mutex::new(checkpoint);
    let todo: Vec<(DataFile, u64)> = {
        let c = checkpoint.lock().await;
        files
            .into_iter()
            .filter_map(|f| {
                let at = c.files.get(&f.key).cloned().unwrap_or_default();
                (!at.done).then_some((f, at.lines))
            })
            .collect()
    };
    let failed = AtomicBool::new(false);
    let results: Vec<Result<(), BackfillError>> = futures::stream::iter(todo)
        .map(|(file, from_line)| {
            let (loader, checkpoint, failed) = (&loader, &checkpoint, &failed);
            async move {
                if failed.load(Ordering::Relaxed) {
                    return Ok(());
                }
                let key = &file.key;
                let saved = |lines: u64, done: bool| async move {
                    if opts.dry_run {
                        return Ok(());
                    }
                    let Some(path) = &opts.checkpoint else {
                        return Ok(());
                    };
                    let mut c = checkpoint.lock().await;
                    c.files.insert(key.clone(), FilePosition { lines, done });
                    super::save_json(path, &*c)
                };
                let r = loader.load(&file, from_line, saved).await;
                if r.is_err() {
                    failed.store(true, Ordering::Relaxed);
                }
                r
            }
        })
        .buffer_unordered(opts.files_in_parallel.max(1))
        .collect()
        .await;
    let mut summary = loader.sink.into_summary();
    summary.millis = started.elapsed().as_millis() as u64;
    summary.interrupted = stop.load(Ordering::Relaxed);
    for r in results {
        r?;
    }
    // Only a finished load puts the delete memory back: a load resumed later still needs every
    // delete made since the export remembered (and would refuse to start otherwise).
    if opts.restore_gc_deletes && !summary.interrupted {
        super::restore_gc_deletes(indexer, previous_gc).await?;
    }
    Ok(summary)
}

/// One data file, loaded on its own: the entry point of a worker that is handed single files
/// (the Step Functions Distributed Map in template.yaml). No checkpoint: a retried file starts
/// over, which writes the same versions again. The caller prepared the indexes.
pub async fn load_file(
    indexer: &Indexer,
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    file: &DataFile,
    opts: &Options,
) -> Result<Summary, BackfillError> {
    let started = Instant::now();
    check_export_time(opts.export_time, SystemTime::now())?;
    let indexes = super::every_index(indexer, &opts.table);
    crate::sink::template::check_all(&indexer.opensearch, &indexes, &indexer.config.write, true)
        .await?;
    let stop = AtomicBool::new(false);
    let counters = Counters::default();
    let loader = Loader::new(indexer, s3, bucket, opts, &stop, &counters);
    loader
        .load(file, 0, |_, _| async { Ok::<(), BackfillError>(()) })
        .await?;
    let mut summary = loader.sink.into_summary();
    summary.millis = started.elapsed().as_millis() as u64;
    Ok(summary)
}

/// The longest export line read: an item is at most 400 KB, and its DynamoDB JSON at most about
/// six times that (every byte of a string escaped as `\u00XX`), in one `{"Item":…}` line.
pub const MAX_LINE_BYTES: usize = 4 << 20;

/// Refuses an export time ahead of `now` by more than the stream allows a record's time
/// ([`MAX_CLOCK_AHEAD_SECS`]): the copies' versions come from it, and copies versioned in the
/// future would outrank every real change of their items until that time.
pub fn check_export_time(export_time: SystemTime, now: SystemTime) -> Result<(), BackfillError> {
    match export_time.duration_since(now) {
        Ok(ahead) if ahead.as_secs() > MAX_CLOCK_AHEAD_SECS => {
            Err(BackfillError::ExportData(format!(
                "the export time is {} s ahead of this machine's clock (at most {MAX_CLOCK_AHEAD_SECS} s allowed): the export's copies would outrank every later change of their items; check the manifest or --export-time",
                ahead.as_secs()
            )))
        }
        _ => Ok(()),
    }
}

/// What every file of one run shares.
struct Loader<'a> {
    s3: &'a aws_sdk_s3::Client,
    bucket: &'a str,
    table: &'a str,
    key_names: &'a [String],
    versions: VersionSource,
    approximate_secs: u64,
    page_size: usize,
    sink: Sink<'a>,
    stop: &'a AtomicBool,
    counters: &'a Counters,
}

impl<'a> Loader<'a> {
    /// Versions from the export time, as [`super::read_versions`] gives them for a read then.
    fn new(
        indexer: &'a Indexer,
        s3: &'a aws_sdk_s3::Client,
        bucket: &'a str,
        opts: &'a Options,
        stop: &'a AtomicBool,
        counters: &'a Counters,
    ) -> Loader<'a> {
        let (versions, approximate_secs) = read_versions(
            opts.export_time,
            opts.clock_skew,
            indexer.config.version_attribute.as_deref(),
        );
        Loader {
            s3,
            bucket,
            table: &opts.table,
            key_names: &opts.key_names,
            versions,
            approximate_secs,
            page_size: opts.page_size.max(1),
            sink: Sink::new(indexer, opts.dry_run, opts.page_timeout),
            stop,
            counters,
        }
    }

    /// Streams `file` from line `from_line + 1` on, landing a page at a time; `saved(lines,
    /// done)` is called after each page is confirmed.
    async fn load<F, Fut>(
        &self,
        file: &DataFile,
        from_line: u64,
        saved: F,
    ) -> Result<(), BackfillError>
    where
        F: Fn(u64, bool) -> Fut,
        Fut: std::future::Future<Output = Result<(), BackfillError>>,
    {
        let name = format!("s3://{}/{}", self.bucket, file.key);
        let mut reader = crate::tools::export::open_file(
            self.s3,
            self.bucket,
            &file.key,
            self.counters.bytes.clone(),
        )
        .await?;
        let mut line = Vec::new();
        let mut keys_json = String::new();
        let mut number = 0u64;
        let mut batch = SyntheticBatch::new(self.table, self.approximate_secs);
        let mut first_in_batch = from_line + 1;
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            line.clear();
            // At most one byte past the cap: a small gzip can expand to one endless line.
            let read = (&mut reader)
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut line)
                .await
                .map_err(|e| BackfillError::ExportData(format!("{name}: reading: {e}")))?;
            let end = read == 0;
            if line.len() > MAX_LINE_BYTES {
                return Err(BackfillError::ExportData(format!(
                    "{name} line {}: longer than {MAX_LINE_BYTES} bytes, which no item of at most 400 KB makes",
                    number + 1
                )));
            }
            if !end && !line.iter().all(u8::is_ascii_whitespace) {
                number += 1;
                if let Some(expected) = file.item_count
                    && number > expected
                {
                    return Err(BackfillError::ExportData(format!(
                        "{name} line {number}: the manifest lists {expected} items for this file; the file may have been replaced"
                    )));
                }
                if number > from_line {
                    let item = std::str::from_utf8(&line)
                        .map_err(|_| "the line is not UTF-8 text".to_string())
                        .and_then(crate::tools::export::parse_line)
                        .and_then(|item| {
                            key_attributes(&mut keys_json, item, self.key_names).map(|()| item)
                        })
                        .map_err(|reason| {
                            BackfillError::ExportData(format!("{name} line {number}: {reason}"))
                        })?;
                    batch.push(&keys_json, item.get());
                }
            }
            if !batch.is_empty()
                && (end || batch.len() >= self.page_size || batch.bytes() >= PAGE_MAX_BYTES)
            {
                let full = std::mem::replace(
                    &mut batch,
                    SyntheticBatch::new(self.table, self.approximate_secs),
                );
                let items = full.len() as u64;
                let page = format!("{name} lines {first_in_batch}-{number}");
                self.sink
                    .land(&page, &full.finish(), items, &self.versions)
                    .await?;
                self.counters.items.fetch_add(items, Ordering::Relaxed);
                first_in_batch = number + 1;
                saved(number, false).await?;
            }
            if end {
                break;
            }
        }
        if let Some(expected) = file.item_count
            && expected != number
        {
            return Err(BackfillError::ExportData(format!(
                "{name}: the manifest lists {expected} items but the file holds {number}; the file may be truncated or replaced"
            )));
        }
        saved(number, true).await
    }
}

/// Writes the key attributes of `item` (DynamoDB JSON text) as an object into `out`, in
/// `key_names` order, their values as they stand.
fn key_attributes(out: &mut String, item: &RawValue, key_names: &[String]) -> Result<(), String> {
    let attributes: BTreeMap<std::borrow::Cow<'_, str>, &RawValue> =
        serde_json::from_str(item.get()).map_err(|e| e.to_string())?;
    out.clear();
    out.push('{');
    for (n, name) in key_names.iter().enumerate() {
        let value = attributes
            .get(name.as_str())
            .ok_or_else(|| format!("the item has no key attribute {name:?}"))?;
        if n > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(name).expect("a string serializes"));
        out.push(':');
        out.push_str(value.get());
    }
    out.push('}');
    Ok(())
}

/// Refuses to load an export older than `index`'s delete memory (module docs).
async fn check_deletes_remembered(
    indexer: &Indexer,
    index: &str,
    export_time: SystemTime,
    clock_skew: Duration,
) -> Result<(), BackfillError> {
    let window = gc_deletes::window(&indexer.opensearch, index).await?;
    let age = SystemTime::now()
        .duration_since(export_time)
        .unwrap_or_default()
        + clock_skew;
    if age > window {
        let at = export_time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        return Err(BackfillError::StaleExport(format!(
            "the export is {} s old (exportTime {at}) but index {index} forgets deletes after {} s (index.gc_deletes): items deleted since the export could come back. Use `backfill --export` (it raises index.gc_deletes before exporting), or raise index.gc_deletes above the export's age before taking it, or pass --allow-old-export and run `verify --repair` afterwards",
            age.as_secs(),
            window.as_secs()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_time_ahead_of_the_clock_is_refused_past_the_streams_limit() {
        let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let at = |ahead: i64| {
            check_export_time(
                UNIX_EPOCH + Duration::from_secs((1_800_000_000 + ahead) as u64),
                now,
            )
        };
        assert!(at(-86_400).is_ok());
        assert!(at(0).is_ok());
        assert!(at(300).is_ok());
        let e = at(301).unwrap_err();
        assert_eq!(e.kind(), "ExportData");
        assert!(e.to_string().contains("301 s ahead"), "{e}");
        assert!(at(3 * 365 * 86_400).is_err());
    }

    #[test]
    fn key_attributes_are_copied_in_key_order_as_they_stand() {
        let item: Box<RawValue> =
            serde_json::from_str(r#"{"sk": {"N": "1.50"}, "pk": {"S": "a\"b"}, "v": {"S": "x"}}"#)
                .unwrap();
        let mut out = String::new();
        key_attributes(&mut out, &item, &["pk".into(), "sk".into()]).unwrap();
        assert_eq!(out, r#"{"pk":{"S": "a\"b"},"sk":{"N": "1.50"}}"#);
        let e = key_attributes(&mut out, &item, &["pk".into(), "id".into()]).unwrap_err();
        assert_eq!(e, "the item has no key attribute \"id\"");
    }
}
