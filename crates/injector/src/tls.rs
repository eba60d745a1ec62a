//! The webhook's serving certificate: loaded from mounted files (cert-manager's `tls.crt` /
//! `tls.key`) and swapped in when they change, or made at start-up (`--self-signed`) together
//! with a CA that is written into the MutatingWebhookConfiguration's `caBundle`.

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, Patch, PatchParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {reason}")]
    Pem { what: String, reason: String },
    #[error("the private key does not fit the certificate: {0}")]
    Key(#[source] rustls::Error),
    #[error("generating the self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Where a mounted certificate and key live.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A serving certificate from PEM text, checked to match its key.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    what: &str,
) -> Result<CertifiedKey, TlsError> {
    let pem = |reason: String| TlsError::Pem {
        what: what.to_string(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(format!("certificate: {e}")))?;
    if chain.is_empty() {
        return Err(pem("no certificate in the PEM text".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem(format!("key: {e}")))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key).map_err(TlsError::Key)?;
    let ck = CertifiedKey::new(chain, signer);
    ck.keys_match().map_err(TlsError::Key)?;
    Ok(ck)
}

impl CertFiles {
    pub fn load(&self) -> Result<CertifiedKey, TlsError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        certified_key(
            &read(&self.cert)?,
            &read(&self.key)?,
            &format!("{} + {}", self.cert.display(), self.key.display()),
        )
    }

    /// What changes when either file is replaced (Secret volumes swap a symlink; `metadata`
    /// follows it).
    fn stamp(&self) -> Option<[(SystemTime, u64); 2]> {
        let one = |p: &Path| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        };
        Some([one(&self.cert)?, one(&self.key)?])
    }
}

/// Hands every handshake the certificate loaded last.
#[derive(Debug)]
pub struct Reloading {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Reloading {
    pub fn new(first: CertifiedKey) -> Arc<Self> {
        Arc::new(Reloading {
            current: RwLock::new(Arc::new(first)),
        })
    }

    /// The certificate handed to new handshakes now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set(&self, next: CertifiedKey) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
    }

    /// Polls the files' modification times and swaps in the new pair once both load and match;
    /// a half-written pair (new cert, old key) is skipped until the next poll.
    pub async fn follow(self: Arc<Self>, files: CertFiles, every: Duration) {
        let mut seen = files.stamp();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = files.stamp();
            if now.is_none() || now == seen {
                continue;
            }
            match files.load() {
                Ok(ck) => {
                    self.set(ck);
                    seen = now;
                    tracing::info!(cert = %files.cert.display(), "serving certificate reloaded");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "new certificate files do not load yet; keeping the current ones")
                }
            }
        }
    }
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A TLS server config (HTTP/2 and HTTP/1.1) that asks `certs` for every handshake.
pub fn server_config(certs: Arc<Reloading>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A CA made at start-up and the serving certificate it signed.
pub struct SelfSigned {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl SelfSigned {
    /// Valid for `names` (the Service's DNS names the API server dials).
    pub fn generate(names: Vec<String>) -> Result<Self, TlsError> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.distinguished_name
            .push(DnType::CommonName, "ghostwire-injector-ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_pem = ca.self_signed(&ca_key)?.pem();
        let issuer = Issuer::new(ca, &ca_key);

        let mut leaf = CertificateParams::new(names)?;
        leaf.distinguished_name
            .push(DnType::CommonName, "ghostwire-injector");
        leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate()?;
        let cert_pem = leaf.signed_by(&key, &issuer)?.pem();
        Ok(SelfSigned {
            ca_pem,
            cert_pem,
            key_pem: key.serialize_pem(),
        })
    }

    pub fn certified_key(&self) -> Result<CertifiedKey, TlsError> {
        certified_key(
            self.cert_pem.as_bytes(),
            self.key_pem.as_bytes(),
            "self-signed certificate",
        )
    }
}

/// The DNS names the API server may use for the injector's Service.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Writes `ca_pem` into every webhook of the MutatingWebhookConfiguration `name`, guarded by
/// its resourceVersion so a concurrent edit makes this fail rather than be overwritten.
/// Returns whether anything had to change.
pub async fn patch_ca_bundle(
    client: &kube::Client,
    name: &str,
    ca_pem: &str,
) -> Result<bool, kube::Error> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let current = api.get(name).await?;
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    let webhooks = current.webhooks.unwrap_or_default();
    if webhooks
        .iter()
        .all(|w| w.client_config.ca_bundle.as_ref() == Some(&bundle))
    {
        return Ok(false);
    }
    let mut ops = vec![serde_json::json!({
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": current.metadata.resource_version,
    })];
    for i in 0..webhooks.len() {
        ops.push(serde_json::json!({
            "op": "add",
            "path": format!("/webhooks/{i}/clientConfig/caBundle"),
            "value": bundle,
        }));
    }
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).map_err(kube::Error::SerdeError)?;
    api.patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
        .await?;
    Ok(true)
}

/// Keeps the `caBundle` current: retries until the configuration exists and is patched, then
/// checks again now and then, since re-applying the manifests empties it.
/// `/healthz` fails until it is written.
pub async fn keep_ca_bundle(
    client: kube::Client,
    name: String,
    ca_pem: String,
    every: Duration,
    health: Arc<crate::health::Health>,
) {
    let mut attempt = 0;
    let mut written = false;
    loop {
        let outcome = patch_ca_bundle(&client, &name, &ca_pem).await;
        match &outcome {
            Ok(_) => {
                written = true;
                health.ca_bundle(Ok(()));
            }
            // Once written, a failed re-check does not mean the bundle is gone.
            Err(e) if !written => {
                health.ca_bundle(Err(format!("MutatingWebhookConfiguration {name}: {e}")));
            }
            Err(_) => {}
        }
        match outcome {
            Ok(changed) => {
                if changed {
                    tracing::info!(webhook_config = %name, "caBundle set to the self-signed CA");
                }
                attempt = 0;
                tokio::time::sleep(every).await;
            }
            Err(e) => {
                tracing::warn!(webhook_config = %name, error = %e, "cannot set the caBundle yet");
                attempt += 1;
                tokio::time::sleep(kube_util::backoff(attempt, every)).await;
            }
        }
    }
}
