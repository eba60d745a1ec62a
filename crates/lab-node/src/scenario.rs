//! Building blocks for scripted use of a lab cluster (`ghostwire demo`, tests, benchmarks):
//! objects as JSON, applied with server-side apply, and bounded waits on Pod conditions.

use crate::{Error, Result};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::watcher;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// An echo Pod (`ghostwire/echo`) labelled `app: NAME`, answering with its name (and `VERSION`)
/// on port 8080 (named `http`), ready once its HTTP readiness probe passes.
pub fn echo_pod(name: &str, version: Option<&str>) -> Value {
    let mut c = json!({
        "name": "echo", "image": "ghostwire/echo:dev",
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    });
    if let Some(v) = version {
        c["env"] = json!([{"name": "VERSION", "value": v}]);
    }
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": {"app": name}},
           "spec": {"terminationGracePeriodSeconds": 2, "containers": [c]}})
}

/// An echo Deployment `NAME` of `replicas` pods labelled `app: NAME`, each answering with the
/// Deployment's name (and `version`) on port 8080 (named `http`), as a user runs a backend.
pub fn echo_deployment(name: &str, version: Option<&str>, replicas: u32) -> Value {
    let pod = echo_pod(name, None);
    let mut c = pod["spec"]["containers"][0].clone();
    let reply = version.map_or_else(|| name.to_string(), |v| format!("{name} {v}"));
    c["args"] = json!(["--reply", reply]);
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": name},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"terminationGracePeriodSeconds": 2, "containers": [c]}}}})
}

/// A ClusterIP Service `NAME` → Pods `app: NAME`, port 80 → `http`; dual-stack if asked.
pub fn service(name: &str, dual_stack: bool) -> Value {
    let mut s = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
                       "spec": {"selector": {"app": name},
                                "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
    if dual_stack {
        s["spec"]["ipFamilyPolicy"] = json!("RequireDualStack");
        s["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
    }
    s
}

/// deploy/components/workload-rbac: the ServiceAccount `ghostwire-switch` and the Roles and
/// RoleBindings the preview switch's injected containers run with, exactly as deployed.
pub const WORKLOAD_RBAC: &str = include_str!("../../../deploy/components/workload-rbac/rbac.yaml");

/// The ServiceAccount [`WORKLOAD_RBAC`] binds.
pub const SWITCH_ACCOUNT: &str = "ghostwire-switch";

/// Applies [`WORKLOAD_RBAC`] in `ns` (server-side apply, field manager `lab`), so Pods that run
/// as [`SWITCH_ACCOUNT`] get exactly deploy/'s permissions: a verb missing there fails here.
pub async fn workload_rbac(client: &kube::Client, ns: &str) -> Result<()> {
    apply_yaml(
        client,
        ns,
        "deploy/components/workload-rbac/rbac.yaml",
        WORKLOAD_RBAC,
    )
    .await
}

/// Applies every object of a multi-document YAML text (e.g. a file of deploy/) in `ns`
/// (server-side apply, field manager `lab`); any kind the lab API serves, cluster-scoped ones
/// (Namespace, ClusterRole, ClusterRoleBinding) outside `ns`. `what` names the text in errors.
pub async fn apply_yaml(client: &kube::Client, ns: &str, what: &str, yaml: &str) -> Result<()> {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let docs: Vec<Value> = serde_saphyr::from_multiple(yaml).map_err(|e| Error::Io {
        what: what.into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    })?;
    let pp = PatchParams::apply("lab").force();
    for obj in docs.iter().filter(|d| d.is_object()) {
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let api_version = obj["apiVersion"].as_str().unwrap_or_default();
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, obj["kind"].as_str().unwrap_or_default());
        let ar = ApiResource::from_gvk(&gvk);
        let api: Api<DynamicObject> = if gvk.kind.starts_with("Cluster") || gvk.kind == "Namespace"
        {
            Api::all_with(client.clone(), &ar)
        } else {
            Api::namespaced_with(client.clone(), ns, &ar)
        };
        api.patch(name, &pp, &Patch::Apply(obj)).await?;
    }
    Ok(())
}

/// Applies a Pod, Service or Deployment (server-side apply, field manager `lab`).
pub async fn apply(client: &kube::Client, ns: &str, obj: &Value) -> Result<()> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let pp = PatchParams::apply("lab").force();
    match obj["kind"].as_str() {
        Some("Deployment") => {
            Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), ns)
                .patch(name, &pp, &Patch::Apply(obj))
                .await?;
        }
        Some("Service") => {
            Api::<Service>::namespaced(client.clone(), ns)
                .patch(name, &pp, &Patch::Apply(obj))
                .await?;
        }
        _ => {
            Api::<Pod>::namespaced(client.clone(), ns)
                .patch(name, &pp, &Patch::Apply(obj))
                .await?;
        }
    }
    Ok(())
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Waits until every named Pod is Ready.
pub async fn wait_ready(
    client: &kube::Client,
    ns: &str,
    names: &[&str],
    timeout: Duration,
) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    for name in names {
        let cond = |p: Option<&Pod>| p.is_some_and(is_ready);
        match tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await {
            Ok(Ok(_)) => {}
            _ => {
                let status = api
                    .get_opt(name)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|p| p.status);
                return Err(Error::Timeout(
                    timeout,
                    format!(
                        "pod {ns}/{name} to be Ready (status: {})",
                        serde_json::to_string(&status).unwrap_or_default()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Waits until every named Deployment has all its replicas updated and available (what
/// `kubectl rollout status` waits for).
pub async fn wait_available(
    client: &kube::Client,
    ns: &str,
    names: &[&str],
    timeout: Duration,
) -> Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let done = |d: &Deployment| {
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        d.status.as_ref().is_some_and(|s| {
            s.observed_generation >= d.metadata.generation
                && s.updated_replicas == Some(want)
                && s.available_replicas == Some(want)
                && s.replicas == Some(want)
        })
    };
    for name in names {
        let cond = |d: Option<&Deployment>| d.is_some_and(done);
        if !matches!(
            tokio::time::timeout(timeout, await_condition(api.clone(), name, cond)).await,
            Ok(Ok(_))
        ) {
            let status = api
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|d| d.status);
            return Err(Error::Timeout(
                timeout,
                format!(
                    "deployment {ns}/{name} to be available (status: {})",
                    serde_json::to_string(&status).unwrap_or_default()
                ),
            ));
        }
    }
    Ok(())
}

/// The Pods of a rollout as a watch delivers them, and the extremes they reached: how many were
/// not being deleted (what `maxSurge` bounds) and how many of those were Ready (what
/// `maxUnavailable` bounds), counted after every event, so every state the API went through is
/// checked, not samples of it. A controller that deletes every Pod and recreates them shows
/// `min_ready` 0.
#[derive(Debug, Clone, Default)]
pub struct RolloutBounds {
    /// Name → (active, ready) as the watch last showed it.
    pods: BTreeMap<String, (bool, bool)>,
    /// A re-list in progress (the watch restarted): replaces `pods` once complete.
    relisting: Option<BTreeMap<String, (bool, bool)>>,
    counting: bool,
    /// Events counted since [`RolloutBounds::start`].
    pub events: usize,
    /// Most Pods not being deleted (nor finished) at once since `start`.
    pub max_active: usize,
    /// Fewest Ready Pods not being deleted at once since `start`.
    pub min_ready: usize,
}

impl RolloutBounds {
    /// Takes in one watch event.
    pub fn observe(&mut self, ev: &watcher::Event<Pod>) {
        let entry = |p: &Pod| {
            let active = p.metadata.deletion_timestamp.is_none()
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                );
            (
                p.metadata.name.clone().unwrap_or_default(),
                (active, active && is_ready(p)),
            )
        };
        match ev {
            watcher::Event::Init => self.relisting = Some(BTreeMap::new()),
            watcher::Event::InitApply(p) => {
                let (name, v) = entry(p);
                self.relisting
                    .get_or_insert_with(BTreeMap::new)
                    .insert(name, v);
                return;
            }
            watcher::Event::InitDone => {
                self.pods = self.relisting.take().unwrap_or_default();
            }
            watcher::Event::Apply(p) => {
                let (name, v) = entry(p);
                self.pods.insert(name, v);
            }
            watcher::Event::Delete(p) => {
                self.pods
                    .remove(p.metadata.name.as_deref().unwrap_or_default());
            }
        }
        if self.counting {
            self.count();
        }
    }

    fn count(&mut self) {
        self.events += 1;
        self.max_active = self.max_active.max(self.active());
        self.min_ready = self.min_ready.min(self.ready());
    }

    /// Pods not being deleted (nor finished) now.
    pub fn active(&self) -> usize {
        self.pods.values().filter(|(a, _)| *a).count()
    }

    /// Of those, the Ready ones.
    pub fn ready(&self) -> usize {
        self.pods.values().filter(|(_, r)| *r).count()
    }

    /// Starts counting extremes from the current state on.
    pub fn start(&mut self) {
        self.counting = true;
        self.events = 0;
        self.max_active = 0;
        self.min_ready = usize::MAX;
        self.count();
    }

    /// Stops counting; the extremes stay as they were.
    pub fn stop(&mut self) {
        self.counting = false;
    }

    /// Whether the counted extremes stayed within `replicas + max_surge` Pods and
    /// `replicas - max_unavailable` Ready ones.
    pub fn held(&self, replicas: usize, max_surge: usize, max_unavailable: usize) -> bool {
        self.max_active <= replicas + max_surge
            && self.min_ready >= replicas.saturating_sub(max_unavailable)
    }
}

/// A background watch of the Pods matching a label selector, feeding [`RolloutBounds`]; stops
/// when dropped.
pub struct RolloutWatch {
    bounds: std::sync::Arc<std::sync::Mutex<RolloutBounds>>,
    task: tokio::task::JoinHandle<()>,
}

impl RolloutWatch {
    /// Starts watching and returns once the first list arrived (bounded by `timeout`).
    pub async fn start(
        client: &kube::Client,
        ns: &str,
        selector: &str,
        timeout: Duration,
    ) -> Result<RolloutWatch> {
        use futures::StreamExt;
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        let bounds: std::sync::Arc<std::sync::Mutex<RolloutBounds>> = Default::default();
        let (synced_tx, synced) = tokio::sync::oneshot::channel();
        let feed = bounds.clone();
        let config = watcher::Config::default().labels(selector);
        let task = tokio::spawn(async move {
            let mut synced_tx = Some(synced_tx);
            let mut events = watcher(api, config).boxed();
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(ev) => {
                        crate::lock(&feed).observe(&ev);
                        if matches!(ev, watcher::Event::InitDone)
                            && let Some(tx) = synced_tx.take()
                        {
                            let _ = tx.send(());
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "rollout watch"),
                }
            }
        });
        let what = format!("the first list of Pods {selector} in {ns}");
        match tokio::time::timeout(timeout, synced).await {
            Ok(Ok(())) => Ok(RolloutWatch { bounds, task }),
            _ => {
                task.abort();
                Err(Error::Timeout(timeout, what))
            }
        }
    }

    /// The tracker (call `start`/`stop` on it, read its extremes).
    pub fn bounds(&self) -> std::sync::MutexGuard<'_, RolloutBounds> {
        crate::lock(&self.bounds)
    }
}

impl Drop for RolloutWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Deletes Pods and waits until they are gone (processes stopped, namespaces removed).
pub async fn delete_pods(
    client: &kube::Client,
    ns: &str,
    names: &[&str],
    timeout: Duration,
) -> Result<()> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    for name in names {
        let Some(p) = api.get_opt(name).await? else {
            continue;
        };
        let uid = p.metadata.uid.unwrap_or_default();
        api.delete(name, &DeleteParams::default()).await?;
        tokio::time::timeout(
            timeout,
            await_condition(api.clone(), name, conditions::is_deleted(&uid)),
        )
        .await
        .map_err(|_| Error::Timeout(timeout, format!("pod {ns}/{name} to be deleted")))?
        .map_err(|e| Error::Timeout(timeout, format!("pod {ns}/{name} to be deleted: {e}")))?;
    }
    Ok(())
}

/// A Service's ClusterIPs, IPv4 first.
pub async fn cluster_ips(client: &kube::Client, ns: &str, name: &str) -> Result<Vec<IpAddr>> {
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    Ok(svc
        .spec
        .and_then(|s| s.cluster_ips)
        .unwrap_or_default()
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .collect())
}

/// A client Pod labelled `app: shop, role: ROLE` whose container only sleeps (the caller
/// reaches Services from its namespace). With `init_args`, an init container runs this build's
/// `ghostwire` with them, as an injected init container would: `POD_NAMESPACE` from the
/// downward API, NET_ADMIN, an emptyDir at /shared, plus `init_env`.
pub fn client_pod(
    name: &str,
    role: &str,
    init_args: Option<&[&str]>,
    init_env: &[(&str, &str)],
) -> Value {
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "shop", "role": role}},
        "spec": {"terminationGracePeriodSeconds": 2,
                 "containers": [{"name": "shop", "image": "busybox", "command": ["sleep", "1000000"],
                                 "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}],
                 "volumes": [{"name": "shared", "emptyDir": {}}]}});
    if let Some(args) = init_args {
        let mut env = vec![
            json!({"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}),
        ];
        env.extend(init_env.iter().map(|(k, v)| json!({"name": k, "value": v})));
        pod["spec"]["initContainers"] = json!([{
            "name": "ghostwire-init", "image": "ghostwire:dev", "args": args, "env": env,
            "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}},
            "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
        }]);
    }
    pod
}

/// The real `kubectl` against the cluster: (exited 0, stdout, stderr).
pub async fn kubectl(cluster: &crate::Cluster, args: &[&str]) -> (bool, String, String) {
    match tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .args(args)
        .output()
        .await
    {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Err(e) => (false, String::new(), format!("cannot run kubectl: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool, deleting: bool) -> Pod {
        let mut p = json!({"metadata": {"name": name}, "status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}});
        if deleting {
            p["metadata"]["deletionTimestamp"] = json!("2026-11-26T00:00:00Z");
        }
        serde_json::from_value(p).unwrap()
    }

    fn listed(names: &[&str]) -> RolloutBounds {
        let mut b = RolloutBounds::default();
        b.observe(&watcher::Event::Init);
        for n in names {
            b.observe(&watcher::Event::InitApply(pod(n, true, false)));
        }
        b.observe(&watcher::Event::InitDone);
        b.start();
        b
    }

    #[test]
    fn a_rolling_step_holds_and_deleting_everything_does_not() {
        // 2 replicas, surge 1, unavailable 0: one new Pod, Ready, then one old one goes.
        let mut b = listed(&["old-1", "old-2"]);
        b.observe(&watcher::Event::Apply(pod("new-1", false, false)));
        b.observe(&watcher::Event::Apply(pod("new-1", true, false)));
        b.observe(&watcher::Event::Apply(pod("old-1", true, true)));
        b.observe(&watcher::Event::Delete(pod("old-1", true, true)));
        assert_eq!((b.max_active, b.min_ready, b.events), (3, 2, 5));
        assert!(b.held(2, 1, 0));
        // Both old Pods deleted before a new one is Ready: 0 Ready at one event.
        let mut b = listed(&["old-1", "old-2"]);
        b.observe(&watcher::Event::Apply(pod("old-1", true, true)));
        b.observe(&watcher::Event::Apply(pod("old-2", true, true)));
        b.observe(&watcher::Event::Apply(pod("new-1", true, false)));
        b.observe(&watcher::Event::Apply(pod("new-2", true, false)));
        assert_eq!(b.min_ready, 0);
        assert!(!b.held(2, 1, 0));
        assert!(!b.held(2, 1, 1));
        // Too many at once breaks the surge bound.
        let mut b = listed(&["old-1", "old-2"]);
        b.observe(&watcher::Event::Apply(pod("new-1", false, false)));
        b.observe(&watcher::Event::Apply(pod("new-2", false, false)));
        assert_eq!(b.max_active, 4);
        assert!(!b.held(2, 1, 0));
        // Not counted before `start` nor after `stop`.
        let mut b = listed(&["a"]);
        b.stop();
        b.observe(&watcher::Event::Apply(pod("a", false, true)));
        assert_eq!((b.min_ready, b.events), (1, 1));
    }
}
