//! Mutual TLS between meshed Pods.
//!
//! - An [`IdentitySource`] says what this proxy presents (its certificate chain and key) and
//!   whom it trusts (the mesh's anchors). [`FileIdentity`] reads PEM files and swaps in what
//!   they say when they change; the controller's `mesh_controller::identity::CertStore` is the
//!   other source. Either feeds the same resolver, so handshakes always use the current one.
//! - Peers are verified here, not by host name: webpki checks the chain to the anchors, then
//!   the leaf's only URI SAN must be a SPIFFE ID, and on the outbound side exactly the one the
//!   routing config names for the endpoint.
//! - Mesh TLS is told apart from the app's own TLS by ALPN: only a ClientHello offering
//!   [`ALPN`] is terminated by the inbound side; any other TLS passes through opaque.

use crate::detect::Prefixed;
use crate::pool::Upstream;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use rustls::client::UnbufferedClientConnection;
use rustls::client::danger::ServerCertVerified;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::UnbufferedServerConnection;
use rustls::server::danger::ClientCertVerified;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, ServerConfig, SignatureScheme};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpStream;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The private ALPN id a meshed proxy offers; the app's own TLS never does.
pub const ALPN: &[u8] = b"gw.mesh/1";

/// The header carrying the verified client identity (SPIFFE ID) to the app; the inbound side
/// removes any copy the client sent before adding its own.
pub const CLIENT_ID_HEADER: &str = "x-ghostwire-client-id";

/// What this proxy presents and whom it trusts.
pub trait IdentitySource: Send + Sync + std::fmt::Debug + 'static {
    /// The certificate chain and key presented in handshakes; `None` until there is one.
    fn certified_key(&self) -> Option<Arc<CertifiedKey>>;
    /// The anchors peers' chains must lead to (several during a rotation).
    fn trust_anchors(&self) -> Vec<CertificateDer<'static>>;
}

pub use mesh_config::TlsMode as Mode;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

fn file_error(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    anchors: Vec<CertificateDer<'static>>,
}

/// Certificate chain, private key and trust anchors from PEM files (e.g. a mounted
/// `kubernetes.io/tls` Secret: `tls.crt`, `tls.key`, `ca.crt`). [`FileIdentity::reload`] swaps
/// all three in at once, and only when they are consistent (the key matches the leaf, the leaf
/// names a SPIFFE ID, at least one anchor); otherwise the previous ones stay.
#[derive(Debug)]
pub struct FileIdentity {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub roots: PathBuf,
    current: RwLock<Option<Loaded>>,
    seen: Mutex<Option<Vec<Vec<u8>>>>,
}

impl FileIdentity {
    pub fn new(cert: PathBuf, key: PathBuf, roots: PathBuf) -> FileIdentity {
        FileIdentity {
            cert,
            key,
            roots,
            current: RwLock::default(),
            seen: Mutex::default(),
        }
    }

    /// Reads the files; when their bytes changed and they are valid, swaps them in. `Ok(true)`:
    /// a new identity is in use.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| file_error(p, e));
        let bytes = vec![read(&self.cert)?, read(&self.key)?, read(&self.roots)?];
        if self.seen.lock().unwrap_or_else(|e| e.into_inner()).as_ref() == Some(&bytes) {
            return Ok(false);
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes[0])
            .collect::<Result<_, _>>()
            .map_err(|e| file_error(&self.cert, format!("not PEM certificates: {e:?}")))?;
        let Some(leaf) = chain.first() else {
            return Err(file_error(&self.cert, "no CERTIFICATE block"));
        };
        spiffe_id(leaf).map_err(|r| file_error(&self.cert, r))?;
        let key = PrivateKeyDer::from_pem_slice(&bytes[1])
            .map_err(|e| file_error(&self.key, format!("no usable private key: {e:?}")))?;
        let signer = rustls::crypto::ring::sign::any_supported_type(&key)
            .map_err(|e| file_error(&self.key, e))?;
        let certified = CertifiedKey::new(chain, signer);
        if let Err(e @ rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
            certified.keys_match()
        {
            return Err(file_error(&self.key, e));
        }
        let anchors: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes[2])
            .collect::<Result<_, _>>()
            .map_err(|e| file_error(&self.roots, format!("not PEM certificates: {e:?}")))?;
        if anchors.is_empty() {
            return Err(file_error(&self.roots, "no CERTIFICATE block"));
        }
        if let Some(bad) = anchors
            .iter()
            .find(|a| webpki::anchor_from_trusted_cert(a).is_err())
        {
            return Err(file_error(
                &self.roots,
                format!("a certificate is not a usable anchor ({} bytes)", bad.len()),
            ));
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(Loaded {
            key: Arc::new(certified),
            anchors,
        });
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
        Ok(true)
    }

    /// Reloads every `poll` until the process ends; errors go to `on_error` and the previous
    /// identity stays in use.
    pub async fn follow(self: Arc<Self>, poll: Duration, on_error: impl Fn(&TlsError) + Send) {
        let mut tick = tokio::time::interval(poll);
        loop {
            tick.tick().await;
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.reload()).await {
                Ok(Ok(true)) => {
                    tracing::info!(cert = %self.cert.display(), "mesh TLS identity loaded")
                }
                Ok(Ok(false)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "mesh TLS files refused; keeping the previous identity");
                    on_error(&e);
                }
                Err(_) => return,
            }
        }
    }
}

impl IdentitySource for FileIdentity {
    fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        let g = self.current.read().unwrap_or_else(|e| e.into_inner());
        g.as_ref().map(|l| l.key.clone())
    }
    fn trust_anchors(&self) -> Vec<CertificateDer<'static>> {
        let g = self.current.read().unwrap_or_else(|e| e.into_inner());
        g.as_ref().map(|l| l.anchors.clone()).unwrap_or_default()
    }
}

/// The only URI SAN of `cert`, which must be a SPIFFE ID.
pub fn spiffe_id(cert: &CertificateDer<'_>) -> Result<String, String> {
    let (_, c) =
        X509Certificate::from_der(cert).map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let san = c
        .subject_alternative_name()
        .map_err(|e| format!("bad subjectAltName: {e}"))?
        .ok_or("no subjectAltName")?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [one] if one.starts_with("spiffe://") => Ok(one.to_string()),
        [one] => Err(format!("URI SAN {one:?} is not a SPIFFE ID")),
        [] => Err("no URI SAN".into()),
        _ => Err(format!("{} URI SANs, expected one", uris.len())),
    }
}

fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as W;
    rustls::Error::InvalidCertificate(match e {
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        W::CertExpired { .. } => CertificateError::Expired,
        W::CertNotValidYet { .. } => CertificateError::NotValidYet,
        W::BadDer | W::BadDerTime => CertificateError::BadEncoding,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    })
}

/// The chain of `end` to `source`'s anchors for `usage`, then its SPIFFE ID.
fn verify_peer(
    source: &dyn IdentitySource,
    provider: &CryptoProvider,
    end: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    usage: webpki::KeyUsage,
) -> Result<String, rustls::Error> {
    let anchors_der = source.trust_anchors();
    let anchors: Vec<_> = anchors_der
        .iter()
        .filter_map(|a| webpki::anchor_from_trusted_cert(a).ok())
        .collect();
    if anchors.is_empty() {
        return Err(rustls::Error::General(
            "no mesh trust anchors loaded".into(),
        ));
    }
    let ee = webpki::EndEntityCert::try_from(end).map_err(pki_error)?;
    ee.verify_for_usage(
        provider.signature_verification_algorithms.all,
        &anchors,
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(pki_error)?;
    spiffe_id(end).map_err(|reason| {
        tracing::debug!(%reason, "peer certificate has no SPIFFE ID");
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    })
}

/// Outbound: the server must chain to the anchors and be exactly `expected`.
#[derive(Debug)]
struct ServerCheck {
    source: Arc<dyn IdentitySource>,
    expected: String,
}

impl tls_peer::CheckServer for ServerCheck {
    fn check_server(
        &self,
        provider: &CryptoProvider,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let id = verify_peer(
            &*self.source,
            provider,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
        )?;
        if id != self.expected {
            tracing::debug!(presented = %id, expected = %self.expected, "peer identity mismatch");
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }
}

/// Inbound: a client certificate is required and must chain to the anchors with a SPIFFE ID.
#[derive(Debug)]
struct ClientCheck {
    source: Arc<dyn IdentitySource>,
}

impl tls_peer::CheckClient for ClientCheck {
    fn check_client(
        &self,
        provider: &CryptoProvider,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_peer(
            &*self.source,
            provider,
            end_entity,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
    }
}

/// Presents the source's current certificate, as server and as client.
#[derive(Debug)]
struct Presents(Arc<dyn IdentitySource>);

impl rustls::server::ResolvesServerCert for Presents {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }
}

impl rustls::client::ResolvesClientCert for Presents {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.certified_key()
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// The proxy's mesh TLS: one server config, one client config per expected peer identity.
#[derive(Debug)]
pub struct MeshTls {
    source: Arc<dyn IdentitySource>,
    provider: Arc<CryptoProvider>,
    server: Arc<ServerConfig>,
    clients: Mutex<HashMap<String, Arc<ClientConfig>>>,
    /// kTLS asked for (the Pod's `ghostwire.dev/ktls`): its counters; `None`: userspace only.
    ktls: Option<ktls::Metrics>,
}

pub type ClientStream = tokio_rustls::client::TlsStream<BufReader<TcpStream>>;

/// rustls pulls TLS from its transport 4 KiB at a time (rustls 0.23's deframer), so a full
/// 16 KiB record would cost four `recvfrom` calls; a read buffer under it makes that one call
/// for up to two records. Writes pass straight through.
const TLS_READ_BUFFER: usize = 32 * 1024;

fn buffered(tcp: TcpStream) -> BufReader<TcpStream> {
    BufReader::with_capacity(TLS_READ_BUFFER, tcp)
}

impl MeshTls {
    pub fn new(source: Arc<dyn IdentitySource>) -> MeshTls {
        MeshTls::with_ktls(source, None)
    }

    /// With `ktls`, every mesh TLS connection tries the kernel hand-off: the socket is probed
    /// for the TLS ULP first; where the kernel has it, the handshake runs on rustls'
    /// unbuffered API and the session keys go to the kernel (`ktls::stream`); where it has
    /// not, the connection is the ordinary userspace one and the fallback is counted.
    pub fn with_ktls(source: Arc<dyn IdentitySource>, ktls: Option<ktls::Metrics>) -> MeshTls {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .with_client_cert_verifier(Arc::new(tls_peer::WithProvider::new(
                provider.clone(),
                ClientCheck {
                    source: source.clone(),
                },
            )))
            .with_cert_resolver(Arc::new(Presents(source.clone())));
        server.alpn_protocols = vec![ALPN.to_vec()];
        server.enable_secret_extraction = ktls.is_some();
        // No session resumption, on either side: a resumed TLS 1.3 session carries the peer
        // identity of the handshake it came from, so a rotated certificate (renewed, renamed,
        // its CA dropped) would live on in new connections. Mesh connections are pooled, so
        // full handshakes are rare; ztunnel makes the same choice.
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server.send_tls13_tickets = 0;
        MeshTls {
            source,
            provider,
            server: Arc::new(server),
            clients: Mutex::default(),
            ktls,
        }
    }

    /// Whether there is a certificate to present yet.
    pub fn ready(&self) -> bool {
        self.source.certified_key().is_some()
    }

    fn client(&self, expected: &str) -> Arc<ClientConfig> {
        let mut m = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = m.get(expected) {
            return c.clone();
        }
        let mut c = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(tls_peer::WithProvider::new(
                self.provider.clone(),
                ServerCheck {
                    source: self.source.clone(),
                    expected: expected.to_string(),
                },
            )))
            .with_client_cert_resolver(Arc::new(Presents(self.source.clone())));
        c.alpn_protocols = vec![ALPN.to_vec()];
        c.enable_secret_extraction = self.ktls.is_some();
        // See the server's config: no resumption.
        c.resumption = rustls::client::Resumption::disabled();
        let c = Arc::new(c);
        if m.len() > 4096 {
            m.clear();
        }
        m.insert(expected.to_string(), c.clone());
        c
    }

    /// Mesh TLS over `tcp` to a peer that must be `expected`.
    pub async fn connect(&self, tcp: TcpStream, expected: &str) -> io::Result<ClientStream> {
        if !self.ready() {
            return Err(io::Error::other("no mesh certificate yet"));
        }
        let ip = tcp.peer_addr()?.ip();
        tokio_rustls::TlsConnector::from(self.client(expected))
            .connect(ServerName::IpAddress(ip.into()), buffered(tcp))
            .await
    }

    /// Mesh TLS over `tcp` to a peer that must be `expected`, handed to the kernel when kTLS
    /// is asked for and the kernel has it (else as [`MeshTls::connect`]).
    pub async fn connect_io(&self, mut tcp: TcpStream, expected: &str) -> io::Result<Upstream> {
        let Some(m) = self.ktls.as_ref().filter(|m| m.probe(&tcp)) else {
            return Ok(Box::new(self.connect(tcp, expected).await?));
        };
        if !self.ready() {
            return Err(io::Error::other("no mesh certificate yet"));
        }
        let ip = tcp.peer_addr()?.ip();
        let mut conn = UnbufferedClientConnection::new(
            self.client(expected),
            ServerName::IpAddress(ip.into()),
        )
        .map_err(io::Error::other)?;
        ktls::stream::handshake(&mut tcp, &mut conn, Vec::new()).await?;
        let stream = ktls::stream::hand_off(tcp, conn, m).map_err(io::Error::other)?;
        Ok(Box::new(stream))
    }

    /// Terminates mesh TLS on `tcp`, whose first bytes (`read`, at least the ClientHello's
    /// start) were already read; the stream and the client's verified identity. Handed to the
    /// kernel when kTLS is asked for and the kernel has it.
    pub async fn accept_io(
        &self,
        read: Vec<u8>,
        mut tcp: TcpStream,
    ) -> io::Result<(Upstream, String)> {
        let Some(m) = self.ktls.as_ref().filter(|m| m.probe(&tcp)) else {
            let (s, id) = self.accept(Prefixed::new(read, buffered(tcp))).await?;
            return Ok((Box::new(s), id));
        };
        let mut conn =
            UnbufferedServerConnection::new(self.server.clone()).map_err(io::Error::other)?;
        ktls::stream::handshake(&mut tcp, &mut conn, read).await?;
        let id = client_id(conn.peer_certificates())?;
        let stream = ktls::stream::hand_off(tcp, conn, m).map_err(io::Error::other)?;
        Ok((Box::new(stream), id))
    }

    /// Terminates mesh TLS on `io`; returns the stream and the client's verified identity.
    pub async fn accept<IO>(
        &self,
        io: IO,
    ) -> io::Result<(tokio_rustls::server::TlsStream<IO>, String)>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let s = tokio_rustls::TlsAcceptor::from(self.server.clone())
            .accept(io)
            .await?;
        let id = client_id(s.get_ref().1.peer_certificates())?;
        Ok((s, id))
    }
}

/// The identity in use, read at each scrape: `tls_identity_expiration_timestamp_seconds{id}`,
/// the leaf's notAfter, labelled with its SPIFFE ID. One series (none before the first
/// identity), so a rotation that did not happen, or a stale one, is one alert rule away.
#[derive(Debug)]
pub struct IdentityMetrics(pub Arc<dyn IdentitySource>);

impl Collector for IdentityMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(key) = self.0.certified_key() else {
            return Ok(());
        };
        let Some((id, not_after)) = key.cert.first().and_then(|leaf| {
            let (_, c) = X509Certificate::from_der(leaf).ok()?;
            Some((spiffe_id(leaf).ok()?, c.validity().not_after.timestamp()))
        }) else {
            return Ok(());
        };
        let gauge = ConstGauge::new(not_after);
        let mut m = encoder.encode_descriptor(
            "tls_identity_expiration_timestamp_seconds",
            "When the mesh TLS certificate in use expires (Unix seconds), by its SPIFFE ID",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(m.encode_family(&vec![("id", id)])?)
    }
}

/// The SPIFFE ID of a verified client's leaf.
fn client_id(certs: Option<&[CertificateDer<'_>]>) -> io::Result<String> {
    certs
        .and_then(|c| c.first())
        .ok_or_else(|| io::Error::other("no client certificate"))
        .and_then(|c| spiffe_id(c).map_err(io::Error::other))
}

/// Whether the ClientHello at the start of `buf` offers [`ALPN`]; `None`: not complete yet.
/// Bytes that are not a parseable ClientHello are `Some(false)` (not mesh TLS).
pub fn offers_mesh_alpn(buf: &[u8]) -> Option<bool> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut rest = buf;
    while !rest.is_empty() {
        match acceptor.read_tls(&mut rest) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return Some(false),
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Some(
            accepted
                .client_hello()
                .alpn()
                .is_some_and(|mut protocols| protocols.any(|p| p == ALPN)),
        ),
        Ok(None) => None,
        Err(_) => Some(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(alpn: &[&[u8]]) -> Vec<u8> {
        let mut c =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        let mut conn =
            rustls::ClientConnection::new(Arc::new(c), "app.example".try_into().unwrap()).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn alpn_tells_mesh_tls_from_the_apps_own() {
        let mesh = hello(&[b"h2", ALPN]);
        assert_eq!(offers_mesh_alpn(&mesh), Some(true));
        assert_eq!(offers_mesh_alpn(&mesh[..mesh.len() / 2]), None);
        assert_eq!(offers_mesh_alpn(&hello(&[b"h2", b"http/1.1"])), Some(false));
        assert_eq!(offers_mesh_alpn(&hello(&[])), Some(false));
        assert_eq!(offers_mesh_alpn(b"\x16\x03\x01\x00\x05hello"), Some(false));
    }
}

#[cfg(test)]
mod identity_tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        SanType,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An identity whose certificate the test swaps, as a reload does.
    #[derive(Debug)]
    struct Swappable {
        key: RwLock<Arc<CertifiedKey>>,
        anchor: CertificateDer<'static>,
    }

    impl IdentitySource for Swappable {
        fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
            Some(self.key.read().unwrap().clone())
        }
        fn trust_anchors(&self) -> Vec<CertificateDer<'static>> {
            vec![self.anchor.clone()]
        }
    }

    struct TestCa {
        issuer: Issuer<'static, KeyPair>,
        anchor: CertificateDer<'static>,
    }

    impl TestCa {
        fn new() -> TestCa {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::default();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let anchor = p.self_signed(&key).unwrap().der().clone();
            TestCa {
                issuer: Issuer::new(p, key),
                anchor,
            }
        }

        fn identity(&self, id: &str) -> Arc<CertifiedKey> {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::default();
            p.not_after = rcgen::date_time_ymd(2031, 1, 2);
            p.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = p.signed_by(&key, &self.issuer).unwrap();
            let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
            let signer = rustls::crypto::ring::sign::any_supported_type(&der).unwrap();
            Arc::new(CertifiedKey::new(vec![cert.der().clone()], signer))
        }

        fn source(&self, id: &str) -> Arc<Swappable> {
            Arc::new(Swappable {
                key: RwLock::new(self.identity(id)),
                anchor: self.anchor.clone(),
            })
        }
    }

    /// One connection from `client` to `server`, which answers with the client identity it
    /// verified; read to the end, so the client has any session tickets the server sent.
    async fn seen_by_server(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let mut s = tokio_rustls::TlsAcceptor::from(server)
                .accept(tcp)
                .await
                .unwrap();
            let id = client_id(s.get_ref().1.peer_certificates()).unwrap();
            s.write_all(id.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut s = tokio_rustls::TlsConnector::from(client)
            .connect(ServerName::IpAddress(addr.ip().into()), tcp)
            .await
            .unwrap();
        let mut seen = String::new();
        s.read_to_string(&mut seen).await.unwrap();
        accept.await.unwrap();
        seen
    }

    const SERVER: &str = "spiffe://td.test/ns/b/sa/server";
    const OLD: &str = "spiffe://td.test/ns/a/sa/old";
    const NEW: &str = "spiffe://td.test/ns/a/sa/new";

    /// Connects twice as `OLD`, rotates the client to `NEW`, and returns who the server saw
    /// on the connection after. `resuming_peer`: the side not under test keeps its rustls
    /// default (session cache, tickets), so only the side under test can refuse resumption.
    async fn seen_after_rotation(client_side_under_test: bool) -> String {
        let ca = TestCa::new();
        let server = MeshTls::new(ca.source(SERVER));
        let ids = ca.source(OLD);
        let client = MeshTls::new(ids.clone());
        let (mut c, mut s) = ((*client.client(SERVER)).clone(), (*server.server).clone());
        if client_side_under_test {
            s.session_storage = rustls::server::ServerSessionMemoryCache::new(64);
            s.send_tls13_tickets = 2;
        } else {
            c.resumption = rustls::client::Resumption::default();
        }
        let (c, s) = (Arc::new(c), Arc::new(s));
        for _ in 0..2 {
            assert_eq!(seen_by_server(c.clone(), s.clone()).await, OLD);
        }
        *ids.key.write().unwrap() = ca.identity(NEW);
        seen_by_server(c, s).await
    }

    // A resumed TLS 1.3 session carries the identity of the handshake it came from: a rotated
    // (renamed, renewed, revoked) certificate would stay in use on new connections.
    #[tokio::test]
    async fn the_client_never_resumes_so_a_rotated_identity_is_presented_at_once() {
        assert_eq!(seen_after_rotation(true).await, NEW);
    }

    #[tokio::test]
    async fn the_server_never_resumes_so_a_rotated_client_is_seen_at_once() {
        assert_eq!(seen_after_rotation(false).await, NEW);
    }

    #[test]
    fn the_identity_in_use_is_a_metric_with_its_expiry() {
        let ca = TestCa::new();
        let ids = ca.source(OLD);
        let mut reg = prometheus_client::registry::Registry::with_prefix("ghostwire");
        reg.sub_registry_with_prefix("proxy")
            .register_collector(Box::new(IdentityMetrics(ids.clone())));
        let scrape = || {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, &reg).unwrap();
            out
        };
        // 2031-01-02T00:00:00Z, the test certificates' notAfter.
        let series = |id: &str| {
            format!(
                "ghostwire_proxy_tls_identity_expiration_timestamp_seconds{{id=\"{id}\"}} 1925078400\n"
            )
        };
        assert!(scrape().contains(&series(OLD)), "{}", scrape());
        *ids.key.write().unwrap() = ca.identity(NEW);
        let after = scrape();
        assert!(
            after.contains(&series(NEW)) && !after.contains(OLD),
            "{after}"
        );
    }
}
