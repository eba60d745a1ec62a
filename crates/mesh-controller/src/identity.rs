//! The proxy's side of `SignCertificate`: the key is made in the proxy and never leaves it; the
//! CSR names the Pod's SPIFFE ID; the certificate lives in a [`CertStore`] that rustls asks on
//! every handshake (as server and as client), and is renewed at two thirds of its life. A
//! renewal swaps what new handshakes get; connections already open keep the session they made,
//! so none is dropped.

use crate::feed::{FeedError, authorized, connect};
use mesh_api::v1::CertificateRequest;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Controller(#[from] FeedError),
    #[error("cannot make a key or CSR: {0}")]
    Csr(String),
    #[error("the controller's answer is not usable: {0}")]
    Answer(String),
}

impl From<tonic::Status> for IdentityError {
    fn from(s: tonic::Status) -> Self {
        IdentityError::Controller(FeedError::Status(s))
    }
}

/// A certificate in use, with what it came with.
#[derive(Debug)]
pub struct Issued {
    pub key: Arc<CertifiedKey>,
    /// The anchors to verify peers with (several during a rotation).
    pub anchors: Vec<CertificateDer<'static>>,
    pub issued_at: SystemTime,
    pub not_after: SystemTime,
}

impl Issued {
    /// When to renew: two thirds into its life, as issued.
    pub fn renew_at(&self) -> SystemTime {
        renew_at(self.issued_at, self.not_after)
    }
}

/// Two thirds of the way from `issued_at` to `not_after` (at once if already past).
pub fn renew_at(issued_at: SystemTime, not_after: SystemTime) -> SystemTime {
    let life = not_after.duration_since(issued_at).unwrap_or_default();
    issued_at + life * 2 / 3
}

/// What the handshakes present; empty until the first certificate arrives.
#[derive(Debug, Default)]
pub struct CertStore(RwLock<Option<Arc<Issued>>>);

impl CertStore {
    pub fn current(&self) -> Option<Arc<Issued>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, i: Issued) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(i));
    }
}

impl rustls::server::ResolvesServerCert for CertStore {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current().map(|i| i.key.clone())
    }
}

impl rustls::client::ResolvesClientCert for CertStore {
    fn resolve(&self, _: &[&[u8]], _: &[rustls::SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.current().map(|i| i.key.clone())
    }
    fn has_certs(&self) -> bool {
        self.current().is_some()
    }
}

/// The proxy's mesh TLS takes its certificate and anchors from here, as it does from files.
impl mesh_proxy::tls::IdentitySource for CertStore {
    fn certified_key(&self) -> Option<Arc<CertifiedKey>> {
        self.current().map(|i| i.key.clone())
    }
    fn trust_anchors(&self) -> Vec<CertificateDer<'static>> {
        self.current()
            .map(|i| i.anchors.clone())
            .unwrap_or_default()
    }
}

/// Asks the controller at `address` for a certificate for `spiffe_id`, with a fresh key.
pub async fn request(
    address: &str,
    token_path: &std::path::Path,
    spiffe_id: &str,
    timeout: Duration,
) -> Result<Issued, IdentityError> {
    let key = KeyPair::generate().map_err(|e| IdentityError::Csr(e.to_string()))?;
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names =
        vec![SanType::URI(spiffe_id.to_string().try_into().map_err(
            |e: rcgen::Error| IdentityError::Csr(e.to_string()),
        )?)];
    let csr_pem = p
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| IdentityError::Csr(e.to_string()))?;
    let mut client = connect(address, timeout).await?;
    let issued_at = SystemTime::now();
    let answer = client
        .sign_certificate(authorized(CertificateRequest { csr_pem }, token_path)?)
        .await?
        .into_inner();
    let bad = |why: &str| IdentityError::Answer(why.to_string());
    let chain: Vec<CertificateDer<'static>> = pem_certs(&answer.certificate_pem);
    if chain.is_empty() {
        return Err(bad("no certificate in certificate_pem"));
    }
    let anchors = pem_certs(&answer.trust_anchors_pem);
    if anchors.is_empty() {
        return Err(bad("no certificate in trust_anchors_pem"));
    }
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signer = rustls::crypto::ring::sign::any_supported_type(&der)
        .map_err(|e| IdentityError::Csr(e.to_string()))?;
    let not_after = UNIX_EPOCH + Duration::from_secs(u64::try_from(answer.not_after).unwrap_or(0));
    if not_after <= issued_at {
        return Err(bad("not_after is already past"));
    }
    Ok(Issued {
        key: Arc::new(CertifiedKey::new(chain, signer)),
        anchors,
        issued_at,
        not_after,
    })
}

fn pem_certs(text: &str) -> Vec<CertificateDer<'static>> {
    pem::parse_many(text)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| CertificateDer::from(p.into_contents()))
        .collect()
}

/// Keeps `store` holding a valid certificate: asks at start, renews at two thirds of each
/// certificate's life, retries with backoff (trying each controller address in turn) when a
/// request fails, and never gives up while the proxy runs.
#[derive(Debug, Clone)]
pub struct Renewer {
    pub addresses: Vec<String>,
    pub token_path: PathBuf,
    pub spiffe_id: String,
    pub timeout: Duration,
    pub max_backoff: Duration,
}

impl Renewer {
    pub async fn run(self, store: Arc<CertStore>, on_renew: impl Fn(&Issued) + Send) {
        let mut attempt = 0u32;
        for address in self.addresses.iter().cycle() {
            match request(address, &self.token_path, &self.spiffe_id, self.timeout).await {
                Ok(issued) => {
                    attempt = 0;
                    let wait = issued
                        .renew_at()
                        .duration_since(SystemTime::now())
                        .unwrap_or_default();
                    tracing::info!(%address, spiffe_id = %self.spiffe_id, renew_in = ?wait, "certificate issued");
                    on_renew(&issued);
                    store.set(issued);
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    let wait = Duration::from_millis(100)
                        .saturating_mul(1 << attempt.min(10))
                        .min(self.max_backoff);
                    attempt += 1;
                    let still_valid = store
                        .current()
                        .is_some_and(|i| i.not_after > SystemTime::now());
                    tracing::warn!(%address, error = %e, retry_in = ?wait, still_valid, "certificate request failed");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_at_two_thirds_of_the_life() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            renew_at(t0, t0 + Duration::from_secs(24 * 3600)),
            t0 + Duration::from_secs(16 * 3600)
        );
        assert_eq!(
            renew_at(t0, t0 + Duration::from_secs(3)),
            t0 + Duration::from_secs(2)
        );
        // Already expired (or a clock gone backwards): due at once.
        assert_eq!(renew_at(t0, t0 - Duration::from_secs(5)), t0);
    }
}
