//! The fake server against clients nobody here wrote: the official `openai` and `ollama` Python
//! packages (PyPI), whole and streamed answers, and a gzip-compressed request body.

use std::net::SocketAddr;

async fn start() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(lab_llm::serve(vec![l], lab_llm::Options::default()));
    addr
}

const SCRIPT: &str = r#"
import gzip, json, sys, urllib.request
import ollama, openai
base = sys.argv[1]
out = {}
oa = openai.OpenAI(base_url=base + "/v1", api_key="unused")
r = oa.chat.completions.create(model="gpt-4o-mini", messages=[
    {"role": "system", "content": "be brief"}, {"role": "user", "content": "say hi"}])
out["chat"] = [r.model, r.choices[0].message.content, r.choices[0].finish_reason]
s = oa.chat.completions.create(model="gpt-4o-mini", stream=True, max_tokens=2,
                               messages=[{"role": "user", "content": "one two three"}])
parts = [c.choices[0].delta.content or "" for c in s if c.choices]
out["chat_stream"] = ["".join(parts), len(parts) > 2]
r = oa.completions.create(model="davinci", prompt="complete me")
out["completions"] = [r.model, r.choices[0].text]
r = oa.responses.create(model="gpt-4.1", instructions="terse", input="what now")
out["responses"] = [r.model, r.output_text, r.status]
text = ""
for ev in oa.responses.create(model="gpt-4.1", input="streamed please", stream=True):
    if ev.type == "response.output_text.delta":
        text += ev.delta
out["responses_stream"] = text
ol = ollama.Client(host=base)
r = ol.chat(model="llama3.2", messages=[{"role": "user", "content": "hello ollama"}])
out["ollama_chat"] = [r.model, r.message.content, r.done]
parts = [c.message.content for c in ol.chat(model="llama3.2", stream=True,
         messages=[{"role": "user", "content": "stream this"}])]
out["ollama_chat_stream"] = "".join(parts)
r = ol.generate(model="llama3.2", prompt="why is the sky blue", system="physicist")
out["ollama_generate"] = [r.model, r.response]
parts = [c.response for c in ol.generate(model="llama3.2", prompt="a b c", stream=True,
         options={"num_predict": 2})]
out["ollama_generate_stream"] = "".join(parts)
body = gzip.compress(json.dumps({"model": "zipped", "messages": [{"role": "user", "content": "compressed"}]}).encode())
req = urllib.request.Request(base + "/v1/chat/completions", data=body, headers={
    "Content-Type": "application/json", "Content-Encoding": "gzip"})
with urllib.request.urlopen(req) as resp:
    v = json.load(resp)
    out["gzip"] = [v["model"], v["choices"][0]["message"]["content"], resp.headers["x-fake-llm-model"]]
with urllib.request.urlopen(base + "/fake-llm/last") as resp:
    out["last"] = [resp.headers["x-fake-llm-path"], json.load(resp)["model"]]
try:
    urllib.request.urlopen(urllib.request.Request(base + "/api/chat", data=b"{}"))
except urllib.error.HTTPError as e:
    out["error"] = [e.code, json.load(e)]
print(json.dumps(out))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_openai_and_ollama_clients_get_what_they_asked_for() {
    let addr = start().await;
    let out = tokio::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(format!("http://{addr}"))
        .output()
        .await
        .expect("python3 runs");
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}; the openai and ollama packages come from scripts/install-deps.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        got,
        serde_json::json!({
            "chat": ["gpt-4o-mini", "system: be brief\nuser: say hi", "stop"],
            "chat_stream": ["user: one", true],
            "completions": ["davinci", "complete me"],
            "responses": ["gpt-4.1", "system: terse\nuser: what now", "completed"],
            "responses_stream": "user: streamed please",
            "ollama_chat": ["llama3.2", "user: hello ollama", true],
            "ollama_chat_stream": "user: stream this",
            "ollama_generate": ["llama3.2", "system: physicist\nwhy is the sky blue"],
            "ollama_generate_stream": "a b",
            "gzip": ["zipped", "user: compressed", "zipped"],
            "last": ["/v1/chat/completions", "zipped"],
            "error": [400, {"error": "model is required"}],
        })
    );
}
