//! The proxy's side of `StreamConfig`: a [`ConfigSource`] that subscribes with the Pod's
//! projected token, applies the snapshot and every delta to what it was sent, swaps the
//! resulting config into the store and ACKs — or NACKs when the proxy refuses it (the store
//! keeps the last good config). When the controller goes away the store is left as it is and
//! the source reconnects (to the next address, if several are given) with backoff; the
//! snapshot it then gets replaces everything.

use crate::convert::to_config;
use mesh_api::v1::mesh_control_client::MeshControlClient;
use mesh_api::v1::proxy_message::Kind;
use mesh_api::v1::{Ack, Nack, ProxyMessage, Service, Subscribe};
use mesh_proxy::config::ConfigError;
use mesh_proxy::store::{ConfigSource, Store};
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("cannot read the token {path}: {source}")]
    Token {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "controller address {0:?} is not a URL (e.g. http://ghostwire-controller.ghostwire:8090)"
    )]
    Address(String),
    #[error("cannot connect to the controller: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("controller: {0}")]
    Status(#[from] tonic::Status),
    #[error("the stream closed")]
    Closed,
}

/// Where the proxy subscribes, and with what.
#[derive(Debug, Clone)]
pub struct ControllerSource {
    /// `http://host:port`, one per controller replica; tried in turn.
    pub addresses: Vec<String>,
    /// The projected ServiceAccount token (re-read on every connect: the kubelet rotates it).
    pub token_path: PathBuf,
    pub connect_timeout: Duration,
    /// Longest wait between reconnects (backoff doubles up to it, from 100 ms).
    pub max_backoff: Duration,
    /// The last version applied (0: none), readable while the source runs.
    pub applied: Arc<AtomicU64>,
}

impl ControllerSource {
    pub fn new(addresses: Vec<String>, token_path: PathBuf) -> Self {
        ControllerSource {
            addresses,
            token_path,
            connect_timeout: Duration::from_secs(3),
            max_backoff: Duration::from_secs(5),
            applied: Arc::default(),
        }
    }

    /// One subscription, until the stream ends or fails. Returns whether any update came.
    async fn session(
        &self,
        address: &str,
        store: &Store,
        on_error: &(dyn Fn(&ConfigError) + Send + Sync),
        got_any: &mut bool,
    ) -> Result<(), FeedError> {
        let mut client = connect(address, self.connect_timeout).await?;
        let (tx, mut rx) = mpsc::channel::<ProxyMessage>(8);
        let send = |kind| ProxyMessage { kind: Some(kind) };
        tx.send(send(Kind::Subscribe(Subscribe {
            proxy_version: env!("CARGO_PKG_VERSION").into(),
            running_version: self.applied.load(Ordering::Relaxed),
        })))
        .await
        .map_err(|_| FeedError::Closed)?;
        let request = authorized(
            futures::stream::poll_fn(move |cx| rx.poll_recv(cx)),
            &self.token_path,
        )?;
        let mut updates = client.stream_config(request).await?.into_inner();
        let mut received: BTreeMap<String, Service> = BTreeMap::new();
        while let Some(u) = updates.message().await? {
            *got_any = true;
            if u.snapshot {
                received.clear();
            }
            for r in &u.removed {
                received.remove(r);
            }
            for s in u.services {
                received.insert(s.name.clone(), s);
            }
            let reply = match to_config(received.values()).and_then(|c| store.replace(c)) {
                Ok(generation) => {
                    self.applied.store(u.version, Ordering::Relaxed);
                    tracing::info!(version = u.version, generation, snapshot = u.snapshot, pod = %u.pod, "controller config applied");
                    Kind::Ack(Ack { version: u.version })
                }
                Err(e) => {
                    tracing::warn!(version = u.version, error = %e, "controller config refused; keeping the previous one");
                    on_error(&e);
                    Kind::Nack(Nack {
                        version: u.version,
                        error: e.to_string(),
                    })
                }
            };
            tx.send(send(reply)).await.map_err(|_| FeedError::Closed)?;
        }
        Err(FeedError::Closed)
    }
}

/// A client of the controller at `address` (`http://host:port`).
pub(crate) async fn connect(
    address: &str,
    timeout: Duration,
) -> Result<MeshControlClient<tonic::transport::Channel>, FeedError> {
    let endpoint = tonic::transport::Endpoint::from_shared(address.to_string())
        .map_err(|_| FeedError::Address(address.to_string()))?
        .connect_timeout(timeout)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(MeshControlClient::new(endpoint.connect().await?))
}

/// `message` with the projected token as its bearer, read now (the kubelet rotates it).
pub(crate) fn authorized<T>(
    message: T,
    token_path: &std::path::Path,
) -> Result<tonic::Request<T>, FeedError> {
    let bad = |source| FeedError::Token {
        path: token_path.display().to_string(),
        source,
    };
    let token = std::fs::read_to_string(token_path).map_err(bad)?;
    let value = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| bad(std::io::Error::other("not a valid header value")))?;
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

impl ConfigSource for ControllerSource {
    fn run(
        self: Box<Self>,
        store: Store,
        on_error: Box<dyn Fn(&ConfigError) + Send + Sync>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let mut attempt = 0u32;
            for address in self.addresses.iter().cycle() {
                let mut got_any = false;
                let e = self
                    .session(address, &store, on_error.as_ref(), &mut got_any)
                    .await
                    .err();
                if got_any {
                    attempt = 0;
                }
                let wait = Duration::from_millis(100)
                    .saturating_mul(1 << attempt.min(10))
                    .min(self.max_backoff);
                attempt += 1;
                tracing::warn!(%address, error = ?e.map(|e| e.to_string()), retry_in = ?wait, "controller stream ended; keeping the current config");
                tokio::time::sleep(wait).await;
            }
        })
    }
}
