//! Events through the shared recorder, read back with the real `kubectl` (get events, describe)
//! and the official Python client: one Event per distinct event, repeats counted.

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use lab_api::events::{ObjectRef, Recorder};
use lab_api::{Options, Server};
use serde_json::json;

async fn kubectl(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let out = tokio::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .await
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn repeated_events_are_counted_and_shown_by_kubectl_and_python() {
    let server = Server::start(Options::default()).await.unwrap();
    let client = server.client().await.unwrap();
    let pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "web", "image": "busybox"}]}}))
    .unwrap();
    let pod = Api::<Pod>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let obj = ObjectRef::from_object(&serde_json::to_value(&pod).unwrap());
    let kubelet = Recorder::new(client.clone(), "kubelet", Some("lab-node"));
    let c = obj.clone().with_field_path("spec.containers{web}");
    kubelet.normal(&c, "Started", "Started container web");
    for _ in 0..3 {
        kubelet.warning(
            &c,
            "BackOff",
            "Back-off restarting failed container web in pod web_default(x)",
        );
    }
    Recorder::new(client.clone(), "default-scheduler", None).normal(
        &obj,
        "Scheduled",
        "Successfully assigned default/web to lab-node",
    );
    kubelet.flush().await;
    // The scheduler's recorder is another task: wait (bounded) until its event is there.
    let kc = server.kubeconfig_path().to_path_buf();
    let mut out = String::new();
    for _ in 0..600 {
        out = kubectl(&kc, &["get", "events"]).await;
        if out.contains("Scheduled") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let header = out.lines().next().unwrap_or_default();
    for col in ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"] {
        assert!(header.contains(col), "{out}");
    }
    let backoff: Vec<&str> = out.lines().filter(|l| l.contains("BackOff")).collect();
    assert_eq!(backoff.len(), 1, "one line for three repeats: {out}");
    assert!(backoff[0].contains("(x3 over"), "{out}");
    assert!(backoff[0].contains("pod/web"), "{out}");

    let describe = kubectl(&kc, &["describe", "pod", "web"]).await;
    let events = describe.split("Events:").nth(1).unwrap_or_default();
    assert!(events.contains("default-scheduler"), "{describe}");
    assert!(
        events
            .lines()
            .any(|l| l.contains("Warning") && l.contains("BackOff") && l.contains("(x3 over")),
        "{describe}"
    );
    assert!(
        events
            .lines()
            .any(|l| l.contains("Normal") && l.contains("Started") && l.contains("kubelet")),
        "{describe}"
    );

    // The official Python client (PyPI `kubernetes`) reads the same Events.
    let script = r#"
import sys
from kubernetes import client, config
config.load_kube_config(config_file=sys.argv[1])
evs = client.CoreV1Api().list_namespaced_event("default", field_selector="involvedObject.name=web,reason=BackOff").items
print(len(evs), evs[0].count, evs[0].type, evs[0].source.component, evs[0].involved_object.field_path)
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", script])
        .arg(&kc)
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1 3 Warning kubelet spec.containers{web}",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.shutdown().await;
}
