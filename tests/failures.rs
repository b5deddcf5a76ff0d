//! Failure semantics against the real local server behind a fault-injecting proxy: nothing
//! lost, nothing stale, nothing blocking.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::proxy::{Fault, Proxy};
use common::workload::{Table, deliver_like_lambda};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use stream_indexer::tools::replay;

const FAST_RETRIES: [(&str, &str); 3] = [
    ("RETRY_BASE_MS", "10"),
    ("RETRY_MAX_MS", "200"),
    ("DEADLINE_MARGIN_MS", "0"),
];

fn with<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    FAST_RETRIES.iter().chain(extra).copied().collect()
}

fn batch_of(records: &[Value]) -> String {
    json!({ "Records": records }).to_string()
}

fn records_of(fixture_name: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(&fixture(fixture_name)).unwrap();
    v["Records"].as_array().unwrap().clone()
}

/// The first `n` bulk requests get `fault`, the rest pass.
fn first_bulks(n: u32, fault: Fault) -> impl Fn(&common::proxy::Request) -> Fault + Send + Sync {
    let seen = AtomicU32::new(0);
    move |r| {
        if r.path.ends_with("/_bulk") && seen.fetch_add(1, Ordering::SeqCst) < n {
            fault.clone()
        } else {
            Fault::Pass
        }
    }
}

#[tokio::test]
async fn whole_request_failures_are_retried_within_the_invocation() {
    for fault in [
        Fault::Status(429),
        Fault::Status(503),
        Fault::Status(502),
        Fault::Reset,
        Fault::LostAck,
    ] {
        let index = unique_index("whole");
        create_index(&index).await;
        let proxy = Proxy::start(&opensearch_url(), first_bulks(2, fault.clone())).await;
        let indexer = indexer(&proxy.url, &index, &with(&[])).await;
        let (response, s) = indexer
            .handle(&fixture("mixed.json"), far_deadline())
            .await
            .unwrap();
        assert!(
            response.batch_item_failures.is_empty(),
            "{fault:?}: {response:?}"
        );
        assert_eq!(
            s.bulk_requests, 3,
            "{fault:?}: two faulted requests then one that passed: {s:?}"
        );
        assert_eq!(proxy.faults.load(Ordering::SeqCst), 2);
        expect_mixed_landed(&index).await;
    }
}

#[tokio::test]
async fn a_request_that_times_out_is_retried_and_its_late_write_does_no_harm() {
    let index = unique_index("timeout");
    create_index(&index).await;
    let proxy = Proxy::start(
        &opensearch_url(),
        first_bulks(1, Fault::Delay(Duration::from_millis(1500))),
    )
    .await;
    let indexer = indexer(&proxy.url, &index, &with(&[("REQUEST_TIMEOUT_MS", "300")])).await;
    let s = handle_cleanly(&indexer, "mixed.json").await;
    assert_eq!(s.bulk_requests, 2);
    // Let the delayed request reach the server; it carries the same versions, so it changes nothing.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    expect_mixed_landed(&index).await;
    assert_eq!(
        source_text(&index, "order#1|1").await.unwrap(),
        r#"{"pk":"order#1","sk":1,"total":21.49,"status":"shipped"}"#
    );
}

#[tokio::test]
async fn what_is_unconfirmed_at_the_deadline_is_reported_not_lost() {
    let index = unique_index("deadline");
    create_index(&index).await;
    let proxy = Proxy::start(&opensearch_url(), |r| {
        if r.path.ends_with("/_bulk") {
            Fault::Status(503)
        } else {
            Fault::Pass
        }
    })
    .await;
    let indexer = indexer(&proxy.url, &index, &with(&[("DEADLINE_MARGIN_MS", "200")])).await;
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_millis(1500);
    let (response, s) = indexer
        .handle(&fixture("mixed.json"), deadline)
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "returned before the deadline: {:?}",
        started.elapsed()
    );
    // Every record not durably applied is reported: all eight (superseded ones share their winner's fate).
    let all: Vec<String> = records_of("mixed.json")
        .iter()
        .map(sequence_number)
        .collect();
    assert_eq!(failures(&response), all);
    assert_eq!(s.retryable, 8);
    assert!(s.bulk_requests >= 2, "it retried while time allowed: {s:?}");
}

#[tokio::test]
async fn with_no_time_for_a_request_every_record_is_reported_as_not_attempted() {
    let index = unique_index("no-time");
    create_index(&index).await;
    let seen = Arc::new(AtomicU32::new(0));
    let counter = seen.clone();
    let proxy = Proxy::start(&opensearch_url(), move |_| {
        counter.fetch_add(1, Ordering::SeqCst);
        Fault::Pass
    })
    .await;
    let indexer = indexer(&proxy.url, &index, &with(&[])).await;
    let before = seen.load(Ordering::SeqCst);
    // Under the shortest time a request is given.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
    let handled = indexer
        .handle_detailed(&fixture("mixed.json"), deadline)
        .await
        .unwrap();
    let all: Vec<String> = records_of("mixed.json")
        .iter()
        .map(sequence_number)
        .collect();
    assert_eq!(failures(&handled.response), all);
    assert_eq!(handled.summary.bulk_requests, 0, "{:?}", handled.summary);
    for outcome in &handled.outcomes {
        assert!(
            matches!(outcome, stream_indexer::handler::RecordOutcome::Reported(r) if r == "not attempted before the deadline"),
            "{outcome:?}"
        );
    }
    assert_eq!(seen.load(Ordering::SeqCst), before, "no request was sent");
}

#[tokio::test]
async fn a_413_splits_the_body_and_sends_the_halves() {
    let index = unique_index("split");
    create_index(&index).await;
    // The proxy refuses bodies over 300 bytes, as a cluster with a small http.max_content_length would.
    let proxy = Proxy::start(&opensearch_url(), |r| {
        if r.path.ends_with("/_bulk") && r.body.len() > 300 {
            Fault::Status(413)
        } else {
            Fault::Pass
        }
    })
    .await;
    let indexer = indexer(&proxy.url, &index, &with(&[])).await;
    let s = handle_cleanly(&indexer, "mixed.json").await;
    assert!(s.bulk_requests >= 3, "{s:?}");
    expect_mixed_landed(&index).await;
}

#[tokio::test]
async fn re_delivering_an_old_batch_after_newer_changes_keeps_the_newer_documents() {
    let index = unique_index("stale");
    create_index(&index).await;
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    indexer
        .handle(&fixture("insert.json"), far_deadline())
        .await
        .unwrap();
    indexer
        .handle(&fixture("modify.json"), far_deadline())
        .await
        .unwrap();
    // The old batch again (a duplicate delivery, or a retry after a later batch succeeded).
    let s = handle_cleanly(&indexer, "insert.json").await;
    assert_eq!(s.superseded, 1, "the 409 counts as superseded: {s:?}");
    assert_eq!(
        source_text(&index, "user#1|1").await.unwrap(),
        r#"{"pk":"user#1","sk":1,"name":"Ada Lovelace","visits":2}"#
    );
    // The same batch twice in a row is harmless too.
    indexer
        .handle(&fixture("modify.json"), far_deadline())
        .await
        .unwrap();
    handle_cleanly(&indexer, "modify.json").await;
    assert_eq!(all_sources(&index).await.len(), 1);
}

#[tokio::test]
async fn with_a_version_attribute_older_versions_never_replace_newer_ones() {
    let index = unique_index("vattr");
    create_index(&index).await;
    let indexer = indexer(
        &opensearch_url(),
        &index,
        &[("VERSION_ATTRIBUTE", "visits")],
    )
    .await;
    indexer
        .handle(&fixture("modify.json"), far_deadline())
        .await
        .unwrap(); // visits 2
    let (_, s) = indexer
        .handle(&fixture("insert.json"), far_deadline())
        .await
        .unwrap(); // visits 1
    assert_eq!(s.superseded, 1);
    assert!(
        source_text(&index, "user#1|1")
            .await
            .unwrap()
            .contains(r#""visits":2"#)
    );
    // A record without the attribute cannot be versioned: a permanent failure naming it.
    let mut records = records_of("insert.json");
    records[0]["dynamodb"]["NewImage"]
        .as_object_mut()
        .unwrap()
        .remove("visits");
    let (response, s) = indexer
        .handle(&batch_of(&records), far_deadline())
        .await
        .unwrap();
    assert_eq!(response.batch_item_failures.len(), 1);
    assert_eq!(s.permanent, 1);
}

/// A strict index refuses an attribute it does not know: the record carrying it is quarantined
/// with its payload, the records after it land in the same invocation, and once the mapping
/// has the field, replay brings it in and empties the quarantine.
#[tokio::test]
async fn a_poison_record_is_quarantined_and_replayed_after_the_mapping_is_fixed() {
    let index = unique_index("poison");
    let quarantine = format!("{index}-quarantine");
    let mapping = json!({"mappings": {"dynamic": "strict", "properties": {
        "pk": {"type": "keyword"}, "sk": {"type": "double"}, "total": {"type": "double"},
        "status": {"type": "keyword"}, "tags": {"type": "keyword"}}}});
    let res = http()
        .put(format!("{}/{index}", opensearch_url()))
        .json(&mapping)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());

    // Made now, as a live stream's: replay without the table re-sends only changes whose later
    // deletes the index still remembers.
    let mut records = records_of("mixed.json");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for r in &mut records {
        r["dynamodb"]["ApproximateCreationDateTime"] = json!(now);
    }
    records[3]["dynamodb"]["NewImage"]["note"] =
        json!({"S": "an attribute the mapping does not know"});
    let poison_seq = sequence_number(&records[3]);
    let indexer = indexer(
        &opensearch_url(),
        &index,
        &[("QUARANTINE_INDEX", &quarantine)],
    )
    .await;
    let (response, s) = indexer
        .handle(&batch_of(&records), far_deadline())
        .await
        .unwrap();
    assert!(
        response.batch_item_failures.is_empty(),
        "quarantined, so the shard moves on: {response:?}"
    );
    assert_eq!(
        (s.quarantined, s.indexed, s.deleted, s.superseded),
        (1, 2, 2, 3),
        "{s:?}"
    );
    assert_eq!(
        all_ids(&index).await,
        ["order#1|1", "order#4|1"],
        "records before and after the poison landed"
    );

    let entries = all_sources(&quarantine).await;
    assert_eq!(entries.len(), 1);
    let entry: Value = serde_json::from_str(&entries[0].1).unwrap();
    assert_eq!(entry["sequence_number"], poison_seq.as_str());
    assert_eq!(entry["index"], index.as_str());
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .contains("strict_dynamic_mapping_exception"),
        "{entry}"
    );
    assert!(entry["quarantined_at"].as_u64().unwrap() > 1_700_000_000_000);
    let stored: Value = serde_json::from_str(entry["record"].as_str().unwrap()).unwrap();
    assert_eq!(
        stored, records[3],
        "the whole original stream record is kept"
    );

    // Still broken: replay keeps it, with the reason.
    let report = replay::replay(&indexer, &replay::Options::default())
        .await
        .unwrap();
    assert_eq!(
        (report.entries, report.still_failing, report.replayed),
        (1, 1, 0)
    );
    let dry = replay::replay(
        &indexer,
        &replay::Options {
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!((dry.entries, dry.would_replay), (1, 1));

    let res = http()
        .put(format!("{}/{index}/_mapping", opensearch_url()))
        .json(&json!({"properties": {"note": {"type": "text"}}}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    let report = replay::replay(&indexer, &replay::Options::default())
        .await
        .unwrap();
    assert_eq!(
        (report.entries, report.replayed, report.still_failing),
        (1, 1, 0),
        "{report:?}"
    );
    assert!(
        source_text(&index, "order#3|2")
            .await
            .unwrap()
            .contains("an attribute the mapping does not know")
    );
    assert!(
        all_sources(&quarantine).await.is_empty(),
        "replayed entries are removed"
    );
}

#[tokio::test]
async fn bad_records_get_a_reason_and_the_good_ones_still_go_through() {
    let index = unique_index("badinput");
    let quarantine = format!("{index}-quarantine");
    create_index(&index).await;
    let good = records_of("mixed.json");
    let mut bad = Vec::new();
    let mut r = good[0].clone();
    r["dynamodb"].as_object_mut().unwrap().remove("Keys");
    bad.push((r, "record has no Keys"));
    let mut r = good[0].clone();
    r["eventName"] = "UPSERT".into();
    bad.push((r, "unknown eventName \"UPSERT\""));
    let mut r = good[0].clone();
    r["dynamodb"]["NewImage"]["blob"] = json!({"B": "not*base64"});
    bad.push((r, "NewImage: blob: invalid base64"));
    let mut r = good[0].clone();
    r["dynamodb"]["NewImage"]["total"] = json!({"N": "12.3.4"});
    bad.push((r, "NewImage: total: invalid number text \"12.3.4\""));
    let mut r = good[0].clone();
    r["dynamodb"].as_object_mut().unwrap().remove("NewImage");
    bad.push((r, "INSERT record has no NewImage"));
    let mut r = good[0].clone();
    r["dynamodb"] = json!("not an object");
    bad.push((r, "record is not a stream record"));
    for (i, (r, _)) in bad.iter_mut().enumerate() {
        // Distinct records with their own sequence numbers and keys.
        if r["dynamodb"].is_object() {
            r["dynamodb"]["SequenceNumber"] = format!("90000000000000000000{i}").into();
            if r["dynamodb"].get("Keys").is_some() {
                r["dynamodb"]["Keys"]["pk"] = json!({"S": format!("bad#{i}")});
            }
        }
        r["eventID"] = format!("bad{i}").into();
    }
    let mut records: Vec<Value> = good.clone();
    records.extend(bad.iter().map(|(r, _)| r.clone()));

    // Quarantine off: every bad record that has a sequence number is reported; the one without
    // (its dynamodb section is a string) can only be kept by failing the whole batch.
    let plain = indexer(&opensearch_url(), &index, &[]).await;
    let err = plain
        .handle(&batch_of(&records), far_deadline())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no SequenceNumber"), "{err}");
    let without_unnamed = &records[..records.len() - 1];
    let (response, s) = plain
        .handle(&batch_of(without_unnamed), far_deadline())
        .await
        .unwrap();
    assert_eq!(response.batch_item_failures.len(), 5);
    assert_eq!((s.permanent, s.indexed), (5, 3), "{s:?}");
    expect_mixed_landed(&index).await;

    // Quarantine on: all six are kept with their reasons and the batch succeeds.
    let q = indexer(
        &opensearch_url(),
        &index,
        &[("QUARANTINE_INDEX", &quarantine)],
    )
    .await;
    let (response, s) = q.handle(&batch_of(&records), far_deadline()).await.unwrap();
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    assert_eq!(s.quarantined, 6, "{s:?}");
    let entries = all_sources(&quarantine).await;
    assert_eq!(entries.len(), 6);
    for (_, want) in &bad {
        assert!(
            entries
                .iter()
                .any(|(_, e)| serde_json::from_str::<Value>(e).unwrap()["reason"]
                    .as_str()
                    .unwrap()
                    .starts_with(want)),
            "no entry with reason {want:?}: {entries:?}"
        );
    }
}

#[tokio::test]
async fn when_the_quarantine_cannot_be_written_the_record_is_reported_instead() {
    // The quarantine write is retried until the deadline, like documents: keep it short.
    let index = unique_index("qfail");
    let quarantine = format!("{index}-quarantine");
    create_index(&index).await;
    let proxy = Proxy::start(&opensearch_url(), move |r| {
        if r.path.contains("-quarantine") {
            Fault::Status(503)
        } else {
            Fault::Pass
        }
    })
    .await;
    let mut records = records_of("mixed.json");
    records[3]["dynamodb"]["NewImage"]["total"] = json!({"N": "1e"});
    let seq = sequence_number(&records[3]);
    let indexer = indexer(
        &proxy.url,
        &index,
        &with(&[("QUARANTINE_INDEX", &quarantine)]),
    )
    .await;
    let (response, s) = indexer
        .handle(
            &batch_of(&records),
            tokio::time::Instant::now() + Duration::from_secs(3),
        )
        .await
        .unwrap();
    assert_eq!(failures(&response), [seq]);
    assert_eq!((s.quarantined, s.permanent), (0, 1));
}

/// More than 10,000 stream records through the handler while about a fifth of the bulk requests
/// fail in mixed ways, delivered and re-delivered the way Lambda does; afterwards the index
/// equals the table, every value compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_records_under_faults_converge_to_the_table() {
    soak(&[("VERSION_ATTRIBUTE", "ver")], 8).await;
}

/// The same under stream-time versions, one change per second: `external_gte` cannot tell two
/// changes of one second apart when a timed-out write lands late (README, "Versions").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_records_under_faults_converge_with_stream_time_versions() {
    soak(&[], 1).await;
}

async fn soak(versioning: &[(&str, &str)], per_second: usize) {
    let index = unique_index("soak");
    create_index(&index).await;
    let mut table = Table::new(7);
    table.random_changes(10_500, 2_500, per_second);
    let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(11)));
    let proxy = Proxy::start(&opensearch_url(), move |r| {
        if !r.path.ends_with("/_bulk") {
            return Fault::Pass;
        }
        let mut rng = rng.lock().unwrap();
        if !rng.random_bool(0.2) {
            return Fault::Pass;
        }
        match rng.random_range(0..7) {
            0 => Fault::Status(429),
            1 => Fault::Status(503),
            2 => Fault::Reset,
            3 => Fault::LostAck,
            4 => Fault::Delay(Duration::from_millis(1200)),
            5 => Fault::ItemsTooMany(|id| id.ends_with('3')),
            _ => {
                if r.body.len() > 20_000 {
                    Fault::Status(413)
                } else {
                    Fault::Status(502)
                }
            }
        }
    })
    .await;
    let mut extra = vec![
        ("REQUEST_TIMEOUT_MS", "800"),
        ("BULK_MAX_ACTIONS", "200"),
        ("RETRY_BASE_MS", "20"),
        ("RETRY_MAX_MS", "300"),
        ("DEADLINE_MARGIN_MS", "300"),
    ];
    extra.extend_from_slice(versioning);
    let indexer = indexer(&proxy.url, &index, &extra).await;
    let delivery =
        deliver_like_lambda(&indexer, &table.records, 1000, Duration::from_secs(4)).await;
    let requests = proxy.requests.load(Ordering::SeqCst);
    let faults = proxy.faults.load(Ordering::SeqCst);
    eprintln!(
        "{} records, {delivery:?}, {requests} requests, {faults} faulted",
        table.records.len()
    );
    assert!(
        faults * 10 >= requests,
        "about a fifth faulted: {faults} of {requests}"
    );
    // Late writes from timed-out requests settle before comparing.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let got = all_sources(&index).await;
    let want: Vec<(String, String)> = table
        .items
        .iter()
        .map(|(k, (_, doc))| (k.clone(), doc.clone()))
        .collect();
    let missing: Vec<&String> = want
        .iter()
        .filter(|w| !got.iter().any(|g| g.0 == w.0))
        .map(|w| &w.0)
        .collect();
    let extra_docs: Vec<&String> = got
        .iter()
        .filter(|g| !want.iter().any(|w| w.0 == g.0))
        .map(|g| &g.0)
        .collect();
    assert!(
        missing.is_empty() && extra_docs.is_empty(),
        "missing {missing:?}, extra {extra_docs:?}"
    );
    for ((id, doc), (_, expected)) in got.iter().zip(&want) {
        assert_eq!(doc, expected, "document {id} differs from the table");
    }
}

/// A refused connection and a failed TLS handshake say so, not only "error sending request".
#[tokio::test]
async fn connection_and_tls_failures_name_their_cause() {
    let index = unique_index("chain");
    let base = opensearch_url();
    let tls_to_plain = base.replacen("http://", "https://", 1);
    let payload = fixture("insert.json");
    for (url, cause) in [
        ("http://127.0.0.1:9".to_string(), "refused"),
        // rustls reading a plain-HTTP answer to its ClientHello.
        (tls_to_plain, "corrupt message"),
    ] {
        let indexer = indexer(&url, &index, &[("DEADLINE_MARGIN_MS", "0")]).await;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        let handled = indexer.handle_detailed(&payload, deadline).await.unwrap();
        let reasons: Vec<String> = handled.outcomes.iter().map(|o| format!("{o:?}")).collect();
        assert!(
            reasons.iter().all(|r| r.to_lowercase().contains(cause)),
            "{url}: {reasons:?}"
        );
    }
}
