//! The real [`Backend`]: each plugin command drives a [`Network`] built from the command's
//! configuration, on a current-thread tokio runtime (one invocation is one short process).
//!
//! The process exits right after the command, so the network does not reap retired veth
//! pairs in the background: DEL leaves its pair down, renamed, off the bridge and with its
//! addresses released, and the kernel deletes the pair with the pod's namespace (which every
//! runtime removes right after DEL); GC reaps whatever is still retired.

use std::path::Path;

use super::{error_chain, Backend, BackendError, CniResult};
use crate::config::NetworkConfig;
use crate::ipam::AllocKey;
use crate::network::{self, ErrorKind, Network};
use crate::{Attach, Attachment};

/// Wires pods with the in-process [`Network`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NetworkBackend;

impl NetworkBackend {
    fn run<T>(
        cfg: &NetworkConfig,
        work: impl AsyncFnOnce(&Network) -> network::Result<T>,
    ) -> Result<T, BackendError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| BackendError::Failed(format!("start the async runtime: {e}")))?;
        let net = Network::new(cfg.clone()).map_err(classify)?.without_background_reaping();
        rt.block_on(work(&net)).map_err(classify)
    }
}

/// The spec error for a network error.
pub fn classify(err: network::Error) -> BackendError {
    let text = error_chain(&err);
    match err.kind() {
        ErrorKind::InvalidConfig => BackendError::InvalidConfig(text),
        ErrorKind::InvalidArgs => BackendError::InvalidArgs(text),
        ErrorKind::NetnsMissing => BackendError::UnknownContainer(text),
        ErrorKind::Exhausted => BackendError::Exhausted(text),
        ErrorKind::TryAgain => BackendError::TryAgain(text),
        ErrorKind::Io => BackendError::Io(text),
        ErrorKind::CheckFailed => BackendError::CheckFailed(text),
        ErrorKind::Failed => BackendError::Failed(text),
    }
}

impl Backend for NetworkBackend {
    fn add(&self, cfg: &NetworkConfig, attach: &Attach) -> Result<Attachment, BackendError> {
        Self::run(cfg, async |net| net.add(attach).await)
    }

    fn del(
        &self,
        cfg: &NetworkConfig,
        key: &AllocKey,
        netns: Option<&Path>,
    ) -> Result<(), BackendError> {
        let attach = Attach {
            container_id: key.container_id.clone(),
            // An empty path means "not given" to `Network::del`.
            netns: netns.map(Path::to_path_buf).unwrap_or_default(),
            ifname: key.ifname.clone(),
        };
        Self::run(cfg, async |net| net.del(&attach).await)
    }

    fn check(
        &self,
        cfg: &NetworkConfig,
        attach: &Attach,
        prev: &CniResult,
    ) -> Result<(), BackendError> {
        let attachment = Self::run(cfg, async |net| {
            net.check(attach).await?;
            net.add(attach).await
        })?;
        // The addresses the runtime recorded must still be the pod's.
        for ip in &prev.ips {
            if !attachment.ips.iter().any(|c| c.address == ip.address) {
                return Err(BackendError::CheckFailed(format!(
                    "address {} of the previous result is no longer allocated to {}/{}",
                    ip.address, attach.container_id, attach.ifname
                )));
            }
        }
        Ok(())
    }

    fn gc(&self, cfg: &NetworkConfig, valid: &[AllocKey]) -> Result<(), BackendError> {
        Self::run(cfg, async |net| {
            net.gc(valid).await?;
            net.reap().await
        })
    }

    fn status(&self, cfg: &NetworkConfig) -> Result<(), BackendError> {
        status_outcome(Self::run(cfg, async |net| net.status().await))
    }
}

/// STATUS per the spec: any reason ADD cannot be served (the host namespace or the state
/// directory unreachable, a range set full) is code 50, "plugin not available"; only a
/// configuration that cannot work keeps its own code.
pub(crate) fn status_outcome(
    status: Result<network::Status, BackendError>,
) -> Result<(), BackendError> {
    match status {
        Ok(st) => match st.exhausted.as_slice() {
            [] => Ok(()),
            full => Err(BackendError::NotAvailable(
                full.iter()
                    .map(|(set, ranges)| format!("no free address in range set {set} ({ranges})"))
                    .collect::<Vec<_>>()
                    .join("; "),
            )),
        },
        Err(e @ BackendError::InvalidConfig(_)) => Err(e),
        Err(e) => Err(BackendError::NotAvailable(e.to_string())),
    }
}
