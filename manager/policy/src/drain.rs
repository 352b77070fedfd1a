//! Drain evacuation (KubeVirt's evacuation controller and pod-eviction
//! admitter, reference §5): for every node marked with the
//! `kubevirt.io/drain` taint, what happens to each VMI on it.
//!
//! Per effective eviction strategy (the VMI's, else the cluster default,
//! else `None`, KubeVirt's default when neither is set):
//! - `LiveMigrate`: migratable → an evacuation migration (throttled like any
//!   other); not migratable → the VMI blocks the drain (KubeVirt denies its
//!   eviction), with the reason.
//! - `LiveMigrateIfPossible`: migratable → evacuation; otherwise the VMI is
//!   stopped (its eviction is allowed).
//! - `External`: the drain is blocked on it and left to an external
//!   controller (KubeVirt denies the eviction and only marks
//!   `evacuationNodeName`).
//! - `None`: the VMI is stopped.
//!
//! When a node is no longer marked (uncordoned), Pending evacuations from
//! it are cancelled; started ones run to completion.

use foldhash::HashSet;

use crate::index::ClusterIndex;
use crate::migratable::{Migratability, NotMigratable};
use crate::model::{EvictionStrategy, ObjectKey, Origin, Phase, VmiPhase};

/// Why a `LiveMigrate` VMI cannot leave its draining node.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlockReason {
    #[error("VMI is not running (phase {0:?})")]
    NotRunning(VmiPhase),
    #[error("VMI is not live-migratable: {}: {}", .0.reason, .0.message)]
    NotMigratable(NotMigratable),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrainAction {
    /// Create an evacuation migration for this VMI.
    Evacuate,
    /// A migration of this VMI already exists (evacuation or user); nothing
    /// to create.
    AlreadyMigrating { migration: ObjectKey },
    /// Strategy LiveMigrate but the VMI cannot migrate: the drain blocks.
    Blocked(BlockReason),
    /// Strategy External: the drain blocks until an external controller
    /// moves or stops the VMI.
    External,
    /// The VMI will be stopped by the drain (strategy None, or
    /// LiveMigrateIfPossible while not migratable).
    Stop,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DrainEntry {
    pub node: String,
    pub vmi: ObjectKey,
    /// The strategy that applied (after the cluster default).
    pub strategy: EvictionStrategy,
    pub action: DrainAction,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EvacuationPlan {
    /// One entry per non-final VMI on a draining node, sorted by node then VMI.
    pub entries: Vec<DrainEntry>,
    /// Pending evacuation migrations whose source node is no longer
    /// draining (or whose VMI already left it): delete them.
    pub cancel: Vec<ObjectKey>,
}

impl EvacuationPlan {
    /// Entries on `node` (for `mignet lab drain <node>` and the drain report).
    pub fn on_node<'p>(&'p self, node: &'p str) -> impl Iterator<Item = &'p DrainEntry> + 'p {
        self.entries.iter().filter(move |e| e.node == node)
    }

    /// True when nothing on the draining nodes blocks the drain.
    pub fn drain_can_complete(&self) -> bool {
        !self
            .entries
            .iter()
            .any(|e| matches!(e.action, DrainAction::Blocked(_) | DrainAction::External))
    }
}

/// Plan evacuations for every draining node of the snapshot.
pub fn plan_evacuations(
    index: &mut ClusterIndex<'_>,
    cluster_default: Option<EvictionStrategy>,
) -> EvacuationPlan {
    let snap = index.snapshot();
    let draining: HashSet<&str> = snap
        .nodes
        .iter()
        .filter(|n| n.draining())
        .map(|n| n.name.as_str())
        .collect();
    let mut plan = EvacuationPlan::default();

    for vmi in snap.vmis {
        let Some(node) = vmi.node.as_deref().filter(|n| draining.contains(n)) else {
            continue;
        };
        if vmi.phase.is_final() {
            continue;
        }
        let strategy = EvictionStrategy::effective(vmi.eviction_strategy, cluster_default);
        let action = match strategy {
            EvictionStrategy::None => DrainAction::Stop,
            EvictionStrategy::External => DrainAction::External,
            EvictionStrategy::LiveMigrate | EvictionStrategy::LiveMigrateIfPossible => {
                let if_possible = strategy == EvictionStrategy::LiveMigrateIfPossible;
                if let Some(m) = index.open_migrations_of(&vmi.key).first() {
                    DrainAction::AlreadyMigrating {
                        migration: m.key.clone(),
                    }
                } else if vmi.phase != VmiPhase::Running {
                    if if_possible {
                        DrainAction::Stop
                    } else {
                        DrainAction::Blocked(BlockReason::NotRunning(vmi.phase))
                    }
                } else {
                    match index.live_migratable(vmi) {
                        Migratability::Migratable { .. } => DrainAction::Evacuate,
                        Migratability::NotMigratable(_) if if_possible => DrainAction::Stop,
                        Migratability::NotMigratable(n) => {
                            DrainAction::Blocked(BlockReason::NotMigratable(n))
                        }
                    }
                }
            }
        };
        plan.entries.push(DrainEntry {
            node: node.to_owned(),
            vmi: vmi.key.clone(),
            strategy,
            action,
        });
    }
    plan.entries
        .sort_by(|a, b| (&a.node, &a.vmi).cmp(&(&b.node, &b.vmi)));

    for m in snap.migrations {
        if m.phase != Phase::Pending || m.origin != Origin::Evacuation {
            continue;
        }
        let on_draining_node = index
            .vmi(&m.vmi)
            .and_then(|v| v.node.as_deref())
            .is_some_and(|n| draining.contains(n));
        if !on_draining_node {
            plan.cancel.push(m.key.clone());
        }
    }
    plan.cancel.sort();
    plan
}
