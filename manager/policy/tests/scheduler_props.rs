//! Property test: a small simulated cluster driven by random arrivals,
//! completions, failures, cancellations, phase progress, limit changes,
//! drains and uncordons. After every step the scheduler's decision is
//! checked against a brute-force oracle:
//!
//! - limits: no start happens while the cluster count (resp. the source
//!   node's outbound count) is at or above its limit, counting the starts
//!   made earlier in the same decision; so lowering a limit never stops
//!   running migrations but blocks new starts until under it;
//! - every start is valid (Pending, VMI running on the source, target
//!   schedulable, not the source, CPU model match, memory room including
//!   the reservations of earlier starts);
//! - every wait reason is true (ClusterLimit/NodeLimit: the count is at the
//!   limit after the decision; NoTarget: no valid target exists);
//! - priority: nothing started ranks behind a migration waiting on the
//!   cluster limit;
//! - every Pending migration is decided exactly once.
//!
//! Then arrivals stop, limits are set to at least 1, and rounds of
//! "decide, start, complete everything" run: every Pending migration must
//! start unless the oracle confirms it has no valid target.

mod common;

use std::collections::HashMap;

use common::*;
use mignet_policy::*;
use proptest::prelude::*;

const NODES: usize = 5;
const VMIS: usize = 12;

#[derive(Clone, Debug)]
enum Op {
    Arrive { vmi: usize, evacuation: bool },
    Complete(usize),
    Fail(usize),
    Cancel(usize),
    Advance(usize),
    SetLimits(u32, u32),
    Drain(usize),
    Uncordon(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..VMIS, any::<bool>()).prop_map(|(vmi, e)| Op::Arrive { vmi, evacuation: e && vmi % 2 == 0 }),
        3 => (0..8usize).prop_map(Op::Complete),
        1 => (0..8usize).prop_map(Op::Fail),
        1 => (0..8usize).prop_map(Op::Cancel),
        2 => (0..8usize).prop_map(Op::Advance),
        2 => (0..6u32, 0..4u32).prop_map(|(c, n)| Op::SetLimits(c, n)),
        1 => (0..NODES).prop_map(Op::Drain),
        1 => (0..NODES).prop_map(Op::Uncordon),
    ]
}

struct World {
    nodes: Vec<NodeView>,
    vmis: Vec<VmiView>,
    migs: Vec<MigrationView>,
    limits: Limits,
    clock: i64,
    serial: usize,
}

fn node_name(i: usize) -> String {
    format!("n{i}")
}

impl World {
    /// n0..n2 have host model A, n3..n4 model B; 16 GiB each. VMIs of 1-4
    /// GiB, every third one host-model, one with a non-shared disk.
    fn new(sizes: &[u64], placement: &[usize]) -> Self {
        let nodes = (0..NODES)
            .map(|i| host_model(node(&node_name(i), 16), if i < 3 { "A" } else { "B" }))
            .collect();
        let vmis = (0..VMIS)
            .map(|i| {
                let mut v = vmi(&format!("v{i}"), &node_name(placement[i]), sizes[i]);
                if i % 3 == 0 {
                    v.cpu = CpuModel::HostModel;
                }
                if i == VMIS - 1 {
                    v.volumes.push(rwo());
                }
                v
            })
            .collect();
        Self {
            nodes,
            vmis,
            migs: Vec::new(),
            limits: limits(3, 1),
            clock: 0,
            serial: 0,
        }
    }

    fn snap(&self) -> Snapshot<'_> {
        snap(&self.nodes, &self.vmis, &self.migs)
    }

    fn vmi_mut(&mut self, k: &ObjectKey) -> &mut VmiView {
        self.vmis.iter_mut().find(|v| &v.key == k).unwrap()
    }

    fn vmi(&self, k: &ObjectKey) -> Option<&VmiView> {
        self.vmis.iter().find(|v| &v.key == k)
    }

    fn nth(
        &mut self,
        n: usize,
        pred: impl Fn(&MigrationView) -> bool,
    ) -> Option<&mut MigrationView> {
        let idx: Vec<usize> = (0..self.migs.len())
            .filter(|i| pred(&self.migs[*i]))
            .collect();
        if idx.is_empty() {
            return None;
        }
        let i = idx[n % idx.len()];
        Some(&mut self.migs[i])
    }

    fn add_migration(&mut self, vmi: &ObjectKey, origin: Origin) {
        self.serial += 1;
        self.clock += 1;
        let mut m = mig(&format!("m{:04}", self.serial), &vmi.name, self.clock);
        m.origin = origin;
        self.migs.push(m);
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Arrive { vmi, evacuation } => {
                let origin = if *evacuation {
                    Origin::Evacuation
                } else {
                    Origin::User
                };
                self.add_migration(&key(&format!("v{vmi}")), origin);
            }
            Op::Complete(n) => {
                if let Some(m) = self.nth(*n, |m| m.phase.is_active()) {
                    m.phase = Phase::Succeeded;
                    let (vmi, target) = (m.vmi.clone(), m.target_node.clone());
                    self.vmi_mut(&vmi).node = target;
                }
            }
            Op::Fail(n) => {
                if let Some(m) = self.nth(*n, |m| m.phase.is_active()) {
                    m.phase = Phase::Failed;
                }
            }
            Op::Cancel(n) => {
                if let Some(m) = self.nth(*n, |m| !m.phase.is_final()) {
                    m.phase = Phase::Failed;
                }
            }
            Op::Advance(n) => {
                if let Some(m) = self.nth(*n, |m| m.phase.is_active() && m.phase != Phase::Running)
                {
                    m.phase = Phase::ALL[m.phase as usize + 1];
                }
            }
            Op::SetLimits(c, n) => self.limits = limits(*c, *n),
            Op::Drain(i) => {
                let n = &mut self.nodes[*i];
                if !n.draining() {
                    n.unschedulable = true;
                    n.taints.push(Taint {
                        key: "kubevirt.io/drain".into(),
                        effect: TaintEffect::NoSchedule,
                    });
                }
                self.evacuate();
            }
            Op::Uncordon(i) => {
                let n = &mut self.nodes[*i];
                n.unschedulable = false;
                n.taints.clear();
                self.evacuate();
            }
        }
    }

    /// Apply the drain plan as an adapter would: create evacuations, delete
    /// cancelled ones.
    fn evacuate(&mut self) {
        let plan = {
            let mut idx = ClusterIndex::build(self.snap());
            plan_evacuations(&mut idx, None)
        };
        for e in &plan.entries {
            if e.action == DrainAction::Evacuate {
                self.add_migration(&e.vmi, Origin::Evacuation);
            }
        }
        for k in &plan.cancel {
            let m = self.migs.iter_mut().find(|m| &m.key == k).unwrap();
            assert_eq!(
                m.phase,
                Phase::Pending,
                "only pending evacuations are cancelled"
            );
            m.phase = Phase::Failed;
        }
        // Drain invariant: every migratable VMI on a draining node now has
        // an open migration.
        let mut idx = ClusterIndex::build(self.snap());
        for v in &self.vmis {
            let on_drained = v
                .node
                .as_deref()
                .is_some_and(|n| self.nodes.iter().any(|x| x.name == n && x.draining()));
            if on_drained && idx.live_migratable(v).is_migratable() {
                assert!(
                    !idx.open_migrations_of(&v.key).is_empty(),
                    "{} on a draining node has no migration",
                    v.key
                );
            }
        }
    }

    // ------------------------------------------------------------ oracle

    /// Free memory per node by brute force.
    fn free(&self) -> HashMap<String, i64> {
        let mut free: HashMap<String, i64> = self
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.allocatable_memory as i64))
            .collect();
        for v in &self.vmis {
            if let Some(n) = &v.node {
                *free.get_mut(n).unwrap() -= v.memory_bytes as i64;
            }
        }
        for m in self.migs.iter().filter(|m| m.phase.is_active()) {
            let v = self.vmi(&m.vmi).unwrap();
            let t = m.target_node.as_ref().unwrap();
            if v.node.as_ref() != Some(t) {
                *free.get_mut(t).unwrap() -= v.memory_bytes as i64;
            }
        }
        free
    }

    fn model_of(&self, node: &str) -> String {
        let n = self.nodes.iter().find(|n| n.name == node).unwrap();
        n.labels
            .keys()
            .find_map(|k| k.strip_prefix("host-model-cpu.node.kubevirt.io/"))
            .unwrap()
            .to_owned()
    }

    /// Nodes a VMI could go to now.
    fn valid_targets(&self, v: &VmiView, free: &HashMap<String, i64>) -> Vec<String> {
        let src = v.node.as_deref().unwrap();
        self.nodes
            .iter()
            .filter(|n| !n.unschedulable && !n.draining() && n.name != src)
            .filter(|n| {
                v.cpu != CpuModel::HostModel || self.model_of(&n.name) == self.model_of(src)
            })
            .filter(|n| free[&n.name] >= v.memory_bytes as i64)
            .map(|n| n.name.clone())
            .collect()
    }

    fn active(&self) -> u32 {
        self.migs.iter().filter(|m| m.phase.is_active()).count() as u32
    }

    fn outbound(&self, node: &str) -> u32 {
        self.migs
            .iter()
            .filter(|m| m.phase.is_active() && m.source_node.as_deref() == Some(node))
            .count() as u32
    }

    /// Decide, check the decision against the oracle, apply it.
    fn tick(&mut self) -> Decision {
        let now = Timestamp::from_unix_secs(self.clock);
        let d = decide(self.snap(), self.limits, now);
        let lim = self.limits;

        // Every Pending migration decided exactly once.
        let pending: Vec<ObjectKey> = self
            .migs
            .iter()
            .filter(|m| m.phase == Phase::Pending)
            .map(|m| m.key.clone())
            .collect();
        let mut decided: Vec<ObjectKey> = d
            .start
            .iter()
            .map(|s| s.migration.clone())
            .chain(d.waiting.iter().map(|w| w.migration.clone()))
            .chain(d.refuse.iter().map(|r| r.migration.clone()))
            .collect();
        decided.sort();
        let mut p = pending.clone();
        p.sort();
        assert_eq!(decided, p, "each pending migration decided once");

        // Starts: limits and validity, sequentially.
        let mut free = self.free();
        let mut active = self.active();
        let mut outbound: HashMap<String, u32> = HashMap::new();
        for s in &d.start {
            assert!(
                active < lim.parallel_migrations_per_cluster,
                "start at cluster count {active} >= limit {lim:?}"
            );
            let out = outbound
                .entry(s.source_node.clone())
                .or_insert_with(|| self.outbound(&s.source_node));
            assert!(
                *out < lim.parallel_outbound_migrations_per_node,
                "start from {} at outbound {out} >= limit {lim:?}",
                s.source_node
            );
            let m = self.migs.iter().find(|m| m.key == s.migration).unwrap();
            assert_eq!(m.phase, Phase::Pending);
            let v = self.vmi(&s.vmi).unwrap();
            assert_eq!(v.phase, VmiPhase::Running);
            assert_eq!(v.node.as_deref(), Some(s.source_node.as_str()));
            assert!(v.volumes.iter().all(|x| x.source != rwo().source));
            let targets = self.valid_targets(v, &free);
            assert!(
                targets.contains(&s.target_node),
                "{} -> {} not among valid targets {targets:?}",
                s.vmi,
                s.target_node
            );
            // Tie-break: the chosen one has the most free memory (then name).
            let best = targets
                .iter()
                .max_by(|a, b| free[*a].cmp(&free[*b]).then(b.cmp(a)))
                .unwrap();
            assert_eq!(&s.target_node, best);
            *free.get_mut(&s.target_node).unwrap() -= v.memory_bytes as i64;
            active += 1;
            *out += 1;
        }

        // Wait reasons are true after the starts.
        let order = |k: &ObjectKey| {
            let m = self.migs.iter().find(|m| &m.key == k).unwrap();
            (m.origin, m.created, m.key.clone())
        };
        for w in &d.waiting {
            let m = self.migs.iter().find(|m| m.key == w.migration).unwrap();
            let v = self.vmi(&m.vmi).unwrap();
            match &w.reason {
                WaitReason::NetworkSwitch(_) => panic!("decide never holds on its own"),
                WaitReason::ClusterLimit { .. } => {
                    assert!(active >= lim.parallel_migrations_per_cluster);
                    for s in &d.start {
                        assert!(order(&s.migration) < order(&w.migration), "priority order");
                    }
                }
                WaitReason::NodeLimit { node, .. } => {
                    let out = outbound
                        .get(node)
                        .copied()
                        .unwrap_or_else(|| self.outbound(node));
                    assert!(out >= lim.parallel_outbound_migrations_per_node);
                    assert_eq!(v.node.as_deref(), Some(node.as_str()));
                }
                WaitReason::NoTarget(_) => {
                    assert!(
                        self.valid_targets(v, &free).is_empty(),
                        "{} waits for a target but {:?} fit",
                        v.key,
                        self.valid_targets(v, &free)
                    );
                }
                WaitReason::Backoff { .. } => panic!("no backoff in this simulation"),
            }
        }
        for r in &d.refuse {
            let m = self.migs.iter().find(|m| m.key == r.migration).unwrap();
            match &r.refusal {
                Refusal::NotLiveMigratable { reason, .. } => {
                    assert_eq!(*reason, NotMigratableReason::DisksNotLiveMigratable);
                    assert_eq!(m.vmi.name, format!("v{}", VMIS - 1));
                }
                Refusal::AlreadyMigrating { .. } => {}
                other => panic!("unexpected refusal {other:?}"),
            }
        }

        // Apply.
        for s in &d.start {
            let m = self.migs.iter_mut().find(|m| m.key == s.migration).unwrap();
            m.phase = Phase::Scheduling;
            m.source_node = Some(s.source_node.clone());
            m.target_node = Some(s.target_node.clone());
        }
        for r in &d.refuse {
            self.migs
                .iter_mut()
                .find(|m| m.key == r.migration)
                .unwrap()
                .phase = Phase::Failed;
        }
        // Limits hold after the decision, modulo what was already running.
        d
    }
}

fn world_inputs() -> impl Strategy<Value = (Vec<u64>, Vec<usize>)> {
    (
        proptest::collection::vec(1..=4u64, VMIS),
        proptest::collection::vec(0..NODES, VMIS),
    )
}

proptest! {
    // Failures print the minimal input; no regression file is written into
    // the source tree.
    #![proptest_config(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn limits_hold_and_nothing_waits_forever(
        (sizes, placement) in world_inputs(),
        ops in proptest::collection::vec(op(), 1..80),
        final_limits in (1..6u32, 1..4u32),
    ) {
        let mut w = World::new(&sizes, &placement);
        for o in &ops {
            let before = (w.active(), w.limits);
            w.apply(o);
            w.tick();
            // After the decision: under the limit, or no higher than before.
            let lim = w.limits.parallel_migrations_per_cluster;
            prop_assert!(w.active() <= lim.max(before.0), "{:?}", before);
        }

        // Arrivals stop; limits back to something positive; every round
        // starts what it can and then all running migrations complete.
        w.limits = limits(final_limits.0, final_limits.1);
        let rounds = w.migs.len() + 2;
        for _ in 0..rounds {
            let round = w.tick();
            let had_active = w.active() > 0;
            for m in w.migs.iter_mut().filter(|m| m.phase.is_active()) {
                m.phase = Phase::Succeeded;
            }
            let moved: Vec<(ObjectKey, Option<String>)> = w
                .migs
                .iter()
                .filter(|m| m.phase == Phase::Succeeded && m.target_node.is_some())
                .map(|m| (m.vmi.clone(), m.target_node.clone()))
                .collect();
            for (k, t) in moved {
                // Only the latest success matters; the order of `migs` is creation order.
                w.vmi_mut(&k).node = t;
            }
            for m in w.migs.iter_mut().filter(|m| m.phase == Phase::Succeeded) {
                m.target_node = None; // settled: its VMI now lives there
            }
            if round.start.is_empty() && !had_active {
                break;
            }
        }
        let last = w.tick();
        prop_assert!(last.start.is_empty(), "still starting after {} rounds", rounds);
        let free = w.free();
        for m in w.migs.iter().filter(|m| m.phase == Phase::Pending) {
            let v = w.vmi(&m.vmi).unwrap();
            prop_assert!(
                w.valid_targets(v, &free).is_empty(),
                "{} still pending with valid targets", m.key
            );
            let reason = &last.waiting.iter().find(|x| x.migration == m.key).unwrap().reason;
            prop_assert!(matches!(reason, WaitReason::NoTarget(_)), "{:?}", reason);
        }
    }
}
