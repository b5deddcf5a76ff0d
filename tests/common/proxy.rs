//! A fault-injecting HTTP/1.1 proxy in front of the real server: each request is passed through,
//! answered with an error status, cut off, delayed, or has chosen bulk items answered 429, as
//! the test's `decide` function says.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// What to do with one request.
#[derive(Debug, Clone)]
pub enum Fault {
    Pass,
    /// Answer this status without forwarding.
    Status(u16),
    /// Close the connection without forwarding or answering.
    Reset,
    /// Forward (the server applies the writes), then close without answering.
    LostAck,
    /// Wait, then forward.
    Delay(Duration),
    /// Forward all but the bulk actions whose `_id` matches; answer those items 429.
    ItemsTooMany(fn(&str) -> bool),
}

pub struct Request {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    /// The query string with its `?`, or empty.
    pub query: String,
    /// The `host` header, as sent.
    pub host: String,
    /// Every header but `host` and `content-length`, as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_values(name).into_iter().next()
    }

    /// Every value of header `name` (any case), in order.
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

type Decide = Box<dyn Fn(&Request) -> Fault + Send + Sync>;

pub struct Proxy {
    pub url: String,
    decide: Arc<Mutex<Decide>>,
    pub requests: Arc<AtomicU64>,
    pub faults: Arc<AtomicU64>,
}

impl Proxy {
    pub async fn start(
        upstream: &str,
        decide: impl Fn(&Request) -> Fault + Send + Sync + 'static,
    ) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let decide: Arc<Mutex<Decide>> = Arc::new(Mutex::new(Box::new(decide)));
        let requests = Arc::new(AtomicU64::new(0));
        let faults = Arc::new(AtomicU64::new(0));
        let upstream = upstream.to_string();
        let (d, r, f) = (decide.clone(), requests.clone(), faults.clone());
        tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    return;
                };
                let (d, r, f, upstream) = (d.clone(), r.clone(), f.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, &upstream, d, r, f).await;
                });
            }
        });
        Proxy {
            url,
            decide,
            requests,
            faults,
        }
    }

    pub fn set(&self, decide: impl Fn(&Request) -> Fault + Send + Sync + 'static) {
        *self.decide.lock().unwrap() = Box::new(decide);
    }
}

async fn serve(
    conn: TcpStream,
    upstream: &str,
    decide: Arc<Mutex<Decide>>,
    requests: Arc<AtomicU64>,
    faults: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("/");
        let (path, query) = match target.find('?') {
            Some(q) => (target[..q].to_string(), target[q..].to_string()),
            None => (target.to_string(), String::new()),
        };
        let mut length = 0usize;
        let mut host = String::new();
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).await?;
            let h = h.trim_end().to_string();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if k.eq_ignore_ascii_case("host") {
                    host = v.trim().to_string();
                }
                if !k.eq_ignore_ascii_case("host") && !k.eq_ignore_ascii_case("content-length") {
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).await?;
        let request = Request {
            method,
            path,
            query,
            host,
            headers,
            body,
        };
        requests.fetch_add(1, Ordering::Relaxed);
        let fault = (decide.lock().unwrap())(&request);
        if !matches!(fault, Fault::Pass) {
            faults.fetch_add(1, Ordering::Relaxed);
        }
        let forward = |body: Vec<u8>| {
            let mut rb = client.request(
                request.method.parse().unwrap(),
                format!("{upstream}{}{}", request.path, request.query),
            );
            for (k, v) in &request.headers {
                rb = rb.header(k, v);
            }
            rb.body(body).send()
        };
        let (status, response): (u16, Vec<u8>) = match fault {
            Fault::Pass => {
                let res = forward(request.body.clone()).await.unwrap();
                (res.status().as_u16(), res.bytes().await.unwrap().to_vec())
            }
            Fault::Status(s) => (
                s,
                format!(
                    r#"{{"error":{{"type":"injected","reason":"injected {s}"}},"status":{s}}}"#
                )
                .into_bytes(),
            ),
            Fault::Reset => return Ok(()),
            Fault::LostAck => {
                let res = forward(request.body.clone()).await.unwrap();
                let _ = res.bytes().await;
                return Ok(());
            }
            Fault::Delay(d) => {
                tokio::time::sleep(d).await;
                let res = forward(request.body.clone()).await.unwrap();
                (res.status().as_u16(), res.bytes().await.unwrap().to_vec())
            }
            Fault::ItemsTooMany(matches) => items_too_many(&request, matches, forward).await,
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            response.len()
        );
        let conn = reader.get_mut();
        conn.write_all(head.as_bytes()).await?;
        conn.write_all(&response).await?;
        conn.flush().await?;
    }
}

/// Splits a bulk body into actions, forwards the ones not chosen, and answers the chosen ones
/// with per-item 429s at their positions.
async fn items_too_many<F, Fut>(
    request: &Request,
    matches: fn(&str) -> bool,
    forward: F,
) -> (u16, Vec<u8>)
where
    F: Fn(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<reqwest::Response>>,
{
    let text = std::str::from_utf8(&request.body).unwrap();
    let mut lines = text.lines().peekable();
    let mut actions: Vec<(bool, String)> = Vec::new(); // (rejected, lines)
    while let Some(action) = lines.next() {
        let meta: Value = serde_json::from_str(action).unwrap();
        let verb = meta.as_object().unwrap().keys().next().unwrap().clone();
        let id = meta[&verb]["_id"].as_str().unwrap_or("").to_string();
        let mut chunk = format!("{action}\n");
        if verb == "index" || verb == "create" {
            chunk.push_str(lines.next().unwrap());
            chunk.push('\n');
        }
        actions.push((matches(&id), chunk));
    }
    let kept: String = actions
        .iter()
        .filter(|(r, _)| !r)
        .map(|(_, c)| c.as_str())
        .collect();
    let mut kept_items: Vec<Value> = Vec::new();
    if !kept.is_empty() {
        let res = forward(kept.into_bytes()).await.unwrap();
        let v: Value = res.json().await.unwrap();
        kept_items = v["items"].as_array().unwrap().clone();
    }
    let mut kept_iter = kept_items.into_iter();
    let items: Vec<Value> = actions
        .iter()
        .map(|(rejected, chunk)| {
            if *rejected {
                let meta: Value = serde_json::from_str(chunk.lines().next().unwrap()).unwrap();
                let verb = meta.as_object().unwrap().keys().next().unwrap().clone();
                serde_json::json!({verb.clone(): {"_id": meta[&verb]["_id"], "status": 429,
                    "error": {"type": "es_rejected_execution_exception", "reason": "injected per-item rejection"}}})
            } else {
                kept_iter.next().unwrap()
            }
        })
        .collect();
    (
        200,
        serde_json::to_vec(&serde_json::json!({"took": 1, "errors": true, "items": items}))
            .unwrap(),
    )
}
