//! A small Lambda emulator for running the real `stream-indexer` binary in tests: the Runtime
//! API the binary polls (`/2018-06-01/runtime/invocation/next`, `.../response`, `.../error`),
//! and the Invoke API a caller uses (`/2015-03-31/functions/{name}/invocations`), joined by a
//! queue. It also takes `/init/error`, and counts the connections the function opened. The deadline header is whatever the test asks for, so both Lambda's epoch deadline and
//! `cargo lambda watch`'s duration (`600000`) can be sent.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, mpsc, oneshot};

/// How an invocation ended.
#[derive(Debug, Clone)]
pub enum Answer {
    Response(Value),
    /// The function reported an error (`errorType`, `errorMessage`).
    Error(Value),
}

struct Invocation {
    id: String,
    payload: Vec<u8>,
    deadline_ms: u64,
}

struct State {
    queue: mpsc::UnboundedSender<Invocation>,
    next: Mutex<mpsc::UnboundedReceiver<Invocation>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
    ids: AtomicU64,
    /// The deadline header for invocations that come through the Invoke API.
    invoke_deadline: fn() -> u64,
    /// Connections accepted so far.
    connections: AtomicU64,
    /// What the function reported to `/init/error`.
    init_errors: std::sync::Mutex<Vec<Value>>,
    /// Invocations handed to the function and not answered yet, and the most at once.
    in_flight: AtomicU64,
    most_in_flight: AtomicU64,
}

pub struct LambdaApi {
    /// `host:port`, for `AWS_LAMBDA_RUNTIME_API`.
    pub addr: String,
    state: Arc<State>,
}

impl LambdaApi {
    /// Starts the emulator; `invoke_deadline` gives the deadline header of Invoke API calls.
    pub async fn start(invoke_deadline: fn() -> u64) -> LambdaApi {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            queue: tx,
            next: Mutex::new(rx),
            waiting: Mutex::new(HashMap::new()),
            ids: AtomicU64::new(0),
            invoke_deadline,
            connections: AtomicU64::new(0),
            init_errors: std::sync::Mutex::new(Vec::new()),
            in_flight: AtomicU64::new(0),
            most_in_flight: AtomicU64::new(0),
        });
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                s.connections.fetch_add(1, Ordering::Relaxed);
                let s = s.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, s).await;
                });
            }
        });
        LambdaApi { addr, state }
    }

    /// Queues one invocation with the given deadline header and waits for its answer.
    pub async fn invoke(&self, payload: &str, deadline_ms: u64) -> Answer {
        invoke(&self.state, payload.as_bytes().to_vec(), deadline_ms).await
    }

    /// How many connections the function has opened to this API.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// The most invocations the function has held at once (handed out by `/next`, not yet
    /// answered).
    pub fn most_in_flight(&self) -> u64 {
        self.state.most_in_flight.load(Ordering::Relaxed)
    }

    /// The error documents the function posted to `/init/error`.
    pub fn init_errors(&self) -> Vec<Value> {
        self.state.init_errors.lock().unwrap().clone()
    }

    /// Like [`LambdaApi::invoke`] with any bytes (Lambda itself only sends JSON).
    pub async fn invoke_bytes(&self, payload: &[u8], deadline_ms: u64) -> Answer {
        invoke(&self.state, payload.to_vec(), deadline_ms).await
    }
}

async fn invoke(state: &State, payload: Vec<u8>, deadline_ms: u64) -> Answer {
    let id = format!("req-{}", state.ids.fetch_add(1, Ordering::Relaxed));
    let (tx, rx) = oneshot::channel();
    state.waiting.lock().await.insert(id.clone(), tx);
    state
        .queue
        .send(Invocation {
            id,
            payload,
            deadline_ms,
        })
        .unwrap();
    rx.await.expect("the function answered")
}

/// Reads one HTTP/1.1 request: method, path, body (Content-Length or chunked).
async fn read_request(
    reader: &mut BufReader<TcpStream>,
) -> std::io::Result<Option<(String, String, Vec<u8>)>> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("/").to_string();
    let mut length = 0usize;
    let mut chunked = false;
    loop {
        let mut h = String::new();
        reader.read_line(&mut h).await?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
            if k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).await?;
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16)
                .unwrap_or(0);
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).await?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        body.resize(length, 0);
        reader.read_exact(&mut body).await?;
    }
    Ok(Some((method, path, body)))
}

async fn serve(conn: TcpStream, state: Arc<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn);
    while let Some((method, path, body)) = read_request(&mut reader).await? {
        let (status, headers, response): (u16, Vec<(String, String)>, Vec<u8>) =
            if method == "GET" && path == "/2018-06-01/runtime/invocation/next" {
                let next = state.next.lock().await.recv().await;
                let Some(inv) = next else { return Ok(()) };
                let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                state.most_in_flight.fetch_max(now, Ordering::SeqCst);
                let headers = vec![
                    ("Lambda-Runtime-Aws-Request-Id".into(), inv.id),
                    (
                        "Lambda-Runtime-Deadline-Ms".into(),
                        inv.deadline_ms.to_string(),
                    ),
                    (
                        "Lambda-Runtime-Invoked-Function-Arn".into(),
                        "arn:aws:lambda:eu-west-1:123456789012:function:stream-indexer".into(),
                    ),
                    ("Lambda-Runtime-Trace-Id".into(), "Root=1-0-0".into()),
                ];
                (200, headers, inv.payload)
            } else if method == "POST" && path == "/2018-06-01/runtime/init/error" {
                let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                state.init_errors.lock().unwrap().push(value);
                (202, vec![], br#"{"status":"OK"}"#.to_vec())
            } else if let Some(rest) = path.strip_prefix("/2018-06-01/runtime/invocation/") {
                let (id, what) = rest.split_once('/').unwrap_or((rest, ""));
                let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let answer = match what {
                    "response" => Answer::Response(value),
                    _ => Answer::Error(value),
                };
                if let Some(tx) = state.waiting.lock().await.remove(id) {
                    state.in_flight.fetch_sub(1, Ordering::SeqCst);
                    let _ = tx.send(answer);
                }
                // Lambda's reply, a StatusResponse (the Runtime API's OpenAPI specification).
                (202, vec![], br#"{"status":"OK"}"#.to_vec())
            } else if path.starts_with("/2015-03-31/functions/") && path.ends_with("/invocations") {
                match invoke(&state, body, (state.invoke_deadline)()).await {
                    Answer::Response(v) => (200, vec![], serde_json::to_vec(&v).unwrap()),
                    Answer::Error(v) => (
                        200,
                        vec![("X-Amz-Function-Error".into(), "Unhandled".into())],
                        serde_json::to_vec(&v).unwrap(),
                    ),
                }
            } else {
                (404, vec![], b"{}".to_vec())
            };
        let mut head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            response.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        // Head and body in one write, as an HTTP server that buffers its reply sends them (two
        // writes make two segments, and a client that reads the body waits for the second).
        let mut reply = head.into_bytes();
        reply.extend_from_slice(&response);
        let conn = reader.get_mut();
        conn.write_all(&reply).await?;
        conn.flush().await?;
    }
    Ok(())
}
