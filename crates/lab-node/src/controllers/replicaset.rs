//! ReplicaSet: as many active pods as `spec.replicas`, made from its template; extra pods go
//! unready first, then newest first; status counts what its pods are.

use super::{Action, Kind, World, active, available, deleting, int, pod_from_template, ready};
use crate::util::str_of;
use serde_json::{Value, json};

pub fn plan(world: &World, rs: &Value) -> Vec<Action> {
    if deleting(rs) {
        return Vec::new();
    }
    let ns = str_of(rs, "/metadata/namespace");
    let want = int(&rs["spec"]["replicas"], 1).max(0) as usize;
    let min_ready = int(&rs["spec"]["minReadySeconds"], 0);
    let mut pods: Vec<&Value> = world.owned(Kind::Pod, rs).filter(|p| active(p)).collect();
    let mut out = Vec::new();
    if pods.len() < want {
        for _ in pods.len()..want {
            out.push(Action::Create {
                kind: Kind::Pod,
                ns: ns.to_string(),
                obj: pod_from_template(Kind::ReplicaSet, rs, &rs["spec"]["template"], None, &[]),
            });
        }
    } else if pods.len() > want {
        // The ones to lose first: not ready, then the youngest.
        pods.sort_by(|a, b| {
            ready(a).cmp(&ready(b)).then_with(|| {
                str_of(b, "/metadata/creationTimestamp")
                    .cmp(str_of(a, "/metadata/creationTimestamp"))
                    .then_with(|| str_of(b, "/metadata/name").cmp(str_of(a, "/metadata/name")))
            })
        });
        for p in &pods[..pods.len() - want] {
            out.push(Action::Delete {
                kind: Kind::Pod,
                ns: ns.to_string(),
                name: str_of(p, "/metadata/name").to_string(),
                uid: str_of(p, "/metadata/uid").to_string(),
                propagation: None,
            });
        }
    }
    let status = json!({
        "replicas": pods.len(),
        "fullyLabeledReplicas": pods.len(),
        "readyReplicas": pods.iter().filter(|p| ready(p)).count(),
        "availableReplicas": pods.iter().filter(|p| available(p, min_ready, world.now)).count(),
        "observedGeneration": int(&rs["metadata"]["generation"], 1),
    });
    out.extend(super::status_if_changed(Kind::ReplicaSet, rs, status));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::tests_support::*;

    #[test]
    fn creates_missing_and_deletes_unready_first() {
        let rs = obj(
            "ReplicaSet",
            "web-abc",
            "rs1",
            json!({"replicas": 3, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": []}}}),
        );
        let mut w = world(vec![(Kind::ReplicaSet, vec![rs.clone()])]);
        w.objects
            .insert(Kind::Pod, vec![pod("a", "rs1", true, "t1")]);
        let acts = plan(&w, &rs);
        let creates: Vec<&Value> = acts
            .iter()
            .filter_map(|a| match a {
                Action::Create { obj, .. } => Some(obj),
                _ => None,
            })
            .collect();
        assert_eq!(creates.len(), 2);
        assert_eq!(creates[0]["metadata"]["generateName"], "web-abc-");
        assert_eq!(creates[0]["metadata"]["labels"]["app"], "web");
        assert_eq!(creates[0]["metadata"]["ownerReferences"][0]["uid"], "rs1");
        let rs1 = obj("ReplicaSet", "web-abc", "rs1", json!({"replicas": 1}));
        w.objects.insert(
            Kind::Pod,
            vec![
                pod("old-ready", "rs1", true, "t1"),
                pod("new-ready", "rs1", true, "t2"),
                pod("unready", "rs1", false, "t0"),
                pod("other", "rs2", false, "t0"),
            ],
        );
        let deleted: Vec<String> = plan(&w, &rs1)
            .into_iter()
            .filter_map(|a| match a {
                Action::Delete { name, .. } => Some(name),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, ["unready", "new-ready"]);
    }
}
