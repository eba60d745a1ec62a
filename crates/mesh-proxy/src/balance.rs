//! Per-request load balancing: peak-EWMA latency per endpoint, power of two choices, and
//! failure accrual (an endpoint that keeps failing is left out for a while).
//!
//! An endpoint's cost is its peak-EWMA round-trip time times (requests in flight + 1): a slow
//! or busy endpoint looks expensive at once (the peak), and is forgiven gradually (the decay).
//! Two endpoints are drawn at random and the cheaper one takes the request, which balances as
//! well as "least loaded" without every request looking at every endpoint.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// How fast old latencies are forgotten.
const DECAY: Duration = Duration::from_secs(10);
/// The latency assumed for an endpoint that has not answered yet.
const DEFAULT_RTT: Duration = Duration::from_millis(1);

#[derive(Debug)]
struct Ewma {
    rtt_ns: f64,
    at: Instant,
}

/// What the balancer knows of one endpoint. Shared across config generations (keyed by
/// address), so a config swap does not forget latencies or ejections.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    ewma: Mutex<Ewma>,
    pending: AtomicUsize,
    failures: AtomicU32,
    ejected_until: Mutex<Option<Instant>>,
}

/// Failure accrual settings, compiled.
#[derive(Debug, Clone, Copy)]
pub struct Accrual {
    pub consecutive_failures: u32,
    pub eject_for: Duration,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Counts a request in flight until dropped.
pub struct InFlight<'a>(&'a Endpoint);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Endpoint {
    pub fn new(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            ewma: Mutex::new(Ewma {
                rtt_ns: DEFAULT_RTT.as_nanos() as f64,
                at: Instant::now(),
            }),
            pending: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            ejected_until: Mutex::new(None),
        }
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    pub fn start(&self) -> InFlight<'_> {
        self.pending.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// The current cost: decayed peak-EWMA latency × (in flight + 1).
    pub fn cost(&self, now: Instant) -> f64 {
        let e = lock(&self.ewma);
        let decayed = decay(e.rtt_ns, now.saturating_duration_since(e.at), 0.0);
        decayed * (self.pending() as f64 + 1.0)
    }

    /// Records one answered (or failed) request. Returns true when this ejects the endpoint.
    pub fn observe(&self, rtt: Duration, ok: bool, accrual: Accrual, now: Instant) -> bool {
        {
            let mut e = lock(&self.ewma);
            let sample = rtt.as_nanos() as f64;
            e.rtt_ns = if sample > e.rtt_ns {
                sample
            } else {
                decay(e.rtt_ns, now.saturating_duration_since(e.at), sample)
            };
            e.at = now;
        }
        if ok {
            self.failures.store(0, Ordering::Relaxed);
            return false;
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if accrual.consecutive_failures > 0 && n >= accrual.consecutive_failures {
            self.failures.store(0, Ordering::Relaxed);
            *lock(&self.ejected_until) = Some(now + accrual.eject_for);
            return true;
        }
        false
    }

    pub fn ejected(&self, now: Instant) -> bool {
        lock(&self.ejected_until).is_some_and(|t| now < t)
    }
}

/// Moves `old` towards `sample` by how much time passed (an exponentially weighted average).
fn decay(old: f64, elapsed: Duration, sample: f64) -> f64 {
    let w = (-elapsed.as_secs_f64() / DECAY.as_secs_f64()).exp();
    old * w + sample * (1.0 - w)
}

/// Picks an endpoint: two random candidates among those not ejected (all of them, if every
/// one is ejected: better to try than to fail closed), the cheaper wins.
pub fn pick(
    endpoints: &[std::sync::Arc<Endpoint>],
    now: Instant,
) -> Option<&std::sync::Arc<Endpoint>> {
    if let [only] = endpoints {
        // Ejected or not, the only endpoint is the one to try (and no list is built per
        // request for it).
        return Some(only);
    }
    let live: Vec<&std::sync::Arc<Endpoint>> =
        endpoints.iter().filter(|e| !e.ejected(now)).collect();
    let pool: Vec<&std::sync::Arc<Endpoint>> = if live.is_empty() {
        endpoints.iter().collect()
    } else {
        live
    };
    match pool.len() {
        0 => None,
        1 => Some(pool[0]),
        n => {
            let a = rand::random_range(0..n);
            let mut b = rand::random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (x, y) = (pool[a], pool[b]);
            Some(if y.cost(now) < x.cost(now) { y } else { x })
        }
    }
}

/// Picks an index by weight (`weights` not all zero).
pub fn weighted(weights: &[u32]) -> usize {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return 0;
    }
    let mut r = rand::random_range(0..total);
    for (i, &w) in weights.iter().enumerate() {
        if r < u64::from(w) {
            return i;
        }
        r -= u64::from(w);
    }
    weights.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const ACCRUAL: Accrual = Accrual {
        consecutive_failures: 3,
        eject_for: Duration::from_secs(10),
    };

    fn eps(n: u16) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| Arc::new(Endpoint::new(SocketAddr::from(([10, 0, 0, 1], 8000 + i)))))
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_endpoint_gets_less_traffic_and_is_forgiven_over_time() {
        let e = eps(2);
        let now = Instant::now();
        e[0].observe(Duration::from_millis(100), true, ACCRUAL, now);
        e[1].observe(Duration::from_millis(1), true, ACCRUAL, now);
        // With two endpoints both are always the candidates: the fast one always wins.
        for _ in 0..100 {
            assert_eq!(pick(&e, now).unwrap().addr, e[1].addr);
        }
        // In-flight requests count: 200 pending on the fast one make it the dearer.
        let guards: Vec<_> = (0..200).map(|_| e[1].start()).collect();
        assert_eq!(pick(&e, now).unwrap().addr, e[0].addr);
        drop(guards);
        // A minute later the peak has decayed towards zero (no new samples).
        let later = now + Duration::from_secs(60);
        assert!(e[0].cost(later) < e[0].cost(now) / 100.0);
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_for_a_while() {
        let e = eps(3);
        let now = Instant::now();
        let rtt = Duration::from_millis(1);
        assert!(!e[0].observe(rtt, false, ACCRUAL, now));
        assert!(
            !e[0].observe(rtt, true, ACCRUAL, now),
            "a success resets the count"
        );
        assert!(!e[0].observe(rtt, false, ACCRUAL, now));
        assert!(!e[0].observe(rtt, false, ACCRUAL, now));
        assert!(e[0].observe(rtt, false, ACCRUAL, now));
        for _ in 0..200 {
            assert_ne!(pick(&e, now).unwrap().addr, e[0].addr);
        }
        assert!(!e[0].ejected(now + Duration::from_secs(11)));
        // Every endpoint ejected: fail open.
        for ep in &e {
            for _ in 0..3 {
                ep.observe(rtt, false, ACCRUAL, now);
            }
        }
        assert!(pick(&e, now).is_some());
    }

    #[test]
    fn weights_split_within_a_statistical_bound() {
        let n = 20_000;
        let hits = (0..n).filter(|_| weighted(&[90, 10]) == 1).count();
        // Binomial(20000, 0.1): sd ≈ 42; six sd either side.
        assert!((1750..=2250).contains(&hits), "{hits}");
        assert_eq!(weighted(&[0, 5]), 1);
    }
}
