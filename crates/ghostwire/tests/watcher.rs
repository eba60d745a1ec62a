//! `ghostwire watcher` against the lab API (real kube-rs client, real watch) and the
//! real kernel: the watcher runs as a process on the host side, managing a lab
//! pod's network namespace through `--netns`, as a node agent would.

mod common;

use common::cluster::{Cluster, Watcher, kube_service};
use common::*;
use k8s_openapi::api::core::v1::{Pod, Service as KService};
use kube::api::{Api, DeleteParams, PostParams};
use lab_net::ServicePort;
use std::process::Command;
use std::time::Duration;

#[test]
fn flips_follow_the_label() {
    let c = Cluster::new("wflip");
    c.init(&[]);
    let w = Watcher::start(&c, &[]);
    let orders = c.orders.addr_v4(80);
    assert_eq!(c.reaches(orders), "orders");
    // The gauges are set by the first reconcile, which traffic does not wait for.
    wait_for("first reconcile published", 10, || {
        let m = w.metrics();
        metric(&m, "ghostwire_jump_state", &[("state", "off")]) == Some(1.0)
            // The lab pod is dual-stack, so GW_IPV6=auto maps IPv4 and IPv6.
            && metric(&m, "ghostwire_dnat_rules", &[("service", "orders")]) == Some(2.0)
    });

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
    // The metric is counted just after the kernel changed: wait for it, not for traffic.
    wait_for("third flip off counted", 10, || {
        metric(&w.metrics(), "ghostwire_flips_total", &[("to", "off")]) == Some(3.0)
    });
    let m = w.metrics();
    assert_eq!(
        metric(&m, "ghostwire_flips_total", &[("to", "on")]),
        Some(3.0),
        "{}",
        w.logs()
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
    // The rebuild is counted just after the kernel took it, so traffic can get there
    // first on a busy machine: wait for the counter, as for the drift one.
    wait_for("rebuild counted", 20, || {
        metric(&w.metrics(), "ghostwire_rebuilds_total", &[]).unwrap_or(0.0) >= 1.0
    });
    wait_for("healthy again", 20, || w.get("/healthz").0 == 200);
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
fn api_410_down_then_back() {
    let mut c = Cluster::new("wapi");
    c.init(&[]);
    let w = Watcher::start(&c, &[]);
    let orders = c.orders.addr_v4(80);
    c.label(Some("preview"));
    c.wait_reaches(orders, "orders-preview");
    // A compaction ends the watch and answers its resume with 410 Gone: the watcher relists.
    c.api.as_ref().unwrap().compact();
    c.label(Some("active"));
    c.wait_reaches(orders, "orders");
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
    // No GW_REFRESH_INTERVAL: the Services are followed anyway.
    let w = Watcher::start(&c, &[]);
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
fn deleted_preview_falls_back_to_active() {
    let c = Cluster::new("wdelprev");
    c.init(&[]);
    let _w = Watcher::start(&c, &[]);
    let orders = c.orders.addr_v4(80);
    c.label(Some("preview"));
    c.wait_reaches(orders, "orders-preview");
    let api: Api<KService> = Api::namespaced(c.kube.clone(), "default");
    c.rt.block_on(api.delete("orders-preview", &DeleteParams::default()))
        .unwrap();
    // The preview's ClusterIP still answers in the lab; the watcher must drop the mapping.
    c.wait_reaches(orders, "orders");
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

#[test]
fn init_discovers_services_through_the_api() {
    let c = Cluster::new("initapi");
    let out = Command::new(ghostwire())
        .args(["init", "--dry-run", "--activate", "--output", "json"])
        .env("KUBECONFIG", c.kubeconfig())
        .env("GW_NAMESPACE", "default")
        .env("GW_IPV6", "false")
        .output()
        .unwrap();
    assert_ok(&out, "init --dry-run against the lab API");
    let text = String::from_utf8_lossy(&out.stdout);
    let json = &text[text
        .find("{\n")
        .unwrap_or_else(|| panic!("no JSON map in {text}"))..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["mappings"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["mappings"][0]["active"], "orders");
    assert_eq!(
        v["mappings"][0]["preview_addr"],
        c.orders_preview.addr_v4(80).to_string()
    );
    // A namespace without Services pairs nothing, and that is not an error.
    let out = Command::new(ghostwire())
        .args(["init", "--dry-run", "--namespace", "kube-public"])
        .env("KUBECONFIG", c.kubeconfig())
        .output()
        .unwrap();
    assert_ok(&out, "init in an empty namespace");
    assert!(String::from_utf8_lossy(&out.stdout).contains("mappings=0"));
}

#[test]
fn black_holed_api_is_reported_and_does_not_hold_sigterm() {
    // The watcher reaches the API through a gate the test black-holes: open connections
    // move no byte and new ones are never answered, as when packets are dropped.
    let c = Cluster::new("wbhole");
    c.init(&[]);
    let gate =
        c.rt.block_on(lab_node::gate::Gate::start(
            "127.0.0.1:0".parse().unwrap(),
            c.api_addr,
        ))
        .unwrap();
    let kubeconfig = c.dir.path("gate.kubeconfig");
    let direct = std::fs::read_to_string(c.kubeconfig()).unwrap();
    assert!(direct.contains(&c.api_addr.to_string()), "{direct}");
    std::fs::write(
        &kubeconfig,
        direct.replace(&c.api_addr.to_string(), &gate.addr().to_string()),
    )
    .unwrap();
    let kc = kubeconfig.display().to_string();
    let env = [("KUBECONFIG", kc.as_str()), ("GW_API_TIMEOUT", "2s")];
    let mut w = Watcher::start(&c, &env);
    let orders = c.orders.addr_v4(80);
    c.label(Some("preview"));
    c.wait_reaches(orders, "orders-preview");

    gate.set(lab_node::ApiState::BlackHole);
    // The label can no longer be confirmed: /readyz says so (the watch and the bounded
    // polls both fail), while the rules in place stay verified.
    wait_for("readyz reports the unconfirmed label", 60, || {
        let (code, body) = w.get("/readyz");
        code == 503 && body.contains("last confirmed")
    });
    assert_eq!(w.get("/healthz").0, 200, "{}", w.logs());
    assert_eq!(c.reaches(orders), "orders-preview");

    // Back: the label changed meanwhile is followed without a restart.
    c.label(Some("active"));
    gate.set(lab_node::ApiState::Up);
    c.wait_reaches(orders, "orders");
    wait_for("readyz again", 60, || w.get("/readyz").0 == 200);

    // Black-holed again, with calls in flight: SIGTERM still ends the watcher at once.
    gate.set(lab_node::ApiState::BlackHole);
    wait_for("readyz reports the unconfirmed label again", 60, || {
        w.get("/readyz").0 == 503
    });
    let st = Command::new("kill")
        .args(["-TERM", &w.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(w.wait_exit(15), Some(0), "{}", w.logs());
}

/// One HTTP/1.1 request on a kept-alive connection; the backend's name, or why not.
fn ask(stream: &mut std::net::TcpStream) -> std::io::Result<String> {
    use std::io::{Read, Write};
    stream.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                return Ok(body.trim().to_string());
            }
        }
    }
}

/// A long-lived TCP connection and a UDP flow from the client pod to orders, open
/// before a flip to preview; then what each sees after it, with `policy`.
fn established_across_a_flip(test: &str, policy: &str) -> (std::io::Result<String>, String) {
    let c = Cluster::with_udp(test);
    c.init(&[]);
    let w = Watcher::start(&c, &[("GW_FLUSH_CONNTRACK", policy)]);
    let (tcp_addr, udp_addr) = (c.orders.addr_v4(80), c.orders.addr_v4(53));
    let (mut tcp, udp) = c
        .client
        .netns()
        .run(move || {
            let tcp = std::net::TcpStream::connect_timeout(&tcp_addr, Duration::from_secs(5))?;
            let udp = std::net::UdpSocket::bind("0.0.0.0:0")?;
            udp.connect(udp_addr)?;
            for s in [
                tcp.set_read_timeout(Some(Duration::from_secs(5))),
                udp.set_read_timeout(Some(Duration::from_secs(2))),
            ] {
                s?;
            }
            std::io::Result::Ok((tcp, udp))
        })
        .unwrap()
        .unwrap();
    let udp_ask = || -> String {
        let mut buf = [0u8; 256];
        let _ = udp.send(b"q");
        match udp.recv(&mut buf) {
            Ok(n) => String::from_utf8_lossy(&buf[..n]).trim().to_string(),
            Err(e) => format!("error: {e}"),
        }
    };
    assert_eq!(ask(&mut tcp).unwrap(), "orders");
    assert_eq!(udp_ask(), "orders");
    c.label(Some("preview"));
    // New connections move, and the flip is counted (the cut comes just after it). The
    // UDP flow is kept busy meanwhile so that its conntrack entry cannot time out.
    wait_for("flip done and counted", 30, || {
        let _ = udp_ask();
        c.reaches(tcp_addr) == "orders-preview"
            && metric(&w.metrics(), "ghostwire_flips_total", &[("to", "on")]) == Some(1.0)
    });
    if policy == "cut" {
        wait_for("connections cut", 20, || {
            let m = w.metrics();
            metric(&m, "ghostwire_flip_cut_total", &[("what", "socket")]).unwrap_or(0.0) >= 1.0
                && metric(&m, "ghostwire_flip_cut_total", &[("what", "conntrack")]).unwrap_or(0.0)
                    >= 2.0
        });
        assert_eq!(
            metric(&w.metrics(), "ghostwire_sock_destroy_supported", &[]),
            Some(1.0),
            "{}",
            w.logs()
        );
        assert!(w.logs().contains("tcp_sockets=1"), "{}", w.logs());
    }
    (ask(&mut tcp), udp_ask())
}

#[test]
fn flip_with_cut_ends_tcp_and_moves_udp() {
    let (tcp, udp) = established_across_a_flip("wcut", "cut");
    assert!(tcp.is_err(), "the TCP connection survived the cut: {tcp:?}");
    assert_eq!(udp, "orders-preview", "the UDP flow did not move");
}

#[test]
fn flip_with_keep_leaves_established_flows() {
    let (tcp, udp) = established_across_a_flip("wkeep", "keep");
    assert_eq!(
        tcp.unwrap(),
        "orders",
        "the TCP connection was cut or moved"
    );
    assert_eq!(udp, "orders", "the UDP flow moved without a cut");
}

/// An IPv6-only Pod: with GW_IPV6 unset, init maps its IPv6 ClusterIPs (and says why
/// the IPv4 ones are left alone), the watcher flips them, and its dual-stack probe
/// port answers on ::1 and 127.0.0.1.
#[test]
fn ipv6_only_pod_maps_ipv6_and_probes_answer_on_both_loopbacks() {
    let c = Cluster::new("wv6only");
    let out = c
        .client
        .command("ip")
        .args(["-4", "addr", "flush", "scope", "global"])
        .output()
        .unwrap();
    assert_ok(&out, "ip -4 addr flush");
    let file = c.dir.path("services.json").display().to_string();
    let map = c.dir.path("dnat.map").display().to_string();
    let out = run_in(
        &c.client,
        &["init", "--from-file", &file, "--dnat-map", &map],
        &[],
    );
    assert_ok(&out, "init");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("ClusterIP {} not mapped", c.orders.ipv4)) && err.contains("IPv4"),
        "{err}"
    );
    let rules = fingerprint(&c.client);
    assert!(
        rules.contains("preview6") && !rules.contains("preview4"),
        "{rules}"
    );
    let orders = c.orders.addr_v6(80);
    assert_eq!(c.reaches(orders), "orders");

    let w = Watcher::start(&c, &[("GW_HTTP_ADDR", "[::]:0")]);
    let port = w.admin.port();
    for ip in ["127.0.0.1", "::1"] {
        let addr = std::net::SocketAddr::new(ip.parse().unwrap(), port);
        assert_eq!(http_get(addr, "/readyz").unwrap().0, 200, "{addr}");
    }
    c.label(Some("preview"));
    c.wait_reaches(orders, "orders-preview");
    // The watcher's own checks agree with init's families: nothing to repair.
    assert_eq!(
        metric(&w.metrics(), "ghostwire_errors_total", &[("type", "drift")]),
        Some(0.0),
        "{}",
        w.logs()
    );
    c.label(Some("active"));
    c.wait_reaches(orders, "orders");
}

/// Emulated eBPF socket load balancing (Cilium's kube-proxy replacement): a cgroup
/// `connect4` program sends connections to the orders ClusterIP straight to its backend,
/// so the switch's chain never sees them. Without it the self-test passes; with it the
/// watcher says so (error log, metric) and, by default (GW_SELF_TEST=unready), fails
/// /healthz (the Pod's readiness probe) while init goes on with the error logged;
/// GW_SELF_TEST=fail makes init exit 5, and GW_SELF_TEST=warn keeps the watcher healthy.
#[test]
fn ebpf_socket_load_balancing_fails_the_self_test() {
    use lab_net::socket_lb::SocketLb;
    use std::net::SocketAddrV4;
    let c = Cluster::new("wsocklb");
    c.init(&[]);
    let w = Watcher::start(&c, &[]);
    wait_for("self-test passed", 20, || {
        metric(&w.metrics(), "ghostwire_self_test", &[("result", "passed")]) == Some(1.0)
    });
    drop(w);

    let orders = SocketAddrV4::new(c.orders.ipv4, 80);
    let be = c.lab.pods().iter().find(|p| p.name.ends_with("orders-be"));
    let backend = SocketAddrV4::new(be.expect("the orders backend pod").ipv4, 8080);
    let lb = SocketLb::new("wsocklb", orders, backend).expect("load the connect4 program");
    // The processes started from here are born in the cgroup.
    lb.enter().unwrap();
    let w = Watcher::spawn(&c, &[]);
    let warn = Watcher::spawn(&c, &[("GW_SELF_TEST", "warn")]);
    let file = c.dir.path("services.json").display().to_string();
    // The map goes to the test's directory: its default, /shared/dnat.map, is the host's here.
    let map = c.dir.path("dnat.map").display().to_string();
    let init_args = ["init", "--from-file", &file, "--dnat-map", &map];
    let init = run_in(&c.client, &init_args, &[]);
    let init_fail = run_in(&c.client, &init_args, &[("GW_SELF_TEST", "fail")]);
    lb.leave().unwrap();

    wait_for("self-test rewritten", 30, || {
        metric(
            &w.metrics(),
            "ghostwire_self_test",
            &[("result", "rewritten")],
        ) == Some(1.0)
    });
    // /healthz (the Pod's readiness probe) fails with the reason; /readyz (the native
    // sidecar's startup gate) does not, so the app still starts.
    let (status, body) = w.get("/healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("self-test failed"), "{body}");
    assert!(w.logs().contains("self-test FAILED"), "{}", w.logs());
    wait_for("default: /readyz in step", 30, || w.get("/readyz").0 == 200);
    assert_eq!(w.get("/healthz").0, 503);
    // Init, by default: the error, and the Pod starts.
    assert_ok(&init, "init with the default GW_SELF_TEST");
    assert!(String::from_utf8_lossy(&init.stderr).contains("self-test FAILED"));
    // GW_SELF_TEST=fail: init exits 5.
    assert_eq!(
        init_fail.status.code(),
        Some(5),
        "{}",
        String::from_utf8_lossy(&init_fail.stderr)
    );
    assert!(
        String::from_utf8_lossy(&init_fail.stderr).contains("rewrites ClusterIPs before netfilter")
    );
    // GW_SELF_TEST=warn: the same finding, and ready anyway.
    wait_for("warn: healthy anyway", 30, || {
        warn.get("/healthz").0 == 200 && warn.get("/readyz").0 == 200
    });
    assert_eq!(
        metric(
            &warn.metrics(),
            "ghostwire_self_test",
            &[("result", "rewritten")]
        ),
        Some(1.0)
    );
    drop((w, warn, lb));
}
