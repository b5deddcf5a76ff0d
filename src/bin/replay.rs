//! Re-drives quarantined records once their cause is fixed (e.g. the mapping was changed).

use clap::Parser;
use stream_indexer::config::Config;
use stream_indexer::handler::Indexer;
use stream_indexer::{telemetry, tools::replay};

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
    /// Only list the quarantine: entries by index and reason (values redacted), oldest and
    /// newest entry. Changes nothing.
    #[arg(long, conflicts_with = "dry_run")]
    list: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init_for_tool();
    let args = Args::parse();
    let indexer = Indexer::new(Config::from_env()?).await?;
    if args.list {
        let s = replay::summarize(&indexer).await?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // Age and epoch milliseconds: no date library for one line.
        let when = |ms: Option<u64>| {
            ms.map_or("-".to_string(), |ms| {
                let s = now_ms.saturating_sub(ms) / 1000;
                format!("{}h{:02}m ago (epoch ms {ms})", s / 3600, s / 60 % 60)
            })
        };
        println!(
            "{} entries, oldest {}, newest {}",
            s.entries,
            when(s.oldest_ms),
            when(s.newest_ms)
        );
        for ((index, reason), n) in &s.by_reason {
            println!("{n:>8}  {index}  {reason}");
        }
        return Ok(());
    }
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
