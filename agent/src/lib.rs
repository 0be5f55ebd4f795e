//! Keelson's node daemon.
//!
//! So far it holds what the `keelson` binary runs: [`run`], one container in its own pod
//! sandbox from an image (the steps a pod worker takes, without the cluster). The binary is a
//! thin clap front over these modules.

pub mod run;
