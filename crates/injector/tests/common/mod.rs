//! Shared test harness: a lab API, an injector started against it with a certificate for
//! 127.0.0.1 in a temp dir, an HTTPS client trusting that certificate's CA, and review builders.
#![allow(dead_code)] // each test binary uses a different part

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use injector::preview_switch::PreviewSwitch;
use injector::tls::{CertFiles, SelfSigned};
use injector::{Config, Running, TlsMode};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub const IMAGE: &str = "registry.test/ghostwire:1.2.3";

/// A temp dir removed on drop, named after the test.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gw-injector-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a fresh CA-signed certificate for 127.0.0.1 into `dir`; returns the CA PEM.
pub fn write_cert(files: &CertFiles) -> String {
    let made = SelfSigned::generate(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    // Replace atomically, as a Secret volume does.
    for (path, pem) in [(&files.cert, &made.cert_pem), (&files.key, &made.key_pem)] {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, pem).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }
    made.ca_pem
}

pub struct Harness {
    pub lab: lab_api::RunningServer,
    pub client: kube::Client,
    pub injector: Running,
    pub ca_pem: String,
    pub files: CertFiles,
    pub dir: TempDir,
}

pub fn switch() -> PreviewSwitch {
    PreviewSwitch {
        image: IMAGE.into(),
        pull_policy: "IfNotPresent".into(),
        watcher_port: 8081,
        sidecars: injector::preview_switch::Sidecars::forced(false),
    }
}

pub fn config(files: &CertFiles) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        tls: TlsMode::Files {
            files: files.clone(),
            reload_every: Duration::from_millis(50),
        },
        namespace: "ghostwire-system".into(),
        defaults_configmap: Some("ghostwire-defaults".into()),
        defaults_ttl: Duration::ZERO,
        preview_switch: switch(),
        limits: Default::default(),
        owner_read_failure: Default::default(),
    }
}

impl Harness {
    pub async fn start(name: &str) -> Harness {
        Harness::start_with(name, |_| {}).await
    }

    /// Like [`Harness::start`], with the injector's configuration adjusted by `adjust`.
    pub async fn start_with(name: &str, adjust: impl FnOnce(&mut Config)) -> Harness {
        let lab = lab_api::Server::start(lab_api::Options::default())
            .await
            .unwrap();
        let client = lab.client().await.unwrap();
        let dir = TempDir::new(name);
        let files = CertFiles {
            cert: dir.0.join("tls.crt"),
            key: dir.0.join("tls.key"),
        };
        let ca_pem = write_cert(&files);
        let mut config = config(&files);
        adjust(&mut config);
        let injector = injector::start(config, client.clone()).await.unwrap();
        Harness {
            lab,
            client,
            injector,
            ca_pem,
            files,
            dir,
        }
    }

    pub async fn https(&self) -> Https {
        Https::connect(self.injector.webhook_addr, &self.ca_pem)
            .await
            .unwrap()
    }

    /// Sends one review and returns the status and the body.
    pub async fn post(&self, body: impl Into<Bytes>) -> (u16, Vec<u8>) {
        self.https().await.post("/mutate", body).await
    }

    /// Sends a review of `pod` (CREATE) and returns the response object.
    pub async fn admit(&self, pod: Value) -> Value {
        let (status, body) = self.post(review("CREATE", pod).to_string()).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        v["response"].clone()
    }

    /// Plain GET on the admin listener.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        get(self.injector.admin_addr, path).await
    }
}

/// Plain GET on an admin listener.
pub async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// One keep-alive HTTPS connection to the webhook.
pub struct Https {
    send: SendRequest<Full<Bytes>>,
    /// The certificate the server presented.
    pub peer_cert: Vec<u8>,
}

pub fn client_tls(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS connection to the webhook (HTTP/1.1 is spoken over it by hand or by hyper).
pub async fn tls_stream(
    addr: std::net::SocketAddr,
    ca_pem: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, std::io::Error> {
    let connector = tokio_rustls::TlsConnector::from(client_tls(ca_pem));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    connector.connect(name, tcp).await
}

impl Https {
    pub async fn connect(
        addr: std::net::SocketAddr,
        ca_pem: &str,
    ) -> Result<Https, std::io::Error> {
        let tls = tls_stream(addr, ca_pem).await?;
        let peer_cert = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(conn);
        Ok(Https { send, peer_cert })
    }

    pub async fn post(&mut self, path: &str, body: impl Into<Bytes>) -> (u16, Vec<u8>) {
        let req = hyper::Request::post(path)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .unwrap();
        let resp = self.send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, body.to_vec())
    }
}

/// An `admission.k8s.io/v1` AdmissionReview of a Pod, as the API server sends it.
pub fn review(operation: &str, pod: Value) -> Value {
    let ns = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default")
        .to_string();
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "7f0b2b2e-0000-4000-8000-000000000001",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"].as_str().unwrap_or(""),
            "namespace": ns,
            "operation": operation,
            "userInfo": {"username": "tester", "groups": ["system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        }
    })
}

/// A Pod with one app container (with the service account token mount) and `annotations`.
pub fn pod(name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "annotations": annotations, "labels": {"app": "orders", "role": "preview"}},
        "spec": {
            "containers": [{
                "name": "app",
                "image": "registry.test/orders:1",
                "ports": [{"containerPort": 8080}],
                "volumeMounts": [{"name": "kube-api-access-x1", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
            }],
            "volumes": [{"name": "kube-api-access-x1", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}],
        }
    })
}

/// Applies the response's JSON Patch to `pod` and decodes the result as a Pod, as the API
/// server would before validating it.
pub fn apply(pod: &Value, response: &Value) -> (Value, Pod) {
    let mut doc = pod.clone();
    if let Some(p) = response["patch"].as_str() {
        assert_eq!(response["patchType"], "JSONPatch");
        use base64::Engine;
        let raw = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&raw).unwrap();
        json_patch::patch(&mut doc, &patch).unwrap();
    }
    let typed: Pod = serde_json::from_value(doc.clone()).unwrap();
    (doc, typed)
}
