//! Pure desired state: remote (and local) Services and EndpointSlices in, the mirror
//! namespace's Services and EndpointSlices out. No I/O; table-tested.
//!
//! - A mirror of remote Service `ns/name` from the remote with prefix `p` is
//!   `p-ns-73736d-name`: the remote's ports (nodePorts dropped), headless kept headless, no
//!   selector, the remote's labels (minus the selector keys) plus the ownership labels. Each of
//!   the remote's EndpointSlices of that Service becomes one local slice
//!   `<mirror name>-<hash of the source slice name>`, its endpoints and ports copied (without
//!   `nodeName` and `targetRef`, which name objects of the other cluster).
//! - A global Service `gl-ns-73736d-name` gathers the Services labelled global of every cluster
//!   (the local one too): one EndpointSlice per source cluster and address family. Ports and
//!   headlessness come from one source chosen deterministically (the local cluster if it has
//!   the Service, else the first remote by name); a source that differs is a [`Conflict`].
//!   Every endpoint is hinted: local ones to the local zones, remote ones to the zone `remote`.
//! - Names longer than 63 characters are not produced; they come back as [`Refusal`]s.

use crate::config::Selector;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointHints, EndpointSlice, ForZone};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::{BTreeMap, BTreeSet};

/// Between namespace and name in generated names ("ssm" in hex), as the seed has it.
pub const SEPARATOR: &str = "73736d";
/// `endpointslice.kubernetes.io/managed-by` of every slice the mirror writes.
pub const MANAGED_BY: &str = "ghostwire.dev/service-mirror";
pub const LABEL_MIRRORED_SVC: &str = "mirrored-svc";
pub const LABEL_PREFIX_SYNC: &str = "mirror-svc-prefix-sync";
pub const LABEL_GLOBAL_SVC: &str = "global-svc";
pub const LABEL_MIRRORED_SLICE: &str = "mirrored-endpoint-slice";
pub const LABEL_SLICE_SYNC: &str = "mirror-endpointslice-sync-name";
pub const ANNOTATION_GLOBAL_CLUSTERS: &str = "global-svc-clusters";
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";
pub const LABEL_MANAGED_BY: &str = "endpointslice.kubernetes.io/managed-by";
/// Topology-aware routing, as Kubernetes ≥ 1.27 reads it.
pub const ANNOTATION_TOPOLOGY_MODE: &str = "service.kubernetes.io/topology-mode";
/// The same for Kubernetes 1.23-1.26 (what the seed sets).
pub const ANNOTATION_TOPOLOGY_HINTS: &str = "service.kubernetes.io/topology-aware-hints";
/// Topology-aware routing as the local cluster's version reads it.
pub const TRAFFIC_DISTRIBUTION: &str = "PreferClose";

/// How a global Service asks for topology-aware routing, by the local cluster's version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// 1.31 and later: `spec.trafficDistribution: PreferClose`.
    TrafficDistribution,
    /// 1.27-1.30: `service.kubernetes.io/topology-mode: Auto`.
    TopologyMode,
    /// 1.23-1.26 (and a version that cannot be read): the seed's
    /// `service.kubernetes.io/topology-aware-hints: auto`.
    HintsAnnotation,
}

impl Topology {
    /// From `/version`'s `major` and `minor` (`"1"`, `"33"`, or `"27+"` as some providers say).
    pub fn for_version(major: &str, minor: &str) -> Topology {
        let num = |s: &str| -> Option<u32> { s.trim_end_matches('+').parse().ok() };
        match (num(major), num(minor)) {
            (Some(1), Some(m)) if m >= 31 => Topology::TrafficDistribution,
            (Some(1), Some(m)) if m >= 27 => Topology::TopologyMode,
            (Some(n), Some(_)) if n > 1 => Topology::TrafficDistribution,
            _ => Topology::HintsAnnotation,
        }
    }
}

/// The hint zone of every remote endpoint.
pub const REMOTE_ZONE: &str = "remote";
/// Longest Service name Kubernetes accepts.
pub const MAX_NAME: usize = 63;

pub fn mirror_name(prefix: &str, namespace: &str, name: &str) -> String {
    format!("{prefix}-{namespace}-{SEPARATOR}-{name}")
}

pub fn global_name(namespace: &str, name: &str) -> String {
    format!("{GLOBAL_PREFIX}-{namespace}-{SEPARATOR}-{name}")
}

/// The prefix of global Service names.
pub const GLOBAL_PREFIX: &str = "gl";

/// Every source `(namespace, name)` whose name with `prefix` is `generated` (the inverse of
/// [`mirror_name`] and, with [`GLOBAL_PREFIX`], of [`global_name`]). A namespace may itself
/// hold the separator, so one name can have several sources; each split is one candidate.
pub fn sources_of(generated: &str, prefix: &str) -> Vec<(String, String)> {
    let Some(rest) = generated
        .strip_prefix(prefix)
        .and_then(|r| r.strip_prefix('-'))
    else {
        return Vec::new();
    };
    let sep = format!("-{SEPARATOR}-");
    rest.match_indices(&sep)
        .map(|(i, _)| (&rest[..i], &rest[i + sep.len()..]))
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
        .map(|(ns, name)| (ns.to_string(), name.to_string()))
        .collect()
}

/// A generated name that would be too long: nothing is written for that source.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Refusal {
    pub cluster: String,
    pub namespace: String,
    pub service: String,
    pub wanted: String,
}

/// Sources of one global Service that disagree on `field`; `chosen` won.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    pub service: String,
    pub field: &'static str,
    pub chosen: String,
    pub others: Vec<String>,
}

/// What the mirror namespace should hold (of one owner: a remote's mirrors, or the globals).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    pub services: BTreeMap<String, Service>,
    pub slices: BTreeMap<String, EndpointSlice>,
    pub refused: Vec<Refusal>,
    pub conflicts: Vec<Conflict>,
}

/// One cluster's view: its Services and EndpointSlices (all namespaces).
#[derive(Debug, Clone, Copy)]
pub struct ClusterView<'a> {
    pub name: &'a str,
    pub services: &'a [Service],
    pub slices: &'a [EndpointSlice],
}

/// The selectors and where mirrors go.
#[derive(Debug, Clone)]
pub struct Rules<'a> {
    pub mirror_namespace: &'a str,
    pub mirror: &'a Selector,
    pub global: &'a Selector,
    pub routing: &'a Selector,
    pub topology: Topology,
}

fn meta_of(s: &Service) -> (&str, &str) {
    (
        s.metadata.namespace.as_deref().unwrap_or_default(),
        s.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// Objects the mirror itself wrote (in any cluster) are never sources: no mirror of a mirror.
fn is_source(s: &Service, rules: &Rules) -> bool {
    let labels = s.metadata.labels.as_ref();
    let ours = |k: &str| labels.is_some_and(|l| l.contains_key(k));
    meta_of(s).0 != rules.mirror_namespace && !ours(LABEL_MIRRORED_SVC) && !ours(LABEL_GLOBAL_SVC)
}

fn headless(s: &Service) -> bool {
    s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

/// Ports as a mirror carries them: no nodePort (it would collide locally).
fn ports(s: &Service) -> Vec<ServicePort> {
    s.spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|p| ServicePort {
            node_port: None,
            ..p
        })
        .collect()
}

fn service_object(
    name: &str,
    rules: &Rules,
    labels: BTreeMap<String, String>,
    annotations: Option<BTreeMap<String, String>>,
    ports: Vec<ServicePort>,
    headless: bool,
) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(rules.mirror_namespace.to_string()),
            labels: Some(labels),
            annotations,
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: headless.then(|| "None".to_string()),
            ports: Some(ports),
            ..Default::default()
        }),
        status: None,
    }
}

/// The slices of Service `ns/name` in a cluster's view.
fn slices_of<'a>(view: &ClusterView<'a>, ns: &str, name: &str) -> Vec<&'a EndpointSlice> {
    let mut v: Vec<&EndpointSlice> = view
        .slices
        .iter()
        .filter(|e| {
            e.metadata.namespace.as_deref() == Some(ns)
                && e.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_SERVICE_NAME))
                    .map(String::as_str)
                    == Some(name)
                && e.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(LABEL_MANAGED_BY))
                    .map(String::as_str)
                    != Some(MANAGED_BY)
        })
        .collect();
    v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    v
}

/// FNV-1a, 32 bits, as 8 hex digits: a stable short suffix.
fn short_hash(s: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// An endpoint as the mirror writes it: the other cluster's node and Pod refs dropped.
fn foreign(e: &Endpoint) -> Endpoint {
    Endpoint {
        node_name: None,
        target_ref: None,
        ..e.clone()
    }
}

/// Mirrors of one remote's labelled Services, in `rules.mirror_namespace`.
pub fn mirrors(remote: &ClusterView, prefix: &str, rules: &Rules) -> Desired {
    let mut out = Desired::default();
    let selector_keys: BTreeSet<&str> = [rules.mirror, rules.global, rules.routing]
        .iter()
        .flat_map(|s| s.0.iter().map(|(k, _)| k.as_str()))
        .collect();
    for svc in remote.services {
        if !is_source(svc, rules) || !rules.mirror.matches(svc.metadata.labels.as_ref()) {
            continue;
        }
        let (ns, name) = meta_of(svc);
        if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
            continue;
        }
        let mname = mirror_name(prefix, ns, name);
        if mname.len() > MAX_NAME {
            out.refused.push(Refusal {
                cluster: remote.name.to_string(),
                namespace: ns.to_string(),
                service: name.to_string(),
                wanted: mname,
            });
            continue;
        }
        let mut labels: BTreeMap<String, String> = svc
            .metadata
            .labels
            .iter()
            .flatten()
            .filter(|(k, _)| !selector_keys.contains(k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(LABEL_MIRRORED_SVC.into(), "true".into());
        labels.insert(LABEL_PREFIX_SYNC.into(), prefix.into());
        out.services.insert(
            mname.clone(),
            service_object(&mname, rules, labels, None, ports(svc), headless(svc)),
        );
        for src in slices_of(remote, ns, name) {
            let sname = format!(
                "{mname}-{}",
                short_hash(src.metadata.name.as_deref().unwrap_or_default())
            );
            let labels = BTreeMap::from([
                (LABEL_SERVICE_NAME.to_string(), mname.clone()),
                (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
                (LABEL_MIRRORED_SLICE.to_string(), "true".to_string()),
                (LABEL_PREFIX_SYNC.to_string(), prefix.to_string()),
            ]);
            out.slices.insert(
                sname.clone(),
                EndpointSlice {
                    metadata: ObjectMeta {
                        name: Some(sname),
                        namespace: Some(rules.mirror_namespace.to_string()),
                        labels: Some(labels),
                        ..Default::default()
                    },
                    address_type: src.address_type.clone(),
                    endpoints: src.endpoints.iter().map(foreign).collect(),
                    ports: src.ports.clone(),
                },
            );
        }
    }
    out
}

/// One cluster's part in the global services: its view, whether it is the local cluster, and
/// whether its endpoints count (a remote failed over after its grace period does not).
#[derive(Debug, Clone, Copy)]
pub struct GlobalSource<'a> {
    pub view: ClusterView<'a>,
    pub local: bool,
    pub endpoints: bool,
}

fn port_key(p: &ServicePort) -> String {
    format!(
        "{}:{}/{}->{}",
        p.name.as_deref().unwrap_or_default(),
        p.port,
        p.protocol.as_deref().unwrap_or("TCP"),
        serde_json::to_string(&p.target_port).unwrap_or_default()
    )
}

/// The global Services of all `sources` (local first is not required: the order is fixed here).
pub fn globals(sources: &[GlobalSource], local_zones: &[String], rules: &Rules) -> Desired {
    let mut out = Desired::default();
    // (ns, name) → [(source index, service)], sources ordered local first, then by name.
    let mut order: Vec<usize> = (0..sources.len()).collect();
    order.sort_by_key(|&i| (!sources[i].local, sources[i].view.name));
    let mut groups: BTreeMap<(String, String), Vec<(usize, &Service)>> = BTreeMap::new();
    for &i in &order {
        for svc in sources[i].view.services {
            if is_source(svc, rules) && rules.global.matches(svc.metadata.labels.as_ref()) {
                let (ns, name) = meta_of(svc);
                groups
                    .entry((ns.to_string(), name.to_string()))
                    .or_default()
                    .push((i, svc));
            }
        }
    }
    for ((ns, name), members) in groups {
        let gname = global_name(&ns, &name);
        if gname.len() > MAX_NAME {
            for (i, _) in &members {
                out.refused.push(Refusal {
                    cluster: sources[*i].view.name.to_string(),
                    namespace: ns.clone(),
                    service: name.clone(),
                    wanted: gname.clone(),
                });
            }
            continue;
        }
        let (first, chosen) = members[0];
        let chosen_ports = ports(chosen);
        let chosen_headless = headless(chosen);
        let chosen_routing = rules.routing.matches(chosen.metadata.labels.as_ref());
        let key = |ps: &[ServicePort]| ps.iter().map(port_key).collect::<Vec<_>>().join(",");
        let mut differ = |field: &'static str, show: &dyn Fn(&Service) -> String| {
            let others: Vec<String> = members[1..]
                .iter()
                .filter(|(_, s)| show(s) != show(chosen))
                .map(|(i, s)| format!("{}: {}", sources[*i].view.name, show(s)))
                .collect();
            if !others.is_empty() {
                out.conflicts.push(Conflict {
                    service: gname.clone(),
                    field,
                    chosen: format!("{}: {}", sources[first].view.name, show(chosen)),
                    others,
                });
            }
        };
        differ("ports", &|s| key(&ports(s)));
        differ("headless", &|s| headless(s).to_string());
        differ("routing", &|s| {
            rules
                .routing
                .matches(s.metadata.labels.as_ref())
                .to_string()
        });
        let mut clusters: Vec<&str> = members.iter().map(|(i, _)| sources[*i].view.name).collect();
        clusters.sort();
        let labels = BTreeMap::from([(LABEL_GLOBAL_SVC.to_string(), "true".to_string())]);
        let mut annotations =
            BTreeMap::from([(ANNOTATION_GLOBAL_CLUSTERS.to_string(), clusters.join(","))]);
        let mut traffic = None;
        if chosen_routing {
            match rules.topology {
                Topology::TrafficDistribution => traffic = Some(TRAFFIC_DISTRIBUTION.to_string()),
                Topology::TopologyMode => {
                    annotations.insert(ANNOTATION_TOPOLOGY_MODE.into(), "Auto".into());
                }
                Topology::HintsAnnotation => {
                    annotations.insert(ANNOTATION_TOPOLOGY_HINTS.into(), "auto".into());
                }
            }
        }
        let mut gsvc = service_object(
            &gname,
            rules,
            labels,
            Some(annotations),
            chosen_ports,
            chosen_headless,
        );
        if let Some(spec) = gsvc.spec.as_mut() {
            spec.traffic_distribution = traffic;
        }
        out.services.insert(gname.clone(), gsvc);
        for (i, _) in &members {
            let src = &sources[*i];
            if !src.endpoints {
                continue;
            }
            let mut by_family: BTreeMap<String, (Vec<Endpoint>, Option<Vec<_>>)> = BTreeMap::new();
            for s in slices_of(&src.view, &ns, &name) {
                let entry = by_family.entry(s.address_type.clone()).or_default();
                entry.0.extend(s.endpoints.iter().map(|e| {
                    let (zone, hints) = if src.local {
                        (
                            e.zone.clone().or_else(|| local_zones.first().cloned()),
                            local_zones.to_vec(),
                        )
                    } else {
                        (Some(REMOTE_ZONE.to_string()), vec![REMOTE_ZONE.to_string()])
                    };
                    Endpoint {
                        zone,
                        hints: Some(EndpointHints {
                            for_zones: Some(
                                hints.into_iter().map(|name| ForZone { name }).collect(),
                            ),
                            ..Default::default()
                        }),
                        ..foreign(e)
                    }
                }));
                if entry.1.is_none() {
                    entry.1 = s.ports.clone();
                }
            }
            for (family, (endpoints, ports)) in by_family {
                let sname = format!("{gname}-{}-{}", src.view.name, family.to_lowercase());
                let labels = BTreeMap::from([
                    (LABEL_SERVICE_NAME.to_string(), gname.clone()),
                    (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
                    (LABEL_MIRRORED_SLICE.to_string(), "true".to_string()),
                    (LABEL_SLICE_SYNC.to_string(), src.view.name.to_string()),
                    (LABEL_GLOBAL_SVC.to_string(), "true".to_string()),
                ]);
                out.slices.insert(
                    sname.clone(),
                    EndpointSlice {
                        metadata: ObjectMeta {
                            name: Some(sname),
                            namespace: Some(rules.mirror_namespace.to_string()),
                            labels: Some(labels),
                            ..Default::default()
                        },
                        address_type: family,
                        endpoints,
                        ports,
                    },
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(s: &str) -> Selector {
        Selector::parse("k", s).unwrap()
    }

    fn svc(
        ns: &str,
        name: &str,
        labels: serde_json::Value,
        ports: serde_json::Value,
        headless: bool,
    ) -> Service {
        let mut v = json!({"metadata": {"namespace": ns, "name": name, "labels": labels},
                           "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.20", "selector": {"app": name}, "ports": ports}});
        if headless {
            v["spec"]["clusterIP"] = json!("None");
        }
        serde_json::from_value(v).unwrap()
    }

    fn slice(ns: &str, name: &str, svc: &str, family: &str, ips: &[&str]) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name,
                         "labels": {"kubernetes.io/service-name": svc, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "addressType": family,
            "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true},
                                                    "nodeName": "n1", "zone": "z1",
                                                    "targetRef": {"kind": "Pod", "name": "p"}})).collect::<Vec<_>>(),
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap()
    }

    struct Fixture {
        mirror: Selector,
        global: Selector,
        routing: Selector,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                mirror: sel("mirror=true"),
                global: sel("global=true"),
                routing: sel("routing=local-first"),
            }
        }
        fn rules(&self) -> Rules<'_> {
            Rules {
                mirror_namespace: "mirror",
                mirror: &self.mirror,
                global: &self.global,
                routing: &self.routing,
                topology: Topology::TopologyMode,
            }
        }
    }

    const HTTP: fn() -> serde_json::Value = || json!([{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP", "nodePort": 30080}]);

    #[test]
    fn names() {
        assert_eq!(
            mirror_name("west", "shop", "orders"),
            "west-shop-73736d-orders"
        );
        assert_eq!(global_name("shop", "orders"), "gl-shop-73736d-orders");
    }

    #[test]
    fn generated_names_lead_back_to_every_possible_source() {
        let pair = |ns: &str, n: &str| (ns.to_string(), n.to_string());
        assert_eq!(
            sources_of("west-shop-73736d-orders", "west"),
            [pair("shop", "orders")]
        );
        assert_eq!(
            sources_of(&global_name("shop", "orders"), GLOBAL_PREFIX),
            [pair("shop", "orders")]
        );
        // The separator inside a namespace or a name: both splits are candidates, and each
        // gives the same generated name back.
        let name = mirror_name("west", "a-73736d-b", "c");
        let got = sources_of(&name, "west");
        assert_eq!(got, [pair("a", "b-73736d-c"), pair("a-73736d-b", "c")]);
        for (ns, n) in &got {
            assert_eq!(mirror_name("west", ns, n), name);
        }
        // Another prefix, a prefix that is only the start of a word, no separator, empty parts.
        for (generated, prefix) in [
            ("west-shop-73736d-orders", "central"),
            ("western-shop-73736d-orders", "west"),
            ("west-shop-orders", "west"),
            ("west--73736d-orders", "west"),
            ("west-shop-73736d-", "west"),
        ] {
            assert!(sources_of(generated, prefix).is_empty(), "{generated}");
        }
    }

    #[test]
    fn mirrors_table() {
        let f = Fixture::new();
        let services = vec![
            svc(
                "shop",
                "orders",
                json!({"mirror": "true", "team": "a"}),
                HTTP(),
                false,
            ),
            svc("shop", "db", json!({"mirror": "true"}), HTTP(), true),
            svc("shop", "unlabelled", json!({}), HTTP(), false),
            svc(
                "mirror",
                "west-x-73736d-y",
                json!({"mirror": "true"}),
                HTTP(),
                false,
            ),
            svc(
                "shop",
                "echo",
                json!({"mirror": "true", "mirrored-svc": "true"}),
                HTTP(),
                false,
            ),
            svc(
                "shop",
                &"n".repeat(50),
                json!({"mirror": "true"}),
                HTTP(),
                false,
            ),
        ];
        let slices = vec![
            slice("shop", "orders-abc", "orders", "IPv4", &["10.244.1.5"]),
            slice("shop", "orders-def", "orders", "IPv6", &["fd00::5"]),
            slice("other", "orders-zzz", "orders", "IPv4", &["10.244.1.9"]),
        ];
        let view = ClusterView {
            name: "west",
            services: &services,
            slices: &slices,
        };
        let d = mirrors(&view, "west", &f.rules());
        assert_eq!(
            d.services.keys().collect::<Vec<_>>(),
            ["west-shop-73736d-db", "west-shop-73736d-orders"]
        );
        let orders = &d.services["west-shop-73736d-orders"];
        let labels = orders.metadata.labels.as_ref().unwrap();
        assert_eq!(labels.get("team").map(String::as_str), Some("a"));
        assert_eq!(labels.get("mirrored-svc").map(String::as_str), Some("true"));
        assert_eq!(
            labels.get("mirror-svc-prefix-sync").map(String::as_str),
            Some("west")
        );
        assert!(
            !labels.contains_key("mirror"),
            "selector keys are not copied"
        );
        let spec = orders.spec.as_ref().unwrap();
        assert_eq!(spec.cluster_ip, None);
        assert_eq!(spec.selector, None);
        let port = &spec.ports.as_ref().unwrap()[0];
        assert_eq!((port.port, port.node_port), (80, None));
        assert_eq!(
            d.services["west-shop-73736d-db"]
                .spec
                .as_ref()
                .unwrap()
                .cluster_ip
                .as_deref(),
            Some("None")
        );
        // Two slices (the other namespace's slice of the same name is not this Service's).
        let orders_slices: Vec<&EndpointSlice> = d
            .slices
            .values()
            .filter(|s| {
                s.metadata.labels.as_ref().unwrap()["kubernetes.io/service-name"]
                    == "west-shop-73736d-orders"
            })
            .collect();
        assert_eq!(orders_slices.len(), 2);
        for s in &orders_slices {
            let l = s.metadata.labels.as_ref().unwrap();
            assert_eq!(l["endpointslice.kubernetes.io/managed-by"], MANAGED_BY);
            assert_eq!(l["mirror-svc-prefix-sync"], "west");
            assert!(s.endpoints[0].node_name.is_none() && s.endpoints[0].target_ref.is_none());
            assert_eq!(s.endpoints[0].zone.as_deref(), Some("z1"));
        }
        assert_eq!(d.refused.len(), 1);
        assert_eq!(d.refused[0].service, "n".repeat(50));
        assert_eq!(d.refused[0].wanted.len(), 5 + 5 + 7 + 50);
        // Deterministic: the same input gives the same names.
        assert_eq!(mirrors(&view, "west", &f.rules()), d);
    }

    #[test]
    fn globals_table() {
        let f = Fixture::new();
        let g = json!({"global": "true", "routing": "local-first"});
        let local_svcs = vec![svc("shop", "orders", g.clone(), HTTP(), false)];
        let local_slices = vec![slice("shop", "orders-1", "orders", "IPv4", &["10.244.0.5"])];
        let west_svcs = vec![svc("shop", "orders", g.clone(), HTTP(), false)];
        let west_slices = vec![slice(
            "shop",
            "orders-1",
            "orders",
            "IPv4",
            &["10.244.1.5", "10.244.1.6"],
        )];
        let other_ports =
            json!([{"name": "http", "port": 81, "targetPort": 8080, "protocol": "TCP"}]);
        let central_svcs = vec![svc(
            "shop",
            "orders",
            json!({"global": "true"}),
            other_ports,
            true,
        )];
        let central_slices = vec![slice("shop", "orders-1", "orders", "IPv4", &["10.244.2.5"])];
        let zones = vec!["east-a".to_string(), "east-b".to_string()];
        let sources = [
            GlobalSource {
                view: ClusterView {
                    name: "west",
                    services: &west_svcs,
                    slices: &west_slices,
                },
                local: false,
                endpoints: true,
            },
            GlobalSource {
                view: ClusterView {
                    name: "central",
                    services: &central_svcs,
                    slices: &central_slices,
                },
                local: false,
                endpoints: false,
            },
            GlobalSource {
                view: ClusterView {
                    name: "east",
                    services: &local_svcs,
                    slices: &local_slices,
                },
                local: true,
                endpoints: true,
            },
        ];
        let d = globals(&sources, &zones, &f.rules());
        let gsvc = &d.services["gl-shop-73736d-orders"];
        let ann = gsvc.metadata.annotations.as_ref().unwrap();
        assert_eq!(ann["global-svc-clusters"], "central,east,west");
        assert_eq!(ann["service.kubernetes.io/topology-mode"], "Auto");
        assert_eq!(
            gsvc.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port,
            80,
            "the local cluster's ports win"
        );
        assert_eq!(gsvc.spec.as_ref().unwrap().cluster_ip, None);
        let fields: Vec<&str> = d.conflicts.iter().map(|c| c.field).collect();
        assert_eq!(fields, ["ports", "headless", "routing"]);
        assert!(
            d.conflicts[0].chosen.starts_with("east:")
                && d.conflicts[0].others[0].starts_with("central:")
        );
        // One slice per source cluster; the failed-over one contributes none.
        assert_eq!(
            d.slices.keys().collect::<Vec<_>>(),
            [
                "gl-shop-73736d-orders-east-ipv4",
                "gl-shop-73736d-orders-west-ipv4"
            ]
        );
        let hints = |s: &EndpointSlice| -> Vec<(Option<String>, Vec<String>)> {
            s.endpoints
                .iter()
                .map(|e| {
                    (
                        e.zone.clone(),
                        e.hints
                            .as_ref()
                            .unwrap()
                            .for_zones
                            .as_ref()
                            .unwrap()
                            .iter()
                            .map(|z| z.name.clone())
                            .collect(),
                    )
                })
                .collect()
        };
        assert_eq!(
            hints(&d.slices["gl-shop-73736d-orders-east-ipv4"]),
            [(Some("z1".to_string()), zones.clone())]
        );
        assert_eq!(
            hints(&d.slices["gl-shop-73736d-orders-west-ipv4"]),
            vec![(Some("remote".to_string()), vec!["remote".to_string()]); 2]
        );
        // Whatever order the sources come in, the result is the same.
        let mut rev = sources;
        rev.reverse();
        assert_eq!(globals(&rev, &zones, &f.rules()), d);

        // What asks for topology-aware routing follows the local cluster's version.
        let with = |topology| {
            let d = globals(
                &sources,
                &zones,
                &Rules {
                    topology,
                    ..f.rules()
                },
            );
            let s = d.services["gl-shop-73736d-orders"].clone();
            (
                s.metadata.annotations.unwrap(),
                s.spec.unwrap().traffic_distribution,
            )
        };
        let (ann, td) = with(Topology::TrafficDistribution);
        assert_eq!(td.as_deref(), Some("PreferClose"));
        assert!(
            !ann.contains_key(ANNOTATION_TOPOLOGY_MODE)
                && !ann.contains_key(ANNOTATION_TOPOLOGY_HINTS)
        );
        let (ann, td) = with(Topology::TopologyMode);
        assert_eq!((ann[ANNOTATION_TOPOLOGY_MODE].as_str(), td), ("Auto", None));
        assert!(!ann.contains_key(ANNOTATION_TOPOLOGY_HINTS));
        let (ann, td) = with(Topology::HintsAnnotation);
        assert_eq!(
            (ann[ANNOTATION_TOPOLOGY_HINTS].as_str(), td),
            ("auto", None)
        );
        assert!(!ann.contains_key(ANNOTATION_TOPOLOGY_MODE));
    }

    #[test]
    fn topology_by_version() {
        for (major, minor, want) in [
            ("1", "33", Topology::TrafficDistribution),
            ("1", "31+", Topology::TrafficDistribution),
            ("1", "30", Topology::TopologyMode),
            ("1", "27", Topology::TopologyMode),
            ("1", "26", Topology::HintsAnnotation),
            ("1", "23", Topology::HintsAnnotation),
            ("", "", Topology::HintsAnnotation),
        ] {
            assert_eq!(Topology::for_version(major, minor), want, "{major}.{minor}");
        }
    }

    #[test]
    fn long_global_names_are_refused_per_source() {
        let f = Fixture::new();
        let long = "x".repeat(60);
        let svcs = vec![svc("shop", &long, json!({"global": "true"}), HTTP(), false)];
        let sources = [GlobalSource {
            view: ClusterView {
                name: "west",
                services: &svcs,
                slices: &[],
            },
            local: false,
            endpoints: true,
        }];
        let d = globals(&sources, &[], &f.rules());
        assert!(d.services.is_empty());
        assert_eq!(d.refused[0].cluster, "west");
        assert_eq!(d.refused[0].service, long);
    }
}
