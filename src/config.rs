//! Configuration from environment variables, validated once at cold start.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::metrics::MetricsConfig;
use crate::pipeline::metadata::Metadata;
use crate::pipeline::plan::Shape;
use crate::pipeline::projection::Projection;
use crate::pipeline::routing::Router;

/// Everything the function and the backfill read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `OPENSEARCH_URL` (required): the cluster endpoint, e.g. `https://search-x.eu-west-1.es.amazonaws.com`.
    pub url: Url,
    /// `OPENSEARCH_INDEX` (required unless `ROUTES` is set): the index or alias written to (an
    /// alias needs a write index); may hold `{table}`. With `ROUTES`: where items no rule
    /// matches go (unset: they are skipped).
    pub index: Option<String>,
    /// `OPENSEARCH_INDEX` and `ROUTES` (a JSON array of rules, see [`crate::pipeline::routing`]): which
    /// index each item goes to.
    pub router: Router,
    /// `EXCLUDE_ATTRIBUTES` or `INCLUDE_ATTRIBUTES` (default: neither, every attribute kept):
    /// comma-separated attribute paths (`a`, `a.b` into maps); see [`crate::pipeline::projection`].
    pub projection: Projection,
    /// `METADATA_FIELDS` (default none) under `METADATA_PREFIX` (default `ddb_`): stream
    /// metadata written into each document; see [`crate::pipeline::metadata`].
    pub metadata: Metadata,
    /// `METRICS` (`on` by default, `off`) and `METRICS_NAMESPACE` (default `StreamIndexer`):
    /// one CloudWatch EMF document per invocation on stdout; see [`crate::metrics`].
    pub metrics: Option<MetricsConfig>,
    /// `OPENSEARCH_AUTH` (default `none`): `none`, `basic` (with `OPENSEARCH_USERNAME` and
    /// `OPENSEARCH_PASSWORD`) or `sigv4` (service from `OPENSEARCH_SIGV4_SERVICE`, `es` or
    /// `aoss`, default `es`; region from `AWS_REGION`).
    pub auth: Auth,
    /// `BULK_MAX_BYTES` (default 5 MiB = 5242880): the most bytes in one `_bulk` body, every
    /// newline counted. Amazon OpenSearch Service refuses requests over 10 MiB on small instances.
    pub bulk_max_bytes: usize,
    /// `BULK_MAX_ACTIONS` (default 1000): the most actions in one `_bulk` body.
    pub bulk_max_actions: usize,
    /// `BULK_CONCURRENCY` (default 4): the most `_bulk` requests in flight at once.
    pub bulk_concurrency: usize,
    /// `REQUEST_TIMEOUT_MS` (default 30000): the longest one `_bulk` request may take; also
    /// capped by the time the invocation has left.
    pub request_timeout: Duration,
    /// `VERSION_ATTRIBUTE` (default unset): a top-level numeric attribute that increases with
    /// every change of an item (a counter, or `updatedAt` in ms), used as the external version.
    /// Unset: the version is the stream record's `ApproximateCreationDateTime` in milliseconds.
    pub version_attribute: Option<String>,
    /// `DEADLINE_MARGIN_MS` (default 3000): retries stop this long before the Lambda deadline,
    /// leaving time to write quarantine entries and return the response.
    pub deadline_margin: Duration,
    /// `RETRY_BASE_MS` (default 200): the first backoff ceiling; it doubles per attempt.
    pub retry_base: Duration,
    /// `RETRY_MAX_MS` (default 10000): the largest backoff ceiling.
    pub retry_max: Duration,
    /// `QUARANTINE_INDEX` (default unset = off): the OpenSearch index that keeps records no index
    /// can accept. Off: such records are reported in `batchItemFailures` instead.
    pub quarantine_index: Option<String>,
    /// The texts of the settings above that decide what a write is, as each index records them.
    pub write: WriteSettings,
}

/// The settings that decide what a write is: a document's index (`OPENSEARCH_INDEX`,
/// `ROUTES`), its body (`EXCLUDE_ATTRIBUTES`, `INCLUDE_ATTRIBUTES`, `METADATA_FIELDS`,
/// `METADATA_PREFIX`) and its version (`VERSION_ATTRIBUTE`), as the texts they were set to.
///
/// Each index records the settings it is written with ([`crate::sink::template`]); the function
/// and every tool must agree with that record before they write. Two writers that disagree make
/// the index wrong for good: versions of two schemes (stream time in ms against a counter) never
/// meet safely, and another route or projection reads live documents as extra or different.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteSettings {
    #[serde(rename = "VERSION_ATTRIBUTE")]
    pub version_attribute: Option<String>,
    /// With `ROUTES` only: where items no rule matches go.
    #[serde(rename = "OPENSEARCH_INDEX")]
    pub index: Option<String>,
    #[serde(rename = "ROUTES")]
    pub routes: Option<String>,
    #[serde(rename = "EXCLUDE_ATTRIBUTES")]
    pub exclude_attributes: Option<String>,
    #[serde(rename = "INCLUDE_ATTRIBUTES")]
    pub include_attributes: Option<String>,
    #[serde(rename = "METADATA_FIELDS")]
    pub metadata_fields: Option<String>,
    #[serde(rename = "METADATA_PREFIX")]
    pub metadata_prefix: Option<String>,
}

/// One setting that differs between an index's record and a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub variable: &'static str,
    pub recorded: Option<String>,
    pub configured: Option<String>,
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show =
            |v: &Option<String>| v.as_ref().map_or("unset".to_string(), |t| format!("{t:?}"));
        write!(
            f,
            "{}: the index is written with {}, this configuration has {}",
            self.variable,
            show(&self.recorded),
            show(&self.configured)
        )
    }
}

impl WriteSettings {
    /// The settings of `recorded` that write differently from these. Compared as the values
    /// they parse to, so spelling alone (spaces, order of a list's equal entries) is no
    /// difference; a group that differs lists each of its variables whose text differs. A
    /// record that does not parse is an error: what it meant cannot be known.
    pub fn differences(&self, recorded: &WriteSettings) -> Result<Vec<Difference>, ConfigError> {
        let mut out = Vec::new();
        let mut group =
            |same: bool, variables: &[(&'static str, &Option<String>, &Option<String>)]| {
                if !same {
                    for (variable, r, c) in variables {
                        if r != c {
                            out.push(Difference {
                                variable,
                                recorded: (*r).clone(),
                                configured: (*c).clone(),
                            });
                        }
                    }
                }
            };
        group(
            self.version_attribute == recorded.version_attribute,
            &[(
                "VERSION_ATTRIBUTE",
                &recorded.version_attribute,
                &self.version_attribute,
            )],
        );
        // Without ROUTES on either side, each writes the one index that holds the record.
        let same_routes = match (&self.routes, &recorded.routes) {
            (None, None) => true,
            (Some(_), Some(_)) => {
                Router::parse(self.index.as_deref(), self.routes.as_deref())?
                    == Router::parse(recorded.index.as_deref(), recorded.routes.as_deref())?
            }
            // Different, but a record that does not parse is refused as such.
            (None, Some(routes)) => {
                Router::parse(recorded.index.as_deref(), Some(routes))?;
                false
            }
            (Some(_), None) => false,
        };
        group(
            same_routes,
            &[
                ("OPENSEARCH_INDEX", &recorded.index, &self.index),
                ("ROUTES", &recorded.routes, &self.routes),
            ],
        );
        group(
            Projection::parse(
                self.exclude_attributes.as_deref(),
                self.include_attributes.as_deref(),
            )? == Projection::parse(
                recorded.exclude_attributes.as_deref(),
                recorded.include_attributes.as_deref(),
            )?,
            &[
                (
                    "EXCLUDE_ATTRIBUTES",
                    &recorded.exclude_attributes,
                    &self.exclude_attributes,
                ),
                (
                    "INCLUDE_ATTRIBUTES",
                    &recorded.include_attributes,
                    &self.include_attributes,
                ),
            ],
        );
        group(
            Metadata::parse(
                self.metadata_fields.as_deref(),
                self.metadata_prefix.as_deref(),
            )? == Metadata::parse(
                recorded.metadata_fields.as_deref(),
                recorded.metadata_prefix.as_deref(),
            )?,
            &[
                (
                    "METADATA_FIELDS",
                    &recorded.metadata_fields,
                    &self.metadata_fields,
                ),
                (
                    "METADATA_PREFIX",
                    &recorded.metadata_prefix,
                    &self.metadata_prefix,
                ),
            ],
        );
        Ok(out)
    }
}

/// How requests to OpenSearch authenticate.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Basic { username: String, password: String },
    SigV4 { service: String, region: String },
}

/// By hand so that the password never prints, whoever logs a `Config`.
impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::None => f.write_str("None"),
            Auth::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Auth::SigV4 { service, region } => f
                .debug_struct("SigV4")
                .field("service", service)
                .field("region", region)
                .finish(),
        }
    }
}

/// A missing or bad value, naming the variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("configuration: {variable}: {reason}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub reason: String,
}

impl ConfigError {
    pub fn new(variable: &'static str, reason: impl Into<String>) -> ConfigError {
        err(variable, reason)
    }
}

impl From<crate::pipeline::SettingError> for ConfigError {
    fn from(e: crate::pipeline::SettingError) -> ConfigError {
        err(e.variable, e.reason)
    }
}

fn err(variable: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        reason: reason.into(),
    }
}

impl Config {
    /// What planning needs to shape documents: routes, projection, metadata.
    pub fn shape(&self) -> Shape<'_> {
        Shape {
            router: &self.router,
            projection: &self.projection,
            metadata: &self.metadata,
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup` (the environment, or a map in tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |name: &'static str| lookup(name).filter(|v| !v.trim().is_empty());
        let required = |name: &'static str| get(name).ok_or_else(|| err(name, "is required"));

        let url_text = required("OPENSEARCH_URL")?;
        // The text is not echoed: it may hold a password.
        let url = Url::parse(url_text.trim())
            .map_err(|e| err("OPENSEARCH_URL", format!("is not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(err(
                "OPENSEARCH_URL",
                format!("scheme must be http or https, not {:?}", url.scheme()),
            ));
        }
        // The HTTP client would send userinfo as Basic auth whatever OPENSEARCH_AUTH says.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(err(
                "OPENSEARCH_URL",
                "must not hold credentials; set OPENSEARCH_AUTH=basic with OPENSEARCH_USERNAME and OPENSEARCH_PASSWORD",
            ));
        }
        let index = get("OPENSEARCH_INDEX").map(|i| i.trim().to_string());
        let routes = get("ROUTES");
        let write = WriteSettings {
            version_attribute: get("VERSION_ATTRIBUTE").map(|s| s.trim().to_string()),
            // Without ROUTES the record sits on the one index written, whatever name (an alias,
            // the concrete index of a rebuild) a writer calls it by.
            index: routes.as_ref().and(index.clone()),
            routes,
            exclude_attributes: get("EXCLUDE_ATTRIBUTES"),
            include_attributes: get("INCLUDE_ATTRIBUTES"),
            metadata_fields: get("METADATA_FIELDS"),
            metadata_prefix: get("METADATA_PREFIX"),
        };
        let router = Router::parse(index.as_deref(), write.routes.as_deref())?;
        let projection = Projection::parse(
            write.exclude_attributes.as_deref(),
            write.include_attributes.as_deref(),
        )?;
        let metrics = match get("METRICS").as_deref().map(str::trim) {
            None | Some("on") => Some(MetricsConfig {
                namespace: get("METRICS_NAMESPACE")
                    .map(|n| n.trim().to_string())
                    .unwrap_or_else(|| "StreamIndexer".into()),
            }),
            Some("off") => None,
            Some(other) => {
                return Err(err("METRICS", format!("must be on or off, not {other:?}")));
            }
        };
        let metadata = Metadata::parse(
            write.metadata_fields.as_deref(),
            write.metadata_prefix.as_deref(),
        )?;

        let auth = match get("OPENSEARCH_AUTH").as_deref().map(str::trim) {
            None | Some("none") => Auth::None,
            Some("basic") => Auth::Basic {
                username: required("OPENSEARCH_USERNAME")?,
                password: required("OPENSEARCH_PASSWORD")?,
            },
            Some("sigv4") => {
                let service = get("OPENSEARCH_SIGV4_SERVICE").unwrap_or_else(|| "es".into());
                if service != "es" && service != "aoss" {
                    return Err(err(
                        "OPENSEARCH_SIGV4_SERVICE",
                        format!("must be es or aoss, not {service:?}"),
                    ));
                }
                Auth::SigV4 {
                    service,
                    region: required("AWS_REGION")?,
                }
            }
            Some(other) => {
                return Err(err(
                    "OPENSEARCH_AUTH",
                    format!("must be none, basic or sigv4, not {other:?}"),
                ));
            }
        };

        if auth != Auth::None && url.scheme() == "http" && !is_loopback(&url) {
            return Err(err(
                "OPENSEARCH_URL",
                "credentials (OPENSEARCH_AUTH basic or sigv4) are sent only over https, or over http to a loopback address",
            ));
        }

        let number =
            |name: &'static str, default: u64, min: u64, max: u64| -> Result<u64, ConfigError> {
                match get(name) {
                    None => Ok(default),
                    Some(text) => {
                        let v: u64 = text
                            .trim()
                            .parse()
                            .map_err(|_| err(name, format!("{text:?} is not a whole number")))?;
                        if v < min || v > max {
                            return Err(err(name, format!("{v} is outside {min}..={max}")));
                        }
                        Ok(v)
                    }
                }
            };

        let quarantine_index = get("QUARANTINE_INDEX").map(|s| s.trim().to_string());
        if let Some(q) = &quarantine_index {
            crate::pipeline::routing::validate_index_name("QUARANTINE_INDEX", q)?;
            if index.as_deref() == Some(q.as_str()) {
                return Err(err("QUARANTINE_INDEX", "must differ from OPENSEARCH_INDEX"));
            }
        }
        let retry_base = Duration::from_millis(number("RETRY_BASE_MS", 200, 1, 60_000)?);
        let retry_max = Duration::from_millis(number("RETRY_MAX_MS", 10_000, 1, 600_000)?);
        if retry_max < retry_base {
            return Err(err("RETRY_MAX_MS", "must be at least RETRY_BASE_MS"));
        }
        Ok(Config {
            url,
            index,
            router,
            projection,
            metadata,
            metrics,
            auth,
            // 1 KiB floor: a body must hold at least an action line and a small document.
            bulk_max_bytes: number("BULK_MAX_BYTES", 5 * 1024 * 1024, 1024, 100 * 1024 * 1024)?
                as usize,
            bulk_max_actions: number("BULK_MAX_ACTIONS", 1000, 1, 100_000)? as usize,
            bulk_concurrency: number("BULK_CONCURRENCY", 4, 1, 64)? as usize,
            request_timeout: Duration::from_millis(number(
                "REQUEST_TIMEOUT_MS",
                30_000,
                100,
                900_000,
            )?),
            version_attribute: write.version_attribute.clone(),
            deadline_margin: Duration::from_millis(number(
                "DEADLINE_MARGIN_MS",
                3_000,
                0,
                600_000,
            )?),
            retry_base,
            retry_max,
            quarantine_index,
            write,
        })
    }
}

/// `localhost`, 127.0.0.0/8 or ::1: plain HTTP there never leaves the machine.
pub(crate) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    const BASE: [(&str, &str); 2] = [
        ("OPENSEARCH_URL", "http://localhost:9200"),
        ("OPENSEARCH_INDEX", "items"),
    ];

    #[test]
    fn defaults_apply_when_only_required_values_are_set() {
        let c = config(&BASE).unwrap();
        assert_eq!(c.index.as_deref(), Some("items"));
        assert!(c.router.is_single());
        assert_eq!(c.auth, Auth::None);
        assert_eq!(c.bulk_max_bytes, 5 * 1024 * 1024);
        assert_eq!(c.bulk_max_actions, 1000);
        assert_eq!(c.bulk_concurrency, 4);
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.version_attribute, None);
        assert_eq!(c.quarantine_index, None);
    }

    #[test]
    fn missing_or_bad_values_name_the_variable() {
        assert_eq!(config(&[]).unwrap_err().variable, "OPENSEARCH_URL");
        assert_eq!(config(&BASE[..1]).unwrap_err().variable, "OPENSEARCH_INDEX");
        let mut v = BASE.to_vec();
        v.push(("BULK_MAX_BYTES", "lots"));
        let e = config(&v).unwrap_err();
        assert_eq!(
            e.to_string(),
            "configuration: BULK_MAX_BYTES: \"lots\" is not a whole number"
        );
        let mut v = BASE.to_vec();
        v.push(("BULK_CONCURRENCY", "0"));
        assert_eq!(config(&v).unwrap_err().variable, "BULK_CONCURRENCY");
        let mut v = BASE.to_vec();
        v.push(("OPENSEARCH_AUTH", "sigv4"));
        assert_eq!(config(&v).unwrap_err().variable, "AWS_REGION");
        v.push(("AWS_REGION", "eu-west-1"));
        assert_eq!(
            config(&v).unwrap().auth,
            Auth::SigV4 {
                service: "es".into(),
                region: "eu-west-1".into()
            }
        );
        let v = [
            ("OPENSEARCH_URL", "localhost:9200"),
            ("OPENSEARCH_INDEX", "items"),
        ];
        assert_eq!(config(&v).unwrap_err().variable, "OPENSEARCH_URL");
        let v = [
            ("OPENSEARCH_URL", "http://h"),
            ("OPENSEARCH_INDEX", "Items"),
        ];
        assert_eq!(config(&v).unwrap_err().variable, "OPENSEARCH_INDEX");
    }

    #[test]
    fn write_settings_differ_by_what_they_write_and_name_each_variable_with_both_values() {
        let of = |extra: &[(&str, &str)]| {
            let mut v = BASE.to_vec();
            v.extend_from_slice(extra);
            config(&v).unwrap().write
        };
        let plain = of(&[]);
        assert_eq!(plain.differences(&plain).unwrap(), vec![]);
        // Spelling alone is no difference.
        let spaced = of(&[("EXCLUDE_ATTRIBUTES", "a, b.c")]);
        let tight = of(&[("EXCLUDE_ATTRIBUTES", "a,b.c")]);
        assert_eq!(spaced.differences(&tight).unwrap(), vec![]);
        // The function's counter against a shell without it.
        let rev = of(&[("VERSION_ATTRIBUTE", "rev")]);
        let d = plain.differences(&rev).unwrap();
        assert_eq!(
            d,
            vec![Difference {
                variable: "VERSION_ATTRIBUTE",
                recorded: Some("rev".into()),
                configured: None,
            }]
        );
        assert_eq!(
            d[0].to_string(),
            "VERSION_ATTRIBUTE: the index is written with \"rev\", this configuration has unset"
        );
        let routed = of(&[(
            "ROUTES",
            r#"[{"when": {"attribute": "t", "equals": "x"}, "index": null}]"#,
        )]);
        let d = routed
            .differences(&of(&[("METADATA_FIELDS", "table")]))
            .unwrap();
        let names: Vec<_> = d.iter().map(|d| d.variable).collect();
        assert_eq!(names, ["OPENSEARCH_INDEX", "ROUTES", "METADATA_FIELDS"]);
        // Without ROUTES the index name is not recorded: an alias and its index are one index.
        let by_alias = config(&[
            ("OPENSEARCH_URL", "http://localhost:9200"),
            ("OPENSEARCH_INDEX", "items-write"),
        ])
        .unwrap()
        .write;
        assert_eq!(by_alias.index, None);
        assert_eq!(by_alias.differences(&plain).unwrap(), vec![]);
        assert_eq!(routed.index.as_deref(), Some("items"));
        // A record that does not parse cannot be agreed with.
        let broken = WriteSettings {
            routes: Some("[{".into()),
            ..plain.clone()
        };
        assert_eq!(plain.differences(&broken).unwrap_err().variable, "ROUTES");
    }

    #[test]
    fn credentials_go_only_over_tls_or_to_loopback_and_never_print() {
        let basic = |url: &'static str| {
            config(&[
                ("OPENSEARCH_URL", url),
                ("OPENSEARCH_INDEX", "items"),
                ("OPENSEARCH_AUTH", "basic"),
                ("OPENSEARCH_USERNAME", "admin"),
                ("OPENSEARCH_PASSWORD", "hunter2-secret"),
            ])
        };
        let e = basic("http://search.example.com:9200").unwrap_err();
        assert_eq!(e.variable, "OPENSEARCH_URL");
        assert!(e.to_string().contains("https"), "{e}");
        for ok in [
            "https://search.example.com",
            "http://localhost:9200",
            "http://127.0.0.1:9200",
            "http://[::1]:9200",
        ] {
            let c = basic(ok).unwrap();
            let shown = format!("{c:?}");
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("admin"), "{shown}");
        }
        let sigv4 = config(&[
            ("OPENSEARCH_URL", "http://search.example.com"),
            ("OPENSEARCH_INDEX", "items"),
            ("OPENSEARCH_AUTH", "sigv4"),
            ("AWS_REGION", "eu-west-1"),
        ]);
        assert_eq!(sigv4.unwrap_err().variable, "OPENSEARCH_URL");
        // Userinfo is refused even with OPENSEARCH_AUTH=none, and not echoed.
        for url in [
            "https://admin:hunter2-secret@search.example.com",
            "https://admin:hunter2-secret@[not a host",
        ] {
            let e = config(&[("OPENSEARCH_URL", url), ("OPENSEARCH_INDEX", "items")]).unwrap_err();
            assert_eq!(e.variable, "OPENSEARCH_URL");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }
}
