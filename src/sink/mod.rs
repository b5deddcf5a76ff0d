//! The sink: everything that talks to OpenSearch.
//!
//! - [`transport`]: the only HTTP to OpenSearch.
//! - [`sigv4`]: signing requests for Amazon OpenSearch Service.
//! - [`dispatch`]: bodies in flight under adaptive concurrency, retried until the deadline.
//! - [`backoff`]: exponential backoff with full jitter; the only sleep.
//! - [`quarantine`]: records no index can accept, kept durably with their payload.
//! - [`template`]: the index templates, embedded; creating indexes from them; the write
//!   settings an index records.
//! - [`gc_deletes`]: how long an index remembers deletes (`index.gc_deletes`).
pub mod backoff;
pub mod dispatch;
pub mod gc_deletes;
pub mod quarantine;
pub mod sigv4;
pub mod template;
pub mod transport;
