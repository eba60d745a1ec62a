//! Discovery documents: `/version`, `/api`, `/apis`, `/apis/{group}` and the resource lists of
//! each group/version, built from the registry (so CRDs appear as soon as they are served).

use crate::resources::Registry;
use crate::status::ApiError;
use serde_json::{Value, json};

/// The Kubernetes version the lab reports in `/version` (default 1.33, the k8s-openapi feature
/// it is built against). Only what `/version` says changes: the API served stays 1.33's, so a
/// client that picks its behaviour by version (e.g. the service mirror's topology fields) can
/// be tested for older clusters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
}

impl Default for KubeVersion {
    fn default() -> Self {
        KubeVersion {
            major: 1,
            minor: 33,
        }
    }
}

/// A version string that is not `MAJOR.MINOR` (optionally `v…` and `.PATCH`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("Kubernetes version {0:?}: expected MAJOR.MINOR like 1.29 (or v1.29.3), 1.0 or later")]
pub struct BadVersion(pub String);

impl std::str::FromStr for KubeVersion {
    type Err = BadVersion;
    fn from_str(s: &str) -> Result<Self, BadVersion> {
        let bad = || BadVersion(s.to_string());
        let mut parts = s.strip_prefix('v').unwrap_or(s).split('.');
        let mut num = || -> Result<u32, BadVersion> {
            let p = parts.next().ok_or_else(bad)?;
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 4 {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        let (major, minor) = (num()?, num()?);
        if let Some(patch) = parts.next()
            && (patch.is_empty() || !patch.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(bad());
        }
        if parts.next().is_some() || major == 0 {
            return Err(bad());
        }
        Ok(KubeVersion { major, minor })
    }
}

impl std::fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}.{}.0-lab", self.major, self.minor)
    }
}

/// `/version` for the version the lab reports.
pub fn version(v: KubeVersion) -> Value {
    json!({
        "major": v.major.to_string(),
        "minor": v.minor.to_string(),
        "gitVersion": v.to_string(),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

pub fn core_versions() -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}]})
}

fn group_doc(registry: &Registry, group: &str) -> Value {
    let versions: Vec<Value> = registry
        .versions_of(group)
        .into_iter()
        .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
        .collect();
    json!({"name": group, "versions": versions, "preferredVersion": versions[0]})
}

pub fn groups(registry: &Registry) -> Value {
    let mut names: Vec<String> = Vec::new();
    for t in registry.all() {
        if !t.group.is_empty() && !names.contains(&t.group) {
            names.push(t.group.clone());
        }
    }
    let groups: Vec<Value> = names.iter().map(|g| group_doc(registry, g)).collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn group(registry: &Registry, group: &str) -> Result<Value, ApiError> {
    if registry.versions_of(group).is_empty() {
        return Err(ApiError::no_route());
    }
    let mut doc = group_doc(registry, group);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Ok(doc)
}

pub fn resources(registry: &Registry, group: &str, version: &str) -> Result<Value, ApiError> {
    let types: Vec<_> = registry
        .all()
        .into_iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if types.is_empty() {
        return Err(ApiError::no_route());
    }
    let mut list = Vec::new();
    for t in &types {
        let mut r = json!({
            "name": t.resource,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": t.verbs(),
            "storageVersionHash": "",
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        if !t.categories.is_empty() {
            r["categories"] = json!(t.categories);
        }
        list.push(r);
        for s in &t.subresources {
            let (kind, verbs, group_version) = match s.as_str() {
                "token" => (
                    "TokenRequest",
                    vec!["create"],
                    Some(("authentication.k8s.io", "v1")),
                ),
                "scale" => (
                    "Scale",
                    vec!["get", "patch", "update"],
                    Some(("autoscaling", "v1")),
                ),
                "finalize" => (t.kind.as_str(), vec!["update"], None),
                "ephemeralcontainers" => (t.kind.as_str(), vec!["get", "patch", "update"], None),
                _ => (t.kind.as_str(), vec!["get", "patch", "update"], None),
            };
            let mut sr = json!({"name": format!("{}/{s}", t.resource), "singularName": "", "namespaced": t.namespaced, "kind": kind, "verbs": verbs});
            if let Some((g, v)) = group_version {
                sr["group"] = json!(g);
                sr["version"] = json!(v);
            }
            list.push(sr);
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Ok(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_bad_ones_are_named() {
        for (s, want) in [("1.29", (1, 29)), ("v1.25.3", (1, 25)), ("1.33", (1, 33))] {
            let v: KubeVersion = s.parse().unwrap();
            assert_eq!((v.major, v.minor), want, "{s}");
        }
        for s in ["", "1", "1.", "x.29", "1.29.3.4", "0.9", "1.-2", "1.29.x"] {
            let e = s.parse::<KubeVersion>().unwrap_err();
            assert!(e.to_string().contains(&format!("{s:?}")), "{e}");
        }
        let v = version("1.27".parse().unwrap());
        assert_eq!(
            (v["major"].as_str(), v["minor"].as_str()),
            (Some("1"), Some("27"))
        );
        assert_eq!(v["gitVersion"], "v1.27.0-lab");
    }
}
