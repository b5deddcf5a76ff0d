//! `index.gc_deletes`: how long an index remembers a delete (its tombstone's version). A copy
//! written with a version older than a forgotten delete brings the item back, so the backfill
//! raises it for a run, and the export load and replay refuse what is older than it.

use std::time::Duration;

use crate::sink::transport::{Method, OpenSearch, RequestError};

/// Sets `index.gc_deletes` on `index` (or resets it with `None`); returns the previous value
/// (`None` when it was the default).
pub async fn set(
    os: &OpenSearch,
    index: &str,
    value: Option<&str>,
) -> Result<Option<String>, RequestError> {
    let previous = read(os, index).await?.set;
    let body = serde_json::json!({"index": {"gc_deletes": value}});
    os.request(
        Method::Put,
        &format!("/{index}/_settings"),
        Some(body.to_string().into_bytes()),
        Duration::from_secs(30),
    )
    .await?;
    Ok(previous)
}

/// An index's `index.gc_deletes`: the value set on it, and OpenSearch's default.
pub struct GcDeletes {
    pub set: Option<String>,
    pub default: Option<String>,
}

/// Reads `index`'s `index.gc_deletes` (with the default, `include_defaults`).
pub async fn read(os: &OpenSearch, index: &str) -> Result<GcDeletes, RequestError> {
    let (_, body) = os
        .request(
            Method::Get,
            &format!("/{index}/_settings/index.gc_deletes?include_defaults=true"),
            None,
            Duration::from_secs(30),
        )
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let of = |part: &str| {
        v.as_object()
            .and_then(|m| m.values().next())
            .and_then(|s| s[part]["index"]["gc_deletes"].as_str())
            .map(str::to_string)
    };
    Ok(GcDeletes {
        set: of("settings"),
        default: of("defaults"),
    })
}

/// `index.gc_deletes` now (OpenSearch's default, 60 s, when unset). An index that does not exist
/// yet has recorded no delete at all, so its window is zero.
pub async fn window(os: &OpenSearch, index: &str) -> Result<Duration, RequestError> {
    let setting = match read(os, index).await {
        Ok(setting) => setting,
        Err(e) if e.status == Some(404) => return Ok(Duration::ZERO),
        Err(e) => return Err(e),
    };
    Ok(setting
        .set
        .or(setting.default)
        .as_deref()
        .and_then(parse_time_value)
        .unwrap_or(Duration::from_secs(60)))
}

/// An OpenSearch time value: `60s`, `12h`, `1d`, `500ms`, `90m`.
pub fn parse_time_value(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let seconds = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        "ms" => return Some(Duration::from_millis(n)),
        "micros" => return Some(Duration::from_micros(n)),
        "nanos" => return Some(Duration::from_nanos(n)),
        _ => return None,
    };
    Some(Duration::from_secs(n.checked_mul(seconds)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_values_as_opensearch_writes_them() {
        assert_eq!(parse_time_value("60s"), Some(Duration::from_secs(60)));
        assert_eq!(parse_time_value("12h"), Some(Duration::from_secs(43_200)));
        assert_eq!(parse_time_value("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_time_value("90m"), Some(Duration::from_secs(5_400)));
        assert_eq!(parse_time_value("500ms"), Some(Duration::from_millis(500)));
        for bad in ["", "12", "h", "1y", "-1s"] {
            assert_eq!(parse_time_value(bad), None, "{bad}");
        }
    }
}
