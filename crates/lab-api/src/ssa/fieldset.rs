//! Sets of field paths, as managedFields records them, and their `FieldsV1` encoding.
//!
//! A path is a list of elements: a field of a map or struct (`f:name`), an item of an
//! associative list named by its key fields (`k:{"containerPort":80,"protocol":"TCP"}`), an item
//! of a set by its value (`v:"x"`), or an item by position (`i:0`). A set is a tree: each node
//! says whether its own path belongs to the set and holds its children. In `FieldsV1` a node
//! that belongs to the set and has children carries `".": {}`; one without children is `{}`.

use serde_json::{Map, Value};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

/// One step of a path. Elements order as the Kubernetes field sets do: fields, then keys, then
/// values, then indexes; key fields are kept sorted by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pe {
    Field(String),
    /// Key field names with their values as compact JSON.
    Key(Vec<(String, String)>),
    /// The item's value as compact JSON.
    Value(String),
    Index(usize),
}

impl Pe {
    fn rank(&self) -> u8 {
        match self {
            Pe::Field(_) => 0,
            Pe::Key(_) => 1,
            Pe::Value(_) => 2,
            Pe::Index(_) => 3,
        }
    }

    /// A key element from the key fields of an associative list item.
    pub fn key(mut fields: Vec<(String, Value)>) -> Pe {
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        Pe::Key(
            fields
                .into_iter()
                .map(|(k, v)| (k, v.to_string()))
                .collect(),
        )
    }

    pub fn value(v: &Value) -> Pe {
        Pe::Value(v.to_string())
    }

    /// The `FieldsV1` spelling: `f:name`, `k:{...}`, `v:...`, `i:N`.
    pub fn encode(&self) -> String {
        match self {
            Pe::Field(f) => format!("f:{f}"),
            Pe::Key(k) => {
                let inner: Vec<String> = k
                    .iter()
                    .map(|(n, v)| format!("{}:{v}", Value::String(n.clone())))
                    .collect();
                format!("k:{{{}}}", inner.join(","))
            }
            Pe::Value(v) => format!("v:{v}"),
            Pe::Index(i) => format!("i:{i}"),
        }
    }

    pub fn decode(s: &str) -> Result<Pe, String> {
        let bad = || format!("invalid path element {s:?}");
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        Ok(match kind {
            "f" => Pe::Field(rest.to_string()),
            "k" => {
                let v: Map<String, Value> = serde_json::from_str(rest).map_err(|_| bad())?;
                if v.is_empty() {
                    return Err(bad());
                }
                Pe::key(v.into_iter().collect())
            }
            "v" => Pe::value(&serde_json::from_str::<Value>(rest).map_err(|_| bad())?),
            "i" => Pe::Index(rest.parse().map_err(|_| bad())?),
            _ => return Err(bad()),
        })
    }
}

impl Ord for Pe {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank()
            .cmp(&other.rank())
            .then_with(|| match (self, other) {
                (Pe::Field(a), Pe::Field(b)) | (Pe::Value(a), Pe::Value(b)) => a.cmp(b),
                (Pe::Key(a), Pe::Key(b)) => a.cmp(b),
                (Pe::Index(a), Pe::Index(b)) => a.cmp(b),
                _ => Ordering::Equal,
            })
    }
}

impl PartialOrd for Pe {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The path spelling of conflict messages: `.spec.containers[name="app"].image`.
impl fmt::Display for Pe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pe::Field(n) => write!(f, ".{n}"),
            Pe::Key(k) => {
                let inner: Vec<String> = k.iter().map(|(n, v)| format!("{n}={v}")).collect();
                write!(f, "[{}]", inner.join(","))
            }
            Pe::Value(v) => write!(f, "[={v}]"),
            Pe::Index(i) => write!(f, "[{i}]"),
        }
    }
}

pub type Path = Vec<Pe>;

pub fn path_string(p: &[Pe]) -> String {
    p.iter().map(ToString::to_string).collect()
}

/// A set of paths (a tree; the root itself is never a member).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Set {
    pub member: bool,
    pub children: BTreeMap<Pe, Set>,
}

impl Set {
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(Set::is_empty)
    }

    pub fn insert(&mut self, path: &[Pe]) {
        let mut node = self;
        for pe in path {
            node = node.children.entry(pe.clone()).or_default();
        }
        if !path.is_empty() {
            node.member = true;
        }
    }

    #[cfg(test)]
    pub fn contains(&self, path: &[Pe]) -> bool {
        self.node(path).is_some_and(|n| n.member)
    }

    /// The node at `path`, if the set has it or anything below it.
    pub fn node(&self, path: &[Pe]) -> Option<&Set> {
        let mut node = self;
        for pe in path {
            node = node.children.get(pe)?;
        }
        Some(node)
    }

    /// True when `path` or anything below it is a member.
    pub fn covers(&self, path: &[Pe]) -> bool {
        self.node(path).is_some_and(|n| !n.is_empty())
    }

    fn prune(&mut self) {
        self.children.retain(|_, c| {
            c.prune();
            !c.is_empty()
        });
    }

    pub fn union(&self, other: &Set) -> Set {
        let mut out = self.clone();
        out.union_in(other);
        out
    }

    fn union_in(&mut self, other: &Set) {
        self.member |= other.member;
        for (pe, c) in &other.children {
            self.children.entry(pe.clone()).or_default().union_in(c);
        }
    }

    /// The members of `self` that are not members of `other`.
    pub fn difference(&self, other: &Set) -> Set {
        let mut out = self.clone();
        out.difference_in(other);
        out.prune();
        out
    }

    fn difference_in(&mut self, other: &Set) {
        if other.member {
            self.member = false;
        }
        for (pe, c) in &other.children {
            if let Some(mine) = self.children.get_mut(pe) {
                mine.difference_in(c);
            }
        }
    }

    /// The members of `self` that are also members of `other`.
    pub fn intersection(&self, other: &Set) -> Set {
        let mut out = Set {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (pe, c) in &self.children {
            if let Some(o) = other.children.get(pe) {
                let i = c.intersection(o);
                if !i.is_empty() {
                    out.children.insert(pe.clone(), i);
                }
            }
        }
        out
    }

    /// `self` without `path` and everything below it.
    pub fn without_subtree(&self, path: &[Pe]) -> Set {
        let mut out = self.clone();
        if let Some((last, parent)) = path.split_last() {
            let mut node = &mut out;
            for pe in parent {
                match node.children.get_mut(pe) {
                    Some(n) => node = n,
                    None => return out,
                }
            }
            node.children.remove(last);
            out.prune();
        }
        out
    }

    /// Every member path: a node's own membership before its children, children in order.
    pub fn paths(&self) -> Vec<Path> {
        fn walk(s: &Set, prefix: &mut Path, out: &mut Vec<Path>) {
            for (pe, c) in &s.children {
                if c.member {
                    prefix.push(pe.clone());
                    out.push(prefix.clone());
                    prefix.pop();
                }
            }
            for (pe, c) in &s.children {
                prefix.push(pe.clone());
                walk(c, prefix, out);
                prefix.pop();
            }
        }
        let mut out = Vec::new();
        walk(self, &mut Vec::new(), &mut out);
        out
    }

    /// The `FieldsV1` object.
    pub fn to_fields_v1(&self) -> Value {
        let mut m = Map::new();
        if self.member && !self.children.is_empty() {
            m.insert(".".into(), Value::Object(Map::new()));
        }
        for (pe, c) in &self.children {
            if !c.is_empty() {
                m.insert(pe.encode(), c.to_fields_v1());
            }
        }
        Value::Object(m)
    }

    pub fn from_fields_v1(v: &Value) -> Result<Set, String> {
        fn node(v: &Value, member: bool) -> Result<Set, String> {
            let m = v
                .as_object()
                .ok_or_else(|| format!("expected an object, got {v}"))?;
            let mut s = Set {
                member,
                children: BTreeMap::new(),
            };
            for (k, c) in m {
                if k == "." {
                    s.member = true;
                    continue;
                }
                let pe = Pe::decode(k)?;
                // A child without children of its own is a member (`"f:x": {}`).
                let leaf = c.as_object().is_some_and(Map::is_empty);
                s.children.insert(pe, node(c, leaf)?);
            }
            Ok(s)
        }
        let mut s = node(v, false)?;
        s.member = false;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(n: &str) -> Pe {
        Pe::Field(n.into())
    }

    #[test]
    fn fields_v1_round_trip_and_marks_members_with_children() {
        let v = json!({
            "f:metadata": {"f:labels": {".": {}, "f:app": {}}},
            "f:spec": {"f:template": {"f:spec": {"f:containers": {
                "k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {},
                    "f:ports": {"k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}}}
            }}}},
            "f:finalizers": {"v:\"a/b\"": {}}
        });
        let s = Set::from_fields_v1(&v).unwrap();
        assert!(s.contains(&[f("metadata"), f("labels")]));
        assert!(s.contains(&[f("metadata"), f("labels"), f("app")]));
        assert!(!s.contains(&[f("metadata")]));
        let key = Pe::key(vec![
            ("protocol".into(), json!("TCP")),
            ("containerPort".into(), json!(80)),
        ]);
        assert_eq!(key.encode(), r#"k:{"containerPort":80,"protocol":"TCP"}"#);
        assert_eq!(key.to_string(), r#"[containerPort=80,protocol="TCP"]"#);
        assert_eq!(s.to_fields_v1(), v);
    }

    #[test]
    fn set_algebra() {
        let mut a = Set::default();
        a.insert(&[f("spec"), f("replicas")]);
        a.insert(&[f("spec"), f("paused")]);
        let mut b = Set::default();
        b.insert(&[f("spec"), f("replicas")]);
        assert_eq!(a.intersection(&b), b);
        let d = a.difference(&b);
        assert_eq!(d.paths(), vec![vec![f("spec"), f("paused")]]);
        assert!(a.difference(&a).is_empty());
        assert_eq!(a.union(&b), a);
        assert!(a.without_subtree(&[f("spec")]).is_empty());
        assert_eq!(path_string(&[f("spec"), f("replicas")]), ".spec.replicas");
    }
}
