//! The Lambda function: attached to a DynamoDB Stream, keeps the OpenSearch index in step.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::value::RawValue;
use stream_indexer::config::Config;
use stream_indexer::handler::Indexer;
use stream_indexer::lambda::{self, StreamFunction};
use stream_indexer::telemetry;

/// One thread. Below 1,769 MB Lambda gives a function less than one vCPU, and an invocation is
/// one conversion followed by network waits: worker threads would only add wake-ups between
/// them (and a slower cold start). Invocations served at once (`AWS_LAMBDA_MAX_CONCURRENCY`)
/// interleave on it at their waits.
fn main() -> Result<(), Error> {
    keep_the_heap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(serve())
}

/// Every invocation allocates and frees the same few megabytes (the payload, the documents, the
/// bodies). With glibc's defaults a freed block over 128 KiB goes back to the kernel (`munmap`,
/// or the heap's top trimmed with `brk`), and the next invocation faults the same pages in again:
/// about a tenth of the CPU of a 100-record invocation went to that. The function's memory is
/// reserved for it anyway, so it keeps what it has used: blocks up to 32 MiB (more than a 6 MB
/// batch needs) come from the heap, and the heap is never trimmed. The heap still grows only as
/// far as the largest batch needs: peak RSS after 6 MB batches stayed within a couple of MiB of
/// what it was.
fn keep_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

async fn serve() -> Result<(), Error> {
    telemetry::init_lambda();
    let function = match start().await {
        Ok(function) => function,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "the function cannot start");
            lambda::report_init_error(e.as_ref()).await;
            return Err(e.into());
        }
    };
    lambda_runtime::run_concurrent(service_fn(move |event: LambdaEvent<Box<RawValue>>| {
        lambda::guarded(function.clone().invoke(event))
    }))
    .await
}

/// The configuration, the OpenSearch client, and the index's recorded write settings checked.
/// The quarantine index, if configured, is created with its mapping on its first write
/// (Quarantine::put), not here.
async fn start() -> anyhow::Result<StreamFunction> {
    let config = Config::from_env()?;
    let indexer = Indexer::new(config).await?;
    indexer.check_write_settings().await?;
    Ok(StreamFunction::new(indexer))
}
