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
//! The HTTP is written here too, on `httparse`: one request at a time from one client to a local
//! endpoint needs no connection task. Through hyper's `client::conn`, whose connection runs in a
//! task of its own (every request and reply crossing between two tasks), a one-record invocation
//! took 0.540 CPU-ms where lambda_runtime took 0.616; written and read in the caller's task,
//! 0.470 where lambda_runtime took 0.584 (the two functions side by side, alternating blocks).
//!
//! Like `lambda_runtime`, a handler that panics reports an error for its invocation and the
//! function goes on; an invocation runs in a span named `Lambda runtime invoke` with its
//! `requestId` and `xrayTraceId`. `_X_AMZN_TRACE_ID` is not set: changing the environment of a
//! running process races with any thread that reads it, and neither function calls a service
//! that X-Ray traces through it.

use std::future::Future;
use std::panic::AssertUnwindSafe;

/// The `errorMessage` of an invocation whose handler panicked.
pub const PANIC_MESSAGE: &str =
    "the handler panicked (a bug); the message is withheld, as it may quote the payload";

use bytes::Bytes;
use futures::FutureExt;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tracing::Instrument;

const API_VERSION: &str = "/2018-06-01/runtime";
const USER_AGENT: &str = concat!("stream-indexer/", env!("CARGO_PKG_VERSION"));
/// The longest reply head (status line and headers) read.
const MAX_HEAD: usize = 64 * 1024;

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
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the Lambda Runtime API's reply to {path} is not HTTP/1.1 this client reads: {why}")]
    Reply { path: String, why: String },
    #[error("the Lambda Runtime API answered {path} with {status}: {body}")]
    Status {
        path: String,
        status: u16,
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
    /// `host:port`: where to connect, and the `Host` header.
    addr: String,
    /// What the API's paths go under: empty for Lambda, `/.rt/<function>` for `cargo lambda`.
    base: String,
    /// The open connection, if the API kept it.
    connection: Option<BufReader<TcpStream>>,
}

impl RuntimeApi {
    /// The endpoint Lambda names in `AWS_LAMBDA_RUNTIME_API`.
    pub fn from_env() -> Result<RuntimeApi, RuntimeApiError> {
        match std::env::var("AWS_LAMBDA_RUNTIME_API") {
            Ok(addr) if !addr.is_empty() => Ok(RuntimeApi::new(addr)),
            _ => Err(RuntimeApiError::NoEndpoint),
        }
    }

    /// `endpoint` is `host:port`, as Lambda gives it, or a URL `http://host:port/base`, as
    /// `cargo lambda watch` gives it (`http://[::]:9000/.rt/<function>`).
    pub fn new(endpoint: impl Into<String>) -> RuntimeApi {
        let endpoint = endpoint.into();
        let rest = endpoint.strip_prefix("http://").unwrap_or(&endpoint);
        let (addr, base) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        RuntimeApi {
            addr: addr.to_string(),
            base: base.trim_end_matches('/').to_string(),
            connection: None,
        }
    }

    /// Waits for the next invocation (Lambda freezes the function meanwhile).
    pub async fn next(&mut self) -> Result<Invocation, RuntimeApiError> {
        let path = format!("{API_VERSION}/invocation/next");
        let (headers, payload) = self.send("GET", &path, &[], &[]).await?;
        let text = |name: &'static str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
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
            trace_id: text("lambda-runtime-trace-id").map(str::to_string),
            payload,
        })
    }

    /// Answers invocation `request_id` with `body` (JSON).
    pub async fn respond(&mut self, request_id: &str, body: Bytes) -> Result<(), RuntimeApiError> {
        let path = format!("{API_VERSION}/invocation/{request_id}/response");
        self.send("POST", &path, &[], &body).await.map(drop)
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

    /// What the function's start gave. A failed start is reported to `/init/error` as
    /// `Runtime.InitError` (Lambda shows it for the invocation that was waiting) and returned
    /// as it was, for the function to exit with.
    pub async fn started<T>(&mut self, start: anyhow::Result<T>) -> anyhow::Result<T> {
        if let Err(e) = &start {
            let failure = Failure::new("Runtime.InitError", format!("{e:#}"));
            if let Err(report) = self.init_failed(&failure).await {
                tracing::error!(error = %report, "the failed start could not be reported");
            }
        }
        start
    }

    async fn send_failure(&mut self, path: &str, failure: &Failure) -> Result<(), RuntimeApiError> {
        let body = serde_json::to_vec(failure).expect("two strings serialize");
        let kind = [(
            "lambda-runtime-function-error-type",
            failure.error_type.as_str(),
        )];
        self.send("POST", path, &kind, &body).await.map(drop)
    }

    /// One request and its whole reply, read to its end so the connection can carry the next.
    /// A kept connection the API closed while the function was idle gives no reply at all: the
    /// request then goes once more, on a new connection.
    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(Vec<(String, String)>, Bytes), RuntimeApiError> {
        let mut request = format!(
            "{method} {}{path} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {USER_AGENT}\r\nContent-Length: {}\r\n",
            self.base,
            self.addr,
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut request = request.into_bytes();
        request.extend_from_slice(body);
        let fail = |failed| match failed {
            Failed::NoReply(source) | Failed::Io(source) => RuntimeApiError::Io {
                path: path.to_string(),
                source,
            },
            Failed::Unreadable(why) => RuntimeApiError::Reply {
                path: path.to_string(),
                why,
            },
        };
        let (reply, connection) = 'sent: {
            if let Some(mut kept) = self.connection.take() {
                match exchange(&mut kept, &request).await {
                    Ok(reply) => break 'sent (reply, kept),
                    // Closed while the function was idle: the request goes again, below.
                    Err(Failed::NoReply(_)) => {}
                    Err(other) => return Err(fail(other)),
                }
            }
            let mut fresh = self.connect().await?;
            (exchange(&mut fresh, &request).await.map_err(fail)?, fresh)
        };
        if reply.keep_alive {
            self.connection = Some(connection);
        }
        if !(200..300).contains(&reply.status) {
            return Err(RuntimeApiError::Status {
                path: path.to_string(),
                status: reply.status,
                body: String::from_utf8_lossy(&reply.body).into_owned(),
            });
        }
        Ok((reply.headers, reply.body))
    }

    async fn connect(&self) -> Result<BufReader<TcpStream>, RuntimeApiError> {
        let connect = |source| RuntimeApiError::Connect {
            addr: self.addr.clone(),
            source,
        };
        let stream = TcpStream::connect(&self.addr).await.map_err(connect)?;
        stream.set_nodelay(true).map_err(connect)?;
        Ok(BufReader::new(stream))
    }
}

/// A reply as read off the connection.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Bytes,
    /// Whether the connection can carry another request.
    keep_alive: bool,
}

/// Why an exchange failed.
enum Failed {
    /// The connection failed before any of the reply came: the request may not have reached
    /// the API, and can go again on a new connection.
    NoReply(std::io::Error),
    /// The connection failed within the reply.
    Io(std::io::Error),
    /// The reply is not HTTP/1.1 this client reads.
    Unreadable(String),
}

impl From<std::io::Error> for Failed {
    fn from(e: std::io::Error) -> Failed {
        Failed::Io(e)
    }
}

fn closed(within: &str) -> Failed {
    Failed::Io(std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!("closed within the reply's {within}"),
    ))
}

/// Writes `request` and reads its reply.
async fn exchange(connection: &mut BufReader<TcpStream>, request: &[u8]) -> Result<Reply, Failed> {
    connection
        .get_mut()
        .write_all(request)
        .await
        .map_err(Failed::NoReply)?;
    let mut head = Vec::new();
    loop {
        let before = head.len();
        let read = connection.read_until(b'\n', &mut head).await;
        match read {
            Err(e) if before == 0 => return Err(Failed::NoReply(e)),
            Ok(0) if before == 0 => {
                return Err(Failed::NoReply(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(0) => return Err(closed("head")),
            read => read?,
        };
        if head[before..] == *b"\r\n" || head[before..] == *b"\n" {
            break;
        }
        if head.len() > MAX_HEAD {
            return Err(Failed::Unreadable(format!(
                "its head is over {MAX_HEAD} bytes"
            )));
        }
    }
    let mut parsed = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut parsed);
    match response.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(Failed::Unreadable("its head is incomplete".into()));
        }
        Err(e) => return Err(Failed::Unreadable(format!("its head is malformed ({e})"))),
    }
    let status = response.code.unwrap_or(0);
    let mut keep_alive = response.version == Some(1);
    let mut length = None;
    let mut chunked = false;
    let mut headers = Vec::with_capacity(response.headers.len());
    for h in response.headers.iter() {
        let value = String::from_utf8_lossy(h.value).trim().to_string();
        if h.name.eq_ignore_ascii_case("content-length") {
            match value.parse::<usize>() {
                Ok(n) => length = Some(n),
                Err(_) => {
                    return Err(Failed::Unreadable(format!(
                        "its Content-Length {value:?} is not a number"
                    )));
                }
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().ends_with("chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep_alive &= !value.eq_ignore_ascii_case("close");
        }
        headers.push((h.name.to_string(), value));
    }
    let body = if chunked {
        read_chunked(connection).await?
    } else if let Some(n) = length {
        let mut body = Vec::with_capacity(n);
        (&mut *connection)
            .take(n as u64)
            .read_to_end(&mut body)
            .await?;
        if body.len() < n {
            return Err(closed("body"));
        }
        body
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        // Neither a length nor chunks: the body runs to the connection's end.
        keep_alive = false;
        let mut body = Vec::new();
        connection.read_to_end(&mut body).await?;
        body
    };
    Ok(Reply {
        status,
        headers,
        body: body.into(),
        keep_alive,
    })
}

/// A chunked body (RFC 9112 §7.1), its trailers read and dropped.
async fn read_chunked(connection: &mut BufReader<TcpStream>) -> Result<Vec<u8>, Failed> {
    let mut body = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        if connection.read_until(b'\n', &mut line).await? == 0 {
            return Err(closed("body"));
        }
        let text = String::from_utf8_lossy(&line);
        let size = text.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            return Err(Failed::Unreadable(format!(
                "a chunk size {size:?} is not hexadecimal"
            )));
        };
        if size == 0 {
            loop {
                line.clear();
                let read = connection.read_until(b'\n', &mut line).await?;
                if read == 0 || line.trim_ascii().is_empty() {
                    return Ok(body);
                }
            }
        }
        let start = body.len();
        (&mut *connection)
            .take(size as u64)
            .read_to_end(&mut body)
            .await?;
        if body.len() - start < size {
            return Err(closed("body"));
        }
        line.clear();
        connection.read_until(b'\n', &mut line).await?;
    }
}

/// Runs invocations one at a time until the Runtime API fails: each invocation's payload goes
/// to `handler`, and its answer, as JSON, or its failure back to Lambda.
pub async fn serve<H, F, T>(api: &mut RuntimeApi, mut handler: H) -> Result<(), RuntimeApiError>
where
    H: FnMut(Invocation) -> F,
    F: Future<Output = Result<T, Failure>>,
    T: Serialize,
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
        // The panic's message may quote the payload: neither the log nor the answer carries
        // it (the panic hook logs where it happened).
        let outcome = handled.unwrap_or_else(|_| {
            span.in_scope(|| tracing::error!("the handler panicked"));
            Err(Failure::new("Runtime.Panic", PANIC_MESSAGE))
        });
        let answer = outcome.and_then(|answer| {
            serde_json::to_vec(&answer)
                .map_err(|e| Failure::new("Runtime.SerializationError", e.to_string()))
        });
        let answered = match answer {
            Ok(body) => api.respond(&request_id, body.into()).await,
            Err(failure) => api.fail(&request_id, &failure).await,
        };
        match answered {
            // The API refused this answer (410: the invocation timed out; 413: too large); it
            // still serves the next invocation, as lambda_runtime did.
            Err(RuntimeApiError::Status { path, status, body }) => {
                span.in_scope(|| {
                    tracing::error!(%path, status, %body, "the Runtime API refused the invocation's answer")
                });
            }
            answered => answered?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::net::TcpListener;

    /// A server that answers the n-th request with `replies[n]` (raw bytes), closing the
    /// connection after each reply in `close_after`, and counts connections.
    async fn scripted(
        replies: Vec<&'static [u8]>,
        close_after: Vec<usize>,
    ) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                let mut stream = BufReader::new(stream);
                loop {
                    // The request: its head, then its Content-Length body.
                    let mut length = 0;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap();
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    if line != "\r\n" {
                        break;
                    }
                    let mut body = vec![0; length];
                    stream.read_exact(&mut body).await.unwrap();
                    stream.get_mut().write_all(replies[n]).await.unwrap();
                    n += 1;
                    if close_after.contains(&(n - 1)) {
                        break;
                    }
                }
            }
        });
        (addr, connections)
    }

    const NEXT: &[u8] = b"HTTP/1.1 200 OK\r\nLambda-Runtime-Aws-Request-Id: r1\r\nLambda-Runtime-Deadline-Ms: 1700000000000\r\nContent-Length: 2\r\n\r\n{}";
    const ACCEPTED: &[u8] =
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 15\r\n\r\n{\"status\":\"OK\"}";

    #[tokio::test]
    async fn replies_read_to_their_end_keep_one_connection() {
        let (addr, connections) = scripted(vec![NEXT, ACCEPTED, NEXT, ACCEPTED], vec![]).await;
        let mut api = RuntimeApi::new(addr);
        for _ in 0..2 {
            let invocation = api.next().await.unwrap();
            assert_eq!(invocation.request_id, "r1");
            assert_eq!(invocation.deadline_ms, 1_700_000_000_000);
            assert_eq!(&invocation.payload[..], b"{}");
            api.respond("r1", Bytes::from_static(b"{}")).await.unwrap();
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_chunked_payload_is_read_whole() {
        const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nLambda-Runtime-Aws-Request-Id: r2\r\nLambda-Runtime-Deadline-Ms: 5\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n{\"a\"\r\nA\r\n:[1,2.50]}\r\n0\r\nTrailer: x\r\n\r\n";
        let (addr, connections) = scripted(vec![CHUNKED, NEXT], vec![]).await;
        let mut api = RuntimeApi::new(addr);
        let invocation = api.next().await.unwrap();
        assert_eq!(&invocation.payload[..], br#"{"a":[1,2.50]}"#);
        // The trailers were read too: the next reply is read from the same connection.
        assert_eq!(api.next().await.unwrap().request_id, "r1");
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_api_closes_is_replaced() {
        // Closed after the first reply, whether it said so or not: the second request finds the
        // kept connection dead and goes again on a new one; a reply that says `close`, or has
        // no length, is not kept.
        const CLOSING: &[u8] =
            b"HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}";
        const UNTIL_CLOSE: &[u8] = b"HTTP/1.1 202 Accepted\r\n\r\n{\"status\":\"OK\"}";
        let (addr, connections) = scripted(
            vec![NEXT, NEXT, CLOSING, UNTIL_CLOSE, ACCEPTED],
            vec![0, 2, 3],
        )
        .await;
        let mut api = RuntimeApi::new(addr);
        api.next().await.unwrap();
        api.next().await.unwrap();
        api.respond("r1", Bytes::new()).await.unwrap();
        api.respond("r1", Bytes::new()).await.unwrap();
        api.respond("r1", Bytes::new()).await.unwrap();
        assert_eq!(connections.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn an_unreadable_or_refusing_reply_names_the_request() {
        const GARBAGE: &[u8] = b"HTTP/1.1 two hundred\r\n\r\n";
        const GONE: &[u8] = b"HTTP/1.1 410 Gone\r\nContent-Length: 7\r\n\r\nexpired";
        const NO_ID: &[u8] =
            b"HTTP/1.1 200 OK\r\nLambda-Runtime-Deadline-Ms: 5\r\nContent-Length: 2\r\n\r\n{}";
        let (addr, _) = scripted(vec![GARBAGE, GONE, NO_ID], vec![0]).await;
        let mut api = RuntimeApi::new(addr);
        let e = api.next().await.unwrap_err();
        assert!(
            matches!(&e, RuntimeApiError::Reply { path, .. } if path.ends_with("/invocation/next")),
            "{e}"
        );
        let e = api.respond("r9", Bytes::new()).await.unwrap_err();
        assert!(
            matches!(&e, RuntimeApiError::Status { status: 410, body, path } if body == "expired" && path.contains("/r9/response")),
            "{e}"
        );
        let e = api.next().await.unwrap_err();
        assert!(
            matches!(e, RuntimeApiError::Header("Lambda-Runtime-Aws-Request-Id")),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_answer_the_api_refuses_is_logged_and_the_next_invocation_served() {
        const GONE: &[u8] = b"HTTP/1.1 410 Gone\r\nContent-Length: 0\r\n\r\n";
        // After these the server is gone, and `serve` ends with the connection's error.
        let (addr, _) = scripted(vec![NEXT, GONE, NEXT, ACCEPTED], vec![]).await;
        let mut api = RuntimeApi::new(addr);
        let mut calls = 0;
        let ended = serve(&mut api, |invocation| {
            calls += 1;
            async move { Ok(String::from_utf8(invocation.payload.to_vec()).unwrap()) }
        })
        .await;
        assert_eq!(calls, 2);
        assert!(
            matches!(
                ended,
                Err(RuntimeApiError::Io { .. } | RuntimeApiError::Connect { .. })
            ),
            "{ended:?}"
        );
    }

    /// A server that takes one request and answers it with `reply`; gives its address and,
    /// once answered, the request's head and body.
    async fn capture_one(
        reply: &'static [u8],
    ) -> (String, tokio::task::JoinHandle<(String, String)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut stream = BufReader::new(stream);
            let mut head = String::new();
            while !head.ends_with("\r\n\r\n") {
                stream.read_line(&mut head).await.unwrap();
            }
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap();
            let mut body = vec![0; length];
            stream.read_exact(&mut body).await.unwrap();
            stream.get_mut().write_all(reply).await.unwrap();
            (head, String::from_utf8(body).unwrap())
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn failures_carry_their_type_in_a_header_and_the_document() {
        let (addr, seen) = capture_one(ACCEPTED).await;
        let mut api = RuntimeApi::new(addr.clone());
        api.fail("r3", &Failure::new("NotAStreamEvent", "no \"Records\""))
            .await
            .unwrap();
        let (head, body) = seen.await.unwrap();
        assert!(
            head.starts_with("POST /2018-06-01/runtime/invocation/r3/error HTTP/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains(&format!("Host: {addr}\r\n")), "{head}");
        assert!(
            head.contains("lambda-runtime-function-error-type: NotAStreamEvent\r\n"),
            "{head}"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            serde_json::json!({"errorType": "NotAStreamEvent", "errorMessage": "no \"Records\""})
        );
    }

    /// `cargo lambda watch` names its Runtime API as a URL with a path
    /// (`http://[::]:9000/.rt/stream-indexer`); Lambda as `host:port`.
    #[tokio::test]
    async fn an_endpoint_given_as_a_url_with_a_path_is_reached_under_that_path() {
        for (form, prefix) in [
            ("http://{addr}/.rt/stream-indexer/", "/.rt/stream-indexer"),
            ("http://{addr}", ""),
        ] {
            let (addr, seen) = capture_one(ACCEPTED).await;
            let mut api = RuntimeApi::new(form.replace("{addr}", &addr));
            api.respond("r4", Bytes::from_static(b"{}")).await.unwrap();
            let (head, _) = seen.await.unwrap();
            let request_line = format!("POST {prefix}/2018-06-01/runtime/invocation/r4/response ");
            assert!(head.starts_with(&request_line), "{form}: {head}");
            assert!(
                head.contains(&format!("Host: {addr}\r\n")),
                "{form}: {head}"
            );
        }
    }
}
