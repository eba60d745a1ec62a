//! Mesh mTLS between two meshed lab pods (real kernel, real sockets, a capture on the server
//! pod's eth0): no plaintext on the wire when on and the marker visible when off; the client's
//! identity reaches the app and a forged one does not; a wrong peer identity is refused; the
//! app's own TLS passes through opaque; a server-speaks-first protocol passes meshed and
//! plaintext without waiting for detection; certificate files are reloaded; strict refuses
//! plaintext, permissive accepts it.

mod common;

use common::*;
use lab_net::capture::Capture;
use lab_net::{Lab, Pod, ServicePort};
use std::net::{Ipv6Addr, SocketAddr};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

const CLIENT_ID: &str = "spiffe://td.test/ns/app-a/sa/client";
const SERVER_ID: &str = "spiffe://td.test/ns/app-b/sa/server";

fn knobs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Waits (bounded) until the capture shows `s`.
fn wait_for(cap: &Capture, s: &str) {
    assert!(
        cap.wait_for(s, Duration::from_secs(20)),
        "{s} never captured; the capture:\n{}",
        cap.text()
    );
}

/// A plaintext request from `pod` as root (the proxy's uid in these tests, so not redirected
/// in `pod`): it reaches the peer's inbound proxy as plaintext.
fn plain_curl(pod: &Pod, args: &[&str]) -> String {
    let out = pod
        .command("curl")
        .args(["-s", "--max-time", "5"])
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits (bounded) until `f` holds.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn mesh_tls_between_pods() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut lab = Lab::new("mesh-tls").unwrap();
    let client = lab.add_pod("client").unwrap();
    let server = lab.add_pod("server").unwrap();
    let _app = http_backend(&rt, &server, "server", 8080);
    let svc = lab
        .add_service("app-b", &[ServicePort::tcp(80, 8080)], &[&server])
        .unwrap();
    let dir = std::env::temp_dir().join(format!("gw-mesh-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = Ca::new("test mesh CA");
    let client_files = ca.issue(&dir, "client", CLIENT_ID);
    let server_files = ca.issue(&dir, "server", SERVER_ID);
    // Detection would wait this long for a silent client: far longer than any wait here, so
    // a server-first connection that waits for detection never gets its greeting in time.
    let slow_detect = (mesh_config::DETECT_TIMEOUT, "600s".to_string());
    let client_knobs: Vec<_> = client_files
        .iter()
        .cloned()
        .chain([slow_detect.clone()])
        .collect();
    let server_knobs: Vec<_> = server_files.iter().cloned().chain([slow_detect]).collect();
    let c = Meshed::start(&client, &knobs(&client_knobs));
    let mut s = Meshed::start(&server, &knobs(&server_knobs));
    let vip = svc.addr_v4(80);
    let ep = SocketAddr::new(server.ipv4.into(), 8080);
    let url = format!("http://{vip}/headers");
    let cap = Capture::start(server.command("tcpdump"), "eth0", "tcp port 8080").unwrap();

    // On: the endpoint is meshed with the server's identity.
    c.configure(&routes(vip, ep, Some(SERVER_ID)));
    let out = curl(
        &client,
        &[
            "-H",
            "x-marker: SECRET-ON-THE-WIRE",
            "-H",
            "x-ghostwire-client-id: spiffe://td.test/ns/evil/sa/forged",
            &url,
        ],
    );
    assert!(
        out.contains(&format!("x-ghostwire-client-id: {CLIENT_ID}")),
        "{out}"
    );
    assert!(!out.contains("forged") && out.contains("x-marker"), "{out}");
    // A plaintext request after it (permissive server): once the capture shows it, it has
    // everything before it too.
    let out = plain_curl(
        &client,
        &[
            "-H",
            "x-marker: PLAIN-SENTINEL",
            "-H",
            "x-ghostwire-client-id: spiffe://td.test/ns/evil/sa/forged",
            &format!("http://{ep}/headers"),
        ],
    );
    assert!(
        out.contains("x-marker: PLAIN-SENTINEL") && !out.contains("x-ghostwire-client-id"),
        "a forged identity header reached the app: {out}"
    );
    wait_for(&cap, "PLAIN-SENTINEL");
    assert!(
        !cap.contains("SECRET-ON-THE-WIRE"),
        "plaintext on the wire with mesh TLS on"
    );
    let cm = c.metrics();
    assert!(
        metric(
            &cm,
            "ghostwire_proxy_tls_handshakes_total{direction=\"outbound\",result=\"ok\"}"
        ) >= 1.0,
        "{cm}"
    );
    let sm = s.metrics();
    assert!(
        metric(
            &sm,
            "ghostwire_proxy_tls_handshakes_total{direction=\"inbound\",result=\"ok\"}"
        ) >= 1.0,
        "{sm}"
    );

    // A server-speaks-first protocol on a default opaque port (Redis, 6379), the app greeting
    // and closing. Meshed (its endpoint has an identity): mesh TLS to the server's proxy, which
    // passes what it carries to the app at once instead of waiting for the client's bytes.
    let greeter = server.listen_tcp((Ipv6Addr::UNSPECIFIED, 6379)).unwrap();
    std::thread::spawn(move || {
        for conn in greeter.incoming() {
            let Ok(mut conn) = conn else { return };
            let _ = std::io::Write::write_all(&mut conn, b"+GREETING\r\n");
        }
    });
    let redis = SocketAddr::new(server.ipv4.into(), 6379);
    c.configure(&format!(
        "{}  - name: redis\n    addresses: [\"{redis}\"]\n    backends:\n      - {{name: v1, endpoints: [\"{redis}\"], identities: {{\"{redis}\": \"{SERVER_ID}\"}}}}\n",
        routes(vip, ep, Some(SERVER_ID))
    ));
    let ok_before = metric(
        &s.metrics(),
        "ghostwire_proxy_tls_handshakes_total{direction=\"inbound\",result=\"ok\"}",
    );
    // socat gives up after 20 s without a byte (the bound of this check, far below the 600 s
    // detection timeout).
    let greet = |out: Output| String::from_utf8_lossy(&out.stdout).into_owned();
    let tcp = format!("TCP:{redis}");
    let out = greet(as_client(
        &client,
        "socat",
        &["-T", "20", "-u", &tcp, "STDOUT"],
    ));
    assert_eq!(out, "+GREETING\r\n", "meshed server-first connection");
    assert!(
        metric(
            &s.metrics(),
            "ghostwire_proxy_tls_handshakes_total{direction=\"inbound\",result=\"ok\"}"
        ) > ok_before,
        "the server-first connection did not come over mesh TLS"
    );
    // Plaintext (not redirected in the client Pod), the client silent: the inbound proxy waits
    // a short window for a ClientHello, then passes it as plaintext (permissive).
    let out = greet(
        client
            .command("socat")
            .args(["-T", "20", "-u", &tcp, "STDOUT"])
            .output()
            .unwrap(),
    );
    assert_eq!(out, "+GREETING\r\n", "plaintext server-first connection");

    // Off (the endpoint is not meshed in the config): the same marker is on the wire.
    c.configure(&routes(vip, ep, None));
    let out = curl(&client, &["-H", "x-marker: SECRET-ON-THE-WIRE", &url]);
    assert!(
        out.contains("x-marker") && !out.contains("x-ghostwire-client-id"),
        "{out}"
    );
    wait_for(&cap, "SECRET-ON-THE-WIRE");

    // A peer with another identity than the config says is refused before any byte of the
    // request is sent.
    c.configure(&routes(
        vip,
        ep,
        Some("spiffe://td.test/ns/app-b/sa/someone-else"),
    ));
    let out = curl(&client, &["-w", "\n%{http_code}", &url]);
    assert!(out.ends_with("\n502") && out.contains("mesh TLS"), "{out}");
    assert!(
        metric(
            &c.metrics(),
            "ghostwire_proxy_tls_handshakes_total{direction=\"outbound\",result=\"failed\"}"
        ) >= 1.0
    );

    // The app's own TLS (no mesh ALPN) passes both proxies opaque, end to end.
    let key = dir.join("app.key");
    let crt = dir.join("app.crt");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=app.example",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mut tls_app = server
        .command("openssl")
        .args(["s_server", "-quiet", "-www", "-accept", "8443", "-cert"])
        .arg(&crt)
        .arg("-key")
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let app_url = format!("https://{}:8443/", server.ipv4);
    let mut out = String::new();
    eventually("the app's own TLS answers through both proxies", || {
        out = curl(&client, &["-k", &app_url]);
        out.contains("s_server")
    });
    let _ = tls_app.kill();
    let _ = tls_app.wait();
    assert!(
        metric(
            &s.metrics(),
            "ghostwire_proxy_connections_total{direction=\"inbound\",protocol=\"tls\"}"
        ) >= 1.0
    );

    // Files that do not make an identity are refused, counted, and the previous one stays.
    let in_use = |id: &str| {
        format!("ghostwire_proxy_tls_identity_expiration_timestamp_seconds{{id=\"{id}\"}}")
    };
    assert!(c.metrics().contains(&in_use(CLIENT_ID)), "{}", c.metrics());
    std::fs::write(dir.join("client.crt"), "not a certificate\n").unwrap();
    eventually("the broken certificate file is refused", || {
        metric(&c.metrics(), "ghostwire_proxy_tls_identity_errors_total") >= 1.0
    });
    assert!(c.metrics().contains(&in_use(CLIENT_ID)), "{}", c.metrics());

    // New files are picked up: once the proxy says it presents the new identity, every new
    // connection carries it (no TLS session resumes the old one). Pooled connections keep
    // the handshake they made, so the IPv6 endpoint makes a new one.
    let other = "spiffe://td.test/ns/app-a/sa/renamed";
    ca.issue(&dir, "client", other);
    eventually("the client proxy presents the reloaded identity", || {
        c.metrics().contains(&in_use(other))
    });
    let ep6 = SocketAddr::new(server.ipv6.into(), 8080);
    c.configure(&routes(vip, ep6, Some(SERVER_ID)));
    let out = curl(&client, &[&url]);
    assert!(
        out.contains(&format!("x-ghostwire-client-id: {other}")),
        "{out}"
    );

    // Strict: plaintext is refused, mesh TLS still passes.
    s.join();
    drop(s);
    let strict: Vec<(&str, &str)> = knobs(&server_files)
        .into_iter()
        .chain([(mesh_config::TLS_MODE, "strict")])
        .collect();
    let s = Meshed::start(&server, &strict);
    assert_eq!(plain_curl(&client, &[&format!("http://{ep}/hello")]), "");
    assert!(
        metric(
            &s.metrics(),
            "ghostwire_proxy_refused_connections_total{direction=\"inbound\",reason=\"not_mesh_tls\"}"
        ) >= 1.0
    );
    eventually("mesh TLS passes a strict server", || {
        curl(&client, &[&url]).contains("x-ghostwire-client-id")
    });
    drop(cap);
    let _ = std::fs::remove_dir_all(&dir);
}
