//! The node API's side of the agent. Owned by the node-API work (issue 4, helper `nodeapi`);
//! this branch carries only [`registry`], the seam the pod lifecycle implements.

pub mod registry;
