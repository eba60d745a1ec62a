//! Watcher benchmark (needs root):
//!
//!   cargo bench -p ghostwire --bench watcher
//!
//! 1. Label change → routing follows: the time from the API accepting a label patch to
//!    the client pod's next connection reaching the other backend, over 100 flips.
//! 2. The watcher's idle footprint: RSS after start-up, and CPU time over 10 s of idling
//!    with the default 2 s poll interval.

#[path = "../tests/common/mod.rs"]
mod common;

use common::cluster::{Cluster, Watcher};
use lab_net::bench::{TICKS_PER_SECOND, cpu_ticks, status_kib};
use std::time::{Duration, Instant};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let c = Cluster::new("bwatch");
    c.init(&[]);
    let w = Watcher::start(&c, &[("GW_POLL_INTERVAL", "2s")]);
    let orders = c.orders.addr_v4(80);
    let mut lat = Vec::new();
    for i in 0..100 {
        let (label, want) = if i % 2 == 0 {
            ("preview", "orders-preview")
        } else {
            ("active", "orders")
        };
        c.label(Some(label));
        let t = Instant::now();
        while c.reaches(orders) != want {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "flip {i} did not happen"
            );
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3;
    println!(
        "label change -> routing follows, 100 flips: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        p(0.5),
        p(0.99),
        p(1.0)
    );

    let pid = w.child.id();
    std::thread::sleep(Duration::from_secs(2));
    let ticks_now = || cpu_ticks(pid).expect("the watcher exited");
    let before = ticks_now();
    std::thread::sleep(Duration::from_secs(10));
    let ticks = ticks_now() - before;
    let kib = |key| status_kib(pid, key).expect("the watcher exited");
    println!(
        "idle: VmRSS {} kB, VmHWM {} kB, CPU {:.2}% over 10 s ({} ticks)",
        kib("VmRSS:"),
        kib("VmHWM:"),
        ticks as f64 / TICKS_PER_SECOND / 10.0 * 100.0,
        ticks
    );
}
