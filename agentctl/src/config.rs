//! The agentctl configuration, after talosconfig: a current context and named contexts, each
//! with the node's endpoints and the credentials to reach them.
//!
//! ```yaml
//! context: node
//! contexts:
//!   node:
//!     endpoints: ["unix:/run/keelson/agent.sock", "192.0.2.10:50100"]
//!     ca: |
//!       -----BEGIN CERTIFICATE-----
//!       ...
//!     crt: |
//!       -----BEGIN CERTIFICATE-----
//!       ...
//!     key: |
//!       -----BEGIN PRIVATE KEY-----
//!       ...
//! ```
//!
//! An endpoint `unix:PATH` is a unix socket (no TLS); anything else is `host:port` (or
//! `[v6]:port`) reached over TCP with mutual TLS, which needs `ca`, `crt` and `key`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of reading and writing configs.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or written.
    #[error("{op} agentctl config {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid config.
    #[error("parse agentctl config {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// The config could not be serialized.
    #[error("serialize agentctl config")]
    Serialize(#[source] serde_yaml_ng::Error),
    /// The current (or asked for) context is not in the file.
    #[error("context {context:?} is not in the agentctl config (it has: {available})")]
    NoContext {
        /// The missing context.
        context: String,
        /// The contexts it has.
        available: String,
    },
}

/// One node: where to reach it and with what.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// `unix:PATH` or `host:port`, tried in order.
    pub endpoints: Vec<String>,
    /// The node-API CA (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// The client certificate (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crt: Option<String>,
    /// The client certificate's key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Context {
    /// The local unix socket, no TLS.
    pub fn unix(path: &Path) -> Self {
        Context { endpoints: vec![format!("unix:{}", path.display())], ..Default::default() }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentctlConfig {
    /// The context used unless another is asked for.
    pub context: String,
    /// Contexts by name.
    pub contexts: BTreeMap<String, Context>,
}

impl AgentctlConfig {
    /// A config with one context, current.
    pub fn single(name: &str, context: Context) -> Self {
        AgentctlConfig {
            context: name.to_owned(),
            contexts: BTreeMap::from([(name.to_owned(), context)]),
        }
    }

    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            op: "read",
            path: path.to_owned(),
            source,
        })?;
        serde_yaml_ng::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.to_owned(), source })
    }

    /// The YAML text.
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        serde_yaml_ng::to_string(self).map_err(ConfigError::Serialize)
    }

    /// The named context, or the current one.
    pub fn context(&self, name: Option<&str>) -> Result<&Context, ConfigError> {
        let name = name.unwrap_or(&self.context);
        self.contexts.get(name).ok_or_else(|| ConfigError::NoContext {
            context: name.to_owned(),
            available: self.contexts.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_through_yaml() {
        let cfg = AgentctlConfig::single(
            "n1",
            Context {
                endpoints: vec!["unix:/run/x.sock".into(), "127.0.0.1:1".into()],
                ca: Some("-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n".into()),
                crt: None,
                key: None,
            },
        );
        let text = cfg.to_yaml().unwrap();
        let back: AgentctlConfig = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        assert_eq!(back.context(None).unwrap().endpoints.len(), 2);
    }

    #[test]
    fn a_missing_context_names_the_ones_there_are() {
        let cfg = AgentctlConfig::single("n1", Context::unix(Path::new("/s")));
        let err = cfg.context(Some("n2")).unwrap_err().to_string();
        assert!(err.contains("n2") && err.contains("n1"), "{err}");
    }
}
