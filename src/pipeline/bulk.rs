//! `_bulk` bodies and their answers: packing changes into byte-bounded NDJSON bodies, and
//! turning a `_bulk` response back into one outcome per action, by position.

use std::borrow::Cow;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::pipeline::change::{Action, Change};

/// One `_bulk` request body for one index and the changes it carries, in body order.
#[derive(Debug, Clone)]
pub struct BulkBody {
    pub index: std::sync::Arc<str>,
    pub changes: Vec<usize>,
    pub bytes: Bytes,
}

/// Packs `pending` changes (indices into `changes`) into bodies of at most `max_bytes` bytes
/// (every newline counted) and `max_actions` actions, in the order given; a body holds one
/// index's changes (it is posted to `/<index>/_bulk`), so a change for another index starts a
/// new one. A change larger than `max_bytes` on its own still gets a body of its own; planning
/// rejects those before here.
pub fn pack(
    changes: &[Change],
    pending: &[usize],
    max_bytes: usize,
    max_actions: usize,
) -> Vec<BulkBody> {
    let mut bodies = Vec::new();
    let mut members: Vec<usize> = Vec::new();
    let mut size = 0;
    for &i in pending {
        let change = &changes[i];
        if let Some(&first) = members.first()
            && (size + change.lines.len() > max_bytes
                || members.len() == max_actions
                || changes[first].index != change.index)
        {
            bodies.push(body(changes, std::mem::take(&mut members)));
            size = 0;
        }
        size += change.lines.len();
        members.push(i);
    }
    if !members.is_empty() {
        bodies.push(body(changes, members));
    }
    bodies
}

/// The body of `members` (one index's): a slice of their plan's buffer where they lie side by
/// side in it, as a first attempt's changes do; otherwise (a retry of some of them, changes
/// from several plans) a copy, allocated once.
fn body(changes: &[Change], members: Vec<usize>) -> BulkBody {
    let first = &changes[members[0]];
    let joined = members[1..]
        .iter()
        .try_fold(first.lines.clone(), |lines, &i| {
            lines.joined(&changes[i].lines)
        });
    let bytes = match joined {
        Some(lines) => lines.bytes(),
        None => {
            let size = members.iter().map(|&i| changes[i].lines.len()).sum();
            let mut buf = Vec::with_capacity(size);
            for &i in &members {
                buf.extend_from_slice(&changes[i].lines);
            }
            Bytes::from(buf)
        }
    };
    BulkBody {
        index: first.index.clone(),
        changes: members,
        bytes,
    }
}

/// What happened to one action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// The document is in the index.
    Indexed,
    /// The document is gone (deleted now, or was not there).
    Deleted,
    /// Under external versioning the index already holds this version or a newer one (409):
    /// the change is durably represented; nothing to do.
    Superseded,
    /// Could succeed later: 429, 5xx, a failed request, or not attempted before the deadline.
    Retry(String),
    /// Not an action's outcome: the record's item is routed to no index (nothing was sent).
    Skipped,
    /// Can never succeed as sent: mapping, parsing, validation.
    Permanent(String),
}

impl ItemOutcome {
    pub fn is_retry(&self) -> bool {
        matches!(self, ItemOutcome::Retry(_))
    }
}

/// Error types that mean "the cluster is busy or blocked", whatever the status says.
const RETRYABLE_ERROR_TYPES: &[&str] = &[
    "rejected_execution_exception",
    "es_rejected_execution_exception",
    "circuit_breaking_exception",
    "cluster_block_exception",
    "unavailable_shards_exception",
    "process_cluster_event_timeout_exception",
    "node_not_connected_exception",
    "node_closed_exception",
    "no_shard_available_action_exception",
];

/// Classifies one bulk item from its status and error. `causes` is the error's `caused_by`
/// chain, outermost first, as (type, reason): OpenSearch's top-level reason is often only
/// "failed to parse", and the root cause is what a user can act on.
pub fn classify(
    action: Action,
    status: Option<u16>,
    error_type: Option<&str>,
    reason: Option<&str>,
    causes: &[(Option<String>, Option<String>)],
) -> ItemOutcome {
    let Some(status) = status else {
        return ItemOutcome::Retry("bulk item has no status".into());
    };
    let describe = || {
        let mut text = format!(
            "{status} {}: {}",
            error_type.unwrap_or("error"),
            reason.unwrap_or("no reason given")
        );
        for (kind, reason) in causes {
            text.push_str(&format!(
                "; caused by {}: {}",
                kind.as_deref().unwrap_or("error"),
                reason.as_deref().unwrap_or("no reason given")
            ));
        }
        text
    };
    if error_type.is_some_and(|t| RETRYABLE_ERROR_TYPES.contains(&t)) {
        return ItemOutcome::Retry(describe());
    }
    match (status, action) {
        (200..=299, Action::Index) => ItemOutcome::Indexed,
        (200..=299, Action::Delete) | (404, Action::Delete) => ItemOutcome::Deleted,
        (409, _) if error_type.is_none_or(|t| t == "version_conflict_engine_exception") => {
            ItemOutcome::Superseded
        }
        (429, _) | (500..=599, _) | (408, _) => ItemOutcome::Retry(describe()),
        _ => ItemOutcome::Permanent(describe()),
    }
}

#[derive(Deserialize)]
struct BulkResponse<'a> {
    #[serde(borrow)]
    items: Vec<BulkItem<'a>>,
}

/// `{"index": {...}}`, `{"delete": {...}}` (or `create`/`update`, which we never send).
#[derive(Deserialize)]
struct BulkItem<'a> {
    #[serde(borrow)]
    index: Option<ItemResult<'a>>,
    #[serde(borrow)]
    delete: Option<ItemResult<'a>>,
    #[serde(borrow)]
    create: Option<ItemResult<'a>>,
    #[serde(borrow)]
    update: Option<ItemResult<'a>>,
}

#[derive(Deserialize)]
struct ItemResult<'a> {
    status: Option<u16>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ItemError<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    reason: Option<Cow<'a, str>>,
    caused_by: Option<Box<ItemError<'a>>>,
}

/// How many `caused_by` levels a reason keeps.
const MAX_CAUSES: usize = 4;

/// Maps a `_bulk` response to one outcome per action of the body, by position. Items without a
/// status, a response with the wrong number of items, or one that does not parse make the
/// affected actions retryable: an outcome is never guessed.
pub fn outcomes(response: &[u8], actions: &[Action]) -> Vec<ItemOutcome> {
    let parsed: BulkResponse = match serde_json::from_slice(response) {
        Ok(p) => p,
        Err(e) => {
            return vec![
                ItemOutcome::Retry(format!("unreadable bulk response: {e}"));
                actions.len()
            ];
        }
    };
    if parsed.items.len() != actions.len() {
        let reason = format!(
            "bulk response has {} items for {} actions",
            parsed.items.len(),
            actions.len()
        );
        return vec![ItemOutcome::Retry(reason); actions.len()];
    }
    parsed
        .items
        .iter()
        .zip(actions)
        .map(|(item, &action)| {
            let Some(result) = item
                .index
                .as_ref()
                .or(item.delete.as_ref())
                .or(item.create.as_ref())
                .or(item.update.as_ref())
            else {
                return ItemOutcome::Retry("bulk item has no action result".into());
            };
            let mut causes = Vec::new();
            let error = result.error.map(|raw| {
                serde_json::from_str::<ItemError>(raw.get())
                    .map(|e| {
                        let mut cause = e.caused_by.as_deref();
                        while let Some(c) = cause
                            && causes.len() < MAX_CAUSES
                        {
                            causes.push((
                                c.kind.as_deref().map(str::to_string),
                                c.reason.as_deref().map(str::to_string),
                            ));
                            cause = c.caused_by.as_deref();
                        }
                        (e.kind.map(Cow::into_owned), e.reason.map(Cow::into_owned))
                    })
                    .unwrap_or_else(|_| (None, Some(raw.get().to_string())))
            });
            let (kind, reason) = error.unwrap_or((None, None));
            classify(
                action,
                result.status,
                kind.as_deref(),
                reason.as_deref(),
                &causes,
            )
        })
        .collect()
}

/// What a mapping refusal means for the item: the attribute the index names, what it is in the
/// document that was refused, and what the index maps it as. OpenSearch names the field and at
/// most one of the two kinds (`failed to parse field [price] of type [keyword]` for a map where
/// strings were, `object mapping for [dims] ... found a concrete value` for the reverse); the
/// quarantine entry then says both, in DynamoDB's terms: `; NewImage: price: a map (M) in this
/// item, mapped as keyword in the index`. `None` for other refusals, or when the document has
/// no such attribute.
pub fn explain_refusal(reason: &str, document: &[u8]) -> Option<String> {
    let (path, mapped) = refused_field(reason)?;
    let doc: serde_json::Value = serde_json::from_slice(document).ok()?;
    let value = lookup(&doc, &path)?;
    Some(format!(
        "; NewImage: {path}: {} in this item, mapped as {mapped} in the index",
        kind_of(value)
    ))
}

/// The field a mapping refusal names, and what the index maps it as.
fn refused_field(reason: &str) -> Option<(String, String)> {
    let between = |text: &str, start: &str, end: &str| -> Option<String> {
        let from = text.find(start)? + start.len();
        let len = text[from..].find(end)?;
        Some(text[from..from + len].to_string())
    };
    if let Some(field) = between(reason, "failed to parse field [", "]") {
        let mapped = between(reason, &format!("field [{field}] of type ["), "]")?;
        return Some((field, mapped));
    }
    if let Some(field) = between(reason, "object mapping for [", "]")
        && reason.contains("but found a concrete value")
    {
        return Some((field, "an object (a map)".into()));
    }
    if let Some(field) = between(reason, "can't merge a non object mapping [", "]") {
        return Some((field, "a scalar".into()));
    }
    if let Some(field) = between(reason, "mapper [", "] cannot be changed from type [") {
        let mapped = between(reason, "cannot be changed from type [", "]")?;
        return Some((field, mapped));
    }
    None
}

/// The value at a dotted field path of a document. An attribute name may hold dots itself, so
/// at each level the longest name that matches is taken; inside a list, the first element that
/// has the name.
fn lookup<'v>(value: &'v serde_json::Value, path: &str) -> Option<&'v serde_json::Value> {
    if path.is_empty() {
        return Some(value);
    }
    match value {
        serde_json::Value::Object(map) => {
            let mut ends: Vec<usize> = path.match_indices('.').map(|(i, _)| i).collect();
            ends.push(path.len());
            ends.into_iter().rev().find_map(|end| {
                let found = map.get(&path[..end])?;
                lookup(found, path.get(end + 1..).unwrap_or(""))
            })
        }
        serde_json::Value::Array(items) => items.iter().find_map(|v| lookup(v, path)),
        _ => None,
    }
}

/// A document value's kind, as the DynamoDB types it comes from.
fn kind_of(value: &serde_json::Value) -> &'static str {
    use serde_json::Value::*;
    match value {
        Object(_) => "a map (M)",
        Array(items) => {
            let maps = items.iter().filter(|v| v.is_object()).count();
            match maps {
                0 => "a list or set of scalars (L, SS, NS or BS)",
                n if n == items.len() => "a list of maps (L)",
                _ => "a list mixing maps and scalars (L)",
            }
        }
        String(_) => "a string (S or B)",
        Number(_) => "a number (N)",
        Bool(_) => "a boolean (BOOL)",
        Null => "NULL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(lines: &str) -> Change {
        Change {
            index: "t".into(),
            id: "x".into(),
            action: Action::Index,
            version: None,
            ttl: false,
            lines: lines.as_bytes().to_vec().into(),
            record: 0,
        }
    }

    #[test]
    fn packs_up_to_exactly_the_byte_limit() {
        // Each change is 11 bytes including its newlines.
        let changes: Vec<Change> = (0..5).map(|_| change("{\"a\":1}\n{}\n")).collect();
        assert_eq!(changes[0].lines.len(), 11);
        let all: Vec<usize> = (0..5).collect();
        let bodies = pack(&changes, &all, 22, 100);
        assert_eq!(
            bodies.iter().map(|b| b.bytes.len()).collect::<Vec<_>>(),
            vec![22, 22, 11]
        );
        assert_eq!(bodies[0].changes, vec![0, 1]);
        let bodies = pack(&changes, &all, 21, 100);
        assert_eq!(bodies.len(), 5, "one byte under two actions must split");
        let bodies = pack(&changes, &all, 1000, 2);
        assert_eq!(
            bodies.iter().map(|b| b.changes.len()).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
    }

    #[test]
    fn handles_partial_error_response_by_position() {
        let response = br#"{"took":3,"errors":true,"items":[
            {"index":{"_index":"t","_id":"a","_version":5,"result":"created","status":201}},
            {"index":{"_index":"t","_id":"b","status":429,"error":{"type":"es_rejected_execution_exception","reason":"rejected execution of coordinating operation"}}},
            {"index":{"_index":"t","_id":"c","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse field [n] of type [double]"}}},
            {"delete":{"_index":"t","_id":"d","status":404,"result":"not_found"}},
            {"index":{"_index":"t","_id":"e","status":409,"error":{"type":"version_conflict_engine_exception","reason":"[e]: version conflict, current version [9] is higher than or equal to the one provided [8]"}}},
            {"index":{"_index":"t","_id":"f","status":503,"error":{"type":"unavailable_shards_exception","reason":"primary shard is not active"}}},
            {"delete":{"_index":"t","_id":"g","status":200,"result":"deleted"}},
            {"index":{"_index":"t","_id":"h","status":400,"error":{"type":"illegal_argument_exception","reason":"mapper [x] cannot be changed from type [long] to [float]"}}},
            {"index":{"_index":"t","_id":"i","status":403,"error":{"type":"cluster_block_exception","reason":"index [t] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark]"}}}
        ]}"#;
        use Action::*;
        let got = outcomes(
            response,
            &[
                Index, Index, Index, Delete, Index, Index, Delete, Index, Index,
            ],
        );
        assert_eq!(got[0], ItemOutcome::Indexed);
        assert!(
            matches!(&got[1], ItemOutcome::Retry(r) if r.contains("es_rejected_execution_exception"))
        );
        assert_eq!(
            got[2],
            ItemOutcome::Permanent(
                "400 mapper_parsing_exception: failed to parse field [n] of type [double]".into()
            )
        );
        assert_eq!(got[3], ItemOutcome::Deleted);
        assert_eq!(got[4], ItemOutcome::Superseded);
        assert!(got[5].is_retry());
        assert_eq!(got[6], ItemOutcome::Deleted);
        assert!(matches!(&got[7], ItemOutcome::Permanent(r) if r.contains("cannot be changed")));
        assert!(
            got[8].is_retry(),
            "flood-stage block is retryable: {:?}",
            got[8]
        );
    }

    #[test]
    fn outcomes_keep_the_whole_reason_and_logs_get_it_without_values() {
        let got = classify(
            Action::Index,
            Some(400),
            Some("mapper_parsing_exception"),
            Some(
                "failed to parse field [n] of type [double] in document with id 'b'. Preview of field's value: 'secret'",
            ),
            &[],
        );
        let whole = "400 mapper_parsing_exception: failed to parse field [n] of type [double] in document with id 'b'. Preview of field's value: 'secret'";
        assert_eq!(got, ItemOutcome::Permanent(whole.into()));
        assert_eq!(
            crate::redact::reason(whole),
            "400 mapper_parsing_exception: failed to parse field [n] of type [double] in document with id '…'. Preview of field's value: '…'"
        );
    }

    #[test]
    fn a_refusal_keeps_its_root_cause_from_the_caused_by_chain() {
        let response = br#"{"errors":true,"items":[{"index":{"_id":"a","status":400,"error":{"type":"mapper_parsing_exception","reason":"failed to parse","caused_by":{"type":"illegal_argument_exception","reason":"Limit of mapping depth [20] has been exceeded due to object field [a.a.a]","caused_by":{"type":"x_exception","reason":"root"}}}}}]}"#;
        let got = outcomes(response, &[Action::Index]);
        assert_eq!(
            got[0],
            ItemOutcome::Permanent(
                "400 mapper_parsing_exception: failed to parse; caused by illegal_argument_exception: Limit of mapping depth [20] has been exceeded due to object field [a.a.a]; caused by x_exception: root".into()
            )
        );
    }

    #[test]
    fn a_missing_status_or_item_count_mismatch_is_retryable_never_misaligned() {
        let response = br#"{"errors":true,"items":[{"index":{"_id":"a"}},{"index":{"_id":"b","status":201}}]}"#;
        let got = outcomes(response, &[Action::Index, Action::Index]);
        assert!(got[0].is_retry());
        assert_eq!(got[1], ItemOutcome::Indexed);
        let response = br#"{"errors":false,"items":[{"index":{"_id":"a","status":201}}]}"#;
        let got = outcomes(response, &[Action::Index, Action::Index]);
        assert!(got.iter().all(ItemOutcome::is_retry), "{got:?}");
        let got = outcomes(b"<html>Bad gateway</html>", &[Action::Delete]);
        assert!(got[0].is_retry());
    }

    /// Mapping refusals, as OpenSearch words them, gain what the attribute is in the item and
    /// what the index maps it as; other refusals and absent attributes gain nothing.
    #[test]
    fn a_mapping_refusal_says_what_the_attribute_is_and_how_it_is_mapped() {
        let doc =
            br#"{"pk":"a","price":{"amount":3},"dims":"XL","tags":["x",{"k":1}],"a.b":{"c":true}}"#;
        let cases = [
            (
                "400 mapper_parsing_exception: failed to parse field [price] of type [keyword] in document with id 'a'. Preview of field's value: '{amount=3}'",
                Some("; NewImage: price: a map (M) in this item, mapped as keyword in the index"),
            ),
            (
                "400 mapper_parsing_exception: object mapping for [dims] tried to parse field [dims] as object, but found a concrete value",
                Some(
                    "; NewImage: dims: a string (S or B) in this item, mapped as an object (a map) in the index",
                ),
            ),
            (
                "400 illegal_argument_exception: can't merge a non object mapping [tags] with an object mapping",
                Some(
                    "; NewImage: tags: a list mixing maps and scalars (L) in this item, mapped as a scalar in the index",
                ),
            ),
            (
                "400 illegal_argument_exception: mapper [a.b.c] cannot be changed from type [double] to [boolean]",
                Some(
                    "; NewImage: a.b.c: a boolean (BOOL) in this item, mapped as double in the index",
                ),
            ),
            (
                "400 mapper_parsing_exception: failed to parse field [gone] of type [keyword]",
                None,
            ),
            (
                "400 strict_dynamic_mapping_exception: mapping set to strict",
                None,
            ),
        ];
        for (reason, want) in cases {
            assert_eq!(explain_refusal(reason, doc).as_deref(), want, "{reason}");
        }
    }
}
