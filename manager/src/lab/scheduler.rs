//! The lab plays the scheduler: a new VMI (no `status.nodeName`) is placed
//! on the least-loaded schedulable node, and marked `Scheduled`; the node's
//! agent then starts it and marks it `Running` (see `crate::agent::control`).
//!
//! The lab has no storage: its VMs boot the lab's guest image (kernel +
//! initramfs) and get no disks. A VMI that names a PersistentVolumeClaim or
//! DataVolume (the seed's `examples/vm.yaml` does) is therefore never placed;
//! it stays Pending with the condition virt-controller writes for a missing
//! claim (`Synchronized=False`, reason `FailedPvcNotFound`), which its VM
//! shows as `ErrorPvcNotFound`. Running it without its disk would hide that.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;

use super::LabError;
use crate::api::{VirtualMachineInstance, VmiCondition, VmiPhase};
use crate::control::vm::{PVC_NOT_FOUND_REASON, SYNCHRONIZED_CONDITION};
use crate::store::Store;

/// The claims a VMI's volumes name (PVCs and DataVolumes), in order.
pub fn claims(vmi: &VirtualMachineInstance) -> Vec<String> {
    vmi.spec
        .volumes
        .iter()
        .filter_map(|v| {
            v.persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.clone())
                .or_else(|| v.data_volume.as_ref().map(|d| d.name.clone()))
        })
        .collect()
}

/// The condition that says why a VMI with claims cannot run in the lab
/// (pure; `None` for a VMI without claims).
pub fn no_storage_condition(vmi: &VirtualMachineInstance) -> Option<VmiCondition> {
    let claims = claims(vmi);
    if claims.is_empty() {
        return None;
    }
    let ns = vmi.metadata.namespace.as_deref().unwrap_or_default();
    let names: Vec<String> = claims.iter().map(|c| format!("{ns}/{c}")).collect();
    Some(VmiCondition {
        type_: SYNCHRONIZED_CONDITION.into(),
        status: "False".into(),
        reason: Some(PVC_NOT_FOUND_REASON.into()),
        message: Some(format!(
            "PVC {} does not exist: the lab has no storage (its VMs boot the lab guest image \
             without disks); remove the volumes, as examples/lab/vm.yaml does",
            names.join(", ")
        )),
        last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        )),
        ..Default::default()
    })
}

/// Pure choice: the schedulable node running the fewest VMIs; ties go to the
/// first by name (so the first VM of a fresh lab lands on node1).
pub fn pick_node(nodes: &[(String, bool)], load: &BTreeMap<String, usize>) -> Option<String> {
    let mut ready: Vec<&(String, bool)> = nodes.iter().filter(|(_, ok)| *ok).collect();
    // Natural order: node2 before node10.
    ready.sort_by_key(|(n, _)| (n.len(), n.clone()));
    ready
        .into_iter()
        .min_by_key(|(n, _)| load.get(n).copied().unwrap_or(0))
        .map(|(n, _)| n.clone())
}

/// Place every unscheduled VMI; returns how many were placed.
pub fn schedule(store: &Store) -> Result<u32, LabError> {
    let vmis = store.list::<VirtualMachineInstance>(None)?;
    let pending: Vec<&VirtualMachineInstance> = vmis
        .iter()
        .filter(|v| v.metadata.deletion_timestamp.is_none())
        .filter(|v| {
            let st = v.status.as_ref();
            st.and_then(|s| s.node_name.as_deref()).is_none()
                && matches!(
                    st.and_then(|s| s.phase),
                    None | Some(VmiPhase::Pending) | Some(VmiPhase::Scheduling)
                )
        })
        .collect();
    if pending.is_empty() {
        return Ok(0);
    }
    let nodes: Vec<(String, bool)> = store
        .list::<Node>(None)?
        .into_iter()
        .map(|n| {
            let ok = n.spec.as_ref().and_then(|s| s.unschedulable) != Some(true);
            (n.metadata.name.unwrap_or_default(), ok)
        })
        .collect();
    let mut load: BTreeMap<String, usize> = BTreeMap::new();
    for v in &vmis {
        if let Some(n) = v.status.as_ref().and_then(|s| s.node_name.clone()) {
            *load.entry(n).or_default() += 1;
        }
    }
    let mut placed = 0;
    let mut schedulable = Vec::new();
    for v in pending {
        let Some(c) = no_storage_condition(v) else {
            schedulable.push(v);
            continue;
        };
        let have = v.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|x| x.type_ == c.type_)
                .map(|x| (x.status.clone(), x.reason.clone(), x.message.clone()))
        });
        // Written once: the daemon loop repeats until a pass writes nothing.
        if have == Some((c.status.clone(), c.reason.clone(), c.message.clone())) {
            continue;
        }
        let mut v = v.clone();
        let st = v.status.get_or_insert_with(Default::default);
        st.phase = Some(VmiPhase::Pending);
        st.conditions.retain(|x| x.type_ != c.type_);
        st.conditions.push(c);
        match store.update_status(&v) {
            Ok(_) => {}
            Err(e) if e.is_conflict() || e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    for v in schedulable {
        let Some(node) = pick_node(&nodes, &load) else {
            return Ok(placed);
        };
        let mut v = v.clone();
        let st = v.status.get_or_insert_with(Default::default);
        st.node_name = Some(node.clone());
        st.phase = Some(VmiPhase::Scheduled);
        match store.update_status(&v) {
            Ok(_) => {
                *load.entry(node).or_default() += 1;
                placed += 1;
            }
            // Changed under us: the next pass looks again.
            Err(e) if e.is_conflict() || e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PersistentVolumeClaimVolumeSource, VirtualMachineInstanceSpec, Volume};

    #[test]
    fn claims_cannot_run_in_the_lab() {
        let mut vmi =
            VirtualMachineInstance::new("vm-fedora", VirtualMachineInstanceSpec::default());
        vmi.metadata.namespace = Some("mignet-system".into());
        assert!(no_storage_condition(&vmi).is_none());
        vmi.spec.volumes.push(Volume {
            name: "rootdisk".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: "fedora-rwx".into(),
                read_only: None,
            }),
            ..Default::default()
        });
        let c = no_storage_condition(&vmi).unwrap();
        assert_eq!(
            (c.type_.as_str(), c.status.as_str(), c.reason.as_deref()),
            ("Synchronized", "False", Some("FailedPvcNotFound"))
        );
        let m = c.message.unwrap();
        assert!(
            m.contains("mignet-system/fedora-rwx") && m.contains("no storage"),
            "{m}"
        );
    }

    fn nodes(v: &[(&str, bool)]) -> Vec<(String, bool)> {
        v.iter().map(|(n, ok)| (n.to_string(), *ok)).collect()
    }

    #[test]
    fn least_loaded_schedulable_node_first_by_name() {
        let ns = nodes(&[("node10", true), ("node2", true), ("node1", true)]);
        let mut load = BTreeMap::new();
        assert_eq!(pick_node(&ns, &load).as_deref(), Some("node1"));
        load.insert("node1".to_string(), 1);
        assert_eq!(pick_node(&ns, &load).as_deref(), Some("node2"));
        let ns = nodes(&[("node1", false), ("node2", false)]);
        assert_eq!(pick_node(&ns, &load), None);
        let ns = nodes(&[("node1", false), ("node2", true)]);
        assert_eq!(pick_node(&ns, &BTreeMap::new()).as_deref(), Some("node2"));
    }
}
