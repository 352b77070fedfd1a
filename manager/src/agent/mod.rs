//! The node agent (`mignet agent`): the node side of live migration.
//!
//! - [`AgentCore`] is the data path without Kubernetes types: the node's VMs
//!   ([`vm::VmRunner`]), the migration IP and readiness, the target side
//!   ([`target`]: destination QEMU + mTLS listener on the migration IP) and
//!   the source side ([`source`]: proxy + QEMU `migrate` + monitor).
//! - [`run`] ([`run_loop`]) drives the core from the VMI/VMIM objects over
//!   a [`crate::backend::Backend`] (kube or the lab's local store), doing
//!   what the pure [`decide`] says each pass.
//!
//! Sockets are created in the agent pod's network namespace through
//! [`dataplane_rt::DataPlaneRuntime`]; VMs are daemonized QEMUs that outlive
//! the agent.

pub mod certificate;
pub mod dataplane_rt;
pub mod decide;
pub mod health;
pub mod node_labels;
pub mod observe;
pub mod params;
pub mod run_loop;
pub mod source;
pub mod target;
pub mod vm;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mignet_dataplane::migration_ip::{
    self, Family, MigrationIp, MigrationIpError, MigrationNetwork, NotReady, MIGRATION_INTERFACE,
};
use mignet_dataplane::proxy::{EndpointError, ProxyOptions};
use mignet_dataplane::tls::{ReloadingTls, TlsError, TlsPaths, TlsSettings, WatcherGuard};

pub use dataplane_rt::DataPlaneRuntime;
pub use health::{AgentHealth, Gate, Warning};
pub use params::MigrationParams;
pub use run_loop::{run, run_with_core};
pub use source::{Progress, SourceResult, TargetAddress};
pub use target::{IncomingResult, PreparedTarget};
pub use vm::{GuestBoot, VmInfo, VmRequest, VmRunner};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("entering network namespace {netns:?}")]
    Netns {
        netns: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the data-plane runtime is gone: {detail}")]
    DataPlaneGone { detail: String },
    #[error("state directory {path:?}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading the agent's TLS certificates")]
    Tls(#[source] TlsError),
    #[error("agent not ready: {0}")]
    NotReady(#[source] NotReady),
    #[error("finding the migration IP")]
    MigrationIp(#[source] MigrationIpError),
    #[error("VM {key} is already running on this node")]
    VmExists { key: String },
    #[error("VM {key} is not running on this node")]
    VmGone { key: String },
    #[error("VM {key}: no launcher running in {run_dir:?} after {waited:?}")]
    LauncherNotUp {
        key: String,
        run_dir: PathBuf,
        waited: Duration,
    },
    #[error("VM {key}")]
    Vm {
        key: String,
        #[source]
        source: mignet_dataplane::qemu::VmError,
    },
    #[error("VM {key}: QMP")]
    Qmp {
        key: String,
        #[source]
        source: mignet_dataplane::qemu::QmpError,
    },
    #[error("VM {key}: migration")]
    Migration {
        key: String,
        #[source]
        source: mignet_dataplane::qemu::MigrationError,
    },
    #[error("migration {migration}: proxy endpoints")]
    Endpoints {
        migration: String,
        #[source]
        source: EndpointError,
    },
    #[error("target address {address:?} is not ip:port")]
    TargetAddress { address: String },
}

/// How the agent is set up: flags in cluster mode, the lab in lab mode.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub node_name: String,
    /// The agent pod's IP: the migration IP when no network is configured.
    pub pod_ip: IpAddr,
    /// The migration NAD, always `namespace/name` (both modes give it so:
    /// `--migration-network` in a cluster, the lab kubelet in the lab);
    /// `None` = pod network.
    pub migration_network: Option<crate::network::NetworkRef>,
    /// Interface Multus attaches the migration network as.
    pub migration_interface: String,
    pub prefer_family: Option<Family>,
    /// Network namespace for sockets (lab: the agent pod's); `None` = ours.
    pub netns: Option<String>,
    /// `ca.crt`, `tls.crt`, `tls.key` (re-read when they change).
    pub cert_dir: PathBuf,
    pub allow_tls12: bool,
    /// VM run directories and per-migration sockets; kept across restarts.
    pub state_dir: PathBuf,
    pub boot: GuestBoot,
    /// Multifd channels per migration (`None`: one connection).
    pub multifd_channels: Option<u8>,
    /// On shutdown, in-flight migrations get this long to finish.
    pub shutdown_grace: Duration,
    /// VMs run in launcher pods whose run directories are under this path
    /// (cluster mode, [`crate::launcher::RUN_ROOT`]); `None`: the agent
    /// starts QEMU itself under `state_dir` (lab mode).
    pub launcher_root: Option<PathBuf>,
}

impl AgentSettings {
    pub fn migration_network_config(&self) -> MigrationNetwork {
        match &self.migration_network {
            None => MigrationNetwork::PodNetwork,
            Some(n) => MigrationNetwork::Dedicated {
                network: n.to_string(),
                interface: self.migration_interface.clone(),
                prefer: self.prefer_family,
            },
        }
    }
}

/// Defaults for the fields flags rarely change.
pub fn default_interface() -> String {
    MIGRATION_INTERFACE.to_string()
}

/// Whether the agent can serve migrations, and on which IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready(MigrationIp),
    NotReady(String),
}

/// The agent's data path.
#[derive(Debug)]
pub struct AgentCore {
    pub settings: AgentSettings,
    pub vms: VmRunner,
    /// Gates and warnings besides the migration IP (see [`health`]).
    pub health: Arc<AgentHealth>,
    /// The migrations this agent sends, for `/metrics`.
    pub migration_metrics: Arc<crate::metrics::migration::AgentMigrations>,
    tls: Arc<ReloadingTls>,
    sockets_dir: PathBuf,
    _tls_watcher: WatcherGuard,
    // Last: dropping it stops every proxy task still running.
    dataplane: DataPlaneRuntime,
}

impl AgentCore {
    /// Enter the namespace, load certificates, and reattach the VMs a previous
    /// agent left in `state_dir`. Must run inside a tokio runtime.
    pub async fn start(settings: AgentSettings) -> Result<Self, AgentError> {
        Self::start_with_health(settings, Arc::default()).await
    }

    /// [`AgentCore::start`] sharing `health` with gates closed before the
    /// core existed (cluster mode: the certificate request).
    pub async fn start_with_health(
        settings: AgentSettings,
        health: Arc<AgentHealth>,
    ) -> Result<Self, AgentError> {
        let dataplane = match &settings.netns {
            Some(ns) => DataPlaneRuntime::in_netns(ns)?,
            None => DataPlaneRuntime::current(),
        };
        let tls = ReloadingTls::load(
            TlsPaths::in_dir(&settings.cert_dir),
            TlsSettings {
                allow_tls12: settings.allow_tls12,
                ..Default::default()
            },
        )
        .map_err(AgentError::Tls)?;
        let watcher = tls.spawn_watcher(Duration::from_secs(5));
        let sockets_dir = settings.state_dir.join("sockets");
        std::fs::create_dir_all(&sockets_dir).map_err(|source| AgentError::StateDir {
            path: sockets_dir.clone(),
            source,
        })?;
        let vms = match &settings.launcher_root {
            Some(root) => VmRunner::launched(root, settings.boot.clone())?,
            None => VmRunner::new(&settings.state_dir, settings.boot.clone())?,
        };
        let found = vms.reattach_all().await?;
        if !found.is_empty() {
            tracing::info!(node = %settings.node_name, vms = ?found, "reattached running VMs");
        }
        Ok(AgentCore {
            settings,
            vms,
            health,
            migration_metrics: Arc::default(),
            tls,
            sockets_dir,
            _tls_watcher: watcher,
            dataplane,
        })
    }

    /// `/proc/net/dev` of the agent's network namespace (read on the
    /// data-plane runtime, whose threads live there): bytes per interface.
    pub async fn interface_bytes(
        &self,
    ) -> Result<std::collections::BTreeMap<String, crate::metrics::migration::IfBytes>, AgentError>
    {
        let text = self
            .dataplane
            .run(async { std::fs::read_to_string("/proc/thread-self/net/dev").unwrap_or_default() })
            .await?;
        Ok(crate::metrics::migration::parse_net_dev(&text))
    }

    pub fn node_name(&self) -> &str {
        &self.settings.node_name
    }

    /// The migration IP, found in the agent's namespace; an error says why
    /// the agent is not ready (never a silent fall back to the pod network).
    pub async fn migration_ip(&self) -> Result<MigrationIp, AgentError> {
        let config = self.settings.migration_network_config();
        let pod_ip = self.settings.pod_ip;
        self.dataplane
            .run(async move { migration_ip::discover(&config, pod_ip).await })
            .await?
            .map_err(|e| match e {
                MigrationIpError::NotReady(n) => AgentError::NotReady(n),
                other => AgentError::MigrationIp(other),
            })
    }

    /// Ready = no gate closed ([`AgentHealth`]) and the migration IP found.
    pub async fn readiness(&self) -> Readiness {
        let blockers = self.health.blockers();
        if !blockers.is_empty() {
            return Readiness::NotReady(blockers.join("; "));
        }
        match self.migration_ip().await {
            Ok(ip) => Readiness::Ready(ip),
            Err(e) => Readiness::NotReady(error_chain(&e)),
        }
    }

    fn proxy_options(&self, bind_ip: Option<IpAddr>) -> ProxyOptions {
        ProxyOptions {
            bind_ip,
            handshake_failures: Some(self.migration_metrics.tls_failures()),
            ..Default::default()
        }
    }

    pub fn dataplane(&self) -> &DataPlaneRuntime {
        &self.dataplane
    }
}

pub use crate::error_chain;
