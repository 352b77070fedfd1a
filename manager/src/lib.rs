//! mignet: manager, node agent, lab and CLI.
//!
//! Layout: `api` (Kubernetes types), pure decisions (`config`, and
//! `network` for the migration network's rollout), and adapters that do the
//! I/O (`kube_adapter`). Future modules (agent, lab, console, cli, policy)
//! sit beside these.

pub mod agent;
pub mod api;
pub mod backend;
pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod demo;
pub mod http;
pub mod kube_adapter;
pub mod lab;
pub mod launcher;
pub mod metrics;
pub mod network;
pub mod store;

pub use config::{ConfigError, EffectiveMigrationConfig, FieldError};
pub use kube_adapter::network_watch::{RolloutError, RolloutSettings};
pub use network::{ClusterNetworks, Decision, NetworkRef};

/// An error and its sources on one line (logs, conditions, CLI messages).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Errors of the `mignet` binary's commands, one variant per command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("generating CRDs")]
    CrdGen(#[from] api::crdgen::CrdGenError),
    #[error("network rollout controller")]
    Rollout(#[from] RolloutError),
    #[error("connecting to the Kubernetes API")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Flag(#[from] FlagError),
    #[error(transparent)]
    Http(#[from] http::HttpError),
}

#[derive(Debug, thiserror::Error)]
#[error("invalid {flag} {value:?}: {reason}")]
pub struct FlagError {
    pub flag: &'static str,
    pub value: String,
    pub reason: String,
}

/// Parse CIDR flags (comma-separated or repeated, for dual stack).
pub fn parse_cidrs(
    flag: &'static str,
    values: &[String],
) -> Result<Vec<ipnetwork::IpNetwork>, FlagError> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse().map_err(|e: ipnetwork::IpNetworkError| FlagError {
                flag,
                value: s.to_owned(),
                reason: e.to_string(),
            })
        })
        .collect()
}
