//! The handler end to end against a real OpenSearch-compatible server: events/ fixtures in,
//! documents read back and compared exactly.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use common::proxy::{Fault, Proxy};
use common::*;
use serde_json::value::RawValue;

/// `_source` as attribute name → exact JSON text of its value.
fn fields(source: &str) -> BTreeMap<String, String> {
    let map: BTreeMap<String, Box<RawValue>> = serde_json::from_str(source).unwrap();
    map.into_iter()
        .map(|(k, v)| (k, v.get().to_string()))
        .collect()
}

#[tokio::test]
async fn a_batch_with_every_dynamodb_type_lands_exactly() {
    let index = unique_index("types");
    create_index(&index).await;
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    let summary = handle_cleanly(&indexer, "every-type.json").await;
    assert_eq!(summary.indexed, 1);

    let source = source_text(&index, "types#1|1")
        .await
        .expect("document indexed under pk|sk");
    let f = fields(&source);
    // Numbers: the exact decimal text DynamoDB sent, as JSON numbers.
    assert_eq!(f["n_int"], "42");
    assert_eq!(f["n_big"], "12345678901234567890123456789012345678");
    assert_eq!(
        f["n_small"],
        "-0.00000000000000000000000000000000000012345678901234567890123456789012345678"
    );
    assert_eq!(f["n_exp_hi"], "1E+125");
    assert_eq!(f["n_exp_lo"], "-1E-130");
    assert_eq!(f["n_exp"], "1E+30");
    assert_eq!(f["n_trailing"], "1.50");
    assert_eq!(f["sk"], "1");
    assert_eq!(
        f["ns"],
        r#"["1","2.5","-3E+10","99999999999999999999999999999999999999"]"#.replace('"', "")
    );
    // Binaries stay base64 of the same bytes; sets become arrays.
    let b: String = serde_json::from_str(&f["b"]).unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD.decode(b).unwrap(),
        (0..=255u8).collect::<Vec<_>>()
    );
    assert_eq!(f["bs"], r#"["AA==","AQI=","/w=="]"#);
    assert_eq!(
        serde_json::from_str::<Vec<String>>(&f["ss"]).unwrap(),
        ["a", "b", "ünïcode"]
    );
    // Strings decode to the same Unicode text.
    assert_eq!(
        serde_json::from_str::<String>(&f["s"]).unwrap(),
        "héllo \"wörld\" \\ / \n\t 😀 \u{2028} 日本語"
    );
    assert_eq!(serde_json::from_str::<String>(&f["pk"]).unwrap(), "types#1");
    assert_eq!(
        (f["t"].as_str(), f["f"].as_str(), f["z"].as_str()),
        ("true", "false", "null")
    );
    assert_eq!(f["l"], r#"["x",null,["nested"]]"#);
    assert_eq!(f["l_num"], "[1,0.000001,-2E+20]");
    assert_eq!(
        f["m"],
        r#"{"inner":{"deep":-0.5,"name":"d"},"list":[{"k":"v"}]}"#
    );
    assert_eq!(f.len(), 20, "every attribute and nothing else: {source}");
}

/// OpenSearch compresses a response when the request accepts gzip (Amazon OpenSearch Service
/// does by default), and the HTTP client asks for it unless told otherwise. A bulk response is
/// read once for its statuses: compressing it costs the cluster and the function CPU and saves
/// nothing worth it on a VPC link.
#[tokio::test]
async fn bulk_requests_ask_for_an_uncompressed_response() {
    let index = unique_index("identity");
    create_index(&index).await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let proxy = Proxy::start(&opensearch_url(), move |r| {
        if r.path.ends_with("/_bulk") {
            let encoding = r.header("accept-encoding").map(str::to_string);
            record.lock().unwrap().push(encoding);
        }
        Fault::Pass
    })
    .await;
    let indexer = indexer(&proxy.url, &index, &[]).await;
    handle_cleanly(&indexer, "mixed.json").await;
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.is_empty(), "no bulk request went through the proxy");
    assert!(
        seen.iter().all(|e| e.as_deref() == Some("identity")),
        "{seen:?}"
    );
}

/// Basic credentials go with every request, bulk or not, as one `Authorization` header.
#[tokio::test]
async fn basic_credentials_go_with_every_request() {
    let index = unique_index("basic");
    create_index(&index).await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let proxy = Proxy::start(&opensearch_url(), move |r| {
        let auth: Vec<String> = r
            .header_values("authorization")
            .into_iter()
            .map(str::to_string)
            .collect();
        record.lock().unwrap().push((r.path.clone(), auth));
        Fault::Pass
    })
    .await;
    let quarantine = format!("{index}-quarantine");
    let indexer = indexer(
        &proxy.url,
        &index,
        &[
            ("OPENSEARCH_AUTH", "basic"),
            ("OPENSEARCH_USERNAME", "indexer"),
            ("OPENSEARCH_PASSWORD", "pä:ss word"),
            ("QUARANTINE_INDEX", &quarantine),
        ],
    )
    .await;
    handle_cleanly(&indexer, "mixed.json").await;
    let seen = seen.lock().unwrap().clone();
    assert!(seen.iter().any(|(p, _)| p.ends_with("/_bulk")), "{seen:?}");
    // base64("indexer:pä:ss word")
    let expected = vec!["Basic aW5kZXhlcjpww6Q6c3Mgd29yZA==".to_string()];
    assert!(seen.iter().all(|(_, a)| *a == expected), "{seen:?}");
}

#[tokio::test]
async fn a_mixed_batch_applies_the_last_change_per_key() {
    let index = unique_index("mixed");
    create_index(&index).await;
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    let s = handle_cleanly(&indexer, "mixed.json").await;
    assert_eq!(
        (s.records, s.indexed, s.deleted, s.ttl_deleted, s.superseded),
        (8, 3, 2, 1, 3),
        "{s:?}"
    );

    let docs = all_sources(&index).await;
    let ids: Vec<&str> = docs.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["order#1|1", "order#3|2", "order#4|1"]);
    assert_eq!(
        docs[0].1,
        r#"{"pk":"order#1","sk":1,"total":21.49,"status":"shipped"}"#
    );
    assert_eq!(
        docs[2].1,
        r#"{"pk":"order#4","sk":1,"total":1E+3,"status":"new"}"#
    );
}

#[tokio::test]
async fn insert_modify_remove_and_ttl_remove_follow_the_table() {
    let index = unique_index("lifecycle");
    create_index(&index).await;
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    let run = |name: &'static str| {
        let indexer = indexer.clone();
        async move {
            let (response, summary) = indexer
                .handle(&fixture(name), far_deadline())
                .await
                .unwrap();
            assert!(
                response.batch_item_failures.is_empty(),
                "{name}: {response:?}"
            );
            summary
        }
    };
    run("insert.json").await;
    assert_eq!(
        source_text(&index, "user#1|1").await.unwrap(),
        r#"{"pk":"user#1","sk":1,"name":"Ada","visits":1}"#
    );
    run("modify.json").await;
    assert_eq!(
        source_text(&index, "user#1|1").await.unwrap(),
        r#"{"pk":"user#1","sk":1,"name":"Ada Lovelace","visits":2}"#
    );
    let s = run("remove.json").await;
    assert_eq!((s.deleted, s.ttl_deleted), (1, 0));
    assert_eq!(source_text(&index, "user#1|1").await, None);
    let s = run("ttl-remove.json").await;
    assert_eq!((s.deleted, s.ttl_deleted), (1, 1));
    // A re-delivered insert older than the delete stays deleted (the tombstone's version wins).
    run("insert.json").await;
    assert_eq!(source_text(&index, "user#1|1").await, None);
}

#[tokio::test]
async fn a_near_400_kb_item_lands_whole() {
    let index = unique_index("large");
    create_index(&index).await;
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    handle_cleanly(&indexer, "large-item.json").await;
    let f = fields(&source_text(&index, "large#1|1").await.unwrap());
    assert_eq!(
        serde_json::from_str::<String>(&f["blob"]).unwrap(),
        "x".repeat(390 * 1024)
    );
}

#[tokio::test]
async fn a_document_over_the_byte_limit_is_a_permanent_failure_of_its_record_only() {
    let index = unique_index("limit");
    create_index(&index).await;
    let indexer = indexer(&opensearch_url(), &index, &[("BULK_MAX_BYTES", "100000")]).await;
    let mut batch: serde_json::Value = serde_json::from_str(&fixture("large-item.json")).unwrap();
    let mixed: serde_json::Value = serde_json::from_str(&fixture("mixed.json")).unwrap();
    batch["Records"]
        .as_array_mut()
        .unwrap()
        .extend(mixed["Records"].as_array().unwrap().iter().cloned());
    let large_seq = sequence_number(&batch["Records"][0]);
    let (response, s) = indexer
        .handle(&batch.to_string(), far_deadline())
        .await
        .unwrap();
    assert_eq!(failures(&response), [large_seq]);
    assert_eq!((s.permanent, s.indexed), (1, 3));
}

/// A batch where the server refuses some items: one per-item 429 that lasts past the
/// invocation's time, and one mapping error. Exactly those two sequence numbers come back;
/// everything else is in the index.
#[tokio::test]
async fn returns_exactly_the_refused_records_and_indexes_the_rest() {
    let index = unique_index("refused");
    create_index(&index).await;
    // Map `visits` as a scalar first, so a map there is a mapping error (under any template:
    // one name cannot be both).
    let seed = indexer(&opensearch_url(), &index, &[]).await;
    seed.handle(&fixture("insert.json"), far_deadline())
        .await
        .unwrap();
    let proxy = Proxy::start(&opensearch_url(), |r| {
        if r.path.ends_with("/_bulk") {
            Fault::ItemsTooMany(|id| id == "order#3|2")
        } else {
            Fault::Pass
        }
    })
    .await;
    let indexer = indexer(
        &proxy.url,
        &index,
        &[
            ("RETRY_BASE_MS", "20"),
            ("RETRY_MAX_MS", "100"),
            ("DEADLINE_MARGIN_MS", "0"),
        ],
    )
    .await;
    let mut batch: serde_json::Value = serde_json::from_str(&fixture("mixed.json")).unwrap();
    batch["Records"][5]["dynamodb"]["NewImage"]["visits"] =
        serde_json::json!({"M": {"count": {"S": "not a number"}}});
    let bad_seq = sequence_number(&batch["Records"][5]);
    let throttled_seq = sequence_number(&batch["Records"][3]);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    let (response, s) = indexer.handle(&batch.to_string(), deadline).await.unwrap();
    let mut got = failures(&response);
    got.sort();
    let mut want = vec![bad_seq, throttled_seq];
    want.sort();
    assert_eq!(got, want, "{s:?}");
    assert_eq!(
        (s.retryable, s.permanent, s.indexed, s.deleted),
        (1, 1, 1, 2),
        "{s:?}"
    );
    assert!(s.bulk_requests > 2, "the 429 was retried: {s:?}");
    assert_eq!(all_ids(&index).await, ["order#1|1", "user#1|1"]);
}

#[tokio::test]
async fn a_keys_only_stream_is_a_clear_error_for_each_record_not_a_silent_drop() {
    let index = unique_index("keysonly");
    create_index(&index).await;
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    let mut batch: serde_json::Value = serde_json::from_str(&fixture("insert.json")).unwrap();
    let d = &mut batch["Records"][0]["dynamodb"];
    d.as_object_mut().unwrap().remove("NewImage");
    d["StreamViewType"] = "KEYS_ONLY".into();
    let seq = d["SequenceNumber"].as_str().unwrap().to_string();
    let (response, s) = indexer
        .handle(&batch.to_string(), far_deadline())
        .await
        .unwrap();
    assert_eq!(failures(&response), [seq]);
    assert_eq!(s.permanent, 1);
}

#[tokio::test]
async fn a_payload_that_is_not_a_stream_event_fails_the_invocation() {
    let indexer = indexer(&opensearch_url(), "unused", &[]).await;
    let err = indexer
        .handle(r#"{"Records": 5}"#, far_deadline())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("payload is not a DynamoDB Streams event"),
        "{err}"
    );
    assert!(
        indexer
            .handle(r#"{"detail-type": "Scheduled Event"}"#, far_deadline())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn fixtures_parse_as_aws_lambda_events_types_too() {
    for name in [
        "every-type.json",
        "insert.json",
        "modify.json",
        "remove.json",
        "ttl-remove.json",
        "mixed.json",
        "large-item.json",
    ] {
        let parsed: Result<aws_lambda_events::event::dynamodb::Event, _> =
            serde_json::from_str(&fixture(name));
        assert!(parsed.is_ok(), "{name}: {:?}", parsed.err());
    }
}
