//! LLM request rewriting in the lab (issue 17 points 5 and 7): a client Pod with
//! `ghostwire.dev/ai: "true"` and the identity agent attached, the lab's fake OpenAI/Ollama
//! server as a Pod behind a Service. What the client really receives: a non-streaming OpenAI
//! chat with its model overridden, its prompt rewritten and a banned word masked; a streaming
//! Ollama chat whose banned phrase the server sends in separate chunks, masked; a change of the
//! ConfigMap picked up by the same proxy process; a request to another path whose body arrives
//! byte for byte; the opt-in annotation turned off and on again, followed by the same proxy.
//! And the injected path: a Pod with the mesh sidecar (the real injector as the cluster's
//! webhook) and `ghostwire.dev/ai: "true"`, running as deploy/'s `ghostwire-ai` account, whose
//! own requests get its model override and its own ConfigMap's policy.

mod common;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use kube::api::{Api, Patch, PatchParams, PostParams};
use lab_node::scenario::workload_rbac;
use lab_node::scenario::{apply, wait_ready};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::{LAB_TIMEOUT as TIMEOUT, until_lab as until};

/// Answers every POST with what it received: the path, the Content-Encoding and the body.
const MIRROR: &str = r#"
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.reply(b"ok")
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        enc = (self.headers.get("Content-Encoding") or "").encode()
        self.reply(self.path.encode() + b"\n" + enc + b"\n" + body)
    def reply(self, out):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"#;

/// One HTTP/1.1 request from the current network namespace; the status and the body
/// (de-chunked), or an error.
fn post(
    to: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    s.write_all(body).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = dechunk(&body)?;
    }
    Ok((status, body))
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&b[..eol])
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )
        .map_err(|e| e.to_string())?;
        if size == 0 {
            return Ok(out);
        }
        let start = eol + 2;
        out.extend_from_slice(b.get(start..start + size).ok_or("short chunk")?);
        b = &b[start + size + 2..];
    }
}

/// The text of an Ollama NDJSON stream, and its lines.
fn ollama_text(body: &[u8]) -> (String, Vec<String>) {
    let lines: Vec<String> = String::from_utf8_lossy(body)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    let text = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["message"]["content"].as_str().map(str::to_string))
        .collect();
    (text, lines)
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// `ghostwire_proxy_llm_requests_total{api, outcome}` of the mesh proxy whose admin port is
/// `port` (18091: the attached agent's; 4191: the injected sidecar's).
fn metric(pod: &lab_net::Pod, ip: IpAddr, port: u16, api: &str, outcome: &str) -> f64 {
    let text = pod
        .http_get(SocketAddr::new(ip, port), "/metrics")
        .unwrap_or_default();
    common::metric(
        &common::parse_metrics(&text),
        "ghostwire_proxy_llm_requests_total",
        &[("api", api), ("outcome", outcome)],
    )
    .unwrap_or(0.0)
}

fn pod_ip(p: &Pod) -> IpAddr {
    let ip = p.status.as_ref().and_then(|s| s.pod_ip.as_ref());
    ip.expect("a Pod IP").parse().unwrap()
}

/// One request from `pod`'s network namespace (so through its proxy).
fn ask(
    pod: &lab_net::Pod,
    to: SocketAddr,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>), String> {
    pod.netns()
        .run(move || post(to, path, &headers, &body))
        .unwrap()
}

/// A non-streaming OpenAI chat from `pod` to `to`, asked until the answer names `model` (the
/// fake LLM answers with the model it was asked for); the answer.
async fn chat_until(pod: &lab_net::Pod, to: SocketAddr, model: &str, what: &str) -> Value {
    let chat = json!({"model": "gpt-4o", "messages": [
        {"role": "user", "content": "tell a joke about the secret"}]})
    .to_string()
    .into_bytes();
    until(what, || {
        let body = chat.clone();
        async move {
            let ct = vec![("Content-Type", "application/json")];
            let (status, b) = ask(pod, to, "/v1/chat/completions", ct, body).ok()?;
            let v: Value = serde_json::from_slice(&b).ok()?;
            (status == 200 && v["model"] == model).then_some(v)
        }
    })
    .await
}

fn policy(configmap: &str, banned: &[&str]) -> Value {
    let config = json!({
        "request": {"userPromptReplace": [{"orig": "joke", "new": "fact"}]},
        "response": {"bannedWords": banned},
    });
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": configmap},
           "data": {"config": config.to_string()}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ai_pod_requests_are_rewritten_and_answers_filtered() {
    let c = common::target::lab_cluster("ai").await;
    let client = c.client().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(policy("web-ghostwire-ai", &["secret", "rabbit stew"])).unwrap(),
    )
    .await
    .unwrap();
    // The injected path: the injector as the cluster's webhook (Pods labelled app=shop),
    // deploy/'s workload RBAC (the account ghostwire-ai reads the namespace's Pods and
    // ConfigMaps), and that Pod's own policy.
    let _injector = common::injector(&c).await;
    workload_rbac(&client, "default").await.unwrap();
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(policy("meshed-ghostwire-ai", &["secret"])).unwrap(),
    )
    .await
    .unwrap();
    let llm = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "llm", "labels": {"app": "llm"}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "llm",
            "image": "lab/fake-llm", "args": ["--chunk-delay-ms", "20"],
            "ports": [{"name": "openai", "containerPort": 8080}, {"name": "ollama", "containerPort": 11434}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "openai"}, "periodSeconds": 1}}]}});
    let llm_svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "llm"},
        "spec": {"selector": {"app": "llm"}, "ports": [
            {"name": "openai", "port": 8080, "targetPort": "openai"},
            {"name": "ollama", "port": 11434, "targetPort": "ollama"}]}});
    let mirror = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "mirror", "labels": {"app": "mirror"}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "mirror",
            "image": "python:3", "command": ["python3", "-c", MIRROR],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1}}]}});
    let mirror_svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "mirror"},
        "spec": {"selector": {"app": "mirror"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
    let web = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "annotations": {
            "ghostwire.dev/ai": "true", "ghostwire.dev/ai-model": "tiny"}},
        "spec": {"terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "1000000"]}]}});
    for o in [&llm, &llm_svc, &mirror, &mirror_svc, &web] {
        apply(&client, "default", o).await.unwrap();
    }
    let meshed = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "meshed", "labels": {"app": "shop"}, "annotations": {
            "ghostwire.dev/mesh": "true", "ghostwire.dev/ai": "true",
            "ghostwire.dev/ai-model": "small"}},
        "spec": {"serviceAccountName": "ghostwire-ai", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "1000000"]}]}});
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(meshed).unwrap(),
    )
    .await
    .unwrap();
    wait_ready(
        &client,
        "default",
        &["llm", "mirror", "web", "meshed"],
        TIMEOUT,
    )
    .await
    .unwrap();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let cluster_ip =
        |s: Service| -> IpAddr { s.spec.unwrap().cluster_ip.unwrap().parse().unwrap() };
    let llm_ip = cluster_ip(services.get("llm").await.unwrap());
    let mirror_ip = cluster_ip(services.get("mirror").await.unwrap());
    let web_ip = pod_ip(&pods.get("web").await.unwrap());

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ghostwire"))
        .args(["attach", "web", "--reload", "500ms"])
        .env("KUBECONFIG", c.kubeconfig_path())
        .output()
        .unwrap();
    common::assert_ok(&out, "ghostwire attach web");
    let web_ns = c.node().pod_netns("default", "web").unwrap();
    let llm_ns = c.node().pod_netns("default", "llm").unwrap();
    let netns_ino = web_ns
        .netns()
        .run(|| std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino())
        .unwrap();
    let in_web = |to: SocketAddr,
                  path: &'static str,
                  headers: Vec<(&'static str, &'static str)>,
                  body: Vec<u8>| ask(&web_ns, to, path, headers, body);

    // A non-streaming OpenAI chat: the model is the annotation's, "joke" became "fact", the
    // banned word comes back masked.
    let llm_openai = SocketAddr::new(llm_ip, 8080);
    let answer = chat_until(
        &web_ns,
        llm_openai,
        "tiny",
        "a rewritten OpenAI chat through the attached proxy",
    )
    .await;
    assert_eq!(
        answer["choices"][0]["message"]["content"], "user: tell a fact about the ******",
        "{answer}"
    );
    let first = common::proxies(netns_ino);
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(metric(&web_ns, web_ip, 18091, "openai-chat", "rewritten") >= 1.0);

    // A streaming Ollama chat: the server sends "rabbit" and " stew" as separate chunks (seen
    // directly, without the proxy); the client gets the phrase masked.
    let stream_req = json!({"model": "llama3", "messages": [
        {"role": "user", "content": "cook rabbit stew tonight"}]})
    .to_string()
    .into_bytes();
    let ollama = SocketAddr::new(llm_ip, 11434);
    let pod_ollama = SocketAddr::new(pod_ip(&pods.get("llm").await.unwrap()), 11434);
    let direct = {
        let body = stream_req.clone();
        llm_ns
            .netns()
            .run(move || post(pod_ollama, "/api/chat", &[], &body))
            .unwrap()
            .unwrap()
    };
    let (text, lines) = ollama_text(&direct.1);
    assert_eq!(text, "user: cook rabbit stew tonight");
    let at = |w: &str| lines.iter().position(|l| l.contains(w)).unwrap();
    assert!(at("rabbit") < at("stew"), "{lines:?}");
    let (status, body) = in_web(ollama, "/api/chat", vec![], stream_req.clone()).unwrap();
    assert_eq!(status, 200);
    let (text, lines) = ollama_text(&body);
    assert_eq!(text, "user: cook *********** tonight", "{lines:?}");
    assert!(lines.len() > 2, "still a stream: {lines:?}");
    assert!(!String::from_utf8_lossy(&body).contains("rabbit"));

    // The ConfigMap changes: the same proxy process applies the new policy.
    cms.patch(
        "web-ghostwire-ai",
        &PatchParams::apply("test").force(),
        &Patch::Apply(policy("web-ghostwire-ai", &["tonight"])),
    )
    .await
    .unwrap();
    let text = until("the new banned word in force", || {
        let body = stream_req.clone();
        async move {
            let (_, b) = in_web(ollama, "/api/chat", vec![], body).ok()?;
            let (text, _) = ollama_text(&b);
            // The old policy masks "rabbit stew" (11 stars) and leaves "tonight".
            (!text.is_empty() && !text.contains("tonight")).then_some(text)
        }
    })
    .await;
    assert_eq!(text, "user: cook rabbit stew *******");
    assert_eq!(
        common::proxies(netns_ino),
        first,
        "the proxy was not restarted"
    );

    // Another path: the body the server gets is the one sent, byte for byte, compressed and
    // with words the policy would rewrite; and a model path with a body that is not JSON.
    let sent = gzip(br#"{"model":"gpt-4o","input":"a joke about tonight"}"#);
    let (status, got) = in_web(
        SocketAddr::new(mirror_ip, 80),
        "/v1/embeddings",
        vec![
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
        ],
        sent.clone(),
    )
    .unwrap();
    assert_eq!(status, 200);
    let mut want = b"/v1/embeddings\ngzip\n".to_vec();
    want.extend_from_slice(&sent);
    assert_eq!(got, want);
    let (_, got) = in_web(
        SocketAddr::new(mirror_ip, 80),
        "/v1/chat/completions",
        vec![],
        b"joke tonight {".to_vec(),
    )
    .unwrap();
    assert_eq!(got, b"/v1/chat/completions\n\njoke tonight {");
    assert!(metric(&web_ns, web_ip, 18091, "other", "passed") >= 1.0);
    assert!(metric(&web_ns, web_ip, 18091, "openai-chat", "passed") >= 1.0);

    // The opt-in is live: turned off, the same proxy passes the chat as it came (L4 again);
    // turned on again, rewritten.
    let opt_in =
        |on: &str| Patch::Merge(json!({"metadata": {"annotations": {"ghostwire.dev/ai": on}}}));
    pods.patch("web", &PatchParams::default(), &opt_in("false"))
        .await
        .unwrap();
    let answer = chat_until(&web_ns, llm_openai, "gpt-4o", "the opt-out in force").await;
    assert_eq!(
        answer["choices"][0]["message"]["content"], "user: tell a joke about the secret",
        "{answer}"
    );
    pods.patch("web", &PatchParams::default(), &opt_in("true"))
        .await
        .unwrap();
    chat_until(&web_ns, llm_openai, "tiny", "the opt-in in force again").await;
    assert_eq!(common::proxies(netns_ino), first, "the proxy was restarted");

    // The injected mesh sidecar: it has the Pod's name from the downward API, and follows
    // its annotations and its own ConfigMap with the Pod's account.
    let injected = pods.get("meshed").await.unwrap();
    let sidecar = injected
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "ghostwire-proxy"))
        .expect("the injected mesh sidecar");
    assert!(
        sidecar
            .env
            .iter()
            .flatten()
            .any(|e| e.name == "GW_MESH_AI_POD"
                && e.value.as_deref() == Some("default/$(GW_POD_NAME)")),
        "{:?}",
        sidecar.env
    );
    let meshed_ip = pod_ip(&injected);
    let meshed_ns = c.node().pod_netns("default", "meshed").unwrap();
    let answer = chat_until(
        &meshed_ns,
        llm_openai,
        "small",
        "a rewritten OpenAI chat through the injected mesh sidecar",
    )
    .await;
    assert_eq!(
        answer["choices"][0]["message"]["content"], "user: tell a fact about the ******",
        "{answer}"
    );
    assert!(metric(&meshed_ns, meshed_ip, 4191, "openai-chat", "rewritten") >= 1.0);
}
