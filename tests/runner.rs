//! The event-source runner against a local DynamoDB with Streams (moto): Lambda's partial
//! batch response rules, and the whole pipeline table → stream → runner → handler → index.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue as A;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stream_indexer::tools::runner::{self, Function, InProcess, Settings};
use stream_indexer::tools::verify;

fn settings(batch_size: usize) -> Settings {
    Settings {
        batch_size,
        batching_window: Duration::from_millis(200),
        trim_horizon: true,
        max_retry_attempts: Some(3),
        bisect: false,
        stop_when_idle: Some(Duration::from_millis(500)),
        retry_backoff: stream_indexer::sink::backoff::Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(20),
        },
    }
}

/// Call number and batch → the sequence numbers to report, or a function error.
type Answer = dyn Fn(usize, &[String]) -> Result<Vec<String>, String> + Send + Sync;

/// Records every batch it gets (as sequence numbers) and answers from a script.
struct Scripted {
    batches: Mutex<Vec<Vec<String>>>,
    answer: Box<Answer>,
}

impl Function for Scripted {
    async fn invoke(&self, payload: String) -> Result<DynamoDbEventResponse, String> {
        let v: serde_json::Value = serde_json::from_str(&payload).unwrap();
        let seqs: Vec<String> = v["Records"]
            .as_array()
            .unwrap()
            .iter()
            .map(sequence_number)
            .collect();
        let call = {
            let mut b = self.batches.lock().unwrap();
            b.push(seqs.clone());
            b.len() - 1
        };
        let failed = (self.answer)(call, &seqs)?;
        let mut response = DynamoDbEventResponse::default();
        for seq in failed {
            let mut f = DynamoDbBatchItemFailure::default();
            f.item_identifier = Some(seq);
            response.batch_item_failures.push(f);
        }
        Ok(response)
    }
}

async fn table_with_items(n: usize) -> (String, String) {
    let (ddb, _) = dynamo_clients().await;
    let table = unique_index("runner");
    let arn = create_table(&ddb, &table).await;
    for i in 0..n {
        ddb.put_item()
            .table_name(&table)
            .item("pk", A::S(format!("p{i:03}")))
            .item("sk", A::N("1".into()))
            .send()
            .await
            .unwrap();
    }
    (table, arn)
}

#[tokio::test]
async fn a_partial_failure_redelivers_from_the_lowest_reported_record_and_not_before() {
    let (_, arn) = table_with_items(10).await;
    let (_, streams) = dynamo_clients().await;
    // First call: report records 6 and 4 (out of order); afterwards succeed.
    let f = Scripted {
        batches: Mutex::new(Vec::new()),
        answer: Box::new(|call, seqs| {
            Ok(if call == 0 {
                vec![seqs[6].clone(), seqs[4].clone()]
            } else {
                vec![]
            })
        }),
    };
    let report = runner::run(&streams, &arn, &f, &settings(10))
        .await
        .unwrap();
    let batches = f.batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 2, "{batches:?}");
    assert_eq!(batches[0].len(), 10);
    assert_eq!(
        batches[1],
        batches[0][4..].to_vec(),
        "re-delivered from record 4, records 0..4 not again"
    );
    assert_eq!(
        (
            report.partial_failures,
            report.redelivered,
            report.completed
        ),
        (1, 6, 10)
    );
}

#[tokio::test]
async fn an_unknown_or_empty_identifier_fails_the_whole_batch() {
    let (_, arn) = table_with_items(4).await;
    let (_, streams) = dynamo_clients().await;
    let f = Scripted {
        batches: Mutex::new(Vec::new()),
        answer: Box::new(|call, _| {
            Ok(if call == 0 {
                vec!["999".into()]
            } else if call == 1 {
                vec![String::new()]
            } else {
                vec![]
            })
        }),
    };
    let report = runner::run(&streams, &arn, &f, &settings(10))
        .await
        .unwrap();
    let batches = f.batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 3);
    assert!(
        batches.iter().all(|b| b.len() == 4),
        "the same whole batch each time: {batches:?}"
    );
    assert_eq!(report.function_errors, 2);
}

#[tokio::test]
async fn function_errors_bisect_and_give_up_after_the_retry_limit() {
    let (_, arn) = table_with_items(8).await;
    let (_, streams) = dynamo_clients().await;
    // Any batch containing the record at stream position 5 fails.
    let poison: Mutex<Option<String>> = Mutex::new(None);
    let f = Scripted {
        batches: Mutex::new(Vec::new()),
        answer: Box::new(move |_, seqs| {
            let mut p = poison.lock().unwrap();
            if p.is_none() {
                *p = Some(seqs[5].clone());
            }
            if seqs.contains(p.as_ref().unwrap()) {
                Err("boom".into())
            } else {
                Ok(vec![])
            }
        }),
    };
    let mut s = settings(8);
    s.bisect = true;
    s.max_retry_attempts = Some(3);
    let report = runner::run(&streams, &arn, &f, &s).await.unwrap();
    let batches = f.batches.lock().unwrap().clone();
    // 8 fails → first 4 succeed after bisecting; then [4..8] fails, [4,5] fails, [4] ok… until the
    // batch holding only the poison record has failed 1 + 3 times and is given up.
    assert_eq!(report.gave_up, 1, "{report:?} {batches:?}");
    assert_eq!(report.completed, 7);
    assert!(report.bisections >= 2, "{report:?}");
    assert_eq!(batches.last().unwrap().len(), 2, "{batches:?}");
}

#[tokio::test]
async fn a_batch_that_keeps_failing_is_retried_with_growing_waits_and_given_up_once() {
    let (_, arn) = table_with_items(5).await;
    let (_, streams) = dynamo_clients().await;
    // Every call reports the first record of its batch: no progress, ever.
    let calls: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let seen = calls.clone();
    let f = Scripted {
        batches: Mutex::new(Vec::new()),
        answer: Box::new(move |_, seqs| {
            seen.lock().unwrap().push(Instant::now());
            Ok(vec![seqs[0].clone()])
        }),
    };
    let mut s = settings(5);
    s.max_retry_attempts = Some(2);
    s.retry_backoff = stream_indexer::sink::backoff::Backoff {
        base: Duration::from_millis(40),
        max: Duration::from_millis(60),
    };
    let report = runner::run(&streams, &arn, &f, &s).await.unwrap();
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 3, "the first delivery and two retries");
    // The waits before retries 1 and 2: 40 ms, then 80 ms capped at 60 ms.
    assert!(
        calls[1] - calls[0] >= Duration::from_millis(40),
        "{calls:?}"
    );
    assert!(
        calls[2] - calls[1] >= Duration::from_millis(60),
        "{calls:?}"
    );
    assert_eq!(
        (
            report.delivered,
            report.redelivered,
            report.gave_up,
            report.completed
        ),
        (15, 10, 5, 0),
        "records given up are not counted as delivered again: {report:?}"
    );
}

/// A random workload on the table (puts, updates, deletes, every type, items near 400 KB),
/// delivered by the runner to the handler in-process; when drained, the index equals the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_equals_the_table_after_the_stream_is_drained() {
    let (ddb, streams) = dynamo_clients().await;
    let table = unique_index("e2e");
    let arn = create_table(&ddb, &table).await;
    let index = unique_index("e2e-idx");
    create_index(&index).await;
    let mut rng = StdRng::seed_from_u64(3);
    let mut live: Vec<(String, String)> = Vec::new();
    for i in 0..400 {
        let r: f64 = rng.random();
        if r < 0.15 && !live.is_empty() {
            let (pk, sk) = live.swap_remove(rng.random_range(0..live.len()));
            ddb.delete_item()
                .table_name(&table)
                .key("pk", A::S(pk))
                .key("sk", A::N(sk))
                .send()
                .await
                .unwrap();
            continue;
        }
        let (pk, sk) = if r < 0.4 && !live.is_empty() {
            live[rng.random_range(0..live.len())].clone()
        } else {
            let k = (
                format!("item#{i}|ü"),
                format!("{}", rng.random_range(-1000..1000)),
            );
            live.push(k.clone());
            k
        };
        let mut item: HashMap<String, A> = HashMap::new();
        item.insert("pk".into(), A::S(pk));
        item.insert("sk".into(), A::N(sk));
        item.insert(
            "n".into(),
            A::N(format!(
                "{}.{}E+{}",
                rng.random_range(1..100_000_000u64),
                rng.random_range(0..1_000_000u64),
                rng.random_range(0..90)
            )),
        );
        item.insert(
            "big".into(),
            A::N("12345678901234567890123456789012345678".into()),
        );
        item.insert("s".into(), A::S(format!("héllo \"{i}\" 😀\n")));
        item.insert(
            "b".into(),
            A::B(Blob::new(
                (0..rng.random_range(1..300))
                    .map(|_| rng.random::<u8>())
                    .collect::<Vec<u8>>(),
            )),
        );
        item.insert("ok".into(), A::Bool(rng.random()));
        item.insert("none".into(), A::Null(true));
        item.insert("ss".into(), A::Ss(vec!["a".into(), format!("s{i}")]));
        item.insert("ns".into(), A::Ns(vec!["1".into(), "-2.5".into()]));
        item.insert(
            "bs".into(),
            A::Bs(vec![Blob::new(vec![0u8]), Blob::new(vec![1u8, 2])]),
        );
        item.insert(
            "m".into(),
            A::M(HashMap::from([
                ("x".to_string(), A::L(vec![A::S("q".into())])),
                ("y".to_string(), A::N("0.001".into())),
            ])),
        );
        if i % 97 == 0 {
            item.insert("blob".into(), A::S("z".repeat(380 * 1024)));
        }
        ddb.put_item()
            .table_name(&table)
            .set_item(Some(item))
            .send()
            .await
            .unwrap();
    }
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    let f = InProcess::new(&indexer, Duration::from_secs(60));
    let report = runner::run(&streams, &arn, &f, &settings(100))
        .await
        .unwrap();
    assert_eq!(report.gave_up, 0, "{report:?}");
    let c = verify::compare(&indexer, &ddb, &table).await.unwrap();
    assert!(c.equal(), "{c:?}");
    assert_eq!(c.items, live.len() as u64);
    assert!(c.items > 100, "{c:?}");
}
