//! What the benches share: the benchmark table's items, filling the table, CPU time.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Instant;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue as A, BillingMode, KeySchemaElement, KeyType, PutRequest,
    ScalarAttributeType, WriteRequest,
};
use futures::stream::{self, StreamExt};

/// This process's CPU time in seconds (user + system), from /proc on Linux; 0 elsewhere.
pub fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line; 12 and 13 after the ")".
    (ticks(11) + ticks(12)) / 100.0
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
