//! The door in front of a lab API, so tests (and people) can take a cluster's API away as a
//! remote consumer would see it, while the API keeps its state:
//!
//! - [`ApiState::Up`]: connections are relayed byte for byte (TLS passes through).
//! - [`ApiState::Down`]: the listener is closed (new connections are refused) and every open
//!   connection is closed, as when kube-apiserver stops. `Up` listens again on the same address
//!   with the same CA, as when it restarts; watches resume from their resourceVersion.
//! - [`ApiState::BlackHole`]: as if packets were dropped: the listener stays (the kernel still
//!   completes handshakes into its backlog) but nothing is accepted, and open connections move
//!   no byte in either direction; clients hang until their own timeouts. Back to `Up`, stalled
//!   connections carry on where they stopped (no byte is lost, as TCP would retransmit).
//!
//! It listens on the host's loopback only.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What a cluster's API looks like from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiState {
    Up,
    Down,
    BlackHole,
}

impl std::str::FromStr for ApiState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "up" | "start" => Ok(ApiState::Up),
            "down" | "stop" => Ok(ApiState::Down),
            "blackhole" | "black-hole" => Ok(ApiState::BlackHole),
            other => Err(format!(
                "unknown API state {other:?}: expected start, stop or blackhole"
            )),
        }
    }
}

impl std::fmt::Display for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ApiState::Up => "up",
            ApiState::Down => "down",
            ApiState::BlackHole => "blackhole",
        })
    }
}

/// A running gate; dropping it closes the listener and every connection.
pub struct Gate {
    addr: SocketAddr,
    state: watch::Sender<ApiState>,
    task: JoinHandle<()>,
}

impl Gate {
    /// Listens on `listen` (port 0 picks one) and relays to `upstream`.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<Gate> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let state = watch::Sender::new(ApiState::Up);
        let task = tokio::spawn(serve(listener, addr, upstream, state.subscribe()));
        Ok(Gate { addr, state, task })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn state(&self) -> ApiState {
        *self.state.borrow()
    }

    /// Takes effect at once for new and open connections.
    pub fn set(&self, state: ApiState) {
        self.state.send_replace(state);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.state.send_replace(ApiState::Down);
        self.task.abort();
    }
}

async fn serve(
    listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut state: watch::Receiver<ApiState>,
) {
    let mut listener = Some(listener);
    loop {
        let now = *state.borrow_and_update();
        match now {
            ApiState::Down => listener = None,
            ApiState::Up | ApiState::BlackHole if listener.is_none() => {
                match TcpListener::bind(addr).await {
                    Ok(l) => listener = Some(l),
                    Err(e) => {
                        tracing::warn!(%addr, error = %e, "API gate cannot listen again; retrying");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            _ => {}
        }
        match (&listener, now) {
            (Some(l), ApiState::Up) => {
                tokio::select! {
                    accepted = l.accept() => match accepted {
                        Ok((conn, _)) => {
                            tokio::spawn(relay(conn, upstream, state.clone()));
                        }
                        Err(e) => tracing::debug!(error = %e, "API gate accept"),
                    },
                    changed = state.changed() => if changed.is_err() { return },
                }
            }
            _ => {
                if state.changed().await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Waits while black-holed; `false` when the gate went down (the connection must close).
async fn passable(state: &mut watch::Receiver<ApiState>) -> bool {
    match state.wait_for(|s| *s != ApiState::BlackHole).await {
        Ok(s) => *s == ApiState::Up,
        Err(_) => false,
    }
}

async fn relay(inbound: TcpStream, upstream: SocketAddr, state: watch::Receiver<ApiState>) {
    let outbound = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%upstream, error = %e, "API gate cannot reach the API");
            return;
        }
    };
    let gone = state.clone();
    let (ri, wi) = inbound.into_split();
    let (ro, wo) = outbound.into_split();
    // Either direction seeing the gate go down ends both.
    let both = async move {
        tokio::join!(pump(ri, wo, state.clone()), pump(ro, wi, state.clone()));
    };
    tokio::select! {
        _ = both => {}
        _ = down(gone) => {}
    }
}

async fn down(mut state: watch::Receiver<ApiState>) {
    let _ = state.wait_for(|s| *s == ApiState::Down).await;
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut state: watch::Receiver<ApiState>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !passable(&mut state).await {
            return;
        }
        // Reading is cancel-safe: a black hole that starts while waiting leaves the bytes in
        // the socket.
        let read = tokio::select! {
            r = from.read(&mut buf) => Some(r),
            _ = state.wait_for(|s| *s != ApiState::Up) => None,
        };
        let n = match read {
            None => continue,
            Some(Ok(0) | Err(_)) => {
                let _ = to.shutdown().await;
                return;
            }
            Some(Ok(n)) => n,
        };
        if !passable(&mut state).await || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
