//! "Is the index complete?": finds drift between a table and the indexes its items are routed
//! to, and repairs it without ever making the index older than the table.
//!
//! - Table → index: each page of a parallel, consistent scan goes through the function's own
//!   planning (routing, projection, conversion, ids); the documents it would write are fetched
//!   with one `_mget` and compared in canonical form (numbers by text), metadata fields aside
//!   (they describe a write, not the item).
//! - Index → table: each index is walked under a point in time, ids only; each page of ids is
//!   turned back into keys ([`docid::key_texts`]) and read with a consistent `BatchGetItem`. A
//!   document whose item is gone, or is routed elsewhere, is extra.
//! - A difference counts only if a second read of the item and a second fetch of the document
//!   still show it: a change the stream delivered meanwhile is not drift.
//! - Repair writes with the backfill's read-time versions ([`backfill::read_versions`]), so any
//!   stream change made after the read wins over the repair.
//! - Memory: a page per scan segment and a page of ids per index, whatever the table's size.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::types::{
    AttributeValue, ConsumedCapacity, KeysAndAttributes, ReturnConsumedCapacity,
    ScalarAttributeType, TableDescription,
};
use opensearch::http::Method;
use rand::SeedableRng as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::handler::{Indexer, RecordOutcome};
use crate::pipeline::bulk::ItemOutcome;
use crate::pipeline::change::{self, Action, Change, Disposition, VersionSource};
use crate::sink::backoff::Backoff;
use crate::sink::transport::{OpenSearch, RequestError};
use crate::{
    pipeline::{convert, docid},
    tools::{backfill, ddb_json},
};

#[derive(Debug, thiserror::Error)]
#[error("verify: {0}")]
pub struct VerifyError(pub String);

/// JSON text in a canonical form that keeps numbers exact: object keys sorted, strings
/// re-escaped one way, number text untouched. Two documents are equal when their canonical
/// texts are.
pub fn canonical(json: &str) -> Result<String, serde_json::Error> {
    let t = json.trim();
    Ok(match t.as_bytes().first() {
        Some(b'{') => {
            let map: BTreeMap<String, Box<RawValue>> = serde_json::from_str(t)?;
            let mut out = String::from("{");
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k)?);
                out.push(':');
                out.push_str(&canonical(v.get())?);
            }
            out.push('}');
            out
        }
        Some(b'[') => {
            let list: Vec<Box<RawValue>> = serde_json::from_str(t)?;
            let parts: Result<Vec<String>, _> = list.iter().map(|v| canonical(v.get())).collect();
            format!("[{}]", parts?.join(","))
        }
        Some(b'"') => serde_json::to_string(&serde_json::from_str::<String>(t)?)?,
        _ => t.to_string(),
    })
}

/// How a verification runs.
#[derive(Debug, Clone)]
pub struct Options {
    pub table: String,
    /// Parallel scan segments; `None`: as the backfill chooses ([`backfill::default_segments`]).
    pub segments: Option<u32>,
    /// Items per Scan page, and documents per page of the index walk.
    pub page_size: u32,
    /// Most read capacity units consumed per second, scan and lookups together.
    pub max_read_units_per_second: Option<f64>,
    /// Check about this fraction of the table and of each index instead of all of it.
    pub sample: Option<f64>,
    /// Seed of the sample's random choices (the same seed checks the same segments).
    pub seed: u64,
    /// Re-index missing and different items, delete extra documents.
    pub repair: bool,
    /// Walk the index for documents no item backs (off when other tables share the index).
    pub extra: bool,
    /// How far this machine's clock may be ahead of DynamoDB's (read-time versions).
    pub clock_skew: Duration,
    /// Most example ids kept per kind of drift.
    pub examples: usize,
    /// Time one OpenSearch request, or one repair, may take.
    pub timeout: Duration,
}

impl Options {
    /// Every item and every document of `table`'s indexes, no repair.
    pub fn new(table: &str) -> Options {
        Options {
            table: table.to_string(),
            segments: None,
            page_size: 1000,
            max_read_units_per_second: None,
            sample: None,
            seed: 0,
            repair: false,
            extra: true,
            clock_skew: Duration::from_secs(5),
            examples: 10,
            timeout: Duration::from_secs(120),
        }
    }
}

/// A kind of drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Drift {
    /// The item has no document in the index it is routed to.
    Missing,
    /// The document differs from the item.
    Different,
    /// The document has no item, or its item is routed elsewhere.
    Extra,
}

impl Drift {
    pub fn name(self) -> &'static str {
        match self {
            Drift::Missing => "missing",
            Drift::Different => "different",
            Drift::Extra => "extra",
        }
    }
}

/// One drifted document: where, and its id (never values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Example {
    pub kind: Drift,
    pub index: String,
    pub id: String,
}

/// What a verification found (and repaired); [`Report::equal`] when the index equals the table.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Items checked.
    pub items: u64,
    /// Documents checked (for extra ones).
    pub documents: u64,
    pub missing: u64,
    pub different: u64,
    pub extra: u64,
    /// Items routed to no index (`ROUTES`).
    pub skipped: u64,
    /// Of `missing`: items the function cannot index as they are (it quarantines them).
    pub unindexable: u64,
    /// Up to `Options::examples` of each kind.
    pub examples: Vec<Example>,
    pub sample: Option<SampleReport>,
    pub repair: Option<RepairReport>,
}

/// What a sampled run covered and what it estimates.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct SampleReport {
    pub fraction: f64,
    pub seed: u64,
    /// Scan segments checked, out of `total_segments`.
    pub segments_checked: u32,
    pub total_segments: u32,
    /// (missing + different) / items.
    pub table_drift_rate: f64,
    /// extra / documents.
    pub index_drift_rate: f64,
    /// The larger of the two.
    pub estimated_drift_rate: f64,
}

/// What `--repair` did, per drifted item or document.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct RepairReport {
    pub indexed: u64,
    pub deleted: u64,
    /// A newer change was already there: the index was not older than the table after all.
    pub superseded: u64,
    /// The index refused the item; it is in the quarantine, as the function would put it.
    pub quarantined: u64,
    pub skipped: u64,
    /// Not confirmed in time; run again.
    pub failed: u64,
}

impl Report {
    pub fn equal(&self) -> bool {
        self.missing + self.different + self.extra == 0
    }

    /// `items N documents N missing N different N extra N`.
    pub fn summary_line(&self) -> String {
        format!(
            "items {} documents {} missing {} different {} extra {}",
            self.items, self.documents, self.missing, self.different, self.extra
        )
    }

    fn count(&mut self, kind: Drift, index: &str, id: &str, examples: usize) {
        let n = match kind {
            Drift::Missing => &mut self.missing,
            Drift::Different => &mut self.different,
            Drift::Extra => &mut self.extra,
        };
        *n += 1;
        if self.examples.iter().filter(|e| e.kind == kind).count() < examples {
            self.examples.push(Example {
                kind,
                index: index.to_string(),
                id: id.to_string(),
            });
        }
    }
}

type Item = HashMap<String, AttributeValue>;

/// The scan segments to check: all `parallel` of them, or for a sample, `parallel` segments
/// chosen at random out of `parallel / fraction`, so each covers about `fraction / parallel` of
/// the table. Returns the total and the chosen ones.
pub fn segments_to_check(parallel: u32, sample: Option<f64>, seed: u64) -> (u32, Vec<u32>) {
    let Some(fraction) = sample else {
        return (parallel, (0..parallel).collect());
    };
    // DynamoDB allows at most 1,000,000 segments.
    let total = ((f64::from(parallel) / fraction).ceil() as u64)
        .clamp(u64::from(parallel), 1_000_000) as u32;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut chosen: Vec<u32> =
        rand::seq::index::sample(&mut rng, total as usize, parallel.min(total) as usize)
            .into_iter()
            .map(|i| i as u32)
            .collect();
    chosen.sort_unstable();
    (total, chosen)
}

/// Compares `opts.table` with the indexes its items are routed to; with `opts.repair`, repairs
/// what differs. `progress` counts items and documents as they are checked.
pub async fn run(
    indexer: &Indexer,
    ddb: &aws_sdk_dynamodb::Client,
    opts: &Options,
    progress: &AtomicU64,
) -> Result<Report, VerifyError> {
    let keys = key_schema(ddb, &opts.table).await?;
    let v = Verifier {
        indexer,
        ddb,
        opts,
        key_names: keys.iter().map(|(n, _)| n.clone()).collect(),
        keys,
        metadata: indexer
            .config
            .metadata
            .names()
            .map(str::to_string)
            .collect(),
        units: opts
            .max_read_units_per_second
            .map(backfill::RateLimiter::new),
        report: std::sync::Mutex::new(Report {
            repair: opts.repair.then(RepairReport::default),
            ..Report::default()
        }),
        progress,
    };
    let (table, index) = tokio::join!(v.table_side(), v.index_side());
    table?;
    index?;
    let mut report = v.report.into_inner().expect("no panic while counting");
    if let Some(s) = &mut report.sample {
        let rate = |n: u64, of: u64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
        s.table_drift_rate = rate(report.missing + report.different, report.items);
        s.index_drift_rate = rate(report.extra, report.documents);
        s.estimated_drift_rate = s.table_drift_rate.max(s.index_drift_rate);
    }
    Ok(report)
}

/// Every item of `table` against every document of its indexes, every drifted id listed: for
/// tests and the demo.
pub async fn compare(
    indexer: &Indexer,
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<Report, VerifyError> {
    let opts = Options {
        examples: usize::MAX,
        ..Options::new(table)
    };
    run(indexer, ddb, &opts, &AtomicU64::new(0)).await
}

/// The table's key attributes and their types, in attribute-name order (the order of ids).
pub async fn key_schema(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<Vec<(String, ScalarAttributeType)>, VerifyError> {
    let out = ddb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| {
            VerifyError(format!(
                "DescribeTable {table}: {}",
                crate::telemetry::error_chain(&e)
            ))
        })?;
    let t = out
        .table
        .unwrap_or_else(|| TableDescription::builder().build());
    let types = t.attribute_definitions.unwrap_or_default();
    let mut keys = Vec::new();
    for k in t.key_schema.unwrap_or_default() {
        let kind = types
            .iter()
            .find(|d| d.attribute_name == k.attribute_name)
            .map(|d| d.attribute_type.clone())
            .ok_or_else(|| {
                VerifyError(format!(
                    "table {table}: key attribute {} has no definition",
                    k.attribute_name
                ))
            })?;
        keys.push((k.attribute_name, kind));
    }
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(keys)
}

/// The table's key attribute names, in attribute-name order.
pub async fn key_names(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<Vec<String>, VerifyError> {
    Ok(key_schema(ddb, table)
        .await?
        .into_iter()
        .map(|(n, _)| n)
        .collect())
}

/// One run's shared state.
struct Verifier<'a> {
    indexer: &'a Indexer,
    ddb: &'a aws_sdk_dynamodb::Client,
    opts: &'a Options,
    keys: Vec<(String, ScalarAttributeType)>,
    key_names: Vec<String>,
    /// `METADATA_FIELDS` names: they describe a write, not the item, so they are not compared.
    metadata: Vec<String>,
    units: Option<backfill::RateLimiter>,
    report: std::sync::Mutex<Report>,
    progress: &'a AtomicU64,
}

/// An item (by position) that drifted, and where.
struct Found {
    item: usize,
    kind: Drift,
    index: String,
    id: String,
    unindexable: bool,
}

/// Pages of ids from the index walk: the id, the full key of a hashed id, the version.
#[derive(Deserialize)]
struct IdHit {
    #[serde(rename = "_id")]
    id: String,
    #[serde(rename = "_version")]
    version: Option<u64>,
    #[serde(rename = "_source")]
    source: Option<RawKey>,
    #[serde(default)]
    sort: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawKey {
    #[serde(rename = "dynamodb_raw_key")]
    raw: Option<String>,
}

#[derive(Deserialize)]
struct IdPage {
    pit_id: Option<String>,
    hits: IdHits,
}

#[derive(Deserialize)]
struct IdHits {
    hits: Vec<IdHit>,
}

/// How long a point in time stays open between two pages of the walk.
const PIT_KEEP_ALIVE: &str = "5m";

/// BatchGetItem takes at most 100 keys.
const BATCH_GET_KEYS: usize = 100;

impl Verifier<'_> {
    fn table(&self) -> &str {
        &self.opts.table
    }

    fn fail(&self, what: &str, e: impl std::fmt::Display) -> VerifyError {
        VerifyError(format!("{what}: {e}"))
    }

    /// Waits until the read units just consumed fit the rate limit.
    async fn charge(&self, capacity: Option<&ConsumedCapacity>) {
        if let (Some(limit), Some(units)) = (&self.units, capacity.and_then(|c| c.capacity_units)) {
            limit.acquire(units).await;
        }
    }

    async fn table_side(&self) -> Result<(), VerifyError> {
        let parallel = match self.opts.segments {
            Some(n) => n,
            None => backfill::default_segments(
                backfill::table_size(self.ddb, self.table())
                    .await
                    .map_err(|e| VerifyError(e.to_string()))?
                    .1,
                self.indexer.config.bulk_concurrency,
            ),
        };
        let (total, chosen) = segments_to_check(parallel, self.opts.sample, self.opts.seed);
        if let Some(fraction) = self.opts.sample {
            self.report.lock().expect("not poisoned").sample = Some(SampleReport {
                fraction,
                seed: self.opts.seed,
                segments_checked: chosen.len() as u32,
                total_segments: total,
                ..SampleReport::default()
            });
        }
        let results = futures::future::join_all(
            chosen
                .into_iter()
                .map(|segment| self.scan_segment(segment, total)),
        )
        .await;
        results.into_iter().collect()
    }

    async fn scan_segment(&self, segment: u32, total: u32) -> Result<(), VerifyError> {
        let mut start: Option<Item> = None;
        loop {
            // Taken before the read: versions from it are never too high (backfill).
            let read_at = SystemTime::now();
            let page = self
                .ddb
                .scan()
                .table_name(self.table())
                .segment(segment as i32)
                .total_segments(total as i32)
                .consistent_read(true)
                .limit(self.opts.page_size as i32)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| {
                    self.fail(
                        &format!("Scan {} segment {segment}", self.table()),
                        crate::telemetry::error_chain(&e),
                    )
                })?;
            self.charge(page.consumed_capacity.as_ref()).await;
            let items = page.items.unwrap_or_default();
            if !items.is_empty() {
                self.check_items(items, read_at).await?;
            }
            match page.last_evaluated_key.filter(|k| !k.is_empty()) {
                Some(k) => start = Some(k),
                None => return Ok(()),
            }
        }
    }

    /// Table → index for one page of items: judged, drift confirmed on a second read, counted,
    /// repaired.
    async fn check_items(&self, items: Vec<Item>, read_at: SystemTime) -> Result<(), VerifyError> {
        let (first, skipped) = self.judge_items(&items, read_at).await?;
        let mut confirmed = Vec::new();
        let mut fresh = Vec::new();
        let mut fresh_at = read_at;
        if !first.is_empty() {
            // A change the stream delivered between the scan and the `_mget` is not drift: read
            // the item and fetch the document again.
            fresh_at = SystemTime::now();
            fresh = self
                .batch_get(first.iter().map(|f| self.key_of(&items[f.item])).collect())
                .await?;
            confirmed = self.judge_items(&fresh, fresh_at).await?.0;
        }
        {
            let mut r = self.report.lock().expect("not poisoned");
            r.items += items.len() as u64;
            r.skipped += skipped;
            for f in &confirmed {
                r.count(f.kind, &f.index, &f.id, self.opts.examples);
                r.unindexable += u64::from(f.unindexable);
            }
        }
        self.progress
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        // The function quarantines unindexable items; writing them again would only add entries.
        let repair: Vec<Item> = confirmed
            .iter()
            .filter(|f| !f.unindexable)
            .map(|f| fresh[f.item].clone())
            .collect();
        if self.opts.repair && !repair.is_empty() {
            self.repair_items(&repair, fresh_at).await?;
        }
        Ok(())
    }

    /// Items read at `read_at` as the backfill hands them to the function: a synthetic batch
    /// and its read-time versions.
    fn as_batch(&self, items: &[Item], read_at: SystemTime) -> (String, VersionSource) {
        let (versions, secs) = backfill::read_versions(
            read_at,
            self.opts.clock_skew,
            self.indexer.config.version_attribute.as_deref(),
        );
        let payload = backfill::synthetic_batch(self.table(), &self.key_names, items, secs);
        (payload, versions)
    }

    /// The function's plan of a batch from [`Verifier::as_batch`].
    fn plan<'p>(
        &self,
        payload: &'p str,
        versions: &VersionSource,
    ) -> Result<change::Plan<'p>, VerifyError> {
        let config = &self.indexer.config;
        change::plan(payload, versions, &config.shape(), config.bulk_max_bytes)
            .map_err(|e| self.fail("planning a page", e))
    }

    /// Plans `items` as the function would and compares each document it would write with the
    /// one in the index. Returns the drifted items and how many are routed to no index.
    async fn judge_items(
        &self,
        items: &[Item],
        read_at: SystemTime,
    ) -> Result<(Vec<Found>, u64), VerifyError> {
        let config = &self.indexer.config;
        let (payload, versions) = self.as_batch(items, read_at);
        let plan = self.plan(&payload, &versions)?;
        let mut found = Vec::new();
        let mut skipped = 0;
        let mut wanted: Vec<(usize, &Change)> = Vec::new();
        for (pos, r) in plan.records.iter().enumerate() {
            match &r.disposition {
                Disposition::Change(i) | Disposition::Superseded(i) => {
                    let c = &plan.changes[*i];
                    if c.action == Action::Index {
                        wanted.push((pos, c));
                    }
                }
                Disposition::Skipped => skipped += 1,
                Disposition::Invalid(_) => found.push(Found {
                    item: pos,
                    kind: Drift::Missing,
                    index: config.index.clone().unwrap_or_default(),
                    id: self.id_of(&items[pos]),
                    unindexable: true,
                }),
            }
        }
        let docs = self
            .mget(wanted.iter().map(|(_, c)| (&*c.index, c.id.as_str())))
            .await?;
        for ((pos, c), doc) in wanted.into_iter().zip(docs) {
            let kind = match doc {
                None => Some(Drift::Missing),
                Some(source) => {
                    let want = std::str::from_utf8(c.document().unwrap_or(b"{}"))
                        .expect("documents are UTF-8");
                    (self.comparable(want)? != self.comparable(source.get())?)
                        .then_some(Drift::Different)
                }
            };
            if let Some(kind) = kind {
                found.push(Found {
                    item: pos,
                    kind,
                    index: c.index.to_string(),
                    id: c.id.clone(),
                    unindexable: false,
                });
            }
        }
        Ok((found, skipped))
    }

    /// A document in canonical form without its metadata fields.
    fn comparable(&self, json: &str) -> Result<String, VerifyError> {
        canonical_without(json, &self.metadata).map_err(|e| self.fail("canonical form", e))
    }

    /// Re-indexes items read at `read_at` through the function's path with read-time versions.
    async fn repair_items(&self, items: &[Item], read_at: SystemTime) -> Result<(), VerifyError> {
        let (payload, versions) = self.as_batch(items, read_at);
        let handled = self
            .indexer
            .handle_versioned(&payload, Instant::now() + self.opts.timeout, &versions)
            .await
            .map_err(|e| self.fail("repair", e))?;
        let mut r = self.report.lock().expect("not poisoned");
        let done = r.repair.get_or_insert_default();
        for o in handled.outcomes {
            *match o {
                RecordOutcome::Indexed => &mut done.indexed,
                RecordOutcome::Deleted => &mut done.deleted,
                RecordOutcome::Superseded => &mut done.superseded,
                RecordOutcome::Quarantined(_) => &mut done.quarantined,
                RecordOutcome::Skipped => &mut done.skipped,
                RecordOutcome::Reported(_) => &mut done.failed,
            } += 1;
        }
        Ok(())
    }

    async fn index_side(&self) -> Result<(), VerifyError> {
        if !self.opts.extra {
            return Ok(());
        }
        for index in self.indexer.config.router.every_index(Some(self.table())) {
            if !self.refresh(&index).await? {
                continue;
            }
            match self.opts.sample {
                Some(fraction) => self.sample_index(&index, fraction).await?,
                None => self.walk_index(&index).await?,
            }
        }
        Ok(())
    }

    /// Makes every write so far visible to search; false if the index does not exist.
    async fn refresh(&self, index: &str) -> Result<bool, VerifyError> {
        match self
            .os()
            .request(
                Method::Post,
                &format!("/{index}/_refresh"),
                None,
                self.opts.timeout,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.status == Some(404) => Ok(false),
            Err(e) => Err(self.fail("refresh", e)),
        }
    }

    fn os(&self) -> &OpenSearch {
        &self.indexer.opensearch
    }

    async fn search(&self, path: &str, query: &serde_json::Value) -> Result<Vec<u8>, RequestError> {
        self.os()
            .request(
                Method::Post,
                path,
                Some(query.to_string().into_bytes()),
                self.opts.timeout,
            )
            .await
            .map(|(_, body)| body.to_vec())
    }

    /// Every document id of `index`, page by page under a point in time, so that the walk sees
    /// one state of the index however long it takes.
    async fn walk_index(&self, index: &str) -> Result<(), VerifyError> {
        let t = self.opts.timeout;
        let opened = self
            .os()
            .request(
                Method::Post,
                &format!("/{index}/_search/point_in_time?keep_alive={PIT_KEEP_ALIVE}"),
                None,
                t,
            )
            .await
            .map_err(|e| self.fail("open a point in time", e))?;
        #[derive(Deserialize)]
        struct Pit {
            pit_id: String,
        }
        let mut pit = serde_json::from_slice::<Pit>(&opened.1)
            .map_err(|e| self.fail("point in time", e))?
            .pit_id;
        // `_shard_doc` is the cheap order for a walk; a cluster without it sorts by `_id`.
        let mut sort = serde_json::json!([{"_shard_doc": "asc"}]);
        let mut after: Option<serde_json::Value> = None;
        let result = loop {
            let mut q = serde_json::json!({
                "size": self.opts.page_size,
                "pit": {"id": pit, "keep_alive": PIT_KEEP_ALIVE},
                "sort": sort,
                "_source": [docid::RAW_KEY_FIELD],
                "version": true,
                "track_total_hits": false,
            });
            if let Some(a) = &after {
                q["search_after"] = a.clone();
            }
            let body = match self.search("/_search", &q).await {
                Ok(body) => body,
                Err(e)
                    if e.status == Some(400) && after.is_none() && sort[0].get("_id").is_none() =>
                {
                    sort = serde_json::json!([{"_id": "asc"}]);
                    continue;
                }
                Err(e) => break Err(self.fail(&format!("walk {index}"), e)),
            };
            let page: IdPage = match serde_json::from_slice(&body) {
                Ok(p) => p,
                Err(e) => break Err(self.fail(&format!("walk {index}"), e)),
            };
            if let Some(p) = page.pit_id {
                pit = p;
            }
            let Some(last) = page.hits.hits.last() else {
                break Ok(());
            };
            after = Some(serde_json::json!(last.sort));
            if let Err(e) = self.check_documents(index, page.hits.hits).await {
                break Err(e);
            }
        };
        // Closed now rather than when it expires; a failure here changes nothing found.
        let _ = self
            .os()
            .request(
                Method::Delete,
                "/_search/point_in_time",
                Some(
                    serde_json::json!({"pit_id": [pit]})
                        .to_string()
                        .into_bytes(),
                ),
                t,
            )
            .await;
        result
    }

    /// About `fraction` of `index`'s documents, chosen at random (at most 10,000, the most one
    /// search returns).
    async fn sample_index(&self, index: &str, fraction: f64) -> Result<(), VerifyError> {
        let (_, body) = self
            .os()
            .request(
                Method::Get,
                &format!("/{index}/_count"),
                None,
                self.opts.timeout,
            )
            .await
            .map_err(|e| self.fail("count", e))?;
        let count = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["count"].as_u64())
            .unwrap_or(0);
        let size = ((count as f64 * fraction).ceil() as u64).min(10_000);
        if size == 0 {
            return Ok(());
        }
        let q = serde_json::json!({
            "size": size,
            "query": {"function_score": {
                "query": {"match_all": {}},
                "random_score": {"seed": self.opts.seed, "field": "_seq_no"},
            }},
            "_source": [docid::RAW_KEY_FIELD],
            "version": true,
        });
        let body = self
            .search(&format!("/{index}/_search"), &q)
            .await
            .map_err(|e| self.fail(&format!("sample {index}"), e))?;
        let page: IdPage =
            serde_json::from_slice(&body).map_err(|e| self.fail(&format!("sample {index}"), e))?;
        let mut hits = page.hits.hits;
        while !hits.is_empty() {
            let rest = hits.split_off(hits.len().min(self.opts.page_size as usize));
            self.check_documents(index, hits).await?;
            hits = rest;
        }
        Ok(())
    }

    /// Index → table for one page of ids: each id's item is read (consistently) and planned;
    /// a document whose item is gone, or routed elsewhere, is extra once fetched again.
    async fn check_documents(&self, index: &str, hits: Vec<IdHit>) -> Result<(), VerifyError> {
        let mut candidates = Vec::new();
        let mut lookups = Vec::new();
        for (i, h) in hits.iter().enumerate() {
            let raw = h.source.as_ref().and_then(|s| s.raw.as_deref());
            match self.key_of_id(&h.id, raw) {
                Some(key) => lookups.push((i, key)),
                // No key gives this id: no item can back it.
                None => candidates.push(i),
            }
        }
        let read_at = SystemTime::now();
        let items = self
            .batch_get(lookups.iter().map(|(_, k)| k.clone()).collect())
            .await?;
        let homes = self.homes(&items, read_at)?;
        for (i, _) in lookups {
            let at_home = match homes.iter().find(|(id, _)| *id == hits[i].id) {
                Some((_, Home::Index(h))) => &**h == index,
                Some((_, Home::Unknown)) => true,
                Some((_, Home::Nowhere)) | None => false,
            };
            if !at_home {
                candidates.push(i);
            }
        }
        // Fetched again: a document deleted since the walk saw it is not extra.
        let still = self
            .mget(candidates.iter().map(|&i| (index, hits[i].id.as_str())))
            .await?;
        let extra: Vec<usize> = candidates
            .into_iter()
            .zip(still)
            .filter_map(|(i, doc)| doc.map(|_| i))
            .collect();
        {
            let mut r = self.report.lock().expect("not poisoned");
            r.documents += hits.len() as u64;
            for &i in &extra {
                r.count(Drift::Extra, index, &hits[i].id, self.opts.examples);
            }
        }
        self.progress
            .fetch_add(hits.len() as u64, Ordering::Relaxed);
        if self.opts.repair && !extra.is_empty() {
            let docs: Vec<&IdHit> = extra.iter().map(|&i| &hits[i]).collect();
            self.delete_documents(index, &docs, read_at).await;
        }
        Ok(())
    }

    /// Where each item belongs, as the function would route it, by document id.
    fn homes(
        &self,
        items: &[Item],
        read_at: SystemTime,
    ) -> Result<Vec<(String, Home)>, VerifyError> {
        let (payload, versions) = self.as_batch(items, read_at);
        let plan = self.plan(&payload, &versions)?;
        Ok(plan
            .records
            .iter()
            .enumerate()
            .map(|(pos, r)| match &r.disposition {
                Disposition::Change(i) | Disposition::Superseded(i) => {
                    let c = &plan.changes[*i];
                    (c.id.clone(), Home::Index(c.index.clone()))
                }
                Disposition::Skipped => (self.id_of(&items[pos]), Home::Nowhere),
                Disposition::Invalid(_) => (self.id_of(&items[pos]), Home::Unknown),
            })
            .collect())
    }

    /// Deletes extra documents with versions no later change can lose to: with stream-time
    /// versions, the read-time version of the lookup that found no item (a stream change after
    /// it wins); with a version attribute, one above the document's own.
    async fn delete_documents(&self, index: &str, docs: &[&IdHit], read_at: SystemTime) {
        let attribute = self.indexer.config.version_attribute.as_deref();
        let (versions, _) = backfill::read_versions(read_at, self.opts.clock_skew, attribute);
        let index: Arc<str> = Arc::from(index);
        let changes: Vec<Change> = docs
            .iter()
            .enumerate()
            .map(|(k, d)| {
                let version = match versions {
                    VersionSource::Fixed(v) => v,
                    _ => d.version.unwrap_or(0).saturating_add(1),
                };
                Change::delete(
                    index.clone(),
                    d.id.clone(),
                    version,
                    versions.version_type(),
                    k,
                )
            })
            .collect();
        let outcomes = self
            .indexer
            .apply(&changes, Instant::now() + self.opts.timeout)
            .await;
        let mut r = self.report.lock().expect("not poisoned");
        let done = r.repair.get_or_insert_default();
        for o in outcomes {
            *match o {
                ItemOutcome::Deleted | ItemOutcome::Indexed => &mut done.deleted,
                ItemOutcome::Superseded => &mut done.superseded,
                ItemOutcome::Skipped => &mut done.skipped,
                ItemOutcome::Retry(_) | ItemOutcome::Permanent(_) => &mut done.failed,
            } += 1;
        }
    }

    /// Documents by (index, id), in order, fetched in real time (`None`: not found).
    async fn mget<'i>(
        &self,
        ids: impl Iterator<Item = (&'i str, &'i str)>,
    ) -> Result<Vec<Option<Box<RawValue>>>, VerifyError> {
        let docs: Vec<serde_json::Value> = ids
            .map(|(index, id)| serde_json::json!({"_index": index, "_id": id}))
            .collect();
        if docs.is_empty() {
            return Ok(Vec::new());
        }
        let n = docs.len();
        let body = self
            .search("/_mget", &serde_json::json!({ "docs": docs }))
            .await
            .map_err(|e| self.fail("_mget", e))?;
        #[derive(Deserialize)]
        struct Res {
            docs: Vec<Doc>,
        }
        #[derive(Deserialize)]
        struct Doc {
            #[serde(default)]
            found: bool,
            #[serde(rename = "_source")]
            source: Option<Box<RawValue>>,
            #[serde(rename = "_index", default)]
            index: String,
            error: Option<serde_json::Value>,
        }
        let res: Res = serde_json::from_slice(&body).map_err(|e| self.fail("_mget", e))?;
        if res.docs.len() != n {
            return Err(self.fail(
                "_mget",
                format!("asked for {n} documents, got {} answers", res.docs.len()),
            ));
        }
        res.docs
            .into_iter()
            .map(|d| match d.error {
                Some(e) if e["type"] == "index_not_found_exception" => Ok(None),
                Some(e) => Err(self.fail(
                    &format!("_mget in {}", d.index),
                    e["type"].as_str().unwrap_or("error"),
                )),
                None => Ok(if d.found { d.source } else { None }),
            })
            .collect()
    }

    /// Items by key, read consistently; absent items are left out.
    async fn batch_get(&self, keys: Vec<Item>) -> Result<Vec<Item>, VerifyError> {
        let backoff = Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_secs(5),
        };
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH_GET_KEYS) {
            let mut pending = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(chunk.to_vec()))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| self.fail("BatchGetItem", e))?,
            );
            let mut attempt = 0;
            while let Some(request) = pending.take() {
                let res = self
                    .ddb
                    .batch_get_item()
                    .request_items(self.table(), request)
                    .return_consumed_capacity(ReturnConsumedCapacity::Total)
                    .send()
                    .await
                    .map_err(|e| {
                        self.fail(
                            &format!("BatchGetItem {}", self.table()),
                            crate::telemetry::error_chain(&e),
                        )
                    })?;
                for c in res.consumed_capacity.unwrap_or_default() {
                    self.charge(Some(&c)).await;
                }
                if let Some(mut found) = res.responses {
                    out.extend(found.remove(self.table()).unwrap_or_default());
                }
                // Throttled keys come back unprocessed: ask again after a wait.
                pending = res
                    .unprocessed_keys
                    .and_then(|mut u| u.remove(self.table()))
                    .filter(|k| !k.keys.is_empty());
                if pending.is_some() {
                    attempt += 1;
                    if attempt > 10 {
                        return Err(self.fail(
                            &format!("BatchGetItem {}", self.table()),
                            "keys still unprocessed after 10 attempts",
                        ));
                    }
                    Backoff::wait(backoff.delay(attempt)).await;
                }
            }
        }
        Ok(out)
    }

    /// The item's key attributes.
    fn key_of(&self, item: &Item) -> Item {
        self.key_names
            .iter()
            .filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone())))
            .collect()
    }

    /// The item's document id.
    fn id_of(&self, item: &Item) -> String {
        let mut keys = String::new();
        ddb_json::table::write_item(&mut keys, &self.key_of(item));
        docid::doc_id(&keys).map(|d| d.id).unwrap_or_default()
    }

    /// The key a document id stands for (`raw`: the full text of a hashed id); `None` when no
    /// key of this table gives that id.
    fn key_of_id(&self, id: &str, raw: Option<&str>) -> Option<Item> {
        let texts = docid::key_texts(id, raw, self.keys.len())?;
        let mut key = HashMap::new();
        for ((name, kind), text) in self.keys.iter().zip(texts) {
            let value = match kind {
                ScalarAttributeType::S if !text.is_empty() => AttributeValue::S(text),
                // Only the canonical text: another spelling of the number is another id.
                ScalarAttributeType::N => {
                    let d = convert::Decimal::parse(&text)?;
                    (d.canonical_text() == text).then_some(AttributeValue::N(text))?
                }
                ScalarAttributeType::B => {
                    use base64::Engine as _;
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(&text)
                        .ok()
                        .filter(|b| !b.is_empty())?;
                    AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(bytes))
                }
                _ => return None,
            };
            key.insert(name.clone(), value);
        }
        Some(key)
    }
}

/// Where an item belongs.
enum Home {
    Index(Arc<str>),
    /// Routed to no index.
    Nowhere,
    /// The function cannot index it as it is (the table side reports it).
    Unknown,
}

/// [`canonical`] of a JSON object without the top-level fields in `skip`.
pub fn canonical_without(json: &str, skip: &[String]) -> Result<String, serde_json::Error> {
    if skip.is_empty() {
        return canonical(json);
    }
    let mut map: BTreeMap<String, Box<RawValue>> = serde_json::from_str(json)?;
    map.retain(|k, _| !skip.contains(k));
    canonical(&serde_json::to_string(&map)?)
}
/// Every document of `index`: id → `_source` exactly as stored.
pub async fn documents(
    os: &OpenSearch,
    index: &str,
) -> Result<BTreeMap<String, String>, VerifyError> {
    let t = Duration::from_secs(60);
    let fail = |e: crate::sink::transport::RequestError| VerifyError(e.to_string());
    os.request(Method::Post, &format!("/{index}/_refresh"), None, t)
        .await
        .map_err(fail)?;
    #[derive(Deserialize)]
    struct Res<'a> {
        #[serde(borrow)]
        hits: Hits<'a>,
    }
    #[derive(Deserialize)]
    struct Hits<'a> {
        #[serde(borrow)]
        hits: Vec<Hit<'a>>,
    }
    #[derive(Deserialize)]
    struct Hit<'a> {
        #[serde(rename = "_id")]
        id: String,
        #[serde(borrow, rename = "_source")]
        source: &'a RawValue,
    }
    let mut out = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut q =
            serde_json::json!({"size": 1000, "sort": [{"_id": "asc"}], "query": {"match_all": {}}});
        if let Some(a) = &after {
            q["search_after"] = serde_json::json!([a]);
        }
        let (_, body) = os
            .request(
                Method::Post,
                &format!("/{index}/_search"),
                Some(q.to_string().into_bytes()),
                t,
            )
            .await
            .map_err(fail)?;
        let res: Res = serde_json::from_slice(&body).map_err(|e| VerifyError(e.to_string()))?;
        let Some(last) = res.hits.hits.last() else {
            return Ok(out);
        };
        after = Some(last.id.clone());
        for h in res.hits.hits {
            out.insert(h.id, h.source.get().to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{canonical, canonical_without, segments_to_check};

    #[test]
    fn a_sample_checks_as_many_segments_as_a_full_run_out_of_more() {
        assert_eq!(segments_to_check(4, None, 1), (4, vec![0, 1, 2, 3]));
        let (total, chosen) = segments_to_check(4, Some(0.01), 7);
        assert_eq!(total, 400);
        assert_eq!(chosen.len(), 4);
        assert!(chosen.windows(2).all(|w| w[0] < w[1]) && chosen[3] < 400);
        assert_eq!(
            segments_to_check(4, Some(0.01), 7).1,
            chosen,
            "a seed repeats"
        );
        assert_ne!(segments_to_check(4, Some(0.01), 8).1, chosen);
        assert_eq!(segments_to_check(4, Some(1.0), 7), (4, vec![0, 1, 2, 3]));
        assert_eq!(segments_to_check(8, Some(1e-9), 7).0, 1_000_000);
    }

    #[test]
    fn metadata_fields_are_left_out_of_the_comparison_at_the_top_only() {
        let skip = ["ddb_time".to_string()];
        assert_eq!(
            canonical_without(r#"{"b":1,"ddb_time":5,"m":{"ddb_time":6}}"#, &skip).unwrap(),
            r#"{"b":1,"m":{"ddb_time":6}}"#
        );
    }

    #[test]
    fn canonical_form_sorts_keys_and_keeps_number_text() {
        assert_eq!(
            canonical(r#"{"b":1.50,"a":["\u00e9",1E+30,{"y":null,"x":true}]}"#).unwrap(),
            r#"{"a":["é",1E+30,{"x":true,"y":null}],"b":1.50}"#
        );
        assert_ne!(canonical("1.50").unwrap(), canonical("1.5").unwrap());
    }
}
