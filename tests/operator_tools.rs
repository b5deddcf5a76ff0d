//! The operator tools cannot make the index wrong through routine actions, against the real
//! local servers: a repair from a shell with another version scheme or other routes is refused
//! (the index records how it is written), and a replay after a fixed mapping never brings back
//! an item deleted since.

mod common;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::AttributeValue as A;
use common::*;
use serde_json::{Value, json};
use stream_indexer::handler::Indexer;
use stream_indexer::sink::template::WriteSettingsError;
use stream_indexer::tools::backfill;
use stream_indexer::tools::replay::{self, ReplayReport, TableAccess};
use stream_indexer::tools::verify::{self, Options};

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A stream record of `arn`'s table for key (`pk`, 1), with `image` (attribute name → DynamoDB
/// JSON) as its NewImage.
fn change(seq: u64, name: &str, arn: &str, pk: &str, image: Option<Value>) -> Value {
    let keys = json!({"pk": {"S": pk}, "sk": {"N": "1"}});
    let mut dynamodb = json!({
        "ApproximateCreationDateTime": now_secs(),
        "Keys": keys,
        "SequenceNumber": format!("{:021}", 100_000_000_000_000_000_000u128 + seq as u128),
        "SizeBytes": 100,
        "StreamViewType": "NEW_IMAGE",
    });
    if let Some(mut image) = image {
        image["pk"] = json!({"S": pk});
        image["sk"] = json!({"N": "1"});
        dynamodb["NewImage"] = image;
    }
    json!({
        "eventID": format!("ev{seq}-{pk}"),
        "eventName": name,
        "eventSource": "aws:dynamodb",
        "eventSourceARN": arn,
        "dynamodb": dynamodb,
    })
}

fn batch(records: &[Value]) -> String {
    json!({ "Records": records }).to_string()
}

fn item(pk: &str, attributes: &[(&str, A)]) -> HashMap<String, A> {
    let mut item = HashMap::from([
        ("pk".to_string(), A::S(pk.into())),
        ("sk".to_string(), A::N("1".into())),
    ]);
    item.extend(attributes.iter().map(|(n, v)| (n.to_string(), v.clone())));
    item
}

async fn verify_run(
    indexer: &Indexer,
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    repair: bool,
) -> Result<verify::Report, verify::VerifyError> {
    let opts = Options {
        repair,
        ..Options::new(table)
    };
    verify::run(indexer, ddb, &opts, &AtomicU64::new(0)).await
}

/// Issue item 1, as reproduced: the function versions by `rev`; a document is lost; a repair
/// from a shell without `VERSION_ATTRIBUTE` would index it at a read-time version (~1.7e12) and
/// pin it against every later `rev`. Every tool refuses instead, naming the setting and both
/// values; with the function's settings the repair lands and the table's `rev` 4 wins.
#[tokio::test]
async fn a_repair_with_another_version_scheme_is_refused_and_the_tables_next_change_lands() {
    let (ddb, _) = dynamo_clients().await;
    let table = unique_index("scheme");
    let arn = create_table(&ddb, &table).await;
    let index = unique_index("scheme-idx");
    create_index(&index).await;
    let quarantine = format!("{index}-quarantine");
    let function = indexer(
        &opensearch_url(),
        &index,
        &[
            ("VERSION_ATTRIBUTE", "rev"),
            ("QUARANTINE_INDEX", &quarantine),
        ],
    )
    .await;
    // As at cold start: the index records the function's settings.
    function.check_write_settings().await.unwrap();

    let image = |rev: &str, v: &str| json!({"rev": {"N": rev}, "v": {"S": v}});
    put_items(
        &ddb,
        &table,
        vec![item(
            "a",
            &[("rev", A::N("3".into())), ("v", A::S("three".into()))],
        )],
    )
    .await;
    let (_, s) = function
        .handle(
            &batch(&[change(1, "INSERT", &arn, "a", Some(image("3", "three")))]),
            far_deadline(),
        )
        .await
        .unwrap();
    assert_eq!(s.indexed, 1, "{s:?}");
    // Lost (by hand: a delete that bumps the version, so its tombstone must age out first).
    let res = http()
        .put(format!("{}/{index}/_settings", opensearch_url()))
        .json(&json!({"index.gc_deletes": "1s"}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    delete_doc(&index, "a|1").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // The operator's shell has no VERSION_ATTRIBUTE.
    let shell = indexer(
        &opensearch_url(),
        &index,
        &[("QUARANTINE_INDEX", &quarantine)],
    )
    .await;
    let refused = verify_run(&shell, &ddb, &table, true)
        .await
        .unwrap_err()
        .to_string();
    for part in ["VERSION_ATTRIBUTE", "\"rev\"", "unset", &index] {
        assert!(refused.contains(part), "{part} in: {refused}");
    }
    assert_eq!(
        source_text(&index, "a|1").await,
        None,
        "nothing was written"
    );
    let refused = backfill::prepare_indexes(&shell, std::slice::from_ref(&index), None)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("VERSION_ATTRIBUTE"), "{refused}");
    let refused = replay::replay(&shell, &replay::Options::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("VERSION_ATTRIBUTE"), "{refused}");
    // Nor does a function with the shell's settings start.
    match shell.check_write_settings().await {
        Err(WriteSettingsError::Mismatch {
            index: at,
            differences,
        }) => {
            assert_eq!(at, index);
            assert_eq!(differences.len(), 1, "{differences:?}");
            assert_eq!(differences[0].variable, "VERSION_ATTRIBUTE");
        }
        other => panic!("{other:?}"),
    }
    // Other routes would read live documents as extra: refused too, even read-only.
    let routed = indexer(
        &opensearch_url(),
        &index,
        &[
            ("VERSION_ATTRIBUTE", "rev"),
            (
                "ROUTES",
                r#"[{"when": {"attribute": "pk", "prefix": "a"}, "index": null}]"#,
            ),
        ],
    )
    .await;
    let refused = verify_run(&routed, &ddb, &table, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("ROUTES"), "{refused}");

    // With the function's settings the repair indexes the item at its own rev ...
    let report = verify_run(&function, &ddb, &table, true).await.unwrap();
    assert_eq!(report.missing, 1, "{report:?}");
    assert_eq!(report.repair.as_ref().unwrap().indexed, 1, "{report:?}");
    // ... and the table's next change lands.
    put_items(
        &ddb,
        &table,
        vec![item(
            "a",
            &[("rev", A::N("4".into())), ("v", A::S("four".into()))],
        )],
    )
    .await;
    let (_, s) = function
        .handle(
            &batch(&[change(2, "MODIFY", &arn, "a", Some(image("4", "four")))]),
            far_deadline(),
        )
        .await
        .unwrap();
    assert_eq!((s.indexed, s.superseded), (1, 0), "{s:?}");
    let doc = source_text(&index, "a|1").await.unwrap();
    assert!(doc.contains("\"rev\":4") && doc.contains("four"), "{doc}");
    assert!(
        verify_run(&function, &ddb, &table, false)
            .await
            .unwrap()
            .equal()
    );
}

/// Issue item 2, as reproduced: a MODIFY is quarantined, the item is then deleted and the
/// REMOVE indexed, the delete's tombstone ages out of `index.gc_deletes`, the mapping is fixed.
/// Replay keeps the item deleted: with the table it reads the item (gone: deleted), without it
/// it leaves the entry alone. An item changed since is indexed as the table holds it now, and
/// another table's entry stays.
#[tokio::test]
async fn a_replay_after_the_delete_is_forgotten_keeps_the_deleted_item_deleted() {
    let (ddb, _) = dynamo_clients().await;
    let table = unique_index("forgot");
    let arn = create_table(&ddb, &table).await;
    let index = unique_index("forgot-idx");
    let strict = json!({
        "settings": {"index.gc_deletes": "1s"},
        "mappings": {"dynamic": "strict", "properties": {
            "pk": {"type": "keyword"}, "sk": {"type": "double"}, "v": {"type": "keyword"}}},
    });
    let res = http()
        .put(format!("{}/{index}", opensearch_url()))
        .json(&strict)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    let quarantine = format!("{index}-quarantine");
    let function = indexer(
        &opensearch_url(),
        &index,
        &[("QUARANTINE_INDEX", &quarantine)],
    )
    .await;
    function.check_write_settings().await.unwrap();

    let with_note = |v: &str| json!({"v": {"S": v}, "note": {"S": "a field the mapping lacks"}});
    let other_arn = arn.replace(&format!("table/{table}/"), "table/another-table/");
    let records = [
        change(1, "INSERT", &arn, "gone", Some(json!({"v": {"S": "one"}}))),
        change(2, "MODIFY", &arn, "gone", Some(with_note("two"))),
        change(3, "REMOVE", &arn, "gone", None),
        change(4, "INSERT", &arn, "kept", Some(with_note("old"))),
        change(5, "INSERT", &other_arn, "foreign", Some(with_note("x"))),
    ];
    for r in &records {
        function
            .handle(&batch(std::slice::from_ref(r)), far_deadline())
            .await
            .unwrap();
    }
    assert_eq!(source_text(&index, "gone|1").await, None);
    assert_eq!(all_sources(&quarantine).await.len(), 3);
    // In the table: "gone" is gone, "kept" has changed since its record.
    put_items(
        &ddb,
        &table,
        vec![item(
            "kept",
            &[("v", A::S("now".into())), ("note", A::S("n".into()))],
        )],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let res = http()
        .put(format!("{}/{index}/_mapping", opensearch_url()))
        .json(&json!({"properties": {"note": {"type": "text"}}}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());

    // Without the table: every entry is older than the index's delete memory; nothing moves.
    let report = replay::replay(&function, &replay::Options::default())
        .await
        .unwrap();
    assert_eq!(
        report,
        ReplayReport {
            entries: 3,
            too_old: 3,
            ..ReplayReport::default()
        }
    );
    assert_eq!(source_text(&index, "gone|1").await, None);
    assert_eq!(all_sources(&quarantine).await.len(), 3);

    // With the table.
    let key_names = ["pk".to_string(), "sk".to_string()];
    let opts = replay::Options {
        dry_run: false,
        table: Some(TableAccess {
            ddb: &ddb,
            table: &table,
            key_names: &key_names,
            clock_skew: Duration::from_secs(5),
        }),
    };
    let report = replay::replay(&function, &opts).await.unwrap();
    assert_eq!(
        report,
        ReplayReport {
            entries: 3,
            replayed: 2,
            foreign: 1,
            ..ReplayReport::default()
        }
    );
    assert_eq!(
        source_text(&index, "gone|1").await,
        None,
        "a deleted item stays deleted"
    );
    let kept = source_text(&index, "kept|1").await.unwrap();
    assert!(kept.contains("\"now\"") && !kept.contains("old"), "{kept}");
    let left = all_sources(&quarantine).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(left[0].1.contains("another-table"), "{left:?}");

    // Control: the quarantined change re-sent as it is (what replay did before) brings the
    // deleted item back, so the tombstone had aged out.
    let (_, s) = function
        .handle(&batch(&records[1..2]), far_deadline())
        .await
        .unwrap();
    assert_eq!(s.indexed, 1, "{s:?}");
    assert!(source_text(&index, "gone|1").await.is_some());
}

/// Issue item 5: a repair deletes at most `max_deletes` documents (the rest counted as
/// withheld, left in place), and documents whose id is no key of this table (another table's,
/// sharing the index) are reported as foreign and deleted only when asked.
#[tokio::test]
async fn a_repair_deletes_within_its_bound_and_leaves_foreign_documents_unless_asked() {
    let (ddb, _) = dynamo_clients().await;
    let table = unique_index("bound");
    let arn = create_table(&ddb, &table).await;
    let index = unique_index("bound-idx");
    create_index(&index).await;
    let function = indexer(&opensearch_url(), &index, &[]).await;
    put_items(&ddb, &table, vec![item("a", &[("v", A::S("one".into()))])]).await;
    function
        .handle(
            &batch(&[change(
                1,
                "INSERT",
                &arn,
                "a",
                Some(json!({"v": {"S": "one"}})),
            )]),
            far_deadline(),
        )
        .await
        .unwrap();
    // Three documents of keys this table does not hold, two of no key of this table at all.
    for id in ["x|1", "y|1", "z|1"] {
        put_doc(&index, id, r#"{"v":"stale"}"#).await;
    }
    for id in ["no key of ours", "another|table|id"] {
        put_doc(&index, id, r#"{"v":"theirs"}"#).await;
    }

    let opts = Options {
        repair: true,
        max_deletes: 2,
        ..Options::new(&table)
    };
    let report = verify::run(&function, &ddb, &opts, &AtomicU64::new(0))
        .await
        .unwrap();
    assert_eq!((report.extra, report.foreign), (3, 2), "{report:?}");
    let repair = report.repair.clone().unwrap();
    assert_eq!((repair.deleted, repair.withheld), (2, 1), "{report:?}");
    assert!(
        report.summary_line().ends_with("extra 3 foreign 2"),
        "{}",
        report.summary_line()
    );
    let left = all_ids(&index).await;
    assert_eq!(
        left.len(),
        1 + 1 + 2,
        "one item, one withheld, two foreign: {left:?}"
    );

    let opts = Options {
        repair: true,
        delete_foreign: true,
        ..Options::new(&table)
    };
    let report = verify::run(&function, &ddb, &opts, &AtomicU64::new(0))
        .await
        .unwrap();
    assert_eq!((report.extra, report.foreign), (1, 2), "{report:?}");
    assert_eq!(report.repair.as_ref().unwrap().deleted, 3, "{report:?}");
    assert_eq!(all_ids(&index).await, ["a|1"]);
}
