//! Replay: re-drives quarantined records through the handler once their cause is fixed.
//!
//! Entries are read page by page and delivered as a stream batch through the same
//! [`Indexer::handle_detailed`] path. A record that now lands (or is superseded by newer data,
//! which versions detect) has its entry removed; one that still fails permanently is
//! quarantined again under the same id, so its entry now carries the new reason; one that
//! fails for a retryable reason keeps its entry untouched for the next run.

use std::collections::HashSet;
use std::time::Duration;

use crate::sink::transport::Method;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::handler::{Indexer, RecordOutcome};
use crate::pipeline::change::{self, Disposition};
use crate::sink::quarantine::{Entry, Part, entry_id};
use crate::sink::transport::RequestError;

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
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("replay needs QUARANTINE_INDEX to be set")]
    NoQuarantine,
    #[error("unreadable quarantine search response: {0}")]
    Response(String),
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

/// Replays every entry quarantined for the indexer's index. With `dry_run`, only converts and
/// counts.
pub async fn replay(indexer: &Indexer, dry_run: bool) -> Result<ReplayReport, ReplayError> {
    let quarantine = indexer
        .quarantine
        .as_ref()
        .ok_or(ReplayError::NoQuarantine)?;
    let os = &indexer.opensearch;
    let timeout = Duration::from_secs(60);
    let mut report = ReplayReport::default();
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
    loop {
        // Stream order, so that of two changes of one item the later is applied last (and wins
        // in the batch); `_id` breaks ties and pages stably.
        let query = serde_json::json!({
            "size": PAGE,
            "sort": [
                {"stream_order": {"order": "asc", "missing": "_last"}},
                {"_id": "asc"},
            ],
            "query": query_for(&indexer.config.router),
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
        let mut records: Vec<(&Hit, String)> = Vec::with_capacity(hits.len());
        for &hit in &hits {
            let Some(text) = record_text(indexer, &quarantine.index, hit, timeout).await? else {
                continue;
            };
            if serde_json::from_str::<&RawValue>(&text).is_ok() {
                records.push((hit, text));
            }
        }
        let payload = format!(
            "{{\"Records\":[{}]}}",
            records
                .iter()
                .map(|(_, r)| r.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
        if dry_run {
            if let Ok(plan) = change::plan(
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
        if records.len() != hits.len() {
            report.still_failing += hits.len() - records.len();
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        let handled = match indexer.handle_detailed(&payload, deadline).await {
            Ok(h) => h,
            Err(_) => {
                report.retry_later += records.len();
                continue;
            }
        };
        // Entries to remove: landed records, and the old copy of a record the handler
        // quarantined again under another id (entries written before ids carried a digest).
        let mut done: Vec<&Hit> = Vec::new();
        for ((hit, text), outcome) in records.iter().zip(&handled.outcomes) {
            match outcome {
                RecordOutcome::Indexed
                | RecordOutcome::Deleted
                | RecordOutcome::Superseded
                | RecordOutcome::Skipped => {
                    report.replayed += 1;
                    done.push(hit);
                }
                RecordOutcome::Quarantined(_) => {
                    report.still_failing += 1;
                    // The id the handler gave it: from the record's own eventID, as stored.
                    let record: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
                    let name = record["eventID"]
                        .as_str()
                        .or(record["dynamodb"]["SequenceNumber"].as_str());
                    let id = entry_id(name, text);
                    if id != hit.id {
                        rewritten.insert(id);
                        done.push(hit);
                    }
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
