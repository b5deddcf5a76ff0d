//! `verify` against the real local servers: drift injected behind the function's back (documents
//! deleted, altered and added, items changed while the stream is not delivered) is reported id
//! by id; `--repair` makes the index equal again, also while the stream is delivered beside it;
//! a sample estimates the drift rate.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue as A;
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use stream_indexer::handler::Indexer;
use stream_indexer::tools::runner::{self, InProcess, Settings};
use stream_indexer::tools::verify::{self, Drift, Options, Report};

type Item = HashMap<String, A>;

fn item(i: usize, value: &str) -> Item {
    HashMap::from([
        ("pk".to_string(), A::S(format!("p{i:05}"))),
        ("sk".to_string(), A::N(format!("{}", i % 3))),
        ("n".to_string(), A::N(format!("{i}.50"))),
        ("s".to_string(), A::S(value.to_string())),
        ("b".to_string(), A::B(Blob::new(vec![i as u8, 0, 255]))),
        (
            "tags".to_string(),
            A::Ss(vec!["x".into(), format!("t{}", i % 7)]),
        ),
    ])
}

/// The document id of `item(i, _)`.
fn id(i: usize) -> String {
    format!("p{i:05}|{}", i % 3)
}

/// Writes items into the index as the backfill would (the function's path, read-time versions).
async fn load_index(indexer: &Indexer, table: &str, items: &[Item]) {
    let keys = ["pk".to_string(), "sk".to_string()];
    for page in items.chunks(1000) {
        let (versions, secs) = stream_indexer::tools::read_time::read_versions(
            SystemTime::now(),
            Duration::from_secs(5),
            None,
        );
        let payload = stream_indexer::tools::read_time::synthetic_batch(table, &keys, page, secs);
        let h = indexer
            .handle_versioned(&payload, far_deadline(), &versions)
            .await
            .unwrap();
        assert_eq!(h.summary.indexed, page.len(), "{:?}", h.summary);
    }
}

/// A table with a stream holding `items`, and an index holding their documents.
struct Fixture {
    ddb: aws_sdk_dynamodb::Client,
    streams: aws_sdk_dynamodbstreams::Client,
    table: String,
    arn: String,
    index: String,
    indexer: Indexer,
}

async fn fixture_with(name: &str, items: &[Item]) -> Fixture {
    let (ddb, streams) = dynamo_clients().await;
    let table = unique_index(name);
    let arn = create_table(&ddb, &table).await;
    let index = unique_index(&format!("{name}-idx"));
    create_index(&index).await;
    put_items(&ddb, &table, items.to_vec()).await;
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    load_index(&indexer, &table, items).await;
    Fixture {
        ddb,
        streams,
        table,
        arn,
        index,
        indexer,
    }
}

fn ids(report: &Report, kind: Drift) -> BTreeSet<String> {
    report
        .examples
        .iter()
        .filter(|e| e.kind == kind)
        .map(|e| e.id.clone())
        .collect()
}

fn set(ids: &[String]) -> BTreeSet<String> {
    ids.iter().cloned().collect()
}

/// Runs the `verify` binary as a user would; returns its exit code, stdout and stderr.
fn verify_command(index: &str, table: &str, extra: &[&str]) -> (i32, String, String) {
    run(verify_process(index, table, extra))
}

/// The `verify` binary's command line and environment for `index` and `table`.
fn verify_process(index: &str, table: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_verify"));
    cmd.args(["--table", table, "--segments", "2", "--quiet"])
        .args(extra)
        .env("OPENSEARCH_URL", opensearch_url())
        .env("OPENSEARCH_INDEX", index)
        .env("DYNAMODB_ENDPOINT", dynamodb_url())
        .env_remove("ROUTES");
    cmd
}

fn run(mut cmd: Command) -> (i32, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn options(table: &str) -> Options {
    Options {
        segments: Some(3),
        examples: usize::MAX,
        ..Options::new(table)
    }
}

fn runner_settings() -> Settings {
    Settings {
        batch_size: 100,
        batching_window: Duration::from_millis(100),
        trim_horizon: true,
        max_retry_attempts: Some(3),
        bisect: false,
        stop_when_idle: Some(Duration::from_millis(800)),
        retry_backoff: stream_indexer::sink::backoff::Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(20),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_exactly_the_drift_injected_and_repair_makes_the_index_equal() {
    let items: Vec<Item> = (0..200).map(|i| item(i, "v")).collect();
    let Fixture {
        ddb,
        streams,
        table,
        arn,
        index,
        indexer,
    } = fixture_with("verify", &items).await;
    let clean = verify::run(&indexer, &ddb, &options(&table), &AtomicU64::new(0))
        .await
        .unwrap();
    assert!(
        clean.equal() && clean.items == 200 && clean.documents == 200,
        "{clean:?}"
    );

    // Drift behind the function's back.
    for i in [10, 11, 12] {
        delete_doc(&index, &id(i)).await;
    }
    for i in [20, 21, 22] {
        put_doc(&index, &id(i), r#"{"pk":"tampered"}"#).await;
    }
    // Table changes whose stream records are not delivered (yet).
    put_items(
        &ddb,
        &table,
        [30, 31, 32].map(|i| item(i, "changed")).to_vec(),
    )
    .await;
    for i in [40, 41] {
        ddb.delete_item()
            .table_name(&table)
            .key("pk", A::S(format!("p{i:05}")))
            .key("sk", A::N(format!("{}", i % 3)))
            .send()
            .await
            .unwrap();
    }
    // Documents no item backs: a key that is not in the table, and an id no key can give.
    put_doc(&index, "p99999|1", r#"{"pk":"p99999","sk":1}"#).await;
    put_doc(&index, "not a key", r#"{"x":1}"#).await;

    let found = verify::run(&indexer, &ddb, &options(&table), &AtomicU64::new(0))
        .await
        .unwrap();
    assert_eq!(ids(&found, Drift::Missing), set(&[id(10), id(11), id(12)]));
    assert_eq!(
        ids(&found, Drift::Different),
        set(&[id(20), id(21), id(22), id(30), id(31), id(32)])
    );
    // The id no key of this table gives is another table's, if anyone's: foreign, not extra.
    assert_eq!(
        ids(&found, Drift::Extra),
        set(&[id(40), id(41), "p99999|1".into()])
    );
    assert_eq!(found.foreign, 1, "{found:?}");

    // The command: the summary line, example ids, the exit status.
    let (code, out, err) = verify_command(&index, &table, &[]);
    assert_eq!(code, 1, "{out}{err}");
    let first = out.lines().next().unwrap();
    assert_eq!(
        first, "items 198 documents 199 missing 3 different 6 extra 3 foreign 1",
        "{out}"
    );
    assert!(
        out.contains(&format!("missing in {index}: \"{}\"", id(10))),
        "{out}"
    );
    assert!(
        !out.contains("tampered") && !out.contains("changed"),
        "ids only: {out}"
    );
    let (code, json, _) = verify_command(&index, &table, &["--json"]);
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        (
            &json["missing"],
            &json["different"],
            &json["extra"],
            &json["foreign"]
        ),
        (&3.into(), &6.into(), &3.into(), &1.into())
    );

    let (code, out, err) = verify_command(&index, &table, &["--repair"]);
    assert_eq!(code, 1, "drift was found: {out}{err}");
    assert!(
        out.contains("repaired: indexed 9 deleted 3 superseded 0 quarantined 0 failed 0"),
        "{out}"
    );
    // The foreign document is left, and is no drift of this table.
    let (code, out, err) = verify_command(&index, &table, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.lines().next().unwrap(),
        "items 198 documents 199 missing 0 different 0 extra 0 foreign 1"
    );
    let (code, out, err) = verify_command(&index, &table, &["--repair", "--delete-foreign"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("repaired: indexed 0 deleted 1"), "{out}");
    let (code, out, err) = verify_command(&index, &table, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.lines().next().unwrap(),
        "items 198 documents 198 missing 0 different 0 extra 0"
    );

    // The stream, delivered late (every insert, the changes, the deletes) cannot make the
    // repaired index older.
    let f = InProcess::new(&indexer, Duration::from_secs(60));
    let delivered = runner::run(&streams, &arn, &f, &runner_settings())
        .await
        .unwrap();
    assert_eq!(delivered.gave_up, 0, "{delivered:?}");
    let after = verify::compare(&indexer, &ddb, &table).await.unwrap();
    assert!(after.equal(), "{after:?}");

    // An error is exit status 2, and says what failed.
    let (code, _, err) = verify_command(&index, "no-such-table", &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no-such-table"), "{err}");
}

/// Keys over 512 bytes give hashed ids; the walk finds their items through the full key kept
/// beside the hash, so they are not taken for extra, until their item is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_with_hashed_ids_are_traced_to_their_items() {
    let long = |i: usize| {
        let mut it = item(i, "v");
        it.insert("pk".into(), A::S(format!("{i}|{}", "k".repeat(600))));
        it
    };
    let items: Vec<Item> = (0..3).map(long).collect();
    let Fixture {
        ddb,
        table,
        index,
        indexer,
        ..
    } = fixture_with("vlong", &items).await;
    let clean = verify::compare(&indexer, &ddb, &table).await.unwrap();
    assert!(clean.equal() && clean.documents == 3, "{clean:?}");
    assert!(
        all_sources(&index)
            .await
            .iter()
            .all(|(id, _)| id.starts_with("\\#")),
        "the ids are hashed"
    );
    ddb.delete_item()
        .table_name(&table)
        .key("pk", items[1]["pk"].clone())
        .key("sk", items[1]["sk"].clone())
        .send()
        .await
        .unwrap();
    let found = verify::compare(&indexer, &ddb, &table).await.unwrap();
    assert_eq!(
        (found.missing, found.different, found.extra),
        (0, 0, 1),
        "{found:?}"
    );
    assert!(found.examples[0].id.starts_with("\\#"), "{found:?}");
}

/// The SDK's standard `AWS_ENDPOINT_URL` is enough to reach a local server: no flag, and no
/// credentials or region configured (placeholders, as with `--endpoint-url`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standard_endpoint_variable_reaches_a_local_server_without_flags() {
    let items: Vec<Item> = (0..5).map(|i| item(i, "v")).collect();
    let Fixture { table, index, .. } = fixture_with("venv", &items).await;
    let mut cmd = verify_process(&index, &table, &[]);
    cmd.env("AWS_ENDPOINT_URL", dynamodb_url())
        .env("AWS_CONFIG_FILE", "/nonexistent/config")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for var in [
        "DYNAMODB_ENDPOINT",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    ] {
        cmd.env_remove(var);
    }
    let (code, stdout, stderr) = run(cmd);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("items 5 documents 5 missing 0 different 0 extra 0"),
        "{stdout}"
    );
}

/// A cluster that refuses the `_shard_doc` sort (it came with point-in-time search in newer
/// versions) is walked in `_id` order instead, and finds the same drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_the_shard_doc_sort_is_walked_by_id() {
    use common::proxy::{Fault, Proxy};
    let items: Vec<Item> = (0..30).map(|i| item(i, "v")).collect();
    let Fixture {
        ddb, table, index, ..
    } = fixture_with("vsort", &items).await;
    put_doc(&index, "p77777|0", "{}").await;
    let proxy = Proxy::start(&opensearch_url(), |r| {
        if String::from_utf8_lossy(&r.body).contains("_shard_doc") {
            Fault::Status(400)
        } else {
            Fault::Pass
        }
    })
    .await;
    let through = indexer(&proxy.url, &index, &[]).await;
    let opts = Options {
        page_size: 7,
        ..options(&table)
    };
    let found = verify::run(&through, &ddb, &opts, &AtomicU64::new(0))
        .await
        .unwrap();
    assert_eq!(proxy.faults.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(
        (found.documents, found.extra, found.missing),
        (31, 1, 0),
        "{found:?}"
    );
    assert_eq!(ids(&found, Drift::Extra), set(&["p77777|0".into()]));
}

/// A single-table design under ROUTES, with projection and metadata fields: equal after a
/// backfill; copies left in the wrong index (a missed move, an item routed nowhere) are extra.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_follows_routes_and_finds_copies_left_in_the_wrong_index() {
    let (ddb, _) = dynamo_clients().await;
    let table = unique_index("vroute");
    create_table(&ddb, &table).await;
    let prefix = unique_index("vr");
    let (users, orders) = (format!("{prefix}-users"), format!("{prefix}-orders"));
    let routes = serde_json::json!([
        {"when": {"attribute": "pk", "prefix": "USER#"}, "index": users},
        {"when": {"attribute": "pk", "prefix": "ORDER#"}, "index": orders},
        {"when": {"attribute": "pk", "prefix": "AUDIT#"}, "index": null},
    ])
    .to_string();
    for i in [&users, &orders] {
        create_index(i).await;
    }
    let mut items = Vec::new();
    for i in 0..20usize {
        let (pk, status) = match i % 3 {
            0 => (format!("USER#{i}"), A::N(format!("{i}"))),
            1 => (format!("ORDER#{i}"), A::S("shipped".into())),
            _ => (format!("AUDIT#{i}"), A::Bool(true)),
        };
        items.push(HashMap::from([
            ("pk".to_string(), A::S(pk)),
            ("sk".to_string(), A::N("1".into())),
            ("status".to_string(), status),
            ("secret".to_string(), A::S("hidden".into())),
        ]));
    }
    put_items(&ddb, &table, items.clone()).await;
    let indexer = indexer(
        &opensearch_url(),
        "",
        &[
            ("OPENSEARCH_INDEX", ""),
            ("ROUTES", &routes),
            ("EXCLUDE_ATTRIBUTES", "secret"),
            ("METADATA_FIELDS", "table,stream_time,sequence_number"),
        ],
    )
    .await;
    let keys = ["pk".to_string(), "sk".to_string()];
    let payload =
        stream_indexer::tools::read_time::synthetic_batch(&table, &keys, &items, 1_700_000_000);
    indexer
        .handle_versioned(
            &payload,
            far_deadline(),
            &stream_indexer::pipeline::version::VersionSource::Fixed(1),
        )
        .await
        .unwrap();
    let clean = verify::compare(&indexer, &ddb, &table).await.unwrap();
    assert!(clean.equal(), "{clean:?}");
    assert_eq!((clean.items, clean.skipped, clean.documents), (20, 6, 14));

    // A user left in the orders index (a move whose delete was lost), an audit item indexed.
    put_doc(&orders, "USER#0|1", r#"{"pk":"USER#0","sk":1,"status":0}"#).await;
    put_doc(&users, "AUDIT#2|1", r#"{"pk":"AUDIT#2","sk":1}"#).await;
    // And a projected attribute that leaked into a document.
    put_doc(
        &users,
        "USER#3|1",
        r#"{"pk":"USER#3","sk":1,"status":3,"secret":"hidden"}"#,
    )
    .await;
    let found = verify::compare(&indexer, &ddb, &table).await.unwrap();
    assert_eq!(
        found
            .examples
            .iter()
            .map(|e| (e.kind, e.index.as_str(), e.id.as_str()))
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([
            (Drift::Extra, orders.as_str(), "USER#0|1"),
            (Drift::Extra, users.as_str(), "AUDIT#2|1"),
            (Drift::Different, users.as_str(), "USER#3|1"),
        ]),
        "{found:?}"
    );
    let opts = Options {
        repair: true,
        ..options(&table)
    };
    let repaired = verify::run(&indexer, &ddb, &opts, &AtomicU64::new(0))
        .await
        .unwrap();
    let r = repaired.repair.unwrap();
    assert_eq!((r.indexed, r.deleted, r.failed), (1, 2, 0), "{r:?}");
    let after = verify::compare(&indexer, &ddb, &table).await.unwrap();
    assert!(after.equal(), "{after:?}");
    assert_eq!(source_text(&orders, "USER#0|1").await, None);
}

/// Repairs while a writer changes the table and the stream is delivered concurrently: the
/// index ends equal to the table, whatever order the repairs and the stream's writes land in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_beside_a_live_stream_converges_to_the_table() {
    let items: Vec<Item> = (0..150).map(|i| item(i, "v")).collect();
    let Fixture {
        ddb,
        streams,
        table,
        arn,
        index,
        indexer,
    } = fixture_with("vlive", &items).await;
    for i in 0..5 {
        delete_doc(&index, &id(i)).await;
    }
    for i in 0..3 {
        put_doc(&index, &format!("ghost{i}|1"), "{}").await;
    }

    let writer = {
        let (ddb, table) = (ddb.clone(), table.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(7);
            for n in 0..150 {
                let i = rng.random_range(0..200);
                if rng.random_bool(0.25) {
                    ddb.delete_item()
                        .table_name(&table)
                        .key("pk", A::S(format!("p{i:05}")))
                        .key("sk", A::N(format!("{}", i % 3)))
                        .send()
                        .await
                        .unwrap();
                } else {
                    ddb.put_item()
                        .table_name(&table)
                        .set_item(Some(item(i, &format!("w{n}"))))
                        .send()
                        .await
                        .unwrap();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let f = InProcess::new(&indexer, Duration::from_secs(60));
    let settings = runner_settings();
    let opts = Options {
        repair: true,
        ..options(&table)
    };
    let repairs = async {
        let mut done = Vec::new();
        for _ in 0..3 {
            let r = verify::run(&indexer, &ddb, &opts, &AtomicU64::new(0))
                .await
                .unwrap();
            done.push(r.repair.unwrap());
        }
        done
    };
    let (delivered, repairs) = tokio::join!(runner::run(&streams, &arn, &f, &settings), repairs);
    writer.await.unwrap();
    let delivered = delivered.unwrap();
    assert_eq!(delivered.gave_up, 0, "{delivered:?}");
    // The three foreign documents are not in the stream: only a repair deletes them. The five
    // missing ones may be re-indexed by either side (the runner delivers the stream from its
    // start, INSERTs included), so how many the repairs count depends on who came first; the
    // comparison below is what must hold.
    let deleted: u64 = repairs.iter().map(|r| r.deleted).sum();
    assert!(deleted >= 3, "{repairs:?}");
    assert!(repairs.iter().all(|r| r.failed == 0), "{repairs:?}");
    // Had the runner stopped in a pause of the writer, a second pass delivers the rest (again
    // from the stream's start: versions make the repeats harmless).
    let again = runner::run(&streams, &arn, &f, &settings).await.unwrap();
    assert_eq!(again.gave_up, 0, "{again:?}");
    let after = verify::compare(&indexer, &ddb, &table).await.unwrap();
    assert!(after.equal(), "{after:?}\nrepairs: {repairs:?}");
}

/// A 1% drift (half of it missing or altered documents, half extra documents) on 10,000 items,
/// estimated from a 20% sample within a factor of two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sample_estimates_the_drift_rate_within_a_factor_of_two() {
    let items: Vec<Item> = (0..10_000).map(|i| item(i, "v")).collect();
    let Fixture {
        ddb,
        table,
        index,
        indexer,
        ..
    } = fixture_with("vsample", &items).await;
    for i in (0..10_000).step_by(100) {
        if i % 200 == 0 {
            delete_doc(&index, &id(i)).await;
        } else {
            put_doc(&index, &id(i), r#"{"pk":"tampered"}"#).await;
        }
        put_doc(&index, &format!("ghost{i}|1"), "{}").await;
    }
    let opts = Options {
        segments: Some(4),
        sample: Some(0.2),
        seed: 1,
        examples: 10,
        ..Options::new(&table)
    };
    let r = verify::run(&indexer, &ddb, &opts, &AtomicU64::new(0))
        .await
        .unwrap();
    let s = r.sample.clone().unwrap();
    assert_eq!((s.segments_checked, s.total_segments), (4, 20));
    assert!(
        (1000..=3000).contains(&r.items),
        "about 20% of the items: {r:?}"
    );
    assert_eq!(r.documents, 2010, "20% of the 10,050 documents");
    for rate in [s.table_drift_rate, s.index_drift_rate] {
        assert!(
            (0.005..=0.02).contains(&rate),
            "1% estimated as {rate}: {r:?}"
        );
    }
}
