//! CloudWatch metrics in Embedded Metric Format: one JSON document per invocation on stdout,
//! which Lambda's log agent turns into metrics (no API call, no permission). Dimensions are the
//! function name and the index, never a key; values are the invocation's [`Summary`].
//!
//! Format: `{"_aws": {"Timestamp": ms, "CloudWatchMetrics": [{"Namespace": …,
//! "Dimensions": [["FunctionName", "Index"]], "Metrics": [{"Name": …, "Unit": …}, …]}]},
//! "FunctionName": …, "Index": …, "<metric>": value or [values], …}`.

use serde::Serialize;

use crate::handler::Summary;

/// Where metrics go and under which names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// `METRICS_NAMESPACE` (default `StreamIndexer`).
    pub namespace: String,
}

/// The EMF document for one invocation, as one line of JSON (no newline).
///
/// Serialized from the types below by serde_json, in the order they declare. (It was written
/// out by hand to save the 15,000 instructions `write!` took: 0.6% of the 2.6 M a 100-record
/// invocation takes, well below what is worth hand-written JSON; serde_json writes numbers with
/// itoa, without the formatting machinery, as that hand-written version did.)
pub fn emf(
    config: &MetricsConfig,
    function_name: &str,
    index: &str,
    summary: &Summary,
    timestamp_ms: u64,
) -> String {
    let s = summary;
    let mut metrics: Vec<Metric> = vec![
        Metric::one("Records", "Count", s.records as u64),
        Metric::one("Indexed", "Count", s.indexed as u64),
        Metric::one("Deleted", "Count", s.deleted as u64),
        Metric::one("Superseded", "Count", s.superseded as u64),
        Metric::one("Skipped", "Count", s.skipped as u64),
        Metric::one("Quarantined", "Count", s.quarantined as u64),
        Metric::one("ReportedRetryable", "Count", s.retryable as u64),
        Metric::one("ReportedPermanent", "Count", s.permanent as u64),
        Metric::one("Unaccounted", "Count", s.unaccounted as u64),
        Metric::one("BulkRequests", "Count", s.bulk_requests),
        Metric::one("RetryRounds", "Count", s.retry_rounds),
        Metric::one("Throttles", "Count", s.throttled),
        Metric::one("BulkBytes", "Bytes", s.bulk_bytes),
        Metric::one("Duration", "Milliseconds", s.millis),
    ];
    if !s.bulk_latency_ms.is_empty() {
        metrics.push(Metric {
            name: "BulkLatency",
            unit: "Milliseconds",
            value: Value::Many(&s.bulk_latency_ms),
        });
    }
    if let (Some(max), Some(p50)) = (s.lag_ms_max, s.lag_ms_p50) {
        metrics.push(Metric::one("ReplicationLagMax", "Milliseconds", max));
        metrics.push(Metric::one("ReplicationLagP50", "Milliseconds", p50));
    }
    let document = Document {
        aws: Aws {
            timestamp: timestamp_ms,
            cloud_watch_metrics: [Directive {
                namespace: &config.namespace,
                dimensions: [["FunctionName", "Index"]],
                metrics: metrics
                    .iter()
                    .map(|m| Declared {
                        name: m.name,
                        unit: m.unit,
                    })
                    .collect(),
            }],
        },
        function_name,
        index,
        metrics: &metrics,
    };
    serde_json::to_string(&document).expect("an EMF document serializes")
}

/// One metric of the document: its name, unit and value.
struct Metric<'a> {
    name: &'static str,
    unit: &'static str,
    value: Value<'a>,
}

impl Metric<'_> {
    fn one(name: &'static str, unit: &'static str, value: u64) -> Metric<'static> {
        Metric {
            name,
            unit,
            value: Value::One(value),
        }
    }
}

/// A metric's value: a number, or the values of each occurrence (EMF takes an array).
#[derive(Serialize)]
#[serde(untagged)]
enum Value<'a> {
    One(u64),
    Many(&'a [u64]),
}

/// The document: `_aws`, the dimensions' values, then each metric's value under its name.
struct Document<'a> {
    aws: Aws<'a>,
    function_name: &'a str,
    index: &'a str,
    metrics: &'a [Metric<'a>],
}

impl Serialize for Document<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(3 + self.metrics.len()))?;
        map.serialize_entry("_aws", &self.aws)?;
        map.serialize_entry("FunctionName", self.function_name)?;
        map.serialize_entry("Index", self.index)?;
        for m in self.metrics {
            map.serialize_entry(m.name, &m.value)?;
        }
        map.end()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Aws<'a> {
    timestamp: u64,
    cloud_watch_metrics: [Directive<'a>; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Directive<'a> {
    namespace: &'a str,
    dimensions: [[&'static str; 2]; 1],
    metrics: Vec<Declared>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Declared {
    name: &'static str,
    unit: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// The document's exact text: the order CloudWatch shows, numbers as integers, names and
    /// dimensions escaped (this text is what the hand-written writer before serde produced).
    #[test]
    fn the_document_is_written_exactly() {
        let summary = Summary {
            records: 3,
            indexed: 2,
            quarantined: 1,
            bulk_requests: 1,
            bulk_bytes: 100,
            bulk_latency_ms: vec![12, 7],
            lag_ms_max: Some(900),
            lag_ms_p50: Some(400),
            millis: 5,
            ..Summary::default()
        };
        let config = MetricsConfig {
            namespace: "Stream\"Indexer".into(),
        };
        assert_eq!(
            emf(&config, "f\\n", "items", &summary, 1_700_000_000_123),
            r#"{"_aws":{"Timestamp":1700000000123,"CloudWatchMetrics":[{"Namespace":"Stream\"Indexer","Dimensions":[["FunctionName","Index"]],"Metrics":[{"Name":"Records","Unit":"Count"},{"Name":"Indexed","Unit":"Count"},{"Name":"Deleted","Unit":"Count"},{"Name":"Superseded","Unit":"Count"},{"Name":"Skipped","Unit":"Count"},{"Name":"Quarantined","Unit":"Count"},{"Name":"ReportedRetryable","Unit":"Count"},{"Name":"ReportedPermanent","Unit":"Count"},{"Name":"Unaccounted","Unit":"Count"},{"Name":"BulkRequests","Unit":"Count"},{"Name":"RetryRounds","Unit":"Count"},{"Name":"Throttles","Unit":"Count"},{"Name":"BulkBytes","Unit":"Bytes"},{"Name":"Duration","Unit":"Milliseconds"},{"Name":"BulkLatency","Unit":"Milliseconds"},{"Name":"ReplicationLagMax","Unit":"Milliseconds"},{"Name":"ReplicationLagP50","Unit":"Milliseconds"}]}]},"FunctionName":"f\\n","Index":"items","Records":3,"Indexed":2,"Deleted":0,"Superseded":0,"Skipped":0,"Quarantined":1,"ReportedRetryable":0,"ReportedPermanent":0,"Unaccounted":0,"BulkRequests":1,"RetryRounds":0,"Throttles":0,"BulkBytes":100,"Duration":5,"BulkLatency":[12,7],"ReplicationLagMax":900,"ReplicationLagP50":400}"#
        );
    }

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
