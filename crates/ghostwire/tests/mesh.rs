//! The real `ghostwire proxy-init` and `ghostwire proxy` (as uid 1337) in lab pods: protocols
//! through both proxies (HTTP/1.1, gRPC from grpcio, opaque TCP, a server-first protocol),
//! no loops, malformed input and bounds, and the drain on SIGTERM; mesh TLS with certificates
//! the mesh controller signed.

mod common;
#[path = "../../mesh-controller/tests/common/mod.rs"]
mod ctl;

use common::{TempDir, ghostwire};
use lab_net::{Lab, Pod};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PEERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers");

/// proxy-init, its validator, then the proxy as uid 1337; killed on drop.
struct MeshedPod {
    pod: Pod,
    child: Child,
}

impl MeshedPod {
    fn start(pod: &Pod, tmp: &TempDir, routes: &str, args: &[&str]) -> MeshedPod {
        let run = |extra: &[&str]| {
            let out = pod
                .command(ghostwire())
                .arg("proxy-init")
                .args(extra)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "proxy-init {extra:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[]);
        run(&["--validate"]);
        let file = tmp.path(&format!("{}-routes.yaml", pod.name));
        std::fs::write(&file, routes).unwrap();
        let log = std::fs::File::create(tmp.path(&format!("{}-proxy.log", pod.name))).unwrap();
        let child = pod
            .command("setpriv")
            .args(["--reuid=1337", "--regid=1337", "--clear-groups", "--"])
            .arg(ghostwire())
            .args(["proxy", "--routes"])
            .arg(&file)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let m = MeshedPod {
            pod: pod.clone(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while m.get("/ready").map(|r| r.status) != Some(200) {
            assert!(Instant::now() < deadline, "proxy in {} not ready", pod.name);
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    fn get(&self, path: &str) -> Option<lab_net::HttpResponse> {
        self.pod
            .http(SocketAddr::new(self.pod.ipv4.into(), 4191), path)
            .ok()
    }

    fn metrics(&self) -> String {
        self.get("/metrics").map(|r| r.body).unwrap_or_default()
    }
}

impl Drop for MeshedPod {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn sh(pod: &Pod, script: &str) -> String {
    let out = pod.command("sh").args(["-c", script]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A process in `pod` that prints "ready" once it serves; killed on drop.
struct Peer(Child);

impl Peer {
    fn start(pod: &Pod, program: &str, args: &[&str]) -> Peer {
        let mut child = pod
            .command(program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "{program} {args:?} did not start");
        Peer(child)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn protocols_pass_through_both_proxies() {
    let tmp = TempDir::new("mesh-protocols");
    let mut lab = Lab::new("mesh-proto").unwrap();
    let client = lab.add_pod("client").unwrap();
    let server = lab.add_pod("server").unwrap();
    let _echo = server.serve_echo("server", &[8080, 9000], &[]).unwrap();
    let grpc = format!("{PEERS}/grpc_peer.py");
    let _grpc = Peer::start(&server, "python3", &[&grpc, "server", "50051"]);
    // A server-first protocol on a default opaque port (Redis): it greets before the client
    // says anything.
    let banner = server
        .listen_tcp((std::net::Ipv6Addr::UNSPECIFIED, 6379))
        .unwrap();
    std::thread::spawn(move || {
        for s in banner.incoming() {
            let Ok(mut s) = s else { return };
            let _ = s.write_all(b"+BANNER\r\n");
            let mut sink = [0u8; 64];
            let _ = s.read(&mut sink);
        }
    });
    // Detection would wait this long for a silent client: far longer than the test waits.
    let slow_detect = ["--detect-timeout", "60s"];
    let c = MeshedPod::start(&client, &tmp, "services: []\n", &slow_detect);
    let s = MeshedPod::start(&server, &tmp, "services: []\n", &slow_detect);

    // HTTP/1.1, IPv4 and IPv6, through the client's outbound and the server's inbound proxy.
    for ip in [server.ipv4.to_string(), format!("[{}]", server.ipv6)] {
        let out = sh(&client, &format!("curl -s --max-time 5 http://{ip}:8080/"));
        assert_eq!(out, "server\n", "{ip}");
    }
    // gRPC (HTTP/2 with prior knowledge), unary and a server stream.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            client.netns().name(),
            "python3",
            &grpc,
            "client",
        ])
        .arg(format!("{}:50051", server.ipv4))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "pong:x\ntick0,tick1,tick2\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Opaque TCP.
    let out = sh(
        &client,
        &format!("echo hi | socat -t2 - TCP:{}:9000", server.ipv4),
    );
    assert_eq!(out, "server\n");
    // The server speaks first and the client stays silent: the greeting still arrives.
    let out = sh(
        &client,
        &format!("sleep 3 | timeout 10 socat -t1 - TCP:{}:6379", server.ipv4),
    );
    assert_eq!(out, "+BANNER\r\n");

    // Relayed bytes are counted when a relay ends, which may be after the client has its answer.
    let bytes = "ghostwire_proxy_tcp_bytes_total{direction=\"outbound\",side=\"from_client\"}";
    common::wait_for("the opaque relay's bytes counted", 30, || {
        metric(&c.metrics(), bytes) >= 3.0
    });
    let cm = c.metrics();
    for proto in ["http1", "http2", "opaque"] {
        let key = format!(
            "ghostwire_proxy_connections_total{{direction=\"outbound\",protocol=\"{proto}\"}}"
        );
        assert!(metric(&cm, &key) >= 1.0, "{key} in\n{cm}");
    }
    let sm = s.metrics();
    assert!(
        metric(
            &sm,
            "ghostwire_proxy_connections_total{direction=\"inbound\",protocol=\"http2\"}"
        ) >= 1.0,
        "{sm}"
    );
    assert!(
        metric(&sm, "ghostwire_proxy_requests_total{direction=\"inbound\"") >= 4.0,
        "{sm}"
    );

    // No loops and no open relay: a connection straight to the proxy's port (its conntrack
    // destination is the proxy itself) and one redirected from the pod's own proxy port are
    // both closed unanswered.
    sh(&client, "curl -s --max-time 2 http://127.0.0.1:5000/");
    sh(
        &client,
        &format!("curl -s --max-time 2 http://{}:4000/", server.ipv4),
    );
    assert!(
        metric(
            &c.metrics(),
            "ghostwire_proxy_refused_connections_total{direction=\"outbound\",reason=\"loop\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &s.metrics(),
            "ghostwire_proxy_refused_connections_total{direction=\"inbound\",reason=\"loop\"}"
        ) >= 1.0,
        "{}",
        s.metrics()
    );
}

/// Raw bytes to `addr` from inside `pod`, optionally pausing before the end; the reply.
fn raw(pod: &Pod, addr: SocketAddr, head: &[u8], pause: Duration) -> String {
    let head = head.to_vec();
    pod.netns()
        .run(move || {
            let mut s =
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = s.write_all(&head);
            std::thread::sleep(pause);
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        })
        .unwrap()
}

#[test]
fn malformed_input_bounds_and_drain() {
    let tmp = TempDir::new("mesh-drain");
    let mut lab = Lab::new("mesh-drain").unwrap();
    let client = lab.add_pod("client").unwrap();
    let server = lab.add_pod("server").unwrap();
    let _http = Peer::start(
        &server,
        "python3",
        &[&format!("{PEERS}/slow_http.py"), "8080"],
    );
    let mut c = MeshedPod::start(
        &client,
        &tmp,
        "services: []\n",
        &["--header-read-timeout", "1s", "--drain-timeout", "10s"],
    );
    let to = SocketAddr::new(server.ipv4.into(), 8080);

    let ok = raw(
        &client,
        to,
        b"GET / HTTP/1.1\r\nhost: s\r\nconnection: close\r\n\r\n",
        Duration::ZERO,
    );
    assert!(
        ok.starts_with("HTTP/1.1 200") && ok.ends_with("done\n"),
        "{ok}"
    );
    let bad = raw(
        &client,
        to,
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        Duration::ZERO,
    );
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    let many: String = (0..150).map(|i| format!("x-h{i}: 1\r\n")).collect();
    let r = raw(
        &client,
        to,
        format!("GET / HTTP/1.1\r\nhost: s\r\n{many}\r\n").as_bytes(),
        Duration::ZERO,
    );
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    let huge = format!(
        "GET / HTTP/1.1\r\nhost: s\r\nx-big: {}\r\n\r\n",
        "a".repeat(70_000)
    );
    let r = raw(&client, to, huge.as_bytes(), Duration::ZERO);
    assert!(r.starts_with("HTTP/1.1 431"), "{r}");
    // A client that stops in the middle of its headers.
    let r = raw(
        &client,
        to,
        b"GET / HTTP/1.1\r\nhost: s\r\n",
        Duration::from_secs(3),
    );
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 408"), "{r}");
    // The proxy is still there for everyone else.
    let ok = raw(
        &client,
        to,
        b"GET / HTTP/1.1\r\nhost: s\r\nconnection: close\r\n\r\n",
        Duration::ZERO,
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");

    // Drain: a request in flight when SIGTERM arrives still gets its answer.
    let slow = client
        .command("curl")
        .args(["-s", "--max-time", "10", &format!("http://{to}/slow")])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // In flight: the proxy holds curl's connection (the earlier ones are closed).
    common::wait_for("the slow request in the proxy", 30, || {
        metric(
            &c.metrics(),
            "ghostwire_proxy_open_connections{direction=\"outbound\"}",
        ) >= 1.0
    });
    let st = Command::new("kill")
        .args(["-TERM", &c.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    // The backend answers /slow after 3 s: until then the proxy drains, its admin still up.
    let mut ready = None;
    common::wait_for("the proxy draining", 10, || {
        ready = c.get("/ready");
        ready.as_ref().is_none_or(|r| r.status != 200)
    });
    let ready = ready.expect("admin still up while draining");
    assert_eq!((ready.status, ready.body.as_str()), (503, "draining\n"));
    let out = slow.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "done\n");
    let status = c.child.wait().unwrap();
    assert!(status.success(), "proxy exit: {status}");
    // After the proxy is gone, new connections are refused (nothing listens on 5000), never
    // sent around the mesh.
    let out = sh(
        &client,
        &format!("curl -s --max-time 3 -o /dev/null -w '%{{http_code}}' http://{to}/"),
    );
    assert_eq!(out, "000");
}

/// Mesh TLS with the controller's certificates, end to end (issue 13 point 4): the mesh
/// controller (what `ghostwire controller` runs: the API watch, TokenReview, the CA in a
/// Secret) serves from a lab pod's namespace; two meshed lab pods run proxy-init and the real
/// `ghostwire proxy --controller … --identity …` with a Pod-bound token and no certificate
/// files, as the injector sets them up. The client's request reaches the server's app over mesh
/// TLS made with certificates the controller signed: the app is told the client's SPIFFE ID.
#[test]
fn controller_signed_certificates_carry_the_client_identity() {
    use k8s_openapi::api::core::v1::{Namespace, Pod as ApiPod, Service, ServiceAccount};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::api::{Api, PostParams};
    use mesh_controller::auth::TokenReviewer;
    use mesh_controller::ca::{CaHandle, CaSettings, spiffe_id};
    use serde_json::json;

    const TRUST_DOMAIN: &str = "cluster.local";
    let id = |sa: &str| spiffe_id(TRUST_DOMAIN, "default", sa);
    let tmp = TempDir::new("mesh-ctl-tls");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut lab = Lab::new("mesh-ctl").unwrap();
    let ctl_pod = lab.add_pod("ctl").unwrap();
    let client = lab.add_pod("client").unwrap();
    let server = lab.add_pod("server").unwrap();
    let _app = Peer::start(
        &server,
        "python3",
        &[&format!("{PEERS}/slow_http.py"), "8080"],
    );
    let server_ip = server.ipv4.to_string();
    let (_api, tokens, vip) = rt.block_on(async {
        let api = lab_api::Server::start(lab_api::Options::default())
            .await
            .unwrap();
        let admin = api.client().await.unwrap();
        let create = PostParams::default();
        let ns = serde_json::from_value(json!({"metadata": {"name": "mesh-system"}})).unwrap();
        Api::<Namespace>::all(admin.clone())
            .create(&create, &ns)
            .await
            .unwrap();
        let pods: Api<ApiPod> = Api::namespaced(admin.clone(), "default");
        let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
        let mut tokens = Vec::new();
        for name in ["client", "server"] {
            let sa = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
            sas.create(&create, &sa).await.unwrap();
            // What the injector gives a meshed Pod when a controller is set: GW_MESH_IDENTITY
            // on its proxy, which is how the controller knows the Pod's endpoints are meshed.
            let pod = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
                "serviceAccountName": name,
                "containers": [{"name": "app", "image": "app"}, {"name": "ghostwire-proxy",
                    "image": "ghostwire", "env": [{"name": "GW_MESH_IDENTITY", "value": id(name)}]}]}}))
            .unwrap();
            pods.create(&create, &pod).await.unwrap();
            let (token, _) = ctl::pod_token_as(&admin, name, name, &[ctl::AUDIENCE]).await;
            tokens.push(token);
        }
        let svc = serde_json::from_value(json!({"metadata": {"name": "app-b"}, "spec": {
            "selector": {"app": "app-b"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
        .unwrap();
        let made = Api::<Service>::namespaced(admin.clone(), "default")
            .create(&create, &svc)
            .await
            .unwrap();
        let vip = made.spec.unwrap().cluster_ip.unwrap();
        let slice = serde_json::from_value(json!({"metadata": {"name": "app-b-1",
            "labels": {"kubernetes.io/service-name": "app-b"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [server_ip], "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "namespace": "default", "name": "server"}}]}))
        .unwrap();
        Api::<EndpointSlice>::namespaced(admin.clone(), "default")
            .create(&create, &slice)
            .await
            .unwrap();

        let model = mesh_controller::model::Model::default();
        tokio::spawn(mesh_controller::watch::run(
            admin.clone(),
            model.clone(),
            TRUST_DOMAIN.into(),
        ));
        let ca = CaSettings {
            namespace: "mesh-system".into(),
            secret: "mesh-ca".into(),
            trust_domain: TRUST_DOMAIN.into(),
            lifetime: Duration::from_secs(3600),
            reload: Duration::from_secs(1),
        };
        let (authority, _) = mesh_controller::ca::load_or_create(&admin, &ca)
            .await
            .unwrap();
        let auth = std::sync::Arc::new(TokenReviewer::new(admin.clone(), ctl::AUDIENCE));
        let controller = mesh_controller::server::Controller::new(
            model,
            auth,
            mesh_controller::metrics::Metrics::default(),
        )
        .with_ca(CaHandle::new(authority));
        // Its gRPC listener lives in the ctl pod's namespace, where the lab pods reach it.
        let l = ctl_pod
            .listen_tcp((std::net::Ipv4Addr::UNSPECIFIED, 8090))
            .unwrap();
        l.set_nonblocking(true).unwrap();
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        tokio::spawn(mesh_controller::server::serve(
            controller,
            l,
            std::future::pending(),
        ));
        (api, tokens, vip)
    });

    let url = format!("http://{}:8090", ctl_pod.ipv4);
    let start = |pod: &Pod, token: &str| {
        let file = tmp.path(&format!("{}-token", pod.name));
        std::fs::write(&file, token).unwrap();
        // The routes file is ignored with a controller; ready once its first config arrived.
        let args = [
            "--controller",
            url.as_str(),
            "--identity",
            &id(&pod.name),
            "--token",
            file.to_str().unwrap(),
        ];
        MeshedPod::start(pod, &tmp, "services: []\n", &args)
    };
    let s = start(&server, &tokens[1]);
    let c = start(&client, &tokens[0]);
    let want = format!("x-ghostwire-client-id: {}", id("client"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out = String::new();
    while !out.contains(&want) {
        assert!(
            Instant::now() < deadline,
            "the app never saw {want}; last answer: {out:?}\nclient proxy config: {:?}",
            c.get("/config_dump").map(|r| r.body)
        );
        std::thread::sleep(Duration::from_millis(200));
        out = sh(
            &client,
            &format!("curl -s --max-time 5 http://{vip}/headers"),
        );
    }
    let handshakes = |m: &MeshedPod, dir: &str| {
        metric(
            &m.metrics(),
            &format!("ghostwire_proxy_tls_handshakes_total{{direction=\"{dir}\",result=\"ok\"}}"),
        )
    };
    assert!(handshakes(&c, "outbound") >= 1.0 && handshakes(&s, "inbound") >= 1.0);
    drop((c, s));
    drop(rt);
}
