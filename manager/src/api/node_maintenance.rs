//! `nodemaintenance.medik8s.io/v1beta1` NodeMaintenance: "maintenance mode"
//! as OpenShift means it (the node-maintenance-operator's CR,
//! `api/v1beta1/nodemaintenance_types.go`), field for field. mignet's
//! controller honours it (`crate::control::maintenance`); on a cluster that
//! runs the real operator, that operator owns the CRD.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The operator's finalizer (`v1beta1.NodeMaintenanceFinalizer`): held
/// until the node is out of maintenance again.
pub const NODE_MAINTENANCE_FINALIZER: &str = "foregroundDeleteNodeMaintenance";

#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "nodemaintenance.medik8s.io",
    version = "v1beta1",
    kind = "NodeMaintenance",
    doc = "NodeMaintenance: put a node into maintenance (cordon it, move its VMs off); deleting it ends the maintenance.",
    plural = "nodemaintenances",
    shortname = "nm",
    status = "NodeMaintenanceStatus",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.nodeName"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Progress","type":"integer","jsonPath":".status.drainProgress","priority":1}"#
)]
#[serde(rename_all = "camelCase")]
pub struct NodeMaintenanceSpec {
    /// Node name to apply maintenance on/off.
    pub node_name: String,
    /// Reason for maintenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MaintenancePhase {
    Running,
    Succeeded,
    Failed,
}

/// A pod waiting to leave the node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodReference {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeMaintenanceStatus {
    /// Running, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MaintenancePhase>,
    /// Percentage of the pods up for eviction that left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_progress: Option<i64>,
    /// The last time the status changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update: Option<Time>,
    /// What blocks the maintenance, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The pods that still have to leave the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_pods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_pods_refs: Vec<PodReference>,
    /// All pods on the node when the maintenance began (the operator's
    /// lower-case `totalpods`).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "totalpods")]
    pub total_pods: Option<i64>,
    /// The pods up for eviction when the maintenance began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eviction_pods: Option<i64>,
    /// The operator's lease bookkeeping; mignet takes no lease and never
    /// sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_on_lease_count: Option<i64>,
}
