//! `ghostwire attach` in the lab: the agent joins a running Pod as an ephemeral container
//! (its containers keep running, restart counts unchanged), the Pod's outbound TCP goes through
//! the attached proxy, the mTLS port serves the Pod's certificate and a renewed one without a
//! restart, refuses a peer without a mesh certificate, and killing the proxy never black-holes
//! the Pod: it is restarted, and once the supervisor gives up the redirection is gone.

mod common;

use identity::controller::InProcess;
use identity::desired::{SERIAL, secret_name};
use identity::settings;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::Api;
use lab_node::scenario::{apply, echo_pod, wait_ready};
use lab_node::{Cluster, ClusterOptions};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use common::{LAB_TIMEOUT as TIMEOUT, until_lab as until};

/// Outbound connections the attached mesh proxy took (0 when unreachable).
fn proxied(pod: &lab_net::Pod, ip: IpAddr) -> f64 {
    let text = pod
        .http_get(SocketAddr::new(ip, 18091), "/metrics")
        .unwrap_or_default();
    common::metric(
        &common::parse_metrics(&text),
        "ghostwire_proxy_connections_total",
        &[("direction", "outbound"), ("protocol", "opaque")],
    )
    .unwrap_or(0.0)
}

fn restarts(p: &Pod) -> Vec<(String, i32, bool)> {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let running = c.state.is_some_and(|s| s.running.is_some());
            (c.name, c.restart_count, running)
        })
        .collect()
}

/// An mTLS client of the agent's port, with or without a client certificate: the serial the
/// server presented (hex), and the answer to `GET /healthz` through the seed's `ip:port` line.
fn tls_get(
    anchors: &str,
    client: Option<(&str, &str)>,
    to: SocketAddr,
) -> std::io::Result<(String, String)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for p in pem::parse_many(anchors).unwrap() {
        roots.add(p.into_contents().into()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((chain, key)) => {
            let certs = pem::parse_many(chain)
                .unwrap()
                .into_iter()
                .map(|p| p.into_contents().into())
                .collect();
            let key = rustls::pki_types::PrivateKeyDer::Pkcs8(
                pem::parse(key).unwrap().into_contents().into(),
            );
            b.with_client_auth_cert(certs, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    let name = rustls::pki_types::ServerName::IpAddress(to.ip().into());
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let sock = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(b"127.0.0.1:18090\n")?;
    let mut y = [0u8; 1];
    tls.read_exact(&mut y)?;
    let der = tls.conn.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let serial = cert.raw_serial_as_string().replace(':', "");
    tls.write_all(b"GET /healthz HTTP/1.0\r\n\r\n")?;
    let mut answer = String::new();
    let _ = tls.read_to_string(&mut answer);
    Ok((serial, format!("{}{answer}", y[0] as char)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_redirects_serves_renews_and_never_black_holes() {
    let mut opts = ClusterOptions::new("attach", env!("CARGO_BIN_EXE_ghostwire").into());
    opts.backoff_initial = Duration::from_millis(300);
    let c = Cluster::start(opts)
        .await
        .expect("lab cluster (needs root)");
    let client = c.client().await.unwrap();
    // Certificates live 6 s: renewed every 4 s.
    let s = settings::with(&[
        (settings::CERT_LIFETIME, "6s"),
        (settings::TRUST_DOMAIN, "lab.local"),
    ])
    .unwrap();
    let running = InProcess::start(&client, s).await.unwrap();
    let anchors = running.anchors();
    let (peer, peer_key) = running
        .ca
        .current()
        .issue(
            "spiffe://lab.local/ns/default/sa/peer",
            &[],
            &[],
            SystemTime::now() - Duration::from_secs(1),
        )
        .unwrap();

    apply(&client, "default", &echo_pod("srv", None))
        .await
        .unwrap();
    let web = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "annotations": {"ghostwire.dev/encrypt": "true"}},
        "spec": {"terminationGracePeriodSeconds": 1,
            "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "1000000"]}]}});
    apply(&client, "default", &web).await.unwrap();
    wait_ready(&client, "default", &["srv", "web"], TIMEOUT)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let ip = |p: &Pod| -> IpAddr {
        p.status
            .as_ref()
            .unwrap()
            .pod_ip
            .as_ref()
            .unwrap()
            .parse()
            .unwrap()
    };
    let srv = SocketAddr::new(ip(&pods.get("srv").await.unwrap()), 8080);
    let before = pods.get("web").await.unwrap();
    let web_ip = ip(&before);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    until("web's Secret", || async {
        secrets.get_opt(&secret_name("web")).await.unwrap()
    })
    .await;

    // `ghostwire attach` by hand, from the kubeconfig; a second time changes nothing.
    let attach = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ghostwire"))
            .args(["attach", "web", "--max-restarts", "1", "--reload", "500ms"])
            .env("KUBECONFIG", c.kubeconfig_path())
            .output()
            .unwrap()
    };
    let out = attach();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("attached ghostwire-identity"));
    let out = attach();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("already has"),
        "{out:?}"
    );

    let web_ns = c.node().pod_netns("default", "web").unwrap();
    let netns_ino = web_ns
        .netns()
        .run(|| std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino())
        .unwrap();
    let srv_ns = c.node().pod_netns("default", "srv").unwrap();
    // The Pod's outbound TCP goes through the proxy.
    let first = until("traffic through the proxy", || async {
        let ok = web_ns.http_get(srv, "/").is_ok();
        let n = proxied(&web_ns, web_ip);
        (ok && n >= 1.0)
            .then(|| common::proxies(netns_ino))
            .filter(|p| p.len() == 1)
    })
    .await[0];
    let after = pods.get("web").await.unwrap();
    assert_eq!(restarts(&after), restarts(&before));
    assert_eq!(restarts(&after), [("app".to_string(), 0, true)]);

    // mTLS: the Pod's certificate, a peer with a mesh certificate gets through to a local
    // port, one without is refused.
    let tls = |with_cert: bool| {
        let anchors = anchors.clone();
        let (chain, key) = (peer.chain_pem.clone(), peer_key.clone());
        srv_ns
            .netns()
            .run(move || {
                tls_get(
                    &anchors,
                    with_cert.then_some((chain.as_str(), key.as_str())),
                    SocketAddr::new(web_ip, 18443),
                )
            })
            .unwrap()
    };
    let (serial, answer) = until("the TLS port", || async { tls(true).ok() }).await;
    assert!(
        answer.starts_with("YHTTP/1.") && answer.contains(" 200 OK"),
        "{answer}"
    );
    assert!(
        tls(false).is_err(),
        "a peer without a certificate got through"
    );
    // Renewal: a new serial is served (the one in the Secret), by the same proxy process.
    let renewed = until("a renewed certificate served", || async {
        let (now, _) = tls(true).ok()?;
        let s = secrets.get(&secret_name("web")).await.ok()?;
        let want = s.metadata.annotations?.get(SERIAL)?.clone();
        (now != serial && now == want).then_some(now)
    })
    .await;
    assert_ne!(renewed, serial);
    assert_eq!(common::proxies(netns_ino), [first]);

    // Killing the proxy: the supervisor restarts it and traffic flows through the new one.
    std::process::Command::new("kill")
        .args(["-9", &first.to_string()])
        .status()
        .unwrap();
    let second = until("a restarted proxy carrying traffic", || async {
        let p = common::proxies(netns_ino);
        let ok = web_ns.http_get(srv, "/").is_ok();
        let n = proxied(&web_ns, web_ip);
        (ok && n >= 1.0 && p.len() == 1 && p[0] != first).then(|| p[0])
    })
    .await;
    // Killed again, past --max-restarts 1: the supervisor removes the redirection and exits;
    // the Pod's traffic flows directly.
    std::process::Command::new("kill")
        .args(["-9", &second.to_string()])
        .status()
        .unwrap();
    until("the agent to give up", || async {
        let p = pods.get("web").await.ok()?;
        let done = p
            .status?
            .ephemeral_container_statuses?
            .into_iter()
            .any(|c| {
                c.name == "ghostwire-identity" && c.state.is_some_and(|s| s.terminated.is_some())
            });
        done.then_some(())
    })
    .await;
    assert!(common::proxies(netns_ino).is_empty());
    web_ns
        .http_get(srv, "/")
        .expect("the Pod's traffic flows without the proxy");
    let rules = web_ns
        .netns()
        .run(|| {
            std::process::Command::new("nft")
                .args(["list", "tables"])
                .output()
                .unwrap()
        })
        .unwrap();
    assert!(!String::from_utf8_lossy(&rules.stdout).contains("ghostwire_identity"));
    let end = pods.get("web").await.unwrap();
    assert_eq!(restarts(&end), restarts(&before));
}
