
/// Refuses a Role or ClusterRole that grants, or a binding that binds, what the writer does not
/// hold itself, unless it may `escalate` roles or `bind` the referenced role (kube-apiserver's
/// RBAC storage rules); an `aggregationRule` needs full authority.
pub fn confirm_no_escalation(
    state: &State,
    user: &UserInfo,
    rt: &ResourceType,
    obj: &Value,
) -> Result<(), ApiError> {
    if !state.rbac
        || rt.crd.is_some()
        || rt.group != RBAC_GROUP
        || user.groups.iter().any(|g| g == crate::rbac::MASTERS)
    {
        return Ok(());
    }
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let may = |verb: &str, resource: &str, object: &str| {
        decide(
            state,
            user,
            &Attributes::Resource {
                verb: verb.into(),
                group: RBAC_GROUP.into(),
                resource: resource.into(),
                subresource: String::new(),
                namespace: ns.into(),
                name: object.into(),
            },
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
    let rules = |v: &Value| -> Vec<PolicyRule> {
        serde_json::from_value(v.clone()).unwrap_or_default()
    };
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
