//! The CNI entry point behind `keelson cni`: spec 1.0 `ADD`, `DEL`, `CHECK` and `VERSION`,
//! plus `GC` and `STATUS` from spec 1.1. [`run`] reads the `CNI_*` environment and the network
//! configuration on stdin, calls a [`Backend`] (the real one wires pods through
//! [`crate::Network`]; tests use a fake) and writes the spec result, or the spec error
//! object with a non-zero exit code, on stdout. Malformed input gets a spec error, never a
//! panic.
//!
//! # Configuration
//!
//! Field names follow the reference `bridge` and `host-local` plugins so configurations port
//! with few changes (`type` becomes `"keelson"`; the `ipam` section stays in place but is
//! handled in process, no IPAM binary is run).
//!
//! | field | meaning | default |
//! |---|---|---|
//! | `cniVersion` | one of [`SUPPORTED_VERSIONS`] | required |
//! | `name` | network name; names the IPAM directory | required |
//! | `type` | must be `"keelson"` | required |
//! | `bridge` | the node bridge | `keel0` |
//! | `mtu` | MTU of the bridge and every veth | the uplink's |
//! | `overlay` | `"vxlanV4"` or `"vxlanV6"`: subtract its overhead from the automatic MTU | none |
//! | `hairpinMode` | hairpin on bridge ports | `true` (the reference: `false`) |
//! | `ipMasq` | masquerade traffic leaving the cluster (always nf_tables) | `false` |
//! | `clusterCIDRs` | never masqueraded towards | the `ipam` subnets |
//! | `serviceCIDRs` | never masqueraded towards | none |
//! | `isGateway`, `isDefaultGateway` | the bridge is always the gateway and default route; only `true` is accepted | `true` |
//! | `hostNetns` | namespace holding the bridge and uplink (tests) | the caller's |
//! | `dns` | `nameservers`, `domain`, `search`, `options`; echoed in the ADD result | `{}` |
//! | `ipam.type` | `"host-local"` or absent | |
//! | `ipam.ranges` | list of range sets, each a list of `{subnet, rangeStart, rangeEnd, gateway}`; one address per set | |
//! | `ipam.subnet`, `ipam.rangeStart`, `ipam.rangeEnd`, `ipam.gateway` | host-local's single-range form, placed before `ranges` | |
//! | `ipam.dataDir` | state root; allocations live in `<dataDir>/networks/<name>/` (not host-local's format) | `/var/lib/keelson/cni` |
//! | `ipam.routes` | only default routes (`0.0.0.0/0`, `::/0`) through the gateway, which are always installed | |
//!
//! Without an `ipam` section the network is `10.42.0.0/24`. Range defaults are host-local's:
//! gateway the subnet's first host address, addresses from the one after it to the last
//! before broadcast. Reference fields that would change behaviour we do not implement
//! (`vlan`, `vlanTrunk`, `promiscMode`, `macspoofchk`, `enabledad`,
//! `disableContainerInterface`, `portIsolation`, `ipam.resolvConf`, a non-host-local
//! `ipam.type`, other routes) are refused with code 2 unless set to their "off" value; other
//! unknown fields (`capabilities`, `runtimeConfig`, `args`, `forceAddress`,
//! `ipMasqBackend`, …) are ignored.
//!
//! ```json
//! {
//!   "cniVersion": "1.0.0",
//!   "name": "keelson",
//!   "type": "keelson",
//!   "bridge": "keel0",
//!   "hairpinMode": true,
//!   "ipMasq": true,
//!   "clusterCIDRs": ["10.42.0.0/16", "fd42::/56"],
//!   "serviceCIDRs": ["10.43.0.0/16"],
//!   "ipam": {
//!     "type": "host-local",
//!     "ranges": [
//!       [{"subnet": "10.42.0.0/24"}],
//!       [{"subnet": "fd42::/64", "rangeStart": "fd42::100", "rangeEnd": "fd42::ffff"}]
//!     ],
//!     "dataDir": "/var/lib/keelson/cni"
//!   }
//! }
//! ```
//!
//! # Protocol
//!
//! Environment: `CNI_COMMAND`; `CNI_CONTAINERID`, `CNI_IFNAME` (ADD, DEL, CHECK);
//! `CNI_NETNS` (ADD, CHECK; optional for DEL). `CNI_ARGS` and `CNI_PATH` are accepted and
//! unused (no delegate plugin is run). CHECK needs config version 0.4.0 or later and a
//! `prevResult`; GC and STATUS need 1.1.0; GC needs `cni.dev/valid-attachments`. Results of
//! versions before 1.0.0 carry `"version"` in `ips`; 1.1.0 results carry interface MTUs. Given
//! a `prevResult`, ADD appends its own interfaces, addresses and routes to it.
//!
//! Error codes: the spec's 1 (version), 2 (unsupported field), 3, 4 (environment), 5 (I/O),
//! 6 (decoding), 7 (invalid configuration), 11 (try again), 50/51 (STATUS), and ours:
//! [`CODE_EXHAUSTED`] (100), [`CODE_CHECK_FAILED`] (101), [`CODE_FAILED`] (102).

mod backend;
mod netconf;
mod result;
#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::config::NetworkConfig;
use crate::ipam::{self, AllocKey};
use crate::{Attach, Attachment};
pub use backend::{classify, NetworkBackend};
pub use netconf::PLUGIN_TYPE;
pub use result::{
    format_mac, CniResult, Dns, ErrorResult, Interface, IpEntry, Route, VersionResult,
};

/// Spec versions this plugin speaks; results follow the configuration's.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest of [`SUPPORTED_VERSIONS`], used when the caller's version is unknown.
pub const LATEST_VERSION: &str = "1.1.0";

/// Incompatible CNI version.
pub const CODE_INCOMPATIBLE_VERSION: u32 = 1;
/// Unsupported field in the network configuration.
pub const CODE_UNSUPPORTED_FIELD: u32 = 2;
/// Container unknown or does not exist.
pub const CODE_UNKNOWN_CONTAINER: u32 = 3;
/// Invalid or missing environment variables.
pub const CODE_INVALID_ENV: u32 = 4;
/// I/O failure.
pub const CODE_IO: u32 = 5;
/// Failed to decode content.
pub const CODE_DECODE: u32 = 6;
/// Invalid network configuration.
pub const CODE_INVALID_CONFIG: u32 = 7;
/// Try again later.
pub const CODE_TRY_AGAIN: u32 = 11;
/// STATUS: cannot service ADD.
pub const CODE_NOT_AVAILABLE: u32 = 50;
/// STATUS: cannot service ADD, and existing pods may have limited connectivity.
pub const CODE_LIMITED_CONNECTIVITY: u32 = 51;
/// Ours: no free address in a range set.
pub const CODE_EXHAUSTED: u32 = 100;
/// Ours: CHECK found the attachment not as expected.
pub const CODE_CHECK_FAILED: u32 = 101;
/// Ours: any other failure of the backend.
pub const CODE_FAILED: u32 = 102;

/// A failure of the [`Backend`], classified for the spec's error codes. The string is the
/// whole cause chain, rendered once at the boundary.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// No free address ([`CODE_EXHAUSTED`]).
    #[error("{0}")]
    Exhausted(String),
    /// A transient condition ([`CODE_TRY_AGAIN`]).
    #[error("{0}")]
    TryAgain(String),
    /// An I/O failure ([`CODE_IO`]).
    #[error("{0}")]
    Io(String),
    /// The container is unknown ([`CODE_UNKNOWN_CONTAINER`]).
    #[error("{0}")]
    UnknownContainer(String),
    /// The runtime's arguments are unusable, found only by the backend (e.g. `CNI_NETNS` is
    /// not a network namespace; [`CODE_INVALID_ENV`]).
    #[error("{0}")]
    InvalidArgs(String),
    /// The configuration cannot work, found only by the backend ([`CODE_INVALID_CONFIG`]).
    #[error("{0}")]
    InvalidConfig(String),
    /// CHECK found a difference ([`CODE_CHECK_FAILED`]).
    #[error("{0}")]
    CheckFailed(String),
    /// STATUS: not ready for ADD ([`CODE_NOT_AVAILABLE`]).
    #[error("{0}")]
    NotAvailable(String),
    /// STATUS: not ready, existing pods affected ([`CODE_LIMITED_CONNECTIVITY`]).
    #[error("{0}")]
    LimitedConnectivity(String),
    /// Anything else ([`CODE_FAILED`]).
    #[error("{0}")]
    Failed(String),
}

impl BackendError {
    /// The spec error code.
    pub fn code(&self) -> u32 {
        match self {
            BackendError::Exhausted(_) => CODE_EXHAUSTED,
            BackendError::TryAgain(_) => CODE_TRY_AGAIN,
            BackendError::Io(_) => CODE_IO,
            BackendError::UnknownContainer(_) => CODE_UNKNOWN_CONTAINER,
            BackendError::InvalidArgs(_) => CODE_INVALID_ENV,
            BackendError::InvalidConfig(_) => CODE_INVALID_CONFIG,
            BackendError::CheckFailed(_) => CODE_CHECK_FAILED,
            BackendError::NotAvailable(_) => CODE_NOT_AVAILABLE,
            BackendError::LimitedConnectivity(_) => CODE_LIMITED_CONNECTIVITY,
            BackendError::Failed(_) => CODE_FAILED,
        }
    }

    fn msg(&self) -> &'static str {
        match self {
            BackendError::Exhausted(_) => "no free address",
            BackendError::TryAgain(_) => "try again later",
            BackendError::Io(_) => "i/o failure",
            BackendError::UnknownContainer(_) => "container unknown",
            BackendError::InvalidArgs(_) => "invalid environment variables",
            BackendError::InvalidConfig(_) => "invalid network configuration",
            BackendError::CheckFailed(_) => "check failed",
            BackendError::NotAvailable(_) => "plugin not available",
            BackendError::LimitedConnectivity(_) => "plugin not available, connectivity limited",
            BackendError::Failed(_) => "failed",
        }
    }
}

/// Renders an error and its sources, `outer: inner: innermost`.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl From<ipam::Error> for BackendError {
    fn from(err: ipam::Error) -> Self {
        use ipam::Error as E;
        let text = error_chain(&err);
        match err {
            E::Exhausted { .. } => BackendError::Exhausted(text),
            E::Lock { .. } => BackendError::TryAgain(text),
            E::Io { .. } => BackendError::Io(text),
            E::InvalidNetworkName { .. }
            | E::NoRanges
            | E::EmptyRangeSet { .. }
            | E::MixedFamilies { .. }
            | E::HostBitsSet { .. }
            | E::SubnetTooSmall { .. }
            | E::OutsideSubnet { .. }
            | E::StartAfterEnd { .. }
            | E::ReservedGateway { .. }
            | E::Overlap { .. } => BackendError::InvalidConfig(text),
            E::InvalidKey
            | E::Encode { .. }
            | E::CorruptRecord { .. }
            | E::UnsupportedRecordVersion { .. }
            | E::UnsupportedFormat { .. }
            | E::Unversioned { .. } => BackendError::Failed(text),
        }
    }
}

/// What the plugin drives. Synchronous: the real implementation runs the async
/// [`crate::Network`] on a current-thread runtime.
pub trait Backend {
    /// Wires `attach` (ADD). Idempotent.
    fn add(&self, cfg: &NetworkConfig, attach: &Attach) -> Result<Attachment, BackendError>;
    /// Unwires and releases `key` (DEL). `netns` is `None` when the runtime did not pass
    /// `CNI_NETNS` (the sandbox may be gone); missing resources are not an error.
    fn del(
        &self,
        cfg: &NetworkConfig,
        key: &AllocKey,
        netns: Option<&Path>,
    ) -> Result<(), BackendError>;
    /// Verifies `attach` against the result of its ADD (CHECK).
    fn check(
        &self,
        cfg: &NetworkConfig,
        attach: &Attach,
        prev: &CniResult,
    ) -> Result<(), BackendError>;
    /// Releases everything not belonging to one of `valid` (GC).
    fn gc(&self, cfg: &NetworkConfig, valid: &[AllocKey]) -> Result<(), BackendError>;
    /// Whether ADD can be served (STATUS).
    fn status(&self, cfg: &NetworkConfig) -> Result<(), BackendError>;
}

/// Everything that ends a command with a spec error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration version this plugin does not speak, or one too old for the command.
    #[error("incompatible CNI version: {details}")]
    IncompatibleVersion {
        /// What is incompatible.
        details: String,
    },
    /// A field whose value asks for behaviour not implemented.
    #[error("unsupported field {field:?}: {value}")]
    UnsupportedField {
        /// The field (dotted path).
        field: String,
        /// Its value, as JSON.
        value: String,
    },
    /// Required environment variables missing.
    #[error("required environment variables missing: {}", names.join(", "))]
    MissingEnv {
        /// Their names.
        names: Vec<&'static str>,
    },
    /// An environment variable with an invalid value.
    #[error("invalid environment variable {name}: {reason}")]
    InvalidEnv {
        /// Its name.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Reading stdin or writing stdout failed.
    #[error("cannot {what}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Input that is not the JSON it should be.
    #[error("cannot decode the {what}")]
    Decode {
        /// What was decoded.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// Encoding a result failed (it cannot for these types).
    #[error("cannot encode the {what}")]
    Encode {
        /// What was encoded.
        what: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A configuration that does not validate.
    #[error("invalid network configuration: {details}")]
    InvalidConfig {
        /// What is wrong.
        details: String,
    },
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl Error {
    /// The spec error code.
    pub fn code(&self) -> u32 {
        match self {
            Error::IncompatibleVersion { .. } => CODE_INCOMPATIBLE_VERSION,
            Error::UnsupportedField { .. } => CODE_UNSUPPORTED_FIELD,
            Error::MissingEnv { .. } | Error::InvalidEnv { .. } => CODE_INVALID_ENV,
            Error::Io { .. } => CODE_IO,
            Error::Decode { .. } => CODE_DECODE,
            Error::InvalidConfig { .. } => CODE_INVALID_CONFIG,
            Error::Encode { .. } => CODE_FAILED,
            Error::Backend(err) => err.code(),
        }
    }

    /// The error object: a short `msg` and the whole chain as `details`.
    pub fn to_result(&self, version: &str) -> ErrorResult {
        let msg = match self {
            Error::Backend(err) => err.msg().to_string(),
            Error::Decode { what, .. } => format!("cannot decode the {what}"),
            Error::Io { what, .. } => format!("cannot {what}"),
            Error::Encode { what, .. } => format!("cannot encode the {what}"),
            // These messages are short already and must name the field or variables.
            other => other.to_string(),
        };
        ErrorResult {
            cni_version: version.to_string(),
            code: self.code(),
            msg,
            details: error_chain(self),
        }
    }
}

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    Add,
    Del,
    Check,
    Gc,
    Status,
    Version,
}

impl Command {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "GC" => Command::Gc,
            "STATUS" => Command::Status,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }
}

/// The per-invocation parameters from the environment.
#[derive(Debug, Default)]
struct Params {
    container_id: Option<String>,
    netns: Option<PathBuf>,
    ifname: Option<String>,
}

/// Whether `id` is a valid container id (the reference `ValidateContainerID`).
fn valid_container_id(id: &str) -> bool {
    ipam::valid_network_name(id)
}

fn read_params(env: &impl Fn(&str) -> Option<String>, cmd: Command) -> Result<Params, Error> {
    let get = |name: &str| env(name).filter(|v| !v.is_empty());
    let (needs_id, needs_netns) = match cmd {
        Command::Add | Command::Check => (true, true),
        Command::Del => (true, false),
        Command::Gc | Command::Status | Command::Version => (false, false),
    };
    let params = Params {
        container_id: get("CNI_CONTAINERID"),
        netns: get("CNI_NETNS").map(PathBuf::from),
        ifname: get("CNI_IFNAME"),
    };
    let mut missing = Vec::new();
    if needs_id && params.container_id.is_none() {
        missing.push("CNI_CONTAINERID");
    }
    if needs_netns && params.netns.is_none() {
        missing.push("CNI_NETNS");
    }
    if needs_id && params.ifname.is_none() {
        missing.push("CNI_IFNAME");
    }
    if !missing.is_empty() {
        return Err(Error::MissingEnv { names: missing });
    }
    if needs_id {
        if let Some(id) = params.container_id.as_deref().filter(|id| !valid_container_id(id)) {
            return Err(Error::InvalidEnv {
                name: "CNI_CONTAINERID",
                reason: format!("{id:?} must start with a letter or digit and contain only letters, digits, '_', '.' and '-'"),
            });
        }
        if let Some(name) = params.ifname.as_deref().filter(|n| !netconf::valid_ifname(n)) {
            return Err(Error::InvalidEnv {
                name: "CNI_IFNAME",
                reason: format!("{name:?} is not a valid interface name (1 to 15 characters, no '/', ':' or spaces)"),
            });
        }
    }
    Ok(params)
}

/// The `cniVersion` of `stdin`, if it is a JSON object with a string there.
fn sniff_version(value: Option<&serde_json::Value>) -> Option<String> {
    value?.get("cniVersion")?.as_str().map(str::to_string)
}

/// Runs one CNI command: reads the environment through `env` and the configuration from
/// `stdin`, calls `backend`, writes the result or the error object to `stdout`. Returns the
/// process exit code: 0 on success, 1 on any error.
pub fn run(
    env: &impl Fn(&str) -> Option<String>,
    stdin: &mut impl Read,
    stdout: &mut impl Write,
    backend: &dyn Backend,
) -> i32 {
    let command = env("CNI_COMMAND").unwrap_or_default();
    let span = tracing::debug_span!("cni", command = %command);
    let _enter = span.enter();
    let mut version = LATEST_VERSION.to_string();
    match execute(&command, env, stdin, &mut version, backend) {
        Ok(None) => 0,
        Ok(Some(output)) => match write_json(stdout, &output) {
            Ok(()) => 0,
            Err(err) => {
                tracing::error!(error = %error_chain(&err), "cannot write the result");
                1
            }
        },
        Err(err) => {
            tracing::debug!(code = err.code(), error = %error_chain(&err), "command failed");
            let object = err.to_result(&version);
            match serde_json::to_value(&object) {
                Ok(value) => {
                    if let Err(e) = write_json(stdout, &value) {
                        tracing::error!(error = %error_chain(&e), "cannot write the error");
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot encode the error"),
            }
            1
        }
    }
}

fn write_json(stdout: &mut impl Write, value: &serde_json::Value) -> Result<(), Error> {
    let io = |source| Error::Io { what: "write stdout", source };
    serde_json::to_writer(&mut *stdout, value).map_err(|e| io(std::io::Error::other(e)))?;
    stdout.write_all(b"\n").map_err(io)?;
    stdout.flush().map_err(io)
}

/// Runs `command`; `Some(json)` is the output of a command that has one. `version` is set to
/// the configuration's as soon as it is known, for the error object.
fn execute(
    command: &str,
    env: &impl Fn(&str) -> Option<String>,
    stdin: &mut impl Read,
    version: &mut String,
    backend: &dyn Backend,
) -> Result<Option<serde_json::Value>, Error> {
    if command.is_empty() {
        return Err(Error::MissingEnv { names: vec!["CNI_COMMAND"] });
    }
    let cmd = Command::parse(command).ok_or_else(|| Error::InvalidEnv {
        name: "CNI_COMMAND",
        reason: format!("unknown command {command:?}"),
    })?;
    let mut input = Vec::new();
    stdin.read_to_end(&mut input).map_err(|source| Error::Io { what: "read stdin", source })?;
    let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&input);
    if let Some(v) =
        sniff_version(parsed.as_ref().ok()).filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
    {
        *version = v;
    }

    if cmd == Command::Version {
        let asked =
            sniff_version(parsed.as_ref().ok()).unwrap_or_else(|| LATEST_VERSION.to_string());
        let out = VersionResult {
            cni_version: asked,
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
        };
        return serde_json::to_value(out)
            .map(Some)
            .map_err(|source| Error::Encode { what: "version result", source });
    }

    let params = read_params(env, cmd)?;
    let value = parsed.map_err(|source| Error::Decode { what: "network configuration", source })?;
    if !value.is_object() {
        return Err(Error::InvalidConfig {
            details: "the configuration is not a JSON object".into(),
        });
    }
    let config_version = match value.get("cniVersion") {
        None => return Err(Error::InvalidConfig { details: "cniVersion is missing".into() }),
        Some(serde_json::Value::String(v)) => v.clone(),
        Some(other) => {
            return Err(Error::InvalidConfig {
                details: format!("cniVersion {other} is not a string"),
            })
        }
    };
    if !SUPPORTED_VERSIONS.contains(&config_version.as_str()) {
        return Err(Error::IncompatibleVersion {
            details: format!(
                "configuration version {config_version:?}, plugin supports {}",
                SUPPORTED_VERSIONS.join(", ")
            ),
        });
    }
    let minimum = match cmd {
        Command::Check => Some("0.4.0"),
        Command::Gc | Command::Status => Some("1.1.0"),
        _ => None,
    };
    if let Some(minimum) = minimum.filter(|m| result::version_lt(&config_version, m)) {
        return Err(Error::IncompatibleVersion {
            details: format!(
                "configuration version {config_version} does not allow {command} (needs {minimum})"
            ),
        });
    }
    let parsed = netconf::parse(value, config_version)?;
    let cfg = &parsed.network;

    let key = || -> Result<AllocKey, Error> {
        match (&params.container_id, &params.ifname) {
            (Some(id), Some(ifname)) => Ok(AllocKey::new(id.clone(), ifname.clone())),
            // read_params checked both for every command that gets here.
            _ => Err(Error::MissingEnv { names: vec!["CNI_CONTAINERID", "CNI_IFNAME"] }),
        }
    };
    let attach = || -> Result<Attach, Error> {
        let key = key()?;
        let netns = params.netns.clone().ok_or(Error::MissingEnv { names: vec!["CNI_NETNS"] })?;
        Ok(Attach { container_id: key.container_id, netns, ifname: key.ifname })
    };

    match cmd {
        Command::Add => {
            let attach = attach()?;
            let attachment = backend.add(cfg, &attach)?;
            let mut out = CniResult::from_attachment(
                &parsed.version,
                &attachment,
                &attach.netns,
                parsed.dns.clone(),
            );
            if let Some(prev) = parsed.prev_result.clone() {
                out = out.after(prev);
            }
            tracing::debug!(container = %attach.container_id, "added");
            serde_json::to_value(out)
                .map(Some)
                .map_err(|source| Error::Encode { what: "result", source })
        }
        Command::Del => {
            backend.del(cfg, &key()?, params.netns.as_deref())?;
            Ok(None)
        }
        Command::Check => {
            let attach = attach()?;
            let prev = parsed
                .prev_result
                .as_ref()
                .ok_or_else(|| Error::InvalidConfig { details: "CHECK needs prevResult".into() })?;
            backend.check(cfg, &attach, prev)?;
            Ok(None)
        }
        Command::Gc => {
            let valid = parsed.valid_attachments.as_deref().ok_or_else(|| {
                Error::InvalidConfig { details: "GC needs cni.dev/valid-attachments".into() }
            })?;
            backend.gc(cfg, valid)?;
            Ok(None)
        }
        Command::Status => {
            backend.status(cfg)?;
            Ok(None)
        }
        Command::Version => Ok(None),
    }
}
