//! Backfill throughput next to the server's raw ceiling: a 100,000-item table backfilled into a
//! fresh index, and the same documents as pre-built `_bulk` bodies posted with the same
//! concurrency into another. Needs the local servers:
//!
//! ```sh
//! infra/local.sh start && eval "$(infra/local.sh env)" && cargo bench --bench backfill
//! ```
//!
//! `BENCH_ITEMS` changes the table size (default 100000).

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use stream_indexer::backfill::{self, Options};
use stream_indexer::change::{self, VersionSource};
use stream_indexer::handler::Indexer;
use stream_indexer::{bulk, template};
use support::cpu_secs;

mod support;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let support::Bench {
        n,
        os_url,
        ddb,
        table,
        ..
    } = support::bench_table().await?;

    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let config_for = |index: &str| support::config(&os_url, index);

    // The ceiling: the same documents, bodies built beforehand, posted with the same concurrency.
    let ceiling_index = format!("bench-ceiling-{stamp}");
    let ceiling = Indexer::new(config_for(&ceiling_index)?).await?;
    template::apply(&ceiling.opensearch, "bench", "bench-*").await?;
    template::create_index(&ceiling.opensearch, &ceiling_index).await?;
    let keys = vec!["pk".to_string()];
    let mut items = Vec::with_capacity(n);
    let mut pages = ddb
        .scan()
        .table_name(&table)
        .into_paginator()
        .items()
        .send();
    while let Some(i) = pages.next().await {
        items.push(i?);
    }
    let mut bodies = Vec::new();
    for page in items.chunks(1000) {
        let payload = backfill::synthetic_batch(&table, &keys, page, 1);
        let plan = change::plan(
            &payload,
            &VersionSource::Fixed(1),
            &ceiling.config.shape(),
            ceiling.config.bulk_max_bytes,
        )?;
        let all: Vec<usize> = (0..plan.changes.len()).collect();
        for b in bulk::pack(
            &plan.changes,
            &all,
            ceiling.config.bulk_max_bytes,
            ceiling.config.bulk_max_actions,
        ) {
            let actions: Vec<_> = b.changes.iter().map(|&i| plan.changes[i].action).collect();
            bodies.push((b.bytes, actions));
        }
    }
    let concurrency = ceiling.config.bulk_concurrency;
    let t = Instant::now();
    let os = &ceiling.opensearch;
    let index = &ceiling_index;
    stream::iter(bodies)
        .map(|(bytes, actions)| async move {
            os.bulk(index, bytes, &actions, Duration::from_secs(120))
                .await
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    let ceiling_rate = n as f64 / t.elapsed().as_secs_f64();

    // The backfill itself: scan, convert, bulk, outcomes, checkpoint.
    let bf_index = format!("bench-backfill-{stamp}");
    let indexer = Indexer::new(config_for(&bf_index)?).await?;
    template::create_index(&indexer.opensearch, &bf_index).await?;
    let opts = Options {
        table: table.clone(),
        segments: None,
        page_size: 1000,
        max_items_per_second: None,
        max_read_units_per_second: None,
        clock_skew: Duration::from_secs(5),
        gc_deletes: Some("1h".into()),
        checkpoint: std::env::temp_dir().join(format!("bench-{stamp}.json")),
        resume: false,
        dry_run: false,
        page_timeout: Duration::from_secs(300),
    };
    let t = Instant::now();
    let cpu = cpu_secs();
    let s = backfill::run(
        &indexer,
        &ddb,
        &opts,
        &AtomicBool::new(false),
        &AtomicU64::new(0),
    )
    .await?;
    let elapsed = t.elapsed().as_secs_f64();
    let backfill_cpu = cpu_secs() - cpu;
    let backfill_rate = s.scanned as f64 / elapsed;

    // The source's own ceiling: the same parallel scan with nothing written.
    let t = Instant::now();
    let scanned: usize = stream::iter(0..8)
        .map(|segment| {
            let (ddb, table) = (ddb.clone(), table.clone());
            async move {
                let mut pages = ddb
                    .scan()
                    .table_name(table)
                    .segment(segment)
                    .total_segments(8)
                    .consistent_read(true)
                    .limit(1000)
                    .into_paginator()
                    .items()
                    .send();
                let mut n = 0;
                while let Some(i) = pages.next().await {
                    i.unwrap();
                    n += 1;
                }
                n
            }
        })
        .buffer_unordered(8)
        .fold(0, |a, b| async move { a + b })
        .await;
    let scan_rate = scanned as f64 / t.elapsed().as_secs_f64();
    anyhow::ensure!(
        s.indexed as usize == n && s.unaccounted() == 0,
        "backfill incomplete: {s:?}"
    );

    println!(
        "server ceiling (pre-built bodies, concurrency {concurrency}): {ceiling_rate:.0} docs/s"
    );
    println!(
        "backfill ({n} items, scan + convert + bulk + checkpoint): {backfill_rate:.0} items/s"
    );
    println!("source ceiling (the same parallel scan, nothing written): {scan_rate:.0} items/s");
    println!(
        "backfill / server ceiling: {:.0}%; backfill / min(server, source): {:.0}%",
        100.0 * backfill_rate / ceiling_rate,
        100.0 * backfill_rate / ceiling_rate.min(scan_rate)
    );
    println!(
        "this process used {backfill_cpu:.1} s of CPU during the {elapsed:.1} s backfill ({:.0} µs per item)",
        1e6 * backfill_cpu / s.scanned as f64
    );
    for i in [&ceiling_index, &bf_index] {
        let _ = indexer
            .opensearch
            .request(
                opensearch::http::Method::Delete,
                &format!("/{i}"),
                None,
                Duration::from_secs(60),
            )
            .await;
    }
    Ok(())
}
