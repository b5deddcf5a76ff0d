//! Copies the items already in a table into the index, safe while the stream is live: by a
//! parallel scan, or from a DynamoDB export in S3 (`--from-export`, `--export`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Duration;

use clap::Parser;

mod export;
use stream_indexer::config::Config;
use stream_indexer::handler::Indexer;
use stream_indexer::sink::template::IndexTemplate;
use stream_indexer::tools::backfill::{self, Options};
use stream_indexer::{
    telemetry,
    tools::{aws, rebuild},
};

/// Backfill a DynamoDB table into OpenSearch with a parallel scan, or from an export to S3.
///
/// Uses the same OPENSEARCH_* (and VERSION_ATTRIBUTE, QUARANTINE_INDEX, BULK_*) configuration as
/// the stream function, and the same conversion, ids, versions and quarantine, so it is safe to
/// run while the stream function is live: a change the stream writes after the scan read an item
/// always wins over the scanned copy.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The table to scan (or to export with --export; with --from-export, default: the table
    /// the export's manifest names).
    #[arg(long, required_unless_present_any = ["rollback", "from_export"])]
    table: Option<String>,
    /// DynamoDB endpoint (a local server); default: the AWS endpoint of the configured region.
    #[arg(long, env = "DYNAMODB_ENDPOINT")]
    endpoint_url: Option<String>,
    /// Parallel scan segments. Default: one per 512 MiB of table, at least twice
    /// BULK_CONCURRENCY, at most 256.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    segments: Option<u32>,
    /// Items per Scan page (each page is confirmed in OpenSearch before the next is read).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    page_size: u32,
    /// Most items read per second, across all segments. Default: no limit.
    #[arg(long)]
    max_items_per_second: Option<f64>,
    /// Most read capacity units consumed per second (consistent reads cost 1 per 4 KB).
    /// Default: no limit. Keep it well under the table's provisioned or usual on-demand rate.
    #[arg(long)]
    max_read_units_per_second: Option<f64>,
    /// How far this machine's clock may be ahead of DynamoDB's, in seconds. Scanned copies are
    /// versioned this much earlier than their read, so no later stream change can lose to them.
    #[arg(long, default_value_t = 5)]
    clock_skew: u64,
    /// index.gc_deletes during the run (restored afterwards): deletes stay remembered at least
    /// this long, so a scanned copy of an item deleted meanwhile cannot come back. Must exceed
    /// the run's length.
    #[arg(long, default_value = "12h")]
    gc_deletes: String,
    /// Checkpoint file: each segment's position, written after its page is confirmed.
    #[arg(long, default_value = "backfill.checkpoint.json")]
    checkpoint: PathBuf,
    /// Continue from the checkpoint file instead of starting over.
    #[arg(long)]
    resume: bool,
    /// Convert and count without writing anything.
    #[arg(long)]
    dry_run: bool,
    /// Seconds one page may take to land in OpenSearch, retries included.
    #[arg(long, default_value_t = 300)]
    page_timeout: u64,
    /// Zero-downtime rebuild of NAME: create NAME-<timestamp> from the template, move the write
    /// alias NAME-write (the stream function's OPENSEARCH_INDEX) to it, backfill it, then move
    /// the read alias NAME to it atomically. The old index is kept for --rollback.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["resume", "dry_run"])]
    rebuild: Option<String>,
    /// The index template --rebuild creates the index from: `schemaless` (any attribute may
    /// change type between items) or `typed` (numbers as numbers; one type per name).
    #[arg(long, env = "INDEX_TEMPLATE", value_enum, default_value_t = IndexTemplate::Schemaless)]
    template: IndexTemplate,
    /// Point the aliases NAME and NAME-write back at the index before the current one.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["rebuild", "resume", "dry_run"])]
    rollback: Option<String>,
    /// No progress bar (logs and the final summary only).
    #[arg(long)]
    quiet: bool,
    #[command(flatten)]
    export: ExportArgs,
}

/// Loading from a DynamoDB export instead of scanning: no read capacity used.
#[derive(clap::Args)]
struct ExportArgs {
    /// Load this export: s3://bucket/prefix/AWSDynamoDB/<export-id>/ (DYNAMODB_JSON format).
    #[arg(long, value_name = "S3_URL", conflicts_with_all = ["export", "rebuild", "rollback", "segments", "max_items_per_second", "max_read_units_per_second"])]
    from_export: Option<String>,
    /// Export the table to S3 first (ExportTableToPointInTime; needs point-in-time recovery),
    /// wait for it, then load it. index.gc_deletes is raised before the export is requested.
    #[arg(long, requires_all = ["table", "s3_bucket"], conflicts_with_all = ["rollback", "resume", "segments", "max_items_per_second", "max_read_units_per_second"])]
    export: bool,
    /// Bucket for --export.
    #[arg(long, requires = "export")]
    s3_bucket: Option<String>,
    /// Key prefix for --export.
    #[arg(long, requires = "export")]
    s3_prefix: Option<String>,
    /// Load only this share of the data files, i/N (1 ≤ i ≤ N): run N machines with 1/N … N/N.
    /// With N > 1, index.gc_deletes is raised but not restored (the others may still run).
    /// Not with --export: each machine would request an export of its own.
    #[arg(
        long,
        value_name = "i/N",
        default_value = "1/1",
        conflicts_with = "export"
    )]
    files: stream_indexer::tools::export::Share,
    /// Data files read at once. Default: twice BULK_CONCURRENCY.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1024))]
    files_in_parallel: Option<u32>,
    /// The export's point in time (RFC 3339), for an export without manifest-summary.json.
    #[arg(long, value_name = "TIME")]
    export_time: Option<String>,
    /// The table's key attributes, comma-separated, partition key first; needed only when the
    /// table cannot be described (an export copied from another account).
    #[arg(long, value_delimiter = ',')]
    keys: Option<Vec<String>>,
    /// Load even if the index may have forgotten deletes made since the export (the load
    /// refuses otherwise); run `verify --repair` afterwards.
    #[arg(long)]
    allow_old_export: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_for_tool();
    let args = Args::parse();
    let mut config = Config::from_env()?;
    if let Some(name) = &args.rollback {
        let indexer = Indexer::new(config).await?;
        let (from, to) = rebuild::rollback(&indexer.opensearch, name).await?;
        println!(
            "rolled back {name} (and {}) from {from} to {to}",
            rebuild::write_alias(name)
        );
        return Ok(());
    }
    let mut rebuilding = None;
    if let Some(name) = &args.rebuild {
        anyhow::ensure!(
            config.router.is_single(),
            "--rebuild rebuilds one index: it cannot be combined with ROUTES or a {{table}} index name"
        );
        let indexer = Indexer::new(config.clone()).await?;
        let index = rebuild::start(
            &indexer.opensearch,
            args.template,
            name,
            &args.gc_deletes,
            Some(&indexer.config.write),
        )
        .await?;
        println!(
            "rebuild: created {index}; stream writes ({}) now land there",
            rebuild::write_alias(name)
        );
        config.index = Some(index.clone());
        config.router = stream_indexer::pipeline::routing::Router::single(&index);
        rebuilding = Some((name.clone(), index));
    }
    let indexer = Indexer::new(config).await?;
    let sdk = aws::sdk_config(args.endpoint_url.as_deref()).await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    if args.export.export || args.export.from_export.is_some() {
        let s3 = aws::s3_client(&sdk, args.endpoint_url.as_deref());
        return export::run(&args, &indexer, &ddb, &s3).await;
    }
    let table = args.table.clone().expect("clap requires --table");
    let opts = Options {
        table: table.clone(),
        segments: args.segments,
        page_size: args.page_size,
        max_items_per_second: args.max_items_per_second,
        max_read_units_per_second: args.max_read_units_per_second,
        clock_skew: Duration::from_secs(args.clock_skew),
        // A rebuild's new index was created with it already.
        gc_deletes: rebuilding.is_none().then(|| args.gc_deletes.clone()),
        checkpoint: args.checkpoint.clone(),
        resume: args.resume,
        dry_run: args.dry_run,
        page_timeout: Duration::from_secs(args.page_timeout),
    };
    let (estimate, _) = stream_indexer::tools::table::table_size(&ddb, &table).await?;
    let stop = Arc::new(AtomicBool::new(false));
    backfill::stop_on_ctrl_c(stop.clone());
    let scanned = Arc::new(AtomicU64::new(0));
    let bar = telemetry::Progress::start(
        scanned.clone(),
        estimate.max(0) as u64,
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} items  {per_sec}  ETA {eta}",
        args.quiet,
    );
    let result = backfill::run(&indexer, &ddb, &opts, &stop, &scanned).await;
    bar.finish();
    let s = match result {
        Ok(s) => s,
        Err(e) => {
            eprintln!("backfill failed: {e:#}");
            std::process::exit(2);
        }
    };
    report(&s, args.dry_run, &args.checkpoint);
    if let Some((name, index)) = rebuilding {
        let previous = rebuild::finish(&indexer.opensearch, &name, &index).await?;
        println!(
            "rebuild: readers ({name}) switched to {index}; previous {previous:?} kept (undo with --rollback {name})"
        );
    }
    Ok(())
}

/// Prints the summary; exits 130 if stopped early and 1 if some item is not accounted for.
fn report(s: &backfill::Summary, dry_run: bool, checkpoint: &std::path::Path) {
    let secs = s.millis as f64 / 1000.0;
    println!(
        "{}scanned {} indexed {} superseded {} skipped {} quarantined {} failed {} in {:.1} s ({:.0} items/s)",
        if dry_run { "dry run: " } else { "" },
        s.scanned,
        s.indexed,
        s.superseded,
        s.skipped,
        s.quarantined,
        s.failed,
        secs,
        s.scanned as f64 / secs.max(0.001)
    );
    println!("{}", s.records.outcome_line());
    if s.interrupted {
        println!(
            "stopped early; continue with --resume (checkpoint {})",
            checkpoint.display()
        );
        std::process::exit(130);
    }
    if s.unaccounted() > 0 || s.failed > 0 {
        println!(
            "{} item(s) not accounted for",
            s.unaccounted().max(s.failed)
        );
        std::process::exit(1);
    }
}
