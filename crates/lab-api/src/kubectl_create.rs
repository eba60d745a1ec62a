//! Every `kubectl create` subcommand, `kubectl expose`, `kubectl run` and `kubectl create token`
//! against a lab API, with what was stored read back field by field: the check the lab-api
//! tests run on one server and the multi-cluster tests on each cluster of a lab.
//!
//! kubectl sends these bodies as protobuf, so this is the protobuf decoding's end-to-end check:
//! IntOrString, Quantity, nested lists and the server-owned metadata must come back as JSON
//! exactly as a real API server stores them.
//!
//! The caller says how to run kubectl (which kubeconfig and context): a function from the
//! arguments and an optional stdin to `(succeeded, stdout, stderr)`.

use serde_json::{Value, json};
use std::future::Future;
use std::path::Path;

/// What one kubectl run gave: whether it succeeded, its stdout and its stderr.
pub type KubectlOutput = (bool, String, String);

/// Runs the check in the namespace `default` (and cluster-scoped objects with fixed names, so
/// once per cluster); `scratch` is a directory for the TLS secret's certificate and key. The
/// error says which command or which field differed.
pub async fn every_create_subcommand<K, F>(kubectl: K, scratch: &Path) -> Result<(), String>
where
    K: Fn(Vec<String>, Option<String>) -> F,
    F: Future<Output = KubectlOutput>,
{
    let run = |args: &[&str], stdin: Option<&str>| {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let shown = args.join(" ");
        let fut = kubectl(args, stdin.map(String::from));
        async move {
            match fut.await {
                (true, out, _) => Ok(out),
                (false, out, err) => Err(format!("kubectl {shown} failed: {out}{err}")),
            }
        }
    };
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = rcgen::CertificateParams::new(vec!["shop.example".into()])
        .and_then(|p| p.self_signed(&key))
        .map_err(|e| e.to_string())?;
    let (crt_path, key_path) = (scratch.join("tls.crt"), scratch.join("tls.key"));
    for (path, pem) in [(&crt_path, cert.pem()), (&key_path, key.serialize_pem())] {
        atomic_file::write(path, pem, 0o600).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let crt = format!("--cert={}", crt_path.display());
    let pem = format!("--key={}", key_path.display());
    #[rustfmt::skip]
    let creates: &[&[&str]] = &[
        &["create", "namespace", "shop"],
        &["create", "configmap", "cm", "--from-literal=a=1", "--from-literal=b=two"],
        &["create", "secret", "generic", "gen", "--from-literal=k=v"],
        &["create", "secret", "tls", "tls", &crt, &pem],
        &["create", "secret", "docker-registry", "reg", "--docker-server=r.example", "--docker-username=u", "--docker-password=p"],
        &["create", "serviceaccount", "robot"],
        &["create", "deployment", "web", "--image=nginx:1.27", "--replicas=2", "--port=80"],
        &["create", "service", "clusterip", "cip", "--tcp=80:8080"],
        &["create", "service", "nodeport", "np", "--tcp=81:8081"],
        &["create", "service", "loadbalancer", "lb", "--tcp=82:http"],
        &["create", "service", "externalname", "ext", "--external-name=db.example"],
        &["create", "job", "once", "--image=busybox", "--", "echo", "hi"],
        &["create", "cronjob", "tick", "--image=busybox", "--schedule=*/5 * * * *", "--", "date"],
        &["create", "ingress", "ing", "--rule=shop.example/api*=cip:8080"],
        &["create", "poddisruptionbudget", "pdb", "--selector=app=web", "--min-available=1"],
        &["create", "priorityclass", "high", "--value=1000", "--description=important"],
        &["create", "quota", "q", "--hard=cpu=1500m,memory=1Gi,pods=4"],
        &["create", "role", "reader", "--verb=get,list", "--resource=pods,deployments.apps"],
        &["create", "rolebinding", "robot-reads", "--role=reader", "--serviceaccount=default:robot"],
        &["create", "clusterrole", "health", "--verb=get", "--non-resource-url=/healthz"],
        &["create", "clusterrolebinding", "bob-health", "--clusterrole=health", "--user=bob"],
        &["expose", "deployment", "web", "--name=web-svc", "--port=80", "--target-port=8080"],
        &["run", "one", "--image=busybox", "--labels=app=one", "--env=A=1", "--", "sleep", "10"],
    ];
    for args in creates {
        // The namespace first: what follows `--` is the container's command.
        let mut a = vec!["-n", "default"];
        a.extend_from_slice(args);
        run(&a, None).await?;
    }

    // One `get` for everything (a kubectl process is most of a command's time).
    #[rustfmt::skip]
    let objects = [
        "configmap/cm", "secret/gen", "secret/tls", "secret/reg", "deployment/web",
        "service/cip", "service/lb", "service/np", "service/ext", "service/web-svc", "job/once",
        "cronjob/tick", "ingress/ing", "pdb/pdb", "priorityclass/high", "quota/q", "role/reader",
        "rolebinding/robot-reads", "clusterrole/health", "pod/one",
    ];
    let mut args = vec!["get", "-n", "default", "-o", "json"];
    args.extend(objects);
    let list: Value = serde_json::from_str(&run(&args, None).await?)
        .map_err(|e| format!("kubectl get -o json: {e}"))?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    if items.len() != objects.len() {
        return Err(format!(
            "kubectl get gave {} objects for {} names",
            items.len(),
            objects.len()
        ));
    }
    let got = |name: &str| &items[objects.iter().position(|o| *o == name).expect("listed")];
    let tls_crt_len = got("secret/tls")["data"]["tls.crt"]
        .as_str()
        .map_or(0, str::len);
    #[rustfmt::skip]
    let expected: Vec<(&str, &str, Value)> = vec![
        ("configmap/cm", "/data", json!({"a": "1", "b": "two"})),
        ("secret/gen", "/data", json!({"k": "dg=="})),
        ("secret/tls", "/type", json!("kubernetes.io/tls")),
        ("secret/reg", "/type", json!("kubernetes.io/dockerconfigjson")),
        ("deployment/web", "/spec/replicas", json!(2)),
        ("deployment/web", "/spec/template/spec/containers/0/ports/0/containerPort", json!(80)),
        // IntOrString: numbers stay numbers, names stay names.
        ("service/cip", "/spec/ports/0/targetPort", json!(8080)),
        ("service/lb", "/spec/ports/0/targetPort", json!("http")),
        ("service/np", "/spec/type", json!("NodePort")),
        ("service/ext", "/spec/externalName", json!("db.example")),
        ("service/web-svc", "/spec/ports/0/targetPort", json!(8080)),
        ("service/web-svc", "/spec/selector", json!({"app": "web"})),
        ("job/once", "/spec/template/spec/containers/0/command", json!(["echo", "hi"])),
        ("cronjob/tick", "/spec/schedule", json!("*/5 * * * *")),
        ("ingress/ing", "/spec/rules/0/http/paths/0/backend/service/port/number", json!(8080)),
        ("pdb/pdb", "/spec/minAvailable", json!(1)),
        ("priorityclass/high", "/value", json!(1000)),
        // Quantities as the client wrote them.
        ("quota/q", "/spec/hard", json!({"cpu": "1500m", "memory": "1Gi", "pods": "4"})),
        ("role/reader", "/rules", json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list"]}])),
        ("rolebinding/robot-reads", "/subjects", json!([{"kind": "ServiceAccount", "name": "robot", "namespace": "default"}])),
        ("clusterrole/health", "/rules", json!([{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}])),
        ("pod/one", "/spec/containers/0/env", json!([{"name": "A", "value": "1"}])),
        ("pod/one", "/spec/containers/0/args", json!(["sleep", "10"])),
    ];
    for (name, pointer, want) in expected {
        let have = got(name).pointer(pointer).cloned().unwrap_or(Value::Null);
        if have != want {
            return Err(format!("{name} {pointer}: stored {have}, sent {want}"));
        }
    }
    if tls_crt_len < 100 {
        return Err(format!(
            "secret/tls /data/tls.crt: {tls_crt_len} bytes stored"
        ));
    }
    // Creation metadata from the server, not from the protobuf (which carries none).
    if !got("pod/one")["metadata"]["creationTimestamp"].is_string() {
        return Err("pod/one has no creationTimestamp".into());
    }

    // `kubectl create token`: a token the API accepts for the account; under ten minutes refused.
    let token = run(
        &[
            "create",
            "token",
            "robot",
            "--duration=10m",
            "-n",
            "default",
        ],
        None,
    )
    .await?;
    let review = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                        "spec": {"token": token.trim()}});
    let out = run(
        &["create", "-f", "-", "-o", "json"],
        Some(&review.to_string()),
    )
    .await?;
    let out: Value = serde_json::from_str(&out).map_err(|e| format!("TokenReview: {e}"))?;
    if out["status"]["user"]["username"] != "system:serviceaccount:default:robot" {
        return Err(format!("TokenReview of robot's token: {}", out["status"]));
    }
    match run(
        &["create", "token", "robot", "--duration=5m", "-n", "default"],
        None,
    )
    .await
    {
        Err(e) if e.contains("may not specify a duration less than 10 minutes") => Ok(()),
        other => Err(format!("create token --duration=5m: {other:?}")),
    }
}
