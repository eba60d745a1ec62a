//! The identity agent's data path (issue 17 point 8): the mesh proxy in L4 mode, between the
//! same two lab Pods, in one run (needs root and `iperf3` from Debian):
//!
//!   cargo build --release -p ghostwire
//!   cargo bench -p mesh-proxy --bench l4
//!
//! One client Pod and one server Pod, both redirected by proxy-init's rules, each with a
//! `ghostwire proxy` in L4 mode (`GW_MESH_L4_ONLY=true`, uid 1337, the release binary). The
//! server Pod runs `ghostwire lab app-b` (HTTP) and `iperf3 -s` three times each: for mTLS and for
//! plaintext on ports the rules redirect (8080/5201, 8082/5203), and on ports they skip.
//!
//! - `direct`: the skipped ports (8081, 5202) on the server Pod's IP; no proxy;
//! - `l4-plain`: a Service address whose endpoint has no identity: the client's proxy → the
//!   server's proxy in plaintext (permissive inbound) → the app;
//! - `l4-mtls`: a Service address whose endpoint has the server's identity: mesh TLS between
//!   the two proxies, each checking the other's SPIFFE ID (the server's proxy checks the
//!   client's against the routing config's `pods`, as the agent does).
//!
//! Loads, per path: throughput (one `iperf3` TCP stream for the run's length); connections per
//! second (closed loop, `GW_BENCH_CONNECTIONS` workers, each a new TCP connection carrying one
//! HTTP/1.1 request with `Connection: close`: on `l4-mtls` one full mesh TLS handshake each,
//! as mesh TLS never resumes a session); latency at a fixed rate (the open-loop
//! HTTP/1.1 generator of `support`). Reported: medians over the rounds, the p99 each proxied
//! path adds over `direct`, and the throughput ratio `l4-mtls / l4-plain` (the issue's target:
//! at least 80 %).
//!
//! Knobs: `GW_BENCH_SECONDS` (per load, default 10), `GW_BENCH_ROUNDS` (default 2),
//! `GW_BENCH_RATE` (requests/s of the latency load, default 2000), `GW_BENCH_CONNECTIONS`
//! (default 16), `GW_BENCH_KTLS=1` (proxies with `GW_MESH_KTLS=true`: kTLS where the kernel has
//! the TLS module; the offload counters are printed), `GW_BENCH_GHOSTWIRE` (the binary,
//! default target/release/ghostwire).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use common::{Ca, metric};
use lab_net::{Lab, Pod, ServicePort};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::{
    Proto, Run, env_or, ghostwire_proxy, load_average, measured, median, open_loop, proxy_metrics,
    redirect, spawn, wait_until,
};

const CLIENT_ID: &str = "spiffe://td.bench/ns/l4/sa/client";
const SERVER_ID: &str = "spiffe://td.bench/ns/l4/sa/server";
/// The app and iperf3: redirected ports, and the ports the rules skip (the direct path).
const HTTP: u16 = 8080;
const IPERF: u16 = 5201;
/// The plaintext path's own endpoints: the proxy keys identities by endpoint, so the two
/// proxied paths must not share one.
const HTTP_PLAIN: u16 = 8082;
const IPERF_PLAIN: u16 = 5203;
const HTTP_DIRECT: u16 = 8081;
const IPERF_DIRECT: u16 = 5202;

/// One path: where its HTTP and its iperf3 traffic go.
struct Dest {
    name: &'static str,
    http: SocketAddr,
    iperf: SocketAddr,
}

/// The routing config of both proxies: two Services per protocol on the same endpoint, one
/// with the server's identity (mesh TLS) and one without (plaintext); the client Pod's
/// identity for the server's inbound check.
fn routes(vips: &[(&str, SocketAddr, SocketAddr, bool)], client_ip: SocketAddr) -> String {
    let mut out = String::from("services:\n");
    for (name, vip, ep, tls) in vips {
        let ids = if *tls {
            format!(", identities: {{\"{ep}\": \"{SERVER_ID}\"}}")
        } else {
            String::new()
        };
        out += &format!(
            "  - name: {name}\n    addresses: [\"{vip}\"]\n    backends:\n      - {{name: v1, endpoints: [\"{ep}\"]{ids}}}\n"
        );
    }
    out += &format!("pods:\n  \"{}\": \"{CLIENT_ID}\"\n", client_ip.ip());
    out
}

/// One iperf3 TCP stream to `to` for `seconds`: bits per second received.
fn iperf(client: &Pod, to: SocketAddr, seconds: u64) -> Run {
    let out = client
        .command("iperf3")
        .args(["-c", &to.ip().to_string(), "-p", &to.port().to_string()])
        .args(["-t", &seconds.to_string(), "-J"])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "iperf3 to {to}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let end = &json["end"]["sum_received"];
    let bps = end["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("iperf3 to {to}: no result: {json}"));
    let seconds = end["seconds"].as_f64().unwrap_or(seconds as f64);
    Run {
        // Bits as "requests": rate() is then bits per second.
        requests: (bps * seconds) as u64,
        seconds,
        ..Run::default()
    }
}

/// Closed loop: `workers` threads in the client Pod each open a connection, send one request
/// with `Connection: close`, read the answer to its end, and start over, for `seconds`.
fn connections(client: &Pod, to: SocketAddr, workers: usize, seconds: u64) -> Run {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (d, e, s) = (done.clone(), errors.clone(), stop.clone());
    let start = Instant::now();
    client
        .netns()
        .run(move || {
            // Threads started here are in the Pod's network namespace too.
            let threads: Vec<_> = (0..workers)
                .map(|_| {
                    let (done, errors, stop) = (d.clone(), e.clone(), s.clone());
                    std::thread::spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            match one_request(to) {
                                Ok(true) => done.fetch_add(1, Ordering::Relaxed),
                                _ => errors.fetch_add(1, Ordering::Relaxed),
                            };
                        }
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_secs(seconds));
            s.store(true, Ordering::Relaxed);
            for t in threads {
                let _ = t.join();
            }
        })
        .unwrap();
    Run {
        requests: done.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        seconds: start.elapsed().as_secs_f64(),
        ..Run::default()
    }
}

fn one_request(to: SocketAddr) -> std::io::Result<bool> {
    let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_nodelay(true)?;
    write!(
        s,
        "GET /hello HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    Ok(answer.starts_with(b"HTTP/1.1 200"))
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    support::clean_up_on_signal();
    let seconds: u64 = env_or("GW_BENCH_SECONDS", 10);
    let rounds: u32 = env_or("GW_BENCH_ROUNDS", 2);
    let rate = support::parse_rate(
        "GW_BENCH_RATE",
        &env_or("GW_BENCH_RATE", String::from("2000")),
    );
    let workers: usize = env_or("GW_BENCH_CONNECTIONS", 16);
    let ktls = env_or("GW_BENCH_KTLS", String::new()) == "1";
    let bin: PathBuf = env_or(
        "GW_BENCH_GHOSTWIRE",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/ghostwire"),
    );
    assert!(
        bin.exists(),
        "{}: build it first (cargo build --release -p ghostwire) or set GW_BENCH_GHOSTWIRE",
        bin.display()
    );
    let dir = std::env::temp_dir().join(format!("gw-l4bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let mut lab = Lab::new("l4bench").unwrap();
    let client = lab.add_pod("l4-c").unwrap();
    let server = lab.add_pod("l4-s").unwrap();
    let mut apps = Vec::new();
    for port in [HTTP, HTTP_PLAIN, HTTP_DIRECT] {
        apps.push(spawn(
            &server,
            &bin,
            &["lab", "app-b"],
            &[("HOSTNAME", "l4".into()), ("PORT", port.to_string())],
        ));
    }
    for port in [IPERF, IPERF_PLAIN, IPERF_DIRECT] {
        apps.push(spawn(
            &server,
            Path::new("iperf3"),
            &["-s", "-p", &port.to_string()],
            &[],
        ));
    }
    let ep = |port| SocketAddr::new(server.ipv4.into(), port);
    let mut vip = |name: &str, port: u16| {
        lab.add_service(name, &[ServicePort::tcp(port, port)], &[&server])
            .unwrap()
            .addr_v4(port)
    };
    let plain = Dest {
        name: "l4-plain",
        http: vip("plain-http", HTTP_PLAIN),
        iperf: vip("plain-iperf", IPERF_PLAIN),
    };
    let mtls = Dest {
        name: "l4-mtls",
        http: vip("tls-http", HTTP),
        iperf: vip("tls-iperf", IPERF),
    };
    let direct = Dest {
        name: "direct",
        http: ep(HTTP_DIRECT),
        iperf: ep(IPERF_DIRECT),
    };
    let skipped = format!("{HTTP_DIRECT},{IPERF_DIRECT}");
    redirect(
        &[&client, &server],
        &[
            (mesh_config::SKIP_INBOUND_PORTS, format!("4191,{skipped}")),
            (mesh_config::SKIP_OUTBOUND_PORTS, skipped),
        ],
    );
    let cfg = dir.join("routes.yaml");
    std::fs::write(
        &cfg,
        routes(
            &[
                ("plain-http", plain.http, ep(HTTP_PLAIN), false),
                ("plain-iperf", plain.iperf, ep(IPERF_PLAIN), false),
                ("tls-http", mtls.http, ep(HTTP), true),
                ("tls-iperf", mtls.iperf, ep(IPERF), true),
            ],
            SocketAddr::new(client.ipv4.into(), 0),
        ),
    )
    .unwrap();
    let ca = Ca::new("l4 bench CA");
    let env = |name: &str, id: &str| {
        let mut env = ca.issue(&dir, name, id);
        env.push((mesh_config::CONFIG, cfg.display().to_string()));
        env.push((mesh_config::L4_ONLY, "true".into()));
        env.push((mesh_config::KTLS, ktls.to_string()));
        env
    };
    let outbound = ghostwire_proxy(&bin, &client, &dir, &env("client", CLIENT_ID), "outbound");
    let inbound = ghostwire_proxy(&bin, &server, &dir, &env("server", SERVER_ID), "inbound");
    let proxies = [&outbound, &inbound];
    let handshakes = || {
        metric(
            &proxy_metrics(&server),
            "ghostwire_proxy_tls_handshakes_total{direction=\"inbound\",result=\"ok\"}",
        )
    };
    // Each path answers (asked from the client Pod), and only l4-mtls does a mesh TLS handshake.
    let ask = |to: SocketAddr| {
        client
            .netns()
            .run(move || one_request(to).unwrap_or(false))
            .unwrap_or(false)
    };
    let paths = [direct, plain, mtls];
    for p in &paths {
        wait_until(&format!("{}: the app answers", p.name), || ask(p.http));
        let before = handshakes();
        assert!(ask(p.http), "{}", p.name);
        let tls = handshakes() - before;
        assert_eq!(
            tls >= 1.0,
            p.name == "l4-mtls",
            "{}: {tls} handshakes",
            p.name
        );
    }

    println!("load average at start: {}", load_average());
    let mut results: BTreeMap<(usize, &str), Vec<Run>> = BTreeMap::new();
    for round in 1..=rounds {
        for (i, p) in paths.iter().enumerate() {
            let mut record = |load: &'static str, run: Run| {
                let unit = if load == "throughput" {
                    format!("{:>8.2} Gbit/s", run.rate() / 1e9)
                } else {
                    format!("{:>8.0} /s", run.rate())
                };
                println!(
                    "round {round} {:>9} {:<24} {unit}  p50 {:>6.0} µs  p99 {:>6.0} µs  errors {:>4}  proxies' CPU {:>5.2} s",
                    p.name, load, run.q[0], run.q[1], run.errors, run.cpu
                );
                results.entry((i, load)).or_default().push(run);
            };
            record(
                "throughput",
                measured(&proxies, || iperf(&client, p.iperf, seconds)),
            );
            record(
                "connections",
                measured(&proxies, || connections(&client, p.http, workers, seconds)),
            );
            record(
                "fixed rate",
                measured(&proxies, || {
                    open_loop(&client, p.http, Proto::Http1, rate, seconds)
                }),
            );
        }
        println!("load average after round {round}: {}", load_average());
    }
    if ktls {
        for (pod, name) in [(&client, "outbound"), (&server, "inbound")] {
            let text = proxy_metrics(pod);
            for l in text
                .lines()
                .filter(|l| l.starts_with("ghostwire_proxy_ktls"))
            {
                println!("{name}: {l}");
            }
        }
    }
    summary(&paths, &results, rate);
    drop(apps);
    drop(outbound);
    drop(inbound);
    drop(lab);
    let _ = std::fs::remove_dir_all(&dir);
}

fn summary(paths: &[Dest], results: &BTreeMap<(usize, &str), Vec<Run>>, rate: u64) {
    let m = |i: usize, load: &str, f: &dyn Fn(&Run) -> f64| {
        median(results[&(i, load)].iter().map(f).collect())
    };
    println!(
        "\n| path | throughput Gbit/s | connections/s | p50 µs at {rate}/s | p99 µs at {rate}/s | added p99 µs | errors | proxies' CPU s per GB |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (i, p) in paths.iter().enumerate() {
        let errors: u64 = results
            .iter()
            .filter(|((j, _), _)| *j == i)
            .flat_map(|(_, runs)| runs.iter().map(|r| r.errors))
            .sum();
        let gbit = m(i, "throughput", &|r| r.rate() / 1e9);
        let cpu_per_gb = m(i, "throughput", &|r| {
            r.cpu / (r.requests as f64 / 8.0 / 1e9).max(1e-9)
        });
        println!(
            "| {} | {gbit:.2} | {:.0} | {:.0} | {:.0} | {} | {errors} | {} |",
            p.name,
            m(i, "connections", &|r| r.rate()),
            m(i, "fixed rate", &|r| r.q[0]),
            m(i, "fixed rate", &|r| r.q[1]),
            if i == 0 {
                "–".to_string()
            } else {
                format!(
                    "{:.0}",
                    m(i, "fixed rate", &|r| r.q[1]) - m(0, "fixed rate", &|r| r.q[1])
                )
            },
            if i == 0 {
                "–".to_string()
            } else {
                format!("{cpu_per_gb:.2}")
            },
        );
    }
    let ratio = m(2, "throughput", &|r| r.rate()) / m(1, "throughput", &|r| r.rate());
    println!(
        "\nl4-mtls throughput / l4-plain: {:.0} % (target: at least 80 %)",
        ratio * 100.0
    );
}
