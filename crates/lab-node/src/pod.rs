//! The kubelet part: one worker per Pod — network namespace and addresses, volumes, init
//! containers in order, then containers as processes with restarts, probes and status; on
//! deletion SIGTERM, the grace period, SIGKILL, and the namespace removed.

use crate::container::{self, Launch, Mount};
use crate::state::{CState, Ctr, Kind, PodRt, Stop, restarts_after};
use crate::util::{arr, now, str_of};
use crate::volumes::{self, SA_MOUNT};
use crate::{Shared, env, images, probes};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Waits until the pod must stop, or `d` passes; returns whether it must stop.
async fn sleep_or_stop(stop: &mut watch::Receiver<Option<Stop>>, d: Duration) -> bool {
    if stop.borrow().is_some() {
        return true;
    }
    let sleep = tokio::time::sleep(d);
    tokio::select! {
        _ = sleep => {}
        () = stopped(stop) => return true,
    }
    stop.borrow().is_some()
}

/// Resolves once the pod must stop.
async fn stopped(stop: &mut watch::Receiver<Option<Stop>>) {
    let _ = stop.wait_for(Option::is_some).await;
}

/// How long a postStart hook may take before the container is taken as started anyway.
const HOOK_TIMEOUT: Duration = Duration::from_secs(30);

/// Kubelet-style back-off: initial, doubled per restart, capped.
fn backoff(shared: &Shared, restarts: u32) -> Duration {
    let d = shared
        .backoff_initial
        .saturating_mul(1u32 << restarts.min(16));
    d.min(shared.backoff_max)
}

/// Runs one pod until it is deleted (or the node shuts down).
pub async fn run(shared: Arc<Shared>, rt: Arc<PodRt>) {
    let writer = tokio::spawn(status_writer(shared.clone(), rt.clone()));
    let mut stop = rt.stop.subscribe();
    lifecycle(&shared, &rt, &mut stop).await;
    // A finished pod keeps its (stopped) sandbox until it is deleted.
    let _ = stop.wait_for(Option::is_some).await;
    let why = rt.stopping().unwrap_or(Stop::Gone);
    // Ephemeral containers stop on the same signal; their namespace stays until they have.
    let mut ticks = rt.ticks.subscribe();
    let _ = tokio::time::timeout(
        Duration::from_secs(why.grace().max(0) as u64 + 2),
        ticks.wait_for(|_| !rt.lock().ephemeral.iter().any(|c| c.pgid.is_some())),
    )
    .await;
    let netns = rt.lock().netns.take();
    if let Some(netns) = netns {
        let shared2 = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(lab) = crate::lock(&shared2.lab).as_mut()
                && let Err(e) = lab.remove_pod(&netns)
            {
                tracing::warn!(error = %e, "removing a pod's namespace");
            }
        })
        .await;
    }
    writer.abort();
    crate::lock(&shared.pods.0).remove(&rt.uid);
    if matches!(why, Stop::Delete { .. }) {
        let api: Api<Pod> = Api::namespaced(shared.client.clone(), &rt.namespace);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(kube::api::Preconditions {
                uid: Some(rt.uid.clone()),
                resource_version: None,
            }),
            ..Default::default()
        };
        // Retried until it is done: a Pod whose final delete was lost (an API too busy to
        // answer in time) would stay Terminating for good, and a rollout waiting for it too.
        // 404: already gone; 409: the uid precondition failed, the name is another Pod's now.
        // Bounded, for an API that went away for good (the lab shutting down).
        for attempt in 0u32..20 {
            match api.delete(&rt.name, &dp).await {
                Ok(_) => break,
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => break,
                Err(e) => {
                    tracing::warn!(pod = rt.name, error = %e, attempt, "final delete; retrying");
                    let wait = Duration::from_millis(500 * u64::from(attempt + 1));
                    tokio::time::sleep(wait.min(Duration::from_secs(5))).await;
                }
            }
        }
    }
    if !matches!(why, Stop::NodeShutdown { .. }) {
        let _ = std::fs::remove_dir_all(&rt.dir);
    }
    tracing::debug!(pod = rt.name, ?why, "pod stopped");
}

async fn status_writer(shared: Arc<Shared>, rt: Arc<PodRt>) {
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &rt.namespace);
    let mut last = Value::Null;
    loop {
        rt.changed.notified().await;
        let mut status = rt.status(&shared.network.node_ipv4().to_string());
        // Transition times aside, an unchanged status is not written again.
        if status == last {
            continue;
        }
        last = status.clone();
        if let Some(o) = status.as_object_mut() {
            o.retain(|_, v| !v.is_null());
        }
        let patch = json!({"metadata": {"uid": rt.uid}, "status": status});
        match api
            .patch_status(&rt.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(p) => {
                rt.lock().pod = serde_json::to_value(&p).unwrap_or(Value::Null);
                shared.status_written.send_modify(|n| *n += 1);
            }
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return,
            Err(e) => {
                tracing::warn!(pod = rt.name, error = %e, "writing pod status");
                last = Value::Null;
                tokio::time::sleep(Duration::from_millis(200)).await;
                rt.changed.notify_one();
            }
        }
    }
}

/// The annotation that asks the lab for a Pod's IPv4 address.
pub const POD_IP_ANNOTATION: &str = "lab.ghostwire.dev/pod-ip";
const POD_IP_POINTER: &str = "/metadata/annotations/lab.ghostwire.dev~1pod-ip";

fn requested_ip(value: &str) -> Result<Option<std::net::Ipv4Addr>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| format!("annotation {POD_IP_ANNOTATION}={value:?}: not an IPv4 address"))
}

async fn lifecycle(
    shared: &Arc<Shared>,
    rt: &Arc<PodRt>,
    stop: &mut watch::Receiver<Option<Stop>>,
) {
    let pod = rt.lock().pod.clone();
    let api: Api<Pod> = Api::namespaced(shared.client.clone(), &rt.namespace);
    // Binding: the node takes the pod (the lab has a single node and no scheduler).
    if str_of(&pod, "/spec/nodeName").is_empty() {
        let patch = json!({"metadata": {"uid": rt.uid}, "spec": {"nodeName": shared.node_name}});
        match api
            .patch(&rt.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(p) => {
                rt.lock().pod = serde_json::to_value(&p).unwrap_or(pod.clone());
                shared.scheduler_events.normal(
                    &rt.object_ref(),
                    "Scheduled",
                    format!(
                        "Successfully assigned {}/{} to {}",
                        rt.namespace, rt.name, shared.node_name
                    ),
                );
            }
            Err(e) => tracing::warn!(pod = rt.name, error = %e, "binding pod to node"),
        }
    }
    rt.lock().start_time = Some(now());
    rt.touch();
    // The sandbox: a network namespace on the node's bridge.
    let lab_name = shared.lab_pod_name(&rt.name);
    // The lab's stand-in for a CNI's fixed-address annotation (Calico's `ipAddrs`), e.g. to
    // give a new Pod a deleted Pod's address; while that Pod's sandbox still holds it, the
    // sandbox creation fails and is retried like any other.
    let want = str_of(&pod, POD_IP_POINTER).to_string();
    let mut attempt = 0;
    let netns = loop {
        let shared2 = shared.clone();
        let name = lab_name.clone();
        let want = want.clone();
        let made = tokio::task::spawn_blocking(move || match crate::lock(&shared2.lab).as_mut() {
            Some(lab) => requested_ip(&want)
                .and_then(|ip| lab.add_pod_at(&name, ip).map_err(|e| e.to_string())),
            None => Err("node is shut down".to_string()),
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match made {
            Ok(p) => break p,
            Err(e) => {
                tracing::warn!(pod = rt.name, error = %e, "creating the pod sandbox");
                if sleep_or_stop(stop, backoff(shared, attempt)).await {
                    return;
                }
                attempt += 1;
            }
        }
    };
    {
        let mut st = rt.lock();
        st.ipv4 = Some(netns.ipv4);
        st.ipv6 = Some(netns.ipv6);
        st.netns = Some(netns);
        st.sandbox_ready = true;
    }
    rt.touch();
    // Volumes; a missing ConfigMap or Secret keeps the pod in ContainerCreating, retried.
    let mut attempt = 0;
    let vols = loop {
        let pod = pod_with_status(rt, shared.network.node_ipv4());
        let prepared = match volumes::prepare(shared, &pod, &rt.dir).await {
            Ok(v) => {
                crate::dns::pod_files(&shared.network, &pod, &rt.dir, &shared.node_resolv_conf)
                    .map(|()| v)
            }
            Err(e) => Err(e),
        };
        match prepared {
            Ok(v) => break v,
            Err(e) => {
                tracing::warn!(pod = rt.name, error = %e, "MountVolume failed");
                if sleep_or_stop(stop, backoff(shared, attempt)).await {
                    return;
                }
                attempt += 1;
            }
        }
    };
    let vols = Arc::new(vols);
    rt.lock().vols = Some(vols.clone());
    rt.touch();
    let mut sidecars = Vec::new();
    containers(shared, rt, &pod, &vols, stop, &mut sidecars).await;
    // Sidecars stop after the main containers, the last started first.
    let grace = stop.borrow().map_or_else(
        || {
            pod["spec"]["terminationGracePeriodSeconds"]
                .as_i64()
                .unwrap_or(30)
        },
        Stop::grace,
    );
    for (tx, task) in sidecars.into_iter().rev() {
        tx.send_replace(Some(Stop::Sidecars { grace }));
        let _ = task.await;
    }
}

/// A running sidecar: what stops it, and its restart loop.
type Sidecar = (watch::Sender<Option<Stop>>, tokio::task::JoinHandle<()>);

/// Init containers in order (each to completion; a sidecar until it has started, then on in
/// the background), then the main containers until they are done or the pod stops.
async fn containers(
    shared: &Arc<Shared>,
    rt: &Arc<PodRt>,
    pod: &Value,
    vols: &Arc<HashMap<String, PathBuf>>,
    stop: &mut watch::Receiver<Option<Stop>>,
    sidecars: &mut Vec<Sidecar>,
) {
    let inits = arr(pod, "/spec/initContainers");
    for (i, spec) in inits.iter().enumerate() {
        if crate::state::is_sidecar(spec) {
            sidecars.push(start_sidecar(shared, rt, i, vols));
            let mut ticks = rt.ticks.subscribe();
            loop {
                if rt.lock().init[i].started {
                    break;
                }
                tokio::select! {
                    _ = ticks.changed() => {}
                    () = stopped(stop) => return,
                }
            }
            continue;
        }
        loop {
            let Some(code) = instance(shared, rt, Kind::Init, i, vols, stop).await else {
                return;
            };
            if code == 0 {
                rt.update(Kind::Init, i, |c| c.done = true);
                break;
            }
            if pod["spec"]["restartPolicy"] == "Never" {
                rt.update(Kind::Init, i, |c| c.done = true);
                rt.lock().failed = true;
                rt.touch();
                return;
            }
            let restarts = rt.lock().init[i].restarts;
            set_back_off(shared, rt, Kind::Init, i);
            if sleep_or_stop(stop, backoff(shared, restarts)).await {
                return;
            }
            rt.update(Kind::Init, i, |c| c.restarts += 1);
        }
    }
    {
        let mut st = rt.lock();
        st.initialized = true;
        for c in &mut st.containers {
            c.state = CState::Waiting {
                reason: "ContainerCreating".into(),
                message: None,
            };
        }
    }
    rt.touch();
    let n = arr(pod, "/spec/containers").len();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let (shared, rt, vols) = (shared.clone(), rt.clone(), vols.clone());
        let mut stop = stop.clone();
        set.spawn(async move {
            loop {
                let Some(code) = instance(&shared, &rt, Kind::Main, i, &vols, &mut stop).await
                else {
                    return;
                };
                let pod = rt.lock().pod.clone();
                if !restarts_after(&pod, code) {
                    rt.update(Kind::Main, i, |c| c.done = true);
                    return;
                }
                let restarts = rt.lock().containers[i].restarts;
                set_back_off(&shared, &rt, Kind::Main, i);
                if sleep_or_stop(&mut stop, backoff(&shared, restarts)).await {
                    return;
                }
                rt.update(Kind::Main, i, |c| c.restarts += 1);
            }
        });
    }
    while set.join_next().await.is_some() {}
}

/// Starts init container `i` as a native sidecar: restarted whenever it exits, whatever the
/// pod's restart policy, until its own stop signal (sent after the main containers ended).
fn start_sidecar(
    shared: &Arc<Shared>,
    rt: &Arc<PodRt>,
    i: usize,
    vols: &Arc<HashMap<String, PathBuf>>,
) -> Sidecar {
    let (tx, mut rx) = watch::channel(None);
    let (shared, rt, vols) = (shared.clone(), rt.clone(), vols.clone());
    let task = tokio::spawn(async move {
        loop {
            if instance(&shared, &rt, Kind::Init, i, &vols, &mut rx)
                .await
                .is_none()
            {
                return;
            }
            let restarts = rt.lock().init[i].restarts;
            set_back_off(&shared, &rt, Kind::Init, i);
            if sleep_or_stop(&mut rx, backoff(&shared, restarts)).await {
                return;
            }
            rt.update(Kind::Init, i, |c| c.restarts += 1);
        }
    });
    (tx, task)
}

/// Starts the ephemeral containers the node has not seen yet (they are only ever added). Each
/// runs once, in the pod's namespaces with the pod's volumes, once the sandbox is ready; none
/// is restarted.
pub fn sync_ephemeral(shared: &Arc<Shared>, rt: &Arc<PodRt>) {
    let new: Vec<usize> = {
        let mut st = rt.lock();
        let specs = arr(&st.pod, Kind::Ephemeral.list()).to_vec();
        let known = st.ephemeral.len();
        for spec in specs.iter().skip(known) {
            st.ephemeral.push(Ctr::new(spec, "ContainerCreating"));
        }
        (known..specs.len()).collect()
    };
    for i in new {
        let (shared, rt) = (shared.clone(), rt.clone());
        tokio::spawn(async move {
            rt.touch();
            let mut stop = rt.stop.subscribe();
            let mut ticks = rt.ticks.subscribe();
            let vols = loop {
                if let Some(v) = rt.lock().vols.clone() {
                    break v;
                }
                tokio::select! {
                    _ = ticks.changed() => {}
                    () = stopped(&mut stop) => return,
                }
            };
            let _ = instance(&shared, &rt, Kind::Ephemeral, i, &vols, &mut stop).await;
            rt.update(Kind::Ephemeral, i, |c| c.done = true);
        });
    }
}

fn set_back_off(shared: &Shared, rt: &PodRt, kind: Kind, i: usize) {
    let pod = format!("{}_{}({})", rt.name, rt.namespace, rt.uid);
    let mut name = String::new();
    rt.update(kind, i, |c| {
        if let CState::Terminated(t) = &c.state {
            c.last = Some(t.clone());
        }
        c.state = CState::Waiting {
            reason: "CrashLoopBackOff".into(),
            message: Some(format!(
                "back-off restarting failed container {} in pod {pod}",
                c.name
            )),
        };
        name.clone_from(&c.name);
    });
    shared.events.warning(
        &rt.container_ref(kind, &name),
        "BackOff",
        format!("Back-off restarting failed container {name} in pod {pod}"),
    );
}

/// The Pod object with the status the node knows (pod IPs for the downward API).
fn pod_with_status(rt: &PodRt, node_ip: std::net::Ipv4Addr) -> Value {
    let st = rt.lock();
    let mut pod = st.pod.clone();
    if let (Some(v4), Some(v6)) = (st.ipv4, st.ipv6) {
        pod["status"]["podIP"] = json!(v4.to_string());
        pod["status"]["podIPs"] = json!([{"ip": v4.to_string()}, {"ip": v6.to_string()}]);
    }
    pod["status"]["hostIP"] = json!(node_ip.to_string());
    pod["status"]["hostIPs"] = json!([{"ip": node_ip.to_string()}]);
    if str_of(&pod, "/spec/serviceAccountName").is_empty() {
        pod["spec"]["serviceAccountName"] = json!("default");
    }
    pod
}

fn spec_of(pod: &Value, kind: Kind, i: usize) -> Value {
    arr(pod, kind.list()).get(i).cloned().unwrap_or(Value::Null)
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// The container's environment, in Kubernetes order: service links, envFrom, env.
async fn environment(
    shared: &Shared,
    pod: &Value,
    spec: &Value,
) -> Result<Vec<(String, String)>, String> {
    let ns = str_of(pod, "/metadata/namespace");
    let mut vars: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOSTNAME".into(), lab_dns::pod_files::hostname(pod)),
    ];
    let mut links = Vec::new();
    if pod["spec"]["enableServiceLinks"] != false {
        let svcs = Api::<Service>::namespaced(shared.client.clone(), ns)
            .list(&ListParams::default())
            .await
            .map_err(|e| format!("listing services for service links: {e}"))?;
        for s in svcs {
            let s = serde_json::to_value(&s).unwrap_or_default();
            let ip = str_of(&s, "/spec/clusterIP");
            if ip.is_empty() || ip == "None" {
                continue;
            }
            env::service_link_vars(
                str_of(&s, "/metadata/name"),
                ip,
                arr(&s, "/spec/ports"),
                &mut links,
            );
        }
    }
    if ns != "default" || links.iter().all(|(k, _)| k != "KUBERNETES_SERVICE_HOST") {
        env::service_link_vars(
            "kubernetes",
            &shared.network.api_service_ipv4().to_string(),
            &[json!({"name": "https", "port": 443, "protocol": "TCP"})],
            &mut links,
        );
    }
    vars.extend(links);
    let mut resolved: BTreeMap<String, String> = vars.iter().cloned().collect();
    let set = |vars: &mut Vec<(String, String)>,
               resolved: &mut BTreeMap<String, String>,
               k: String,
               v: String| {
        vars.retain(|(n, _)| *n != k);
        resolved.insert(k.clone(), v.clone());
        vars.push((k, v));
    };
    for from in arr(spec, "/envFrom") {
        let prefix = str_of(from, "/prefix");
        let (data, optional) = if let Some(cm) = from.get("configMapRef").filter(|v| v.is_object())
        {
            let name = str_of(cm, "/name");
            let got = Api::<ConfigMap>::namespaced(shared.client.clone(), ns)
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?;
            (
                got.map(|c| c.data.unwrap_or_default().into_iter().collect::<Vec<_>>()),
                cm["optional"] == true,
            )
        } else if let Some(s) = from.get("secretRef").filter(|v| v.is_object()) {
            let name = str_of(s, "/name");
            let got = Api::<Secret>::namespaced(shared.client.clone(), ns)
                .get_opt(name)
                .await
                .map_err(|e| e.to_string())?;
            (
                got.map(|s| {
                    s.data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                        .collect::<Vec<_>>()
                }),
                s["optional"] == true,
            )
        } else {
            continue;
        };
        match data {
            Some(d) => {
                for (k, v) in d {
                    set(&mut vars, &mut resolved, format!("{prefix}{k}"), v);
                }
            }
            None if optional => {}
            None => {
                return Err(format!(
                    "envFrom source of container {} not found",
                    str_of(spec, "/name")
                ));
            }
        }
    }
    for e in arr(spec, "/env") {
        let name = str_of(e, "/name").to_string();
        let value = if let Some(v) = e["value"].as_str() {
            env::expand(v, &resolved)
        } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            env::field(pod, f).ok_or_else(|| format!("env {name}: unsupported fieldPath {f:?}"))?
        } else if let Some(r) = e["valueFrom"]["resourceFieldRef"]["resource"].as_str() {
            env::resource_field(r)
        } else if let Some(k) = e["valueFrom"]["configMapKeyRef"].as_object() {
            let cm_name = k.get("name").and_then(Value::as_str).unwrap_or_default();
            let key = k.get("key").and_then(Value::as_str).unwrap_or_default();
            let optional = k.get("optional") == Some(&json!(true));
            let got = Api::<ConfigMap>::namespaced(shared.client.clone(), ns)
                .get_opt(cm_name)
                .await
                .map_err(|e| e.to_string())?;
            match got.and_then(|c| c.data.unwrap_or_default().get(key).cloned()) {
                Some(v) => v,
                None if optional => continue,
                None => {
                    return Err(format!(
                        "couldn't find key {key} in ConfigMap {ns}/{cm_name}"
                    ));
                }
            }
        } else if let Some(k) = e["valueFrom"]["secretKeyRef"].as_object() {
            let s_name = k.get("name").and_then(Value::as_str).unwrap_or_default();
            let key = k.get("key").and_then(Value::as_str).unwrap_or_default();
            let optional = k.get("optional") == Some(&json!(true));
            let got = Api::<Secret>::namespaced(shared.client.clone(), ns)
                .get_opt(s_name)
                .await
                .map_err(|e| e.to_string())?;
            match got.and_then(|s| s.data.unwrap_or_default().get(key).cloned()) {
                Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                None if optional => continue,
                None => return Err(format!("couldn't find key {key} in Secret {ns}/{s_name}")),
            }
        } else {
            String::new()
        };
        set(&mut vars, &mut resolved, name, value);
    }
    Ok(vars)
}

fn security(pod: &Value, spec: &Value) -> (Option<u32>, Option<u32>, Option<Vec<String>>) {
    let pick = |f: &str| {
        spec["securityContext"][f]
            .as_u64()
            .or_else(|| pod["spec"]["securityContext"][f].as_u64())
            .map(|v| v as u32)
    };
    let sc = &spec["securityContext"];
    let caps = if sc["privileged"] == true {
        None
    } else {
        Some(container::capabilities(
            &strings(&sc["capabilities"]["add"]),
            &strings(&sc["capabilities"]["drop"]),
        ))
    };
    (pick("runAsUser"), pick("runAsGroup"), caps)
}

/// Runs one instance of a container; returns its exit code, or `None` when the pod is stopping.
async fn instance(
    shared: &Arc<Shared>,
    rt: &Arc<PodRt>,
    kind: Kind,
    i: usize,
    vols: &HashMap<String, PathBuf>,
    stop: &mut watch::Receiver<Option<Stop>>,
) -> Option<i64> {
    let pod = pod_with_status(rt, shared.network.node_ipv4());
    let spec = spec_of(&pod, kind, i);
    let cname = str_of(&spec, "/name").to_string();
    let image = str_of(&spec, "/image").to_string();
    let me = rt.container_ref(kind, &cname);
    let events = &shared.events;
    // "Pulling": the image table.
    let mut pulls = 0;
    let argv = loop {
        match images::argv(
            &image,
            &strings(&spec["command"]),
            &strings(&spec["args"]),
            &shared.ghostwire_bin,
        ) {
            Ok(a) => {
                events.normal(
                    &me,
                    "Pulled",
                    format!("Container image \"{image}\" already present on machine"),
                );
                break Ok(a);
            }
            Err(e @ images::ImageError::NotFound(_)) => {
                events.normal(&me, "Pulling", format!("Pulling image \"{image}\""));
                events.warning(
                    &me,
                    "Failed",
                    format!("Failed to pull image \"{image}\": {e}"),
                );
                events.warning(&me, "Failed", "Error: ErrImagePull");
                rt.update(kind, i, |c| {
                    c.state = CState::Waiting {
                        reason: "ErrImagePull".into(),
                        message: Some(e.to_string()),
                    }
                });
                if sleep_or_stop(stop, shared.backoff_initial.min(Duration::from_secs(1))).await {
                    return None;
                }
                events.normal(
                    &me,
                    "BackOff",
                    format!("Back-off pulling image \"{image}\""),
                );
                events.warning(&me, "Failed", "Error: ImagePullBackOff");
                rt.update(kind, i, |c| {
                    c.state = CState::Waiting {
                        reason: "ImagePullBackOff".into(),
                        message: Some(format!(
                            "Back-off pulling image \"{}\"",
                            images::full_name(&image)
                        )),
                    }
                });
                if sleep_or_stop(stop, backoff(shared, pulls)).await {
                    return None;
                }
                pulls += 1;
            }
            Err(e) => {
                events.normal(
                    &me,
                    "Pulled",
                    format!("Container image \"{image}\" already present on machine"),
                );
                break Err(e.to_string());
            }
        }
    };
    let mut attempt = 0;
    let env = loop {
        match environment(shared, &pod, &spec).await {
            Ok(e) => break e,
            Err(e) => {
                events.warning(&me, "Failed", format!("Error: {e}"));
                rt.update(kind, i, |c| {
                    c.state = CState::Waiting {
                        reason: "CreateContainerConfigError".into(),
                        message: Some(e.clone()),
                    }
                });
                if sleep_or_stop(stop, backoff(shared, attempt)).await {
                    return None;
                }
                attempt += 1;
            }
        }
    };
    let mut mounts = Vec::new();
    let mut has_sa = false;
    for m in arr(&spec, "/volumeMounts") {
        let Some(src) = vols.get(str_of(m, "/name")) else {
            continue;
        };
        let sub = str_of(m, "/subPath");
        let source = if sub.is_empty() {
            src.clone()
        } else {
            src.join(sub)
        };
        if !sub.is_empty() && !source.exists() {
            let _ = std::fs::create_dir_all(&source);
        }
        let target = str_of(m, "/mountPath").to_string();
        has_sa |= target.trim_end_matches('/') == SA_MOUNT;
        mounts.push(Mount {
            source,
            target,
            read_only: m["readOnly"] == true,
        });
    }
    // resolv.conf, hosts, nsswitch.conf, unless the container mounts its own.
    for m in crate::dns::mounts(&rt.dir) {
        if !mounts.iter().any(|x| x.target == m.target) {
            mounts.push(m);
        }
    }
    if let Some(sa) = vols.get("")
        && !has_sa
    {
        mounts.push(Mount {
            source: sa.clone(),
            target: SA_MOUNT.into(),
            read_only: true,
        });
    }
    let home = rt.dir.join("home").join(&cname);
    let _ = std::fs::create_dir_all(&home);
    let mut env = env;
    if !env.iter().any(|(k, _)| k == "HOME") {
        // Not /root: the host's ~/.kube/config must not leak into the pod's in-cluster config.
        env.push(("HOME".into(), home.display().to_string()));
    }
    let (uid, gid, caps) = security(&pod, &spec);
    let netns_name = rt
        .lock()
        .netns
        .as_ref()
        .map(|p| p.netns().name().to_string())
        .unwrap_or_default();
    let wd = str_of(&spec, "/workingDir");
    let (keep_stdin, tty) = (spec["stdin"] == true, spec["tty"] == true);
    let launch = Launch {
        netns: netns_name,
        hostname: lab_dns::pod_files::hostname(&pod),
        mounts,
        workdir: (!wd.is_empty()).then(|| wd.to_string()),
        uid,
        gid,
        caps,
        argv: argv.clone().unwrap_or_default(),
        env: env.clone(),
        tty,
    };
    // Log file of this instance.
    let instance_no = rt.lock().containers_of(kind)[i]
        .instance
        .map_or(0, |n| n + 1);
    let log = crate::logs::log_path(&rt.dir, &cname, instance_no);
    let _ = std::fs::create_dir_all(log.parent().unwrap_or(&rt.dir));
    let started_at = now();
    let mut console = None;
    let mut drained = crate::console::Drained::default();
    let spawned = match (&argv, std::fs::File::create(&log)) {
        (Err(e), _) => Err(e.clone()),
        (_, Err(e)) => Err(format!("{}: {e}", log.display())),
        (Ok(_), Ok(file)) => {
            let mut cmd = container::command(&launch);
            let copies = file.try_clone().and_then(|f| Ok((f, file.try_clone()?)));
            cmd.stdin(std::process::Stdio::null()).stdout(file);
            let prepared = match copies {
                Ok((err, log)) => {
                    cmd.stderr(err);
                    if keep_stdin || tty {
                        crate::console::prepare(
                            &mut cmd,
                            log,
                            keep_stdin,
                            tty,
                            spec["stdinOnce"] == true,
                        )
                        .map(Some)
                    } else {
                        Ok(None)
                    }
                }
                Err(e) => Err(e),
            };
            if !tty {
                // (With a terminal, `setsid` makes the process its session's and group's leader.)
                std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            }
            match prepared {
                Ok(p) => tokio::process::Command::from(cmd)
                    .kill_on_drop(true)
                    .spawn()
                    .map(|mut child| {
                        if let Some((c, pending)) = p {
                            drained = pending.spawned(&mut child);
                            console = Some(std::sync::Arc::new(c));
                        }
                        child
                    })
                    .map_err(|e| e.to_string()),
                Err(e) => Err(format!("{}: {e}", log.display())),
            }
        }
    };
    // The runtime made the container; a start that fails is reported after it.
    events.normal(&me, "Created", format!("Created container: {cname}"));
    let mut child = match spawned {
        Ok(c) => c,
        Err(msg) => {
            events.warning(&me, "Failed", format!("Error: {msg}"));
            let t = json!({"exitCode": 128, "reason": "StartError", "message": msg,
                           "startedAt": "1970-01-01T00:00:00Z", "finishedAt": now()});
            rt.update(kind, i, |c| {
                c.instance = Some(instance_no);
                c.state = CState::Terminated(t);
                c.ready = false;
            });
            return Some(128);
        }
    };
    let pgid = child.id().map(|p| p as i32);
    if let Some(p) = pgid {
        crate::lock(&shared.pgids).insert(p);
    }
    // Main containers and sidecars have probes and count for readiness.
    let serves = kind == Kind::Main || (kind == Kind::Init && crate::state::is_sidecar(&spec));
    let exec = crate::streams::ExecInfo {
        env: env.clone(),
        uid,
        gid,
        caps: launch.caps.clone(),
    };
    events.normal(&me, "Started", format!("Started container {cname}"));
    rt.update(kind, i, |c| {
        c.instance = Some(instance_no);
        c.pgid = pgid;
        c.exec = Some(exec);
        c.console = console;
        c.state = CState::Running {
            started_at: started_at.clone(),
        };
        c.started = false;
        c.ready = false;
    });
    let ip = rt
        .lock()
        .ipv4
        .map_or(std::net::IpAddr::from([127, 0, 0, 1]), std::net::IpAddr::V4);
    let pid = pgid.unwrap_or(0);
    // The postStart hook runs beside the program; the container counts as started after it.
    let mut status = None;
    let post_start = &spec["lifecycle"]["postStart"];
    if post_start.is_object() && pgid.is_some() {
        let hook = probes::handler(shared, &spec, post_start, ip, &env, pid, HOOK_TIMEOUT);
        tokio::select! {
            result = hook => if let Err(msg) = result {
                tracing::info!(pod = rt.name, container = cname, "FailedPostStartHook; killing");
                events.warning(&me, "FailedPostStartHook", msg);
                events.normal(&me, "Killing", "FailedPostStartHook");
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            },
            s = child.wait() => status = Some(s.ok()),
            () = stopped(stop) => {}
        }
    }
    let has_startup = serves && spec["startupProbe"].is_object();
    let has_readiness = serves && spec["readinessProbe"].is_object();
    rt.update(kind, i, |c| {
        c.started = c.running() && !has_startup;
        c.ready = c.started && serves && !has_readiness;
    });
    let probe_task = (serves && pgid.is_some()).then(|| {
        tokio::spawn(probes::run(
            shared.clone(),
            rt.clone(),
            kind,
            i,
            spec.clone(),
            env.clone(),
            pid,
        ))
    });
    let status = match status {
        Some(s) => s,
        None => tokio::select! {
            s = child.wait() => s.ok(),
            () = stopped(stop) => {
                let why = *stop.borrow();
                if matches!(why, Some(Stop::Delete { .. } | Stop::Sidecars { .. })) {
                    events.normal(&me, "Killing", format!("Stopping container {cname}"));
                }
                let grace = stop.borrow().map_or(0, Stop::grace).max(0) as u64;
                let grace = Duration::from_secs(grace);
                let begun = tokio::time::Instant::now();
                probes::pre_stop(shared, rt, kind, &spec, ip, &env, pid, grace).await;
                terminate(&mut child, pgid, grace.saturating_sub(begun.elapsed())).await
            }
        },
    };
    if let Some(t) = probe_task {
        t.abort();
    }
    if let Some(p) = pgid {
        // The main process is gone; so must be the rest of its group.
        let _ = killpg(Pid::from_raw(p), Signal::SIGKILL);
        crate::lock(&shared.pgids).remove(&p);
    }
    drained.wait().await;
    use std::os::unix::process::ExitStatusExt;
    let code = status
        .map(|s| {
            s.code()
                .map_or_else(|| 128 + i64::from(s.signal().unwrap_or(9)), i64::from)
        })
        .unwrap_or(137);
    let reason = if code == 0 { "Completed" } else { "Error" };
    let t = json!({"exitCode": code, "reason": reason, "startedAt": started_at, "finishedAt": now(),
                   "containerID": format!("lab://{}/{}/{}", rt.uid, cname, instance_no)});
    rt.update(kind, i, |c| {
        c.state = CState::Terminated(t);
        c.ready = false;
        c.started = false;
        c.pgid = None;
        c.console = None;
    });
    if stop.borrow().is_some() {
        return None;
    }
    Some(code)
}

/// SIGTERM to the container's process group, up to `grace`, then SIGKILL.
pub async fn terminate(
    child: &mut tokio::process::Child,
    pgid: Option<i32>,
    grace: Duration,
) -> Option<std::process::ExitStatus> {
    if let Some(p) = pgid {
        let _ = killpg(Pid::from_raw(p), Signal::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => s.ok(),
        Err(_) => {
            if let Some(p) = pgid {
                let _ = killpg(Pid::from_raw(p), Signal::SIGKILL);
            }
            child.wait().await.ok()
        }
    }
}
