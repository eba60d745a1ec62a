//! `ghostwire init` on the real kernel, in lab pods: both backends (and both
//! iptables flavours), IPv4 and IPv6.

mod common;

use common::*;
use lab_net::{Lab, Pod, Service, ServicePort};
use std::net::SocketAddr;

struct World {
    lab: Lab,
    orders: Service,
    payments: Service,
    dns: Service,
    dir: TempDir,
    _echo: Vec<lab_net::echo::EchoServer>,
}

impl World {
    /// orders + orders-preview, payments (no preview), dns + dns-preview; each backend
    /// pod answers with its Service's name on TCP 8080 and UDP 5353.
    fn new(test: &str) -> World {
        let mut lab = Lab::new(test).unwrap();
        let ports = [
            ServicePort::tcp(80, 8080).named("http"),
            ServicePort::udp(53, 5353).named("dns"),
        ];
        let mut echo = Vec::new();
        let mut svc = |lab: &mut Lab, name: &str| {
            let pod = lab.add_pod(&format!("{name}-be")).unwrap();
            echo.push(pod.serve_echo(name, &[8080], &[5353]).unwrap());
            lab.add_service(name, &ports, &[&pod]).unwrap()
        };
        let orders = svc(&mut lab, "orders");
        let orders_preview = svc(&mut lab, "orders-preview");
        let payments = svc(&mut lab, "payments");
        let dns = svc(&mut lab, "dns");
        let dns_preview = svc(&mut lab, "dns-preview");
        let dir = TempDir::new(test);
        std::fs::write(
            dir.path("services.json"),
            lab_net::kube_json::service_list(
                &[&orders, &orders_preview, &payments, &dns, &dns_preview],
                "default",
            ),
        )
        .unwrap();
        World {
            lab,
            orders,
            payments,
            dns,
            dir,
            _echo: echo,
        }
    }

    fn services_file(&self) -> String {
        self.dir.path("services.json").display().to_string()
    }

    fn init(&self, pod: &Pod, extra: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let map = self.dir.path(&format!("{}.map", pod.name));
        let mut args = vec!["init", "--from-file"];
        let file = self.services_file();
        args.push(&file);
        let map = map.display().to_string();
        args.extend(["--dnat-map", &map]);
        args.extend(extra);
        run_in(pod, &args, env)
    }
}

fn addr(s: &Service, port: u16, v6: bool) -> SocketAddr {
    if v6 { s.addr_v6(port) } else { s.addr_v4(port) }
}

fn foreign_rule(pod: &Pod, backend: &str) {
    let script = match backend {
        "nftables" => {
            "nft add table inet theirs && nft add chain inet theirs out '{ type nat hook output priority -100; }' && nft add rule inet theirs out tcp dport 9 return"
        }
        "iptables-legacy" => {
            "iptables-legacy -t nat -A OUTPUT -p tcp --dport 9 -j RETURN && ip6tables-legacy -t nat -A OUTPUT -p tcp --dport 9 -j RETURN"
        }
        _ => {
            "iptables-nft -t nat -A OUTPUT -p tcp --dport 9 -j RETURN && ip6tables-nft -t nat -A OUTPUT -p tcp --dport 9 -j RETURN"
        }
    };
    let out = pod.command("sh").args(["-c", script]).output().unwrap();
    assert_ok(&out, script);
}

fn check_routing(test: &str, backend: &str, v6: bool) {
    let mut w = World::new(test);
    let preview = w.lab.add_pod("client-preview").unwrap();
    let active = w.lab.add_pod("client-active").unwrap();
    // The pods' DNS server is the dns Service, which has a preview: the default
    // exclusions (resolv.conf nameservers) must keep it on active.
    let dns_ip = if v6 {
        w.dns.ipv6.to_string()
    } else {
        w.dns.ipv4.to_string()
    };
    let _r1 = PodResolv::new(&preview, &dns_ip);
    let _r2 = PodResolv::new(&active, &dns_ip);
    let ipv6 = if v6 { "true" } else { "false" };
    let env = [("GW_BACKEND", backend), ("GW_IPV6", ipv6)];

    foreign_rule(&preview, backend);
    let before = fingerprint(&preview);

    assert_ok(&w.init(&preview, &["--activate"], &env), "init --activate");
    assert_ok(&w.init(&active, &[], &env), "init");

    let orders = addr(&w.orders, 80, v6);
    assert_eq!(
        preview.tcp_request(orders).unwrap(),
        "orders-preview",
        "preview pod, TCP"
    );
    assert_eq!(
        preview.udp_request(addr(&w.orders, 53, v6)).unwrap(),
        "orders-preview",
        "preview pod, UDP"
    );
    assert_eq!(active.tcp_request(orders).unwrap(), "orders", "active pod");
    assert_eq!(
        preview.tcp_request(addr(&w.payments, 80, v6)).unwrap(),
        "payments",
        "no preview: fallback"
    );
    assert_eq!(
        preview.tcp_request(addr(&w.dns, 80, v6)).unwrap(),
        "dns",
        "cluster DNS is excluded"
    );

    // Running init again changes nothing.
    let applied = fingerprint(&preview);
    assert_ok(&w.init(&preview, &["--activate"], &env), "second init");
    assert_eq!(
        applied,
        fingerprint(&preview),
        "re-running init changed the rules"
    );
    // Without --activate, init keeps the jump it finds.
    assert_ok(&w.init(&preview, &[], &env), "init without --activate");
    assert_eq!(applied, fingerprint(&preview));
    assert!(!before.is_empty());
    for line in before.lines() {
        assert!(
            applied.lines().any(|l| l == line),
            "foreign rule lost: {line}"
        );
    }

    // The audit map: one line per mapping, mode 0644.
    let map_path = w.dir.path("client-preview.map");
    let map = std::fs::read_to_string(&map_path).unwrap();
    let o = if v6 {
        format!("[{}]:80", w.orders.ipv6)
    } else {
        format!("{}:80", w.orders.ipv4)
    };
    assert!(
        map.lines().any(
            |l| l.starts_with("tcp orders.default.svc.cluster.local port=http ") && l.contains(&o)
        ),
        "{map}"
    );
    assert!(!map.contains("payments"), "{map}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&map_path).unwrap().permissions().mode() & 0o777,
        0o644
    );

    // Cleanup leaves the namespace exactly as it was, foreign rule included.
    assert_ok(
        &run_in(&preview, &["init", "--cleanup"], &env),
        "init --cleanup",
    );
    assert_eq!(
        before,
        fingerprint(&preview),
        "cleanup did not restore the namespace"
    );
    assert_eq!(preview.tcp_request(orders).unwrap(), "orders");
}

macro_rules! routing_tests {
    ($($name:ident: $backend:literal, $v6:literal;)*) => {
        $(#[test]
        fn $name() {
            check_routing(stringify!($name), $backend, $v6);
        })*
    };
}

routing_tests! {
    routes_nftables_v4: "nftables", false;
    routes_nftables_v6: "nftables", true;
    routes_iptables_nft_v4: "iptables-nft", false;
    routes_iptables_nft_v6: "iptables-nft", true;
    routes_iptables_legacy_v4: "iptables-legacy", false;
    routes_iptables_legacy_v6: "iptables-legacy", true;
}

#[test]
fn explicit_exclusions_stay_on_active() {
    let mut w = World::new("excl");
    let pod = w.lab.add_pod("client").unwrap();
    let cidr = format!("{}/32", w.orders.ipv4);
    let out = w.init(&pod, &["--activate"], &[("GW_EXCLUDE_CIDRS", &cidr)]);
    assert_ok(&out, "init");
    assert_eq!(pod.tcp_request(w.orders.addr_v4(80)).unwrap(), "orders");
    assert_ok(&run_in(&pod, &["init", "--cleanup"], &[]), "cleanup");
}

#[test]
fn dry_run_touches_nothing_and_json_output() {
    let mut w = World::new("dryrun");
    let pod = w.lab.add_pod("client").unwrap();
    let before = fingerprint(&pod);
    let out = w.init(&pod, &["--dry-run", "--activate"], &[]);
    assert_ok(&out, "dry run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("add rule inet ghostwire_switch output jump CANARY_DNAT"),
        "{text}"
    );
    assert!(text.contains("tcp orders.default"), "{text}");
    assert_eq!(before, fingerprint(&pod), "dry run changed rules");
    assert!(!w.dir.path("client.map").exists(), "dry run wrote the map");

    // The lab pod is dual-stack: GW_IPV6=auto would map both families; IPv4 only here.
    let out = w.init(
        &pod,
        &["--output", "json"],
        &[("GW_BACKEND", "iptables-legacy"), ("GW_IPV6", "false")],
    );
    assert_ok(&out, "json");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["mappings"].as_array().unwrap().len(), 4, "{v}");
    assert_eq!(v["mappings"][0]["active"], "dns");
    assert_ok(
        &run_in(
            &pod,
            &["init", "--cleanup", "--backend", "iptables-legacy"],
            &[],
        ),
        "cleanup",
    );
    assert_eq!(before, fingerprint(&pod));
}

#[test]
fn bad_input_exits_2_and_names_the_problem() {
    let dir = TempDir::new("badinput");
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(ghostwire());
        c.args(args).envs(env.iter().copied());
        c.output().unwrap()
    };
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        (
            &["init", "--dry-run"],
            &[("GW_JUMP_HOOK", "INPUT")],
            "GW_JUMP_HOOK=\"INPUT\"",
        ),
        (
            &["init", "--dry-run"],
            &[("GW_EXCLUDE_CIDRS", "10.0.0.0/99")],
            "GW_EXCLUDE_CIDRS",
        ),
        (
            &["init", "--dry-run", "--poll-interval", "soon"],
            &[],
            "GW_POLL_INTERVAL=\"soon\"",
        ),
        (
            &["init", "--dry-run"],
            &[("GW_SVC_PREVIEW_PATTERN", "preview")],
            "{{name}}",
        ),
        (
            &["init", "--dry-run", "--config", "/nonexistent/gw.env"],
            &[],
            "GW_CONFIG",
        ),
    ];
    for (args, env, needle) in cases {
        let out = run(args, env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} {env:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let bad = dir.path("bad.json");
    std::fs::write(&bad, "{\"kind\": \"List\",\n \"items\": [{\"kind\": \"Service\", \"spec\": {\"ports\": [{\"port\": \"x\"}]}}]}").unwrap();
    let out = run(
        &["init", "--dry-run", "--from-file", bad.to_str().unwrap()],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("line 2"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn unreachable_api_exits_3_after_bounded_retries() {
    let dir = TempDir::new("noapi");
    let kubeconfig = dir.path("kubeconfig");
    // Port 1 on loopback: nothing listens there, so every attempt is refused at once.
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
    )
    .unwrap();
    let out = std::process::Command::new(ghostwire())
        .args(["init", "--dry-run", "--api-timeout", "1s"])
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("gave up after") && err.contains("namespace \"default\""),
        "{err}"
    );
    // With GW_API_UNREACHABLE=active init starts anyway, with no pairs: every Service reaches
    // its active backend.
    let out = std::process::Command::new(ghostwire())
        .args(["init", "--dry-run", "--api-timeout", "1s"])
        .env("KUBECONFIG", &kubeconfig)
        .env("GW_API_UNREACHABLE", "active")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("GW_API_UNREACHABLE=active"), "{err}");
    assert!(
        text.contains("mappings=0"),
        "no pairs without the API: {text}"
    );
}

#[test]
fn api_server_and_dns_are_never_hijacked() {
    let mut lab = Lab::new("hijack").unwrap();
    let ports = [ServicePort::tcp(443, 8080).named("https")];
    let mut echo = Vec::new();
    let mut svcs = Vec::new();
    for name in ["kubernetes", "kubernetes-preview", "dns", "dns-preview"] {
        let be = lab.add_pod(&format!("{name}-be")).unwrap();
        echo.push(be.serve_echo(name, &[8080], &[]).unwrap());
        svcs.push(lab.add_service(name, &ports, &[&be]).unwrap());
    }
    let dir = TempDir::new("hijack");
    let file = dir.path("services.json");
    let refs: Vec<&Service> = svcs.iter().collect();
    std::fs::write(&file, lab_net::kube_json::service_list(&refs, "default")).unwrap();
    let pod = lab.add_pod("client").unwrap();
    let _resolv = PodResolv::new(&pod, &svcs[2].ipv4.to_string());
    let api_host = svcs[0].ipv4.to_string();
    let out = run_in(
        &pod,
        &[
            "init",
            "--activate",
            "--from-file",
            file.to_str().unwrap(),
            "--dnat-map",
            "",
        ],
        // Explicit exclusions without the DNS server: the protection must not depend on them.
        &[
            ("GW_EXCLUDE_CIDRS", "169.254.169.254/32"),
            ("KUBERNETES_SERVICE_HOST", &api_host),
        ],
    );
    assert_ok(&out, "init");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("API server"), "{err}");
    assert!(err.contains("nameserver"), "{err}");
    assert_eq!(pod.tcp_request(svcs[0].addr_v4(443)).unwrap(), "kubernetes");
    assert_eq!(pod.tcp_request(svcs[2].addr_v4(443)).unwrap(), "dns");
    assert_ok(&run_in(&pod, &["init", "--cleanup"], &[]), "cleanup");
}

#[test]
fn missing_kubeconfig_says_its_cause_once_with_a_hint() {
    let dir = TempDir::new("nokubeconfig");
    let out = std::process::Command::new(ghostwire())
        .args(["init", "--dry-run"])
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("HOME", dir.path("home"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
    assert_eq!(err.matches("in-cluster").count(), 1, "{err}");
    assert!(err.contains("KUBECONFIG"), "{err}");
}

#[test]
fn bad_knobs_are_refused_before_any_api_call() {
    // An API that is never reached: port 1 refuses at once, and a long budget would show.
    let dir = TempDir::new("knobfirst");
    let kubeconfig = dir.path("kubeconfig");
    std::fs::write(
        &kubeconfig,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
    )
    .unwrap();
    for (args, knob, value) in [
        (&["init", "--dry-run"][..], "GW_JUMP_HOOK", "POSTROUTING"),
        (&["init", "--dry-run"][..], "GW_API_UNREACHABLE", "maybe"),
        (
            &["watcher", "--pod-name", "p"][..],
            "GW_REFRESH_INTERVAL",
            "0s",
        ),
        (
            &["watcher", "--pod-name", "p"][..],
            "GW_POLL_INTERVAL",
            "0s",
        ),
    ] {
        let out = std::process::Command::new(ghostwire())
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env("GW_API_TIMEOUT", "60s")
            .env(knob, value)
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{knob}={value}: {err}");
        assert!(err.contains(&format!("{knob}={value:?}")), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!err.contains("127.0.0.1:1"), "the API was called: {err}");
    }
}

#[test]
fn backend_auto_probes_what_the_switch_needs() {
    // An `nft` that lists tables but cannot load the switch's ruleset (as an nft built
    // without concatenations, or a kernel without inet NAT) must not be chosen.
    let w = World::new("probe");
    let bin = w.dir.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join("nft");
    std::fs::write(
        &fake,
        "#!/bin/sh\n[ \"$1 $2\" = \"list tables\" ] && exit 0\necho 'Error: Could not process rule: Operation not supported' >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let pod = &w.lab.pods()[0];
    let out = w.init(pod, &["--dry-run"], &[("PATH", &path)]);
    assert_ok(&out, "dry run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("# ruleset (iptables"), "{text}");
}
