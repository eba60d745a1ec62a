//! The name-service files each Pod's containers see, as the kubelet writes them: `resolv.conf`
//! by `dnsPolicy` (and `dnsConfig`), a managed `hosts` file, and an `nsswitch.conf` that makes
//! glibc use them (files, then DNS). Pure: the Pod (JSON) and the node's settings in, file
//! contents out; the node bind-mounts them over `/etc/…` in each container's mount namespace.

use serde_json::Value;
use std::net::IpAddr;

/// The kubelet's limits (validation of `dnsConfig` enforces the same).
pub const MAX_NAMESERVERS: usize = 3;
pub const MAX_SEARCHES: usize = 32;
pub const MAX_SEARCH_CHARS: usize = 2048;

/// What the node knows about DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDns {
    /// The cluster DNS Service's addresses (kubelet `--cluster-dns`).
    pub cluster_dns: Vec<IpAddr>,
    /// The cluster domain (kubelet `--cluster-domain`).
    pub domain: String,
    /// The node's own resolver configuration (kubelet `--resolv-conf`), for `dnsPolicy:
    /// Default` and the search domains ClusterFirst appends.
    pub node_resolv_conf: String,
}

/// A `dnsConfig` or `dnsPolicy` the node cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodDnsError {
    #[error(
        "spec.dnsPolicy: Unsupported value: {0:?}: supported values: \"ClusterFirst\", \"ClusterFirstWithHostNet\", \"Default\", \"None\""
    )]
    Policy(String),
    #[error(
        "spec.dnsConfig.nameservers: Required value: must provide at least one DNS nameserver when `dnsPolicy` is None"
    )]
    NoneWithoutNameserver,
}

/// A parsed resolv.conf: nameservers, search domains, options (`name` or `name:value`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl ResolvConf {
    /// Reads the lines glibc reads (`nameserver`, `search`, `domain`, `options`).
    pub fn parse(text: &str) -> ResolvConf {
        let mut r = ResolvConf::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => r.nameservers.extend(words.next().map(str::to_string)),
                Some("search") | Some("domain") => {
                    r.searches = words.map(str::to_string).collect();
                }
                Some("options") => r.options.extend(words.map(str::to_string)),
                _ => {}
            }
        }
        r
    }

    /// The file's text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for n in &self.nameservers {
            out.push_str(&format!("nameserver {n}\n"));
        }
        if !self.searches.is_empty() {
            out.push_str(&format!("search {}\n", self.searches.join(" ")));
        }
        if !self.options.is_empty() {
            out.push_str(&format!("options {}\n", self.options.join(" ")));
        }
        out
    }
}

fn strings(v: &Value, ptr: &str) -> Vec<String> {
    v.pointer(ptr)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

fn option_name(o: &str) -> &str {
    o.split(':').next().unwrap_or(o)
}

/// The Pod's resolv.conf.
pub fn resolv_conf(pod: &Value, node: &NodeDns) -> Result<String, PodDnsError> {
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let host_network = pod.pointer("/spec/hostNetwork") == Some(&Value::Bool(true));
    let policy = pod
        .pointer("/spec/dnsPolicy")
        .and_then(Value::as_str)
        .unwrap_or("ClusterFirst");
    let node_conf = ResolvConf::parse(&node.node_resolv_conf);
    let cluster_first = ResolvConf {
        nameservers: node.cluster_dns.iter().map(IpAddr::to_string).collect(),
        searches: [
            format!("{ns}.svc.{}", node.domain),
            format!("svc.{}", node.domain),
            node.domain.clone(),
        ]
        .into_iter()
        .chain(node_conf.searches.iter().cloned())
        .collect(),
        options: vec!["ndots:5".into()],
    };
    let mut conf = match policy {
        // ClusterFirst on the host network falls back to Default, as the kubelet does.
        "ClusterFirst" if host_network => node_conf,
        "ClusterFirst" | "ClusterFirstWithHostNet" => cluster_first,
        "Default" => node_conf,
        "None" => ResolvConf::default(),
        other => return Err(PodDnsError::Policy(other.to_string())),
    };
    let cfg = pod.pointer("/spec/dnsConfig").cloned().unwrap_or_default();
    for n in strings(&cfg, "/nameservers") {
        if !conf.nameservers.contains(&n) {
            conf.nameservers.push(n);
        }
    }
    if policy == "None" && conf.nameservers.is_empty() {
        return Err(PodDnsError::NoneWithoutNameserver);
    }
    conf.nameservers.truncate(MAX_NAMESERVERS);
    for s in strings(&cfg, "/searches") {
        if !conf.searches.contains(&s) {
            conf.searches.push(s);
        }
    }
    // The kubelet trims the search list to what the resolver takes.
    let mut chars = 0;
    conf.searches.retain(|s| {
        chars += s.len() + 1;
        chars <= MAX_SEARCH_CHARS
    });
    conf.searches.truncate(MAX_SEARCHES);
    // dnsConfig options replace options of the same name.
    if let Some(opts) = cfg.get("options").and_then(Value::as_array) {
        for o in opts {
            let Some(name) = o.get("name").and_then(Value::as_str) else {
                continue;
            };
            let text = match o.get("value").and_then(Value::as_str) {
                Some(v) => format!("{name}:{v}"),
                None => name.to_string(),
            };
            conf.options.retain(|x| option_name(x) != name);
            conf.options.push(text);
        }
    }
    Ok(conf.render())
}

/// The Pod's hostname: `spec.hostname`, else its name, cut to 63 characters (a DNS label) as
/// the kubelet does, without a trailing `-` or `.`.
pub fn hostname(pod: &Value) -> String {
    let h = pod
        .pointer("/spec/hostname")
        .and_then(Value::as_str)
        .filter(|h| !h.is_empty())
        .or_else(|| pod.pointer("/metadata/name").and_then(Value::as_str))
        .unwrap_or_default();
    let mut h: String = h.chars().take(63).collect();
    while h.ends_with('-') || h.ends_with('.') {
        h.pop();
    }
    h
}

/// `<hostname>.<subdomain>.<ns>.svc.<domain>` when the Pod has a subdomain.
pub fn fqdn(pod: &Value, domain: &str) -> Option<String> {
    let sub = pod
        .pointer("/spec/subdomain")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())?;
    let ns = pod
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    Some(format!("{}.{sub}.{ns}.svc.{domain}", hostname(pod)))
}

/// The kubelet-managed `/etc/hosts`: loopback and IPv6 names, the Pod's addresses with its
/// FQDN (when it has a subdomain) and hostname, then `hostAliases`.
pub fn hosts(pod: &Value, pod_ips: &[IpAddr], domain: &str) -> String {
    let mut out = String::from(
        "# Kubernetes-managed hosts file.\n\
         127.0.0.1\tlocalhost\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         fe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\n\
         fe00::1\tip6-allnodes\n\
         fe00::2\tip6-allrouters\n",
    );
    let host = hostname(pod);
    let names = match fqdn(pod, domain) {
        Some(f) => format!("{f}\t{host}"),
        None => host,
    };
    for ip in pod_ips {
        out.push_str(&format!("{ip}\t{names}\n"));
    }
    let aliases = pod
        .pointer("/spec/hostAliases")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !aliases.is_empty() {
        out.push_str("\n# Entries added by HostAliases.\n");
        for a in &aliases {
            let ip = a.get("ip").and_then(Value::as_str).unwrap_or_default();
            let names = strings(a, "/hostnames");
            if !ip.is_empty() && !names.is_empty() {
                out.push_str(&format!("{ip}\t{}\n", names.join("\t")));
            }
        }
    }
    out
}

/// An nsswitch.conf that resolves hosts from `/etc/hosts`, then DNS (the pod's resolv.conf),
/// and nothing from the host's own name services (no mDNS, no systemd-resolved).
pub const NSSWITCH_CONF: &str = "# Written by the ghostwire lab node for this pod.\n\
passwd:         files\n\
group:          files\n\
shadow:         files\n\
hosts:          files dns\n\
networks:       files\n\
protocols:      files\n\
services:       files\n\
ethers:         files\n\
rpc:            files\n";

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> NodeDns {
        NodeDns {
            cluster_dns: vec!["10.96.0.10".parse().unwrap()],
            domain: "cluster.local".into(),
            node_resolv_conf: "nameserver 192.0.2.53\nsearch lab.example\noptions edns0\n".into(),
        }
    }

    #[test]
    fn cluster_first_uses_the_cluster_dns_and_search_path() {
        let pod = json!({"metadata": {"namespace": "shop", "name": "p"}, "spec": {}});
        assert_eq!(
            resolv_conf(&pod, &node()).unwrap(),
            "nameserver 10.96.0.10\n\
             search shop.svc.cluster.local svc.cluster.local cluster.local lab.example\n\
             options ndots:5\n"
        );
    }

    #[test]
    fn default_uses_the_nodes_and_none_only_dns_config() {
        let pod = json!({"metadata": {"namespace": "shop"}, "spec": {"dnsPolicy": "Default"}});
        assert_eq!(
            resolv_conf(&pod, &node()).unwrap(),
            "nameserver 192.0.2.53\nsearch lab.example\noptions edns0\n"
        );
        let pod = json!({"metadata": {"namespace": "shop"}, "spec": {"dnsPolicy": "None",
            "dnsConfig": {"nameservers": ["192.0.2.1"], "searches": ["a.example"],
                          "options": [{"name": "ndots", "value": "2"}, {"name": "edns0"}]}}});
        assert_eq!(
            resolv_conf(&pod, &node()).unwrap(),
            "nameserver 192.0.2.1\nsearch a.example\noptions ndots:2 edns0\n"
        );
        let bad = json!({"spec": {"dnsPolicy": "None"}});
        assert_eq!(
            resolv_conf(&bad, &node()),
            Err(PodDnsError::NoneWithoutNameserver)
        );
        let bad = json!({"spec": {"dnsPolicy": "Sometimes"}});
        assert!(
            resolv_conf(&bad, &node())
                .unwrap_err()
                .to_string()
                .contains("\"Sometimes\"")
        );
    }

    #[test]
    fn dns_config_merges_into_cluster_first() {
        let pod = json!({"metadata": {"namespace": "shop"}, "spec": {"dnsConfig": {
            "nameservers": ["192.0.2.9"], "searches": ["svc.cluster.local", "x.example"],
            "options": [{"name": "ndots", "value": "1"}]}}});
        assert_eq!(
            resolv_conf(&pod, &node()).unwrap(),
            "nameserver 10.96.0.10\nnameserver 192.0.2.9\n\
             search shop.svc.cluster.local svc.cluster.local cluster.local lab.example x.example\n\
             options ndots:1\n"
        );
    }

    #[test]
    fn hosts_names_the_pod_with_its_fqdn_and_aliases() {
        let pod = json!({"metadata": {"namespace": "shop", "name": "db-0"},
                         "spec": {"hostname": "db-0", "subdomain": "db",
                                  "hostAliases": [{"ip": "192.0.2.4", "hostnames": ["a.example", "b"]}]}});
        let h = hosts(
            &pod,
            &[
                "10.244.0.5".parse().unwrap(),
                "fd00:10:244::5".parse().unwrap(),
            ],
            "cluster.local",
        );
        assert!(h.starts_with("# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n"));
        assert!(h.contains("10.244.0.5\tdb-0.db.shop.svc.cluster.local\tdb-0\n"));
        assert!(h.contains("fd00:10:244::5\tdb-0.db.shop.svc.cluster.local\tdb-0\n"));
        assert!(h.ends_with("# Entries added by HostAliases.\n192.0.2.4\ta.example\tb\n"));
        let plain = json!({"metadata": {"name": "web-7d9f-abcde"}, "spec": {}});
        assert!(
            hosts(&plain, &["10.244.0.6".parse().unwrap()], "cluster.local")
                .contains("10.244.0.6\tweb-7d9f-abcde\n")
        );
        let long = json!({"metadata": {"name": format!("{}-x", "a".repeat(62))}, "spec": {}});
        assert_eq!(hostname(&long), "a".repeat(62));
    }
}
