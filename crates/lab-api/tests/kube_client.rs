//! The real kube-rs client against the lab API: CRUD, selectors, patches, status codes, watches.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use lab_api::{Options, Server};
use serde_json::json;

fn service(name: &str, labels: serde_json::Value) -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .unwrap()
}

fn api_code(e: kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn namespaces_exist_and_services_get_cluster_ips() {
    let server = Server::start(Options::default()).await.unwrap();
    let client = server.client().await.unwrap();
    let ns: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = ns
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for want in ["default", "kube-system", "kube-public"] {
        assert!(names.contains(&want.to_string()), "{names:?}");
    }

    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let a = svcs
        .create(
            &PostParams::default(),
            &service("a", json!({"tier": "web"})),
        )
        .await
        .unwrap();
    let b = svcs
        .create(&PostParams::default(), &service("b", json!({"tier": "db"})))
        .await
        .unwrap();
    let ip_a = a.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
    let ip_b = b.spec.as_ref().unwrap().cluster_ip.clone().unwrap();
    assert_ne!(ip_a, ip_b);
    // Dynamic allocation: inside 10.96.0.0/12, above the static band (10.96.0.0–10.96.0.255)
    // that Services naming their ClusterIP (kube-dns's 10.96.0.10) draw from.
    for ip in [&ip_a, &ip_b] {
        let n = u32::from(ip.parse::<std::net::Ipv4Addr>().unwrap())
            - u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0));
        assert!((256..1 << 20).contains(&n), "{ip}");
    }
    let mut dns = service("kube-dns", json!({}));
    dns.spec.as_mut().unwrap().cluster_ip = Some("10.96.0.10".into());
    let dns = svcs.create(&PostParams::default(), &dns).await.unwrap();
    assert_eq!(dns.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.10"));
    assert_eq!(
        a.spec.as_ref().unwrap().ip_families.as_deref(),
        Some(&["IPv4".to_string()][..])
    );

    assert_eq!(
        api_code(
            svcs.create(&PostParams::default(), &service("a", json!({})))
                .await
                .unwrap_err()
        ),
        409
    );
    assert_eq!(api_code(svcs.get("missing").await.unwrap_err()), 404);

    let web = svcs
        .list(&ListParams::default().labels("tier in (web, x)"))
        .await
        .unwrap();
    assert_eq!(web.items.len(), 1);
    let not_web = svcs
        .list(&ListParams::default().labels("tier!=web,tier"))
        .await
        .unwrap();
    assert_eq!(not_web.items[0].metadata.name.as_deref(), Some("b"));
    let by_name = svcs
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .unwrap();
    assert_eq!(by_name.items.len(), 1);

    let patched = svcs
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tier": "edge"}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.labels.unwrap()["tier"], "edge");
    assert!(patched.metadata.resource_version > a.metadata.resource_version);

    // A stale resourceVersion is a conflict.
    let mut stale = a.clone();
    stale.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
    assert_eq!(
        api_code(
            svcs.replace("a", &PostParams::default(), &stale)
                .await
                .unwrap_err()
        ),
        409
    );

    // A bad spec is 422 naming the field.
    let mut bad = service("c", json!({}));
    bad.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 0;
    match svcs.create(&PostParams::default(), &bad).await.unwrap_err() {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 422);
            assert!(s.message.contains("spec.ports[0].port"), "{}", s.message);
        }
        other => panic!("{other:?}"),
    }

    svcs.delete("a", &DeleteParams::default()).await.unwrap();
    assert_eq!(api_code(svcs.get("a").await.unwrap_err()), 404);
    server.shutdown().await;
}

#[tokio::test]
async fn dual_stack_services_and_taken_ips() {
    let server = Server::start(Options::default()).await.unwrap();
    let svcs: Api<Service> = Api::namespaced(server.client().await.unwrap(), "default");
    let mut s = service("dual", json!({}));
    s.spec.as_mut().unwrap().ip_family_policy = Some("RequireDualStack".into());
    s.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
    let got = svcs.create(&PostParams::default(), &s).await.unwrap();
    let spec = got.spec.unwrap();
    let ips = spec.cluster_ips.unwrap();
    assert_eq!(ips.len(), 2);
    assert!(ips[0].contains(':') && !ips[1].contains(':'), "{ips:?}");
    assert_eq!(spec.ip_families.unwrap(), vec!["IPv6", "IPv4"]);

    let mut taken = service("taken", json!({}));
    taken.spec.as_mut().unwrap().cluster_ip = Some(ips[1].clone());
    match svcs
        .create(&PostParams::default(), &taken)
        .await
        .unwrap_err()
    {
        kube::Error::Api(s) => assert!(
            s.code == 422 && s.message.contains("already allocated"),
            "{s:?}"
        ),
        other => panic!("{other:?}"),
    }
    let mut single = service("single", json!({}));
    single.spec.as_mut().unwrap().ip_families = Some(vec!["IPv4".into(), "IPv6".into()]);
    single.spec.as_mut().unwrap().ip_family_policy = Some("SingleStack".into());
    match svcs
        .create(&PostParams::default(), &single)
        .await
        .unwrap_err()
    {
        kube::Error::Api(s) => assert!(
            s.code == 422 && s.message.contains("spec.ipFamilyPolicy"),
            "{s:?}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn pods_status_subresource_and_generate_name() {
    let server = Server::start(Options::default()).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(server.client().await.unwrap(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"generateName": "web-"},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}
    }))
    .unwrap();
    let created = pods.create(&PostParams::default(), &pod).await.unwrap();
    let name = created.metadata.name.clone().unwrap();
    assert!(name.starts_with("web-") && name.len() == 9, "{name}");
    assert_eq!(
        created.status.as_ref().unwrap().phase.as_deref(),
        Some("Pending")
    );

    let st = pods
        .patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Running", "podIP": "10.244.0.5"}})),
        )
        .await
        .unwrap();
    assert_eq!(st.status.unwrap().pod_ip.as_deref(), Some("10.244.0.5"));
    // The main resource ignores status changes.
    let again = pods
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Failed"}})),
        )
        .await
        .unwrap();
    assert_eq!(again.status.unwrap().phase.as_deref(), Some("Running"));

    let dry = pods
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &pod,
        )
        .await
        .unwrap();
    assert!(dry.metadata.name.is_some());
    assert_eq!(
        pods.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );

    // Strategic merge keeps other containers.
    let two = pods
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Strategic(
                json!({"spec": {"containers": [{"name": "c", "image": "nginx:1.28"}]}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        two.spec.unwrap().containers[0].image.as_deref(),
        Some("nginx:1.28")
    );
}

#[tokio::test]
async fn ephemeral_containers_only_through_their_subresource() {
    let server = Server::start(Options::default()).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(server.client().await.unwrap(), "default");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "app"},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let ec_names = |p: &Pod| -> Vec<String> {
        p.spec
            .as_ref()
            .and_then(|s| s.ephemeral_containers.as_ref())
            .into_iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect()
    };

    // A plain update may not add one (a real server: "pod updates may not change fields …").
    let mut with_ec = pods.get("app").await.unwrap();
    with_ec.spec.as_mut().unwrap().ephemeral_containers = Some(vec![
        serde_json::from_value(json!({"name": "debug", "image": "busybox:1.36"})).unwrap(),
    ]);
    let refused = pods
        .replace("app", &PostParams::default(), &with_ec)
        .await
        .unwrap_err();
    assert_eq!(api_code(refused), 422);
    let refused = pods
        .patch(
            "app",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"ephemeralContainers": [
                {"name": "debug", "image": "busybox:1.36"}
            ]}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(refused), 422);
    assert!(ec_names(&pods.get("app").await.unwrap()).is_empty());

    // PATCH pods/app/ephemeralcontainers adds one; the rest of the pod is not touched by it.
    let patched = pods
        .patch_ephemeral_containers(
            "app",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {
                "containers": [{"name": "c", "image": "nginx:9"}],
                "ephemeralContainers": [{"name": "debug", "image": "busybox:1.36", "stdin": true, "tty": true}]
            }})),
        )
        .await
        .unwrap();
    assert_eq!(ec_names(&patched), ["debug"]);
    let spec = patched.spec.as_ref().unwrap();
    assert_eq!(spec.containers[0].image.as_deref(), Some("nginx:1.27"));
    let ec = &spec.ephemeral_containers.as_ref().unwrap()[0];
    assert_eq!(ec.image_pull_policy.as_deref(), Some("IfNotPresent"));

    // PUT pods/app/ephemeralcontainers adds another, keeping the first.
    let mut current = pods.get_ephemeral_containers("app").await.unwrap();
    let ecs = current
        .spec
        .as_mut()
        .unwrap()
        .ephemeral_containers
        .as_mut()
        .unwrap();
    ecs.push(serde_json::from_value(json!({"name": "debug2", "image": "busybox:1.36"})).unwrap());
    let replaced = pods
        .replace_ephemeral_containers("app", &PostParams::default(), &current)
        .await
        .unwrap();
    assert_eq!(ec_names(&replaced), ["debug", "debug2"]);

    // Existing ones may not be changed or removed, through the subresource or not.
    let mut changed = replaced.clone();
    changed
        .spec
        .as_mut()
        .unwrap()
        .ephemeral_containers
        .as_mut()
        .unwrap()[0]
        .image = Some("busybox:1.37".into());
    let refused = pods
        .replace_ephemeral_containers("app", &PostParams::default(), &changed)
        .await
        .unwrap_err();
    assert_eq!(api_code(refused), 422);
    let mut removed = replaced.clone();
    removed.spec.as_mut().unwrap().ephemeral_containers = None;
    let refused = pods
        .replace("app", &PostParams::default(), &removed)
        .await
        .unwrap_err();
    assert_eq!(api_code(refused), 422);
    // A name taken by a container is refused, and so are ports (nothing routes to one).
    for bad in [
        json!({"name": "c", "image": "busybox:1.36"}),
        json!({"name": "d3", "image": "busybox:1.36", "ports": [{"containerPort": 80}]}),
    ] {
        let refused = pods
            .patch_ephemeral_containers(
                "app",
                &PatchParams::default(),
                &Patch::Strategic(json!({"spec": {"ephemeralContainers": [bad]}})),
            )
            .await
            .unwrap_err();
        assert_eq!(api_code(refused), 422);
    }
    // Nor may a pod be created with them.
    let mut born_with = with_ec.clone();
    born_with.metadata = serde_json::from_value(json!({"name": "app2"})).unwrap();
    let refused = pods
        .create(&PostParams::default(), &born_with)
        .await
        .unwrap_err();
    assert_eq!(api_code(refused), 422);

    // A plain update that leaves them as they are still works.
    let mut same = pods.get("app").await.unwrap();
    same.spec.as_mut().unwrap().containers[0].image = Some("nginx:1.28".into());
    let updated = pods
        .replace("app", &PostParams::default(), &same)
        .await
        .unwrap();
    assert_eq!(ec_names(&updated), ["debug", "debug2"]);
}

#[tokio::test]
async fn scale_subresource_reads_and_writes_a_scale() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::autoscaling::v1::Scale;
    let server = Server::start(Options::default()).await.unwrap();
    let deploys: Api<Deployment> = Api::namespaced(server.client().await.unwrap(), "default");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "nginx:1.27"}]}}
        }
    }))
    .unwrap();
    deploys.create(&PostParams::default(), &d).await.unwrap();

    let sc = deploys.get_scale("web").await.unwrap();
    assert_eq!(sc.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(
        sc.status.as_ref().unwrap().selector.as_deref(),
        Some("app=web")
    );

    let patched = deploys
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.spec.unwrap().replicas, Some(3));
    let mut sc: Scale = deploys.get_scale("web").await.unwrap();
    sc.spec.as_mut().unwrap().replicas = Some(4);
    let replaced = deploys
        .replace_scale("web", &PostParams::default(), &sc)
        .await
        .unwrap();
    assert_eq!(replaced.spec.unwrap().replicas, Some(4));
    // The Scale's resourceVersion is a precondition.
    let stale = deploys
        .replace_scale("web", &PostParams::default(), &sc)
        .await
        .unwrap_err();
    assert_eq!(api_code(stale), 409);
    let negative = deploys
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": -1}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_code(negative), 422);
    let d = deploys.get("web").await.unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(4));
    assert_eq!(d.metadata.generation, Some(3));
}

#[tokio::test]
async fn list_pages_with_limit_and_continue() {
    let server = Server::start(Options::default()).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client().await.unwrap(), "default");
    for i in 0..7 {
        let cm: ConfigMap = serde_json::from_value(
            json!({"metadata": {"name": format!("cm-{i}")}, "data": {"i": i.to_string()}}),
        )
        .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut lp = ListParams::default().limit(3);
    loop {
        let page = cms.list(&lp).await.unwrap();
        seen.extend(
            page.items
                .into_iter()
                .filter_map(|c| c.metadata.name)
                .filter(|n| n.starts_with("cm-")),
        );
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(seen.len(), 7);
}

/// Lists, gets and watch events are the JSON the store made when each object version was
/// written: across many reads the store's count of serialisations moves only with writes (one
/// each). List items carry no apiVersion/kind (as kube-apiserver sends them), gets and watch
/// events do.
#[tokio::test]
async fn reads_send_the_json_made_at_write_time() {
    use kube::api::{ApiResource, DynamicObject, WatchEvent, WatchParams};
    let server = Server::start(Options::default()).await.unwrap();
    let client = server.client().await.unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    for i in 0..20 {
        let tier = if i % 2 == 0 { "web" } else { "db" };
        svcs.create(
            &PostParams::default(),
            &service(&format!("s{i}"), json!({"tier": tier})),
        )
        .await
        .unwrap();
    }
    // Watchers from "now", one filtered, plus one starting with the current state.
    let rv = server.resource_version().to_string();
    let dynamic: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::erase::<Service>(&()),
    );
    let mut watches = Vec::new();
    for wp in [
        WatchParams::default(),
        WatchParams::default().labels("tier=web"),
    ] {
        watches.push(dynamic.watch(&wp, &rv).await.unwrap().boxed());
    }
    let mut initial = svcs
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    let (s0, rv0) = (server.serialisations(), server.resource_version());

    for _ in 0..10 {
        assert!(svcs.list(&ListParams::default()).await.unwrap().items.len() >= 20);
    }
    let web = svcs
        .list(&ListParams::default().labels("tier=web"))
        .await
        .unwrap();
    assert_eq!(web.items.len(), 10);
    let mut pages = 0;
    let mut lp = ListParams::default().limit(7);
    loop {
        let page = svcs.list(&lp).await.unwrap();
        pages += 1;
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp = lp.continue_token(&c),
            _ => break,
        }
    }
    assert_eq!(pages, 3);
    for i in 0..20 {
        svcs.get(&format!("s{i}")).await.unwrap();
    }
    let raw = |path: &str| http::Request::get(path).body(Vec::new()).unwrap();
    let list: serde_json::Value = serde_json::from_str(
        &client
            .request_text(raw("/api/v1/namespaces/default/services"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (&list["kind"], &list["apiVersion"]),
        (&json!("ServiceList"), &json!("v1"))
    );
    for item in list["items"].as_array().unwrap() {
        assert!(
            item.get("kind").is_none() && item.get("apiVersion").is_none(),
            "{item}"
        );
        assert!(item["metadata"]["resourceVersion"].is_string(), "{item}");
    }
    let one: serde_json::Value = serde_json::from_str(
        &client
            .request_text(raw("/api/v1/namespaces/default/services/s3"))
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        (&one["kind"], &one["apiVersion"]),
        (&json!("Service"), &json!("v1"))
    );
    let mut added = 0;
    while added < 20 {
        if let WatchEvent::Added(s) = initial.try_next().await.unwrap().unwrap()
            && s.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with('s'))
        {
            added += 1;
        }
    }

    // One write: every watcher gets it, typed.
    svcs.patch(
        "s4",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {"seen": "yes"}}})),
    )
    .await
    .unwrap();
    for w in &mut watches {
        loop {
            if let WatchEvent::Modified(o) = w.try_next().await.unwrap().unwrap() {
                assert_eq!(o.metadata.name.as_deref(), Some("s4"));
                let types = o.types.expect("a watch event's object has its type");
                assert_eq!(
                    (types.api_version.as_str(), types.kind.as_str()),
                    ("v1", "Service")
                );
                break;
            }
        }
    }
    // Reads serialised nothing: every serialisation since is a write's.
    assert_eq!(
        server.serialisations() - s0,
        server.resource_version() - rv0
    );
    assert!(server.resource_version() > rv0);
}

#[tokio::test]
async fn watcher_sees_changes_and_survives_410() {
    let server = Server::start(Options::default()).await.unwrap();
    let client = server.client().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let mut events = watcher(cms.clone(), watcher::Config::default().labels("app=w")).boxed();

    // Initial list completes.
    loop {
        if let watcher::Event::InitDone = events.try_next().await.unwrap().unwrap() {
            break;
        }
    }
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "w1", "labels": {"app": "w"}}}))
            .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    match events.try_next().await.unwrap().unwrap() {
        watcher::Event::Apply(o) => assert_eq!(o.metadata.name.as_deref(), Some("w1")),
        other => panic!("{other:?}"),
    }
    cms.delete("w1", &DeleteParams::default()).await.unwrap();
    match events.try_next().await.unwrap().unwrap() {
        watcher::Event::Delete(o) => assert_eq!(o.metadata.name.as_deref(), Some("w1")),
        other => panic!("{other:?}"),
    }
    let _ = events;

    // A watch from a compacted version is told 410 Gone.
    let old = server.resource_version();
    let cm2: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "w2", "labels": {"app": "w"}}}))
            .unwrap();
    cms.create(&PostParams::default(), &cm2).await.unwrap();
    server.compact();
    let mut raw = cms
        .watch(&kube::api::WatchParams::default(), &old.to_string())
        .await
        .unwrap()
        .boxed();
    match raw.try_next().await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 410),
        Ok(Some(kube::api::WatchEvent::Error(s))) => assert_eq!(s.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

/// A private temp dir, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "lab-api-test-{tag}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

async fn next_named(
    events: &mut (
             impl futures::Stream<Item = Result<watcher::Event<ConfigMap>, watcher::Error>> + Unpin
         ),
    name: &str,
) -> &'static str {
    loop {
        match events.next().await.expect("watcher ended") {
            Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o))
                if o.metadata.name.as_deref() == Some(name) =>
            {
                return "apply";
            }
            Ok(watcher::Event::Delete(o)) if o.metadata.name.as_deref() == Some(name) => {
                return "delete";
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn runtime_watcher_relists_after_410() {
    let server = Server::start(Options::default()).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client().await.unwrap(), "default");
    let mut events = watcher(cms.clone(), watcher::Config::default()).boxed();
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "r1"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    assert_eq!(next_named(&mut events, "r1").await, "apply");
    // Compaction ends the watch; resuming from the old version is 410, so the watcher relists.
    server.compact();
    let mut relisted = false;
    loop {
        match events.next().await.expect("watcher ended") {
            Ok(watcher::Event::Init) => relisted = true,
            Ok(watcher::Event::InitDone) if relisted => break,
            _ => {}
        }
    }
    let cm2: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "r2"}})).unwrap();
    cms.create(&PostParams::default(), &cm2).await.unwrap();
    assert_eq!(next_named(&mut events, "r2").await, "apply");
}

#[tokio::test]
async fn state_and_watchers_survive_a_restart() {
    let dir = TempDir::new("restart");
    let opts = Options {
        data_dir: Some(dir.0.join("data")),
        kubeconfig: Some(dir.0.join("kubeconfig")),
        ..Default::default()
    };
    let first = Server::start(opts.clone()).await.unwrap();
    let addr = first.addr();
    let client = first.client().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let mut events = watcher(cms.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let cm: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "before"}, "data": {"k": "v"}}))
            .unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    assert_eq!(next_named(&mut events, "before").await, "apply");
    let rv_before: u64 = created.metadata.resource_version.unwrap().parse().unwrap();
    first.shutdown().await;
    // The CA key, the token, the objects (Secrets among them) and the admin kubeconfig: root's
    // alone, from the moment each file was made.
    let mut private = vec![dir.0.join("kubeconfig")];
    for sub in ["pki", "store"] {
        for entry in std::fs::read_dir(dir.0.join("data").join(sub)).unwrap() {
            private.push(entry.unwrap().path());
        }
    }
    assert!(
        private.iter().any(|p| p.ends_with("pki/ca.key")),
        "{private:?}"
    );
    for path in &private {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}: {mode:o}", path.display());
    }

    let second = Server::start(Options {
        listen: addr,
        ..opts
    })
    .await
    .unwrap();
    // The old client (same CA and credentials) still works, and the object is still there.
    let kept = cms.get("before").await.unwrap();
    assert_eq!(kept.data.unwrap()["k"], "v");
    let after: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "after"}})).unwrap();
    let made = cms.create(&PostParams::default(), &after).await.unwrap();
    let rv_after: u64 = made.metadata.resource_version.unwrap().parse().unwrap();
    assert!(rv_after > rv_before, "{rv_after} > {rv_before}");
    assert_eq!(next_named(&mut events, "after").await, "apply");
    second.shutdown().await;
}

#[tokio::test]
async fn finalizers_hold_deletion_and_namespaces_terminate() {
    let server = Server::start(Options::default()).await.unwrap();
    let client = server.client().await.unwrap();
    let nss: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "scratch"}})).unwrap();
    nss.create(&PostParams::default(), &ns).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "scratch");
    let cm: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "held", "finalizers": ["lab.test/hold"]}}),
    )
    .unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    cms.delete("held", &DeleteParams::default()).await.unwrap();
    let held = cms.get("held").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());

    let mut events = watcher(
        nss.clone(),
        watcher::Config::default().fields("metadata.name=scratch"),
    )
    .boxed();
    // Watchers are lazy: let its initial list finish before the namespace goes.
    while !matches!(
        events.try_next().await.unwrap().unwrap(),
        watcher::Event::InitDone
    ) {}
    nss.delete("scratch", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        nss.get("scratch")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Terminating")
    );
    let refused = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "new"}})).unwrap(),
        )
        .await;
    assert_eq!(api_code(refused.unwrap_err()), 403);

    // Removing the last finalizer lets the object, and then its namespace, go.
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(api_code(cms.get("held").await.unwrap_err()), 404);
    loop {
        if let watcher::Event::Delete(n) = events.try_next().await.unwrap().unwrap() {
            assert_eq!(n.metadata.name.as_deref(), Some("scratch"));
            break;
        }
    }
}

/// A kube-rs client that sends `token` and nothing else.
fn token_client(base: &kube::Config, token: Option<&str>) -> kube::Client {
    let mut c = kube::Config::new(base.cluster_url.clone());
    c.root_cert = base.root_cert.clone();
    c.auth_info.token = token.map(|t| t.to_string().into());
    kube::Client::try_from(c).unwrap()
}

fn api_status(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

async fn token(
    sas: &Api<k8s_openapi::api::core::v1::ServiceAccount>,
    sa: &str,
    spec: serde_json::Value,
) -> Result<String, kube::Error> {
    let tr: k8s_openapi::api::authentication::v1::TokenRequest =
        serde_json::from_value(json!({ "spec": spec })).unwrap();
    Ok(sas
        .create_token_request(sa, &PostParams::default(), &tr)
        .await?
        .status
        .unwrap()
        .token)
}

async fn apply_yaml(client: &kube::Client, ns: &str, yaml: &str) {
    use kube::core::{DynamicObject, GroupVersionKind};
    for doc in yaml.split("\n---\n") {
        let obj: DynamicObject = serde_saphyr::from_str(doc).unwrap();
        let tm = obj.types.clone().unwrap();
        let gvk = GroupVersionKind::try_from(&tm).unwrap();
        let (ar, _) = kube::discovery::pinned_kind(client, &gvk).await.unwrap();
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        api.create(&PostParams::default(), &obj).await.unwrap();
    }
}

/// deploy/components/workload-rbac, as the Pods ghostwire injects run with it.
const WORKLOAD_RBAC: &str = include_str!("../../../deploy/components/workload-rbac/rbac.yaml");

#[tokio::test]
async fn tokens_authenticate_and_rbac_authorizes() {
    let server = Server::start(Options::default()).await.unwrap();
    let admin = server.client().await.unwrap();
    let base = server.kube_config().await.unwrap();
    // No credentials: system:anonymous, whom RBAC allows only the public info.
    let anonymous = token_client(&base, None);
    let anon_ns: Api<Namespace> = Api::all(anonymous.clone());
    assert_eq!(
        api_status(anon_ns.list(&ListParams::default()).await.unwrap_err()),
        (
            403,
            "namespaces is forbidden: User \"system:anonymous\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope".into()
        )
    );
    assert!(anonymous.apiserver_version().await.is_ok());
    let healthz = http::Request::get("/healthz").body(Vec::new()).unwrap();
    assert_eq!(anonymous.request_text(healthz).await.unwrap(), "ok");
    assert_eq!(
        api_status(anonymous.list_api_groups().await.unwrap_err()),
        (
            403,
            "forbidden: User \"system:anonymous\" cannot get path \"/apis\"".into()
        )
    );
    // A token that does not authenticate is refused, not taken as anonymous.
    let bad: Api<Namespace> = Api::all(token_client(&base, Some("not-a-token")));
    assert_eq!(
        api_code(bad.list(&ListParams::default()).await.unwrap_err()),
        401
    );
    // The admin token is cluster-admin, like the kubeconfig's certificate.
    let ns: Api<Namespace> = Api::all(token_client(&base, Some(server.token())));
    assert!(ns.get("default").await.is_ok());

    apply_yaml(&admin, "default", WORKLOAD_RBAC).await;
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(admin.clone(), "default");
    // TokenRequest refuses less than ten minutes.
    let short = token(&sas, "ghostwire-switch", json!({"expirationSeconds": 599})).await;
    assert_eq!(
        api_status(short.unwrap_err()),
        (
            422,
            "TokenRequest.authentication.k8s.io \"ghostwire-switch\" is invalid: spec.expirationSeconds: Invalid value: 599: may not specify a duration less than 10 minutes".into()
        )
    );
    // A token for another audience does not authenticate to the API.
    let other = token(&sas, "ghostwire-switch", json!({"audiences": ["vault"]}))
        .await
        .unwrap();
    let svcs: Api<Service> = Api::namespaced(token_client(&base, Some(&other)), "default");
    assert_eq!(
        api_code(svcs.list(&ListParams::default()).await.unwrap_err()),
        401
    );

    // The switch's account can do exactly what deploy/ grants.
    let t = token(&sas, "ghostwire-switch", json!({})).await.unwrap();
    let client = token_client(&base, Some(&t));
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    assert!(svcs.list(&ListParams::default()).await.is_ok());
    assert_eq!(
        api_status(svcs.get("kubernetes").await.unwrap_err()),
        (
            403,
            "services \"kubernetes\" is forbidden: User \"system:serviceaccount:default:ghostwire-switch\" cannot get resource \"services\" in API group \"\" in the namespace \"default\"".into()
        )
    );
    // A new Role and binding are honoured by the very next request, and so is a change to the
    // Role's rules (the authorizer's compiled policy follows every RBAC write).
    apply_yaml(
        &admin,
        "default",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: svc-get}\nrules: [{apiGroups: [''], resources: [services], verbs: [get]}]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: svc-get}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: svc-get}\nsubjects: [{kind: ServiceAccount, name: ghostwire-switch}]",
    )
    .await;
    assert!(svcs.get("kubernetes").await.is_ok());
    let roles: Api<k8s_openapi::api::rbac::v1::Role> = Api::namespaced(admin.clone(), "default");
    let narrower = Patch::Merge(
        json!({"rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["get"], "resourceNames": ["other"]}]}),
    );
    roles
        .patch("svc-get", &PatchParams::default(), &narrower)
        .await
        .unwrap();
    assert_eq!(api_code(svcs.get("kubernetes").await.unwrap_err()), 403);
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    assert!(pods.list(&ListParams::default()).await.is_ok());
    let mut w = pods
        .watch(&kube::api::WatchParams::default().timeout(1), "0")
        .await
        .unwrap()
        .boxed();
    while w.try_next().await.unwrap().is_some() {}
    let p = Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}}));
    assert_eq!(
        api_code(
            pods.patch("any", &PatchParams::default(), &p)
                .await
                .unwrap_err()
        ),
        403
    );
    let other_ns: Api<Service> = Api::namespaced(client.clone(), "kube-system");
    assert_eq!(
        api_status(other_ns.list(&ListParams::default()).await.unwrap_err()),
        (
            403,
            "services is forbidden: User \"system:serviceaccount:default:ghostwire-switch\" cannot list resource \"services\" in API group \"\" in the namespace \"kube-system\"".into()
        )
    );
    let nss: Api<Namespace> = Api::all(client.clone());
    assert_eq!(
        api_status(nss.list(&ListParams::default()).await.unwrap_err()),
        (
            403,
            "namespaces is forbidden: User \"system:serviceaccount:default:ghostwire-switch\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope".into()
        )
    );
    // Everyone authenticated may read discovery.
    assert!(client.apiserver_version().await.is_ok());
    assert!(client.list_api_groups().await.is_ok());

    // Removing the binding takes the permission away at once.
    let rbs: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
        Api::namespaced(admin.clone(), "default");
    rbs.delete("ghostwire-switch-init", &DeleteParams::default())
        .await
        .unwrap();
    rbs.delete("ghostwire-switch-watcher", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        api_code(svcs.list(&ListParams::default()).await.unwrap_err()),
        403
    );
    // Deleting the account invalidates its tokens.
    sas.delete("ghostwire-switch", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(
        api_code(svcs.list(&ListParams::default()).await.unwrap_err()),
        401
    );
}

#[tokio::test]
async fn bound_tokens_and_token_reviews() {
    use k8s_openapi::api::authentication::v1::TokenReview;
    let server = Server::start(Options::default()).await.unwrap();
    let admin = server.client().await.unwrap();
    let base = server.kube_config().await.unwrap();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}})).unwrap();
    let pod = pods.create(&PostParams::default(), &pod).await.unwrap();
    let uid = pod.metadata.uid.clone().unwrap();
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(admin.clone(), "default");
    let bound = token(
        &sas,
        "default",
        json!({"audiences": ["vault", "https://kubernetes.default.svc.cluster.local"], "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": uid}}),
    )
    .await
    .unwrap();
    // A stale UID in the reference is a conflict.
    let stale = token(
        &sas,
        "default",
        json!({"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "p", "uid": "0000"}}),
    )
    .await;
    assert_eq!(api_code(stale.unwrap_err()), 409);

    let review = |client: kube::Client, token: String, audiences: Vec<&'static str>| async move {
        let tr: TokenReview =
            serde_json::from_value(json!({"spec": {"token": token, "audiences": audiences}}))
                .unwrap();
        let api: Api<TokenReview> = Api::all(client);
        api.create(&PostParams::default(), &tr)
            .await
            .map(|r| r.status.unwrap())
    };
    // No audiences: the API server's own.
    let s = review(admin.clone(), bound.clone(), vec![]).await.unwrap();
    assert_eq!(s.authenticated, Some(true));
    let user = s.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:default:default")
    );
    assert_eq!(
        user.extra.unwrap()["authentication.kubernetes.io/pod-uid"],
        vec![uid.clone()]
    );
    assert_eq!(
        s.audiences.unwrap(),
        vec!["https://kubernetes.default.svc.cluster.local"]
    );
    let s = review(admin.clone(), bound.clone(), vec!["vault", "nats"])
        .await
        .unwrap();
    assert_eq!(
        (s.authenticated, s.audiences.unwrap()),
        (Some(true), vec!["vault".to_string()])
    );
    let s = review(admin.clone(), bound.clone(), vec!["nats"])
        .await
        .unwrap();
    assert_eq!(s.authenticated, Some(false));
    assert!(s.error.unwrap().contains("audiences"));

    // TokenReview needs system:auth-delegator: the bound token's own account has it not.
    let sa_client = token_client(&base, Some(&bound));
    assert_eq!(
        api_status(review(sa_client.clone(), bound.clone(), vec![]).await.unwrap_err()),
        (
            403,
            "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:default:default\" cannot create resource \"tokenreviews\" in API group \"authentication.k8s.io\" at the cluster scope".into()
        )
    );
    let crbs: Api<k8s_openapi::api::rbac::v1::ClusterRoleBinding> = Api::all(admin.clone());
    let crb = serde_json::from_value(json!({"metadata": {"name": "default-delegator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "default"}]})).unwrap();
    crbs.create(&PostParams::default(), &crb).await.unwrap();
    let s = review(sa_client.clone(), bound.clone(), vec![])
        .await
        .unwrap();
    assert_eq!(s.authenticated, Some(true));

    // The Pod goes, its tokens stop working.
    pods.delete("p", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let s = review(admin.clone(), bound.clone(), vec![]).await.unwrap();
    assert_eq!(s.authenticated, Some(false));
    let nss: Api<Namespace> = Api::all(sa_client);
    assert_eq!(api_code(nss.get("default").await.unwrap_err()), 401);
}

#[tokio::test]
async fn bad_protobuf_is_400_and_unknown_media_types_415() {
    let server = Server::start(Options::default()).await.unwrap();
    let client = server.client().await.unwrap();
    let post = |ct: &str, body: &[u8]| {
        http::Request::post("/api/v1/namespaces/default/configmaps")
            .header("Content-Type", ct)
            .body(body.to_vec())
            .unwrap()
    };
    let status = |e: kube::Error| match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("{other:?}"),
    };
    // An envelope naming no kind.
    let e = client
        .request::<ConfigMap>(post("application/vnd.kubernetes.protobuf", b"k8s\0"))
        .await
        .unwrap_err();
    assert_eq!(status(e), (400, "BadRequest".into()));
    let e = client
        .request::<ConfigMap>(post("application/cbor", b"\xa0"))
        .await
        .unwrap_err();
    assert_eq!(status(e), (415, "UnsupportedMediaType".into()));
}

#[tokio::test]
async fn watches_send_bookmarks_and_end_at_their_timeout() {
    let opts = Options {
        bookmark_interval: std::time::Duration::from_millis(50),
        ..Default::default()
    };
    let server = Server::start(opts).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client().await.unwrap(), "default");
    let rv = server.resource_version().to_string();
    let wp = kube::api::WatchParams {
        bookmarks: true,
        ..Default::default()
    }
    .timeout(1);
    let mut stream = cms.watch(&wp, &rv).await.unwrap().boxed();
    let mut bookmarks = 0;
    // The server ends the watch after timeoutSeconds; bookmarks arrive meanwhile.
    while let Some(ev) = stream.try_next().await.unwrap() {
        if let kube::api::WatchEvent::Bookmark(b) = ev {
            assert!(
                b.metadata.resource_version.parse::<u64>().unwrap() >= rv.parse::<u64>().unwrap()
            );
            bookmarks += 1;
        }
    }
    assert!(bookmarks > 0);
}

#[tokio::test]
async fn native_sidecars_are_kept_and_validated_as_on_1_33() {
    let server = Server::start(Options::default()).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(server.client().await.unwrap(), "default");
    let pod = |init: serde_json::Value, main: serde_json::Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "side"},
            "spec": {"initContainers": [init], "containers": [main]}
        }))
        .unwrap()
    };
    let main = json!({"name": "app", "image": "busybox"});
    // The field survives the round trip (a server without the feature drops it), with probes
    // and hooks that only a sidecar may have.
    let sidecar = json!({"name": "proxy", "image": "busybox", "restartPolicy": "Always",
                         "startupProbe": {"exec": {"command": ["true"]}},
                         "lifecycle": {"preStop": {"exec": {"command": ["true"]}}}});
    let made = pods
        .create(&PostParams::default(), &pod(sidecar, main.clone()))
        .await
        .unwrap();
    let init = &made.spec.unwrap().init_containers.unwrap()[0];
    assert_eq!(init.restart_policy.as_deref(), Some("Always"));
    assert!(init.startup_probe.is_some() && init.lifecycle.is_some());
    let refused = |e: kube::Error| match e {
        kube::Error::Api(s) => (s.code, s.message),
        other => panic!("{other:?}"),
    };
    let (code, msg) = refused(
        pods.create(
            &PostParams::default(),
            &pod(
                json!({"name": "proxy", "image": "busybox", "restartPolicy": "Never"}),
                main.clone(),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(
        msg.contains("spec.initContainers[0].restartPolicy: Unsupported value: \"Never\""),
        "{msg}"
    );
    let (code, msg) = refused(
        pods.create(
            &PostParams::default(),
            &pod(
                json!({"name": "setup", "image": "busybox", "readinessProbe": {"exec": {"command": ["true"]}}}),
                json!({"name": "app", "image": "busybox", "restartPolicy": "Always"}),
            ),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(
        msg.contains("spec.initContainers[0].readinessProbe: Forbidden: may not be set for init containers without restartPolicy=Always"),
        "{msg}"
    );
    assert!(
        msg.contains(
            "spec.containers[0].restartPolicy: Forbidden: may not be set for non-init containers"
        ),
        "{msg}"
    );
}

#[tokio::test]
async fn rbac_writes_cannot_grant_what_the_writer_does_not_hold() {
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    let server = Server::start(Options::default()).await.unwrap();
    let admin = server.client().await.unwrap();
    let base = server.kube_config().await.unwrap();
    // `delegate` may write Roles and RoleBindings in `default` and read ConfigMaps, nothing more.
    apply_yaml(
        &admin,
        "default",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: delegate}\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: rbac-writer}\n\
         rules: [{apiGroups: [rbac.authorization.k8s.io], resources: [roles, rolebindings], verbs: [get, create, update, patch]},\n\
                 {apiGroups: [''], resources: [configmaps], verbs: [get, list]}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: rbac-writer}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: rbac-writer}\n\
         subjects: [{kind: ServiceAccount, name: delegate}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: secrets-reader}\n\
         rules: [{apiGroups: [''], resources: [secrets], verbs: [get]}]",
    )
    .await;
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(admin.clone(), "default");
    let t = token(&sas, "delegate", json!({})).await.unwrap();
    let delegate = token_client(&base, Some(&t));
    let roles: Api<Role> = Api::namespaced(delegate.clone(), "default");
    let bindings: Api<RoleBinding> = Api::namespaced(delegate.clone(), "default");
    let role = |name: &str, resource: &str, verbs: &[&str]| -> Role {
        serde_json::from_value(json!({"metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": [resource], "verbs": verbs}]}))
        .unwrap()
    };
    let binding = |name: &str, role: &str| -> RoleBinding {
        serde_json::from_value(json!({"metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "delegate"}]}))
        .unwrap()
    };
    let pp = PostParams::default();
    let refusal = |what: &str, missing: &str| {
        format!(
            "{what} is forbidden: user \"system:serviceaccount:default:delegate\" (groups=[\"system:serviceaccounts\" \"system:serviceaccounts:default\" \"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:\n{missing}"
        )
    };

    // What it holds, it may grant and bind.
    roles
        .create(&pp, &role("cm-reader", "configmaps", &["get", "list"]))
        .await
        .unwrap();
    bindings
        .create(&pp, &binding("cm-reader", "cm-reader"))
        .await
        .unwrap();
    // More than it holds: refused on create, on update, and by binding a stronger Role.
    assert_eq!(
        api_status(
            roles
                .create(&pp, &role("grab", "secrets", &["get", "delete"]))
                .await
                .unwrap_err()
        ),
        (
            403,
            refusal(
                "roles.rbac.authorization.k8s.io \"grab\"",
                "{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\" \"delete\"]}"
            )
        )
    );
    let wider = Patch::Merge(
        json!({"rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "delete"]}]}),
    );
    assert_eq!(
        api_status(
            roles
                .patch("cm-reader", &PatchParams::default(), &wider)
                .await
                .unwrap_err()
        ),
        (
            403,
            refusal(
                "roles.rbac.authorization.k8s.io \"cm-reader\"",
                "{APIGroups:[\"\"], Resources:[\"configmaps\"], Verbs:[\"delete\"]}"
            )
        )
    );
    assert_eq!(
        api_status(
            bindings
                .create(&pp, &binding("secrets", "secrets-reader"))
                .await
                .unwrap_err()
        ),
        (
            403,
            refusal(
                "rolebindings.rbac.authorization.k8s.io \"secrets\"",
                "{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\"]}"
            )
        )
    );
    assert!(bindings.get("secrets").await.is_err(), "nothing was stored");

    // `bind` on that one Role, and `escalate` on Roles, lift the check, each for its own write.
    apply_yaml(
        &admin,
        "default",
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: delegate-more}\n\
         rules: [{apiGroups: [rbac.authorization.k8s.io], resources: [roles], verbs: [bind], resourceNames: [secrets-reader]}]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: delegate-more}\n\
         roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: delegate-more}\n\
         subjects: [{kind: ServiceAccount, name: delegate}]",
    )
    .await;
    bindings
        .create(&pp, &binding("secrets", "secrets-reader"))
        .await
        .unwrap();
    assert_eq!(
        api_code(
            roles
                .create(&pp, &role("grab", "pods", &["delete"]))
                .await
                .unwrap_err()
        ),
        403
    );
    let admin_roles: Api<Role> = Api::namespaced(admin.clone(), "default");
    admin_roles
        .patch(
            "delegate-more",
            &PatchParams::default(),
            &Patch::Merge(json!({"rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["escalate"]}]})),
        )
        .await
        .unwrap();
    roles
        .create(&pp, &role("grab", "pods", &["delete"]))
        .await
        .unwrap();
}
