//! The guarantee as a property, checked from the server's side: for any batch mixing valid
//! records, invalid records and changes of the same keys, every record ends as exactly one of
//! indexed (its document equals its image), deleted, superseded by a later change of its key,
//! quarantined (an entry holds its whole record), or listed in `batchItemFailures`.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use proptest::prelude::*;
use serde_json::{Value, json};

/// What one generated record is.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// INSERT or MODIFY with a valid image.
    Put,
    Remove,
    /// A number DynamoDB cannot hold: refused while planning.
    BadNumber,
    /// Keys name another item than the image: refused while planning.
    KeyMismatch,
    /// MODIFY without NewImage: refused while planning.
    NoImage,
    /// `n` as a string in an index mapping it as a number: refused by the cluster.
    MappingConflict,
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        5 => Just(Kind::Put),
        2 => Just(Kind::Remove),
        1 => Just(Kind::BadNumber),
        1 => Just(Kind::KeyMismatch),
        1 => Just(Kind::NoImage),
        1 => Just(Kind::MappingConflict),
    ]
}

/// Records the plan accepts (the cluster may still refuse a mapping conflict).
fn plannable(k: Kind) -> bool {
    matches!(k, Kind::Put | Kind::Remove | Kind::MappingConflict)
}

fn record(position: usize, key: u8, kind: Kind, time: u64, value: u32) -> Value {
    let pk = format!("k{key}");
    let image = match kind {
        Kind::Put => Some(
            json!({"pk": {"S": pk}, "n": {"N": format!("{value}.50")}, "s": {"S": format!("v{value} \"q\" é")}}),
        ),
        Kind::BadNumber => Some(json!({"pk": {"S": pk}, "n": {"N": "1e400"}})),
        Kind::KeyMismatch => Some(json!({"pk": {"S": "someone-else"}, "n": {"N": "1"}})),
        Kind::MappingConflict => Some(json!({"pk": {"S": pk}, "n": {"S": "not a number"}})),
        Kind::Remove | Kind::NoImage => None,
    };
    let name = match kind {
        Kind::Remove => "REMOVE",
        _ => "MODIFY",
    };
    let mut dynamodb = json!({
        "ApproximateCreationDateTime": time,
        "Keys": {"pk": {"S": pk}},
        "SequenceNumber": format!("{}", 500_000_000_000_000_000_000u128 + position as u128),
        "StreamViewType": "NEW_IMAGE",
    });
    if let Some(image) = image {
        dynamodb["NewImage"] = image;
    }
    json!({"eventID": format!("e{position}"), "eventName": name, "dynamodb": dynamodb})
}

async fn check(spec: Vec<(u8, Kind, u8, u32)>, quarantine_on: bool) {
    let index = unique_index("prop");
    let res = http()
        .put(format!("{}/{index}", opensearch_url()))
        .json(&json!({"mappings": {"properties": {
            "pk": {"type": "keyword"}, "n": {"type": "double"}, "s": {"type": "text"}}}}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    let quarantine = format!("{index}-quarantine");
    let mut time = 1_763_800_000u64;
    let records: Vec<Value> = spec
        .iter()
        .enumerate()
        .map(|(p, &(key, kind, step, value))| {
            time += u64::from(step);
            record(p, key, kind, time, value)
        })
        .collect();
    let extra: Vec<(&str, &str)> = if quarantine_on {
        vec![("QUARANTINE_INDEX", quarantine.as_str())]
    } else {
        vec![]
    };
    let indexer = indexer(&opensearch_url(), &index, &extra).await;
    let payload = json!({ "Records": records }).to_string();
    let (response, _) = indexer.handle(&payload, far_deadline()).await.unwrap();

    // What the server holds.
    let reported: BTreeSet<String> = failures(&response).into_iter().collect();
    let docs: BTreeMap<String, String> = all_sources(&index).await.into_iter().collect();
    // The quarantine index exists only once something was quarantined.
    let quarantine_exists = http()
        .get(format!("{}/{quarantine}", opensearch_url()))
        .send()
        .await
        .unwrap()
        .status()
        .is_success();
    let kept: Vec<Value> = if quarantine_on && quarantine_exists {
        all_sources(&quarantine)
            .await
            .into_iter()
            .map(|(_, e)| {
                let e: Value = serde_json::from_str(&e).unwrap();
                serde_json::from_str(e["record"].as_str().unwrap()).unwrap()
            })
            .collect()
    } else {
        Vec::new()
    };

    // The last plannable record of each key is the one whose effect the index must show.
    let mut winner: BTreeMap<u8, usize> = BTreeMap::new();
    for (p, &(key, kind, _, _)) in spec.iter().enumerate() {
        if plannable(kind) {
            winner.insert(key, p);
        }
    }
    let context = || {
        format!(
            "records {spec:?}\nreported {reported:?}\ndocs {docs:?}\nkept {} entries",
            kept.len()
        )
    };
    for (p, r) in records.iter().enumerate() {
        let (key, kind, _, _) = spec[p];
        let id = format!("k{key}");
        if reported.contains(&sequence_number(r)) {
            continue; // Lambda delivers it again.
        }
        if kept.contains(r) {
            continue; // quarantined with its whole record
        }
        assert!(
            plannable(kind),
            "record {p} ({kind:?}) is neither reported nor quarantined\n{}",
            context()
        );
        if winner[&key] != p {
            continue; // superseded by a later change of its key, checked as that change
        }
        match kind {
            Kind::Put => {
                let image = serde_json::to_string(&r["dynamodb"]["NewImage"]).unwrap();
                let mut expected = Vec::new();
                stream_indexer::pipeline::convert::write_document(&image, &mut expected).unwrap();
                assert_eq!(
                    docs.get(&id).map(String::as_bytes),
                    Some(expected.as_slice()),
                    "record {p} must be indexed exactly\n{}",
                    context()
                );
            }
            Kind::Remove => assert!(
                !docs.contains_key(&id),
                "record {p} must have deleted {id}\n{}",
                context()
            ),
            _ => panic!(
                "record {p} ({kind:?}) was accepted by the index\n{}",
                context()
            ),
        }
    }
    // And nothing else: every document is the image of its key's winning record.
    for id in docs.keys() {
        let key: u8 = id[1..].parse().unwrap();
        assert!(
            winner
                .get(&key)
                .is_some_and(|&p| matches!(spec[p].1, Kind::Put)),
            "document {id} has no winning record\n{}",
            context()
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_record_ends_indexed_deleted_superseded_quarantined_or_reported(
        spec in prop::collection::vec((0u8..5, kind(), 0u8..2, 0u32..1000), 1..30),
        quarantine_on in any::<bool>(),
    ) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(check(spec, quarantine_on));
    }
}
