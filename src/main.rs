//! The Lambda function: attached to a DynamoDB Stream, keeps the OpenSearch index in step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use stream_indexer::config::Config;
use stream_indexer::handler::{FALLBACK_BUDGET, Indexer, InvocationError, invocation_deadline};
use stream_indexer::pipeline::change::NotAStreamEvent;
use stream_indexer::runtime_api::{self, Failure, Invocation, RuntimeApi};
use stream_indexer::telemetry;

/// One thread. Below 1,769 MB Lambda gives a function less than one vCPU, and an invocation is
/// one conversion followed by network waits: worker threads would only add wake-ups between
/// them (and a slower cold start).
fn main() -> anyhow::Result<()> {
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

async fn serve() -> anyhow::Result<()> {
    telemetry::init();
    let mut api = RuntimeApi::from_env()?;
    let indexer = api.started(start().await).await?;
    let indexer = &indexer;
    let dimension = indexer
        .config
        .index
        .clone()
        .unwrap_or_else(|| "routed".into());
    let dimension = &dimension;
    let function_name = std::env::var("AWS_LAMBDA_FUNCTION_NAME").unwrap_or_default();
    let function_name = &function_name;
    runtime_api::serve(&mut api, move |invocation: Invocation| async move {
        // However the invocation ends (an answer, an error, a panic), its held log line goes out.
        let log = telemetry::InvocationLog;
        let wall_deadline = SystemTime::UNIX_EPOCH + Duration::from_millis(invocation.deadline_ms);
        let (deadline, unusable) = invocation_deadline(wall_deadline, SystemTime::now());
        if unusable && !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                deadline_ms = invocation.deadline_ms,
                budget_s = FALLBACK_BUDGET.as_secs(),
                "the runtime gave a deadline that is already past or too far ahead (cargo lambda watch sends a duration); using the fallback budget"
            );
        }
        let failure = |e: InvocationError| Failure::new(e.kind(), e.to_string());
        // The plan is the one parse of the payload: an unparseable one is its NotAStreamEvent.
        let payload = simdutf8::compat::from_utf8(&invocation.payload).map_err(|e| {
            failure(NotAStreamEvent(format!("the payload is not UTF-8 text ({e})")).into())
        })?;
        let (response, summary) = indexer.handle(payload, deadline).await.map_err(failure)?;
        // Its own line on stdout (Lambda's log agent extracts the metrics), written with the
        // invocation's summary line in one write.
        let mut line = String::new();
        if let Some(metrics) = &indexer.config.metrics {
            let now_ms = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            line =
                stream_indexer::metrics::emf(metrics, function_name, dimension, &summary, now_ms);
            line.push('\n');
        }
        log.end(line.as_bytes());
        Ok::<_, Failure>(response)
    })
    .await?;
    Ok(())
}

/// The configuration, the OpenSearch client, and the index's recorded write settings checked.
/// The quarantine index, if configured, is created with its mapping on its first write
/// (Quarantine::put), not here.
async fn start() -> anyhow::Result<Indexer> {
    let config = Config::from_env()?;
    let indexer = Indexer::new(config).await?;
    indexer.check_write_settings().await?;
    Ok(indexer)
}

/// Whether the unusable-deadline warning was logged (once per process).
static WARNED: AtomicBool = AtomicBool::new(false);
