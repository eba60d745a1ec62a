//! End to end, on the cluster the environment names (common/target.rs: the lab by default,
//! a real cluster with GHOSTWIRE_E2E_KUBECONFIG and GHOSTWIRE_E2E_IMAGE): the preview switch
//! example (docs/lab/preview-switch.yaml) applied with the real kubectl; the preview Pod's init
//! container is `ghostwire init --activate`, which reaches the API in-cluster with the switch's
//! ServiceAccount and deploy/'s Roles; its app reaches orders-preview through the orders
//! ClusterIP from its first request while another Pod reaches orders, and payments is left
//! alone for both.

mod common;

use common::target::Target;
use std::time::Duration;

const EXAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../docs/lab/preview-switch.yaml"
);
const RBAC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../deploy/components/workload-rbac/rbac.yaml"
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_switch_example_routes_the_preview_pod_only() {
    let t = Target::from_env("e2e-switch").await;
    let manifest = std::fs::read_to_string(EXAMPLE)
        .unwrap()
        .replace("image: ghostwire:dev", &format!("image: {}", t.image));
    assert!(manifest.contains(&t.image));
    let dir = common::TempDir::new(&t.namespace);
    let file = dir.path("preview-switch.yaml");
    std::fs::write(&file, manifest).unwrap();
    t.must(&["apply", "-f", RBAC, "-f", file.to_str().unwrap()])
        .await;
    for what in ["deployment", "pod"] {
        let cond = if what == "pod" { "Ready" } else { "Available" };
        let (ok, out, err) = t
            .kubectl(&[
                "wait",
                &format!("--for=condition={cond}"),
                what,
                "--all",
                "--timeout=180s",
            ])
            .await;
        assert!(
            ok,
            "{out}{err}\n{}",
            t.kubectl(&["get", "pods", "-o", "yaml"]).await.1
        );
    }
    // The apps call orders once a second: the first answer the preview one got is from
    // orders-preview (init set the jump before the app started; "unreachable" is printed while
    // the backends are still starting).
    let answered = |l: &str| l != "unreachable";
    let first = t
        .follow_until(&["shop-preview", "-c", "shop"], answered)
        .await;
    assert_eq!(first, "orders-preview v2");
    let first = t.follow_until(&["shop-active"], answered).await;
    assert_eq!(first, "orders v1");
    // The init container ran to completion and said what it did.
    assert!(
        !t.must(&["logs", "shop-preview", "-c", "ghostwire-init"])
            .await
            .is_empty()
    );
    let reason = t
        .must(&[
            "get",
            "pod",
            "shop-preview",
            "-o",
            "jsonpath={.status.initContainerStatuses[0].state.terminated.reason}",
        ])
        .await;
    assert_eq!(reason, "Completed");
    // From inside each Pod, by ClusterIP: orders switched for one, payments for neither.
    for (svc, pod, want) in [
        ("orders", "shop-preview", "orders-preview v2"),
        ("payments", "shop-preview", "payments v1"),
        ("orders", "shop-active", "orders v1"),
        ("payments", "shop-active", "payments v1"),
    ] {
        let ip = t
            .must(&["get", "svc", svc, "-o", "jsonpath={.spec.clusterIP}"])
            .await;
        let got = t
            .must(&[
                "exec",
                pod,
                "-c",
                "shop",
                "--",
                "python3",
                "/apps/get.py",
                &ip,
            ])
            .await;
        assert_eq!(got.trim(), want, "{pod} → {svc} ({ip})");
    }
    t.finish(Duration::from_secs(2)).await;
}
