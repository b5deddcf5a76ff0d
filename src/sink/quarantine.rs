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

use crate::sink::transport::Method;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::pipeline::bulk::ItemOutcome;
use crate::pipeline::change::{Action, Change};
use crate::pipeline::convert::write_json_str;
use crate::sink::dispatch::{self, Limits};
use crate::sink::transport::{OpenSearch, RequestError};

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
      "stream_order": {"type": "keyword"},
      "event_id": {"type": "keyword"},
      "event_source_arn": {"type": "keyword"},
      "part_of": {"type": "keyword"}
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
    /// Sorts entries in stream order as text: a numeric sequence number zero-padded to 40
    /// digits; anything else (a backfill's synthetic record, none) after every number.
    #[serde(default)]
    pub stream_order: Option<String>,
    pub event_id: Option<String>,
    /// The whole stream record, as the JSON text it arrived as; empty when it is stored in
    /// `parts` part documents (a record too large for one `_bulk` body).
    pub record: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parts: Option<u32>,
}

/// One slice of a record too large for one entry, stored as document `{entry id}~{part}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Part {
    pub part_of: String,
    pub part: u32,
    pub record_part: String,
}

/// The longest event or sequence id kept readable in an entry id (`_id` is at most 512 bytes).
const MAX_NAME_IN_ID: usize = 256;

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
            stream_order: Some(stream_order(sequence_number)),
            event_id: event_id.map(str::to_string),
            record: record.to_string(),
            parts: None,
        }
    }

    /// The entry's document id: the record's eventID and a digest of its text. Writing one
    /// record twice (a re-delivery, a replay that fails again) keeps one copy; two different
    /// records never share an entry, even if they claim the same eventID.
    pub fn id(&self) -> String {
        entry_id(
            self.event_id.as_deref().or(self.sequence_number.as_deref()),
            &self.record,
        )
    }
}

/// See [`Entry::id`].
pub fn entry_id(name: Option<&str>, record: &str) -> String {
    let digest = format!("{:x}", Sha256::digest(record.as_bytes()));
    match name.filter(|n| !n.is_empty() && n.len() <= MAX_NAME_IN_ID) {
        Some(name) => format!("{name}~{}", &digest[..16]),
        None => format!("~{digest}"),
    }
}

/// See [`Entry::stream_order`]. Sequence numbers are decimal strings of up to 40 digits, too
/// long for any integer type; padded to one width, text order is numeric order.
pub fn stream_order(sequence_number: Option<&str>) -> String {
    match sequence_number {
        Some(s) if !s.is_empty() && s.len() <= 40 && s.bytes().all(|c| c.is_ascii_digit()) => {
            format!("{s:0>40}")
        }
        other => format!("~{}", other.unwrap_or("")),
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
            Err(e) if e.error_type.as_deref() == Some("resource_already_exists_exception") => {}
            Err(e) => return Err(e),
        }
        self.ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Writes entries under the same byte and action limits, splitting and retrying as
    /// documents are; returns for each whether it is durably stored (with all its parts).
    pub async fn put(&self, os: &OpenSearch, entries: &[Entry], limits: &Limits) -> Vec<bool> {
        if entries.is_empty() {
            return Vec::new();
        }
        // Without its mapping the index would be created by dynamic mapping on first write,
        // indexing every field of every stored record; if creating it fails, the write below
        // still keeps the entries (dynamic mapping), and the next put tries again.
        if !self.ready.load(Ordering::Relaxed)
            && let Err(e) = self.ensure_index(os, limits.request_timeout).await
        {
            tracing::warn!(error = %e, "could not create the quarantine index with its mapping");
        }
        let target: Arc<str> = self.index.as_str().into();
        let changes: Vec<Change> = entries
            .iter()
            .enumerate()
            .flat_map(|(k, e)| entry_changes(&target, e, k, limits.max_bytes))
            .collect();
        let (outcomes, _) = dispatch::deliver(os, &changes, limits).await;
        let mut stored = vec![true; entries.len()];
        let mut failed: Option<&ItemOutcome> = None;
        for (change, outcome) in changes.iter().zip(&outcomes) {
            if *outcome != ItemOutcome::Indexed {
                stored[change.record] = false;
                failed.get_or_insert(outcome);
            }
        }
        if let Some(outcome) = failed {
            let lost = stored.iter().filter(|s| !**s).count();
            let reason = match outcome {
                ItemOutcome::Retry(r) | ItemOutcome::Permanent(r) => crate::redact::reason(r),
                other => format!("{other:?}"),
            };
            tracing::warn!(
                index = %self.index,
                entries = lost,
                reason,
                "quarantine write failed; those records stay in batchItemFailures"
            );
        }
        stored
    }
}

/// The bulk actions that store one entry: one document, or, when the entry would not fit a
/// body of `max_bytes`, a head without the record and the record's text in parts.
fn entry_changes(index: &Arc<str>, entry: &Entry, owner: usize, max_bytes: usize) -> Vec<Change> {
    let id = entry.id();
    let whole = index_lines(&id, entry);
    if whole.len() <= max_bytes {
        return vec![entry_change(index, id, whole, owner)];
    }
    // Room for a part's action line and fields around its slice of the record.
    let room = max_bytes.saturating_sub(2 * id.len() + 160).max(64);
    let slices = split_escaped(&entry.record, room);
    let head = Entry {
        record: String::new(),
        parts: Some(slices.len() as u32),
        ..entry.clone()
    };
    let mut changes = vec![entry_change(
        index,
        id.clone(),
        index_lines(&id, &head),
        owner,
    )];
    for (k, slice) in slices.into_iter().enumerate() {
        let part_id = format!("{id}~{k}");
        let part = Part {
            part_of: id.clone(),
            part: k as u32,
            record_part: slice.to_string(),
        };
        changes.push(entry_change(
            index,
            part_id.clone(),
            index_lines(&part_id, &part),
            owner,
        ));
    }
    changes
}

fn entry_change(index: &Arc<str>, id: String, lines: Vec<u8>, owner: usize) -> Change {
    Change {
        index: index.clone(),
        id,
        action: Action::Index,
        version: None,
        ttl: false,
        lines: lines.into(),
        record: owner,
    }
}

fn index_lines(id: &str, doc: &impl Serialize) -> Vec<u8> {
    let mut lines = Vec::new();
    lines.extend_from_slice(b"{\"index\":{\"_id\":");
    write_json_str(&mut lines, id);
    lines.extend_from_slice(b"}}\n");
    serde_json::to_writer(&mut lines, doc).expect("an entry always serializes");
    lines.push(b'\n');
    lines
}

/// Splits `text` at character boundaries into slices whose JSON-escaped form is at most
/// `room` bytes each.
fn split_escaped(text: &str, room: usize) -> Vec<&str> {
    let mut slices = Vec::new();
    let mut start = 0;
    let mut size = 0;
    for (i, c) in text.char_indices() {
        let escaped = match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        };
        if size + escaped > room && i > start {
            slices.push(&text[start..i]);
            start = i;
            size = 0;
        }
        size += escaped;
    }
    slices.push(&text[start..]);
    slices
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_records_claiming_one_event_id_get_two_entries() {
        let a = Entry::new("t", "r", Some("1"), Some("e1"), r#"{"a":1}"#);
        let b = Entry::new("t", "r", Some("1"), Some("e1"), r#"{"a":2}"#);
        assert_ne!(a.id(), b.id());
        assert!(a.id().starts_with("e1~"), "{}", a.id());
        let again = Entry::new("t", "other reason", Some("1"), Some("e1"), r#"{"a":1}"#);
        assert_eq!(a.id(), again.id(), "one record keeps one entry");
        let long = "x".repeat(600);
        let c = Entry::new("t", "r", None, Some(&long), "{}");
        assert!(c.id().len() <= 512 && c.id().starts_with('~'));
    }

    #[test]
    fn stream_order_sorts_sequence_numbers_as_numbers() {
        let small = stream_order(Some("999999999999999999999"));
        let large = stream_order(Some("1000000000000000000000"));
        assert!(small < large, "{small} {large}");
        assert_eq!(large.len(), 40);
        assert!(stream_order(Some("backfill-x")) > stream_order(Some(&"9".repeat(40))));
        assert!(stream_order(None) > large);
    }

    #[test]
    fn an_entry_over_the_body_limit_is_stored_in_parts_that_rebuild_the_record() {
        let record = format!(
            r#"{{"eventID":"e","dynamodb":{{"NewImage":{{"s":{{"S":"{}"q\\u0001é"}}}}}}}}"#,
            "x".repeat(5000)
        );
        let entry = Entry::new("t", "too big", Some("5"), Some("e"), &record);
        let changes = entry_changes(&"q".into(), &entry, 7, 1024);
        assert!(changes.len() > 5, "{}", changes.len());
        assert!(
            changes
                .iter()
                .all(|c| c.lines.len() <= 1024 && c.record == 7)
        );
        let mut rebuilt = String::new();
        for c in &changes[1..] {
            let doc = c.lines.split(|b| *b == b'\n').nth(1).unwrap();
            let part: Part = serde_json::from_slice(doc).unwrap();
            assert_eq!(part.part_of, entry.id());
            rebuilt.push_str(&part.record_part);
        }
        assert_eq!(rebuilt, record);
        let head: Entry =
            serde_json::from_slice(changes[0].lines.split(|b| *b == b'\n').nth(1).unwrap())
                .unwrap();
        assert_eq!(head.parts, Some(changes.len() as u32 - 1));
        assert!(head.record.is_empty());
    }
}
