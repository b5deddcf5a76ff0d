//! The Lambda function: attached to a DynamoDB Stream, keeps the OpenSearch index in step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};
use serde_json::value::RawValue;
use stream_indexer::config::Config;
use stream_indexer::handler::{FALLBACK_BUDGET, Indexer, invocation_deadline};
use stream_indexer::telemetry;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let config = Config::from_env()?;
    let indexer = Indexer::new(config).await?;
    // The quarantine index, if configured, is created with its mapping on its first write
    // (Quarantine::put), not here: cold starts stay one client build long.
    let indexer = &indexer;
    let dimension = indexer
        .config
        .index
        .clone()
        .unwrap_or_else(|| "routed".into());
    let dimension = &dimension;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<Box<RawValue>>| async move {
            let (deadline, unusable) =
                invocation_deadline(event.context.deadline(), SystemTime::now());
            if unusable && !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    deadline_ms = event.context.deadline,
                    budget_s = FALLBACK_BUDGET.as_secs(),
                    "the runtime gave a deadline that is already past or too far ahead (cargo lambda watch sends a duration); using the fallback budget"
                );
            }
            let function_name = event.context.env_config.function_name.clone();
            let (response, summary) = indexer
                .handle(event.payload.get(), deadline)
                .await
                .map_err(|e| Diagnostic {
                    error_type: e.kind().to_string(),
                    error_message: e.to_string(),
                })?;
            if let Some(metrics) = &indexer.config.metrics {
                let now_ms = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                // Its own line on stdout: Lambda's log agent extracts the metrics.
                println!(
                    "{}",
                    stream_indexer::metrics::emf(
                        metrics,
                        &function_name,
                        dimension,
                        &summary,
                        now_ms
                    )
                );
            }
            Ok::<_, Diagnostic>(response)
        },
    ))
    .await
}

/// Whether the unusable-deadline warning was logged (once per process).
static WARNED: AtomicBool = AtomicBool::new(false);
