//! Delivers event files to the function's handler in-process, the way Lambda would invoke it,
//! and prints each response and what landed. For trying the function locally.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use stream_indexer::config::Config;
use stream_indexer::handler::Indexer;
use stream_indexer::sink::template::{self, IndexTemplate};
use stream_indexer::{telemetry, tools::verify};

/// Deliver DynamoDB Streams event files (e.g. events/*.json) to the handler, in order.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Event files, each one Lambda invocation payload.
    #[arg(required = true)]
    events: Vec<PathBuf>,
    /// Install the index template for OPENSEARCH_INDEX and create the index first.
    #[arg(long)]
    apply_template: bool,
    /// Which template --apply-template installs: `schemaless` (any attribute may change type
    /// between items) or `typed` (numbers as numbers; one type per name).
    #[arg(long, env = "INDEX_TEMPLATE", value_enum, default_value_t = IndexTemplate::Schemaless)]
    template: IndexTemplate,
    /// Print the index's documents after the last event.
    #[arg(long)]
    show: bool,
    /// Seconds each invocation may take, as a Lambda timeout.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let args = Args::parse();
    let config = Config::from_env()?;
    let patterns = config.router.index_patterns();
    let indexer = Indexer::new(config).await?;
    if args.apply_template {
        // The template for every index the routes write to; fixed names created now.
        for pattern in &patterns {
            let name = format!(
                "{}-template",
                pattern.replace('*', "").trim_end_matches(['-', '_', '.'])
            );
            let write = &indexer.config.write;
            template::apply(
                &indexer.opensearch,
                args.template,
                &name,
                pattern,
                Some(write),
            )
            .await?;
            if !pattern.contains('*') {
                template::create_index(&indexer.opensearch, pattern).await?;
                // An index that existed before must already be written this way.
                template::record_or_check(&indexer.opensearch, pattern, write, true).await?;
            }
            println!("template {name} applies to {pattern}");
        }
    }
    for path in &args.events {
        let payload =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout);
        let (response, summary) = indexer.handle(&payload, deadline).await?;
        println!("{}: {}", path.display(), serde_json::to_string(&response)?);
        println!("  {}", summary.outcome_line());
    }
    if args.show {
        for index in patterns.iter().filter(|p| !p.contains('*')) {
            show(&indexer, index).await?;
        }
    }
    Ok(())
}

async fn show(indexer: &Indexer, index: &str) -> anyhow::Result<()> {
    let docs = verify::documents(&indexer.opensearch, index).await?;
    println!("\n{} document(s) in {index}:", docs.len());
    for (id, text) in docs.iter().take(100) {
        let shown = if text.len() > 300 {
            format!(
                "{}… ({} bytes)",
                &text[..text.floor_char_boundary(300)],
                text.len()
            )
        } else {
            text.clone()
        };
        println!("  {id}: {shown}");
    }
    Ok(())
}
