//! Crafted input against the real local server: every hole a hostile-input review found, each
//! with the record it took and what must happen instead. Nothing lost, nothing stale, nothing
//! blocking, and a clear reason for every refusal.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::AttributeValue as A;
use common::proxy::{Fault, Proxy};
use common::*;
use serde_json::{Value, json};
use stream_indexer::handler::{InvocationError, RecordOutcome};
use stream_indexer::tools::backfill::{self, Options};
use stream_indexer::tools::replay;

const FAST_RETRIES: [(&str, &str); 3] = [
    ("RETRY_BASE_MS", "10"),
    ("RETRY_MAX_MS", "100"),
    ("DEADLINE_MARGIN_MS", "0"),
];

fn batch_of(records: &[Value]) -> String {
    json!({ "Records": records }).to_string()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A stream record for key `pk` with `image` (attribute name → DynamoDB JSON) as NewImage.
fn change(seq: u64, name: &str, pk: &str, time: u64, image: Option<Value>) -> Value {
    let mut dynamodb = json!({
        "ApproximateCreationDateTime": time,
        "Keys": {"pk": {"S": pk}},
        "SequenceNumber": format!("{:021}", 100_000_000_000_000_000_000u128 + seq as u128),
        "SizeBytes": 100,
        "StreamViewType": "NEW_IMAGE",
    });
    if let Some(mut image) = image {
        image["pk"] = json!({"S": pk});
        dynamodb["NewImage"] = image;
    }
    json!({
        "eventID": format!("ev{seq}"),
        "eventName": name,
        "eventSource": "aws:dynamodb",
        "dynamodb": dynamodb,
    })
}

/// An index whose mapping refuses any attribute but `pk`, `n` and `note`-less items.
async fn strict_index(index: &str) {
    let mapping = json!({"mappings": {"dynamic": "strict", "properties": {
        "pk": {"type": "keyword"}, "n": {"type": "double"}, "s": {"type": "text"}}}});
    let res = http()
        .put(format!("{}/{index}", opensearch_url()))
        .json(&mapping)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
}

async fn allow_note(index: &str) {
    let res = http()
        .put(format!("{}/{index}/_mapping", opensearch_url()))
        .json(&json!({"properties": {"note": {"type": "text"}}}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
}

/// The quarantine's entries (not their parts) as JSON.
async fn entries(quarantine: &str) -> Vec<Value> {
    all_sources(quarantine)
        .await
        .into_iter()
        .map(|(_, text)| serde_json::from_str::<Value>(&text).unwrap())
        .filter(|e| e.get("index").is_some())
        .collect()
}

/// The reason of a record reported for retry; any other outcome fails the test.
fn reason_reported(outcome: &RecordOutcome) -> String {
    match outcome {
        RecordOutcome::Reported(r) => r.clone(),
        other => panic!("expected a reported record, got {other:?}"),
    }
}

/// Handles `payload` and returns every record's reason, all of them expected to be reported.
async fn reported_reasons(
    indexer: &stream_indexer::handler::Indexer,
    payload: &str,
) -> Vec<String> {
    let handled = indexer
        .handle_detailed(payload, far_deadline())
        .await
        .unwrap();
    handled.outcomes.iter().map(reason_reported).collect()
}

fn reason_of(entry: &Value) -> &str {
    entry["reason"].as_str().unwrap()
}

// 1. Refused items before and after a kill and resume all end up in the quarantine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_items_of_a_stopped_and_resumed_backfill_all_reach_the_quarantine() {
    let (ddb, _) = dynamo_clients().await;
    let table = unique_index("bfq");
    create_table(&ddb, &table).await;
    for i in 0..40 {
        let mut item = HashMap::from([
            ("pk".to_string(), A::S(format!("user#{i:02}"))),
            ("sk".to_string(), A::N("1".into())),
        ]);
        if i % 2 == 1 {
            item.insert("note".into(), A::S("the mapping refuses this".into()));
        }
        ddb.put_item()
            .table_name(&table)
            .set_item(Some(item))
            .send()
            .await
            .unwrap();
    }
    let index = unique_index("bfq-idx");
    let mapping = json!({"mappings": {"dynamic": "strict", "properties": {
        "pk": {"type": "keyword"}, "sk": {"type": "double"}}}});
    let res = http()
        .put(format!("{}/{index}", opensearch_url()))
        .json(&mapping)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let quarantine = format!("{index}-quarantine");
    let indexer = indexer(
        &opensearch_url(),
        &index,
        &[("QUARANTINE_INDEX", &quarantine)],
    )
    .await;
    let ckpt = std::env::temp_dir().join(format!("{index}.json"));
    let mut opts = Options {
        table: table.clone(),
        segments: Some(1),
        page_size: 10,
        max_items_per_second: Some(40.0),
        max_read_units_per_second: None,
        clock_skew: Duration::from_secs(1),
        gc_deletes: None,
        checkpoint: ckpt.clone(),
        resume: false,
        dry_run: false,
        page_timeout: Duration::from_secs(60),
    };
    // Stop after the first page, as Ctrl-C would.
    let stop = Arc::new(AtomicBool::new(false));
    let scanned = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (stop, scanned) = (stop.clone(), scanned.clone());
        tokio::spawn(async move {
            while scanned.load(Ordering::Relaxed) < 10 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stop.store(true, Ordering::Relaxed);
        })
    };
    let first = backfill::run(&indexer, &ddb, &opts, &stop, &scanned)
        .await
        .unwrap();
    watcher.await.unwrap();
    assert!(
        first.interrupted && first.scanned < 40 && first.quarantined > 0,
        "{first:?}"
    );
    opts.resume = true;
    let stop = AtomicBool::new(false);
    let second = backfill::run(&indexer, &ddb, &opts, &stop, &AtomicU64::new(0))
        .await
        .unwrap();
    assert!(!second.interrupted, "{second:?}");
    assert_eq!(
        first.quarantined + second.quarantined,
        20,
        "{first:?} {second:?}"
    );

    let kept = entries(&quarantine).await;
    let mut keys: Vec<String> = kept
        .iter()
        .map(|e| {
            let record: Value = serde_json::from_str(e["record"].as_str().unwrap()).unwrap();
            record["dynamodb"]["Keys"]["pk"]["S"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    keys.sort();
    let expected: Vec<String> = (0..40)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("user#{i:02}"))
        .collect();
    assert_eq!(keys, expected, "every refused item has its own entry");
    assert_eq!(
        all_sources(&index).await.len(),
        20,
        "the accepted half landed"
    );
}

// 1b. Two different records claiming one eventID keep two entries.
#[tokio::test]
async fn two_records_sharing_an_event_id_are_both_quarantined() {
    let index = unique_index("sameid");
    strict_index(&index).await;
    let quarantine = format!("{index}-quarantine");
    let mut a = change(
        1,
        "INSERT",
        "a",
        1_763_800_000,
        Some(json!({"note": {"S": "x"}})),
    );
    let mut b = change(
        2,
        "INSERT",
        "b",
        1_763_800_000,
        Some(json!({"note": {"S": "y"}})),
    );
    a["eventID"] = "same".into();
    b["eventID"] = "same".into();
    let indexer = indexer(
        &opensearch_url(),
        &index,
        &[("QUARANTINE_INDEX", &quarantine)],
    )
    .await;
    let (response, s) = indexer
        .handle(&batch_of(&[a, b]), far_deadline())
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(s.quarantined, 2);
    assert_eq!(entries(&quarantine).await.len(), 2);
}

// 2. Replay applies changes of one item in stream order: the newer image wins, both entries go.
#[tokio::test]
async fn replay_applies_the_newer_of_two_quarantined_changes_of_one_item() {
    let index = unique_index("replayorder");
    strict_index(&index).await;
    let quarantine = format!("{index}-quarantine");
    let indexer = indexer(
        &opensearch_url(),
        &index,
        &[("QUARANTINE_INDEX", &quarantine)],
    )
    .await;
    // Same second; the newer change's eventID sorts first, and its sequence number is longer
    // (compared as text it would sort first too). Recent: replay without the table re-sends
    // only changes whose later deletes the index still remembers.
    let at = now_secs();
    let mut older = change(5, "INSERT", "item", at, Some(json!({"note": {"S": "old"}})));
    older["eventID"] = "b-older".into();
    older["dynamodb"]["SequenceNumber"] = "99999999999999999999".into();
    let mut newer = change(6, "MODIFY", "item", at, Some(json!({"note": {"S": "new"}})));
    newer["eventID"] = "a-newer".into();
    newer["dynamodb"]["SequenceNumber"] = "100000000000000000000".into();
    for r in [&older, &newer] {
        let (_, s) = indexer
            .handle(&batch_of(std::slice::from_ref(r)), far_deadline())
            .await
            .unwrap();
        assert_eq!(s.quarantined, 1);
    }
    allow_note(&index).await;
    let report = replay::replay(&indexer, &replay::Options::default())
        .await
        .unwrap();
    assert_eq!((report.entries, report.replayed), (2, 2), "{report:?}");
    let doc = source_text(&index, "item").await.unwrap();
    assert!(doc.contains("\"new\""), "the newer image must win: {doc}");
    assert!(entries(&quarantine).await.is_empty());
}

// 3. The quarantine write is bounded by BULK_MAX_BYTES, so a 10 MiB request limit cannot
//    block it; an entry over the limit alone is stored in parts and replays whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quarantine_writes_fit_a_10_mib_request_limit() {
    const LIMIT: usize = 10 * 1024 * 1024;
    let index = unique_index("q413");
    strict_index(&index).await;
    let quarantine = format!("{index}-quarantine");
    let proxy = Proxy::start(&opensearch_url(), |r| {
        if r.body.len() > LIMIT {
            Fault::Status(413)
        } else {
            Fault::Pass
        }
    })
    .await;
    // 30 refused records of ~205 KB (6.2 MB): quotes double when a record is stored as text.
    let quoted = "\"q\"".repeat(68_000);
    let records: Vec<Value> = (0..30)
        .map(|i| {
            change(
                i,
                "INSERT",
                &format!("big{i}"),
                1_763_800_000,
                Some(json!({"note": {"S": quoted}})),
            )
        })
        .collect();
    let payload = batch_of(&records);
    assert!(payload.len() > 6_000_000, "{}", payload.len());
    let indexer = indexer(&proxy.url, &index, &[("QUARANTINE_INDEX", &quarantine)]).await;
    let (response, s) = indexer.handle(&payload, far_deadline()).await.unwrap();
    assert!(response.batch_item_failures.is_empty(), "{s:?}");
    assert_eq!(s.quarantined, 30);
    assert_eq!(entries(&quarantine).await.len(), 30);

    // A record whose document is over BULK_MAX_BYTES: its entry is too, and goes in parts.
    let small = unique_index("qparts");
    create_index(&small).await;
    let small_q = format!("{small}-quarantine");
    // Made now: replay without the table re-sends only recent changes.
    let big = change(
        1,
        "INSERT",
        "huge",
        now_secs(),
        Some(json!({"s": {"S": "x\"y".repeat(40_000)}})),
    );
    let limited = common::indexer(
        &opensearch_url(),
        &small,
        &[("QUARANTINE_INDEX", &small_q), ("BULK_MAX_BYTES", "65536")],
    )
    .await;
    let (response, s) = limited
        .handle(&batch_of(std::slice::from_ref(&big)), far_deadline())
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(s.quarantined, 1);
    let kept = entries(&small_q).await;
    assert_eq!(kept.len(), 1);
    assert!(
        kept[0]["parts"].as_u64().unwrap() > 1,
        "{}",
        kept[0]["parts"]
    );
    assert!(reason_of(&kept[0]).contains("BULK_MAX_BYTES"));
    // With the limit raised, replay rebuilds the record from its parts and indexes it.
    let raised =
        common::indexer(&opensearch_url(), &small, &[("QUARANTINE_INDEX", &small_q)]).await;
    let report = replay::replay(&raised, &replay::Options::default())
        .await
        .unwrap();
    assert_eq!(report.replayed, 1, "{report:?}");
    let doc: Value = serde_json::from_str(&source_text(&small, "huge").await.unwrap()).unwrap();
    assert_eq!(doc["s"].as_str().unwrap().len(), 3 * 40_000);
    assert!(
        all_sources(&small_q).await.is_empty(),
        "entry and parts removed"
    );
}

// 4a. A number DynamoDB cannot hold is refused before it is sent, naming the attribute.
#[tokio::test]
async fn a_number_outside_dynamodbs_range_is_refused_and_the_rest_land() {
    let index = unique_index("bignum");
    create_index(&index).await;
    let mut records: Vec<Value> = (0..50)
        .map(|i| {
            change(
                i,
                "INSERT",
                &format!("k{i}"),
                1_763_800_000,
                Some(json!({"n": {"N": "1"}})),
            )
        })
        .collect();
    records.push(change(
        50,
        "INSERT",
        "poison",
        1_763_800_000,
        Some(json!({"m": {"M": {"n": {"N": "1e400"}}}})),
    ));
    let indexer = indexer(&opensearch_url(), &index, &FAST_RETRIES).await;
    let handled = indexer
        .handle_detailed(&batch_of(&records), far_deadline())
        .await
        .unwrap();
    assert_eq!(handled.summary.indexed, 50, "{:?}", handled.summary);
    let RecordOutcome::Reported(reason) = &handled.outcomes[50] else {
        panic!("{:?}", handled.outcomes[50]);
    };
    assert!(
        reason.starts_with("NewImage: m.n: number of magnitude 1E400"),
        "{reason}"
    );
}

// 4b. A body the cluster fails as a whole again and again is split until the poisonous action
//     is alone; it is quarantined and every other record lands.
#[tokio::test]
async fn a_body_that_keeps_failing_whole_is_split_until_the_poison_is_isolated() {
    let index = unique_index("bisect");
    create_index(&index).await;
    let quarantine = format!("{index}-quarantine");
    // The cluster drops the connection on any body holding the poisonous document.
    let proxy = Proxy::start(&opensearch_url(), |r| {
        if r.path.ends_with("/_bulk") && String::from_utf8_lossy(&r.body).contains("\"poison\"") {
            Fault::Reset
        } else {
            Fault::Pass
        }
    })
    .await;
    let mut records: Vec<Value> = (0..50)
        .map(|i| {
            change(
                i,
                "INSERT",
                &format!("k{i}"),
                1_763_800_000,
                Some(json!({"n": {"N": "1"}})),
            )
        })
        .collect();
    records.insert(
        20,
        change(99, "INSERT", "poison", 1_763_800_000, Some(json!({}))),
    );
    let indexer = indexer(
        &proxy.url,
        &index,
        &[
            ("QUARANTINE_INDEX", quarantine.as_str()),
            ("RETRY_BASE_MS", "10"),
            ("RETRY_MAX_MS", "100"),
        ],
    )
    .await;
    let handled = indexer
        .handle_detailed(&batch_of(&records), far_deadline())
        .await
        .unwrap();
    assert_eq!(
        (handled.summary.indexed, handled.summary.quarantined),
        (50, 1),
        "{:?}",
        handled.summary
    );
    assert!(handled.response.batch_item_failures.is_empty());
    assert!(
        matches!(&handled.outcomes[20], RecordOutcome::Quarantined(r) if r.contains("while accepting others"))
    );
    assert_eq!(all_sources(&index).await.len(), 50);
}

// 4b'. An outage is not a poison: nothing is quarantined when the cluster accepts nothing.
#[tokio::test]
async fn an_outage_is_reported_for_retry_not_quarantined() {
    let index = unique_index("outage");
    create_index(&index).await;
    let quarantine = format!("{index}-quarantine");
    let proxy = Proxy::start(&opensearch_url(), |r| {
        if r.path.ends_with("/_bulk") {
            Fault::Status(503)
        } else {
            Fault::Pass
        }
    })
    .await;
    let records: Vec<Value> = (0..20)
        .map(|i| {
            change(
                i,
                "INSERT",
                &format!("k{i}"),
                1_763_800_000,
                Some(json!({})),
            )
        })
        .collect();
    let indexer = indexer(
        &proxy.url,
        &index,
        &[
            ("QUARANTINE_INDEX", quarantine.as_str()),
            ("RETRY_BASE_MS", "10"),
            ("RETRY_MAX_MS", "50"),
            ("DEADLINE_MARGIN_MS", "0"),
        ],
    )
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let (response, s) = indexer.handle(&batch_of(&records), deadline).await.unwrap();
    assert_eq!((s.retryable, s.quarantined), (20, 0), "{s:?}");
    assert_eq!(response.batch_item_failures.len(), 20);
    // Splitting without evidence that the cluster is up happens at most once: bodies stay few.
    let requests = proxy.requests.load(Ordering::Relaxed);
    assert!(requests < 200, "{requests} requests in 3 s of outage");
}

// 5. A mistyped optional field keeps the record's eventID and SequenceNumber.
#[tokio::test]
async fn a_mistyped_field_keeps_the_records_identity() {
    let index = unique_index("mistyped");
    create_index(&index).await;
    let good = change(1, "INSERT", "good", 1_763_800_000, Some(json!({})));
    let mut as_string = change(2, "INSERT", "a", 1_763_800_000, Some(json!({})));
    as_string["dynamodb"]["ApproximateCreationDateTime"] = "1763800000".into();
    let mut identity = change(3, "INSERT", "b", 1_763_800_000, Some(json!({})));
    identity["userIdentity"] = "dynamodb".into();
    let twice = change(4, "INSERT", "c", 1_763_800_000, Some(json!({})))
        .to_string()
        .replacen(
            "\"dynamodb\":",
            "\"dynamodb\":{\"SequenceNumber\":\"1\"},\"dynamodb\":",
            1,
        );
    let payload = format!("{{\"Records\":[{good},{as_string},{identity},{twice}]}}");
    let seqs: Vec<String> = [&as_string, &identity]
        .iter()
        .map(|r| sequence_number(r))
        .collect();

    let plain = indexer(&opensearch_url(), &index, &[]).await;
    let (response, s) = plain.handle(&payload, far_deadline()).await.unwrap();
    let reported = failures(&response);
    assert_eq!(s.indexed, 1);
    assert_eq!(reported.len(), 3, "{reported:?}");
    for seq in &seqs {
        assert!(reported.contains(seq), "{seq} in {reported:?}");
    }

    let quarantine = format!("{index}-quarantine");
    let q = indexer(
        &opensearch_url(),
        &index,
        &[("QUARANTINE_INDEX", &quarantine)],
    )
    .await;
    let (response, s) = q.handle(&payload, far_deadline()).await.unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(s.quarantined, 3);
    for e in entries(&quarantine).await {
        assert!(
            e["sequence_number"].is_string() && e["event_id"].is_string(),
            "{e}"
        );
    }
}

// 6. A creation time from the future cannot pin a document: refused in the function and in
//    replay, and later real changes still apply.
#[tokio::test]
async fn a_creation_time_from_the_future_is_refused_and_cannot_pin_a_document() {
    let index = unique_index("future");
    create_index(&index).await;
    let quarantine = format!("{index}-quarantine");
    let indexer = indexer(
        &opensearch_url(),
        &index,
        &[("QUARANTINE_INDEX", &quarantine)],
    )
    .await;
    let now = now_secs();
    let in_millis = change(
        1,
        "INSERT",
        "item",
        now * 1000,
        Some(json!({"v": {"N": "1"}})),
    );
    let years_ahead = change(
        2,
        "MODIFY",
        "item",
        now + 3 * 365 * 86_400,
        Some(json!({"v": {"N": "2"}})),
    );
    let (_, s) = indexer
        .handle(&batch_of(&[in_millis]), far_deadline())
        .await
        .unwrap();
    assert_eq!(s.quarantined, 1);
    let (_, s) = indexer
        .handle(&batch_of(&[years_ahead]), far_deadline())
        .await
        .unwrap();
    assert_eq!(s.quarantined, 1);
    for e in entries(&quarantine).await {
        assert!(reason_of(&e).contains("ApproximateCreationDateTime"), "{e}");
    }
    // A forged entry (the review's version 8999999999999999000) replays to nothing.
    let forged = change(
        3,
        "MODIFY",
        "item",
        8_999_999_999_999_999,
        Some(json!({"v": {"N": "9"}})),
    );
    let entry = stream_indexer::sink::quarantine::Entry::new(
        &index,
        "forged",
        Some("3"),
        Some("forged"),
        &forged.to_string(),
    );
    let res = http()
        .put(format!(
            "{}/{quarantine}/_doc/forged?refresh=true",
            opensearch_url()
        ))
        .json(&entry)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let report = replay::replay(&indexer, &replay::Options::default())
        .await
        .unwrap();
    assert_eq!(
        (report.replayed, report.still_failing),
        (0, 3),
        "{report:?}"
    );
    assert!(source_text(&index, "item").await.is_none());
    // A real change now lands.
    let real = change(4, "INSERT", "item", now, Some(json!({"v": {"N": "4"}})));
    let (_, s) = indexer
        .handle(&batch_of(&[real]), far_deadline())
        .await
        .unwrap();
    assert_eq!(s.indexed, 1);
    assert!(
        source_text(&index, "item")
            .await
            .unwrap()
            .contains("\"v\":4")
    );
}

// 7 and 10. Only an object with a Records array of objects is a batch; the invocation error
//    has a stable name.
#[tokio::test]
async fn arrays_are_not_batches_or_records() {
    let index = unique_index("arrays");
    create_index(&index).await;
    let r = change(1, "INSERT", "a", 1_763_800_000, Some(json!({})));
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    for payload in [format!("[[{r}]]"), format!("[{r}]"), "[]".into()] {
        let err = indexer.handle(&payload, far_deadline()).await.unwrap_err();
        assert!(
            matches!(err, InvocationError::NotAStreamEvent(_)),
            "{payload}"
        );
        assert_eq!(err.kind(), "NotAStreamEvent");
    }
    // A record given as an array has no readable sequence number: with no quarantine the
    // invocation must fail as a whole, under its stable name.
    let as_array = json!(["ev1", "INSERT", null, null, r["dynamodb"]]);
    let err = indexer
        .handle(&batch_of(&[as_array]), far_deadline())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "UnreportableRecords");
    assert!(all_sources(&index).await.is_empty(), "nothing indexed");
}

// 8. Keys are checked: named twice, or disagreeing with the image, is refused with a reason.
#[tokio::test]
async fn keys_that_disagree_with_the_image_are_refused_not_indexed_under_an_invented_id() {
    let index = unique_index("keys");
    create_index(&index).await;
    let twice = change(1, "INSERT", "a", 1_763_800_000, Some(json!({})))
        .to_string()
        .replace(
            r#""Keys":{"pk":{"S":"a"}}"#,
            r#""Keys":{"pk":{"S":"a"},"pk":{"S":"z"}}"#,
        );
    let mut other = change(2, "INSERT", "b", 1_763_800_000, Some(json!({})));
    other["dynamodb"]["Keys"]["pk"]["S"] = "someone-else".into();
    let payload = format!("{{\"Records\":[{twice},{other}]}}");
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    let reasons = reported_reasons(&indexer, &payload).await;
    assert!(
        reasons[0].contains("key attribute pk appears more than once"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("different values in Keys and NewImage"),
        "{reasons:?}"
    );
    assert!(all_sources(&index).await.is_empty());
}

// 9. Deep maps land (DynamoDB allows 32 levels); names OpenSearch refuses get its root cause;
//    an item's own dynamodb_raw_key beside a hashed key is refused clearly.
#[tokio::test]
async fn deep_maps_land_and_refused_names_carry_the_root_cause() {
    let index = unique_index("names");
    create_index(&index).await;
    let mut deep = json!({"v": {"N": "1"}});
    for _ in 0..31 {
        deep = json!({"m": {"M": deep}});
    }
    let long = "k".repeat(600);
    let mut raw_key = change(3, "INSERT", &long, 1_763_800_000, Some(json!({})));
    raw_key["dynamodb"]["NewImage"]["dynamodb_raw_key"] = json!({"S": "mine"});
    let records = vec![
        change(1, "INSERT", "deep", 1_763_800_000, Some(deep)),
        change(
            2,
            "INSERT",
            "meta",
            1_763_800_000,
            Some(json!({"_id": {"S": "x"}})),
        ),
        change(
            4,
            "INSERT",
            "dots",
            1_763_800_000,
            Some(json!({"a..b": {"S": "x"}})),
        ),
        raw_key,
    ];
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    let handled = indexer
        .handle_detailed(&batch_of(&records), far_deadline())
        .await
        .unwrap();
    assert_eq!(
        handled.outcomes[0],
        RecordOutcome::Indexed,
        "32 levels of maps"
    );
    let reason = |i: usize| reason_reported(&handled.outcomes[i]);
    assert!(
        reason(1).contains("caused by") && reason(1).contains("metadata field"),
        "{}",
        reason(1)
    );
    assert!(reason(2).contains("caused by"), "{}", reason(2));
    assert!(reason(3).contains("dynamodb_raw_key"), "{}", reason(3));
}

// 11. Lone surrogates: the reason names the key attribute or the attribute's position.
#[tokio::test]
async fn lone_surrogates_are_refused_naming_where_they_are() {
    let index = unique_index("surrogates");
    create_index(&index).await;
    let in_key = change(1, "INSERT", "a", 1_763_800_000, Some(json!({})))
        .to_string()
        .replace(
            r#""Keys":{"pk":{"S":"a"}}"#,
            r#""Keys":{"pk":{"S":"\ud800"}}"#,
        );
    let in_name = change(
        2,
        "INSERT",
        "b",
        1_763_800_000,
        Some(json!({"x": {"S": "1"}})),
    )
    .to_string()
    .replace(r#""x":{"S":"1"}"#, r#""\udc00":{"S":"1"}"#);
    let in_value = change(
        3,
        "INSERT",
        "c",
        1_763_800_000,
        Some(json!({"s": {"S": "1"}})),
    )
    .to_string()
    .replace(r#""s":{"S":"1"}"#, r#""s":{"S":"a\ud800"}"#);
    let payload = format!("{{\"Records\":[{in_key},{in_name},{in_value}]}}");
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    let reasons = reported_reasons(&indexer, &payload).await;
    assert!(
        reasons[0].starts_with("Keys: key attribute pk: "),
        "{reasons:?}"
    );
    assert!(reasons[1].contains("<name of attribute"), "{reasons:?}");
    assert!(
        reasons[2].starts_with("NewImage: s: S value is not valid Unicode"),
        "{reasons:?}"
    );
    assert!(all_sources(&index).await.is_empty());
}
