//! What the benchmarks in this directory share (`#[path]`-included by each): processes in lab
//! Pods (as the proxy's uid, killed on drop or on a signal), `ghostwire proxy` started and waited for, the
//! open-loop generators (HTTP/1.1 and HTTP/2), and the statistics.

#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use lab_net::Pod;
use lab_net::bench::{TICKS_PER_SECOND, cpu_ticks, status_kib};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const PROXY_UID: &str = "1337";
/// Connections of the HTTP/1.1 open-loop generator (its bound on requests in flight).
pub const OPEN_LOOP_CONNECTIONS: usize = 64;

pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?}: not a valid value")),
        Err(_) => default,
    }
}

/// A fixed rate from the knob `name`: a whole number of requests/s, at least 1.
pub fn parse_rate(name: &str, v: &str) -> u64 {
    match v.trim().parse() {
        Ok(r) if r > 0 => r,
        _ => panic!("{name}: {v:?} is not a rate (a whole number of requests/s, at least 1)"),
    }
}

/// A process started in a Pod; stopped on drop (see [`STOP_GRACE`]), or killed by
/// [`clean_up_on_signal`].
pub struct Proc {
    pub child: Child,
}

/// The pids of the [`Proc`]s alive, for the signal handler, which holds none of them.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

impl Proc {
    pub fn start(mut c: Command) -> Proc {
        let child = c.spawn().unwrap();
        RUNNING.lock().unwrap().push(child.id());
        Proc { child }
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn ticks(&self) -> u64 {
        cpu_ticks(self.pid()).unwrap_or(0)
    }
    pub fn rss_kib(&self) -> u64 {
        status_kib(self.pid(), "VmRSS:").unwrap_or(0)
    }
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// How long a stopped [`Proc`] has between SIGTERM and SIGKILL. A proxy stopped by SIGTERM
/// exits through its drain and `main`, which is when a build instrumented for profile-guided
/// optimisation writes what it counted (scripts/pgo.sh, which also shortens the drain).
pub const STOP_GRACE: Duration = Duration::from_secs(3);

impl Drop for Proc {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        if kill(pid, Signal::SIGTERM).is_ok() {
            let deadline = Instant::now() + STOP_GRACE;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        RUNNING.lock().unwrap().retain(|&p| p != self.child.id());
    }
}

/// On SIGINT or SIGTERM: kills every [`Proc`] still running and removes every lab of this
/// process, then exits 130. Without it an interrupted run left its namespaces behind, and, on
/// a SIGTERM, its proxies and apps running in them.
pub fn clean_up_on_signal() {
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate()).unwrap();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        });
        for pid in RUNNING.lock().unwrap().drain(..) {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
        if let Err(e) = lab_net::shutdown_all() {
            eprintln!("bench: lab cleanup incomplete: {e}");
        }
        eprintln!("bench: interrupted, processes killed and labs removed");
        std::process::exit(130);
    });
}

/// `program args…` in `pod` with `env` (as root, so proxy-init's rules apply to it), its
/// output discarded; killed on drop. The benches' apps and peers.
pub fn spawn(pod: &Pod, program: &Path, args: &[&str], env: &[(&str, String)]) -> Proc {
    let mut c = pod.command(program);
    c.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    Proc::start(c)
}

/// proxy-init's rules in each of `pods`, for the proxy's uid and the `given` mesh knobs.
pub fn redirect(pods: &[&Pod], given: &[(&str, String)]) {
    let s = mesh_config::Sources {
        given: [(mesh_config::PROXY_UID, PROXY_UID.to_string())]
            .iter()
            .chain(given)
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        ..mesh_config::Sources::default()
    };
    for pod in pods {
        crate::common::proxy_init(pod, &s);
    }
}

/// The `/metrics` text of the proxy's admin port (4191) in `pod`; empty when it does not answer.
pub fn proxy_metrics(pod: &Pod) -> String {
    pod.http_get(SocketAddr::new(pod.ipv4.into(), 4191), "/metrics")
        .unwrap_or_default()
}

/// `program args…` in `pod` as the proxy's uid (so proxy-init does not redirect it), logging
/// to `log`.
pub fn as_proxy(pod: &Pod, program: &Path, log: &Path) -> Command {
    let mut c = pod.command("setpriv");
    c.args([
        &format!("--reuid={PROXY_UID}"),
        &format!("--regid={PROXY_UID}"),
        "--clear-groups",
        "--",
    ])
    .arg(program)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(log).unwrap());
    c
}

pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn ghostwire_proxy(
    bin: &Path,
    pod: &Pod,
    dir: &Path,
    env: &[(&'static str, String)],
    name: &str,
) -> Proc {
    let mut c = as_proxy(pod, bin, &dir.join(format!("{name}.log")));
    c.arg("proxy").env("GW_LOG_LEVEL", "warn");
    for (k, v) in env {
        c.env(k, v);
    }
    let p = Proc::start(c);
    let admin = SocketAddr::new(pod.ipv4.into(), 4191);
    wait_until(&format!("{name} ready"), || {
        pod.http_get(admin, "/ready").is_ok()
    });
    p
}

/// What one load run measured.
#[derive(Default, Clone)]
pub struct Run {
    pub requests: u64,
    pub errors: u64,
    pub seconds: f64,
    /// Latency quantiles in µs: p50, p99, p99.9.
    pub q: [f64; 3],
    /// CPU seconds used by the path's proxies (both together) during the run.
    pub cpu: f64,
    /// Highest RSS of each proxy sampled during the run, kB.
    pub rss: Vec<u64>,
}

impl Run {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }
}

pub fn quantiles(mut v: Vec<u64>) -> [f64; 3] {
    if v.is_empty() {
        return [f64::NAN; 3];
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize] as f64;
    [at(0.5), at(0.99), at(0.999)]
}

/// Runs `load` while sampling `proxies`' CPU and RSS.
pub fn measured(proxies: &[&Proc], load: impl FnOnce() -> Run) -> Run {
    let t0: Vec<u64> = proxies.iter().map(|q| q.ticks()).collect();
    let stop = Arc::new(AtomicU64::new(0));
    let pids: Vec<u32> = proxies.iter().map(|q| q.pid()).collect();
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut max = vec![0u64; pids.len()];
            while stop.load(Ordering::SeqCst) == 0 {
                for (m, pid) in max.iter_mut().zip(&pids) {
                    *m = (*m).max(status_kib(*pid, "VmRSS:").unwrap_or(0));
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            max
        })
    };
    let mut run = load();
    stop.store(1, Ordering::SeqCst);
    run.rss = sampler.join().unwrap();
    run.cpu = proxies
        .iter()
        .zip(t0)
        .map(|(q, t)| q.ticks().saturating_sub(t))
        .sum::<u64>() as f64
        / TICKS_PER_SECOND;
    run
}

/// Open-loop generators: request i is due at start + i/rate whatever happened to the ones
/// before it. Latency runs from the moment a request is due when it leaves late (no
/// coordinated omission), and from when it leaves when it leaves on time (tokio's timer wakes
/// on 1 ms ticks: that lag is the generator's, not the path's).
#[derive(Clone, Copy)]
pub enum Proto {
    /// [`OPEN_LOOP_CONNECTIONS`] keep-alive connections; each takes the next due request when
    /// it is free.
    Http1,
    /// [`OPEN_LOOP_H2_CONNECTIONS`] connections; each due request leaves at once as a new
    /// stream on the next connection in turn. (`h2load --rps` sends in bursts and times from
    /// the burst: its direct path showed a p50 of 9 ms at 10,000/s.)
    Http2,
}

/// Connections of the HTTP/2 open-loop generator, as h2load's clients at saturation.
pub const OPEN_LOOP_H2_CONNECTIONS: usize = 4;

/// When the next request is due, and the instant its latency counts from.
struct Schedule {
    start: tokio::time::Instant,
    interval: Duration,
    total: u64,
    next: AtomicU64,
}

impl Schedule {
    /// Waits for request i's turn; `None` when all are sent.
    async fn next(&self) -> Option<tokio::time::Instant> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i >= self.total {
            return None;
        }
        let due = self.start + self.interval.mul_f64(i as f64);
        Some(if due > tokio::time::Instant::now() {
            tokio::time::sleep_until(due).await;
            tokio::time::Instant::now()
        } else {
            due
        })
    }
}

/// `GET /hello`: origin-form for HTTP/1.1, absolute for HTTP/2's pseudo-headers.
fn get(vip: SocketAddr, proto: Proto) -> http::Request<Empty<Bytes>> {
    let uri = match proto {
        Proto::Http1 => "/hello".to_string(),
        Proto::Http2 => format!("http://{vip}/hello"),
    };
    http::Request::get(uri)
        .header(http::header::HOST, vip.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap()
}

/// Whether a response is a 200 whose body arrived whole.
async fn complete(r: Result<http::Response<hyper::body::Incoming>, hyper::Error>) -> bool {
    match r {
        Ok(r) => r.status() == 200 && r.into_body().collect().await.is_ok(),
        Err(_) => false,
    }
}

pub fn open_loop(client: &Pod, vip: SocketAddr, proto: Proto, rate: u64, seconds: u64) -> Run {
    let n = match proto {
        Proto::Http1 => OPEN_LOOP_CONNECTIONS,
        Proto::Http2 => OPEN_LOOP_H2_CONNECTIONS,
    };
    let socks: Vec<std::net::TcpStream> = client
        .netns()
        .run(|| {
            (0..n)
                .map(|_| std::net::TcpStream::connect(vip))
                .collect::<std::io::Result<Vec<_>>>()
        })
        .unwrap()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let ios = socks.into_iter().map(|s| {
            s.set_nonblocking(true).unwrap();
            s.set_nodelay(true).unwrap();
            hyper_util::rt::TokioIo::new(tokio::net::TcpStream::from_std(s).unwrap())
        });
        let schedule = Arc::new(Schedule {
            start: tokio::time::Instant::now() + Duration::from_millis(20),
            interval: Duration::from_secs_f64(1.0 / rate as f64),
            total: rate * seconds,
            next: AtomicU64::new(0),
        });
        let errors = Arc::new(AtomicU64::new(0));
        let mut lat = Vec::new();
        match proto {
            Proto::Http1 => {
                let mut tasks = tokio::task::JoinSet::new();
                for io in ios {
                    let (schedule, errors) = (schedule.clone(), errors.clone());
                    tasks.spawn(async move {
                        let (mut send, conn) =
                            hyper::client::conn::http1::handshake(io).await.unwrap();
                        tokio::spawn(conn);
                        let mut lat = Vec::new();
                        while let Some(from) = schedule.next().await {
                            if !complete(send.send_request(get(vip, proto)).await).await {
                                errors.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            lat.push(from.elapsed().as_micros() as u64);
                        }
                        lat
                    });
                }
                while let Some(r) = tasks.join_next().await {
                    lat.extend(r.unwrap());
                }
            }
            Proto::Http2 => {
                let mut senders = Vec::new();
                for io in ios {
                    let exec = hyper_util::rt::TokioExecutor::new();
                    let (send, conn) = hyper::client::conn::http2::handshake(exec, io)
                        .await
                        .unwrap();
                    tokio::spawn(conn);
                    senders.push(send);
                }
                let mut inflight = tokio::task::JoinSet::new();
                let mut turn = 0;
                while let Some(from) = schedule.next().await {
                    let mut send = senders[turn % senders.len()].clone();
                    turn += 1;
                    inflight.spawn(async move {
                        complete(send.send_request(get(vip, proto)).await)
                            .await
                            .then(|| from.elapsed().as_micros() as u64)
                    });
                    while let Some(r) = inflight.try_join_next() {
                        lat.extend(r.unwrap());
                    }
                }
                while let Some(r) = inflight.join_next().await {
                    match r.unwrap() {
                        Some(l) => lat.push(l),
                        None => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        let seconds = (tokio::time::Instant::now() - schedule.start).as_secs_f64();
        Run {
            requests: lat.len() as u64,
            errors: errors.load(Ordering::Relaxed),
            seconds,
            q: quantiles(lat),
            ..Run::default()
        }
    })
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
