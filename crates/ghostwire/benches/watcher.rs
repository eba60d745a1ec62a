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
use std::time::{Duration, Instant};

fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// utime + stime in clock ticks (fields 14 and 15 of /proc/PID/stat).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

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
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(10));
    let ticks = cpu_ticks(pid) - before;
    let hz = 100.0; // USER_HZ on Linux
    println!(
        "idle: VmRSS {} kB, VmHWM {} kB, CPU {:.2}% over 10 s ({} ticks)",
        proc_field(pid, "status", "VmRSS:"),
        proc_field(pid, "status", "VmHWM:"),
        ticks as f64 / hz / 10.0 * 100.0,
        ticks
    );
}
