//! proxy-init against the real kernel, in lab pods (network namespaces named after the test,
//! removed on drop): both backends, both families, idempotence, cleanup, the validator, and
//! what really gets redirected.

use lab_net::{Lab, Pod};
use mesh_config::{InitSettings, Sources};
use mesh_proxy_init::{rules, validate};
use netrules::{Backend, BackendKind, IptablesFlavour};
use std::io::{Read, Write};
use std::net::{Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

const KINDS: [BackendKind; 2] = [
    BackendKind::Nftables,
    BackendKind::Iptables(IptablesFlavour::Legacy),
];

fn settings(pairs: &[(&str, &str)]) -> InitSettings {
    Sources {
        given: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Sources::default()
    }
    .init_settings()
    .unwrap()
}

fn fingerprint(pod: &Pod) -> String {
    pod.netns().run(netrules::fingerprint).unwrap().unwrap()
}

#[test]
fn apply_is_idempotent_verified_and_cleaned_up_on_both_backends() {
    for kind in KINDS {
        let mut lab = Lab::new(&format!("mpi-idem-{kind}")).unwrap();
        let pod = lab.add_pod("app").unwrap();
        let s = settings(&[]);
        let b = Backend::new(kind);
        let empty = fingerprint(&pod);
        pod.netns().run(|| rules::apply(&b, &s)).unwrap().unwrap();
        let once = fingerprint(&pod);
        assert_ne!(empty, once, "{kind}: nothing applied");
        pod.netns().run(|| rules::apply(&b, &s)).unwrap().unwrap();
        assert_eq!(
            once,
            fingerprint(&pod),
            "{kind}: second apply changed rules"
        );
        pod.netns().run(|| rules::cleanup(&b)).unwrap().unwrap();
        assert_eq!(empty, fingerprint(&pod), "{kind}: cleanup left something");
    }
}

/// A listener on the proxy's port that reports the original destination of what it accepts.
fn fake_proxy(pod: &Pod, port: u16) -> std::thread::JoinHandle<Vec<SocketAddr>> {
    let l = pod.listen_tcp((Ipv6Addr::UNSPECIFIED, port)).unwrap();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        l.set_nonblocking(false).unwrap();
        for s in l.incoming() {
            let mut s = s.unwrap();
            let local = s.local_addr().unwrap();
            let dst = mesh_orig_dst::original_dst(&s, local).unwrap();
            let mut b = [0u8; 4];
            let _ = s.read(&mut b);
            if &b == b"STOP" {
                return seen;
            }
            let _ = s.write_all(format!("proxy saw {dst}\n").as_bytes());
            seen.push(dst);
        }
        seen
    })
}

fn say(pod: &Pod, to: SocketAddr, what: &str) -> String {
    pod.netns()
        .run(|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
            s.write_all(what.as_bytes())?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            Ok(out.trim().to_string())
        })
        .unwrap()
        .unwrap_or_else(|e| format!("error: {e}"))
}

#[test]
fn intercepts_both_ways_with_original_destinations_and_exempts_the_proxy_uid() {
    for kind in KINDS {
        let mut lab = Lab::new(&format!("mpi-int-{kind}")).unwrap();
        let app = lab.add_pod("app").unwrap();
        let peer = lab.add_pod("peer").unwrap();
        let _echo = peer.serve_echo("peer", &[8080], &[]).unwrap();
        let _app_echo = app.serve_echo("app", &[8080], &[]).unwrap();
        // The test runs as root (redirected); 4242 plays the proxy's uid (exempt).
        let s = settings(&[(mesh_config::PROXY_UID, "4242")]);
        let b = Backend::new(kind);
        app.netns().run(|| rules::apply(&b, &s)).unwrap().unwrap();
        let outbound = fake_proxy(&app, 5000);
        let inbound = fake_proxy(&app, 4000);

        // Outbound, IPv4 and IPv6: lands on the proxy with the real destination.
        let to4 = SocketAddr::new(peer.ipv4.into(), 8080);
        let to6 = SocketAddr::new(peer.ipv6.into(), 8080);
        assert_eq!(say(&app, to4, "x"), format!("proxy saw {to4}"), "{kind}");
        assert_eq!(say(&app, to6, "x"), format!("proxy saw {to6}"), "{kind}");
        // Inbound from another pod, both families, to the pod's own address.
        let app4 = SocketAddr::new(app.ipv4.into(), 8080);
        let app6 = SocketAddr::new(app.ipv6.into(), 8080);
        assert_eq!(say(&peer, app4, "x"), format!("proxy saw {app4}"), "{kind}");
        assert_eq!(say(&peer, app6, "x"), format!("proxy saw {app6}"), "{kind}");
        // The admin port is skipped inbound: nothing listens there, so the peer is refused
        // instead of reaching the inbound proxy.
        let admin = SocketAddr::new(app.ipv4.into(), 4191);
        assert!(say(&peer, admin, "x").starts_with("error"), "{kind}");
        // Pod-local traffic is not redirected.
        let local = SocketAddr::from(([127, 0, 0, 1], 8080));
        assert_eq!(say(&app, local, "x\n"), "app", "{kind}");

        // The proxy's uid is exempt: the same connection as that uid reaches the peer itself.
        let out = app
            .command("setpriv")
            .args(["--reuid=4242", "--regid=4242", "--clear-groups", "--"])
            .args(["sh", "-c", &format!("echo x | socat -t2 - TCP:{to4}")])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "peer",
            "{kind}: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        for (port, h) in [(5000, outbound), (4000, inbound)] {
            say(&app, SocketAddr::from(([127, 0, 0, 1], port)), "STOP");
            assert_eq!(h.join().unwrap().len(), 2, "{kind} port {port}");
        }
    }
}

#[test]
fn validator_passes_with_the_rules_and_fails_without() {
    let mut lab = Lab::new("mpi-validate").unwrap();
    let pod = lab.add_pod("app").unwrap();
    let short = Duration::from_millis(500);
    let e = pod
        .netns()
        .run(|| validate(5000, true, short))
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(e, mesh_proxy_init::ValidateError::NotRedirected { .. }),
        "{e}"
    );
    let s = settings(&[]);
    let b = Backend::new(BackendKind::Nftables);
    pod.netns().run(|| rules::apply(&b, &s)).unwrap().unwrap();
    let seen = pod
        .netns()
        .run(|| validate(5000, true, Duration::from_secs(3)))
        .unwrap()
        .unwrap();
    assert_eq!(seen.len(), 2);
    assert!(seen[0].is_ipv4() && seen[1].is_ipv6());
}
