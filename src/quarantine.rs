//! Quarantine: records no index can accept, kept durably in a dead-letter index with their whole
//! stream record, so the shard moves on and nothing is lost.
//!
//! Why an OpenSearch index and not S3 or SQS: it needs no other service, permission or client in
//! the function, entries are searchable by reason and time, and `replay` reads them back with
//! the same client. Its weakness, that it is down when the cluster is down, does not lose data:
//! an entry that cannot be written leaves its record in `batchItemFailures`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use opensearch::http::Method;
use serde::{Deserialize, Serialize};

use crate::bulk::ItemOutcome;
use crate::change::Action;
use crate::convert::write_json_str;
use crate::transport::{BulkReply, OpenSearch, RequestError};

/// Settings and mappings of the quarantine index: nothing in an entry is mapped dynamically, so
/// entries from tables of any shape never conflict.
pub const QUARANTINE_INDEX_BODY: &str = r#"{
  "mappings": {
    "dynamic": false,
    "properties": {
      "index": {"type": "keyword"},
      "reason": {"type": "text"},
      "quarantined_at": {"type": "date", "format": "epoch_millis"},
      "sequence_number": {"type": "keyword"},
      "event_id": {"type": "keyword"},
      "event_source_arn": {"type": "keyword"}
    }
  }
}"#;

/// One quarantined record as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// The index the record was meant for.
    pub index: String,
    pub reason: String,
    /// Milliseconds since the epoch.
    pub quarantined_at: u64,
    pub sequence_number: Option<String>,
    pub event_id: Option<String>,
    /// The whole stream record, as the JSON text it arrived as.
    pub record: String,
}

impl Entry {
    pub fn new(
        index: &str,
        reason: &str,
        sequence_number: Option<&str>,
        event_id: Option<&str>,
        record: &str,
    ) -> Entry {
        Entry {
            index: index.to_string(),
            reason: reason.to_string(),
            quarantined_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            sequence_number: sequence_number.map(str::to_string),
            event_id: event_id.map(str::to_string),
            record: record.to_string(),
        }
    }

    /// The entry's document id: the record's eventID (unique per stream record), so writing an
    /// entry twice on re-delivery keeps one copy.
    pub fn id(&self) -> String {
        self.event_id
            .clone()
            .or_else(|| self.sequence_number.clone())
            .unwrap_or_else(|| {
                use sha2::{Digest, Sha256};
                format!("{:x}", Sha256::digest(self.record.as_bytes()))
            })
    }
}

/// Where quarantined records go.
#[derive(Clone)]
pub struct Quarantine {
    pub index: String,
    /// Set once the index is known to exist with its mapping (checked on first use).
    ready: Arc<AtomicBool>,
}

impl Quarantine {
    pub fn new(index: String) -> Quarantine {
        Quarantine {
            index,
            ready: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Creates the quarantine index with its mapping if it does not exist yet.
    pub async fn ensure_index(
        &self,
        os: &OpenSearch,
        timeout: Duration,
    ) -> Result<(), RequestError> {
        match os
            .request(
                Method::Put,
                &format!("/{}", self.index),
                Some(QUARANTINE_INDEX_BODY.as_bytes().to_vec()),
                timeout,
            )
            .await
        {
            Ok(_) => {}
            Err(e) if e.status == Some(400) && e.reason.contains("already_exists") => {}
            Err(e) => return Err(e),
        }
        self.ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Writes entries; returns for each whether it is durably stored.
    pub async fn put(&self, os: &OpenSearch, entries: &[Entry], timeout: Duration) -> Vec<bool> {
        if entries.is_empty() {
            return Vec::new();
        }
        // Without its mapping the index would be created by dynamic mapping on first write,
        // indexing every field of every stored record; if creating it fails, the write below
        // still keeps the entries (dynamic mapping), and the next put tries again.
        if !self.ready.load(Ordering::Relaxed)
            && let Err(e) = self.ensure_index(os, timeout).await
        {
            tracing::warn!(error = %e, "could not create the quarantine index with its mapping");
        }
        let mut body = Vec::new();
        for e in entries {
            body.extend_from_slice(b"{\"index\":{\"_id\":");
            write_json_str(&mut body, &e.id());
            body.extend_from_slice(b"}}\n");
            serde_json::to_writer(&mut body, e).expect("an entry always serializes");
            body.push(b'\n');
        }
        let actions = vec![Action::Index; entries.len()];
        match os
            .bulk(&self.index, Bytes::from(body), &actions, timeout)
            .await
        {
            BulkReply::Items(items) => items
                .into_iter()
                .map(|o| o == ItemOutcome::Indexed)
                .collect(),
            _ => vec![false; entries.len()],
        }
    }
}
