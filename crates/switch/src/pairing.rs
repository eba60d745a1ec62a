//! Pairing active Services with their preview Services: a pure function from
//! the Services of a namespace to the list of DNAT mappings.

use crate::config::Settings;
use k8s_openapi::api::core::v1::Service;
use netrules::{Family, Protocol};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

/// The annotation by which a preview Service names its active Service. With
/// `GW_STRICT_PAIRING` a preview without it (or naming another Service) is ignored.
pub const PREVIEW_OF: &str = "ghostwire.dev/preview-of";

/// What pairing needs of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Svc {
    pub name: String,
    pub kind: SvcKind,
    pub ports: Vec<SvcPort>,
    /// The value of its [`PREVIEW_OF`] annotation.
    pub preview_of: Option<String>,
    /// Ports and addresses that cannot be mapped, each with why (an unsupported protocol, a
    /// bad number, a malformed ClusterIP).
    pub unusable: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SvcKind {
    ClusterIp(Vec<IpAddr>),
    Headless,
    ExternalName,
    /// Not allocated yet, or unparsable: nothing to map.
    NoClusterIp(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvcPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

impl Svc {
    /// Reads the fields pairing needs; never fails: odd Services become kinds that are skipped.
    pub fn from_service(s: &Service) -> Svc {
        let name = s.metadata.name.clone().unwrap_or_default();
        let spec = s.spec.clone().unwrap_or_default();
        let kind = if spec.type_.as_deref() == Some("ExternalName") {
            SvcKind::ExternalName
        } else {
            let ips = ips_of(&spec);
            if ips.iter().any(|i| i == "None") {
                SvcKind::Headless
            } else if ips.is_empty() {
                SvcKind::NoClusterIp("no ClusterIP allocated".into())
            } else {
                let good: Vec<IpAddr> = ips.iter().filter_map(|i| i.parse().ok()).collect();
                if good.is_empty() {
                    SvcKind::NoClusterIp(format!("unparsable clusterIPs {ips:?}"))
                } else {
                    SvcKind::ClusterIp(good)
                }
            }
        };
        let mut ports = Vec::new();
        let mut unusable = Vec::new();
        if matches!(kind, SvcKind::ClusterIp(_)) {
            for ip in &ips_of(&spec) {
                if ip.parse::<IpAddr>().is_err() {
                    unusable.push(format!("clusterIP {ip:?}: not an IP address; not mapped"));
                }
            }
        }
        for p in spec.ports.unwrap_or_default() {
            let label = format!("port {} ({})", p.name.as_deref().unwrap_or("-"), p.port);
            let port = match u16::try_from(p.port) {
                Ok(n) if n > 0 => n,
                _ => {
                    unusable.push(format!("{label}: not a port number (1-65535)"));
                    continue;
                }
            };
            match p.protocol.as_deref().unwrap_or("TCP").parse() {
                Ok(protocol) => ports.push(SvcPort {
                    name: p.name.filter(|n| !n.is_empty()),
                    port,
                    protocol,
                }),
                Err(e) => unusable.push(format!("{label}: {e}")),
            }
        }
        let preview_of = s
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(PREVIEW_OF))
            .cloned();
        Svc {
            name,
            kind,
            ports,
            preview_of,
            unusable,
        }
    }
}

/// The ClusterIPs of a Service spec as written (`clusterIPs`, else `clusterIP`).
fn ips_of(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Vec<String> {
    match (&spec.cluster_ips, &spec.cluster_ip) {
        (Some(ips), _) if !ips.is_empty() => ips.clone(),
        (_, Some(ip)) => vec![ip.clone()],
        _ => vec![],
    }
}

/// One active ClusterIP:port rewritten to the preview ClusterIP:port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Mapping {
    pub active: String,
    pub preview: String,
    pub port_name: Option<String>,
    #[serde(serialize_with = "ser_proto")]
    pub protocol: Protocol,
    pub active_addr: SocketAddr,
    pub preview_addr: SocketAddr,
}

fn ser_proto<S: serde::Serializer>(p: &Protocol, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.as_str())
}

impl Mapping {
    pub fn family(&self) -> Family {
        Family::of(&self.active_addr.ip())
    }
}

/// Something that was looked at and deliberately not mapped, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub service: String,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub mappings: Vec<Mapping>,
    pub skipped: Vec<Skipped>,
}

/// The preview Service names to try for `name`, in order: the pattern, then the suffix pair.
fn preview_candidates(name: &str, s: &Settings) -> Vec<String> {
    let mut c = vec![s.preview_pattern.apply(name)];
    if !s.active_suffix.is_empty()
        && let Some(base) = name.strip_suffix(&s.active_suffix)
        && !base.is_empty()
    {
        c.push(format!("{base}{}", s.preview_suffix));
    }
    c
}

fn pair_port<'a>(a: &SvcPort, preview: &'a [SvcPort]) -> Option<&'a SvcPort> {
    let by_name = a
        .name
        .as_ref()
        .and_then(|n| preview.iter().find(|p| p.name.as_ref() == Some(n)));
    by_name.filter(|p| p.protocol == a.protocol).or_else(|| {
        preview
            .iter()
            .find(|p| p.port == a.port && p.protocol == a.protocol)
    })
}

/// Pairs the Services of one namespace. Ports pair by name when the active
/// port has a name the preview also has, else by number; the protocol must match.
pub fn plan(services: &[Svc], settings: &Settings) -> Plan {
    let by_name: BTreeMap<&str, &Svc> = services.iter().map(|s| (s.name.as_str(), s)).collect();
    let is_preview_of_other = |name: &str| {
        services.iter().any(|o| {
            o.name != name
                && preview_candidates(&o.name, settings)
                    .iter()
                    .any(|c| c == name)
        })
    };
    let mut skipped: Vec<Skipped> = Vec::new();
    let mut skip = |service: &str, reason: String| {
        skipped.push(Skipped {
            service: service.to_string(),
            reason,
        })
    };
    let mut mappings = Vec::new();
    for active in by_name.values() {
        if is_preview_of_other(&active.name) {
            continue;
        }
        let Some(preview) = preview_candidates(&active.name, settings)
            .iter()
            .find_map(|c| by_name.get(c.as_str()))
        else {
            continue; // No preview: traffic stays on active, by design.
        };
        if let Some(why) = protected(active, settings) {
            skip(&active.name, why);
            continue;
        }
        if settings.strict_pairing && preview.preview_of.as_deref() != Some(active.name.as_str()) {
            skip(
                &active.name,
                match &preview.preview_of {
                    None => format!(
                        "strict pairing (GW_STRICT_PAIRING): its preview {} has no {PREVIEW_OF} annotation",
                        preview.name
                    ),
                    Some(other) => format!(
                        "strict pairing (GW_STRICT_PAIRING): its preview {} says {PREVIEW_OF}={other:?}",
                        preview.name
                    ),
                },
            );
            continue;
        }
        let (a_ips, p_ips) = match (&active.kind, &preview.kind) {
            (SvcKind::ClusterIp(a), SvcKind::ClusterIp(p)) => (a, p),
            (k, _) if !matches!(k, SvcKind::ClusterIp(_)) => {
                skip(
                    &active.name,
                    format!("{} (preview {})", describe(k), preview.name),
                );
                continue;
            }
            (_, k) => {
                skip(
                    &active.name,
                    format!("its preview {} is {}", preview.name, describe(k)),
                );
                continue;
            }
        };
        // Addresses of a family this Pod does not serve are reported once each.
        for ip in a_ips.iter().filter(|ip| !settings.serves(Family::of(ip))) {
            skip(
                &active.name,
                format!(
                    "ClusterIP {ip} not mapped: this Pod does not serve {} (GW_IPV6={}; its own IPs decide with auto)",
                    family_name(Family::of(ip)),
                    match (settings.ipv4, settings.ipv6) {
                        (true, true) => "true",
                        (true, false) => "false or auto with IPv4 only",
                        _ => "auto with IPv6 only",
                    }
                ),
            );
        }
        for a_port in &active.ports {
            let Some(p_port) = pair_port(a_port, &preview.ports) else {
                skip(
                    &active.name,
                    format!(
                        "port {} ({}) has no match by name or number in {}",
                        a_port.name.as_deref().unwrap_or("-"),
                        format_args!("{}/{}", a_port.port, a_port.protocol),
                        preview.name
                    ),
                );
                continue;
            };
            for a_ip in a_ips {
                let fam = Family::of(a_ip);
                if !settings.serves(fam) {
                    continue;
                }
                let Some(p_ip) = p_ips.iter().find(|p| Family::of(p) == fam) else {
                    skip(
                        &active.name,
                        format!("{a_ip} has no {fam:?} counterpart in {}", preview.name),
                    );
                    continue;
                };
                mappings.push(Mapping {
                    active: active.name.clone(),
                    preview: preview.name.clone(),
                    port_name: a_port.name.clone(),
                    protocol: a_port.protocol,
                    active_addr: SocketAddr::new(*a_ip, a_port.port),
                    preview_addr: SocketAddr::new(*p_ip, p_port.port),
                });
            }
        }
    }
    for s in services {
        for why in &s.unusable {
            skipped.push(Skipped {
                service: s.name.clone(),
                reason: why.clone(),
            });
        }
        if let SvcKind::NoClusterIp(why) = &s.kind
            && !skipped.iter().any(|k| k.service == s.name)
        {
            skipped.push(Skipped {
                service: s.name.clone(),
                reason: why.clone(),
            });
        }
        if matches!(s.kind, SvcKind::Headless | SvcKind::ExternalName)
            && !skipped.iter().any(|k| k.service == s.name)
        {
            skipped.push(Skipped {
                service: s.name.clone(),
                reason: describe(&s.kind),
            });
        }
    }
    mappings.sort();
    mappings.dedup();
    skipped.sort_by(|a, b| a.service.cmp(&b.service));
    Plan { mappings, skipped }
}

/// Why an active Service must never be remapped, if it must not: the API server
/// (tokens go there) and the cluster DNS are off limits whatever Services exist.
fn protected(active: &Svc, s: &Settings) -> Option<String> {
    if active.name == "kubernetes" && s.namespace == "default" {
        return Some("the API server's Service (kubernetes in default) is never remapped".into());
    }
    let SvcKind::ClusterIp(ips) = &active.kind else {
        return None;
    };
    if let Some(ip) = ips.iter().find(|ip| s.api_server == Some(**ip)) {
        return Some(format!(
            "its ClusterIP {ip} is the API server's (KUBERNETES_SERVICE_HOST): never remapped"
        ));
    }
    ips.iter().find(|ip| s.nameservers.contains(ip)).map(|ip| {
        format!(
            "its ClusterIP {ip} is a nameserver of /etc/resolv.conf (cluster DNS): never remapped"
        )
    })
}

fn family_name(f: Family) -> &'static str {
    match f {
        Family::Ipv4 => "IPv4",
        Family::Ipv6 => "IPv6",
    }
}

fn describe(k: &SvcKind) -> String {
    match k {
        SvcKind::Headless => "headless (clusterIP: None): no virtual IP to rewrite".into(),
        SvcKind::ExternalName => "ExternalName: resolved by DNS, no virtual IP to rewrite".into(),
        SvcKind::NoClusterIp(why) => why.clone(),
        SvcKind::ClusterIp(_) => "a ClusterIP Service".into(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::{Settings, Sources};

    pub fn svc(name: &str, ips: &[&str], ports: &[(Option<&str>, u16, Protocol)]) -> Svc {
        Svc {
            name: name.into(),
            kind: SvcKind::ClusterIp(ips.iter().map(|i| i.parse().unwrap()).collect()),
            ports: ports
                .iter()
                .map(|(n, p, proto)| SvcPort {
                    name: n.map(String::from),
                    port: *p,
                    protocol: *proto,
                })
                .collect(),
            preview_of: None,
            unusable: vec![],
        }
    }

    /// Settings with these knobs given (as flags would), everything else default.
    pub fn settings(pairs: &[(&str, &str)]) -> Settings {
        Settings::resolve(&Sources {
            cli: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })
        .unwrap()
    }

    const TCP: Protocol = Protocol::Tcp;

    #[test]
    fn pattern_pairs_and_no_preview_means_no_rule() {
        let s = settings(&[]);
        let svcs = [
            svc("orders", &["10.96.0.5"], &[(Some("http"), 80, TCP)]),
            svc(
                "orders-preview",
                &["10.96.0.6"],
                &[(Some("http"), 8080, TCP)],
            ),
            svc("payments", &["10.96.0.7"], &[(None, 80, TCP)]),
        ];
        let p = plan(&svcs, &s);
        assert_eq!(p.mappings.len(), 1);
        let m = &p.mappings[0];
        assert_eq!(
            (m.active.as_str(), m.preview.as_str()),
            ("orders", "orders-preview")
        );
        assert_eq!(m.active_addr, "10.96.0.5:80".parse().unwrap());
        // Paired by name: the preview listens on another port number.
        assert_eq!(m.preview_addr, "10.96.0.6:8080".parse().unwrap());
        assert!(p.skipped.is_empty());
    }

    #[test]
    fn suffix_pairs() {
        let s = settings(&[]);
        let svcs = [
            svc("orders-active", &["10.96.0.5"], &[(None, 80, TCP)]),
            svc("orders-preview", &["10.96.0.6"], &[(None, 80, TCP)]),
        ];
        let p = plan(&svcs, &s);
        assert_eq!(p.mappings.len(), 1);
        assert_eq!(p.mappings[0].active, "orders-active");
        // Custom suffixes.
        let s = settings(&[
            ("GW_ACTIVE_SUFFIX", "-blue"),
            ("GW_PREVIEW_SUFFIX", "-green"),
        ]);
        let svcs = [
            svc("web-blue", &["10.96.0.5"], &[(None, 80, TCP)]),
            svc("web-green", &["10.96.0.6"], &[(None, 80, TCP)]),
        ];
        assert_eq!(plan(&svcs, &s).mappings[0].preview, "web-green");
    }

    #[test]
    fn ports_pair_by_name_then_number_and_protocol_must_match() {
        let s = settings(&[]);
        let svcs = [
            svc(
                "a",
                &["10.96.0.5"],
                &[
                    (Some("http"), 80, TCP),
                    (None, 53, Protocol::Udp),
                    (Some("metrics"), 9090, TCP),
                    (None, 7, TCP),
                ],
            ),
            svc(
                "a-preview",
                &["10.96.0.6"],
                &[
                    (Some("http"), 81, TCP),
                    (Some("dns"), 53, Protocol::Udp),
                    (None, 9090, TCP),
                    (None, 7, Protocol::Udp),
                ],
            ),
        ];
        let p = plan(&svcs, &s);
        let got: Vec<String> = p
            .mappings
            .iter()
            .map(|m| format!("{}/{}->{}", m.active_addr, m.protocol, m.preview_addr))
            .collect();
        assert_eq!(
            got,
            [
                "10.96.0.5:53/udp->10.96.0.6:53",
                "10.96.0.5:80/tcp->10.96.0.6:81",
                "10.96.0.5:9090/tcp->10.96.0.6:9090",
            ]
        );
        assert_eq!(p.skipped.len(), 1);
        assert!(p.skipped[0].reason.contains("7/tcp"), "{:?}", p.skipped);
    }

    #[test]
    fn headless_and_external_name_are_skipped_with_a_reason() {
        let s = settings(&[]);
        let mut headless = svc("db", &[], &[(None, 5432, TCP)]);
        headless.kind = SvcKind::Headless;
        let mut ext = svc("ext", &[], &[]);
        ext.kind = SvcKind::ExternalName;
        let svcs = [
            headless,
            svc("db-preview", &["10.96.0.9"], &[(None, 5432, TCP)]),
            ext,
        ];
        let p = plan(&svcs, &s);
        assert!(p.mappings.is_empty());
        let reasons: Vec<&str> = p.skipped.iter().map(|k| k.reason.as_str()).collect();
        assert_eq!(p.skipped.len(), 2, "{reasons:?}");
        assert!(reasons[0].contains("headless"));
        assert!(reasons[1].contains("ExternalName"));
    }

    #[test]
    fn dual_stack_only_with_ipv6() {
        let svcs = [
            svc("a", &["10.96.0.5", "fd00:10:96::5"], &[(None, 80, TCP)]),
            svc(
                "a-preview",
                &["10.96.0.6", "fd00:10:96::6"],
                &[(None, 80, TCP)],
            ),
        ];
        assert_eq!(plan(&svcs, &settings(&[])).mappings.len(), 1);
        let p = plan(&svcs, &settings(&[("GW_IPV6", "true")]));
        assert_eq!(p.mappings.len(), 2);
        assert_eq!(
            p.mappings[1].preview_addr,
            "[fd00:10:96::6]:80".parse().unwrap()
        );
        // A single-stack preview: the IPv6 side stays on active, and says so.
        let svcs = [
            svcs[0].clone(),
            svc("a-preview", &["10.96.0.6"], &[(None, 80, TCP)]),
        ];
        let p = plan(&svcs, &settings(&[("GW_IPV6", "true")]));
        assert_eq!(p.mappings.len(), 1);
        assert!(p.skipped[0].reason.contains("Ipv6"));
    }

    #[test]
    fn families_follow_the_pods_own_ips_unless_set() {
        let svcs = [
            svc("a", &["10.96.0.5", "fd00:10:96::5"], &[(None, 80, TCP)]),
            svc(
                "a-preview",
                &["10.96.0.6", "fd00:10:96::6"],
                &[(None, 80, TCP)],
            ),
        ];
        let with_ips = |ips: &[&str], pairs: &[(&str, &str)]| {
            Settings::resolve(&Sources {
                cli: pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                pod_ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
                ..Default::default()
            })
            .unwrap()
        };
        let fams = |s: &Settings| {
            plan(&svcs, s)
                .mappings
                .iter()
                .map(|m| m.family())
                .collect::<Vec<_>>()
        };
        // An IPv6-only Pod maps IPv6 only, and says why IPv4 is left alone.
        let v6 = with_ips(&["fd00:10:244::7"], &[]);
        assert_eq!(fams(&v6), [Family::Ipv6]);
        let p = plan(&svcs, &v6);
        assert_eq!(p.skipped.len(), 1, "{:?}", p.skipped);
        assert!(
            p.skipped[0].reason.contains("10.96.0.5") && p.skipped[0].reason.contains("IPv4"),
            "{:?}",
            p.skipped
        );
        // Dual-stack Pod: both; IPv4-only Pod: IPv4, the IPv6 address reported.
        let dual = with_ips(&["10.244.0.7", "fd00:10:244::7"], &[]);
        assert_eq!(fams(&dual), [Family::Ipv4, Family::Ipv6]);
        let v4 = with_ips(&["10.244.0.7"], &[]);
        assert_eq!(fams(&v4), [Family::Ipv4]);
        assert!(plan(&svcs, &v4).skipped[0].reason.contains("fd00:10:96::5"));
        // GW_IPV6 set wins over the Pod's IPs.
        assert_eq!(
            fams(&with_ips(&["fd00:10:244::7"], &[("GW_IPV6", "true")])),
            [Family::Ipv4, Family::Ipv6]
        );
        assert_eq!(
            fams(&with_ips(
                &["10.244.0.7", "fd00:10:244::7"],
                &[("GW_IPV6", "false")]
            )),
            [Family::Ipv4]
        );
        // Unknown IPs: IPv4, as before.
        assert_eq!(fams(&with_ips(&[], &[])), [Family::Ipv4]);
    }

    #[test]
    fn a_malformed_cluster_ip_is_skipped_alone_with_its_reason() {
        let service = |name: &str, ips: &[&str]| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "spec": {"clusterIP": ips[0], "clusterIPs": ips, "ports": [{"port": 80}]}
            }))
            .unwrap()
        };
        let svcs = [
            Svc::from_service(&service("a", &["10.96.0.5", "fd00::zz"])),
            Svc::from_service(&service("a-preview", &["10.96.0.6", "fd00::6"])),
        ];
        let p = plan(&svcs, &settings(&[("GW_IPV6", "true")]));
        assert_eq!(p.mappings.len(), 1, "{:?}", p.mappings);
        assert!(
            p.skipped
                .iter()
                .any(|k| k.service == "a" && k.reason.contains("\"fd00::zz\"")),
            "{:?}",
            p.skipped
        );
    }

    /// Settings as a pod in `default` sees them: the API server's ClusterIP in
    /// KUBERNETES_SERVICE_HOST and the cluster DNS in resolv.conf.
    fn in_cluster(pairs: &[(&str, &str)]) -> Settings {
        Settings::resolve(&Sources {
            cli: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            api_server_host: Some("10.96.0.1".into()),
            resolv_conf: "nameserver 10.96.0.10\n".into(),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn api_server_and_dns_are_never_remapped() {
        // Explicit exclusions replace the defaults: the protection must not depend on them.
        let s = in_cluster(&[("GW_EXCLUDE_CIDRS", "169.254.169.254/32")]);
        let svcs = [
            svc("kubernetes", &["10.96.0.1"], &[(Some("https"), 443, TCP)]),
            svc(
                "kubernetes-preview",
                &["10.96.0.50"],
                &[(Some("https"), 443, TCP)],
            ),
            svc("dns", &["10.96.0.10"], &[(None, 53, Protocol::Udp)]),
            svc("dns-preview", &["10.96.0.51"], &[(None, 53, Protocol::Udp)]),
            // Another name on the API server's address (a selector-less copy) is refused too.
            svc("api-active", &["10.96.0.1"], &[(None, 443, TCP)]),
            svc("api-preview", &["10.96.0.52"], &[(None, 443, TCP)]),
            svc("orders", &["10.96.0.5"], &[(None, 80, TCP)]),
            svc("orders-preview", &["10.96.0.6"], &[(None, 80, TCP)]),
        ];
        let p = plan(&svcs, &s);
        let actives: Vec<&str> = p.mappings.iter().map(|m| m.active.as_str()).collect();
        assert_eq!(actives, ["orders"]);
        let why = |name: &str| {
            p.skipped
                .iter()
                .find(|k| k.service == name)
                .map(|k| k.reason.clone())
                .unwrap_or_default()
        };
        assert!(why("kubernetes").contains("API server"), "{:?}", p.skipped);
        assert!(why("api-active").contains("API server"), "{:?}", p.skipped);
        assert!(why("dns").contains("nameserver"), "{:?}", p.skipped);
        // The `kubernetes` Service of `default` is protected by name even without the env.
        let p = plan(&svcs[..2], &settings(&[]));
        assert!(p.mappings.is_empty(), "{:?}", p.mappings);
    }

    #[test]
    fn strict_pairing_honours_only_marked_previews() {
        let mut marked = svc("orders-preview", &["10.96.0.6"], &[(None, 80, TCP)]);
        marked.preview_of = Some("orders".into());
        let mut wrong_mark = svc("payments-preview", &["10.96.0.8"], &[(None, 80, TCP)]);
        wrong_mark.preview_of = Some("orders".into());
        let svcs = [
            svc("orders", &["10.96.0.5"], &[(None, 80, TCP)]),
            marked,
            svc("payments", &["10.96.0.7"], &[(None, 80, TCP)]),
            wrong_mark,
            svc("carts", &["10.96.0.9"], &[(None, 80, TCP)]),
            svc("carts-preview", &["10.96.0.11"], &[(None, 80, TCP)]),
        ];
        // Off (the default): names alone pair.
        assert_eq!(plan(&svcs, &settings(&[])).mappings.len(), 3);
        let p = plan(&svcs, &settings(&[("GW_STRICT_PAIRING", "true")]));
        let actives: Vec<&str> = p.mappings.iter().map(|m| m.active.as_str()).collect();
        assert_eq!(actives, ["orders"]);
        let reasons: Vec<String> = p
            .skipped
            .iter()
            .map(|k| format!("{}: {}", k.service, k.reason))
            .collect();
        assert!(
            reasons
                .iter()
                .any(|r| r.starts_with("carts:") && r.contains(PREVIEW_OF)),
            "{reasons:?}"
        );
        assert!(
            reasons
                .iter()
                .any(|r| r.starts_with("payments:") && r.contains("\"orders\"")),
            "{reasons:?}"
        );
    }

    #[test]
    fn every_unmappable_service_and_port_is_reported() {
        let text = r#"{"kind": "List", "items": [
  {"kind": "Service", "metadata": {"name": "orders"}, "spec": {"clusterIP": "10.96.0.5",
   "ports": [{"name": "ping", "port": 7, "protocol": "ICMP"}, {"port": 80}, {"name": "big", "port": 70000}]}},
  {"kind": "Service", "metadata": {"name": "orders-preview"}, "spec": {"clusterIP": "10.96.0.6", "ports": [{"port": 80}]}},
  {"kind": "Service", "metadata": {"name": "broken"}, "spec": {"clusterIP": "10.96.0.300", "ports": [{"port": 80}]}}
]}"#;
        let services = crate::discover::parse_services(text).unwrap();
        let svcs: Vec<Svc> = services.iter().map(Svc::from_service).collect();
        let p = plan(&svcs, &settings(&[]));
        assert_eq!(p.mappings.len(), 1);
        let got: Vec<String> = p
            .skipped
            .iter()
            .map(|k| format!("{}: {}", k.service, k.reason))
            .collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(
            got.iter()
                .any(|r| r.starts_with("broken:") && r.contains("10.96.0.300")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|r| r.starts_with("orders:") && r.contains("ICMP")),
            "{got:?}"
        );
        assert!(
            got.iter()
                .any(|r| r.starts_with("orders:") && r.contains("70000")),
            "{got:?}"
        );
    }

    #[test]
    fn previews_are_not_paired_again_and_output_is_stable() {
        let s = settings(&[]);
        let mut svcs = vec![
            svc("b", &["10.96.0.7"], &[(None, 80, TCP)]),
            svc("b-preview", &["10.96.0.8"], &[(None, 80, TCP)]),
            svc("b-preview-preview", &["10.96.0.9"], &[(None, 80, TCP)]),
            svc("a", &["10.96.0.5"], &[(None, 80, TCP)]),
            svc("a-preview", &["10.96.0.6"], &[(None, 80, TCP)]),
        ];
        let p1 = plan(&svcs, &s);
        svcs.reverse();
        assert_eq!(p1, plan(&svcs, &s));
        let actives: Vec<&str> = p1.mappings.iter().map(|m| m.active.as_str()).collect();
        assert_eq!(actives, ["a", "b"]);
    }
}
