//! `ghostwire watcher`: follows its own Pod and keeps the single jump to the
//! DNAT chain in step with the Pod's role label.
//!
//! One task owns all state and reacts to: a watch on the Pod (field selector
//! on its name), a poll tick (the fallback read while no watch can be held, and
//! the kernel check), and, when `GW_REFRESH_INTERVAL` is set, a watch on the
//! Services plus a periodic full rebuild. Kernel changes go through the same
//! code as `ghostwire init`. A read that fails never changes the jump.

mod metrics;
mod role;

pub use metrics::Metrics;
pub use role::Role;

use crate::config::Settings;
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

/// What the probes report; shared with the admin server.
#[derive(Debug)]
struct Status {
    labels_read: bool,
    chain: Result<(), String>,
    in_step: bool,
}

#[derive(Clone)]
pub struct Health(Arc<Mutex<Status>>);

impl Default for Health {
    fn default() -> Self {
        Health(Arc::new(Mutex::new(Status {
            labels_read: false,
            chain: Err("the DNAT chain has not been checked yet".into()),
            in_step: false,
        })))
    }
}

impl Health {
    fn update(&self, f: impl FnOnce(&mut Status)) {
        // A poisoned lock only means a panic elsewhere; the data is still usable.
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s);
    }
}

impl admin::Health for Health {
    fn healthz(&self) -> Result<(), String> {
        let s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !s.labels_read {
            return Err("the Pod's labels have not been read yet".into());
        }
        s.chain.clone()
    }

    fn readyz(&self) -> Result<(), String> {
        self.healthz()?;
        let s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if s.in_step {
            Ok(())
        } else {
            Err("the jump is not yet in step with the role label".into())
        }
    }
}

pub struct Options {
    pub settings: Settings,
    pub pod_name: String,
    pub pod_namespace: String,
    pub kernel: Kernel,
}

struct Machine {
    s: Settings,
    kernel: Kernel,
    metrics: Metrics,
    health: Health,
    /// Pairing of the last Services read; `None` until they could be listed.
    plan: Option<Plan>,
    role: Option<Role>,
    /// What the kernel holds, as far as we know.
    jump: bool,
}

impl Machine {
    fn table(&self, jump: bool) -> netrules::Table {
        rules::table(
            self.plan.as_ref().unwrap_or(&Plan::default()),
            &self.s,
            jump,
        )
    }

    fn set_plan(&mut self, services: &[Service]) -> bool {
        let svcs: Vec<Svc> = services.iter().map(Svc::from_service).collect();
        let plan = crate::pairing::plan(&svcs, &self.s);
        let changed = self.plan.as_ref() != Some(&plan);
        self.plan = Some(plan);
        changed
    }

    async fn on_pod(&mut self, pod: &Pod, source: &str) {
        let started = Instant::now();
        self.health.update(|s| s.labels_read = true);
        let role = Role::of(pod.metadata.labels.as_ref(), &self.s);
        if self.role.as_ref() != Some(&role) {
            tracing::info!(
                from = %self.role.as_ref().map_or("unknown".to_string(), |r| r.to_string()),
                to = %role,
                reason = %format!("label {}={:?} seen by {source}", self.s.role_label_key,
                    pod.metadata.labels.as_ref().and_then(|l| l.get(&self.s.role_label_key))),
                "role changed"
            );
        }
        let want = role.jump();
        self.role = Some(role);
        if want != self.jump
            || !self
                .health
                .0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .in_step
        {
            self.set_jump(want, started).await;
        }
    }

    async fn set_jump(&mut self, on: bool, started: Instant) {
        let table = self.table(on);
        let base = rules::base_chain(&self.s);
        let res = self
            .kernel
            .run(move |b| b.apply_chain(&table, base).map_err(|e| e.to_string()))
            .await
            .and_then(|r| r);
        match res {
            Ok(_) => {}
            Err(e) => {
                self.metrics.error("kernel");
                tracing::warn!(error = %e, "updating the jump failed; rebuilding the chain");
                self.jump = on;
                if !self.rebuild("the jump could not be set").await {
                    self.health.update(|s| s.in_step = false);
                    return;
                }
            }
        }
        let was = self.jump;
        self.jump = on;
        self.health.update(|s| s.in_step = true);
        if was != on {
            let secs = started.elapsed().as_secs_f64();
            self.metrics.flipped(on, secs);
            tracing::info!(
                jump = if on { "on" } else { "off" },
                seconds = secs,
                "jump flipped"
            );
            if self.s.flush_conntrack {
                self.flush_conntrack().await;
            }
        } else {
            self.metrics.set_jump(on);
        }
    }

    /// Rebuilds the whole table (chain, map, jump) in one transaction, with the same code as init.
    async fn rebuild(&mut self, why: &str) -> bool {
        let Some(plan) = self.plan.clone() else {
            let msg = format!("{why}, and the Services could not be listed to rebuild it");
            tracing::warn!("{msg}");
            self.health.update(|s| s.chain = Err(msg));
            return false;
        };
        let table = self.table(self.jump);
        let s = self.s.clone();
        let p = plan.clone();
        let res = self
            .kernel
            .run(move |b| sw::apply(b, &table, &p, &s).map_err(|e| e.to_string()))
            .await
            .and_then(|r| r);
        match res {
            Ok(()) => {
                tracing::info!(
                    reason = why,
                    mappings = plan.mappings.len(),
                    "DNAT chain rebuilt"
                );
                self.metrics.rebuilt();
                self.metrics.set_plan(&plan);
                self.health.update(|s| s.chain = Ok(()));
                true
            }
            Err(e) => {
                self.metrics.error("kernel");
                tracing::error!(error = %e, reason = why, "rebuilding the DNAT chain failed");
                self.health
                    .update(|s| s.chain = Err(format!("rebuild failed: {e}")));
                false
            }
        }
    }

    /// Reads the kernel back; if the chain is gone or changed, says so and rebuilds it.
    async fn check_kernel(&mut self) {
        let table = self.table(self.jump);
        let nat_chain = self.s.nat_chain.clone();
        let known = self.plan.is_some();
        let res = self
            .kernel
            .run(move |b| -> Result<Option<String>, String> {
                if known {
                    match b.verify(&table) {
                        Ok(_) => Ok(None),
                        Err(netrules::Error::Verify { diff, .. }) => Ok(Some(diff)),
                        Err(e) => Err(e.to_string()),
                    }
                } else {
                    // Without the Services only presence can be checked.
                    let o = b.read(&table).map_err(|e| e.to_string())?;
                    Ok((!o.has_chain(&nat_chain)).then(|| format!("chain {nat_chain} is missing")))
                }
            })
            .await
            .and_then(|r| r);
        match res {
            Ok(None) => self.health.update(|s| s.chain = Ok(())),
            Ok(Some(diff)) => {
                self.metrics.error("drift");
                let msg = format!(
                    "DNAT chain {} is missing or changed: {diff}",
                    self.s.nat_chain
                );
                tracing::warn!("{msg}; rebuilding");
                self.health.update(|s| s.chain = Err(msg.clone()));
                self.rebuild(&msg).await;
            }
            Err(e) => {
                self.metrics.error("kernel");
                tracing::warn!(error = %e, "reading the rules back failed");
                self.health
                    .update(|s| s.chain = Err(format!("cannot read the rules: {e}")));
            }
        }
    }

    /// Cuts tracked connections whose original destination is a remapped active
    /// ClusterIP:port, so that long-lived clients reconnect and follow the flip.
    async fn flush_conntrack(&mut self) {
        let Some(plan) = &self.plan else { return };
        let script: String = plan
            .mappings
            .iter()
            .map(|m| {
                let fam = if m.active_addr.is_ipv6() {
                    "-f ipv6 "
                } else {
                    ""
                };
                format!(
                    "-D {fam}-d {} -p {} --dport {}\n",
                    m.active_addr.ip(),
                    m.protocol,
                    m.active_addr.port()
                )
            })
            .collect();
        if script.is_empty() {
            return;
        }
        let res = self
            .kernel
            .run(move |_| {
                use std::io::Write;
                let mut child = std::process::Command::new("conntrack")
                    .args(["-R", "-"])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("cannot run conntrack: {e}"))?;
                if let Some(mut stdin) = child.stdin.take() {
                    let _ = stdin.write_all(script.as_bytes());
                }
                let out = child.wait_with_output().map_err(|e| e.to_string())?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
                }
            })
            .await
            .and_then(|r| r);
        if let Err(e) = res {
            self.metrics.error("conntrack");
            tracing::warn!(error = %e, "flushing conntrack entries failed");
        }
    }
}

/// Runs until `shutdown` completes or the Pod is deleted. On return the rules
/// are left as they are: the jump stays as last set (documented).
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
    let mut m = Machine {
        s: s.clone(),
        kernel: opts.kernel,
        metrics,
        health,
        plan: None,
        role: None,
        jump: false,
    };

    // What does the kernel hold now? (init may or may not have run; the jump may be on.)
    let probe = m.table(true);
    let s2 = s.clone();
    m.jump = m
        .kernel
        .run(move |b| {
            let observed = b.read(&probe)?;
            rules::jump_is_on(b, &observed, &probe, &s2)
        })
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or(false);

    let lp = kube::api::ListParams::default();
    match kube_util::retry("list Services", s.api_timeout, || services.list(&lp)).await {
        Ok(list) => {
            m.set_plan(&list.items);
            if let Some(p) = &m.plan {
                m.metrics.set_plan(p);
            }
        }
        Err(e) => {
            m.metrics.error("api");
            tracing::warn!(error = %e, "cannot list Services: the chain can be checked for presence but not rebuilt until they can be read");
        }
    }
    m.check_kernel().await;

    let mut pod_events = watcher::watcher(
        pods.clone(),
        watcher::Config::default().fields(&format!("metadata.name={}", opts.pod_name)),
    )
    .default_backoff()
    .boxed();
    let (store, writer) = reflector::store();
    // The namespace's Services are always followed: a deleted or recreated preview must
    // not leave this pod DNATed to a dead ClusterIP. Every relist recomputes the plan.
    let mut svc_events = reflector::reflector(
        writer,
        watcher::watcher(services.clone(), Default::default()),
    )
    .default_backoff()
    .boxed();
    let mut poll = tokio::time::interval(s.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut refresh = tokio::time::interval(
        s.refresh_interval
            .unwrap_or(Duration::from_secs(86400 * 365)),
    );
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    refresh.tick().await; // The first tick is immediate; the initial list just happened.
    let mut watch_ok = false;
    let mut seen_in_relist = false;
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            _ = &mut shutdown => {
                tracing::info!("shutting down; rules left as they are");
                return Stopped::Shutdown;
            }
            ev = pod_events.next() => match ev {
                Some(Ok(Event::Apply(pod) | Event::InitApply(pod))) => {
                    watch_ok = true;
                    seen_in_relist = true;
                    m.on_pod(&pod, "watch").await;
                }
                Some(Ok(Event::Init)) => seen_in_relist = false,
                Some(Ok(Event::InitDone)) => {
                    watch_ok = true;
                    if !seen_in_relist {
                        tracing::info!(pod = %opts.pod_name, "the Pod no longer exists; exiting");
                        return Stopped::PodDeleted;
                    }
                }
                Some(Ok(Event::Delete(_))) => {
                    tracing::info!(pod = %opts.pod_name, "the Pod was deleted; exiting");
                    return Stopped::PodDeleted;
                }
                Some(Err(e)) => {
                    if watch_ok {
                        tracing::warn!(error = %e, "lost the watch on the Pod; keeping the last known state and retrying");
                    }
                    watch_ok = false;
                    m.metrics.error("api");
                }
                None => return Stopped::Shutdown,
            },
            _ = poll.tick() => {
                if !watch_ok {
                    match pods.get_opt(&opts.pod_name).await {
                        Ok(Some(pod)) => m.on_pod(&pod, "poll").await,
                        Ok(None) => {
                            tracing::info!(pod = %opts.pod_name, "the Pod no longer exists; exiting");
                            return Stopped::PodDeleted;
                        }
                        Err(e) => {
                            m.metrics.error("api");
                            tracing::debug!(error = %e, "polling the Pod failed; keeping the last known state");
                        }
                    }
                }
                m.check_kernel().await;
            }
            _ = refresh.tick() => {
                match services.list(&Default::default()).await {
                    Ok(list) => {
                        m.set_plan(&list.items);
                        m.rebuild("periodic refresh (GW_REFRESH_INTERVAL)").await;
                    }
                    Err(e) => {
                        m.metrics.error("api");
                        tracing::warn!(error = %e, "refresh: cannot list Services; keeping the current rules");
                    }
                }
            }
            ev = svc_events.next() => match ev {
                // Apply and Delete come only after a list is complete (InitDone), so the
                // store is never a partial list here.
                Some(Ok(Event::Apply(_) | Event::Delete(_) | Event::InitDone)) => {
                    let current: Vec<Service> = store.state().iter().map(|s| (**s).clone()).collect();
                    if m.set_plan(&current) {
                        m.rebuild("a Service changed").await;
                    }
                }
                Some(Err(e)) => {
                    m.metrics.error("api");
                    tracing::debug!(error = %e, "Service watch error; retrying");
                }
                _ => {}
            },
        }
    }
}
