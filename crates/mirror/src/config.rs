//! The seed's JSON config (`global`, `localCluster`, `remoteClusters`), overridden by flags and
//! `SSM_*` env (flags win; the binary resolves that with clap from [`KNOBS`] and hands the
//! given values in as [`Overrides`]), validated into [`Settings`] with an error naming the key
//! for every missing or bad value. The process's own knobs (listen address, failover grace,
//! Lease, …) come from the same table as [`RunKnobs`].

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

knobs::knobs! {
    CONFIG = "SSM_CONFIG", "config", "",
        "Required: the JSON config file (the seed's format: global, localCluster, remoteClusters).";
    KUBE_CONFIG = "SSM_KUBE_CONFIG", "kube-config", "",
        "The local cluster's kubeconfig (over localCluster.kubeConfigPath). Empty: in-cluster.";
    MIRROR_NS = "SSM_MIRROR_NS", "mirror-ns", "",
        "Namespace mirrors and global Services are written to (over global.mirrorNamespace).";
    MIRROR_SVC_LABEL_SELECTOR = "SSM_MIRROR_SVC_LABEL_SELECTOR", "mirror-svc-label-selector", "",
        "Remote Services to mirror, `key=value[,...]` (over global.mirrorSvcLabelSelector).";
    GLOBAL_SVC_LABEL_SELECTOR = "SSM_GLOBAL_SVC_LABEL_SELECTOR", "global-svc-label-selector", "",
        "Services of every cluster gathered into global Services (over global.globalSvcLabelSelector).";
    GLOBAL_SVC_ROUTING_STRATEGY_LABEL = "SSM_GLOBAL_SVC_TOPOLOGY_LABEL", "global-svc-routing-strategy-label", "",
        "Global sources that ask for topology-aware routing (over global.globalSvcRoutingStrategyLabel).";
    LISTEN = "GW_MIRROR_LISTEN", "listen", "0.0.0.0:8080",
        "Address of /healthz, /readyz and /metrics. (ghostwire; not in the seed)";
    FAILOVER_GRACE = "GW_MIRROR_FAILOVER_GRACE", "failover-grace", "30s",
        "A remote whose API does not answer for this long leaves the global Services. (ghostwire)";
    PROBE_INTERVAL = "GW_MIRROR_PROBE_INTERVAL", "probe-interval", "5s",
        "How often each remote API is probed (and how long a probe may take). (ghostwire)";
    RESYNC = "GW_MIRROR_RESYNC", "resync", "60s",
        "Reconcile at least this often, besides every change; 0: only on changes. (ghostwire)";
    CA_REFRESH = "GW_MIRROR_CA_REFRESH", "ca-refresh", "60s",
        "How often a remote's remoteCAURL is fetched again; a changed CA is checked against the pin. (ghostwire)";
    LEASE = "GW_MIRROR_LEASE", "lease", "ghostwire-mirror",
        "Lease (in the mirror namespace) for leader election among replicas. Empty: no election, this replica writes. (ghostwire)";
    LEASE_DURATION = "GW_MIRROR_LEASE_DURATION", "lease-duration", "15s",
        "How long the Lease holds without renewal. (ghostwire)";
    IDENTITY = "POD_NAME", "identity", "",
        "This replica's name in the Lease. Empty: the host name and process id. (ghostwire)";
}

/// A config error: which key, what value, why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: not the expected JSON: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("config key {key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The file as written (unknown keys are refused, so a typo does not pass silently).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub global: GlobalFile,
    #[serde(default)]
    pub local_cluster: LocalFile,
    #[serde(default)]
    pub remote_clusters: Vec<RemoteFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalFile {
    #[serde(default)]
    pub global_svc_label_selector: String,
    /// The seed's README calls it `globalSvcTopologyLabel`; both are accepted.
    #[serde(default, alias = "globalSvcTopologyLabel")]
    pub global_svc_routing_strategy_label: String,
    #[serde(default)]
    pub mirror_svc_label_selector: String,
    #[serde(default)]
    pub mirror_namespace: String,
    #[serde(default)]
    pub service_sync: bool,
    #[serde(default)]
    pub endpoint_slice_sync: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalFile {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub kube_config_path: String,
    #[serde(default)]
    pub zones: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RemoteFile {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub kube_config_path: String,
    #[serde(default, rename = "remoteAPIURL")]
    pub remote_api_url: String,
    #[serde(default, rename = "remoteCAURL")]
    pub remote_ca_url: String,
    /// The seed's README spells it `remoteSATokenPiath`; both are accepted.
    #[serde(default, rename = "remoteSATokenPath", alias = "remoteSATokenPiath")]
    pub remote_sa_token_path: String,
    /// ghostwire's addition: SHA-256 (hex) of the CA certificates `remoteCAURL` may serve.
    /// Without it, the first CA fetched is pinned.
    #[serde(default, rename = "remoteCASHA256")]
    pub remote_ca_sha256: Vec<String>,
    #[serde(default)]
    pub resync_period: Option<serde_json::Value>,
    #[serde(default)]
    pub service_prefix: String,
}

/// Flag or env values that win over the file (`None`: not given).
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub kube_config: Option<String>,
    pub mirror_ns: Option<String>,
    pub mirror_svc_label_selector: Option<String>,
    pub global_svc_label_selector: Option<String>,
    pub global_svc_routing_strategy_label: Option<String>,
}

impl Overrides {
    /// The `SSM_*` values given by flag or env (from the CLI's knob map).
    pub fn from_given(given: &BTreeMap<String, String>) -> Overrides {
        let get = |k: &str| given.get(k).cloned();
        Overrides {
            kube_config: get(KUBE_CONFIG),
            mirror_ns: get(MIRROR_NS),
            mirror_svc_label_selector: get(MIRROR_SVC_LABEL_SELECTOR),
            global_svc_label_selector: get(GLOBAL_SVC_LABEL_SELECTOR),
            global_svc_routing_strategy_label: get(GLOBAL_SVC_ROUTING_STRATEGY_LABEL),
        }
    }
}

/// The process's own knobs (not in the seed's file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunKnobs {
    pub config: PathBuf,
    pub listen: SocketAddr,
    pub failover_grace: Duration,
    pub probe_interval: Duration,
    pub resync: Duration,
    pub ca_refresh: Duration,
    /// `None`: no election.
    pub lease: Option<String>,
    pub lease_duration: Duration,
    pub identity: Option<String>,
}

fn knob_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    knobs::parse_duration(s)
}

impl RunKnobs {
    /// Resolves the knobs given by flag or env over the table's defaults; an error names the
    /// knob, its flag and the value.
    pub fn resolve(given: &BTreeMap<String, String>) -> Result<RunKnobs, knobs::ConfigError> {
        let none = BTreeMap::new();
        let r = knobs::Resolver {
            table: KNOBS,
            given,
            file: &none,
        };
        let positive = |s: &str| match knob_duration(s)? {
            d if d.is_zero() => Err("must be more than 0".to_string()),
            d => Ok(d),
        };
        Ok(RunKnobs {
            config: r.parse(CONFIG, |s| {
                if s.is_empty() {
                    Err("required: the JSON config file".into())
                } else {
                    Ok(PathBuf::from(s))
                }
            })?,
            listen: r.parse(LISTEN, |s| {
                s.parse()
                    .map_err(|e| format!("expected ADDRESS:PORT ({e})"))
            })?,
            failover_grace: r.parse(FAILOVER_GRACE, knob_duration)?,
            probe_interval: r.parse(PROBE_INTERVAL, positive)?,
            resync: r.parse(RESYNC, knob_duration)?,
            ca_refresh: r.parse(CA_REFRESH, positive)?,
            lease: Some(r.raw(LEASE)).filter(|l| !l.is_empty()),
            lease_duration: r.parse(LEASE_DURATION, |s| match positive(s)? {
                d if d < Duration::from_secs(1) => Err("must be at least 1s".to_string()),
                d => Ok(d),
            })?,
            identity: Some(r.raw(IDENTITY)).filter(|i| !i.is_empty()),
        })
    }
}

/// A label selector of the `k=v,k2=v2` form (equality only, as the seed uses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector(pub Vec<(String, String)>);

impl Selector {
    pub fn parse(key: &str, s: &str) -> Result<Selector, ConfigError> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                invalid(
                    key,
                    format!("{s:?}: expected key=value[,key=value], got {part:?}"),
                )
            })?;
            let (k, v) = (k.trim().trim_end_matches('='), v.trim());
            if k.is_empty() {
                return Err(invalid(key, format!("{s:?}: empty label key")));
            }
            out.push((k.to_string(), v.to_string()));
        }
        if out.is_empty() {
            return Err(invalid(key, "must be set (e.g. \"mirror=true\")"));
        }
        Ok(Selector(out))
    }

    /// Whether `labels` match every term.
    pub fn matches(&self, labels: Option<&std::collections::BTreeMap<String, String>>) -> bool {
        self.0
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
    }

    /// The `labelSelector` query form.
    pub fn query(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// How to reach a remote API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    Kubeconfig(PathBuf),
    Token {
        api_url: String,
        ca_url: String,
        token_path: PathBuf,
        /// Lowercase hex; empty: trust on first use.
        ca_sha256: Vec<String>,
    },
}

#[derive(Debug, Clone)]
pub struct Remote {
    pub name: String,
    pub access: Access,
    /// Zero: off.
    pub resync: Duration,
    pub prefix: String,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub mirror_selector: Selector,
    pub global_selector: Selector,
    pub routing_selector: Selector,
    pub mirror_namespace: String,
    pub service_sync: bool,
    pub local_name: String,
    /// `None`: in-cluster.
    pub local_kubeconfig: Option<PathBuf>,
    /// Never empty: `["local"]` when the file gives none.
    pub local_zones: Vec<String>,
    pub remotes: Vec<Remote>,
}

/// `"10s"`, `"1m30s"`, `"250ms"`, `"1h"`; a bare number is nanoseconds (as Go's JSON of a
/// `time.Duration`); `0` or `"0"` is off.
pub fn parse_duration(key: &str, v: &serde_json::Value) -> Result<Duration, ConfigError> {
    let text = match v {
        serde_json::Value::Number(n) => {
            return n.as_u64().map(Duration::from_nanos).ok_or_else(|| {
                invalid(
                    key,
                    format!("{n}: not a whole, non-negative number of nanoseconds"),
                )
            });
        }
        serde_json::Value::String(s) => s.trim(),
        serde_json::Value::Null => return Ok(Duration::ZERO),
        other => {
            return Err(invalid(
                key,
                format!("{other}: expected a duration such as \"10s\""),
            ));
        }
    };
    if text == "0" || text.is_empty() {
        return Ok(Duration::ZERO);
    }
    let bad = || {
        invalid(
            key,
            format!("{text:?}: expected a duration such as \"10s\", \"1m30s\" or \"500ms\""),
        )
    };
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(digits);
        let n: f64 = num.parse().map_err(|_| bad())?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::from_secs_f64(n * scale);
        rest = tail;
    }
    Ok(total)
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Settings {
    /// Reads and validates the file at `path` with `overrides` on top.
    pub fn load(path: &Path, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: shown.clone(),
            source,
        })?;
        let file: File = serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: shown,
            source,
        })?;
        Settings::from_file(file, overrides)
    }

    pub fn from_file(file: File, o: &Overrides) -> Result<Settings, ConfigError> {
        let pick =
            |flag: &Option<String>, file: &str| flag.clone().unwrap_or_else(|| file.to_string());
        let g = &file.global;
        let mirror_selector = Selector::parse(
            "global.mirrorSvcLabelSelector (-mirror-svc-label-selector)",
            &pick(&o.mirror_svc_label_selector, &g.mirror_svc_label_selector),
        )?;
        let global_selector = Selector::parse(
            "global.globalSvcLabelSelector (-global-svc-label-selector)",
            &pick(&o.global_svc_label_selector, &g.global_svc_label_selector),
        )?;
        let routing_selector = Selector::parse(
            "global.globalSvcRoutingStrategyLabel (-global-svc-routing-strategy-label)",
            &pick(
                &o.global_svc_routing_strategy_label,
                &g.global_svc_routing_strategy_label,
            ),
        )?;
        let mirror_namespace = pick(&o.mirror_ns, &g.mirror_namespace);
        if !dns_label(&mirror_namespace) {
            return Err(invalid(
                "global.mirrorNamespace (-mirror-ns)",
                format!("{mirror_namespace:?}: must be a namespace name (a DNS label)"),
            ));
        }
        let l = &file.local_cluster;
        if !dns_label(&l.name) {
            return Err(invalid(
                "localCluster.name",
                format!("{:?}: must be set, a DNS label", l.name),
            ));
        }
        let local_kubeconfig = match (&o.kube_config, l.kube_config_path.as_str()) {
            (Some(k), _) if !k.is_empty() => Some(PathBuf::from(k)),
            (_, "") => None,
            (_, k) => Some(PathBuf::from(k)),
        };
        let local_zones = if l.zones.is_empty() {
            vec!["local".to_string()]
        } else {
            l.zones.clone()
        };
        if file.remote_clusters.is_empty() {
            return Err(invalid(
                "remoteClusters",
                "needs at least one remote cluster",
            ));
        }
        let mut remotes: Vec<Remote> = Vec::new();
        for (i, r) in file.remote_clusters.iter().enumerate() {
            let key = |k: &str| format!("remoteClusters[{i}].{k}");
            if !dns_label(&r.name) {
                return Err(invalid(
                    key("name"),
                    format!("{:?}: must be set, a DNS label", r.name),
                ));
            }
            if r.name == l.name || remotes.iter().any(|x| x.name == r.name) {
                return Err(invalid(
                    key("name"),
                    format!("{:?}: names a cluster twice", r.name),
                ));
            }
            let access = if !r.kube_config_path.is_empty() {
                Access::Kubeconfig(PathBuf::from(&r.kube_config_path))
            } else if !r.remote_api_url.is_empty()
                && !r.remote_ca_url.is_empty()
                && !r.remote_sa_token_path.is_empty()
            {
                let url = |k: &str, v: &str, schemes: &[&str]| -> Result<(), ConfigError> {
                    let ok = v
                        .split_once("://")
                        .is_some_and(|(s, rest)| schemes.contains(&s) && !rest.is_empty());
                    if ok {
                        Ok(())
                    } else {
                        Err(invalid(
                            key(k),
                            format!("{v:?}: expected a {} URL", schemes.join(" or ")),
                        ))
                    }
                };
                url("remoteAPIURL", &r.remote_api_url, &["https", "http"])?;
                url("remoteCAURL", &r.remote_ca_url, &["https", "http", "file"])?;
                let mut ca_sha256 = Vec::new();
                for (j, h) in r.remote_ca_sha256.iter().enumerate() {
                    let h = h.trim().trim_start_matches("sha256:").to_ascii_lowercase();
                    if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                        return Err(invalid(
                            key(&format!("remoteCASHA256[{j}]")),
                            format!(
                                "{h:?}: expected 64 hex digits (the SHA-256 of a DER certificate)"
                            ),
                        ));
                    }
                    ca_sha256.push(h);
                }
                Access::Token {
                    api_url: r.remote_api_url.clone(),
                    ca_url: r.remote_ca_url.clone(),
                    token_path: PathBuf::from(&r.remote_sa_token_path),
                    ca_sha256,
                }
            } else {
                return Err(invalid(
                    format!("remoteClusters[{i}] ({})", r.name),
                    "set kubeConfigPath, or all of remoteAPIURL, remoteCAURL and remoteSATokenPath",
                ));
            };
            if !dns_label(&r.service_prefix) {
                return Err(invalid(
                    key("servicePrefix"),
                    format!("{:?}: must be set, a DNS label", r.service_prefix),
                ));
            }
            if r.service_prefix == "gl" {
                return Err(invalid(
                    key("servicePrefix"),
                    "\"gl\" is the global services' prefix",
                ));
            }
            if let Some(other) = remotes.iter().find(|x| x.prefix == r.service_prefix) {
                return Err(invalid(
                    key("servicePrefix"),
                    format!("{:?}: also the prefix of {}", r.service_prefix, other.name),
                ));
            }
            let resync = match &r.resync_period {
                None => Duration::ZERO,
                Some(v) => parse_duration(&key("resyncPeriod"), v)?,
            };
            remotes.push(Remote {
                name: r.name.clone(),
                access,
                resync,
                prefix: r.service_prefix.clone(),
            });
        }
        Ok(Settings {
            mirror_selector,
            global_selector,
            routing_selector,
            mirror_namespace,
            service_sync: g.service_sync,
            local_name: l.name.clone(),
            local_kubeconfig,
            local_zones,
            remotes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn good() -> serde_json::Value {
        json!({
            "global": {
                "globalSvcLabelSelector": "mirror.semaphore.uw.io/global-service=true",
                "globalSvcRoutingStrategyLabel": "mirror.semaphore.uw.io/global-service-routing-strategy=local-first",
                "mirrorSvcLabelSelector": "mirror.semaphore.uw.io/mirror-service=true",
                "mirrorNamespace": "semaphore",
                "serviceSync": true
            },
            "localCluster": {"name": "local", "kubeConfigPath": "/path/to/local/kubeconfig"},
            "remoteClusters": [{
                "name": "clustera", "remoteCAURL": "https://ca", "remoteAPIURL": "https://api",
                "remoteSATokenPath": "/path/to/token", "resyncPeriod": "10s", "servicePrefix": "cluster-a"
            }]
        })
    }

    fn load(v: serde_json::Value, o: &Overrides) -> Result<Settings, ConfigError> {
        Settings::from_file(
            serde_json::from_value(v).map_err(|source| ConfigError::Parse {
                path: "x".into(),
                source,
            })?,
            o,
        )
    }

    #[test]
    fn the_seed_example_loads() {
        let s = load(good(), &Overrides::default()).unwrap();
        assert_eq!(s.mirror_namespace, "semaphore");
        assert!(s.service_sync);
        assert_eq!(s.local_zones, ["local"]);
        assert_eq!(s.remotes[0].resync, Duration::from_secs(10));
        assert_eq!(s.remotes[0].prefix, "cluster-a");
        assert!(matches!(s.remotes[0].access, Access::Token { .. }));
        assert_eq!(
            s.mirror_selector.query(),
            "mirror.semaphore.uw.io/mirror-service=true"
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let o = Overrides {
            mirror_ns: Some("other".into()),
            mirror_svc_label_selector: Some("a=b".into()),
            kube_config: Some("/k".into()),
            ..Default::default()
        };
        let s = load(good(), &o).unwrap();
        assert_eq!(s.mirror_namespace, "other");
        assert_eq!(s.mirror_selector, Selector(vec![("a".into(), "b".into())]));
        assert_eq!(s.local_kubeconfig, Some(PathBuf::from("/k")));
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let cases: Vec<(&str, serde_json::Value, &str)> = vec![
            (
                "/global/mirrorSvcLabelSelector",
                json!(""),
                "global.mirrorSvcLabelSelector",
            ),
            (
                "/global/globalSvcLabelSelector",
                json!("novalue"),
                "global.globalSvcLabelSelector",
            ),
            (
                "/global/globalSvcRoutingStrategyLabel",
                json!(""),
                "global.globalSvcRoutingStrategyLabel",
            ),
            (
                "/global/mirrorNamespace",
                json!("Bad_NS"),
                "global.mirrorNamespace",
            ),
            ("/localCluster/name", json!(""), "localCluster.name"),
            ("/remoteClusters", json!([]), "remoteClusters"),
            (
                "/remoteClusters/0/name",
                json!(""),
                "remoteClusters[0].name",
            ),
            (
                "/remoteClusters/0/name",
                json!("local"),
                "remoteClusters[0].name",
            ),
            (
                "/remoteClusters/0/remoteCAURL",
                json!(""),
                "remoteClusters[0] (clustera)",
            ),
            (
                "/remoteClusters/0/servicePrefix",
                json!(""),
                "remoteClusters[0].servicePrefix",
            ),
            (
                "/remoteClusters/0/remoteAPIURL",
                json!("api.example"),
                "remoteClusters[0].remoteAPIURL",
            ),
            (
                "/remoteClusters/0/remoteCAURL",
                json!("ftp://ca"),
                "remoteClusters[0].remoteCAURL",
            ),
            (
                "/remoteClusters/0/servicePrefix",
                json!("gl"),
                "remoteClusters[0].servicePrefix",
            ),
            (
                "/remoteClusters/0/resyncPeriod",
                json!("ten seconds"),
                "remoteClusters[0].resyncPeriod",
            ),
            (
                "/remoteClusters/0/resyncPeriod",
                json!(-1),
                "remoteClusters[0].resyncPeriod",
            ),
        ];
        for (ptr, value, key) in cases {
            let mut v = good();
            *v.pointer_mut(ptr).unwrap() = value.clone();
            let err = load(v, &Overrides::default()).unwrap_err().to_string();
            assert!(err.contains(key), "{ptr}={value}: {err}");
        }
        let mut v = good();
        v["remoteClusters"][0]["remoteCASHA256"] = json!(["abc"]);
        let err = load(v, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("remoteClusters[0].remoteCASHA256[0]"), "{err}");
        let mut v = good();
        v["global"]["mirrorNamespaec"] = json!("x");
        let err = load(v, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains("mirrorNamespaec"), "{err}");
    }

    #[test]
    fn knobs_resolve_and_errors_name_the_knob() {
        let given = |kv: &[(&str, &str)]| -> BTreeMap<String, String> {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let k = RunKnobs::resolve(&given(&[(CONFIG, "/c.json"), (LEASE, "")])).unwrap();
        assert_eq!(k.config, PathBuf::from("/c.json"));
        assert_eq!(k.failover_grace, Duration::from_secs(30));
        assert_eq!(k.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(k.lease, None);
        let e = RunKnobs::resolve(&given(&[])).unwrap_err().to_string();
        assert!(e.contains("SSM_CONFIG") && e.contains("--config"), "{e}");
        for (knob, bad) in [
            (LISTEN, "8080"),
            (FAILOVER_GRACE, "soon"),
            (PROBE_INTERVAL, "0"),
            (CA_REFRESH, "1x"),
            (LEASE_DURATION, "500ms"),
        ] {
            let e = RunKnobs::resolve(&given(&[(CONFIG, "/c"), (knob, bad)]))
                .unwrap_err()
                .to_string();
            assert!(e.contains(knob) && e.contains(bad), "{knob}={bad}: {e}");
        }
        let o = Overrides::from_given(&given(&[(MIRROR_NS, "m"), (KUBE_CONFIG, "/k")]));
        assert_eq!(o.mirror_ns.as_deref(), Some("m"));
        assert_eq!(o.kube_config.as_deref(), Some("/k"));
        assert_eq!(o.global_svc_label_selector, None);
    }

    /// docs/configuration.md carries the mirror's knob table between markers;
    /// `GW_UPDATE_DOCS=1 cargo test -p mirror docs` rewrites it.
    #[test]
    fn docs_table_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
        knobs::check_doc_table(path, "mirror", KNOBS).unwrap();
    }

    #[test]
    fn durations() {
        let d = |v| parse_duration("k", &v);
        assert_eq!(d(json!("10s")).unwrap(), Duration::from_secs(10));
        assert_eq!(d(json!("1m30s")).unwrap(), Duration::from_secs(90));
        assert_eq!(d(json!("250ms")).unwrap(), Duration::from_millis(250));
        assert_eq!(d(json!("0")).unwrap(), Duration::ZERO);
        assert_eq!(d(json!(1_000_000_000u64)).unwrap(), Duration::from_secs(1));
        assert!(d(json!("10")).is_err());
        assert!(d(json!("10x")).is_err());
        assert!(d(json!(true)).is_err());
    }
}
