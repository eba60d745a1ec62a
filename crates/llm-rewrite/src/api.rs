//! Which model API a request speaks, and where each one keeps its model, prompts, token limit
//! and streaming flag.

use serde_json::{Value, json};

use crate::config::{Policy, Replace};
use crate::text::replace_all;

/// The request shapes ghostwire understands; anything else passes through untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI `POST /v1/chat/completions`.
    OpenAiChat,
    /// OpenAI `POST /v1/completions`.
    OpenAiCompletions,
    /// OpenAI `POST /v1/responses`.
    OpenAiResponses,
    /// Ollama `POST /api/chat`.
    OllamaChat,
    /// Ollama `POST /api/generate`.
    OllamaGenerate,
}

impl Api {
    /// From the request line; the query string is ignored.
    pub fn detect(method: &str, path: &str) -> Option<Api> {
        if !method.eq_ignore_ascii_case("POST") {
            return None;
        }
        let path = path.split(['?', '#']).next().unwrap_or("");
        Some(match path.trim_end_matches('/') {
            "/v1/chat/completions" => Api::OpenAiChat,
            "/v1/completions" => Api::OpenAiCompletions,
            "/v1/responses" => Api::OpenAiResponses,
            "/api/chat" => Api::OllamaChat,
            "/api/generate" => Api::OllamaGenerate,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Api::OpenAiChat => "openai-chat",
            Api::OpenAiCompletions => "openai-completions",
            Api::OpenAiResponses => "openai-responses",
            Api::OllamaChat => "ollama-chat",
            Api::OllamaGenerate => "ollama-generate",
        }
    }

    fn is_ollama(self) -> bool {
        matches!(self, Api::OllamaChat | Api::OllamaGenerate)
    }

    /// Whether the request asks for a streamed answer. Ollama streams unless told not to.
    pub fn wants_stream(self, body: &Value) -> bool {
        match body.get("stream").and_then(Value::as_bool) {
            Some(s) => s,
            None => self.is_ollama(),
        }
    }
}

/// What a rewrite changed, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Model { from: String, to: String },
    UserPrompt,
    DevPrompt,
    MaxTokens { from: Option<u64>, to: u64 },
}

/// Rewrites the request body in place by the policy; `model_override` (the Pod's
/// `ghostwire.dev/ai-model` annotation) wins over `modelReplace`.
pub fn rewrite_request(
    api: Api,
    body: &mut Value,
    policy: &Policy,
    model_override: Option<&str>,
) -> Vec<Change> {
    let mut changes = Vec::new();
    if let Some(model) = body
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string)
    {
        let replaced = policy
            .model_replace
            .iter()
            .find(|(orig, _)| *orig == model)
            .map(|(_, new)| new.clone());
        let target = model_override.map(str::to_string).or(replaced);
        if let Some(to) = target.filter(|t| *t != model) {
            body["model"] = Value::String(to.clone());
            changes.push(Change::Model { from: model, to });
        }
    } else if let Some(to) = model_override {
        body["model"] = Value::String(to.to_string());
        changes.push(Change::Model {
            from: String::new(),
            to: to.to_string(),
        });
    }
    if rewrite_prompts(api, body, Role::User, &policy.user_prompt_replace) {
        changes.push(Change::UserPrompt);
    }
    if rewrite_prompts(api, body, Role::Dev, &policy.dev_prompt_replace) {
        changes.push(Change::DevPrompt);
    }
    if let Some(cap) = policy.max_tokens
        && let Some(c) = cap_tokens(api, body, cap)
    {
        changes.push(c);
    }
    changes
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    User,
    Dev,
}

fn role_of(message: &Value) -> Option<Role> {
    match message.get("role").and_then(Value::as_str)? {
        "user" => Some(Role::User),
        "system" | "developer" => Some(Role::Dev),
        _ => None,
    }
}

/// Rewrites a string, or each text part of a content array (`{"type":"text"|"input_text",
/// "text":…}`), or each string of an array.
fn rewrite_text(v: &mut Value, rules: &[Replace]) -> bool {
    match v {
        Value::String(s) => match replace_all(s, rules) {
            Some(new) => {
                *s = new;
                true
            }
            None => false,
        },
        Value::Array(items) => {
            let mut any = false;
            for item in items {
                any |= match item {
                    Value::String(_) => rewrite_text(item, rules),
                    Value::Object(o) => match o.get("type").and_then(Value::as_str) {
                        Some("text" | "input_text") => {
                            o.get_mut("text").is_some_and(|t| rewrite_text(t, rules))
                        }
                        _ => false,
                    },
                    _ => false,
                };
            }
            any
        }
        _ => false,
    }
}

fn rewrite_messages(list: Option<&mut Value>, role: Role, rules: &[Replace]) -> bool {
    let Some(Value::Array(messages)) = list else {
        return false;
    };
    let mut any = false;
    for m in messages {
        if role_of(m) == Some(role)
            && let Some(content) = m.get_mut("content")
        {
            any |= rewrite_text(content, rules);
        }
    }
    any
}

fn rewrite_prompts(api: Api, body: &mut Value, role: Role, rules: &[Replace]) -> bool {
    if rules.is_empty() {
        return false;
    }
    match (api, role) {
        (Api::OpenAiChat | Api::OllamaChat, _) => {
            rewrite_messages(body.get_mut("messages"), role, rules)
        }
        (Api::OpenAiCompletions | Api::OllamaGenerate, Role::User) => body
            .get_mut("prompt")
            .is_some_and(|p| rewrite_text(p, rules)),
        (Api::OpenAiCompletions, Role::Dev) => false,
        (Api::OllamaGenerate, Role::Dev) => body
            .get_mut("system")
            .is_some_and(|p| rewrite_text(p, rules)),
        (Api::OpenAiResponses, _) => {
            let mut any = false;
            match body.get_mut("input") {
                Some(input @ Value::String(_)) if role == Role::User => {
                    any |= rewrite_text(input, rules);
                }
                input @ Some(Value::Array(_)) => any |= rewrite_messages(input, role, rules),
                _ => {}
            }
            if role == Role::Dev {
                any |= body
                    .get_mut("instructions")
                    .is_some_and(|p| rewrite_text(p, rules));
            }
            any
        }
    }
}

/// Lowers (or sets) the API's own token limit to `cap`.
fn cap_tokens(api: Api, body: &mut Value, cap: u64) -> Option<Change> {
    let field: &[&str] = match api {
        Api::OpenAiChat if body.get("max_completion_tokens").is_some() => {
            &["max_completion_tokens"]
        }
        Api::OpenAiChat | Api::OpenAiCompletions => &["max_tokens"],
        Api::OpenAiResponses => &["max_output_tokens"],
        Api::OllamaChat | Api::OllamaGenerate => &["options", "num_predict"],
    };
    let (parents, leaf) = field.split_at(field.len() - 1);
    let mut obj = &mut *body;
    for p in parents {
        if !obj.get(*p).is_some_and(Value::is_object) {
            obj[*p] = json!({});
        }
        obj = obj.get_mut(*p)?;
    }
    let from = obj.get(leaf[0]).and_then(Value::as_i64);
    // Ollama's -1 (unbounded) and -2 (fill the context) are over any cap.
    let within = from.is_some_and(|n| n >= 0 && (n as u64) <= cap);
    if within {
        return None;
    }
    obj[leaf[0]] = json!(cap);
    Some(Change::MaxTokens {
        from: from.and_then(|n| u64::try_from(n).ok()),
        to: cap,
    })
}

/// The answer to a blocked request, shaped as the API would answer, streamed or not:
/// (content type, body).
pub fn blocked_answer(
    api: Api,
    model: &str,
    stream: bool,
    message: &str,
) -> (&'static str, Vec<u8>) {
    let one = match api {
        Api::OpenAiChat if stream => {
            let chunk = |delta: Value, finish: Value| {
                json!({"id":"ghostwire-blocked","object":"chat.completion.chunk","created":0,
                       "model":model,"choices":[{"index":0,"delta":delta,"finish_reason":finish}]})
            };
            return sse(&[
                chunk(json!({"role":"assistant","content":message}), Value::Null),
                chunk(json!({}), json!("stop")),
            ]);
        }
        Api::OpenAiChat => json!({"id":"ghostwire-blocked","object":"chat.completion","created":0,
            "model":model,"choices":[{"index":0,"message":{"role":"assistant","content":message},
            "finish_reason":"stop"}]}),
        Api::OpenAiCompletions => {
            let v = json!({"id":"ghostwire-blocked","object":"text_completion","created":0,
                "model":model,"choices":[{"index":0,"text":message,"finish_reason":"stop"}]});
            if stream {
                return sse(&[v]);
            }
            v
        }
        Api::OpenAiResponses => {
            let response = json!({"id":"ghostwire-blocked","object":"response","status":"completed",
                "model":model,"output":[{"type":"message","id":"ghostwire-blocked-msg",
                "role":"assistant","status":"completed",
                "content":[{"type":"output_text","text":message,"annotations":[]}]}]});
            if stream {
                return sse(&[
                    json!({"type":"response.output_text.delta","item_id":"ghostwire-blocked-msg",
                           "output_index":0,"content_index":0,"delta":message}),
                    json!({"type":"response.output_text.done","item_id":"ghostwire-blocked-msg",
                           "output_index":0,"content_index":0,"text":message}),
                    json!({"type":"response.completed","response":response}),
                ]);
            }
            response
        }
        Api::OllamaChat => {
            json!({"model":model,"message":{"role":"assistant","content":message},"done":true,
                   "done_reason":"stop"})
        }
        Api::OllamaGenerate => {
            json!({"model":model,"response":message,"done":true,"done_reason":"stop"})
        }
    };
    if stream && api.is_ollama() {
        let mut line = one.to_string().into_bytes();
        line.push(b'\n');
        return ("application/x-ndjson", line);
    }
    ("application/json", one.to_string().into_bytes())
}

fn sse(events: &[Value]) -> (&'static str, Vec<u8>) {
    let mut out = String::new();
    for e in events {
        out.push_str("data: ");
        out.push_str(&e.to_string());
        out.push_str("\n\n");
    }
    out.push_str("data: [DONE]\n\n");
    ("text/event-stream", out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::parse(
            r#"{"request":{"maxTokens":"50",
                "modelReplace":[{"orig":"gpt-4o","new":"llama3.2"}],
                "userPromptReplace":[{"orig":"joke","new":"fact","caseSensitive":false}],
                "devPromptReplace":[{"orig":"pirate","new":"teacher","caseSensitive":true}]}}"#,
        )
        .unwrap()
    }

    #[test]
    fn detection_is_by_method_and_path() {
        assert_eq!(
            Api::detect("POST", "/v1/chat/completions"),
            Some(Api::OpenAiChat)
        );
        assert_eq!(
            Api::detect("post", "/v1/completions?x=1"),
            Some(Api::OpenAiCompletions)
        );
        assert_eq!(
            Api::detect("POST", "/v1/responses/"),
            Some(Api::OpenAiResponses)
        );
        assert_eq!(Api::detect("POST", "/api/chat"), Some(Api::OllamaChat));
        assert_eq!(
            Api::detect("POST", "/api/generate"),
            Some(Api::OllamaGenerate)
        );
        assert_eq!(Api::detect("GET", "/v1/chat/completions"), None);
        assert_eq!(Api::detect("POST", "/v1/embeddings"), None);
        assert_eq!(Api::detect("POST", "/api/pull"), None);
    }

    #[test]
    fn openai_chat_gets_every_rule() {
        let mut body = json!({"model":"gpt-4o","max_tokens":500,"messages":[
            {"role":"system","content":"You are a pirate. Pirate!"},
            {"role":"user","content":[{"type":"text","text":"Tell me a JOKE"},{"type":"image_url","image_url":{"url":"joke"}}]},
            {"role":"assistant","content":"a joke"}]});
        let changes = rewrite_request(Api::OpenAiChat, &mut body, &policy(), None);
        assert_eq!(body["model"], "llama3.2");
        assert_eq!(body["messages"][0]["content"], "You are a teacher. Pirate!");
        assert_eq!(body["messages"][1]["content"][0]["text"], "Tell me a fact");
        assert_eq!(
            body["messages"][1]["content"][1]["image_url"]["url"],
            "joke"
        );
        assert_eq!(
            body["messages"][2]["content"], "a joke",
            "assistant turns are history"
        );
        assert_eq!(body["max_tokens"], 50);
        assert_eq!(changes.len(), 4, "{changes:?}");
    }

    #[test]
    fn token_caps_use_each_apis_field() {
        let p = policy();
        let mut b = json!({"model":"m","messages":[],"max_completion_tokens":80});
        rewrite_request(Api::OpenAiChat, &mut b, &p, None);
        assert_eq!(b["max_completion_tokens"], 50);
        assert!(b.get("max_tokens").is_none());
        let mut b = json!({"model":"m","prompt":"x","max_tokens":10});
        assert!(rewrite_request(Api::OpenAiCompletions, &mut b, &p, None).is_empty());
        assert_eq!(b["max_tokens"], 10, "a lower limit is kept");
        let mut b = json!({"model":"m","input":"x"});
        rewrite_request(Api::OpenAiResponses, &mut b, &p, None);
        assert_eq!(b["max_output_tokens"], 50);
        let mut b = json!({"model":"m","prompt":"x","options":{"num_predict":-1,"temperature":0}});
        rewrite_request(Api::OllamaGenerate, &mut b, &p, None);
        assert_eq!(b["options"], json!({"num_predict":50,"temperature":0}));
        let mut b = json!({"model":"m","messages":[]});
        rewrite_request(Api::OllamaChat, &mut b, &p, None);
        assert_eq!(b["options"]["num_predict"], 50);
    }

    #[test]
    fn ollama_and_responses_prompts() {
        let p = policy();
        let mut b = json!({"model":"m","prompt":"a Joke","system":"pirate talk"});
        rewrite_request(Api::OllamaGenerate, &mut b, &p, None);
        assert_eq!(
            (b["prompt"].as_str(), b["system"].as_str()),
            (Some("a fact"), Some("teacher talk"))
        );
        let mut b = json!({"model":"m","instructions":"be a pirate","input":[
            {"role":"user","content":[{"type":"input_text","text":"joke please"}]},
            {"role":"developer","content":"pirate"}]});
        rewrite_request(Api::OpenAiResponses, &mut b, &p, None);
        assert_eq!(b["instructions"], "be a teacher");
        assert_eq!(b["input"][0]["content"][0]["text"], "fact please");
        assert_eq!(b["input"][1]["content"], "teacher");
        let mut b = json!({"model":"m","input":"joke"});
        rewrite_request(Api::OpenAiResponses, &mut b, &p, None);
        assert_eq!(b["input"], "fact");
        let mut b = json!({"model":"m","prompt":["joke one","two jokes"]});
        rewrite_request(Api::OpenAiCompletions, &mut b, &p, None);
        assert_eq!(b["prompt"], json!(["fact one", "two facts"]));
    }

    #[test]
    fn the_annotation_wins_over_model_replace() {
        let mut b = json!({"model":"gpt-4o","messages":[]});
        let c = rewrite_request(
            Api::OpenAiChat,
            &mut b,
            &Policy::default(),
            Some("gemma2:2b"),
        );
        assert_eq!(b["model"], "gemma2:2b");
        assert_eq!(
            c,
            [Change::Model {
                from: "gpt-4o".into(),
                to: "gemma2:2b".into()
            }]
        );
        let mut b = json!({"model":"gpt-4o","messages":[]});
        rewrite_request(Api::OpenAiChat, &mut b, &policy(), Some("gemma2:2b"));
        assert_eq!(b["model"], "gemma2:2b");
    }

    #[test]
    fn ollama_streams_unless_told_not_to() {
        assert!(Api::OllamaChat.wants_stream(&json!({})));
        assert!(!Api::OllamaChat.wants_stream(&json!({"stream":false})));
        assert!(!Api::OpenAiChat.wants_stream(&json!({})));
        assert!(Api::OpenAiChat.wants_stream(&json!({"stream":true})));
    }

    #[test]
    fn blocked_answers_have_each_apis_shape() {
        for api in [
            Api::OpenAiChat,
            Api::OpenAiCompletions,
            Api::OpenAiResponses,
            Api::OllamaChat,
            Api::OllamaGenerate,
        ] {
            let (ct, body) = blocked_answer(api, "m", false, "blocked");
            assert_eq!(ct, "application/json");
            let v: Value = serde_json::from_slice(&body).unwrap();
            let text = crate::stream::whole_texts(api, &v);
            assert_eq!(text, ["blocked"], "{api:?}: {v}");
            let (ct, body) = blocked_answer(api, "m", true, "blocked");
            let mut f = crate::stream::ResponseFilter::new(api, ct, &[]);
            let mut out = f.push(&body);
            out.extend(f.finish());
            assert_eq!(
                crate::stream::streamed_text(api, ct, &out),
                "blocked",
                "{api:?}"
            );
        }
    }
}
