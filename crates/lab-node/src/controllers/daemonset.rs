//! DaemonSet on the lab's one node: one pod, bound to the node; a new template replaces it
//! (RollingUpdate with one node is delete, then create). Not done: node selectors and
//! tolerations (the one node always matches).

use super::{
    Action, Kind, World, active, available, deleting, int, pod_from_template, ready, template_hash,
};
use crate::util::str_of;
use serde_json::Value;
use serde_json::json;

pub fn plan(world: &World, ds: &Value, node: &str) -> Vec<Action> {
    if deleting(ds) {
        return Vec::new();
    }
    let ns = str_of(ds, "/metadata/namespace");
    let hash = template_hash(&ds["spec"]["template"]);
    let min_ready = int(&ds["spec"]["minReadySeconds"], 0);
    let pods: Vec<&Value> = world.owned(Kind::Pod, ds).collect();
    let live: Vec<&&Value> = pods.iter().filter(|p| active(p)).collect();
    let mut out = Vec::new();
    let del = |p: &Value| Action::Delete {
        kind: Kind::Pod,
        ns: ns.to_string(),
        name: str_of(p, "/metadata/name").to_string(),
        uid: str_of(p, "/metadata/uid").to_string(),
        propagation: None,
    };
    // Finished pods are replaced; an outdated one is replaced; extra ones go.
    for p in pods.iter().filter(|p| !deleting(p) && !active(p)) {
        out.push(del(p));
    }
    let on_delete = ds["spec"]["updateStrategy"]["type"] == "OnDelete";
    for (i, p) in live.iter().enumerate() {
        let outdated = p["metadata"]["labels"]["controller-revision-hash"] != hash.as_str();
        if i > 0 || (outdated && !on_delete) {
            out.push(del(p));
        }
    }
    if live.is_empty() && !pods.iter().any(|p| deleting(p)) {
        let mut p = pod_from_template(
            Kind::DaemonSet,
            ds,
            &ds["spec"]["template"],
            None,
            &[("controller-revision-hash", hash.clone())],
        );
        p["spec"]["nodeName"] = json!(node);
        out.push(Action::Create {
            kind: Kind::Pod,
            ns: ns.to_string(),
            obj: p,
        });
    }
    let scheduled = live.len().min(1);
    let updated = live
        .iter()
        .take(1)
        .filter(|p| p["metadata"]["labels"]["controller-revision-hash"] == hash.as_str())
        .count();
    let avail = live
        .iter()
        .take(1)
        .filter(|p| available(p, min_ready, world.now))
        .count();
    let status = json!({
        "observedGeneration": int(&ds["metadata"]["generation"], 1),
        "desiredNumberScheduled": 1,
        "currentNumberScheduled": scheduled,
        "numberMisscheduled": 0,
        "numberReady": live.iter().take(1).filter(|p| ready(p)).count(),
        "updatedNumberScheduled": updated,
        "numberAvailable": avail,
        "numberUnavailable": 1 - avail,
    });
    out.extend(super::status_if_changed(Kind::DaemonSet, ds, status));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::tests_support::*;

    #[test]
    fn one_pod_on_the_node_replaced_when_the_template_changes() {
        let ds = obj(
            "DaemonSet",
            "agent",
            "ds1",
            json!({"template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": []}}}),
        );
        let mut w = world(vec![(Kind::DaemonSet, vec![ds.clone()])]);
        let acts = plan(&w, &ds, "lab-node");
        let Action::Create { obj, .. } = &acts[0] else {
            panic!("{acts:?}")
        };
        assert_eq!(obj["spec"]["nodeName"], "lab-node");
        let mut p = pod("agent-x", "ds1", true, "t");
        p["metadata"]["labels"] = json!({"controller-revision-hash": "old"});
        w.objects.insert(Kind::Pod, vec![p]);
        let acts = plan(&w, &ds, "lab-node");
        assert!(
            matches!(&acts[0], Action::Delete { name, .. } if name == "agent-x"),
            "{acts:?}"
        );
    }
}
