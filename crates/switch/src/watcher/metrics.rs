//! The watcher's Prometheus metrics (names pinned by a test; dashboards depend on them).

use crate::pairing::Plan;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;

type Labels = Vec<(String, String)>;

fn label(k: &str, v: &str) -> Labels {
    vec![(k.to_string(), v.to_string())]
}

#[derive(Clone)]
pub struct Metrics {
    dnat_rules: Family<Labels, Gauge>,
    jump_state: Family<Labels, Gauge>,
    errors: Family<Labels, Counter>,
    flips: Family<Labels, Counter>,
    flip_seconds: Histogram,
    rebuilds: Counter,
    cut: Family<Labels, Counter>,
    sock_destroy: Gauge,
    self_test: Family<Labels, Gauge>,
    other_nat: Family<Labels, Gauge>,
}

impl Metrics {
    /// Registers the metrics under `registry` (give it the `ghostwire` prefix).
    pub fn new(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            dnat_rules: Family::default(),
            jump_state: Family::default(),
            errors: Family::default(),
            flips: Family::default(),
            // 1 ms … ~4 s: a flip is a watch event plus one small kernel transaction.
            flip_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 13),
            ),
            rebuilds: Counter::default(),
            cut: Family::default(),
            sock_destroy: Gauge::default(),
            self_test: Family::default(),
            other_nat: Family::default(),
        };
        registry.register(
            "dnat_rules",
            "DNAT mappings currently programmed, per active Service",
            m.dnat_rules.clone(),
        );
        registry.register(
            "jump_state",
            "Whether the jump to the DNAT chain is on (state=on) or off (state=off): 1 for the current one",
            m.jump_state.clone(),
        );
        registry.register(
            "errors",
            "Errors by type (api, kernel, drift, conntrack)",
            m.errors.clone(),
        );
        registry.register(
            "flips",
            "Jump changes, by the state flipped to",
            m.flips.clone(),
        );
        registry.register(
            "flip_duration_seconds",
            "From seeing the label change to the jump being in place",
            m.flip_seconds.clone(),
        );
        registry.register(
            "rebuilds",
            "Full rebuilds of the DNAT chain",
            m.rebuilds.clone(),
        );
        registry.register(
            "flip_cut",
            "With GW_FLUSH_CONNTRACK=cut: conntrack entries deleted (what=conntrack) and TCP sockets destroyed (what=socket) on flips",
            m.cut.clone(),
        );
        registry.register(
            "sock_destroy_supported",
            "1 when the kernel can destroy sockets (CONFIG_INET_DIAG_DESTROY), so cut ends TCP connections; 0 when it cannot",
            m.sock_destroy.clone(),
        );
        registry.register(
            "self_test",
            "The self-test's outcome (GW_SELF_TEST), 1 for the current one: passed (connections to ClusterIPs reach the switch's chain), rewritten (something, such as eBPF socket load balancing, rewrites them before netfilter: the switch does nothing), inconclusive, or pending",
            m.self_test.clone(),
        );
        registry.register(
            "other_nat_chains",
            "Other NAT chains with rules on the switch's hook in this Pod, by where they run: before (they win for what they rewrite), after (the switch wins), same-priority (the one registered last runs first)",
            m.other_nat.clone(),
        );
        m.set_self_test("pending");
        for o in ["before", "after", "same-priority"] {
            let _ = m.other_nat.get_or_create(&label("order", o));
        }
        for w in ["conntrack", "socket"] {
            let _ = m.cut.get_or_create(&label("what", w));
        }
        m.set_jump(false);
        for t in ["api", "kernel", "drift", "conntrack"] {
            let _ = m.errors.get_or_create(&label("type", t));
        }
        m
    }

    pub fn set_jump(&self, on: bool) {
        self.jump_state
            .get_or_create(&label("state", "on"))
            .set(i64::from(on));
        self.jump_state
            .get_or_create(&label("state", "off"))
            .set(i64::from(!on));
    }

    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&label("type", kind)).inc();
    }

    pub fn flipped(&self, on: bool, seconds: f64) {
        let to = if on { "on" } else { "off" };
        self.flips.get_or_create(&label("to", to)).inc();
        self.flip_seconds.observe(seconds);
        self.set_jump(on);
    }

    /// Counts what a cut removed.
    pub fn cut(&self, conntrack: usize, sockets: usize) {
        let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
        self.cut
            .get_or_create(&label("what", "conntrack"))
            .inc_by(n(conntrack));
        self.cut
            .get_or_create(&label("what", "socket"))
            .inc_by(n(sockets));
    }

    pub fn set_sock_destroy(&self, supported: bool) {
        self.sock_destroy.set(i64::from(supported));
    }

    /// Marks `result` (passed, rewritten, inconclusive, pending) as the current outcome.
    pub fn set_self_test(&self, result: &str) {
        for r in ["passed", "rewritten", "inconclusive", "pending"] {
            self.self_test
                .get_or_create(&label("result", r))
                .set(i64::from(r == result));
        }
    }

    /// Counts the other NAT chains by where they run relative to the switch's.
    pub fn set_other_nat(&self, users: &[(netrules::NatUser, crate::selftest::Order)]) {
        for o in [
            crate::selftest::Order::Before,
            crate::selftest::Order::After,
            crate::selftest::Order::Tie,
        ] {
            let n = users.iter().filter(|(_, x)| *x == o).count();
            self.other_nat
                .get_or_create(&label("order", o.as_str()))
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    pub fn rebuilt(&self) {
        self.rebuilds.inc();
    }

    /// Publishes the mappings of the plan now in the kernel.
    pub fn set_plan(&self, plan: &Plan) {
        self.dnat_rules.clear();
        let mut per: BTreeMap<&str, i64> = BTreeMap::new();
        for m in &plan.mappings {
            *per.entry(&m.active).or_default() += 1;
        }
        for (svc, n) in per {
            self.dnat_rules.get_or_create(&label("service", svc)).set(n);
        }
    }
}
