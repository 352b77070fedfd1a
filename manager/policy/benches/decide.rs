//! One full policy decision at scale: 5,000 nodes, 50,000 VMIs, 1,000
//! pending migrations (plus running ones and finished history).
//!
//! `cargo bench -p mignet-policy --bench decide` prints a table of median
//! and max wall time per scenario; the target for a full decision
//! (index build + scheduler + target selection for every pending) is under
//! 50 ms. A naive target search (every pending x every node) over the same
//! input is timed beside it for scale.

use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use mignet_policy::*;

const NODES: usize = 5_000;
const VMIS: usize = 50_000;
const PENDING: usize = 1_000;
const RUNNING: usize = 40;
const HISTORY: usize = 2_000;
const GIB: u64 = 1 << 30;
const MODELS: [&str; 4] = [
    "Skylake-Server",
    "Cascadelake-Server",
    "Icelake-Server",
    "SapphireRapids",
];
const FEATURES: [&str; 6] = ["avx512f", "avx512bw", "pku", "vaes", "amx-tile", "clwb"];

/// xorshift64*: deterministic input without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Input {
    nodes: Vec<NodeView>,
    vmis: Vec<VmiView>,
    migrations: Vec<MigrationView>,
}

fn node_name(i: usize) -> String {
    format!("worker-{i:05}")
}

fn build_input(drained_nodes: usize) -> Input {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let nodes: Vec<NodeView> = (0..NODES)
        .map(|i| {
            let model = MODELS[i % MODELS.len()];
            let mut labels = std::collections::BTreeMap::new();
            // A realistic label set: kubernetes.io ones, the node labeller's
            // model/feature labels, a few of ours.
            for (k, v) in [
                ("kubernetes.io/arch", "amd64"),
                ("kubernetes.io/os", "linux"),
                ("node-role.kubernetes.io/worker", ""),
                ("kubevirt.io/schedulable", "true"),
            ] {
                labels.insert(k.to_string(), v.to_string());
            }
            labels.insert("kubernetes.io/hostname".to_string(), node_name(i));
            labels.insert(
                format!("host-model-cpu.node.kubevirt.io/{model}"),
                "true".into(),
            );
            // Newer models can also run the older ones.
            for m in &MODELS[..=(i % MODELS.len())] {
                labels.insert(
                    format!("cpu-model-migration.node.kubevirt.io/{m}"),
                    "true".into(),
                );
            }
            let nfeat = 2 + i % MODELS.len();
            for f in &FEATURES[..nfeat] {
                labels.insert(format!("cpu-feature.node.kubevirt.io/{f}"), "true".into());
            }
            for f in &FEATURES[..2] {
                labels.insert(
                    format!("host-model-required-features.node.kubevirt.io/{f}"),
                    "true".into(),
                );
            }
            let mut n = NodeView {
                name: node_name(i),
                unschedulable: false,
                taints: Vec::new(),
                allocatable_memory: 512 * GIB,
                labels,
            };
            if i < drained_nodes {
                n.unschedulable = true;
                n.taints.push(Taint {
                    key: "kubevirt.io/drain".into(),
                    effect: TaintEffect::NoSchedule,
                });
            } else if i % 50 == 7 {
                n.unschedulable = true; // cordoned
            }
            n
        })
        .collect();

    let vmis: Vec<VmiView> = (0..VMIS)
        .map(|i| VmiView {
            key: ObjectKey::new(format!("tenant-{}", i % 100), format!("vm-{i:05}")),
            phase: VmiPhase::Running,
            node: Some(node_name(i % NODES)),
            memory_bytes: (1 + rng.below(16)) * GIB,
            cpu: if i % 2 == 0 {
                CpuModel::HostModel
            } else {
                CpuModel::Named(MODELS[0].into())
            },
            volumes: vec![
                VolumeView {
                    name: "root".into(),
                    source: VolumeSource::Claim {
                        claim_name: format!("root-{i}"),
                        access_modes: vec![AccessMode::ReadWriteMany],
                    },
                },
                VolumeView {
                    name: "cloudinit".into(),
                    source: VolumeSource::Config,
                },
            ],
            eviction_strategy: Some(EvictionStrategy::LiveMigrate),
        })
        .collect();

    // Distinct VMIs for pending + running + history.
    let mut chosen = std::collections::HashSet::new();
    let mut pick = |rng: &mut Rng| loop {
        let i = rng.below(VMIS as u64) as usize;
        if chosen.insert(i) {
            return i;
        }
    };
    let mut migrations = Vec::with_capacity(PENDING + RUNNING + HISTORY);
    for j in 0..PENDING + RUNNING + HISTORY {
        let i = pick(&mut rng);
        let v = &vmis[i];
        let (phase, source, target) = if j < PENDING {
            (Phase::Pending, None, None)
        } else if j < PENDING + RUNNING {
            let t = node_name((i + 1 + NODES / 2) % NODES);
            (Phase::Running, v.node.clone(), Some(t))
        } else {
            (Phase::Succeeded, None, None)
        };
        migrations.push(MigrationView {
            key: ObjectKey::new(v.key.namespace.clone(), format!("mig-{j:05}")),
            vmi: v.key.clone(),
            phase,
            created: Timestamp::from_unix_secs(1_700_000_000 + rng.below(86_400) as i64),
            origin: if j % 10 == 0 {
                Origin::Evacuation
            } else {
                Origin::User
            },
            source_node: source,
            target_node: target,
            not_before: None,
        });
    }
    Input {
        nodes,
        vmis,
        migrations,
    }
}

/// The obvious implementation for comparison: free memory by one pass over
/// VMIs, then for every pending migration scan every node and test labels.
fn naive_targets(s: Snapshot<'_>) -> usize {
    let mut free: HashMap<&str, i64> = s
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.allocatable_memory as i64))
        .collect();
    for v in s.vmis {
        if let Some(n) = v.node.as_deref() {
            *free.get_mut(n).unwrap() -= v.memory_bytes as i64;
        }
    }
    let vmis: HashMap<&ObjectKey, &VmiView> = s.vmis.iter().map(|v| (&v.key, v)).collect();
    let nodes: HashMap<&str, &NodeView> = s.nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut found = 0;
    for m in s.migrations.iter().filter(|m| m.phase == Phase::Pending) {
        let v = vmis[&m.vmi];
        let src = v.node.as_deref().unwrap();
        let req = HostModelRequirement::of_source(nodes[src]);
        let best = s
            .nodes
            .iter()
            .filter(|n| n.schedulable() && n.name != src)
            .filter(|n| {
                v.cpu != CpuModel::HostModel || req.as_ref().is_some_and(|r| r.satisfied_by(n))
            })
            .filter(|n| free[n.name.as_str()] >= v.memory_bytes as i64)
            .max_by(|a, b| {
                free[a.name.as_str()]
                    .cmp(&free[b.name.as_str()])
                    .then(b.name.cmp(&a.name))
            });
        if let Some(b) = best {
            *free.get_mut(b.name.as_str()).unwrap() -= v.memory_bytes as i64;
            found += 1;
        }
    }
    found
}

struct Row {
    name: &'static str,
    runs: usize,
    median: Duration,
    max: Duration,
    cpu_median: Duration,
    cpu_max: Duration,
    note: String,
}

/// CPU time of the calling thread: unlike wall time, it does not grow
/// when other processes compete for the (shared, 2-core) machine.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the
    // call, and CLOCK_THREAD_CPUTIME_ID is supported on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn measure(name: &'static str, runs: usize, mut f: impl FnMut() -> String) -> Row {
    let mut note = f(); // warm-up, also gives the outcome summary
    let (mut wall, mut cpu): (Vec<Duration>, Vec<Duration>) = (0..runs)
        .map(|_| {
            let (t, c) = (Instant::now(), thread_cpu());
            note = black_box(f());
            (t.elapsed(), thread_cpu() - c)
        })
        .unzip();
    wall.sort();
    cpu.sort();
    Row {
        name,
        runs,
        median: wall[runs / 2],
        max: *wall.last().unwrap(),
        cpu_median: cpu[runs / 2],
        cpu_max: *cpu.last().unwrap(),
        note,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn summary(d: &Decision) -> String {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for w in &d.waiting {
        *counts.entry(w.reason.reason()).or_default() += 1;
    }
    let mut c: Vec<_> = counts.into_iter().collect();
    c.sort();
    format!(
        "start {} refuse {} wait {:?}",
        d.start.len(),
        d.refuse.len(),
        c
    )
}

fn main() {
    let t = Instant::now();
    let input = build_input(50);
    let snap = Snapshot {
        nodes: &input.nodes,
        vmis: &input.vmis,
        migrations: &input.migrations,
    };
    println!(
        "input: {} nodes ({} drained), {} VMIs, {} migrations ({} pending, {} running, {} finished); generated in {:.0} ms",
        NODES,
        50,
        VMIS,
        input.migrations.len(),
        PENDING,
        RUNNING,
        HISTORY,
        ms(t.elapsed())
    );

    let runs = 21;
    let now = Timestamp::from_unix_secs(1_700_100_000);
    let rows = vec![
        measure("index build only", runs, || {
            let idx = ClusterIndex::build(snap);
            format!("active {}", idx.active_count())
        }),
        measure("decide, limits 5/2 (defaults)", runs, || {
            summary(&decide(snap, Limits::default(), now))
        }),
        measure("decide, limits 2000/2000 (all start)", runs, || {
            summary(&decide(snap, limits(2000, 2000), now))
        }),
        measure("decide, limits 200/1", runs, || {
            summary(&decide(snap, limits(200, 1), now))
        }),
        measure("drain plan (50 drained nodes)", runs, || {
            let mut idx = ClusterIndex::build(snap);
            let p = plan_evacuations(&mut idx, None);
            let evac = p
                .entries
                .iter()
                .filter(|e| e.action == DrainAction::Evacuate)
                .count();
            format!(
                "entries {} evacuate {} cancel {}",
                p.entries.len(),
                evac,
                p.cancel.len()
            )
        }),
        measure("LiveMigratable for all 50k VMIs", 5, || {
            let mut idx = ClusterIndex::build(snap);
            let n = input
                .vmis
                .iter()
                .filter(|v| idx.live_migratable(v).is_migratable())
                .count();
            format!("migratable {n}")
        }),
        measure("naive: every pending x every node", 5, || {
            format!("targets {}", naive_targets(snap))
        }),
    ];

    println!();
    println!(
        "{:<40} {:>5} {:>10} {:>9} {:>10} {:>9}  outcome",
        "scenario", "runs", "wall med", "wall max", "cpu med", "cpu max"
    );
    println!("{}", "-".repeat(130));
    for r in &rows {
        println!(
            "{:<40} {:>5} {:>10.2} {:>9.2} {:>10.2} {:>9.2}  {}",
            r.name,
            r.runs,
            ms(r.median),
            ms(r.max),
            ms(r.cpu_median),
            ms(r.cpu_max),
            r.note
        );
    }
    let full = &rows[2];
    let verdict = |d: Duration| {
        if d < Duration::from_millis(50) {
            "met"
        } else {
            "NOT met"
        }
    };
    println!();
    println!("(all times in ms; cpu = CPU time of the benchmark thread)");
    println!(
        "full decision (index + scheduler + target selection, all 1000 pending start): \
         wall median {:.2} ms, max {:.2} ms (target < 50 ms: median {}, max {}); cpu median {:.2} ms",
        ms(full.median),
        ms(full.max),
        verdict(full.median),
        verdict(full.max),
        ms(full.cpu_median),
    );
    println!(
        "naive / indexed target search: {:.1}x",
        rows[6].median.as_secs_f64() / full.median.as_secs_f64()
    );
}

fn limits(c: u32, n: u32) -> Limits {
    Limits {
        parallel_migrations_per_cluster: c,
        parallel_outbound_migrations_per_node: n,
    }
}
