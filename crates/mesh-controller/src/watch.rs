//! From the cluster to the [`Model`]: reflectors on Services and EndpointSlices (all
//! namespaces); every event marks the Service it concerns dirty, and only dirty Services are
//! recomputed ([`desired`], pure) and swapped into the model, so a change to one Service's
//! endpoints costs one Service's recompute and one delta. Nothing is published before both
//! reflectors have listed everything once, so no proxy ever gets a half-known mesh.

use crate::model::Model;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use mesh_api::v1;
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service, by namespace and name.
pub type Key = (String, String);

/// The model's names for one Service's ports: `name.namespace:port`.
pub fn entry_name(ns: &str, name: &str, port: i32) -> String {
    format!("{name}.{ns}:{port}")
}

fn prefix(ns: &str, name: &str) -> String {
    format!("{name}.{ns}:")
}

/// What the mesh says about one Service: one entry per TCP port with a ClusterIP, with the
/// ready endpoints its EndpointSlices list for that port as one backend named after the
/// Service. Headless Services (and those without ClusterIP) are left out: clients dial their
/// endpoints directly, which the proxy passes through.
pub fn desired<'a>(
    svc: &Service,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> Vec<v1::Service> {
    let ns = svc.metadata.namespace.clone().unwrap_or_default();
    let name = svc.metadata.name.clone().unwrap_or_default();
    let Some(spec) = &svc.spec else { return vec![] };
    let ips: Vec<IpAddr> = spec
        .cluster_ips
        .clone()
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default()
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    if ips.is_empty() {
        return vec![];
    }
    let slices: Vec<&EndpointSlice> = slices.into_iter().collect();
    let mut out = vec![];
    for sp in spec.ports.iter().flatten() {
        if sp.protocol.as_deref().is_some_and(|p| p != "TCP") {
            continue;
        }
        let mut endpoints = BTreeSet::new();
        for s in &slices {
            let Some(port) = s
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == sp.name.as_deref().unwrap_or(""))
                .and_then(|p| p.port)
                .and_then(|p| u16::try_from(p).ok())
            else {
                continue;
            };
            for e in &s.endpoints {
                if e.conditions.as_ref().and_then(|c| c.ready) == Some(false) {
                    continue;
                }
                for a in &e.addresses {
                    if let Ok(ip) = a.parse::<IpAddr>() {
                        endpoints.insert(SocketAddr::new(ip, port));
                    }
                }
            }
        }
        let Ok(port) = u16::try_from(sp.port) else {
            continue;
        };
        out.push(v1::Service {
            name: entry_name(&ns, &name, sp.port),
            addresses: ips
                .iter()
                .map(|ip| SocketAddr::new(*ip, port).to_string())
                .collect(),
            backends: vec![v1::Backend {
                name: name.clone(),
                endpoints: endpoints.iter().map(ToString::to_string).collect(),
                weight: 1,
            }],
            ..v1::Service::default()
        });
    }
    out
}

fn key_of(meta: &kube::api::ObjectMeta) -> Option<Key> {
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

fn slice_key(s: &EndpointSlice) -> Option<Key> {
    let svc = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?;
    Some((s.metadata.namespace.clone()?, svc.clone()))
}

/// Recomputes the Services in `dirty` from the stores into the model (one version for all).
pub fn recompute(
    model: &Model,
    services: &Store<Service>,
    slices: &Store<EndpointSlice>,
    dirty: &BTreeSet<Key>,
) -> u64 {
    let mut fresh = vec![];
    for (ns, name) in dirty {
        let svc = services.get(&reflector::ObjectRef::new(name).within(ns));
        let entries = match svc {
            Some(svc) => {
                let all = slices.state();
                let mine = all
                    .iter()
                    .filter(|s| {
                        slice_key(s)
                            .as_ref()
                            .is_some_and(|k| k.0 == *ns && k.1 == *name)
                    })
                    .map(|s| s.as_ref());
                desired(&svc, mine)
            }
            None => vec![],
        };
        fresh.push((prefix(ns, name), entries));
    }
    model.update(|m| {
        for (p, entries) in fresh {
            m.retain(|k, _| !k.starts_with(&p));
            for e in entries {
                m.insert(e.name.clone(), Arc::new(e));
            }
        }
    })
}

enum Change {
    Key(Key),
    Ready,
    Ignore,
}

fn change<K>(ev: Event<K>, key: impl Fn(&K) -> Option<Key>) -> Change {
    match ev {
        Event::Apply(o) | Event::Delete(o) | Event::InitApply(o) => {
            key(&o).map(Change::Key).unwrap_or(Change::Ignore)
        }
        Event::InitDone => Change::Ready,
        Event::Init => Change::Ignore,
    }
}

/// Feeds `model` from the cluster until the watches fail for good (kube-rs reflectors retry
/// with backoff on their own).
pub async fn run(client: kube::Client, model: Model) -> Result<(), kube::runtime::watcher::Error> {
    let (svc_store, svc_writer) = reflector::store::<Service>();
    let (slice_store, slice_writer) = reflector::store::<EndpointSlice>();
    let cfg = watcher::Config::default();
    let svcs = reflector::reflector(
        svc_writer,
        watcher::watcher(Api::<Service>::all(client.clone()), cfg.clone()),
    )
    .default_backoff()
    .map_ok(|ev| (0, change(ev, |s: &Service| key_of(&s.metadata))));
    let slices = reflector::reflector(
        slice_writer,
        watcher::watcher(Api::<EndpointSlice>::all(client), cfg),
    )
    .default_backoff()
    .map_ok(|ev| (1, change(ev, slice_key)));
    let mut events = futures::stream::select(svcs, slices).boxed();
    let mut ready = [false, false];
    let mut published = false;
    let mut dirty = BTreeSet::new();
    while let Some(first) = events.next().await {
        // Take everything already waiting as one batch: one recompute, one version.
        let mut batch = vec![first];
        while let Some(Some(more)) = events.next().now_or_never() {
            batch.push(more);
        }
        for ev in batch {
            match ev {
                Ok((_, Change::Key(k))) => {
                    dirty.insert(k);
                }
                Ok((which, Change::Ready)) => ready[which] = true,
                Ok((_, Change::Ignore)) => {}
                Err(e) => tracing::warn!(error = %e, "controller: watch error; retrying"),
            }
        }
        if !(ready[0] && ready[1]) {
            continue;
        }
        if !published {
            // The first publication: every Service known.
            dirty.extend(svc_store.state().iter().filter_map(|s| key_of(&s.metadata)));
            published = true;
        }
        if !dirty.is_empty() {
            let version = recompute(&model, &svc_store, &slice_store, &dirty);
            tracing::debug!(services = dirty.len(), version, "controller: recomputed");
            dirty.clear();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc() -> Service {
        serde_json::from_value(json!({"metadata": {"name": "app-b", "namespace": "app-b"},
            "spec": {"clusterIP": "10.96.0.11", "clusterIPs": ["10.96.0.11", "fd00:10:96::11"],
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}, {"name": "dns", "port": 53, "protocol": "UDP"}]}}))
        .unwrap()
    }

    fn slice(addrs: &[(&str, bool)]) -> EndpointSlice {
        serde_json::from_value(json!({"metadata": {"name": "app-b-x", "namespace": "app-b",
            "labels": {SERVICE_NAME_LABEL: "app-b"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": addrs.iter().map(|(a, r)| json!({"addresses": [a], "conditions": {"ready": r}})).collect::<Vec<_>>()}))
        .unwrap()
    }

    #[test]
    fn one_entry_per_tcp_port_with_ready_endpoints_only() {
        let s = slice(&[("10.244.0.5", true), ("10.244.0.6", false)]);
        let d = desired(&svc(), [&s]);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].name, "app-b.app-b:80");
        assert_eq!(d[0].addresses, ["10.96.0.11:80", "[fd00:10:96::11]:80"]);
        assert_eq!(d[0].backends[0].endpoints, ["10.244.0.5:8080"]);
        let mut headless = svc();
        headless.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        headless.spec.as_mut().unwrap().cluster_ips = Some(vec!["None".into()]);
        assert!(desired(&headless, [&s]).is_empty());
    }
}
