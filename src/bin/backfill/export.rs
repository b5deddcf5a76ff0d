//! `backfill --from-export` and `backfill --export`: load a DynamoDB export from S3.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use stream_indexer::handler::Indexer;
use stream_indexer::telemetry;
use stream_indexer::tools::backfill::{self, from_export};
use stream_indexer::tools::export::{self, Location};

use super::Args;

pub async fn run(
    args: &Args,
    indexer: &Indexer,
    ddb: &aws_sdk_dynamodb::Client,
    s3: &aws_sdk_s3::Client,
) -> anyhow::Result<()> {
    let e = &args.export;
    let gc_deletes = (!args.dry_run).then(|| args.gc_deletes.clone());
    // With --export the indexes are prepared before the export is requested, so that deletes
    // made while it runs are remembered (`from_export` module docs).
    let (location, requested_time, previous_gc) = if e.export {
        let table = args.table.as_deref().expect("clap requires --table");
        let bucket = e.s3_bucket.as_deref().expect("clap requires --s3-bucket");
        let indexes = backfill::every_index(indexer, table);
        let previous = match &gc_deletes {
            Some(value) => backfill::prepare_indexes(indexer, &indexes, Some(value)).await?,
            None => Vec::new(),
        };
        let exported = async {
            let before = export::export_dirs(s3, bucket, e.s3_prefix.as_deref()).await?;
            let requested = export::request(ddb, table, bucket, e.s3_prefix.as_deref()).await?;
            eprintln!("export requested: {}", requested.arn);
            let finished = export::wait(ddb, &requested.arn, |status| {
                if !args.quiet {
                    eprintln!("export {status}");
                }
            })
            .await?;
            let location = export::locate(
                s3,
                bucket,
                e.s3_prefix.as_deref(),
                &requested,
                &finished,
                &before,
            )
            .await?;
            Ok::<_, export::ExportError>((
                location,
                finished.export_time.unwrap_or(requested.requested_at),
            ))
        }
        .await;
        let (location, time) = match exported {
            Ok(done) => done,
            Err(err) => {
                // Nothing was loaded: put index.gc_deletes back, or the next run would take the
                // raised value for the one to restore.
                backfill::restore_gc_deletes(indexer, previous).await?;
                return Err(err.into());
            }
        };
        println!("export completed: {}", location.url());
        (location, Some(time), Some(previous))
    } else {
        let url = e.from_export.as_deref().expect("clap requires one of them");
        (Location::parse(url)?, None, None)
    };
    let opened = export::open(s3, &location).await?;
    let export_time = match (&e.export_time, requested_time, opened.export_time) {
        (Some(text), _, _) => export::parse_time(text).map_err(anyhow::Error::msg)?,
        (None, Some(t), _) | (None, None, Some(t)) => t,
        (None, None, None) => anyhow::bail!(
            "export {} has no manifest-summary.json to take its time from; give it with --export-time (RFC 3339, the ExportTime DescribeExport shows)",
            location.url()
        ),
    };
    let table = match (&args.table, opened.table_name()) {
        (Some(t), _) => t.clone(),
        (None, Some(t)) => t.to_string(),
        (None, None) => anyhow::bail!(
            "export {} names no table (no manifest-summary.json); give it with --table",
            location.url()
        ),
    };
    let key_names = match &e.keys {
        Some(keys) => keys.clone(),
        None => stream_indexer::tools::table::key_names(ddb, &table)
            .await
            .with_context(|| format!("the key attributes of {table} (or give them with --keys)"))?,
    };
    let opts = from_export::Options {
        table,
        key_names,
        export_time,
        share: e.files,
        files_in_parallel: e
            .files_in_parallel
            .map(|n| n as usize)
            .unwrap_or(2 * indexer.config.bulk_concurrency),
        page_size: args.page_size as usize,
        clock_skew: Duration::from_secs(args.clock_skew),
        // --export raised it already; restoring is done here, after the load.
        gc_deletes: if e.export { None } else { gc_deletes },
        restore_gc_deletes: e.files.of == 1 && !e.export,
        allow_old_export: e.allow_old_export,
        checkpoint: Some(args.checkpoint.clone()),
        resume: args.resume,
        dry_run: args.dry_run,
        page_timeout: Duration::from_secs(args.page_timeout),
    };
    let shared = e.files.select(&opened.files);
    let estimate = match shared.iter().map(|f| f.item_count).sum::<Option<u64>>() {
        Some(n) => n,
        None => opened.item_count.unwrap_or(0) / e.files.of as u64,
    };
    let bytes: u64 = shared.iter().filter_map(|f| f.bytes).sum();
    let stop = Arc::new(AtomicBool::new(false));
    backfill::stop_on_ctrl_c(stop.clone());
    let counters = from_export::Counters::default();
    let bar = telemetry::Progress::start(
        counters.items.clone(),
        estimate,
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} items  {msg}  {per_sec}  ETA {eta}",
        args.quiet,
    )
    .with_bytes(counters.bytes.clone(), bytes);
    let result = from_export::run(indexer, s3, &opened, &opts, &stop, &counters).await;
    bar.finish();
    let s = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("backfill failed: {e:#}");
            eprintln!(
                "continue with: backfill --from-export {} --resume (index.gc_deletes stays raised until the load finishes)",
                location.url()
            );
            std::process::exit(2);
        }
    };
    if let Some(previous) = previous_gc
        && e.files.of == 1
        && !s.interrupted
    {
        backfill::restore_gc_deletes(indexer, previous).await?;
    }
    if e.files.of > 1 && !args.dry_run {
        println!(
            "index.gc_deletes left at {} on {}: put it back once all {} shares are loaded",
            args.gc_deletes,
            backfill::every_index(indexer, &opts.table).join(","),
            e.files.of
        );
    }
    if s.interrupted {
        println!(
            "resume with: backfill --from-export {} --resume",
            location.url()
        );
    }
    super::report(&s, args.dry_run, &args.checkpoint);
    Ok(())
}
