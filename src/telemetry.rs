//! Logging setup: JSON lines in Lambda (CloudWatch parses them), readable text in a terminal;
//! the operator tools' progress bar.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `RUST_LOG` overrides the default `info` level.
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
    let in_lambda = std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let result = if in_lambda {
        // The invocation's span (`requestId`, `xrayTraceId`) once per line: the span list
        // would repeat it, as the function's spans never nest.
        builder
            .json()
            .flatten_event(true)
            .with_span_list(false)
            .without_time()
            .try_init()
    } else {
        builder.try_init()
    };
    // A second init (tests) keeps the first subscriber.
    let _ = result;
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
