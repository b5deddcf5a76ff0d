//! Backfill from a DynamoDB export: moto's own exports (its S3), and fixture exports in AWS's
//! layout with manifests, against the local OpenSearch-compatible server. Always on moto (even
//! when `DYNAMODB_ENDPOINT` names DynamoDB Local, which has no exports and no S3).

mod common;

use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime};

use aws_sdk_dynamodb::types::AttributeValue as A;
use common::*;
use stream_indexer::tools::backfill::BackfillError;
use stream_indexer::tools::backfill::from_export::{self, Checkpoint, Counters, Options};
use stream_indexer::tools::export::{self, Location, Share};
use stream_indexer::tools::runner::{self, InProcess};
use stream_indexer::tools::verify;
use tokio::io::AsyncWriteExt as _;

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}-{name}", unique_index("ckpt")))
}

fn options(table: &str, export_time: SystemTime) -> Options {
    Options {
        table: table.into(),
        key_names: vec!["pk".into(), "sk".into()],
        export_time,
        share: Share::ALL,
        files_in_parallel: 4,
        page_size: 200,
        clock_skew: Duration::from_secs(5),
        gc_deletes: Some("1h".into()),
        restore_gc_deletes: true,
        allow_old_export: false,
        checkpoint: None,
        resume: false,
        dry_run: false,
        page_timeout: Duration::from_secs(120),
    }
}

async fn gzip(lines: &[String], members: usize) -> Vec<u8> {
    // Several gzip members one after another are one valid gzip file; no lines, no bytes.
    let mut out = Vec::new();
    let per = lines.len().div_ceil(members.max(1)).max(1);
    for chunk in lines.chunks(per) {
        let mut enc = async_compression::tokio::write::GzipEncoder::new(Vec::new());
        for l in chunk {
            enc.write_all(l.as_bytes()).await.unwrap();
            enc.write_all(b"\n").await.unwrap();
        }
        enc.shutdown().await.unwrap();
        out.extend(enc.into_inner());
    }
    out
}

/// Every item of the table as export lines `{"Item":{…}}`.
async fn export_lines(ddb: &aws_sdk_dynamodb::Client, table: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut pages = ddb.scan().table_name(table).into_paginator().send();
    while let Some(page) = pages.next().await {
        for item in page.unwrap().items.unwrap_or_default() {
            let mut text = String::from("{\"Item\":");
            stream_indexer::tools::ddb_json::table::write_item(&mut text, &item);
            text.push('}');
            lines.push(text);
        }
    }
    lines
}

/// Writes an export in AWS's layout: `files` data files (the last one empty, as AWS writes for
/// an empty partition), `manifest-files.json` with full keys and item counts, and
/// `manifest-summary.json`.
async fn write_fixture_export(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    table: &str,
    lines: &[String],
    files: usize,
    export_time: &str,
    format: &str,
) -> Location {
    let dir = format!("fixture/AWSDynamoDB/{}", unique_index("01700000000000"));
    let mut manifest = String::new();
    let per = lines.len().div_ceil(files - 1);
    let mut chunks: Vec<&[String]> = lines.chunks(per).collect();
    chunks.push(&[]);
    for (n, chunk) in chunks.iter().enumerate() {
        let key = format!("{dir}/data/file{n}.json.gz");
        s3.put_object()
            .bucket(bucket)
            .key(&key)
            .body(gzip(chunk, 1 + n % 2).await.into())
            .send()
            .await
            .unwrap();
        manifest.push_str(&format!(
            "{{\"itemCount\":{},\"md5Checksum\":\"x\",\"etag\":\"y\",\"dataFileS3Key\":\"{key}\"}}\n",
            chunk.len()
        ));
    }
    let summary = serde_json::json!({
        "version": "2020-06-30",
        "exportArn": format!("arn:aws:dynamodb:us-east-1:123456789012:table/{table}/export/01700000000000-abcd"),
        "tableArn": format!("arn:aws:dynamodb:us-east-1:123456789012:table/{table}"),
        "exportTime": export_time,
        "s3Bucket": bucket,
        "s3Prefix": "fixture",
        "manifestFilesS3Key": format!("{dir}/manifest-files.json"),
        "itemCount": lines.len(),
        "outputFormat": format,
        "exportType": "FULL_EXPORT",
    });
    for (name, body) in [
        ("manifest-files.json", manifest),
        ("manifest-summary.json", summary.to_string()),
    ] {
        s3.put_object()
            .bucket(bucket)
            .key(format!("{dir}/{name}"))
            .body(body.into_bytes().into())
            .send()
            .await
            .unwrap();
    }
    Location {
        bucket: bucket.to_string(),
        dir,
    }
}

/// A table of `n` items from [`populate`] and a fixture export of it (`files` data files, taken
/// at `export_time`) in a fresh bucket.
struct Fixture {
    ddb: aws_sdk_dynamodb::Client,
    s3: aws_sdk_s3::Client,
    table: String,
    /// Its bucket is `location.bucket`.
    location: Location,
}

async fn fixture(prefix: &str, n: usize, files: usize, export_time: SystemTime) -> Fixture {
    let (ddb, s3) = moto_clients().await;
    let table = unique_index(prefix);
    create_table(&ddb, &table).await;
    populate(&ddb, &table, n).await;
    let bucket = create_bucket(&s3).await;
    let lines = export_lines(&ddb, &table).await;
    let location = write_fixture_export(
        &s3,
        &bucket,
        &table,
        &lines,
        files,
        &rfc3339(export_time),
        "DYNAMODB_JSON",
    )
    .await;
    Fixture {
        ddb,
        s3,
        table,
        location,
    }
}

fn rfc3339(t: SystemTime) -> String {
    aws_sdk_dynamodb::primitives::DateTime::from(t)
        .fmt(aws_sdk_dynamodb::primitives::DateTimeFormat::DateTime)
        .unwrap()
}

/// `backfill --export` on moto: the export is requested, waited for, found (moto names its
/// directory its own way and writes no manifests) and loaded; every type lands exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_export_exports_the_table_and_loads_it_exactly() {
    let (ddb, s3) = moto_clients().await;
    let table = unique_index("ex");
    create_table(&ddb, &table).await;
    populate(&ddb, &table, 1200).await;
    let bucket = create_bucket(&s3).await;
    let index = unique_index("ex-idx");
    create_index(&index).await;
    let ckpt = temp_path("export.json");
    let run = || {
        let mut cmd = backfill_command(&index, &opensearch_url());
        cmd.args(["--export", "--table", &table, "--s3-bucket", &bucket])
            .args(["--s3-prefix", "nightly", "--quiet", "--page-size", "250"])
            .arg("--checkpoint")
            .arg(&ckpt);
        cmd.output().unwrap()
    };

    // Without point-in-time recovery the export cannot start, and the error says why.
    let out = run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("point-in-time recovery is off"), "{stderr}");

    enable_pitr(&ddb, &table).await;
    let out = run();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "export completed: s3://{bucket}/nightly/AWSDynamoDB/"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("scanned 1200 indexed 1200 superseded 0 skipped 0 quarantined 0 failed 0"),
        "{stdout}"
    );
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    let c = verify::compare(&indexer, &ddb, &table).await.unwrap();
    assert!(c.equal() && c.items == 1200, "{c:?}");
    let settings = index_settings(&index).await;
    assert!(!settings.contains("gc_deletes"), "restored: {settings}");
}

/// A fixture export in AWS's layout, loaded in two shares as two machines would: manifests are
/// read, keys resolved, multi-member gzip and an empty file handled, and together the shares
/// make the index equal to the table. A dry run writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixture_export_with_manifests_loads_in_shares() {
    let Fixture {
        ddb,
        s3,
        table,
        location,
    } = fixture("exf", 900, 5, SystemTime::now()).await;
    let opened = export::open(&s3, &location).await.unwrap();
    assert_eq!(opened.files.len(), 5);
    assert_eq!(opened.item_count, Some(900));
    assert_eq!(opened.table_name(), Some(table.as_str()));
    assert!(opened.files.iter().all(|f| f.bytes.is_some()), "{opened:?}");
    assert_eq!(opened.files[4].bytes, Some(0), "an empty partition's file");
    let index = unique_index("exf-idx");
    create_index(&index).await;
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    let export_time = opened.export_time.unwrap();

    let dry = from_export::run(
        &indexer,
        &s3,
        &opened,
        &Options {
            dry_run: true,
            ..options(&table, export_time)
        },
        &AtomicBool::new(false),
        &Counters::default(),
    )
    .await
    .unwrap();
    assert_eq!((dry.scanned, dry.indexed, dry.failed), (900, 900, 0));
    assert!(
        verify::documents(&indexer.opensearch, &index)
            .await
            .unwrap()
            .is_empty(),
        "a dry run writes nothing"
    );

    let mut total = 0;
    for share in ["1/2", "2/2"] {
        let counters = Counters::default();
        let s = from_export::run(
            &indexer,
            &s3,
            &opened,
            &Options {
                share: share.parse().unwrap(),
                restore_gc_deletes: false,
                ..options(&table, export_time)
            },
            &AtomicBool::new(false),
            &counters,
        )
        .await
        .unwrap();
        assert_eq!(s.unaccounted() + s.failed, 0, "{s:?}");
        assert!(s.scanned > 0 && s.scanned < 900, "share {share}: {s:?}");
        assert_eq!(
            counters.items.load(std::sync::atomic::Ordering::Relaxed),
            s.scanned
        );
        total += s.scanned;
    }
    assert_eq!(total, 900);
    let c = verify::compare(&indexer, &ddb, &table).await.unwrap();
    assert!(c.equal() && c.items == 900, "{c:?}");
}

/// Exports that cannot be loaded as they are say which file, which line and why; nothing is
/// written from a file past its bad line, and an ION export is refused up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_exports_are_named_precisely() {
    let (ddb, s3) = moto_clients().await;
    let table = unique_index("exb");
    create_table(&ddb, &table).await;
    populate(&ddb, &table, 30).await;
    let bucket = create_bucket(&s3).await;
    let now = rfc3339(SystemTime::now());
    let mut lines = export_lines(&ddb, &table).await;
    let index = unique_index("exb-idx");
    create_index(&index).await;
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    let load = |location: Location| {
        let (s3, indexer, table) = (s3.clone(), &indexer, table.clone());
        async move {
            let opened = export::open(&s3, &location).await?;
            from_export::run(
                indexer,
                &s3,
                &opened,
                &Options {
                    files_in_parallel: 1,
                    ..options(&table, opened.export_time.unwrap())
                },
                &AtomicBool::new(false),
                &Counters::default(),
            )
            .await
        }
    };

    let ion = write_fixture_export(&s3, &bucket, &table, &lines, 2, &now, "ION").await;
    let e = load(ion).await.unwrap_err().to_string();
    assert!(e.contains("ION format; only DYNAMODB_JSON"), "{e}");

    // Line 7 of the first file lacks the sort key; line 9 is not JSON.
    lines[6] = lines[6].replacen("\"sk\":", "\"sk_\":", 1);
    lines[8] = "{\"Item\":{\"pk\":".into();
    let bad = write_fixture_export(&s3, &bucket, &table, &lines, 2, &now, "DYNAMODB_JSON").await;
    let e = load(bad.clone()).await.unwrap_err();
    assert!(matches!(e, BackfillError::ExportData(_)), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains(&format!(
            "s3://{bucket}/{}/data/file0.json.gz line 7: the item has no key attribute \"sk\"",
            bad.dir
        )),
        "{e}"
    );

    // The failed load leaves the delete memory raised: its resumed run still needs it.
    let settings = index_settings(&index).await;
    assert!(settings.contains(r#""gc_deletes":"1h""#), "{settings}");

    // A manifest that promises more items than the file holds (a truncated file).
    let short =
        write_fixture_export(&s3, &bucket, &table, &lines[..5], 2, &now, "DYNAMODB_JSON").await;
    let files_key = format!("{}/manifest-files.json", short.dir);
    let manifest = format!(
        "{{\"itemCount\":6,\"dataFileS3Key\":\"{}/data/file0.json.gz\"}}\n",
        short.dir
    );
    s3.put_object()
        .bucket(&bucket)
        .key(&files_key)
        .body(manifest.into_bytes().into())
        .send()
        .await
        .unwrap();
    let e = load(short).await.unwrap_err().to_string();
    assert!(
        e.contains("file0.json.gz: the manifest lists 6 items but the file holds 5"),
        "{e}"
    );

    // A manifest that promises fewer items than the file holds: refused at the first line
    // past the count, before that line is indexed.
    let long =
        write_fixture_export(&s3, &bucket, &table, &lines[..5], 2, &now, "DYNAMODB_JSON").await;
    let manifest = format!(
        "{{\"itemCount\":3,\"dataFileS3Key\":\"{}/data/file0.json.gz\"}}\n",
        long.dir
    );
    put(
        &s3,
        &bucket,
        &format!("{}/manifest-files.json", long.dir),
        manifest,
    )
    .await;
    let e = load(long).await.unwrap_err().to_string();
    assert!(
        e.contains("file0.json.gz line 4: the manifest lists 3 items for this file"),
        "{e}"
    );

    // A manifest key outside the export's data directory: refused before anything is read.
    let outside =
        write_fixture_export(&s3, &bucket, &table, &lines[..5], 2, &now, "DYNAMODB_JSON").await;
    let manifest = format!(
        "{{\"itemCount\":5,\"dataFileS3Key\":\"{}/data/file0.json.gz\"}}\n",
        bad.dir
    );
    put(
        &s3,
        &bucket,
        &format!("{}/manifest-files.json", outside.dir),
        manifest,
    )
    .await;
    let e = load(outside).await.unwrap_err().to_string();
    assert!(e.contains("is not in the export's data directory"), "{e}");

    // One endless line (a small gzip expands to it): refused at the cap, naming file and line.
    let mut endless = lines[..3].to_vec();
    endless[1] = format!(
        "{{\"Item\":{{\"pk\":{{\"S\":\"{}\"}}}}}}",
        "x".repeat(from_export::MAX_LINE_BYTES)
    );
    let endless =
        write_fixture_export(&s3, &bucket, &table, &endless, 2, &now, "DYNAMODB_JSON").await;
    let e = load(endless).await.unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "file0.json.gz line 2: longer than {} bytes",
            from_export::MAX_LINE_BYTES
        )),
        "{e}"
    );

    // An export time ahead of the clock: its copies would outrank real changes until then.
    let ahead = rfc3339(SystemTime::now() + Duration::from_secs(3600));
    let future = write_fixture_export(
        &s3,
        &bucket,
        &table,
        &lines[..5],
        2,
        &ahead,
        "DYNAMODB_JSON",
    )
    .await;
    let e = load(future).await.unwrap_err().to_string();
    assert!(e.contains("s ahead of this machine's clock"), "{e}");
}

async fn put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: String) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(body.into_bytes().into())
        .send()
        .await
        .unwrap();
}

/// An export older than the index's delete memory is refused before anything is written:
/// deletes made since then may already be forgotten, and the export's copies would bring those
/// items back. `allow_old_export` loads it anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_older_than_the_delete_memory_is_refused() {
    let Fixture {
        ddb: _,
        s3,
        table,
        location,
    } = fixture("exo", 20, 2, SystemTime::now() - Duration::from_secs(7200)).await;
    let opened = export::open(&s3, &location).await.unwrap();
    let index = unique_index("exo-idx");
    create_index(&index).await;
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    let opts = options(&table, opened.export_time.unwrap());
    let e = from_export::run(
        &indexer,
        &s3,
        &opened,
        &opts,
        &AtomicBool::new(false),
        &Counters::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, BackfillError::StaleExport(_)), "{e:?}");
    let e = e.to_string();
    assert!(
        e.contains(&format!("index {index} forgets deletes after 60 s")),
        "{e}"
    );
    assert!(
        verify::documents(&indexer.opensearch, &index)
            .await
            .unwrap()
            .is_empty(),
        "nothing written"
    );

    let s = from_export::run(
        &indexer,
        &s3,
        &opened,
        &Options {
            allow_old_export: true,
            ..opts
        },
        &AtomicBool::new(false),
        &Counters::default(),
    )
    .await
    .unwrap();
    assert_eq!(s.indexed, 20);
}

/// The live stream delivered before and during the load (puts, changes and deletes made after
/// the export): the export's older copies never win, deleted items never come back, and the
/// index ends equal to the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_stream_beside_an_export_load_converges() {
    let (ddb, s3) = moto_clients().await;
    let streams = aws_sdk_dynamodbstreams::Client::new(
        &stream_indexer::tools::aws::sdk_config(Some(&moto_url())).await,
    );
    let table = unique_index("exl");
    let stream_arn = create_table(&ddb, &table).await;
    enable_pitr(&ddb, &table).await;
    populate(&ddb, &table, 1000).await;
    let bucket = create_bucket(&s3).await;
    let index = unique_index("exl-idx");
    create_index(&index).await;
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    stream_indexer::tools::backfill::prepare_indexes(
        &indexer,
        std::slice::from_ref(&index),
        Some("1h"),
    )
    .await
    .unwrap();
    let before = export::export_dirs(&s3, &bucket, Some("live"))
        .await
        .unwrap();
    let requested = export::request(&ddb, &table, &bucket, Some("live"))
        .await
        .unwrap();
    let finished = export::wait(&ddb, &requested.arn, |_| {}).await.unwrap();
    let location = export::locate(&s3, &bucket, Some("live"), &requested, &finished, &before)
        .await
        .unwrap();
    let opened = export::open(&s3, &location).await.unwrap();
    assert!(opened.export_time.is_none(), "moto writes no manifests");
    let export_time = finished.export_time.unwrap_or(requested.requested_at);

    let change = |round: usize| {
        let ddb = ddb.clone();
        let table = table.clone();
        async move {
            for i in (round..1000).step_by(23) {
                if i % 4 == 0 {
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
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let settings = drain_settings();
    let function = InProcess::new(&indexer, Duration::from_secs(60));
    // Changes after the export, delivered before the load: their deletes' tombstones must keep
    // the export's copies out.
    change(0).await;
    let first = runner::run(&streams, &stream_arn, &function, &settings)
        .await
        .unwrap();
    assert_eq!(first.gave_up, 0);
    // More changes while the export loads, delivered as they happen.
    let writer = async {
        for round in 1..4 {
            change(round).await;
        }
    };
    let opts = Options {
        page_size: 100,
        files_in_parallel: 2,
        ..options(&table, export_time)
    };
    let (stop, counters) = (AtomicBool::new(false), Counters::default());
    let (loaded, (), delivered) = tokio::join!(
        from_export::run(&indexer, &s3, &opened, &opts, &stop, &counters),
        writer,
        runner::run(&streams, &stream_arn, &function, &settings),
    );
    let loaded = loaded.unwrap();
    assert_eq!(loaded.unaccounted() + loaded.failed, 0, "{loaded:?}");
    assert_eq!(
        (loaded.scanned, loaded.indexed + loaded.superseded),
        (1000, 1000)
    );
    assert!(
        loaded.superseded > 0,
        "stream changes won over export copies: {loaded:?}"
    );
    let rest = runner::run(&streams, &stream_arn, &function, &settings)
        .await
        .unwrap();
    assert_eq!(delivered.unwrap().gave_up + rest.gave_up, 0);
    let c = verify::compare(&indexer, &ddb, &table).await.unwrap();
    assert!(c.equal(), "{c:?}");
}

/// `backfill --from-export` killed (SIGKILL) midway resumes from its checkpoint: files and lines
/// confirmed are not read again, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_killed_midway_resumes_from_its_checkpoint() {
    let Fixture {
        ddb,
        s3: _,
        table,
        location,
    } = fixture("exk", 2000, 3, SystemTime::now()).await;
    let index = unique_index("exk-idx");
    create_index(&index).await;
    // Every bulk request is slowed down, so the kill lands midway.
    let proxy = proxy::Proxy::start(&opensearch_url(), |r| {
        if r.path.contains("_bulk") {
            proxy::Fault::Delay(Duration::from_millis(60))
        } else {
            proxy::Fault::Pass
        }
    })
    .await;
    let ckpt = temp_path("kill.json");
    let run = |resume: bool| {
        let mut cmd = backfill_command(&index, &proxy.url);
        cmd.args(["--from-export", &location.url(), "--quiet"])
            .args(["--page-size", "50", "--files-in-parallel", "1"])
            .arg("--checkpoint")
            .arg(&ckpt);
        if resume {
            cmd.arg("--resume");
        }
        cmd
    };
    let mut child = run(false).spawn().unwrap();
    let confirmed = |c: &Checkpoint| c.files.values().map(|p| p.lines).sum::<u64>();
    let mut at_kill = 0;
    for _ in 0..400 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        if let Ok(text) = std::fs::read_to_string(&ckpt)
            && let Ok(c) = serde_json::from_str::<Checkpoint>(&text)
        {
            at_kill = confirmed(&c);
            if at_kill >= 500 {
                break;
            }
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before: Checkpoint =
        serde_json::from_str(&std::fs::read_to_string(&ckpt).unwrap()).unwrap();
    assert!(
        (500..2000).contains(&confirmed(&before)),
        "killed midway: {at_kill} confirmed"
    );

    let out = run(true).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let resumed: u64 = stdout
        .split_whitespace()
        .skip_while(|w| *w != "scanned")
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(resumed, 2000 - confirmed(&before), "{stdout}");
    let after: Checkpoint = serde_json::from_str(&std::fs::read_to_string(&ckpt).unwrap()).unwrap();
    assert!(after.files.values().all(|p| p.done), "{after:?}");
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    let c = verify::compare(&indexer, &ddb, &table).await.unwrap();
    assert!(c.equal() && c.items == 2000, "{c:?}");
}

/// The `export-loader` function under the Lambda emulator, driven step by step as the state
/// machine in template.yaml drives it: prepare, open, one `load` per line of
/// `manifest-files.json` (the Distributed Map's items), finish. A file that cannot be read fails
/// its invocation with a stable errorType, and the function goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_loader_function_loads_one_file_per_invocation() {
    use common::lambda_api::{Answer, LambdaApi};
    let Fixture {
        ddb,
        s3,
        table,
        location,
    } = fixture("exw", 600, 4, SystemTime::now()).await;
    let bucket = location.bucket.clone();
    let index = unique_index("exw-idx");
    create_index(&index).await;
    fn deadline() -> u64 {
        (SystemTime::now() + Duration::from_secs(120))
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }
    let api = LambdaApi::start(deadline).await;
    let _function = tokio::process::Command::new(env!("CARGO_BIN_EXE_export-loader"))
        .env("AWS_LAMBDA_RUNTIME_API", &api.addr)
        .env("AWS_LAMBDA_FUNCTION_NAME", "export-loader")
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("OPENSEARCH_URL", opensearch_url())
        .env("OPENSEARCH_INDEX", &index)
        .env("AWS_ENDPOINT_URL", moto_url())
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_REGION")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("start export-loader");
    let invoke = |payload: serde_json::Value| {
        let api = &api;
        async move {
            match api.invoke(&payload.to_string(), deadline()).await {
                Answer::Response(v) => v,
                Answer::Error(e) => panic!("{payload}: {e}"),
            }
        }
    };

    let prepared =
        invoke(serde_json::json!({"step": "prepare", "table": table, "gcDeletes": "2h"})).await;
    assert_eq!(
        prepared["keys"],
        serde_json::json!(["pk", "sk"]),
        "{prepared}"
    );
    assert_eq!(
        prepared["previous"],
        serde_json::json!([[index, null]]),
        "{prepared}"
    );
    let opened = invoke(serde_json::json!({
        "step": "open",
        "bucket": bucket,
        "manifest": format!("{}/manifest-summary.json", location.dir),
    }))
    .await;
    assert_eq!(opened["itemCount"], 600, "{opened}");
    let manifest = s3
        .get_object()
        .bucket(&bucket)
        .key(opened["manifestFilesKey"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    let mut items = 0;
    for line in String::from_utf8(manifest.to_vec()).unwrap().lines() {
        let file: serde_json::Value = serde_json::from_str(line).unwrap();
        let loaded = invoke(serde_json::json!({
            "step": "load",
            "bucket": opened["bucket"],
            "dir": opened["dir"],
            "file": file,
            "exportTime": opened["exportTime"],
            "table": prepared["table"],
            "keys": prepared["keys"],
        }))
        .await;
        assert_eq!(loaded["items"], file["itemCount"], "{loaded}");
        items += loaded["items"].as_u64().unwrap();
    }
    assert_eq!(items, 600);

    // A data file that is not there: the invocation fails, saying which file.
    match api
        .invoke(
            &serde_json::json!({
                "step": "load", "bucket": bucket, "dir": location.dir,
                "file": {"dataFileS3Key": format!("{}/data/missing.json.gz", location.dir), "itemCount": 1},
                "exportTime": opened["exportTime"], "table": table, "keys": ["pk", "sk"],
            })
            .to_string(),
            deadline(),
        )
        .await
    {
        Answer::Error(e) => {
            assert_eq!(e["errorType"], "Export", "{e}");
            assert!(e["errorMessage"].as_str().unwrap().contains("missing.json.gz"), "{e}");
        }
        other => panic!("{other:?}"),
    }

    invoke(serde_json::json!({"step": "finish", "previous": prepared["previous"]})).await;
    let indexer = indexer(&opensearch_url(), &index, &[]).await;
    let c = verify::compare(&indexer, &ddb, &table).await.unwrap();
    assert!(c.equal() && c.items == 600, "{c:?}");
    let settings = index_settings(&index).await;
    assert!(!settings.contains("gc_deletes"), "restored: {settings}");
}

/// Issue item 6: two export loads of one index overlapping. The second `prepare` is refused
/// while the first holds the index; a retried `prepare` of the first keeps the value it found
/// first; a `finish` of another load does not lower `index.gc_deletes`; the first load's finish
/// puts back what it found, and then another load may start.
#[tokio::test]
async fn overlapping_loads_of_one_index_are_refused_and_each_finish_restores_only_its_own() {
    use stream_indexer::tools::backfill::worker::{Step, Worker};
    let (ddb, s3) = moto_clients().await;
    let table = unique_index("lease");
    create_table(&ddb, &table).await;
    let index = unique_index("lease-idx");
    create_index(&index).await;
    let worker = Worker {
        indexer: indexer(&opensearch_url(), &index, &[]).await,
        ddb,
        s3,
        clock_skew: Duration::from_secs(5),
        page_timeout: Duration::from_secs(60),
    };
    let prepare = |run: &str| Step::Prepare {
        table: table.clone(),
        gc_deletes: Some("2h".into()),
        run: Some(run.into()),
    };
    let gc = || async { index_settings(&index).await };
    let first = worker.run(prepare("run-a")).await.unwrap();
    assert_eq!(first["previous"], serde_json::json!([[index, null]]));
    assert!(
        gc().await.contains(r#""gc_deletes":"2h""#),
        "{}",
        gc().await
    );

    let e = worker.run(prepare("run-b")).await.unwrap_err();
    assert_eq!(e.kind(), "LoadInProgress");
    assert!(e.to_string().contains("run-a"), "{e}");
    // A retried prepare of the same load: still the value found before the load.
    let again = worker.run(prepare("run-a")).await.unwrap();
    assert_eq!(again["previous"], first["previous"]);

    let finish = |run: &str| Step::Finish {
        previous: vec![(index.clone(), None)],
        run: Some(run.into()),
    };
    worker.run(finish("run-b")).await.unwrap();
    assert!(
        gc().await.contains(r#""gc_deletes":"2h""#),
        "another load's finish keeps it"
    );
    worker.run(finish("run-a")).await.unwrap();
    assert!(
        !gc().await.contains("gc_deletes"),
        "put back: {}",
        gc().await
    );
    // The index is free again.
    worker.run(prepare("run-b")).await.unwrap();
    worker.run(finish("run-b")).await.unwrap();
    assert!(!gc().await.contains("gc_deletes"), "{}", gc().await);
}
