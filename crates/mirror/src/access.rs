//! Clients for the clusters, with per-request API metrics on every one.
//!
//! A remote given by `remoteAPIURL` + `remoteCAURL` + `remoteSATokenPath` (the seed's second
//! way, besides a kubeconfig) gets its own stack:
//! - the CA is fetched from the URL at start and again every `--ca-refresh`; each fetch is
//!   checked by a [`CaPin`]: with `remoteCASHA256` given, every certificate must have one of
//!   those hashes; without, the first CA accepted is pinned for the process's life (trust on
//!   first use), so a URL that later serves another CA (spoofed or tampered) cannot swap it.
//!   A refused CA is logged and counted, and the pinned one stays in use. The TLS verifier
//!   reads the CA in force at every handshake; until one is accepted, handshakes fail (the
//!   remote is reported down).
//! - the token file is read again whenever its modification time or size changes (a
//!   projected ServiceAccount token is rotated in place), so a rotated token is used at once.
//!
//! The seed fetched the CA on every handshake, unchecked, and read the token once.

use crate::metrics::{ApiLabels, CaLabels, Metrics};
use bytes::Bytes;
use http::{Request, Response};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

/// Why a fetched CA is not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CaError {
    #[error("no PEM certificate in it")]
    NoCertificate,
    #[error("not PEM certificates: {0}")]
    Pem(String),
    #[error("certificate sha256:{0} is not one of remoteCASHA256")]
    NotInHashes(String),
    #[error(
        "it changed from the CA pinned at first use (sha256:{pinned}) to sha256:{fetched}; \
         refused (give remoteCASHA256 to allow a rotation)"
    )]
    ChangedFromPin { pinned: String, fetched: String },
}

/// SHA-256 of a DER certificate, lowercase hex.
pub fn sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The certificates of a PEM bundle (DER).
pub fn parse_pem(pem: &[u8]) -> Result<Vec<Vec<u8>>, CaError> {
    let mut out = Vec::new();
    for c in CertificateDer::pem_slice_iter(pem) {
        out.push(c.map_err(|e| CaError::Pem(e.to_string()))?.to_vec());
    }
    if out.is_empty() {
        return Err(CaError::NoCertificate);
    }
    Ok(out)
}

/// Which CA is acceptable: pure, so its rules are table-tested.
#[derive(Debug, Clone, Default)]
pub struct CaPin {
    /// `remoteCASHA256` (lowercase hex); empty: trust on first use.
    pub allowed: Vec<String>,
    /// The bundle in force (its certificates' hashes), once one was accepted.
    pub current: Option<Vec<String>>,
}

impl CaPin {
    /// Checks a fetched bundle; `Ok(Some(ders))` when it is accepted and differs from the one in
    /// force, `Ok(None)` when it is the same, `Err` when it is refused (the current one stays).
    pub fn check(&mut self, pem: &[u8]) -> Result<Option<Vec<Vec<u8>>>, CaError> {
        let ders = parse_pem(pem)?;
        let hashes: Vec<String> = ders.iter().map(|d| sha256_hex(d)).collect();
        if self.current.as_ref() == Some(&hashes) {
            return Ok(None);
        }
        if self.allowed.is_empty() {
            if let Some(pinned) = &self.current {
                return Err(CaError::ChangedFromPin {
                    pinned: pinned.join(","),
                    fetched: hashes.join(","),
                });
            }
        } else if let Some(h) = hashes.iter().find(|h| !self.allowed.contains(h)) {
            return Err(CaError::NotInHashes(h.clone()));
        }
        self.current = Some(hashes);
        Ok(Some(ders))
    }
}

/// The TLS verifier of a remote: the accepted CA in force at every handshake.
pub type CaVerifier = tls_peer::WithProvider<CurrentCa>;

/// The remote's accepted CA, as a webpki verifier (`None` until it was fetched).
#[derive(Debug, Default)]
pub struct CurrentCa(RwLock<Option<Arc<WebPkiServerVerifier>>>);

fn ca_verifier() -> CaVerifier {
    tls_peer::WithProvider::new(
        Arc::new(rustls::crypto::ring::default_provider()),
        CurrentCa::default(),
    )
}

fn set_ca(v: &CaVerifier, ders: Vec<Vec<u8>>) -> Result<(), String> {
    let mut roots = RootCertStore::empty();
    for d in ders {
        roots
            .add(CertificateDer::from(d))
            .map_err(|e| format!("not a usable CA certificate: {e}"))?;
    }
    let w = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), v.provider.clone())
        .build()
        .map_err(|e| e.to_string())?;
    *v.check.0.write().unwrap_or_else(|e| e.into_inner()) = Some(w);
    Ok(())
}

impl tls_peer::CheckServer for CurrentCa {
    fn check_server(
        &self,
        _provider: &rustls::crypto::CryptoProvider,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let current = self
            .0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                rustls::Error::General("the remote's CA has not been fetched yet".into())
            })?;
        current.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }
}

/// What says a file changed: its modification time and length.
type Stamp = (Option<SystemTime>, u64);

/// A bearer token file, read again when it changes on disk.
#[derive(Debug)]
pub struct TokenFile {
    path: PathBuf,
    /// (modified, length) of the contents cached, and the header value.
    cached: Mutex<Option<(Stamp, http::HeaderValue)>>,
}

impl TokenFile {
    pub fn new(path: &Path) -> TokenFile {
        TokenFile {
            path: path.to_path_buf(),
            cached: Mutex::new(None),
        }
    }

    /// The `Authorization` value; `None` when the file cannot be read and nothing was read
    /// before (the last token read stays in use when a rotation briefly removes the file).
    pub fn header(&self) -> Option<http::HeaderValue> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = std::fs::metadata(&self.path)
            .ok()
            .map(|m| (m.modified().ok(), m.len()));
        match (&*cached, stamp) {
            (Some((seen, v)), Some(now)) if *seen == now => return Some(v.clone()),
            (Some((_, v)), None) => return Some(v.clone()),
            _ => {}
        }
        let stamp = stamp?;
        let token = std::fs::read_to_string(&self.path).ok()?;
        let mut v = http::HeaderValue::from_str(&format!("Bearer {}", token.trim())).ok()?;
        v.set_sensitive(true);
        if cached.as_ref().is_some() {
            tracing::info!(path = %self.path.display(), "service account token re-read");
        }
        *cached = Some((stamp, v.clone()));
        Some(v)
    }
}

/// Counts and times every request a client makes (`ghostwire_mirror_api_requests_total`,
/// `…_api_request_duration_seconds`), by cluster, verb and status code.
#[derive(Clone)]
pub struct Measured<S> {
    inner: S,
    metrics: Arc<Metrics>,
    cluster: String,
    token: Option<Arc<TokenFile>>,
}

/// The [`tower::Layer`] of [`Measured`] (and, for token access, of the token header).
#[derive(Clone)]
pub struct MeasureLayer {
    pub metrics: Arc<Metrics>,
    pub cluster: String,
    pub token: Option<Arc<TokenFile>>,
}

impl<S> tower::Layer<S> for MeasureLayer {
    type Service = Measured<S>;
    fn layer(&self, inner: S) -> Measured<S> {
        Measured {
            inner,
            metrics: self.metrics.clone(),
            cluster: self.cluster.clone(),
            token: self.token.clone(),
        }
    }
}

/// The HTTP method, and WATCH for a GET with `watch=true` (a list is a GET: which paths are
/// collections is not known here).
fn verb<B>(req: &Request<B>) -> &'static str {
    let query = req.uri().query().unwrap_or_default();
    match req.method().as_str() {
        "GET"
            if query
                .split('&')
                .any(|p| p == "watch=true" || p == "watch=1") =>
        {
            "WATCH"
        }
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        _ => "OTHER",
    }
}

impl<S, B, R> tower::Service<Request<B>> for Measured<S>
where
    S: tower::Service<Request<B>, Response = Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(v) = self.token.as_ref().and_then(|t| t.header()) {
            req.headers_mut().insert(http::header::AUTHORIZATION, v);
        }
        let verb = verb(&req);
        let started = Instant::now();
        let fut = self.inner.call(req);
        let (metrics, cluster) = (self.metrics.clone(), self.cluster.clone());
        Box::pin(async move {
            let r = fut.await;
            let code = match &r {
                Ok(resp) => resp.status().as_u16().to_string(),
                Err(_) => "error".to_string(),
            };
            metrics
                .api_request_seconds
                .get_or_create(&ApiLabels {
                    cluster: cluster.clone(),
                    verb: verb.into(),
                })
                .observe(started.elapsed().as_secs_f64());
            metrics
                .api_requests
                .get_or_create(&crate::metrics::ApiCodeLabels {
                    cluster,
                    verb: verb.into(),
                    code,
                })
                .inc();
            r
        })
    }
}

/// Why a client cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("cluster {cluster}: kubeconfig {path}: {reason}")]
    Kubeconfig {
        cluster: String,
        path: String,
        reason: String,
    },
    #[error("cluster {cluster}: {reason}")]
    Client { cluster: String, reason: String },
}

/// GET `url` (http, https with the system's roots, or file) → its body.
pub async fn fetch(url: &str, timeout: Duration) -> Result<Vec<u8>, String> {
    use http_body_util::BodyExt;
    if let Some(path) = url.strip_prefix("file://") {
        return std::fs::read(path).map_err(|e| format!("{path}: {e}"));
    }
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| format!("no system roots for https: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, http_body_util::Empty<Bytes>>(https);
    let work = async {
        let resp = client.get(uri).await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// One fetch of a remote's CA, checked against its pin and installed when accepted.
async fn refresh_ca(
    cluster: &str,
    url: &str,
    pin: &mut CaPin,
    verifier: &CaVerifier,
    metrics: &Metrics,
) {
    let labels = CaLabels {
        cluster: cluster.to_string(),
    };
    let result = match fetch(url, Duration::from_secs(10)).await {
        Err(e) => {
            metrics.ca_fetch_errors.get_or_create(&labels).inc();
            tracing::warn!(cluster, url, error = e, "cannot fetch the remote's CA");
            return;
        }
        Ok(pem) => pin.check(&pem),
    };
    match result {
        Ok(None) => {}
        Ok(Some(ders)) => match set_ca(verifier, ders) {
            Ok(()) => {
                tracing::info!(
                    cluster,
                    url,
                    sha256 = pin
                        .current
                        .as_ref()
                        .map(|h| h.join(","))
                        .unwrap_or_default(),
                    "remote CA accepted"
                );
            }
            Err(e) => {
                pin.current = None;
                metrics.ca_refused.get_or_create(&labels).inc();
                tracing::warn!(cluster, url, error = e, "remote CA refused");
            }
        },
        Err(e) => {
            metrics.ca_refused.get_or_create(&labels).inc();
            tracing::warn!(cluster, url, error = %e, "remote CA refused");
        }
    }
}

/// A client for a cluster: `None` in-cluster, a kubeconfig, or API URL + CA URL + token file.
/// With token access, a task fetches the CA again every `ca_refresh` for as long as the client
/// lives.
pub async fn client_for(
    cluster: &str,
    access: Option<&crate::config::Access>,
    metrics: Arc<Metrics>,
    ca_refresh: Duration,
) -> Result<kube::Client, AccessError> {
    use crate::config::Access;
    let fail = |reason: String| AccessError::Client {
        cluster: cluster.into(),
        reason,
    };
    let layer = MeasureLayer {
        metrics: metrics.clone(),
        cluster: cluster.to_string(),
        token: None,
    };
    let config = match access {
        None => kube::Config::incluster()
            .map_err(|e| fail(format!("no kubeconfig given and not in a cluster: {e}")))?,
        Some(Access::Kubeconfig(path)) => {
            let bad = |reason: String| AccessError::Kubeconfig {
                cluster: cluster.into(),
                path: path.display().to_string(),
                reason,
            };
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|e| bad(e.to_string()))?
        }
        Some(Access::Token {
            api_url,
            ca_url,
            token_path,
            ca_sha256,
        }) => {
            let url: http::Uri = api_url
                .parse()
                .map_err(|e| fail(format!("remoteAPIURL {api_url:?}: {e}")))?;
            let verifier = Arc::new(ca_verifier());
            let mut pin = CaPin {
                allowed: ca_sha256.clone(),
                current: None,
            };
            refresh_ca(cluster, ca_url, &mut pin, &verifier, &metrics).await;
            let weak: Weak<CaVerifier> = Arc::downgrade(&verifier);
            let (name, ca_url, m) = (cluster.to_string(), ca_url.clone(), metrics.clone());
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ca_refresh).await;
                    let Some(v) = weak.upgrade() else { return };
                    refresh_ca(&name, &ca_url, &mut pin, &v, &m).await;
                }
            });
            let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| fail(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
            let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
            http.enforce_http(false);
            http.set_connect_timeout(Some(Duration::from_secs(10)));
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http);
            let hyper =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build::<_, kube::client::Body>(https);
            let base = kube::Config::new(url);
            let service = tower::ServiceBuilder::new()
                .layer(kube::client::ConfigExt::base_uri_layer(&base))
                .layer(MeasureLayer {
                    token: Some(Arc::new(TokenFile::new(token_path))),
                    ..layer
                })
                .service(hyper);
            return Ok(kube::Client::new(service, "default"));
        }
    };
    let builder = kube::client::ClientBuilder::try_from(config).map_err(|e| fail(e.to_string()))?;
    Ok(builder.with_layer(&layer).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PEM block around fixed bytes, distinct per `n`: `CaPin` parses the PEM framing and
    /// hashes the DER, it does not validate the certificate (rustls does, at `set_ca`).
    fn ca(n: u8) -> Vec<u8> {
        use base64::Engine;
        let der: Vec<u8> = (0..64).map(|i| i ^ n).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n").into_bytes()
    }

    #[test]
    fn trust_on_first_use_pins_the_first_ca() {
        let mut pin = CaPin::default();
        assert!(pin.check(&ca(1)).unwrap().is_some());
        assert_eq!(pin.check(&ca(1)).unwrap(), None, "same CA: nothing to do");
        let e = pin.check(&ca(2)).unwrap_err();
        assert!(matches!(e, CaError::ChangedFromPin { .. }), "{e}");
        // The pinned one stays in force.
        assert_eq!(pin.check(&ca(1)).unwrap(), None);
        assert_eq!(pin.check(b"junk").unwrap_err(), CaError::NoCertificate);
    }

    #[test]
    fn hashes_allow_exactly_those_cas() {
        let h = |n| sha256_hex(&parse_pem(&ca(n)).unwrap()[0]);
        let mut pin = CaPin {
            allowed: vec![h(1), h(3)],
            current: None,
        };
        assert_eq!(pin.check(&ca(2)).unwrap_err(), CaError::NotInHashes(h(2)));
        assert!(pin.check(&ca(1)).unwrap().is_some());
        // A rotation to another allowed CA is taken; an unlisted one never.
        assert!(pin.check(&ca(3)).unwrap().is_some());
        assert!(pin.check(&ca(2)).is_err());
        let mut both = ca(1);
        both.extend(ca(2));
        assert_eq!(pin.check(&both).unwrap_err(), CaError::NotInHashes(h(2)));
    }

    #[test]
    fn token_file_is_read_again_when_it_changes() {
        let dir = std::env::temp_dir().join(format!("gw-mirror-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        let t = TokenFile::new(&path);
        assert!(t.header().is_none());
        std::fs::write(&path, "one\n").unwrap();
        assert_eq!(t.header().unwrap(), "Bearer one");
        std::fs::write(&path, "second-token").unwrap();
        assert_eq!(t.header().unwrap(), "Bearer second-token");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(t.header().unwrap(), "Bearer second-token", "last one kept");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
