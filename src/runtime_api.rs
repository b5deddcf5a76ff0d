//! The Lambda Runtime API client both functions run on: `/next` → handler → `/response` or
//! `/error`, one invocation at a time over one kept-alive connection, and `/init/error` for a
//! function that cannot start (the protocol:
//! <https://docs.aws.amazon.com/lambda/latest/dg/runtimes-api.html>).
//!
//! Written here rather than taken from `lambda_runtime` (1.5), which the functions ran on before,
//! for two reasons the crate gives no way around:
//! - It drops Lambda's reply to every `/response` unread, so its HTTP client cannot keep the
//!   connection and opens a new one for each invocation. `socket`, `connect` and `shutdown` were
//!   about 14% of the CPU of a one-record invocation in a perf profile. This client reads every
//!   reply to its end, and keeps the connection while the API keeps it open.
//! - It deserializes every payload before the handler runs (a full scan and a copy of up to
//!   6 MB even as `Box<RawValue>`), which the stream function, whose plan is the one parse,
//!   had to defeat with an event type that read nothing and a layer that kept the body aside.
//!   Here the handler gets the payload's bytes.
//!
//! Like `lambda_runtime`, a handler that panics reports an error for its invocation and the
//! function goes on; an invocation runs in a span named `Lambda runtime invoke` with its
//! `requestId` and `xrayTraceId`. `_X_AMZN_TRACE_ID` is not set: changing the environment of a
//! running process races with any thread that reads it, and neither function calls a service
//! that X-Ray traces through it.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use bytes::Bytes;
use futures::FutureExt;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpStream;
use tracing::Instrument;

const API_VERSION: &str = "/2018-06-01/runtime";
const USER_AGENT: &str = concat!("stream-indexer/", env!("CARGO_PKG_VERSION"));

/// The Runtime API failed: the function cannot go on, and exits (Lambda starts a new one).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeApiError {
    #[error(
        "AWS_LAMBDA_RUNTIME_API is not set: the function runs under Lambda, `cargo lambda watch` or another Runtime API emulator"
    )]
    NoEndpoint,
    #[error("cannot reach the Lambda Runtime API at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("the Lambda Runtime API request {path} failed: {source}")]
    Http { path: String, source: hyper::Error },
    #[error("the Lambda Runtime API answered {path} with {status}: {body}")]
    Status {
        path: String,
        status: StatusCode,
        body: String,
    },
    #[error("the Lambda Runtime API's invocation has no usable {0} header")]
    Header(&'static str),
}

/// One invocation, as `/next` gives it.
#[derive(Debug)]
pub struct Invocation {
    /// `Lambda-Runtime-Aws-Request-Id`.
    pub request_id: String,
    /// `Lambda-Runtime-Deadline-Ms`: Lambda sends the deadline in milliseconds since the epoch;
    /// `cargo lambda watch` sends a duration (see `handler::invocation_deadline`).
    pub deadline_ms: u64,
    /// `Lambda-Runtime-Invoked-Function-Arn`, if sent.
    pub function_arn: Option<String>,
    /// `Lambda-Runtime-Trace-Id`, if sent.
    pub trace_id: Option<String>,
    /// The event, as sent.
    pub payload: Bytes,
}

/// What a failed invocation (or start) reports: Lambda's error document.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    #[serde(rename = "errorType")]
    pub error_type: String,
    #[serde(rename = "errorMessage")]
    pub error_message: String,
}

impl Failure {
    pub fn new(error_type: impl Into<String>, error_message: impl Into<String>) -> Failure {
        Failure {
            error_type: error_type.into(),
            error_message: error_message.into(),
        }
    }
}

/// A client of one Runtime API endpoint.
pub struct RuntimeApi {
    /// `host:port`, as `AWS_LAMBDA_RUNTIME_API` gives it.
    addr: String,
    /// The open connection, if any.
    connection: Option<SendRequest<Full<Bytes>>>,
}

impl RuntimeApi {
    /// The endpoint Lambda names in `AWS_LAMBDA_RUNTIME_API`.
    pub fn from_env() -> Result<RuntimeApi, RuntimeApiError> {
        match std::env::var("AWS_LAMBDA_RUNTIME_API") {
            Ok(addr) if !addr.is_empty() => Ok(RuntimeApi::new(addr)),
            _ => Err(RuntimeApiError::NoEndpoint),
        }
    }

    pub fn new(addr: impl Into<String>) -> RuntimeApi {
        RuntimeApi {
            addr: addr.into(),
            connection: None,
        }
    }

    /// Waits for the next invocation (Lambda freezes the function meanwhile).
    pub async fn next(&mut self) -> Result<Invocation, RuntimeApiError> {
        let path = format!("{API_VERSION}/invocation/next");
        let (headers, payload) = self.send(Method::GET, &path, &[], Bytes::new()).await?;
        let text = |name: &'static str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.is_empty())
        };
        let request_id = text("lambda-runtime-aws-request-id")
            .ok_or(RuntimeApiError::Header("Lambda-Runtime-Aws-Request-Id"))?
            .to_string();
        let deadline_ms = text("lambda-runtime-deadline-ms")
            .and_then(|v| v.parse().ok())
            .ok_or(RuntimeApiError::Header("Lambda-Runtime-Deadline-Ms"))?;
        Ok(Invocation {
            request_id,
            deadline_ms,
            function_arn: text("lambda-runtime-invoked-function-arn").map(str::to_string),
            trace_id: text("lambda-runtime-trace-id").map(str::to_string),
            payload,
        })
    }

    /// Answers invocation `request_id` with `body` (JSON).
    pub async fn respond(&mut self, request_id: &str, body: Bytes) -> Result<(), RuntimeApiError> {
        let path = format!("{API_VERSION}/invocation/{request_id}/response");
        self.send(Method::POST, &path, &[], body).await.map(drop)
    }

    /// Reports invocation `request_id` as failed.
    pub async fn fail(
        &mut self,
        request_id: &str,
        failure: &Failure,
    ) -> Result<(), RuntimeApiError> {
        let path = format!("{API_VERSION}/invocation/{request_id}/error");
        self.send_failure(&path, failure).await
    }

    /// Reports that the function cannot start (its configuration is invalid, say). Lambda shows
    /// the failure for the invocation that was waiting, and starts the function again.
    pub async fn init_failed(&mut self, failure: &Failure) -> Result<(), RuntimeApiError> {
        let path = format!("{API_VERSION}/init/error");
        self.send_failure(&path, failure).await
    }

    async fn send_failure(&mut self, path: &str, failure: &Failure) -> Result<(), RuntimeApiError> {
        let body = serde_json::to_vec(failure).expect("two strings serialize");
        let kind = [(
            "lambda-runtime-function-error-type",
            failure.error_type.as_str(),
        )];
        self.send(Method::POST, path, &kind, body.into())
            .await
            .map(drop)
    }

    /// One request and its whole reply (read to its end, so the connection can carry the next).
    async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<(http::HeaderMap, Bytes), RuntimeApiError> {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.addr)
            .header(header::USER_AGENT, USER_AGENT);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(body))
            .map_err(|_| RuntimeApiError::Header("request"))?;
        let http = |source| RuntimeApiError::Http {
            path: path.to_string(),
            source,
        };
        let mut connection = self.connection().await?;
        let response = connection.send_request(request).await.map_err(http)?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(http)?.to_bytes();
        self.connection = Some(connection);
        if !parts.status.is_success() {
            return Err(RuntimeApiError::Status {
                path: path.to_string(),
                status: parts.status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        Ok((parts.headers, body))
    }

    /// The open connection if the API kept it, else a new one.
    async fn connection(&mut self) -> Result<SendRequest<Full<Bytes>>, RuntimeApiError> {
        if let Some(mut kept) = self.connection.take()
            && kept.ready().await.is_ok()
        {
            return Ok(kept);
        }
        let connect = |source| RuntimeApiError::Connect {
            addr: self.addr.clone(),
            source,
        };
        let stream = TcpStream::connect(&self.addr).await.map_err(connect)?;
        stream.set_nodelay(true).map_err(connect)?;
        let (sender, connection) =
            http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|source| RuntimeApiError::Http {
                    path: "(connect)".into(),
                    source,
                })?;
        tokio::spawn(async move {
            // Ends when the API closes the connection or the sender is dropped; the next request
            // then opens another.
            let _ = connection.await;
        });
        Ok(sender)
    }
}

/// Runs invocations one at a time until the Runtime API fails: each invocation's payload goes
/// to `handler`, and its answer (JSON) or failure back to Lambda.
pub async fn serve<H, F>(api: &mut RuntimeApi, mut handler: H) -> Result<(), RuntimeApiError>
where
    H: FnMut(Invocation) -> F,
    F: Future<Output = Result<Bytes, Failure>>,
{
    loop {
        let invocation = api.next().await?;
        let request_id = invocation.request_id.clone();
        let span = tracing::info_span!(
            "Lambda runtime invoke",
            requestId = %request_id,
            xrayTraceId = invocation.trace_id.as_deref(),
        );
        let handled = AssertUnwindSafe(async { handler(invocation).await })
            .catch_unwind()
            .instrument(span.clone())
            .await;
        let outcome = handled.unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the handler panicked".into());
            span.in_scope(|| tracing::error!(panic = %message, "the handler panicked"));
            Err(Failure::new("Runtime.Panic", message))
        });
        match outcome {
            Ok(body) => api.respond(&request_id, body).await?,
            Err(failure) => api.fail(&request_id, &failure).await?,
        }
    }
}
