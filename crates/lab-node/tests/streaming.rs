//! `kubectl exec` (WebSocket v5.channel.k8s.io), `kubectl cp` through it, and the official
//! Python client's exec (v4.channel.k8s.io) against a running Pod.

mod common;

use common::*;
use serde_json::json;

async fn run(cmd: &mut tokio::process::Command, input: &[u8]) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = cmd
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .expect("in time")
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_exec_cp_and_the_python_client() {
    let cluster = cluster("exec").await;
    let client = cluster.client().await.unwrap();
    apply(
        &client,
        "default",
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "box"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "main", "image": "busybox", "command": ["sleep", "1000000"],
                "env": [{"name": "GREETING", "value": "hi-from-env"}],
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                "volumes": [{"name": "data", "emptyDir": {}}]}
        }),
    )
    .await;
    let pod = wait_pod(&client, "default", "box", "Ready", ready).await;
    let ip = pod.status.unwrap().pod_ip.unwrap();
    let kc = cluster.kubeconfig_path().display().to_string();
    let kubectl = || {
        let mut c = tokio::process::Command::new("kubectl");
        c.args(["--kubeconfig", &kc]);
        c
    };

    // A command: stdout, stderr, the container's env, namespaces, and its exit code.
    let (code, out, err) = run(
        kubectl().args([
            "exec",
            "box",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; echo $GREETING; hostname; ip -4 -o addr show eth0; exit 3",
        ]),
        b"",
    )
    .await;
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.starts_with("out\nhi-from-env\nbox\n"), "{out}");
    assert!(out.contains(&format!("inet {ip}/")), "{out}");
    assert!(err.contains("err"), "{err}");
    // -i: stdin reaches the command and its end is seen.
    let (code, out, err) = run(
        kubectl().args(["exec", "-i", "box", "--", "sh", "-c", "cat; echo done"]),
        b"hello through stdin\n",
    )
    .await;
    assert_eq!(
        (code, out.as_str()),
        (0, "hello through stdin\ndone\n"),
        "{err}"
    );
    // -t: a terminal, its size from the client (kubectl runs in one made by `script`).
    let (code, out, err) = run(
        tokio::process::Command::new("script").args([
            "-qec",
            &format!("stty cols 91 rows 37; kubectl --kubeconfig {kc} exec -i -t box -- sh -c 'tty; stty size; echo $TERM'"),
            "/dev/null",
        ]),
        b"",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("37 91"), "{out}");
    assert!(out.contains("xterm"), "{out}");
    // A container that does not exist.
    let (code, _, err) = run(
        kubectl().args(["exec", "box", "-c", "nope", "--", "true"]),
        b"",
    )
    .await;
    assert_ne!(code, 0);
    assert!(
        err.contains("container nope is not valid for pod box"),
        "{err}"
    );

    // kubectl cp, both ways (tar through exec).
    let dir = std::env::temp_dir().join(format!("gw-cp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("in.txt");
    std::fs::write(&src, "copied in\n").unwrap();
    let (code, out, err) = run(
        kubectl().args(["cp", src.to_str().unwrap(), "box:/data/in.txt"]),
        b"",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = run(
        kubectl().args(["exec", "box", "--", "cat", "/data/in.txt"]),
        b"",
    )
    .await;
    assert_eq!(out, "copied in\n");
    let back = dir.join("back.txt");
    let (code, out, err) = run(
        kubectl().args(["cp", "box:/data/in.txt", back.to_str().unwrap()]),
        b"",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(std::fs::read_to_string(&back).unwrap(), "copied in\n");
    let _ = std::fs::remove_dir_all(&dir);

    // The official Python client (v4.channel.k8s.io).
    let script = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import stream
config.load_kube_config(sys.argv[1])
api = client.CoreV1Api()
resp = stream(api.connect_get_namespaced_pod_exec, "box", "default",
              command=["sh", "-c", "echo py-$GREETING; exit 4"],
              stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
resp.run_forever(timeout=30)
print(resp.read_stdout().strip(), resp.returncode)
"#;
    let (code, out, err) = run(
        tokio::process::Command::new("python3").args(["-c", script, &kc]),
        b"",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "py-hi-from-env 4", "{err}");
}
