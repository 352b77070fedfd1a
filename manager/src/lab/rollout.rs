//! The network rollout against the lab's store: the same pure decision
//! ([`crate::rollout::decide`]) and condition bookkeeping
//! ([`crate::kube_adapter::conditions::set_condition`]) as the cluster
//! controller, with the store in place of the API server.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tracing::info;

use super::{LabError, AGENT_DAEMONSET, HYPERCONVERGED, LAB_NAMESPACE};
use crate::api::{HyperConverged, NetworkAttachmentDefinition};
use crate::config::EffectiveMigrationConfig;
use crate::kube_adapter::conditions::hco_conditions;
use crate::rollout::{
    self, AgentDaemonSet, ClusterNetworks, Decision, NadLookup, NetworkRef, RolloutInput,
    NETWORKS_ANNOTATION, NETWORK_HASH_ANNOTATION,
};
use crate::store::Store;

/// The agent DaemonSet the lab seeds at `up`: no network annotation yet.
pub fn agent_daemonset() -> DaemonSet {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": AGENT_DAEMONSET, "namespace": LAB_NAMESPACE},
        "spec": {
            "selector": {"matchLabels": {"app": AGENT_DAEMONSET}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": {"app": AGENT_DAEMONSET}},
                "spec": {"containers": [{"name": "agent", "image": "mignet"}]}
            }
        }
    }))
    .expect("static DaemonSet shape")
}

fn network_of(hco: &HyperConverged) -> Option<String> {
    hco.spec
        .live_migration_config
        .as_ref()
        .and_then(|c| c.network.as_deref())
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
}

/// One reconcile of the lab's HyperConverged. Returns the decision taken
/// (None when there is no HyperConverged). A conflict (someone wrote in
/// between) is not an error: the next pass decides again on fresh state.
pub fn reconcile(store: &Store, cluster: &ClusterNetworks) -> Result<Option<Decision>, LabError> {
    let Some(hco) = store.get::<HyperConverged>(LAB_NAMESPACE, HYPERCONVERGED)? else {
        return Ok(None);
    };
    let network = network_of(&hco);
    let nref = network
        .as_deref()
        .and_then(|n| NetworkRef::parse(n, LAB_NAMESPACE));
    let nad = match &nref {
        None => NadLookup::Missing,
        Some(r) => match store.get::<NetworkAttachmentDefinition>(&r.namespace, &r.name)? {
            Some(n) => NadLookup::Found {
                config: n.spec.config,
            },
            None => NadLookup::Missing,
        },
    };
    let ds = store.get::<DaemonSet>(LAB_NAMESPACE, AGENT_DAEMONSET)?;
    let agents = ds
        .as_ref()
        .map(|d| AgentDaemonSet::observe(d, LAB_NAMESPACE));
    let decision = rollout::decide(&RolloutInput {
        network: network.as_deref(),
        default_namespace: LAB_NAMESPACE,
        nad: &nad,
        cluster,
        agents: agents.as_ref(),
    });

    if let (Some(want), Some(ds)) = (&decision.patch, &ds) {
        let mut ds = ds.clone();
        let spec = ds.spec.get_or_insert_with(Default::default);
        let meta = spec.template.metadata.get_or_insert_with(Default::default);
        let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
        for (key, value) in [
            (NETWORKS_ANNOTATION, &want.networks),
            (NETWORK_HASH_ANNOTATION, &want.hash),
        ] {
            match value {
                Some(v) => annotations.insert(key.to_owned(), v.clone()),
                None => annotations.remove(key),
            };
        }
        // Conditional on the resourceVersion we read, like the cluster patch.
        match store.update(&ds) {
            Ok(_) => {
                info!(networks = ?want.networks, hash = ?want.hash, "agent DaemonSet annotations updated")
            }
            Err(e) if e.is_conflict() => return Ok(Some(decision)),
            Err(e) => return Err(e.into()),
        }
    }

    let existing = hco
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let updated = hco_conditions(
        &existing,
        hco.metadata.generation,
        &decision.condition,
        EffectiveMigrationConfig::from_spec(hco.spec.live_migration_config.as_ref()).map(|_| ()),
        Time(Timestamp::now()),
    );
    if let Some(conditions) = updated {
        let mut hco = hco.clone();
        hco.status.get_or_insert_with(Default::default).conditions = conditions;
        match store.update_status(&hco) {
            Ok(_) => {}
            Err(e) if e.is_conflict() => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(decision))
}
