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
