//! One pass of the network rollout, written once for both modes over
//! [`Backend`]: read the HyperConverged and parse its network ([`follow`]),
//! then read the NAD it names and the agent DaemonSet, ask [`decide`] what
//! the DaemonSet's pod-template annotations and the conditions must be, and
//! write only what changed ([`reconcile`]). The cluster's watch wiring
//! ([`crate::kube_adapter::network_watch`]) and the lab's daemon loop only
//! decide *when* to call them.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use tracing::info;

use super::conditions::hco_conditions;
use super::decide::NETWORK_HASH_ANNOTATION;
use super::decide::{
    decide, reason, AgentDaemonSet, ClusterNetworks, ConditionSpec, Decision, NadLookup,
    RolloutInput,
};
use super::preflight::{self, FailedRound, PreflightSettings, ProbePodView, Step};
use super::switch::{self, Drain, InFlight, RolloutMemory};
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
    pub preflight: &'a PreflightSettings,
    /// The pre-flight's and the drain's memory between passes, kept by
    /// the driver (lost on restart: the next pass probes and holds afresh).
    pub memory: &'a Mutex<RolloutMemory>,
    /// Whose migrations the drain waits for: the namespace the migration
    /// controller handles (`--migrations-namespace`), `None` = all.
    pub migrations_namespace: Option<&'a str>,
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
    /// A pre-flight round is out (or held after a failure), or the drain
    /// or the switch is under way: the driver passes again this soon even
    /// without an event.
    pub recheck_after: Option<Duration>,
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
    #[error("creating or deleting the pre-flight probe pods")]
    Probe(#[source] BackendError),
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
            ReconcileError::Probe(_) => "probe_pods",
        }
    }

    fn source_error(&self) -> &BackendError {
        match self {
            ReconcileError::Get(e)
            | ReconcileError::PatchDaemonSet(e)
            | ReconcileError::PatchStatus(e)
            | ReconcileError::Probe(e) => e,
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
    let mut decision = decide(&RolloutInput {
        network: network.as_ref().map(Option::as_ref),
        default_namespace: target.namespace,
        nad: &nad,
        cluster: target.cluster,
        agents: agents.as_ref(),
    });

    let now_ts = now.0;
    let mut memory = target
        .memory
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut recheck_after = None;
    let hold = |reason_: &'static str, message: String| ConditionSpec {
        status: false,
        reason: reason_,
        message,
    };

    // Pre-flight: a patch that points the agents at a network (first set
    // or switch) waits for a round that proves it; a removal (back to the
    // pod network) needs none. A passed round is remembered, so its pods go
    // at once and the drain below may take its time.
    // Probe pods are read while a change is pending, while a round may
    // have pods out, and once after a start (a restart's leftovers); a
    // steady pass reads nothing more than before.
    let change_pending = decision.patch.is_some();
    let look = target.preflight.enabled && (change_pending || memory.probes_out || !memory.swept);
    let probes: Vec<ProbePodView> = if look {
        match backend.list::<Pod>(Some(target.namespace)).await {
            Ok(pods) => {
                memory.swept = true;
                let mut probes: Vec<ProbePodView> =
                    pods.iter().filter_map(ProbePodView::of).collect();
                sandbox_failures(backend, target.namespace, &mut probes).await;
                probes
            }
            // Only a change needs them; a steady pass does without.
            Err(e) if e.is_forbidden() && !change_pending => Vec::new(),
            Err(e) => return Err(ReconcileError::Get(e)),
        }
    } else {
        Vec::new()
    };
    let mut keep_round: Option<String> = None;
    let gated = match (&decision.patch, &ds, &network) {
        (Some(want), Some(ds), Ok(Some(nref))) if target.preflight.enabled => want
            .networks
            .clone()
            .zip(want.hash.clone())
            .filter(|(_, h)| memory.passed.as_ref() != Some(h))
            .map(|(n, h)| (n, h, ds, nref)),
        _ => None,
    };
    if gated.is_none() {
        // No network waits for a round: nothing stands refused.
        memory.stats.findings.clear();
    }
    if let Some((networks, round, ds, nref)) = gated {
        let nodes = agent_nodes(backend, ds, target.namespace).await?;
        let step = preflight::step(
            &round,
            &nodes,
            &probes,
            memory.failed.as_ref(),
            target.preflight,
            now_ts,
        );
        let nref = nref.resolved(target.namespace);
        let what = format!("pre-flight of migration network {nref}");
        match step {
            Step::Start { nodes } => {
                for node in &nodes {
                    let pod = preflight::probe_pod(
                        ds,
                        node,
                        &round,
                        &networks,
                        nodes.len(),
                        target.preflight.probe_deadline,
                    );
                    match backend.create(&pod).await {
                        Ok(_) | Err(BackendError::AlreadyExists { .. }) => {}
                        Err(e) => return Err(ReconcileError::Probe(e)),
                    }
                }
                info!(network = %nref, nodes = nodes.len(), "pre-flight round started");
                keep_round = Some(round.clone());
                recheck_after = Some(Duration::from_secs(1));
                decision.patch = None;
                decision.condition = hold(
                    reason::PREFLIGHT_RUNNING,
                    format!(
                        "{what}: probing {} nodes; the agents keep the current network",
                        nodes.len()
                    ),
                );
            }
            Step::Wait { message } => {
                keep_round = Some(round.clone());
                recheck_after = Some(Duration::from_secs(1));
                decision.patch = None;
                decision.condition = hold(
                    reason::PREFLIGHT_RUNNING,
                    format!("{what}: {message}; the agents keep the current network"),
                );
            }
            Step::Failed { message, findings } => {
                memory.stats.failed += 1;
                memory.stats.findings = findings;
                tracing::warn!(network = %nref, %message, "pre-flight failed; the agents keep the current network");
                let message =
                    format!("{what} failed; the agents keep the current network: {message}");
                memory.failed = Some(FailedRound {
                    round: round.clone(),
                    at: now_ts,
                    message: message.clone(),
                });
                recheck_after = Some(target.preflight.retry_after);
                decision.patch = None;
                decision.condition = hold(reason::PREFLIGHT_FAILED, message);
            }
            Step::Hold { message } => {
                recheck_after = memory
                    .failed
                    .as_ref()
                    .map(|f| {
                        (target.preflight.retry_after)
                            .saturating_sub(now_ts.duration_since(f.at).unsigned_abs())
                    })
                    .filter(|d| !d.is_zero());
                decision.patch = None;
                decision.condition = hold(reason::PREFLIGHT_FAILED, message);
            }
            Step::Passed { message } => {
                info!(network = %nref, %message, "pre-flight passed");
                memory.stats.passed += 1;
                memory.stats.findings.clear();
                memory.passed = Some(round.clone());
                if memory.failed.as_ref().is_some_and(|f| f.round == round) {
                    memory.failed = None;
                }
            }
            Step::NoNodes => {}
        }
    }

    // The drain: any change of the agents' network (first set, switch,
    // removal) holds new migrations first and lets the running ones end
    // (network::switch).
    let desired_hash = decision.patch.as_ref().map(|w| w.hash.clone());
    if let Some(hash) = &desired_hash {
        let key = hash.clone().unwrap_or_default();
        let since = match &memory.hold_since {
            Some((h, t)) if *h == key => Some(*t),
            _ => None,
        };
        let in_flight = migrations_in_flight(backend, target.migrations_namespace, lmc).await?;
        match switch::drain(since, &in_flight, target.preflight.hold_settle, now_ts) {
            Drain::Wait { message, recheck } => {
                if since.is_none() {
                    memory.hold_since = Some((key, now_ts));
                }
                recheck_after = Some(recheck);
                decision.patch = None;
                decision.condition = hold(reason::WAITING_FOR_MIGRATIONS, message);
            }
            Drain::Go { overdue } => {
                if !overdue.is_empty() {
                    tracing::warn!(
                        ?overdue,
                        "migrations past their completion budget; the agents restart now"
                    );
                }
            }
        }
    }

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
                memory.passed = None;
                memory.hold_since = None;
                info!(networks = ?want.networks, hash = ?want.hash, "agent DaemonSet annotations updated");
            }
            Err(e) if e.is_conflict() => {
                *target.memory.lock().unwrap_or_else(|p| p.into_inner()) = memory;
                return Ok(Outcome::RetrySoon {
                    daemonset_patched: false,
                });
            }
            Err(e) => {
                *target.memory.lock().unwrap_or_else(|p| p.into_inner()) = memory;
                return Err(ReconcileError::PatchDaemonSet(e));
            }
        }
    }
    *target.memory.lock().unwrap_or_else(|p| p.into_inner()) = memory;

    // While Ready agents carry another network than the template's, the
    // hold stays (an old and a new agent cannot reach each other).
    if decision.condition.reason == reason::ROLLING_OUT {
        if let Some(ds) = &ds {
            let template_hash = if daemonset_patched {
                decision.patch.as_ref().and_then(|w| w.hash.clone())
            } else {
                agents
                    .as_ref()
                    .and_then(|a| a.template_annotations.get(NETWORK_HASH_ANNOTATION).cloned())
            };
            let pods = agent_pods(backend, ds, target.namespace).await?;
            let ready = pods.iter().filter(|p| pod_ready(p)).map(|p| {
                p.annotations()
                    .get(NETWORK_HASH_ANNOTATION)
                    .map(String::as_str)
            });
            if switch::agents_mixed(template_hash.as_deref(), ready) {
                decision.condition.reason = reason::SWITCHING_AGENTS;
                decision.condition.message.push_str(
                    "; new migrations wait until every Ready agent is on the new network",
                );
                recheck_after = Some(Duration::from_secs(1));
            }
        }
    }

    // Probe pods go once their round has nothing more to say.
    for p in probes.iter().filter(|p| !p.deleting) {
        if keep_round.as_deref() == Some(p.round.as_str()) {
            continue;
        }
        match backend.delete::<Pod>(target.namespace, &p.name).await {
            Ok(()) => info!(pod = %p.name, "probe pod deleted"),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(ReconcileError::Probe(e)),
        }
    }
    // Pods still being deleted are looked at again until they are gone.
    let probes_out = keep_round.is_some() || probes.iter().any(|p| p.deleting);
    target
        .memory
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .probes_out = probes_out;

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
        recheck_after,
    }))
}

/// A real kubelet says why a pod's sandbox failed (the CNI ADD's error)
/// only in a `FailedCreatePodSandBox` event; put the newest one into the
/// view of a probe still waiting. Events are best effort: one that cannot
/// be read leaves the pod waiting, and the round's deadline still ends it.
async fn sandbox_failures<B: Backend>(backend: &B, namespace: &str, probes: &mut [ProbePodView]) {
    use k8s_openapi::api::core::v1::Event;
    use preflight::ProbeState;
    if !probes
        .iter()
        .any(|p| matches!(p.state, ProbeState::Waiting { why: None }))
    {
        return;
    }
    let events: Vec<Event> = match backend.list(Some(namespace)).await {
        Ok(e) => e,
        Err(e) => {
            tracing::debug!(error = %e, "events not readable; probe start failures show at the deadline");
            return;
        }
    };
    for p in probes.iter_mut() {
        if !matches!(p.state, ProbeState::Waiting { why: None }) {
            continue;
        }
        let newest = events
            .iter()
            .filter(|e| {
                e.involved_object.name.as_deref() == Some(p.name.as_str())
                    && e.reason.as_deref() == Some("FailedCreatePodSandBox")
            })
            .max_by_key(|e| {
                e.last_timestamp
                    .as_ref()
                    .map(|t| t.0)
                    .or(e.event_time.as_ref().map(|t| t.0))
            });
        if let Some(msg) = newest.and_then(|e| e.message.clone()) {
            p.state = ProbeState::Waiting { why: Some(msg) };
        }
    }
}

/// The agent DaemonSet's pods: those its selector matches.
async fn agent_pods<B: Backend>(
    backend: &B,
    ds: &DaemonSet,
    namespace: &str,
) -> Result<Vec<Pod>, ReconcileError> {
    let selector = ds
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    if selector.is_empty() {
        return Ok(Vec::new());
    }
    let mut pods: Vec<Pod> = backend
        .list(Some(namespace))
        .await
        .map_err(ReconcileError::Get)?;
    pods.retain(|p| selector.iter().all(|(k, v)| p.labels().get(k) == Some(v)));
    Ok(pods)
}

fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The nodes the agents run on: where the DaemonSet's pods are bound (in
/// node order). A node without an agent needs no proof; it gets one when
/// its agent comes, on the network the rollout chose.
async fn agent_nodes<B: Backend>(
    backend: &B,
    ds: &DaemonSet,
    namespace: &str,
) -> Result<Vec<String>, ReconcileError> {
    let mut nodes: Vec<String> = agent_pods(backend, ds, namespace)
        .await?
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    nodes.sort();
    nodes.dedup();
    Ok(nodes)
}

/// The migrations past Pending and not final (in `namespace`, or all), with
/// the completion budget each got (`completionTimeoutPerGiB` x its VM's
/// memory, the agents' own rule; an unreadable config counts with the
/// defaults, as the agents then do).
async fn migrations_in_flight<B: Backend>(
    backend: &B,
    namespace: Option<&str>,
    lmc: Option<&crate::api::LiveMigrationConfig>,
) -> Result<Vec<InFlight>, ReconcileError> {
    use crate::api::{MigrationPhase, VirtualMachineInstance, VirtualMachineInstanceMigration};
    let cfg = EffectiveMigrationConfig::from_spec(lmc).unwrap_or_default();
    let vmims: Vec<VirtualMachineInstanceMigration> =
        backend.list(namespace).await.map_err(ReconcileError::Get)?;
    let running: Vec<&VirtualMachineInstanceMigration> = vmims
        .iter()
        .filter(|m| {
            m.status.as_ref().and_then(|s| s.phase).is_some_and(|p| {
                !matches!(
                    p,
                    MigrationPhase::Pending | MigrationPhase::Succeeded | MigrationPhase::Failed
                )
            })
        })
        .collect();
    if running.is_empty() {
        return Ok(Vec::new());
    }
    let vmis: Vec<VirtualMachineInstance> =
        backend.list(namespace).await.map_err(ReconcileError::Get)?;
    Ok(running
        .into_iter()
        .map(|m| {
            let ns = m.metadata.namespace.clone().unwrap_or_default();
            let memory = vmis
                .iter()
                .find(|v| {
                    v.metadata.namespace.as_deref() == Some(&ns) && v.name_any() == m.spec.vmi_name
                })
                .map(crate::config::vmi_memory_bytes)
                .unwrap_or(0);
            let started = m
                .status
                .as_ref()
                .and_then(|s| s.migration_state.as_ref())
                .and_then(|s| s.start_timestamp.as_ref())
                .map(|t| t.0)
                .or(m.metadata.creation_timestamp.as_ref().map(|t| t.0))
                .unwrap_or_default();
            InFlight {
                name: format!("{ns}/{}", m.name_any()),
                started,
                budget: cfg.completion_timeout_for(memory, 0),
            }
        })
        .collect())
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
