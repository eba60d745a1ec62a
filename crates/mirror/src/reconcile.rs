//! The diff: desired objects against the ones the mirror owns in its namespace → the writes to
//! make. Pure. A flip to or from headless recreates the Service (clusterIP is immutable);
//! deletions happen only for names the caller allows (never on a failed or partial list).

use crate::desired::Desired;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    CreateService(Service),
    /// The current object with the desired labels, annotations and ports (resourceVersion kept).
    UpdateService(Service),
    /// Delete, then create: headless changed.
    RecreateService(Service),
    DeleteService(String),
    CreateSlice(EndpointSlice),
    UpdateSlice(EndpointSlice),
    DeleteSlice(String),
}

fn headless(s: &Service) -> bool {
    s.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None")
}

fn json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

fn same_service(cur: &Service, want: &Service) -> bool {
    let empty_if_none = |v: serde_json::Value| {
        if v.is_null() {
            serde_json::json!({})
        } else {
            v
        }
    };
    empty_if_none(json(&cur.metadata.labels)) == empty_if_none(json(&want.metadata.labels))
        && empty_if_none(json(&cur.metadata.annotations))
            == empty_if_none(json(&want.metadata.annotations))
        && json(&cur.spec.as_ref().and_then(|s| s.ports.clone()))
            == json(&want.spec.as_ref().and_then(|s| s.ports.clone()))
        && cur
            .spec
            .as_ref()
            .and_then(|s| s.traffic_distribution.as_ref())
            == want
                .spec
                .as_ref()
                .and_then(|s| s.traffic_distribution.as_ref())
}

fn same_slice(cur: &EndpointSlice, want: &EndpointSlice) -> bool {
    json(&cur.metadata.labels) == json(&want.metadata.labels)
        && cur.address_type == want.address_type
        && json(&cur.endpoints) == json(&want.endpoints)
        && json(&cur.ports) == json(&want.ports)
}

/// Writes that turn `services` and `slices` (what the mirror owns now, for this owner) into
/// `desired`; a name absent from `desired` is deleted only when `may_delete(name)` says so.
pub fn plan(
    desired: &Desired,
    services: &[Service],
    slices: &[EndpointSlice],
    may_delete_service: &dyn Fn(&Service) -> bool,
    may_delete_slice: &dyn Fn(&EndpointSlice) -> bool,
) -> Vec<Action> {
    let name = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        m.name.clone().unwrap_or_default()
    };
    let cur_svc: BTreeMap<String, &Service> =
        services.iter().map(|s| (name(&s.metadata), s)).collect();
    let cur_eps: BTreeMap<String, &EndpointSlice> =
        slices.iter().map(|s| (name(&s.metadata), s)).collect();
    let mut out = Vec::new();
    for (n, want) in &desired.services {
        match cur_svc.get(n) {
            None => out.push(Action::CreateService(want.clone())),
            Some(cur) if headless(cur) != headless(want) => {
                out.push(Action::RecreateService(want.clone()))
            }
            Some(cur) if same_service(cur, want) => {}
            Some(cur) => {
                let mut next = (*cur).clone();
                next.metadata.labels = want.metadata.labels.clone();
                next.metadata.annotations = want.metadata.annotations.clone();
                if let (Some(spec), Some(w)) = (next.spec.as_mut(), want.spec.as_ref()) {
                    spec.ports = w.ports.clone();
                    spec.traffic_distribution = w.traffic_distribution.clone();
                }
                next.status = None;
                out.push(Action::UpdateService(next));
            }
        }
    }
    for (n, want) in &desired.slices {
        match cur_eps.get(n) {
            None => out.push(Action::CreateSlice(want.clone())),
            Some(cur) if same_slice(cur, want) => {}
            Some(cur) => {
                let mut next = want.clone();
                next.metadata.resource_version = cur.metadata.resource_version.clone();
                out.push(Action::UpdateSlice(next));
            }
        }
    }
    for (n, cur) in &cur_eps {
        if !desired.slices.contains_key(n) && may_delete_slice(cur) {
            out.push(Action::DeleteSlice(n.clone()));
        }
    }
    for (n, cur) in &cur_svc {
        if !desired.services.contains_key(n) && may_delete_service(cur) {
            out.push(Action::DeleteService(n.clone()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(name: &str, headless: bool, port: i32, rv: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "m", "resourceVersion": rv, "labels": {"mirrored-svc": "true"}},
            "spec": {"clusterIP": if headless { "None" } else { "10.96.0.30" }, "ports": [{"port": port}]}
        }))
        .unwrap()
    }

    fn eps(name: &str, ip: &str) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "m", "labels": {"kubernetes.io/service-name": "a"}},
            "addressType": "IPv4", "endpoints": [{"addresses": [ip]}]
        }))
        .unwrap()
    }

    fn want(services: Vec<Service>, slices: Vec<EndpointSlice>) -> Desired {
        let mut d = Desired::default();
        for mut s in services {
            s.metadata.resource_version = None;
            if s.spec.as_ref().unwrap().cluster_ip.as_deref() != Some("None") {
                s.spec.as_mut().unwrap().cluster_ip = None;
            }
            d.services.insert(s.metadata.name.clone().unwrap(), s);
        }
        for s in slices {
            d.slices.insert(s.metadata.name.clone().unwrap(), s);
        }
        d
    }

    fn names(actions: &[Action]) -> Vec<String> {
        actions
            .iter()
            .map(|a| match a {
                Action::CreateService(s) => {
                    format!("create svc {}", s.metadata.name.as_deref().unwrap())
                }
                Action::UpdateService(s) => format!(
                    "update svc {} rv {}",
                    s.metadata.name.as_deref().unwrap(),
                    s.metadata.resource_version.as_deref().unwrap_or("")
                ),
                Action::RecreateService(s) => {
                    format!("recreate svc {}", s.metadata.name.as_deref().unwrap())
                }
                Action::DeleteService(n) => format!("delete svc {n}"),
                Action::CreateSlice(s) => {
                    format!("create eps {}", s.metadata.name.as_deref().unwrap())
                }
                Action::UpdateSlice(s) => {
                    format!("update eps {}", s.metadata.name.as_deref().unwrap())
                }
                Action::DeleteSlice(n) => format!("delete eps {n}"),
            })
            .collect()
    }

    #[test]
    fn plan_table() {
        let yes = |_: &Service| true;
        let yes_eps = |_: &EndpointSlice| true;
        let no = |_: &Service| false;
        let no_eps = |_: &EndpointSlice| false;
        let cur = vec![
            svc("a", false, 80, "5"),
            svc("b", false, 80, "6"),
            svc("gone", false, 80, "7"),
        ];
        let cur_eps = vec![eps("a-1", "10.0.0.1"), eps("gone-1", "10.0.0.9")];
        let d = want(
            vec![
                svc("a", false, 80, ""),
                svc("b", true, 80, ""),
                svc("c", false, 81, ""),
            ],
            vec![eps("a-1", "10.0.0.2"), eps("c-1", "10.0.0.3")],
        );
        assert_eq!(
            names(&plan(&d, &cur, &cur_eps, &yes, &yes_eps)),
            [
                "recreate svc b",
                "create svc c",
                "update eps a-1",
                "create eps c-1",
                "delete eps gone-1",
                "delete svc gone"
            ]
        );
        // Nothing is deleted that the caller does not allow (a failed or partial list).
        assert_eq!(
            names(&plan(&d, &cur, &cur_eps, &no, &no_eps)),
            [
                "recreate svc b",
                "create svc c",
                "update eps a-1",
                "create eps c-1"
            ]
        );
        // A port change updates in place, keeping the resourceVersion and clusterIP.
        let d = want(vec![svc("a", false, 81, "")], vec![]);
        let acts = plan(&d, &cur[..1], &[], &no, &no_eps);
        assert_eq!(names(&acts), ["update svc a rv 5"]);
        let Action::UpdateService(s) = &acts[0] else {
            unreachable!()
        };
        assert_eq!(
            s.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("10.96.0.30")
        );
        // Converged: nothing to do.
        let d = want(vec![svc("a", false, 80, "")], vec![eps("a-1", "10.0.0.1")]);
        assert!(plan(&d, &cur[..1], &cur_eps[..1], &yes, &yes_eps).is_empty());
    }
}
