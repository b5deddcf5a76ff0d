//! The index template (`infra/index-template.json`), embedded so every binary applies the same.

use std::time::Duration;

use crate::sink::transport::Method;

use crate::sink::transport::{OpenSearch, RequestError};

/// The composable index template, with `INDEX_PATTERN` where the index pattern goes.
pub const INDEX_TEMPLATE: &str = include_str!("../../infra/index-template.json");

/// The template body for indices matching `pattern` (e.g. `items` or `items-*`).
pub fn template_for(pattern: &str) -> String {
    INDEX_TEMPLATE.replace("INDEX_PATTERN", pattern)
}

/// Installs the template as `_index_template/{name}` for `pattern`.
pub async fn apply(os: &OpenSearch, name: &str, pattern: &str) -> Result<(), RequestError> {
    let path = format!("/_index_template/{name}");
    os.request(
        Method::Put,
        &path,
        Some(template_for(pattern).into_bytes()),
        Duration::from_secs(30),
    )
    .await
    .map(|_| ())
}

/// Creates `index` (under whatever template matches it) unless an index or alias of that name
/// exists already.
pub async fn create_index(os: &OpenSearch, index: &str) -> Result<(), RequestError> {
    match os
        .request(
            Method::Head,
            &format!("/{index}"),
            None,
            Duration::from_secs(30),
        )
        .await
    {
        Ok(_) => return Ok(()),
        Err(e) if e.status == Some(404) => {}
        Err(e) => return Err(e),
    }
    match os
        .request(
            Method::Put,
            &format!("/{index}"),
            None,
            Duration::from_secs(30),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.error_type.as_deref() == Some("resource_already_exists_exception") => Ok(()),
        Err(e) => Err(e),
    }
}
