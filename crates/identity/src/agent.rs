//! What `ghostwire attach` starts in a running Pod (an ephemeral container, in the Pod's
//! network namespace): `ghostwire identity-agent`, a supervisor, and its child, the proxy
//! ([`crate::proxy`]).
//!
//! Ephemeral containers have no probes, are never restarted, cannot be removed and cannot add
//! volumes. So: the supervisor is the restart policy (it restarts a dead proxy up to
//! `GW_IDENTITY_MAX_RESTARTS` times); the redirection exists only while a proxy listens (the
//! supervisor applies it once the proxy accepts on its port and removes it the moment the proxy
//! dies, before restarting it, so the Pod's traffic never goes to a dead port); when it gives
//! up, or is told to stop, it removes the redirection and exits, and the Pod goes on as if it
//! had never been attached. The certificate comes through the API ([`crate::proxy`]), not a
//! volume. What it cannot survive: a SIGKILL of the supervisor itself leaves the redirection
//! and the proxy as they are (the proxy then has no one to restart it).

use crate::settings::{
    AGENT_ADMIN_ADDR, INBOUND_PORT, KNOBS, KTLS, LOCAL_PORT, MAX_RESTARTS, MESH_ADMIN_ADDR,
    MESH_TLS, PROXY_UID, REDIRECT_CIDRS, RELOAD, TLS_PORT, TRUST_DOMAIN,
};
use ipnet::{IpNet, Ipv4Net};
use knobs::{ConfigError, Resolver, parse_duration};
use mesh_config::TlsMode;
use netrules::{Action, AddrSet, Backend, Chain, Family, Hook, Match, Protocol, Rule, Table};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The agent's nftables table (iptables comment tag).
pub const TABLE: &str = "ghostwire_identity";
const CHAIN: &str = "IDENTITY_OUTBOUND";
const INBOUND_CHAIN: &str = "IDENTITY_INBOUND";
const SET: &str = "redirect4";
/// How long a new proxy may take to listen before it counts as dead.
const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0} is not set (attach sets it from the Pod)")]
    MissingEnv(&'static str),
    #[error("the redirection: {0}")]
    Rules(#[from] netrules::Error),
    #[error("cannot start the proxy {exe}: {source}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the proxy died {0} times; the redirection is removed, the Pod's traffic flows directly"
    )]
    GaveUp(u32),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The agent's settings: the table's agent knobs and the Pod it runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSettings {
    pub pod: String,
    pub namespace: String,
    pub local_port: u16,
    pub tls_port: u16,
    pub inbound_port: u16,
    pub admin_addr: SocketAddr,
    pub mesh_admin_addr: SocketAddr,
    pub tls_mode: TlsMode,
    pub trust_domain: String,
    pub cidrs: Vec<Ipv4Net>,
    pub proxy_uid: u32,
    pub max_restarts: u32,
    pub reload: Duration,
    /// Mesh TLS sessions to the kernel where it can take them.
    pub ktls: bool,
}

/// Comma-separated IPv4 CIDRs, at least one.
pub fn parse_cidrs(s: &str) -> Result<Vec<Ipv4Net>, String> {
    let cidrs = s
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<Ipv4Net>()
                .map(|n| n.trunc())
                .map_err(|_| format!("{c:?} is not an IPv4 CIDR (e.g. 10.244.0.0/16)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if cidrs.is_empty() {
        return Err("at least one CIDR is needed".into());
    }
    Ok(cidrs)
}

fn port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err("expected a port from 1 to 65535".into()),
    }
}

/// Resolves the agent's knobs from `given` (flags or env) for the Pod `namespace/pod`.
pub fn settings(
    given: &BTreeMap<String, String>,
    pod: Option<String>,
    namespace: Option<String>,
) -> Result<AgentSettings, AgentError> {
    let file = BTreeMap::new();
    let r = Resolver {
        table: KNOBS,
        given,
        file: &file,
    };
    let s = AgentSettings {
        pod: pod
            .filter(|p| !p.is_empty())
            .ok_or(AgentError::MissingEnv("POD_NAME"))?,
        namespace: namespace
            .filter(|p| !p.is_empty())
            .ok_or(AgentError::MissingEnv("POD_NAMESPACE"))?,
        local_port: r.parse(LOCAL_PORT, port)?,
        tls_port: r.parse(TLS_PORT, port)?,
        inbound_port: r.parse(INBOUND_PORT, port)?,
        admin_addr: r.parse(AGENT_ADMIN_ADDR, |s| {
            s.parse()
                .map_err(|_| "expected ADDRESS:PORT, e.g. 0.0.0.0:18090".to_string())
        })?,
        mesh_admin_addr: r.parse(MESH_ADMIN_ADDR, |s| {
            s.parse()
                .map_err(|_| "expected ADDRESS:PORT, e.g. 0.0.0.0:18091".to_string())
        })?,
        tls_mode: r.parse(MESH_TLS, |s| s.parse())?,
        trust_domain: r.parse(TRUST_DOMAIN, |s| {
            let s = s.trim();
            if s.is_empty() || s.contains('/') {
                Err("expected a trust domain, e.g. cluster.local".to_string())
            } else {
                Ok(s.to_string())
            }
        })?,
        cidrs: r.parse(REDIRECT_CIDRS, parse_cidrs)?,
        proxy_uid: r.parse(PROXY_UID, |s| match s.trim().parse::<u32>() {
            Ok(0) => Err("must not be 0: root's own traffic would escape the redirection".into()),
            Ok(u) => Ok(u),
            Err(_) => Err("expected a uid".into()),
        })?,
        max_restarts: r.parse(MAX_RESTARTS, |s| {
            s.trim()
                .parse::<u32>()
                .map_err(|_| "expected a count".to_string())
        })?,
        reload: r.parse(RELOAD, |s| match parse_duration(s)? {
            d if d.is_zero() => Err("must be more than 0s".into()),
            d => Ok(d),
        })?,
        ktls: r.parse(KTLS, knobs::parse_bool)?,
    };
    let ports = [
        (LOCAL_PORT, s.local_port),
        (TLS_PORT, s.tls_port),
        (INBOUND_PORT, s.inbound_port),
        (AGENT_ADMIN_ADDR, s.admin_addr.port()),
        (MESH_ADMIN_ADDR, s.mesh_admin_addr.port()),
    ];
    for (i, (k, p)) in ports.iter().enumerate() {
        if let Some((other, _)) = ports[..i].iter().find(|(_, q)| q == p) {
            r.parse(k, |_| Err::<(), _>(format!("the same port as {other}")))?;
        }
    }
    Ok(s)
}

fn rule(matches: Vec<Match>, action: Action, comment: &str) -> Rule {
    Rule {
        matches,
        action,
        comment: format!("ghostwire identity: {comment}"),
    }
}

/// The redirection (pure): the Pod's outbound IPv4 TCP to the CIDRs goes to the local port,
/// except the proxy's own connections and loopback; its inbound IPv4 TCP goes to the mesh
/// proxy's inbound port, except the agent's own ports.
pub fn table(s: &AgentSettings) -> Table {
    let mut inbound: Vec<Rule> = [
        s.local_port,
        s.tls_port,
        s.inbound_port,
        s.admin_addr.port(),
        s.mesh_admin_addr.port(),
    ]
    .into_iter()
    .map(|p| {
        rule(
            vec![Match::DstPort(Protocol::Tcp, p)],
            Action::Return,
            "the agent ports",
        )
    })
    .collect();
    inbound.push(rule(
        vec![Match::L4(Protocol::Tcp)],
        Action::Redirect(s.inbound_port),
        "inbound TCP to the mesh proxy",
    ));
    Table {
        name: TABLE.into(),
        sets: vec![AddrSet {
            name: SET.into(),
            family: Family::Ipv4,
            elements: s.cidrs.iter().map(|c| IpNet::V4(*c)).collect(),
        }],
        maps: vec![],
        chains: vec![
            Chain {
                name: CHAIN.into(),
                hook: None,
                rules: vec![
                    rule(
                        vec![Match::SkUid(s.proxy_uid)],
                        Action::Return,
                        "the proxy uid",
                    ),
                    rule(
                        vec![Match::OutIface("lo".into())],
                        Action::Return,
                        "pod-local traffic",
                    ),
                    rule(
                        vec![Match::DstInSet(SET.into()), Match::L4(Protocol::Tcp)],
                        Action::Redirect(s.local_port),
                        "Pod and Service addresses to the proxy",
                    ),
                ],
            },
            Chain {
                name: "output".into(),
                hook: Some(Hook::Output),
                rules: vec![rule(
                    vec![Match::Nfproto(Family::Ipv4), Match::L4(Protocol::Tcp)],
                    Action::Jump(CHAIN.into()),
                    "outbound TCP",
                )],
            },
            Chain {
                name: INBOUND_CHAIN.into(),
                hook: None,
                rules: inbound,
            },
            Chain {
                name: "prerouting".into(),
                hook: Some(Hook::Prerouting),
                rules: vec![rule(
                    vec![Match::Nfproto(Family::Ipv4), Match::L4(Protocol::Tcp)],
                    Action::Jump(INBOUND_CHAIN.into()),
                    "inbound TCP",
                )],
            },
        ],
    }
}

/// Removes the redirection (idempotent); errors are logged, there is nothing else to do.
fn remove(backend: &Backend) {
    match backend.cleanup(TABLE) {
        Ok(()) => tracing::info!("redirection removed"),
        Err(e) => tracing::error!(error = %e, "cannot remove the redirection"),
    }
}

/// Whether the proxy accepts on its port before it exits or [`START_TIMEOUT`] passes.
async fn started(child: &mut tokio::process::Child, port: u16) -> bool {
    let listening = async {
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        r = tokio::time::timeout(START_TIMEOUT, listening) => r.is_ok(),
        _ = child.wait() => false,
    }
}

/// The supervisor: runs `exe proxy_args` as the proxy uid, redirects while it listens,
/// restarts it when it dies, gives up (redirection removed) after `max_restarts`. Returns on
/// SIGTERM/SIGINT (redirection removed, proxy stopped) or when it gives up.
pub async fn supervise(
    s: &AgentSettings,
    exe: PathBuf,
    proxy_args: Vec<String>,
) -> Result<(), AgentError> {
    let backend = Backend::detect()?;
    let rules = table(s);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut deaths = 0u32;
    loop {
        let mut child = tokio::process::Command::new(&exe)
            .args(&proxy_args)
            .uid(s.proxy_uid)
            .gid(s.proxy_uid)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| AgentError::Spawn {
                exe: exe.clone(),
                source,
            })?;
        let pid = child.id().unwrap_or_default();
        if started(&mut child, s.local_port).await {
            let b = backend;
            let t = rules.clone();
            match tokio::task::spawn_blocking(move || b.apply(&t)).await {
                Ok(Ok(_)) => {
                    tracing::info!(pid, port = s.local_port, cidrs = ?s.cidrs, "proxy up; outbound TCP redirected to it")
                }
                Ok(Err(e)) => {
                    remove(&backend);
                    return Err(e.into());
                }
                Err(e) => {
                    remove(&backend);
                    return Err(std::io::Error::other(e).into());
                }
            }
        }
        let status = tokio::select! {
            st = child.wait() => st,
            _ = term.recv() => {
                remove(&backend);
                let _ = child.kill().await;
                tracing::info!("stopped");
                return Ok(());
            }
            _ = tokio::signal::ctrl_c() => {
                remove(&backend);
                let _ = child.kill().await;
                return Ok(());
            }
        };
        // First the Pod's traffic, then the restart.
        remove(&backend);
        deaths += 1;
        tracing::warn!(pid, status = ?status, deaths, "the proxy died");
        if deaths > s.max_restarts {
            return Err(AgentError::GaveUp(deaths));
        }
        tokio::time::sleep(kube_util::backoff_from(
            Duration::from_millis(100),
            deaths,
            Duration::from_secs(5),
        ))
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netrules::BackendKind;

    fn given(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn settings_need_the_pod_and_name_bad_knobs() {
        let s = settings(&given(&[]), Some("web".into()), Some("shop".into())).unwrap();
        assert_eq!(
            (s.local_port, s.tls_port, s.proxy_uid),
            (18000, 18443, 1337)
        );
        assert_eq!(s.cidrs.len(), 2);
        assert!(matches!(
            settings(&given(&[]), None, Some("shop".into())),
            Err(AgentError::MissingEnv("POD_NAME"))
        ));
        for (k, v) in [
            (REDIRECT_CIDRS, "10.0.0.0/8,fd00::/8"),
            (REDIRECT_CIDRS, " , "),
            (PROXY_UID, "0"),
            (LOCAL_PORT, "0"),
            (RELOAD, "0s"),
        ] {
            let e = settings(&given(&[(k, v)]), Some("p".into()), Some("n".into()))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("{k}={v:?}")), "{e}");
        }
    }

    #[test]
    fn the_redirection_spares_the_proxy_and_loopback() {
        let s = settings(
            &given(&[(REDIRECT_CIDRS, "10.244.0.0/16,10.96.0.1/12")]),
            Some("p".into()),
            Some("n".into()),
        )
        .unwrap();
        let t = table(&s);
        let text = Backend::new(BackendKind::Nftables).render(&t).unwrap();
        assert!(text.contains("10.96.0.0/12"), "{text}");
        let skuid = text.find("skuid 1337").expect(&text);
        let redirect = text.find("redirect to :18000").expect(&text);
        assert!(skuid < redirect, "{text}");
        // Inbound: the agent's own ports stay, the rest goes to the mesh proxy's inbound port.
        let own = text.find("tcp dport 18443 return").expect(&text);
        let inbound = text.find("redirect to :18006").expect(&text);
        assert!(own < inbound, "{text}");
        assert!(text.contains("tcp dport 18091 return"), "{text}");
        // The same model renders for iptables too.
        let ipt = Backend::new(BackendKind::Iptables(netrules::IptablesFlavour::Nft))
            .render(&t)
            .unwrap();
        assert!(ipt.contains("--uid-owner 1337"), "{ipt}");
    }
}
