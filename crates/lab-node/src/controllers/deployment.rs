//! Deployment → ReplicaSets, as the Kubernetes deployment controller does it: one ReplicaSet per
//! pod template (`<name>-<pod-template-hash>`, revision annotations), rolled by `RollingUpdate`
//! within maxSurge/maxUnavailable counted from the pods themselves, or by `Recreate`; pause and
//! resume; progressDeadlineSeconds; status and the Available/Progressing conditions `kubectl
//! rollout status` reads.

use super::{
    Action, Kind, World, active, available, deleting, int, int_or_percent, owner_ref, ready,
    set_condition, template_hash, template_key,
};
use crate::util::str_of;
use serde_json::{Value, json};

pub const REVISION: &str = "deployment.kubernetes.io/revision";

/// One ReplicaSet of the Deployment, counted from its pods.
struct Rs<'a> {
    obj: &'a Value,
    name: String,
    spec: i64,
    /// Pods not terminating and not finished.
    active: i64,
    /// Available pods, at most `spec` (extra pods are about to go, and may be the available ones).
    available: i64,
    ready: i64,
    /// Pods of any state, terminating ones included.
    any: i64,
    revision: i64,
}

impl Rs<'_> {
    /// What it may run at once: its spec, or more while extra pods are still going.
    fn count(&self) -> i64 {
        self.spec.max(self.active)
    }
}

fn revision(o: &Value) -> i64 {
    o["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn scale(ns: &str, rs: &Rs<'_>, to: i64, d_replicas: i64, max: i64) -> Action {
    Action::Patch {
        kind: Kind::ReplicaSet,
        ns: ns.to_string(),
        name: rs.name.clone(),
        patch: json!({"metadata": {"annotations": {
                          "deployment.kubernetes.io/desired-replicas": d_replicas.to_string(),
                          "deployment.kubernetes.io/max-replicas": max.to_string()}},
                      "spec": {"replicas": to}}),
    }
}

pub fn plan(world: &World, d: &Value) -> Vec<Action> {
    if deleting(d) {
        return Vec::new();
    }
    let ns = str_of(d, "/metadata/namespace");
    let name = str_of(d, "/metadata/name");
    let spec = &d["spec"];
    let replicas = int(&spec["replicas"], 1).max(0);
    let min_ready = int(&spec["minReadySeconds"], 0);
    let template = &spec["template"];
    let key = template_key(template);
    let now = world.now;
    let now_s = lab_api::clock::rfc3339(now);
    let recreate = spec["strategy"]["type"] == "Recreate";
    let ru = &spec["strategy"]["rollingUpdate"];
    let surge = if recreate {
        0
    } else {
        int_or_percent(&ru["maxSurge"], replicas, "25%", true)
    };
    let mut unavail = if recreate {
        replicas
    } else {
        int_or_percent(&ru["maxUnavailable"], replicas, "25%", false)
    };
    if surge == 0 && unavail == 0 {
        unavail = 1;
    }
    let max_total = replicas + surge;
    let paused = spec["paused"] == true;
    let mut rss: Vec<Rs<'_>> = world
        .owned(Kind::ReplicaSet, d)
        .filter(|r| !deleting(r))
        .map(|r| {
            let pods: Vec<&Value> = world.owned(Kind::Pod, r).collect();
            let spec = int(&r["spec"]["replicas"], 1);
            let avail = pods.iter().filter(|p| available(p, min_ready, now)).count() as i64;
            Rs {
                obj: r,
                name: str_of(r, "/metadata/name").to_string(),
                spec,
                active: pods.iter().filter(|p| active(p)).count() as i64,
                available: avail.min(spec),
                ready: pods.iter().filter(|p| ready(p)).count() as i64,
                any: pods.len() as i64,
                revision: revision(r),
            }
        })
        .collect();
    rss.sort_by_key(|r| r.revision);
    let max_rev = rss.iter().map(|r| r.revision).max().unwrap_or(0);
    let new_idx = rss
        .iter()
        .position(|r| template_key(&r.obj["spec"]["template"]) == key);
    let mut out = Vec::new();
    let mut progressed: Option<(&str, String)> = None;
    let total: i64 = rss.iter().map(Rs::count).sum();

    let Some(ni) = new_idx else {
        if paused {
            return status(world, d, &rss, None, replicas, unavail, None, &now_s)
                .into_iter()
                .collect();
        }
        // A new ReplicaSet for the new template, as big as the rollout allows now.
        let hash = template_hash(template);
        let rs_name = format!("{name}-{hash}");
        let old_pods: i64 = rss.iter().map(|r| r.any).sum();
        let initial = if recreate {
            if old_pods > 0 { 0 } else { replicas }
        } else if rss.is_empty() {
            replicas
        } else {
            (max_total - total).clamp(0, replicas)
        };
        let mut t = template.clone();
        t["metadata"]["labels"]["pod-template-hash"] = json!(hash);
        let mut selector = spec["selector"].clone();
        selector["matchLabels"]["pod-template-hash"] = json!(hash);
        let mut labels = template["metadata"]["labels"].clone();
        labels["pod-template-hash"] = json!(hash);
        out.push(Action::Create {
            kind: Kind::ReplicaSet,
            ns: ns.to_string(),
            obj: json!({
                "apiVersion": "apps/v1", "kind": "ReplicaSet",
                "metadata": {"name": rs_name, "namespace": ns, "labels": labels,
                             "ownerReferences": owner_ref(Kind::Deployment, d),
                             "annotations": {REVISION: (max_rev + 1).to_string(),
                                             "deployment.kubernetes.io/desired-replicas": replicas.to_string(),
                                             "deployment.kubernetes.io/max-replicas": max_total.to_string()}},
                "spec": {"replicas": initial, "minReadySeconds": min_ready,
                         "selector": selector, "template": t},
            }),
        });
        let msg = format!("Created new replica set \"{rs_name}\"");
        out.extend(status(
            world,
            d,
            &rss,
            None,
            replicas,
            unavail,
            Some(("NewReplicaSetCreated", msg)),
            &now_s,
        ));
        return out;
    };

    // The Deployment and its new ReplicaSet carry the newest revision.
    let new_rev = if rss[ni].revision < max_rev || rss[ni].revision == 0 {
        let r = max_rev + 1;
        out.push(Action::Patch {
            kind: Kind::ReplicaSet,
            ns: ns.to_string(),
            name: rss[ni].name.clone(),
            patch: json!({"metadata": {"annotations": {REVISION: r.to_string()}}}),
        });
        r
    } else {
        rss[ni].revision
    };
    if d["metadata"]["annotations"][REVISION] != json!(new_rev.to_string()) {
        out.push(Action::Patch {
            kind: Kind::Deployment,
            ns: ns.to_string(),
            name: name.to_string(),
            patch: json!({"metadata": {"annotations": {REVISION: new_rev.to_string()}}}),
        });
    }

    if !paused {
        let new = &rss[ni];
        let new_name = new.name.clone();
        let olds: Vec<&Rs<'_>> = rss
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != ni)
            .map(|(_, r)| r)
            .collect();
        if recreate {
            for o in olds.iter().filter(|o| o.spec > 0) {
                out.push(scale(ns, o, 0, replicas, max_total));
                progressed = Some(("ReplicaSetUpdated", new_name.clone()));
            }
            let old_pods: i64 = olds.iter().map(|o| o.any).sum();
            if old_pods == 0 && new.spec != replicas {
                out.push(scale(ns, new, replicas, replicas, max_total));
                progressed = Some(("ReplicaSetUpdated", new_name.clone()));
            }
        } else if new.spec > replicas {
            out.push(scale(ns, new, replicas, replicas, max_total));
            progressed = Some(("ReplicaSetUpdated", new_name.clone()));
        } else {
            let up = (max_total - total).min(replicas - new.spec);
            if up > 0 {
                out.push(scale(ns, new, new.spec + up, replicas, max_total));
                progressed = Some(("ReplicaSetUpdated", new_name.clone()));
            } else {
                let downs = scale_down_olds(&rss, ni, replicas, unavail);
                for (i, to) in downs {
                    out.push(scale(ns, &rss[i], to, replicas, max_total));
                    progressed = Some(("ReplicaSetUpdated", new_name.clone()));
                }
            }
        }
        // Old, empty ReplicaSets beyond the history limit go, the oldest first.
        let limit = int(&spec["revisionHistoryLimit"], 10).max(0) as usize;
        let empty: Vec<&&Rs<'_>> = olds.iter().filter(|o| o.spec == 0 && o.any == 0).collect();
        for o in empty.iter().take(empty.len().saturating_sub(limit)) {
            out.push(Action::Delete {
                kind: Kind::ReplicaSet,
                ns: ns.to_string(),
                name: o.name.clone(),
                uid: str_of(o.obj, "/metadata/uid").to_string(),
                propagation: None,
            });
        }
    }
    let progress = progressed.map(|(r, n)| (r, format!("ReplicaSet \"{n}\" is progressing.")));
    out.extend(status(
        world,
        d,
        &rss,
        Some(ni),
        replicas,
        unavail,
        progress,
        &now_s,
    ));
    out
}

/// How far each old ReplicaSet may shrink now (index → new size): first the pods that are not
/// available anyway, then available ones while at least `replicas - max_unavailable` stay.
fn scale_down_olds(rss: &[Rs<'_>], ni: usize, replicas: i64, unavail: i64) -> Vec<(usize, i64)> {
    let min_available = replicas - unavail;
    let all: i64 = rss.iter().map(Rs::count).sum();
    let new_unavailable = rss[ni].spec - rss[ni].available;
    let max_down = all - min_available - new_unavailable;
    if max_down <= 0 {
        return Vec::new();
    }
    let mut sizes: Vec<i64> = rss.iter().map(|r| r.spec).collect();
    let mut done = 0;
    for (i, r) in rss.iter().enumerate() {
        if i == ni || r.spec == 0 {
            continue;
        }
        let unhealthy = r.spec - r.available;
        let d = unhealthy.min(max_down - done).max(0);
        sizes[i] -= d;
        done += d;
    }
    let available_total: i64 = rss.iter().map(|r| r.available).sum();
    let mut can = available_total - min_available;
    for (i, r) in rss.iter().enumerate() {
        if i == ni || sizes[i] == 0 || can <= 0 {
            continue;
        }
        let d = sizes[i].min(can).min(r.available);
        sizes[i] -= d;
        can -= d;
    }
    rss.iter()
        .enumerate()
        .filter(|(i, r)| sizes[*i] != r.spec)
        .map(|(i, _)| (i, sizes[i]))
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn status(
    world: &World,
    d: &Value,
    rss: &[Rs<'_>],
    new: Option<usize>,
    replicas: i64,
    unavail: i64,
    progress: Option<(&str, String)>,
    now: &str,
) -> Option<Action> {
    let old = &d["status"];
    let all_active: i64 = rss.iter().map(|r| r.active).sum();
    let updated = new.map_or(0, |i| rss[i].active);
    let ready_n: i64 = rss.iter().map(|r| r.ready).sum();
    let min_ready = int(&d["spec"]["minReadySeconds"], 0);
    let available_n: i64 = rss
        .iter()
        .map(|r| {
            world
                .owned(Kind::Pod, r.obj)
                .filter(|p| available(p, min_ready, world.now))
                .count() as i64
        })
        .sum();
    let mut conds = old["conditions"].clone();
    conds = if available_n >= replicas - unavail {
        set_condition(
            &conds,
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.",
            now,
        )
    } else {
        set_condition(
            &conds,
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.",
            now,
        )
    };
    let prev = conds
        .as_array()
        .and_then(|l| l.iter().find(|c| c["type"] == "Progressing"))
        .cloned();
    let prev_reason = prev.as_ref().map_or("", |c| str_of(c, "/reason"));
    let new_name = new.map(|i| rss[i].name.clone()).unwrap_or_default();
    let complete = new.is_some_and(|i| rss[i].spec == replicas)
        && updated == replicas
        && all_active == replicas
        && available_n >= replicas;
    let moved = updated > int(&old["updatedReplicas"], 0)
        || ready_n > int(&old["readyReplicas"], 0)
        || available_n > int(&old["availableReplicas"], 0)
        || (all_active < int(&old["replicas"], 0) && all_active >= replicas);
    let deadline = int(&d["spec"]["progressDeadlineSeconds"], 600);
    let mut touch = false;
    if d["spec"]["paused"] == true {
        conds = set_condition(
            &conds,
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused",
            now,
        );
    } else if prev_reason == "DeploymentPaused" {
        conds = set_condition(
            &conds,
            "Progressing",
            "Unknown",
            "DeploymentResumed",
            "Deployment is resumed",
            now,
        );
    } else if complete {
        let msg = format!("ReplicaSet \"{new_name}\" has successfully progressed.");
        conds = set_condition(
            &conds,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            &msg,
            now,
        );
    } else if let Some((reason, msg)) = progress {
        conds = set_condition(&conds, "Progressing", "True", reason, &msg, now);
        touch = true;
    } else if moved || prev.is_none() {
        let msg = format!("ReplicaSet \"{new_name}\" is progressing.");
        conds = set_condition(
            &conds,
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            &msg,
            now,
        );
        touch = true;
    } else if let Some(p) = &prev
        && prev_reason != "ProgressDeadlineExceeded"
        && prev_reason != "NewReplicaSetAvailable"
        && lab_api::clock::parse(str_of(p, "/lastUpdateTime"))
            .is_some_and(|t| world.now - t > deadline)
    {
        let msg = format!("ReplicaSet \"{new_name}\" has timed out progressing.");
        conds = set_condition(
            &conds,
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            &msg,
            now,
        );
    }
    if touch && let Some(list) = conds.as_array_mut() {
        for c in list.iter_mut().filter(|c| c["type"] == "Progressing") {
            c["lastUpdateTime"] = json!(now);
        }
    }
    let status = json!({
        "observedGeneration": int(&d["metadata"]["generation"], 1),
        "replicas": all_active,
        "updatedReplicas": updated,
        "readyReplicas": ready_n,
        "availableReplicas": available_n,
        "unavailableReplicas": (replicas - available_n).max(0),
        "conditions": conds,
    });
    super::status_if_changed(Kind::Deployment, d, status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::tests_support::*;

    fn deploy(replicas: i64, image: &str, strategy: Value) -> Value {
        obj(
            "Deployment",
            "web",
            "d1",
            json!({
            "replicas": replicas, "selector": {"matchLabels": {"app": "web"}}, "strategy": strategy,
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}}),
        )
    }

    fn rs_of(d: &Value, name: &str, uid: &str, replicas: i64, rev: i64) -> Value {
        let mut r = owned_by(
            obj(
                "ReplicaSet",
                name,
                uid,
                json!({"replicas": replicas, "template": d["spec"]["template"].clone()}),
            ),
            "d1",
        );
        r["metadata"]["annotations"] = json!({REVISION: rev.to_string()});
        r
    }

    fn pods(owner: &str, n: usize, ready: bool) -> Vec<Value> {
        (0..n)
            .map(|i| pod(&format!("{owner}-{i}-{ready}"), owner, ready, "t"))
            .collect()
    }

    fn scales(acts: &[Action]) -> Vec<(String, i64)> {
        acts.iter()
            .filter_map(|a| match a {
                Action::Patch {
                    kind: Kind::ReplicaSet,
                    name,
                    patch,
                    ..
                } => patch["spec"]["replicas"]
                    .as_i64()
                    .map(|r| (name.clone(), r)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn first_rollout_creates_a_full_replica_set_with_revision_one() {
        let d = deploy(3, "v1", Value::Null);
        let w = world(vec![(Kind::Deployment, vec![d.clone()])]);
        let acts = plan(&w, &d);
        let Action::Create { obj, .. } = &acts[0] else {
            panic!("{acts:?}")
        };
        let hash = template_hash(&d["spec"]["template"]);
        assert_eq!(obj["metadata"]["name"], format!("web-{hash}"));
        assert_eq!(obj["spec"]["replicas"], 3);
        assert_eq!(obj["metadata"]["annotations"][REVISION], "1");
        assert_eq!(
            obj["spec"]["template"]["metadata"]["labels"]["pod-template-hash"],
            hash
        );
        assert_eq!(
            obj["spec"]["selector"]["matchLabels"]["pod-template-hash"],
            hash
        );
        assert_eq!(obj["metadata"]["ownerReferences"][0]["uid"], "d1");
    }

    #[test]
    fn rolling_update_stays_within_surge_and_unavailability() {
        // 4 replicas, maxSurge 1, maxUnavailable 1: the new RS starts at 1 (4 + 1 - 4).
        let strategy =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}});
        let v1 = deploy(4, "v1", strategy.clone());
        let d = deploy(4, "v2", strategy);
        let old = rs_of(&v1, "web-old", "rs-old", 4, 1);
        let mut w = world(vec![
            (Kind::Deployment, vec![d.clone()]),
            (Kind::ReplicaSet, vec![old.clone()]),
            (Kind::Pod, pods("rs-old", 4, true)),
        ]);
        let acts = plan(&w, &d);
        let Action::Create { obj, .. } = &acts[0] else {
            panic!("{acts:?}")
        };
        assert_eq!(obj["spec"]["replicas"], 1);
        assert_eq!(obj["metadata"]["annotations"][REVISION], "2");
        // New RS at 1 with an unready pod: no more surge; old may lose one (4 - 1 available).
        let new = rs_of(&d, "web-new", "rs-new", 1, 2);
        w.objects
            .insert(Kind::ReplicaSet, vec![old.clone(), new.clone()]);
        let mut p = pods("rs-old", 4, true);
        p.extend(pods("rs-new", 1, false));
        w.objects.insert(Kind::Pod, p);
        assert_eq!(scales(&plan(&w, &d)), [("web-old".to_string(), 3)]);
        // Old at 3 but its 4th pod still running: nothing more may go, nothing may be added.
        let old3 = rs_of(&v1, "web-old", "rs-old", 3, 1);
        w.objects.insert(Kind::ReplicaSet, vec![old3, new]);
        assert_eq!(scales(&plan(&w, &d)), []);
    }

    #[test]
    fn recreate_scales_old_to_zero_and_waits_for_its_pods() {
        let strategy = json!({"type": "Recreate"});
        let v1 = deploy(2, "v1", strategy.clone());
        let d = deploy(2, "v2", strategy);
        let old = rs_of(&v1, "web-old", "rs-old", 2, 1);
        let new = rs_of(&d, "web-new", "rs-new", 0, 2);
        let mut w = world(vec![
            (Kind::Deployment, vec![d.clone()]),
            (Kind::ReplicaSet, vec![old, new.clone()]),
            (Kind::Pod, pods("rs-old", 2, true)),
        ]);
        assert_eq!(scales(&plan(&w, &d)), [("web-old".to_string(), 0)]);
        let old0 = rs_of(&v1, "web-old", "rs-old", 0, 1);
        w.objects.insert(Kind::ReplicaSet, vec![old0, new]);
        w.objects.insert(Kind::Pod, vec![]);
        assert_eq!(scales(&plan(&w, &d)), [("web-new".to_string(), 2)]);
    }

    #[test]
    fn paused_deployments_do_not_roll_and_say_so() {
        let mut d = deploy(2, "v2", Value::Null);
        d["spec"]["paused"] = json!(true);
        let w = world(vec![(Kind::Deployment, vec![d.clone()])]);
        let acts = plan(&w, &d);
        assert!(
            !acts.iter().any(|a| matches!(a, Action::Create { .. })),
            "{acts:?}"
        );
        let Some(Action::Status { status, .. }) = acts.last() else {
            panic!("{acts:?}")
        };
        let prog = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Progressing")
            .unwrap();
        assert_eq!(prog["reason"], "DeploymentPaused");
    }

    #[test]
    fn progress_deadline_exceeded_when_nothing_moves() {
        let d0 = deploy(1, "v1", Value::Null);
        let mut d = d0.clone();
        d["spec"]["progressDeadlineSeconds"] = json!(5);
        let rs = rs_of(&d, "web-new", "rs-new", 1, 1);
        d["metadata"]["annotations"] = json!({REVISION: "1"});
        d["status"] = json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 0, "availableReplicas": 0,
            "unavailableReplicas": 1, "conditions": [
            {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated", "message": "m",
             "lastUpdateTime": lab_api::clock::rfc3339(1_000_000 - 60), "lastTransitionTime": "x"}]});
        let w = world(vec![
            (Kind::Deployment, vec![d.clone()]),
            (Kind::ReplicaSet, vec![rs]),
            (Kind::Pod, pods("rs-new", 1, false)),
        ]);
        let acts = plan(&w, &d);
        let Some(Action::Status { status, .. }) = acts.last() else {
            panic!("{acts:?}")
        };
        let prog = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Progressing")
            .unwrap();
        assert_eq!(prog["reason"], "ProgressDeadlineExceeded");
        assert_eq!(prog["status"], "False");
    }
}
