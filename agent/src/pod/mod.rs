//! A pod as the agent runs it: the translation of a Kubernetes `Pod` into the runtime's
//! configs ([`convert`]), its status as the kubelet reports it ([`status`]) and the restart
//! decisions with their back-off ([`backoff`]).

pub mod backoff;
pub mod convert;
pub mod expand;
pub mod quantity;
pub mod status;
