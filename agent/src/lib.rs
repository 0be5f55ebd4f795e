//! Keelson's node daemon.
//!
//! So far it holds what the `keelson` binary runs: [`run`], one container in its own pod
//! sandbox from an image (the steps a pod worker takes, without the cluster), and
//! [`network`], the pod network the runtime is given (the `cni/` library in process). The
//! binary is a thin clap front over these modules.

pub mod api;
pub mod network;
pub mod progress;
pub mod run;
