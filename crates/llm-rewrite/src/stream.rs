//! Masks banned words in model responses: whole JSON bodies, server-sent events (OpenAI
//! `stream: true`) and newline-delimited JSON (Ollama). A streamed word can be split across
//! chunks, so each stream holds back the last `longest banned word - 1` characters of its text
//! until more text (or the end) arrives; the text is re-chunked but never lost or reordered.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::api::Api;
use crate::text::{longest, mask};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Json,
    Sse,
    Ndjson,
    /// Nothing to mask, or a content type this module does not read.
    Opaque,
}

/// One text stream within a response: an OpenAI choice, a Responses output part, or Ollama's one.
type Key = (u64, u64);

struct Carry {
    text: String,
    /// The last event that carried text for this key (its SSE lines other than `data:`, and its
    /// JSON), from which a closing event holding the carried text is made.
    template: (Vec<String>, Value),
}

/// Filters one response body, fed in chunks as they arrive.
pub struct ResponseFilter {
    api: Api,
    framing: Framing,
    banned: Vec<String>,
    hold: usize,
    buf: Vec<u8>,
    carries: BTreeMap<Key, Carry>,
}

impl ResponseFilter {
    /// `content_type` is the response's; `banned` the policy's words.
    pub fn new(api: Api, content_type: &str, banned: &[String]) -> ResponseFilter {
        let mime = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let framing = if banned.is_empty() {
            Framing::Opaque
        } else {
            match mime.as_str() {
                "text/event-stream" => Framing::Sse,
                "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
                    Framing::Ndjson
                }
                "application/json" => Framing::Json,
                _ => Framing::Opaque,
            }
        };
        ResponseFilter {
            api,
            framing,
            banned: banned.to_vec(),
            hold: longest(banned).saturating_sub(1),
            buf: Vec::new(),
            carries: BTreeMap::new(),
        }
    }

    /// Whether this filter changes anything (false: forward the body as it comes).
    pub fn is_active(&self) -> bool {
        self.framing != Framing::Opaque
    }

    /// Takes the next chunk; returns what may be sent on now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        match self.framing {
            Framing::Opaque => chunk.to_vec(),
            Framing::Json => {
                self.buf.extend_from_slice(chunk);
                Vec::new()
            }
            Framing::Ndjson => {
                self.buf.extend_from_slice(chunk);
                let mut out = Vec::new();
                while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.buf.drain(..=end).collect();
                    self.ndjson_line(&line[..line.len() - 1], &mut out);
                    out.push(b'\n');
                }
                out
            }
            Framing::Sse => {
                self.buf.extend_from_slice(chunk);
                let mut out = Vec::new();
                while let Some((end, sep)) = sse_boundary(&self.buf) {
                    let block: Vec<u8> = self.buf.drain(..end + sep).collect();
                    self.sse_event(&block[..end], &mut out);
                }
                out
            }
        }
    }

    /// The end of the body: whatever is still held back.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.buf);
        let mut out = Vec::new();
        match self.framing {
            Framing::Opaque => out = rest,
            Framing::Json => match serde_json::from_slice::<Value>(&rest) {
                Ok(mut v) => {
                    let banned = &self.banned;
                    let mut changed = false;
                    visit_whole_texts(self.api, &mut v, &mut |t| {
                        if let Some(m) = mask(t, banned) {
                            *t = m;
                            changed = true;
                        }
                    });
                    out = if changed {
                        v.to_string().into_bytes()
                    } else {
                        rest
                    };
                }
                Err(_) => out = rest,
            },
            Framing::Ndjson => {
                if !rest.is_empty() {
                    self.ndjson_line(&rest, &mut out);
                }
                for (lines, v) in self.flush_all() {
                    debug_assert!(lines.is_empty());
                    out.extend(v.to_string().into_bytes());
                    out.push(b'\n');
                }
            }
            Framing::Sse => {
                if !rest.is_empty() {
                    self.sse_event(&rest, &mut out);
                }
                for event in self.flush_all() {
                    write_sse(&event, &mut out);
                }
            }
        }
        out
    }

    fn ndjson_line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        match serde_json::from_slice::<Value>(line) {
            Ok(v) => {
                let events = self.event(Vec::new(), v);
                for (i, (_, v)) in events.iter().enumerate() {
                    if i > 0 {
                        out.push(b'\n');
                    }
                    out.extend(v.to_string().into_bytes());
                }
            }
            Err(_) => out.extend_from_slice(line),
        }
    }

    fn sse_event(&mut self, block: &[u8], out: &mut Vec<u8>) {
        let Ok(text) = std::str::from_utf8(block) else {
            out.extend_from_slice(block);
            out.extend_from_slice(b"\n\n");
            return;
        };
        let mut other = Vec::new();
        let mut data = Vec::new();
        for line in text.lines() {
            match line.strip_prefix("data:") {
                Some(d) => data.push(d.strip_prefix(' ').unwrap_or(d)),
                None => other.push(line.to_string()),
            }
        }
        let data = data.join("\n");
        if data.trim() == "[DONE]" {
            for event in self.flush_all() {
                write_sse(&event, out);
            }
            out.extend_from_slice(block);
            out.extend_from_slice(b"\n\n");
            return;
        }
        match serde_json::from_str::<Value>(&data) {
            Ok(v) => {
                for event in self.event(other, v) {
                    write_sse(&event, out);
                }
            }
            Err(_) => {
                out.extend_from_slice(block);
                out.extend_from_slice(b"\n\n");
            }
        }
    }

    /// One event in; the events to send out (a held-back text may come out first).
    fn event(&mut self, lines: Vec<String>, mut v: Value) -> Vec<(Vec<String>, Value)> {
        let mut before = Vec::new();
        match self.api {
            Api::OpenAiChat | Api::OpenAiCompletions => {
                let chat = self.api == Api::OpenAiChat;
                if let Some(Value::Array(choices)) = v.get("choices").cloned() {
                    for (pos, choice) in choices.iter().enumerate() {
                        let index = choice
                            .get("index")
                            .and_then(Value::as_u64)
                            .unwrap_or(pos as u64);
                        let terminal = choice.get("finish_reason").is_some_and(|f| !f.is_null());
                        let path: &[&str] = if chat {
                            &["delta", "content"]
                        } else {
                            &["text"]
                        };
                        let template = (lines.clone(), v.clone());
                        let c = &mut v["choices"][pos];
                        self.step((index, 0), c, path, terminal, template);
                    }
                }
            }
            Api::OllamaChat | Api::OllamaGenerate => {
                let terminal = v.get("done").and_then(Value::as_bool).unwrap_or(false);
                let path: &[&str] = if self.api == Api::OllamaChat {
                    &["message", "content"]
                } else {
                    &["response"]
                };
                let template = (lines.clone(), v.clone());
                self.step((0, 0), &mut v, path, terminal, template);
            }
            Api::OpenAiResponses => {
                let key = (
                    v.get("output_index").and_then(Value::as_u64).unwrap_or(0),
                    v.get("content_index").and_then(Value::as_u64).unwrap_or(0),
                );
                match v.get("type").and_then(Value::as_str).unwrap_or("") {
                    "response.output_text.delta" => {
                        let template = (lines.clone(), v.clone());
                        self.step(key, &mut v, &["delta"], false, template);
                    }
                    "response.output_text.done" => {
                        before.extend(self.flush(key));
                        self.mask_at(&mut v, &["text"]);
                    }
                    "response.content_part.done" => self.mask_at(&mut v, &["part", "text"]),
                    "response.completed" | "response.incomplete" | "response.failed" => {
                        before.extend(self.flush_all());
                        if let Some(r) = v.get_mut("response") {
                            let banned = &self.banned;
                            visit_whole_texts(Api::OpenAiResponses, r, &mut |t| {
                                if let Some(m) = mask(t, banned) {
                                    *t = m;
                                }
                            });
                        }
                    }
                    _ => {}
                }
            }
        }
        before.push((lines, v));
        before
    }

    /// Appends this event's text to the stream's held-back text, masks, and lets out all but
    /// the tail that could still be the start of a banned word (all of it at the stream's end).
    fn step(
        &mut self,
        key: Key,
        obj: &mut Value,
        path: &[&str],
        terminal: bool,
        template: (Vec<String>, Value),
    ) {
        let text = get_str(obj, path);
        let carry = self.carries.remove(&key);
        if text.is_none() && carry.is_none() {
            return;
        }
        let mut pending = carry.map(|c| c.text).unwrap_or_default();
        pending.push_str(text.unwrap_or(""));
        let pending = mask(&pending, &self.banned).unwrap_or(pending);
        let count = pending.chars().count();
        let (now, later) = if terminal || count <= self.hold {
            if terminal {
                (pending, String::new())
            } else {
                (String::new(), pending)
            }
        } else {
            let cut = pending
                .char_indices()
                .nth(count - self.hold)
                .map_or(pending.len(), |(i, _)| i);
            let (a, b) = pending.split_at(cut);
            (a.to_string(), b.to_string())
        };
        if text.is_some() || !now.is_empty() {
            set_str(obj, path, now);
        }
        if !later.is_empty() {
            self.carries.insert(
                key,
                Carry {
                    text: later,
                    template,
                },
            );
        }
    }

    fn mask_at(&self, v: &mut Value, path: &[&str]) {
        if let Some(t) = get_str(v, path)
            && let Some(m) = mask(t, &self.banned)
        {
            set_str(v, path, m);
        }
    }

    /// A stream's held-back text as one more event shaped like its last one.
    fn flush(&mut self, key: Key) -> Option<(Vec<String>, Value)> {
        let c = self.carries.remove(&key)?;
        let (lines, mut v) = c.template;
        let path: &[&str] = match self.api {
            Api::OpenAiChat => &["choices", "0", "delta", "content"],
            Api::OpenAiCompletions => &["choices", "0", "text"],
            Api::OpenAiResponses => &["delta"],
            Api::OllamaChat => &["message", "content"],
            Api::OllamaGenerate => &["response"],
        };
        if let Some(Value::Array(choices)) = v.get_mut("choices") {
            // Keep only the choice this text belongs to.
            choices.retain(|ch| ch.get("index").and_then(Value::as_u64).unwrap_or(0) == key.0);
        }
        set_str(&mut v, path, c.text);
        Some((lines, v))
    }

    fn flush_all(&mut self) -> Vec<(Vec<String>, Value)> {
        let keys: Vec<Key> = self.carries.keys().copied().collect();
        keys.into_iter().filter_map(|k| self.flush(k)).collect()
    }
}

/// The end of the next SSE event: (its length, the separator's length).
fn sse_boundary(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

fn write_sse((lines, v): &(Vec<String>, Value), out: &mut Vec<u8>) {
    for l in lines {
        out.extend_from_slice(l.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend(v.to_string().into_bytes());
    out.extend_from_slice(b"\n\n");
}

fn get_str<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for p in path {
        cur = match p.parse::<usize>() {
            Ok(i) => cur.get(i)?,
            Err(_) => cur.get(*p)?,
        };
    }
    cur.as_str()
}

/// Sets a string at `path`, creating objects on the way (never array slots).
fn set_str(v: &mut Value, path: &[&str], s: String) {
    let mut cur = v;
    for p in path {
        cur = match p.parse::<usize>() {
            Ok(i) => match cur.get_mut(i) {
                Some(c) => c,
                None => return,
            },
            Err(_) => {
                if !cur.is_object() {
                    return;
                }
                cur.as_object_mut()
                    .expect("checked above")
                    .entry(p.to_string())
                    .or_insert(Value::Null)
            }
        };
    }
    *cur = Value::String(s);
}

/// Calls `f` on each answer text of a whole (non-streamed) response.
pub fn visit_whole_texts(api: Api, v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    let mut at = |v: Option<&mut Value>| {
        if let Some(Value::String(s)) = v {
            f(s);
        }
    };
    match api {
        Api::OpenAiChat | Api::OpenAiCompletions => {
            if let Some(Value::Array(choices)) = v.get_mut("choices") {
                for c in choices {
                    if api == Api::OpenAiChat {
                        at(c.get_mut("message").and_then(|m| m.get_mut("content")));
                    } else {
                        at(c.get_mut("text"));
                    }
                }
            }
        }
        Api::OpenAiResponses => {
            if let Some(Value::Array(items)) = v.get_mut("output") {
                for item in items {
                    if let Some(Value::Array(parts)) = item.get_mut("content") {
                        for p in parts {
                            if p.get("type").and_then(Value::as_str) == Some("output_text") {
                                at(p.get_mut("text"));
                            }
                        }
                    }
                }
            }
            at(v.get_mut("output_text"));
        }
        Api::OllamaChat => at(v.get_mut("message").and_then(|m| m.get_mut("content"))),
        Api::OllamaGenerate => at(v.get_mut("response")),
    }
}

/// The answer texts of a whole response, in order (for checks and logs).
pub fn whole_texts(api: Api, v: &Value) -> Vec<String> {
    let mut v = v.clone();
    let mut out = Vec::new();
    visit_whole_texts(api, &mut v, &mut |t| out.push(t.clone()));
    out
}

/// The text a client would assemble from a streamed response (first choice / output part).
pub fn streamed_text(api: Api, content_type: &str, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let events: Vec<Value> = if content_type.starts_with("text/event-stream") {
        text.split("\n\n")
            .filter_map(|e| {
                let data: Vec<&str> = e
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:").map(str::trim_start))
                    .collect();
                serde_json::from_str(&data.join("\n")).ok()
            })
            .collect()
    } else {
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let mut out = String::new();
    for e in &events {
        let piece = match api {
            Api::OpenAiChat => get_str(e, &["choices", "0", "delta", "content"]),
            Api::OpenAiCompletions => get_str(e, &["choices", "0", "text"]),
            Api::OpenAiResponses => (e.get("type").and_then(Value::as_str)
                == Some("response.output_text.delta"))
            .then(|| get_str(e, &["delta"]))
            .flatten(),
            Api::OllamaChat => get_str(e, &["message", "content"]),
            Api::OllamaGenerate => get_str(e, &["response"]),
        };
        out.push_str(piece.unwrap_or(""));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn banned() -> Vec<String> {
        vec!["rabbit".into(), "hat".into()]
    }

    fn run(api: Api, ct: &str, chunks: &[&[u8]]) -> Vec<u8> {
        let mut f = ResponseFilter::new(api, ct, &banned());
        let mut out = Vec::new();
        for c in chunks {
            out.extend(f.push(c));
        }
        out.extend(f.finish());
        out
    }

    fn chat_sse(pieces: &[&str]) -> Vec<u8> {
        let mut s = String::new();
        for p in pieces {
            s += &format!(
                "data: {}\n\n",
                json!({"object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":p},"finish_reason":null}]})
            );
        }
        s += &format!(
            "data: {}\n\ndata: [DONE]\n\n",
            json!({"object":"chat.completion.chunk","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]})
        );
        s.into_bytes()
    }

    #[test]
    fn whole_bodies_are_masked_in_every_api() {
        for (api, body) in [
            (
                Api::OpenAiChat,
                json!({"choices":[{"message":{"content":"A Rabbit in a hat"}}]}),
            ),
            (
                Api::OpenAiCompletions,
                json!({"choices":[{"text":"A Rabbit in a hat"}]}),
            ),
            (
                Api::OpenAiResponses,
                json!({"output":[{"type":"message","content":[{"type":"output_text","text":"A Rabbit in a hat"}]}]}),
            ),
            (
                Api::OllamaChat,
                json!({"message":{"content":"A Rabbit in a hat"},"done":true}),
            ),
            (
                Api::OllamaGenerate,
                json!({"response":"A Rabbit in a hat","done":true}),
            ),
        ] {
            let out = run(api, "application/json", &[body.to_string().as_bytes()]);
            let v: Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(whole_texts(api, &v), ["A ****** in a ***"], "{api:?}");
        }
    }

    #[test]
    fn a_word_split_across_sse_chunks_is_masked() {
        let body = chat_sse(&["The rab", "bit sat in the h", "at."]);
        // Fed byte by byte too, so event boundaries fall anywhere.
        let whole = run(Api::OpenAiChat, "text/event-stream", &[&body]);
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        let dribbled = run(Api::OpenAiChat, "text/event-stream", &bytes);
        for out in [whole, dribbled] {
            assert_eq!(
                streamed_text(Api::OpenAiChat, "text/event-stream", &out),
                "The ****** sat in the ***."
            );
            let s = String::from_utf8(out).unwrap();
            assert!(s.ends_with("data: [DONE]\n\n"), "{s}");
            assert!(!s.to_lowercase().contains("rab"), "{s}");
        }
    }

    #[test]
    fn held_text_comes_out_before_done_even_without_a_final_chunk() {
        let s = format!(
            "data: {}\n\ndata: [DONE]\n\n",
            json!({"choices":[{"index":0,"delta":{"content":"ends with ra"},"finish_reason":null}]})
        );
        let out = run(Api::OpenAiChat, "text/event-stream", &[s.as_bytes()]);
        assert_eq!(
            streamed_text(Api::OpenAiChat, "text/event-stream", &out),
            "ends with ra"
        );
        assert!(
            String::from_utf8(out)
                .unwrap()
                .ends_with("data: [DONE]\n\n")
        );
    }

    #[test]
    fn ollama_ndjson_and_responses_events() {
        let lines = ["Hare or rab", "bit?", ""]
            .iter()
            .enumerate()
            .map(|(i, t)| {
                json!({"model":"m","message":{"role":"assistant","content":t},"done":i == 2})
                    .to_string()
                    + "\n"
            })
            .collect::<String>();
        let out = run(Api::OllamaChat, "application/x-ndjson", &[lines.as_bytes()]);
        assert_eq!(
            streamed_text(Api::OllamaChat, "application/x-ndjson", &out),
            "Hare or ******?"
        );
        assert_eq!(
            String::from_utf8_lossy(&out).lines().count(),
            3,
            "one line per event"
        );

        let ev = |t: &str, extra: Value| {
            let mut v = json!({"type":t,"output_index":0,"content_index":0});
            v.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            format!("event: {t}\ndata: {v}\n\n")
        };
        let body = [
            ev("response.output_text.delta", json!({"delta":"a HA"})),
            ev("response.output_text.delta", json!({"delta":"T"})),
            ev("response.output_text.done", json!({"text":"a HAT"})),
            ev("response.completed", json!({"response":{"output":[{"type":"message","content":[{"type":"output_text","text":"a HAT"}]}]}})),
        ]
        .concat();
        let out = run(
            Api::OpenAiResponses,
            "text/event-stream; charset=utf-8",
            &[body.as_bytes()],
        );
        let s = String::from_utf8(out.clone()).unwrap();
        assert_eq!(
            streamed_text(Api::OpenAiResponses, "text/event-stream", &out),
            "a ***"
        );
        assert!(!s.contains("HA"), "{s}");
        assert!(
            s.contains("event: response.completed\n"),
            "event lines are kept: {s}"
        );
    }

    #[test]
    fn foreign_content_and_no_policy_pass_byte_for_byte() {
        let body = b"data: not json\n\n: comment\n\n".to_vec();
        assert_eq!(run(Api::OpenAiChat, "text/event-stream", &[&body]), body);
        let mut f = ResponseFilter::new(Api::OpenAiChat, "text/plain", &banned());
        assert!(!f.is_active());
        assert_eq!(f.push(b"rabbit"), b"rabbit");
        let mut f = ResponseFilter::new(Api::OpenAiChat, "application/json", &[]);
        assert_eq!(f.push(b"{\"rabbit\":1}"), b"{\"rabbit\":1}");
        let bad = b"{\"choices\": [rabbit".to_vec();
        assert_eq!(run(Api::OpenAiChat, "application/json", &[&bad]), bad);
    }

    proptest! {
        /// However the stream is cut into events and bytes, the client reads the original
        /// text with every banned word masked, and nothing else changed.
        #[test]
        fn streams_mask_exactly_like_the_whole_text(
            words in proptest::collection::vec(prop_oneof!["rabbit", "RaBBit", "hat", "the", " ", "é", "ra", "bbi"], 1..30),
            cuts in proptest::collection::vec(1usize..12, 1..10),
            byte_step in 1usize..40,
        ) {
            let text: String = words.concat();
            let chars: Vec<char> = text.chars().collect();
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts.iter().cycle() {
                if at >= chars.len() { break; }
                let end = (at + c).min(chars.len());
                pieces.push(chars[at..end].iter().collect::<String>());
                at = end;
            }
            let refs: Vec<&str> = pieces.iter().map(String::as_str).collect();
            let body = chat_sse(&refs);
            let chunks: Vec<&[u8]> = body.chunks(byte_step).collect();
            let out = run(Api::OpenAiChat, "text/event-stream", &chunks);
            let expected = mask(&text, &banned()).unwrap_or(text.clone());
            prop_assert_eq!(streamed_text(Api::OpenAiChat, "text/event-stream", &out), expected);
        }
    }
}
