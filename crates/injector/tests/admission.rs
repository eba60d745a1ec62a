//! Table-driven: AdmissionReview fixtures in, patched Pods out (over real HTTPS).

mod common;

use common::{Harness, IMAGE, apply, pod, review};
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{Value, json};
use switch::config::KNOBS;

/// What a case expects.
enum Want {
    /// Injected; the check inspects the patched Pod.
    Injected(fn(&Pod)),
    /// Allowed without a patch.
    Unchanged,
    /// Denied with a message containing all of these.
    Denied(&'static [&'static str]),
}

fn container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
    let spec = pod.spec.as_ref().unwrap();
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env(c: &Container, name: &str) -> Option<String> {
    c.env.iter().flatten().find(|e| e.name == name).map(|e| {
        e.value.clone().unwrap_or_else(|| {
            format!(
                "fieldRef:{}",
                e.value_from
                    .as_ref()
                    .unwrap()
                    .field_ref
                    .as_ref()
                    .unwrap()
                    .field_path
            )
        })
    })
}

fn seed_shape(p: &Pod) {
    let init = container(p, "ghostwire-init");
    let watcher = container(p, "ghostwire-watcher");
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(
        spec.init_containers.as_ref().unwrap().last().unwrap().name,
        "ghostwire-init"
    );
    for (c, sub) in [(init, "init"), (watcher, "watcher")] {
        assert_eq!(c.image.as_deref(), Some(IMAGE));
        assert_eq!(c.args.as_deref(), Some(&[sub.to_string()][..]));
        let sc = c.security_context.as_ref().unwrap();
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(caps.add.as_deref(), Some(&["NET_ADMIN".to_string()][..]));
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        let r = c.resources.as_ref().unwrap();
        assert!(r.requests.as_ref().unwrap().contains_key("memory"));
        assert!(r.limits.as_ref().unwrap().contains_key("memory"));
        assert_eq!(
            env(c, "POD_NAMESPACE").as_deref(),
            Some("fieldRef:metadata.namespace")
        );
        assert_eq!(env(c, "POD_IPS").as_deref(), Some("fieldRef:status.podIPs"));
        assert_eq!(env(c, "GW_JUMP_HOOK").as_deref(), Some("PREROUTING"));
        let mounts: Vec<(&str, &str)> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.name.as_str(), m.mount_path.as_str()))
            .collect();
        assert!(
            mounts.contains(&("ghostwire-shared", "/shared")),
            "{mounts:?}"
        );
        // The API token mount of the app container, so the switch can read the API.
        assert!(mounts.contains(&(
            "kube-api-access-x1",
            "/var/run/secrets/kubernetes.io/serviceaccount"
        )));
    }
    assert_eq!(
        env(watcher, "POD_NAME").as_deref(),
        Some("fieldRef:metadata.name")
    );
    assert_eq!(env(watcher, "GW_HTTP_ADDR").as_deref(), Some("[::]:8081"));
    assert_eq!(env(init, "POD_NAME"), None);
    let probe = watcher
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(probe.path.as_deref(), Some("/healthz"));
    assert_eq!(serde_json::to_value(&probe.port).unwrap(), json!(8081));
    // The app container is untouched: no shared volume, nothing added.
    let app = container(p, "app");
    assert_eq!(app.volume_mounts.as_ref().unwrap().len(), 1);
    assert!(app.env.is_none());
    let shared = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "ghostwire-shared")
        .unwrap();
    assert!(shared.empty_dir.is_some());
    let ann = p.metadata.annotations.as_ref().unwrap();
    assert_eq!(ann["ghostwire.dev/injected"], "preview-switch");
    assert_eq!(ann["ghostwire.dev/enabled"], "true");
}

/// Legacy iptables opens a raw socket: its containers also get NET_RAW, and still nothing else.
fn legacy_caps(p: &Pod) {
    for name in ["ghostwire-init", "ghostwire-watcher"] {
        let c = container(p, name);
        let caps = c
            .security_context
            .as_ref()
            .unwrap()
            .capabilities
            .as_ref()
            .unwrap();
        assert_eq!(
            caps.add.as_deref(),
            Some(&["NET_ADMIN".to_string(), "NET_RAW".to_string()][..])
        );
        assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
        assert_eq!(env(c, "GW_BACKEND").as_deref(), Some("iptables-legacy"));
    }
}

fn bare_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "bare", "namespace": "shop", "annotations": {"ghostwire.dev/enabled": "true"}},
           "spec": {"containers": [{"name": "app", "image": "x"}]}})
}

#[tokio::test]
async fn fixtures() {
    let h = Harness::start("fixtures").await;
    let enabled = |extra: Value| {
        let mut a =
            json!({"ghostwire.dev/enabled": "true", "ghostwire.dev/jumpHook": "PREROUTING"});
        a.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        a
    };
    let user_watcher = {
        let mut p = pod("mine", enabled(json!({})));
        p["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "ghostwire-watcher", "image": "mine"}));
        p
    };
    let port_clash = {
        let mut p = pod("port", enabled(json!({})));
        p["spec"]["containers"][0]["ports"] = json!([{"containerPort": 8081}]);
        p
    };
    let no_annotations_map = {
        let mut p = pod("plain", json!(null));
        p["metadata"].as_object_mut().unwrap().remove("annotations");
        p
    };
    let cases: Vec<(&str, Value, Want)> = vec![
        (
            "opted in on the Pod",
            pod("a", enabled(json!({}))),
            Want::Injected(seed_shape),
        ),
        (
            "legacy iptables backend",
            pod(
                "legacy",
                enabled(json!({"ghostwire.dev/backend": "iptables-legacy"})),
            ),
            Want::Injected(legacy_caps),
        ),
        ("no annotations at all", no_annotations_map, Want::Unchanged),
        (
            "other annotations only",
            pod("b", json!({"team": "x"})),
            Want::Unchanged,
        ),
        (
            "enabled false",
            pod(
                "c",
                json!({"ghostwire.dev/enabled": "false", "ghostwire.dev/jumpHook": "PREROUTING"}),
            ),
            Want::Unchanged,
        ),
        (
            "bad enabled",
            pod("d", json!({"ghostwire.dev/enabled": "yes"})),
            Want::Denied(&["ghostwire.dev/enabled", "\"yes\""]),
        ),
        (
            "bad jump hook",
            pod("e", enabled(json!({"ghostwire.dev/jumpHook": "INPUT"}))),
            Want::Denied(&[
                "ghostwire.dev/jumpHook",
                "\"INPUT\"",
                "OUTPUT or PREROUTING",
            ]),
        ),
        (
            "bad poll interval",
            pod(
                "f",
                enabled(json!({"ghostwire.dev/pollInterval": "2 parsecs"})),
            ),
            Want::Denied(&["ghostwire.dev/pollInterval", "\"2 parsecs\""]),
        ),
        (
            "bad CIDR",
            pod(
                "g",
                enabled(json!({"ghostwire.dev/excludeCidrs": "10.0.0.0/33"})),
            ),
            Want::Denied(&["ghostwire.dev/excludeCidrs", "10.0.0.0/33"]),
        ),
        (
            "bad pattern",
            pod(
                "h",
                enabled(json!({"ghostwire.dev/svcPreviewPattern": "preview"})),
            ),
            Want::Denied(&["ghostwire.dev/svcPreviewPattern", "\"preview\""]),
        ),
        (
            "bad ipv6",
            pod("i", enabled(json!({"ghostwire.dev/ipv6": "maybe"}))),
            Want::Denied(&["ghostwire.dev/ipv6", "\"maybe\""]),
        ),
        (
            "user container named like ours",
            user_watcher,
            Want::Denied(&["container \"ghostwire-watcher\" already exists"]),
        ),
        (
            "user port 8081",
            port_clash,
            Want::Denied(&["container port \"8081\""]),
        ),
        (
            "no lists to append to",
            bare_pod(),
            Want::Injected(|p| {
                assert_eq!(
                    p.spec
                        .as_ref()
                        .unwrap()
                        .init_containers
                        .as_ref()
                        .unwrap()
                        .len(),
                    1
                );
                // The shared emptyDir and the downward-API labels volume.
                assert_eq!(p.spec.as_ref().unwrap().volumes.as_ref().unwrap().len(), 2);
            }),
        ),
    ];
    for (name, input, want) in cases {
        let resp = h.admit(input.clone()).await;
        assert_eq!(
            resp["uid"], "7f0b2b2e-0000-4000-8000-000000000001",
            "{name}"
        );
        match want {
            Want::Injected(check) => {
                assert_eq!(resp["allowed"], true, "{name}: {resp}");
                assert!(resp["patch"].is_string(), "{name}: {resp}");
                let (doc, typed) = apply(&input, &resp);
                check(&typed);
                // Reinvocation (or re-creating the patched Pod) changes nothing more.
                let again = h.admit(doc).await;
                assert_eq!(again["allowed"], true, "{name}: {again}");
                assert!(
                    again.get("patch").is_none(),
                    "{name}: injected twice: {again}"
                );
            }
            Want::Unchanged => {
                assert_eq!(resp["allowed"], true, "{name}: {resp}");
                assert!(resp.get("patch").is_none(), "{name}: {resp}");
            }
            Want::Denied(parts) => {
                assert_eq!(resp["allowed"], false, "{name}: {resp}");
                let msg = resp["status"]["message"].as_str().unwrap();
                for p in parts {
                    assert!(msg.contains(p), "{name}: {msg:?} lacks {p:?}");
                }
            }
        }
    }
}

/// Every annotation of the knob table (the seed's list and more) reaches both containers as
/// its `GW_*` env.
#[tokio::test]
async fn every_annotation_maps_to_its_env() {
    let h = Harness::start("every").await;
    let value = |env: &str| match env {
        "GW_NAMESPACE" => "prod",
        "GW_ROLE_LABEL_KEY" => "tier",
        "GW_ROLE_ACTIVE" => "live",
        "GW_ROLE_PREVIEW" => "canary",
        "GW_SVC_PREVIEW_PATTERN" => "{{name}}-next",
        "GW_ACTIVE_SUFFIX" => "-blue",
        "GW_PREVIEW_SUFFIX" => "-green",
        "GW_DNS_SUFFIX" => ".svc.corp.example",
        "GW_NAT_CHAIN" => "GW_TEST",
        "GW_JUMP_HOOK" => "PREROUTING",
        "GW_EXCLUDE_CIDRS" => "169.254.169.254/32,10.96.0.10/32",
        "GW_POLL_INTERVAL" => "5s",
        "GW_REFRESH_INTERVAL" => "15m",
        "GW_IPV6" => "true",
        "GW_BACKEND" => "iptables-nft",
        "GW_FLUSH_CONNTRACK" => "true",
        "GW_STRICT_PAIRING" => "true",
        "GW_API_UNREACHABLE" => "active",
        other => panic!("no test value for {other}; add one"),
    };
    let mut annotations = json!({"ghostwire.dev/enabled": "true"});
    let with_annotation: Vec<_> = KNOBS.iter().filter(|k| k.annotation.is_some()).collect();
    for k in &with_annotation {
        annotations[k.annotation.unwrap()] = value(k.env).into();
    }
    // The seed's list, by name, is all there.
    for seed in [
        "roleLabelKey",
        "roleActive",
        "rolePreview",
        "svcPreviewPattern",
        "namespace",
        "dnsSuffix",
        "jumpHook",
        "excludeCidrs",
        "pollInterval",
        "refreshInterval",
        "ipv6",
    ] {
        assert!(
            with_annotation
                .iter()
                .any(|k| k.annotation == Some(&format!("ghostwire.dev/{seed}"))),
            "{seed}"
        );
    }
    let input = pod("all", annotations);
    let resp = h.admit(input.clone()).await;
    let (_, p) = apply(&input, &resp);
    for c in ["ghostwire-init", "ghostwire-watcher"] {
        for k in &with_annotation {
            assert_eq!(
                env(container(&p, c), k.env).as_deref(),
                Some(value(k.env)),
                "{c} {}",
                k.env
            );
        }
        // Knobs left alone are not set: the binary's own defaults apply.
        assert_eq!(env(container(&p, c), "GW_API_TIMEOUT"), None);
    }
    assert!(resp.get("warnings").is_none(), "{resp}");
}

#[tokio::test]
async fn warnings_for_typos_and_missing_token() {
    let h = Harness::start("warnings").await;
    let mut input = pod(
        "typo",
        json!({"ghostwire.dev/enabled": "true", "ghostwire.dev/jumphook": "PREROUTING"}),
    );
    input["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("volumeMounts");
    let resp = h.admit(input.clone()).await;
    assert_eq!(resp["allowed"], true);
    let warnings = resp["warnings"].to_string();
    assert!(
        warnings.contains("unknown annotation ghostwire.dev/jumphook"),
        "{warnings}"
    );
    assert!(warnings.contains("service account token"), "{warnings}");
    // Not opted in: the typo still draws a warning, nothing is injected.
    let resp = h
        .admit(pod("typo2", json!({"ghostwire.dev/enable": "true"})))
        .await;
    assert!(resp.get("patch").is_none());
    assert!(
        resp["warnings"]
            .to_string()
            .contains("ghostwire.dev/enable"),
        "{resp}"
    );
}

#[tokio::test]
async fn only_pod_create_is_mutated() {
    let h = Harness::start("ops").await;
    let p = pod("u", json!({"ghostwire.dev/enabled": "true"}));
    for op in ["UPDATE", "CONNECT"] {
        let (status, body) = h.post(review(op, p.clone()).to_string()).await;
        assert_eq!(status, 200);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["response"]["allowed"], true, "{op}");
        assert!(v["response"].get("patch").is_none(), "{op}");
    }
    let mut delete = review("DELETE", p.clone());
    delete["request"]["object"] = Value::Null;
    delete["request"]["oldObject"] = p.clone();
    let (status, body) = h.post(delete.to_string()).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let mut svc = review(
        "CREATE",
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "annotations": {"ghostwire.dev/enabled": "true"}}}),
    );
    svc["request"]["kind"]["kind"] = "Service".into();
    svc["request"]["resource"]["resource"] = "services".into();
    let (status, body) = h.post(svc.to_string()).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["response"].get("patch").is_none());
    let mut sub = review("CREATE", p);
    sub["request"]["subResource"] = "binding".into();
    let (_, body) = h.post(sub.to_string()).await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["response"].get("patch").is_none());
}

#[tokio::test]
async fn host_network_pods_are_denied_not_injected() {
    let h = Harness::start("hostnet").await;
    // Every capability that programs the Pod's namespace: there it is the node's own.
    for (i, ann) in [
        ("ghostwire.dev/enabled", "true"),
        ("ghostwire.dev/mesh", "true"),
        ("ghostwire.dev/gateway", "vpn-gateway"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut input = pod(&format!("hostnet-{i}"), json!({ann.0: ann.1}));
        input["spec"]["hostNetwork"] = json!(true);
        let resp = h.admit(input).await;
        assert_eq!(resp["allowed"], false, "{ann:?}: {resp}");
        let msg = resp["status"]["message"].to_string();
        assert!(msg.contains("hostNetwork") && msg.contains(ann.0), "{msg}");
    }
    // Not opted in: a hostNetwork Pod is admitted untouched.
    let mut input = pod("hostnet2", json!({}));
    input["spec"]["hostNetwork"] = json!(true);
    let resp = h.admit(input).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    assert!(resp.get("patch").is_none(), "{resp}");
}

/// One documented container order for every capability: a Pod asking for the preview switch
/// and the mesh (plus an init container of its own) gets set-up containers first, then the
/// native sidecar, and the switch becomes a route in the proxy instead of a DNAT chain.
#[tokio::test]
async fn two_capabilities_in_the_documented_order() {
    let h = Harness::start("two-caps").await;
    let mut input = pod(
        "both",
        json!({"ghostwire.dev/enabled": "true", "ghostwire.dev/mesh": "true"}),
    );
    input["spec"]["initContainers"] = json!([{"name": "migrate", "image": "x"}]);
    let resp = h.admit(input.clone()).await;
    assert_eq!(resp["allowed"], true, "{resp}");
    let (_, p) = apply(&input, &resp);
    let spec = p.spec.as_ref().unwrap();
    let names = |cs: &[Container]| cs.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    assert_eq!(
        names(spec.init_containers.as_deref().unwrap()),
        [
            "migrate",
            "ghostwire-init",
            "ghostwire-proxy-init",
            "ghostwire-proxy-validate",
            "ghostwire-proxy"
        ]
    );
    assert_eq!(names(&spec.containers), ["app", "ghostwire-watcher"]);
    let proxy = container(&p, "ghostwire-proxy");
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        proxy.security_context.as_ref().unwrap().run_as_user,
        Some(1337)
    );
    // The switch acts through the proxy: mesh mode, no capabilities, the map shared read-only.
    for c in ["ghostwire-init", "ghostwire-watcher"] {
        let c = container(&p, c);
        assert_eq!(
            env(c, "GW_SWITCH_MODE").as_deref(),
            Some("mesh"),
            "{}",
            c.name
        );
        let caps = c.security_context.as_ref().unwrap().capabilities.as_ref();
        assert_eq!(caps.unwrap().add.as_deref(), Some(&[][..]), "{}", c.name);
    }
    assert_eq!(
        env(proxy, "GW_MESH_PREVIEW_MAP").as_deref(),
        Some("/shared/dnat.map")
    );
    let shared = proxy
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "ghostwire-shared")
        .expect("the proxy mounts the switch's volume");
    assert_eq!(shared.read_only, Some(true));
    let ann = p.metadata.annotations.as_ref().unwrap();
    assert_eq!(ann["ghostwire.dev/injected"], "preview-switch,mesh");

    // Only the mesh, by the seed's label: no switch pieces, no preview map.
    let mut seed = pod("seed", json!({}));
    seed["metadata"]["labels"]["service-mesh"] = json!("enabled");
    let resp = h.admit(seed.clone()).await;
    let (_, p) = apply(&seed, &resp);
    let spec = p.spec.as_ref().unwrap();
    assert_eq!(
        names(spec.init_containers.as_deref().unwrap()),
        [
            "ghostwire-proxy-init",
            "ghostwire-proxy-validate",
            "ghostwire-proxy"
        ]
    );
    assert_eq!(
        env(container(&p, "ghostwire-proxy"), "GW_MESH_PREVIEW_MAP"),
        None
    );
}
