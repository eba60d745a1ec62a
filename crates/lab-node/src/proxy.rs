//! kube-proxy's job on the lab node: each Service's ClusterIPs DNAT to the ready endpoints of its
//! EndpointSlices, as one `nft -f -` transaction in the node's namespace (so a pod's traffic to a
//! ClusterIP takes the same path as on a real node: out of the pod, DNAT in the node).
//!
//! Pure: Services and EndpointSlices (JSON) in, rules and script text out; [`apply`] is the edge.
//! The table `inet lab_node_proxy` is re-created in one transaction (add, delete, add), so a
//! change is atomic and applying twice yields the same ruleset. One verdict-map lookup per family
//! picks the service port; `numgen inc` spreads new connections over the endpoints.

use crate::util::{arr, str_of};
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// The node's table; nothing else in the node namespace is touched.
pub const TABLE: &str = "lab_node_proxy";

/// One ClusterIP:port and where it goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortRule {
    pub ip: IpAddr,
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub port: u16,
    /// `namespace/name:port-name`, for the rule comment.
    pub service: String,
    /// Ready endpoints; empty means no DNAT (the node refuses the ClusterIP).
    pub endpoints: Vec<SocketAddr>,
}

fn is_ready(endpoint: &Value) -> bool {
    // A nil `ready` means ready (EndpointSlice API).
    endpoint["conditions"]["ready"].as_bool() != Some(false)
}

/// The rules for all Services with ClusterIPs, from the EndpointSlices that name them.
pub fn desired(services: &[Value], slices: &[Value]) -> Vec<PortRule> {
    let mut out = Vec::new();
    for svc in services {
        let (ns, name) = (
            str_of(svc, "/metadata/namespace"),
            str_of(svc, "/metadata/name"),
        );
        if str_of(svc, "/spec/type") == "ExternalName" {
            continue;
        }
        let mine: Vec<&Value> = slices
            .iter()
            .filter(|s| {
                str_of(s, "/metadata/namespace") == ns
                    && s["metadata"]["labels"]["kubernetes.io/service-name"] == name
            })
            .collect();
        for ip in arr(svc, "/spec/clusterIPs")
            .iter()
            .filter_map(|v| v.as_str()?.parse::<IpAddr>().ok())
        {
            let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
            for port in arr(svc, "/spec/ports") {
                let pname = port["name"].as_str().unwrap_or_default();
                let protocol = port["protocol"].as_str().unwrap_or("TCP");
                let Some(number) = port["port"].as_u64().and_then(|p| u16::try_from(p).ok()) else {
                    continue;
                };
                let mut endpoints = BTreeSet::new();
                for slice in mine.iter().filter(|s| s["addressType"] == family) {
                    let Some(target) = arr(slice, "/ports").iter().find_map(|p| {
                        (p["name"].as_str().unwrap_or_default() == pname
                            && p["protocol"].as_str().unwrap_or("TCP") == protocol)
                            .then(|| p["port"].as_u64().and_then(|n| u16::try_from(n).ok()))
                            .flatten()
                    }) else {
                        continue;
                    };
                    for ep in arr(slice, "/endpoints").iter().filter(|e| is_ready(e)) {
                        for addr in arr(ep, "/addresses") {
                            if let Some(a) = addr.as_str().and_then(|a| a.parse::<IpAddr>().ok())
                                && a.is_ipv4() == ip.is_ipv4()
                            {
                                endpoints.insert(SocketAddr::new(a, target));
                            }
                        }
                    }
                }
                out.push(PortRule {
                    ip,
                    protocol: protocol.to_lowercase(),
                    port: number,
                    service: if pname.is_empty() {
                        format!("{ns}/{name}:{number}")
                    } else {
                        format!("{ns}/{name}:{pname}")
                    },
                    endpoints: endpoints.into_iter().collect(),
                });
            }
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.ip == b.ip && a.protocol == b.protocol && a.port == b.port);
    out
}

/// The whole table for `rules`, as one `nft -f -` script.
pub fn render(rules: &[PortRule]) -> String {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut chains = String::new();
    for (i, r) in rules.iter().filter(|r| !r.endpoints.is_empty()).enumerate() {
        let chain = format!("sp{i}");
        let element = format!("{} . {} . {} : goto {chain}", r.ip, r.protocol, r.port);
        let (family, list) = if r.ip.is_ipv4() {
            ("ip", &mut v4)
        } else {
            ("ip6", &mut v6)
        };
        list.push(element);
        let target = match r.endpoints.as_slice() {
            [one] => one.to_string(),
            many => format!(
                "numgen inc mod {} map {{ {} }}",
                many.len(),
                many.iter()
                    .enumerate()
                    .map(|(n, a)| format!("{n} : {} . {}", a.ip(), a.port()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let _ = writeln!(
            chains,
            "\tchain {chain} {{\n\t\tmeta l4proto {} dnat {family} to {target} comment \"{}\"\n\t}}",
            r.protocol, r.service
        );
    }
    let mut out = String::new();
    let _ = writeln!(out, "table inet {TABLE} {{}}");
    let _ = writeln!(out, "delete table inet {TABLE}");
    let _ = writeln!(out, "table inet {TABLE} {{");
    for (name, ty, elements) in [
        ("services4", "ipv4_addr", &v4),
        ("services6", "ipv6_addr", &v6),
    ] {
        let _ = writeln!(
            out,
            "\tmap {name} {{\n\t\ttype {ty} . inet_proto . inet_service : verdict"
        );
        if !elements.is_empty() {
            let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(", "));
        }
        out.push_str("\t}\n");
    }
    let _ = write!(
        out,
        "\tchain services {{\n\
         \t\tip daddr . meta l4proto . th dport vmap @services4\n\
         \t\tip6 daddr . meta l4proto . th dport vmap @services6\n\
         \t}}\n\
         \tchain prerouting {{\n\t\ttype nat hook prerouting priority -100; policy accept;\n\t\tjump services\n\t}}\n\
         \tchain output {{\n\t\ttype nat hook output priority -100; policy accept;\n\t\tjump services\n\t}}\n\
         \tchain postrouting {{\n\t\ttype nat hook postrouting priority 100; policy accept;\n\
         \t\tct status dnat oifname \"{}\" masquerade comment \"return path of ClusterIP traffic\"\n\t}}\n",
        lab_net::BRIDGE
    );
    out.push_str(&chains);
    out.push_str("}\n");
    out
}

/// Applies a script in the node namespace (`ip netns exec NODE nft -f -`).
pub async fn apply(node_netns: &str, script: &str) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("ip")
        .args(["netns", "exec", node_netns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft in {node_netns}: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes()).await;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| format!("nft in {node_netns}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft -f - in {node_netns} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc() -> Value {
        json!({"metadata": {"namespace": "default", "name": "web"},
               "spec": {"type": "ClusterIP", "clusterIPs": ["10.96.0.11", "fd00:10:96::b"],
                        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]}})
    }

    fn slice(family: &str, addrs: &[(&str, Option<bool>)]) -> Value {
        json!({"metadata": {"namespace": "default", "name": format!("web-{family}"),
                            "labels": {"kubernetes.io/service-name": "web"}},
               "addressType": family,
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": addrs.iter().map(|(a, r)| json!({"addresses": [a], "conditions": {"ready": r}})).collect::<Vec<_>>()})
    }

    #[test]
    fn ready_endpoints_per_family() {
        let rules = desired(
            &[svc()],
            &[
                slice(
                    "IPv4",
                    &[
                        ("10.244.0.2", Some(true)),
                        ("10.244.0.3", Some(false)),
                        ("10.244.0.4", None),
                    ],
                ),
                slice("IPv6", &[("fd00:10:244::2", Some(true))]),
            ],
        );
        assert_eq!(rules.len(), 2);
        assert_eq!(
            rules[0].endpoints,
            vec![
                "10.244.0.2:8080".parse().unwrap(),
                "10.244.0.4:8080".parse().unwrap()
            ]
        );
        assert_eq!(rules[0].service, "default/web:http");
        assert_eq!(
            rules[1].endpoints,
            vec!["[fd00:10:244::2]:8080".parse().unwrap()]
        );
        let script = render(&rules);
        assert!(
            script.contains("elements = { 10.96.0.11 . tcp . 80 : goto sp0 }"),
            "{script}"
        );
        assert!(script.contains(
            "dnat ip to numgen inc mod 2 map { 0 : 10.244.0.2 . 8080, 1 : 10.244.0.4 . 8080 }"
        ));
        assert!(script.contains("elements = { fd00:10:96::b . tcp . 80 : goto sp1 }"));
        assert!(script.contains("dnat ip6 to [fd00:10:244::2]:8080 comment \"default/web:http\""));
        assert_eq!(script.matches('{').count(), script.matches('}').count());
    }

    #[test]
    fn no_endpoints_no_entry() {
        let rules = desired(&[svc()], &[]);
        assert!(rules.iter().all(|r| r.endpoints.is_empty()));
        let script = render(&rules);
        assert!(!script.contains("elements"));
        assert_eq!(render(&rules), script);
    }

    #[test]
    fn other_namespaces_and_headless_are_ignored() {
        let mut other = slice("IPv4", &[("10.244.0.2", Some(true))]);
        other["metadata"]["namespace"] = json!("other");
        let mut headless = svc();
        headless["spec"]["clusterIPs"] = json!(["None"]);
        assert!(
            desired(&[svc()], &[other])
                .iter()
                .all(|r| r.endpoints.is_empty())
        );
        assert!(desired(&[headless], &[]).is_empty());
    }
}
