//! Defaulting and validation of the built-in types, the parts clients notice: names, Service
//! IP families and ClusterIP/NodePort allocation, Pod defaults and update rules, workload
//! selectors. Errors are `422 Invalid` naming the field, as the real server words them.

use crate::resources::ResourceType;
use crate::status::{ApiError, Cause};
use crate::store::Store;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The service CIDRs (both families: the lab is dual-stack): (network address, prefix length).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCidrs {
    pub v4: (Ipv4Addr, u8),
    pub v6: (Ipv6Addr, u8),
}

impl Default for ServiceCidrs {
    fn default() -> Self {
        ServiceCidrs {
            v4: (Ipv4Addr::new(10, 96, 0, 0), 12),
            v6: ("fd00:10:96::".parse().expect("literal"), 108),
        }
    }
}

impl ServiceCidrs {
    /// The first address of the IPv4 range: the `kubernetes` Service's ClusterIP.
    pub fn api_ipv4(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.v4.0) + 1)
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.v4.1)).unwrap_or(0);
                u32::from(a) & mask == u32::from(self.v4.0) & mask && a != self.v4.0
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.v6.1))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(self.v6.0) & mask && a != self.v6.0
            }
        }
    }

    fn range(&self, family: &str) -> String {
        if family == "IPv6" {
            format!("{}/{}", self.v6.0, self.v6.1)
        } else {
            format!("{}/{}", self.v4.0, self.v4.1)
        }
    }

    /// The number of addresses in a family's range (capped at 2^64, more than anyone allocates).
    fn size(&self, family: &str) -> u128 {
        let bits = if family == "IPv6" {
            128 - u32::from(self.v6.1)
        } else {
            32 - u32::from(self.v4.1)
        };
        1u128 << bits.min(64)
    }

    /// The `n`-th address of a family's range (n ≥ 1).
    fn nth(&self, family: &str, n: u128) -> Option<IpAddr> {
        if family == "IPv6" {
            (n < self.size(family) - 1)
                .then(|| IpAddr::V6(Ipv6Addr::from(u128::from(self.v6.0) + n)))
        } else {
            (n < self.size(family) - 1)
                .then(|| IpAddr::V4(Ipv4Addr::from(u32::from(self.v4.0) + n as u32)))
        }
    }

    /// How many addresses at the bottom of a range are kept for Services that ask for a
    /// ClusterIP by value (kube-dns's .10 and the like): a sixteenth of the range, at least 16
    /// and at most 256, none for ranges under 16 (Kubernetes' KEP-3070 bands).
    pub fn static_band(&self, family: &str) -> u128 {
        let size = self.size(family);
        if size < 16 {
            0
        } else {
            (size / 16).clamp(16, 256)
        }
    }

    /// A free address for a Service that did not ask for one, as kube-apiserver allocates it:
    /// from a random point of the dynamic band (above the static band), scanning upwards, and
    /// only when that band is full from the static band.
    fn allocate(&self, family: &str, used: impl Fn(&IpAddr) -> bool) -> Option<IpAddr> {
        use rand::Rng;
        let size = self.size(family);
        let band = self.static_band(family).max(1);
        let last = size.saturating_sub(1); // the broadcast/last address is never handed out
        let free = |n: u128| self.nth(family, n).filter(|a| !used(a));
        if band < last {
            let start = rand::rng().random_range(band..last);
            // Bounded: a full dynamic band of a /12 is a million misses, checked only then.
            let upper = (start..last).chain(band..start).find_map(free);
            if upper.is_some() {
                return upper;
            }
        }
        (1..band.min(last)).find_map(free)
    }
}

fn family_of(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

const DNS1123_SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1123_LABEL: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const DNS1035_LABEL: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn is_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// The name rule of a type and whether `name` satisfies it.
pub fn check_name(rt: &ResourceType, name: &str) -> Option<Cause> {
    let (ok, msg) = match rt.resource.as_str() {
        "services" => (
            is_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase()),
            DNS1035_LABEL,
        ),
        "namespaces" => (is_label(name), DNS1123_LABEL),
        "customresourcedefinitions" => (
            name.len() <= 253 && name.split('.').all(is_label),
            DNS1123_SUBDOMAIN,
        ),
        _ => (
            name.len() <= 253 && name.split('.').all(is_label),
            DNS1123_SUBDOMAIN,
        ),
    };
    (!ok).then(|| Cause::invalid("metadata.name", &json!(name), msg))
}

fn set_default(obj: &mut Value, key: &str, value: Value) {
    if let Some(map) = obj.as_object_mut()
        && map.get(key).is_none_or(Value::is_null)
    {
        map.insert(key.into(), value);
    }
}

/// Fills the defaults a real server adds on create (and on update, for fields left out).
pub fn default_object(rt: &ResourceType, obj: &mut Value) {
    if rt.crd.is_some() {
        return;
    }
    match (rt.group.as_str(), rt.resource.as_str()) {
        ("", "namespaces") => {
            let name = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let meta = &mut obj["metadata"];
            set_default(meta, "labels", json!({}));
            meta["labels"]["kubernetes.io/metadata.name"] = json!(name);
            set_default(obj, "spec", json!({}));
            set_default(&mut obj["spec"], "finalizers", json!(["kubernetes"]));
            set_default(obj, "status", json!({}));
            set_default(&mut obj["status"], "phase", json!("Active"));
        }
        ("", "services") => {
            set_default(obj, "spec", json!({}));
            let spec = &mut obj["spec"];
            set_default(spec, "type", json!("ClusterIP"));
            set_default(spec, "sessionAffinity", json!("None"));
            if spec["type"] != "ExternalName" {
                set_default(spec, "internalTrafficPolicy", json!("Cluster"));
            }
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports {
                    set_default(p, "protocol", json!("TCP"));
                    if let Some(port) = p.get("port").cloned() {
                        set_default(p, "targetPort", port);
                    }
                }
            }
            set_default(obj, "status", json!({"loadBalancer": {}}));
        }
        ("", "pods") => {
            set_default(obj, "spec", json!({}));
            let spec = &mut obj["spec"];
            for (k, v) in [
                ("restartPolicy", json!("Always")),
                ("terminationGracePeriodSeconds", json!(30)),
                ("dnsPolicy", json!("ClusterFirst")),
                ("serviceAccountName", json!("default")),
                ("schedulerName", json!("default-scheduler")),
                ("securityContext", json!({})),
                ("enableServiceLinks", json!(true)),
                ("preemptionPolicy", json!("PreemptLowerPriority")),
                ("priority", json!(0)),
            ] {
                set_default(spec, k, v);
            }
            for list in ["initContainers", "containers", "ephemeralContainers"] {
                if let Some(cs) = spec.get_mut(list).and_then(Value::as_array_mut) {
                    for c in cs {
                        let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
                        let latest = !image.rsplit('/').next().unwrap_or_default().contains(':')
                            || image.ends_with(":latest");
                        set_default(
                            c,
                            "imagePullPolicy",
                            json!(if latest { "Always" } else { "IfNotPresent" }),
                        );
                        set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
                        set_default(c, "terminationMessagePolicy", json!("File"));
                        if list != "ephemeralContainers" {
                            set_default(c, "resources", json!({}));
                        }
                        if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                            for p in ports {
                                set_default(p, "protocol", json!("TCP"));
                            }
                        }
                    }
                }
            }
            set_default(obj, "status", json!({}));
            set_default(&mut obj["status"], "phase", json!("Pending"));
            set_default(&mut obj["status"], "qosClass", json!("BestEffort"));
        }
        ("batch", "jobs") => {
            set_default(obj, "spec", json!({}));
            let spec = &mut obj["spec"];
            for (k, v) in [
                ("completions", json!(1)),
                ("parallelism", json!(1)),
                ("backoffLimit", json!(6)),
                ("completionMode", json!("NonIndexed")),
                ("suspend", json!(false)),
                ("podReplacementPolicy", json!("TerminatingOrFailed")),
            ] {
                set_default(spec, k, v);
            }
            set_default(obj, "status", json!({}));
        }
        ("", "secrets") => {
            set_default(obj, "type", json!("Opaque"));
            if let Some(Value::Object(sd)) =
                obj.as_object_mut().and_then(|m| m.remove("stringData"))
            {
                use base64::Engine;
                set_default(obj, "data", json!({}));
                for (k, v) in sd {
                    let s = v.as_str().unwrap_or_default();
                    obj["data"][k] = json!(base64::engine::general_purpose::STANDARD.encode(s));
                }
            }
        }
        ("apps", "deployments" | "replicasets" | "statefulsets") => {
            set_default(obj, "spec", json!({}));
            let spec = &mut obj["spec"];
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            if rt.resource == "deployments" {
                set_default(spec, "progressDeadlineSeconds", json!(600));
                set_default(
                    spec,
                    "strategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
                );
            }
            if rt.resource == "statefulsets" {
                set_default(spec, "podManagementPolicy", json!("OrderedReady"));
                set_default(
                    spec,
                    "updateStrategy",
                    json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
                );
            }
            set_default(obj, "status", json!({}));
            // Required in the schema (no omitempty upstream): clients whose models check it,
            // such as the official Python client, refuse a status without it.
            if rt.resource != "deployments" {
                set_default(&mut obj["status"], "replicas", json!(0));
            }
        }
        ("apps", "daemonsets") => {
            set_default(obj, "spec", json!({}));
            set_default(&mut obj["spec"], "revisionHistoryLimit", json!(10));
            set_default(
                &mut obj["spec"],
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}),
            );
            set_default(obj, "status", json!({}));
            for field in [
                "currentNumberScheduled",
                "desiredNumberScheduled",
                "numberMisscheduled",
                "numberReady",
            ] {
                set_default(&mut obj["status"], field, json!(0));
            }
        }
        ("apiextensions.k8s.io", "customresourcedefinitions") if obj["status"].is_null() => {
            crate::crd::default_status(obj)
        }
        _ => {}
    }
}

/// Validates `obj` (and for updates, what may not change from `old`, which depends on the
/// subresource `sub` written through); allocates Service IPs and node ports. The caller holds
/// the allocation lock until the object is stored.
pub fn validate(
    rt: &ResourceType,
    obj: &mut Value,
    old: Option<&Value>,
    sub: Option<&str>,
    store: &Store,
    cidrs: &ServiceCidrs,
) -> Result<(), ApiError> {
    let name = obj
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut causes = Vec::new();
    if old.is_none()
        && let Some(c) = check_name(rt, &name)
    {
        causes.push(c);
    }
    match (rt.group.as_str(), rt.resource.as_str()) {
        ("", "services") if rt.crd.is_none() => service(obj, old, store, cidrs, &mut causes),
        ("", "pods") => pod(obj, old, sub, &mut causes),
        ("", "secrets" | "configmaps") => immutable_data(obj, old, &mut causes),
        ("apps", _) => workload(obj, old, &mut causes),
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(&rt.group, &rt.kind, &name, causes))
    }
}

fn immutable_data(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    if let Some(old) = old
        && old["immutable"] == json!(true)
    {
        for field in ["data", "binaryData"] {
            if obj[field] != old[field] {
                causes.push(Cause::forbidden(
                    field,
                    "field is immutable when `immutable` is set",
                ));
            }
        }
        if obj["immutable"] != json!(true) {
            causes.push(Cause::forbidden(
                "immutable",
                "field is immutable when `immutable` is set",
            ));
        }
    }
}

fn workload(obj: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let selector = &obj["spec"]["selector"];
    let Some(match_labels) = selector.get("matchLabels").and_then(Value::as_object) else {
        if selector.get("matchExpressions").is_none() {
            causes.push(Cause::required("spec.selector"));
        }
        return;
    };
    let labels = &obj["spec"]["template"]["metadata"]["labels"];
    if match_labels.iter().any(|(k, v)| labels.get(k) != Some(v)) {
        causes.push(Cause::invalid(
            "spec.template.metadata.labels",
            &json!(
                labels
                    .as_object()
                    .map(|m| m
                        .iter()
                        .map(|(k, v)| format!("{k}:{}", v.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(","))
                    .unwrap_or_default()
            ),
            "`selector` does not match template `labels`",
        ));
    }
    if let Some(old) = old
        && old["spec"]["selector"] != *selector
    {
        causes.push(Cause::invalid(
            "spec.selector",
            selector,
            "field is immutable",
        ));
    }
}

/// Fields an ephemeral container may not have (it is not part of the pod's resources or routing).
const NOT_EPHEMERAL: &[&str] = &[
    "ports",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
];

/// Native sidecars as a 1.33 server has them: `restartPolicy: Always` is the one value an init
/// container may have, and only such an init container may have probes or lifecycle hooks;
/// other containers may not set it.
fn container_restart_policy(list: &str, i: usize, c: &Value, causes: &mut Vec<Cause>) {
    let policy = c.get("restartPolicy").filter(|v| !v.is_null());
    match (list, policy) {
        ("initContainers", Some(p)) if p != "Always" => causes.push(Cause::not_supported(
            format!("spec.{list}[{i}].restartPolicy"),
            p,
            &["Always"],
        )),
        ("initContainers", None) => {
            for f in [
                "lifecycle",
                "livenessProbe",
                "readinessProbe",
                "startupProbe",
            ] {
                if c.get(f).is_some_and(|v| !v.is_null()) {
                    causes.push(Cause::forbidden(
                        format!("spec.{list}[{i}].{f}"),
                        "may not be set for init containers without restartPolicy=Always",
                    ));
                }
            }
        }
        ("containers", Some(_)) => causes.push(Cause::forbidden(
            format!("spec.{list}[{i}].restartPolicy"),
            "may not be set for non-init containers",
        )),
        ("ephemeralContainers", Some(_)) => causes.push(Cause::forbidden(
            format!("spec.{list}[{i}].restartPolicy"),
            "cannot be set for an Ephemeral Container",
        )),
        _ => {}
    }
}

fn pod(obj: &mut Value, old: Option<&Value>, sub: Option<&str>, causes: &mut Vec<Cause>) {
    let containers = obj["spec"]["containers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if containers.is_empty() {
        causes.push(Cause::required("spec.containers"));
    }
    let mut names = HashSet::new();
    for list in ["initContainers", "containers", "ephemeralContainers"] {
        for (i, c) in obj["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            match c.get("name").and_then(Value::as_str) {
                None | Some("") => causes.push(Cause::required(format!("spec.{list}[{i}].name"))),
                Some(n) => {
                    if !names.insert(n.to_string()) {
                        causes.push(Cause::duplicate(
                            format!("spec.{list}[{i}].name"),
                            &json!(n),
                        ));
                    }
                }
            }
            if c.get("image")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                causes.push(Cause::required(format!("spec.{list}[{i}].image")));
            }
            container_restart_policy(list, i, c, causes);
            if list == "ephemeralContainers" {
                for f in NOT_EPHEMERAL {
                    if c.get(*f).is_some_and(|v| !v.is_null()) {
                        causes.push(Cause::forbidden(
                            format!("spec.{list}[{i}].{f}"),
                            "cannot be set for an Ephemeral Container",
                        ));
                    }
                }
            }
        }
    }
    let ephemeral = |v: &Value| {
        v["spec"]["ephemeralContainers"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    match old {
        None if !ephemeral(obj).is_empty() => causes.push(Cause::forbidden(
            "spec.ephemeralContainers",
            "cannot be set on create",
        )),
        // The subresource only adds ephemeral containers; the rest of the spec is the stored one.
        Some(old) if sub == Some("ephemeralcontainers") => {
            let new = ephemeral(obj);
            for c in ephemeral(old) {
                let name = c["name"].as_str().unwrap_or_default();
                let verb = match new.iter().find(|n| n["name"] == c["name"]) {
                    None => "removed",
                    Some(n) if *n != c => "changed",
                    Some(_) => continue,
                };
                causes.push(Cause::forbidden(
                    "spec.ephemeralContainers",
                    format!("existing ephemeral containers {name:?} may not be {verb}"),
                ));
            }
        }
        Some(old) => pod_spec_update(obj, old, causes),
        None => {}
    }
}

/// Pod specs are immutable but for images and a few scheduling fields; ephemeral containers
/// change only through their subresource.
fn pod_spec_update(obj: &Value, old: &Value, causes: &mut Vec<Cause>) {
    let strip = |v: &Value| {
        let mut s = v["spec"].clone();
        for list in ["initContainers", "containers"] {
            if let Some(cs) = s.get_mut(list).and_then(Value::as_array_mut) {
                for c in cs {
                    c.as_object_mut().map(|m| m.remove("image"));
                }
            }
        }
        if let Some(m) = s.as_object_mut() {
            for k in [
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
                "schedulingGates",
            ] {
                m.remove(k);
            }
        }
        s
    };
    if strip(obj) != strip(old) && obj["spec"]["nodeName"] == old["spec"]["nodeName"] {
        causes.push(Cause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
}

fn parse_ip(v: &Value) -> Option<IpAddr> {
    v.as_str()?.parse().ok()
}

fn service(
    obj: &mut Value,
    old: Option<&Value>,
    store: &Store,
    cidrs: &ServiceCidrs,
    causes: &mut Vec<Cause>,
) {
    let me = (
        obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    );
    let spec = &mut obj["spec"];
    let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    let types = ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];
    if !types.contains(&ty.as_str()) {
        causes.push(Cause::not_supported("spec.type", &spec["type"], &types));
        return;
    }
    // An update that leaves out allocated values keeps them (as kubectl replace relies on).
    if let Some(old) = old
        && old["spec"]["type"] == spec["type"]
    {
        for k in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if spec.get(k).is_none_or(Value::is_null) && !old["spec"][k].is_null() {
                spec[k] = old["spec"][k].clone();
            }
        }
    }
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    let headless = spec["clusterIP"] == "None";
    if ty == "ExternalName" {
        if spec["externalName"].as_str().is_none_or(str::is_empty) {
            causes.push(Cause::required("spec.externalName"));
        }
        for k in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if let Some(m) = spec.as_object_mut() {
                m.remove(k);
            }
        }
        return;
    }
    if ports.is_empty() && !headless {
        causes.push(Cause::required("spec.ports"));
    }
    let mut seen_names = HashSet::new();
    let mut seen_ports = HashSet::new();
    for (i, p) in ports.iter().enumerate() {
        let port = p["port"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push(Cause::invalid(
                format!("spec.ports[{i}].port"),
                &p["port"],
                "must be between 1 and 65535, inclusive",
            ));
        }
        let proto = p["protocol"].as_str().unwrap_or("TCP");
        if !["TCP", "UDP", "SCTP"].contains(&proto) {
            causes.push(Cause::not_supported(
                format!("spec.ports[{i}].protocol"),
                &p["protocol"],
                &["SCTP", "TCP", "UDP"],
            ));
        }
        if !seen_ports.insert((port, proto.to_string())) {
            causes.push(Cause::duplicate(
                format!("spec.ports[{i}]"),
                &json!({"port": port, "protocol": proto}),
            ));
        }
        let pname = p["name"].as_str().unwrap_or_default();
        if ports.len() > 1 && pname.is_empty() {
            causes.push(Cause::required(format!("spec.ports[{i}].name")));
        } else if !pname.is_empty() && !seen_names.insert(pname.to_string()) {
            causes.push(Cause::duplicate(
                format!("spec.ports[{i}].name"),
                &p["name"],
            ));
        }
        match &p["targetPort"] {
            Value::Number(n) if !(1..=65535).contains(&n.as_i64().unwrap_or(0)) => {
                causes.push(Cause::invalid(
                    format!("spec.ports[{i}].targetPort"),
                    &p["targetPort"],
                    "must be between 1 and 65535, inclusive",
                ))
            }
            _ => {}
        }
    }

    // IP families: from clusterIPs if given, else ipFamilies, else IPv4.
    let mut ips: Vec<Value> = match (&spec["clusterIPs"], &spec["clusterIP"]) {
        (Value::Array(a), _) if !a.is_empty() => a.clone(),
        (_, Value::String(s)) if !s.is_empty() => vec![json!(s)],
        _ => vec![],
    };
    if let (Some(first), Some(ip)) = (ips.first(), spec["clusterIP"].as_str())
        && !ip.is_empty()
        && first.as_str() != Some(ip)
    {
        causes.push(Cause::invalid(
            "spec.clusterIPs",
            &json!(ips),
            "element [0] must match clusterIP",
        ));
    }
    let policy_v = spec["ipFamilyPolicy"].clone();
    let policies = ["SingleStack", "PreferDualStack", "RequireDualStack"];
    if !policy_v.is_null() && !policies.iter().any(|p| policy_v == *p) {
        causes.push(Cause::not_supported(
            "spec.ipFamilyPolicy",
            &policy_v,
            &policies,
        ));
    }
    let mut families: Vec<String> = Vec::new();
    for (i, f) in spec["ipFamilies"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        match f.as_str() {
            Some(s @ ("IPv4" | "IPv6")) => {
                if families.iter().any(|x| x == s) {
                    causes.push(Cause::duplicate(format!("spec.ipFamilies[{i}]"), f));
                }
                families.push(s.into());
            }
            _ => causes.push(Cause::not_supported(
                format!("spec.ipFamilies[{i}]"),
                f,
                &["IPv4", "IPv6"],
            )),
        }
    }
    if families.len() > 2 {
        causes.push(Cause::invalid(
            "spec.ipFamilies",
            &spec["ipFamilies"],
            "may specify no more than one IP for each IP family",
        ));
    }
    for (i, ip) in ips.iter().enumerate() {
        if ip == "None" {
            continue;
        }
        match parse_ip(ip) {
            None => causes.push(Cause::invalid(
                format!("spec.clusterIPs[{i}]"),
                ip,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            )),
            Some(a) => match families.get(i) {
                Some(f) if f != family_of(a) => causes.push(Cause::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    ip,
                    format!("expected an {f} value as indicated by `ipFamilies[{i}]`"),
                )),
                Some(_) => {}
                None => families.push(family_of(a).into()),
            },
        }
    }
    if families.is_empty() {
        families.push("IPv4".into());
    }
    let policy = policy_v
        .as_str()
        .unwrap_or(if families.len() > 1 {
            ""
        } else {
            "SingleStack"
        })
        .to_string();
    if families.len() > 1 && policy == "SingleStack" {
        causes.push(Cause::invalid(
            "spec.ipFamilyPolicy",
            &json!(policy),
            "must be RequireDualStack or PreferDualStack when multiple IP families are specified",
        ));
    }
    if families.len() > 1 && policy.is_empty() {
        causes.push(Cause::required("spec.ipFamilyPolicy"));
    }
    if ips.len() > 1 && policy == "SingleStack" {
        causes.push(Cause::invalid(
            "spec.clusterIPs",
            &json!(ips),
            "must have one value when spec.ipFamilyPolicy is SingleStack",
        ));
    }
    if (policy == "PreferDualStack" || policy == "RequireDualStack") && families.len() == 1 {
        families.push(if families[0] == "IPv4" {
            "IPv6".into()
        } else {
            "IPv4".into()
        });
    }
    if let Some(old) = old
        && old["spec"]["type"] != "ExternalName"
        && !old["spec"]["clusterIP"].is_null()
        && old["spec"]["clusterIPs"].as_array().and_then(|a| a.first()) != ips.first()
    {
        causes.push(Cause::invalid(
            "spec.clusterIPs[0]",
            ips.first().unwrap_or(&Value::Null),
            "may not change once set",
        ));
    }
    if !causes.is_empty() {
        return;
    }

    if !headless {
        // Taken: held by another Service (this one's own addresses stay its own on update).
        let used = |ip: &IpAddr| store.cluster_ip_holder(ip).is_some_and(|h| h != me);
        let mine: Vec<IpAddr> = ips.iter().filter_map(parse_ip).collect();
        for (i, ip) in mine.iter().enumerate() {
            let was_mine = old.is_some_and(|o| {
                o["spec"]["clusterIPs"]
                    .as_array()
                    .is_some_and(|a| a.contains(&json!(ip.to_string())))
            });
            if !cidrs.contains(*ip) {
                causes.push(Cause::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    &json!(ip.to_string()),
                    format!("failed to allocate IP {ip}: provided IP is not in the valid range. The range of valid IPs is {}", cidrs.range(family_of(*ip))),
                ));
            } else if used(ip) && !was_mine {
                causes.push(Cause::invalid(
                    format!("spec.clusterIPs[{i}]"),
                    &json!(ip.to_string()),
                    format!("failed to allocate IP {ip}: provided IP is already allocated"),
                ));
            }
        }
        for f in families.iter().skip(ips.len()) {
            match cidrs.allocate(f, |a| {
                used(a) || ips.iter().any(|v| parse_ip(v) == Some(*a))
            }) {
                Some(a) => ips.push(json!(a.to_string())),
                None if policy == "PreferDualStack" && !ips.is_empty() => {}
                None => causes.push(Cause::invalid(
                    "spec.clusterIPs",
                    &json!(ips),
                    format!("failed to allocate IP: range is full ({})", cidrs.range(f)),
                )),
            }
        }
        spec["clusterIP"] = ips.first().cloned().unwrap_or(Value::Null);
        spec["clusterIPs"] = json!(ips);
    } else {
        spec["clusterIPs"] = json!(["None"]);
    }
    families.truncate(if headless {
        families.len()
    } else {
        ips.len().max(1)
    });
    spec["ipFamilies"] = json!(families);
    spec["ipFamilyPolicy"] = json!(policy);

    if ty == "NodePort" || ty == "LoadBalancer" {
        let used = used_node_ports(store, old);
        let mut taken: HashSet<i64> = HashSet::new();
        if let Some(ports) = spec["ports"].as_array_mut() {
            for (i, p) in ports.iter_mut().enumerate() {
                match p["nodePort"].as_i64() {
                    Some(n) if !(30000..=32767).contains(&n) => causes.push(Cause::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        &p["nodePort"],
                        "provided port is not in the valid range. The range of valid ports is 30000-32767",
                    )),
                    Some(n) if used.contains(&n) || !taken.insert(n) => causes.push(Cause::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        &p["nodePort"],
                        "provided port is already allocated",
                    )),
                    Some(_) => {}
                    None => {
                        if let Some(n) = (30000..=32767).find(|n| !used.contains(n) && !taken.contains(n)) {
                            taken.insert(n);
                            p["nodePort"] = json!(n);
                        }
                    }
                }
            }
        }
        if spec.get("externalTrafficPolicy").is_none() {
            spec["externalTrafficPolicy"] = json!("Cluster");
        }
    }
}

fn used_node_ports(store: &Store, except: Option<&Value>) -> HashSet<i64> {
    let uid = except.map(|o| o["metadata"]["uid"].clone());
    let (all, _) = store.list("", "services", None);
    all.iter()
        .filter(|s| uid.as_ref() != Some(&s["metadata"]["uid"]))
        .flat_map(|s| s["spec"]["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["nodePort"].as_i64())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_statuses_carry_their_required_counts() {
        let reg = crate::resources::Registry::builtin();
        for (resource, want) in [
            ("statefulsets", json!({"replicas": 0})),
            ("replicasets", json!({"replicas": 0})),
            ("deployments", json!({})),
            (
                "daemonsets",
                json!({"currentNumberScheduled": 0, "desiredNumberScheduled": 0,
                       "numberMisscheduled": 0, "numberReady": 0}),
            ),
        ] {
            let rt = reg.find("apps", "v1", resource).unwrap();
            let mut obj = json!({"metadata": {"name": "x"}, "spec": {}});
            default_object(&rt, &mut obj);
            assert_eq!(obj["status"], want, "{resource}");
            // A count the controller wrote stays.
            obj["status"]["replicas"] = json!(3);
            default_object(&rt, &mut obj);
            assert_eq!(obj["status"]["replicas"], 3, "{resource}");
        }
    }

    #[test]
    fn static_band_follows_range_size() {
        let c = ServiceCidrs::default(); // /12 and /108: 2^20 addresses each
        assert_eq!(c.static_band("IPv4"), 256);
        assert_eq!(c.static_band("IPv6"), 256);
        let small = ServiceCidrs {
            v4: (Ipv4Addr::new(10, 0, 0, 0), 24),
            v6: ("fd00::".parse().unwrap(), 125),
        };
        assert_eq!(small.static_band("IPv4"), 16);
        assert_eq!(small.static_band("IPv6"), 0);
    }

    #[test]
    fn dynamic_allocation_leaves_the_static_band_until_the_rest_is_full() {
        let c = ServiceCidrs {
            v4: (Ipv4Addr::new(10, 0, 0, 0), 24),
            v6: ("fd00::".parse().unwrap(), 120),
        };
        let mut used = HashSet::new();
        // 10.0.0.16 ..= 10.0.0.254 is the dynamic band (239 addresses).
        for _ in 0..239 {
            let a = c
                .allocate("IPv4", |a| used.contains(a))
                .expect("dynamic band has room");
            let IpAddr::V4(v4) = a else { panic!("{a}") };
            assert!((16..255).contains(&v4.octets()[3]), "{a} is not dynamic");
            assert!(used.insert(a), "{a} handed out twice");
        }
        // Then the static band, never .0.
        for _ in 0..15 {
            let a = c
                .allocate("IPv4", |a| used.contains(a))
                .expect("static band has room");
            let IpAddr::V4(v4) = a else { panic!("{a}") };
            assert!((1..16).contains(&v4.octets()[3]), "{a}");
            used.insert(a);
        }
        assert_eq!(c.allocate("IPv4", |a| used.contains(a)), None);
        let a6 = c.allocate("IPv6", |_| false).unwrap();
        assert!(
            u128::from(match a6 {
                IpAddr::V6(a) => a,
                _ => unreachable!(),
            }) & 0xff
                >= 16
        );
    }
}
