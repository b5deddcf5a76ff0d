//! Replay: re-drives quarantined records once their cause is fixed, without ever moving the
//! index away from the table.
//!
//! A quarantined change is old: since it was quarantined its item may have changed again, or
//! been deleted, and once the delete's tombstone has aged out of `index.gc_deletes` the old
//! change would be accepted again and bring the deleted item back. So:
//!
//! - **With the table** (`--table`, the normal way): each entry's item is read again by its
//!   `Keys` (consistent read) and what the table holds now is written with read-time versions,
//!   the repair rule of `verify`: a present item is indexed as it is, an absent one deleted from
//!   every index it could be in. Only the table's own entries are taken (by the record's
//!   `eventSourceARN`); others stay. A change the stream makes after the read always wins.
//! - **Without it**: the entry's own record is re-sent through the handler, at its own
//!   version, but only while every index it can go to still remembers deletes made after it
//!   (its age below the index's `index.gc_deletes`); older entries stay.
//!
//! Before anything is written, each index's recorded write settings must agree with this
//! configuration's (`sink::template`). A record that lands (or is superseded by newer data) has
//! its entry removed; one that still fails permanently is quarantined again (the handler's new
//! entry holds the new reason); one that fails for a retryable reason keeps its entry for the
//! next run. Only entries present when the run started are read.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::sink::transport::Method;
use serde::Deserialize;
use tokio::time::Instant;

use crate::handler::{Indexer, RecordOutcome};
use crate::pipeline::bulk::ItemOutcome;
use crate::pipeline::change::{Change, Disposition};
use crate::pipeline::docid;
use crate::pipeline::plan;
use crate::pipeline::version::VersionSource;
use crate::sink::gc_deletes;
use crate::sink::quarantine::{Entry, Part, entry_id};
use crate::sink::transport::RequestError;
use crate::tools::ddb_json;
use crate::tools::read_time::{SyntheticBatch, read_versions};
use crate::tools::table::{self, Item};

/// Entries per page (one handler batch).
const PAGE: usize = 500;

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub entries: usize,
    /// Landed (indexed, deleted or superseded by newer data); entries removed.
    pub replayed: usize,
    /// Still permanently refused; entries kept with their new reason.
    pub still_failing: usize,
    /// Retryable failure this time; entries kept as they were.
    pub retry_later: usize,
    /// Dry run only: records that convert now (the index may still refuse them).
    pub would_replay: usize,
    /// Entries of another table than the one read (`--table`); kept.
    pub foreign: usize,
    /// Without the table: entries older than the index's delete memory, which could bring a
    /// deleted item back; kept.
    pub too_old: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("replay needs QUARANTINE_INDEX to be set")]
    NoQuarantine,
    #[error("unreadable quarantine search response: {0}")]
    Response(String),
    #[error("replay: {0}")]
    WriteSettings(String),
    #[error("replay: reading the table: {0}")]
    Table(String),
}

#[derive(Deserialize)]
struct SearchResponse<H> {
    hits: Hits<H>,
}
#[derive(Deserialize)]
struct Hits<H> {
    hits: Vec<H>,
}

/// One page of a search of the quarantine, continuing after `after` (the last hit's sort
/// values); `None` when the quarantine index does not exist.
async fn search_page<H: serde::de::DeserializeOwned>(
    os: &crate::sink::transport::OpenSearch,
    quarantine: &str,
    mut query: serde_json::Value,
    after: &Option<Vec<serde_json::Value>>,
    timeout: Duration,
) -> Result<Option<Vec<H>>, ReplayError> {
    if let Some(a) = after {
        query["search_after"] = serde_json::json!(a);
    }
    let path = format!("/{quarantine}/_search");
    let (_, body) = match os
        .request(
            Method::Post,
            &path,
            Some(query.to_string().into_bytes()),
            timeout,
        )
        .await
    {
        Ok(r) => r,
        Err(e) if e.status == Some(404) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let page: SearchResponse<H> =
        serde_json::from_slice(&body).map_err(|e| ReplayError::Response(e.to_string()))?;
    Ok(Some(page.hits.hits))
}
#[derive(Deserialize)]
struct Hit {
    #[serde(rename = "_id")]
    id: String,
    #[serde(rename = "_source")]
    source: Entry,
    /// The hit's sort values, passed back as `search_after`.
    #[serde(default)]
    sort: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct PartHit {
    #[serde(rename = "_source")]
    source: Option<Part>,
}

/// The quarantine at a glance: entries by index and reason (reasons redacted: no item values),
/// the oldest and newest entry time. Reads only those fields, page by page.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QuarantineSummary {
    pub entries: usize,
    /// (index, redacted reason) → entries.
    pub by_reason: std::collections::BTreeMap<(String, String), usize>,
    /// `quarantined_at` of the oldest and newest entry, epoch ms.
    pub oldest_ms: Option<u64>,
    pub newest_ms: Option<u64>,
}

/// Lists the quarantine without replaying anything.
pub async fn summarize(indexer: &Indexer) -> Result<QuarantineSummary, ReplayError> {
    #[derive(Deserialize)]
    struct Brief {
        #[serde(default)]
        index: String,
        #[serde(default)]
        reason: String,
        #[serde(default)]
        quarantined_at: Option<u64>,
    }
    #[derive(Deserialize)]
    struct BriefHit {
        #[serde(rename = "_source")]
        source: Brief,
        #[serde(default)]
        sort: Vec<serde_json::Value>,
    }
    let quarantine = indexer
        .quarantine
        .as_ref()
        .ok_or(ReplayError::NoQuarantine)?;
    let os = &indexer.opensearch;
    let timeout = Duration::from_secs(60);
    let mut summary = QuarantineSummary::default();
    let mut after: Option<Vec<serde_json::Value>> = None;
    loop {
        // Entries only: part documents have no `index`.
        let query = serde_json::json!({
            "size": 1000,
            "sort": [{"_id": "asc"}],
            "_source": ["index", "reason", "quarantined_at"],
            "query": {"bool": {
                "must": [query_for(&indexer.config.router)],
                "must_not": [{"exists": {"field": "part_of"}}],
            }},
        });
        let page: Option<Vec<BriefHit>> =
            search_page(os, &quarantine.index, query, &after, timeout).await?;
        let Some(hits) = page.filter(|h| !h.is_empty()) else {
            return Ok(summary);
        };
        after = hits.last().map(|h| h.sort.clone());
        for hit in hits {
            let b = hit.source;
            summary.entries += 1;
            *summary
                .by_reason
                .entry((b.index, crate::redact::reason(&b.reason)))
                .or_default() += 1;
            if let Some(t) = b.quarantined_at {
                summary.oldest_ms = Some(summary.oldest_ms.map_or(t, |o| o.min(t)));
                summary.newest_ms = Some(summary.newest_ms.map_or(t, |n| n.max(t)));
            }
        }
    }
}

/// The table a replay reads items back from before it writes.
pub struct TableAccess<'a> {
    pub ddb: &'a aws_sdk_dynamodb::Client,
    pub table: &'a str,
    /// The table's key attribute names.
    pub key_names: &'a [String],
    /// How far this machine's clock may be ahead of DynamoDB's (read-time versions).
    pub clock_skew: Duration,
}

/// How a replay runs.
#[derive(Default)]
pub struct Options<'a> {
    /// Only convert and count: write nothing, remove nothing.
    pub dry_run: bool,
    /// Read each entry's item again and write what the table holds now (module docs). Without
    /// it, entries older than the index's delete memory are refused.
    pub table: Option<TableAccess<'a>>,
}

/// One quarantined entry of a page, read back.
struct Pending<'h> {
    hit: &'h Hit,
    text: String,
    record: serde_json::Value,
}

/// Replays every entry quarantined for the indexer's index (module docs).
pub async fn replay(indexer: &Indexer, opts: &Options<'_>) -> Result<ReplayReport, ReplayError> {
    let quarantine = indexer
        .quarantine
        .as_ref()
        .ok_or(ReplayError::NoQuarantine)?;
    let os = &indexer.opensearch;
    let timeout = Duration::from_secs(60);
    let mut report = ReplayReport::default();
    let table = opts.table.as_ref().map(|t| t.table);
    // Written with other settings, the index would take versions of another scheme.
    let indexes = indexer.config.router.every_index(table);
    crate::sink::template::check_all(os, &indexes, &indexer.config.write, !opts.dry_run)
        .await
        .map_err(|e| ReplayError::WriteSettings(e.to_string()))?;
    let _ = os
        .request(
            Method::Post,
            &format!("/{}/_refresh", quarantine.index),
            None,
            timeout,
        )
        .await;
    let mut after: Option<Vec<serde_json::Value>> = None;
    // Entries this run wrote again under a new id: a later page must not count them twice.
    let mut rewritten: HashSet<String> = HashSet::new();
    // Each index's delete memory, read once.
    let mut windows: HashMap<Arc<str>, Duration> = HashMap::new();
    // Only entries that were there when the run started: one quarantined again meanwhile is
    // not replayed twice, and the run ends.
    let started_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let entries = serde_json::json!({"bool": {
        "must": [query_for(&indexer.config.router)],
        "should": [
            {"range": {"quarantined_at": {"lte": started_ms}}},
            {"bool": {"must_not": [{"exists": {"field": "quarantined_at"}}]}},
        ],
        "minimum_should_match": 1,
    }});
    loop {
        // Stream order, so that of two changes of one item the later is applied last (and wins
        // in the batch); `_id` breaks ties and pages stably.
        let query = serde_json::json!({
            "size": PAGE,
            "sort": [
                {"stream_order": {"order": "asc", "missing": "_last"}},
                {"_id": "asc"},
            ],
            "query": entries,
        });
        let page: Option<Vec<Hit>> =
            search_page(os, &quarantine.index, query, &after, timeout).await?;
        let Some(page) = page.filter(|h| !h.is_empty()) else {
            return Ok(report);
        };
        after = page.last().map(|h| h.sort.clone());
        let hits: Vec<&Hit> = page.iter().filter(|h| !rewritten.contains(&h.id)).collect();
        report.entries += hits.len();
        // Entries with their records, in page order; an entry whose record cannot be read back
        // (text that is not JSON, a missing part) cannot be replayed and is left out.
        let mut pending: Vec<Pending> = Vec::with_capacity(hits.len());
        for &hit in &hits {
            let Some(text) = record_text(indexer, &quarantine.index, hit, timeout).await? else {
                report.still_failing += 1;
                continue;
            };
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(record) if record.is_object() => pending.push(Pending { hit, text, record }),
                _ => report.still_failing += 1,
            }
        }
        // Only this table's entries; without the table, only entries whose deletes the index
        // still remembers.
        let mut kept = Vec::with_capacity(pending.len());
        for p in pending {
            let of = record_table(&p.record);
            match &opts.table {
                Some(t) if of != Some(t.table) => report.foreign += 1,
                Some(_) => kept.push(p),
                None => {
                    if remembered(indexer, &p.record, of, &mut windows).await? {
                        kept.push(p);
                    } else {
                        report.too_old += 1;
                    }
                }
            }
        }
        let pending = kept;
        if opts.dry_run {
            let payload = batch_of(pending.iter().map(|p| p.text.as_str()));
            if let Ok(plan) = plan::plan(
                &payload,
                &indexer.versions(),
                &indexer.config.shape(),
                indexer.config.bulk_max_bytes,
            ) {
                report.would_replay += plan
                    .records
                    .iter()
                    .filter(|r| !matches!(r.disposition, Disposition::Invalid(_)))
                    .count();
            }
            continue;
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        let outcomes = match &opts.table {
            Some(t) => from_table(indexer, t, &pending, deadline).await?,
            None => {
                let payload = batch_of(pending.iter().map(|p| p.text.as_str()));
                match indexer.handle_detailed(&payload, deadline).await {
                    Ok(h) => h.outcomes.into_iter().map(Some).collect(),
                    Err(e) => vec![Some(RecordOutcome::Reported(e.to_string())); pending.len()],
                }
            }
        };
        // Entries to remove: landed records, and the old copy of a record the handler
        // quarantined again under another id (entries written before ids carried a digest).
        let mut done: Vec<&Hit> = Vec::new();
        for (p, outcome) in pending.iter().zip(&outcomes) {
            let Some(outcome) = outcome else {
                report.still_failing += 1;
                continue;
            };
            match outcome {
                RecordOutcome::Indexed
                | RecordOutcome::Deleted
                | RecordOutcome::Superseded
                | RecordOutcome::Skipped => {
                    report.replayed += 1;
                    done.push(p.hit);
                }
                RecordOutcome::Quarantined(_) if opts.table.is_none() => {
                    report.still_failing += 1;
                    // The id the handler gave it: from the record's own eventID, as stored.
                    let name = p.record["eventID"]
                        .as_str()
                        .or(p.record["dynamodb"]["SequenceNumber"].as_str());
                    let id = entry_id(name, &p.text);
                    if id != p.hit.id {
                        rewritten.insert(id);
                        done.push(p.hit);
                    }
                }
                // Read from the table, the item is quarantined again as it is now, in an entry
                // of its own (written after this run started, so not read again by it): that
                // entry replaces this one.
                RecordOutcome::Quarantined(_) => {
                    report.still_failing += 1;
                    done.push(p.hit);
                }
                RecordOutcome::Reported(_) => report.retry_later += 1,
            }
        }
        for hit in done {
            let parts = hit.source.parts.unwrap_or(0);
            let ids = std::iter::once(hit.id.clone())
                .chain((0..parts).map(|k| format!("{}~{k}", hit.id)));
            for id in ids {
                let path = format!("/{}/_doc/{}", quarantine.index, urlencode(&id));
                match os.request(Method::Delete, &path, None, timeout).await {
                    Ok(_) => {}
                    Err(e) if e.status == Some(404) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

/// `{"Records":[…]}` of record texts.
fn batch_of<'t>(records: impl Iterator<Item = &'t str>) -> String {
    format!(
        "{{\"Records\":[{}]}}",
        records.collect::<Vec<_>>().join(",")
    )
}

/// The table a record is of, from its `eventSourceARN`.
fn record_table(record: &serde_json::Value) -> Option<&str> {
    record["eventSourceARN"]
        .as_str()
        .and_then(crate::pipeline::routing::table_of)
}

/// Whether every index the record can go to still remembers any delete made after the record's
/// change (`index.gc_deletes` longer than the change's age). A record without a time, or of a
/// table its index name cannot be built for, is not.
async fn remembered(
    indexer: &Indexer,
    record: &serde_json::Value,
    table: Option<&str>,
    windows: &mut HashMap<Arc<str>, Duration>,
) -> Result<bool, ReplayError> {
    let Some(at) = record["dynamodb"]["ApproximateCreationDateTime"]
        .as_f64()
        .filter(|t| t.is_finite() && *t >= 0.0)
    else {
        return Ok(false);
    };
    let age = SystemTime::now()
        .duration_since(UNIX_EPOCH + Duration::from_secs_f64(at))
        .unwrap_or_default();
    let indexes = indexer.config.router.every_index(table);
    if indexes.is_empty() {
        return Ok(false);
    }
    for index in indexes {
        let window = match windows.get(&index) {
            Some(w) => *w,
            None => {
                let w = gc_deletes::window(&indexer.opensearch, &index)
                    .await
                    .map_err(|e| ReplayError::Response(e.to_string()))?;
                windows.insert(index.clone(), w);
                w
            }
        };
        if age >= window {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The entries' items as the table holds them now, written with read-time versions (the repair
/// rule): a present item is indexed as it is, an absent one deleted from every index it could
/// be in. One outcome per entry; `None` for a record whose `Keys` are not a key of the table
/// (nothing was read or written for it).
async fn from_table(
    indexer: &Indexer,
    t: &TableAccess<'_>,
    pending: &[Pending<'_>],
    deadline: Instant,
) -> Result<Vec<Option<RecordOutcome>>, ReplayError> {
    let mut outcomes: Vec<Option<RecordOutcome>> = vec![None; pending.len()];
    let mut keys: Vec<(usize, Item)> = Vec::new();
    for (i, p) in pending.iter().enumerate() {
        match serde_json::from_value::<HashMap<String, serde_dynamo::AttributeValue>>(
            p.record["dynamodb"]["Keys"].clone(),
        ) {
            Ok(k)
                if t.key_names.iter().all(|n| k.contains_key(n))
                    && k.len() == t.key_names.len() =>
            {
                keys.push((i, k.into_iter().map(|(n, v)| (n, v.into())).collect()));
            }
            // Not a key of this table: nothing to read, the entry stays.
            _ => {}
        }
    }
    let read_at = SystemTime::now();
    let reader = table::Reader {
        ddb: t.ddb,
        table: t.table,
        key_names: t.key_names,
        units: None,
    };
    let items = reader
        .get(&keys.iter().map(|(_, k)| k.clone()).collect::<Vec<_>>())
        .await
        .map_err(|e| ReplayError::Table(e.to_string()))?;
    let attribute = indexer.config.version_attribute.as_deref();
    let (versions, approximate_secs) = read_versions(read_at, t.clock_skew, attribute);
    let mut batch = SyntheticBatch::new(t.table, approximate_secs);
    let mut present = Vec::new();
    let mut deletes: Vec<Change> = Vec::new();
    let mut delete_of: Vec<usize> = Vec::new();
    let (mut keys_json, mut item_json) = (String::new(), String::new());
    for ((i, key), item) in keys.iter().zip(items) {
        keys_json.clear();
        ddb_json::table::write_item(&mut keys_json, key);
        match item {
            Some(item) => {
                item_json.clear();
                ddb_json::table::write_item(&mut item_json, &item);
                batch.push(&keys_json, &item_json);
                present.push(*i);
            }
            None => {
                let id = docid::doc_id(&keys_json)
                    .map_err(|e| ReplayError::Table(format!("Keys: {e}")))?
                    .id;
                for index in indexer.config.router.every_index(Some(t.table)) {
                    let version = match versions {
                        VersionSource::Fixed(v) => Some(v),
                        // A counter: one above the document's own, if there is one.
                        _ => document_version(indexer, &index, &id)
                            .await?
                            .map(|v| v.saturating_add(1)),
                    };
                    if let Some(v) = version {
                        deletes.push(Change::delete(
                            index,
                            id.clone(),
                            v,
                            versions.version_type(),
                            deletes.len(),
                        ));
                        delete_of.push(*i);
                    }
                }
                outcomes[*i] = Some(RecordOutcome::Deleted);
            }
        }
    }
    if !present.is_empty() {
        let handled = indexer
            .handle_versioned(&batch.finish(), deadline, &versions)
            .await
            .map_err(|e| ReplayError::Table(e.to_string()))?;
        for (i, o) in present.into_iter().zip(handled.outcomes) {
            outcomes[i] = Some(o);
        }
    }
    if !deletes.is_empty() {
        for (i, o) in delete_of
            .into_iter()
            .zip(indexer.apply(&deletes, deadline).await)
        {
            let worse = match o {
                ItemOutcome::Retry(r) => Some(RecordOutcome::Reported(r)),
                ItemOutcome::Permanent(r) => Some(RecordOutcome::Quarantined(r)),
                _ => None,
            };
            if let Some(w) = worse
                && !matches!(outcomes[i], Some(RecordOutcome::Quarantined(_)))
            {
                outcomes[i] = Some(w);
            }
        }
    }
    Ok(outcomes)
}

/// The version of document `id` in `index`, if it is there.
async fn document_version(
    indexer: &Indexer,
    index: &str,
    id: &str,
) -> Result<Option<u64>, ReplayError> {
    #[derive(Deserialize)]
    struct Doc {
        #[serde(rename = "_version")]
        version: Option<u64>,
    }
    let path = format!("/{index}/_doc/{}?_source=false", urlencode(id));
    match indexer
        .opensearch
        .request(Method::Get, &path, None, Duration::from_secs(60))
        .await
    {
        Ok((_, body)) => Ok(serde_json::from_slice::<Doc>(&body)
            .map_err(|e| ReplayError::Response(e.to_string()))?
            .version),
        Err(e) if e.status == Some(404) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The record an entry holds: its `record`, or its parts joined; `None` if a part is missing.
async fn record_text(
    indexer: &Indexer,
    quarantine_index: &str,
    hit: &Hit,
    timeout: Duration,
) -> Result<Option<String>, ReplayError> {
    let Some(parts) = hit.source.parts else {
        return Ok(Some(hit.source.record.clone()));
    };
    let mut text = String::new();
    for k in 0..parts {
        let path = format!(
            "/{quarantine_index}/_doc/{}",
            urlencode(&format!("{}~{k}", hit.id))
        );
        let body = match indexer
            .opensearch
            .request(Method::Get, &path, None, timeout)
            .await
        {
            Ok((_, body)) => body,
            Err(e) if e.status == Some(404) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let part: PartHit =
            serde_json::from_slice(&body).map_err(|e| ReplayError::Response(e.to_string()))?;
        match part.source {
            Some(p) if p.part == k => text.push_str(&p.record_part),
            _ => return Ok(None),
        }
    }
    Ok(Some(text))
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// The entries this configuration replays: those for its index; with `ROUTES` or a `{table}`
/// index, every entry (each is routed again as it is replayed).
fn query_for(router: &crate::pipeline::routing::Router) -> serde_json::Value {
    match router.fixed_default().filter(|_| router.is_single()) {
        // `index.keyword` too, for a quarantine index that dynamic mapping created.
        Some(index) => serde_json::json!({"bool": {"should": [
            {"term": {"index": index}},
            {"term": {"index.keyword": index}},
        ]}}),
        None => serde_json::json!({"match_all": {}}),
    }
}
