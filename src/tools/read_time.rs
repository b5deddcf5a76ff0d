//! Items read from the table, written as the stream would write them: read-time versions (below
//! every stream change made at or after the read, so the stream always wins) and synthetic
//! stream batches, so the backfill, verify's repair and replay go through the function's own
//! planning, conversion, ids and quarantine.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::types::AttributeValue;

use crate::pipeline::version::VersionSource;
use crate::tools::ddb_json;

/// The versions for copies of items read at `read_at` (module docs): with stream-time versions
/// `floor(read − skew)·1000 − 1`, below every stream change made at or after the read; with a
/// version attribute, the item's own. Also the `ApproximateCreationDateTime` to give the
/// copies' synthetic records.
pub fn read_versions(
    read_at: SystemTime,
    clock_skew: Duration,
    version_attribute: Option<&str>,
) -> (VersionSource, u64) {
    let read_secs = read_at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let safe_secs = read_secs.saturating_sub(clock_skew.as_secs().max(1));
    let versions = match version_attribute {
        Some(name) => VersionSource::Attribute(name.to_string()),
        None => VersionSource::Fixed((safe_secs * 1000).saturating_sub(1)),
    };
    (versions, safe_secs.saturating_sub(1))
}

/// A page as a stream batch of INSERT records: the same conversion, ids and quarantine entries
/// (with a replayable record) as the stream.
pub fn synthetic_batch(
    table: &str,
    key_names: &[String],
    items: &[HashMap<String, AttributeValue>],
    approximate_secs: u64,
) -> String {
    let mut batch = SyntheticBatch::new(table, approximate_secs);
    let (mut keys_json, mut item_json) = (String::new(), String::new());
    for item in items {
        let keys: HashMap<String, AttributeValue> = key_names
            .iter()
            .filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone())))
            .collect();
        keys_json.clear();
        ddb_json::table::write_item(&mut keys_json, &keys);
        item_json.clear();
        ddb_json::table::write_item(&mut item_json, item);
        batch.push(&keys_json, &item_json);
    }
    batch.finish()
}

/// A stream batch of INSERT records built one item at a time, from DynamoDB JSON text.
///
/// Each record's eventID (and SequenceNumber) is a digest of the table, the item's key and the
/// read's time: unique per item copy, and the same if one read is handled twice. Ids from a
/// page counter would restart with every `--resume` and make two items share a quarantine entry.
pub struct SyntheticBatch {
    out: String,
    table: String,
    /// The table's stream ARN shape as a JSON string, so that routing finds the table for
    /// `{table}`.
    arn: String,
    approximate_secs: u64,
    records: usize,
}

impl SyntheticBatch {
    pub fn new(table: &str, approximate_secs: u64) -> SyntheticBatch {
        SyntheticBatch {
            out: String::from("{\"Records\":["),
            table: table.to_string(),
            arn: serde_json::to_string(&format!(
                "arn:aws:dynamodb:::table/{table}/stream/backfill"
            ))
            .expect("string"),
            approximate_secs,
            records: 0,
        }
    }

    /// Adds an item: `keys_json` its key attributes and `item_json` the whole item, each a
    /// DynamoDB JSON object.
    pub fn push(&mut self, keys_json: &str, item_json: &str) {
        use sha2::{Digest, Sha256};
        use std::fmt::Write as _;
        if self.records > 0 {
            self.out.push(',');
        }
        self.records += 1;
        let digest = Sha256::new()
            .chain_update(self.table.as_bytes())
            .chain_update([0])
            .chain_update(keys_json.as_bytes())
            .chain_update([0])
            .chain_update(self.approximate_secs.to_be_bytes())
            .finalize();
        let id = format!("backfill-{digest:x}");
        let _ = write!(
            self.out,
            "{{\"eventID\":\"{id}\",\"eventName\":\"INSERT\",\"eventSource\":\"backfill\",\"eventSourceARN\":{},\"dynamodb\":{{\"ApproximateCreationDateTime\":{},\"SequenceNumber\":\"{id}\",\"StreamViewType\":\"NEW_IMAGE\",\"Keys\":{keys_json},\"NewImage\":{item_json}}}}}",
            self.arn, self.approximate_secs
        );
    }

    pub fn len(&self) -> usize {
        self.records
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> usize {
        self.out.len()
    }

    pub fn finish(mut self) -> String {
        self.out.push_str("]}");
        self.out
    }
}
