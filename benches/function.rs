//! The real `stream-indexer` binary under a Lambda Runtime API emulator against the local
//! server: cold start (spawn → first `/next`), CPU time per 1,000 records (the scheduler's
//! nanosecond clock from /proc, 100-record batches of ~1 KB items), and peak RSS (VmHWM) after
//! 6 MB batches; beside it, in the same blocks, a Python function doing the same everyday job
//! (`infra/reference/function.py`), the reference. The functions run in an environment like
//! Lambda's (only the variables Lambda sets, none of this machine's), because some of them
//! change what the function does at start: the TLS client reads the bundle file that
//! `SSL_CERT_FILE` names instead of using the roots compiled in. Needs the local server
//! (and, once, PyPI for the reference's venv):
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

/// The name the Python reference's figures are printed under.
const REFERENCE: &str = "Python reference (NEW_IMAGE)";

/// A function the emulator runs: the stream function, or the Python reference.
struct Program {
    command: std::path::PathBuf,
    args: &'static [&'static str],
    dir: Option<std::path::PathBuf>,
}

impl Program {
    fn stream_indexer() -> Program {
        Program {
            command: env!("CARGO_BIN_EXE_stream-indexer").into(),
            args: &[],
            dir: None,
        }
    }

    /// `infra/reference/function.py` under awslambdaric, Lambda's Python runtime client: a
    /// Python function doing the same everyday job (see its docstring), the reference the CPU
    /// and memory figures are compared with in the same run. Its venv is made on first use.
    fn python_reference() -> Result<Program, String> {
        let infra = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("infra");
        let out = std::process::Command::new(infra.join("local.sh"))
            .arg("reference-python")
            .stderr(std::process::Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run infra/local.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!("infra/local.sh reference-python: {}", out.status));
        }
        let python = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(Program {
            command: python.into(),
            args: &["-m", "awslambdaric", "function.handler"],
            dir: Some(infra.join("reference")),
        })
    }
}

/// Starts `program` with only what Lambda's environment has (plus the function's own
/// configuration and `extra`), its configuration otherwise at the defaults.
fn function(
    program: &Program,
    api_addr: &str,
    url: &str,
    index: &str,
    extra: &[(&str, &str)],
) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(&program.command);
    command.args(program.args);
    if let Some(dir) = &program.dir {
        command.current_dir(dir);
    }
    command
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "en_US.UTF-8")
        .env("TZ", ":UTC")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_LAMBDA_RUNTIME_API", api_addr)
        .env("AWS_LAMBDA_FUNCTION_NAME", "stream-indexer")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        // The template's LoggingConfig (JSON lines, INFO).
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .env("AWS_LAMBDA_LOG_LEVEL", "INFO")
        .env("OPENSEARCH_URL", url)
        .env("OPENSEARCH_INDEX", index)
        .envs(extra.iter().copied())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("start the function");
    // Logging and metrics stay at their defaults (a log line and a metrics document per
    // invocation), written to a pipe that is read, as Lambda's log agent reads stdout.
    let mut stdout = child.stdout.take().expect("stdout is piped");
    tokio::spawn(async move { tokio::io::copy(&mut stdout, &mut tokio::io::sink()).await });
    child
}

/// The system's CA bundle file, where the usual distributions keep it.
fn ca_bundle() -> Option<&'static str> {
    [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/ca-bundle.pem",
        "/etc/ssl/cert.pem",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).is_file())
}

/// CPU milliseconds (user + system) of the running function.
fn cpu_ms(pid: u32) -> f64 {
    support::cpu_ns(&pid.to_string()).expect("the function is running") as f64 / 1e6
}

/// Peak RSS in KiB of the running function.
fn peak_rss(pid: u32) -> u64 {
    support::usage(&pid.to_string())
        .expect("the function is running")
        .1
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

/// The function's CPU in ms while it answers `payloads`, one invocation each.
async fn cpu_ms_of(api: &LambdaApi, pid: u32, payloads: &[String]) -> f64 {
    let cpu0 = cpu_ms(pid);
    for p in payloads {
        invoke_ok(api, p).await;
    }
    cpu_ms(pid) - cpu0
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Spawn → the first `GET .../invocation/next` on a bare listener, in ms.
async fn cold_start(url: &str, extra: &[(&str, &str)]) -> f64 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let started = Instant::now();
    let mut child = function(&Program::stream_indexer(), &addr, url, "bench-cold", extra);
    let (conn, _) = listener.accept().await.unwrap();
    let mut line = String::new();
    // Held open until the function is killed: closed first, the function's runtime client
    // would report the closed connection on stderr, into the bench's output.
    let mut conn = BufReader::new(conn);
    conn.read_line(&mut line).await.unwrap();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    assert!(line.contains("/runtime/invocation/next"), "{line}");
    child.kill().await.unwrap();
    drop(conn);
    ms
}

#[tokio::main]
async fn main() {
    let url = std::env::var("OPENSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into());
    // With no `SSL_CERT_*` set (as on Lambda) the client trusts the roots compiled in and
    // reads no file; with `SSL_CERT_FILE` (a private CA) it reads that bundle at start. The
    // second line measures the system's bundle given that way.
    let bundle = ca_bundle().map(|b| [("SSL_CERT_FILE", b)]);
    let stores = [
        ("roots compiled in", Some(&[][..])),
        (
            "CA store as one bundle file",
            bundle.as_ref().map(|b| &b[..]),
        ),
    ];
    for (store, extra) in stores {
        let Some(extra) = extra else {
            println!("cold start, {store}: skipped, no CA bundle file found");
            continue;
        };
        let mut starts = Vec::new();
        for _ in 0..20 {
            starts.push(cold_start(&url, extra).await);
        }
        let best = starts.iter().cloned().fold(f64::MAX, f64::min);
        println!(
            "cold start (spawn → first /next, 20 runs), {store}: median {:.1} ms, best {best:.1} ms",
            median(starts)
        );
    }

    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The functions run side by side, measured in alternating blocks: this machine's speed
    // changes by up to a third from one minute to the next, and a block of each in turn meets
    // the same changes. Each figure is the median over the blocks, with their range. The
    // Python reference (NEW_IMAGE) is the first line of comparison: its blocks run between
    // the stream function's, and the ratio of each block pair is reported too.
    let mut programs = vec![
        ("NEW_IMAGE", false, Program::stream_indexer()),
        ("NEW_AND_OLD_IMAGES", true, Program::stream_indexer()),
    ];
    match Program::python_reference() {
        Ok(reference) => programs.push((REFERENCE, false, reference)),
        Err(e) => println!("{REFERENCE}: skipped ({e})"),
    }
    let mut views = Vec::new();
    for (n, (view, old_image, program)) in programs.into_iter().enumerate() {
        let index = format!("bench-fn-{n}-{stamp}");
        let api = LambdaApi::start(deadline).await;
        let child = function(&program, &api.addr, &url, &index, &[]);
        let pid = child.id().unwrap();
        // Warm-up: the index is created, connections opened.
        invoke_ok(&api, &batch(0, 100, old_image)).await;
        views.push((view, old_image, index, api, child, pid));
    }
    const BLOCKS: usize = 10;
    // The fixed cost of an invocation: one-record batches.
    let (singles, per) = (50, 100);
    let mut single_ms = vec![Vec::new(); views.len()];
    let mut per_1000 = vec![Vec::new(); views.len()];
    for block in 0..BLOCKS {
        for (v, (_, old_image, _, api, _, pid)) in views.iter().enumerate() {
            let payloads: Vec<String> = (0..singles)
                .map(|b| batch(50_000 + block * singles + b, 1, *old_image))
                .collect();
            single_ms[v].push(cpu_ms_of(api, *pid, &payloads).await / singles as f64);
        }
    }
    let records = 2_000;
    for block in 0..BLOCKS {
        for (v, (_, old_image, _, api, _, pid)) in views.iter().enumerate() {
            let payloads: Vec<String> = (0..records / per)
                .map(|b| batch(100 + (block * records / per + b) * per, per, *old_image))
                .collect();
            per_1000[v].push(cpu_ms_of(api, *pid, &payloads).await / (records as f64 / 1000.0));
        }
    }
    let spread = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
        (median(v.to_vec()), lo, hi)
    };
    for (v, (view, ..)) in views.iter().enumerate() {
        let (m, lo, hi) = spread(&single_ms[v]);
        println!(
            "{view}: one-record batches: {m:.2} CPU-ms per invocation (median of {BLOCKS} blocks of {singles} invocations, {lo:.2}–{hi:.2})"
        );
        let (m, lo, hi) = spread(&per_1000[v]);
        println!(
            "{view}: {per}-record batches: {m:.1} CPU-ms per 1,000 records (median of {BLOCKS} blocks of {records} records, {lo:.1}–{hi:.1})"
        );
    }
    // The stream function against the reference, block by block (each pair ran one after the
    // other): the share of the reference's CPU the stream function used.
    if let Some(r) = views.iter().position(|v| v.0 == REFERENCE) {
        let ratios = |of: &[Vec<f64>]| -> Vec<f64> {
            of[0].iter().zip(&of[r]).map(|(a, b)| a / b).collect()
        };
        let batches = [
            ("one-record".to_string(), &single_ms),
            (format!("{per}-record"), &per_1000),
        ];
        for (batch, figures) in batches {
            let (m, lo, hi) = spread(&ratios(figures));
            println!(
                "NEW_IMAGE against {REFERENCE}: {batch} batches: {:.1}% of its CPU (median of {BLOCKS} block pairs, {:.1}–{:.1}%)",
                m * 100.0,
                lo * 100.0,
                hi * 100.0
            );
        }
    }
    for (view, old_image, index, api, child, pid) in views {
        // 6 MB batches (the largest Lambda delivers).
        let big = if old_image { 2300 } else { 4000 };
        for k in 0..3 {
            let p = batch(100_000 + k * big, big, old_image);
            assert!(p.len() <= 6 * 1024 * 1024, "{} bytes", p.len());
            invoke_ok(&api, &p).await;
        }
        let hwm = peak_rss(pid);
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
