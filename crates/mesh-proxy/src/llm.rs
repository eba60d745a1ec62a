//! LLM request rewriting on the proxy's outbound HTTP path: a tower layer in front of
//! [`crate::http::HttpService`], for Pods that opt in (`ghostwire.dev/ai`).
//!
//! Per request: a `POST` to an OpenAI or Ollama endpoint (`llm_rewrite::Api::detect`) has its
//! body read whole (at most [`MAX_BODY`] bytes), decoded and handed to the Pod's
//! [`Rewriter`]; the rewritten body goes on identity-encoded, a blocked one is answered here,
//! and the answer (whole JSON, SSE or NDJSON) streams through the policy's banned-word filter
//! chunk by chunk. Every other request, and a model request whose body does not parse, goes on
//! with its headers and bytes as they came. The policy is read per request from a
//! [`PolicyHandle`] that its owner (the identity agent's ConfigMap watch) swaps whole, so a
//! change applies to the next request without a restart.
//!
//! Plaintext HTTP only: an HTTPS upstream is opaque TLS to the proxy (interception is out of
//! scope).

use crate::Direction;
use crate::http::{CollectError, error_response};
use crate::metrics::Labels;
use crate::pool::{Body, BoxError};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use llm_rewrite::{Api, ResponseFilter, Rewriter, Verdict};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::watch;

/// Largest request body read for rewriting; a larger model request is answered 413.
pub const MAX_BODY: usize = llm_rewrite::encoding::MAX_DECODED as usize;

/// The Pod's policy as the data path sees it now. `None`: nothing is rewritten (the Pod is not
/// opted in, or its policy is not known yet).
#[derive(Clone)]
pub struct PolicyHandle(watch::Receiver<Option<Arc<Rewriter>>>);

impl PolicyHandle {
    /// A handle and the sender that swaps its policy.
    pub fn channel(
        initial: Option<Rewriter>,
    ) -> (watch::Sender<Option<Arc<Rewriter>>>, PolicyHandle) {
        let (tx, rx) = watch::channel(initial.map(Arc::new));
        (tx, PolicyHandle(rx))
    }

    /// A policy that never changes (tests, a fixed file).
    pub fn fixed(r: Rewriter) -> PolicyHandle {
        let (tx, h) = PolicyHandle::channel(Some(r));
        // The receiver keeps the last value once the sender is gone.
        drop(tx);
        h
    }

    pub fn current(&self) -> Option<Arc<Rewriter>> {
        self.0.borrow().clone()
    }
}

/// How a request fared, the `outcome` label of `ghostwire_proxy_llm_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The request's body was changed, or its answer went through the banned-word filter.
    Rewritten,
    /// Answered here by the policy's `block`; nothing was sent upstream.
    Blocked,
    /// Forwarded as it came, and its answer too.
    Passed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Rewritten => "rewritten",
            Outcome::Blocked => "blocked",
            Outcome::Passed => "passed",
        }
    }
}

/// The layer: wraps a service with the Pod's policy.
#[derive(Clone)]
pub struct LlmLayer {
    policy: PolicyHandle,
    counter: Family<Labels, Counter>,
}

impl LlmLayer {
    /// `counter` is the proxy's `llm_requests` family (labels `api`, `outcome`).
    pub fn new(policy: PolicyHandle, counter: Family<Labels, Counter>) -> LlmLayer {
        LlmLayer { policy, counter }
    }

    /// Whether a policy is in force now (the Pod is opted in and its policy is known).
    pub fn active(&self) -> bool {
        self.policy.0.borrow().is_some()
    }
}

impl<S> tower::Layer<S> for LlmLayer {
    type Service = LlmService<S>;
    fn layer(&self, inner: S) -> LlmService<S> {
        LlmService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct LlmService<S> {
    inner: S,
    layer: LlmLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<Request<Body>> for LlmService<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        // The readied service serves this request; a clone takes its place for the next.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move { Ok(layer.serve(inner, req).await) })
    }
}

/// A response on its way from the inner service.
struct Responding(BoxFuture<Result<Response<Body>, Infallible>>);

impl Future for Responding {
    type Output = Response<Body>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response<Body>> {
        match self.0.as_mut().poll(cx) {
            Poll::Ready(Ok(r)) => Poll::Ready(r),
            Poll::Ready(Err(e)) => match e {},
            Poll::Pending => Poll::Pending,
        }
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|e| -> BoxError { match e {} })
        .boxed()
}

impl LlmLayer {
    fn count(&self, api: Option<Api>, outcome: Outcome) {
        let labels: Labels = vec![
            ("api", api.map_or("other", Api::name).into()),
            ("outcome", outcome.as_str().into()),
        ];
        self.counter.get_or_create(&labels).inc();
    }

    async fn serve<S>(&self, mut inner: S, req: Request<Body>) -> Response<Body>
    where
        S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
        S::Future: Send + 'static,
    {
        // The inner future boxed at once (no async block around it): rustc's `Send` check of
        // an async body holding `S::Future` would fail on the erased lifetime in `Body`'s
        // error type.
        let call = |inner: &mut S, req: Request<Body>| -> Responding {
            Responding(Box::pin(inner.call(req)))
        };
        let api = Api::detect(req.method().as_str(), req.uri().path());
        let (Some(rw), Some(api)) = (self.policy.current(), api) else {
            self.count(api, Outcome::Passed);
            return call(&mut inner, req).await;
        };
        let (mut parts, body) = req.into_parts();
        if hyper::body::Body::size_hint(&body)
            .upper()
            .is_some_and(|n| n > MAX_BODY as u64)
        {
            self.count(Some(api), Outcome::Passed);
            return call(&mut inner, Request::from_parts(parts, body)).await;
        }
        let bytes = match crate::http::collect(body, MAX_BODY).await {
            Ok(b) => b,
            Err(e) => {
                let status = match e {
                    CollectError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
                    CollectError::Body(_) => StatusCode::BAD_REQUEST,
                };
                return error_response(
                    status,
                    Direction::Outbound,
                    &format!("{} request: {e}", api.name()),
                );
            }
        };
        let encoding = parts
            .headers
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let verdict = rw.request(
            parts.method.as_str(),
            parts.uri.path(),
            encoding.as_deref(),
            &bytes,
        );
        let (api, changes, resp) = match verdict {
            Verdict::Foreign { reason } => {
                tracing::debug!(%reason, path = %parts.uri.path(), "model request passed through unread");
                self.count(Some(api), Outcome::Passed);
                return call(&mut inner, Request::from_parts(parts, full(bytes))).await;
            }
            Verdict::Blocked {
                api,
                content_type,
                body,
            } => {
                if rw.policy.debug {
                    tracing::info!(
                        api = api.name(),
                        "model request blocked by the Pod's AI policy"
                    );
                }
                self.count(Some(api), Outcome::Blocked);
                let mut r = Response::new(full(body));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                r.headers_mut()
                    .insert("x-ghostwire-ai", HeaderValue::from_static("blocked"));
                return r;
            }
            Verdict::Forward {
                api,
                body: new_body,
                changes,
                ..
            } => {
                let body = match new_body {
                    Some(b) => {
                        parts.headers.remove(header::CONTENT_ENCODING);
                        parts.headers.insert(header::CONTENT_LENGTH, b.len().into());
                        full(b)
                    }
                    None => full(bytes),
                };
                if !rw.policy.banned_words.is_empty() {
                    // The filter reads text: ask for an answer that is not compressed.
                    parts.headers.remove(header::ACCEPT_ENCODING);
                }
                if rw.policy.debug && !changes.is_empty() {
                    tracing::info!(api = api.name(), ?changes, "model request rewritten");
                }
                let resp = call(&mut inner, Request::from_parts(parts, body)).await;
                (api, changes, resp)
            }
        };
        let (mut p, b) = resp.into_parts();
        let content_type = p
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let encoded = p
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"identity"));
        let filter = rw.response_filter(api, content_type);
        let filtered = filter.is_active() && !encoded && p.status.is_success();
        if filter.is_active() && encoded {
            tracing::warn!(
                api = api.name(),
                "the model server compressed its answer although asked not to: banned words are not masked in it"
            );
        }
        self.count(
            Some(api),
            if filtered || !changes.is_empty() {
                Outcome::Rewritten
            } else {
                Outcome::Passed
            },
        );
        if !filtered {
            return Response::from_parts(p, b);
        }
        p.headers.remove(header::CONTENT_LENGTH);
        Response::from_parts(p, Filtered::new(b, filter).boxed())
    }
}

/// A response body run through a [`ResponseFilter`] as it streams.
pub struct Filtered {
    inner: Body,
    filter: ResponseFilter,
    /// Trailers held back until the filter's rest is out.
    trailers: Option<http::HeaderMap>,
    done: bool,
}

impl Filtered {
    pub fn new(inner: Body, filter: ResponseFilter) -> Filtered {
        Filtered {
            inner,
            filter,
            trailers: None,
            done: false,
        }
    }
}

impl hyper::body::Body for Filtered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(this.trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let end = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        let out = this.filter.push(&data);
                        if !out.is_empty() {
                            return Poll::Ready(Some(Ok(Frame::data(out.into()))));
                        }
                        continue;
                    }
                    Err(frame) => {
                        this.trailers = frame.into_trailers().ok();
                        true
                    }
                },
                Poll::Ready(None) => true,
            };
            if end {
                this.done = true;
                let out = this.filter.finish();
                if !out.is_empty() {
                    return Poll::Ready(Some(Ok(Frame::data(out.into()))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llm_rewrite::Policy;
    use std::sync::Mutex;
    use tower::{Layer, ServiceExt};

    /// What the upstream saw: method, path, headers, body.
    type Seen = Arc<Mutex<Vec<(String, http::HeaderMap, Bytes)>>>;

    /// An upstream that records the request and answers with `answer` (content type, pieces,
    /// each its own frame).
    fn upstream(
        seen: Seen,
        content_type: &'static str,
        pieces: Vec<&'static str>,
    ) -> tower::util::BoxCloneService<Request<Body>, Response<Body>, Infallible> {
        tower::util::BoxCloneService::new(tower::service_fn(move |req: Request<Body>| {
            let (seen, pieces) = (seen.clone(), pieces.clone());
            async move {
                let (p, b) = req.into_parts();
                let body = b.collect().await.unwrap().to_bytes();
                seen.lock()
                    .unwrap()
                    .push((p.uri.path().to_string(), p.headers, body));
                let frames = pieces
                    .into_iter()
                    .map(|s| Ok::<_, BoxError>(Frame::data(Bytes::from_static(s.as_bytes()))));
                let body = http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed();
                let mut r = Response::new(body);
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                Ok::<_, Infallible>(r)
            }
        }))
    }

    fn layer(doc: &str, model: Option<&str>) -> (LlmLayer, Family<Labels, Counter>) {
        let counter = Family::<Labels, Counter>::default();
        let rw = Rewriter {
            policy: Policy::parse(doc).unwrap(),
            model_override: model.map(str::to_string),
        };
        (
            LlmLayer::new(PolicyHandle::fixed(rw), counter.clone()),
            counter,
        )
    }

    fn post(path: &str, body: &'static str) -> Request<Body> {
        let mut r = Request::new(full(body));
        *r.method_mut() = http::Method::POST;
        *r.uri_mut() = path.parse().unwrap();
        r.headers_mut()
            .insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        r
    }

    fn count(c: &Family<Labels, Counter>, api: &str, outcome: &str) -> u64 {
        c.get_or_create(&vec![("api", api.into()), ("outcome", outcome.into())])
            .get()
    }

    async fn text(r: Response<Body>) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_chat_request_is_rewritten_and_its_answer_masked() {
        let seen = Seen::default();
        let (l, counter) = layer(
            r#"{"request":{"modelReplace":[{"orig":"gpt-4o","new":"small"}]},
                "response":{"bannedWords":["rabbit"]}}"#,
            None,
        );
        let svc = l.layer(upstream(
            seen.clone(),
            "application/json",
            vec![r#"{"choices":[{"message":{"role":"assistant","content":"a Rabbit!"}}]}"#],
        ));
        let r = svc
            .oneshot(post(
                "/v1/chat/completions",
                r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#,
            ))
            .await
            .unwrap();
        let answer: serde_json::Value = serde_json::from_str(&text(r).await).unwrap();
        assert_eq!(answer["choices"][0]["message"]["content"], "a ******!");
        let seen = seen.lock().unwrap();
        let sent: serde_json::Value = serde_json::from_slice(&seen[0].2).unwrap();
        assert_eq!(sent["model"], "small");
        assert_eq!(
            seen[0].1[header::CONTENT_LENGTH],
            seen[0].2.len().to_string()
        );
        // Asked for an uncompressed answer, since it is filtered.
        assert!(!seen[0].1.contains_key(header::ACCEPT_ENCODING));
        assert_eq!(count(&counter, "openai-chat", "rewritten"), 1);
    }

    #[tokio::test]
    async fn a_streamed_word_split_across_frames_is_masked() {
        let (l, _) = layer(r#"{"response":{"bannedWords":["rabbit"]}}"#, None);
        let svc = l.layer(upstream(
            Seen::default(),
            "application/x-ndjson",
            vec![
                "{\"message\":{\"role\":\"assistant\",\"content\":\"the ra\"},\"done\":false}\n",
                "{\"message\":{\"role\":\"assistant\",\"content\":\"bbit ran\"},\"done\":false}\n",
                "{\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true}\n",
            ],
        ));
        let r = svc
            .oneshot(post(
                "/api/chat",
                r#"{"model":"llama3","messages":[{"role":"user","content":"hi"}]}"#,
            ))
            .await
            .unwrap();
        let body = text(r).await;
        let joined = llm_rewrite::stream::streamed_text(
            Api::OllamaChat,
            "application/x-ndjson",
            body.as_bytes(),
        );
        assert_eq!(joined, "the ****** ran", "{body}");
    }

    #[tokio::test]
    async fn other_requests_and_bad_bodies_pass_unchanged() {
        let seen = Seen::default();
        let (l, counter) = layer(
            r#"{"request":{"block":true},"response":{"bannedWords":["rabbit"]}}"#,
            Some("m"),
        );
        let svc = l.layer(upstream(seen.clone(), "application/json", vec!["rabbit"]));
        let mut get = post("/v1/models", "");
        *get.method_mut() = http::Method::GET;
        let r = svc.clone().oneshot(get).await.unwrap();
        assert_eq!(text(r).await, "rabbit");
        let r = svc
            .clone()
            .oneshot(post("/v1/chat/completions", "not json {"))
            .await
            .unwrap();
        assert_eq!(text(r).await, "rabbit");
        let seen = seen.lock().unwrap();
        assert_eq!(seen[1].0, "/v1/chat/completions");
        assert_eq!(&seen[1].2[..], b"not json {");
        assert_eq!(seen[1].1[header::ACCEPT_ENCODING], "gzip");
        assert_eq!(count(&counter, "other", "passed"), 1);
        assert_eq!(count(&counter, "openai-chat", "passed"), 1);
    }

    #[tokio::test]
    async fn block_answers_without_asking_upstream() {
        let seen = Seen::default();
        let (l, counter) = layer(r#"{"request":{"block":true}}"#, None);
        let svc = l.layer(upstream(seen.clone(), "application/json", vec!["x"]));
        let r = svc
            .oneshot(post(
                "/api/generate",
                r#"{"model":"m","prompt":"p","stream":false}"#,
            ))
            .await
            .unwrap();
        assert_eq!(r.headers()["x-ghostwire-ai"], "blocked");
        assert!(text(r).await.contains(llm_rewrite::BLOCKED_MESSAGE));
        assert!(seen.lock().unwrap().is_empty());
        assert_eq!(count(&counter, "ollama-generate", "blocked"), 1);
    }

    #[tokio::test]
    async fn no_policy_means_no_reading() {
        let seen = Seen::default();
        let (_tx, h) = PolicyHandle::channel(None);
        let svc = LlmLayer::new(h, Family::default()).layer(upstream(
            seen.clone(),
            "application/json",
            vec!["rabbit"],
        ));
        let r = svc
            .oneshot(post(
                "/v1/chat/completions",
                r#"{"model":"a","messages":[]}"#,
            ))
            .await
            .unwrap();
        assert_eq!(text(r).await, "rabbit");
        assert_eq!(seen.lock().unwrap()[0].1[header::ACCEPT_ENCODING], "gzip");
    }
}
