//! The migration controller: one level-triggered loop that reads the
//! HyperConverged config, Nodes, VMIs and VMIMs through a [`Backend`],
//! builds the policy's views, asks `mignet_policy` what to do and writes
//! the answers back with conditional writes. The same code runs in cluster
//! mode ([`crate::backend::KubeBackend`], `mignet manager`) and in lab mode
//! ([`crate::backend::LocalBackend`]); the protocol it speaks with the node
//! agents is described in [`crate::backend`].
//!
//! It also plays KubeVirt's VM controller ([`vm`], `mignet_policy::vm`):
//! each VirtualMachine's run strategy creates, adopts or deletes the VMI of
//! its name, the VM's status follows that VMI, and VMIs whose VM is gone are
//! deleted. That step runs last in a pass, so a VM problem never holds up
//! the migrations decided before it.
//!
//! # Why the limits hold
//!
//! Only this controller moves a VMIM out of Pending (agents only move
//! migrations it started, forward toward a final phase). A pass lists
//! everything, decides, and writes; the next pass lists again after those
//! writes returned, so its counts include its own starts. Between a list
//! and the writes that follow, other writers (agents, users) can only
//! finish or cancel active migrations, never start one, so a stale view
//! over-counts active migrations and errs on the safe side. Each start is
//! a write conditional on the VMIM's resourceVersion from the same list, so
//! a VMIM is started at most once. Run one controller per cluster (one
//! manager replica, one lab daemon): two controllers listing at the same
//! time could each fill the free slots.

pub mod evict;
mod labels;
pub mod launcher_pod;
pub mod maintenance;
pub mod views;
pub mod vm;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff;
use kube::ResourceExt;
use mignet_policy as policy;
use policy::{ClusterIndex, DrainAction, Limits, ObjectKey, Snapshot};

use crate::api::{
    HyperConverged, MigrationMethod, MigrationMode, MigrationPhase, NodeMaintenance,
    VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstanceMigrationSpec, VirtualMachineInstanceMigrationState,
    VirtualMachineInstanceMigrationStatus, VmiCondition,
};
use crate::backend::protocol::{
    self, enter_phase, DrainReport, DRAIN_REPORT_ANNOTATION, EVACUATION_ANNOTATION, FINALIZER,
};
use crate::backend::{self as be, Backend, BackendError};

/// What the controller looks at and how often it re-checks without a
/// change.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Only VMIs and VMIMs in this namespace (`None` = all).
    pub namespace: Option<String>,
    /// Where the HyperConverged CR lives (`None` = as `namespace`); the
    /// first one by name gives the limits, none at all = KubeVirt's defaults.
    pub hco_namespace: Option<String>,
    /// Only Nodes carrying this label (key, value); `None` = all nodes.
    /// Lets several controllers share an API server in tests.
    pub node_selector: Option<(String, String)>,
    /// Re-list and decide at least this often.
    pub resync: Duration,
    /// The cluster-wide default eviction strategy (KubeVirt's
    /// `evictionStrategy` in the KubeVirt CR); `None` = unset.
    pub default_eviction_strategy: Option<policy::EvictionStrategy>,
    /// VMs run in launcher pods that Kubernetes places (cluster mode):
    /// the controller makes a VMI's pod, takes its node from the pod, and
    /// makes a target pod for each migration, whose node becomes the
    /// migration's target. `None`: a scheduler of the caller's places VMIs
    /// and the policy picks migration targets (the lab today).
    pub launchers: Option<launcher_pod::LauncherSettings>,
    /// Honour NodeMaintenances ([`maintenance`]). Off where the real
    /// node-maintenance-operator runs: it handles them itself, and two
    /// controllers would fight over their status.
    pub node_maintenance: bool,
    /// Where each pass publishes KubeVirt's migration families (phase
    /// counts, outcomes, start/end times); `None` = nowhere.
    pub metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            namespace: None,
            hco_namespace: None,
            node_selector: None,
            resync: Duration::from_secs(5),
            default_eviction_strategy: None,
            launchers: None,
            node_maintenance: true,
            metrics: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("listing {what}")]
    List {
        what: &'static str,
        #[source]
        source: Box<BackendError>,
    },
    #[error("writing {what} {key}")]
    Write {
        what: &'static str,
        key: String,
        #[source]
        source: Box<BackendError>,
    },
}

impl ControlError {
    fn source_err(&self) -> &BackendError {
        match self {
            ControlError::List { source, .. } | ControlError::Write { source, .. } => source,
        }
    }
    pub fn is_transient(&self) -> bool {
        self.source_err().is_retryable()
    }
}

/// What one pass did (counts, for logs, tests and metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pass {
    pub admitted: u32,
    pub refused: u32,
    pub started: u32,
    pub waiting: u32,
    pub finalizers_removed: u32,
    pub aborts_requested: u32,
    pub conditions_written: u32,
    pub evacuations_created: u32,
    pub evacuations_cancelled: u32,
    pub drain_reports_written: u32,
    /// VMIs created for VirtualMachines (run strategy), adopted, and
    /// deleted (stopped, restarted, or their VM gone).
    pub vmis_created: u32,
    pub vmis_adopted: u32,
    pub vmis_deleted: u32,
    pub vm_statuses_written: u32,
    /// NodeMaintenance: nodes put into or out of maintenance, VMs stopped
    /// (their pod or VMI deleted), statuses written.
    pub maintenance_node_writes: u32,
    pub maintenance_stops: u32,
    pub maintenance_statuses_written: u32,
    /// Launcher pods created (VMs and migration targets) and deleted.
    pub pods_created: u32,
    pub pods_deleted: u32,
    /// VMIs and VMIMs whose node labels were brought up to date.
    pub labels_written: u32,
    /// Writes that lost a race (stale resourceVersion); the next pass
    /// redoes them, soon.
    pub conflicts: u32,
}

/// Run the controller until `shutdown` resolves. Transient failures
/// (conflicts, an unreachable server) are retried with a capped backoff;
/// so are permanent ones (a CRD not installed yet), logged as errors.
pub async fn run<B: Backend>(
    backend: B,
    settings: Settings,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ControlError> {
    let mut changes = backend.changes();
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(100);
    loop {
        let now = jiff::Timestamp::now();
        let wait = match reconcile_once(&backend, &settings, now).await {
            Ok(pass) => {
                backoff = Duration::from_millis(100);
                tracing::debug!(?pass, "migration control pass");
                if pass.conflicts > 0 {
                    Duration::from_millis(50)
                } else {
                    settings.resync
                }
            }
            Err(e) => {
                if e.is_transient() {
                    tracing::warn!(error = %e, source = %e.source_err(), "migration control pass failed; retrying");
                } else {
                    tracing::error!(error = %e, source = %e.source_err(), "migration control pass failed; retrying");
                }
                let b = backoff;
                backoff = (backoff * 2).min(Duration::from_secs(10));
                b
            }
        };
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = changes.changed() => {
                // Let a burst of writes (an agent's status + phase) land
                // before re-listing.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// The objects one pass works on, updated in place as writes return.
struct World {
    limits: Limits,
    nodes: Vec<Node>,
    vmis: HashMap<ObjectKey, VirtualMachineInstance>,
    vmims: Vec<VirtualMachineInstanceMigration>,
    vms: Vec<VirtualMachine>,
    /// Launcher pods and claims (launcher mode only; empty otherwise).
    pods: Vec<Pod>,
    pvcs: Vec<PersistentVolumeClaim>,
    node_maintenances: Vec<NodeMaintenance>,
    /// The network rollout's hold (`network::switch::migrations_held`): no
    /// migration starts while the agents' network changes.
    network_hold: Option<String>,
}

impl World {
    /// Node views, with the drain marker also on cordoned nodes that a
    /// VMI is being evicted from (`status.evacuationNodeName`, what
    /// KubeVirt's eviction webhook sets on `kubectl drain` and what
    /// `mignet lab drain` sets), as KubeVirt's evacuation controller reacts
    /// to either.
    fn node_views(&self) -> Vec<policy::NodeView> {
        let evicting: HashSet<&str> = self
            .vmis
            .values()
            .filter_map(|v| v.status.as_ref()?.evacuation_node_name.as_deref())
            .collect();
        self.nodes
            .iter()
            .map(|n| {
                let mut v = views::node_view(n);
                if v.unschedulable && !v.draining() && evicting.contains(v.name.as_str()) {
                    v.taints.push(policy::Taint {
                        key: protocol::DRAIN_TAINT_KEY.to_owned(),
                        effect: policy::TaintEffect::NoSchedule,
                    });
                }
                v
            })
            .collect()
    }
}

async fn observe<B: Backend>(backend: &B, settings: &Settings) -> Result<World, ControlError> {
    let ns = settings.namespace.as_deref();
    let list_err = |what| {
        move |source| ControlError::List {
            what,
            source: Box::new(source),
        }
    };
    let hco_ns = settings.hco_namespace.as_deref().or(ns);
    let hcos: Vec<HyperConverged> = backend
        .list(hco_ns)
        .await
        .map_err(list_err("HyperConverged"))?;
    let (cfg, invalid) = crate::config::config_from_hyperconvergeds(&hcos);
    let network_hold = hcos.iter().find_map(|h| {
        let c = h
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == crate::network::decide::CONDITION_TYPE)?;
        crate::network::switch::migrations_held(&c.reason, &c.message)
    });
    if let Some(e) = invalid {
        // The rollout controller reports the invalid field on the CR
        // (MigrationConfigValid=False); migrations keep KubeVirt's defaults
        // meanwhile, and the agents use the same defaults.
        tracing::warn!(error = %e, "invalid liveMigrationConfig; using default limits");
    }
    let limits = Limits {
        parallel_migrations_per_cluster: cfg.parallel_migrations_per_cluster,
        parallel_outbound_migrations_per_node: cfg.parallel_outbound_migrations_per_node,
    };
    let mut nodes: Vec<Node> = backend.list(None).await.map_err(list_err("Node"))?;
    if let Some((k, v)) = &settings.node_selector {
        nodes.retain(|n| n.labels().get(k) == Some(v));
    }
    // Migrations before VMIs: the agent records a migration's end on the
    // VMI first (nodeName moves to the target) and on the VMIM second, so a
    // final VMIM listed here has its VMI write in the list that follows.
    // The other order could pair a Succeeded VMIM with a VMI still on the
    // source node, and the target pod, now the guest, would look left over.
    let vmims: Vec<VirtualMachineInstanceMigration> = backend
        .list(ns)
        .await
        .map_err(list_err("VirtualMachineInstanceMigration"))?;
    let vmis: Vec<VirtualMachineInstance> = backend
        .list(ns)
        .await
        .map_err(list_err("VirtualMachineInstance"))?;
    let vms: Vec<VirtualMachine> = backend.list(ns).await.map_err(list_err("VirtualMachine"))?;
    let (mut pods, mut pvcs) = (Vec::new(), Vec::new());
    if settings.launchers.is_some() {
        pods = backend.list(ns).await.map_err(list_err("Pod"))?;
        pods.retain(|p: &Pod| p.labels().contains_key(launcher_pod::LAUNCHER_LABEL));
        pvcs = backend
            .list(ns)
            .await
            .map_err(list_err("PersistentVolumeClaim"))?;
    }
    let node_maintenances = list_node_maintenances(backend, settings).await?;
    Ok(World {
        network_hold,
        node_maintenances,
        limits,
        nodes,
        vmis: vmis.into_iter().map(|v| (views::vmi_key(&v), v)).collect(),
        vmims,
        vms,
        pods,
        pvcs,
    })
}

/// The NodeMaintenances to honour. Where the CRD is not installed (404) or
/// the manager may not read them (403, an older role), there are none:
/// that must not stop the migrations.
async fn list_node_maintenances<B: Backend>(
    backend: &B,
    settings: &Settings,
) -> Result<Vec<NodeMaintenance>, ControlError> {
    if !settings.node_maintenance {
        return Ok(Vec::new());
    }
    match backend.list::<NodeMaintenance>(None).await {
        Ok(mut nms) => {
            maintenance::select(&mut nms, settings.node_selector.as_ref());
            Ok(nms)
        }
        Err(e) if e.is_not_found() => Ok(Vec::new()),
        Err(e) if e.is_forbidden() => {
            tracing::warn!(error = %e, "NodeMaintenances not readable; maintenance mode is off");
            Ok(Vec::new())
        }
        Err(source) => Err(ControlError::List {
            what: "NodeMaintenance",
            source: Box::new(source),
        }),
    }
}

/// Outcome of a conditional write: a lost race counts and is left to the
/// next pass; anything else is an error of the pass.
fn settle<T>(
    r: Result<T, BackendError>,
    pass: &mut Pass,
    what: &'static str,
    key: &dyn std::fmt::Display,
) -> Result<Option<T>, ControlError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_conflict() || e.is_not_found() => {
            pass.conflicts += u32::from(e.is_conflict());
            Ok(None)
        }
        Err(source) => Err(ControlError::Write {
            what,
            key: key.to_string(),
            source: Box::new(source),
        }),
    }
}

/// Write what changed in the status from `before` (as listed) to `after`
/// and [`settle`] the outcome: the stored object, or None when the write
/// lost a race. A merge patch conditional on `before`'s resourceVersion:
/// status fields we do not model (another controller's, a newer KubeVirt's)
/// are never erased.
async fn write_status<B: Backend, K: crate::backend::Kind>(
    backend: &B,
    before: &K,
    after: &K,
    pass: &mut Pass,
    what: &'static str,
    key: &(dyn std::fmt::Display + Sync),
) -> Result<Option<K>, ControlError> {
    settle(backend.patch_status(before, after).await, pass, what, key)
}

fn time(now: jiff::Timestamp) -> Time {
    // Kubernetes timestamps have whole seconds on the wire; keep ours
    // equal to what a re-read returns.
    Time(jiff::Timestamp::from_second(now.as_second()).unwrap_or(now))
}

pub(crate) use crate::backend::protocol::{fail, set_condition};

fn has_finalizer(m: &VirtualMachineInstanceMigration) -> bool {
    m.finalizers().iter().any(|f| f == FINALIZER)
}

/// One full pass: observe, decide, write. `now` is the time written into
/// timestamps and passed to the policy.
pub async fn reconcile_once<B: Backend>(
    backend: &B,
    settings: &Settings,
    now: jiff::Timestamp,
) -> Result<Pass, ControlError> {
    let mut w = observe(backend, settings).await?;
    let mut pass = Pass::default();
    let t = time(now);

    cancel_deleted(backend, &mut w, &mut pass).await?;
    admit_new(backend, &mut w, &mut pass, &t).await?;
    advance_scheduling(backend, settings, &mut w, &mut pass, &t).await?;
    schedule(backend, settings, &mut w, &mut pass, now, &t).await?;
    if let Some(ls) = &settings.launchers {
        launchers(backend, ls, &mut w, &mut pass, &t).await?;
    }
    live_migratable(backend, &mut w, &mut pass, &t).await?;
    // Before the drain step: the nodes it cordons and the VMIs it marks
    // are evacuated in the same pass.
    maintenance::step(backend, settings, &mut w, &mut pass, &t).await?;
    drain(backend, settings, &mut w, &mut pass, now).await?;
    // After the steps that move nodes and targets, so this pass's own
    // changes are labelled before the agents look.
    labels::node_labels(backend, &mut w, &mut pass).await?;
    // Last: a VM problem never holds up the migrations decided above.
    virtual_machines(backend, &mut w, &mut pass, &t).await?;
    if let Some(m) = &settings.metrics {
        // From the objects as this pass left them.
        m.set_section(
            "migrations",
            crate::metrics::migration::manager_families(&w.vmims, w.vmis.values()),
        );
    }
    Ok(pass)
}

// ------------------------------------------------------------ cancel

/// VMIMs being deleted: release the ones with nothing to abort, ask the
/// source agent to abort the others, release those once the abort settled.
async fn cancel_deleted<B: Backend>(
    backend: &B,
    w: &mut World,
    pass: &mut Pass,
) -> Result<(), ControlError> {
    for m in &w.vmims {
        if m.metadata.deletion_timestamp.is_none() || !has_finalizer(m) {
            continue;
        }
        let key = views::vmim_key(m);
        let phase = m.status.as_ref().and_then(|s| s.phase);
        let started = phase.is_some_and(|p| !matches!(p, MigrationPhase::Pending))
            && !phase
                .is_some_and(|p| matches!(p, MigrationPhase::Succeeded | MigrationPhase::Failed));
        let uid = m.uid().unwrap_or_default();
        let vmi_key = views::vmim_vmi_key(m);
        let state = w
            .vmis
            .get(&vmi_key)
            .and_then(|v| v.status.as_ref())
            .and_then(|s| s.migration_state.as_ref())
            .filter(|s| s.migration_uid.as_deref() == Some(uid.as_str()));
        let release =
            !started || state.is_none() || state.is_some_and(|s| s.abort_status.is_some());
        if release {
            let r = be::remove_finalizer::<B, VirtualMachineInstanceMigration>(
                backend,
                &key.namespace,
                &key.name,
                FINALIZER,
            )
            .await;
            if settle(r, pass, "VMIM finalizer", &key)?.is_some() {
                pass.finalizers_removed += 1;
            }
            continue;
        }
        if state.is_some_and(|s| s.abort_requested == Some(true)) {
            continue; // waiting for the source agent
        }
        let mut vmi = w.vmis[&vmi_key].clone();
        if let Some(s) = vmi.status.as_mut().and_then(|s| s.migration_state.as_mut()) {
            s.abort_requested = Some(true);
        }
        if let Some(v) = write_status(
            backend,
            &w.vmis[&vmi_key],
            &vmi,
            pass,
            "VMI abortRequested",
            &vmi_key,
        )
        .await?
        {
            pass.aborts_requested += 1;
            w.vmis.insert(vmi_key, v);
        }
    }
    Ok(())
}

// --------------------------------------------------------- admission

/// VMIMs without a phase: Pending (with the finalizer) or Failed with the
/// reason, as KubeVirt's admitter would have answered.
async fn admit_new<B: Backend>(
    backend: &B,
    w: &mut World,
    pass: &mut Pass,
    t: &Time,
) -> Result<(), ControlError> {
    let node_views = w.node_views();
    let vmi_views: Vec<_> = w.vmis.values().map(views::vmi_view).collect();
    let mig_views: Vec<_> = w.vmims.iter().filter_map(views::migration_view).collect();
    let mut index = ClusterIndex::build(Snapshot {
        nodes: &node_views,
        vmis: &vmi_views,
        migrations: &mig_views,
    });
    // Two new VMIMs for one VMI in the same pass: the oldest wins.
    let mut fresh: Vec<usize> = (0..w.vmims.len())
        .filter(|&i| {
            let m = &w.vmims[i];
            m.status.as_ref().and_then(|s| s.phase).is_none()
                && m.metadata.deletion_timestamp.is_none()
        })
        .collect();
    fresh.sort_by_key(|&i| {
        let m = &w.vmims[i];
        (
            m.metadata.creation_timestamp.clone().map(|t| t.0),
            m.name_any(),
        )
    });
    let mut claimed: HashMap<ObjectKey, ObjectKey> = HashMap::new();
    for i in fresh {
        let key = views::vmim_key(&w.vmims[i]);
        let vmi_key = views::vmim_vmi_key(&w.vmims[i]);
        let verdict = match claimed.get(&vmi_key) {
            Some(other) => Err(policy::Refusal::AlreadyMigrating {
                vmi: vmi_key.clone(),
                migration: other.clone(),
            }),
            None => policy::admit(&mut index, &key, &vmi_key),
        };
        match verdict {
            Ok(_method) => {
                claimed.insert(vmi_key, key.clone());
                // Finalizer first: once Pending, a delete must find it.
                let r = be::add_finalizer::<B, VirtualMachineInstanceMigration>(
                    backend,
                    &key.namespace,
                    &key.name,
                    FINALIZER,
                )
                .await;
                let Some(Some(before)) = settle(r, pass, "VMIM finalizer", &key)? else {
                    continue;
                };
                let mut m = before.clone();
                enter_phase(&mut m, MigrationPhase::Pending, t.clone());
                if let Some(m) =
                    write_status(backend, &before, &m, pass, "VMIM phase", &key).await?
                {
                    pass.admitted += 1;
                    w.vmims[i] = m;
                }
            }
            Err(refusal) => {
                let mut m = w.vmims[i].clone();
                fail(&mut m, refusal.reason(), &refusal.to_string(), t);
                if let Some(m) =
                    write_status(backend, &w.vmims[i], &m, pass, "VMIM phase", &key).await?
                {
                    pass.refused += 1;
                    w.vmims[i] = m;
                }
            }
        }
    }
    Ok(())
}

// -------------------------------------------------------- scheduling

/// Pending migrations the policy starts, refuses or keeps waiting.
async fn schedule<B: Backend>(
    backend: &B,
    settings: &Settings,
    w: &mut World,
    pass: &mut Pass,
    now: jiff::Timestamp,
    t: &Time,
) -> Result<(), ControlError> {
    let node_views = w.node_views();
    let vmi_views: Vec<_> = w.vmis.values().map(views::vmi_view).collect();
    // A Pending VMIM being deleted is about to go: not a candidate.
    let mig_views: Vec<_> = w
        .vmims
        .iter()
        .filter(|m| {
            m.metadata.deletion_timestamp.is_none()
                || m.status.as_ref().and_then(|s| s.phase) != Some(MigrationPhase::Pending)
        })
        .filter_map(views::migration_view)
        .collect();
    let mut decision = policy::decide(
        Snapshot {
            nodes: &node_views,
            vmis: &vmi_views,
            migrations: &mig_views,
        },
        w.limits,
        policy::Timestamp::from_unix_millis(now.as_millisecond()),
    );
    if let Some(why) = &w.network_hold {
        decision.hold(why);
    }
    let pos: HashMap<ObjectKey, usize> = w
        .vmims
        .iter()
        .enumerate()
        .map(|(i, m)| (views::vmim_key(m), i))
        .collect();

    for start in decision.start {
        let Some(&i) = pos.get(&start.migration) else {
            continue;
        };
        // The slot-taking write, conditional on the VMIM as listed: a VMIM
        // is started once, and only from Pending.
        let mut m = w.vmims[i].clone();
        enter_phase(&mut m, MigrationPhase::Scheduling, t.clone());
        let st = m.status.get_or_insert_with(Default::default);
        st.conditions
            .retain(|c| c.type_ != protocol::PENDING_CONDITION);
        let vmi_name = m.spec.vmi_name.clone();
        st.migration_state = Some(VirtualMachineInstanceMigrationState {
            migration_uid: m.metadata.uid.clone(),
            source_node: Some(start.source_node.clone()),
            start_timestamp: Some(t.clone()),
            mode: Some(MigrationMode::PreCopy),
            ..Default::default()
        });
        let ms = st.migration_state.as_mut().expect("just set");
        if settings.launchers.is_some() {
            // Kubernetes picks the target: the node the target pod lands on.
            let uid = m.metadata.uid.as_deref().unwrap_or_default();
            ms.target_pod = Some(launcher_pod::pod_name(&vmi_name, uid));
        } else {
            ms.target_node = Some(start.target_node.clone());
        }
        let Some(m) = write_status(
            backend,
            &w.vmims[i],
            &m,
            pass,
            "VMIM phase",
            &start.migration,
        )
        .await?
        else {
            continue;
        };
        pass.started += 1;
        w.vmims[i] = m;
        hand_off(backend, settings, w, i, pass, t).await?;
    }

    for r in decision.refuse {
        let Some(&i) = pos.get(&r.migration) else {
            continue;
        };
        let mut m = w.vmims[i].clone();
        fail(&mut m, r.refusal.reason(), &r.refusal.to_string(), t);
        if let Some(m) =
            write_status(backend, &w.vmims[i], &m, pass, "VMIM phase", &r.migration).await?
        {
            pass.refused += 1;
            w.vmims[i] = m;
        }
    }

    for wt in decision.waiting {
        pass.waiting += 1;
        let Some(&i) = pos.get(&wt.migration) else {
            continue;
        };
        let mut m = w.vmims[i].clone();
        let st = m.status.get_or_insert_with(Default::default);
        let changed = set_condition(
            &mut st.conditions,
            VmiCondition {
                type_: protocol::PENDING_CONDITION.into(),
                status: "True".into(),
                reason: Some(wt.reason.reason().into()),
                message: Some(wt.reason.to_string()),
                last_transition_time: Some(t.clone()),
                ..Default::default()
            },
        );
        if changed {
            if let Some(m) = write_status(
                backend,
                &w.vmims[i],
                &m,
                pass,
                "VMIM condition",
                &wt.migration,
            )
            .await?
            {
                w.vmims[i] = m;
            }
        }
    }
    Ok(())
}

/// VMIMs in Scheduling (just started, or left there by a crash or a lost
/// race): record the migration on the VMI, then Scheduled for the target
/// agent.
async fn advance_scheduling<B: Backend>(
    backend: &B,
    settings: &Settings,
    w: &mut World,
    pass: &mut Pass,
    t: &Time,
) -> Result<(), ControlError> {
    for i in 0..w.vmims.len() {
        let m = &w.vmims[i];
        if m.status.as_ref().and_then(|s| s.phase) == Some(MigrationPhase::Scheduling) {
            hand_off(backend, settings, w, i, pass, t).await?;
        }
    }
    Ok(())
}

async fn hand_off<B: Backend>(
    backend: &B,
    settings: &Settings,
    w: &mut World,
    i: usize,
    pass: &mut Pass,
    t: &Time,
) -> Result<(), ControlError> {
    let m = &w.vmims[i];
    let key = views::vmim_key(m);
    let vmi_key = views::vmim_vmi_key(m);
    let Some(mut state) = m.status.as_ref().and_then(|s| s.migration_state.clone()) else {
        return Ok(());
    };
    if !w.vmis.contains_key(&vmi_key) {
        // The VMI went away after the start.
        let mut m = m.clone();
        fail(
            &mut m,
            "VMINotFound",
            &format!("VMI {vmi_key} does not exist"),
            t,
        );
        if let Some(m) = write_status(backend, &w.vmims[i], &m, pass, "VMIM phase", &key).await? {
            w.vmims[i] = m;
        }
        return Ok(());
    }
    if let Some(ls) = &settings.launchers {
        match target_pod(backend, ls, w, i, pass, t).await? {
            Some(node) => state.target_node = Some(node),
            None => return Ok(()),
        }
    }
    let vmi = &w.vmis[&vmi_key];
    let recorded = vmi
        .status
        .as_ref()
        .and_then(|s| s.migration_state.as_ref())
        .is_some_and(|s| {
            s.migration_uid == state.migration_uid && s.target_node == state.target_node
        });
    if !recorded {
        let method = match policy::migratable::check_volumes(&views::vmi_view(vmi)) {
            Ok(policy::MigrationMethod::BlockMigration) => MigrationMethod::BlockMigration,
            _ => MigrationMethod::LiveMigration,
        };
        let mut next = vmi.clone();
        let st = next.status.get_or_insert_with(Default::default);
        st.migration_state = Some(state.clone());
        st.migration_method = Some(method);
        let Some(v) =
            write_status(backend, vmi, &next, pass, "VMI migrationState", &vmi_key).await?
        else {
            return Ok(());
        };
        w.vmis.insert(vmi_key, v);
    }
    let mut m = w.vmims[i].clone();
    enter_phase(&mut m, MigrationPhase::Scheduled, t.clone());
    if let Some(st) = m.status.as_mut() {
        st.migration_state = Some(state);
    }
    if let Some(m) = write_status(backend, &w.vmims[i], &m, pass, "VMIM phase", &key).await? {
        w.vmims[i] = m;
    }
    Ok(())
}

// ---------------------------------------------------- launcher pods

/// The VMIM condition that says why its target pod waits.
pub const TARGET_POD_CONDITION: &str = "TargetPodScheduled";

/// When `m` entered Scheduling.
fn scheduling_since(m: &VirtualMachineInstanceMigration) -> Option<Time> {
    m.status
        .as_ref()?
        .phase_transition_timestamps
        .iter()
        .rev()
        .find(|p| p.phase == MigrationPhase::Scheduling)
        .map(|p| p.phase_transition_timestamp.clone())
}

/// Launcher mode: the migration's target pod, made on first call. Some(node)
/// once it runs there; None while it is made or placed (a condition on the
/// VMIM says why it waits), or once the migration failed because of it.
async fn target_pod<B: Backend>(
    backend: &B,
    ls: &launcher_pod::LauncherSettings,
    w: &mut World,
    i: usize,
    pass: &mut Pass,
    t: &Time,
) -> Result<Option<String>, ControlError> {
    use launcher_pod::TargetStep;
    let m = &w.vmims[i];
    let key = views::vmim_key(m);
    let vmi = &w.vmis[&views::vmim_vmi_key(m)];
    let uid = m.metadata.uid.clone().unwrap_or_default();
    let name = launcher_pod::pod_name(&vmi.name_any(), &uid);
    let pod = w
        .pods
        .iter()
        .find(|p| p.namespace().as_deref() == Some(key.namespace.as_str()) && p.name_any() == name)
        .map(launcher_pod::PodView::of);
    let waited = scheduling_since(m)
        .map(|s| t.0.as_second() - s.0.as_second())
        .unwrap_or(0);
    let (reason, message) = match launcher_pod::target_step(pod.as_ref(), waited) {
        TargetStep::Ready { node } => return Ok(Some(node)),
        TargetStep::Wait => return Ok(None),
        TargetStep::Create => {
            let source = m
                .status
                .as_ref()
                .and_then(|s| s.migration_state.as_ref())
                .and_then(|s| s.source_node.clone())
                .unwrap_or_default();
            let source_view = w
                .nodes
                .iter()
                .find(|n| n.name_any() == source)
                .map(views::node_view);
            let role = launcher_pod::Role::Target {
                migration_uid: &uid,
                source_node: &source,
                required_labels: launcher_pod::target_required_labels(vmi, source_view.as_ref()),
            };
            match launcher_pod::launcher_pod(vmi, &role, ls) {
                Ok(pod) => {
                    match backend.create(&pod).await {
                        Ok(p) => {
                            pass.pods_created += 1;
                            tracing::info!(migration = %key, pod = %name, "target launcher pod created");
                            w.pods.push(p);
                        }
                        Err(BackendError::AlreadyExists { .. }) => {}
                        Err(e) => {
                            settle::<()>(Err(e), pass, "target launcher pod", &key)?;
                        }
                    }
                    return Ok(None);
                }
                Err(e) => (
                    "TargetPodFailed".to_owned(),
                    format!("cannot make the target pod: {e}"),
                ),
            }
        }
        TargetStep::Unschedulable { message } => {
            let mut next = m.clone();
            let st = next.status.get_or_insert_with(Default::default);
            let changed = set_condition(
                &mut st.conditions,
                VmiCondition {
                    type_: TARGET_POD_CONDITION.into(),
                    status: "False".into(),
                    reason: Some("Unschedulable".into()),
                    message: Some(message),
                    last_transition_time: Some(t.clone()),
                    ..Default::default()
                },
            );
            if changed {
                if let Some(v) =
                    write_status(backend, &w.vmims[i], &next, pass, "VMIM condition", &key).await?
                {
                    w.vmims[i] = v;
                }
            }
            return Ok(None);
        }
        TargetStep::Fail { reason, message } => (reason.to_owned(), message),
    };
    let mut next = w.vmims[i].clone();
    fail(&mut next, &reason, &message, t);
    if let Some(v) = write_status(backend, &w.vmims[i], &next, pass, "VMIM phase", &key).await? {
        w.vmims[i] = v;
    }
    Ok(None)
}

/// Launcher mode: every VMI's pods -> its status (node, phase, conditions,
/// active pods, volume status), and pods that no longer run it go.
async fn launchers<B: Backend>(
    backend: &B,
    ls: &launcher_pod::LauncherSettings,
    w: &mut World,
    pass: &mut Pass,
    t: &Time,
) -> Result<(), ControlError> {
    use launcher_pod::VmiAction;
    let keys: Vec<ObjectKey> = w.vmis.keys().cloned().collect();
    for key in keys {
        let vmi = w.vmis[&key].clone();
        let pods: Vec<launcher_pod::PodView> = launcher_pod::pods_of(&vmi, &w.pods)
            .into_iter()
            .map(launcher_pod::PodView::of)
            .collect();
        // The target pod of a migration that is under way; a final or
        // cancelled one's target goes.
        let in_flight = launcher_pod::in_flight_target(
            &vmi,
            w.vmims.iter().filter(|m| views::vmim_vmi_key(m) == key),
        );
        let source_pod = launcher_pod::launcher_pod(&vmi, &launcher_pod::Role::Source, ls);
        let actions =
            launcher_pod::vmi_actions(&vmi, &pods, in_flight.as_deref(), source_pod.as_ref().err());
        let claims: std::collections::BTreeMap<String, &PersistentVolumeClaim> = w
            .pvcs
            .iter()
            .filter(|c| c.namespace().as_deref() == Some(key.namespace.as_str()))
            .map(|c| (c.name_any(), c))
            .collect();
        let mut next = vmi.clone();
        let final_ = matches!(
            vmi.status.as_ref().and_then(|s| s.phase),
            Some(crate::api::VmiPhase::Succeeded | crate::api::VmiPhase::Failed)
        );
        if !final_ && vmi.metadata.deletion_timestamp.is_none() {
            let vs = launcher_pod::volume_status(&vmi, &claims);
            next.status
                .get_or_insert_with(Default::default)
                .volume_status = vs;
        }
        for a in actions {
            let st = next.status.get_or_insert_with(Default::default);
            match a {
                VmiAction::CreateSourcePod => {
                    // vmi_actions asks for a pod only when it could be built.
                    let Ok(pod) = &source_pod else {
                        continue;
                    };
                    match backend.create(pod).await {
                        Ok(p) => {
                            pass.pods_created += 1;
                            tracing::info!(vmi = %key, pod = %p.name_any(), "launcher pod created");
                            w.pods.push(p);
                        }
                        Err(BackendError::AlreadyExists { .. }) => {}
                        Err(e) => {
                            settle::<()>(Err(e), pass, "launcher pod", &key)?;
                            continue;
                        }
                    }
                    if matches!(st.phase, None | Some(crate::api::VmiPhase::Pending)) {
                        st.phase = Some(crate::api::VmiPhase::Scheduling);
                    }
                }
                VmiAction::Scheduled { node } => {
                    st.node_name = Some(node);
                    st.phase = Some(crate::api::VmiPhase::Scheduled);
                }
                VmiAction::Condition(c) => {
                    set_condition(
                        &mut st.conditions,
                        VmiCondition {
                            last_transition_time: Some(t.clone()),
                            ..c
                        },
                    );
                }
                VmiAction::End {
                    phase,
                    reason,
                    message,
                } => {
                    tracing::info!(vmi = %key, ?phase, %reason, %message, "VM ended");
                    st.phase = Some(phase);
                    set_condition(
                        &mut st.conditions,
                        VmiCondition {
                            type_: vm::READY_CONDITION.into(),
                            status: "False".into(),
                            reason: Some(reason),
                            message: Some(message),
                            last_transition_time: Some(t.clone()),
                            ..Default::default()
                        },
                    );
                }
                VmiAction::DeletePod { name } => {
                    let r = backend.delete::<Pod>(&key.namespace, &name).await;
                    if settle(r, pass, "launcher pod", &key)?.is_some() {
                        tracing::info!(vmi = %key, pod = %name, "launcher pod no longer runs the VM; deleted");
                        pass.pods_deleted += 1;
                    }
                }
                VmiAction::ActivePods(m) => st.active_pods = m,
                VmiAction::ClearEvacuation => st.evacuation_node_name = None,
            }
        }
        if next.status != vmi.status {
            if let Some(v) = write_status(backend, &vmi, &next, pass, "VMI status", &key).await? {
                w.vmis.insert(key, v);
            }
        }
    }
    Ok(())
}

// ------------------------------------------------- LiveMigratable

async fn live_migratable<B: Backend>(
    backend: &B,
    w: &mut World,
    pass: &mut Pass,
    t: &Time,
) -> Result<(), ControlError> {
    let node_views = w.node_views();
    let vmi_views: Vec<_> = w.vmis.values().map(views::vmi_view).collect();
    let mig_views: Vec<_> = w.vmims.iter().filter_map(views::migration_view).collect();
    let mut index = ClusterIndex::build(Snapshot {
        nodes: &node_views,
        vmis: &vmi_views,
        migrations: &mig_views,
    });
    let mut writes = Vec::new();
    for view in &vmi_views {
        if view.phase != policy::VmiPhase::Running || view.node.is_none() {
            continue;
        }
        let c = index.live_migratable(view).condition();
        let vmi = &w.vmis[&view.key];
        let mut next = vmi.clone();
        let st = next.status.get_or_insert_with(Default::default);
        let changed = set_condition(
            &mut st.conditions,
            VmiCondition {
                type_: c.type_.into(),
                status: c.status.into(),
                reason: c.reason.map(Into::into),
                message: c.message,
                last_transition_time: Some(t.clone()),
                ..Default::default()
            },
        );
        if changed {
            writes.push((view.key.clone(), next));
        }
    }
    drop(index);
    for (key, vmi) in writes {
        if let Some(v) =
            write_status(backend, &w.vmis[&key], &vmi, pass, "VMI condition", &key).await?
        {
            pass.conditions_written += 1;
            w.vmis.insert(key, v);
        }
    }
    Ok(())
}

// ---------------------------------------------------------- drain

async fn drain<B: Backend>(
    backend: &B,
    settings: &Settings,
    w: &mut World,
    pass: &mut Pass,
    now: jiff::Timestamp,
) -> Result<(), ControlError> {
    let node_views = w.node_views();
    let vmi_views: Vec<_> = w.vmis.values().map(views::vmi_view).collect();
    let mig_views: Vec<_> = w.vmims.iter().filter_map(views::migration_view).collect();
    let mut index = ClusterIndex::build(Snapshot {
        nodes: &node_views,
        vmis: &vmi_views,
        migrations: &mig_views,
    });
    let plan = policy::plan_evacuations(&mut index, settings.default_eviction_strategy);
    drop(index);
    // VMIMs not admitted yet are not in the policy's view; never create a
    // second evacuation next to one.
    let open: HashSet<ObjectKey> = w
        .vmims
        .iter()
        .filter(|m| {
            m.metadata.deletion_timestamp.is_none()
                && !m.status.as_ref().and_then(|s| s.phase).is_some_and(|p| {
                    matches!(p, MigrationPhase::Succeeded | MigrationPhase::Failed)
                })
        })
        .map(views::vmim_vmi_key)
        .collect();

    let mut reports: HashMap<String, DrainReport> = node_views
        .iter()
        .filter(|n| n.draining())
        .map(|n| (n.name.clone(), DrainReport::default()))
        .collect();
    for e in &plan.entries {
        let report = reports.entry(e.node.clone()).or_default();
        let (action, reason) = match &e.action {
            DrainAction::Evacuate => {
                report.evacuating.push(e.vmi.name.clone());
                if !open.contains(&e.vmi) {
                    create_evacuation(backend, &e.vmi, &e.node, pass, now).await?;
                }
                continue;
            }
            DrainAction::AlreadyMigrating { .. } => {
                report.evacuating.push(e.vmi.name.clone());
                continue;
            }
            DrainAction::Blocked(r) => ("Blocked", r.to_string()),
            DrainAction::External => (
                "External",
                "evictionStrategy External: left to an external controller".to_owned(),
            ),
            DrainAction::Stop => ("Stop", "the VMI is stopped by the drain".to_owned()),
        };
        report.blocking.push(protocol::DrainEntry {
            namespace: e.vmi.namespace.clone(),
            name: e.vmi.name.clone(),
            action: action.to_owned(),
            reason,
        });
    }
    for key in &plan.cancel {
        let r = backend
            .delete::<VirtualMachineInstanceMigration>(&key.namespace, &key.name)
            .await;
        if settle(r, pass, "VMIM (cancel evacuation)", key)?.is_some() {
            pass.evacuations_cancelled += 1;
        }
    }
    // Drain reports: written on draining nodes, removed from the others.
    for node in &w.nodes {
        let name = node.name_any();
        let want = reports
            .get(&name)
            .map(|r| serde_json::to_string(r).unwrap_or_default());
        let have = node.annotations().get(DRAIN_REPORT_ANNOTATION);
        if have == want.as_ref() {
            continue;
        }
        let want = want.clone();
        let r = be::modify::<B, Node>(backend, "", &name, move |n| {
            let a = n.annotations_mut();
            match &want {
                Some(v) if a.get(DRAIN_REPORT_ANNOTATION) != Some(v) => {
                    a.insert(DRAIN_REPORT_ANNOTATION.into(), v.clone());
                    true
                }
                None => a.remove(DRAIN_REPORT_ANNOTATION).is_some(),
                _ => false,
            }
        })
        .await;
        if settle(r, pass, "Node drain report", &name)?.is_some() {
            pass.drain_reports_written += 1;
        }
    }
    Ok(())
}

async fn create_evacuation<B: Backend>(
    backend: &B,
    vmi: &ObjectKey,
    node: &str,
    pass: &mut Pass,
    now: jiff::Timestamp,
) -> Result<(), ControlError> {
    // Deterministic within a second, so a retried pass does not create two;
    // a later evacuation of the same VMI (after a failed one) gets a new
    // name.
    let mut prefix = format!("{}-evacuation", vmi.name);
    prefix.truncate(230);
    let name = format!("{prefix}-{}", now.as_second());
    let m = VirtualMachineInstanceMigration {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(vmi.namespace.clone()),
            annotations: Some([(EVACUATION_ANNOTATION.to_owned(), node.to_owned())].into()),
            ..Default::default()
        },
        spec: VirtualMachineInstanceMigrationSpec {
            vmi_name: vmi.name.clone(),
        },
        status: None::<VirtualMachineInstanceMigrationStatus>,
    };
    match backend.create(&m).await {
        Ok(_) => {
            pass.evacuations_created += 1;
            Ok(())
        }
        Err(BackendError::AlreadyExists { .. }) => Ok(()),
        Err(source) => Err(ControlError::Write {
            what: "evacuation VMIM",
            key: format!("{}/{name}", vmi.namespace),
            source: Box::new(source),
        }),
    }
}

// ------------------------------------------------- VirtualMachines

/// KubeVirt's VM controller: each VM's run strategy decides whether its VMI
/// (same name) is created, adopted or deleted (`mignet_policy::vm`); the
/// VM's status follows its VMI; VMIs whose VM is gone are deleted (the lab
/// store has no garbage collector; on an API server this is harmless).
async fn virtual_machines<B: Backend>(
    backend: &B,
    w: &mut World,
    pass: &mut Pass,
    t: &Time,
) -> Result<(), ControlError> {
    use policy::vm::VmiAction;
    for i in 0..w.vms.len() {
        let vm = &w.vms[i];
        let key = vm::vm_key(vm);
        let decision =
            policy::vm::decide_vm(&vm::vm_view(vm), &vm::vmi_state(vm, w.vmis.get(&key)));
        let mut edit = decision.requests;
        match decision.action {
            VmiAction::None => {}
            VmiAction::Create => match backend.create(&vm::new_vmi(vm)).await {
                Ok(v) => {
                    pass.vmis_created += 1;
                    w.vmis.insert(key.clone(), v);
                }
                // Someone made one since the list: the next pass sees it.
                Err(BackendError::AlreadyExists { .. }) => pass.conflicts += 1,
                Err(source) => {
                    return Err(ControlError::Write {
                        what: "VMI of VirtualMachine",
                        key: key.to_string(),
                        source: Box::new(source),
                    })
                }
            },
            VmiAction::Adopt => {
                let owner = vm::owner_reference(vm);
                let r = be::modify::<B, VirtualMachineInstance>(
                    backend,
                    &key.namespace,
                    &key.name,
                    move |v| {
                        if vm::controller_of(v).is_some() {
                            return false;
                        }
                        v.metadata
                            .owner_references
                            .get_or_insert_with(Vec::new)
                            .push(owner.clone());
                        true
                    },
                )
                .await;
                if let Some(Some(v)) = settle(r, pass, "VMI owner reference", &key)? {
                    pass.vmis_adopted += 1;
                    w.vmis.insert(key.clone(), v);
                }
            }
            VmiAction::Delete => {
                let r = backend
                    .delete::<VirtualMachineInstance>(&key.namespace, &key.name)
                    .await;
                if settle(r, pass, "VMI of VirtualMachine", &key)?.is_some() {
                    pass.vmis_deleted += 1;
                    if edit.append_start {
                        // Its VMI is gone now: the Start that brings it
                        // back must not be lost to a conflicting write, so
                        // it is retried rather than left to the next pass
                        // (which would see a stopped VM and no request).
                        edit.append_start = false;
                        let r = be::modify_status::<B, VirtualMachine>(
                            backend,
                            &key.namespace,
                            &key.name,
                            |v| vm::append_start(v.status.get_or_insert_with(Default::default)),
                        )
                        .await;
                        if let Some(Some(v)) = settle(r, pass, "VM start request", &key)? {
                            w.vms[i] = v;
                        }
                    }
                }
            }
        }
        let vm = &w.vms[i];
        let next = vm::next_status(vm.status.as_ref(), &decision.status, edit, t);
        if vm.status.as_ref() != Some(&next) {
            let mut updated = vm.clone();
            updated.status = Some(next);
            if let Some(v) =
                write_status(backend, vm, &updated, pass, "VirtualMachine status", &key).await?
            {
                pass.vm_statuses_written += 1;
                w.vms[i] = v;
            }
        }
    }
    let vms: Vec<(ObjectKey, String)> = w
        .vms
        .iter()
        .map(|v| (vm::vm_key(v), v.metadata.uid.clone().unwrap_or_default()))
        .collect();
    let owned: Vec<_> = w.vmis.values().filter_map(vm::owned_vmi).collect();
    for key in policy::vm::collect_orphans(&vms, &owned) {
        let r = backend
            .delete::<VirtualMachineInstance>(&key.namespace, &key.name)
            .await;
        if settle(r, pass, "VMI of a deleted VirtualMachine", &key)?.is_some() {
            tracing::info!(vmi = %key, "its VirtualMachine is gone; deleting the VMI");
            pass.vmis_deleted += 1;
        }
    }
    Ok(())
}
