//! The real `stream-indexer` binary under a Lambda Runtime API emulator against the local
//! server: cold start (spawn → first `/next`), CPU time per 1,000 records (from /proc, 100-record
//! batches of ~1 KB items), and peak RSS (VmHWM) after 6 MB batches. Needs the local server:
//!
//! ```sh
//! infra/local.sh start os && eval "$(infra/local.sh env)" && cargo bench --bench function
//! ```

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, BufReader};

#[path = "../tests/common/lambda_api.rs"]
#[allow(dead_code)]
mod lambda_api;
mod support;

use lambda_api::{Answer, LambdaApi};

fn deadline() -> u64 {
    (SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(60)).as_millis()
        as u64
}

fn function(api_addr: &str, url: &str, index: &str) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_stream-indexer"))
        .env("AWS_LAMBDA_RUNTIME_API", api_addr)
        .env("AWS_LAMBDA_FUNCTION_NAME", "stream-indexer")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("OPENSEARCH_URL", url)
        .env("OPENSEARCH_INDEX", index)
        .env("METRICS", "off")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start stream-indexer")
}

/// (CPU seconds, peak RSS in KiB) of the running function.
fn usage(pid: u32) -> (f64, u64) {
    support::usage(&pid.to_string()).expect("the function is running")
}

fn batch(from: usize, n: usize, old_image: bool) -> String {
    let records: Vec<String> = (from..from + n)
        .map(|i| support::record(i, old_image))
        .collect();
    format!(r#"{{"Records":[{}]}}"#, records.join(","))
}

async fn invoke_ok(api: &LambdaApi, payload: &str) {
    match api.invoke(payload, deadline()).await {
        Answer::Response(r) => assert_eq!(r["batchItemFailures"], serde_json::json!([]), "{r}"),
        Answer::Error(e) => panic!("function error: {e}"),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Spawn → the first `GET .../invocation/next` on a bare listener, in ms.
async fn cold_start(url: &str) -> f64 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let started = Instant::now();
    let mut child = function(&addr, url, "bench-cold");
    let (conn, _) = listener.accept().await.unwrap();
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).await.unwrap();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    assert!(line.contains("/runtime/invocation/next"), "{line}");
    child.kill().await.unwrap();
    ms
}

#[tokio::main]
async fn main() {
    let url = std::env::var("OPENSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into());
    let mut starts = Vec::new();
    for _ in 0..20 {
        starts.push(cold_start(&url).await);
    }
    let best = starts.iter().cloned().fold(f64::MAX, f64::min);
    println!(
        "cold start (spawn → first /next, 20 runs): median {:.1} ms, best {best:.1} ms",
        median(starts)
    );

    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for old_image in [false, true] {
        let view = if old_image {
            "NEW_AND_OLD_IMAGES"
        } else {
            "NEW_IMAGE"
        };
        let index = format!("bench-fn-{}-{stamp}", old_image as u8);
        let api = LambdaApi::start(deadline).await;
        let child = function(&api.addr, &url, &index);
        let pid = child.id().unwrap();
        // Warm-up: the index is created, connections opened.
        invoke_ok(&api, &batch(0, 100, old_image)).await;
        // The fixed cost of an invocation: one-record batches.
        let singles: Vec<String> = (0..500).map(|b| batch(50_000 + b, 1, old_image)).collect();
        let (cpu0, _) = usage(pid);
        for p in &singles {
            invoke_ok(&api, p).await;
        }
        let (cpu1, _) = usage(pid);
        println!(
            "{view}: one-record batches: {:.2} CPU-ms per invocation ({} invocations)",
            (cpu1 - cpu0) * 1000.0 / singles.len() as f64,
            singles.len()
        );
        let (records, per) = (10_000, 100);
        let payloads: Vec<String> = (0..records / per)
            .map(|b| batch(100 + b * per, per, old_image))
            .collect();
        let (cpu0, _) = usage(pid);
        let t = Instant::now();
        for p in &payloads {
            invoke_ok(&api, p).await;
        }
        let elapsed = t.elapsed().as_secs_f64();
        let (cpu1, _) = usage(pid);
        println!(
            "{view}: {records} records in {per}-record batches: {:.1} CPU-ms per 1,000 records ({:.0} records/s wall)",
            (cpu1 - cpu0) * 1000.0 / (records as f64 / 1000.0),
            records as f64 / elapsed
        );
        // 6 MB batches (the largest Lambda delivers).
        let big = if old_image { 2300 } else { 4000 };
        for k in 0..3 {
            let p = batch(100_000 + k * big, big, old_image);
            assert!(p.len() <= 6 * 1024 * 1024, "{} bytes", p.len());
            invoke_ok(&api, &p).await;
        }
        let (_, hwm) = usage(pid);
        println!(
            "{view}: peak RSS after three {big}-record batches (≤ 6 MB each): {:.1} MiB",
            hwm as f64 / 1024.0
        );
        drop(child);
        let _ = reqwest::Client::new()
            .delete(format!("{url}/{index}"))
            .send()
            .await;
    }
}
