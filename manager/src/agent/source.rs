//! Source side of one migration: a unix socket per stream for QEMU to connect
//! to, one mutual-TLS connection to the target agent per QEMU connection
//! (main channel and every multifd channel), QEMU `migrate` to that socket,
//! and the dataplane monitor (progress timeout, completion budget, setup
//! timeout) sampling `query-migrate` until the end.
//!
//! The VM stays untouched unless the migration completed: on abort, failure
//! or cancel QEMU returns the source to running (`migrate_cancel`) and we
//! report why.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mignet_dataplane::migration_ip::Origin;
use mignet_dataplane::proxy::{
    CountersSnapshot, RateLimit, SourceEndpoints, RELAY_LINGER, STREAM_MEMORY,
};
use mignet_dataplane::qemu::migration::{self, Outcome, Side};

use crate::metrics::migration::{AgentMigrations, RunningMigration};

use super::params::MigrationParams;
use super::{AgentCore, AgentError};

/// The agent pod's own interface: where the stream goes without a
/// migration network.
const POD_INTERFACE: &str = "eth0";

/// Drops a migration's gauges when it ends, however `migrate` returns.
struct EndGauges<'a>(&'a AgentMigrations, &'a str);

impl Drop for EndGauges<'_> {
    fn drop(&mut self) {
        self.0.end(self.1);
    }
}

/// Where the target listens, as published in the VMI status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetAddress {
    pub ip: IpAddr,
    /// Listener port -> stream key.
    pub port_map: BTreeMap<String, u16>,
}

impl TargetAddress {
    /// From `targetNodeAddress` (`ip:port`, IPv6 in brackets) and the port map;
    /// an empty map means the address's port carries the memory stream.
    pub fn parse(address: &str, port_map: &BTreeMap<String, u16>) -> Result<Self, AgentError> {
        let sa: SocketAddr = address.parse().map_err(|_| AgentError::TargetAddress {
            address: address.to_string(),
        })?;
        let mut map = port_map.clone();
        if map.is_empty() {
            map.insert(sa.port().to_string(), STREAM_MEMORY);
        }
        Ok(TargetAddress {
            ip: sa.ip(),
            port_map: map,
        })
    }
}

/// Progress of a running migration, published every sample interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub elapsed: Duration,
    /// Plaintext bytes carried by this migration's proxy so far.
    pub bytes: CountersSnapshot,
    /// QEMU's view (`query-migrate` `ram`), when a sample was available.
    pub transferred: u64,
    pub remaining: u64,
    pub total: u64,
}

/// How a migration ended, for the status writer.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceResult {
    pub outcome: Outcome,
    /// Bytes through this migration's proxy (the per-migration counter).
    pub bytes: CountersSnapshot,
    /// QEMU's `ram.transferred`.
    pub transferred: u64,
    pub total_time: Duration,
    pub downtime: Duration,
    pub elapsed: Duration,
    /// For an abort or cancel: QEMU confirmed `cancelled`.
    pub cancel_confirmed: bool,
}

impl SourceResult {
    pub fn completed(&self) -> bool {
        self.outcome == Outcome::Completed
    }

    /// One line for `failureReason` (None when completed).
    pub fn failure_reason(&self) -> Option<String> {
        match &self.outcome {
            Outcome::Completed => None,
            Outcome::Aborted { reason, message } => Some(format!("{reason}: {message}")),
            Outcome::Failed { error } => Some(format!("MigrationFailed: {error}")),
            Outcome::Cancelled => Some("Cancelled: the migration was cancelled on request".into()),
        }
    }

    pub fn mib_s(&self) -> f64 {
        if self.total_time.is_zero() {
            0.0
        } else {
            self.transferred as f64 / f64::from(1 << 20) / self.total_time.as_secs_f64()
        }
    }
}

impl AgentCore {
    /// Migrate the managed VM `key` to `target`. `cancel` resolving asks for
    /// a cancel (the VMIM was deleted); `progress` is called every sample
    /// interval with the bytes so far. The source VM is left as QEMU leaves it
    /// (paused in `postmigrate` after success: call
    /// [`VmRunner::stop`](super::vm::VmRunner::stop) once the target runs it).
    pub async fn migrate(
        &self,
        key: &str,
        uid: &str,
        target: &TargetAddress,
        params: &MigrationParams,
        cancel: impl std::future::Future<Output = ()>,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> Result<SourceResult, AgentError> {
        let vm = self.vms.get(key).ok_or_else(|| AgentError::VmGone {
            key: key.to_string(),
        })?;
        let migration_ip = self.migration_ip().await?;
        let bind_ip = migration_ip.ip;
        let tls = self.tls.clone();
        let mut opts = self.proxy_options(Some(bind_ip));
        opts.rate_limit = params.proxy_rate_limit().map(RateLimit::new);
        // QEMU connects to the proxy's unix socket from where it runs: in a
        // launcher pod that is the VM's run directory (the one path both pods
        // mount), with a short name so the path fits a socket address.
        let (dir, uid_s) = if self.vms.in_launchers() {
            (vm.run_dir.clone(), uid.chars().take(8).collect::<String>())
        } else {
            (self.sockets_dir.clone(), uid.to_string())
        };
        let target_c = target.clone();
        // Outgoing connections are made by tasks of the data-plane runtime,
        // i.e. inside the agent's namespace, bound to the migration IP.
        let endpoints = self
            .dataplane
            .run(async move {
                SourceEndpoints::start(
                    &dir,
                    &uid_s,
                    target_c.ip,
                    &target_c.port_map,
                    &[STREAM_MEMORY],
                    tls,
                    opts,
                )
            })
            .await?
            .map_err(|source| AgentError::Endpoints {
                migration: uid.to_string(),
                source,
            })?;
        let socket = endpoints.socket(STREAM_MEMORY).cloned().unwrap_or_default();
        let counters = endpoints.counters().clone();
        let limits = params.monitor(vm.request.memory_bytes());
        let settings = params.settings();
        tracing::info!(vm = key, migration = uid, target = ?target, ?settings, "migrating");
        let started = tokio::time::Instant::now();
        let (namespace, name) = key.split_once('/').unwrap_or(("", key));
        self.migration_metrics.update(
            uid,
            RunningMigration {
                namespace: namespace.to_string(),
                name: name.to_string(),
                bandwidth_cap: params.bandwidth_bytes_per_sec,
                stream_interface: match &migration_ip.origin {
                    Origin::Interface(i) => i.clone(),
                    Origin::PodNetwork => POD_INTERFACE.to_string(),
                },
                interfaces_at_start: self.interface_bytes().await.unwrap_or_default(),
                ..Default::default()
            },
        );
        // Whatever way this function returns, the migration's gauges go.
        let _gauges = EndGauges(&self.migration_metrics, uid);
        let uri = format!("unix:{}", socket.display());
        let run = migration::run_monitored_until(
            &vm.qmp,
            &settings,
            &uri,
            &limits,
            params.sample_interval,
            cancel,
        );
        let mut run = std::pin::pin!(run);
        let mut tick =
            tokio::time::interval(params.sample_interval.max(Duration::from_millis(100)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let report = loop {
            tokio::select! {
                r = &mut run => break r,
                _ = tick.tick() => {
                    // A second QMP request while `run` waits between its own
                    // samples; QMP replies are matched by id.
                    let ram = migration::query(&vm.qmp, Side::Source).await.ok().and_then(|s| s.ram);
                    // The proxy's count first: the interfaces' then include
                    // at least those bytes, plus framing.
                    let stream = counters.snapshot();
                    let interfaces = self.interface_bytes().await.unwrap_or_default();
                    self.migration_metrics.modify(uid, |m| {
                        m.ram = ram.clone().or(m.ram.take());
                        m.stream = stream;
                        m.interfaces_now = interfaces;
                    });
                    progress(Progress {
                        elapsed: started.elapsed(),
                        bytes: counters.snapshot(),
                        transferred: ram.as_ref().map_or(0, |r| r.transferred),
                        remaining: ram.as_ref().map_or(0, |r| r.remaining),
                        total: ram.as_ref().map_or(0, |r| r.total),
                    });
                }
            }
        };
        // QEMU says "completed" while its last bytes can still be in the
        // relays: wait for them to reach the target before reporting. Any
        // other end closes the relays at once (a cancelled migration can
        // hang in `cancelling` until its connections close, see
        // `migration::cancel`).
        if matches!(&report, Ok(r) if r.outcome == Outcome::Completed) {
            if !endpoints.finish(RELAY_LINGER).await {
                tracing::warn!(vm = %key, "relays still open {RELAY_LINGER:?} after QEMU completed; closed");
            }
        } else {
            drop(endpoints);
        }
        let bytes = counters.snapshot();
        let report = report.map_err(|source| AgentError::Migration {
            key: key.to_string(),
            source,
        })?;
        let last = &report.last;
        let result = SourceResult {
            outcome: report.outcome.clone(),
            bytes,
            transferred: last.ram.as_ref().map_or(0, |r| r.transferred),
            total_time: Duration::from_millis(last.total_time_ms.unwrap_or(0)),
            downtime: Duration::from_millis(last.downtime_ms.unwrap_or(0)),
            elapsed: report.elapsed,
            cancel_confirmed: report.cancel_confirmed,
        };
        progress(Progress {
            elapsed: started.elapsed(),
            bytes,
            transferred: result.transferred,
            remaining: last.ram.as_ref().map_or(0, |r| r.remaining),
            total: last.ram.as_ref().map_or(0, |r| r.total),
        });
        tracing::info!(vm = key, migration = uid, outcome = ?result.outcome, bytes = bytes.to_target, "migration over");
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mignet_dataplane::monitor::AbortReason;

    #[test]
    fn target_address_parses_v4_v6_and_fills_port_map() {
        let t = TargetAddress::parse("10.200.5.2:4444", &BTreeMap::new()).unwrap();
        assert_eq!(t.ip, "10.200.5.2".parse::<IpAddr>().unwrap());
        assert_eq!(t.port_map.get("4444"), Some(&STREAM_MEMORY));
        let t = TargetAddress::parse("[fd00::2]:5000", &BTreeMap::new()).unwrap();
        assert!(t.ip.is_ipv6());
        assert!(TargetAddress::parse("10.200.5.2", &BTreeMap::new()).is_err());
    }

    #[test]
    fn failure_reasons_name_the_rule() {
        let r = SourceResult {
            outcome: Outcome::Aborted {
                reason: AbortReason::ProgressTimeout,
                message: "no progress for 3s".into(),
            },
            bytes: CountersSnapshot::default(),
            transferred: 0,
            total_time: Duration::ZERO,
            downtime: Duration::ZERO,
            elapsed: Duration::ZERO,
            cancel_confirmed: true,
        };
        assert!(r.failure_reason().unwrap().starts_with("ProgressTimeout"));
        assert!(!r.completed());
    }
}
