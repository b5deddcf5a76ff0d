//! The whole pipeline on one machine: a table with a stream, a few hundred changes, the
//! event-source runner delivering them to the handler, and a check that the index equals the
//! table. `infra/demo.sh` starts the local servers and runs this.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue as A, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, StreamSpecification, StreamViewType,
};
use clap::Parser;
use serde::Serialize;
use stream_indexer::config::Config;
use stream_indexer::handler::Indexer;
use stream_indexer::sink::transport::Method;
use stream_indexer::tools::runner::{self, InProcess, Settings};
use stream_indexer::{
    sink::template,
    telemetry,
    tools::{aws, verify},
};

/// Create a table with a stream, write changes, deliver the stream, compare table and index.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// DynamoDB endpoint (a local server).
    #[arg(long, env = "DYNAMODB_ENDPOINT")]
    endpoint_url: Option<String>,
    /// Table to create (dropped first if it exists).
    #[arg(long, default_value = "demo-items")]
    table: String,
    /// Items to write before updates and deletes.
    #[arg(long, default_value_t = 300)]
    items: usize,
    /// Stop after writing the changes: leave the stream for the runner (or `cargo lambda`).
    #[arg(long)]
    write_only: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
    let args = Args::parse();
    let config = Config::from_env()?;
    let index = config
        .router
        .fixed_default()
        .filter(|_| config.router.is_single())
        .context("the demo writes to one index: set OPENSEARCH_INDEX (no {table}) and no ROUTES")?
        .to_string();
    let indexer = Indexer::new(config).await?;
    let sdk = aws::sdk_config(args.endpoint_url.as_deref()).await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);

    println!(
        "1. table {} with a NEW_AND_OLD_IMAGES stream, index {index} from the template",
        args.table
    );
    let _ = ddb.delete_table().table_name(&args.table).send().await;
    let stream_arn = create_table(&ddb, &args.table).await?;
    let _ = indexer
        .opensearch
        .request(
            Method::Delete,
            &format!("/{index}"),
            None,
            Duration::from_secs(30),
        )
        .await;
    template::apply(
        &indexer.opensearch,
        template::IndexTemplate::default(),
        &format!("{index}-template"),
        &index,
        Some(&indexer.config.write),
    )
    .await?;
    template::create_index(&indexer.opensearch, &index).await?;

    let (puts, updates, deletes) = write_changes(&ddb, &args.table, args.items).await?;
    println!(
        "2. wrote {puts} items, updated {updates}, deleted {deletes} (every attribute type, type drift, two items near 400 KB)"
    );
    if args.write_only {
        println!(
            "   the stream of table {} is left for the runner to deliver",
            args.table
        );
        return Ok(());
    }

    let started = Instant::now();
    let streams = aws_sdk_dynamodbstreams::Client::new(&sdk);
    let settings = Settings {
        batch_size: 100,
        batching_window: Duration::from_millis(500),
        trim_horizon: true,
        max_retry_attempts: Some(5),
        bisect: true,
        stop_when_idle: Some(Duration::from_secs(1)),
        retry_backoff: Settings::RETRY_BACKOFF,
    };
    let function = InProcess::new(&indexer, Duration::from_secs(60));
    let report = runner::run(&streams, &stream_arn, &function, &settings).await?;
    println!(
        "3. stream drained in {:.1} s: {} invocations, {} records delivered, {} completed, {} re-delivered, {} given up",
        started.elapsed().as_secs_f64(),
        report.invocations,
        report.delivered,
        report.completed,
        report.redelivered,
        report.gave_up
    );

    let c = verify::compare(&indexer, &ddb, &args.table).await?;
    let query =
        br#"{"size":3,"query":{"match":{"tags":"blue"}},"_source":["pk","sk","price","tags"]}"#
            .to_vec();
    let (_, body) = indexer
        .opensearch
        .request(
            Method::Post,
            &format!("/{index}/_search"),
            Some(query),
            Duration::from_secs(30),
        )
        .await?;
    let res: serde_json::Value = serde_json::from_slice(&body)?;
    println!(
        "4. sample search (tags: blue), {} hits, first three:",
        res["hits"]["total"]["value"]
    );
    for hit in res["hits"]["hits"].as_array().into_iter().flatten() {
        println!("   {} {}", hit["_id"], hit["_source"]);
    }
    println!("5. table versus index (verify): {}", c.summary_line());
    anyhow::ensure!(c.equal(), "the index differs from the table: {c:?}");
    println!("   the index equals the table, every value compared exactly");
    Ok(())
}

async fn create_table(ddb: &aws_sdk_dynamodb::Client, table: &str) -> anyhow::Result<String> {
    let key = |name: &str, kind| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
    };
    let def = |name: &str, kind| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(kind)
            .build()
    };
    let out = ddb
        .create_table()
        .table_name(table)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .attribute_definitions(def("pk", ScalarAttributeType::S)?)
        .attribute_definitions(def("sk", ScalarAttributeType::N)?)
        .billing_mode(BillingMode::PayPerRequest)
        .stream_specification(
            StreamSpecification::builder()
                .stream_enabled(true)
                .stream_view_type(StreamViewType::NewAndOldImages)
                .build()?,
        )
        .send()
        .await
        .with_context(|| format!("CreateTable {table}"))?;
    out.table_description
        .and_then(|t| t.latest_stream_arn)
        .context("the table has no stream")
}

/// Puts `n` items, then updates a quarter and deletes a tenth of them. A small deterministic
/// generator keeps the demo reproducible without a random-number dependency.
async fn write_changes(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    n: usize,
) -> anyhow::Result<(usize, usize, usize)> {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let colors = ["blue", "green", "red", "black"];
    let item = |i: usize, version: u64, r: u64| -> anyhow::Result<HashMap<String, A>> {
        let color = colors[(r % 4) as usize];
        let product = Product {
            pk: format!("product#{i:04}"),
            sk: (i % 7) as u64,
            name: format!("Prodüct {i} «{color}»"),
            // Type drift, as schemaless tables have it: some prices are text, some stock
            // counts booleans, and the history list mixes strings, numbers and booleans.
            price: if i % 9 == 4 {
                Price::Text("on request")
            } else {
                Price::Amount(format!("{}.{:02}", r % 1000, r % 100).parse()?)
            },
            stock: if i % 13 == 5 {
                Stock::Flag(false)
            } else {
                Stock::Count((r % 5000) as i64 - 100)
            },
            active: !r.is_multiple_of(3),
            discontinued: None,
            thumbnail: Binary(r.to_le_bytes().repeat(4)),
            tags: vec![color.into(), format!("batch-{}", i / 50)],
            sizes: vec![36.0, 38.5, 42.0],
            checksums: vec![Binary(vec![1, 2, 3]), Binary(vec![(r % 256) as u8])],
            history: vec![
                Entry::Text(format!("v{version}")),
                Entry::Number(version),
                Entry::Flag(version == 1),
            ],
            dimensions: Dimensions {
                w: r % 300,
                unit: "cm",
                inner: Inner {
                    fragile: r.is_multiple_of(2),
                },
            },
            version,
            manual: (i % 150 == 7).then(|| "§ ".repeat(380 * 1024 / 3)),
        };
        let mut item: HashMap<String, A> = serde_dynamo::to_item(&product)?;
        // Numbers at DynamoDB's edges go in as the SDK's values: through serde they would be an
        // f64 (or a u128, which serde_dynamo does not take), losing digits or their text.
        item.insert(
            "precise".into(),
            A::N(format!("1234567890123456789012345678901234567{}", r % 10)),
        );
        item.insert("tiny".into(), A::N(format!("{}E-130", 1 + r % 9)));
        item.insert("huge".into(), A::N(format!("{}E+125", 1 + r % 9)));
        Ok(item)
    };
    for i in 0..n {
        let r = next();
        ddb.put_item()
            .table_name(table)
            .set_item(Some(item(i, 1, r)?))
            .send()
            .await
            .context("PutItem")?;
    }
    let (mut updates, mut deletes) = (0, 0);
    for i in (0..n).step_by(4) {
        let r = next();
        ddb.put_item()
            .table_name(table)
            .set_item(Some(item(i, 2, r)?))
            .send()
            .await
            .context("PutItem")?;
        updates += 1;
    }
    for i in (3..n).step_by(10) {
        ddb.delete_item()
            .table_name(table)
            .key("pk", A::S(format!("product#{i:04}")))
            .key("sk", A::N(format!("{}", i % 7)))
            .send()
            .await
            .context("DeleteItem")?;
        deletes += 1;
    }
    Ok((n, updates, deletes))
}

/// A demo item, written with serde_dynamo.
#[derive(Serialize)]
struct Product {
    pk: String,
    sk: u64,
    name: String,
    price: Price,
    stock: Stock,
    active: bool,
    /// `NULL`.
    discontinued: Option<String>,
    thumbnail: Binary,
    #[serde(with = "serde_dynamo::string_set")]
    tags: Vec<String>,
    #[serde(with = "serde_dynamo::number_set")]
    sizes: Vec<f64>,
    #[serde(with = "serde_dynamo::binary_set")]
    checksums: Vec<Binary>,
    history: Vec<Entry>,
    dimensions: Dimensions,
    version: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    manual: Option<String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum Price {
    Amount(f64),
    Text(&'static str),
}

#[derive(Serialize)]
#[serde(untagged)]
enum Stock {
    Count(i64),
    Flag(bool),
}

#[derive(Serialize)]
#[serde(untagged)]
enum Entry {
    Text(String),
    Number(u64),
    Flag(bool),
}

#[derive(Serialize)]
struct Dimensions {
    w: u64,
    unit: &'static str,
    #[serde(rename = "box")]
    inner: Inner,
}

#[derive(Serialize)]
struct Inner {
    fragile: bool,
}

/// Bytes serde_dynamo writes as a binary (`B`), not as a list of numbers.
struct Binary(Vec<u8>);

impl Serialize for Binary {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}
