//! `ghostwire identity` against the lab API: a Pod gets a Secret with its names once it has an
//! IP, each certificate has its own serial, renewal replaces it, and the Secret goes with the
//! Pod.

use identity::controller::{InProcess, serial_of};
use identity::desired::{CA_KEY, CERT_KEY, KEY_KEY, secret_name};
use identity::settings;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use x509_parser::extensions::GeneralName;

/// Waits (bounded, 60 s) until `f` gives something.
async fn until<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    for _ in 0..600 {
        if let Some(x) = f().await {
            return x;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn pod(pods: &Api<Pod>, name: &str, annotations: serde_json::Value) -> String {
    let p = serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"serviceAccountName": "api", "containers": [{"name": "c", "image": "app"}]},
    }))
    .unwrap();
    pods.create(&PostParams::default(), &p)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap()
}

async fn give_ip(pods: &Api<Pod>, name: &str, ip: &str) {
    pods.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})),
    )
    .await
    .unwrap();
}

fn text(s: &Secret, key: &str) -> String {
    String::from_utf8(s.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

/// The SANs of the Secret's certificate, as `URI:…`, `DNS:…`, `IP:…`.
fn sans(s: &Secret) -> BTreeSet<String> {
    let der = pem::parse_many(text(s, CERT_KEY)).unwrap().remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(der.contents()).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|g| match g {
            GeneralName::URI(u) => format!("URI:{u}"),
            GeneralName::DNSName(d) => format!("DNS:{d}"),
            GeneralName::IPAddress(b) => {
                let a: [u8; 4] = (*b).try_into().unwrap();
                format!("IP:{}", std::net::Ipv4Addr::from(a))
            }
            other => format!("{other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_get_their_identity_renewed_and_lose_it_with_the_pod() {
    let lab = lab_api::Server::start(lab_api::Options::default())
        .await
        .unwrap();
    let client = lab.client().await.unwrap();
    // Short-lived: renewed every 4 s.
    let s = settings::with(&[
        (settings::CERT_LIFETIME, "6s"),
        (settings::TRUST_DOMAIN, "lab.local"),
    ])
    .unwrap();
    let running = InProcess::start(&client, s).await.unwrap();
    let anchors = running.anchors();
    let metrics = running.metrics.clone();

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let uid_a = pod(&pods, "a", json!({"ghostwire.dev/encrypt": "true"})).await;
    pod(&pods, "b", json!({"kube-gateway.io/encrypt": "true"})).await;
    pod(&pods, "plain", json!({})).await;
    give_ip(&pods, "plain", "10.244.0.9").await;
    give_ip(&pods, "b", "10.244.0.8").await;
    let sb = until("b's Secret", || async {
        secrets.get_opt(&secret_name("b")).await.unwrap()
    })
    .await;
    // Every pass sees every Pod: the one that made b's Secret saw `a` without an IP and
    // `plain` not opted in.
    assert!(secrets.get_opt(&secret_name("a")).await.unwrap().is_none());
    assert!(
        secrets
            .get_opt(&secret_name("plain"))
            .await
            .unwrap()
            .is_none()
    );

    give_ip(&pods, "a", "10.244.0.7").await;
    let sa = until("a's Secret", || async {
        secrets.get_opt(&secret_name("a")).await.unwrap()
    })
    .await;
    assert_eq!(
        sans(&sa),
        BTreeSet::from([
            "URI:spiffe://lab.local/ns/default/sa/api".to_string(),
            "DNS:10-244-0-7.default.pod.cluster.local".to_string(),
            "IP:10.244.0.7".to_string(),
        ])
    );
    assert_eq!(sa.type_.as_deref(), Some("kubernetes.io/tls"));
    let owner = &sa.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("Pod", uid_a.as_str())
    );
    assert_eq!(text(&sa, CA_KEY), anchors);
    // The key is the certificate's, and the certificate chains to the mesh CA.
    assert!(
        key_matches(&text(&sa, KEY_KEY), &text(&sa, CERT_KEY)),
        "tls.key is not the key of tls.crt"
    );
    let serial_a = serial_of(&text(&sa, CERT_KEY)).unwrap();
    let serial_b = serial_of(&text(&sb, CERT_KEY)).unwrap();
    assert_ne!(serial_a, serial_b, "two Pods share a serial");
    assert!(serial_a.len() >= 30, "{serial_a}");

    // Renewal replaces the certificate (new serial, later expiry) in the same Secret.
    let renewed = until("a's renewal", || async {
        let s = secrets.get_opt(&secret_name("a")).await.unwrap()?;
        (serial_of(&text(&s, CERT_KEY))? != serial_a).then_some(s)
    })
    .await;
    assert_eq!(sans(&renewed), sans(&sa));
    assert!(metrics.issued("renewal_due") >= 1);

    // A new IP (the same Pod name re-created elsewhere) gets a new certificate; the Pod going
    // takes its Secret with it.
    pods.delete("a", &DeleteParams::default()).await.unwrap();
    until("a's Secret gone", || async {
        secrets
            .get_opt(&secret_name("a"))
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let uid_a2 = pod(&pods, "a", json!({"ghostwire.dev/encrypt": "true"})).await;
    give_ip(&pods, "a", "10.244.0.17").await;
    let sa2 = until("the new a's Secret", || async {
        let s = secrets.get_opt(&secret_name("a")).await.unwrap()?;
        (s.metadata.owner_references.as_ref()?[0].uid == uid_a2).then_some(s)
    })
    .await;
    assert!(sans(&sa2).contains("IP:10.244.0.17"), "{:?}", sans(&sa2));
    // Opting out removes it too.
    pods.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"kube-gateway.io/encrypt": "false"}}})),
    )
    .await
    .unwrap();
    until("b's Secret gone", || async {
        secrets
            .get_opt(&secret_name("b"))
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

/// Whether the key in `key_pem` is the key of the first certificate in `cert_pem`.
fn key_matches(key_pem: &str, cert_pem: &str) -> bool {
    let key = rcgen::KeyPair::from_pem(key_pem).unwrap();
    let der = pem::parse_many(cert_pem).unwrap().remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(der.contents()).unwrap();
    cert.public_key().raw == rcgen::PublicKeyData::subject_public_key_info(&key).as_slice()
}
