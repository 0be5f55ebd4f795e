//! The Keelson node API from the outside: its protocol ([`proto`], `keelson.node.v1`), the
//! [`Client`] library and its configuration ([`config`]), and (in `main.rs`) the `agentctl`
//! command, a thin clap front over the library that the tests use as well.
//!
//! Design, after Talos' `talosctl` and Bottlerocket's `apiclient`:
//! - The agent serves gRPC on a unix socket (root only: the socket's permissions are the
//!   authentication, and a local caller is an admin) and on TCP with mutual TLS: the client
//!   presents a certificate signed by the node-API CA whose subject Organization names its
//!   role ([`ROLE_ADMIN`] or [`ROLE_READER`]).
//! - The agent writes a config (YAML: current context, contexts with endpoints, CA, client
//!   certificate and key) that `agentctl --config FILE` or `$AGENTCTL_CONFIG` reads.
//! - TLS is rustls on ring, terminated by this crate and the agent with tokio-rustls; tonic
//!   runs without its TLS features (see [`tls`]).
//!
//! Limits: one node per context (endpoints are alternatives for the same node, tried in
//! order); no certificate rotation yet.

pub mod client;
pub mod config;
pub mod proto;
pub mod tls;

pub use client::{Client, Error, ExecResult, Result};
pub use config::{AgentctlConfig, Context};

/// The Organization of an admin client certificate's subject: may call every RPC.
pub const ROLE_ADMIN: &str = "keelson:admin";
/// The Organization of a reader client certificate's subject: read-only RPCs only.
pub const ROLE_READER: &str = "keelson:reader";
/// The API version this crate speaks.
pub const API_VERSION: &str = "keelson.node.v1";
/// Where the agent listens locally by default.
pub const DEFAULT_SOCKET: &str = "/run/keelson/agent.sock";
/// Where the agent writes the admin config by default.
pub const DEFAULT_CONFIG: &str = "/var/lib/keelson/agentctl.yaml";
/// The agent's default TCP port for the node API.
pub const DEFAULT_PORT: u16 = 50_100;
