//! The backfill against a local DynamoDB (moto) and the local OpenSearch-compatible server.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue as A;
use common::*;
use stream_indexer::sink::template::IndexTemplate;
use stream_indexer::tools::backfill::{self, Checkpoint, Options};
use stream_indexer::tools::runner::{self, InProcess};
use stream_indexer::tools::{rebuild, verify};

fn options(table: &str, checkpoint: &std::path::Path) -> Options {
    Options {
        table: table.into(),
        segments: Some(4),
        page_size: 200,
        max_items_per_second: None,
        max_read_units_per_second: None,
        clock_skew: Duration::from_secs(5),
        gc_deletes: Some("1h".into()),
        checkpoint: checkpoint.into(),
        resume: false,
        dry_run: false,
        page_timeout: Duration::from_secs(120),
    }
}

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}-{name}", unique_index("ckpt")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_of_every_type_lands_exactly() {
    let (ddb, _) = dynamo_clients().await;
    let table = unique_index("bf");
    create_table(&ddb, &table).await;
    populate(&ddb, &table, 3000).await;
    let index = unique_index("bf-idx");
    create_index(&index).await;
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    let ckpt = temp_path("all.json");

    let dry = backfill::run(
        &indexer,
        &ddb,
        &Options {
            dry_run: true,
            ..options(&table, &ckpt)
        },
        &AtomicBool::new(false),
        &AtomicU64::new(0),
    )
    .await
    .unwrap();
    assert_eq!((dry.scanned, dry.indexed, dry.failed), (3000, 3000, 0));
    assert!(
        verify::documents(&indexer.opensearch, &index)
            .await
            .unwrap()
            .is_empty(),
        "a dry run writes nothing"
    );

    let s = backfill::run(
        &indexer,
        &ddb,
        &options(&table, &ckpt),
        &AtomicBool::new(false),
        &AtomicU64::new(0),
    )
    .await
    .unwrap();
    assert_eq!(
        (s.scanned, s.indexed, s.unaccounted(), s.failed),
        (3000, 3000, 0, 0),
        "{s:?}"
    );
    let c = verify::compare(&indexer, &ddb, &table).await.unwrap();
    assert!(c.equal() && c.items == 3000, "{c:?}");
    let checkpoint = Checkpoint::load(&ckpt).unwrap();
    assert!(checkpoint.segments.iter().all(|s| s.done));
    assert_eq!(
        checkpoint.segments.iter().map(|s| s.scanned).sum::<u64>(),
        3000
    );
    // gc_deletes is back to the default.
    let settings = index_settings(&index).await;
    assert!(!settings.contains("gc_deletes"), "{settings}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_midway_resumes_from_its_checkpoint() {
    let (ddb, _) = dynamo_clients().await;
    let table = unique_index("bfkill");
    create_table(&ddb, &table).await;
    populate(&ddb, &table, 2000).await;
    let index = unique_index("bfkill-idx");
    create_index(&index).await;
    let ckpt = temp_path("kill.json");
    let run = |resume: bool| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_backfill"));
        cmd.args([
            "--table",
            &table,
            "--segments",
            "2",
            "--page-size",
            "100",
            "--max-items-per-second",
            "400",
            "--quiet",
        ])
        .arg("--checkpoint")
        .arg(&ckpt)
        .env("OPENSEARCH_URL", opensearch_url())
        .env("OPENSEARCH_INDEX", &index)
        .env("DYNAMODB_ENDPOINT", dynamodb_url())
        .env("RUST_LOG", "warn");
        if resume {
            cmd.arg("--resume");
        }
        cmd
    };
    let mut child = run(false).spawn().unwrap();
    // Kill it (SIGKILL: no chance to clean up) once some pages are confirmed.
    // Up to 30 s: on a loaded machine (the other tests of this file share moto) 600 items at
    // 400 items/s can take several times the 1.5 s they take alone.
    let mut confirmed = 0;
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(c) = Checkpoint::load(&ckpt) {
            confirmed = c.segments.iter().map(|s| s.scanned).sum::<u64>();
            if confirmed >= 600 {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        (600..2000).contains(&confirmed),
        "killed midway: {confirmed} confirmed"
    );
    let before = Checkpoint::load(&ckpt).unwrap();
    assert!(before.segments.iter().any(|s| !s.done));

    let out = run(true).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    let c = verify::compare(&indexer, &ddb, &table).await.unwrap();
    assert!(c.equal() && c.items == 2000, "{c:?}");
    let after = Checkpoint::load(&ckpt).unwrap();
    assert!(after.segments.iter().all(|s| s.done));
    // The resumed run read only what the killed run had not confirmed (a page in flight at the
    // kill is read again).
    let resumed_scanned: u64 = stdout
        .split_whitespace()
        .skip_while(|w| *w != "scanned")
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        resumed_scanned <= 2000 - before.segments.iter().map(|s| s.scanned).sum::<u64>(),
        "{stdout}"
    );
}

/// Writes and deletes during the backfill, their stream records delivered to the handler at the
/// same time: afterwards the index equals the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_during_the_backfill_converge_to_the_table() {
    let (ddb, streams) = dynamo_clients().await;
    let table = unique_index("bflive");
    let stream_arn = create_table(&ddb, &table).await;
    populate(&ddb, &table, 1500).await;
    let index = unique_index("bflive-idx");
    create_index(&index).await;
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    let ckpt = temp_path("live.json");
    let opts = Options {
        max_items_per_second: Some(1000.0),
        page_size: 100,
        ..options(&table, &ckpt)
    };

    let writer = async {
        for round in 0..6 {
            for i in (round..1500).step_by(37) {
                if i % 5 == 0 {
                    ddb.delete_item()
                        .table_name(&table)
                        .key("pk", A::S(format!("user#{i:05}")))
                        .key("sk", A::N(format!("{}", i % 3)))
                        .send()
                        .await
                        .unwrap();
                } else {
                    ddb.put_item()
                        .table_name(&table)
                        .set_item(Some(every_type_item(i, round as u32 + 2)))
                        .send()
                        .await
                        .unwrap();
                }
            }
            for i in 0..10 {
                ddb.put_item()
                    .table_name(&table)
                    .set_item(Some(every_type_item(2000 + round * 10 + i, 1)))
                    .send()
                    .await
                    .unwrap();
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    };
    let settings = drain_settings();
    let function = InProcess::new(&indexer, Duration::from_secs(60));
    let (stop, scanned) = (AtomicBool::new(false), AtomicU64::new(0));
    let (summary, (), delivered) = tokio::join!(
        backfill::run(&indexer, &ddb, &opts, &stop, &scanned),
        writer,
        runner::run(&streams, &stream_arn, &function, &settings),
    );
    let summary = summary.unwrap();
    assert_eq!(summary.unaccounted(), 0, "{summary:?}");
    // Drain whatever the stream still holds (a fresh reader: everything again, in order).
    let rest = runner::run(&streams, &stream_arn, &function, &settings)
        .await
        .unwrap();
    assert_eq!(delivered.unwrap().gave_up + rest.gave_up, 0);
    let c = verify::compare(&indexer, &ddb, &table).await.unwrap();
    assert!(c.equal(), "{c:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_switches_the_read_alias_and_keeps_the_old_index_for_rollback() {
    let (ddb, _) = dynamo_clients().await;
    let table = unique_index("bfrb");
    create_table(&ddb, &table).await;
    populate(&ddb, &table, 300).await;
    let name = unique_index("rb");
    let os = indexer(&opensearch_url(), "unused", &[]).await.opensearch;

    let mut built = Vec::new();
    for _ in 0..2 {
        let index = rebuild::start(&os, IndexTemplate::default(), &name, "1h", None)
            .await
            .unwrap();
        assert_eq!(
            rebuild::alias_targets(&os, &rebuild::write_alias(&name))
                .await
                .unwrap(),
            std::slice::from_ref(&index),
            "writes go to the new index first"
        );
        let readers_before = rebuild::alias_targets(&os, &name).await.unwrap();
        assert_eq!(
            readers_before,
            built.last().cloned().into_iter().collect::<Vec<_>>(),
            "reads stay on the old index"
        );
        let indexer = indexer(&opensearch_url(), &index, &[]).await;
        let s = backfill::run(
            &indexer,
            &ddb,
            &options(&table, &temp_path("rb.json")),
            &AtomicBool::new(false),
            &AtomicU64::new(0),
        )
        .await
        .unwrap();
        assert_eq!(s.indexed, 300);
        rebuild::finish(&os, &name, &index).await.unwrap();
        assert_eq!(
            rebuild::alias_targets(&os, &name).await.unwrap(),
            std::slice::from_ref(&index)
        );
        assert!(
            verify::compare(
                &common::indexer(&opensearch_url(), &name, &[]).await,
                &ddb,
                &table
            )
            .await
            .unwrap()
            .equal()
        );
        built.push(index);
        tokio::time::sleep(Duration::from_millis(1100)).await; // new names are per second
    }
    // The old index is still there, and rollback points both aliases back at it.
    assert_eq!(verify::documents(&os, &built[0]).await.unwrap().len(), 300);
    let (from, to) = rebuild::rollback(&os, &name).await.unwrap();
    assert_eq!((from, to.clone()), (built[1].clone(), built[0].clone()));
    assert_eq!(
        rebuild::alias_targets(&os, &name).await.unwrap(),
        std::slice::from_ref(&to)
    );
    assert_eq!(
        rebuild::alias_targets(&os, &rebuild::write_alias(&name))
            .await
            .unwrap(),
        [to]
    );
}
