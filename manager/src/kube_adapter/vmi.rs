//! Status writes on VMIs and VMIMs (the agent and the migration controller
//! report through these).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::Patch;
use kube::Api;
use serde_json::json;

use crate::api::{
    MigrationPhase, PhaseTransitionTimestamp, VirtualMachineInstance,
    VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationState,
};

#[derive(Debug, thiserror::Error)]
pub enum StatusPatchError {
    #[error("patching status of {kind} {name}")]
    Patch {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("serialising status for {kind} {name}")]
    Serialise {
        kind: &'static str,
        name: String,
        #[source]
        source: serde_json::Error,
    },
}

impl StatusPatchError {
    pub fn is_transient(&self) -> bool {
        match self {
            StatusPatchError::Patch { source, .. } => super::is_transient(source),
            StatusPatchError::Serialise { .. } => false,
        }
    }
}

/// Merge `state` into `status.migrationState` of a VMI (JSON merge patch on
/// the status subresource): fields left None are not touched, so the source
/// and target agents can each write their own half.
pub async fn patch_migration_state(
    api: &Api<VirtualMachineInstance>,
    name: &str,
    state: &VirtualMachineInstanceMigrationState,
) -> Result<VirtualMachineInstance, StatusPatchError> {
    let state = serde_json::to_value(state).map_err(|source| StatusPatchError::Serialise {
        kind: "VirtualMachineInstance",
        name: name.to_owned(),
        source,
    })?;
    let patch = json!({ "status": { "migrationState": state } });
    api.patch_status(name, &super::patch_params(), &Patch::Merge(&patch))
        .await
        .map_err(|source| StatusPatchError::Patch {
            kind: "VirtualMachineInstance",
            name: name.to_owned(),
            source,
        })
}

/// Move a VMIM to `phase`, appending a phase transition timestamp (KubeVirt
/// keeps one entry per phase entered). `current` is the object as last read;
/// its resourceVersion makes the write conditional, so two writers cannot
/// both append.
pub async fn set_migration_phase(
    api: &Api<VirtualMachineInstanceMigration>,
    current: &VirtualMachineInstanceMigration,
    phase: MigrationPhase,
    now: Time,
) -> Result<VirtualMachineInstanceMigration, StatusPatchError> {
    let name = current.metadata.name.clone().unwrap_or_default();
    let mut stamps = current
        .status
        .as_ref()
        .map(|s| s.phase_transition_timestamps.clone())
        .unwrap_or_default();
    stamps.push(PhaseTransitionTimestamp {
        phase,
        phase_transition_timestamp: now,
    });
    let patch = json!({
        "metadata": { "resourceVersion": current.metadata.resource_version },
        "status": { "phase": phase, "phaseTransitionTimestamps": stamps },
    });
    api.patch_status(&name, &super::patch_params(), &Patch::Merge(&patch))
        .await
        .map_err(|source| StatusPatchError::Patch {
            kind: "VirtualMachineInstanceMigration",
            name,
            source,
        })
}
