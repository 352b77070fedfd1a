//! VMIM admission: KubeVirt's migration-create admitter refuses a migration
//! for a VMI that does not exist, is not running, is not live-migratable, or
//! already has a migration in flight. The scheduler re-checks the same
//! conditions for every Pending migration, so one that became invalid
//! while it waited fails with the same reason instead of waiting forever.

use crate::index::ClusterIndex;
use crate::migratable::{Migratability, MigrationMethod, NotMigratableReason};
use crate::model::{ObjectKey, VmiPhase};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("VMI {vmi} does not exist")]
    VmiNotFound { vmi: ObjectKey },
    #[error("VMI {vmi} is not running (phase {phase:?})")]
    VmiNotRunning { vmi: ObjectKey, phase: VmiPhase },
    #[error("VMI {vmi} is not live-migratable: {reason}: {message}")]
    NotLiveMigratable {
        vmi: ObjectKey,
        reason: NotMigratableReason,
        message: String,
    },
    #[error("VMI {vmi} is already being migrated by {migration}")]
    AlreadyMigrating {
        vmi: ObjectKey,
        migration: ObjectKey,
    },
}

impl Refusal {
    /// A short machine reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::VmiNotFound { .. } => "VMINotFound",
            Refusal::VmiNotRunning { .. } => "VMINotRunning",
            Refusal::NotLiveMigratable { reason, .. } => reason.as_str(),
            Refusal::AlreadyMigrating { .. } => "MigrationInFlight",
        }
    }
}

/// Decide whether a new migration `migration` of `vmi` may be accepted.
/// `migration` is excluded from the in-flight check (it may already be in
/// the snapshot when the adapter admits after creation). Returns the
/// migration method the VMI needs.
pub fn admit(
    index: &mut ClusterIndex<'_>,
    migration: &ObjectKey,
    vmi: &ObjectKey,
) -> Result<MigrationMethod, Refusal> {
    let v = index
        .vmi(vmi)
        .ok_or_else(|| Refusal::VmiNotFound { vmi: vmi.clone() })?;
    if v.phase != VmiPhase::Running || v.node.is_none() {
        return Err(Refusal::VmiNotRunning {
            vmi: vmi.clone(),
            phase: v.phase,
        });
    }
    if let Some(other) = index
        .open_migrations_of(vmi)
        .iter()
        .find(|m| &m.key != migration)
    {
        return Err(Refusal::AlreadyMigrating {
            vmi: vmi.clone(),
            migration: other.key.clone(),
        });
    }
    match index.live_migratable(v) {
        Migratability::Migratable { method } => Ok(method),
        Migratability::NotMigratable(n) => Err(Refusal::NotLiveMigratable {
            vmi: vmi.clone(),
            reason: n.reason,
            message: n.message,
        }),
    }
}
