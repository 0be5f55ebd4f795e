//! Progress events of imports and pulls, sent over a channel so a CLI can draw bars.

use tokio::sync::mpsc::UnboundedSender;

/// Where a blob is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Known, not started (waiting for a download slot).
    Waiting,
    /// Bytes are arriving (`done` of `total`).
    Transferring,
    /// Already in the content store: nothing to do.
    Exists,
    /// Verified and committed.
    Done,
    /// Rejected or failed.
    Failed,
}

/// One progress event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The reference was resolved to a platform manifest with this many layers.
    Resolved {
        /// The normalized reference.
        reference: String,
        /// The platform manifest's digest.
        manifest: String,
        /// Number of layers.
        layers: usize,
    },
    /// A blob (layer, config or manifest) changed state or received bytes.
    Blob {
        /// Short digest (12 hex digits), stable for the bar's label.
        id: String,
        /// The blob's phase.
        phase: Phase,
        /// Bytes done.
        done: u64,
        /// Bytes expected.
        total: u64,
    },
    /// The image record was written.
    Stored {
        /// Image name.
        name: String,
        /// Image id (config digest).
        id: String,
    },
}

/// The sending side; `None` where callers pass no channel.
pub type ProgressSender = UnboundedSender<Progress>;

/// Sends `event` if there is a channel; a closed receiver is not an error.
pub(crate) fn emit(tx: Option<&ProgressSender>, event: Progress) {
    if let Some(tx) = tx {
        let _ = tx.send(event);
    }
}
