//! The export loader function: one step of an export load per invocation (prepare, open, load
//! one data file, finish), run by the Step Functions state machine in template.yaml. See
//! `backfill::worker`.

use std::time::Duration;

use stream_indexer::config::Config;
use stream_indexer::handler::Indexer;
use stream_indexer::runtime_api::{self, Failure, Invocation, RuntimeApi};
use stream_indexer::tools::backfill::worker::{Step, Worker};
use stream_indexer::{telemetry, tools::aws};

/// How far DynamoDB's clock may be behind a stream change's timestamp: the export's copies are
/// versioned this much before the export time (as the backfill's `--clock-skew`).
const CLOCK_SKEW: Duration = Duration::from_secs(5);

/// Time one page of a data file may take to land, retries included; the function's 15-minute
/// timeout bounds the whole file.
const PAGE_TIMEOUT: Duration = Duration::from_secs(300);

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    telemetry::init();
    let mut api = RuntimeApi::from_env()?;
    let worker = api.started(start().await).await?;
    let worker = &worker;
    runtime_api::serve(&mut api, move |invocation: Invocation| async move {
        let step: Step = serde_json::from_slice(&invocation.payload).map_err(|e| {
            tracing::error!(error = %e, "the event is not a step");
            Failure::new(
                "NotAStep",
                format!("the event is not an export-load step: {e}"),
            )
        })?;
        let output = worker.run(step).await.map_err(|e| {
            tracing::error!(error = %e, "step failed");
            Failure::new(e.kind(), e.to_string())
        })?;
        Ok::<_, Failure>(output)
    })
    .await?;
    Ok(())
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
