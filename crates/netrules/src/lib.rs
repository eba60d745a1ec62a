//! Kernel packet-rewriting rules for ghostwire: one model, two backends.
//!
//! Callers describe the rules they want as a [`Table`] (chains, rules, address
//! sets, DNAT maps). A [`Backend`] renders it into one atomic transaction
//! (`nft -f -`, or `iptables-restore --noflush` per address family), applies
//! it, reads the result back and checks it against the model. Only the
//! table's own objects are touched: with nftables its own table, with
//! iptables its own chains plus rules tagged with its comment in built-in
//! chains. Rendering and parsing are pure functions, tested without a kernel.

mod backend;
mod exec;
mod fingerprint;
mod iptables;
#[cfg(test)]
mod kernel_tests;
mod model;
mod nat_users;
pub mod netlink;
mod nft;
mod nft_read;

pub use backend::{Backend, BackendKind, IptablesFlavour, Observed};
pub use exec::ExecError;
pub use fingerprint::fingerprint;
pub use model::{
    Action, AddrSet, Chain, DnatEntry, DnatMap, Family, Hook, Match, ModelError, Protocol, Rule,
    Table, check_name, normalize_prefixes,
};
pub use nat_users::{NatUser, nat_users};

/// Errors from applying, reading or removing rules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid rule model: {0}")]
    Model(#[from] ModelError),
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("could not parse {tool} output: {reason}")]
    Parse { tool: &'static str, reason: String },
    #[error("rules read back from the kernel differ from what was applied ({backend}): {diff}")]
    Verify { backend: String, diff: String },
    #[error("no usable backend: nftables failed ({nft}); iptables failed ({iptables})")]
    NoBackend { nft: String, iptables: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
