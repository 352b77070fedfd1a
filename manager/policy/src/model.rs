//! The plain input views the adapters fill from Kubernetes objects (cluster
//! mode) or from the local store (lab mode), and the effective limits.
//!
//! They hold only what a decision reads, already parsed: memory in bytes,
//! access modes as enums, the drain marker as a taint. Keeping them free of
//! kube types is what lets both adapters feed the same policy.

use std::collections::BTreeMap;
use std::fmt;

/// A point in time, in milliseconds since the Unix epoch.
///
/// Decisions never read a clock; the caller passes `now` and the objects'
/// timestamps in this unit (Kubernetes timestamps have second precision,
/// which fits).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub const fn from_unix_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub const fn from_unix_secs(s: i64) -> Self {
        Self(s.saturating_mul(1000))
    }

    pub const fn unix_millis(self) -> i64 {
        self.0
    }
}

/// `namespace/name` of a namespaced object (VMI or VMIM).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// ------------------------------------------------------------------ nodes

/// The taint key KubeVirt's evacuation controller reacts to (its default
/// `nodeDrainTaintKey`).
pub const DRAIN_TAINT_KEY: &str = "kubevirt.io/drain";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Taint {
    pub key: String,
    pub effect: TaintEffect,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct NodeView {
    pub name: String,
    /// `spec.unschedulable` (cordoned).
    pub unschedulable: bool,
    pub taints: Vec<Taint>,
    /// `status.allocatable.memory`, in bytes.
    pub allocatable_memory: u64,
    /// Node labels; the CPU-model labels of the node labeller live here.
    pub labels: BTreeMap<String, String>,
}

impl NodeView {
    /// True when the node is marked for drain: it carries the
    /// `kubevirt.io/drain` taint with any effect (KubeVirt reacts to the key).
    pub fn draining(&self) -> bool {
        self.taints.iter().any(|t| t.key == DRAIN_TAINT_KEY)
    }

    /// True when a new migration target may be placed here: not cordoned,
    /// not draining, and no taint a virt-launcher pod would not tolerate
    /// (`NoSchedule` / `NoExecute`; `PreferNoSchedule` is only a preference).
    pub fn schedulable(&self) -> bool {
        !self.unschedulable
            && !self.draining()
            && !self
                .taints
                .iter()
                .any(|t| matches!(t.effect, TaintEffect::NoSchedule | TaintEffect::NoExecute))
    }
}

// ------------------------------------------------------------------- VMIs

/// `status.phase` of a VMI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VmiPhase {
    Pending,
    Scheduling,
    Scheduled,
    Running,
    Succeeded,
    Failed,
    Unknown,
}

impl VmiPhase {
    /// `status.phase` as written by KubeVirt; an empty or unknown value is
    /// `Unknown`.
    pub fn parse(s: &str) -> Self {
        match s {
            "Pending" => Self::Pending,
            "Scheduling" => Self::Scheduling,
            "Scheduled" => Self::Scheduled,
            "Running" => Self::Running,
            "Succeeded" => Self::Succeeded,
            "Failed" => Self::Failed,
            _ => Self::Unknown,
        }
    }

    /// A VMI in a final phase holds no resources on its node.
    pub fn is_final(self) -> bool {
        matches!(self, VmiPhase::Succeeded | VmiPhase::Failed)
    }
}

/// `spec.domain.cpu.model`, already defaulted by the adapter: KubeVirt's
/// mutating webhook turns an unset model into the cluster's default CPU
/// model, which is `host-model` unless configured otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CpuModel {
    HostModel,
    HostPassthrough,
    Named(String),
}

impl CpuModel {
    /// Parse the spec value; `None` (unset) means host-model, the default.
    pub fn from_spec(model: Option<&str>) -> Self {
        match model {
            None | Some("") | Some("host-model") => CpuModel::HostModel,
            Some("host-passthrough") => CpuModel::HostPassthrough,
            Some(other) => CpuModel::Named(other.to_owned()),
        }
    }
}

/// `spec.evictionStrategy` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EvictionStrategy {
    None,
    LiveMigrate,
    LiveMigrateIfPossible,
    External,
}

impl EvictionStrategy {
    /// `spec.evictionStrategy` spelling; unknown values give `None`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "None" => Some(Self::None),
            "LiveMigrate" => Some(Self::LiveMigrate),
            "LiveMigrateIfPossible" => Some(Self::LiveMigrateIfPossible),
            "External" => Some(Self::External),
            _ => Option::None,
        }
    }

    /// The strategy that applies: the VMI's own, else the cluster default,
    /// else `None` (KubeVirt's rule; the drain plan and the eviction webhook
    /// both ask this).
    pub fn effective(vmi: Option<Self>, cluster_default: Option<Self>) -> Self {
        vmi.or(cluster_default).unwrap_or(Self::None)
    }
}

/// A persistent volume's access mode (from the claim's status).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AccessMode {
    ReadWriteOnce,
    ReadOnlyMany,
    ReadWriteMany,
    ReadWriteOncePod,
}

impl AccessMode {
    /// Kubernetes spelling; unknown strings give `None` (and so do not make
    /// a claim shared).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ReadWriteOnce" => Some(Self::ReadWriteOnce),
            "ReadOnlyMany" => Some(Self::ReadOnlyMany),
            "ReadWriteMany" => Some(Self::ReadWriteMany),
            "ReadWriteOncePod" => Some(Self::ReadWriteOncePod),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum VolumeSource {
    /// A PVC or DataVolume: migratable only when shared (ReadWriteMany).
    /// An empty `access_modes` means not known yet (claim unbound or no
    /// volume status), which counts as not shared.
    Claim {
        claim_name: String,
        access_modes: Vec<AccessMode>,
    },
    /// A host disk; `shared` mirrors KubeVirt's `hostDisk.shared`.
    HostDisk { shared: bool },
    /// Container disks and other node-local ephemeral disks: they do not
    /// block migration but turn it into a block migration (copied along).
    Ephemeral,
    /// cloud-init, ConfigMap, Secret, downward API...: regenerated on the
    /// target, no effect on migratability.
    Config,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct VolumeView {
    pub name: String,
    pub source: VolumeSource,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmiView {
    pub key: ObjectKey,
    pub phase: VmiPhase,
    /// `status.nodeName`.
    pub node: Option<String>,
    /// Memory the VM needs on a node, in bytes (the adapter takes the memory
    /// request, or `domain.memory.guest` when set, plus any overhead it
    /// wants to account for).
    pub memory_bytes: u64,
    pub cpu: CpuModel,
    pub volumes: Vec<VolumeView>,
    /// `spec.evictionStrategy`; `None` means unset (the cluster default
    /// applies).
    pub eviction_strategy: Option<EvictionStrategy>,
}

// ------------------------------------------------------------- migrations

/// `VirtualMachineInstanceMigration` phases, in KubeVirt's order. The
/// transitions between them are [`crate::lifecycle`]'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    Pending,
    Scheduling,
    Scheduled,
    PreparingTarget,
    TargetReady,
    Running,
    Succeeded,
    Failed,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::Pending,
        Phase::Scheduling,
        Phase::Scheduled,
        Phase::PreparingTarget,
        Phase::TargetReady,
        Phase::Running,
        Phase::Succeeded,
        Phase::Failed,
    ];

    pub fn is_final(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }

    /// Counts against the limits: any phase after Pending up to Running.
    /// (KubeVirt counts migrations that are running or already have a
    /// target pod, i.e. everything past Pending.)
    pub fn is_active(self) -> bool {
        matches!(
            self,
            Phase::Scheduling
                | Phase::Scheduled
                | Phase::PreparingTarget
                | Phase::TargetReady
                | Phase::Running
        )
    }

    /// Read `status.phase` back; unknown strings (e.g. the decentralized
    /// `WaitingForSync`, which mignet does not use) give `None`.
    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// KubeVirt's spelling, as written to `status.phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Scheduling => "Scheduling",
            Phase::Scheduled => "Scheduled",
            Phase::PreparingTarget => "PreparingTarget",
            Phase::TargetReady => "TargetReady",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
        }
    }
}

/// Who asked for a migration; evacuations start ahead of user requests
/// (KubeVirt gives them the system-critical priority).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    /// Created for a node drain (KubeVirt marks these with the
    /// `kubevirt.io/evacuationMigration` annotation).
    Evacuation,
    /// Created by a user (CLI, console).
    User,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationView {
    pub key: ObjectKey,
    /// The VMI to move (`spec.vmiName` in the VMIM's namespace).
    pub vmi: ObjectKey,
    pub phase: Phase,
    /// `metadata.creationTimestamp`.
    pub created: Timestamp,
    pub origin: Origin,
    /// Recorded when the migration started; while Pending the VMI's current
    /// node is the source.
    pub source_node: Option<String>,
    /// Recorded when the migration started (its memory is reserved there
    /// until the migration ends).
    pub target_node: Option<String>,
    /// Do not start before this time (failure backoff); `None` = no backoff.
    pub not_before: Option<Timestamp>,
}

/// Everything a decision looks at, borrowed from the adapter's caches.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot<'a> {
    pub nodes: &'a [NodeView],
    pub vmis: &'a [VmiView],
    pub migrations: &'a [MigrationView],
}

/// The effective migration limits (`liveMigrationConfig`), defaults applied
/// by the config layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Limits {
    pub parallel_migrations_per_cluster: u32,
    pub parallel_outbound_migrations_per_node: u32,
}

impl Default for Limits {
    /// KubeVirt's defaults when unset (`virt-config.go`): 5 and 2.
    fn default() -> Self {
        Self {
            parallel_migrations_per_cluster: 5,
            parallel_outbound_migrations_per_node: 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsing_the_api_spellings() {
        assert_eq!(VmiPhase::parse("Running"), VmiPhase::Running);
        assert_eq!(VmiPhase::parse(""), VmiPhase::Unknown);
        assert_eq!(
            EvictionStrategy::parse("LiveMigrate"),
            Some(EvictionStrategy::LiveMigrate)
        );
        assert_eq!(
            EvictionStrategy::parse("LiveMigrateIfPossible"),
            Some(EvictionStrategy::LiveMigrateIfPossible)
        );
        assert_eq!(
            EvictionStrategy::parse("None"),
            Some(EvictionStrategy::None)
        );
        assert_eq!(EvictionStrategy::parse("Evict"), None);
        assert_eq!(
            AccessMode::parse("ReadWriteMany"),
            Some(AccessMode::ReadWriteMany)
        );
        assert_eq!(AccessMode::parse("RWX"), None);
    }

    #[test]
    fn schedulable_and_draining() {
        let mut n = NodeView::default();
        assert!(n.schedulable() && !n.draining());
        n.taints.push(Taint {
            key: "other".into(),
            effect: TaintEffect::PreferNoSchedule,
        });
        assert!(n.schedulable());
        n.taints.push(Taint {
            key: DRAIN_TAINT_KEY.into(),
            effect: TaintEffect::PreferNoSchedule,
        });
        assert!(
            n.draining() && !n.schedulable(),
            "the drain key counts with any effect"
        );
        let cordoned = NodeView {
            unschedulable: true,
            ..Default::default()
        };
        assert!(!cordoned.schedulable() && !cordoned.draining());
    }
}
