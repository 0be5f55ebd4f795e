//! Keelson's container runtime: OCI images, layer snapshots, pod sandboxes and containers.
//!
//! Design (see `docs/ARCHITECTURE.md` for the decisions and their reasons):
//! - [`image`]: a content-addressed blob store, import from OCI layouts and `docker save`
//!   archives, pull from registries, and layer unpacking into snapshots shared by chain id.
//! - [`config`]: the typed description of sandboxes and containers the agent hands us.
//! - [`spec`]: the OCI runtime spec of a container, built from its config and image.
//! - [`cgroup`]: the cgroup v2 pod tree, limits and stats.
//! - [`api`]: the [`api::Runtime`] trait the agent uses; [`sandbox::ShimRuntime`] implements
//!   it with one `keelson-shim` per pod; [`network`] is the injected pod network.
//!
//! The runtime is used in process by the async agent. It never calls `libcontainer` itself:
//! every pod has a `keelson-shim` process that does, single-threaded.
#![warn(missing_docs)]

pub mod api;
pub mod cgroup;
pub mod config;
pub mod image;
pub mod network;
pub mod sandbox;
pub mod spec;
