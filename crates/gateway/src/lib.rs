//! The egress gateway: client Pods route their default traffic and DNS through a gateway Pod
//! over a VXLAN tunnel (pod-gateway's model, as one binary).
//!
//! - [`settings`]: pod-gateway's `settings.sh` (read by [`shell`], never run) and ghostwire's
//!   own knobs, in one table; [`natconf`]: `nat.conf` and `nat6.conf`.
#![forbid(unsafe_code)]

pub mod client;
pub mod dhcp;
pub mod dns;
pub mod dnsquery;
pub mod gateway;
pub mod iproute;
pub mod natconf;
pub mod probe;
pub mod settings;
pub mod shell;
pub mod sidecar;
