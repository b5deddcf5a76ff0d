//! Keeps an OpenSearch index in step with a DynamoDB table through its stream.
//!
//! # Layout
//! - [`pipeline`]: the pure part, no I/O: [`convert`](pipeline::convert) (DynamoDB JSON →
//!   exact documents), [`docid`](pipeline::docid) (keys → `_id`), [`change`](pipeline::change)
//!   (a batch's records and the changes planned from them, all their lines in one buffer),
//!   [`plan`](pipeline::plan) (stream batch → one action per id; `event` reads the batch in one
//!   pass), [`version`](pipeline::version) (where versions come from, which change wins), [`bulk`](pipeline::bulk) (NDJSON bodies, slices of that buffer
//!   where they can be; responses → outcomes),
//!   [`routing`](pipeline::routing), [`projection`](pipeline::projection),
//!   [`metadata`](pipeline::metadata).
//! - [`sink`]: OpenSearch: [`transport`](sink::transport) (the only HTTP; TLS roots compiled
//!   in, or the store `SSL_CERT_*` names; SigV4 by [`sigv4`](sink::sigv4)),
//!   [`dispatch`](sink::dispatch) (bodies in flight, retried until the deadline),
//!   [`backoff`](sink::backoff) (the only sleep), [`quarantine`](sink::quarantine),
//!   [`template`](sink::template) (the index templates, schemaless by default or typed, and
//!   the write settings each index records in its mapping `_meta`, which the function and every
//!   tool must agree with), [`gc_deletes`](sink::gc_deletes) (how long an index remembers
//!   deletes).
//! - [`handler`]: one invocation end to end (plan → deliver → quarantine → account),
//!   `batchItemFailures` and the accounting log line.
//! - [`config`]: environment configuration, validated once at cold start; the write settings
//!   (`WriteSettings`) and how two of them differ.
//! - [`metrics`]: one CloudWatch EMF document per invocation (counts, bulk latency, lag).
//! - [`redact`]: failure reasons without item values, for logs.
//! - [`lambda`]: what both functions add to `lambda_runtime`: the stream function's invocation
//!   (deadline, summary and metrics lines), panics without their message, init errors reported.
//! - [`telemetry`]: logging setup (in Lambda as its advanced logging controls say), each
//!   invocation's summary line written with its metrics line; errors with their source chains;
//!   the tools' progress bar.
//! - [`tools`]: the operator tools: [`backfill`](tools::backfill) (scan, or a DynamoDB export
//!   through [`export`](tools::export); the export-loader function's steps),
//!   [`verify`](tools::verify) (table versus index, repair), [`rebuild`](tools::rebuild),
//!   [`replay`](tools::replay) (entries re-read from the table before they are written),
//!   [`runner`](tools::runner) (a stream driven locally), and what several tools share:
//!   [`table`](tools::table) (key schema, size and scan segments; items read back by key,
//!   fail-closed), [`read_time`](tools::read_time) (items as a stream batch at read-time
//!   versions), [`rate`](tools::rate) (read rates), [`aws`](tools::aws),
//!   [`ddb_json`](tools::ddb_json). The pipeline's settings (routes, projection, metadata)
//!   fail with the pipeline's own [`SettingError`](pipeline::SettingError), which `config`
//!   wraps: imports point down.
pub mod config;
pub mod handler;
pub mod lambda;
pub mod metrics;
pub mod pipeline;
pub mod redact;
pub mod sink;
pub mod telemetry;
pub mod tools;
