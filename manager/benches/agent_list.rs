//! One agent observation at 5,000 VMIs: what the agent read each pass
//! before (every VMI and VMIM of the cluster) against what it reads now
//! (`mignet::agent::observe`: its node's objects by label selector), on the
//! real kube-apiserver (KubeBackend) and on the lab store (LocalBackend).
//!
//! 5,000 VMIs spread over 50 nodes (100 each), labelled as the controller
//! labels them, and 100 migrations in flight (each node the source of two
//! and the target of two). The observing agent is on one of the nodes and
//! runs its 100 VMs (so no VMI is read by name). Per observation: wall time
//! (median and p90 of 20), objects received, bytes of JSON received (kube:
//! the same list requests made once more, raw), CPU of this process (the
//! agent's side: request, decode) and of kube-apiserver + etcd, from
//! `/proc/<pid>/stat`.
//!
//! `tests/k8s/run.sh cargo bench -p mignet --bench agent_list` (or with the
//! bed's env file sourced). Without the bed's env only the lab store is
//! measured, and the table says so. Prints a table; asserts only that the
//! selection is the node's.

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Resource};
use mignet::agent::observe::observe;
use mignet::api::{
    Cpu, DomainSpec, Memory, MigrationPhase, PersistentVolumeClaimInfo,
    PersistentVolumeClaimVolumeSource, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstanceMigrationSpec, VirtualMachineInstanceMigrationState,
    VirtualMachineInstanceMigrationStatus, VirtualMachineInstanceSpec,
    VirtualMachineInstanceStatus, VmiPhase, Volume, VolumeStatus,
};
use mignet::backend::protocol::{set_labels, vmi_node_labels, vmim_node_labels};
use mignet::backend::{Backend, KubeBackend, LocalBackend};
use mignet::store::Store;

const VMIS: usize = 5_000;
const NODES: usize = 50;
const ROUNDS: usize = 20;
/// The observing agent's node.
const ME: usize = 7;

fn node(i: usize) -> String {
    format!("bench-node-{i:02}")
}

/// VMI `i` on node `i % NODES`, Running, with a shared disk; the first two
/// VMIs of each node migrate to the next node.
fn vmi(ns: &str, i: usize) -> VirtualMachineInstance {
    let mut v = VirtualMachineInstance::new(
        &format!("vm{i:04}"),
        VirtualMachineInstanceSpec {
            domain: DomainSpec {
                cpu: Some(Cpu {
                    model: Some("Westmere".into()),
                    ..Default::default()
                }),
                memory: Some(Memory {
                    guest: Some("1Gi".into()),
                }),
                ..Default::default()
            },
            volumes: vec![Volume {
                name: "root".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: format!("vm{i:04}-root"),
                    read_only: None,
                }),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    v.metadata.namespace = Some(ns.into());
    let on = i % NODES;
    v.status = Some(VirtualMachineInstanceStatus {
        node_name: Some(node(on)),
        phase: Some(VmiPhase::Running),
        migration_state: migrating(i).then(|| VirtualMachineInstanceMigrationState {
            migration_uid: Some(format!("uid-{i}")),
            source_node: Some(node(on)),
            target_node: Some(node((on + 1) % NODES)),
            ..Default::default()
        }),
        volume_status: vec![VolumeStatus {
            name: "root".into(),
            persistent_volume_claim_info: Some(PersistentVolumeClaimInfo {
                claim_name: Some(format!("vm{i:04}-root")),
                access_modes: vec!["ReadWriteMany".into()],
                ..Default::default()
            }),
        }],
        ..Default::default()
    });
    let wanted = vmi_node_labels(&v);
    set_labels(&mut v.metadata.labels, &wanted);
    v
}

fn migrating(i: usize) -> bool {
    i < 2 * NODES
}

fn vmim(ns: &str, i: usize) -> VirtualMachineInstanceMigration {
    let mut m = VirtualMachineInstanceMigration::new(
        &format!("mig{i:04}"),
        VirtualMachineInstanceMigrationSpec {
            vmi_name: format!("vm{i:04}"),
        },
    );
    m.metadata.namespace = Some(ns.into());
    let on = i % NODES;
    m.status = Some(VirtualMachineInstanceMigrationStatus {
        phase: Some(MigrationPhase::Running),
        migration_state: Some(VirtualMachineInstanceMigrationState {
            migration_uid: Some(format!("uid-{i}")),
            source_node: Some(node(on)),
            target_node: Some(node((on + 1) % NODES)),
            ..Default::default()
        }),
        ..Default::default()
    });
    let wanted = vmim_node_labels(&m);
    set_labels(&mut m.metadata.labels, &wanted);
    m
}

/// The VMs the observing agent runs, as the agent keys them.
fn local_keys(ns: &str) -> Vec<String> {
    (0..VMIS)
        .filter(|i| i % NODES == ME)
        .map(|i| format!("{ns}/vm{i:04}"))
        .collect()
}

/// utime + stime of a process, in ms (USER_HZ = 100 on Linux).
fn cpu_ms(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat; 12 and 13 after ')'.
    (ticks(11) + ticks(12)) * 10.0
}

struct Row {
    how: &'static str,
    median_ms: f64,
    p90_ms: f64,
    objects: usize,
    bytes: Option<usize>,
    self_cpu_ms: f64,
    server_cpu_ms: Option<f64>,
}

/// Run `observe_once` ROUNDS times (after 3 warm-ups); `servers` are pids
/// whose CPU counts as the server's.
async fn measure<F, Fut>(
    how: &'static str,
    servers: &[String],
    bytes: Option<usize>,
    mut observe_once: F,
) -> Row
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = usize>,
{
    for _ in 0..3 {
        observe_once().await;
    }
    let server_cpu = || servers.iter().map(|p| cpu_ms(p)).sum::<f64>();
    let (self0, srv0) = (cpu_ms("self"), server_cpu());
    let mut times = Vec::with_capacity(ROUNDS);
    let mut objects = 0;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        objects = observe_once().await;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (self1, srv1) = (cpu_ms("self"), server_cpu());
    times.sort_by(f64::total_cmp);
    Row {
        how,
        median_ms: times[ROUNDS / 2],
        p90_ms: times[(ROUNDS * 9) / 10],
        objects,
        bytes,
        self_cpu_ms: (self1 - self0) / ROUNDS as f64,
        server_cpu_ms: (!servers.is_empty()).then(|| (srv1 - srv0) / ROUNDS as f64),
    }
}

/// The two observations over `b`: everything (as before), and the node's.
async fn rows<B: Backend>(
    b: &B,
    ns: &str,
    servers: &[String],
    bytes: (Option<usize>, Option<usize>),
) -> Vec<Row> {
    let local = local_keys(ns);
    let me = node(ME);
    let (vmis, vmims) = observe(b, &me, &local).await.expect("observe");
    // The node's 100 VMIs, 2 arriving from the previous node; its 2
    // outgoing and 2 incoming migrations.
    assert_eq!((vmis.len(), vmims.len()), (102, 4), "the selection");
    let all = measure("list all (before)", servers, bytes.0, || async {
        let v: Vec<VirtualMachineInstance> = b.list(None).await.expect("list VMIs");
        let m: Vec<VirtualMachineInstanceMigration> = b.list(None).await.expect("list VMIMs");
        v.len() + m.len()
    })
    .await;
    let mine = measure("by label (now)", servers, bytes.1, || async {
        let (v, m) = observe(b, &me, &local).await.expect("observe");
        v.len() + m.len()
    })
    .await;
    vec![all, mine]
}

fn print(title: &str, rows: &[Row]) {
    println!("\n{title}");
    println!(
        "| observation | median ms | p90 ms | objects received | JSON bytes received | agent CPU ms | apiserver+etcd CPU ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let bytes = r.bytes.map_or("-".into(), |b| format!("{b}"));
        let srv = r.server_cpu_ms.map_or("-".into(), |c| format!("{c:.1}"));
        println!(
            "| {} | {:.1} | {:.1} | {} | {} | {:.1} | {} |",
            r.how, r.median_ms, r.p90_ms, r.objects, bytes, r.self_cpu_ms, srv
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        lab().await;
        if std::env::var_os("MIGNET_KUBECONFIG").is_some() {
            cluster().await;
        } else {
            println!(
                "\nkube-apiserver: not measured (MIGNET_KUBECONFIG unset; run under tests/k8s/run.sh)"
            );
        }
    });
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn lab() {
    // tmpfs when there is one: filling 5,000 objects fsyncs each write.
    let base = ["/dev/shm"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    let dir = TempDir(base.join(format!("mignet-agent-list-{}", std::process::id())));
    let store = Arc::new(Store::open(&dir.0).expect("store"));
    let ns = "bench";
    let t = Instant::now();
    for i in 0..VMIS {
        let v = vmi(ns, i);
        let mut created = store.create(&v).expect("create VMI");
        created.status = v.status;
        store.update_status(&created).expect("VMI status");
    }
    for i in (0..VMIS).filter(|&i| migrating(i)) {
        let m = vmim(ns, i);
        let mut created = store.create(&m).expect("create VMIM");
        created.status = m.status;
        store.update_status(&created).expect("VMIM status");
    }
    eprintln!("lab store filled in {:.1} s", t.elapsed().as_secs_f64());
    let b = LocalBackend::new(store);
    let rows = rows(&b, ns, &[], (None, None)).await;
    print(
        &format!(
            "lab store (LocalBackend, {}), {VMIS} VMIs on {NODES} nodes, {} migrations: one observation",
            dir.0.display(),
            2 * NODES
        ),
        &rows,
    );
}

async fn cluster() {
    use common::{client, ensure_crds, env, TestNamespace};
    ensure_crds();
    let e = env();
    let state = e.kubeconfig.parent().expect("state dir").to_owned();
    let pid = |f: &str| {
        std::fs::read_to_string(state.join(f))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    let servers: Vec<String> = [pid("kube-apiserver.pid"), pid("etcd.pid")]
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect();
    let ns = TestNamespace::new("agent-list");
    let client = client().await;
    let vmi_api: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns.name);
    let vmim_api: Api<VirtualMachineInstanceMigration> = Api::namespaced(client.clone(), &ns.name);
    let t = Instant::now();
    let status =
        |status: &serde_json::Value| Patch::Merge(serde_json::json!({ "status": status.clone() }));
    futures::stream::iter(0..VMIS)
        .map(|i| {
            let (api, v) = (vmi_api.clone(), vmi(&ns.name, i));
            async move {
                let s = serde_json::to_value(&v.status).expect("status");
                let mut bare = v.clone();
                bare.status = None;
                api.create(&PostParams::default(), &bare)
                    .await
                    .expect("create VMI");
                api.patch_status(
                    &v.metadata.name.clone().unwrap(),
                    &PatchParams::default(),
                    &status(&s),
                )
                .await
                .expect("VMI status");
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    for i in (0..VMIS).filter(|&i| migrating(i)) {
        let m = vmim(&ns.name, i);
        let s = serde_json::to_value(&m.status).expect("status");
        let mut bare = m.clone();
        bare.status = None;
        vmim_api
            .create(&PostParams::default(), &bare)
            .await
            .expect("create VMIM");
        vmim_api
            .patch_status(
                &m.metadata.name.clone().unwrap(),
                &PatchParams::default(),
                &status(&s),
            )
            .await
            .expect("VMIM status");
    }
    eprintln!("apiserver filled in {:.1} s", t.elapsed().as_secs_f64());

    // Bytes: the same list requests, raw (the selection has no by-name
    // reads here: every VMI the node runs is labelled).
    let me = node(ME);
    let raw = |path: String, selector: Option<String>| {
        let client = client.clone();
        async move {
            let mut lp = ListParams::default();
            if let Some(s) = selector {
                lp = lp.labels(&s);
            }
            let req = kube::core::Request::new(path).list(&lp).expect("request");
            client.request_text(req).await.expect("list").len()
        }
    };
    let vmi_path = VirtualMachineInstance::url_path(&(), None);
    let vmim_path = VirtualMachineInstanceMigration::url_path(&(), None);
    let before = raw(vmi_path.clone(), None).await + raw(vmim_path.clone(), None).await;
    let mut after = 0;
    for (path, key) in [
        (&vmi_path, mignet::backend::protocol::VMI_NODE_LABEL),
        (&vmi_path, mignet::backend::protocol::VMI_TARGET_NODE_LABEL),
        (
            &vmim_path,
            mignet::backend::protocol::VMIM_SOURCE_NODE_LABEL,
        ),
        (
            &vmim_path,
            mignet::backend::protocol::VMIM_TARGET_NODE_LABEL,
        ),
    ] {
        after += raw(path.clone(), Some(format!("{key}={me}"))).await;
    }

    let b = KubeBackend::new(client.clone(), Some(&ns.name));
    // Its watchers' initial lists (the change feed) are not an observation.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rows = rows(&b, &ns.name, &servers, (Some(before), Some(after))).await;
    print(
        &format!(
            "kube-apiserver (KubeBackend), {VMIS} VMIs on {NODES} nodes, {} migrations: one observation",
            2 * NODES
        ),
        &rows,
    );
    // The bed has no namespace controller: take the objects out ourselves.
    let _ = vmi_api
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    let _ = vmim_api
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
}
