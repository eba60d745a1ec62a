//! Certificates end to end against the lab API: the CA made once in a Secret however many
//! replicas start, a certificate only for the caller's own identity, renewal that swaps what new
//! handshakes get while an open mTLS connection goes on, and anchor rotation by editing the
//! Secret.

mod common;

use common::{AUDIENCE, pod_token, pod_token_as, start, until};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use lab_api::{Options, Server};
use mesh_api::v1::CertificateRequest;
use mesh_api::v1::mesh_control_client::MeshControlClient;
use mesh_controller::auth::TokenReviewer;
use mesh_controller::ca::{self, Authority, CaHandle, CaSettings, spiffe_id};
use mesh_controller::identity::{CertStore, Renewer};
use mesh_controller::metrics::Metrics;
use mesh_controller::model::Model;
use mesh_controller::server::Controller;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn settings(lifetime: Duration) -> CaSettings {
    CaSettings {
        namespace: "mesh-system".into(),
        secret: "mesh-ca".into(),
        trust_domain: "lab.local".into(),
        lifetime,
        reload: Duration::from_millis(100),
    }
}

fn csr_for(id: &str) -> String {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(id.to_string().try_into().unwrap())];
    p.serialize_request(&key).unwrap().pem().unwrap()
}

async fn sign(
    addr: std::net::SocketAddr,
    token: &str,
    csr_pem: String,
) -> Result<mesh_api::v1::CertificateResponse, tonic::Status> {
    let mut client = MeshControlClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut req = tonic::Request::new(CertificateRequest { csr_pem });
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    client.sign_certificate(req).await.map(|r| r.into_inner())
}

fn ders(text: &str) -> Vec<Vec<u8>> {
    pem::parse_many(text)
        .unwrap()
        .into_iter()
        .map(|p| p.into_contents())
        .collect()
}

/// A lab API with the CA's namespace.
async fn lab() -> (lab_api::RunningServer, kube::Client) {
    let lab = Server::start(Options::default()).await.unwrap();
    let admin = lab.client().await.unwrap();
    let ns = serde_json::from_value(serde_json::json!({"metadata": {"name": "mesh-system"}}));
    Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns.unwrap())
        .await
        .unwrap();
    (lab, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ca_and_certificates_only_for_the_callers_own_identity() {
    let (_lab, admin) = lab().await;

    // Three replicas start at once on an empty namespace: one Secret, one CA for all.
    let s = settings(Duration::from_secs(3600));
    let (a, b, c) = tokio::join!(
        ca::load_or_create(&admin, &s),
        ca::load_or_create(&admin, &s),
        ca::load_or_create(&admin, &s),
    );
    let (a, b, c) = (a.unwrap().0, b.unwrap().0, c.unwrap().0);
    assert_eq!(a.anchors_pem(), b.anchors_pem());
    assert_eq!(a.anchors_pem(), c.anchors_pem());
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "mesh-system");
    let stored = secrets.get("mesh-ca").await.unwrap();
    assert_eq!(stored.type_.as_deref(), Some("kubernetes.io/tls"));
    let anchors_in_secret =
        String::from_utf8(stored.data.as_ref().unwrap()[ca::ANCHORS].0.clone()).unwrap();
    assert_eq!(anchors_in_secret, a.anchors_pem());

    let metrics = Metrics::default();
    let auth = Arc::new(TokenReviewer::new(admin.clone(), AUDIENCE));
    let controller =
        Controller::new(Model::default(), auth, metrics.clone()).with_ca(CaHandle::new(a));
    let running = start(controller, "127.0.0.1:0".parse().unwrap()).await;
    let addr = running.addr;

    // Account A, for itself: signed, chained to the Secret's anchor, its SPIFFE ID only.
    let (token_a, _) = pod_token_as(&admin, "web-1", "web", &[AUDIENCE]).await;
    let web = spiffe_id("lab.local", "default", "web");
    let answer = sign(addr, &token_a, csr_for(&web)).await.unwrap();
    assert_eq!(answer.trust_anchors_pem, anchors_in_secret);
    let leaf = ders(&answer.certificate_pem).remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    let anchor = ders(&anchors_in_secret).remove(0);
    let (_, root) = x509_parser::parse_x509_certificate(&anchor).unwrap();
    cert.verify_signature(Some(root.public_key())).unwrap();
    let san = format!(
        "{:?}",
        cert.subject_alternative_name().unwrap().unwrap().value
    );
    assert!(san.contains(&web), "{san}");
    assert_eq!(answer.not_after, cert.validity().not_after.timestamp());

    // Account A's token with a CSR for account B: refused, and counted.
    let db = spiffe_id("lab.local", "default", "db");
    let e = sign(addr, &token_a, csr_for(&db)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains(&web), "{e:?}");
    // A token of another audience: refused before any CSR is read.
    let (vault, _) = pod_token_as(&admin, "web-2", "web", &["vault"]).await;
    let e = sign(addr, &vault, csr_for(&web)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    // The token of a Pod that was deleted: refused.
    let (gone, _) = pod_token_as(&admin, "web-3", "web", &[AUDIENCE]).await;
    Api::<Pod>::namespaced(admin.clone(), "default")
        .delete("web-3", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let e = sign(addr, &gone, csr_for(&web)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    // Garbage for a CSR.
    let e = sign(addr, &token_a, "hello".into()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    let count = |r: &str| {
        metrics
            .certificates
            .get_or_create(&vec![("result", r.to_string())])
            .get()
    };
    assert_eq!(
        (count("signed"), count("wrong_identity"), count("bad_csr")),
        (1, 1, 1)
    );
    running.stop().await;
}

/// A TLS server that requires a client certificate chained to `anchors` and tells, per
/// connection, the client certificate it saw; it echoes what it reads.
async fn mtls_server(
    anchors: Vec<CertificateDer<'static>>,
) -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    CertificateDer<'static>,
) {
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["server.test".to_string()])
        .unwrap()
        .self_signed(&server_key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for a in anchors {
        roots.add(a).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![server_cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let seen = seen_tx.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let peer = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
                let _ = seen.send(peer);
                let mut buf = [0u8; 64];
                while let Ok(n) = tls.read(&mut buf).await {
                    if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen_rx, server_cert.der().clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_swaps_new_handshakes_and_keeps_open_connections_and_rotation_follows_the_secret() {
    let (_lab, admin) = lab().await;
    // Three-second certificates: renewed every two seconds.
    let s = settings(Duration::from_secs(3));
    let (authority, seen) = ca::load_or_create(&admin, &s).await.unwrap();
    let first_anchors = authority.anchors_pem().to_string();
    let handle = CaHandle::new(authority);
    let metrics = Metrics::default();
    tokio::spawn(ca::follow(
        admin.clone(),
        s.clone(),
        handle.clone(),
        seen,
        |_| {},
    ));
    let auth = Arc::new(TokenReviewer::new(admin.clone(), AUDIENCE));
    let controller =
        Controller::new(Model::default(), auth, metrics.clone()).with_ca(handle.clone());
    let running = start(controller, "127.0.0.1:0".parse().unwrap()).await;

    let (token, _) = pod_token(&admin, "client-1", &[AUDIENCE]).await;
    let dir = std::env::temp_dir().join(format!("gw-meshcert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_path = dir.join("token");
    std::fs::write(&token_path, &token).unwrap();
    let store = Arc::new(CertStore::default());
    let renewals = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = renewals.clone();
    let renewer = tokio::spawn(
        Renewer {
            addresses: vec![format!("http://{}", running.addr)],
            token_path: token_path.clone(),
            spiffe_id: spiffe_id("lab.local", "default", "default"),
            timeout: Duration::from_secs(3),
            max_backoff: Duration::from_millis(500),
        }
        .run(store.clone(), move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }),
    );
    until("the first certificate", || store.current().is_some()).await;
    let first = store.current().unwrap();
    assert!(first.renew_at() < first.not_after);

    // A client presenting the store's certificate to a server that checks it against the anchors.
    let (server, mut seen_by_server, server_cert) = mtls_server(first.anchors.clone()).await;
    let mut trust = rustls::RootCertStore::empty();
    trust.add(server_cert).unwrap();
    let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(trust)
    .with_client_cert_resolver(store.clone());
    let mut client_config = client_config;
    // A resumed session carries the certificate of the handshake it resumes: full handshakes
    // only, so each connection shows what the store presents now.
    client_config.resumption = rustls::client::Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let connect = || async {
        let tcp = TcpStream::connect(server).await.unwrap();
        connector
            .connect("server.test".try_into().unwrap(), tcp)
            .await
            .unwrap()
    };
    let echo = |mut tls: tokio_rustls::client::TlsStream<TcpStream>, what: &'static [u8]| async move {
        tls.write_all(what).await.unwrap();
        let mut got = vec![0u8; what.len()];
        tls.read_exact(&mut got).await.unwrap();
        assert_eq!(got, what);
        tls
    };
    let old = echo(connect().await, b"before").await;
    let first_seen = seen_by_server.recv().await.unwrap();

    // A renewal after that handshake, before the certificate it got expires.
    until("a renewal", || {
        store
            .current()
            .is_some_and(|i| i.key.cert[0].as_ref() != first_seen.as_slice())
    })
    .await;
    let renewed = store.current().unwrap();
    assert!(renewed.issued_at < first.not_after);
    assert!(renewals.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    // New handshakes present a new certificate (verified by the server against the anchors);
    // the connection opened before goes on.
    let new = echo(connect().await, b"after").await;
    assert_ne!(seen_by_server.recv().await.unwrap(), first_seen);
    let old = echo(old, b"still open").await;
    drop((old, new));

    // Rotation: a second root is added to the Secret's bundle; the next certificates carry both.
    let (_, extra) =
        Authority::generate("lab.local", Duration::from_secs(3), SystemTime::now()).unwrap();
    let bundle = format!("{first_anchors}{}", extra.anchors);
    let patch = serde_json::json!({"data": {ca::ANCHORS: ByteString(bundle.as_bytes().to_vec())}});
    Api::<Secret>::namespaced(admin.clone(), "mesh-system")
        .patch("mesh-ca", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    until("the new bundle served", || {
        store.current().is_some_and(|i| i.anchors.len() == 2)
    })
    .await;
    renewer.abort();
    running.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The controller's own ServiceAccount with exactly deploy/controller's RBAC can do all it does:
/// make and read its CA, review tokens, sign, and record an Event on a proxy's Pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_rbac_is_all_the_controller_needs() {
    let lab = Server::start(Options::default()).await.unwrap();
    let admin = lab.client().await.unwrap();
    let rbac = include_str!("../../../deploy/controller/rbac.yaml");
    let ns = include_str!("../../../deploy/controller/namespace.yaml");
    lab_node::scenario::apply_yaml(&admin, "ghostwire-system", "namespace.yaml", ns)
        .await
        .unwrap();
    lab_node::scenario::apply_yaml(&admin, "ghostwire-system", "rbac.yaml", rbac)
        .await
        .unwrap();
    let request = serde_json::from_value(serde_json::json!({"spec": {"audiences": []}})).unwrap();
    let own = Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
        admin.clone(),
        "ghostwire-system",
    )
    .create_token_request("ghostwire-controller", &PostParams::default(), &request)
    .await
    .unwrap()
    .status
    .unwrap()
    .token;
    let base = lab.kube_config().await.unwrap();
    let mut config = kube::Config::new(base.cluster_url.clone());
    config.root_cert = base.root_cert.clone();
    config.auth_info.token = Some(own.into());
    let client = kube::Client::try_from(config).unwrap();

    let s = CaSettings {
        namespace: "ghostwire-system".into(),
        secret: "ghostwire-mesh-ca".into(),
        ..settings(Duration::from_secs(3600))
    };
    // Created, then read again (the second call takes the `get` path).
    ca::load_or_create(&client, &s).await.unwrap();
    let (authority, _) = ca::load_or_create(&client, &s).await.unwrap();
    // A Secret of another name is not the controller's to read.
    let other = Api::<Secret>::namespaced(client.clone(), "ghostwire-system")
        .get("something-else")
        .await
        .unwrap_err();
    assert!(
        matches!(other, kube::Error::Api(ref e) if e.code == 403),
        "{other:?}"
    );

    let auth = Arc::new(TokenReviewer::new(client.clone(), AUDIENCE));
    let controller = Controller::new(Model::default(), auth, Metrics::default())
        .with_ca(CaHandle::new(authority))
        .with_events(client.clone());
    let running = start(controller, "127.0.0.1:0".parse().unwrap()).await;
    let (token, _) = pod_token(&admin, "app-1", &[AUDIENCE]).await;
    let me = spiffe_id("lab.local", "default", "default");
    sign(running.addr, &token, csr_for(&me)).await.unwrap();
    // The watches' list (routes too) and the routes' status writes.
    mesh_controller::gateway::install_crds(&admin)
        .await
        .unwrap();
    let routes: Api<mesh_controller::gateway::HTTPRoute> =
        Api::namespaced(admin.clone(), "default");
    let route = serde_json::from_value(serde_json::json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "api"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "kubernetes"}],
                 "rules": [{"backendRefs": [{"name": "kubernetes", "port": 443}]}]}}))
    .unwrap();
    routes.create(&PostParams::default(), &route).await.unwrap();
    let model = Model::default();
    let watching = tokio::spawn(mesh_controller::watch::run(
        client.clone(),
        model.clone(),
        "cluster.local".into(),
    ));
    until("the watches' first publish with the route", || {
        model
            .load()
            .services
            .get("kubernetes.default:443")
            .is_some_and(|e| !e.routes.is_empty())
    })
    .await;
    let mut written = false;
    for _ in 0..1200 {
        let r = routes.get("api").await.unwrap();
        if r.status.is_some_and(|s| !s.parents.is_empty()) {
            written = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        written,
        "the controller's account could not write the route's status"
    );
    watching.abort();
    kube_util::event::record(
        &client,
        kube_util::event::Report {
            component: "ghostwire-controller",
            warning: true,
            reason: "ConfigRefused",
            action: "Push",
            message: "a test".into(),
            about: k8s_openapi::api::core::v1::ObjectReference {
                namespace: Some("default".into()),
                name: Some("app-1".into()),
                kind: Some("Pod".into()),
                ..Default::default()
            },
        },
    )
    .await;
    let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(admin.clone(), "default")
        .list(&Default::default())
        .await
        .unwrap();
    assert!(
        events
            .items
            .iter()
            .any(|e| e.reason.as_deref() == Some("ConfigRefused"))
    );
    running.stop().await;
}
