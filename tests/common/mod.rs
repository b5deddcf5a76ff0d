//! Test support: a real OpenSearch-compatible server (the one in `OPENSEARCH_URL`, or an
//! osmem-server started for this test process), indices created from the repository's template,
//! and readers that return `_source` as exact JSON text.
#![allow(dead_code)]

pub mod lambda_api;
pub mod proxy;
pub mod workload;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;
use serde_json::value::RawValue;
use stream_indexer::config::Config;
use stream_indexer::handler::Indexer;
pub use stream_indexer::sink::template::IndexTemplate;

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Server {
    url: String,
    _child: Option<Child>,
}

static SERVER: OnceLock<Server> = OnceLock::new();

/// The base URL of the server under test, started on first use.
pub fn opensearch_url() -> String {
    SERVER.get_or_init(start_server).url.clone()
}

fn start_server() -> Server {
    if let Ok(url) = std::env::var("OPENSEARCH_URL") {
        return Server {
            url: url.trim_end_matches('/').to_string(),
            _child: None,
        };
    }
    let bin = std::env::var("OSMEM_SERVER_BIN").unwrap_or_else(|_| {
        let out = Command::new(repo_root().join("infra/local.sh"))
            .arg("osmem-bin")
            .output()
            .expect("run infra/local.sh osmem-bin");
        assert!(
            out.status.success(),
            "infra/local.sh osmem-bin failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    });
    // stdin stays open for the life of this process; the server exits when it closes.
    let mut child = Command::new(&bin)
        .args([
            "-addr",
            "127.0.0.1:0",
            "-parent-pid",
            &std::process::id().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("start {bin}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read osmem-server's ready line");
    let ready: Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("osmem-server said {line:?}: {e}"));
    let url = ready["url"]
        .as_str()
        .expect("ready line has a url")
        .trim_end_matches('/')
        .to_string();
    std::mem::forget(child.stdin.take());
    Server {
        url,
        _child: Some(child),
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh index name, unique in this process and across runs against a shared server.
pub fn unique_index(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Installs `infra/index-template.json` (the default, schemaless template) for indices
/// matching `pattern`.
pub async fn apply_template(name: &str, pattern: &str) {
    apply_template_of(IndexTemplate::Schemaless, name, pattern).await
}

/// Installs the `kind` template for indices matching `pattern`.
pub async fn apply_template_of(kind: IndexTemplate, name: &str, pattern: &str) {
    let body = kind.body().replace("INDEX_PATTERN", pattern);
    let res = http()
        .put(format!("{}/_index_template/{name}", opensearch_url()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(
        res.status().is_success(),
        "template: {}",
        res.text().await.unwrap()
    );
}

/// Creates `index` under the repository's template.
pub async fn create_index(index: &str) {
    apply_template(&format!("tpl-{index}"), index).await;
    let res = http()
        .put(format!("{}/{index}", opensearch_url()))
        .send()
        .await
        .unwrap();
    assert!(
        res.status().is_success(),
        "create {index}: {}",
        res.text().await.unwrap()
    );
}

/// Configuration for `index` on `url` (the server, or a proxy in front of it).
pub fn config_for(url: &str, index: &str, extra: &[(&str, &str)]) -> Config {
    let mut vars: Vec<(String, String)> = vec![
        ("OPENSEARCH_URL".into(), url.into()),
        ("OPENSEARCH_INDEX".into(), index.into()),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Config::from_lookup(|name| {
        vars.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    })
    .unwrap()
}

pub async fn indexer(url: &str, index: &str, extra: &[(&str, &str)]) -> Indexer {
    Indexer::new(config_for(url, index, extra)).await.unwrap()
}

/// A deadline far enough away that it never matters.
pub fn far_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(600)
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(repo_root().join("events").join(name)).unwrap()
}

/// Handles the fixture `events/<name>` with a far deadline, which must leave no record for
/// Lambda to retry; its summary, for the test's own checks.
pub async fn handle_cleanly(indexer: &Indexer, name: &str) -> stream_indexer::handler::Summary {
    let (response, summary) = indexer
        .handle(&fixture(name), far_deadline())
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    summary
}

/// `_source` of one document as its exact JSON text, or None if absent.
pub async fn source_text(index: &str, id: &str) -> Option<String> {
    let url = format!("{}/{index}/_doc/{}", opensearch_url(), urlencode(id));
    let res = http().get(url).send().await.unwrap();
    if res.status().as_u16() == 404 {
        return None;
    }
    let text = res.text().await.unwrap();
    #[derive(serde::Deserialize)]
    struct Doc<'a> {
        found: bool,
        #[serde(borrow, rename = "_source")]
        source: Option<&'a RawValue>,
    }
    let doc: Doc = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    if !doc.found {
        return None;
    }
    Some(doc.source.unwrap().get().to_string())
}

/// Every document of `index` as (id, exact `_source` text), sorted by id.
pub async fn all_sources(index: &str) -> Vec<(String, String)> {
    let os = stream_indexer::sink::transport::OpenSearch::connect(&config_for(
        &opensearch_url(),
        index,
        &[],
    ))
    .await
    .unwrap();
    stream_indexer::tools::verify::documents(&os, index)
        .await
        .unwrap_or_else(|e| panic!("reading {index}: {e}"))
        .into_iter()
        .collect()
}

/// The ids of every document of `index`, sorted.
pub async fn all_ids(index: &str) -> Vec<String> {
    all_sources(index)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect()
}

/// Writes `body` as document `id` of `index`, behind the function's back.
pub async fn put_doc(index: &str, id: &str, body: &str) {
    let url = format!("{}/{index}/_doc/{}", opensearch_url(), urlencode(id));
    let res = http()
        .put(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
}

/// Deletes document `id` of `index`, behind the function's back.
pub async fn delete_doc(index: &str, id: &str) {
    let url = format!("{}/{index}/_doc/{}", opensearch_url(), urlencode(id));
    let res = http().delete(url).send().await.unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
}

/// `events/mixed.json` was applied: the last change per key.
pub async fn expect_mixed_landed(index: &str) {
    assert_eq!(
        all_ids(index).await,
        ["order#1|1", "order#3|2", "order#4|1"]
    );
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// A stream record's sequence number (from its JSON).
pub fn sequence_number(record: &Value) -> String {
    record["dynamodb"]["SequenceNumber"]
        .as_str()
        .expect("record has a SequenceNumber")
        .to_string()
}

/// The sequence numbers in a response, in order.
pub fn failures(
    response: &aws_lambda_events::event::streams::DynamoDbEventResponse,
) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone().unwrap())
        .collect()
}

struct Dynamo {
    url: String,
    _child: Option<Child>,
}

static DYNAMO: OnceLock<Dynamo> = OnceLock::new();

/// A local DynamoDB API with Streams: `DYNAMODB_ENDPOINT` when set, else a moto server started
/// for this test process on a free port.
pub fn dynamodb_url() -> String {
    DYNAMO.get_or_init(start_dynamo).url.clone()
}

static MOTO: OnceLock<Dynamo> = OnceLock::new();

/// moto, for what only moto has (DynamoDB exports into its own S3; DynamoDB Local has neither):
/// the server of [`dynamodb_url`] when that is ours, else one started for this test process.
pub fn moto_url() -> String {
    if std::env::var("DYNAMODB_ENDPOINT").is_err() {
        return dynamodb_url();
    }
    MOTO.get_or_init(start_moto).url.clone()
}

/// DynamoDB and S3 clients for [`moto_url`].
pub async fn moto_clients() -> (aws_sdk_dynamodb::Client, aws_sdk_s3::Client) {
    let url = moto_url();
    let sdk = stream_indexer::tools::aws::sdk_config(Some(&url)).await;
    (
        aws_sdk_dynamodb::Client::new(&sdk),
        stream_indexer::tools::aws::s3_client(&sdk, Some(&url)),
    )
}

fn start_dynamo() -> Dynamo {
    if let Ok(url) = std::env::var("DYNAMODB_ENDPOINT") {
        return Dynamo { url, _child: None };
    }
    start_moto()
}

fn start_moto() -> Dynamo {
    let out = Command::new(repo_root().join("infra/local.sh"))
        .arg("osmem-bin")
        .output()
        .expect("infra/local.sh");
    assert!(
        out.status.success(),
        "infra/local.sh install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // moto has no parent watch: a shell holds it and kills it when our stdin pipe closes,
    // which happens when this test process exits, however it exits.
    let moto = repo_root().join("infra/.venv/bin/moto_server");
    let script = format!(
        "'{}' -H 127.0.0.1 -p {port} >/dev/null 2>&1 & pid=$!; cat >/dev/null; kill $pid",
        moto.display()
    );
    let mut child = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start moto_server");
    std::mem::forget(child.stdin.take());
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Dynamo {
                url,
                _child: Some(child),
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("moto_server did not start on {url}");
}

/// A new bucket in moto's S3.
pub async fn create_bucket(s3: &aws_sdk_s3::Client) -> String {
    let bucket = unique_index("exports");
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    bucket
}

/// Point-in-time recovery on, which an export needs.
pub async fn enable_pitr(ddb: &aws_sdk_dynamodb::Client, table: &str) {
    use aws_sdk_dynamodb::types::PointInTimeRecoverySpecification;
    ddb.update_continuous_backups()
        .table_name(table)
        .point_in_time_recovery_specification(
            PointInTimeRecoverySpecification::builder()
                .point_in_time_recovery_enabled(true)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
}

/// The `backfill` binary's command for `index` on `opensearch`, its AWS calls to moto.
pub fn backfill_command(index: &str, opensearch: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"));
    cmd.env("OPENSEARCH_URL", opensearch)
        .env("OPENSEARCH_INDEX", index)
        .env("AWS_ENDPOINT_URL", moto_url())
        .env("RUST_LOG", "warn")
        .env_remove("DYNAMODB_ENDPOINT")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_REGION");
    cmd
}

pub async fn dynamo_clients() -> (aws_sdk_dynamodb::Client, aws_sdk_dynamodbstreams::Client) {
    let sdk = stream_indexer::tools::aws::sdk_config(Some(&dynamodb_url())).await;
    (
        aws_sdk_dynamodb::Client::new(&sdk),
        aws_sdk_dynamodbstreams::Client::new(&sdk),
    )
}

/// Creates a table keyed `pk` (S) + `sk` (N) with a NEW_AND_OLD_IMAGES stream; returns its ARN.
pub async fn create_table(ddb: &aws_sdk_dynamodb::Client, name: &str) -> String {
    use aws_sdk_dynamodb::types::*;
    let out = ddb
        .create_table()
        .table_name(name)
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("sk")
                .key_type(KeyType::Range)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("sk")
                .attribute_type(ScalarAttributeType::N)
                .build()
                .unwrap(),
        )
        .billing_mode(BillingMode::PayPerRequest)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    out.table_description.unwrap().latest_stream_arn.unwrap()
}

/// Writes items with BatchWriteItem, 25 at a time; every write must be processed.
pub async fn put_items(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    items: Vec<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>>,
) {
    use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
    let mut items = items.into_iter().peekable();
    while items.peek().is_some() {
        let writes: Vec<WriteRequest> = items
            .by_ref()
            .take(25)
            .map(|i| {
                WriteRequest::builder()
                    .put_request(PutRequest::builder().set_item(Some(i)).build().unwrap())
                    .build()
            })
            .collect();
        let out = ddb
            .batch_write_item()
            .request_items(table, writes)
            .send()
            .await
            .unwrap();
        assert!(out.unprocessed_items.unwrap_or_default().is_empty());
    }
}

/// An item with every attribute type and exact-number edge cases; `version` varies its values.
/// Built from the SDK's values, not a typed struct through serde_dynamo (as the demo's items
/// are): its numbers are the edges of DynamoDB's range and precision (38 digits, `1E-130`,
/// `9.99…E+125`), which serde would carry as an `f64` and change.
pub fn every_type_item(
    i: usize,
    version: u32,
) -> std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue> {
    let mut m = std::collections::HashMap::new();
    m.insert(
        "pk".into(),
        aws_sdk_dynamodb::types::AttributeValue::S(format!("user#{i:05}")),
    );
    m.insert(
        "sk".into(),
        aws_sdk_dynamodb::types::AttributeValue::N(format!("{}", i % 3)),
    );
    m.insert(
        "name".into(),
        aws_sdk_dynamodb::types::AttributeValue::S(format!("Nämé \"{i}\" 😀 v{version}")),
    );
    m.insert(
        "balance".into(),
        aws_sdk_dynamodb::types::AttributeValue::N(format!(
            "{i}12345678901234567890123456789.{version}"
        )),
    );
    m.insert(
        "exp".into(),
        aws_sdk_dynamodb::types::AttributeValue::N(format!("{}E+{}", i % 9 + 1, i % 120)),
    );
    m.insert(
        "neg".into(),
        aws_sdk_dynamodb::types::AttributeValue::N(format!("-{}E-{}", i % 9 + 1, i % 130)),
    );
    m.insert(
        "bin".into(),
        aws_sdk_dynamodb::types::AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(vec![
            (i % 256) as u8,
            0,
            255,
            version as u8,
        ])),
    );
    m.insert(
        "ok".into(),
        aws_sdk_dynamodb::types::AttributeValue::Bool(i.is_multiple_of(2)),
    );
    m.insert(
        "gone".into(),
        aws_sdk_dynamodb::types::AttributeValue::Null(true),
    );
    m.insert(
        "ss".into(),
        aws_sdk_dynamodb::types::AttributeValue::Ss(vec!["x".into(), format!("y{i}")]),
    );
    m.insert(
        "ns".into(),
        aws_sdk_dynamodb::types::AttributeValue::Ns(vec!["1".into(), format!("{i}.25")]),
    );
    m.insert(
        "bs".into(),
        aws_sdk_dynamodb::types::AttributeValue::Bs(vec![
            aws_sdk_dynamodb::primitives::Blob::new(vec![1u8]),
            aws_sdk_dynamodb::primitives::Blob::new(vec![2u8, (i % 256) as u8]),
        ]),
    );
    m.insert(
        "l".into(),
        aws_sdk_dynamodb::types::AttributeValue::L(vec![
            aws_sdk_dynamodb::types::AttributeValue::S("a".into()),
            aws_sdk_dynamodb::types::AttributeValue::S(format!("v{version}")),
        ]),
    );
    m.insert(
        "m".into(),
        aws_sdk_dynamodb::types::AttributeValue::M(std::collections::HashMap::from([(
            "deep".to_string(),
            aws_sdk_dynamodb::types::AttributeValue::M(std::collections::HashMap::from([(
                "n".to_string(),
                aws_sdk_dynamodb::types::AttributeValue::N(format!("{version}")),
            )])),
        )])),
    );
    m
}

/// `n` items from [`every_type_item`].
pub async fn populate(ddb: &aws_sdk_dynamodb::Client, table: &str, n: usize) {
    put_items(ddb, table, (0..n).map(|i| every_type_item(i, 1)).collect()).await;
}

/// Runner settings for delivering a stream to the end in tests: batches of 200, quick retries,
/// stop after 1 s without records.
pub fn drain_settings() -> stream_indexer::tools::runner::Settings {
    stream_indexer::tools::runner::Settings {
        batch_size: 200,
        batching_window: Duration::from_millis(100),
        trim_horizon: true,
        max_retry_attempts: Some(10),
        bisect: false,
        stop_when_idle: Some(Duration::from_secs(1)),
        retry_backoff: stream_indexer::sink::backoff::Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(20),
        },
    }
}

/// `GET /<index>/_settings` as text.
pub async fn index_settings(index: &str) -> String {
    http()
        .get(format!("{}/{index}/_settings", opensearch_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
