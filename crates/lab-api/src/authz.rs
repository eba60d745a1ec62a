//! The request pipeline's security half, as kube-apiserver runs it: authenticate (certificate
//! or bearer token), impersonate (`Impersonate-*` headers, checked with the `impersonate`
//! verb), then authorize the request's attributes with RBAC ([`crate::rbac`]); and the APIs
//! built on them: SelfSubjectAccessReview, SubjectAccessReview, LocalSubjectAccessReview,
//! SelfSubjectRulesReview, TokenReview, SelfSubjectReview and TokenRequest.

use crate::api::Target;
use crate::authn::{self, API_AUDIENCE, AUTHENTICATED, TokenError, UNAUTHENTICATED, UserInfo};
use crate::clock;
use crate::http::{Body, Request, json_response};
use crate::rbac::{self, Attributes, Decision, Policy};
use crate::resources::ResourceType;
use crate::server::State;
use crate::status::{ApiError, Cause, Subject};
use crate::store::{Key, RBAC_GROUP};
use hyper::Response;
use hyper::header::HeaderMap;
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What a request presents: its client certificate's user, its bearer token, and whom it
/// asks to act as.
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    pub certificate: Option<UserInfo>,
    pub bearer: Option<String>,
    pub as_user: Option<String>,
    pub as_uid: Option<String>,
    pub as_groups: Vec<String>,
    pub as_extra: BTreeMap<String, Vec<String>>,
}

impl Credentials {
    pub fn new(certificate: Option<UserInfo>, headers: &HeaderMap) -> Self {
        let all = |name: &str| -> Vec<String> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok().map(String::from))
                .collect()
        };
        let one = |name: &str| all(name).into_iter().next();
        let mut as_extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in headers {
            if let Some(key) = name.as_str().strip_prefix("impersonate-extra-")
                && let Ok(v) = value.to_str()
            {
                as_extra
                    .entry(crate::http::percent_decode(key))
                    .or_default()
                    .push(v.to_string());
            }
        }
        Credentials {
            certificate,
            bearer: one("authorization")
                .and_then(|v| v.strip_prefix("Bearer ").map(|t| t.trim().to_string()))
                // An empty token is no token (the request is anonymous), as in Kubernetes.
                .filter(|t| !t.is_empty()),
            as_user: one("impersonate-user"),
            as_uid: one("impersonate-uid"),
            as_groups: all("impersonate-group"),
            as_extra,
        }
    }
}

/// Authenticates a bearer token for `audiences`: the admin token, or a ServiceAccount token
/// whose account (and bound Pod) still exist. Returns the user and the audiences it is valid for.
pub fn token_user(
    state: &State,
    token: &str,
    audiences: &[String],
) -> Result<(UserInfo, Vec<String>), TokenError> {
    if token == state.pki.token {
        return Ok((UserInfo::admin(), audiences.to_vec()));
    }
    let (claims, valid_for) =
        authn::verify(&state.pki.sa_key, token, audiences, clock::unix_now())?;
    let k = &claims.kube;
    let exists = |resource: &str, name: &str, uid: &str| {
        state
            .store
            .get(&Key {
                group: String::new(),
                resource: resource.into(),
                namespace: k.namespace.clone(),
                name: name.into(),
            })
            .is_some_and(|o| o["metadata"]["uid"].as_str() == Some(uid))
    };
    if !exists(
        "serviceaccounts",
        &k.serviceaccount.name,
        &k.serviceaccount.uid,
    ) || k
        .pod
        .as_ref()
        .is_some_and(|p| !exists("pods", &p.name, &p.uid))
    {
        return Err(TokenError::Invalidated);
    }
    Ok((claims.user(), valid_for))
}

/// The requester: its certificate's user, its token's, or `system:anonymous` when it presents
/// neither. A token that does not authenticate is a 401, never anonymous (as in Kubernetes).
fn authenticate(state: &State, creds: &Credentials) -> Result<UserInfo, ApiError> {
    if let Some(u) = &creds.certificate {
        return Ok(u.clone());
    }
    let Some(token) = creds.bearer.as_deref() else {
        return Ok(UserInfo::anonymous());
    };
    token_user(state, token, &[API_AUDIENCE.to_string()])
        .map(|(u, _)| u)
        .map_err(|_| ApiError::unauthorized())
}

/// The attributes of a request (kube-apiserver's RequestInfo): resource requests under
/// `/api/v1/…` and `/apis/GROUP/VERSION/…`, everything else (discovery included) by path.
pub fn attributes(method: &str, path: &str, watch: bool) -> Attributes {
    let trimmed = path.trim_end_matches('/');
    let segs: Vec<&str> = trimmed.split('/').skip(1).collect();
    let (group, rest): (&str, &[&str]) = match segs.as_slice() {
        ["api", _, rest @ ..] if !rest.is_empty() => ("", rest),
        ["apis", g, _, rest @ ..] if !rest.is_empty() => (g, rest),
        _ => {
            return Attributes::NonResource {
                verb: method.to_ascii_lowercase(),
                path: if path.is_empty() {
                    "/".into()
                } else {
                    path.into()
                },
            };
        }
    };
    let mut namespace = "";
    let mut parts = rest;
    if parts[0] == "namespaces" && parts.len() > 1 {
        namespace = parts[1];
        if parts.len() > 2 && !matches!(parts[2], "status" | "finalize") {
            parts = &parts[2..];
        }
    }
    let resource = parts[0];
    let name = parts.get(1).copied().unwrap_or_default();
    let subresource = parts.get(2).copied().unwrap_or_default();
    let other;
    let verb = match (method, name.is_empty()) {
        ("GET" | "HEAD", _) if watch => "watch",
        ("GET" | "HEAD", true) => "list",
        ("GET" | "HEAD", false) => "get",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "deletecollection",
        ("DELETE", false) => "delete",
        (method, _) => {
            other = method.to_ascii_lowercase();
            &other
        }
    };
    Attributes::resource(verb, group, resource, subresource, namespace, name)
}

/// The compiled policy and the store's RBAC generation it was built at.
pub type PolicyCache = (u64, Arc<Policy>);

/// The current RBAC objects as a compiled [`Policy`], rebuilt only when a write to one of
/// them bumped the store's RBAC generation since the last build.
fn policy(state: &State) -> Arc<Policy> {
    // Read before listing: the lists hold at least every write this generation counts, so a
    // policy is never filed under a generation newer than its objects.
    let generation = state.store.rbac_generation();
    if let Some((built_at, p)) = state.rbac_cache.read().expect("rbac cache lock").as_ref()
        && *built_at == generation
    {
        return p.clone();
    }
    let lists: Vec<Vec<Arc<Value>>> = [
        "roles",
        "clusterroles",
        "rolebindings",
        "clusterrolebindings",
    ]
    .iter()
    .map(|r| state.store.list(RBAC_GROUP, r, None).0)
    .collect();
    let p = Arc::new(Policy::new(&lists[0], &lists[1], &lists[2], &lists[3]));
    let mut cache = state.rbac_cache.write().expect("rbac cache lock");
    // Two requests may build at once; keep the newer.
    if cache.as_ref().is_none_or(|(g, _)| *g <= generation) {
        *cache = Some((generation, p.clone()));
    }
    p
}

/// Decides a request for `user` (everything is allowed when the server runs without RBAC).
pub fn decide(state: &State, user: &UserInfo, a: &Attributes) -> Decision {
    if !state.rbac || rbac::is_privileged(user) {
        return Decision {
            allowed: true,
            reason: String::new(),
        };
    }
    rbac::authorize(user, a, &policy(state))
}

/// Refuses a Role or ClusterRole that grants, or a binding that binds, what the writer does not
/// hold itself, unless it may `escalate` roles or `bind` the referenced role (kube-apiserver's
/// RBAC storage rules); an `aggregationRule` needs full authority.
pub fn confirm_no_escalation(
    state: &State,
    user: &UserInfo,
    rt: &ResourceType,
    obj: &Value,
) -> Result<(), ApiError> {
    if !state.rbac || rt.crd.is_some() || rt.group != RBAC_GROUP || rbac::is_privileged(user) {
        return Ok(());
    }
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let may = |verb: &str, resource: &str, object: &str| {
        decide(
            state,
            user,
            &Attributes::resource(verb, RBAC_GROUP, resource, "", ns, object),
        )
        .allowed
    };
    let refuse = |detail: String| {
        ApiError::forbidden(
            Subject {
                group: &rt.group,
                kind: &rt.resource,
                name,
            },
            detail,
        )
    };
    let rules =
        |v: &Value| -> Vec<PolicyRule> { serde_json::from_value(v.clone()).unwrap_or_default() };
    let (owner, _) = crate::rbac::rules_for(user, ns, &policy(state));
    let wanted = match rt.resource.as_str() {
        "roles" | "clusterroles" => {
            if may("escalate", &rt.resource, name) {
                return Ok(());
            }
            if obj["aggregationRule"].is_object() {
                let all = serde_json::from_value::<Vec<PolicyRule>>(json!([
                    {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
                    {"nonResourceURLs": ["*"], "verbs": ["*"]}
                ]))
                .expect("valid rules");
                if !crate::rbac::not_covered(&owner, &all).is_empty() {
                    return Err(refuse(
                        "must have cluster-admin privileges to use the aggregationRule".into(),
                    ));
                }
            }
            rules(&obj["rules"])
        }
        "rolebindings" | "clusterrolebindings" => {
            let role = obj["roleRef"]["name"].as_str().unwrap_or_default();
            let (resource, role_ns) = match obj["roleRef"]["kind"].as_str() {
                Some("Role") => ("roles", ns),
                _ => ("clusterroles", ""),
            };
            if may("bind", resource, role) {
                return Ok(());
            }
            let key = Key {
                group: RBAC_GROUP.into(),
                resource: resource.into(),
                namespace: role_ns.into(),
                name: role.into(),
            };
            match state.store.get(&key) {
                Some(r) => rules(&r["rules"]),
                None => {
                    return Err(refuse(format!(
                        "{resource}.{RBAC_GROUP} \"{role}\" not found"
                    )));
                }
            }
        }
        _ => return Ok(()),
    };
    let missing = crate::rbac::not_covered(&owner, &wanted);
    if missing.is_empty() {
        return Ok(());
    }
    let groups: Vec<String> = user.groups.iter().map(|g| format!("{g:?}")).collect();
    Err(refuse(format!(
        "user {:?} (groups=[{}]) is attempting to grant RBAC permissions not currently held:\n{}",
        user.name,
        groups.join(" "),
        missing.join("\n")
    )))
}

/// The 403 a real server answers, worded as its authorization filter words it.
pub fn forbidden(user: &UserInfo, a: &Attributes, reason: &str) -> ApiError {
    let (message, details) = match a {
        Attributes::NonResource { verb, path } => (
            format!(
                "forbidden: User \"{}\" cannot {verb} path \"{path}\"",
                user.name
            ),
            None,
        ),
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            namespace,
            name,
        } => {
            let combined = if subresource.is_empty() {
                resource.clone()
            } else {
                format!("{resource}/{subresource}")
            };
            let scope = if namespace.is_empty() {
                "at the cluster scope".to_string()
            } else {
                format!("in the namespace \"{namespace}\"")
            };
            let what = format!(
                "User \"{}\" cannot {verb} resource \"{combined}\" in API group \"{group}\" {scope}",
                user.name
            );
            let qualified = if group.is_empty() {
                resource.clone()
            } else {
                format!("{resource}.{group}")
            };
            let subject = if name.is_empty() {
                qualified
            } else {
                format!("{qualified} \"{name}\"")
            };
            let mut d = json!({"kind": resource});
            if !group.is_empty() {
                d["group"] = json!(group);
            }
            if !name.is_empty() {
                d["name"] = json!(name);
            }
            (format!("{subject} is forbidden: {what}"), Some(d))
        }
    };
    let message = if reason.is_empty() {
        message
    } else {
        format!("{message}: {reason}")
    };
    ApiError {
        code: 403,
        reason: "Forbidden",
        message,
        details,
    }
}

fn check(state: &State, user: &UserInfo, a: &Attributes) -> Result<(), ApiError> {
    let d = decide(state, user, a);
    if d.allowed {
        Ok(())
    } else {
        Err(forbidden(user, a, &d.reason))
    }
}

fn impersonation(verb: &str, group: &str, resource: &str, ns: &str, name: &str) -> Attributes {
    Attributes::resource(verb, group, resource, "", ns, name)
}

/// The user a request acts as after its `Impersonate-*` headers, each checked with the
/// `impersonate` verb for the requester.
fn impersonate(state: &State, requester: UserInfo, c: &Credentials) -> Result<UserInfo, ApiError> {
    let Some(name) = &c.as_user else {
        if !c.as_groups.is_empty() || !c.as_extra.is_empty() || c.as_uid.is_some() {
            return Err(ApiError::internal(
                "requested impersonation of groups, extra or uid without impersonating a user",
            ));
        }
        return Ok(requester);
    };
    let mut user = UserInfo {
        name: name.clone(),
        ..Default::default()
    };
    let sa = name
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'));
    match sa {
        Some((ns, sa_name)) => {
            check(
                state,
                &requester,
                &impersonation("impersonate", "", "serviceaccounts", ns, sa_name),
            )?;
            if c.as_groups.is_empty() {
                user.groups = UserInfo::service_account(ns, sa_name, "").groups;
                user.groups.retain(|g| g != AUTHENTICATED);
            }
        }
        None => check(
            state,
            &requester,
            &impersonation("impersonate", "", "users", "", name),
        )?,
    }
    for g in &c.as_groups {
        check(
            state,
            &requester,
            &impersonation("impersonate", "", "groups", "", g),
        )?;
        user.groups.push(g.clone());
    }
    if let Some(uid) = &c.as_uid {
        check(
            state,
            &requester,
            &impersonation("impersonate", "authentication.k8s.io", "uids", "", uid),
        )?;
        user.uid = uid.clone();
    }
    for (key, values) in &c.as_extra {
        for v in values {
            let a = Attributes::resource(
                "impersonate",
                "authentication.k8s.io",
                "userextras",
                key,
                "",
                v,
            );
            check(state, &requester, &a)?;
        }
        user.extra.insert(key.clone(), values.clone());
    }
    if user.name != authn::ANONYMOUS
        && !user
            .groups
            .iter()
            .any(|g| g == AUTHENTICATED || g == UNAUTHENTICATED)
    {
        user.groups.push(AUTHENTICATED.into());
    }
    Ok(user)
}

/// Authenticates, impersonates and authorizes a request; the user it runs as.
pub fn admit(state: &State, creds: &Credentials, req: &Request) -> Result<UserInfo, ApiError> {
    let requester = authenticate(state, creds)?;
    let user = impersonate(state, requester, creds)?;
    let attrs = attributes(req.method.as_str(), &req.path, req.flag("watch"));
    check(
        state,
        &user,
        &named_by_selector(attrs, req.param("fieldSelector")),
    )?;
    Ok(user)
}

/// A list or watch whose field selector asks for `metadata.name=X` is a request for X, as
/// kube-apiserver's RequestInfo has it, so `resourceNames` rules can allow it (a kubelet, or
/// an agent watching one ConfigMap).
pub fn named_by_selector(mut attrs: Attributes, field_selector: Option<&str>) -> Attributes {
    if let Attributes::Resource { verb, name, .. } = &mut attrs
        && name.is_empty()
        && matches!(verb.as_str(), "list" | "watch")
    {
        *name = field_selector
            .unwrap_or_default()
            .split(',')
            .find_map(|term| {
                let (k, v) = term.split_once("==").or_else(|| term.split_once('='))?;
                (k.trim() == "metadata.name" && !k.ends_with('!')).then(|| v.trim().to_string())
            })
            .unwrap_or_default();
    }
    attrs
}

/// Authenticates, impersonates and authorizes a streaming upgrade: `create` on `pods/exec`,
/// `pods/attach` or `pods/portforward`, whatever the HTTP method, as kube-apiserver asks of
/// WebSocket streaming since 1.31.
pub fn admit_stream(
    state: &State,
    creds: &Credentials,
    namespace: &str,
    name: &str,
    kind: crate::stream::Kind,
) -> Result<UserInfo, ApiError> {
    let requester = authenticate(state, creds)?;
    let user = impersonate(state, requester, creds)?;
    let a = Attributes::resource("create", "", "pods", kind.subresource(), namespace, name);
    check(state, &user, &a)?;
    Ok(user)
}

/// The review kinds: created, answered, never stored.
pub fn is_review(rt: &ResourceType) -> bool {
    rt.crd.is_none()
        && matches!(
            rt.group.as_str(),
            "authorization.k8s.io" | "authentication.k8s.io"
        )
}

fn spec_attributes(spec: &Value, namespace_override: Option<&str>) -> Result<Attributes, ApiError> {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let r = &spec["resourceAttributes"];
    let n = &spec["nonResourceAttributes"];
    match (r.is_object(), n.is_object()) {
        (true, false) => Ok(Attributes::Resource {
            verb: s(&r["verb"]),
            group: s(&r["group"]),
            resource: s(&r["resource"]),
            subresource: s(&r["subresource"]),
            namespace: namespace_override.map_or_else(|| s(&r["namespace"]), String::from),
            name: s(&r["name"]),
        }),
        (false, true) => Ok(Attributes::NonResource {
            verb: s(&n["verb"]),
            path: s(&n["path"]),
        }),
        _ => Err(ApiError::invalid(
            "authorization.k8s.io",
            "SelfSubjectAccessReview",
            "",
            vec![Cause::invalid(
                "spec.resourceAttributes",
                r,
                "exactly one of nonResourceAttributes or resourceAttributes must be specified",
            )],
        )),
    }
}

fn user_from_spec(spec: &Value) -> UserInfo {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x.as_str().map(String::from))
            .collect()
    };
    UserInfo {
        name: spec["user"].as_str().unwrap_or_default().into(),
        uid: spec["uid"].as_str().unwrap_or_default().into(),
        groups: strings(&spec["groups"]),
        extra: spec["extra"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), strings(v)))
            .collect(),
    }
}

fn access_status(d: &Decision) -> Value {
    let mut s = json!({"allowed": d.allowed});
    if !d.reason.is_empty() {
        s["reason"] = json!(d.reason);
    }
    s
}

fn rule_json(r: &k8s_openapi::api::rbac::v1::PolicyRule) -> (bool, Value) {
    match &r.non_resource_urls {
        Some(urls) if !urls.is_empty() => {
            (false, json!({"verbs": r.verbs, "nonResourceURLs": urls}))
        }
        _ => {
            let mut v = json!({"verbs": r.verbs, "apiGroups": r.api_groups.clone().unwrap_or_default(), "resources": r.resources.clone().unwrap_or_default()});
            if let Some(n) = r.resource_names.as_ref().filter(|n| !n.is_empty()) {
                v["resourceNames"] = json!(n);
            }
            (true, v)
        }
    }
}

/// POST of a review: the answer is the request with its `status` filled in (201).
pub fn review(state: &Arc<State>, req: &Request, t: &Target) -> Result<Response<Body>, ApiError> {
    if req.method != hyper::Method::POST || t.name.is_some() {
        return Err(ApiError::method_not_allowed(req.method.as_str()));
    }
    let mut body = crate::api::decode_body(req)?;
    if !body.is_object() {
        return Err(ApiError::bad_request("the request body is not an object"));
    }
    body["apiVersion"] = json!(t.rt.api_version());
    body["kind"] = json!(t.rt.kind);
    if !body["metadata"].is_object() {
        body["metadata"] = json!({});
    }
    body["metadata"]["creationTimestamp"] = Value::Null;
    let spec = body["spec"].clone();
    let user = &req.user;
    body["status"] = match t.rt.resource.as_str() {
        "selfsubjectaccessreviews" => {
            let a = spec_attributes(&spec, None)?;
            access_status(&decide(state, user, &a))
        }
        "subjectaccessreviews" | "localsubjectaccessreviews" => {
            let who = user_from_spec(&spec);
            if who.name.is_empty() && who.groups.is_empty() {
                return Err(ApiError::invalid(
                    "authorization.k8s.io",
                    &t.rt.kind,
                    "",
                    vec![Cause::invalid(
                        "spec.user",
                        &json!(""),
                        "at least one of user or group must be specified",
                    )],
                ));
            }
            let a = spec_attributes(&spec, t.namespace.as_deref())?;
            if let Some(ns) = &t.namespace {
                body["metadata"]["namespace"] = json!(ns);
                body["spec"]["resourceAttributes"]["namespace"] = json!(ns);
            }
            access_status(&decide(state, &who, &a))
        }
        "selfsubjectrulesreviews" => {
            let ns = spec["namespace"].as_str().unwrap_or_default();
            let (rules, incomplete) = if state.rbac {
                rbac::rules_for(user, ns, &policy(state))
            } else {
                rbac::rules_for(&UserInfo::admin(), ns, &Policy::default())
            };
            let (mut res, mut non) = (Vec::new(), Vec::new());
            for r in &rules {
                match rule_json(r) {
                    (true, v) => res.push(v),
                    (false, v) => non.push(v),
                }
            }
            json!({"resourceRules": res, "nonResourceRules": non, "incomplete": incomplete})
        }
        "tokenreviews" => {
            let token = spec["token"].as_str().unwrap_or_default();
            let mut wanted: Vec<String> = spec["audiences"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(String::from))
                .collect();
            if wanted.is_empty() {
                wanted.push(API_AUDIENCE.into());
            }
            match token_user(state, token, &wanted) {
                Ok((u, audiences)) => {
                    json!({"authenticated": true, "user": u.to_json(), "audiences": audiences})
                }
                Err(e) => json!({"authenticated": false, "user": {}, "error": e.to_string()}),
            }
        }
        "selfsubjectreviews" => json!({"userInfo": user.to_json()}),
        _ => return Err(ApiError::method_not_allowed("POST")),
    };
    Ok(json_response(201, &body))
}

/// `serviceaccounts/NAME/token` (TokenRequest): a signed token for the account, bound to a
/// Pod (or Secret) when `boundObjectRef` says so.
pub fn token_request(
    state: &Arc<State>,
    req: &Request,
    t: &Target,
    name: &str,
) -> Result<Response<Body>, ApiError> {
    let ns = t.namespace.clone().unwrap_or_default();
    let get = |resource: &str, name: &str| {
        state.store.get(&Key {
            group: String::new(),
            resource: resource.into(),
            namespace: ns.clone(),
            name: name.into(),
        })
    };
    let account = get("serviceaccounts", name).ok_or_else(|| {
        ApiError::not_found(crate::status::Subject {
            group: "",
            kind: "serviceaccounts",
            name,
        })
    })?;
    let mut body = crate::api::decode_body(req)?;
    if !body.is_object() {
        return Err(ApiError::bad_request("the request body is not an object"));
    }
    let expires = body["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
    let invalid = |field: &str, value: &Value, detail: &str| {
        ApiError::invalid(
            "authentication.k8s.io",
            "TokenRequest",
            name,
            vec![Cause::invalid(field, value, detail)],
        )
    };
    if expires < 600 {
        return Err(invalid(
            "spec.expirationSeconds",
            &json!(expires),
            "may not specify a duration less than 10 minutes",
        ));
    }
    if expires > 1 << 32 {
        return Err(invalid(
            "spec.expirationSeconds",
            &json!(expires),
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let mut audiences: Vec<String> = body["spec"]["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    if audiences.is_empty() {
        audiences.push(API_AUDIENCE.into());
    }
    let bound = &body["spec"]["boundObjectRef"];
    let mut pod = None;
    if bound.is_object() {
        let kind = bound["kind"].as_str().unwrap_or_default();
        let bname = bound["name"].as_str().unwrap_or_default();
        let resource = match kind {
            "Pod" => "pods",
            "Secret" => "secrets",
            other => {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token to object of type {other}"
                )));
            }
        };
        let obj = get(resource, bname).ok_or_else(|| {
            ApiError::not_found(crate::status::Subject {
                group: "",
                kind: resource,
                name: bname,
            })
        })?;
        let uid = obj["metadata"]["uid"].as_str().unwrap_or_default();
        if kind == "Pod" {
            let pod_sa = obj["spec"]["serviceAccountName"]
                .as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or("default");
            if pod_sa != name {
                return Err(ApiError::bad_request(format!(
                    "cannot bind token for serviceaccount \"{name}\" to pod running with different serviceaccount name."
                )));
            }
        }
        if let Some(want) = bound["uid"].as_str().filter(|u| !u.is_empty())
            && want != uid
        {
            return Err(ApiError::conflict(
                crate::status::Subject {
                    group: "",
                    kind,
                    name: bname,
                },
                format!(
                    "the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
                ),
            ));
        }
        if kind == "Pod" {
            pod = Some(authn::Ref {
                name: bname.into(),
                uid: uid.into(),
            });
        }
        body["spec"]["boundObjectRef"]["uid"] = json!(uid);
    }
    let now = clock::unix_now();
    let claims = authn::Claims {
        iss: authn::ISSUER.into(),
        sub: format!("system:serviceaccount:{ns}:{name}"),
        aud: audiences.clone(),
        exp: now + expires,
        iat: now,
        nbf: now,
        jti: crate::api::new_uid(),
        kube: authn::KubeClaims {
            namespace: ns.clone(),
            serviceaccount: authn::Ref {
                name: name.into(),
                uid: account["metadata"]["uid"]
                    .as_str()
                    .unwrap_or_default()
                    .into(),
            },
            pod,
        },
    };
    let token = authn::sign(&state.pki.sa_key, &claims);
    body["apiVersion"] = json!("authentication.k8s.io/v1");
    body["kind"] = json!("TokenRequest");
    body["metadata"] =
        json!({"name": name, "namespace": ns, "creationTimestamp": clock::rfc3339(now)});
    body["spec"]["audiences"] = json!(audiences);
    body["spec"]["expirationSeconds"] = json!(expires);
    body["status"] = json!({"token": token, "expirationTimestamp": clock::rfc3339(now + expires)});
    Ok(json_response(201, &body))
}

/// Fills every aggregated ClusterRole's rules from the roles its selectors pick (the
/// clusterrole-aggregation controller's job), writing only those that changed.
pub fn sync_aggregation(state: &State) {
    let (roles, _) = state.store.list(RBAC_GROUP, "clusterroles", None);
    for (name, rules) in rbac::aggregate(&roles) {
        let Some(cur) = roles
            .iter()
            .find(|r| r["metadata"]["name"] == name.as_str())
        else {
            continue;
        };
        if cur["rules"].as_array() == Some(&rules) {
            continue;
        }
        let mut next = (**cur).clone();
        next["rules"] = json!(rules);
        let key = Key {
            group: RBAC_GROUP.into(),
            resource: "clusterroles".into(),
            namespace: String::new(),
            name,
        };
        if let Err(e) = state.store.update(&key, crate::store::object_rv(cur), next) {
            tracing::warn!(error = %e, role = %key.name, "could not aggregate a ClusterRole");
        }
    }
}

/// Whether a change to this type may change an aggregated ClusterRole.
pub fn aggregates(rt: &ResourceType) -> bool {
    rt.group == RBAC_GROUP && rt.resource == "clusterroles"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_attributes() {
        #[rustfmt::skip]
        let table = [
            ("GET", "/api/v1/namespaces/shop/pods", false, Attributes::resource("list", "", "pods", "", "shop", "")),
            ("GET", "/api/v1/namespaces/shop/pods", true, Attributes::resource("watch", "", "pods", "", "shop", "")),
            ("GET", "/api/v1/namespaces/shop/pods/web", false, Attributes::resource("get", "", "pods", "", "shop", "web")),
            ("GET", "/api/v1/namespaces/shop/pods/web/log", false, Attributes::resource("get", "", "pods", "log", "shop", "web")),
            ("POST", "/api/v1/namespaces/shop/serviceaccounts/sa/token", false, Attributes::resource("create", "", "serviceaccounts", "token", "shop", "sa")),
            ("PATCH", "/apis/apps/v1/namespaces/shop/deployments/web/scale", false, Attributes::resource("patch", "apps", "deployments", "scale", "shop", "web")),
            ("DELETE", "/api/v1/namespaces/shop/pods", false, Attributes::resource("deletecollection", "", "pods", "", "shop", "")),
            ("DELETE", "/api/v1/namespaces/shop/pods/p", false, Attributes::resource("delete", "", "pods", "", "shop", "p")),
            ("PUT", "/api/v1/namespaces/shop/status", false, Attributes::resource("update", "", "namespaces", "status", "shop", "shop")),
            ("GET", "/api/v1/namespaces/shop", false, Attributes::resource("get", "", "namespaces", "", "shop", "shop")),
            ("GET", "/api/v1/namespaces", false, Attributes::resource("list", "", "namespaces", "", "", "")),
            ("GET", "/api/v1/nodes/lab-node", false, Attributes::resource("get", "", "nodes", "", "", "lab-node")),
            ("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", false, Attributes::resource("create", "authorization.k8s.io", "selfsubjectaccessreviews", "", "", "")),
        ];
        for (m, p, w, want) in table {
            assert_eq!(attributes(m, p, w), want, "{m} {p}");
        }
        for p in [
            "/api",
            "/api/v1",
            "/apis",
            "/apis/apps",
            "/apis/apps/v1",
            "/version",
            "/openapi/v2",
        ] {
            assert_eq!(
                attributes("GET", p, false),
                Attributes::NonResource {
                    verb: "get".into(),
                    path: p.into()
                }
            );
        }
    }

    #[test]
    fn a_name_field_selector_names_a_list_or_watch() {
        let named = |m: &str, w: bool, sel: &str| {
            named_by_selector(
                attributes(m, "/api/v1/namespaces/shop/configmaps", w),
                Some(sel),
            )
        };
        assert_eq!(
            named("GET", true, "metadata.name=web-ai"),
            Attributes::resource("watch", "", "configmaps", "", "shop", "web-ai")
        );
        assert_eq!(
            named("GET", false, "a=b,metadata.name==web-ai"),
            Attributes::resource("list", "", "configmaps", "", "shop", "web-ai")
        );
        assert_eq!(
            named("GET", false, "metadata.name!=web-ai"),
            Attributes::resource("list", "", "configmaps", "", "shop", "")
        );
        assert_eq!(
            named("DELETE", false, "metadata.name=x"),
            Attributes::resource("deletecollection", "", "configmaps", "", "shop", "")
        );
    }

    #[test]
    fn forbidden_messages_match_the_real_server() {
        let u = UserInfo::service_account("shop", "web", "");
        let e = forbidden(
            &u,
            &Attributes::resource("list", "", "pods", "", "shop", ""),
            "",
        );
        assert_eq!(
            e.message,
            "pods is forbidden: User \"system:serviceaccount:shop:web\" cannot list resource \"pods\" in API group \"\" in the namespace \"shop\""
        );
        assert_eq!(e.to_status()["details"], json!({"kind": "pods"}));
        let e = forbidden(
            &u,
            &Attributes::resource("patch", "apps", "deployments", "scale", "shop", "web"),
            "",
        );
        assert_eq!(
            e.message,
            "deployments.apps \"web\" is forbidden: User \"system:serviceaccount:shop:web\" cannot patch resource \"deployments/scale\" in API group \"apps\" in the namespace \"shop\""
        );
        assert_eq!(
            e.to_status()["details"],
            json!({"kind": "deployments", "group": "apps", "name": "web"})
        );
        let e = forbidden(
            &u,
            &Attributes::resource("get", "", "nodes", "", "", "n1"),
            "RBAC: x",
        );
        assert_eq!(
            e.message,
            "nodes \"n1\" is forbidden: User \"system:serviceaccount:shop:web\" cannot get resource \"nodes\" in API group \"\" at the cluster scope: RBAC: x"
        );
        let e = forbidden(
            &u,
            &Attributes::NonResource {
                verb: "get".into(),
                path: "/metrics".into(),
            },
            "",
        );
        assert_eq!(
            e.message,
            "forbidden: User \"system:serviceaccount:shop:web\" cannot get path \"/metrics\""
        );
        assert_eq!(e.code, 403);
    }
}
