//! The facade: [`Network`] wires, checks and unwires pod interfaces on one node network.
//!
//! Every operation runs its namespace work on one dedicated thread ([`crate::netns`]): it
//! opens a netlink connection in the host namespace (`NetworkConfig::host_netns`, else the
//! caller's), does the host side, enters the pod's namespace, opens a second connection there
//! and does the pod side. IPAM's file work (fsync included) runs on that thread too, so no
//! async worker of the caller blocks.
//!
//! - The bridge, the forwarding sysctls and the masquerade rules are ensured once per
//!   [`Network`] (again after a failure).
//! - ADD allocates (idempotent: a second ADD of the key gets the same addresses), creates the
//!   pair and configures the pod; a failure after the allocation retires what was created and
//!   releases the addresses.
//! - DEL retires the pair (see [`crate::link::pod`]) and releases the addresses; a background
//!   reaper thread deletes retired pairs in batches, so DEL never waits for the kernel's RCU
//!   grace period. [`Network::reap`] deletes them now (for tests, and for a process about to
//!   exit that cannot count on the pod namespace's end).
//! - GC releases the addresses of keys that are not live and retires their veths.

use std::collections::HashSet;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use ipnet::IpNet;

use crate::config::{Mtu, NetworkConfig};
use crate::ipam::{self, AllocKey, Ipam};
use crate::link::bridge::{self, Bridge, BridgeSpec};
use crate::link::pod::{self, PodSpec};
use crate::link::{self, RtNetlink};
use crate::netns::{self, Netns};
use crate::nft::{self, MasqueradeRules};
use crate::{Attach, Attachment};

/// A boxed error of a pluggable part.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of [`Network`], classified by [`Error::kind`] for the plugin's error codes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration cannot work.
    #[error("invalid network configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: String,
    },
    /// The attachment's parameters are malformed.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidAttach {
        /// `container id`, `ifname` or `netns`.
        field: &'static str,
        /// The value given.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The pod's network namespace does not exist.
    #[error("network namespace {path} does not exist")]
    NetnsMissing {
        /// Its path.
        path: PathBuf,
    },
    /// Address management failed (exhaustion included).
    #[error("address management for {key}")]
    Ipam {
        /// The key, or `*` for network-wide operations.
        key: String,
        /// Why.
        #[source]
        source: ipam::Error,
    },
    /// Entering a namespace or running its thread failed.
    #[error("namespace work for {key}")]
    Netns {
        /// The key, or `*`.
        key: String,
        /// Why.
        #[source]
        source: netns::Error,
    },
    /// A netlink or sysctl operation failed.
    #[error("{what}")]
    Link {
        /// What was being done, e.g. `wire c1/eth0`.
        what: String,
        /// Why.
        #[source]
        source: link::Error,
    },
    /// CHECK found the attachment different from what ADD made.
    #[error("check {key}: {reason}")]
    Check {
        /// The key.
        key: String,
        /// The first difference.
        reason: String,
    },
    /// The masquerade rules could not be ensured.
    #[error("ensure masquerade rules")]
    Masquerade(#[source] BoxError),
    /// Reaping retired pairs failed.
    #[error("reap retired veths: {0}")]
    Reap(String),
}

/// Result of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The class of an [`Error`], for CNI error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The network configuration is invalid (CNI 7).
    InvalidConfig,
    /// The arguments (container id, ifname, netns) are invalid (CNI 4).
    InvalidArgs,
    /// The pod's namespace is gone (CNI 3: container unknown).
    NetnsMissing,
    /// No free address.
    Exhausted,
    /// Try again later (a lock, a race; CNI 11).
    TryAgain,
    /// An I/O failure of durable state (CNI 5).
    Io,
    /// CHECK found a difference.
    CheckFailed,
    /// Anything else.
    Failed,
}

impl Error {
    /// The class of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidConfig { .. } => ErrorKind::InvalidConfig,
            Error::InvalidAttach { .. } => ErrorKind::InvalidArgs,
            Error::NetnsMissing { .. } => ErrorKind::NetnsMissing,
            Error::Ipam { source, .. } => match source {
                ipam::Error::Exhausted { .. } => ErrorKind::Exhausted,
                ipam::Error::Lock { .. } => ErrorKind::TryAgain,
                ipam::Error::Io { .. } => ErrorKind::Io,
                ipam::Error::InvalidKey => ErrorKind::InvalidArgs,
                ipam::Error::InvalidNetworkName { .. }
                | ipam::Error::NoRanges
                | ipam::Error::EmptyRangeSet { .. }
                | ipam::Error::MixedFamilies { .. }
                | ipam::Error::HostBitsSet { .. }
                | ipam::Error::SubnetTooSmall { .. }
                | ipam::Error::OutsideSubnet { .. }
                | ipam::Error::StartAfterEnd { .. }
                | ipam::Error::ReservedGateway { .. }
                | ipam::Error::Overlap { .. } => ErrorKind::InvalidConfig,
                ipam::Error::Encode { .. }
                | ipam::Error::CorruptRecord { .. }
                | ipam::Error::UnsupportedRecordVersion { .. }
                | ipam::Error::UnsupportedFormat { .. }
                | ipam::Error::Unversioned { .. } => ErrorKind::Failed,
            },
            Error::Netns { source: netns::Error::Missing { .. }, .. } => ErrorKind::NetnsMissing,
            // The pod's is an `InvalidAttach` (see `open_pod`): this is `host_netns`.
            Error::Netns { source: netns::Error::NotANetns { .. }, .. } => ErrorKind::InvalidConfig,
            Error::Link { source: link::Error::NotABridge { .. }, .. } => ErrorKind::InvalidConfig,
            Error::Check { .. } => ErrorKind::CheckFailed,
            Error::Netns { .. } | Error::Link { .. } | Error::Masquerade(_) | Error::Reap(_) => {
                ErrorKind::Failed
            }
        }
    }
}

/// Egress masquerade rules, ensured on the host namespace's thread: [`NftMasquerader`] in
/// production, a fake in tests.
pub trait Masquerader: Send + Sync + std::fmt::Debug {
    /// Installs `rules` in the calling thread's network namespace, replacing what an earlier
    /// call installed. Idempotent.
    fn ensure(&self, rules: &MasqueradeRules) -> Result<(), BoxError>;
}

/// The [`Masquerader`] over our nf_tables encoder ([`crate::nft`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct NftMasquerader;

impl Masquerader for NftMasquerader {
    fn ensure(&self, rules: &MasqueradeRules) -> Result<(), BoxError> {
        Ok(nft::ensure(rules)?)
    }
}

/// What [`Network::gc`] cleaned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Addresses released, with the key that held them.
    pub released: Vec<(AllocKey, IpAddr)>,
    /// Host veths retired (their keys were not live).
    pub retired: Vec<String>,
}

/// What [`Network::status`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The bridge exists.
    pub bridge_present: bool,
    /// Addresses currently allocated.
    pub allocated: usize,
    /// Range sets without a free address (by index, with their ranges): while any is listed,
    /// ADD fails.
    pub exhausted: Vec<(usize, String)>,
}

/// The host side of a network, to be ensured on a host-namespace thread.
#[derive(Debug)]
struct HostPlan {
    bridge: BridgeSpec,
    masquerade: Option<(MasqueradeRules, Arc<dyn Masquerader>)>,
}

impl HostPlan {
    /// Ensures the bridge with its sysctls, then the masquerade rules, in the namespace `nl`
    /// and `sysctl` serve (the calling thread's).
    async fn ensure(self, nl: &mut RtNetlink, sysctl: &mut impl link::Sysctl) -> Result<Bridge> {
        let b = bridge::ensure(nl, sysctl, &self.bridge).await.map_err(|source| Error::Link {
            what: format!("ensure bridge {}", self.bridge.name),
            source,
        })?;
        if let Some((rules, m)) = self.masquerade {
            m.ensure(&rules).map_err(Error::Masquerade)?;
        }
        Ok(b)
    }
}

/// What an ADD knows of the host side.
enum HostSide {
    /// Ensured earlier by this [`Network`].
    Known(Bridge),
    /// Not yet (or again after a failure): the ADD ensures it first.
    Ensure(HostPlan),
}

/// One node network: the bridge, its pods' veths and their addresses.
#[derive(Debug)]
pub struct Network {
    cfg: NetworkConfig,
    gateways: Vec<IpNet>,
    ipam: OnceLock<Ipam>,
    masquerader: Arc<dyn Masquerader>,
    bridge: tokio::sync::Mutex<Option<Bridge>>,
    reaper: Reaper,
}

impl Network {
    /// Validates `cfg`; touches nothing (the state directory, the bridge and the rules are
    /// made on first use).
    pub fn new(cfg: NetworkConfig) -> Result<Network> {
        Self::with_masquerader(cfg, Arc::new(NftMasquerader))
    }

    /// [`Network::new`] with the egress masquerade implementation.
    pub fn with_masquerader(
        cfg: NetworkConfig,
        masquerader: Arc<dyn Masquerader>,
    ) -> Result<Network> {
        let invalid = |reason: String| Error::InvalidConfig { reason };
        if !ipam::valid_network_name(&cfg.name) {
            return Err(invalid(format!("network name {:?} is not a valid name", cfg.name)));
        }
        if let Some(why) = ifname_problem(&cfg.bridge) {
            return Err(invalid(format!("bridge name {:?}: {why}", cfg.bridge)));
        }
        if let Mtu::Fixed(m) = cfg.mtu {
            if !(68..=65535).contains(&m) {
                return Err(invalid(format!("mtu {m} is outside 68..=65535")));
            }
        }
        let sets =
            ipam::resolve(&cfg.ranges).map_err(|source| Error::Ipam { key: "*".into(), source })?;
        let mut gateways: Vec<IpNet> = Vec::new();
        for range in sets.iter().flatten() {
            if let Ok(net) = IpNet::new(range.gateway, range.subnet.prefix_len()) {
                if !gateways.contains(&net) {
                    gateways.push(net);
                }
            }
        }
        let reaper = Reaper::new(cfg.host_netns.clone());
        Ok(Network {
            cfg,
            gateways,
            ipam: OnceLock::new(),
            masquerader,
            bridge: tokio::sync::Mutex::new(None),
            reaper,
        })
    }

    /// Leaves retired pairs to [`Network::reap`] (or to the pod namespaces' end) instead of a
    /// background thread: for a process that exits right after one command, where a pending
    /// reap would only delay its exit.
    pub fn without_background_reaping(mut self) -> Self {
        self.reaper.background = false;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &NetworkConfig {
        &self.cfg
    }

    fn ipam(&self) -> Result<Ipam> {
        if let Some(i) = self.ipam.get() {
            return Ok(i.clone());
        }
        let i = Ipam::open(&self.cfg.state_dir, &self.cfg.name, &self.cfg.ranges)
            .map_err(|source| Error::Ipam { key: "*".into(), source })?;
        Ok(self.ipam.get_or_init(|| i).clone())
    }

    fn host_netns(&self, key: &str) -> Result<Option<Netns>> {
        self.cfg
            .host_netns
            .as_deref()
            .map(Netns::open)
            .transpose()
            .map_err(|source| Error::Netns { key: key.to_owned(), source })
    }

    /// What the host side needs ensured: the bridge (with its sysctls) and the masquerade
    /// rules, when on.
    fn host_plan(&self) -> HostPlan {
        HostPlan {
            bridge: BridgeSpec {
                name: self.cfg.bridge.clone(),
                mtu: self.cfg.mtu,
                gateways: self.gateways.clone(),
            },
            masquerade: MasqueradeRules::from_config(&self.cfg)
                .map(|r| (r, self.masquerader.clone())),
        }
    }

    async fn forget_bridge(&self) {
        *self.bridge.lock().await = None;
    }

    /// ADD: wires `a` and returns what was wired. A second ADD of the same key returns the
    /// same addresses (and repairs what is missing).
    pub async fn add(&self, a: &Attach) -> Result<Attachment> {
        let key = validate(a)?;
        let label = key.to_string();
        let span = tracing::debug_span!("cni_add", key = %label);
        let _enter = span.enter();
        let pod_ns = open_pod(&a.netns)?;
        // The host side is ensured once (again after a failure), on this ADD's own thread and
        // connection: a one-shot plugin process pays for one thread and one socket, not two.
        // The first ADDs of a fresh network wait here for the one that ensures it.
        let guard = self.bridge.lock().await;
        let (side, mut ensuring) = match *guard {
            Some(b) => (HostSide::Known(b), None),
            None => (HostSide::Ensure(self.host_plan()), Some(guard)),
        };
        let ipam = self.ipam()?;
        let host = self.host_netns(&label)?;
        let (bridge_name, hairpin) = (self.cfg.bridge.clone(), self.cfg.hairpin);
        let work_label = label.clone();
        let outcome = netns::run(host.as_ref(), move |mut t| async move {
            let label = work_label;
            let ns_err = |source| Error::Netns { key: label.clone(), source };
            let mut host = RtNetlink::new(t.connect().map_err(|e| (ns_err(e), false))?);
            let bridge = match side {
                HostSide::Known(b) => b,
                HostSide::Ensure(plan) => {
                    plan.ensure(&mut host, &mut t.sysctl()).await.map_err(|e| (e, false))?
                }
            };
            let ips = ipam
                .allocate(&key)
                .map_err(|source| (Error::Ipam { key: label.clone(), source }, false))?;
            let spec = PodSpec {
                container_id: key.container_id.clone(),
                ifname: key.ifname.clone(),
                mtu: bridge.mtu,
                hairpin,
                ips,
            };
            let mut created = false;
            let wired = async {
                let host_end =
                    pod::add_host(&mut host, &bridge, &spec, pod_ns.as_raw_fd()).await.map_err(
                        |source| Error::Link { what: format!("wire {label} on the host"), source },
                    )?;
                created = host_end.created;
                t.enter(&pod_ns).map_err(ns_err)?;
                let mut pod_nl = RtNetlink::new(t.connect().map_err(ns_err)?);
                let pod_end = pod::configure_pod(&mut pod_nl, &mut t.sysctl(), &spec, created)
                    .await
                    .map_err(|source| Error::Link {
                        what: format!("wire {label} in the pod"),
                        source,
                    })?;
                Ok::<_, Error>((
                    bridge,
                    Attachment {
                        bridge: bridge_name,
                        bridge_mac: bridge.mac,
                        host_veth: host_end.name,
                        host_mac: host_end.mac,
                        pod_ifname: spec.ifname.clone(),
                        pod_mac: pod_end.mac,
                        mtu: spec.mtu,
                        ips: spec.ips.clone(),
                    },
                ))
            }
            .await;
            match wired {
                Ok(att) => Ok(att),
                Err(e) => {
                    // Undo: the pair if any (the host connection still serves the host), then
                    // the addresses. The runtime calls DEL after a failed ADD anyway.
                    let retired =
                        pod::retire_host(&mut host, &spec.container_id, &spec.ifname, true)
                            .await
                            .unwrap_or_else(|re| {
                                tracing::warn!(error = %re, "cannot retire a half-wired veth");
                                false
                            });
                    if let Err(re) = ipam.release(&key) {
                        tracing::warn!(error = %re, "cannot release the addresses of a failed ADD");
                    }
                    Err((e, retired))
                }
            }
        })
        .await
        .map_err(|source| Error::Netns { key: label.clone(), source })?;
        match outcome {
            Ok((bridge, att)) => {
                if let Some(guard) = ensuring.as_mut() {
                    tracing::debug!(bridge = %att.bridge, index = bridge.index, mtu = bridge.mtu, "bridge ready");
                    **guard = Some(bridge);
                }
                tracing::debug!(veth = %att.host_veth, ips = ?att.ips, "pod wired");
                Ok(att)
            }
            Err((e, retired)) => {
                if retired {
                    self.reaper.poke();
                }
                if ensuring.is_none() && matches!(e, Error::Link { .. }) {
                    // The bridge may be what went wrong: ensure it again next time.
                    self.forget_bridge().await;
                }
                Err(e)
            }
        }
    }

    /// DEL: takes the pod off the network and releases its addresses. Harmless when repeated,
    /// when nothing was wired, and when the namespace is gone (an empty `netns` path means
    /// the runtime did not give one).
    pub async fn del(&self, a: &Attach) -> Result<()> {
        let key = validate_key(&a.container_id, &a.ifname)?;
        let label = key.to_string();
        let pod_ns = if a.netns.as_os_str().is_empty() {
            None
        } else {
            match Netns::open(&a.netns) {
                Ok(ns) => Some(ns),
                Err(netns::Error::Missing { .. }) => None,
                Err(e @ netns::Error::NotANetns { .. }) => {
                    tracing::warn!(error = %e, "unwiring from the host only");
                    None
                }
                Err(source) => return Err(Error::Netns { key: label, source }),
            }
        };
        let ipam = self.ipam()?;
        let host = self.host_netns(&label)?;
        let work_label = label.clone();
        let retired = netns::run(host.as_ref(), move |mut t| async move {
            let label = work_label;
            let ns_err = |source| Error::Netns { key: label.clone(), source };
            let link_err =
                |source| Error::Link { what: format!("unwire {label}"), source };
            let mut host = RtNetlink::new(t.connect().map_err(ns_err)?);
            let mut pod_done = false;
            if let Some(ns) = pod_ns {
                match t.enter(&ns) {
                    Ok(()) => {
                        let mut pod_nl = RtNetlink::new(t.connect().map_err(ns_err)?);
                        pod_done = pod::retire_pod(&mut pod_nl, &key.ifname).await.map_err(link_err)?;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot enter the pod namespace; unwiring from the host"),
                }
            }
            let retired = pod::retire_host(&mut host, &key.container_id, &key.ifname, !pod_done)
                .await
                .map_err(link_err)?;
            ipam.release(&key).map_err(|source| Error::Ipam { key: label.clone(), source })?;
            Ok::<_, Error>(retired)
        })
        .await
        .map_err(|source| Error::Netns { key: label, source })??;
        if retired {
            self.reaper.poke();
        }
        Ok(())
    }

    /// CHECK: verifies the pod's interface, its addresses and default routes, and the host
    /// end on the bridge. The first difference is the error.
    pub async fn check(&self, a: &Attach) -> Result<()> {
        let key = validate(a)?;
        let label = key.to_string();
        let pod_ns = open_pod(&a.netns)?;
        let ipam = self.ipam()?;
        let ips = ipam.get(&key).map_err(|source| Error::Ipam { key: label.clone(), source })?;
        if ips.is_empty() {
            return Err(Error::Check { key: label, reason: "no addresses are allocated".into() });
        }
        let host = self.host_netns(&label)?;
        let (bridge_name, hairpin) = (self.cfg.bridge.clone(), self.cfg.hairpin);
        let work_label = label.clone();
        netns::run(host.as_ref(), move |mut t| async move {
            let label = work_label;
            let ns_err = |source| Error::Netns { key: label.clone(), source };
            let checked = |source: link::Error| match source {
                link::Error::Check(reason) => Error::Check { key: label.clone(), reason },
                source => Error::Link { what: format!("check {label}"), source },
            };
            let mut host = RtNetlink::new(t.connect().map_err(ns_err)?);
            let mtu =
                match link::Netlink::link(&mut host, &link::LinkRef::Name(bridge_name.clone()))
                    .await
                {
                    Ok(Some(b)) => b.mtu,
                    Ok(None) => {
                        return Err(checked(link::Error::Check(format!(
                            "bridge {bridge_name} is missing"
                        ))))
                    }
                    Err(e) => return Err(checked(e)),
                };
            let spec = PodSpec {
                container_id: key.container_id.clone(),
                ifname: key.ifname.clone(),
                mtu,
                hairpin,
                ips,
            };
            pod::check_host(&mut host, &bridge_name, &spec).await.map_err(checked)?;
            t.enter(&pod_ns).map_err(ns_err)?;
            let mut pod_nl = RtNetlink::new(t.connect().map_err(ns_err)?);
            pod::check_pod(&mut pod_nl, &spec).await.map_err(checked)
        })
        .await
        .map_err(|source| Error::Netns { key: label, source })?
    }

    /// GC: releases the addresses of every key not in `live` and retires the veths of such
    /// keys still on the bridge.
    pub async fn gc(&self, live: &[AllocKey]) -> Result<GcReport> {
        let live: HashSet<AllocKey> = live.iter().cloned().collect();
        let ipam = self.ipam()?;
        let host = self.host_netns("*")?;
        let bridge_name = self.cfg.bridge.clone();
        let report = netns::run(host.as_ref(), move |t| async move {
            let link_err = |source| Error::Link { what: "gc".into(), source };
            let released = ipam
                .gc(|k| live.contains(k))
                .map_err(|source| Error::Ipam { key: "*".into(), source })?;
            let mut nl = RtNetlink::new(
                t.connect().map_err(|source| Error::Netns { key: "*".into(), source })?,
            );
            let mut retired = Vec::new();
            for port in pod::ports(&mut nl, &bridge_name).await.map_err(link_err)? {
                let key = AllocKey::new(port.container_id, port.ifname);
                if !live.contains(&key)
                    && pod::retire_link(&mut nl, &port.link, true).await.map_err(link_err)?
                {
                    tracing::info!(%key, veth = %port.link.name, "retired an orphan veth");
                    retired.push(port.link.name);
                }
            }
            Ok::<_, Error>(GcReport { released, retired })
        })
        .await
        .map_err(|source| Error::Netns { key: "*".into(), source })??;
        if !report.retired.is_empty() {
            self.reaper.poke();
        }
        Ok(report)
    }

    /// STATUS: what ADD would find (the state directory opens, the host namespace is
    /// reachable, which range sets are full), with what exists now. Changes nothing but the
    /// state directory's creation.
    pub async fn status(&self) -> Result<Status> {
        let ipam = self.ipam()?;
        let ipam_err = |source| Error::Ipam { key: "*".into(), source };
        let allocated = ipam.list().map_err(ipam_err)?.len();
        let exhausted = ipam
            .exhausted()
            .map_err(ipam_err)?
            .into_iter()
            .map(|set| {
                let ranges = ipam.ranges().get(set).map(Vec::as_slice).unwrap_or_default();
                (set, ranges.iter().map(ToString::to_string).collect::<Vec<_>>().join(","))
            })
            .collect();
        let host = self.host_netns("*")?;
        let name = self.cfg.bridge.clone();
        let bridge_present = netns::run(host.as_ref(), move |t| async move {
            let mut nl = RtNetlink::new(
                t.connect().map_err(|source| Error::Netns { key: "*".into(), source })?,
            );
            link::Netlink::link(&mut nl, &link::LinkRef::Name(name))
                .await
                .map(|l| l.is_some())
                .map_err(|source| Error::Link { what: "status".into(), source })
        })
        .await
        .map_err(|source| Error::Netns { key: "*".into(), source })??;
        Ok(Status { bridge_present, allocated, exhausted })
    }

    /// Deletes every retired pair now, in one batch, and waits for it.
    pub async fn reap(&self) -> Result<()> {
        let host = self.host_netns("*")?;
        netns::run(host.as_ref(), |t| async move {
            let mut nl = RtNetlink::new(t.connect().map_err(|e| Error::Reap(e.to_string()))?);
            pod::reap(&mut nl).await.map_err(|e| Error::Reap(e.to_string()))
        })
        .await
        .map_err(|source| Error::Netns { key: "*".into(), source })?
    }
}

/// The background reaper: one thread in the host namespace, started on the first retirement,
/// deleting the retired group whenever poked. Pokes that arrive while a reap waits for the
/// kernel are served by the next one, so bursts of DELs share one RCU wait.
#[derive(Debug)]
struct Reaper {
    host_netns: Option<PathBuf>,
    background: bool,
    tx: Mutex<Option<tokio::sync::mpsc::UnboundedSender<()>>>,
}

impl Reaper {
    fn new(host_netns: Option<PathBuf>) -> Self {
        Reaper { host_netns, background: true, tx: Mutex::new(None) }
    }

    fn poke(&self) {
        if !self.background {
            return;
        }
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = tx.as_ref() {
            if t.send(()).is_ok() {
                return;
            }
        }
        match self.start() {
            Ok(t) => {
                let _ = t.send(());
                *tx = Some(t);
            }
            Err(e) => tracing::warn!(error = %e, "cannot start the veth reaper"),
        }
    }

    fn start(&self) -> Result<tokio::sync::mpsc::UnboundedSender<()>, netns::Error> {
        let host = self.host_netns.as_deref().map(Netns::open).transpose()?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        netns::spawn(host.as_ref(), move |t| async move {
            let mut nl = match t.connect() {
                Ok(h) => RtNetlink::new(h),
                Err(e) => {
                    tracing::warn!(error = %e, "veth reaper cannot open netlink");
                    return;
                }
            };
            while rx.recv().await.is_some() {
                while rx.try_recv().is_ok() {}
                if let Err(e) = pod::reap(&mut nl).await {
                    tracing::warn!(error = %e, "cannot reap retired veths");
                }
            }
        })?;
        Ok(tx)
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        // Closing the channel ends the thread after its current reap.
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Why `name` cannot be an interface name, per the CNI spec and the kernel.
fn ifname_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name.len() > 15 {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is . or ..")
    } else if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control()) {
        Some("contains /, :, whitespace or a control character")
    } else {
        None
    }
}

fn validate_key(container_id: &str, ifname: &str) -> Result<AllocKey> {
    let bad_id = |reason| Error::InvalidAttach {
        field: "container id",
        value: container_id.to_owned(),
        reason,
    };
    let mut chars = container_id.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphanumeric()) {
        return Err(bad_id("must start with a letter or digit"));
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(bad_id("may hold only letters, digits, _, . and -"));
    }
    if container_id.len() > 200 {
        return Err(bad_id("is longer than 200 bytes"));
    }
    if let Some(reason) = ifname_problem(ifname) {
        return Err(Error::InvalidAttach { field: "ifname", value: ifname.to_owned(), reason });
    }
    Ok(AllocKey::new(container_id, ifname))
}

fn validate(a: &Attach) -> Result<AllocKey> {
    let key = validate_key(&a.container_id, &a.ifname)?;
    if !a.netns.is_absolute() {
        return Err(Error::InvalidAttach {
            field: "netns",
            value: a.netns.display().to_string(),
            reason: "must be an absolute path",
        });
    }
    Ok(key)
}

fn open_pod(path: &Path) -> Result<Netns> {
    Netns::open(path).map_err(|e| match e {
        netns::Error::Missing { path } => Error::NetnsMissing { path },
        netns::Error::NotANetns { path } => Error::InvalidAttach {
            field: "netns",
            value: path.display().to_string(),
            reason: "is not a network namespace",
        },
        source => Error::Netns { key: path.display().to_string(), source },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use crate::config::IpRange;

    fn cfg(dir: &Path) -> NetworkConfig {
        let mut c = NetworkConfig::standalone(&["10.42.0.0/24".parse().unwrap()]);
        c.state_dir = dir.to_owned();
        c.masquerade = None;
        c
    }

    fn attach(id: &str, netns: &Path) -> Attach {
        Attach { container_id: id.into(), netns: netns.to_owned(), ifname: "eth0".into() }
    }

    #[test]
    fn new_validates_and_touches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut c = cfg(&state);
        c.host_netns = Some(dir.path().join("no-such-netns"));
        Network::new(c).unwrap();
        assert!(!state.exists(), "no state directory before first use");
    }

    #[test]
    fn bad_configurations_are_invalid_config_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [fn(&mut NetworkConfig); 6] = [
            (|c| c.name = "../x".into()),
            (|c| c.bridge = "a-bridge-name-too-long".into()),
            (|c| c.bridge = "br/0".into()),
            (|c| c.mtu = Mtu::Fixed(20)),
            (|c| c.ranges.clear()),
            (|c| {
                c.ranges = vec![vec![IpRange {
                    subnet: "10.42.0.0/24".parse().unwrap(),
                    range_start: Some("10.43.0.5".parse().unwrap()),
                    range_end: None,
                    gateway: None,
                }]]
            }),
        ];
        for (i, mutate) in cases.iter().enumerate() {
            let mut c = cfg(dir.path());
            mutate(&mut c);
            let err = Network::new(c).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidConfig, "case {i}: {err}");
        }
    }

    #[test]
    fn gateways_default_to_the_first_host_address_with_the_subnet_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg(dir.path());
        c.ranges.push(vec![IpRange {
            subnet: "fd42::/64".parse().unwrap(),
            range_start: None,
            range_end: None,
            gateway: None,
        }]);
        let n = Network::new(c).unwrap();
        let gws: Vec<String> = n.gateways.iter().map(|g| g.to_string()).collect();
        assert_eq!(gws, ["10.42.0.1/24", "fd42::1/64"]);
    }

    #[test]
    fn malformed_attachments_are_refused_before_any_work() {
        let dir = tempfile::tempdir().unwrap();
        let n = Network::new(cfg(dir.path())).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let ns = dir.path().join("ns");
        for (id, ifname, netns) in [
            ("", "eth0", ns.clone()),
            ("-x", "eth0", ns.clone()),
            ("a/b", "eth0", ns.clone()),
            ("c1", "", ns.clone()),
            ("c1", "a-very-long-ifname", ns.clone()),
            ("c1", "eth 0", ns.clone()),
            ("c1", "..", ns.clone()),
            ("c1", "eth0", PathBuf::from("relative")),
        ] {
            let a = Attach { container_id: id.into(), netns, ifname: ifname.into() };
            let err = rt.block_on(n.add(&a)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidArgs, "{a:?}: {err}");
        }
        assert!(!dir.path().join("networks").exists(), "nothing allocated");
    }

    #[test]
    fn add_to_a_missing_namespace_says_so_and_allocates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let n = Network::new(cfg(dir.path())).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let err = rt.block_on(n.add(&attach("c1", &dir.path().join("gone")))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NetnsMissing, "{err}");
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(!dir.path().join("networks").exists());
    }

    #[test]
    fn add_to_a_file_that_is_not_a_namespace_is_invalid_args_and_allocates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let n = Network::new(cfg(dir.path())).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"").unwrap();
        let err = rt.block_on(n.add(&attach("c1", &file))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgs, "{err}");
        assert!(err.to_string().contains("is not a network namespace"), "{err}");
        assert!(!dir.path().join("networks").exists());
    }

    #[test]
    fn check_of_a_missing_namespace_is_netns_missing() {
        let dir = tempfile::tempdir().unwrap();
        let n = Network::new(cfg(dir.path())).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let err = rt.block_on(n.check(&attach("c1", &dir.path().join("gone")))).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NetnsMissing, "{err}");
    }

    #[test]
    fn exhaustion_is_classified_for_the_plugin() {
        let e = Error::Ipam {
            key: "c1/eth0".into(),
            source: ipam::Error::Exhausted { set: 0, ranges: "10.42.0.2-10.42.0.3".into() },
        };
        assert_eq!(e.kind(), ErrorKind::Exhausted);
    }
}
