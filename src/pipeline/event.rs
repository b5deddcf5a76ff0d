//! The one-pass reading of a DynamoDB Streams event: the records' envelopes read by hand, each
//! NewImage located but not read, so that converting it (`convert`'s strict fast path) is the
//! only pass over the bulk of the payload.
//!
//! Why by hand: serde's derive for [`StreamRecord`] captures each image as a `RawValue`, which
//! validates every byte of it; the conversion then reads the same bytes again. That first scan
//! cost as much as the conversion itself.
//!
//! [`read`] is a shortcut, never a second definition: it gives up (`None`) on anything serde's
//! derive might read differently — a field named with an escape, a repeated field, a value of an
//! unexpected type — and `plan::plan` then parses the event with serde from the start. Every
//! value it does not read itself is checked as serde would check it (as a `RawValue`: grammar,
//! any nesting), by `scan::json_end` in the pass that finds its end or by serde where that pass
//! leaves the judgement to serde, except `Keys` and the NewImage, which `plan` checks where
//! their own readings (the key parse, the conversion) did not succeed. The property test
//! `the_one_pass_plan_is_the_serde_plan` holds the two readings equal on mutated events.

use std::borrow::Cow;

use crate::pipeline::change::{EarlyDocument, Object, StreamData, StreamRecord, UserIdentity};
use crate::pipeline::convert::is_json_number;
use crate::pipeline::scan::{
    is_json, json_end, skip_ws, string_end_escaped, string_end_strict, value_end,
};

/// The records of a stream event, as serde's derive would read them, each handed to `each` as
/// soon as it is read (while its bytes are still in cache); `None` where only serde may decide
/// (the event may still be valid), or where `each` says so. A caller that gets `None` must
/// discard what `each` was given.
///
/// `early` converts a NewImage where the reading meets it, if the record's `Keys` came before
/// it (as in the events DynamoDB Streams sends): given the Keys' text and the payload from the
/// image on, the image's length and its document; `None` leaves the image to be located here
/// and converted later. Converting it here is what spares the reading a pass over it.
pub(crate) fn read<'a>(
    payload: &'a str,
    early: impl FnMut(&'a str, &'a str) -> Option<(usize, EarlyDocument<'a>)>,
    mut each: impl FnMut(StreamRecord<'a>) -> Option<()>,
) -> Option<()> {
    let mut r = Reader {
        text: payload,
        b: payload.as_bytes(),
        i: 0,
        early,
    };
    let mut records = None;
    r.members(|r, name| match name {
        "Records" => {
            r.records(&mut each)?;
            set_once(&mut records, ())
        }
        _ => r.skip_value(),
    })?;
    r.i = skip_ws(r.b, r.i);
    (r.i == r.b.len()).then_some(())?;
    records
}

/// A field serde's derive reads once: a second occurrence is its error, so give up.
fn set_once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    slot.is_none().then(|| *slot = Some(value))
}

struct Reader<'a, F> {
    text: &'a str,
    b: &'a [u8],
    i: usize,
    early: F,
}

impl<'a, F> Reader<'a, F>
where
    F: FnMut(&'a str, &'a str) -> Option<(usize, EarlyDocument<'a>)>,
{
    fn expect(&mut self, c: u8) -> Option<()> {
        self.i = skip_ws(self.b, self.i);
        (self.b.get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    fn peek(&mut self) -> Option<u8> {
        self.i = skip_ws(self.b, self.i);
        self.b.get(self.i).copied()
    }

    /// `null` (consumed: `true`), as serde's `Option` reads it.
    fn null(&mut self) -> bool {
        let null = self.peek() == Some(b'n') && self.b[self.i..].starts_with(b"null");
        if null {
            self.i += 4;
        }
        null
    }

    /// An object; `member` reads each value. Names must be plain (serde's derive matches a name
    /// after unescaping it).
    fn members(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.expect(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Some(());
        }
        loop {
            self.expect(b'"')?;
            let open = self.i - 1;
            let (end, escaped) = string_end_strict(self.b, open)?;
            if escaped {
                return None;
            }
            let name = &self.text[open + 1..end];
            self.i = end + 1;
            self.expect(b':')?;
            member(self, name)?;
            if !self.more(b'}')? {
                return Some(());
            }
        }
    }

    /// After a member or element: `true` at `,`, `false` at `close` (both consumed).
    fn more(&mut self, close: u8) -> Option<bool> {
        let c = self.peek()?;
        self.i += 1;
        match c {
            b',' => Some(true),
            c if c == close => Some(false),
            _ => None,
        }
    }

    /// A value this reading does not use: its extent, checked (strings and numbers here, the
    /// rest by serde).
    fn skip_value(&mut self) -> Option<()> {
        let start = skip_ws(self.b, self.i);
        match self.b.get(start)? {
            b'"' => {
                let end = match string_end_strict(self.b, start) {
                    Some((end, _)) => end,
                    // A `\u` escape, a control character, a bad escape: serde judges it.
                    None => {
                        let (end, _) = string_end_escaped(self.b, start)?;
                        is_json(&self.text[start..=end]).then_some(end)?
                    }
                };
                self.i = end + 1;
                Some(())
            }
            b'-' | b'0'..=b'9' => {
                let end = value_end(self.b, start)?;
                is_json_number(&self.text[start..end]).then(|| self.i = end)
            }
            _ => self.raw(true).map(|_| ()),
        }
    }

    /// A value's text as it stands; checked as serde would unless `check` is false (the
    /// NewImage): in the same pass that finds its end, or by serde where that pass leaves it
    /// to serde.
    fn raw(&mut self, check: bool) -> Option<&'a str> {
        let start = skip_ws(self.b, self.i);
        let end = match check.then(|| json_end(self.b, start)).flatten() {
            Some(end) => end,
            None => {
                let end = value_end(self.b, start)?;
                if check && !is_json(&self.text[start..end]) {
                    return None;
                }
                end
            }
        };
        self.i = end;
        Some(&self.text[start..end])
    }

    /// The NewImage here (an object), converted by `early` for the `Keys` read before it.
    fn early_image(&mut self, keys: Option<&'a str>) -> Option<(&'a str, EarlyDocument<'a>)> {
        let keys = keys?;
        if self.peek()? != b'{' {
            return None;
        }
        let start = self.i;
        let (len, document) = (self.early)(keys, &self.text[start..])?;
        self.i = start + len;
        Some((&self.text[start..self.i], document))
    }

    /// `Option<T>` as serde reads it: `null` is none, anything else is `read`'s.
    fn or_null<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        if self.null() {
            return Some(None);
        }
        read(self).map(Some)
    }

    /// `Option<&RawValue>`: `null` is none.
    fn raw_or_null(&mut self, check: bool) -> Option<Option<&'a str>> {
        self.or_null(|r| r.raw(check))
    }

    /// `Option<Cow<str>>`: a string (borrowed unless it has escapes), or `null`.
    fn text_or_null(&mut self) -> Option<Option<Cow<'a, str>>> {
        self.or_null(Self::text)
    }

    fn text(&mut self) -> Option<Cow<'a, str>> {
        if self.peek()? != b'"' {
            return None;
        }
        let (end, text) = match string_end_strict(self.b, self.i) {
            Some((end, false)) => (end, Cow::Borrowed(&self.text[self.i + 1..end])),
            // Escapes (or what serde refuses): serde reads it.
            _ => {
                let (end, _) = string_end_escaped(self.b, self.i)?;
                let token = &self.text[self.i..=end];
                (end, serde_json::from_str::<Cow<'a, str>>(token).ok()?)
            }
        };
        self.i = end + 1;
        Some(text)
    }

    /// `Option<f64>` from a JSON number, or `null`.
    fn number_or_null(&mut self) -> Option<Option<f64>> {
        self.or_null(|r| serde_json::from_str::<f64>(r.raw(false)?).ok())
    }

    fn records(&mut self, each: &mut impl FnMut(StreamRecord<'a>) -> Option<()>) -> Option<()> {
        self.expect(b'[')?;
        if self.peek()? == b']' {
            self.i += 1;
            return Some(());
        }
        loop {
            each(self.record()?)?;
            if !self.more(b']')? {
                return Some(());
            }
        }
    }

    fn record(&mut self) -> Option<StreamRecord<'a>> {
        let (mut event_id, mut event_name, mut arn) = (None, None, None);
        let (mut user_identity, mut dynamodb) = (None, None);
        self.members(|r, name| match name {
            "eventID" => set_once(&mut event_id, r.text_or_null()?),
            "eventName" => set_once(&mut event_name, r.text_or_null()?),
            "eventSourceARN" => set_once(&mut arn, r.text_or_null()?),
            "userIdentity" => set_once(&mut user_identity, r.or_null(Self::user_identity)?),
            "dynamodb" => set_once(&mut dynamodb, r.or_null(Self::stream_data)?),
            _ => r.skip_value(),
        })?;
        Some(StreamRecord {
            event_id: event_id.flatten(),
            event_name: event_name.flatten(),
            event_source_arn: arn.flatten(),
            user_identity: user_identity.flatten().map(Object),
            dynamodb: dynamodb.flatten().map(Object),
        })
    }

    fn user_identity(&mut self) -> Option<UserIdentity<'a>> {
        let (mut kind, mut principal_id) = (None, None);
        self.members(|r, name| match name {
            "type" => set_once(&mut kind, r.text_or_null()?),
            "principalId" => set_once(&mut principal_id, r.text_or_null()?),
            _ => r.skip_value(),
        })?;
        Some(UserIdentity {
            kind: kind.flatten(),
            principal_id: principal_id.flatten(),
        })
    }

    fn stream_data(&mut self) -> Option<StreamData<'a>> {
        let (mut keys, mut new_image, mut old_image) = (None, None, None);
        let (mut sequence_number, mut created, mut view) = (None, None, None);
        let mut early = None;
        self.members(|r, name| match name {
            // Not read here: `Keys` is read by `docid::key_parts` (serde), the NewImage by its
            // conversion; `plan` checks them where those did not succeed.
            "Keys" => set_once(&mut keys, r.raw_or_null(false)?),
            "NewImage" => match r.early_image(keys.flatten()) {
                Some((image, document)) => {
                    early = Some(document);
                    set_once(&mut new_image, Some(image))
                }
                None => set_once(&mut new_image, r.raw_or_null(false)?),
            },
            "OldImage" => set_once(&mut old_image, r.raw_or_null(true)?),
            "SequenceNumber" => set_once(&mut sequence_number, r.text_or_null()?),
            "ApproximateCreationDateTime" => set_once(&mut created, r.number_or_null()?),
            "StreamViewType" => set_once(&mut view, r.text_or_null()?),
            _ => r.skip_value(),
        })?;
        Some(StreamData {
            keys: keys.flatten(),
            new_image: new_image.flatten(),
            old_image: old_image.flatten(),
            sequence_number: sequence_number.flatten(),
            approximate_creation_date_time: created.flatten(),
            stream_view_type: view.flatten(),
            early,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_serde_might_read_otherwise_is_left_to_serde() {
        let record = |fields: &str| format!(r#"{{"Records":[{{{fields}}}]}}"#);
        // Read here.
        for fields in [
            r#""eventID":"1","eventName":"INSERT","dynamodb":{"SequenceNumber":"5","NewImage":{"a":{"S":"x"}}}"#,
            r#""eventID":null,"dynamodb":null,"userIdentity":{"type":"Service"}"#,
            r#""eventID":"a\"b","other":[1,{"x":null}]"#,
        ] {
            assert!(
                read(&record(fields), |_, _| None, |_| Some(())).is_some(),
                "{fields}"
            );
        }
        // Given up.
        for fields in [
            r#""eventID":"1","eventID":"2""#,
            r#""event\u0049D":"1""#,
            r#""eventID":1"#,
            r#""dynamodb":[]"#,
            r#""dynamodb":{"OldImage":{"a":}}"#,
            r#""dynamodb":{"ApproximateCreationDateTime":"1"}"#,
            r#""other":[1,}"#,
        ] {
            assert!(
                read(&record(fields), |_, _| None, |_| Some(())).is_none(),
                "{fields}"
            );
        }
        assert!(read(r#"{"Records":[]} x"#, |_, _| None, |_| Some(())).is_none());
        assert!(read(r#"{"NotRecords":[]}"#, |_, _| None, |_| Some(())).is_none());
        assert!(read(r#"{"Records":[],"Records":[]}"#, |_, _| None, |_| Some(())).is_none());
    }
}
