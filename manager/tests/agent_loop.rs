//! Two agents running their full loop on the lab's local store
//! (`LocalBackend`), with real QEMU guests and `migration0` from our CNI
//! plugin. The test plays the controller's part of the protocol (see
//! `mignet::backend`): it writes migrationState, moves the VMIM to
//! Scheduled and keeps the node labels (`agent_support::keep_node_labels`),
//! then only watches what the agents write.
//!
//! Run as root: `cargo test -p mignet --test agent_loop`.

mod agent_support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_support::{agent_settings, guest_boot, ticks, Pki, Topology};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff;
use kube::ResourceExt;
use mignet::agent::AgentCore;
use mignet::api::{
    DomainSpec, HyperConverged, HyperConvergedSpec, LiveMigrationConfig, Memory,
    MigrationAbortStatus, MigrationMode, MigrationPhase, VirtualMachineInstance,
    VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationSpec,
    VirtualMachineInstanceMigrationState, VirtualMachineInstanceSpec, VirtualMachineInstanceStatus,
    VmiPhase,
};
use mignet::backend::protocol::{self, enter_phase};
use mignet::backend::{modify_status, Backend, LocalBackend};
use mignet::launcher::request::GUEST_ARGS_ANNOTATION;
use mignet::store::Store;

const NS: &str = "lab";

struct TempStore {
    dir: std::path::PathBuf,
    backend: LocalBackend,
}

impl TempStore {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mga-store-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let store = Arc::new(Store::open(&dir).expect("open store"));
        TempStore {
            dir,
            backend: LocalBackend::new(store),
        }
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Aborts the agent task on drop (also on panic).
struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn now() -> Time {
    let t = jiff::Timestamp::now();
    Time(jiff::Timestamp::from_second(t.as_second()).unwrap())
}

async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn vmi(b: &LocalBackend, name: &str) -> VirtualMachineInstance {
    b.get::<VirtualMachineInstance>(NS, name)
        .await
        .unwrap()
        .unwrap()
}

async fn vmim(b: &LocalBackend, name: &str) -> VirtualMachineInstanceMigration {
    b.get::<VirtualMachineInstanceMigration>(NS, name)
        .await
        .unwrap()
        .unwrap()
}

fn phase(m: &VirtualMachineInstanceMigration) -> Option<MigrationPhase> {
    m.status.as_ref().and_then(|s| s.phase)
}

async fn wait_phase(
    b: &LocalBackend,
    name: &str,
    want: MigrationPhase,
) -> VirtualMachineInstanceMigration {
    eventually(
        Duration::from_secs(180),
        &format!("{name} {want:?}"),
        || async {
            let m = vmim(b, name).await;
            let p = phase(&m);
            if p == Some(want) {
                return Some(m);
            }
            assert!(
                !matches!(p, Some(MigrationPhase::Succeeded | MigrationPhase::Failed)),
                "{name} ended {p:?} instead of {want:?}: {:?}",
                vmi(b, "vm1").await.status
            );
            None
        },
    )
    .await
}

/// The controller's step 2: record the migration on the VMI, then Scheduled.
async fn schedule(b: &LocalBackend, name: &str, source: &str, target: &str) {
    let mut m = VirtualMachineInstanceMigration::new(
        name,
        VirtualMachineInstanceMigrationSpec {
            vmi_name: "vm1".into(),
        },
    );
    m.metadata.namespace = Some(NS.into());
    let m = b.create(&m).await.unwrap();
    let uid = m.uid().unwrap();
    let (s, t) = (source.to_string(), target.to_string());
    modify_status(b, NS, "vm1", |v: &mut VirtualMachineInstance| {
        let st = v.status.get_or_insert_with(Default::default);
        st.migration_state = Some(VirtualMachineInstanceMigrationState {
            migration_uid: Some(uid.clone()),
            source_node: Some(s.clone()),
            target_node: Some(t.clone()),
            start_timestamp: Some(now()),
            mode: Some(MigrationMode::PreCopy),
            ..Default::default()
        });
        true
    })
    .await
    .unwrap();
    modify_status(b, NS, name, |m: &mut VirtualMachineInstanceMigration| {
        for p in [
            MigrationPhase::Pending,
            MigrationPhase::Scheduling,
            MigrationPhase::Scheduled,
        ] {
            enter_phase(m, p, now());
        }
        // The controller's copy, from which the VMIM's node labels come.
        m.status
            .get_or_insert_with(Default::default)
            .migration_state = Some(VirtualMachineInstanceMigrationState {
            migration_uid: Some(uid.clone()),
            source_node: Some(s.clone()),
            target_node: Some(t.clone()),
            ..Default::default()
        });
        true
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_migrate_a_vmi_through_the_protocol_and_abort_on_request() {
    let store = TempStore::new();
    let b = store.backend.clone();
    let _labels = Task(tokio::spawn(agent_support::keep_node_labels(b.clone())));
    let topo = Topology::new("mgal", 2, true);
    let (n1, n2) = (topo.nodes[0].clone(), topo.nodes[1].clone());
    let pki = Pki::new("cluster CA");
    let boot = guest_boot();
    let core1 = Arc::new(
        AgentCore::start(agent_settings(&topo, &n1, &pki, &boot, Some(2)))
            .await
            .unwrap(),
    );
    let core2 = Arc::new(
        AgentCore::start(agent_settings(&topo, &n2, &pki, &boot, Some(2)))
            .await
            .unwrap(),
    );
    let _a1 = Task(tokio::spawn(mignet::agent::run_with_core(
        b.clone(),
        core1.clone(),
        std::future::pending(),
    )));
    let _a2 = Task(tokio::spawn(mignet::agent::run_with_core(
        b.clone(),
        core2.clone(),
        std::future::pending(),
    )));

    // A VMI scheduled to node1: its agent starts the VM and marks it Running.
    let mut v = VirtualMachineInstance::new(
        "vm1",
        VirtualMachineInstanceSpec {
            domain: DomainSpec {
                memory: Some(Memory {
                    guest: Some("256Mi".into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    v.metadata.namespace = Some(NS.into());
    v.annotations_mut().insert(
        GUEST_ARGS_ANNOTATION.into(),
        "mignet.fill_mib=48 mignet.dirty_mib_s=0".into(),
    );
    let mut v = b.create(&v).await.unwrap();
    v.status = Some(VirtualMachineInstanceStatus {
        node_name: Some(n1.name.clone()),
        phase: Some(VmiPhase::Scheduled),
        ..Default::default()
    });
    b.replace_status(&v).await.unwrap();
    eventually(Duration::from_secs(60), "VMI Running", || async {
        (vmi(&b, "vm1").await.status.unwrap().phase == Some(VmiPhase::Running)).then_some(())
    })
    .await;
    let src = core1.vms.get("lab/vm1").expect("VM runs on node1");
    let serial = src.serial_log();
    let read_src =
        move || String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
    agent_support::wait_tick_after(&read_src, None, Duration::from_secs(90)).await;
    drop(src);

    // Follow the source console while it exists (it is removed once the VM
    // has left node1).
    let seen = Arc::new(std::sync::Mutex::new(String::new()));
    let copier = {
        let seen = seen.clone();
        let read_src = read_src.clone();
        Task(tokio::spawn(async move {
            loop {
                let s = read_src();
                if !s.is_empty() {
                    *seen.lock().unwrap() = s;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }))
    };

    // 1. node1 -> node2, all the way through the agents.
    schedule(&b, "mig1", &n1.name, &n2.name).await;
    let m = wait_phase(&b, "mig1", MigrationPhase::Succeeded).await;
    drop(copier);
    let phases: Vec<MigrationPhase> = m
        .status
        .as_ref()
        .unwrap()
        .phase_transition_timestamps
        .iter()
        .map(|p| p.phase)
        .collect();
    for p in [
        MigrationPhase::PreparingTarget,
        MigrationPhase::TargetReady,
        MigrationPhase::Running,
        MigrationPhase::Succeeded,
    ] {
        assert!(phases.contains(&p), "{phases:?}");
    }
    let progress: protocol::Progress = serde_json::from_str(
        m.annotations()
            .get(protocol::PROGRESS_ANNOTATION)
            .expect("progress annotation"),
    )
    .unwrap();
    assert!(progress.transferred_bytes > 48 << 20, "{progress:?}");
    let st = vmi(&b, "vm1").await.status.unwrap();
    assert_eq!(st.node_name.as_deref(), Some(n2.name.as_str()));
    let ms = st.migration_state.unwrap();
    assert_eq!(ms.completed, Some(true));
    assert!(ms.end_timestamp.is_some());
    let addr: std::net::SocketAddr = ms.target_node_address.unwrap().parse().unwrap();
    assert_eq!(Some(addr.ip()), n2.migration_ip);
    assert_eq!(ms.target_node_domain_detected, Some(true));

    // The VM runs on node2 now, continuing the guest's ticks; node1 stopped
    // its paused source.
    let dst = eventually(Duration::from_secs(10), "VM adopted on node2", || async {
        core2.vms.get("lab/vm1")
    })
    .await;
    let dst_serial = dst.serial_log();
    let read_dst = move || {
        String::from_utf8_lossy(&std::fs::read(&dst_serial).unwrap_or_default()).into_owned()
    };
    agent_support::wait_tick_after(&read_dst, None, Duration::from_secs(30)).await;
    let last_src = ticks(&seen.lock().unwrap()).last().copied().unwrap();
    let first_dst = ticks(&read_dst()).first().copied().unwrap();
    assert_eq!(
        first_dst,
        last_src + 1,
        "source ended at tick {last_src}, destination started at {first_dst}"
    );
    eventually(Duration::from_secs(10), "source VM stopped", || async {
        core1.vms.get("lab/vm1").is_none().then_some(())
    })
    .await;
    assert_eq!(dst.qmp.run_state().await.unwrap(), "running");

    // 2. Back to node1, slowly (bandwidthPerMigration 4Mi), aborted by the
    //    controller's abortRequested: the VM stays on node2.
    let mut h = HyperConverged::new(
        "kubevirt-hyperconverged",
        HyperConvergedSpec {
            live_migration_config: Some(LiveMigrationConfig {
                bandwidth_per_migration: Some("4Mi".into()),
                ..Default::default()
            }),
        },
    );
    h.metadata.namespace = Some("mignet-system".into());
    b.create(&h).await.unwrap();
    schedule(&b, "mig2", &n2.name, &n1.name).await;
    wait_phase(&b, "mig2", MigrationPhase::Running).await;
    eventually(Duration::from_secs(30), "progress on mig2", || async {
        let m = vmim(&b, "mig2").await;
        let p: protocol::Progress =
            serde_json::from_str(m.annotations().get(protocol::PROGRESS_ANNOTATION)?).ok()?;
        // The cap holds: a few MiB/s, far below the uncapped rate.
        (p.transferred_bytes > 4 << 20).then_some(p)
    })
    .await;
    modify_status(&b, NS, "vm1", |v: &mut VirtualMachineInstance| {
        let ms = v
            .status
            .as_mut()
            .and_then(|s| s.migration_state.as_mut())
            .unwrap();
        ms.abort_requested = Some(true);
        true
    })
    .await
    .unwrap();
    wait_phase(&b, "mig2", MigrationPhase::Failed).await;
    let st = vmi(&b, "vm1").await.status.unwrap();
    let ms = st.migration_state.unwrap();
    assert_eq!(ms.abort_status, Some(MigrationAbortStatus::Succeeded));
    assert_eq!(ms.failed, Some(true));
    assert_eq!(
        ms.failure_reason.as_deref(),
        Some(protocol::ABORTED_BY_USER)
    );
    assert_eq!(st.node_name.as_deref(), Some(n2.name.as_str()));
    assert_eq!(dst.qmp.run_state().await.unwrap(), "running");
    let t = ticks(&read_dst()).last().copied().unwrap();
    agent_support::wait_tick_after(&read_dst, Some(t), Duration::from_secs(20)).await;
    // The destination node1 prepared is gone, and it runs no VM.
    eventually(Duration::from_secs(10), "node1 holds no VM", || async {
        core1.vms.keys().is_empty().then_some(())
    })
    .await;

    // Deleting the VMI stops its VM.
    b.delete::<VirtualMachineInstance>(NS, "vm1").await.unwrap();
    let pid = dst.pid;
    drop(dst);
    eventually(
        Duration::from_secs(15),
        "VM stopped after VMI delete",
        || async { (!mignet_dataplane::qemu::process::process_alive(pid)).then_some(()) },
    )
    .await;
}

/// The source agent died between the two writes of a migration's end: the
/// VMI already says completed (nodeName = target) while the VMIM is still
/// Running. The next agent of the source node must finish the record
/// (Succeeded) instead of leaving the VMIM Running for good; the lab's
/// daemon-kill fault at 90 % of a transfer hit this window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_recorded_only_on_the_vmi_is_finished_by_the_next_agent() {
    let store = TempStore::new();
    let b = store.backend.clone();
    let _labels = Task(tokio::spawn(agent_support::keep_node_labels(b.clone())));
    let topo = Topology::new("mgah", 1, true);
    let n1 = topo.nodes[0].clone();
    let pki = Pki::new("cluster CA");
    let core1 = Arc::new(
        AgentCore::start(agent_settings(&topo, &n1, &pki, &guest_boot(), Some(2)))
            .await
            .unwrap(),
    );
    let mut v = VirtualMachineInstance::new(
        "vm1",
        VirtualMachineInstanceSpec {
            domain: DomainSpec {
                memory: Some(Memory {
                    guest: Some("128Mi".into()),
                }),
                ..Default::default()
            },
            ..Default::default()
        },
    );
    v.metadata.namespace = Some(NS.into());
    let mut v = b.create(&v).await.unwrap();
    v.status = Some(VirtualMachineInstanceStatus {
        node_name: Some("elsewhere".into()),
        phase: Some(VmiPhase::Running),
        ..Default::default()
    });
    b.replace_status(&v).await.unwrap();
    schedule(&b, "mig-half", &n1.name, "elsewhere").await;
    let uid = vmim(&b, "mig-half").await.uid().unwrap();
    // What the dead agent had written: the VMI's end, and the VMIM Running.
    modify_status(&b, NS, "vm1", |v: &mut VirtualMachineInstance| {
        let ms = v.status.as_mut().unwrap().migration_state.as_mut().unwrap();
        ms.completed = Some(true);
        ms.end_timestamp = Some(now());
        true
    })
    .await
    .unwrap();
    modify_status(
        &b,
        NS,
        "mig-half",
        |m: &mut VirtualMachineInstanceMigration| {
            for p in [
                MigrationPhase::PreparingTarget,
                MigrationPhase::TargetReady,
                MigrationPhase::Running,
            ] {
                enter_phase(m, p, now());
            }
            true
        },
    )
    .await
    .unwrap();
    // The new agent of the source node.
    let _a1 = Task(tokio::spawn(mignet::agent::run_with_core(
        b.clone(),
        core1.clone(),
        std::future::pending(),
    )));
    wait_phase(&b, "mig-half", MigrationPhase::Succeeded).await;
    let m = vmim(&b, "mig-half").await;
    let ms = m.status.unwrap().migration_state.unwrap();
    assert_eq!((ms.completed, ms.failed), (Some(true), None), "{uid}");
}
