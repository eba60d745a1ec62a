//! Gateway API routes → the mesh's routing model, and the routes' `status.parents` (pure; the
//! watches in [`crate::watch`] feed it and write what it says).
//!
//! A route is first *lowered* ([`lower_http`], [`lower_grpc`]) into what the proxies can do: one
//! `ghostwire.mesh.v1.Route` per match (a rule without matches matches everything), a split over
//! the rule's backendRefs, the request timeout and the retry policy. What they cannot do
//! (regular expressions, exact paths, query parameters, filters, a gRPC method without its
//! service) refuses the whole route with the field and the value ([`Unsupported`]): its parents
//! get `Accepted: False` (`UnsupportedValue`) and nothing of it is applied.
//!
//! [`attach`] then adds the accepted routes of one Service to that Service's entries: the
//! backends their rules name (`NAME:PORT`, the endpoints of that Service port, weight 0 so
//! they take no default traffic) and the routes, in Gateway API precedence order (longest path
//! prefix, then a method, then most headers, then the oldest route, then namespace/name, then
//! rule order). Requests that match no route keep the Service's own default backend.
//!
//! Only producer routes are applied (the route in the Service's namespace); a parentRef into
//! another namespace (a consumer route) is refused. BackendRefs must be Services of the route's
//! namespace with a port; others get `ResolvedRefs: False` (`InvalidKind`, `RefNotPermitted`,
//! `BackendNotFound`) and an empty backend, so their share of requests fails.

use crate::gateway::{
    BackendRef, CONTROLLER_NAME, GRPCRoute, GRPCRouteMatch, GRPCRouteRule, HTTPRoute,
    HTTPRouteMatch, HTTPRouteRule, HeaderMatch, ParentReference, RouteParentStatus, RouteStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use mesh_api::v1;
use std::cmp::Reverse;
use std::collections::BTreeMap;

/// The kind of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Http,
    Grpc,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "httproute",
            Kind::Grpc => "grpcroute",
        }
    }
}

/// Why a route cannot be applied: the field, its value and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub field: String,
    pub value: String,
    pub reason: String,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}: {}", self.field, self.value, self.reason)
    }
}

/// One rule as the proxies can run it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// The rule's name, or its index.
    pub name: String,
    /// One per match (at least one).
    pub matches: Vec<v1::RouteMatch>,
    pub backends: Vec<BackendRef>,
    pub timeout_ms: u64,
    pub retry: Option<v1::Retry>,
}

/// A route of either kind, lowered.
#[derive(Debug, Clone, PartialEq)]
pub struct Lowered {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    pub created: Option<Time>,
    pub parents: Vec<ParentReference>,
    pub rules: Result<Vec<Rule>, Unsupported>,
}

impl Lowered {
    /// The Service a parentRef names, if it is a Service (others are not the mesh's).
    pub fn parent_service(&self, p: &ParentReference) -> Option<(String, String)> {
        p.is_service().then(|| {
            (
                p.namespace
                    .clone()
                    .unwrap_or_else(|| self.namespace.clone()),
                p.name.clone(),
            )
        })
    }

    /// Whether the route applies to port `port` of Service `ns/name`.
    fn attaches_to(&self, ns: &str, name: &str, port: i32) -> bool {
        self.parents.iter().any(|p| {
            self.parent_service(p)
                .is_some_and(|(pn, n)| pn == ns && n == name && pn == self.namespace)
                && p.port.is_none_or(|x| x == port)
        })
    }

    /// The Services (namespace, name) its backendRefs name.
    pub fn backend_services(&self) -> Vec<(String, String)> {
        self.rules
            .iter()
            .flatten()
            .flat_map(|r| &r.backends)
            .map(|b| {
                (
                    b.namespace
                        .clone()
                        .unwrap_or_else(|| self.namespace.clone()),
                    b.name.clone(),
                )
            })
            .collect()
    }
}

fn unsupported(field: String, value: impl std::fmt::Debug, reason: &str) -> Unsupported {
    Unsupported {
        field,
        value: format!("{value:?}"),
        reason: reason.into(),
    }
}

/// A Gateway API duration (`1h`, `30s`, `500ms`, `1m30s`: 1 to 4 parts of 1-5 digits and a
/// unit) in milliseconds.
pub fn duration_ms(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a Gateway API duration (e.g. 500ms, 10s, 1m30s)");
    let mut rest = s;
    let (mut total, mut parts) = (0u64, 0);
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1000, 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        total += n * unit;
        parts += 1;
    }
    if parts == 0 || parts > 4 {
        return Err(bad());
    }
    Ok(total)
}

fn headers(path: &str, hs: &[HeaderMatch]) -> Result<BTreeMap<String, String>, Unsupported> {
    let mut out = BTreeMap::new();
    for (k, h) in hs.iter().enumerate() {
        let t = h.type_.as_deref().unwrap_or("Exact");
        if t != "Exact" {
            return Err(unsupported(
                format!("{path}.headers[{k}].type"),
                t,
                "only Exact header matches are supported",
            ));
        }
        // Header names are case-insensitive; the first match of a name wins.
        out.entry(h.name.to_ascii_lowercase())
            .or_insert_with(|| h.value.clone());
    }
    Ok(out)
}

fn check_filters(path: &str, filters: &[crate::gateway::Filter]) -> Result<(), Unsupported> {
    match filters.first() {
        Some(f) => Err(unsupported(
            format!("{path}.filters[0].type"),
            &f.type_,
            "the mesh applies no filters",
        )),
        None => Ok(()),
    }
}

fn check_backends(path: &str, refs: &[BackendRef]) -> Result<(), Unsupported> {
    for (k, b) in refs.iter().enumerate() {
        check_filters(&format!("{path}.backendRefs[{k}]"), &b.filters)?;
        if b.weight.is_some_and(|w| w < 0) {
            return Err(unsupported(
                format!("{path}.backendRefs[{k}].weight"),
                b.weight.unwrap_or_default(),
                "must not be negative",
            ));
        }
    }
    if refs.is_empty() {
        return Err(unsupported(
            format!("{path}.backendRefs"),
            "[]",
            "a rule without backends is not supported",
        ));
    }
    if refs.iter().all(|b| b.weight == Some(0)) {
        return Err(unsupported(
            format!("{path}.backendRefs"),
            "all weights 0",
            "at least one backendRef needs a weight above 0",
        ));
    }
    Ok(())
}

/// What the lowering needs from one rule of either kind; everything the two kinds share
/// (filters, backends, the default match, the rule's name) is done once, in [`lower_rules`].
trait RouteRule {
    type Match;
    fn name(&self) -> Option<&String>;
    fn filters(&self) -> &[crate::gateway::Filter];
    fn backend_refs(&self) -> &[BackendRef];
    fn matches(&self) -> &[Self::Match];
    /// One match (at field path `path`) as the proxies run it.
    fn lower_match(path: &str, m: &Self::Match) -> Result<v1::RouteMatch, Unsupported>;
    /// The request timeout in ms (0: none) and the retry policy, of the rule at `path`.
    fn policy(&self, path: &str) -> Result<(u64, Option<v1::Retry>), Unsupported>;
}

fn lower_rules<R: RouteRule>(rules: &[R]) -> Result<Vec<Rule>, Unsupported> {
    let mut out = vec![];
    for (i, rule) in rules.iter().enumerate() {
        let p = format!("spec.rules[{i}]");
        check_filters(&p, rule.filters())?;
        check_backends(&p, rule.backend_refs())?;
        let mut matches = rule
            .matches()
            .iter()
            .enumerate()
            .map(|(j, m)| R::lower_match(&format!("{p}.matches[{j}]"), m))
            .collect::<Result<Vec<_>, _>>()?;
        if matches.is_empty() {
            matches.push(v1::RouteMatch {
                path_prefix: "/".into(),
                ..Default::default()
            });
        }
        let (timeout_ms, retry) = rule.policy(&p)?;
        out.push(Rule {
            name: rule.name().cloned().unwrap_or_else(|| i.to_string()),
            matches,
            backends: rule.backend_refs().to_vec(),
            timeout_ms,
            retry,
        });
    }
    Ok(out)
}

fn field_duration(field: String, value: &str) -> Result<u64, Unsupported> {
    duration_ms(value).map_err(|reason| Unsupported {
        field,
        value: format!("{value:?}"),
        reason,
    })
}

impl RouteRule for HTTPRouteRule {
    type Match = HTTPRouteMatch;
    fn name(&self) -> Option<&String> {
        self.name.as_ref()
    }
    fn filters(&self) -> &[crate::gateway::Filter] {
        &self.filters
    }
    fn backend_refs(&self) -> &[BackendRef] {
        &self.backend_refs
    }
    fn matches(&self) -> &[HTTPRouteMatch] {
        &self.matches
    }

    fn lower_match(mp: &str, m: &HTTPRouteMatch) -> Result<v1::RouteMatch, Unsupported> {
        let path_prefix = match &m.path {
            None => "/".to_string(),
            Some(path) => {
                let t = path.type_.as_deref().unwrap_or("PathPrefix");
                if t != "PathPrefix" {
                    return Err(unsupported(
                        format!("{mp}.path.type"),
                        t,
                        "only PathPrefix path matches are supported",
                    ));
                }
                let v = path.value.clone().unwrap_or_else(|| "/".into());
                if !v.starts_with('/') {
                    return Err(unsupported(
                        format!("{mp}.path.value"),
                        &v,
                        "must start with /",
                    ));
                }
                v
            }
        };
        if let Some(q) = m.query_params.first() {
            return Err(unsupported(
                format!("{mp}.queryParams[0].name"),
                &q.name,
                "query parameter matches are not supported",
            ));
        }
        Ok(v1::RouteMatch {
            path_prefix,
            method: m.method.clone().unwrap_or_default(),
            headers: headers(mp, &m.headers)?.into_iter().collect(),
        })
    }

    fn policy(&self, p: &str) -> Result<(u64, Option<v1::Retry>), Unsupported> {
        let timeout_ms = match self.timeouts.as_ref().and_then(|t| t.request.as_ref()) {
            Some(t) => field_duration(format!("{p}.timeouts.request"), t)?,
            None => 0,
        };
        let Some(rt) = &self.retry else {
            return Ok((timeout_ms, None));
        };
        let attempts = rt.attempts.unwrap_or(1);
        if !(0..=10).contains(&attempts) {
            return Err(unsupported(
                format!("{p}.retry.attempts"),
                attempts,
                "0 to 10",
            ));
        }
        let mut statuses = vec![];
        for (k, c) in rt.codes.iter().enumerate() {
            if !(400..=599).contains(c) {
                return Err(unsupported(
                    format!("{p}.retry.codes[{k}]"),
                    c,
                    "a status from 400 to 599",
                ));
            }
            statuses.push(*c as u32);
        }
        if statuses.is_empty() {
            statuses = vec![502, 503, 504];
        }
        let backoff_ms = match &rt.backoff {
            Some(b) => field_duration(format!("{p}.retry.backoff"), b)?,
            None => 25,
        };
        let retry = (attempts > 0).then_some(v1::Retry {
            attempts: attempts as u32,
            statuses,
            backoff_ms,
            non_idempotent: false,
            max_body_bytes: 64 * 1024,
        });
        Ok((timeout_ms, retry))
    }
}

impl RouteRule for GRPCRouteRule {
    type Match = GRPCRouteMatch;
    fn name(&self) -> Option<&String> {
        self.name.as_ref()
    }
    fn filters(&self) -> &[crate::gateway::Filter] {
        &self.filters
    }
    fn backend_refs(&self) -> &[BackendRef] {
        &self.backend_refs
    }
    fn matches(&self) -> &[GRPCRouteMatch] {
        &self.matches
    }

    fn lower_match(mp: &str, m: &GRPCRouteMatch) -> Result<v1::RouteMatch, Unsupported> {
        let path_prefix = match &m.method {
            None => "/".to_string(),
            Some(mm) => {
                let t = mm.type_.as_deref().unwrap_or("Exact");
                if t != "Exact" {
                    return Err(unsupported(
                        format!("{mp}.method.type"),
                        t,
                        "only Exact method matches are supported",
                    ));
                }
                match (mm.service.as_deref(), mm.method.as_deref()) {
                    (Some(s), Some(m)) => format!("/{s}/{m}"),
                    (Some(s), None) => format!("/{s}/"),
                    (None, Some(m)) => {
                        return Err(unsupported(
                            format!("{mp}.method.method"),
                            m,
                            "a method without its service is not supported",
                        ));
                    }
                    (None, None) => "/".to_string(),
                }
            }
        };
        Ok(v1::RouteMatch {
            path_prefix,
            method: String::new(),
            headers: headers(mp, &m.headers)?.into_iter().collect(),
        })
    }

    /// GRPCRoute has no timeouts or retries in its standard channel.
    fn policy(&self, _: &str) -> Result<(u64, Option<v1::Retry>), Unsupported> {
        Ok((0, None))
    }
}

fn lowered(
    kind: Kind,
    meta: &kube::api::ObjectMeta,
    parents: &[ParentReference],
    rules: Result<Vec<Rule>, Unsupported>,
) -> Lowered {
    Lowered {
        kind,
        namespace: meta.namespace.clone().unwrap_or_default(),
        name: meta.name.clone().unwrap_or_default(),
        generation: meta.generation,
        created: meta.creation_timestamp.clone(),
        parents: parents.to_vec(),
        rules,
    }
}

pub fn lower_http(r: &HTTPRoute) -> Lowered {
    lowered(
        Kind::Http,
        &r.metadata,
        &r.spec.parent_refs,
        lower_rules(&r.spec.rules),
    )
}

pub fn lower_grpc(r: &GRPCRoute) -> Lowered {
    lowered(
        Kind::Grpc,
        &r.metadata,
        &r.spec.parent_refs,
        lower_rules(&r.spec.rules),
    )
}

/// A backendRef, resolved: the Service (namespace, name, port) or why not (reason, message).
fn resolve(
    route_ns: &str,
    b: &BackendRef,
) -> Result<(String, String, i32), (&'static str, String)> {
    let group = b.group.as_deref().unwrap_or("");
    let kind = b.kind.as_deref().unwrap_or("Service");
    if !group.is_empty() || kind != "Service" {
        return Err((
            "InvalidKind",
            format!(
                "backendRef {group}/{kind} {}: only Services are supported",
                b.name
            ),
        ));
    }
    let ns = b.namespace.as_deref().unwrap_or(route_ns);
    if ns != route_ns {
        return Err((
            "RefNotPermitted",
            format!(
                "backendRef Service {ns}/{}: only Services of the route's namespace {route_ns}",
                b.name
            ),
        ));
    }
    match b.port {
        Some(p) => Ok((ns.to_string(), b.name.clone(), p)),
        None => Err((
            "BackendNotFound",
            format!("backendRef Service {ns}/{}: port is required", b.name),
        )),
    }
}

/// The model's backend name for a backendRef.
fn backend_name(route_ns: &str, b: &BackendRef) -> String {
    match resolve(route_ns, b) {
        Ok((_, name, port)) => format!("{name}:{port}"),
        Err(_) => format!(
            "unresolved:{}/{}/{}",
            b.kind.as_deref().unwrap_or("Service"),
            b.namespace.as_deref().unwrap_or(route_ns),
            b.name
        ),
    }
}

/// Looks up the backend of one Service port: its endpoints (and their identities), or `None`
/// when the Service or the port does not exist.
pub type BackendLookup<'a> = &'a dyn Fn(&str, &str, i32) -> Option<v1::Backend>;

/// Adds the accepted routes in `routes` that attach to Service `ns/name` to its `entries`
/// (one per port, named `name.ns:port`, as [`crate::watch::desired`] makes them).
pub fn attach(
    entries: &mut [v1::Service],
    ns: &str,
    name: &str,
    routes: &[&Lowered],
    backend: BackendLookup<'_>,
) {
    for e in entries.iter_mut() {
        let Some(port) = e
            .name
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<i32>().ok())
        else {
            continue;
        };
        type Key<'a> = (
            Reverse<usize>,
            Reverse<bool>,
            Reverse<usize>,
            Option<&'a Time>,
            &'a str,
            &'a str,
            usize,
            usize,
        );
        let mut found: Vec<(Key<'_>, v1::Route)> = vec![];
        for r in routes.iter().filter(|r| r.attaches_to(ns, name, port)) {
            let Ok(rules) = &r.rules else { continue };
            for (i, rule) in rules.iter().enumerate() {
                let mut split = vec![];
                for b in &rule.backends {
                    let bname = backend_name(&r.namespace, b);
                    if !e.backends.iter().any(|x| x.name == bname) {
                        let found = resolve(&r.namespace, b)
                            .ok()
                            .and_then(|(bns, bn, bp)| backend(&bns, &bn, bp));
                        e.backends.push(v1::Backend {
                            name: bname.clone(),
                            weight: 0,
                            ..found.unwrap_or_default()
                        });
                    }
                    split.push(v1::Split {
                        backend: bname,
                        weight: b.weight.unwrap_or(1).max(0) as u32,
                    });
                }
                let many = rule.matches.len() > 1;
                for (j, m) in rule.matches.iter().enumerate() {
                    let key: Key<'_> = (
                        Reverse(m.path_prefix.len()),
                        Reverse(!m.method.is_empty()),
                        Reverse(m.headers.len()),
                        r.created.as_ref(),
                        &r.namespace,
                        &r.name,
                        i,
                        j,
                    );
                    let mut rname = format!(
                        "{}/{}/{}/{}",
                        r.kind.as_str(),
                        r.namespace,
                        r.name,
                        rule.name
                    );
                    if many {
                        rname = format!("{rname}/{j}");
                    }
                    found.push((
                        key,
                        v1::Route {
                            name: rname,
                            r#match: Some(m.clone()),
                            split: split.clone(),
                            timeout_ms: rule.timeout_ms,
                            retry: rule.retry.clone(),
                        },
                    ));
                }
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        e.routes.extend(found.into_iter().map(|(_, r)| r));
    }
}

/// One condition: (type, true?, reason, message).
pub type Cond = (&'static str, bool, &'static str, String);

/// What the controller says about each Service parent of `route`: `Accepted` and
/// `ResolvedRefs`. `service_ports(ns, name)`: the ports of a Service, `None` if it does not
/// exist.
pub fn parent_conditions(
    route: &Lowered,
    service_ports: &dyn Fn(&str, &str) -> Option<Vec<i32>>,
    backend: BackendLookup<'_>,
) -> Vec<(ParentReference, Vec<Cond>)> {
    // ResolvedRefs is the same for every parent: the first backendRef that does not resolve.
    let mut resolved: Cond = (
        "ResolvedRefs",
        true,
        "ResolvedRefs",
        "all backendRefs resolved".into(),
    );
    if let Ok(rules) = &route.rules {
        'out: for (i, rule) in rules.iter().enumerate() {
            for (k, b) in rule.backends.iter().enumerate() {
                let why = match resolve(&route.namespace, b) {
                    Err(why) => Some(why),
                    Ok((ns, n, p)) => backend(&ns, &n, p).is_none().then(|| {
                        (
                            "BackendNotFound",
                            format!("spec.rules[{i}].backendRefs[{k}]: Service {ns}/{n} with port {p} not found"),
                        )
                    }),
                };
                if let Some((reason, message)) = why {
                    resolved = ("ResolvedRefs", false, reason, message);
                    break 'out;
                }
            }
        }
    }
    let mut out = vec![];
    for p in &route.parents {
        let Some((ns, name)) = route.parent_service(p) else {
            continue;
        };
        let accepted: Cond = if ns != route.namespace {
            (
                "Accepted",
                false,
                "UnsupportedValue",
                format!(
                    "parentRef Service {ns}/{name} is in another namespace: consumer routes are not supported"
                ),
            )
        } else if let Err(u) = &route.rules {
            ("Accepted", false, "UnsupportedValue", u.to_string())
        } else {
            match service_ports(&ns, &name) {
                None => (
                    "Accepted",
                    false,
                    "NoMatchingParent",
                    format!("Service {ns}/{name} not found"),
                ),
                Some(ports) if p.port.is_some_and(|x| !ports.contains(&x)) => (
                    "Accepted",
                    false,
                    "NoMatchingParent",
                    format!(
                        "Service {ns}/{name} has no port {}",
                        p.port.unwrap_or_default()
                    ),
                ),
                Some(_) => (
                    "Accepted",
                    true,
                    "Accepted",
                    format!("applied to the mesh's proxies for Service {ns}/{name}"),
                ),
            }
        };
        out.push((p.clone(), vec![accepted, resolved.clone()]));
    }
    out
}

/// The route's new status: other controllers' entries kept, ours replaced by `ours`; a
/// condition that did not change keeps its `lastTransitionTime`. `None`: nothing to write (the
/// status already says this).
pub fn next_status(
    old: Option<&RouteStatus>,
    ours: Vec<(ParentReference, Vec<Cond>)>,
    generation: Option<i64>,
    now: &Time,
) -> Option<RouteStatus> {
    let old_parents: &[RouteParentStatus] = old.map(|s| s.parents.as_slice()).unwrap_or(&[]);
    let mut parents: Vec<RouteParentStatus> = old_parents
        .iter()
        .filter(|p| p.controller_name != CONTROLLER_NAME)
        .cloned()
        .collect();
    for (parent_ref, conds) in ours {
        let before = old_parents
            .iter()
            .find(|p| p.controller_name == CONTROLLER_NAME && p.parent_ref == parent_ref);
        let conditions = conds
            .into_iter()
            .map(|(type_, ok, reason, message)| {
                let status = if ok { "True" } else { "False" }.to_string();
                let prev = before.and_then(|b| b.conditions.iter().find(|c| c.type_ == type_));
                let last_transition_time = match prev {
                    Some(c) if c.status == status => c.last_transition_time.clone(),
                    _ => now.clone(),
                };
                Condition {
                    type_: type_.into(),
                    status,
                    reason: reason.into(),
                    message,
                    observed_generation: generation,
                    last_transition_time,
                }
            })
            .collect();
        parents.push(RouteParentStatus {
            parent_ref,
            controller_name: CONTROLLER_NAME.into(),
            conditions,
        });
    }
    let new = RouteStatus { parents };
    (old != Some(&new) && !(old.is_none() && new.parents.is_empty())).then_some(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn http(spec: serde_json::Value) -> HTTPRoute {
        serde_json::from_value(
            json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "app", "generation": 3}, "spec": spec}),
        )
        .unwrap()
    }

    fn parent() -> serde_json::Value {
        json!([{"group": "", "kind": "Service", "name": "web", "port": 80}])
    }

    /// Service app/web (port 80, endpoint .5) and app/web-v2 (port 80, endpoint .6).
    fn lookup(ns: &str, name: &str, port: i32) -> Option<v1::Backend> {
        let ep = match (ns, name, port) {
            ("app", "web", 80) => "10.244.0.5:8080",
            ("app", "web-v2", 80) => "10.244.0.6:8080",
            _ => return None,
        };
        Some(v1::Backend {
            name: name.into(),
            endpoints: vec![ep.into()],
            weight: 1,
            ..Default::default()
        })
    }

    fn ports(ns: &str, name: &str) -> Option<Vec<i32>> {
        (ns == "app" && (name == "web" || name == "web-v2")).then(|| vec![80])
    }

    fn base() -> Vec<v1::Service> {
        vec![v1::Service {
            name: "web.app:80".into(),
            addresses: vec!["10.96.0.10:80".into()],
            backends: vec![lookup("app", "web", 80).unwrap()],
            ..Default::default()
        }]
    }

    fn applied(routes: &[&Lowered]) -> v1::Service {
        let mut e = base();
        attach(&mut e, "app", "web", routes, &lookup);
        e.remove(0)
    }

    #[test]
    fn durations_follow_the_gateway_api_format() {
        let table = [
            ("1s", Ok(1000)),
            ("500ms", Ok(500)),
            ("1m30s", Ok(90_000)),
            ("1h", Ok(3_600_000)),
            ("0s", Ok(0)),
            ("1h1m1s1ms", Ok(3_661_001)),
        ];
        for (s, want) in table {
            assert_eq!(duration_ms(s), want, "{s}");
        }
        for bad in ["", "1", "1d", "123456s", "1.5s", "1h1m1s1ms1ms", "-1s"] {
            assert!(duration_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn weighted_split_matches_timeout_and_retry_become_mesh_routes() {
        let r = lower_http(&http(json!({"parentRefs": parent(), "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}, "headers": [{"name": "X-Canary", "value": "yes"}], "method": "GET"},
                         {"path": {"value": "/"}}],
             "backendRefs": [{"name": "web", "port": 80, "weight": 90}, {"name": "web-v2", "port": 80, "weight": 10}],
             "timeouts": {"request": "2s"},
             "retry": {"codes": [500, 503], "attempts": 2, "backoff": "100ms"}}]})));
        let s = applied(&[&r]);
        // The default backend stays first and alone in the default split.
        assert_eq!(
            s.backends
                .iter()
                .map(|b| (b.name.as_str(), b.weight))
                .collect::<Vec<_>>(),
            [("web", 1), ("web:80", 0), ("web-v2:80", 0)]
        );
        assert_eq!(s.backends[2].endpoints, ["10.244.0.6:8080"]);
        assert_eq!(s.routes.len(), 2);
        let first = &s.routes[0];
        assert_eq!(first.name, "httproute/app/r/0/0");
        let m = first.r#match.as_ref().unwrap();
        assert_eq!((m.path_prefix.as_str(), m.method.as_str()), ("/api", "GET"));
        assert_eq!(m.headers["x-canary"], "yes");
        assert_eq!(
            first
                .split
                .iter()
                .map(|x| (x.backend.as_str(), x.weight))
                .collect::<Vec<_>>(),
            [("web:80", 90), ("web-v2:80", 10)]
        );
        assert_eq!(first.timeout_ms, 2000);
        let retry = first.retry.as_ref().unwrap();
        assert_eq!((retry.attempts, retry.backoff_ms), (2, 100));
        assert_eq!(retry.statuses, [500, 503]);
        assert_eq!(s.routes[1].r#match.as_ref().unwrap().path_prefix, "/");
        // What the proxy makes of it validates.
        crate::convert::to_config([&s]).unwrap().validate().unwrap();
    }

    #[test]
    fn precedence_is_longest_prefix_then_method_then_headers_then_oldest() {
        let route = |name: &str, created: &str, matches: serde_json::Value| {
            let mut r = http(json!({"parentRefs": parent(), "rules": [
                {"matches": matches, "backendRefs": [{"name": "web-v2", "port": 80}]}]}));
            r.metadata.name = Some(name.into());
            r.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
            lower_http(&r)
        };
        let old = route(
            "old",
            "2026-01-01T00:00:00Z",
            json!([{"path": {"value": "/a"}}]),
        );
        let new = route(
            "new",
            "2026-02-01T00:00:00Z",
            json!([{"path": {"value": "/a"}}]),
        );
        let long = route(
            "long",
            "2026-03-01T00:00:00Z",
            json!([{"path": {"value": "/a/b"}}]),
        );
        let method = route(
            "method",
            "2026-03-01T00:00:00Z",
            json!([{"path": {"value": "/a"}, "method": "POST"}]),
        );
        let hdr = route(
            "hdr",
            "2026-03-01T00:00:00Z",
            json!([{"path": {"value": "/a"}, "headers": [{"name": "x", "value": "1"}]}]),
        );
        let s = applied(&[&new, &hdr, &old, &method, &long]);
        let order: Vec<&str> = s
            .routes
            .iter()
            .map(|r| r.name.split('/').nth(2).unwrap())
            .collect();
        assert_eq!(order, ["long", "method", "hdr", "old", "new"]);
    }

    /// Gateway API's PathPrefix is per path element: the route for `/api` takes `/api` and
    /// `/api/v1` in the proxy that runs it, not `/apix` (which keeps the Service's default).
    #[test]
    fn a_path_prefix_takes_whole_path_elements_in_the_proxy() {
        let r = lower_http(&http(json!({"parentRefs": parent(), "rules": [
            {"matches": [{"path": {"value": "/api"}}], "backendRefs": [{"name": "web-v2", "port": 80}]}]})));
        let s = applied(&[&r]);
        let store = mesh_proxy::store::Store::default();
        store
            .replace(crate::convert::to_config([&s]).unwrap())
            .unwrap();
        let snap = store.load();
        let svc = snap.service("10.96.0.10:80".parse().unwrap()).unwrap();
        let route = |path: &str| {
            let req = tonic::codegen::http::Request::get(path).body(()).unwrap();
            svc.route(&req.into_parts().0).name.to_string()
        };
        let ours = &s.routes[0].name;
        assert_eq!(&route("/api"), ours);
        assert_eq!(&route("/api/"), ours);
        assert_eq!(&route("/api/v1?x=1"), ours);
        assert_eq!(route("/apix"), "default");
        assert_eq!(route("/ap"), "default");
    }

    #[test]
    fn grpc_methods_become_path_prefixes() {
        let r: GRPCRoute = serde_json::from_value(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": {"name": "g", "namespace": "app"},
            "spec": {"parentRefs": parent(), "rules": [
                {"matches": [{"method": {"service": "pkg.Echo", "method": "Say"}}, {"method": {"service": "pkg.Other"}, "headers": [{"name": "tenant", "value": "a"}]}],
                 "backendRefs": [{"name": "web-v2", "port": 80}]}]}})).unwrap();
        let s = applied(&[&lower_grpc(&r)]);
        let prefixes: Vec<&str> = s
            .routes
            .iter()
            .map(|r| r.r#match.as_ref().unwrap().path_prefix.as_str())
            .collect();
        assert_eq!(prefixes, ["/pkg.Echo/Say", "/pkg.Other/"]);
        assert_eq!(s.routes[1].r#match.as_ref().unwrap().headers["tenant"], "a");
        let bad: GRPCRoute = serde_json::from_value(json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": {"name": "g", "namespace": "app"},
            "spec": {"parentRefs": parent(), "rules": [{"matches": [{"method": {"method": "Say"}}], "backendRefs": [{"name": "web", "port": 80}]}]}})).unwrap();
        let e = lower_grpc(&bad).rules.unwrap_err();
        assert_eq!(e.field, "spec.rules[0].matches[0].method.method");
    }

    #[test]
    fn unsupported_values_refuse_the_route_naming_field_and_value() {
        let table = [
            (
                json!({"matches": [{"path": {"type": "Exact", "value": "/a"}}]}),
                "spec.rules[0].matches[0].path.type",
                "\"Exact\"",
            ),
            (
                json!({"matches": [{"headers": [{"type": "RegularExpression", "name": "x", "value": ".*"}]}]}),
                "spec.rules[0].matches[0].headers[0].type",
                "\"RegularExpression\"",
            ),
            (
                json!({"matches": [{"queryParams": [{"name": "q", "value": "1"}]}]}),
                "spec.rules[0].matches[0].queryParams[0].name",
                "\"q\"",
            ),
            (
                json!({"filters": [{"type": "RequestMirror"}]}),
                "spec.rules[0].filters[0].type",
                "\"RequestMirror\"",
            ),
            (
                json!({"timeouts": {"request": "1d"}}),
                "spec.rules[0].timeouts.request",
                "\"1d\"",
            ),
            (
                json!({"retry": {"attempts": 11}}),
                "spec.rules[0].retry.attempts",
                "11",
            ),
        ];
        for (extra, field, value) in table {
            let mut rule = json!({"backendRefs": [{"name": "web-v2", "port": 80}]});
            for (k, v) in extra.as_object().unwrap() {
                rule[k] = v.clone();
            }
            let r = lower_http(&http(json!({"parentRefs": parent(), "rules": [rule]})));
            let e = r.rules.clone().unwrap_err();
            assert_eq!((e.field.as_str(), e.value.as_str()), (field, value), "{e}");
            // Refused routes add nothing, and say why on their parent.
            assert_eq!(applied(&[&r]), base().remove(0));
            let conds = parent_conditions(&r, &ports, &lookup);
            assert!(!conds[0].1[0].1);
            assert_eq!(conds[0].1[0].2, "UnsupportedValue");
            assert!(conds[0].1[0].3.contains(field), "{:?}", conds[0].1[0]);
        }
    }

    #[test]
    fn status_conditions_per_parent() {
        let r = |refs: serde_json::Value, parents: serde_json::Value| {
            lower_http(&http(
                json!({"parentRefs": parents, "rules": [{"backendRefs": refs}]}),
            ))
        };
        let conds = |l: &Lowered| -> Vec<Vec<(&'static str, bool, &'static str)>> {
            parent_conditions(l, &ports, &lookup)
                .into_iter()
                .map(|(_, c)| {
                    c.into_iter()
                        .map(|(t, ok, reason, _)| (t, ok, reason))
                        .collect()
                })
                .collect()
        };
        let good = json!([{"name": "web-v2", "port": 80}]);
        let table = [
            (
                good.clone(),
                parent(),
                ("Accepted", true, "Accepted"),
                ("ResolvedRefs", true, "ResolvedRefs"),
            ),
            (
                json!([{"name": "gone", "port": 80}]),
                parent(),
                ("Accepted", true, "Accepted"),
                ("ResolvedRefs", false, "BackendNotFound"),
            ),
            (
                json!([{"name": "web-v2", "port": 81}]),
                parent(),
                ("Accepted", true, "Accepted"),
                ("ResolvedRefs", false, "BackendNotFound"),
            ),
            (
                json!([{"name": "web-v2"}]),
                parent(),
                ("Accepted", true, "Accepted"),
                ("ResolvedRefs", false, "BackendNotFound"),
            ),
            (
                json!([{"name": "web-v2", "port": 80, "namespace": "other"}]),
                parent(),
                ("Accepted", true, "Accepted"),
                ("ResolvedRefs", false, "RefNotPermitted"),
            ),
            (
                json!([{"group": "x.dev", "kind": "Bucket", "name": "b"}]),
                parent(),
                ("Accepted", true, "Accepted"),
                ("ResolvedRefs", false, "InvalidKind"),
            ),
            (
                good.clone(),
                json!([{"group": "", "kind": "Service", "name": "nope"}]),
                ("Accepted", false, "NoMatchingParent"),
                ("ResolvedRefs", true, "ResolvedRefs"),
            ),
            (
                good.clone(),
                json!([{"group": "", "kind": "Service", "name": "web", "port": 8080}]),
                ("Accepted", false, "NoMatchingParent"),
                ("ResolvedRefs", true, "ResolvedRefs"),
            ),
            (
                good.clone(),
                json!([{"group": "", "kind": "Service", "name": "web", "namespace": "other"}]),
                ("Accepted", false, "UnsupportedValue"),
                ("ResolvedRefs", true, "ResolvedRefs"),
            ),
        ];
        for (refs, parents, accepted, resolved) in table {
            let l = r(refs.clone(), parents.clone());
            assert_eq!(
                conds(&l),
                vec![vec![accepted, resolved]],
                "{refs} {parents}"
            );
        }
        // A Gateway parent is not the mesh's: no entry.
        let l = r(good.clone(), json!([{"name": "gw"}]));
        assert!(conds(&l).is_empty());
        // An unresolved backend is an empty backend in the split: its share fails.
        let l = r(
            json!([{"name": "web-v2", "port": 80, "weight": 1}, {"name": "gone", "port": 80, "weight": 1}]),
            parent(),
        );
        let s = applied(&[&l]);
        assert_eq!(s.backends[2].name, "gone:80");
        assert!(s.backends[2].endpoints.is_empty());
    }

    #[test]
    fn status_keeps_other_controllers_and_unchanged_transition_times() {
        let t0 = Time("2026-01-01T00:00:00Z".parse().unwrap());
        let t1 = Time("2026-01-02T00:00:00Z".parse().unwrap());
        let l = lower_http(&http(
            json!({"parentRefs": parent(), "rules": [{"backendRefs": [{"name": "web-v2", "port": 80}]}]}),
        ));
        let other = RouteParentStatus {
            parent_ref: ParentReference {
                name: "gw".into(),
                ..Default::default()
            },
            controller_name: "example.com/gateway".into(),
            conditions: vec![],
        };
        let old = RouteStatus {
            parents: vec![other.clone()],
        };
        let first = next_status(
            Some(&old),
            parent_conditions(&l, &ports, &lookup),
            Some(3),
            &t0,
        )
        .unwrap();
        assert_eq!(first.parents[0], other);
        assert_eq!(first.parents[1].controller_name, CONTROLLER_NAME);
        assert_eq!(first.parents[1].conditions[0].observed_generation, Some(3));
        // The same again later: nothing to write.
        assert_eq!(
            next_status(
                Some(&first),
                parent_conditions(&l, &ports, &lookup),
                Some(3),
                &t1
            ),
            None
        );
        // The backend goes: ResolvedRefs flips (new time), Accepted keeps its time.
        let gone = |_: &str, _: &str, _: i32| None;
        let second = next_status(
            Some(&first),
            parent_conditions(&l, &ports, &gone),
            Some(3),
            &t1,
        )
        .unwrap();
        let c = &second.parents[1].conditions;
        assert_eq!(
            (c[0].type_.as_str(), &c[0].last_transition_time),
            ("Accepted", &t0)
        );
        assert_eq!(
            (
                c[1].status.as_str(),
                c[1].reason.as_str(),
                &c[1].last_transition_time
            ),
            ("False", "BackendNotFound", &t1)
        );
    }
}
