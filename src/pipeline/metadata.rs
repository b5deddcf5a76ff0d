//! Stream metadata written into each document (`METADATA_FIELDS`), so that users can sort or
//! filter by change time or find the record that wrote a document: `table`, `event_name`,
//! `stream_time` (the change's `ApproximateCreationDateTime` in epoch milliseconds),
//! `sequence_number`, `event_id`, each under `METADATA_PREFIX` (default `ddb_`).

use crate::pipeline::SettingError;
use crate::pipeline::convert::{write_json_str, write_member_name};

/// The configured fields; [`Metadata::default`] writes none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Each field and its name in the document.
    fields: Vec<(Field, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Table,
    EventName,
    StreamTime,
    SequenceNumber,
    EventId,
}

const FIELDS: [(&str, Field); 5] = [
    ("table", Field::Table),
    ("event_name", Field::EventName),
    ("stream_time", Field::StreamTime),
    ("sequence_number", Field::SequenceNumber),
    ("event_id", Field::EventId),
];

/// What a record says about itself, for its document's metadata fields.
pub struct RecordFacts<'a> {
    pub table: Option<&'a str>,
    pub event_name: &'a str,
    pub stream_time_ms: Option<u64>,
    pub sequence_number: Option<&'a str>,
    pub event_id: Option<&'a str>,
}

impl Metadata {
    /// From `METADATA_FIELDS` (comma-separated) and `METADATA_PREFIX`.
    pub fn parse(fields: Option<&str>, prefix: Option<&str>) -> Result<Metadata, SettingError> {
        let prefix = prefix.unwrap_or("ddb_");
        let Some(list) = fields else {
            return Ok(Metadata::default());
        };
        if prefix.is_empty() || prefix.starts_with('_') || prefix.contains('.') {
            return Err(SettingError::new(
                "METADATA_PREFIX",
                "must be non-empty, not start with _ and hold no dot",
            ));
        }
        let mut out = Vec::new();
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let Some((_, field)) = FIELDS.iter().find(|(n, _)| *n == name) else {
                return Err(SettingError::new(
                    "METADATA_FIELDS",
                    format!(
                        "{name:?} is not one of table, event_name, stream_time, sequence_number, event_id"
                    ),
                ));
            };
            if !out.iter().any(|(f, _)| f == field) {
                out.push((*field, format!("{prefix}{name}")));
            }
        }
        Ok(Metadata { fields: out })
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Whether documents get the table's name.
    pub fn writes_table(&self) -> bool {
        self.fields.iter().any(|(f, _)| *f == Field::Table)
    }

    /// The document field names this writes (an item attribute of such a name is refused).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(_, n)| n.as_str())
    }

    /// Appends the fields to a document (`{...}`, closing brace last).
    pub fn write(&self, doc: &mut Vec<u8>, facts: &RecordFacts<'_>) {
        if self.fields.is_empty() {
            return;
        }
        doc.pop();
        for (field, name) in &self.fields {
            write_member_name(doc, name);
            let text = match field {
                Field::Table => facts.table,
                Field::EventName => Some(facts.event_name),
                Field::SequenceNumber => facts.sequence_number,
                Field::EventId => facts.event_id,
                Field::StreamTime => {
                    match facts.stream_time_ms {
                        Some(ms) => doc.extend_from_slice(ms.to_string().as_bytes()),
                        None => doc.extend_from_slice(b"null"),
                    }
                    continue;
                }
            };
            match text {
                Some(t) => write_json_str(doc, t),
                None => doc.extend_from_slice(b"null"),
            }
        }
        doc.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_chosen_fields_under_the_prefix() {
        let m = Metadata::parse(Some("table, stream_time,event_name"), None).unwrap();
        let mut doc = br#"{"pk":"a"}"#.to_vec();
        m.write(
            &mut doc,
            &RecordFacts {
                table: Some("Shop"),
                event_name: "MODIFY",
                stream_time_ms: Some(1_700_000_000_000),
                sequence_number: Some("1"),
                event_id: None,
            },
        );
        assert_eq!(
            String::from_utf8(doc).unwrap(),
            r#"{"pk":"a","ddb_table":"Shop","ddb_stream_time":1700000000000,"ddb_event_name":"MODIFY"}"#
        );
        assert_eq!(
            Metadata::parse(Some("when"), None).unwrap_err().variable,
            "METADATA_FIELDS"
        );
        assert_eq!(
            Metadata::parse(Some("table"), Some("_x"))
                .unwrap_err()
                .variable,
            "METADATA_PREFIX"
        );
        assert!(Metadata::parse(None, None).unwrap().is_empty());
    }

    #[test]
    fn says_whether_it_writes_the_table() {
        assert!(m("event_name, table").writes_table());
        assert!(!m("event_name,stream_time,sequence_number,event_id").writes_table());
        assert!(!Metadata::default().writes_table());
    }

    fn m(fields: &str) -> Metadata {
        Metadata::parse(Some(fields), None).unwrap()
    }
}
