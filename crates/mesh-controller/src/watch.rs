//! From the cluster to the [`Model`]: reflectors on Services, EndpointSlices and Pods (all
//! namespaces); every event marks the Service it concerns dirty (a Pod: the Services whose
//! slices list it, when its mesh identity changed), and only dirty Services are
//! recomputed ([`desired`], pure) and swapped into the model, so a change to one Service's
//! endpoints costs one Service's recompute and one delta. Nothing is published before both
//! reflectors have listed everything once, so no proxy ever gets a half-known mesh.

use crate::model::Model;
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use mesh_api::v1;
use std::collections::{BTreeSet, HashMap};
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

/// The SPIFFE ID a Pod's proxy presents, when it has mesh TLS: a container (or native
/// sidecar) with `GW_MESH_IDENTITY` or `GW_MESH_TLS_CERT` set. Its ServiceAccount names it.
pub fn pod_identity(pod: &Pod, trust_domain: &str) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let has_tls = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.env.iter().flatten())
        .any(|e| {
            (e.name == mesh_config::IDENTITY || e.name == mesh_config::TLS_CERT)
                && e.value.as_deref().is_some_and(|v| !v.is_empty())
        });
    if !has_tls {
        return None;
    }
    let ns = pod.metadata.namespace.as_deref()?;
    let sa = spec
        .service_account_name
        .as_deref()
        .filter(|s| !s.is_empty())
        .unwrap_or("default");
    Some(crate::ca::spiffe_id(trust_domain, ns, sa))
}

/// What the mesh says about one Service: one entry per TCP port with a ClusterIP, with the
/// ready endpoints its EndpointSlices list for that port as one backend named after the
/// Service, and for each endpoint whose Pod is meshed ([`pod_identity`]) the identity it must
/// present. Headless Services (and those without ClusterIP) are left out: clients dial their
/// endpoints directly, which the proxy passes through.
pub fn desired<'a>(
    svc: &Service,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    identity: &dyn Fn(&str, &str) -> Option<String>,
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
        let mut identities = std::collections::BTreeMap::new();
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
                let id = e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| {
                        let pod_ns = r.namespace.as_deref().unwrap_or(&ns);
                        identity(pod_ns, r.name.as_deref()?)
                    });
                for a in &e.addresses {
                    if let Ok(ip) = a.parse::<IpAddr>() {
                        let ep = SocketAddr::new(ip, port);
                        endpoints.insert(ep);
                        if let Some(id) = &id {
                            identities.insert(ep.to_string(), id.clone());
                        }
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
                identities: identities.into_iter().collect(),
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
    identities: &HashMap<Key, String>,
    dirty: &BTreeSet<Key>,
) -> u64 {
    let identity =
        |ns: &str, pod: &str| identities.get(&(ns.to_string(), pod.to_string())).cloned();
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
                desired(&svc, mine, &identity)
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
    /// A Pod and its mesh identity now (`None`: not meshed, or gone).
    Pod(Key, Option<String>),
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

fn pod_change(ev: Event<Pod>, trust_domain: &str) -> Change {
    match ev {
        Event::Apply(p) | Event::InitApply(p) => match key_of(&p.metadata) {
            Some(k) => Change::Pod(k, pod_identity(&p, trust_domain)),
            None => Change::Ignore,
        },
        Event::Delete(p) => key_of(&p.metadata).map_or(Change::Ignore, |k| Change::Pod(k, None)),
        Event::InitDone => Change::Ready,
        Event::Init => Change::Ignore,
    }
}

/// The Services whose EndpointSlices list `pod`.
fn services_of(slices: &Store<EndpointSlice>, pod: &Key) -> Vec<Key> {
    slices
        .state()
        .iter()
        .filter(|s| {
            s.endpoints.iter().any(|e| {
                e.target_ref.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some("Pod")
                        && r.name.as_deref() == Some(pod.1.as_str())
                        && r.namespace.as_deref().or(s.metadata.namespace.as_deref())
                            == Some(pod.0.as_str())
                })
            })
        })
        .filter_map(|s| slice_key(s))
        .collect()
}

/// Feeds `model` from the cluster until the watches fail for good (kube-rs reflectors retry
/// with backoff on their own). Meshed Pods' identities are in `trust_domain`.
pub async fn run(
    client: kube::Client,
    model: Model,
    trust_domain: String,
) -> Result<(), kube::runtime::watcher::Error> {
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
        watcher::watcher(Api::<EndpointSlice>::all(client.clone()), cfg.clone()),
    )
    .default_backoff()
    .map_ok(|ev| (1, change(ev, slice_key)));
    let pods = watcher::watcher(Api::<Pod>::all(client), cfg)
        .default_backoff()
        .map_ok(move |ev| (2, pod_change(ev, &trust_domain)));
    let mut events = futures::stream::select(futures::stream::select(svcs, slices), pods).boxed();
    let mut ready = [false, false, false];
    let mut identities: HashMap<Key, String> = HashMap::new();
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
                Ok((_, Change::Pod(k, id))) => {
                    if identities.get(&k) != id.as_ref() {
                        match id {
                            Some(id) => identities.insert(k.clone(), id),
                            None => identities.remove(&k),
                        };
                        dirty.extend(services_of(&slice_store, &k));
                    }
                }
                Ok((which, Change::Ready)) => ready[which] = true,
                Ok((_, Change::Ignore)) => {}
                Err(e) => tracing::warn!(error = %e, "controller: watch error; retrying"),
            }
        }
        if !ready.iter().all(|r| *r) {
            continue;
        }
        if !published {
            // The first publication: every Service known.
            dirty.extend(svc_store.state().iter().filter_map(|s| key_of(&s.metadata)));
            published = true;
        }
        if !dirty.is_empty() {
            let version = recompute(&model, &svc_store, &slice_store, &identities, &dirty);
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
        let d = desired(&svc(), [&s], &|_, _| None);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].name, "app-b.app-b:80");
        assert_eq!(d[0].addresses, ["10.96.0.11:80", "[fd00:10:96::11]:80"]);
        assert_eq!(d[0].backends[0].endpoints, ["10.244.0.5:8080"]);
        let mut headless = svc();
        headless.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        headless.spec.as_mut().unwrap().cluster_ips = Some(vec!["None".into()]);
        assert!(desired(&headless, [&s], &|_, _| None).is_empty());
    }

    #[test]
    fn meshed_pods_endpoints_carry_their_service_accounts_identity() {
        let mut s = slice(&[("10.244.0.5", true), ("10.244.0.6", true)]);
        s.endpoints[0].target_ref = Some(
            serde_json::from_value(json!({"kind": "Pod", "name": "b-1", "namespace": "app-b"}))
                .unwrap(),
        );
        s.endpoints[1].target_ref = Some(
            serde_json::from_value(json!({"kind": "Pod", "name": "b-2", "namespace": "app-b"}))
                .unwrap(),
        );
        let meshed: Pod = serde_json::from_value(json!({"metadata": {"name": "b-1", "namespace": "app-b"},
            "spec": {"serviceAccountName": "app-b", "containers": [{"name": "app"}],
                "initContainers": [{"name": "ghostwire-proxy", "env": [{"name": mesh_config::IDENTITY, "value": "spiffe://x"}]}]}}))
        .unwrap();
        let plain: Pod =
            serde_json::from_value(json!({"metadata": {"name": "b-2", "namespace": "app-b"},
            "spec": {"containers": [{"name": "app"}]}}))
            .unwrap();
        assert_eq!(
            pod_identity(&meshed, "td").as_deref(),
            Some("spiffe://td/ns/app-b/sa/app-b")
        );
        assert_eq!(pod_identity(&plain, "td"), None);
        let pods = [meshed, plain];
        let lookup = |ns: &str, name: &str| {
            pods.iter()
                .find(|p| {
                    p.metadata.name.as_deref() == Some(name)
                        && p.metadata.namespace.as_deref() == Some(ns)
                })
                .and_then(|p| pod_identity(p, "td"))
        };
        let d = desired(&svc(), [&s], &lookup);
        let ids = &d[0].backends[0].identities;
        assert_eq!(ids.len(), 1, "{ids:?}");
        assert_eq!(ids["10.244.0.5:8080"], "spiffe://td/ns/app-b/sa/app-b");
    }
}
