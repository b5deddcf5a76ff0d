//! Zero-downtime rebuilds behind two aliases: readers search `<name>`, the stream function
//! writes to `<name>-write`. A rebuild creates `<name>-<timestamp>` from the template, moves
//! `<name>-write` to it first (so every stream change from then on lands there), backfills it,
//! then moves `<name>` to it in one atomic alias action. The old index stays for rollback.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::sink::transport::Method;
use serde_json::json;

use crate::config::WriteSettings;
use crate::sink::template::{self, IndexTemplate};
use crate::sink::transport::{OpenSearch, RequestError};

const T: Duration = Duration::from_secs(60);

/// The alias the stream function writes to for a rebuildable index `name`.
pub fn write_alias(name: &str) -> String {
    format!("{name}-write")
}

/// A new index name `<name>-<yyyymmddhhmmss>` (UTC).
pub fn new_index_name(name: &str, now: SystemTime) -> String {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{name}-{y:04}{m:02}{d:02}{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Indices an alias points to (empty if the alias does not exist).
pub async fn alias_targets(os: &OpenSearch, alias: &str) -> Result<Vec<String>, RequestError> {
    match os
        .request(Method::Get, &format!("/_alias/{alias}"), None, T)
        .await
    {
        Ok((_, body)) => {
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let mut names: Vec<String> = v
                .as_object()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            names.sort();
            Ok(names)
        }
        Err(e) if e.status == Some(404) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

async fn is_concrete_index(os: &OpenSearch, name: &str) -> Result<bool, RequestError> {
    if !alias_targets(os, name).await?.is_empty() {
        return Ok(false);
    }
    match os.request(Method::Head, &format!("/{name}"), None, T).await {
        Ok(_) => Ok(true),
        Err(e) if e.status == Some(404) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Moves `alias` to `index` in one atomic action, removing it from every other index.
async fn point_alias(
    os: &OpenSearch,
    alias: &str,
    index: &str,
    write: bool,
) -> Result<(), RequestError> {
    let mut actions = Vec::new();
    for old in alias_targets(os, alias).await? {
        if old != index {
            actions.push(json!({"remove": {"index": old, "alias": alias}}));
        }
    }
    let mut add = json!({"add": {"index": index, "alias": alias}});
    if write {
        add["add"]["is_write_index"] = json!(true);
    }
    actions.push(add);
    let body = json!({ "actions": actions }).to_string().into_bytes();
    os.request(Method::Post, "/_aliases", Some(body), T)
        .await
        .map(|_| ())
}

/// Errors a rebuild can meet before it starts.
#[derive(Debug, thiserror::Error)]
pub enum RebuildError {
    #[error(
        "{0} is an index, not an alias: a rebuild needs readers on alias {0} and the function on alias {1}"
    )]
    NotAnAlias(String, String),
    #[error("no previous index of {0} to roll back to")]
    NothingToRollBack(String),
    #[error(transparent)]
    Request(#[from] RequestError),
}

/// Creates the new index from the template (with `gc_deletes` raised for the backfill) and
/// moves the write alias to it. Returns the new index's name.
pub async fn start(
    os: &OpenSearch,
    kind: IndexTemplate,
    name: &str,
    gc_deletes: &str,
    settings: Option<&WriteSettings>,
) -> Result<String, RebuildError> {
    let write = write_alias(name);
    for alias in [name, write.as_str()] {
        if is_concrete_index(os, alias).await? {
            return Err(RebuildError::NotAnAlias(name.to_string(), write.clone()));
        }
    }
    let index = new_index_name(name, SystemTime::now());
    // The new index records the settings it is built with: a rebuild is how they change.
    template::apply(
        os,
        kind,
        &format!("{name}-rebuild"),
        &format!("{name}-*"),
        settings,
    )
    .await?;
    let body = json!({"settings": {"index": {"gc_deletes": gc_deletes}}})
        .to_string()
        .into_bytes();
    os.request(Method::Put, &format!("/{index}"), Some(body), T)
        .await?;
    point_alias(os, &write, &index, true).await?;
    Ok(index)
}

/// Moves readers to `index` in one atomic action and restores the default `gc_deletes`.
/// If no index had the read alias yet, it is created.
pub async fn finish(os: &OpenSearch, name: &str, index: &str) -> Result<Vec<String>, RebuildError> {
    let previous = alias_targets(os, name).await?;
    point_alias(os, name, index, false).await?;
    let body = json!({"index": {"gc_deletes": null}})
        .to_string()
        .into_bytes();
    os.request(Method::Put, &format!("/{index}/_settings"), Some(body), T)
        .await?;
    Ok(previous)
}

/// Points both aliases back at the index before the current one (by name, i.e. by time).
/// Returns (from, to). Changes the stream wrote since the rebuild started are only in the
/// newer index: run a backfill into the restored one to catch up.
pub async fn rollback(os: &OpenSearch, name: &str) -> Result<(String, String), RebuildError> {
    let current = alias_targets(os, name)
        .await?
        .pop()
        .ok_or_else(|| RebuildError::NothingToRollBack(name.to_string()))?;
    let (_, body) = os
        .request(
            Method::Get,
            &format!("/_cat/indices/{name}-*?format=json&h=index"),
            None,
            T,
        )
        .await?;
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let mut indices: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["index"].as_str().map(str::to_string))
        .filter(|i| {
            i.len() == name.len() + 15 && i[name.len() + 1..].bytes().all(|b| b.is_ascii_digit())
        })
        .collect();
    indices.sort();
    let previous = indices
        .iter()
        .rfind(|i| **i < current)
        .cloned()
        .ok_or_else(|| RebuildError::NothingToRollBack(name.to_string()))?;
    point_alias(os, name, &previous, false).await?;
    point_alias(os, &write_alias(name), &previous, true).await?;
    Ok((current, previous))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_index_names_sort_by_time() {
        let t = UNIX_EPOCH + Duration::from_secs(1_763_780_645); // 2025-11-22 03:04:05 UTC
        assert_eq!(new_index_name("items", t), "items-20251122030405");
        assert_eq!(new_index_name("items", UNIX_EPOCH), "items-19700101000000");
        assert!(new_index_name("x", t) < new_index_name("x", t + Duration::from_secs(1)));
    }
}
