//! TLS: certificate files reloaded under a live server (seen by real handshakes), and
//! `--self-signed` writing its CA into the MutatingWebhookConfiguration, end to end with the
//! lab API calling the webhook on Pod CREATE.

mod common;

use common::{Harness, Https, write_cert};
use injector::{Config, TlsMode};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::time::Duration;

/// Retries `f` every 20 ms for up to 10 s (waiting for a background reload, not timing it).
async fn eventually<T, F: AsyncFnMut() -> Option<T>>(what: &str, mut f: F) -> T {
    for _ in 0..500 {
        if let Some(v) = f().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn reloads_replaced_certificate_files() {
    let h = Harness::start("reload").await;
    let addr = h.injector.webhook_addr;
    let first = h.https().await.peer_cert;

    // Garbage in the files: the server keeps its certificate.
    std::fs::write(&h.files.cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut still = Https::connect(addr, &h.ca_pem).await.unwrap();
    assert_eq!(still.peer_cert, first);
    assert_eq!(still.post("/mutate", "{}").await.0, 400);

    // A new pair signed by a new CA: new handshakes present it; the old CA no longer verifies.
    let new_ca = write_cert(&h.files);
    let second = eventually("the new certificate", async || {
        Https::connect(addr, &new_ca).await.ok()
    })
    .await;
    assert_ne!(second.peer_cert, first);
    let err = Https::connect(addr, &h.ca_pem)
        .await
        .err()
        .expect("old CA must fail");
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[tokio::test]
async fn self_signed_sets_ca_bundle_and_the_lab_api_calls_the_webhook() {
    let lab = lab_api::Server::start(lab_api::Options::default())
        .await
        .unwrap();
    let client = lab.client().await.unwrap();
    let dir = common::TempDir::new("selfsigned");
    let files = injector::tls::CertFiles {
        cert: dir.0.join("x"),
        key: dir.0.join("y"),
    };
    let config = Config {
        tls: TlsMode::SelfSigned {
            names: vec!["127.0.0.1".into()],
            webhook_config: "ghostwire-injector".into(),
            recheck_every: Duration::from_millis(100),
        },
        ..common::config(&files)
    };
    let running = injector::start(config, client.clone()).await.unwrap();
    let ca = running.ca_pem.clone().unwrap();
    // The server presents a certificate the generated CA verifies.
    Https::connect(running.webhook_addr, &ca).await.unwrap();

    // Until the CA is in the caBundle the API server could not verify the injector: not healthy.
    let (code, body) = common::get(running.admin_addr, "/healthz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("caBundle"), "{body}");

    // The configuration appears after the injector started (as with `kubectl apply`), with
    // no caBundle; the injector fills it in.
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let cfg = json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "ghostwire-injector"},
        "webhooks": [{
            "name": "pods.injector.ghostwire.dev",
            "clientConfig": {"url": format!("https://127.0.0.1:{}/mutate", running.webhook_addr.port())},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"], "scope": "Namespaced"}],
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
            "reinvocationPolicy": "IfNeeded", "timeoutSeconds": 5,
            "objectSelector": {"matchExpressions": [{"key": "ghostwire.dev/skip", "operator": "DoesNotExist"}]},
        }]
    });
    webhooks
        .create(
            &PostParams::default(),
            &serde_json::from_value(cfg).unwrap(),
        )
        .await
        .unwrap();
    eventually("the caBundle", async || {
        let got = webhooks.get("ghostwire-injector").await.ok()?;
        let bundle = got.webhooks?.first()?.client_config.ca_bundle.clone()?;
        (bundle.0 == ca.as_bytes()).then_some(())
    })
    .await;
    eventually("healthy once the caBundle is written", async || {
        (common::get(running.admin_addr, "/healthz").await.0 == 200).then_some(())
    })
    .await;

    // A Pod created through the API comes back injected.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod = |name: &str, ann: serde_json::Value| -> Pod {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "annotations": ann},
            "spec": {"containers": [{"name": "app", "image": "x"}]}
        }))
        .unwrap()
    };
    let made = pods
        .create(
            &PostParams::default(),
            &pod("e2e", json!({"ghostwire.dev/enabled": "true"})),
        )
        .await
        .unwrap();
    let spec = made.spec.unwrap();
    let names: Vec<_> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["app", "ghostwire-watcher"]);
    assert_eq!(spec.init_containers.unwrap()[0].name, "ghostwire-init");
    assert_eq!(
        made.metadata.annotations.unwrap()["ghostwire.dev/injected"],
        "preview-switch"
    );

    // A bad annotation reaches the client as the API server words a denial.
    let err = pods
        .create(
            &PostParams::default(),
            &pod(
                "bad",
                json!({"ghostwire.dev/enabled": "true", "ghostwire.dev/jumpHook": "SIDEWAYS"}),
            ),
        )
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("denied the request")
            && msg.contains("ghostwire.dev/jumpHook")
            && msg.contains("SIDEWAYS"),
        "{msg}"
    );
    running.stop().await;
}
