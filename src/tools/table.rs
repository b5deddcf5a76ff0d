//! Items read back by key, for the tools that must see the table as it is now before they write
//! (verify, replay): consistent `BatchGetItem`, throttled keys asked again, and any answer that
//! does not match the request refused. A tool deletes a document when its item is absent, so an
//! answer it cannot tie to a key it asked for must never read as "no item".

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, KeysAndAttributes, ReturnConsumedCapacity};

use crate::sink::backoff::Backoff;
use crate::tools::backfill::RateLimiter;

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

    /// Which asked-for key `item` (an item, or a key) has, exactly; an item with any other key
    /// is an error.
    fn position_of(&self, item: &Item, keys: &[&Item]) -> Result<usize, ReadError> {
        let key: Option<Item> = self
            .key_names
            .iter()
            .map(|n| item.get(n).map(|v| (n.clone(), v.clone())))
            .collect();
        key.and_then(|key| keys.iter().position(|k| **k == key))
            .ok_or_else(|| self.fail("the answer holds an item whose key was not asked for"))
    }
}
