//! The operator tools' library side: copying a table in, checking and repairing the index,
//! re-driving quarantined records, driving a stream locally.
//!
//! - [`backfill`]: parallel, resumable, rate-limited scan into the index beside the live stream;
//!   `backfill::from_export` loads a DynamoDB export instead, `backfill::worker` the same as
//!   steps for the Step Functions state machine (the `export-loader` function).
//! - [`export`]: DynamoDB exports in S3: manifests, data files streamed as lines, requesting one.
//! - [`rebuild`]: zero-downtime rebuilds behind a read alias and a write alias.
//! - [`verify`]: table versus index both ways, values exact, bounded memory; repair with
//!   read-time versions.
//! - [`replay`]: re-drives quarantined records.
//! - [`runner`]: polls a stream and invokes the function as Lambda's event source mapping does.
//! - [`table`]: the table's key schema, size and scan segments; items read back by key
//!   (consistent, fail-closed), for verify and replay.
//! - [`read_time`]: items read from the table as a stream batch at read-time versions (the
//!   backfill, verify's repair, replay).
//! - [`rate`]: the read rates the tools keep to (a token bucket).
//! - [`aws`], [`ddb_json`]: AWS SDK configuration; SDK attribute values → DynamoDB JSON.
pub mod aws;
pub mod backfill;
pub mod ddb_json;
pub mod export;
pub mod rate;
pub mod read_time;
pub mod rebuild;
pub mod replay;
pub mod runner;
pub mod table;
pub mod verify;
