//! A stream batch's records as they arrive (borrowed from the payload: serde's reading of the
//! wire shape) and the changes planned from them ([`crate::pipeline::plan`]): one bulk action
//! per document id, its NDJSON lines in a buffer the plan's changes share.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, Range};
use std::sync::Arc;

use bytes::Bytes;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::pipeline::convert::{self, Captures};
use crate::pipeline::docid::KeyParts;

/// Reads `T` only from a JSON object. serde's derived structs also accept an array (fields by
/// position), which would take `[[record]]` for a batch; a stream event is objects throughout.
pub struct Object<T>(pub T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Object<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectVisitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(ObjectVisitor(PhantomData)).map(Object)
    }
}

/// The payload is not a DynamoDB Streams event at all (no `Records` list).
#[derive(Debug, thiserror::Error)]
#[error("payload is not a DynamoDB Streams event: {0}")]
pub struct NotAStreamEvent(pub String);

#[derive(Deserialize)]
pub(crate) struct EventShape<'a> {
    #[serde(rename = "Records", borrow)]
    pub(crate) records: Vec<&'a RawValue>,
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
    pub user_identity: Option<Object<UserIdentity<'a>>>,
    #[serde(borrow)]
    pub dynamodb: Option<Object<StreamData<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserIdentity<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub principal_id: Option<Cow<'a, str>>,
}

/// The images and `Keys` are their JSON text as it stands in the event. Read by serde they are
/// validated (`RawValue`); read by `event::read` `Keys` and the NewImage are not: parsing the
/// one and converting the other is their one pass (`plan` checks them where those failed).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StreamData<'a> {
    #[serde(borrow, default, deserialize_with = "raw_text")]
    pub keys: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw_text")]
    pub new_image: Option<&'a str>,
    #[serde(borrow, default, deserialize_with = "raw_text")]
    pub old_image: Option<&'a str>,
    #[serde(borrow)]
    pub sequence_number: Option<Cow<'a, str>>,
    pub approximate_creation_date_time: Option<f64>,
    #[serde(borrow)]
    pub stream_view_type: Option<Cow<'a, str>>,
    /// The NewImage converted while the record was read ([`event::read`]); never by serde.
    #[serde(skip)]
    pub(crate) early: Option<EarlyDocument<'a>>,
}

/// A NewImage converted as the one-pass reading met it, with the `Keys` read before it (its
/// captures were made for their names). `plan`'s `to_changes` uses it, and its key parts, for a
/// record with the same `Keys`: the conversion it would have run itself.
pub(crate) struct EarlyDocument<'a> {
    /// The `Keys` text read before the image, and its parts (read once, for both).
    pub(crate) keys: &'a str,
    pub(crate) parts: KeyParts<'a>,
    /// Where the document starts in the plan's buffer; it runs to the buffer's end (its
    /// action line is written after it, then rotated to the front). Captured spans are
    /// positions in the buffer.
    pub(crate) start: usize,
    pub(crate) captured: Captures,
}

/// A JSON value's text, validated, as it stands (`null` is none, as for any `Option`).
fn raw_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de str>, D::Error> {
    Option::<&'de RawValue>::deserialize(d).map(|raw| raw.map(RawValue::get))
}

/// One record of the batch: its sequence number if it has one, and what it means.
pub struct Record<'a> {
    pub sequence_number: Option<Cow<'a, str>>,
    pub event_id: Option<Cow<'a, str>>,
    pub disposition: Disposition,
    /// Further changes this record's outcome depends on: the delete from the index its item was
    /// routed to before, or the deletes of a REMOVE whose index cannot be known.
    pub extra: Vec<usize>,
    /// The record's `ApproximateCreationDateTime` (epoch seconds), for replication lag.
    pub created_secs: Option<f64>,
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
    /// Its item is routed to no index (a `ROUTES` rule with `index: null`, or no rule and no
    /// `OPENSEARCH_INDEX`); `extra` may still delete it from where it was.
    Skipped,
}

/// Index or delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Index,
    Delete,
}

/// One bulk action for one document id in one index.
#[derive(Debug, Clone)]
pub struct Change {
    pub index: Arc<str>,
    pub id: String,
    pub action: Action,
    /// The external version the action carries (`None`: an unversioned delete).
    pub version: Option<u64>,
    /// A REMOVE made by DynamoDB's TTL process rather than by a caller.
    pub ttl: bool,
    /// The NDJSON lines for this action: the action line and, for an index, the document; every
    /// line ends in `\n`, so bodies are plain concatenations.
    pub lines: Lines,
    /// Position in the batch of the record this change came from.
    pub record: usize,
}

impl Change {
    /// A versioned delete that no stream record asked for: `verify --repair` removing a document
    /// no item backs. `record` is the caller's position for it.
    pub fn delete(
        index: Arc<str>,
        id: String,
        version: u64,
        version_type: &str,
        record: usize,
    ) -> Change {
        let mut lines = Vec::with_capacity(ACTION_LINE_ROOM);
        write_action(&mut lines, "delete", &id, Some(version), version_type);
        Change {
            index,
            id,
            action: Action::Delete,
            version: Some(version),
            ttl: false,
            lines: lines.into(),
            record,
        }
    }

    /// The document an index action writes (its second line, without the newline).
    pub fn document(&self) -> Option<&[u8]> {
        if self.action != Action::Index {
            return None;
        }
        let start = self.lines.iter().position(|&b| b == b'\n')? + 1;
        let end = self.lines.len() - usize::from(self.lines.ends_with(b"\n"));
        self.lines.get(start..end)
    }
}

/// A change's NDJSON lines: a range of a buffer its plan's changes share, written there one
/// after another as the batch is planned. A bulk body of changes that lie side by side in it
/// is then a slice of it ([`Lines::joined`]), not a copy: bodies are most of a plan's bytes,
/// and copying them took about 6% of planning's time (and as much memory again).
#[derive(Clone, Default)]
pub struct Lines {
    buffer: Bytes,
    range: Range<usize>,
}

impl Lines {
    /// Lines at `range` of the buffer a plan is still writing: [`Lines::attach`]ed to it when
    /// the plan is done, unreadable before.
    pub(crate) fn pending(range: Range<usize>) -> Lines {
        Lines {
            buffer: Bytes::new(),
            range,
        }
    }

    pub(crate) fn attach(&mut self, buffer: &Bytes) {
        self.buffer = buffer.clone();
    }

    /// Bytes, also while pending.
    pub fn len(&self) -> usize {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// The lines as a body, without copying them.
    pub fn bytes(&self) -> Bytes {
        self.buffer.slice(self.range.clone())
    }

    /// `self` and `next` as one, if `next` follows `self` directly in the same buffer.
    pub fn joined(&self, next: &Lines) -> Option<Lines> {
        // One buffer: the same start and length, both alive (these hold them).
        let same =
            self.buffer.as_ptr() == next.buffer.as_ptr() && self.buffer.len() == next.buffer.len();
        (same && self.range.end == next.range.start).then(|| Lines {
            buffer: self.buffer.clone(),
            range: self.range.start..next.range.end,
        })
    }
}

impl From<Vec<u8>> for Lines {
    fn from(lines: Vec<u8>) -> Lines {
        Lines {
            range: 0..lines.len(),
            buffer: Bytes::from(lines),
        }
    }
}

impl Deref for Lines {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buffer[self.range.clone()]
    }
}

impl fmt::Debug for Lines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self))
    }
}

/// Room reserved for an action line: `{"index":{"_id":…,"version":…,"version_type":…}}`.
pub(crate) const ACTION_LINE_ROOM: usize = 128;

pub(crate) fn write_action(
    out: &mut Vec<u8>,
    verb: &str,
    id: &str,
    version: Option<u64>,
    version_type: &str,
) {
    out.extend_from_slice(b"{\"");
    out.extend_from_slice(verb.as_bytes());
    out.extend_from_slice(b"\":{\"_id\":");
    convert::write_json_str(out, id);
    if let Some(v) = version {
        out.extend_from_slice(b",\"version\":");
        // Not `write!`: the formatting machinery cost as much as the rest of the line.
        out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        out.extend_from_slice(b",\"version_type\":\"");
        out.extend_from_slice(version_type.as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b"}}\n");
}
