//! Shared helpers: a lab cluster per test (named after it, removed on drop even on panic) and
//! condition waits with bounded timeouts.
#![allow(dead_code, unused_imports)]

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
pub use lab_node::scenario::kubectl;
use lab_node::{Cluster, ClusterOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const TIMEOUT: Duration = Duration::from_secs(60);

/// The ghostwire binary for the ghostwire and echo images (`GW_LAB_GHOSTWIRE_BIN`, else the
/// workspace's debug build); tests here only use host images unless they say otherwise.
pub fn ghostwire_bin() -> PathBuf {
    std::env::var_os("GW_LAB_GHOSTWIRE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/ghostwire")
        })
}

pub async fn cluster(test: &str) -> Cluster {
    let mut opts = ClusterOptions::new(test, ghostwire_bin());
    opts.backoff_initial = Duration::from_millis(200);
    Cluster::start(opts)
        .await
        .expect("lab cluster starts (root needed)")
}

pub async fn apply(client: &kube::Client, ns: &str, pod: Value) -> Pod {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let name = pod["metadata"]["name"].as_str().unwrap().to_string();
    api.patch(
        &name,
        &PatchParams::apply("test").force(),
        &Patch::Apply(&pod),
    )
    .await
    .expect("apply pod")
}

/// Waits until `cond` holds for the pod (bounded).
pub async fn wait_pod(
    client: &kube::Client,
    ns: &str,
    name: &str,
    what: &str,
    cond: impl Fn(&Pod) -> bool,
) -> Pod {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let c = move |p: Option<&Pod>| p.is_some_and(&cond);
    match tokio::time::timeout(TIMEOUT, await_condition(api.clone(), name, c)).await {
        Ok(Ok(Some(p))) => p,
        other => {
            let now = api.get_opt(name).await.ok().flatten();
            panic!(
                "pod {ns}/{name} never became {what}: {other:?}; now: {:#?}",
                now.map(|p| p.status)
            )
        }
    }
}

pub fn ready(p: &Pod) -> bool {
    phase(p) == "Running"
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn phase(p: &Pod) -> &str {
    p.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub async fn wait_gone(client: &kube::Client, ns: &str, name: &str) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let uid = api
        .get(name)
        .await
        .ok()
        .and_then(|p| p.metadata.uid)
        .unwrap_or_default();
    tokio::time::timeout(
        TIMEOUT,
        await_condition(api, name, conditions::is_deleted(&uid)),
    )
    .await
    .expect("pod deleted in time")
    .expect("watch");
}

/// What every script [`python_json`] runs may use: `wait(what, f)` polls `f` until it gives
/// something true (bounded; the assertion names `what`).
const PY_PRELUDE: &str = r#"
import time
def wait(what, f, timeout=90):
    deadline = time.time() + timeout
    while True:
        v = f()
        if v:
            return v
        assert time.time() < deadline, what
        time.sleep(0.2)
"#;

/// Runs `script` with the host's python3 (which has the official `kubernetes` client), a
/// kubeconfig as its first argument and then `args`; what it printed, as JSON.
pub async fn python_json(kubeconfig: &Path, script: &str, args: &[&str]) -> Value {
    let out = tokio::process::Command::new("python3")
        .args(["-c", &format!("{PY_PRELUDE}{script}")])
        .arg(kubeconfig)
        .args(args)
        .output()
        .await
        .expect("python3 runs");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
