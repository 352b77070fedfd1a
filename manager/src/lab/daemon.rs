//! The lab's control loop (rollout + kubelet), run either by the background
//! `mignet lab daemon` process or in-process by `mignet lab demo`.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::warn;

use super::kubelet::{AgentRuntime, Kubelet};
use super::state::LabState;
use super::{plan, rollout, LabConfig, LabError};
use crate::store::Store;

/// Run until `stop` is set. Each pass reconciles the rollout, then the agent
/// pods, then the rollout again (so its condition counts the agents that
/// just came up); passes repeat until a pass writes nothing, then wait for
/// a write by anyone (CLI verbs are other processes).
pub fn run(cfg: &LabConfig, runtime: &dyn AgentRuntime, stop: &AtomicBool) -> Result<(), LabError> {
    let store = Store::open(cfg.store_dir())?;
    run_with_store(cfg, &store, runtime, stop)
}

/// [`run`] on a given store handle, so in-process consumers subscribed to
/// it see every change the loop makes, in order.
pub fn run_with_store(
    cfg: &LabConfig,
    store: &Store,
    runtime: &dyn AgentRuntime,
    stop: &AtomicBool,
) -> Result<(), LabError> {
    let cluster = plan::cluster_networks();
    let mut kubelet = Kubelet::new(cfg, store, runtime);
    while !stop.load(Ordering::SeqCst) {
        let before = store.revision()?;
        if let Err(e) = rollout::reconcile(store, &cluster) {
            warn!(error = %e, "rollout reconcile failed");
        }
        if let Err(e) = kubelet.sync() {
            warn!(error = %e, "agent pod sync failed");
        }
        if let Err(e) = rollout::reconcile(store, &cluster) {
            warn!(error = %e, "rollout reconcile failed");
        }
        let after = store.revision()?;
        if after != before {
            continue;
        }
        // Also wakes periodically: failed pods are retried on a timer.
        store.wait_for_change(after, Duration::from_millis(500))?;
    }
    Ok(())
}

/// Start `mignet lab daemon` in the background (own process group, so a
/// terminal's Ctrl-C does not reach it), logging to `daemon.log`, and record
/// its pid for `lab down`.
pub fn spawn(cfg: &LabConfig) -> Result<i32, LabError> {
    let exe = std::env::current_exe().map_err(|source| LabError::Io {
        op: "locating the mignet binary",
        path: "/proc/self/exe".into(),
        source,
    })?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(cfg.log_file())
        .map_err(|source| LabError::Io {
            op: "opening",
            path: cfg.log_file(),
            source,
        })?;
    let log2 = log.try_clone().map_err(|source| LabError::Io {
        op: "opening",
        path: cfg.log_file(),
        source,
    })?;
    use std::os::unix::process::CommandExt;
    let child = Command::new(&exe)
        .args(["lab", "daemon"])
        .env("MIGNET_LAB_DIR", &cfg.dir)
        // The log is a file: no terminal colour codes in it.
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .process_group(0)
        .spawn()
        .map_err(|source| LabError::Spawn {
            command: format!("{} lab daemon", exe.display()),
            source,
        })?;
    let pid = child.id() as i32;
    LabState::record_process(&cfg.dir, pid, "lab daemon")?;
    Ok(pid)
}
