//! The preview switch's settings: one table of knobs, resolved with the
//! precedence flag > `GW_*` environment > defaults file > built-in default,
//! and validated into typed [`Settings`] before anything is touched.

use ipnet::IpNet;
use netrules::{BackendKind, Hook};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use knobs::parse_bool;
pub use knobs::{ConfigError, Knob, parse_duration};

knobs::knobs! {
    NAMESPACE = "GW_NAMESPACE", "namespace", "",
        "Namespace whose Services are paired. Empty: POD_NAMESPACE, else `default`.", @"namespace";
    ROLE_LABEL_KEY = "GW_ROLE_LABEL_KEY", "role-label-key", "role",
        "Pod label that says whether this pod is active or preview.", @"roleLabelKey";
    ROLE_ACTIVE = "GW_ROLE_ACTIVE", "role-active", "active",
        "Label value meaning active: the jump is off.", @"roleActive";
    ROLE_PREVIEW = "GW_ROLE_PREVIEW", "role-preview", "preview",
        "Label value meaning preview: the jump is on.", @"rolePreview";
    SVC_PREVIEW_PATTERN = "GW_SVC_PREVIEW_PATTERN", "svc-preview-pattern", "{{name}}-preview",
        "Name of the preview Service of Service `name`; must contain `{{name}}`.", @"svcPreviewPattern";
    ACTIVE_SUFFIX = "GW_ACTIVE_SUFFIX", "active-suffix", "-active",
        "A Service `X<active-suffix>` pairs with `X<preview-suffix>`. Empty: off.", @"activeSuffix";
    PREVIEW_SUFFIX = "GW_PREVIEW_SUFFIX", "preview-suffix", "-preview",
        "Suffix paired with the active suffix.", @"previewSuffix";
    DNS_SUFFIX = "GW_DNS_SUFFIX", "dns-suffix", ".svc.cluster.local",
        "Cluster DNS suffix, used for the names in the DNAT map.", @"dnsSuffix";
    NAT_CHAIN = "GW_NAT_CHAIN", "nat-chain", "CANARY_DNAT",
        "Name of the DNAT chain (letters, digits, `_`, `-`; at most 28).", @"natChain";
    DNAT_MAP = "GW_IPTABLES_DNAT_MAP", "dnat-map", "/shared/dnat.map",
        "Where init writes the audit map of its mappings. Empty: do not write it.";
    JUMP_HOOK = "GW_JUMP_HOOK", "jump-hook", "OUTPUT",
        "Where the jump to the chain goes: OUTPUT (the pod's own traffic) or PREROUTING.", @"jumpHook";
    EXCLUDE_CIDRS = "GW_EXCLUDE_CIDRS", "exclude-cidrs", "auto",
        "Comma-separated CIDRs never rewritten. `auto`: the IMDS addresses and the nameservers of /etc/resolv.conf.", @"excludeCidrs";
    POLL_INTERVAL = "GW_POLL_INTERVAL", "poll-interval", "2s",
        "Watcher: how often to read the Pod while no watch can be held.", @"pollInterval";
    REFRESH_INTERVAL = "GW_REFRESH_INTERVAL", "refresh-interval", "",
        "Watcher: also re-list the Services this often (they are watched anyway); the table is rebuilt only if it differs. Empty: never.", @"refreshInterval";
    IPV6 = "GW_IPV6", "ipv6", "auto",
        "Which ClusterIP families are mapped. `auto`: those of the Pod's own IPs (`POD_IPS`, else the addresses of its interfaces; IPv4 when none is known). `true`: IPv4 and IPv6. `false`: IPv4 only.", @"ipv6";
    BACKEND = "GW_BACKEND", "backend", "auto",
        "Rule backend: auto, nftables, iptables, iptables-nft or iptables-legacy.", @"backend";
    HTTP_ADDR = "GW_HTTP_ADDR", "http-addr", "[::]:8081",
        "Watcher: address of /healthz, /readyz and /metrics. `[::]` listens on IPv6 and IPv4 (IPV6_V6ONLY off), and falls back to 0.0.0.0 when the kernel has no IPv6.";
    FLUSH_CONNTRACK = "GW_FLUSH_CONNTRACK", "flush-conntrack", "keep",
        "Watcher: what a flip does to established connections to the remapped ClusterIP:ports. `keep` (or `false`): they stay on their old target. `cut` (or `true`): their conntrack entries are deleted (UDP flows move) and the Pod's TCP sockets to them are destroyed (SOCK_DESTROY), so clients reconnect to the new target.", @"flushConntrack";
    STRICT_PAIRING = "GW_STRICT_PAIRING", "strict-pairing", "false",
        "Honour a preview Service only if its `ghostwire.dev/preview-of` annotation names the active Service.", @"strictPairing";
    LABELS_FILE = "GW_LABELS_FILE", "labels-file", "",
        "Init: the Pod's labels as a downward-API volume writes them; the jump is set from the role label in it. Empty: init keeps the jump as it finds it.";
    API_TIMEOUT = "GW_API_TIMEOUT", "api-timeout", "30s",
        "How long to keep retrying an unreachable Kubernetes API before giving up. Watcher: the bound on one API call (at most 10 s) and on a silent watch; /readyz fails when the Pod was not heard of for twice this.";
    API_UNREACHABLE = "GW_API_UNREACHABLE", "api-unreachable", "fail",
        "Init: when the API cannot be reached within GW_API_TIMEOUT, `fail` (exit 3: the Pod does not start, and the kubelet retries it) or `active` (start with no pairs, so every Service reaches its active backend; a watcher fills the pairs in once the API answers, without one the Pod stays on active).", @"apiUnreachable";
    SELF_TEST = "GW_SELF_TEST", "self-test", "unready",
        "Whether connections to ClusterIPs really reach the switch's chain here (they do not where eBPF socket load balancing, such as Cilium's kube-proxy replacement, rewrites them in connect()): a probe connection to an active ClusterIP, found in conntrack. Only a proven rewrite counts; an inconclusive probe is a warning and never stops a Pod. `unready`: an error log, the metric, and the watcher is not ready (init goes on). `fail`: the same, and init exits 5 so the Pod does not start. `warn`: the error log and the metric only. `off`: no probe.";
    MODE = "GW_SWITCH_MODE", "switch-mode", "dnat",
        "`dnat`: a DNAT chain and one jump in the kernel. `mesh`: no kernel rules; init and watcher write the mapping and whether it is on to GW_IPTABLES_DNAT_MAP as JSON, and the mesh proxy routes by it (the injector sets this when a Pod also asks for the mesh).";
}

/// The IMDS addresses excluded by default (AWS, GCP, Azure use the IPv4 one; AWS also the IPv6 one).
pub const IMDS: [&str; 2] = ["169.254.169.254/32", "fd00:ec2::254/128"];

/// The nftables table (iptables comment tag) that holds the switch's rules.
pub const TABLE: &str = "ghostwire_switch";

/// Where raw values come from, highest precedence first.
#[derive(Debug, Default, Clone)]
pub struct Sources {
    /// Values given as flags or `GW_*` environment variables (clap merges the two).
    pub cli: BTreeMap<String, String>,
    /// The defaults file (a mounted ConfigMap).
    pub file: BTreeMap<String, String>,
    /// `POD_NAMESPACE` from the downward API.
    pub pod_namespace: Option<String>,
    /// Contents of /etc/resolv.conf, for the `auto` exclusions; its nameservers are never remapped.
    pub resolv_conf: String,
    /// `KUBERNETES_SERVICE_HOST`: the API server's ClusterIP, never remapped.
    pub api_server_host: Option<String>,
    /// The Pod's own IPs (`POD_IPS`, else its interfaces' addresses); empty when unknown.
    /// `GW_IPV6=auto` maps the families found here.
    pub pod_ips: Vec<std::net::IpAddr>,
}

/// What a flip does to established connections (`GW_FLUSH_CONNTRACK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFlip {
    /// Leave them on their old target.
    Keep,
    /// Delete their conntrack entries and destroy the Pod's TCP sockets to the remapped pairs.
    Cut,
}

/// The Pod's IPs from `POD_IPS` (the downward API's `status.podIPs`, comma-separated).
/// Malformed entries are returned apart, each with its reason, for the caller to log.
pub fn parse_pod_ips(v: &str) -> (Vec<std::net::IpAddr>, Vec<String>) {
    let mut ips = Vec::new();
    let mut bad = Vec::new();
    for a in v.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        match a.parse() {
            Ok(ip) => ips.push(ip),
            Err(_) => bad.push(format!("POD_IPS entry {a:?} is not an IP address; ignored")),
        }
    }
    (ips, bad)
}

/// The name of a preview Service, made from the active one's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    prefix: String,
    suffix: String,
}

impl Pattern {
    /// Accepts `{{name}}`, with optional spaces and Go template forms `{{.name}}` / `{{.Name}}`.
    pub fn parse(s: &str) -> Result<Pattern, String> {
        let open = s.find("{{").ok_or("it has no {{name}} placeholder")?;
        let close = s[open..]
            .find("}}")
            .map(|i| open + i)
            .ok_or("unclosed {{")?;
        let inner = s[open + 2..close].trim();
        if !matches!(inner, "name" | ".name" | ".Name") {
            return Err(format!(
                "unknown placeholder {{{{{inner}}}}}, expected {{{{name}}}}"
            ));
        }
        let (prefix, suffix) = (&s[..open], &s[close + 2..]);
        if suffix.contains("{{") || prefix.contains("}}") {
            return Err("it may contain only one placeholder".into());
        }
        if prefix.is_empty() && suffix.is_empty() {
            return Err("the preview name would equal the active name".into());
        }
        let ok = |p: &str| {
            p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        };
        if !ok(prefix) || !ok(suffix) {
            return Err("the text around {{name}} may hold only a-z, 0-9 and '-'".into());
        }
        Ok(Pattern {
            prefix: prefix.into(),
            suffix: suffix.into(),
        })
    }

    pub fn apply(&self, name: &str) -> String {
        format!("{}{name}{}", self.prefix, self.suffix)
    }
}

/// Where the switch acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The kernel's DNAT chain and jump.
    Dnat,
    /// A JSON map file the mesh proxy reads (see [`crate::dnat_map::MeshMap`]).
    Mesh,
}

/// What a failed self-test does (`GW_SELF_TEST`); see `selftest::Outcome::fails_init`
/// and `selftest::Outcome::makes_unready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelfTest {
    /// Init exits 5; the watcher is not ready.
    Fail,
    /// The watcher is not ready; init goes on (the default).
    Unready,
    /// Logged at error and counted; nothing stops.
    Warn,
    /// No probe.
    Off,
}

/// What init does when the API cannot be reached (`GW_API_UNREACHABLE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiUnreachable {
    /// Fail the Pod (exit 3).
    Fail,
    /// Start with no pairs: routing on active.
    Active,
}

/// Which rule backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Fixed(BackendKind),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub namespace: String,
    pub role_label_key: String,
    pub role_active: String,
    pub role_preview: String,
    pub preview_pattern: Pattern,
    pub active_suffix: String,
    pub preview_suffix: String,
    pub dns_suffix: String,
    pub nat_chain: String,
    pub dnat_map: Option<PathBuf>,
    pub jump_hook: Hook,
    pub exclude_cidrs: Vec<IpNet>,
    pub poll_interval: Duration,
    pub refresh_interval: Option<Duration>,
    /// Map IPv4 ClusterIPs (and serve IPv4 exclusions).
    pub ipv4: bool,
    /// Map IPv6 ClusterIPs.
    pub ipv6: bool,
    pub backend: BackendChoice,
    pub api_timeout: Duration,
    pub http_addr: std::net::SocketAddr,
    pub on_flip: OnFlip,
    pub strict_pairing: bool,
    pub api_unreachable: ApiUnreachable,
    pub self_test: SelfTest,
    pub mode: Mode,
    /// Init: the downward-API labels file (`GW_LABELS_FILE`).
    pub labels_file: Option<PathBuf>,
    /// The API server's address (`KUBERNETES_SERVICE_HOST`), when it is an IP.
    pub api_server: Option<std::net::IpAddr>,
    /// The nameservers of /etc/resolv.conf (the cluster DNS).
    pub nameservers: Vec<std::net::IpAddr>,
}

/// The nameserver addresses of a resolv.conf, as host prefixes.
pub fn resolv_nameservers(resolv_conf: &str) -> Vec<IpNet> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().split('%').next()?.parse::<std::net::IpAddr>().ok())
        .map(IpNet::from)
        .collect()
}

/// Reads a defaults file: `KEY=VALUE` lines (`#` comments), or a directory with
/// one file per key, as a ConfigMap volume mounts it.
pub fn read_defaults_file(path: &std::path::Path) -> std::io::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if path.is_dir() {
        for e in std::fs::read_dir(path)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            // ConfigMap volumes hold `..data` links and dotfiles beside the keys.
            if name.starts_with('.') || !e.path().is_file() {
                continue;
            }
            out.insert(name, std::fs::read_to_string(e.path())?.trim().to_string());
        }
        return Ok(out);
    }
    for (i, line) in std::fs::read_to_string(path)?.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("line {}: expected KEY=VALUE, got {line:?}", i + 1),
            )
        })?;
        out.insert(k.trim().to_string(), v.trim().trim_matches('"').to_string());
    }
    Ok(out)
}

impl Settings {
    /// The address families whose ClusterIPs are mapped.
    pub fn families(&self) -> Vec<netrules::Family> {
        let mut f = Vec::new();
        if self.ipv4 {
            f.push(netrules::Family::Ipv4);
        }
        if self.ipv6 {
            f.push(netrules::Family::Ipv6);
        }
        f
    }

    /// Whether ClusterIPs of `f` are mapped.
    pub fn serves(&self, f: netrules::Family) -> bool {
        match f {
            netrules::Family::Ipv4 => self.ipv4,
            netrules::Family::Ipv6 => self.ipv6,
        }
    }

    /// Resolves every knob and validates it; the first bad one is reported with its name and value.
    pub fn resolve(src: &Sources) -> Result<Settings, ConfigError> {
        let raw = |env: &'static str| -> (String, &'static Knob) {
            let knob = KNOBS.iter().find(|k| k.env == env).expect("knob in table");
            let v = src
                .cli
                .get(env)
                .or_else(|| src.file.get(env))
                .cloned()
                .unwrap_or_else(|| knob.default.to_string());
            (v, knob)
        };
        let get = |env| raw(env).0;
        let check = |env: &'static str, f: &dyn Fn(&str) -> Result<(), String>| {
            let (v, k) = raw(env);
            f(&v).map_err(|reason| ConfigError {
                knob: k.env,
                flag: k.flag,
                value: v.clone(),
                reason,
            })
        };
        fn parsed<T>(
            raw: &dyn Fn(&'static str) -> (String, &'static Knob),
            env: &'static str,
            f: impl Fn(&str) -> Result<T, String>,
        ) -> Result<T, ConfigError> {
            let (v, k) = raw(env);
            f(&v).map_err(|reason| ConfigError {
                knob: k.env,
                flag: k.flag,
                value: v,
                reason,
            })
        }
        let non_empty = |s: &str| {
            if s.trim().is_empty() {
                Err("must not be empty".to_string())
            } else {
                Ok(())
            }
        };
        for k in [ROLE_LABEL_KEY, ROLE_ACTIVE, ROLE_PREVIEW] {
            check(k, &non_empty)?;
        }
        check(PREVIEW_SUFFIX, &non_empty)?;
        check(NAT_CHAIN, &|s| {
            netrules::check_name("chain", s).map_err(|e| e.to_string())
        })?;
        let (ipv4, ipv6) = parsed(&raw, IPV6, |s| match s.trim() {
            "auto" if src.pod_ips.is_empty() => Ok((true, false)),
            "auto" => Ok((
                src.pod_ips.iter().any(std::net::IpAddr::is_ipv4),
                src.pod_ips.iter().any(std::net::IpAddr::is_ipv6),
            )),
            other => parse_bool(other)
                .map(|v6| (true, v6))
                .map_err(|_| "expected auto, true or false".to_string()),
        })?;
        let exclude_cidrs = parsed(&raw, EXCLUDE_CIDRS, |s| {
            if s.trim() == "auto" {
                let mut v: Vec<IpNet> = IMDS.iter().map(|c| c.parse().expect("valid")).collect();
                v.extend(resolv_nameservers(&src.resolv_conf));
                return Ok(v);
            }
            s.split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(|c| {
                    c.parse::<IpNet>()
                        .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from))
                        .map(|n| n.trunc())
                        .map_err(|_| format!("{c:?} is not a CIDR (e.g. 10.0.0.0/8) or an address"))
                })
                .collect()
        })?;
        let positive = |s: &str| match parse_duration(s)? {
            d if d.is_zero() => Err("must be greater than zero".to_string()),
            d => Ok(d),
        };
        let refresh_interval = parsed(&raw, REFRESH_INTERVAL, |s| {
            if s.trim().is_empty() {
                Ok(None)
            } else {
                positive(s).map(Some)
            }
        })?;
        let namespace = match get(NAMESPACE) {
            ns if !ns.is_empty() => ns,
            _ => src
                .pod_namespace
                .clone()
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "default".into()),
        };
        Ok(Settings {
            namespace,
            role_label_key: get(ROLE_LABEL_KEY),
            role_active: get(ROLE_ACTIVE),
            role_preview: get(ROLE_PREVIEW),
            preview_pattern: parsed(&raw, SVC_PREVIEW_PATTERN, Pattern::parse)?,
            active_suffix: get(ACTIVE_SUFFIX),
            preview_suffix: get(PREVIEW_SUFFIX),
            dns_suffix: get(DNS_SUFFIX),
            nat_chain: get(NAT_CHAIN),
            dnat_map: Some(get(DNAT_MAP))
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
            jump_hook: parsed(&raw, JUMP_HOOK, |s| match s.parse::<Hook>() {
                Ok(h @ (Hook::Output | Hook::Prerouting)) => Ok(h),
                Err(_) => Err(format!("unknown hook {s:?}; expected OUTPUT or PREROUTING")),
                Ok(h) => Err(format!(
                    "{} cannot hold the switch's jump (a DNAT there would come after routing); expected OUTPUT or PREROUTING",
                    h.iptables_chain()
                )),
            })?,
            exclude_cidrs: exclude_cidrs
                .into_iter()
                .filter(|c| match c {
                    IpNet::V4(_) => ipv4,
                    IpNet::V6(_) => ipv6,
                })
                .collect(),
            poll_interval: parsed(&raw, POLL_INTERVAL, positive)?,
            refresh_interval,
            ipv4,
            ipv6,
            backend: parsed(&raw, BACKEND, |s| match s {
                "auto" => Ok(BackendChoice::Auto),
                other => other.parse().map(BackendChoice::Fixed),
            })?,
            api_timeout: parsed(&raw, API_TIMEOUT, positive)?,
            http_addr: parsed(&raw, HTTP_ADDR, |s| {
                s.parse().map_err(|_| {
                    "expected ADDRESS:PORT, e.g. 0.0.0.0:8081 or [::]:8081".to_string()
                })
            })?,
            on_flip: parsed(&raw, FLUSH_CONNTRACK, |s| match s.trim() {
                "keep" | "false" => Ok(OnFlip::Keep),
                "cut" | "true" => Ok(OnFlip::Cut),
                _ => Err("expected keep or cut (false or true)".to_string()),
            })?,
            strict_pairing: parsed(&raw, STRICT_PAIRING, parse_bool)?,
            self_test: parsed(&raw, SELF_TEST, |s| match s.trim() {
                "fail" => Ok(SelfTest::Fail),
                "unready" => Ok(SelfTest::Unready),
                "warn" => Ok(SelfTest::Warn),
                "off" => Ok(SelfTest::Off),
                _ => Err("expected unready, fail, warn or off".to_string()),
            })?,
            api_unreachable: parsed(&raw, API_UNREACHABLE, |s| match s.trim() {
                "fail" => Ok(ApiUnreachable::Fail),
                "active" => Ok(ApiUnreachable::Active),
                _ => Err("expected fail or active".to_string()),
            })?,
            mode: parsed(&raw, MODE, |s| match s.trim() {
                "dnat" => Ok(Mode::Dnat),
                "mesh" => Ok(Mode::Mesh),
                _ => Err("expected dnat or mesh".to_string()),
            })?,
            labels_file: Some(get(LABELS_FILE))
                .filter(|p| !p.trim().is_empty())
                .map(PathBuf::from),
            api_server: src
                .api_server_host
                .as_deref()
                .and_then(|h| h.trim().parse().ok()),
            nameservers: resolv_nameservers(&src.resolv_conf)
                .iter()
                .map(IpNet::addr)
                .collect(),
        })
    }
}

/// Renders the knob table as Markdown (docs/configuration.md is checked against it).
pub fn knobs_markdown() -> String {
    knobs::markdown(KNOBS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&str, &str)]) -> Sources {
        Sources {
            cli: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            resolv_conf: "search x\nnameserver 10.96.0.10\nnameserver fd00:10:96::a\n".into(),
            ..Default::default()
        }
    }

    #[test]
    fn defaults_match_the_seed() {
        let s = Settings::resolve(&with(&[])).unwrap();
        assert_eq!(s.namespace, "default");
        assert_eq!(s.nat_chain, "CANARY_DNAT");
        assert_eq!(s.jump_hook, Hook::Output);
        assert_eq!(s.poll_interval, Duration::from_secs(2));
        assert_eq!(s.refresh_interval, None);
        assert_eq!(s.dnat_map, Some(PathBuf::from("/shared/dnat.map")));
        assert_eq!(s.preview_pattern.apply("orders"), "orders-preview");
        // IPv4 IMDS and the cluster DNS from resolv.conf; IPv6 ones only with GW_IPV6.
        let ex: Vec<String> = s.exclude_cidrs.iter().map(|c| c.to_string()).collect();
        assert_eq!(ex, ["169.254.169.254/32", "10.96.0.10/32"]);
        let s = Settings::resolve(&with(&[(IPV6, "true")])).unwrap();
        assert_eq!(s.exclude_cidrs.len(), 4);
    }

    #[test]
    fn precedence_is_cli_then_file_then_default() {
        let mut src = with(&[(NAT_CHAIN, "FROM_CLI")]);
        src.file.insert(NAT_CHAIN.into(), "FROM_FILE".into());
        src.file.insert(JUMP_HOOK.into(), "PREROUTING".into());
        let s = Settings::resolve(&src).unwrap();
        assert_eq!(s.nat_chain, "FROM_CLI");
        assert_eq!(s.jump_hook, Hook::Prerouting);
        assert_eq!(s.role_label_key, "role");
    }

    #[test]
    fn namespace_falls_back_to_pod_namespace() {
        let mut src = with(&[]);
        src.pod_namespace = Some("shop".into());
        assert_eq!(Settings::resolve(&src).unwrap().namespace, "shop");
        src.cli.insert(NAMESPACE.into(), "prod".into());
        assert_eq!(Settings::resolve(&src).unwrap().namespace, "prod");
    }

    #[test]
    fn bad_values_name_the_knob_and_value() {
        for (knob, value) in [
            (JUMP_HOOK, "INPUT"),
            (EXCLUDE_CIDRS, "10.0.0.0/33"),
            (EXCLUDE_CIDRS, "not-a-cidr"),
            (POLL_INTERVAL, "2 parsecs"),
            (POLL_INTERVAL, "0s"),
            (REFRESH_INTERVAL, "15"),
            (REFRESH_INTERVAL, "0s"),
            (JUMP_HOOK, "POSTROUTING"),
            (SVC_PREVIEW_PATTERN, "preview"),
            (SVC_PREVIEW_PATTERN, "{{svc}}-preview"),
            (NAT_CHAIN, "has space"),
            (IPV6, "maybe"),
            (BACKEND, "pf"),
            (ROLE_LABEL_KEY, ""),
            (HTTP_ADDR, ":8081"),
            (FLUSH_CONNTRACK, "sometimes"),
        ] {
            let err = Settings::resolve(&with(&[(knob, value)])).unwrap_err();
            assert_eq!(err.knob, knob);
            let msg = err.to_string();
            assert!(
                msg.contains(knob) && msg.contains(&format!("{value:?}")),
                "{msg}"
            );
        }
    }

    #[test]
    fn explicit_exclusions_replace_the_defaults() {
        let s = Settings::resolve(&with(&[(
            EXCLUDE_CIDRS,
            "169.254.169.254/32, 10.3.0.7/16,10.0.0.1",
        )]))
        .unwrap();
        let ex: Vec<String> = s.exclude_cidrs.iter().map(|c| c.to_string()).collect();
        assert_eq!(ex, ["169.254.169.254/32", "10.3.0.0/16", "10.0.0.1/32"]);
        let s = Settings::resolve(&with(&[(EXCLUDE_CIDRS, "")])).unwrap();
        assert!(s.exclude_cidrs.is_empty());
    }

    #[test]
    fn durations_and_patterns() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5d").is_err());
        for p in [
            "{{name}}-preview",
            "{{ name }}-preview",
            "{{.Name}}-preview",
            "preview-{{name}}",
        ] {
            assert!(Pattern::parse(p).is_ok(), "{p}");
        }
        assert_eq!(Pattern::parse("pv-{{ .name }}").unwrap().apply("a"), "pv-a");
        assert!(Pattern::parse("{{name}}").is_err());
        assert!(Pattern::parse("{{name}}-{{name}}").is_err());
        assert!(Pattern::parse("{{name}}_Preview").is_err());
    }

    #[test]
    fn defaults_file_forms() {
        let dir = std::env::temp_dir().join(format!("gw-cfg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("cm")).unwrap();
        std::fs::write(
            dir.join("env"),
            "# defaults\nGW_NAT_CHAIN=FILE_CHAIN\nGW_IPV6=\"true\"\n",
        )
        .unwrap();
        std::fs::write(dir.join("cm/GW_JUMP_HOOK"), "PREROUTING\n").unwrap();
        std::fs::write(dir.join("cm/.hidden"), "x").unwrap();
        let f = read_defaults_file(&dir.join("env")).unwrap();
        assert_eq!(f["GW_NAT_CHAIN"], "FILE_CHAIN");
        assert_eq!(f["GW_IPV6"], "true");
        let d = read_defaults_file(&dir.join("cm")).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d["GW_JUMP_HOOK"], "PREROUTING");
        std::fs::write(dir.join("bad"), "GW_NAT_CHAIN\n").unwrap();
        let e = read_defaults_file(&dir.join("bad")).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
mod docs_tests {
    /// docs/configuration.md carries the knob table verbatim between markers;
    /// `GW_UPDATE_DOCS=1 cargo test -p switch docs` rewrites it.
    #[test]
    fn docs_table_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
        let doc = std::fs::read_to_string(path).expect("docs/configuration.md exists");
        let (begin, end) = ("<!-- knobs:begin -->\n", "<!-- knobs:end -->");
        let start = doc.find(begin).expect("begin marker") + begin.len();
        let stop = doc.find(end).expect("end marker");
        let table = super::knobs_markdown();
        if std::env::var("GW_UPDATE_DOCS").is_ok() {
            let new = format!("{}{table}{}", &doc[..start], &doc[stop..]);
            std::fs::write(path, new).unwrap();
            return;
        }
        assert_eq!(
            &doc[start..stop],
            table,
            "run GW_UPDATE_DOCS=1 cargo test -p switch docs"
        );
    }
}
