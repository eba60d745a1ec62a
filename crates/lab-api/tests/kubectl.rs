//! The real `kubectl` against the lab API. Each test has its own server and kubeconfig.

use lab_api::{Options, RunningServer, Server};
use serde_json::json;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

/// A server whose kubeconfig sits in its own temp dir (removed with the server).
async fn lab() -> RunningServer {
    Server::start(Options::default()).await.unwrap()
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn cmd(s: &RunningServer, args: &[&str]) -> Command {
    let mut c = Command::new("kubectl");
    c.arg("--kubeconfig").arg(s.kubeconfig_path());
    // A cache per server: discovery of one server never leaks into another's test.
    let cache: PathBuf = s.kubeconfig_path().parent().unwrap().join("cache");
    c.arg("--cache-dir").arg(cache);
    c.args(args);
    c.kill_on_drop(true);
    c
}

async fn kubectl(s: &RunningServer, args: &[&str], stdin: Option<&str>) -> Out {
    let mut c = cmd(s, args);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("kubectl runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).await.unwrap();
    }
    drop(input);
    let o = child.wait_with_output().await.unwrap();
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into(),
        stderr: String::from_utf8_lossy(&o.stderr).into(),
    }
}

async fn ok(s: &RunningServer, args: &[&str], stdin: Option<&str>) -> String {
    let o = kubectl(s, args, stdin).await;
    assert!(o.ok, "kubectl {args:?} failed: {}{}", o.stdout, o.stderr);
    o.stdout
}

const DEPLOY: &str = "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: c
        image: nginx:1.27
        ports: [{containerPort: 80}]
      - name: sidecar
        image: busybox:1.36
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
";

#[tokio::test]
async fn version_api_resources_and_get() {
    let s = lab().await;
    let v = ok(&s, &["version", "-o", "json"], None).await;
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(v["serverVersion"]["major"], "1");
    let r = ok(&s, &["api-resources"], None).await;
    for want in [
        "pods",
        "services",
        "endpointslices",
        "deployments",
        "leases",
        "customresourcedefinitions",
    ] {
        assert!(r.contains(want), "{r}");
    }
    let ns = ok(&s, &["get", "namespaces", "-o", "name"], None).await;
    assert!(
        ns.contains("namespace/default") && ns.contains("namespace/kube-system"),
        "{ns}"
    );
    let j = ok(&s, &["get", "svc", "kubernetes", "-o", "json"], None).await;
    let j: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(j["spec"]["clusterIP"], "10.96.0.1");
    let y = ok(&s, &["get", "svc", "kubernetes", "-o", "yaml"], None).await;
    assert!(y.contains("clusterIP: 10.96.0.1"), "{y}");
    let table = ok(&s, &["get", "svc"], None).await;
    assert!(
        table.contains("CLUSTER-IP") && table.contains("10.96.0.1"),
        "{table}"
    );
    let missing = kubectl(&s, &["get", "pod", "nope"], None).await;
    assert!(
        !missing.ok && missing.stderr.contains("NotFound"),
        "{}",
        missing.stderr
    );
}

#[tokio::test]
async fn apply_create_unchanged_configured_and_replace() {
    let s = lab().await;
    let first = ok(&s, &["apply", "-f", "-"], Some(DEPLOY)).await;
    assert!(
        first.contains("deployment.apps/web created") && first.contains("service/web created"),
        "{first}"
    );
    let again = ok(&s, &["apply", "-f", "-"], Some(DEPLOY)).await;
    assert!(
        again.contains("deployment.apps/web unchanged") && again.contains("service/web unchanged"),
        "{again}"
    );
    let changed = DEPLOY
        .replace("replicas: 2", "replicas: 3")
        .replace("nginx:1.27", "nginx:1.28");
    let third = ok(&s, &["apply", "-f", "-"], Some(&changed)).await;
    assert!(third.contains("deployment.apps/web configured"), "{third}");
    let d: serde_json::Value =
        serde_json::from_str(&ok(&s, &["get", "deploy", "web", "-o", "json"], None).await).unwrap();
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "nginx:1.28"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][1]["name"],
        "sidecar"
    );
    assert_eq!(d["metadata"]["generation"], 2);
    let scaled = ok(&s, &["scale", "deploy", "web", "--replicas=5"], None).await;
    assert!(scaled.contains("deployment.apps/web scaled"), "{scaled}");
    let n = ok(
        &s,
        &["get", "deploy", "web", "-o", "jsonpath={.spec.replicas}"],
        None,
    )
    .await;
    assert_eq!(n, "5");

    // Unknown fields are refused: kubectl validates on the server (fieldValidation=Strict).
    let bad = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bad}\ndata: {a: b}\nbogus: 1\n";
    let o = kubectl(&s, &["apply", "-f", "-"], Some(bad)).await;
    assert!(
        !o.ok && o.stderr.contains("unknown field \"bogus\""),
        "{}",
        o.stderr
    );

    let created = ok(
        &s,
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c1}\ndata: {a: b}\n"),
    )
    .await;
    assert!(created.contains("configmap/c1 created"), "{created}");
    let dup = kubectl(
        &s,
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c1}\n"),
    )
    .await;
    assert!(
        !dup.ok && dup.stderr.contains("AlreadyExists"),
        "{}",
        dup.stderr
    );
    let replaced = ok(
        &s,
        &["replace", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c1}\ndata: {a: c}\n"),
    )
    .await;
    assert!(replaced.contains("configmap/c1 replaced"), "{replaced}");
    let a = ok(&s, &["get", "cm", "c1", "-o", "jsonpath={.data.a}"], None).await;
    assert_eq!(a, "c");
    let svc: serde_json::Value =
        serde_json::from_str(&ok(&s, &["get", "svc", "web", "-o", "json"], None).await).unwrap();
    let ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    // replace without clusterIP keeps the allocated one.
    ok(
        &s,
        &["replace", "-f", "-"],
        Some(
            "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports: [{port: 81}]\n",
        ),
    )
    .await;
    let ip2 = ok(
        &s,
        &["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"],
        None,
    )
    .await;
    assert_eq!(ip, ip2);
}

#[tokio::test]
async fn label_annotate_patch_delete() {
    let s = lab().await;
    ok(&s, &["apply", "-f", "-"], Some(DEPLOY)).await;
    ok(&s, &["label", "svc", "web", "tier=a"], None).await;
    let no = kubectl(&s, &["label", "svc", "web", "tier=b"], None).await;
    assert!(
        !no.ok && no.stderr.contains("--overwrite is false"),
        "{}",
        no.stderr
    );
    ok(&s, &["label", "svc", "web", "tier=b", "--overwrite"], None).await;
    ok(&s, &["annotate", "svc", "web", "note=hi"], None).await;
    ok(
        &s,
        &[
            "patch",
            "svc",
            "web",
            "--type",
            "merge",
            "-p",
            r#"{"metadata":{"labels":{"m":"1"}}}"#,
        ],
        None,
    )
    .await;
    ok(
        &s,
        &[
            "patch",
            "svc",
            "web",
            "--type",
            "json",
            "-p",
            r#"[{"op":"add","path":"/metadata/labels/j","value":"2"}]"#,
        ],
        None,
    )
    .await;
    ok(
        &s,
        &[
            "patch",
            "deploy",
            "web",
            "--type",
            "strategic",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"c","image":"nginx:1.29"}]}}}}"#,
        ],
        None,
    )
    .await;
    let svc: serde_json::Value =
        serde_json::from_str(&ok(&s, &["get", "svc", "web", "-o", "json"], None).await).unwrap();
    let labels = &svc["metadata"]["labels"];
    assert_eq!(
        (
            labels["tier"].as_str(),
            labels["m"].as_str(),
            labels["j"].as_str()
        ),
        (Some("b"), Some("1"), Some("2"))
    );
    assert_eq!(svc["metadata"]["annotations"]["note"], "hi");
    let sel = ok(
        &s,
        &["get", "svc", "-l", "tier in (b),j", "-o", "name"],
        None,
    )
    .await;
    assert_eq!(sel.trim(), "service/web");
    let d: serde_json::Value =
        serde_json::from_str(&ok(&s, &["get", "deploy", "web", "-o", "json"], None).await).unwrap();
    let cs = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!((cs.len(), cs[0]["image"].as_str()), (2, Some("nginx:1.29")));
    let bad = kubectl(
        &s,
        &[
            "patch",
            "svc",
            "web",
            "--type",
            "json",
            "-p",
            r#"[{"op":"remove","path":"/spec/nothing"}]"#,
        ],
        None,
    )
    .await;
    assert!(!bad.ok, "{}", bad.stdout);
    let desc = ok(&s, &["describe", "svc", "web"], None).await;
    assert!(desc.contains("Name:") && desc.contains("web"), "{desc}");
    let del = ok(&s, &["delete", "svc", "web"], None).await;
    assert!(del.contains("service \"web\" deleted"), "{del}");
    let gone = kubectl(&s, &["get", "svc", "web"], None).await;
    assert!(
        !gone.ok && gone.stderr.contains("NotFound"),
        "{}",
        gone.stderr
    );
    let forbidden = kubectl(&s, &["delete", "ns", "default"], None).await;
    assert!(
        !forbidden.ok && forbidden.stderr.contains("Forbidden"),
        "{}",
        forbidden.stderr
    );
}

#[tokio::test]
async fn get_watch_output_watch_events() {
    let s = lab().await;
    ok(
        &s,
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: w0}\n"),
    )
    .await;
    let mut c = cmd(&s, &["get", "configmaps", "-w", "--output-watch-events"]);
    c.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = c.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    // The initial list comes first; events after it are delivered from its resourceVersion on.
    let name_of = |l: &str| l.split_whitespace().nth(1).unwrap_or_default().to_string();
    while !seen.iter().any(|l: &String| name_of(l) == "w0") {
        seen.push(lines.next_line().await.unwrap().expect("watch output"));
    }
    ok(
        &s,
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: w1}\n"),
    )
    .await;
    ok(&s, &["label", "cm", "w1", "x=y"], None).await;
    ok(&s, &["delete", "cm", "w1"], None).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let l = lines.next_line().await.unwrap().expect("watch output");
        if name_of(&l) == "w1" {
            got.push(l.split_whitespace().next().unwrap().to_string());
        }
    }
    assert_eq!(got, ["ADDED", "MODIFIED", "DELETED"]);
    child.kill().await.unwrap();
}

#[tokio::test]
async fn explain_reads_deep_openapi_schemas() {
    let s = lab().await;
    let e = ok(&s, &["explain", "pods"], None).await;
    assert!(
        e.contains("KIND:") && e.contains("Pod") && e.contains("spec"),
        "{e}"
    );
    let c = ok(&s, &["explain", "pod.spec.containers"], None).await;
    assert!(
        c.contains("FIELD: containers <[]Container>")
            && c.contains("imagePullPolicy")
            && c.contains("livenessProbe"),
        "{c}"
    );
    let p = ok(
        &s,
        &["explain", "deployment.spec.template.spec.containers.ports"],
        None,
    )
    .await;
    assert!(
        p.contains("GROUP:      apps")
            && p.contains("containerPort\t<integer> -required-")
            && p.contains("Number of port to expose"),
        "{p}"
    );
    let r = ok(&s, &["explain", "svc.spec.ports.targetPort"], None).await;
    assert!(r.contains("IntOrString"), "{r}");
}

#[tokio::test]
async fn misspelt_nested_fields_are_refused() {
    let s = lab().await;
    let bad = DEPLOY.replace("containerPort: 80", "containerPrt: 80");
    let o = kubectl(&s, &["apply", "-f", "-"], Some(&bad)).await;
    assert!(
        !o.ok
            && o.stderr.contains(
                "Deployment in version \"v1\" cannot be handled as a Deployment: strict decoding \
                 error: unknown field \"spec.template.spec.containers[0].ports[0].containerPrt\""
            ),
        "{}",
        o.stderr
    );
    let o = kubectl(&s, &["create", "-f", "-"], Some(&bad)).await;
    assert!(!o.ok && o.stderr.contains("containerPrt"), "{}", o.stderr);
}

/// Argo Rollouts' `Rollout` CRD in its real shape (printer columns, status and scale
/// subresources), with the schema cut down to what keeps unknown fields.
const ROLLOUT_CRD: &str = "apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: rollouts.argoproj.io
  labels: {app.kubernetes.io/name: argo-rollouts, app.kubernetes.io/part-of: argo-rollouts}
spec:
  group: argoproj.io
  names: {kind: Rollout, listKind: RolloutList, plural: rollouts, shortNames: [ro], singular: rollout}
  scope: Namespaced
  versions:
  - name: v1alpha1
    served: true
    storage: true
    additionalPrinterColumns:
    - {description: Number of desired pods, jsonPath: .spec.replicas, name: Desired, type: integer}
    - {description: Total number of non-terminated pods targeted by this rollout, jsonPath: .status.replicas, name: Current, type: integer}
    - {description: Total number of non-terminated pods targeted by this rollout that have the desired template spec, jsonPath: .status.updatedReplicas, name: Up-to-date, type: integer}
    - {description: Total number of available pods (ready for at least minReadySeconds) targeted by this rollout, jsonPath: .status.availableReplicas, name: Available, type: integer}
    - {jsonPath: .metadata.creationTimestamp, name: Age, type: date}
    schema:
      openAPIV3Schema:
        type: object
        required: [spec]
        properties:
          apiVersion: {type: string}
          kind: {type: string}
          metadata: {type: object}
          spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
          status: {type: object, x-kubernetes-preserve-unknown-fields: true}
    subresources:
      status: {}
      scale: {labelSelectorPath: .status.selector, specReplicasPath: .spec.replicas, statusReplicasPath: .status.HPAReplicas}
";

const ROLLOUT: &str = "apiVersion: argoproj.io/v1alpha1
kind: Rollout
metadata: {name: orders}
spec:
  replicas: 2
  selector: {matchLabels: {app: orders}}
  template:
    metadata: {labels: {app: orders}}
    spec:
      containers: [{name: orders, image: nginx:1.27}]
  strategy:
    blueGreen: {activeService: orders, previewService: orders-preview, autoPromotionEnabled: false}
";

#[tokio::test]
async fn argo_rollouts_crd_and_a_rollout() {
    use kube::api::{Api, ApiResource, DynamicObject};
    use kube::core::GroupVersionKind;

    let s = lab().await;
    let crd = ok(&s, &["apply", "-f", "-"], Some(ROLLOUT_CRD)).await;
    assert!(
        crd.contains("customresourcedefinition.apiextensions.k8s.io/rollouts.argoproj.io created"),
        "{crd}"
    );
    let est = ok(
        &s,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/rollouts.argoproj.io",
        ],
        None,
    )
    .await;
    assert!(est.contains("condition met"), "{est}");

    let created = ok(&s, &["apply", "-f", "-"], Some(ROLLOUT)).await;
    assert!(
        created.contains("rollout.argoproj.io/orders created"),
        "{created}"
    );
    let again = ok(&s, &["apply", "-f", "-"], Some(ROLLOUT)).await;
    assert!(
        again.contains("rollout.argoproj.io/orders unchanged"),
        "{again}"
    );
    let table = ok(&s, &["get", "rollouts"], None).await;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "DESIRED",
            "CURRENT",
            "UP-TO-DATE",
            "AVAILABLE",
            "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..2], ["orders", "2"], "{table}");
    let by_short = ok(&s, &["get", "ro", "orders", "-o", "name"], None).await;
    assert_eq!(by_short.trim(), "rollout.argoproj.io/orders");
    let active = ok(
        &s,
        &[
            "get",
            "rollout",
            "orders",
            "-o",
            "jsonpath={.spec.strategy.blueGreen.activeService}",
        ],
        None,
    )
    .await;
    assert_eq!(active, "orders");
    // kubectl scale goes through the CRD's scale subresource (specReplicasPath).
    let scaled = ok(&s, &["scale", "rollout", "orders", "--replicas=4"], None).await;
    assert!(
        scaled.contains("rollout.argoproj.io/orders scaled"),
        "{scaled}"
    );
    let sc: serde_json::Value = serde_json::from_str(
        &ok(
            &s,
            &[
                "get",
                "--raw",
                "/apis/argoproj.io/v1alpha1/namespaces/default/rollouts/orders/scale",
            ],
            None,
        )
        .await,
    )
    .unwrap();
    assert_eq!(
        (&sc["kind"], &sc["spec"]["replicas"]),
        (&json!("Scale"), &json!(4))
    );
    let explained = ok(&s, &["explain", "rollouts"], None).await;
    assert!(
        explained.contains("GROUP:      argoproj.io") && explained.contains("KIND:       Rollout"),
        "{explained}"
    );

    let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "rollouts");
    let rollouts: Api<DynamicObject> =
        Api::namespaced_with(s.client().await.unwrap(), "default", &ar);
    let r = rollouts.get("orders").await.unwrap();
    assert_eq!(r.types.as_ref().unwrap().kind, "Rollout");
    assert_eq!(r.data["spec"]["replicas"], 4);
    assert_eq!(
        r.data["spec"]["strategy"]["blueGreen"]["previewService"],
        "orders-preview"
    );
    let listed = rollouts.list(&Default::default()).await.unwrap();
    assert_eq!(listed.items.len(), 1);
}

/// `kubectl auth can-i` for a subject: "yes" or "no" (exit 0 or 1).
async fn can_i(s: &RunningServer, args: &[&str]) -> String {
    let mut all = vec!["auth", "can-i"];
    all.extend_from_slice(args);
    let o = kubectl(s, &all, None).await;
    match o.stdout.trim() {
        "yes" if o.ok => "yes".into(),
        "no" if !o.ok => "no".into(),
        other => panic!("kubectl auth can-i {args:?}: {other} {}", o.stderr),
    }
}

/// The RBAC matrix of issue 11: the preview switch's ServiceAccount holds exactly what
/// deploy/components/workload-rbac grants, asked through `kubectl auth can-i --as` and tried
/// with real requests; aggregation; impersonation is itself authorized.
#[tokio::test]
async fn auth_can_i_matrix_impersonation_and_aggregation() {
    let s = lab().await;
    let rbac = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/components/workload-rbac/rbac.yaml"
    ))
    .unwrap();
    ok(&s, &["apply", "-f", "-"], Some(&rbac)).await;
    let sa = "--as=system:serviceaccount:default:ghostwire-switch";
    #[rustfmt::skip]
    let matrix: &[(&[&str], &str)] = &[
        (&["list", "services"], "yes"),
        (&["watch", "services"], "yes"),
        (&["get", "services"], "no"),
        (&["create", "services"], "no"),
        (&["get", "pods"], "yes"),
        (&["list", "pods"], "yes"),
        (&["watch", "pods"], "yes"),
        (&["patch", "pods"], "no"),
        (&["get", "pods", "--subresource=log"], "no"),
        (&["list", "secrets"], "no"),
        (&["list", "services", "-n", "kube-system"], "no"),
        (&["list", "pods", "--all-namespaces"], "no"),
        (&["get", "/version"], "yes"),
        (&["get", "/metrics"], "no"),
        (&["create", "selfsubjectaccessreviews.authorization.k8s.io"], "yes"),
        (&["create", "tokenreviews.authentication.k8s.io"], "no"),
    ];
    for (args, want) in matrix {
        let mut a = args.to_vec();
        a.push(sa);
        assert_eq!(can_i(&s, &a).await, *want, "{args:?}");
    }
    // The admin kubeconfig is cluster-admin.
    assert_eq!(can_i(&s, &["delete", "nodes"]).await, "yes");
    assert_eq!(can_i(&s, &["*", "*"]).await, "yes");

    // Real requests as the account get the real server's answer.
    ok(&s, &["get", "services", sa], None).await;
    let o = kubectl(&s, &["get", "services", "-n", "kube-system", sa], None).await;
    assert!(!o.ok);
    assert!(
        o.stderr.contains("Error from server (Forbidden): services is forbidden: User \"system:serviceaccount:default:ghostwire-switch\" cannot list resource \"services\" in API group \"\" in the namespace \"kube-system\""),
        "{}",
        o.stderr
    );
    let who = ok(&s, &["auth", "whoami", sa, "-o", "json"], None).await;
    let who: serde_json::Value = serde_json::from_str(&who).unwrap();
    assert_eq!(
        who["status"]["userInfo"],
        json!({"username": "system:serviceaccount:default:ghostwire-switch",
               "groups": ["system:serviceaccounts", "system:serviceaccounts:default", "system:authenticated"]})
    );
    let list = ok(&s, &["auth", "can-i", "--list", sa], None).await;
    let services = list.lines().find(|l| l.starts_with("services ")).unwrap();
    assert!(
        services.contains("[list watch]") || services.contains("[list]"),
        "{list}"
    );

    // Groups by --as-group; view is aggregated from the roles labelled for it, as they come
    // and go.
    ok(
        &s,
        &["apply", "-f", "-"],
        Some("apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: ops-view}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: view}\nsubjects: [{kind: Group, name: ops}]\n"),
    )
    .await;
    let ops = ["--as=olga", "--as-group=ops"];
    let ask = |what: &'static [&'static str]| {
        let mut a = what.to_vec();
        a.extend(ops);
        a
    };
    assert_eq!(can_i(&s, &ask(&["list", "deployments.apps"])).await, "yes");
    assert_eq!(can_i(&s, &ask(&["get", "secrets"])).await, "no");
    assert_eq!(
        can_i(&s, &ask(&["list", "leases.coordination.k8s.io"])).await,
        "no"
    );
    assert_eq!(
        can_i(&s, &["list", "deployments.apps", "--as=olga"]).await,
        "no"
    );
    let reader = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: lease-reader\n  labels: {rbac.authorization.k8s.io/aggregate-to-view: \"true\"}\nrules: [{apiGroups: [coordination.k8s.io], resources: [leases], verbs: [get, list]}]\n";
    ok(&s, &["apply", "-f", "-"], Some(reader)).await;
    assert_eq!(
        can_i(&s, &ask(&["list", "leases.coordination.k8s.io"])).await,
        "yes"
    );
    // …through edit up to admin too.
    let admin_role = ok(&s, &["get", "clusterrole", "admin", "-o", "json"], None).await;
    assert!(admin_role.contains("coordination.k8s.io"), "{admin_role}");
    ok(&s, &["delete", "clusterrole", "lease-reader"], None).await;
    assert_eq!(
        can_i(&s, &ask(&["list", "leases.coordination.k8s.io"])).await,
        "no"
    );

    // Only those allowed to impersonate may: a token of the switch's account may not.
    let client = s.client().await.unwrap();
    let sas: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
        kube::Api::namespaced(client, "default");
    let tr: k8s_openapi::api::authentication::v1::TokenRequest =
        serde_json::from_value(json!({"spec": {}})).unwrap();
    let token = sas
        .create_token_request("ghostwire-switch", &Default::default(), &tr)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;
    let dir = s.kubeconfig_path().parent().unwrap();
    let ca = dir.join("ca.crt");
    std::fs::write(&ca, s.ca_pem()).unwrap();
    let as_token = |extra: &[&str]| {
        let mut c = Command::new("kubectl");
        c.args(["--kubeconfig", "/dev/null", "--server", &s.url()])
            .arg(format!("--certificate-authority={}", ca.display()))
            .arg(format!("--token={token}"))
            .arg("--cache-dir")
            .arg(dir.join("cache-sa"))
            .args(extra)
            .kill_on_drop(true);
        c
    };
    let o = as_token(&["get", "services"]).output().await.unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = as_token(&["get", "services", "--as=lab-admin"])
        .output()
        .await
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("users \"lab-admin\" is forbidden: User \"system:serviceaccount:default:ghostwire-switch\" cannot impersonate resource \"users\" in API group \"\" at the cluster scope"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `kubectl create` sends protobuf bodies: every subcommand, `expose`, `run` and `create
/// token`; what was stored is read back as JSON, field by field (`lab_api::kubectl_create`, which
/// the multi-cluster test runs on each cluster too).
#[tokio::test]
async fn every_kubectl_create_subcommand() {
    let s = lab().await;
    let scratch = s.kubeconfig_path().parent().unwrap().to_path_buf();
    let s = &s;
    lab_api::kubectl_create::every_create_subcommand(
        |args, stdin| async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let o = kubectl(s, &args, stdin.as_deref()).await;
            (o.ok, o.stdout, o.stderr)
        },
        &scratch,
    )
    .await
    .unwrap();
}
