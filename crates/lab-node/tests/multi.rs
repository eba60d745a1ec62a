//! Three lab clusters in one process: own APIs and contexts, zones, non-overlapping ranges, pod
//! networks routed to each other, ClusterIPs local, APIs stopped, started and black-holed; the
//! kubectl matrix (create kinds, patches, server-side apply conflicts, RBAC with ServiceAccount
//! tokens) on every context.

mod common;

use common::TIMEOUT;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use lab_node::scenario::{apply, client_pod, cluster_ips, wait_ready};
use lab_node::{ApiState, MultiCluster, MultiOptions};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

async fn kubectl(mc: &MultiCluster, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(mc.kubeconfig_path())
        .arg("--request-timeout=5s")
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

/// A kubeconfig that authenticates to `ctx`'s API with a bearer token only.
fn token_kubeconfig(mc: &MultiCluster, ctx: &str, token: &str) -> std::path::PathBuf {
    let c = mc.cluster(ctx).unwrap();
    let dir = mc.kubeconfig_path().parent().unwrap();
    let ca = dir.join(format!("matrix-{ctx}-ca.pem"));
    std::fs::write(&ca, c.api().ca_pem()).unwrap();
    let path = dir.join(format!("matrix-{ctx}-token.yaml"));
    let text = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: t\nclusters:\n- name: t\n  cluster: {{server: \"https://{}\", certificate-authority: \"{}\"}}\nusers:\n- name: t\n  user: {{token: \"{token}\"}}\ncontexts:\n- name: t\n  context: {{cluster: t, user: t}}\n",
        c.api_addr(),
        ca.display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// kubectl on context `ctx`: whether it succeeded, its stdout and its stderr.
async fn kubectl_ctx(
    mc: &MultiCluster,
    ctx: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(mc.kubeconfig_path())
        .arg("--context")
        .arg(ctx)
        .arg("--request-timeout=10s")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(t) = stdin {
        input.write_all(t.as_bytes()).await.unwrap();
    }
    drop(input);
    let o = child.wait_with_output().await.unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// [`kubectl_ctx`] with stderr appended to the output when it failed.
async fn kubectl_in(
    mc: &MultiCluster,
    ctx: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> (bool, String) {
    let (ok, out, err) = kubectl_ctx(mc, ctx, args, stdin).await;
    (ok, if ok { out } else { out + &err })
}

/// The kubectl matrix on one context: `kubectl create` kinds (protobuf bodies), reads, label,
/// annotate, patch, client- and server-side apply with a conflict and `--force-conflicts`,
/// `auth can-i --as=system:serviceaccount:…` and real requests with that account's token, then
/// every `kubectl create` subcommand ([`lab_api::kubectl_create`]). Gives the token for the
/// cross-cluster check.
async fn kubectl_matrix(mc: &MultiCluster, ctx: &str, service_prefix: &str) -> String {
    let run = |args: Vec<&'static str>| async move {
        let (ok, out) = kubectl_in(mc, ctx, &args, None).await;
        assert!(ok, "{ctx}: kubectl {args:?}: {out}");
        out
    };
    let fails = |args: Vec<&'static str>| async move {
        let (ok, out) = kubectl_in(mc, ctx, &args, None).await;
        assert!(!ok, "{ctx}: kubectl {args:?} should fail: {out}");
        out
    };
    run(vec!["create", "namespace", "matrix"]).await;
    for args in [
        vec!["create", "configmap", "cm", "--from-literal=k=v"],
        vec!["create", "secret", "generic", "s", "--from-literal=p=q"],
        vec!["create", "serviceaccount", "reader"],
        vec![
            "create",
            "role",
            "cm-reader",
            "--verb=get,list,watch",
            "--resource=configmaps",
        ],
        vec![
            "create",
            "rolebinding",
            "cm-reader",
            "--role=cm-reader",
            "--serviceaccount=matrix:reader",
        ],
        vec!["create", "service", "clusterip", "web", "--tcp=80:8080"],
        vec!["label", "configmap", "cm", "tier=a"],
        vec!["annotate", "configmap", "cm", "note=x"],
        vec![
            "patch",
            "configmap",
            "cm",
            "--type=merge",
            "-p",
            "{\"data\":{\"k\":\"v2\"}}",
        ],
    ] {
        let mut a = args;
        a.extend(["-n", "matrix"]);
        run(a).await;
    }
    let ip = run(vec![
        "get",
        "service",
        "web",
        "-n",
        "matrix",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])
    .await;
    assert!(
        ip.starts_with(service_prefix),
        "{ctx}: ClusterIP {ip} outside {service_prefix}*"
    );
    let got = run(vec![
        "get",
        "configmap",
        "cm",
        "-n",
        "matrix",
        "-o",
        "jsonpath={.data.k} {.metadata.labels.tier} {.metadata.annotations.note}",
    ])
    .await;
    assert_eq!(got, "v2 a x", "{ctx}");

    // Server-side apply: the patch above made kubectl-patch own data.k.
    let cm =
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm, namespace: matrix}\ndata: {k: v3}\n";
    let (ok, out) = kubectl_in(mc, ctx, &["apply", "--server-side", "-f", "-"], Some(cm)).await;
    assert!(!ok, "{ctx}: {out}");
    assert!(
        out.contains(
            "Apply failed with 1 conflict: conflict with \"kubectl-patch\" using v1: .data.k"
        ),
        "{ctx}: {out}"
    );
    let (ok, out) = kubectl_in(
        mc,
        ctx,
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(cm),
    )
    .await;
    assert!(ok, "{ctx}: {out}");
    let (ok, out) = kubectl_in(
        mc,
        ctx,
        &["apply", "-f", "-"],
        Some(&cm.replace("name: cm,", "name: cm2,")),
    )
    .await;
    assert!(ok && out.contains("configmap/cm2 created"), "{ctx}: {out}");
    assert_eq!(
        run(vec![
            "get",
            "cm",
            "cm",
            "-n",
            "matrix",
            "-o",
            "jsonpath={.data.k}"
        ])
        .await,
        "v3"
    );

    // RBAC as the ServiceAccount: can-i, then real requests with its token.
    let sa = "--as=system:serviceaccount:matrix:reader";
    assert_eq!(
        run(vec![
            "auth",
            "can-i",
            "list",
            "configmaps",
            "-n",
            "matrix",
            sa
        ])
        .await
        .trim(),
        "yes"
    );
    assert_eq!(
        fails(vec!["auth", "can-i", "get", "secrets", "-n", "matrix", sa])
            .await
            .trim(),
        "no"
    );
    assert_eq!(
        fails(vec![
            "auth",
            "can-i",
            "list",
            "configmaps",
            "-n",
            "default",
            sa
        ])
        .await
        .trim(),
        "no"
    );
    let token = run(vec!["create", "token", "reader", "-n", "matrix"])
        .await
        .trim()
        .to_string();
    let kc = token_kubeconfig(mc, ctx, &token);
    let as_reader = |args: &[&str]| {
        let kc = kc.clone();
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        async move {
            let o = tokio::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kc)
                .args(&args)
                .output()
                .await
                .unwrap();
            let text = String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr);
            (o.status.success(), text)
        }
    };
    let (ok, out) = as_reader(&["get", "configmap", "cm", "-n", "matrix", "-o", "name"]).await;
    assert!(ok && out.trim() == "configmap/cm", "{ctx}: {out}");
    let (ok, out) = as_reader(&["get", "secrets", "-n", "matrix"]).await;
    assert!(!ok, "{ctx}: {out}");
    assert!(
        out.contains("secrets is forbidden: User \"system:serviceaccount:matrix:reader\" cannot list resource \"secrets\" in API group \"\" in the namespace \"matrix\""),
        "{ctx}: {out}"
    );
    let (ok, out) = as_reader(&["delete", "configmap", "cm", "-n", "matrix"]).await;
    assert!(
        !ok && out.contains("cannot delete resource"),
        "{ctx}: {out}"
    );

    // Every `kubectl create` subcommand, `expose`, `run` (real objects, not dry runs) and
    // `create token`, read back field by field: the lab-api check, on this cluster.
    let scratch = mc
        .kubeconfig_path()
        .parent()
        .unwrap()
        .join(format!("create-{ctx}"));
    std::fs::create_dir_all(&scratch).unwrap();
    lab_api::kubectl_create::every_create_subcommand(
        |args, stdin| async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            kubectl_ctx(mc, ctx, &args, stdin.as_deref()).await
        },
        &scratch,
    )
    .await
    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
    token
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_clusters_flat_pod_network_and_api_outages() {
    let mut opts = MultiOptions::new(
        "mc-three",
        &["east", "west", "central"],
        common::ghostwire_bin(),
    )
    .unwrap();
    opts.backoff_initial = Duration::from_millis(200);
    opts.cluster_mut("central").unwrap().zone = "central-b".into();
    let mc = MultiCluster::start(opts)
        .await
        .expect("three clusters start");

    // Each context is its own API with its own CA, node, zone and ranges.
    let mut cas = std::collections::BTreeSet::new();
    for (name, zone, cidr) in [
        ("east", "east", "10.244.0.0/24"),
        ("west", "west", "10.244.1.0/24"),
        ("central", "central-b", "10.244.2.0/24"),
    ] {
        let (ok, out, err) = kubectl(
            &mc,
            &[
                "--context",
                name,
                "get",
                "nodes",
                "-o",
                "jsonpath={.items[0].metadata.labels.topology\\.kubernetes\\.io/zone} {.items[0].spec.podCIDR}",
            ],
        )
        .await;
        assert!(ok, "{name}: {err}");
        assert_eq!(out, format!("{zone} {cidr}"), "{name}");
        cas.insert(mc.cluster(name).unwrap().api().ca_pem().to_string());
    }
    assert_eq!(cas.len(), 3, "each cluster has its own CA");
    let (ok, out, _) = kubectl(&mc, &["config", "get-contexts", "-o", "name"]).await;
    assert!(ok);
    assert_eq!(out.lines().collect::<Vec<_>>(), ["central", "east", "west"]);

    // The kubectl matrix on every context at once; each cluster's tokens mean nothing to the
    // others (each has its own signing key).
    let (te, tw, tc) = tokio::join!(
        kubectl_matrix(&mc, "east", "10.96."),
        kubectl_matrix(&mc, "west", "10.97."),
        kubectl_matrix(&mc, "central", "10.98."),
    );
    for (token, other) in [(&te, "west"), (&tw, "central"), (&tc, "east")] {
        let kc = token_kubeconfig(&mc, other, token);
        let o = tokio::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kc)
            .args(["get", "configmaps", "-n", "matrix"])
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("Unauthorized"),
            "{other}: {err}"
        );
    }
    // Objects live in one cluster only.
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "only-west"}})).unwrap();
    let wc = mc.cluster("west").unwrap().client().await.unwrap();
    Api::<Namespace>::all(wc.clone())
        .create(&Default::default(), &ns)
        .await
        .unwrap();
    let (ok, _, _) = kubectl(&mc, &["--context", "east", "get", "namespace", "only-west"]).await;
    assert!(!ok);

    // A pod in each of east and west; the test serves from inside west's pod.
    let east = mc.cluster("east").unwrap();
    let west = mc.cluster("west").unwrap();
    let ec = east.client().await.unwrap();
    apply(&ec, "default", &client_pod("a", "active", None, &[]))
        .await
        .unwrap();
    let mut b = client_pod("b", "active", None, &[]);
    b["metadata"]["labels"] = json!({"app": "b"});
    apply(&wc, "default", &b).await.unwrap();
    wait_ready(&ec, "default", &["a"], TIMEOUT).await.unwrap();
    wait_ready(&wc, "default", &["b"], TIMEOUT).await.unwrap();
    let a = east.node().pod_netns("default", "a").unwrap();
    let b = west.node().pod_netns("default", "b").unwrap();
    assert!(west.node().network().pod_v4.contains(&b.ipv4));
    let _echo = b.serve_echo("b", &[8080], &[]).unwrap();
    assert_eq!(
        a.tcp_request(SocketAddr::from((b.ipv4, 8080))).unwrap(),
        "b"
    );
    assert_eq!(
        a.tcp_request(SocketAddr::from((b.ipv6, 8080))).unwrap(),
        "b"
    );

    // West's ClusterIP serves west, is not routed from east.
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "b"},
                     "spec": {"selector": {"app": "b"}, "ports": [{"port": 80, "targetPort": 8080}]}});
    apply(&wc, "default", &svc).await.unwrap();
    let ip = cluster_ips(&wc, "default", "b").await.unwrap()[0];
    assert!(west.node().network().service_v4.contains(&match ip {
        std::net::IpAddr::V4(v4) => v4,
        _ => panic!("{ip}"),
    }));
    west.node()
        .wait_for_rules("west ClusterIP", TIMEOUT, |r| {
            r.iter().any(|p| p.ip == ip && !p.endpoints.is_empty())
        })
        .await
        .unwrap();
    assert_eq!(b.tcp_request(SocketAddr::new(ip, 80)).unwrap(), "b");
    assert!(a.tcp_request(SocketAddr::new(ip, 80)).is_err());

    // An east Service without selector whose slice names west's pod: east's ClusterIP reaches
    // the remote pod (what a service mirror sets up).
    let mirror = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "remote-b"},
                        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}});
    apply(&ec, "default", &mirror).await.unwrap();
    let slice: k8s_openapi::api::discovery::v1::EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "remote-b-1", "labels": {"kubernetes.io/service-name": "remote-b"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [b.ipv4.to_string()], "conditions": {"ready": true}}],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }))
    .unwrap();
    Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(ec.clone(), "default")
        .create(&Default::default(), &slice)
        .await
        .unwrap();
    let mip = cluster_ips(&ec, "default", "remote-b").await.unwrap()[0];
    east.node()
        .wait_for_rules("east's mirror ClusterIP", TIMEOUT, |r| {
            r.iter().any(|p| p.ip == mip && !p.endpoints.is_empty())
        })
        .await
        .unwrap();
    assert_eq!(a.tcp_request(SocketAddr::new(mip, 80)).unwrap(), "b");

    // Stop west's API: refused at once; east unaffected; start: same objects again.
    mc.set_api("west", ApiState::Down).unwrap();
    let (ok, _, err) = kubectl(&mc, &["--context", "west", "get", "ns", "only-west"]).await;
    assert!(!ok && err.contains("refused"), "{err}");
    let (ok, _, err) = kubectl(&mc, &["--context", "east", "get", "pod", "a"]).await;
    assert!(ok, "{err}");
    mc.set_api("west", ApiState::Up).unwrap();
    let (ok, _, err) = kubectl(&mc, &["--context", "west", "get", "ns", "only-west"]).await;
    assert!(ok, "{err}");

    // Black-hole central's API: a request hangs (it neither answers nor fails) until the hole
    // closes, then completes.
    let cc = mc.cluster("central").unwrap().client().await.unwrap();
    mc.set_api("central", ApiState::BlackHole).unwrap();
    let (ok, _, err) = kubectl(
        &mc,
        &["--context", "central", "--request-timeout=2s", "get", "ns"],
    )
    .await;
    assert!(!ok, "a black-holed API must not answer");
    assert!(!err.contains("refused"), "{err}");
    let pending = tokio::spawn(async move { Api::<Namespace>::all(cc).get("default").await });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !pending.is_finished(),
        "a request to a black-holed API hangs"
    );
    mc.set_api("central", ApiState::Up).unwrap();
    let ns = tokio::time::timeout(TIMEOUT, pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ns.unwrap().metadata.name.as_deref(), Some("default"));

    mc.shutdown(Duration::from_secs(2)).await;
}

#[test]
fn bad_cluster_lists_are_refused_by_name() {
    let bin = common::ghostwire_bin();
    let err = MultiOptions::new("x", &["east", "east"], bin.clone()).unwrap_err();
    assert!(err.to_string().contains("\"east\""), "{err}");
    let err = MultiOptions::new("x", &["East"], bin.clone()).unwrap_err();
    assert!(err.to_string().contains("cluster name"), "{err}");
    let mut opts = MultiOptions::new("x", &["a", "b"], bin).unwrap();
    opts.cluster_mut("b").unwrap().network = opts.clusters[0].network;
    let err = opts.validate().unwrap_err().to_string();
    assert!(
        err.contains("b: 10.244.0.0/24") && err.contains("overlap a"),
        "{err}"
    );
}
