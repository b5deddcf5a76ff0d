//! Re-drives quarantined records once their cause is fixed (e.g. the mapping was changed).

use clap::Parser;
use stream_indexer::config::Config;
use stream_indexer::handler::Indexer;
use stream_indexer::{replay, telemetry};

/// Replay the records quarantined for OPENSEARCH_INDEX (read from QUARANTINE_INDEX).
///
/// Records that now land are removed from quarantine; records that still fail stay, with the
/// new reason; records that fail for a passing reason (429, timeouts) stay as they were.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Only convert and count: write nothing, remove nothing.
    #[arg(long)]
    dry_run: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let args = Args::parse();
    let indexer = Indexer::new(Config::from_env()?).await?;
    let report = replay::replay(&indexer, args.dry_run).await?;
    if args.dry_run {
        println!(
            "dry run: {} quarantined entries, {} convert now and would be re-sent",
            report.entries, report.would_replay
        );
    } else {
        println!(
            "{} entries: {} replayed and removed, {} still failing (kept with the new reason), {} to retry later",
            report.entries, report.replayed, report.still_failing, report.retry_later
        );
    }
    if report.still_failing + report.retry_later > 0 {
        std::process::exit(1);
    }
    Ok(())
}
