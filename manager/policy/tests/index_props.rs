//! Property tests over random clusters (random CPU labels, cordons, drains,
//! memory, migrations in every phase, tied creation times):
//!
//! - the decision and the drain plan do not depend on the order of the
//!   input slices;
//! - `select_target` equals a brute-force search (valid targets, most free
//!   memory, then name), also after reservations;
//! - `live_migratable` for host-model VMs agrees with a brute-force count
//!   of other schedulable nodes that can run the model.

mod common;

use std::collections::BTreeMap;

use common::*;
use mignet_policy::*;
use proptest::prelude::*;

const MODELS: [&str; 3] = ["A", "B", "C"];
const FEATURES: [&str; 3] = ["f1", "f2", "f3"];

#[derive(Clone, Debug)]
struct NodeSpec {
    mem_gib: u64,
    /// None: no host-model label at all.
    host_model: Option<usize>,
    /// Extra models this node can run (cpu-model-migration labels).
    runs: [bool; 3],
    features: [bool; 3],
    required: [bool; 3],
    cordoned: bool,
    drained: bool,
}

fn node_spec() -> impl Strategy<Value = NodeSpec> {
    (
        0..48u64,
        proptest::option::weighted(0.85, 0..3usize),
        any::<[bool; 3]>(),
        any::<[bool; 3]>(),
        any::<[bool; 3]>(),
        proptest::bool::weighted(0.15),
        proptest::bool::weighted(0.1),
    )
        .prop_map(
            |(mem_gib, host_model, runs, features, required, cordoned, drained)| NodeSpec {
                mem_gib,
                host_model,
                runs,
                features,
                required,
                cordoned,
                drained,
            },
        )
}

fn build_node(i: usize, s: &NodeSpec) -> NodeView {
    let mut n = node(&format!("n{i:02}"), s.mem_gib);
    if let Some(m) = s.host_model {
        n = host_model(n, MODELS[m]);
    }
    for (j, m) in MODELS.iter().enumerate() {
        if s.runs[j] {
            n = label(
                n,
                &format!("cpu-model-migration.node.kubevirt.io/{m}"),
                "true",
            );
        }
    }
    for (j, f) in FEATURES.iter().enumerate() {
        if s.features[j] {
            n = label(n, &format!("cpu-feature.node.kubevirt.io/{f}"), "true");
        }
        if s.required[j] {
            n = label(
                n,
                &format!("host-model-required-features.node.kubevirt.io/{f}"),
                "true",
            );
        }
    }
    if s.cordoned {
        n = cordoned(n);
    }
    if s.drained {
        n = drained(n);
    }
    n
}

#[derive(Clone, Debug)]
struct VmiSpec {
    node: usize,
    mem_gib: u64,
    host_model: bool,
    running: bool,
}

fn vmi_spec() -> impl Strategy<Value = VmiSpec> {
    (
        0..64usize,
        1..12u64,
        any::<bool>(),
        proptest::bool::weighted(0.9),
    )
        .prop_map(|(node, mem_gib, host_model, running)| VmiSpec {
            node,
            mem_gib,
            host_model,
            running,
        })
}

#[derive(Clone, Debug)]
struct MigSpec {
    vmi: usize,
    phase: usize,
    evacuation: bool,
    created: i64,
    target: usize,
}

fn mig_spec() -> impl Strategy<Value = MigSpec> {
    (0..64usize, 0..8usize, any::<bool>(), 0..4i64, 0..64usize).prop_map(
        |(vmi, phase, evacuation, created, target)| MigSpec {
            vmi,
            // Mostly Pending, so there is something to decide.
            phase: if phase < 4 { 0 } else { phase },
            evacuation,
            created,
            target,
        },
    )
}

fn world(
    ns: &[NodeSpec],
    vs: &[VmiSpec],
    ms: &[MigSpec],
) -> (Vec<NodeView>, Vec<VmiView>, Vec<MigrationView>) {
    let nodes: Vec<NodeView> = ns
        .iter()
        .enumerate()
        .map(|(i, s)| build_node(i, s))
        .collect();
    let vmis: Vec<VmiView> = vs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut v = vmi(
                &format!("v{i:02}"),
                &nodes[s.node % nodes.len()].name,
                s.mem_gib,
            );
            if s.host_model {
                v.cpu = CpuModel::HostModel;
            }
            if !s.running {
                v.phase = VmiPhase::Scheduled;
            }
            v
        })
        .collect();
    let migs: Vec<MigrationView> = ms
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let v = &vmis[s.vmi % vmis.len()];
            let mut m = mig(&format!("m{i:02}"), &v.key.name, s.created);
            m.phase = Phase::ALL[[0, 1, 2, 3, 4, 5, 6, 7][s.phase]];
            if s.evacuation {
                m = evac(m);
            }
            if m.phase.is_active() {
                m.source_node = v.node.clone();
                m.target_node = Some(nodes[s.target % nodes.len()].name.clone());
            }
            m
        })
        .collect();
    (nodes, vmis, migs)
}

// ------------------------------------------------------------------ oracle

fn labelled(n: &NodeView, prefix: &str, name: &str) -> bool {
    n.labels.get(&format!("{prefix}{name}")).map(String::as_str) == Some("true")
}

fn can_run(source: &NodeView, target: &NodeView) -> bool {
    let models: Vec<&str> = MODELS
        .iter()
        .copied()
        .filter(|m| labelled(source, "host-model-cpu.node.kubevirt.io/", m))
        .collect();
    let features: Vec<&str> = FEATURES
        .iter()
        .copied()
        .filter(|f| labelled(source, "host-model-required-features.node.kubevirt.io/", f))
        .collect();
    models.iter().all(|m| {
        labelled(target, "cpu-model-migration.node.kubevirt.io/", m)
            || labelled(target, "host-model-cpu.node.kubevirt.io/", m)
    }) && features.iter().all(|f| {
        labelled(target, "cpu-feature.node.kubevirt.io/", f)
            || labelled(target, "host-model-required-features.node.kubevirt.io/", f)
    })
}

fn free_memory(
    nodes: &[NodeView],
    vmis: &[VmiView],
    migs: &[MigrationView],
) -> BTreeMap<String, i64> {
    let mut free: BTreeMap<String, i64> = nodes
        .iter()
        .map(|n| (n.name.clone(), n.allocatable_memory as i64))
        .collect();
    for v in vmis.iter().filter(|v| !v.phase.is_final()) {
        *free.get_mut(v.node.as_ref().unwrap()).unwrap() -= v.memory_bytes as i64;
    }
    for m in migs.iter().filter(|m| m.phase.is_active()) {
        let v = vmis.iter().find(|v| v.key == m.vmi).unwrap();
        let t = m.target_node.as_ref().unwrap();
        if v.node.as_ref() != Some(t) {
            *free.get_mut(t).unwrap() -= v.memory_bytes as i64;
        }
    }
    free
}

fn brute_target(nodes: &[NodeView], free: &BTreeMap<String, i64>, v: &VmiView) -> Option<String> {
    let src = nodes
        .iter()
        .find(|n| Some(&n.name) == v.node.as_ref())
        .unwrap();
    nodes
        .iter()
        .filter(|n| n.schedulable() && n.name != src.name)
        .filter(|n| v.cpu != CpuModel::HostModel || can_run(src, n))
        .filter(|n| free[&n.name] >= v.memory_bytes as i64)
        .max_by(|a, b| free[&a.name].cmp(&free[&b.name]).then(b.name.cmp(&a.name)))
        .map(|n| n.name.clone())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn decisions_ignore_input_order(
        ns in proptest::collection::vec(node_spec(), 1..10),
        vs in proptest::collection::vec(vmi_spec(), 1..30),
        ms in proptest::collection::vec(mig_spec(), 0..30),
        lim in (0..8u32, 0..4u32),
        rot in 0..30usize,
    ) {
        let (nodes, vmis, migs) = world(&ns, &vs, &ms);
        let l = limits(lim.0, lim.1);
        let d1 = decide(snap(&nodes, &vmis, &migs), l, NOW);
        let (mut n2, mut v2, mut m2) = (nodes.clone(), vmis.clone(), migs.clone());
        n2.reverse();
        let k = rot % v2.len();
        v2.rotate_left(k);
        if !m2.is_empty() {
            let k = rot % m2.len();
            m2.rotate_left(k);
        }
        m2.reverse();
        let d2 = decide(snap(&n2, &v2, &m2), l, NOW);
        prop_assert_eq!(d1, d2);
        let plan = |n: &[NodeView], v: &[VmiView], m: &[MigrationView]| {
            let mut idx = ClusterIndex::build(snap(n, v, m));
            plan_evacuations(&mut idx, Some(EvictionStrategy::LiveMigrate))
        };
        prop_assert_eq!(plan(&nodes, &vmis, &migs), plan(&n2, &v2, &m2));
    }

    #[test]
    fn target_selection_matches_brute_force_also_after_reservations(
        ns in proptest::collection::vec(node_spec(), 1..10),
        vs in proptest::collection::vec(vmi_spec(), 1..30),
        ms in proptest::collection::vec(mig_spec(), 0..20),
    ) {
        let (nodes, vmis, migs) = world(&ns, &vs, &ms);
        let mut free = free_memory(&nodes, &vmis, &migs);
        let mut idx = ClusterIndex::build(snap(&nodes, &vmis, &migs));
        for (name, f) in &free {
            prop_assert_eq!(idx.free_memory(name), Some(*f));
        }
        // Place every running VMI in turn, reserving as the scheduler would.
        for v in vmis.iter().filter(|v| v.phase == VmiPhase::Running) {
            let src = nodes.iter().find(|n| Some(&n.name) == v.node.as_ref()).unwrap();
            let has_label = MODELS
                .iter()
                .any(|m| labelled(src, "host-model-cpu.node.kubevirt.io/", m));
            let got = idx.select_target(v);
            if v.cpu == CpuModel::HostModel && !has_label {
                prop_assert!(
                    matches!(got, Err(NoTarget::SourceWithoutHostModel { .. })),
                    "{:?}", got
                );
                continue;
            }
            let want = brute_target(&nodes, &free, v);
            prop_assert_eq!(got.ok().map(str::to_owned), want.clone(), "{}", v.key);
            if let Some(t) = want {
                idx.reserve(&t, v.memory_bytes);
                *free.get_mut(&t).unwrap() -= v.memory_bytes as i64;
            }
        }
    }

    #[test]
    fn host_model_live_migratable_matches_brute_force(
        ns in proptest::collection::vec(node_spec(), 1..10),
        vs in proptest::collection::vec(vmi_spec(), 1..20),
    ) {
        let (nodes, vmis, _) = world(&ns, &vs, &[]);
        let mut idx = ClusterIndex::build(snap(&nodes, &vmis, &[]));
        for v in vmis.iter().filter(|v| v.cpu == CpuModel::HostModel) {
            let src = nodes.iter().find(|n| Some(&n.name) == v.node.as_ref()).unwrap();
            let has_label = MODELS
                .iter()
                .any(|m| labelled(src, "host-model-cpu.node.kubevirt.io/", m));
            let others = nodes
                .iter()
                .filter(|n| n.schedulable() && n.name != src.name && can_run(src, n))
                .count();
            let got = idx.live_migratable(v);
            let want = if !has_label {
                Some(NotMigratableReason::CpuModeNotMigratable)
            } else if others == 0 {
                Some(NotMigratableReason::NoSuitableNodesForHostModelMigration)
            } else {
                None
            };
            match (&got, want) {
                (Migratability::Migratable { .. }, None) => {}
                (Migratability::NotMigratable(n), Some(r)) => prop_assert_eq!(n.reason, r),
                _ => prop_assert!(false, "{}: got {:?}, want {:?}", v.key, got, want),
            }
        }
    }
}
