//! Keeps an OpenSearch index in step with a DynamoDB table through its stream.
//!
//! # Layout
//! - [`convert`]: DynamoDB JSON image → exact document JSON, streamed, no value tree.
pub mod backoff;
pub mod bulk;
pub mod change;
pub mod config;
pub mod convert;
pub mod dispatch;
pub mod docid;
pub mod handler;
pub mod quarantine;
pub mod replay;
pub mod telemetry;
pub mod template;
pub mod transport;
