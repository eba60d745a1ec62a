//! Keyed reconciles: what a watch event touches, as keys, and which generated names (mirror and
//! global Services) those keys ask a pass to look at. Pure; the controller in [`crate::run`]
//! feeds it watch events and reconciles only the names it returns, so a change among 10,000
//! Services costs a few lookups, not a pass over every cache. A full pass (every name) still
//! runs when a cache is (re)listed, a cluster goes up or down, the Lease is won, a write failed
//! and on the resync period.

use crate::desired::{self, GLOBAL_PREFIX};
use std::collections::{BTreeSet, HashMap};

/// Keys waiting for a pass; adding the same key twice keeps one.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Every name: see the module docs for when.
    pub full: bool,
    /// `(namespace, name)` of source Services, in any cluster, that changed (the Service or
    /// one of its EndpointSlices).
    pub sources: BTreeSet<(String, String)>,
    /// Names in the local mirror namespace whose Service or EndpointSlices changed there (the
    /// mirror's own writes, or someone else's).
    pub owned: BTreeSet<String>,
}

impl Pending {
    pub fn full() -> Pending {
        Pending {
            full: true,
            ..Default::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.full && self.sources.is_empty() && self.owned.is_empty()
    }

    /// How many distinct keys wait (a full pass counts as one): the queue depth.
    pub fn len(&self) -> usize {
        usize::from(self.full) + self.sources.len() + self.owned.len()
    }

    pub fn merge(&mut self, other: Pending) {
        self.full |= other.full;
        self.sources.extend(other.sources);
        self.owned.extend(other.owned);
    }

    /// The key of an object of Service `namespace/service` (the Service itself, or one of its
    /// slices) in a cluster: in the local cluster's mirror namespace it is one of ours (or
    /// squats a name of ours), anywhere else a possible source.
    pub fn touch(&mut self, local: bool, mirror_namespace: &str, namespace: &str, service: &str) {
        if service.is_empty() {
            return;
        }
        if local && namespace == mirror_namespace {
            self.owned.insert(service.to_string());
        } else {
            self.sources
                .insert((namespace.to_string(), service.to_string()));
        }
    }
}

/// What a pass reconciles: one generated name, of one remote's mirrors or of the globals.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// `name` as a mirror of the remote at this index of `remoteClusters`.
    Mirror {
        remote: usize,
        name: String,
    },
    Global {
        name: String,
    },
}

/// The names `pending` asks to look at (without `full`: the caller adds every name it knows).
/// A source gives its mirror name in every remote and its global name; an owned name gives
/// the owners its prefix can belong to.
pub fn targets(pending: &Pending, prefixes: &[&str]) -> BTreeSet<Target> {
    let mut out = BTreeSet::new();
    for (ns, name) in &pending.sources {
        for (remote, p) in prefixes.iter().enumerate() {
            out.insert(Target::Mirror {
                remote,
                name: desired::mirror_name(p, ns, name),
            });
        }
        out.insert(Target::Global {
            name: desired::global_name(ns, name),
        });
    }
    for name in &pending.owned {
        if !desired::sources_of(name, GLOBAL_PREFIX).is_empty() {
            out.insert(Target::Global { name: name.clone() });
        }
        for (remote, p) in prefixes.iter().enumerate() {
            if !desired::sources_of(name, p).is_empty() {
                out.insert(Target::Mirror {
                    remote,
                    name: name.clone(),
                });
            }
        }
    }
    out
}

/// Which EndpointSlices belong to which Service (by their `kubernetes.io/service-name`
/// label), kept from one cluster's watch events, so a pass finds a Service's slices without
/// reading every slice. A relist builds a new index that replaces this one when it is done.
#[derive(Debug, Default)]
pub struct SliceIndex {
    /// `(namespace, slice)` → Service.
    service_of: HashMap<(String, String), String>,
    /// `(namespace, Service)` → slices.
    slices_of: HashMap<(String, String), BTreeSet<String>>,
}

impl SliceIndex {
    /// Records slice `namespace/slice` as now belonging to `service` (none: no label); returns
    /// the Service it belonged to before, if another.
    pub fn apply(&mut self, namespace: &str, slice: &str, service: Option<&str>) -> Option<String> {
        let before = self.delete(namespace, slice);
        if let Some(svc) = service {
            self.service_of
                .insert((namespace.into(), slice.into()), svc.into());
            self.slices_of
                .entry((namespace.into(), svc.into()))
                .or_default()
                .insert(slice.into());
        }
        before.filter(|b| Some(b.as_str()) != service)
    }

    /// Forgets slice `namespace/slice`; returns the Service it belonged to.
    pub fn delete(&mut self, namespace: &str, slice: &str) -> Option<String> {
        let svc = self
            .service_of
            .remove(&(namespace.to_string(), slice.to_string()))?;
        let key = (namespace.to_string(), svc);
        if let Some(set) = self.slices_of.get_mut(&key) {
            set.remove(slice);
            if set.is_empty() {
                self.slices_of.remove(&key);
            }
        }
        Some(key.1)
    }

    /// The slices of Service `namespace/service`, by name.
    pub fn slices(&self, namespace: &str, service: &str) -> Vec<String> {
        self.slices_of
            .get(&(namespace.to_string(), service.to_string()))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The Services in `namespace` that have slices.
    pub fn services_in(&self, namespace: &str) -> Vec<String> {
        self.slices_of
            .keys()
            .filter(|(ns, _)| ns == namespace)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Slices indexed.
    pub fn len(&self) -> usize {
        self.service_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.service_of.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(remote: usize, name: &str) -> Target {
        Target::Mirror {
            remote,
            name: name.into(),
        }
    }

    fn global(name: &str) -> Target {
        Target::Global { name: name.into() }
    }

    #[test]
    fn a_change_asks_for_its_own_names_only() {
        let prefixes = ["west", "central"];
        let mut p = Pending::default();
        // A remote's Service (or slice) and a local source outside the mirror namespace.
        p.touch(false, "m", "shop", "orders");
        p.touch(true, "shop", "shop", "");
        p.touch(true, "m", "shop", "orders");
        // The mirror's own objects in the local mirror namespace, and a name of nobody's.
        p.touch(true, "m", "m", "central-shop-73736d-cart");
        p.touch(true, "m", "m", "gl-shop-73736d-pay");
        p.touch(true, "m", "m", "not-ours");
        assert_eq!(p.len(), 4);
        assert_eq!(
            targets(&p, &prefixes).into_iter().collect::<Vec<_>>(),
            [
                mirror(0, "west-shop-73736d-orders"),
                mirror(1, "central-shop-73736d-cart"),
                mirror(1, "central-shop-73736d-orders"),
                global("gl-shop-73736d-orders"),
                global("gl-shop-73736d-pay"),
            ]
        );
        // A prefix that starts another's: the name may belong to either remote.
        let mut q = Pending::default();
        q.touch(true, "m", "m", "a-b-ns-73736d-x");
        assert_eq!(
            targets(&q, &["a", "a-b"]).into_iter().collect::<Vec<_>>(),
            [mirror(0, "a-b-ns-73736d-x"), mirror(1, "a-b-ns-73736d-x")]
        );
        let mut all = Pending::full();
        assert!(!all.is_empty());
        all.merge(p.clone());
        assert!(all.full);
        assert_eq!(all.sources, p.sources);
        assert!(Pending::default().is_empty());
    }

    #[test]
    fn the_slice_index_follows_label_moves_and_deletes() {
        let mut ix = SliceIndex::default();
        assert_eq!(ix.apply("shop", "a-1", Some("a")), None);
        assert_eq!(ix.apply("shop", "a-2", Some("a")), None);
        assert_eq!(ix.apply("other", "a-1", Some("a")), None);
        assert_eq!(ix.slices("shop", "a"), ["a-1", "a-2"]);
        // Same Service again: nothing moved.
        assert_eq!(ix.apply("shop", "a-1", Some("a")), None);
        // Relabelled to b: the old Service is returned, so both get reconciled.
        assert_eq!(ix.apply("shop", "a-2", Some("b")), Some("a".into()));
        assert_eq!(ix.slices("shop", "a"), ["a-1"]);
        assert_eq!(ix.slices("shop", "b"), ["a-2"]);
        // Label removed: no longer anyone's.
        assert_eq!(ix.apply("shop", "a-2", None), Some("b".into()));
        assert!(ix.slices("shop", "b").is_empty());
        assert_eq!(ix.delete("shop", "a-1"), Some("a".into()));
        assert_eq!(ix.delete("shop", "a-1"), None);
        assert!(ix.slices("shop", "a").is_empty());
        assert_eq!(ix.services_in("other"), ["a"]);
        assert_eq!(ix.len(), 1);
    }
}
