//! `ghostwire controller`: the mesh's control plane.
//!
//! - [`model`]: the mesh as the controller sees it (one `ghostwire.mesh.v1.Service` per
//!   Service), versioned, and each proxy's view of it; the diff between two views is a delta.
//! - [`auth`]: who a caller is, from its projected ServiceAccount token (TokenReview with the
//!   mesh's audience; the Pod from the review's `extra`, never from the caller's word).
//! - [`server`]: the gRPC service (`MeshControl`): snapshot, then versioned deltas, ACK/NACK
//!   per version, counted in metrics.
//! - [`feed`]: the proxy's side, a [`mesh_proxy::store::ConfigSource`] that keeps the last good
//!   config while the controller is away and resyncs when it is back.
//! - [`ca`]: the mesh CA (a Secret), signing each proxy a short-lived certificate for its own
//!   SPIFFE ID only; [`identity`]: the proxy's side, renewing at two thirds of the lifetime.
//! - [`convert`]: `ghostwire.mesh.v1` ⇄ the proxy's routing config.
//! - [`gateway`]: the Gateway API `HTTPRoute`/`GRPCRoute` subset (kube `CustomResource`);
//!   [`routes`]: routes → entries' routes and `status.parents` (pure).
//! - [`watch`]: the cluster → the [`model::Model`]; [`model`] also decides each proxy's view.

pub mod auth;
pub mod ca;
pub mod convert;
pub mod feed;
pub mod gateway;
pub mod identity;
pub mod metrics;
pub mod model;
pub mod routes;
pub mod server;
pub mod settings;
pub mod watch;

/// The audience of the tokens proxies present, unless configured otherwise.
pub const DEFAULT_AUDIENCE: &str = mesh_config::TOKEN_AUDIENCE;
