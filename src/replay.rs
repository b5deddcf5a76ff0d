//! Replay: re-drives quarantined records through the handler once their cause is fixed.
//!
//! Entries are read page by page and delivered as a stream batch through the same
//! [`Indexer::handle_detailed`] path. A record that now lands (or is superseded by newer data,
//! which versions detect) has its entry removed; one that still fails permanently is
//! quarantined again under the same id, so its entry now carries the new reason; one that
//! fails for a retryable reason keeps its entry untouched for the next run.

use std::time::Duration;

use opensearch::http::Method;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::change::{self, Disposition};
use crate::handler::{Indexer, RecordOutcome};
use crate::quarantine::Entry;
use crate::transport::RequestError;

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
struct SearchResponse {
    hits: Hits,
}
#[derive(Deserialize)]
struct Hits {
    hits: Vec<Hit>,
}
#[derive(Deserialize)]
struct Hit {
    #[serde(rename = "_id")]
    id: String,
    #[serde(rename = "_source")]
    source: Entry,
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
    let mut after: Option<String> = None;
    loop {
        let mut query = serde_json::json!({
            "size": PAGE,
            "sort": [{"_id": "asc"}],
            // `index.keyword` too, for a quarantine index that dynamic mapping created.
            "query": {"bool": {"should": [
                {"term": {"index": indexer.config.index}},
                {"term": {"index.keyword": indexer.config.index}},
            ]}},
        });
        if let Some(a) = &after {
            query["search_after"] = serde_json::json!([a]);
        }
        let path = format!("/{}/_search", quarantine.index);
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
            Err(e) if e.status == Some(404) => return Ok(report),
            Err(e) => return Err(e.into()),
        };
        let page: SearchResponse =
            serde_json::from_slice(&body).map_err(|e| ReplayError::Response(e.to_string()))?;
        if page.hits.hits.is_empty() {
            return Ok(report);
        }
        after = page.hits.hits.last().map(|h| h.id.clone());
        report.entries += page.hits.hits.len();
        // Entries with their records, in page order; an entry whose record text is not JSON
        // cannot be replayed and is left out of the batch.
        let records: Vec<(&Hit, &RawValue)> = page
            .hits
            .hits
            .iter()
            .filter_map(|h| Some((h, serde_json::from_str::<&RawValue>(&h.source.record).ok()?)))
            .collect();
        let payload = format!(
            "{{\"Records\":[{}]}}",
            records
                .iter()
                .map(|(_, r)| r.get())
                .collect::<Vec<_>>()
                .join(",")
        );
        if dry_run {
            if let Ok(plan) =
                change::plan(&payload, &indexer.versions(), indexer.config.bulk_max_bytes)
            {
                report.would_replay += plan
                    .records
                    .iter()
                    .filter(|r| !matches!(r.disposition, Disposition::Invalid(_)))
                    .count();
            }
            continue;
        }
        if records.len() != page.hits.hits.len() {
            // Entries whose record text is not JSON cannot be replayed; they stay.
            report.still_failing += page.hits.hits.len() - records.len();
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        let handled = match indexer.handle_detailed(&payload, deadline).await {
            Ok(h) => h,
            Err(_) => {
                report.retry_later += records.len();
                continue;
            }
        };
        let mut done_ids = Vec::new();
        for ((hit, _), outcome) in records.iter().zip(&handled.outcomes) {
            match outcome {
                RecordOutcome::Indexed | RecordOutcome::Deleted | RecordOutcome::Superseded => {
                    report.replayed += 1;
                    // The handler keys entries by eventID; an entry stored under another id is
                    // removed explicitly.
                    done_ids.push(hit.id.clone());
                }
                RecordOutcome::Quarantined(_) => report.still_failing += 1,
                RecordOutcome::Reported(_) => report.retry_later += 1,
            }
        }
        for id in done_ids {
            let path = format!("/{}/_doc/{}", quarantine.index, urlencode(&id));
            match os.request(Method::Delete, &path, None, timeout).await {
                Ok(_) => {}
                Err(e) if e.status == Some(404) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}
