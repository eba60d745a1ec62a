//! Lab helpers for the proxy's tests: meshed pods (proxy-init rules + the proxy in-process, on
//! a thread in the pod's namespace), small HTTP backends, and clients run as a non-proxy uid.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use lab_net::Pod;
use mesh_config::Sources;
use mesh_proxy::Proxy;
use mesh_proxy::store::{ConfigSource, FileSource, Store};
use mesh_proxy::tls::IdentitySource;
use netrules::{Backend, BackendKind};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The proxy runs in the test process as root, so uid 0 is "the proxy's uid" here; clients
/// run as this uid, which is redirected.
pub const CLIENT_UID: &str = "1000";

pub struct Meshed {
    pub pod: Pod,
    pub store: Store,
    pub config: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Meshed {
    /// proxy-init's rules (nftables, proxy uid 0) and a proxy reading `config` (YAML).
    pub fn start(pod: &Pod, knobs: &[(&str, &str)]) -> Meshed {
        Meshed::start_with(pod, knobs, None, None)
    }

    /// [`Meshed::start`], with the routing config from `source` instead of the file and mesh
    /// TLS from `identity`, when given (e.g. the controller's stream and certificates).
    pub fn start_with(
        pod: &Pod,
        knobs: &[(&str, &str)],
        source: Option<Box<dyn ConfigSource>>,
        identity: Option<Arc<dyn IdentitySource>>,
    ) -> Meshed {
        let dir = std::env::temp_dir().join(format!(
            "gw-mesh-{}-{}",
            std::process::id(),
            pod.netns().name()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("routes.yaml");
        std::fs::write(&config, "services: []\n").unwrap();
        let mut given: Vec<(String, String)> = vec![
            (mesh_config::PROXY_UID.into(), "0".into()),
            (mesh_config::CONFIG.into(), config.display().to_string()),
            (mesh_config::CONFIG_POLL.into(), "100ms".into()),
        ];
        given.extend(knobs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let sources = Sources {
            given: given.into_iter().collect(),
            ..Sources::default()
        };
        proxy_init(pod, &sources);
        let settings = sources.proxy_settings().unwrap();
        let store = Store::default();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (st, cfg) = (store.clone(), config.clone());
        let poll = settings.config_poll;
        let thread = spawn_in(pod, move || async move {
            let src: Box<dyn ConfigSource> = match source {
                Some(s) => s,
                None => {
                    let src = FileSource { path: cfg, poll };
                    src.load_once(&st).unwrap();
                    Box::new(src)
                }
            };
            let proxy = Proxy::bind_with(settings, st, Some(src), identity)
                .await
                .unwrap();
            ready_tx.send(()).unwrap();
            proxy
                .serve(async {
                    let _ = stop_rx.await;
                })
                .await;
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Meshed {
            pod: pod.clone(),
            store,
            config,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Writes a new routing config and waits until the proxy has swapped it in.
    pub fn configure(&self, yaml: &str) {
        let before = self.store.load().generation;
        // Whole or not at all (as the kubelet swaps a ConfigMap volume): a poll that read a
        // half-written file cut at a line could take its first services for the new config.
        let tmp = self.config.with_extension("tmp");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &self.config).unwrap();
        // Bounded generously: a machine under load may take seconds to notice the file.
        for _ in 0..600 {
            if self.store.load().generation > before {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("config not picked up: {yaml}");
    }

    pub fn metrics(&self) -> String {
        self.pod
            .http_get(SocketAddr::new(self.pod.ipv4.into(), 4191), "/metrics")
            .unwrap()
    }

    /// SIGTERM's equivalent: starts the drain and returns at once.
    pub fn begin_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    pub fn join(&mut self) {
        self.begin_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Meshed {
    fn drop(&mut self) {
        self.join();
        let _ = std::fs::remove_dir_all(self.config.parent().unwrap());
    }
}

/// Runs `task` on its own thread, on a current-thread runtime inside `pod`'s network namespace
/// (what it binds and dials is the pod's), until it ends.
pub fn spawn_in<F, Fut>(pod: &Pod, task: F) -> std::thread::JoinHandle<()>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let pod = pod.clone();
    std::thread::spawn(move || {
        pod.netns()
            .run(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(task())
            })
            .unwrap()
    })
}

/// proxy-init's rules (nftables) in `pod`, from the knobs in `sources`.
pub fn proxy_init(pod: &Pod, sources: &Sources) {
    let init = sources.init_settings().unwrap();
    let b = Backend::new(BackendKind::Nftables);
    pod.netns()
        .run(|| mesh_proxy_init::rules::apply(&b, &init))
        .unwrap()
        .unwrap();
}

/// A throwaway mesh CA (rcgen) that issues SPIFFE leaf certificates as PEM files.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        Ca {
            issuer: Issuer::new(p, key),
            pem: cert.pem(),
        }
    }

    /// Writes `<name>.crt`, `<name>.key` and `<name>.roots` (the anchors) for `id` into `dir`;
    /// returns the knobs that point the proxy at them.
    pub fn issue(&self, dir: &Path, name: &str, id: &str) -> Vec<(&'static str, String)> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = vec![SanType::URI(id.to_string().try_into().unwrap())];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        let path = |ext: &str| dir.join(format!("{name}.{ext}"));
        // Key first: a reader that catches the files half-written refuses the mismatch and
        // keeps what it had.
        std::fs::write(path("key"), key.serialize_pem()).unwrap();
        std::fs::write(path("crt"), cert.pem()).unwrap();
        std::fs::write(path("roots"), &self.pem).unwrap();
        let s = |p: PathBuf| p.display().to_string();
        vec![
            (mesh_config::TLS_CERT, s(path("crt"))),
            (mesh_config::TLS_KEY, s(path("key"))),
            (mesh_config::TLS_ROOTS, s(path("roots"))),
        ]
    }
}

/// A routing config with one service at `vip` and one endpoint `ep`, meshed with `identity`.
pub fn routes(vip: SocketAddr, ep: SocketAddr, identity: Option<&str>) -> String {
    let ids = identity.map_or(String::new(), |id| {
        format!(", identities: {{\"{ep}\": \"{id}\"}}")
    });
    format!(
        "services:\n  - name: app-b.app-b\n    addresses: [\"{vip}\"]\n    backends:\n      - {{name: v1, endpoints: [\"{ep}\"]{ids}}}\n"
    )
}

/// Value of one sample line of the metrics text (0 if absent).
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A command in `pod` as the client uid.
pub fn as_client(pod: &Pod, program: &str, args: &[&str]) -> Output {
    pod.command("setpriv")
        .args([
            &format!("--reuid={CLIENT_UID}"),
            &format!("--regid={CLIENT_UID}"),
            "--clear-groups",
            "--",
            program,
        ])
        .args(args)
        .output()
        .unwrap()
}

pub fn curl(pod: &Pod, args: &[&str]) -> String {
    let mut all = vec!["-s", "--max-time", "10"];
    all.extend_from_slice(args);
    let out = as_client(pod, "curl", &all);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An HTTP/1.1 + HTTP/2 backend on `[::]:port` in `pod`, served on `rt`:
/// `/hello` answers its name; `/flaky` fails every other request with 500; `/fail` always 500;
/// `/slow` answers after 2 s; `/headers` lists the request's headers.
pub struct Backend2 {
    pub hits: Arc<AtomicU64>,
    /// Connections accepted.
    pub conns: Arc<AtomicU64>,
}

pub fn http_backend(rt: &tokio::runtime::Runtime, pod: &Pod, name: &str, port: u16) -> Backend2 {
    let l = pod.listen_tcp((Ipv6Addr::UNSPECIFIED, port)).unwrap();
    l.set_nonblocking(true).unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let conns = Arc::new(AtomicU64::new(0));
    let (name, h, c) = (Arc::<str>::from(name), hits.clone(), conns.clone());
    rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            c.fetch_add(1, Ordering::SeqCst);
            let (name, h) = (name.clone(), h.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (name, h) = (name.clone(), h.clone());
                    async move {
                        let n = h.fetch_add(1, Ordering::SeqCst);
                        let (status, body) = match req.uri().path() {
                            "/flaky" if n % 2 == 0 => {
                                (StatusCode::INTERNAL_SERVER_ERROR, "oops\n".to_string())
                            }
                            "/fail" => (StatusCode::INTERNAL_SERVER_ERROR, "down\n".to_string()),
                            "/slow" => {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                                (StatusCode::OK, format!("{name}\n"))
                            }
                            "/headers" => {
                                let mut v: Vec<String> = req
                                    .headers()
                                    .iter()
                                    .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
                                    .collect();
                                v.sort();
                                (StatusCode::OK, v.join("\n") + "\n")
                            }
                            _ => (StatusCode::OK, format!("{name}\n")),
                        };
                        let mut r = Response::new(Full::new(Bytes::from(body)));
                        *r.status_mut() = status;
                        r.headers_mut().insert("x-backend", name.parse().unwrap());
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Backend2 { hits, conns }
}
