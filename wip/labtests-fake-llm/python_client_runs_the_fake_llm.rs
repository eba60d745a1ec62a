
/// The official Python `kubernetes` client runs the `lab/fake-llm` image: it creates the Pod
/// with an HTTP readiness probe, waits for Ready through a watch, then asks a chat completion
/// (OpenAI, port 8080) and an Ollama chat (port 11434) through its own port-forward.
const PY_FAKE_LLM: &str = r#"
import json, sys
from kubernetes import client, config, watch
from kubernetes.stream import portforward
config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
core.create_namespaced_pod("default", {"metadata": {"name": "llm"}, "spec": {
    "terminationGracePeriodSeconds": 1,
    "containers": [{"name": "llm", "image": "lab/fake-llm",
        "ports": [{"name": "openai", "containerPort": 8080}, {"name": "ollama", "containerPort": 11434}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "openai"}, "periodSeconds": 1}}]}})
ready = False
w = watch.Watch()
for ev in w.stream(core.list_namespaced_pod, "default", field_selector="metadata.name=llm",
                   timeout_seconds=90):
    if any(c.type == "Ready" and c.status == "True" for c in (ev["object"].status.conditions or [])):
        ready = True
        w.stop()
def post(port, path, body):
    pf = portforward(core.connect_get_namespaced_pod_portforward, "llm", "default", ports=str(port))
    s = pf.socket(port)
    s.setblocking(True)
    data = json.dumps(body).encode()
    s.sendall(b"POST %s HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
              % (path.encode(), len(data), data))
    got = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    head, body = got.split(b"\r\n\r\n", 1)
    return head.split(b" ")[1].decode(), json.loads(body)
code, chat = post(8080, "/v1/chat/completions",
                  {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello from python"}]})
ocode, ollama = post(11434, "/api/chat", {"model": "llama3", "stream": False,
                     "messages": [{"role": "user", "content": "hi ollama"}]})
print(json.dumps({"ready": ready,
                  "openai": [code, chat["model"], chat["choices"][0]["message"]["content"]],
                  "ollama": [ocode, ollama["model"], ollama["message"]["content"]]}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_runs_the_fake_llm() {
    let c = cluster("pyllm").await;
    let out = tokio::process::Command::new("python3")
        .args(["-c", PY_FAKE_LLM])
        .arg(c.kubeconfig_path())
        .output()
        .await
        .expect("python3 runs");
    let got: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(
        got,
        serde_json::json!({"ready": true,
                           "openai": ["200", "gpt-4o", "user: hello from python"],
                           "ollama": ["200", "llama3", "user: hi ollama"]}),
        "{got}"
    );
    c.shutdown(Duration::from_secs(1)).await;
}
