//! Objects seen through their OpenAPI schema: which nodes are scalars, structs, maps, atomic
//! or associative lists (`x-kubernetes-list-type`, `x-kubernetes-list-map-keys`, or the patch
//! merge key where no list type is given), and the walks server-side apply is made of: the
//! field set of an object, the comparison of two objects, the merge of an applied configuration
//! into a live object, and the removal of a set of fields.
//!
//! Nodes without a schema (`x-kubernetes-preserve-unknown-fields`, custom kinds without one) are
//! deduced from their value, as the API server does: objects are granular maps, lists atomic.

use super::fieldset::{Path, Pe, Set};
use serde_json::{Map, Value};
use std::collections::HashSet;

const REF_PREFIXES: [&str; 2] = ["#/components/schemas/", "#/definitions/"];

/// A node's type: its schema (`None` when deduced) and the definitions `$ref`s point into.
#[derive(Clone, Copy)]
pub struct Ty<'a> {
    schema: Option<&'a Value>,
    defs: &'a Map<String, Value>,
}

/// How a list's items are told apart.
#[derive(Debug, Clone, PartialEq)]
pub enum ListKind {
    Atomic,
    Set,
    Map(Vec<String>),
}

enum Kind<'a> {
    Scalar,
    /// A struct (declared fields) or a map; `atomic` when owned as a whole.
    Map {
        atomic: bool,
    },
    List {
        kind: ListKind,
        item: Ty<'a>,
    },
}

impl<'a> Ty<'a> {
    pub fn new(schema: &'a Value, defs: &'a Map<String, Value>) -> Ty<'a> {
        Ty {
            schema: Some(schema),
            defs,
        }
    }

    fn deduced(defs: &'a Map<String, Value>) -> Ty<'a> {
        Ty { schema: None, defs }
    }

    /// The schema after `$ref`s (and single-element `allOf` wrappers).
    fn resolved(&self) -> Option<&'a Value> {
        let mut s = self.schema?;
        for _ in 0..16 {
            if let Some(r) = s.get("$ref").and_then(Value::as_str) {
                let name = REF_PREFIXES.iter().find_map(|p| r.strip_prefix(p))?;
                s = self.defs.get(name)?;
            } else if let Some([one]) = s.get("allOf").and_then(Value::as_array).map(Vec::as_slice)
            {
                s = one;
            } else {
                return Some(s);
            }
        }
        None
    }

    /// An extension, on the referring schema first (property-level), then on the definition.
    fn ext(&self, name: &str) -> Option<&'a Value> {
        self.schema
            .and_then(|s| s.get(name))
            .or_else(|| self.resolved().and_then(|s| s.get(name)))
    }

    fn kind(&self, v: &Value) -> Kind<'a> {
        let deduce = |v: &Value| match v {
            Value::Object(_) => Kind::Map { atomic: false },
            Value::Array(_) => Kind::List {
                kind: ListKind::Atomic,
                item: Ty::deduced(self.defs),
            },
            _ => Kind::Scalar,
        };
        let Some(s) = self.resolved() else {
            return deduce(v);
        };
        let atomic_map =
            self.ext("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic");
        if let Some(items) = s.get("items") {
            if !v.is_array() && !v.is_null() {
                return deduce(v);
            }
            let str_ext = |n: &str| self.ext(n).and_then(Value::as_str);
            let kind = match str_ext("x-kubernetes-list-type") {
                Some("set") => ListKind::Set,
                Some("map") => ListKind::Map(
                    self.ext("x-kubernetes-list-map-keys")
                        .and_then(Value::as_array)
                        .map(|k| {
                            k.iter()
                                .filter_map(Value::as_str)
                                .map(String::from)
                                .collect()
                        })
                        .unwrap_or_default(),
                ),
                Some(_) => ListKind::Atomic,
                None => match (
                    str_ext("x-kubernetes-patch-strategy"),
                    str_ext("x-kubernetes-patch-merge-key"),
                ) {
                    (Some(st), Some(key)) if st.split(',').any(|x| x == "merge") => {
                        ListKind::Map(vec![key.to_string()])
                    }
                    (Some(st), None) if st.split(',').any(|x| x == "merge") => ListKind::Set,
                    _ => ListKind::Atomic,
                },
            };
            return Kind::List {
                kind,
                item: Ty::new(items, self.defs),
            };
        }
        if s.get("properties").is_some() || s.get("additionalProperties").is_some() {
            if !v.is_object() && !v.is_null() {
                return deduce(v);
            }
            return Kind::Map { atomic: atomic_map };
        }
        if s.get("type").and_then(Value::as_str) == Some("object")
            || s.as_object().is_some_and(|m| {
                m.get("x-kubernetes-preserve-unknown-fields") == Some(&Value::Bool(true))
            })
        {
            return match deduce(v) {
                Kind::Map { .. } => Kind::Map { atomic: atomic_map },
                k => k,
            };
        }
        if s.get("type").is_none()
            && !s
                .get("x-kubernetes-int-or-string")
                .is_some_and(|x| x == true)
        {
            return deduce(v);
        }
        Kind::Scalar
    }

    /// The type of a map entry or struct field, and whether the key is a declared field.
    fn child(&self, key: &str) -> (Ty<'a>, bool) {
        let Some(s) = self.resolved() else {
            return (Ty::deduced(self.defs), false);
        };
        if let Some(p) = s.get("properties").and_then(|p| p.get(key)) {
            return (Ty::new(p, self.defs), true);
        }
        match s.get("additionalProperties") {
            Some(a) if a.is_object() => (Ty::new(a, self.defs), false),
            _ => (Ty::deduced(self.defs), false),
        }
    }

    /// The default of a key field of a list item (`protocol: TCP` for ports).
    fn field_default(&self, key: &str) -> Option<&'a Value> {
        let (t, _) = self.child(key);
        t.schema
            .and_then(|s| s.get("default"))
            .or_else(|| t.resolved().and_then(|s| s.get("default")))
    }
}

/// The path element of a list item.
fn item_pe(kind: &ListKind, item_ty: &Ty, item: &Value, index: usize) -> Result<Pe, String> {
    match kind {
        ListKind::Atomic => Ok(Pe::Index(index)),
        ListKind::Set => {
            if item.is_object() || item.is_array() || item.is_null() {
                return Err(format!(
                    "element {index}: associative list without keys has an element that is not a scalar"
                ));
            }
            Ok(Pe::value(item))
        }
        ListKind::Map(keys) => {
            let Some(m) = item.as_object() else {
                return Err(format!(
                    "element {index}: associative list with keys may not have non-map elements"
                ));
            };
            let mut fields = Vec::new();
            for k in keys {
                if let Some(v) = m.get(k).or_else(|| item_ty.field_default(k)) {
                    fields.push((k.clone(), v.clone()));
                }
            }
            if fields.is_empty() {
                return Err(format!(
                    "element {index}: associative list with keys has an element that omits all key fields {keys:?} (and doesn't have default values for any key fields)"
                ));
            }
            Ok(Pe::key(fields))
        }
    }
}

fn err_at(path: &[Pe], e: String) -> String {
    format!("{}: {e}", super::fieldset::path_string(path))
}

/// The items of a list with their path elements, first occurrence of each.
fn index_items<'v>(
    kind: &ListKind,
    item_ty: &Ty,
    list: &'v [Value],
    path: &[Pe],
) -> Result<Vec<(Pe, &'v Value)>, String> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (i, v) in list.iter().enumerate() {
        let pe = item_pe(kind, item_ty, v, i).map_err(|e| err_at(path, e))?;
        if seen.insert(pe.encode()) {
            out.push((pe, v));
        }
    }
    Ok(out)
}

fn find<'v>(items: &[(Pe, &'v Value)], pe: &Pe) -> Option<&'v Value> {
    items.iter().find(|(p, _)| p == pe).map(|(_, v)| *v)
}

/// The set of fields an object sets (what an applier comes to own).
pub fn to_set(v: &Value, ty: Ty) -> Result<Set, String> {
    let mut set = Set::default();
    to_set_at(v, ty, &mut Vec::new(), &mut set)?;
    Ok(set)
}

fn to_set_at(v: &Value, ty: Ty, path: &mut Path, set: &mut Set) -> Result<(), String> {
    match ty.kind(v) {
        Kind::Scalar => set.insert(path),
        Kind::List { kind, item } => {
            if kind == ListKind::Atomic {
                set.insert(path);
                return Ok(());
            }
            let Some(list) = v.as_array() else {
                return Ok(());
            };
            for (pe, child) in index_items(&kind, &item, list, path)? {
                path.push(pe);
                to_set_at(child, item, path, set)?;
                set.insert(path);
                path.pop();
            }
        }
        Kind::Map { atomic } => {
            if atomic {
                set.insert(path);
                return Ok(());
            }
            let Some(m) = v.as_object() else {
                return Ok(());
            };
            for (k, child) in m {
                let (cty, declared) = ty.child(k);
                path.push(Pe::Field(k.clone()));
                to_set_at(child, cty, path, set)?;
                let empty = child.is_null() || child.as_object().is_some_and(Map::is_empty);
                if empty || !declared {
                    set.insert(path);
                }
                path.pop();
            }
        }
    }
    Ok(())
}

/// What changed from one object to the next.
#[derive(Debug, Default)]
pub struct Comparison {
    pub added: Set,
    pub modified: Set,
    pub removed: Set,
}

pub fn compare(old: &Value, new: &Value, ty: Ty) -> Result<Comparison, String> {
    let mut c = Comparison::default();
    compare_at(Some(old), Some(new), ty, &mut Vec::new(), &mut c)?;
    Ok(c)
}

fn compare_at(
    l: Option<&Value>,
    r: Option<&Value>,
    ty: Ty,
    path: &mut Path,
    c: &mut Comparison,
) -> Result<(), String> {
    let sample = r.or(l).unwrap_or(&Value::Null);
    let leaf = |c: &mut Comparison, path: &Path| match (l, r) {
        (None, Some(_)) => c.added.insert(path),
        (Some(_), None) => c.removed.insert(path),
        (Some(a), Some(b)) if a != b => c.modified.insert(path),
        _ => {}
    };
    match ty.kind(sample) {
        Kind::Scalar => {
            leaf(c, path);
            return Ok(());
        }
        Kind::List { kind, item } => {
            let la = l.and_then(Value::as_array);
            let ra = r.and_then(Value::as_array);
            let empty = |a: Option<&Vec<Value>>| a.is_none_or(Vec::is_empty);
            if kind == ListKind::Atomic || (empty(la) && empty(ra)) {
                leaf(c, path);
                return Ok(());
            }
            let li = index_items(&kind, &item, la.map_or(&[][..], Vec::as_slice), path)?;
            let ri = index_items(&kind, &item, ra.map_or(&[][..], Vec::as_slice), path)?;
            let mut order: Vec<Pe> = li.iter().map(|(p, _)| p.clone()).collect();
            order.extend(
                ri.iter()
                    .map(|(p, _)| p.clone())
                    .filter(|p| find(&li, p).is_none()),
            );
            for pe in order {
                let (lv, rv) = (find(&li, &pe), find(&ri, &pe));
                path.push(pe);
                compare_at(lv, rv, item, path, c)?;
                path.pop();
            }
        }
        Kind::Map { atomic } => {
            let lm = l.and_then(Value::as_object);
            let rm = r.and_then(Value::as_object);
            let empty = |m: Option<&Map<String, Value>>| m.is_none_or(Map::is_empty);
            if atomic || (empty(lm) && empty(rm)) {
                leaf(c, path);
                return Ok(());
            }
            let mut keys: Vec<&String> = lm.map(|m| m.keys().collect()).unwrap_or_default();
            if let Some(rm) = rm {
                keys.extend(
                    rm.keys()
                        .filter(|k| lm.is_none_or(|lm| !lm.contains_key(*k))),
                );
            }
            for k in keys {
                let (cty, _) = ty.child(k);
                path.push(Pe::Field(k.clone()));
                compare_at(
                    lm.and_then(|m| m.get(k)),
                    rm.and_then(|m| m.get(k)),
                    cty,
                    path,
                    c,
                )?;
                path.pop();
            }
        }
    }
    // A node that was not a leaf is added or removed as a whole, besides its contents.
    match (l, r) {
        (None, Some(_)) => c.added.insert(path),
        (Some(_), None) => c.removed.insert(path),
        _ => {}
    }
    Ok(())
}

/// Merges an applied configuration into a live object: scalars, atomic lists and atomic maps
/// from the configuration; maps and structs field by field; associative lists item by item, the
/// live object's own items keeping their places and the configuration's in its order.
pub fn merge(live: &Value, config: &Value, ty: Ty) -> Result<Value, String> {
    merge_at(Some(live), Some(config), ty, &mut Vec::new()).map(Option::unwrap_or_default)
}

fn merge_at(
    l: Option<&Value>,
    r: Option<&Value>,
    ty: Ty,
    path: &mut Path,
) -> Result<Option<Value>, String> {
    let (lv, rv) = match (l, r) {
        (_, None) => return Ok(l.cloned()),
        (None, _) => return Ok(r.cloned()),
        (Some(a), Some(b)) => (a, b),
    };
    match ty.kind(rv) {
        Kind::Scalar => Ok(Some(rv.clone())),
        Kind::List { kind, item } => {
            let (Some(la), Some(ra)) = (lv.as_array(), rv.as_array()) else {
                return Ok(Some(rv.clone()));
            };
            if kind == ListKind::Atomic {
                return Ok(Some(rv.clone()));
            }
            let li = index_items(&kind, &item, la, path)?;
            let ri = index_items(&kind, &item, ra, path)?;
            merge_list(&li, &ri, item, path).map(|v| Some(Value::Array(v)))
        }
        Kind::Map { atomic } => {
            let (Some(lm), Some(rm)) = (lv.as_object(), rv.as_object()) else {
                return Ok(Some(rv.clone()));
            };
            if atomic {
                return Ok(Some(rv.clone()));
            }
            let mut out = lm.clone();
            for (k, v) in rm {
                let (cty, _) = ty.child(k);
                path.push(Pe::Field(k.clone()));
                let merged = merge_at(lm.get(k), Some(v), cty, path)?;
                path.pop();
                if let Some(m) = merged {
                    out.insert(k.clone(), m);
                }
            }
            Ok(Some(Value::Object(out)))
        }
    }
}

/// The order of a merged associative list: items only the live object has stay where they
/// were; items both have, and items only the configuration has, follow the configuration's
/// order.
fn merge_list(
    li: &[(Pe, &Value)],
    ri: &[(Pe, &Value)],
    item: Ty,
    path: &mut Path,
) -> Result<Vec<Value>, String> {
    let in_r = |pe: &Pe| ri.iter().find(|(p, _)| p == pe).map(|(_, v)| *v);
    let in_l = |pe: &Pe| li.iter().find(|(p, _)| p == pe).map(|(_, v)| *v);
    // The shared items in the configuration's order; `next` is the one expected next.
    let shared: Vec<&Pe> = ri
        .iter()
        .map(|(p, _)| p)
        .filter(|p| in_l(p).is_some())
        .collect();
    let mut next = 0usize;
    let mut done: HashSet<String> = HashSet::new();
    let mut out = Vec::new();
    let (mut i, mut j) = (0usize, 0usize);
    let emit = |pe: &Pe, path: &mut Path, out: &mut Vec<Value>| -> Result<(), String> {
        path.push(pe.clone());
        let merged = merge_at(in_l(pe), in_r(pe), item, path)?;
        path.pop();
        out.extend(merged);
        Ok(())
    };
    while i < li.len() || j < ri.len() {
        if i < li.len() && j < ri.len() && li[i].0 == ri[j].0 {
            let pe = &li[i].0;
            emit(pe, path, &mut out)?;
            done.insert(pe.encode());
            if shared.get(next) == Some(&pe) {
                next += 1;
            }
            i += 1;
            j += 1;
            continue;
        }
        if i < li.len() {
            let pe = &li[i].0;
            if in_r(pe).is_none() {
                emit(pe, path, &mut out)?;
                i += 1;
                continue;
            }
            if done.contains(&pe.encode()) || shared.get(next).is_some_and(|n| *n != pe) {
                i += 1;
                continue;
            }
        }
        if j < ri.len() {
            let pe = &ri[j].0;
            emit(pe, path, &mut out)?;
            done.insert(pe.encode());
            if shared.get(next) == Some(&pe) {
                next += 1;
            }
            j += 1;
        }
    }
    Ok(out)
}

/// Removes from `v` every node whose path is a member of `set` (with all below it).
pub fn remove(v: &mut Value, set: &Set, ty: Ty) -> Result<(), String> {
    remove_at(v, set, ty, &mut Vec::new())
}

fn remove_at(v: &mut Value, set: &Set, ty: Ty, path: &mut Path) -> Result<(), String> {
    match ty.kind(v) {
        Kind::Scalar => {}
        Kind::List { kind, item } => {
            if kind == ListKind::Atomic {
                return Ok(());
            }
            let Some(list) = v.as_array_mut() else {
                return Ok(());
            };
            let mut kept = Vec::with_capacity(list.len());
            for (i, mut child) in std::mem::take(list).into_iter().enumerate() {
                let pe = item_pe(&kind, &item, &child, i).map_err(|e| err_at(path, e))?;
                match set.children.get(&pe) {
                    Some(n) if n.member => continue,
                    Some(n) => {
                        path.push(pe);
                        remove_at(&mut child, n, item, path)?;
                        path.pop();
                    }
                    None => {}
                }
                kept.push(child);
            }
            *list = kept;
        }
        Kind::Map { atomic } => {
            if atomic {
                return Ok(());
            }
            let Some(m) = v.as_object_mut() else {
                return Ok(());
            };
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let pe = Pe::Field(k.clone());
                match set.children.get(&pe) {
                    Some(n) if n.member => {
                        m.remove(&k);
                    }
                    Some(n) => {
                        let (cty, _) = ty.child(&k);
                        path.push(pe);
                        if let Some(c) = m.get_mut(&k) {
                            remove_at(c, n, cty, path)?;
                        }
                        path.pop();
                    }
                    None => {}
                }
            }
        }
    }
    Ok(())
}

/// The paths of `v` that `prune` may remove: nodes covered by `last` (what the applier set
/// before) and by no one's current set, with everything below them.
pub fn prunable(v: &Value, ty: Ty, last: &Set, owned: &Set) -> Result<Set, String> {
    let mut out = Set::default();
    prunable_at(v, ty, last, owned, &mut Vec::new(), &mut out)?;
    Ok(out)
}

fn prunable_at(
    v: &Value,
    ty: Ty,
    last: &Set,
    owned: &Set,
    path: &mut Path,
    out: &mut Set,
) -> Result<(), String> {
    let mut visit = |pe: Pe, child: &Value, cty: Ty, path: &mut Path| -> Result<(), String> {
        path.push(pe);
        if last.covers(path) {
            if !owned.covers(path) {
                out.insert(path);
            } else {
                prunable_at(child, cty, last, owned, path, out)?;
            }
        }
        path.pop();
        Ok(())
    };
    match ty.kind(v) {
        Kind::Scalar => {}
        Kind::List { kind, item } => {
            if kind == ListKind::Atomic {
                return Ok(());
            }
            for (pe, child) in index_items(
                &kind,
                &item,
                v.as_array().map_or(&[][..], Vec::as_slice),
                path,
            )? {
                visit(pe, child, item, path)?;
            }
        }
        Kind::Map { atomic } => {
            if atomic {
                return Ok(());
            }
            if let Some(m) = v.as_object() {
                for (k, child) in m {
                    let (cty, _) = ty.child(k);
                    visit(Pe::Field(k.clone()), child, cty, path)?;
                }
            }
        }
    }
    Ok(())
}
