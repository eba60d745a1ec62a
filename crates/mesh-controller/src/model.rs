//! The mesh as the controller sees it: one `ghostwire.mesh.v1.Service` per meshed Service,
//! versioned. Writers replace or change services; every change bumps the version once and
//! wakes the streams, which compute their proxy's view and send the difference.

use crate::auth::Caller;
use mesh_api::v1;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

pub type ServiceMap = BTreeMap<String, Arc<v1::Service>>;

/// One immutable state of the mesh.
#[derive(Debug, Default)]
pub struct MeshState {
    /// +1 per change; 0: nothing known yet.
    pub version: u64,
    pub services: ServiceMap,
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

impl Model {
    pub fn load(&self) -> Arc<MeshState> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<MeshState>> {
        self.tx.subscribe()
    }

    /// Applies `change` to a copy of the services; a change that changes nothing keeps the
    /// version and wakes nobody. Returns the version now current.
    pub fn update(&self, change: impl FnOnce(&mut ServiceMap)) -> u64 {
        let mut out = 0;
        self.tx.send_if_modified(|cur| {
            let mut services = cur.services.clone();
            change(&mut services);
            if services == cur.services {
                out = cur.version;
                return false;
            }
            out = cur.version + 1;
            *cur = Arc::new(MeshState {
                version: out,
                services,
            });
            true
        });
        out
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

/// What one proxy gets: today every meshed Service (a Pod may call any of them; visibility rules
/// are not implemented, see the README).
pub fn view_for(state: &MeshState, _caller: &Caller) -> ServiceMap {
    state.services.clone()
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
}
