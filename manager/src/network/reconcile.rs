//! One pass of the network rollout, written once for both modes over
//! [`Backend`]: read the HyperConverged and parse its network ([`follow`]),
//! then read the NAD it names and the agent DaemonSet, ask [`decide`] what
//! the DaemonSet's pod-template annotations and the conditions must be, and
//! write only what changed ([`reconcile`]). The cluster's watch wiring
//! ([`crate::kube_adapter::network_watch`]) and the lab's daemon loop only
//! decide *when* to call them.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tracing::info;

use super::conditions::hco_conditions;
use super::decide::{decide, AgentDaemonSet, ClusterNetworks, Decision, NadLookup, RolloutInput};
use crate::api::network_ref::{NetworkRef, NetworkRefError};
use crate::api::{HyperConverged, NetworkAttachmentDefinition};
use crate::backend::{Backend, BackendError};
use crate::config::EffectiveMigrationConfig;

/// What the rollout follows; the same fields in both modes.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    /// Namespace of the HyperConverged, the agent DaemonSet and bare-named
    /// NADs (the manager's).
    pub namespace: &'a str,
    pub hyperconverged: &'a str,
    pub agent_daemonset: &'a str,
    pub cluster: &'a ClusterNetworks,
}

/// The HyperConverged the rollout follows, as read, with its network
/// parsed once: the pass decides with this reference, and the cluster's NAD
/// watch maps events with it.
#[derive(Debug, Clone)]
pub struct Followed {
    pub hco: HyperConverged,
    /// `Ok(None)` = the pod network; `Err` = a value that names no NAD.
    pub network: Result<Option<NetworkRef>, NetworkRefError>,
}

/// How a pass ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Decided, and every write needed is made.
    Done(Pass),
    /// Someone wrote the DaemonSet or the HyperConverged between our read
    /// and our write (a conflict): nothing is wrong, decide again on fresh
    /// state soon. Both drivers run the pass again.
    RetrySoon {
        /// The DaemonSet write before the conflicting status write landed.
        daemonset_patched: bool,
    },
}

/// A completed pass, for the driver's logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    pub decision: Decision,
    pub daemonset_patched: bool,
    pub status_written: bool,
}

/// A read or write that failed for a reason other than a conflict.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("reading the network rollout's objects")]
    Get(#[source] BackendError),
    #[error("writing the pod-template annotations of the agent DaemonSet")]
    PatchDaemonSet(#[source] BackendError),
    #[error("writing the HyperConverged's conditions")]
    PatchStatus(#[source] BackendError),
}

impl ReconcileError {
    /// Retrying the same pass later can succeed (server busy, connection
    /// lost); otherwise a human must act (RBAC, an invalid object).
    pub fn is_transient(&self) -> bool {
        self.source_error().is_retryable()
    }

    /// Fixed label for logs and metrics ([`crate::metrics::ROLLOUT_ERROR_KINDS`]).
    pub fn label(&self) -> &'static str {
        match self {
            ReconcileError::Get(_) => "get",
            ReconcileError::PatchDaemonSet(_) => "patch_daemonset",
            ReconcileError::PatchStatus(_) => "patch_status",
        }
    }

    fn source_error(&self) -> &BackendError {
        match self {
            ReconcileError::Get(e)
            | ReconcileError::PatchDaemonSet(e)
            | ReconcileError::PatchStatus(e) => e,
        }
    }
}

/// Read the HyperConverged the rollout follows (`None`: there is none)
/// and parse its network. The network is parsed on its own, so an
/// unrelated bad field (say a garbled bandwidth) does not hold back the
/// network rollout.
pub async fn follow<B: Backend>(
    backend: &B,
    target: &Target<'_>,
) -> Result<Option<Followed>, ReconcileError> {
    let hco = backend
        .get::<HyperConverged>(target.namespace, target.hyperconverged)
        .await
        .map_err(ReconcileError::Get)?;
    Ok(hco.map(|hco| Followed {
        network: NetworkRef::of_config(hco.spec.live_migration_config.as_ref()),
        hco,
    }))
}

/// One pass for the HyperConverged [`follow`] read. `now` stamps a
/// condition whose status flips.
pub async fn reconcile<B: Backend>(
    backend: &B,
    target: &Target<'_>,
    followed: &Followed,
    now: Time,
) -> Result<Outcome, ReconcileError> {
    let Followed { hco, network } = followed;
    let lmc = hco.spec.live_migration_config.as_ref();
    let nad = match &network {
        Ok(Some(nref)) => lookup_nad(backend, nref, target.namespace).await?,
        _ => NadLookup::Missing,
    };
    let ds = backend
        .get::<DaemonSet>(target.namespace, target.agent_daemonset)
        .await
        .map_err(ReconcileError::Get)?;
    let agents = ds
        .as_ref()
        .map(|d| AgentDaemonSet::observe(d, target.namespace));
    let decision = decide(&RolloutInput {
        network: network.as_ref().map(Option::as_ref),
        default_namespace: target.namespace,
        nad: &nad,
        cluster: target.cluster,
        agents: agents.as_ref(),
    });

    let mut daemonset_patched = false;
    if let (Some(want), Some(before)) = (&decision.patch, &ds) {
        let mut after = before.clone();
        let spec = after.spec.get_or_insert_with(Default::default);
        let meta = spec.template.metadata.get_or_insert_with(Default::default);
        let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
        for (key, value) in want.entries() {
            match value {
                Some(v) => annotations.insert(key.to_owned(), v.to_owned()),
                None => annotations.remove(key),
            };
        }
        // Conditional on the resourceVersion we read: if the DaemonSet moved
        // since, we decide again on fresh state rather than write over it.
        match backend.patch_object(before, &after).await {
            Ok(_) => {
                daemonset_patched = true;
                info!(networks = ?want.networks, hash = ?want.hash, "agent DaemonSet annotations updated");
            }
            Err(e) if e.is_conflict() => {
                return Ok(Outcome::RetrySoon {
                    daemonset_patched: false,
                })
            }
            Err(e) => return Err(ReconcileError::PatchDaemonSet(e)),
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
        EffectiveMigrationConfig::from_spec(lmc).map(|_| ()),
        now,
    );
    let mut status_written = false;
    if let Some(conditions) = updated {
        let mut after = hco.clone();
        after.status.get_or_insert_with(Default::default).conditions = conditions;
        match backend.patch_status(hco, &after).await {
            Ok(_) => status_written = true,
            Err(e) if e.is_conflict() => return Ok(Outcome::RetrySoon { daemonset_patched }),
            Err(e) => return Err(ReconcileError::PatchStatus(e)),
        }
    }
    Ok(Outcome::Done(Pass {
        decision,
        daemonset_patched,
        status_written,
    }))
}

async fn lookup_nad<B: Backend>(
    backend: &B,
    nref: &NetworkRef,
    default_namespace: &str,
) -> Result<NadLookup, ReconcileError> {
    let namespace = nref.namespace_or(default_namespace);
    match backend
        .get::<NetworkAttachmentDefinition>(namespace, nref.name())
        .await
    {
        Ok(Some(nad)) => Ok(NadLookup::Found {
            config: nad.spec.config,
        }),
        Ok(None) => Ok(NadLookup::Missing),
        // A NAD the manager may not read (a foreign namespace outside its
        // RBAC) is "not found" for us: the agents, with less access, could
        // not use it either. The lab store has no access control, so this
        // only happens in a cluster.
        Err(e) if e.is_forbidden() => Ok(NadLookup::Missing),
        Err(e) => Err(ReconcileError::Get(e)),
    }
}
