//! The controller's Prometheus metrics (`ghostwire_controller_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub type Labels = Vec<(&'static str, String)>;

#[derive(Clone, Default)]
pub struct Metrics {
    /// Streams open now.
    pub subscribers: Gauge,
    /// Updates sent, by `kind` (snapshot, delta).
    pub updates: Family<Labels, Counter>,
    /// Encoded bytes of the updates sent.
    pub update_bytes: Counter,
    pub acks: Counter,
    /// Versions a proxy refused (it keeps its previous config).
    pub nacks: Counter,
    /// Calls refused before any config was sent, by `reason`.
    pub auth_failures: Family<Labels, Counter>,
    /// The mesh state's version.
    pub version: Gauge,
    /// Certificate requests, by `result` (signed, or why not).
    pub certificates: Family<Labels, Counter>,
    /// Edits of the CA Secret that could not be used (the last good CA stays).
    pub ca_errors: Counter,
    /// Per-proxy view updates, by `how` (incremental: only the entries a version changed;
    /// full: the proxy had skipped versions).
    pub recomputes: Family<Labels, Counter>,
    /// Route status writes, by `result` (written, failed).
    pub route_status: Family<Labels, Counter>,
}

impl Metrics {
    /// Registers under `registry` (give it the `ghostwire` prefix).
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("controller");
        r.register(
            "subscribers",
            "Proxy config streams open",
            m.subscribers.clone(),
        );
        r.register("updates", "Config updates sent, by kind", m.updates.clone());
        r.register(
            "update_bytes",
            "Encoded bytes of config updates sent",
            m.update_bytes.clone(),
        );
        r.register(
            "acks",
            "Config versions acknowledged by proxies",
            m.acks.clone(),
        );
        r.register(
            "nacks",
            "Config versions refused by proxies",
            m.nacks.clone(),
        );
        r.register(
            "auth_failures",
            "Calls refused by authentication, by reason",
            m.auth_failures.clone(),
        );
        r.register("version", "Version of the mesh state", m.version.clone());
        r.register(
            "certificates",
            "Certificate requests, by result",
            m.certificates.clone(),
        );
        r.register(
            "ca_errors",
            "Changes of the CA Secret that could not be used",
            m.ca_errors.clone(),
        );
        r.register(
            "view_recomputes",
            "Per-proxy view updates, by how (incremental, full)",
            m.recomputes.clone(),
        );
        r.register(
            "route_status_writes",
            "HTTPRoute/GRPCRoute status writes, by result",
            m.route_status.clone(),
        );
        m
    }
}
