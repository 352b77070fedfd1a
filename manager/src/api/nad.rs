//! `k8s.cni.cncf.io/v1` NetworkAttachmentDefinition (Multus).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// `config` is a CNI network configuration as a JSON *string*, exactly as
// Multus stores it; `crate::network::nad_config::parse_nad_config` reads it.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "k8s.cni.cncf.io",
    version = "v1",
    kind = "NetworkAttachmentDefinition",
    plural = "network-attachment-definitions",
    shortname = "net-attach-def",
    namespaced,
    doc = "NetworkAttachmentDefinition: a CNI configuration Multus attaches to pods."
)]
#[serde(rename_all = "camelCase")]
pub struct NetworkAttachmentDefinitionSpec {
    /// CNI configuration JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}
