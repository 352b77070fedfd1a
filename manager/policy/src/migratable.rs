//! The parts of KubeVirt's `LiveMigratable` condition that mignet models
//! (virt-handler `calculateLiveMigrationCondition`, reference §5), and the
//! host-model CPU requirement a target node must meet
//! (virt-controller `prepareNodeSelectorForHostCpuModel`).
//!
//! The node-dependent half (does any other node advertise the model?) needs
//! the cluster index and lives in [`crate::index::ClusterIndex::live_migratable`].

use std::collections::BTreeSet;
use std::fmt;

use crate::model::{CpuModel, NodeView, VmiView, VolumeSource};

/// Set by the node labeller on every node: the node's own host CPU model.
pub const HOST_MODEL_CPU_LABEL: &str = "host-model-cpu.node.kubevirt.io/";
/// Set by the node labeller: features the node's host model requires.
pub const HOST_MODEL_REQUIRED_FEATURES_LABEL: &str =
    "host-model-required-features.node.kubevirt.io/";
/// Set by the node labeller: every CPU model a VM can be migrated in as.
pub const CPU_MODEL_MIGRATION_LABEL: &str = "cpu-model-migration.node.kubevirt.io/";
/// Set by the node labeller: every CPU feature the node supports.
pub const CPU_FEATURE_LABEL: &str = "cpu-feature.node.kubevirt.io/";

/// `status.migrationMethod`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MigrationMethod {
    /// Only memory moves; every disk is shared.
    LiveMigration,
    /// Node-local disks (container disks, ephemeral) are copied along.
    BlockMigration,
}

impl MigrationMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationMethod::LiveMigration => "LiveMigration",
            MigrationMethod::BlockMigration => "BlockMigration",
        }
    }
}

/// Reasons of `LiveMigratable=False`, with KubeVirt's strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotMigratableReason {
    /// A PVC/DataVolume is not ReadWriteMany, or a host disk is not shared.
    DisksNotLiveMigratable,
    /// host-model CPU on a source node without a host-model label.
    /// (KubeVirt's constant `VirtualMachineInstanceReasonCPUModeNotMigratable`
    /// really is spelled "CPUModeLiveMigratable".)
    CpuModeNotMigratable,
    /// host-model CPU and no other schedulable node advertises the model
    /// (KubeVirt reports this as an event of the same name when the target
    /// pod cannot be scheduled; we surface it on the condition).
    NoSuitableNodesForHostModelMigration,
}

impl NotMigratableReason {
    pub fn as_str(self) -> &'static str {
        match self {
            NotMigratableReason::DisksNotLiveMigratable => "DisksNotLiveMigratable",
            NotMigratableReason::CpuModeNotMigratable => "CPUModeLiveMigratable",
            NotMigratableReason::NoSuitableNodesForHostModelMigration => {
                "NoSuitableNodesForHostModelMigration"
            }
        }
    }
}

impl fmt::Display for NotMigratableReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NotMigratable {
    pub reason: NotMigratableReason,
    pub message: String,
}

/// The value of the `LiveMigratable` condition.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Migratability {
    Migratable { method: MigrationMethod },
    NotMigratable(NotMigratable),
}

/// A VMI condition in KubeVirt's shape, ready for the adapter to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Condition {
    pub type_: &'static str,
    /// "True" or "False".
    pub status: &'static str,
    pub reason: Option<&'static str>,
    pub message: Option<String>,
}

impl Migratability {
    pub fn is_migratable(&self) -> bool {
        matches!(self, Migratability::Migratable { .. })
    }

    pub fn condition(&self) -> Condition {
        match self {
            Migratability::Migratable { .. } => Condition {
                type_: "LiveMigratable",
                status: "True",
                reason: None,
                message: None,
            },
            Migratability::NotMigratable(n) => Condition {
                type_: "LiveMigratable",
                status: "False",
                reason: Some(n.reason.as_str()),
                message: Some(n.message.clone()),
            },
        }
    }
}

/// What a target node must advertise to host a host-model VM from a given
/// source: the source's host model(s) and the features that model requires.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostModelRequirement {
    pub models: BTreeSet<String>,
    pub features: BTreeSet<String>,
}

fn label_names<'n>(node: &'n NodeView, prefix: &'n str) -> impl Iterator<Item = &'n str> {
    node.labels.iter().filter_map(move |(k, v)| {
        k.strip_prefix(prefix)
            .filter(|name| !name.is_empty() && v == "true")
    })
}

impl HostModelRequirement {
    /// Read from the source node's labels, as KubeVirt builds the target's
    /// node selector: every `host-model-cpu.node.kubevirt.io/<m>=true`
    /// becomes a required model and every
    /// `host-model-required-features.node.kubevirt.io/<f>=true` a required
    /// feature. `None` when the node has no host-model label.
    pub fn of_source(node: &NodeView) -> Option<Self> {
        let models: BTreeSet<String> = label_names(node, HOST_MODEL_CPU_LABEL)
            .map(str::to_owned)
            .collect();
        if models.is_empty() {
            return None;
        }
        let features = label_names(node, HOST_MODEL_REQUIRED_FEATURES_LABEL)
            .map(str::to_owned)
            .collect();
        Some(Self { models, features })
    }

    /// True when `node` can run the VM's CPU. KubeVirt's selector asks for
    /// `cpu-model-migration.node.kubevirt.io/<m>` and
    /// `cpu-feature.node.kubevirt.io/<f>`; we also accept the node's own
    /// host-model labels for the same names, because a node whose host
    /// model is `m` can run `m` (the labeller lists it under both) and lab
    /// nodes are labelled with the host-model label alone.
    pub fn satisfied_by(&self, node: &NodeView) -> bool {
        self.label_keys().matches(node)
    }

    /// The label keys to look for, built once so that testing many nodes
    /// does not format a key per node and label.
    pub fn label_keys(&self) -> RequiredLabels {
        let either = |a: &str, b: &str, name: &str| [format!("{a}{name}"), format!("{b}{name}")];
        RequiredLabels(
            self.models
                .iter()
                .map(|m| either(CPU_MODEL_MIGRATION_LABEL, HOST_MODEL_CPU_LABEL, m))
                .chain(
                    self.features
                        .iter()
                        .map(|f| either(CPU_FEATURE_LABEL, HOST_MODEL_REQUIRED_FEATURES_LABEL, f)),
                )
                .collect(),
        )
    }

    /// A short human form for messages: `Skylake-Client (+2 features)`.
    pub fn describe(&self) -> String {
        let models: Vec<&str> = self.models.iter().map(String::as_str).collect();
        if self.features.is_empty() {
            models.join(",")
        } else {
            format!(
                "{} (+{} required features)",
                models.join(","),
                self.features.len()
            )
        }
    }
}

/// Label keys a node must carry (value "true"), each requirement
/// satisfied by either of two keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequiredLabels(Vec<[String; 2]>);

impl RequiredLabels {
    pub fn matches(&self, node: &NodeView) -> bool {
        self.0.iter().all(|keys| {
            keys.iter()
                .any(|k| node.labels.get(k).is_some_and(|v| v == "true"))
        })
    }
}

/// The volume check: any non-shared claim or host disk makes the VM not
/// live-migratable; node-local ephemeral disks make it a block migration.
pub fn check_volumes(vmi: &VmiView) -> Result<MigrationMethod, NotMigratable> {
    let mut method = MigrationMethod::LiveMigration;
    for v in &vmi.volumes {
        match &v.source {
            VolumeSource::Claim {
                claim_name,
                access_modes,
            } => {
                if !access_modes.contains(&crate::model::AccessMode::ReadWriteMany) {
                    return Err(NotMigratable {
                        reason: NotMigratableReason::DisksNotLiveMigratable,
                        message: format!(
                            "cannot migrate VMI: PVC {claim_name} (volume {}) is not shared; live \
                             migration requires every PVC to be shared (ReadWriteMany access mode)",
                            v.name
                        ),
                    });
                }
            }
            VolumeSource::HostDisk { shared: false } => {
                return Err(NotMigratable {
                    reason: NotMigratableReason::DisksNotLiveMigratable,
                    message: format!(
                        "cannot migrate VMI: host disk (volume {}) is not shared",
                        v.name
                    ),
                });
            }
            VolumeSource::HostDisk { shared: true } | VolumeSource::Config => {}
            VolumeSource::Ephemeral => method = MigrationMethod::BlockMigration,
        }
    }
    Ok(method)
}

/// The CPU check that needs only the source node: a host-model VM needs a
/// host-model label on its node (virt-handler `isHostModelMigratable`).
/// Returns the requirement a target must meet, `None` for non-host-model.
pub fn host_model_requirement(
    vmi: &VmiView,
    source: Option<&NodeView>,
) -> Result<Option<HostModelRequirement>, NotMigratable> {
    if vmi.cpu != CpuModel::HostModel {
        return Ok(None);
    }
    match source.and_then(HostModelRequirement::of_source) {
        Some(req) => Ok(Some(req)),
        None => Err(cpu_mode_not_migratable(vmi)),
    }
}

/// virt-handler's wording for a host-model VM on an unlabelled node.
pub(crate) fn cpu_mode_not_migratable(vmi: &VmiView) -> NotMigratable {
    NotMigratable {
        reason: NotMigratableReason::CpuModeNotMigratable,
        message: format!(
            "the node \"{}\" does not allow migration with host-model",
            vmi.node.as_deref().unwrap_or("")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AccessMode, ObjectKey, VmiPhase, VolumeView};

    fn vmi(cpu: CpuModel, volumes: Vec<VolumeSource>) -> VmiView {
        VmiView {
            key: ObjectKey::new("ns", "vm"),
            phase: VmiPhase::Running,
            node: Some("n1".into()),
            memory_bytes: 1 << 30,
            cpu,
            volumes: volumes
                .into_iter()
                .enumerate()
                .map(|(i, source)| VolumeView {
                    name: format!("v{i}"),
                    source,
                })
                .collect(),
            eviction_strategy: None,
        }
    }

    fn claim(modes: &[AccessMode]) -> VolumeSource {
        VolumeSource::Claim {
            claim_name: "pvc".into(),
            access_modes: modes.to_vec(),
        }
    }

    fn node(labels: &[(&str, &str)]) -> NodeView {
        NodeView {
            name: "n1".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn rwx_claims_and_config_volumes_are_live_migration() {
        let v = vmi(
            CpuModel::Named("x".into()),
            vec![
                claim(&[AccessMode::ReadWriteOnce, AccessMode::ReadWriteMany]),
                VolumeSource::Config,
                VolumeSource::HostDisk { shared: true },
            ],
        );
        assert_eq!(check_volumes(&v), Ok(MigrationMethod::LiveMigration));
    }

    #[test]
    fn ephemeral_disks_make_a_block_migration() {
        let v = vmi(
            CpuModel::HostPassthrough,
            vec![claim(&[AccessMode::ReadWriteMany]), VolumeSource::Ephemeral],
        );
        assert_eq!(check_volumes(&v), Ok(MigrationMethod::BlockMigration));
    }

    #[test]
    fn non_shared_volumes_are_disks_not_live_migratable() {
        for src in [
            claim(&[AccessMode::ReadWriteOnce]),
            claim(&[AccessMode::ReadOnlyMany]),
            claim(&[AccessMode::ReadWriteOncePod]),
            claim(&[]),
            VolumeSource::HostDisk { shared: false },
        ] {
            let v = vmi(
                CpuModel::HostPassthrough,
                vec![VolumeSource::Config, src.clone()],
            );
            let err = check_volumes(&v).unwrap_err();
            assert_eq!(
                err.reason,
                NotMigratableReason::DisksNotLiveMigratable,
                "{src:?}"
            );
            assert_eq!(err.reason.as_str(), "DisksNotLiveMigratable");
            assert!(
                err.message.contains("v1"),
                "names the volume: {}",
                err.message
            );
        }
    }

    #[test]
    fn host_model_requirement_comes_from_the_source_labels() {
        let n = node(&[
            ("host-model-cpu.node.kubevirt.io/Skylake", "true"),
            (
                "host-model-required-features.node.kubevirt.io/avx512",
                "true",
            ),
            ("host-model-required-features.node.kubevirt.io/off", "false"),
            ("cpu-model-migration.node.kubevirt.io/Haswell", "true"),
        ]);
        let req = HostModelRequirement::of_source(&n).unwrap();
        assert_eq!(req.models, BTreeSet::from(["Skylake".to_string()]));
        assert_eq!(req.features, BTreeSet::from(["avx512".to_string()]));
        assert!(req.describe().contains("Skylake"));
        assert_eq!(HostModelRequirement::of_source(&node(&[])), None);
        // A label whose value is not "true" does not count.
        assert_eq!(
            HostModelRequirement::of_source(&node(&[(
                "host-model-cpu.node.kubevirt.io/X",
                "false"
            )])),
            None
        );
    }

    #[test]
    fn target_matching_accepts_migration_or_host_model_labels_and_needs_features() {
        let req = HostModelRequirement {
            models: BTreeSet::from(["Skylake".to_string()]),
            features: BTreeSet::from(["avx512".to_string()]),
        };
        let kv = node(&[
            ("cpu-model-migration.node.kubevirt.io/Skylake", "true"),
            ("cpu-feature.node.kubevirt.io/avx512", "true"),
        ]);
        let lab = node(&[
            ("host-model-cpu.node.kubevirt.io/Skylake", "true"),
            (
                "host-model-required-features.node.kubevirt.io/avx512",
                "true",
            ),
        ]);
        let no_feature = node(&[("cpu-model-migration.node.kubevirt.io/Skylake", "true")]);
        let other_model = node(&[
            ("cpu-model-migration.node.kubevirt.io/Haswell", "true"),
            ("cpu-feature.node.kubevirt.io/avx512", "true"),
        ]);
        let false_value = node(&[
            ("cpu-model-migration.node.kubevirt.io/Skylake", "false"),
            ("cpu-feature.node.kubevirt.io/avx512", "true"),
        ]);
        assert!(req.satisfied_by(&kv));
        assert!(req.satisfied_by(&lab));
        assert!(!req.satisfied_by(&no_feature));
        assert!(!req.satisfied_by(&other_model));
        assert!(!req.satisfied_by(&false_value));
    }

    #[test]
    fn host_model_vm_on_an_unlabelled_node_is_cpu_mode_not_migratable() {
        let v = vmi(CpuModel::HostModel, vec![]);
        let err = host_model_requirement(&v, Some(&node(&[]))).unwrap_err();
        assert_eq!(err.reason.as_str(), "CPUModeLiveMigratable");
        assert!(err.message.contains("\"n1\""), "{}", err.message);
        // Unknown source node: same answer.
        assert!(host_model_requirement(&v, None).is_err());
        // Non-host-model VMs have no requirement at all.
        for cpu in [CpuModel::HostPassthrough, CpuModel::Named("Haswell".into())] {
            assert_eq!(host_model_requirement(&vmi(cpu, vec![]), None), Ok(None));
        }
    }

    #[test]
    fn cpu_model_from_spec_defaults_to_host_model() {
        assert_eq!(CpuModel::from_spec(None), CpuModel::HostModel);
        assert_eq!(CpuModel::from_spec(Some("host-model")), CpuModel::HostModel);
        assert_eq!(
            CpuModel::from_spec(Some("host-passthrough")),
            CpuModel::HostPassthrough
        );
        assert_eq!(
            CpuModel::from_spec(Some("Haswell")),
            CpuModel::Named("Haswell".into())
        );
    }

    #[test]
    fn condition_shape() {
        let c = Migratability::Migratable {
            method: MigrationMethod::LiveMigration,
        }
        .condition();
        assert_eq!(
            (c.type_, c.status, c.reason),
            ("LiveMigratable", "True", None)
        );
        let c = Migratability::NotMigratable(NotMigratable {
            reason: NotMigratableReason::DisksNotLiveMigratable,
            message: "m".into(),
        })
        .condition();
        assert_eq!(
            (c.status, c.reason, c.message.as_deref()),
            ("False", Some("DisksNotLiveMigratable"), Some("m"))
        );
    }
}
