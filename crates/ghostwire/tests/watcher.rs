//! `ghostwire watcher` against the lab API (real kube-rs client, real watch) and the
//! real kernel: the watcher runs as a process on the host side, managing a lab
//! pod's network namespace through `--netns`, as a node agent would.

mod common;

use common::*;
use k8s_openapi::api::core::v1::{Pod, Service as KService};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use lab_net::{Lab, Service, ServicePort};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Cluster {
    rt: tokio::runtime::Runtime,
    api: Option<lab_api::RunningServer>,
    api_addr: SocketAddr,
    data_dir: TempDir,
    kube: kube::Client,
    lab: Lab,
    orders: Service,
    orders_preview: Service,
    preview_be: lab_net::Pod,
    client: lab_net::Pod,
    dir: TempDir,
    _echo: Vec<lab_net::EchoServer>,
}

fn kube_service(s: &Service) -> KService {
    serde_json::from_value(s.to_kube_json("default")).unwrap()
}

impl Cluster {
    fn new(test: &str) -> Cluster {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let data_dir = TempDir::new(&format!("{test}-api"));
        let api = rt
            .block_on(lab_api::Server::start(lab_api::Options {
                listen: "127.0.0.1:0".parse().unwrap(),
                data_dir: Some(data_dir.0.clone()),
                ..Default::default()
            }))
            .unwrap();
        let kube = rt.block_on(api.client()).unwrap();
        let mut lab = Lab::new(test).unwrap();
        let ports = [ServicePort::tcp(80, 8080).named("http")];
        let mut echo = Vec::new();
        let mut services = Vec::new();
        let mut pods = Vec::new();
        for name in ["orders", "orders-preview", "payments"] {
            let pod = lab.add_pod(&format!("{name}-be")).unwrap();
            echo.push(pod.serve_echo(name, &[8080], &[]).unwrap());
            services.push(lab.add_service(name, &ports, &[&pod]).unwrap());
            pods.push(pod);
        }
        let svc_api: Api<KService> = Api::namespaced(kube.clone(), "default");
        for s in &services {
            rt.block_on(svc_api.create(&PostParams::default(), &kube_service(s)))
                .unwrap();
        }
        let client = lab.add_pod("client").unwrap();
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "client", "namespace": "default", "labels": {"role": "active", "app": "shop"}},
            "spec": {"containers": [{"name": "app", "image": "shop:1"}]}
        }))
        .unwrap();
        let pod_api: Api<Pod> = Api::namespaced(kube.clone(), "default");
        rt.block_on(pod_api.create(&PostParams::default(), &pod))
            .unwrap();
        let dir = TempDir::new(test);
        let refs: Vec<&Service> = services.iter().collect();
        std::fs::write(
            dir.path("services.json"),
            lab_net::kube_json::service_list(&refs, "default"),
        )
        .unwrap();
        let api_addr = api.addr();
        Cluster {
            rt,
            api: Some(api),
            api_addr,
            data_dir,
            kube,
            lab,
            orders: services.remove(0),
            orders_preview: services.remove(0),
            preview_be: pods.remove(1),
            client,
            dir,
            _echo: echo,
        }
    }

    fn kubeconfig(&self) -> String {
        self.api
            .as_ref()
            .unwrap()
            .kubeconfig_path()
            .display()
            .to_string()
    }

    fn init(&self, env: &[(&str, &str)]) {
        let file = self.dir.path("services.json").display().to_string();
        let map = self.dir.path("dnat.map").display().to_string();
        let out = run_in(
            &self.client,
            &["init", "--from-file", &file, "--dnat-map", &map],
            env,
        );
        assert_ok(&out, "init");
    }

    fn label(&self, value: Option<&str>) {
        let api: Api<Pod> = Api::namespaced(self.kube.clone(), "default");
        let patch = serde_json::json!({"metadata": {"labels": {"role": value}}});
        self.rt
            .block_on(api.patch("client", &PatchParams::default(), &Patch::Merge(&patch)))
            .unwrap();
    }

    fn reaches(&self, addr: SocketAddr) -> String {
        self.client
            .tcp_request(addr)
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    fn wait_reaches(&self, addr: SocketAddr, want: &str) {
        wait_for(&format!("client reaches {want}"), 20, || {
            self.reaches(addr) == want
        });
    }
}

/// A running `ghostwire watcher` process; killed on drop.
struct Watcher {
    child: Child,
    admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Watcher {
    fn start(c: &Cluster, env: &[(&str, &str)]) -> Watcher {
        let mut cmd = Command::new(ghostwire());
        cmd.args([
            "watcher",
            "--netns",
            c.client.netns().name(),
            "--pod-name",
            "client",
        ])
        .env("KUBECONFIG", c.kubeconfig())
        .env("POD_NAMESPACE", "default")
        .env("GW_HTTP_ADDR", "127.0.0.1:0")
        .env("GW_POLL_INTERVAL", "200ms")
        .env("GW_DNAT_MAP", "")
        .env("GW_IPTABLES_DNAT_MAP", c.dir.path("dnat.map"))
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .split("addr=")
                    .nth(1)
                    .and_then(|a| a.split_whitespace().next())
                    && line.contains("admin endpoints listening")
                {
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let admin = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("watcher did not start: {:?}", logs.lock().unwrap()));
        let w = Watcher { child, admin, logs };
        wait_for("watcher ready", 30, || w.get("/readyz").0 == 200);
        w
    }

    fn get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).unwrap_or((0, String::new()))
    }

    fn metrics(&self) -> Vec<Sample> {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200);
        parse_metrics(&body)
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits for the process to exit by itself; returns its exit code.
    fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let mut code = None;
        wait_for("watcher exit", secs, || {
            match self.child.try_wait().unwrap() {
                Some(st) => {
                    code = st.code();
                    true
                }
                None => false,
            }
        });
        code
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn flips_follow_the_label() {
    let c = Cluster::new("wflip");
    c.init(&[]);
    let w = Watcher::start(&c, &[]);
    let orders = c.orders.addr_v4(80);
    assert_eq!(c.reaches(orders), "orders");
    let m = w.metrics();
    assert_eq!(
        metric(&m, "ghostwire_jump_state", &[("state", "off")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "ghostwire_dnat_rules", &[("service", "orders")]),
        Some(1.0)
    );

    c.label(Some("preview"));
    c.wait_reaches(orders, "orders-preview");
    wait_for("jump metric on", 10, || {
        metric(&w.metrics(), "ghostwire_jump_state", &[("state", "on")]) == Some(1.0)
    });
    let m = w.metrics();
    assert_eq!(
        metric(&m, "ghostwire_flips_total", &[("to", "on")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "ghostwire_flip_duration_seconds_count", &[]),
        Some(1.0)
    );
    assert!(
        w.logs().contains("from=active") && w.logs().contains("to=preview"),
        "{}",
        w.logs()
    );
    assert_eq!(w.get("/healthz").0, 200);

    c.label(Some("active"));
    c.wait_reaches(orders, "orders");
    c.label(Some("preview"));
    c.wait_reaches(orders, "orders-preview");
    // Label gone, or an unknown value: back to active.
    c.label(None);
    c.wait_reaches(orders, "orders");
    assert!(w.logs().contains("to=missing"), "{}", w.logs());
    c.label(Some("preview"));
    c.wait_reaches(orders, "orders-preview");
    c.label(Some("canary"));
    c.wait_reaches(orders, "orders");
    let m = w.metrics();
    assert_eq!(
        metric(&m, "ghostwire_flips_total", &[("to", "on")]),
        Some(3.0)
    );
    assert_eq!(
        metric(&m, "ghostwire_flips_total", &[("to", "off")]),
        Some(3.0)
    );
    // The jump is there exactly once when on.
    c.label(Some("preview"));
    c.wait_reaches(orders, "orders-preview");
    let rules = fingerprint(&c.client);
    assert_eq!(
        rules
            .matches("\"jump\": {\"target\": \"CANARY_DNAT\"}")
            .count()
            + rules
                .matches("\"jump\":{\"target\":\"CANARY_DNAT\"}")
                .count(),
        1,
        "{rules}"
    );
}

#[test]
fn iptables_and_ipv6_flip() {
    let c = Cluster::new("wv6");
    let env = [("GW_BACKEND", "iptables-legacy"), ("GW_IPV6", "true")];
    c.init(&env);
    let w = Watcher::start(&c, &env);
    let orders = c.orders.addr_v6(80);
    assert_eq!(c.reaches(orders), "orders");
    c.label(Some("preview"));
    c.wait_reaches(orders, "orders-preview");
    c.wait_reaches(c.orders.addr_v4(80), "orders-preview");
    c.label(Some("active"));
    c.wait_reaches(orders, "orders");
    drop(w);
}

#[test]
fn flushed_chain_is_reported_and_rebuilt() {
    let c = Cluster::new("wflush");
    c.init(&[]);
    let w = Watcher::start(&c, &[]);
    c.label(Some("preview"));
    let orders = c.orders.addr_v4(80);
    c.wait_reaches(orders, "orders-preview");
    let out = c
        .client
        .command("nft")
        .args(["flush", "chain", "inet", "ghostwire_switch", "CANARY_DNAT"])
        .output()
        .unwrap();
    assert_ok(&out, "nft flush");
    wait_for("drift counted", 20, || {
        metric(&w.metrics(), "ghostwire_errors_total", &[("type", "drift")]).unwrap_or(0.0) >= 1.0
    });
    c.wait_reaches(orders, "orders-preview");
    wait_for("healthy again", 20, || w.get("/healthz").0 == 200);
    assert!(metric(&w.metrics(), "ghostwire_rebuilds_total", &[]).unwrap() >= 1.0);
    // A table deleted outright (init never ran, say) is rebuilt the same way.
    let out = c
        .client
        .command("nft")
        .args(["delete", "table", "inet", "ghostwire_switch"])
        .output()
        .unwrap();
    assert_ok(&out, "nft delete table");
    c.wait_reaches(orders, "orders-preview");
}

#[test]
fn api_down_then_back() {
    let mut c = Cluster::new("wapi");
    c.init(&[]);
    let w = Watcher::start(&c, &[]);
    let orders = c.orders.addr_v4(80);
    c.label(Some("preview"));
    c.wait_reaches(orders, "orders-preview");
    let api = c.api.take().unwrap();
    c.rt.block_on(api.shutdown());
    // The API is gone: the watcher keeps the last known state through many polls.
    wait_for("api errors counted", 20, || {
        metric(&w.metrics(), "ghostwire_errors_total", &[("type", "api")]).unwrap_or(0.0) >= 2.0
    });
    assert_eq!(c.reaches(orders), "orders-preview");
    assert_eq!(w.get("/healthz").0, 200, "the chain is still verified");
    // Back on the same address with the same data: the watcher recovers without a restart.
    let api =
        c.rt.block_on(lab_api::Server::start(lab_api::Options {
            listen: c.api_addr,
            data_dir: Some(c.data_dir.0.clone()),
            ..Default::default()
        }))
        .unwrap();
    c.kube = c.rt.block_on(api.client()).unwrap();
    c.api = Some(api);
    c.label(Some("active"));
    c.wait_reaches(orders, "orders");
    assert!(c.lab.prefix().starts_with("gwl"));
}

#[test]
fn recreated_service_is_picked_up() {
    let mut c = Cluster::new("wrecreate");
    c.init(&[]);
    let w = Watcher::start(&c, &[("GW_REFRESH_INTERVAL", "1h")]);
    let orders = c.orders.addr_v4(80);
    c.label(Some("preview"));
    c.wait_reaches(orders, "orders-preview");
    // orders-preview is recreated with a new ClusterIP; the old one stops answering.
    let ports = [ServicePort::tcp(80, 8080).named("http")];
    let new = c
        .lab
        .add_service("orders-preview-2", &ports, &[&c.preview_be])
        .unwrap();
    let api: Api<KService> = Api::namespaced(c.kube.clone(), "default");
    c.rt.block_on(api.delete("orders-preview", &DeleteParams::default()))
        .unwrap();
    let mut svc = kube_service(&new);
    svc.metadata.name = Some("orders-preview".into());
    c.rt.block_on(api.create(&PostParams::default(), &svc))
        .unwrap();
    let old = c.orders_preview.clone();
    c.lab.remove_service(&old).unwrap();
    assert!(
        c.reaches(old.addr_v4(80)).starts_with("error"),
        "the old ClusterIP still answers"
    );
    c.wait_reaches(orders, "orders-preview");
    wait_for("map names the new ClusterIP", 20, || {
        std::fs::read_to_string(c.dir.path("dnat.map"))
            .unwrap()
            .contains(&new.ipv4.to_string())
    });
    assert!(metric(&w.metrics(), "ghostwire_rebuilds_total", &[]).unwrap() >= 1.0);
}

#[test]
fn sigterm_and_pod_deletion_end_the_watcher_cleanly() {
    let c = Cluster::new("wstop");
    c.init(&[]);
    let mut w = Watcher::start(&c, &[]);
    c.label(Some("preview"));
    let orders = c.orders.addr_v4(80);
    c.wait_reaches(orders, "orders-preview");
    let st = Command::new("kill")
        .args(["-TERM", &w.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(w.wait_exit(15), Some(0), "{}", w.logs());
    // Documented: the rules stay as they were.
    assert_eq!(c.reaches(orders), "orders-preview");

    let mut w = Watcher::start(&c, &[]);
    let api: Api<Pod> = Api::namespaced(c.kube.clone(), "default");
    c.rt.block_on(api.delete("client", &DeleteParams::default().grace_period(0)))
        .unwrap();
    assert_eq!(w.wait_exit(20), Some(0), "{}", w.logs());
    assert!(w.logs().contains("Pod"), "{}", w.logs());
}
