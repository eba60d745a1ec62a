//! The mesh's knobs (`ghostwire proxy-init`, `ghostwire proxy`, the injector's mesh piece): one
//! table, from which flags, `GW_*` env, `ghostwire.dev/*` annotations and docs/configuration.md
//! derive, and the typed settings each part resolves from it.

use ipnet::IpNet;
use knobs::{ConfigError, Resolver, parse_bool, parse_duration, parse_ports};
use netrules::BackendKind;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use knobs::Knob;

knobs::knobs! {
    PROXY_UID = "GW_MESH_PROXY_UID", "proxy-uid", "1337",
        "uid the proxy runs as; its own connections are never redirected.", @"meshProxyUid";
    INBOUND_PORT = "GW_MESH_INBOUND_PORT", "inbound-port", "4000",
        "Port the proxy takes redirected inbound TCP on.";
    OUTBOUND_PORT = "GW_MESH_OUTBOUND_PORT", "outbound-port", "5000",
        "Port the proxy takes redirected outbound TCP on.";
    ADMIN_ADDR = "GW_MESH_ADMIN_ADDR", "admin-addr", "0.0.0.0:4191",
        "Proxy: address of /metrics, /live, /ready and /config_dump.";
    SKIP_INBOUND_PORTS = "GW_MESH_SKIP_INBOUND_PORTS", "skip-inbound-ports", "4191",
        "Comma-separated inbound ports that bypass the proxy (the admin port, so probes reach it).", @"meshSkipInboundPorts";
    SKIP_OUTBOUND_PORTS = "GW_MESH_SKIP_OUTBOUND_PORTS", "skip-outbound-ports", "",
        "Comma-separated destination ports that bypass the proxy.", @"meshSkipOutboundPorts";
    SKIP_OUTBOUND_CIDRS = "GW_MESH_SKIP_OUTBOUND_CIDRS", "skip-outbound-cidrs", "auto",
        "Comma-separated CIDRs whose traffic bypasses the proxy. `auto`: the IMDS addresses and the API server (KUBERNETES_SERVICE_HOST).", @"meshSkipOutboundCidrs";
    IPV6 = "GW_MESH_IPV6", "ipv6", "true",
        "Also redirect IPv6 TCP.", @"meshIpv6";
    BACKEND = "GW_MESH_BACKEND", "backend", "auto",
        "Rule backend: auto, nftables, iptables, iptables-nft or iptables-legacy.", @"meshBackend";
    VALIDATE_TIMEOUT = "GW_MESH_VALIDATE_TIMEOUT", "validate-timeout", "5s",
        "proxy-init --validate: how long to wait for the redirected connection.";
    OPAQUE_PORTS = "GW_MESH_OPAQUE_PORTS", "opaque-ports", "25,587,3306,4444,5432,6379,9300,11211",
        "Destination ports proxied as opaque TCP without protocol detection (server-speaks-first protocols: SMTP, MySQL, PostgreSQL, Redis, memcached, …).", @"meshOpaquePorts";
    DETECT_TIMEOUT = "GW_MESH_DETECT_TIMEOUT", "detect-timeout", "10s",
        "How long the proxy waits for a client's first bytes before treating the connection as opaque TCP.";
    CONFIG = "GW_MESH_CONFIG", "routes", "",
        "Proxy: routing config file (YAML or JSON), reloaded when it changes. Empty: every destination passes through unchanged.";
    PREVIEW_MAP = "GW_MESH_PREVIEW_MAP", "preview-map", "",
        "Proxy: the preview switch's map in its mesh mode (JSON, reloaded when it changes); while it says `on`, connections to an active Service's address go to its preview. Set by the injector when a Pod asks for both.";
    CONFIG_POLL = "GW_MESH_CONFIG_POLL", "config-poll", "1s",
        "Proxy: how often the routing config file is checked for changes.";
    MAX_CONNECTIONS = "GW_MESH_MAX_CONNECTIONS", "max-connections", "10000",
        "Proxy: connections accepted at once per direction; more wait in the listen backlog.";
    HEADER_READ_TIMEOUT = "GW_MESH_HEADER_READ_TIMEOUT", "header-read-timeout", "10s",
        "Proxy: time a client has to send a request's headers (else 408).";
    IDLE_TIMEOUT = "GW_MESH_IDLE_TIMEOUT", "idle-timeout", "300s",
        "Proxy: an opaque TCP connection with no bytes either way, or an HTTP/2 connection with no stream open, for this long is closed.";
    MAX_HEADER_BYTES = "GW_MESH_MAX_HEADER_BYTES", "max-header-bytes", "65536",
        "Proxy: largest request head accepted (else 431).";
    MAX_HEADERS = "GW_MESH_MAX_HEADERS", "max-headers", "100",
        "Proxy: most header fields in a request (else 431).";
    THREADS = "GW_MESH_PROXY_THREADS", "proxy-threads", "1",
        "Proxy: worker threads. 1 serves every connection on one thread (no cross-thread wake-ups: the least CPU per request, as a sidecar with a one-core budget wants); more add throughput where the Pod's CPU limit allows. docs/benchmarks.md compares them.", @"meshProxyThreads";
    DRAIN_TIMEOUT = "GW_MESH_DRAIN_TIMEOUT", "drain-timeout", "10s",
        "Proxy: on SIGTERM, how long in-flight requests may finish before the proxy exits.";
    CONTROLLER = "GW_MESH_CONTROLLER", "controller", "",
        "Proxy: comma-separated controller addresses (http://HOST:PORT, tried in turn); the routing config then comes from the controller's gRPC stream, not from --routes. Empty: no controller. The injector then also mounts the projected token.", @"mesh-controller";
    TLS_MODE = "GW_MESH_TLS", "mesh-tls", "permissive",
        "Proxy: inbound policy. `permissive`: mesh TLS and plaintext (or the app's own TLS) are both accepted; `strict`: only mesh TLS with a verified client certificate, everything else is closed (probes must then use a skipped port or exec).", @"mesh-tls";
    TLS_CERT = "GW_MESH_TLS_CERT", "tls-cert", "",
        "Proxy: PEM certificate chain presented in mesh TLS (its leaf's only URI SAN is the workload's SPIFFE ID), reloaded when it changes. Set with --tls-key and --tls-roots, or none of the three.";
    TLS_KEY = "GW_MESH_TLS_KEY", "tls-key", "",
        "Proxy: PEM private key of --tls-cert.";
    TLS_ROOTS = "GW_MESH_TLS_ROOTS", "tls-roots", "",
        "Proxy: PEM trust anchors peers' certificates must chain to.";
    IDENTITY = "GW_MESH_IDENTITY", "identity", "",
        "Proxy: this workload's SPIFFE ID (spiffe://TRUST-DOMAIN/ns/NS/sa/SA). With --controller and no --tls-cert, the proxy asks the controller to sign a certificate for it and renews it at two thirds of its life. Neither files nor controller identity: mesh TLS off (plaintext both ways).";
    L4_ONLY = "GW_MESH_L4_ONLY", "l4-only", "false",
        "Proxy: L4 only (the identity agent's mode): no protocol detection, every connection is opaque TCP; a Service address goes to one endpoint the proxy picks, with that endpoint's identity; an inbound mesh client must present the identity the routing config's `pods` gives its source address.";
    KTLS = "GW_MESH_KTLS", "ktls", "false",
        "Proxy: hand mesh TLS sessions to the kernel (kTLS: TCP_ULP tls, then TLS_TX/TLS_RX) where the kernel has the TLS module; without it they stay in userspace TLS, logged once and counted in `ghostwire_proxy_ktls_offloads_total{result=\"userspace\"}`.";
    AI_POD = "GW_MESH_AI_POD", "ai-pod", "",
        "Proxy: NAMESPACE/NAME of the Pod whose LLM rewriting policy applies to the proxy's outbound HTTP (its `ghostwire.dev/ai*` annotations and its ConfigMap `NAME-ghostwire-ai`, followed through the API with the Pod's ServiceAccount). The injector sets it from the downward API for Pods annotated `ghostwire.dev/ai: \"true\"`. Empty: no rewriting.";
    TOKEN = "GW_MESH_TOKEN", "token", "/var/run/secrets/ghostwire/mesh/token",
        "Proxy: the projected ServiceAccount token (with the mesh's audience) presented to the controller; the injector mounts it there when a controller is set.", @"mesh-token";
}

/// LLM rewriting's opt-in, shared by the identity agent (`identity::ai`) and the injector's
/// mesh sidecar ([`AI_POD`]).
pub mod ai {
    use std::collections::BTreeMap;

    /// Annotations that turn rewriting on: ours (`"true"`), the seed's (present and not
    /// `"false"`).
    pub const AI: &str = "ghostwire.dev/ai";
    pub const SEED_AI: &str = "kube-gateway.io/ai";
    /// The model override annotations, ours first.
    pub const MODEL: [&str; 2] = ["ghostwire.dev/ai-model", "kube-gateway.io/ai-model"];

    /// Whether the Pod asks for rewriting.
    pub fn opted_in(annotations: &BTreeMap<String, String>) -> bool {
        annotations.get(AI).is_some_and(|v| v == "true")
            || annotations.get(SEED_AI).is_some_and(|v| v != "false")
    }
}

/// The audience of the projected token the proxy presents to the controller (the controller's
/// `GW_CONTROLLER_AUDIENCE` default).
pub const TOKEN_AUDIENCE: &str = "ghostwire-mesh";

/// The IMDS addresses (AWS, GCP, Azure use the IPv4 one; AWS also the IPv6 one).
pub const IMDS: [&str; 2] = ["169.254.169.254/32", "fd00:ec2::254/128"];

/// The nftables table (iptables comment tag) that holds proxy-init's rules.
pub const TABLE: &str = "ghostwire_mesh";

/// The label the DIY Service Mesh seed used to opt a Pod in; the injector honours it too.
pub const SEED_LABEL: (&str, &str) = ("service-mesh", "enabled");

/// Which rule backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Fixed(BackendKind),
}

/// Everything `proxy-init` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitSettings {
    pub proxy_uid: u32,
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub skip_inbound_ports: Vec<u16>,
    pub skip_outbound_ports: Vec<u16>,
    pub skip_outbound_cidrs: Vec<IpNet>,
    pub ipv6: bool,
    pub backend: BackendChoice,
    pub validate_timeout: Duration,
}

/// The proxy's inbound policy for connections that are not mesh TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Mesh TLS and plaintext are both accepted.
    Permissive,
    /// Only mesh TLS with a verified client certificate is accepted.
    Strict,
}

impl std::str::FromStr for TlsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<TlsMode, String> {
        match s.trim() {
            "permissive" => Ok(TlsMode::Permissive),
            "strict" => Ok(TlsMode::Strict),
            _ => Err("expected permissive or strict".into()),
        }
    }
}

/// Mesh TLS identity from files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub roots: PathBuf,
}

/// Everything `proxy` needs at start-up (routes come from [`CONFIG`] at run time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub admin_addr: SocketAddr,
    pub opaque_ports: Vec<u16>,
    pub detect_timeout: Duration,
    pub config: Option<PathBuf>,
    pub preview_map: Option<PathBuf>,
    pub config_poll: Duration,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub drain_timeout: Duration,
    /// Worker threads of the proxy's runtime; 1 means a single-threaded runtime.
    pub threads: usize,
    pub ipv6: bool,
    /// Controller addresses; empty: the routing config comes from [`CONFIG`] (or nowhere).
    pub controller: Vec<String>,
    pub token: PathBuf,
    pub tls_mode: TlsMode,
    /// Certificate, key and anchors from files; `None`: from the controller or nowhere.
    pub tls_files: Option<TlsFiles>,
    /// This workload's SPIFFE ID (for the controller's certificate).
    pub identity: Option<String>,
    /// L4 only (the identity agent's mode, [`L4_ONLY`]): no protocol detection, every
    /// connection is opaque TCP (a Service address goes to one endpoint the proxy picks, with
    /// that endpoint's identity), and an inbound mesh client must be the Pod that owns its
    /// source address (the config's `pods`).
    pub l4_only: bool,
    /// Hand mesh TLS sessions to the kernel (kTLS) where it can take them ([`KTLS`]; the
    /// identity agent's from the Pod's `ghostwire.dev/ktls`).
    pub ktls: bool,
    /// The Pod whose LLM rewriting policy the proxy follows ([`AI_POD`]): (namespace, name).
    pub ai_pod: Option<(String, String)>,
}

/// Where raw values come from.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// Flags and `GW_*` env (clap merges the two).
    pub given: BTreeMap<String, String>,
    /// A defaults file (a mounted ConfigMap).
    pub file: BTreeMap<String, String>,
    /// `KUBERNETES_SERVICE_HOST`, for the `auto` exclusions.
    pub api_server_host: Option<String>,
}

fn port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err("expected a port (1-65535)".into()),
        Ok(p) => Ok(p),
    }
}

fn positive(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be greater than zero".into()),
        d => Ok(d),
    }
}

fn count(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) | Err(_) => Err("expected a whole number greater than zero".into()),
        Ok(n) => Ok(n),
    }
}

fn cidrs(s: &str, api_server: Option<&str>) -> Result<Vec<IpNet>, String> {
    if s.trim() == "auto" {
        let mut v: Vec<IpNet> = IMDS.iter().map(|c| c.parse().expect("valid")).collect();
        if let Some(ip) = api_server.and_then(|h| h.parse::<std::net::IpAddr>().ok()) {
            v.push(IpNet::from(ip));
        }
        return Ok(v);
    }
    s.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| format!("{c:?} is not a CIDR (e.g. 10.0.0.0/8) or an address"))
        })
        .collect()
}

impl Sources {
    fn resolver(&self) -> Resolver<'_> {
        Resolver {
            table: KNOBS,
            given: &self.given,
            file: &self.file,
        }
    }

    pub fn init_settings(&self) -> Result<InitSettings, ConfigError> {
        let r = self.resolver();
        let ipv6 = r.parse(IPV6, parse_bool)?;
        let inbound_port = r.parse(INBOUND_PORT, port)?;
        let outbound_port = r.parse(OUTBOUND_PORT, |s| {
            let p = port(s)?;
            if p == inbound_port {
                return Err(format!("must differ from {INBOUND_PORT}"));
            }
            Ok(p)
        })?;
        Ok(InitSettings {
            proxy_uid: r.parse(PROXY_UID, |s| {
                s.trim()
                    .parse::<u32>()
                    .map_err(|_| "expected a numeric uid".to_string())
            })?,
            inbound_port,
            outbound_port,
            skip_inbound_ports: r.parse(SKIP_INBOUND_PORTS, parse_ports)?,
            skip_outbound_ports: r.parse(SKIP_OUTBOUND_PORTS, parse_ports)?,
            skip_outbound_cidrs: r
                .parse(SKIP_OUTBOUND_CIDRS, |s| {
                    cidrs(s, self.api_server_host.as_deref())
                })?
                .into_iter()
                .filter(|c| ipv6 || matches!(c, IpNet::V4(_)))
                .collect(),
            ipv6,
            backend: r.parse(BACKEND, |s| match s {
                "auto" => Ok(BackendChoice::Auto),
                other => other.parse().map(BackendChoice::Fixed),
            })?,
            validate_timeout: r.parse(VALIDATE_TIMEOUT, positive)?,
        })
    }

    pub fn proxy_settings(&self) -> Result<ProxySettings, ConfigError> {
        let r = self.resolver();
        Ok(ProxySettings {
            l4_only: r.parse(L4_ONLY, parse_bool)?,
            ktls: r.parse(KTLS, parse_bool)?,
            ai_pod: r.parse(AI_POD, |s| {
                let s = s.trim();
                if s.is_empty() {
                    return Ok(None);
                }
                let dns = |p: &str| {
                    !p.is_empty()
                        && p.len() <= 253
                        && p.bytes().all(|b| {
                            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'
                        })
                };
                match s.split_once('/') {
                    Some((ns, name)) if dns(ns) && dns(name) => {
                        Ok(Some((ns.to_string(), name.to_string())))
                    }
                    _ => Err("expected NAMESPACE/NAME of a Pod".to_string()),
                }
            })?,
            inbound_port: r.parse(INBOUND_PORT, port)?,
            outbound_port: r.parse(OUTBOUND_PORT, port)?,
            admin_addr: r.parse(ADMIN_ADDR, |s| {
                s.parse()
                    .map_err(|_| "expected ADDRESS:PORT, e.g. 0.0.0.0:4191".to_string())
            })?,
            opaque_ports: r.parse(OPAQUE_PORTS, parse_ports)?,
            detect_timeout: r.parse(DETECT_TIMEOUT, positive)?,
            config: Some(r.raw(CONFIG))
                .filter(|p| !p.trim().is_empty())
                .map(PathBuf::from),
            preview_map: Some(r.raw(PREVIEW_MAP))
                .filter(|p| !p.trim().is_empty())
                .map(PathBuf::from),
            config_poll: r.parse(CONFIG_POLL, positive)?,
            max_connections: r.parse(MAX_CONNECTIONS, count)?,
            header_read_timeout: r.parse(HEADER_READ_TIMEOUT, positive)?,
            idle_timeout: r.parse(IDLE_TIMEOUT, positive)?,
            max_header_bytes: r.parse(MAX_HEADER_BYTES, |s| {
                let n = count(s)?;
                if n < 8192 {
                    return Err("must be at least 8192".into());
                }
                Ok(n)
            })?,
            max_headers: r.parse(MAX_HEADERS, count)?,
            drain_timeout: r.parse(DRAIN_TIMEOUT, parse_duration)?,
            threads: r.parse(THREADS, |s| match count(s)? {
                n if n > 64 => Err("at most 64".to_string()),
                n => Ok(n),
            })?,
            ipv6: r.parse(IPV6, parse_bool)?,
            controller: r.parse(CONTROLLER, |s| {
                s.split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(|a| {
                        if a.starts_with("http://") || a.starts_with("https://") {
                            Ok(a.to_string())
                        } else {
                            Err(format!("{a:?} is not a URL (http://HOST:PORT)"))
                        }
                    })
                    .collect()
            })?,
            token: PathBuf::from(r.raw(TOKEN)),
            tls_mode: r.parse(TLS_MODE, |s| s.parse())?,
            tls_files: {
                let path = |k| {
                    Some(r.raw(k))
                        .filter(|p| !p.trim().is_empty())
                        .map(PathBuf::from)
                };
                match (path(TLS_CERT), path(TLS_KEY), path(TLS_ROOTS)) {
                    (Some(cert), Some(key), Some(roots)) => Some(TlsFiles { cert, key, roots }),
                    (None, None, None) => None,
                    _ => {
                        let missing = [TLS_CERT, TLS_KEY, TLS_ROOTS]
                            .into_iter()
                            .find(|k| path(k).is_none())
                            .expect("one is missing");
                        let why =
                            format!("set all of {TLS_CERT}, {TLS_KEY} and {TLS_ROOTS}, or none");
                        return Err(r
                            .parse(missing, |_| Err::<(), String>(why))
                            .expect_err("always an error"));
                    }
                }
            },
            identity: r.parse(IDENTITY, |s| {
                let s = s.trim();
                if s.is_empty() {
                    return Ok(None);
                }
                let rest = s
                    .strip_prefix("spiffe://")
                    .ok_or("expected spiffe://TRUST-DOMAIN/ns/NS/sa/SA")?;
                if rest.split('/').count() != 5 {
                    return Err("expected spiffe://TRUST-DOMAIN/ns/NS/sa/SA".to_string());
                }
                Ok(Some(s.to_string()))
            })?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(pairs: &[(&str, &str)]) -> Sources {
        Sources {
            given: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            api_server_host: Some("10.96.0.1".into()),
            ..Sources::default()
        }
    }

    #[test]
    fn defaults_follow_the_seed() {
        let s = given(&[]).init_settings().unwrap();
        assert_eq!(
            (s.proxy_uid, s.inbound_port, s.outbound_port),
            (1337, 4000, 5000)
        );
        assert_eq!(s.skip_inbound_ports, vec![4191]);
        let c: Vec<String> = s
            .skip_outbound_cidrs
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            c,
            ["169.254.169.254/32", "fd00:ec2::254/128", "10.96.0.1/32"]
        );
        let p = given(&[]).proxy_settings().unwrap();
        assert_eq!(p.admin_addr.port(), 4191);
        assert!(p.opaque_ports.contains(&3306) && p.opaque_ports.contains(&6379));
        assert_eq!(p.config, None);
        assert_eq!(p.threads, 1);
    }

    #[test]
    fn bad_values_name_knob_and_value() {
        let e = given(&[(OUTBOUND_PORT, "4000")])
            .init_settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("GW_MESH_OUTBOUND_PORT=\"4000\""), "{e}");
        let e = given(&[(SKIP_OUTBOUND_CIDRS, "10.0.0.0/8,nope")])
            .init_settings()
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"nope\" is not a CIDR"), "{e}");
        let e = given(&[(MAX_HEADER_BYTES, "100")])
            .proxy_settings()
            .unwrap_err();
        assert_eq!(e.knob, MAX_HEADER_BYTES);
        let e = given(&[(TLS_CERT, "/c.pem"), (TLS_KEY, "/k.pem")])
            .proxy_settings()
            .unwrap_err();
        assert_eq!(e.knob, TLS_ROOTS);
        let e = given(&[(TLS_MODE, "on")]).proxy_settings().unwrap_err();
        assert_eq!(e.knob, TLS_MODE);
        for threads in ["0", "65", "two"] {
            let e = given(&[(THREADS, threads)]).proxy_settings().unwrap_err();
            assert_eq!(e.knob, THREADS, "{threads}");
        }
        assert_eq!(
            given(&[(THREADS, "4")]).proxy_settings().unwrap().threads,
            4
        );
        let e = given(&[(IDENTITY, "spiffe://td/web")])
            .proxy_settings()
            .unwrap_err();
        assert_eq!(e.knob, IDENTITY);
        for pod in ["web", "shop/", "/web", "Shop/web", "a/b/c"] {
            let e = given(&[(AI_POD, pod)]).proxy_settings().unwrap_err();
            assert_eq!(e.knob, AI_POD, "{pod}");
            assert!(e.to_string().contains("NAMESPACE/NAME"), "{e}");
        }
        assert_eq!(
            given(&[(AI_POD, "shop/web-7d9c")])
                .proxy_settings()
                .unwrap()
                .ai_pod,
            Some(("shop".into(), "web-7d9c".into()))
        );
        assert_eq!(given(&[]).proxy_settings().unwrap().ai_pod, None);
        let s = given(&[(IPV6, "false")]).init_settings().unwrap();
        assert!(s.skip_outbound_cidrs.iter().all(|c| c.addr().is_ipv4()));
    }

    #[test]
    fn docs_table_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
        knobs::check_doc_table(path, "mesh", KNOBS).unwrap();
    }
}
