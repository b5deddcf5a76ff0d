//! The Lambda function: attached to a DynamoDB Stream, keeps the OpenSearch index in step.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use lambda_runtime::tower::{Layer, Service};
use lambda_runtime::{Diagnostic, Error, LambdaEvent, LambdaInvocation, Runtime, service_fn};
use stream_indexer::config::Config;
use stream_indexer::handler::{FALLBACK_BUDGET, Indexer, InvocationError, invocation_deadline};
use stream_indexer::pipeline::change::NotAStreamEvent;
use stream_indexer::telemetry;

/// One thread. Below 1,769 MB Lambda gives a function less than one vCPU, and an invocation is
/// one conversion followed by network waits: worker threads would only add wake-ups between
/// them (and a slower cold start).
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
    let body = BodySlot::default();
    let slot = &body;
    let handler = service_fn(move |event: LambdaEvent<Unread>| async move {
        let (deadline, unusable) = invocation_deadline(event.context.deadline(), SystemTime::now());
        if unusable && !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                deadline_ms = event.context.deadline,
                budget_s = FALLBACK_BUDGET.as_secs(),
                "the runtime gave a deadline that is already past or too far ahead (cargo lambda watch sends a duration); using the fallback budget"
            );
        }
        let diagnostic = |e: InvocationError| Diagnostic {
            error_type: e.kind().to_string(),
            error_message: e.to_string(),
        };
        let payload = slot.take(&event.context.request_id);
        let payload = std::str::from_utf8(&payload).map_err(|e| {
            diagnostic(NotAStreamEvent(format!("the payload is not UTF-8 text ({e})")).into())
        })?;
        let function_name = &event.context.env_config.function_name;
        let (response, summary) = indexer
            .handle(payload, deadline)
            .await
            .map_err(diagnostic)?;
        if let Some(metrics) = &indexer.config.metrics {
            let now_ms = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            // Its own line on stdout: Lambda's log agent extracts the metrics.
            println!(
                "{}",
                stream_indexer::metrics::emf(metrics, function_name, dimension, &summary, now_ms)
            );
        }
        Ok::<_, Diagnostic>(response)
    });
    Runtime::new(handler)
        .layer(lambda_runtime::layers::TracingLayer::new())
        .layer(KeepBody(body.clone()))
        .run()
        .await
}

/// Whether the unusable-deadline warning was logged (once per process).
static WARNED: AtomicBool = AtomicBool::new(false);

/// The handler's event type, deserialized from nothing. lambda_runtime deserializes every
/// payload before the handler runs; as `Box<RawValue>` (the cheapest type it offers) that is a
/// full validating scan and a copy of up to 6 MB, after which `change::plan` parses the text
/// again. The handler reads the body [`KeepBody`] kept instead, and `change::plan` is the one
/// parse (an unparseable payload is its `NotAStreamEvent`).
struct Unread;

impl<'de> serde::Deserialize<'de> for Unread {
    fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Ok(Unread)
    }
}

/// The body of the invocation being handled, with its request id (`Bytes`: shared, not copied).
#[derive(Clone, Default)]
struct BodySlot(Arc<Mutex<Option<(String, Bytes)>>>);

impl BodySlot {
    fn put(&self, request_id: &str, body: Bytes) {
        *self.0.lock().expect("the slot is never poisoned") = Some((request_id.to_string(), body));
    }

    /// The body of invocation `request_id`. The runtime runs one invocation at a time and the
    /// layer keeps each body before the handler runs, so it is there.
    fn take(&self, request_id: &str) -> Bytes {
        match self.0.lock().expect("the slot is never poisoned").take() {
            Some((id, body)) if id == request_id => body,
            _ => unreachable!("KeepBody keeps every invocation's body before its handler runs"),
        }
    }
}

/// The outermost layer: keeps each invocation's body for the handler, then passes it on.
#[derive(Clone)]
struct KeepBody(BodySlot);

impl<S> Layer<S> for KeepBody {
    type Service = KeepBodyService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        KeepBodyService {
            slot: self.0.clone(),
            inner,
        }
    }
}

struct KeepBodyService<S> {
    slot: BodySlot,
    inner: S,
}

impl<S: Service<LambdaInvocation>> Service<LambdaInvocation> for KeepBodyService<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }
    fn call(&mut self, req: LambdaInvocation) -> S::Future {
        self.slot.put(&req.context.request_id, req.body.clone());
        self.inner.call(req)
    }
}
