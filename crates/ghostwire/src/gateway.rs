//! `ghostwire gateway init|sidecar` and `ghostwire client init|sidecar`: the egress gateway.

use crate::exit::{Code, Exit, WithCode};
use crate::knobs::{Gateway, KnobArgs};
use anyhow::Context;
use clap::{Args, Subcommand};
use gateway::natconf::{self, NatEntry, Plan};
use gateway::settings::{KNOBS, NAT_CONF, NAT6_CONF, Settings};
use gateway::sidecar::{ClientInputs, ClientMetrics, GatewayState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Args, Debug)]
pub struct CommonArgs {
    #[command(flatten)]
    pub knobs: KnobArgs<Gateway>,
    /// pod-gateway's settings file (read, never run). Missing at the default path: every setting
    /// takes its default; a path set otherwise must exist (exit 2).
    #[arg(long, env = "GW_SETTINGS_FILE", default_value = gateway::settings::SETTINGS_FILE)]
    pub settings: PathBuf,
    /// Work in this named network namespace (/run/netns/NAME) instead of the process's own.
    #[arg(long, env = "GW_NETNS", value_name = "NAME")]
    pub netns: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum GatewayCommand {
    /// Init container of the gateway Pod: kill switch, NAT, forwards, vxlan0.
    Init(CommonArgs),
    /// Sidecar of the gateway Pod: DHCP server and DNS forwarder on vxlan0, /healthz, /metrics.
    Sidecar(CommonArgs),
}

#[derive(Args, Debug)]
pub struct ClientArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The name nat.conf entries are matched against (default: the Pod's hostname).
    #[arg(long, env = "GW_HOSTNAME")]
    pub hostname: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Init container of a client Pod: route everything through the gateway's tunnel.
    Init(ClientArgs),
    /// Sidecar of a client Pod: probe the gateway, rebuild the tunnel and renew the lease.
    Sidecar(ClientArgs),
}

struct Loaded {
    s: Settings,
    nat4: Vec<NatEntry>,
    nat6: Vec<NatEntry>,
}

/// Only a config file at its default path may be missing, and then means none (every default
/// for settings.sh, no entries for nat.conf). A path someone named must exist: a typo must not
/// pass for "no file", which for settings.sh means every default, the kill switch included.
fn named_file_exists(path: &Path, default: &str, env: &str, flag: &str) -> Result<(), Exit> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && path != Path::new(default) => {
            Err(anyhow::anyhow!(
                "{env}={:?} is invalid: no such file; only the default, {default}, may be \
                 missing (flag --{flag})",
                path.display().to_string()
            ))
            .code(Code::Config)
        }
        _ => Ok(()),
    }
}

fn read_optional(path: &Path) -> Result<String, Exit> {
    match std::fs::read_to_string(path) {
        Ok(t) => Ok(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e)
            .with_context(|| format!("cannot read {}", path.display()))
            .code(Code::Config),
    }
}

fn load(a: &CommonArgs) -> Result<Loaded, Exit> {
    let given = a.knobs.0.clone();
    let env = move |n: &str| given.get(n).cloned().or_else(|| std::env::var(n).ok());
    named_file_exists(
        &a.settings,
        gateway::settings::SETTINGS_FILE,
        "GW_SETTINGS_FILE",
        "settings",
    )?;
    let s = Settings::load(&a.settings, &env).code(Code::Config)?;
    for (path, env) in [(&s.nat_conf, NAT_CONF), (&s.nat6_conf, NAT6_CONF)] {
        let knob = KNOBS.iter().find(|k| k.env == env).expect("a gateway knob");
        named_file_exists(path, knob.default, env, knob.flag)?;
    }
    let nat4 = natconf::parse(
        &s.nat_conf.display().to_string(),
        &read_optional(&s.nat_conf)?,
        Plan::V4(&s.tunnel4),
    )
    .code(Code::Config)?;
    let nat6 = match &s.tunnel6 {
        Some(t) => natconf::parse(
            &s.nat6_conf.display().to_string(),
            &read_optional(&s.nat6_conf)?,
            Plan::V6(t),
        )
        .code(Code::Config)?,
        None => Vec::new(),
    };
    Ok(Loaded { s, nat4, nat6 })
}

/// Runs `f` in the namespace given by `--netns`, else here.
fn in_netns<T: Send>(a: &CommonArgs, f: impl FnOnce() -> T + Send) -> Result<T, Exit> {
    match &a.netns {
        Some(name) => netns::Netns::open(name)
            .with_context(|| format!("--netns {name:?}: cannot open the network namespace"))
            .code(Code::Config)?
            .run(f)
            .context("entering the network namespace")
            .code(Code::Kernel),
        None => Ok(f()),
    }
}

fn hostname(a: &ClientArgs) -> String {
    a.hostname
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_default()
        .trim()
        .to_string()
}

async fn serve_admin(
    addr: std::net::SocketAddr,
    registry: prometheus_client::registry::Registry,
    health: Arc<dyn admin::Health>,
) -> Result<tokio::task::JoinHandle<()>, Exit> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("GATEWAY_ADMIN_ADDR={addr}: cannot listen"))
        .code(Code::Config)?;
    tracing::info!(%addr, "admin endpoints listening (/healthz, /readyz, /metrics)");
    Ok(tokio::spawn(admin::serve(
        listener,
        Arc::new(registry),
        health,
        crate::watcher::signal(),
    )))
}

struct Flag(Arc<AtomicBool>, &'static str);

impl admin::Health for Flag {
    fn healthz(&self) -> Result<(), String> {
        if self.0.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(self.1.to_string())
        }
    }
    fn readyz(&self) -> Result<(), String> {
        self.healthz()
    }
}

/// Runs a blocking loop on its own thread (in `--netns` if given) until SIGTERM/SIGINT.
async fn until_signal(
    a: &CommonArgs,
    stop: Arc<AtomicBool>,
    work: impl FnOnce() + Send + 'static,
) -> Result<(), Exit> {
    let ns = match &a.netns {
        Some(name) => Some(
            netns::Netns::open(name)
                .with_context(|| format!("--netns {name:?}: cannot open the network namespace"))
                .code(Code::Config)?,
        ),
        None => None,
    };
    let worker = std::thread::spawn(move || match ns {
        Some(ns) => {
            let _ = ns.run(work);
        }
        None => work(),
    });
    crate::watcher::signal().await;
    stop.store(true, Ordering::SeqCst);
    let _ = tokio::task::spawn_blocking(move || worker.join()).await;
    Ok(())
}

pub async fn run_gateway(cmd: GatewayCommand) -> Result<(), Exit> {
    match cmd {
        GatewayCommand::Init(a) => {
            let l = load(&a)?;
            let all: Vec<NatEntry> = l.nat4.iter().chain(&l.nat6).cloned().collect();
            let applied = in_netns(&a, || gateway::gateway::init(&l.s, &all))?.map_err(|e| {
                let code = match e {
                    gateway::gateway::InitError::Rules(_) => Code::Kernel,
                    _ => Code::Failure,
                };
                Exit {
                    code,
                    error: e.into(),
                }
            })?;
            tracing::info!(
                underlay = applied.underlay.dev,
                mtu = applied.vxlan_mtu,
                forwards = all.iter().map(|e| e.forwards.len()).sum::<usize>(),
                "gateway ready"
            );
            Ok(())
        }
        GatewayCommand::Sidecar(a) => {
            let l = load(&a)?;
            let cfg = in_netns(&a, || gateway::sidecar::dhcp_config(&l.s, &l.nat4))?
                .context("reading vxlan0 (did `ghostwire gateway init` run?)")?;
            let state = GatewayState::new(cfg);
            let mut registry = prometheus_client::registry::Registry::with_prefix("ghostwire");
            state.register(&mut registry);
            let _admin = serve_admin(
                l.s.admin_addr,
                registry,
                Arc::new(Flag(
                    state.dhcp_up.clone(),
                    "the DHCP server is not running",
                )),
            )
            .await?;
            let stop = Arc::new(AtomicBool::new(false));
            let (st, stop2, settings) = (state.clone(), stop.clone(), l.s.clone());
            until_signal(&a, stop, move || {
                std::thread::scope(|scope| {
                    scope.spawn(|| {
                        let resolv = Path::new("/etc/resolv.conf");
                        if let Err(e) = st.serve_dns(&settings, resolv, &stop2) {
                            tracing::error!(error = %e, "DNS forwarder stopped");
                        }
                    });
                    if let Err(e) = st.serve_dhcp(&stop2) {
                        tracing::error!(error = %e, "DHCP server stopped");
                    }
                });
            })
            .await
        }
    }
}

pub async fn run_client(cmd: ClientCommand) -> Result<(), Exit> {
    match cmd {
        ClientCommand::Init(a) => {
            let l = load(&a.common)?;
            let host = hostname(&a);
            let resolv = read_optional(Path::new("/etc/resolv.conf"))?;
            let t = in_netns(&a.common, || {
                gateway::client::init(&l.s, &host, &l.nat4, &l.nat6, &resolv)
            })?
            .map_err(client_exit)?;
            tracing::info!(gateway = %t.gateway_ip, addr = ?t.addr4, addr6 = ?t.addr6, mtu = t.mtu, "client ready");
            Ok(())
        }
        ClientCommand::Sidecar(a) => {
            let l = load(&a.common)?;
            let inputs = ClientInputs {
                hostname: hostname(&a),
                resolv_conf: read_optional(Path::new("/etc/resolv.conf"))?,
                settings: l.s.clone(),
                nat4: l.nat4,
                nat6: l.nat6,
            };
            let metrics = ClientMetrics::default();
            let mut registry = prometheus_client::registry::Registry::with_prefix("ghostwire");
            metrics.register(&mut registry);
            let _admin = serve_admin(
                l.s.admin_addr,
                registry,
                Arc::new(TunnelUp(metrics.tunnel_up.clone())),
            )
            .await?;
            let stop = Arc::new(AtomicBool::new(false));
            let stop2 = stop.clone();
            until_signal(&a.common, stop, move || {
                let mut tunnel = match gateway::client::current(&inputs.settings) {
                    Ok(Some(t)) => t,
                    Ok(None) | Err(_) => match gateway::client::init(
                        &inputs.settings,
                        &inputs.hostname,
                        &inputs.nat4,
                        &inputs.nat6,
                        &inputs.resolv_conf,
                    ) {
                        Ok(t) => t,
                        Err(e) => {
                            tracing::error!(error = %e, "no tunnel and cannot build one");
                            return;
                        }
                    },
                };
                // A dynamic address: learn the lease (INIT-REBOOT for the same address).
                let static_entry =
                    gateway::natconf::lookup(&inputs.nat4, &inputs.hostname).is_some();
                if !static_entry
                    && let Some(std::net::IpAddr::V4(a)) = tunnel.addr4.map(|a| a.addr())
                    && let Ok(l) = gateway::dhcp::client::obtain(&inputs.hostname, Some(a))
                {
                    tunnel.lease = Some(l);
                }
                gateway::sidecar::client_loop(&inputs, tunnel, &stop2, &metrics);
            })
            .await
        }
    }
}

fn client_exit(e: gateway::client::ClientError) -> Exit {
    let code = match e {
        gateway::client::ClientError::Ip(_) => Code::Kernel,
        _ => Code::Failure,
    };
    Exit {
        code,
        error: e.into(),
    }
}

struct TunnelUp(prometheus_client::metrics::gauge::Gauge);

impl admin::Health for TunnelUp {
    fn healthz(&self) -> Result<(), String> {
        if self.0.get() == 1 {
            Ok(())
        } else {
            Err("the gateway does not answer through the tunnel".into())
        }
    }
    fn readyz(&self) -> Result<(), String> {
        self.healthz()
    }
}
