//! The retry budget: retries may add at most `ratio` of the live request rate plus a floor of
//! `min_per_second`, over a sliding window, so retries cannot multiply an outage's load.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

const WINDOW: Duration = Duration::from_secs(10);
const SLOT: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Slot {
    start: Instant,
    requests: u64,
    retries: u64,
}

#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    min_per_second: u32,
    slots: Mutex<VecDeque<Slot>>,
}

impl Budget {
    pub fn new(ratio: f64, min_per_second: u32) -> Budget {
        Budget {
            ratio,
            min_per_second,
            slots: Mutex::new(VecDeque::new()),
        }
    }

    fn with_current<T>(&self, now: Instant, f: impl FnOnce(&mut VecDeque<Slot>) -> T) -> T {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        while slots
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.start) >= WINDOW)
        {
            slots.pop_front();
        }
        if slots
            .back()
            .is_none_or(|s| now.saturating_duration_since(s.start) >= SLOT)
        {
            slots.push_back(Slot {
                start: now,
                requests: 0,
                retries: 0,
            });
        }
        f(&mut slots)
    }

    /// Counts one original request.
    pub fn deposit(&self, now: Instant) {
        self.with_current(now, |s| {
            if let Some(b) = s.back_mut() {
                b.requests += 1;
            }
        })
    }

    /// Takes one retry from the budget; false when it is spent.
    pub fn withdraw(&self, now: Instant) -> bool {
        self.with_current(now, |s| {
            let requests: u64 = s.iter().map(|x| x.requests).sum();
            let retries: u64 = s.iter().map(|x| x.retries).sum();
            let allowed = f64::from(self.min_per_second) * WINDOW.as_secs_f64()
                + self.ratio * requests as f64;
            if (retries as f64) < allowed {
                if let Some(b) = s.back_mut() {
                    b.retries += 1;
                }
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn floor_then_ratio_then_the_window_refills() {
        let b = Budget::new(0.2, 1);
        let now = Instant::now();
        // The floor: 1/s over 10 s = 10 retries with no traffic at all.
        assert_eq!((0..20).filter(|_| b.withdraw(now)).count(), 10);
        // 100 requests add 20 % = 20 more.
        for _ in 0..100 {
            b.deposit(now);
        }
        assert_eq!((0..50).filter(|_| b.withdraw(now)).count(), 20);
        assert!(!b.withdraw(now + Duration::from_secs(5)));
        // Once the window has passed, the floor is back.
        assert!(b.withdraw(now + Duration::from_secs(11)));
    }
}
