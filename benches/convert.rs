//! Event JSON → NDJSON `_bulk` bodies for a 6 MB batch of ~2,300 one-KB records, the path each
//! invocation runs before any network I/O. Run: `cargo bench --bench convert`.

use std::time::{Duration, Instant};

use stream_indexer::bulk;
use stream_indexer::change::{self, VersionSource};
use stream_indexer::metadata::Metadata;
use stream_indexer::projection::Projection;
use stream_indexer::routing::Router;
use support::record;

mod support;

/// Three rules, the last one matching every record (read from the NewImage and, on
/// NEW_AND_OLD_IMAGES, the OldImage: `email` is not a key attribute).
const ROUTES: &str = r#"[
    {"when":{"attribute":"pk","prefix":"order#"},"index":"orders"},
    {"when":{"attribute":"email","suffix":"@internal"},"index":null},
    {"when":{"attribute":"pk","prefix":"customer#"},"index":"customers-{table}"}
]"#;

fn main() {
    metrics_cost();
    let plain = Router::single("items");
    let routed = Router::parse(Some("items"), Some(ROUTES)).unwrap();
    let all = Projection::default();
    let excluded = Projection::parse(Some("email,notes,address.geo"), None).unwrap();
    for old_image in [true, false] {
        measure(old_image, &plain, &all, "");
        measure(
            old_image,
            &routed,
            &excluded,
            " with 3 ROUTES and EXCLUDE_ATTRIBUTES",
        );
    }
}

fn measure(old_image: bool, router: &Router, projection: &Projection, label: &str) {
    let records: Vec<String> = (0..2300).map(|i| record(i, old_image)).collect();
    let payload = format!(r#"{{"Records":[{}]}}"#, records.join(","));
    let view = if old_image {
        "NEW_AND_OLD_IMAGES"
    } else {
        "NEW_IMAGE"
    };
    let view = format!("{view}{label}");
    let mb = payload.len() as f64 / 1e6;
    let versions = VersionSource::StreamTime;
    let max_bytes = 5 * 1024 * 1024;

    let run = || {
        let plan = change::plan(
            &payload,
            &versions,
            &change::Shape {
                router,
                projection,
                metadata: &Metadata::default(),
            },
            max_bytes,
        )
        .unwrap();
        let pending: Vec<usize> = (0..plan.changes.len()).collect();
        let bodies = bulk::pack(&plan.changes, &pending, max_bytes, 1000);
        bodies.iter().map(|b| b.bytes.len()).sum::<usize>()
    };
    let out_bytes = run();
    // Warm up, then time whole runs for a few seconds; report the median.
    for _ in 0..5 {
        run();
    }
    let mut times = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) || times.len() < 20 {
        let t = Instant::now();
        std::hint::black_box(run());
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = times[times.len() / 2];
    eprintln!(
        "p10 {:.2} ms, p90 {:.2} ms",
        times[times.len() / 10] * 1e3,
        times[times.len() * 9 / 10] * 1e3
    );
    let best = times[0];
    println!(
        "{view}: event → bulk bodies: {} records, {:.2} MB in, {:.2} MB out; median {:.2} ms = {:.0} MB/s, best {:.2} ms = {:.0} MB/s ({} runs, one thread)",
        records.len(),
        mb,
        out_bytes as f64 / 1e6,
        median * 1e3,
        mb / median,
        best * 1e3,
        mb / best,
        times.len()
    );

    // The ceiling for reference: a validate-only pass over the same JSON.
    let t = Instant::now();
    let n = 20;
    for _ in 0..n {
        let v: serde::de::IgnoredAny = serde_json::from_str(&payload).unwrap();
        std::hint::black_box(v);
    }
    let per = t.elapsed().as_secs_f64() / n as f64;
    println!(
        "{view}: validate-only pass (serde IgnoredAny) over the same JSON: {:.0} MB/s; ours is {:.0}% of it (median)",
        mb / per,
        100.0 * per / median
    );
}

/// The per-invocation cost of the metrics document (built once per invocation, whatever the
/// batch size), to set beside the milliseconds a batch takes above.
fn metrics_cost() {
    use stream_indexer::handler::Summary;
    use stream_indexer::metrics::{MetricsConfig, emf};
    let summary = Summary {
        records: 2300,
        indexed: 2200,
        superseded: 100,
        bulk_requests: 3,
        bulk_bytes: 1_900_000,
        bulk_latency_ms: (0..100).collect(),
        lag_ms_max: Some(1500),
        lag_ms_p50: Some(700),
        ..Summary::default()
    };
    let config = MetricsConfig {
        namespace: "StreamIndexer".into(),
    };
    let n = 20_000;
    let t = Instant::now();
    for i in 0..n {
        std::hint::black_box(emf(&config, "stream-indexer", "items", &summary, i));
    }
    println!(
        "metrics: one EMF document per invocation (100 latency values): {:.1} µs",
        t.elapsed().as_secs_f64() / n as f64 * 1e6
    );
}
