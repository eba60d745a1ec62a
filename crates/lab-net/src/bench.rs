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
