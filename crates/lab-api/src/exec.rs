//! `pods/{name}/exec` over WebSocket, as kube-apiserver serves it to kubectl ≥ 1.30
//! (`v5.channel.k8s.io`) and the Python client (`v4.channel.k8s.io`): every message is one
//! channel byte (0 stdin, 1 stdout, 2 stderr, 3 error/status, 4 terminal size, 255 close of a
//! channel in v5) and its payload. The process itself is the node's business ([`PodExec`]), as
//! the kubelet's is. SPDY/3.1 (kubectl before 1.30, and its fallback) is answered with a 400.

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
use serde_json::{Value, json};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// What the client asked to run (`PodExecOptions`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecRequest {
    /// `None`: the Pod's only (or first) container.
    pub container: Option<String>,
    pub command: Vec<String>,
    pub stdin: bool,
    pub tty: bool,
}

/// A running process's streams.
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

/// Runs commands in a Pod's container: implemented by the lab node.
pub trait PodExec: Send + Sync {
    fn exec(
        &self,
        pod: Value,
        request: ExecRequest,
    ) -> BoxFuture<'static, Result<ExecStreams, PodLogError>>;
}

/// A [`PodExec`] in [`crate::Options`].
#[derive(Clone)]
pub struct PodExecHandle(pub Arc<dyn PodExec>);

impl std::fmt::Debug for PodExecHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PodExecHandle")
    }
}

/// The subprotocols served, best first.
const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

/// Whether a request is for `pods/NAME/exec`: (namespace, name).
pub fn exec_target(req: &hyper::Request<Incoming>) -> Option<(String, String)> {
    let segs: Vec<&str> = req.uri().path().trim_end_matches('/').split('/').collect();
    match segs.as_slice() {
        ["", "api", "v1", "namespaces", ns, "pods", name, "exec"] => {
            Some((ns.to_string(), name.to_string()))
        }
        _ => None,
    }
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

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &str) -> String {
    use base64::Engine;
    let mut input = key.trim().as_bytes().to_vec();
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// The status the error channel carries at the end.
pub fn exit_status(command: &[String], code: i32) -> Value {
    if code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({"metadata": {}, "status": "Failure",
           "message": format!("command terminated with non-zero exit code: error executing command [{}], exit code {code}", command.join(" ")),
           "reason": "NonZeroExitCode",
           "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]}})
}

/// Answers the upgrade (101) and runs the session on the upgraded connection.
pub async fn serve(
    state: Arc<State>,
    mut req: hyper::Request<Incoming>,
    ns: String,
    name: String,
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
    for (k, v) in query_pairs(req.uri().query().unwrap_or_default()) {
        match k.as_str() {
            "command" => exec.command.push(v),
            "container" => exec.container = Some(v),
            "stdin" => exec.stdin = v == "true" || v == "1",
            "tty" => exec.tty = v == "true" || v == "1",
            _ => {}
        }
    }
    if exec.command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
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
    let websocket = req
        .headers()
        .get(hyper::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !websocket {
        // kubectl falls back to SPDY after a failed WebSocket attempt and shows this answer.
        return Err(ApiError::bad_request(
            "exec is served over WebSocket (v5.channel.k8s.io, v4.channel.k8s.io) only; SPDY/3.1 is not",
        ));
    }
    let Some(node) = state.pod_exec.clone() else {
        return Err(ApiError::bad_request(format!(
            "pod {name} has no node that can run commands"
        )));
    };
    let offered: Vec<String> = req
        .headers()
        .get_all(hyper::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .collect();
    let Some(protocol) = PROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)) else {
        return Err(ApiError::bad_request(format!(
            "none of the offered subprotocols {offered:?} is served; use one of {PROTOCOLS:?}"
        )));
    };
    let key = req
        .headers()
        .get(hyper::header::SEC_WEBSOCKET_KEY)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::bad_request("missing Sec-WebSocket-Key"))?
        .to_string();
    let v5 = *protocol == "v5.channel.k8s.io";
    let upgraded = hyper::upgrade::on(&mut req);
    let pod = (*pod).clone();
    tokio::spawn(async move {
        match upgraded.await {
            Ok(io) => session(TokioIo::new(io), node, pod, exec, v5).await,
            Err(e) => tracing::debug!(error = %e, "exec upgrade"),
        }
    });
    Ok(Response::builder()
        .status(hyper::StatusCode::SWITCHING_PROTOCOLS)
        .header(hyper::header::UPGRADE, "websocket")
        .header(hyper::header::CONNECTION, "Upgrade")
        .header(hyper::header::SEC_WEBSOCKET_ACCEPT, accept_key(&key))
        .header(hyper::header::SEC_WEBSOCKET_PROTOCOL, *protocol)
        .body(Full::new(Bytes::new()).boxed())
        .expect("static response parts are valid"))
}

/// One WebSocket frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    Data(Vec<u8>),
    Ping(Vec<u8>),
    Close,
}

/// Reads one message (joining fragments; control frames in between are returned first).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Frame> {
    let mut message = Vec::new();
    loop {
        let mut head = [0u8; 2];
        r.read_exact(&mut head).await?;
        let fin = head[0] & 0x80 != 0;
        let opcode = head[0] & 0x0f;
        let masked = head[1] & 0x80 != 0;
        let len = match head[1] & 0x7f {
            126 => u64::from(r.read_u16().await?),
            127 => r.read_u64().await?,
            n => u64::from(n),
        };
        if len > 16 << 20 {
            return Err(std::io::Error::other("WebSocket frame over 16 MiB"));
        }
        let mut mask = [0u8; 4];
        if masked {
            r.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len as usize];
        r.read_exact(&mut payload).await?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        match opcode {
            0x8 => return Ok(Frame::Close),
            0x9 => return Ok(Frame::Ping(payload)),
            0xA => continue,
            _ => {
                message.extend_from_slice(&payload);
                if fin {
                    return Ok(Frame::Data(message));
                }
            }
        }
    }
}

/// Writes one unmasked frame (server to client).
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    opcode: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut head = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => head.push(n as u8),
        n if n <= 0xffff => {
            head.push(126);
            head.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            head.push(127);
            head.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    head.extend_from_slice(payload);
    w.write_all(&head).await?;
    w.flush().await
}

async fn session<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: S,
    node: PodExecHandle,
    pod: Value,
    req: ExecRequest,
    v5: bool,
) {
    let (mut rd, wr) = tokio::io::split(io);
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    let send = |ch: u8, data: Vec<u8>| {
        let wr = wr.clone();
        async move {
            let mut msg = vec![ch];
            msg.extend_from_slice(&data);
            write_frame(&mut *wr.lock().await, 0x2, &msg).await
        }
    };
    let command = req.command.clone();
    let streams = match node.0.exec(pod, req).await {
        Ok(s) => s,
        Err(e) => {
            let status = json!({"metadata": {}, "status": "Failure", "message": e.to_string(),
                                "reason": "InternalError"});
            let _ = send(3, status.to_string().into_bytes()).await;
            let _ = write_frame(&mut *wr.lock().await, 0x8, &[3, 232]).await;
            return;
        }
    };
    let ExecStreams {
        stdin,
        resize,
        mut output,
        exit,
    } = streams;
    // Client → process: stdin, terminal size, close of stdin (v5), pings.
    let reader = {
        let wr = wr.clone();
        tokio::spawn(async move {
            let mut stdin = Some(stdin);
            loop {
                match read_frame(&mut rd).await {
                    Ok(Frame::Data(m)) if !m.is_empty() => match m[0] {
                        0 => {
                            if let Some(s) = &stdin
                                && s.send(Bytes::copy_from_slice(&m[1..])).await.is_err()
                            {
                                stdin = None;
                            }
                        }
                        4 => {
                            let size: Value = serde_json::from_slice(&m[1..]).unwrap_or_default();
                            let (w, h) = (size["Width"].as_u64(), size["Height"].as_u64());
                            if let (Some(w), Some(h)) = (w, h) {
                                let _ = resize.send((w as u16, h as u16)).await;
                            }
                        }
                        255 if v5 && m.get(1) == Some(&0) => stdin = None,
                        _ => {}
                    },
                    Ok(Frame::Data(_)) => {}
                    Ok(Frame::Ping(p)) => {
                        let _ = write_frame(&mut *wr.lock().await, 0xA, &p).await;
                    }
                    Ok(Frame::Close) | Err(_) => return,
                }
            }
        })
    };
    while let Some((ch, data)) = output.recv().await {
        if send(ch, data.to_vec()).await.is_err() {
            reader.abort();
            return;
        }
    }
    let code = exit.await.unwrap_or(137);
    let _ = send(3, exit_status(&command, code).to_string().into_bytes()).await;
    let _ = write_frame(&mut *wr.lock().await, 0x8, &[3, 232]).await;
    // The client answers the close; the reader ends then (or the connection drops).
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), reader).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_the_rfc_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[tokio::test]
    async fn frames_round_trip_masked_and_fragmented() {
        // "Hel" (masked text frame, not final), a ping, then "lo" (masked continuation).
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let masked = |data: &[u8]| -> Vec<u8> {
            data.iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect()
        };
        let mut b = vec![0x01, 0x83];
        b.extend_from_slice(&mask);
        b.extend(masked(b"Hel"));
        b.extend_from_slice(&[0x80, 0x82]);
        b.extend_from_slice(&mask);
        b.extend(masked(b"lo"));
        let mut r = &b[..];
        assert_eq!(
            read_frame(&mut r).await.unwrap(),
            Frame::Data(b"Hello".to_vec())
        );
        let mut out = Vec::new();
        write_frame(&mut out, 0x2, &[1; 300]).await.unwrap();
        assert_eq!(&out[..4], &[0x82, 126, 1, 44]);
        assert_eq!(
            exit_status(&["false".into()], 1)["details"]["causes"][0]["message"],
            "1"
        );
    }
}
