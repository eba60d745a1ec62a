//! Mesh data plane benchmark (needs root, `wrk`, `h2load` and `haproxy` from Debian):
//!
//!   flock /work/release.lock cargo build --release -p ghostwire
//!   cargo bench -p mesh-proxy --bench mesh
//!
//! Side by side in one run, each path in its own pair of lab Pods (a client Pod and a server
//! Pod on the lab bridge, the client dialling a ClusterIP that the lab DNATs to the server),
//! set up anew for each round so that rounds are independent samples:
//!
//! - `direct`: client → app;
//! - `ghostwire`: client → its Pod's `ghostwire proxy` (outbound) → the server Pod's `ghostwire
//!   proxy` (inbound) → app, both Pods redirected by proxy-init's rules, the proxies run from
//!   the release binary as uid 1337;
//! - `ghostwire-mtls`: the same with mesh TLS between the two proxies;
//! - `haproxy`, `haproxy-mtls`: Debian's haproxy in place of each proxy (uid 1337, one
//!   thread like ghostwire's proxy), behind the same rules, configured with the app's endpoint as ghostwire's routes
//!   name it (haproxy checks the peer's chain but no SPIFFE ID).
//!
//! Loads, each on every path in turn: `wrk` (HTTP/1.1) and `h2load` (HTTP/2) at saturation;
//! HTTP/1.1 and HTTP/2 at fixed rates from the open-loop generators in `support` (`h2load
//! --rps` sends in bursts and times from the burst, so it is not used for fixed rates).
//! Reported: req/s, p50/p99/p99.9, the proxies' CPU (utime+stime from /proc) and RSS, and
//! issue 13's targets with the rounds in which each was met.
//!
//! Knobs: `GW_BENCH_SECONDS` (per load, default 10), `GW_BENCH_ROUNDS` (default 2),
//! `GW_BENCH_PATHS` (comma list, default all), `GW_BENCH_RATES` (default 1000,10000),
//! `GW_BENCH_LOADS` (comma list of `h1-saturation`, `h2-saturation`, `h1-<rate>`,
//! `h2-<rate>`: only those loads, e.g. `h1-10000` for many short rounds of one target),
//! `GW_BENCH_GHOSTWIRE` (the proxies' binary, default target/release/ghostwire),
//! `GW_BENCH_BASELINE` (another build of it: adds a plaintext path `baseline` run with it, for
//! an A/B in one run),
//! `GW_BENCH_APP` (the binary that runs `lab app-b`, default the proxies' binary: set it when
//! the proxies come from a production build without the lab, e.g. the `image` profile),
//! `GW_BENCH_PIN` (a CPU list, e.g. `1`: every path's proxies run on those CPUs only, and the
//! apps, the load generators and this harness on the others, so the proxies never wait for a
//! core behind the load that measures them),
//! `GW_BENCH_HAPROXY_THREADS` (haproxy's `nbthread`, default 1: one thread, as ghostwire's
//! proxy runs; until the eleventh session's runs it was 2, which costs haproxy CPU).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use common::{Ca, metric, routes};
use lab_net::{Lab, Pod, ServicePort};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use support::{
    Proc, Proto, Run, as_proxy, env_or, ghostwire_proxy, load_average, measured, median, open_loop,
    proxy_metrics, quantiles, redirect, spawn, wait_until,
};

const CLIENT_ID: &str = "spiffe://td.bench/ns/app-a/sa/client";
const SERVER_ID: &str = "spiffe://td.bench/ns/app-b/sa/server";
const APP_PORT: u16 = 8080;
/// Concurrency of the saturation runs: wrk connections, and h2load clients × streams.
const WRK_CONNECTIONS: u32 = 32;
const H2_CLIENTS: u32 = 4;
const H2_STREAMS: u32 = 8;

/// One load of a round.
#[derive(Clone, Copy)]
enum Load {
    H1Saturation,
    H2Saturation,
    Fixed(Proto, u64),
}

impl Load {
    fn label(&self) -> String {
        match self {
            Load::H1Saturation => "h1 saturation (wrk)".into(),
            Load::H2Saturation => "h2 saturation (h2load)".into(),
            Load::Fixed(Proto::Http1, r) => format!("h1 {r}/s (open loop)"),
            Load::Fixed(Proto::Http2, r) => format!("h2 {r}/s (open loop)"),
        }
    }

    /// A load as `GW_BENCH_LOADS` names it: `h1-saturation`, `h2-saturation`, `h1-<rate>` or
    /// `h2-<rate>`.
    fn parse(name: &str) -> Load {
        match name.trim() {
            "h1-saturation" => Load::H1Saturation,
            "h2-saturation" => Load::H2Saturation,
            n => match n.split_once('-') {
                Some(("h1", r)) => {
                    Load::Fixed(Proto::Http1, support::parse_rate("GW_BENCH_LOADS", r))
                }
                Some(("h2", r)) => {
                    Load::Fixed(Proto::Http2, support::parse_rate("GW_BENCH_LOADS", r))
                }
                _ => panic!(
                    "GW_BENCH_LOADS: {n:?} is not a load (h1-saturation, h2-saturation, h1-<rate>, h2-<rate>)"
                ),
            },
        }
    }
}

/// The loads of a round: those `GW_BENCH_LOADS` names, in its order, else both saturations
/// and both protocols at each of `GW_BENCH_RATES`.
fn loads() -> Vec<Load> {
    let named: String = env_or("GW_BENCH_LOADS", String::new());
    if !named.is_empty() {
        return named.split(',').map(Load::parse).collect();
    }
    let mut loads = vec![Load::H1Saturation, Load::H2Saturation];
    for r in env_or("GW_BENCH_RATES", "1000,10000".to_string()).split(',') {
        let r = support::parse_rate("GW_BENCH_RATES", r);
        loads.extend([Load::Fixed(Proto::Http1, r), Load::Fixed(Proto::Http2, r)]);
    }
    loads
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Direct,
    Ghostwire,
    Haproxy,
}

/// A path as the run names it; each round sets it up anew.
struct Spec {
    name: &'static str,
    kind: Kind,
    tls: bool,
    /// Another build of the proxies (the baseline of an A/B run).
    bin: Option<PathBuf>,
}

/// One client Pod → server Pod pair, with its app and proxies.
struct Pair {
    name: &'static str,
    client: Pod,
    server: Pod,
    svc: lab_net::Service,
    vip: SocketAddr,
    app: Proc,
    /// Outbound (client Pod), inbound (server Pod).
    proxies: Vec<(&'static str, Proc)>,
    idle_rss: Vec<u64>,
}

/// haproxy's config for one hop: a frontend on `port` that sends every request to the app's
/// endpoint `ep` (as ghostwire's routes name it), over HTTP/2 when the client spoke HTTP/2;
/// `bind_tls` and `server_tls_*` are the TLS options of the bind and server lines (empty for
/// plaintext).
fn haproxy_config(
    threads: usize,
    port: u16,
    hop: &str,
    ep: SocketAddr,
    bind_tls: &str,
    server_tls_h1: &str,
    server_tls_h2: &str,
) -> String {
    format!(
        "global\n  nbthread {threads}\n  maxconn 4096\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend hop\n  bind 0.0.0.0:{port}{bind_tls}\n  http-response set-header x-hop-{hop} 1\n\
         \x20 use_backend app-h2 if {{ req.ver 2.0 }}\n  default_backend app-h1\n\
         backend app-h1\n  server app {ep}{server_tls_h1}\n\
         backend app-h2\n  server app {ep} proto h2{server_tls_h2}\n"
    )
}

fn haproxy(pod: &Pod, dir: &Path, name: &str, config: &str) -> Proc {
    let cfg = dir.join(format!("{name}.cfg"));
    std::fs::write(&cfg, config).unwrap();
    let mut c = as_proxy(
        pod,
        Path::new("/usr/sbin/haproxy"),
        &dir.join(format!("{name}.log")),
    );
    c.args(["-db", "-f"]).arg(&cfg);
    Proc::start(c)
}

struct Setup {
    lab: Lab,
    dir: PathBuf,
    bin: PathBuf,
    app: PathBuf,
    ca: Ca,
    haproxy_threads: usize,
}

/// `GW_BENCH_PIN`: the CPUs for the proxies, and the rest for everything else.
fn cpu_split() -> Option<(String, String)> {
    let pin: String = env_or("GW_BENCH_PIN", String::new());
    if pin.is_empty() {
        return None;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let proxies: Vec<usize> = pin
        .split(',')
        .map(|c| match c.trim().parse() {
            Ok(n) if n < cpus => n,
            _ => panic!("GW_BENCH_PIN={pin}: {c:?} is not a CPU of 0..{cpus}"),
        })
        .collect();
    let rest: Vec<String> = (0..cpus)
        .filter(|c| !proxies.contains(c))
        .map(|c| c.to_string())
        .collect();
    assert!(
        !rest.is_empty(),
        "GW_BENCH_PIN={pin}: no CPU left for the load"
    );
    Some((pin, rest.join(",")))
}

/// Every thread of process `pid` on `cpus` (util-linux's taskset).
fn pin(pid: u32, cpus: &str) {
    let ok = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset -a -p -c {cpus} {pid} failed");
}

impl Setup {
    /// A path set up, checked to go through its proxies.
    fn path(&mut self, spec: &Spec) -> Pair {
        let (name, kind, tls) = (spec.name, spec.kind, spec.tls);
        let proxy_bin = spec.bin.as_ref().unwrap_or(&self.bin).clone();
        let client = self.lab.add_pod(&format!("{name}-c")).unwrap();
        let server = self.lab.add_pod(&format!("{name}-s")).unwrap();
        // The app: `ghostwire lab app-b` (hyper, HTTP/1.1 and HTTP/2), answering its name.
        let app = spawn(
            &server,
            &self.app,
            &["lab", "app-b"],
            &[("HOSTNAME", name.into()), ("PORT", APP_PORT.to_string())],
        );
        let svc = self
            .lab
            .add_service(name, &[ServicePort::tcp(80, APP_PORT)], &[&server])
            .unwrap();
        let vip = svc.addr_v4(80);
        let ep = SocketAddr::new(server.ipv4.into(), APP_PORT);
        if kind != Kind::Direct {
            redirect(&[&client, &server], &[]);
        }
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let (cf, sf) = if tls {
            (
                self.ca.issue(&dir, "client", CLIENT_ID),
                self.ca.issue(&dir, "server", SERVER_ID),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let proxies = match kind {
            Kind::Direct => Vec::new(),
            Kind::Ghostwire => {
                let cfg = dir.join("routes.yaml");
                std::fs::write(&cfg, routes(vip, ep, tls.then_some(SERVER_ID))).unwrap();
                let mut env = cf.clone();
                env.push((mesh_config::CONFIG, cfg.display().to_string()));
                vec![
                    (
                        "outbound",
                        ghostwire_proxy(&proxy_bin, &client, &dir, &env, "outbound"),
                    ),
                    (
                        "inbound",
                        ghostwire_proxy(&proxy_bin, &server, &dir, &sf, "inbound"),
                    ),
                ]
            }
            Kind::Haproxy => {
                let (bind, h1, h2) = if tls {
                    // haproxy wants the chain and key in one file.
                    for f in ["client", "server"] {
                        let crt = std::fs::read_to_string(dir.join(format!("{f}.crt"))).unwrap();
                        let key = std::fs::read_to_string(dir.join(format!("{f}.key"))).unwrap();
                        std::fs::write(dir.join(format!("{f}.pem")), crt + &key).unwrap();
                    }
                    let d = dir.display();
                    let v = format!(" ssl ca-file {d}/client.roots verify required");
                    (
                        format!(
                            " ssl crt {d}/server.pem ca-file {d}/server.roots verify required alpn h2,http/1.1"
                        ),
                        format!("{v} crt {d}/client.pem alpn http/1.1"),
                        format!("{v} crt {d}/client.pem alpn h2"),
                    )
                } else {
                    Default::default()
                };
                vec![
                    (
                        "outbound",
                        haproxy(
                            &client,
                            &dir,
                            "outbound",
                            &haproxy_config(self.haproxy_threads, 5000, "out", ep, "", &h1, &h2),
                        ),
                    ),
                    (
                        "inbound",
                        haproxy(
                            &server,
                            &dir,
                            "inbound",
                            &haproxy_config(self.haproxy_threads, 4000, "in", ep, &bind, "", ""),
                        ),
                    ),
                ]
            }
        };
        let mut p = Pair {
            name,
            client,
            server,
            svc,
            vip,
            app,
            proxies,
            idle_rss: Vec::new(),
        };
        // The path works, and really goes through both proxies.
        wait_until(&format!("{name}: a request through"), || {
            p.client
                .http(p.vip, "/hello")
                .is_ok_and(|r| r.status == 200 && r.body.starts_with(name))
        });
        let r = p.client.http(p.vip, "/hello").unwrap();
        match kind {
            Kind::Haproxy => assert!(
                r.header("x-hop-out").is_some() && r.header("x-hop-in").is_some(),
                "{name}: not through both haproxies"
            ),
            Kind::Ghostwire => {
                let out = proxy_metrics(&p.client);
                let inb = proxy_metrics(&p.server);
                assert!(
                    metric(
                        &out,
                        "ghostwire_proxy_requests_total{direction=\"outbound\""
                    ) >= 1.0
                        && metric(&inb, "ghostwire_proxy_requests_total{direction=\"inbound\"")
                            >= 1.0,
                    "{name}: not through both proxies"
                );
                let tls_ok = metric(
                    &inb,
                    "ghostwire_proxy_tls_handshakes_total{direction=\"inbound\",result=\"ok\"}",
                );
                assert_eq!(tls_ok >= 1.0, tls, "{name}: mesh TLS {tls_ok}");
            }
            Kind::Direct => {}
        }
        for (_, proc) in &mut p.proxies {
            assert!(proc.alive(), "{name}: a proxy died");
        }
        p.idle_rss = p.proxies.iter().map(|(_, q)| q.rss_kib()).collect();
        p
    }

    /// Stops a path's proxies and app, and removes its Service and Pods.
    fn remove(&mut self, p: Pair) {
        let Pair {
            client,
            server,
            svc,
            app,
            proxies,
            ..
        } = p;
        drop(proxies);
        drop(app);
        self.lab.remove_service(&svc).unwrap();
        self.lab.remove_pod(&client).unwrap();
        self.lab.remove_pod(&server).unwrap();
    }
}

impl Pair {
    fn procs(&self) -> Vec<&Proc> {
        self.proxies.iter().map(|(_, q)| q).collect()
    }
}

fn wrk_script(dir: &Path) -> PathBuf {
    let path = dir.join("report.lua");
    std::fs::write(
        &path,
        "done = function(s, latency, requests)\n\
         \x20 local e = s.errors\n\
         \x20 io.write(string.format(\"GWBENCH %d %d %d %d %d %d\\n\", s.requests, s.duration,\n\
         \x20   latency:percentile(50), latency:percentile(99), latency:percentile(99.9),\n\
         \x20   e.connect + e.read + e.write + e.status + e.timeout))\n\
         end\n",
    )
    .unwrap();
    path
}

fn wrk(p: &Pair, script: &Path, seconds: u64) -> Run {
    let out = p
        .client
        .command("wrk")
        .args([
            "-t1",
            &format!("-c{WRK_CONNECTIONS}"),
            &format!("-d{seconds}s"),
            "-s",
        ])
        .arg(script)
        .arg(format!("http://{}/hello", p.vip))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("GWBENCH "))
        .unwrap_or_else(|| panic!("wrk: {text}{}", String::from_utf8_lossy(&out.stderr)))
        .split_whitespace()
        .map(|v| v.parse().unwrap())
        .collect();
    Run {
        requests: f[0] as u64,
        seconds: f[1] / 1e6,
        q: [f[2], f[3], f[4]],
        errors: f[5] as u64,
        ..Run::default()
    }
}

/// h2load (HTTP/2 with prior knowledge) at saturation.
fn h2load(p: &Pair, dir: &Path, seconds: u64) -> Run {
    let log = dir.join("h2load.log");
    let _ = std::fs::remove_file(&log);
    let out = p
        .client
        .command("h2load")
        .args([&format!("-c{H2_CLIENTS}"), &format!("-m{H2_STREAMS}")])
        .args(["-D", &seconds.to_string(), "--log-file"])
        .arg(&log)
        .arg(format!("http://{}/hello", p.vip))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| -> Vec<String> {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .unwrap_or_else(|| panic!("h2load: no {prefix:?} in {text}"))
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    };
    // "finished in 10.00s, 9999.90 req/s, …"; "requests: N total, N started, N done,
    // N succeeded, N failed, …"
    let fin = field("finished in");
    let seconds: f64 = fin[0].trim_end_matches('s').parse().unwrap();
    let req = field("requests:");
    let done: u64 = req[4].parse().unwrap();
    let succeeded: u64 = req[6].parse().unwrap();
    let lat: Vec<u64> = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.get(1)? == &"200").then(|| f.get(2)?.parse().ok())?
        })
        .collect();
    Run {
        requests: succeeded,
        errors: done - succeeded,
        seconds,
        q: quantiles(lat),
        ..Run::default()
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let seconds: u64 = env_or("GW_BENCH_SECONDS", 10);
    let rounds: u32 = env_or("GW_BENCH_ROUNDS", 2);
    let loads = loads();
    let only: String = env_or("GW_BENCH_PATHS", String::new());
    let bin: PathBuf = env_or(
        "GW_BENCH_GHOSTWIRE",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/ghostwire"),
    );
    assert!(
        bin.exists(),
        "{}: build it first (cargo build --release -p ghostwire) or set GW_BENCH_GHOSTWIRE",
        bin.display()
    );
    let app: PathBuf = env_or("GW_BENCH_APP", bin.clone());
    // Before any thread or child: both inherit this process's CPUs.
    let split = cpu_split();
    if let Some((_, rest)) = &split {
        pin(std::process::id(), rest);
    }
    support::clean_up_on_signal();
    let dir = std::env::temp_dir().join(format!("gw-meshbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut setup = Setup {
        lab: Lab::new("meshbench").unwrap(),
        dir: dir.clone(),
        bin,
        app,
        ca: Ca::new("bench mesh CA"),
        haproxy_threads: match env_or("GW_BENCH_HAPROXY_THREADS", 1) {
            0 => panic!("GW_BENCH_HAPROXY_THREADS=0: haproxy needs at least one thread"),
            n => n,
        },
    };
    let all = [
        ("direct", Kind::Direct, false),
        ("ghostwire", Kind::Ghostwire, false),
        ("ghostwire-mtls", Kind::Ghostwire, true),
        ("haproxy", Kind::Haproxy, false),
        ("haproxy-mtls", Kind::Haproxy, true),
    ];
    let mut specs: Vec<Spec> = all
        .into_iter()
        .filter(|(name, ..)| only.is_empty() || only.split(',').any(|o| o == *name))
        .map(|(name, kind, tls)| Spec {
            name,
            kind,
            tls,
            bin: None,
        })
        .collect();
    // An A/B of two builds in one run: the baseline's rounds interleave with the others', so
    // the machine's drift hits both alike.
    if let Ok(base) = std::env::var("GW_BENCH_BASELINE") {
        let base = PathBuf::from(base);
        assert!(
            base.exists(),
            "GW_BENCH_BASELINE={}: no such file",
            base.display()
        );
        specs.push(Spec {
            name: "baseline",
            kind: Kind::Ghostwire,
            tls: false,
            bin: Some(base),
        });
    }
    if let Some((proxies, rest)) = &split {
        println!("CPUs: proxies {proxies}, everything else {rest}");
    }
    println!("load average at start: {}", load_average());
    let script = wrk_script(&dir);
    // (path, load) → runs, one per round in order
    let mut results: BTreeMap<(usize, String), Vec<Run>> = BTreeMap::new();
    // Per path, each proxy's highest idle RSS over the rounds.
    let mut idle: Vec<Vec<u64>> = vec![Vec::new(); specs.len()];
    for round in 1..=rounds {
        // Every round sets its paths up anew: new Pods, apps and proxies. With one set of
        // processes for the whole run, a path's tail leaned the same way in nearly every
        // round, and the other way in another run of the same binaries (docs/benchmarks.md,
        // ninth run): rounds were not independent samples.
        let mut paths: Vec<Pair> = specs.iter().map(|s| setup.path(s)).collect();
        for (p, highest) in paths.iter().zip(&mut idle) {
            if let Some((proxies, _)) = &split {
                for q in p.procs() {
                    pin(q.pid(), proxies);
                }
            }
            highest.resize(p.idle_rss.len(), 0);
            for (h, kb) in highest.iter_mut().zip(&p.idle_rss) {
                *h = (*h).max(*kb);
            }
            let rss: Vec<String> = p
                .proxies
                .iter()
                .zip(&p.idle_rss)
                .map(|((n, _), kb)| format!("{n} {:.1} MiB", *kb as f64 / 1024.0))
                .collect();
            if !rss.is_empty() {
                println!(
                    "round {round} idle RSS after one request, {}: {}",
                    p.name,
                    rss.join(", ")
                );
            }
        }
        for p in &paths {
            // Warm-up: pools filled, caches hot.
            wrk(p, &script, 1);
        }
        // Load after load, every path in turn: the runs compared for a target are seconds
        // apart, not a whole path's loads apart, so the machine's drift splits them less.
        // The turn is shuffled per round and load (the same every run), so a path's place in
        // it and the run before it (haproxy with mTLS at 10,000/s is overloaded) change from
        // round to round instead of favouring one path throughout.
        for (l, load) in loads.iter().enumerate() {
            for i in shuffled(paths.len(), (u64::from(round) << 32) | l as u64) {
                let p = &paths[i];
                let run = measured(&p.procs(), || match *load {
                    Load::H1Saturation => wrk(p, &script, seconds),
                    Load::H2Saturation => h2load(p, &dir, seconds),
                    Load::Fixed(proto, r) => open_loop(&p.client, p.vip, proto, r, seconds),
                });
                println!(
                    "round {round} {:>15} {:<22} {:>9.0} req/s  p50 {:>7.0} µs  p99 {:>7.0} µs  p99.9 {:>7.0} µs  errors {:>4}  proxy CPU {:>5.2} s  RSS max {:?} kB",
                    p.name,
                    load.label(),
                    run.rate(),
                    run.q[0],
                    run.q[1],
                    run.q[2],
                    run.errors,
                    run.cpu,
                    run.rss
                );
                results.entry((i, load.label())).or_default().push(run);
            }
        }
        for mut p in paths.drain(..) {
            for (n, q) in &mut p.proxies {
                assert!(
                    q.alive(),
                    "{}: the {n} proxy died during round {round}",
                    p.name
                );
            }
            setup.remove(p);
        }
        println!("load average after round {round}: {}", load_average());
    }
    summary(&specs, &results);
    targets(&specs, &idle, &results);
    drop(setup);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Medians over the rounds, as markdown tables: the numbers, then per proxy path the p99 it
/// adds over direct, requests per CPU-second and CPU per 1k req/s.
fn summary(paths: &[Spec], results: &BTreeMap<(usize, String), Vec<Run>>) {
    println!(
        "\n| path | load | req/s | p50 µs | p99 µs | p99.9 µs | errors | proxies' CPU s | req per proxy CPU-s | CPU % per 1k req/s | RSS under load, MiB (out / in) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for ((i, load), runs) in results {
        let p = &paths[*i];
        let m = |f: &dyn Fn(&Run) -> f64| median(runs.iter().map(f).collect());
        let rate = m(&|r| r.rate());
        let cpu = m(&|r| r.cpu);
        let per_cpu = m(&|r| r.requests as f64 / r.cpu.max(0.01));
        let per_1k = m(&|r| r.cpu / r.seconds / (r.rate() / 1000.0) * 100.0);
        let rss: Vec<String> = (0..runs[0].rss.len())
            .map(|k| {
                let v = runs.iter().map(|r| r.rss[k]).max().unwrap_or(0);
                format!("{:.1}", v as f64 / 1024.0)
            })
            .collect();
        let proxied = p.kind != Kind::Direct;
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {} | {} | {} | {} |",
            p.name,
            load,
            rate,
            m(&|r| r.q[0]),
            m(&|r| r.q[1]),
            m(&|r| r.q[2]),
            runs.iter().map(|r| r.errors).sum::<u64>(),
            if proxied {
                format!("{cpu:.2}")
            } else {
                "–".into()
            },
            if proxied {
                format!("{per_cpu:.0}")
            } else {
                "–".into()
            },
            if proxied {
                format!("{per_1k:.2}")
            } else {
                "–".into()
            },
            if proxied {
                rss.join(" / ")
            } else {
                "–".into()
            },
        );
    }
    // Added p99 at the fixed rates: the path's median p99 minus direct's, per round pairing.
    let direct = paths.iter().position(|p| p.kind == Kind::Direct);
    if let Some(d) = direct {
        println!("\n| path | load | added p50 µs | added p99 µs | added p99.9 µs |");
        println!("|---|---|---|---|---|");
        for ((i, load), runs) in results {
            if *i == d || !load.contains("/s") {
                continue;
            }
            let Some(base) = results.get(&(d, load.clone())) else {
                continue;
            };
            let add = |k: usize| {
                median(runs.iter().map(|r| r.q[k]).collect())
                    - median(base.iter().map(|r| r.q[k]).collect())
            };
            println!(
                "| {} | {} | {:.0} | {:.0} | {:.0} |",
                paths[*i].name,
                load,
                add(0),
                add(1),
                add(2)
            );
        }
    }
}

/// One target: its name, whether ours meets it against theirs, and the number compared.
type Check<'a> = (&'static str, fn(f64, f64) -> bool, &'a dyn Fn(&Run) -> f64);

/// Issue 13's targets read off the run, each ghostwire path against the haproxy path of the
/// same mode: per load, the medians and in how many rounds ghostwire met the target against
/// the haproxy run of the same round (the runs are seconds apart). Added p99 is the path's p99
/// minus direct's of that round, so the pair compares as their p99s do.
fn targets(paths: &[Spec], idle: &[Vec<u64>], results: &BTreeMap<(usize, String), Vec<Run>>) {
    let find = |name: &str| paths.iter().position(|p| p.name == name);
    println!("\n| target | path | load | ghostwire (median) | haproxy (median) | met in rounds |");
    println!("|---|---|---|---|---|---|");
    for (ours, theirs) in [("ghostwire", "haproxy"), ("ghostwire-mtls", "haproxy-mtls")] {
        let (Some(g), Some(h)) = (find(ours), find(theirs)) else {
            continue;
        };
        for ((i, load), runs) in results.range((g, String::new())..(g + 1, String::new())) {
            let Some(rival) = results.get(&(h, load.clone())) else {
                continue;
            };
            let per_cpu = |r: &Run| r.requests as f64 / r.cpu.max(0.01);
            let p99 = |r: &Run| r.q[1];
            let mut rows: Vec<Check> = vec![("req per proxy CPU-s ≥", |a, b| a >= b, &per_cpu)];
            if load.contains("/s (open loop)") {
                rows.push(("p99 µs ≤", |a, b| a <= b, &p99));
            }
            for (what, met, f) in rows {
                let ok = runs
                    .iter()
                    .zip(rival)
                    .filter(|(a, b)| met(f(a), f(b)))
                    .count();
                println!(
                    "| {what} haproxy's | {} | {load} | {:.0} | {:.0} | {ok} of {} |",
                    paths[*i].name,
                    median(runs.iter().map(f).collect()),
                    median(rival.iter().map(f).collect()),
                    runs.len().min(rival.len()),
                );
            }
        }
        let mib: Vec<String> = idle[g]
            .iter()
            .map(|kb| format!("{:.1}", *kb as f64 / 1024.0))
            .collect();
        // The issue's 12 MB, in bytes (VmRSS is in KiB), for the highest of the rounds.
        let ok = idle[g].iter().all(|kb| kb * 1024 <= 12_000_000);
        println!(
            "| idle RSS ≤ 12 MB | {ours} | after one request, highest of the rounds | {} MiB | – | {} |",
            mib.join(" / "),
            if ok { "yes" } else { "no" }
        );
    }
}

/// 0..n in an order drawn from `seed`, the same every run.
fn shuffled(n: usize, seed: u64) -> Vec<usize> {
    use rand::{SeedableRng, seq::SliceRandom};
    let mut v: Vec<usize> = (0..n).collect();
    v.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    v
}
