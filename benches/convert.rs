//! Event JSON → NDJSON `_bulk` bodies for a 6 MB batch of ~2,300 one-KB records, the path each
//! invocation runs before any network I/O. Run: `cargo bench --bench convert`.

use std::time::{Duration, Instant};

use stream_indexer::bulk;
use stream_indexer::change::{self, VersionSource};
use stream_indexer::metadata::Metadata;
use stream_indexer::projection::Projection;
use stream_indexer::routing::Router;

/// Three rules, the last one matching every record (read from the NewImage and, on
/// NEW_AND_OLD_IMAGES, the OldImage: `email` is not a key attribute).
const ROUTES: &str = r#"[
    {"when":{"attribute":"pk","prefix":"order#"},"index":"orders"},
    {"when":{"attribute":"email","suffix":"@internal"},"index":null},
    {"when":{"attribute":"pk","prefix":"customer#"},"index":"customers-{table}"}
]"#;

/// One record whose item is ~1 KB of DynamoDB JSON with a mix of attribute types; with
/// `old_image` the stream is NEW_AND_OLD_IMAGES and the record carries the item twice.
fn record(i: usize, old_image: bool) -> String {
    let r = format!(
        r#"{{"eventID":"e{i}","eventName":"MODIFY","eventVersion":"1.1","eventSource":"aws:dynamodb","awsRegion":"eu-west-1","dynamodb":{{"ApproximateCreationDateTime":1763800000,"Keys":{{"pk":{{"S":"customer#{i:08}"}},"sk":{{"N":"{i}"}}}},"NewImage":{{"pk":{{"S":"customer#{i:08}"}},"sk":{{"N":"{i}"}},"name":{{"S":"Customer number {i} with a longer display name"}},"email":{{"S":"customer{i}@example.com"}},"balance":{{"N":"1234567890123456789.{i:06}"}},"score":{{"N":"0.{i}7"}},"active":{{"BOOL":true}},"deleted_at":{{"NULL":true}},"avatar":{{"B":"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="}},"tags":{{"SS":["gold","newsletter","beta-tester"]}},"lucky":{{"NS":["7","13","42"]}},"address":{{"M":{{"street":{{"S":"{i} Long Street Name Avenue"}},"city":{{"S":"Zürich"}},"zip":{{"S":"8001"}},"geo":{{"M":{{"lat":{{"N":"47.376887"}},"lon":{{"N":"8.541694"}}}}}}}}}},"orders":{{"L":[{{"M":{{"id":{{"S":"o-{i}-1"}},"total":{{"N":"19.99"}}}}}},{{"M":{{"id":{{"S":"o-{i}-2"}},"total":{{"N":"5E+2"}}}}}}]}},"notes":{{"S":"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. \"quoted\" \\ text"}}}},"SequenceNumber":"4{i:020}","SizeBytes":900,"StreamViewType":"NEW_IMAGE"}},"eventSourceARN":"arn:aws:dynamodb:eu-west-1:123456789012:table/customers/stream/2026-11-01T00:00:00.000"}}"#
    );
    if !old_image {
        return r;
    }
    // The old image: the same item before the change.
    let start = r.find("\"NewImage\":").unwrap();
    let end = r.find(",\"SequenceNumber\"").unwrap();
    let old = r[start..end]
        .replacen("NewImage", "OldImage", 1)
        .replace("true", "false");
    r.replacen(
        ",\"SequenceNumber\"",
        &format!(",{old},\"SequenceNumber\""),
        1,
    )
    .replace("NEW_IMAGE", "NEW_AND_OLD_IMAGES")
}

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
