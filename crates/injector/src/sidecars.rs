//! Does this cluster really run native sidecars? On 1.29–1.32 the `SidecarContainers`
//! feature gate can be off, and then the API server silently drops an init container's
//! `restartPolicy`: the version says nothing. So the injector asks the server itself, with a
//! server-side dry-run (`dryRun=All`: admitted, validated, defaulted, never stored) of a
//! Pod whose init container has `restartPolicy: Always`, and looks at what comes back.

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use std::time::Duration;

/// The Pod the dry-run creates (never stored). `generateName`, so it never clashes.
pub fn probe_pod(image: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "ghostwire-sidecar-probe-",
                     "labels": {"ghostwire.dev/inject": "false"}},
        "spec": {
            "initContainers": [{"name": "probe", "image": image, "restartPolicy": "Always"}],
            "containers": [{"name": "main", "image": image}],
        }
    }))
    .expect("a valid Pod literal")
}

/// Whether the server kept the native sidecar in the dry-run's answer: pure.
pub fn kept_native_sidecar(answer: &Pod) -> bool {
    answer
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "probe"))
        .and_then(|c| c.restart_policy.as_deref())
        == Some("Always")
}

/// One dry-run in `namespace` (the injector's own: its Role may create Pods only there).
pub async fn detect(
    client: kube::Client,
    namespace: &str,
    image: &str,
    timeout: Duration,
) -> Result<bool, String> {
    let api: Api<Pod> = Api::namespaced(client, namespace);
    let pp = PostParams {
        dry_run: true,
        field_manager: Some("ghostwire-injector".into()),
    };
    match tokio::time::timeout(timeout, api.create(&pp, &probe_pod(image))).await {
        Ok(Ok(answer)) => Ok(kept_native_sidecar(&answer)),
        // A server that refuses the field outright (validation) has no native sidecars.
        Ok(Err(kube::Error::Api(s))) if s.code == 422 => Ok(false),
        Ok(Err(e)) => Err(format!("dry-run create of a Pod in {namespace}: {e}")),
        Err(_) => Err(format!(
            "dry-run create of a Pod in {namespace}: no answer within {timeout:?}"
        )),
    }
}

/// Detects until an answer comes (capped, jittered backoff), then records it.
pub async fn keep_detecting(
    client: kube::Client,
    namespace: String,
    image: String,
    sidecars: crate::preview_switch::Sidecars,
) {
    let mut attempt = 0;
    while sidecars.needs_detection() {
        match detect(client.clone(), &namespace, &image, Duration::from_secs(5)).await {
            Ok(native) => {
                tracing::info!(
                    native,
                    "native sidecars (dry-run of an init container with restartPolicy: Always): {}",
                    if native {
                        "supported; the watcher is injected as one"
                    } else {
                        "not kept by the API server; the watcher is injected as a regular container"
                    }
                );
                sidecars.detected(native);
            }
            Err(e) => {
                let wait = kube_util::backoff(attempt, Duration::from_secs(30));
                attempt += 1;
                tracing::warn!(error = %e, retry_in = ?wait, "cannot detect native sidecar support yet; injecting the watcher as a regular container meanwhile");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_restart_policy_means_no_native_sidecars() {
        let mut answer = probe_pod("img");
        assert!(kept_native_sidecar(&answer));
        // What a 1.29–1.32 server with the feature gate off answers: the field is gone.
        answer
            .spec
            .as_mut()
            .unwrap()
            .init_containers
            .as_mut()
            .unwrap()[0]
            .restart_policy = None;
        assert!(!kept_native_sidecar(&answer));
        assert!(!kept_native_sidecar(&Pod::default()));
    }
}
