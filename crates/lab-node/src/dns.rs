//! Cluster DNS on the node, as a kubeadm cluster has it: the `kube-dns` Service in `kube-system`
//! on the tenth address of each Service range (10.96.0.10 and fd00:10:96::a by default; the
//! static band the API keeps for Services that name their ClusterIP), whose endpoints are
//! a [`lab_dns`] server bound to the node's bridge addresses (port 53, UDP and TCP) in the node's
//! namespace, reached from pods through kube-proxy's DNAT like any Service. The server answers
//! from a zone rebuilt from the Services and EndpointSlices the node watches; names outside the
//! cluster go to the lab's upstream, if it has one (a socket on the host side, e.g. loopback),
//! else are refused.
//!
//! The `coredns` ConfigMap's Corefile, when there is one, gives the server its `rewrite` rules
//! (e.g. the blocks `ghostwire mirror coredns-config` prints); its other plugins are ignored.
//!
//! Each Pod also gets its own `resolv.conf` (by `dnsPolicy`), `hosts` and `nsswitch.conf`, written
//! under its directory and bind-mounted over `/etc/…` in every container's own mount namespace.

use crate::container::Mount;
use lab_dns::pod_files::{self, NodeDns};
use serde_json::{Value, json};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

/// The cluster domain.
pub const DOMAIN: &str = "cluster.local";
/// kube-dns's namespace and name.
pub const NAMESPACE: &str = "kube-system";
pub const SERVICE: &str = "kube-dns";
/// Where the server listens on the node.
pub const PORT: u16 = 53;
/// The ConfigMap (in [`NAMESPACE`]) and key holding the Corefile, as kubeadm installs CoreDNS.
pub const COREDNS_CONFIGMAP: &str = "coredns";
pub const COREFILE_KEY: &str = "Corefile";

/// The rewrite rules of the `coredns` ConfigMap's Corefile, parsed when its text changes. A
/// Corefile the lab cannot take is logged and the rules in force stay (CoreDNS's `reload` keeps
/// the running config when the new one is invalid); no ConfigMap or no key: no rules.
#[derive(Default)]
pub struct Corefile {
    text: Option<String>,
    rules: Vec<lab_dns::rewrite::Rewrite>,
}

impl Corefile {
    pub fn rewrites(&mut self, text: Option<&str>) -> Vec<lab_dns::rewrite::Rewrite> {
        if self.text.as_deref() != text {
            match text.map(lab_dns::rewrite::parse_corefile).transpose() {
                Ok(rules) => self.rules = rules.unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(error = %e, "kube-system/coredns: Corefile refused, the previous rules stay")
                }
            }
            self.text = text.map(str::to_string);
        }
        self.rules.clone()
    }
}

/// The kube-dns Service as kubeadm installs it (dual-stack here, as the lab is).
pub fn service(net: &lab_net::Network) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE,
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS",
                                "kubernetes.io/cluster-service": "true"}},
        "spec": {
            "clusterIP": net.dns_ipv4().to_string(),
            "clusterIPs": [net.dns_ipv4().to_string(), net.dns_ipv6().to_string()],
            "ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack",
            "ports": [{"name": "dns", "port": PORT, "protocol": "UDP", "targetPort": PORT},
                      {"name": "dns-tcp", "port": PORT, "protocol": "TCP", "targetPort": PORT}],
        },
    })
}

/// The node's DNS settings for pods' files.
pub fn node_dns(net: &lab_net::Network, node_resolv_conf: &str) -> NodeDns {
    NodeDns {
        cluster_dns: vec![IpAddr::V4(net.dns_ipv4())],
        domain: DOMAIN.into(),
        node_resolv_conf: node_resolv_conf.to_string(),
    }
}

/// The zone for the node's current view.
pub fn zone(
    net: &lab_net::Network,
    services: &[Value],
    slices: &[Value],
    serial: u32,
) -> lab_dns::Zone {
    let config = lab_dns::ZoneConfig {
        domain: DOMAIN.into(),
        reverse: vec![
            (net.service_v4.network().into(), net.service_v4.prefix_len()),
            (net.pod_v4.network().into(), net.pod_v4.prefix_len()),
            (net.service_v6.network().into(), net.service_v6.prefix_len()),
            (net.pod_v6.network().into(), net.pod_v6.prefix_len()),
        ],
    };
    lab_dns::Zone::build(config, services, slices, serial)
}

/// Binds UDP and TCP port 53 on the node's bridge addresses inside its namespace and serves.
pub fn start(
    net: &lab_net::Network,
    node: &netns::Netns,
    zone: lab_dns::ZoneHandle,
    upstream: lab_dns::Upstream,
) -> std::io::Result<lab_dns::DnsServer> {
    let addrs = [
        SocketAddr::from((net.node_ipv4(), PORT)),
        SocketAddr::from((net.node_ipv6(), PORT)),
    ];
    let (udp, tcp) = node
        .run(move || -> std::io::Result<_> {
            let mut udp = Vec::new();
            let mut tcp = Vec::new();
            for a in addrs {
                udp.push(std::net::UdpSocket::bind(a)?);
                tcp.push(std::net::TcpListener::bind(a)?);
            }
            Ok((udp, tcp))
        })
        .map_err(std::io::Error::other)??;
    lab_dns::DnsServer::start(udp, tcp, zone, upstream)
}

const FILES: [&str; 3] = ["resolv.conf", "hosts", "nsswitch.conf"];

/// Writes the Pod's name-service files under `<dir>/etc` (see [`mounts`]).
pub fn pod_files(
    net: &lab_net::Network,
    pod: &Value,
    dir: &Path,
    node_resolv_conf: &str,
) -> Result<(), String> {
    let resolv =
        pod_files::resolv_conf(pod, &node_dns(net, node_resolv_conf)).map_err(|e| e.to_string())?;
    let ips: Vec<IpAddr> = crate::util::arr(pod, "/status/podIPs")
        .iter()
        .filter_map(|i| i["ip"].as_str()?.parse().ok())
        .collect();
    let hosts = pod_files::hosts(pod, &ips, DOMAIN);
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc).map_err(|e| format!("{}: {e}", etc.display()))?;
    for (file, text) in
        FILES
            .into_iter()
            .zip([resolv.as_str(), hosts.as_str(), pod_files::NSSWITCH_CONF])
    {
        let path = etc.join(file);
        // Written whole: a container starting meanwhile never sees half a file.
        atomic_file::write(&path, text, 0o644).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// The bind mounts of the files [`pod_files`] wrote, over `/etc/…` (those that exist).
pub fn mounts(dir: &Path) -> Vec<Mount> {
    FILES
        .iter()
        .map(|f| (dir.join("etc").join(f), format!("/etc/{f}")))
        .filter(|(p, _)| p.is_file())
        .map(|(source, target)| Mount {
            source,
            target,
            read_only: false,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kube_dns_takes_the_tenth_address_of_each_range() {
        let net = lab_net::Network::default();
        let s = service(&net);
        assert_eq!(
            s["spec"]["clusterIPs"],
            json!(["10.96.0.10", "fd00:10:96::a"])
        );
        let z = zone(
            &net,
            &[{
                let mut s = service(&net);
                s["metadata"]["uid"] = json!("u");
                s
            }],
            &[],
            1,
        );
        assert!(matches!(
            z.lookup("kube-dns.kube-system.svc.cluster.local", lab_dns::QType::A),
            lab_dns::Answer::Records { .. }
        ));
    }

    #[test]
    fn a_refused_corefile_keeps_the_rules_in_force() {
        let good =
            "cluster.west {\n rewrite name exact a.cluster.west a.shop.svc.cluster.local\n}\n";
        let mut c = Corefile::default();
        assert_eq!(c.rewrites(Some(good)).len(), 1);
        assert_eq!(
            c.rewrites(Some("cluster.west {\n rewrite name regex ( x\n}\n"))
                .len(),
            1
        );
        assert!(c.rewrites(None).is_empty());
    }

    #[test]
    fn pod_files_are_written_and_mounted_over_etc() {
        let dir = std::env::temp_dir().join(format!("gw-dns-files-{}", std::process::id()));
        let pod = json!({"metadata": {"name": "p", "namespace": "shop"}, "spec": {},
                         "status": {"podIPs": [{"ip": "10.244.0.9"}]}});
        pod_files(&lab_net::Network::default(), &pod, &dir, "").unwrap();
        let mounts = mounts(&dir);
        let targets: Vec<&str> = mounts.iter().map(|m| m.target.as_str()).collect();
        assert_eq!(
            targets,
            ["/etc/resolv.conf", "/etc/hosts", "/etc/nsswitch.conf"]
        );
        let resolv = std::fs::read_to_string(&mounts[0].source).unwrap();
        assert!(resolv.starts_with("nameserver 10.96.0.10\nsearch shop.svc.cluster.local "));
        assert!(
            std::fs::read_to_string(&mounts[1].source)
                .unwrap()
                .contains("10.244.0.9\tp\n")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
