//! Logging setup: in Lambda as its advanced logging controls say (JSON lines or text, the
//! level), readable text in a terminal; the operator tools' progress bar.

use std::io::Write;
use std::sync::{Mutex, MutexGuard};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Installs the global subscriber for a terminal; `RUST_LOG` overrides the default `info`
/// level.
pub fn init() {
    init_with_default("info");
}

/// For the operator tools (backfill, replay), which print their own progress and summary: the
/// handler's accounting line per page would scroll under the progress bar, so the default is
/// `warn` (`RUST_LOG=info` shows it again).
pub fn init_for_tool() {
    init_with_default("warn");
}

fn init_with_default(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // A second init (tests) keeps the first subscriber.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}

/// The functions' logging in Lambda, as its advanced logging controls set it (the template's
/// `LoggingConfig`), read as `lambda_runtime`'s own setup reads them: `AWS_LAMBDA_LOG_FORMAT`
/// `JSON` gives tracing-subscriber's JSON lines, the event's fields at the top level and the
/// invocation's span (`requestId`, `xrayTraceId`) once, anything else its text lines; the
/// level is `AWS_LAMBDA_LOG_LEVEL`, else `RUST_LOG`, else `INFO`. No time (Lambda adds it), and
/// lines go to stdout through [`STDOUT_LINES`]. A panic's message is never logged.
pub fn init_lambda() {
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "INFO".into());
    // `FATAL` (a Lambda level) is ERROR here; a level this filter cannot read, INFO.
    let level = match level.trim().to_ascii_uppercase().as_str() {
        "FATAL" => "error".to_string(),
        _ => level,
    };
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .without_time()
        .with_writer(&STDOUT_LINES);
    let json = std::env::var("AWS_LAMBDA_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let _ = if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
    } else {
        builder.try_init()
    };
    withhold_panic_messages();
}

/// In Lambda a panic's message would go to stderr (and so to the log) as Rust's default hook
/// writes it, and a message may quote the payload (an `expect` on a value, an index out of
/// bounds with the data around it). This hook logs a fixed line with the place in the code,
/// inside the invocation's span (its `requestId`), and never the message.
pub fn withhold_panic_messages() {
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(
            %location,
            "panic (a bug): its message is withheld, as it may quote the payload; the invocation fails and Lambda retries the batch"
        );
    }));
}

/// The function's log lines on their way to stdout (Lambda's log agent reads it through a pipe).
pub static STDOUT_LINES: Lines<Stdout> = Lines::new(Stdout);

/// Log lines on their way to `W`, where this crate's INFO lines wait for the invocation's end.
///
/// That line is the invocation's summary, logged as it ends; [`Lines::end_invocation`] writes
/// it together with the metrics line, in one write. Each write to the pipe wakes its reader: the
/// two writes took about 3% of a 100-record invocation's CPU (perf). Every other line (a warning,
/// an error, any line of another crate) goes out at once, after the lines held before it: the
/// order is kept, and a line that says why an invocation is slow or stuck is never the one
/// waiting when the process is stopped.
pub struct Lines<W> {
    /// The held lines and where they go.
    state: Mutex<(Vec<u8>, W)>,
}

/// Held lines past this size go out at once: the buffer never grows with a caller that does not
/// end its invocations.
const MAX_HELD: usize = 64 * 1024;

impl<W: Write> Lines<W> {
    pub const fn new(out: W) -> Lines<W> {
        Lines {
            state: Mutex::new((Vec::new(), out)),
        }
    }

    /// Writes the held lines and `last` (the metrics line, or nothing), in one write: `last` is
    /// put as a line that is not held.
    pub fn end_invocation(&self, last: &[u8]) -> std::io::Result<()> {
        self.put(last, false)
    }

    /// `line` goes out now with whatever is held before it, in one write, unless it is to be
    /// held (and the held lines stay within [`MAX_HELD`]). Nothing held and nothing to write:
    /// no write.
    fn put(&self, line: &[u8], hold: bool) -> std::io::Result<()> {
        let mut state = self.lock();
        let (held, out) = &mut *state;
        if held.is_empty() && !hold {
            return if line.is_empty() {
                Ok(())
            } else {
                out.write_all(line)
            };
        }
        held.extend_from_slice(line);
        if hold && held.len() <= MAX_HELD {
            return Ok(());
        }
        let written = out.write_all(held);
        held.clear();
        written
    }

    /// A line is written whole or not at all, so a panic elsewhere leaves the state usable.
    fn lock(&self) -> MutexGuard<'_, (Vec<u8>, W)> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The function's log for one invocation: dropped or ended, it writes the lines held for it.
pub struct InvocationLog;

impl InvocationLog {
    /// Writes the held lines, with `last` (the metrics line, or nothing) in the same write.
    pub fn end(self, last: &[u8]) {
        if let Err(e) = STDOUT_LINES.end_invocation(last) {
            tracing::warn!(error = %e, "the log and metrics lines could not be written to stdout");
        }
    }
}

impl Drop for InvocationLog {
    fn drop(&mut self) {
        // After `end`, nothing is held and this writes nothing. An invocation that ends in an
        // error or a panic has its lines written here.
        let _ = STDOUT_LINES.end_invocation(&[]);
    }
}

/// Standard output, locked for each write.
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stdout().lock().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        std::io::stdout().lock().write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().lock().flush()
    }
}

/// One formatted line for [`Lines`]; whether it waits was decided from its event.
pub struct Line<W: 'static> {
    lines: &'static Lines<W>,
    hold: bool,
}

impl<W: Write> Write for Line<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lines.put(buf, self.hold)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a, W: Write + 'static> MakeWriter<'a> for &'static Lines<W> {
    type Writer = Line<W>;

    fn make_writer(&'a self) -> Line<W> {
        Line {
            lines: self,
            hold: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Line<W> {
        let ours = meta
            .target()
            .split("::")
            .next()
            .is_some_and(|krate| krate == env!("CARGO_CRATE_NAME"));
        Line {
            lines: self,
            hold: ours && *meta.level() == tracing::Level::INFO,
        }
    }
}

/// An error and its sources, for logs and error messages: "error sending request" alone hides
/// whether a certificate was rejected or the connection refused, and an AWS SDK error says only
/// "service error". A source whose text its parent already holds is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// A progress bar that follows a counter the work increments (the backfill's items read,
/// verify's items and documents checked), growing its length if the estimate was short.
pub struct Progress {
    bar: indicatif::ProgressBar,
    tickers: Vec<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// `template` is indicatif's; `hidden` shows nothing (`--quiet`).
    pub fn start(
        counter: std::sync::Arc<std::sync::atomic::AtomicU64>,
        estimate: u64,
        template: &str,
        hidden: bool,
    ) -> Progress {
        let bar = if hidden {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new(estimate)
        };
        bar.set_style(indicatif::ProgressStyle::with_template(template).expect("a valid template"));
        let b = bar.clone();
        let ticker = tokio::spawn(async move {
            loop {
                let n = counter.load(std::sync::atomic::Ordering::Relaxed);
                if n > b.length().unwrap_or(0) {
                    b.set_length(n);
                }
                b.set_position(n);
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        });
        Progress {
            bar,
            tickers: vec![ticker],
        }
    }

    /// Also shows `bytes` against `total` (the template's `{msg}`), for work measured both in
    /// items and in bytes (an export's items and its compressed data files).
    pub fn with_bytes(
        mut self,
        bytes: std::sync::Arc<std::sync::atomic::AtomicU64>,
        total: u64,
    ) -> Progress {
        let b = self.bar.clone();
        self.tickers.push(tokio::spawn(async move {
            loop {
                let n = bytes.load(std::sync::atomic::Ordering::Relaxed);
                b.set_message(format!(
                    "{}/{}",
                    indicatif::HumanBytes(n),
                    indicatif::HumanBytes(total.max(n))
                ));
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }));
        self
    }

    /// Stops following and clears the bar, so the summary prints on a clean line.
    pub fn finish(self) {
        for t in &self.tickers {
            t.abort();
        }
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Each write it was given, as one entry.
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<String>>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.write_all(buf)?;
            Ok(buf.len())
        }
        fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
            let text = String::from_utf8(buf.to_vec()).unwrap();
            self.0.lock().unwrap().push(text);
            Ok(())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Writes {
        fn taken(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    /// Lines to a fresh `Writes`, and a JSON subscriber (as in Lambda) writing to them.
    fn lambda_lines() -> (&'static Lines<Writes>, Writes, impl tracing::Subscriber) {
        let writes = Writes::default();
        let lines: &'static Lines<Writes> = Box::leak(Box::new(Lines::new(writes.clone())));
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .without_time()
            .with_target(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(lines)
            .finish();
        (lines, writes, subscriber)
    }

    #[test]
    fn the_summary_goes_out_with_the_metrics_line_in_one_write() {
        let (lines, writes, subscriber) = lambda_lines();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(records = 3, "all 3 records accounted for");
        });
        assert_eq!(writes.taken(), Vec::<String>::new(), "held until the end");
        lines.end_invocation(b"{\"_aws\":{}}\n").unwrap();
        let written = writes.taken();
        assert_eq!(written.len(), 1, "{written:?}");
        let text: Vec<&str> = written[0].lines().collect();
        assert_eq!(text.len(), 2, "{written:?}");
        assert!(text[0].contains("all 3 records accounted for"), "{text:?}");
        assert_eq!(text[1], "{\"_aws\":{}}");
        // Nothing is left to write twice.
        lines.end_invocation(b"").unwrap();
        assert_eq!(writes.taken(), Vec::<String>::new());
    }

    #[test]
    fn an_invocation_without_metrics_still_writes_its_summary() {
        let (lines, writes, subscriber) = lambda_lines();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("all 1 records accounted for");
        });
        lines.end_invocation(b"").unwrap();
        let written = writes.taken();
        assert_eq!(written.len(), 1, "{written:?}");
        assert!(written[0].contains("all 1 records accounted for"));
    }

    #[test]
    fn other_lines_go_out_at_once_after_those_held_before_them() {
        let (lines, writes, subscriber) = lambda_lines();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("first warning");
            assert_eq!(writes.taken().len(), 1, "a warning is not held");
            tracing::debug!("a debug line");
            assert_eq!(writes.taken().len(), 1, "a debug line is not held");
            tracing::info!(target: "aws_config::meta", "another crate's line");
            assert_eq!(writes.taken().len(), 1, "another crate's line is not held");
            tracing::info!("the summary");
            tracing::error!("then an error");
        });
        let written = writes.taken();
        assert_eq!(written.len(), 1, "{written:?}");
        let text: Vec<&str> = written[0].lines().collect();
        assert!(text[0].contains("the summary") && text[1].contains("then an error"));
        lines.end_invocation(b"").unwrap();
        assert_eq!(writes.taken(), Vec::<String>::new());
    }

    #[test]
    fn held_lines_past_the_limit_go_out() {
        let (_lines, writes, subscriber) = lambda_lines();
        let long = "x".repeat(1000);
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..MAX_HELD / 1000 + 1 {
                tracing::info!("{long}");
            }
        });
        let written = writes.taken();
        assert_eq!(written.len(), 1, "{}", written.len());
        assert!(written[0].len() > MAX_HELD);
    }
}
