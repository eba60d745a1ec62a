//! The preview switch: pods whose role label says "preview" reach the
//! `X-preview` Services instead of `X`, through one DNAT chain in the pod's
//! own network namespace.
//!
//! Data flows one way: Services → [`pairing::plan`] (pure) → [`rules::table`]
//! (pure) → netrules apply + verify; the audit map is rendered from the same plan.

pub mod config;
pub mod discover;
pub mod dnat_map;
pub mod init;
pub mod pairing;
pub mod rules;
pub mod selftest;
pub mod watcher;
