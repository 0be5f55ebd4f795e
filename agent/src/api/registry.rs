//! The seam between the node API and the agent's pod lifecycle: [`PodRegistry`] is what the
//! API needs to know about pods; the agent (`node::Agent`) implements it, tests use a fake.
//!
//! Everything else the API serves (logs, exec, images, net) goes straight to the runtime, the
//! image store and the pod network.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Pod;
use keelson_runtime::config::ContainerId;

/// A manifest file that could not be used, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    /// The file.
    pub path: PathBuf,
    /// Why it was not used (the whole error chain).
    pub message: String,
}

/// A pod's container as the runtime knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerRef {
    /// The runtime id of the current instance.
    pub id: ContainerId,
    /// The container's name in the pod.
    pub name: String,
    /// How often it was restarted.
    pub restart_count: u32,
    /// The runtime id of the previous instance, while the runtime still has it (for
    /// `logs --previous`).
    pub previous: Option<ContainerId>,
}

/// What the node API needs from the agent's pod lifecycle.
pub trait PodRegistry: Send + Sync + 'static {
    /// Every pod the agent runs, with its status as the kubelet would report it.
    fn pods(&self) -> Vec<Pod>;
    /// Manifest files that could not be used, with the reason.
    fn manifest_errors(&self) -> Vec<ManifestError>;
    /// The runtime ids of a pod's container: `pod` is `namespace/name`; `container` is a
    /// container's name, or `None` for the pod's first app container.
    fn container_id(&self, pod: &str, container: Option<&str>) -> Option<ContainerRef>;
}

/// A registry with no pods, for an agent that serves the API before its pods are known and
/// for tools.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPods;

impl PodRegistry for NoPods {
    fn pods(&self) -> Vec<Pod> {
        Vec::new()
    }
    fn manifest_errors(&self) -> Vec<ManifestError> {
        Vec::new()
    }
    fn container_id(&self, _pod: &str, _container: Option<&str>) -> Option<ContainerRef> {
        None
    }
}
