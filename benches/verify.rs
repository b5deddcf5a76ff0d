//! `verify` at scale: the real binary over a 100,000-item table (the backfill bench's) and an
//! index holding the same documents, with its peak RSS (VmHWM) and CPU time read from /proc
//! while it runs. Needs the local servers:
//!
//! ```sh
//! infra/local.sh start && eval "$(infra/local.sh env)" && cargo bench --bench verify
//! ```
//!
//! `BENCH_ITEMS` changes the table size (default 100000); `BENCH_SEGMENTS` the scan segments
//! (default 8).

use std::time::{Duration, Instant};

use stream_indexer::handler::Indexer;
use stream_indexer::sink::template;

mod support;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let segments = std::env::var("BENCH_SEGMENTS").unwrap_or_else(|_| "8".into());
    let support::Bench {
        n,
        endpoint,
        os_url,
        table,
        ..
    } = support::bench_table().await?;

    // The index: the same items through the function's path (no scan: moto's is slow).
    let index = format!("bench-verify-{n}");
    let config = support::config(&os_url, &index)?;
    let indexer = Indexer::new(config).await?;
    template::create_index(&indexer.opensearch, &index).await?;
    let keys = vec!["pk".to_string()];
    let t = Instant::now();
    for start in (0..n).step_by(1000) {
        let items: Vec<_> = (start..(start + 1000).min(n)).map(support::item).collect();
        let (versions, secs) = stream_indexer::tools::read_time::read_versions(
            std::time::SystemTime::now(),
            Duration::from_secs(5),
            None,
        );
        let payload =
            stream_indexer::tools::read_time::synthetic_batch(&table, &keys, &items, secs);
        let h = indexer
            .handle_versioned(
                &payload,
                tokio::time::Instant::now() + Duration::from_secs(300),
                &versions,
            )
            .await?;
        anyhow::ensure!(
            h.summary.indexed + h.summary.superseded == items.len(),
            "{:?}",
            h.summary
        );
    }
    println!(
        "indexed {n} documents in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_verify"))
        .args([
            "--table",
            &table,
            "--segments",
            &segments,
            "--quiet",
            "--json",
        ])
        .env("OPENSEARCH_URL", &os_url)
        .env("OPENSEARCH_INDEX", &index)
        .env("DYNAMODB_ENDPOINT", &endpoint)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut last = (0, 0.0);
    while child.try_wait()?.is_none() {
        if let Some((cpu, hwm)) = support::usage(&pid.to_string()) {
            last = (hwm, cpu);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let out = child.wait_with_output()?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    anyhow::ensure!(out.status.code() == Some(0), "verify found drift: {report}");
    let items = report["items"].as_u64().unwrap_or(0);
    let documents = report["documents"].as_u64().unwrap_or(0);
    println!(
        "verify ({items} items, {documents} documents, {segments} segments): {elapsed:.1} s, {:.0} items/s, peak RSS {:.1} MiB, CPU {:.1} s ({:.0} µs per item and document)",
        items as f64 / elapsed,
        last.0 as f64 / 1024.0,
        last.1,
        1e6 * last.1 / (items + documents).max(1) as f64
    );
    Ok(())
}
