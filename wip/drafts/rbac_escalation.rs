
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
                        let a = Attributes::Resource {
                            verb: verb.clone(),
                            group: group.clone(),
                            resource: res.into(),
                            subresource: sub.into(),
                            namespace: String::new(),
                            name: name.clone(),
                        };
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
