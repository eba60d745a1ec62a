//! `nat.conf` and its IPv6 twin `nat6.conf`: static tunnel addresses and port forwards.
//!
//! One entry per line, `#` comments and blank lines allowed:
//!
//! ```text
//! # name   host  forwards
//! transmission 10 tcp:18289,udp:18289
//! web          11 tcp:8080:80          # outside port 8080 to the client's port 80
//! ```
//!
//! - `name`: the client's hostname; in Kubernetes a client also matches on its hostname up to
//!   the first `-` (as pod-gateway does), so `transmission-7d9f…` takes `transmission`;
//! - `host`: in nat.conf the client's host number in the tunnel network (the last octet for the
//!   seed's /24), below VXLAN_GATEWAY_FIRST_DYNAMIC_IP; in nat6.conf the interface identifier in
//!   hexadecimal (`a` is `<VXLAN_IPV6_NETWORK>::a`);
//! - `forwards` (optional): comma-separated `type:port[:target]`, type `tcp` or `udp`; traffic
//!   to `port` arriving on VPN_INTERFACE goes to the client's `target` (default: the same).

use netrules::Protocol;
use std::net::IpAddr;

use crate::settings::{Tunnel4, Tunnel6};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Forward {
    pub protocol: Protocol,
    pub port: u16,
    pub target: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatEntry {
    pub name: String,
    pub addr: IpAddr,
    pub forwards: Vec<Forward>,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {reason} (in `{text}`); expected `name host type:port[:target],...`")]
pub struct NatError {
    pub file: String,
    pub line: usize,
    pub text: String,
    pub reason: String,
}

/// Which file and address plan is being read.
#[derive(Debug, Clone, Copy)]
pub enum Plan<'a> {
    V4(&'a Tunnel4),
    V6(&'a Tunnel6),
}

fn forward(s: &str) -> Result<Forward, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (p, port, target) = match parts.as_slice() {
        [p, port] => (p, port, port),
        [p, port, target] => (p, port, target),
        _ => {
            return Err(format!(
                "port forward {s:?} is not `type:port` or `type:port:target`"
            ));
        }
    };
    let protocol = match p.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return Err(format!("port forward {s:?}: type {p:?} is not tcp or udp")),
    };
    let num = |v: &str| {
        v.parse::<u16>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("port forward {s:?}: {v:?} is not a port 1..=65535"))
    };
    Ok(Forward {
        protocol,
        port: num(port)?,
        target: num(target)?,
    })
}

/// Parses a whole file. Names, addresses and outside ports must each be unique.
pub fn parse(file: &str, text: &str, plan: Plan<'_>) -> Result<Vec<NatEntry>, NatError> {
    let mut out: Vec<NatEntry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let fail = |reason: String| NatError {
            file: file.to_string(),
            line: i + 1,
            text: raw.trim().to_string(),
            reason,
        };
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        let (name, host, fwds) = match fields.as_slice() {
            [n, h] => (*n, *h, ""),
            [n, h, f] => (*n, *h, *f),
            _ => return Err(fail(format!("{} fields, expected 2 or 3", fields.len()))),
        };
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
        {
            return Err(fail(format!("name {name:?} is not a hostname")));
        }
        let addr = match plan {
            Plan::V4(t) => {
                let n: u32 = host
                    .parse()
                    .map_err(|_| fail(format!("host {host:?} is not a number")))?;
                if n < 2 || t.first_dynamic <= t.host(n).unwrap_or(t.first_dynamic) {
                    return Err(fail(format!(
                        "host {n} is not a static address: it must be from 2 up to below VXLAN_GATEWAY_FIRST_DYNAMIC_IP ({})",
                        t.first_dynamic
                    )));
                }
                IpAddr::V4(
                    t.host(n)
                        .ok_or_else(|| fail(format!("host {n} is outside {}", t.net)))?,
                )
            }
            Plan::V6(t) => {
                let n = u128::from_str_radix(host.trim_start_matches("::"), 16).map_err(|_| {
                    fail(format!("host {host:?} is not a hexadecimal interface id"))
                })?;
                if n < 2 {
                    return Err(fail(format!("host {host} is the network or the gateway")));
                }
                IpAddr::V6(
                    t.host(n)
                        .ok_or_else(|| fail(format!("host {host} is outside {}", t.net)))?,
                )
            }
        };
        let forwards = fwds
            .split(',')
            .filter(|f| !f.is_empty())
            .map(forward)
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        for e in &out {
            if e.name == name {
                return Err(fail(format!("name {name:?} is already on line {}", e.line)));
            }
            if e.addr == addr {
                return Err(fail(format!(
                    "address {addr} is already {:?}'s (line {})",
                    e.name, e.line
                )));
            }
            if let Some(f) = forwards.iter().find(|f| {
                e.forwards
                    .iter()
                    .any(|g| g.protocol == f.protocol && g.port == f.port)
            }) {
                return Err(fail(format!(
                    "{}:{} is already forwarded to {:?} (line {})",
                    f.protocol, f.port, e.name, e.line
                )));
            }
        }
        out.push(NatEntry {
            name: name.to_string(),
            addr,
            forwards,
            line: i + 1,
        });
    }
    Ok(out)
}

/// The entry for `hostname`: an exact match, else the part before the first `-`.
pub fn lookup<'a>(entries: &'a [NatEntry], hostname: &str) -> Option<&'a NatEntry> {
    entries.iter().find(|e| e.name == hostname).or_else(|| {
        let short = hostname.split('-').next()?;
        entries.iter().find(|e| e.name == short)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Raw, Settings};

    fn plan() -> (Tunnel4, Tunnel6) {
        let env = |n: &str| (n == "VXLAN_IPV6_NETWORK").then(|| "fd00:16::/64".to_string());
        let s = Settings::from_raw(&Raw::resolve(None, &env).unwrap()).unwrap();
        (s.tunnel4, s.tunnel6.unwrap())
    }

    #[test]
    fn seed_format_and_target_ports() {
        let (t4, _) = plan();
        let text = "# static\ntransmission 10 tcp:18289,udp:18289\n\nweb 11 tcp:8080:80 # remapped\nplain 12\n";
        let e = parse("nat.conf", text, Plan::V4(&t4)).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].addr.to_string(), "172.16.0.10");
        assert_eq!(
            e[0].forwards,
            vec![
                Forward {
                    protocol: Protocol::Tcp,
                    port: 18289,
                    target: 18289
                },
                Forward {
                    protocol: Protocol::Udp,
                    port: 18289,
                    target: 18289
                }
            ]
        );
        assert_eq!(e[1].forwards[0].target, 80);
        assert!(e[2].forwards.is_empty());
        assert_eq!(
            lookup(&e, "transmission-7d9f8-abcde").unwrap().name,
            "transmission"
        );
        assert_eq!(lookup(&e, "web").unwrap().line, 4);
        assert!(lookup(&e, "other-1").is_none());
    }

    #[test]
    fn ipv6_twin() {
        let (_, t6) = plan();
        let e = parse(
            "nat6.conf",
            "transmission a tcp:18289\nweb ::1f udp:53:5353\n",
            Plan::V6(&t6),
        )
        .unwrap();
        assert_eq!(e[0].addr.to_string(), "fd00:16::a");
        assert_eq!(e[1].addr.to_string(), "fd00:16::1f");
    }

    #[test]
    fn errors_name_line_and_field() {
        let (t4, t6) = plan();
        for (text, what) in [
            ("a 10 tcp:1\nb 10", "already \"a\"'s"),
            ("a 10\na 11", "already on line 1"),
            ("a 10 tcp:80\nb 11 tcp:80", "already forwarded"),
            ("x 20", "not a static address"),
            ("x 1", "not a static address"),
            ("x ten", "not a number"),
            ("x 10 icmp:1", "not tcp or udp"),
            ("x 10 tcp:0", "not a port"),
            ("x 10 tcp:1:2:3", "not `type:port`"),
            ("x 10 tcp:1 extra", "4 fields"),
            ("x/y 10", "not a hostname"),
        ] {
            let e = parse("nat.conf", text, Plan::V4(&t4)).unwrap_err();
            assert!(e.reason.contains(what), "{text}: {e}");
            assert!(e.to_string().starts_with("nat.conf:"), "{e}");
        }
        assert!(parse("nat6.conf", "x zz", Plan::V6(&t6)).is_err());
    }
}
