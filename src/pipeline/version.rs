//! Versions: where a change's external version comes from (stream time, a version attribute,
//! a backfill's read time), which OpenSearch version type it is written with, and which of two
//! changes of one document wins.

use crate::pipeline::change::Change;
use crate::pipeline::convert::Decimal;

/// How far a record's `ApproximateCreationDateTime` may be ahead of this machine's clock.
/// Versions come from it, and a version from the future (milliseconds read as seconds, a forged
/// quarantine entry, a wrong clock) would make every later real change of the item a 409 and
/// pin a stale document; five minutes covers any sane clock skew between DynamoDB and Lambda.
pub const MAX_CLOCK_AHEAD_SECS: u64 = 300;

/// Where versions come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSource {
    /// The stream record's `ApproximateCreationDateTime`, in milliseconds.
    StreamTime,
    /// A top-level numeric attribute of the item.
    Attribute(String),
    /// One version for every write of the batch (the backfill: from the time of its read).
    Fixed(u64),
}

impl VersionSource {
    /// The OpenSearch version type for writes, explained in the README ("Versions").
    /// Stream time has whole seconds: two changes of one item in one second carry the same
    /// version and must both apply, in stream order, so an equal version must win
    /// (`external_gte`). A version attribute grows with every change, so an equal version is
    /// the same change and strict `external` turns duplicates into harmless 409s; it also closes
    /// the one gap `external_gte` leaves (a timed-out write the cluster applies late, after a
    /// newer change of the same second).
    pub fn version_type(&self) -> &'static str {
        match self {
            VersionSource::StreamTime | VersionSource::Fixed(_) => "external_gte",
            VersionSource::Attribute(_) => "external",
        }
    }
}

/// Whether `later` (after `earlier` in the batch, same document) replaces it: unless both carry
/// versions and the later one's is lower. Equal versions are two changes in one second of
/// stream time, and batch order is their order.
pub(crate) fn supersedes(earlier: &Change, later: &Change) -> bool {
    match (earlier.version, later.version) {
        (Some(e), Some(l)) => l >= e,
        _ => true,
    }
}

pub(crate) fn attribute_version(name: &str, text: Option<&[u8]>) -> Result<u64, String> {
    let text = text.ok_or_else(|| format!("version attribute {name} is missing"))?;
    let text = std::str::from_utf8(text).unwrap_or("");
    Decimal::parse(text)
        .and_then(|d| d.as_version())
        .ok_or_else(|| {
            format!(
                "version attribute {name} is {text:?}, not a number from 0 to 9223372036854775807"
            )
        })
}
