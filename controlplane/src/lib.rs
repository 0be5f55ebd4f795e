//! Keelson's control plane: the Kubernetes API server.
//!
//! This crate holds the API server's library; the `keelson controlplane` subcommand of the
//! multi-call binary is a thin front over [`server`]. Today it has the foundations the request
//! pipeline builds on:
//!
//! - [`registry`]: every served resource as upstream discovery describes it;
//! - [`discovery`]: `/api`, `/apis`, per-group-version lists and aggregated discovery;
//! - [`schema`]: the one schema source (k8s-openapi's generated JSON schemas plus the
//!   Kubernetes extensions), serving `/openapi/v2` and `/openapi/v3`;
//! - [`fields`]: unknown-field detection for `fieldValidation=Strict|Warn`;
//! - [`objects`]: objects in the store (create, get, update, delete, paged lists) with
//!   upstream's resourceVersion, precondition and finalizer semantics and Status errors;
//! - [`patch`]: strategic merge patch driven by the schema's patch extensions;
//! - [`apply`]: the structural merge of server-side apply (list types, map keys, atomic maps);
//! - [`pki`]: the cluster CA, serving and admin certificates and the admin kubeconfig;
//! - [`server`]: the HTTP router (axum) and the TLS listener with x509 client-certificate
//!   authentication.
//!
//! - [`rest`]: get, list, create, update and delete of every resource over HTTP.
//! - [`watch`]: watches over HTTP, selected lists, and the per-resource watch caches that
//!   serve them;
//! - [`selectors`]: label and field selectors.
//!
//! Limits: no patch, subresources, admission, validation or RBAC yet; see each module's docs.

pub mod apply;
pub mod discovery;
pub mod fields;
pub mod objects;
pub mod patch;
pub mod pki;
pub mod registry;
pub mod rest;
pub mod schema;
pub mod selectors;
pub mod server;
pub mod watch;

/// The Kubernetes version whose API this server implements (k8s-openapi's `v1_33`).
pub const KUBERNETES_VERSION: &str = "v1.33.0";
