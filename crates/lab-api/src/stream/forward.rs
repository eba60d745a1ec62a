//! `portforward` over any transport. Each forwarded connection is a pair of streams, data and
//! error: SPDY (kubectl, direct or tunnelled in WebSocket) opens a pair per connection, named by
//! the headers `streamType`, `port` and `requestID`; the WebSocket channel protocol (the Python
//! client) has one fixed pair per port of the request's `ports` (channels 2i and 2i+1), each
//! starting with the port as two little-endian bytes. The node connects to the port inside the
//! Pod's network namespace; a failure is written on the error stream, as kubelet writes it.

use super::PodStreamsHandle;
use super::mux::{Session, Stream};
use serde_json::Value;
use std::collections::HashMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Copies between one pair of streams and a connection to `port` in the Pod, until the Pod's
/// side ends (as kubelet's forwarding does); then both streams end.
async fn forward_one(node: PodStreamsHandle, pod: Value, port: u16, data: Stream, error: Stream) {
    let Stream {
        rx: mut from_client,
        tx: to_client,
        ..
    } = data;
    match node.0.port_forward(pod.clone(), port).await {
        Err(e) => {
            let msg = format!(
                "error forwarding port {port} to pod {}, uid {}: {e}",
                pod["metadata"]["name"].as_str().unwrap_or_default(),
                pod["metadata"]["uid"].as_str().unwrap_or_default()
            );
            let _ = error.tx.send(msg).await;
        }
        Ok(conn) => {
            let (mut from_pod, mut to_pod) = conn.into_split();
            let up = tokio::spawn(async move {
                while let Some(b) = from_client.recv().await {
                    if to_pod.write_all(&b).await.is_err() {
                        return;
                    }
                }
                let _ = to_pod.shutdown().await;
            });
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match from_pod.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if to_client.send(buf[..n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                }
            }
            up.abort();
        }
    }
    to_client.finish().await;
    error.tx.finish().await;
}

/// Runs one port-forward session. `ports`: the WebSocket channel protocol's fixed ports;
/// `None` for SPDY, whose client opens a pair of streams per connection.
pub(crate) async fn run(
    mut session: Session,
    node: PodStreamsHandle,
    pod: Value,
    ports: Option<Vec<u16>>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    match ports {
        Some(ports) => {
            let mut channels = Vec::new();
            while channels.len() < ports.len() * 2 {
                match session.streams.recv().await {
                    Some(s) => channels.push(s),
                    None => break,
                }
            }
            let mut channels = channels.into_iter();
            for port in ports {
                let (Some(data), Some(error)) = (channels.next(), channels.next()) else {
                    break;
                };
                let prefix = port.to_le_bytes().to_vec();
                if data.tx.send(prefix.clone()).await.is_err()
                    || error.tx.send(prefix).await.is_err()
                {
                    break;
                }
                tasks.spawn(forward_one(node.clone(), pod.clone(), port, data, error));
            }
            // The connection ends once every port's forwarding has.
            while tasks.join_next().await.is_some() {}
        }
        None => {
            let mut half: HashMap<String, Stream> = HashMap::new();
            loop {
                tokio::select! {
                    s = session.streams.recv() => {
                        let Some(s) = s else { break };
                        let Some(port) = s.header("port").and_then(|p| p.parse::<u16>().ok()) else {
                            let _ = s.tx.send(format!("invalid port header {:?}", s.header("port"))).await;
                            s.tx.finish().await;
                            continue;
                        };
                        let key = format!("{port}/{}", s.header("requestid").unwrap_or_default());
                        let Some(other) = half.remove(&key) else {
                            half.insert(key, s);
                            continue;
                        };
                        let (data, error) = if s.header("streamtype") == Some("error") {
                            (other, s)
                        } else {
                            (s, other)
                        };
                        tasks.spawn(forward_one(node.clone(), pod.clone(), port, data, error));
                    }
                    Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                }
            }
            tasks.abort_all();
        }
    }
    session.finish().await;
}
