//! Routing against the real local server: a single-table design whose entity types conflict in
//! their attribute types lands in one index per type, exactly; items that change type move;
//! removes find their index; `{table}` splits several tables' streams.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::{Value, json};
use stream_indexer::handler::{Indexer, RecordOutcome};
use stream_indexer::{
    pipeline::{convert, docid},
    tools::verify,
};

/// A stream record of table `table` for the item `image` (DynamoDB JSON with `pk` and `sk`).
fn record(
    table: &str,
    seq: u64,
    name: &str,
    image: Option<&Value>,
    old: Option<&Value>,
    keys_of: &Value,
) -> Value {
    let keys = json!({"pk": keys_of["pk"], "sk": keys_of["sk"]});
    let mut dynamodb = json!({
        "ApproximateCreationDateTime": 1_700_000_000u64 + seq,
        "Keys": keys,
        "SequenceNumber": format!("{:021}", 100_000_000_000_000_000_000u128 + seq as u128),
        "StreamViewType": if old.is_some() { "NEW_AND_OLD_IMAGES" } else { "NEW_IMAGE" },
    });
    if let Some(i) = image {
        dynamodb["NewImage"] = i.clone();
    }
    if let Some(o) = old {
        dynamodb["OldImage"] = o.clone();
    }
    json!({
        "eventID": format!("ev{seq}"),
        "eventName": name,
        "eventSource": "aws:dynamodb",
        "eventSourceARN": format!("arn:aws:dynamodb:eu-west-1:123456789012:table/{table}/stream/2026-01-01T00:00:00.000"),
        "dynamodb": dynamodb,
    })
}

fn batch(records: &[Value]) -> String {
    json!({ "Records": records }).to_string()
}

/// Three entity types of one table whose `status` and `total` differ in type, and audit items.
fn single_table_items() -> Vec<Value> {
    let mut items = Vec::new();
    for i in 0..8 {
        items.push(json!({
            "pk": {"S": format!("USER#{i}")}, "sk": {"S": "PROFILE"},
            "entityType": {"S": "User"}, "status": {"N": format!("{i}")},
            "name": {"S": format!("User {i}")}, "total": {"N": "1.50"}}));
        items.push(json!({
            "pk": {"S": format!("USER#{i}")}, "sk": {"S": format!("ORDER#{i}")},
            "entityType": {"S": "Order"}, "status": {"S": "shipped"},
            "total": {"S": "EUR 12.00"}, "lines": {"L": [{"N": "1"}, {"N": "2"}]}}));
        items.push(json!({
            "pk": {"S": format!("INV#{i}")}, "sk": {"S": "INVOICE"},
            "entityType": {"S": "Invoice"}, "status": {"M": {"code": {"S": "paid"}}},
            "total": {"M": {"amount": {"N": "12.00"}, "currency": {"S": "EUR"}}}}));
        items.push(json!({
            "pk": {"S": format!("AUDIT#{i}")}, "sk": {"S": "LOG"},
            "entityType": {"S": "Audit"}, "status": {"BOOL": true}}));
    }
    items
}

const ROUTES: &str = r#"[
    {"when":{"attribute":"pk","prefix":"AUDIT#"},"index":null},
    {"when":{"attribute":"entityType","equals":"User"},"index":"ROUTE-users"},
    {"when":{"attribute":"entityType","equals":"Order"},"index":"ROUTE-orders"},
    {"when":{"attribute":"entityType","in":["Invoice","CreditNote"]},"index":"ROUTE-invoices"}
]"#;

/// `ROUTES` with this test's index prefix.
fn routes(prefix: &str) -> String {
    ROUTES.replace("ROUTE", prefix)
}

/// An indexer routed by [`ROUTES`] to indexes under a fresh prefix (`<prefix>-orders`, ...),
/// the rest to `<prefix>-rest`; and the prefix.
async fn routed(name: &str) -> (Indexer, String) {
    let prefix = unique_index(name);
    let routed = indexer(
        &opensearch_url(),
        &format!("{prefix}-rest"),
        &[("ROUTES", routes(&prefix).as_str())],
    )
    .await;
    (routed, prefix)
}

/// The id and canonical document of an item, as the function writes it.
fn expected(item: &Value) -> (String, String) {
    let keys = json!({"pk": item["pk"], "sk": item["sk"]});
    let id = docid::doc_id(&keys.to_string()).unwrap().id;
    let mut doc = Vec::new();
    convert::write_document(&item.to_string(), &mut doc).unwrap();
    (
        id,
        verify::canonical(std::str::from_utf8(&doc).unwrap()).unwrap(),
    )
}

/// Every document of `index`, canonical, by id (an index never written to is empty).
async fn index_contents(indexer: &Indexer, index: &str) -> BTreeMap<String, String> {
    let _ = http()
        .post(format!("{}/{index}/_refresh", opensearch_url()))
        .send()
        .await;
    verify::documents(&indexer.opensearch, index)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|(id, text)| (id, verify::canonical(&text).unwrap()))
        .collect()
}

fn slice(items: &[Value], entity: &str) -> BTreeMap<String, String> {
    items
        .iter()
        .filter(|i| i["entityType"]["S"] == entity)
        .map(expected)
        .collect()
}

#[tokio::test]
async fn a_single_table_design_conflicts_in_one_index_and_lands_exactly_when_routed() {
    let items = single_table_items();
    let records: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(n, i)| record("Shop", n as u64, "INSERT", Some(i), None, i))
        .collect();

    // One index, dynamic mapping: the types that come second are refused and quarantined.
    let one = unique_index("st-one");
    let quarantine = format!("{one}-quarantine");
    let plain = indexer(
        &opensearch_url(),
        &one,
        &[("QUARANTINE_INDEX", quarantine.as_str())],
    )
    .await;
    let handled = plain
        .handle_detailed(&batch(&records), far_deadline())
        .await
        .unwrap();
    assert!(
        handled.summary.quarantined >= 8,
        "conflicting entity types are refused: {:?}",
        handled.summary
    );

    // Routed: nothing quarantined, audit items skipped, each index its entity slice exactly.
    let prefix = unique_index("st");
    let routed = indexer(
        &opensearch_url(),
        &format!("{prefix}-rest"),
        &[
            ("ROUTES", routes(&prefix).as_str()),
            ("QUARANTINE_INDEX", format!("{prefix}-quarantine").as_str()),
        ],
    )
    .await;
    let handled = routed
        .handle_detailed(&batch(&records), far_deadline())
        .await
        .unwrap();
    let s = &handled.summary;
    assert_eq!(
        (
            s.indexed,
            s.skipped,
            s.quarantined,
            s.retryable + s.permanent
        ),
        (24, 8, 0, 0),
        "{s:?}"
    );
    for (entity, index) in [
        ("User", "users"),
        ("Order", "orders"),
        ("Invoice", "invoices"),
    ] {
        let got = index_contents(&routed, &format!("{prefix}-{index}")).await;
        assert_eq!(
            got,
            slice(&items, entity),
            "{index} equals the {entity} slice"
        );
    }
    assert!(
        index_contents(&routed, &format!("{prefix}-rest"))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn an_item_that_changes_type_moves_and_removes_find_their_index() {
    let (routed, prefix) = routed("mv").await;
    let orders = format!("{prefix}-orders");
    let invoices = format!("{prefix}-invoices");
    let rest = format!("{prefix}-rest");
    let v1 = json!({"pk": {"S": "DOC#1"}, "sk": {"S": "A"}, "entityType": {"S": "Order"}, "n": {"N": "1"}});
    let v2 = json!({"pk": {"S": "DOC#1"}, "sk": {"S": "A"}, "entityType": {"S": "Invoice"}, "n": {"N": "2"}});
    let v3 = json!({"pk": {"S": "DOC#1"}, "sk": {"S": "A"}, "entityType": {"S": "Memo"}, "n": {"N": "3"}});
    let (id, _) = expected(&v1);

    // Order → Invoice in a later invocation: written to invoices, deleted from orders.
    let h = routed
        .handle_detailed(
            &batch(&[record("Shop", 1, "INSERT", Some(&v1), None, &v1)]),
            far_deadline(),
        )
        .await
        .unwrap();
    assert_eq!(h.summary.indexed, 1);
    assert!(index_contents(&routed, &orders).await.contains_key(&id));
    let moved = record("Shop", 2, "MODIFY", Some(&v2), Some(&v1), &v2);
    let h = routed
        .handle_detailed(&batch(&[moved]), far_deadline())
        .await
        .unwrap();
    assert!(
        h.response.batch_item_failures.is_empty(),
        "{:?}",
        h.outcomes
    );
    assert!(
        !index_contents(&routed, &orders).await.contains_key(&id),
        "gone from orders"
    );
    assert_eq!(
        index_contents(&routed, &invoices).await.get(&id),
        Some(&expected(&v2).1)
    );

    // Re-delivering the old INSERT changes nothing: its version is older in both indexes.
    let h = routed
        .handle_detailed(
            &batch(&[record("Shop", 1, "INSERT", Some(&v1), None, &v1)]),
            far_deadline(),
        )
        .await
        .unwrap();
    assert_eq!(
        h.outcomes,
        vec![RecordOutcome::Superseded],
        "{:?}",
        h.summary
    );
    assert!(!index_contents(&routed, &orders).await.contains_key(&id));

    // Invoice → Memo (no rule: the default index) and back to Order, in one batch.
    let to_memo = record("Shop", 3, "MODIFY", Some(&v3), Some(&v2), &v3);
    let v4 = json!({"pk": {"S": "DOC#1"}, "sk": {"S": "A"}, "entityType": {"S": "Order"}, "n": {"N": "4"}});
    let to_order = record("Shop", 4, "MODIFY", Some(&v4), Some(&v3), &v4);
    let h = routed
        .handle_detailed(&batch(&[to_memo, to_order]), far_deadline())
        .await
        .unwrap();
    assert!(
        h.response.batch_item_failures.is_empty(),
        "{:?}",
        h.outcomes
    );
    assert!(!index_contents(&routed, &invoices).await.contains_key(&id));
    assert!(!index_contents(&routed, &rest).await.contains_key(&id));
    assert_eq!(
        index_contents(&routed, &orders).await.get(&id),
        Some(&expected(&v4).1)
    );

    // A REMOVE with its OldImage deletes from the index its item is in.
    let h = routed
        .handle_detailed(
            &batch(&[record("Shop", 5, "REMOVE", None, Some(&v4), &v4)]),
            far_deadline(),
        )
        .await
        .unwrap();
    assert_eq!(h.summary.deleted, 1, "{:?}", h.outcomes);
    assert!(index_contents(&routed, &orders).await.is_empty());

    // Without an OldImage (a NEW_IMAGE stream) the index cannot be known: deleted from each.
    let v6 = json!({"pk": {"S": "DOC#2"}, "sk": {"S": "A"}, "entityType": {"S": "Invoice"}});
    let (id6, _) = expected(&v6);
    routed
        .handle_detailed(
            &batch(&[record("Shop", 6, "INSERT", Some(&v6), None, &v6)]),
            far_deadline(),
        )
        .await
        .unwrap();
    assert!(index_contents(&routed, &invoices).await.contains_key(&id6));
    let h = routed
        .handle_detailed(
            &batch(&[record("Shop", 7, "REMOVE", None, None, &v6)]),
            far_deadline(),
        )
        .await
        .unwrap();
    assert!(
        h.response.batch_item_failures.is_empty(),
        "{:?}",
        h.outcomes
    );
    assert!(!index_contents(&routed, &invoices).await.contains_key(&id6));
}

/// A record can make several changes (a move: the write and the delete from where the item
/// was; a REMOVE of unknown index: a delete from each). Every one of them is its own item's:
/// two items moving in one batch, or removed from unknown indexes in one batch, do not take
/// each other's place when the batch keeps the last change per document.
#[tokio::test]
async fn items_that_move_or_go_together_in_one_batch_each_keep_their_changes() {
    let (routed, prefix) = routed("together").await;
    let orders = format!("{prefix}-orders");
    let invoices = format!("{prefix}-invoices");
    let item = |pk: &str, entity: &str, n: u32| json!({"pk": {"S": pk}, "sk": {"S": "A"}, "entityType": {"S": entity}, "n": {"N": n.to_string()}});
    let (a1, b1) = (item("DOC#A", "Order", 1), item("DOC#B", "Order", 1));
    let (a2, b2) = (item("DOC#A", "Invoice", 2), item("DOC#B", "Invoice", 2));
    let inserts = [
        record("Shop", 1, "INSERT", Some(&a1), None, &a1),
        record("Shop", 2, "INSERT", Some(&b1), None, &b1),
    ];
    let h = routed
        .handle_detailed(&batch(&inserts), far_deadline())
        .await
        .unwrap();
    assert_eq!(h.summary.indexed, 2, "{:?}", h.outcomes);

    let moves = [
        record("Shop", 3, "MODIFY", Some(&a2), Some(&a1), &a2),
        record("Shop", 4, "MODIFY", Some(&b2), Some(&b1), &b2),
    ];
    let h = routed
        .handle_detailed(&batch(&moves), far_deadline())
        .await
        .unwrap();
    assert_eq!(h.summary.indexed, 2, "{:?}", h.outcomes);
    assert!(index_contents(&routed, &orders).await.is_empty());
    let both: BTreeMap<String, String> = [expected(&a2), expected(&b2)].into_iter().collect();
    assert_eq!(index_contents(&routed, &invoices).await, both);

    // No OldImage: each REMOVE deletes its item from every index the rules name.
    let removes = [
        record("Shop", 5, "REMOVE", None, None, &a2),
        record("Shop", 6, "REMOVE", None, None, &b2),
    ];
    let h = routed
        .handle_detailed(&batch(&removes), far_deadline())
        .await
        .unwrap();
    assert_eq!(h.summary.deleted, 2, "{:?}", h.outcomes);
    assert!(index_contents(&routed, &invoices).await.is_empty());
}

/// Rules that read key attributes only route a REMOVE from its Keys, with no OldImage: the
/// delete goes to that one index, not to every index the rules name.
#[tokio::test]
async fn a_remove_without_old_image_routed_by_key_deletes_from_its_index_only() {
    let prefix = unique_index("kr");
    let (users, orders) = (format!("{prefix}-users"), format!("{prefix}-orders"));
    let rules = json!([
        {"when": {"attribute": "pk", "prefix": "USER#"}, "index": users},
        {"when": {"attribute": "sk", "equals": "ORDER"}, "index": orders},
    ])
    .to_string();
    let routed = indexer(
        &opensearch_url(),
        "",
        &[("OPENSEARCH_INDEX", ""), ("ROUTES", &rules)],
    )
    .await;
    let user = json!({"pk": {"S": "USER#1"}, "sk": {"S": "ORDER"}, "n": {"N": "1"}});
    let (id, _) = expected(&user);
    let h = routed
        .handle_detailed(
            &batch(&[record("Shop", 1, "INSERT", Some(&user), None, &user)]),
            far_deadline(),
        )
        .await
        .unwrap();
    assert_eq!(h.summary.indexed, 1, "{:?}", h.outcomes);
    // A document under the same id in the other index, which no change of this item can reach
    // (its key never changes): a key-routed REMOVE must leave it alone.
    create_index(&orders).await;
    let res = http()
        .put(format!(
            "{}/{orders}/_doc/{}",
            opensearch_url(),
            urlencode(&id)
        ))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let keys_only = record("Shop", 2, "REMOVE", None, None, &user);
    let h = routed
        .handle_detailed(&batch(&[keys_only]), far_deadline())
        .await
        .unwrap();
    assert_eq!(
        (h.summary.deleted, h.summary.bulk_requests),
        (1, 1),
        "{:?}",
        h.summary
    );
    assert!(!index_contents(&routed, &users).await.contains_key(&id));
    assert!(index_contents(&routed, &orders).await.contains_key(&id));
}

#[tokio::test]
async fn two_tables_streams_through_one_function_land_in_two_indexes() {
    let prefix = unique_index("tb");
    let routed = indexer(&opensearch_url(), &format!("{prefix}-{{table}}"), &[]).await;
    let a = json!({"pk": {"S": "x"}, "sk": {"S": "1"}, "v": {"S": "from alpha"}});
    let b = json!({"pk": {"S": "x"}, "sk": {"S": "1"}, "v": {"N": "2"}});
    let h = routed
        .handle_detailed(
            &batch(&[
                record("Alpha", 1, "INSERT", Some(&a), None, &a),
                record("Beta", 2, "INSERT", Some(&b), None, &b),
            ]),
            far_deadline(),
        )
        .await
        .unwrap();
    assert_eq!(h.summary.indexed, 2, "same key, two tables: two documents");
    let (id, doc_a) = expected(&a);
    let (_, doc_b) = expected(&b);
    assert_eq!(
        index_contents(&routed, &format!("{prefix}-alpha")).await,
        BTreeMap::from([(id.clone(), doc_a)])
    );
    assert_eq!(
        index_contents(&routed, &format!("{prefix}-beta")).await,
        BTreeMap::from([(id, doc_b)])
    );
    // A record that names no table cannot be routed to `{table}`: refused with the reason.
    let mut no_arn = record("Alpha", 3, "INSERT", Some(&a), None, &a);
    no_arn.as_object_mut().unwrap().remove("eventSourceARN");
    let h = routed
        .handle_detailed(&batch(&[no_arn]), far_deadline())
        .await
        .unwrap();
    match &h.outcomes[0] {
        RecordOutcome::Reported(reason) => assert!(reason.contains("{table}"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

/// The backfill's records name their table like stream records do, so `{table}` and the rules
/// route them the same way.
#[test]
fn backfill_records_route_like_stream_records() {
    use aws_sdk_dynamodb::types::AttributeValue as A;
    use stream_indexer::pipeline::plan;
    use stream_indexer::pipeline::routing::Router;
    use stream_indexer::pipeline::version::VersionSource;
    let items = vec![
        std::collections::HashMap::from([
            ("pk".to_string(), A::S("USER#1".into())),
            ("sk".to_string(), A::S("P".into())),
            ("entityType".to_string(), A::S("User".into())),
        ]),
        std::collections::HashMap::from([
            ("pk".to_string(), A::S("AUDIT#1".into())),
            ("sk".to_string(), A::S("L".into())),
        ]),
    ];
    let payload = stream_indexer::tools::read_time::synthetic_batch(
        "Shop",
        &["pk".to_string(), "sk".to_string()],
        &items,
        1_700_000_000,
    );
    // The index of each planned change under a router.
    let indexes = |router: &Router| -> Vec<String> {
        let plan = plan::plan(
            &payload,
            &VersionSource::Fixed(1),
            &plan::Shape {
                router,
                projection: &Default::default(),
                metadata: &Default::default(),
            },
            1 << 20,
        )
        .unwrap();
        plan.changes.iter().map(|c| c.index.to_string()).collect()
    };
    let routed = Router::parse(Some("rest-{table}"), Some(&routes("r"))).unwrap();
    assert_eq!(indexes(&routed), ["r-users"], "the audit item is skipped");
    let per_table = Router::parse(Some("rest-{table}"), None).unwrap();
    assert_eq!(indexes(&per_table), ["rest-shop", "rest-shop"]);
}

/// Projection: excluded attributes are absent at every depth they are named at, key
/// attributes stay whatever the list says, and an include list keeps only what it names.
#[tokio::test]
async fn excluded_attributes_never_reach_the_index_and_included_ones_alone_do() {
    let item = json!({
        "pk": {"S": "USER#1"}, "sk": {"S": "PROFILE"},
        "email": {"S": "a@example.com"}, "name": {"S": "Ada"},
        "profile": {"M": {
            "ssn": {"S": "078-05-1120"}, "city": {"S": "Zürich"},
            "inner": {"M": {"email": {"S": "kept: only the top-level path is excluded"}}}}},
        "cards": {"L": [{"M": {"ssn": {"S": "in a list: kept whole"}}}]}
    });
    let prefix = unique_index("proj");
    let excluding = indexer(
        &opensearch_url(),
        &format!("{prefix}-ex"),
        &[("EXCLUDE_ATTRIBUTES", "email, profile.ssn, pk")],
    )
    .await;
    let payload = batch(&[record("Shop", 1, "INSERT", Some(&item), None, &item)]);
    let h = excluding
        .handle_detailed(&payload, far_deadline())
        .await
        .unwrap();
    assert_eq!(h.summary.indexed, 1, "{:?}", h.outcomes);
    let (id, _) = expected(&item);
    let got: Value =
        serde_json::from_str(&index_contents(&excluding, &format!("{prefix}-ex")).await[&id])
            .unwrap();
    let mut want = item.clone();
    want.as_object_mut().unwrap().remove("email");
    want["profile"]["M"].as_object_mut().unwrap().remove("ssn");
    assert_eq!(
        got,
        serde_json::from_str::<Value>(&expected(&want).1).unwrap(),
        "email and profile.ssn gone, the key kept"
    );

    let including = indexer(
        &opensearch_url(),
        &format!("{prefix}-in"),
        &[("INCLUDE_ATTRIBUTES", "name,profile.city")],
    )
    .await;
    including
        .handle_detailed(&payload, far_deadline())
        .await
        .unwrap();
    let got: Value =
        serde_json::from_str(&index_contents(&including, &format!("{prefix}-in")).await[&id])
            .unwrap();
    assert_eq!(
        got,
        json!({"pk": "USER#1", "sk": "PROFILE", "name": "Ada", "profile": {"city": "Zürich"}})
    );
}

/// Metadata fields: the change's table, event, time and sequence number in the document, and a
/// clear refusal for an item that has an attribute of the same name.
#[tokio::test]
async fn metadata_fields_describe_the_change_that_wrote_the_document() {
    let index = unique_index("meta");
    let with_meta = indexer(
        &opensearch_url(),
        &index,
        &[(
            "METADATA_FIELDS",
            "table,event_name,stream_time,sequence_number",
        )],
    )
    .await;
    let item = json!({"pk": {"S": "a"}, "sk": {"S": "1"}, "n": {"N": "1"}});
    let clash = json!({"pk": {"S": "b"}, "sk": {"S": "1"}, "ddb_table": {"S": "mine"}});
    let records = [
        record("Shop", 7, "INSERT", Some(&item), None, &item),
        record("Shop", 8, "INSERT", Some(&clash), None, &clash),
    ];
    let h = with_meta
        .handle_detailed(&batch(&records), far_deadline())
        .await
        .unwrap();
    assert_eq!(h.outcomes[0], RecordOutcome::Indexed);
    match &h.outcomes[1] {
        RecordOutcome::Reported(reason) => assert!(reason.contains("ddb_table"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let (id, _) = expected(&item);
    let got: Value = serde_json::from_str(&index_contents(&with_meta, &index).await[&id]).unwrap();
    assert_eq!(
        got,
        json!({"pk": "a", "sk": "1", "n": 1, "ddb_table": "Shop", "ddb_event_name": "INSERT",
               "ddb_stream_time": 1_700_000_007_000u64,
               "ddb_sequence_number": records[0]["dynamodb"]["SequenceNumber"]})
    );
}
