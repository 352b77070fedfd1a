//! The agent loop: each pass observes its node's VMIs and VMIMs
//! ([`super::observe`], by label), asks [`super::decide`] what this node
//! must do, and carries the actions out, following the controller <-> agent
//! protocol documented in [`crate::backend`].
//!
//! Level-triggered like the controller: on every change (or a tick) the
//! pass decides from scratch. The work that takes long runs in tasks the
//! loop owns:
//! - target task: PreparingTarget, prepare, publish targetNodeAddress,
//!   TargetReady; keep the destination until the stream ends;
//! - source task: Running, migrate, progress annotation, then completed /
//!   failed (+ nodeName = target on success, one status write) and
//!   Succeeded / Failed.
//!
//! A finished task's migration is remembered so a stale read cannot start
//! it twice.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff;
use kube::ResourceExt;
use mignet_policy::Backoff;
use tokio::task::JoinHandle;

use super::decide::{self, phase_of, Local, MigrationAction, SourceView, VmAction};
use super::health::{Gate, Warning};
use super::params::MigrationParams;
use super::source::{Progress, TargetAddress};
use super::target::IncomingResult;
use super::vm::VmRequest;
use super::{error_chain, AgentCore, AgentError, AgentSettings};
use crate::api::{
    HyperConverged, MigrationAbortStatus, MigrationPhase, VirtualMachineInstance,
    VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationState, VmiPhase,
};
use crate::backend::protocol::{self, enter_phase};
use crate::backend::{modify, modify_status, Backend, BackendError};
use crate::config::{config_from_hyperconvergeds, ConfigError, EffectiveMigrationConfig};

/// How often the loop re-reads without a change signal.
const RESYNC: Duration = Duration::from_secs(1);

/// Errors of the loop itself (per-migration failures are recorded in the
/// objects, not returned).
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("starting the agent")]
    Start(#[source] AgentError),
}

/// Aborts its task when dropped.
struct Owned(JoinHandle<()>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct SourceTask {
    key: String,
    task: Owned,
    cancel: Option<tokio::sync::oneshot::Sender<()>>,
}

struct TargetTask {
    key: String,
    task: Owned,
}

#[derive(Default)]
struct LoopState {
    sources: HashMap<String, SourceTask>,
    targets: HashMap<String, TargetTask>,
    /// Migrations whose task has finished (uids).
    done: HashSet<String>,
}

impl LoopState {
    fn reap(&mut self) {
        let finished: Vec<String> = self
            .sources
            .iter()
            .filter(|(_, t)| t.task.0.is_finished())
            .map(|(u, _)| u.clone())
            .collect();
        for u in finished {
            self.sources.remove(&u);
            self.done.insert(u);
        }
        let finished: Vec<String> = self
            .targets
            .iter()
            .filter(|(_, t)| t.task.0.is_finished())
            .map(|(u, _)| u.clone())
            .collect();
        for u in finished {
            self.targets.remove(&u);
            self.done.insert(u);
        }
    }

    /// What the decision sees of the tasks, with the VMs `core` holds now.
    fn local(&self, core: &AgentCore) -> Local {
        Local {
            vms: core.vms.keys().into_iter().collect(),
            sources: self
                .sources
                .iter()
                .map(|(uid, t)| {
                    let view = SourceView {
                        key: t.key.clone(),
                        cancellable: t.cancel.is_some(),
                    };
                    (uid.clone(), view)
                })
                .collect(),
            targets: self
                .targets
                .iter()
                .map(|(uid, t)| (uid.clone(), t.key.clone()))
                .collect(),
            done: self.done.iter().cloned().collect(),
        }
    }
}

/// Run the agent for `settings.node_name` until `shutdown` resolves.
pub async fn run<B: Backend>(
    backend: B,
    settings: AgentSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), LoopError> {
    let core = Arc::new(AgentCore::start(settings).await.map_err(LoopError::Start)?);
    run_with_core(backend, core, shutdown).await;
    Ok(())
}

/// [`run`] with an agent core the caller made (and may inspect).
pub async fn run_with_core<B: Backend>(
    backend: B,
    core: Arc<AgentCore>,
    shutdown: impl Future<Output = ()>,
) {
    let mut state = LoopState::default();
    let mut changes = backend.changes();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        state.reap();
        if let Err(e) = pass(&backend, &core, &mut state).await {
            if e.is_retryable() {
                tracing::debug!(error = %e, "agent pass lost a race; retrying");
            } else {
                tracing::warn!(error = %error_chain(&e), "agent pass failed");
            }
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = changes.changed() => {}
            _ = tokio::time::sleep(RESYNC) => {}
        }
    }
    // In-flight migrations get the grace period to end on their own (they
    // record their outcome themselves); then dropping the tasks cuts the
    // streams: a source migration fails (its VM keeps running), a prepared
    // destination is killed.
    let grace = core.settings.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    while !(state.sources.values().all(|t| t.task.0.is_finished())
        && state.targets.values().all(|t| t.task.0.is_finished()))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::info!(node = %core.node_name(), "agent stopping");
}

fn now() -> Time {
    let t = jiff::Timestamp::now();
    Time(jiff::Timestamp::from_second(t.as_second()).unwrap_or(t))
}

/// The migration config, read fresh each pass. A failed read (forbidden,
/// API down) is an error, never the defaults in disguise: the caller closes
/// the [`Gate::MigrationConfig`] gate and starts no migration until the
/// config is readable. An invalid config resolves exactly as in the
/// controller ([`config_from_hyperconvergeds`]: the defaults, the error
/// beside them), so both sides act on the same limits and parameters.
async fn effective_config<B: Backend>(
    backend: &B,
) -> Result<(EffectiveMigrationConfig, Option<ConfigError>), BackendError> {
    let hcos: Vec<HyperConverged> = backend.list(None).await?;
    Ok(config_from_hyperconvergeds(&hcos))
}

/// The per-migration parameters for this pass, recording the outcome in
/// the agent's health: `None` (gate closed with the reason) when the config
/// cannot be read.
async fn pass_params<B: Backend>(backend: &B, core: &AgentCore) -> Option<MigrationParams> {
    match effective_config(backend).await {
        Ok((cfg, invalid)) => {
            if core.health.clear(Gate::MigrationConfig) {
                tracing::info!("migration config readable again");
            }
            let warning = invalid.map(|e| {
                format!(
                    "invalid liveMigrationConfig, using the defaults as the controller does: {e}"
                )
            });
            if core
                .health
                .warn(Warning::InvalidMigrationConfig, warning.clone())
            {
                if let Some(w) = &warning {
                    tracing::warn!("{w}");
                }
            }
            Some(MigrationParams::from_config(
                &cfg,
                core.settings.multifd_channels,
            ))
        }
        Err(e) => {
            let reason = format!(
                "cannot read the migration config (HyperConverged): {}",
                error_chain(&e)
            );
            if core.health.block(Gate::MigrationConfig, reason.clone()) {
                tracing::warn!(%reason, "not starting migrations until the config is readable");
            }
            None
        }
    }
}

/// The objects one pass decides from.
struct Observed {
    vmis: Vec<VirtualMachineInstance>,
    vmims: Vec<VirtualMachineInstanceMigration>,
}

/// Read what `node` may act on: its VMIs and migrations, selected by label,
/// plus the VMIs of the VMs it holds (`local`), read by name
/// ([`super::observe`]).
async fn observe<B: Backend>(
    backend: &B,
    node: &str,
    local: &[String],
) -> Result<Observed, BackendError> {
    let (vmis, vmims) = super::observe::observe(backend, node, local).await?;
    Ok(Observed { vmis, vmims })
}

/// One pass: observe, decide and act on the VMs, then on the migrations
/// (decided with the VMs the first step left running).
async fn pass<B: Backend>(
    backend: &B,
    core: &Arc<AgentCore>,
    state: &mut LoopState,
) -> Result<(), BackendError> {
    let me = core.node_name().to_string();
    let seen = observe(backend, &me, &core.vms.keys()).await?;
    // Before deciding: a VM whose launcher ended is no longer held, so the
    // VMI's current launcher can be attached.
    for key in core.vms.forget_dead() {
        tracing::info!(vm = %key, "the VM's launcher has ended");
    }
    for action in decide::decide_vms(&seen.vmis, &me, &state.local(core)) {
        act_on_vm(backend, core, action).await?;
    }
    let params = pass_params(backend, core).await;
    let actions = decide::decide_migrations(
        &seen.vmis,
        &seen.vmims,
        &me,
        &state.local(core),
        params.as_ref(),
    );
    for (m, action) in actions {
        act_on_migration(backend, core, state, m, action).await?;
    }
    Ok(())
}

async fn act_on_vm<B: Backend>(
    backend: &B,
    core: &AgentCore,
    action: VmAction,
) -> Result<(), BackendError> {
    match action {
        VmAction::Start {
            namespace,
            name,
            request,
            scheduled,
        } => {
            let key = &request.key;
            let started = if core.vms.in_launchers() {
                // The VM's launcher pod runs QEMU; attach once it is up.
                match core.vms.attach(key).await {
                    Ok(Some(info)) => Ok(info),
                    Ok(None) => return Ok(()),
                    Err(e) => Err(e),
                }
            } else {
                core.vms.start(&request).await
            };
            match started {
                Ok(info) => {
                    tracing::info!(vm = %key, pid = info.pid, "VM started");
                    if scheduled {
                        modify_status(
                            backend,
                            &namespace,
                            &name,
                            |v: &mut VirtualMachineInstance| {
                                let s = v.status.get_or_insert_with(Default::default);
                                let change = s.phase != Some(VmiPhase::Running);
                                s.phase = Some(VmiPhase::Running);
                                change
                            },
                        )
                        .await?;
                    }
                }
                Err(e) => tracing::warn!(vm = %key, error = %error_chain(&e), "cannot start VM"),
            }
        }
        VmAction::Stop { key } => {
            tracing::info!(vm = %key, "VMI gone or moved away; stopping its VM");
            if let Err(e) = core.vms.stop(&key) {
                tracing::warn!(vm = %key, error = %error_chain(&e), "cannot stop VM");
            }
        }
    }
    Ok(())
}

async fn act_on_migration<B: Backend>(
    backend: &B,
    core: &Arc<AgentCore>,
    state: &mut LoopState,
    m: &VirtualMachineInstanceMigration,
    action: MigrationAction,
) -> Result<(), BackendError> {
    use MigrationAction as A;
    let uid = m.uid().unwrap_or_default();
    match action {
        A::TearDownTarget { .. } => {
            state.targets.remove(&uid);
        }
        A::CancelSource { .. } => {
            if let Some(c) = state.sources.get_mut(&uid).and_then(|t| t.cancel.take()) {
                tracing::info!(migration = %uid, "abort requested; cancelling");
                let _ = c.send(());
            }
        }
        A::RecordAbortBeforeStart { .. } => {
            record_end(backend, m, &uid, End::AbortedBeforeStart).await?;
            state.done.insert(uid);
        }
        A::StartTarget {
            request,
            from_scheduled,
            namespace,
            target_pod,
            params,
            ..
        } => {
            if from_scheduled
                && !advance(
                    backend,
                    m,
                    MigrationPhase::Scheduled,
                    MigrationPhase::PreparingTarget,
                )
                .await?
            {
                return Ok(());
            }
            // Launcher mode: the target pod's QEMU, found by its name.
            // Under this agent's launcher root (the lab maps the hostPath to
            // a directory per node).
            let launcher_dir = core.vms.in_launchers().then(|| {
                let dir = crate::launcher::run_dir_for(&namespace, &target_pod);
                core.vms.vms_dir().join(dir.file_name().unwrap_or_default())
            });
            let key = request.key.clone();
            let task = tokio::spawn(target_task(
                backend.clone(),
                core.clone(),
                m.clone(),
                request,
                params,
                launcher_dir,
            ));
            state.targets.insert(
                uid,
                TargetTask {
                    key,
                    task: Owned(task),
                },
            );
        }
        A::StartSource {
            key,
            state: ms,
            params,
            ..
        } => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(source_task(
                backend.clone(),
                core.clone(),
                m.clone(),
                ms,
                key.clone(),
                params,
                rx,
            ));
            state.sources.insert(
                uid,
                SourceTask {
                    key,
                    task: Owned(task),
                    cancel: Some(tx),
                },
            );
        }
        A::RecordFailure { reason, .. } => {
            record_end(backend, m, &uid, End::Failed(reason)).await?;
            state.done.insert(uid);
        }
        A::RecoverOrphanSource { key, .. } => {
            recover_orphan_source(backend, core, m, &uid, &key).await?;
            state.done.insert(uid);
        }
        A::RecordCompletion { key, target, .. } => {
            tracing::info!(migration = %uid, "completed before the agent restarted; recording the end");
            record_end(backend, m, &uid, End::Completed { target }).await?;
            // The paused source, if the old agent did not stop it.
            if let Err(e) = core.vms.stop(&key) {
                tracing::warn!(vm = %key, error = %error_chain(&e), "cannot stop migrated source VM");
            }
            state.done.insert(uid);
        }
    }
    Ok(())
}

/// Move the VMIM from `from` to `to`; false if it is no longer in `from`.
async fn advance<B: Backend>(
    backend: &B,
    m: &VirtualMachineInstanceMigration,
    from: MigrationPhase,
    to: MigrationPhase,
) -> Result<bool, BackendError> {
    let mut moved = false;
    modify_status(
        backend,
        &m.namespace().unwrap_or_default(),
        &m.name_any(),
        |m: &mut VirtualMachineInstanceMigration| {
            moved = phase_of(m) == Some(from);
            if moved {
                enter_phase(m, to, now());
            }
            moved
        },
    )
    .await?;
    Ok(moved)
}

/// Write the migrationState of migration `uid` on the VMI (skipped when the
/// VMI now records another migration).
async fn update_state<B: Backend>(
    backend: &B,
    m: &VirtualMachineInstanceMigration,
    uid: &str,
    f: impl Fn(&mut crate::api::VirtualMachineInstanceStatus) + Send + Sync,
) -> Result<bool, BackendError> {
    let mut done = false;
    let ns = m.namespace().unwrap_or_default();
    modify_status(
        backend,
        &ns,
        &m.spec.vmi_name,
        |v: &mut VirtualMachineInstance| {
            let Some(st) = v.status.as_mut() else {
                return false;
            };
            if st
                .migration_state
                .as_ref()
                .and_then(|s| s.migration_uid.as_deref())
                != Some(uid)
            {
                return false;
            }
            f(st);
            done = true;
            true
        },
    )
    .await?;
    Ok(done)
}

#[derive(Clone)]
enum End {
    Completed {
        target: String,
    },
    Failed(String),
    /// Cancelled on request; `confirmed` = the VM is back to running.
    Aborted {
        confirmed: bool,
    },
    AbortedBeforeStart,
}

/// What an end writes into a migrationState: the same fields on the VMI
/// and on the VMIM.
fn apply_end(ms: &mut VirtualMachineInstanceMigrationState, end: &End, t: &Time) {
    ms.end_timestamp = Some(t.clone());
    match end {
        End::Completed { .. } => ms.completed = Some(true),
        End::Failed(reason) => {
            ms.failed = Some(true);
            ms.failure_reason = Some(reason.clone());
        }
        End::Aborted { confirmed } => {
            ms.failed = Some(true);
            ms.failure_reason = Some(protocol::ABORTED_BY_USER.to_string());
            ms.abort_status = Some(if *confirmed {
                MigrationAbortStatus::Succeeded
            } else {
                MigrationAbortStatus::Failed
            });
        }
        End::AbortedBeforeStart => {
            ms.failed = Some(true);
            ms.failure_reason = Some(protocol::ABORTED_BY_USER.to_string());
            ms.abort_status = Some(MigrationAbortStatus::Succeeded);
        }
    }
}

/// Record how migration `uid` ended: the VMI's migrationState first (one
/// write, with nodeName on success), then the VMIM's final phase with the
/// same end and, when it failed, a `Failed` condition. The VMIM carries the
/// reason itself: when the VMI is gone or replaced by then (a guest that
/// died with its source QEMU, restarted by its VirtualMachine), the VMIM is
/// the only place that still says why.
async fn record_end<B: Backend>(
    backend: &B,
    m: &VirtualMachineInstanceMigration,
    uid: &str,
    end: End,
) -> Result<(), BackendError> {
    let t = now();
    update_state(backend, m, uid, |st| {
        let ms = st.migration_state.get_or_insert_with(Default::default);
        apply_end(ms, &end, &t);
        if let End::Completed { target } = &end {
            st.node_name = Some(target.clone());
        }
    })
    .await?;
    let final_phase = match end {
        End::Completed { .. } => MigrationPhase::Succeeded,
        _ => MigrationPhase::Failed,
    };
    modify_status(
        backend,
        &m.namespace().unwrap_or_default(),
        &m.name_any(),
        |m: &mut VirtualMachineInstanceMigration| {
            if matches!(
                phase_of(m),
                Some(MigrationPhase::Succeeded | MigrationPhase::Failed)
            ) {
                return false;
            }
            let st = m.status.get_or_insert_with(Default::default);
            let ms = st.migration_state.get_or_insert_with(Default::default);
            apply_end(ms, &end, &t);
            match (final_phase, ms.failure_reason.clone()) {
                (MigrationPhase::Failed, Some(reason)) => {
                    let label = match end {
                        End::Failed(_) => "MigrationFailed",
                        _ => "AbortedByUser",
                    };
                    protocol::fail(m, label, &reason, &t);
                }
                _ => enter_phase(m, final_phase, t.clone()),
            }
            true
        },
    )
    .await?;
    Ok(())
}

/// Retry a write a few times on transient errors; conflicts are handled by
/// `modify*` already.
async fn retrying<T, F, Fut>(what: &str, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, BackendError>>,
{
    // 100 ms doubling to 1.6 s: ten attempts span about 11 s, long enough
    // for an API server restart or a brief full disk, short enough that the
    // loop's next pass (which decides again from fresh reads) is not held up.
    const ATTEMPTS: u32 = 10;
    const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(1600));
    for attempt in 1..=ATTEMPTS {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) if e.is_retryable() && attempt < ATTEMPTS => {
                // Said from the third failure on: a retry that keeps failing
                // is never silent.
                if attempt >= 3 {
                    tracing::warn!(what, attempt, error = %error_chain(&e), "status write failed; retrying");
                }
                tokio::time::sleep(BACKOFF.delay(attempt)).await;
            }
            Err(e) => {
                tracing::warn!(what, attempt, error = %error_chain(&e), "status write failed; giving up");
                return None;
            }
        }
    }
    None
}

async fn target_task<B: Backend>(
    backend: B,
    core: Arc<AgentCore>,
    m: VirtualMachineInstanceMigration,
    req: VmRequest,
    params: MigrationParams,
    launcher_dir: Option<std::path::PathBuf>,
) {
    let uid = m.uid().unwrap_or_default();
    let prepared = match launcher_dir {
        Some(dir) => core.prepare_launched_target(&req, &uid, &params, dir).await,
        None => core.prepare_target(&req, &uid, &params).await,
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            let reason = format!("preparing the target: {}", error_chain(&e));
            tracing::warn!(migration = %uid, %reason);
            retrying("target failure", || {
                record_end(&backend, &m, &uid, End::Failed(reason.clone()))
            })
            .await;
            return;
        }
    };
    let (address, ports) = (prepared.address.clone(), prepared.port_map.clone());
    let published = retrying("targetNodeAddress", || {
        let (address, ports) = (address.clone(), ports.clone());
        update_state(&backend, &m, &uid, move |st| {
            let ms = st.migration_state.get_or_insert_with(Default::default);
            ms.target_node_address = Some(address.clone());
            ms.target_node_domain_detected = Some(true);
            ms.target_direct_migration_node_ports = ports
                .iter()
                .map(|(p, k)| (p.clone(), i32::from(*k)))
                .collect();
        })
    })
    .await;
    if published != Some(true) {
        return; // the migration is gone; dropping `prepared` cleans up
    }
    retrying("TargetReady", || {
        advance(
            &backend,
            &m,
            MigrationPhase::PreparingTarget,
            MigrationPhase::TargetReady,
        )
    })
    .await;
    // Bounded by the completion budget (the source aborts by then) plus margin.
    let budget = params
        .monitor(req.memory_bytes())
        .completion_budget()
        .unwrap_or(Duration::from_secs(24 * 3600));
    match prepared
        .wait_incoming(budget + Duration::from_secs(120))
        .await
    {
        IncomingResult::Running => match prepared.commit(&core) {
            Ok(info) => tracing::info!(vm = %req.key, pid = info.pid, "VM received"),
            Err(e) => {
                tracing::warn!(vm = %req.key, error = %error_chain(&e), "cannot adopt received VM")
            }
        },
        IncomingResult::Failed { reason } => {
            // The source records the outcome; this is the target's half of
            // why, for it to add.
            tracing::info!(vm = %req.key, %reason, "incoming migration did not complete");
            let note = format!("target {}: {reason}", core.node_name());
            let r = modify(
                &backend,
                &m.namespace().unwrap_or_default(),
                &m.name_any(),
                |m: &mut VirtualMachineInstanceMigration| {
                    m.annotations_mut().insert(
                        protocol::TARGET_FAILURE_ANNOTATION.to_string(),
                        note.clone(),
                    );
                    true
                },
            )
            .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "target failure note not written");
            }
        }
    }
}

/// A failure reason with the target's note added, when the target wrote
/// one. It may land a moment after the source saw its stream break, so a
/// failure waits up to 2 s for it.
async fn with_target_note<B: Backend>(
    backend: &B,
    m: &VirtualMachineInstanceMigration,
    end: End,
) -> End {
    let End::Failed(reason) = end else {
        return end;
    };
    for _ in 0..20 {
        let note = backend
            .get::<VirtualMachineInstanceMigration>(
                &m.namespace().unwrap_or_default(),
                &m.name_any(),
            )
            .await
            .ok()
            .flatten()
            .and_then(|m| {
                m.annotations()
                    .get(protocol::TARGET_FAILURE_ANNOTATION)
                    .cloned()
            });
        if let Some(note) = note {
            return End::Failed(format!("{reason}; {note}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    End::Failed(reason)
}

async fn source_task<B: Backend>(
    backend: B,
    core: Arc<AgentCore>,
    m: VirtualMachineInstanceMigration,
    ms: VirtualMachineInstanceMigrationState,
    key: String,
    params: MigrationParams,
    cancel: tokio::sync::oneshot::Receiver<()>,
) {
    let uid = m.uid().unwrap_or_default();
    let target_node = ms.target_node.clone().unwrap_or_default();
    let ports = ms
        .target_direct_migration_node_ports
        .iter()
        .filter_map(|(p, k)| u16::try_from(*k).ok().map(|k| (p.clone(), k)))
        .collect();
    let target = match TargetAddress::parse(ms.target_node_address.as_deref().unwrap_or(""), &ports)
    {
        Ok(t) => t,
        Err(e) => {
            retrying("source failure", || {
                record_end(&backend, &m, &uid, End::Failed(error_chain(&e)))
            })
            .await;
            return;
        }
    };
    if retrying("Running", || {
        advance(
            &backend,
            &m,
            MigrationPhase::TargetReady,
            MigrationPhase::Running,
        )
    })
    .await
        != Some(true)
    {
        return;
    }
    let (ptx, mut prx) = tokio::sync::watch::channel(Progress::default());
    let publish = |p: Progress| {
        ptx.send_replace(p);
    };
    let writer = async {
        let mut last: Option<Progress> = None;
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if prx.has_changed().unwrap_or(false) {
                let p = *prx.borrow_and_update();
                write_progress(&backend, &m, &p, last.as_ref()).await;
                last = Some(p);
            }
        }
    };
    let cancel = async {
        // A dropped sender (the loop went away) is not a cancel request.
        if cancel.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        r = core.migrate(&key, &uid, &target, &params, cancel, &publish) => r,
        _ = writer => unreachable!("the progress writer never ends"),
    };
    let end = match result {
        Ok(r) if r.completed() => {
            write_progress(&backend, &m, &progress_of(&r), None).await;
            End::Completed {
                target: target_node.clone(),
            }
        }
        Ok(r) => match r.outcome {
            mignet_dataplane::qemu::migration::Outcome::Cancelled => End::Aborted {
                confirmed: r.cancel_confirmed,
            },
            _ => End::Failed(r.failure_reason().unwrap_or_default()),
        },
        // A QMP error is what a dead QEMU looks like from here; say which.
        Err(e) if source_exited(&core, &key).await => End::Failed(format!(
            "the source QEMU exited during the migration (the guest is lost with it): {}",
            error_chain(&e)
        )),
        Err(e) => End::Failed(error_chain(&e)),
    };
    let end = with_target_note(&backend, &m, end).await;
    let completed = matches!(end, End::Completed { .. });
    retrying("migration end", || {
        record_end(&backend, &m, &uid, end.clone())
    })
    .await;
    if completed {
        // The guest runs on the target; the paused source is of no use.
        if let Err(e) = core.vms.stop(&key) {
            tracing::warn!(vm = %key, error = %error_chain(&e), "cannot stop migrated source VM");
        }
    }
}

/// Whether VM `key`'s QEMU has gone. Its launcher outlives QEMU by the
/// moment it takes to copy the console's last lines, hence the short wait.
async fn source_exited(core: &AgentCore, key: &str) -> bool {
    for _ in 0..30 {
        if !core.vms.is_alive(key) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn progress_of(r: &super::SourceResult) -> Progress {
    Progress {
        elapsed: r.elapsed,
        bytes: r.bytes,
        transferred: r.transferred,
        remaining: 0,
        total: r.transferred,
    }
}

/// Write the progress annotation on the migration (the source agent, about
/// once a second while migrating): a merge patch of that one annotation.
pub async fn write_progress<B: Backend>(
    backend: &B,
    m: &VirtualMachineInstanceMigration,
    p: &Progress,
    last: Option<&Progress>,
) {
    let rate = match last {
        Some(l) if p.elapsed > l.elapsed => {
            (p.transferred.saturating_sub(l.transferred) as f64
                / (p.elapsed - l.elapsed).as_secs_f64()) as u64
        }
        _ if !p.elapsed.is_zero() => (p.transferred as f64 / p.elapsed.as_secs_f64()) as u64,
        _ => 0,
    };
    let value = serde_json::to_string(&protocol::Progress {
        transferred_bytes: p.transferred,
        remaining_bytes: p.remaining,
        total_bytes: p.total,
        bytes_per_second: rate,
        updated: jiff::Timestamp::now().to_string(),
    })
    .unwrap_or_default();
    let r = modify(
        backend,
        &m.namespace().unwrap_or_default(),
        &m.name_any(),
        |m: &mut VirtualMachineInstanceMigration| {
            m.annotations_mut()
                .insert(protocol::PROGRESS_ANNOTATION.to_string(), value.clone());
            true
        },
    )
    .await;
    if let Err(e) = r {
        tracing::debug!(error = %e, "progress annotation not written");
    }
}

/// A migration this node was sending when the previous agent died: its
/// proxy died too, so QEMU's stream is broken. Cancel whatever is left and
/// record the failure; if QEMU had completed it, record the success.
async fn recover_orphan_source<B: Backend>(
    backend: &B,
    core: &AgentCore,
    m: &VirtualMachineInstanceMigration,
    uid: &str,
    key: &str,
) -> Result<(), BackendError> {
    use mignet_dataplane::qemu::migration::{self, MigrationStatus, Side};
    let target = backend
        .get::<VirtualMachineInstance>(&m.namespace().unwrap_or_default(), &m.spec.vmi_name)
        .await?
        .and_then(|v| v.status.and_then(|s| s.migration_state))
        .and_then(|s| s.target_node)
        .unwrap_or_default();
    let status = match core.vms.get(key) {
        Some(vm) => match migration::query(&vm.qmp, Side::Source).await {
            Ok(s) if s.status == MigrationStatus::Completed => Some(MigrationStatus::Completed),
            Ok(s) if !s.status.is_terminal() => {
                // Its relay died with the old agent; a channel may still be
                // blocked on it, which only a yank ends.
                if let Err(e) = migration::cancel_hard(&vm.qmp).await {
                    tracing::warn!(vm = %key, error = %error_chain(&e), "ending the orphaned migration in QEMU failed");
                }
                Some(s.status)
            }
            Ok(s) => Some(s.status),
            Err(_) => None,
        },
        None => None,
    };
    let end = if status == Some(MigrationStatus::Completed) {
        End::Completed { target }
    } else {
        End::Failed("source agent restarted during the migration".into())
    };
    let completed = matches!(end, End::Completed { .. });
    record_end(backend, m, uid, end).await?;
    if completed {
        let _ = core.vms.stop(key);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_end_carries_its_reason_and_time() {
        let t = Time(jiff::Timestamp::from_second(1_700_000_000).unwrap());
        let mut ms = VirtualMachineInstanceMigrationState::default();
        apply_end(&mut ms, &End::Failed("the target QEMU exited".into()), &t);
        assert_eq!(
            (
                ms.failed,
                ms.failure_reason.as_deref(),
                ms.end_timestamp.as_ref()
            ),
            (Some(true), Some("the target QEMU exited"), Some(&t))
        );
        let mut ms = VirtualMachineInstanceMigrationState::default();
        apply_end(&mut ms, &End::Aborted { confirmed: false }, &t);
        assert_eq!(
            ms.failure_reason.as_deref(),
            Some(protocol::ABORTED_BY_USER)
        );
        assert_eq!(ms.abort_status, Some(MigrationAbortStatus::Failed));
        let mut ms = VirtualMachineInstanceMigrationState::default();
        apply_end(
            &mut ms,
            &End::Completed {
                target: "n2".into(),
            },
            &t,
        );
        assert_eq!((ms.completed, ms.failed), (Some(true), None));
    }
}
