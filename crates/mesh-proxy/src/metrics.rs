//! The proxy's Prometheus metrics (names pinned by a test: dashboards depend on them).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Arc;

pub type Labels = Vec<(&'static str, String)>;

/// A request's latency labels. The names are the routing snapshot's own `Arc<str>`s, so
/// building them per request allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub direction: &'static str,
    pub service: Arc<str>,
    pub route: Arc<str>,
}

/// A response's labels: its route's, and where it came from.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    #[prometheus(flatten)]
    pub route: RouteLabels,
    pub backend: Arc<str>,
    pub status_class: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    pub requests: Family<ResponseLabels, Counter>,
    pub latency: Family<RouteLabels, Histogram>,
    pub retries: Family<Labels, Counter>,
    pub budget_exhausted: Family<Labels, Counter>,
    pub ejections: Family<Labels, Counter>,
    pub connections: Family<Labels, Counter>,
    pub open_connections: Family<Labels, Gauge>,
    pub refused: Family<Labels, Counter>,
    pub tcp_bytes: Family<Labels, Counter>,
    pub preview_switched: Family<Labels, Counter>,
    pub tls_handshakes: Family<Labels, Counter>,
    pub llm_requests: Family<Labels, Counter>,
    pub config_generation: Gauge,
    pub config_errors: Counter,
    pub tls_identity_errors: Counter,
    pub llm_policy_errors: Counter,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms … ~16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    /// Registers under `registry` (give it the `ghostwire` prefix): `ghostwire_proxy_*`.
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            ejections: Family::default(),
            connections: Family::default(),
            open_connections: Family::default(),
            refused: Family::default(),
            tcp_bytes: Family::default(),
            preview_switched: Family::default(),
            tls_handshakes: Family::default(),
            llm_requests: Family::default(),
            config_generation: Gauge::default(),
            config_errors: Counter::default(),
            tls_identity_errors: Counter::default(),
            llm_policy_errors: Counter::default(),
        };
        let r = registry.sub_registry_with_prefix("proxy");
        r.register(
            "requests",
            "HTTP responses by direction, service, route, backend and status class",
            m.requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "HTTP request latency through the proxy, all attempts included",
            m.latency.clone(),
        );
        r.register("retries", "HTTP retries sent", m.retries.clone());
        r.register(
            "retry_budget_exhausted",
            "Retries not sent because the service's retry budget was spent",
            m.budget_exhausted.clone(),
        );
        r.register(
            "endpoint_ejections",
            "Endpoints left out of balancing after consecutive failures",
            m.ejections.clone(),
        );
        r.register(
            "connections",
            "Connections accepted, by direction and detected protocol",
            m.connections.clone(),
        );
        r.register(
            "tls_handshakes",
            "Mesh TLS handshakes by direction and result (ok, failed)",
            m.tls_handshakes.clone(),
        );
        r.register(
            "open_connections",
            "Connections open now, by direction",
            m.open_connections.clone(),
        );
        r.register(
            "refused_connections",
            "Connections closed without dialling anything, by reason",
            m.refused.clone(),
        );
        r.register(
            "tcp_bytes",
            "Bytes relayed for opaque TCP, by direction and side (from_client, from_server)",
            m.tcp_bytes.clone(),
        );
        r.register(
            "preview_switched_connections",
            "Connections sent to a preview Service instead of the active one (the preview switch as a route)",
            m.preview_switched.clone(),
        );
        r.register(
            "llm_requests",
            "Model API requests on the AI rewriting path, by api and outcome (rewritten, blocked, passed)",
            m.llm_requests.clone(),
        );
        r.register(
            "config_generation",
            "Generation of the routing config in use (0: none)",
            m.config_generation.clone(),
        );
        r.register(
            "config_errors",
            "Routing configs refused",
            m.config_errors.clone(),
        );
        r.register(
            "tls_identity_errors",
            "Mesh TLS identity files refused (unreadable, inconsistent); the previous identity stays in use",
            m.tls_identity_errors.clone(),
        );
        r.register(
            "llm_policy_errors",
            "AI rewriting policies refused (a ConfigMap that does not parse); the last good one stays in force",
            m.llm_policy_errors.clone(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_pinned() {
        let mut reg = Registry::with_prefix("ghostwire");
        let m = Metrics::new(&mut reg);
        let route = RouteLabels {
            direction: "outbound",
            service: "app-b".into(),
            route: "default".into(),
        };
        m.requests
            .get_or_create(&ResponseLabels {
                route: route.clone(),
                backend: "v1".into(),
                status_class: "2xx",
            })
            .inc();
        m.latency.get_or_create(&route).observe(0.01);
        for f in [
            &m.retries,
            &m.budget_exhausted,
            &m.ejections,
            &m.connections,
            &m.refused,
            &m.tcp_bytes,
            &m.preview_switched,
            &m.tls_handshakes,
            &m.llm_requests,
        ] {
            f.get_or_create(&vec![("x", "y".into())]).inc();
        }
        m.open_connections
            .get_or_create(&vec![("x", "y".into())])
            .inc();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
        for name in [
            "ghostwire_proxy_requests_total",
            "ghostwire_proxy_request_duration_seconds_bucket",
            "ghostwire_proxy_retries_total",
            "ghostwire_proxy_retry_budget_exhausted_total",
            "ghostwire_proxy_endpoint_ejections_total",
            "ghostwire_proxy_connections_total",
            "ghostwire_proxy_open_connections",
            "ghostwire_proxy_refused_connections_total",
            "ghostwire_proxy_tcp_bytes_total",
            "ghostwire_proxy_preview_switched_connections_total",
            "ghostwire_proxy_tls_handshakes_total",
            "ghostwire_proxy_llm_requests_total",
            "ghostwire_proxy_config_generation",
            "ghostwire_proxy_config_errors_total",
            "ghostwire_proxy_tls_identity_errors_total",
            "ghostwire_proxy_llm_policy_errors_total",
        ] {
            assert!(out.contains(name), "{name} missing from:\n{out}");
        }
        // Dashboards select on these labels, in this order.
        assert!(
            out.contains(
                "ghostwire_proxy_requests_total{direction=\"outbound\",service=\"app-b\",\
                 route=\"default\",backend=\"v1\",status_class=\"2xx\"} 1"
            ),
            "{out}"
        );
    }
}
