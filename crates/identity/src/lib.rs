//! Pod identity (issue 17).
//!
//! - [`settings`]: the one knob table (`ghostwire identity`, `ghostwire attach` and the agent
//!   an attach starts).
//! - [`desired`]: pure. Which Pods want an identity, the names their certificate carries
//!   (SPIFFE ID, Pod DNS name, Pod IPs) and the plan that turns the Secrets there are into the
//!   Secrets there should be.
//! - [`controller`]: the level-triggered loop around it: observe (Pods from a watch cache, the
//!   managed Secrets listed fresh every pass) → desired → diff → act (issue from the mesh CA,
//!   `mesh_controller::ca`, into a Secret owned by the Pod; delete what no Pod wants).
//! - [`attach`]: `ghostwire attach POD`, the agent as an ephemeral container; [`agent`]: its
//!   supervisor and redirection; [`proxy`]: the proxy it supervises; [`ai`]: the LLM
//!   rewriting policy of a Pod with `ghostwire.dev/ai`, for the proxy's outbound HTTP path.
//!
//! Which path a Pod's certificate takes: a Pod that runs the mesh proxy as a sidecar has a
//! projected mesh-audience token and gets its certificate over `SignCertificate` (its key never
//! leaves it, `mesh_controller::identity`). A Pod that is attached to (an ephemeral container:
//! no new volumes, so no projected token) cannot; for it the controller makes the key and the
//! certificate and keeps them in a Secret the Pod owns, as the kube-gateway seed does.

#![forbid(unsafe_code)]

pub mod agent;
pub mod ai;
pub mod attach;
pub mod controller;
pub mod desired;
pub mod peers;
pub mod proxy;
pub mod settings;
