//! The streaming subresources of Pods, `exec`, `attach` and `portforward`, over every transport
//! kube-apiserver serves them on:
//! - WebSocket `v5.channel.k8s.io` (kubectl ≥ 1.30, exec/attach) and `v4.channel.k8s.io` (the
//!   Python client, exec/attach/portforward): one channel byte and its payload per message;
//! - WebSocket `SPDY/3.1+portforward.k8s.io` (kubectl ≥ 1.30, port-forward): SPDY in binary
//!   messages;
//! - an HTTP upgrade to SPDY/3.1 (older clients, and kubectl's fallback), with the stream
//!   protocol `v4.channel.k8s.io` (exec/attach) or `portforward.k8s.io` named in
//!   `X-Stream-Protocol-Version`.
//!
//! Each transport becomes a [`mux::Session`] of streams; [`remote`] (exec, attach) and
//! [`forward`] (port-forward) are written once against it. The processes and connections
//! themselves are the node's business ([`PodStreams`]), as they are the kubelet's.

mod forward;
mod mux;
mod remote;
pub mod spdy;
pub mod websocket;

use crate::http::Body;
use crate::pod_logs::PodLogError;
use crate::server::State;
use crate::status::{ApiError, Subject};
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::Response;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

/// What the client asked to run or attach to (`PodExecOptions`, `PodAttachOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// `None`: the Pod's default container.
    pub container: Option<String>,
    /// The command (exec only).
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A running process's streams (or a container's, for attach).
pub struct ExecStreams {
    /// Bytes for its stdin; dropping the sender closes it.
    pub stdin: mpsc::Sender<Bytes>,
    /// Terminal size (columns, rows), with a TTY.
    pub resize: mpsc::Sender<(u16, u16)>,
    /// Output: (1 stdout | 2 stderr, bytes); closed once the process's output has ended.
    pub output: mpsc::Receiver<(u8, Bytes)>,
    /// Its exit code.
    pub exit: oneshot::Receiver<i32>,
}

/// Runs commands in, attaches to, and connects to ports of a Pod: implemented by the lab node.
pub trait PodStreams: Send + Sync {
    fn exec(
        &self,
        pod: Value,
        request: ExecRequest,
    ) -> BoxFuture<'static, Result<ExecStreams, PodLogError>>;

    /// The container's own stdin (when its spec keeps one), terminal and output from now on.
    fn attach(
        &self,
        pod: Value,
        request: ExecRequest,
    ) -> BoxFuture<'static, Result<ExecStreams, PodLogError>>;

    /// A connection to `port` inside the Pod's network namespace.
    fn port_forward(
        &self,
        pod: Value,
        port: u16,
    ) -> BoxFuture<'static, Result<tokio::net::TcpStream, PodLogError>>;
}

/// A [`PodStreams`] in [`crate::Options`].
#[derive(Clone)]
pub struct PodStreamsHandle(pub Arc<dyn PodStreams>);

impl std::fmt::Debug for PodStreamsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PodStreamsHandle")
    }
}

/// Which streaming subresource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Exec,
    Attach,
    PortForward,
}

impl Kind {
    /// The subresource's name (and RBAC's).
    pub fn subresource(self) -> &'static str {
        match self {
            Kind::Exec => "exec",
            Kind::Attach => "attach",
            Kind::PortForward => "portforward",
        }
    }
}

/// Whether a request is for a streaming subresource: (namespace, name, which).
pub fn target(req: &hyper::Request<Incoming>) -> Option<(String, String, Kind)> {
    let segs: Vec<&str> = req.uri().path().trim_end_matches('/').split('/').collect();
    let ["", "api", "v1", "namespaces", ns, "pods", name, sub] = segs.as_slice() else {
        return None;
    };
    let kind = match *sub {
        "exec" => Kind::Exec,
        "attach" => Kind::Attach,
        "portforward" => Kind::PortForward,
        _ => return None,
    };
    Some((ns.to_string(), name.to_string(), kind))
}

fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                crate::http::percent_decode(k),
                crate::http::percent_decode(v),
            )
        })
        .collect()
}

/// How the client's connection is upgraded, and what runs on it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Transport {
    /// A channel protocol; `v5` adds the close of a channel.
    Channels { protocol: &'static str, v5: bool },
    /// SPDY in WebSocket binary messages.
    Tunnel { protocol: &'static str },
    /// SPDY after `Upgrade: SPDY/3.1`.
    Spdy { protocol: &'static str },
}

/// A header's values, comma-separated or repeated.
fn header_values(req: &hyper::Request<Incoming>, name: hyper::header::HeaderName) -> Vec<String> {
    req.headers()
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .filter(|p| !p.is_empty())
        .collect()
}

/// Picks the transport: the first of the server's protocols, in its order of preference, that
/// the client offered.
fn negotiate(upgrade: &str, offered: &[String], kind: Kind) -> Result<Transport, ApiError> {
    let pick = |served: &[&'static str]| {
        served
            .iter()
            .find(|p| offered.iter().any(|o| o == *p))
            .copied()
    };
    if upgrade.eq_ignore_ascii_case("websocket") {
        let served: &[&str] = match kind {
            Kind::PortForward => &["SPDY/3.1+portforward.k8s.io", "v4.channel.k8s.io"],
            _ => &["v5.channel.k8s.io", "v4.channel.k8s.io"],
        };
        return match pick(served) {
            Some(p) if p.starts_with("SPDY/3.1+") => Ok(Transport::Tunnel { protocol: p }),
            Some(p) => Ok(Transport::Channels {
                protocol: p,
                v5: p == "v5.channel.k8s.io",
            }),
            // A port-forward client that names no subprotocol gets the channel protocol.
            None if kind == Kind::PortForward && offered.is_empty() => Ok(Transport::Channels {
                protocol: "",
                v5: false,
            }),
            None => Err(ApiError::bad_request(format!(
                "none of the offered WebSocket subprotocols {offered:?} is served; use one of {served:?}"
            ))),
        };
    }
    if upgrade.eq_ignore_ascii_case("SPDY/3.1") {
        let served: &[&str] = match kind {
            Kind::PortForward => &["portforward.k8s.io"],
            _ => &["v4.channel.k8s.io"],
        };
        return match pick(served) {
            Some(p) => Ok(Transport::Spdy { protocol: p }),
            None => Err(ApiError::bad_request(format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {served:?}"
            ))),
        };
    }
    Err(ApiError::bad_request(format!(
        "{} needs a connection upgrade to WebSocket or SPDY/3.1, not {upgrade:?}",
        kind.subresource()
    )))
}

fn flag(v: &str) -> bool {
    v == "true" || v == "1"
}

/// Answers the upgrade (101) and runs the session on the upgraded connection.
pub async fn serve(
    state: Arc<State>,
    mut req: hyper::Request<Incoming>,
    ns: String,
    name: String,
    kind: Kind,
) -> Result<Response<Body>, ApiError> {
    let key = crate::store::Key {
        group: String::new(),
        resource: "pods".into(),
        namespace: ns.clone(),
        name: name.clone(),
    };
    let pod = state.store.get(&key).ok_or_else(|| {
        ApiError::not_found(Subject {
            group: "",
            kind: "pods",
            name: &name,
        })
    })?;
    let mut exec = ExecRequest::default();
    let mut ports: Vec<u16> = Vec::new();
    for (k, v) in query_pairs(req.uri().query().unwrap_or_default()) {
        match k.as_str() {
            "command" => exec.command.push(v),
            "container" => exec.container = Some(v),
            "stdin" => exec.stdin = flag(&v),
            "stdout" => exec.stdout = flag(&v),
            "stderr" => exec.stderr = flag(&v),
            "tty" => exec.tty = flag(&v),
            "ports" => {
                for p in v.split(',').filter(|p| !p.is_empty()) {
                    match p.trim().parse::<u16>() {
                        Ok(n) if n > 0 => ports.push(n),
                        _ => {
                            return Err(ApiError::bad_request(format!(
                                "invalid port {p:?} in ports: ports must be between 1 and 65535"
                            )));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    match kind {
        Kind::Exec if exec.command.is_empty() => {
            return Err(ApiError::bad_request("you must specify at least 1 command"));
        }
        Kind::Exec | Kind::Attach => {
            let names: Vec<&str> = ["containers", "initContainers", "ephemeralContainers"]
                .iter()
                .flat_map(|l| pod["spec"][l].as_array().into_iter().flatten())
                .filter_map(|c| c["name"].as_str())
                .collect();
            if let Some(c) = &exec.container
                && !names.contains(&c.as_str())
            {
                return Err(ApiError::bad_request(format!(
                    "container {c} is not valid for pod {name}"
                )));
            }
            if !(exec.stdin || exec.stdout || exec.stderr) {
                return Err(ApiError::bad_request(
                    "you must specify at least one of stdin, stdout, stderr",
                ));
            }
        }
        Kind::PortForward => {}
    }
    let upgrade = req
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let websocket = upgrade.eq_ignore_ascii_case("websocket");
    let offered = if websocket {
        header_values(&req, hyper::header::SEC_WEBSOCKET_PROTOCOL)
    } else {
        header_values(
            &req,
            hyper::header::HeaderName::from_static("x-stream-protocol-version"),
        )
    };
    let transport = negotiate(&upgrade, &offered, kind)?;
    if let Transport::Channels { .. } = transport
        && kind == Kind::PortForward
        && ports.is_empty()
    {
        return Err(ApiError::bad_request(
            "the ports query parameter is required for port-forward over WebSocket channels",
        ));
    }
    let Some(node) = state.pod_streams.clone() else {
        return Err(ApiError::bad_request(format!(
            "pod {name} has no node that can serve {}",
            kind.subresource()
        )));
    };
    let mut response = Response::builder()
        .status(hyper::StatusCode::SWITCHING_PROTOCOLS)
        .header(hyper::header::CONNECTION, "Upgrade");
    match &transport {
        Transport::Channels { protocol, .. } | Transport::Tunnel { protocol } => {
            let key = req
                .headers()
                .get(hyper::header::SEC_WEBSOCKET_KEY)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| ApiError::bad_request("missing Sec-WebSocket-Key"))?;
            response = response.header(hyper::header::UPGRADE, "websocket").header(
                hyper::header::SEC_WEBSOCKET_ACCEPT,
                websocket::accept_key(key),
            );
            if !protocol.is_empty() {
                response = response.header(hyper::header::SEC_WEBSOCKET_PROTOCOL, *protocol);
            }
        }
        Transport::Spdy { protocol } => {
            response = response
                .header(hyper::header::UPGRADE, "SPDY/3.1")
                .header("X-Stream-Protocol-Version", *protocol);
        }
    }
    let upgraded = hyper::upgrade::on(&mut req);
    let pod = (*pod).clone();
    tokio::spawn(async move {
        let io = match upgraded.await {
            Ok(io) => TokioIo::new(io),
            Err(e) => {
                tracing::debug!(error = %e, "streaming upgrade");
                return;
            }
        };
        let session = match transport {
            Transport::Channels { v5, .. } => {
                let count = match kind {
                    Kind::PortForward => ports.len() as u32 * 2,
                    _ => 5,
                };
                websocket::channels(io, v5, count)
            }
            Transport::Tunnel { .. } => spdy::session(websocket::tunnel(io)),
            Transport::Spdy { .. } => spdy::session(io),
        };
        let fixed_ports = matches!(transport, Transport::Channels { .. }).then_some(ports);
        match kind {
            Kind::Exec => remote::run(session, node, pod, exec, remote::Mode::Exec).await,
            Kind::Attach => remote::run(session, node, pod, exec, remote::Mode::Attach).await,
            Kind::PortForward => forward::run(session, node, pod, fixed_ports).await,
        }
    });
    Ok(response
        .body(Full::new(Bytes::new()).boxed())
        .expect("static response parts are valid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn transports_by_upgrade_and_subprotocol() {
        let ws = |offered: &[&str], kind| negotiate("websocket", &s(offered), kind);
        assert_eq!(
            ws(&["v4.channel.k8s.io", "v5.channel.k8s.io"], Kind::Exec).unwrap(),
            Transport::Channels {
                protocol: "v5.channel.k8s.io",
                v5: true
            }
        );
        assert_eq!(
            ws(&["SPDY/3.1+portforward.k8s.io"], Kind::PortForward).unwrap(),
            Transport::Tunnel {
                protocol: "SPDY/3.1+portforward.k8s.io"
            }
        );
        assert_eq!(
            ws(&["v4.channel.k8s.io"], Kind::PortForward).unwrap(),
            Transport::Channels {
                protocol: "v4.channel.k8s.io",
                v5: false
            }
        );
        assert!(ws(&["SPDY/3.1+portforward.k8s.io"], Kind::Exec).is_err());
        assert_eq!(
            negotiate(
                "SPDY/3.1",
                &s(&["v4.channel.k8s.io", "v3.channel.k8s.io"]),
                Kind::Attach
            )
            .unwrap(),
            Transport::Spdy {
                protocol: "v4.channel.k8s.io"
            }
        );
        let e = negotiate("SPDY/3.1", &s(&["channel.k8s.io"]), Kind::Exec).unwrap_err();
        assert!(
            e.message.contains("unable to negotiate protocol"),
            "{}",
            e.message
        );
        assert!(negotiate("h2c", &[], Kind::Exec).is_err());
    }
}
