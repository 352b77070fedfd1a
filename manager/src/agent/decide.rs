//! What the node agent must do, decided from the listed VMIs and VMIMs and
//! the agent's own state: pure (no I/O, no clock), so each situation of the
//! controller <-> agent protocol ([`crate::backend`]) is a table row.
//!
//! Two steps per pass, each a list of actions for
//! [`super::run_loop`] to carry out in order:
//! - [`decide_vms`]: run the VMIs whose `status.nodeName` is this node,
//!   stop the VMs whose VMI is gone or has left;
//! - [`decide_migrations`]: target side (prepare, publish, TargetReady),
//!   source side (migrate), aborts, and the ends a previous agent left
//!   unrecorded.
//!
//! The migrations are decided after the VM actions ran: whether the source
//! VM runs here is the outcome of a start (an attach finds no launcher yet,
//! a start fails), not something to predict.

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;

use super::params::MigrationParams;
use super::vm::VmRequest;
use crate::api::{
    MigrationPhase, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstanceMigrationState, VmiPhase,
};
use crate::launcher::request::vm_request;

/// The agent's own state, as the decision sees it.
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// VMs the runner holds (keys `namespace/name`); a VM whose launcher
    /// ended has been forgotten already.
    pub vms: BTreeSet<String>,
    /// Migrations with a source task (uid -> its task).
    pub sources: BTreeMap<String, SourceView>,
    /// Migrations with a target task (uid -> the VM key it receives).
    pub targets: BTreeMap<String, String>,
    /// Migrations whose task has finished here (uids): never started twice,
    /// whatever a stale read says.
    pub done: BTreeSet<String>,
}

/// A running source task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceView {
    pub key: String,
    /// Its cancel signal has not been sent yet.
    pub cancellable: bool,
}

impl Local {
    /// A migration task of this agent works on VM `key`: the VM is the
    /// task's, not the lifecycle's.
    fn busy(&self, key: &str) -> bool {
        self.sources.values().any(|t| t.key == key) || self.targets.values().any(|k| k == key)
    }
}

/// What to do about the VMs of this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmAction {
    /// Run the VMI's VM (launcher mode: attach to its launcher's QEMU);
    /// `scheduled`: then move the VMI from Scheduled to Running.
    Start {
        namespace: String,
        name: String,
        request: VmRequest,
        scheduled: bool,
    },
    /// The VMI is gone or runs elsewhere now.
    Stop { key: String },
}

/// What to do about one migration (by uid, in the order of the listing).
#[derive(Debug, Clone, PartialEq)]
pub enum MigrationAction {
    /// Drop the target task: the prepared destination is torn down.
    TearDownTarget { uid: String },
    /// Abort requested while migrating: signal the source task.
    CancelSource { uid: String },
    /// Abort requested before the source started: record it as aborted.
    RecordAbortBeforeStart { uid: String },
    /// Prepare the destination in a target task (after moving the VMIM
    /// from Scheduled to PreparingTarget when `from_scheduled`).
    StartTarget {
        uid: String,
        request: VmRequest,
        from_scheduled: bool,
        /// The target launcher pod (launcher mode), in the VMIM's namespace.
        namespace: String,
        target_pod: String,
        params: MigrationParams,
    },
    /// Migrate VM `key` to the published target in a source task.
    StartSource {
        uid: String,
        key: String,
        state: VirtualMachineInstanceMigrationState,
        params: MigrationParams,
    },
    /// Record the migration as failed.
    RecordFailure { uid: String, reason: String },
    /// Ours, running, no task: the previous agent died mid-way; end what
    /// QEMU has left and record the outcome.
    RecoverOrphanSource { uid: String, key: String },
    /// The previous agent recorded the success on the VMI only: finish the
    /// record and stop the paused source VM `key`.
    RecordCompletion {
        uid: String,
        key: String,
        target: String,
    },
}

/// The key of a VMI's VM: `namespace/name`.
pub fn key_of(vmi: &VirtualMachineInstance) -> String {
    format!("{}/{}", vmi.namespace().unwrap_or_default(), vmi.name_any())
}

/// Starts for the VMIs of node `me` whose VM is not held yet, then stops
/// for the held VMs whose VMI is gone or left. A VM a migration task works
/// on is the task's: neither started nor stopped here.
pub fn decide_vms(vmis: &[VirtualMachineInstance], me: &str, local: &Local) -> Vec<VmAction> {
    let mut actions = Vec::new();
    for vmi in vmis {
        let st = vmi.status.clone().unwrap_or_default();
        let key = key_of(vmi);
        let here = st.node_name.as_deref() == Some(me)
            && matches!(st.phase, Some(VmiPhase::Scheduled | VmiPhase::Running))
            && vmi.metadata.deletion_timestamp.is_none();
        if !here || local.vms.contains(&key) || local.busy(&key) {
            continue;
        }
        actions.push(VmAction::Start {
            namespace: vmi.namespace().unwrap_or_default(),
            name: vmi.name_any(),
            request: vm_request(vmi),
            scheduled: st.phase == Some(VmiPhase::Scheduled),
        });
    }
    for key in &local.vms {
        if local.busy(key) {
            continue;
        }
        let vmi = vmis.iter().find(|v| key_of(v) == *key);
        let keep = vmi.is_some_and(|v| {
            let st = v.status.clone().unwrap_or_default();
            let ms = st.migration_state.unwrap_or_default();
            st.node_name.as_deref() == Some(me)
                // Received here, the source has not written nodeName yet.
                || (ms.target_node.as_deref() == Some(me) && ms.failed != Some(true))
        });
        if !keep {
            actions.push(VmAction::Stop { key: key.clone() });
        }
    }
    actions
}

/// The VMIM's phase (`None` while it has no status).
pub fn phase_of(m: &VirtualMachineInstanceMigration) -> Option<MigrationPhase> {
    m.status.as_ref().and_then(|s| s.phase)
}

fn state_for<'a>(
    vmi: &'a VirtualMachineInstance,
    uid: &str,
) -> Option<&'a VirtualMachineInstanceMigrationState> {
    vmi.status
        .as_ref()
        .and_then(|s| s.migration_state.as_ref())
        .filter(|s| s.migration_uid.as_deref() == Some(uid))
}

/// What node `me` does for each migration, each action with its VMIM.
/// `params` is `None` while the migration config cannot be read: nothing
/// new starts (prepare, migrate); aborts, failures and orphans need no
/// parameters and go on.
pub fn decide_migrations<'a>(
    vmis: &[VirtualMachineInstance],
    vmims: &'a [VirtualMachineInstanceMigration],
    me: &str,
    local: &Local,
    params: Option<&MigrationParams>,
) -> Vec<(&'a VirtualMachineInstanceMigration, MigrationAction)> {
    vmims
        .iter()
        .flat_map(|m| {
            decide_migration(vmis, m, me, local, params)
                .into_iter()
                .map(move |a| (m, a))
        })
        .collect()
}

fn decide_migration(
    vmis: &[VirtualMachineInstance],
    m: &VirtualMachineInstanceMigration,
    me: &str,
    local: &Local,
    params: Option<&MigrationParams>,
) -> Vec<MigrationAction> {
    use MigrationAction as A;
    let Some(phase) = phase_of(m) else {
        return vec![];
    };
    let uid = m.uid().unwrap_or_default();
    let has_target = local.targets.contains_key(&uid);
    let has_source = local.sources.contains_key(&uid);
    if phase == MigrationPhase::Failed {
        // Over: a prepared destination that never received is torn down.
        return if has_target {
            vec![A::TearDownTarget { uid }]
        } else {
            vec![]
        };
    }
    // Succeeded: the target task adopts the VM once it sees it running,
    // which may be a moment after the source recorded success: let it.
    if matches!(phase, MigrationPhase::Succeeded | MigrationPhase::Pending)
        || local.done.contains(&uid)
    {
        return vec![];
    }
    let ns = m.namespace().unwrap_or_default();
    let Some(vmi) = vmis
        .iter()
        .find(|v| v.namespace().as_deref() == Some(ns.as_str()) && v.name_any() == m.spec.vmi_name)
    else {
        return vec![];
    };
    let Some(ms) = state_for(vmi, &uid) else {
        return vec![];
    };
    let key = key_of(vmi);
    let is_target = ms.target_node.as_deref() == Some(me);
    // The source is the node the migration left from, not the VMI's
    // current nodeName: on success the source moves nodeName to the target
    // before the VMIM reaches Succeeded, and the target agent must not then
    // mistake itself for an orphaned source (it would record a failure for
    // a completed migration and stop the VM it just received).
    let is_source = match ms.source_node.as_deref() {
        Some(src) => src == me,
        None => vmi.status.as_ref().and_then(|s| s.node_name.as_deref()) == Some(me),
    };

    if ms.abort_requested == Some(true) && ms.abort_status.is_none() {
        let mut actions = Vec::new();
        if is_target && phase < MigrationPhase::Running && has_target {
            actions.push(A::TearDownTarget { uid: uid.clone() });
        }
        if is_source {
            match local.sources.get(&uid) {
                Some(t) if t.cancellable => actions.push(A::CancelSource { uid }),
                Some(_) => {}
                None if phase < MigrationPhase::Running => {
                    actions.push(A::RecordAbortBeforeStart { uid })
                }
                None => {}
            }
        }
        return actions;
    }

    let action = match phase {
        MigrationPhase::Scheduled | MigrationPhase::PreparingTarget
            if is_target && ms.target_node_address.is_none() && !has_target =>
        {
            params.map(|params| A::StartTarget {
                uid,
                request: vm_request(vmi),
                from_scheduled: phase == MigrationPhase::Scheduled,
                namespace: ns,
                target_pod: ms.target_pod.clone().unwrap_or_default(),
                params: params.clone(),
            })
        }
        MigrationPhase::TargetReady
            if is_source && ms.target_node_address.is_some() && !has_source =>
        {
            params.map(|params| {
                if local.vms.contains(&key) {
                    A::StartSource {
                        uid,
                        key,
                        state: ms.clone(),
                        params: params.clone(),
                    }
                } else {
                    A::RecordFailure {
                        uid,
                        reason: format!("VM {key} is not running on {me}"),
                    }
                }
            })
        }
        // Ours, in flight, but no task: this agent restarted mid-way.
        MigrationPhase::Running if is_source && ms.completed != Some(true) && !has_source => {
            Some(A::RecoverOrphanSource { uid, key })
        }
        // The previous agent recorded the end on the VMI and died before
        // the VMIM's final phase (the two writes of a recorded end): finish
        // the record, or the VMIM stays Running for good.
        MigrationPhase::Running if is_source && ms.completed == Some(true) && !has_source => {
            Some(A::RecordCompletion {
                uid,
                key,
                target: ms.target_node.clone().unwrap_or_default(),
            })
        }
        // The prepared destination died with the previous agent.
        MigrationPhase::PreparingTarget | MigrationPhase::TargetReady
            if is_target && !has_target =>
        {
            Some(A::RecordFailure {
                uid,
                reason: format!("target agent on {me} restarted before the migration started"),
            })
        }
        _ => None,
    };
    action.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        Memory, MigrationAbortStatus, VirtualMachineInstanceMigrationSpec,
        VirtualMachineInstanceMigrationStatus, VirtualMachineInstanceSpec,
        VirtualMachineInstanceStatus,
    };
    use MigrationPhase::*;

    const KEY: &str = "lab/vm1";

    /// VMI `lab/vm1` on `node` in `phase`, carrying `ms` (if any).
    fn vmi(
        node: &str,
        phase: VmiPhase,
        ms: Option<VirtualMachineInstanceMigrationState>,
    ) -> VirtualMachineInstance {
        let mut v = VirtualMachineInstance::new("vm1", VirtualMachineInstanceSpec::default());
        v.metadata.namespace = Some("lab".into());
        v.status = Some(VirtualMachineInstanceStatus {
            node_name: Some(node.into()),
            phase: Some(phase),
            migration_state: ms,
            ..Default::default()
        });
        v
    }

    /// Migration `u1` of `lab/vm1` from n1 to n2, target pod `tp`.
    fn state() -> VirtualMachineInstanceMigrationState {
        VirtualMachineInstanceMigrationState {
            migration_uid: Some("u1".into()),
            source_node: Some("n1".into()),
            target_node: Some("n2".into()),
            target_pod: Some("tp".into()),
            ..Default::default()
        }
    }

    fn vmim(phase: Option<MigrationPhase>) -> VirtualMachineInstanceMigration {
        let mut m = VirtualMachineInstanceMigration::new(
            "m1",
            VirtualMachineInstanceMigrationSpec {
                vmi_name: "vm1".into(),
            },
        );
        m.metadata.namespace = Some("lab".into());
        m.metadata.uid = Some("u1".into());
        m.status = Some(VirtualMachineInstanceMigrationStatus {
            phase,
            ..Default::default()
        });
        m
    }

    fn local(vms: &[&str]) -> Local {
        Local {
            vms: vms.iter().map(|k| k.to_string()).collect(),
            ..Default::default()
        }
    }

    fn source_task(cancellable: bool) -> BTreeMap<String, SourceView> {
        let view = SourceView {
            key: KEY.into(),
            cancellable,
        };
        [("u1".to_string(), view)].into()
    }

    fn target_task() -> BTreeMap<String, String> {
        [("u1".to_string(), KEY.to_string())].into()
    }

    /// An action in a word (and its one telling detail).
    fn vm_word(a: &VmAction) -> String {
        match a {
            VmAction::Start { scheduled, .. } => format!("Start(scheduled={scheduled})"),
            VmAction::Stop { key } => format!("Stop({key})"),
        }
    }

    fn migration_word(a: &MigrationAction) -> String {
        use MigrationAction as A;
        match a {
            A::TearDownTarget { .. } => "TearDownTarget".into(),
            A::CancelSource { .. } => "CancelSource".into(),
            A::RecordAbortBeforeStart { .. } => "RecordAbortBeforeStart".into(),
            A::StartTarget { from_scheduled, .. } => {
                format!("StartTarget(from_scheduled={from_scheduled})")
            }
            A::StartSource { .. } => "StartSource".into(),
            A::RecordFailure { reason, .. } => format!("RecordFailure({reason})"),
            A::RecoverOrphanSource { .. } => "RecoverOrphanSource".into(),
            A::RecordCompletion { target, .. } => format!("RecordCompletion({target})"),
        }
    }

    /// What, node `me`, the VMIs, the agent's state, the actions wanted.
    type VmRow = (
        &'static str,
        &'static str,
        Vec<VirtualMachineInstance>,
        Local,
        &'static [&'static str],
    );

    #[test]
    fn vm_actions_follow_the_vmis_of_this_node() {
        let busy_source = || Local {
            sources: source_task(true),
            ..local(&[])
        };
        let busy_target = || Local {
            targets: target_task(),
            ..local(&[KEY])
        };
        let deleted = || {
            let mut v = vmi("n1", VmiPhase::Running, None);
            let t = k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap();
            v.metadata.deletion_timestamp =
                Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(t));
            v
        };
        let received = |failed| {
            let ms = VirtualMachineInstanceMigrationState { failed, ..state() };
            vmi("n1", VmiPhase::Running, Some(ms))
        };
        #[rustfmt::skip]
        let rows: Vec<VmRow> = vec![
            ("scheduled here, not held: start, then Running", "n1",
             vec![vmi("n1", VmiPhase::Scheduled, None)], local(&[]), &["Start(scheduled=true)"]),
            ("running here, not held (agent restart): start", "n1",
             vec![vmi("n1", VmiPhase::Running, None)], local(&[]), &["Start(scheduled=false)"]),
            ("running here, held: nothing", "n1",
             vec![vmi("n1", VmiPhase::Running, None)], local(&[KEY]), &[]),
            ("another node's VMI: ignored", "n2",
             vec![vmi("n1", VmiPhase::Running, None)], local(&[]), &[]),
            ("being deleted: not started", "n1",
             vec![deleted()], local(&[]), &[]),
            ("pending: not started", "n1",
             vec![vmi("n1", VmiPhase::Pending, None)], local(&[]), &[]),
            ("failed: not started", "n1",
             vec![vmi("n1", VmiPhase::Failed, None)], local(&[]), &[]),
            ("a migration task has the VM: not started", "n1",
             vec![vmi("n1", VmiPhase::Running, None)], busy_source(), &[]),
            ("held, VMI gone: stop", "n1",
             vec![], local(&[KEY]), &["Stop(lab/vm1)"]),
            ("held, VMI on another node: stop", "n1",
             vec![vmi("n2", VmiPhase::Running, None)], local(&[KEY]), &["Stop(lab/vm1)"]),
            ("held, VMI gone, a migration task has it: kept", "n1",
             vec![], busy_target(), &[]),
            ("received here, nodeName not yet moved: kept", "n2",
             vec![received(None)], local(&[KEY]), &[]),
            ("received here but the migration failed: stop", "n2",
             vec![received(Some(true))], local(&[KEY]), &["Stop(lab/vm1)"]),
        ];
        for (what, me, vmis, local, want) in rows {
            let got: Vec<String> = decide_vms(&vmis, me, &local).iter().map(vm_word).collect();
            assert_eq!(got, want, "{what}");
        }
    }

    /// One migration situation: node `me`, the VMIM's phase, the VMI's
    /// migrationState (from [`state`]), the agent's state, whether the
    /// config is readable, and what must happen.
    struct Row {
        what: &'static str,
        me: &'static str,
        phase: Option<MigrationPhase>,
        ms: fn(&mut VirtualMachineInstanceMigrationState),
        local: Local,
        params: bool,
        want: &'static [&'static str],
    }

    fn same(_: &mut VirtualMachineInstanceMigrationState) {}

    fn addressed(ms: &mut VirtualMachineInstanceMigrationState) {
        ms.target_node_address = Some("10.0.0.2:4000".into());
    }

    fn abort(ms: &mut VirtualMachineInstanceMigrationState) {
        ms.target_node_address = Some("10.0.0.2:4000".into());
        ms.abort_requested = Some(true);
    }

    #[test]
    fn migration_actions_follow_the_protocol() {
        let row = |what, me, phase, ms, local, want| Row {
            what,
            me,
            phase,
            ms,
            local,
            params: true,
            want,
        };
        let with_target = || Local {
            targets: target_task(),
            ..local(&[])
        };
        let with_source = |cancellable| Local {
            sources: source_task(cancellable),
            ..local(&[KEY])
        };
        let done = || Local {
            done: ["u1".to_string()].into(),
            ..local(&[KEY])
        };
        let restarted_target =
            &["RecordFailure(target agent on n2 restarted before the migration started)"];
        #[rustfmt::skip]
        let rows = vec![
            // Not the agents' turn, or over.
            row("no phase yet", "n2", None, same, local(&[]), &[]),
            row("pending", "n2", Some(Pending), same, local(&[]), &[]),
            row("scheduling", "n2", Some(Scheduling), same, local(&[]), &[]),
            row("failed: a prepared destination is torn down", "n2", Some(Failed), same, with_target(), &["TearDownTarget"]),
            row("failed, nothing prepared", "n2", Some(Failed), same, local(&[]), &[]),
            row("succeeded: the target task adopts on its own", "n2", Some(Succeeded), addressed, with_target(), &[]),
            row("finished here: a stale read starts nothing", "n1", Some(TargetReady), addressed, done(), &[]),
            row("another uid on the VMI", "n2", Some(Scheduled), |ms| ms.migration_uid = Some("u0".into()), local(&[]), &[]),
            row("neither source nor target", "n3", Some(TargetReady), addressed, local(&[KEY]), &[]),
            // Target side.
            row("target, scheduled, no address: prepare", "n2", Some(Scheduled), same, local(&[]), &["StartTarget(from_scheduled=true)"]),
            row("target, preparing, no address, no task: prepare again", "n2", Some(PreparingTarget), same, local(&[]), &["StartTarget(from_scheduled=false)"]),
            row("target, preparing, task running", "n2", Some(PreparingTarget), same, with_target(), &[]),
            row("target, preparing with address, no task: restarted", "n2", Some(PreparingTarget), addressed, local(&[]), restarted_target),
            row("target, target ready, no task: restarted", "n2", Some(TargetReady), addressed, local(&[]), restarted_target),
            row("target, target ready, task waiting", "n2", Some(TargetReady), addressed, with_target(), &[]),
            row("target, running: the source's turn", "n2", Some(Running), addressed, with_target(), &[]),
            // Source side.
            row("source, target ready with address: migrate", "n1", Some(TargetReady), addressed, local(&[KEY]), &["StartSource"]),
            row("source, target ready, VM not here", "n1", Some(TargetReady), addressed, local(&[]), &["RecordFailure(VM lab/vm1 is not running on n1)"]),
            row("source, target ready, task running", "n1", Some(TargetReady), addressed, with_source(true), &[]),
            row("source, target ready without address: wait", "n1", Some(TargetReady), same, local(&[KEY]), &[]),
            row("source, scheduled: the target's turn", "n1", Some(Scheduled), same, local(&[KEY]), &[]),
            row("source by nodeName when sourceNode is unset", "n1", Some(TargetReady), |ms| { addressed(ms); ms.source_node = None }, local(&[KEY]), &["StartSource"]),
            row("source, running, task running", "n1", Some(Running), addressed, with_source(true), &[]),
            row("source, running, no task: orphan", "n1", Some(Running), addressed, local(&[KEY]), &["RecoverOrphanSource"]),
            row("source, running, completed on the VMI, no task: finish the record", "n1", Some(Running), |ms| { addressed(ms); ms.completed = Some(true) }, local(&[KEY]), &["RecordCompletion(n2)"]),
            row("target after success (nodeName moved to it): not an orphaned source", "n2", Some(Running), |ms| { addressed(ms); ms.completed = Some(true) }, local(&[KEY]), &[]),
            // Abort requested.
            row("abort, target preparing: tear down", "n2", Some(PreparingTarget), abort, with_target(), &["TearDownTarget"]),
            row("abort, target ready: tear down", "n2", Some(TargetReady), abort, with_target(), &["TearDownTarget"]),
            row("abort, target running: the stream decides", "n2", Some(Running), abort, with_target(), &[]),
            row("abort, target, nothing prepared: no restart failure", "n2", Some(TargetReady), abort, local(&[]), &[]),
            row("abort, source migrating: cancel", "n1", Some(Running), abort, with_source(true), &["CancelSource"]),
            row("abort, source already cancelled: once", "n1", Some(Running), abort, with_source(false), &[]),
            row("abort, source not started (target ready)", "n1", Some(TargetReady), abort, local(&[KEY]), &["RecordAbortBeforeStart"]),
            row("abort, source not started (scheduled)", "n1", Some(Scheduled), abort, local(&[KEY]), &["RecordAbortBeforeStart"]),
            row("abort, source running, no task: no orphan recovery", "n1", Some(Running), abort, local(&[KEY]), &[]),
            row("abort answered already: the orphan path again", "n1", Some(Running), |ms| { abort(ms); ms.abort_status = Some(MigrationAbortStatus::Failed) }, local(&[KEY]), &["RecoverOrphanSource"]),
            row("abort, source and target on one node: both halves", "n1", Some(TargetReady), |ms| { abort(ms); ms.target_node = Some("n1".into()) }, with_target(), &["TearDownTarget", "RecordAbortBeforeStart"]),
            // No readable config: nothing new starts, the rest goes on.
            Row { params: false, ..row("no config: no prepare", "n2", Some(Scheduled), same, local(&[]), &[]) },
            Row { params: false, ..row("no config: no migrate", "n1", Some(TargetReady), addressed, local(&[KEY]), &[]) },
            Row { params: false, ..row("no config: aborts go on", "n1", Some(TargetReady), abort, local(&[KEY]), &["RecordAbortBeforeStart"]) },
            Row { params: false, ..row("no config: orphans go on", "n1", Some(Running), addressed, local(&[KEY]), &["RecoverOrphanSource"]) },
            Row { params: false, ..row("no config: restart failures go on", "n2", Some(TargetReady), addressed, local(&[]), restarted_target) },
        ];
        let params = MigrationParams::default();
        let count = rows.len();
        for r in rows {
            let mut ms = state();
            (r.ms)(&mut ms);
            let vmis = [vmi("n1", VmiPhase::Running, Some(ms))];
            let vmims = [vmim(r.phase)];
            let params = r.params.then_some(&params);
            let got: Vec<String> = decide_migrations(&vmis, &vmims, r.me, &r.local, params)
                .iter()
                .map(|(_, a)| migration_word(a))
                .collect();
            assert_eq!(got, r.want, "{}", r.what);
        }
        assert_eq!(count, 42);
    }

    #[test]
    fn a_migration_of_a_vmi_not_listed_is_left_alone() {
        let vmims = [vmim(Some(Scheduled))];
        let params = MigrationParams::default();
        assert!(decide_migrations(&[], &vmims, "n2", &local(&[]), Some(&params)).is_empty());
    }

    #[test]
    fn started_tasks_carry_what_they_need() {
        let mut ms = state();
        let vmis = [vmi("n1", VmiPhase::Running, Some(ms.clone()))];
        let vmims = [vmim(Some(Scheduled))];
        let params = MigrationParams {
            downtime_limit_ms: 7,
            ..Default::default()
        };
        let got = decide_migrations(&vmis, &vmims, "n2", &local(&[]), Some(&params));
        assert_eq!(got.len(), 1);
        assert!(std::ptr::eq(got[0].0, &vmims[0]));
        assert_eq!(
            got[0].1,
            MigrationAction::StartTarget {
                uid: "u1".into(),
                request: vm_request(&vmis[0]),
                from_scheduled: true,
                namespace: "lab".into(),
                target_pod: "tp".into(),
                params: params.clone(),
            }
        );

        addressed(&mut ms);
        let vmis = [vmi("n1", VmiPhase::Running, Some(ms.clone()))];
        let vmims = [vmim(Some(TargetReady))];
        let got = decide_migrations(&vmis, &vmims, "n1", &local(&[KEY]), Some(&params));
        assert_eq!(
            got.into_iter().map(|(_, a)| a).collect::<Vec<_>>(),
            [MigrationAction::StartSource {
                uid: "u1".into(),
                key: KEY.into(),
                state: ms,
                params,
            }]
        );
    }

    #[test]
    fn a_started_vm_is_the_vmi_spec() {
        let mut v = vmi("n1", VmiPhase::Scheduled, None);
        v.spec.domain.memory = Some(Memory {
            guest: Some("512Mi".into()),
        });
        let got = decide_vms(&[v.clone()], "n1", &local(&[]));
        assert_eq!(
            got,
            [VmAction::Start {
                namespace: "lab".into(),
                name: "vm1".into(),
                request: vm_request(&v),
                scheduled: true,
            }]
        );
    }
}
