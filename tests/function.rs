//! The real `stream-indexer` binary under a Lambda emulator (tests/common/lambda_api.rs), against
//! the local server: what `cargo lambda watch` and Lambda itself do to it.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::lambda_api::{Answer, LambdaApi};
use common::*;
use serde_json::Value;
use stream_indexer::verify;

fn epoch_ms_in(seconds: u64) -> u64 {
    (SystemTime::now().duration_since(UNIX_EPOCH).unwrap() + Duration::from_secs(seconds))
        .as_millis() as u64
}

/// What `cargo lambda watch` sends as `Lambda-Runtime-Deadline-Ms`: a duration, not a time.
fn cargo_lambda_deadline() -> u64 {
    600_000
}

/// Starts the binary polling `api`, configured for `index`.
fn function(api: &LambdaApi, index: &str) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_stream-indexer"))
        .env("AWS_LAMBDA_RUNTIME_API", &api.addr)
        .env("AWS_LAMBDA_FUNCTION_NAME", "stream-indexer")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("OPENSEARCH_URL", opensearch_url())
        .env("OPENSEARCH_INDEX", index)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
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

    // An invocation error carries a stable errorType, not a Rust type name.
    match api.invoke("[]", epoch_ms_in(30)).await {
        Answer::Error(e) => assert_eq!(e["errorType"], "NotAStreamEvent", "{e}"),
        other => panic!("{other:?}"),
    }
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
    let c = verify::compare(&ddb, &table, &indexer.opensearch, &index)
        .await
        .unwrap();
    assert!(c.ok() && c.table_items == 30, "{c:?}\n{stdout}");
}
