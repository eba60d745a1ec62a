//! Server-side apply with field ownership: the real `kubectl apply --server-side`, kube-rs'
//! `Patch::Apply`, and a controller that owns `replicas` through ordinary updates, on one
//! Deployment. List-map merges (containers by name, ports by containerPort+protocol) make
//! last-writer-wins fail.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use lab_api::{Options, RunningServer, Server};
use serde_json::{Value, json};
use std::process::Stdio;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

async fn kubectl(s: &RunningServer, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let cache = s.kubeconfig_path().parent().unwrap().join("cache");
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(s.kubeconfig_path())
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("kubectl runs");
    let mut input = child.stdin.take().unwrap();
    if let Some(t) = stdin {
        input.write_all(t.as_bytes()).await.unwrap();
    }
    drop(input);
    let o = child.wait_with_output().await.unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

fn manifest(replicas: Option<u32>, image: &str) -> String {
    let replicas = replicas.map_or(String::new(), |r| format!("  replicas: {r}\n"));
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {{app: web}}
spec:
{replicas}  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: app
        image: {image}
        ports: [{{containerPort: 80}}]
"
    )
}

fn entry<'a>(d: &'a Value, manager: &str) -> Option<&'a Value> {
    d["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager)
}

async fn get(api: &Api<Deployment>) -> Value {
    serde_json::to_value(api.get("web").await.unwrap()).unwrap()
}

#[tokio::test]
async fn kubectl_kube_rs_and_a_controller_share_a_deployment() {
    let s = Server::start(Options::default()).await.unwrap();
    let client = s.client().await.unwrap();
    let api: Api<Deployment> = Api::namespaced(client, "default");

    // kubectl applies; its entry is exactly the fields of its configuration.
    let (ok, out) = kubectl(
        &s,
        &["apply", "--server-side", "-f", "-"],
        Some(&manifest(Some(2), "nginx:1")),
    )
    .await;
    assert!(ok, "{out}");
    assert!(
        out.contains("deployment.apps/web serverside-applied"),
        "{out}"
    );
    let d = get(&api).await;
    let k = entry(&d, "kubectl").expect("kubectl's entry");
    assert_eq!(k["operation"], "Apply");
    assert_eq!(k["apiVersion"], "apps/v1");
    assert_eq!(
        k["fieldsV1"],
        json!({
            "f:metadata": {"f:labels": {"f:app": {}}},
            "f:spec": {
                "f:replicas": {}, "f:selector": {},
                "f:template": {"f:metadata": {"f:labels": {"f:app": {}}}, "f:spec": {"f:containers": {
                    "k:{\"name\":\"app\"}": {".": {}, "f:image": {}, "f:name": {}, "f:ports": {
                        "k:{\"containerPort\":80,\"protocol\":\"TCP\"}": {".": {}, "f:containerPort": {}}
                    }}
                }}}
            }
        })
    );

    // kube-rs applies a sidecar and a metrics port on `app`, naming only those.
    let partial = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [
            {"name": "app", "ports": [{"containerPort": 9090, "name": "metrics"}]},
            {"name": "proxy", "image": "envoy:1"}
        ]}}}
    });
    api.patch(
        "web",
        &PatchParams::apply("injector"),
        &Patch::Apply(&partial),
    )
    .await
    .unwrap();
    let d = get(&api).await;
    let c = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(c[0]["name"], "app");
    assert_eq!(
        c[0]["image"], "nginx:1",
        "kube-rs' apply dropped kubectl's image"
    );
    let ports: Vec<&Value> = c[0]["ports"].as_array().unwrap().iter().collect();
    assert_eq!(ports.len(), 2, "{ports:?}");
    assert_eq!(c[1]["name"], "proxy");
    assert_eq!(entry(&d, "injector").unwrap()["operation"], "Apply");

    // A controller scales with an ordinary patch: it takes `replicas` over.
    api.patch(
        "web",
        &PatchParams {
            field_manager: Some("autoscaler".into()),
            ..Default::default()
        },
        &Patch::Merge(json!({"spec": {"replicas": 5}})),
    )
    .await
    .unwrap();
    let d = get(&api).await;
    let a = entry(&d, "autoscaler").expect("the controller's entry");
    assert_eq!(a["operation"], "Update");
    assert_eq!(a["fieldsV1"], json!({"f:spec": {"f:replicas": {}}}));
    assert!(
        entry(&d, "kubectl").unwrap()["fieldsV1"]["f:spec"]
            .get("f:replicas")
            .is_none()
    );

    // kubectl re-applying replicas: 2 conflicts with the controller.
    let (ok, out) = kubectl(
        &s,
        &["apply", "--server-side", "-f", "-"],
        Some(&manifest(Some(2), "nginx:2")),
    )
    .await;
    assert!(!ok);
    assert!(
        out.contains(
            "Apply failed with 1 conflict: conflict with \"autoscaler\" using apps/v1: .spec.replicas"
        ),
        "{out}"
    );
    assert_eq!(
        get(&api).await["spec"]["replicas"],
        5,
        "a conflict changes nothing"
    );
    // The same conflict through kube-rs is a 409.
    let cfg: Value = serde_saphyr::from_str(&manifest(Some(3), "nginx:1")).unwrap();
    match api
        .patch("web", &PatchParams::apply("kubectl"), &Patch::Apply(&cfg))
        .await
    {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 409);
            assert_eq!(e.reason, "Conflict");
        }
        other => panic!("expected a conflict, got {other:?}"),
    }

    // Without replicas in its configuration kubectl no longer competes for it.
    let (ok, out) = kubectl(
        &s,
        &["apply", "--server-side", "-f", "-"],
        Some(&manifest(None, "nginx:2")),
    )
    .await;
    assert!(ok, "{out}");
    let d = get(&api).await;
    assert_eq!(d["spec"]["replicas"], 5);
    let c = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(c[0]["image"], "nginx:2");
    assert_eq!(c[0]["ports"].as_array().unwrap().len(), 2);
    assert_eq!(c[1]["name"], "proxy", "kube-rs' container is kept");

    // --force-conflicts takes replicas back; the controller's entry owns nothing and goes.
    let (ok, out) = kubectl(
        &s,
        &["apply", "--server-side", "--force-conflicts", "-f", "-"],
        Some(&manifest(Some(2), "nginx:2")),
    )
    .await;
    assert!(ok, "{out}");
    let d = get(&api).await;
    assert_eq!(d["spec"]["replicas"], 2);
    assert!(
        entry(&d, "autoscaler").is_none(),
        "{}",
        d["metadata"]["managedFields"]
    );

    // Ordinary kubectl writes are recorded as Update entries, and keep the others.
    let (ok, out) = kubectl(&s, &["label", "deployment", "web", "tier=front"], None).await;
    assert!(ok, "{out}");
    let d = get(&api).await;
    let l = entry(&d, "kubectl-label").expect("kubectl label's entry");
    assert_eq!(l["operation"], "Update");
    assert_eq!(
        l["fieldsV1"],
        json!({"f:metadata": {"f:labels": {"f:tier": {}}}})
    );
    assert!(entry(&d, "kubectl").is_some() && entry(&d, "injector").is_some());

    // The injector stops applying its sidecar: it goes, as no one else owns it.
    let only_port = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
        "spec": {"template": {"spec": {"containers": [
            {"name": "app", "ports": [{"containerPort": 9090, "name": "metrics"}]}
        ]}}}
    });
    api.patch(
        "web",
        &PatchParams::apply("injector"),
        &Patch::Apply(&only_port),
    )
    .await
    .unwrap();
    let d = get(&api).await;
    let c = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0]["ports"].as_array().unwrap().len(), 2);

    // kubectl create records its own Update entry.
    let (ok, out) = kubectl(
        &s,
        &["create", "configmap", "cm", "--from-literal=a=1"],
        None,
    )
    .await;
    assert!(ok, "{out}");
    let (ok, out) = kubectl(
        &s,
        &[
            "get",
            "configmap",
            "cm",
            "-o",
            "json",
            "--show-managed-fields",
        ],
        None,
    )
    .await;
    assert!(ok, "{out}");
    let cm: Value = serde_json::from_str(&out).unwrap();
    let e = entry(&cm, "kubectl-create").expect("kubectl create's entry");
    assert_eq!(e["operation"], "Update");
    assert_eq!(e["fieldsV1"], json!({"f:data": {".": {}, "f:a": {}}}));
}
