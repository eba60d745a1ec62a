//! From the cluster to the [`Model`]: reflectors on Services, EndpointSlices and Pods (all
//! namespaces); every event marks the Service it concerns dirty (a Pod: the Services whose
//! slices list it, when its mesh identity changed), and only dirty Services are
//! recomputed ([`desired`], pure) and swapped into the model, so a change to one Service's
//! endpoints costs one Service's recompute and one delta. Nothing is published before both
//! reflectors have listed everything once, so no proxy ever gets a half-known mesh.
//!
//! Gateway API `HTTPRoute`s and `GRPCRoute`s (when their CRDs are installed) are watched too: a
//! route's change marks its parent Services (before and after the change) dirty, a backend
//! Service's change marks the parents of the routes naming it; [`crate::routes`] adds the
//! accepted routes to their parents' entries and says what goes into each route's
//! `status.parents`, written through the status subresource when it differs from what is there.
//! Without the CRDs (or without the RBAC to list them) the controller serves Services alone.

use crate::gateway::{GRPCRoute, HTTPRoute, RouteStatus};
use crate::metrics::Metrics;
use crate::model::{EXPORT_TO, Model};
use crate::routes::{Kind, Lowered, lower_grpc, lower_http, next_status, parent_conditions};
use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use mesh_api::v1;
use std::collections::{BTreeMap, BTreeSet, HashMap};
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

/// The namespaces whose proxies get `svc` ([`EXPORT_TO`]: comma-separated namespaces, `.` for
/// its own, `*` for all); `None`: all (no annotation, or `*` in it). Its own namespace always.
pub fn export_to(svc: &Service) -> Option<BTreeSet<String>> {
    let value = svc.metadata.annotations.as_ref()?.get(EXPORT_TO)?;
    let own = svc.metadata.namespace.clone().unwrap_or_default();
    let mut out = BTreeSet::from([own.clone()]);
    for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part {
            "*" => return None,
            "." => {}
            ns => {
                out.insert(ns.to_string());
            }
        }
    }
    Some(out)
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

/// The cluster as the watches see it.
pub struct World<'a> {
    pub services: &'a Store<Service>,
    pub slices: &'a Store<EndpointSlice>,
    pub identities: &'a HashMap<Key, String>,
    /// Every route, lowered.
    pub routes: &'a [Lowered],
}

impl World<'_> {
    fn service(&self, ns: &str, name: &str) -> Option<Arc<Service>> {
        self.services
            .get(&reflector::ObjectRef::new(name).within(ns))
    }

    /// A Service's entries from its slices, without routes.
    fn base(&self, svc: &Service, ns: &str, name: &str) -> Vec<v1::Service> {
        let identity = |pns: &str, pod: &str| {
            self.identities
                .get(&(pns.to_string(), pod.to_string()))
                .cloned()
        };
        let all = self.slices.state();
        let mine = all
            .iter()
            .filter(|s| {
                slice_key(s)
                    .as_ref()
                    .is_some_and(|k| k.0 == ns && k.1 == name)
            })
            .map(|s| s.as_ref());
        desired(svc, mine, &identity)
    }

    /// The backend of port `port` of Service `ns/name` (for routes' backendRefs).
    pub fn backend(&self, ns: &str, name: &str, port: i32) -> Option<v1::Backend> {
        let svc = self.service(ns, name)?;
        let entry = entry_name(ns, name, port);
        self.base(&svc, ns, name)
            .into_iter()
            .find(|e| e.name == entry)?
            .backends
            .into_iter()
            .next()
    }

    /// The ports of Service `ns/name`, `None` if it does not exist.
    pub fn ports(&self, ns: &str, name: &str) -> Option<Vec<i32>> {
        let svc = self.service(ns, name)?;
        Some(
            svc.spec
                .iter()
                .flat_map(|s| s.ports.iter().flatten())
                .map(|p| p.port)
                .collect(),
        )
    }

    /// Service `ns/name`'s entries: its endpoints and the accepted routes attached to it.
    pub fn entries(&self, ns: &str, name: &str) -> Vec<v1::Service> {
        let Some(svc) = self.service(ns, name) else {
            return vec![];
        };
        let mut entries = self.base(&svc, ns, name);
        let routes: Vec<&Lowered> = self.routes.iter().collect();
        crate::routes::attach(&mut entries, ns, name, &routes, &|a, b, c| {
            self.backend(a, b, c)
        });
        entries
    }
}

/// Recomputes the Services in `dirty` into the model (one version for all).
pub fn recompute(model: &Model, world: &World<'_>, dirty: &BTreeSet<Key>) -> u64 {
    let mut fresh = vec![];
    for (ns, name) in dirty {
        let export = world
            .service(ns, name)
            .and_then(|s| export_to(&s))
            .map(Arc::new);
        fresh.push((
            prefix(ns, name),
            format!("{name}.{ns}"),
            world.entries(ns, name),
            export,
        ));
    }
    model.update_with(|m, exports| {
        for (p, svc, entries, export) in fresh {
            m.retain(|k, _| !k.starts_with(&p));
            for e in entries {
                m.insert(e.name.clone(), Arc::new(e));
            }
            match export {
                Some(to) => {
                    if exports.get(&svc) != Some(&to) {
                        exports.insert(svc, to);
                    }
                }
                None => {
                    exports.remove(&svc);
                }
            }
        }
    })
}

enum Change {
    Key(Key),
    Route(Kind, Key),
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

/// Whether the cluster serves `K` to this client (its CRD installed, list allowed).
async fn served<K>(client: &kube::Client) -> bool
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    match api.list(&kube::api::ListParams::default().limit(1)).await {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(kind = %K::kind(&K::DynamicType::default()), error = %e,
                "controller: routes of this kind are not watched (CRD not installed, or not allowed to list)");
            false
        }
    }
}

fn route_change<K: kube::Resource>(kind: Kind, ev: Event<K>) -> Change {
    match change(ev, |o: &K| key_of(o.meta())) {
        Change::Key(k) => Change::Route(kind, k),
        other => other,
    }
}

/// A route's key and its parent Services.
fn route_key(r: &Lowered) -> (Kind, Key) {
    (r.kind, (r.namespace.clone(), r.name.clone()))
}

fn parents_of(r: &Lowered) -> BTreeSet<Key> {
    r.parents
        .iter()
        .filter_map(|p| r.parent_service(p))
        .collect()
}

/// Feeds `model` from the cluster until the watches fail for good (kube-rs reflectors retry
/// with backoff on their own). Meshed Pods' identities are in `trust_domain`.
pub async fn run(
    client: kube::Client,
    model: Model,
    trust_domain: String,
) -> Result<(), kube::runtime::watcher::Error> {
    run_with_metrics(client, model, trust_domain, Metrics::default()).await
}

type Tagged = Result<(usize, Change), watcher::Error>;

/// [`run`], counting route status writes in `metrics`.
pub async fn run_with_metrics(
    client: kube::Client,
    model: Model,
    trust_domain: String,
    metrics: Metrics,
) -> Result<(), kube::runtime::watcher::Error> {
    let (svc_store, svc_writer) = reflector::store::<Service>();
    let (slice_store, slice_writer) = reflector::store::<EndpointSlice>();
    let (http_store, http_writer) = reflector::store::<HTTPRoute>();
    let (grpc_store, grpc_writer) = reflector::store::<GRPCRoute>();
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
    let tdomain = trust_domain.clone();
    let pods = watcher::watcher(Api::<Pod>::all(client.clone()), cfg.clone())
        .default_backoff()
        .map_ok(move |ev| (2, pod_change(ev, &tdomain)));
    let mut streams: Vec<futures::stream::BoxStream<'static, Tagged>> =
        vec![svcs.boxed(), slices.boxed(), pods.boxed()];
    let mut ready = vec![false, false, false];
    if served::<HTTPRoute>(&client).await {
        let tag = ready.len();
        streams.push(
            reflector::reflector(
                http_writer,
                watcher::watcher(Api::<HTTPRoute>::all(client.clone()), cfg.clone()),
            )
            .default_backoff()
            .map_ok(move |ev| (tag, route_change(Kind::Http, ev)))
            .boxed(),
        );
        ready.push(false);
    }
    if served::<GRPCRoute>(&client).await {
        let tag = ready.len();
        streams.push(
            reflector::reflector(
                grpc_writer,
                watcher::watcher(Api::<GRPCRoute>::all(client.clone()), cfg.clone()),
            )
            .default_backoff()
            .map_ok(move |ev| (tag, route_change(Kind::Grpc, ev)))
            .boxed(),
        );
        ready.push(false);
    }
    // A tick, so failed status writes are tried again even when nothing else happens.
    streams.push(
        futures::stream::unfold((), |()| async {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            Some((Ok((usize::MAX, Change::Ignore)), ()))
        })
        .boxed(),
    );
    let mut events = futures::stream::select_all(streams);
    let mut identities: HashMap<Key, String> = HashMap::new();
    let mut published = false;
    let mut dirty = BTreeSet::new();
    let mut dirty_routes: BTreeSet<(Kind, Key)> = BTreeSet::new();
    // Each route's parent Services when last seen (a route that moves dirties both).
    let mut attached: BTreeMap<(Kind, Key), BTreeSet<Key>> = BTreeMap::new();
    // Routes whose status write failed: tried again next time.
    let mut status_pending: BTreeSet<(Kind, Key)> = BTreeSet::new();
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
                Ok((_, Change::Route(kind, k))) => {
                    dirty_routes.insert((kind, k));
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
        let routes: Vec<Lowered> = http_store
            .state()
            .iter()
            .map(|r| lower_http(r))
            .chain(grpc_store.state().iter().map(|r| lower_grpc(r)))
            .collect();
        if !published {
            // The first publication: every Service known, every route's status checked.
            dirty.extend(svc_store.state().iter().filter_map(|s| key_of(&s.metadata)));
            dirty_routes.extend(routes.iter().map(route_key));
            published = true;
        }
        if dirty.is_empty() && dirty_routes.is_empty() && status_pending.is_empty() {
            continue;
        }
        // Routes naming a changed Service as a backend, and routes that changed (their old
        // and new parents), make their parents dirty.
        let changed_backends = dirty.clone();
        let mut check: BTreeSet<(Kind, Key)> = std::mem::take(&mut status_pending);
        for r in &routes {
            let key = route_key(r);
            let parents = parents_of(r);
            let touched = dirty_routes.contains(&key)
                || r.backend_services()
                    .iter()
                    .any(|b| changed_backends.contains(b))
                || parents.iter().any(|p| changed_backends.contains(p));
            if touched {
                dirty.extend(parents.iter().cloned());
                check.insert(key.clone());
            }
            if let Some(old) = attached.insert(key, parents)
                && dirty_routes.contains(&route_key(r))
            {
                dirty.extend(old);
            }
        }
        // Deleted routes: their old parents.
        for key in &dirty_routes {
            if !routes.iter().any(|r| route_key(r) == *key)
                && let Some(old) = attached.remove(key)
            {
                dirty.extend(old);
            }
        }
        dirty_routes.clear();
        let world = World {
            services: &svc_store,
            slices: &slice_store,
            identities: &identities,
            routes: &routes,
        };
        if !dirty.is_empty() {
            let version = recompute(&model, &world, &dirty);
            tracing::debug!(services = dirty.len(), version, "controller: recomputed");
            dirty.clear();
        }
        for r in routes.iter().filter(|r| check.contains(&route_key(r))) {
            let current = match r.kind {
                Kind::Http => http_store
                    .get(&reflector::ObjectRef::new(&r.name).within(&r.namespace))
                    .map(|o| (o.status.clone(), o.metadata.resource_version.clone())),
                Kind::Grpc => grpc_store
                    .get(&reflector::ObjectRef::new(&r.name).within(&r.namespace))
                    .map(|o| (o.status.clone(), o.metadata.resource_version.clone())),
            };
            let Some((status, rv)) = current else {
                continue;
            };
            let ours = parent_conditions(r, &|a, b| world.ports(a, b), &|a, b, c| {
                world.backend(a, b, c)
            });
            let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            );
            let Some(next) = next_status(status.as_ref(), ours, r.generation, &now) else {
                continue;
            };
            let result = write_status(&client, r, next, rv).await;
            let label = if result.is_ok() { "written" } else { "failed" };
            metrics
                .route_status
                .get_or_create(&vec![("result", label.to_string())])
                .inc();
            if let Err(e) = result {
                tracing::info!(route = %format!("{}/{}/{}", r.kind.as_str(), r.namespace, r.name), error = %e, "controller: route status not written; trying again");
                status_pending.insert(route_key(r));
            }
        }
    }
    Ok(())
}

/// Writes `status` through the status subresource, only over the version it was computed from
/// (a conflict is tried again once the watch has the newer object).
async fn write_status(
    client: &kube::Client,
    r: &Lowered,
    status: RouteStatus,
    resource_version: Option<String>,
) -> Result<(), kube::Error> {
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": resource_version},
        "status": status,
    });
    let pp = kube::api::PatchParams::default();
    match r.kind {
        Kind::Http => {
            Api::<HTTPRoute>::namespaced(client.clone(), &r.namespace)
                .patch_status(&r.name, &pp, &kube::api::Patch::Merge(&patch))
                .await?;
        }
        Kind::Grpc => {
            Api::<GRPCRoute>::namespaced(client.clone(), &r.namespace)
                .patch_status(&r.name, &pp, &kube::api::Patch::Merge(&patch))
                .await?;
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
