//! DynamoDB JSON (an item image) → OpenSearch document JSON, written straight into a buffer.
//!
//! Why by hand: `serde_dynamo` into `serde_json::Value` rounds every `N` through i64/u64/f64
//! ("123456789012345678901234567890" becomes 1.2345678901234568e29) and fails the whole item on
//! `B`/`BS` ("invalid type: byte array"). It also builds a tree per record, which costs more
//! than the rest of the pipeline together. This walk is a serde `DeserializeSeed` that writes
//! the document while the image is being parsed: strings are copied as the already-escaped JSON
//! tokens they arrive as, numbers are emitted as their exact decimal text, binaries stay base64.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::pipeline::projection::Filter;

mod fast;

pub(crate) use fast::transcode_prefix;

/// Converts one item image (a JSON object of attribute name → typed attribute value) into a
/// document appended to `out`. On error `out` may hold a partial document; callers truncate.
pub fn write_document(image: &str, out: &mut Vec<u8>) -> Result<(), ConvertError> {
    write_document_capturing(image, out, &[]).map(|_| ())
}

/// A top-level attribute found while converting: its DynamoDB type and the range of the output
/// holding its JSON text (a number's exact text, a string token, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub kind: AttributeKind,
    pub span: std::ops::Range<usize>,
}

/// What a conversion captured, one entry per name asked for (`None`: absent). Inline up to
/// three names: a key's one or two and the field of a hashed key's full text, the default
/// configuration's (more spill to the heap). Eight were slower than three: a record's
/// captures are moved several times on their way to its changes, and a larger inline array
/// made each move a `memcpy` call.
pub type Captures = smallvec::SmallVec<[Option<Captured>; 3]>;

/// The DynamoDB type of an attribute value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttributeKind {
    S,
    N,
    B,
    Other,
}

/// Like [`write_document`], and also finds the top-level attributes named in `names` (the key
/// attributes, the version attribute): one entry per name, `None` when the image lacks it.
pub fn write_document_capturing(
    image: &str,
    out: &mut Vec<u8>,
    names: &[&str],
) -> Result<Captures, ConvertError> {
    write_document_projected(image, out, names, Filter::All)
}

/// Like [`write_document_capturing`], writing only the attributes `filter` keeps; the
/// attributes in `names` are always kept. The image need not have been validated: the
/// byte-level fast path is strict, and anything it does not cover is converted (or refused,
/// with the attribute path) by the serde walk.
pub fn write_document_projected(
    image: &str,
    out: &mut Vec<u8>,
    names: &[&str],
    filter: Filter<'_>,
) -> Result<Captures, ConvertError> {
    let mark = out.len();
    if let Some(captured) = fast::transcode(image, out, names, filter) {
        return Ok(captured);
    }
    out.truncate(mark);
    walk(image, out, names, filter)
}

/// The definition of conversion: a serde `DeserializeSeed` walk over the image, checking every
/// rule and naming the attribute path of the first error.
fn walk(
    image: &str,
    out: &mut Vec<u8>,
    names: &[&str],
    filter: Filter<'_>,
) -> Result<Captures, ConvertError> {
    let mut de = serde_json::Deserializer::from_str(image);
    let mut sink = Sink {
        out: std::mem::take(out),
        trail: Vec::new(),
        names,
        captured: smallvec::smallvec![None; names.len()],
    };
    let result = ItemSeed {
        sink: &mut sink,
        top: true,
        filter,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    *out = sink.out;
    let captured = sink.captured;
    result.map(|()| captured).map_err(|e| {
        let reason = strip_position(&e.to_string()).to_string();
        if sink.trail.is_empty() {
            return ConvertError(reason);
        }
        let mut path = String::new();
        for seg in sink.trail.iter().rev() {
            if !path.is_empty() && !seg.starts_with('[') {
                path.push('.');
            }
            path.push_str(seg);
        }
        ConvertError(format!("{path}: {reason}"))
    })
}

/// The output buffer, and on error the attribute path from the failing value outwards
/// (collected while the error unwinds, so the happy path pays nothing for it).
struct Sink<'v> {
    out: Vec<u8>,
    trail: Vec<String>,
    names: &'v [&'v str],
    captured: Captures,
}

/// Why an image could not be converted, naming the attribute path (e.g. `a.b[2]: ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConvertError(pub String);

/// serde_json appends " at line L column C" to errors; the attribute path says more to a user
/// and the column of a minified event line says nothing.
pub(crate) fn strip_position(msg: &str) -> &str {
    msg.rfind(" at line ").map_or(msg, |i| &msg[..i])
}

/// The JSON text of a DynamoDB number, exact. DynamoDB sends normalised text that is already a
/// JSON number; anything else that is still a decimal number (`+5`, `.5`, `5.`, `007`) is
/// rewritten to the same value in JSON grammar, and anything that is not a number is an error.
pub fn number_json(text: &str) -> Result<Cow<'_, str>, String> {
    if is_json_number(text) {
        check_range(text)?;
        return Ok(Cow::Borrowed(text));
    }
    let parsed = Decimal::parse(text).ok_or_else(|| format!("invalid number text {text:?}"))?;
    parsed.check_range()?;
    // The canonical text is JSON number grammar by construction.
    Ok(Cow::Owned(parsed.canonical_text()))
}

/// DynamoDB numbers: at most 38 significant digits, magnitude from 1E-130 to below 1E+126
/// (`9.9999999999999999999999999999999999999E+125`), or zero.
pub const MAX_SIGNIFICANT_DIGITS: usize = 38;
pub const MIN_ADJUSTED_EXPONENT: i64 = -130;
pub const MAX_ADJUSTED_EXPONENT: i64 = 125;

/// A number DynamoDB cannot hold is not an item value: sending it would fail (or, worse, crash a
/// request) at the cluster, so it is refused here, naming the rule but not the value.
fn range_error(significant: usize, adjusted: i64) -> Result<(), String> {
    if significant > MAX_SIGNIFICANT_DIGITS {
        return Err(format!(
            "number has {significant} significant digits; DynamoDB allows at most {MAX_SIGNIFICANT_DIGITS}"
        ));
    }
    if !(MIN_ADJUSTED_EXPONENT..=MAX_ADJUSTED_EXPONENT).contains(&adjusted) {
        return Err(format!(
            "number of magnitude 1E{adjusted} is outside DynamoDB's range (1E-130 to 9.99…E+125)"
        ));
    }
    Ok(())
}

/// [`range_error`] for text already in JSON number grammar, without allocating.
fn check_range(text: &str) -> Result<(), String> {
    let b = text.strip_prefix('-').unwrap_or(text).as_bytes();
    let mantissa_end = b
        .iter()
        .position(|&c| c == b'e' || c == b'E')
        .unwrap_or(b.len());
    let exponent: i64 = if mantissa_end < b.len() {
        let e = &text[text.len() - (b.len() - mantissa_end - 1)..];
        let e = e.strip_prefix('+').unwrap_or(e);
        match e.parse::<i64>() {
            Ok(v) => v,
            // More exponent digits than an i64 holds: far outside the range either way.
            Err(_) => {
                return range_error(
                    1,
                    if e.starts_with('-') {
                        i64::MIN
                    } else {
                        i64::MAX
                    },
                );
            }
        }
    } else {
        0
    };
    let mantissa = &b[..mantissa_end];
    let point = mantissa
        .iter()
        .position(|&c| c == b'.')
        .unwrap_or(mantissa.len());
    let digits = mantissa
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_ascii_digit());
    let mut first: Option<usize> = None;
    let mut last = 0;
    for (i, &c) in digits {
        if c != b'0' {
            first.get_or_insert(i);
            last = i;
        }
    }
    let Some(first) = first else {
        return Ok(()); // zero
    };
    // Digits between first and last, not counting the point.
    let significant = last - first + 1 - usize::from(first < point && last > point);
    let adjusted = if first < point {
        (point - first - 1) as i64
    } else {
        -((first - point) as i64)
    };
    range_error(significant, adjusted.saturating_add(exponent))
}

/// Whether `s` is one JSON number, whole (the grammar is `scan::number_end`'s).
pub(crate) fn is_json_number(s: &str) -> bool {
    crate::pipeline::scan::number_end(s.as_bytes(), 0) == Some(s.len())
}

/// A decimal number as sign, significant digits (no leading or trailing zeros) and a power of
/// ten: value = ±digits × 10^exponent. Two texts of the same value parse to the same `Decimal`,
/// which is what document ids need (`1.0` and `1` are one DynamoDB key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    negative: bool,
    digits: String,
    exponent: i64,
}

impl Decimal {
    /// Whether `text` is an integer already in canonical text, in range: an optional `-`, then
    /// at most [`MAX_SIGNIFICANT_DIGITS`] digits, the first not `0`. Most key numbers are; they
    /// need no parse.
    pub fn is_canonical_integer(text: &str) -> bool {
        let digits = text.strip_prefix('-').unwrap_or(text).as_bytes();
        matches!(digits.first(), Some(b'1'..=b'9'))
            && digits.len() <= MAX_SIGNIFICANT_DIGITS
            && digits.iter().all(u8::is_ascii_digit)
    }

    pub fn parse(text: &str) -> Option<Decimal> {
        let (negative, rest) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => {
                let e = &rest[i + 1..];
                let e = e.strip_prefix('+').unwrap_or(e);
                if e.is_empty()
                    || e.len() > 18
                    || !e
                        .trim_start_matches('-')
                        .bytes()
                        .all(|c| c.is_ascii_digit())
                    || e == "-"
                {
                    return None;
                }
                (&rest[..i], e.parse::<i64>().ok()?)
            }
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit()) {
            return None;
        }
        let all: String = int.chars().chain(frac.chars()).collect();
        let trimmed_lead = all.trim_start_matches('0');
        let digits = trimmed_lead.trim_end_matches('0');
        if digits.is_empty() {
            return Some(Decimal {
                negative: false,
                digits: "0".into(),
                exponent: 0,
            });
        }
        let trailing = (trimmed_lead.len() - digits.len()) as i64;
        let exponent = exp - frac.len() as i64 + trailing;
        Some(Decimal {
            negative,
            digits: digits.to_string(),
            exponent,
        })
    }

    /// The canonical text: plain decimal notation while it stays short, otherwise
    /// `d.dddE±x`. The choice depends only on the value, so equal values give equal text and
    /// different values different text.
    pub fn canonical_text(&self) -> String {
        let mut s = String::new();
        if self.negative {
            s.push('-');
        }
        let n = self.digits.len() as i64;
        let point = n + self.exponent; // digits before the decimal point
        if self.exponent >= 0 && point <= 40 {
            s.push_str(&self.digits);
            s.extend(std::iter::repeat_n('0', self.exponent as usize));
        } else if self.exponent < 0 && point > 0 {
            s.push_str(&self.digits[..point as usize]);
            s.push('.');
            s.push_str(&self.digits[point as usize..]);
        } else if self.exponent < 0 && point > -6 {
            s.push_str("0.");
            s.extend(std::iter::repeat_n('0', (-point) as usize));
            s.push_str(&self.digits);
        } else {
            s.push_str(&self.digits[..1]);
            if n > 1 {
                s.push('.');
                s.push_str(&self.digits[1..]);
            }
            s.push('E');
            s.push_str(&(point - 1).to_string());
        }
        s
    }

    /// Whether DynamoDB can hold this number (see [`MAX_SIGNIFICANT_DIGITS`]).
    pub fn check_range(&self) -> Result<(), String> {
        if self.digits == "0" {
            return Ok(());
        }
        let adjusted = (self.digits.len() as i64).saturating_add(self.exponent) - 1;
        range_error(self.digits.len(), adjusted)
    }

    /// The value as a non-negative integer that fits a Java long, if it is one.
    pub fn as_version(&self) -> Option<u64> {
        if self.negative || self.exponent < 0 {
            return None;
        }
        if self.digits == "0" {
            return Some(0);
        }
        let mut text = self.digits.clone();
        text.extend(std::iter::repeat_n(
            '0',
            usize::try_from(self.exponent).ok()?.min(40),
        ));
        let v: u64 = text.parse().ok()?;
        (v <= i64::MAX as u64).then_some(v)
    }
}

/// A string borrowed from the input when it has no escapes. serde's own `Cow<str>` impl
/// always allocates (it only borrows through `#[serde(borrow)]` on derived fields), which cost
/// one allocation per attribute name and value.
pub struct CowStr<'de>(pub Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CowStr<'de>, E> {
                Ok(CowStr(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

impl fmt::Debug for CowStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for CowStr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for CowStr<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

/// The text of the top-level attributes named in `names` (S: the string; N: its canonical
/// text; another type: present without text), without converting the image: what routing reads
/// from an OldImage. Nothing is converted or written, and the scan stops once every name is
/// found, so this costs a fraction of [`write_document_capturing`]. The image must already be
/// valid JSON (a record's images are, once the record is parsed); its values are not checked.
pub fn find_attributes(
    image: &str,
    names: &[String],
) -> Result<Vec<Option<Option<String>>>, ConvertError> {
    match fast::scan_top_level(image, names) {
        Some(found) => Ok(found),
        None => parse_attributes(image, names),
    }
}

/// [`find_attributes`] by serde: for any image, with an error that says what is wrong.
fn parse_attributes(
    image: &str,
    names: &[String],
) -> Result<Vec<Option<Option<String>>>, ConvertError> {
    struct Finder<'n>(&'n [String]);
    impl<'de> Visitor<'de> for Finder<'_> {
        type Value = Vec<Option<Option<String>>>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an item (attribute name to DynamoDB JSON value)")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = vec![None; self.0.len()];
            while let Some(name) = map.next_key::<CowStr<'de>>()? {
                match self.0.iter().position(|n| *n == *name) {
                    Some(i) => found[i] = Some(map.next_value::<Typed>()?.0),
                    None => {
                        map.next_value::<de::IgnoredAny>()?;
                    }
                }
            }
            Ok(found)
        }
    }
    let mut de = serde_json::Deserializer::from_str(image);
    de.deserialize_map(Finder(names))
        .and_then(|found| de.end().map(|()| found))
        .map_err(|e| ConvertError(strip_position(&e.to_string()).to_string()))
}

/// One attribute value: the text of `{"S": …}` or `{"N": …}`; another type has none.
struct Typed(Option<String>);
impl<'de> serde::Deserialize<'de> for Typed {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Typed;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a DynamoDB JSON attribute value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Typed, A::Error> {
                let mut text = None;
                while let Some(tag) = map.next_key::<CowStr<'de>>()? {
                    match &*tag {
                        "S" => text = Some(map.next_value::<CowStr<'de>>()?.0.into_owned()),
                        "N" => {
                            let n = map.next_value::<CowStr<'de>>()?;
                            text = Decimal::parse(&n).map(|d| d.canonical_text());
                        }
                        _ => {
                            map.next_value::<de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(Typed(text))
            }
        }
        d.deserialize_map(V)
    }
}

fn check_base64(text: &str) -> Result<(), String> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map(|_| ())
        .map_err(|e| format!("invalid base64 ({e})"))
}

/// Writes `s` as a JSON string. Attribute names arrive unescaped from serde, so they are
/// escaped again here; the fast path copies names that need no escaping.
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if !crate::pipeline::scan::needs_escape(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
    }
}

/// Starts member `name` of an object whose closing `}` has been taken off (to add fields to a
/// written document): `"name":`, after a comma unless the object is still empty. The buffer may
/// hold an action line before the document; only the object's own last byte is looked at.
pub fn write_member_name(out: &mut Vec<u8>, name: &str) {
    if out.last() != Some(&b'{') {
        out.push(b',');
    }
    write_json_str(out, name);
    out.push(b':');
}

/// Attribute name → value map (an item image or an `M`).
struct ItemSeed<'o, 'v, 'p> {
    sink: &'o mut Sink<'v>,
    top: bool,
    /// Which of the map's attributes are written.
    filter: Filter<'p>,
}

impl<'de> DeserializeSeed<'de> for ItemSeed<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ItemSeed<'_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of attribute name to DynamoDB attribute value")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.sink.out.push(b'{');
        let mut count = 0usize;
        loop {
            let name = match map.next_key::<CowStr<'de>>() {
                Ok(Some(name)) => name,
                Ok(None) => break,
                Err(e) => {
                    // The name itself is unreadable (a lone surrogate, say): name its position.
                    self.sink
                        .trail
                        .push(format!("<name of attribute {}>", count + 1));
                    return Err(e);
                }
            };
            let captured_at = if self.top {
                self.sink.names.iter().position(|n| *n == &*name)
            } else {
                None
            };
            let filter = match self.filter.child(&name) {
                Some(f) => f,
                // Attributes the pipeline reads are kept whatever the projection says.
                None if captured_at.is_some() => Filter::All,
                None => {
                    map.next_value::<de::IgnoredAny>()?;
                    continue;
                }
            };
            if count > 0 {
                self.sink.out.push(b',');
            }
            count += 1;
            write_json_str(&mut self.sink.out, &name);
            self.sink.out.push(b':');
            let start = self.sink.out.len();
            let kind = match map.next_value_seed(AttributeSeed {
                sink: &mut *self.sink,
                filter,
            }) {
                Ok(kind) => kind,
                Err(e) => {
                    self.sink.trail.push(name.0.into_owned());
                    return Err(e);
                }
            };
            if let Some(i) = captured_at {
                self.sink.captured[i] = Some(Captured {
                    kind,
                    span: start..self.sink.out.len(),
                });
            }
        }
        self.sink.out.push(b'}');
        Ok(())
    }
}

/// One typed attribute value: `{"S": ...}`, `{"N": ...}`, and so on.
struct AttributeSeed<'o, 'v, 'p> {
    sink: &'o mut Sink<'v>,
    /// For an `M`: which of its attributes are written.
    filter: Filter<'p>,
}

impl<'de> DeserializeSeed<'de> for AttributeSeed<'_, '_, '_> {
    type Value = AttributeKind;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<AttributeKind, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for AttributeSeed<'_, '_, '_> {
    type Value = AttributeKind;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a DynamoDB attribute value such as {\"S\": \"text\"}")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AttributeKind, A::Error> {
        let Some(tag) = map.next_key::<CowStr<'de>>()? else {
            return Err(de::Error::custom("attribute value has no type"));
        };
        let sink = self.sink;
        let kind = match &*tag {
            "S" => AttributeKind::S,
            "N" => AttributeKind::N,
            "B" => AttributeKind::B,
            _ => AttributeKind::Other,
        };
        let out = &mut sink.out;
        match &*tag {
            "S" => {
                let raw: &'de RawValue = map.next_value()?;
                write_string_token(out, raw)?;
            }
            "N" => {
                let text: CowStr<'de> = map.next_value()?;
                out.extend_from_slice(number_json(&text).map_err(de::Error::custom)?.as_bytes());
            }
            "B" => {
                let text: CowStr<'de> = map.next_value()?;
                check_base64(&text).map_err(de::Error::custom)?;
                write_json_str(out, &text);
            }
            "BOOL" => {
                let b: bool = map.next_value()?;
                out.extend_from_slice(if b { b"true" } else { b"false" });
            }
            "NULL" => {
                let _: bool = map.next_value()?;
                out.extend_from_slice(b"null");
            }
            "M" => map.next_value_seed(ItemSeed {
                sink,
                top: false,
                filter: self.filter,
            })?,
            "L" => map.next_value_seed(ListSeed {
                sink,
                kind: ListKind::Attributes,
            })?,
            "SS" => map.next_value_seed(ListSeed {
                sink,
                kind: ListKind::Strings,
            })?,
            "NS" => map.next_value_seed(ListSeed {
                sink,
                kind: ListKind::Numbers,
            })?,
            "BS" => map.next_value_seed(ListSeed {
                sink,
                kind: ListKind::Binaries,
            })?,
            other => {
                return Err(de::Error::custom(format!(
                    "unknown attribute type {other:?}"
                )));
            }
        }
        if map.next_key::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::custom(format!(
                "attribute value has more than one type (first {tag:?})"
            )));
        }
        Ok(kind)
    }
}

/// Copies a JSON string token verbatim: it is already valid, escaped JSON, so no decoding and
/// re-encoding is needed (and no character can be altered on the way).
fn write_string_token<E: de::Error>(out: &mut Vec<u8>, raw: &RawValue) -> Result<(), E> {
    let text = raw.get();
    if !text.starts_with('"') {
        return Err(E::custom(format!(
            "S value is {}, not a string",
            json_kind(text)
        )));
    }
    // The token is copied without decoding, so an escaped lone surrogate (`"\ud800"`), which
    // no DynamoDB string can hold, would pass: tokens with `\u` escapes are decoded once to
    // check them (rare: the stream sends non-ASCII text as UTF-8).
    if text.contains("\\u")
        && let Err(e) = serde_json::from_str::<String>(text)
    {
        return Err(E::custom(format!(
            "S value is not valid Unicode text ({})",
            strip_position(&e.to_string())
        )));
    }
    out.extend_from_slice(text.as_bytes());
    Ok(())
}

/// What kind of JSON value a token is, named without quoting it.
fn json_kind(token: &str) -> &'static str {
    match token.as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

#[derive(Clone, Copy)]
enum ListKind {
    Attributes,
    Strings,
    Numbers,
    Binaries,
}

struct ListSeed<'o, 'v> {
    sink: &'o mut Sink<'v>,
    kind: ListKind,
}

impl<'de> DeserializeSeed<'de> for ListSeed<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ListSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.sink.out.push(b'[');
        let mut index = 0usize;
        loop {
            let mark = self.sink.out.len();
            if index > 0 {
                self.sink.out.push(b',');
            }
            let more = match self.kind {
                ListKind::Attributes => seq
                    .next_element_seed(AttributeSeed {
                        sink: &mut *self.sink,
                        // A list's elements are not addressed by paths: kept whole.
                        filter: Filter::All,
                    })
                    .map(|kind| kind.map(|_| ())),
                ListKind::Strings => {
                    seq.next_element::<&'de RawValue>()
                        .and_then(|raw| match raw {
                            Some(raw) => {
                                write_string_token(&mut self.sink.out, raw).map(|()| Some(()))
                            }
                            None => Ok(None),
                        })
                }
                ListKind::Numbers => seq.next_element::<CowStr<'de>>().and_then(|t| match t {
                    Some(t) => {
                        let json = number_json(&t).map_err(de::Error::custom)?;
                        self.sink.out.extend_from_slice(json.as_bytes());
                        Ok(Some(()))
                    }
                    None => Ok(None),
                }),
                ListKind::Binaries => seq.next_element::<CowStr<'de>>().and_then(|t| match t {
                    Some(t) => {
                        check_base64(&t).map_err(de::Error::custom)?;
                        write_json_str(&mut self.sink.out, &t);
                        Ok(Some(()))
                    }
                    None => Ok(None),
                }),
            }
            .inspect_err(|_| self.sink.trail.push(format!("[{index}]")))?;
            if more.is_none() {
                self.sink.out.truncate(mark);
                break;
            }
            index += 1;
        }
        self.sink.out.push(b']');
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(image: &str) -> Result<String, ConvertError> {
        let mut out = Vec::new();
        write_document(image, &mut out).map(|()| String::from_utf8(out).unwrap())
    }

    #[test]
    fn keeps_38_digit_numbers_and_exponents_exact() {
        let doc = convert(
            r#"{"a":{"N":"12345678901234567890123456789012345678"},"b":{"N":"1E+30"},"c":{"N":"-1E-130"},"d":{"N":"0.10"}}"#,
        )
        .unwrap();
        assert_eq!(
            doc,
            r#"{"a":12345678901234567890123456789012345678,"b":1E+30,"c":-1E-130,"d":0.10}"#
        );
    }

    #[test]
    fn rewrites_numbers_outside_json_grammar_to_the_same_value() {
        assert_eq!(number_json("+5").unwrap(), "5");
        assert_eq!(number_json(".5").unwrap(), "0.5");
        assert_eq!(number_json("5.").unwrap(), "5");
        assert_eq!(number_json("007").unwrap(), "7");
        assert_eq!(number_json("-.25e3").unwrap(), "-250");
        assert!(number_json("1e").is_err());
        assert!(number_json("abc").is_err());
        assert!(number_json("").is_err());
        assert!(number_json("NaN").is_err());
        assert!(number_json("1.2.3").is_err());
    }

    #[test]
    fn a_canonical_integer_is_its_own_canonical_text() {
        for text in [
            "1",
            "-7",
            "10",
            "1000",
            "123456789",
            "99999999999999999999999999999999999999",
            "-12300",
        ] {
            assert!(Decimal::is_canonical_integer(text), "{text}");
            let d = Decimal::parse(text).unwrap();
            assert_eq!(d.canonical_text(), text);
            assert!(d.check_range().is_ok(), "{text}");
        }
        for text in [
            "0",
            "-0",
            "01",
            "+1",
            "1.0",
            "1E3",
            "",
            "-",
            "1 ",
            "999999999999999999999999999999999999999",
        ] {
            assert!(!Decimal::is_canonical_integer(text), "{text}");
        }
    }

    #[test]
    fn canonical_number_text_is_equal_for_equal_values_only() {
        let c = |s: &str| Decimal::parse(s).unwrap().canonical_text();
        assert_eq!(c("1"), "1");
        assert_eq!(c("1.0"), "1");
        assert_eq!(c("10"), "10");
        assert_eq!(c("1E+1"), "10");
        assert_eq!(c("0.001"), "0.001");
        assert_eq!(c("-0"), "0");
        assert_eq!(c("1E+125"), "1E125");
        assert_eq!(c("-1.5E-130"), "-1.5E-130");
        assert_ne!(c("1E+40"), c("1E+41"));
        assert_eq!(
            c("12345678901234567890123456789012345678"),
            "12345678901234567890123456789012345678"
        );
    }

    #[test]
    fn versions_are_non_negative_longs() {
        let v = |s: &str| Decimal::parse(s).unwrap().as_version();
        assert_eq!(v("1700000000123"), Some(1_700_000_000_123));
        assert_eq!(v("1E+3"), Some(1000));
        assert_eq!(v("9223372036854775807"), Some(i64::MAX as u64));
        assert_eq!(v("9223372036854775808"), None);
        assert_eq!(v("-1"), None);
        assert_eq!(v("1.5"), None);
    }

    #[test]
    fn converts_every_attribute_type() {
        let doc = convert(
            r#"{"s":{"S":"héllo \"q\" \u00e9 😀\n"},"n":{"N":"3"},"b":{"B":"AAEC/w=="},"t":{"BOOL":true},"f":{"BOOL":false},"z":{"NULL":true},"ss":{"SS":["a","b"]},"ns":{"NS":["1","2.5"]},"bs":{"BS":["AA==","AQ=="]},"l":{"L":[{"S":"x"},{"N":"1"},{"L":[]},{"M":{}}]},"m":{"M":{"k":{"M":{"deep":{"N":"-0.5"}}}}}}"#,
        )
        .unwrap();
        assert_eq!(
            doc,
            r#"{"s":"héllo \"q\" \u00e9 😀\n","n":3,"b":"AAEC/w==","t":true,"f":false,"z":null,"ss":["a","b"],"ns":[1,2.5],"bs":["AA==","AQ=="],"l":["x",1,[],{}],"m":{"k":{"deep":-0.5}}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(v["s"], "héllo \"q\" é 😀\n");
    }

    #[test]
    fn escapes_attribute_names() {
        let doc = convert(r#"{"a\"b\\c\u0001":{"S":"x"}}"#).unwrap();
        assert_eq!(doc, r#"{"a\"b\\c\u0001":"x"}"#);
    }

    #[test]
    fn names_the_attribute_path_of_a_bad_value() {
        let err = convert(r#"{"ok":{"S":"x"},"m":{"M":{"list":{"L":[{"S":"x"},{"N":"12abc"}]}}}}"#)
            .unwrap_err();
        assert_eq!(err.0, r#"m.list[1]: invalid number text "12abc""#);
        let err = convert(r#"{"bin":{"B":"not base64!"}}"#).unwrap_err();
        assert!(err.0.starts_with("bin: invalid base64"), "{err}");
        let err = convert(r#"{"x":{"Q":"1"}}"#).unwrap_err();
        assert_eq!(err.0, r#"x: unknown attribute type "Q""#);
        let err = convert(r#"{"x":{"S":"1","N":"1"}}"#).unwrap_err();
        assert_eq!(
            err.0,
            r#"x: attribute value has more than one type (first "S")"#
        );
        let err = convert(r#"{"x":{"S":5}}"#).unwrap_err();
        assert_eq!(err.0, "x: S value is a number, not a string");
    }

    #[test]
    fn finds_top_level_attribute_text_without_converting() {
        let image = r#"{"t":{"S":"Order"},"n":{"N":"1.50"},"m":{"M":{"t":{"S":"inner"}}},"b":{"BOOL":true}}"#;
        let names = ["t", "n", "m", "missing"].map(String::from);
        let got = find_attributes(image, &names).unwrap();
        assert_eq!(
            got,
            vec![
                Some(Some("Order".into())),
                Some(Some("1.5".into())),
                Some(None),
                None
            ]
        );
        assert!(find_attributes(r#"{"t":{"S":"a"}"#, &names).is_err());
    }

    #[test]
    fn numbers_outside_dynamodbs_range_are_refused_without_quoting_them() {
        for ok in [
            "0",
            "-0.000",
            "1E+125",
            "9.9999999999999999999999999999999999999E+125",
            "1E-130",
            "-1e-130",
            "12345678901234567890123456789012345678",
            "0.00012345678901234567890123456789012345678",
            "1234567890123456789012345678901234567800000",
            "100.000",
        ] {
            assert!(number_json(ok).is_ok(), "{ok} is a DynamoDB number");
        }
        for bad in [
            "1e400",
            "1E+126",
            "10E+125",
            "1E-131",
            "0.1E-130",
            "123456789012345678901234567890123456789",
            "1.23456789012345678901234567890123456789",
            "1e99999999999999999999",
            "+1e400",
            ".1e-130",
        ] {
            let e = number_json(bad).unwrap_err();
            assert!(e.contains("DynamoDB"), "{bad}: {e}");
            let digits: String = bad.chars().filter(char::is_ascii_digit).collect();
            assert!(
                !e.contains(&digits),
                "the reason must not quote the value: {e}"
            );
        }
        let err = convert(r#"{"m":{"M":{"x":{"NS":["1","1e400"]}}}}"#).unwrap_err();
        assert!(err.0.starts_with("m.x[1]: number of magnitude"), "{err}");
    }

    #[test]
    fn an_unreadable_attribute_name_is_named_by_its_position() {
        let err = convert(r#"{"ok":{"S":"x"},"m":{"M":{"a":{"N":"1"},"\ud800":{"S":"x"}}}}"#)
            .unwrap_err();
        assert!(
            err.0.starts_with("m.<name of attribute 2>: "),
            "the path names the map and the position: {err}"
        );
        let err = convert(r#"{"s":{"SS":["ok","a\ud800b"]}}"#).unwrap_err();
        assert!(
            err.0.starts_with("s[1]: S value is not valid Unicode text"),
            "{err}"
        );
        assert!(convert(r#"{"s":{"S":"\ud83d\ude00 \u00e9"}}"#).is_ok());
    }

    #[test]
    fn captures_top_level_attributes_with_their_type_and_text() {
        let mut out = Vec::new();
        let got = write_document_capturing(
            r#"{"pk":{"S":"a\"b"},"m":{"M":{"v":{"N":"1"}}},"v":{"N":"7.0"},"b":{"B":"AA=="}}"#,
            &mut out,
            &["v", "pk", "b", "m", "absent"],
        )
        .unwrap();
        let text = |c: &Option<Captured>| {
            let c = c.as_ref().unwrap();
            (
                c.kind,
                String::from_utf8(out[c.span.clone()].to_vec()).unwrap(),
            )
        };
        assert_eq!(text(&got[0]), (AttributeKind::N, "7.0".into()));
        assert_eq!(text(&got[1]), (AttributeKind::S, r#""a\"b""#.into()));
        assert_eq!(text(&got[2]), (AttributeKind::B, r#""AA==""#.into()));
        assert_eq!(text(&got[3]), (AttributeKind::Other, r#"{"v":1}"#.into()));
        assert_eq!(got[4], None);
    }
}
