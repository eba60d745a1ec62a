//! `ghostwire proxy`: the mesh's transparent sidecar.
//!
//! Per connection: the original destination (`SO_ORIGINAL_DST`) → protocol detection →
//! opaque TCP, or HTTP/1.1 / HTTP/2 served by hyper → per request: the destination's service
//! in the config snapshot → route match → weighted backend → endpoint (peak-EWMA, power of two
//! choices, failure accrual) → pooled upstream connection ([`h1`] and [`http2`], the proxy's
//! own clients driven from the request's task), with per-route timeouts and budgeted retries. A destination without config is proxied to its original destination
//! unchanged. Only original destinations of intercepted connections, and endpoints the config
//! names for them, are ever dialled: the proxy is never an open relay.
//!
//! The routing config lives in a [`store::Store`] that swaps snapshots atomically; a
//! [`store::ConfigSource`] feeds it (today a file, later the controller's gRPC stream).

pub mod balance;
pub mod config;
pub mod detect;
pub mod h1;
pub mod http;
pub mod http2;
pub mod llm;
pub mod metrics;
pub mod pool;
pub mod preview;
pub mod retry;
pub mod server;
pub mod store;
pub mod tcp;
pub mod tls;

pub use server::{Proxy, run};

/// Which listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}
