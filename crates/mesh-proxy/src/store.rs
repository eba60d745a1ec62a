//! The config store: the current [`Snapshot`] behind a watch channel, replaced atomically as a
//! whole, so a request sees one config from start to end. A [`ConfigSource`] feeds it; the
//! file source is the first, the controller's gRPC stream (issue 14) will be the next.

use crate::balance::{Accrual, Endpoint};
use crate::config::{self, Config, ConfigError};
use crate::retry::Budget;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// One backend, compiled.
#[derive(Debug)]
pub struct Backend {
    /// Shared with the metrics' labels, so a request's labels cost no allocation.
    pub name: Arc<str>,
    pub endpoints: Vec<Arc<Endpoint>>,
}

/// Request matching, compiled.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub path_prefix: Option<String>,
    pub method: Option<http::Method>,
    pub headers: Vec<(http::HeaderName, String)>,
    /// (backend index, weight)
    pub split: Vec<(usize, u32)>,
    pub timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub statuses: Vec<u16>,
    pub backoff: Duration,
    pub non_idempotent: bool,
    pub max_body_bytes: usize,
}

#[derive(Debug)]
pub struct Service {
    pub name: Arc<str>,
    pub backends: Vec<Backend>,
    pub routes: Vec<Route>,
    /// The backends' own weights, for requests no route takes.
    pub default_split: Vec<(usize, u32)>,
    pub budget: Arc<Budget>,
    pub accrual: Accrual,
    /// Meshed endpoints → the identity they must present.
    pub identities: HashMap<SocketAddr, Arc<str>>,
}

/// The route a request takes when no configured route matches.
pub static DEFAULT_ROUTE: std::sync::LazyLock<Route> = std::sync::LazyLock::new(|| Route {
    name: "default".into(),
    path_prefix: None,
    method: None,
    headers: vec![],
    split: vec![],
    timeout: None,
    retry: None,
});

impl Service {
    pub fn route(&self, req: &http::request::Parts) -> &Route {
        self.routes
            .iter()
            .find(|r| {
                r.path_prefix
                    .as_ref()
                    .is_none_or(|p| path_has_prefix(req.uri.path(), p))
                    && r.method.as_ref().is_none_or(|m| *m == req.method)
                    && r.headers.iter().all(|(n, v)| {
                        req.headers
                            .get_all(n)
                            .iter()
                            .any(|x| x.as_bytes() == v.as_bytes())
                    })
            })
            .unwrap_or(&DEFAULT_ROUTE)
    }
}

/// Whether `path` lies under `prefix`, element by element as Gateway API's `PathPrefix` says:
/// `/api` (or `/api/`) matches `/api`, `/api/` and `/api/v1`, not `/apix`; `/` matches
/// everything. A trailing `/` of the prefix is ignored.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// An immutable, compiled config.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// 0 before any config was loaded; +1 per accepted config.
    pub generation: u64,
    pub config: Config,
    by_addr: HashMap<SocketAddr, Arc<Service>>,
    identities: HashMap<SocketAddr, Arc<str>>,
    pods: HashMap<std::net::IpAddr, Arc<str>>,
}

impl Snapshot {
    pub fn service(&self, dst: SocketAddr) -> Option<&Arc<Service>> {
        self.by_addr.get(&dst)
    }

    /// The identity a meshed endpoint must present (any service's config may name it).
    pub fn identity(&self, endpoint: SocketAddr) -> Option<&Arc<str>> {
        self.identities
            .get(&endpoint)
            .or_else(|| self.pod_identity(endpoint.ip()))
    }

    /// The identity of the meshed Pod that owns `ip` now, as the config's `pods` says.
    pub fn pod_identity(&self, ip: std::net::IpAddr) -> Option<&Arc<str>> {
        self.pods.get(&ip)
    }
}

/// Endpoint and budget state that outlives snapshots.
#[derive(Debug, Default)]
struct Shared {
    endpoints: Mutex<HashMap<SocketAddr, Weak<Endpoint>>>,
    budgets: Mutex<HashMap<String, Weak<Budget>>>,
}

fn reuse<K: std::hash::Hash + Eq + Clone, V>(
    map: &Mutex<HashMap<K, Weak<V>>>,
    key: &K,
    make: impl FnOnce() -> V,
) -> Arc<V> {
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = m.get(key).and_then(Weak::upgrade) {
        return v;
    }
    m.retain(|_, w| w.strong_count() > 0);
    let v = Arc::new(make());
    m.insert(key.clone(), Arc::downgrade(&v));
    v
}

/// The store: cheap to clone, read by every request, written by the config source.
#[derive(Clone)]
pub struct Store {
    tx: Arc<watch::Sender<Arc<Snapshot>>>,
    shared: Arc<Shared>,
}

impl Default for Store {
    fn default() -> Self {
        Store {
            tx: Arc::new(watch::channel(Arc::new(Snapshot::default())).0),
            shared: Arc::default(),
        }
    }
}

impl Store {
    pub fn load(&self) -> Arc<Snapshot> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }

    /// Validates and compiles `config`, then swaps it in; returns the new generation. A bad
    /// config changes nothing.
    pub fn replace(&self, config: Config) -> Result<u64, ConfigError> {
        config.validate()?;
        let generation = self.load().generation + 1;
        let mut by_addr = HashMap::new();
        let mut all_identities = HashMap::new();
        for (i, s) in config.services.iter().enumerate() {
            let identities: HashMap<SocketAddr, Arc<str>> = s
                .backends
                .iter()
                .flat_map(|b| b.identities.iter())
                .map(|(a, id)| (*a, Arc::<str>::from(id.as_str())))
                .collect();
            all_identities.extend(identities.iter().map(|(a, id)| (*a, id.clone())));
            let p = format!("services[{i}]");
            let backends: Vec<Backend> = s
                .backends
                .iter()
                .map(|b| Backend {
                    name: b.name.as_str().into(),
                    endpoints: b
                        .endpoints
                        .iter()
                        .map(|a| reuse(&self.shared.endpoints, a, || Endpoint::new(*a)))
                        .collect(),
                })
                .collect();
            let index = |name: &str| {
                s.backends
                    .iter()
                    .position(|b| b.name == name)
                    .expect("validated")
            };
            let mut routes = Vec::new();
            for (j, r) in s.routes.iter().enumerate() {
                let rp = format!("{p}.routes[{j}]");
                let retry = match &r.retry {
                    Some(rt) => Some(RetryPolicy {
                        attempts: rt.attempts,
                        statuses: rt.statuses.clone(),
                        backoff: config::duration(format!("{rp}.retry.backoff"), &rt.backoff)?,
                        non_idempotent: rt.non_idempotent,
                        max_body_bytes: rt.max_body_bytes,
                    }),
                    None => None,
                };
                routes.push(Route {
                    name: r.name.as_str().into(),
                    path_prefix: r.matches.path_prefix.clone(),
                    method: r
                        .matches
                        .method
                        .as_ref()
                        .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok()),
                    headers: r
                        .matches
                        .headers
                        .iter()
                        .filter_map(|(k, v)| {
                            Some((http::HeaderName::from_bytes(k.as_bytes()).ok()?, v.clone()))
                        })
                        .collect(),
                    split: r
                        .split
                        .iter()
                        .map(|sp| (index(&sp.backend), sp.weight))
                        .collect(),
                    timeout: match &r.timeout {
                        Some(t) => Some(config::duration(format!("{rp}.timeout"), t)?),
                        None => None,
                    },
                    retry,
                });
            }
            let budget = reuse(&self.shared.budgets, &s.name, || {
                Budget::new(s.retry_budget.ratio, s.retry_budget.min_per_second)
            });
            let svc = Arc::new(Service {
                name: s.name.as_str().into(),
                default_split: s
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (i, b.weight))
                    .collect(),
                backends,
                routes,
                budget,
                accrual: Accrual {
                    consecutive_failures: s.failure_accrual.consecutive_failures,
                    eject_for: config::duration(
                        format!("{p}.failure_accrual.eject_for"),
                        &s.failure_accrual.eject_for,
                    )?,
                },
                identities,
            });
            for a in &s.addresses {
                by_addr.insert(*a, svc.clone());
            }
        }
        self.tx.send_replace(Arc::new(Snapshot {
            generation,
            by_addr,
            identities: all_identities,
            pods: config
                .pods
                .iter()
                .map(|(ip, id)| (*ip, Arc::<str>::from(id.as_str())))
                .collect(),
            config,
        }));
        Ok(generation)
    }
}

/// Where configs come from. `run` feeds the store until the process ends.
pub trait ConfigSource: Send + 'static {
    fn run(
        self: Box<Self>,
        store: Store,
        on_error: Box<dyn Fn(&ConfigError) + Send + Sync>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// A YAML or JSON file, checked every `poll`; a changed file is parsed and swapped in whole.
/// A file that does not parse is reported and the previous config stays.
pub struct FileSource {
    pub path: PathBuf,
    pub poll: Duration,
}

impl FileSource {
    /// Loads the file once, now; the proxy refuses to start on a bad file.
    pub fn load_once(&self, store: &Store) -> Result<u64, ConfigError> {
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| ConfigError::Parse(format!("{}: {e}", self.path.display())))?;
        store.replace(Config::parse(&text)?)
    }
}

impl ConfigSource for FileSource {
    fn run(
        self: Box<Self>,
        store: Store,
        on_error: Box<dyn Fn(&ConfigError) + Send + Sync>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let mut last = std::fs::read(&self.path).ok();
            let mut tick = tokio::time::interval(self.poll);
            loop {
                tick.tick().await;
                let now = tokio::fs::read(&self.path).await.ok();
                if now.is_none() || now == last {
                    continue;
                }
                last = now;
                let text = String::from_utf8_lossy(last.as_deref().unwrap_or_default());
                match Config::parse(&text).and_then(|c| store.replace(c)) {
                    Ok(g) => {
                        tracing::info!(generation = g, path = %self.path.display(), "routing config reloaded")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, path = %self.path.display(), "routing config refused; keeping the previous one");
                        on_error(&e);
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(weight_v2: u32) -> Config {
        Config::parse(&format!(
            r#"
services:
  - name: b
    addresses: ["10.96.0.11:80"]
    backends:
      - {{name: v1, weight: 90, endpoints: ["10.244.0.5:8080"]}}
      - {{name: v2, weight: {weight_v2}, endpoints: ["10.244.0.6:8080"]}}
    routes:
      - name: canary
        match: {{headers: {{x-canary: "true"}}, path_prefix: /hello}}
        split: [{{backend: v2, weight: 1}}]
"#
        ))
        .unwrap()
    }

    fn parts(path: &str, canary: Option<&str>) -> http::request::Parts {
        let mut b = http::Request::get(path);
        if let Some(v) = canary {
            b = b.header("x-canary", v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn swaps_whole_snapshots_and_keeps_endpoint_state() {
        let store = Store::default();
        assert_eq!(store.load().generation, 0);
        let old = store.load();
        assert_eq!(store.replace(cfg(10)).unwrap(), 1);
        let a = store.load();
        let ep = a
            .service("10.96.0.11:80".parse().unwrap())
            .unwrap()
            .backends[1]
            .endpoints[0]
            .clone();
        assert_eq!(store.replace(cfg(20)).unwrap(), 2);
        let b = store.load();
        let svc = b.service("10.96.0.11:80".parse().unwrap()).unwrap();
        assert_eq!(svc.default_split, vec![(0, 90), (1, 20)]);
        assert!(Arc::ptr_eq(&ep, &svc.backends[1].endpoints[0]));
        // Readers holding an older snapshot keep it intact.
        assert_eq!(old.generation, 0);
        assert!(old.service("10.96.0.11:80".parse().unwrap()).is_none());
        // A bad config changes nothing.
        let mut bad = cfg(10);
        bad.services[0].routes[0].split[0].backend = "v9".into();
        assert!(store.replace(bad).is_err());
        assert_eq!(store.load().generation, 2);
    }

    #[test]
    fn routes_match_headers_and_path() {
        let store = Store::default();
        store.replace(cfg(10)).unwrap();
        let snap = store.load();
        let svc = snap.service("10.96.0.11:80".parse().unwrap()).unwrap();
        assert_eq!(
            svc.route(&parts("/hello", Some("true"))).name,
            "canary".into()
        );
        assert_eq!(
            svc.route(&parts("/hello", Some("false"))).name,
            "default".into()
        );
        assert_eq!(
            svc.route(&parts("/other", Some("true"))).name,
            "default".into()
        );
        assert_eq!(svc.route(&parts("/hello", None)).name, "default".into());
        assert_eq!(
            svc.route(&parts("/hello/x", Some("true"))).name,
            "canary".into()
        );
        assert_eq!(
            svc.route(&parts("/hellox", Some("true"))).name,
            "default".into()
        );
    }

    #[test]
    fn path_prefixes_match_whole_path_elements() {
        for (path, prefix, want) in [
            ("/api", "/api", true),
            ("/api/", "/api", true),
            ("/api/v1", "/api", true),
            ("/api/v1?x=1", "/api", true),
            ("/apix", "/api", false),
            ("/ap", "/api", false),
            ("/api", "/api/", true),
            ("/api/v1", "/api/", true),
            ("/apix", "/api/", false),
            ("/anything", "/", true),
            ("/", "/", true),
            ("/pkg.Svc/Get", "/pkg.Svc/", true),
            ("/pkg.SvcX/Get", "/pkg.Svc/", false),
            ("/pkg.Svc/Get", "/pkg.Svc/Get", true),
            ("/pkg.Svc/GetAll", "/pkg.Svc/Get", false),
        ] {
            // The query is not part of `Uri::path`; the case with one checks the path only.
            let path = path.split('?').next().unwrap();
            assert_eq!(path_has_prefix(path, prefix), want, "{path} under {prefix}");
        }
    }
}
