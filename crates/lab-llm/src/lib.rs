//! The lab's fake model server (the `lab/fake-llm` image, `ghostwire lab fake-llm`): OpenAI's
//! `POST /v1/chat/completions`, `/v1/completions` and `/v1/responses`, and Ollama's
//! `POST /api/chat` and `/api/generate`, whole or streamed (Server-Sent Events for OpenAI,
//! NDJSON for Ollama, one model "token" per word, sent as separate writes), answering with the
//! model and the prompt they received (see [`answer`]), so tests can check what a proxy in
//! between rewrote. Request bodies may be `Content-Encoding: gzip` or `deflate`.
//!
//! Also: `GET /` (`fake-llm is running`, for probes), `GET /v1/models` and `GET /api/tags`
//! (empty lists), and `GET /fake-llm/last`, the last request body as received (decoded), with
//! its path in the `x-fake-llm-path` header. Every answer carries `x-fake-llm-model`.
//!
//! Not done: embeddings, tools and function calls, images, logprobs; tokens are words.
#![forbid(unsafe_code)]

pub mod answer;

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Largest request body accepted (decoded), 8 MiB.
pub const MAX_BODY: usize = 8 << 20;

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("accepting connections: {0}")]
    Accept(#[source] std::io::Error),
}

/// How to serve.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Pause between the pieces of a streamed answer.
    pub chunk_delay: Duration,
}

#[derive(Default)]
struct State {
    opts: Options,
    counter: AtomicU64,
    last: Mutex<Option<(String, Value)>>,
}

type Body = BoxBody<Bytes, Infallible>;

fn json_response(status: u16, model: Option<&str>, v: &Value) -> Response<Body> {
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(m) = model {
        b = b.header("x-fake-llm-model", m);
    }
    b.body(Full::new(Bytes::from(v.to_string())).boxed())
        .unwrap_or_default()
}

/// The body, decoded per `Content-Encoding` (identity, gzip, deflate), at most [`MAX_BODY`].
fn decode(encoding: &str, raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let limit = MAX_BODY as u64 + 1;
    let read = match encoding.trim().to_ascii_lowercase().as_str() {
        "" | "identity" => {
            out.extend_from_slice(raw);
            Ok(raw.len())
        }
        "gzip" | "x-gzip" => flate2::read::GzDecoder::new(raw)
            .take(limit)
            .read_to_end(&mut out),
        "deflate" => flate2::read::ZlibDecoder::new(raw)
            .take(limit)
            .read_to_end(&mut out),
        other => return Err(format!("unsupported Content-Encoding {other:?}")),
    };
    read.map_err(|e| format!("cannot decode the {encoding} body: {e}"))?;
    if out.len() > MAX_BODY {
        return Err(format!("request body over {MAX_BODY} bytes"));
    }
    Ok(out)
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    if method == Method::GET {
        return match path.as_str() {
            "/" => Response::new(Full::new(Bytes::from_static(b"fake-llm is running")).boxed()),
            "/v1/models" => json_response(200, None, &json!({"object": "list", "data": []})),
            "/api/tags" => json_response(200, None, &json!({"models": []})),
            "/fake-llm/last" => match crate_lock(&state.last).clone() {
                Some((p, body)) => {
                    let mut r = json_response(200, None, &body);
                    if let Ok(v) = p.parse() {
                        r.headers_mut().insert("x-fake-llm-path", v);
                    }
                    r
                }
                None => json_response(404, None, &json!({"error": "no request yet"})),
            },
            _ => json_response(404, None, &json!({"error": format!("no such path {path}")})),
        };
    }
    let Some(api) = answer::Api::of_path(&path).filter(|_| method == Method::POST) else {
        return json_response(
            404,
            None,
            &json!({"error": format!("no such endpoint {method} {path}")}),
        );
    };
    let refuse = |msg: String| json_response(400, None, &answer::error_body(api.is_ollama(), &msg));
    let encoding = req
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let raw = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => return refuse(format!("reading the request body: {e}")),
    };
    let body = match decode(&encoding, &raw) {
        Ok(b) => b,
        Err(e) => return refuse(e),
    };
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return refuse(format!("the request body is not JSON: {e}")),
    };
    *crate_lock(&state.last) = Some((path.clone(), parsed.clone()));
    let stamp = answer::Stamp {
        id: state.counter.fetch_add(1, Ordering::Relaxed),
        now: jiff::Timestamp::now().as_second(),
    };
    let model = parsed["model"].as_str().unwrap_or_default().to_string();
    match answer::answer(api, &parsed, stamp) {
        Err(r) => json_response(r.status, None, &r.body),
        Ok(answer::Answer::Whole(v)) => json_response(200, Some(&model), &v),
        Ok(answer::Answer::Stream {
            content_type,
            chunks,
        }) => {
            let delay = state.opts.chunk_delay;
            let stream = futures::stream::iter(chunks).then(move |c| async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok::<_, Infallible>(Frame::data(Bytes::from(c)))
            });
            Response::builder()
                .header(header::CONTENT_TYPE, content_type)
                .header(header::CACHE_CONTROL, "no-cache")
                .header("x-fake-llm-model", model)
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap_or_default()
        }
    }
}

fn crate_lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves HTTP/1.1 on every listener until the future is dropped.
pub async fn serve(listeners: Vec<tokio::net::TcpListener>, opts: Options) -> Result<(), Error> {
    let state = Arc::new(State {
        opts,
        ..State::default()
    });
    let mut tasks: tokio::task::JoinSet<Result<(), Error>> = tokio::task::JoinSet::new();
    for l in listeners {
        let state = state.clone();
        tasks.spawn(async move {
            loop {
                let (tcp, _) = l.accept().await.map_err(Error::Accept)?;
                let state = state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(state, req).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(tcp);
                    if let Err(e) = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await
                    {
                        tracing::debug!(error = %e, "fake-llm connection");
                    }
                });
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        if let Ok(Err(e)) = r {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn bodies_are_decoded_per_content_encoding() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{\"a\":1}").unwrap();
        let gz = gz.finish().unwrap();
        assert_eq!(decode("gzip", &gz).unwrap(), b"{\"a\":1}");
        assert_eq!(decode("", b"x").unwrap(), b"x");
        assert!(
            decode("gzip", b"not gzip")
                .unwrap_err()
                .contains("cannot decode")
        );
        assert!(decode("br", b"x").unwrap_err().contains("\"br\""));
    }
}
