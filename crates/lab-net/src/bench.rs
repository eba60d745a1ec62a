//! Shared pieces of the benchmarks that put a DNS server beside a real peer: one run of the real
//! `dnsperf` (Debian package `dnsperf`) and what it reported.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

/// The options every DNS benchmark passes to dnsperf: 4 clients, 2 threads, 100 queries in
/// flight.
pub const DNSPERF_OPTIONS: [&str; 6] = ["-c", "4", "-T", "2", "-q", "100"];

/// What one dnsperf run reported.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsPerf {
    pub qps: f64,
    pub avg_latency_ms: f64,
    /// dnsperf's own "Queries lost" field, e.g. `0 (0.00%)`.
    pub lost: String,
}

impl DnsPerf {
    /// Reads dnsperf's statistics block; a missing field reads as 0 (or empty), so a run that
    /// failed shows as 0 queries/s rather than a number from nowhere.
    pub fn parse(report: &str) -> DnsPerf {
        let field = |label: &str| -> String {
            report
                .lines()
                .find_map(|l| l.trim().strip_prefix(label))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let number = |label: &str| -> f64 {
            field(label)
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        DnsPerf {
            qps: number("Queries per second:"),
            avg_latency_ms: number("Average Latency (s):") * 1e3,
            lost: field("Queries lost:"),
        }
    }
}

/// Runs dnsperf against `server` for `seconds` with the queries in `queries` (one `name TYPE` a
/// line) and [`DNSPERF_OPTIONS`]. `dnsperf` is the program to run: `Command::new("dnsperf")` on
/// the host, or [`crate::Pod::command`] to run it inside a lab Pod.
pub fn dnsperf(
    mut dnsperf: Command,
    server: SocketAddr,
    queries: &Path,
    seconds: u64,
) -> std::io::Result<DnsPerf> {
    let out = dnsperf
        .args(["-s", &server.ip().to_string()])
        .args(["-p", &server.port().to_string()])
        .arg("-d")
        .arg(queries)
        .args(["-l", &seconds.to_string()])
        .args(DNSPERF_OPTIONS)
        .output()?;
    Ok(DnsPerf::parse(&String::from_utf8_lossy(&out.stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dnsperf_statistics() {
        let report = "Statistics:\n\n  Queries sent:         120000\n  Queries completed:    119990 (99.99%)\n  Queries lost:         10 (0.01%)\n\n  Response codes:       NOERROR 119990 (100.00%)\n  Average packet size:  request 45, response 61\n  Run time (s):         10.000512\n  Queries per second:   11998.385\n\n  Average Latency (s):  0.008112 (min 0.000040, max 0.120107)\n";
        assert_eq!(
            DnsPerf::parse(report),
            DnsPerf {
                qps: 11998.385,
                avg_latency_ms: 8.112,
                lost: "10 (0.01%)".into()
            }
        );
        let failed = DnsPerf::parse("Error: could not open file\n");
        assert_eq!((failed.qps, failed.lost.as_str()), (0.0, ""));
    }
}

/// A `kB` field of `/proc/PID/status`, e.g. `VmRSS:` or `VmHWM:`; `None` when the process is
/// gone or the field is missing.
pub fn status_kib(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// CPU time a process has used, user + system (fields 14 and 15 of `/proc/PID/stat`), in
/// clock ticks of [`TICKS_PER_SECOND`]; `None` when the process is gone.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may hold spaces; fields are counted after it.
    let after = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// USER_HZ on Linux: the unit of [`cpu_ticks`].
pub const TICKS_PER_SECOND: f64 = 100.0;

#[cfg(test)]
mod proc_tests {
    use super::*;

    #[test]
    fn own_process_has_rss_and_cpu_time() {
        let pid = std::process::id();
        assert!(status_kib(pid, "VmRSS:").is_some_and(|k| k > 0));
        let t0 = cpu_ticks(pid).unwrap();
        // Spin until the kernel has charged at least one tick (bounded: a loaded machine may
        // give this thread little CPU).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut x = 0u64;
        while cpu_ticks(pid).unwrap() == t0 {
            assert!(std::time::Instant::now() < deadline, "no CPU time charged");
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        assert_eq!(status_kib(pid, "NoSuchField:"), None);
        assert_eq!(cpu_ticks(u32::MAX), None);
    }
}
