//! The pure pipeline: a stream record becomes documents, documents become `_bulk` bodies, and
//! bulk responses become outcomes. No I/O.
//!
//! - [`convert`]: DynamoDB JSON image → exact document JSON, streamed, no value tree; a
//!   strict byte-level fast path (`convert::fast`), the serde walk for the rest.
//! - [`docid`]: key attributes → document `_id`, injective, hashed past 512 bytes.
//! - [`change`]: a stream batch's records as they arrive, and the changes planned from them (one
//!   bulk action per document id, its NDJSON lines).
//! - [`plan`]: stream batch → one change per document id (last change wins): keys, routes,
//!   conversion, versions checked.
//! - [`version`]: where versions come from, their OpenSearch version type, which change wins.
//! - `event`: the one-pass reading of a stream event (each record planned as it is read, its
//!   NewImage converted where the reading meets it).
//! - [`bulk`]: changes → byte-bounded NDJSON bodies; `_bulk` responses → outcomes by position.
//! - [`routing`]: which index an item goes to (`OPENSEARCH_INDEX` with `{table}`, `ROUTES`).
//! - [`projection`]: which attributes reach the document (`EXCLUDE_`/`INCLUDE_ATTRIBUTES`).
//! - [`metadata`]: stream metadata fields in documents (`METADATA_FIELDS`).
//! - `scan`: byte-level JSON scanning (ends of strings, eight bytes at a time, and of values)
//!   for the fast paths.
//!
//! A setting the pipeline parses (routes, projection, metadata) that is bad is a
//! [`SettingError`] naming the variable; `config` wraps it.
pub mod bulk;
pub mod change;
pub mod convert;
pub mod docid;
pub(crate) mod event;
pub mod metadata;
pub mod plan;
pub mod projection;
pub mod routing;
pub(crate) mod scan;
pub mod version;

/// A setting of routing, projection or metadata that cannot be used: the variable it came from
/// and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {reason}")]
pub struct SettingError {
    pub variable: &'static str,
    pub reason: String,
}

impl SettingError {
    pub fn new(variable: &'static str, reason: impl Into<String>) -> SettingError {
        SettingError {
            variable,
            reason: reason.into(),
        }
    }
}
