//! The server's own CA, its serving certificate, the admin client certificate and the admin bearer
//! token. With a data dir they are kept there, so clients of the previous run stay valid.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Key material of one server.
pub struct Pki {
    pub ca_pem: String,
    ca_der: CertificateDer<'static>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
    pub client_cert_pem: String,
    pub client_key_pem: String,
    /// The admin bearer token (authenticates as the same user as the client certificate).
    pub token: String,
    /// The key ServiceAccount tokens are signed with.
    pub sa_key: Vec<u8>,
}

fn random_token() -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

fn ca_params() -> Result<CertificateParams, PkiError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "ghostwire-lab-ca");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

/// Reads `name` from the data dir, or makes it and stores it there.
fn kept(
    dir: Option<&Path>,
    name: &str,
    make: impl FnOnce() -> Result<String, PkiError>,
) -> Result<String, PkiError> {
    let Some(dir) = dir else { return make() };
    let path = dir.join(name);
    match fs::read_to_string(&path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let value = make()?;
            let io = |source| PkiError::Io {
                path: path.clone(),
                source,
            };
            fs::create_dir_all(dir).map_err(io)?;
            // Keys and the token among them: readable by root alone.
            atomic_file::write(&path, &value, 0o600).map_err(io)?;
            Ok(value)
        }
        Err(source) => Err(PkiError::Io { path, source }),
    }
}

impl Pki {
    /// Loads (or creates) the CA and token, and issues fresh leaf certificates for `ips`.
    pub fn load_or_create(dir: Option<&Path>, ips: &[IpAddr]) -> Result<Self, PkiError> {
        let ca_key_pem = kept(dir, "ca.key", || Ok(KeyPair::generate()?.serialize_pem()))?;
        let ca_key = KeyPair::from_pem(&ca_key_pem)?;
        let ca_pem = kept(dir, "ca.crt", || {
            Ok(ca_params()?.self_signed(&ca_key)?.pem())
        })?;
        let ca_der: CertificateDer<'static> =
            rustls::pki_types::pem::PemObject::from_pem_slice(ca_pem.as_bytes()).map_err(|e| {
                PkiError::Tls(rustls::Error::General(format!("CA certificate: {e}")))
            })?;
        let token = kept(dir, "token", || Ok(random_token()))?
            .trim()
            .to_string();
        let sa_key = kept(dir, "sa.key", || Ok(random_token()))?
            .trim()
            .as_bytes()
            .to_vec();
        let issuer = Issuer::new(ca_params()?, &ca_key);

        let mut names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
            // What in-cluster clients dial: the `kubernetes` Service's name and ClusterIP.
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
            "kubernetes.default.svc.cluster.local".to_string(),
            "10.96.0.1".to_string(),
        ];
        names.extend(
            ips.iter()
                .filter(|ip| !ip.is_unspecified())
                .map(|ip| ip.to_string()),
        );
        let mut sp = CertificateParams::new(names)?;
        sp.distinguished_name
            .push(DnType::CommonName, "lab-apiserver");
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_key = KeyPair::generate()?;
        let server_cert = sp.signed_by(&server_key, &issuer)?;

        let mut cp = CertificateParams::new(Vec::<String>::new())?;
        cp.distinguished_name.push(DnType::CommonName, "lab-admin");
        cp.distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client_key = KeyPair::generate()?;
        let client_cert = cp.signed_by(&client_key, &issuer)?;

        Ok(Pki {
            ca_pem,
            server_chain: vec![server_cert.der().clone(), ca_der.clone()],
            ca_der,
            server_key: server_key.serialize_der(),
            client_cert_pem: client_cert.pem(),
            client_key_pem: client_key.serialize_pem(),
            token,
            sa_key,
        })
    }

    /// TLS for the API: HTTP/2 and HTTP/1.1; a client certificate is asked for and, if sent,
    /// must chain to the CA. Requests without one need a bearer token (checked per request).
    pub fn server_config(&self) -> Result<rustls::ServerConfig, PkiError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .allow_unauthenticated()
        .build()?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.server_chain.clone(), key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

/// A kubeconfig for the admin user (client certificate), with the CA embedded.
pub fn kubeconfig(pki: &Pki, url: &str) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\nusers:\n- name: lab-admin\n  user:\n    client-certificate-data: {cert}\n    client-key-data: {key}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab-admin\n    namespace: default\ncurrent-context: lab\npreferences: {{}}\n",
        ca = b64(&pki.ca_pem),
        cert = b64(&pki.client_cert_pem),
        key = b64(&pki.client_key_pem),
    )
}
