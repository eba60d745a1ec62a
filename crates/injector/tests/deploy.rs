//! deploy/: every kustomization renders with the real `kubectl kustomize`, and what it renders
//! is valid Kubernetes: against the published schemas with `kubernetes-validate --strict` when
//! it is installed (`pip install kubernetes-validate`; its schemas ship with it, so it runs
//! offline), and always structurally: each object decodes into its k8s-openapi type and
//! encodes back unchanged, so no field is misspelled or of the wrong type.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Every directory under deploy/ with a kustomization.yaml, except components (which only
/// render as part of another kustomization).
fn kustomizations() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![deploy_dir()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == "kustomization.yaml")
                && !std::fs::read_to_string(&p)
                    .unwrap()
                    .contains("kind: Component")
            {
                out.push(dir.clone());
            }
        }
    }
    out.sort();
    out
}

fn render(dir: &Path) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .expect("kubectl (with its built-in kustomize) must be on PATH");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Decodes `obj` as `T` and encodes it back; any difference is a field the type does not know.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(
    obj: &Value,
) -> Result<(), String> {
    let typed: T = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(typed).unwrap();
    if &back != obj {
        return Err(format!(
            "fields lost in a round trip:\n  in:  {obj}\n  out: {back}"
        ));
    }
    Ok(())
}

fn structural(obj: &Value) -> Result<bool, String> {
    use k8s_openapi::api::{
        admissionregistration::v1 as adm, apps::v1 as apps, core::v1 as core, policy::v1 as policy,
        rbac::v1 as rbac,
    };
    let kind = obj["kind"].as_str().unwrap_or_default();
    match (obj["apiVersion"].as_str().unwrap_or_default(), kind) {
        ("v1", "Namespace") => round_trip::<core::Namespace>(obj),
        ("v1", "ServiceAccount") => round_trip::<core::ServiceAccount>(obj),
        ("v1", "ConfigMap") => round_trip::<core::ConfigMap>(obj),
        ("v1", "Service") => round_trip::<core::Service>(obj),
        ("apps/v1", "Deployment") => round_trip::<apps::Deployment>(obj),
        ("policy/v1", "PodDisruptionBudget") => round_trip::<policy::PodDisruptionBudget>(obj),
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<rbac::Role>(obj),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<rbac::ClusterRole>(obj),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<rbac::RoleBinding>(obj),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<rbac::ClusterRoleBinding>(obj)
        }
        ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
            round_trip::<adm::MutatingWebhookConfiguration>(obj)
        }
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => round_trip::<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        >(obj),
        // cert-manager's kinds: no schema here; kubectl kustomize already parsed them.
        ("cert-manager.io/v1", "Certificate" | "Issuer") => return Ok(false),
        (v, k) => return Err(format!("no structural check for {v} {k}; add one")),
    }
    .map(|()| true)
}

fn kubernetes_validate(file: &Path) -> Option<Result<(), String>> {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", "1.33.0"])
        .arg(file)
        .output()
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some(if out.status.success() && !text.contains("ERROR") {
        Ok(())
    } else {
        Err(text)
    })
}

#[test]
fn every_kustomization_renders_valid_objects() {
    let dirs = kustomizations();
    let names: Vec<String> = dirs
        .iter()
        .map(|d| d.strip_prefix(deploy_dir()).unwrap().display().to_string())
        .collect();
    for want in [
        "base",
        "overlays/cert-manager",
        "overlays/self-signed",
        "examples/preview-app",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    let tmp = std::env::temp_dir().join(format!("gw-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let mut schema_checked = true;
    for (dir, name) in dirs.iter().zip(&names) {
        let text = render(dir);
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        assert!(!docs.is_empty(), "{name} renders nothing");
        for obj in &docs {
            let id = format!("{name}: {} {}", obj["kind"], obj["metadata"]["name"]);
            structural(obj).unwrap_or_else(|e| panic!("{id}: {e}"));
        }
        let file = tmp.join(format!("{}.yaml", name.replace('/', "-")));
        std::fs::write(&file, &text).unwrap();
        match kubernetes_validate(&file) {
            Some(result) => result.unwrap_or_else(|e| panic!("{name}: kubernetes-validate:\n{e}")),
            None => schema_checked = false,
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    if !schema_checked {
        // scripts/install-deps.sh installs it, so CI always checks against the schemas.
        assert!(
            std::env::var_os("CI").is_none(),
            "kubernetes-validate is not installed (scripts/install-deps.sh installs it)"
        );
        eprintln!("note: kubernetes-validate not installed; only the structural check ran");
    }
}

/// What the overlays promise: the image reaches the injected containers, the self-signed
/// overlay runs one replica with the right to patch its webhook, cert-manager mounts its Secret.
#[test]
fn overlays_say_what_they_promise() {
    let objects = |dir: &str| -> Vec<Value> {
        serde_saphyr::from_multiple(&render(&deploy_dir().join(dir))).unwrap()
    };
    let find = |objs: &[Value], kind: &str, name: &str| -> Value {
        objs.iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .clone()
    };
    let base = objects("base");
    let deploy = find(&base, "Deployment", "ghostwire-injector");
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    let env = |c: &Value, n: &str| {
        c["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == n)
            .cloned()
    };
    assert_eq!(env(c, "GW_INJECTOR_IMAGE").unwrap()["value"], c["image"]);
    let hook = find(&base, "MutatingWebhookConfiguration", "ghostwire-injector");
    let wh = &hook["webhooks"][0];
    assert_eq!(wh["failurePolicy"], "Fail");
    assert_eq!(wh["reinvocationPolicy"], "IfNeeded");
    assert_eq!(
        wh["clientConfig"]["service"]["namespace"],
        "ghostwire-system"
    );
    assert!(wh["namespaceSelector"]["matchLabels"].is_object());
    // The base injector can write nothing, but for the dry-run that detects native sidecars:
    // `create` on Pods, in its own namespace only (a Role, not a ClusterRole).
    for o in base
        .iter()
        .filter(|o| o["kind"].as_str().is_some_and(|k| k.ends_with("Role")))
    {
        let probe = o["metadata"]["name"] == "ghostwire-injector-sidecar-probe";
        for rule in o["rules"].as_array().unwrap() {
            if probe {
                assert_eq!(o["kind"], "Role", "{o}");
                assert_eq!(rule["resources"], serde_json::json!(["pods"]), "{o}");
                assert_eq!(rule["verbs"], serde_json::json!(["create"]), "{o}");
            } else {
                assert_eq!(rule["verbs"], serde_json::json!(["get"]), "{o}");
            }
        }
    }

    let ss = objects("overlays/self-signed");
    let deploy = find(&ss, "Deployment", "ghostwire-injector");
    assert_eq!(deploy["spec"]["replicas"], 1);
    let c = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(env(c, "GW_INJECTOR_SELF_SIGNED").unwrap()["value"], "true");
    let role = find(&ss, "ClusterRole", "ghostwire-injector-webhook");
    assert_eq!(
        role["rules"][0]["resourceNames"],
        serde_json::json!(["ghostwire-injector"])
    );

    let cm = objects("overlays/cert-manager");
    let hook = find(&cm, "MutatingWebhookConfiguration", "ghostwire-injector");
    assert_eq!(
        hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "ghostwire-system/ghostwire-injector-tls"
    );
    let deploy = find(&cm, "Deployment", "ghostwire-injector");
    assert_eq!(
        deploy["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        "ghostwire-injector-tls"
    );
}

/// deploy/pgo/ghostwire.profdata, which the image's build optimises with
/// (scripts/image-build.sh), is a profile this toolchain reads. rustc only warns about a
/// truncated, foreign or newer-format profile and builds without it, so a broken file would
/// ship a slower image without failing its build.
#[test]
fn the_image_build_profile_is_one_rustc_reads() {
    let profile = deploy_dir().join("pgo/ghostwire.profdata");
    assert!(profile.is_file(), "{} is missing", profile.display());
    let dir = std::env::temp_dir().join(format!("gw-pgo-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("main.rs"), "fn main() {}\n").unwrap();
    let out = Command::new(std::env::var_os("RUSTC").unwrap_or("rustc".into()))
        .arg("-O")
        .arg(format!("-Cprofile-use={}", profile.display()))
        .arg("-o")
        .arg(dir.join("main"))
        .arg(dir.join("main.rs"))
        .output();
    std::fs::remove_dir_all(&dir).unwrap();
    let out = out.expect("rustc runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "rustc -Cprofile-use={}: {stderr}",
        profile.display()
    );
}
