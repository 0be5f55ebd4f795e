//! Keelson's node daemon.
//!
//! It holds what the `keelson` binary runs: [`run`], one container in its own pod sandbox from
//! an image; [`network`], the pod network the runtime is given (the `cni/` library in process);
//! and the pod lifecycle of a standalone node ([`standalone`]): static pod manifests
//! ([`manifests`]), their translation, status and restart rules ([`pod`]), one level-triggered
//! worker per pod ([`worker`]) and the [`node::Agent`] that owns them and implements the node
//! API's [`api::registry::PodRegistry`]. The binary is a thin clap front over these modules.

pub mod api;
pub mod manifests;
pub mod network;
pub mod node;
pub mod pod;
pub mod progress;
pub mod run;
pub mod standalone;
#[cfg(test)]
pub(crate) mod testing;
pub mod worker;
