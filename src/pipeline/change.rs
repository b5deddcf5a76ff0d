//! Stream batch → changes: one index or delete per document id, the last change per key winning.
//!
//! The event is read with borrowed types instead of `aws_lambda_events::event::dynamodb::Event`:
//! that type deserializes every image into a `serde_dynamo::Item` (a map per record, every
//! binary decoded), which is the slow part of a naive pipeline and which we would then throw
//! away. Here each image stays a slice of the payload until [`crate::pipeline::convert`] writes
//! it out once: in the one-pass reading (`event`), where the reading meets it, each record then
//! planned before the next is read; in serde's reading (the definition, taken wherever the one
//! pass gives up), after the parse. The wire shape is the same; tests check fixtures parse both
//! ways and that both readings plan alike.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::hash::BuildHasher as _;
use std::marker::PhantomData;
use std::ops::{Deref, Range};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hashbrown::{DefaultHashBuilder, HashTable};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use std::sync::Arc;

use crate::pipeline::convert::{self, AttributeKind, Captured, Captures, Decimal};
use crate::pipeline::docid::{self, KeyPart, KeyParts, RAW_KEY_FIELD};
use crate::pipeline::metadata::{Metadata, RecordFacts};
use crate::pipeline::projection::Projection;
use crate::pipeline::routing::{self, Route, Router};
use crate::pipeline::{event, scan};

/// How far a record's `ApproximateCreationDateTime` may be ahead of this machine's clock.
/// Versions come from it, and a version from the future (milliseconds read as seconds, a forged
/// quarantine entry, a wrong clock) would make every later real change of the item a 409 and
/// pin a stale document; five minutes covers any sane clock skew between DynamoDB and Lambda.
pub const MAX_CLOCK_AHEAD_SECS: u64 = 300;

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
/// captures were made for their names). [`to_changes`] uses it, and its key parts, for a
/// record with the same `Keys`: the conversion it would have run itself.
pub(crate) struct EarlyDocument<'a> {
    /// The `Keys` text read before the image, and its parts (read once, for both).
    keys: &'a str,
    parts: KeyParts<'a>,
    /// Where the document starts in the plan's buffer; it runs to the buffer's end (its
    /// action line is written after it, then rotated to the front). Captured spans are
    /// positions in the buffer.
    start: usize,
    captured: Captures,
}

/// The names of a table key's one or two attributes, sorted as `docid::key_parts` sorts them.
#[derive(Clone, Copy, Default, PartialEq)]
struct KeyNames<'a> {
    names: [&'a str; 2],
    len: usize,
}

impl<'a> KeyNames<'a> {
    /// The names of key parts as `key_parts` gives them; `None` where a name had an escape.
    fn of(parts: &[KeyPart<'a>]) -> Option<Self> {
        let mut k = KeyNames::default();
        for part in parts {
            let Cow::Borrowed(name) = part.name else {
                return None;
            };
            *k.names.get_mut(k.len)? = name;
            k.len += 1;
        }
        Some(k)
    }

    fn as_slice(&self) -> &[&'a str] {
        &self.names[..self.len]
    }
}

/// The top-level attribute names a conversion captures ([`Planner::capture_names`]): made for
/// every record, kept on the stack (they are not moved about, so eight fit at no cost).
type Names<'n> = smallvec::SmallVec<[&'n str; 8]>;

/// What converting each NewImage as it is read keeps from record to record.
#[derive(Default)]
struct EarlyState<'n> {
    /// The key names `names` was made for (none yet: `names` is not made): a table's records
    /// all name the same.
    key_names: Option<KeyNames<'n>>,
    names: Names<'n>,
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
    fn pending(range: Range<usize>) -> Lines {
        Lines {
            buffer: Bytes::new(),
            range,
        }
    }

    fn attach(&mut self, buffer: &Bytes) {
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

/// How documents are shaped: which index (routes), which attributes (projection), which
/// stream metadata fields.
#[derive(Clone, Copy)]
pub struct Shape<'c> {
    pub router: &'c Router,
    pub projection: &'c Projection,
    pub metadata: &'c Metadata,
}

/// Room reserved for an action line: `{"index":{"_id":…,"version":…,"version_type":…}}`.
const ACTION_LINE_ROOM: usize = 128;

/// Splits the payload into records and plans one change per document id.
pub fn plan<'a>(
    payload: &'a str,
    versions: &VersionSource,
    shape: &Shape<'_>,
    max_lines_bytes: usize,
) -> Result<Plan<'a>, NotAStreamEvent> {
    let now_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let planner = Planner {
        versions,
        shape,
        max_lines_bytes,
        now_secs,
    };
    // One pass: the envelopes read by hand, each NewImage read only by its conversion. `None`
    // where serde must decide: a record it might read otherwise, or an image that is not JSON.
    if let Some(plan) = planner.plan_in_one_pass(payload) {
        return Ok(plan);
    }
    Ok(planner
        .plan(payload, parse(payload)?, false)
        .expect("images serde parsed are not checked again"))
}

/// The records of the payload by serde. The whole batch in one parse; only if some record
/// does not even parse as a stream record is the batch split into raw records, to judge each
/// on its own.
fn parse(payload: &str) -> Result<Vec<Result<StreamRecord<'_>, Unparsed<'_>>>, NotAStreamEvent> {
    if let Ok(shape) = serde_json::from_str::<Object<FastShape<'_>>>(payload) {
        return Ok(shape.0.records.into_iter().map(|r| Ok(r.0)).collect());
    }
    let shape: Object<EventShape<'_>> = serde_json::from_str(payload)
        .map_err(|e| NotAStreamEvent(crate::redact::reason(&e.to_string())))?;
    Ok(shape
        .0
        .records
        .into_iter()
        .map(|raw| {
            serde_json::from_str::<Object<StreamRecord<'_>>>(raw.get())
                .map(|r| r.0)
                .map_err(|e| Unparsed::of(raw.get(), &e))
        })
        .collect())
}

/// What planning a batch needs besides its records.
struct Planner<'s, 'c> {
    versions: &'s VersionSource,
    shape: &'s Shape<'c>,
    max_lines_bytes: usize,
    now_secs: u64,
}

impl Planner<'_, '_> {
    /// The top-level attributes a NewImage's conversion captures: the key attributes (in
    /// `key_parts` order: the names start with them), the field that holds a hashed key's full
    /// text, the version attribute, the attributes routing reads (a key attribute once, under
    /// its first name), the metadata fields.
    fn capture_names<'n>(&'n self, key_names: impl IntoIterator<Item = &'n str>) -> Names<'n> {
        let router = self.shape.router;
        let mut names = Names::new();
        names.extend(key_names);
        names.push(RAW_KEY_FIELD);
        if let VersionSource::Attribute(name) = self.versions {
            names.push(name);
        }
        for a in router.attributes() {
            if !names.contains(&a.as_str()) {
                names.push(a);
            }
        }
        names.extend(self.shape.metadata.names());
        names
    }

    /// The conversion [`to_changes`] would run, on the NewImage that starts `text` (the rest of
    /// the payload), for the record's `Keys` read before it: the image's length and its
    /// document. `None` leaves the image to `to_changes` (names with escapes; an image only
    /// the walk may judge). `state` is kept from record to record.
    fn early_image<'a: 'n, 'n>(
        &'n self,
        state: &mut EarlyState<'n>,
        buffer: &mut Vec<u8>,
        keys: &'a str,
        text: &'a str,
    ) -> Option<(usize, EarlyDocument<'a>)> {
        let parts = docid::key_parts(keys).ok()?;
        let key_names = KeyNames::of(&parts)?;
        if state.key_names != Some(key_names) {
            state.key_names = Some(key_names);
            state.names = self.capture_names(key_names.as_slice().iter().copied());
        }
        // Converted straight into the plan's buffer, after the last record's lines.
        let start = buffer.len();
        let Some((captured, len)) =
            convert::transcode_prefix(text, buffer, &state.names, self.shape.projection.filter())
        else {
            buffer.truncate(start);
            return None;
        };
        Some((
            len,
            EarlyDocument {
                keys,
                parts,
                start,
                captured,
            },
        ))
    }

    /// The plan by the one-pass reading ([`event::read`]): each record planned as soon as it
    /// is read, while its bytes are in cache, its NewImage converted where the reading met it.
    /// `None` where serde must decide.
    fn plan_in_one_pass<'a>(&self, payload: &'a str) -> Option<Plan<'a>> {
        let mut early = EarlyState::default();
        // About a record per kilobyte (a guess: the vectors grow if it is short).
        let mut draft = Draft::with_capacity(payload.len() / 1024 + 1);
        // Both callbacks write to the buffer, one at a time.
        let buffer = RefCell::new(Draft::buffer(payload));
        event::read(
            payload,
            |keys, text| self.early_image(&mut early, &mut buffer.borrow_mut(), keys, text),
            |record| self.add(&mut draft, &mut buffer.borrow_mut(), Ok(record), true),
        )?;
        Some(draft.finish(payload, buffer.into_inner()))
    }

    /// Plans the records. With `unchecked` (the one-pass reading), a NewImage that was not
    /// converted (the record is invalid, or a REMOVE) and the Keys of an invalid record are
    /// checked as serde would have when parsing the event; `None` if one is not JSON.
    fn plan<'a>(
        &self,
        payload: &'a str,
        parsed: Vec<Result<StreamRecord<'a>, Unparsed<'a>>>,
        unchecked: bool,
    ) -> Option<Plan<'a>> {
        let mut draft = Draft::with_capacity(parsed.len());
        let mut buffer = Draft::buffer(payload);
        for parsed in parsed {
            self.add(&mut draft, &mut buffer, parsed, unchecked)?;
        }
        Some(draft.finish(payload, buffer))
    }

    /// Plans the batch's next record into `draft` (see [`Planner::plan`] for `unchecked`).
    fn add<'a>(
        &self,
        draft: &mut Draft<'a>,
        buffer: &mut Vec<u8>,
        parsed: Result<StreamRecord<'a>, Unparsed<'a>>,
        unchecked: bool,
    ) -> Option<()> {
        let position = draft.records.len();
        let mut created_secs = None;
        let (sequence_number, event_id, result) = match parsed {
            Ok(mut rec) => {
                let early = rec.dynamodb.as_mut().and_then(|d| d.0.early.take());
                // Converted as it was read: it is JSON.
                let mut image_read = early.is_some();
                // This record's lines start here (its early document's, if any); a record
                // that plans nothing leaves nothing behind.
                let mark = early.as_ref().map_or(buffer.len(), |e| e.start);
                let planned = to_changes(&rec, position, self, early, &mut image_read, buffer);
                if planned.is_err() {
                    buffer.truncate(mark);
                }
                let data = rec.dynamodb.as_ref().map(|d| &d.0);
                created_secs = data.and_then(|d| d.approximate_creation_date_time);
                // A planned record's Keys were parsed; its NewImage, if any, converted
                // unless it is a REMOVE's.
                let image = data.and_then(|d| d.new_image).filter(|_| !image_read);
                let keys = data.and_then(|d| d.keys).filter(|_| planned.is_err());
                if unchecked
                    && image
                        .into_iter()
                        .chain(keys)
                        .any(|text| !scan::is_json(text))
                {
                    return None;
                }
                let seq = rec.dynamodb.and_then(|d| d.0.sequence_number);
                (seq, rec.event_id, planned)
            }
            Err(u) => (u.sequence_number, u.event_id, Err(u.reason)),
        };
        let mut disposition = Disposition::Skipped;
        let mut extra = Vec::new();
        match result {
            Err(reason) => disposition = Disposition::Invalid(reason),
            Ok(planned) => {
                for (k, change) in planned.into_iter().enumerate() {
                    let hash = draft.hasher.hash_one((&*change.index, &change.id));
                    let same = |&at: &usize| {
                        let c: &Change = &draft.changes[at];
                        c.id == change.id && c.index == change.index
                    };
                    let (slot, owned) = match draft.by_id.find(hash, same).copied() {
                        Some(earlier) if supersedes(&draft.changes[earlier], &change) => {
                            // Stream order is modification order per item: the later
                            // record wins, and a record whose own change it replaces
                            // follows it.
                            let loser = draft.changes[earlier].record;
                            if draft.records[loser].disposition == Disposition::Change(earlier) {
                                draft.records[loser].disposition = Disposition::Superseded(earlier);
                            }
                            draft.changes[earlier] = change;
                            (earlier, true)
                        }
                        // An older version later in the batch (a replay or backfill batch
                        // mixing sources): the index would refuse it after the newer one.
                        Some(earlier) => (earlier, false),
                        None => {
                            let (changes, hasher) = (&draft.changes, &draft.hasher);
                            draft.by_id.insert_unique(hash, changes.len(), |&at| {
                                hasher.hash_one((&*changes[at].index, &changes[at].id))
                            });
                            draft.changes.push(change);
                            (draft.changes.len() - 1, true)
                        }
                    };
                    match (k, owned) {
                        (0, true) => disposition = Disposition::Change(slot),
                        (0, false) => disposition = Disposition::Superseded(slot),
                        _ => extra.push(slot),
                    }
                }
            }
        }
        draft.records.push(Record {
            sequence_number,
            event_id,
            disposition,
            extra,
            created_secs,
        });
        Some(())
    }
}

/// A plan being built record by record.
struct Draft<'a> {
    records: Vec<Record<'a>>,
    changes: Vec<Change>,
    /// The last change per document: positions in `changes`, found by (index, id). A table
    /// of positions rather than a map keyed by copies of both, and a faster hash than std's
    /// SipHash: hashing and copying ids cost a twentieth of a plan. The hash is still seeded
    /// per process, so ids chosen to collide cannot be chosen in advance.
    by_id: HashTable<usize>,
    hasher: DefaultHashBuilder,
}

impl<'a> Draft<'a> {
    fn with_capacity(records: usize) -> Self {
        Draft {
            records: Vec::with_capacity(records),
            changes: Vec::with_capacity(records),
            by_id: HashTable::with_capacity(records),
            hasher: DefaultHashBuilder::default(),
        }
    }

    /// The buffer every change's lines are written to, one after another (superseded ones
    /// stay, unread), with room for lines as long as the payload: a document is never longer
    /// than its image, and an action line shorter than the rest of its record. Pages not
    /// written to are never touched.
    fn buffer(payload: &str) -> Vec<u8> {
        Vec::with_capacity(payload.len())
    }

    /// The plan, its changes' lines in `buffer`.
    fn finish(mut self, payload: &'a str, buffer: Vec<u8>) -> Plan<'a> {
        let buffer = Bytes::from(buffer);
        for change in &mut self.changes {
            change.lines.attach(&buffer);
        }
        Plan {
            payload,
            records: self.records,
            changes: self.changes,
        }
    }
}

/// Whether `later` (after `earlier` in the batch, same document) replaces it: unless both carry
/// versions and the later one's is lower. Equal versions are two changes in one second of
/// stream time, and batch order is their order.
fn supersedes(earlier: &Change, later: &Change) -> bool {
    match (earlier.version, later.version) {
        (Some(e), Some(l)) => l >= e,
        _ => true,
    }
}

/// A record that did not parse as a stream record, with whatever identity could still be read
/// from it: its sequence number is what lets Lambda retry it alone.
struct Unparsed<'a> {
    reason: String,
    sequence_number: Option<Cow<'a, str>>,
    event_id: Option<Cow<'a, str>>,
}

impl<'a> Unparsed<'a> {
    /// A lenient second reading (a mistyped or repeated field elsewhere must not cost the record
    /// its `eventID` and `SequenceNumber`; a repeated key keeps its last value).
    fn of(raw: &str, error: &serde_json::Error) -> Unparsed<'a> {
        let value: serde_json::Value = serde_json::from_str(raw).unwrap_or_default();
        let text = |v: Option<&serde_json::Value>| {
            v.and_then(serde_json::Value::as_str)
                .filter(|s| !s.is_empty())
                .map(|s| Cow::Owned(s.to_string()))
        };
        Unparsed {
            reason: format!("record is not a stream record: {error}"),
            sequence_number: text(value.get("dynamodb").and_then(|d| d.get("SequenceNumber"))),
            event_id: text(value.get("eventID")),
        }
    }
}

impl<'a> Plan<'a> {
    /// The raw JSON text of each record, for quarantine. Parsed again on demand: only batches
    /// with permanent failures need it.
    pub fn raw_records(&self) -> Vec<&'a RawValue> {
        serde_json::from_str::<Object<EventShape<'a>>>(self.payload)
            .map(|s| s.0.records)
            .unwrap_or_default()
    }
}

#[derive(Deserialize)]
struct FastShape<'a> {
    #[serde(rename = "Records", borrow)]
    records: Vec<Object<StreamRecord<'a>>>,
}

/// A record's changes: the write to (or delete from) its item's index first, then deletes from
/// the index its item was routed to before, if that differs. Empty: the item goes nowhere.
/// `image_read` is set once the NewImage is converted (so it is JSON).
fn to_changes<'a>(
    rec: &StreamRecord<'a>,
    position: usize,
    planner: &Planner<'_, '_>,
    early: Option<EarlyDocument<'a>>,
    image_read: &mut bool,
    buffer: &mut Vec<u8>,
) -> Result<Changes, String> {
    let &Planner {
        versions,
        shape,
        max_lines_bytes,
        now_secs,
    } = planner;
    let Shape {
        router,
        projection,
        metadata,
    } = *shape;
    let data = &rec
        .dynamodb
        .as_ref()
        .ok_or("record has no dynamodb section")?
        .0;
    if data.sequence_number.as_deref().is_none_or(str::is_empty) {
        return Err("record has no SequenceNumber".into());
    }
    let keys = data.keys.ok_or("record has no Keys")?;
    // An early document this record does not use (a REMOVE's, one made for other Keys) is cut
    // off: the record's own lines go where it started.
    let early_start = early.as_ref().map(|e| e.start);
    // Converted for these Keys, whose parts were read then.
    let mut early = early.filter(|e| e.keys == keys);
    let parts = match early.as_mut() {
        Some(e) => std::mem::take(&mut e.parts),
        None => docid::key_parts(keys).map_err(|e| format!("Keys: {e}"))?,
    };
    let id = docid::doc_id_of(&parts);
    let event_name = rec.event_name.as_deref().ok_or("record has no eventName")?;
    let stream_version = || -> Result<u64, String> {
        let t = data
            .approximate_creation_date_time
            .ok_or("record has no ApproximateCreationDateTime")?;
        if !(0.0..9.0e15).contains(&t) {
            return Err(format!("ApproximateCreationDateTime {t} is out of range"));
        }
        if t > (now_secs + MAX_CLOCK_AHEAD_SECS) as f64 {
            return Err(format!(
                "ApproximateCreationDateTime {t} is more than {MAX_CLOCK_AHEAD_SECS} s ahead of now ({now_secs}): it must be epoch seconds from DynamoDB's clock"
            ));
        }
        Ok((t.floor() as u64) * 1000)
    };
    // Top-level attributes to find while converting (the key attributes are checked against
    // Keys).
    let names = planner.capture_names(parts.iter().map(|p| &*p.name));
    let single = router.is_single();
    let route_attrs = router.attributes();
    let found = |captured: &[Option<Captured>], name: &str| -> Option<Captured> {
        captured[names.iter().position(|n| *n == name)?].clone()
    };
    // Read only where it is written: an index name or a metadata field (about 1% of a
    // record's CPU otherwise, every record).
    let needs_table = router.needs_table();
    let table = (needs_table || metadata.writes_table())
        .then(|| rec.event_source_arn.as_deref().and_then(routing::table_of))
        .flatten();
    if needs_table && table.is_none() {
        return Err(
            "record has no eventSourceARN naming its table, and the index name needs {table}"
                .into(),
        );
    }
    // Where the item was before this change, read from the OldImage, or from Keys when the rules
    // read key attributes only. `None`: unknown (no OldImage) or, for an INSERT, nowhere.
    let old_route = || -> Result<Option<Route>, String> {
        if single {
            return Ok(Some(router.route(table, |_| None)));
        }
        // `names` starts with the key attributes.
        if router.reads_only(&names[..parts.len()]) {
            return Ok(Some(router.route(table, |i| {
                let name = &route_attrs[i];
                parts
                    .iter()
                    .find(|p| p.name == *name)
                    .map(|p| key_text(p.kind, &p.text))
            })));
        }
        let Some(old) = data.old_image else {
            return Ok(None);
        };
        let values =
            convert::find_attributes(old, route_attrs).map_err(|e| format!("OldImage: {e}"))?;
        Ok(Some(router.route(table, |i| {
            values[i].as_ref().map(|t| t.as_deref().map(Cow::Borrowed))
        })))
    };
    let lines: Range<usize>;
    let version;
    let new_route;
    match event_name {
        "INSERT" | "MODIFY" => {
            let image = data.new_image.ok_or_else(|| {
                let view = data.stream_view_type.as_deref().unwrap_or("unknown");
                format!(
                    "{event_name} record has no NewImage: the stream view type ({view}) must be NEW_IMAGE or NEW_AND_OLD_IMAGES"
                )
            })?;
            // One buffer: the action line, then the document. A version from the stream (or a
            // fixed one) is known now and its action line goes first; one read from the
            // document's version attribute is put in front of it afterwards (one small move).
            // The stream time's error, if any, is still reported where the version is read.
            let early_version = match versions {
                VersionSource::StreamTime => Some(stream_version()),
                VersionSource::Fixed(v) => Some(Ok(*v)),
                VersionSource::Attribute(_) => None,
            };
            let action_first = matches!(early_version, Some(Ok(_)));
            let write_early_action = |out: &mut Vec<u8>| {
                if let Some(Ok(v)) = early_version {
                    write_action(out, "index", &id.id, Some(v), versions.version_type());
                }
            };
            // Converted as the record was read: the action line goes in front of it (one small
            // move). The document's lines start here in the buffer and run to its end; captured spans
            // are positions in the buffer.
            let (start, captured) = match early {
                Some(EarlyDocument {
                    start,
                    mut captured,
                    ..
                }) => {
                    // Written after the document, then rotated to the front: one move, no
                    // second buffer.
                    let end = buffer.len();
                    write_early_action(buffer);
                    let n = buffer.len() - end;
                    buffer[start..].rotate_right(n);
                    for c in captured.iter_mut().flatten() {
                        c.span = c.span.start + n..c.span.end + n;
                    }
                    (start, captured)
                }
                None => {
                    if let Some(unused) = early_start {
                        buffer.truncate(unused);
                    }
                    let start = buffer.len();
                    let raw_len = id.raw.as_ref().map_or(0, |r| r.len() + 32);
                    buffer.reserve(image.len() + raw_len + ACTION_LINE_ROOM);
                    write_early_action(buffer);
                    let captured = convert::write_document_projected(
                        image,
                        buffer,
                        &names,
                        projection.filter(),
                    )
                    .map_err(|e| format!("NewImage: {e}"))?;
                    // Converted, by either path: it is JSON.
                    *image_read = true;
                    (start, captured)
                }
            };
            check_keys("NewImage", &parts, &captured, buffer)?;
            new_route = if single {
                router.route(table, |_| None)
            } else {
                router.route(table, |i| {
                    found(&captured, &route_attrs[i]).map(|c| captured_text(&c, buffer))
                })
            };
            version = Some(match (versions, early_version) {
                (_, Some(early)) => early?,
                (VersionSource::Attribute(name), None) => {
                    attribute_version(name, found(&captured, name).map(|c| &buffer[c.span]))?
                }
                (VersionSource::StreamTime | VersionSource::Fixed(_), None) => {
                    unreachable!("stream and fixed versions are read before the document")
                }
            });
            if let Some(name) = metadata.names().find(|n| found(&captured, n).is_some()) {
                return Err(format!(
                    "the item has an attribute named {name}, a field METADATA_FIELDS writes (set METADATA_PREFIX to another prefix)"
                ));
            }
            metadata.write(
                buffer,
                &RecordFacts {
                    table,
                    event_name,
                    stream_time_ms: data
                        .approximate_creation_date_time
                        .filter(|t| (0.0..9.0e15).contains(t))
                        .map(|t| (t * 1000.0).floor() as u64),
                    sequence_number: data.sequence_number.as_deref(),
                    event_id: rec.event_id.as_deref(),
                },
            );
            if let Some(raw) = &id.raw {
                if found(&captured, RAW_KEY_FIELD).is_some() {
                    return Err(format!(
                        "the item has an attribute named {RAW_KEY_FIELD}, the field that keeps the full text of a key over {} bytes",
                        docid::MAX_ID_BYTES
                    ));
                }
                // Keep the full key beside a hashed id, so the document can be found by its key.
                buffer.pop();
                convert::write_member_name(buffer, RAW_KEY_FIELD);
                convert::write_json_str(buffer, raw);
                buffer.push(b'}');
            }
            buffer.push(b'\n');
            if !action_first {
                let mut action = Vec::with_capacity(ACTION_LINE_ROOM);
                write_action(
                    &mut action,
                    "index",
                    &id.id,
                    version,
                    versions.version_type(),
                );
                buffer.splice(start..start, action);
            }
            lines = start..buffer.len();
        }
        "REMOVE" => {
            if let Some(unused) = early_start {
                buffer.truncate(unused);
            }
            new_route = Route::Skip;
            lines = buffer.len()..buffer.len();
            version = match versions {
                VersionSource::StreamTime => Some(stream_version()?),
                VersionSource::Fixed(v) => Some(*v),
                // Versioned from the OldImage when the stream carries it; otherwise unversioned
                // (README: "Versions" says what that gives up).
                VersionSource::Attribute(name) => match data.old_image {
                    Some(old) => {
                        let mut scratch = Vec::with_capacity(old.len());
                        let captured = convert::write_document_capturing(old, &mut scratch, &names)
                            .map_err(|e| format!("OldImage: {e}"))?;
                        check_keys("OldImage", &parts, &captured, &scratch)?;
                        // One above the deleted item's version: strictly newer than the write
                        // it removes, as `external` requires.
                        let v = attribute_version(
                            name,
                            found(&captured, name).map(|c| &scratch[c.span]),
                        )?;
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
            u.0.kind.as_deref() == Some("Service")
                && u.0.principal_id.as_deref() == Some("dynamodb.amazonaws.com")
        });
    // The id is given once they are all made (`with_id`): the last change takes it.
    let change = |index: Arc<str>, action: Action, lines: Range<usize>| Change {
        index,
        id: String::new(),
        action,
        version,
        ttl,
        lines: Lines::pending(lines),
        record: position,
    };
    let mut out = Changes::new();
    let target = match &new_route {
        Route::Index(index) => Some(index.clone()),
        Route::Skip => None,
    };
    if event_name != "REMOVE"
        && let Some(index) = &target
    {
        out.push(change(index.clone(), Action::Index, lines));
        if single {
            return Ok(with_id(out, id.id));
        }
    }
    // Deletes: a REMOVE's from where its item was; a write's from where its item was before,
    // if that is elsewhere. An INSERT's item was nowhere.
    if event_name == "INSERT" {
        return Ok(with_id(out, id.id));
    }
    let deletes: Vec<Arc<str>> = match old_route()? {
        Some(Route::Index(old)) if target.as_ref() != Some(&old) || event_name == "REMOVE" => {
            vec![old]
        }
        Some(_) => Vec::new(),
        // A REMOVE whose index cannot be known: from every index the item could be in.
        None if event_name == "REMOVE" => router.every_index(table),
        None => Vec::new(),
    };
    for index in deletes {
        let start = buffer.len();
        write_action(buffer, "delete", &id.id, version, versions.version_type());
        out.push(change(index, Action::Delete, start..buffer.len()));
    }
    Ok(with_id(out, id.id))
}

/// A record's changes: one, usually (inline).
type Changes = smallvec::SmallVec<[Change; 1]>;

/// `changes`, each with the document id `id`: the last takes it, the others a copy.
fn with_id(mut changes: Changes, id: String) -> Changes {
    if let Some((last, rest)) = changes.split_last_mut() {
        for change in rest {
            change.id.clone_from(&id);
        }
        last.id = id;
    }
    changes
}

/// An attribute's text for routing: a string's text, a number's canonical text; other types
/// have none (`Some(None)`: present, nothing to compare).
fn captured_text<'d>(c: &Captured, doc: &'d [u8]) -> Option<Cow<'d, str>> {
    match c.kind {
        AttributeKind::S | AttributeKind::N => token_text(c.kind, &doc[c.span.clone()]),
        AttributeKind::B | AttributeKind::Other => None,
    }
}

/// The text of a converted S, N or B value's JSON token, as a key part holds it: a number's
/// canonical text, a string's (or base64's) decoded text. `None` if the token is neither.
fn token_text(kind: AttributeKind, token: &[u8]) -> Option<Cow<'_, str>> {
    match kind {
        AttributeKind::N => std::str::from_utf8(token)
            .ok()
            .and_then(Decimal::parse)
            .map(|d| Cow::Owned(d.canonical_text())),
        // Without escapes a string token's text is what stands between its quotes (a token
        // of the document: UTF-8, no control characters); serde would copy it.
        _ => match token {
            [b'"', inner @ .., b'"'] if !inner.contains(&b'\\') => {
                std::str::from_utf8(inner).ok().map(Cow::Borrowed)
            }
            _ => serde_json::from_slice::<String>(token).ok().map(Cow::Owned),
        },
    }
}

/// A key attribute's text for routing (its `KeyPart::text` is already canonical).
fn key_text(kind: AttributeKind, text: &str) -> Option<Cow<'_, str>> {
    match kind {
        AttributeKind::S | AttributeKind::N => Some(Cow::Borrowed(text)),
        AttributeKind::B | AttributeKind::Other => None,
    }
}

/// Whether a key attribute's token in the document holds the key's text, where the bytes
/// settle it without decoding: a string token without escapes is its text between the quotes;
/// a number written as the key's canonical text is that number (canonical text reads back as
/// its own value). `None`: decode and compare.
fn same_by_bytes(kind: AttributeKind, token: &[u8], text: &str) -> Option<bool> {
    match kind {
        AttributeKind::S => {
            let inner = token.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
            (!inner.contains(&b'\\')).then(|| inner == text.as_bytes())
        }
        AttributeKind::N => (token == text.as_bytes()).then_some(true),
        AttributeKind::B | AttributeKind::Other => None,
    }
}

/// The image must hold every key attribute of `Keys`, with the same type and value: otherwise
/// the document would go under an id that is not its item's.
fn check_keys(
    image_name: &str,
    parts: &[KeyPart],
    captured: &[Option<Captured>],
    doc: &[u8],
) -> Result<(), String> {
    for (part, found) in parts.iter().zip(captured) {
        let name = &part.name;
        let Some(found) = found else {
            return Err(format!(
                "{image_name} lacks the key attribute {name} that Keys names"
            ));
        };
        if found.kind != part.kind {
            return Err(format!(
                "key attribute {name} is {:?} in Keys but {:?} in {image_name}",
                part.kind, found.kind
            ));
        }
        let token = &doc[found.span.clone()];
        let same = same_by_bytes(part.kind, token, &part.text)
            .unwrap_or_else(|| token_text(part.kind, token).is_some_and(|t| t == part.text));
        if !same {
            return Err(format!(
                "key attribute {name} has different values in Keys and {image_name}"
            ));
        }
    }
    Ok(())
}

fn attribute_version(name: &str, text: Option<&[u8]>) -> Result<u64, String> {
    let text = text.ok_or_else(|| format!("version attribute {name} is missing"))?;
    let text = std::str::from_utf8(text).unwrap_or("");
    Decimal::parse(text)
        .and_then(|d| d.as_version())
        .ok_or_else(|| {
            format!(
                "version attribute {name} is {text:?}, not a number from 0 to 9223372036854775807"
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
        // Not `write!`: the formatting machinery cost as much as the rest of the line.
        out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        out.extend_from_slice(b",\"version_type\":\"");
        out.extend_from_slice(version_type.as_bytes());
        out.push(b'"');
    }
    out.extend_from_slice(b"}}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{Strategy, any, prop};

    /// One index, every attribute, no metadata.
    fn shape() -> Shape<'static> {
        static ROUTER: std::sync::LazyLock<Router> =
            std::sync::LazyLock::new(|| Router::single("t"));
        static PROJECTION: std::sync::LazyLock<Projection> =
            std::sync::LazyLock::new(Projection::default);
        static METADATA: std::sync::LazyLock<Metadata> =
            std::sync::LazyLock::new(Metadata::default);
        Shape {
            router: &ROUTER,
            projection: &PROJECTION,
            metadata: &METADATA,
        }
    }

    /// A stream record with the given pieces (Keys and images as DynamoDB JSON text).
    fn record(seq: &str, name: &str, time: &str, keys: &str, image: Option<&str>) -> String {
        let image = image.map_or(String::new(), |i| format!(",\"NewImage\":{i}"));
        format!(
            r#"{{"eventID":"e{seq}","eventName":"{name}","dynamodb":{{"ApproximateCreationDateTime":{time},"Keys":{keys},"SequenceNumber":"{seq}"{image}}}}}"#
        )
    }

    const KEYS: &str = r#"{"pk":{"S":"a"}}"#;

    fn batch(records: &[String]) -> String {
        format!("{{\"Records\":[{}]}}", records.join(","))
    }

    fn reasons(payload: &str) -> Vec<Option<String>> {
        plan(payload, &VersionSource::StreamTime, &shape(), 1 << 20)
            .unwrap()
            .records
            .into_iter()
            .map(|r| match r.disposition {
                Disposition::Invalid(reason) => Some(reason),
                _ => None,
            })
            .collect()
    }

    fn good() -> String {
        record(
            "1",
            "INSERT",
            "1700000000",
            KEYS,
            Some(r#"{"pk":{"S":"a"},"n":{"N":"1"}}"#),
        )
    }

    #[test]
    fn only_objects_make_a_batch_and_its_records() {
        let r = good();
        assert!(
            plan(
                &format!("[[{r}]]"),
                &VersionSource::StreamTime,
                &shape(),
                1 << 20
            )
            .is_err()
        );
        assert!(
            plan(
                &format!("[{r}]"),
                &VersionSource::StreamTime,
                &shape(),
                1 << 20
            )
            .is_err()
        );
        let as_array = r#"["e1","INSERT",null,null,{"Keys":{"pk":{"S":"a"}}}]"#.to_string();
        let got = reasons(&batch(&[good(), as_array, "7".into()]));
        assert_eq!(got[0], None);
        assert!(
            got[1]
                .as_deref()
                .unwrap()
                .contains("expected a JSON object"),
            "{got:?}"
        );
        assert!(got[2].is_some());
        let dynamodb_array = r#"{"eventID":"e2","eventName":"INSERT","dynamodb":["x"]}"#;
        let got = reasons(&batch(&[good(), dynamodb_array.into()]));
        assert!(
            got[1]
                .as_deref()
                .unwrap()
                .contains("expected a JSON object"),
            "{got:?}"
        );
    }

    #[test]
    fn a_mistyped_optional_field_keeps_the_records_identity() {
        let image = Some(r#"{"pk":{"S":"a"}}"#);
        let cases = [
            record("2", "INSERT", "\"1700000000\"", KEYS, image),
            good().replace(r#""eventID""#, r#""userIdentity":"svc","eventID""#),
            good().replace(
                r#""dynamodb":{"#,
                r#""dynamodb":{"SequenceNumber":"0"},"dynamodb":{"#,
            ),
        ];
        for case in cases {
            let payload = batch(&[good(), case.clone()]);
            let p = plan(&payload, &VersionSource::StreamTime, &shape(), 1 << 20).unwrap();
            let r = &p.records[1];
            assert!(matches!(r.disposition, Disposition::Invalid(_)), "{case}");
            assert!(
                r.sequence_number
                    .as_deref()
                    .is_some_and(|s| s == "1" || s == "2"),
                "{case}: {:?}",
                r.sequence_number.as_deref()
            );
            assert!(r.event_id.is_some(), "{case}");
        }
    }

    #[test]
    fn a_creation_time_ahead_of_the_clock_is_refused() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let image = Some(r#"{"pk":{"S":"a"}}"#);
        let millis = (now * 1000).to_string();
        let hour_ahead = (now + 3600).to_string();
        let minute_ahead = (now + 60).to_string();
        let got = reasons(&batch(&[
            record("1", "INSERT", &millis, KEYS, image),
            record("2", "MODIFY", &hour_ahead, KEYS, image),
            record("3", "REMOVE", &hour_ahead, r#"{"pk":{"S":"c"}}"#, None),
            record(
                "4",
                "INSERT",
                &minute_ahead,
                r#"{"pk":{"S":"d"}}"#,
                Some(r#"{"pk":{"S":"d"}}"#),
            ),
        ]));
        for r in &got[..3] {
            assert!(r.as_deref().unwrap().contains("ahead of now"), "{got:?}");
        }
        assert_eq!(got[3], None, "within the allowed skew");
    }

    #[test]
    fn a_batchs_lines_lie_side_by_side_and_a_record_that_plans_nothing_leaves_none() {
        let insert = |seq: &str, key: &str, image_key: &str| {
            let keys = format!(r#"{{"pk":{{"S":"{key}"}}}}"#);
            let image = format!(r#"{{"pk":{{"S":"{image_key}"}},"n":{{"N":"{seq}"}}}}"#);
            record(seq, "INSERT", "1700000000", &keys, Some(&image))
        };
        let payload = batch(&[
            insert("1", "a", "a"),
            // Converted as it is read, then refused: its image names another key.
            insert("2", "b", "x"),
            // A REMOVE carrying a NewImage, converted as it is read and not used.
            record(
                "3",
                "REMOVE",
                "1700000000",
                r#"{"pk":{"S":"c"}}"#,
                Some(r#"{"pk":{"S":"c"}}"#),
            ),
            insert("4", "d", "d"),
        ]);
        let plan = plan(&payload, &VersionSource::StreamTime, &shape(), 1 << 20).unwrap();
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        let each: Vec<String> = plan.changes.iter().map(|c| text(&c.lines)).collect();
        assert_eq!(
            each,
            [
                "{\"index\":{\"_id\":\"a\",\"version\":1700000000000,\"version_type\":\"external_gte\"}}\n{\"pk\":\"a\",\"n\":1}\n",
                "{\"delete\":{\"_id\":\"c\",\"version\":1700000000000,\"version_type\":\"external_gte\"}}\n",
                "{\"index\":{\"_id\":\"d\",\"version\":1700000000000,\"version_type\":\"external_gte\"}}\n{\"pk\":\"d\",\"n\":4}\n",
            ]
        );
        let lines: Vec<&Lines> = plan.changes.iter().map(|c| &c.lines).collect();
        let joined = lines[1..]
            .iter()
            .try_fold(lines[0].clone(), |all, next| all.joined(next))
            .expect("one batch's lines lie side by side");
        assert_eq!(text(&joined.bytes()), each.concat());
        // A body of all of them is a slice of the plan's buffer; of some, a copy.
        let bodies = crate::pipeline::bulk::pack(&plan.changes, &[0, 1, 2], 1 << 20, 100);
        assert_eq!(bodies.len(), 1);
        assert_eq!(bodies[0].bytes.as_ptr(), lines[0].as_ptr());
        assert_eq!(text(&bodies[0].bytes), each.concat());
        let bodies = crate::pipeline::bulk::pack(&plan.changes, &[0, 2], 1 << 20, 100);
        assert_eq!(text(&bodies[0].bytes), format!("{}{}", each[0], each[2]));
    }

    #[test]
    fn keys_must_name_each_attribute_once_and_agree_with_the_image() {
        let cases = [
            (
                r#"{"pk":{"S":"a"},"pk":{"S":"b"}}"#,
                r#"{"pk":{"S":"a"}}"#,
                "more than once",
            ),
            (KEYS, r#"{"pk":{"S":"b"}}"#, "different values"),
            (KEYS, r#"{"pk":{"N":"1"}}"#, "is S in Keys but N"),
            (KEYS, r#"{"other":{"S":"a"}}"#, "lacks the key attribute pk"),
            (
                r#"{"pk":{"N":"1.0"}}"#,
                r#"{"pk":{"N":"2"}}"#,
                "different values",
            ),
            (
                r#"{"pk":{"S":"\ud800"}}"#,
                r#"{"pk":{"S":"a"}}"#,
                "key attribute pk:",
            ),
        ];
        for (keys, image, expected) in cases {
            let got = reasons(&batch(&[record(
                "1",
                "INSERT",
                "1700000000",
                keys,
                Some(image),
            )]));
            let reason = got[0].as_deref().unwrap_or("accepted");
            assert!(reason.contains(expected), "{keys} {image}: {reason}");
        }
        let same = reasons(&batch(&[record(
            "1",
            "INSERT",
            "1700000000",
            r#"{"pk":{"N":"1.0"},"sk":{"S":"x\"y"}}"#,
            Some(r#"{"sk":{"S":"x\u0022y"},"pk":{"N":"1"}}"#),
        )]));
        assert_eq!(same[0], None, "equal values in other spellings agree");
        let same = reasons(&batch(&[record(
            "1",
            "INSERT",
            "1700000000",
            r#"{"pk":{"N":"1E+2"},"sk":{"N":"100"}}"#,
            Some(r#"{"sk":{"N":"1E+2"},"pk":{"N":"100"}}"#),
        )]));
        assert_eq!(
            same[0], None,
            "a number agrees with its canonical text either way"
        );
    }

    #[test]
    fn of_two_changes_of_one_key_the_higher_version_wins_whatever_the_order() {
        let modify = |seq: &str, time: &str, v: u32| {
            let image = format!(r#"{{"pk":{{"S":"a"}},"v":{{"N":"{v}"}}}}"#);
            record(seq, "MODIFY", time, KEYS, Some(&image))
        };
        let payload = batch(&[modify("9", "1700000100", 2), modify("5", "1700000000", 1)]);
        let p = plan(&payload, &VersionSource::StreamTime, &shape(), 1 << 20).unwrap();
        assert_eq!(p.changes.len(), 1);
        assert_eq!(p.changes[0].record, 0, "the newer change is sent");
        assert_eq!(p.records[1].disposition, Disposition::Superseded(0));
        // Equal versions: batch order decides (two changes in one second of stream time).
        let payload = batch(&[modify("5", "1700000000", 1), modify("6", "1700000000", 2)]);
        let p = plan(&payload, &VersionSource::StreamTime, &shape(), 1 << 20).unwrap();
        assert_eq!(p.changes[0].record, 1);
    }

    #[test]
    fn an_item_attribute_named_like_the_raw_key_field_is_refused_when_the_key_is_hashed() {
        let long = "k".repeat(600);
        let keys = format!(r#"{{"pk":{{"S":"{long}"}}}}"#);
        let image = format!(r#"{{"pk":{{"S":"{long}"}},"{RAW_KEY_FIELD}":{{"S":"mine"}}}}"#);
        let got = reasons(&batch(&[record(
            "1",
            "INSERT",
            "1700000000",
            &keys,
            Some(&image),
        )]));
        assert!(
            got[0].as_deref().unwrap().contains(RAW_KEY_FIELD),
            "{got:?}"
        );
        let short = format!(r#"{{"pk":{{"S":"a"}},"{RAW_KEY_FIELD}":{{"S":"mine"}}}}"#);
        let got = reasons(&batch(&[record(
            "1",
            "INSERT",
            "1700000000",
            KEYS,
            Some(&short),
        )]));
        assert_eq!(got[0], None, "with a short key the field is the item's own");
    }

    /// Everything a plan decides, as text to compare.
    fn outcome(result: Result<Plan<'_>, NotAStreamEvent>) -> String {
        let plan = match result {
            Ok(plan) => plan,
            Err(e) => return format!("not a stream event: {e}"),
        };
        let records: Vec<String> = plan
            .records
            .iter()
            .map(|r| {
                format!(
                    "{:?} {:?} {:?} {:?} {:?}",
                    r.sequence_number, r.event_id, r.disposition, r.extra, r.created_secs
                )
            })
            .collect();
        let changes: Vec<String> = plan
            .changes
            .iter()
            .map(|c| {
                format!(
                    "{} {} {:?} {:?} {} {} {}",
                    c.index,
                    c.id,
                    c.action,
                    c.version,
                    c.ttl,
                    String::from_utf8_lossy(&c.lines),
                    c.record
                )
            })
            .collect();
        format!("{records:#?}\n{changes:#?}")
    }

    /// Records as streams send them and as crafted input might: escapes, nulls, repeated and
    /// unknown fields, REMOVEs with images, images serde reads but the fast path leaves to the
    /// walk, and one that nests past serde's limit.
    fn record_text() -> impl Strategy<Value = String> {
        let deep = format!(
            r#"{{"eventID":"d","eventName":"INSERT","dynamodb":{{"ApproximateCreationDateTime":1700000000,"Keys":{KEYS},"SequenceNumber":"9","NewImage":{{"pk":{{"S":"a"}},"m":{}{{"N":"1"}}{}}}}}}}"#,
            r#"{"M":{"x":"#.repeat(70),
            "}}".repeat(70)
        );
        prop::sample::select(vec![
            good(),
            r#"{"eventID":"e2","eventName":"MODIFY","eventVersion":"1.1","awsRegion":"eu-west-1","userIdentity":{"type":"Service","principalId":"dynamodb.amazonaws.com"},"dynamodb":{"ApproximateCreationDateTime":1700000001,"Keys":{"pk":{"S":"b"}},"NewImage":{"pk":{"S":"b"},"kind":{"S":"a1"},"t":{"SS":["x","y"]},"l":{"L":[{"N":"1.50"},{"NULL":true}]}},"OldImage":{"pk":{"S":"b"},"kind":{"S":"b1"}},"SequenceNumber":"2","SizeBytes":90,"StreamViewType":"NEW_AND_OLD_IMAGES"},"eventSourceARN":"arn:aws:dynamodb:eu-west-1:1:table/t/stream/x"}"#.to_string(),
            r#"{"eventID":"e3","eventName":"REMOVE","userIdentity":{"type":"Service","principalId":"dynamodb.amazonaws.com"},"dynamodb":{"ApproximateCreationDateTime":1700000002,"Keys":{"pk":{"S":"a"}},"OldImage":{"pk":{"S":"a"},"kind":{"S":"a"}},"SequenceNumber":"3"}}"#.to_string(),
            r#"{"eventID":"e\"4","eventName":"INS\u0045RT","dynamodb":{"ApproximateCreationDateTime":1700000003.75,"Keys":{"pk":{"S":"c"}},"NewImage":{"pk":{"S":"c"},"s":{"S":"\u00e9\n\t\"q\""}},"SequenceNumber":"4"}}"#.to_string(),
            r#"{"eventID":null,"eventName":"MODIFY","userIdentity":null,"dynamodb":{"ApproximateCreationDateTime":null,"Keys":{"pk":{"S":"d"}},"NewImage":null,"OldImage":null,"SequenceNumber":"5"}}"#.to_string(),
            r#"{"eventID":"e6","eventName":"INSERT","eventName":"MODIFY","dynamodb":{"ApproximateCreationDateTime":1700000004,"Keys":{"pk":{"S":"e"}},"NewImage":{"pk":{"S":"e"}},"SequenceNumber":"6"}}"#.to_string(),
            r#"{"eventID":"e7","eventName":"REMOVE","dynamodb":{"ApproximateCreationDateTime":1700000005,"Keys":{"pk":{"S":"f"}},"NewImage":{"pk":{"S":"f"},"x":[1,{"y":null}]},"SequenceNumber":"7"}}"#.to_string(),
            r#"{"eventID":"e8","eventName":"INSERT","other":{"a":[true,false,null,-1.5e3,"\u0000"]},"dynamodb":{"ApproximateCreationDateTime":1700000006,"Keys":{"pk":{"S":"g"}},"NewImage":{"pk":{"S":"g"},"b":{"B":"AA=="},"bad":{"N":"1e999"}},"SequenceNumber":"8"}}"#.to_string(),
            " { \"eventID\" : \"e9\" , \"eventName\" : \"INSERT\" , \"dynamodb\" : { \"ApproximateCreationDateTime\" : 1700000007 , \"Keys\" : { \"pk\" : { \"S\" : \"h\" } } , \"NewImage\" : { \"pk\" : { \"S\" : \"h\" } , \"n\" : { \"N\" : \"-0.5\" } } , \"SequenceNumber\" : \"9\" } } ".to_string(),
            deep,
            // Two key attributes named out of order, the Keys before or after the NewImage,
            // and a key name with an escape.
            r#"{"eventID":"e10","eventName":"MODIFY","dynamodb":{"ApproximateCreationDateTime":1700000008,"Keys":{"sk":{"N":"2"},"pk":{"S":"i"}},"NewImage":{"pk":{"S":"i"},"sk":{"N":"2"},"n":{"N":"3"},"kind":{"S":"ab"}},"SequenceNumber":"10"}}"#.to_string(),
            r#"{"eventID":"e11","eventName":"MODIFY","dynamodb":{"ApproximateCreationDateTime":1700000009,"NewImage":{"pk":{"S":"i"},"sk":{"N":"2"},"n":{"N":"4"}},"Keys":{"sk":{"N":"2"},"pk":{"S":"i"}},"SequenceNumber":"11"}}"#.to_string(),
            r#"{"eventID":"e12","eventName":"INSERT","dynamodb":{"ApproximateCreationDateTime":1700000010,"Keys":{"p\u006b":{"S":"j"}},"NewImage":{"pk":{"S":"j"},"n":{"N":"5"}},"SequenceNumber":"12"}}"#.to_string(),
        ])
    }

    /// A few one-byte edits at char boundaries: deleted, or replaced or preceded by a byte that
    /// matters to JSON.
    fn mutate(text: &str, edits: &[(prop::sample::Index, u8, u8)]) -> String {
        let mut text = text.to_string();
        for (at, kind, byte) in edits {
            let bounds: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
            let i = bounds[at.index(bounds.len())];
            let c = [
                b'{', b'}', b'[', b']', b'"', b',', b':', b'\\', b'n', b'1', 1u8, b' ',
            ][*byte as usize % 12] as char;
            let width = text[i..].chars().next().map_or(0, char::len_utf8);
            match kind % 3 {
                0 => text.replace_range(i..i + width, ""),
                1 => text.replace_range(i..i + width, &c.to_string()),
                _ => text.insert(i, c),
            }
        }
        text
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, failure_persistence: None, ..Default::default() })]
        /// The one-pass reading (records by hand, each NewImage read only by its conversion)
        /// plans exactly what serde's reading plans, for whole, broken and crafted events, one
        /// index or routed on an attribute of the images.
        #[test]
        fn the_one_pass_plan_is_the_serde_plan(
            records in prop::collection::vec(record_text(), 0..5),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), any::<u8>()), 0..3),
            routed in any::<bool>(),
            by_attribute in any::<bool>(),
        ) {
            let payload = mutate(&batch(&records), &edits);
            let router = if routed {
                Router::parse(Some("t"), Some(r#"[{"when":{"attribute":"kind","prefix":"a"},"index":"ta"}]"#)).unwrap()
            } else {
                Router::single("t")
            };
            let base = shape();
            let shape = Shape { router: &router, ..base };
            // Versions from the stream put the action line in front of a converted document;
            // from an attribute, after it.
            let versions = if by_attribute {
                VersionSource::Attribute("n".into())
            } else {
                VersionSource::StreamTime
            };
            let planner = Planner { versions: &versions, shape: &shape, max_lines_bytes: 1 << 20, now_secs: 1_800_000_000 };
            let by_serde = parse(&payload).map(|parsed| planner.plan(&payload, parsed, false).unwrap());
            let one_pass = planner.plan_in_one_pass(&payload);
            // Where the one pass gives up, `plan` takes serde's reading: equal by construction.
            if let Some(one_pass) = one_pass {
                proptest::prop_assert_eq!(outcome(Ok(one_pass)), outcome(by_serde), "{}", payload);
            }
        }
    }

    #[test]
    fn an_event_as_streams_send_it_is_read_in_one_pass() {
        let payload = batch(&[good(), good().replace("\"1\"", "\"2\"")]);
        let shape = shape();
        let planner = Planner {
            versions: &VersionSource::StreamTime,
            shape: &shape,
            max_lines_bytes: 1 << 20,
            now_secs: 1_800_000_000,
        };
        let mut early = EarlyState::default();
        let mut buffer = Vec::new();
        let mut records = Vec::new();
        event::read(
            &payload,
            |keys, text| planner.early_image(&mut early, &mut buffer, keys, text),
            |record| {
                records.push(record);
                Some(())
            },
        )
        .unwrap();
        // Each NewImage converted where the reading met it (its Keys come first).
        assert_eq!(records.len(), 2);
        assert!(
            records
                .iter()
                .all(|r| r.dynamodb.as_ref().unwrap().0.early.is_some())
        );
    }

    /// The one pass reads a NewImage only by converting it, so its conversion must refuse
    /// what serde's parse of the event refuses: then the batch is what serde says it is.
    #[test]
    fn an_image_that_is_not_json_is_judged_as_serde_judges_the_event() {
        for image in [
            "{\"pk\":{\"S\":\"a\"},\"s\":{\"S\":\"x\u{1}y\"}}",
            r#"{"pk":{"S":"a"},"s":{"S":"a\qb"}}"#,
            r#"{"pk":{"S":"a"},"s":{"S":"a"},}"#,
            r#"{"pk":{"S":"a"},"s":{"N":"1"} "#,
        ] {
            let payload = batch(&[record("1", "INSERT", "1700000000", KEYS, Some(image))]);
            let got = plan(&payload, &VersionSource::StreamTime, &shape(), 1 << 20);
            assert!(
                matches!(&got, Err(NotAStreamEvent(_))),
                "{image}: {}",
                outcome(got)
            );
        }
        let remove = batch(&[record("1", "REMOVE", "1700000000", KEYS, Some(r#"{"a":}"#))]);
        let got = plan(&remove, &VersionSource::StreamTime, &shape(), 1 << 20);
        assert!(matches!(got, Err(NotAStreamEvent(_))));
    }

    /// An image nested far past serde's recursion limit is refused with a reason, not followed
    /// down the stack (6 MB of `{"M":` would overflow it).
    #[test]
    fn a_deeply_nested_image_is_refused_not_overflowing_the_stack() {
        let n = 200_000;
        let image = format!(
            r#"{{"pk":{{"S":"a"}},"m":{}{{"N":"1"}}{}}}"#,
            r#"{"M":{"x":"#.repeat(n),
            "}}".repeat(n)
        );
        let got = reasons(&batch(&[
            record("1", "INSERT", "1700000000", KEYS, Some(&image)),
            good(),
        ]));
        assert!(
            got[0]
                .as_deref()
                .is_some_and(|r| r.contains("recursion limit")),
            "{:?}",
            got[0]
        );
        assert_eq!(got[1], None);
    }
}
