//! What the benches share: stream records and table items of ~1 KB, filling the table, CPU
//! time.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Instant;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue as A, BillingMode, KeySchemaElement, KeyType, PutRequest,
    ScalarAttributeType, WriteRequest,
};
use futures::stream::{self, StreamExt};

/// (CPU seconds, user + system; peak RSS in KiB) of process `pid` (`"self"`: this one), from
/// /proc on Linux; `None` elsewhere or once the process is gone.
pub fn usage(pid: &str) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; 12 and 13 after the ")".
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(((ticks(11)? + ticks(12)?) / 100.0, hwm))
}

/// CPU time of process `pid` in nanoseconds, user + system, summed over its live threads from
/// `/proc/{pid}/task/*/schedstat` (the scheduler's own clock; `/proc/{pid}/stat` counts in
/// 10 ms ticks, too coarse for a difference of a few hundred ms). A thread that has exited is
/// no longer counted, so use it for processes whose threads live as long as they do; `None`
/// once the process is gone.
pub fn cpu_ns(pid: &str) -> Option<u64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let total = tasks
        .flatten()
        // A thread may end between the listing and the read: it is skipped.
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    Some(total)
}

/// This process's CPU time in seconds; 0 where /proc is missing.
pub fn cpu_secs() -> f64 {
    usage("self").map_or(0.0, |u| u.0)
}

/// The benchmark table and where the servers are (`BENCH_ITEMS`, `DYNAMODB_ENDPOINT`,
/// `OPENSEARCH_URL`; the local servers' ports by default).
pub struct Bench {
    pub n: usize,
    pub endpoint: String,
    pub os_url: String,
    pub ddb: aws_sdk_dynamodb::Client,
    pub table: String,
}

/// Reads the settings and fills the table `bench-<n>` unless it exists.
pub async fn bench_table() -> anyhow::Result<Bench> {
    let n = bench_items();
    let endpoint =
        std::env::var("DYNAMODB_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:8000".into());
    let os_url = std::env::var("OPENSEARCH_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into());
    let sdk = stream_indexer::tools::aws::sdk_config(Some(&endpoint)).await;
    let ddb = aws_sdk_dynamodb::Client::new(&sdk);
    let table = format!("bench-{n}");
    populate(&ddb, &table, n).await?;
    Ok(Bench {
        n,
        endpoint,
        os_url,
        ddb,
        table,
    })
}

/// `BENCH_ITEMS` (default 100,000).
pub fn bench_items() -> usize {
    std::env::var("BENCH_ITEMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

/// The function's configuration for `index` on `os_url`.
pub fn config(os_url: &str, index: &str) -> anyhow::Result<stream_indexer::config::Config> {
    let vars = [("OPENSEARCH_URL", os_url), ("OPENSEARCH_INDEX", index)];
    Ok(stream_indexer::config::Config::from_lookup(|k| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    })?)
}

pub fn item(i: usize) -> HashMap<String, A> {
    HashMap::from([
        ("pk".to_string(), A::S(format!("customer#{i:07}"))),
        (
            "name".to_string(),
            A::S(format!("Customer {i} with a display name")),
        ),
        ("email".to_string(), A::S(format!("c{i}@example.com"))),
        ("balance".to_string(), A::N(format!("{i}.{:02}", i % 100))),
        ("score".to_string(), A::N(format!("0.{i}7"))),
        ("active".to_string(), A::Bool(!i.is_multiple_of(3))),
        (
            "avatar".to_string(),
            A::B(Blob::new(vec![(i % 251) as u8; 48])),
        ),
        (
            "tags".to_string(),
            A::Ss(vec!["gold".into(), format!("cohort-{}", i % 12)]),
        ),
        (
            "address".to_string(),
            A::M(HashMap::from([
                ("city".to_string(), A::S("Zürich".into())),
                ("zip".to_string(), A::N("8001".into())),
            ])),
        ),
    ])
}

/// Creates `table` (key `pk`) with `n` items from [`item`], unless it exists already.
pub async fn populate(ddb: &aws_sdk_dynamodb::Client, table: &str, n: usize) -> anyhow::Result<()> {
    if ddb.describe_table().table_name(table).send().await.is_err() {
        ddb.create_table()
            .table_name(table)
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("pk")
                    .key_type(KeyType::Hash)
                    .build()?,
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("pk")
                    .attribute_type(ScalarAttributeType::S)
                    .build()?,
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await?;
        let t = Instant::now();
        let chunks: Vec<Vec<usize>> = (0..n)
            .collect::<Vec<_>>()
            .chunks(25)
            .map(<[usize]>::to_vec)
            .collect();
        stream::iter(chunks)
            .map(|chunk| {
                let (ddb, table) = (ddb.clone(), table.to_string());
                async move {
                    let writes: Vec<WriteRequest> = chunk
                        .iter()
                        .map(|&i| {
                            WriteRequest::builder()
                                .put_request(
                                    PutRequest::builder()
                                        .set_item(Some(item(i)))
                                        .build()
                                        .unwrap(),
                                )
                                .build()
                        })
                        .collect();
                    ddb.batch_write_item()
                        .request_items(table, writes)
                        .send()
                        .await
                        .unwrap();
                }
            })
            .buffer_unordered(8)
            .collect::<Vec<()>>()
            .await;
        println!("populated {n} items in {:.1} s", t.elapsed().as_secs_f64());
    }

    Ok(())
}

/// One record whose item is ~1 KB of DynamoDB JSON with a mix of attribute types; with
/// `old_image` the stream is NEW_AND_OLD_IMAGES and the record carries the item twice.
pub fn record(i: usize, old_image: bool) -> String {
    let r = format!(
        r#"{{"eventID":"e{i}","eventName":"MODIFY","eventVersion":"1.1","eventSource":"aws:dynamodb","awsRegion":"eu-west-1","dynamodb":{{"ApproximateCreationDateTime":1763800000,"Keys":{{"pk":{{"S":"customer#{i:08}"}},"sk":{{"N":"{i}"}}}},"NewImage":{{"pk":{{"S":"customer#{i:08}"}},"sk":{{"N":"{i}"}},"name":{{"S":"Customer number {i} with a longer display name"}},"email":{{"S":"customer{i}@example.com"}},"balance":{{"N":"1234567890123456789.{i:06}"}},"score":{{"N":"0.{i}7"}},"active":{{"BOOL":true}},"deleted_at":{{"NULL":true}},"avatar":{{"B":"iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="}},"tags":{{"SS":["gold","newsletter","beta-tester"]}},"lucky":{{"NS":["7","13","42"]}},"address":{{"M":{{"street":{{"S":"{i} Long Street Name Avenue"}},"city":{{"S":"Zürich"}},"zip":{{"S":"8001"}},"geo":{{"M":{{"lat":{{"N":"47.376887"}},"lon":{{"N":"8.541694"}}}}}}}}}},"orders":{{"L":[{{"M":{{"id":{{"S":"o-{i}-1"}},"total":{{"N":"19.99"}}}}}},{{"M":{{"id":{{"S":"o-{i}-2"}},"total":{{"N":"5E+2"}}}}}}]}},"notes":{{"S":"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua. \"quoted\" \\ text"}}}},"SequenceNumber":"4{i:020}","SizeBytes":900,"StreamViewType":"NEW_IMAGE"}},"eventSourceARN":"arn:aws:dynamodb:eu-west-1:123456789012:table/customers/stream/2026-11-01T00:00:00.000"}}"#
    );
    if !old_image {
        return r;
    }
    // The old image: the same item before the change.
    let start = r.find("\"NewImage\":").unwrap();
    let end = r.find(",\"SequenceNumber\"").unwrap();
    let old = r[start..end]
        .replacen("NewImage", "OldImage", 1)
        .replace("true", "false");
    r.replacen(
        ",\"SequenceNumber\"",
        &format!(",{old},\"SequenceNumber\""),
        1,
    )
    .replace("NEW_IMAGE", "NEW_AND_OLD_IMAGES")
}
