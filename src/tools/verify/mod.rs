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
//! - Repair writes with the backfill's read-time versions ([`read_time::read_versions`]), so any
//!   stream change made after the read wins over the repair.
//! - Memory: a page per scan segment and a page of ids per index, whatever the table's size.
//! - Before anything is read, each index's recorded write settings must agree with this
//!   configuration's ([`crate::sink::template`]).
//!
//! `table_side` holds the first direction, `index_side` the second; this file the run, the
//! report and the key/id helpers both use.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::sink::transport::Method;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConsumedCapacity, ReturnConsumedCapacity, ScalarAttributeType,
};
use rand::SeedableRng as _;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::handler::{Indexer, RecordOutcome};
use crate::pipeline::bulk::ItemOutcome;
use crate::pipeline::change::{Action, Change, Disposition};
use crate::pipeline::plan;
use crate::pipeline::version::VersionSource;
use crate::sink::transport::{OpenSearch, RequestError};
use crate::{
    pipeline::{convert, docid},
    tools::{ddb_json, read_time, table},
};

mod index_side;
mod table_side;

#[derive(Debug, thiserror::Error)]
#[error("verify: {0}")]
pub struct VerifyError(pub String);

impl From<table::DescribeError> for VerifyError {
    fn from(e: table::DescribeError) -> VerifyError {
        VerifyError(e.0)
    }
}

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
    /// Parallel scan segments; `None`: as the backfill chooses ([`table::default_segments`]).
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
    /// Most documents one repair deletes; past it, extra documents are counted as withheld.
    pub max_deletes: u64,
    /// Also delete documents whose id is no key of this table (another table's, sharing the
    /// index); by default they are only counted as foreign.
    pub delete_foreign: bool,
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
            max_deletes: DEFAULT_MAX_DELETES,
            delete_foreign: false,
            clock_skew: Duration::from_secs(5),
            examples: 10,
            timeout: Duration::from_secs(120),
        }
    }
}

/// The most documents a repair deletes unless told otherwise: enough for everyday drift, few
/// enough that a wrong configuration cannot empty an index.
pub const DEFAULT_MAX_DELETES: u64 = 1000;

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
    /// Documents whose id is no key of this table (another table's, sharing the index): not
    /// drift of this table, deleted only with `delete_foreign`.
    pub foreign: u64,
    /// Of `missing`: items the function cannot index as they are (it quarantines them).
    pub unindexable: u64,
    /// Documents with a value a numeric query on its field cannot find: under the schemaless
    /// template, a string or boolean in a field that holds numbers in other documents (their
    /// `_ignored` names `<field>.number`). Their `_source` is whole, so this is no drift.
    pub ignored: u64,
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
    /// Extra documents not deleted: the run reached `max_deletes`.
    pub withheld: u64,
}

impl Report {
    pub fn equal(&self) -> bool {
        self.missing + self.different + self.extra == 0
    }

    /// `items N documents N missing N different N extra N`, then `foreign N` when there are
    /// documents of no key of this table and `ignored N` when documents have values a numeric
    /// query on their field cannot find.
    pub fn summary_line(&self) -> String {
        let mut line = format!(
            "items {} documents {} missing {} different {} extra {}",
            self.items, self.documents, self.missing, self.different, self.extra
        );
        if self.foreign > 0 {
            line.push_str(&format!(" foreign {}", self.foreign));
        }
        if self.ignored > 0 {
            line.push_str(&format!(" ignored {}", self.ignored));
        }
        line
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
    let keys = table::key_schema(ddb, &opts.table).await?;
    // Read with other settings, live documents would read as extra or different, and a repair
    // would write versions of another scheme. A repair records the settings where an index has
    // none yet; a read-only run only checks.
    let indexes = indexer.config.router.every_index(Some(&opts.table));
    crate::sink::template::check_all(
        &indexer.opensearch,
        &indexes,
        &indexer.config.write,
        opts.repair,
    )
    .await
    .map_err(|e| VerifyError(e.to_string()))?;
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
            .map(crate::tools::rate::RateLimiter::new),
        deletes_asked: AtomicU64::new(0),
        report: std::sync::Mutex::new(Report {
            repair: opts.repair.then(RepairReport::default),
            ..Report::default()
        }),
        progress,
    };
    let (table, index) = tokio::join!(v.table_side(), v.index_side());
    table?;
    index?;
    let ignored = v.ignored(&indexes).await?;
    let mut report = v.report.into_inner().expect("no panic while counting");
    report.ignored = ignored;
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

/// One run's shared state.
struct Verifier<'a> {
    indexer: &'a Indexer,
    ddb: &'a aws_sdk_dynamodb::Client,
    opts: &'a Options,
    keys: Vec<(String, ScalarAttributeType)>,
    key_names: Vec<String>,
    /// `METADATA_FIELDS` names: they describe a write, not the item, so they are not compared.
    metadata: Vec<String>,
    units: Option<crate::tools::rate::RateLimiter>,
    report: std::sync::Mutex<Report>,
    progress: &'a AtomicU64,
    /// Deletes a repair has asked for, against `Options::max_deletes`.
    deletes_asked: AtomicU64,
}

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

    fn os(&self) -> &OpenSearch {
        &self.indexer.opensearch
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
