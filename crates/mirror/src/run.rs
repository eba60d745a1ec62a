//! The controller: reflectors on every remote and on the local cluster feed one level-triggered
//! reconcile loop (observe → desired → diff → act) that only the Lease holder runs. One worker,
//! so there is no shared state to race on. A watch event queues the keys it touches
//! ([`crate::keys`]); a pass recomputes and diffs only the generated names of those keys, from
//! the caches, and writes their changes concurrently. Every name is recomputed (a full pass)
//! when a cache is (re)listed, a cluster goes up or down or fails over, the Lease is won, and
//! every resync period; names whose writes failed are retried after a back-off.

use crate::config::Settings;
use crate::desired::{self, ClusterView, GLOBAL_PREFIX, GlobalSource, Rules};
use crate::keys::{Pending, SliceIndex, Target};
use crate::lease::{LeaseConfig, try_lead};
use crate::metrics::{
    ClusterLabel, ConflictLabels, ErrorLabels, Metrics, PassLabels, SourceLabels, WatchLabels,
    WriteLabels,
};
use crate::reconcile::{Action, plan};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
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

/// Writes in flight at once (each generated name's writes stay in order).
const WRITES_IN_FLIGHT: usize = 16;

struct Watched {
    name: String,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    /// Which slices belong to which Service in `slices`.
    index: Arc<Mutex<SliceIndex>>,
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

    fn service(&self, namespace: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(name).within(namespace))
    }

    /// The slices labelled for Service `namespace/service`, from the index, checked against
    /// the cache (the index may be a moment behind it).
    fn slices_of(&self, namespace: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
        let names = self
            .index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .slices(namespace, service);
        names
            .iter()
            .filter_map(|n| self.slices.get(&ObjectRef::new(n).within(namespace)))
            .filter(|e| label(e.as_ref(), desired::LABEL_SERVICE_NAME) == Some(service))
            .collect()
    }

    /// The Services `candidates` names that this cluster has, and their slices.
    fn view_of(&self, candidates: &[(String, String)]) -> (Vec<Service>, Vec<EndpointSlice>) {
        let mut services = Vec::new();
        let mut slices = Vec::new();
        for (ns, name) in candidates {
            if let Some(s) = self.service(ns, name) {
                services.push((*s).clone());
                slices.extend(self.slices_of(ns, name).iter().map(|e| (**e).clone()));
            }
        }
        (services, slices)
    }
}

/// The one work queue: the keys of watch events are added (the same key twice is one) and the
/// loop takes them all at the start of a pass. Its metrics are the seed's workqueue ones:
/// depth (distinct keys), adds, and latency (how long the oldest key waited for the pass that
/// took it).
pub struct Queue {
    kick: Arc<Notify>,
    pending: Mutex<(Pending, Option<Instant>)>,
    metrics: Arc<Metrics>,
}

impl Queue {
    pub fn new(metrics: Arc<Metrics>) -> Queue {
        Queue {
            kick: Arc::new(Notify::new()),
            pending: Mutex::new((Pending::default(), None)),
            metrics,
        }
    }

    pub fn add(&self, keys: Pending) {
        if keys.is_empty() {
            return;
        }
        self.metrics.queue_adds.inc();
        {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.0.merge(keys);
            p.1.get_or_insert_with(Instant::now);
            self.metrics.queue_depth.set(p.0.len() as i64);
        }
        self.kick.notify_one();
    }

    /// Takes everything queued: depth back to 0, the oldest key's wait observed.
    pub fn take(&self) -> Pending {
        let (keys, oldest) =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        self.metrics.queue_depth.set(0);
        if let Some(t) = oldest {
            self.metrics
                .queue_latency_seconds
                .observe(t.elapsed().as_secs_f64());
        }
        keys
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

/// A reflector on every `K` of the cluster; each event's keys (from `keys`) are queued, and a
/// completed (re)list queues a full pass.
#[allow(clippy::too_many_arguments)]
fn watch<K>(
    cluster: &str,
    kind: &'static str,
    client: Client,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    (listed, slot): (Arc<[AtomicBool; 2]>, usize),
    mut keys: impl FnMut(&watcher::Event<K>) -> Pending + Send + 'static,
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
    // managedFields are never read here: not kept, to save memory at 10,000s of objects.
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(|o| kube::Resource::meta_mut(o).managed_fields = None),
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
                    let mut touched = keys(&ev);
                    if matches!(ev, watcher::Event::InitDone) {
                        listed[slot].store(true, Ordering::SeqCst);
                        // A relist may have missed deletes: every name is looked at again.
                        touched.full = true;
                    }
                    queue.add(touched);
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

/// The keys of a Service event in a cluster (`local`: the mirror's own).
fn service_keys(
    local: bool,
    mirror_namespace: String,
) -> impl FnMut(&watcher::Event<Service>) -> Pending + Send + 'static {
    move |ev| {
        let mut p = Pending::default();
        if let watcher::Event::Apply(o) | watcher::Event::Delete(o) = ev {
            p.touch(
                local,
                &mirror_namespace,
                o.metadata.namespace.as_deref().unwrap_or_default(),
                o.metadata.name.as_deref().unwrap_or_default(),
            );
        }
        p
    }
}

/// The keys of an EndpointSlice event (its Service's, and the one it left if relabelled),
/// keeping `index` current; a relist builds a new index, swapped in when it completes.
fn slice_keys(
    local: bool,
    mirror_namespace: String,
    index: Arc<Mutex<SliceIndex>>,
) -> impl FnMut(&watcher::Event<EndpointSlice>) -> Pending + Send + 'static {
    let mut relist: Option<SliceIndex> = None;
    move |ev| {
        let mut p = Pending::default();
        let ns_name = |o: &EndpointSlice| {
            (
                o.metadata.namespace.clone().unwrap_or_default(),
                o.metadata.name.clone().unwrap_or_default(),
            )
        };
        let mut index = index.lock().unwrap_or_else(|e| e.into_inner());
        match ev {
            watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                let (ns, name) = ns_name(o);
                let service = label(o, desired::LABEL_SERVICE_NAME);
                let before = if matches!(ev, watcher::Event::Apply(_)) {
                    index.apply(&ns, &name, service)
                } else {
                    index.delete(&ns, &name)
                };
                for s in service.into_iter().chain(before.as_deref()) {
                    p.touch(local, &mirror_namespace, &ns, s);
                }
            }
            watcher::Event::Init => relist = Some(SliceIndex::default()),
            watcher::Event::InitApply(o) => {
                let (ns, name) = ns_name(o);
                relist.get_or_insert_with(SliceIndex::default).apply(
                    &ns,
                    &name,
                    label(o, desired::LABEL_SERVICE_NAME),
                );
            }
            watcher::Event::InitDone => *index = relist.take().unwrap_or_default(),
        }
        p
    }
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
        let local = i == 0;
        let listed = Arc::new([AtomicBool::new(false), AtomicBool::new(false)]);
        health
            .unsynced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone());
        let index = Arc::new(Mutex::new(SliceIndex::default()));
        let services = watch::<Service>(
            &name,
            "Service",
            client.clone(),
            queue.clone(),
            metrics.clone(),
            (listed.clone(), 0),
            service_keys(local, settings.mirror_namespace.clone()),
            &mut probes,
        );
        let slices = watch::<EndpointSlice>(
            &name,
            "EndpointSlice",
            client.clone(),
            queue.clone(),
            metrics.clone(),
            (listed.clone(), 1),
            slice_keys(local, settings.mirror_namespace.clone(), index.clone()),
            &mut probes,
        );
        let down_since = Arc::new(Mutex::new(None));
        if !local {
            probes.push(tokio::spawn(probe(
                name.clone(),
                client,
                (opts.probe_interval, opts.failover_grace),
                down_since.clone(),
                queue.clone(),
                metrics.clone(),
                health.clone(),
            )));
        }
        clusters.push(Watched {
            name,
            services,
            slices,
            index,
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
            queue.clone(),
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
    let mut next_full = tokio::time::Instant::now() + resync;
    let mut backoff = Backoff::default();
    // Names whose writes failed, retried (with whatever else is queued) at `retry_at`.
    let mut retry: BTreeSet<Target> = BTreeSet::new();
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        // Every key queued so far is taken by this pass.
        let mut keys = queue.take();
        let now = tokio::time::Instant::now();
        if now >= next_full {
            keys.full = true;
        }
        if keys.full {
            next_full = now + resync;
        }
        {
            let mut unsynced = health.unsynced.lock().unwrap_or_else(|e| e.into_inner());
            for c in &clusters {
                if c.listed() {
                    unsynced.remove(&c.name);
                }
            }
        }
        if leader.load(Ordering::SeqCst) {
            let retrying = retry_at.is_some_and(|t| now >= t);
            if retrying {
                retry_at = None;
            }
            let again = if retrying {
                std::mem::take(&mut retry)
            } else {
                BTreeSet::new()
            };
            if !keys.is_empty() || !again.is_empty() {
                let started = Instant::now();
                let failed = rt.pass(&clusters, &keys, again).await;
                metrics
                    .reconcile_seconds
                    .observe(started.elapsed().as_secs_f64());
                if !failed.is_empty() {
                    // Not left to the next event or resync: retried after a back-off.
                    metrics.queue_retries.inc();
                    retry.extend(failed);
                    retry_at = Some(tokio::time::Instant::now() + backoff.failed());
                } else if retry.is_empty() {
                    backoff.reset();
                }
            }
        } else {
            // Winning the Lease brings a full pass.
            retry.clear();
            retry_at = None;
        }
        let wake = retry_at.map_or(next_full, |t| t.min(next_full));
        tokio::select! {
            _ = &mut shutdown => break,
            _ = kick.notified() => {}
            _ = tokio::time::sleep_until(wake) => {}
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

/// Probes a remote's API every `every`; going down or up, and staying down past `grace` (its
/// endpoints leave the global Services), each queue a full pass.
async fn probe(
    cluster: String,
    client: Client,
    (every, grace): (Duration, Duration),
    down_since: Arc<Mutex<Option<Instant>>>,
    queue: Arc<Queue>,
    metrics: Arc<Metrics>,
    health: Arc<MirrorHealth>,
) {
    let up_gauge = metrics
        .remote_up
        .get_or_create(&ClusterLabel {
            cluster: cluster.clone(),
        })
        .clone();
    let mut failed_over = false;
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
                    failed_over = false;
                    since.take().is_some()
                }
                Err(why) => {
                    down.insert(cluster.clone(), why.clone());
                    match *since {
                        None => {
                            tracing::warn!(cluster, error = why, "remote cluster unreachable");
                            *since = Some(Instant::now());
                            true
                        }
                        // The grace runs out between events.
                        Some(t) if !failed_over && t.elapsed() >= grace => {
                            failed_over = true;
                            true
                        }
                        Some(_) => false,
                    }
                }
            }
        };
        up_gauge.set(i64::from(result.is_ok()));
        if changed {
            queue.add(Pending::full());
        }
        tokio::time::sleep(every).await;
    }
}

async fn lead(
    api: Api<k8s_openapi::api::coordination::v1::Lease>,
    cfg: LeaseConfig,
    leader: Arc<AtomicBool>,
    queue: Arc<Queue>,
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
            queue.add(Pending::full());
        }
        metrics.leader.set(i64::from(won));
        tokio::time::sleep(every).await;
    }
}

/// One cluster's part in the global Services during a pass.
struct SourceState {
    /// Its caches are filled.
    listed: bool,
    /// Down past the grace period: its endpoints leave the global Services.
    failed_over: bool,
    /// Its global slices may be deleted (it is up and listed, or failed over).
    deletable: bool,
}

/// Every key the caches know: each Service of each cluster, and each name in the local mirror
/// namespace that has a Service or slices (so what is left of a vanished source is found).
fn everything(settings: &Settings, clusters: &[Watched]) -> Pending {
    let mut p = Pending::default();
    let ns = &settings.mirror_namespace;
    for (i, c) in clusters.iter().enumerate() {
        for svc in c.services.state() {
            p.touch(
                i == 0,
                ns,
                svc.metadata.namespace.as_deref().unwrap_or_default(),
                svc.metadata.name.as_deref().unwrap_or_default(),
            );
        }
    }
    if let Some(local) = clusters.first() {
        let owned = local
            .index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .services_in(ns);
        p.owned.extend(owned);
    }
    p
}

/// A slice the mirror wrote (its `endpointslice.kubernetes.io/managed-by`).
fn ours(o: &EndpointSlice) -> bool {
    label(o, desired::LABEL_MANAGED_BY) == Some(desired::MANAGED_BY)
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

    /// One pass over the names `keys` touch (every name when `keys.full`) and `again` (names
    /// whose writes failed before); returns the names whose writes failed this time.
    async fn pass(
        &mut self,
        clusters: &[Watched],
        keys: &Pending,
        again: BTreeSet<Target>,
    ) -> BTreeSet<Target> {
        if !clusters[0].listed() {
            // What the mirror owns is not known yet (creates would conflict); the local
            // listing brings a full pass.
            return BTreeSet::new();
        }
        if !self.seed_endpoints_removed {
            self.remove_seed_endpoints().await;
        }
        let s = self.settings;
        let prefixes: Vec<&str> = s.remotes.iter().map(|r| r.prefix.as_str()).collect();
        let mut targets = crate::keys::targets(keys, &prefixes);
        if keys.full {
            targets.extend(crate::keys::targets(&everything(s, clusters), &prefixes));
        }
        targets.extend(again);
        let scope = if keys.full { "full" } else { "keyed" };
        self.metrics
            .passes
            .get_or_create(&PassLabels {
                scope: scope.into(),
            })
            .inc();
        self.metrics.reconciled_names.inc_by(targets.len() as u64);
        tracing::debug!(scope, names = targets.len(), "reconcile pass");
        for c in clusters {
            let slices = c.index.lock().unwrap_or_else(|e| e.into_inner()).len();
            for (kind, n) in [("Service", c.services.len()), ("EndpointSlice", slices)] {
                self.metrics
                    .watched_objects
                    .get_or_create(&WatchLabels {
                        cluster: c.name.clone(),
                        kind: kind.into(),
                    })
                    .set(n as i64);
            }
        }
        // Which clusters' global endpoints count, and whose may be deleted.
        let mut states = Vec::new();
        let mut all_listed_up = true;
        for c in clusters {
            let down = c.down_for();
            if !c.listed() || down.is_some() {
                all_listed_up = false;
            }
            let failed_over = down.is_some_and(|d| d >= self.grace);
            states.push(SourceState {
                listed: c.listed(),
                failed_over,
                deletable: c.listed() && (down.is_none() || failed_over),
            });
        }
        let mut work: Vec<(Target, Vec<Action>)> = Vec::new();
        for t in targets {
            let actions = match &t {
                Target::Mirror { remote, name } => self.mirror(clusters, *remote, name).await,
                Target::Global { name } => {
                    self.global(clusters, name, &states, all_listed_up).await
                }
            };
            if !actions.is_empty() {
                work.push((t, actions));
            }
        }
        let this = &*self;
        futures::stream::iter(work)
            .map(|(t, actions)| async move { (t, this.apply(actions).await) })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .filter_map(|(t, clean)| async move { (!clean).then_some(t) })
            .collect()
            .await
    }

    fn rules(&self) -> Rules<'_> {
        let s = self.settings;
        Rules {
            mirror_namespace: &s.mirror_namespace,
            mirror: &s.mirror_selector,
            global: &s.global_selector,
            routing: &s.routing_selector,
            topology: self.topology,
        }
    }

    /// The writes that make `name` the mirror it should be of remote `remote`'s sources.
    async fn mirror(&mut self, clusters: &[Watched], remote: usize, name: &str) -> Vec<Action> {
        let s = self.settings;
        let r = &s.remotes[remote];
        let c = &clusters[remote + 1];
        if !c.listed() {
            // Its listing brings a full pass.
            return Vec::new();
        }
        let (svcs, eps) = c.view_of(&desired::sources_of(name, &r.prefix));
        let view = ClusterView {
            name: &r.name,
            services: &svcs,
            slices: &eps,
        };
        let d = desired::mirrors(&view, &r.prefix, &self.rules());
        self.refusals(&d.refused).await;
        self.seen.extend(d.services.keys().cloned());
        let local = &clusters[0];
        let ns = &s.mirror_namespace;
        let mine_svc: Vec<Service> = local
            .service(ns, name)
            .filter(|o| {
                label(o.as_ref(), desired::LABEL_MIRRORED_SVC) == Some("true")
                    && label(o.as_ref(), desired::LABEL_PREFIX_SYNC) == Some(r.prefix.as_str())
            })
            .map(|o| (*o).clone())
            .into_iter()
            .collect();
        let mine_eps: Vec<EndpointSlice> = local
            .slices_of(ns, name)
            .into_iter()
            .filter(|o| {
                ours(o)
                    && label(o.as_ref(), desired::LABEL_GLOBAL_SVC).is_none()
                    && label(o.as_ref(), desired::LABEL_PREFIX_SYNC) == Some(r.prefix.as_str())
            })
            .map(|o| (*o).clone())
            .collect();
        let up = c.down_for().is_none();
        let sync = s.service_sync;
        let seen = &self.seen;
        let may_svc = |o: &Service| {
            up && (sync || seen.contains(o.metadata.name.as_deref().unwrap_or_default()))
        };
        let may_eps = |o: &EndpointSlice| {
            let svc = label(o, desired::LABEL_SERVICE_NAME).unwrap_or_default();
            up && (sync || seen.contains(svc) || d.services.contains_key(svc))
        };
        plan(&d, &mine_svc, &mine_eps, &may_svc, &may_eps)
    }

    /// The writes that make `name` the global Service it should be, over every listed cluster.
    async fn global(
        &mut self,
        clusters: &[Watched],
        name: &str,
        states: &[SourceState],
        all_listed_up: bool,
    ) -> Vec<Action> {
        let s = self.settings;
        let candidates = desired::sources_of(name, GLOBAL_PREFIX);
        let views: Vec<(Vec<Service>, Vec<EndpointSlice>)> = clusters
            .iter()
            .zip(states)
            .map(|(c, st)| {
                if st.listed {
                    c.view_of(&candidates)
                } else {
                    Default::default()
                }
            })
            .collect();
        let sources: Vec<GlobalSource> = clusters
            .iter()
            .zip(states)
            .zip(&views)
            .enumerate()
            .filter(|(_, ((_, st), _))| st.listed)
            .map(|(i, ((c, st), (svcs, eps)))| GlobalSource {
                view: ClusterView {
                    name: &c.name,
                    services: svcs,
                    slices: eps,
                },
                local: i == 0,
                endpoints: !st.failed_over,
            })
            .collect();
        let d = desired::globals(&sources, &s.local_zones, &self.rules());
        self.refusals(&d.refused).await;
        self.conflicts(name, &d.conflicts).await;
        let local = &clusters[0];
        let ns = &s.mirror_namespace;
        let gl_svcs: Vec<Service> = local
            .service(ns, name)
            .filter(|o| label(o.as_ref(), desired::LABEL_GLOBAL_SVC) == Some("true"))
            .map(|o| (*o).clone())
            .into_iter()
            .collect();
        let gl_eps: Vec<EndpointSlice> = local
            .slices_of(ns, name)
            .into_iter()
            .filter(|o| ours(o) && label(o.as_ref(), desired::LABEL_GLOBAL_SVC) == Some("true"))
            .map(|o| (*o).clone())
            .collect();
        let may_svc = |_: &Service| all_listed_up;
        let may_eps = |o: &EndpointSlice| {
            label(o, desired::LABEL_SLICE_SYNC).is_some_and(|c| {
                clusters
                    .iter()
                    .zip(states)
                    .any(|(cl, st)| cl.name == c && st.deletable)
            })
        };
        plan(&d, &gl_svcs, &gl_eps, &may_svc, &may_eps)
    }

    /// A Warning Event about Service `about` in the mirror namespace.
    async fn event(&self, reason: &str, about: &str, message: String) {
        let ns = &self.settings.mirror_namespace;
        kube_util::event::record(
            &self.local,
            kube_util::event::Report {
                component: "ghostwire-mirror",
                warning: true,
                reason,
                action: "Mirror",
                message,
                about: ObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Service".into()),
                    namespace: Some(ns.clone()),
                    name: Some(about.to_string()),
                    ..Default::default()
                },
            },
        )
        .await;
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
            self.event("NameTooLong", &about, msg).await;
        }
    }

    /// The conflicts of global Service `service` now (reported once each; cleared ones
    /// go back to 0).
    async fn conflicts(&mut self, service: &str, conflicts: &[desired::Conflict]) {
        let now: BTreeSet<String> = conflicts
            .iter()
            .map(|c| format!("conflict {} {}", c.service, c.field))
            .collect();
        let mine = format!("conflict {service} ");
        let stale: Vec<String> = self
            .reported
            .iter()
            .filter(|k| k.starts_with(&mine) && !now.contains(*k))
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
                self.event("GlobalServiceConflict", &c.service, msg).await;
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
        assert!(q.take().is_empty()); // nothing queued: nothing observed
        let key = |name: &str| {
            let mut p = Pending::default();
            p.touch(false, "m", "shop", name);
            p
        };
        q.add(key("a"));
        q.add(Pending::default()); // no key: not an add
        q.add(key("a"));
        q.add(key("b"));
        // The same key twice waits once.
        assert_eq!(metrics.queue_depth.get(), 2);
        let got = q.take();
        assert_eq!(got.sources.len(), 2);
        assert!(!got.full);
        assert_eq!(metrics.queue_depth.get(), 0);
        let t = text(&registry);
        assert!(t.contains("ghostwire_mirror_queue_adds_total 3\n"), "{t}");
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
