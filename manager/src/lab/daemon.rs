//! The lab's control loop, run either by the background `mignet lab daemon`
//! process or in-process by `mignet lab demo`: the network rollout, the
//! kubelet+Multus emulation, the scheduler stand-in ([`super::placement`])
//! the kubelet for launcher pods ([`super::launcher_pods`]) and for the
//! network pre-flight's probe pods ([`super::probe_pods`]), and (with
//! [`run_full`]) the migration controller (in launcher mode, as in a
//! cluster) and one real agent per agent pod, both on a tokio runtime owned
//! by this loop.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use std::sync::Arc;

use tracing::warn;

use super::in_process_agents::InProcessAgents;
use crate::agent::GuestBoot;
use crate::backend::LocalBackend;
use crate::control;

use super::agent_pods::{AgentRuntime, Kubelet};
use super::inventory::LabInventory;
use super::{
    launcher_pods, placement, plan, probe_pods, LabConfig, LabError, AGENT_DAEMONSET,
    HYPERCONVERGED, LAB_NAMESPACE,
};
use crate::network::reconcile::{self as rollout, Outcome, ReconcileError, Target};
use crate::network::ClusterNetworks;
use crate::store::Store;

/// Run until `stop` is set. Each pass reconciles the rollout, then the agent
/// pods, then the rollout again (so its condition counts the agents that
/// just came up); passes repeat until a pass writes nothing, then wait for
/// a write by anyone (CLI verbs are other processes).
pub fn run(cfg: &LabConfig, runtime: &dyn AgentRuntime, stop: &AtomicBool) -> Result<(), LabError> {
    let store = Arc::new(Store::open(cfg.store_dir())?);
    run_with_store(cfg, &store, runtime, stop)
}

/// [`run`] on a given store handle, so in-process consumers subscribed to
/// it see every change the loop makes, in order.
pub fn run_with_store(
    cfg: &LabConfig,
    store: &Arc<Store>,
    runtime: &dyn AgentRuntime,
    stop: &AtomicBool,
) -> Result<(), LabError> {
    let rollout = RolloutThread::start(store.clone(), plan::cluster_networks(), &cfg.dir)?;
    let mut kubelet = Kubelet::new(cfg, store, runtime);
    let mut launcher_pods = launcher_pods::Launchers::new(cfg, store);
    let mut probe_pods = probe_pods::ProbePods::new(cfg, store);
    while !stop.load(Ordering::SeqCst) {
        let before = store.revision()?;
        let mut again = rollout.pass();
        if let Err(e) = kubelet.sync() {
            warn!(error = %e, "agent pod sync failed");
        }
        again |= rollout.pass();
        if let Err(e) = placement::schedule(store) {
            warn!(error = %e, "scheduling launcher pods failed");
        }
        if let Err(e) = launcher_pods.sync() {
            warn!(error = %e, "launcher pod sync failed");
        }
        if let Err(e) = probe_pods.sync() {
            warn!(error = %e, "probe pod sync failed");
        }
        let after = store.revision()?;
        if after != before || again {
            continue;
        }
        // Also wakes periodically: failed pods are retried on a timer.
        store.wait_for_change(after, Duration::from_millis(500))?;
    }
    Ok(())
}

/// The lab's pre-flight: probes start in milliseconds here (no image, no
/// certificate request), so the round is short; a failed one is retried
/// after 30 s. `MIGNET_LAB_PREFLIGHT=0` turns it off.
fn lab_preflight() -> crate::network::preflight::PreflightSettings {
    crate::network::preflight::PreflightSettings {
        enabled: std::env::var("MIGNET_LAB_PREFLIGHT").map_or(true, |v| v != "0"),
        probe_deadline: Duration::from_secs(15),
        round_deadline: Duration::from_secs(30),
        retry_after: Duration::from_secs(30),
        hold_settle: crate::network::switch::HOLD_SETTLE,
    }
}

/// The lab's driver of the network rollout: [`rollout::reconcile`] over a
/// [`LocalBackend`], on a thread with a runtime of its own. The daemon loop
/// is synchronous and may itself run inside a runtime (`mignet lab daemon`
/// is called from `#[tokio::main]`), where tokio refuses to block on a
/// future or to drop a runtime; that thread does both where it may.
struct RolloutThread {
    requests: Option<std::sync::mpsc::Sender<std::sync::mpsc::Sender<PassResult>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// `Ok(None)`: there is no HyperConverged to follow.
type PassResult = Result<Option<Outcome>, ReconcileError>;

impl RolloutThread {
    fn start(
        store: Arc<Store>,
        cluster: ClusterNetworks,
        dir: &std::path::Path,
    ) -> Result<Self, LabError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| LabError::Io {
                op: "starting the tokio runtime of the network rollout for",
                path: dir.to_path_buf(),
                source,
            })?;
        let (tx, rx) = std::sync::mpsc::channel::<std::sync::mpsc::Sender<PassResult>>();
        let thread = std::thread::Builder::new()
            .name("lab-rollout".into())
            .spawn(move || {
                let backend = {
                    let _enter = rt.enter();
                    LocalBackend::new(store)
                };
                let preflight = lab_preflight();
                let memory = std::sync::Mutex::new(Default::default());
                let target = Target {
                    namespace: LAB_NAMESPACE,
                    hyperconverged: HYPERCONVERGED,
                    agent_daemonset: AGENT_DAEMONSET,
                    cluster: &cluster,
                    preflight: &preflight,
                    memory: &memory,
                    migrations_namespace: None,
                };
                for reply in rx {
                    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                        k8s_openapi::jiff::Timestamp::now(),
                    );
                    let result = rt.block_on(async {
                        match rollout::follow(&backend, &target).await? {
                            Some(followed) => rollout::reconcile(&backend, &target, &followed, now)
                                .await
                                .map(Some),
                            None => Ok(None),
                        }
                    });
                    let _ = reply.send(result);
                }
                drop(backend);
                drop(rt);
            })
            .map_err(|source| LabError::Io {
                op: "starting the network rollout thread for",
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Self {
            requests: Some(tx),
            thread: Some(thread),
        })
    }

    /// One pass; true when it should run again soon (a conflict: someone
    /// wrote in between, so the next pass decides on fresh state). Errors
    /// are logged: the next pass retries, as after any write.
    fn pass(&self) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        let sent = self.requests.as_ref().is_some_and(|r| r.send(tx).is_ok());
        match sent.then(|| rx.recv().ok()).flatten() {
            Some(Ok(Some(Outcome::RetrySoon { .. }))) => true,
            Some(Ok(_)) => false,
            Some(Err(e)) => {
                warn!(error = %e, "rollout reconcile failed");
                false
            }
            None => {
                warn!("the network rollout thread is gone");
                false
            }
        }
    }
}

impl Drop for RolloutThread {
    fn drop(&mut self) {
        self.requests.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The guest image the lab's VMs boot: `tests/guest/build.sh`'s cache, built
/// on first use when this binary runs from its checkout.
pub fn guest_boot() -> Result<GuestBoot, LabError> {
    use mignet_dataplane::qemu::lab_guest::GuestImage;
    let dir = GuestImage::cache_dir();
    let (kernel, initrd) = (dir.join("vmlinuz"), dir.join("initramfs.img"));
    if kernel.is_file() && initrd.is_file() {
        return Ok(GuestBoot::new(kernel, initrd));
    }
    let image = GuestImage::ensure().map_err(|e| {
        LabError::Teardown(format!(
            "guest image missing in {} and building it failed ({e}); run tests/setup.sh --lab",
            dir.display()
        ))
    })?;
    Ok(GuestBoot::new(image.kernel, image.initrd))
}

/// The whole lab control plane: [`run_with_store`] with the migration
/// controller and the real node agents ([`InProcessAgents`]) on a tokio
/// runtime of its own. Runs until `stop` is set; then the agents are
/// aborted (their VMs keep running until their VMIs are deleted or the lab
/// is torn down) and the controller stops. The VMs' launcher processes
/// are not this loop's children in any sense that matters: they outlive it
/// and the next loop adopts them.
pub fn run_full(cfg: &LabConfig, stop: &AtomicBool) -> Result<(), LabError> {
    let boot = guest_boot()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("lab-rt")
        .build()
        .map_err(|source| LabError::Io {
            op: "starting the tokio runtime for",
            path: cfg.dir.clone(),
            source,
        })?;
    let store = Arc::new(Store::open(cfg.store_dir())?);
    // LocalBackend spawns its change feed: it must be built inside the runtime.
    let backend = {
        let _enter = rt.enter();
        LocalBackend::new(store.clone())
    };
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    // The controller's /metrics, as the manager serves them in a cluster.
    let metrics = Arc::new(crate::metrics::Metrics::default());
    // Spawned, not block_on: this function may run inside another runtime
    // (`mignet lab daemon`). The server lives until the runtime shuts down.
    let (m, file) = (
        metrics.clone(),
        super::controller_metrics_addr_file(&cfg.dir),
    );
    rt.spawn(async move {
        match super::serve_metrics(m, file).await {
            Ok(_serving) => std::future::pending::<()>().await,
            Err(e) => warn!(error = %e, "controller /metrics not served"),
        }
    });
    let settings = control::Settings {
        namespace: None,
        hco_namespace: Some(LAB_NAMESPACE.to_owned()),
        resync: Duration::from_secs(1),
        // Where and how a VM runs is the controller's decision, as in a
        // cluster: it makes launcher pods, the lab scheduler binds them and
        // the lab kubelet runs them.
        launchers: Some(control::launcher_pod::LauncherSettings {
            image: "mignet:lab".into(),
            image_pull_policy: None,
            emulation_allowed: true,
        }),
        metrics: Some(metrics),
        ..Default::default()
    };
    let controller = rt.spawn(control::run(backend.clone(), settings, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    let agents = InProcessAgents::new(rt.handle().clone(), backend, cfg.dir.clone(), boot, Some(2));
    let result = run_with_store(cfg, &store, &agents, stop);
    drop(agents);
    let _ = stop_tx.send(true);
    match rt.block_on(controller) {
        Ok(Err(e)) => warn!(error = %e, "migration controller stopped with an error"),
        Err(e) => warn!(error = %e, "migration controller task failed"),
        Ok(Ok(())) => {}
    }
    rt.shutdown_timeout(Duration::from_secs(5));
    result
}

/// The one-daemon lock of the lab at `dir`, held for the daemon's life
/// (`<dir>/agents/daemon.lock`; `lab down` removes it with `agents/`). A
/// second daemon, say one started by hand while the first still runs, is
/// refused: two would each run a controller, a kubelet and a set of agents
/// for the same nodes.
pub fn take_daemon_lock(
    dir: &std::path::Path,
) -> Result<nix::fcntl::Flock<std::fs::File>, LabError> {
    use nix::fcntl::{Flock, FlockArg};
    let agents = dir.join("agents");
    let path = agents.join("daemon.lock");
    let io = |op: &'static str, source| LabError::Io {
        op,
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(&agents).map_err(|e| io("creating the directory of", e))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| io("opening", e))?;
    // A daemon that was just killed holds the lock until its last thread
    // has exited, a while after its process stops looking like a daemon
    // (its command line goes with its memory, first). A lock held with no
    // daemon to be seen is that, and is waited for (up to 10 s), not
    // refused: lab_faults' restart after a SIGKILL was refused this way.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut file = file;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((f, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                let pids = super::lifecycle::daemon_processes(dir);
                if !pids.is_empty() || std::time::Instant::now() >= deadline {
                    return Err(LabError::DaemonRunning {
                        dir: dir.to_path_buf(),
                        pids,
                    });
                }
                file = f;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err((_, errno)) => return Err(io("locking", std::io::Error::from(errno))),
        }
    }
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
    LabInventory::record_process(&cfg.dir, pid, "lab daemon")?;
    Ok(pid)
}
