//! `hco.kubevirt.io/v1beta1` HyperConverged: the cluster-wide migration knobs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::QuantityValue;

// The part of the HCO spec we act on. The real HCO spec has dozens more
// fields (feature gates, infra placement, ...); the schema preserves them.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "hco.kubevirt.io",
    version = "v1beta1",
    kind = "HyperConverged",
    plural = "hyperconvergeds",
    shortname = "hco",
    namespaced,
    status = "HyperConvergedStatus",
    doc = "HyperConverged (subset used by mignet): cluster-wide live-migration configuration."
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct HyperConvergedSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_migration_config: Option<LiveMigrationConfig>,
}

/// Cluster-wide live-migration limits and timeouts. A removed key restores its default.
// Field for field as in HCO's `LiveMigrationConfigurations`; resolved by
// `crate::config::EffectiveMigrationConfig`. Integers are i64 on purpose so a
// negative value reaches our validation and is reported with its field name
// instead of failing deserialisation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LiveMigrationConfig {
    /// Bandwidth cap per migration in bytes/s, a quantity (`64Mi`); 0 = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_per_migration: Option<QuantityValue>,
    /// Seconds per GiB of migrated data before a migration is cancelled.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "completionTimeoutPerGiB"
    )]
    pub completion_timeout_per_gib: Option<i64>,
    /// Migrations running at once in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_migrations_per_cluster: Option<i64>,
    /// Outbound migrations running at once per source node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_outbound_migrations_per_node: Option<i64>,
    /// Seconds without progress of the memory copy before a migration is cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_timeout: Option<i64>,
    /// NetworkAttachmentDefinition for migration traffic (`name` or `namespace/name`); unset = pod network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_auto_converge: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_post_copy: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct HyperConvergedStatus {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
