//! The network rollout controller (cluster mode of `mignet manager`).
//!
//! Watches HyperConverged CRs in the manager's namespace, the NADs there and
//! the agent DaemonSet; for each HCO it reads the NAD its migration network
//! names, asks [`crate::rollout::decide`] what the DaemonSet's pod-template
//! annotations and the condition must be, and writes only what changed.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, ResourceExt};
use serde_json::{json, Map, Value};
use tracing::{debug, info, warn};

use super::{is_transient, patch_params};
use crate::api::{HyperConverged, NetworkAttachmentDefinition};
use crate::config::EffectiveMigrationConfig;
use crate::metrics::Metrics;
use crate::rollout::{
    self, AgentDaemonSet, ClusterNetworks, NadLookup, NetworkRef, RolloutInput,
    NETWORKS_ANNOTATION, NETWORK_HASH_ANNOTATION,
};

/// Condition reporting whether `liveMigrationConfig` as a whole is valid.
pub const CONFIG_CONDITION_TYPE: &str = "MigrationConfigValid";

/// What the manager was started with.
#[derive(Debug, Clone)]
pub struct RolloutSettings {
    /// Namespace of the HCO, the agent DaemonSet and bare-named NADs.
    pub namespace: String,
    /// Name of the HyperConverged CR to follow. Only this one is watched:
    /// two CRs naming different networks would otherwise fight over the
    /// DaemonSet.
    pub hyperconverged: String,
    pub agent_daemonset: String,
    pub cluster: ClusterNetworks,
    /// Periodic re-check even without events (catches NADs in other
    /// namespaces, which we do not watch).
    pub resync: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("HyperConverged {0} has no namespace")]
    NoNamespace(String),
    #[error("reading {kind} {namespace}/{name}")]
    Get {
        kind: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("patching pod-template annotations of DaemonSet {namespace}/{name}")]
    PatchDaemonSet {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("patching status of HyperConverged {namespace}/{name}")]
    PatchStatus {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("HyperConverged API not served in namespace {namespace} (are deploy/crds applied?)")]
    CrdMissing {
        namespace: String,
        #[source]
        source: kube::Error,
    },
}

impl RolloutError {
    pub fn is_transient(&self) -> bool {
        match self {
            RolloutError::NoNamespace(_) | RolloutError::CrdMissing { .. } => false,
            RolloutError::Get { source, .. }
            | RolloutError::PatchDaemonSet { source, .. }
            | RolloutError::PatchStatus { source, .. } => is_transient(source),
        }
    }

    /// Fixed label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            RolloutError::NoNamespace(_) => "no_namespace",
            RolloutError::Get { .. } => "get",
            RolloutError::PatchDaemonSet { .. } => "patch_daemonset",
            RolloutError::PatchStatus { .. } => "patch_status",
            RolloutError::CrdMissing { .. } => "crd_missing",
        }
    }
}

/// Per-object retry delays: exponential for transient errors, a long fixed
/// delay for permanent ones (a human must fix them; the watch brings the fix).
#[derive(Debug, Clone)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub permanent: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(60),
            permanent: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// Delay before retry number `attempt` (1-based).
    pub fn delay(&self, attempt: u32, transient: bool) -> Duration {
        if !transient {
            return self.permanent;
        }
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }
}

struct Context {
    client: Client,
    metrics: Arc<Metrics>,
    settings: RolloutSettings,
    backoff: Backoff,
    failures: Mutex<HashMap<ObjectRef<HyperConverged>, u32>>,
}

/// Run the controller until `shutdown` resolves. Fails fast when the
/// HyperConverged CRD is not served, instead of logging watch errors forever.
pub async fn run(
    client: Client,
    settings: RolloutSettings,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), RolloutError> {
    let ns = settings.namespace.clone();
    let hcos: Api<HyperConverged> = Api::namespaced(client.clone(), &ns);
    hcos.list(&ListParams::default().limit(1))
        .await
        .map_err(|source| match &source {
            kube::Error::Api(s) if s.code == 404 => RolloutError::CrdMissing {
                namespace: ns.clone(),
                source,
            },
            _ => RolloutError::Get {
                kind: "HyperConverged",
                namespace: ns.clone(),
                name: "*".into(),
                source,
            },
        })?;
    let nads: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), &ns);
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);

    let hco_config =
        watcher::Config::default().fields(&format!("metadata.name={}", settings.hyperconverged));
    let controller = Controller::new(hcos, hco_config);
    let store = controller.store();
    let nad_store = store.clone();
    let default_ns = ns.clone();
    let ds_config =
        watcher::Config::default().fields(&format!("metadata.name={}", settings.agent_daemonset));
    let ctx = Arc::new(Context {
        client,
        metrics: metrics.clone(),
        settings,
        backoff: Backoff::default(),
        failures: Mutex::new(HashMap::new()),
    });
    info!(namespace = %ns, "network rollout controller starting");
    metrics.set_ready(true);
    controller
        // A NAD change re-checks every HCO that names it.
        .watches(nads, watcher::Config::default(), move |nad| {
            let (nad_ns, nad_name) = (nad.namespace().unwrap_or_default(), nad.name_any());
            nad_store
                .state()
                .into_iter()
                .filter(|hco| {
                    network_of(hco)
                        .and_then(|n| NetworkRef::parse(&n, &default_ns))
                        .is_some_and(|r| r.namespace == nad_ns && r.name == nad_name)
                })
                .map(|hco| ObjectRef::from_obj(&*hco))
                .collect::<Vec<_>>()
        })
        // The agent DaemonSet's status drives the condition's agent count.
        .watches(daemonsets, ds_config, move |_ds| {
            store
                .state()
                .into_iter()
                .map(|hco| ObjectRef::from_obj(&*hco))
                .collect::<Vec<_>>()
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(%obj, "reconciled"),
                Err(e) => warn!(error = %e, "reconcile failed"),
            }
        })
        .await;
    metrics.set_ready(false);
    Ok(())
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

fn error_policy(hco: Arc<HyperConverged>, err: &RolloutError, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(&*hco);
    let attempt = {
        let mut failures = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    ctx.metrics.reconcile_error(err.label());
    let transient = err.is_transient();
    let delay = ctx.backoff.delay(attempt, transient);
    warn!(hco = %hco.name_any(), kind = err.label(), transient, attempt, ?delay, error = %err, "rollout error; retrying");
    Action::requeue(delay)
}

async fn reconcile(hco: Arc<HyperConverged>, ctx: Arc<Context>) -> Result<Action, RolloutError> {
    let started = Instant::now();
    let name = hco.name_any();
    let hco_ns = hco
        .namespace()
        .ok_or_else(|| RolloutError::NoNamespace(name.clone()))?;
    let settings = &ctx.settings;

    let config = EffectiveMigrationConfig::from_spec(hco.spec.live_migration_config.as_ref());
    // The network is checked on its own, so an unrelated bad field (say a
    // garbled bandwidth) does not hold back the network rollout.
    let network = network_of(&hco);
    let nref = network
        .as_deref()
        .and_then(|n| NetworkRef::parse(n, &settings.namespace));

    let nad = match &nref {
        None => NadLookup::Missing,
        Some(r) => {
            let api: Api<NetworkAttachmentDefinition> =
                Api::namespaced(ctx.client.clone(), &r.namespace);
            match api.get_opt(&r.name).await {
                Ok(Some(nad)) => NadLookup::Found {
                    config: nad.spec.config,
                },
                Ok(None) => NadLookup::Missing,
                // No read access to a foreign namespace reads as "not found
                // for us": the agents could not use it either.
                Err(kube::Error::Api(s)) if s.code == 403 => NadLookup::Missing,
                Err(source) => {
                    return Err(RolloutError::Get {
                        kind: "NetworkAttachmentDefinition",
                        namespace: r.namespace.clone(),
                        name: r.name.clone(),
                        source,
                    })
                }
            }
        }
    };

    let ds_api: Api<DaemonSet> = Api::namespaced(ctx.client.clone(), &settings.namespace);
    let ds = ds_api
        .get_opt(&settings.agent_daemonset)
        .await
        .map_err(|source| RolloutError::Get {
            kind: "DaemonSet",
            namespace: settings.namespace.clone(),
            name: settings.agent_daemonset.clone(),
            source,
        })?;
    let agents = ds
        .as_ref()
        .map(|d| AgentDaemonSet::observe(d, &settings.namespace));

    let decision = rollout::decide(&RolloutInput {
        network: network.as_deref(),
        default_namespace: &settings.namespace,
        nad: &nad,
        cluster: &settings.cluster,
        agents: agents.as_ref(),
    });

    if let (Some(want), Some(ds)) = (&decision.patch, &ds) {
        let mut annotations = Map::new();
        annotations.insert(
            NETWORKS_ANNOTATION.into(),
            want.networks.clone().map_or(Value::Null, Value::String),
        );
        annotations.insert(
            NETWORK_HASH_ANNOTATION.into(),
            want.hash.clone().map_or(Value::Null, Value::String),
        );
        // resourceVersion makes the patch conditional: if the DaemonSet moved
        // since we read it, we get 409 and decide again on fresh state.
        let patch = json!({
            "metadata": { "resourceVersion": ds.metadata.resource_version },
            "spec": { "template": { "metadata": { "annotations": annotations } } },
        });
        ds_api
            .patch(
                &settings.agent_daemonset,
                &patch_params(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|source| RolloutError::PatchDaemonSet {
                namespace: settings.namespace.clone(),
                name: settings.agent_daemonset.clone(),
                source,
            })?;
        ctx.metrics.daemonset_patched();
        info!(hco = %name, networks = ?want.networks, hash = ?want.hash, "agent DaemonSet annotations updated");
    }

    let existing = hco
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let updated = super::conditions::hco_conditions(
        &existing,
        hco.metadata.generation,
        &decision.condition,
        config.as_ref().map(|_| ()),
        Time(Timestamp::now()),
    );
    if let Some(conditions) = updated {
        let api: Api<HyperConverged> = Api::namespaced(ctx.client.clone(), &hco_ns);
        let patch = json!({
            "metadata": { "resourceVersion": hco.metadata.resource_version },
            "status": { "conditions": conditions },
        });
        api.patch_status(&name, &patch_params(), &Patch::Merge(&patch))
            .await
            .map_err(|source| RolloutError::PatchStatus {
                namespace: hco_ns.clone(),
                name: name.clone(),
                source,
            })?;
        ctx.metrics.status_patched();
    }

    ctx.failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&ObjectRef::from_obj(&*hco));
    ctx.metrics
        .reconcile_ok(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    ctx.metrics
        .reconcile_ok(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    debug!(hco = %name, reason = decision.condition.reason, elapsed = ?started.elapsed(), "rollout reconciled");
    // While agents roll, poll a little faster than the resync in case the
    // DaemonSet watch is behind; otherwise rely on watches plus the resync.
    let rolling = decision.condition.reason == rollout::reason::ROLLING_OUT;
    Ok(Action::requeue(if rolling {
        ctx.settings.resync.min(Duration::from_secs(15))
    } else {
        ctx.settings.resync
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_per_attempt_and_caps() {
        let b = Backoff::default();
        assert_eq!(b.delay(1, true), Duration::from_millis(500));
        assert_eq!(b.delay(2, true), Duration::from_secs(1));
        assert_eq!(b.delay(4, true), Duration::from_secs(4));
        assert_eq!(b.delay(40, true), Duration::from_secs(60));
        assert_eq!(b.delay(1, false), Duration::from_secs(300));
    }
}
