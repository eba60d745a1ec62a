//! LLM request rewriting for Pods that opt in (`ghostwire.dev/ai: "true"`, or the seed's
//! `kube-gateway.io/ai`): plaintext HTTP to in-cluster model servers speaking the OpenAI or
//! Ollama APIs. The policy is the seed's ConfigMap JSON ([`Policy`]); the data path asks
//! [`Rewriter::request`] what to do with each request and runs the answer through a
//! [`ResponseFilter`]. Anything that is not a model API request, or that does not parse,
//! passes through unchanged (the seed dropped it). HTTPS upstreams would need TLS interception
//! and are out of scope.
//!
//! Pure: no I/O, no clock; the proxy owns sockets and the ConfigMap watch.

pub mod api;
pub mod config;
pub mod encoding;
pub mod stream;
mod text;

pub use api::{Api, Change};
pub use config::{ConfigError, Policy};
pub use stream::ResponseFilter;

/// What a blocked request is told.
pub const BLOCKED_MESSAGE: &str = "This request was blocked by the Pod's AI policy (ghostwire).";

/// The policy in force for one Pod, with its model override annotation.
#[derive(Debug, Clone, Default)]
pub struct Rewriter {
    pub policy: Policy,
    /// `ghostwire.dev/ai-model` (or the seed's `kube-gateway.io/ai-model`): replaces the model
    /// of every request, after `modelReplace`.
    pub model_override: Option<String>,
}

/// The decision for one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not a model API request this module reads: forward it and its answer untouched.
    Foreign { reason: String },
    /// Forward `body` (`None`: the original bytes, nothing changed; `Some`: the rewritten JSON,
    /// identity-encoded, so drop `Content-Encoding` and set `Content-Length`), then filter the
    /// answer with [`Rewriter::response_filter`].
    Forward {
        api: Api,
        stream: bool,
        body: Option<Vec<u8>>,
        changes: Vec<Change>,
    },
    /// Answer the client with this, and forward nothing.
    Blocked {
        api: Api,
        content_type: &'static str,
        body: Vec<u8>,
    },
}

impl Rewriter {
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_encoding: Option<&str>,
        body: &[u8],
    ) -> Verdict {
        let Some(api) = Api::detect(method, path) else {
            return Verdict::Foreign {
                reason: format!("{method} {path} is not a model API"),
            };
        };
        let decoded = match encoding::decode(content_encoding, body) {
            Ok(d) => d,
            Err(e) => {
                return Verdict::Foreign {
                    reason: e.to_string(),
                };
            }
        };
        let mut json: serde_json::Value = match serde_json::from_slice(&decoded) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            Ok(_) => {
                return Verdict::Foreign {
                    reason: format!("{} body is not a JSON object", api.name()),
                };
            }
            Err(e) => {
                return Verdict::Foreign {
                    reason: format!("{} body is not JSON: {e}", api.name()),
                };
            }
        };
        let stream = api.wants_stream(&json);
        if self.policy.block {
            let model = json.get("model").and_then(|m| m.as_str()).unwrap_or("");
            let (content_type, body) = api::blocked_answer(api, model, stream, BLOCKED_MESSAGE);
            return Verdict::Blocked {
                api,
                content_type,
                body,
            };
        }
        let changes =
            api::rewrite_request(api, &mut json, &self.policy, self.model_override.as_deref());
        let body = (!changes.is_empty()).then(|| json.to_string().into_bytes());
        Verdict::Forward {
            api,
            stream,
            body,
            changes,
        }
    }

    /// The filter for the answer to a forwarded request.
    pub fn response_filter(&self, api: Api, content_type: &str) -> ResponseFilter {
        ResponseFilter::new(api, content_type, &self.policy.banned_words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn rewriter(doc: &str) -> Rewriter {
        Rewriter {
            policy: Policy::parse(doc).unwrap(),
            model_override: None,
        }
    }

    #[test]
    fn unmatched_requests_pass_through_unchanged() {
        let r = rewriter(r#"{"request":{"block":true}}"#);
        for (m, p, b) in [
            ("GET", "/v1/models", &b""[..]),
            ("POST", "/v1/embeddings", b"{}"),
            ("POST", "/v1/chat/completions", b"not json"),
            ("POST", "/api/chat", b"[1,2]"),
        ] {
            assert!(
                matches!(r.request(m, p, None, b), Verdict::Foreign { .. }),
                "{m} {p}"
            );
        }
        let r = rewriter(r#"{"request":{"modelReplace":[{"orig":"a","new":"b"}]}}"#);
        let v = r.request(
            "POST",
            "/api/generate",
            None,
            br#"{"model":"c","prompt":"x"}"#,
        );
        assert_eq!(
            v,
            Verdict::Forward {
                api: Api::OllamaGenerate,
                stream: true,
                body: None,
                changes: vec![]
            }
        );
    }

    #[test]
    fn gzip_bodies_are_rewritten_and_sent_plain() {
        let r = rewriter(r#"{"request":{"userPromptReplace":[{"orig":"joke","new":"fact"}]}}"#);
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(br#"{"model":"m","messages":[{"role":"user","content":"a joke"}]}"#)
            .unwrap();
        let Verdict::Forward {
            body: Some(body),
            changes,
            stream,
            ..
        } = r.request(
            "POST",
            "/v1/chat/completions",
            Some("gzip"),
            &e.finish().unwrap(),
        )
        else {
            panic!("expected a rewrite")
        };
        assert!(!stream);
        assert_eq!(changes, [Change::UserPrompt]);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["messages"][0]["content"], "a fact");
    }

    #[test]
    fn block_answers_in_the_requests_own_shape() {
        let r = rewriter(r#"{"request":{"block":true}}"#);
        let Verdict::Blocked {
            content_type, body, ..
        } = r.request(
            "POST",
            "/v1/chat/completions",
            None,
            br#"{"model":"m","stream":true,"messages":[]}"#,
        )
        else {
            panic!()
        };
        assert_eq!(content_type, "text/event-stream");
        assert_eq!(
            stream::streamed_text(Api::OpenAiChat, content_type, &body),
            BLOCKED_MESSAGE
        );
    }
}
