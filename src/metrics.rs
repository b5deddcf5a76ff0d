//! CloudWatch metrics in Embedded Metric Format: one JSON document per invocation on stdout,
//! which Lambda's log agent turns into metrics (no API call, no permission). Dimensions are the
//! function name and the index, never a key; values are the invocation's [`Summary`].
//!
//! Format: `{"_aws": {"Timestamp": ms, "CloudWatchMetrics": [{"Namespace": …,
//! "Dimensions": [["FunctionName", "Index"]], "Metrics": [{"Name": …, "Unit": …}, …]}]},
//! "FunctionName": …, "Index": …, "<metric>": value or [values], …}`.

use serde_json::{Map, Value, json};

use crate::handler::Summary;

/// Where metrics go and under which names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `METRICS_NAMESPACE` (default `StreamIndexer`).
    pub namespace: String,
}

/// The EMF document for one invocation.
pub fn emf(
    config: &MetricsConfig,
    function_name: &str,
    index: &str,
    summary: &Summary,
    timestamp_ms: u64,
) -> String {
    let s = summary;
    let counts: [(&str, u64); 13] = [
        ("Records", s.records as u64),
        ("Indexed", s.indexed as u64),
        ("Deleted", s.deleted as u64),
        ("Superseded", s.superseded as u64),
        ("Skipped", s.skipped as u64),
        ("Quarantined", s.quarantined as u64),
        ("ReportedRetryable", s.retryable as u64),
        ("ReportedPermanent", s.permanent as u64),
        ("Unaccounted", s.unaccounted as u64),
        ("BulkRequests", s.bulk_requests),
        ("RetryRounds", s.retry_rounds),
        ("Throttles", s.throttled),
        ("BulkBytes", s.bulk_bytes),
    ];
    let mut doc = Map::new();
    let mut metrics = Vec::new();
    for (name, value) in counts {
        let unit = if name == "BulkBytes" {
            "Bytes"
        } else {
            "Count"
        };
        metrics.push(json!({"Name": name, "Unit": unit}));
        doc.insert(name.into(), value.into());
    }
    let mut millis = |name: &str, value: Value| {
        metrics.push(json!({"Name": name, "Unit": "Milliseconds"}));
        doc.insert(name.into(), value);
    };
    millis("Duration", s.millis.into());
    if !s.bulk_latency_ms.is_empty() {
        millis("BulkLatency", json!(s.bulk_latency_ms));
    }
    if let (Some(max), Some(p50)) = (s.lag_ms_max, s.lag_ms_p50) {
        millis("ReplicationLagMax", max.into());
        millis("ReplicationLagP50", p50.into());
    }
    doc.insert("FunctionName".into(), function_name.into());
    doc.insert("Index".into(), index.into());
    doc.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": config.namespace,
                "Dimensions": [["FunctionName", "Index"]],
                "Metrics": metrics,
            }],
        }),
    );
    Value::Object(doc).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_names_every_metric_it_carries() {
        let summary = Summary {
            records: 3,
            indexed: 2,
            quarantined: 1,
            bulk_requests: 1,
            bulk_bytes: 100,
            bulk_latency_ms: vec![12],
            lag_ms_max: Some(900),
            lag_ms_p50: Some(400),
            ..Summary::default()
        };
        let config = MetricsConfig {
            namespace: "StreamIndexer".into(),
        };
        let doc: Value = serde_json::from_str(&emf(&config, "f", "items", &summary, 1)).unwrap();
        let declared = doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap();
        assert!(declared.len() <= 100);
        for m in declared {
            let name = m["Name"].as_str().unwrap();
            assert!(doc.get(name).is_some(), "{name} has a value");
        }
        assert_eq!(doc["Indexed"], 2);
        assert_eq!(doc["BulkLatency"], json!([12]));
        assert_eq!(doc["ReplicationLagMax"], 900);
        assert_eq!(doc["Index"], "items");
    }
}
