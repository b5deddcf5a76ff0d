//! Byte-level JSON scanning shared by the fast paths (`convert::fast`, `event`): whitespace,
//! the end of a string or of a whole value, found without parsing. They assume well-formed
//! text and never panic on text that is not; a caller that did not get its text from a parse
//! checks what it skipped (`is_json`, or its own strict reading).

/// Whether `text` is one JSON value (with surrounding whitespace), as serde reads it: its
/// grammar and escapes (serde skips a value of any depth).
pub(crate) fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok()
}

pub(crate) fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The position of the quote that closes the string opening at `open`.
pub(crate) fn string_end(b: &[u8], open: usize) -> Option<usize> {
    string_end_escaped(b, open).map(|(end, _)| end)
}

/// [`string_end`], and whether the string holds an escape.
pub(crate) fn string_end_escaped(b: &[u8], open: usize) -> Option<(usize, bool)> {
    let mut i = open + 1;
    let mut escaped = false;
    loop {
        i = find_special::<false>(b, i)?;
        if b[i] == b'"' {
            return Some((i, escaped));
        }
        escaped = true;
        i += 2;
    }
}

/// Whether `text` needs escapes to be a JSON string's contents: it holds a quote, a backslash
/// or a control character.
pub(crate) fn needs_escape(text: &[u8]) -> bool {
    find_special::<true>(text, 0).is_some()
}

/// Bytes per word of [`find_special`].
const WORD: usize = std::mem::size_of::<u64>();
const ONES: u64 = u64::from_ne_bytes([0x01; WORD]);
const HIGHS: u64 = u64::from_ne_bytes([0x80; WORD]);

/// The high bit of each byte of `x` below `n` (at most 0x80). Exact for the lowest such byte
/// (a borrow only runs upwards from it), which is the one used.
#[inline(always)]
fn below(x: u64, n: u8) -> u64 {
    x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS
}

/// The high bit of each byte of `x` equal to `c`, exact for the lowest one.
#[inline(always)]
fn equal(x: u64, c: u8) -> u64 {
    below(x ^ (ONES * u64::from(c)), 1)
}

/// The first position from `i` on of a quote or a backslash, or with `STRICT` also of a
/// control character. Strings are most of an image's bytes and most are short (a name, a type
/// tag or a number often ends within the first 16 bytes), so the first block decides most
/// searches: sixteen bytes at a time with SSE2 on x86_64 (part of its baseline, so no runtime
/// detection), then eight at a time (SWAR: the bit tricks serde_json's own string scan uses),
/// which is also the whole scan on other targets (the arm64 build the template deploys). The
/// `portable-scan` feature selects that path on x86_64 too, so that CI tests it.
#[inline]
fn find_special<const STRICT: bool>(b: &[u8], mut i: usize) -> Option<usize> {
    #[cfg(all(target_arch = "x86_64", not(feature = "portable-scan")))]
    while let Some(block) = b.get(i..i + sse2::BLOCK) {
        let hits = sse2::special::<STRICT>(block.try_into().expect("a block"));
        if hits != 0 {
            return Some(i + hits.trailing_zeros() as usize);
        }
        i += sse2::BLOCK;
    }
    while let Some(chunk) = b.get(i..i + WORD) {
        let x = u64::from_le_bytes(chunk.try_into().expect("a word"));
        let mut hits = equal(x, b'"') | equal(x, b'\\');
        if STRICT {
            hits |= below(x, 0x20);
        }
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += WORD;
    }
    b.get(i..)?
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || (STRICT && c < 0x20))
        .map(|k| i + k)
}

/// [`find_special`]'s sixteen-byte step. Hand-written because no crate offers this search:
/// `memchr` finds two or three bytes but not a range (the control characters).
#[cfg(all(target_arch = "x86_64", not(feature = "portable-scan")))]
mod sse2 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };

    pub(super) const BLOCK: usize = 16;

    /// A bit per byte of `block` (lowest bit: first byte) that is a quote or a backslash, or
    /// with `STRICT` a control character.
    #[inline(always)]
    pub(super) fn special<const STRICT: bool>(block: &[u8; BLOCK]) -> u32 {
        // SAFETY: SSE2 is part of x86_64's baseline, so every x86_64 processor runs these
        // instructions; the load reads the 16 bytes of `block` (unaligned loads allowed).
        unsafe {
            let x = _mm_loadu_si128(block.as_ptr().cast());
            let mut hits = _mm_or_si128(
                _mm_cmpeq_epi8(x, _mm_set1_epi8(b'"' as i8)),
                _mm_cmpeq_epi8(x, _mm_set1_epi8(b'\\' as i8)),
            );
            if STRICT {
                // Unsigned `x <= 0x1f`: the bytes the minimum leaves as they are.
                let low = _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(0x1f)), x);
                hits = _mm_or_si128(hits, low);
            }
            _mm_movemask_epi8(hits) as u32
        }
    }
}

/// The bytes that open or close a string, object or array.
static STRUCTURAL: [bool; 256] = {
    let mut t = [false; 256];
    t[b'"' as usize] = true;
    t[b'{' as usize] = true;
    t[b'}' as usize] = true;
    t[b'[' as usize] = true;
    t[b']' as usize] = true;
    t
};

/// The position just after the value starting at `start`.
pub(crate) fn value_end(b: &[u8], start: usize) -> Option<usize> {
    match b.get(start)? {
        b'"' => string_end(b, start).map(|e| e + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            loop {
                while !STRUCTURAL[*b.get(i)? as usize] {
                    i += 1;
                }
                match b[i] {
                    b'"' => i = string_end(b, i)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let len = b[start..]
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(b.len() - start);
            Some(start + len)
        }
    }
}

/// Nesting [`json_end`] follows (in a 128-bit stack); deeper text is left to serde, which skips
/// any depth.
const MAX_DEPTH: u32 = 100;

/// The position just after the value starting at `start` (no whitespace before it), if the
/// value is one serde reads ([`is_json`]); where [`value_end`] then [`is_json`] took two passes,
/// this takes one. `None` where it is not, and also where this reading leaves the judgement to
/// serde: a `\u` escape (serde also judges surrogates) or nesting deeper than [`MAX_DEPTH`]. A
/// value ends where `value_end` says: a scalar must be followed by a delimiter or the end.
pub(crate) fn json_end(b: &[u8], start: usize) -> Option<usize> {
    // The open containers, innermost in the lowest bit: 1 for an object, 0 for an array.
    let mut objects: u128 = 0;
    let mut depth = 0u32;
    let mut i = start;
    loop {
        // A value starts at `i`.
        let mut scalar = true;
        match *b.get(i)? {
            b'"' => i = string_end_strict(b, i)?.0 + 1,
            b'-' | b'0'..=b'9' => i = number_end(b, i)?,
            b't' => i = literal(b, i, b"true")?,
            b'f' => i = literal(b, i, b"false")?,
            b'n' => i = literal(b, i, b"null")?,
            open @ (b'{' | b'[') => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return None;
                }
                objects = objects << 1 | u128::from(open == b'{');
                let close = if open == b'{' { b'}' } else { b']' };
                i = skip_ws(b, i + 1);
                if b.get(i) == Some(&close) {
                    depth -= 1;
                    objects >>= 1;
                    i += 1;
                    scalar = false;
                } else {
                    if open == b'{' {
                        i = member_value(b, i)?;
                    }
                    continue;
                }
            }
            _ => return None,
        }
        // After a value: the next element or member, or the containers it closes.
        loop {
            if depth == 0 {
                let delimited = !scalar
                    || b.get(i).is_none_or(|c| {
                        matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                    });
                return delimited.then_some(i);
            }
            scalar = false;
            i = skip_ws(b, i);
            let object = objects & 1 == 1;
            match *b.get(i)? {
                b',' => {
                    i = skip_ws(b, i + 1);
                    if object {
                        i = member_value(b, i)?;
                    }
                    break;
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            depth -= 1;
            objects >>= 1;
            i += 1;
        }
    }
}

/// At a member's name (`"name" : `): where its value starts.
#[inline(always)]
fn member_value(b: &[u8], i: usize) -> Option<usize> {
    (b.get(i) == Some(&b'"')).then_some(())?;
    let colon = skip_ws(b, string_end_strict(b, i)?.0 + 1);
    (b.get(colon) == Some(&b':')).then(|| skip_ws(b, colon + 1))
}

/// Just after `word` at `i`.
#[inline(always)]
fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    b[i..].starts_with(word).then_some(i + word.len())
}

/// Just after the number at `i`: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`, the JSON
/// number grammar (RFC 8259 §6).
#[inline]
pub(crate) fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |i: usize| i + b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    match b.get(i)? {
        b'0' => i += 1,
        b'1'..=b'9' => i = digits(i),
        _ => return None,
    }
    if b.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        (end > i + 1).then_some(())?;
        i = end;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits(i);
        (end > i).then_some(())?;
        i = end;
    }
    Some(i)
}

/// Walks the members of the object that starts `text` (after whitespace), handing each name
/// and its value's text to `each`, which says whether to go on. Values are located, not
/// checked. `Some(Some(end))`: every member walked, `end` just after the closing brace;
/// `Some(None)`: `each` stopped the walk; `None` at a name with an escape, text that is not an
/// object as far as it is read, or where `each` says so.
pub(crate) fn members<'t>(
    text: &'t str,
    mut each: impl FnMut(&'t str, &'t str) -> Option<bool>,
) -> Option<Option<usize>> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    (b.get(i) == Some(&b'{')).then_some(())?;
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return Some(Some(i + 1));
    }
    loop {
        (b.get(i) == Some(&b'"')).then_some(())?;
        let (name_end, escaped) = string_end_escaped(b, i)?;
        if escaped {
            return None;
        }
        let name = &text[i + 1..name_end];
        i = skip_ws(b, name_end + 1);
        (b.get(i) == Some(&b':')).then_some(())?;
        let start = skip_ws(b, i + 1);
        let end = value_end(b, start)?;
        if !each(name, &text[start..end])? {
            return Some(None);
        }
        i = skip_ws(b, end);
        match b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => return Some(Some(i + 1)),
            _ => return None,
        }
    }
}

/// [`string_end_escaped`] for a reader that must also judge the string as serde would: `None`
/// at a control character, or at an escape other than the two-character ones (`\u` escapes are
/// left to serde, which also judges surrogates). One pass over the string.
#[inline(always)]
pub(crate) fn string_end_strict(b: &[u8], open: usize) -> Option<(usize, bool)> {
    let mut i = open + 1;
    let mut escaped = false;
    loop {
        i = find_special::<true>(b, i)?;
        match b[i] {
            b'"' => return Some((i, escaped)),
            b'\\' => {
                if !matches!(
                    b.get(i + 1)?,
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't'
                ) {
                    return None;
                }
                escaped = true;
                i += 2;
            }
            _ => return None,
        }
    }
}

/// Whether the text between a string's quotes (as [`string_end_escaped`] found it) is a JSON
/// string a strict reader may copy: no control characters, and only the two-character escapes.
/// `\u` escapes are refused too, so that a caller that meets one leaves the string to serde
/// (which also judges surrogates). The plain definition [`string_end_strict`] is tested
/// against.
#[cfg(test)]
pub(crate) fn is_plain_json_string(inner: &[u8], escaped: bool) -> bool {
    // One pass the compiler vectorizes; strings are most of an image's bytes.
    if inner.iter().fold(false, |bad, &c| bad | (c < 0x20)) {
        return false;
    }
    if !escaped {
        return true;
    }
    let mut i = 0;
    while let Some(k) = memchr::memchr(b'\\', &inner[i..]) {
        i += k + 1;
        match inner.get(i) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 1,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 1024,
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]
        /// Sixteen and eight bytes at a time find the byte a byte-by-byte search finds,
        /// whatever surrounds it (bytes just above and below the ones searched for, high bytes
        /// that could borrow or compare as negative) and wherever it falls: in the first block,
        /// a later one, a word after the blocks, the last bytes.
        #[test]
        fn the_block_and_word_scans_find_what_a_byte_scan_finds(
            bytes in proptest::collection::vec(proptest::sample::select(vec![
                b'a', b'"', b'\\', 0x00, 0x01, 0x1f, b' ', b'!', b'#', b'[', b']', 0x5d,
                0x7f, 0x80, 0x81, 0xa0, 0xdc, 0xe2, 0xff,
            ]), 0..56),
            from in 0usize..12,
        ) {
            let from = from.min(bytes.len());
            let naive = |strict: bool| bytes[from..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || (strict && c < 0x20))
                .map(|k| from + k);
            proptest::prop_assert_eq!(find_special::<true>(&bytes, from), naive(true));
            proptest::prop_assert_eq!(find_special::<false>(&bytes, from), naive(false));
        }
    }

    /// JSON values as text: every kind, nested a few levels, strings with the escapes a
    /// validating reader must judge.
    fn json_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            Just("0".to_string()),
            Just("-12.50e+3".to_string()),
            Just("1E-7".to_string()),
            Just(r#""plain""#.to_string()),
            Just(r#""tab\t quote\" slash\/""#.to_string()),
            Just(r#""\u00e9\ud800""#.to_string()),
            Just("\"Zürich €\"".to_string()),
            Just(r#""""#.to_string()),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                proptest::collection::vec(inner, 0..4).prop_map(|v| {
                    let members: Vec<String> = v
                        .iter()
                        .enumerate()
                        .map(|(k, v)| format!("\"k{k}\" : {v}"))
                        .collect();
                    format!("{{ {} }}", members.join(" ,\n"))
                }),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 2048,
            failure_persistence: None,
            ..proptest::prelude::ProptestConfig::default()
        })]
        /// What the one-pass check accepts, serde accepts, and it ends where `value_end` ends;
        /// whole values are accepted unless they hold a `\u` escape (left to serde). Edited
        /// values (bytes deleted, replaced or inserted) probe the refusals.
        #[test]
        fn the_one_pass_check_accepts_only_what_serde_accepts(
            value in json_text(),
            edits in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), 0u8..3, 0usize..20), 0..3),
            tail in proptest::sample::select(vec!["", ",", "}", " ", "x", "1", "\"", ":"]),
        ) {
            let mut text = value.clone().into_bytes();
            for (at, kind, byte) in &edits {
                let i = at.index(text.len() + 1);
                let c = b"{}[]\",:\\n1 e.-+0tu\x01a"[*byte];
                match kind {
                    0 if i < text.len() => { text.remove(i); }
                    1 if i < text.len() => text[i] = c,
                    _ => text.insert(i, c),
                }
            }
            text.extend_from_slice(tail.as_bytes());
            let Ok(text) = String::from_utf8(text) else { return Ok(()) };
            let b = text.as_bytes();
            if let Some(end) = json_end(b, 0) {
                proptest::prop_assert!(is_json(&text[..end]), "{text}");
                proptest::prop_assert_eq!(value_end(b, 0), Some(end), "{}", text);
            }
            if edits.is_empty() && !value.contains("\\u") && [",", "}", " ", ""].contains(&tail) {
                proptest::prop_assert_eq!(json_end(b, 0), Some(value.len()), "{}", text);
            }
        }
    }

    #[test]
    fn a_whole_number_is_one_serde_reads_as_a_number() {
        for text in [
            "0", "-0", "12", "-1.50", "1e5", "1E+5", "2.5e-3", "01", "-", "1.", ".5", "1e", "1e+",
            "+1", "1.5.2", "--1", "0x1", "1 ", "",
        ] {
            let whole = number_end(text.as_bytes(), 0) == Some(text.len());
            let serde =
                serde_json::from_str::<serde_json::Number>(text).is_ok() && !text.ends_with(' ');
            assert_eq!(whole, serde, "{text:?}");
            assert_eq!(
                crate::pipeline::convert::is_json_number(text),
                whole,
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_one_pass_check_leaves_deep_nesting_to_serde() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        let deep = nested(MAX_DEPTH as usize);
        assert_eq!(json_end(deep.as_bytes(), 0), Some(deep.len()));
        assert_eq!(json_end(nested(MAX_DEPTH as usize + 1).as_bytes(), 0), None);
        assert!(is_json(&nested(200)), "serde skips any depth");
        let objects = format!("{}1{}", r#"{"a":"#.repeat(60), "}".repeat(60));
        assert_eq!(json_end(objects.as_bytes(), 0), Some(objects.len()));
        for refused in [
            "[1,]",
            r#"{"a":1,}"#,
            "[1 2]",
            r#"{"a" 1}"#,
            "01",
            "1.",
            "-",
            "tru",
            r#""\x""#,
            "\"a\u{1}\"",
            "[",
            r#"{1:2}"#,
        ] {
            assert_eq!(json_end(refused.as_bytes(), 0), None, "{refused}");
        }
    }

    #[test]
    fn members_are_walked_in_order_or_not_at_all() {
        let names = |t| {
            let mut names = Vec::new();
            members(t, |n, _| {
                names.push(n);
                Some(true)
            })
            .map(|_| names)
        };
        assert_eq!(
            names(r#" { "sk" : {"N":"1"}, "pk":{"S":"a,\"}"} } "#),
            Some(vec!["sk", "pk"])
        );
        assert_eq!(names("{}"), Some(vec![]));
        for text in [
            r#"{"p\u006b":{"S":"a"}}"#,
            "[]",
            r#"{"pk" {"S":"a"}}"#,
            r#"{"pk":1"#,
        ] {
            assert_eq!(names(text), None, "{text}");
        }
    }

    #[test]
    fn the_strict_end_of_a_string_agrees_with_the_plain_check() {
        let long = "x".repeat(40);
        for inner in [
            "abc".to_string(),
            format!("{long}\\\"{long}"),
            format!("{long}\u{1}"),
            format!("{long}\\u0041"),
            format!("{long}\\q{long}"),
            format!("a\\nb{long}\\t"),
            format!("{long}\\\\"),
            String::new(),
        ] {
            let text = format!("\"{inner}\" tail");
            let b = text.as_bytes();
            let (end, escaped) = string_end_escaped(b, 0).unwrap();
            let plain = is_plain_json_string(&b[1..end], escaped);
            assert_eq!(
                string_end_strict(b, 0),
                plain.then_some((end, escaped)),
                "{inner:?}"
            );
        }
        assert_eq!(string_end_strict(b"\"abc", 0), None);
        assert_eq!(string_end_strict(b"\"ab\\", 0), None);
    }

    #[test]
    fn a_plain_string_is_one_serde_reads_without_unicode_escapes() {
        for (inner, plain) in [
            ("abc", true),
            ("Zürich", true),
            (r#"a\"b\\c\/d\n\t\r\b\f"#, true),
            ("a\u{1}b", false),
            ("tab\there", false),
            (r"\x", false),
            (r"\u00e9", false),
            ("", true),
        ] {
            let escaped = inner.contains('\\');
            assert_eq!(
                is_plain_json_string(inner.as_bytes(), escaped),
                plain,
                "{inner:?}"
            );
            if plain {
                assert!(is_json(&format!("\"{inner}\"")), "{inner:?}");
            }
        }
    }
}
