//! Server-side apply and field ownership (`metadata.managedFields`), as kube-apiserver keeps
//! them (the semantics of Kubernetes' structured-merge-diff, written anew here):
//!
//! - every write records which manager set which fields: an `Apply` entry holds exactly the
//!   fields of the manager's last applied configuration; an `Update` entry (create, update,
//!   patch) gains the fields the write added or changed, and every other manager loses them;
//! - an apply merges the configuration into the live object by the schema (associative lists by
//!   their keys, atomic lists and structs whole), removes what the same manager applied before
//!   and no manager owns now, and fails with a conflict (409) when it would change a field
//!   another manager owns, unless forced, which moves the fields to the applier;
//! - list types and keys come from the kind's OpenAPI schema (`x-kubernetes-list-type`,
//!   `x-kubernetes-list-map-keys`, patch merge keys), see [`markers`].
//!
//! Everything here is pure: objects and schemas in, objects and entries out.

pub mod fieldset;
pub mod markers;
pub mod typed;

#[cfg(test)]
mod tests;

use fieldset::{Pe, Set, path_string};
use serde_json::{Value, json};
use typed::Ty;

/// `Apply` or `Update`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn as_str(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// One `managedFields` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: Operation,
    pub api_version: String,
    pub time: Option<String>,
    pub subresource: String,
    pub set: Set,
}

impl Entry {
    /// Who the entry belongs to: appliers by name (and subresource) whatever the version they
    /// applied; updaters by name, version and subresource.
    fn same_owner(&self, other: &Entry) -> bool {
        self.manager == other.manager
            && self.operation == other.operation
            && self.subresource == other.subresource
            && (self.operation == Operation::Apply || self.api_version == other.api_version)
    }

    /// How conflict messages name the owner.
    fn describe(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s.push_str(&format!(" with subresource {:?}", self.subresource));
        }
        if self.operation == Operation::Update {
            s.push_str(&format!(" using {}", self.api_version));
        }
        s
    }
}

/// What is writing: a manager, its operation, the version it speaks and the subresource.
#[derive(Debug, Clone)]
pub struct Writer {
    pub manager: String,
    pub api_version: String,
    pub subresource: String,
    pub now: String,
}

impl Writer {
    fn entry(&self, operation: Operation, set: Set) -> Entry {
        Entry {
            manager: self.manager.clone(),
            operation,
            api_version: self.api_version.clone(),
            time: Some(self.now.clone()),
            subresource: self.subresource.clone(),
            set,
        }
    }
}

/// Reads `metadata.managedFields`; `Err` names the bad entry.
pub fn decode(obj: &Value) -> Result<Vec<Entry>, String> {
    let Some(list) = obj["metadata"]["managedFields"].as_array() else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let at = |f: &str| format!("metadata.managedFields[{i}].{f}");
        let operation = match e["operation"].as_str() {
            Some("Apply") => Operation::Apply,
            Some("Update") => Operation::Update,
            other => {
                return Err(format!(
                    "{}: Unsupported value: {}: supported values: \"Apply\", \"Update\"",
                    at("operation"),
                    other.map_or("\"\"".to_string(), |o| format!("{o:?}"))
                ));
            }
        };
        match e["fieldsType"].as_str() {
            Some("FieldsV1") => {}
            other => {
                return Err(format!(
                    "{}: Unsupported value: {:?}: supported values: \"FieldsV1\"",
                    at("fieldsType"),
                    other.unwrap_or_default()
                ));
            }
        }
        let set = Set::from_fields_v1(&e["fieldsV1"])
            .map_err(|m| format!("{}: Invalid value: {m}", at("fieldsV1")))?;
        out.push(Entry {
            manager: e["manager"].as_str().unwrap_or_default().to_string(),
            operation,
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_string(),
            time: e["time"].as_str().map(String::from),
            subresource: e["subresource"].as_str().unwrap_or_default().to_string(),
            set,
        });
    }
    Ok(out)
}

/// The `managedFields` list, sorted as the API server sorts it (operation, time, manager,
/// version, subresource); entries that own nothing are dropped.
pub fn encode(entries: &[Entry]) -> Value {
    let mut v: Vec<&Entry> = entries.iter().filter(|e| !e.set.is_empty()).collect();
    let secs = |e: &Entry| e.time.as_deref().and_then(crate::clock::parse).unwrap_or(0);
    v.sort_by(|a, b| {
        a.operation
            .cmp(&b.operation)
            .then(secs(a).cmp(&secs(b)))
            .then(a.manager.cmp(&b.manager))
            .then(a.api_version.cmp(&b.api_version))
            .then(a.subresource.cmp(&b.subresource))
    });
    Value::Array(
        v.into_iter()
            .map(|e| {
                let mut o = json!({
                    "manager": e.manager,
                    "operation": e.operation.as_str(),
                    "apiVersion": e.api_version,
                    "fieldsType": "FieldsV1",
                    "fieldsV1": e.set.to_fields_v1(),
                });
                if let Some(t) = &e.time {
                    o["time"] = json!(t);
                }
                if !e.subresource.is_empty() {
                    o["subresource"] = json!(e.subresource);
                }
                o
            })
            .collect(),
    )
}

/// The fields no manager owns: identity and bookkeeping metadata, and what the write's
/// subresource may not change (`status` through the main resource, all but `status` through
/// `status`).
fn untracked(set: &Set, subresource: &str, has_status: bool) -> Set {
    let f = |n: &str| Pe::Field(n.into());
    let mut out = set.clone();
    for p in [vec![f("apiVersion")], vec![f("kind")], vec![f("metadata")]] {
        let mut one = Set::default();
        one.insert(&p);
        out = out.difference(&one);
    }
    for name in [
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
        "managedFields",
    ] {
        out = out.without_subtree(&[f("metadata"), f(name)]);
    }
    match subresource {
        "status" => {
            let keep = out.children.remove(&f("status"));
            out.children.clear();
            if let Some(k) = keep {
                out.children.insert(f("status"), k);
            }
        }
        _ if has_status => out = out.without_subtree(&[f("status")]),
        _ => {}
    }
    out
}

fn filter_comparison(c: &mut typed::Comparison, subresource: &str, has_status: bool) {
    c.added = untracked(&c.added, subresource, has_status);
    c.modified = untracked(&c.modified, subresource, has_status);
    c.removed = untracked(&c.removed, subresource, has_status);
}

/// A conflict: a field the write would change and who owns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub owner: String,
    pub path: String,
}

/// The error of a write.
#[derive(Debug)]
pub enum SsaError {
    /// The object does not fit its schema (a list item without its key, …).
    Invalid(String),
    Conflicts(Vec<Conflict>),
}

impl SsaError {
    /// The 409 message kube-apiserver gives.
    pub fn message(conflicts: &[Conflict]) -> String {
        if let [one] = conflicts {
            return format!(
                "Apply failed with 1 conflict: conflict with {}: {}",
                one.owner, one.path
            );
        }
        let mut owners: Vec<&str> = conflicts.iter().map(|c| c.owner.as_str()).collect();
        owners.sort();
        owners.dedup();
        let mut lines = Vec::new();
        for o in owners {
            lines.push(format!("conflicts with {o}:"));
            for c in conflicts.iter().filter(|c| c.owner == o) {
                lines.push(format!("- {}", c.path));
            }
        }
        format!(
            "Apply failed with {} conflicts: {}",
            conflicts.len(),
            lines.join("\n")
        )
    }
}

/// The schema view of one kind.
#[derive(Clone, Copy)]
pub struct Kind<'a> {
    pub ty: Ty<'a>,
    /// The kind has a `status` subresource (status is not written through the main resource).
    pub has_status: bool,
}

/// Moves ownership after `old` became `new`: the writer's fields are taken from everyone else
/// (with `force`) or reported as conflicts; removed fields leave every owner.
fn transfer(
    old: &Value,
    new: &Value,
    kind: Kind,
    entries: &mut [Entry],
    me: &Entry,
    force: bool,
) -> Result<typed::Comparison, SsaError> {
    let mut cmp = typed::compare(old, new, kind.ty).map_err(SsaError::Invalid)?;
    filter_comparison(&mut cmp, &me.subresource, kind.has_status);
    let changed = cmp.modified.union(&cmp.added);
    let mut conflicts = Vec::new();
    for e in entries.iter().filter(|e| !e.same_owner(me)) {
        for p in e.set.intersection(&changed).paths() {
            conflicts.push(Conflict {
                owner: e.describe(),
                path: path_string(&p),
            });
        }
    }
    if !force && !conflicts.is_empty() {
        return Err(SsaError::Conflicts(conflicts));
    }
    for e in entries.iter_mut().filter(|e| !e.same_owner(me)) {
        e.set = e.set.difference(&changed).difference(&cmp.removed);
    }
    Ok(cmp)
}

/// Sets the writer's entry, keeping its old time when what it owns did not change.
fn put(entries: &mut Vec<Entry>, mut me: Entry) {
    match entries.iter_mut().find(|e| e.same_owner(&me)) {
        Some(e) => {
            if e.set == me.set {
                me.time = e.time.clone();
            }
            *e = me;
        }
        None => entries.push(me),
    }
    entries.retain(|e| !e.set.is_empty());
}

/// An update (create, update, patch) by `w` from `old` to `new`: the writer comes to own what it
/// added or changed, others lose it, removed fields leave everyone. Never conflicts.
pub fn update(
    old: &Value,
    new: &Value,
    kind: Kind,
    entries: &[Entry],
    w: &Writer,
) -> Result<Vec<Entry>, SsaError> {
    let mut entries = entries.to_vec();
    let mut me = w.entry(Operation::Update, Set::default());
    let cmp = transfer(old, new, kind, &mut entries, &me, true)?;
    let before = entries
        .iter()
        .find(|e| e.same_owner(&me))
        .map(|e| e.set.clone())
        .unwrap_or_default();
    me.set = before
        .difference(&cmp.removed)
        .union(&cmp.modified)
        .union(&cmp.added);
    put(&mut entries, me);
    Ok(entries)
}

/// Server-side apply of `config` by `w` onto `live` (`{}` when the object is new). Gives the new
/// object and entries, or the conflicts (unless `force`).
pub fn apply(
    live: &Value,
    config: &Value,
    kind: Kind,
    entries: &[Entry],
    w: &Writer,
    force: bool,
) -> Result<(Value, Vec<Entry>), SsaError> {
    let mut entries = entries.to_vec();
    let merged = typed::merge(live, config, kind.ty).map_err(SsaError::Invalid)?;
    let applied = typed::to_set(config, kind.ty).map_err(SsaError::Invalid)?;
    let applied = untracked(&applied, &w.subresource, kind.has_status);
    let me = w.entry(Operation::Apply, applied);
    let last = entries
        .iter()
        .find(|e| e.same_owner(&me))
        .map(|e| e.set.clone())
        .unwrap_or_default();
    // Fields this manager applied before and no one owns now go away.
    let mut owned = me.set.clone();
    for e in entries.iter().filter(|e| !e.same_owner(&me)) {
        owned = owned.union(&e.set);
    }
    let gone = typed::prunable(&merged, kind.ty, &last, &owned).map_err(SsaError::Invalid)?;
    let mut new = merged;
    typed::remove(&mut new, &gone, kind.ty).map_err(SsaError::Invalid)?;
    transfer(live, &new, kind, &mut entries, &me, force)?;
    put(&mut entries, me);
    Ok((new, entries))
}
