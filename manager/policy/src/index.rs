//! The cluster index every decision works on: nodes by name with their free
//! memory, VMIs by key, open migrations by VMI, active counts per source
//! node, and candidate-target sets kept ordered by free memory.
//!
//! Built once per decision in O(nodes log nodes + VMIs + migrations); a
//! target pick is then O(log nodes) and a reservation O(groups × log nodes),
//! so a decision never scans pending × nodes × VMIs.

use std::cmp::Reverse;
use std::collections::BTreeSet;

// foldhash instead of std's SipHash: hashing 50,000 VMI keys was half of
// an index build. It is seeded per process like std's RandomState, so
// colliding VMI names cannot be prepared offline, though it is not a
// cryptographic hash (foldhash documents "minimal" DoS resistance).
use foldhash::{HashMap, HashMapExt};

use crate::migratable::{
    check_volumes, cpu_mode_not_migratable, HostModelRequirement, Migratability, NotMigratable,
    NotMigratableReason,
};
use crate::model::{CpuModel, MigrationView, NodeView, ObjectKey, Snapshot, VmiView};

/// Why no target node can be chosen right now (the migration waits).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoTarget {
    #[error("no schedulable node other than the source {source_node}")]
    NoOtherSchedulableNode { source_node: String },
    #[error(
        "no other schedulable node supports host CPU model {model} of source node {source_node}"
    )]
    NoNodeWithHostModel { source_node: String, model: String },
    #[error("source node {source_node} advertises no host CPU model")]
    SourceWithoutHostModel { source_node: String },
    #[error(
        "not enough memory: the VM needs {needed} bytes, the roomiest candidate {node} has {free} free"
    )]
    InsufficientMemory {
        needed: u64,
        node: String,
        free: i64,
    },
}

/// Ordered candidate set: best first = most free memory, then lowest name
/// (node ranks are positions in name order).
type Group = BTreeSet<(Reverse<i64>, u32)>;

/// The group holding every schedulable node (targets for non-host-model VMs).
const ALL_SCHEDULABLE: usize = 0;

pub struct ClusterIndex<'a> {
    snap: Snapshot<'a>,
    /// Nodes in name order; a node's rank is its position here.
    nodes: Vec<&'a NodeView>,
    rank: HashMap<&'a str, u32>,
    free: Vec<i64>,
    schedulable: Vec<bool>,
    vmis: HashMap<&'a ObjectKey, &'a VmiView>,
    /// Non-final migrations (Pending included) per VMI, by key, so that
    /// answers do not depend on input order even in inconsistent states
    /// (two open migrations of one VMI).
    open_by_vmi: HashMap<&'a ObjectKey, Vec<&'a MigrationView>>,
    /// Active (Scheduling..=Running) migrations per source node name.
    outbound: HashMap<&'a str, u32>,
    active: u32,
    groups: Vec<Group>,
    group_of: HashMap<HostModelRequirement, usize>,
    /// Groups each node (by rank) belongs to, to update on reservation.
    node_groups: Vec<Vec<usize>>,
    /// Source node rank -> its host-model group (`None`: no host-model label).
    source_group: Vec<Option<Option<usize>>>,
}

impl<'a> ClusterIndex<'a> {
    pub fn build(snap: Snapshot<'a>) -> Self {
        let mut nodes: Vec<&NodeView> = snap.nodes.iter().collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let rank: HashMap<&str, u32> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i as u32))
            .collect();
        let mut free: Vec<i64> = nodes
            .iter()
            .map(|n| i64::try_from(n.allocatable_memory).unwrap_or(i64::MAX))
            .collect();
        let schedulable: Vec<bool> = nodes.iter().map(|n| n.schedulable()).collect();

        let mut vmis = HashMap::with_capacity(snap.vmis.len());
        for v in snap.vmis {
            vmis.insert(&v.key, v);
            if v.phase.is_final() {
                continue;
            }
            if let Some(r) = v.node.as_deref().and_then(|n| rank.get(n)) {
                free[*r as usize] -= mem(v.memory_bytes);
            }
        }

        let mut open_by_vmi: HashMap<&ObjectKey, Vec<&MigrationView>> = HashMap::new();
        let mut outbound: HashMap<&str, u32> = HashMap::new();
        let mut active = 0u32;
        for m in snap.migrations {
            if m.phase.is_final() {
                continue;
            }
            open_by_vmi.entry(&m.vmi).or_default().push(m);
            if !m.phase.is_active() {
                continue;
            }
            active += 1;
            let vmi = vmis.get(&m.vmi).copied();
            let source = m
                .source_node
                .as_deref()
                .or_else(|| vmi.and_then(|v| v.node.as_deref()));
            if let Some(s) = source {
                *outbound.entry(s).or_default() += 1;
            }
            // The target holds the VM's memory while the migration runs;
            // once the VMI's nodeName already moved there it is counted
            // above and must not be counted twice.
            if let (Some(t), Some(v)) = (m.target_node.as_deref(), vmi) {
                if v.node.as_deref() != Some(t) {
                    if let Some(r) = rank.get(t) {
                        free[*r as usize] -= mem(v.memory_bytes);
                    }
                }
            }
        }

        for list in open_by_vmi.values_mut() {
            if list.len() > 1 {
                list.sort_by(|a, b| a.key.cmp(&b.key));
            }
        }

        let mut idx = Self {
            snap,
            node_groups: vec![Vec::new(); nodes.len()],
            nodes,
            rank,
            free,
            schedulable,
            vmis,
            open_by_vmi,
            outbound,
            active,
            groups: Vec::new(),
            group_of: HashMap::new(),
            source_group: vec![None; snap.nodes.len()],
        };
        idx.add_group(|_| true);
        idx
    }

    pub fn snapshot(&self) -> Snapshot<'a> {
        self.snap
    }

    pub fn node(&self, name: &str) -> Option<&'a NodeView> {
        self.rank.get(name).map(|r| self.nodes[*r as usize])
    }

    pub fn vmi(&self, key: &ObjectKey) -> Option<&'a VmiView> {
        self.vmis.get(key).copied()
    }

    /// Non-final migrations of a VMI (Pending included), in key order.
    pub fn open_migrations_of(&self, vmi: &ObjectKey) -> &[&'a MigrationView] {
        self.open_by_vmi.get(vmi).map_or(&[], Vec::as_slice)
    }

    /// The active (Scheduling..=Running) migration of a VMI, if any.
    pub fn active_migration_of(&self, vmi: &ObjectKey) -> Option<&'a MigrationView> {
        self.open_migrations_of(vmi)
            .iter()
            .copied()
            .find(|m| m.phase.is_active())
    }

    /// Migrations counting against the cluster limit.
    pub fn active_count(&self) -> u32 {
        self.active
    }

    /// Active migrations out of `node`.
    pub fn outbound_count(&self, node: &str) -> u32 {
        self.outbound.get(node).copied().unwrap_or(0)
    }

    /// Free memory of a node: allocatable minus the VMIs on it and the
    /// migrations targeting it (and what this decision reserved). Negative
    /// when overcommitted.
    pub fn free_memory(&self, node: &str) -> Option<i64> {
        self.rank.get(node).map(|r| self.free[*r as usize])
    }

    /// The full `LiveMigratable` value: disks, host-model label on the
    /// source, and (for host-model) whether any other schedulable node can
    /// run the model.
    pub fn live_migratable(&mut self, vmi: &VmiView) -> Migratability {
        match self.static_migratability(vmi) {
            Err(n) => Migratability::NotMigratable(n),
            Ok((method, group)) => {
                if let Some(g) = group {
                    let source = vmi.node.as_deref().and_then(|n| self.rank.get(n)).copied();
                    let others = self.groups[g].len()
                        - source.map_or(0, |s| self.node_groups[s as usize].contains(&g) as usize);
                    if others == 0 {
                        let model = self.group_requirement(g);
                        return Migratability::NotMigratable(NotMigratable {
                            reason: NotMigratableReason::NoSuitableNodesForHostModelMigration,
                            message: format!(
                                "no other schedulable node supports host CPU model {model} of node \"{}\"",
                                vmi.node.as_deref().unwrap_or("")
                            ),
                        });
                    }
                }
                Migratability::Migratable { method }
            }
        }
    }

    /// The checks that do not depend on other nodes: volumes and the
    /// source's host-model label. Also returns the target group.
    pub(crate) fn static_migratability(
        &mut self,
        vmi: &VmiView,
    ) -> Result<(crate::migratable::MigrationMethod, Option<usize>), NotMigratable> {
        let method = check_volumes(vmi)?;
        if vmi.cpu != CpuModel::HostModel {
            return Ok((method, None));
        }
        let source = vmi.node.as_deref().and_then(|n| self.rank.get(n)).copied();
        let group = match source {
            Some(s) => self.source_group(s),
            None => None,
        };
        match group {
            Some(g) => Ok((method, Some(g))),
            None => Err(cpu_mode_not_migratable(vmi)),
        }
    }

    /// Best target for the VM right now, without reserving it.
    pub fn select_target(&mut self, vmi: &VmiView) -> Result<&'a str, NoTarget> {
        let group = self.target_group(vmi)?;
        let r = self.pick(group, vmi)?;
        Ok(self.nodes[r as usize].name.as_str())
    }

    /// Count `bytes` against `node` (a migration this decision starts).
    pub fn reserve(&mut self, node: &str, bytes: u64) {
        if let Some(r) = self.rank.get(node).copied() {
            self.reserve_rank(r, bytes);
        }
    }

    pub(crate) fn target_group(&mut self, vmi: &VmiView) -> Result<usize, NoTarget> {
        if vmi.cpu != CpuModel::HostModel {
            return Ok(ALL_SCHEDULABLE);
        }
        let source_node = vmi.node.clone().unwrap_or_default();
        let source = self.rank.get(source_node.as_str()).copied();
        source
            .and_then(|s| self.source_group(s))
            .ok_or(NoTarget::SourceWithoutHostModel { source_node })
    }

    /// Best node of `group` for `vmi`: not its source, most free memory
    /// then name; an error when the group is empty or the best lacks room.
    pub(crate) fn pick(&self, group: usize, vmi: &VmiView) -> Result<u32, NoTarget> {
        let source = vmi.node.as_deref().and_then(|n| self.rank.get(n)).copied();
        // The source is at most one entry of the ordered set: skipping it
        // keeps this O(log n).
        let best = self.groups[group]
            .iter()
            .map(|(_, r)| *r)
            .find(|r| Some(*r) != source);
        let source_node = || vmi.node.clone().unwrap_or_default();
        let Some(best) = best else {
            return Err(if group == ALL_SCHEDULABLE {
                NoTarget::NoOtherSchedulableNode {
                    source_node: source_node(),
                }
            } else {
                NoTarget::NoNodeWithHostModel {
                    source_node: source_node(),
                    model: self.group_requirement(group),
                }
            });
        };
        let free = self.free[best as usize];
        if free < mem(vmi.memory_bytes) {
            return Err(NoTarget::InsufficientMemory {
                needed: vmi.memory_bytes,
                node: self.nodes[best as usize].name.clone(),
                free,
            });
        }
        Ok(best)
    }

    pub(crate) fn node_name(&self, rank: u32) -> &'a str {
        self.nodes[rank as usize].name.as_str()
    }

    pub(crate) fn reserve_rank(&mut self, r: u32, bytes: u64) {
        let old = self.free[r as usize];
        let new = old - mem(bytes);
        self.free[r as usize] = new;
        for g in &self.node_groups[r as usize] {
            let set = &mut self.groups[*g];
            set.remove(&(Reverse(old), r));
            set.insert((Reverse(new), r));
        }
    }

    fn group_requirement(&self, g: usize) -> String {
        self.group_of
            .iter()
            .find(|(_, v)| **v == g)
            .map(|(k, _)| k.describe())
            .unwrap_or_default()
    }

    /// The host-model group of a source node, built on first use: the
    /// number of distinct requirements is small (one per CPU generation),
    /// while building all of them up front would cost nodes² in the worst
    /// case.
    fn source_group(&mut self, source: u32) -> Option<usize> {
        if let Some(g) = self.source_group[source as usize] {
            return g;
        }
        let g = HostModelRequirement::of_source(self.nodes[source as usize]).map(|req| {
            if let Some(g) = self.group_of.get(&req) {
                return *g;
            }
            let keys = req.label_keys();
            let g = self.add_group(|n| keys.matches(n));
            self.group_of.insert(req, g);
            g
        });
        self.source_group[source as usize] = Some(g);
        g
    }

    fn add_group(&mut self, member: impl Fn(&NodeView) -> bool) -> usize {
        let g = self.groups.len();
        let mut members = Vec::new();
        for (r, n) in self.nodes.iter().enumerate() {
            if self.schedulable[r] && member(n) {
                members.push((Reverse(self.free[r]), r as u32));
                self.node_groups[r].push(g);
            }
        }
        // Collecting sorts once and bulk-loads the tree, cheaper than
        // thousands of single inserts.
        self.groups.push(members.into_iter().collect());
        g
    }
}

fn mem(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}
