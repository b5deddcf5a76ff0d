//! Polls a DynamoDB stream and invokes the function the way Lambda's event source mapping does.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use stream_indexer::config::Config;
use stream_indexer::handler::Indexer;
use stream_indexer::sink::backoff::Backoff;
use stream_indexer::tools::runner::{self, InProcess, InvokeApi, Settings};
use stream_indexer::{telemetry, tools::aws};

/// Deliver a DynamoDB stream to the function, as Lambda's event source mapping would.
///
/// In-process (default) the handler runs here with the OPENSEARCH_* configuration; with
/// --invoke-url it is invoked over the Lambda Invoke API (e.g. `cargo lambda watch`).
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The table whose stream to read (its latest stream).
    #[arg(long, required_unless_present = "stream_arn")]
    table: Option<String>,
    /// The stream ARN, instead of --table.
    #[arg(long)]
    stream_arn: Option<String>,
    /// DynamoDB endpoint (a local server); default: the AWS endpoint of the configured region.
    #[arg(long, env = "DYNAMODB_ENDPOINT")]
    endpoint_url: Option<String>,
    /// Records per invocation (BatchSize), 1..=10000.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=10000))]
    batch_size: u16,
    /// Seconds to gather a batch (MaximumBatchingWindowInSeconds), 0..=300.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=300))]
    batching_window: u16,
    /// Start at the oldest record (TRIM_HORIZON) or only new ones (LATEST).
    #[arg(long, default_value = "trim-horizon", value_parser = ["trim-horizon", "latest"])]
    starting_position: String,
    /// Retries of a failing batch before giving it up (MaximumRetryAttempts); -1 = forever.
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    max_retry_attempts: i64,
    /// Split a failing batch in halves before retrying (BisectBatchOnFunctionError).
    #[arg(long)]
    bisect: bool,
    /// Stop after the stream has been drained and idle this many seconds; default: run forever.
    #[arg(long)]
    stop_when_idle: Option<u64>,
    /// Longest wait in seconds between retries of a batch that keeps failing (the wait starts
    /// at 0.5 s and doubles).
    #[arg(long, default_value_t = 30)]
    max_retry_delay: u64,
    /// Function timeout per invocation in seconds (in-process).
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Invoke a function over the Lambda Invoke API at this URL instead of in-process.
    #[arg(long)]
    invoke_url: Option<String>,
    /// Function name for --invoke-url.
    #[arg(long, default_value = "stream-indexer")]
    function_name: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let args = Args::parse();
    let sdk = aws::sdk_config(args.endpoint_url.as_deref()).await;
    let stream_arn = match (&args.stream_arn, &args.table) {
        (Some(arn), _) => arn.clone(),
        (None, Some(table)) => aws_sdk_dynamodb::Client::new(&sdk)
            .describe_table()
            .table_name(table)
            .send()
            .await
            .with_context(|| format!("DescribeTable {table}"))?
            .table
            .and_then(|t| t.latest_stream_arn)
            .with_context(|| format!("table {table} has no stream"))?,
        (None, None) => unreachable!("clap requires one"),
    };
    let settings = Settings {
        batch_size: args.batch_size as usize,
        batching_window: Duration::from_secs(args.batching_window as u64),
        trim_horizon: args.starting_position == "trim-horizon",
        max_retry_attempts: u32::try_from(args.max_retry_attempts).ok(),
        bisect: args.bisect,
        stop_when_idle: args.stop_when_idle.map(Duration::from_secs),
        retry_backoff: Backoff {
            max: Duration::from_secs(args.max_retry_delay),
            ..Settings::RETRY_BACKOFF
        },
    };
    let streams = aws_sdk_dynamodbstreams::Client::new(&sdk);
    let report = match &args.invoke_url {
        Some(url) => {
            let f = InvokeApi {
                endpoint: url.clone(),
                function_name: args.function_name.clone(),
                client: reqwest::Client::new(),
            };
            runner::run(&streams, &stream_arn, &f, &settings).await?
        }
        None => {
            let indexer = Indexer::new(Config::from_env()?).await?;
            let f = InProcess::new(&indexer, Duration::from_secs(args.timeout));
            let report = runner::run(&streams, &stream_arn, &f, &settings).await?;
            println!("{}", f.totals().outcome_line());
            report
        }
    };
    println!(
        "invocations {} delivered {} completed {} partial-failures {} redelivered {} function-errors {} bisections {} gave-up {}",
        report.invocations,
        report.delivered,
        report.completed,
        report.partial_failures,
        report.redelivered,
        report.function_errors,
        report.bisections,
        report.gave_up
    );
    for seq in &report.gave_up_sequence_numbers {
        println!("gave up: {seq}");
    }
    if report.gave_up > 0 {
        std::process::exit(1);
    }
    Ok(())
}
