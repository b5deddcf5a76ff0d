//! Finds drift between a table and its index, and repairs it.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use clap::Parser;
use stream_indexer::config::Config;
use stream_indexer::handler::Indexer;
use stream_indexer::tools::verify::{self, Options, Report};
use stream_indexer::{telemetry, tools::aws};

/// Compare a DynamoDB table with its OpenSearch index, item by item, values exact.
///
/// Uses the same OPENSEARCH_* configuration as the stream function (ROUTES, EXCLUDE_ATTRIBUTES,
/// METADATA_FIELDS, VERSION_ATTRIBUTE included). Prints
/// `items N documents N missing N different N extra N` and example ids; exits 0 when the index
/// equals the table, 1 when drift was found (repaired or not), 2 on error.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The table to compare.
    #[arg(long)]
    table: String,
    /// DynamoDB endpoint (a local server); default: the AWS endpoint of the configured region.
    #[arg(long, env = "DYNAMODB_ENDPOINT")]
    endpoint_url: Option<String>,
    /// Parallel scan segments. Default: as the backfill (one per 512 MiB, at least twice
    /// BULK_CONCURRENCY).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    segments: Option<u32>,
    /// Items per Scan page and documents per page of the index walk.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    page_size: u32,
    /// Most read capacity units consumed per second (scan and lookups; consistent reads cost 1
    /// per 4 KB). Default: no limit.
    #[arg(long)]
    max_read_units_per_second: Option<f64>,
    /// Check about this fraction of the table and of each index (0 < FRACTION <= 1), chosen at
    /// random, and estimate the drift rate.
    #[arg(long, value_parser = fraction)]
    sample: Option<f64>,
    /// Seed for the sample's random choices. Default: random.
    #[arg(long)]
    seed: Option<u64>,
    /// Re-index missing and different items and delete extra documents, with read-time
    /// versions: a newer stream change always wins.
    #[arg(long)]
    repair: bool,
    /// Do not walk the index for extra documents (when other tables write to the same index).
    #[arg(long)]
    skip_extra: bool,
    /// Most documents one repair deletes; extra documents past it are counted as withheld and
    /// left, and the run says how many it would have deleted.
    #[arg(long, default_value_t = verify::DEFAULT_MAX_DELETES)]
    max_deletes: u64,
    /// With --repair, also delete documents whose id is no key of this table (by default they
    /// are reported as foreign: another table may share the index).
    #[arg(long, requires = "repair")]
    delete_foreign: bool,
    /// How far this machine's clock may be ahead of DynamoDB's, in seconds (repair versions).
    #[arg(long, default_value_t = 5)]
    clock_skew: u64,
    /// Print the report as JSON instead of text.
    #[arg(long)]
    json: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(format!("{text} is not a fraction in (0, 1]")),
    }
}

#[tokio::main]
async fn main() {
    telemetry::init_for_tool();
    let args = Args::parse();
    match verify_table(&args).await {
        Ok(report) => {
            print(&report, args.json);
            std::process::exit(if report.equal() { 0 } else { 1 });
        }
        Err(e) => {
            eprintln!("verify failed: {e:#}");
            std::process::exit(2);
        }
    }
}

async fn verify_table(args: &Args) -> anyhow::Result<Report> {
    let indexer = Indexer::new(Config::from_env()?).await?;
    let sdk = aws::sdk_config(args.endpoint_url.as_deref()).await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let opts = Options {
        segments: args.segments,
        page_size: args.page_size,
        max_read_units_per_second: args.max_read_units_per_second,
        sample: args.sample,
        seed: args.seed.unwrap_or_else(rand::random),
        repair: args.repair,
        extra: !args.skip_extra,
        max_deletes: args.max_deletes,
        delete_foreign: args.delete_foreign,
        clock_skew: Duration::from_secs(args.clock_skew),
        ..Options::new(&args.table)
    };
    let (items, _) = stream_indexer::tools::table::table_size(&ddb, &args.table).await?;
    let expected = (items.max(0) as f64 * args.sample.unwrap_or(1.0)) as u64;
    let progress = Arc::new(AtomicU64::new(0));
    let bar = telemetry::Progress::start(
        progress.clone(),
        expected,
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} items and documents  {per_sec}",
        args.quiet,
    );
    let report = verify::run(&indexer, &ddb, &opts, &progress).await;
    bar.finish();
    Ok(report?)
}

fn print(r: &Report, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(r).expect("a report serializes")
        );
        return;
    }
    println!("{}", r.summary_line());
    for e in &r.examples {
        let id = serde_json::to_string(&e.id).expect("a string serializes");
        println!("  {} in {}: {id}", e.kind.name(), e.index);
    }
    if r.unindexable > 0 {
        println!(
            "  {} missing item(s) cannot be indexed as they are: the function quarantines them",
            r.unindexable
        );
    }
    if r.skipped > 0 {
        println!("  {} item(s) routed to no index", r.skipped);
    }
    if let Some(s) = &r.sample {
        println!(
            "sample: {} of {} scan segments (seed {}); drift rate table side {:.3}%, index side {:.3}%, estimated {:.3}%",
            s.segments_checked,
            s.total_segments,
            s.seed,
            s.table_drift_rate * 100.0,
            s.index_drift_rate * 100.0,
            s.estimated_drift_rate * 100.0
        );
    }
    if r.foreign > 0 {
        println!(
            "  {} document(s) whose id is no key of this table (another table's, if the index is shared); --repair --delete-foreign deletes them",
            r.foreign
        );
    }
    if let Some(d) = &r.repair {
        println!(
            "repaired: indexed {} deleted {} superseded {} quarantined {} failed {}",
            d.indexed, d.deleted, d.superseded, d.quarantined, d.failed
        );
        if d.withheld > 0 {
            println!(
                "  {} more document(s) would have been deleted, past --max-deletes; check the examples above, then run again with --max-deletes {}",
                d.withheld,
                d.deleted + d.superseded + d.failed + d.withheld
            );
        }
    }
}
