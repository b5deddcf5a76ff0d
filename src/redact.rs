//! Failure reasons as they may appear in logs: without item values or key values.
//!
//! A reason is free text from several sources: OpenSearch (`in document with id '…'`,
//! `failed to parse date field [2024-13-45]`, `Preview of field's value: '…'`, Lucene's
//! `prefix '[83, 69, …]'`, ingest's `field value: [...]`), serde (`invalid type: string "…"`,
//! `integer `5``) and this crate (`invalid number text "…"`). The whole reason is kept where
//! the record itself is kept (the quarantine entry); logs get [`reason`]: quoted text becomes
//! `…`, and bracketed text is kept only where OpenSearch's messages put a field name or a
//! mapping type there (`field [a.b] of type [long]`, `object field [a]`, `mapper [a] … from type
//! [long] to [float]`, `introduction of [a] within [_doc]`). After any other bracket the rest
//! of that reason part is dropped, since a value may itself hold brackets or quotes.
//!
//! Two more rules fail closed:
//! - **Ambiguous quoting.** OpenSearch and Java do not escape quotes inside the values they
//!   quote (`For input string: "1" SSN 123-45-6789"`). A quotation whose closing quote is
//!   followed by a letter or digit, or after which the rest of the part holds an odd number of
//!   that quote (apostrophes inside words not counted), may have ended early: the rest of that
//!   part is dropped.
//! - **Nested map keys.** In many schemas a map's keys are data (emails, user ids). An attribute
//!   path (`NewImage: m.user@example.com[1]: ...`) and a bracketed field name
//!   (`object field [m.user@example.com]`) keep their top-level name, which is schema, and show
//!   the rest as a short digest (`m.#1a2b3c4d`), the same for the same path, so that log lines
//!   can still be grouped and matched to the quarantine entry's full reason.
//!
//! This is for display only: no decision reads a reason's text.

/// What replaces a redacted value.
const HIDDEN: &str = "…";

/// Separates the parts of a reason built from a `caused_by` chain.
const PART_SEPARATOR: &str = "; caused by ";

/// The reason without item values, for logs.
pub fn reason(text: &str) -> String {
    text.split(PART_SEPARATOR)
        .map(part)
        .collect::<Vec<_>>()
        .join(PART_SEPARATOR)
}

/// Where our own reasons name an attribute path: `NewImage: <path>: reason`.
const PATH_PREFIXES: [&str; 2] = ["NewImage: ", "OldImage: "];

/// One part of a reason: attribute paths first, then quotations and brackets.
fn part(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((at, prefix)) = PATH_PREFIXES
        .iter()
        .filter_map(|p| rest.find(p).map(|at| (at, *p)))
        .min()
    {
        let path_start = at + prefix.len();
        let Some(len) = rest[path_start..].find(": ") else {
            break;
        };
        shown.push_str(&quoted(&rest[..path_start]));
        shown.push_str(&nested(&rest[path_start..path_start + len]));
        rest = &rest[path_start + len..];
    }
    shown.push_str(&quoted(rest));
    shown
}

/// An attribute path with everything below its top-level name as a short digest.
fn nested(path: &str) -> String {
    use sha2::{Digest, Sha256};
    let top = path.find(['.', '[']).unwrap_or(path.len());
    if top == path.len() {
        return path.to_string();
    }
    let hex = format!("{:x}", Sha256::digest(&path.as_bytes()[top..]));
    format!("{}.#{}", &path[..top], &hex[..8])
}

/// Whether the quotation that ended at `inner[end]` may have ended early (module docs).
fn ambiguous(inner: &str, end: usize, quote: u8) -> bool {
    let bytes = inner.as_bytes();
    if bytes
        .get(end + 1)
        .is_some_and(|b| b.is_ascii_alphanumeric())
    {
        return true;
    }
    let counted = (end + 1..bytes.len())
        .filter(|&i| bytes[i] == quote)
        .filter(|&i| {
            // An apostrophe inside a word ("field's") is not a quote.
            quote != b'\''
                || !(i > 0
                    && bytes[i - 1].is_ascii_alphanumeric()
                    && bytes.get(i + 1).is_some_and(|b| b.is_ascii_alphanumeric()))
        })
        .count();
    counted % 2 == 1
}

/// Quotations and brackets of one part.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(['"', '\'', '`', '[']) {
        let (before, from) = rest.split_at(at);
        out.push_str(before);
        let open = from.as_bytes()[0];
        let inner = &from[1..];
        match open {
            b'[' => match kept_bracket(&out, inner) {
                Some(len) => {
                    out.push('[');
                    out.push_str(&nested(&inner[..len]));
                    out.push(']');
                    rest = &inner[len + 1..];
                }
                None => {
                    out.push('[');
                    out.push_str(HIDDEN);
                    out.push(']');
                    return out;
                }
            },
            b'\'' if !opens_single_quote(&out) => {
                // An apostrophe ("field's", "can't"), not a quotation.
                out.push('\'');
                rest = inner;
            }
            b'`' if out.ends_with("field ") => {
                // serde's "missing field `x`" / "unknown field `x`": a field name.
                match inner.find('`') {
                    Some(end) => {
                        out.push_str(&from[..end + 2]);
                        rest = &inner[end + 1..];
                    }
                    None => return hidden_to_end(out, open),
                }
            }
            quote => match closing_quote(inner, quote) {
                Some(end) if ambiguous(inner, end, quote) => return hidden_to_end(out, quote),
                Some(end) => {
                    out.push(quote as char);
                    out.push_str(HIDDEN);
                    out.push(quote as char);
                    rest = &inner[end + 1..];
                }
                None => return hidden_to_end(out, quote),
            },
        }
    }
    out.push_str(rest);
    out
}

/// An unclosed quotation: nothing after it can be shown.
fn hidden_to_end(mut out: String, quote: u8) -> String {
    out.push(quote as char);
    out.push_str(HIDDEN);
    out
}

/// A single quote opens a quotation after a space, an opening bracket, `=`, `:` or at the
/// start; otherwise it is an apostrophe.
fn opens_single_quote(before: &str) -> bool {
    before
        .chars()
        .next_back()
        .is_none_or(|c| c.is_whitespace() || matches!(c, '(' | '[' | '=' | ':' | ','))
}

/// Where a quotation that starts `inner` ends (the index of its closing quote). Double quotes
/// honour backslash escapes (serde and JSON quote that way); a single quote closes only before
/// a non-word character or the end, so an apostrophe inside the value does not end it early.
fn closing_quote(inner: &str, quote: u8) -> Option<usize> {
    let bytes = inner.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if quote == b'"' && b == b'\\' {
            i += 2;
            continue;
        }
        if b == quote {
            let next = bytes.get(i + 1);
            if quote != b'\'' || next.is_none_or(|n| !n.is_ascii_alphanumeric()) {
                return Some(i);
            }
        }
        i += 1;
    }
    None
}

/// The length of a bracketed field name or type that may be shown (`inner` starts just after
/// the `[`), or `None` when the bracket may hold a value.
fn kept_bracket(before: &str, inner: &str) -> Option<usize> {
    // A list index in an attribute path (`m.list[1]`, `a[0][2]`): digits right after a name.
    let end = inner.find(']');
    if before
        .chars()
        .next_back()
        .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ']')
        && let Some(end) = end
        && end > 0
        && inner[..end].bytes().all(|b| b.is_ascii_digit())
    {
        return Some(end);
    }
    let lower = before.to_ascii_lowercase();
    let context = lower.trim_end();
    // `failed to parse field [x] of type [t]`: the name is whatever precedes "] of type [",
    // which also rules out "failed to parse date field [value] with format [...]".
    if context.ends_with(" field")
        && !context.ends_with("date field")
        && let Some(end) = inner.find("] of type [")
    {
        return Some(end);
    }
    let name_contexts = [
        "object field",
        "mapper",
        "of type",
        "from type",
        "introduction of",
        "within",
        "mapping depth",
        "total fields",
    ];
    let after_type = context.ends_with(" to") && lower.contains("from type [");
    if name_contexts.iter().any(|c| context.ends_with(c)) || after_type {
        return end;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each reason format seen in the wild, with a value that must not survive.
    #[test]
    fn values_are_hidden_and_field_names_kept() {
        let cases = [
            (
                "400 mapper_parsing_exception: failed to parse field [price] of type [long] in document with id 'USER#secret-key'. Preview of field's value: 'not a number'",
                "400 mapper_parsing_exception: failed to parse field [price] of type [long] in document with id '…'. Preview of field's value: '…'",
            ),
            (
                "400 mapper_parsing_exception: failed to parse date field [secret-2024-13-45] with format [strict_date_optional_time]",
                "400 mapper_parsing_exception: failed to parse date field […]",
            ),
            (
                "400 illegal_argument_exception: Document contains at least one immense term in field=\"body\" (whose UTF8 encoding is longer than the max length 32766), all of which were skipped. The prefix of the first immense term is: '[83, 69, 67, 82, 69, 84]...', original message: bytes can be at most 32766 in length; got 40000",
                "400 illegal_argument_exception: Document contains at least one immense term in field=\"…\" (whose UTF8 encoding is longer than the max length 32766), all of which were skipped. The prefix of the first immense term is: '…', original message: bytes can be at most 32766 in length; got 40000",
            ),
            (
                "500 exception: java.lang.IllegalArgumentException: Provided Grok expressions do not match field value: [secret value with ] and more]",
                "500 exception: java.lang.IllegalArgumentException: Provided Grok expressions do not match field value: […]",
            ),
            (
                "record is not a stream record: invalid type: string \"secret \\\" quoted\", expected a map",
                "record is not a stream record: invalid type: string \"…\", expected a map",
            ),
            (
                "NewImage: n: invalid type: integer `12345`, expected a string",
                "NewImage: n: invalid type: integer `…`, expected a string",
            ),
            (
                "NewImage: m.list[1]: invalid number text \"12secret\"",
                &format!(
                    "NewImage: m.#{}: invalid number text \"…\"",
                    digest(".list[1]")
                ),
            ),
            (
                "409 version_conflict_engine_exception: [USER#secret]: version conflict, current version [9]",
                "409 version_conflict_engine_exception: […]",
            ),
            (
                "400 mapper_parsing_exception: failed to parse; caused by illegal_argument_exception: mapper [status] cannot be changed from type [long] to [text]",
                "400 mapper_parsing_exception: failed to parse; caused by illegal_argument_exception: mapper [status] cannot be changed from type [long] to [text]",
            ),
            (
                "400 strict_dynamic_mapping_exception: mapping set to strict, dynamic introduction of [email] within [_doc] is not allowed",
                "400 strict_dynamic_mapping_exception: mapping set to strict, dynamic introduction of [email] within [_doc] is not allowed",
            ),
            (
                "400 mapper_parsing_exception: failed to parse; caused by number_format_exception: For input string: \"secret\"",
                "400 mapper_parsing_exception: failed to parse; caused by number_format_exception: For input string: \"…\"",
            ),
            (
                "400 mapper_parsing_exception: failed to parse; caused by illegal_argument_exception: Limit of mapping depth [20] has been exceeded due to object field [a.a.a]",
                &format!(
                    "400 mapper_parsing_exception: failed to parse; caused by illegal_argument_exception: Limit of mapping depth [20] has been exceeded due to object field [a.#{}]",
                    digest(".a.a")
                ),
            ),
            (
                "record is not a stream record: missing field `SequenceNumber`",
                "record is not a stream record: missing field `SequenceNumber`",
            ),
            (
                "NewImage: x: unclosed 'secret and the rest",
                "NewImage: x: unclosed '…",
            ),
        ];
        for (input, expected) in cases {
            let got = reason(input);
            assert_eq!(got, expected, "{input}");
            assert!(!got.to_lowercase().contains("secret"), "{got}");
        }
    }

    fn digest(text: &str) -> String {
        use sha2::{Digest, Sha256};
        format!("{:x}", Sha256::digest(text.as_bytes()))[..8].to_string()
    }

    /// Quotes inside an unescaped quoted value: the rest of the part is dropped, never shown.
    #[test]
    fn ambiguous_quoting_drops_the_rest_of_the_part() {
        let cases = [
            (
                "400 mapper_parsing_exception: failed to parse; caused by number_format_exception: For input string: \"1\" SSN 123-45-6789\"",
                "400 mapper_parsing_exception: failed to parse; caused by number_format_exception: For input string: \"…",
            ),
            ("For input string: \"1\"6789 x\"", "For input string: \"…"),
            ("value '1' SSN 123-45-6789' here", "value '…"),
            // The next part is still shown.
            (
                "a: \"x\" 6789\"; caused by illegal_argument_exception: mapper [n] cannot be changed from type [long] to [text]",
                "a: \"…; caused by illegal_argument_exception: mapper [n] cannot be changed from type [long] to [text]",
            ),
        ];
        for (input, expected) in cases {
            let got = reason(input);
            assert_eq!(got, expected, "{input}");
            assert!(!got.contains("6789"), "{got}");
        }
        // Two well-formed quotations and an apostrophe stay as they were.
        assert_eq!(
            reason("expected \"a\" or \"b\", the field's value 'c'"),
            "expected \"…\" or \"…\", the field's value '…'"
        );
    }

    /// Map keys below the top level are data in many schemas: a digest, the same for the same
    /// path, stands for them.
    #[test]
    fn nested_map_keys_become_a_digest() {
        let got = reason(
            "NewImage: contacts.jane@example.com[2]: number of magnitude 1E400 is outside DynamoDB's range",
        );
        assert_eq!(
            got,
            format!(
                "NewImage: contacts.#{}: number of magnitude 1E400 is outside DynamoDB's range",
                digest(".jane@example.com[2]")
            )
        );
        assert!(!got.contains("jane"), "{got}");
        assert_eq!(
            got,
            reason(
                "NewImage: contacts.jane@example.com[2]: number of magnitude 1E400 is outside DynamoDB's range"
            )
        );
        let got = reason("OldImage: m.user-42.x: invalid; caused by x: object field [m.user-42]");
        assert!(!got.contains("user-42"), "{got}");
        // A top-level name is schema, and stays.
        assert_eq!(
            reason("NewImage: price: invalid number"),
            "NewImage: price: invalid number"
        );
    }

    #[test]
    fn text_without_values_is_unchanged() {
        for text in [
            "not attempted before the deadline",
            "413 request entity too large (7340032 bytes) for a single document",
            "key attribute pk has different values in Keys and NewImage",
            "it can't be applied",
        ] {
            assert_eq!(reason(text), text);
        }
    }
}
