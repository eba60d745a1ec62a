//! Mutating admission: the matching webhooks of every MutatingWebhookConfiguration are called
//! in order with an AdmissionReview v1 over HTTPS (trusting their caBundle), their JSON
//! patches applied, reinvoked once if later webhooks changed the object (`IfNeeded`), and a
//! denial or a failure (`failurePolicy: Fail`) answered as the real API server answers it.

use crate::authn::UserInfo;
use crate::resources::ResourceType;
use crate::server::State;
use crate::status::ApiError;
use crate::store::Key;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// A label selector in its object form (`matchLabels`, `matchExpressions`); empty matches all.
fn selector_matches(sel: &Value, labels: &Value) -> bool {
    if sel.is_null() {
        return true;
    }
    let get = |k: &str| labels.get(k).and_then(Value::as_str);
    let ml = sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| get(k) == v.as_str());
    let me = sel["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|e| {
            let key = e["key"].as_str().unwrap_or_default();
            let values: Vec<&str> = e["values"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match e["operator"].as_str() {
                Some("In") => get(key).is_some_and(|v| values.contains(&v)),
                Some("NotIn") => get(key).is_none_or(|v| !values.contains(&v)),
                Some("Exists") => get(key).is_some(),
                Some("DoesNotExist") => get(key).is_none(),
                _ => false,
            }
        });
    ml && me
}

fn listed(list: &Value, want: &str) -> bool {
    list.as_array()
        .into_iter()
        .flatten()
        .any(|v| v == "*" || v == want)
}

fn rule_matches(rule: &Value, rt: &ResourceType, op: &str) -> bool {
    // "*" is every resource, "*/*" every resource and subresource; both cover the resource itself.
    let resources = rule["resources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .any(|r| r == "*" || r == "*/*" || r == rt.resource);
    let scope = match rule["scope"].as_str().unwrap_or("*") {
        "Namespaced" => rt.namespaced,
        "Cluster" => !rt.namespaced,
        _ => true,
    };
    listed(&rule["operations"], op)
        && listed(&rule["apiGroups"], &rt.group)
        && listed(&rule["apiVersions"], &rt.version)
        && resources
        && scope
}

struct Call<'a> {
    rt: &'a ResourceType,
    /// Who asked (after impersonation), as the webhook's `userInfo`.
    user: &'a UserInfo,
    op: &'a str,
    old: Option<&'a Value>,
    dry: bool,
}

/// Calls the mutating webhooks that match for a request of `user` and returns the object they
/// leave.
pub async fn mutate(
    state: &State,
    user: &UserInfo,
    rt: &ResourceType,
    op: &str,
    mut obj: Value,
    old: Option<&Value>,
    dry: bool,
) -> Result<Value, ApiError> {
    let (configs, _) = state.store.list(
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        None,
    );
    if configs.is_empty() {
        return Ok(obj);
    }
    let ns_labels = match obj["metadata"]["namespace"].as_str() {
        Some(ns) if rt.namespaced => {
            let key = Key {
                group: String::new(),
                resource: "namespaces".into(),
                namespace: String::new(),
                name: ns.into(),
            };
            state
                .store
                .get(&key)
                .map(|n| n["metadata"]["labels"].clone())
                .unwrap_or(Value::Null)
        }
        _ => Value::Null,
    };
    let call = Call {
        rt,
        user,
        op,
        old,
        dry,
    };
    let mut hooks: Vec<Value> = Vec::new();
    for cfg in &configs {
        for wh in cfg["webhooks"].as_array().into_iter().flatten() {
            let ruled = wh["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| rule_matches(r, rt, op));
            let ns_ok = !rt.namespaced
                || rt.resource == "namespaces"
                || selector_matches(&wh["namespaceSelector"], &ns_labels);
            let obj_ok = selector_matches(&wh["objectSelector"], &obj["metadata"]["labels"])
                || old.is_some_and(|o| {
                    selector_matches(&wh["objectSelector"], &o["metadata"]["labels"])
                });
            if ruled && ns_ok && obj_ok {
                hooks.push(wh.clone());
            }
        }
    }
    // Each webhook remembers the object it last saw, to know whether a reinvocation is due.
    let mut seen: Vec<Value> = Vec::with_capacity(hooks.len());
    for wh in &hooks {
        seen.push(obj.clone());
        obj = invoke(state, &call, wh, obj).await?;
    }
    for (wh, saw) in hooks.iter().zip(&seen) {
        if wh["reinvocationPolicy"] == "IfNeeded" && *saw != obj {
            obj = invoke(state, &call, wh, obj).await?;
        }
    }
    Ok(obj)
}

async fn invoke(state: &State, call: &Call<'_>, wh: &Value, obj: Value) -> Result<Value, ApiError> {
    let name = wh["name"].as_str().unwrap_or_default().to_string();
    let side_effects = wh["sideEffects"].as_str().unwrap_or("Unknown");
    if call.dry && !matches!(side_effects, "None" | "NoneOnDryRun") {
        return Err(ApiError::bad_request(format!(
            "admission webhook \"{name}\" does not support dry run"
        )));
    }
    let uid = crate::api::new_uid();
    let rt = call.rt;
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
            "resource": {"group": rt.group, "version": rt.version, "resource": rt.resource},
            "requestKind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
            "requestResource": {"group": rt.group, "version": rt.version, "resource": rt.resource},
            "name": obj["metadata"]["name"],
            "namespace": obj["metadata"]["namespace"],
            "operation": call.op,
            "userInfo": call.user.to_json(),
            "object": obj,
            "oldObject": call.old.cloned().unwrap_or(Value::Null),
            "dryRun": call.dry,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": if call.op == "CREATE" { "CreateOptions" } else { "UpdateOptions" }},
        }
    });
    let timeout = Duration::from_secs(wh["timeoutSeconds"].as_u64().unwrap_or(10).clamp(1, 30));
    let result = tokio::time::timeout(timeout, post(state, &wh["clientConfig"], &review)).await;
    let fail_open = wh["failurePolicy"] == "Ignore";
    let failure = |why: String| {
        if fail_open {
            tracing::warn!(webhook = %name, error = %why, "webhook failed; failurePolicy Ignore");
            None
        } else {
            Some(ApiError::internal(format!(
                "Internal error occurred: failed calling webhook \"{name}\": {why}"
            )))
        }
    };
    let resp = match result {
        Ok(Ok(v)) => v,
        Ok(Err(why)) => {
            return failure(format!("failed to call webhook: {why}")).map_or(Ok(obj), Err);
        }
        Err(_) => {
            return failure("failed to call webhook: context deadline exceeded".into())
                .map_or(Ok(obj), Err);
        }
    };
    let r = &resp["response"];
    if r["uid"].as_str() != Some(uid.as_str()) {
        return failure(format!(
            "received invalid webhook response: expected response.uid=\"{uid}\", got \"{}\"",
            r["uid"].as_str().unwrap_or_default()
        ))
        .map_or(Ok(obj), Err);
    }
    if r["allowed"] != json!(true) {
        let st = &r["status"];
        let code = st["code"].as_u64().filter(|c| *c >= 400).unwrap_or(400) as u16;
        let denied = format!("admission webhook \"{name}\" denied the request");
        let message = match (st["message"].as_str(), st["reason"].as_str()) {
            (Some(m), _) if !m.is_empty() => format!("{denied}: {m}"),
            (_, Some(r)) if !r.is_empty() => format!("{denied}: {r}"),
            _ => format!("{denied} without explanation"),
        };
        let reason: &'static str = match st["reason"].as_str() {
            Some("Forbidden") => "Forbidden",
            Some("Invalid") => "Invalid",
            Some("BadRequest") => "BadRequest",
            Some("NotFound") => "NotFound",
            Some("Conflict") => "Conflict",
            _ => "",
        };
        return Err(ApiError {
            code,
            reason,
            message,
            details: None,
        });
    }
    match (r["patchType"].as_str(), r["patch"].as_str()) {
        (Some("JSONPatch"), Some(p)) => {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(p)
                .map_err(|e| ApiError::internal(format!("Internal error occurred: webhook \"{name}\" returned an undecodable patch: {e}")))?;
            let ops: Value = serde_json::from_slice(&raw)
                .map_err(|e| ApiError::internal(format!("Internal error occurred: webhook \"{name}\" returned a patch that is not JSON: {e}")))?;
            crate::patch::json_patch(&obj, &ops)
                .map_err(|e| ApiError::internal(format!("Internal error occurred: webhook \"{name}\" returned a patch that does not apply: {}", e.message)))
        }
        (Some(other), _) => Err(ApiError::internal(format!(
            "Internal error occurred: webhook \"{name}\" returned unsupported patchType {other}"
        ))),
        _ => Ok(obj),
    }
}

/// Where a webhook is reached: its URL, or its Service's ClusterIP (named `svc.ns.svc` for TLS).
fn endpoint(state: &State, cc: &Value) -> Result<(String, u16, String, String), String> {
    if let Some(url) = cc["url"].as_str() {
        let uri: http::Uri = url.parse().map_err(|e| format!("webhook URL {url}: {e}"))?;
        if uri.scheme_str() != Some("https") {
            return Err(format!("webhook URL must use https: {url}"));
        }
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_string();
        let path = uri
            .path_and_query()
            .map_or("/".to_string(), |p| p.to_string());
        return Ok((host.clone(), uri.port_u16().unwrap_or(443), host, path));
    }
    let svc = &cc["service"];
    let (ns, name) = (
        svc["namespace"].as_str().unwrap_or_default(),
        svc["name"].as_str().unwrap_or_default(),
    );
    let key = Key {
        group: String::new(),
        resource: "services".into(),
        namespace: ns.into(),
        name: name.into(),
    };
    let obj = state
        .store
        .get(&key)
        .ok_or_else(|| format!("service \"{name}\" not found"))?;
    let ip = obj["spec"]["clusterIP"]
        .as_str()
        .filter(|ip| *ip != "None")
        .ok_or_else(|| format!("service {ns}/{name} has no ClusterIP"))?
        .to_string();
    let port = svc["port"].as_u64().unwrap_or(443) as u16;
    Ok((
        ip,
        port,
        format!("{name}.{ns}.svc"),
        svc["path"].as_str().unwrap_or("/").to_string(),
    ))
}

async fn post(state: &State, cc: &Value, review: &Value) -> Result<Value, String> {
    let (host, port, server_name, path) = endpoint(state, cc)?;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(b) = cc["caBundle"].as_str() {
        let pem = base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(|e| format!("caBundle is not base64: {e}"))?;
        for der in
            <CertificateDer<'static> as rustls::pki_types::pem::PemObject>::pem_slice_iter(&pem)
        {
            roots
                .add(der.map_err(|e| format!("caBundle: {e}"))?)
                .map_err(|e| format!("caBundle: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(server_name).map_err(|e| e.to_string())?;
    let url = format!("https://{host}:{port}{path}");
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("Post \"{url}\": {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("Post \"{url}\": tls: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("Post \"{url}\": {e}"))?;
    tokio::spawn(conn);
    let req = hyper::Request::post(&path)
        .header("Host", format!("{host}:{port}"))
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .body(Full::new(Bytes::from(
            serde_json::to_vec(review).expect("JSON values serialize"),
        )))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("Post \"{url}\": {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("Post \"{url}\": {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("Post \"{url}\": status {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("received invalid webhook response: {e}"))
}
