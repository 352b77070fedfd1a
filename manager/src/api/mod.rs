//! Kubernetes API types the manager and the agent read and write.
//!
//! These are subsets of the real KubeVirt / HCO / Multus types: the fields we
//! use, spelled exactly as upstream so real manifests round-trip. Where a real
//! object carries much more than we model (HCO spec, VMI spec) the schema keeps
//! unknown fields (`x-kubernetes-preserve-unknown-fields`) so applying an
//! upstream manifest against our CRDs does not silently prune it.

pub mod crdgen;
pub mod hco;
pub mod kubevirt;
pub mod nad;
pub mod network_ref;
pub mod node_maintenance;

use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};

pub use hco::{HyperConverged, HyperConvergedSpec, HyperConvergedStatus, LiveMigrationConfig};
pub use kubevirt::*;
pub use nad::{NetworkAttachmentDefinition, NetworkAttachmentDefinitionSpec};
pub use node_maintenance::{
    MaintenancePhase, NodeMaintenance, NodeMaintenanceSpec, NodeMaintenanceStatus,
    NODE_MAINTENANCE_FINALIZER,
};

/// The Kubernetes quantity grammar (resource.Quantity), as kubebuilder emits
/// it for CRDs; the apiserver rejects anything else before we see it.
pub const QUANTITY_PATTERN: &str = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// A Kubernetes quantity as it appears on the wire: users write either a
/// string (`64Mi`) or a bare integer (`0`), and the apiserver stores what it
/// was given. Parse it with [`crate::config::parse_quantity`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(untagged)]
pub enum QuantityValue {
    Int(i64),
    String(String),
}

impl fmt::Display for QuantityValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantityValue::Int(i) => write!(f, "{i}"),
            QuantityValue::String(s) => f.write_str(s),
        }
    }
}

impl From<&str> for QuantityValue {
    fn from(s: &str) -> Self {
        QuantityValue::String(s.to_owned())
    }
}

impl JsonSchema for QuantityValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Quantity".into()
    }

    fn inline_schema() -> bool {
        true
    }

    // The structural-schema form of resource.Quantity: integer or string,
    // with the quantity pattern applied to strings.
    fn json_schema(_gen: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": true
        })
    }
}

/// Schema for an object whose unknown fields the apiserver must keep.
pub(crate) fn preserve_unknown_array(_gen: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

pub(crate) fn preserve_unknown_object(_gen: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}
