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
//! - [`managed`]: field ownership (`managedFields`) and server-side apply's conflicts;
//! - [`strategy`]: per-kind rules of writes (status reset, the `scale` view);
//! - [`admission`]: namespace lifecycle, default tolerations, Service IP and node-port
//!   allocation;
//! - [`bootstrap`]: the system namespaces and the `kubernetes` Service at every start;
//! - [`defaults`]: upstream's `SetDefaults_*` for the served kinds;
//! - [`validation`]: upstream's validation rules with its field paths and messages;
//! - [`fuzzing`]: what the fuzz target (`controlplane/fuzz`) runs on every input;
//! - [`memory`]: glibc arenas capped and free heap handed back (`malloc_trim`);
//! - [`metrics`]: `/metrics` under upstream's metric names;
//! - [`audit`]: the audit log (JSON lines at the Metadata level);
//! - [`pipeline`]: the write pipeline (decode, patch, field validation, strategy, field
//!   ownership, store) behind every create, update and patch;
//! - [`printers`]: `Table`s for `kubectl get` and `PartialObjectMetadata`, by `Accept`;
//! - [`rawlist`]: plain JSON lists spliced from the stored objects, without `Value` trees;
//! - [`proto`]: Kubernetes protobuf request bodies (kubectl's generators) decoded to JSON;
//! - [`serviceaccount`]: ServiceAccount admission and each namespace's `default` account;
//! - [`pods`]: Pod binding and eviction (PodDisruptionBudgets), streaming placeholders;
//! - [`pki`]: the cluster CA, serving and admin certificates and the admin kubeconfig;
//! - [`snapshot`]: `snapshot save|restore` of the embedded store;
//! - [`server`]: the HTTP router (axum) and the TLS listener with x509 client-certificate
//!   authentication;
//! - [`auth`]: bearer tokens (service-account JWTs, bootstrap tokens), RBAC with the default
//!   policy and aggregation, the node authorizer and NodeRestriction, TokenRequest and the
//!   review APIs.
//!
//! - [`rest`]: get, list, create, update, patch and delete of every resource, and its
//!   `status` and `scale`, over HTTP;
//! - [`watch`]: watches over HTTP, selected lists, and the per-resource watch caches that
//!   serve them;
//! - [`selectors`]: label and field selectors.
//!
//! Limits: see each module's docs.

pub mod admission;
pub mod apply;
pub mod audit;
pub mod auth;
pub mod bootstrap;
pub mod defaults;
pub mod discovery;
pub mod fields;
pub mod fuzzing;
pub mod managed;
pub mod memory;
pub mod metrics;
pub mod objects;
pub mod patch;
pub mod pipeline;
pub mod pki;
pub mod pods;
pub mod printers;
pub mod proto;
pub mod rawlist;
pub mod registry;
pub mod rest;
pub mod schema;
pub mod selectors;
pub mod server;
pub mod serviceaccount;
pub mod snapshot;
pub mod strategy;
pub mod validation;
pub mod watch;

/// The Kubernetes version whose API this server implements (k8s-openapi's `v1_33`).
pub const KUBERNETES_VERSION: &str = "v1.33.0";
