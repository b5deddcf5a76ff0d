//! No item data in logs: for every failure the handler can log (a refusal by the index, kept in
//! the quarantine or reported; a record that cannot be converted; a transient failure; a
//! quarantine that cannot be written; a record that cannot be reported; a payload that is no
//! stream event), the log names the record by sequence number and eventID and the failure by
//! its type, and no key value or attribute value appears in it. The quarantine entry keeps the
//! whole reason.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::proxy::{Fault, Proxy};
use common::*;
use serde_json::{Value, json};
use stream_indexer::handler::{Indexer, RecordOutcome};

/// Every key and value in these tests holds this text; no log line may.
const SECRET: &str = "s3cr3t";

const FAST_RETRIES: [(&str, &str); 3] = [
    ("RETRY_BASE_MS", "10"),
    ("RETRY_MAX_MS", "50"),
    ("DEADLINE_MARGIN_MS", "0"),
];

/// The log lines written while `f` runs on this thread (the runtime is current-thread, so
/// tasks it spawns log here too).
async fn logs_of<T>(f: impl std::future::Future<Output = T>) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);
    impl Write for Buffer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    // JSON lines, as in Lambda.
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    let out = f.await;
    drop(guard);
    let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    (out, text)
}

fn sequence(n: u64) -> String {
    format!("{:021}", 100_000_000_000_000_000_000u128 + n as u128)
}

/// A record for key `{SECRET}-key-{n}` whose NewImage holds `image` besides the key.
fn record(n: u64, image: Value) -> Value {
    let pk = json!({"S": format!("{SECRET}-key-{n}")});
    let mut image = image;
    image["pk"] = pk.clone();
    json!({
        "eventID": format!("ev{n}"),
        "eventName": "INSERT",
        "eventSource": "aws:dynamodb",
        "dynamodb": {
            "ApproximateCreationDateTime": 1_700_000_000u64,
            "Keys": {"pk": pk},
            "NewImage": image,
            "SequenceNumber": sequence(n),
            "StreamViewType": "NEW_IMAGE",
        },
    })
}

fn batch(records: &[Value]) -> String {
    json!({ "Records": records }).to_string()
}

fn assert_clean(logs: &str, must_name: &[u64]) {
    assert!(
        !logs.to_lowercase().contains(SECRET),
        "item data in the logs:\n{logs}"
    );
    for n in must_name {
        assert!(
            logs.contains(&sequence(*n)),
            "the log does not name record {n}:\n{logs}"
        );
    }
}

/// An index that refuses a text value in `n` (a long), so the reason quotes the value and the
/// document id.
async fn index_with_a_long(index: &str) {
    let res = http()
        .put(format!("{}/{index}", opensearch_url()))
        .json(&json!({"mappings": {"properties": {"n": {"type": "long"}}}}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
}

/// Records that convert but that the index refuses, and records that cannot be converted.
fn hostile_records() -> Vec<Value> {
    vec![
        record(1, json!({"n": {"S": format!("{SECRET}-value")}})),
        record(2, json!({"n": {"N": format!("12{SECRET}")}})),
        record(3, json!({"n": {"S": 5}})),
        record(4, json!({"n": {"S": {"nested": format!("{SECRET}")}}})),
        record(
            5,
            json!({"v": {"N": format!("1{SECRET}")}, "n": {"N": "1"}}),
        ),
        record(6, json!({"n": {"BOOL": format!("{SECRET}")}})),
    ]
}

#[tokio::test]
async fn refusals_and_conversion_errors_reported_for_retry_log_no_values() {
    let index = unique_index("logs");
    index_with_a_long(&index).await;
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    let records = hostile_records();
    let (handled, logs) = logs_of(indexer.handle_detailed(&batch(&records), far_deadline())).await;
    let handled = handled.unwrap();
    assert!(
        handled
            .outcomes
            .iter()
            .all(|o| matches!(o, RecordOutcome::Reported(_))),
        "{:?}",
        handled.outcomes
    );
    assert_clean(&logs, &[1, 2, 3, 4, 5, 6]);
    assert!(
        logs.contains("mapper_parsing_exception") && logs.contains("[n]"),
        "the error type and field stay: {logs}"
    );
}

#[tokio::test]
async fn quarantined_records_log_no_values_and_their_entries_keep_the_whole_reason() {
    let index = unique_index("logs");
    let quarantine = format!("{index}-quarantine");
    index_with_a_long(&index).await;
    let indexer = indexer(
        &opensearch_url(),
        &index,
        &[("QUARANTINE_INDEX", quarantine.as_str())],
    )
    .await;
    let (handled, logs) =
        logs_of(indexer.handle_detailed(&batch(&hostile_records()), far_deadline())).await;
    let handled = handled.unwrap();
    assert!(
        handled
            .outcomes
            .iter()
            .all(|o| matches!(o, RecordOutcome::Quarantined(_))),
        "{:?}",
        handled.outcomes
    );
    assert_clean(&logs, &[1, 2, 3, 4, 5, 6]);
    let entries = all_sources(&quarantine).await;
    let refused = entries
        .iter()
        .map(|(_, text)| serde_json::from_str::<Value>(text).unwrap())
        .find(|e| e["sequence_number"] == sequence(1))
        .expect("record 1 has an entry");
    let reason = refused["reason"].as_str().unwrap();
    assert!(
        reason.contains(SECRET),
        "the entry keeps OpenSearch's whole reason, value and id included: {reason}"
    );

    // `replay --list`: counts by index and reason, without values.
    let summary = stream_indexer::tools::replay::summarize(&indexer)
        .await
        .unwrap();
    assert_eq!(summary.entries, 6, "{summary:?}");
    assert_eq!(summary.by_reason.values().sum::<usize>(), 6);
    for (index_of, reason) in summary.by_reason.keys() {
        assert_eq!(index_of, &index);
        assert!(!reason.to_lowercase().contains(SECRET), "{reason}");
    }
    assert!(summary.oldest_ms.is_some() && summary.oldest_ms <= summary.newest_ms);
}

#[tokio::test]
async fn a_transient_failure_and_a_failed_quarantine_write_log_no_values() {
    let index = unique_index("logs");
    let quarantine = format!("{index}-quarantine");
    index_with_a_long(&index).await;
    // The index refuses record 1; every request to the quarantine fails.
    let q = quarantine.clone();
    let proxy = Proxy::start(&opensearch_url(), move |r| {
        if r.path.contains(&q) {
            Fault::Status(503)
        } else {
            Fault::Pass
        }
    })
    .await;
    let mut extra = FAST_RETRIES.to_vec();
    extra.push(("QUARANTINE_INDEX", quarantine.as_str()));
    let indexer = indexer(&proxy.url, &index, &extra).await;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(3);
    let records = vec![hostile_records().remove(0)];
    let (handled, logs) = logs_of(indexer.handle_detailed(&batch(&records), deadline)).await;
    let handled = handled.unwrap();
    assert!(matches!(handled.outcomes[0], RecordOutcome::Reported(_)));
    assert!(logs.contains("quarantine write failed"), "{logs}");
    assert_clean(&logs, &[1]);

    // Every bulk request fails: the records are reported for retry with the transport reason.
    proxy.set(|_| Fault::Status(429));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(1);
    let (handled, logs) =
        logs_of(indexer.handle_detailed(&batch(&[record(7, json!({"n": {"N": "7"}}))]), deadline))
            .await;
    assert!(matches!(
        handled.unwrap().outcomes[0],
        RecordOutcome::Reported(_)
    ));
    assert_clean(&logs, &[7]);
}

#[tokio::test]
async fn unreportable_records_and_payloads_that_are_no_event_fail_without_values() {
    let index = unique_index("logs");
    index_with_a_long(&index).await;
    let indexer: Indexer = indexer(&opensearch_url(), &index, &[]).await;
    // No SequenceNumber and no quarantine: the whole invocation fails.
    let mut unnamed = record(8, json!({"n": {"S": format!("{SECRET}-value")}}));
    unnamed["dynamodb"]
        .as_object_mut()
        .unwrap()
        .remove("SequenceNumber");
    let (result, logs) = logs_of(indexer.handle_detailed(&batch(&[unnamed]), far_deadline())).await;
    let error = result.expect_err("the invocation fails").to_string();
    assert_clean(&format!("{logs}\n{error}"), &[]);
    assert!(error.contains("no SequenceNumber"), "{error}");

    for payload in [
        json!({"Records": format!("{SECRET}")}).to_string(),
        json!({"Records": [format!("{SECRET}")]}).to_string(),
        json!({"Records": {"a": format!("{SECRET}")}}).to_string(),
    ] {
        let (result, logs) = logs_of(indexer.handle_detailed(&payload, far_deadline())).await;
        let error = match result {
            Err(e) => e.to_string(),
            Ok(h) => format!("{:?}", h.summary),
        };
        assert_clean(&format!("{logs}\n{error}"), &[]);
    }
}

/// A quarantine index that exists already (made by an earlier invocation, or by hand) is used
/// without a warning, however long its name: the decision reads the cluster's error type, not
/// its reason text, which messages cut short.
#[tokio::test]
async fn an_existing_quarantine_index_is_used_without_a_warning() {
    let index = unique_index("logs");
    let quarantine = format!("{index}-quarantine-{}", "x".repeat(100));
    index_with_a_long(&index).await;
    create_index(&quarantine).await;
    let indexer = indexer(
        &opensearch_url(),
        &index,
        &[("QUARANTINE_INDEX", quarantine.as_str())],
    )
    .await;
    let records = vec![hostile_records().remove(0)];
    let (handled, logs) = logs_of(indexer.handle_detailed(&batch(&records), far_deadline())).await;
    assert!(matches!(
        handled.unwrap().outcomes[0],
        RecordOutcome::Quarantined(_)
    ));
    assert!(
        !logs.contains("could not create the quarantine index"),
        "{logs}"
    );
}
