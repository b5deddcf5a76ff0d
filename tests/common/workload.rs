//! A model table and the stream records its changes produce, with the document each live item
//! must become written independently of the converter (from the same random values), and a
//! driver that delivers records to the handler the way Lambda's event source mapping does.

use std::collections::BTreeMap;

use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use stream_indexer::handler::Indexer;

/// The model: key → (DynamoDB JSON of the item, expected document text).
pub struct Table {
    pub items: BTreeMap<String, (Value, String)>,
    pub records: Vec<Value>,
    seq: u128,
    /// Changes made so far; each item carries it as `ver`, a version attribute.
    changes: u64,
    rng: StdRng,
}

impl Table {
    pub fn new(seed: u64) -> Table {
        Table {
            items: BTreeMap::new(),
            records: Vec::new(),
            seq: 4_000_000_000_000_000_000_000,
            changes: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Applies `ops` random puts and deletes over `keys` keys; `per_second` changes share each
    /// `ApproximateCreationDateTime` second.
    pub fn random_changes(&mut self, ops: usize, keys: usize, per_second: usize) {
        for op in 0..ops {
            let key = format!("k{:05}", self.rng.random_range(0..keys));
            let t = 1_763_800_000 + (op / per_second) as u64;
            if self.items.contains_key(&key) && self.rng.random_bool(0.2) {
                self.delete(&key, t);
            } else {
                self.put(&key, t);
            }
        }
    }

    pub fn put(&mut self, key: &str, t: u64) {
        let (image, doc) = self.random_item(key);
        let name = if self.items.contains_key(key) {
            "MODIFY"
        } else {
            "INSERT"
        };
        let old = self
            .items
            .insert(key.to_string(), (image.clone(), doc))
            .map(|(i, _)| i);
        self.push(name, key, Some(image), old, t);
    }

    pub fn delete(&mut self, key: &str, t: u64) {
        let old = self.items.remove(key).map(|(i, _)| i);
        self.push("REMOVE", key, None, old, t);
    }

    fn push(&mut self, name: &str, key: &str, image: Option<Value>, old: Option<Value>, t: u64) {
        self.changes += 1;
        self.seq += 1 + self.rng.random_range(0..1000u128);
        let mut ddb = json!({
            "ApproximateCreationDateTime": t,
            "Keys": {"pk": {"S": key}},
            "SequenceNumber": self.seq.to_string(),
            "SizeBytes": 100,
            "StreamViewType": "NEW_AND_OLD_IMAGES",
        });
        if let Some(image) = image {
            ddb["NewImage"] = image;
        }
        if let Some(old) = old {
            ddb["OldImage"] = old;
        }
        self.records.push(json!({
            "eventID": format!("ev{}", self.seq),
            "eventName": name,
            "eventVersion": "1.1",
            "eventSource": "aws:dynamodb",
            "awsRegion": "eu-west-1",
            "dynamodb": ddb,
            "eventSourceARN": "arn:aws:dynamodb:eu-west-1:123456789012:table/model/stream/2026-11-01T00:00:00.000",
        }));
    }

    /// A random item: DynamoDB JSON, and the document text it must become, attribute by
    /// attribute in the same order.
    fn random_item(&mut self, key: &str) -> (Value, String) {
        let r = &mut self.rng;
        let mut attrs: Vec<(&str, Value, String)> = Vec::new();
        let digits: String = (0..r.random_range(1..=38))
            .map(|i| char::from(b'0' + r.random_range(if i == 0 { 1 } else { 0 }..10)))
            .collect();
        let n = if r.random_bool(0.5) {
            format!("-{digits}")
        } else {
            digits
        };
        let n = match r.random_range(0..3) {
            0 => n,
            1 => format!("{n}E+{}", r.random_range(1..80)),
            _ => format!("0.{}", n.trim_start_matches('-')),
        };
        attrs.push(("n", json!({"N": n}), n.clone()));
        let s: String = (0..r.random_range(0..40))
            .map(|_| ['a', 'é', '"', '\\', '\n', '😀', '日', ' ', '/'][r.random_range(0..9)])
            .collect();
        attrs.push(("s", json!({"S": s}), serde_json::to_string(&s).unwrap()));
        let bytes: Vec<u8> = (0..r.random_range(1..64)).map(|_| r.random()).collect();
        let b = base64::engine::general_purpose::STANDARD.encode(bytes);
        attrs.push(("b", json!({"B": b}), format!("\"{b}\"")));
        if r.random_bool(0.5) {
            let flag = r.random_bool(0.5);
            attrs.push(("flag", json!({"BOOL": flag}), flag.to_string()));
        }
        if r.random_bool(0.5) {
            let tags: Vec<String> = (0..r.random_range(1..4)).map(|i| format!("t{i}")).collect();
            attrs.push((
                "tags",
                json!({"SS": tags}),
                serde_json::to_string(&tags).unwrap(),
            ));
        }
        if r.random_bool(0.5) {
            let a = r.random_range(0..1_000_000u32);
            attrs.push((
                "m",
                json!({"M": {"x": {"N": format!("{a}.5")}, "y": {"NULL": true}, "z": {"L": [{"S": "q"}]}}}),
                format!(r#"{{"x":{a}.5,"y":null,"z":["q"]}}"#),
            ));
        }
        let ver = self.changes + 1;
        attrs.push(("ver", json!({"N": ver.to_string()}), ver.to_string()));
        // serde_json's map keeps keys sorted, so the event's images list attributes by name and
        // the document follows that order.
        attrs.push(("pk", json!({"S": key}), format!("\"{key}\"")));
        attrs.sort_by(|a, b| a.0.cmp(b.0));
        let mut image = serde_json::Map::new();
        let mut doc = String::from("{");
        for (name, v, text) in attrs {
            image.insert(name.into(), v);
            if doc.len() > 1 {
                doc.push(',');
            }
            doc.push_str(&format!(r#""{name}":{text}"#));
        }
        doc.push('}');
        (Value::Object(image), doc)
    }
}

/// What delivering a stream did.
#[derive(Debug, Default)]
pub struct Delivery {
    pub invocations: usize,
    pub errors: usize,
    pub redelivered_records: usize,
}

/// Delivers `records` in batches of `batch_size` the way Lambda's event source mapping does
/// with `ReportBatchItemFailures`: after a partial failure it checkpoints just before the lowest
/// reported record and delivers again from there (successful records after it included); a
/// failed invocation is retried whole. Each invocation gets `timeout` to run.
pub async fn deliver_like_lambda(
    indexer: &Indexer,
    records: &[Value],
    batch_size: usize,
    timeout: std::time::Duration,
) -> Delivery {
    let mut d = Delivery::default();
    let mut position = 0;
    while position < records.len() {
        assert!(
            d.invocations < 10_000,
            "no progress after {} invocations at record {position}",
            d.invocations
        );
        let batch = &records[position..(position + batch_size).min(records.len())];
        let payload = json!({"Records": batch}).to_string();
        d.invocations += 1;
        let deadline = tokio::time::Instant::now() + timeout;
        match indexer.handle(&payload, deadline).await {
            Err(_) => d.errors += 1,
            Ok((response, summary)) => {
                let s = &summary;
                assert_eq!(
                    s.indexed
                        + s.deleted
                        + s.superseded
                        + s.quarantined
                        + s.retryable
                        + s.permanent,
                    s.records,
                    "every record accounted for: {s:?}"
                );
                let lowest = response
                    .batch_item_failures
                    .iter()
                    .map(|f| {
                        let id = f
                            .item_identifier
                            .as_deref()
                            .expect("identifier is never null");
                        batch
                            .iter()
                            .position(|r| r["dynamodb"]["SequenceNumber"] == id)
                            .expect("reported identifier is one of the batch's sequence numbers")
                    })
                    .min();
                match lowest {
                    None => position += batch.len(),
                    Some(p) => {
                        d.redelivered_records += batch.len() - p;
                        position += p;
                    }
                }
            }
        }
    }
    d
}
