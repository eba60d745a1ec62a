//! The HTTP edge: malformed input, size bounds, routes, and the metrics exposition.

mod common;

use common::{Harness, pod, review};
use serde_json::json;
use std::collections::BTreeMap;

#[tokio::test]
async fn malformed_reviews_are_400_with_a_reason() {
    let h = Harness::start("malformed").await;
    let mut no_request = review("CREATE", pod("a", json!({})));
    no_request.as_object_mut().unwrap().remove("request");
    let mut v1beta1 = review("CREATE", pod("a", json!({})));
    v1beta1["apiVersion"] = "admission.k8s.io/v1beta1".into();
    let mut not_a_pod = review("CREATE", pod("a", json!({})));
    not_a_pod["request"]["object"]["spec"]["containers"] = json!("nope");
    let mut no_object = review("CREATE", pod("a", json!({})));
    no_object["request"]["object"] = json!(null);
    let mut bad_op = review("CREATE", pod("a", json!({})));
    bad_op["request"]["operation"] = "EXPLODE".into();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("empty body", vec![], "malformed AdmissionReview"),
        ("not JSON", b"{{{".to_vec(), "malformed AdmissionReview"),
        (
            "JSON but not a review",
            b"[1,2,3]".to_vec(),
            "malformed AdmissionReview",
        ),
        (
            "binary",
            vec![0xff, 0x00, 0xfe],
            "malformed AdmissionReview",
        ),
        (
            "no request",
            no_request.to_string().into(),
            "it has no request",
        ),
        (
            "v1beta1",
            v1beta1.to_string().into(),
            "admission.k8s.io/v1beta1",
        ),
        (
            "object not a Pod",
            not_a_pod.to_string().into(),
            "request.object is not a Pod",
        ),
        (
            "CREATE without object",
            no_object.to_string().into(),
            "without an object",
        ),
        ("unknown operation", bad_op.to_string().into(), "EXPLODE"),
    ];
    for (name, body, reason) in cases {
        let (status, text) = h.post(body).await;
        let text = String::from_utf8_lossy(&text);
        assert_eq!(status, 400, "{name}: {text}");
        assert!(text.contains(reason), "{name}: {text:?} lacks {reason:?}");
    }
    // The server is still there and answers well-formed reviews.
    let resp = h.admit(pod("ok", json!({}))).await;
    assert_eq!(resp["allowed"], true);
}

#[tokio::test]
async fn bodies_over_3_mib_are_413() {
    let h = Harness::start("large").await;
    // Declared by Content-Length.
    let (status, text) = h.post(vec![b' '; 3 * 1024 * 1024 + 1]).await;
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&text));
    // A large but allowed review still works: a Pod with a 2 MiB annotation.
    let big = pod(
        "big",
        json!({"note": "x".repeat(2 * 1024 * 1024), "ghostwire.dev/enabled": "true"}),
    );
    let resp = h.admit(big).await;
    assert_eq!(resp["allowed"], true);
    assert!(resp["patch"].is_string());
}

#[tokio::test]
async fn routes() {
    let h = Harness::start("routes").await;
    let mut https = h.https().await;
    let (status, _) = https.post("/other", "{}").await;
    assert_eq!(status, 404);
    let (status, _) = https.post("/healthz", "").await;
    assert_eq!(status, 404, "healthz is GET only");
    assert_eq!(h.admin_get("/healthz").await, (200, "ok\n".into()));
    assert_eq!(
        h.admin_get("/mutate").await.0,
        404,
        "no webhook on plain HTTP"
    );
}

/// Parses the Prometheus text format into `name{labels}` → value, and the TYPE lines.
fn parse(text: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    let mut samples = BTreeMap::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), kind.to_string());
        } else if !line.starts_with('#') && !line.is_empty() {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}"));
            samples.insert(series.to_string(), value);
        }
    }
    (samples, types)
}

#[tokio::test]
async fn metrics_count_admissions_by_result() {
    let h = Harness::start("metrics").await;
    h.admit(pod("a", json!({"ghostwire.dev/enabled": "true"})))
        .await;
    h.admit(pod("b", json!({"ghostwire.dev/enabled": "true"})))
        .await;
    h.admit(pod("c", json!({}))).await;
    h.admit(pod("d", json!({"ghostwire.dev/enabled": "perhaps"})))
        .await;
    h.post("garbage").await;
    let (status, text) = h.admin_get("/metrics").await;
    assert_eq!(status, 200);
    let (samples, types) = parse(&text);
    assert_eq!(types["ghostwire_injector_admissions"], "counter", "{text}");
    assert_eq!(
        types["ghostwire_injector_admission_duration_seconds"],
        "histogram"
    );
    let count = |result: &str| {
        samples[&format!("ghostwire_injector_admissions_total{{result=\"{result}\"}}")]
    };
    assert_eq!(count("injected"), 2.0, "{text}");
    assert_eq!(count("unchanged"), 1.0);
    assert_eq!(count("denied"), 1.0);
    assert_eq!(count("invalid"), 1.0);
    assert_eq!(
        samples["ghostwire_injector_admission_duration_seconds_count"],
        5.0
    );
    assert_eq!(
        samples["ghostwire_injector_admission_duration_seconds_bucket{le=\"+Inf\"}"],
        5.0
    );
    assert!(samples["ghostwire_injector_admission_duration_seconds_sum"] > 0.0);
}

/// When the API cannot be read the injector does not guess: HTTP 500, so the webhook's
/// failurePolicy decides.
#[tokio::test]
async fn api_errors_are_500() {
    let dir = common::TempDir::new("apidown");
    let files = injector::tls::CertFiles {
        cert: dir.0.join("tls.crt"),
        key: dir.0.join("tls.key"),
    };
    let ca = common::write_cert(&files);
    let nowhere = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
    let client = kube::Client::try_from(nowhere).unwrap();
    let running = injector::start(common::config(&files), client)
        .await
        .unwrap();
    let mut https = common::Https::connect(running.webhook_addr, &ca)
        .await
        .unwrap();
    let (status, body) = https
        .post(
            "/mutate",
            review("CREATE", pod("a", json!({"ghostwire.dev/enabled": "true"}))).to_string(),
        )
        .await;
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("defaults ConfigMap"), "{body}");
    running.stop().await;
}

/// Waits (polling, not timing) for `f` to hold, for up to 30 s.
async fn until<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    for _ in 0..600 {
        if f().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn stop_drains_the_request_in_flight_and_refuses_new_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start("drain").await;
    let addr = h.injector.webhook_addr;
    // A review whose body is still on its way when the injector is told to stop.
    let body = review("CREATE", pod("drain", json!({}))).to_string();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut tls = common::tls_stream(addr, &h.ca_pem).await.unwrap();
    let head = format!(
        "POST /mutate HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{first}",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    // An idle keep-alive connection is closed by the drain.
    let mut idle = common::tls_stream(addr, &h.ca_pem).await.unwrap();
    let stopping = tokio::spawn(h.injector.stop());
    until("new connections refused", async || {
        tokio::net::TcpStream::connect(addr).await.is_err()
    })
    .await;
    let mut nothing = Vec::new();
    let _ = idle.read_to_end(&mut nothing).await;
    assert!(nothing.is_empty());
    // The request in flight is still answered in full.
    tls.write_all(rest.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = tls.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains("\"allowed\":true"), "{answer:?}");
    stopping.await.unwrap();
}

#[tokio::test]
async fn slow_headers_are_cut_and_connections_are_bounded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    let h = Harness::start_with("bounds", |c| {
        c.limits.header_read_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    // Half a request, never finished: the server closes the connection.
    let mut slow = TcpStream::connect(h.injector.admin_addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        slow.read_to_end(&mut got),
    )
    .await;
    assert!(
        closed.is_ok(),
        "a connection that never finished its headers is still open"
    );
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"));

    // Two connections at most: a third is not served while two are held open.
    let h = Harness::start_with("bound", |c| c.limits.max_connections = 2).await;
    let admin = h.injector.admin_addr;
    let held: Vec<TcpStream> = vec![
        TcpStream::connect(admin).await.unwrap(),
        TcpStream::connect(admin).await.unwrap(),
    ];
    let mut third = TcpStream::connect(admin).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let early = tokio::time::timeout(std::time::Duration::from_secs(1), third.read(&mut buf)).await;
    assert!(early.is_err(), "the third connection was served: {early:?}");
    drop(held);
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        third.read_to_end(&mut answer),
    )
    .await
    .expect("served once a slot was free")
    .unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}

/// HTTP/2 has no header read timeout in hyper: a HEADERS frame whose CONTINUATION never comes
/// would hold the connection (and its slot) forever. The injector closes a connection that has
/// had no complete request within the header time, whichever the protocol.
#[tokio::test]
async fn unfinished_http2_headers_are_cut() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::start_with("h2-bounds", |c| {
        c.limits.header_read_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    let mut slow = tokio::net::TcpStream::connect(h.injector.admin_addr)
        .await
        .unwrap();
    let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // An empty SETTINGS frame, then HEADERS on stream 1 without END_HEADERS (0x4): the
    // header block (GET http /) is left open for a CONTINUATION that never comes.
    frames.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    frames.extend_from_slice(&[0, 0, 3, 0x1, 0, 0, 0, 0, 1, 0x82, 0x86, 0x84]);
    slow.write_all(&frames).await.unwrap();
    let mut got = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        slow.read_to_end(&mut got),
    )
    .await;
    assert!(
        closed.is_ok(),
        "an HTTP/2 connection whose headers never finished is still open"
    );
    // The server spoke HTTP/2 (its SETTINGS frame came first), so the cut was HTTP/2's.
    assert!(got.len() >= 9 && got[3] == 0x4, "{got:?}");
}

#[tokio::test]
async fn healthz_follows_the_certificate_and_the_api() {
    let h = Harness::start_with("health", |c| {
        c.limits.api_grace = std::time::Duration::ZERO;
        c.limits.api_check_every = std::time::Duration::from_millis(100);
    })
    .await;
    assert_eq!(h.admin_get("/healthz").await, (200, "ok\n".to_string()));
    // An expired certificate (as when cert-manager stopped renewing): 503 with the reason.
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2000, 1, 1);
    params.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(&h.files.key, key.serialize_pem()).unwrap();
    std::fs::write(&h.files.cert, cert.pem()).unwrap();
    until("healthz reports the expired certificate", async || {
        let (code, body) = h.admin_get("/healthz").await;
        code == 503 && body.contains("expired")
    })
    .await;
    common::write_cert(&h.files);
    until("healthz after the renewal", async || {
        h.admin_get("/healthz").await.0 == 200
    })
    .await;
    // The API goes away: 503 naming it (also on the webhook's own listener).
    let Harness { lab, injector, .. } = h;
    lab.shutdown().await;
    until("healthz reports the API", async || {
        let (code, body) = common::get(injector.admin_addr, "/healthz").await;
        code == 503 && body.contains("Kubernetes API")
    })
    .await;
    injector.stop().await;
}
