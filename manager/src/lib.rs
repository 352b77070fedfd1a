//! mignet: manager, node agent, launcher, lab, web console and CLI, in one
//! binary (`mignet`), over the pure decisions of `mignet-policy` and the
//! data path of `mignet-dataplane`.
//!
//! The modules, lowest first; a module uses only modules above it in this
//! list (no two depend on each other):
//!
//! - [`api`]: the Kubernetes types we read and write (KubeVirt, HCO, Multus
//!   subsets) and the one network-reference type
//!   ([`api::network_ref::NetworkRef`]); [`config`]: `liveMigrationConfig`
//!   validated, with defaults.
//! - [`store`]: the lab's object store, what the API server is to a cluster.
//! - [`backend`]: one typed object API over the API server or the store,
//!   and [`backend::protocol`], the controller <-> agent contract.
//! - [`network`]: the migration network: the pure rollout decision and the
//!   rollout pass over a backend.
//! - [`launcher`]: `mignet launcher`, one VM's QEMU in its pod, and the VM
//!   request every side agrees on.
//! - [`metrics`]: Prometheus text: the manager's counters and the
//!   migration families (KubeVirt's names) as pure functions of objects and
//!   samples.
//! - [`control`]: the migration controller (admission, limits, launcher
//!   pods, drain, the VM controller), over a backend.
//! - [`kube_adapter`]: what only a real cluster needs: the network watch,
//!   the CSR signer, the eviction webhook, the IPAM reconciler.
//! - [`agent`]: the node agent: a pure decision per pass, its executor, the
//!   data path around `mignet-dataplane`.
//! - [`console`], [`http`]: the web console and the manager's endpoints.
//! - [`lab`]: lab mode, a cluster in network namespaces, running the same
//!   controller, rollout and agents on the store.
//! - [`cli`]: the `kubectl`-like verbs and `mignet lab ...`; [`demo`]: the
//!   seed's story, which drives the CLI.

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
