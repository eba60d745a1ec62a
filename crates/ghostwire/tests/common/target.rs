//! The cluster an end-to-end test runs against, taken from the environment: a lab cluster of
//! its own by default; any real cluster when `GHOSTWIRE_E2E_KUBECONFIG` names its kubeconfig
//! (`GHOSTWIRE_E2E_IMAGE` then names a ghostwire image that cluster can pull; docs/e2e.md shows
//! it on kind). A test works in a namespace of its own, deleted when it ends, and only through
//! the real kubectl, so it asserts the same thing on both.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// How long a `kubectl logs -f` waits for its line; a real cluster may pull images first.
pub const FOLLOW: Duration = Duration::from_secs(180);

pub struct Target {
    lab: Option<lab_node::Cluster>,
    kubeconfig: PathBuf,
    /// The ghostwire image the test's manifests name.
    pub image: String,
    pub namespace: String,
    deleted: bool,
}

impl Target {
    /// The cluster from the environment, with a fresh namespace named after `test`.
    pub async fn from_env(test: &str) -> Target {
        let namespace = format!("gw-{test}-{}", std::process::id());
        let mut t = match std::env::var_os("GHOSTWIRE_E2E_KUBECONFIG") {
            Some(kc) => Target {
                lab: None,
                kubeconfig: kc.into(),
                image: std::env::var("GHOSTWIRE_E2E_IMAGE")
                    .expect("GHOSTWIRE_E2E_IMAGE: the ghostwire image the cluster can pull"),
                namespace,
                deleted: false,
            },
            None => {
                let lab = lab_cluster(test).await;
                Target {
                    kubeconfig: lab.kubeconfig_path().to_path_buf(),
                    lab: Some(lab),
                    image: "ghostwire:dev".into(),
                    namespace,
                    deleted: false,
                }
            }
        };
        let ns = t.namespace.clone();
        let (ok, _, err) = kubectl_at(&t.kubeconfig, None, &["create", "namespace", &ns]).await;
        if !ok {
            t.deleted = true;
            panic!("create namespace {ns}: {err}");
        }
        t
    }

    /// The lab cluster, when the test runs on one.
    pub fn lab(&self) -> Option<&lab_node::Cluster> {
        self.lab.as_ref()
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// kubectl in the test's namespace: success, stdout, stderr.
    pub async fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        kubectl_at(&self.kubeconfig, Some(&self.namespace), args).await
    }

    /// kubectl in the test's namespace, which must succeed; its stdout.
    pub async fn must(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.kubectl(args).await;
        assert!(ok, "kubectl {args:?}: {out}{err}");
        out
    }

    /// `kubectl logs -f ARGS` in the test's namespace until a line satisfies `pred`.
    pub async fn follow_until(&self, args: &[&str], pred: impl Fn(&str) -> bool) -> String {
        follow_until(&self.kubeconfig, Some(&self.namespace), args, pred).await
    }

    /// Deletes the namespace (waiting for it on a real cluster), and stops the lab cluster,
    /// asserting it left no network namespace behind.
    pub async fn finish(mut self, grace: Duration) {
        let ns = self.namespace.clone();
        let wait = if self.lab.is_some() {
            "--wait=false"
        } else {
            "--wait=true"
        };
        let (ok, _, err) =
            kubectl_at(&self.kubeconfig, None, &["delete", "namespace", &ns, wait]).await;
        assert!(ok, "delete namespace {ns}: {err}");
        self.deleted = true;
        if let Some(lab) = self.lab.take() {
            let prefix = lab.node().prefix();
            lab.shutdown(grace).await;
            let left: Vec<String> = netns::Netns::list()
                .unwrap()
                .into_iter()
                .filter(|n| n.starts_with(&prefix))
                .collect();
            assert!(left.is_empty(), "{left:?}");
        }
    }
}

impl Drop for Target {
    /// A test that failed still removes its namespace from a real cluster (the lab cluster
    /// goes away whole).
    fn drop(&mut self) {
        if !self.deleted && self.lab.is_none() {
            let _ = std::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(["delete", "namespace", &self.namespace, "--wait=false"])
                .output();
        }
    }
}

/// A lab cluster of the test's own, running this build's ghostwire for its images.
pub async fn lab_cluster(test: &str) -> lab_node::Cluster {
    let mut opts = lab_node::ClusterOptions::new(test, env!("CARGO_BIN_EXE_ghostwire").into());
    opts.backoff_initial = Duration::from_millis(500);
    lab_node::Cluster::start(opts)
        .await
        .expect("lab cluster (needs root)")
}

/// kubectl with `kubeconfig`, in `namespace` when given: success, stdout, stderr.
pub async fn kubectl_at(
    kubeconfig: &Path,
    namespace: Option<&str>,
    args: &[&str],
) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(kubeconfig);
    if let Some(ns) = namespace {
        cmd.args(["--namespace", ns]);
    }
    match cmd.args(args).output().await {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        Err(e) => (false, String::new(), format!("cannot run kubectl: {e}")),
    }
}

/// `kubectl logs -f ARGS` until a line satisfies `pred` (bounded by [`FOLLOW`]); that line.
pub async fn follow_until(
    kubeconfig: &Path,
    namespace: Option<&str>,
    args: &[&str],
    pred: impl Fn(&str) -> bool,
) -> String {
    let mut cmd = tokio::process::Command::new("kubectl");
    cmd.arg("--kubeconfig").arg(kubeconfig);
    if let Some(ns) = namespace {
        cmd.args(["--namespace", ns]);
    }
    let mut child = cmd
        .args(["logs", "-f"])
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let found = tokio::time::timeout(FOLLOW, async {
        while let Ok(Some(l)) = lines.next_line().await {
            if pred(&l) {
                return Some(l);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(l)) => l,
        other => panic!("kubectl logs -f {args:?}: no matching line ({other:?})"),
    }
}
