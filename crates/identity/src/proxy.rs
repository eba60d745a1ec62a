//! The attached proxy (the supervisor's child, running as the proxy uid):
//! - `127.0.0.1:<local port>`, plain: the Pod's redirected outbound TCP; each connection goes
//!   on to its original destination (`SO_ORIGINAL_DST`) unchanged. Encrypting it on the way
//!   (point 3 of issue 17) is the mesh proxy's L4 mode, not this one's.
//! - `0.0.0.0:<TLS port>`, mTLS: presents the Pod's certificate and asks for a client
//!   certificate chained to the mesh's anchors; then, as the seed's gateway does, the peer
//!   names a local destination (`ip:port\n`: loopback or the address it reached us at), gets
//!   `Y` and the bytes flow.
//! - The certificate comes from the Pod's Secret, read through the API with the Pod's own
//!   ServiceAccount token (the kubelet mounts it; `ghostwire attach` grants that account `get`
//!   on that one Secret). A renewed certificate is picked up within `GW_IDENTITY_RELOAD` and
//!   served to new handshakes, without a restart; open connections keep theirs.

use crate::agent::AgentSettings;
use crate::desired::{CA_KEY, CERT_KEY, KEY_KEY, SERIAL, secret_name};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("Secret {0}: {1}")]
    Secret(String, String),
    #[error("reading Secret {0}: {1}")]
    Api(String, #[source] kube::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Listener {
    listener: &'static str,
}

/// `ghostwire_identity_agent_*` metrics.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    connections: Family<Listener, Counter>,
    refused: Family<Listener, Counter>,
    reloads: Counter,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("identity_agent");
        r.register(
            "connections",
            "Connections proxied, by listener (plain, tls)",
            m.connections.clone(),
        );
        r.register(
            "refused",
            "Connections refused (no original destination, failed handshake, bad destination)",
            m.refused.clone(),
        );
        r.register(
            "certificate_loads",
            "Certificates loaded from the Pod's Secret",
            m.reloads.clone(),
        );
        m
    }
}

/// The TLS config in use and the serial it serves; swapped whole on renewal.
#[derive(Debug, Default)]
pub struct Current(RwLock<Option<(String, Arc<ServerConfig>)>>);

impl Current {
    pub fn get(&self) -> Option<(String, Arc<ServerConfig>)> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, serial: String, c: Arc<ServerConfig>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some((serial, c));
    }
}

fn certs(text: &[u8]) -> Vec<CertificateDer<'static>> {
    pem::parse_many(text)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect()
}

/// The server config for a Secret's `tls.crt`, `tls.key`, `ca.crt` (pure but for the crypto).
pub fn server_config(secret: &str, s: &Secret) -> Result<(String, ServerConfig), ProxyError> {
    let bad = |why: String| ProxyError::Secret(secret.to_string(), why);
    let data = s.data.as_ref().ok_or_else(|| bad("has no data".into()))?;
    let get = |k: &str| {
        data.get(k)
            .map(|b| b.0.as_slice())
            .ok_or_else(|| bad(format!("key {k:?} is missing")))
    };
    let chain = certs(get(CERT_KEY)?);
    if chain.is_empty() {
        return Err(bad(format!("{CERT_KEY}: no certificate")));
    }
    let key = pem::parse(get(KEY_KEY)?).map_err(|e| bad(format!("{KEY_KEY}: {e}")))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.into_contents()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for a in certs(get(CA_KEY)?) {
        roots.add(a).map_err(|e| bad(format!("{CA_KEY}: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad(format!("{CA_KEY}: {e}")))?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| bad(format!("{KEY_KEY}: {e}")))?;
    let serial = s
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SERIAL).cloned())
        .unwrap_or_default();
    Ok((serial, config))
}

/// Reads the Pod's Secret every `reload` and swaps the config when its serial changes.
async fn follow(client: kube::Client, s: AgentSettings, current: Arc<Current>, metrics: Metrics) {
    let name = secret_name(&s.pod);
    let api: Api<Secret> = Api::namespaced(client, &s.namespace);
    let full = format!("{}/{name}", s.namespace);
    loop {
        match api.get_opt(&name).await {
            Ok(Some(secret)) => {
                let serial = secret
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(SERIAL));
                let seen = current.get().map(|(s, _)| s);
                if serial.is_some() && serial != seen.as_ref() {
                    match server_config(&full, &secret) {
                        Ok((serial, config)) => {
                            tracing::info!(secret = %full, %serial, "certificate loaded");
                            current.set(serial, Arc::new(config));
                            metrics.reloads.inc();
                        }
                        Err(e) => tracing::warn!(error = %e, "keeping the last certificate"),
                    }
                }
            }
            Ok(None) => {
                tracing::warn!(secret = %full, "no Secret yet (is the Pod opted in, and `ghostwire identity` running?)")
            }
            Err(e) => {
                tracing::warn!(error = %ProxyError::Api(full.clone(), e), "keeping the last certificate")
            }
        }
        tokio::time::sleep(s.reload).await;
    }
}

async fn pipe(mut a: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin, mut b: TcpStream) {
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}

async fn plain(listener: TcpListener, metrics: Metrics) {
    let label = Listener { listener: "plain" };
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let local = conn.local_addr().map(mesh_orig_dst::unmap).ok();
        let dst = local.map(|l| mesh_orig_dst::original_dst(&conn, l));
        let metrics = metrics.clone();
        let label = label.clone();
        tokio::spawn(async move {
            // A connection made to the port itself (not redirected) has nowhere to go.
            let dst = match (dst, local) {
                (Some(Ok(d)), Some(l)) if d != l => d,
                _ => {
                    metrics.refused.get_or_create(&label).inc();
                    return;
                }
            };
            match TcpStream::connect(dst).await {
                Ok(up) => {
                    metrics.connections.get_or_create(&label).inc();
                    pipe(conn, up).await;
                }
                Err(e) => {
                    metrics.refused.get_or_create(&label).inc();
                    tracing::debug!(%dst, error = %e, "upstream");
                }
            }
        });
    }
}

/// Where a TLS peer may go: loopback, or the address it reached this Pod at.
fn allowed(dst: SocketAddr, reached: IpAddr) -> bool {
    dst.ip().is_loopback() || dst.ip() == reached
}

async fn tls(listener: TcpListener, current: Arc<Current>, metrics: Metrics) {
    let label = Listener { listener: "tls" };
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let Some((_, config)) = current.get() else {
            metrics.refused.get_or_create(&label).inc();
            continue;
        };
        let metrics = metrics.clone();
        let label = label.clone();
        tokio::spawn(async move {
            let refuse = || {
                metrics.refused.get_or_create(&label).inc();
            };
            let Ok(reached) = conn.local_addr().map(|a| mesh_orig_dst::unmap(a).ip()) else {
                return;
            };
            let stream = match tokio_rustls::TlsAcceptor::from(config).accept(conn).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "handshake");
                    refuse();
                    return;
                }
            };
            let mut stream = BufReader::new(stream);
            let mut line = String::new();
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                (&mut stream).take(64).read_line(&mut line),
            )
            .await;
            let dst = match (read, line.trim().parse::<SocketAddr>()) {
                (Ok(Ok(_)), Ok(d)) if allowed(d, reached) => d,
                _ => {
                    refuse();
                    return;
                }
            };
            match TcpStream::connect(dst).await {
                Ok(up) => {
                    let mut stream = stream.into_inner();
                    if stream.write_all(b"Y").await.is_err() {
                        return;
                    }
                    metrics.connections.get_or_create(&label).inc();
                    pipe(stream, up).await;
                }
                Err(_) => refuse(),
            }
        });
    }
}

/// Ready once a certificate is loaded.
struct Health(Arc<Current>);

impl admin::Health for Health {
    fn healthz(&self) -> Result<(), String> {
        Ok(())
    }
    fn readyz(&self) -> Result<(), String> {
        match self.0.get() {
            Some(_) => Ok(()),
            None => Err("no certificate loaded yet".into()),
        }
    }
}

/// Runs the proxy until the process is stopped.
pub async fn run(s: AgentSettings, client: kube::Client) -> Result<(), ProxyError> {
    let mut registry = Registry::with_prefix("ghostwire");
    let metrics = Metrics::new(&mut registry);
    let current = Arc::new(Current::default());
    let plain_l = TcpListener::bind(("127.0.0.1", s.local_port)).await?;
    let tls_l = TcpListener::bind(("0.0.0.0", s.tls_port)).await?;
    let admin_l = TcpListener::bind(s.admin_addr).await?;
    tracing::info!(local = s.local_port, tls = s.tls_port, admin = %s.admin_addr, "proxy listening");
    tokio::select! {
        () = follow(client, s.clone(), current.clone(), metrics.clone()) => {}
        () = plain(plain_l, metrics.clone()) => {}
        () = tls(tls_l, current.clone(), metrics) => {}
        () = admin::serve(admin_l, Arc::new(registry), Arc::new(Health(current)), std::future::pending()) => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_peers_may_reach_only_this_pod() {
        let me: IpAddr = "10.244.0.7".parse().unwrap();
        assert!(allowed("127.0.0.1:8000".parse().unwrap(), me));
        assert!(allowed("10.244.0.7:8000".parse().unwrap(), me));
        assert!(!allowed("10.244.0.8:8000".parse().unwrap(), me));
        assert!(!allowed("10.96.0.1:443".parse().unwrap(), me));
    }
}
