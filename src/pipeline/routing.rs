//! Which index a record's item goes to: `OPENSEARCH_INDEX` (which may hold `{table}`), or the
//! first `ROUTES` rule whose condition the item meets; a rule's `index: null` skips the item.
//!
//! ```json
//! [{"when": {"attribute": "pk", "prefix": "USER#"}, "index": "users"},
//!  {"when": {"attribute": "entityType", "equals": "Order"}, "index": "orders-{table}"},
//!  {"when": {"attribute": "pk", "prefix": "AUDIT#"}, "index": null}]
//! ```
//!
//! Conditions read one top-level attribute of type S or N (numbers by their canonical text):
//! `equals`, `prefix`, `suffix`, `in` (a list), or `exists` (true: present with any type).
//! `{table}` is the table name from the record's `eventSourceARN`, in lowercase (index names
//! are lowercase).

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;

use crate::pipeline::SettingError;

/// Where an item goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Index(Arc<str>),
    Skip,
}

/// The routing configuration, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    /// For items no rule matches; `None`: such items are skipped.
    default: Option<IndexName>,
    rules: Vec<Rule>,
    /// The attributes the rules read, each once.
    attributes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    attribute: String,
    /// Position of `attribute` in `Router::attributes`.
    at: usize,
    condition: Condition,
    index: Option<IndexName>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Condition {
    Equals(String),
    Prefix(String),
    Suffix(String),
    In(Vec<String>),
    Exists,
}

/// An index name, perhaps with `{table}` in it; a fixed name is built once, a per-table name
/// once per table (a function reads one stream, or a few).
#[derive(Debug, Clone)]
enum IndexName {
    Fixed(Arc<str>),
    PerTable {
        pattern: String,
        built: Arc<std::sync::Mutex<BuiltNames>>,
    },
}

impl PartialEq for IndexName {
    fn eq(&self, other: &IndexName) -> bool {
        match (self, other) {
            (IndexName::Fixed(a), IndexName::Fixed(b)) => a == b,
            (IndexName::PerTable { pattern: a, .. }, IndexName::PerTable { pattern: b, .. }) => {
                a == b
            }
            _ => false,
        }
    }
}

impl Eq for IndexName {}

/// Table → index name, built from one pattern.
type BuiltNames = Vec<(String, Arc<str>)>;

/// Per-table names kept per pattern; past this many tables they are built each time.
const BUILT_NAMES: usize = 16;

const TABLE: &str = "{table}";

impl IndexName {
    fn parse(variable: &'static str, text: &str) -> Result<IndexName, SettingError> {
        // Validated with a stand-in table name: the rest must be a valid name on its own.
        validate_index_name(variable, &text.replace(TABLE, "t"))?;
        Ok(if text.contains(TABLE) {
            IndexName::PerTable {
                pattern: text.to_string(),
                built: Arc::default(),
            }
        } else {
            IndexName::Fixed(text.into())
        })
    }

    fn resolve(&self, table: Option<&str>) -> Route {
        match self {
            IndexName::Fixed(name) => Route::Index(name.clone()),
            IndexName::PerTable { pattern, built } => match table {
                Some(t) => {
                    let mut built = built.lock().unwrap_or_else(|p| p.into_inner());
                    if let Some((_, name)) = built.iter().find(|(b, _)| b == t) {
                        return Route::Index(name.clone());
                    }
                    let name: Arc<str> = pattern.replace(TABLE, &t.to_ascii_lowercase()).into();
                    if built.len() < BUILT_NAMES {
                        built.push((t.to_string(), name.clone()));
                    }
                    Route::Index(name)
                }
                // No table to fill in (planning refuses such records before routing them).
                None => Route::Skip,
            },
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleText {
    when: WhenText,
    /// Required, and may be null: `Option<Option<…>>` tells a missing field from null.
    #[serde(default, deserialize_with = "present")]
    index: Option<Option<String>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WhenText {
    attribute: String,
    equals: Option<String>,
    prefix: Option<String>,
    suffix: Option<String>,
    #[serde(rename = "in")]
    one_of: Option<Vec<String>>,
    exists: Option<bool>,
}

impl Router {
    /// One index for everything (no rules).
    pub fn single(index: &str) -> Router {
        Router {
            default: Some(IndexName::Fixed(index.into())),
            rules: Vec::new(),
            attributes: Vec::new(),
        }
    }

    /// From `OPENSEARCH_INDEX` (optional when `ROUTES` is set) and `ROUTES` (a JSON array).
    pub fn parse(index: Option<&str>, routes: Option<&str>) -> Result<Router, SettingError> {
        let default = index
            .map(|i| IndexName::parse("OPENSEARCH_INDEX", i))
            .transpose()?;
        let Some(routes) = routes else {
            return match default {
                Some(default) => Ok(Router {
                    default: Some(default),
                    rules: Vec::new(),
                    attributes: Vec::new(),
                }),
                None => Err(SettingError::new("OPENSEARCH_INDEX", "is required")),
            };
        };
        let texts: Vec<RuleText> = serde_json::from_str(routes).map_err(|e| {
            SettingError::new(
                "ROUTES",
                format!(
                    "must be a JSON array of rules ({})",
                    crate::redact::reason(&e.to_string())
                ),
            )
        })?;
        let mut rules = Vec::with_capacity(texts.len());
        let mut attributes: Vec<String> = Vec::new();
        for (n, t) in texts.into_iter().enumerate() {
            let rule =
                |reason: String| SettingError::new("ROUTES", format!("rule {}: {reason}", n + 1));
            let w = t.when;
            if w.attribute.is_empty() {
                return Err(rule("when.attribute is empty".into()));
            }
            let mut conditions = Vec::new();
            if let Some(v) = w.equals {
                conditions.push(Condition::Equals(v));
            }
            if let Some(v) = w.prefix {
                conditions.push(Condition::Prefix(v));
            }
            if let Some(v) = w.suffix {
                conditions.push(Condition::Suffix(v));
            }
            if let Some(v) = w.one_of {
                if v.is_empty() {
                    return Err(rule("when.in is an empty list".into()));
                }
                conditions.push(Condition::In(v));
            }
            match w.exists {
                Some(true) => conditions.push(Condition::Exists),
                Some(false) => return Err(rule("when.exists can only be true".into())),
                None => {}
            }
            if conditions.len() != 1 {
                return Err(rule(
                    "when needs exactly one of equals, prefix, suffix, in, exists".into(),
                ));
            }
            let index = match t.index {
                None => return Err(rule("index is missing (a name, or null to skip)".into())),
                Some(None) => None,
                Some(Some(name)) => {
                    Some(IndexName::parse("ROUTES", &name).map_err(|e| rule(e.reason))?)
                }
            };
            let at = match attributes.iter().position(|a| *a == w.attribute) {
                Some(at) => at,
                None => {
                    attributes.push(w.attribute.clone());
                    attributes.len() - 1
                }
            };
            rules.push(Rule {
                at,
                attribute: w.attribute,
                condition: conditions.remove(0),
                index,
            });
        }
        Ok(Router {
            default,
            rules,
            attributes,
        })
    }

    /// Whether every item goes to one fixed index (nothing to read from records).
    pub fn is_single(&self) -> bool {
        self.rules.is_empty() && matches!(self.default, Some(IndexName::Fixed(_)))
    }

    /// The index for items no rule matches, if it is one fixed name.
    pub fn fixed_default(&self) -> Option<&str> {
        match &self.default {
            Some(IndexName::Fixed(name)) => Some(name),
            _ => None,
        }
    }

    /// The top-level attributes the rules read, each once, in rule order.
    pub fn attributes(&self) -> &[String] {
        &self.attributes
    }

    /// Whether the rules read only attributes among `keys` (then `Keys` alone routes a record).
    pub fn reads_only(&self, keys: &[&str]) -> bool {
        self.rules
            .iter()
            .all(|r| keys.contains(&r.attribute.as_str()))
    }

    /// The route of an item of `table`; `value(i)` is the item's value of `attributes()[i]`
    /// (S text, N canonical text, or `Some("")`-free `None` when absent; other types give
    /// `Some(None)`: present, but no text to compare).
    pub fn route<'v>(
        &self,
        table: Option<&str>,
        value: impl Fn(usize) -> Option<Option<Cow<'v, str>>>,
    ) -> Route {
        for r in &self.rules {
            let matched = match (value(r.at), &r.condition) {
                (None, _) => false,
                (Some(_), Condition::Exists) => true,
                (Some(None), _) => false,
                (Some(Some(v)), Condition::Equals(x)) => v == x.as_str(),
                (Some(Some(v)), Condition::Prefix(x)) => v.starts_with(x.as_str()),
                (Some(Some(v)), Condition::Suffix(x)) => v.ends_with(x.as_str()),
                (Some(Some(v)), Condition::In(xs)) => xs.iter().any(|x| v == x.as_str()),
            };
            if matched {
                return r.index.as_ref().map_or(Route::Skip, |i| i.resolve(table));
            }
        }
        self.default
            .as_ref()
            .map_or(Route::Skip, |i| i.resolve(table))
    }

    /// Every index an item of `table` can go to: where a delete must go when its item's route
    /// cannot be known (a REMOVE without an OldImage, under rules that read non-key attributes).
    pub fn every_index(&self, table: Option<&str>) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = Vec::new();
        let names = self
            .rules
            .iter()
            .filter_map(|r| r.index.as_ref())
            .chain(&self.default);
        for name in names {
            if let Route::Index(i) = name.resolve(table)
                && !out.contains(&i)
            {
                out.push(i);
            }
        }
        out
    }

    /// The index names and patterns the routes can write to (`{table}` as `*`), for applying
    /// the index template to each.
    pub fn index_patterns(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for name in self
            .rules
            .iter()
            .filter_map(|r| r.index.as_ref())
            .chain(&self.default)
        {
            let p = match name {
                IndexName::Fixed(n) => n.to_string(),
                IndexName::PerTable { pattern, .. } => pattern.replace(TABLE, "*"),
            };
            if !out.contains(&p) {
                out.push(p);
            }
        }
        out
    }

    /// Whether an index name needs the record's table.
    pub fn needs_table(&self) -> bool {
        self.rules
            .iter()
            .filter_map(|r| r.index.as_ref())
            .chain(&self.default)
            .any(|i| matches!(i, IndexName::PerTable { .. }))
    }
}

/// The table name in a stream ARN (`arn:aws:dynamodb:REGION:ACCOUNT:table/NAME/stream/TIME`),
/// if it is one DynamoDB allows (`A-Z a-z 0-9 _ - .`, at most 255): the name goes into index
/// names and request paths, so a forged ARN (a replayed entry) must not bring `?`, `#`, `%` or
/// a space into them.
pub fn table_of(event_source_arn: &str) -> Option<&str> {
    // The first `:table/`, by a plain loop: a substring searcher (or memchr) set up for every
    // record of a batch cost more than the rest of reading its envelope.
    let b = event_source_arn.as_bytes();
    let at = (0..b.len()).find(|&i| b[i] == b':' && b[i..].starts_with(b":table/"))?;
    let rest = &event_source_arn[at + ":table/".len()..];
    let name = rest.split('/').next()?;
    let allowed = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.');
    (!name.is_empty() && name.len() <= 255 && name.bytes().all(allowed)).then_some(name)
}

/// OpenSearch index names: lowercase, no `\ / * ? " < > | space , #`, not starting with `-_+`.
pub fn validate_index_name(variable: &'static str, name: &str) -> Result<(), SettingError> {
    let bad = name.is_empty()
        || name.len() > 255
        || name.starts_with(['-', '_', '+'])
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c.is_uppercase() || "\\/*?\"<>| ,#:".contains(c));
    if bad {
        return Err(SettingError::new(
            variable,
            format!("{name:?} is not a valid index or alias name"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(index: Option<&str>, routes: &str) -> Router {
        Router::parse(index, Some(routes)).unwrap()
    }

    fn route_of(r: &Router, table: Option<&str>, item: &[(&str, &str)]) -> Route {
        let names = r.attributes();
        r.route(table, |i| {
            item.iter()
                .find(|(n, _)| *n == names[i])
                .map(|(_, v)| Some(Cow::Borrowed(*v)))
        })
    }

    const ROUTES: &str = r##"[
        {"when":{"attribute":"pk","prefix":"USER#"},"index":"users"},
        {"when":{"attribute":"entityType","equals":"Order"},"index":"orders-{table}"},
        {"when":{"attribute":"pk","prefix":"AUDIT#"},"index":null},
        {"when":{"attribute":"kind","in":["a","b"]},"index":"ab"},
        {"when":{"attribute":"pk","suffix":"#X"},"index":"x"},
        {"when":{"attribute":"flag","exists":true},"index":"flagged"}
    ]"##;

    #[test]
    fn the_first_matching_rule_wins_and_the_rest_go_to_the_default() {
        let r = router(Some("rest"), ROUTES);
        let idx = |s: &str| Route::Index(s.into());
        assert_eq!(route_of(&r, Some("T"), &[("pk", "USER#1")]), idx("users"));
        assert_eq!(
            route_of(&r, Some("Shop"), &[("pk", "O#1"), ("entityType", "Order")]),
            idx("orders-shop")
        );
        assert_eq!(route_of(&r, None, &[("pk", "AUDIT#1")]), Route::Skip);
        assert_eq!(route_of(&r, None, &[("pk", "1"), ("kind", "b")]), idx("ab"));
        assert_eq!(route_of(&r, None, &[("pk", "1#X")]), idx("x"));
        assert_eq!(
            route_of(&r, None, &[("pk", "1"), ("flag", "")]),
            idx("flagged")
        );
        assert_eq!(
            route_of(&r, None, &[("pk", "USER#1"), ("flag", "")]),
            idx("users")
        );
        assert_eq!(route_of(&r, None, &[("pk", "other")]), idx("rest"));
        let no_default = router(None, ROUTES);
        assert_eq!(route_of(&no_default, None, &[("pk", "other")]), Route::Skip);
        assert_eq!(r.attributes(), ["pk", "entityType", "kind", "flag"]);
        assert!(!r.reads_only(&["pk", "sk"]));
        assert!(
            router(
                None,
                r#"[{"when":{"attribute":"pk","prefix":"USER#"},"index":"users"}]"#
            )
            .reads_only(&["pk"])
        );
        assert_eq!(
            r.every_index(Some("Shop")),
            ["users", "orders-shop", "ab", "x", "flagged", "rest"]
                .map(Arc::<str>::from)
                .to_vec()
        );
    }

    #[test]
    fn bad_rules_name_the_variable_and_the_rule() {
        for (routes, expected) in [
            ("{}", "must be a JSON array"),
            (
                r#"[{"when":{"attribute":"pk"},"index":"a"}]"#,
                "rule 1: when needs exactly one",
            ),
            (
                r#"[{"when":{"attribute":"pk","equals":"a","prefix":"b"},"index":"a"}]"#,
                "exactly one",
            ),
            (
                r#"[{"when":{"attribute":"pk","equals":"a"}}]"#,
                "rule 1: index is missing",
            ),
            (
                r#"[{"when":{"attribute":"pk","equals":"a"},"index":"a"},{"when":{"attribute":"pk","equals":"a"},"index":"Bad"}]"#,
                "rule 2",
            ),
            (
                r#"[{"when":{"attribute":"pk","matches":"a"},"index":"a"}]"#,
                "unknown field",
            ),
            (
                r#"[{"when":{"attribute":"pk","in":[]},"index":"a"}]"#,
                "empty list",
            ),
            (
                r#"[{"when":{"attribute":"pk","exists":false},"index":"a"}]"#,
                "only be true",
            ),
        ] {
            let e = Router::parse(Some("items"), Some(routes)).unwrap_err();
            assert_eq!(e.variable, "ROUTES", "{routes}");
            assert!(e.to_string().contains(expected), "{routes}: {e}");
        }
        assert_eq!(
            Router::parse(None, None).unwrap_err().variable,
            "OPENSEARCH_INDEX"
        );
        assert!(Router::parse(Some("items-{table}"), None).is_ok());
        assert!(Router::parse(Some("Items-{table}"), None).is_err());
    }

    #[test]
    fn the_table_comes_from_the_stream_arn() {
        assert_eq!(
            table_of(
                "arn:aws:dynamodb:eu-west-1:123456789012:table/Shop/stream/2026-01-01T00:00:00.000"
            ),
            Some("Shop")
        );
        assert_eq!(table_of("backfill:Shop"), None);
        assert_eq!(table_of("arn:x:table:tablex/:table/T/stream"), Some("T"));
        assert_eq!(
            table_of("arn:aws:dynamodb:eu-west-1:1:table//stream/x"),
            None
        );
        assert_eq!(
            table_of("arn:aws:dynamodb:eu-west-1:1:table/My_Table-2.v1/stream/x"),
            Some("My_Table-2.v1")
        );
        // Not a DynamoDB table name: nothing to build an index name or a path from.
        for forged in ["a?b", "a#b", "a%2Fb", "a b", "a,b", "a*", "é", "a\\b"] {
            let arn = format!("arn:aws:dynamodb:eu-west-1:1:table/{forged}/stream/x");
            assert_eq!(table_of(&arn), None, "{forged}");
        }
        assert_eq!(
            table_of(&format!("arn:a:table/{}/stream", "t".repeat(256))),
            None
        );
    }
}
