//! Which attributes reach the document: `EXCLUDE_ATTRIBUTES` or `INCLUDE_ATTRIBUTES`, each a
//! comma-separated list of attribute paths (`email`, `profile.ssn` into maps). Applied while
//! converting, so an excluded value is skipped, never written. Key attributes, the version
//! attribute and the attributes `ROUTES` reads are always kept. Paths go into maps (`M`); an
//! attribute inside a list is not addressed (the list is kept or dropped whole), and an included
//! path through an attribute that is not a map keeps that attribute whole.

use crate::pipeline::SettingError;

/// The configured projection; [`Projection::default`] keeps everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Projection {
    /// `None`: keep everything.
    mode: Option<(Mode, Node)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Include,
    Exclude,
}

/// The paths below one map: each child named, and whether the path ends there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    children: Vec<(String, Node)>,
    /// The path ends here: the whole attribute is excluded (or included).
    whole: bool,
}

impl Node {
    fn child(&self, name: &str) -> Option<&Node> {
        self.children
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c)
    }
}

/// How to treat the attributes of one map while converting it.
#[derive(Debug, Clone, Copy)]
pub enum Filter<'p> {
    All,
    Exclude(&'p Node),
    Include(&'p Node),
}

impl<'p> Filter<'p> {
    /// What to do with attribute `name` of this map: skip it, or write it with the filter for
    /// its own attributes (if it is a map).
    pub fn child(self, name: &str) -> Option<Filter<'p>> {
        match self {
            Filter::All => Some(Filter::All),
            Filter::Exclude(node) => match node.child(name) {
                None => Some(Filter::All),
                Some(c) if c.whole => None,
                Some(c) => Some(Filter::Exclude(c)),
            },
            Filter::Include(node) => match node.child(name) {
                None => None,
                Some(c) if c.whole => Some(Filter::All),
                Some(c) => Some(Filter::Include(c)),
            },
        }
    }
}

impl Projection {
    /// From `EXCLUDE_ATTRIBUTES` and `INCLUDE_ATTRIBUTES` (at most one of them).
    pub fn parse(exclude: Option<&str>, include: Option<&str>) -> Result<Projection, SettingError> {
        let (variable, mode, list) = match (exclude, include) {
            (None, None) => return Ok(Projection::default()),
            (Some(_), Some(_)) => {
                return Err(SettingError::new(
                    "INCLUDE_ATTRIBUTES",
                    "set either EXCLUDE_ATTRIBUTES or INCLUDE_ATTRIBUTES, not both",
                ));
            }
            (Some(e), None) => ("EXCLUDE_ATTRIBUTES", Mode::Exclude, e),
            (None, Some(i)) => ("INCLUDE_ATTRIBUTES", Mode::Include, i),
        };
        let mut root = Node::default();
        for path in list.split(',').map(str::trim) {
            if path.is_empty() {
                continue;
            }
            let mut node = &mut root;
            for part in path.split('.') {
                if part.is_empty() {
                    return Err(SettingError::new(
                        variable,
                        format!("{path:?} has an empty attribute name"),
                    ));
                }
                let at = match node.children.iter().position(|(n, _)| n == part) {
                    Some(at) => at,
                    None => {
                        node.children.push((part.to_string(), Node::default()));
                        node.children.len() - 1
                    }
                };
                node = &mut node.children[at].1;
            }
            node.whole = true;
        }
        if root.children.is_empty() {
            return Err(SettingError::new(variable, "names no attribute"));
        }
        Ok(Projection {
            mode: Some((mode, root)),
        })
    }

    /// The filter for an item's top-level attributes.
    pub fn filter(&self) -> Filter<'_> {
        match &self.mode {
            None => Filter::All,
            Some((Mode::Exclude, root)) => Filter::Exclude(root),
            Some((Mode::Include, root)) => Filter::Include(root),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_build_a_tree_and_decide_per_attribute() {
        let p = Projection::parse(Some("email, profile.ssn,profile.cards"), None).unwrap();
        let f = p.filter();
        assert!(f.child("email").is_none());
        assert!(matches!(f.child("name"), Some(Filter::All)));
        let profile = f.child("profile").unwrap();
        assert!(profile.child("ssn").is_none());
        assert!(matches!(profile.child("city"), Some(Filter::All)));

        let p = Projection::parse(None, Some("name,address.city")).unwrap();
        let f = p.filter();
        assert!(f.child("email").is_none());
        assert!(matches!(f.child("name"), Some(Filter::All)));
        let address = f.child("address").unwrap();
        assert!(matches!(address.child("city"), Some(Filter::All)));
        assert!(address.child("street").is_none());
    }

    #[test]
    fn bad_lists_name_the_variable() {
        assert_eq!(
            Projection::parse(Some("a..b"), None).unwrap_err().variable,
            "EXCLUDE_ATTRIBUTES"
        );
        assert_eq!(
            Projection::parse(Some("a"), Some("b"))
                .unwrap_err()
                .variable,
            "INCLUDE_ATTRIBUTES"
        );
        assert_eq!(
            Projection::parse(None, Some(" , ")).unwrap_err().variable,
            "INCLUDE_ATTRIBUTES"
        );
        assert_eq!(
            Projection::parse(None, None).unwrap(),
            Projection::default()
        );
    }
}
