//! VirtualMachine objects <-> the VM policy (`mignet_policy::vm`): the
//! views it decides on, the VMI a VM runs (name, template labels,
//! annotations and spec, controller owner reference) and the VM status it
//! reports. Pure: no I/O, no clock; the controller pass
//! ([`super::reconcile_once`]) does the writes.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::ResourceExt;
use mignet_policy as policy;
use policy::vm::{
    ChangeRequest, OwnedVmi, RequestEdit, RunStrategy, StartBlocker, VmStatus, VmView, VmiFacts,
    VmiState,
};
use policy::ObjectKey;

use crate::api::{
    self, StateChangeRequestAction, VirtualMachine, VirtualMachineInstance,
    VirtualMachineStateChangeRequest, VirtualMachineStatus, VmiCondition, VmiPhase,
};

/// The VMI condition a controller sets when it cannot make the VMI's pod
/// (KubeVirt: `Synchronized`), and the reason for a missing claim.
pub const SYNCHRONIZED_CONDITION: &str = "Synchronized";
pub const PVC_NOT_FOUND_REASON: &str = "FailedPvcNotFound";
/// The VMI condition the scheduler sets when no node fits.
pub const POD_SCHEDULED_CONDITION: &str = "PodScheduled";
pub const UNSCHEDULABLE_REASON: &str = "Unschedulable";
/// The VM's (and VMI's) readiness condition.
pub const READY_CONDITION: &str = "Ready";

const VM_API_VERSION: &str = "kubevirt.io/v1";
const VM_KIND: &str = "VirtualMachine";

pub fn vm_key(vm: &VirtualMachine) -> ObjectKey {
    ObjectKey::new(vm.namespace().unwrap_or_default(), vm.name_any())
}

pub fn run_strategy(s: api::RunStrategy) -> RunStrategy {
    match s {
        api::RunStrategy::Always => RunStrategy::Always,
        api::RunStrategy::RerunOnFailure => RunStrategy::RerunOnFailure,
        api::RunStrategy::Halted => RunStrategy::Halted,
        api::RunStrategy::Manual => RunStrategy::Manual,
        api::RunStrategy::Once => RunStrategy::Once,
        api::RunStrategy::WaitAsReceiver => RunStrategy::WaitAsReceiver,
    }
}

pub fn vm_view(vm: &VirtualMachine) -> VmView {
    VmView {
        key: vm_key(vm),
        strategy: RunStrategy::effective(vm.spec.run_strategy.map(run_strategy), vm.spec.running),
        deleting: vm.metadata.deletion_timestamp.is_some(),
        has_status: vm.status.is_some(),
        requests: vm
            .status
            .iter()
            .flat_map(|s| &s.state_change_requests)
            .map(|r| match r.action {
                StateChangeRequestAction::Start => ChangeRequest::Start,
                StateChangeRequestAction::Stop => ChangeRequest::Stop { uid: r.uid.clone() },
            })
            .collect(),
    }
}

/// The controller owner reference of an object, if any.
pub fn controller_of(vmi: &VirtualMachineInstance) -> Option<&OwnerReference> {
    vmi.owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
}

fn condition<'a>(vmi: &'a VirtualMachineInstance, type_: &str) -> Option<&'a VmiCondition> {
    vmi.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// Why a VMI cannot start, from the conditions the lab's scheduler (or, in a
/// cluster, virt-controller and the scheduler) wrote on it.
pub fn start_blocker(vmi: &VirtualMachineInstance) -> Option<StartBlocker> {
    let msg = |c: &VmiCondition| c.message.clone().unwrap_or_default();
    if let Some(c) = condition(vmi, SYNCHRONIZED_CONDITION)
        .filter(|c| c.status == "False" && c.reason.as_deref() == Some(PVC_NOT_FOUND_REASON))
    {
        return Some(StartBlocker::PvcNotFound { message: msg(c) });
    }
    condition(vmi, POD_SCHEDULED_CONDITION)
        .filter(|c| c.status == "False" && c.reason.as_deref() == Some(UNSCHEDULABLE_REASON))
        .map(|c| StartBlocker::Unschedulable { message: msg(c) })
}

fn policy_phase(p: Option<VmiPhase>) -> policy::VmiPhase {
    match p {
        None | Some(VmiPhase::Pending) => policy::VmiPhase::Pending,
        Some(VmiPhase::Scheduling) => policy::VmiPhase::Scheduling,
        Some(VmiPhase::Scheduled) => policy::VmiPhase::Scheduled,
        Some(VmiPhase::Running) => policy::VmiPhase::Running,
        Some(VmiPhase::Succeeded) => policy::VmiPhase::Succeeded,
        Some(VmiPhase::Failed) => policy::VmiPhase::Failed,
        Some(VmiPhase::Unknown) => policy::VmiPhase::Unknown,
    }
}

/// The VMI of the VM's name as the policy sees it.
pub fn vmi_state(vm: &VirtualMachine, vmi: Option<&VirtualMachineInstance>) -> VmiState {
    let Some(vmi) = vmi else {
        return VmiState::Missing;
    };
    let owned = match controller_of(vmi) {
        None => false,
        Some(o) if o.kind == VM_KIND && Some(&o.uid) == vm.metadata.uid.as_ref() => true,
        Some(_) => return VmiState::Foreign,
    };
    let st = vmi.status.as_ref();
    let ms = st.and_then(|s| s.migration_state.as_ref());
    VmiState::Present(VmiFacts {
        uid: vmi.metadata.uid.clone().unwrap_or_default(),
        owned,
        phase: policy_phase(st.and_then(|s| s.phase)),
        deleting: vmi.metadata.deletion_timestamp.is_some(),
        migrating: ms.is_some_and(|m| {
            m.start_timestamp.is_some()
                && m.end_timestamp.is_none()
                && m.completed != Some(true)
                && m.failed != Some(true)
        }),
        ready_condition: condition(vmi, READY_CONDITION).map(|c| c.status == "True"),
        blocked: start_blocker(vmi),
    })
}

/// The controller owner reference that makes a VMI this VM's.
pub fn owner_reference(vm: &VirtualMachine) -> OwnerReference {
    OwnerReference {
        api_version: VM_API_VERSION.into(),
        kind: VM_KIND.into(),
        name: vm.name_any(),
        uid: vm.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

fn template_map(vm: &VirtualMachine, field: &str) -> Option<BTreeMap<String, String>> {
    let v = vm.spec.template.metadata.as_ref()?.get(field)?;
    // Label and annotation values are strings; a malformed map is dropped
    // rather than failing the VM (the API server's schema would have
    // refused it).
    serde_json::from_value::<BTreeMap<String, String>>(v.clone())
        .ok()
        .filter(|m| !m.is_empty())
}

/// The VMI a VM runs: the VM's name and namespace, the template's labels,
/// annotations and spec, owned (controller) by the VM. Fields our VMI
/// subset does not model (`domain.devices`, ...) are not carried over.
pub fn new_vmi(vm: &VirtualMachine) -> VirtualMachineInstance {
    VirtualMachineInstance {
        metadata: ObjectMeta {
            name: Some(vm.name_any()),
            namespace: vm.namespace(),
            labels: template_map(vm, "labels"),
            annotations: template_map(vm, "annotations"),
            owner_references: Some(vec![owner_reference(vm)]),
            ..Default::default()
        },
        spec: vm.spec.template.spec.clone(),
        status: None,
    }
}

/// The VMI's entry for [`policy::vm::collect_orphans`], if a VM controls it.
pub fn owned_vmi(vmi: &VirtualMachineInstance) -> Option<OwnedVmi> {
    let o = controller_of(vmi).filter(|o| o.kind == VM_KIND)?;
    Some(OwnedVmi {
        key: super::views::vmi_key(vmi),
        owner_name: o.name.clone(),
        owner_uid: o.uid.clone(),
        deleting: vmi.metadata.deletion_timestamp.is_some(),
    })
}

/// The VM status after a decision: `created` / `ready` (omitted when
/// false, as KubeVirt's JSON does), `printableStatus`, and the `Ready`
/// condition (transition time kept while its status holds), and the
/// state change requests after `edit`. Other fields and conditions are
/// kept.
pub fn next_status(
    old: Option<&VirtualMachineStatus>,
    s: &VmStatus,
    edit: RequestEdit,
    t: &Time,
) -> VirtualMachineStatus {
    let mut st = old.cloned().unwrap_or_default();
    if edit.remove_first && !st.state_change_requests.is_empty() {
        st.state_change_requests.remove(0);
    }
    if edit.append_start {
        append_start(&mut st);
    }
    st.created = s.created.then_some(true);
    st.ready = s.ready.then_some(true);
    st.printable_status = Some(s.printable.as_str().to_owned());
    let (reason, message) = match &s.not_ready {
        None => (None, None),
        Some((r, m)) => (Some((*r).to_owned()), Some(m.clone())),
    };
    super::set_condition(
        &mut st.conditions,
        VmiCondition {
            type_: READY_CONDITION.into(),
            status: if s.ready { "True" } else { "False" }.into(),
            reason,
            message,
            last_transition_time: Some(t.clone()),
            ..Default::default()
        },
    );
    st
}

/// Append a Start request (KubeVirt's `addStartRequest`) unless one is
/// already queued; whether it changed anything.
pub fn append_start(st: &mut VirtualMachineStatus) -> bool {
    let queued = st
        .state_change_requests
        .iter()
        .any(|r| r.action == StateChangeRequestAction::Start);
    if !queued {
        st.state_change_requests
            .push(VirtualMachineStateChangeRequest {
                action: StateChangeRequestAction::Start,
                data: BTreeMap::new(),
                uid: None,
            });
    }
    !queued
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        Cpu, DomainSpec, Memory, QuantityValue, VirtualMachineInstanceMigrationState,
        VirtualMachineInstanceSpec, VirtualMachineInstanceStatus,
        VirtualMachineInstanceTemplateSpec, VirtualMachineSpec,
    };
    use policy::vm::{decide_vm, PrintableStatus, VmiAction};
    use serde_json::json;

    fn seed_vm() -> VirtualMachine {
        let mut vm = VirtualMachine::new(
            "vm-fedora",
            VirtualMachineSpec {
                running: None,
                run_strategy: Some(api::RunStrategy::Always),
                template: VirtualMachineInstanceTemplateSpec {
                    metadata: Some(json!({
                        "labels": {"kubevirt.io/vm": "vm-fedora"},
                        "annotations": {"mignet.io/guest-kernel-args": "mignet.fill_mib=8"},
                    })),
                    spec: VirtualMachineInstanceSpec {
                        domain: DomainSpec {
                            cpu: Some(Cpu {
                                model: Some("host-model".into()),
                                ..Default::default()
                            }),
                            memory: Some(Memory {
                                guest: Some(QuantityValue::String("256Mi".into())),
                            }),
                            resources: None,
                            ..Default::default()
                        },
                        eviction_strategy: Some(api::EvictionStrategy::LiveMigrate),
                        volumes: Vec::new(),
                        ..Default::default()
                    },
                },
            },
        );
        vm.metadata.namespace = Some("ns".into());
        vm.metadata.uid = Some("uid-vm".into());
        vm
    }

    fn t() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_000).unwrap())
    }

    #[test]
    fn the_vmi_carries_the_template_and_an_owner_reference() {
        let vm = seed_vm();
        let vmi = new_vmi(&vm);
        assert_eq!(vmi.name_any(), "vm-fedora");
        assert_eq!(vmi.namespace().as_deref(), Some("ns"));
        assert_eq!(vmi.labels()["kubevirt.io/vm"], "vm-fedora");
        assert_eq!(
            vmi.annotations()["mignet.io/guest-kernel-args"],
            "mignet.fill_mib=8"
        );
        assert_eq!(vmi.spec, vm.spec.template.spec);
        let o = controller_of(&vmi).unwrap();
        assert_eq!(
            (o.kind.as_str(), o.name.as_str(), o.uid.as_str()),
            ("VirtualMachine", "vm-fedora", "uid-vm")
        );
        assert_eq!(vmi_state(&vm, Some(&vmi)), {
            VmiState::Present(VmiFacts {
                uid: String::new(),
                owned: true,
                phase: policy::VmiPhase::Pending,
                deleting: false,
                migrating: false,
                ready_condition: None,
                blocked: None,
            })
        });
        let owned = owned_vmi(&vmi).unwrap();
        assert_eq!(
            (owned.owner_name.as_str(), owned.owner_uid.as_str()),
            ("vm-fedora", "uid-vm")
        );
    }

    #[test]
    fn ownership_from_the_controller_reference() {
        let vm = seed_vm();
        let mut vmi = new_vmi(&vm);
        vmi.metadata.owner_references = None;
        assert!(matches!(vmi_state(&vm, Some(&vmi)), VmiState::Present(f) if !f.owned));
        let mut other = owner_reference(&vm);
        other.uid = "uid-old".into();
        vmi.metadata.owner_references = Some(vec![other]);
        assert_eq!(vmi_state(&vm, Some(&vmi)), VmiState::Foreign);
        assert_eq!(vmi_state(&vm, None), VmiState::Missing);
        // A non-controller reference does not own it.
        let mut plain = owner_reference(&vm);
        plain.controller = None;
        vmi.metadata.owner_references = Some(vec![plain]);
        assert!(owned_vmi(&vmi).is_none());
    }

    #[test]
    fn running_false_is_halted_and_the_strategy_wins() {
        let mut vm = seed_vm();
        vm.spec.run_strategy = None;
        vm.spec.running = Some(false);
        assert_eq!(vm_view(&vm).strategy, RunStrategy::Halted);
        vm.spec.running = Some(true);
        assert_eq!(vm_view(&vm).strategy, RunStrategy::Always);
        vm.spec.run_strategy = Some(api::RunStrategy::Manual);
        assert_eq!(vm_view(&vm).strategy, RunStrategy::Manual);
    }

    #[test]
    fn migrating_running_and_blocked_vmis() {
        let vm = seed_vm();
        let mut vmi = new_vmi(&vm);
        vmi.status = Some(VirtualMachineInstanceStatus {
            phase: Some(VmiPhase::Running),
            node_name: Some("node1".into()),
            migration_state: Some(VirtualMachineInstanceMigrationState {
                start_timestamp: Some(t()),
                ..Default::default()
            }),
            ..Default::default()
        });
        let d = decide_vm(&vm_view(&vm), &vmi_state(&vm, Some(&vmi)));
        assert_eq!(d.status.printable, PrintableStatus::Migrating);
        let ms = vmi
            .status
            .as_mut()
            .unwrap()
            .migration_state
            .as_mut()
            .unwrap();
        ms.end_timestamp = Some(t());
        ms.completed = Some(true);
        let d = decide_vm(&vm_view(&vm), &vmi_state(&vm, Some(&vmi)));
        assert_eq!(
            (d.action, d.status.printable),
            (VmiAction::None, PrintableStatus::Running)
        );

        let st = vmi.status.as_mut().unwrap();
        st.phase = Some(VmiPhase::Pending);
        st.conditions.push(VmiCondition {
            type_: SYNCHRONIZED_CONDITION.into(),
            status: "False".into(),
            reason: Some(PVC_NOT_FOUND_REASON.into()),
            message: Some("PVC ns/fedora-rwx does not exist".into()),
            ..Default::default()
        });
        let d = decide_vm(&vm_view(&vm), &vmi_state(&vm, Some(&vmi)));
        assert_eq!(d.status.printable, PrintableStatus::ErrorPvcNotFound);
        let s = next_status(None, &d.status, d.requests, &t());
        assert_eq!(s.printable_status.as_deref(), Some("ErrorPvcNotFound"));
        let ready = &s.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("False", Some(PVC_NOT_FOUND_REASON))
        );
    }

    #[test]
    fn status_keeps_the_transition_time_and_omits_false_flags() {
        let vm = seed_vm();
        let d = decide_vm(&vm_view(&vm), &VmiState::Missing);
        let s1 = next_status(None, &d.status, d.requests, &t());
        assert_eq!(s1.created, None);
        assert_eq!(s1.ready, None);
        assert_eq!(s1.printable_status.as_deref(), Some("Starting"));
        let later = Time(k8s_openapi::jiff::Timestamp::from_second(1_700_000_100).unwrap());
        // Same decision later: nothing changes (no write).
        assert_eq!(next_status(Some(&s1), &d.status, d.requests, &later), s1);
        let mut vmi = new_vmi(&vm);
        vmi.status = Some(VirtualMachineInstanceStatus {
            phase: Some(VmiPhase::Running),
            ..Default::default()
        });
        let d = decide_vm(&vm_view(&vm), &vmi_state(&vm, Some(&vmi)));
        let s2 = next_status(Some(&s1), &d.status, d.requests, &later);
        assert_eq!((s2.created, s2.ready), (Some(true), Some(true)));
        assert_eq!(s2.printable_status.as_deref(), Some("Running"));
        assert_eq!(s2.conditions.len(), 1);
        assert_eq!(s2.conditions[0].status, "True");
        assert_eq!(s2.conditions[0].last_transition_time, Some(later));
    }
}
