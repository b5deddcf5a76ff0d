//! The Lambda function: attached to a DynamoDB Stream, keeps the OpenSearch index in step.

use std::time::{Duration, SystemTime};

use lambda_runtime::{Diagnostic, Error, LambdaEvent, service_fn};
use serde_json::value::RawValue;
use stream_indexer::config::Config;
use stream_indexer::handler::Indexer;
use stream_indexer::telemetry;

#[tokio::main]
async fn main() -> Result<(), Error> {
    telemetry::init();
    let config = Config::from_env()?;
    let indexer = Indexer::new(config).await?;
    // The quarantine index, if configured, is created with its mapping on its first write
    // (Quarantine::put), not here: cold starts stay one client build long.
    let indexer = &indexer;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<Box<RawValue>>| async move {
            let deadline = to_instant(event.context.deadline());
            let (response, _summary) = indexer
                .handle(event.payload.get(), deadline)
                .await
                .map_err(|e| Diagnostic {
                    error_type: e.kind().to_string(),
                    error_message: e.to_string(),
                })?;
            Ok::<_, Diagnostic>(response)
        },
    ))
    .await
}

/// Lambda gives the deadline as wall-clock time; retries measure it on tokio's clock.
fn to_instant(deadline: SystemTime) -> tokio::time::Instant {
    let left = deadline
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    tokio::time::Instant::now() + left
}
