//! Launcher pods (KubeVirt's virt-launcher model): one Pod per VMI runs
//! `mignet launcher`, which runs the VM's QEMU. Kubernetes places the pod
//! (so the scheduler sees the VM's memory and CPU), keeps it apart from the
//! node agent (so an agent restart never touches a VM) and garbage-collects
//! it with its VMI (owner reference). A migration gets a second pod, the
//! target, started with `-incoming`; the agents proxy between the two.
//!
//! Pure: the pod a VMI needs, and what a VMI's pods mean for its status
//! ([`vmi_actions`]). The controller pass does the writes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvVar, HostPathVolumeSource, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, PersistentVolumeClaim,
    PersistentVolumeClaimVolumeSource, Pod, PodSpec, ResourceRequirements, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;

use crate::api::{
    MigrationPhase, PersistentVolumeClaimInfo, VirtualMachineInstance,
    VirtualMachineInstanceMigration, VmiCondition, VmiPhase, VolumeStatus,
};
pub use crate::backend::protocol::{KVM_LABEL, LAUNCHER_LABEL, SCHEDULABLE_LABEL};
use crate::launcher::request::vm_request;
use crate::launcher::{self as launch, Boot, DiskSpec, LaunchSpec};

/// The VMI's UID (KubeVirt's label of the same name).
pub const CREATED_BY_LABEL: &str = "kubevirt.io/created-by";
/// The VMI's name, for `kubectl get pods -l`.
pub const VMI_NAME_LABEL: &str = "vm.kubevirt.io/name";
/// The migration a target pod was made for (KubeVirt's label).
pub const MIGRATION_LABEL: &str = "kubevirt.io/migrationJobUID";
/// Where a disk's claim is mounted in the launcher pod; the image is
/// `<mount>/disk.img` (KubeVirt's filesystem-mode layout).
pub const DISKS_ROOT: &str = "/var/run/mignet/disks";
pub const DISK_IMAGE: &str = "disk.img";
/// The launcher's container (KubeVirt's name).
pub const CONTAINER: &str = "compute";

/// Memory the launcher pod asks for on top of the guest's: QEMU itself,
/// the launcher, TCG's translation cache in use, and the guest's page
/// tables. A KubeVirt-like estimate (KubeVirt computes about 180 MiB plus
/// per-vCPU and per-GiB terms); measured on this machine a 2 GiB TCG guest's
/// QEMU sits near 130 MiB above the guest pages it touched.
pub fn memory_overhead_mib(guest_mib: u64, vcpus: u32) -> u64 {
    192 + 8 * u64::from(vcpus) + guest_mib.div_ceil(512)
}

/// How the controller makes launcher pods (from `mignet manager`'s flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LauncherSettings {
    /// The mignet image (it holds `mignet launcher`, QEMU and the lab guest).
    pub image: String,
    /// `None` = Kubernetes' default for the image.
    pub image_pull_policy: Option<String>,
    /// KubeVirt's `useEmulation`: TCG may run a VM where KVM does not work.
    /// Off = the pod asks for a node labelled [`KVM_LABEL`]`=true` and the
    /// `/dev/kvm` device.
    pub emulation_allowed: bool,
}

/// What a launcher pod is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role<'a> {
    /// The VM's first pod.
    Source,
    /// A migration's destination: waits with `-incoming`, never on
    /// `source_node`, and (host-model CPU) only where the source's CPU
    /// model is offered.
    Target {
        migration_uid: &'a str,
        source_node: &'a str,
        /// Node labels the target must carry (`key = "true"`).
        required_labels: Vec<String>,
    },
}

impl Role<'_> {
    fn label(&self) -> &'static str {
        match self {
            Role::Source => "source",
            Role::Target { .. } => "target",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LauncherError {
    #[error("spec.volumes[{index}] ({name}): {source_kind} volumes are not supported; use persistentVolumeClaim")]
    UnsupportedVolume {
        index: usize,
        name: String,
        source_kind: &'static str,
    },
    #[error("spec.domain.devices.disks[{index}] ({name}): no volume of that name in spec.volumes")]
    DiskWithoutVolume { index: usize, name: String },
    #[error("spec.domain.devices.disks[{index}].disk.bus: {bus:?} is not supported (virtio, sata, scsi)")]
    UnsupportedBus { index: usize, bus: String },
}

/// `virt-launcher-<vmi>-<5 characters of the uid>`: stable for one VMI (or
/// one migration), so a create that raced is an AlreadyExists, not a second
/// pod.
pub fn pod_name(vmi_name: &str, uid: &str) -> String {
    let suffix: String = uid
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(5)
        .collect::<String>()
        .to_ascii_lowercase();
    // Pod names become hostnames (63 characters).
    let base: String = vmi_name.chars().take(63 - 14 - 6).collect();
    format!("virt-launcher-{base}-{suffix}")
}

/// The disks the launcher attaches, in the domain's disk order (volumes
/// without a disk entry follow, as virtio).
pub fn disks(vmi: &VirtualMachineInstance) -> Result<Vec<DiskSpec>, LauncherError> {
    let mut out = Vec::new();
    for (index, v) in vmi.spec.volumes.iter().enumerate() {
        let source_kind = if v.persistent_volume_claim.is_some() {
            continue;
        } else if v.data_volume.is_some() {
            "dataVolume"
        } else if v.container_disk.is_some() {
            "containerDisk"
        } else {
            "this kind of"
        };
        return Err(LauncherError::UnsupportedVolume {
            index,
            name: v.name.clone(),
            source_kind,
        });
    }
    let listed = vmi
        .spec
        .domain
        .devices
        .as_ref()
        .map(|d| d.disks.clone())
        .unwrap_or_default();
    for (index, d) in listed.iter().enumerate() {
        let Some(v) = vmi.spec.volumes.iter().find(|v| v.name == d.name) else {
            return Err(LauncherError::DiskWithoutVolume {
                index,
                name: d.name.clone(),
            });
        };
        let bus = d
            .disk
            .as_ref()
            .and_then(|t| t.bus.clone())
            .unwrap_or_else(|| "virtio".into());
        if !matches!(bus.as_str(), "virtio" | "sata" | "scsi") {
            return Err(LauncherError::UnsupportedBus { index, bus });
        }
        out.push(disk_spec(&v.name, bus, v));
    }
    for v in &vmi.spec.volumes {
        if !listed.iter().any(|d| d.name == v.name) {
            out.push(disk_spec(&v.name, "virtio".into(), v));
        }
    }
    Ok(out)
}

fn disk_spec(name: &str, bus: String, v: &crate::api::Volume) -> DiskSpec {
    DiskSpec {
        name: name.to_owned(),
        path: format!("{DISKS_ROOT}/{name}/{DISK_IMAGE}").into(),
        bus,
        read_only: v
            .persistent_volume_claim
            .as_ref()
            .and_then(|c| c.read_only)
            .unwrap_or(false),
    }
}

/// What the launcher runs: the VMI's memory, CPUs and disks; a VM without
/// disks boots the lab guest shipped in the image.
pub fn launch_spec(
    vmi: &VirtualMachineInstance,
    incoming: bool,
    settings: &LauncherSettings,
) -> Result<LaunchSpec, LauncherError> {
    let disks = disks(vmi)?;
    let boot = if disks.is_empty() {
        let (kernel, initrd) = launch::guest_files();
        Boot::Kernel { kernel, initrd }
    } else {
        Boot::Disk
    };
    Ok(LaunchSpec {
        request: vm_request(vmi),
        boot,
        disks,
        emulation_allowed: settings.emulation_allowed,
        incoming,
    })
}

fn owner(vmi: &VirtualMachineInstance) -> OwnerReference {
    OwnerReference {
        api_version: "kubevirt.io/v1".into(),
        kind: "VirtualMachineInstance".into(),
        name: vmi.name_any(),
        uid: vmi.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// `expr` added to every required node-selector term (terms are ORed, so an
/// extra constraint must be in each of them).
fn require_everywhere(affinity: &mut Affinity, expr: NodeSelectorRequirement) {
    let na = affinity
        .node_affinity
        .get_or_insert_with(NodeAffinity::default);
    let req = na
        .required_during_scheduling_ignored_during_execution
        .get_or_insert_with(|| NodeSelector {
            node_selector_terms: Vec::new(),
        });
    if req.node_selector_terms.is_empty() {
        req.node_selector_terms.push(NodeSelectorTerm::default());
    }
    for term in &mut req.node_selector_terms {
        term.match_expressions
            .get_or_insert_with(Vec::new)
            .push(expr.clone());
    }
}

/// The launcher pod for `vmi` in `role`.
pub fn launcher_pod(
    vmi: &VirtualMachineInstance,
    role: &Role<'_>,
    settings: &LauncherSettings,
) -> Result<Pod, LauncherError> {
    let ns = vmi.namespace().unwrap_or_default();
    let vmi_uid = vmi.metadata.uid.clone().unwrap_or_default();
    let name = match role {
        Role::Source => pod_name(&vmi.name_any(), &vmi_uid),
        Role::Target { migration_uid, .. } => pod_name(&vmi.name_any(), migration_uid),
    };
    let spec = launch_spec(vmi, matches!(role, Role::Target { .. }), settings)?;
    let req = &spec.request;
    let run_dir = launch::run_dir_for(&ns, &name);

    let mut labels = BTreeMap::from([
        (LAUNCHER_LABEL.to_owned(), role.label().to_owned()),
        ("kubevirt.io".to_owned(), "virt-launcher".to_owned()),
        (CREATED_BY_LABEL.to_owned(), vmi_uid),
        (VMI_NAME_LABEL.to_owned(), vmi.name_any()),
    ]);
    let mut node_selector = vmi.spec.node_selector.clone();
    node_selector.insert(SCHEDULABLE_LABEL.into(), "true".into());
    if !settings.emulation_allowed {
        node_selector.insert(KVM_LABEL.into(), "true".into());
    }
    let mut affinity = vmi.spec.affinity.clone().unwrap_or_default();
    if let Role::Target {
        migration_uid,
        source_node,
        required_labels,
    } = role
    {
        labels.insert(MIGRATION_LABEL.into(), (*migration_uid).to_owned());
        // Never the node the VM leaves (KubeVirt's anti-affinity).
        require_everywhere(
            &mut affinity,
            NodeSelectorRequirement {
                key: "kubernetes.io/hostname".into(),
                operator: "NotIn".into(),
                values: Some(vec![(*source_node).to_owned()]),
            },
        );
        for l in required_labels {
            node_selector.insert(l.clone(), "true".into());
        }
    }

    let mut volumes = vec![Volume {
        name: "vms".into(),
        host_path: Some(HostPathVolumeSource {
            path: launch::RUN_ROOT.into(),
            type_: Some("DirectoryOrCreate".into()),
        }),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "vms".into(),
        mount_path: launch::RUN_ROOT.into(),
        ..Default::default()
    }];
    for v in &vmi.spec.volumes {
        let Some(c) = &v.persistent_volume_claim else {
            continue;
        };
        let vol = format!("disk-{}", v.name);
        volumes.push(Volume {
            name: vol.clone(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: c.claim_name.clone(),
                read_only: c.read_only,
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: vol,
            mount_path: format!("{DISKS_ROOT}/{}", v.name),
            read_only: c.read_only,
            ..Default::default()
        });
    }
    if !settings.emulation_allowed {
        volumes.push(Volume {
            name: "kvm".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/dev/kvm".into(),
                type_: Some("CharDevice".into()),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "kvm".into(),
            mount_path: "/dev/kvm".into(),
            ..Default::default()
        });
    }

    let memory_mib = req.memory_mib + memory_overhead_mib(req.memory_mib, req.vcpus);
    let requests = BTreeMap::from([
        ("memory".to_owned(), Quantity(format!("{memory_mib}Mi"))),
        (
            "cpu".to_owned(),
            Quantity(format!("{}m", 100 * u64::from(req.vcpus))),
        ),
    ]);
    let spec_json = serde_json::to_string(&spec).unwrap_or_default();
    let container = Container {
        name: CONTAINER.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        command: Some(vec!["/usr/local/bin/mignet".into()]),
        args: Some(vec![
            "launcher".into(),
            "--run-dir".into(),
            run_dir.display().to_string(),
        ]),
        env: Some(vec![
            EnvVar {
                name: launch::SPEC_ENV.into(),
                value: Some(spec_json),
                ..Default::default()
            },
            EnvVar {
                name: "RUST_LOG".into(),
                value: Some("info".into()),
                ..Default::default()
            },
        ]),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        // The launcher writes why QEMU could not run (no KVM, bad disk) to
        // the termination log; the controller copies it to the VMI.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    let has_affinity = affinity != Affinity::default();
    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(ns),
            labels: Some(labels),
            owner_references: Some(vec![owner(vmi)]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            restart_policy: Some("Never".into()),
            // The VM gets SIGTERM (QEMU exits cleanly) and this long to stop.
            termination_grace_period_seconds: Some(30),
            automount_service_account_token: Some(false),
            node_selector: Some(node_selector),
            tolerations: (!vmi.spec.tolerations.is_empty()).then(|| vmi.spec.tolerations.clone()),
            affinity: has_affinity.then_some(affinity),
            volumes: Some(volumes),
            ..Default::default()
        }),
        status: None,
    })
}

// ------------------------------------------------------------ observing pods

/// What the controller needs of one launcher pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    pub uid: String,
    pub node: Option<String>,
    pub phase: PodPhase,
    pub target_of: Option<String>,
    pub deleting: bool,
    /// The scheduler's reason when it could not place the pod.
    pub unschedulable: Option<String>,
    /// Why the launcher ended (its termination message or exit code).
    pub ended: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    Pending,
    Running,
    Succeeded,
    Failed,
}

impl PodView {
    pub fn of(pod: &Pod) -> Self {
        let st = pod.status.clone().unwrap_or_default();
        let phase = match st.phase.as_deref() {
            Some("Running") => PodPhase::Running,
            Some("Succeeded") => PodPhase::Succeeded,
            Some("Failed") => PodPhase::Failed,
            _ => PodPhase::Pending,
        };
        let unschedulable = st
            .conditions
            .iter()
            .flatten()
            .find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
            .map(|c| c.message.clone().unwrap_or_else(|| "unschedulable".into()));
        let ended = st
            .container_statuses
            .iter()
            .flatten()
            .find(|c| c.name == CONTAINER)
            .and_then(|c| c.state.as_ref()?.terminated.clone())
            .map(|t| {
                let msg = t.message.unwrap_or_default();
                let msg = msg.trim();
                if msg.is_empty() {
                    format!("launcher exited with code {}", t.exit_code)
                } else {
                    format!("launcher exited with code {}: {msg}", t.exit_code)
                }
            });
        PodView {
            name: pod.name_any(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            phase,
            target_of: pod.labels().get(MIGRATION_LABEL).cloned(),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            unschedulable,
            ended,
        }
    }

    pub fn finished(&self) -> bool {
        matches!(self.phase, PodPhase::Succeeded | PodPhase::Failed)
    }

    /// Running on a node (QEMU is up or coming up there).
    pub fn running_on(&self) -> Option<&str> {
        (self.phase == PodPhase::Running && !self.deleting)
            .then_some(self.node.as_deref())
            .flatten()
    }
}

/// The pods of `vmi` among `pods` (by the created-by label = VMI uid).
pub fn pods_of<'p>(vmi: &VirtualMachineInstance, pods: &'p [Pod]) -> Vec<&'p Pod> {
    let uid = vmi.metadata.uid.as_deref().unwrap_or_default();
    let ns = vmi.namespace();
    pods.iter()
        .filter(|p| {
            p.namespace() == ns && p.labels().get(CREATED_BY_LABEL).map(String::as_str) == Some(uid)
        })
        .collect()
}

/// How long a migration's target pod may stay unschedulable before the
/// migration fails (KubeVirt's default for the same wait).
pub const TARGET_UNSCHEDULABLE_TIMEOUT_S: i64 = 300;

/// What to do about a migration's target pod (in Scheduling).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetStep {
    /// No pod yet: make it.
    Create,
    /// It runs on `node`: the migration's target.
    Ready { node: String },
    /// Made, not placed or not started yet.
    Wait,
    /// The scheduler cannot place it (yet): say why on the VMIM.
    Unschedulable { message: String },
    /// The migration fails with this reason.
    Fail {
        reason: &'static str,
        message: String,
    },
}

/// The step for a target pod (`None`: not made yet) that has waited
/// `waited_s` seconds since the migration entered Scheduling.
pub fn target_step(pod: Option<&PodView>, waited_s: i64) -> TargetStep {
    let Some(p) = pod else {
        return TargetStep::Create;
    };
    if p.finished() {
        return TargetStep::Fail {
            reason: "TargetPodFailed",
            message: format!(
                "target pod {} ended before the migration: {}",
                p.name,
                p.ended.clone().unwrap_or_else(|| "no reason given".into())
            ),
        };
    }
    if let Some(node) = p.running_on() {
        return TargetStep::Ready {
            node: node.to_owned(),
        };
    }
    match &p.unschedulable {
        None => TargetStep::Wait,
        Some(why) if waited_s < TARGET_UNSCHEDULABLE_TIMEOUT_S => TargetStep::Unschedulable {
            message: why.clone(),
        },
        Some(why) => TargetStep::Fail {
            reason: "TargetPodUnschedulable",
            message: format!(
                "target pod {} could not be placed within {TARGET_UNSCHEDULABLE_TIMEOUT_S} s: {why}",
                p.name
            ),
        },
    }
}

/// The node labels a migration's target must carry: a host-model CPU (the
/// default model) runs only where the source's host model is offered.
pub fn target_required_labels(
    vmi: &VirtualMachineInstance,
    source: Option<&mignet_policy::NodeView>,
) -> Vec<String> {
    let host_model = vmi
        .spec
        .domain
        .cpu
        .as_ref()
        .and_then(|c| c.model.as_deref())
        .is_none_or(|m| m == "host-model");
    source
        .filter(|_| host_model)
        .and_then(mignet_policy::migratable::HostModelRequirement::of_source)
        .map(|r| {
            r.models
                .iter()
                .map(|m| format!("{}{m}", mignet_policy::migratable::HOST_MODEL_CPU_LABEL))
                .collect()
        })
        .unwrap_or_default()
}

/// The target pod of the VMI's migration that is under way, among `vmims`
/// (the VMI's own): started (past Pending) and not final. A final
/// migration's target pod is not in flight, so it goes; so does a cancelled
/// one's before its stream can start (before TargetReady).
///
/// A cancelled migration whose stream may already be running keeps its
/// target until the source records the outcome. The cancel can lose the
/// race with the switch-over. When it did, that target pod was the only
/// copy of the guest, and the soak saw the VM lost when it went.
///
/// A Succeeded migration also keeps its target while `vmi`, as read, still
/// names that migration without its completion. The agent writes the VMI's
/// end (with the new nodeName) before the VMIM's phase, so such a VMI was
/// read before that write. Judged by it, the target pod (now the only copy
/// of the guest) sits on a node the VM has "not reached" and looked left
/// over: a back-to-back run in CI saw the controller delete it and the VM
/// fail with LauncherGone.
pub fn in_flight_target<'m>(
    vmi: &VirtualMachineInstance,
    vmims: impl IntoIterator<Item = &'m VirtualMachineInstanceMigration>,
) -> Option<String> {
    let recorded = vmi.status.as_ref().and_then(|s| s.migration_state.as_ref());
    let vmi_lags = |m: &VirtualMachineInstanceMigration| {
        recorded.is_some_and(|r| {
            r.migration_uid.is_some()
                && r.migration_uid == m.metadata.uid
                && r.completed != Some(true)
        })
    };
    vmims
        .into_iter()
        .filter(|m| {
            let phase = m.status.as_ref().and_then(|s| s.phase);
            let cancelled_early = m.metadata.deletion_timestamp.is_some()
                && phase.is_some_and(|p| p < MigrationPhase::TargetReady);
            !cancelled_early
        })
        .filter(|m| {
            m.status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(|p| match p {
                    MigrationPhase::Pending | MigrationPhase::Failed => false,
                    MigrationPhase::Succeeded => vmi_lags(m),
                    _ => true,
                })
        })
        .find_map(|m| {
            m.status
                .as_ref()?
                .migration_state
                .as_ref()?
                .target_pod
                .clone()
        })
}

/// One change to a VMI's status or pods that its pods call for.
#[derive(Debug, Clone, PartialEq)]
pub enum VmiAction {
    /// Make the VM's first launcher pod (and move the VMI to Scheduling).
    CreateSourcePod,
    /// The pod runs on `node`: `status.nodeName`, phase Scheduled (the
    /// agent moves it to Running once it reaches the VM's QEMU).
    Scheduled { node: String },
    /// Set (or refresh) a condition.
    Condition(VmiCondition),
    /// The VM cannot run or stopped running: a final phase with the reason.
    End {
        phase: VmiPhase,
        reason: String,
        message: String,
    },
    /// A pod that no longer runs this VM (the source after a migration, a
    /// failed migration's target, a finished pod).
    DeletePod { name: String },
    /// `status.activePods` (pod UID -> node) changed.
    ActivePods(BTreeMap<String, String>),
    /// The VM has left the node `status.evacuationNodeName` names (a drain
    /// moved it): the mark goes, or a later cordon of that node alone would
    /// evacuate the VM again once it is back there.
    ClearEvacuation,
}

fn condition(type_: &str, status: &str, reason: &str, message: &str) -> VmiCondition {
    VmiCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        ..Default::default()
    }
}

/// `status.volumeStatus` for the VMI's claims (access modes from the PVCs;
/// a missing claim has none and so is not live-migratable).
pub fn volume_status(
    vmi: &VirtualMachineInstance,
    claims: &BTreeMap<String, &PersistentVolumeClaim>,
) -> Vec<VolumeStatus> {
    vmi.spec
        .volumes
        .iter()
        .filter_map(|v| {
            let c = v.persistent_volume_claim.as_ref()?;
            let pvc = claims.get(&c.claim_name);
            let spec = pvc.and_then(|p| p.spec.as_ref());
            let status = pvc.and_then(|p| p.status.as_ref());
            Some(VolumeStatus {
                name: v.name.clone(),
                persistent_volume_claim_info: Some(PersistentVolumeClaimInfo {
                    claim_name: Some(c.claim_name.clone()),
                    access_modes: status
                        .and_then(|s| s.access_modes.clone())
                        .or_else(|| spec.and_then(|s| s.access_modes.clone()))
                        .unwrap_or_default(),
                    capacity: status
                        .and_then(|s| s.capacity.clone())
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, q)| (k, crate::api::QuantityValue::String(q.0)))
                        .collect(),
                    volume_mode: spec.and_then(|s| s.volume_mode.clone()),
                }),
            })
        })
        .collect()
}

/// What `vmi`'s launcher pods call for. `in_flight_target` is the target
/// pod of the VMI's migration while it is neither completed nor failed;
/// `create_error` is why the source pod cannot be built, if it cannot.
pub fn vmi_actions(
    vmi: &VirtualMachineInstance,
    pods: &[PodView],
    in_flight_target: Option<&str>,
    create_error: Option<&LauncherError>,
) -> Vec<VmiAction> {
    use crate::control::vm::{
        POD_SCHEDULED_CONDITION, SYNCHRONIZED_CONDITION, UNSCHEDULABLE_REASON,
    };
    let st = vmi.status.clone().unwrap_or_default();
    let mut out = Vec::new();
    if vmi.metadata.deletion_timestamp.is_some()
        || matches!(st.phase, Some(VmiPhase::Succeeded | VmiPhase::Failed))
    {
        // Over: pods still running go (a migration target, a VM whose VMI
        // was deleted). A finished pod stays, as KubeVirt keeps it, so that
        // `kubectl logs` and its terminated status still say why the VM
        // ended; the owner reference takes it with the VMI.
        for p in pods.iter().filter(|p| !p.deleting && !p.finished()) {
            out.push(VmiAction::DeletePod {
                name: p.name.clone(),
            });
        }
        return out;
    }
    let active: BTreeMap<String, String> = pods
        .iter()
        .filter(|p| !p.finished() && !p.deleting)
        .filter_map(|p| Some((p.uid.clone(), p.node.clone()?)))
        .collect();
    if active != st.active_pods {
        out.push(VmiAction::ActivePods(active));
    }

    let Some(node) = st.node_name.clone() else {
        // Not placed yet: the source pod places it.
        let source = pods.iter().find(|p| p.target_of.is_none() && !p.deleting);
        match source {
            None => match create_error {
                Some(e) => out.push(VmiAction::Condition(condition(
                    SYNCHRONIZED_CONDITION,
                    "False",
                    "FailedCreate",
                    &e.to_string(),
                ))),
                None => out.push(VmiAction::CreateSourcePod),
            },
            Some(p) if p.finished() => out.push(VmiAction::End {
                phase: VmiPhase::Failed,
                reason: "LauncherFailed".into(),
                message: format!(
                    "launcher pod {} ended before the VM ran: {}",
                    p.name,
                    p.ended.clone().unwrap_or_else(|| "no reason given".into())
                ),
            }),
            Some(p) => {
                if let Some(n) = p.running_on() {
                    out.push(VmiAction::Scheduled { node: n.to_owned() });
                    out.push(VmiAction::Condition(VmiCondition {
                        type_: POD_SCHEDULED_CONDITION.into(),
                        status: "True".into(),
                        ..Default::default()
                    }));
                } else if let Some(why) = &p.unschedulable {
                    out.push(VmiAction::Condition(condition(
                        POD_SCHEDULED_CONDITION,
                        "False",
                        UNSCHEDULABLE_REASON,
                        why,
                    )));
                }
            }
        }
        return out;
    };

    if st
        .evacuation_node_name
        .as_deref()
        .is_some_and(|e| e != node.as_str())
    {
        out.push(VmiAction::ClearEvacuation);
    }
    // Placed: the pod on its node runs the VM. A pod elsewhere is either
    // the in-flight migration's target or left over.
    let runs_here = |p: &&PodView| p.node.as_deref() == Some(node.as_str()) && !p.deleting;
    let current = pods.iter().find(|p| runs_here(p) && !p.finished());
    if current.is_none() {
        if let Some(p) = pods.iter().find(runs_here) {
            // QEMU exited on the VM's node: guest shutdown (0) or a crash.
            let (phase, reason) = if p.phase == PodPhase::Succeeded {
                (VmiPhase::Succeeded, "GuestShutdown")
            } else {
                (VmiPhase::Failed, "LauncherFailed")
            };
            out.push(VmiAction::End {
                phase,
                reason: reason.into(),
                message: format!(
                    "launcher pod {} on {node} ended: {}",
                    p.name,
                    p.ended.clone().unwrap_or_else(|| "no reason given".into())
                ),
            });
        } else if st.phase == Some(VmiPhase::Running) || st.phase == Some(VmiPhase::Scheduled) {
            out.push(VmiAction::End {
                phase: VmiPhase::Failed,
                reason: "LauncherGone".into(),
                message: format!("no launcher pod of this VM runs on {node}"),
            });
        }
    }
    for p in pods {
        if p.deleting || runs_here(&p) && !p.finished() {
            continue;
        }
        if in_flight_target == Some(p.name.as_str()) {
            continue;
        }
        if current.is_none() && runs_here(&p) {
            // The VM's last pod: kept until the VMI records its end.
            continue;
        }
        out.push(VmiAction::DeletePod {
            name: p.name.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        Cpu, DomainSpec, Memory, PersistentVolumeClaimVolumeSource as VmPvc, QuantityValue,
        VirtualMachineInstanceSpec, VirtualMachineInstanceStatus, Volume as VmVolume,
    };

    fn settings(emulation: bool) -> LauncherSettings {
        LauncherSettings {
            image: "mignet:dev".into(),
            image_pull_policy: Some("Never".into()),
            emulation_allowed: emulation,
        }
    }

    fn vmi(name: &str) -> VirtualMachineInstance {
        let mut v = VirtualMachineInstance::new(
            name,
            VirtualMachineInstanceSpec {
                domain: DomainSpec {
                    cpu: Some(Cpu {
                        model: Some("host-model".into()),
                        cores: Some(2),
                        ..Default::default()
                    }),
                    memory: Some(Memory {
                        guest: Some(QuantityValue::String("2Gi".into())),
                    }),
                    ..Default::default()
                },
                ..Default::default()
            },
        );
        v.metadata.namespace = Some("default".into());
        v.metadata.uid = Some("1a2b3c4d-0000".into());
        v
    }

    fn pod(name: &str, node: Option<&str>, phase: PodPhase, target_of: Option<&str>) -> PodView {
        PodView {
            name: name.into(),
            uid: format!("uid-{name}"),
            node: node.map(Into::into),
            phase,
            target_of: target_of.map(Into::into),
            deleting: false,
            unschedulable: None,
            ended: None,
        }
    }

    #[test]
    fn source_pod_requests_guest_memory_plus_overhead_and_cpu() {
        let p = launcher_pod(&vmi("fedora"), &Role::Source, &settings(true)).unwrap();
        assert_eq!(
            p.metadata.name.as_deref(),
            Some("virt-launcher-fedora-1a2b3")
        );
        let spec = p.spec.unwrap();
        let c = &spec.containers[0];
        let req = c.resources.as_ref().unwrap().requests.as_ref().unwrap();
        // 2048 + 192 + 2 * 8 + 2048 / 512
        assert_eq!(req["memory"].0, "2260Mi");
        assert_eq!(req["cpu"].0, "200m");
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(
            spec.node_selector
                .unwrap()
                .get(SCHEDULABLE_LABEL)
                .map(String::as_str),
            Some("true")
        );
        let env = c.env.as_ref().unwrap();
        let json = env.iter().find(|e| e.name == launch::SPEC_ENV).unwrap();
        let ls: LaunchSpec = serde_json::from_str(json.value.as_ref().unwrap()).unwrap();
        assert!(!ls.incoming && ls.emulation_allowed && ls.disks.is_empty());
        assert!(matches!(ls.boot, Boot::Kernel { .. }));
        assert_eq!((ls.request.memory_mib, ls.request.vcpus), (2048, 2));
        let owner = &p.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("VirtualMachineInstance", Some(true))
        );
    }

    #[test]
    fn without_emulation_the_pod_needs_a_kvm_node_and_the_device() {
        let p = launcher_pod(&vmi("a"), &Role::Source, &settings(false)).unwrap();
        let spec = p.spec.unwrap();
        assert_eq!(spec.node_selector.unwrap()[KVM_LABEL], "true");
        assert!(spec
            .volumes
            .unwrap()
            .iter()
            .any(|v| v.host_path.as_ref().is_some_and(|h| h.path == "/dev/kvm")));
    }

    #[test]
    fn target_pod_avoids_the_source_node_in_every_term_and_waits_incoming() {
        let mut v = vmi("a");
        v.spec.affinity = Some(Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![
                        NodeSelectorTerm::default(),
                        NodeSelectorTerm::default(),
                    ],
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let role = Role::Target {
            migration_uid: "ffee-1",
            source_node: "node1",
            required_labels: vec!["host-model-cpu.node.kubevirt.io/qemu64".into()],
        };
        let p = launcher_pod(&v, &role, &settings(true)).unwrap();
        assert_eq!(p.metadata.name.as_deref(), Some("virt-launcher-a-ffee1"));
        assert_eq!(p.labels()[MIGRATION_LABEL], "ffee-1");
        let spec = p.spec.unwrap();
        let terms = spec
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 2);
        for t in terms {
            let e = &t.match_expressions.unwrap()[0];
            assert_eq!(
                (e.operator.as_str(), e.values.clone().unwrap()),
                ("NotIn", vec!["node1".to_string()])
            );
        }
        assert_eq!(
            spec.node_selector.unwrap()["host-model-cpu.node.kubevirt.io/qemu64"],
            "true"
        );
        let env = &spec.containers[0].env.as_ref().unwrap()[0];
        let ls: LaunchSpec = serde_json::from_str(env.value.as_ref().unwrap()).unwrap();
        assert!(ls.incoming);
    }

    #[test]
    fn claims_become_disks_in_domain_order_and_other_sources_are_refused() {
        let mut v = vmi("a");
        v.spec.volumes = vec![VmVolume {
            name: "rootdisk".into(),
            persistent_volume_claim: Some(VmPvc {
                claim_name: "fedora-rwx".into(),
                read_only: None,
            }),
            ..Default::default()
        }];
        let p = launcher_pod(&v, &Role::Source, &settings(true)).unwrap();
        let spec = p.spec.unwrap();
        let mount = spec.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "disk-rootdisk")
            .cloned()
            .unwrap();
        assert_eq!(mount.mount_path, "/var/run/mignet/disks/rootdisk");
        let d = disks(&v).unwrap();
        assert_eq!(
            d[0].path.to_str(),
            Some("/var/run/mignet/disks/rootdisk/disk.img")
        );
        assert_eq!(d[0].bus, "virtio");
        v.spec.volumes.push(VmVolume {
            name: "cd".into(),
            container_disk: Some(Default::default()),
            ..Default::default()
        });
        let e = disks(&v).unwrap_err().to_string();
        assert!(e.contains("spec.volumes[1] (cd): containerDisk"), "{e}");
    }

    #[test]
    fn unplaced_vmi_gets_a_pod_then_its_node_or_the_schedulers_reason() {
        let v = vmi("a");
        assert_eq!(
            vmi_actions(&v, &[], None, None),
            vec![VmiAction::CreateSourcePod]
        );
        let mut p = pod("virt-launcher-a-1a2b3", None, PodPhase::Pending, None);
        p.unschedulable = Some("0/3 nodes are available: 3 Insufficient memory.".into());
        let acts = vmi_actions(&v, &[p.clone()], None, None);
        assert!(acts.iter().any(|a| matches!(a, VmiAction::Condition(c)
            if c.type_ == "PodScheduled" && c.status == "False"
            && c.message.as_deref() == Some("0/3 nodes are available: 3 Insufficient memory."))));
        p.unschedulable = None;
        p.node = Some("node2".into());
        p.phase = PodPhase::Running;
        let acts = vmi_actions(&v, &[p.clone()], None, None);
        assert!(acts.contains(&VmiAction::Scheduled {
            node: "node2".into()
        }));
        p.phase = PodPhase::Failed;
        p.ended = Some("launcher exited with code 3: KVM is not usable".into());
        let acts = vmi_actions(&v, &[p], None, None);
        assert!(acts.iter().any(
            |a| matches!(a, VmiAction::End { phase: VmiPhase::Failed, message, .. }
            if message.contains("KVM is not usable"))
        ));
    }

    #[test]
    fn a_placed_vm_keeps_its_pod_and_the_in_flight_target_only() {
        let mut v = vmi("a");
        v.status = Some(VirtualMachineInstanceStatus {
            node_name: Some("node1".into()),
            phase: Some(VmiPhase::Running),
            ..Default::default()
        });
        let src = pod("src", Some("node1"), PodPhase::Running, None);
        let tgt = pod("tgt", Some("node2"), PodPhase::Running, Some("m1"));
        let acts = vmi_actions(&v, &[src.clone(), tgt.clone()], Some("tgt"), None);
        assert!(
            !acts
                .iter()
                .any(|a| matches!(a, VmiAction::DeletePod { .. })),
            "{acts:?}"
        );
        // The migration failed: its target goes.
        let acts = vmi_actions(&v, &[src.clone(), tgt.clone()], None, None);
        assert!(acts.contains(&VmiAction::DeletePod { name: "tgt".into() }));
        // It succeeded: nodeName moved, the source goes.
        v.status.as_mut().unwrap().node_name = Some("node2".into());
        let acts = vmi_actions(&v, &[src, tgt], None, None);
        assert!(acts.contains(&VmiAction::DeletePod { name: "src".into() }));
        assert!(!acts.contains(&VmiAction::DeletePod { name: "tgt".into() }));
    }

    #[test]
    fn an_ended_vm_keeps_its_finished_pod_and_loses_running_ones() {
        let mut v = vmi("a");
        v.status = Some(VirtualMachineInstanceStatus {
            node_name: Some("node1".into()),
            phase: Some(VmiPhase::Failed),
            ..Default::default()
        });
        let mut src = pod("src", Some("node1"), PodPhase::Failed, None);
        src.ended = Some("launcher exited with code 1: QEMU".into());
        let tgt = pod("tgt", Some("node2"), PodPhase::Running, Some("m1"));
        let acts = vmi_actions(&v, &[src, tgt], None, None);
        assert_eq!(acts, vec![VmiAction::DeletePod { name: "tgt".into() }]);
    }

    #[test]
    fn the_evacuation_mark_goes_once_the_vm_has_left_that_node() {
        let mut v = vmi("a");
        v.status = Some(VirtualMachineInstanceStatus {
            node_name: Some("node1".into()),
            phase: Some(VmiPhase::Running),
            evacuation_node_name: Some("node1".into()),
            ..Default::default()
        });
        let src = pod("src", Some("node1"), PodPhase::Running, None);
        let acts = vmi_actions(&v, std::slice::from_ref(&src), None, None);
        assert!(
            !acts.contains(&VmiAction::ClearEvacuation),
            "still there: {acts:?}"
        );
        v.status.as_mut().unwrap().node_name = Some("node2".into());
        let tgt = pod("tgt", Some("node2"), PodPhase::Running, Some("m1"));
        let acts = vmi_actions(&v, &[src, tgt], None, None);
        assert!(acts.contains(&VmiAction::ClearEvacuation), "{acts:?}");
    }

    #[test]
    fn a_vm_whose_pod_ended_on_its_node_ends_with_the_reason() {
        let mut v = vmi("a");
        v.status = Some(VirtualMachineInstanceStatus {
            node_name: Some("node1".into()),
            phase: Some(VmiPhase::Running),
            ..Default::default()
        });
        let mut src = pod("src", Some("node1"), PodPhase::Succeeded, None);
        src.ended = Some("launcher exited with code 0".into());
        let acts = vmi_actions(&v, &[src], None, None);
        assert!(acts.iter().any(|a| matches!(
            a,
            VmiAction::End {
                phase: VmiPhase::Succeeded,
                ..
            }
        )));
        assert!(!acts
            .iter()
            .any(|a| matches!(a, VmiAction::DeletePod { .. })));
    }

    #[test]
    fn target_steps_from_the_pod_and_the_wait() {
        assert_eq!(target_step(None, 0), TargetStep::Create);
        let mut p = pod("tgt", None, PodPhase::Pending, Some("m1"));
        assert_eq!(target_step(Some(&p), 0), TargetStep::Wait);
        p.unschedulable = Some("0/3 nodes are available".into());
        assert_eq!(
            target_step(Some(&p), 299),
            TargetStep::Unschedulable {
                message: "0/3 nodes are available".into()
            }
        );
        assert!(matches!(
            target_step(Some(&p), 300),
            TargetStep::Fail { reason: "TargetPodUnschedulable", message } if message.contains("0/3 nodes")
        ));
        p.unschedulable = None;
        p.node = Some("node2".into());
        p.phase = PodPhase::Running;
        assert_eq!(
            target_step(Some(&p), 0),
            TargetStep::Ready {
                node: "node2".into()
            }
        );
        p.phase = PodPhase::Failed;
        p.ended = Some("launcher exited with code 1: QEMU".into());
        assert!(matches!(
            target_step(Some(&p), 0),
            TargetStep::Fail { reason: "TargetPodFailed", message } if message.contains("QEMU")
        ));
    }

    #[test]
    fn host_model_targets_need_the_sources_model_named_ones_do_not() {
        let node = mignet_policy::NodeView {
            name: "node1".into(),
            unschedulable: false,
            taints: Vec::new(),
            allocatable_memory: 1 << 34,
            labels: BTreeMap::from([(
                "host-model-cpu.node.kubevirt.io/qemu64".to_owned(),
                "true".to_owned(),
            )]),
        };
        let mut v = vmi("a");
        assert_eq!(
            target_required_labels(&v, Some(&node)),
            vec!["host-model-cpu.node.kubevirt.io/qemu64".to_string()]
        );
        assert!(target_required_labels(&v, None).is_empty());
        v.spec.domain.cpu.as_mut().unwrap().model = Some("Haswell".into());
        assert!(target_required_labels(&v, Some(&node)).is_empty());
    }

    #[test]
    fn only_a_started_unfinished_migrations_target_is_in_flight() {
        use crate::api::{
            VirtualMachineInstanceMigrationSpec, VirtualMachineInstanceMigrationState,
            VirtualMachineInstanceMigrationStatus,
        };
        let m = |phase: MigrationPhase| {
            let mut m = VirtualMachineInstanceMigration::new(
                "m",
                VirtualMachineInstanceMigrationSpec {
                    vmi_name: "a".into(),
                },
            );
            m.status = Some(VirtualMachineInstanceMigrationStatus {
                phase: Some(phase),
                migration_state: Some(VirtualMachineInstanceMigrationState {
                    target_pod: Some("tgt".into()),
                    ..Default::default()
                }),
                ..Default::default()
            });
            m
        };
        let v = vmi("a");
        assert_eq!(
            in_flight_target(&v, [&m(MigrationPhase::Running)]).as_deref(),
            Some("tgt")
        );
        for p in [
            MigrationPhase::Pending,
            MigrationPhase::Succeeded,
            MigrationPhase::Failed,
        ] {
            assert_eq!(in_flight_target(&v, [&m(p)]), None, "{p:?}");
        }
        let mut deleting = m(MigrationPhase::Scheduling);
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        assert_eq!(in_flight_target(&v, [&deleting]), None);
        // Cancelled while its stream may run: the switch-over can win the
        // race, so the target stays until the outcome is recorded.
        for p in [MigrationPhase::TargetReady, MigrationPhase::Running] {
            let mut cancelled = m(p);
            cancelled.metadata.deletion_timestamp = deleting.metadata.deletion_timestamp.clone();
            assert_eq!(
                in_flight_target(&v, [&cancelled]).as_deref(),
                Some("tgt"),
                "{p:?}"
            );
        }
    }

    #[test]
    fn a_succeeded_migrations_target_stays_while_the_vmi_read_lags() {
        use crate::api::{
            VirtualMachineInstanceMigrationSpec, VirtualMachineInstanceMigrationState,
            VirtualMachineInstanceMigrationStatus,
        };
        let mut m = VirtualMachineInstanceMigration::new(
            "m",
            VirtualMachineInstanceMigrationSpec {
                vmi_name: "a".into(),
            },
        );
        m.metadata.uid = Some("mig-2".into());
        m.status = Some(VirtualMachineInstanceMigrationStatus {
            phase: Some(MigrationPhase::Succeeded),
            migration_state: Some(VirtualMachineInstanceMigrationState {
                target_pod: Some("tgt".into()),
                completed: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        });
        let vmi_recording = |uid: Option<&str>, completed: Option<bool>| {
            let mut v = vmi("a");
            v.status = Some(VirtualMachineInstanceStatus {
                node_name: Some("node2".into()),
                migration_state: Some(VirtualMachineInstanceMigrationState {
                    migration_uid: uid.map(Into::into),
                    completed,
                    ..Default::default()
                }),
                ..Default::default()
            });
            v
        };
        // Read before the agent recorded the end: the target is the guest.
        let lagging = vmi_recording(Some("mig-2"), None);
        assert_eq!(in_flight_target(&lagging, [&m]).as_deref(), Some("tgt"));
        // Recorded (nodeName is the target's node) or moved on to another
        // migration: the pod is judged by where the VM runs.
        for v in [
            vmi_recording(Some("mig-2"), Some(true)),
            vmi_recording(Some("mig-3"), None),
            vmi_recording(None, None),
            vmi("a"),
        ] {
            assert_eq!(in_flight_target(&v, [&m]), None, "{:?}", v.status);
        }
        // The whole decision: with the lagging VMI on node2 and the target
        // pod on node1, that pod is not deleted.
        let pods = [
            pod("src", Some("node2"), PodPhase::Running, None),
            pod("tgt", Some("node1"), PodPhase::Running, Some("mig-2")),
        ];
        let keep = in_flight_target(&lagging, [&m]);
        let actions = vmi_actions(&lagging, &pods, keep.as_deref(), None);
        assert!(
            !actions
                .iter()
                .any(|a| matches!(a, VmiAction::DeletePod { name } if name == "tgt")),
            "{actions:?}"
        );
        let actions = vmi_actions(&lagging, &pods, None, None);
        assert!(
            actions
                .iter()
                .any(|a| matches!(a, VmiAction::DeletePod { name } if name == "tgt")),
            "without the rule the target goes: {actions:?}"
        );
    }

    #[test]
    fn pod_names_fit_a_hostname() {
        let n = pod_name(&"x".repeat(80), "abcdef");
        assert!(n.len() <= 63, "{n}");
        assert!(n.ends_with("-abcde"));
    }
}
