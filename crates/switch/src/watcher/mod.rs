//! `ghostwire watcher`: follows its own Pod and keeps the single jump to the
//! DNAT chain in step with the Pod's role label.
//!
//! A level-triggered reconcile loop: each event (the watch on the Pod, the
//! watch on the namespace's Services, the poll tick that also re-reads the
//! kernel, the optional `GW_REFRESH_INTERVAL` relist) only updates what is
//! observed; then one reconcile reads the kernel, asks the pure
//! [`reconcile::decide`] what should be there, and runs at most one
//! transaction (the jump alone, or the whole table with init's own code).
//! A read that fails never changes the jump.

mod metrics;
pub mod reconcile;
pub mod role;

pub use metrics::Metrics;
pub use role::Role;

use crate::config::{Mode, OnFlip, SelfTest, Settings};
use crate::dnat_map::MeshMap;
use crate::init::{self as sw};
use crate::pairing::{Plan, Svc};
use crate::rules;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector};
use netns::Netns;
use netrules::Backend;
use reconcile::{Act, Decision, KernelView, Last, Observation};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why the watcher stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// SIGTERM/SIGINT (or the caller's shutdown future).
    Shutdown,
    /// The Pod was deleted: nothing left to watch.
    PodDeleted,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("no rule backend: {0}")]
    Backend(#[from] netrules::Error),
}

/// Where the rules are: this process's network namespace, or another one
/// (`--netns`), as a node agent managing a pod from outside would do it.
#[derive(Clone)]
pub struct Kernel {
    pub backend: Backend,
    pub netns: Option<Netns>,
}

impl Kernel {
    /// Runs a blocking rule operation off the async threads, inside the target namespace.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Backend) -> T + Send + 'static,
    ) -> Result<T, String> {
        let (backend, netns) = (self.backend, self.netns.clone());
        tokio::task::spawn_blocking(move || match netns {
            Some(ns) => ns.run(|| f(&backend)).map_err(|e| e.to_string()),
            None => Ok(f(&backend)),
        })
        .await
        .map_err(|e| format!("kernel task failed: {e}"))?
    }
}

/// What the probes report; shared with the admin server. Set from the last
/// reconcile's decision.
#[derive(Debug)]
struct Status {
    healthz: Result<(), String>,
    readyz: Result<(), String>,
    /// Whether the Pod's labels are known to be current (the watch, or a poll, heard
    /// from the API recently); see [`labels_health`].
    labels: Result<(), String>,
    /// The self-test's verdict (`GW_SELF_TEST=unready` or `fail`): an error while connections to
    /// ClusterIPs do not reach the switch's chain.
    self_test: Result<(), String>,
}

#[derive(Clone)]
pub struct Health(Arc<Mutex<Status>>);

impl Default for Health {
    fn default() -> Self {
        let not_yet = Err("the Pod's labels have not been read yet".to_string());
        Health(Arc::new(Mutex::new(Status {
            healthz: not_yet.clone(),
            readyz: not_yet,
            labels: Ok(()),
            self_test: Ok(()),
        })))
    }
}

impl Health {
    fn set(&self, d: &Decision) {
        // A poisoned lock only means a panic elsewhere; the data is still usable.
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.healthz = d.healthz.clone();
        s.readyz = d.readyz.clone();
    }

    fn set_self_test(&self, r: Result<(), String>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).self_test = r;
    }

    fn set_labels(&self, labels: Result<(), String>) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).labels = labels;
    }
}

impl admin::Health for Health {
    /// Healthy (the Pod's readiness probe): the rules in place are verified, and the
    /// self-test did not find the switch bypassed, so a Pod where the switch cannot work
    /// is taken out of its Services' endpoints.
    fn healthz(&self) -> Result<(), String> {
        let s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.healthz.clone().and(s.self_test.clone())
    }

    /// Ready (a native sidecar's startup probe): the rules match the label and the label
    /// is known to be current. The self-test's verdict is not part of it: the app still
    /// starts (only `GW_SELF_TEST=fail` stops the Pod, at init).
    fn readyz(&self) -> Result<(), String> {
        let s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.readyz.clone().and(s.labels.clone())
    }
}

pub struct Options {
    pub settings: Settings,
    pub pod_name: String,
    pub pod_namespace: String,
    pub kernel: Kernel,
}

/// The I/O around the pure [`reconcile::decide`]: observe the kernel, decide, run
/// the one transaction, read back, publish health and metrics.
struct Reconciler {
    s: Settings,
    kernel: Kernel,
    metrics: Metrics,
    health: Health,
    /// What the previous reconcile left verified (for telling flips from drift).
    last: Option<Last>,
    /// Whether the kernel can destroy sockets (probed at start with `cut`).
    sock_destroy: bool,
    /// Whether the self-test ran (once, when the Services are first known).
    self_tested: bool,
}

impl Reconciler {
    fn table(&self, plan: Option<&Plan>, jump: bool) -> netrules::Table {
        rules::table(plan.unwrap_or(&Plan::default()), &self.s, jump)
    }

    /// Mesh mode (`GW_SWITCH_MODE=mesh`): the map file for the proxy stands for the kernel;
    /// its `on` is the jump, its mappings the chain.
    fn observe_mesh_map(&self, plan: Option<&Plan>) -> KernelView {
        let have = self.s.dnat_map.as_deref().and_then(MeshMap::read);
        let Some(plan) = plan else {
            return KernelView::Unverified {
                chain_present: have.is_some(),
                jump: have.is_some_and(|m| m.on),
            };
        };
        let jump = have.as_ref().is_some_and(|m| m.on);
        let want = MeshMap::new(plan, &self.s, jump);
        KernelView::Read {
            jump,
            base_ok: have.is_some(),
            rest: match &have {
                Some(m) if *m == want => Ok(()),
                Some(_) => Err("the mesh map's mappings differ from the Services".into()),
                None => Err("the mesh map is missing".into()),
            },
            empty: have.is_none(),
        }
    }

    /// Mesh mode: writes the map file with `on`.
    fn write_mesh_map(&self, plan: Option<&Plan>, on: bool) -> Result<(), String> {
        let Some(path) = &self.s.dnat_map else {
            return Err("GW_SWITCH_MODE=mesh needs GW_IPTABLES_DNAT_MAP".into());
        };
        MeshMap::new(plan.unwrap_or(&Plan::default()), &self.s, on)
            .write(path)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    /// Reads the kernel and compares it with the tables the switch can want.
    async fn observe(&self, plan: Option<&Plan>) -> KernelView {
        if self.s.mode == Mode::Mesh {
            return self.observe_mesh_map(plan);
        }
        let on = self.table(plan, true);
        let off = self.table(plan, false);
        let s = self.s.clone();
        let known = plan.is_some();
        self.kernel
            .run(move |b| -> netrules::Result<KernelView> {
                let got = b.read(&on)?;
                if !known {
                    return Ok(KernelView::Unverified {
                        chain_present: got.has_chain(&s.nat_chain),
                        jump: rules::jump_is_on(b, &got, &on, &s)?,
                    });
                }
                let base = rules::base_chain(&s);
                let hook = s.jump_hook.iptables_chain();
                Ok(KernelView::classify(
                    &got,
                    &b.expected(&on)?,
                    &b.expected(&off)?,
                    |k| {
                        let c = k.split('@').next().unwrap_or_default();
                        c == base || c == hook
                    },
                ))
            })
            .await
            .and_then(|r| r.map_err(|e| e.to_string()))
            .unwrap_or_else(KernelView::Unreadable)
    }

    /// Runs the one transaction the decision asks for.
    async fn act(&self, act: &Act, plan: Option<&Plan>) -> Result<(), String> {
        if self.s.mode == Mode::Mesh {
            return match act {
                Act::Nothing => Ok(()),
                Act::Cannot(why) => Err(why.clone()),
                Act::SetJump(on) => self.write_mesh_map(plan, *on),
                Act::Rebuild { jump, .. } => self.write_mesh_map(plan, *jump),
            };
        }
        match act {
            Act::Nothing => Ok(()),
            Act::Cannot(why) => Err(why.clone()),
            Act::SetJump(on) => {
                let table = self.table(plan, *on);
                let base = rules::base_chain(&self.s);
                self.kernel
                    .run(move |b| b.apply_chain(&table, base).map(drop))
                    .await
                    .and_then(|r| r.map_err(|e| e.to_string()))
            }
            Act::Rebuild { jump, reason } => {
                let Some(plan) = plan.cloned() else {
                    return Err("the Services have not been listed".into());
                };
                let table = self.table(Some(&plan), *jump);
                let s = self.s.clone();
                let p = plan.clone();
                self.kernel
                    .run(move |b| sw::apply(b, &table, &p, &s).map_err(|e| e.to_string()))
                    .await
                    .and_then(|r| r)?;
                tracing::info!(reason = %reason, mappings = plan.mappings.len(), "DNAT chain rebuilt");
                self.metrics.rebuilt();
                self.metrics.set_plan(&plan);
                Ok(())
            }
        }
    }

    /// One level-triggered pass: observe → decide → act → observe again.
    /// `role_since` is when the current role was first seen (for the flip time).
    async fn reconcile(&mut self, role: Option<&Role>, plan: Option<&Plan>, role_since: Instant) {
        let kernel = self.observe(plan).await;
        // The first readable state is the baseline: what was there before we acted.
        if self.last.is_none() && !matches!(kernel, KernelView::Unreadable(_)) {
            self.last = Some(Last {
                plan: plan.cloned(),
                jump: kernel.jump(),
            });
        }
        let o = Observation {
            role: role.cloned(),
            plan: plan.cloned(),
            kernel,
        };
        let d = reconcile::decide(&o, self.last.as_ref());
        if let Some(drift) = &d.drift {
            self.metrics.error("drift");
            tracing::warn!(drift = %drift, "the switch's rules were changed outside the watcher; repairing");
        }
        let acted = d.act != Act::Nothing;
        if let Err(e) = self.act(&d.act, plan).await {
            if !matches!(d.act, Act::Cannot(_)) {
                self.metrics.error("kernel");
            }
            tracing::warn!(error = %e, "the rules could not be brought in step; retrying on the next tick");
        }
        let after = if acted {
            Observation {
                kernel: self.observe(plan).await,
                ..o
            }
        } else {
            o
        };
        let in_step = if acted {
            let want = Last {
                plan: plan.cloned(),
                jump: d.jump,
            };
            reconcile::decide(&after, Some(&want))
        } else {
            d.clone()
        };
        // The self-test's verdict goes in before the first healthy state, so a readiness
        // probe cannot pass before it is known.
        if let Some(p) = plan
            && !self.self_tested
        {
            self.self_tested = true;
            self.self_test(p).await;
        }
        self.health.set(&in_step);
        if in_step.act != Act::Nothing {
            return;
        }
        if d.flip {
            let secs = role_since.elapsed().as_secs_f64();
            self.metrics.flipped(d.jump, secs);
            tracing::info!(
                jump = if d.jump { "on" } else { "off" },
                seconds = secs,
                "jump flipped"
            );
            if self.s.on_flip == OnFlip::Cut && self.s.mode == Mode::Dnat {
                self.cut(plan).await;
            }
        } else {
            self.metrics.set_jump(d.jump);
        }
        if let Some(p) = plan {
            self.metrics.set_plan(p);
        }
        self.last = Some(Last {
            plan: plan.cloned(),
            jump: d.jump,
        });
    }

    /// The self-test (`GW_SELF_TEST`) in the Pod's namespace: its metric, and with `unready`
    /// or `fail` /healthz (the Pod's readiness) failing while connections to ClusterIPs do not reach the switch's chain.
    async fn self_test(&self, plan: &Plan) {
        if self.s.mode != Mode::Dnat || self.s.self_test == SelfTest::Off {
            return;
        }
        let (p, s) = (plan.clone(), self.s.clone());
        let outcome = match self.kernel.run(move |_| sw::self_test(&p, &s)).await {
            Ok(Some(o)) => o,
            Ok(None) => return,
            Err(e) => {
                let o = crate::selftest::Outcome::Inconclusive { reason: e };
                o.log();
                o
            }
        };
        // Health before the metric: whoever sees the metric sees the health too.
        if let crate::selftest::Outcome::Rewritten { target, seen } = &outcome
            && outcome.makes_unready(self.s.self_test)
        {
            self.health.set_self_test(Err(format!(
                "self-test failed: a connection to ClusterIP {target} reached netfilter as one to {seen}: \
                 something (eBPF socket load balancing) rewrites ClusterIPs before the switch's chain \
                 (GW_SELF_TEST=warn makes the Pod ready anyway)"
            )));
        }
        self.metrics.set_self_test(outcome.label());
    }

    /// Lists the other NAT chains on the switch's hook: logged, and counted in the metric.
    async fn report_nat_users(&self) {
        let s = self.s.clone();
        match self.kernel.run(move |_| sw::report_nat_users(&s)).await {
            Ok(users) => self.metrics.set_other_nat(&users),
            Err(e) => tracing::warn!(error = %e, "cannot list the other NAT chains"),
        }
    }

    /// Probes CONFIG_INET_DIAG_DESTROY in the Pod's namespace; says so when it is absent.
    async fn probe_sock_destroy(&self) -> bool {
        let got = self
            .kernel
            .run(|_| netrules::netlink::sock_destroy_supported())
            .await
            .and_then(|r| r.map_err(|e| e.to_string()));
        let ok = match got {
            Ok(true) => true,
            Ok(false) => {
                tracing::warn!(
                    "this kernel cannot destroy sockets (no CONFIG_INET_DIAG_DESTROY): with GW_FLUSH_CONNTRACK=cut a flip moves UDP flows but established TCP connections stay on their old target"
                );
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot probe SOCK_DESTROY; established TCP connections will not be cut");
                false
            }
        };
        self.metrics.set_sock_destroy(ok);
        ok
    }

    /// `GW_FLUSH_CONNTRACK=cut`, on a flip: deletes the conntrack entries of every remapped
    /// active ClusterIP:port (a UDP flow then takes the new path with its next packet)
    /// and destroys the Pod's TCP sockets connected to them (their clients reconnect and
    /// follow the flip), in process over netlink, in the Pod's namespace.
    async fn cut(&self, plan: Option<&Plan>) {
        let Some(plan) = plan else { return };
        let pairs: Vec<(SocketAddr, netrules::Protocol)> = plan
            .mappings
            .iter()
            .map(|m| (m.active_addr, m.protocol))
            .collect();
        if pairs.is_empty() {
            return;
        }
        let destroy = self.sock_destroy;
        let res = self
            .kernel
            .run(move |_| -> Result<(usize, usize), String> {
                let (mut entries, mut sockets) = (0, 0);
                for (dst, proto) in &pairs {
                    entries += netrules::netlink::conntrack_delete(
                        *dst,
                        netrules::netlink::ip_proto(*proto),
                    )
                    .map_err(|e| format!("deleting the conntrack entries of {dst}/{proto}: {e}"))?;
                    if destroy && *proto == netrules::Protocol::Tcp {
                        sockets += netrules::netlink::destroy_tcp_to(*dst)
                            .map_err(|e| format!("destroying the TCP sockets to {dst}: {e}"))?;
                    }
                }
                Ok((entries, sockets))
            })
            .await
            .and_then(|r| r);
        match res {
            Ok((entries, sockets)) => {
                self.metrics.cut(entries, sockets);
                tracing::info!(
                    conntrack_entries = entries,
                    tcp_sockets = sockets,
                    "cut established connections to the flipped ClusterIPs (GW_FLUSH_CONNTRACK=cut)"
                );
            }
            Err(e) => {
                self.metrics.error("conntrack");
                tracing::warn!(error = %e, "cutting established connections failed");
            }
        }
    }
}

/// Where to listen instead of `addr` after binding it failed with `err`: the IPv4
/// wildcard, when `addr` is the IPv6 wildcard and the kernel has no IPv6 (no
/// AF_INET6 sockets, or no IPv6 address to bind).
pub fn listen_fallback(
    addr: std::net::SocketAddr,
    err: &std::io::Error,
) -> Option<std::net::SocketAddr> {
    const EAFNOSUPPORT: i32 = 97;
    const EADDRNOTAVAIL: i32 = 99;
    let no_ipv6 = matches!(err.raw_os_error(), Some(EAFNOSUPPORT | EADDRNOTAVAIL));
    (no_ipv6 && addr.ip() == std::net::IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED))
        .then(|| std::net::SocketAddr::from(([0, 0, 0, 0], addr.port())))
}

/// Listens on `addr`; the IPv6 wildcard listens dual-stack (IPV6_V6ONLY off, so a
/// kubelet probing either of the Pod's IPs reaches it) and falls back to the IPv4
/// wildcard, with a log line, when the kernel has no IPv6.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let bind = |addr: std::net::SocketAddr| -> std::io::Result<std::net::TcpListener> {
        let sock = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        if addr.is_ipv6() {
            sock.set_only_v6(false)?;
        }
        sock.set_reuse_address(true)?;
        sock.bind(&addr.into())?;
        sock.listen(128)?;
        sock.set_nonblocking(true)?;
        Ok(sock.into())
    };
    match bind(addr) {
        Err(e) => match listen_fallback(addr, &e) {
            Some(v4) => {
                tracing::warn!(%addr, error = %e, fallback = %v4, "no IPv6 in this kernel; listening on IPv4 only");
                bind(v4)
            }
            None => Err(e),
        },
        ok => ok,
    }
}

/// Whether Pod version `a` is older than `b`. resourceVersions are opaque to
/// clients, but etcd-backed API servers (and the lab) give integers; when both
/// are, an older read (a watch replaying events after a poll) is ignored.
/// Anything else counts as newer, so a strange server never freezes the watcher.
fn is_older(a: Option<&str>, b: Option<&str>) -> bool {
    match (
        a.and_then(|a| a.parse::<u64>().ok()),
        b.and_then(|b| b.parse::<u64>().ok()),
    ) {
        (Some(a), Some(b)) => a < b,
        _ => false,
    }
}

/// The newest Pod seen, from the watch or a poll.
#[derive(Default)]
struct PodView {
    role: Option<Role>,
    version: Option<String>,
    since: Option<Instant>,
}

impl PodView {
    /// Takes a read of the Pod unless it is older than the one already seen.
    /// Returns whether the role changed.
    fn take(&mut self, pod: &Pod, s: &Settings, source: &str) -> bool {
        let version = pod.metadata.resource_version.clone();
        if is_older(version.as_deref(), self.version.as_deref()) {
            tracing::debug!(?version, seen = ?self.version, source, "ignoring an older read of the Pod");
            return false;
        }
        self.version = version;
        let role = Role::of(pod.metadata.labels.as_ref(), s);
        if self.role.as_ref() == Some(&role) {
            return false;
        }
        tracing::info!(
            from = %self.role.as_ref().map_or("unknown".to_string(), |r| r.to_string()),
            to = %role,
            reason = %format!("label {}={:?} seen by {source}", s.role_label_key,
                pod.metadata.labels.as_ref().and_then(|l| l.get(&s.role_label_key))),
            "role changed"
        );
        self.role = Some(role);
        self.since = Some(Instant::now());
        true
    }
}

/// How long one API call of the loop (a read of the Pod, a list of the Services) may
/// take: a half-open connection fails the call instead of holding flips and SIGTERM.
pub fn request_bound(s: &Settings) -> Duration {
    s.api_timeout.min(Duration::from_secs(10))
}

/// The server is asked to end each watch after this long, and kube-runtime gives up on
/// a watch that stays silent a few seconds longer, so a half-open watch is replaced.
fn watch_timeout_secs(s: &Settings) -> u32 {
    u32::try_from(s.api_timeout.as_secs().clamp(1, 290)).unwrap_or(290)
}

/// The bound on every read of the watcher's client (also the watches' own list and
/// watch requests): longer than a watch may legitimately stay silent.
pub fn read_timeout(s: &Settings) -> Duration {
    Duration::from_secs(u64::from(watch_timeout_secs(s)) + 10)
}

/// The wait before the next read of the Pod after `failures` failed reads in a row: the
/// poll interval, doubled per failure up to 30 s (or the interval, if longer), less up
/// to 20% jitter so that many pods that lost the API together do not poll in step.
pub fn poll_delay(interval: Duration, failures: u32) -> Duration {
    kube_util::backoff_from(interval, failures, interval.max(Duration::from_secs(30)))
}

/// Whether the Pod's labels can be trusted to be current: something was heard from the
/// API about the Pod (a watch event, a successful poll) within `limit`.
pub fn labels_health(
    heard_ago: Duration,
    watch_held: bool,
    last_error: Option<&str>,
    limit: Duration,
) -> Result<(), String> {
    if heard_ago <= limit {
        return Ok(());
    }
    let watch = if watch_held {
        "the watch on the Pod is silent"
    } else {
        "the watch on the Pod is lost"
    };
    Err(format!(
        "the Pod's labels were last confirmed {}s ago ({watch}; last API error: {}); the jump may not match the label",
        heard_ago.as_secs(),
        last_error.unwrap_or("none")
    ))
}

fn plan_of<'a>(services: impl IntoIterator<Item = &'a Service>, s: &Settings) -> Plan {
    let svcs: Vec<Svc> = services.into_iter().map(Svc::from_service).collect();
    crate::pairing::plan(&svcs, s)
}

/// Runs until `shutdown` completes or the Pod is deleted. On return the rules
/// are left as they are: the jump stays as last set (documented).
///
/// Every event (Pod, Services, tick) leads to one reconcile from what is observed
/// now; nothing is decided from the event itself.
pub async fn run(
    opts: Options,
    client: kube::Client,
    metrics: Metrics,
    health: Health,
    shutdown: impl std::future::Future<Output = ()>,
) -> Stopped {
    let s = opts.settings;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &opts.pod_namespace);
    let services: Api<Service> = Api::namespaced(client, &s.namespace);
    let mut r = Reconciler {
        s: s.clone(),
        kernel: opts.kernel,
        metrics,
        health,
        last: None,
        sock_destroy: false,
        self_tested: false,
    };
    if s.mode == Mode::Dnat {
        r.report_nat_users().await;
    }
    if s.on_flip == OnFlip::Cut && s.mode == Mode::Dnat {
        r.sock_destroy = r.probe_sock_destroy().await;
    }
    let mut pod = PodView::default();
    let mut plan: Option<Plan> = None;

    let bound = request_bound(&s);
    let watch_secs = watch_timeout_secs(&s);
    let (pod_store, pod_writer) = reflector::store();
    let mut pod_events = reflector::reflector(
        pod_writer,
        watcher::watcher(
            pods.clone(),
            watcher::Config::default()
                .fields(&format!("metadata.name={}", opts.pod_name))
                .timeout(watch_secs),
        ),
    )
    .default_backoff()
    .boxed();
    let pod_ref = reflector::ObjectRef::<Pod>::new(&opts.pod_name).within(&opts.pod_namespace);
    let (svc_store, svc_writer) = reflector::store();
    // The namespace's Services are always followed: a deleted or recreated preview must
    // not leave this pod DNATed to a dead ClusterIP. Every relist recomputes the plan.
    let mut svc_events = reflector::reflector(
        svc_writer,
        watcher::watcher(
            services.clone(),
            watcher::Config::default().timeout(watch_secs),
        ),
    )
    .default_backoff()
    .boxed();
    let mut refresh = tokio::time::interval(
        s.refresh_interval
            .unwrap_or(Duration::from_secs(86400 * 365)),
    );
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    refresh.tick().await; // The first tick is immediate; the watch lists anyway.
    // The watch on the Pod is held (its last event was not an error), or is relisting.
    let mut pod_watch_ok = false;
    let mut relisting = false;
    // When something was last heard from the API about the Pod, and the last API error.
    let mut heard = Instant::now();
    let mut api_error: Option<String> = None;
    // The Pod is read (polled) while the watch is lost, and once whenever the watch has
    // been silent for GW_API_TIMEOUT (a half-open watch looks just like a quiet one).
    let mut poll_failures = 0u32;
    let mut next_poll = tokio::time::Instant::now() + s.poll_interval;
    tokio::pin!(shutdown);
    let stop = || {
        tracing::info!("shutting down; rules left as they are");
        Stopped::Shutdown
    };

    loop {
        tokio::select! {
            _ = &mut shutdown => return stop(),
            ev = pod_events.next() => match ev {
                Some(Ok(Event::Init)) => {
                    relisting = true;
                    continue;
                }
                Some(Ok(Event::InitApply(_))) => continue,
                Some(Ok(Event::Apply(_) | Event::InitDone)) => {
                    relisting = false;
                    pod_watch_ok = true;
                    heard = Instant::now();
                    api_error = None;
                    match pod_store.get(&pod_ref) {
                        Some(p) => {
                            pod.take(&p, &s, "watch");
                        }
                        None => {
                            tracing::info!(pod = %opts.pod_name, "the Pod no longer exists; exiting");
                            return Stopped::PodDeleted;
                        }
                    }
                }
                Some(Ok(Event::Delete(_))) => {
                    tracing::info!(pod = %opts.pod_name, "the Pod was deleted; exiting");
                    return Stopped::PodDeleted;
                }
                Some(Err(e)) => {
                    if pod_watch_ok {
                        tracing::warn!(error = %e, "lost the watch on the Pod; keeping the last known state and retrying");
                    }
                    pod_watch_ok = false;
                    api_error = Some(e.to_string());
                    r.metrics.error("api");
                    continue;
                }
                None => return Stopped::Shutdown,
            },
            _ = tokio::time::sleep_until(next_poll) => {
                let due = (!pod_watch_ok && !relisting) || heard.elapsed() >= s.api_timeout;
                if due {
                    let got = tokio::select! {
                        _ = &mut shutdown => return stop(),
                        got = tokio::time::timeout(bound, pods.get_opt(&opts.pod_name)) => got,
                    };
                    match got {
                        Ok(Ok(Some(p))) => {
                            pod.take(&p, &s, "poll");
                            heard = Instant::now();
                            api_error = None;
                            poll_failures = 0;
                        }
                        Ok(Ok(None)) => {
                            tracing::info!(pod = %opts.pod_name, "the Pod no longer exists; exiting");
                            return Stopped::PodDeleted;
                        }
                        Ok(Err(e)) => {
                            r.metrics.error("api");
                            poll_failures = poll_failures.saturating_add(1);
                            tracing::debug!(error = %e, "reading the Pod failed; keeping the last known state");
                            api_error = Some(e.to_string());
                        }
                        Err(_) => {
                            r.metrics.error("api");
                            poll_failures = poll_failures.saturating_add(1);
                            let e = format!("reading the Pod got no answer within {bound:?}");
                            tracing::debug!(error = %e, "keeping the last known state");
                            api_error = Some(e);
                        }
                    }
                }
                next_poll = tokio::time::Instant::now() + poll_delay(s.poll_interval, poll_failures);
            }
            _ = refresh.tick() => {
                let lp = kube::api::ListParams::default();
                let got = tokio::select! {
                    _ = &mut shutdown => return stop(),
                    got = tokio::time::timeout(bound, services.list(&lp)) => got,
                };
                match got {
                    Ok(Ok(list)) => plan = Some(plan_of(&list.items, &s)),
                    Ok(Err(e)) => {
                        r.metrics.error("api");
                        tracing::warn!(error = %e, "refresh: cannot list Services; keeping the current rules");
                        continue;
                    }
                    Err(_) => {
                        r.metrics.error("api");
                        tracing::warn!(bound = ?bound, "refresh: listing Services got no answer in time; keeping the current rules");
                        continue;
                    }
                }
            }
            ev = svc_events.next() => match ev {
                // Apply and Delete come only after a list is complete (InitDone), and the
                // store swaps in a relist whole, so it is never a partial list here.
                Some(Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone)) => {
                    let state = svc_store.state();
                    let next = plan_of(state.iter().map(|a| &**a), &s);
                    if plan.as_ref() != Some(&next) {
                        for k in &next.skipped {
                            tracing::info!(service = %k.service, reason = %k.reason, "skipped");
                        }
                    }
                    plan = Some(next);
                }
                Some(Err(e)) => {
                    r.metrics.error("api");
                    tracing::debug!(error = %e, "Service watch error; retrying");
                    continue;
                }
                _ => continue,
            },
        }
        r.health.set_labels(labels_health(
            heard.elapsed(),
            pod_watch_ok,
            api_error.as_deref(),
            s.api_timeout.saturating_mul(2),
        ));
        let since = pod.since.unwrap_or_else(Instant::now);
        r.reconcile(pod.role.as_ref(), plan.as_ref(), since).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv6_wildcard_falls_back_to_ipv4_only_without_ipv6() {
        let any6: std::net::SocketAddr = "[::]:8081".parse().unwrap();
        let no_af = std::io::Error::from_raw_os_error(97);
        assert_eq!(
            listen_fallback(any6, &no_af),
            Some("0.0.0.0:8081".parse().unwrap())
        );
        assert_eq!(
            listen_fallback(any6, &std::io::Error::from_raw_os_error(99)),
            Some("0.0.0.0:8081".parse().unwrap())
        );
        // Address in use is not a missing IPv6; a fixed address is never changed.
        assert_eq!(
            listen_fallback(any6, &std::io::Error::from_raw_os_error(98)),
            None
        );
        assert_eq!(listen_fallback("[::1]:8081".parse().unwrap(), &no_af), None);
    }

    #[test]
    fn the_wildcard_listener_answers_on_both_loopbacks() {
        let l = listen("[::]:0".parse().unwrap()).unwrap();
        let port = l.local_addr().unwrap().port();
        for ip in ["127.0.0.1", "::1"] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            std::net::TcpStream::connect((ip, port)).unwrap_or_else(|e| panic!("{ip}: {e}"));
        }
    }

    #[test]
    fn older_pod_reads_are_ignored_only_when_comparable() {
        assert!(is_older(Some("41"), Some("42")));
        assert!(!is_older(Some("42"), Some("42")));
        assert!(!is_older(Some("43"), Some("42")));
        assert!(!is_older(Some("abc"), Some("42")));
        assert!(!is_older(Some("41"), None));
        assert!(!is_older(None, Some("42")));
    }

    #[test]
    fn polls_back_off_with_jitter_and_reset() {
        let base = Duration::from_secs(2);
        let mut last = Duration::ZERO;
        for failures in 0..8 {
            let want = base
                .saturating_mul(1 << failures)
                .min(Duration::from_secs(30));
            let got = poll_delay(base, failures);
            assert!(
                got <= want && got >= want.mul_f64(0.8),
                "{failures}: {got:?}"
            );
            assert!(
                got >= last.mul_f64(0.8),
                "{failures}: {got:?} after {last:?}"
            );
            last = got;
        }
        assert!(poll_delay(base, 20) <= Duration::from_secs(30));
        // A success resets the count: back to the interval.
        assert!(poll_delay(base, 0) <= base);
        // Jitter: many pods do not all pick the same delay.
        let picks: std::collections::BTreeSet<_> = (0..50).map(|_| poll_delay(base, 3)).collect();
        assert!(picks.len() > 1);
        // An interval above the cap is kept.
        assert!(poll_delay(Duration::from_secs(60), 5) >= Duration::from_secs(48));
    }

    #[test]
    fn labels_are_unhealthy_only_after_the_limit() {
        let limit = Duration::from_secs(60);
        assert!(labels_health(Duration::from_secs(59), false, Some("x"), limit).is_ok());
        let e =
            labels_health(Duration::from_secs(61), false, Some("timed out"), limit).unwrap_err();
        assert!(
            e.contains("lost") && e.contains("timed out") && e.contains("61s"),
            "{e}"
        );
        let e = labels_health(Duration::from_secs(90), true, None, limit).unwrap_err();
        assert!(e.contains("silent"), "{e}");
    }

    #[test]
    fn every_call_is_bounded_below_the_read_timeout() {
        let mut s = Settings::resolve(&Default::default()).unwrap();
        for secs in [1, 30, 600] {
            s.api_timeout = Duration::from_secs(secs);
            assert!(request_bound(&s) <= s.api_timeout);
            assert!(request_bound(&s) <= Duration::from_secs(10));
            // A watch the server ends normally never trips the client's read bound.
            assert!(Duration::from_secs(u64::from(watch_timeout_secs(&s)) + 5) < read_timeout(&s));
        }
    }
}
