//! Names and payloads shared by the migration controller and the node agent
//! (see the protocol in the module docs of [`crate::backend`]).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};

use crate::api::{
    MigrationPhase, PhaseTransitionTimestamp, VirtualMachineInstance,
    VirtualMachineInstanceMigration, VmiCondition,
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

/// VMI label: the node in `status.nodeName` (KubeVirt's `NodeNameLabel`).
/// The controller keeps it equal to the status; each agent lists its VMIs
/// by it, as virt-handler does.
pub const VMI_NODE_LABEL: &str = "kubevirt.io/nodeName";

/// VMI label: `status.migrationState.targetNode` (KubeVirt's
/// `MigrationTargetNodeNameLabel`), kept by the controller; the target
/// agent finds the VMIs it receives by it. It stays after the migration
/// ends, until the next migration's target replaces it, as in KubeVirt.
pub const VMI_TARGET_NODE_LABEL: &str = "kubevirt.io/migrationTargetNodeName";

/// VMIM labels: the source and target node of a started migration (from
/// its `status.migrationState`), kept by the controller, so each agent
/// lists only the migrations it takes part in. KubeVirt has no such label
/// (virt-handler does not read VMIMs); our agents write VMIM phases.
pub const VMIM_SOURCE_NODE_LABEL: &str = "mignet.io/migration-source-node";
pub const VMIM_TARGET_NODE_LABEL: &str = "mignet.io/migration-target-node";

/// The node labels `vmi` should carry, as derived from its status: each
/// key with its value, `None` = absent. A node name that cannot be a label
/// value (over 63 characters) gives no label; an agent on such a node reads
/// everything ([`crate::agent::observe`]).
pub fn vmi_node_labels(vmi: &VirtualMachineInstance) -> [(&'static str, Option<String>); 2] {
    let st = vmi.status.as_ref();
    let node = st.and_then(|s| s.node_name.clone());
    let target = st
        .and_then(|s| s.migration_state.as_ref())
        .and_then(|m| m.target_node.clone());
    [
        (VMI_NODE_LABEL, node.filter(|n| label_worthy(n))),
        (VMI_TARGET_NODE_LABEL, target.filter(|n| label_worthy(n))),
    ]
}

/// The node labels `m` should carry, from its `status.migrationState`
/// (written by the controller when it starts the migration).
pub fn vmim_node_labels(
    m: &VirtualMachineInstanceMigration,
) -> [(&'static str, Option<String>); 2] {
    let ms = m.status.as_ref().and_then(|s| s.migration_state.as_ref());
    let source = ms.and_then(|m| m.source_node.clone());
    let target = ms.and_then(|m| m.target_node.clone());
    [
        (VMIM_SOURCE_NODE_LABEL, source.filter(|n| label_worthy(n))),
        (VMIM_TARGET_NODE_LABEL, target.filter(|n| label_worthy(n))),
    ]
}

/// What an agent on `node` selects by: its VMIs (as their node, as their
/// migration target) and its VMIMs (as source, as target): the union of
/// each pair, as selectors cannot say "or". `None` when `node` cannot be a
/// label value, so nothing carries it: the agent then reads everything.
pub fn agent_selectors(node: &str) -> Option<([super::Selector; 2], [super::Selector; 2])> {
    use super::Selector;
    label_worthy(node).then(|| {
        (
            [
                Selector::eq(VMI_NODE_LABEL, node),
                Selector::eq(VMI_TARGET_NODE_LABEL, node),
            ],
            [
                Selector::eq(VMIM_SOURCE_NODE_LABEL, node),
                Selector::eq(VMIM_TARGET_NODE_LABEL, node),
            ],
        )
    })
}

fn label_worthy(node: &str) -> bool {
    !node.is_empty() && super::is_label_value(node)
}

/// Make `labels` carry exactly `wanted` for those keys (other labels are
/// untouched). Whether anything changed.
pub fn set_labels(
    labels: &mut Option<BTreeMap<String, String>>,
    wanted: &[(&str, Option<String>)],
) -> bool {
    let mut changed = false;
    for (k, v) in wanted {
        let have = labels.as_ref().and_then(|l| l.get(*k));
        if have == v.as_ref() {
            continue;
        }
        changed = true;
        match v {
            Some(v) => {
                labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert((*k).to_owned(), v.clone());
            }
            None => {
                if let Some(l) = labels.as_mut() {
                    l.remove(*k);
                }
            }
        }
    }
    changed
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        VirtualMachineInstanceMigrationSpec, VirtualMachineInstanceMigrationState,
        VirtualMachineInstanceMigrationStatus, VirtualMachineInstanceSpec,
        VirtualMachineInstanceStatus,
    };

    fn vmi(node: Option<&str>, target: Option<&str>) -> VirtualMachineInstance {
        let mut v = VirtualMachineInstance::new("vm", VirtualMachineInstanceSpec::default());
        v.status = Some(VirtualMachineInstanceStatus {
            node_name: node.map(Into::into),
            migration_state: target.map(|t| VirtualMachineInstanceMigrationState {
                target_node: Some(t.into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        v
    }

    #[test]
    fn vmi_labels_follow_node_and_migration_target() {
        assert_eq!(
            vmi_node_labels(&vmi(Some("a"), Some("b"))),
            [
                (VMI_NODE_LABEL, Some("a".into())),
                (VMI_TARGET_NODE_LABEL, Some("b".into()))
            ]
        );
        assert_eq!(
            vmi_node_labels(&vmi(None, None)),
            [(VMI_NODE_LABEL, None), (VMI_TARGET_NODE_LABEL, None)]
        );
        // Not a label value: no label rather than a write the server refuses.
        let long = "n".repeat(64);
        assert_eq!(vmi_node_labels(&vmi(Some(&long), None))[0].1, None);
    }

    #[test]
    fn vmim_labels_follow_its_migration_state() {
        let mut m = VirtualMachineInstanceMigration::new(
            "mig",
            VirtualMachineInstanceMigrationSpec {
                vmi_name: "vm".into(),
            },
        );
        assert_eq!(vmim_node_labels(&m)[0].1, None);
        m.status = Some(VirtualMachineInstanceMigrationStatus {
            migration_state: Some(VirtualMachineInstanceMigrationState {
                source_node: Some("a".into()),
                target_node: Some("b".into()),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            vmim_node_labels(&m),
            [
                (VMIM_SOURCE_NODE_LABEL, Some("a".into())),
                (VMIM_TARGET_NODE_LABEL, Some("b".into()))
            ]
        );
    }

    #[test]
    fn set_labels_writes_only_differences_and_keeps_other_labels() {
        let mut l = Some(BTreeMap::from([
            ("app".to_owned(), "x".to_owned()),
            (VMI_NODE_LABEL.to_owned(), "a".to_owned()),
        ]));
        assert!(!set_labels(&mut l, &[(VMI_NODE_LABEL, Some("a".into()))]));
        assert!(set_labels(
            &mut l,
            &[
                (VMI_NODE_LABEL, Some("b".into())),
                (VMI_TARGET_NODE_LABEL, None)
            ]
        ));
        assert_eq!(l.as_ref().unwrap()[VMI_NODE_LABEL], "b");
        assert!(set_labels(&mut l, &[(VMI_NODE_LABEL, None)]));
        assert_eq!(
            l,
            Some(BTreeMap::from([("app".to_owned(), "x".to_owned())]))
        );
        let mut none = None;
        assert!(!set_labels(&mut none, &[(VMI_NODE_LABEL, None)]));
        assert_eq!(none, None);
    }
}
