//! A lab "cluster" for the watcher's tests and benchmark: the lab API on
//! loopback plus a lab-net lab whose Services are mirrored into the API, and a
//! `ghostwire watcher` process managing the client pod through `--netns`.

use super::*;
use k8s_openapi::api::core::v1::{Pod, Service as KService};
use kube::api::{Api, Patch, PatchParams, PostParams};
use lab_net::{Lab, Service, ServicePort};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Cluster {
    pub rt: tokio::runtime::Runtime,
    pub api: Option<lab_api::RunningServer>,
    pub api_addr: SocketAddr,
    pub data_dir: TempDir,
    pub kube: kube::Client,
    pub lab: Lab,
    pub orders: Service,
    pub orders_preview: Service,
    pub preview_be: lab_net::Pod,
    pub client: lab_net::Pod,
    pub dir: TempDir,
    pub _echo: Vec<lab_net::EchoServer>,
}

pub fn kube_service(s: &Service) -> KService {
    serde_json::from_value(s.to_kube_json("default")).unwrap()
}

impl Cluster {
    pub fn new(test: &str) -> Cluster {
        Cluster::build(test, false)
    }

    /// Like [`Cluster::new`], and every Service also has UDP 53 (backends answer on 5353).
    pub fn with_udp(test: &str) -> Cluster {
        Cluster::build(test, true)
    }

    fn build(test: &str, udp: bool) -> Cluster {
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
        let mut ports = vec![ServicePort::tcp(80, 8080).named("http")];
        let udp_ports: &[u16] = if udp {
            ports.push(ServicePort::udp(53, 5353).named("dns"));
            &[5353]
        } else {
            &[]
        };
        let mut echo = Vec::new();
        let mut services = Vec::new();
        let mut pods = Vec::new();
        for name in ["orders", "orders-preview", "payments"] {
            let pod = lab.add_pod(&format!("{name}-be")).unwrap();
            echo.push(pod.serve_echo(name, &[8080], udp_ports).unwrap());
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

    pub fn kubeconfig(&self) -> String {
        self.api
            .as_ref()
            .unwrap()
            .kubeconfig_path()
            .display()
            .to_string()
    }

    pub fn init(&self, env: &[(&str, &str)]) {
        let file = self.dir.path("services.json").display().to_string();
        let map = self.dir.path("dnat.map").display().to_string();
        let out = run_in(
            &self.client,
            &["init", "--from-file", &file, "--dnat-map", &map],
            env,
        );
        assert_ok(&out, "init");
    }

    pub fn label(&self, value: Option<&str>) {
        let api: Api<Pod> = Api::namespaced(self.kube.clone(), "default");
        let patch = serde_json::json!({"metadata": {"labels": {"role": value}}});
        self.rt
            .block_on(api.patch("client", &PatchParams::default(), &Patch::Merge(&patch)))
            .unwrap();
    }

    pub fn reaches(&self, addr: SocketAddr) -> String {
        self.client
            .tcp_request(addr)
            .unwrap_or_else(|e| format!("error: {e}"))
    }

    pub fn wait_reaches(&self, addr: SocketAddr, want: &str) {
        wait_for(&format!("client reaches {want}"), 20, || {
            self.reaches(addr) == want
        });
    }
}

/// A running `ghostwire watcher` process; killed on drop.
pub struct Watcher {
    pub child: Child,
    pub admin: SocketAddr,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl Watcher {
    pub fn start(c: &Cluster, env: &[(&str, &str)]) -> Watcher {
        let w = Watcher::spawn(c, env);
        wait_for("watcher ready", 30, || w.get("/readyz").0 == 200);
        w
    }

    /// Starts the watcher and waits for its admin endpoints, not for it to be ready.
    pub fn spawn(c: &Cluster, env: &[(&str, &str)]) -> Watcher {
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
        Watcher { child, admin, logs }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).unwrap_or((0, String::new()))
    }

    pub fn metrics(&self) -> Vec<Sample> {
        let (status, body) = self.get("/metrics");
        assert_eq!(status, 200);
        parse_metrics(&body)
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Waits for the process to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
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
