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
use std::hash::BuildHasher as _;
use std::ops::Range;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hashbrown::{DefaultHashBuilder, HashTable};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::pipeline::change::{
    ACTION_LINE_ROOM, Action, Change, Disposition, EarlyDocument, EventShape, Lines,
    NotAStreamEvent, Object, Record, StreamRecord, write_action,
};
use crate::pipeline::convert::{self, AttributeKind, Captured, Decimal};
use crate::pipeline::docid::{self, KeyPart, RAW_KEY_FIELD};
use crate::pipeline::metadata::{Metadata, RecordFacts};
use crate::pipeline::projection::Projection;
use crate::pipeline::routing::{self, Route, Router};
use crate::pipeline::version::{
    MAX_CLOCK_AHEAD_SECS, VersionSource, attribute_version, supersedes,
};
use crate::pipeline::{event, scan};

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

/// The changes of a batch and what became of every record.
pub struct Plan<'a> {
    payload: &'a str,
    pub records: Vec<Record<'a>>,
    pub changes: Vec<Change>,
}

/// How documents are shaped: which index (routes), which attributes (projection), which
/// stream metadata fields.
#[derive(Clone, Copy)]
pub struct Shape<'c> {
    pub router: &'c Router,
    pub projection: &'c Projection,
    pub metadata: &'c Metadata,
}

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

#[cfg(test)]
mod tests;
