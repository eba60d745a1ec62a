//! Prometheus metrics (`ghostwire_mirror_*`), with the seed's meaning and the right types.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabel {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchLabels {
    pub cluster: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WriteLabels {
    pub verb: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub cluster: String,
    pub namespace: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConflictLabels {
    pub service: String,
    pub field: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiLabels {
    pub cluster: String,
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ApiCodeLabels {
    pub cluster: String,
    pub verb: String,
    /// The HTTP status, or `error` when no response came.
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CaLabels {
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassLabels {
    /// `full` (every generated name) or `keyed` (only the names the queued events touch).
    pub scope: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub kind: String,
}

pub struct Metrics {
    /// 1 while the cluster's API answers, 0 while it does not.
    pub remote_up: Family<ClusterLabel, Gauge>,
    /// Objects in each watcher's cache.
    pub watched_objects: Family<WatchLabels, Gauge>,
    /// Watch events received (a counter; the seed exports it as a gauge).
    pub watch_events: Family<WatchLabels, Counter>,
    /// Writes to the local API.
    pub writes: Family<WriteLabels, Counter>,
    pub errors: Family<ErrorLabels, Counter>,
    /// Sources whose generated name is over 63 characters (refused; counted once per source).
    pub name_too_long: Family<SourceLabels, Counter>,
    /// 1 while sources of a global Service disagree on a field.
    pub conflicts: Family<ConflictLabels, Gauge>,
    /// Distinct keys (a source Service, a name of the mirror's, or "everything") not yet taken
    /// by a reconcile pass; the same key queued twice counts once, as in the seed's workqueue.
    pub queue_depth: Gauge,
    /// Watch events queued for a pass (the seed's workqueue adds).
    pub queue_adds: Counter,
    /// How long the oldest queued event waited for the pass that took it (the seed's
    /// workqueue latency: time in the queue, not the pass's own duration).
    pub queue_latency_seconds: Histogram,
    /// Passes with a failed write, retried after a back-off (the seed's workqueue retries).
    pub queue_retries: Counter,
    /// Requests to each cluster's API (the seed's kube HTTP request count).
    pub api_requests: Family<ApiCodeLabels, Counter>,
    /// Time to each API response's headers (the seed's kube HTTP request duration).
    pub api_request_seconds: Family<ApiLabels, Histogram>,
    /// CAs fetched from remoteCAURL and refused (not PEM, not in remoteCASHA256, or not the
    /// pinned one).
    pub ca_refused: Family<CaLabels, Counter>,
    /// Failed fetches of remoteCAURL.
    pub ca_fetch_errors: Family<CaLabels, Counter>,
    pub reconcile_seconds: Histogram,
    /// Reconcile passes, full or keyed.
    pub passes: Family<PassLabels, Counter>,
    /// Generated names (a mirror or global Service with its slices) looked at by the passes:
    /// a keyed pass looks at the few names its events touch, a full pass at every one.
    pub reconciled_names: Counter,
    /// 1 while this replica holds the Lease (writes), 0 otherwise.
    pub leader: Gauge,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            remote_up: Family::default(),
            watched_objects: Family::default(),
            watch_events: Family::default(),
            writes: Family::default(),
            errors: Family::default(),
            name_too_long: Family::default(),
            conflicts: Family::default(),
            queue_depth: Gauge::default(),
            queue_adds: Counter::default(),
            queue_latency_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            queue_retries: Counter::default(),
            api_requests: Family::default(),
            api_request_seconds: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 14))
            }),
            ca_refused: Family::default(),
            ca_fetch_errors: Family::default(),
            reconcile_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            passes: Family::default(),
            reconciled_names: Counter::default(),
            leader: Gauge::default(),
        };
        let r = registry.sub_registry_with_prefix("ghostwire_mirror");
        r.register(
            "remote_up",
            "1 while the cluster's API answers",
            m.remote_up.clone(),
        );
        r.register(
            "watched_objects",
            "Objects in each watcher's cache",
            m.watched_objects.clone(),
        );
        r.register(
            "watch_events",
            "Watch events received",
            m.watch_events.clone(),
        );
        r.register("writes", "Writes to the local API", m.writes.clone());
        r.register("errors", "Errors by kind", m.errors.clone());
        r.register(
            "name_too_long",
            "Sources refused: generated name over 63 characters",
            m.name_too_long.clone(),
        );
        r.register(
            "global_conflicts",
            "1 while sources of a global Service disagree",
            m.conflicts.clone(),
        );
        r.register(
            "queue_depth",
            "Distinct keys not yet taken by a reconcile pass",
            m.queue_depth.clone(),
        );
        r.register(
            "queue_adds",
            "Watch events queued for a reconcile pass",
            m.queue_adds.clone(),
        );
        r.register(
            "queue_latency_seconds",
            "How long the oldest queued event waited for the pass that took it",
            m.queue_latency_seconds.clone(),
        );
        r.register(
            "queue_retries",
            "Passes with a failed write, retried after a back-off",
            m.queue_retries.clone(),
        );
        r.register(
            "api_requests",
            "Requests to each cluster's API by verb and status code",
            m.api_requests.clone(),
        );
        r.register(
            "api_request_duration_seconds",
            "Time to each API response's headers",
            m.api_request_seconds.clone(),
        );
        r.register(
            "ca_refused",
            "CAs fetched from remoteCAURL and refused",
            m.ca_refused.clone(),
        );
        r.register(
            "ca_fetch_errors",
            "Failed fetches of remoteCAURL",
            m.ca_fetch_errors.clone(),
        );
        r.register(
            "reconcile_duration_seconds",
            "One reconcile pass",
            m.reconcile_seconds.clone(),
        );
        r.register(
            "passes",
            "Reconcile passes by scope: full (every name) or keyed (the names events touched)",
            m.passes.clone(),
        );
        r.register(
            "reconciled_names",
            "Generated names (mirror or global Service and its slices) the passes looked at",
            m.reconciled_names.clone(),
        );
        r.register(
            "leader",
            "1 while this replica holds the Lease",
            m.leader.clone(),
        );
        m
    }
}
