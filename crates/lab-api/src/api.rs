//! The REST verbs on resources: get, list, create, update, patch, delete, deletecollection and
//! watch, with the request options (dryRun, fieldValidation, selectors, limit/continue) and the
//! object lifecycle rules (generation, finalizers, graceful deletion, status subresources).

use crate::admission;
use crate::clock;
use crate::http::{Body, Request, json_response};
use crate::patch;
use crate::resources::ResourceType;
use crate::scale;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::server::State;
use crate::ssa;
use crate::status::{ApiError, Cause, Subject};
use crate::store::{Key, StoreError, object_rv};
use crate::table;
use crate::typed;
use crate::validation;
use crate::watch;
use base64::Engine;
use hyper::Response;
use serde_json::{Value, json};
use std::sync::Arc;

/// What a resource request addresses.
pub struct Target {
    pub rt: Arc<ResourceType>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
}

impl Target {
    fn key(&self, name: &str) -> Key {
        Key {
            group: self.rt.group.clone(),
            resource: self.rt.resource.clone(),
            namespace: self.namespace.clone().unwrap_or_default(),
            name: name.to_string(),
        }
    }

    fn subject<'a>(&'a self, name: &'a str) -> Subject<'a> {
        Subject {
            group: &self.rt.group,
            kind: &self.rt.resource,
            name,
        }
    }
}

type Reply = Result<Response<Body>, ApiError>;

pub async fn handle(state: &Arc<State>, req: &Request, t: Target) -> Reply {
    if crate::authz::is_review(&t.rt) {
        return crate::authz::review(state, req, &t);
    }
    let method = req.method.as_str();
    let sub = t.sub.as_deref();
    if let Some(s) = sub
        && !t.rt.subresources.iter().any(|x| x == s)
    {
        return Err(ApiError::no_route());
    }
    let reply = match (method, t.name.as_deref(), sub) {
        ("GET", None, _) if req.flag("watch") => watch::serve(state, req, &t, None),
        ("GET", Some(name), None) if req.flag("watch") => watch::serve(state, req, &t, Some(name)),
        ("GET", None, _) => list(state, req, &t),
        ("GET", Some(name), _) => get(state, req, &t, name),
        ("POST", None, None) => create(state, req, &t).await,
        ("POST", Some(name), Some("token")) => crate::authz::token_request(state, req, &t, name),
        ("PUT", Some(name), _) => update(state, req, &t, name).await,
        ("PATCH", Some(name), _) => patch(state, req, &t, name).await,
        ("DELETE", Some(name), None) => delete(state, req, &t, name),
        ("DELETE", None, None) => delete_collection(state, req, &t),
        _ => Err(ApiError::method_not_allowed(method)),
    };
    if reply.is_ok() && matches!(method, "PUT" | "PATCH" | "DELETE") {
        crate::server::after_change(state, &t.rt);
    }
    reply
}

fn with_kind(rt: &ResourceType, obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.insert("apiVersion".into(), json!(rt.api_version()));
        m.insert("kind".into(), json!(rt.kind));
    }
    o
}

fn respond(req: &Request, rt: &ResourceType, code: u16, obj: &Value) -> Reply {
    if table::wanted(&req.accept) {
        let t = table::render(
            rt,
            &[obj],
            json!({"resourceVersion": obj["metadata"]["resourceVersion"]}),
            req.param("includeObject").unwrap_or("Metadata"),
        );
        return Ok(json_response(code, &t));
    }
    Ok(json_response(code, &with_kind(rt, obj)))
}

/// The reply of a request on one object, through its subresource's view (a Scale for `scale`).
fn respond_to(req: &Request, t: &Target, code: u16, obj: &Value) -> Reply {
    if t.sub.as_deref() == Some("scale") {
        return Ok(json_response(code, &scale::to_scale(&t.rt, obj)));
    }
    respond(req, &t.rt, code, obj)
}

fn get(state: &State, req: &Request, t: &Target, name: &str) -> Reply {
    let stored = state
        .store
        .get_stored(&t.key(name))
        .ok_or_else(|| ApiError::not_found(t.subject(name)))?;
    if t.sub.as_deref() == Some("scale") || table::wanted(&req.accept) {
        return respond_to(req, t, 200, &stored.object);
    }
    // The object itself: its stored JSON with the served type.
    Ok(crate::http::bytes_response(
        200,
        crate::serial::typed(&t.rt, &stored.json),
    ))
}

/// `continue` tokens: the last key returned and the list's resourceVersion.
fn continue_token(rv: u64, last: &Value) -> String {
    let raw = json!({"rv": rv, "ns": last["metadata"]["namespace"].as_str().unwrap_or_default(), "name": last["metadata"]["name"]}).to_string();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

fn parse_continue(token: &str) -> Result<(u64, String, String), ApiError> {
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    Ok((
        v["rv"].as_u64().ok_or_else(bad)?,
        v["ns"].as_str().ok_or_else(bad)?.to_string(),
        v["name"].as_str().ok_or_else(bad)?.to_string(),
    ))
}

pub fn selectors(
    req: &Request,
    rt: &ResourceType,
) -> Result<(LabelSelector, FieldSelector), ApiError> {
    Ok((
        LabelSelector::parse(req.param("labelSelector").unwrap_or_default())?,
        FieldSelector::parse(req.param("fieldSelector").unwrap_or_default(), rt)?,
    ))
}

fn list(state: &State, req: &Request, t: &Target) -> Reply {
    let (labels, fields) = selectors(req, &t.rt)?;
    let (all, rv) = state
        .store
        .list_stored(&t.rt.group, &t.rt.resource, t.namespace.as_deref());
    let mut list_rv = rv;
    let mut start: Option<(String, String)> = None;
    if let Some(c) = req.param("continue").filter(|c| !c.is_empty()) {
        let (crv, ns, name) = parse_continue(c)?;
        list_rv = crv;
        start = Some((ns, name));
    }
    let limit = req
        .param("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|l| *l > 0);
    let mut items: Vec<&crate::store::Stored> = Vec::new();
    let mut next = None;
    let mut remaining = 0usize;
    for stored in all.iter() {
        let obj = &stored.object;
        let before_start = start.as_ref().is_some_and(|(ns, name)| {
            let m = &obj["metadata"];
            (
                m["namespace"].as_str().unwrap_or_default(),
                m["name"].as_str().unwrap_or_default(),
            ) <= (ns.as_str(), name.as_str())
        });
        if before_start || !labels.matches(obj) || !fields.matches(obj) {
            continue;
        }
        if limit.is_some_and(|l| items.len() >= l) {
            remaining += 1;
            continue;
        }
        items.push(stored);
    }
    if remaining > 0
        && let Some(last) = items.last()
    {
        next = Some(continue_token(list_rv, &last.object));
    }
    let mut meta = json!({"resourceVersion": list_rv.to_string()});
    if let Some(n) = next {
        meta["continue"] = json!(n);
        meta["remainingItemCount"] = json!(remaining);
    }
    if table::wanted(&req.accept) {
        let items: Vec<&Value> = items.into_iter().map(|s| s.object.as_ref()).collect();
        return Ok(json_response(
            200,
            &table::render(
                &t.rt,
                &items,
                meta,
                req.param("includeObject").unwrap_or("Metadata"),
            ),
        ));
    }
    Ok(crate::http::bytes_response(
        200,
        crate::serial::list(&t.rt, &items, &meta),
    ))
}

/// Decodes a request body (JSON, YAML or protobuf); other media types are refused with 415.
pub fn decode_body(req: &Request) -> Result<Value, ApiError> {
    let ct = req
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    let v: Value = match ct {
        "application/json"
        | ""
        | "application/merge-patch+json"
        | "application/json-patch+json"
        | "application/strategic-merge-patch+json" => serde_json::from_slice(&req.body)
            .map_err(|e| ApiError::bad_request(format!("error decoding request body: {e}")))?,
        "application/yaml" | "application/apply-patch+yaml" => {
            let text = std::str::from_utf8(&req.body)
                .map_err(|e| ApiError::bad_request(format!("body is not UTF-8: {e}")))?;
            serde_saphyr::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?
        }
        crate::proto::MEDIA_TYPE => crate::proto::decode_body(&req.body)?,
        other => return Err(ApiError::unsupported_media_type(other)),
    };
    Ok(v)
}

fn check_kind(rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request("the request body is not an object"));
    }
    let av = rt.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => obj["apiVersion"] = json!(av),
        Some(v) if v == av => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({av})"
            )));
        }
    }
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("") => obj["kind"] = json!(rt.kind),
        Some(k) if k == rt.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: no kind \"{k}\" is registered for version \"{av}\"",
                rt.kind, rt.version, rt.kind
            )));
        }
    }
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    Ok(())
}

/// `fieldValidation`: Strict refuses unknown fields (400), Warn reports them, Ignore drops them.
fn decode_typed(
    req: &Request,
    rt: &ResourceType,
    obj: Value,
    warnings: &mut Vec<String>,
) -> Result<Value, ApiError> {
    let cannot = |e: String| {
        ApiError::bad_request(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            rt.kind, rt.version, rt.kind
        ))
    };
    let decoded = typed::decode(rt, &obj).map_err(cannot)?;
    let Some(d) = decoded else { return Ok(obj) };
    let mode = req.param("fieldValidation").unwrap_or("Warn");
    match mode {
        "Strict" if !d.unknown.is_empty() => {
            let list: Vec<String> = d
                .unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            Err(cannot(format!(
                "strict decoding error: {}",
                list.join(", ")
            )))
        }
        "Strict" | "Warn" | "Ignore" => {
            if mode == "Warn" {
                warnings.extend(d.unknown.iter().map(|f| format!("unknown field \"{f}\"")));
            }
            Ok(d.object)
        }
        other => Err(ApiError::bad_request(format!(
            "fieldValidation parameter unsupported: {other} (supported values: Ignore, Warn, Strict)"
        ))),
    }
}

fn dry_run(req: &Request) -> Result<bool, ApiError> {
    match req.param("dryRun") {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "dryRun: Unsupported value: \"{other}\": supported values: \"All\""
        ))),
    }
}

fn random_suffix(n: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

pub fn new_uid() -> String {
    use rand::Rng;
    let b: [u8; 16] = rand::rng().random();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

fn namespace_ready(state: &State, ns: &str, op: &str) -> Result<(), ApiError> {
    let key = Key {
        group: String::new(),
        resource: "namespaces".into(),
        namespace: String::new(),
        name: ns.into(),
    };
    let subject = Subject {
        group: "",
        kind: "namespaces",
        name: ns,
    };
    let obj = state.store.get(&key).ok_or_else(|| {
        ApiError::not_found(Subject {
            group: "",
            kind: "namespaces",
            name: ns,
        })
    })?;
    if op == "create" && obj["metadata"]["deletionTimestamp"].is_string() {
        return Err(ApiError::forbidden(
            subject,
            format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ),
        ));
    }
    Ok(())
}

fn with_warnings(mut r: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        let text = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(v) = hyper::header::HeaderValue::from_str(&text) {
            r.headers_mut().append("Warning", v);
        }
    }
    r
}

async fn create(state: &Arc<State>, req: &Request, t: &Target) -> Reply {
    let obj = decode_body(req)?;
    create_object(state, req, t, obj, false).await
}

/// The create path shared by POST and server-side apply of a new object (`applied`: its
/// managedFields are already those of the apply).
async fn create_object(
    state: &Arc<State>,
    req: &Request,
    t: &Target,
    mut obj: Value,
    applied: bool,
) -> Reply {
    let rt = &t.rt;
    check_kind(rt, &mut obj)?;
    let dry = dry_run(req)?;
    let meta = obj["metadata"]
        .as_object_mut()
        .expect("checked by check_kind");
    if let Some(ns) = &t.namespace {
        match meta.get("namespace").and_then(Value::as_str) {
            None | Some("") => {
                meta.insert("namespace".into(), json!(ns));
            }
            Some(n) if n == ns => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
    } else {
        meta.remove("namespace");
    }
    if meta
        .get("resourceVersion")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
    {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    let name = match meta.get("name").and_then(Value::as_str) {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => match meta.get("generateName").and_then(Value::as_str) {
            Some(g) if !g.is_empty() => format!("{g}{}", random_suffix(5)),
            _ => {
                return Err(ApiError::invalid(
                    &rt.group,
                    &rt.kind,
                    "",
                    vec![
                        Cause::required("metadata.name")
                            .with_message("name or generateName is required"),
                    ],
                ));
            }
        },
    };
    meta.insert("name".into(), json!(name));
    meta.insert("uid".into(), json!(new_uid()));
    meta.insert("creationTimestamp".into(), json!(clock::now()));
    for k in [
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "selfLink",
    ] {
        meta.remove(k);
    }
    if rt.has_status() || rt.resource == "pods" {
        meta.insert("generation".into(), json!(1));
    }
    if let Some(ns) = &t.namespace {
        namespace_ready(state, ns, "create")?;
    }
    let mut warnings = Vec::new();
    let mut obj = decode_typed(req, rt, obj, &mut warnings)?;
    if rt.has_status()
        && rt.resource != "namespaces"
        && rt.resource != "pods"
        && rt.resource != "services"
    {
        // Status is set through the status subresource, never on create.
        if let Some(m) = obj.as_object_mut() {
            m.remove("status");
        }
    }
    validation::default_object(rt, &mut obj);
    if !applied {
        track_update(state, req, t, None, &mut obj)?;
    }
    crate::crd::validate(state, rt, &obj, None)?;
    let mut obj = admission::mutate(state, &req.user, rt, "CREATE", obj, None, dry).await?;
    crate::authz::confirm_no_escalation(state, &req.user, rt, &obj)?;
    // Allocation and storage under one lock, so two creates never take the same ClusterIP.
    let stored = {
        let _alloc = state.alloc.lock().expect("alloc lock");
        validation::validate(rt, &mut obj, None, None, &state.store, &state.cidrs)?;
        if dry {
            if state.store.get(&t.key(&name)).is_some() {
                return Err(ApiError::already_exists(t.subject(&name)));
            }
            Arc::new(obj)
        } else {
            state
                .store
                .create(&t.key(&name), obj)
                .map_err(|e| store_error(e, t, &name))?
        }
    };
    if !dry {
        crate::server::after_create(state, rt, &stored);
    }
    Ok(with_warnings(respond(req, rt, 201, &stored)?, &warnings))
}

pub fn store_error(e: StoreError, t: &Target, name: &str) -> ApiError {
    match e {
        StoreError::Exists => ApiError::already_exists(t.subject(name)),
        StoreError::NotFound => ApiError::not_found(t.subject(name)),
        StoreError::Conflict => ApiError::stale(t.subject(name)),
        StoreError::Gone { requested, oldest } => {
            ApiError::gone(format!("too old resource version: {requested} ({oldest})"))
        }
        StoreError::Persist(e) => ApiError::internal(e.to_string()),
    }
}

/// Everything but metadata and status: what bumps `metadata.generation` when it changes.
fn spec_part(o: &Value) -> Value {
    let mut v = o.clone();
    if let Some(m) = v.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    v
}

/// How an update came: the resourceVersion it must replace, and whether server-side apply has
/// already set its managedFields.
#[derive(Clone, Copy)]
struct How {
    precondition: Option<u64>,
    applied: bool,
}

/// Builds the object an update stores from the current one and the client's new version,
/// following the subresource rules, then validates and stores it (compare-and-swap on `cur`).
async fn apply_update(
    state: &Arc<State>,
    req: &Request,
    t: &Target,
    cur: &Value,
    mut new: Value,
    how: How,
    warnings: &mut Vec<String>,
) -> Result<Option<Arc<Value>>, ApiError> {
    let How {
        precondition,
        applied,
    } = how;
    let name = t.name.as_deref().unwrap_or_default();
    let rt = &t.rt;
    check_kind(rt, &mut new)?;
    let dry = dry_run(req)?;
    match new["metadata"]["name"].as_str() {
        Some(n) if n == name => {}
        None | Some("") => new["metadata"]["name"] = json!(name),
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
    }
    if let Some(ns) = &t.namespace {
        match new["metadata"]["namespace"].as_str() {
            None | Some("") => new["metadata"]["namespace"] = json!(ns),
            Some(n) if n == ns => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
    }
    let mut new = decode_typed(req, rt, new, warnings)?;
    // A `scale` write arrives here as the stored object with the new replica count.
    let sub = t.sub.as_deref();
    new = match sub {
        Some("status") => {
            let mut o = cur.clone();
            o["status"] = new["status"].clone();
            if applied {
                o["metadata"]["managedFields"] = new["metadata"]["managedFields"].clone();
            }
            o
        }
        Some("ephemeralcontainers") => {
            // Only the ephemeral containers are taken; validation checks the existing ones.
            let mut o = cur.clone();
            o["spec"]["ephemeralContainers"] = new["spec"]["ephemeralContainers"].clone();
            validation::default_object(rt, &mut o);
            o
        }
        _ => {
            if rt.has_status() && rt.resource != "namespaces" {
                new["status"] = cur["status"].clone();
                if cur["status"].is_null()
                    && let Some(m) = new.as_object_mut()
                {
                    m.remove("status");
                }
            }
            validation::default_object(rt, &mut new);
            new
        }
    };
    // Metadata the server owns.
    for k in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "generation",
    ] {
        match cur["metadata"].get(k) {
            Some(v) => new["metadata"][k] = v.clone(),
            None => {
                if let Some(m) = new["metadata"].as_object_mut() {
                    m.remove(k);
                }
            }
        }
    }
    if let Some(g) = cur["metadata"]["generation"].as_i64()
        && spec_part(&new) != spec_part(cur)
    {
        new["metadata"]["generation"] = json!(g + 1);
    }
    // Finalizers may only be removed once deletion started; new ones may not be added then.
    if cur["metadata"]["deletionTimestamp"].is_string() {
        let had = cur["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let has = new["metadata"]["finalizers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if has.iter().any(|f| !had.contains(f)) {
            return Err(ApiError::invalid(
                &rt.group,
                &rt.kind,
                name,
                vec![Cause::forbidden(
                    "metadata.finalizers",
                    "no new finalizers can be added if the object is being deleted",
                )],
            ));
        }
    }
    if !applied {
        track_update(state, req, t, Some(cur), &mut new)?;
    }
    if new == *cur {
        // A no-op update does not bump the resourceVersion.
        return Ok(Some(Arc::new(cur.clone())));
    }
    crate::crd::validate(state, rt, &new, Some(cur))?;
    crate::authz::confirm_no_escalation(state, &req.user, rt, &new)?;
    let expect = precondition.or_else(|| object_rv(cur));
    let key = t.key(name);
    let _alloc = state.alloc.lock().expect("alloc lock");
    validation::validate(rt, &mut new, Some(cur), sub, &state.store, &state.cidrs)?;
    if dry {
        return Ok(Some(Arc::new(new)));
    }
    let finished = new["metadata"]["deletionTimestamp"].is_string()
        && new["metadata"]["finalizers"]
            .as_array()
            .is_none_or(Vec::is_empty)
        && !(rt.resource == "pods"
            && new["metadata"]["deletionGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(0)
                > 0);
    if finished {
        let last = state
            .store
            .update(&key, expect, new)
            .map_err(|e| store_error(e, t, name))?;
        // Someone else (the namespace terminator) may have removed it in between.
        return match state.store.delete(&key, None) {
            Ok(gone) => Ok(Some(gone)),
            Err(StoreError::NotFound) => Ok(Some(last)),
            Err(e) => Err(store_error(e, t, name)),
        };
    }
    match state.store.update(&key, expect, new) {
        Ok(o) => Ok(Some(o)),
        Err(StoreError::Conflict) if precondition.is_none() => Ok(None),
        Err(e) => Err(store_error(e, t, name)),
    }
}

async fn update(state: &Arc<State>, req: &Request, t: &Target, name: &str) -> Reply {
    let new = decode_body(req)?;
    let precondition = new["metadata"]["resourceVersion"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion: {s:?}")))
        });
    let precondition = precondition.transpose()?;
    let mut warnings = Vec::new();
    loop {
        let cur = state
            .store
            .get(&t.key(name))
            .ok_or_else(|| ApiError::not_found(t.subject(name)))?;
        let new = if t.sub.as_deref() == Some("scale") {
            scale::apply(&t.rt, &cur, &new)?
        } else {
            new.clone()
        };
        if let Some(o) = apply_update(
            state,
            req,
            t,
            &cur,
            new,
            How {
                precondition,
                applied: false,
            },
            &mut warnings,
        )
        .await?
        {
            return Ok(with_warnings(respond_to(req, t, 200, &o)?, &warnings));
        }
    }
}

async fn patch(state: &Arc<State>, req: &Request, t: &Target, name: &str) -> Reply {
    let ct = req
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_string();
    let body = decode_body(req)?;
    let applying = ct == "application/apply-patch+yaml";
    if applying {
        let manager = req.param("fieldManager").unwrap_or_default();
        if manager.is_empty() {
            return Err(ApiError::bad_request(
                "PATCH, application/apply-patch+yaml requires fieldManager to be set",
            ));
        }
        check_applied(&t.rt, &body)?;
    } else if req.param("force").is_some() {
        return Err(ApiError::bad_request(
            "force: Invalid value: true: may not be specified for non-apply patch",
        ));
    }
    let force = match req.param("force") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "force: Invalid value: {other:?}: must be true or false"
            )));
        }
    };
    let mut warnings = Vec::new();
    loop {
        let cur = match state.store.get(&t.key(name)) {
            Some(c) => c,
            None if applying && t.sub.is_none() => {
                let (obj, entries) = server_side_apply(state, req, t, &json!({}), &body, force)?;
                let mut obj = obj;
                set_managed(&mut obj, &entries);
                return create_object(state, req, t, obj, true).await;
            }
            None => return Err(ApiError::not_found(t.subject(name))),
        };
        let scaling = t.sub.as_deref() == Some("scale");
        // A patch to `scale` applies to the Scale, not to the object.
        let cur_v = if scaling {
            scale::to_scale(&t.rt, &cur)
        } else {
            with_kind(&t.rt, &cur)
        };
        let new = match ct.as_str() {
            "application/merge-patch+json" => {
                let mut n = cur_v.clone();
                patch::merge(&mut n, &body);
                n
            }
            "application/json-patch+json" => patch::json_patch(&cur_v, &body)?,
            "application/strategic-merge-patch+json" => {
                if t.rt.crd.is_some() && !scaling {
                    return Err(ApiError::unsupported_media_type(&ct));
                }
                patch::strategic(&cur_v, &body)?
            }
            "application/apply-patch+yaml" => {
                if scaling {
                    return Err(ApiError::unsupported_media_type(&ct));
                }
                if body["metadata"]["name"].as_str().is_some_and(|n| n != name) {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({}) does not match the name on the URL ({name})",
                        body["metadata"]["name"].as_str().unwrap_or_default()
                    )));
                }
                let (mut obj, entries) = server_side_apply(state, req, t, &cur_v, &body, force)?;
                set_managed(&mut obj, &entries);
                obj
            }
            other => return Err(ApiError::unsupported_media_type(other)),
        };
        let new = if scaling {
            scale::apply(&t.rt, &cur, &new)?
        } else {
            new
        };
        let precondition = new["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok());
        let precondition = precondition.filter(|p| Some(*p) != object_rv(&cur));
        if precondition.is_some() {
            return Err(ApiError::stale(t.subject(name)));
        }
        if let Some(o) = apply_update(
            state,
            req,
            t,
            &cur,
            new,
            How {
                precondition: None,
                applied: applying,
            },
            &mut warnings,
        )
        .await?
        {
            return Ok(with_warnings(respond_to(req, t, 200, &o)?, &warnings));
        }
    }
}

/// Who a write is recorded under in managedFields: `fieldManager`, else the User-Agent up to its
/// first `/` (`kubectl`, `kube-rs`).
fn field_manager(req: &Request) -> Result<String, ApiError> {
    if let Some(m) = req.param("fieldManager") {
        if m.len() > 128 {
            return Err(ApiError::bad_request(format!(
                "fieldManager: Too long: may not be more than 128 bytes (got {})",
                m.len()
            )));
        }
        if m.chars().any(char::is_control) {
            return Err(ApiError::bad_request(format!(
                "fieldManager: Invalid value: {m:?}: must contain only printable characters"
            )));
        }
        return Ok(m.to_string());
    }
    let ua = req.user_agent.split('/').next().unwrap_or_default();
    Ok(ua.chars().take(128).collect())
}

fn ssa_writer(req: &Request, t: &Target) -> Result<ssa::Writer, ApiError> {
    Ok(ssa::Writer {
        manager: field_manager(req)?,
        api_version: t.rt.api_version(),
        subresource: t.sub.clone().unwrap_or_default(),
        now: clock::now(),
    })
}

/// Runs `f` with the kind's schema as server-side apply reads it.
fn with_ssa_kind<R>(state: &State, rt: &ResourceType, f: impl FnOnce(ssa::Kind) -> R) -> R {
    let schema = crate::openapi::apply_schema(state, rt).unwrap_or_else(|| json!({}));
    f(ssa::Kind {
        ty: ssa::typed::Ty::new(&schema, crate::openapi::builtin_definitions()),
        has_status: rt.has_status(),
    })
}

fn ssa_error(e: ssa::SsaError, t: &Target, obj: &Value) -> ApiError {
    match e {
        ssa::SsaError::Conflicts(c) => ApiError {
            code: 409,
            reason: "Conflict",
            message: ssa::SsaError::message(&c),
            details: Some(json!({"causes": c.iter().map(|c| json!({
                "reason": "FieldManagerConflict",
                "message": format!("conflict with {}", c.owner),
                "field": c.path,
            })).collect::<Vec<_>>()})),
        },
        ssa::SsaError::Invalid(m) => {
            let ns = t.namespace.as_deref().unwrap_or_default();
            let name = obj["metadata"]["name"].as_str().unwrap_or_default();
            ApiError::bad_request(format!(
                "failed to create typed patch object ({ns}/{name}; {}, Kind={}): {m}",
                t.rt.api_version(),
                t.rt.kind
            ))
        }
    }
}

/// An applied configuration names its kind and carries no managedFields.
fn check_applied(rt: &ResourceType, body: &Value) -> Result<(), ApiError> {
    if !body.is_object() {
        return Err(ApiError::bad_request(
            "the applied configuration is not an object",
        ));
    }
    for (field, want) in [("apiVersion", rt.api_version()), ("kind", rt.kind.clone())] {
        match body[field].as_str() {
            None | Some("") => {
                return Err(ApiError::bad_request(format!(
                    "error decoding patch: {field} is required in an applied configuration"
                )));
            }
            Some(v) if v != want => {
                return Err(ApiError::bad_request(format!(
                    "{field}: Invalid value: {v:?}: must be {want:?}"
                )));
            }
            _ => {}
        }
    }
    if !body["metadata"]["managedFields"].is_null() {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    Ok(())
}

fn set_managed(obj: &mut Value, entries: &[ssa::Entry]) {
    let enc = ssa::encode(entries);
    if let Some(m) = obj["metadata"].as_object_mut() {
        if enc.as_array().is_some_and(Vec::is_empty) {
            m.remove("managedFields");
        } else {
            m.insert("managedFields".into(), enc);
        }
    }
}

/// Server-side apply of `config` onto `live`: the merged object and the new managedFields.
fn server_side_apply(
    state: &State,
    req: &Request,
    t: &Target,
    live: &Value,
    config: &Value,
    force: bool,
) -> Result<(Value, Vec<ssa::Entry>), ApiError> {
    let w = ssa_writer(req, t)?;
    let entries = ssa::decode(live).map_err(ApiError::bad_request)?;
    with_ssa_kind(state, &t.rt, |kind| {
        ssa::apply(live, config, kind, &entries, &w, force)
    })
    .map_err(|e| ssa_error(e, t, config))
}

/// Records the field ownership of an update (a create when `old` is `None`) in `new`. The
/// managedFields a client sends replace the stored ones; `[{}]` clears them.
fn track_update(
    state: &State,
    req: &Request,
    t: &Target,
    old: Option<&Value>,
    new: &mut Value,
) -> Result<(), ApiError> {
    let w = ssa_writer(req, t)?;
    let given = new["metadata"]["managedFields"].as_array().cloned();
    if given.as_ref().is_some_and(|g| {
        !g.is_empty()
            && g.iter()
                .all(|e| e.as_object().is_some_and(|m| m.is_empty()))
    }) {
        set_managed(new, &[]);
        return Ok(());
    }
    let base = match (&given, old) {
        (Some(g), _) if !g.is_empty() => ssa::decode(new),
        (_, Some(o)) => ssa::decode(o),
        _ => Ok(Vec::new()),
    }
    .map_err(|e| {
        ApiError::invalid(
            &t.rt.group,
            &t.rt.kind,
            new["metadata"]["name"].as_str().unwrap_or_default(),
            vec![Cause {
                field: "metadata.managedFields".into(),
                reason: "FieldValueInvalid",
                message: e,
            }],
        )
    })?;
    // A new object is compared with the zero value of its Go type, as the API server does;
    // custom kinds with one whose `metadata`, `spec` and `status` exist.
    let zero = || {
        crate::openapi::zero_object(&t.rt).unwrap_or_else(|| {
            let mut z = serde_json::Map::new();
            for k in ["metadata", "spec", "status"] {
                if new[k].is_object() {
                    z.insert(k.to_string(), json!({}));
                }
            }
            Value::Object(z)
        })
    };
    let old_v = old.cloned().unwrap_or_else(zero);
    let entries = with_ssa_kind(state, &t.rt, |kind| {
        ssa::update(&old_v, new, kind, &base, &w)
    });
    match entries {
        Ok(e) => set_managed(new, &e),
        // As the API server does, a write is never refused for its bookkeeping.
        Err(e) => tracing::warn!(error = ?e, "managedFields not updated"),
    }
    Ok(())
}

/// DeleteOptions from the body or the query.
struct DeleteOptions {
    grace: Option<i64>,
    uid: Option<String>,
    rv: Option<u64>,
    /// `Foreground` or `Orphan` (their finalizer is added); `Background` and none add nothing.
    propagation: Option<String>,
}

fn delete_options(req: &Request) -> Result<DeleteOptions, ApiError> {
    let body: Value = if req.body.is_empty() {
        json!({})
    } else {
        decode_body(req)?
    };
    let grace = body["gracePeriodSeconds"]
        .as_i64()
        .or_else(|| req.param("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    let propagation = body["propagationPolicy"]
        .as_str()
        .map(String::from)
        .or_else(|| req.param("propagationPolicy").map(String::from))
        .or_else(|| {
            (body["orphanDependents"] == true || req.param("orphanDependents") == Some("true"))
                .then(|| "Orphan".to_string())
        });
    if let Some(p) = &propagation
        && !["Foreground", "Background", "Orphan"].contains(&p.as_str())
    {
        return Err(ApiError::bad_request(format!(
            "propagationPolicy: Unsupported value: \"{p}\": supported values: \"Foreground\", \"Background\", \"Orphan\""
        )));
    }
    Ok(DeleteOptions {
        propagation,
        grace,
        uid: body["preconditions"]["uid"].as_str().map(String::from),
        rv: body["preconditions"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok()),
    })
}

fn delete(state: &Arc<State>, req: &Request, t: &Target, name: &str) -> Reply {
    let opts = delete_options(req)?;
    let dry = dry_run(req)?;
    let obj = delete_one(state, t, name, &opts, dry)?;
    respond(req, &t.rt, 200, &obj)
}

fn delete_one(
    state: &Arc<State>,
    t: &Target,
    name: &str,
    opts: &DeleteOptions,
    dry: bool,
) -> Result<Arc<Value>, ApiError> {
    let key = t.key(name);
    loop {
        let cur = state
            .store
            .get(&key)
            .ok_or_else(|| ApiError::not_found(t.subject(name)))?;
        if opts
            .uid
            .as_ref()
            .is_some_and(|u| cur["metadata"]["uid"].as_str() != Some(u))
        {
            return Err(ApiError::conflict(
                t.subject(name),
                format!(
                    "Precondition failed: UID in precondition: {}, UID in object meta: {}",
                    opts.uid.as_deref().unwrap_or_default(),
                    cur["metadata"]["uid"].as_str().unwrap_or_default()
                ),
            ));
        }
        if opts.rv.is_some_and(|r| Some(r) != object_rv(&cur)) {
            return Err(ApiError::stale(t.subject(name)));
        }
        if t.rt.group.is_empty()
            && t.rt.resource == "namespaces"
            && ["default", "kube-system", "kube-public"].contains(&name)
        {
            return Err(ApiError::forbidden(
                t.subject(name),
                "this namespace may not be deleted",
            ));
        }
        if dry {
            return Ok(cur);
        }
        // The garbage collector's finalizers: dependents deleted first, or orphaned first.
        let gc_finalizer = match opts.propagation.as_deref() {
            Some("Foreground") => Some("foregroundDeletion"),
            Some("Orphan") => Some("orphan"),
            _ => None,
        };
        if let Some(f) = gc_finalizer
            && t.rt.resource != "pods"
            && !cur["metadata"]["deletionTimestamp"].is_string()
        {
            let mut next = (*cur).clone();
            let list = next["metadata"]["finalizers"].as_array().cloned();
            let mut list = list.unwrap_or_default();
            if !list.iter().any(|x| x == f) {
                list.push(json!(f));
            }
            next["metadata"]["finalizers"] = json!(list);
            next["metadata"]["deletionTimestamp"] = json!(clock::rfc3339(clock::unix_now()));
            next["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            match state.store.update(&key, object_rv(&cur), next) {
                Ok(o) => return Ok(o),
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(store_error(e, t, name)),
            }
        }
        let finalizers = cur["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let namespace = t.rt.group.is_empty() && t.rt.resource == "namespaces";
        let graceful_pod = t.rt.group.is_empty()
            && t.rt.resource == "pods"
            && cur["spec"]["nodeName"]
                .as_str()
                .is_some_and(|n| !n.is_empty())
            && opts.grace != Some(0)
            && cur["status"]["phase"] != "Succeeded"
            && cur["status"]["phase"] != "Failed";
        let grace_zero_on_terminating =
            t.rt.resource == "pods" && opts.grace == Some(0) && !finalizers;
        if finalizers || namespace || (graceful_pod && !grace_zero_on_terminating) {
            if cur["metadata"]["deletionTimestamp"].is_string() && !graceful_pod {
                return Ok(cur);
            }
            let mut next = (*cur).clone();
            let grace = if graceful_pod {
                opts.grace
                    .or_else(|| cur["spec"]["terminationGracePeriodSeconds"].as_i64())
                    .unwrap_or(30)
            } else {
                0
            };
            if cur["metadata"]["deletionTimestamp"].is_string()
                && cur["metadata"]["deletionGracePeriodSeconds"]
                    .as_i64()
                    .is_some_and(|g| g <= grace)
            {
                return Ok(cur);
            }
            next["metadata"]["deletionTimestamp"] =
                json!(clock::rfc3339(clock::unix_now() + grace));
            next["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            if namespace {
                next["status"]["phase"] = json!("Terminating");
            }
            match state.store.update(&key, object_rv(&cur), next) {
                Ok(o) => {
                    if namespace {
                        crate::server::terminate_namespace(state, name);
                    }
                    return Ok(o);
                }
                Err(StoreError::Conflict) => continue,
                Err(e) => return Err(store_error(e, t, name)),
            }
        }
        match state.store.delete(&key, object_rv(&cur)) {
            Ok(o) => return Ok(o),
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(store_error(e, t, name)),
        }
    }
}

fn delete_collection(state: &Arc<State>, req: &Request, t: &Target) -> Reply {
    let (labels, fields) = selectors(req, &t.rt)?;
    let opts = delete_options(req)?;
    let dry = dry_run(req)?;
    let (all, _) = state
        .store
        .list(&t.rt.group, &t.rt.resource, t.namespace.as_deref());
    let mut items = Vec::new();
    for obj in all
        .iter()
        .filter(|o| labels.matches(o) && fields.matches(o))
    {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let ns = obj["metadata"]["namespace"].as_str().map(String::from);
        let target = Target {
            rt: t.rt.clone(),
            namespace: ns,
            name: None,
            sub: None,
        };
        match delete_one(state, &target, name, &opts, dry) {
            Ok(o) => items.push(with_kind(&t.rt, &o)),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({"kind": format!("{}List", t.rt.kind), "apiVersion": t.rt.api_version(), "metadata": {"resourceVersion": state.store.current_rv().to_string()}, "items": items});
    Ok(json_response(200, &list))
}
