//! Against the real kernel, each test in a network namespace of its own.

use crate::model::tests::sample;
use crate::{Action, Backend, BackendKind, Error, IptablesFlavour};
use netns::Netns;

/// A namespace named after the test; removed on drop, even when the test panics.
struct TestNs(Netns);

impl TestNs {
    fn new(test: &str, backend: BackendKind) -> TestNs {
        let name = format!("gwt-nr-{test}-{backend}-{}", std::process::id());
        let _ = Netns::delete(&name);
        TestNs(Netns::create(&name).expect("create netns"))
    }

    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.0.run(f).expect("run in netns")
    }

    fn snapshot(&self) -> String {
        self.run(crate::fingerprint).expect("read rules")
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Netns::delete(self.0.name());
    }
}

const KINDS: [BackendKind; 3] = [
    BackendKind::Nftables,
    BackendKind::Iptables(IptablesFlavour::Nft),
    BackendKind::Iptables(IptablesFlavour::Legacy),
];

/// Someone else's rules, in the same hooks we use.
fn add_foreign_rules(ns: &TestNs, kind: BackendKind) {
    ns.run(|| {
        let sh = |script: &str| {
            let st = std::process::Command::new("sh")
                .args(["-c", script])
                .status()
                .unwrap();
            assert!(st.success(), "{script}");
        };
        match kind {
            BackendKind::Nftables => sh(
                "nft add table inet theirs && nft add chain inet theirs out '{ type nat hook output priority -100; }' && nft add rule inet theirs out tcp dport 9 return",
            ),
            BackendKind::Iptables(IptablesFlavour::Legacy) => sh(
                "iptables-legacy -t nat -N THEIRS && iptables-legacy -t nat -A OUTPUT -p tcp --dport 9 -j THEIRS",
            ),
            _ => sh(
                "iptables-nft -t nat -N THEIRS && iptables-nft -t nat -A OUTPUT -p tcp --dport 9 -j THEIRS",
            ),
        }
    });
}

#[test]
fn apply_is_verified_idempotent_and_leaves_others_alone() {
    for kind in KINDS {
        let ns = TestNs::new("idem", kind);
        add_foreign_rules(&ns, kind);
        let before = ns.snapshot();
        let b = Backend::new(kind);
        let t = sample();
        let first = ns.run(|| b.apply(&t)).unwrap();
        assert_eq!(first, b.expected(&t).unwrap(), "{kind}");
        let after_one = ns.snapshot();
        assert_ne!(before, after_one, "{kind}: apply changed nothing");
        ns.run(|| b.apply(&t)).unwrap();
        assert_eq!(
            after_one,
            ns.snapshot(),
            "{kind}: second apply changed the ruleset"
        );
        // Foreign rules survive both the applies and the cleanup.
        assert!(after_one.to_lowercase().contains("theirs"), "{kind}");
        if let BackendKind::Iptables(flavour) = kind {
            // Our jump runs before the foreign rule that was in OUTPUT first.
            let bin = match flavour {
                IptablesFlavour::Legacy => "iptables-legacy-save",
                _ => "iptables-nft-save",
            };
            let save = ns.run(|| {
                std::process::Command::new(bin)
                    .args(["-t", "nat"])
                    .output()
                    .unwrap()
            });
            let save = String::from_utf8_lossy(&save.stdout).into_owned();
            let output: Vec<&str> = save
                .lines()
                .filter(|l| l.starts_with("-A OUTPUT"))
                .collect();
            assert_eq!(output.len(), 2, "{kind}: {save}");
            assert!(output[0].ends_with("-j CANARY_DNAT"), "{kind}: {save}");
            assert!(output[1].ends_with("-j THEIRS"), "{kind}: {save}");
        }
        ns.run(|| b.cleanup(&t.name)).unwrap();
        assert_eq!(
            before,
            ns.snapshot(),
            "{kind}: cleanup did not restore the namespace"
        );
        // Cleaning up twice is fine.
        ns.run(|| b.cleanup(&t.name)).unwrap();
    }
}

#[test]
fn changed_model_replaces_old_content() {
    for kind in KINDS {
        let ns = TestNs::new("change", kind);
        let b = Backend::new(kind);
        let mut t = sample();
        ns.run(|| b.apply(&t)).unwrap();
        t.maps[0].entries.pop_first();
        t.sets[0].elements.pop_first();
        let got = ns.run(|| b.apply(&t)).unwrap();
        assert_eq!(got, b.expected(&t).unwrap(), "{kind}");
        // Dropping IPv6 content removes it from the kernel too.
        t.maps.retain(|m| m.name != "dnat6");
        t.sets.retain(|s| s.name != "exclude6");
        t.chains[0].rules.retain(|r| {
            !matches!(&r.action, Action::DnatMap(m) if m == "dnat6")
                && r.matches != [crate::Match::DstInSet("exclude6".into())]
        });
        ns.run(|| b.apply(&t)).unwrap();
        let v6 = ns.run(|| {
            std::process::Command::new("ip6tables-legacy-save")
                .output()
                .unwrap()
        });
        assert!(
            !String::from_utf8_lossy(&v6.stdout).contains("ghostwire"),
            "{kind}"
        );
        ns.run(|| b.cleanup(&t.name)).unwrap();
    }
}

#[test]
fn verify_notices_tampering() {
    for kind in KINDS {
        let ns = TestNs::new("tamper", kind);
        let b = Backend::new(kind);
        let t = sample();
        ns.run(|| b.apply(&t)).unwrap();
        ns.run(|| {
            let (p, a): (&str, &[&str]) = match kind {
                BackendKind::Nftables => (
                    "nft",
                    &["flush", "chain", "inet", "ghostwire", "CANARY_DNAT"],
                ),
                BackendKind::Iptables(IptablesFlavour::Legacy) => {
                    ("iptables-legacy", &["-t", "nat", "-F", "CANARY_DNAT"])
                }
                _ => ("iptables-nft", &["-t", "nat", "-F", "CANARY_DNAT"]),
            };
            assert!(
                std::process::Command::new(p)
                    .args(a)
                    .status()
                    .unwrap()
                    .success()
            );
        });
        let err = ns.run(|| b.verify(&t)).unwrap_err();
        assert!(matches!(err, Error::Verify { .. }), "{kind}: {err}");
        assert!(err.to_string().contains("CANARY_DNAT"), "{err}");
        // Applying again repairs it.
        ns.run(|| b.apply(&t)).unwrap();
        ns.run(|| b.cleanup(&t.name)).unwrap();
    }
}

#[test]
fn jump_flips_alone_and_exactly_once() {
    for kind in KINDS {
        let ns = TestNs::new("jump", kind);
        let b = Backend::new(kind);
        let mut t = sample();
        t.chain_mut("output").unwrap().rules.clear();
        ns.run(|| b.apply(&t)).unwrap();
        let with_jump = sample();
        for _ in 0..2 {
            let got = ns.run(|| b.apply_chain(&with_jump, "output")).unwrap();
            let jumps = got
                .chains
                .iter()
                .filter(|(k, _)| k.starts_with("OUTPUT") || k.as_str() == "output")
                .flat_map(|(_, v)| v)
                .filter(|l| l.contains("CANARY_DNAT"))
                .count();
            let families = if kind == BackendKind::Nftables { 1 } else { 2 };
            assert_eq!(jumps, families, "{kind}: {got:?}");
        }
        // The DNAT content was not touched by the flip.
        ns.run(|| b.verify(&with_jump)).unwrap();
        let got = ns.run(|| b.apply_chain(&t, "output")).unwrap();
        assert!(
            !format!("{got:?}").contains("jump CANARY")
                && !format!("{got:?}").contains("-j CANARY")
        );
        ns.run(|| b.cleanup(&t.name)).unwrap();
    }
}

#[test]
fn failed_transaction_changes_nothing() {
    for kind in KINDS {
        let ns = TestNs::new("atomic", kind);
        let b = Backend::new(kind);
        let before = ns.snapshot();
        // Flipping the jump on before the chain it targets exists must fail as a whole.
        let err = ns.run(|| b.apply_chain(&sample(), "output")).unwrap_err();
        assert!(matches!(err, Error::Exec(_)), "{kind}: {err}");
        assert_eq!(
            before,
            ns.snapshot(),
            "{kind}: a failed transaction left rules behind"
        );
    }
}

fn rule(matches: Vec<crate::Match>, action: Action, comment: &str) -> crate::Rule {
    crate::Rule {
        matches,
        action,
        comment: comment.into(),
    }
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

/// A gateway's chains: filter chains with accept/drop, MSS clamping, masquerade, SNAT and
/// DNAT to a port.
fn gateway_chains() -> Vec<crate::Chain> {
    use crate::{Chain, Hook, Match, Protocol};
    vec![
        Chain {
            name: "forward".into(),
            hook: Some(Hook::FilterForward),
            rules: vec![
                rule(vec![Match::TcpSyn], Action::ClampMss, "clamp"),
                rule(vec![Match::Established], Action::Accept, "est"),
                rule(
                    vec![
                        Match::InIface("vxlan0".into()),
                        Match::OutIface("tun0".into()),
                    ],
                    Action::Accept,
                    "out",
                ),
                rule(vec![Match::Dst(net("fd00::/64"))], Action::Accept, "v6"),
                rule(vec![Match::Dst(net("10.0.0.1/32"))], Action::Accept, "host"),
                rule(vec![], Action::Drop, "rest"),
            ],
        },
        Chain {
            name: "output".into(),
            hook: Some(Hook::FilterOutput),
            rules: vec![
                rule(
                    vec![Match::DstPort(Protocol::Udp, 443)],
                    Action::Accept,
                    "vpn",
                ),
                rule(vec![Match::L4(Protocol::Udp)], Action::Drop, "udp"),
            ],
        },
        Chain {
            name: "prerouting".into(),
            hook: Some(Hook::Prerouting),
            rules: vec![
                rule(
                    vec![
                        Match::InIface("tun0".into()),
                        Match::DstPort(Protocol::Tcp, 8080),
                    ],
                    Action::Dnat("172.16.0.10:80".parse().unwrap()),
                    "fwd",
                ),
                rule(
                    vec![
                        Match::InIface("tun0".into()),
                        Match::DstPort(Protocol::Udp, 53),
                    ],
                    Action::Dnat("[fd00::a]:5353".parse().unwrap()),
                    "fwd6",
                ),
            ],
        },
        Chain {
            name: "postrouting".into(),
            hook: Some(Hook::Postrouting),
            rules: vec![
                rule(
                    vec![
                        Match::OutIface("tun0".into()),
                        Match::Src(net("172.16.0.0/24")),
                    ],
                    Action::Masquerade,
                    "masq",
                ),
                rule(
                    vec![Match::OutIface("eth1".into())],
                    Action::Snat("192.0.2.7".parse().unwrap()),
                    "snat",
                ),
            ],
        },
    ]
}

/// A gateway-like table (see [`gateway_chains`]). nftables applies, reads back and
/// verifies it; iptables refuses it whole.
#[test]
fn filter_and_nat_statements_round_trip_through_nftables() {
    let t = crate::Table {
        name: "gwtest".into(),
        sets: vec![],
        maps: vec![],
        chains: gateway_chains(),
    };
    let ns = TestNs::new("filter", BackendKind::Nftables);
    let b = Backend::new(BackendKind::Nftables);
    ns.run(|| b.apply(&t)).unwrap();
    let once = ns.snapshot();
    ns.run(|| b.apply(&t)).unwrap();
    assert_eq!(once, ns.snapshot(), "second apply changed the ruleset");
    // A rule changed behind our back is a verification failure.
    ns.run(|| {
        std::process::Command::new("nft")
            .args(["flush", "chain", "inet", "gwtest", "output"])
            .status()
            .unwrap()
    });
    assert!(matches!(ns.run(|| b.verify(&t)), Err(Error::Verify { .. })));
    ns.run(|| b.cleanup("gwtest")).unwrap();

    let ipt = Backend::new(BackendKind::Iptables(IptablesFlavour::Nft));
    let e = ns.run(|| ipt.apply(&t)).unwrap_err().to_string();
    assert!(e.contains("does not support filter chains"), "{e}");
}

#[test]
fn overlapping_prefixes_in_a_set_apply_and_verify() {
    for kind in KINDS {
        let ns = TestNs::new("overlap", kind);
        let b = Backend::new(kind);
        let mut t = sample();
        // 10.96.0.10/32 and 10.3.0.0/16 are already in the sample; /8 covers both.
        for n in ["10.0.0.0/8", "10.96.0.0/12", "10.96.0.10/32"] {
            t.sets[0].elements.insert(n.parse().unwrap());
        }
        let got = ns
            .run(|| b.apply(&t))
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(got, b.expected(&t).unwrap(), "{kind}");
        ns.run(|| b.verify(&t)).unwrap();
        ns.run(|| b.cleanup(&t.name)).unwrap();
    }
}

/// Replaces rule number `index` of `chain` in table `ghostwire` with `rule` (nft syntax).
fn nft_replace_rule(chain: &str, index: usize, rule: &str) {
    let out = std::process::Command::new("nft")
        .args(["-j", "list", "chain", "inet", "ghostwire", chain])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let handles: Vec<u64> = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["rule"]["handle"].as_u64())
        .collect();
    let handle = handles[index].to_string();
    let st = std::process::Command::new("nft")
        .args([
            "replace",
            "rule",
            "inet",
            "ghostwire",
            chain,
            "handle",
            &handle,
        ])
        .args(rule.split(' '))
        .status()
        .unwrap();
    assert!(st.success(), "replace {chain}#{index} with {rule}");
}

/// Every field of every rule, and the base chain's policy, is compared on read-back:
/// each tampering in turn is reported, and a full apply repairs it.
#[test]
fn nft_verify_compares_every_field() {
    let tampers: &[(&str, &(dyn Fn() + Sync))] = &[
        ("match operator", &|| {
            nft_replace_rule(
                "CANARY_DNAT",
                0,
                "ip daddr != @exclude4 return comment \"ghostwire: excluded destinations\"",
            )
        }),
        ("matched field", &|| {
            nft_replace_rule(
                "CANARY_DNAT",
                0,
                "ip saddr @exclude4 return comment \"ghostwire: excluded destinations\"",
            )
        }),
        ("protocols of the DNAT", &|| {
            nft_replace_rule(
                "CANARY_DNAT",
                2,
                "meta l4proto { tcp } dnat ip to ip daddr . meta l4proto . th dport map @dnat4 comment \"ghostwire: active to preview\"",
            )
        }),
        ("key of the DNAT map lookup", &|| {
            nft_replace_rule(
                "CANARY_DNAT",
                2,
                "meta l4proto { tcp, udp, sctp } dnat ip to ip daddr . meta l4proto . th sport map @dnat4 comment \"ghostwire: active to preview\"",
            )
        }),
        ("flags of a set", &|| {
            // The same table, its exclude4 set declared with one more flag.
            let text = crate::nft::render_table(&sample()).replace(
                "exclude4 { type ipv4_addr; flags interval; }",
                "exclude4 { type ipv4_addr; flags interval, timeout; }",
            );
            assert!(text.contains("timeout"), "{text}");
            crate::exec::run("nft", &["-f", "-"], Some(&text)).unwrap();
        }),
        ("base chain policy", &|| {
            let st = std::process::Command::new("nft")
                .args(["chain", "inet", "ghostwire", "output", "{ policy drop ; }"])
                .status()
                .unwrap();
            assert!(st.success());
        }),
    ];
    let ns = TestNs::new("fields", BackendKind::Nftables);
    let b = Backend::new(BackendKind::Nftables);
    let t = sample();
    ns.run(|| b.apply(&t)).unwrap();
    for (what, tamper) in tampers {
        ns.run(tamper);
        let res = ns.run(|| b.verify(&t));
        assert!(
            matches!(res, Err(Error::Verify { .. })),
            "{what}: tampering not detected"
        );
        ns.run(|| b.apply(&t)).unwrap();
        ns.run(|| b.verify(&t))
            .unwrap_or_else(|e| panic!("{what}: not repaired: {e}"));
    }
    ns.run(|| b.cleanup(&t.name)).unwrap();
}

/// The kernel handles of the table's base chains: a deleted and re-created chain gets a
/// new one, and with it a new place among the other hooks at its priority.
fn base_chain_handles() -> Vec<u64> {
    let out = std::process::Command::new("nft")
        .args(["-j", "list", "table", "inet", "ghostwire"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["chain"]["hook"].is_string())
        .filter_map(|i| i["chain"]["handle"].as_u64())
        .collect()
}

#[test]
fn nft_steady_state_updates_keep_the_hook_registered() {
    let ns = TestNs::new("hookkeep", BackendKind::Nftables);
    add_foreign_rules(&ns, BackendKind::Nftables);
    let b = Backend::new(BackendKind::Nftables);
    let mut t = sample();
    ns.run(|| b.apply(&t)).unwrap();
    let handles = ns.run(base_chain_handles);
    assert_eq!(handles.len(), 1);
    // Map, set and rules change; the base chain stays the same kernel object.
    t.maps[0].entries.pop_first();
    t.sets[0].elements.insert("192.0.2.0/24".parse().unwrap());
    t.chain_mut("output").unwrap().rules.clear();
    ns.run(|| b.apply(&t)).unwrap();
    assert_eq!(handles, ns.run(base_chain_handles), "hook re-registered");
    // Dropping a set, a map and their rules is also done in place.
    t.maps.retain(|m| m.name != "dnat6");
    t.sets.retain(|s| s.name != "exclude6");
    t.chains[0].rules.retain(|r| {
        !matches!(&r.action, Action::DnatMap(m) if m == "dnat6")
            && r.matches != [crate::Match::DstInSet("exclude6".into())]
    });
    let got = ns.run(|| b.apply(&t)).unwrap();
    assert_eq!(got, b.expected(&t).unwrap());
    assert_eq!(handles, ns.run(base_chain_handles), "hook re-registered");
    ns.run(|| b.cleanup(&t.name)).unwrap();
}

/// The read-back over netlink knows every rule shape the workspace writes (the sample's
/// sets and DNAT maps, the gateway's filter and NAT statements, the mesh's and identity
/// agent's redirects): each reads back without `nft`, equal to the model. A rule changed
/// behind our back is not one of the model's, so it is left to `nft -j`, which reports it.
#[test]
fn nft_netlink_read_back_knows_every_rule_shape() {
    use crate::{Chain, Family, Match, Protocol};
    let mut t = sample();
    let mut gw = gateway_chains();
    // The gateway's filter output chain would clash with the sample's NAT output chain.
    let out = gw.remove(1);
    let [forward, prerouting, postrouting] = &mut gw[..] else {
        panic!("the gateway has forward, prerouting and postrouting besides output")
    };
    forward.rules.extend(out.rules);
    // Prefixes that are not on a byte boundary, a source match, everything (/0).
    forward.rules.extend([
        rule(vec![Match::Dst(net("fd00::/60"))], Action::Accept, "v6 odd"),
        rule(vec![Match::Src(net("10.16.0.0/12"))], Action::Accept, "odd"),
        rule(vec![Match::Src(net("0.0.0.0/0"))], Action::Accept, "all"),
    ]);
    prerouting.rules.push(rule(
        vec![
            Match::InIface("tun0".into()),
            Match::Dst(net("fd00::1/128")),
            Match::DstPort(Protocol::Udp, 53),
        ],
        Action::Dnat("[fd00::a]:5354".parse().unwrap()),
        "fwd6 host",
    ));
    postrouting.rules.push(rule(
        vec![Match::Src(net("fd00::/8"))],
        Action::Snat("fd00::7".parse().unwrap()),
        "snat6",
    ));
    t.chains.extend(gw);
    t.chains.push(Chain {
        name: "MESH".into(),
        hook: None,
        rules: vec![
            rule(vec![Match::SkUid(1337)], Action::Return, "proxy"),
            rule(vec![Match::OutIface("lo".into())], Action::Return, "lo"),
            rule(
                vec![Match::DstInSet("exclude4".into()), Match::L4(Protocol::Tcp)],
                Action::Return,
                "excluded",
            ),
            rule(
                vec![Match::Nfproto(Family::Ipv4), Match::L4(Protocol::Tcp)],
                Action::Redirect(15001),
                "redirect",
            ),
            rule(
                vec![Match::L4(Protocol::Tcp)],
                Action::Jump("CANARY_DNAT".into()),
                "jump",
            ),
        ],
    });
    t.validate().unwrap();
    let ns = TestNs::new("nlread", BackendKind::Nftables);
    let b = Backend::new(BackendKind::Nftables);
    ns.run(|| crate::exec::run("nft", &["-f", "-"], Some(&crate::nft::render_table(&t))))
        .unwrap();
    let fast = ns.run(|| crate::nft_read::read(&t)).unwrap();
    let want = b.expected(&t).unwrap();
    match fast {
        Some(got) => assert_eq!(got, want, "{}", want.diff(&got)),
        None => panic!(
            "a rule of the model did not read back over netlink:{}",
            ns.run(|| crate::nft_read::mismatches(&t))
        ),
    }
    // The fast read agrees with nft's own listing.
    ns.run(|| {
        let json =
            crate::exec::run("nft", &["-j", "list", "table", "inet", "ghostwire"], None).unwrap();
        assert_eq!(crate::nft::parse(&json).unwrap().chains, want.chains);
    });
    // Tampered: no longer the model's rule, so the slow path answers, and reports it.
    ns.run(|| nft_replace_rule("output", 0, "jump CANARY_DNAT comment \"other\""));
    assert_eq!(ns.run(|| crate::nft_read::read(&t)).unwrap(), None);
    assert!(matches!(ns.run(|| b.verify(&t)), Err(Error::Verify { .. })));
    ns.run(|| b.cleanup(&t.name)).unwrap();
}
