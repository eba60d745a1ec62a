//! A pod's runtime state on the node and the status the kubelet reports from it (pure).

use crate::images;
use crate::util::{arr, now, str_of};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use tokio::sync::{Notify, watch};

/// Why a pod's processes must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The Pod got a deletionTimestamp: stop within `grace` seconds, then delete the object.
    Delete { grace: i64 },
    /// The Pod object is gone already.
    Gone,
    /// The node is shutting down; the object stays.
    NodeShutdown { grace: i64 },
    /// The pod's main containers have ended: its sidecars stop (never seen by the pod itself).
    Sidecars { grace: i64 },
}

impl Stop {
    pub fn grace(self) -> i64 {
        match self {
            Stop::Delete { grace } | Stop::NodeShutdown { grace } | Stop::Sidecars { grace } => {
                grace
            }
            Stop::Gone => 0,
        }
    }
}

/// Which list of the pod spec a container is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Init,
    Main,
    Ephemeral,
}

impl Kind {
    /// The JSON pointer of the list in a Pod.
    pub fn list(self) -> &'static str {
        match self {
            Kind::Init => "/spec/initContainers",
            Kind::Main => "/spec/containers",
            Kind::Ephemeral => "/spec/ephemeralContainers",
        }
    }
}

/// Whether an init container is a native sidecar (`restartPolicy: Always`).
pub fn is_sidecar(spec: &Value) -> bool {
    spec["restartPolicy"] == "Always"
}

#[derive(Debug, Clone, PartialEq)]
pub enum CState {
    Waiting {
        reason: String,
        message: Option<String>,
    },
    Running {
        started_at: String,
    },
    Terminated(Value),
}

/// One container (or init container) of a pod.
#[derive(Debug, Clone)]
pub struct Ctr {
    pub name: String,
    pub image: String,
    pub state: CState,
    pub last: Option<Value>,
    pub restarts: u32,
    pub ready: bool,
    /// Process group of the running instance.
    pub pgid: Option<i32>,
    /// Number of the current log file (instances so far, minus one).
    pub instance: Option<u32>,
    /// Will not run again (terminated for good).
    pub done: bool,
    /// Its postStart hook ran and its startup probe (if any) succeeded.
    pub started: bool,
    /// An init container with `restartPolicy: Always`.
    pub sidecar: bool,
    /// How to run `kubectl exec` in the running instance.
    pub exec: Option<crate::streams::ExecInfo>,
    /// Its stdin and terminal, when its spec keeps them (`stdin`, `tty`), for `kubectl attach`.
    pub console: Option<std::sync::Arc<crate::console::Console>>,
}

impl Ctr {
    pub fn new(spec: &Value, reason: &str) -> Ctr {
        Ctr {
            name: str_of(spec, "/name").to_string(),
            image: str_of(spec, "/image").to_string(),
            state: CState::Waiting {
                reason: reason.to_string(),
                message: None,
            },
            last: None,
            restarts: 0,
            ready: false,
            pgid: None,
            instance: None,
            done: false,
            started: false,
            sidecar: is_sidecar(spec),
            exec: None,
            console: None,
        }
    }

    pub fn running(&self) -> bool {
        matches!(self.state, CState::Running { .. })
    }

    fn exit_code(&self) -> Option<i64> {
        match &self.state {
            CState::Terminated(t) => t["exitCode"].as_i64(),
            _ => None,
        }
    }
}

/// Mutable state of a pod, behind [`PodRt::state`].
#[derive(Debug)]
pub struct PodState {
    /// The latest Pod object seen (its metadata feeds the downward API).
    pub pod: Value,
    pub ipv4: Option<std::net::Ipv4Addr>,
    pub ipv6: Option<std::net::Ipv6Addr>,
    pub netns: Option<lab_net::Pod>,
    pub sandbox_ready: bool,
    pub init: Vec<Ctr>,
    pub containers: Vec<Ctr>,
    pub ephemeral: Vec<Ctr>,
    /// The pod's volumes on the host, once prepared (ephemeral containers mount them too).
    pub vols: Option<std::sync::Arc<HashMap<String, PathBuf>>>,
    pub initialized: bool,
    /// A pod-level failure (e.g. an init container failed with restartPolicy Never).
    pub failed: bool,
    pub start_time: Option<String>,
    /// Condition type → (status, lastTransitionTime).
    cond: HashMap<&'static str, (bool, String)>,
}

impl PodState {
    pub fn containers_of(&self, kind: Kind) -> &[Ctr] {
        match kind {
            Kind::Init => &self.init,
            Kind::Main => &self.containers,
            Kind::Ephemeral => &self.ephemeral,
        }
    }

    pub fn containers_mut(&mut self, kind: Kind) -> &mut Vec<Ctr> {
        match kind {
            Kind::Init => &mut self.init,
            Kind::Main => &mut self.containers,
            Kind::Ephemeral => &mut self.ephemeral,
        }
    }

    /// The container of any kind with this name.
    pub fn find(&self, name: &str) -> Option<(Kind, &Ctr)> {
        [Kind::Init, Kind::Main, Kind::Ephemeral]
            .into_iter()
            .find_map(|k| {
                self.containers_of(k)
                    .iter()
                    .find(|c| c.name == name)
                    .map(|c| (k, c))
            })
    }
}

/// A pod the node runs.
pub struct PodRt {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub dir: PathBuf,
    pub state: Mutex<PodState>,
    /// Wakes the status writer.
    pub changed: Notify,
    /// Set once when the pod must stop.
    pub stop: watch::Sender<Option<Stop>>,
    /// Bumped on every container state change (log followers wait on it).
    pub ticks: watch::Sender<u64>,
}

impl PodRt {
    pub fn new(pod: Value, dir: PathBuf) -> PodRt {
        let init = arr(&pod, "/spec/initContainers")
            .iter()
            .map(|c| Ctr::new(c, "PodInitializing"))
            .collect::<Vec<_>>();
        let reason = if init.is_empty() {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        let containers = arr(&pod, "/spec/containers")
            .iter()
            .map(|c| Ctr::new(c, reason))
            .collect();
        PodRt {
            uid: str_of(&pod, "/metadata/uid").to_string(),
            namespace: str_of(&pod, "/metadata/namespace").to_string(),
            name: str_of(&pod, "/metadata/name").to_string(),
            dir,
            state: Mutex::new(PodState {
                pod,
                ipv4: None,
                ipv6: None,
                netns: None,
                sandbox_ready: false,
                init,
                containers,
                ephemeral: Vec::new(),
                vols: None,
                initialized: false,
                failed: false,
                start_time: None,
                cond: HashMap::new(),
            }),
            changed: Notify::new(),
            stop: watch::Sender::new(None),
            ticks: watch::Sender::new(0),
        }
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, PodState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes a container and wakes the status writer and log followers.
    pub fn update(&self, kind: Kind, idx: usize, f: impl FnOnce(&mut Ctr)) {
        {
            let mut st = self.lock();
            if let Some(c) = st.containers_mut(kind).get_mut(idx) {
                f(c);
            }
        }
        self.touch();
    }

    pub fn touch(&self) {
        self.changed.notify_one();
        self.ticks.send_modify(|n| *n += 1);
    }

    pub fn stopping(&self) -> Option<Stop> {
        *self.stop.borrow()
    }

    /// The Pod as an event's `involvedObject`.
    pub fn object_ref(&self) -> lab_api::events::ObjectRef {
        let mut r = lab_api::events::ObjectRef::from_object(&self.lock().pod);
        r.api_version = "v1".into();
        r.kind = "Pod".into();
        r.namespace.clone_from(&self.namespace);
        r.name.clone_from(&self.name);
        r.uid.clone_from(&self.uid);
        r
    }

    /// One of its containers as an event's `involvedObject` (`spec.containers{web}`).
    pub fn container_ref(&self, kind: Kind, name: &str) -> lab_api::events::ObjectRef {
        let list = match kind {
            Kind::Init => "initContainers",
            Kind::Main => "containers",
            Kind::Ephemeral => "ephemeralContainers",
        };
        self.object_ref()
            .with_field_path(format!("spec.{list}{{{name}}}"))
    }

    /// The status to write now.
    pub fn status(&self, host_ip: &str) -> Value {
        let mut st = self.lock();
        build_status(&mut st, host_ip)
    }
}

fn restart_policy(pod: &Value) -> &str {
    pod["spec"]["restartPolicy"].as_str().unwrap_or("Always")
}

/// Whether a container that exited with `code` runs again under the pod's restart policy.
pub fn restarts_after(pod: &Value, code: i64) -> bool {
    match restart_policy(pod) {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    }
}

fn container_status(c: &Ctr, uid: &str) -> Value {
    let state = match &c.state {
        CState::Waiting { reason, message } => {
            let mut w = json!({"reason": reason});
            if let Some(m) = message {
                w["message"] = json!(m);
            }
            json!({"waiting": w})
        }
        CState::Running { started_at } => json!({"running": {"startedAt": started_at}}),
        CState::Terminated(t) => json!({"terminated": t}),
    };
    let mut s = json!({
        "name": c.name,
        "image": images::full_name(&c.image),
        "imageID": "",
        "ready": c.ready,
        "restartCount": c.restarts,
        "started": c.running() && c.started,
        "state": state,
        "lastState": c.last.as_ref().map_or(json!({}), |t| json!({"terminated": t})),
    });
    if c.instance.is_some() {
        s["containerID"] = json!(format!("lab://{uid}/{}/{}", c.name, c.restarts));
        s["imageID"] = json!(format!("lab://{}", images::full_name(&c.image)));
    }
    s
}

/// A container that counts for the pod's readiness: a main container or a sidecar.
fn serving(c: &Ctr) -> bool {
    c.ready && c.running()
}

fn build_status(st: &mut PodState, host_ip: &str) -> Value {
    let pod = st.pod.clone();
    let uid = str_of(&pod, "/metadata/uid").to_string();
    // Sidecars never complete: they count once started (`initialized` is set after that).
    let init_done = st
        .init
        .iter()
        .all(|c| c.sidecar || c.exit_code() == Some(0));
    let all_started = st.containers.iter().all(|c| c.instance.is_some());
    let all_done = !st.containers.is_empty() && st.containers.iter().all(|c| c.done);
    let phase = if st.failed {
        "Failed"
    } else if !init_done || !st.initialized || !all_started {
        "Pending"
    } else if all_done {
        if st.containers.iter().all(|c| c.exit_code() == Some(0)) {
            "Succeeded"
        } else {
            "Failed"
        }
    } else {
        "Running"
    };
    let ready = phase == "Running"
        && st.containers.iter().all(serving)
        && st.init.iter().filter(|c| c.sidecar).all(serving);
    let terminal = matches!(phase, "Succeeded" | "Failed");
    let mut conds = vec![
        ("PodReadyToStartContainers", st.sandbox_ready && !terminal),
        ("Initialized", init_done && st.initialized),
        ("Ready", ready),
        ("ContainersReady", ready),
        ("PodScheduled", true),
    ];
    if st.init.is_empty() {
        // Without init containers a pod is Initialized as soon as it is scheduled.
        conds[1].1 = true;
    }
    let now = now();
    let mut conditions = Vec::new();
    for (ty, status) in conds {
        let entry = st.cond.entry(ty).or_insert((status, now.clone()));
        if entry.0 != status {
            *entry = (status, now.clone());
        }
        let mut c = json!({"type": ty, "status": if status { "True" } else { "False" },
                           "lastProbeTime": null, "lastTransitionTime": entry.1});
        if !status {
            match ty {
                "Initialized" => {
                    let pending: Vec<&str> = st
                        .init
                        .iter()
                        .filter(|c| {
                            if c.sidecar {
                                !(c.started && c.running())
                            } else {
                                c.exit_code() != Some(0)
                            }
                        })
                        .map(|c| c.name.as_str())
                        .collect();
                    c["reason"] = json!("ContainersNotInitialized");
                    c["message"] = json!(format!(
                        "containers with incomplete status: [{}]",
                        pending.join(" ")
                    ));
                }
                "Ready" | "ContainersReady" => {
                    let unready: Vec<&str> = st
                        .init
                        .iter()
                        .filter(|c| c.sidecar)
                        .chain(&st.containers)
                        .filter(|c| !serving(c))
                        .map(|c| c.name.as_str())
                        .collect();
                    c["reason"] = json!(if terminal {
                        "PodCompleted"
                    } else {
                        "ContainersNotReady"
                    });
                    if !terminal {
                        c["message"] = json!(format!(
                            "containers with unready status: [{}]",
                            unready.join(" ")
                        ));
                    }
                }
                _ => {}
            }
        }
        conditions.push(c);
    }
    let mut status = json!({
        "phase": phase,
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "qosClass": "BestEffort",
        "containerStatuses": st.containers.iter().map(|c| container_status(c, &uid)).collect::<Vec<_>>(),
    });
    if !st.ephemeral.is_empty() {
        status["ephemeralContainerStatuses"] = json!(
            st.ephemeral
                .iter()
                .map(|c| container_status(c, &uid))
                .collect::<Vec<_>>()
        );
    }
    if !st.init.is_empty() {
        status["initContainerStatuses"] = json!(
            st.init
                .iter()
                .map(|c| container_status(c, &uid))
                .collect::<Vec<_>>()
        );
    }
    if let Some(t) = &st.start_time {
        status["startTime"] = json!(t);
    }
    if let (Some(v4), Some(v6)) = (st.ipv4, st.ipv6) {
        status["podIP"] = json!(v4.to_string());
        status["podIPs"] = json!([{"ip": v4.to_string()}, {"ip": v6.to_string()}]);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(init: bool) -> PodRt {
        let mut p = json!({"metadata": {"uid": "u", "namespace": "ns", "name": "p"},
                           "spec": {"containers": [{"name": "app", "image": "busybox"}]}});
        if init {
            p["spec"]["initContainers"] = json!([{"name": "setup", "image": "ghostwire"}]);
        }
        PodRt::new(p, PathBuf::from("/nonexistent"))
    }

    fn cond<'a>(s: &'a Value, ty: &str) -> &'a str {
        s["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == ty)
            .unwrap()["status"]
            .as_str()
            .unwrap()
    }

    #[test]
    fn pending_then_running_then_ready() {
        let rt = pod(true);
        let s = rt.status("10.244.0.1");
        assert_eq!(s["phase"], "Pending");
        assert_eq!(cond(&s, "Initialized"), "False");
        assert_eq!(
            s["initContainerStatuses"][0]["state"]["waiting"]["reason"],
            "PodInitializing"
        );
        assert_eq!(
            s["containerStatuses"][0]["image"],
            "docker.io/library/busybox:latest"
        );
        rt.update(Kind::Init, 0, |c| {
            c.instance = Some(0);
            c.state = CState::Terminated(json!({"exitCode": 0, "reason": "Completed"}));
            c.done = true;
        });
        {
            let mut st = rt.lock();
            st.initialized = true;
            st.sandbox_ready = true;
            st.ipv4 = Some("10.244.0.2".parse().unwrap());
            st.ipv6 = Some("fd00:10:244::2".parse().unwrap());
        }
        rt.update(Kind::Main, 0, |c| {
            c.instance = Some(0);
            c.state = CState::Running { started_at: now() };
        });
        let s = rt.status("10.244.0.1");
        assert_eq!(s["phase"], "Running");
        assert_eq!(cond(&s, "Initialized"), "True");
        assert_eq!(cond(&s, "Ready"), "False");
        assert_eq!(s["podIP"], "10.244.0.2");
        rt.update(Kind::Main, 0, |c| c.ready = true);
        let s = rt.status("10.244.0.1");
        assert_eq!(cond(&s, "Ready"), "True");
        assert_eq!(cond(&s, "ContainersReady"), "True");
        assert_eq!(s["containerStatuses"][0]["ready"], true);
    }

    #[test]
    fn sidecars_count_once_started_and_for_readiness() {
        let p = json!({"metadata": {"uid": "u", "namespace": "ns", "name": "p"},
                       "spec": {"initContainers": [{"name": "proxy", "image": "busybox", "restartPolicy": "Always"}],
                                "containers": [{"name": "app", "image": "busybox"}]}});
        let rt = PodRt::new(p, PathBuf::from("/nonexistent"));
        assert!(rt.lock().init[0].sidecar);
        rt.update(Kind::Init, 0, |c| {
            c.instance = Some(0);
            c.state = CState::Running { started_at: now() };
        });
        let s = rt.status("x");
        assert_eq!(cond(&s, "Initialized"), "False");
        assert_eq!(s["initContainerStatuses"][0]["started"], false);
        rt.update(Kind::Init, 0, |c| c.started = true);
        rt.lock().initialized = true;
        rt.update(Kind::Main, 0, |c| {
            c.instance = Some(0);
            c.state = CState::Running { started_at: now() };
            c.started = true;
            c.ready = true;
        });
        let s = rt.status("x");
        assert_eq!(s["phase"], "Running");
        assert_eq!(cond(&s, "Initialized"), "True");
        assert_eq!(s["initContainerStatuses"][0]["started"], true);
        // An unready sidecar keeps the pod unready.
        assert_eq!(cond(&s, "Ready"), "False");
        rt.update(Kind::Init, 0, |c| c.ready = true);
        assert_eq!(cond(&rt.status("x"), "Ready"), "True");
    }

    #[test]
    fn terminal_phases() {
        let rt = pod(false);
        rt.lock().initialized = true;
        rt.update(Kind::Main, 0, |c| {
            c.instance = Some(0);
            c.state = CState::Terminated(json!({"exitCode": 3, "reason": "Error"}));
            c.done = true;
        });
        assert_eq!(rt.status("x")["phase"], "Failed");
        rt.update(Kind::Main, 0, |c| {
            c.state = CState::Terminated(json!({"exitCode": 0, "reason": "Completed"}))
        });
        let s = rt.status("x");
        assert_eq!(s["phase"], "Succeeded");
        assert_eq!(cond(&s, "Ready"), "False");
    }

    #[test]
    fn events_name_the_pod_and_the_container() {
        let rt = pod(true);
        let r = rt.container_ref(Kind::Init, "setup");
        assert_eq!(
            (r.kind.as_str(), r.api_version.as_str(), r.name.as_str()),
            ("Pod", "v1", "p")
        );
        assert_eq!((r.namespace.as_str(), r.uid.as_str()), ("ns", "u"));
        assert_eq!(r.field_path, "spec.initContainers{setup}");
        assert_eq!(
            rt.container_ref(Kind::Main, "app").field_path,
            "spec.containers{app}"
        );
        assert_eq!(rt.object_ref().field_path, "");
    }

    #[test]
    fn restart_policies() {
        let p = |policy: &str| json!({"spec": {"restartPolicy": policy}});
        assert!(restarts_after(&p("Always"), 0));
        assert!(!restarts_after(&p("OnFailure"), 0));
        assert!(restarts_after(&p("OnFailure"), 1));
        assert!(!restarts_after(&p("Never"), 1));
        assert!(restarts_after(&json!({}), 0));
    }
}
