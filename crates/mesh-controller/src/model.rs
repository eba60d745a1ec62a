//! The mesh as the controller sees it: one `ghostwire.mesh.v1.Service` per meshed Service port,
//! versioned, with the namespaces each Service is exported to. Writers replace or change
//! entries; every change bumps the version once, records which entries it touched and wakes the
//! streams, which bring their proxy's view up to date ([`advance`]) and send the difference.
//!
//! **Who sees what** (the per-proxy view): a proxy gets the entries of the Services its Pod may
//! reach by name: every Service of its own namespace, and Services of other namespaces unless
//! they restrict themselves with the annotation [`EXPORT_TO`] (`ghostwire.dev/export-to`: a
//! comma-separated list of namespaces, `.` for the Service's own, `*` for all; absent: all,
//! which is what Kubernetes allows without NetworkPolicies). The rule follows Istio's
//! `networking.istio.io/exportTo` on Services: it is declared by the Service's owner, known
//! before any proxy asks, and cheap to check per entry; NetworkPolicies are not read.

use crate::auth::Caller;
use mesh_api::v1;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio::sync::watch;

/// The Service annotation that limits which namespaces' proxies get it.
pub const EXPORT_TO: &str = "ghostwire.dev/export-to";

pub type ServiceMap = BTreeMap<String, Arc<v1::Service>>;

/// `name.namespace` of a Service → the namespaces whose proxies get its entries (Services
/// exported everywhere are not listed).
pub type ExportMap = BTreeMap<String, Arc<BTreeSet<String>>>;

/// The Service (`name.namespace`) an entry (`name.namespace:port`) belongs to.
pub fn service_of(entry: &str) -> &str {
    entry.rsplit_once(':').map_or(entry, |(s, _)| s)
}

/// The entries one version changed, relative to the version before it.
#[derive(Debug, Default)]
pub struct Changes {
    pub since: u64,
    pub names: BTreeSet<String>,
}

/// One immutable state of the mesh.
#[derive(Debug, Default)]
pub struct MeshState {
    /// +1 per change; 0: nothing known yet.
    pub version: u64,
    pub services: ServiceMap,
    pub export: ExportMap,
    /// What changed since `version - 1`.
    pub changes: Changes,
}

impl MeshState {
    /// Whether a proxy in namespace `ns` gets entry `name`.
    pub fn visible(&self, name: &str, ns: &str) -> bool {
        let svc = service_of(name);
        match self.export.get(svc) {
            None => true,
            Some(to) => to.contains(ns) || svc.split_once('.').is_some_and(|(_, own)| own == ns),
        }
    }
}

/// The current [`MeshState`], replaced whole on every change.
#[derive(Clone)]
pub struct Model {
    tx: Arc<watch::Sender<Arc<MeshState>>>,
}

impl Default for Model {
    fn default() -> Self {
        Model {
            tx: Arc::new(watch::channel(Arc::new(MeshState::default())).0),
        }
    }
}

fn changed_names(old: &MeshState, services: &ServiceMap, export: &ExportMap) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = services
        .iter()
        .filter(|(k, v)| {
            old.services
                .get(*k)
                .is_none_or(|o| !Arc::ptr_eq(o, v) && o != *v)
        })
        .map(|(k, _)| k.clone())
        .collect();
    names.extend(
        old.services
            .keys()
            .filter(|k| !services.contains_key(*k))
            .cloned(),
    );
    let moved: BTreeSet<&String> = export
        .iter()
        .filter(|(k, v)| old.export.get(*k) != Some(*v))
        .map(|(k, _)| k)
        .chain(old.export.keys().filter(|k| !export.contains_key(*k)))
        .collect();
    if !moved.is_empty() {
        names.extend(
            services
                .keys()
                .chain(old.services.keys())
                .filter(|k| moved.iter().any(|m| service_of(k) == m.as_str()))
                .cloned(),
        );
    }
    names
}

impl Model {
    pub fn load(&self) -> Arc<MeshState> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<MeshState>> {
        self.tx.subscribe()
    }

    /// Applies `change` to a copy of the entries and export scopes; a change that changes
    /// nothing keeps the version and wakes nobody. Returns the version now current.
    pub fn update_with(&self, change: impl FnOnce(&mut ServiceMap, &mut ExportMap)) -> u64 {
        let mut out = 0;
        self.tx.send_if_modified(|cur| {
            let mut services = cur.services.clone();
            let mut export = cur.export.clone();
            change(&mut services, &mut export);
            let names = changed_names(cur, &services, &export);
            if names.is_empty() {
                out = cur.version;
                return false;
            }
            out = cur.version + 1;
            *cur = Arc::new(MeshState {
                version: out,
                services,
                export,
                changes: Changes {
                    since: cur.version,
                    names,
                },
            });
            true
        });
        out
    }

    /// Applies `change` to a copy of the entries (export scopes unchanged).
    pub fn update(&self, change: impl FnOnce(&mut ServiceMap)) -> u64 {
        self.update_with(|s, _| change(s))
    }

    /// Replaces every service.
    pub fn replace(&self, services: impl IntoIterator<Item = v1::Service>) -> u64 {
        let new: ServiceMap = services
            .into_iter()
            .map(|s| (s.name.clone(), Arc::new(s)))
            .collect();
        self.update(|m| *m = new)
    }
}

/// What one proxy gets: the entries visible from its Pod's namespace ([`MeshState::visible`]).
pub fn view_for(state: &MeshState, caller: &Caller) -> ServiceMap {
    state
        .services
        .iter()
        .filter(|(k, _)| state.visible(k, &caller.namespace))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// How [`advance`] brought a view up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recompute {
    /// Only the entries the new version changed were looked at.
    Incremental,
    /// Versions were skipped: the whole view was recomputed and compared.
    Full,
}

/// Brings `view` (what a proxy in namespace `ns` was sent at version `seen`) to `state`; returns
/// the delta. When `state` is the version right after `seen`, only the entries it changed are
/// looked at; otherwise the whole view is recomputed.
pub fn advance(
    view: &mut ServiceMap,
    seen: u64,
    state: &MeshState,
    ns: &str,
) -> (Vec<v1::Service>, Vec<String>, Recompute) {
    if state.changes.since != seen || state.version == 0 {
        let new: ServiceMap = state
            .services
            .iter()
            .filter(|(k, _)| state.visible(k, ns))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (changed, removed) = diff(view, &new);
        *view = new;
        return (changed, removed, Recompute::Full);
    }
    let (mut changed, mut removed) = (vec![], vec![]);
    for name in &state.changes.names {
        let new = state.services.get(name).filter(|_| state.visible(name, ns));
        match (new, view.get(name)) {
            (Some(n), Some(o)) if Arc::ptr_eq(n, o) || n == o => {}
            (Some(n), _) => {
                changed.push((**n).clone());
                view.insert(name.clone(), n.clone());
            }
            (None, Some(_)) => {
                removed.push(name.clone());
                view.remove(name);
            }
            (None, None) => {}
        }
    }
    (changed, removed, Recompute::Incremental)
}

/// The delta from `old` to `new`: services added or changed (whole), and names removed.
pub fn diff(old: &ServiceMap, new: &ServiceMap) -> (Vec<v1::Service>, Vec<String>) {
    let changed = new
        .iter()
        .filter(|(k, v)| old.get(*k).is_none_or(|o| !Arc::ptr_eq(o, v) && o != *v))
        .map(|(_, v)| (**v).clone())
        .collect();
    let removed = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    (changed, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, weight: u32) -> v1::Service {
        v1::Service {
            name: name.into(),
            addresses: vec!["10.96.0.11:80".into()],
            backends: vec![v1::Backend {
                name: "v1".into(),
                endpoints: vec!["10.244.0.5:8080".into()],
                weight,
                ..Default::default()
            }],
            ..v1::Service::default()
        }
    }

    #[test]
    fn versions_move_only_on_change_and_diffs_are_minimal() {
        let m = Model::default();
        assert_eq!(m.replace([svc("a", 1), svc("b", 1)]), 1);
        assert_eq!(m.replace([svc("a", 1), svc("b", 1)]), 1);
        let before = m.load();
        assert_eq!(
            m.update(|s| {
                s.insert("b".into(), Arc::new(svc("b", 2)));
                s.remove("a");
                s.insert("c".into(), Arc::new(svc("c", 1)));
            }),
            2
        );
        let after = m.load();
        let (changed, removed) = diff(&before.services, &after.services);
        let names: Vec<&str> = changed.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["b", "c"]);
        assert_eq!(removed, ["a"]);
        assert_eq!(diff(&after.services, &after.services), (vec![], vec![]));
    }

    #[test]
    fn views_follow_export_scopes_and_advance_incrementally() {
        let m = Model::default();
        let name = |n: &str, ns: &str| format!("{n}.{ns}:80");
        let entry = |n: &str, ns: &str, w: u32| {
            let mut s = svc(&name(n, ns), w);
            s.addresses = vec![format!("10.96.0.{}:80", n.len() + ns.len() + w as usize)];
            s
        };
        m.update_with(|s, e| {
            for (n, ns) in [("a", "ns-a"), ("b", "ns-b"), ("pub", "ns-b")] {
                s.insert(name(n, ns), Arc::new(entry(n, ns, 1)));
            }
            e.insert("a.ns-a".into(), Arc::new(["ns-a".to_string()].into()));
            e.insert(
                "b.ns-b".into(),
                Arc::new(["ns-b".to_string(), "ns-c".to_string()].into()),
            );
        });
        let st = m.load();
        let names = |v: &ServiceMap| v.keys().cloned().collect::<Vec<_>>();
        let (mut va, mut vb, mut vc) = (ServiceMap::new(), ServiceMap::new(), ServiceMap::new());
        assert_eq!(advance(&mut va, 0, &st, "ns-a").2, Recompute::Incremental);
        advance(&mut vb, 0, &st, "ns-b");
        advance(&mut vc, 0, &st, "ns-c");
        assert_eq!(names(&va), ["a.ns-a:80", "pub.ns-b:80"]);
        assert_eq!(names(&vb), ["b.ns-b:80", "pub.ns-b:80"]);
        assert_eq!(names(&vc), ["b.ns-b:80", "pub.ns-b:80"]);
        let v1 = st.version;

        // A change in ns-a: ns-b's view gets nothing, looking at one entry only.
        let v2 = m.update(|s| {
            s.insert(name("a", "ns-a"), Arc::new(entry("a", "ns-a", 2)));
        });
        let st = m.load();
        assert_eq!(st.changes.names.len(), 1);
        let (changed, removed, how) = advance(&mut vb, v1, &st, "ns-b");
        assert_eq!(
            (changed.len(), removed.len(), how),
            (0, 0, Recompute::Incremental)
        );
        let (changed, _, _) = advance(&mut va, v1, &st, "ns-a");
        assert_eq!(changed[0].backends[0].weight, 2);

        // b stops being exported to ns-c: ns-c loses it, the others see no change.
        m.update_with(|_, e| {
            e.insert("b.ns-b".into(), Arc::new(["ns-b".to_string()].into()));
        });
        let st = m.load();
        assert_eq!(advance(&mut vc, v2, &st, "ns-c").1, ["b.ns-b:80"]);
        assert_eq!(
            advance(&mut vb, v2, &st, "ns-b"),
            (vec![], vec![], Recompute::Incremental)
        );

        // A proxy that skipped versions recomputes its whole view.
        m.update_with(|_, e| {
            e.remove("a.ns-a");
        });
        let st = m.load();
        let (changed, _, how) = advance(&mut vc, v1, &st, "ns-c");
        assert_eq!(how, Recompute::Full);
        assert_eq!(
            changed.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["a.ns-a:80"]
        );
    }
}
