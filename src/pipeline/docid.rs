//! Document ids from an item's key attributes.
//!
//! The id is a function of the key alone, so every change to an item (and the backfill's copy
//! of it) addresses the same document. Rules:
//! - key attributes are taken in attribute-name order (a stream record's `Keys` map carries no
//!   hash/range roles and JSON maps have no order, but a table's key names never change);
//! - each component is the key value as text: `S` as is, `N` in canonical decimal text (so `1`
//!   and `1.0`, one DynamoDB key, give one id), `B` as base64;
//! - components are escaped (`\` → `\\`, `|` → `\|`) and joined with `|`, so no two different
//!   keys of one table can give the same id, whatever their values contain;
//! - an id longer than OpenSearch's 512-byte limit becomes `\#` + the SHA-256 of the full id in
//!   hex. Escaped ids never contain `\#`, so a hashed id cannot equal an unhashed one. The full
//!   id is then kept in the document under [`RAW_KEY_FIELD`].

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use sha2::{Digest, Sha256};

use crate::pipeline::convert::{AttributeKind, Decimal, strip_position};

/// OpenSearch rejects `_id`s longer than this many bytes.
pub const MAX_ID_BYTES: usize = 512;

/// Document field holding the full key text when the `_id` had to be hashed.
pub const RAW_KEY_FIELD: &str = "dynamodb_raw_key";

/// A document id, and whether it is the hashed form of a longer one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocId {
    pub id: String,
    /// The full, unhashed id when `id` is a hash.
    pub raw: Option<String>,
}

/// Why a `Keys` map could not be turned into an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// One key attribute: its name, type and component text (canonical for `N`), borrowed from
/// the `Keys` text where they stand in it as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyPart<'a> {
    pub name: Cow<'a, str>,
    pub kind: AttributeKind,
    pub text: Cow<'a, str>,
}

/// A key's parts: one or two (a table key's), inline.
pub type KeyParts<'a> = smallvec::SmallVec<[KeyPart<'a>; 2]>;

/// [`key_parts`]'s reading of the `Keys` streams send, before sorting, without serde (whose
/// map and enum visitors cost more than the rest of a record's planning): one or two members,
/// each `{"S":"text"}` or `{"N":"integer"}` spelt exactly so (a non-empty text, an integer in
/// canonical form), names and texts without escapes or control characters, distinct names.
/// `None` for anything else, which the serde reading then judges, errors and all; what this
/// accepts, that reading accepts with the same parts (`the_plain_reading_agrees_with_serde`).
fn plain_key_parts(keys: &str) -> Option<KeyParts<'_>> {
    use crate::pipeline::scan::{skip_ws, string_end_strict};
    let b = keys.as_bytes();
    // The text between the quotes of the string at `i`, if it has no escapes; and its end.
    let plain = |i: usize| -> Option<(&str, usize)> {
        (b.get(i) == Some(&b'"')).then_some(())?;
        let (end, escaped) = string_end_strict(b, i)?;
        (!escaped).then(|| (&keys[i + 1..end], end + 1))
    };
    let mut parts = KeyParts::new();
    let mut i = skip_ws(b, 0);
    (b.get(i) == Some(&b'{')).then_some(())?;
    loop {
        let (name, end) = plain(skip_ws(b, i + 1))?;
        i = skip_ws(b, end);
        (b.get(i) == Some(&b':')).then_some(())?;
        i = skip_ws(b, i + 1);
        let kind = match b.get(i..i + 5)? {
            b"{\"S\":" => AttributeKind::S,
            b"{\"N\":" => AttributeKind::N,
            _ => return None,
        };
        let (text, end) = plain(i + 5)?;
        let fits = match kind {
            AttributeKind::N => Decimal::is_canonical_integer(text),
            _ => !text.is_empty(),
        };
        let fresh = parts.len() < 2 && parts.iter().all(|p| p.name != name);
        (fits && fresh && b.get(end) == Some(&b'}')).then_some(())?;
        parts.push(KeyPart {
            name: Cow::Borrowed(name),
            kind,
            text: Cow::Borrowed(text),
        });
        i = skip_ws(b, end + 1);
        match b.get(i)? {
            b',' => {}
            b'}' => return (skip_ws(b, i + 1) == b.len()).then_some(parts),
            _ => return None,
        }
    }
}

/// Builds the id from a `Keys` map in DynamoDB JSON (`{"pk":{"S":"a"},"sk":{"N":"1"}}`).
pub fn doc_id(keys_json: &str) -> Result<DocId, KeyError> {
    key_parts(keys_json).map(|parts| doc_id_of(&parts))
}

/// Reads a `Keys` map: one or two attributes of type S, N or B, each named once.
pub fn key_parts(keys_json: &str) -> Result<KeyParts<'_>, KeyError> {
    let mut parts = match plain_key_parts(keys_json) {
        Some(parts) => parts,
        None => {
            let keys: KeyMap = serde_json::from_str(keys_json).map_err(|e| {
                let msg = e.to_string();
                KeyError(strip_position(&msg).to_string())
            })?;
            keys.0
        }
    };
    if parts.is_empty() {
        return Err(KeyError("Keys is empty".into()));
    }
    if parts.len() > 2 {
        return Err(KeyError(format!(
            "Keys has {} attributes; a table key has one or two",
            parts.len()
        )));
    }
    parts.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(parts)
}

/// The id of key parts in attribute-name order (as [`key_parts`] returns them).
pub fn doc_id_of(parts: &[KeyPart<'_>]) -> DocId {
    let mut id = String::with_capacity(parts.iter().map(|p| p.text.len() + 1).sum());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            id.push('|');
        }
        let text: &str = &part.text;
        if !text.contains(['\\', '|']) {
            id.push_str(text);
            continue;
        }
        for c in text.chars() {
            if c == '\\' || c == '|' {
                id.push('\\');
            }
            id.push(c);
        }
    }
    finish(id)
}

/// The key texts an id was made from, in attribute-name order: the inverse of [`doc_id_of`].
/// A hashed id needs the full id (`raw`, from the document's [`RAW_KEY_FIELD`]) and must be its
/// hash. `None` when no key of `parts` components can give this id.
pub fn key_texts(id: &str, raw: Option<&str>, parts: usize) -> Option<Vec<String>> {
    let full = if id.starts_with("\\#") {
        let raw = raw?;
        (finish(raw.to_string()).id == id).then_some(raw)?
    } else {
        (id.len() <= MAX_ID_BYTES).then_some(id)?
    };
    let mut texts = vec![String::new()];
    let mut chars = full.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('\\' | '|')) => texts.last_mut()?.push(e),
                _ => return None,
            },
            '|' => texts.push(String::new()),
            c => texts.last_mut()?.push(c),
        }
    }
    (texts.len() == parts).then_some(texts)
}

fn finish(id: String) -> DocId {
    if id.len() <= MAX_ID_BYTES {
        return DocId { id, raw: None };
    }
    let digest = Sha256::digest(id.as_bytes());
    let mut hashed = String::with_capacity(2 + 64);
    hashed.push_str("\\#");
    for b in digest {
        hashed.push_str(&format!("{b:02x}"));
    }
    DocId {
        id: hashed,
        raw: Some(id),
    }
}

/// The key attributes in the order read.
struct KeyMap<'a>(KeyParts<'a>);

impl<'de> Deserialize<'de> for KeyMap<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(KeyMapVisitor)
    }
}

struct KeyMapVisitor;

impl<'de> Visitor<'de> for KeyMapVisitor {
    type Value = KeyMap<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of key attribute name to S, N or B value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KeyMap<'de>, A::Error> {
        let mut parts = KeyParts::new();
        loop {
            let name = match map.next_key::<crate::pipeline::convert::CowStr<'de>>() {
                Ok(Some(name)) => name,
                Ok(None) => break,
                Err(e) => {
                    return Err(de::Error::custom(format!(
                        "name of key attribute {}: {}",
                        parts.len() + 1,
                        strip_position(&e.to_string())
                    )));
                }
            };
            if parts.iter().any(|p| p.name == *name) {
                return Err(de::Error::custom(format!(
                    "key attribute {name} appears more than once"
                )));
            }
            let value: KeyValue<'de> = map.next_value().map_err(|e| {
                de::Error::custom(format!(
                    "key attribute {name}: {}",
                    strip_position(&e.to_string())
                ))
            })?;
            let kind = match &value {
                KeyValue::S(_) => AttributeKind::S,
                KeyValue::N(_) => AttributeKind::N,
                KeyValue::B(_) => AttributeKind::B,
            };
            let text = match value {
                KeyValue::S(s) if s.is_empty() => {
                    return Err(de::Error::custom(format!(
                        "key attribute {name} is an empty string"
                    )));
                }
                KeyValue::S(s) => s,
                KeyValue::N(n) if Decimal::is_canonical_integer(&n) => n,
                KeyValue::N(n) => {
                    let d = Decimal::parse(&n).ok_or_else(|| {
                        de::Error::custom(format!(
                            "key attribute {name}: invalid number text {n:?}"
                        ))
                    })?;
                    d.check_range()
                        .map_err(|e| de::Error::custom(format!("key attribute {name}: {e}")))?;
                    Cow::Owned(d.canonical_text())
                }
                KeyValue::B(b) => {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD
                        .decode(&*b)
                        .map_err(|e| {
                            de::Error::custom(format!("key attribute {name}: invalid base64 ({e})"))
                        })?;
                    b
                }
            };
            parts.push(KeyPart {
                name: name.0,
                kind,
                text,
            });
        }
        Ok(KeyMap(parts))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
enum KeyValue<'a> {
    S(#[serde(borrow)] Cow<'a, str>),
    N(#[serde(borrow)] Cow<'a, str>),
    B(#[serde(borrow)] Cow<'a, str>),
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 2048,
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]
        /// The plain reading reads exactly the maps of one or two distinct plain members, and
        /// reads from them what serde reads; everything else it leaves to serde: names and
        /// values with escapes or control characters, duplicates, numbers in other forms,
        /// binaries, values spelt another way, trailing text.
        #[test]
        fn the_plain_reading_agrees_with_serde(
            members in proptest::collection::vec((
                proptest::sample::select(vec![
                    (r#""pk""#, true), (r#""sk""#, true), (r#""é""#, true), (r#""""#, true),
                    (r#""p\u006b""#, false), ("\"a\u{1}\"", false),
                ]),
                proptest::sample::select(vec![
                    (r#"{"S":"a"}"#, true), (r#"{"N":"12"}"#, true), (r#"{"N":"-7"}"#, true),
                    (r#"{"S":""}"#, false), (r#"{"S":"a\"b"}"#, false), (r#"{"S":"x|y\\z"}"#, false),
                    ("{\"S\":\"a\tb\"}", false), (r#"{"S":"a","N":"1"}"#, false),
                    (r#"{"S":1}"#, false), (r#"{ "S" : "a" }"#, false), (r#"{"N":"0"}"#, false),
                    (r#"{"N":"1.50"}"#, false), (r#"{"N":"007"}"#, false), (r#"{"N":"1E+3"}"#, false),
                    (r#"{"N":"x"}"#, false), (r#"{"B":"AA=="}"#, false), (r#"{"X":"a"}"#, false),
                ]),
            ), 0..4),
            spacing in proptest::sample::select(vec!["", " ", "\n\t"]),
            (tail, tail_plain) in proptest::sample::select(vec![("", true), (" ", true), (" x", false), ("}", false)]),
        ) {
            let text: Vec<String> =
                members.iter().map(|((n, _), (v, _))| format!("{n}:{spacing}{v}")).collect();
            let keys = format!("{spacing}{{{}}}{tail}", text.join(","));
            let mut names: Vec<&str> = members.iter().map(|((n, _), _)| *n).collect();
            names.sort_unstable();
            names.dedup();
            let plain = tail_plain
                && (1..=2).contains(&members.len())
                && names.len() == members.len()
                && members.iter().all(|((_, n), (_, v))| *n && *v);
            let read = plain_key_parts(&keys);
            proptest::prop_assert_eq!(read.is_some(), plain, "{}", keys);
            if let Some(parts) = read {
                let serde = serde_json::from_str::<KeyMap>(&keys).map(|k| k.0);
                proptest::prop_assert_eq!(Ok(parts), serde.map_err(|e| e.to_string()), "{}", keys);
            }
        }
    }

    #[test]
    fn keys_as_streams_send_them_are_read_without_serde() {
        let keys = r#"{"sk":{"N":"42"},"pk":{"S":"customer#1"}}"#;
        let parts = plain_key_parts(keys).expect("the plain form");
        assert_eq!(parts, serde_json::from_str::<KeyMap>(keys).unwrap().0);
        assert_eq!(key_parts(keys).unwrap()[0].name, "pk");
    }

    #[test]
    fn an_id_gives_back_its_key_texts_and_a_foreign_id_none() {
        fn parts(keys: &str) -> KeyParts<'_> {
            key_parts(keys).unwrap()
        }
        for keys in [
            r#"{"pk":{"S":"a|b\\c"},"sk":{"N":"1E+3"}}"#,
            r#"{"pk":{"S":"\\\\"},"sk":{"S":"|"}}"#,
            r#"{"pk":{"B":"AAE="}}"#,
        ] {
            let p = parts(keys);
            let d = doc_id_of(&p);
            let texts: Vec<String> = p.iter().map(|k| k.text.to_string()).collect();
            assert_eq!(key_texts(&d.id, None, p.len()), Some(texts), "{keys}");
        }
        let long = format!(
            r#"{{"pk":{{"S":"{}"}},"sk":{{"S":"x|y"}}}}"#,
            "z".repeat(600)
        );
        let d = doc_id_of(&parts(&long));
        let raw = d.raw.as_deref();
        assert_eq!(key_texts(&d.id, raw, 2).unwrap()[1], "x|y");
        // A hashed id needs its full text, and the text must hash to it.
        assert_eq!(key_texts(&d.id, None, 2), None);
        assert_eq!(key_texts(&d.id, Some("zz|x"), 2), None);
        // Wrong number of parts, a dangling or unknown escape.
        assert_eq!(key_texts("a|b", None, 1), None);
        assert_eq!(key_texts("a\\", None, 1), None);
        assert_eq!(key_texts("a\\x", None, 1), None);
    }

    fn id(keys: &str) -> String {
        doc_id(keys).unwrap().id
    }

    #[test]
    fn hash_key_alone_is_its_value() {
        assert_eq!(id(r#"{"pk":{"S":"user#1"}}"#), "user#1");
        assert_eq!(id(r#"{"pk":{"N":"42"}}"#), "42");
        assert_eq!(id(r#"{"pk":{"B":"AAE="}}"#), "AAE=");
    }

    #[test]
    fn composite_keys_are_ordered_by_attribute_name_whatever_the_json_order() {
        assert_eq!(id(r#"{"sk":{"N":"7"},"pk":{"S":"a"}}"#), "a|7");
        assert_eq!(id(r#"{"pk":{"S":"a"},"sk":{"N":"7"}}"#), "a|7");
    }

    #[test]
    fn separators_inside_values_cannot_collide() {
        let a = id(r#"{"pk":{"S":"a|b"},"sk":{"S":"c"}}"#);
        let b = id(r#"{"pk":{"S":"a"},"sk":{"S":"b|c"}}"#);
        assert_ne!(a, b);
        let c = id(r#"{"pk":{"S":"a\\"},"sk":{"S":"|c"}}"#);
        let d = id(r#"{"pk":{"S":"a"},"sk":{"S":"\\|c"}}"#);
        assert_ne!(c, d);
        assert_ne!(a, c);
        assert_eq!(a, r"a\|b|c");
    }

    #[test]
    fn equal_numbers_give_one_id_and_different_numbers_different_ids() {
        assert_eq!(id(r#"{"pk":{"N":"1.0"}}"#), id(r#"{"pk":{"N":"1"}}"#));
        assert_ne!(id(r#"{"pk":{"N":"1E+1"}}"#), id(r#"{"pk":{"N":"1"}}"#));
        assert_ne!(id(r#"{"pk":{"N":"-1"}}"#), id(r#"{"pk":{"N":"1"}}"#));
        assert_ne!(
            id(r#"{"pk":{"N":"12345678901234567890123456789012345678"}}"#),
            id(r#"{"pk":{"N":"12345678901234567890123456789012345679"}}"#)
        );
    }

    #[test]
    fn long_ids_become_stable_hashes_that_cannot_equal_a_plain_id() {
        let long = "x".repeat(600);
        let keys = format!(r#"{{"pk":{{"S":"{long}"}}}}"#);
        let a = doc_id(&keys).unwrap();
        assert_eq!(a, doc_id(&keys).unwrap());
        assert!(a.id.starts_with("\\#") && a.id.len() == 66, "{}", a.id);
        assert_eq!(a.raw.as_deref(), Some(long.as_str()));
        // A literal key that looks like the hash is escaped, so it stays distinct.
        let literal = format!(r#"{{"pk":{{"S":"{}"}}}}"#, a.id.replace('\\', "\\\\"));
        assert_ne!(doc_id(&literal).unwrap().id, a.id);
        // Exactly 512 bytes stays plain.
        let edge = "y".repeat(512);
        assert_eq!(id(&format!(r#"{{"pk":{{"S":"{edge}"}}}}"#)), edge);
    }

    #[test]
    fn rejects_bad_keys_with_a_reason() {
        assert!(doc_id("{}").unwrap_err().0.contains("empty"));
        assert!(doc_id(r#"{"pk":{"BOOL":true}}"#).is_err());
        assert!(
            doc_id(r#"{"pk":{"N":"x1"}}"#)
                .unwrap_err()
                .0
                .contains("invalid number")
        );
        assert!(
            doc_id(r#"{"pk":{"B":"!!"}}"#)
                .unwrap_err()
                .0
                .contains("invalid base64")
        );
    }
}
