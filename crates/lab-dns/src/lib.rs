//! The lab's cluster DNS, as CoreDNS serves it in a kubeadm cluster: Service, endpoint, SRV,
//! PTR and Pod names under `cluster.local`, NXDOMAIN with the zone's SOA, and every other name
//! forwarded to an upstream the lab sets (none by default: REFUSED, so nothing leaves the
//! machine). Also the name-service files each Pod gets (`resolv.conf` by `dnsPolicy`, `hosts`,
//! `nsswitch.conf`).
//!
//! - [`records`]: Services and EndpointSlices (JSON) → a [`Zone`]; pure.
//! - [`pod_files`]: a Pod (JSON) and the node's settings → file contents; pure.
//! - [`server`]: hickory-server on sockets the caller binds (the lab node binds them in its own
//!   network namespace), answering from a [`ZoneHandle`] the watch loop swaps.
//! - [`rewrite`]: a Corefile's `rewrite name regex` rules (the `coredns` ConfigMap), applied to
//!   questions and answers; pure.
//! - [`peer`]: a real `dnsmasq` on loopback (the tests' upstream, the benchmark's rival).
#![forbid(unsafe_code)]

pub mod peer;
pub mod pod_files;
pub mod records;
pub mod rewrite;
pub mod server;

pub use records::{Answer, QType, Rdata, Zone, ZoneConfig};
pub use server::{DnsServer, Upstream, ZoneHandle, loopback_pair};
