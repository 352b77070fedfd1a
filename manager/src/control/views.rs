//! Kubernetes objects -> the policy's plain views. Pure: no I/O, no clock.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use mignet_policy as policy;
use policy::{
    AccessMode, CpuModel, MigrationView, NodeView, ObjectKey, Origin, Phase, Taint, TaintEffect,
    Timestamp, VmiView, VolumeSource, VolumeView,
};

use crate::api::{
    EvictionStrategy, MigrationPhase, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VmiPhase,
};
use crate::backend::protocol::EVACUATION_ANNOTATION;
use crate::config::parse_quantity;

/// Memory assumed for a node that reports no `status.allocatable.memory`
/// (lab nodes and test nodes have no kubelet to report it): "not
/// accounted", not zero, or no such node could ever be a target.
pub const UNREPORTED_NODE_MEMORY: u64 = 1 << 50;

pub fn timestamp(t: &Time) -> Timestamp {
    Timestamp::from_unix_millis(t.0.as_millisecond())
}

pub fn phase_to_policy(p: MigrationPhase) -> Phase {
    match p {
        MigrationPhase::Pending => Phase::Pending,
        MigrationPhase::Scheduling => Phase::Scheduling,
        MigrationPhase::Scheduled => Phase::Scheduled,
        MigrationPhase::PreparingTarget => Phase::PreparingTarget,
        MigrationPhase::TargetReady => Phase::TargetReady,
        MigrationPhase::Running => Phase::Running,
        MigrationPhase::Succeeded => Phase::Succeeded,
        MigrationPhase::Failed => Phase::Failed,
    }
}

pub fn node_view(node: &Node) -> NodeView {
    let spec = node.spec.as_ref();
    let taints = spec
        .and_then(|s| s.taints.as_ref())
        .map(|ts| {
            ts.iter()
                .filter_map(|t| {
                    let effect = match t.effect.as_str() {
                        "NoSchedule" => TaintEffect::NoSchedule,
                        "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
                        "NoExecute" => TaintEffect::NoExecute,
                        _ => return None,
                    };
                    Some(Taint {
                        key: t.key.clone(),
                        effect,
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let allocatable_memory = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get("memory"))
        .and_then(|q| {
            parse_quantity(
                "status.allocatable.memory",
                &crate::api::QuantityValue::String(q.0.clone()),
            )
            .ok()
        })
        .unwrap_or(UNREPORTED_NODE_MEMORY);
    NodeView {
        name: node.name_any(),
        unschedulable: spec.and_then(|s| s.unschedulable).unwrap_or(false),
        taints,
        allocatable_memory,
        labels: node.labels().clone(),
    }
}

pub fn vmi_key(vmi: &VirtualMachineInstance) -> ObjectKey {
    ObjectKey::new(vmi.namespace().unwrap_or_default(), vmi.name_any())
}

pub fn vmim_key(m: &VirtualMachineInstanceMigration) -> ObjectKey {
    ObjectKey::new(m.namespace().unwrap_or_default(), m.name_any())
}

/// The VMI a VMIM migrates (same namespace).
pub fn vmim_vmi_key(m: &VirtualMachineInstanceMigration) -> ObjectKey {
    ObjectKey::new(m.namespace().unwrap_or_default(), m.spec.vmi_name.clone())
}

/// A VMI's guest memory in bytes (0 when unset), as the budget counts it:
/// kept beside that rule in `config`.
pub use crate::config::vmi_memory_bytes;

pub fn vmi_view(vmi: &VirtualMachineInstance) -> VmiView {
    let status = vmi.status.as_ref();
    let access: BTreeMap<&str, Vec<AccessMode>> = status
        .map(|s| {
            s.volume_status
                .iter()
                .map(|v| {
                    let modes = v
                        .persistent_volume_claim_info
                        .as_ref()
                        .map(|i| {
                            i.access_modes
                                .iter()
                                .filter_map(|m| AccessMode::parse(m))
                                .collect()
                        })
                        .unwrap_or_default();
                    (v.name.as_str(), modes)
                })
                .collect()
        })
        .unwrap_or_default();
    let volumes = vmi
        .spec
        .volumes
        .iter()
        .map(|v| {
            let claim = v
                .persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.clone())
                .or_else(|| v.data_volume.as_ref().map(|d| d.name.clone()));
            let source = match claim {
                Some(claim_name) => VolumeSource::Claim {
                    claim_name,
                    access_modes: access.get(v.name.as_str()).cloned().unwrap_or_default(),
                },
                None if v.container_disk.is_some() => VolumeSource::Ephemeral,
                // cloud-init, ConfigMap, Secret...: regenerated on the target.
                None => VolumeSource::Config,
            };
            VolumeView {
                name: v.name.clone(),
                source,
            }
        })
        .collect();
    let phase = match status.and_then(|s| s.phase) {
        Some(VmiPhase::Pending) => policy::VmiPhase::Pending,
        Some(VmiPhase::Scheduling) => policy::VmiPhase::Scheduling,
        Some(VmiPhase::Scheduled) => policy::VmiPhase::Scheduled,
        Some(VmiPhase::Running) => policy::VmiPhase::Running,
        Some(VmiPhase::Succeeded) => policy::VmiPhase::Succeeded,
        Some(VmiPhase::Failed) => policy::VmiPhase::Failed,
        Some(VmiPhase::Unknown) => policy::VmiPhase::Unknown,
        None => policy::VmiPhase::Pending,
    };
    VmiView {
        key: vmi_key(vmi),
        phase,
        node: status.and_then(|s| s.node_name.clone()),
        memory_bytes: vmi_memory_bytes(vmi),
        cpu: CpuModel::from_spec(
            vmi.spec
                .domain
                .cpu
                .as_ref()
                .and_then(|c| c.model.as_deref()),
        ),
        volumes,
        eviction_strategy: vmi.spec.eviction_strategy.map(eviction_to_policy),
    }
}

pub fn eviction_to_policy(e: EvictionStrategy) -> policy::EvictionStrategy {
    match e {
        EvictionStrategy::None => policy::EvictionStrategy::None,
        EvictionStrategy::LiveMigrate => policy::EvictionStrategy::LiveMigrate,
        EvictionStrategy::LiveMigrateIfPossible => policy::EvictionStrategy::LiveMigrateIfPossible,
        EvictionStrategy::External => policy::EvictionStrategy::External,
    }
}

/// The view of an admitted VMIM (it has a phase); `None` for a VMIM not
/// admitted yet.
pub fn migration_view(m: &VirtualMachineInstanceMigration) -> Option<MigrationView> {
    let status = m.status.as_ref()?;
    let phase = phase_to_policy(status.phase?);
    let state = status.migration_state.as_ref();
    Some(MigrationView {
        key: vmim_key(m),
        vmi: vmim_vmi_key(m),
        phase,
        created: m
            .metadata
            .creation_timestamp
            .as_ref()
            .map(timestamp)
            .unwrap_or_default(),
        origin: if m.annotations().contains_key(EVACUATION_ANNOTATION) {
            Origin::Evacuation
        } else {
            Origin::User
        },
        source_node: state.and_then(|s| s.source_node.clone()),
        target_node: state.and_then(|s| s.target_node.clone()),
        not_before: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        PersistentVolumeClaimInfo, PersistentVolumeClaimVolumeSource, VirtualMachineInstanceSpec,
        VirtualMachineInstanceStatus, Volume, VolumeStatus,
    };
    use k8s_openapi::api::core::v1::{NodeSpec, NodeStatus, Taint as KTaint};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn node_view_reads_taints_cordon_and_memory() {
        let mut n = Node::default();
        n.metadata.name = Some("n1".into());
        n.spec = Some(NodeSpec {
            unschedulable: Some(true),
            taints: Some(vec![
                KTaint {
                    key: "kubevirt.io/drain".into(),
                    effect: "NoSchedule".into(),
                    ..Default::default()
                },
                KTaint {
                    key: "x".into(),
                    effect: "Bogus".into(),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        });
        n.status = Some(NodeStatus {
            allocatable: Some([("memory".into(), Quantity("2Gi".into()))].into()),
            ..Default::default()
        });
        let v = node_view(&n);
        assert!(v.unschedulable && v.draining());
        assert_eq!(v.taints.len(), 1, "unknown effects are dropped");
        assert_eq!(v.allocatable_memory, 2 << 30);
        n.status = None;
        assert_eq!(node_view(&n).allocatable_memory, UNREPORTED_NODE_MEMORY);
    }

    #[test]
    fn vmi_view_takes_access_modes_from_volume_status() {
        let mut vmi = VirtualMachineInstance::new(
            "vm",
            VirtualMachineInstanceSpec {
                volumes: vec![
                    Volume {
                        name: "root".into(),
                        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                            claim_name: "pvc".into(),
                            read_only: None,
                        }),
                        ..Default::default()
                    },
                    Volume {
                        name: "cloudinit".into(),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            },
        );
        vmi.metadata.namespace = Some("ns".into());
        vmi.status = Some(VirtualMachineInstanceStatus {
            phase: Some(VmiPhase::Running),
            node_name: Some("n1".into()),
            volume_status: vec![VolumeStatus {
                name: "root".into(),
                persistent_volume_claim_info: Some(PersistentVolumeClaimInfo {
                    access_modes: vec!["ReadWriteMany".into()],
                    ..Default::default()
                }),
            }],
            ..Default::default()
        });
        let v = vmi_view(&vmi);
        assert_eq!(v.key, ObjectKey::new("ns", "vm"));
        assert_eq!(v.phase, policy::VmiPhase::Running);
        assert_eq!(v.cpu, CpuModel::HostModel, "unset model is host-model");
        assert_eq!(
            v.volumes[0].source,
            VolumeSource::Claim {
                claim_name: "pvc".into(),
                access_modes: vec![AccessMode::ReadWriteMany]
            }
        );
        assert_eq!(v.volumes[1].source, VolumeSource::Config);
        // No volume status yet: the claim counts as not shared.
        vmi.status.as_mut().unwrap().volume_status.clear();
        assert!(matches!(
            &vmi_view(&vmi).volumes[0].source,
            VolumeSource::Claim { access_modes, .. } if access_modes.is_empty()
        ));
    }

    #[test]
    fn migration_view_only_for_admitted_and_marks_evacuations() {
        use crate::api::{
            VirtualMachineInstanceMigrationSpec, VirtualMachineInstanceMigrationStatus,
        };
        let mut m = VirtualMachineInstanceMigration::new(
            "mig",
            VirtualMachineInstanceMigrationSpec {
                vmi_name: "vm".into(),
            },
        );
        m.metadata.namespace = Some("ns".into());
        assert!(migration_view(&m).is_none(), "not admitted yet");
        m.status = Some(VirtualMachineInstanceMigrationStatus {
            phase: Some(MigrationPhase::Pending),
            ..Default::default()
        });
        let v = migration_view(&m).unwrap();
        assert_eq!((v.phase, v.origin), (Phase::Pending, Origin::User));
        assert_eq!(v.vmi, ObjectKey::new("ns", "vm"));
        m.metadata.annotations = Some([(EVACUATION_ANNOTATION.into(), "n1".into())].into());
        assert_eq!(migration_view(&m).unwrap().origin, Origin::Evacuation);
    }
}
