//! The attached proxy (the supervisor's child, running as the proxy uid):
//! - the mesh proxy (`mesh_proxy`) in its L4 mode, on `<local port>` (outbound: the Pod's
//!   redirected outbound TCP) and `<inbound port>` (the Pod's redirected inbound TCP). An
//!   outbound connection keeps its original destination; when the Pod that owns that address
//!   now speaks mesh TLS (or, for a Service address, the endpoint the proxy picks), it goes
//!   there over mTLS and the server must present exactly that Pod's SPIFFE ID; otherwise it
//!   goes in plaintext. Inbound, mesh TLS is terminated, the client must be the Pod that owns
//!   its source address, and the bytes go on to the original destination; plaintext passes
//!   in `permissive` mode only. Whom to expect where comes from the API ([`crate::peers`],
//!   listed every `GW_IDENTITY_RELOAD`).
//! - `0.0.0.0:<TLS port>`, the seed's mTLS protocol: presents the Pod's certificate and asks
//!   for a client certificate chained to the mesh's anchors; then the peer names a local
//!   destination (`ip:port\n`: loopback or the address it reached us at), gets `Y` and the
//!   bytes flow.
//! - The certificate comes from the Pod's Secret, read through the API with the Pod's own
//!   ServiceAccount token (the kubelet mounts it; `ghostwire attach` grants that account `get`
//!   on that one Secret). A renewed certificate is picked up within `GW_IDENTITY_RELOAD` and
//!   served to new handshakes on both ports, without a restart; open connections keep theirs.

use crate::agent::AgentSettings;
use crate::desired::{CA_KEY, CERT_KEY, KEY_KEY, SERIAL, secret_name};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use mesh_proxy::store::{ConfigSource, Store};
use mesh_proxy::tls::IdentitySource;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
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
    #[error("the mesh proxy: {0}")]
    Mesh(#[from] mesh_proxy::server::Error),
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
    ai_policy_errors: Counter,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics::default();
        let r = registry.sub_registry_with_prefix("identity_agent");
        r.register(
            "connections",
            "Connections proxied on the seed's TLS port, by listener (tls)",
            m.connections.clone(),
        );
        r.register(
            "refused",
            "Connections refused on the seed's TLS port (failed handshake, bad destination)",
            m.refused.clone(),
        );
        r.register(
            "certificate_loads",
            "Certificates loaded from the Pod's Secret",
            m.reloads.clone(),
        );
        r.register(
            "ai_policy_errors",
            "AI policies (the Pod's ConfigMap) refused; the last good one stays in force",
            m.ai_policy_errors.clone(),
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

/// The Pod's certificate as the mesh proxy presents it, and the anchors it trusts; swapped
/// with the seed port's config.
#[derive(Debug, Default)]
pub struct SecretIdentity(RwLock<Option<(Arc<CertifiedKey>, Vec<CertificateDer<'static>>)>>);

impl SecretIdentity {
    /// From PEM text, as a Secret would hold it (e.g. a client that presents a Pod's
    /// certificate in a test or the demo).
    pub fn from_pem(chain: &str, key: &str, anchors: &str) -> Result<SecretIdentity, ProxyError> {
        let data = [(CERT_KEY, chain), (KEY_KEY, key), (CA_KEY, anchors)]
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    k8s_openapi::ByteString(v.as_bytes().to_vec()),
                )
            })
            .collect();
        let secret = Secret {
            data: Some(data),
            ..Secret::default()
        };
        let l = load("(PEM)", &secret)?;
        let me = SecretIdentity::default();
        me.set(l.key, l.anchors);
        Ok(me)
    }

    fn set(&self, key: Arc<CertifiedKey>, anchors: Vec<CertificateDer<'static>>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some((key, anchors));
    }
}

impl IdentitySource for SecretIdentity {
    fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        let g = self.0.read().unwrap_or_else(|e| e.into_inner());
        g.as_ref().map(|(k, _)| k.clone())
    }
    fn trust_anchors(&self) -> Vec<CertificateDer<'static>> {
        let g = self.0.read().unwrap_or_else(|e| e.into_inner());
        g.as_ref().map(|(_, a)| a.clone()).unwrap_or_default()
    }
}

/// What a Secret's `tls.crt`, `tls.key`, `ca.crt` make: the seed port's server config, the
/// mesh proxy's certified key and anchors, and the serial (pure but for the crypto).
pub struct Loaded {
    pub serial: String,
    pub server: ServerConfig,
    pub key: Arc<CertifiedKey>,
    pub anchors: Vec<CertificateDer<'static>>,
}

/// Reads a Secret's certificate, key and anchors.
pub fn load(secret: &str, s: &Secret) -> Result<Loaded, ProxyError> {
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
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| bad(format!("{KEY_KEY}: {e}")))?;
    let certified = Arc::new(CertifiedKey::new(chain.clone(), signer));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let anchors = certs(get(CA_KEY)?);
    let mut roots = RootCertStore::empty();
    for a in &anchors {
        roots
            .add(a.clone())
            .map_err(|e| bad(format!("{CA_KEY}: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| bad(format!("{CA_KEY}: {e}")))?;
    let server = ServerConfig::builder_with_provider(provider)
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
    Ok(Loaded {
        serial,
        server,
        key: certified,
        anchors,
    })
}

/// Reads the Pod's Secret every `reload` and swaps the config when its serial changes.
async fn follow(
    client: kube::Client,
    s: AgentSettings,
    current: Arc<Current>,
    identity: Arc<SecretIdentity>,
    metrics: Metrics,
) {
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
                    match load(&full, &secret) {
                        Ok(l) => {
                            tracing::info!(secret = %full, serial = %l.serial, "certificate loaded");
                            identity.set(l.key, l.anchors);
                            current.set(l.serial, Arc::new(l.server));
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

/// Whom to expect where: Pods, Services and EndpointSlices listed every `poll`, made into the
/// L4 proxy's config ([`crate::peers::config`]) and swapped in when it changed.
pub struct Peers {
    pub client: kube::Client,
    pub trust_domain: String,
    pub poll: std::time::Duration,
}

impl Peers {
    /// One observation of the cluster, as a config.
    pub async fn observe(&self) -> Result<mesh_proxy::config::Config, String> {
        let lp = kube::api::ListParams::default();
        let pods = Api::<k8s_openapi::api::core::v1::Pod>::all(self.client.clone())
            .list(&lp)
            .await
            .map_err(|e| format!("listing Pods: {e}"))?;
        let services = Api::<k8s_openapi::api::core::v1::Service>::all(self.client.clone())
            .list(&lp)
            .await
            .map_err(|e| format!("listing Services: {e}"))?;
        let slices = Api::<EndpointSlice>::all(self.client.clone())
            .list(&lp)
            .await
            .map_err(|e| format!("listing EndpointSlices: {e}"))?;
        crate::peers::config(
            &pods.items,
            &services.items,
            &slices.items,
            &self.trust_domain,
        )
        .map_err(|e| e.to_string())
    }
}

impl ConfigSource for Peers {
    fn run(
        self: Box<Self>,
        store: Store,
        on_error: Box<dyn Fn(&mesh_proxy::config::ConfigError) + Send + Sync>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let mut last = None;
            loop {
                match self.observe().await {
                    Ok(c) if last.as_ref() != Some(&c) => match store.replace(c.clone()) {
                        Ok(g) => {
                            tracing::info!(
                                generation = g,
                                pods = c.pods.len(),
                                services = c.services.len(),
                                "peers updated"
                            );
                            last = Some(c);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "peer config refused");
                            on_error(&e);
                        }
                    },
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "keeping the last peers"),
                }
                tokio::time::sleep(self.poll).await;
            }
        })
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

/// The mesh proxy's settings for the agent: L4 mode on the agent's ports, no routing file,
/// no controller, the identity from the Pod's Secret.
pub fn mesh_settings(s: &AgentSettings) -> mesh_config::ProxySettings {
    let mut m = mesh_config::Sources::default()
        .proxy_settings()
        .expect("the mesh's built-in defaults are valid");
    m.l4_only = true;
    m.ktls = s.ktls;
    m.inbound_port = s.inbound_port;
    m.outbound_port = s.local_port;
    m.admin_addr = s.mesh_admin_addr;
    m.tls_mode = s.tls_mode;
    m.ipv6 = false;
    m.config = None;
    m.preview_map = None;
    m.controller = vec![];
    m.tls_files = None;
    m.identity = None;
    m
}

/// Runs the proxy until the process is stopped. The mesh proxy listens only once the first
/// list of peers is in, so no connection to an encrypting Pod goes out in plaintext for want
/// of knowing it; until the Pod's certificate is loaded, such connections fail (closed).
pub async fn run(s: AgentSettings, client: kube::Client) -> Result<(), ProxyError> {
    let mut registry = Registry::with_prefix("ghostwire");
    let metrics = Metrics::new(&mut registry);
    let current = Arc::new(Current::default());
    let identity = Arc::new(SecretIdentity::default());
    let peers = Peers {
        client: client.clone(),
        trust_domain: s.trust_domain.clone(),
        poll: s.reload,
    };
    let store = Store::default();
    loop {
        match peers.observe().await {
            Ok(c) => match store.replace(c) {
                Ok(_) => break,
                Err(e) => tracing::warn!(error = %e, "peer config refused; retrying"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot list peers yet; retrying"),
        }
        tokio::time::sleep(s.reload).await;
    }
    let mut mesh = mesh_proxy::Proxy::bind_with(
        mesh_settings(&s),
        store,
        Some(Box::new(peers)),
        Some(identity.clone() as Arc<dyn IdentitySource>),
    )
    .await?;
    // AI rewriting follows the Pod's annotations and its ConfigMap live: while the Pod is
    // not opted in there is no policy, and the L4 proxy keeps its connections opaque.
    let (tx, policy) = crate::ai::handle();
    mesh = mesh.with_llm(policy);
    let ai_task = crate::ai::follow(
        client.clone(),
        s.namespace.clone(),
        s.pod.clone(),
        tx,
        metrics.ai_policy_errors.clone(),
    );
    let tls_l = TcpListener::bind(("0.0.0.0", s.tls_port)).await?;
    let admin_l = TcpListener::bind(s.admin_addr).await?;
    tracing::info!(outbound = s.local_port, inbound = s.inbound_port, tls = s.tls_port, admin = %s.admin_addr, mesh_admin = %s.mesh_admin_addr, "proxy listening");
    tokio::select! {
        () = follow(client, s.clone(), current.clone(), identity, metrics.clone()) => {}
        () = mesh.serve(std::future::pending()) => {}
        () = tls(tls_l, current.clone(), metrics) => {}
        () = admin::serve(admin_l, Arc::new(registry), Arc::new(Health(current)), std::future::pending()) => {}
        () = ai_task => {}
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
