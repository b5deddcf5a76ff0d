//! "Is the index complete?": compares a table with an index item by item, values exact.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, KeyType};
use opensearch::http::Method;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::transport::OpenSearch;
use crate::{convert, ddb_json, docid};

/// The result of a comparison; `ok()` when the index equals the table.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub table_items: usize,
    pub index_documents: usize,
    /// Ids of items with no document.
    pub missing: Vec<String>,
    /// Ids of documents with no item.
    pub extra: Vec<String>,
    /// Ids whose document differs from the item.
    pub different: Vec<String>,
}

impl Comparison {
    pub fn ok(&self) -> bool {
        self.missing.is_empty() && self.extra.is_empty() && self.different.is_empty()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("verify: {0}")]
pub struct VerifyError(pub String);

/// JSON text in a canonical form that keeps numbers exact: object keys sorted, strings
/// re-escaped one way, number text untouched. Two documents are equal when their canonical
/// texts are.
pub fn canonical(json: &str) -> Result<String, serde_json::Error> {
    let t = json.trim();
    Ok(match t.as_bytes().first() {
        Some(b'{') => {
            let map: BTreeMap<String, Box<RawValue>> = serde_json::from_str(t)?;
            let mut out = String::from("{");
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(k)?);
                out.push(':');
                out.push_str(&canonical(v.get())?);
            }
            out.push('}');
            out
        }
        Some(b'[') => {
            let list: Vec<Box<RawValue>> = serde_json::from_str(t)?;
            let parts: Result<Vec<String>, _> = list.iter().map(|v| canonical(v.get())).collect();
            format!("[{}]", parts?.join(","))
        }
        Some(b'"') => serde_json::to_string(&serde_json::from_str::<String>(t)?)?,
        _ => t.to_string(),
    })
}

/// The document id and expected document text of a table item.
pub fn expected(
    item: &HashMap<String, AttributeValue>,
    key_names: &[String],
) -> Result<(String, String), String> {
    let mut keys = HashMap::new();
    for k in key_names {
        let v = item
            .get(k)
            .ok_or_else(|| format!("item has no key attribute {k}"))?;
        keys.insert(k.clone(), v.clone());
    }
    let mut keys_json = String::new();
    ddb_json::table::write_item(&mut keys_json, &keys);
    let id = docid::doc_id(&keys_json).map_err(|e| e.to_string())?;
    let mut image = String::new();
    ddb_json::table::write_item(&mut image, item);
    let mut doc = Vec::new();
    convert::write_document(&image, &mut doc).map_err(|e| e.to_string())?;
    let mut text = String::from_utf8(doc).expect("documents are UTF-8");
    if let Some(raw) = &id.raw {
        text.pop();
        text.push_str(&format!(
            ",{}:{}}}",
            serde_json::to_string(docid::RAW_KEY_FIELD).unwrap(),
            serde_json::to_string(raw).unwrap()
        ));
    }
    Ok((id.id, text))
}

/// The table's key attribute names.
pub async fn key_names(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<Vec<String>, VerifyError> {
    let out = ddb
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map_err(|e| VerifyError(format!("DescribeTable {table}: {e}")))?;
    let schema = out.table.and_then(|t| t.key_schema).unwrap_or_default();
    let mut names: Vec<(bool, String)> = schema
        .into_iter()
        .map(|k| (k.key_type == KeyType::Range, k.attribute_name))
        .collect();
    names.sort();
    Ok(names.into_iter().map(|(_, n)| n).collect())
}

/// Compares every item of `table` with every document of `index`.
pub async fn compare(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    os: &OpenSearch,
    index: &str,
) -> Result<Comparison, VerifyError> {
    let keys = key_names(ddb, table).await?;
    let mut want: BTreeMap<String, String> = BTreeMap::new();
    let mut pages = ddb
        .scan()
        .table_name(table)
        .consistent_read(true)
        .into_paginator()
        .items()
        .send();
    while let Some(item) = pages.next().await {
        let item = item.map_err(|e| VerifyError(format!("Scan {table}: {e}")))?;
        let (id, doc) = expected(&item, &keys).map_err(VerifyError)?;
        want.insert(id, canonical(&doc).map_err(|e| VerifyError(e.to_string()))?);
    }
    let mut got = documents(os, index).await?;
    for doc in got.values_mut() {
        *doc = canonical(doc).map_err(|e| VerifyError(e.to_string()))?;
    }
    let mut c = Comparison {
        table_items: want.len(),
        index_documents: got.len(),
        ..Comparison::default()
    };
    for (id, doc) in &want {
        match got.get(id) {
            None => c.missing.push(id.clone()),
            Some(d) if d != doc => c.different.push(id.clone()),
            Some(_) => {}
        }
    }
    c.extra = got
        .keys()
        .filter(|id| !want.contains_key(*id))
        .cloned()
        .collect();
    Ok(c)
}

/// Every document of `index`: id → `_source` exactly as stored.
pub async fn documents(
    os: &OpenSearch,
    index: &str,
) -> Result<BTreeMap<String, String>, VerifyError> {
    let t = Duration::from_secs(60);
    let fail = |e: crate::transport::RequestError| VerifyError(e.to_string());
    os.request(Method::Post, &format!("/{index}/_refresh"), None, t)
        .await
        .map_err(fail)?;
    #[derive(Deserialize)]
    struct Res<'a> {
        #[serde(borrow)]
        hits: Hits<'a>,
    }
    #[derive(Deserialize)]
    struct Hits<'a> {
        #[serde(borrow)]
        hits: Vec<Hit<'a>>,
    }
    #[derive(Deserialize)]
    struct Hit<'a> {
        #[serde(rename = "_id")]
        id: String,
        #[serde(borrow, rename = "_source")]
        source: &'a RawValue,
    }
    let mut out = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut q =
            serde_json::json!({"size": 1000, "sort": [{"_id": "asc"}], "query": {"match_all": {}}});
        if let Some(a) = &after {
            q["search_after"] = serde_json::json!([a]);
        }
        let (_, body) = os
            .request(
                Method::Post,
                &format!("/{index}/_search"),
                Some(q.to_string().into_bytes()),
                t,
            )
            .await
            .map_err(fail)?;
        let res: Res = serde_json::from_slice(&body).map_err(|e| VerifyError(e.to_string()))?;
        let Some(last) = res.hits.hits.last() else {
            return Ok(out);
        };
        after = Some(last.id.clone());
        for h in res.hits.hits {
            out.insert(h.id, h.source.get().to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn canonical_form_sorts_keys_and_keeps_number_text() {
        assert_eq!(
            canonical(r#"{"b":1.50,"a":["\u00e9",1E+30,{"y":null,"x":true}]}"#).unwrap(),
            r#"{"a":["é",1E+30,{"x":true,"y":null}],"b":1.50}"#
        );
        assert_ne!(canonical("1.50").unwrap(), canonical("1.5").unwrap());
    }
}
