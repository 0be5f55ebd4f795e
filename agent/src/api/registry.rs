//! What the node API needs from the agent's pod lifecycle: [`PodRegistry`].
//!
//! Defined here as ISSUE4.md gives it, until the node API's own copy is merged (the lead
//! reconciles the two); [`crate::node::Agent`] implements it.

use std::path::PathBuf;

use keelson_runtime::config::ContainerId;

/// A manifest file that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file.
    pub path: PathBuf,
    /// Why (`spec.containers[0].image: required`).
    pub message: String,
}

/// A container of a pod as the runtime knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    /// The runtime's id of its current (or last) run.
    pub id: ContainerId,
    /// Its name in the pod.
    pub name: String,
    /// Restarts so far.
    pub restart_count: u32,
    /// The runtime's id of its previous run, while that is kept.
    pub previous: Option<ContainerId>,
}

/// What the node API needs from the agent's pod lifecycle.
pub trait PodRegistry: Send + Sync + 'static {
    /// Every pod the agent runs, with its status as the kubelet would report it.
    fn pods(&self) -> Vec<k8s_openapi::api::core::v1::Pod>;
    /// Manifest files that could not be used, with the reason.
    fn manifest_errors(&self) -> Vec<ManifestError>;
    /// The runtime ids of a pod's containers by name: (pod `namespace/name`, container) -> id.
    /// Without a container name, the pod's first app container.
    fn container_id(&self, pod: &str, container: Option<&str>) -> Option<ContainerRef>;
}
