//! The byte-level fast paths of conversion: no tokenizer, no visitor, the ends of strings found
//! by `scan`'s block scan and strings copied as the escaped tokens they are.
//!
//! Why beside the serde walk rather than instead of it: the walk is the definition (every rule,
//! every error with its attribute path); this path covers the DynamoDB JSON that streams and
//! scans send and gives up (`None`) on anything else, and the caller then runs the walk from
//! the start. So an image converts the same either way, which `the_fast_path_agrees_with_the_walk`
//! checks on generated images, odd and broken ones included.
//!
//! The transcoder is strict: it accepts only text that is JSON as serde reads it (grammar,
//! string contents; nesting within [`MAX_DEPTH`]), so an image need not be validated before it
//! is converted — the record's parse leaves the NewImage unread and this is its one pass.

use super::{AttributeKind, Captured, Captures, check_range};
use crate::pipeline::projection::Filter;
use crate::pipeline::scan::{self, is_json, number_end, skip_ws, string_end_strict, value_end};

/// Objects and arrays the transcoder opens at most, the image's own included; deeper images go
/// to the walk, which refuses past serde's limit of 127. DynamoDB nests 32 levels (66 here).
/// The bound also keeps the recursion's stack small: text no parse has checked may be 6 MB of
/// `{"M":` openings.
pub(super) const MAX_DEPTH: usize = 100;

/// Converts an image like [`super::write_document_projected`]'s walk, appending to `out`;
/// `None` where the walk must decide (then `out` holds a partial document to cut off). `Some`
/// also means `image` is JSON serde accepts. Gives up on: text that is not JSON, a name or
/// N/B text with escapes, an S with a `\u` escape (the walk checks it for lone surrogates), a
/// number outside JSON grammar or DynamoDB's range, invalid base64, an attribute value that is
/// not exactly one known type tag with a value of its type, nesting past [`MAX_DEPTH`].
pub(super) fn transcode(
    image: &str,
    out: &mut Vec<u8>,
    names: &[&str],
    filter: Filter<'_>,
) -> Option<Captures> {
    let (captured, end) = transcode_prefix(image, out, names, filter)?;
    (skip_ws(image.as_bytes(), end) == image.len()).then_some(captured)
}

/// [`transcode`] of the image that starts `text` (after whitespace), which may go on after it:
/// the image's captures and its length, as [`super::write_document_projected`] would convert
/// the image's own text; `None` (a partial document in `out` to cut off) where only the walk
/// may decide. For a reader that meets an image in a longer text and wants its end.
pub(crate) fn transcode_prefix(
    text: &str,
    out: &mut Vec<u8>,
    names: &[&str],
    filter: Filter<'_>,
) -> Option<(Captures, usize)> {
    let mut t = Transcoder {
        image: text,
        b: text.as_bytes(),
        i: 0,
        depth: 0,
        out,
    };
    let mut captured = smallvec::smallvec![None; names.len()];
    t.ws();
    t.map(filter, Some((names, &mut captured)))?;
    Some((captured, t.i))
}

struct Transcoder<'a, 'o> {
    image: &'a str,
    b: &'a [u8],
    i: usize,
    /// Objects and arrays open.
    depth: usize,
    out: &'o mut Vec<u8>,
}

impl<'a> Transcoder<'a, '_> {
    fn ws(&mut self) {
        self.i = skip_ws(self.b, self.i);
    }

    /// Consumes `c` (after whitespace), or gives up.
    fn expect(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    /// Consumes and writes `open`; `true` if the object or array is empty (its `close` is then
    /// consumed and written too).
    fn open(&mut self, open: u8, close: u8) -> Option<bool> {
        self.expect(open)?;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        self.out.push(open);
        self.ws();
        let empty = self.b.get(self.i) == Some(&close);
        if empty {
            self.i += 1;
            self.out.push(close);
            self.depth -= 1;
        }
        Some(empty)
    }

    /// After a member or element: `true` at `,`, `false` at `close`.
    fn more(&mut self, close: u8) -> Option<bool> {
        self.ws();
        let c = *self.b.get(self.i)?;
        self.i += 1;
        match c {
            b',' => Some(true),
            c if c == close => Some(false),
            _ => None,
        }
    }

    /// `"…"` without escapes: its text (between the quotes).
    fn plain_string(&mut self) -> Option<&'a str> {
        let (token, escaped) = self.string_token()?;
        (!escaped).then(|| &token[1..token.len() - 1])
    }

    /// A string token, quotes included, as it stands in the image; and whether it holds an
    /// escape (never `\u`: those strings are the walk's).
    #[inline(always)]
    fn string_token(&mut self) -> Option<(&'a str, bool)> {
        self.ws();
        if self.b.get(self.i) != Some(&b'"') {
            return None;
        }
        let (end, escaped) = string_end_strict(self.b, self.i)?;
        let token = &self.image[self.i..=end];
        self.i = end + 1;
        Some((token, escaped))
    }

    /// An attribute map (an image or an `M`); at the top level, also the named attributes.
    fn map(
        &mut self,
        filter: Filter<'_>,
        mut names: Option<(&[&str], &mut Captures)>,
    ) -> Option<()> {
        if self.open(b'{', b'}')? {
            return Some(());
        }
        let mut count = 0usize;
        loop {
            let (token, escaped) = self.string_token()?;
            if escaped {
                return None;
            }
            let name = &token[1..token.len() - 1];
            self.expect(b':')?;
            let captured_at = names
                .as_ref()
                .and_then(|(names, _)| names.iter().position(|n| *n == name));
            let child = match filter.child(name) {
                Some(f) => Some(f),
                None if captured_at.is_some() => Some(Filter::All),
                None => None,
            };
            match child {
                None => {
                    // Left out of the document, but it must still be JSON: an attribute value
                    // is judged by converting it and cutting it off again (cheaper than serde's
                    // judgement: 6 M of a routed plan's 70 M instructions); anything else by
                    // serde.
                    self.ws();
                    let (start, depth, mark) = (self.i, self.depth, self.out.len());
                    let converted = self.attribute(Filter::All).is_some();
                    self.out.truncate(mark);
                    if !converted {
                        self.depth = depth;
                        self.i = value_end(self.b, start)?;
                        if !is_json(&self.image[start..self.i]) {
                            return None;
                        }
                    }
                }
                Some(child) => {
                    if count > 0 {
                        self.out.push(b',');
                    }
                    count += 1;
                    // A name without escapes is its own JSON token.
                    self.out.extend_from_slice(token.as_bytes());
                    self.out.push(b':');
                    let start = self.out.len();
                    let kind = self.attribute(child)?;
                    if let (Some(k), Some((_, captured))) = (captured_at, names.as_mut()) {
                        captured[k] = Some(Captured {
                            kind,
                            span: start..self.out.len(),
                        });
                    }
                }
            }
            if !self.more(b'}')? {
                break;
            }
        }
        self.out.push(b'}');
        self.depth -= 1;
        Some(())
    }

    /// An attribute value's opening up to its value: `{`, the type tag, `:`. The compact form
    /// DynamoDB sends (`{"S":`) is matched as bytes, since a tag is a third of an image's
    /// strings; any other spelling is read token by token.
    fn tag(&mut self) -> Option<&'a [u8]> {
        self.ws();
        let b: &'a [u8] = self.b;
        let (tag, len): (&'a [u8], usize) = match &b[self.i..] {
            [b'{', b'"', t, b'"', b':', ..] => (std::slice::from_ref(t), 5),
            [b'{', b'"', b'S' | b'N' | b'B', b'S', b'"', b':', ..] => {
                (&b[self.i + 2..self.i + 4], 6)
            }
            [b'{', b'"', rest @ ..]
                if rest.starts_with(b"BOOL\":") || rest.starts_with(b"NULL\":") =>
            {
                (&b[self.i + 2..self.i + 6], 8)
            }
            _ => {
                self.expect(b'{')?;
                let tag = self.plain_string()?;
                self.expect(b':')?;
                return Some(tag.as_bytes());
            }
        };
        self.i += len;
        Some(tag)
    }

    /// `{"<tag>": value}` with exactly one tag.
    fn attribute(&mut self, filter: Filter<'_>) -> Option<AttributeKind> {
        let tag = self.tag()?;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let kind = match tag {
            b"S" => {
                self.string()?;
                AttributeKind::S
            }
            b"N" => {
                self.number()?;
                AttributeKind::N
            }
            b"B" => {
                self.binary()?;
                AttributeKind::B
            }
            b"BOOL" => {
                let value = self.literal()?;
                self.out.extend_from_slice(value.as_bytes());
                AttributeKind::Other
            }
            b"NULL" => {
                self.literal()?;
                self.out.extend_from_slice(b"null");
                AttributeKind::Other
            }
            b"M" => {
                self.map(filter, None)?;
                AttributeKind::Other
            }
            b"L" => {
                self.list(|t| t.attribute(Filter::All).map(|_| ()))?;
                AttributeKind::Other
            }
            b"SS" => {
                self.list(Self::string)?;
                AttributeKind::Other
            }
            b"NS" => {
                self.list(Self::number)?;
                AttributeKind::Other
            }
            b"BS" => {
                self.list(Self::binary)?;
                AttributeKind::Other
            }
            _ => return None,
        };
        self.expect(b'}')?;
        self.depth -= 1;
        Some(kind)
    }

    /// `[…]` of elements each written by `element`, comma-separated.
    fn list(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        if self.open(b'[', b']')? {
            return Some(());
        }
        loop {
            element(self)?;
            if !self.more(b']')? {
                break;
            }
            self.out.push(b',');
        }
        self.out.push(b']');
        self.depth -= 1;
        Some(())
    }

    /// An S value: the token as it stands.
    fn string(&mut self) -> Option<()> {
        let (token, _) = self.string_token()?;
        self.out.extend_from_slice(token.as_bytes());
        Some(())
    }

    /// An N value: its text, already a JSON number within DynamoDB's range.
    fn number(&mut self) -> Option<()> {
        // The number's grammar read from the opening quote: one pass finds its end and checks
        // it, and the string then ends right there (no escapes, nothing after the number).
        self.ws();
        if self.b.get(self.i) != Some(&b'"') {
            return None;
        }
        let start = self.i + 1;
        let end = number_end(self.b, start)?;
        if self.b.get(end) != Some(&b'"') {
            return None;
        }
        let text = &self.b[start..end];
        self.i = end + 1;
        // Without an exponent, text of at most 38 characters holds at most 38 digits and a
        // magnitude from 1E-37 to below 1E+38: within DynamoDB's range without counting.
        let short = text.len() <= super::MAX_SIGNIFICANT_DIGITS
            && !text.iter().any(|&c| c == b'e' || c == b'E');
        // The number's bytes are ASCII: its text is `image`'s at the same place.
        if !short && check_range(&self.image[start..end]).is_err() {
            return None;
        }
        self.out.extend_from_slice(text);
        Some(())
    }

    /// A B value: valid base64, kept as its string token.
    fn binary(&mut self) -> Option<()> {
        let (token, escaped) = self.string_token()?;
        if escaped || !is_standard_base64(&token.as_bytes()[1..token.len() - 1]) {
            return None;
        }
        self.out.extend_from_slice(token.as_bytes());
        Some(())
    }

    /// `true` or `false`.
    fn literal(&mut self) -> Option<&'static str> {
        self.ws();
        let rest = &self.b[self.i..];
        let value = if rest.starts_with(b"true") {
            "true"
        } else if rest.starts_with(b"false") {
            "false"
        } else {
            return None;
        };
        self.i += value.len();
        Some(value)
    }
}

/// Whether `text` is base64 that the walk's decoder (`base64`'s `STANDARD`) accepts, checked
/// without decoding it (decoding took a twelfth of a typical image's transcoding): the standard
/// alphabet, padded to a multiple of four with `=` only as the last one or two characters, and
/// the bits the last character carries beyond the data all zero (canonical). Held to the
/// decoder by `the_base64_check_accepts_what_the_decoder_accepts`.
fn is_standard_base64(text: &[u8]) -> bool {
    if !text.len().is_multiple_of(4) {
        return false;
    }
    let (data, unused_bits) = match text {
        [data @ .., b'=', b'='] => (data, 0b1111),
        [data @ .., b'='] => (data, 0b11),
        data => (data, 0),
    };
    // One pass the compiler vectorizes; the value of an invalid character has its high bit.
    let invalid = data.iter().fold(0u8, |bad, &c| bad | SEXTET[c as usize]) & 0x80;
    invalid == 0
        && data
            .last()
            .is_none_or(|&c| SEXTET[c as usize] & unused_bits == 0)
}

/// Each byte's value as a base64 digit of the standard alphabet; 0x80 for any other byte.
static SEXTET: [u8; 256] = {
    let mut t = [0x80u8; 256];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut i = 0;
    while i < alphabet.len() {
        t[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// The fast path of [`find_attributes`]: a byte scan over the top level of an image that the
/// record's parse has already validated (it arrives as a `RawValue`), skipping every value but
/// the named ones without parsing it. Serde's `IgnoredAny` still decodes each skipped string and
/// number, which made routing on `NEW_AND_OLD_IMAGES` cost a fifth more than conversion alone.
/// It stops once every name is found: DynamoDB's images name each attribute once.
/// `None` (use the parser) for anything unusual: a name with escapes, a value that is not an
/// attribute value, text that is not a JSON object.
pub(super) fn scan_top_level(image: &str, names: &[String]) -> Option<Vec<Option<Option<String>>>> {
    let mut found = vec![None; names.len()];
    let end = scan::members(image, |name, value| {
        let Some(k) = names.iter().position(|n| n == name) else {
            return Some(true);
        };
        found[k] = Some(serde_json::from_str::<super::Typed>(value).ok()?.0);
        // DynamoDB's images name each attribute once: the rest need not be read.
        Some(!found.iter().all(Option::is_some))
    })?;
    match end {
        Some(end) => (skip_ws(image.as_bytes(), end) == image.len()).then_some(found),
        None => Some(found),
    }
}

#[cfg(test)]
mod scan_tests {
    use super::super::parse_attributes;
    use super::scan_top_level;
    use proptest::prelude::*;
    use serde_json::{Value, json};

    /// Attribute values with strings that hold JSON's structural characters.
    fn attribute() -> impl Strategy<Value = Value> {
        let text = prop::sample::select(vec!["x", "}", "]\"", "a\\b", "{[", "é", ""]);
        let leaf = prop_oneof![
            text.clone().prop_map(|t| json!({ "S": t })),
            prop::sample::select(vec!["1", "-1.50", "1E+3", "0.000"])
                .prop_map(|n| json!({ "N": n })),
            any::<bool>().prop_map(|b| json!({ "BOOL": b })),
            Just(json!({"NULL": true})),
            prop::collection::vec(text, 0..3).prop_map(|v| json!({ "SS": v })),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(|l| json!({ "L": l })),
                prop::collection::btree_map(prop::sample::select(vec!["a", "}", "S"]), inner, 0..3)
                    .prop_map(|m| json!({ "M": m })),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]
        /// The byte scan finds what the parser finds, in compact and in pretty JSON; it gives up
        /// (the parser decides) only on names with escapes.
        #[test]
        fn the_byte_scan_agrees_with_the_parser(
            image in prop::collection::btree_map(
                prop::sample::select(vec!["pk", "type", "a", "q\"x", "é", "{"]), attribute(), 0..6),
            pretty in any::<bool>(),
        ) {
            let text = if pretty {
                serde_json::to_string_pretty(&image).unwrap()
            } else {
                serde_json::to_string(&image).unwrap()
            };
            let names: Vec<String> = ["pk", "type", "q\"x", "missing"].map(String::from).to_vec();
            let parsed = parse_attributes(&text, &names).unwrap();
            match scan_top_level(&text, &names) {
                Some(scanned) => prop_assert_eq!(scanned, parsed),
                None => prop_assert!(image.contains_key("q\"x"), "gave up on {}", text),
            }
        }
    }

    #[test]
    fn the_byte_scan_leaves_what_is_not_an_object_to_the_parser() {
        let names = vec!["a".to_string()];
        // (Text after the object cannot reach it: images arrive validated, as `RawValue`s.)
        for text in [
            "[]",
            "1",
            r#"{"b":1} x"#,
            r#"{"a" {"S":"x"}}"#,
            r#"{"a":1}"#,
        ] {
            assert_eq!(scan_top_level(text, &names), None, "{text}");
        }
        assert_eq!(scan_top_level(" { } ", &names), Some(vec![None]));
    }
}

#[cfg(test)]
mod transcode_tests {
    use super::transcode;
    use crate::pipeline::convert::walk;
    use crate::pipeline::projection::Projection;
    use proptest::prelude::*;

    /// JSON text of attribute values, well-formed and not: wrong types, escapes, numbers outside
    /// JSON grammar or DynamoDB's range, bad base64, missing, unknown and doubled tags.
    fn attribute() -> impl Strategy<Value = String> {
        let strings = prop::sample::select(vec![
            r#""x""#,
            r#""}""#,
            r#""a\\b""#,
            r#""\u00e9""#,
            r#""\ud800""#,
            r#""\n\"q\"""#,
            r#""é""#,
            r#""""#,
            "1",
            "null",
        ]);
        let numbers = prop::sample::select(vec![
            r#""1""#,
            r#""-1.50""#,
            r#""1E+3""#,
            r#""0.000""#,
            r#""+5""#,
            r#"".5""#,
            r#""007""#,
            r#""1e""#,
            r#""abc""#,
            r#""1E+126""#,
            r#""1E-131""#,
            r#""123456789012345678901234567890123456789""#,
            r#""\u0031""#,
            "5",
        ]);
        let binaries = prop::sample::select(vec![
            r#""AA==""#,
            r#""iVBORw0K""#,
            r#""AAA""#,
            r#""AB==""#,
            r#""A===""#,
            r#""""#,
            r#""A\/8=""#,
            "1",
        ]);
        let literals = prop::sample::select(vec!["true", "false", r#""true""#, "null", "1"]);
        let set = |inner: BoxedStrategy<&'static str>| {
            prop_oneof![
                4 => prop::collection::vec(inner, 0..4).prop_map(|v| format!("[{}]", v.join(","))),
                1 => Just(r#""x""#.to_string()),
            ]
        };
        let leaf = prop_oneof![
            strings.clone().prop_map(|s| format!(r#"{{"S":{s}}}"#)),
            numbers.clone().prop_map(|n| format!(r#"{{"N":{n}}}"#)),
            binaries.clone().prop_map(|b| format!(r#"{{"B":{b}}}"#)),
            literals.clone().prop_map(|l| format!(r#"{{"BOOL":{l}}}"#)),
            literals.prop_map(|l| format!(r#"{{"NULL":{l}}}"#)),
            set(strings.boxed()).prop_map(|s| format!(r#"{{"SS":{s}}}"#)),
            set(numbers.boxed()).prop_map(|s| format!(r#"{{"NS":{s}}}"#)),
            set(binaries.boxed()).prop_map(|s| format!(r#"{{"BS":{s}}}"#)),
            prop::sample::select(vec![
                "{}",
                r#"{"X":1}"#,
                r#"{"S":"a","N":"1"}"#,
                r#"{"S":"a","S":"b"}"#,
                r#""x""#,
                "[1]",
                r#"{"\u0053":"x"}"#,
                // Not JSON, though its brackets balance: refused also where it is left out.
                "[1,]",
                "[1 2]",
                r#"{"S" "a"}"#,
                "01",
                "tru",
            ])
            .prop_map(String::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|l| format!(r#"{{"L":[{}]}}"#, l.join(","))),
                object(inner).prop_map(|m| format!(r#"{{"M":{m}}}"#)),
            ]
        })
    }

    /// An attribute map with names that need escapes, an escaped plain name and repeats.
    fn object(values: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
        let name = prop::sample::select(vec![
            r#""pk""#,
            r#""a""#,
            r#""m""#,
            r#""x""#,
            r#""q\"x""#,
            r#""\u0070k""#,
            r#""é""#,
            r#""}""#,
        ]);
        prop::collection::vec((name, values), 0..6).prop_map(|members| {
            let members: Vec<String> = members.iter().map(|(n, v)| format!("{n}:{v}")).collect();
            format!("{{{}}}", members.join(","))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, failure_persistence: None, ..ProptestConfig::default() })]
        /// Where the fast path converts an image, the walk converts it to the same bytes with the
        /// same captures; where the walk fails, the fast path gives up. With and without
        /// projections, compact and spaced out.
        #[test]
        fn the_fast_path_agrees_with_the_walk(
            image in object(attribute()),
            spaced in any::<bool>(),
            projection in prop::sample::select(vec![(None, None), (Some("a,m.x"), None), (None, Some("pk,m.a"))]),
        ) {
            let image = if spaced { space_out(&image) } else { image };
            let projection = Projection::parse(projection.0, projection.1).unwrap();
            let names = ["pk", "q\"x", "a", "missing"];
            let mut walked = b"prefix".to_vec();
            let walk_result = walk(&image, &mut walked, &names, projection.filter());
            let mut fast = b"prefix".to_vec();
            if let Some(captured) = transcode(&image, &mut fast, &names, projection.filter()) {
                prop_assert_eq!(walk_result, Ok(captured), "{}", image);
                prop_assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(walked).unwrap());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4096, failure_persistence: None, ..ProptestConfig::default() })]
        /// The check without decoding accepts exactly what the walk's decoder accepts: text
        /// mostly of base64 characters, among them the ones whose low bits decide a canonical
        /// last character (A, Q, g, w, E, B), padding anywhere, a few bytes outside the
        /// alphabet, lengths around the multiples of four.
        #[test]
        fn the_base64_check_accepts_what_the_decoder_accepts(
            text in prop::collection::vec(
                prop::sample::select(b"AQgwEBZz09+/=-_ \n\xff".to_vec()),
                0..14,
            ),
        ) {
            use base64::Engine as _;
            let decodes = base64::engine::general_purpose::STANDARD.decode(&text).is_ok();
            prop_assert_eq!(super::is_standard_base64(&text), decodes, "{:?}", String::from_utf8_lossy(&text));
        }
    }

    #[test]
    fn canonical_base64_passes_the_check_and_the_rest_does_not() {
        use base64::Engine as _;
        for data in [&b""[..], b"a", b"ab", b"abc", b"abcd", &[0xff; 7], &[0; 64]] {
            let text = base64::engine::general_purpose::STANDARD.encode(data);
            assert!(super::is_standard_base64(text.as_bytes()), "{text}");
        }
        for text in [
            "QQ", "QR==", "QUI=QUI=", "QUJ=", "====", "QUJD=", "QU=I", "QUJ-", "QUJ_",
        ] {
            assert!(!super::is_standard_base64(text.as_bytes()), "{text}");
        }
    }

    /// The same JSON with whitespace around every structural character outside strings.
    fn space_out(text: &str) -> String {
        let mut out = String::new();
        let (mut in_string, mut escaped) = (false, false);
        for c in text.chars() {
            if in_string {
                out.push(c);
                match c {
                    _ if escaped => escaped = false,
                    '\\' => escaped = true,
                    '"' => in_string = false,
                    _ => {}
                }
                continue;
            }
            match c {
                '"' => {
                    in_string = true;
                    out.push(c);
                }
                '{' | '}' | '[' | ']' | ':' | ',' => {
                    out.push_str(" \n");
                    out.push(c);
                    out.push_str("\t ");
                }
                _ => out.push(c),
            }
        }
        out
    }

    #[test]
    fn a_typical_stream_image_takes_the_fast_path() {
        let image = r#"{"pk":{"S":"customer#1"},"sk":{"N":"1"},"name":{"S":"Zoë \"Z\""},"balance":{"N":"1234567890123456789.000001"},"active":{"BOOL":true},"gone":{"NULL":true},"avatar":{"B":"iVBORw0KGgo="},"tags":{"SS":["a","b"]},"lucky":{"NS":["7","-1E+3"]},"blobs":{"BS":["AA=="]},"address":{"M":{"city":{"S":"Zürich"},"geo":{"M":{"lat":{"N":"47.37"}}}}},"orders":{"L":[{"M":{"id":{"S":"o-1"}}},{"N":"5E+2"}]}}"#;
        let mut out = Vec::new();
        let captured = transcode(
            image,
            &mut out,
            &["sk", "pk"],
            crate::pipeline::projection::Filter::All,
        )
        .expect("the fast path covers what streams send");
        let mut walked = Vec::new();
        assert_eq!(
            walk(
                image,
                &mut walked,
                &["sk", "pk"],
                crate::pipeline::projection::Filter::All
            ),
            Ok(captured)
        );
        assert_eq!(out, walked);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"pk":"customer#1","sk":1,"name":"Zoë \"Z\"","balance":1234567890123456789.000001,"active":true,"gone":null,"avatar":"iVBORw0KGgo=","tags":["a","b"],"lucky":[7,-1E+3],"blobs":["AA=="],"address":{"city":"Zürich","geo":{"lat":47.37}},"orders":[{"id":"o-1"},5E+2]}"#
        );
    }
}
