//! The export loader function: one step of an export load per invocation (prepare, open, load
//! one data file, finish), run by the Step Functions state machine in template.yaml. See
//! `backfill::worker`.

use std::sync::Arc;
use std::time::Duration;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use stream_indexer::config::Config;
use stream_indexer::handler::Indexer;
use stream_indexer::lambda::{self, failure};
use stream_indexer::tools::backfill::worker::{Step, Worker};
use stream_indexer::{telemetry, tools::aws};

/// How far DynamoDB's clock may be behind a stream change's timestamp: the export's copies are
/// versioned this much before the export time (as the backfill's `--clock-skew`).
const CLOCK_SKEW: Duration = Duration::from_secs(5);

/// Time one page of a data file may take to land, retries included; the function's 15-minute
/// timeout bounds the whole file.
const PAGE_TIMEOUT: Duration = Duration::from_secs(300);

fn main() -> Result<(), Error> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve())
}

async fn serve() -> Result<(), Error> {
    telemetry::init_lambda();
    let worker = match start().await {
        Ok(worker) => Arc::new(worker),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "the export loader cannot start");
            lambda::report_init_error(e.as_ref()).await;
            return Err(e.into());
        }
    };
    lambda_runtime::run_concurrent(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let worker = worker.clone();
        lambda::guarded(async move {
            let step: Step = serde_json::from_value(event.payload).map_err(|e| {
                tracing::error!(error = %e, "the event is not a step");
                failure(
                    "NotAStep",
                    format!("the event is not an export-load step: {e}"),
                )
            })?;
            worker.run(step).await.map_err(|e| {
                tracing::error!(error = %e, "step failed");
                failure(e.kind(), &e)
            })
        })
    }))
    .await
}

async fn start() -> anyhow::Result<Worker> {
    let config = Config::from_env()?;
    let indexer = Indexer::new(config).await?;
    let sdk = aws::sdk_config(None).await;
    Ok(Worker {
        indexer,
        ddb: aws_sdk_dynamodb::Client::new(&sdk),
        s3: aws::s3_client(&sdk, None),
        clock_skew: CLOCK_SKEW,
        page_timeout: PAGE_TIMEOUT,
    })
}
