//! What the fake server answers (pure): which API a request speaks, the prompt it carries, and
//! the answer in that API's own shape — whole JSON, or the chunks of a stream (Server-Sent
//! Events for OpenAI, NDJSON for Ollama).
//!
//! The answer's text is the prompt as received, one `role: text` line per message (a bare
//! prompt for `/v1/completions` and `/api/generate`), and its `model` is the model asked for,
//! so a test behind a rewriting proxy sees exactly what reached the server. A token limit
//! (`max_tokens`, `max_completion_tokens`, `max_output_tokens`, Ollama's `options.num_predict`)
//! cuts the answer to that many words, reported as the API reports a length stop.

use serde_json::{Value, json};

/// The request shapes served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `POST /v1/chat/completions`.
    OpenAiChat,
    /// `POST /v1/completions`.
    OpenAiCompletions,
    /// `POST /v1/responses`.
    OpenAiResponses,
    /// `POST /api/chat`.
    OllamaChat,
    /// `POST /api/generate`.
    OllamaGenerate,
}

impl Api {
    /// The API of a request path (query string ignored).
    pub fn of_path(path: &str) -> Option<Api> {
        let path = path.split('?').next().unwrap_or_default();
        Some(match path.trim_end_matches('/') {
            "/v1/chat/completions" => Api::OpenAiChat,
            "/v1/completions" => Api::OpenAiCompletions,
            "/v1/responses" => Api::OpenAiResponses,
            "/api/chat" => Api::OllamaChat,
            "/api/generate" => Api::OllamaGenerate,
            _ => return None,
        })
    }

    pub fn is_ollama(self) -> bool {
        matches!(self, Api::OllamaChat | Api::OllamaGenerate)
    }
}

/// A refused request, in the API's error shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub status: u16,
    pub body: Value,
}

/// The error body of `api` for `message`.
pub fn error_body(ollama: bool, message: &str) -> Value {
    if ollama {
        json!({"error": message})
    } else {
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": null}})
    }
}

fn refuse(api: Api, message: impl Into<String>) -> Refusal {
    Refusal {
        status: 400,
        body: error_body(api.is_ollama(), &message.into()),
    }
}

/// What to send back.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Whole(Value),
    /// `content_type` and the stream's pieces, each sent as it is.
    Stream {
        content_type: &'static str,
        chunks: Vec<String>,
    },
}

/// A message's text: a string, or the text parts of a list of parts.
fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

fn lines_of(messages: &Value) -> Vec<String> {
    messages
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
            format!("{role}: {}", text_of(&m["content"]))
        })
        .collect()
}

/// The prompt a request carries, rendered as the answer's text.
pub fn prompt(api: Api, req: &Value) -> String {
    match api {
        Api::OpenAiChat | Api::OllamaChat => lines_of(&req["messages"]).join("\n"),
        Api::OpenAiCompletions => match &req["prompt"] {
            Value::Array(a) => a.first().map(text_of).unwrap_or_default(),
            p => text_of(p),
        },
        Api::OllamaGenerate => match req["system"].as_str() {
            Some(sys) if !sys.is_empty() => {
                format!("system: {sys}\n{}", text_of(&req["prompt"]))
            }
            _ => text_of(&req["prompt"]),
        },
        Api::OpenAiResponses => {
            let mut lines = Vec::new();
            if let Some(i) = req["instructions"].as_str().filter(|i| !i.is_empty()) {
                lines.push(format!("system: {i}"));
            }
            match &req["input"] {
                Value::String(s) => lines.push(format!("user: {s}")),
                items => lines.extend(lines_of(items)),
            }
            lines.join("\n")
        }
    }
}

/// The request's token limit, if any.
pub fn limit(api: Api, req: &Value) -> Option<usize> {
    let n = match api {
        Api::OpenAiChat => req["max_completion_tokens"]
            .as_u64()
            .or_else(|| req["max_tokens"].as_u64()),
        Api::OpenAiCompletions => req["max_tokens"].as_u64(),
        Api::OpenAiResponses => req["max_output_tokens"].as_u64(),
        Api::OllamaChat | Api::OllamaGenerate => req["options"]["num_predict"]
            .as_i64()
            .filter(|n| *n >= 0)
            .map(|n| n as u64),
    }?;
    usize::try_from(n).ok()
}

/// Whether the request asks for a stream (Ollama streams unless told not to).
pub fn wants_stream(api: Api, req: &Value) -> bool {
    req["stream"].as_bool().unwrap_or(api.is_ollama())
}

/// The answer's pieces: each word with the space before it, so they join back to the text.
fn pieces(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, w) in text.split(' ').enumerate() {
        out.push(if i == 0 {
            w.to_string()
        } else {
            format!(" {w}")
        });
    }
    out
}

/// The text after a limit of `n` words (`None`: unlimited); whether it was cut.
fn cut(text: &str, n: Option<usize>) -> (String, bool) {
    match n {
        Some(n) if text.split_whitespace().count() > n => (
            text.split_whitespace()
                .take(n)
                .collect::<Vec<_>>()
                .join(" "),
            true,
        ),
        _ => (text.to_string(), false),
    }
}

fn sse(data: &Value) -> String {
    format!("data: {data}\n\n")
}

fn sse_event(event: &str, data: &Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

/// The identity of one answer: an id suffix and the time (seconds since the epoch).
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub id: u64,
    pub now: i64,
}

/// The answer to `req` (already decoded JSON) for `api`.
pub fn answer(api: Api, req: &Value, stamp: Stamp) -> Result<Answer, Refusal> {
    if !req.is_object() {
        return Err(refuse(api, "the request body must be a JSON object"));
    }
    let model = match req["model"].as_str() {
        Some(m) if !m.is_empty() => m,
        _ if api.is_ollama() => return Err(refuse(api, "model is required")),
        _ => return Err(refuse(api, "you must provide a model parameter")),
    };
    let asked = prompt(api, req);
    let (text, was_cut) = cut(&asked, limit(api, req));
    let prompt_tokens = asked.split_whitespace().count();
    let tokens = text.split_whitespace().count();
    let stream = wants_stream(api, req);
    let Stamp { id, now } = stamp;
    let created_at = jiff::Timestamp::from_second(now)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let usage = json!({"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                       "total_tokens": prompt_tokens + tokens});
    let openai_finish = if was_cut { "length" } else { "stop" };
    Ok(match api {
        Api::OpenAiChat => {
            let cid = format!("chatcmpl-fake{id}");
            if !stream {
                Answer::Whole(json!({
                    "id": cid, "object": "chat.completion", "created": now, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "logprobs": null, "finish_reason": openai_finish}],
                    "usage": usage,
                }))
            } else {
                let chunk = |delta: Value, finish: Value| {
                    sse(
                        &json!({"id": cid, "object": "chat.completion.chunk", "created": now,
                                "model": model, "choices": [{"index": 0, "delta": delta,
                                "logprobs": null, "finish_reason": finish}]}),
                    )
                };
                let mut chunks = vec![chunk(
                    json!({"role": "assistant", "content": ""}),
                    Value::Null,
                )];
                chunks.extend(
                    pieces(&text)
                        .iter()
                        .map(|p| chunk(json!({"content": p}), Value::Null)),
                );
                chunks.push(chunk(json!({}), json!(openai_finish)));
                chunks.push("data: [DONE]\n\n".into());
                Answer::Stream {
                    content_type: "text/event-stream",
                    chunks,
                }
            }
        }
        Api::OpenAiCompletions => {
            let cid = format!("cmpl-fake{id}");
            let body = |t: &str, finish: Value| {
                json!({"id": cid, "object": "text_completion", "created": now, "model": model,
                       "choices": [{"text": t, "index": 0, "logprobs": null, "finish_reason": finish}]})
            };
            if !stream {
                let mut b = body(&text, json!(openai_finish));
                b["usage"] = usage;
                Answer::Whole(b)
            } else {
                let mut chunks: Vec<String> = pieces(&text)
                    .iter()
                    .map(|p| sse(&body(p, Value::Null)))
                    .collect();
                chunks.push(sse(&body("", json!(openai_finish))));
                chunks.push("data: [DONE]\n\n".into());
                Answer::Stream {
                    content_type: "text/event-stream",
                    chunks,
                }
            }
        }
        Api::OpenAiResponses => {
            let (rid, mid) = (format!("resp_fake{id}"), format!("msg_fake{id}"));
            let usage = json!({"input_tokens": prompt_tokens, "output_tokens": tokens,
                               "total_tokens": prompt_tokens + tokens});
            let response = |status: &str, output: Value| {
                let mut r = json!({"id": rid, "object": "response", "created_at": now,
                                   "status": status, "model": model, "output": output,
                                   "error": null, "incomplete_details": null});
                if status != "in_progress" {
                    r["usage"] = usage.clone();
                }
                if status == "incomplete" {
                    r["incomplete_details"] = json!({"reason": "max_output_tokens"});
                }
                r
            };
            let item = |t: &str, status: &str| {
                json!({"type": "message", "id": mid, "status": status, "role": "assistant",
                       "content": [{"type": "output_text", "text": t, "annotations": []}]})
            };
            let final_status = if was_cut { "incomplete" } else { "completed" };
            let full = response(final_status, json!([item(&text, final_status)]));
            if !stream {
                Answer::Whole(full)
            } else {
                let mut seq = 0;
                let mut next = |event: &str, mut data: Value| {
                    data["type"] = json!(event);
                    data["sequence_number"] = json!(seq);
                    seq += 1;
                    sse_event(event, &data)
                };
                let mut chunks = vec![
                    next(
                        "response.created",
                        json!({"response": response("in_progress", json!([]))}),
                    ),
                    next(
                        "response.output_item.added",
                        json!({"output_index": 0, "item": {"type": "message", "id": mid,
                               "status": "in_progress", "role": "assistant", "content": []}}),
                    ),
                    next(
                        "response.content_part.added",
                        json!({"item_id": mid, "output_index": 0, "content_index": 0,
                               "part": {"type": "output_text", "text": "", "annotations": []}}),
                    ),
                ];
                for p in pieces(&text) {
                    chunks.push(next(
                        "response.output_text.delta",
                        json!({"item_id": mid, "output_index": 0, "content_index": 0, "delta": p}),
                    ));
                }
                chunks.push(next(
                    "response.output_text.done",
                    json!({"item_id": mid, "output_index": 0, "content_index": 0, "text": text}),
                ));
                chunks.push(next(
                    "response.content_part.done",
                    json!({"item_id": mid, "output_index": 0, "content_index": 0,
                           "part": {"type": "output_text", "text": text, "annotations": []}}),
                ));
                chunks.push(next(
                    "response.output_item.done",
                    json!({"output_index": 0, "item": item(&text, final_status)}),
                ));
                let last = if was_cut {
                    "response.incomplete"
                } else {
                    "response.completed"
                };
                chunks.push(next(last, json!({"response": full})));
                Answer::Stream {
                    content_type: "text/event-stream",
                    chunks,
                }
            }
        }
        Api::OllamaChat | Api::OllamaGenerate => {
            let done_reason = if was_cut { "length" } else { "stop" };
            let piece = |t: &str| {
                if api == Api::OllamaChat {
                    json!({"model": model, "created_at": created_at,
                           "message": {"role": "assistant", "content": t}})
                } else {
                    json!({"model": model, "created_at": created_at, "response": t})
                }
            };
            let last = |t: &str| {
                let mut v = piece(t);
                v["done"] = json!(true);
                v["done_reason"] = json!(done_reason);
                v["total_duration"] = json!(1_000_000);
                v["load_duration"] = json!(0);
                v["prompt_eval_count"] = json!(prompt_tokens);
                v["prompt_eval_duration"] = json!(0);
                v["eval_count"] = json!(tokens);
                v["eval_duration"] = json!(1_000_000);
                if api == Api::OllamaGenerate {
                    v["context"] = json!([]);
                }
                v
            };
            if !stream {
                Answer::Whole(last(&text))
            } else {
                let mut chunks: Vec<String> = pieces(&text)
                    .iter()
                    .map(|p| {
                        let mut v = piece(p);
                        v["done"] = json!(false);
                        format!("{v}\n")
                    })
                    .collect();
                chunks.push(format!("{}\n", last("")));
                Answer::Stream {
                    content_type: "application/x-ndjson",
                    chunks,
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAMP: Stamp = Stamp {
        id: 7,
        now: 1_700_000_000,
    };

    fn whole(a: Result<Answer, Refusal>) -> Value {
        match a.unwrap() {
            Answer::Whole(v) => v,
            other => panic!("{other:?}"),
        }
    }

    fn stream(a: Result<Answer, Refusal>) -> (&'static str, Vec<String>) {
        match a.unwrap() {
            Answer::Stream {
                content_type,
                chunks,
            } => (content_type, chunks),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn paths() {
        assert_eq!(Api::of_path("/v1/chat/completions"), Some(Api::OpenAiChat));
        assert_eq!(
            Api::of_path("/v1/responses?x=1"),
            Some(Api::OpenAiResponses)
        );
        assert_eq!(Api::of_path("/api/generate/"), Some(Api::OllamaGenerate));
        assert_eq!(Api::of_path("/v1/embeddings"), None);
    }

    #[test]
    fn chat_echoes_model_and_messages() {
        let req = json!({"model": "gpt-4o", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "there"}]}]});
        let v = whole(answer(Api::OpenAiChat, &req, STAMP));
        assert_eq!(v["model"], "gpt-4o");
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(
            v["choices"][0]["message"]["content"],
            "system: be brief\nuser: hello there"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert_eq!(v["usage"]["prompt_tokens"], 6);
    }

    #[test]
    fn limits_cut_the_answer_as_a_length_stop() {
        let req = json!({"model": "m", "prompt": "one two three four", "max_tokens": 2});
        let v = whole(answer(Api::OpenAiCompletions, &req, STAMP));
        assert_eq!(v["choices"][0]["text"], "one two");
        assert_eq!(v["choices"][0]["finish_reason"], "length");
        let req = json!({"model": "m", "prompt": "a b c", "stream": false, "options": {"num_predict": 1}});
        let v = whole(answer(Api::OllamaGenerate, &req, STAMP));
        assert_eq!(
            (v["response"].as_str(), v["done_reason"].as_str()),
            (Some("a"), Some("length"))
        );
        let req = json!({"model": "m", "input": "a b c", "max_output_tokens": 2});
        let v = whole(answer(Api::OpenAiResponses, &req, STAMP));
        assert_eq!(v["status"], "incomplete");
        assert_eq!(v["output"][0]["content"][0]["text"], "user: a");
    }

    #[test]
    fn openai_streams_server_sent_events_that_join_to_the_text() {
        let req = json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi you"}]});
        let (ct, chunks) = stream(answer(Api::OpenAiChat, &req, STAMP));
        assert_eq!(ct, "text/event-stream");
        assert_eq!(chunks.last().unwrap(), "data: [DONE]\n\n");
        let text: String = chunks
            .iter()
            .filter_map(|c| c.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(String::from)
            })
            .collect();
        assert_eq!(text, "user: hi you");
        let req = json!({"model": "m", "stream": true, "input": "hi"});
        let (_, chunks) = stream(answer(Api::OpenAiResponses, &req, STAMP));
        assert!(chunks[0].starts_with("event: response.created\ndata: "));
        assert!(
            chunks
                .last()
                .unwrap()
                .starts_with("event: response.completed\n")
        );
        assert!(chunks.iter().any(|c| c.contains("\"delta\":\"user:\"")));
    }

    #[test]
    fn ollama_streams_ndjson_by_default() {
        let req = json!({"model": "llama3", "messages": [{"role": "user", "content": "a b"}]});
        let (ct, chunks) = stream(answer(Api::OllamaChat, &req, STAMP));
        assert_eq!(ct, "application/x-ndjson");
        let lines: Vec<Value> = chunks
            .iter()
            .map(|c| serde_json::from_str(c.trim_end()).unwrap())
            .collect();
        assert_eq!(lines[0]["message"]["content"], "user:");
        assert_eq!(lines[0]["done"], false);
        let last = lines.last().unwrap();
        assert_eq!(
            (last["done"].as_bool(), last["model"].as_str()),
            (Some(true), Some("llama3"))
        );
        let joined: String = lines
            .iter()
            .filter_map(|l| l["message"]["content"].as_str())
            .collect();
        assert_eq!(joined, "user: a b");
    }

    #[test]
    fn bad_requests_get_each_apis_error_shape() {
        let e = answer(Api::OpenAiChat, &json!({"messages": []}), STAMP).unwrap_err();
        assert_eq!(e.status, 400);
        assert_eq!(
            e.body["error"]["message"],
            "you must provide a model parameter"
        );
        let e = answer(Api::OllamaGenerate, &json!({"prompt": "x"}), STAMP).unwrap_err();
        assert_eq!(e.body, json!({"error": "model is required"}));
        assert!(answer(Api::OllamaChat, &json!([1]), STAMP).is_err());
    }
}
