//! The controller: reflectors on every remote and on the local cluster feed one level-triggered
//! reconcile loop (observe → desired → diff → act) that only the Lease holder runs. One worker,
//! so there is no shared state to race on; every pass recomputes everything from the caches.

use crate::config::Settings;
use crate::desired::{self, ClusterView, GlobalSource, Rules};
use crate::lease::{LeaseConfig, try_lead};
use crate::metrics::{
    ClusterLabel, ConflictLabels, ErrorLabels, Metrics, SourceLabels, WatchLabels, WriteLabels,
};
use crate::reconcile::{Action, plan};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How to run.
pub struct RunOptions {
    pub local: Client,
    /// One per `settings.remotes`, in order.
    pub remotes: Vec<Client>,
    /// A remote that has not answered for this long leaves the global Services.
    pub failover_grace: Duration,
    /// How often each remote's API is probed (and how long a probe may take).
    pub probe_interval: Duration,
    /// `None`: a single replica that always writes.
    pub lease: Option<LeaseConfig>,
    /// Reconcile at least this often even without events (0: only on events).
    pub resync: Duration,
}

/// What `/healthz` and `/readyz` say.
#[derive(Default)]
pub struct MirrorHealth {
    /// Cluster → why it is down (absent: up).
    down: Mutex<BTreeMap<String, String>>,
    /// Clusters whose caches have not been filled yet.
    unsynced: Mutex<BTreeSet<String>>,
}

impl admin::Health for MirrorHealth {
    fn healthz(&self) -> Result<(), String> {
        let down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        if down.is_empty() {
            Ok(())
        } else {
            Err(down
                .iter()
                .map(|(c, why)| format!("cluster {c} unreachable: {why}"))
                .collect::<Vec<_>>()
                .join("; "))
        }
    }

    fn readyz(&self) -> Result<(), String> {
        let unsynced = self.unsynced.lock().unwrap_or_else(|e| e.into_inner());
        if unsynced.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "caches not synced yet: {}",
                unsynced.iter().cloned().collect::<Vec<_>>().join(",")
            ))
        }
    }
}

struct Watched {
    name: String,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    /// Both initial lists complete.
    listed: Arc<[AtomicBool; 2]>,
    /// Since when the API has not answered (None: up).
    down_since: Arc<Mutex<Option<Instant>>>,
}

impl Watched {
    fn listed(&self) -> bool {
        self.listed.iter().all(|l| l.load(Ordering::SeqCst))
    }
    fn down_for(&self) -> Option<Duration> {
        self.down_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed())
    }
}

/// The one work queue: watch events are added (they coalesce into one pending pass) and the
/// loop takes them all at the start of a pass. Its metrics are the seed's workqueue ones:
/// depth, adds, and latency (how long the oldest event waited for the pass that took it).
pub struct Queue {
    kick: Arc<Notify>,
    oldest: Mutex<Option<Instant>>,
    metrics: Arc<Metrics>,
}

impl Queue {
    pub fn new(metrics: Arc<Metrics>) -> Queue {
        Queue {
            kick: Arc::new(Notify::new()),
            oldest: Mutex::new(None),
            metrics,
        }
    }

    pub fn add(&self) {
        self.metrics.queue_adds.inc();
        self.metrics.queue_depth.inc();
        self.oldest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(Instant::now);
        self.kick.notify_one();
    }

    /// Takes everything queued: depth back to 0, the oldest event's wait observed.
    pub fn take(&self) {
        self.metrics.queue_depth.set(0);
        if let Some(t) = self.oldest.lock().unwrap_or_else(|e| e.into_inner()).take() {
            self.metrics
                .queue_latency_seconds
                .observe(t.elapsed().as_secs_f64());
        }
    }
}

/// When to run a pass again after one whose writes failed: 2 s, doubling up to 1 min (the
/// seed's rate limiter); a clean pass resets it.
#[derive(Default)]
pub struct Backoff {
    last: Option<Duration>,
}

impl Backoff {
    pub const FIRST: Duration = Duration::from_secs(2);
    pub const MAX: Duration = Duration::from_secs(60);

    pub fn failed(&mut self) -> Duration {
        let next = self.last.map_or(Self::FIRST, |d| (d * 2).min(Self::MAX));
        self.last = Some(next);
        next
    }

    pub fn reset(&mut self) {
        self.last = None;
    }
}

fn watch<K>(
    cluster: &str,
    kind: &'static str,
    client: Client,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    (listed, slot): (Arc<[AtomicBool; 2]>, usize),
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let api: Api<K> = Api::all(client);
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    );
    let labels = WatchLabels {
        cluster: cluster.to_string(),
        kind: kind.to_string(),
    };
    let cluster = cluster.to_string();
    tasks.push(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => {
                    metrics.watch_events.get_or_create(&labels).inc();
                    if matches!(ev, watcher::Event::InitDone) {
                        listed[slot].store(true, Ordering::SeqCst);
                    }
                    queue.add();
                }
                Err(e) => {
                    metrics
                        .errors
                        .get_or_create(&ErrorLabels {
                            kind: "watch".into(),
                        })
                        .inc();
                    tracing::warn!(cluster, kind, error = %e, "watch");
                }
            }
        }
    }));
    reader
}

fn clone_all<K>(s: &Store<K>) -> Vec<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + 'static,
{
    s.state().iter().map(|o| (**o).clone()).collect()
}

fn label<'a, K: kube::Resource>(o: &'a K, key: &str) -> Option<&'a str> {
    o.meta().labels.as_ref()?.get(key).map(String::as_str)
}

/// Runs until `shutdown` completes.
pub async fn run(
    settings: Settings,
    opts: RunOptions,
    metrics: Arc<Metrics>,
    health: Arc<MirrorHealth>,
    shutdown: impl Future<Output = ()>,
) {
    let queue = Arc::new(Queue::new(metrics.clone()));
    let kick = queue.kick.clone();
    let mut clusters: Vec<Watched> = Vec::new();
    let all = std::iter::once((settings.local_name.clone(), opts.local.clone())).chain(
        settings
            .remotes
            .iter()
            .map(|r| r.name.clone())
            .zip(opts.remotes.iter().cloned()),
    );
    let mut probes = Vec::new();
    for (i, (name, client)) in all.enumerate() {
        let listed = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        health
            .unsynced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone());
        let services = watch::<Service>(
            &name,
            "Service",
            client.clone(),
            queue.clone(),
            metrics.clone(),
            (listed.clone(), 0),
            &mut probes,
        );
        let slices = watch::<EndpointSlice>(
            &name,
            "EndpointSlice",
            client.clone(),
            queue.clone(),
            metrics.clone(),
            (listed.clone(), 1),
            &mut probes,
        );
        let down_since = Arc::new(Mutex::new(None));
        if i > 0 {
            probes.push(tokio::spawn(probe(
                name.clone(),
                client,
                opts.probe_interval,
                down_since.clone(),
                kick.clone(),
                metrics.clone(),
                health.clone(),
            )));
        }
        clusters.push(Watched {
            name,
            services,
            slices,
            listed,
            down_since,
        });
    }
    let leader = Arc::new(AtomicBool::new(opts.lease.is_none()));
    metrics.leader.set(i64::from(opts.lease.is_none()));
    let elector = opts.lease.clone().map(|cfg| {
        tokio::spawn(lead(
            Api::namespaced(opts.local.clone(), &cfg.namespace),
            cfg,
            leader.clone(),
            kick.clone(),
            metrics.clone(),
        ))
    });
    let topology = local_topology(&opts.local).await;
    let mut rt = Reconciler {
        settings: &settings,
        topology,
        local: opts.local.clone(),
        metrics: metrics.clone(),
        grace: opts.failover_grace,
        seen: BTreeSet::new(),
        reported: BTreeSet::new(),
        seed_endpoints_removed: false,
    };
    tokio::pin!(shutdown);
    // The shortest of --resync and the remotes' resyncPeriod (zero: off).
    let resync = std::iter::once(opts.resync)
        .chain(settings.remotes.iter().map(|r| r.resync))
        .filter(|d| !d.is_zero())
        .min()
        .unwrap_or(Duration::from_secs(3600));
    let mut backoff = Backoff::default();
    loop {
        // Every event queued so far is taken by this pass.
        queue.take();
        let mut retry_in = None;
        {
            let mut unsynced = health.unsynced.lock().unwrap_or_else(|e| e.into_inner());
            for c in &clusters {
                if c.listed() {
                    unsynced.remove(&c.name);
                }
            }
        }
        if leader.load(Ordering::SeqCst) {
            let started = Instant::now();
            let clean = rt.pass(&clusters).await;
            metrics
                .reconcile_seconds
                .observe(started.elapsed().as_secs_f64());
            if clean {
                backoff.reset();
            } else {
                // Not left to the next event or resync: retried after a back-off.
                metrics.queue_retries.inc();
                retry_in = Some(backoff.failed());
            }
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = kick.notified() => {}
            _ = tokio::time::sleep(retry_in.unwrap_or(resync).min(resync)) => {}
        }
    }
    for p in probes {
        p.abort();
    }
    if let Some(e) = elector {
        e.abort();
    }
}

/// The local cluster's version decides how global Services ask for topology-aware routing;
/// a version that cannot be read (after a few tries) gives the oldest form, the seed's.
async fn local_topology(local: &Client) -> desired::Topology {
    for attempt in 0..5 {
        match local.apiserver_version().await {
            Ok(v) => {
                let t = desired::Topology::for_version(&v.major, &v.minor);
                tracing::info!(version = v.git_version, topology = ?t, "local cluster");
                return t;
            }
            Err(e) => {
                tracing::warn!(attempt, error = %e, "cannot read the local cluster's version");
                tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
            }
        }
    }
    desired::Topology::HintsAnnotation
}

async fn probe(
    cluster: String,
    client: Client,
    every: Duration,
    down_since: Arc<Mutex<Option<Instant>>>,
    kick: Arc<Notify>,
    metrics: Arc<Metrics>,
    health: Arc<MirrorHealth>,
) {
    let up_gauge = metrics
        .remote_up
        .get_or_create(&ClusterLabel {
            cluster: cluster.clone(),
        })
        .clone();
    loop {
        let result = match tokio::time::timeout(every, client.apiserver_version()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {every:?}")),
        };
        let changed = {
            let mut since = down_since.lock().unwrap_or_else(|e| e.into_inner());
            let mut down = health.down.lock().unwrap_or_else(|e| e.into_inner());
            match &result {
                Ok(()) => {
                    down.remove(&cluster);
                    since.take().is_some()
                }
                Err(why) => {
                    down.insert(cluster.clone(), why.clone());
                    if since.is_none() {
                        tracing::warn!(cluster, error = why, "remote cluster unreachable");
                        *since = Some(Instant::now());
                        true
                    } else {
                        false
                    }
                }
            }
        };
        up_gauge.set(i64::from(result.is_ok()));
        // Also kick while down: the failover grace runs out between events.
        if changed || result.is_err() {
            kick.notify_one();
        }
        tokio::time::sleep(every).await;
    }
}

async fn lead(
    api: Api<k8s_openapi::api::coordination::v1::Lease>,
    cfg: LeaseConfig,
    leader: Arc<AtomicBool>,
    kick: Arc<Notify>,
    metrics: Arc<Metrics>,
) {
    let every = (cfg.duration / 3).max(Duration::from_millis(200));
    let mut last_ok: Option<Instant> = None;
    loop {
        let attempt = tokio::time::timeout(every, try_lead(&api, &cfg)).await;
        let won = match attempt {
            Ok(Ok(w)) => {
                if w {
                    last_ok = Some(Instant::now());
                }
                w
            }
            // Unreachable API: keep leading only while the last renewal is still valid, as the
            // others may take over after that (a partitioned leader stops writing).
            _ => last_ok.is_some_and(|t| t.elapsed() < cfg.duration),
        };
        if !won {
            last_ok = None;
        }
        if leader.swap(won, Ordering::SeqCst) != won {
            tracing::info!(identity = cfg.identity, leading = won, "lease");
            kick.notify_one();
        }
        metrics.leader.set(i64::from(won));
        tokio::time::sleep(every).await;
    }
}

struct Reconciler<'a> {
    settings: &'a Settings,
    /// How global Services ask for topology-aware routing (the local cluster's version).
    topology: desired::Topology,
    local: Client,
    metrics: Arc<Metrics>,
    grace: Duration,
    /// Mirror Service names seen desired during this run (serviceSync off: only these may be
    /// deleted when they vanish).
    seen: BTreeSet<String>,
    /// Refusals and conflicts already reported by Event.
    reported: BTreeSet<String>,
    /// The seed's tool mirrored endpoints as core/v1 Endpoints (same name and labels as its
    /// Services); with EndpointSlice mirroring those would be duplicated into slices, so they
    /// are removed once, by the first leader pass.
    seed_endpoints_removed: bool,
}

impl Reconciler<'_> {
    async fn remove_seed_endpoints(&mut self) {
        let api: Api<k8s_openapi::api::core::v1::Endpoints> =
            Api::namespaced(self.local.clone(), &self.settings.mirror_namespace);
        let lp = kube::api::ListParams::default()
            .labels(&format!("{}=true", desired::LABEL_MIRRORED_SVC));
        let Ok(list) = api.list(&lp).await else {
            return;
        };
        for e in list.items {
            let name = e.metadata.name.unwrap_or_default();
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {
                    tracing::info!(name, "removed Endpoints left by semaphore-service-mirror");
                    self.metrics
                        .writes
                        .get_or_create(&WriteLabels {
                            verb: "delete".into(),
                            kind: "Endpoints".into(),
                        })
                        .inc();
                }
                Err(e) => {
                    tracing::warn!(name, error = %e, "cannot remove the seed's Endpoints");
                    return;
                }
            }
        }
        self.seed_endpoints_removed = true;
    }

    /// One pass; false when a write failed (the loop retries after a back-off).
    async fn pass(&mut self, clusters: &[Watched]) -> bool {
        let mut clean = true;
        if !self.seed_endpoints_removed {
            self.remove_seed_endpoints().await;
        }
        let s = self.settings;
        let rules = Rules {
            mirror_namespace: &s.mirror_namespace,
            mirror: &s.mirror_selector,
            global: &s.global_selector,
            routing: &s.routing_selector,
            topology: self.topology,
        };
        let views: Vec<(Vec<Service>, Vec<EndpointSlice>)> = clusters
            .iter()
            .map(|c| (clone_all(&c.services), clone_all(&c.slices)))
            .collect();
        for (c, (svcs, eps)) in clusters.iter().zip(&views) {
            for (kind, n) in [("Service", svcs.len()), ("EndpointSlice", eps.len())] {
                self.metrics
                    .watched_objects
                    .get_or_create(&WatchLabels {
                        cluster: c.name.clone(),
                        kind: kind.into(),
                    })
                    .set(n as i64);
            }
        }
        let ns = &s.mirror_namespace;
        let (local_svcs, local_eps) = &views[0];
        let owned_svcs: Vec<&Service> = local_svcs
            .iter()
            .filter(|o| o.metadata.namespace.as_deref() == Some(ns))
            .collect();
        let owned_eps: Vec<&EndpointSlice> = local_eps
            .iter()
            .filter(|o| {
                o.metadata.namespace.as_deref() == Some(ns)
                    && label(*o, desired::LABEL_MANAGED_BY) == Some(desired::MANAGED_BY)
            })
            .collect();

        // Mirrors, per remote.
        for (i, remote) in s.remotes.iter().enumerate() {
            let c = &clusters[i + 1];
            if !c.listed() {
                continue;
            }
            let (svcs, eps) = &views[i + 1];
            let view = ClusterView {
                name: &remote.name,
                services: svcs,
                slices: eps,
            };
            let d = desired::mirrors(&view, &remote.prefix, &rules);
            self.refusals(&d.refused).await;
            self.seen.extend(d.services.keys().cloned());
            let up = c.down_for().is_none();
            let mine_svc: Vec<Service> = owned_svcs
                .iter()
                .filter(|o| {
                    label(**o, desired::LABEL_MIRRORED_SVC) == Some("true")
                        && label(**o, desired::LABEL_PREFIX_SYNC) == Some(remote.prefix.as_str())
                })
                .map(|o| (*o).clone())
                .collect();
            let mine_eps: Vec<EndpointSlice> = owned_eps
                .iter()
                .filter(|o| {
                    label(**o, desired::LABEL_GLOBAL_SVC).is_none()
                        && label(**o, desired::LABEL_PREFIX_SYNC) == Some(remote.prefix.as_str())
                })
                .map(|o| (*o).clone())
                .collect();
            let sync = s.service_sync;
            let seen = &self.seen;
            let may_svc = |o: &Service| {
                up && (sync || seen.contains(o.metadata.name.as_deref().unwrap_or_default()))
            };
            let may_eps = |o: &EndpointSlice| {
                let svc = label(o, desired::LABEL_SERVICE_NAME).unwrap_or_default();
                up && (sync || seen.contains(svc) || d.services.contains_key(svc))
            };
            let actions = plan(&d, &mine_svc, &mine_eps, &may_svc, &may_eps);
            clean &= self.apply(actions).await;
        }

        // Global services over every cluster whose caches are filled.
        let mut sources = Vec::new();
        let mut all_listed_up = true;
        let mut deletable_slices: BTreeSet<&str> = BTreeSet::new();
        for (i, c) in clusters.iter().enumerate() {
            let down = c.down_for();
            if !c.listed() || down.is_some() {
                all_listed_up = false;
            }
            if !c.listed() {
                continue;
            }
            let failed_over = down.is_some_and(|d| d >= self.grace);
            if down.is_none() || failed_over {
                deletable_slices.insert(c.name.as_str());
            }
            sources.push(GlobalSource {
                view: ClusterView {
                    name: &c.name,
                    services: &views[i].0,
                    slices: &views[i].1,
                },
                local: i == 0,
                endpoints: !failed_over,
            });
        }
        let d = desired::globals(&sources, &s.local_zones, &rules);
        self.refusals(&d.refused).await;
        self.conflicts(&d.conflicts).await;
        let gl_svcs: Vec<Service> = owned_svcs
            .iter()
            .filter(|o| label(**o, desired::LABEL_GLOBAL_SVC) == Some("true"))
            .map(|o| (*o).clone())
            .collect();
        let gl_eps: Vec<EndpointSlice> = owned_eps
            .iter()
            .filter(|o| label(**o, desired::LABEL_GLOBAL_SVC) == Some("true"))
            .map(|o| (*o).clone())
            .collect();
        let may_svc = |_: &Service| all_listed_up;
        let may_eps = |o: &EndpointSlice| {
            label(o, desired::LABEL_SLICE_SYNC).is_some_and(|c| deletable_slices.contains(c))
        };
        let actions = plan(&d, &gl_svcs, &gl_eps, &may_svc, &may_eps);
        clean &= self.apply(actions).await;
        clean
    }

    async fn event(&self, key: &str, reason: &str, about: &str, message: String) {
        let ns = &self.settings.mirror_namespace;
        let now = k8s_openapi::jiff::Timestamp::now();
        let h = {
            let mut h: u32 = 0x811c_9dc5;
            for b in key.bytes() {
                h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
            }
            h
        };
        let ev = Event {
            metadata: ObjectMeta {
                name: Some(format!("ghostwire-mirror.{h:08x}.{}", now.as_millisecond())),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                kind: Some("Service".into()),
                namespace: Some(ns.clone()),
                name: Some(about.to_string()),
                api_version: Some("v1".into()),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some("Warning".into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            reporting_component: Some("ghostwire-mirror".into()),
            reporting_instance: Some("ghostwire-mirror".into()),
            action: Some("Mirror".into()),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some("ghostwire-mirror".into()),
                host: None,
            }),
            ..Default::default()
        };
        if let Err(e) = Api::<Event>::namespaced(self.local.clone(), ns)
            .create(&PostParams::default(), &ev)
            .await
        {
            tracing::warn!(error = %e, reason, "cannot record event");
        }
    }

    async fn refusals(&mut self, refused: &[desired::Refusal]) {
        for r in refused {
            let key = format!("long {}/{}/{}", r.cluster, r.namespace, r.service);
            if !self.reported.insert(key.clone()) {
                continue;
            }
            self.metrics
                .name_too_long
                .get_or_create(&SourceLabels {
                    cluster: r.cluster.clone(),
                    namespace: r.namespace.clone(),
                    service: r.service.clone(),
                })
                .inc();
            let msg = format!(
                "not mirrored: Service {}/{} of cluster {} would be named {:?} ({} characters, over {})",
                r.namespace,
                r.service,
                r.cluster,
                r.wanted,
                r.wanted.len(),
                desired::MAX_NAME
            );
            tracing::warn!("{msg}");
            let about: String = r.wanted.chars().take(desired::MAX_NAME).collect();
            self.event(&key, "NameTooLong", &about, msg).await;
        }
    }

    async fn conflicts(&mut self, conflicts: &[desired::Conflict]) {
        let now: BTreeSet<String> = conflicts
            .iter()
            .map(|c| format!("conflict {} {}", c.service, c.field))
            .collect();
        // Cleared conflicts go back to 0.
        let stale: Vec<String> = self
            .reported
            .iter()
            .filter(|k| k.starts_with("conflict ") && !now.contains(*k))
            .cloned()
            .collect();
        for k in stale {
            self.reported.remove(&k);
            let mut parts = k.splitn(3, ' ').skip(1);
            if let (Some(service), Some(field)) = (parts.next(), parts.next()) {
                self.metrics
                    .conflicts
                    .get_or_create(&ConflictLabels {
                        service: service.into(),
                        field: field.into(),
                    })
                    .set(0);
            }
        }
        for c in conflicts {
            self.metrics
                .conflicts
                .get_or_create(&ConflictLabels {
                    service: c.service.clone(),
                    field: c.field.into(),
                })
                .set(1);
            let key = format!("conflict {} {}", c.service, c.field);
            if self.reported.insert(key.clone()) {
                let msg = format!(
                    "sources of global Service {} disagree on {}: using {}; also {}",
                    c.service,
                    c.field,
                    c.chosen,
                    c.others.join("; ")
                );
                tracing::warn!("{msg}");
                self.event(&key, "GlobalServiceConflict", &c.service, msg)
                    .await;
            }
        }
    }

    /// Writes `actions`; false when one failed.
    async fn apply(&self, actions: Vec<Action>) -> bool {
        let mut clean = true;
        let ns = &self.settings.mirror_namespace;
        let svcs: Api<Service> = Api::namespaced(self.local.clone(), ns);
        let eps: Api<EndpointSlice> = Api::namespaced(self.local.clone(), ns);
        let pp = PostParams::default();
        let dp = DeleteParams::default();
        for a in actions {
            let (verb, kind, result) = match &a {
                Action::CreateService(s) => {
                    ("create", "Service", svcs.create(&pp, s).await.map(drop))
                }
                Action::UpdateService(s) => (
                    "update",
                    "Service",
                    svcs.replace(s.metadata.name.as_deref().unwrap_or_default(), &pp, s)
                        .await
                        .map(drop),
                ),
                // Only the delete here: the API may still hold the old object for a moment, and
                // the pass that its delete event brings creates the new one.
                Action::RecreateService(s) => {
                    let name = s.metadata.name.as_deref().unwrap_or_default();
                    (
                        "recreate",
                        "Service",
                        svcs.delete(name, &dp).await.map(drop),
                    )
                }
                Action::DeleteService(n) => {
                    ("delete", "Service", svcs.delete(n, &dp).await.map(drop))
                }
                Action::CreateSlice(s) => (
                    "create",
                    "EndpointSlice",
                    eps.create(&pp, s).await.map(drop),
                ),
                Action::UpdateSlice(s) => (
                    "update",
                    "EndpointSlice",
                    eps.replace(s.metadata.name.as_deref().unwrap_or_default(), &pp, s)
                        .await
                        .map(drop),
                ),
                Action::DeleteSlice(n) => (
                    "delete",
                    "EndpointSlice",
                    eps.delete(n, &dp).await.map(drop),
                ),
            };
            match result {
                Ok(()) => {
                    tracing::debug!(verb, kind, "mirror write");
                    self.metrics
                        .writes
                        .get_or_create(&WriteLabels {
                            verb: verb.into(),
                            kind: kind.into(),
                        })
                        .inc();
                }
                Err(e) => {
                    // A conflict means the cache is behind; the watch event that follows brings
                    // another pass, and the loop retries after a back-off anyway.
                    self.metrics
                        .errors
                        .get_or_create(&ErrorLabels {
                            kind: "write".into(),
                        })
                        .inc();
                    tracing::warn!(verb, kind, error = %e, "mirror write failed");
                    clean = false;
                }
            }
        }
        clean
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(registry: &prometheus_client::registry::Registry) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, registry).unwrap();
        s
    }

    #[test]
    fn the_queue_counts_adds_and_observes_the_oldest_events_wait() {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let q = Queue::new(metrics.clone());
        q.take(); // nothing queued: nothing observed
        q.add();
        q.add();
        assert_eq!(metrics.queue_depth.get(), 2);
        q.take();
        assert_eq!(metrics.queue_depth.get(), 0);
        let t = text(&registry);
        assert!(t.contains("ghostwire_mirror_queue_adds_total 2\n"), "{t}");
        // One pass took both events: one observation, of the first one's wait.
        assert!(
            t.contains("ghostwire_mirror_queue_latency_seconds_count 1\n"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE ghostwire_mirror_queue_latency_seconds histogram"),
            "{t}"
        );
        assert!(
            t.contains("# TYPE ghostwire_mirror_queue_retries counter"),
            "{t}"
        );
        // The seed exports its watch event count as a gauge; here it is a counter.
        metrics
            .watch_events
            .get_or_create(&WatchLabels {
                cluster: "west".into(),
                kind: "Service".into(),
            })
            .inc();
        let t = text(&registry);
        assert!(
            t.contains("# TYPE ghostwire_mirror_watch_events counter"),
            "{t}"
        );
    }

    #[test]
    fn retries_back_off_from_2s_to_a_minute_and_reset() {
        let mut b = Backoff::default();
        let got: Vec<u64> = (0..7).map(|_| b.failed().as_secs()).collect();
        assert_eq!(got, [2, 4, 8, 16, 32, 60, 60]);
        b.reset();
        assert_eq!(b.failed(), Backoff::FIRST);
    }
}
