//! The function's JSON log line: what tracing-subscriber's JSON formatter writes (with
//! `flatten_event(true)`, `with_span_list(false)`, `without_time()` and no target), written
//! straight into one buffer.
//!
//! That formatter serializes through an adaptor that turns every few bytes of serde_json's
//! output into a `fmt::Write` call, and parses the span's fields back from their JSON text for
//! every line: 25,000 instructions for the invocation's summary line (16 fields), 13% of a
//! one-record invocation's. Here the line is the level, the event's fields in the order they
//! were recorded, and the current span's stored JSON fields and its name under `"span"`.
//! `lines_are_the_json_formatters` holds it to that formatter, byte for byte.

use std::fmt;

use serde::Serialize;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// Formats events as one JSON object per line (see the module comment). Spans' fields must be
/// stored as JSON ([`JsonFields`], what `.json()` sets).
pub struct JsonLine;

impl<S> FormatEvent<S, JsonFields> for JsonLine
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // A `log` record's level as the `log` crate gave it, as the JSON formatter reads it.
        let normalized = tracing_log::NormalizeEvent::normalized_metadata(event);
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        let mut line = Vec::with_capacity(512);
        line.extend_from_slice(b"{\"level\":\"");
        line.extend_from_slice(meta.level().as_str().as_bytes());
        line.push(b'"');
        event.record(&mut Fields { line: &mut line });
        let span = event
            .parent()
            .and_then(|id| ctx.span(id))
            .or_else(|| ctx.lookup_current());
        if let Some(span) = span {
            line.extend_from_slice(b",\"span\":{");
            let extensions = span.extensions();
            // The span's fields as JsonFields stored them: one JSON object, keys sorted.
            let stored = extensions
                .get::<FormattedFields<JsonFields>>()
                .map(|f| f.fields.as_str())
                .unwrap_or("");
            let inner = stored
                .strip_prefix('{')
                .and_then(|s| s.strip_suffix('}'))
                .unwrap_or("");
            if !inner.is_empty() {
                line.extend_from_slice(inner.as_bytes());
                line.push(b',');
            }
            line.extend_from_slice(b"\"name\":");
            json(&mut line, span.metadata().name());
            line.push(b'}');
        }
        line.extend_from_slice(b"}\n");
        // Only serde_json's output and whole UTF-8 strings went in.
        writer.write_str(std::str::from_utf8(&line).map_err(|_| fmt::Error)?)
    }
}

/// Appends `value` as serde_json writes it (a string escaped and quoted, a number, a bool).
fn json(line: &mut Vec<u8>, value: impl Serialize) {
    // Writing to a Vec fails only for values that cannot be JSON, and none of these is one.
    let _ = serde_json::to_writer(&mut *line, &value);
}

/// The event's fields as `,"name":value`, as tracing-serde's map visitor writes them: the same
/// methods, so that any other kind of value falls to the same default (its Debug text).
struct Fields<'l> {
    line: &'l mut Vec<u8>,
}

impl Fields<'_> {
    fn entry(&mut self, field: &Field, value: impl Serialize) {
        self.line.push(b',');
        json(self.line, field.name());
        self.line.push(b':');
        json(self.line, value);
    }
}

impl Visit for Fields<'_> {
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, format!("{value:?}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, value);
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, value);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    #[derive(Clone, Default)]
    struct Written(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Written {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Written {
        type Writer = Written;
        fn make_writer(&'a self) -> Written {
            self.clone()
        }
    }

    #[derive(Debug)]
    struct Failure;

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("it \"failed\"\n\ton line 2")
        }
    }

    impl std::error::Error for Failure {}

    /// Every kind of field and span the function logs, and more.
    fn events() {
        let text = "quotes \" backslash \\ newline \n tab \t nul \u{0} escape \u{1b}[31m é ✓ 🦀";
        tracing::info!("no span, no fields");
        tracing::warn!(
            records = 3u64,
            ms = -4i64,
            ratio = 0.25,
            complete = true,
            "plain"
        );
        tracing::error!(
            nan = f64::NAN,
            inf = f64::INFINITY,
            big = u128::MAX,
            small = i128::MIN,
            error = &Failure as &(dyn std::error::Error + 'static),
            text,
            debug = ?vec![text],
            display = %text,
            "message with {} and {:?}",
            text,
            text
        );
        let invoke = tracing::info_span!(
            "Lambda runtime invoke",
            requestId = "8697c7b3",
            xrayTraceId = text,
            count = 2
        );
        invoke.in_scope(|| {
            tracing::info!(records = 8, indexed = 3, "all 8 records accounted for");
            let inner = tracing::debug_span!("inner", z = 1, a = "x");
            inner.in_scope(|| {
                tracing::debug!("in the inner span");
                tracing::info!(parent: &invoke, "with an explicit parent, not the current span");
            });
        });
        let empty = tracing::info_span!("no fields");
        empty.in_scope(|| tracing::warn!(message = "a message field", other = 1));
        let later =
            tracing::info_span!("recorded later", first = 1, second = tracing::field::Empty);
        later.record("second", "two");
        later.in_scope(|| tracing::info!(""));
    }

    fn written(json_line: bool) -> String {
        let out = Written::default();
        let builder = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .without_time()
            .with_target(false)
            .with_max_level(tracing::Level::TRACE)
            .with_writer(out.clone());
        if json_line {
            tracing::subscriber::with_default(builder.event_format(JsonLine).finish(), events);
        } else {
            tracing::subscriber::with_default(builder.finish(), events);
        }
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn lines_are_the_json_formatters() {
        let theirs = written(false);
        let ours = written(true);
        assert_eq!(ours.lines().count(), 8, "{ours}");
        assert!(
            ours.contains(r#"not the current span","span":{"count":2,"#),
            "{ours}"
        );
        for (n, (a, b)) in ours.lines().zip(theirs.lines()).enumerate() {
            assert_eq!(a, b, "line {n}");
        }
        assert_eq!(ours, theirs);
    }
}
