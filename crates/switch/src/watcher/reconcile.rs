//! The watcher's pure core: what it observed → what the kernel should hold →
//! the one transaction that gets it there. No I/O here; `mod.rs` observes,
//! calls [`decide`], acts, and observes again.
//!
//! Level-triggered: every decision is made from a fresh read of the kernel, the
//! newest Pod labels and the newest Service list, never from a belief about what
//! an earlier action did. The only memory is [`Last`], what the previous
//! reconcile left verified in the kernel; it tells a flip (the label changed)
//! from a repair (someone else changed the kernel), for metrics and logs only.

use super::Role;
use crate::pairing::Plan;

/// What the kernel holds, compared with the two tables the switch can want
/// (jump on and jump off) for the current Services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelView {
    /// The rules could not be read.
    Unreadable(String),
    /// The Services have never been listed: only the chain's presence and the
    /// jump can be checked.
    Unverified { chain_present: bool, jump: bool },
    /// Read and compared with the tables for the current Services.
    Read {
        /// The base chain holds exactly the jump.
        jump: bool,
        /// The base chain is either exactly "jump" or exactly "no jump".
        base_ok: bool,
        /// Everything but the base chain is as the Services say; else the differences.
        rest: Result<(), String>,
        /// Nothing of the switch is there at all.
        empty: bool,
    },
}

impl KernelView {
    /// Whether the jump is in the kernel now (false when unreadable).
    pub fn jump(&self) -> bool {
        match self {
            KernelView::Unreadable(_) => false,
            KernelView::Unverified { jump, .. } | KernelView::Read { jump, .. } => *jump,
        }
    }

    /// Classifies a read-back against what the kernel should hold with the jump
    /// on and off. `is_base` tells the keys of the base chain (which holds the
    /// jump) from the rest.
    pub fn classify(
        got: &netrules::Observed,
        want_on: &netrules::Observed,
        want_off: &netrules::Observed,
        is_base: impl Fn(&str) -> bool,
    ) -> KernelView {
        let split = |o: &netrules::Observed| -> (netrules::Observed, netrules::Observed) {
            let (base, rest): (Vec<_>, Vec<_>) =
                o.chains.iter().partition(|(k, _)| is_base(k.as_str()));
            let collect = |v: Vec<(&String, &Vec<String>)>| {
                v.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            };
            (
                netrules::Observed {
                    chains: collect(base),
                    ..Default::default()
                },
                netrules::Observed {
                    decls: o.decls.clone(),
                    sets: o.sets.clone(),
                    maps: o.maps.clone(),
                    chains: collect(rest),
                },
            )
        };
        let (got_base, got_rest) = split(got);
        let (on_base, want_rest) = split(want_on);
        let (off_base, _) = split(want_off);
        let jump = got_base == on_base;
        KernelView::Read {
            jump,
            base_ok: jump || got_base == off_base,
            rest: if got_rest == want_rest {
                Ok(())
            } else {
                Err(want_rest.diff(&got_rest))
            },
            empty: *got == netrules::Observed::default(),
        }
    }
}

/// Everything one reconcile looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The Pod's role; `None` while its labels have never been read.
    pub role: Option<Role>,
    /// The pairing of the newest Service list; `None` while they were never listed.
    pub plan: Option<Plan>,
    pub kernel: KernelView,
}

/// What the previous reconcile left verified in the kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct Last {
    pub plan: Option<Plan>,
    pub jump: bool,
}

/// The one transaction a reconcile runs, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Act {
    /// The kernel is as it should be.
    Nothing,
    /// Only the base chain changes: put the jump on or off.
    SetJump(bool),
    /// The whole table (sets, map, chain, jump) from the Services, as init does it.
    Rebuild { jump: bool, reason: String },
    /// Something is wrong that cannot be fixed now; the reason is reported.
    Cannot(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the jump should be on.
    pub jump: bool,
    pub act: Act,
    /// The label asks for a different jump than the last reconcile left: a flip.
    pub flip: bool,
    /// Someone else changed the switch's rules since the last reconcile (or the
    /// table is missing): counted as drift.
    pub drift: Option<String>,
    /// `/healthz`: the labels were read and the chain is verified.
    pub healthz: Result<(), String>,
    /// `/readyz`: healthy and nothing left to do.
    pub readyz: Result<(), String>,
}

/// The pure reconcile step.
pub fn decide(o: &Observation, last: Option<&Last>) -> Decision {
    let observed_jump = o.kernel.jump();
    // Never flip on a read that could not be made: without labels, keep the kernel's jump.
    let jump = o.role.as_ref().map_or(observed_jump, Role::jump);
    let flip = o.role.is_some() && last.is_some_and(|l| l.jump != jump);
    let jump_tampered = last.is_some_and(|l| l.jump != observed_jump) && !flip;

    let mut drift = None;
    let (act, chain): (Act, Result<(), String>) = match &o.kernel {
        KernelView::Unreadable(e) => {
            let msg = format!("cannot read the rules: {e}");
            (Act::Cannot(msg.clone()), Err(msg))
        }
        KernelView::Unverified {
            chain_present: false,
            ..
        } => {
            let msg =
                "the DNAT chain is missing, and the Services could not be listed to rebuild it"
                    .to_string();
            drift = Some("the DNAT chain is missing".to_string());
            (Act::Cannot(msg.clone()), Err(msg))
        }
        KernelView::Unverified { jump: on, .. } => {
            let act = if *on == jump {
                Act::Nothing
            } else {
                Act::SetJump(jump)
            };
            (act, Ok(()))
        }
        KernelView::Read {
            jump: on,
            base_ok,
            rest,
            empty,
        } => {
            // Services unknown here cannot happen: Read needs a plan.
            let services_changed = last.is_some_and(|l| l.plan != o.plan);
            match rest {
                Err(diff) => {
                    let reason = if *empty {
                        "the switch's table is missing".to_string()
                    } else if services_changed {
                        format!("the Services changed: {diff}")
                    } else {
                        format!("the DNAT chain is missing or changed: {diff}")
                    };
                    if *empty || !services_changed {
                        drift = Some(reason.clone());
                    }
                    (
                        Act::Rebuild {
                            jump,
                            reason: reason.clone(),
                        },
                        if services_changed {
                            Ok(())
                        } else {
                            Err(reason)
                        },
                    )
                }
                Ok(()) => {
                    if !base_ok {
                        drift = Some("the base chain holds other rules than the jump".into());
                    } else if jump_tampered {
                        drift = Some(format!(
                            "the jump was turned {} by someone else",
                            if *on { "on" } else { "off" }
                        ));
                    }
                    let act = if *base_ok && *on == jump {
                        Act::Nothing
                    } else {
                        Act::SetJump(jump)
                    };
                    (act, Ok(()))
                }
            }
        }
    };
    let healthz = match (&o.role, chain) {
        (None, _) => Err("the Pod's labels have not been read yet".to_string()),
        (Some(_), c) => c,
    };
    let readyz = match (&healthz, &act) {
        (Err(e), _) => Err(e.clone()),
        (Ok(()), Act::Nothing) => Ok(()),
        (Ok(()), _) => Err("the jump is not yet in step with the role label".to_string()),
    };
    Decision {
        jump,
        act,
        flip,
        drift,
        healthz,
        readyz,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairing::{
        plan,
        tests::{settings, svc},
    };
    use netrules::Protocol;

    fn plans() -> (Plan, Plan) {
        let s = settings(&[]);
        let a = plan(
            &[
                svc("a", &["10.96.0.5"], &[(None, 80, Protocol::Tcp)]),
                svc("a-preview", &["10.96.0.6"], &[(None, 80, Protocol::Tcp)]),
            ],
            &s,
        );
        let b = plan(
            &[
                svc("a", &["10.96.0.5"], &[(None, 80, Protocol::Tcp)]),
                svc("a-preview", &["10.96.0.7"], &[(None, 80, Protocol::Tcp)]),
            ],
            &s,
        );
        (a, b)
    }

    fn read(jump: bool, base_ok: bool, rest_ok: bool, empty: bool) -> KernelView {
        KernelView::Read {
            jump,
            base_ok,
            rest: if rest_ok {
                Ok(())
            } else {
                Err("map preview4: …".into())
            },
            empty,
        }
    }

    #[test]
    fn classify_tells_the_jump_from_the_rest() {
        use netrules::Observed;
        let base = |k: &str| k == "output";
        let mk = |out: &[&str], nat: &[&str]| Observed {
            chains: [
                (
                    "output".to_string(),
                    out.iter().map(|s| s.to_string()).collect(),
                ),
                (
                    "CANARY_DNAT".to_string(),
                    nat.iter().map(|s| s.to_string()).collect(),
                ),
            ]
            .into(),
            ..Default::default()
        };
        let on = mk(&["jump CANARY_DNAT"], &["lookup"]);
        let off = mk(&[], &["lookup"]);
        let k = |got: &Observed| KernelView::classify(got, &on, &off, base);
        assert_eq!(k(&on), read(true, true, true, false));
        assert_eq!(k(&off), read(false, true, true, false));
        // The chain flushed behind our back, jump still there.
        let KernelView::Read { jump, rest, .. } = k(&mk(&["jump CANARY_DNAT"], &[])) else {
            panic!()
        };
        assert!(jump && rest.is_err());
        // Two jumps: neither on nor off.
        let two = mk(&["jump CANARY_DNAT", "jump CANARY_DNAT"], &["lookup"]);
        assert_eq!(k(&two), read(false, false, true, false));
        let KernelView::Read { empty, .. } = k(&Observed::default()) else {
            panic!()
        };
        assert!(empty);
    }

    /// Every combination of label, Service change, kernel state and history.
    #[test]
    fn every_combination_of_label_services_and_drift() {
        let (p1, p2) = plans();
        let roles = [
            None,
            Some(Role::Preview),
            Some(Role::Active),
            Some(Role::Other("canary".into())),
            Some(Role::Missing),
        ];
        let kernels = [
            KernelView::Unreadable("nft: EPERM".into()),
            KernelView::Unverified {
                chain_present: false,
                jump: false,
            },
            KernelView::Unverified {
                chain_present: true,
                jump: true,
            },
            KernelView::Unverified {
                chain_present: true,
                jump: false,
            },
            read(true, true, true, false),
            read(false, true, true, false),
            read(false, false, true, false),
            read(true, true, false, false),
            read(false, true, false, false),
            read(false, true, false, true),
        ];
        let lasts = [
            None,
            Some(Last {
                plan: Some(p1.clone()),
                jump: true,
            }),
            Some(Last {
                plan: Some(p1.clone()),
                jump: false,
            }),
        ];
        let mut n = 0;
        for role in &roles {
            for plan in [Some(&p1), Some(&p2)] {
                for kernel in &kernels {
                    for last in &lasts {
                        n += 1;
                        let o = Observation {
                            role: role.clone(),
                            plan: plan.cloned(),
                            kernel: kernel.clone(),
                        };
                        let d = decide(&o, last.as_ref());
                        let ctx = format!("{o:?} last={last:?} → {d:?}");
                        let services_changed = plan != Some(&p1) && last.is_some();
                        // The desired jump: the label's, or the kernel's when no label was read.
                        let want = match role {
                            Some(r) => r.jump(),
                            None => kernel.jump(),
                        };
                        assert_eq!(d.jump, want, "{ctx}");
                        // A flip is a label asking for other than what was left before.
                        assert_eq!(
                            d.flip,
                            role.is_some() && last.as_ref().is_some_and(|l| l.jump != want),
                            "{ctx}"
                        );
                        // What is done: nothing, the jump alone, or a rebuild.
                        let expect_act = match kernel {
                            KernelView::Unreadable(_)
                            | KernelView::Unverified {
                                chain_present: false,
                                ..
                            } => "cannot",
                            KernelView::Unverified { jump, .. } if *jump == want => "nothing",
                            KernelView::Unverified { .. } => "jump",
                            KernelView::Read { rest: Err(_), .. } => "rebuild",
                            KernelView::Read { jump, base_ok, .. } if *base_ok && *jump == want => {
                                "nothing"
                            }
                            KernelView::Read { .. } => "jump",
                        };
                        let got_act = match &d.act {
                            Act::Nothing => "nothing",
                            Act::SetJump(j) => {
                                assert_eq!(*j, want, "{ctx}");
                                "jump"
                            }
                            Act::Rebuild { jump, .. } => {
                                assert_eq!(*jump, want, "{ctx}");
                                "rebuild"
                            }
                            Act::Cannot(_) => "cannot",
                        };
                        assert_eq!(got_act, expect_act, "{ctx}");
                        // Drift: the table is missing or altered while the Services stayed
                        // the same, or the base chain was altered, or the jump was changed
                        // by someone else; never because the label or the Services changed.
                        let expect_drift = match kernel {
                            KernelView::Unreadable(_) => false,
                            KernelView::Unverified { chain_present, .. } => !chain_present,
                            KernelView::Read {
                                rest: Err(_),
                                empty,
                                ..
                            } => *empty || !services_changed,
                            KernelView::Read { base_ok: false, .. } => true,
                            KernelView::Read { jump, .. } => {
                                let flip = d.flip;
                                last.as_ref().is_some_and(|l| l.jump != *jump) && !flip
                            }
                        };
                        assert_eq!(d.drift.is_some(), expect_drift, "{ctx}");
                        // Health: labels read and the chain verified (or being replaced
                        // because the Services changed); ready only when nothing is left.
                        let chain_ok = match kernel {
                            KernelView::Unreadable(_) => false,
                            KernelView::Unverified { chain_present, .. } => *chain_present,
                            KernelView::Read { rest: Err(_), .. } => services_changed,
                            KernelView::Read { .. } => true,
                        };
                        assert_eq!(d.healthz.is_ok(), role.is_some() && chain_ok, "{ctx}");
                        assert_eq!(
                            d.readyz.is_ok(),
                            d.healthz.is_ok() && d.act == Act::Nothing,
                            "{ctx}"
                        );
                    }
                }
            }
        }
        assert_eq!(n, 5 * 2 * 10 * 3);
    }

    #[test]
    fn a_reconcile_after_a_successful_act_has_nothing_left() {
        let (p1, _) = plans();
        for role in [Role::Preview, Role::Active] {
            let wrong_jump = !role.jump();
            for start in [
                read(wrong_jump, true, true, false),
                read(false, true, false, true),
                read(role.jump(), false, true, false),
            ] {
                let o = Observation {
                    role: Some(role.clone()),
                    plan: Some(p1.clone()),
                    kernel: start,
                };
                let d = decide(&o, None);
                assert_ne!(d.act, Act::Nothing, "{o:?}");
                // The act made the kernel hold the wanted table: read it again.
                let after = Observation {
                    kernel: read(d.jump, true, true, false),
                    ..o
                };
                let last = Last {
                    plan: Some(p1.clone()),
                    jump: d.jump,
                };
                let d2 = decide(&after, Some(&last));
                assert_eq!(d2.act, Act::Nothing);
                assert!(!d2.flip && d2.drift.is_none());
                assert_eq!(d2.readyz, Ok(()));
            }
        }
    }

    #[test]
    fn a_stale_or_repeated_label_is_not_a_flip() {
        let (p1, _) = plans();
        let last = Last {
            plan: Some(p1.clone()),
            jump: true,
        };
        // The same label seen again (a relist, a poll) changes nothing and counts nothing.
        let o = Observation {
            role: Some(Role::Preview),
            plan: Some(p1),
            kernel: read(true, true, true, false),
        };
        let d = decide(&o, Some(&last));
        assert_eq!(d.act, Act::Nothing);
        assert!(!d.flip);
    }
}
