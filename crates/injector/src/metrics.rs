//! The injector's Prometheus metrics: how many admissions ended which way, and how long they took.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

/// How one admission request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// A Pod was patched.
    Injected,
    /// Allowed as it came: not a Pod CREATE, not opted in, or already injected.
    Unchanged,
    /// Refused, with a message naming what to fix.
    Denied,
    /// Allowed as it came because its owners could not be read and it asks for nothing by
    /// itself (see [`crate::review::OwnerReadFailure::Admit`]).
    OwnersUnread,
    /// Not a well-formed AdmissionReview (HTTP 4xx).
    Invalid,
    /// The injector could not decide (API unreachable, …; HTTP 500, so failurePolicy applies).
    Error,
}

impl Outcome {
    /// The `result` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::Unchanged => "unchanged",
            Outcome::Denied => "denied",
            Outcome::OwnersUnread => "owners_unread",
            Outcome::Invalid => "invalid",
            Outcome::Error => "error",
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabel {
    result: Outcome,
}

pub struct Metrics {
    registry: Registry,
    admissions: Family<ResultLabel, Counter>,
    latency: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("ghostwire_injector");
        let admissions = Family::<ResultLabel, Counter>::default();
        // The `_total` suffix is added by the encoder.
        registry.register(
            "admissions",
            "Admission requests answered, by result",
            admissions.clone(),
        );
        // 100 µs .. ~1.6 s.
        let latency = Histogram::new(exponential_buckets(0.0001, 2.0, 15));
        registry.register(
            "admission_duration_seconds",
            "Time from a request's body being read to its answer",
            latency.clone(),
        );
        Metrics {
            registry,
            admissions,
            latency,
        }
    }
}

impl Metrics {
    pub fn observe(&self, result: Outcome, took: Duration) {
        self.admissions.get_or_create(&ResultLabel { result }).inc();
        self.latency.observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
