//! Pure: what the pages show, computed from the objects (VMs, VMIs,
//! VMIMs) and the recorded progress samples. No I/O here.

use std::collections::BTreeMap;

use kube::ResourceExt;
use serde::Serialize;

use crate::api::{
    MigrationPhase, VirtualMachine, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VmiCondition,
};
use crate::backend::protocol::{self, Progress};

/// One line of the VirtualMachines list.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmRow {
    pub namespace: String,
    pub name: String,
    /// `Migrating` for the whole migration, else the VMI phase, else the
    /// VM's printable status (`Stopped` without a VMI).
    pub status: String,
    pub node: Option<String>,
    /// The active migration, else the most recent one.
    pub migration: Option<MigrationView>,
    /// `None` until the controller has judged the VMI.
    pub live_migratable: Option<Verdict>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Verdict {
    pub ok: bool,
    /// `reason: message` when not migratable.
    pub why: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MigrationView {
    pub name: String,
    pub uid: String,
    /// The VMIM phase (`New` before admission).
    pub phase: String,
    pub active: bool,
    /// Deleted, waiting for the abort to be recorded.
    pub cancelling: bool,
    /// Why it still waits in Pending (limits reached, no target).
    pub waiting: Option<String>,
    /// Why it was refused or failed.
    pub failure: Option<String>,
    pub progress: Option<Progress>,
}

/// One point of the live chart.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Sample {
    /// Milliseconds since the Unix epoch (when the agent sampled).
    pub t: i64,
    pub transferred_bytes: u64,
    pub bytes_per_second: u64,
    pub total_bytes: u64,
}

/// The details page.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VmDetails {
    #[serde(flatten)]
    pub row: VmRow,
    pub vmi_phase: Option<String>,
    /// The VMI's `status.migrationState`, as the API shows it.
    pub migration_state: Option<serde_json::Value>,
    pub conditions: Vec<VmiCondition>,
    /// Progress samples of the shown migration, oldest first.
    pub history: Vec<Sample>,
}

pub fn is_final(phase: Option<MigrationPhase>) -> bool {
    matches!(
        phase,
        Some(MigrationPhase::Succeeded | MigrationPhase::Failed)
    )
}

fn condition<'a>(conds: &'a [VmiCondition], type_: &str) -> Option<&'a VmiCondition> {
    conds.iter().find(|c| c.type_ == type_)
}

fn reason_message(c: &VmiCondition) -> String {
    match (c.reason.as_deref(), c.message.as_deref()) {
        (Some(r), Some(m)) if !m.is_empty() => format!("{r}: {m}"),
        (Some(r), _) => r.to_owned(),
        (None, Some(m)) => m.to_owned(),
        (None, None) => "no reason given".to_owned(),
    }
}

/// The VMIM to show for a VMI: the active one (oldest if several), else
/// the newest.
pub fn current_migration<'a>(
    vmims: &'a [VirtualMachineInstanceMigration],
    namespace: &str,
    vmi: &str,
) -> Option<&'a VirtualMachineInstanceMigration> {
    let mut mine: Vec<&VirtualMachineInstanceMigration> = vmims
        .iter()
        .filter(|m| m.namespace().as_deref() == Some(namespace) && m.spec.vmi_name == vmi)
        .collect();
    mine.sort_by_key(|m| (m.creation_timestamp().map(|t| t.0), m.name_any()));
    mine.iter()
        .find(|m| !is_final(m.status.as_ref().and_then(|s| s.phase)))
        .or(mine.last())
        .copied()
}

pub fn migration_view(m: &VirtualMachineInstanceMigration) -> MigrationView {
    let st = m.status.clone().unwrap_or_default();
    let phase = st.phase;
    let waiting = (phase == Some(MigrationPhase::Pending))
        .then(|| condition(&st.conditions, protocol::PENDING_CONDITION).map(reason_message))
        .flatten();
    let failure = (phase == Some(MigrationPhase::Failed))
        .then(|| {
            condition(&st.conditions, protocol::FAILED_CONDITION)
                .map(reason_message)
                .or_else(|| {
                    st.migration_state
                        .as_ref()
                        .and_then(|s| s.failure_reason.clone())
                })
        })
        .flatten();
    MigrationView {
        name: m.name_any(),
        uid: m.uid().unwrap_or_default(),
        phase: phase.map_or_else(|| "New".to_owned(), |p| format!("{p:?}")),
        active: !is_final(phase),
        cancelling: m.metadata.deletion_timestamp.is_some(),
        waiting,
        failure,
        progress: m
            .annotations()
            .get(protocol::PROGRESS_ANNOTATION)
            .and_then(|s| serde_json::from_str(s).ok()),
    }
}

/// Whether the VMI is migrating: an unfinished VMIM for it, or a
/// migrationState that started and has not completed or failed.
pub fn is_migrating(vmi: &VirtualMachineInstance, migration: Option<&MigrationView>) -> bool {
    if migration.is_some_and(|m| m.active) {
        return true;
    }
    vmi.status
        .as_ref()
        .and_then(|s| s.migration_state.as_ref())
        .is_some_and(|ms| {
            ms.start_timestamp.is_some() && ms.completed != Some(true) && ms.failed != Some(true)
        })
}

pub fn vmi_row(vmi: &VirtualMachineInstance, vmims: &[VirtualMachineInstanceMigration]) -> VmRow {
    let ns = vmi.namespace().unwrap_or_default();
    let name = vmi.name_any();
    let migration = current_migration(vmims, &ns, &name).map(migration_view);
    let st = vmi.status.clone().unwrap_or_default();
    let status = if is_migrating(vmi, migration.as_ref()) {
        "Migrating".to_owned()
    } else {
        st.phase
            .map_or_else(|| "Pending".to_owned(), |p| format!("{p:?}"))
    };
    VmRow {
        namespace: ns,
        name,
        status,
        node: st.node_name.clone(),
        migration,
        live_migratable: condition(&st.conditions, protocol::LIVE_MIGRATABLE).map(|c| Verdict {
            ok: c.status == "True",
            why: (c.status != "True").then(|| reason_message(c)),
        }),
    }
}

fn vm_only_row(vm: &VirtualMachine) -> VmRow {
    VmRow {
        namespace: vm.namespace().unwrap_or_default(),
        name: vm.name_any(),
        status: vm
            .status
            .as_ref()
            .and_then(|s| s.printable_status.clone())
            .unwrap_or_else(|| "Stopped".to_owned()),
        node: None,
        migration: None,
        live_migratable: None,
    }
}

/// The list: every VMI, plus VMs that have none, sorted by namespace and
/// name.
pub fn rows(
    vms: &[VirtualMachine],
    vmis: &[VirtualMachineInstance],
    vmims: &[VirtualMachineInstanceMigration],
) -> Vec<VmRow> {
    let mut out: BTreeMap<(String, String), VmRow> = BTreeMap::new();
    for vm in vms {
        let r = vm_only_row(vm);
        out.insert((r.namespace.clone(), r.name.clone()), r);
    }
    for vmi in vmis {
        let r = vmi_row(vmi, vmims);
        out.insert((r.namespace.clone(), r.name.clone()), r);
    }
    out.into_values().collect()
}

pub fn details(
    vmi: Option<&VirtualMachineInstance>,
    vm: Option<&VirtualMachine>,
    vmims: &[VirtualMachineInstanceMigration],
    history: Vec<Sample>,
) -> Option<VmDetails> {
    let row = match (vmi, vm) {
        (Some(vmi), _) => vmi_row(vmi, vmims),
        (None, Some(vm)) => vm_only_row(vm),
        (None, None) => return None,
    };
    let st = vmi.and_then(|v| v.status.clone()).unwrap_or_default();
    Some(VmDetails {
        row,
        vmi_phase: st.phase.map(|p| format!("{p:?}")),
        migration_state: st
            .migration_state
            .as_ref()
            .and_then(|ms| serde_json::to_value(ms).ok()),
        conditions: st.conditions,
        history,
    })
}

/// A progress annotation as a chart point (`None` when unparsable).
pub fn sample(p: &Progress) -> Option<Sample> {
    let t: k8s_openapi::jiff::Timestamp = p.updated.parse().ok()?;
    Some(Sample {
        t: t.as_millisecond(),
        transferred_bytes: p.transferred_bytes,
        bytes_per_second: p.bytes_per_second,
        total_bytes: p.total_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        VirtualMachineInstanceMigrationSpec, VirtualMachineInstanceMigrationState,
        VirtualMachineInstanceMigrationStatus, VirtualMachineInstanceStatus, VmiPhase,
    };

    fn vmi(node: &str, ms: Option<VirtualMachineInstanceMigrationState>) -> VirtualMachineInstance {
        let mut v = VirtualMachineInstance::new("vm", Default::default());
        v.metadata.namespace = Some("lab".into());
        v.status = Some(VirtualMachineInstanceStatus {
            node_name: Some(node.into()),
            phase: Some(VmiPhase::Running),
            migration_state: ms,
            conditions: vec![VmiCondition {
                type_: "LiveMigratable".into(),
                status: "False".into(),
                reason: Some("DisksNotLiveMigratable".into()),
                message: Some("claim root is ReadWriteOnce".into()),
                ..Default::default()
            }],
            ..Default::default()
        });
        v
    }

    fn vmim(
        name: &str,
        phase: Option<MigrationPhase>,
        conds: Vec<VmiCondition>,
    ) -> VirtualMachineInstanceMigration {
        let mut m = VirtualMachineInstanceMigration::new(
            name,
            VirtualMachineInstanceMigrationSpec {
                vmi_name: "vm".into(),
            },
        );
        m.metadata.namespace = Some("lab".into());
        m.status = Some(VirtualMachineInstanceMigrationStatus {
            phase,
            conditions: conds,
            ..Default::default()
        });
        m
    }

    #[test]
    fn migrating_from_pending_to_the_end_of_the_migration() {
        let v = vmi("n1", None);
        for (phase, migrating) in [
            (None, true),
            (Some(MigrationPhase::Pending), true),
            (Some(MigrationPhase::Running), true),
            (Some(MigrationPhase::Succeeded), false),
            (Some(MigrationPhase::Failed), false),
        ] {
            let r = vmi_row(&v, &[vmim("m", phase, vec![])]);
            assert_eq!(r.status == "Migrating", migrating, "{phase:?}");
        }
        // The VMIM already final but the migrationState not yet: still
        // migrating (the agent writes the VMI first).
        let started = VirtualMachineInstanceMigrationState {
            start_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            )),
            ..Default::default()
        };
        let r = vmi_row(&vmi("n1", Some(started.clone())), &[]);
        assert_eq!(r.status, "Migrating");
        let done = VirtualMachineInstanceMigrationState {
            completed: Some(true),
            ..started
        };
        let r = vmi_row(&vmi("n2", Some(done)), &[]);
        assert_eq!(r.status, "Running");
        assert_eq!(r.node.as_deref(), Some("n2"));
    }

    #[test]
    fn reasons_in_words() {
        let pending = vmim(
            "m",
            Some(MigrationPhase::Pending),
            vec![VmiCondition {
                type_: "Pending".into(),
                status: "True".into(),
                reason: Some("ClusterLimitReached".into()),
                message: Some("5 migrations running".into()),
                ..Default::default()
            }],
        );
        let r = vmi_row(&vmi("n1", None), &[pending]);
        let m = r.migration.unwrap();
        assert_eq!(
            m.waiting.as_deref(),
            Some("ClusterLimitReached: 5 migrations running")
        );
        assert_eq!(m.phase, "Pending");
        let lm = r.live_migratable.unwrap();
        assert!(!lm.ok);
        assert_eq!(
            lm.why.as_deref(),
            Some("DisksNotLiveMigratable: claim root is ReadWriteOnce")
        );
        let refused = vmim(
            "m",
            Some(MigrationPhase::Failed),
            vec![VmiCondition {
                type_: "Failed".into(),
                status: "True".into(),
                reason: Some("VMINotRunning".into()),
                ..Default::default()
            }],
        );
        assert_eq!(
            migration_view(&refused).failure.as_deref(),
            Some("VMINotRunning")
        );
    }

    #[test]
    fn active_migration_preferred_over_newer_final_one() {
        let a = vmim("a", Some(MigrationPhase::Running), vec![]);
        let b = vmim("b", Some(MigrationPhase::Failed), vec![]);
        let all = [a, b];
        assert_eq!(
            current_migration(&all, "lab", "vm").unwrap().name_any(),
            "a"
        );
        assert!(current_migration(&all, "other", "vm").is_none());
    }

    #[test]
    fn progress_sample_time() {
        let p = Progress {
            transferred_bytes: 5,
            updated: "2026-01-01T00:00:01Z".into(),
            ..Default::default()
        };
        assert_eq!(sample(&p).unwrap().t, 1_767_225_601_000);
        assert!(sample(&Progress::default()).is_none());
    }
}
