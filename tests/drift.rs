//! Type drift, as schemaless tables have it, under the default (schemaless) index template:
//! the AWS documentation's sample event (a list of two strings and a number) and a batch whose
//! `price` is a number, a string, a boolean and NULL, whose `tags` mix types, through the
//! function, a scan backfill and an export backfill, then `verify`. Every item lands exactly,
//! nothing is quarantined, and numeric and full-text queries find their documents.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue as A;
use common::*;
use serde_json::{Value, json};
use stream_indexer::sink::template::IndexTemplate;
use stream_indexer::tools::backfill::{self, Options};
use stream_indexer::tools::verify::canonical;

/// The last new image per key of an event file, in DynamoDB JSON.
fn last_images(name: &str) -> Vec<Value> {
    let event: Value = serde_json::from_str(&fixture(name)).unwrap();
    let mut by_key: Vec<(String, Value)> = Vec::new();
    for r in event["Records"].as_array().unwrap() {
        let key = canonical(&r["dynamodb"]["Keys"].to_string()).unwrap();
        let image = r["dynamodb"]["NewImage"].clone();
        by_key.retain(|(k, _)| *k != key);
        by_key.push((key, image));
    }
    by_key.into_iter().map(|(_, image)| image).collect()
}

/// A DynamoDB JSON value as the document should hold it, written here independently of the
/// conversion: numbers by their text, binaries as their base64 text, sets and lists as arrays.
fn document_text(value: &Value) -> String {
    let (kind, inner) = value.as_object().unwrap().iter().next().unwrap();
    match kind.as_str() {
        "S" | "B" => inner.to_string(),
        "N" => inner.as_str().unwrap().to_string(),
        "BOOL" => inner.to_string(),
        "NULL" => "null".into(),
        "SS" | "BS" => inner.to_string(),
        "NS" => format!(
            "[{}]",
            inner
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap())
                .collect::<Vec<_>>()
                .join(",")
        ),
        "L" => format!(
            "[{}]",
            inner
                .as_array()
                .unwrap()
                .iter()
                .map(document_text)
                .collect::<Vec<_>>()
                .join(",")
        ),
        "M" => image_text(inner),
        other => panic!("type {other}"),
    }
}

fn image_text(image: &Value) -> String {
    let parts: Vec<String> = image
        .as_object()
        .unwrap()
        .iter()
        .map(|(name, v)| format!("{}:{}", json!(name), document_text(v)))
        .collect();
    canonical(&format!("{{{}}}", parts.join(","))).unwrap()
}

/// A DynamoDB JSON value as the SDK's.
fn attribute(value: &Value) -> A {
    let (kind, inner) = value.as_object().unwrap().iter().next().unwrap();
    let strings = || -> Vec<String> {
        inner
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    use base64::Engine as _;
    let bytes = |s: &str| {
        aws_sdk_dynamodb::primitives::Blob::new(
            base64::engine::general_purpose::STANDARD.decode(s).unwrap(),
        )
    };
    match kind.as_str() {
        "S" => A::S(inner.as_str().unwrap().into()),
        "N" => A::N(inner.as_str().unwrap().into()),
        "B" => A::B(bytes(inner.as_str().unwrap())),
        "BOOL" => A::Bool(inner.as_bool().unwrap()),
        "NULL" => A::Null(true),
        "SS" => A::Ss(strings()),
        "NS" => A::Ns(strings()),
        "BS" => A::Bs(strings().iter().map(|s| bytes(s)).collect()),
        "L" => A::L(inner.as_array().unwrap().iter().map(attribute).collect()),
        "M" => A::M(item(inner)),
        other => panic!("type {other}"),
    }
}

fn item(image: &Value) -> HashMap<String, A> {
    image
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), attribute(v)))
        .collect()
}

/// Every `_source` of `index`, canonical.
async fn sources(index: &str) -> BTreeSet<String> {
    all_sources(index)
        .await
        .into_iter()
        .map(|(_, s)| canonical(&s).unwrap())
        .collect()
}

/// The ids of `index`'s documents matching `query`.
async fn matching(index: &str, query: Value) -> BTreeSet<String> {
    let body: Value = http()
        .post(format!("{}/{index}/_search", opensearch_url()))
        .json(&json!({"size": 100, "query": query, "_source": false}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["hits"]["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("{body}"))
        .iter()
        .map(|h| h["_id"].as_str().unwrap().to_string())
        .collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn the_aws_sample_event_and_a_drift_batch_land_exactly_and_stay_searchable() {
    let index = unique_index("drift");
    create_index(&index).await;
    let quarantine = format!("{index}-quarantine");
    let function = indexer(
        &opensearch_url(),
        &index,
        &[("QUARANTINE_INDEX", quarantine.as_str())],
    )
    .await;
    let sample = handle_cleanly(&function, "aws-sample.json").await;
    let drift = handle_cleanly(&function, "drift.json").await;
    assert_eq!(
        (sample.quarantined, drift.quarantined, drift.indexed),
        (0, 0, 7),
        "{sample:?} {drift:?}"
    );
    let mut expected: BTreeSet<String> = BTreeSet::new();
    for name in ["aws-sample.json", "drift.json"] {
        expected.extend(last_images(name).iter().map(image_text));
    }
    http()
        .post(format!("{}/{index}/_refresh", opensearch_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(sources(&index).await, expected);

    // Numbers by value under `<field>.number`, whatever type the field has elsewhere.
    let numeric = json!({"range": {"price.number": {"gte": 3}}});
    assert_eq!(
        matching(&index, numeric).await,
        set(&["drift#1|1", "drift#3|1", "drift#7|1"])
    );
    let in_list = json!({"range": {"List.number": {"gt": 3.1, "lt": 3.2}}});
    assert_eq!(matching(&index, in_list).await, set(&["binary|data"]));
    // Full text under `<field>.text`, exact values (any type, by their text) on the field.
    let text = json!({"match": {"note.text": "coffee"}});
    assert_eq!(
        matching(&index, text).await,
        set(&["drift#1|1", "drift#5|1"])
    );
    let in_list = json!({"match": {"List.text": "coffee"}});
    assert_eq!(matching(&index, in_list).await, set(&["binary|data"]));
    let exact = json!({"terms": {"price": ["cheap", "true"]}});
    assert_eq!(
        matching(&index, exact).await,
        set(&["drift#2|1", "drift#4|1"])
    );
    // The values a numeric query cannot find are named in `_ignored`.
    let left_out = json!({"term": {"_ignored": "price.number"}});
    assert_eq!(
        matching(&index, left_out).await,
        set(&["drift#2|1", "drift#4|1"])
    );

    // A map where other items hold scalars (and a scalar where they hold a map) cannot be
    // mapped under any template: quarantined, the reason naming the attribute.
    let mut batch: Value = serde_json::from_str(&fixture("drift.json")).unwrap();
    let records = batch["Records"].as_array_mut().unwrap();
    records.truncate(2);
    for (r, pk) in records.iter_mut().zip(["drift#8", "drift#9"]) {
        r["dynamodb"]["Keys"]["pk"] = json!({"S": pk});
        r["dynamodb"]["NewImage"]["pk"] = json!({"S": pk});
    }
    records[0]["dynamodb"]["NewImage"]["price"] = json!({"M": {"amount": {"N": "3"}}});
    records[1]["dynamodb"]["NewImage"]["dims"] = json!({"S": "XL"});
    let (_, summary) = function
        .handle(&batch.to_string(), far_deadline())
        .await
        .unwrap();
    assert_eq!(summary.quarantined, 2, "{summary:?}");
    let reasons: Vec<String> = all_sources(&quarantine)
        .await
        .iter()
        .map(|(_, e)| serde_json::from_str::<Value>(e).unwrap()["reason"].to_string())
        .collect();
    // OpenSearch names the field; the entry adds what it is in the item and how it is mapped.
    for said in [
        "NewImage: price: a map (M) in this item, mapped as keyword in the index",
        "NewImage: dims: a string (S or B) in this item, mapped as an object (a map) in the index",
    ] {
        assert!(
            reasons.iter().any(|r| r.contains(said)),
            "no reason says {said:?}: {reasons:?}"
        );
    }

    // The typed template, for contrast: the same batch is refused where types disagree.
    let typed = unique_index("drift-typed");
    apply_template_of(IndexTemplate::Typed, &format!("tpl-{typed}"), &typed).await;
    let typed_quarantine = format!("{typed}-quarantine");
    let typed_indexer = indexer(
        &opensearch_url(),
        &typed,
        &[("QUARANTINE_INDEX", typed_quarantine.as_str())],
    )
    .await;
    let (_, summary) = typed_indexer
        .handle(&fixture("drift.json"), far_deadline())
        .await
        .unwrap();
    assert!(summary.quarantined >= 2, "{summary:?}");
}

fn run_binary(mut cmd: Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `verify` on `index` against moto's `table`; returns its summary line.
fn verify_summary(index: &str, table: &str) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_verify"));
    cmd.args(["--table", table, "--segments", "2", "--quiet"])
        .env("OPENSEARCH_URL", opensearch_url())
        .env("OPENSEARCH_INDEX", index)
        .env("DYNAMODB_ENDPOINT", moto_url())
        .env_remove("ROUTES");
    let (ok, stdout, stderr) = run_binary(cmd);
    assert!(ok, "verify {index}: {stdout}\n{stderr}");
    stdout
        .lines()
        .find(|l| l.starts_with("items "))
        .unwrap_or_else(|| panic!("no summary: {stdout}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drifting_table_backfills_by_scan_and_by_export_and_verifies_equal() {
    let (ddb, s3) = moto_clients().await;
    let table = unique_index("drift-tbl");
    create_table(&ddb, &table).await;
    let images = last_images("drift.json");
    put_items(&ddb, &table, images.iter().map(item).collect()).await;
    let expected: BTreeSet<String> = images.iter().map(image_text).collect();
    // Documents with a value that is not a number in a field that holds numbers elsewhere
    // (`price`, `tags`, `dims.size`, `note`): all but drift#7, whose values are all numbers
    // but for `pk`, a field that never holds one.
    let summary = "items 7 documents 7 missing 0 different 0 extra 0 ignored 6";

    // A scan backfill.
    let scanned = unique_index("drift-scan");
    create_index(&scanned).await;
    let indexer = indexer(&opensearch_url(), &scanned, &[]).await;
    let ckpt = std::env::temp_dir().join(format!("{}.json", unique_index("ckpt")));
    let s = backfill::run(
        &indexer,
        &ddb,
        &Options {
            table: table.clone(),
            segments: Some(2),
            page_size: 100,
            max_items_per_second: None,
            max_read_units_per_second: None,
            clock_skew: Duration::from_secs(5),
            gc_deletes: Some("1h".into()),
            checkpoint: ckpt,
            resume: false,
            dry_run: false,
            page_timeout: Duration::from_secs(120),
        },
        &AtomicBool::new(false),
        &AtomicU64::new(0),
    )
    .await
    .unwrap();
    assert_eq!((s.indexed, s.quarantined, s.failed), (7, 0, 0), "{s:?}");
    assert_eq!(sources(&scanned).await, expected);
    assert_eq!(verify_summary(&scanned, &table), summary);

    // An export backfill (the binary, on moto's export).
    enable_pitr(&ddb, &table).await;
    let bucket = create_bucket(&s3).await;
    let exported = unique_index("drift-export");
    create_index(&exported).await;
    let ckpt = std::env::temp_dir().join(format!("{}.json", unique_index("ckpt")));
    let mut cmd = backfill_command(&exported, &opensearch_url());
    // moto needs a prefix (it fails on an export request without `S3Prefix`).
    cmd.args([
        "--export",
        "--table",
        &table,
        "--s3-bucket",
        &bucket,
        "--quiet",
    ])
    .args(["--s3-prefix", "nightly"])
    .arg("--checkpoint")
    .arg(&ckpt);
    let (ok, stdout, stderr) = run_binary(cmd);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("scanned 7 indexed 7 superseded 0 skipped 0 quarantined 0 failed 0"),
        "{stdout}"
    );
    assert_eq!(sources(&exported).await, expected);
    assert_eq!(verify_summary(&exported, &table), summary);
}
