//! CloudWatch metrics in Embedded Metric Format: one JSON document per invocation on stdout,
//! which Lambda's log agent turns into metrics (no API call, no permission). Dimensions are the
//! function name and the index, never a key; values are the invocation's [`Summary`].
//!
//! Format: `{"_aws": {"Timestamp": ms, "CloudWatchMetrics": [{"Namespace": …,
//! "Dimensions": [["FunctionName", "Index"]], "Metrics": [{"Name": …, "Unit": …}, …]}]},
//! "FunctionName": …, "Index": …, "<metric>": value or [values], …}`.

use crate::handler::Summary;

/// Where metrics go and under which names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `METRICS_NAMESPACE` (default `StreamIndexer`).
    pub namespace: String,
}

/// The EMF document for one invocation, as one line of JSON (no newline).
///
/// Written out directly rather than built as a `serde_json::Value`: the tree of maps and small
/// strings took about a twentieth of a one-record invocation's CPU. And without `write!`: its
/// formatting machinery, 52 calls a document, was 15,000 instructions, 9% of a one-record
/// invocation's.
pub fn emf(
    config: &MetricsConfig,
    function_name: &str,
    index: &str,
    summary: &Summary,
    timestamp_ms: u64,
) -> String {
    let s = summary;
    let mut metrics: Vec<(&str, &str, Value)> = vec![
        ("Records", "Count", Value::One(s.records as u64)),
        ("Indexed", "Count", Value::One(s.indexed as u64)),
        ("Deleted", "Count", Value::One(s.deleted as u64)),
        ("Superseded", "Count", Value::One(s.superseded as u64)),
        ("Skipped", "Count", Value::One(s.skipped as u64)),
        ("Quarantined", "Count", Value::One(s.quarantined as u64)),
        ("ReportedRetryable", "Count", Value::One(s.retryable as u64)),
        ("ReportedPermanent", "Count", Value::One(s.permanent as u64)),
        ("Unaccounted", "Count", Value::One(s.unaccounted as u64)),
        ("BulkRequests", "Count", Value::One(s.bulk_requests)),
        ("RetryRounds", "Count", Value::One(s.retry_rounds)),
        ("Throttles", "Count", Value::One(s.throttled)),
        ("BulkBytes", "Bytes", Value::One(s.bulk_bytes)),
        ("Duration", "Milliseconds", Value::One(s.millis)),
    ];
    if !s.bulk_latency_ms.is_empty() {
        metrics.push((
            "BulkLatency",
            "Milliseconds",
            Value::Many(&s.bulk_latency_ms),
        ));
    }
    if let (Some(max), Some(p50)) = (s.lag_ms_max, s.lag_ms_p50) {
        metrics.push(("ReplicationLagMax", "Milliseconds", Value::One(max)));
        metrics.push(("ReplicationLagP50", "Milliseconds", Value::One(p50)));
    }
    let mut out = String::with_capacity(1536);
    let mut number = itoa::Buffer::new();
    out.push_str(r#"{"_aws":{"Timestamp":"#);
    out.push_str(number.format(timestamp_ms));
    out.push_str(r#","CloudWatchMetrics":[{"Namespace":"#);
    string(&mut out, &config.namespace);
    out.push_str(r#","Dimensions":[["FunctionName","Index"]],"Metrics":["#);
    for (i, (name, unit, _)) in metrics.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        // Names and units are this function's constants: JSON strings as they are.
        out.push_str(r#"{"Name":""#);
        out.push_str(name);
        out.push_str(r#"","Unit":""#);
        out.push_str(unit);
        out.push_str(r#""}"#);
    }
    out.push_str(r#"]}]},"FunctionName":"#);
    string(&mut out, function_name);
    out.push_str(r#","Index":"#);
    string(&mut out, index);
    for (name, _, value) in &metrics {
        out.push_str(",\"");
        out.push_str(name);
        out.push_str("\":");
        match value {
            Value::One(v) => out.push_str(number.format(*v)),
            Value::Many(vs) => {
                out.push('[');
                for (i, v) in vs.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(number.format(*v));
                }
                out.push(']');
            }
        }
    }
    out.push('}');
    out
}

/// A metric's value: a number, or the values of each occurrence (EMF takes an array).
enum Value<'a> {
    One(u64),
    Many(&'a [u64]),
}

/// `text` as a JSON string (names and dimensions come from configuration and may hold quotes).
fn string(out: &mut String, text: &str) {
    out.push_str(&serde_json::to_string(text).expect("a str serializes"));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

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

    #[test]
    fn the_document_is_the_whole_emf_structure_with_names_escaped() {
        let summary = Summary {
            records: 5,
            indexed: 1,
            deleted: 1,
            superseded: 1,
            skipped: 1,
            quarantined: 1,
            retryable: 2,
            permanent: 3,
            unaccounted: 4,
            bulk_requests: 2,
            retry_rounds: 1,
            throttled: 6,
            bulk_bytes: 700,
            bulk_latency_ms: vec![12, 30],
            millis: 45,
            ..Summary::default()
        };
        let config = MetricsConfig {
            namespace: "Team \"A\"\\x".into(),
        };
        let line = emf(&config, "fn\u{1}", "it\"ems", &summary, 1_700_000_000_123);
        assert!(!line.contains('\n'));
        let doc: Value = serde_json::from_str(&line).unwrap();
        let unit = |name: &str, unit: &str| json!({"Name": name, "Unit": unit});
        let expected = json!({
            "_aws": {
                "Timestamp": 1_700_000_000_123u64,
                "CloudWatchMetrics": [{
                    "Namespace": "Team \"A\"\\x",
                    "Dimensions": [["FunctionName", "Index"]],
                    "Metrics": [
                        unit("Records", "Count"), unit("Indexed", "Count"),
                        unit("Deleted", "Count"), unit("Superseded", "Count"),
                        unit("Skipped", "Count"), unit("Quarantined", "Count"),
                        unit("ReportedRetryable", "Count"), unit("ReportedPermanent", "Count"),
                        unit("Unaccounted", "Count"), unit("BulkRequests", "Count"),
                        unit("RetryRounds", "Count"), unit("Throttles", "Count"),
                        unit("BulkBytes", "Bytes"), unit("Duration", "Milliseconds"),
                        unit("BulkLatency", "Milliseconds"),
                    ],
                }],
            },
            "FunctionName": "fn\u{1}",
            "Index": "it\"ems",
            "Records": 5, "Indexed": 1, "Deleted": 1, "Superseded": 1, "Skipped": 1,
            "Quarantined": 1, "ReportedRetryable": 2, "ReportedPermanent": 3, "Unaccounted": 4,
            "BulkRequests": 2, "RetryRounds": 1, "Throttles": 6, "BulkBytes": 700,
            "Duration": 45, "BulkLatency": [12, 30],
        });
        assert_eq!(doc, expected);
    }
}
