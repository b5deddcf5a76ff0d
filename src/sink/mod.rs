//! The sink: everything that talks to OpenSearch.
//!
//! - [`transport`]: the only HTTP to OpenSearch.
//! - [`sigv4`]: signing requests for Amazon OpenSearch Service.
//! - [`dispatch`]: bodies in flight under adaptive concurrency, retried until the deadline.
//! - [`backoff`]: exponential backoff with full jitter; the only sleep.
//! - [`quarantine`]: records no index can accept, kept durably with their payload.
//! - [`template`]: the index template, embedded; creating indexes from it.
pub mod backoff;
pub mod dispatch;
pub mod quarantine;
pub mod sigv4;
pub mod template;
pub mod transport;
