//! HTTP through the proxy in lab pods: pass-through without config, weighted split, header
//! routes, retries and their budget, timeouts, hop-by-hop headers, inbound, file reload.

mod common;

use common::*;
use lab_net::{Lab, ServicePort};
use std::net::{Ipv6Addr, SocketAddr};

#[test]
fn http_routing_split_retries_budget_and_timeouts() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut lab = Lab::new("mesh-http").unwrap();
    let client = lab.add_pod("client").unwrap();
    let v1 = lab.add_pod("v1").unwrap();
    let v2 = lab.add_pod("v2").unwrap();
    let b1 = http_backend(&rt, &v1, "v1", 8080);
    let b2 = http_backend(&rt, &v2, "v2", 8080);
    let svc = lab
        .add_service("app-b", &[ServicePort::tcp(80, 8080)], &[&v1])
        .unwrap();
    let svc_c = lab
        .add_service("app-c", &[ServicePort::tcp(80, 8080)], &[&v2])
        .unwrap();
    let mesh = Meshed::start(&client, &[]);
    let vip = svc.addr_v4(80);
    let url = |path: &str| format!("http://{vip}{path}");

    // No config for the destination: it is proxied to its original destination unchanged
    // (here the ClusterIP, which the node's DNAT sends to v1).
    assert_eq!(curl(&client, &[&url("/hello")]), "v1\n");
    let m = mesh.metrics();
    assert!(
        metric(
            &m,
            "ghostwire_proxy_requests_total{direction=\"outbound\",service=\"\",route=\"\",backend=\"\",status_class=\"2xx\"}"
        ) >= 1.0,
        "{m}"
    );

    let ep1 = SocketAddr::new(v1.ipv4.into(), 8080);
    let ep2 = SocketAddr::new(v2.ipv4.into(), 8080);
    let vip6 = svc.addr_v6(80);
    let vip_c = svc_c.addr_v4(80);
    mesh.configure(&format!(
        r#"
services:
  - name: app-b.app-b
    addresses: ["{vip}", "{vip6}"]
    backends:
      - {{name: v1, weight: 90, endpoints: ["{ep1}"]}}
      - {{name: v2, weight: 10, endpoints: ["{ep2}"]}}
    failure_accrual: {{consecutive_failures: 1000, eject_for: 1s}}
    routes:
      - name: canary
        match: {{headers: {{x-canary: "true"}}}}
        split: [{{backend: v2, weight: 1}}]
      - name: flaky
        match: {{path_prefix: /flaky}}
        split: [{{backend: v2, weight: 1}}]
        retry: {{attempts: 2, statuses: [500], backoff: 1ms}}
      - name: slow
        match: {{path_prefix: /slow}}
        timeout: 300ms
  - name: app-c.app-c
    addresses: ["{vip_c}"]
    backends:
      - {{name: v2, endpoints: ["{ep2}"]}}
    retry_budget: {{ratio: 0.0, min_per_second: 1}}
    routes:
      - name: fail
        retry: {{attempts: 3, statuses: [500], backoff: 1ms}}
"#
    ));

    // The 90/10 split, per request (curl reuses one connection for all of them).
    let n = 400;
    let out = curl(&client, &[&url(&format!("/hello?[1-{n}]"))]);
    let v2_hits = out.lines().filter(|l| *l == "v2").count();
    assert_eq!(out.lines().count(), n, "{out}");
    // Binomial(400, 0.1): mean 40, sd 6; five sd either side.
    assert!((10..=70).contains(&v2_hits), "v2 got {v2_hits} of {n}");
    // Upstream connections are pooled: one client connection in turn, so a connection or
    // two per backend, not one per request.
    let conns = [&b1, &b2].map(|b| b.conns.load(std::sync::atomic::Ordering::SeqCst));
    assert!(
        conns.iter().sum::<u64>() <= 8,
        "{n} requests took {conns:?} connections"
    );
    // The same service over IPv6.
    assert!(matches!(
        curl(&client, &[&format!("http://{vip6}/hello")]).as_str(),
        "v1\n" | "v2\n"
    ));

    // Header route: every canary request goes to v2.
    let out = curl(&client, &["-H", "x-canary: true", &url("/hello?[1-50]")]);
    assert_eq!(out.lines().filter(|l| *l == "v2").count(), 50, "{out}");

    // Retries hide a backend that fails every other request.
    let before = metric(
        &mesh.metrics(),
        "ghostwire_proxy_retries_total{service=\"app-b.app-b\",route=\"flaky\"}",
    );
    let out = curl(
        &client,
        &[
            "-w",
            "%{http_code}\n",
            "-o",
            "/dev/null",
            &url("/flaky?[1-20]"),
        ],
    );
    assert_eq!(out.lines().filter(|l| *l == "200").count(), 20, "{out}");
    let m = mesh.metrics();
    assert!(
        metric(
            &m,
            "ghostwire_proxy_retries_total{service=\"app-b.app-b\",route=\"flaky\"}"
        ) > before,
        "{m}"
    );

    // The budget of app-c: no ratio, a 1/s floor over 10 s = 10 retries at most, then the 500
    // goes back to the client.
    let hits_before = b2.hits.load(std::sync::atomic::Ordering::SeqCst);
    let fail = format!("http://{vip_c}/fail?[1-20]");
    let out = curl(&client, &["-w", "%{http_code}\n", "-o", "/dev/null", &fail]);
    assert_eq!(out.lines().filter(|l| *l == "500").count(), 20, "{out}");
    let m = mesh.metrics();
    let retried = metric(&m, "ghostwire_proxy_retries_total{service=\"app-c.app-c\"");
    assert_eq!(retried, 10.0, "{m}");
    assert!(
        metric(
            &m,
            "ghostwire_proxy_retry_budget_exhausted_total{service=\"app-c.app-c\""
        ) >= 1.0,
        "{m}"
    );
    let sent = b2.hits.load(std::sync::atomic::Ordering::SeqCst) - hits_before;
    assert!(
        sent < 20 * 4,
        "the budget did not stop retries: {sent} attempts"
    );

    // The route's timeout: 504 from the proxy.
    let out = curl(&client, &["-w", "\n%{http_code}", &url("/slow")]);
    assert!(out.ends_with("\n504") && out.contains("timeout"), "{out}");

    // Hop-by-hop headers are dropped (also those `Connection` names), the rest arrives.
    let out = curl(
        &client,
        &[
            "-H",
            "Connection: x-private",
            "-H",
            "x-private: 1",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "x-canary: false",
            &url("/headers"),
        ],
    );
    assert!(out.contains("x-canary: false"), "{out}");
    assert!(out.contains(&format!("host: {}", vip.ip())), "{out}");
    assert!(
        !out.contains("x-private") && !out.contains("keep-alive"),
        "{out}"
    );

    // The config dump shows what is in use.
    let dump = client
        .http_get(SocketAddr::new(client.ipv4.into(), 4191), "/config_dump")
        .unwrap();
    assert!(
        dump.contains("\"generation\": 2") && dump.contains("app-b.app-b"),
        "{dump}"
    );

    // A broken file is refused; the running config stays.
    std::fs::write(&mesh.config, "services: [ {").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while metric(&mesh.metrics(), "ghostwire_proxy_config_errors_total") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the broken file never refused"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(mesh.store.load().generation, 2);
    assert_eq!(
        curl(&client, &["-H", "x-canary: true", &url("/hello")]),
        "v2\n"
    );
}

/// The preview switch as a route in the proxy: the switch's mesh-mode map (written with the
/// switch's own type) sends connections to the active Service to its preview while it is on,
/// both when the preview passes through unconfigured and when the proxy balances to its
/// endpoints itself (where a DNAT in the kernel could not act).
#[test]
fn preview_switch_as_a_route() {
    use switch::dnat_map::{MeshMap, MeshMapping};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut lab = Lab::new("mesh-prev").unwrap();
    let client = lab.add_pod("client").unwrap();
    let active = lab.add_pod("active").unwrap();
    let preview = lab.add_pod("preview").unwrap();
    let _a = http_backend(&rt, &active, "active", 8080);
    let _p = http_backend(&rt, &preview, "preview", 8080);
    let svc = lab
        .add_service("shop", &[ServicePort::tcp(80, 8080)], &[&active])
        .unwrap();
    let svc_p = lab
        .add_service("shop-preview", &[ServicePort::tcp(80, 8080)], &[&preview])
        .unwrap();
    let dir = std::env::temp_dir().join(format!("gw-prev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let map = dir.join("dnat.map");
    let write = |on: bool| {
        MeshMap {
            on,
            namespace: "shop".into(),
            mappings: vec![MeshMapping {
                active: "shop".into(),
                preview: "shop-preview".into(),
                protocol: "tcp".into(),
                active_addr: svc.addr_v4(80),
                preview_addr: svc_p.addr_v4(80),
            }],
        }
        .write(&map)
        .unwrap()
    };
    write(false);
    let mesh = Meshed::start(
        &client,
        &[(mesh_config::PREVIEW_MAP, map.to_str().unwrap())],
    );
    let url = format!("http://{}/hello", svc.addr_v4(80));
    // Waits (bounded) until a new connection's answer is `want`.
    let expect = |want: &str| {
        for _ in 0..600 {
            if curl(&client, &[&url]) == format!("{want}\n") {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("never answered by {want}");
    };
    expect("active");
    write(true);
    expect("preview");
    // The proxy balances to the preview's endpoints itself: still the preview.
    let ep = SocketAddr::new(preview.ipv4.into(), 8080);
    mesh.configure(&format!(
        "services:\n  - name: shop-preview.shop\n    addresses: [\"{}\"]\n    backends:\n      - {{name: v1, endpoints: [\"{ep}\"]}}\n",
        svc_p.addr_v4(80)
    ));
    assert_eq!(curl(&client, &[&url]), "preview\n");
    let m = mesh.metrics();
    assert!(
        metric(
            &m,
            "ghostwire_proxy_requests_total{direction=\"outbound\",service=\"shop-preview.shop\""
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "ghostwire_proxy_preview_switched_connections_total") >= 2.0,
        "{m}"
    );
    write(false);
    expect("active");
    let _ = std::fs::remove_dir_all(&dir);
}

/// CONNECT over HTTP/2 (RFC 9113 §8.5) through the inbound proxy: the tunnel is one stream
/// whose bodies carry the bytes both ways, to an app that answers each chunk in upper case.
#[test]
fn http2_connect_tunnels_through_the_proxy() {
    use bytes::Bytes;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut lab = Lab::new("mesh-h2con").unwrap();
    let client = lab.add_pod("client").unwrap();
    let server = lab.add_pod("server").unwrap();
    let app = server.listen_tcp((Ipv6Addr::UNSPECIFIED, 8443)).unwrap();
    app.set_nonblocking(true).unwrap();
    rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(app).unwrap();
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    tokio::spawn(async move {
                        let ok = req.method() == http::Method::CONNECT
                            && req.uri().authority().is_some_and(|a| a == "tunnel.test:7");
                        let status = if ok { 200 } else { 400 };
                        let head = http::Response::builder().status(status).body(()).unwrap();
                        let mut tx = respond.send_response(head, !ok).unwrap();
                        let mut rx = req.into_body();
                        while let Some(Ok(d)) = rx.data().await {
                            let _ = rx.flow_control().release_capacity(d.len());
                            let _ = tx.send_data(Bytes::from(d.to_ascii_uppercase()), false);
                        }
                        let _ = tx.send_data(Bytes::new(), true);
                    });
                }
            });
        }
    });
    let mesh = Meshed::start(&server, &[]);
    let to = SocketAddr::new(server.ipv4.into(), 8443);
    let tcp = client
        .netns()
        .run(|| std::net::TcpStream::connect(to))
        .unwrap()
        .unwrap();
    tcp.set_nonblocking(true).unwrap();
    let echoed = rt.block_on(async move {
        let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
        let (send, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let mut send = send.ready().await.unwrap();
        let req = http::Request::connect("tunnel.test:7").body(()).unwrap();
        let (resp, mut tx) = send.send_request(req, false).unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200);
        let mut rx = resp.into_body();
        let mut echoed = Vec::new();
        for word in ["ping", "tunnel"] {
            tx.send_data(Bytes::from_static(word.as_bytes()), false)
                .unwrap();
            let mut got = Vec::new();
            while got.len() < word.len() {
                let d = rx.data().await.expect("the tunnel is open").unwrap();
                let _ = rx.flow_control().release_capacity(d.len());
                got.extend_from_slice(&d);
            }
            echoed.push(String::from_utf8(got).unwrap());
        }
        tx.send_data(Bytes::new(), true).unwrap();
        // The app ends its side too (an empty DATA frame that ends the stream is still one).
        while let Some(d) = rx.data().await {
            assert_eq!(d.unwrap(), "", "nothing more from the app");
        }
        echoed
    });
    assert_eq!(echoed, ["PING", "TUNNEL"]);
    let m = mesh.metrics();
    assert!(
        metric(
            &m,
            "ghostwire_proxy_connections_total{direction=\"inbound\",protocol=\"http2\"}"
        ) >= 1.0,
        "{m}"
    );
}
