//! What both Lambda functions add to `lambda_runtime`, which serves them (one invocation at a
//! time, or `AWS_LAMBDA_MAX_CONCURRENCY` at once where Lambda sets it):
//!
//! - [`StreamFunction`]: one stream invocation: the deadline from the invocation's context, the
//!   batch handled, its summary line written with its metrics line.
//! - [`guarded`]: a handler's panic becomes `Runtime.Panic` with a fixed message.
//!   `lambda_runtime` reports a panic with its message, which may quote the payload.
//! - [`report_init_error`]: a start that failed is reported to `/init/error`, which Lambda shows
//!   for the invocation that was waiting; `lambda_runtime` reports only its own start errors.
//!
//! What invocations in flight at once share: the OpenSearch client (its connection pool), the
//! configuration, and the process's log lines; each has its own batch, plan, delivery limits
//! and metrics document. Nothing an invocation decides depends on another's.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lambda_events::event::streams::DynamoDbEventResponse;
use futures::FutureExt as _;
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde_json::value::RawValue;

use crate::handler::{FALLBACK_BUDGET, Indexer, invocation_deadline};
use crate::telemetry;

/// The `errorMessage` of an invocation whose handler panicked.
pub const PANIC_MESSAGE: &str =
    "the handler panicked (a bug); the message is withheld, as it may quote the payload";

/// An invocation's failure, as Lambda reports it (`errorType`, `errorMessage`). The message is
/// [redacted](crate::redact::reason): `lambda_runtime` logs it, and a parse error may quote the
/// payload.
pub fn failure(error_type: &str, message: impl std::fmt::Display) -> Diagnostic {
    Diagnostic {
        error_type: error_type.to_string(),
        error_message: crate::redact::reason(&message.to_string()),
    }
}

/// `handler`'s answer, or `Runtime.Panic` with [`PANIC_MESSAGE`] if it panicked (the panic hook
/// logs where, [`telemetry::withhold_panic_messages`]).
pub async fn guarded<T>(
    handler: impl Future<Output = Result<T, Diagnostic>>,
) -> Result<T, Diagnostic> {
    match AssertUnwindSafe(handler).catch_unwind().await {
        Ok(answer) => answer,
        Err(_) => {
            tracing::error!("the handler panicked");
            Err(failure("Runtime.Panic", PANIC_MESSAGE))
        }
    }
}

/// Reports a start that failed to the Runtime API's `/init/error` (`Runtime.InitError`, the
/// error's text as the message); a report that cannot be sent is logged.
pub async fn report_init_error(error: &(dyn std::error::Error + 'static)) {
    use lambda_runtime_api_client::body::Body;
    let diagnostic = failure("Runtime.InitError", telemetry::error_chain(error));
    let sent = async {
        let client = lambda_runtime_api_client::Client::builder().build()?;
        let request = lambda_runtime_api_client::build_request()
            .method("POST")
            .uri("/2018-06-01/runtime/init/error")
            .header("lambda-runtime-function-error-type", "Runtime.InitError")
            .body(Body::from(serde_json::to_vec(&diagnostic)?))?;
        client.call(request).await?;
        Ok::<_, lambda_runtime::Error>(())
    };
    if let Err(e) = sent.await {
        tracing::error!(error = %e, "the start's failure could not be reported to /init/error");
    }
}

/// The stream function: built once at cold start, cloned into each invocation.
#[derive(Clone)]
pub struct StreamFunction {
    indexer: Arc<Indexer>,
    /// The metrics' `Index` dimension: the configured index, or `routed`.
    dimension: Arc<str>,
    function_name: Arc<str>,
}

/// Whether the unusable-deadline warning was logged (once per process).
static WARNED: AtomicBool = AtomicBool::new(false);

impl StreamFunction {
    pub fn new(indexer: Indexer) -> StreamFunction {
        let dimension = indexer.config.index.as_deref().unwrap_or("routed").into();
        StreamFunction {
            indexer: Arc::new(indexer),
            dimension,
            function_name: std::env::var("AWS_LAMBDA_FUNCTION_NAME")
                .unwrap_or_default()
                .into(),
        }
    }

    /// One invocation. The event stays the text Lambda sent (`RawValue`): the plan is the one
    /// parse of it.
    pub async fn invoke(
        self,
        event: LambdaEvent<Box<RawValue>>,
    ) -> Result<DynamoDbEventResponse, Diagnostic> {
        // However the invocation ends (an answer, an error, a panic), its held log line goes out.
        let log = telemetry::InvocationLog;
        let deadline_ms = event.context.deadline;
        let wall_deadline = UNIX_EPOCH + Duration::from_millis(deadline_ms);
        let (deadline, unusable) = invocation_deadline(wall_deadline, SystemTime::now());
        if unusable && !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                deadline_ms,
                budget_s = FALLBACK_BUDGET.as_secs(),
                "the runtime gave a deadline that is already past or too far ahead (cargo lambda watch sends a duration); using the fallback budget"
            );
        }
        let (response, summary) = self
            .indexer
            .handle(event.payload.get(), deadline)
            .await
            .map_err(|e| failure(e.kind(), &e))?;
        // Its own line on stdout (Lambda's log agent extracts the metrics), written with the
        // invocation's summary line in one write.
        let mut line = String::new();
        if let Some(metrics) = &self.indexer.config.metrics {
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            line = crate::metrics::emf(
                metrics,
                &self.function_name,
                &self.dimension,
                &summary,
                now_ms,
            );
            line.push('\n');
        }
        log.end(line.as_bytes());
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_fails_its_invocation_without_its_message() {
        let answer: Result<(), Diagnostic> =
            guarded(async { panic!("the payload's s3cr3t value") }).await;
        let d = answer.unwrap_err();
        assert_eq!(d.error_type, "Runtime.Panic");
        assert_eq!(d.error_message, PANIC_MESSAGE);
        // A handler's own failure keeps its type and message.
        let answer: Result<(), Diagnostic> =
            guarded(async { Err(failure("Asked", "asked to fail")) }).await;
        let d = answer.unwrap_err();
        assert_eq!(
            (d.error_type.as_str(), d.error_message.as_str()),
            ("Asked", "asked to fail")
        );
    }
}
