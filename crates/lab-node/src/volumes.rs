//! Volumes as directories under the pod's directory, bind-mounted into containers: emptyDir,
//! ConfigMap, Secret, downwardAPI, projected (service-account token, ConfigMap, Secret,
//! downwardAPI) and hostPath; plus the service-account token volume every pod gets unless
//! `automountServiceAccountToken` is false (the admission plugin's `kube-api-access-*`).

use crate::Shared;
use crate::env;
use crate::util::{arr, str_of};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use kube::Api;
use serde_json::Value;
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where in-cluster clients look for the token, CA and namespace.
pub const SA_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn write_file(dir: &Path, rel: &str, bytes: &[u8], mode: u32) -> Result<(), String> {
    if rel.split('/').any(|p| p == "..") || rel.starts_with('/') {
        return Err(format!("invalid path {rel:?} in volume"));
    }
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    // The mode is set as the file is made: a Secret's key is never readable by others, not
    // even for a moment, and a container reading meanwhile sees the whole file.
    atomic_file::write(&path, bytes, mode & 0o7777).map_err(|e| format!("{}: {e}", path.display()))
}

fn mode(v: &Value, default: u32) -> u32 {
    v.as_u64().map_or(default, |m| m as u32)
}

/// `items` (key → path, mode) of a ConfigMap/Secret source, or every key.
fn write_keys(
    dir: &Path,
    data: &[(String, Vec<u8>)],
    items: &[Value],
    default_mode: u32,
    what: &str,
    optional: bool,
) -> Result<(), String> {
    if items.is_empty() {
        for (k, v) in data {
            write_file(dir, k, v, default_mode)?;
        }
        return Ok(());
    }
    for item in items {
        let key = str_of(item, "/key");
        match data.iter().find(|(k, _)| k == key) {
            Some((_, v)) => write_file(
                dir,
                str_of(item, "/path"),
                v,
                mode(&item["mode"], default_mode),
            )?,
            None if optional => {}
            None => {
                return Err(format!(
                    "configmap references non-existent config key: {key} ({what})"
                ));
            }
        }
    }
    Ok(())
}

type Files = Vec<(String, Vec<u8>)>;

/// Reads one named object and turns it into files; `optional` makes a missing one empty.
async fn source<K>(
    shared: &Shared,
    ns: &str,
    name: &str,
    optional: bool,
    what: &str,
    files: impl FnOnce(K) -> Files,
) -> Result<Files, String>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    match Api::<K>::namespaced(shared.client.clone(), ns)
        .get_opt(name)
        .await
    {
        Ok(Some(obj)) => Ok(files(obj)),
        Ok(None) if optional => Ok(Vec::new()),
        Ok(None) => Err(format!("{what} \"{name}\" not found")),
        Err(e) => Err(format!("{what} \"{name}\": {e}")),
    }
}

async fn config_map(
    shared: &Shared,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<Files, String> {
    source(shared, ns, name, optional, "configmap", |cm: ConfigMap| {
        let text = cm
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()));
        let binary = cm
            .binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0));
        text.chain(binary).collect()
    })
    .await
}

async fn secret(shared: &Shared, ns: &str, name: &str, optional: bool) -> Result<Files, String> {
    source(shared, ns, name, optional, "secret", |s: Secret| {
        let data = s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0));
        let text = s
            .string_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()));
        data.chain(text).collect()
    })
    .await
}

/// Which object a volume source reads its keys from.
#[derive(Clone, Copy)]
enum Kind {
    ConfigMap,
    Secret,
}

/// Writes the keys of a ConfigMap or Secret source (a volume, or one projected source);
/// `name_at` is where the source names its object (`/secretName` in a secret volume).
async fn write_source(
    shared: &Shared,
    ns: &str,
    dir: &Path,
    src: &Value,
    kind: Kind,
    name_at: &str,
    default_mode: u32,
) -> Result<(), String> {
    let optional = src["optional"] == true;
    let name = str_of(src, name_at);
    let data = match kind {
        Kind::ConfigMap => config_map(shared, ns, name, optional).await?,
        Kind::Secret => secret(shared, ns, name, optional).await?,
    };
    write_keys(dir, &data, arr(src, "/items"), default_mode, name, optional)
}

/// A token for the pod's service account (TokenRequest, bound to the pod).
pub async fn token(
    shared: &Shared,
    pod: &Value,
    audience: Option<&str>,
    seconds: i64,
) -> Result<String, String> {
    let ns = str_of(pod, "/metadata/namespace");
    let sa = match str_of(pod, "/spec/serviceAccountName") {
        "" => "default",
        s => s,
    };
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
            expiration_seconds: Some(seconds),
            bound_object_ref: Some(k8s_openapi::api::authentication::v1::BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(str_of(pod, "/metadata/name").to_string()),
                uid: Some(str_of(pod, "/metadata/uid").to_string()),
            }),
        },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(shared.client.clone(), ns)
        .create_token_request(sa, &Default::default(), &req)
        .await
        .map_err(|e| format!("serviceaccount {ns}/{sa} token: {e}"))?
        .status
        .map(|s| s.token)
        .ok_or_else(|| format!("serviceaccount {ns}/{sa}: token request without a token"))
}

fn downward(dir: &Path, pod: &Value, items: &[Value], default_mode: u32) -> Result<(), String> {
    for item in items {
        let value = if let Some(f) = item["fieldRef"]["fieldPath"].as_str() {
            env::field(pod, f).ok_or_else(|| format!("unsupported downward API field {f:?}"))?
        } else if let Some(r) = item["resourceFieldRef"]["resource"].as_str() {
            env::resource_field(r)
        } else {
            continue;
        };
        write_file(
            dir,
            str_of(item, "/path"),
            value.as_bytes(),
            mode(&item["mode"], default_mode),
        )?;
    }
    Ok(())
}

/// Makes every volume of `pod` under `root`; returns name → host directory.
pub async fn prepare(
    shared: &Shared,
    pod: &Value,
    root: &Path,
) -> Result<HashMap<String, PathBuf>, String> {
    let ns = str_of(pod, "/metadata/namespace");
    let mut out = HashMap::new();
    for vol in arr(pod, "/spec/volumes") {
        let name = str_of(vol, "/name");
        let dir = root.join("volumes").join(name);
        if let Some(path) = vol["hostPath"]["path"].as_str() {
            out.insert(name.to_string(), PathBuf::from(path));
            continue;
        }
        // Refreshed sources (ConfigMap, Secret, ...) are rewritten whole.
        if !vol["emptyDir"].is_object() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if vol["emptyDir"].is_object() {
            // emptyDir is world-writable, as the kubelet makes it.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        } else if let Some(cm) = vol.get("configMap").filter(|v| v.is_object()) {
            let m = mode(&cm["defaultMode"], 0o644);
            write_source(shared, ns, &dir, cm, Kind::ConfigMap, "/name", m).await?;
        } else if let Some(s) = vol.get("secret").filter(|v| v.is_object()) {
            let m = mode(&s["defaultMode"], 0o644);
            write_source(shared, ns, &dir, s, Kind::Secret, "/secretName", m).await?;
        } else if let Some(d) = vol.get("downwardAPI").filter(|v| v.is_object()) {
            downward(&dir, pod, arr(d, "/items"), mode(&d["defaultMode"], 0o644))?;
        } else if let Some(p) = vol.get("projected").filter(|v| v.is_object()) {
            let default_mode = mode(&p["defaultMode"], 0o644);
            for src in arr(p, "/sources") {
                if let Some(t) = src.get("serviceAccountToken").filter(|v| v.is_object()) {
                    let tok = token(
                        shared,
                        pod,
                        t["audience"].as_str(),
                        t["expirationSeconds"].as_i64().unwrap_or(3607),
                    )
                    .await?;
                    write_file(
                        &dir,
                        str_of(t, "/path"),
                        tok.as_bytes(),
                        mode(&t["mode"], default_mode),
                    )?;
                } else if let Some(cm) = src.get("configMap").filter(|v| v.is_object()) {
                    write_source(shared, ns, &dir, cm, Kind::ConfigMap, "/name", default_mode)
                        .await?;
                } else if let Some(s) = src.get("secret").filter(|v| v.is_object()) {
                    write_source(shared, ns, &dir, s, Kind::Secret, "/name", default_mode).await?;
                } else if let Some(d) = src.get("downwardAPI").filter(|v| v.is_object()) {
                    downward(&dir, pod, arr(d, "/items"), default_mode)?;
                }
            }
        } else {
            return Err(format!(
                "volume {name:?}: this volume type is not supported by the lab node"
            ));
        }
        out.insert(name.to_string(), dir);
    }
    if pod["spec"]["automountServiceAccountToken"] != false {
        let dir = root.join("serviceaccount");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let tok = token(shared, pod, None, 3607).await?;
        write_file(&dir, "token", tok.as_bytes(), 0o644)?;
        write_file(&dir, "ca.crt", shared.ca_pem.as_bytes(), 0o644)?;
        write_file(&dir, "namespace", ns.as_bytes(), 0o644)?;
        out.insert(String::new(), dir);
    }
    Ok(out)
}
