//! The controller's config and certificates, in traffic: meshed lab Pods (proxy-init's rules
//! and the proxy, in-process, as in mesh-proxy's own tests) take their config (and their
//! certificates) from the controller (its gRPC listener in a lab pod, its watches on the lab
//! API). An HTTPRoute's weight change reaches every proxy and moves the split they send;
//! certificates renewed twice under continuous requests fail none of them.

mod common;
#[path = "../../mesh-proxy/tests/common/mod.rs"]
mod meshed;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use lab_net::{Lab, Pod};
use mesh_controller::ca::{Authority, CaHandle, spiffe_id};
use mesh_controller::feed::ControllerSource;
use mesh_controller::gateway::HTTPRoute;
use mesh_controller::identity::{CertStore, Renewer};
use meshed::{Meshed, as_client, curl, http_backend};
use serde_json::json;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A Service `name` (port 80 → 8080) and its EndpointSlice listing `ips`; its ClusterIP.
pub async fn service(admin: &kube::Client, name: &str, ips: &[Ipv4Addr]) -> String {
    let eps: Vec<_> = ips.iter().map(|a| (*a, None)).collect();
    service_of_pods(admin, name, &eps).await
}

/// [`service`], each endpoint with the Pod it belongs to (its `targetRef`), if given.
pub async fn service_of_pods(
    admin: &kube::Client,
    name: &str,
    ips: &[(Ipv4Addr, Option<&str>)],
) -> String {
    let s: Service = serde_json::from_value(json!({"metadata": {"name": name},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
    .unwrap();
    let s = Api::<Service>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &s)
        .await
        .unwrap();
    let endpoints: Vec<_> = ips
        .iter()
        .map(|(a, pod)| {
            let mut e = json!({"addresses": [a.to_string()], "conditions": {"ready": true}});
            if let Some(p) = pod {
                e["targetRef"] = json!({"kind": "Pod", "namespace": "default", "name": p});
            }
            e
        })
        .collect();
    let e: EndpointSlice = serde_json::from_value(json!({"metadata": {"name": format!("{name}-x"),
        "labels": {"kubernetes.io/service-name": name}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080}],
        "endpoints": endpoints}))
    .unwrap();
    Api::<EndpointSlice>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &e)
        .await
        .unwrap();
    s.spec.unwrap().cluster_ip.unwrap()
}

/// `n` requests from `pod` to `url` (one curl): how many each of v1 and v2 answered.
fn count(pod: &Pod, url: &str, n: usize) -> (usize, usize) {
    let urls: Vec<&str> = std::iter::repeat_n(url, n).collect();
    let out = curl(pod, &urls);
    let v1 = out.lines().filter(|l| *l == "v1").count();
    let v2 = out.lines().filter(|l| *l == "v2").count();
    assert_eq!(v1 + v2, n, "every request answered: {out}");
    (v1, v2)
}

/// Waits (bounded) until the proxy's store routes `vip` with a split whose second weight is
/// `w2`.
fn wait_split(mesh: &Meshed, vip: SocketAddr, w2: u32) {
    for _ in 0..600 {
        let snap = mesh.store.load();
        let ok = snap.service(vip).is_some_and(|s| {
            s.routes
                .first()
                .is_some_and(|r| r.split.get(1).map(|x| x.1) == Some(w2))
        });
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the proxy never got the split with weight {w2}");
}

/// The controller serving from `pod`'s namespace on port 8090, its watches on `admin`'s API.
fn controller(
    rt: &tokio::runtime::Runtime,
    admin: &kube::Client,
    pod: &Pod,
    ca: Option<mesh_controller::ca::CaHandle>,
) -> (String, Vec<tokio::task::JoinHandle<()>>) {
    let model = mesh_controller::model::Model::default();
    let listener = pod.listen_tcp((Ipv4Addr::UNSPECIFIED, 8090)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let mut c = mesh_controller::server::Controller::new(
        model.clone(),
        Arc::new(mesh_controller::auth::TokenReviewer::new(
            admin.clone(),
            common::AUDIENCE,
        )),
        mesh_controller::metrics::Metrics::default(),
    );
    if let Some(ca) = ca {
        c = c.with_ca(ca);
    }
    let _guard = rt.enter();
    let admin = admin.clone();
    let watch = rt.spawn(async move {
        let _ = mesh_controller::watch::run(admin, model, "cluster.local".into()).await;
    });
    let serving = rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(listener).unwrap();
        mesh_controller::server::serve(c, l, std::future::pending()).await;
    });
    (format!("http://{}:8090", pod.ipv4), vec![watch, serving])
}

/// A temporary directory for tokens, removed on drop.
struct Dir(std::path::PathBuf);

impl Dir {
    fn new(what: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("gw-{what}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn an_httproute_weight_change_reaches_every_proxy_and_moves_the_traffic() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut lab = Lab::new("mesh-ctl").unwrap();
    let clients = [lab.add_pod("c1").unwrap(), lab.add_pod("c2").unwrap()];
    let v1 = lab.add_pod("v1").unwrap();
    let v2 = lab.add_pod("v2").unwrap();
    let ctl = lab.add_pod("ctl").unwrap();
    let _b1 = http_backend(&rt, &v1, "v1", 8080);
    let _b2 = http_backend(&rt, &v2, "v2", 8080);

    // The lab API, the route's Services and the route: 90 % v1, 10 % v2.
    let api = rt
        .block_on(lab_api::Server::start(lab_api::Options::default()))
        .unwrap();
    let admin = rt.block_on(api.client()).unwrap();
    let (vip, tokens) = rt.block_on(async {
        mesh_controller::gateway::install_crds(&admin)
            .await
            .unwrap();
        let vip = service(&admin, "web", &[v1.ipv4]).await;
        service(&admin, "web-v1", &[v1.ipv4]).await;
        service(&admin, "web-v2", &[v2.ipv4]).await;
        let r: HTTPRoute = serde_json::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "web-split"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                     "rules": [{"backendRefs": [{"name": "web-v1", "port": 80, "weight": 90},
                                                {"name": "web-v2", "port": 80, "weight": 10}]}]}}))
        .unwrap();
        Api::<HTTPRoute>::namespaced(admin.clone(), "default")
            .create(&PostParams::default(), &r)
            .await
            .unwrap();
        let c1 = common::pod_token(&admin, "c1", &[common::AUDIENCE]).await.0;
        let c2 = common::pod_token(&admin, "c2", &[common::AUDIENCE]).await.0;
        (vip, [c1, c2])
    });
    let vip: SocketAddr = format!("{vip}:80").parse().unwrap();
    let (address, tasks) = controller(&rt, &admin, &ctl, None);

    // Two meshed clients fed by the controller.
    let dir = Dir::new("mesh-ctl-routes");
    let meshes: Vec<Meshed> = clients
        .iter()
        .zip(&tokens)
        .enumerate()
        .map(|(i, (pod, t))| {
            let path = dir.write(&format!("token-{i}"), t);
            let src = ControllerSource::new(vec![address.clone()], path);
            Meshed::start_with(pod, &[], Some(Box::new(src)), None)
        })
        .collect();
    let url = format!("http://{vip}/hello");
    let n = 200;
    for (pod, mesh) in clients.iter().zip(&meshes) {
        wait_split(mesh, vip, 10);
        let (a, b) = count(pod, &url, n);
        // 10 % of 200 is 20; outside 5..=50 has a probability far below 1e-6.
        assert!((5..=50).contains(&b), "before: v1 {a}, v2 {b}");
    }

    // The route's weights flip: both proxies get it and send ~90 % to v2.
    rt.block_on(
        Api::<HTTPRoute>::namespaced(admin.clone(), "default").patch(
            "web-split",
            &PatchParams::default(),
            &Patch::Json::<()>(
                serde_json::from_value(json!([
                    {"op": "replace", "path": "/spec/rules/0/backendRefs/0/weight", "value": 10},
                    {"op": "replace", "path": "/spec/rules/0/backendRefs/1/weight", "value": 90}]))
                .unwrap(),
            ),
        ),
    )
    .unwrap();
    for (pod, mesh) in clients.iter().zip(&meshes) {
        wait_split(mesh, vip, 90);
        let (a, b) = count(pod, &url, n);
        assert!((150..=195).contains(&b), "after: v1 {a}, v2 {b}");
    }
    drop(meshes);
    tasks.iter().for_each(|t| t.abort());
}

/// A task run on its own thread inside a lab pod's network namespace (what it dials comes from
/// that pod); stopped and joined on drop.
struct InPod {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InPod {
    fn run<F, Fut>(pod: &Pod, task: F) -> InPod
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = meshed::spawn_in(pod, move || async move {
            tokio::select! {
                _ = task() => {}
                _ = stopped => {}
            }
        });
        InPod {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for InPod {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The serial of the leaf of `chain`.
fn serial(chain: &[rustls::pki_types::CertificateDer<'_>]) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    c.tbs_certificate.raw_serial_as_string()
}

/// Waits (bounded, 90 s) until `f` holds.
fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Issue 14 point 7, renewal under load: six-second certificates from the controller (renewed
/// every four seconds) in a client and a server proxy; while requests run without pause, both
/// renew twice, and no request fails. Two loads run side by side: the app's requests through
/// both proxies (curl as the app's uid; the client proxy keeps its upstream mesh TLS connection
/// open across renewals), and fresh mesh TLS connections made with the client proxy's current
/// certificate to the server proxy, one request each, so every renewed certificate is used in
/// new handshakes on both sides.
#[test]
fn certificates_renew_twice_under_load_without_a_failed_request() {
    const TD: &str = "cluster.local";
    let id = |sa: &str| spiffe_id(TD, "default", sa);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut lab = Lab::new("mesh-renew").unwrap();
    let client = lab.add_pod("client").unwrap();
    let server = lab.add_pod("server").unwrap();
    let ctl = lab.add_pod("ctl").unwrap();
    let _app = http_backend(&rt, &server, "srv", 8080);

    let api = rt
        .block_on(lab_api::Server::start(lab_api::Options::default()))
        .unwrap();
    let admin = rt.block_on(api.client()).unwrap();
    let (vip, tokens) = rt.block_on(async {
        let mut tokens = vec![];
        for name in ["client", "server"] {
            // A meshed Pod, as the injector makes it: its proxy has GW_MESH_IDENTITY, which is
            // how the controller knows its endpoints want mesh TLS.
            let sa = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
            Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(admin.clone(), "default")
                .create(&PostParams::default(), &sa)
                .await
                .unwrap();
            let pod = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
                "serviceAccountName": name,
                "containers": [{"name": "app", "image": "app"}, {"name": "ghostwire-proxy",
                    "image": "ghostwire", "env": [{"name": mesh_config::IDENTITY, "value": id(name)}]}]}}))
            .unwrap();
            Api::<k8s_openapi::api::core::v1::Pod>::namespaced(admin.clone(), "default")
                .create(&PostParams::default(), &pod)
                .await
                .unwrap();
            tokens.push(common::pod_token_as(&admin, name, name, &[common::AUDIENCE]).await.0);
        }
        let vip = service_of_pods(&admin, "app", &[(server.ipv4, Some("server"))]).await;
        (vip, tokens)
    });
    let (authority, _) =
        Authority::generate(TD, Duration::from_secs(6), SystemTime::now()).unwrap();
    let (address, tasks) = controller(&rt, &admin, &ctl, Some(CaHandle::new(authority)));

    // Both proxies: config and certificates from the controller; every certificate's serial
    // recorded as it arrives.
    let dir = Dir::new("mesh-ctl-renew");
    let mut renewers = vec![];
    let mut meshes = vec![];
    let mut issued: Vec<Arc<Mutex<Vec<String>>>> = vec![];
    let mut stores = vec![];
    for (pod, token) in [&client, &server].into_iter().zip(&tokens) {
        let path = dir.write(&format!("{}-token", pod.name), token);
        let store = Arc::new(CertStore::default());
        let serials = Arc::new(Mutex::new(vec![]));
        let renewer = Renewer {
            addresses: vec![address.clone()],
            token_path: path.clone(),
            spiffe_id: id(&pod.name),
            timeout: Duration::from_secs(5),
            max_backoff: Duration::from_millis(500),
        };
        let (st, se) = (store.clone(), serials.clone());
        renewers.push(InPod::run(pod, move || {
            renewer.run(st, move |i| se.lock().unwrap().push(serial(&i.key.cert)))
        }));
        let src = ControllerSource::new(vec![address.clone()], path);
        meshes.push(Meshed::start_with(
            pod,
            &[],
            Some(Box::new(src)),
            Some(store.clone() as Arc<dyn mesh_proxy::tls::IdentitySource>),
        ));
        issued.push(serials);
        stores.push(store);
    }
    let server_ep = SocketAddr::new(server.ipv4.into(), 8080);
    wait_for(
        "both certificates and the server's identity in the client's config",
        || {
            stores.iter().all(|s| s.current().is_some())
                && meshes[0].store.load().identity(server_ep).is_some()
        },
    );
    let count = |i: usize| issued[i].lock().unwrap().len();
    let before = [count(0), count(1)];

    // Load 1: the app's requests through both proxies, one after another without pause.
    let stop = dir.0.join("stop");
    let script = format!(
        "while [ ! -e {stop} ]; do curl -s -o /dev/null -w '%{{http_code}}\\n' --max-time 10 http://{vip}/hello; done",
        stop = stop.display()
    );
    let app_load = {
        let client = client.clone();
        std::thread::spawn(move || as_client(&client, "sh", &["-c", &script]))
    };
    // Load 2: new mesh TLS connections as the client proxy, one request each.
    // Requests answered, the server serials they met (in order, repeats collapsed), failures.
    type Fresh = (u64, Vec<String>, Vec<String>);
    let fresh: Arc<Mutex<Fresh>> = Arc::default();
    let running = Arc::new(AtomicBool::new(true));
    let tls_load = {
        let (fresh, running, store) = (fresh.clone(), running.clone(), stores[0].clone());
        let expected = id("server");
        InPod::run(&client, move || async move {
            while running.load(Ordering::SeqCst) {
                // A new client config each time: no session to resume, so every handshake is
                // a full one and shows the certificates current on both sides.
                let tls = mesh_proxy::tls::MeshTls::new(store.clone());
                let answer = async {
                    let tcp = tokio::net::TcpStream::connect(server_ep).await?;
                    let mut s = tls.connect(tcp, &expected).await?;
                    let seen = serial(s.get_ref().1.peer_certificates().unwrap_or_default());
                    s.write_all(b"GET /hello HTTP/1.1\r\nhost: app\r\nconnection: close\r\n\r\n")
                        .await?;
                    let mut body = String::new();
                    s.read_to_string(&mut body).await?;
                    Ok::<_, std::io::Error>((seen, body))
                };
                let result = tokio::time::timeout(Duration::from_secs(10), answer).await;
                {
                    let mut f = fresh.lock().unwrap();
                    match result {
                        Ok(Ok((seen, body))) if body.starts_with("HTTP/1.1 200") => {
                            f.0 += 1;
                            if f.1.last() != Some(&seen) {
                                f.1.push(seen);
                            }
                        }
                        other => f.2.push(format!("{other:?}")),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    wait_for(
        "two renewals in each proxy during the load, met by new handshakes",
        || {
            count(0) >= before[0] + 2
                && count(1) >= before[1] + 2
                && fresh.lock().unwrap().1.len() >= 3
        },
    );
    running.store(false, Ordering::SeqCst);
    drop(tls_load);
    std::fs::write(&stop, "").unwrap();
    let out = app_load.join().unwrap();
    let codes = String::from_utf8_lossy(&out.stdout);
    let total = codes.lines().count();
    let failed: Vec<&str> = codes.lines().filter(|c| *c != "200").collect();
    assert!(total > 0, "no request ran: {out:?}");
    assert!(
        failed.is_empty(),
        "{} of {total} app requests failed: {failed:?}",
        failed.len()
    );
    let (ok, server_serials, errors) = fresh.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} of {} fresh mesh TLS requests failed: {errors:?}",
        errors.len(),
        ok as usize + errors.len()
    );
    // The serials really changed: three certificates each (the first and two renewals), all
    // different, and new handshakes met at least three of the server's.
    for (who, s) in ["client", "server"].iter().zip(&issued) {
        let s = s.lock().unwrap().clone();
        let distinct: std::collections::BTreeSet<&String> = s.iter().collect();
        assert!(
            s.len() >= 3 && distinct.len() == s.len(),
            "{who}'s serials: {s:?}"
        );
    }
    assert!(
        server_serials.len() >= 3,
        "new handshakes saw the server's serials {server_serials:?}"
    );
    drop(meshes);
    drop(renewers);
    tasks.iter().for_each(|t| t.abort());
}
