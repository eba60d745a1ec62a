//! `ghostwire proxy-init`: in the Pod's network namespace, one atomic ruleset that sends the
//! Pod's TCP through its proxy, and a validator that proves it does.
//!
//! - inbound (PREROUTING): TCP arriving at the Pod is redirected to the proxy's inbound port,
//!   except the skipped inbound ports (the admin port, so probes reach the proxy itself);
//! - outbound (OUTPUT): TCP the Pod sends is redirected to the proxy's outbound port, except
//!   the proxy's own (by uid, so the proxy's upstream connections do not loop), anything on
//!   loopback, the skipped ports and the skipped CIDRs.
//!
//! REDIRECT keeps the original destination in conntrack; the proxy reads it back with
//! `SO_ORIGINAL_DST` and dials that address itself, so an app bound only to the Pod IP and
//! kubelet probes keep working. The rules are a [`netrules::Table`] (nftables table
//! `inet ghostwire_mesh`, or tagged iptables chains), applied in one transaction and read back.

pub mod rules;
pub mod validate;

pub use rules::{backend, cleanup, table};
pub use validate::{ValidateError, validate};
