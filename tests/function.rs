//! The real `stream-indexer` binary under a Lambda emulator (tests/common/lambda_api.rs), against
//! the local server: what `cargo lambda watch` and Lambda itself do to it.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::lambda_api::{Answer, LambdaApi};
use common::*;
use serde_json::Value;
use stream_indexer::tools::verify;

fn epoch_ms_in(seconds: u64) -> u64 {
    (SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(seconds))
        .as_millis() as u64
}

/// What `cargo lambda watch` sends as `Lambda-Runtime-Deadline-Ms`: a duration, not a time.
fn cargo_lambda_deadline() -> u64 {
    600_000
}

/// The binary as Lambda would start it to poll `api`, configured for `index`.
fn function_command(api: &LambdaApi, index: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_stream-indexer"));
    command
        .env("AWS_LAMBDA_RUNTIME_API", &api.addr)
        .env("AWS_LAMBDA_FUNCTION_NAME", "stream-indexer")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        // As the template's LoggingConfig sets it.
        .env("AWS_LAMBDA_LOG_FORMAT", "JSON")
        .env("OPENSEARCH_URL", opensearch_url())
        .env("OPENSEARCH_INDEX", index)
        .kill_on_drop(true);
    command
}

/// Starts the binary polling `api`, configured for `index`.
fn function(api: &LambdaApi, index: &str) -> tokio::process::Child {
    function_command(api, index)
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start stream-indexer")
}

fn response(answer: Answer) -> Value {
    match answer {
        Answer::Response(v) => v,
        Answer::Error(e) => panic!("function error: {e}"),
    }
}

#[tokio::test]
async fn documents_land_whether_the_deadline_is_cargo_lambdas_duration_or_an_epoch_time() {
    let index = unique_index("fn");
    create_index(&index).await;
    let api = LambdaApi::start(cargo_lambda_deadline).await;
    let _function = function(&api, &index);

    let r = response(
        api.invoke(&fixture("insert.json"), cargo_lambda_deadline())
            .await,
    );
    assert_eq!(r["batchItemFailures"], serde_json::json!([]), "{r}");
    let after_insert = all_sources(&index).await.len();
    assert!(
        after_insert > 0,
        "the cargo-lambda invocation indexed documents"
    );

    let r = response(api.invoke(&fixture("mixed.json"), epoch_ms_in(30)).await);
    assert_eq!(r["batchItemFailures"], serde_json::json!([]), "{r}");
    assert!(all_sources(&index).await.len() > after_insert);

    // An invocation error carries a stable errorType, not a Rust type name, and a message
    // without the payload's values.
    match api
        .invoke_bytes(br#"{"Records":"s3cr3t"}"#, epoch_ms_in(30))
        .await
    {
        Answer::Error(e) => {
            assert_eq!(e["errorType"], "NotAStreamEvent", "{e}");
            let message = e["errorMessage"].as_str().unwrap();
            assert!(
                message.contains("payload is not a DynamoDB Streams event"),
                "{message}"
            );
            assert!(!message.contains("s3cr3t"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // A payload that is not JSON text (Lambda never sends one) is refused by lambda_runtime
    // before the handler sees it; the invocation fails all the same.
    for payload in [
        &br#"{"Records":[{"eventID":"#[..],
        b"{\"Records\":[\"\xff\"]}",
    ] {
        match api.invoke_bytes(payload, epoch_ms_in(30)).await {
            Answer::Error(e) => {
                let message = e["errorMessage"].as_str().unwrap();
                assert!(message.contains("failed to deserialize"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
    // And the function goes on with the next batch.
    let r = response(api.invoke(&fixture("insert.json"), epoch_ms_in(30)).await);
    assert_eq!(r["batchItemFailures"], serde_json::json!([]), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_drives_the_binary_over_the_invoke_api() {
    let (ddb, _) = dynamo_clients().await;
    let table = unique_index("fnrun");
    create_table(&ddb, &table).await;
    for i in 0..30 {
        ddb.put_item()
            .table_name(&table)
            .item(
                "pk",
                aws_sdk_dynamodb::types::AttributeValue::S(format!("p{i}")),
            )
            .item("sk", aws_sdk_dynamodb::types::AttributeValue::N("1".into()))
            .send()
            .await
            .unwrap();
    }
    let index = unique_index("fnrun-idx");
    create_index(&index).await;
    let api = LambdaApi::start(cargo_lambda_deadline).await;
    let _function = function(&api, &index);
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["--table", &table, "--endpoint-url", &dynamodb_url()])
        .args(["--invoke-url", &format!("http://{}", api.addr)])
        .args(["--batch-size", "10", "--stop-when-idle", "2"])
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    let c = verify::compare(&indexer, &ddb, &table).await.unwrap();
    assert!(c.equal() && c.items == 30, "{c:?}\n{stdout}");
}

/// One EMF document per invocation on stdout, valid per the specification, its counts adding
/// up to the batch and its lag that of the records' creation times.
#[tokio::test]
async fn each_invocation_prints_one_embedded_metric_format_document() {
    use tokio::io::AsyncBufReadExt as _;
    let index = unique_index("emf");
    create_index(&index).await;
    let api = LambdaApi::start(|| epoch_ms_in(30)).await;
    let mut child = function_command(&api, &index)
        .env("METRICS_NAMESPACE", "Test")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start stream-indexer");
    // Five records made 2 s ago, two of them of one key.
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 2;
    let records: Vec<Value> = (0..5u64)
        .map(|n| {
            serde_json::json!({
                "eventID": format!("e{n}"), "eventName": "INSERT", "eventSource": "aws:dynamodb",
                "dynamodb": {"ApproximateCreationDateTime": created,
                    "Keys": {"pk": {"S": format!("k{}", n.min(3))}},
                    "NewImage": {"pk": {"S": format!("k{}", n.min(3))}, "n": {"N": n.to_string()}},
                    "SequenceNumber": format!("{}", 100 + n), "StreamViewType": "NEW_IMAGE"}})
        })
        .collect();
    let payload = serde_json::json!({ "Records": records }).to_string();
    let r = response(api.invoke(&payload, epoch_ms_in(30)).await);
    assert_eq!(r["batchItemFailures"], serde_json::json!([]), "{r}");

    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let emf: Value = loop {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("an EMF line within 10 s")
            .unwrap()
            .expect("stdout open");
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && v.get("_aws").is_some()
        {
            break v;
        }
    };
    let aws = &emf["_aws"];
    assert!(aws["Timestamp"].as_u64().unwrap() > created * 1000);
    let directive = &aws["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], "Test");
    let dimensions = directive["Dimensions"][0].as_array().unwrap();
    assert!(dimensions.len() <= 30);
    for d in dimensions {
        assert!(
            emf[d.as_str().unwrap()].is_string(),
            "dimension {d} has a value"
        );
    }
    assert_eq!(emf["Index"], index.as_str());
    assert_eq!(emf["FunctionName"], "stream-indexer");
    let metrics = directive["Metrics"].as_array().unwrap();
    assert!(metrics.len() <= 100);
    for m in metrics {
        let value = &emf[m["Name"].as_str().unwrap()];
        assert!(
            value.is_number() || value.as_array().is_some_and(|a| a.len() <= 100),
            "{m}: {value}"
        );
        assert!(m["Unit"].is_string());
    }
    let n = |name: &str| emf[name].as_u64().unwrap();
    assert_eq!(n("Records"), 5);
    assert_eq!(n("Indexed"), 4);
    assert_eq!(n("Superseded"), 1);
    assert_eq!(
        n("Indexed")
            + n("Deleted")
            + n("Superseded")
            + n("Skipped")
            + n("Quarantined")
            + n("ReportedRetryable")
            + n("ReportedPermanent"),
        n("Records")
    );
    assert_eq!(n("BulkRequests"), 1);
    assert_eq!(emf["BulkLatency"].as_array().unwrap().len(), 1);
    let lag = n("ReplicationLagMax");
    assert!(
        (2_000..60_000).contains(&lag),
        "records made 2 s ago: {lag} ms"
    );
    assert!(n("ReplicationLagP50") <= lag);
}

/// With the logging and metrics defaults, each invocation writes its summary line and then its
/// metrics line, both under its request id, before the next invocation's lines; a failed
/// invocation writes neither, and the invocation after it still writes both.
#[tokio::test]
async fn each_invocation_logs_its_summary_then_its_metrics_line() {
    use tokio::io::AsyncBufReadExt as _;
    let index = unique_index("fnlog");
    create_index(&index).await;
    let api = LambdaApi::start(|| epoch_ms_in(30)).await;
    let mut child = function_command(&api, &index)
        .env_remove("RUST_LOG")
        .env_remove("METRICS")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start stream-indexer");
    let records = |n: u64| -> String {
        let records: Vec<Value> = (0..n)
            .map(|i| {
                serde_json::json!({
                    "eventID": format!("e{i}"), "eventName": "INSERT", "eventSource": "aws:dynamodb",
                    "dynamodb": {"ApproximateCreationDateTime": 1_700_000_000,
                        "Keys": {"pk": {"S": format!("k{i}")}},
                        "NewImage": {"pk": {"S": format!("k{i}")}},
                        "SequenceNumber": format!("{}", 100 + i), "StreamViewType": "NEW_IMAGE"}})
            })
            .collect();
        serde_json::json!({ "Records": records }).to_string()
    };
    let r = response(api.invoke(&records(2), epoch_ms_in(30)).await);
    assert_eq!(r["batchItemFailures"], serde_json::json!([]), "{r}");
    match api.invoke_bytes(b"[]", epoch_ms_in(30)).await {
        Answer::Error(e) => assert_eq!(e["errorType"], "NotAStreamEvent", "{e}"),
        other => panic!("{other:?}"),
    }
    let r = response(api.invoke(&records(3), epoch_ms_in(30)).await);
    assert_eq!(r["batchItemFailures"], serde_json::json!([]), "{r}");

    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen: Vec<Value> = Vec::new();
    while seen.iter().filter(|v| v.get("_aws").is_some()).count() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("two metrics lines within 10 s; seen {seen:#?}"))
            .unwrap()
            .expect("stdout open");
        seen.push(serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
    }
    let summaries: Vec<(usize, &Value)> = seen
        .iter()
        .enumerate()
        .filter(|(_, v)| {
            v["level"] == "INFO"
                && v["message"]
                    .as_str()
                    .is_some_and(|m| m.ends_with("records accounted for"))
        })
        .collect();
    let metrics: Vec<usize> = (0..seen.len())
        .filter(|&i| seen[i].get("_aws").is_some())
        .collect();
    assert_eq!(summaries.len(), 2, "{seen:#?}");
    for ((at, summary), (emf_at, records)) in summaries.iter().zip(metrics.iter().zip([2, 3])) {
        assert_eq!(
            at + 1,
            *emf_at,
            "the metrics line follows its summary: {seen:#?}"
        );
        assert_eq!(summary["records"], records, "{summary}");
        assert_eq!(seen[*emf_at]["Records"], records, "{}", seen[*emf_at]);
        assert!(summary["span"]["requestId"].is_string(), "{summary}");
    }
    assert_ne!(
        summaries[0].1["span"]["requestId"],
        summaries[1].1["span"]["requestId"]
    );
}

/// The function keeps its connection to the Runtime API: one connection carries all the
/// invocations. (Measured again on lambda_runtime 1.5.0 against this emulator, which answers
/// head and body in one write as Lambda's Runtime API does: one connection for 7 invocations.)
#[tokio::test]
async fn invocations_share_one_connection_to_the_runtime_api() {
    let index = unique_index("fnconn");
    create_index(&index).await;
    let api = LambdaApi::start(|| epoch_ms_in(30)).await;
    let _function = function(&api, &index);
    for _ in 0..5 {
        let r = response(api.invoke(&fixture("insert.json"), epoch_ms_in(30)).await);
        assert_eq!(r["batchItemFailures"], serde_json::json!([]), "{r}");
    }
    // A failed invocation's report is read to its end too.
    match api.invoke_bytes(b"[]", epoch_ms_in(30)).await {
        Answer::Error(e) => assert_eq!(e["errorType"], "NotAStreamEvent", "{e}"),
        other => panic!("{other:?}"),
    }
    let r = response(api.invoke(&fixture("insert.json"), epoch_ms_in(30)).await);
    assert_eq!(r["batchItemFailures"], serde_json::json!([]), "{r}");
    assert_eq!(api.connections(), 1, "connections for 7 invocations");
}

/// A function whose configuration is invalid says why to `/init/error` (Lambda shows it for the
/// waiting invocation) and exits.
#[tokio::test]
async fn a_function_that_cannot_start_reports_why_to_init_error_and_exits() {
    let api = LambdaApi::start(|| epoch_ms_in(30)).await;
    let mut function = tokio::process::Command::new(env!("CARGO_BIN_EXE_stream-indexer"))
        .env("AWS_LAMBDA_RUNTIME_API", &api.addr)
        .env("AWS_LAMBDA_FUNCTION_NAME", "stream-indexer")
        .env("OPENSEARCH_URL", opensearch_url())
        .env("OPENSEARCH_INDEX", "items")
        .env("BULK_CONCURRENCY", "many")
        .env("RUST_LOG", "off")
        .kill_on_drop(true)
        .spawn()
        .expect("start stream-indexer");
    let status = tokio::time::timeout(Duration::from_secs(20), function.wait())
        .await
        .expect("the function exits")
        .unwrap();
    assert!(!status.success(), "{status}");
    let errors = api.init_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0]["errorType"], "Runtime.InitError", "{errors:?}");
    let message = errors[0]["errorMessage"].as_str().unwrap();
    assert!(message.contains("BULK_CONCURRENCY"), "{message}");
}

/// With `AWS_LAMBDA_MAX_CONCURRENCY` (Lambda Managed Instances) several invocations are in
/// flight in one process, each accounted for on its own: every batch lands, every answer is
/// its own batch's. Without it, one at a time.
#[tokio::test]
async fn with_max_concurrency_invocations_run_at_once_and_each_lands() {
    let batch = |i: u64| {
        let records: Vec<Value> = (0..20)
            .map(|r| {
                serde_json::json!({
                    "eventID": format!("e{i}-{r}"), "eventName": "INSERT", "eventSource": "aws:dynamodb",
                    "dynamodb": {"ApproximateCreationDateTime": 1_700_000_000,
                        "Keys": {"pk": {"S": format!("b{i}-{r}")}},
                        "NewImage": {"pk": {"S": format!("b{i}-{r}")}, "n": {"N": format!("{r}")}},
                        "SequenceNumber": format!("{}", 1000 * i + r), "StreamViewType": "NEW_IMAGE"}})
            })
            .collect();
        serde_json::json!({ "Records": records }).to_string()
    };
    for concurrency in [Some("4"), None] {
        let index = unique_index("fnconc");
        create_index(&index).await;
        let api = LambdaApi::start(|| epoch_ms_in(30)).await;
        let mut command = function_command(&api, &index);
        command.env("RUST_LOG", "warn");
        if let Some(n) = concurrency {
            command.env("AWS_LAMBDA_MAX_CONCURRENCY", n);
        }
        let _function = command.spawn().expect("start stream-indexer");
        let answers = futures::future::join_all((0..8).map(|i| {
            let payload = batch(i);
            let api = &api;
            async move { api.invoke(&payload, epoch_ms_in(30)).await }
        }))
        .await;
        for answer in answers {
            assert_eq!(response(answer)["batchItemFailures"], serde_json::json!([]));
        }
        assert_eq!(all_ids(&index).await.len(), 160, "{concurrency:?}");
        match concurrency {
            Some(_) => assert!(api.most_in_flight() > 1, "{}", api.most_in_flight()),
            None => assert_eq!(api.most_in_flight(), 1),
        }
    }
}
