//! Which Pending migrations start now (KubeVirt `handleTargetPodCreation`,
//! reference §5): throttling happens only before a migration leaves
//! Pending, against `parallelMigrationsPerCluster` and
//! `parallelOutboundMigrationsPerNode`.
//!
//! Order: evacuations before user requests, then oldest first (creation
//! time, then namespace/name). Every Pending migration is examined, so one
//! whose source node is saturated or that has no target does not hold back
//! the ones behind it. Lowered limits never touch running migrations: the
//! counts include them, and no new start happens while a count is at or
//! above its limit.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use crate::admission::Refusal;
use crate::index::{ClusterIndex, NoTarget};
use crate::model::{Limits, MigrationView, ObjectKey, Phase, Snapshot, Timestamp, VmiPhase};

/// Start this migration now toward `target_node` (Pending → Scheduling).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Start {
    pub migration: ObjectKey,
    pub vmi: ObjectKey,
    pub source_node: String,
    pub target_node: String,
    /// The Scheduling phase transition timestamp.
    pub at: Timestamp,
}

/// Why a Pending migration keeps waiting, for its status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WaitReason {
    #[error("backing off after a failure until {until:?}")]
    Backoff { until: Timestamp },
    #[error("no target: {0}")]
    NoTarget(NoTarget),
    #[error("{active} outbound migrations from node {node} (limit {limit})")]
    NodeLimit {
        node: String,
        active: u32,
        limit: u32,
    },
    #[error("{active} migrations running in the cluster (limit {limit})")]
    ClusterLimit { active: u32, limit: u32 },
    /// The agents' network is changing (the rollout's hold): a migration
    /// started now could be cut by an agent restart or span two networks.
    #[error("{0}")]
    NetworkSwitch(String),
}

impl WaitReason {
    /// A short machine reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            WaitReason::Backoff { .. } => "Backoff",
            WaitReason::NoTarget(_) => "NoTarget",
            WaitReason::NodeLimit { .. } => "NodeLimit",
            WaitReason::ClusterLimit { .. } => "ClusterLimit",
            WaitReason::NetworkSwitch(_) => "NetworkSwitch",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub migration: ObjectKey,
    pub reason: WaitReason,
}

/// A Pending migration that must fail (Pending → Failed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused {
    pub migration: ObjectKey,
    pub refusal: Refusal,
}

/// The outcome for every Pending migration of the snapshot: each appears in
/// exactly one list, in scheduling order.
///
/// [`Decision::hold`] turns the starts into waits (refusals stand: they
/// cannot heal by waiting).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub start: Vec<Start>,
    pub refuse: Vec<Refused>,
    pub waiting: Vec<Waiting>,
}

/// Scheduling order: evacuations first, then oldest, then by key.
pub fn priority_order(a: &MigrationView, b: &MigrationView) -> std::cmp::Ordering {
    (a.origin, a.created, &a.key).cmp(&(b.origin, b.created, &b.key))
}

/// One full decision over a snapshot.
impl Decision {
    /// No migration starts: each start waits for `why` instead, in order.
    pub fn hold(&mut self, why: &str) {
        let held = self.start.drain(..).map(|s| Waiting {
            migration: s.migration,
            reason: WaitReason::NetworkSwitch(why.to_owned()),
        });
        self.waiting.extend(held);
    }
}

pub fn decide(snap: Snapshot<'_>, limits: Limits, now: Timestamp) -> Decision {
    let mut index = ClusterIndex::build(snap);
    decide_with(&mut index, limits, now)
}

/// [`decide`] on an index the caller already built (and may reuse for
/// conditions); the index keeps the memory this decision reserved.
pub fn decide_with(index: &mut ClusterIndex<'_>, limits: Limits, now: Timestamp) -> Decision {
    let mut pending: Vec<&MigrationView> = index
        .snapshot()
        .migrations
        .iter()
        .filter(|m| m.phase == Phase::Pending)
        .collect();
    pending.sort_by(|a, b| priority_order(a, b));

    let cluster_limit = limits.parallel_migrations_per_cluster;
    let node_limit = limits.parallel_outbound_migrations_per_node;
    let mut active = index.active_count();
    let mut outbound: HashMap<String, u32> = HashMap::new();
    // The first Pending migration of a VMI in scheduling order owns it; any
    // later one is a duplicate the admitter should have refused.
    let mut owner: HashMap<&ObjectKey, &ObjectKey> = HashMap::new();
    let mut decided: HashSet<&ObjectKey> = HashSet::new();
    let mut out = Decision::default();

    for m in pending {
        if !decided.insert(&m.key) {
            continue; // the same key twice in the input: decide once
        }
        let refuse = |refusal| Refused {
            migration: m.key.clone(),
            refusal,
        };
        let Some(vmi) = index.vmi(&m.vmi) else {
            out.refuse
                .push(refuse(Refusal::VmiNotFound { vmi: m.vmi.clone() }));
            continue;
        };
        let Some(source) = vmi
            .node
            .as_deref()
            .filter(|_| vmi.phase == VmiPhase::Running)
        else {
            out.refuse.push(refuse(Refusal::VmiNotRunning {
                vmi: m.vmi.clone(),
                phase: vmi.phase,
            }));
            continue;
        };
        let busy = index
            .active_migration_of(&m.vmi)
            .map(|a| &a.key)
            .or_else(|| owner.get(&m.vmi).copied());
        if let Some(by) = busy {
            out.refuse.push(refuse(Refusal::AlreadyMigrating {
                vmi: m.vmi.clone(),
                migration: by.clone(),
            }));
            continue;
        }
        owner.insert(&m.vmi, &m.key);
        // Only the checks that cannot heal by themselves refuse; a missing
        // target (nodes cordoned, full) is a reason to wait.
        let group = match index.static_migratability(vmi) {
            Ok((_, group)) => group,
            Err(n) => {
                out.refuse.push(refuse(Refusal::NotLiveMigratable {
                    vmi: m.vmi.clone(),
                    reason: n.reason,
                    message: n.message,
                }));
                continue;
            }
        };
        let wait = |reason| Waiting {
            migration: m.key.clone(),
            reason,
        };
        if let Some(until) = m.not_before.filter(|t| *t > now) {
            out.waiting.push(wait(WaitReason::Backoff { until }));
            continue;
        }
        let group = match group {
            Some(g) => g,
            None => match index.target_group(vmi) {
                Ok(g) => g,
                Err(e) => {
                    out.waiting.push(wait(WaitReason::NoTarget(e)));
                    continue;
                }
            },
        };
        let target = match index.pick(group, vmi) {
            Ok(t) => t,
            Err(e) => {
                out.waiting.push(wait(WaitReason::NoTarget(e)));
                continue;
            }
        };
        let from_source = outbound
            .get(source)
            .copied()
            .unwrap_or_else(|| index.outbound_count(source));
        if from_source >= node_limit {
            out.waiting.push(wait(WaitReason::NodeLimit {
                node: source.to_owned(),
                active: from_source,
                limit: node_limit,
            }));
            continue;
        }
        if active >= cluster_limit {
            out.waiting.push(wait(WaitReason::ClusterLimit {
                active,
                limit: cluster_limit,
            }));
            continue;
        }
        index.reserve_rank(target, vmi.memory_bytes);
        active += 1;
        outbound.insert(source.to_owned(), from_source + 1);
        out.start.push(Start {
            migration: m.key.clone(),
            vmi: m.vmi.clone(),
            source_node: source.to_owned(),
            target_node: index.node_name(target).to_owned(),
            at: now,
        });
    }
    out
}
