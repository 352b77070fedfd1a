//! Names and payloads shared by the migration controller and the node agent
//! (see the protocol in the module docs of [`crate::backend`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

use crate::api::{
    MigrationPhase, PhaseTransitionTimestamp, VirtualMachineInstanceMigration, VmiCondition,
};

/// Every launcher pod carries this label; its value is the pod's role
/// (`source` or `target`). The controller watches only these pods.
pub const LAUNCHER_LABEL: &str = "mignet.io/launcher";

/// Node label the agent sets: `true` when it runs on the node (KubeVirt's
/// label), so VMs only land where a migration endpoint exists.
pub const SCHEDULABLE_LABEL: &str = "kubevirt.io/schedulable";

/// Node label the agent sets: `true` when KVM really works there.
pub const KVM_LABEL: &str = "mignet.io/kvm";

/// Finalizer the controller puts on every admitted VMIM: a delete only
/// marks it, so a running migration can be aborted and its outcome
/// recorded before the object goes.
pub const FINALIZER: &str = "mignet.io/migration";

/// VMIM annotation with the live progress of a running migration, written
/// by the source agent (JSON [`Progress`]). An annotation, not status, so
/// it never races the phase writes on the status subresource.
pub const PROGRESS_ANNOTATION: &str = "mignet.io/progress";

/// VMIM annotation the target agent writes when the incoming side of a
/// migration ends without the guest running there (why, in words). From
/// the source a dead target is only a broken pipe; the source agent adds
/// this to the failure reason it records.
pub const TARGET_FAILURE_ANNOTATION: &str = "mignet.io/target-failure";

/// Marks a VMIM created for a node drain; the value is the drained node.
/// KubeVirt's own annotation key, so the policy gives it evacuation
/// priority.
pub const EVACUATION_ANNOTATION: &str = "kubevirt.io/evacuationMigration";

/// Node annotation: what the drain could not move (JSON [`DrainReport`]),
/// written by the controller while the node is draining, removed on
/// uncordon.
pub const DRAIN_REPORT_ANNOTATION: &str = "mignet.io/drain-report";

/// The taint a drain puts on the node (KubeVirt's `nodeDrainTaintKey`).
pub const DRAIN_TAINT_KEY: &str = "kubevirt.io/drain";

/// VMI condition type the controller keeps current.
pub const LIVE_MIGRATABLE: &str = "LiveMigratable";

/// VMIM condition explaining why it still waits in Pending.
pub const PENDING_CONDITION: &str = "Pending";

/// VMIM condition explaining why it was refused / failed.
pub const FAILED_CONDITION: &str = "Failed";

/// Failure reason recorded when a migration was cancelled by deleting its
/// VMIM.
pub const ABORTED_BY_USER: &str = "migration aborted by user";

/// Enter `phase`: set it and append its transition timestamp (the
/// controller and the agents step a VMIM alike).
pub fn enter_phase(m: &mut VirtualMachineInstanceMigration, phase: MigrationPhase, now: Time) {
    let st = m.status.get_or_insert_with(Default::default);
    st.phase = Some(phase);
    st.phase_transition_timestamps
        .push(PhaseTransitionTimestamp {
            phase,
            phase_transition_timestamp: now,
        });
}

/// Progress of a running migration, as the source agent last sampled it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub transferred_bytes: u64,
    pub remaining_bytes: u64,
    pub total_bytes: u64,
    /// Transfer rate over the last sample interval.
    pub bytes_per_second: u64,
    /// When sampled (RFC 3339).
    pub updated: String,
}

/// One VMI a drain could not (yet) evacuate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainEntry {
    pub namespace: String,
    pub name: String,
    /// `Blocked`, `External` or `Stop` (per its evictionStrategy).
    pub action: String,
    pub reason: String,
}

/// The drain report of one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DrainReport {
    /// VMIs with an evacuation migration (started, pending or done).
    pub evacuating: Vec<String>,
    /// VMIs that block the drain or must be stopped.
    pub blocking: Vec<DrainEntry>,
}

/// Set a condition by type; the transition time moves only when the status
/// changes. Returns whether anything changed.
pub fn set_condition(conds: &mut Vec<VmiCondition>, c: VmiCondition) -> bool {
    match conds.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) if x.status == c.status && x.reason == c.reason && x.message == c.message => false,
        Some(x) => {
            let transition = if x.status == c.status {
                x.last_transition_time.clone()
            } else {
                c.last_transition_time.clone()
            };
            *x = VmiCondition {
                last_transition_time: transition,
                ..c
            };
            true
        }
        None => {
            conds.push(c);
            true
        }
    }
}

/// Final phase Failed with a `Failed` condition saying why (the
/// controller's refusals and the agents' recorded failures alike).
pub fn fail(m: &mut VirtualMachineInstanceMigration, reason: &str, message: &str, t: &Time) {
    enter_phase(m, MigrationPhase::Failed, t.clone());
    let st = m.status.get_or_insert_with(Default::default);
    set_condition(
        &mut st.conditions,
        VmiCondition {
            type_: FAILED_CONDITION.into(),
            status: "True".into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_transition_time: Some(t.clone()),
            ..Default::default()
        },
    );
    st.conditions.retain(|c| c.type_ != PENDING_CONDITION);
}
