//! Mutating admission webhooks: a real HTTPS webhook (own CA, given as caBundle) patches Pods
//! on CREATE, denials and failures reach the client as the real API server returns them.

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use lab_api::{Options, Server};
use serde_json::{Value, json};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Answers AdmissionReviews: denies Pods labelled `deny`, adds `mutated: "yes"` to the others
/// and records who asked (the review's `userInfo`) in the annotations `requested-by` and
/// `requested-by-groups`.
fn review(req: &Value) -> Value {
    let r = &req["request"];
    let labels = &r["object"]["metadata"]["labels"];
    let response = if labels.get("deny").is_some() {
        json!({"uid": r["uid"], "allowed": false, "status": {"code": 403, "reason": "Forbidden", "message": "no thanks"}})
    } else {
        let mut op = if labels.is_object() {
            json!([{"op": "add", "path": "/metadata/labels/mutated", "value": "yes"}])
        } else {
            json!([{"op": "add", "path": "/metadata/labels", "value": {"mutated": "yes"}}])
        };
        let groups: Vec<&str> = r["userInfo"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        op.as_array_mut().unwrap().push(
            json!({"op": "add", "path": "/metadata/annotations", "value": {
            "requested-by": r["userInfo"]["username"], "requested-by-groups": groups.join(",")}}),
        );
        let patch = base64::engine::general_purpose::STANDARD.encode(op.to_string());
        json!({"uid": r["uid"], "allowed": true, "patchType": "JSONPatch", "patch": patch})
    };
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

/// Starts the webhook; returns its URL, its CA (PEM) and a call counter.
async fn webhook() -> (String, String, Arc<AtomicUsize>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "webhook-ca");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/mutate", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let counter = counter.clone();
                    async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let out = review(&serde_json::from_slice(&body).unwrap());
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(
                            out.to_string(),
                        ))))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (url, ca_cert.pem(), calls)
}

fn config(
    name: &str,
    url: &str,
    ca_pem: &str,
    failure: &str,
    object_selector: Value,
) -> MutatingWebhookConfiguration {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "webhooks": [{
            "name": format!("{name}.lab.test"),
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "failurePolicy": failure,
            "timeoutSeconds": 5,
            "objectSelector": object_selector,
            "clientConfig": {"url": url, "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem)},
            "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
        }]
    }))
    .unwrap()
}

fn pod(name: &str, labels: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}
    }))
    .unwrap()
}

#[tokio::test]
async fn webhook_patches_and_denies_pods() {
    let (url, ca, calls) = webhook().await;
    let server = Server::start(Options::default()).await.unwrap();
    let client = server.client().await.unwrap();
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let selector = json!({"matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}]});
    mwcs.create(
        &PostParams::default(),
        &config("inject", &url, &ca, "Fail", selector),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client, "default");

    let p = pods
        .create(&PostParams::default(), &pod("a", json!({"app": "a"})))
        .await
        .unwrap();
    assert_eq!(p.metadata.labels.unwrap()["mutated"], "yes");
    let stored = pods.get("a").await.unwrap();
    assert_eq!(stored.metadata.labels.as_ref().unwrap()["mutated"], "yes");
    // The webhook sees who asked: the admin, and an impersonated user as that user.
    let by = |p: &Pod| {
        let a = p.metadata.annotations.clone().unwrap_or_default();
        (a["requested-by"].clone(), a["requested-by-groups"].clone())
    };
    assert_eq!(
        by(&stored),
        (
            "lab-admin".into(),
            "system:masters,system:authenticated".into()
        )
    );
    let mut as_alice = server.kube_config().await.unwrap();
    as_alice.auth_info.impersonate = Some("alice".into());
    as_alice.auth_info.impersonate_groups = Some(vec!["system:masters".into(), "team-a".into()]);
    let alice: Api<Pod> = Api::namespaced(kube::Client::try_from(as_alice).unwrap(), "default");
    let p = alice
        .create(&PostParams::default(), &pod("by-alice", json!({})))
        .await
        .unwrap();
    assert_eq!(
        by(&p),
        (
            "alice".into(),
            "system:masters,team-a,system:authenticated".into()
        )
    );

    match pods
        .create(&PostParams::default(), &pod("b", json!({"deny": "1"})))
        .await
        .unwrap_err()
    {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 403);
            assert_eq!(
                s.message,
                "admission webhook \"inject.lab.test\" denied the request: no thanks"
            );
        }
        other => panic!("{other:?}"),
    }
    let before = calls.load(Ordering::SeqCst);
    let skipped = pods
        .create(&PostParams::default(), &pod("c", json!({"skip": "1"})))
        .await
        .unwrap();
    assert!(!skipped.metadata.labels.unwrap().contains_key("mutated"));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "objectSelector excludes the pod"
    );
}

#[tokio::test]
async fn failure_policy_decides_when_the_webhook_is_down() {
    let (_, ca, _) = webhook().await;
    // A port with nothing listening: bind, note it, close it.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("https://{}/mutate", l.local_addr().unwrap())
    };
    let server = Server::start(Options::default()).await.unwrap();
    let client = server.client().await.unwrap();
    let mwcs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client, "default");
    mwcs.create(
        &PostParams::default(),
        &config("lenient", &dead, &ca, "Ignore", Value::Null),
    )
    .await
    .unwrap();
    pods.create(&PostParams::default(), &pod("ok", json!({})))
        .await
        .unwrap();
    mwcs.create(
        &PostParams::default(),
        &config("strict", &dead, &ca, "Fail", Value::Null),
    )
    .await
    .unwrap();
    match pods
        .create(&PostParams::default(), &pod("refused", json!({})))
        .await
        .unwrap_err()
    {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 500);
            assert!(
                s.message
                    .contains("failed calling webhook \"strict.lab.test\""),
                "{}",
                s.message
            );
        }
        other => panic!("{other:?}"),
    }
}
