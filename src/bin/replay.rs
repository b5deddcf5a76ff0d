//! Re-drives quarantined records once their cause is fixed (e.g. the mapping was changed).

use clap::Parser;
use std::time::Duration;
use stream_indexer::config::Config;
use stream_indexer::handler::Indexer;

use stream_indexer::{
    telemetry,
    tools::{aws, replay},
};

/// Replay the records quarantined for OPENSEARCH_INDEX (read from QUARANTINE_INDEX).
///
/// With --table, each entry's item is read from the table again and written as it is now
/// (deleted if it is gone); without it, only entries younger than the index's
/// index.gc_deletes are re-sent. Records that now land are removed from quarantine; records
/// that still fail stay, with the new reason; records that fail for a passing reason (429,
/// timeouts) stay as they were.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The table whose entries to replay, read again before writing (recommended).
    #[arg(long)]
    table: Option<String>,
    /// DynamoDB endpoint (a local server); default: the AWS endpoint of the configured region.
    #[arg(long, env = "DYNAMODB_ENDPOINT")]
    endpoint_url: Option<String>,
    /// How far this machine's clock may be ahead of DynamoDB's, in seconds (read-time
    /// versions).
    #[arg(long, default_value_t = 5)]
    clock_skew: u64,
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
    let ddb = match &args.table {
        Some(_) => {
            let sdk = aws::sdk_config(args.endpoint_url.as_deref()).await;
            Some(aws_sdk_dynamodb::Client::new(&sdk))
        }
        None => None,
    };
    let key_names = match (&ddb, &args.table) {
        (Some(ddb), Some(table)) => stream_indexer::tools::table::key_names(ddb, table).await?,
        _ => Vec::new(),
    };
    let opts = replay::Options {
        dry_run: args.dry_run,
        table: ddb
            .as_ref()
            .zip(args.table.as_deref())
            .map(|(ddb, table)| replay::TableAccess {
                ddb,
                table,
                key_names: &key_names,
                clock_skew: Duration::from_secs(args.clock_skew),
            }),
    };
    let report = replay::replay(&indexer, &opts).await?;
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
    if report.foreign > 0 {
        println!(
            "{} entries of other tables left for their own replay",
            report.foreign
        );
    }
    if report.too_old > 0 {
        println!(
            "{} entries older than the index's index.gc_deletes left: re-sent as they are they could bring back items deleted since; replay them with --table",
            report.too_old
        );
    }
    if report.still_failing + report.retry_later + report.too_old > 0 {
        std::process::exit(1);
    }
    Ok(())
}
