//! The service mirror: Services and EndpointSlices of remote clusters mirrored into a local
//! namespace, and global Services that gather the endpoints of every cluster. Compatible with
//! semaphore-service-mirror's config, names and labels (see the README for where it differs).
//!
//! Data flows one way: remote and local API (reflectors, whose events name the [`keys`] to
//! look at) → [`desired`] (pure) → [`reconcile`] plan (pure diff against what the mirror owns)
//! → writes to the local API.
#![forbid(unsafe_code)]

pub mod access;
pub mod config;
pub mod coredns;
pub mod desired;
pub mod keys;
pub mod lease;
pub mod metrics;
pub mod reconcile;
pub mod run;
