//! Stream batch → changes: one index or delete per document id, the last change per key winning.
//!
//! The event is read with borrowed types instead of `aws_lambda_events::event::dynamodb::Event`:
//! that type deserializes every image into a `serde_dynamo::Item` (a map per record, every
//! binary decoded), which is the slow part of a naive pipeline and which we would then throw
//! away. Here each image stays a `&RawValue` slice of the payload until [`crate::convert`]
//! writes it out once. The wire shape is the same; tests check fixtures parse both ways.

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::convert::{self, Decimal};
use crate::docid::{self, RAW_KEY_FIELD};

/// The payload is not a DynamoDB Streams event at all (no `Records` list).
#[derive(Debug, thiserror::Error)]
#[error("payload is not a DynamoDB Streams event: {0}")]
pub struct NotAStreamEvent(pub String);

#[derive(Deserialize)]
struct EventShape<'a> {
    #[serde(rename = "Records", borrow)]
    records: Vec<&'a RawValue>,
}

/// One stream record as it arrives, fields borrowed from the payload.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamRecord<'a> {
    #[serde(rename = "eventID", borrow)]
    pub event_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub event_name: Option<Cow<'a, str>>,
    #[serde(rename = "eventSourceARN", borrow)]
    pub event_source_arn: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub user_identity: Option<UserIdentity<'a>>,
    #[serde(borrow)]
    pub dynamodb: Option<StreamData<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserIdentity<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub principal_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StreamData<'a> {
    #[serde(borrow)]
    pub keys: Option<&'a RawValue>,
    #[serde(borrow)]
    pub new_image: Option<&'a RawValue>,
    #[serde(borrow)]
    pub old_image: Option<&'a RawValue>,
    #[serde(borrow)]
    pub sequence_number: Option<Cow<'a, str>>,
    pub approximate_creation_date_time: Option<f64>,
    #[serde(borrow)]
    pub stream_view_type: Option<Cow<'a, str>>,
}

/// One record of the batch: its sequence number if it has one, and what it means.
pub struct Record<'a> {
    pub sequence_number: Option<Cow<'a, str>>,
    pub event_id: Option<Cow<'a, str>>,
    pub disposition: Disposition,
}

/// What became of a record while planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// It is the winning change `changes[i]` for its key.
    Change(usize),
    /// A later record of the same key won; this one shares `changes[i]`'s outcome.
    Superseded(usize),
    /// It can never be applied as it is; the reason names what is wrong.
    Invalid(String),
}

/// Index or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Index,
    Delete,
}

/// One bulk action for one document id.
#[derive(Debug, Clone)]
pub struct Change {
    pub id: String,
    pub action: Action,
    /// A REMOVE made by DynamoDB's TTL process rather than by a caller.
    pub ttl: bool,
    /// The NDJSON lines for this action: the action line and, for an index, the document; every
    /// line ends in `\n`, so bodies are plain concatenations.
    pub lines: Vec<u8>,
    /// Position in the batch of the record this change came from.
    pub record: usize,
}

/// Where versions come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSource {
    /// The stream record's `ApproximateCreationDateTime`, in milliseconds.
    StreamTime,
    /// A top-level numeric attribute of the item.
    Attribute(String),
    /// One version for every write of the batch (the backfill: from the time of its read).
    Fixed(u64),
}

/// The changes of a batch and what became of every record.
pub struct Plan<'a> {
    payload: &'a str,
    pub records: Vec<Record<'a>>,
    pub changes: Vec<Change>,
}

impl VersionSource {
    /// The OpenSearch version type for writes, explained in the README ("Versions").
    /// Stream time has whole seconds: two changes of one item in one second carry the same
    /// version and must both apply, in stream order, so an equal version must win
    /// (`external_gte`). A version attribute grows with every change, so an equal version is
    /// the same change and strict `external` turns duplicates into harmless 409s; it also closes
    /// the one gap `external_gte` leaves (a timed-out write the cluster applies late, after a
    /// newer change of the same second).
    pub fn version_type(&self) -> &'static str {
        match self {
            VersionSource::StreamTime | VersionSource::Fixed(_) => "external_gte",
            VersionSource::Attribute(_) => "external",
        }
    }
}

/// Room reserved for an action line: `{"index":{"_id":…,"version":…,"version_type":…}}`.
const ACTION_LINE_ROOM: usize = 128;

/// Splits the payload into records and plans one change per document id.
pub fn plan<'a>(
    payload: &'a str,
    versions: &VersionSource,
    max_lines_bytes: usize,
) -> Result<Plan<'a>, NotAStreamEvent> {
    // Fast path: the whole batch in one pass. Only if some record does not even parse as a
    // stream record does the batch get split into raw records, to judge each on its own.
    let parsed: Vec<Result<StreamRecord<'a>, String>> =
        match serde_json::from_str::<FastShape<'a>>(payload) {
            Ok(shape) => shape.records.into_iter().map(Ok).collect(),
            Err(_) => {
                let shape: EventShape<'a> =
                    serde_json::from_str(payload).map_err(|e| NotAStreamEvent(e.to_string()))?;
                shape
                    .records
                    .into_iter()
                    .map(|raw| {
                        serde_json::from_str::<StreamRecord<'a>>(raw.get())
                            .map_err(|e| format!("record is not a stream record: {e}"))
                    })
                    .collect()
            }
        };
    let mut records: Vec<Record<'a>> = Vec::with_capacity(parsed.len());
    let mut changes: Vec<Change> = Vec::with_capacity(parsed.len());
    let mut by_id: HashMap<String, usize> = HashMap::with_capacity(parsed.len());
    for (position, parsed) in parsed.into_iter().enumerate() {
        let (sequence_number, event_id, result) = match parsed {
            Ok(rec) => {
                let change = to_change(&rec, position, versions, max_lines_bytes);
                let seq = rec.dynamodb.and_then(|d| d.sequence_number);
                let event_id = rec.event_id;
                (seq, event_id, change)
            }
            Err(reason) => (None, None, Err(reason)),
        };
        let disposition = match result {
            Err(reason) => Disposition::Invalid(reason),
            Ok(change) => match by_id.get(&change.id) {
                Some(&earlier) => {
                    // Stream order is modification order per item: the later record wins, and
                    // every record it replaces follows its outcome.
                    let loser = changes[earlier].record;
                    records[loser].disposition = Disposition::Superseded(earlier);
                    changes[earlier] = change;
                    Disposition::Change(earlier)
                }
                None => {
                    by_id.insert(change.id.clone(), changes.len());
                    changes.push(change);
                    Disposition::Change(changes.len() - 1)
                }
            },
        };
        records.push(Record {
            sequence_number,
            event_id,
            disposition,
        });
    }
    Ok(Plan {
        payload,
        records,
        changes,
    })
}

impl<'a> Plan<'a> {
    /// The raw JSON text of each record, for quarantine. Parsed again on demand: only batches
    /// with permanent failures need it.
    pub fn raw_records(&self) -> Vec<&'a RawValue> {
        serde_json::from_str::<EventShape<'a>>(self.payload)
            .map(|s| s.records)
            .unwrap_or_default()
    }
}

#[derive(Deserialize)]
struct FastShape<'a> {
    #[serde(rename = "Records", borrow)]
    records: Vec<StreamRecord<'a>>,
}

fn to_change(
    rec: &StreamRecord<'_>,
    position: usize,
    versions: &VersionSource,
    max_lines_bytes: usize,
) -> Result<Change, String> {
    let data = rec
        .dynamodb
        .as_ref()
        .ok_or("record has no dynamodb section")?;
    if data.sequence_number.as_deref().is_none_or(str::is_empty) {
        return Err("record has no SequenceNumber".into());
    }
    let keys = data.keys.ok_or("record has no Keys")?;
    let id = docid::doc_id(keys.get()).map_err(|e| format!("Keys: {e}"))?;
    let event_name = rec.event_name.as_deref().ok_or("record has no eventName")?;
    let stream_version = || -> Result<u64, String> {
        let t = data
            .approximate_creation_date_time
            .ok_or("record has no ApproximateCreationDateTime")?;
        if !(0.0..9.0e15).contains(&t) {
            return Err(format!("ApproximateCreationDateTime {t} is out of range"));
        }
        Ok((t.floor() as u64) * 1000)
    };
    let mut lines = Vec::new();
    match event_name {
        "INSERT" | "MODIFY" => {
            let image = data.new_image.ok_or_else(|| {
                let view = data.stream_view_type.as_deref().unwrap_or("unknown");
                format!(
                    "{event_name} record has no NewImage: the stream view type ({view}) must be NEW_IMAGE or NEW_AND_OLD_IMAGES"
                )
            })?;
            // The document is written first and the action line put in front of it once the
            // version is known (it may come from the document): one buffer, one small move.
            let raw_len = id.raw.as_ref().map_or(0, |r| r.len() + 32);
            let mut doc = Vec::with_capacity(image.get().len() + raw_len + ACTION_LINE_ROOM);
            let attr = match versions {
                VersionSource::Attribute(name) => Some(name.as_str()),
                VersionSource::StreamTime | VersionSource::Fixed(_) => None,
            };
            let span = convert::write_document_with_version(image.get(), &mut doc, attr)
                .map_err(|e| format!("NewImage: {e}"))?;
            let version = match versions {
                VersionSource::StreamTime => Some(stream_version()?),
                VersionSource::Fixed(v) => Some(*v),
                VersionSource::Attribute(name) => {
                    Some(attribute_version(name, span.map(|s| &doc[s]))?)
                }
            };
            if let Some(raw) = &id.raw {
                // Keep the full key beside a hashed id, so the document can be found by its key.
                doc.pop();
                if doc.len() > 1 {
                    doc.push(b',');
                }
                convert::write_json_str(&mut doc, RAW_KEY_FIELD);
                doc.push(b':');
                convert::write_json_str(&mut doc, raw);
                doc.push(b'}');
            }
            doc.push(b'\n');
            let mut action = Vec::with_capacity(ACTION_LINE_ROOM);
            write_action(
                &mut action,
                "index",
                &id.id,
                version,
                versions.version_type(),
            );
            doc.splice(0..0, action);
            lines = doc;
        }
        "REMOVE" => {
            let version = match versions {
                VersionSource::StreamTime => Some(stream_version()?),
                VersionSource::Fixed(v) => Some(*v),
                // Versioned from the OldImage when the stream carries it; otherwise unversioned
                // (README: "Versions" says what that gives up).
                VersionSource::Attribute(name) => match data.old_image {
                    Some(old) => {
                        let mut scratch = Vec::with_capacity(old.get().len());
                        let span = convert::write_document_with_version(
                            old.get(),
                            &mut scratch,
                            Some(name),
                        )
                        .map_err(|e| format!("OldImage: {e}"))?;
                        // One above the deleted item's version: strictly newer than the write
                        // it removes, as `external` requires.
                        let v = attribute_version(name, span.map(|s| &scratch[s]))?;
                        Some(
                            v.checked_add(1)
                                .filter(|v| *v <= i64::MAX as u64)
                                .ok_or_else(|| {
                                    format!("version attribute {name} is at the largest version")
                                })?,
                        )
                    }
                    None => None,
                },
            };
            write_action(
                &mut lines,
                "delete",
                &id.id,
                version,
                versions.version_type(),
            );
        }
        other => return Err(format!("unknown eventName {other:?}")),
    }
    if lines.len() > max_lines_bytes {
        return Err(format!(
            "document is {} bytes as a bulk action, over the BULK_MAX_BYTES limit of {max_lines_bytes}",
            lines.len()
        ));
    }
    let ttl = event_name == "REMOVE"
        && rec.user_identity.as_ref().is_some_and(|u| {
            u.kind.as_deref() == Some("Service")
                && u.principal_id.as_deref() == Some("dynamodb.amazonaws.com")
        });
    let action = if event_name == "REMOVE" {
        Action::Delete
    } else {
        Action::Index
    };
    Ok(Change {
        id: id.id,
        action,
        ttl,
        lines,
        record: position,
    })
}

fn attribute_version(name: &str, text: Option<&[u8]>) -> Result<u64, String> {
    let text = text.ok_or_else(|| format!("version attribute {name} is missing"))?;
    let text = std::str::from_utf8(text).unwrap_or("");
    Decimal::parse(text)
        .and_then(|d| d.as_version())
        .ok_or_else(|| {
            format!(
                "version attribute {name} is {text}, not a number from 0 to 9223372036854775807"
            )
        })
}

fn write_action(out: &mut Vec<u8>, verb: &str, id: &str, version: Option<u64>, version_type: &str) {
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(verb.as_bytes());
    out.extend_from_slice(b"\":{\"_id\":");
    convert::write_json_str(out, id);
    if let Some(v) = version {
        out.extend_from_slice(b",\"version\":");
        out.extend_from_slice(v.to_string().as_bytes());
        out.extend_from_slice(b",\"version_type\":\"");
        out.extend_from_slice(version_type.as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b"}}\n");
}
