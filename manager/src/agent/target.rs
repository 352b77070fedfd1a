//! Target side of one migration: a fresh destination QEMU waiting with
//! `-incoming defer`, listening on a unix socket in its run directory; a TLS
//! listener on the migration IP only, relaying each authenticated connection
//! to that socket. The published `ip:port` goes into
//! `status.migrationState.targetNodeAddress`.
//!
//! [`PreparedTarget`] is a guard: dropped before [`PreparedTarget::commit`],
//! it closes the listener and every connection and kills the destination
//! QEMU (a destination cannot be reused after a failed attempt anyway). So a
//! target agent that dies mid-migration cuts the stream, and the source sees
//! a failed migration while its VM keeps running.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mignet_dataplane::proxy::{CountersSnapshot, TargetEndpoints, RELAY_LINGER, STREAM_MEMORY};
use mignet_dataplane::qemu::migration;
use mignet_dataplane::qemu::{QmpClient, VmProcess};

use super::params::MigrationParams;
use super::vm::{VmInfo, VmRequest};
use super::{AgentCore, AgentError};

/// A destination ready to receive.
#[derive(Debug)]
pub struct PreparedTarget {
    /// `ip:port` of the memory stream's listener (IPv6 in brackets).
    pub address: String,
    /// Listener port -> stream key, KubeVirt's `targetDirectMigrationNodePorts`.
    pub port_map: BTreeMap<String, u16>,
    pub request: VmRequest,
    pub migration_uid: String,
    endpoints: Option<TargetEndpoints>,
    process: Option<VmProcess>,
    /// The destination QEMU runs in a launcher pod (the run directory is
    /// the launcher's): never killed or removed here, its pod is.
    launched: bool,
    qmp: Arc<QmpClient>,
    run_dir: PathBuf,
}

/// How long a target launcher may take to have its QEMU listening once its
/// pod runs (image already on the node; QEMU starts in well under a second).
const LAUNCHER_START_TIMEOUT: Duration = Duration::from_secs(60);

/// How the incoming side ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncomingResult {
    /// The guest runs here now.
    Running,
    /// The destination QEMU exited or reported failure (the source decides
    /// what happened; its VM keeps running on a failed migration).
    Failed { reason: String },
}

impl AgentCore {
    /// Prepare to receive `req` for migration `uid`.
    pub async fn prepare_target(
        &self,
        req: &VmRequest,
        uid: &str,
        params: &MigrationParams,
    ) -> Result<PreparedTarget, AgentError> {
        let ip = self.migration_ip().await?.ip;
        let run_dir = self.vms.new_run_dir(&req.key, "t");
        let spec = self.vms.spec(req, &run_dir, true);
        let process = VmProcess::start(&spec)
            .await
            .map_err(|source| AgentError::Vm {
                key: req.key.clone(),
                source,
            })?;
        let qmp_err = |source| AgentError::Qmp {
            key: req.key.clone(),
            source,
        };
        let qmp = QmpClient::connect_retry(process.qmp_socket(), Duration::from_secs(10))
            .await
            .map_err(qmp_err)?;
        self.listen_for(req, uid, params, ip, Some(process), qmp, run_dir)
            .await
    }

    /// Prepare to receive `req` into the destination QEMU that a target
    /// launcher pod runs in `run_dir` (launcher mode), waiting for it to
    /// come up.
    pub async fn prepare_launched_target(
        &self,
        req: &VmRequest,
        uid: &str,
        params: &MigrationParams,
        run_dir: PathBuf,
    ) -> Result<PreparedTarget, AgentError> {
        let ip = self.migration_ip().await?.ip;
        let deadline = tokio::time::Instant::now() + LAUNCHER_START_TIMEOUT;
        // The launcher writes its status once QEMU's sockets exist.
        while !(crate::launcher::launcher_alive(&run_dir)
            && crate::launcher::read_status(&run_dir).is_some())
        {
            if tokio::time::Instant::now() >= deadline {
                return Err(AgentError::LauncherNotUp {
                    key: req.key.clone(),
                    run_dir,
                    waited: LAUNCHER_START_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let qmp = QmpClient::connect_retry(&run_dir.join("qmp.sock"), Duration::from_secs(10))
            .await
            .map_err(|source| AgentError::Qmp {
                key: req.key.clone(),
                source,
            })?;
        self.listen_for(req, uid, params, ip, None, qmp, run_dir)
            .await
    }

    /// The destination QEMU (`qmp`) listens on a unix socket in `run_dir`;
    /// the TLS listener on the migration IP relays to it.
    #[allow(clippy::too_many_arguments)]
    async fn listen_for(
        &self,
        req: &VmRequest,
        uid: &str,
        params: &MigrationParams,
        ip: std::net::IpAddr,
        process: Option<VmProcess>,
        qmp: QmpClient,
        run_dir: PathBuf,
    ) -> Result<PreparedTarget, AgentError> {
        let launched = process.is_none();
        let incoming = run_dir.join("incoming.sock");
        migration::prepare_destination(
            &qmp,
            &params.settings(),
            &format!("unix:{}", incoming.display()),
        )
        .await
        .map_err(|source| AgentError::Migration {
            key: req.key.clone(),
            source,
        })?;
        let tls = self.tls.clone();
        let opts = self.proxy_options(None);
        // The listener must be created inside the agent's namespace.
        let endpoints = self
            .dataplane
            .run(async move { TargetEndpoints::start(ip, &[(STREAM_MEMORY, incoming)], tls, opts) })
            .await?
            .map_err(|source| AgentError::Endpoints {
                migration: uid.to_string(),
                source,
            })?;
        let address = endpoints
            .target_node_address()
            .ok_or_else(|| AgentError::Endpoints {
                migration: uid.to_string(),
                source: mignet_dataplane::proxy::EndpointError::NoPortForStream {
                    key: STREAM_MEMORY,
                },
            })?;
        tracing::info!(vm = %req.key, migration = uid, %address, "target prepared");
        Ok(PreparedTarget {
            address,
            port_map: endpoints.port_map(),
            request: req.clone(),
            migration_uid: uid.to_string(),
            endpoints: Some(endpoints),
            process,
            launched,
            qmp: Arc::new(qmp),
            run_dir,
        })
    }
}

impl PreparedTarget {
    /// Bytes and connections this target has carried so far.
    pub fn counters(&self) -> CountersSnapshot {
        self.endpoints
            .as_ref()
            .map(|e| e.counters().snapshot())
            .unwrap_or_default()
    }

    pub fn run_dir(&self) -> &std::path::Path {
        &self.run_dir
    }

    pub fn pid(&self) -> Option<i32> {
        self.process.as_ref().map(VmProcess::pid)
    }

    /// Wait until the incoming migration is over: the guest runs here, or the
    /// destination QEMU is gone / failed. `timeout` bounds the wait.
    pub async fn wait_incoming(&self, timeout: Duration) -> IncomingResult {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let alive = self.alive();
            if !alive {
                return IncomingResult::Failed {
                    reason: "destination QEMU exited".into(),
                };
            }
            match self.qmp.run_state().await {
                Ok(s) if s == "running" => return IncomingResult::Running,
                Ok(s) if s == "inmigrate" || s == "prelaunch" || s == "paused" => {}
                Ok(s) => {
                    return IncomingResult::Failed {
                        reason: format!("destination in state {s}"),
                    }
                }
                // QMP gone: QEMU is exiting after a failed incoming stream.
                Err(e) => {
                    if !self.alive() {
                        return IncomingResult::Failed {
                            reason: format!("destination QEMU exited ({e})"),
                        };
                    }
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return IncomingResult::Failed {
                    reason: format!("incoming migration not finished within {timeout:?}"),
                };
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn alive(&self) -> bool {
        if self.launched {
            crate::launcher::launcher_alive(&self.run_dir)
        } else {
            self.process.as_ref().is_some_and(VmProcess::is_alive)
        }
    }

    /// The guest runs here: hand the QEMU to the runner (it now outlives the
    /// agent like any VM) and close the listener. Must run inside a tokio
    /// runtime: the connections get `RELAY_LINGER` to end on their own.
    pub fn commit(mut self, core: &AgentCore) -> Result<VmInfo, AgentError> {
        if self.launched {
            if let Some(endpoints) = self.endpoints.take() {
                endpoints.linger(RELAY_LINGER);
            }
            return core.vms.adopt_launched(
                self.request.clone(),
                self.run_dir.clone(),
                self.qmp.clone(),
            );
        }
        let process = self.process.take().ok_or_else(|| AgentError::VmGone {
            key: self.request.key.clone(),
        })?;
        if let Some(endpoints) = self.endpoints.take() {
            endpoints.linger(RELAY_LINGER);
        }
        core.vms
            .adopt_with_qmp(self.request.clone(), process, self.qmp.clone())
    }
}

impl Drop for PreparedTarget {
    fn drop(&mut self) {
        // Listener and connections first, then the destination QEMU (killed by
        // its guard), then its directory.
        self.endpoints = None;
        if let Some(p) = self.process.take() {
            drop(p);
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
    }
}
