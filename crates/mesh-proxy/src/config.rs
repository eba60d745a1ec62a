//! The routing config: what a file (or, later, the controller) says about the services this
//! proxy's Pod calls. Parsing is serde; [`Config::validate`] checks everything before a
//! snapshot is built, and names the offending field (`services[0].routes[1].split[0].backend`).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub services: Vec<Service>,
    /// Pod IP → the SPIFFE ID of the meshed Pod that owns that address now (any port). A
    /// connection to it uses mesh TLS and accepts only that identity; in L4 mode an inbound
    /// mesh client from it must present it too. An endpoint's own entry in `services` wins.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pods: BTreeMap<std::net::IpAddr, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// e.g. `app-b.app-b` (used in metrics).
    pub name: String,
    /// The addresses clients dial for this service (ClusterIP:port, both families).
    pub addresses: Vec<SocketAddr>,
    /// Named groups of endpoints (e.g. `v1`, `v2`).
    pub backends: Vec<Backend>,
    /// Tried in order; the first whose match fits takes the request. No route fits (or none
    /// configured): the backends' own weights split the traffic.
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub retry_budget: RetryBudget,
    #[serde(default)]
    pub failure_accrual: FailureAccrual,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub name: String,
    pub endpoints: Vec<SocketAddr>,
    /// Share of the service's traffic when no route's split applies.
    #[serde(default = "one")]
    pub weight: u32,
    /// Endpoint → the SPIFFE ID of the meshed Pod behind it. Connections to a listed endpoint
    /// use mesh TLS and accept only that identity; unlisted endpoints are not meshed
    /// (plaintext).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub identities: BTreeMap<SocketAddr, String>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: String,
    #[serde(default, rename = "match")]
    pub matches: RouteMatch,
    /// Backend name → weight; empty: the backends' own weights.
    #[serde(default)]
    pub split: Vec<Split>,
    /// Whole request, all attempts included (e.g. `2s`); exceeded: 504.
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retry: Option<Retry>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default)]
    pub path_prefix: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    /// Header name → exact value; all must be present.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Split {
    pub backend: String,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// Response statuses that are retried (connect errors always are).
    #[serde(default = "gateway_errors")]
    pub statuses: Vec<u16>,
    /// First backoff; doubles per retry, with jitter.
    #[serde(default = "default_backoff")]
    pub backoff: String,
    /// Also retry non-idempotent methods (POST, PATCH).
    #[serde(default)]
    pub non_idempotent: bool,
    /// Largest request body buffered for a retry; larger bodies are sent once.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
}

fn gateway_errors() -> Vec<u16> {
    vec![502, 503, 504]
}
fn default_backoff() -> String {
    "25ms".into()
}
fn default_max_body() -> usize {
    64 * 1024
}

/// Retries may add `ratio` of the live request rate plus `min_per_second` (Linkerd's default is
/// 20 % + 10/s), over a 10 s window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            ratio: 0.2,
            min_per_second: 10,
        }
    }
}

/// An endpoint that fails `consecutive_failures` times in a row (connect errors, 5xx) is left
/// out of balancing for `eject_for`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailureAccrual {
    pub consecutive_failures: u32,
    pub eject_for: String,
}

impl Default for FailureAccrual {
    fn default() -> Self {
        FailureAccrual {
            consecutive_failures: 5,
            eject_for: "10s".into(),
        }
    }
}

/// A bad config: the field's path, its value and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}={value}: {reason}")]
    Field {
        path: String,
        value: String,
        reason: String,
    },
    #[error("cannot parse the routing config: {0}")]
    Parse(String),
}

fn field(path: String, value: impl std::fmt::Debug, reason: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        path,
        value: format!("{value:?}"),
        reason: reason.into(),
    }
}

pub fn duration(path: String, s: &str) -> Result<Duration, ConfigError> {
    knobs::parse_duration(s).map_err(|r| field(path, s, r))
}

const IDEMPOTENT: [&str; 6] = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"];

/// Whether a method may be retried without the route saying so (RFC 9110 §9.2.2).
pub fn idempotent(method: &http::Method) -> bool {
    IDEMPOTENT.contains(&method.as_str())
}

impl Config {
    /// YAML or JSON (YAML is a superset).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let c: Config =
            serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        for (ip, id) in &self.pods {
            if !id.starts_with("spiffe://") || id.len() <= "spiffe://".len() {
                return Err(field(
                    format!("pods[{ip}]"),
                    id,
                    "expected a SPIFFE ID (spiffe://...)",
                ));
            }
        }
        let mut names = BTreeSet::new();
        let mut claimed = BTreeMap::new();
        for (i, s) in self.services.iter().enumerate() {
            let p = format!("services[{i}]");
            if s.name.is_empty() || !names.insert(&s.name) {
                return Err(field(format!("{p}.name"), &s.name, "empty or not unique"));
            }
            if s.addresses.is_empty() {
                return Err(field(
                    format!("{p}.addresses"),
                    &s.addresses,
                    "a service needs at least one address",
                ));
            }
            for a in &s.addresses {
                if let Some(other) = claimed.insert(*a, &s.name) {
                    return Err(field(
                        format!("{p}.addresses"),
                        a,
                        format!("already the address of service {other:?}"),
                    ));
                }
            }
            if s.backends.is_empty() {
                return Err(field(
                    format!("{p}.backends"),
                    "[]",
                    "a service needs at least one backend",
                ));
            }
            let mut bnames = BTreeSet::new();
            for (j, b) in s.backends.iter().enumerate() {
                if b.name.is_empty() || !bnames.insert(b.name.as_str()) {
                    return Err(field(
                        format!("{p}.backends[{j}].name"),
                        &b.name,
                        "empty or not unique",
                    ));
                }
                for (a, id) in &b.identities {
                    let ip = format!("{p}.backends[{j}].identities[{a}]");
                    if !b.endpoints.contains(a) {
                        return Err(field(ip, a, "not one of this backend's endpoints"));
                    }
                    if !id.starts_with("spiffe://") || id.len() <= "spiffe://".len() {
                        return Err(field(ip, id, "expected a SPIFFE ID (spiffe://...)"));
                    }
                }
            }
            if s.backends.iter().all(|b| b.weight == 0) {
                return Err(field(
                    format!("{p}.backends"),
                    "all weights 0",
                    "at least one backend needs a weight above 0",
                ));
            }
            for (j, r) in s.routes.iter().enumerate() {
                let rp = format!("{p}.routes[{j}]");
                for (k, sp) in r.split.iter().enumerate() {
                    if !bnames.contains(sp.backend.as_str()) {
                        return Err(field(
                            format!("{rp}.split[{k}].backend"),
                            &sp.backend,
                            "no backend of this service has that name",
                        ));
                    }
                }
                if !r.split.is_empty() && r.split.iter().all(|s| s.weight == 0) {
                    return Err(field(
                        format!("{rp}.split"),
                        "all weights 0",
                        "at least one weight above 0",
                    ));
                }
                for h in r.matches.headers.keys() {
                    if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                        return Err(field(format!("{rp}.match.headers"), h, "not a header name"));
                    }
                }
                if let Some(m) = &r.matches.method
                    && http::Method::from_bytes(m.as_bytes()).is_err()
                {
                    return Err(field(format!("{rp}.match.method"), m, "not a method"));
                }
                if let Some(t) = &r.timeout {
                    duration(format!("{rp}.timeout"), t)?;
                }
                if let Some(rt) = &r.retry {
                    duration(format!("{rp}.retry.backoff"), &rt.backoff)?;
                    if rt.attempts > 10 {
                        return Err(field(
                            format!("{rp}.retry.attempts"),
                            rt.attempts,
                            "at most 10",
                        ));
                    }
                    if let Some(bad) = rt.statuses.iter().find(|s| !(100..=599).contains(*s)) {
                        return Err(field(
                            format!("{rp}.retry.statuses"),
                            bad,
                            "not an HTTP status",
                        ));
                    }
                }
            }
            let b = &s.retry_budget;
            if !(0.0..=10.0).contains(&b.ratio) {
                return Err(field(
                    format!("{p}.retry_budget.ratio"),
                    b.ratio,
                    "expected 0 to 10",
                ));
            }
            duration(
                format!("{p}.failure_accrual.eject_for"),
                &s.failure_accrual.eject_for,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const SAMPLE: &str = r#"
services:
  - name: app-b.app-b
    addresses: ["10.96.0.11:80", "[fd00:10:96::11]:80"]
    backends:
      - {name: v1, weight: 90, endpoints: ["10.244.0.5:8080"]}
      - name: v2
        weight: 10
        endpoints: ["10.244.0.6:8080"]
        identities: {"10.244.0.6:8080": "spiffe://cluster.local/ns/app-b/sa/app-b"}
    routes:
      - name: canary
        match: {headers: {x-canary: "true"}}
        split: [{backend: v2, weight: 1}]
      - name: default
        timeout: 2s
        retry: {attempts: 2}
"#;

    #[test]
    fn parses_yaml_and_json() {
        let c = Config::parse(SAMPLE).unwrap();
        assert_eq!(c.services[0].backends[0].weight, 90);
        assert_eq!(
            c.services[0].backends[1].identities[&"10.244.0.6:8080".parse().unwrap()],
            "spiffe://cluster.local/ns/app-b/sa/app-b"
        );
        assert_eq!(
            c.services[0].routes[1].retry.as_ref().unwrap().statuses,
            [502, 503, 504]
        );
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(Config::parse(&json).unwrap(), c);
    }

    #[test]
    fn errors_name_the_field() {
        let bad = SAMPLE.replace("{backend: v2,", "{backend: v3,");
        let e = Config::parse(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with("services[0].routes[0].split[0].backend=\"v3\""),
            "{e}"
        );
        let bad = SAMPLE.replace("\"10.244.0.6:8080\": ", "\"10.244.0.7:8080\": ");
        let e = Config::parse(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with("services[0].backends[1].identities[10.244.0.7:8080]=10.244.0.7:8080"),
            "{e}"
        );
        let bad = SAMPLE.replace("spiffe://cluster.local/ns", "https://cluster.local/ns");
        let e = Config::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("expected a SPIFFE ID"), "{e}");
        let bad = SAMPLE.replace("timeout: 2s", "timeout: soon");
        let e = Config::parse(&bad).unwrap_err().to_string();
        assert!(e.contains("services[0].routes[1].timeout=\"soon\""), "{e}");
        let bad = SAMPLE.replace("name: default", "nmae: default");
        assert!(matches!(Config::parse(&bad), Err(ConfigError::Parse(_))));
        assert!(Config::parse("services: [ {").is_err());
    }
}
