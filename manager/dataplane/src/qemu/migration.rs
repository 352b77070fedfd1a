//! Live migration between two QEMUs over QMP.
//!
//! The order matters and was checked against QEMU 7.2:
//! 1. the destination QEMU was started with `-incoming defer` (a fresh one for
//!    every attempt: after a failed or cancelled incoming migration the
//!    destination process exits and cannot be reused);
//! 2. both ends get the same capabilities and parameters
//!    ([`MigrationSettings`]) — a mismatch (e.g. multifd on one end only)
//!    leaves the source in `setup` forever;
//! 3. `migrate-incoming` on the destination (it starts listening), then
//!    `migrate` on the source;
//! 4. `query-migrate` on the source, a few times a second, fed to the monitor
//!    ([`crate::monitor::decide`]), until it completes, fails, or the monitor
//!    aborts it with `migrate_cancel` (the source then keeps running).

use std::time::Duration;

use serde_json::{json, Value};

use super::qmp::{QmpClient, QmpError};
pub use crate::monitor::sample::{MigrationSample, MigrationStatus, RamStats};
use crate::monitor::{self, AbortReason, Decision, MonitorConfig, MonitorState};

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("{side}: {step} failed")]
    Qmp {
        side: Side,
        step: &'static str,
        #[source]
        source: QmpError,
    },
    #[error("{side}: cannot decode query-migrate reply {reply}: {detail}")]
    Decode {
        side: Side,
        reply: String,
        detail: String,
    },
    #[error("source: migration not over {after:?} after migrate_cancel (status {status:?})")]
    NotOver {
        after: Duration,
        status: MigrationStatus,
    },
}

/// Which end of a migration an error or call concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Source,
    Destination,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Destination => "destination",
        })
    }
}

/// Capabilities and parameters applied identically to both ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationSettings {
    /// `Some(n)`: multifd with `n` channels (QEMU then opens n + 1
    /// connections: the main channel plus one per multifd channel).
    /// `None`: multifd off, one connection.
    pub multifd_channels: Option<u8>,
    /// Bytes per second; 0 = unlimited. Always sent to QEMU, because QEMU's
    /// own default (128 MiB/s) must never apply silently.
    pub max_bandwidth: u64,
    /// Longest acceptable stop-and-copy pause, in milliseconds.
    pub downtime_limit_ms: u64,
}

impl Default for MigrationSettings {
    fn default() -> Self {
        MigrationSettings {
            multifd_channels: None,
            max_bandwidth: 0,
            // QEMU's own default.
            downtime_limit_ms: 300,
        }
    }
}

impl MigrationSettings {
    /// Arguments of `migrate-set-capabilities`. Every capability we rely on
    /// is set explicitly on both ends, so nothing depends on QEMU's defaults.
    pub fn capabilities_args(&self) -> Value {
        json!({ "capabilities": [
            { "capability": "multifd", "state": self.multifd_channels.is_some() },
            // MIGRATION events on the QMP stream, for logs and waiters.
            { "capability": "events", "state": true },
        ]})
    }

    /// Arguments of `migrate-set-parameters`.
    ///
    /// `max-bandwidth` 0 means "no limit" in QEMU 7.2: its rate limiter only
    /// applies when the limit is > 0, and the `qemu_direct` benchmark
    /// measured a single-connection migration with 0 at up to ~740 MiB/s,
    /// far above the 128 MiB/s default that would apply if we left it unset.
    pub fn parameters_args(&self) -> Value {
        let mut p = json!({
            "max-bandwidth": self.max_bandwidth,
            "downtime-limit": self.downtime_limit_ms,
        });
        if let Some(n) = self.multifd_channels {
            p["multifd-channels"] = json!(n);
        }
        p
    }
}

/// Applies capabilities and parameters to one end.
pub async fn configure(
    qmp: &QmpClient,
    side: Side,
    settings: &MigrationSettings,
) -> Result<(), MigrationError> {
    qmp.execute(
        "migrate-set-capabilities",
        Some(settings.capabilities_args()),
    )
    .await
    .map_err(|source| MigrationError::Qmp {
        side,
        step: "migrate-set-capabilities",
        source,
    })?;
    qmp.execute("migrate-set-parameters", Some(settings.parameters_args()))
        .await
        .map_err(|source| MigrationError::Qmp {
            side,
            step: "migrate-set-parameters",
            source,
        })?;
    Ok(())
}

/// Configures a destination started with `-incoming defer` and makes it listen
/// on `uri` (`unix:/path` or `tcp:ip:port`).
pub async fn prepare_destination(
    dest: &QmpClient,
    settings: &MigrationSettings,
    uri: &str,
) -> Result<(), MigrationError> {
    configure(dest, Side::Destination, settings).await?;
    dest.execute("migrate-incoming", Some(json!({ "uri": uri })))
        .await
        .map_err(|source| MigrationError::Qmp {
            side: Side::Destination,
            step: "migrate-incoming",
            source,
        })?;
    Ok(())
}

/// Configures the source and starts the migration to `uri`. A migration
/// QEMU still runs from an earlier attempt (its agent died mid-way) is
/// ended first ([`cancel_hard`]); QEMU refuses a new one while it lasts
/// ("There's a migration process in progress").
pub async fn start_source(
    source: &QmpClient,
    settings: &MigrationSettings,
    uri: &str,
) -> Result<(), MigrationError> {
    cancel_hard(source).await?;
    configure(source, Side::Source, settings).await?;
    let migrate = || source.execute("migrate", Some(json!({ "uri": uri })));
    let r = match migrate().await {
        // An earlier migration is over but its cleanup waits for a channel
        // thread blocked on a socket: its yank instance is still
        // registered. Yanking unblocks it; the cleanup then runs.
        Err(QmpError::Command { desc, .. }) if desc.contains("duplicate yank instance") => {
            tracing::warn!(
                "the source QEMU still cleans up an earlier migration; yanking its sockets"
            );
            // Retried below whatever the yank answered: the migrate's
            // answer is what counts.
            let _ = yank(source).await;
            let deadline = tokio::time::Instant::now() + AFTER_YANK;
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                match migrate().await {
                    Err(QmpError::Command { desc, .. })
                        if desc.contains("duplicate yank instance")
                            && tokio::time::Instant::now() < deadline => {}
                    r => break r,
                }
            }
        }
        r => r,
    };
    r.map_err(|e| MigrationError::Qmp {
        side: Side::Source,
        step: "migrate",
        source: e,
    })?;
    Ok(())
}

/// One `query-migrate`.
pub async fn query(qmp: &QmpClient, side: Side) -> Result<MigrationSample, MigrationError> {
    let v = qmp
        .execute("query-migrate", None)
        .await
        .map_err(|source| MigrationError::Qmp {
            side,
            step: "query-migrate",
            source,
        })?;
    MigrationSample::from_value(&v).map_err(|e| MigrationError::Decode {
        side,
        reply: v.to_string(),
        detail: e.to_string(),
    })
}

/// `migrate_cancel` on the source, then waits until the migration is over.
/// Returns the final sample (normally `cancelled`; `completed` if the
/// migration won the race).
///
/// Cancel can hang in `cancelling`: QEMU shuts down the main channel at once,
/// but a migration stuck in `setup` with multifd channels held open by the
/// peer (a relay whose far end never answers) only finishes cancelling once
/// those connections close. Whoever owns the transport (the agent's proxy)
/// must close this migration's connections; [`wait_over`] then confirms.
pub async fn cancel(
    source: &QmpClient,
    timeout: Duration,
) -> Result<MigrationSample, MigrationError> {
    send_cancel(source).await?;
    wait_over(source, timeout).await
}

async fn send_cancel(source: &QmpClient) -> Result<(), MigrationError> {
    source
        .execute("migrate_cancel", None)
        .await
        .map(|_| ())
        .map_err(|e| MigrationError::Qmp {
            side: Side::Source,
            step: "migrate_cancel",
            source: e,
        })
}

/// How long a cancel may take before its sockets are yanked, and how long
/// after the yank.
const CANCEL_BEFORE_YANK: Duration = Duration::from_secs(5);
const AFTER_YANK: Duration = Duration::from_secs(10);

/// Ends whatever migration the source QEMU still runs: `migrate_cancel`,
/// and when that does not settle (a channel blocked on a peer that neither
/// reads nor closes, e.g. a relay that outlived its agent), QEMU's `yank`
/// of the migration's sockets, which unblocks the channels so the cancel
/// completes. Nothing to do when QEMU runs no migration. Returns the final
/// status, or `NotOver` if even the yank did not end it.
pub async fn cancel_hard(source: &QmpClient) -> Result<MigrationStatus, MigrationError> {
    let now = query(source, Side::Source).await?;
    if now.status.is_terminal() || now.status == MigrationStatus::None {
        return Ok(now.status);
    }
    tracing::warn!(status = ?now.status, "the source QEMU still runs a migration; ending it");
    // A cancel that finds the migration just ended is not an error.
    let _ = send_cancel(source).await;
    match wait_over(source, CANCEL_BEFORE_YANK).await {
        Ok(s) => return Ok(s.status),
        Err(MigrationError::NotOver { .. }) => {}
        Err(e) => return Err(e),
    }
    yank(source).await.map_err(|e| MigrationError::Qmp {
        side: Side::Source,
        step: "yank",
        source: e,
    })?;
    wait_over(source, AFTER_YANK).await.map(|s| s.status)
}

/// QEMU's `yank` of the migration's sockets: blocked channel threads see
/// their sockets shut down and end.
async fn yank(source: &QmpClient) -> Result<Value, QmpError> {
    source
        .execute(
            "yank",
            Some(json!({ "instances": [{ "type": "migration" }] })),
        )
        .await
}

/// Polls `query-migrate` until the migration is over (completed, failed or
/// cancelled); returns that sample.
pub async fn wait_over(
    qmp: &QmpClient,
    timeout: Duration,
) -> Result<MigrationSample, MigrationError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let s = query(qmp, Side::Source).await?;
        if s.status.is_terminal() {
            return Ok(s);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(MigrationError::NotOver {
                after: timeout,
                status: s.status,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How a monitored migration ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed,
    Aborted {
        reason: AbortReason,
        message: String,
    },
    Failed {
        error: String,
    },
    /// Cancelled on request (the VMIM was deleted): `migrate_cancel` was sent.
    Cancelled,
}

/// What [`run_monitored`] saw.
#[derive(Debug, Clone)]
pub struct MigrationReport {
    pub outcome: Outcome,
    /// Every sample, with its time since `migrate` was issued.
    pub samples: Vec<(Duration, MigrationSample)>,
    /// The last sample (after the cancel, when aborted).
    pub last: MigrationSample,
    /// For an abort: whether QEMU confirmed the cancel (status `cancelled`)
    /// within [`CANCEL_WAIT`]. If not, it is stuck in `cancelling` until the
    /// transport's connections close; see [`cancel`].
    pub cancel_confirmed: bool,
    /// Wall time from `migrate` to the end (including the cancel).
    pub elapsed: Duration,
}

/// QEMU 7.2 reports `completed` a moment before it fills in `total-time` and
/// `downtime` (the status is set in `migration_completion`, the times in the
/// iteration's finish step): a sample taken in between shows both as 0.
/// Re-query briefly until they are there.
async fn settle_completed(
    source: &QmpClient,
    sample: MigrationSample,
) -> Result<MigrationSample, MigrationError> {
    let mut last = sample;
    for _ in 0..50 {
        if last.total_time_ms.unwrap_or(0) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        last = query(source, Side::Source).await?;
    }
    Ok(last)
}

/// Waits up to [`CANCEL_WAIT`] for a sent cancel to land; returns the last
/// sample and whether the migration is over.
async fn confirm_cancel(source: &QmpClient) -> Result<(MigrationSample, bool), MigrationError> {
    match wait_over(source, CANCEL_WAIT).await {
        Ok(last) => Ok((last, true)),
        Err(MigrationError::NotOver { .. }) => Ok((query(source, Side::Source).await?, false)),
        Err(e) => Err(e),
    }
}

/// How long [`run_monitored`] waits for QEMU to confirm a cancel.
pub const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Starts the migration on `source` (destination already prepared) and
/// monitors it every `interval` until it ends; aborts with `migrate_cancel`
/// when the monitor says so.
pub async fn run_monitored(
    source: &QmpClient,
    settings: &MigrationSettings,
    uri: &str,
    limits: &MonitorConfig,
    interval: Duration,
) -> Result<MigrationReport, MigrationError> {
    run_monitored_until(
        source,
        settings,
        uri,
        limits,
        interval,
        std::future::pending(),
    )
    .await
}

/// [`run_monitored`], plus a cancel request: when `cancel_requested`
/// resolves, `migrate_cancel` is sent and the outcome is
/// [`Outcome::Cancelled`] (or `Completed` if the migration won the race).
pub async fn run_monitored_until(
    source: &QmpClient,
    settings: &MigrationSettings,
    uri: &str,
    limits: &MonitorConfig,
    interval: Duration,
    cancel_requested: impl std::future::Future<Output = ()>,
) -> Result<MigrationReport, MigrationError> {
    start_source(source, settings, uri).await?;
    let start = tokio::time::Instant::now();
    let mut cancel_requested = std::pin::pin!(cancel_requested);
    let mut state = MonitorState::new(Duration::ZERO);
    let mut samples = Vec::new();
    loop {
        let sample = query(source, Side::Source).await?;
        let now = start.elapsed();
        let (next, decision) = monitor::decide(limits, &state, &sample, now);
        state = next;
        samples.push((now, sample.clone()));
        let outcome = match decision {
            Decision::Continue => {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => continue,
                    _ = &mut cancel_requested => {}
                }
                tracing::info!("migration cancel requested");
                send_cancel(source).await?;
                let (last, cancel_confirmed) = confirm_cancel(source).await?;
                let outcome = if last.status == MigrationStatus::Completed {
                    Outcome::Completed
                } else {
                    Outcome::Cancelled
                };
                return Ok(MigrationReport {
                    outcome,
                    samples,
                    last,
                    cancel_confirmed,
                    elapsed: start.elapsed(),
                });
            }
            Decision::Completed => {
                let last = settle_completed(source, sample).await?;
                return Ok(MigrationReport {
                    outcome: Outcome::Completed,
                    samples,
                    last,
                    cancel_confirmed: false,
                    elapsed: start.elapsed(),
                });
            }
            Decision::Failed { error } => Outcome::Failed { error },
            Decision::Abort { reason, message } => {
                tracing::warn!(%reason, %message, "aborting migration");
                send_cancel(source).await?;
                let (last, cancel_confirmed) = confirm_cancel(source).await?;
                let outcome = if last.status == MigrationStatus::Completed {
                    // The migration finished before the cancel landed.
                    Outcome::Completed
                } else {
                    Outcome::Aborted { reason, message }
                };
                return Ok(MigrationReport {
                    outcome,
                    samples,
                    last,
                    cancel_confirmed,
                    elapsed: start.elapsed(),
                });
            }
        };
        return Ok(MigrationReport {
            outcome,
            samples,
            last: sample,
            cancel_confirmed: false,
            elapsed: start.elapsed(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_always_carry_max_bandwidth() {
        let s = MigrationSettings::default();
        let p = s.parameters_args();
        assert_eq!(p["max-bandwidth"], 0);
        assert_eq!(p["downtime-limit"], 300);
        assert!(p.get("multifd-channels").is_none());
        let s = MigrationSettings {
            multifd_channels: Some(4),
            max_bandwidth: 64 << 20,
            downtime_limit_ms: 500,
        };
        let p = s.parameters_args();
        assert_eq!(p["max-bandwidth"], 64u64 << 20);
        assert_eq!(p["multifd-channels"], 4);
        let c = s.capabilities_args();
        assert_eq!(
            c["capabilities"][0],
            json!({"capability": "multifd", "state": true})
        );
        let c = MigrationSettings::default().capabilities_args();
        assert_eq!(c["capabilities"][0]["state"], false);
    }
}
