//! The lab cluster end to end with the real kubectl: `kubectl apply` of the preview-switch
//! example (docs/lab/preview-switch.yaml) runs real processes in real namespaces; the preview
//! pod's init container is `ghostwire init --activate` reaching the API in-cluster; its app
//! reaches orders-preview through the orders ClusterIP while another pod reaches orders.

use lab_node::{Cluster, ClusterOptions};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const TIMEOUT: Duration = Duration::from_secs(90);

async fn cluster(test: &str) -> Cluster {
    let mut opts = ClusterOptions::new(test, env!("CARGO_BIN_EXE_ghostwire").into());
    opts.backoff_initial = Duration::from_millis(500);
    Cluster::start(opts)
        .await
        .expect("lab cluster (needs root)")
}

async fn kubectl(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(c.kubeconfig_path())
        .args(args)
        .output()
        .await
        .expect("kubectl runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kubectl logs -f` until a line satisfies `pred` (bounded); returns that line.
async fn follow_until(c: &Cluster, args: &[&str], pred: impl Fn(&str) -> bool) -> String {
    let mut child = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(c.kubeconfig_path())
        .args(["logs", "-f"])
        .args(args)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let found = tokio::time::timeout(TIMEOUT, async {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_switch_with_kubectl() {
    let c = cluster("e2e-switch").await;
    let manifest = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/lab/preview-switch.yaml"
    );
    let (ok, out, err) = kubectl(&c, &["apply", "-f", manifest]).await;
    assert!(ok, "{out}{err}");
    let (ok, out, err) = kubectl(
        &c,
        &[
            "wait",
            "--for=condition=Ready",
            "pod",
            "--all",
            "--timeout=90s",
        ],
    )
    .await;
    assert!(
        ok,
        "{out}{err}\n{}",
        kubectl(&c, &["get", "pods", "-o", "yaml"]).await.1
    );
    // The app containers call orders once a second; the preview one gets orders-preview.
    let line = follow_until(&c, &["shop-preview", "-c", "shop"], |l| {
        l.starts_with("orders")
    })
    .await;
    assert_eq!(line, "orders-preview v2");
    let line = follow_until(&c, &["shop-active"], |l| l.starts_with("orders")).await;
    assert_eq!(line, "orders v1");
    // The init container ran to completion and says what it did.
    let (ok, out, err) = kubectl(&c, &["logs", "shop-preview", "-c", "ghostwire-init"]).await;
    assert!(ok, "{err}");
    assert!(!out.is_empty());
    let (ok, out, _) = kubectl(
        &c,
        &[
            "get",
            "pod",
            "shop-preview",
            "-o",
            "jsonpath={.status.initContainerStatuses[0].state.terminated.reason}",
        ],
    )
    .await;
    assert!(ok);
    assert_eq!(out, "Completed");
    // Straight from the pods' namespaces: payments unchanged for both, orders switched for one.
    let (_, svc_ip, _) = kubectl(
        &c,
        &["get", "svc", "orders", "-o", "jsonpath={.spec.clusterIP}"],
    )
    .await;
    let (_, pay_ip, _) = kubectl(
        &c,
        &["get", "svc", "payments", "-o", "jsonpath={.spec.clusterIP}"],
    )
    .await;
    let orders: std::net::SocketAddr = format!("{svc_ip}:80").parse().unwrap();
    let payments: std::net::SocketAddr = format!("{pay_ip}:80").parse().unwrap();
    let preview = c.node().pod_netns("default", "shop-preview").unwrap();
    let active = c.node().pod_netns("default", "shop-active").unwrap();
    let (p1, p2, a1, a2) = tokio::task::spawn_blocking(move || {
        (
            preview.tcp_request(orders).unwrap(),
            preview.tcp_request(payments).unwrap(),
            active.tcp_request(orders).unwrap(),
            active.tcp_request(payments).unwrap(),
        )
    })
    .await
    .unwrap();
    assert_eq!(
        (p1.as_str(), p2.as_str()),
        ("orders-preview v2", "payments v1")
    );
    assert_eq!((a1.as_str(), a2.as_str()), ("orders v1", "payments v1"));
    let prefix = c.node().prefix();
    c.shutdown(Duration::from_secs(2)).await;
    let left: Vec<String> = netns::Netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
