//! The RBAC authorizer as a pure function of (user, request attributes, RBAC objects), the
//! aggregation of ClusterRoles, and the roles and bindings a new cluster starts with.
//!
//! It follows kube-apiserver's `rbac` authorizer: ClusterRoleBindings apply everywhere,
//! RoleBindings in their namespace (to a Role there or to a ClusterRole); a ServiceAccount
//! subject without a namespace means the binding's; `*` and `*/subresource` match as they do
//! there; `resourceNames` never match a request without a name. `system:masters` is allowed
//! everything before RBAC is asked, as the real server's privileged-group authorizer does.
//! RBAC only allows: a request no rule allows is denied with no reason, unless a binding that
//! applies names a role that does not exist (the reason says so).

use crate::authn::UserInfo;
use crate::selectors::LabelSelector;
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};
use serde_json::Value;
use std::borrow::Borrow;
use std::collections::HashMap;

/// What a request asks to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attributes {
    Resource {
        verb: String,
        group: String,
        resource: String,
        subresource: String,
        namespace: String,
        name: String,
    },
    NonResource {
        verb: String,
        path: String,
    },
}

impl Attributes {
    /// A request on a resource (`subresource` and `namespace` empty where there is none).
    pub fn resource(
        verb: &str,
        group: &str,
        resource: &str,
        subresource: &str,
        namespace: &str,
        name: &str,
    ) -> Self {
        Attributes::Resource {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            subresource: subresource.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    fn namespace(&self) -> &str {
        match self {
            Attributes::Resource { namespace, .. } => namespace,
            Attributes::NonResource { .. } => "",
        }
    }
}

/// The authorizer's answer; `reason` is what SubjectAccessReviews and Forbidden errors show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

/// The RBAC objects of a cluster, indexed for lookups.
#[derive(Debug, Default)]
pub struct Policy {
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    /// Roles by namespace, then name.
    roles: HashMap<String, HashMap<String, Vec<PolicyRule>>>,
    cluster_bindings: Vec<ClusterRoleBinding>,
    bindings: HashMap<String, Vec<RoleBinding>>,
}

fn typed<T: serde::de::DeserializeOwned>(objs: &[impl Borrow<Value>]) -> Vec<T> {
    objs.iter()
        .filter_map(|o| serde_json::from_value(o.borrow().clone()).ok())
        .collect()
}

impl Policy {
    /// Builds the policy from stored objects (those that do not decode are left out).
    pub fn new(
        roles: &[impl Borrow<Value>],
        cluster_roles: &[impl Borrow<Value>],
        bindings: &[impl Borrow<Value>],
        cluster_bindings: &[impl Borrow<Value>],
    ) -> Self {
        let mut p = Policy::default();
        for r in typed::<Role>(roles) {
            p.roles
                .entry(r.metadata.namespace.unwrap_or_default())
                .or_default()
                .insert(
                    r.metadata.name.unwrap_or_default(),
                    r.rules.unwrap_or_default(),
                );
        }
        for r in typed::<ClusterRole>(cluster_roles) {
            p.cluster_roles.insert(
                r.metadata.name.unwrap_or_default(),
                r.rules.unwrap_or_default(),
            );
        }
        for b in typed::<RoleBinding>(bindings) {
            p.bindings
                .entry(b.metadata.namespace.clone().unwrap_or_default())
                .or_default()
                .push(b);
        }
        p.cluster_bindings = typed(cluster_bindings);
        p
    }
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|x| x == "*" || x == want)
}

/// Whether one rule allows the request (kube-apiserver's `RuleAllows`).
pub fn rule_allows(a: &Attributes, rule: &PolicyRule) -> bool {
    let verbs = &rule.verbs;
    match a {
        Attributes::NonResource { verb, path } => {
            has(verbs, verb)
                && rule.non_resource_urls.iter().flatten().any(|u| {
                    u == "*"
                        || u == path
                        || u.strip_suffix('*').is_some_and(|p| path.starts_with(p))
                })
        }
        Attributes::Resource {
            verb,
            group,
            resource,
            subresource,
            name,
            ..
        } => {
            // `resource` or `resource/subresource`, compared without building the string.
            let combined = |r: &str| {
                if subresource.is_empty() {
                    r == resource
                } else {
                    r.split_once('/') == Some((resource.as_str(), subresource.as_str()))
                }
            };
            let resources = rule.resources.as_deref().unwrap_or_default();
            let resource_ok = resources.iter().any(|r| {
                r == "*"
                    || combined(r)
                    || (!subresource.is_empty()
                        && r.strip_prefix("*/").is_some_and(|s| s == subresource))
            });
            let names = rule.resource_names.as_deref().unwrap_or_default();
            has(verbs, verb)
                && has(rule.api_groups.as_deref().unwrap_or_default(), group)
                && resource_ok
                && (names.is_empty() || names.iter().any(|n| n == name))
        }
    }
}

/// Whether a binding's subject is this user (`namespace`: the binding's, for ServiceAccounts).
fn applies(user: &UserInfo, s: &Subject, namespace: &str) -> bool {
    match s.kind.as_str() {
        "User" => user.name == s.name,
        "Group" => user.groups.contains(&s.name),
        "ServiceAccount" => {
            let ns = s
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(namespace);
            !ns.is_empty()
                && user
                    .name
                    .strip_prefix("system:serviceaccount:")
                    .and_then(|r| r.split_once(':'))
                    == Some((ns, s.name.as_str()))
        }
        _ => false,
    }
}

fn describe(s: &Subject, namespace: &str) -> String {
    if s.kind == "ServiceAccount" {
        let ns = s
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(namespace);
        format!("ServiceAccount \"{}/{ns}\"", s.name)
    } else {
        format!("{} \"{}\"", s.kind, s.name)
    }
}

/// Which binding a rule source comes from (described only when a decision names it).
enum Via<'a> {
    Cluster(&'a ClusterRoleBinding, &'a Subject),
    Namespaced(&'a RoleBinding, &'a Subject, &'a str),
}

impl Via<'_> {
    fn describe(&self) -> String {
        match self {
            Via::Cluster(b, s) => format!(
                "ClusterRoleBinding \"{}\" of ClusterRole \"{}\" to {}",
                b.metadata.name.as_deref().unwrap_or_default(),
                b.role_ref.name,
                describe(s, "")
            ),
            Via::Namespaced(b, s, namespace) => format!(
                "RoleBinding \"{}/{namespace}\" of {} \"{}\" to {}",
                b.metadata.name.as_deref().unwrap_or_default(),
                b.role_ref.kind,
                b.role_ref.name,
                describe(s, namespace)
            ),
        }
    }
}

/// One rule source that applies to a user: which binding, and the rules (or why none).
struct Source<'a> {
    via: Via<'a>,
    rules: Result<&'a [PolicyRule], String>,
}

/// Every binding that applies to the user for a request in `namespace` ("" for cluster scope).
fn sources<'a>(user: &UserInfo, namespace: &'a str, p: &'a Policy) -> Vec<Source<'a>> {
    let mut out = Vec::new();
    let cluster_role = |name: &str| {
        p.cluster_roles
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| format!("clusterrole.rbac.authorization.k8s.io \"{name}\" not found"))
    };
    for b in &p.cluster_bindings {
        if let Some(s) = b.subjects.iter().flatten().find(|s| applies(user, s, "")) {
            out.push(Source {
                via: Via::Cluster(b, s),
                rules: cluster_role(&b.role_ref.name),
            });
        }
    }
    if namespace.is_empty() {
        return out;
    }
    for b in p.bindings.get(namespace).into_iter().flatten() {
        let Some(s) = b
            .subjects
            .iter()
            .flatten()
            .find(|s| applies(user, s, namespace))
        else {
            continue;
        };
        let rules = match b.role_ref.kind.as_str() {
            "ClusterRole" => cluster_role(&b.role_ref.name),
            _ => p
                .roles
                .get(namespace)
                .and_then(|roles| roles.get(&b.role_ref.name))
                .map(Vec::as_slice)
                .ok_or_else(|| {
                    format!(
                        "role.rbac.authorization.k8s.io \"{}\" not found",
                        b.role_ref.name
                    )
                }),
        };
        out.push(Source {
            via: Via::Namespaced(b, s, namespace),
            rules,
        });
    }
    out
}

/// The group whose members are allowed everything, before RBAC is asked.
pub const MASTERS: &str = "system:masters";

/// Whether the user is in [`MASTERS`] (allowed everything without looking at RBAC).
pub fn is_privileged(user: &UserInfo) -> bool {
    user.groups.iter().any(|g| g == MASTERS)
}

/// Decides one request.
pub fn authorize(user: &UserInfo, a: &Attributes, p: &Policy) -> Decision {
    if is_privileged(user) {
        return Decision {
            allowed: true,
            reason: String::new(),
        };
    }
    let mut errors = Vec::new();
    for s in sources(user, a.namespace(), p) {
        match s.rules {
            Ok(rules) => {
                if rules.iter().any(|r| rule_allows(a, r)) {
                    return Decision {
                        allowed: true,
                        reason: format!("RBAC: allowed by {}", s.via.describe()),
                    };
                }
            }
            Err(e) => errors.push(e),
        }
    }
    let reason = match errors.len() {
        0 => String::new(),
        1 => format!("RBAC: {}", errors[0]),
        _ => format!("RBAC: [{}]", errors.join(", ")),
    };
    Decision {
        allowed: false,
        reason,
    }
}

/// What `wanted` grants that `owner` does not allow, as kube-apiserver lists it when it refuses
/// an escalation: one `{APIGroups:[…], Resources:[…], …, Verbs:[…]}` per group, resource and
/// resource name with the missing verbs together, sorted.
pub fn not_covered(owner: &[PolicyRule], wanted: &[PolicyRule]) -> Vec<String> {
    let allowed = |a: &Attributes| owner.iter().any(|r| rule_allows(a, r));
    let q = |v: &[String]| {
        let quoted: Vec<String> = v.iter().map(|s| format!("{s:?}")).collect();
        format!("[{}]", quoted.join(" "))
    };
    // (group, resource, name) → missing verbs, in first-seen order.
    let mut missing: Vec<((String, String, String), Vec<String>)> = Vec::new();
    let mut lines = std::collections::BTreeSet::new();
    for rule in wanted {
        for url in rule.non_resource_urls.iter().flatten() {
            for verb in &rule.verbs {
                let a = Attributes::NonResource {
                    verb: verb.clone(),
                    path: url.clone(),
                };
                // A wildcard URL is covered only by an owner rule with the same or a wider one.
                let covered = owner.iter().any(|r| {
                    has(&r.verbs, verb)
                        && r.non_resource_urls.iter().flatten().any(|u| {
                            u == "*"
                                || u == url
                                || u.strip_suffix('*')
                                    .is_some_and(|p| url.trim_end_matches('*').starts_with(p))
                        })
                }) || (!url.ends_with('*') && allowed(&a));
                if !covered {
                    lines.insert(format!(
                        "{{NonResourceURLs:{}, Verbs:{}}}",
                        q(std::slice::from_ref(url)),
                        q(std::slice::from_ref(verb))
                    ));
                }
            }
        }
        let names: Vec<String> = match rule.resource_names.as_deref() {
            Some(n) if !n.is_empty() => n.to_vec(),
            _ => vec![String::new()],
        };
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                let (res, sub) = resource.split_once('/').unwrap_or((resource, ""));
                for name in &names {
                    for verb in &rule.verbs {
                        let a = Attributes::resource(verb, group, res, sub, "", name);
                        if allowed(&a) {
                            continue;
                        }
                        let key = (group.clone(), resource.clone(), name.clone());
                        match missing.iter_mut().find(|(k, _)| *k == key) {
                            Some((_, verbs)) if !verbs.contains(verb) => verbs.push(verb.clone()),
                            Some(_) => {}
                            None => missing.push((key, vec![verb.clone()])),
                        }
                    }
                }
            }
        }
    }
    for ((group, resource, name), verbs) in missing {
        let mut parts = vec![
            format!("APIGroups:{}", q(&[group])),
            format!("Resources:{}", q(&[resource])),
        ];
        if !name.is_empty() {
            parts.push(format!("ResourceNames:{}", q(&[name])));
        }
        parts.push(format!("Verbs:{}", q(&verbs)));
        lines.insert(format!("{{{}}}", parts.join(", ")));
    }
    lines.into_iter().collect()
}

/// Every rule that applies to the user in `namespace`, and whether some binding named a
/// missing role (`SelfSubjectRulesReview`'s `incomplete`).
pub fn rules_for(user: &UserInfo, namespace: &str, p: &Policy) -> (Vec<PolicyRule>, bool) {
    if is_privileged(user) {
        let all = |v: &str| Some(vec![v.to_string()]);
        return (
            vec![
                PolicyRule {
                    verbs: vec!["*".into()],
                    api_groups: all("*"),
                    resources: all("*"),
                    ..Default::default()
                },
                PolicyRule {
                    verbs: vec!["*".into()],
                    non_resource_urls: all("*"),
                    ..Default::default()
                },
            ],
            false,
        );
    }
    let mut rules = Vec::new();
    let mut incomplete = false;
    for s in sources(user, namespace, p) {
        match s.rules {
            Ok(r) => rules.extend(r.iter().cloned()),
            Err(_) => incomplete = true,
        }
    }
    (rules, incomplete)
}

/// The rules each aggregated ClusterRole should hold: the union, in order and without
/// duplicates, of the rules of every ClusterRole its `aggregationRule` selects (aggregated
/// ones included, so view → edit → admin chains settle).
pub fn aggregate(cluster_roles: &[impl Borrow<Value>]) -> Vec<(String, Vec<Value>)> {
    let objs: Vec<&Value> = cluster_roles.iter().map(Borrow::borrow).collect();
    let name = |o: &Value| {
        o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let mut rules: HashMap<String, Vec<Value>> = objs
        .iter()
        .map(|o| {
            let r = o["rules"].as_array().cloned().unwrap_or_default();
            (name(o), r)
        })
        .collect();
    let aggregated: Vec<(&Value, Vec<LabelSelector>)> = objs
        .iter()
        .filter_map(|o| {
            let sels = o["aggregationRule"]["clusterRoleSelectors"].as_array()?;
            Some((*o, sels.iter().map(LabelSelector::from_object).collect()))
        })
        .collect();
    // Each round can carry rules one link further along a chain.
    for _ in 0..=aggregated.len() {
        let mut changed = false;
        for (role, sels) in &aggregated {
            let me = name(role);
            let mut want: Vec<Value> = Vec::new();
            for o in &objs {
                let n = name(o);
                // Empty selectors select nothing (a real aggregation rule's selector is required).
                if n == me
                    || !sels
                        .iter()
                        .any(|s| *s != LabelSelector::default() && s.matches(o))
                {
                    continue;
                }
                for r in rules.get(&n).into_iter().flatten() {
                    if !want.contains(r) {
                        want.push(r.clone());
                    }
                }
            }
            if rules.get(&me) != Some(&want) {
                rules.insert(me, want);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    aggregated
        .into_iter()
        .map(|(role, _)| {
            let n = name(role);
            let r = rules.remove(&n).unwrap_or_default();
            (n, r)
        })
        .collect()
}

/// The ClusterRoles and ClusterRoleBindings a new cluster gets (the subset of kube-apiserver's
/// bootstrap policy that the lab's resources and clients use).
pub fn bootstrap_objects() -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(BOOTSTRAP)
        .expect("the built-in bootstrap policy parses")
        .into_iter()
        .filter(|v| v.is_object())
        .collect()
}

const BOOTSTRAP: &str = include_str!("rbac_bootstrap.yaml");

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        }
    }

    fn sa(ns: &str, name: &str) -> UserInfo {
        UserInfo::service_account(ns, name, "")
    }

    fn res(verb: &str, group: &str, resource: &str, ns: &str, name: &str) -> Attributes {
        let (resource, sub) = resource.split_once('/').unwrap_or((resource, ""));
        Attributes::resource(verb, group, resource, sub, ns, name)
    }

    fn path(verb: &str, p: &str) -> Attributes {
        Attributes::NonResource {
            verb: verb.into(),
            path: p.into(),
        }
    }

    /// The bootstrap policy, aggregated as the server does, plus `extra` objects.
    fn policy(extra: Value) -> Policy {
        let mut objs = bootstrap_objects();
        for o in extra.as_array().cloned().unwrap_or_default() {
            match o {
                Value::Array(inner) => objs.extend(inner),
                o => objs.push(o),
            }
        }
        let of =
            |k: &str| -> Vec<Value> { objs.iter().filter(|o| o["kind"] == k).cloned().collect() };
        let mut crs = of("ClusterRole");
        for (n, rules) in aggregate(&crs) {
            for c in crs.iter_mut().filter(|c| c["metadata"]["name"] == n) {
                c["rules"] = json!(rules);
            }
        }
        Policy::new(
            &of("Role"),
            &crs,
            &of("RoleBinding"),
            &of("ClusterRoleBinding"),
        )
    }

    /// deploy/components/workload-rbac in namespace `shop`.
    fn workload() -> Value {
        let docs: Vec<Value> = serde_saphyr::from_multiple(include_str!(
            "../../../deploy/components/workload-rbac/rbac.yaml"
        ))
        .unwrap();
        let docs: Vec<Value> = docs
            .into_iter()
            .map(|mut d| {
                d["metadata"]["namespace"] = json!("shop");
                d
            })
            .collect();
        json!(docs)
    }

    #[test]
    fn decisions() {
        let p = policy(json!([
            workload(),
            {"kind": "RoleBinding", "metadata": {"name": "dev-edit", "namespace": "shop"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
             "subjects": [{"kind": "User", "name": "dev"}]},
            {"kind": "RoleBinding", "metadata": {"name": "ops-view", "namespace": "shop"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
             "subjects": [{"kind": "Group", "name": "ops"}]},
            {"kind": "RoleBinding", "metadata": {"name": "lead-admin", "namespace": "shop"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
             "subjects": [{"kind": "User", "name": "lead"}]},
            {"kind": "Role", "metadata": {"name": "one-cm", "namespace": "shop"},
             "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["settings"], "verbs": ["get", "update"]},
                       {"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["patch"]}]},
            {"kind": "RoleBinding", "metadata": {"name": "one-cm", "namespace": "shop"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "one-cm"},
             "subjects": [{"kind": "ServiceAccount", "name": "tuner", "namespace": "shop"}]},
            {"kind": "RoleBinding", "metadata": {"name": "dangling", "namespace": "shop"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gone"},
             "subjects": [{"kind": "User", "name": "ghost"}]},
            {"kind": "ClusterRoleBinding", "metadata": {"name": "reviewer"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
             "subjects": [{"kind": "ServiceAccount", "name": "proxy", "namespace": "kube-system"}]},
        ]));
        let switch = sa("shop", "ghostwire-switch");
        let admin = user("lab-admin", &["system:masters", "system:authenticated"]);
        let dev = user("dev", &["system:authenticated"]);
        let ops = user("olga", &["ops", "system:authenticated"]);
        let lead = user("lead", &["system:authenticated"]);
        let tuner = sa("shop", "tuner");
        let ghost = user("ghost", &["system:authenticated"]);
        let proxy = sa("kube-system", "proxy");
        let stranger = sa("other", "ghostwire-switch");
        #[rustfmt::skip]
        let table: Vec<(&UserInfo, Attributes, bool)> = vec![
            // The preview switch's Roles, exactly.
            (&switch, res("list", "", "services", "shop", ""), true),
            (&switch, res("watch", "", "services", "shop", ""), true),
            (&switch, res("get", "", "services", "shop", "orders"), false),
            (&switch, res("get", "", "pods", "shop", "shop-1"), true),
            (&switch, res("list", "", "pods", "shop", ""), true),
            (&switch, res("watch", "", "pods", "shop", ""), true),
            (&switch, res("patch", "", "pods", "shop", "shop-1"), false),
            (&switch, res("list", "", "pods", "other", ""), false),
            (&switch, res("list", "", "pods", "", ""), false),
            (&switch, res("get", "", "pods/log", "shop", "shop-1"), false),
            (&switch, res("list", "", "secrets", "shop", ""), false),
            // Another namespace's account of the same name is someone else.
            (&stranger, res("list", "", "services", "shop", ""), false),
            // Everyone authenticated: discovery, version, self reviews; nothing else.
            (&switch, path("get", "/apis"), true),
            (&switch, path("get", "/apis/apps/v1"), true),
            (&switch, path("get", "/version"), true),
            (&switch, path("get", "/metrics"), false),
            (&switch, path("post", "/apis"), false),
            (&switch, res("create", "authorization.k8s.io", "selfsubjectaccessreviews", "", ""), true),
            (&switch, res("create", "authorization.k8s.io", "subjectaccessreviews", "", ""), false),
            (&switch, res("create", "authentication.k8s.io", "tokenreviews", "", ""), false),
            // system:masters is allowed everything.
            (&admin, res("delete", "", "nodes", "", "lab-node"), true),
            (&admin, path("get", "/metrics"), true),
            // edit: workloads and secrets, not RBAC; aggregated from view, so reads too.
            (&dev, res("create", "apps", "deployments", "shop", ""), true),
            (&dev, res("patch", "apps", "deployments/scale", "shop", "web"), true),
            (&dev, res("get", "", "secrets", "shop", "db"), true),
            (&dev, res("list", "", "pods", "shop", ""), true),
            (&dev, res("get", "", "pods/log", "shop", "web-1"), true),
            (&dev, res("create", "", "serviceaccounts/token", "shop", "default"), true),
            (&dev, res("create", "rbac.authorization.k8s.io", "roles", "shop", ""), false),
            (&dev, res("list", "", "pods", "other", ""), false),
            (&dev, res("list", "", "namespaces", "", ""), false),
            // view: reads, but no secrets and no writes.
            (&ops, res("list", "apps", "deployments", "shop", ""), true),
            (&ops, res("watch", "", "configmaps", "shop", ""), true),
            (&ops, res("get", "", "secrets", "shop", "db"), false),
            (&ops, res("update", "", "configmaps", "shop", "x"), false),
            // admin: edit plus RBAC in the namespace.
            (&lead, res("create", "rbac.authorization.k8s.io", "rolebindings", "shop", ""), true),
            (&lead, res("delete", "", "pods", "shop", "p"), true),
            (&lead, res("create", "authorization.k8s.io", "localsubjectaccessreviews", "shop", ""), true),
            (&lead, res("get", "", "nodes", "", "lab-node"), false),
            // resourceNames and */subresource.
            (&tuner, res("get", "", "configmaps", "shop", "settings"), true),
            (&tuner, res("get", "", "configmaps", "shop", "other"), false),
            (&tuner, res("list", "", "configmaps", "shop", ""), false),
            (&tuner, res("patch", "apps", "statefulsets/scale", "shop", "db"), true),
            (&tuner, res("patch", "apps", "statefulsets", "shop", "db"), false),
            // system:auth-delegator.
            (&proxy, res("create", "authentication.k8s.io", "tokenreviews", "", ""), true),
            (&proxy, res("create", "authorization.k8s.io", "subjectaccessreviews", "", ""), true),
            (&ghost, res("get", "", "pods", "shop", "p"), false),
        ];
        for (u, a, want) in table {
            assert_eq!(authorize(u, &a, &p).allowed, want, "{} {a:?}", u.name);
        }
    }

    #[test]
    fn reasons() {
        let p = policy(json!([
            workload(),
            {"kind": "RoleBinding", "metadata": {"name": "dangling", "namespace": "shop"},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "gone"},
             "subjects": [{"kind": "User", "name": "ghost"}]},
        ]));
        let d = authorize(
            &sa("shop", "ghostwire-switch"),
            &res("list", "", "services", "shop", ""),
            &p,
        );
        assert_eq!(
            d.reason,
            "RBAC: allowed by RoleBinding \"ghostwire-switch-init/shop\" of Role \"ghostwire-switch-init\" to ServiceAccount \"ghostwire-switch/shop\""
        );
        let d = authorize(
            &user("x", &["system:authenticated"]),
            &path("get", "/api"),
            &p,
        );
        assert_eq!(
            d.reason,
            "RBAC: allowed by ClusterRoleBinding \"system:discovery\" of ClusterRole \"system:discovery\" to Group \"system:authenticated\""
        );
        let d = authorize(
            &user("ghost", &["system:authenticated"]),
            &res("get", "", "pods", "shop", "p"),
            &p,
        );
        assert_eq!(
            d,
            Decision {
                allowed: false,
                reason: "RBAC: role.rbac.authorization.k8s.io \"gone\" not found".into()
            }
        );
        let d = authorize(&sa("shop", "x"), &res("get", "", "pods", "shop", "p"), &p);
        assert_eq!(d.reason, "");
    }

    #[test]
    fn aggregation_follows_chains_and_labels() {
        let crs = vec![
            json!({"metadata": {"name": "a", "labels": {"to-b": "true"}}, "rules": [{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]}),
            json!({"metadata": {"name": "b", "labels": {"to-c": "true"}}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"to-b": "true"}}]}, "rules": []}),
            json!({"metadata": {"name": "c"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"to-c": "true"}}, {"matchExpressions": [{"key": "extra", "operator": "Exists"}]}]}}),
            json!({"metadata": {"name": "d", "labels": {"extra": "1"}}, "rules": [{"verbs": ["list"], "apiGroups": [""], "resources": ["pods"]}, {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}]}),
        ];
        let got: HashMap<String, Vec<Value>> = aggregate(&crs).into_iter().collect();
        assert_eq!(got["b"], vec![crs[0]["rules"][0].clone()]);
        assert_eq!(
            got["c"],
            vec![crs[0]["rules"][0].clone(), crs[3]["rules"][0].clone()]
        );
    }

    #[test]
    fn bootstrap_has_the_default_roles() {
        let objs = bootstrap_objects();
        let names: Vec<&str> = objs
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap())
            .collect();
        for n in [
            "cluster-admin",
            "admin",
            "edit",
            "view",
            "system:basic-user",
            "system:discovery",
            "system:public-info-viewer",
            "system:auth-delegator",
        ] {
            assert!(names.contains(&n), "{n}");
        }
        // Every object decodes as its kind.
        for o in &objs {
            match o["kind"].as_str().unwrap() {
                "ClusterRole" => drop(serde_json::from_value::<ClusterRole>(o.clone()).unwrap()),
                "ClusterRoleBinding" => {
                    drop(serde_json::from_value::<ClusterRoleBinding>(o.clone()).unwrap())
                }
                k => panic!("unexpected {k}"),
            }
        }
    }
}
