//! A pod as the agent runs it: the translation of a Kubernetes `Pod` into the runtime's
//! configs ([`convert`]), its status as the kubelet reports it ([`status`]), the restart
//! decisions with their back-off ([`backoff`]) and the container probes ([`probe`]).

pub mod backoff;
pub mod convert;
pub mod expand;
pub mod probe;
pub mod quantity;
pub mod status;
