//! A small nf_tables encoder of our own over netlink, and the egress masquerade built on it.
//!
//! Why our own: no `nft`/`iptables` processes and no GPL code (libnftnl, libmnl and the
//! `nftnl`/`rustables` bindings wrap GPL C libraries). `netlink-packet-netfilter` 0.4 (MIT)
//! models tables, chains, sets, elements and six expressions, but not `masq`, `counter` or
//! `nat`, and it would bring its own attribute model for what is here a few hundred lines
//! of TLVs. Layouts follow the kernel uapi (`linux/netfilter/nf_tables.h`,
//! `linux/netfilter/nfnetlink.h`); unit tests compare encodings with captures of `nft` and
//! with hand derivations from those headers.
//!
//! Layers:
//! - `wire` (private): netlink and attribute framing.
//! - [`Expr`]: the expressions masquerade needs (`meta`, `payload`, `bitwise`, `cmp`,
//!   `lookup`, `counter`, `masq`).
//! - [`Batch`]: tables, chains, interval sets and their elements, rules; encoded as one
//!   `NFNL_MSG_BATCH_BEGIN` … `NFNL_MSG_BATCH_END` transaction, every message acknowledged.
//! - [`Netfilter`]: the OS boundary, [`NetlinkSocket`] in production, [`FakeNetfilter`] in
//!   unit tests.
//! - [`Nftables`]: commits batches, maps kernel errnos to [`Error`] with the failing message
//!   named, and lists tables, sets, set elements and rules (with counters) for checks.
//! - [`Masquerade`]: egress masquerade as our own `inet keelson` table, replaced atomically.
//!
//! Everything acts in the network namespace of the thread that opened the socket.

mod batch;
mod client;
mod expr;
mod masquerade;
mod transport;
mod wire;

use std::io;

pub use batch::{
    Batch, Chain, Element, Encoded, Hook, KeyType, Policy, Rule, Set, NFT_SET_ELEM_INTERVAL_END,
    PRIORITY_SRCNAT,
};
pub use client::{Nftables, RuleInfo};
pub use expr::{
    Addr, CmpOp, Expr, Family, MetaKey, PayloadBase, Register, IFNAMSIZ,
    NAT_RANGE_PROTO_RANDOM_FULLY,
};
pub use masquerade::{ensure, remove, Masquerade, MasqueradeRules, CHAIN, TABLE};
pub use transport::{FakeNetfilter, Netfilter, NetlinkSocket};

/// Errors of nf_tables operations. Kernel refusals name the message (`what`) that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The netlink socket could not be opened.
    #[error("opening a netfilter netlink socket")]
    Socket(#[source] io::Error),
    /// Sending a batch or request failed.
    #[error("sending to nf_tables")]
    Send {
        /// The socket error.
        source: io::Error,
    },
    /// Receiving a reply failed.
    #[error("receiving from nf_tables")]
    Recv {
        /// The socket error.
        source: io::Error,
    },
    /// A reply did not parse.
    #[error("malformed reply from nf_tables: {0}")]
    Malformed(String),
    /// A message of a committed batch got no acknowledgement.
    #[error("nf_tables did not acknowledge {what}")]
    MissingAck {
        /// The message.
        what: String,
    },
    /// `EPERM`/`EACCES`: the caller lacks `CAP_NET_ADMIN` over the network namespace.
    #[error("{what}: permission denied (needs CAP_NET_ADMIN in the network namespace)")]
    PermissionDenied {
        /// The message refused.
        what: String,
        /// The errno.
        source: io::Error,
    },
    /// `ENOENT`: a table, chain or set named does not exist, or the kernel has no such
    /// expression or chain type (module missing).
    #[error("{what}: no such object, expression or chain type")]
    NotFound {
        /// The message refused.
        what: String,
        /// The errno.
        source: io::Error,
    },
    /// `EOPNOTSUPP`/`EAFNOSUPPORT`/`EPROTONOSUPPORT`: the kernel lacks nf_tables, the family
    /// or NAT support.
    #[error("{what}: not supported by this kernel")]
    Unsupported {
        /// The message refused.
        what: String,
        /// The errno.
        source: io::Error,
    },
    /// `EEXIST`: the object exists (only with exclusive creation, or overlapping
    /// intervals).
    #[error("{what}: already exists")]
    Exists {
        /// The message refused.
        what: String,
        /// The errno.
        source: io::Error,
    },
    /// `EBUSY`: the object is in use.
    #[error("{what}: in use")]
    Busy {
        /// The message refused.
        what: String,
        /// The errno.
        source: io::Error,
    },
    /// Any other errno (`EINVAL`: a malformed message, `ERANGE`, …).
    #[error("{what}: rejected by nf_tables")]
    Kernel {
        /// The message refused.
        what: String,
        /// The errno.
        source: io::Error,
    },
    /// The masquerade configuration cannot be encoded.
    #[error("invalid masquerade configuration: {0}")]
    Invalid(String),
}

impl Error {
    /// The typed error for a kernel refusal of `what` with positive `errno`.
    pub fn from_errno(what: String, errno: i32) -> Error {
        let source = io::Error::from_raw_os_error(errno);
        match errno {
            libc::EPERM | libc::EACCES => Error::PermissionDenied { what, source },
            libc::ENOENT => Error::NotFound { what, source },
            libc::EOPNOTSUPP | libc::EAFNOSUPPORT | libc::EPROTONOSUPPORT => {
                Error::Unsupported { what, source }
            }
            libc::EEXIST => Error::Exists { what, source },
            libc::EBUSY => Error::Busy { what, source },
            _ => Error::Kernel { what, source },
        }
    }

    /// The errno of a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::PermissionDenied { source, .. }
            | Error::NotFound { source, .. }
            | Error::Unsupported { source, .. }
            | Error::Exists { source, .. }
            | Error::Busy { source, .. }
            | Error::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Results of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;
