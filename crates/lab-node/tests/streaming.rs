//! The streaming subresources with real clients: `kubectl exec` (WebSocket v5.channel.k8s.io,
//! and SPDY/3.1 when told to), `kubectl cp` through it, `kubectl attach`, `run -i`/`-it` and
//! `debug -it`, `kubectl port-forward` (SPDY tunnelled in WebSocket, and plain SPDY/3.1), and the
//! official Python client's exec and port-forward (v4.channel.k8s.io).

mod common;

use common::*;
use serde_json::json;

/// Runs a shell command line on a terminal `script` makes, `cols`×`rows`, fed `input`.
async fn on_terminal(cols: u16, rows: u16, line: &str, input: &[u8]) -> (i32, String, String) {
    let line = format!("stty cols {cols} rows {rows}; {line}");
    run(
        tokio::process::Command::new("script").args(["-qec", &line, "/dev/null"]),
        input,
    )
    .await
}

/// kubectl's verbose log says so when its WebSocket attempt failed and it fell back to SPDY.
fn fell_back(stderr: &str) -> bool {
    stderr.to_lowercase().contains("fallback")
}

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
    // A container with a security context: exec'd commands get it too.
    apply(
        &client,
        "default",
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "locked"},
            "spec": {"terminationGracePeriodSeconds": 1,
                "securityContext": {"runAsGroup": 3000},
                "containers": [{
                "name": "main", "image": "busybox", "command": ["sleep", "1000000"],
                "securityContext": {"runAsUser": 1000,
                    "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}]}
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
            "-v=4",
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
    assert!(!fell_back(&err), "WebSocket exec worked: {err}");
    // The same over SPDY/3.1 (kubectl before 1.30, and its fallback), stdin included.
    let (code, out, err) = run(
        kubectl()
            .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
            .args([
                "exec",
                "-i",
                "box",
                "--",
                "sh",
                "-c",
                "cat; echo err >&2; echo $GREETING; exit 5",
            ]),
        b"spdy stdin\n",
    )
    .await;
    assert_eq!(
        (code, out.as_str(), err.as_str()),
        (
            5,
            "spdy stdin\nhi-from-env\n",
            "err\ncommand terminated with exit code 5\n"
        )
    );
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
    let (code, out, err) = on_terminal(
        91,
        37,
        &format!("kubectl --kubeconfig {kc} exec -i -t box -- sh -c 'tty; stty size; echo $TERM'"),
        b"",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("/dev/pts/"), "{out}");
    assert!(out.contains("37 91"), "{out}");
    assert!(out.contains("xterm"), "{out}");
    // -t over SPDY: the resize stream carries the size.
    let (code, out, err) = on_terminal(
        83,
        29,
        &format!("KUBECTL_REMOTE_COMMAND_WEBSOCKETS=false kubectl --kubeconfig {kc} exec -i -t box -- sh -c 'tty; stty size'"),
        b"",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("/dev/pts/") && out.contains("29 83"), "{out}");
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

    // The security context: user, group, and the capability bounding set (bit 10 =
    // CAP_NET_BIND_SERVICE, alone), as the container's own process has.
    wait_pod(&client, "default", "locked", "Ready", ready).await;
    let script = "id -u; id -g; grep CapBnd /proc/self/status";
    let (code, out, err) = run(
        kubectl().args(["exec", "locked", "--", "sh", "-c", script]),
        b"",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines[..2], ["1000", "3000"], "{out}");
    assert_eq!(lines[2], "CapBnd:\t0000000000000400", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_attach_run_and_debug() {
    let cluster = cluster("attach").await;
    let client = cluster.client().await.unwrap();
    let kc = cluster.kubeconfig_path().display().to_string();
    let kubectl = || {
        let mut c = tokio::process::Command::new("kubectl");
        c.args(["--kubeconfig", &kc]);
        c
    };
    // A container that keeps its stdin (closed after the first attach: stdinOnce).
    apply(
        &client,
        "default",
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "talker"},
            "spec": {"terminationGracePeriodSeconds": 1, "restartPolicy": "Never",
                "containers": [{
                "name": "main", "image": "busybox", "stdin": true, "stdinOnce": true,
                "command": ["sh", "-c", "read line; echo \"got $line\"; cat; echo bye"]}]}
        }),
    )
    .await;
    apply(
        &client,
        "default",
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "target"},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "main", "image": "busybox", "command": ["sleep", "1000000"]}]}
        }),
    )
    .await;
    wait_pod(&client, "default", "talker", "Ready", ready).await;
    let (code, out, err) = run(
        kubectl().args(["-v=4", "attach", "-i", "talker"]),
        b"hello\nrest\n",
    )
    .await;
    assert_eq!((code, out.as_str()), (0, "got hello\nrest\nbye\n"), "{err}");
    assert!(!fell_back(&err), "{err}");
    // Its stdin closed when the attach ended: `cat` saw the end and the container exited.
    wait_pod(&client, "default", "talker", "Succeeded", |p| {
        phase(p) == "Succeeded"
    })
    .await;

    // The Python client attaches too (v4.channel.k8s.io): stdin in, the container's output out.
    apply(
        &client,
        "default",
        json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "py"},
            "spec": {"terminationGracePeriodSeconds": 1, "restartPolicy": "Never",
                "containers": [{
                "name": "main", "image": "busybox", "stdin": true,
                "command": ["sh", "-c", "read line; echo \"py got $line\""]}]}
        }),
    )
    .await;
    wait_pod(&client, "default", "py", "Ready", ready).await;
    let script = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import stream
config.load_kube_config(sys.argv[1])
api = client.CoreV1Api()
resp = stream(api.connect_get_namespaced_pod_attach, "py", "default",
              stdin=True, stdout=True, stderr=True, tty=False, _preload_content=False)
resp.write_stdin("from-python\n")
out = ""
while resp.is_open():
    resp.update(timeout=5)
    out += resp.read_stdout()
print(out.strip())
"#;
    let (code, out, err) = run(
        tokio::process::Command::new("python3").args(["-c", script, &kc]),
        b"",
    )
    .await;
    assert_eq!((code, out.trim()), (0, "py got from-python"), "{err}");

    // `kubectl run -i --rm`: creates the Pod, attaches, returns the container's exit code and
    // deletes the Pod; once over WebSocket, once over SPDY/3.1.
    for (name, websockets) in [("runner", "true"), ("runner-spdy", "false")] {
        let (code, out, err) = run(
            kubectl()
                .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", websockets)
                .args([
                    "run",
                    "-i",
                    "--rm",
                    "--restart=Never",
                    name,
                    "--image=busybox",
                    "--",
                    "sh",
                    "-c",
                    "read x; echo \"ran $x\"; exit 7",
                ]),
            b"abc\n",
        )
        .await;
        assert_eq!(code, 7, "{out}{err}");
        assert!(out.contains("ran abc\n"), "{out}{err}");
        wait_gone(&client, "default", name).await;
    }

    // `kubectl run -it` and `kubectl debug -it` on a terminal (`script` makes one): the
    // container's terminal, its size from the client, its input from kubectl's. (kubectl sends
    // the size one larger first, then the real one, while the input may already be read: the
    // command waits, a bounded while, for the real size.)
    let sized = |rows: u16, cols: u16| {
        format!(
            "for i in $(seq 50); do [ \"$(stty size)\" = \"{rows} {cols}\" ] && break; sleep 0.1; done; echo size=$(stty size)"
        )
    };
    let (code, out, err) = on_terminal(
        100,
        40,
        &format!(
            "kubectl --kubeconfig {kc} run -it --rm --restart=Never tty1 --image=busybox \
             -- sh -c 'read x; echo run-$x; tty; {}'",
            sized(40, 100)
        ),
        b"hey\n",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("run-hey"), "{out}");
    assert!(
        out.contains("/dev/pts/") && out.contains("size=40 100"),
        "{out}"
    );
    let (code, out, err) = on_terminal(
        90,
        30,
        &format!(
            "kubectl --kubeconfig {kc} debug -it target --image=busybox --container=dbg \
             -- sh -c 'read x; echo dbg-$x; {}; hostname'",
            sized(30, 90)
        ),
        b"yo\n",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("dbg-yo"), "{out}");
    assert!(
        out.contains("size=30 90") && out.contains("target"),
        "{out}"
    );
}

/// Reads kubectl port-forward's "Forwarding from 127.0.0.1:PORT -> …" and returns PORT.
async fn forwarded_port(child: &mut tokio::process::Child) -> u16 {
    use tokio::io::AsyncBufReadExt;
    let stdout = child.stdout.take().expect("piped");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(TIMEOUT, lines.next_line())
        .await
        .expect("kubectl port-forward starts in time")
        .unwrap()
        .expect("a line");
    // Keep reading so that kubectl never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    line.strip_prefix("Forwarding from 127.0.0.1:")
        .and_then(|r| r.split(' ').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line {line:?}"))
}

/// GET /hello.txt over HTTP/1.0 through a local port.
async fn fetch(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(b"GET /hello.txt HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tokio::time::timeout(TIMEOUT, s.read_to_string(&mut body))
        .await
        .expect("answer in time")
        .unwrap();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_port_forward_and_the_python_client() {
    let cluster = cluster("portfwd").await;
    let client = cluster.client().await.unwrap();
    let kc = cluster.kubeconfig_path().display().to_string();
    // A server on the Pod's loopback only: reachable through its network namespace alone.
    let ready_check = "import socket; socket.create_connection(('127.0.0.1', 8080))";
    apply(
        &client,
        "default",
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
                "name": "main", "image": "busybox",
                "command": ["sh", "-c", "echo pod-says-hi > /data/hello.txt; exec python3 -m http.server 8080 --bind 127.0.0.1 --directory /data"],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"exec": {"command": ["python3", "-c", ready_check]}, "periodSeconds": 1},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
                "volumes": [{"name": "data", "emptyDir": {}}]}
        }),
    )
    .await;
    let svc: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(client.clone(), "default");
    svc.create(
        &Default::default(),
        &serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"},
                     "ports": [{"port": 80, "targetPort": "http"}]}
        }))
        .unwrap(),
    )
    .await
    .unwrap();
    wait_pod(&client, "default", "web", "Ready", ready).await;

    // kubectl: pod/NAME and svc/NAME (its named target port), WebSocket-tunnelled SPDY by
    // default, plain SPDY/3.1 when told; two connections through each.
    for (target, websockets) in [
        ("pod/web", "true"),
        ("svc/web", "true"),
        ("pod/web", "false"),
    ] {
        let remote = if target.starts_with("svc") {
            ":80"
        } else {
            ":8080"
        };
        let mut child = tokio::process::Command::new("kubectl")
            .args(["--kubeconfig", &kc, "-v=4", "port-forward", target, remote])
            .env("KUBECTL_PORT_FORWARD_WEBSOCKETS", websockets)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let port = forwarded_port(&mut child).await;
        for _ in 0..2 {
            let body = fetch(port).await;
            assert!(body.starts_with("HTTP/1.0 200"), "{target}: {body}");
            assert!(body.ends_with("\r\n\r\npod-says-hi\n"), "{target}: {body}");
        }
        child.start_kill().unwrap();
        let out = child.wait_with_output().await.unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!fell_back(&err), "{target}: {err}");
    }

    // The Python client (v4.channel.k8s.io over WebSocket): a forwarded port, and one where
    // nothing listens, whose error arrives on the port's error channel.
    let script = r#"
import sys
from kubernetes import client, config
from kubernetes.stream import portforward
config.load_kube_config(sys.argv[1])
api = client.CoreV1Api()
pf = portforward(api.connect_get_namespaced_pod_portforward, "web", "default", ports="8080")
s = pf.socket(8080)
s.setblocking(True)
s.sendall(b"GET /hello.txt HTTP/1.0\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.split(b"\r\n\r\n", 1)[1].decode().strip())
pf = portforward(api.connect_get_namespaced_pod_portforward, "web", "default", ports="9999")
s = pf.socket(9999)
s.setblocking(True)
while s.recv(4096):
    pass
print(pf.error(9999))
"#;
    let (code, out, err) = run(
        tokio::process::Command::new("python3").args(["-c", script, &kc]),
        b"",
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("pod-says-hi"), "{out}{err}");
    let error = lines.next().unwrap_or_default();
    assert!(
        error.starts_with("error forwarding port 9999 to pod web") && error.contains("refused"),
        "{out}{err}"
    );
}
