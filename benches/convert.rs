//! Event JSON → NDJSON `_bulk` bodies for a 6 MB batch of ~2,300 one-KB records, the path each
//! invocation runs before any network I/O. Run: `cargo bench --bench convert`.

use std::time::{Duration, Instant};

use stream_indexer::pipeline::bulk;
use stream_indexer::pipeline::metadata::Metadata;
use stream_indexer::pipeline::plan;
use stream_indexer::pipeline::projection::Projection;
use stream_indexer::pipeline::routing::Router;
use stream_indexer::pipeline::version::VersionSource;
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
    // `cargo bench --bench convert -- NEW_IMAGE`: only the case of that label, as printed before
    // its colon (to profile one case).
    let only: Option<String> = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let only = only.as_deref();
    if only.is_none() {
        metrics_cost();
    }
    let plain = Router::single("items");
    let routed = Router::parse(Some("items"), Some(ROUTES)).unwrap();
    let all = Projection::default();
    let excluded = Projection::parse(Some("email,notes,address.geo"), None).unwrap();
    for old_image in [false, true] {
        measure(old_image, &plain, &all, "", only);
        measure(
            old_image,
            &routed,
            &excluded,
            " with 3 ROUTES and EXCLUDE_ATTRIBUTES",
            only,
        );
    }
}

fn measure(
    old_image: bool,
    router: &Router,
    projection: &Projection,
    label: &str,
    only: Option<&str>,
) {
    let view = if old_image {
        "NEW_AND_OLD_IMAGES"
    } else {
        "NEW_IMAGE"
    };
    let view = format!("{view}{label}");
    if only.is_some_and(|o| view != o) {
        return;
    }
    let records: Vec<String> = (0..2300).map(|i| record(i, old_image)).collect();
    let payload = format!(r#"{{"Records":[{}]}}"#, records.join(","));
    let mb = payload.len() as f64 / 1e6;
    let versions = VersionSource::StreamTime;
    let max_bytes = 5 * 1024 * 1024;

    let run = || {
        let plan = plan::plan(
            &payload,
            &versions,
            &plan::Shape {
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
    // The reference: a validate-only pass over the same JSON.
    let validate = || {
        let v: serde::de::IgnoredAny = serde_json::from_str(&payload).unwrap();
        std::hint::black_box(v);
    };
    // What lambda_runtime does with each payload before our handler sees it (its
    // `deserializer::deserialize` into our event type, `Box<RawValue>`): the scan it adds.
    let runtime_reading = || {
        let jd = &mut serde_json::Deserializer::from_slice(payload.as_bytes());
        let v: Box<serde_json::value::RawValue> = serde_path_to_error::deserialize(jd).unwrap();
        std::hint::black_box(v);
    };
    let out_bytes = run();
    for _ in 0..5 {
        run();
        validate();
        runtime_reading();
    }
    // The three alternate for a few seconds, so a busy moment of the machine slows all alike.
    let (mut ours, mut reference, mut runtime) = (Vec::new(), Vec::new(), Vec::new());
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) || ours.len() < 20 {
        let t = Instant::now();
        std::hint::black_box(run());
        ours.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        validate();
        reference.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        runtime_reading();
        runtime.push(t.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0])
    };
    let (ours_median, ours_best) = median(&mut ours);
    let (reference_median, _) = median(&mut reference);
    let (runtime_median, _) = median(&mut runtime);
    println!(
        "{view}: event → bulk bodies: {} records, {:.2} MB in, {:.2} MB out; median {:.2} ms = {:.0} MB/s, best {:.2} ms = {:.0} MB/s; validate-only pass (serde IgnoredAny) median {:.0} MB/s; ours is {:.0}% of it ({} runs each, alternating, one thread)",
        records.len(),
        mb,
        out_bytes as f64 / 1e6,
        ours_median * 1e3,
        mb / ours_median,
        ours_best * 1e3,
        mb / ours_best,
        mb / reference_median,
        100.0 * reference_median / ours_median,
        ours.len()
    );
    println!(
        "{view}: lambda_runtime's reading of the payload (Box<RawValue>) median {:.2} ms, {:.0}% of ours",
        runtime_median * 1e3,
        100.0 * runtime_median / ours_median
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
