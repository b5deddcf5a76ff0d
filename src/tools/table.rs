//! The table as the tools read it: its key schema and size (`DescribeTable`), the scan's segments
//! for that size, and items read back by key, for the tools that must see the table as it is now
//! before they write (verify, replay): consistent `BatchGetItem`, throttled keys asked again, and
//! any answer that does not match the request refused. A tool deletes a document when its item
//! is absent, so an answer it cannot tie to a key it asked for must never read as "no item".

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, ReturnConsumedCapacity, ScalarAttributeType,
    TableDescription,
};

use crate::sink::backoff::Backoff;
use crate::tools::rate::RateLimiter;

/// An item, or a key, as the SDK holds it.
pub type Item = HashMap<String, AttributeValue>;

/// BatchGetItem takes at most 100 keys.
pub const BATCH_GET_KEYS: usize = 100;

/// Rounds of unprocessed (throttled) keys before giving up.
const ATTEMPTS: u32 = 10;

#[derive(Debug, thiserror::Error)]
#[error("BatchGetItem {table}: {reason}")]
pub struct ReadError {
    pub table: String,
    pub reason: String,
}

/// `DescribeTable` failed, or described no usable table.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DescribeError(pub String);

/// The table's key attributes and their types, in attribute-name order (the order of ids).
pub async fn key_schema(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<Vec<(String, ScalarAttributeType)>, DescribeError> {
    let t = describe(ddb, table)
        .await?
        .unwrap_or_else(|| TableDescription::builder().build());
    let types = t.attribute_definitions.unwrap_or_default();
    let mut keys = Vec::new();
    for k in t.key_schema.unwrap_or_default() {
        let kind = types
            .iter()
            .find(|d| d.attribute_name == k.attribute_name)
            .map(|d| d.attribute_type.clone())
            .ok_or_else(|| {
                DescribeError(format!(
                    "table {table}: key attribute {} has no definition",
                    k.attribute_name
                ))
            })?;
        keys.push((k.attribute_name, kind));
    }
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(keys)
}

/// The table's key attribute names, in attribute-name order.
pub async fn key_names(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<Vec<String>, DescribeError> {
    Ok(key_schema(ddb, table)
        .await?
        .into_iter()
        .map(|(n, _)| n)
        .collect())
}

/// `DescribeTable`'s description of `table`, if it gave one.
async fn describe(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<Option<TableDescription>, DescribeError> {
    let out = ddb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| {
            DescribeError(format!(
                "DescribeTable {table}: {}",
                crate::telemetry::error_chain(&e)
            ))
        })?;
    Ok(out.table)
}

/// The table's estimated item count and size in bytes (DescribeTable, updated about every 6 h).
pub async fn table_size(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<(i64, i64), DescribeError> {
    let t = describe(ddb, table)
        .await?
        .ok_or_else(|| DescribeError(format!("DescribeTable {table}: no table")))?;
    Ok((t.item_count.unwrap_or(0), t.table_size_bytes.unwrap_or(0)))
}

/// A sensible number of segments: one per 512 MiB of table, and at least twice the bulk
/// concurrency, so that while some segments wait for their page to land others are reading;
/// at most 256.
pub fn default_segments(table_size_bytes: i64, bulk_concurrency: usize) -> u32 {
    let per = 512 * 1024 * 1024;
    let floor = (2 * bulk_concurrency as u32).clamp(1, 256);
    let by_size = (table_size_bytes.max(0) / per).min(255) as u32 + 1;
    by_size.clamp(floor, 256)
}

/// Reads items of one table by key.
pub struct Reader<'a> {
    pub ddb: &'a aws_sdk_dynamodb::Client,
    pub table: &'a str,
    /// The table's key attribute names.
    pub key_names: &'a [String],
    /// Read units per second, if limited.
    pub units: Option<&'a RateLimiter>,
}

impl Reader<'_> {
    fn fail(&self, reason: impl Into<String>) -> ReadError {
        ReadError {
            table: self.table.to_string(),
            reason: reason.into(),
        }
    }

    /// One answer per key, in the keys' order: the item, or `None` when the table has no item
    /// with that key. Read consistently.
    pub async fn get(&self, keys: &[Item]) -> Result<Vec<Option<Item>>, ReadError> {
        // BatchGetItem refuses a request that names one key twice.
        let mut distinct: Vec<&Item> = Vec::with_capacity(keys.len());
        for k in keys {
            if !distinct.contains(&k) {
                distinct.push(k);
            }
        }
        let mut found: Vec<Option<Item>> = vec![None; distinct.len()];
        for (c, chunk) in distinct.chunks(BATCH_GET_KEYS).enumerate() {
            let answers = self.get_chunk(chunk).await?;
            for (i, a) in answers.into_iter().enumerate() {
                found[c * BATCH_GET_KEYS + i] = a;
            }
        }
        Ok(keys
            .iter()
            .map(|k| {
                let at = distinct
                    .iter()
                    .position(|d| *d == k)
                    .expect("every key is kept");
                found[at].clone()
            })
            .collect())
    }

    async fn get_chunk(&self, keys: &[&Item]) -> Result<Vec<Option<Item>>, ReadError> {
        let backoff = Backoff {
            base: Duration::from_millis(50),
            max: Duration::from_secs(5),
        };
        let mut answers: Vec<Option<Item>> = vec![None; keys.len()];
        let mut pending = Some(
            KeysAndAttributes::builder()
                .set_keys(Some(keys.iter().map(|k| (*k).clone()).collect()))
                .consistent_read(true)
                .build()
                .map_err(|e| self.fail(e.to_string()))?,
        );
        let mut attempt = 0;
        while let Some(request) = pending.take() {
            let res = self
                .ddb
                .batch_get_item()
                .request_items(self.table, request)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(|e| self.fail(crate::telemetry::error_chain(&e)))?;
            if let Some(limit) = self.units {
                for c in res.consumed_capacity.unwrap_or_default() {
                    if let Some(units) = c.capacity_units {
                        limit.acquire(units).await;
                    }
                }
            }
            for (table, items) in res.responses.unwrap_or_default() {
                if table != self.table {
                    return Err(self.fail(format!("the answer holds items of table {table}")));
                }
                for item in items {
                    let at = self.position_of(&item, keys)?;
                    if answers[at].replace(item).is_some() {
                        return Err(self.fail("the answer holds one key twice"));
                    }
                }
            }
            // Throttled keys come back unprocessed: ask again after a wait.
            let mut unprocessed = res.unprocessed_keys.unwrap_or_default();
            if let Some(other) = unprocessed.keys().find(|t| *t != self.table) {
                return Err(self.fail(format!("the answer leaves keys of table {other}")));
            }
            pending = unprocessed
                .remove(self.table)
                .filter(|k| !k.keys.is_empty());
            if let Some(p) = &pending {
                for key in &p.keys {
                    self.position_of(key, keys)?;
                }
                attempt += 1;
                if attempt > ATTEMPTS {
                    return Err(
                        self.fail(format!("keys still unprocessed after {ATTEMPTS} attempts"))
                    );
                }
                Backoff::wait(backoff.delay(attempt)).await;
            }
        }
        Ok(answers)
    }

    fn position_of(&self, item: &Item, keys: &[&Item]) -> Result<usize, ReadError> {
        key_position(item, self.key_names, keys)
            .ok_or_else(|| self.fail("the answer holds an item whose key was not asked for"))
    }
}

/// Which of `keys` `item` (an item, or a key) has, exactly: its `key_names` attributes, every
/// one present, equal to one requested key.
fn key_position(item: &Item, key_names: &[String], keys: &[&Item]) -> Option<usize> {
    let key: Item = key_names
        .iter()
        .map(|n| item.get(n).map(|v| (n.clone(), v.clone())))
        .collect::<Option<Item>>()?;
    keys.iter().position(|k| **k == key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_grow_with_the_table() {
        assert_eq!(default_segments(0, 4), 8);
        assert_eq!(default_segments(0, 1), 2);
        assert_eq!(default_segments(10 * 1024 * 1024 * 1024, 4), 21);
        assert_eq!(default_segments(i64::MAX, 4), 256);
    }

    #[test]
    fn an_answer_is_tied_to_a_requested_key_exactly_or_not_at_all() {
        let names = ["pk".to_string(), "sk".to_string()];
        let key = |pk: &str, sk: &str| -> Item {
            HashMap::from([
                ("pk".to_string(), AttributeValue::S(pk.into())),
                ("sk".to_string(), AttributeValue::N(sk.into())),
            ])
        };
        let (a, b) = (key("a", "1"), key("b", "1"));
        let asked = [&a, &b];
        let mut item = key("b", "1");
        item.insert("v".into(), AttributeValue::S("x".into()));
        assert_eq!(key_position(&item, &names, &asked), Some(1));
        // Another spelling of a number, another key, a missing key attribute: no key of ours.
        assert_eq!(key_position(&key("a", "1.0"), &names, &asked), None);
        assert_eq!(key_position(&key("c", "1"), &names, &asked), None);
        let mut partial = key("a", "1");
        partial.remove("sk");
        assert_eq!(key_position(&partial, &names, &asked), None);
        let mut typed = key("a", "1");
        typed.insert("sk".into(), AttributeValue::S("1".into()));
        assert_eq!(key_position(&typed, &names, &asked), None);
    }
}
