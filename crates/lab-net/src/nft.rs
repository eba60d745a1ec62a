//! kube-proxy-style ClusterIP DNAT for the lab node, rendered as one `nft -f -` script.
//!
//! Pure: services in, script text out. The script re-creates the table `inet lab_kubeproxy` in one
//! transaction (add, delete, add), so applying it twice yields the same ruleset and a change is
//! atomic. One verdict-map lookup per family picks the service port, so per-packet cost does not
//! grow with the number of services; `numgen inc` spreads new connections over the backends.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::{BRIDGE, Protocol, ServicePort};

/// The table the lab owns in the node namespace; nothing else is touched.
pub const TABLE: &str = "lab_kubeproxy";

/// One backend: a pod's two addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
}

/// Desired state of one service. `id` is unique in the lab and names its chains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    pub name: String,
    pub id: u32,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub ports: Vec<ServicePort>,
    pub backends: Vec<Backend>,
}

/// Renders the whole table for `services`. A service without backends gets no map entry: its
/// traffic is not translated and the node refuses it (see `SERVICE_CIDR_V4`).
pub fn render(services: &[ServiceSpec]) -> String {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut chains = String::new();
    for svc in services.iter().filter(|s| !s.backends.is_empty()) {
        let addrs4: Vec<String> = svc.backends.iter().map(|b| b.ipv4.to_string()).collect();
        let addrs6: Vec<String> = svc.backends.iter().map(|b| b.ipv6.to_string()).collect();
        for (i, port) in svc.ports.iter().enumerate() {
            let proto = port.protocol.nft_name();
            let chain4 = format!("svc{}-p{i}-v4", svc.id);
            let chain6 = format!("svc{}-p{i}-v6", svc.id);
            v4.push(format!(
                "{} . {proto} . {} : goto {chain4}",
                svc.ipv4, port.port
            ));
            v6.push(format!(
                "{} . {proto} . {} : goto {chain6}",
                svc.ipv6, port.port
            ));
            let comment = match &port.name {
                Some(n) => format!("{} port {n}", svc.name),
                None => format!("{} port {}", svc.name, port.port),
            };
            let target4 = dnat_target(&addrs4, port, false);
            let target6 = dnat_target(&addrs6, port, true);
            let _ = write!(
                chains,
                "\tchain {chain4} {{\n\t\tmeta l4proto {proto} dnat ip to {target4} comment \"{comment}\"\n\t}}\n\
                 \tchain {chain6} {{\n\t\tmeta l4proto {proto} dnat ip6 to {target6} comment \"{comment}\"\n\t}}\n"
            );
        }
    }
    let mut out = String::new();
    // add + delete + add: idempotent whether or not the table exists, in one transaction.
    let _ = writeln!(out, "table inet {TABLE} {{}}");
    let _ = writeln!(out, "delete table inet {TABLE}");
    let _ = writeln!(out, "table inet {TABLE} {{");
    write_map(&mut out, "services4", "ipv4_addr", &v4);
    write_map(&mut out, "services6", "ipv6_addr", &v6);
    out.push_str(
        "\tchain services {\n\
         \t\tip daddr . meta l4proto . th dport vmap @services4\n\
         \t\tip6 daddr . meta l4proto . th dport vmap @services6\n\
         \t}\n\
         \tchain prerouting {\n\
         \t\ttype nat hook prerouting priority -100; policy accept;\n\
         \t\tjump services\n\
         \t}\n\
         \tchain output {\n\
         \t\ttype nat hook output priority -100; policy accept;\n\
         \t\tjump services\n\
         \t}\n\
         \tchain postrouting {\n\
         \t\ttype nat hook postrouting priority 100; policy accept;\n",
    );
    // Pods share one L2 bridge: without this a backend would answer a same-bridge client
    // directly, bypassing the un-DNAT (kube-proxy --masquerade-all).
    let _ = writeln!(
        out,
        "\t\tct status dnat oifname \"{BRIDGE}\" masquerade comment \"return path of ClusterIP traffic\"\n\t}}"
    );
    out.push_str(&chains);
    out.push_str("}\n");
    out
}

fn write_map(out: &mut String, name: &str, addr_type: &str, elements: &[String]) {
    let _ = writeln!(
        out,
        "\tmap {name} {{\n\t\ttype {addr_type} . inet_proto . inet_service : verdict"
    );
    if !elements.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(", "));
    }
    out.push_str("\t}\n");
}

/// `addr:port` for one backend, a `numgen inc` map of `addr . port` over several.
fn dnat_target(addrs: &[String], port: &ServicePort, v6: bool) -> String {
    let tp = port.target_port;
    match addrs {
        [one] if v6 => format!("[{one}]:{tp}"),
        [one] => format!("{one}:{tp}"),
        _ => {
            let entries: Vec<String> = addrs
                .iter()
                .enumerate()
                .map(|(i, a)| format!("{i} : {a} . {tp}"))
                .collect();
            format!(
                "numgen inc mod {} map {{ {} }}",
                addrs.len(),
                entries.join(", ")
            )
        }
    }
}

impl Protocol {
    fn nft_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(n: u8) -> Backend {
        Backend {
            ipv4: Ipv4Addr::new(10, 244, 0, n),
            ipv6: Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, n.into()),
        }
    }

    fn spec(backends: Vec<Backend>) -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            id: 11,
            ipv4: Ipv4Addr::new(10, 96, 0, 11),
            ipv6: Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 11),
            ports: vec![
                ServicePort::tcp(80, 8080).named("http"),
                ServicePort::udp(53, 5353),
            ],
            backends,
        }
    }

    #[test]
    fn empty_ruleset_recreates_table_with_empty_maps() {
        let script = render(&[]);
        assert!(script.starts_with(
            "table inet lab_kubeproxy {}\ndelete table inet lab_kubeproxy\ntable inet lab_kubeproxy {\n"
        ));
        assert!(!script.contains("elements"));
        assert!(script.contains("ct status dnat oifname \"gw0\" masquerade"));
        assert!(script.contains("type nat hook prerouting priority -100"));
        assert!(script.contains("type nat hook output priority -100"));
        assert_eq!(script.matches('{').count(), script.matches('}').count());
    }

    #[test]
    fn one_backend_is_a_plain_dnat() {
        let script = render(&[spec(vec![backend(2)])]);
        assert!(script.contains(
            "elements = { 10.96.0.11 . tcp . 80 : goto svc11-p0-v4, 10.96.0.11 . udp . 53 : goto svc11-p1-v4 }"
        ), "{script}");
        assert!(script.contains(
            "elements = { fd00:10:96::b . tcp . 80 : goto svc11-p0-v6, fd00:10:96::b . udp . 53 : goto svc11-p1-v6 }"
        ));
        assert!(
            script
                .contains("meta l4proto tcp dnat ip to 10.244.0.2:8080 comment \"web port http\"")
        );
        assert!(script.contains(
            "meta l4proto udp dnat ip6 to [fd00:10:244::2]:5353 comment \"web port 53\""
        ));
    }

    #[test]
    fn several_backends_spread_with_numgen() {
        let script = render(&[spec(vec![backend(2), backend(3)])]);
        assert!(script.contains(
            "dnat ip to numgen inc mod 2 map { 0 : 10.244.0.2 . 8080, 1 : 10.244.0.3 . 8080 }"
        ));
        assert!(script.contains(
            "dnat ip6 to numgen inc mod 2 map { 0 : fd00:10:244::2 . 5353, 1 : fd00:10:244::3 . 5353 }"
        ));
    }

    #[test]
    fn service_without_backends_has_no_entry() {
        let script = render(&[spec(vec![])]);
        assert!(!script.contains("svc11"));
        assert!(!script.contains("elements"));
    }

    #[test]
    fn rendering_is_deterministic() {
        let services = [spec(vec![backend(2), backend(3)])];
        assert_eq!(render(&services), render(&services));
    }
}
