//! Shared by the migration-control tests (real apiserver and local store):
//! object builders and a simulated node agent.
//!
//! The simulated agent is for these tests only: it plays the target and
//! source agents of the protocol in `mignet::backend` (no QEMU, no network)
//! with a configurable migration duration, so the controller can be driven
//! end to end through the objects. The real agent is `mignet::agent`.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus, Taint};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff;
use kube::ResourceExt;
use mignet::api::{
    Cpu, DomainSpec, EvictionStrategy, Memory, MigrationAbortStatus, MigrationPhase,
    PersistentVolumeClaimInfo, PersistentVolumeClaimVolumeSource, VirtualMachineInstance,
    VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationSpec,
    VirtualMachineInstanceSpec, VirtualMachineInstanceStatus, VmiPhase, Volume, VolumeStatus,
};
use mignet::backend::protocol::{self, enter_phase, Progress, ABORTED_BY_USER, DRAIN_TAINT_KEY};
use mignet::backend::{Backend, BackendError};

pub const TEST_LABEL: &str = "mignet.io/test";

/// The seed's NAD config (examples/nad.yaml).
pub const SEED_NAD_CONFIG: &str = r#"{"cniVersion":"0.3.1","name":"migration-bridge","type":"macvlan","master":"eth1","mode":"bridge","ipam":{"type":"whereabouts","range":"10.200.5.0/24"}}"#;

pub fn now() -> Time {
    Time(jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap())
}

// ------------------------------------------------------------ builders

/// A Node labelled for this test, with room for 64 GiB and an optional
/// host CPU model label.
pub fn node(name: &str, test: &str, host_model: Option<&str>) -> Node {
    let mut labels = BTreeMap::from([(TEST_LABEL.to_owned(), test.to_owned())]);
    if let Some(m) = host_model {
        labels.insert(
            format!("host-model-cpu.node.kubevirt.io/{m}"),
            "true".to_owned(),
        );
    }
    Node {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(NodeSpec::default()),
        status: Some(NodeStatus {
            allocatable: Some(BTreeMap::from([(
                "memory".to_owned(),
                Quantity("64Gi".to_owned()),
            )])),
            ..Default::default()
        }),
    }
}

/// A NetworkAttachmentDefinition `ns/name` with `config`.
pub fn nad(ns: &str, name: &str, config: &str) -> mignet::api::NetworkAttachmentDefinition {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"config": config}
    }))
    .expect("NAD shape")
}

/// The agent DaemonSet as deploy/ ships it, reduced to what the apiserver
/// validates, plus a foreign annotation nobody but its owner may touch.
pub fn agent_daemonset(ns: &str) -> DaemonSet {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "mignet-agent", "namespace": ns},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "mignet-agent"}},
            "template": {
                "metadata": {
                    "labels": {"app.kubernetes.io/name": "mignet-agent"},
                    "annotations": {"example.com/keep": "yes"}
                },
                "spec": {"containers": [{"name": "agent", "image": "mignet:dev"}]}
            }
        }
    }))
    .expect("DaemonSet shape")
}

/// The pod-template annotations of a DaemonSet.
pub fn template_annotations(ds: &DaemonSet) -> BTreeMap<String, String> {
    ds.spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default()
}

fn template_annotations_mut(ds: &mut DaemonSet) -> &mut BTreeMap<String, String> {
    ds.spec
        .get_or_insert_with(Default::default)
        .template
        .metadata
        .get_or_insert_with(Default::default)
        .annotations
        .get_or_insert_with(BTreeMap::new)
}

pub async fn create_node<B: Backend>(b: &B, n: &Node) {
    let created = b.create(n).await.expect("create Node");
    let mut with_status = created.clone();
    with_status.status = n.status.clone();
    let mut ready = b.replace_status(&with_status).await.expect("Node status");
    // The apiserver's TaintNodesByCondition admission gives a new Node the
    // `node.kubernetes.io/not-ready:NoSchedule` taint; with no kubelet and
    // no node lifecycle controller here, play their part and lift it.
    if let Some(t) = ready.spec.as_mut().and_then(|s| s.taints.as_mut()) {
        t.retain(|t| !t.key.starts_with("node.kubernetes.io/"));
        b.replace(&ready).await.expect("Node untaint");
    }
}

/// Mark a node for drain: cordon + the `kubevirt.io/drain` taint.
pub async fn drain_node<B: Backend>(b: &B, name: &str, on: bool) {
    mignet::backend::modify::<B, Node>(b, "", name, |n| {
        let spec = n.spec.get_or_insert_with(Default::default);
        spec.unschedulable = on.then_some(true);
        let mut taints = spec.taints.take().unwrap_or_default();
        taints.retain(|t| t.key != DRAIN_TAINT_KEY);
        if on {
            taints.push(Taint {
                key: DRAIN_TAINT_KEY.to_owned(),
                effect: "NoSchedule".to_owned(),
                value: Some("draining".to_owned()),
                time_added: None,
            });
        }
        spec.taints = (!taints.is_empty()).then_some(taints);
        true
    })
    .await
    .expect("drain node")
    .expect("node exists");
}

#[derive(Clone, Debug)]
pub struct VmiOpts {
    /// `None` = a named model ("Westmere"), so host-model rules do not
    /// apply; `Some("host-model")` for host-model.
    pub cpu_model: Option<&'static str>,
    pub eviction: Option<EvictionStrategy>,
    /// A ReadWriteOnce claim: not live-migratable.
    pub rwo_disk: bool,
}

impl Default for VmiOpts {
    fn default() -> Self {
        Self {
            cpu_model: Some("Westmere"),
            eviction: None,
            rwo_disk: false,
        }
    }
}

/// Create a VMI and make it Running on `node`, with a shared (RWX) disk.
pub async fn create_running_vmi<B: Backend>(
    b: &B,
    ns: &str,
    name: &str,
    node: &str,
    opts: VmiOpts,
) -> VirtualMachineInstance {
    let mut vmi = VirtualMachineInstance::new(
        name,
        VirtualMachineInstanceSpec {
            domain: DomainSpec {
                cpu: Some(Cpu {
                    model: opts.cpu_model.map(str::to_owned),
                    ..Default::default()
                }),
                memory: Some(Memory {
                    guest: Some("1Gi".into()),
                }),
                resources: None,
                ..Default::default()
            },
            eviction_strategy: opts.eviction,
            volumes: vec![Volume {
                name: "root".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: format!("{name}-root"),
                    read_only: None,
                }),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    vmi.metadata.namespace = Some(ns.to_owned());
    let created = b.create(&vmi).await.expect("create VMI");
    let mut running = created.clone();
    running.status = Some(VirtualMachineInstanceStatus {
        node_name: Some(node.to_owned()),
        phase: Some(VmiPhase::Running),
        volume_status: vec![VolumeStatus {
            name: "root".into(),
            persistent_volume_claim_info: Some(PersistentVolumeClaimInfo {
                claim_name: Some(format!("{name}-root")),
                access_modes: vec![if opts.rwo_disk {
                    "ReadWriteOnce".into()
                } else {
                    "ReadWriteMany".into()
                }],
                ..Default::default()
            }),
        }],
        ..Default::default()
    });
    b.replace_status(&running).await.expect("VMI status")
}

pub async fn create_vmim<B: Backend>(
    b: &B,
    ns: &str,
    name: &str,
    vmi: &str,
) -> VirtualMachineInstanceMigration {
    let mut m = VirtualMachineInstanceMigration::new(
        name,
        VirtualMachineInstanceMigrationSpec {
            vmi_name: vmi.to_owned(),
        },
    );
    m.metadata.namespace = Some(ns.to_owned());
    b.create(&m).await.expect("create VMIM")
}

pub fn phase_of(m: &VirtualMachineInstanceMigration) -> Option<MigrationPhase> {
    m.status.as_ref().and_then(|s| s.phase)
}

/// Poll `f` until it returns Some, or panic with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// ------------------------------------------------------ simulated agent

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub namespace: String,
    /// The nodes this simulated agent serves (all of a test's nodes).
    pub nodes: Vec<String>,
    /// How long a migration stays Running before it completes.
    pub duration: Duration,
}

/// The address the simulated target agent publishes for `node`: its
/// migration-network IP (10.200.5.x) and the first listener port.
pub fn sim_address(nodes: &[String], node: &str) -> String {
    let i = nodes.iter().position(|n| n == node).unwrap_or(0);
    format!("10.200.5.{}:49152", 10 + i)
}

/// Run the simulated agents until the task is aborted.
pub async fn run_sim_agent<B: Backend>(b: B, cfg: SimConfig) {
    let mut changes = b.changes();
    let mut running_since: HashMap<String, Instant> = HashMap::new();
    loop {
        if let Err(e) = sim_pass(&b, &cfg, &mut running_since).await {
            // Lost races are normal (the controller writes the same
            // objects); the next pass re-reads.
            if !e.is_retryable() && !e.is_not_found() {
                panic!("simulated agent: {e}");
            }
            if !e.is_conflict() {
                eprintln!("simulated agent: {e}: {:?}", std::error::Error::source(&e));
            }
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(25)) => {}
        }
    }
}

async fn sim_pass<B: Backend>(
    b: &B,
    cfg: &SimConfig,
    running_since: &mut HashMap<String, Instant>,
) -> Result<(), BackendError> {
    let ns = cfg.namespace.as_str();
    let vmims: Vec<VirtualMachineInstanceMigration> = b.list(Some(ns)).await?;
    for m in vmims {
        let Some(phase) = phase_of(&m) else { continue };
        if matches!(
            phase,
            MigrationPhase::Pending | MigrationPhase::Succeeded | MigrationPhase::Failed
        ) {
            continue;
        }
        let uid = m.uid().unwrap_or_default();
        let Some(vmi) = b
            .get::<VirtualMachineInstance>(ns, &m.spec.vmi_name)
            .await?
        else {
            continue;
        };
        let vst = vmi.status.clone().unwrap_or_default();
        let Some(state) = vst
            .migration_state
            .clone()
            .filter(|s| s.migration_uid.as_deref() == Some(uid.as_str()))
        else {
            continue;
        };
        let target = state.target_node.clone().unwrap_or_default();
        let source = vst.node_name.clone().unwrap_or_default();

        // Source agent: abort on request, whatever the phase; the VM stays
        // on the source.
        if state.abort_requested == Some(true) && state.abort_status.is_none() {
            if !cfg.nodes.contains(&source) {
                continue;
            }
            let mut v = vmi.clone();
            let s = v
                .status
                .as_mut()
                .and_then(|s| s.migration_state.as_mut())
                .unwrap();
            s.abort_status = Some(MigrationAbortStatus::Succeeded);
            s.failed = Some(true);
            s.failure_reason = Some(ABORTED_BY_USER.to_owned());
            s.end_timestamp = Some(now());
            // Merge patches, as the real agent writes: fields of other
            // writers survive (the status-merge test relies on it).
            b.patch_status(&vmi, &v).await?;
            let mut m = m.clone();
            enter_phase(&mut m, MigrationPhase::Failed, now());
            b.replace_status(&m).await?;
            running_since.remove(&uid);
            continue;
        }

        match phase {
            // The abort is recorded on the VMI but the phase write lost a
            // race (the controller writes the VMIM's labels too): finish it.
            _ if state.abort_status.is_some() && cfg.nodes.contains(&source) => {
                let mut m = m.clone();
                enter_phase(&mut m, MigrationPhase::Failed, now());
                b.replace_status(&m).await?;
                running_since.remove(&uid);
            }
            _ if state.abort_status.is_some() => {}
            // The address is published but the TargetReady write lost a
            // race: write it again, as the real target agent's retry does.
            MigrationPhase::PreparingTarget
                if cfg.nodes.contains(&target) && state.target_node_address.is_some() =>
            {
                let mut m = m.clone();
                enter_phase(&mut m, MigrationPhase::TargetReady, now());
                b.replace_status(&m).await?;
            }
            // Target agent: prepare, publish the address.
            MigrationPhase::Scheduled | MigrationPhase::PreparingTarget
                if cfg.nodes.contains(&target) && state.target_node_address.is_none() =>
            {
                let mut m = m.clone();
                if phase == MigrationPhase::Scheduled {
                    enter_phase(&mut m, MigrationPhase::PreparingTarget, now());
                    m = b.replace_status(&m).await?;
                }
                let mut v = vmi.clone();
                let s = v
                    .status
                    .as_mut()
                    .and_then(|s| s.migration_state.as_mut())
                    .unwrap();
                s.target_node_address = Some(sim_address(&cfg.nodes, &target));
                s.target_node_domain_detected = Some(true);
                s.target_direct_migration_node_ports =
                    BTreeMap::from([("49152".to_owned(), 0), ("49153".to_owned(), 49152)]);
                b.patch_status(&vmi, &v).await?;
                enter_phase(&mut m, MigrationPhase::TargetReady, now());
                b.replace_status(&m).await?;
            }
            // Source agent: start sending.
            MigrationPhase::TargetReady
                if cfg.nodes.contains(&source) && state.target_node_address.is_some() =>
            {
                let mut m = m.clone();
                enter_phase(&mut m, MigrationPhase::Running, now());
                let m = b.replace_status(&m).await?;
                running_since.insert(uid.clone(), Instant::now());
                write_progress(b, &m, 0).await?;
            }
            // Completed on the VMI but the phase write was lost: finish it.
            MigrationPhase::Running if state.completed == Some(true) => {
                let mut m = m.clone();
                enter_phase(&mut m, MigrationPhase::Succeeded, now());
                b.replace_status(&m).await?;
                running_since.remove(&uid);
            }
            // Source agent: complete after the configured duration.
            MigrationPhase::Running if cfg.nodes.contains(&source) => {
                let since = *running_since
                    .entry(uid.clone())
                    .or_insert_with(Instant::now);
                if since.elapsed() < cfg.duration {
                    continue;
                }
                write_progress(b, &m, 1 << 30).await?;
                let mut v = vmi.clone();
                let st = v.status.as_mut().unwrap();
                st.node_name = Some(target.clone());
                let s = st.migration_state.as_mut().unwrap();
                s.completed = Some(true);
                s.end_timestamp = Some(now());
                b.patch_status(&vmi, &v).await?;
                let mut m = b
                    .get::<VirtualMachineInstanceMigration>(ns, &m.name_any())
                    .await?
                    .unwrap_or(m);
                enter_phase(&mut m, MigrationPhase::Succeeded, now());
                b.replace_status(&m).await?;
                running_since.remove(&uid);
            }
            _ => {}
        }
    }
    Ok(())
}

async fn write_progress<B: Backend>(
    b: &B,
    m: &VirtualMachineInstanceMigration,
    transferred: u64,
) -> Result<(), BackendError> {
    let total = 1u64 << 30;
    let p = Progress {
        transferred_bytes: transferred,
        remaining_bytes: total - transferred,
        total_bytes: total,
        bytes_per_second: 1 << 28,
        updated: jiff::Timestamp::now().to_string(),
    };
    let v = serde_json::to_string(&p).unwrap();
    mignet::backend::modify::<B, VirtualMachineInstanceMigration>(
        b,
        &m.namespace().unwrap_or_default(),
        &m.name_any(),
        move |m| {
            m.annotations_mut()
                .insert(protocol::PROGRESS_ANNOTATION.to_owned(), v.clone());
            true
        },
    )
    .await?;
    Ok(())
}

// ------------------------------------------------------------ harness

/// Aborts a spawned task on drop (controller, simulated agent, observer),
/// also when the test panics.
pub struct Task(pub tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn settings(ns: &str, test: &str) -> mignet::control::Settings {
    mignet::control::Settings {
        namespace: Some(ns.to_owned()),
        hco_namespace: None,
        node_selector: Some((TEST_LABEL.to_owned(), test.to_owned())),
        resync: Duration::from_millis(500),
        default_eviction_strategy: None,
        launchers: None,
        node_maintenance: true,
        metrics: None,
    }
}

pub fn spawn_controller<B: Backend>(b: &B, ns: &str, test: &str) -> Task {
    // RUST_LOG=mignet=debug shows the controller's passes.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let (b, s) = (b.clone(), settings(ns, test));
    Task(tokio::spawn(async move {
        mignet::control::run(b, s, std::future::pending())
            .await
            .expect("controller");
    }))
}

pub fn spawn_sim<B: Backend>(b: &B, ns: &str, nodes: &[String], duration: Duration) -> Task {
    let cfg = SimConfig {
        namespace: ns.to_owned(),
        nodes: nodes.to_vec(),
        duration,
    };
    Task(tokio::spawn(run_sim_agent(b.clone(), cfg)))
}

pub async fn create_hco<B: Backend>(b: &B, ns: &str, cluster: i64, per_node: i64) {
    use mignet::api::{HyperConverged, HyperConvergedSpec, LiveMigrationConfig};
    let mut h = HyperConverged::new(
        "kubevirt-hyperconverged",
        HyperConvergedSpec {
            live_migration_config: Some(LiveMigrationConfig {
                parallel_migrations_per_cluster: Some(cluster),
                parallel_outbound_migrations_per_node: Some(per_node),
                ..Default::default()
            }),
        },
    );
    h.metadata.namespace = Some(ns.to_owned());
    b.create(&h).await.expect("create HCO");
}

/// Highest numbers of active migrations (Scheduling..Running) seen in the
/// cluster and from one source node, observed by listing VMIMs through the
/// backend (the API, in cluster mode) every few milliseconds. A limit
/// breach would last at least one simulated migration, far longer than the
/// polling period.
#[derive(Debug, Default, Clone)]
pub struct Maxima {
    pub cluster: usize,
    pub per_node: usize,
    pub samples: usize,
}

pub fn spawn_observer<B: Backend>(
    b: &B,
    ns: &str,
) -> (Task, std::sync::Arc<std::sync::Mutex<Maxima>>) {
    let out = std::sync::Arc::new(std::sync::Mutex::new(Maxima::default()));
    let (b, ns, o) = (b.clone(), ns.to_owned(), out.clone());
    let t = tokio::spawn(async move {
        loop {
            if let Ok(ms) = b.list::<VirtualMachineInstanceMigration>(Some(&ns)).await {
                let active: Vec<_> = ms
                    .iter()
                    .filter(|m| {
                        matches!(
                            phase_of(m),
                            Some(
                                MigrationPhase::Scheduling
                                    | MigrationPhase::Scheduled
                                    | MigrationPhase::PreparingTarget
                                    | MigrationPhase::TargetReady
                                    | MigrationPhase::Running
                            )
                        )
                    })
                    .collect();
                let mut per: HashMap<String, usize> = HashMap::new();
                for m in &active {
                    let src = m
                        .status
                        .as_ref()
                        .and_then(|s| s.migration_state.as_ref())
                        .and_then(|s| s.source_node.clone())
                        .unwrap_or_default();
                    *per.entry(src).or_default() += 1;
                }
                let mut g = o.lock().unwrap();
                g.cluster = g.cluster.max(active.len());
                g.per_node = g.per_node.max(per.values().copied().max().unwrap_or(0));
                g.samples += 1;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (Task(t), out)
}

pub const LONG: Duration = Duration::from_secs(60);

async fn get_vmim<B: Backend>(
    b: &B,
    ns: &str,
    name: &str,
) -> Option<VirtualMachineInstanceMigration> {
    b.get::<VirtualMachineInstanceMigration>(ns, name)
        .await
        .expect("get VMIM")
}

pub async fn get_vmi<B: Backend>(b: &B, ns: &str, name: &str) -> VirtualMachineInstance {
    b.get::<VirtualMachineInstance>(ns, name)
        .await
        .expect("get VMI")
        .expect("VMI exists")
}

/// Wait until the VMIM reaches `phase`; returns it.
pub async fn wait_phase<B: Backend>(
    b: &B,
    ns: &str,
    name: &str,
    phase: MigrationPhase,
) -> VirtualMachineInstanceMigration {
    eventually(LONG, &format!("VMIM {name} {phase:?}"), || async {
        get_vmim(b, ns, name)
            .await
            .filter(|m| phase_of(m) == Some(phase))
    })
    .await
}

pub fn condition<'c>(
    conds: &'c [mignet::api::VmiCondition],
    type_: &str,
) -> Option<&'c mignet::api::VmiCondition> {
    conds.iter().find(|c| c.type_ == type_)
}

// ---------------------------------------------------------- scenarios
//
// Each scenario gets a backend, its own namespace and a unique test id
// (used for node names and the node label); the caller cleans up.

pub fn node_names(test: &str, n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("{test}-n{i}")).collect()
}

/// 12 VMIMs over 4 nodes under limits 5/2: never more than 5 active in
/// the cluster or 2 from one node (observed through the API), the slots
/// are used, and every migration succeeds with the full status.
pub async fn scenario_limits<B: Backend>(b: &B, ns: &str, test: &str) -> Maxima {
    let nodes = node_names(test, 4);
    for n in &nodes {
        create_node(b, &node(n, test, None)).await;
    }
    create_hco(b, ns, 5, 2).await;
    for i in 0..12 {
        let src = &nodes[i % 4];
        create_running_vmi(b, ns, &format!("vm{i}"), src, VmiOpts::default()).await;
    }
    let (_obs, maxima) = spawn_observer(b, ns);
    let _ctl = spawn_controller(b, ns, test);
    let _sim = spawn_sim(b, ns, &nodes, Duration::from_millis(400));
    for i in 0..12 {
        create_vmim(b, ns, &format!("mig{i}"), &format!("vm{i}")).await;
    }
    for i in 0..12 {
        let m = wait_phase(b, ns, &format!("mig{i}"), MigrationPhase::Succeeded).await;
        let st = m.status.clone().unwrap();
        let phases: Vec<_> = st
            .phase_transition_timestamps
            .iter()
            .map(|p| p.phase)
            .collect();
        assert_eq!(
            phases,
            vec![
                MigrationPhase::Pending,
                MigrationPhase::Scheduling,
                MigrationPhase::Scheduled,
                MigrationPhase::PreparingTarget,
                MigrationPhase::TargetReady,
                MigrationPhase::Running,
                MigrationPhase::Succeeded
            ],
            "mig{i} phases"
        );
        let ts: Vec<_> = st
            .phase_transition_timestamps
            .iter()
            .map(|p| p.phase_transition_timestamp.0)
            .collect();
        assert!(
            ts.windows(2).all(|w| w[0] <= w[1]),
            "mig{i} timestamps in order"
        );
        let vmi = get_vmi(b, ns, &format!("vm{i}")).await;
        let vst = vmi.status.unwrap();
        let ms = vst.migration_state.unwrap();
        let src = &nodes[i % 4];
        assert_eq!(ms.migration_uid, m.metadata.uid, "vm{i} migrationUid");
        assert_eq!(ms.source_node.as_deref(), Some(src.as_str()));
        let target = ms.target_node.clone().unwrap();
        assert_ne!(&target, src, "vm{i} target differs from source");
        assert!(nodes.contains(&target));
        assert_eq!(
            vst.node_name.as_deref(),
            Some(target.as_str()),
            "vm{i} moved"
        );
        assert_eq!(ms.completed, Some(true));
        assert!(ms.start_timestamp.is_some() && ms.end_timestamp.is_some());
        assert_eq!(
            ms.target_node_address.as_deref(),
            Some(sim_address(&nodes, &target).as_str())
        );
        assert_eq!(ms.target_node_domain_detected, Some(true));
        assert_eq!(ms.mode, Some(mignet::api::MigrationMode::PreCopy));
        assert_eq!(
            vst.migration_method,
            Some(mignet::api::MigrationMethod::LiveMigration)
        );
        let progress: Progress = serde_json::from_str(
            m.annotations()
                .get(protocol::PROGRESS_ANNOTATION)
                .expect("progress annotation"),
        )
        .unwrap();
        assert_eq!(progress.remaining_bytes, 0);
    }
    let m = maxima.lock().unwrap().clone();
    assert!(m.samples > 20, "observer sampled {} times", m.samples);
    assert!(m.cluster <= 5, "cluster limit exceeded: {m:?}");
    assert!(m.per_node <= 2, "per-node limit exceeded: {m:?}");
    // The limits are reached, not just respected (the test would pass
    // vacuously with one migration at a time).
    assert_eq!(m.cluster, 5, "{m:?}");
    assert_eq!(m.per_node, 2, "{m:?}");
    m
}

/// Deleting a running VMIM aborts it: abortStatus Succeeded, the VMI
/// stays on its source, the VMIM goes once the abort is recorded.
pub async fn scenario_cancel_running<B: Backend>(b: &B, ns: &str, test: &str) {
    let nodes = node_names(test, 2);
    for n in &nodes {
        create_node(b, &node(n, test, None)).await;
    }
    create_running_vmi(b, ns, "vm", &nodes[0], VmiOpts::default()).await;
    let _ctl = spawn_controller(b, ns, test);
    let _sim = spawn_sim(b, ns, &nodes, LONG * 10);
    create_vmim(b, ns, "mig", "vm").await;
    let m = wait_phase(b, ns, "mig", MigrationPhase::Running).await;
    assert!(
        m.finalizers().iter().any(|f| f == protocol::FINALIZER),
        "finalizer holds the VMIM"
    );
    b.delete::<VirtualMachineInstanceMigration>(ns, "mig")
        .await
        .expect("delete VMIM");
    eventually(LONG, "cancelled VMIM gone", || async {
        get_vmim(b, ns, "mig").await.is_none().then_some(())
    })
    .await;
    let vmi = get_vmi(b, ns, "vm").await;
    let st = vmi.status.unwrap();
    let ms = st.migration_state.unwrap();
    assert_eq!(ms.migration_uid, m.metadata.uid);
    assert_eq!(ms.abort_requested, Some(true));
    assert_eq!(ms.abort_status, Some(MigrationAbortStatus::Succeeded));
    assert_eq!(ms.failed, Some(true));
    assert_eq!(ms.completed, None);
    assert_eq!(
        st.node_name.as_deref(),
        Some(nodes[0].as_str()),
        "VM stays on the source"
    );
}

/// Deleting a VMIM that is still Pending (no target: a single node) just
/// removes it; nothing is written to the VMI.
pub async fn scenario_cancel_pending<B: Backend>(b: &B, ns: &str, test: &str) {
    let nodes = node_names(test, 1);
    create_node(b, &node(&nodes[0], test, None)).await;
    create_running_vmi(b, ns, "vm", &nodes[0], VmiOpts::default()).await;
    let _ctl = spawn_controller(b, ns, test);
    let _sim = spawn_sim(b, ns, &nodes, LONG);
    create_vmim(b, ns, "mig", "vm").await;
    let m = eventually(LONG, "Pending with a wait reason", || async {
        get_vmim(b, ns, "mig").await.filter(|m| {
            phase_of(m) == Some(MigrationPhase::Pending)
                && m.status
                    .as_ref()
                    .and_then(|s| condition(&s.conditions, protocol::PENDING_CONDITION))
                    .is_some()
        })
    })
    .await;
    let c = condition(
        &m.status.as_ref().unwrap().conditions,
        protocol::PENDING_CONDITION,
    )
    .unwrap()
    .clone();
    assert_eq!(c.reason.as_deref(), Some("NoTarget"), "{c:?}");
    assert!(m.finalizers().iter().any(|f| f == protocol::FINALIZER));
    b.delete::<VirtualMachineInstanceMigration>(ns, "mig")
        .await
        .expect("delete VMIM");
    eventually(LONG, "pending VMIM gone", || async {
        get_vmim(b, ns, "mig").await.is_none().then_some(())
    })
    .await;
    let vmi = get_vmi(b, ns, "vm").await;
    assert!(vmi.status.unwrap().migration_state.is_none());
}

/// Refusals at admission: a VMI that is not running, and a second VMIM
/// for a VMI that is already migrating.
pub async fn scenario_refusals<B: Backend>(b: &B, ns: &str, test: &str) {
    let nodes = node_names(test, 2);
    for n in &nodes {
        create_node(b, &node(n, test, None)).await;
    }
    create_running_vmi(b, ns, "vm", &nodes[0], VmiOpts::default()).await;
    let mut stopped = VirtualMachineInstance::new("stopped", Default::default());
    stopped.metadata.namespace = Some(ns.to_owned());
    b.create(&stopped).await.expect("create VMI");
    let _ctl = spawn_controller(b, ns, test);
    let _sim = spawn_sim(b, ns, &nodes, LONG * 10);
    create_vmim(b, ns, "mig-stopped", "stopped").await;
    create_vmim(b, ns, "mig-first", "vm").await;
    wait_phase(b, ns, "mig-first", MigrationPhase::Running).await;
    create_vmim(b, ns, "mig-second", "vm").await;
    for (name, reason) in [
        ("mig-stopped", "VMINotRunning"),
        ("mig-second", "MigrationInFlight"),
    ] {
        let m = wait_phase(b, ns, name, MigrationPhase::Failed).await;
        let c = condition(
            &m.status.as_ref().unwrap().conditions,
            protocol::FAILED_CONDITION,
        )
        .cloned()
        .unwrap_or_else(|| panic!("{name}: no Failed condition"));
        assert_eq!(c.reason.as_deref(), Some(reason), "{name}: {c:?}");
    }
    // The first one is untouched by the refused duplicate.
    let first = get_vmim(b, ns, "mig-first").await.unwrap();
    assert_eq!(phase_of(&first), Some(MigrationPhase::Running));
}

/// The controller's `/metrics` families over its passes: KubeVirt's phase
/// gauges, the per-VMIM succeeded/failed series and the VMI's start/end
/// times, following the objects (a deleted VMIM's series goes).
pub async fn scenario_metrics<B: Backend>(b: &B, ns: &str, test: &str) {
    let nodes = node_names(test, 2);
    for n in &nodes {
        create_node(b, &node(n, test, None)).await;
    }
    create_running_vmi(b, ns, "vm", &nodes[0], VmiOpts::default()).await;
    let mut stopped = VirtualMachineInstance::new("stopped", Default::default());
    stopped.metadata.namespace = Some(ns.to_owned());
    b.create(&stopped).await.expect("create VMI");
    let metrics = std::sync::Arc::new(mignet::metrics::Metrics::default());
    let mut s = settings(ns, test);
    s.metrics = Some(metrics.clone());
    let (bc, m2) = (b.clone(), metrics.clone());
    let _ctl = Task(tokio::spawn(async move {
        mignet::control::run(bc, s, std::future::pending())
            .await
            .expect("controller");
    }));
    let _sim = spawn_sim(b, ns, &nodes, Duration::from_secs(3));
    let scrape = || m2.render();
    create_vmim(b, ns, "mig-stopped", "stopped").await;
    wait_phase(b, ns, "mig-stopped", MigrationPhase::Failed).await;
    create_vmim(b, ns, "mig-ok", "vm").await;
    wait_phase(b, ns, "mig-ok", MigrationPhase::Running).await;
    let failed = format!(
        "kubevirt_vmi_migration_failed{{vmi=\"stopped\",vmim=\"mig-stopped\",namespace=\"{ns}\"}} 1\n"
    );
    let succeeded = format!(
        "kubevirt_vmi_migration_succeeded{{vmi=\"vm\",vmim=\"mig-ok\",namespace=\"{ns}\"}} 1\n"
    );
    let text = eventually(LONG, "running phase gauge", || async {
        let t = scrape();
        t.contains("kubevirt_vmi_migrations_in_running_phase 1\n")
            .then_some(t)
    })
    .await;
    assert!(text.contains(&failed), "{text}");
    assert!(
        text.contains("kubevirt_vmi_migrations_in_pending_phase 0\n"),
        "{text}"
    );
    assert!(!text.contains(&succeeded), "{text}");
    wait_phase(b, ns, "mig-ok", MigrationPhase::Succeeded).await;
    let text = eventually(LONG, "succeeded series", || async {
        let t = scrape();
        t.contains(&succeeded).then_some(t)
    })
    .await;
    assert!(
        text.contains("kubevirt_vmi_migrations_in_running_phase 0\n"),
        "{text}"
    );
    let times = format!(
        "{{node=\"{}\",namespace=\"{ns}\",name=\"vm\",migration_name=\"mig-ok\"",
        nodes[1]
    );
    assert!(
        text.contains(&format!(
            "kubevirt_vmi_migration_start_time_seconds{times}}} "
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "kubevirt_vmi_migration_end_time_seconds{times},status=\"succeeded\"}} "
        )),
        "{text}"
    );
    b.delete::<VirtualMachineInstanceMigration>(ns, "mig-ok")
        .await
        .expect("delete VMIM");
    eventually(LONG, "deleted VMIM's series gone", || async {
        (!scrape().contains(&succeeded)).then_some(())
    })
    .await;
}

/// A drained node: its LiveMigrate VMIs get evacuation VMIMs (throttled:
/// outbound limit 1, so one waits), a RWO-disk LiveMigrate VMI is
/// reported blocking, a `None` VMI is reported as stopped; uncordon
/// cancels the Pending evacuation and the started one finishes.
pub async fn scenario_drain<B: Backend>(b: &B, ns: &str, test: &str) {
    let nodes = node_names(test, 3);
    for n in &nodes {
        create_node(b, &node(n, test, None)).await;
    }
    create_hco(b, ns, 5, 1).await;
    let live = VmiOpts {
        eviction: Some(EvictionStrategy::LiveMigrate),
        ..Default::default()
    };
    create_running_vmi(b, ns, "a", &nodes[0], live.clone()).await;
    create_running_vmi(b, ns, "b", &nodes[0], live.clone()).await;
    create_running_vmi(
        b,
        ns,
        "rwo",
        &nodes[0],
        VmiOpts {
            rwo_disk: true,
            ..live.clone()
        },
    )
    .await;
    create_running_vmi(
        b,
        ns,
        "plain",
        &nodes[0],
        VmiOpts {
            eviction: Some(EvictionStrategy::None),
            ..Default::default()
        },
    )
    .await;
    create_running_vmi(b, ns, "elsewhere", &nodes[1], live.clone()).await;
    let _ctl = spawn_controller(b, ns, test);
    let _sim = spawn_sim(b, ns, &nodes, Duration::from_secs(3));
    drain_node(b, &nodes[0], true).await;

    // Two evacuations, one running (limit 1 per node), one waiting.
    let (running, pending) = eventually(LONG, "one evacuation Running, one Pending", || async {
        let ms = b
            .list::<VirtualMachineInstanceMigration>(Some(ns))
            .await
            .unwrap();
        if ms.len() != 2 {
            return None;
        }
        let r = ms
            .iter()
            .find(|m| phase_of(m) == Some(MigrationPhase::Running))?;
        let p = ms
            .iter()
            .find(|m| phase_of(m) == Some(MigrationPhase::Pending))?;
        Some((r.clone(), p.clone()))
    })
    .await;
    for m in [&running, &pending] {
        assert_eq!(
            m.annotations().get(protocol::EVACUATION_ANNOTATION),
            Some(&nodes[0]),
            "evacuation marked"
        );
    }
    let mut vmis: Vec<_> = [&running, &pending]
        .iter()
        .map(|m| m.spec.vmi_name.clone())
        .collect();
    vmis.sort();
    assert_eq!(vmis, vec!["a", "b"]);
    let report: protocol::DrainReport = eventually(LONG, "drain report", || async {
        let n = b.get::<Node>("", &nodes[0]).await.unwrap().unwrap();
        n.annotations()
            .get(protocol::DRAIN_REPORT_ANNOTATION)
            .map(|s| serde_json::from_str(s).unwrap())
    })
    .await;
    let mut evac = report.evacuating.clone();
    evac.sort();
    assert_eq!(evac, vec!["a", "b"], "{report:?}");
    let rwo = report
        .blocking
        .iter()
        .find(|e| e.name == "rwo")
        .expect("rwo reported");
    assert_eq!(rwo.action, "Blocked");
    assert!(rwo.reason.contains("DisksNotLiveMigratable"), "{rwo:?}");
    let plain = report
        .blocking
        .iter()
        .find(|e| e.name == "plain")
        .expect("plain reported");
    assert_eq!(plain.action, "Stop");
    assert!(!report.blocking.iter().any(|e| e.name == "elsewhere"));

    // Uncordon: the Pending evacuation is cancelled, the running one ends.
    drain_node(b, &nodes[0], false).await;
    let pname = pending.name_any();
    eventually(LONG, "pending evacuation cancelled", || async {
        get_vmim(b, ns, &pname).await.is_none().then_some(())
    })
    .await;
    let done = wait_phase(b, ns, &running.name_any(), MigrationPhase::Succeeded).await;
    let moved = get_vmi(b, ns, &done.spec.vmi_name).await;
    assert_ne!(
        moved.status.unwrap().node_name.as_deref(),
        Some(nodes[0].as_str())
    );
    let stayed = get_vmi(b, ns, &pending.spec.vmi_name).await;
    assert_eq!(
        stayed.status.unwrap().node_name.as_deref(),
        Some(nodes[0].as_str())
    );
    eventually(LONG, "drain report removed", || async {
        let n = b.get::<Node>("", &nodes[0]).await.unwrap().unwrap();
        (!n.annotations()
            .contains_key(protocol::DRAIN_REPORT_ANNOTATION))
        .then_some(())
    })
    .await;
}

/// A host-model VMI whose model no other node advertises: LiveMigratable
/// False with the reason, its VMIM refused with it; once another node
/// advertises the model the condition turns True.
pub async fn scenario_host_model<B: Backend>(b: &B, ns: &str, test: &str) {
    let nodes = node_names(test, 2);
    create_node(b, &node(&nodes[0], test, Some("Skylake-Client-IBRS"))).await;
    create_node(b, &node(&nodes[1], test, Some("Haswell-noTSX"))).await;
    create_running_vmi(
        b,
        ns,
        "hm",
        &nodes[0],
        VmiOpts {
            cpu_model: Some("host-model"),
            ..Default::default()
        },
    )
    .await;
    create_running_vmi(b, ns, "named", &nodes[0], VmiOpts::default()).await;
    let _ctl = spawn_controller(b, ns, test);
    let c = eventually(LONG, "LiveMigratable on hm", || async {
        let v = get_vmi(b, ns, "hm").await;
        condition(&v.status?.conditions, protocol::LIVE_MIGRATABLE).cloned()
    })
    .await;
    assert_eq!(c.status, "False", "{c:?}");
    assert_eq!(
        c.reason.as_deref(),
        Some("NoSuitableNodesForHostModelMigration"),
        "{c:?}"
    );
    assert!(
        c.message
            .as_deref()
            .unwrap_or("")
            .contains("Skylake-Client-IBRS"),
        "{c:?}"
    );
    let named = eventually(LONG, "LiveMigratable on named", || async {
        let v = get_vmi(b, ns, "named").await;
        condition(&v.status?.conditions, protocol::LIVE_MIGRATABLE).cloned()
    })
    .await;
    assert_eq!(
        named.status, "True",
        "a named model is not host-bound: {named:?}"
    );

    create_vmim(b, ns, "mig", "hm").await;
    let m = wait_phase(b, ns, "mig", MigrationPhase::Failed).await;
    let f = condition(
        &m.status.as_ref().unwrap().conditions,
        protocol::FAILED_CONDITION,
    )
    .cloned()
    .unwrap();
    assert_eq!(
        f.reason.as_deref(),
        Some("NoSuitableNodesForHostModelMigration")
    );

    mignet::backend::modify::<B, Node>(b, "", &nodes[1], |n| {
        n.labels_mut().insert(
            "host-model-cpu.node.kubevirt.io/Skylake-Client-IBRS".into(),
            "true".into(),
        );
        true
    })
    .await
    .unwrap();
    eventually(LONG, "LiveMigratable True after labelling", || async {
        let v = get_vmi(b, ns, "hm").await;
        condition(&v.status?.conditions, protocol::LIVE_MIGRATABLE)
            .filter(|c| c.status == "True")
            .map(|_| ())
    })
    .await;
}

/// Lab-style drain (`mignet lab drain`): the node is cordoned and its
/// LiveMigrate VMIs get `status.evacuationNodeName`, without the taint. A
/// plain cordon moves nothing; the evacuation mark does.
pub async fn scenario_evacuation_node_name<B: Backend>(b: &B, ns: &str, test: &str) {
    let nodes = node_names(test, 2);
    for n in &nodes {
        create_node(b, &node(n, test, None)).await;
    }
    let live = VmiOpts {
        eviction: Some(EvictionStrategy::LiveMigrate),
        ..Default::default()
    };
    create_running_vmi(b, ns, "vm", &nodes[0], live).await;
    let _ctl = spawn_controller(b, ns, test);
    let _sim = spawn_sim(b, ns, &nodes, Duration::from_millis(200));
    mignet::backend::modify::<B, Node>(b, "", &nodes[0], |n| {
        n.spec.get_or_insert_with(Default::default).unschedulable = Some(true);
        true
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ms = b
        .list::<VirtualMachineInstanceMigration>(Some(ns))
        .await
        .unwrap();
    assert!(ms.is_empty(), "a cordon alone evacuates nothing: {ms:?}");
    mignet::backend::modify_status::<B, VirtualMachineInstance>(b, ns, "vm", |v| {
        v.status
            .get_or_insert_with(Default::default)
            .evacuation_node_name = Some(nodes[0].clone());
        true
    })
    .await
    .unwrap();
    let m = eventually(LONG, "evacuation VMIM", || async {
        let ms = b
            .list::<VirtualMachineInstanceMigration>(Some(ns))
            .await
            .unwrap();
        ms.into_iter().next()
    })
    .await;
    assert_eq!(
        m.annotations().get(protocol::EVACUATION_ANNOTATION),
        Some(&nodes[0])
    );
    wait_phase(b, ns, &m.name_any(), MigrationPhase::Succeeded).await;
    let vmi = get_vmi(b, ns, "vm").await;
    assert_eq!(
        vmi.status.unwrap().node_name.as_deref(),
        Some(nodes[1].as_str())
    );
}

/// The Backend contract both implementations must keep: conditional
/// replace, status apart from spec, finalizers holding a delete, error
/// kinds, and the change signal.
pub async fn scenario_backend_semantics<B: Backend>(b: &B, ns: &str, test: &str) {
    let mut changes = b.changes();
    let nodes = node_names(test, 1);
    create_node(b, &node(&nodes[0], test, None)).await;
    let v = create_running_vmi(b, ns, "vm", &nodes[0], VmiOpts::default()).await;
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .expect("change signal after writes");

    // A stale resourceVersion is a Conflict, for spec and status writes.
    // (A no-op update keeps the resourceVersion on the API server, so
    // change something.)
    let mut labelled = v.clone();
    labelled.labels_mut().insert("changed".into(), "yes".into());
    let fresh = b.replace(&labelled).await.expect("replace with current RV");
    assert!(b.replace(&v).await.unwrap_err().is_conflict());
    assert!(b.replace_status(&v).await.unwrap_err().is_conflict());
    // Status is not written through replace.
    let mut spec_write = fresh.clone();
    spec_write.status.as_mut().unwrap().node_name = Some("elsewhere".into());
    let after = b.replace(&spec_write).await.unwrap();
    assert_eq!(
        after.status.unwrap().node_name.as_deref(),
        Some(nodes[0].as_str())
    );

    let m = create_vmim(b, ns, "mig", "vm").await;
    assert!(matches!(
        b.create(&m).await.unwrap_err(),
        BackendError::AlreadyExists { .. }
    ));
    mignet::backend::add_finalizer::<B, VirtualMachineInstanceMigration>(
        b,
        ns,
        "mig",
        protocol::FINALIZER,
    )
    .await
    .unwrap()
    .unwrap();
    b.delete::<VirtualMachineInstanceMigration>(ns, "mig")
        .await
        .unwrap();
    let held = get_vmim(b, ns, "mig").await.expect("finalizer holds it");
    assert!(held.metadata.deletion_timestamp.is_some());
    let gone = mignet::backend::remove_finalizer::<B, VirtualMachineInstanceMigration>(
        b,
        ns,
        "mig",
        protocol::FINALIZER,
    )
    .await
    .unwrap();
    if let Some(o) = gone {
        // The API server may answer the last update with the object it is
        // about to delete; it must be gone right after.
        assert!(o.finalizers().is_empty());
    }
    eventually(Duration::from_secs(10), "VMIM gone", || async {
        get_vmim(b, ns, "mig").await.is_none().then_some(())
    })
    .await;
    assert!(b
        .delete::<VirtualMachineInstanceMigration>(ns, "mig")
        .await
        .unwrap_err()
        .is_not_found());
    assert!(b
        .get::<VirtualMachineInstance>(ns, "nothing")
        .await
        .unwrap()
        .is_none());
    // Cluster-scoped kinds ignore the namespace argument.
    assert!(b.get::<Node>(ns, &nodes[0]).await.unwrap().is_some());

    // The network rollout's kinds. A NAD (a dotted name is a valid one)
    // reads back as written.
    use mignet::api::NetworkAttachmentDefinition as Nad;
    b.create(&nad(ns, "mig.net", SEED_NAD_CONFIG))
        .await
        .expect("create NAD");
    let got = b.get::<Nad>(ns, "mig.net").await.unwrap().expect("NAD");
    assert_eq!(got.spec.config.as_deref(), Some(SEED_NAD_CONFIG));
    assert!(b.get::<Nad>(ns, "nothing").await.unwrap().is_none());
    assert_eq!(b.list::<Nad>(Some(ns)).await.unwrap().len(), 1);
    // The agent DaemonSet's pod-template annotations: a conditional patch
    // sets and removes ours and leaves the foreign one alone.
    let ds = b
        .create(&agent_daemonset(ns))
        .await
        .expect("create DaemonSet");
    let mut set = ds.clone();
    template_annotations_mut(&mut set).insert("mignet.io/x".into(), "1".into());
    let written = b.patch_object(&ds, &set).await.expect("patch DaemonSet");
    let a = template_annotations(&written);
    assert_eq!(
        (a.get("mignet.io/x"), a.get("example.com/keep")),
        (Some(&"1".to_owned()), Some(&"yes".to_owned()))
    );
    assert!(
        b.patch_object(&ds, &set).await.unwrap_err().is_conflict(),
        "a patch from a stale read is a conflict"
    );
    let mut unset = written.clone();
    template_annotations_mut(&mut unset).remove("mignet.io/x");
    let written = b.patch_object(&written, &unset).await.expect("unset");
    let a = template_annotations(&written);
    assert!(!a.contains_key("mignet.io/x"), "{a:?}");
    assert_eq!(a.get("example.com/keep").map(String::as_str), Some("yes"));
    assert_eq!(b.list::<DaemonSet>(Some(ns)).await.unwrap().len(), 1);
    b.delete::<Nad>(ns, "mig.net").await.unwrap();
    eventually(Duration::from_secs(10), "NAD gone", || async {
        b.get::<Nad>(ns, "mig.net")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    b.delete::<DaemonSet>(ns, "mignet-agent").await.unwrap();
}

// ------------------------------------------------- VirtualMachines

async fn get_vm<B: Backend>(b: &B, ns: &str, name: &str) -> Option<mignet::api::VirtualMachine> {
    b.get::<mignet::api::VirtualMachine>(ns, name)
        .await
        .expect("get VM")
}

/// The VM's (printableStatus, created, ready).
async fn vm_status<B: Backend>(
    b: &B,
    ns: &str,
    name: &str,
) -> Option<(String, Option<bool>, Option<bool>)> {
    let st = get_vm(b, ns, name).await?.status?;
    Some((st.printable_status?, st.created, st.ready))
}

/// The controller's VM -> VMI step through the backend: Always creates an
/// owned VMI from the template; the VM's status follows it (Starting,
/// Running + ready, Migrating); Halted deletes it (Stopped); `running:
/// true` starts it again; deleting the VM deletes its VMI; a VMI controlled
/// by another object is never touched.
pub async fn scenario_vm_lifecycle<B: Backend>(b: &B, ns: &str, test: &str) {
    use mignet::api::{
        RunStrategy, VirtualMachine, VirtualMachineInstanceTemplateSpec, VirtualMachineSpec,
    };
    let nodes = node_names(test, 1);
    create_node(b, &node(&nodes[0], test, None)).await;
    let _ctl = spawn_controller(b, ns, test);
    let mut vm = VirtualMachine::new(
        "vm1",
        VirtualMachineSpec {
            running: None,
            run_strategy: Some(RunStrategy::Always),
            template: VirtualMachineInstanceTemplateSpec {
                metadata: Some(serde_json::json!({"labels": {"app": "vm1"}})),
                spec: VirtualMachineInstanceSpec {
                    domain: DomainSpec {
                        memory: Some(Memory {
                            guest: Some("1Gi".into()),
                        }),
                        ..Default::default()
                    },
                    eviction_strategy: Some(EvictionStrategy::LiveMigrate),
                    volumes: Vec::new(),
                    ..Default::default()
                },
            },
        },
    );
    vm.metadata.namespace = Some(ns.to_owned());
    let vm = b.create(&vm).await.expect("create VM");
    let t = Duration::from_secs(15);

    let vmi = eventually(t, "VMI created for the VM", || async {
        b.get::<VirtualMachineInstance>(ns, "vm1").await.unwrap()
    })
    .await;
    let owner = &vmi.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("VirtualMachine", "vm1", Some(true))
    );
    assert_eq!(Some(&owner.uid), vm.metadata.uid.as_ref());
    assert_eq!(vmi.labels()["app"], "vm1");
    assert_eq!(vmi.spec, vm.spec.template.spec);
    eventually(t, "VM Starting, created", || async {
        (vm_status(b, ns, "vm1").await? == ("Starting".into(), Some(true), None)).then_some(())
    })
    .await;

    // Play scheduler + agent: Running on the node.
    let running = |phase: VmiPhase, migrating: bool| {
        let node = nodes[0].clone();
        move |v: &mut VirtualMachineInstance| {
            let st = v.status.get_or_insert_with(Default::default);
            st.phase = Some(phase);
            st.node_name = Some(node.clone());
            st.migration_state =
                migrating.then(|| mignet::api::VirtualMachineInstanceMigrationState {
                    start_timestamp: Some(now()),
                    ..Default::default()
                });
            true
        }
    };
    mignet::backend::modify_status(b, ns, "vm1", running(VmiPhase::Running, false))
        .await
        .unwrap();
    eventually(t, "VM Running, ready", || async {
        (vm_status(b, ns, "vm1").await? == ("Running".into(), Some(true), Some(true))).then_some(())
    })
    .await;
    let ready = get_vm(b, ns, "vm1")
        .await
        .unwrap()
        .status
        .unwrap()
        .conditions;
    assert!(
        ready
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "{ready:?}"
    );
    mignet::backend::modify_status(b, ns, "vm1", running(VmiPhase::Running, true))
        .await
        .unwrap();
    eventually(t, "VM Migrating", || async {
        (vm_status(b, ns, "vm1").await?.0 == "Migrating").then_some(())
    })
    .await;

    // Halted: the VMI goes; the VM is Stopped.
    mignet::backend::modify(b, ns, "vm1", |v: &mut VirtualMachine| {
        v.spec.run_strategy = Some(RunStrategy::Halted);
        true
    })
    .await
    .unwrap();
    eventually(t, "VMI deleted, VM Stopped", || async {
        let gone = b
            .get::<VirtualMachineInstance>(ns, "vm1")
            .await
            .unwrap()
            .is_none();
        (gone && vm_status(b, ns, "vm1").await? == ("Stopped".into(), None, None)).then_some(())
    })
    .await;

    // `running: true` (no runStrategy) starts it again.
    mignet::backend::modify(b, ns, "vm1", |v: &mut VirtualMachine| {
        v.spec.run_strategy = None;
        v.spec.running = Some(true);
        true
    })
    .await
    .unwrap();
    eventually(t, "VMI created again", || async {
        b.get::<VirtualMachineInstance>(ns, "vm1").await.unwrap()
    })
    .await;

    // Deleting the VM deletes its VMI.
    b.delete::<VirtualMachine>(ns, "vm1").await.unwrap();
    eventually(t, "VMI of the deleted VM gone", || async {
        b.get::<VirtualMachineInstance>(ns, "vm1")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;

    // A VMI controlled by something else: never touched, the VM says so.
    let mut foreign = create_running_vmi(b, ns, "vm2", &nodes[0], VmiOpts::default()).await;
    foreign.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "example.com/v1".into(),
            kind: "Other".into(),
            name: "x".into(),
            uid: "0e0e0e0e-0000-0000-0000-000000000000".into(),
            controller: Some(true),
            block_owner_deletion: None,
        },
    ]);
    b.replace(&foreign).await.expect("set a foreign owner");
    let mut vm2 = vm.clone();
    vm2.metadata = ObjectMeta {
        name: Some("vm2".into()),
        namespace: Some(ns.to_owned()),
        ..Default::default()
    };
    vm2.status = None;
    b.create(&vm2).await.expect("create vm2");
    eventually(t, "vm2 Unknown", || async {
        (vm_status(b, ns, "vm2").await?.0 == "Unknown").then_some(())
    })
    .await;
    b.delete::<VirtualMachine>(ns, "vm2").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        b.get::<VirtualMachineInstance>(ns, "vm2")
            .await
            .unwrap()
            .is_some(),
        "a VMI the VM never owned stays"
    );
}

// ------------------------------------------------- label selection

/// `Backend::list_selected`: only objects whose labels match every
/// requirement of a selector (any of several), in one namespace or all;
/// an invalid selector is refused.
pub async fn scenario_list_selected<B: Backend>(b: &B, ns: &str, test: &str) {
    use mignet::backend::Selector;
    let nodes = node_names(test, 2);
    for (name, node, extra) in [
        ("sel-a1", &nodes[0], Some("x")),
        ("sel-a2", &nodes[0], None),
        ("sel-b1", &nodes[1], Some("x")),
    ] {
        let v = create_running_vmi(b, ns, name, node, VmiOpts::default()).await;
        let mut l = v.clone();
        l.labels_mut().insert(TEST_LABEL.into(), node.clone());
        if let Some(x) = extra {
            l.labels_mut().insert("extra".into(), x.into());
        }
        b.replace(&l).await.expect("label VMI");
    }
    let names = |v: Vec<VirtualMachineInstance>| {
        let mut n: Vec<String> = v
            .into_iter()
            .filter(|v| v.namespace().as_deref() == Some(ns))
            .map(|v| v.name_any())
            .collect();
        n.sort();
        n
    };
    let on_a = Selector::eq(TEST_LABEL, &nodes[0]);
    for namespace in [Some(ns), None] {
        let got: Vec<VirtualMachineInstance> = b
            .list_selected(namespace, std::slice::from_ref(&on_a))
            .await
            .unwrap();
        assert_eq!(names(got), ["sel-a1", "sel-a2"], "namespace {namespace:?}");
    }
    let both = on_a.clone().and("extra", "x");
    let got: Vec<VirtualMachineInstance> = b.list_selected(Some(ns), &[both]).await.unwrap();
    assert_eq!(names(got), ["sel-a1"]);
    let none = Selector::eq(TEST_LABEL, "no-such-node");
    let got: Vec<VirtualMachineInstance> = b.list_selected(Some(ns), &[none]).await.unwrap();
    assert!(got.is_empty());
    // Several selectors: their union, each object once, by name.
    let on_b = Selector::eq(TEST_LABEL, &nodes[1]);
    let extra = Selector::eq("extra", "x");
    let got: Vec<VirtualMachineInstance> = b
        .list_selected(Some(ns), &[on_b, on_a.clone(), extra])
        .await
        .unwrap();
    assert_eq!(names(got), ["sel-a1", "sel-a2", "sel-b1"]);
    // Other kinds select too (none of these VMIMs is labelled).
    create_vmim(b, ns, "sel-mig", "sel-a1").await;
    let got: Vec<VirtualMachineInstanceMigration> =
        b.list_selected(Some(ns), &[on_a]).await.unwrap();
    assert!(got.is_empty());
    let bad = Selector::eq(TEST_LABEL, "a,extra=x");
    let err = b
        .list_selected::<VirtualMachineInstance>(Some(ns), &[bad])
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Permanent { .. }), "{err:?}");
}

/// The agent's observation (`mignet::agent::observe`): node A sees its
/// own VMIs and the VMI it is the migration target of, never node B's
/// other VMIs; both see the migration between them. A VMI from before the
/// labels is seen once the controller labels it, and before that only by
/// name, when its VM runs on the node.
pub async fn scenario_agent_observation<B: Backend>(b: &B, ns: &str, test: &str) {
    use mignet::agent::observe::observe;
    let nodes = node_names(test, 2);
    let (a, bn) = (&nodes[0], &nodes[1]);
    for n in &nodes {
        create_node(b, &node(n, test, None)).await;
    }
    create_hco(b, ns, 5, 2).await;
    for (name, on) in [("a1", a), ("old", a), ("b1", bn), ("b2", bn)] {
        create_running_vmi(b, ns, name, on, VmiOpts::default()).await;
    }
    type Seen = (Vec<String>, Vec<String>);
    let seen = |node: String, local: Vec<String>| async move {
        let (vmis, vmims) = observe(b, &node, &local).await.expect("observe");
        let names = |it: Vec<(Option<String>, String)>| {
            it.into_iter()
                .filter(|(n, _)| n.as_deref() == Some(ns))
                .map(|(_, name)| name)
                .collect::<Vec<String>>()
        };
        let s: Seen = (
            names(vmis.iter().map(|v| (v.namespace(), v.name_any())).collect()),
            names(
                vmims
                    .iter()
                    .map(|m| (m.namespace(), m.name_any()))
                    .collect(),
            ),
        );
        s
    };
    // No controller yet, so no labels: only what runs here, read by name.
    assert_eq!(seen(a.clone(), vec![]).await, (vec![], vec![]));
    assert_eq!(
        seen(a.clone(), vec![format!("{ns}/old")]).await,
        (vec!["old".to_owned()], vec![])
    );

    let _ctl = spawn_controller(b, ns, test);
    // One pass labels them one by one: wait for all four.
    eventually(LONG, "the VMIs labelled", || async {
        let (on_a, on_b) = (
            seen(a.clone(), vec![]).await,
            seen(bn.clone(), vec![]).await,
        );
        (on_a.0 == ["a1", "old"] && on_b.0 == ["b1", "b2"]).then_some(())
    })
    .await;

    // b1 migrates to A (the only other node); nobody plays the agents, so
    // it stays Scheduled.
    create_vmim(b, ns, "mig", "b1").await;
    wait_phase(b, ns, "mig", MigrationPhase::Scheduled).await;
    let want_a: Seen = (
        vec!["a1".into(), "b1".into(), "old".into()],
        vec!["mig".into()],
    );
    eventually(LONG, "A sees the migration it is the target of", || async {
        (seen(a.clone(), vec![]).await == want_a).then_some(())
    })
    .await;
    assert_eq!(
        seen(bn.clone(), vec![]).await,
        (
            vec!["b1".to_owned(), "b2".to_owned()],
            vec!["mig".to_owned()]
        )
    );
}

// ------------------------------------------------- start / stop / restart

/// The VM's state change requests, as (action, uid) for assertions.
async fn vm_requests<B: Backend>(b: &B, ns: &str, name: &str) -> Vec<String> {
    get_vm(b, ns, name)
        .await
        .and_then(|v| v.status)
        .map(|s| {
            s.state_change_requests
                .iter()
                .map(|r| format!("{:?}", r.action))
                .collect()
        })
        .unwrap_or_default()
}

/// `mignet start|stop|restart` through the backend with the controller
/// running: the seed's 10.7.1 restart (the template gains
/// `evictionStrategy: LiveMigrate`, the restarted VMI carries it under a
/// new uid), stop and start under Always (runStrategy) and Manual
/// (requests; Manual stays stopped), and the refusals.
pub async fn scenario_vm_power<B: Backend>(b: &B, ns: &str, test: &str) {
    use mignet::api::{
        RunStrategy, VirtualMachine, VirtualMachineInstanceTemplateSpec, VirtualMachineSpec,
    };
    use mignet::cli::power::{power, Power};
    let nodes = node_names(test, 1);
    create_node(b, &node(&nodes[0], test, None)).await;
    let _ctl = spawn_controller(b, ns, test);
    let mut vm = VirtualMachine::new(
        "pvm",
        VirtualMachineSpec {
            running: None,
            run_strategy: Some(RunStrategy::Always),
            template: VirtualMachineInstanceTemplateSpec {
                metadata: None,
                spec: VirtualMachineInstanceSpec {
                    domain: DomainSpec {
                        memory: Some(Memory {
                            guest: Some("1Gi".into()),
                        }),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            },
        },
    );
    vm.metadata.namespace = Some(ns.to_owned());
    b.create(&vm).await.expect("create VM");
    let t = Duration::from_secs(15);
    let vmi_now = || async { b.get::<VirtualMachineInstance>(ns, "pvm").await.unwrap() };
    let set_running = || async {
        let node = nodes[0].clone();
        mignet::backend::modify_status(b, ns, "pvm", move |v: &mut VirtualMachineInstance| {
            let st = v.status.get_or_insert_with(Default::default);
            st.phase = Some(VmiPhase::Running);
            st.node_name = Some(node.clone());
            true
        })
        .await
        .unwrap()
        .expect("VMI to mark Running")
    };
    eventually(t, "first VMI", vmi_now).await;
    let first = set_running().await;
    assert_eq!(first.spec.eviction_strategy, None);

    // 10.7.1: edit the VM, restart it for the update to take effect.
    mignet::backend::modify(b, ns, "pvm", |v: &mut VirtualMachine| {
        v.spec.template.spec.eviction_strategy = Some(EvictionStrategy::LiveMigrate);
        true
    })
    .await
    .unwrap();
    assert_eq!(
        power(b, ns, "pvm", Power::Restart).await.unwrap(),
        "VM pvm was scheduled to restart\n"
    );
    let second = eventually(t, "a new VMI from the edited template", || async {
        vmi_now()
            .await
            .filter(|v| v.metadata.uid != first.metadata.uid)
    })
    .await;
    assert_eq!(
        second.spec.eviction_strategy,
        Some(EvictionStrategy::LiveMigrate)
    );
    set_running().await;
    eventually(t, "the restart's requests done", || async {
        vm_requests(b, ns, "pvm").await.is_empty().then_some(())
    })
    .await;

    // Always: stop = runStrategy Halted; start = runStrategy Always.
    let e = power(b, ns, "pvm", Power::Start)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("Error starting VirtualMachine pvm in namespace {ns}: VM is already running")
    );
    assert_eq!(
        power(b, ns, "pvm", Power::Stop).await.unwrap(),
        "VM pvm was scheduled to stop\n"
    );
    let strategy = || async { get_vm(b, ns, "pvm").await.unwrap().spec.run_strategy };
    assert_eq!(strategy().await, Some(RunStrategy::Halted));
    eventually(t, "VMI gone after stop", || async {
        vmi_now().await.is_none().then_some(())
    })
    .await;
    let e = power(b, ns, "pvm", Power::Restart)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with("RunStrategy Halted does not support manual restart requests"),
        "{e}"
    );
    let e = power(b, ns, "pvm", Power::Stop)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.ends_with(": VM is not running"), "{e}");
    power(b, ns, "pvm", Power::Start).await.unwrap();
    assert_eq!(strategy().await, Some(RunStrategy::Always));
    eventually(t, "VMI back after start", vmi_now).await;
    set_running().await;

    // Manual: stop and start are requests the controller carries out, and
    // a stopped Manual VM stays stopped.
    mignet::backend::modify(b, ns, "pvm", |v: &mut VirtualMachine| {
        v.spec.run_strategy = Some(RunStrategy::Manual);
        true
    })
    .await
    .unwrap();
    assert_eq!(
        power(b, ns, "pvm", Power::Stop).await.unwrap(),
        "VM pvm was scheduled to stop\n"
    );
    eventually(t, "Manual VM stopped, request done", || async {
        let gone = vmi_now().await.is_none();
        (gone && vm_requests(b, ns, "pvm").await.is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        vmi_now().await.is_none(),
        "a stopped Manual VM stays stopped"
    );
    let e = power(b, ns, "pvm", Power::Restart)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("Error restarting VirtualMachine pvm in namespace {ns}: VM is not running")
    );
    assert_eq!(
        power(b, ns, "pvm", Power::Start).await.unwrap(),
        "VM pvm was scheduled to start\n"
    );
    eventually(t, "Manual VM started", vmi_now).await;
    set_running().await;
    eventually(t, "start request done", || async {
        vm_requests(b, ns, "pvm").await.is_empty().then_some(())
    })
    .await;
    assert_eq!(strategy().await, Some(RunStrategy::Manual));

    let e = power(b, ns, "nope", Power::Restart)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!("VirtualMachine nope not found in namespace {ns}")
    );
}

// ---------------------------------------------------- NodeMaintenance

/// A NodeMaintenance of `node`, labelled for this test so only this test's
/// controller honours it (NodeMaintenances are cluster-scoped).
pub fn node_maintenance(name: &str, node: &str, test: &str) -> mignet::api::NodeMaintenance {
    let mut nm = mignet::api::NodeMaintenance::new(
        name,
        mignet::api::NodeMaintenanceSpec {
            node_name: node.to_owned(),
            reason: Some("kernel update".to_owned()),
        },
    );
    nm.metadata.labels = Some(BTreeMap::from([(TEST_LABEL.to_owned(), test.to_owned())]));
    nm
}

async fn get_nm<B: Backend>(b: &B, name: &str) -> Option<mignet::api::NodeMaintenance> {
    b.get::<mignet::api::NodeMaintenance>("", name)
        .await
        .expect("get NodeMaintenance")
}

/// Wait until the NodeMaintenance's status satisfies `ok`; returns it.
pub async fn wait_nm_status<B: Backend>(
    b: &B,
    name: &str,
    what: &str,
    ok: impl Fn(&mignet::api::NodeMaintenanceStatus) -> bool,
) -> mignet::api::NodeMaintenanceStatus {
    eventually(LONG, what, || async {
        get_nm(b, name).await?.status.filter(|s| ok(s))
    })
    .await
}

fn maintenance_taints(n: &Node) -> Vec<String> {
    let mut keys: Vec<String> = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .map(|ts| {
            ts.iter()
                .filter(|t| {
                    [
                        mignet::control::maintenance::MEDIK8S_DRAIN_TAINT_KEY,
                        mignet::control::maintenance::UNSCHEDULABLE_TAINT_KEY,
                    ]
                    .contains(&t.key.as_str())
                        && t.effect == "NoSchedule"
                })
                .map(|t| t.key.clone())
                .collect()
        })
        .unwrap_or_default();
    keys.sort();
    keys
}

fn cordoned(n: &Node) -> bool {
    n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
}

async fn get_node<B: Backend>(b: &B, name: &str) -> Node {
    b.get::<Node>("", name)
        .await
        .expect("get Node")
        .expect("Node exists")
}

/// Issue 19 item 2: a NodeMaintenance cordons and taints its node (as the
/// node-maintenance-operator does), live-migrates the LiveMigrate VMI off
/// it through an evacuation migration, stops the evictionStrategy None
/// VMI, reports Running with the pending VMI and then Succeeded; deleting
/// it uncordons, removes only its taints, and the object goes.
pub async fn scenario_node_maintenance<B: Backend>(b: &B, ns: &str, test: &str) {
    use mignet::api::MaintenancePhase;
    let nodes = node_names(test, 3);
    for n in &nodes {
        create_node(b, &node(n, test, None)).await;
    }
    // An admin's taint of its own, which the maintenance must leave alone.
    mignet::backend::modify::<B, Node>(b, "", &nodes[0], |n| {
        n.spec
            .get_or_insert_with(Default::default)
            .taints
            .get_or_insert_with(Vec::new)
            .push(Taint {
                key: "example.com/keep".to_owned(),
                effect: "PreferNoSchedule".to_owned(),
                value: None,
                time_added: None,
            });
        true
    })
    .await
    .unwrap();
    create_hco(b, ns, 5, 2).await;
    let live = VmiOpts {
        eviction: Some(EvictionStrategy::LiveMigrate),
        ..Default::default()
    };
    create_running_vmi(b, ns, "live", &nodes[0], live.clone()).await;
    create_running_vmi(
        b,
        ns,
        "plain",
        &nodes[0],
        VmiOpts {
            eviction: Some(EvictionStrategy::None),
            ..Default::default()
        },
    )
    .await;
    create_running_vmi(b, ns, "elsewhere", &nodes[1], live.clone()).await;
    let _ctl = spawn_controller(b, ns, test);
    let _sim = spawn_sim(b, ns, &nodes, Duration::from_secs(2));
    let nm_name = format!("nm-{}", nodes[0]);
    b.create(&node_maintenance(&nm_name, &nodes[0], test))
        .await
        .expect("create NodeMaintenance");

    // Running: the live VMI is still on the node, the plain one stopped.
    let st = wait_nm_status(b, &nm_name, "NodeMaintenance Running", |s| {
        s.phase == Some(MaintenancePhase::Running) && s.pending_pods == vec!["live".to_owned()]
    })
    .await;
    assert_eq!(
        st.eviction_pods,
        Some(2),
        "live + plain at the start: {st:?}"
    );
    assert_eq!(st.drain_progress, Some(50), "{st:?}");
    assert_eq!(st.last_error, None, "nothing blocks: {st:?}");
    let n = get_node(b, &nodes[0]).await;
    assert!(cordoned(&n), "{n:?}");
    assert_eq!(
        maintenance_taints(&n),
        vec!["medik8s.io/drain", "node.kubernetes.io/unschedulable"]
    );
    let nm = get_nm(b, &nm_name).await.unwrap();
    assert!(
        nm.finalizers()
            .iter()
            .any(|f| f == mignet::api::NODE_MAINTENANCE_FINALIZER),
        "{nm:?}"
    );
    assert!(
        b.get::<VirtualMachineInstance>(ns, "plain")
            .await
            .unwrap()
            .is_none(),
        "evictionStrategy None: the VMI is stopped"
    );
    let m = eventually(LONG, "evacuation VMIM of live", || async {
        b.list::<VirtualMachineInstanceMigration>(Some(ns))
            .await
            .unwrap()
            .into_iter()
            .find(|m| m.spec.vmi_name == "live")
    })
    .await;
    assert_eq!(
        m.annotations().get(protocol::EVACUATION_ANNOTATION),
        Some(&nodes[0]),
        "an evacuation: {m:?}"
    );
    let ms = b
        .list::<VirtualMachineInstanceMigration>(Some(ns))
        .await
        .unwrap();
    assert_eq!(
        ms.len(),
        1,
        "only the node in maintenance is evacuated: {ms:?}"
    );

    // The migration completes: Succeeded, nothing pending.
    wait_phase(b, ns, &m.name_any(), MigrationPhase::Succeeded).await;
    let st = wait_nm_status(b, &nm_name, "NodeMaintenance Succeeded", |s| {
        s.phase == Some(MaintenancePhase::Succeeded)
    })
    .await;
    assert_eq!(st.drain_progress, Some(100), "{st:?}");
    assert!(st.pending_pods.is_empty(), "{st:?}");
    assert!(st.last_update.is_some(), "{st:?}");
    let moved = get_vmi(b, ns, "live").await;
    assert_ne!(
        moved.status.unwrap().node_name.as_deref(),
        Some(nodes[0].as_str())
    );
    assert!(cordoned(&get_node(b, &nodes[0]).await), "stays cordoned");

    // Deleting ends the maintenance.
    b.delete::<mignet::api::NodeMaintenance>("", &nm_name)
        .await
        .expect("delete NodeMaintenance");
    eventually(LONG, "NodeMaintenance gone", || async {
        get_nm(b, &nm_name).await.is_none().then_some(())
    })
    .await;
    let n = get_node(b, &nodes[0]).await;
    assert!(!cordoned(&n), "uncordoned: {n:?}");
    assert!(maintenance_taints(&n).is_empty(), "{n:?}");
    let kept = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == "example.com/keep"));
    assert!(kept, "the admin's own taint stays: {n:?}");
}

/// Deleting a NodeMaintenance while an evacuation still waits (limit 1
/// outbound per node): the Pending evacuation is cancelled (deleted), the
/// started one finishes, the VMI left behind loses its evacuation mark and
/// stays on the node, which is schedulable again.
pub async fn scenario_node_maintenance_cancel<B: Backend>(b: &B, ns: &str, test: &str) {
    use mignet::api::MaintenancePhase;
    let nodes = node_names(test, 3);
    for n in &nodes {
        create_node(b, &node(n, test, None)).await;
    }
    create_hco(b, ns, 5, 1).await;
    let live = VmiOpts {
        eviction: Some(EvictionStrategy::LiveMigrate),
        ..Default::default()
    };
    create_running_vmi(b, ns, "a", &nodes[0], live.clone()).await;
    create_running_vmi(b, ns, "b", &nodes[0], live.clone()).await;
    let _ctl = spawn_controller(b, ns, test);
    let _sim = spawn_sim(b, ns, &nodes, Duration::from_secs(3));
    let nm_name = format!("nm-{}", nodes[0]);
    b.create(&node_maintenance(&nm_name, &nodes[0], test))
        .await
        .expect("create NodeMaintenance");
    let (running, pending) = eventually(LONG, "one evacuation Running, one Pending", || async {
        let ms = b
            .list::<VirtualMachineInstanceMigration>(Some(ns))
            .await
            .unwrap();
        let r = ms
            .iter()
            .find(|m| phase_of(m) == Some(MigrationPhase::Running))?;
        let p = ms
            .iter()
            .find(|m| phase_of(m) == Some(MigrationPhase::Pending))?;
        Some((r.clone(), p.clone()))
    })
    .await;
    let st = wait_nm_status(b, &nm_name, "Running with both pending", |s| {
        s.phase == Some(MaintenancePhase::Running)
    })
    .await;
    assert_eq!(st.eviction_pods, Some(2), "{st:?}");

    b.delete::<mignet::api::NodeMaintenance>("", &nm_name)
        .await
        .expect("delete NodeMaintenance");
    let pname = pending.name_any();
    eventually(LONG, "pending evacuation cancelled", || async {
        get_vmim(b, ns, &pname).await.is_none().then_some(())
    })
    .await;
    eventually(LONG, "NodeMaintenance gone", || async {
        get_nm(b, &nm_name).await.is_none().then_some(())
    })
    .await;
    let n = get_node(b, &nodes[0]).await;
    assert!(!cordoned(&n), "uncordoned: {n:?}");
    assert!(maintenance_taints(&n).is_empty(), "{n:?}");
    wait_phase(b, ns, &running.name_any(), MigrationPhase::Succeeded).await;
    let stayed = get_vmi(b, ns, &pending.spec.vmi_name).await;
    let st = stayed.status.unwrap();
    assert_eq!(st.node_name.as_deref(), Some(nodes[0].as_str()));
    assert_eq!(st.evacuation_node_name, None, "evacuation mark cleared");
    // No new evacuation of it afterwards.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let ms = b
        .list::<VirtualMachineInstanceMigration>(Some(ns))
        .await
        .unwrap();
    assert!(
        !ms.iter().any(|m| m.spec.vmi_name == pending.spec.vmi_name),
        "{ms:?}"
    );
}

/// What the operator (and its webhook) refuse: a NodeMaintenance of a node
/// that does not exist is Failed with `nodes "X" not found`; a second one
/// of a node already in maintenance is Failed with the webhook's message
/// and, deleted, leaves the node in maintenance; a VMI that cannot migrate
/// is named in `lastError` while the maintenance stays Running.
pub async fn scenario_node_maintenance_failures<B: Backend>(b: &B, ns: &str, test: &str) {
    use mignet::api::MaintenancePhase;
    let nodes = node_names(test, 2);
    for n in &nodes {
        create_node(b, &node(n, test, None)).await;
    }
    create_running_vmi(
        b,
        ns,
        "rwo",
        &nodes[0],
        VmiOpts {
            eviction: Some(EvictionStrategy::LiveMigrate),
            rwo_disk: true,
            ..Default::default()
        },
    )
    .await;
    let _ctl = spawn_controller(b, ns, test);
    let ghost = format!("{test}-ghost");
    let ghost_nm = format!("nm-{ghost}");
    b.create(&node_maintenance(&ghost_nm, &ghost, test))
        .await
        .expect("create NodeMaintenance");
    let st = wait_nm_status(b, &ghost_nm, "Failed for a missing node", |s| {
        s.phase == Some(MaintenancePhase::Failed)
    })
    .await;
    assert_eq!(
        st.last_error.as_deref(),
        Some(format!("nodes \"{ghost}\" not found").as_str())
    );
    b.delete::<mignet::api::NodeMaintenance>("", &ghost_nm)
        .await
        .unwrap();
    eventually(LONG, "Failed NodeMaintenance deleted", || async {
        get_nm(b, &ghost_nm).await.is_none().then_some(())
    })
    .await;

    let first = format!("nm-{}", nodes[0]);
    b.create(&node_maintenance(&first, &nodes[0], test))
        .await
        .unwrap();
    let st = wait_nm_status(b, &first, "Running, blocked by the RWO disk", |s| {
        s.phase == Some(MaintenancePhase::Running) && s.last_error.is_some()
    })
    .await;
    let err = st.last_error.unwrap();
    assert!(
        err.contains("rwo") && err.contains("DisksNotLiveMigratable"),
        "{err}"
    );
    assert_eq!(st.pending_pods, vec!["rwo".to_owned()]);
    // Creation times have whole seconds: make the second one clearly later.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = format!("nm-{}-again", nodes[0]);
    b.create(&node_maintenance(&second, &nodes[0], test))
        .await
        .unwrap();
    let st = wait_nm_status(b, &second, "the second one Failed", |s| {
        s.phase == Some(MaintenancePhase::Failed)
    })
    .await;
    assert_eq!(
        st.last_error.as_deref(),
        Some(
            format!(
                "invalid nodeName, a NodeMaintenance for node {} already exists",
                nodes[0]
            )
            .as_str()
        )
    );
    b.delete::<mignet::api::NodeMaintenance>("", &second)
        .await
        .unwrap();
    eventually(LONG, "second NodeMaintenance deleted", || async {
        get_nm(b, &second).await.is_none().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let n = get_node(b, &nodes[0]).await;
    assert!(cordoned(&n), "the first one still holds the node: {n:?}");
    assert_eq!(maintenance_taints(&n).len(), 2, "{n:?}");
    b.delete::<mignet::api::NodeMaintenance>("", &first)
        .await
        .unwrap();
    eventually(LONG, "first NodeMaintenance deleted", || async {
        get_nm(b, &first).await.is_none().then_some(())
    })
    .await;
    assert!(!cordoned(&get_node(b, &nodes[0]).await));
}
