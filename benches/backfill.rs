//! Backfill throughput next to the server's raw ceiling: 100,000 items loaded into a fresh index
//! by the scan backfill (from a table) and by the export backfill (from a local export in S3:
//! 16 gzip data files with manifests), and the same documents as pre-built `_bulk` bodies posted
//! with the same concurrency into another. Needs the local servers:
//!
//! ```sh
//! infra/local.sh start && eval "$(infra/local.sh env)" && cargo bench --bench backfill
//! cargo bench --bench backfill -- export    # the export mode only (no table scan)
//! cargo bench --bench backfill -- scan      # the scan mode only
//! ```
//!
//! `BENCH_ITEMS` changes the number of items (default 100000).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use futures::stream::{self, StreamExt};
use stream_indexer::handler::Indexer;
use stream_indexer::pipeline::plan;
use stream_indexer::pipeline::version::VersionSource;
use stream_indexer::tools::backfill::{self, Options, from_export};
use stream_indexer::tools::export::{self, Location, Share};
use stream_indexer::{pipeline::bulk, sink::template, tools::ddb_json};
use support::cpu_secs;
use tokio::io::AsyncWriteExt as _;

mod support;

type Item = HashMap<String, AttributeValue>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; the mode is the one other argument.
    let mode = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let (scan, from_export) = match mode.as_deref() {
        None => (true, true),
        Some("scan") => (true, false),
        Some("export") => (false, true),
        Some(other) => anyhow::bail!("unknown mode {other:?}: scan or export"),
    };
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let os_url = std::env::var("OPENSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into());
    let config_for = |index: &str| support::config(&os_url, index);
    let bench = if scan {
        Some(support::bench_table().await?)
    } else {
        None
    };
    let items: Vec<Item> = match &bench {
        Some(b) => {
            let mut items = Vec::with_capacity(b.n);
            let mut pages = b
                .ddb
                .scan()
                .table_name(&b.table)
                .into_paginator()
                .items()
                .send();
            while let Some(i) = pages.next().await {
                items.push(i?);
            }
            items
        }
        None => (0..support::bench_items()).map(support::item).collect(),
    };
    let n = items.len();
    let table = bench
        .as_ref()
        .map(|b| b.table.clone())
        .unwrap_or_else(|| format!("bench-{n}"));

    // The ceiling: the same documents, bodies built beforehand, posted with the same concurrency.
    let ceiling_index = format!("bench-ceiling-{stamp}");
    let ceiling = Indexer::new(config_for(&ceiling_index)?).await?;
    // No record: each bench index is written under its own name, and records it on its first load.
    template::apply(
        &ceiling.opensearch,
        template::IndexTemplate::default(),
        "bench",
        "bench-*",
        None,
    )
    .await?;
    let keys = vec!["pk".to_string()];
    let mut bodies = Vec::new();
    for page in items.chunks(1000) {
        let payload = stream_indexer::tools::read_time::synthetic_batch(&table, &keys, page, 1);
        let plan = plan::plan(
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
    // Posts every body into a fresh index with the same concurrency; docs per second.
    let post_all = |index: String| {
        let (os, bodies) = (&ceiling.opensearch, bodies.clone());
        async move {
            template::create_index(os, &index).await?;
            let t = Instant::now();
            let index = &index;
            stream::iter(bodies)
                .map(|(bytes, actions)| async move {
                    os.bulk(index, bytes, &actions, Duration::from_secs(120))
                        .await
                })
                .buffer_unordered(concurrency)
                .collect::<Vec<_>>()
                .await;
            anyhow::Ok(n as f64 / t.elapsed().as_secs_f64())
        }
    };
    // Every run's index is deleted once measured: the in-memory server slows down as it holds
    // more documents, and each run should find it as empty as the others did.
    let os = &ceiling.opensearch;
    let delete = |index: String| async move {
        let _ = os
            .request(
                stream_indexer::sink::transport::Method::Delete,
                &format!("/{index}"),
                None,
                Duration::from_secs(60),
            )
            .await;
    };
    let before = post_all(ceiling_index.clone()).await?;
    delete(ceiling_index).await;
    let mut loads = Vec::new();
    if let Some(bench) = &bench {
        let (index, rate) = scan_mode(bench, &config_for, stamp).await?;
        delete(index).await;
        loads.push(("scan backfill", rate));
    }
    if from_export {
        let (index, rate) = export_mode(&items, &table, &config_for, stamp).await?;
        delete(index).await;
        loads.push(("export backfill", rate));
    }
    // Again after the loads, so that the ceiling is not measured on a fresher server only.
    let after_index = format!("bench-ceiling-after-{stamp}");
    let after = post_all(after_index.clone()).await?;
    delete(after_index).await;
    let ceiling_rate = (before + after) / 2.0;
    println!(
        "server ceiling (pre-built bodies, concurrency {concurrency}): {ceiling_rate:.0} docs/s (before the loads {before:.0}, after {after:.0})"
    );
    for (what, rate) in loads {
        println!(
            "{what} / server ceiling: {:.0}%",
            100.0 * rate / ceiling_rate
        );
    }
    Ok(())
}

/// The scan backfill: scan, convert, bulk, outcomes, checkpoint; and the source's own ceiling.
async fn scan_mode(
    bench: &support::Bench,
    config_for: &impl Fn(&str) -> anyhow::Result<stream_indexer::config::Config>,
    stamp: u64,
) -> anyhow::Result<(String, f64)> {
    let (n, ddb, table) = (bench.n, &bench.ddb, &bench.table);
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
        ddb,
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
        "scan backfill ({n} items, scan + convert + bulk + checkpoint): {backfill_rate:.0} items/s"
    );
    println!("source ceiling (the same parallel scan, nothing written): {scan_rate:.0} items/s");
    println!(
        "this process used {backfill_cpu:.1} s of CPU during the {elapsed:.1} s scan backfill ({:.0} µs per item)",
        1e6 * backfill_cpu / s.scanned as f64
    );
    Ok((bf_index, backfill_rate))
}

/// Data files in the local export.
const EXPORT_FILES: usize = 16;

/// The export backfill: the items written as a local export in S3 (AWS's layout, with
/// manifests), then loaded: download, gunzip, convert, bulk, outcomes, checkpoint.
async fn export_mode(
    items: &[Item],
    table: &str,
    config_for: &impl Fn(&str) -> anyhow::Result<stream_indexer::config::Config>,
    stamp: u64,
) -> anyhow::Result<(String, f64)> {
    let n = items.len();
    let endpoint =
        std::env::var("DYNAMODB_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:8000".into());
    let sdk = stream_indexer::tools::aws::sdk_config(Some(&endpoint)).await;
    let s3 = stream_indexer::tools::aws::s3_client(&sdk, Some(&endpoint));
    let bucket = format!("bench-exports-{stamp}");
    s3.create_bucket().bucket(&bucket).send().await?;
    let location = Location {
        bucket: bucket.clone(),
        dir: format!("bench/AWSDynamoDB/{stamp}-bench"),
    };
    let mut manifest = String::new();
    let export_time = std::time::SystemTime::now();
    for (f, chunk) in items.chunks(n.div_ceil(EXPORT_FILES)).enumerate() {
        let mut gz = async_compression::tokio::write::GzipEncoder::new(Vec::new());
        let mut line = String::new();
        for item in chunk {
            line.clear();
            line.push_str("{\"Item\":");
            ddb_json::table::write_item(&mut line, item);
            line.push_str("}\n");
            gz.write_all(line.as_bytes()).await?;
        }
        gz.shutdown().await?;
        let key = format!("{}/data/{f:04}.json.gz", location.dir);
        s3.put_object()
            .bucket(&bucket)
            .key(&key)
            .body(gz.into_inner().into())
            .send()
            .await?;
        manifest.push_str(&format!(
            "{{\"itemCount\":{},\"dataFileS3Key\":\"{key}\"}}\n",
            chunk.len()
        ));
    }
    let summary = serde_json::json!({
        "exportTime": aws_sdk_dynamodb::primitives::DateTime::from(export_time)
            .fmt(aws_sdk_dynamodb::primitives::DateTimeFormat::DateTime)?,
        "itemCount": n,
        "outputFormat": "DYNAMODB_JSON",
        "tableArn": format!("arn:aws:dynamodb:us-east-1:123456789012:table/{table}"),
        "manifestFilesS3Key": format!("{}/manifest-files.json", location.dir),
    });
    for (name, body) in [
        ("manifest-files.json", manifest),
        ("manifest-summary.json", summary.to_string()),
    ] {
        s3.put_object()
            .bucket(&bucket)
            .key(format!("{}/{name}", location.dir))
            .body(body.into_bytes().into())
            .send()
            .await?;
    }
    let opened = export::open(&s3, &location).await?;
    let index = format!("bench-export-{stamp}");
    let indexer = Indexer::new(config_for(&index)?).await?;
    template::create_index(&indexer.opensearch, &index).await?;
    let opts = from_export::Options {
        table: table.to_string(),
        key_names: vec!["pk".into()],
        export_time,
        share: Share::ALL,
        files_in_parallel: 2 * indexer.config.bulk_concurrency,
        page_size: 1000,
        clock_skew: Duration::from_secs(5),
        gc_deletes: Some("1h".into()),
        restore_gc_deletes: true,
        allow_old_export: false,
        checkpoint: Some(std::env::temp_dir().join(format!("bench-export-{stamp}.json"))),
        resume: false,
        dry_run: false,
        page_timeout: Duration::from_secs(300),
    };
    let counters = from_export::Counters::default();
    let t = Instant::now();
    let cpu = cpu_secs();
    let s = from_export::run(
        &indexer,
        &s3,
        &opened,
        &opts,
        &AtomicBool::new(false),
        &counters,
    )
    .await?;
    let elapsed = t.elapsed().as_secs_f64();
    let load_cpu = cpu_secs() - cpu;
    let rate = s.scanned as f64 / elapsed;
    anyhow::ensure!(
        s.indexed as usize == n && s.unaccounted() == 0,
        "export load incomplete: {s:?}"
    );

    // The source side alone: download, gunzip and convert every file, nothing written.
    let t = Instant::now();
    let dry = from_export::run(
        &indexer,
        &s3,
        &opened,
        &from_export::Options {
            dry_run: true,
            checkpoint: None,
            ..opts.clone()
        },
        &AtomicBool::new(false),
        &from_export::Counters::default(),
    )
    .await?;
    let source_rate = dry.scanned as f64 / t.elapsed().as_secs_f64();
    println!(
        "export backfill ({n} items, {EXPORT_FILES} files, {:.1} MB gzip; download + gunzip + convert + bulk + checkpoint): {rate:.0} items/s",
        opened.bytes() as f64 / 1e6
    );
    println!(
        "export source ceiling (download + gunzip + convert, nothing written): {source_rate:.0} items/s"
    );
    println!(
        "this process used {load_cpu:.1} s of CPU during the {elapsed:.1} s export load ({:.0} µs per item)",
        1e6 * load_cpu / s.scanned as f64
    );
    Ok((index, rate))
}
