//! The index templates (`infra/index-template.json`, `infra/index-template-typed.json`),
//! embedded so every binary applies the same, and the write settings each index records in its
//! mapping's `_meta`.
//!
//! # Which template
//! DynamoDB is schemaless: one attribute name holds a number in one item and a string or a
//! boolean in the next, and a list mixes types. OpenSearch maps a field once, from the first
//! value it sees, and refuses a later document whose value does not fit. So the default
//! ([`IndexTemplate::Schemaless`]) gives every scalar the same mapping whatever its JSON type: a
//! `keyword` (exact match, aggregations; a number or boolean by its text), a `text` sub-field
//! (full text) and a `double` sub-field with `ignore_malformed` (range queries on the values that
//! are numbers; a value that is not is left out of that sub-field and named in the document's
//! `_ignored`). No value can disagree with such a mapping, so type drift indexes; `_source`
//! keeps each value as converted. A field that is an object in one item and a scalar in
//! another still conflicts (OpenSearch cannot map one name both ways).
//! [`IndexTemplate::Typed`] maps numbers as `double` and strings as `text` with a `keyword`
//! sub-field: `price` itself is a number field, for tables whose attributes keep one type.
//!
//! # The record
//! An index says how it is written: `_meta.stream_indexer_write` holds the [`WriteSettings`]
//! (version scheme, routes, projection, metadata fields) of whoever wrote it first. A template
//! applied here carries the record, so an index created under it has it from birth; an index
//! without one gets it from the first writer that checks ([`record_or_check`]). The function
//! checks at cold start and refuses to start on a mismatch; every tool checks before it writes
//! and refuses likewise, naming each setting that differs with both values. So the versions of
//! one index always come from one scheme, and a tool never reads documents routed or projected
//! another way as drift.
//!
//! Changing a recorded setting means a new index: `rebuild` creates one under a template that
//! records the new settings, fills it and moves the alias.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{Difference, WriteSettings};
use crate::sink::transport::{Method, OpenSearch, RequestError};

/// Which index template to apply (`INDEX_TEMPLATE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum IndexTemplate {
    /// Every scalar as `keyword` with `.text` and `.number` sub-fields: type drift indexes.
    #[default]
    Schemaless,
    /// Numbers as `double`, strings as `text` with a `.keyword` sub-field: one type per name.
    Typed,
}

impl IndexTemplate {
    /// The composable index template, with `INDEX_PATTERN` where the index pattern goes.
    pub fn body(self) -> &'static str {
        match self {
            IndexTemplate::Schemaless => include_str!("../../infra/index-template.json"),
            IndexTemplate::Typed => include_str!("../../infra/index-template-typed.json"),
        }
    }
}

/// The key of the write settings in an index's mapping `_meta`.
pub const META_KEY: &str = "stream_indexer_write";

/// Time one request here may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// The template body for indices matching `pattern` (e.g. `items` or `items-*`), recording
/// `write` in the mapping's `_meta` (`None`: no record; the first writer records).
pub fn template_for(kind: IndexTemplate, pattern: &str, write: Option<&WriteSettings>) -> String {
    let mut template: serde_json::Value =
        serde_json::from_str(&kind.body().replace("INDEX_PATTERN", pattern))
            .expect("the embedded template is JSON");
    if let Some(write) = write {
        template["template"]["mappings"]["_meta"] = serde_json::json!({ META_KEY: write });
    }
    template.to_string()
}

/// Installs the template as `_index_template/{name}` for `pattern`, recording `write`.
pub async fn apply(
    os: &OpenSearch,
    kind: IndexTemplate,
    name: &str,
    pattern: &str,
    write: Option<&WriteSettings>,
) -> Result<(), RequestError> {
    let path = format!("/_index_template/{name}");
    os.request(
        Method::Put,
        &path,
        Some(template_for(kind, pattern, write).into_bytes()),
        TIMEOUT,
    )
    .await
    .map(|_| ())
}

/// Creates `index` (under whatever template matches it) unless an index or alias of that name
/// exists already.
pub async fn create_index(os: &OpenSearch, index: &str) -> Result<(), RequestError> {
    match os
        .request(Method::Head, &format!("/{index}"), None, TIMEOUT)
        .await
    {
        Ok(_) => return Ok(()),
        Err(e) if e.status == Some(404) => {}
        Err(e) => return Err(e),
    }
    match os
        .request(Method::Put, &format!("/{index}"), None, TIMEOUT)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.error_type.as_deref() == Some("resource_already_exists_exception") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Why a writer may not write to an index.
#[derive(Debug, thiserror::Error)]
pub enum WriteSettingsError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(
        "index {index} is written with other settings; nothing was written to it. {}. Run with the settings the index records, or rebuild into a new index to change them",
        list(.differences)
    )]
    Mismatch {
        index: String,
        differences: Vec<Difference>,
    },
    #[error(
        "index {index}: its recorded write settings (_meta.{META_KEY}) cannot be read ({reason}); nothing was written to it"
    )]
    Unreadable { index: String, reason: String },
}

fn list(differences: &[Difference]) -> String {
    differences
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// What [`record_or_check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// No such index (nothing to check; a template applied here records at creation).
    NoIndex,
    /// The index had no record; `write` is its record now.
    Now,
    /// The index records the same settings.
    Agrees,
}

#[derive(Deserialize)]
struct IndexMapping {
    #[serde(default)]
    mappings: Mappings,
}

#[derive(Deserialize, Default)]
struct Mappings {
    #[serde(rename = "_meta", default)]
    meta: Meta,
}

/// Each index's mapping `_meta` behind `index` (an index, or an alias: every index behind it),
/// by concrete index name; `None` when there is no such index.
pub async fn mapping_meta(
    os: &OpenSearch,
    index: &str,
) -> Result<Option<BTreeMap<String, Meta>>, WriteSettingsError> {
    let body = match os
        .request(Method::Get, &format!("/{index}/_mapping"), None, TIMEOUT)
        .await
    {
        Ok((_, body)) => body,
        Err(e) if e.status == Some(404) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let indexes: BTreeMap<String, IndexMapping> =
        serde_json::from_slice(&body).map_err(|e| WriteSettingsError::Unreadable {
            index: index.to_string(),
            reason: e.to_string(),
        })?;
    Ok(Some(
        indexes
            .into_iter()
            .map(|(name, m)| (name, m.mappings.meta))
            .collect(),
    ))
}

/// Replaces the mapping `_meta` of the concrete index `name` (OpenSearch replaces it whole).
pub async fn put_mapping_meta(
    os: &OpenSearch,
    name: &str,
    meta: &Meta,
) -> Result<(), RequestError> {
    let body = serde_json::json!({ "_meta": meta })
        .to_string()
        .into_bytes();
    os.request(
        Method::Put,
        &format!("/{name}/_mapping"),
        Some(body),
        TIMEOUT,
    )
    .await
    .map(|_| ())
}

/// A mapping's `_meta`.
pub type Meta = serde_json::Map<String, serde_json::Value>;

/// Checks `index` (an index or an alias: every index behind it) against `write`; where an
/// index has no record yet and `record` is set, records `write` in it (the rest of its `_meta`
/// kept). Two first writers racing with different settings both record; the later record
/// stands and the other writer's next check refuses.
pub async fn record_or_check(
    os: &OpenSearch,
    index: &str,
    write: &WriteSettings,
    record: bool,
) -> Result<Recorded, WriteSettingsError> {
    let Some(indexes) = mapping_meta(os, index).await? else {
        return Ok(Recorded::NoIndex);
    };
    let unreadable = |reason: String| WriteSettingsError::Unreadable {
        index: index.to_string(),
        reason,
    };
    let mut unrecorded = Vec::new();
    for (name, meta) in &indexes {
        let Some(recorded) = meta.get(META_KEY) else {
            unrecorded.push((name, meta));
            continue;
        };
        let recorded: WriteSettings = serde_json::from_value(recorded.clone())
            .map_err(|e| unreadable(format!("{name}: {e}")))?;
        let differences = write
            .differences(&recorded)
            .map_err(|e| unreadable(format!("{name}: {e}")))?;
        if !differences.is_empty() {
            return Err(WriteSettingsError::Mismatch {
                index: name.clone(),
                differences,
            });
        }
    }
    if unrecorded.is_empty() || !record {
        return Ok(Recorded::Agrees);
    }
    for (name, meta) in unrecorded {
        let mut meta = meta.clone();
        meta.insert(META_KEY.into(), serde_json::json!(write));
        put_mapping_meta(os, name, &meta).await?;
    }
    Ok(Recorded::Now)
}

/// [`record_or_check`] for each of `indexes`; the first refusal ends it.
pub async fn check_all<I: AsRef<str>>(
    os: &OpenSearch,
    indexes: &[I],
    write: &WriteSettings,
    record: bool,
) -> Result<(), WriteSettingsError> {
    for index in indexes {
        record_or_check(os, index.as_ref(), write, record).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_records_the_write_settings_it_was_applied_with() {
        let write = WriteSettings {
            version_attribute: Some("rev".into()),
            index: Some("items".into()),
            ..WriteSettings::default()
        };
        for kind in [IndexTemplate::Schemaless, IndexTemplate::Typed] {
            let t: serde_json::Value =
                serde_json::from_str(&template_for(kind, "items-*", Some(&write))).unwrap();
            assert_eq!(t["index_patterns"], serde_json::json!(["items-*"]));
            let recorded: WriteSettings =
                serde_json::from_value(t["template"]["mappings"]["_meta"][META_KEY].clone())
                    .unwrap();
            assert_eq!(recorded, write);
            let bare: serde_json::Value =
                serde_json::from_str(&template_for(kind, "items-*", None)).unwrap();
            assert!(bare["template"]["mappings"].get("_meta").is_none());
            // The rest of the template is the file's.
            assert_eq!(
                t["template"]["mappings"]["dynamic_templates"],
                serde_json::from_str::<serde_json::Value>(kind.body()).unwrap()["template"]["mappings"]
                    ["dynamic_templates"]
            );
        }
    }

    /// The schemaless template maps every JSON scalar type the conversion writes (integers,
    /// decimals, strings, booleans) to one and the same mapping, so no value of one type can
    /// conflict with a field first seen with another.
    #[test]
    fn the_schemaless_template_maps_every_scalar_type_alike() {
        let t: serde_json::Value = serde_json::from_str(IndexTemplate::Schemaless.body()).unwrap();
        let templates = t["template"]["mappings"]["dynamic_templates"]
            .as_array()
            .unwrap();
        let mut types: Vec<&str> = Vec::new();
        let mut mappings = Vec::new();
        for entry in templates {
            let (_, rule) = entry.as_object().unwrap().iter().next().unwrap();
            types.push(rule["match_mapping_type"].as_str().unwrap());
            mappings.push(&rule["mapping"]);
        }
        types.sort_unstable();
        assert_eq!(types, ["boolean", "double", "long", "string"]);
        assert!(mappings.windows(2).all(|w| w[0] == w[1]), "{mappings:?}");
        assert_eq!(mappings[0]["type"], "keyword");
        assert_eq!(mappings[0]["fields"]["number"]["type"], "double");
        assert_eq!(mappings[0]["fields"]["number"]["ignore_malformed"], true);
        assert_eq!(mappings[0]["fields"]["text"]["type"], "text");
    }
}
