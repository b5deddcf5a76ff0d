//! Keeps an OpenSearch index in step with a DynamoDB table through its stream.
//!
//! # Layout
//! - [`config`]: environment configuration, validated once at cold start.
//! - [`convert`]: DynamoDB JSON image → exact document JSON, streamed, no value tree; a
//!   byte-level fast path (`convert::fast`) for validated images, the serde walk for the rest.
//! - [`docid`]: key attributes → document `_id`, injective, hashed past 512 bytes.
//! - [`change`]: stream batch → one versioned index/delete per document id (last change wins).
//! - [`bulk`]: changes → byte-bounded NDJSON bodies; `_bulk` responses → outcomes by position.
//! - [`transport`]: the only HTTP to OpenSearch.
//! - [`backoff`]: exponential backoff with full jitter; the only sleep.
//! - [`dispatch`]: bodies in flight under adaptive concurrency, retried until the deadline.
//! - [`routing`]: which index an item goes to (`OPENSEARCH_INDEX` with `{table}`, `ROUTES`).
//! - [`metadata`]: stream metadata fields in documents (`METADATA_FIELDS`).
//! - [`metrics`]: one CloudWatch EMF document per invocation (counts, bulk latency, lag).
//! - [`projection`]: which attributes reach the document (`EXCLUDE_`/`INCLUDE_ATTRIBUTES`).
//! - [`quarantine`]: records no index can accept, kept durably with their payload.
//! - [`redact`]: failure reasons without item values, for logs.
//! - [`handler`]: one invocation end to end, `batchItemFailures` and the accounting log line.
//! - [`replay`]: re-drives quarantined records.
//! - [`template`]: the index template, embedded.
//! - [`telemetry`]: logging setup; errors with their source chains; the tools' progress bar.
//! - [`aws`], [`ddb_json`]: AWS SDK configuration; SDK attribute values → DynamoDB JSON.
//! - [`verify`]: table versus index both ways, values exact, bounded memory; repair with read-time
//!   versions.
//! - [`backfill`]: parallel, resumable, rate-limited scan into the index beside the live stream;
//!   `backfill::from_export` loads a DynamoDB export instead, `backfill::worker` the same as
//!   steps for the Step Functions state machine (the `export-loader` function).
//! - [`export`]: DynamoDB exports in S3: manifests, data files streamed as lines, requesting one.
//! - [`rebuild`]: zero-downtime rebuilds behind a read alias and a write alias.
//! - [`runner`]: polls a stream and invokes the function as Lambda's event source mapping does.
pub mod aws;
pub mod backfill;
pub mod backoff;
pub mod bulk;
pub mod change;
pub mod config;
pub mod convert;
pub mod ddb_json;
pub mod dispatch;
pub mod docid;
pub mod export;
pub mod handler;
pub mod metadata;
pub mod metrics;
pub mod projection;
pub mod quarantine;
pub mod rebuild;
pub mod redact;
pub mod replay;
pub mod routing;
pub mod runner;
pub mod telemetry;
pub mod template;
pub mod transport;
pub mod verify;
