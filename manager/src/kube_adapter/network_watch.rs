//! When the network rollout runs in a cluster (`mignet manager`): a
//! kube::runtime Controller on the one HyperConverged we follow, woken by
//! the NAD its network names and by the agent DaemonSet, requeued after a
//! resync, a retry soon, or an error. The pass itself is
//! [`crate::network::reconcile`], the same as in the lab.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Client, ResourceExt};
use mignet_policy::Backoff;
use tracing::{debug, info, warn};

use crate::api::{HyperConverged, NetworkAttachmentDefinition};
use crate::backend::{Backend, KubeBackend};
use crate::metrics::Metrics;
use crate::network::decide::{reason, ClusterNetworks};
use crate::network::preflight::PreflightSettings;
use crate::network::reconcile::{self as pass, Outcome, ReconcileError, Target};
use crate::network::switch::RolloutMemory;
use crate::network::NetworkRef;

pub use crate::network::conditions::CONFIG_CONDITION_TYPE;

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
    /// The pre-flight round before a network reaches the agents.
    pub preflight: PreflightSettings,
    /// Whose migrations a network change waits for (the migration
    /// controller's `--migrations-namespace`; `None` = all).
    pub migrations_namespace: Option<String>,
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    #[error("listing HyperConvergeds in namespace {namespace}")]
    List {
        namespace: String,
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

/// Requeue delays after a failed pass: exponential for transient errors
/// (and conflicts), counted per HyperConverged.
const TRANSIENT: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(60));
/// A permanent error needs a human; the watch brings the fix sooner.
const PERMANENT_DELAY: Duration = Duration::from_secs(300);
/// While agents roll, poll this often in case the DaemonSet watch is behind.
const ROLLING_POLL: Duration = Duration::from_secs(15);

struct Context<B> {
    backend: B,
    metrics: Arc<Metrics>,
    settings: RolloutSettings,
    /// Consecutive failed passes per HyperConverged (conflicts included).
    failures: Mutex<HashMap<ObjectRef<HyperConverged>, u32>>,
    /// The network each HyperConverged named at its last pass, resolved:
    /// the NAD watch maps an event to the HyperConvergeds naming that NAD
    /// with what the pass parsed, never by parsing again.
    networks: Arc<Mutex<HashMap<ObjectRef<HyperConverged>, NetworkRef>>>,
    /// The rollout's memory between passes (see [`Target::memory`]).
    memory: Mutex<RolloutMemory>,
}

impl<B> Context<B> {
    fn failed(&self, key: ObjectRef<HyperConverged>) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = failures.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }
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
            _ => RolloutError::List {
                namespace: ns.clone(),
                source,
            },
        })?;
    let nads: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), &ns);
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &ns);

    let hco_config =
        watcher::Config::default().fields(&format!("metadata.name={}", settings.hyperconverged));
    let controller = Controller::new(hcos, hco_config);
    let store = controller.store();
    let ds_config =
        watcher::Config::default().fields(&format!("metadata.name={}", settings.agent_daemonset));
    let networks = Arc::new(Mutex::new(HashMap::new()));
    let ctx = Arc::new(Context {
        backend: KubeBackend::unwatched(client),
        metrics: metrics.clone(),
        settings,
        failures: Mutex::new(HashMap::new()),
        networks: networks.clone(),
        memory: Mutex::new(Default::default()),
    });
    info!(namespace = %ns, "network rollout controller starting");
    metrics.set_ready(true);
    controller
        // A NAD change re-checks every HCO that names it.
        .watches(nads, watcher::Config::default(), move |nad| {
            let (nad_ns, nad_name) = (nad.namespace().unwrap_or_default(), nad.name_any());
            networks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .filter(|(_, r)| r.namespace() == Some(&nad_ns) && r.name() == nad_name)
                .map(|(hco, _)| hco.clone())
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

fn error_policy<B>(hco: Arc<HyperConverged>, err: &ReconcileError, ctx: Arc<Context<B>>) -> Action {
    let attempt = ctx.failed(ObjectRef::from_obj(&*hco));
    ctx.metrics.reconcile_error(err.label());
    let transient = err.is_transient();
    let delay = if transient {
        TRANSIENT.delay(attempt)
    } else {
        PERMANENT_DELAY
    };
    warn!(hco = %hco.name_any(), kind = err.label(), transient, attempt, ?delay, error = %err, "rollout error; retrying");
    Action::requeue(delay)
}

/// One pass for the HyperConverged the Controller hands us, and when to look
/// again. Counts one successful reconcile per successful pass.
async fn reconcile<B: Backend>(
    hco: Arc<HyperConverged>,
    ctx: Arc<Context<B>>,
) -> Result<Action, ReconcileError> {
    let started = Instant::now();
    let key = ObjectRef::from_obj(&*hco);
    let settings = &ctx.settings;
    let target = Target {
        namespace: &settings.namespace,
        hyperconverged: &hco.name_any(),
        agent_daemonset: &settings.agent_daemonset,
        cluster: &settings.cluster,
        preflight: &settings.preflight,
        memory: &ctx.memory,
        migrations_namespace: settings.migrations_namespace.as_deref(),
    };
    let Some(followed) = pass::follow(&ctx.backend, &target).await? else {
        ctx.networks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        return Ok(Action::await_change());
    };
    // Recorded before the pass reads the NAD: a NAD event from then on
    // maps to this HyperConverged, so a NAD created during the pass is
    // never missed.
    {
        let mut networks = ctx.networks.lock().unwrap_or_else(|p| p.into_inner());
        match &followed.network {
            Ok(Some(r)) => networks.insert(key.clone(), r.resolved(&settings.namespace)),
            _ => networks.remove(&key),
        };
    }
    let pass =
        match pass::reconcile(&ctx.backend, &target, &followed, Time(Timestamp::now())).await? {
            Outcome::RetrySoon { daemonset_patched } => {
                if daemonset_patched {
                    ctx.metrics.daemonset_patched();
                }
                let attempt = ctx.failed(key);
                debug!(hco = %hco.name_any(), attempt, "conflict; deciding again on fresh state");
                return Ok(Action::requeue(TRANSIENT.delay(attempt)));
            }
            Outcome::Done(pass) => pass,
        };
    if pass.daemonset_patched {
        ctx.metrics.daemonset_patched();
    }
    let preflight = crate::metrics::preflight_families(
        &ctx.memory.lock().unwrap_or_else(|p| p.into_inner()).stats,
    );
    ctx.metrics.set_section("preflight", preflight);
    if pass.status_written {
        ctx.metrics.status_patched();
    }
    ctx.failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&key);
    ctx.metrics
        .reconcile_ok(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    let why = pass.decision.condition.reason;
    debug!(hco = %hco.name_any(), reason = why, elapsed = ?started.elapsed(), "rollout reconciled");
    // While agents roll, poll a little faster than the resync in case the
    // DaemonSet watch is behind; otherwise rely on watches plus the resync.
    // A pre-flight round is read back from its pods' states, which we do
    // not watch: pass again as the round asks.
    Ok(Action::requeue(match pass.recheck_after {
        Some(d) => d.min(settings.resync),
        None if why == reason::ROLLING_OUT => settings.resync.min(ROLLING_POLL),
        None => settings.resync,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;
    use crate::store::Store;

    const NS: &str = "mignet-system";
    const SEED: &str = r#"{"cniVersion":"0.3.1","name":"n","type":"macvlan","master":"eth1","ipam":{"type":"whereabouts","range":"10.200.5.0/24"}}"#;

    fn hco(network: &str) -> HyperConverged {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "hco.kubevirt.io/v1beta1", "kind": "HyperConverged",
            "metadata": {"name": "kubevirt-hyperconverged", "namespace": NS},
            "spec": {"liveMigrationConfig": {"network": network}}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn one_successful_pass_counts_one_reconcile() {
        struct TempDir(std::path::PathBuf);
        impl Drop for TempDir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let dir = TempDir(
            std::env::temp_dir().join(format!("mignet-network-watch-{}", std::process::id())),
        );
        let backend = LocalBackend::new(Arc::new(Store::open(&dir.0).unwrap()));
        let h = backend.create(&hco("mig.net")).await.unwrap();
        let nad: NetworkAttachmentDefinition = serde_json::from_value(serde_json::json!({
            "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": "mig.net", "namespace": NS},
            "spec": {"config": SEED}
        }))
        .unwrap();
        backend.create(&nad).await.unwrap();
        let metrics = Arc::new(Metrics::default());
        let ctx = Arc::new(Context {
            backend,
            metrics: metrics.clone(),
            settings: RolloutSettings {
                namespace: NS.into(),
                hyperconverged: "kubevirt-hyperconverged".into(),
                agent_daemonset: "mignet-agent".into(),
                cluster: ClusterNetworks::default(),
                resync: Duration::from_secs(300),
                preflight: PreflightSettings::default(),
                migrations_namespace: None,
            },
            failures: Mutex::new(HashMap::new()),
            networks: Arc::new(Mutex::new(HashMap::new())),
            memory: Mutex::new(Default::default()),
        });
        reconcile(Arc::new(h), ctx.clone()).await.unwrap();
        let text = metrics.render();
        assert!(
            text.contains("mignet_rollout_reconciles_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("mignet_rollout_reconcile_duration_seconds_count 1\n"),
            "{text}"
        );
        // The NAD watch maps by what the pass parsed, resolved.
        let networks = ctx.networks.lock().unwrap();
        let r = networks.values().next().expect("network recorded");
        assert_eq!(r.to_string(), "mignet-system/mig.net");
    }
}
