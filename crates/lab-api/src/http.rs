//! HTTPS serving: TLS accept with optional client certificates, HTTP/1.1 and HTTP/2, request
//! reading, authentication, and routing to discovery, OpenAPI and the resource verbs.

use crate::api::{self, Target};
use crate::authn::UserInfo;
use crate::discovery;
use crate::openapi;
use crate::server::State;
use crate::status::ApiError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

pub type Body = BoxBody<Bytes, Infallible>;

/// A request, read whole (API bodies are small), with its query decoded.
pub struct Request {
    pub method: hyper::Method,
    pub path: String,
    query: HashMap<String, String>,
    pub content_type: String,
    pub accept: String,
    pub body: Bytes,
    /// The `User-Agent` header: writes without `fieldManager` are recorded under its first part.
    pub user_agent: String,
    /// Who the request runs as (after authentication and impersonation).
    pub user: crate::authn::UserInfo,
}

impl Request {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    /// A boolean query parameter (`true` or `1`).
    pub fn flag(&self, name: &str) -> bool {
        matches!(self.param(name), Some("true" | "1"))
    }
}

pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

pub fn json_response(code: u16, v: &Value) -> Response<Body> {
    let body = serde_json::to_vec(v).expect("JSON values serialize");
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("static response parts are valid")
}

/// A JSON reply whose body is already serialised.
pub fn bytes_response(code: u16, body: Bytes) -> Response<Body> {
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("Content-Type", "application/json")
        .body(Full::new(body).boxed())
        .expect("static response parts are valid")
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.code, &e.to_status())
}

/// A streamed (chunked) JSON response fed by a channel: watches.
pub fn stream_response(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "application/json")
        .header("Transfer-Encoding", "chunked")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("static response parts are valid")
}

async fn read(req: hyper::Request<Incoming>) -> Result<Request, ApiError> {
    let (parts, body) = req.into_parts();
    let header = |n: hyper::header::HeaderName| {
        parts
            .headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let content_type = header(hyper::header::CONTENT_TYPE);
    let accept = header(hyper::header::ACCEPT);
    let user_agent = header(hyper::header::USER_AGENT);
    let body = body
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading body: {e}")))?
        .to_bytes();
    Ok(Request {
        method: parts.method,
        path: parts.uri.path().to_string(),
        query: parse_query(parts.uri.query().unwrap_or_default()),
        content_type,
        accept,
        body,
        user_agent,
        user: Default::default(),
    })
}

/// The JSON the client can take; protobuf-only clients are refused (406).
fn acceptable(accept: &str) -> bool {
    accept.is_empty()
        || accept.split(',').any(|a| {
            let m = a.split(';').next().unwrap_or_default().trim();
            matches!(
                m,
                "application/json"
                    | "*/*"
                    | "application/*"
                    | "application/yaml"
                    | "application/json-patch+json"
            ) || m.starts_with("application/com.github.proto-openapi")
        })
}

async fn route(state: &Arc<State>, req: Request) -> Result<Response<Body>, ApiError> {
    let path = req.path.trim_end_matches('/');
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    match segs.as_slice() {
        ["healthz" | "livez" | "readyz", ..] => {
            return Ok(Response::builder()
                .header("Content-Type", "text/plain")
                .body(Full::new(Bytes::from_static(b"ok")).boxed())
                .expect("static response parts are valid"));
        }
        ["version"] => return Ok(json_response(200, &discovery::version(state.version))),
        ["openapi", ..] => return openapi::serve(state, &segs[1..]),
        _ => {}
    }
    if !acceptable(&req.accept) {
        return Err(ApiError::not_acceptable(&req.accept));
    }
    let (group, version, rest): (&str, &str, &[&str]) = match segs.as_slice() {
        ["api"] => return Ok(json_response(200, &discovery::core_versions())),
        ["apis"] => return Ok(json_response(200, &discovery::groups(&state.registry))),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g] => return discovery::group(&state.registry, g).map(|v| json_response(200, &v)),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::no_route()),
    };
    if rest.is_empty() {
        return discovery::resources(&state.registry, group, version)
            .map(|v| json_response(200, &v));
    }
    if let ("", "v1", ["namespaces", ns, "pods", name, "log"]) = (group, version, rest) {
        return crate::pod_logs::serve(state, &req, ns, name).await;
    }
    let find = |r: &str| state.registry.find(group, version, r);
    let target = match rest {
        ["namespaces", ns, r, tail @ ..]
            if find(r).is_some_and(|t| t.namespaced) && tail.len() <= 2 =>
        {
            Target {
                rt: find(r).expect("checked"),
                namespace: Some((*ns).to_string()),
                name: tail.first().map(|s| s.to_string()),
                sub: tail.get(1).map(|s| s.to_string()),
            }
        }
        [r, tail @ ..] if tail.len() <= 2 => {
            let rt = find(r).ok_or_else(ApiError::no_route)?;
            if rt.namespaced && !tail.is_empty() {
                return Err(ApiError::no_route());
            }
            Target {
                rt,
                namespace: None,
                name: tail.first().map(|s| s.to_string()),
                sub: tail.get(1).map(|s| s.to_string()),
            }
        }
        _ => return Err(ApiError::no_route()),
    };
    api::handle(state, &req, target).await
}

async fn serve_request(
    state: Arc<State>,
    certificate: Option<UserInfo>,
    req: hyper::Request<Incoming>,
) -> Response<Body> {
    let creds = crate::authz::Credentials::new(certificate, req.headers());
    let method = req.method().clone();
    let uri = req.uri().clone();
    if let Some((ns, name, kind)) = crate::stream::target(&req) {
        let result = match crate::authz::admit_stream(&state, &creds, &ns, &name, kind) {
            Ok(_) => crate::stream::serve(state, req, ns, name, kind).await,
            Err(e) => Err(e),
        };
        return result.unwrap_or_else(|e| error_response(&e));
    }
    let result = match read(req).await {
        Ok(mut r) => match crate::authz::admit(&state, &creds, &r) {
            Ok(user) => {
                r.user = user;
                route(&state, r).await
            }
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    };
    match result {
        Ok(r) => {
            tracing::debug!(%method, %uri, status = r.status().as_u16(), "request");
            r
        }
        Err(e) => {
            tracing::debug!(%method, %uri, status = e.code, reason = e.reason, message = %e.message, "request refused");
            error_response(&e)
        }
    }
}

/// Accepts connections until shutdown, then ends every open connection (watches included).
pub async fn accept_loop(state: Arc<State>, listener: TcpListener, tls: Arc<rustls::ServerConfig>) {
    let acceptor = TlsAcceptor::from(tls);
    let mut conns = JoinSet::new();
    let mut shutdown = state.shutdown.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
        };
        let acceptor = acceptor.clone();
        let state = state.clone();
        conns.spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            // The handshake verified the chain; the leaf names the user.
            let certificate = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| UserInfo::from_certificate(c));
            let svc = hyper::service::service_fn(move |req| {
                let state = state.clone();
                let certificate = certificate.clone();
                async move { Ok::<_, Infallible>(serve_request(state, certificate, req).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        });
    }
    drop(listener);
    conns.shutdown().await;
}
