//! The mesh's certificate authority: signs each proxy a short-lived certificate for its own
//! ServiceAccount's SPIFFE ID, and only that.
//!
//! The signer and the trust anchors live in one Secret, laid out as cert-manager and Linkerd lay
//! out an issuer (`kubernetes.io/tls`): `tls.crt` + `tls.key` sign, `ca.crt` is the bundle the
//! proxies trust. So the signer may be a root the controller made itself or an intermediate an
//! operator issued elsewhere. Anchor rotation is an edit of that Secret: put the new root next to
//! the old in `ca.crt`, wait one certificate lifetime (every proxy renews at two thirds of it and
//! gets the new bundle with its certificate), switch `tls.crt`/`tls.key` to the new signer, and
//! after another lifetime drop the old root. The controller follows the Secret as it changes.
//!
//! [`Authority`] is pure (parse, check, sign); [`load_or_create`] and [`follow`] are the I/O.

use crate::auth::Caller;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Keys of the Secret.
pub const SIGNER_CERT: &str = "tls.crt";
pub const SIGNER_KEY: &str = "tls.key";
pub const ANCHORS: &str = "ca.crt";

/// A root the controller makes for itself lives this long; rotate before it ends.
pub const ROOT_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates start this much in the past, for clocks a little behind the controller's.
const BACKDATE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA Secret {secret}: key {key:?} is missing")]
    Missing { secret: String, key: &'static str },
    #[error("CA Secret {secret}: {key:?} is not usable: {why}")]
    Bad {
        secret: String,
        key: &'static str,
        why: String,
    },
    #[error(
        "CA Secret {0}: the signer ({SIGNER_CERT}) is not one of the trust anchors ({ANCHORS}) nor issued by one"
    )]
    SignerNotAnchored(String),
    #[error("cannot make a CA: {0}")]
    Generate(String),
    #[error("CA Secret {secret}: {source}")]
    Api {
        secret: String,
        #[source]
        source: kube::Error,
    },
}

/// Why a CSR was refused; each maps to a gRPC status.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignError {
    #[error("csr_pem: {0}")]
    BadCsr(String),
    #[error("csr_pem asks for {asked:?}; this caller may only have {allowed:?}")]
    Identity { asked: Vec<String>, allowed: String },
    #[error("csr_pem asks for a CA certificate; proxies get leaf certificates only")]
    WantsCa,
    #[error("signing failed: {0}")]
    Sign(String),
}

impl SignError {
    /// For the `result` label of the certificate metric.
    pub fn reason(&self) -> &'static str {
        match self {
            SignError::BadCsr(_) => "bad_csr",
            SignError::Identity { .. } => "wrong_identity",
            SignError::WantsCa => "wants_ca",
            SignError::Sign(_) => "sign_failed",
        }
    }
}

/// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// The PEM texts of a CA Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaFiles {
    pub signer_cert: String,
    pub signer_key: String,
    pub anchors: String,
}

/// A signed certificate.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The leaf, then the signer when the signer is not itself an anchor.
    pub chain_pem: String,
    pub anchors_pem: String,
    pub not_after: SystemTime,
}

pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    signer_pem: String,
    signer_is_anchor: bool,
    anchors_pem: String,
    pub trust_domain: String,
    pub lifetime: Duration,
}

fn time(t: SystemTime) -> time::OffsetDateTime {
    let secs = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive, as RFC 5280 wants
    SerialNumber::from_slice(&b)
}

fn ders(pem_text: &str) -> Vec<Vec<u8>> {
    ::pem::parse_many(pem_text)
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(|p| p.into_contents())
        .collect()
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("lifetime", &self.lifetime)
            .field("signer_is_anchor", &self.signer_is_anchor)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// A new self-signed root; its files are what goes into the Secret.
    pub fn generate(
        trust_domain: &str,
        lifetime: Duration,
        now: SystemTime,
    ) -> Result<(Authority, CaFiles), CaError> {
        let key = KeyPair::generate().map_err(|e| CaError::Generate(e.to_string()))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(
            DnType::CommonName,
            format!("ghostwire mesh root CA ({trust_domain})"),
        );
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = time(now - BACKDATE);
        p.not_after = time(now + ROOT_VALIDITY);
        p.serial_number = Some(serial());
        let cert = p
            .self_signed(&key)
            .map_err(|e| CaError::Generate(e.to_string()))?;
        let files = CaFiles {
            signer_cert: cert.pem(),
            signer_key: key.serialize_pem(),
            anchors: cert.pem(),
        };
        let a = Authority::from_files("(new)", &files, trust_domain, lifetime)?;
        Ok((a, files))
    }

    /// Checks the files (the key is the signer's, the signer is a CA anchored in the bundle).
    pub fn from_files(
        secret: &str,
        f: &CaFiles,
        trust_domain: &str,
        lifetime: Duration,
    ) -> Result<Authority, CaError> {
        let bad = |key, why: String| CaError::Bad {
            secret: secret.to_string(),
            key,
            why,
        };
        let key = KeyPair::from_pem(&f.signer_key).map_err(|e| bad(SIGNER_KEY, e.to_string()))?;
        let signer_der = ders(&f.signer_cert)
            .into_iter()
            .next()
            .ok_or_else(|| bad(SIGNER_CERT, "no CERTIFICATE block".into()))?;
        let (_, signer) = x509_parser::parse_x509_certificate(&signer_der)
            .map_err(|e| bad(SIGNER_CERT, e.to_string()))?;
        if signer.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(bad(
                SIGNER_KEY,
                format!("is not the key of the certificate in {SIGNER_CERT}"),
            ));
        }
        if !signer.is_ca() {
            return Err(bad(SIGNER_CERT, "is not a CA certificate".into()));
        }
        let anchors = ders(&f.anchors);
        if anchors.is_empty() {
            return Err(bad(ANCHORS, "no CERTIFICATE block".into()));
        }
        let signer_is_anchor = anchors.contains(&signer_der);
        let issued_by_anchor = anchors.iter().any(|a| {
            x509_parser::parse_x509_certificate(a)
                .is_ok_and(|(_, a)| signer.verify_signature(Some(a.public_key())).is_ok())
        });
        if !signer_is_anchor && !issued_by_anchor {
            return Err(CaError::SignerNotAnchored(secret.to_string()));
        }
        let issuer = Issuer::from_ca_cert_der(&signer_der.clone().into(), key)
            .map_err(|e| bad(SIGNER_CERT, e.to_string()))?;
        Ok(Authority {
            issuer,
            signer_pem: ::pem::encode(&::pem::Pem::new("CERTIFICATE", signer_der)),
            signer_is_anchor,
            anchors_pem: f.anchors.clone(),
            trust_domain: trust_domain.to_string(),
            lifetime,
        })
    }

    pub fn anchors_pem(&self) -> &str {
        &self.anchors_pem
    }

    /// Signs `csr_pem` for `caller` if it asks for exactly the caller's SPIFFE ID (as its only
    /// SAN) and for nothing more than a leaf. What goes into the certificate comes from the
    /// caller's verified identity, never from the CSR; the CSR gives only the public key.
    pub fn sign(
        &self,
        csr_pem: &str,
        caller: &Caller,
        now: SystemTime,
    ) -> Result<Signed, SignError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| SignError::BadCsr(e.to_string()))?;
        let allowed = spiffe_id(
            &self.trust_domain,
            &caller.namespace,
            &caller.service_account,
        );
        let asked: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|s| match s {
                SanType::URI(u) => u.as_str().to_string(),
                SanType::DnsName(d) => format!("DNS:{}", d.as_str()),
                SanType::IpAddress(ip) => format!("IP:{ip}"),
                SanType::Rfc822Name(m) => format!("email:{}", m.as_str()),
                SanType::OtherName(_) => "otherName".to_string(),
                _ => "unknown SAN".to_string(),
            })
            .collect();
        if asked != [allowed.as_str()] {
            return Err(SignError::Identity { asked, allowed });
        }
        if !matches!(csr.params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa) {
            return Err(SignError::WantsCa);
        }
        let uri = allowed
            .clone()
            .try_into()
            .map_err(|e: rcgen::Error| SignError::Sign(e.to_string()))?;
        self.leaf(vec![SanType::URI(uri)], &csr.public_key, now)
    }

    /// A certificate for a Pod whose key the CA side makes (`ghostwire identity`: the attached
    /// container cannot run the CSR flow, so the key travels in a Secret owned by the Pod). The
    /// names come from the Pod as the API reports it, never from the Pod itself: its SPIFFE ID,
    /// its DNS names and its IPs. Returns the certificate and the key's PKCS#8 PEM.
    pub fn issue(
        &self,
        spiffe_id: &str,
        dns: &[String],
        ips: &[std::net::IpAddr],
        now: SystemTime,
    ) -> Result<(Signed, String), SignError> {
        let mut sans = vec![SanType::URI(spiffe_id.to_string().try_into().map_err(
            |e: rcgen::Error| SignError::Sign(format!("{spiffe_id:?}: {e}")),
        )?)];
        for d in dns {
            sans.push(SanType::DnsName(d.clone().try_into().map_err(
                |e: rcgen::Error| SignError::Sign(format!("DNS name {d:?}: {e}")),
            )?));
        }
        sans.extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let key = KeyPair::generate().map_err(|e| SignError::Sign(e.to_string()))?;
        let signed = self.leaf(sans, &key, now)?;
        Ok((signed, key.serialize_pem()))
    }

    /// Signs a leaf (server and client auth) for `sans` and `public_key`, with a random serial.
    fn leaf(
        &self,
        sans: Vec<SanType>,
        public_key: &impl PublicKeyData,
        now: SystemTime,
    ) -> Result<Signed, SignError> {
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.subject_alt_names = sans;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        let not_after = now + self.lifetime;
        p.not_before = time(now - BACKDATE);
        p.not_after = time(not_after);
        p.serial_number = Some(serial());
        let cert = p
            .signed_by(public_key, &self.issuer)
            .map_err(|e| SignError::Sign(e.to_string()))?;
        let mut chain_pem = cert.pem();
        if !self.signer_is_anchor {
            chain_pem.push_str(&self.signer_pem);
        }
        Ok(Signed {
            chain_pem,
            anchors_pem: self.anchors_pem.clone(),
            not_after: UNIX_EPOCH
                + Duration::from_secs(
                    not_after
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs(),
                ),
        })
    }
}

impl CaFiles {
    fn from_secret(secret: &str, s: &Secret) -> Result<CaFiles, CaError> {
        let get = |key: &'static str| -> Result<String, CaError> {
            let b = s
                .data
                .as_ref()
                .and_then(|d| d.get(key))
                .ok_or_else(|| CaError::Missing {
                    secret: secret.to_string(),
                    key,
                })?;
            String::from_utf8(b.0.clone()).map_err(|_| CaError::Bad {
                secret: secret.to_string(),
                key,
                why: "is not UTF-8 PEM".into(),
            })
        };
        Ok(CaFiles {
            signer_cert: get(SIGNER_CERT)?,
            signer_key: get(SIGNER_KEY)?,
            anchors: get(ANCHORS)?,
        })
    }

    fn to_secret(&self, namespace: &str, name: &str) -> Secret {
        let data = [
            (SIGNER_CERT, &self.signer_cert),
            (SIGNER_KEY, &self.signer_key),
            (ANCHORS, &self.anchors),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
        .collect();
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(
                    [(
                        "app.kubernetes.io/managed-by".to_string(),
                        "ghostwire-controller".to_string(),
                    )]
                    .into(),
                ),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".into()),
            data: Some(data),
            ..Default::default()
        }
    }
}

/// Where the CA lives and what it signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaSettings {
    pub namespace: String,
    pub secret: String,
    pub trust_domain: String,
    pub lifetime: Duration,
    /// How often the Secret is read again (rotation is an edit of it).
    pub reload: Duration,
}

impl CaSettings {
    fn name(&self) -> String {
        format!("{}/{}", self.namespace, self.secret)
    }
}

/// The authority in use; swapped whole when the Secret changes.
#[derive(Clone)]
pub struct CaHandle(Arc<RwLock<Arc<Authority>>>);

impl CaHandle {
    pub fn new(a: Authority) -> Self {
        CaHandle(Arc::new(RwLock::new(Arc::new(a))))
    }
    pub fn current(&self) -> Arc<Authority> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, a: Authority) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(a);
    }
}

/// Reads the CA Secret, or creates it with a new root when there is none. Create-only: when
/// another replica created it first (409), its CA is read and used, so two replicas never end up
/// with two CAs.
pub async fn load_or_create(
    client: &kube::Client,
    s: &CaSettings,
) -> Result<(Authority, Option<String>), CaError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &s.namespace);
    let err = |source| CaError::Api {
        secret: s.name(),
        source,
    };
    for _ in 0..3 {
        if let Some(secret) = api.get_opt(&s.secret).await.map_err(err)? {
            let files = CaFiles::from_secret(&s.name(), &secret)?;
            let a = Authority::from_files(&s.name(), &files, &s.trust_domain, s.lifetime)?;
            return Ok((a, secret.metadata.resource_version));
        }
        let (a, files) = Authority::generate(&s.trust_domain, s.lifetime, SystemTime::now())?;
        match api
            .create(
                &PostParams::default(),
                &files.to_secret(&s.namespace, &s.secret),
            )
            .await
        {
            Ok(created) => {
                tracing::info!(secret = %s.name(), "created the mesh CA");
                return Ok((a, created.metadata.resource_version));
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                tracing::info!(secret = %s.name(), "another replica created the CA first; reading it");
            }
            Err(e) => return Err(err(e)),
        }
    }
    Err(CaError::Generate(format!(
        "{} was created and deleted again three times while starting",
        s.name()
    )))
}

/// Reads the Secret every `reload` and swaps the authority when it changed and is usable; an
/// unusable edit is logged and the last good CA kept.
pub async fn follow(
    client: kube::Client,
    s: CaSettings,
    handle: CaHandle,
    mut seen: Option<String>,
    on_error: impl Fn(&CaError) + Send,
) {
    let api: Api<Secret> = Api::namespaced(client, &s.namespace);
    loop {
        tokio::time::sleep(s.reload).await;
        let secret = match api.get_opt(&s.secret).await {
            Ok(Some(x)) => x,
            Ok(None) => {
                tracing::warn!(secret = %s.name(), "the CA Secret is gone; signing with the last one read");
                continue;
            }
            Err(e) => {
                tracing::warn!(secret = %s.name(), error = %e, "cannot read the CA Secret");
                continue;
            }
        };
        if secret.metadata.resource_version == seen {
            continue;
        }
        let loaded = CaFiles::from_secret(&s.name(), &secret)
            .and_then(|f| Authority::from_files(&s.name(), &f, &s.trust_domain, s.lifetime));
        match loaded {
            Ok(a) => {
                handle.set(a);
                seen = secret.metadata.resource_version;
                tracing::info!(secret = %s.name(), "the CA Secret changed; signing with it now");
            }
            Err(e) => {
                on_error(&e);
                tracing::error!(error = %e, "the CA Secret changed but cannot be used; signing with the last good one");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::GeneralName;

    fn caller(ns: &str, sa: &str) -> Caller {
        Caller {
            namespace: ns.into(),
            service_account: sa.into(),
            pod_name: "p".into(),
            pod_uid: "u".into(),
        }
    }

    fn csr(sans: Vec<SanType>, ca: bool) -> String {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = sans;
        if ca {
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        }
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.to_string().try_into().unwrap())
    }

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn signs_exactly_the_callers_spiffe_id_and_chains_to_the_anchor() {
        let now = SystemTime::now();
        let (ca, files) = Authority::generate("cluster.local", DAY, now).unwrap();
        let me = caller("shop", "web");
        let id = spiffe_id("cluster.local", "shop", "web");
        let signed = ca.sign(&csr(vec![uri(&id)], false), &me, now).unwrap();
        assert_eq!(signed.anchors_pem, files.anchors);
        let leaf = ders(&signed.chain_pem);
        assert_eq!(leaf.len(), 1, "a root signer is not repeated in the chain");
        let (_, cert) = x509_parser::parse_x509_certificate(&leaf[0]).unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|g| match g {
                GeneralName::URI(u) => u.to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(sans, [id]);
        assert!(!cert.is_ca());
        let lifetime =
            cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
        assert_eq!(lifetime as u64, DAY.as_secs() + BACKDATE.as_secs());
        let anchor = ders(&files.anchors).remove(0);
        let (_, root) = x509_parser::parse_x509_certificate(&anchor).unwrap();
        cert.verify_signature(Some(root.public_key())).unwrap();
        assert_eq!(
            signed
                .not_after
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64,
            cert.validity().not_after.timestamp()
        );
    }

    #[test]
    fn refuses_other_identities_extra_names_cas_and_garbage() {
        let now = SystemTime::now();
        let (ca, _) = Authority::generate("cluster.local", DAY, now).unwrap();
        let me = caller("shop", "web");
        let mine = spiffe_id("cluster.local", "shop", "web");
        let cases = [
            vec![uri(&spiffe_id("cluster.local", "shop", "admin"))],
            vec![uri(&spiffe_id("other.domain", "shop", "web"))],
            vec![uri(&mine), SanType::DnsName("web.shop".try_into().unwrap())],
            vec![],
        ];
        for sans in cases {
            let e = ca.sign(&csr(sans.clone(), false), &me, now).unwrap_err();
            assert!(matches!(e, SignError::Identity { .. }), "{sans:?}: {e}");
            assert!(e.to_string().contains(&mine), "{e}");
        }
        assert_eq!(
            ca.sign(&csr(vec![uri(&mine)], true), &me, now).unwrap_err(),
            SignError::WantsCa
        );
        let e = ca.sign("not a csr", &me, now).unwrap_err();
        assert_eq!(e.reason(), "bad_csr");
        // A CSR whose signature does not match its content (the key was swapped) is refused.
        let good = csr(vec![uri(&mine)], false);
        let mut der = ::pem::parse(&good).unwrap().into_contents();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let tampered = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der));
        assert_eq!(
            ca.sign(&tampered, &me, now).unwrap_err().reason(),
            "bad_csr"
        );
    }

    #[test]
    fn secret_files_are_checked_and_an_intermediate_is_chained() {
        let now = SystemTime::now();
        let (_, root) = Authority::generate("td", DAY, now).unwrap();
        let (_, other) = Authority::generate("td", DAY, now).unwrap();
        // The key of another CA.
        let mismatched = CaFiles {
            signer_key: other.signer_key.clone(),
            ..root.clone()
        };
        let e = Authority::from_files("ns/s", &mismatched, "td", DAY).unwrap_err();
        assert!(e.to_string().contains(SIGNER_KEY), "{e}");
        // A signer the bundle does not anchor.
        let unanchored = CaFiles {
            anchors: other.anchors.clone(),
            ..root.clone()
        };
        assert!(matches!(
            Authority::from_files("ns/s", &unanchored, "td", DAY),
            Err(CaError::SignerNotAnchored(_))
        ));
        // An intermediate issued by the root: anchored through it, and sent with each leaf.
        let root_key = KeyPair::from_pem(&root.signer_key).unwrap();
        let root_issuer =
            Issuer::from_ca_cert_der(&ders(&root.signer_cert)[0].clone().into(), root_key).unwrap();
        let ikey = KeyPair::generate().unwrap();
        let mut ip = CertificateParams::default();
        ip.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ip.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let icert = ip.signed_by(&ikey, &root_issuer).unwrap();
        let inter = CaFiles {
            signer_cert: icert.pem(),
            signer_key: ikey.serialize_pem(),
            anchors: format!("{}{}", root.anchors, other.anchors),
        };
        let a = Authority::from_files("ns/s", &inter, "td", DAY).unwrap();
        let id = spiffe_id("td", "shop", "web");
        let signed = a
            .sign(&csr(vec![uri(&id)], false), &caller("shop", "web"), now)
            .unwrap();
        let chain = ders(&signed.chain_pem);
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[1], ders(&icert.pem())[0]);
        // A leaf is not a CA.
        let leaf_files = CaFiles {
            signer_cert: ::pem::encode(&::pem::Pem::new("CERTIFICATE", chain[0].clone())),
            signer_key: ikey.serialize_pem(),
            anchors: root.anchors.clone(),
        };
        assert!(Authority::from_files("ns/s", &leaf_files, "td", DAY).is_err());
        // Missing keys are named.
        let s = Secret::default();
        let e = CaFiles::from_secret("ns/s", &s).unwrap_err();
        assert!(e.to_string().contains(SIGNER_CERT), "{e}");
        let round = CaFiles::from_secret("ns/s", &root.to_secret("ns", "s")).unwrap();
        assert_eq!(round, root);
    }
}
