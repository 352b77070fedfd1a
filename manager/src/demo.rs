//! `mignet lab demo`: the seed's whole story on one machine, narrated.
//! Every step is checked from the lab's store (and the kernel's interface
//! counters), never from printed text, and returned as a [`DemoReport`] the
//! test (`manager/tests/lab_demo.rs`) asserts again. The lab is torn down at
//! the end, also when a step fails, unless `keep` is set.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::Value;

use crate::api::{
    MigrationAbortStatus, MigrationPhase, VirtualMachineInstance, VirtualMachineInstanceMigration,
    VirtualMachineInstanceMigrationSpec, VmiPhase,
};
use crate::backend::protocol::{Progress, EVACUATION_ANNOTATION, PROGRESS_ANNOTATION};
use crate::cli::lab_status as status;
use crate::cli::{self, CliError, Verb};
use crate::lab::agent_pods::NETWORK_STATUS_ANNOTATION;
use crate::lab::{daemon, lifecycle, LabConfig, LabError, LAB_NAMESPACE};
use crate::store::{Store, StoreError};

/// The seed's migration range (examples/nad.yaml).
pub const MIGRATION_RANGE: &str = "10.200.5.0/24";
const VMI: &str = "vmi-fedora";
const VMIM: &str = "migration-job";
const CANCEL_VMIM: &str = "migration-cancel";

#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub nodes: u32,
    /// Leave the lab up at the end.
    pub keep: bool,
    /// The seed's YAML (nad.yaml, hyperconverged.yaml, vmim.yaml, lab/vmi.yaml).
    pub examples: PathBuf,
}

/// Bytes one node's agent pod moved during the first migration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeTraffic {
    pub node: String,
    /// tx + rx on `migration0`.
    pub migration0: u64,
    /// tx + rx on `eth0` (the pod network).
    pub eth0: u64,
}

/// What each step established, read back from the lab.
#[derive(Debug, Clone, Default)]
pub struct DemoReport {
    /// Node -> its agent pod's `migration0` address.
    pub migration_addresses: BTreeMap<String, IpAddr>,
    pub vm_node: String,
    pub vm_memory_bytes: u64,
    pub first_tick_seen: bool,
    /// Where `migration-job` took the VM.
    pub migrated_to: String,
    pub transferred_bytes: u64,
    /// `status.migrationState.targetNodeAddress` after `migration-job`.
    pub target_node_address: String,
    /// What `get vmi -o jsonpath='{.status.migrationState.targetNodeAddress}'` printed.
    pub jsonpath_output: String,
    pub traffic: Vec<NodeTraffic>,
    pub drained_node: String,
    pub evacuation_migration: String,
    pub after_drain_node: String,
    pub abort_status: Option<MigrationAbortStatus>,
    pub cancel_node_before: String,
    pub cancel_node_after: String,
    pub cancel_phase_after: Option<VmiPhase>,
    /// The guest kept printing ticks after the cancel.
    pub ticks_after_cancel: bool,
    /// What remained after `down` (empty = clean); not checked with `keep`.
    pub leftovers: Vec<String>,
    pub wall: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{step}: {detail}")]
    Step { step: &'static str, detail: String },
    #[error("the lab's control loop stopped: {0}")]
    Daemon(String),
    #[error("removing the lab: {0}")]
    Teardown(String),
    #[error(transparent)]
    Cli(#[from] CliError),
    #[error(transparent)]
    Lab(#[from] LabError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn fail(step: &'static str, detail: impl Into<String>) -> DemoError {
    DemoError::Step {
        step,
        detail: detail.into(),
    }
}

fn say(s: &str) {
    println!("\n==> {s}");
}

/// `mignet lab demo`, as the binary runs it: any failed step makes the
/// command exit non-zero, with the whole error chain.
pub fn run_command(nodes: u32, keep: bool) -> Result<(), crate::cli::CliError> {
    let opts = DemoOptions {
        nodes,
        keep,
        examples: examples_dir(),
    };
    run(&opts)
        .map(|_| ())
        .map_err(|e| crate::cli::CliError::Failed(crate::agent::error_chain(&e)))
}

/// Run the demo. The daemon loop ([`daemon::run_full`]: rollout, kubelet,
/// scheduler, migration controller, agents) runs on a thread of this process.
pub fn run(opts: &DemoOptions) -> Result<DemoReport, DemoError> {
    let started = Instant::now();
    let cfg = LabConfig::from_env(opts.nodes);
    let mut report = DemoReport::default();
    say(&format!(
        "creating the lab: {} nodes in network namespaces ({}-*)",
        opts.nodes, cfg.prefix
    ));
    lifecycle::create(&cfg)?;
    let stop = Arc::new(AtomicBool::new(false));
    let daemon_error = Arc::new(Mutex::new(None::<String>));
    let loop_cfg = cfg.clone();
    let (loop_stop, loop_err) = (stop.clone(), daemon_error.clone());
    let control = std::thread::Builder::new()
        .name("lab-daemon".into())
        .spawn(move || {
            let r = daemon::run_full(&loop_cfg, &loop_stop);
            if let Err(e) = r {
                *loop_err.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(crate::agent::error_chain(&e));
            }
        });
    let result = match &control {
        Ok(_) => {
            let w = Waiter {
                daemon_error: daemon_error.clone(),
            };
            story(&cfg, opts, &w, &mut report)
        }
        Err(e) => Err(DemoError::Daemon(e.to_string())),
    };
    if let Err(e) = &result {
        eprintln!("\nFAILED: {}", crate::agent::error_chain(e));
    }
    // Delete the VM first so its agent stops it politely; `down` kills
    // whatever is left either way.
    if !opts.keep {
        if let Ok(store) = Store::open(cfg.store_dir()) {
            let _ = store.delete_typed::<VirtualMachineInstance>(LAB_NAMESPACE, VMI);
        }
    }
    stop.store(true, Ordering::SeqCst);
    if let Ok(handle) = control {
        let _ = handle.join();
    }
    let mut teardown = Ok(());
    if !opts.keep {
        say("removing the lab (mignet lab down)");
        let r = lifecycle::destroy(&cfg.dir)?;
        report.leftovers = lifecycle::leftovers(&cfg);
        if !r.errors.is_empty() {
            teardown = Err(DemoError::Teardown(r.errors.join("; ")));
        } else if !report.leftovers.is_empty() {
            teardown = Err(DemoError::Teardown(format!(
                "still there: {}",
                report.leftovers.join(", ")
            )));
        } else {
            println!("lab down: no namespace, link, process, socket or file of the lab remains");
        }
    } else {
        println!("\nlab kept (--keep); remove it with `mignet lab down`");
    }
    report.wall = started.elapsed();
    println!("\ntotal wall time: {:.1} s", report.wall.as_secs_f64());
    result?;
    teardown?;
    Ok(report)
}

/// Polls conditions, failing fast if the daemon loop died.
struct Waiter {
    daemon_error: Arc<Mutex<Option<String>>>,
}

impl Waiter {
    fn until<T>(
        &self,
        step: &'static str,
        timeout: Duration,
        mut f: impl FnMut() -> Result<Option<T>, DemoError>,
    ) -> Result<T, DemoError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self
                .daemon_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
            {
                return Err(DemoError::Daemon(e));
            }
            if let Some(v) = f()? {
                return Ok(v);
            }
            if Instant::now() > deadline {
                return Err(fail(
                    step,
                    format!("not done after {} s", timeout.as_secs()),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn apply(store: &Store, file: PathBuf) -> Result<(), DemoError> {
    print!(
        "{}",
        cli::run_on(
            store,
            Verb::Apply {
                files: vec![file],
                namespace: LAB_NAMESPACE.into(),
            },
        )?
    );
    Ok(())
}

fn get_vmi(store: &Store) -> Result<VirtualMachineInstance, DemoError> {
    store
        .get::<VirtualMachineInstance>(LAB_NAMESPACE, VMI)?
        .ok_or_else(|| fail("reading the VMI", "vmi-fedora is gone"))
}

fn vmi_node(v: &VirtualMachineInstance) -> Option<String> {
    v.status.as_ref().and_then(|s| s.node_name.clone())
}

fn vmi_phase(v: &VirtualMachineInstance) -> Option<VmiPhase> {
    v.status.as_ref().and_then(|s| s.phase)
}

fn story(
    cfg: &LabConfig,
    opts: &DemoOptions,
    w: &Waiter,
    report: &mut DemoReport,
) -> Result<(), DemoError> {
    let store = Store::open(cfg.store_dir())?;
    let range: IpNetwork = MIGRATION_RANGE.parse().expect("static range");
    w.until(
        "agent pods on the pod network",
        Duration::from_secs(90),
        || Ok(lifecycle::wait_for_agents(cfg, Duration::from_millis(100))?.then_some(())),
    )?;
    println!("agent pods ready (one per node, on the pod network)");

    say("creating the seed's NetworkAttachmentDefinition (examples/nad.yaml)");
    apply(&store, opts.examples.join("nad.yaml"))?;
    say("setting liveMigrationConfig.network: my-secondary-network (examples/hyperconverged.yaml)");
    apply(&store, opts.examples.join("hyperconverged.yaml"))?;

    say("agents restart onto the migration network, one node at a time");
    let nodes = cfg.node_names();
    report.migration_addresses = w.until(
        "agents with migration0 addresses",
        Duration::from_secs(120),
        || {
            if !rolled_out(&store)? {
                return Ok(None);
            }
            let mut addrs = BTreeMap::new();
            for p in store.list::<Pod>(Some(LAB_NAMESPACE))? {
                let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
                if let (Some(node), Some(ip)) = (node, migration_ip(&p)) {
                    addrs.insert(node, ip);
                }
            }
            Ok((addrs.len() == nodes.len()).then_some(addrs))
        },
    )?;
    for (node, ip) in &report.migration_addresses {
        println!("  {node}: migration0 {ip}");
        if !range.contains(*ip) {
            return Err(fail(
                "migration addresses",
                format!("{node} got {ip}, outside {MIGRATION_RANGE}"),
            ));
        }
    }
    let distinct: std::collections::BTreeSet<_> = report.migration_addresses.values().collect();
    if distinct.len() != report.migration_addresses.len() {
        return Err(fail("migration addresses", "two nodes share an address"));
    }
    print!("{}", status::render(&cfg.dir)?);

    say("creating VMI vmi-fedora (evictionStrategy LiveMigrate, 256Mi) (examples/lab/vmi.yaml)");
    apply(&store, opts.examples.join("lab/vmi.yaml"))?;
    let vmi = w.until("VMI Running", Duration::from_secs(90), || {
        let v = get_vmi(&store)?;
        Ok((vmi_phase(&v) == Some(VmiPhase::Running) && vmi_node(&v).is_some()).then_some(v))
    })?;
    report.vm_node = vmi_node(&vmi).unwrap_or_default();
    report.vm_memory_bytes = 256 << 20;
    println!("vmi-fedora Running on {}", report.vm_node);
    let ready = w.until(
        "guest ticking and memory filled",
        Duration::from_secs(120),
        || {
            let log = serial_output(cfg, &report.vm_node);
            Ok((log.contains("mignet: ready") && last_tick(&log).is_some()).then_some(log))
        },
    )?;
    report.first_tick_seen = true;
    println!(
        "guest console: tick {} (200 MiB of memory filled)",
        last_tick(&ready).unwrap_or(0)
    );

    say("starting the migration: VMIM migration-job (examples/vmim.yaml)");
    let before = traffic(cfg, &nodes)?;
    print!(
        "{}",
        cli::run_on(
            &store,
            Verb::Create {
                files: vec![opts.examples.join("vmim.yaml")],
                namespace: LAB_NAMESPACE.into(),
            },
        )?
    );
    let (phase, progress) = watch(w, &store, VMIM, Duration::from_secs(300), |_, _| false)?;
    let after = traffic(cfg, &nodes)?;
    if phase != Some(MigrationPhase::Succeeded) {
        return Err(fail(
            "migration-job",
            format!("ended {phase:?}: {:?}", get_vmi(&store)?.status),
        ));
    }
    report.transferred_bytes = progress.map(|p| p.transferred_bytes).unwrap_or(0);
    let vmi = get_vmi(&store)?;
    report.migrated_to = vmi_node(&vmi).unwrap_or_default();
    if report.migrated_to == report.vm_node {
        return Err(fail("migration-job", "the VM is still on its first node"));
    }
    println!(
        "vmi-fedora moved {} -> {}",
        report.vm_node, report.migrated_to
    );

    say("describe vmi vmi-fedora");
    print!(
        "{}",
        cli::run_on(
            &store,
            Verb::Describe {
                resource: "vmi".into(),
                name: Some(VMI.into()),
                namespace: Some(LAB_NAMESPACE.into()),
            },
        )?
    );
    say("mignet get vmi vmi-fedora -o jsonpath='{.status.migrationState.targetNodeAddress}'");
    report.jsonpath_output = cli::run_on(
        &store,
        Verb::Get {
            resource: "vmi".into(),
            name: Some(VMI.into()),
            output: Some("jsonpath={.status.migrationState.targetNodeAddress}".into()),
            namespace: Some(LAB_NAMESPACE.into()),
            all_namespaces: false,
        },
    )?;
    println!("{}", report.jsonpath_output.trim_end());
    let ms = vmi.status.as_ref().and_then(|s| s.migration_state.as_ref());
    // A succeeded VMIM must leave a clean record: completed, never also failed.
    if ms.and_then(|m| m.completed) != Some(true) || ms.and_then(|m| m.failed) == Some(true) {
        return Err(fail(
            "migrationState",
            format!(
                "completed={:?} failed={:?} failureReason={:?}",
                ms.and_then(|m| m.completed),
                ms.and_then(|m| m.failed),
                ms.and_then(|m| m.failure_reason.clone())
            ),
        ));
    }
    report.target_node_address = ms
        .and_then(|m| m.target_node_address.clone())
        .unwrap_or_default();
    let addr: SocketAddr = report.target_node_address.parse().map_err(|_| {
        fail(
            "targetNodeAddress",
            format!("{:?}", report.target_node_address),
        )
    })?;
    if !range.contains(addr.ip()) {
        return Err(fail(
            "targetNodeAddress",
            format!("{addr} is outside {MIGRATION_RANGE}"),
        ));
    }
    if report.migration_addresses.get(&report.migrated_to) != Some(&addr.ip()) {
        return Err(fail(
            "targetNodeAddress",
            format!("{addr} is not {}'s migration0", report.migrated_to),
        ));
    }
    println!("{addr} is inside {MIGRATION_RANGE}: the migration used the dedicated network");

    say("bytes each agent pod moved during the migration");
    println!("  {:<8} {:>14} {:>14}", "node", "migration0", "eth0");
    for (b, a) in before.iter().zip(&after) {
        let t = NodeTraffic {
            node: a.node.clone(),
            migration0: a.migration0.saturating_sub(b.migration0),
            eth0: a.eth0.saturating_sub(b.eth0),
        };
        println!(
            "  {:<8} {:>10.1} MiB {:>10.2} MiB",
            t.node,
            mib(t.migration0),
            mib(t.eth0)
        );
        report.traffic.push(t);
    }
    for node in [&report.vm_node, &report.migrated_to] {
        let t = report.traffic.iter().find(|t| &t.node == node).cloned();
        let t = t.ok_or_else(|| fail("traffic", format!("no counters for {node}")))?;
        // QEMU skips zero pages, so the wire carries the guest's touched
        // memory (about 245 of its 256 MiB here), plus TLS framing.
        if t.migration0 < report.transferred_bytes || t.migration0 < report.vm_memory_bytes / 4 * 3
        {
            return Err(fail(
                "traffic",
                format!(
                    "{node} moved only {:.1} MiB on migration0 (QEMU sent {:.1} MiB of a 256 MiB VM)",
                    mib(t.migration0),
                    mib(report.transferred_bytes)
                ),
            ));
        }
        if t.eth0 * 20 > t.migration0 {
            return Err(fail(
                "traffic",
                format!(
                    "{node} moved {:.1} MiB on eth0: the pod network carried migration traffic",
                    mib(t.eth0)
                ),
            ));
        }
    }
    println!(
        "migration0 carried all {:.1} MiB QEMU sent, on both ends; eth0 under 5% of that",
        mib(report.transferred_bytes)
    );

    report.drained_node = report.migrated_to.clone();
    say(&format!("mignet lab drain {}", report.drained_node));
    print!(
        "{}",
        cli::lab::drain_on(&store, &report.drained_node, true)?
    );
    let evac = w.until(
        "evacuation migration created",
        Duration::from_secs(30),
        || {
            Ok(store
                .list::<VirtualMachineInstanceMigration>(Some(LAB_NAMESPACE))?
                .into_iter()
                .find(|m| {
                    m.annotations().contains_key(EVACUATION_ANNOTATION) && m.spec.vmi_name == VMI
                })
                .and_then(|m| m.metadata.name))
        },
    )?;
    println!("the controller created VMIM {evac}");
    report.evacuation_migration = evac.clone();
    let (phase, _) = watch(w, &store, &evac, Duration::from_secs(300), |_, _| false)?;
    if phase != Some(MigrationPhase::Succeeded) {
        return Err(fail("drain", format!("{evac} ended {phase:?}")));
    }
    let vmi = get_vmi(&store)?;
    report.after_drain_node = vmi_node(&vmi).unwrap_or_default();
    if report.after_drain_node == report.drained_node || vmi_phase(&vmi) != Some(VmiPhase::Running)
    {
        return Err(fail(
            "drain",
            format!(
                "vmi-fedora is {:?} on {}",
                vmi_phase(&vmi),
                report.after_drain_node
            ),
        ));
    }
    println!(
        "vmi-fedora left {} for {}",
        report.drained_node, report.after_drain_node
    );
    say(&format!("mignet lab uncordon {}", report.drained_node));
    print!(
        "{}",
        cli::lab::drain_on(&store, &report.drained_node, false)?
    );

    say("a slow migration (bandwidthPerMigration 8Mi), cancelled by deleting its VMIM");
    print!(
        "{}",
        cli::run_on(
            &store,
            Verb::EditConfig {
                changes: vec![
                    "bandwidthPerMigration=8Mi".into(),
                    "progressTimeout=3600".into()
                ],
                namespace: LAB_NAMESPACE.into(),
                hyperconverged: crate::lab::HYPERCONVERGED.into(),
            },
        )?
    );
    report.cancel_node_before = report.after_drain_node.clone();
    let mut m = VirtualMachineInstanceMigration::new(
        CANCEL_VMIM,
        VirtualMachineInstanceMigrationSpec {
            vmi_name: VMI.into(),
        },
    );
    m.metadata.namespace = Some(LAB_NAMESPACE.into());
    store.create(&m)?;
    println!("virtualmachineinstancemigration/{CANCEL_VMIM} created");
    let (phase, _) = watch(
        w,
        &store,
        CANCEL_VMIM,
        Duration::from_secs(120),
        |p, prog| {
            p == Some(MigrationPhase::Running)
                && prog.is_some_and(|p| p.transferred_bytes > 24 << 20)
        },
    )?;
    if phase != Some(MigrationPhase::Running) {
        return Err(fail(
            "cancel",
            format!("{CANCEL_VMIM} was {phase:?}, not Running"),
        ));
    }
    say(&format!("mignet delete vmim {CANCEL_VMIM}"));
    print!(
        "{}",
        cli::run_on(
            &store,
            Verb::Delete {
                resource: "vmim".into(),
                names: vec![CANCEL_VMIM.into()],
                namespace: LAB_NAMESPACE.into(),
                wait: false,
            },
        )?
    );
    let vmi = w.until("abort recorded", Duration::from_secs(60), || {
        let gone = store
            .get::<VirtualMachineInstanceMigration>(LAB_NAMESPACE, CANCEL_VMIM)?
            .is_none();
        let v = get_vmi(&store)?;
        let abort = v
            .status
            .as_ref()
            .and_then(|s| s.migration_state.as_ref())
            .and_then(|m| m.abort_status);
        Ok((gone && abort.is_some()).then_some(v))
    })?;
    report.abort_status = vmi
        .status
        .as_ref()
        .and_then(|s| s.migration_state.as_ref())
        .and_then(|m| m.abort_status);
    report.cancel_node_after = vmi_node(&vmi).unwrap_or_default();
    report.cancel_phase_after = vmi_phase(&vmi);
    if report.abort_status != Some(MigrationAbortStatus::Succeeded) {
        return Err(fail(
            "cancel",
            format!("abortStatus {:?}", report.abort_status),
        ));
    }
    if report.cancel_node_after != report.cancel_node_before
        || report.cancel_phase_after != Some(VmiPhase::Running)
    {
        return Err(fail(
            "cancel",
            format!(
                "vmi-fedora is {:?} on {}",
                report.cancel_phase_after, report.cancel_node_after
            ),
        ));
    }
    let t0 = last_tick(&serial_output(cfg, &report.cancel_node_after));
    w.until("guest still ticking", Duration::from_secs(30), || {
        let t = last_tick(&serial_output(cfg, &report.cancel_node_after));
        Ok((t.is_some() && t > t0).then_some(()))
    })?;
    report.ticks_after_cancel = true;
    println!(
        "abortStatus Succeeded; vmi-fedora still Running on {} (guest at tick {})",
        report.cancel_node_after,
        last_tick(&serial_output(cfg, &report.cancel_node_after)).unwrap_or(0)
    );
    Ok(())
}

fn rolled_out(store: &Store) -> Result<bool, DemoError> {
    let hco: Option<Value> = store.get_value(&crate::store::Key::new(
        "HyperConverged",
        LAB_NAMESPACE,
        crate::lab::HYPERCONVERGED,
    ))?;
    Ok(hco
        .as_ref()
        .and_then(|h| h.pointer("/status/conditions"))
        .and_then(Value::as_array)
        .is_some_and(|c| {
            c.iter().any(|c| {
                c["type"] == crate::network::decide::CONDITION_TYPE && c["status"] == "True"
            })
        }))
}

/// The pod's `migration0` address from Multus' network-status annotation.
fn migration_ip(p: &Pod) -> Option<IpAddr> {
    crate::network::probe::outcome::network_status_ip(
        p.annotations().get(NETWORK_STATUS_ANNOTATION)?,
        mignet_dataplane::migration_ip::MIGRATION_INTERFACE,
    )
}

/// The newest serial console of `vmi-fedora` on `node` (each start or
/// incoming migration gets a run directory of its own).
fn serial_output(cfg: &LabConfig, node: &str) -> String {
    let vms = crate::lab::node_vms_dir(&cfg.dir, node);
    let newest = std::fs::read_dir(&vms)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(VMI))
        .map(|e| e.path().join("serial.log"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max();
    newest
        .and_then(|(_, p)| std::fs::read(p).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn last_tick(serial: &str) -> Option<u64> {
    mignet_dataplane::qemu::lab_guest::ticks(serial)
        .last()
        .copied()
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

/// Interface counters (tx + rx) of every agent pod, read inside its
/// namespace (`ip netns exec` mounts that namespace's sysfs).
fn traffic(cfg: &LabConfig, nodes: &[String]) -> Result<Vec<NodeTraffic>, DemoError> {
    nodes
        .iter()
        .map(|node| {
            let ns = cfg.agent_ns(node);
            Ok(NodeTraffic {
                node: node.clone(),
                migration0: if_bytes(&ns, "migration0")?,
                eth0: if_bytes(&ns, "eth0")?,
            })
        })
        .collect()
}

fn if_bytes(ns: &str, ifname: &str) -> Result<u64, DemoError> {
    let mut total = 0;
    for dir in ["tx_bytes", "rx_bytes"] {
        let path = format!("/sys/class/net/{ifname}/statistics/{dir}");
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", ns, "cat", &path])
            .output()
            .map_err(|e| fail("reading interface counters", format!("{ns}: {e}")))?;
        let text = String::from_utf8_lossy(&out.stdout);
        total += text.trim().parse::<u64>().map_err(|_| {
            fail(
                "reading interface counters",
                format!(
                    "{ns} {path}: {:?} {}",
                    text.trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            )
        })?;
    }
    Ok(total)
}

/// Follow a VMIM with a progress bar until it ends or `enough` says so;
/// returns its last phase and progress.
fn watch(
    w: &Waiter,
    store: &Store,
    name: &str,
    timeout: Duration,
    enough: impl Fn(Option<MigrationPhase>, Option<&Progress>) -> bool,
) -> Result<(Option<MigrationPhase>, Option<Progress>), DemoError> {
    let mut last_line = String::new();
    let r = w.until("migration", timeout, || {
        let m = store
            .get::<VirtualMachineInstanceMigration>(LAB_NAMESPACE, name)?
            .ok_or_else(|| fail("migration", format!("{name} disappeared")))?;
        let phase = m.status.as_ref().and_then(|s| s.phase);
        let progress: Option<Progress> = m
            .annotations()
            .get(PROGRESS_ANNOTATION)
            .and_then(|p| serde_json::from_str(p).ok());
        let line = bar(phase, progress.as_ref());
        if line != last_line {
            // Pad over a longer previous line.
            print!("\r{line:<width$}", width = last_line.len());
            last_line = line;
            let _ = std::io::stdout().flush();
        }
        let done = matches!(
            phase,
            Some(MigrationPhase::Succeeded | MigrationPhase::Failed)
        ) || enough(phase, progress.as_ref());
        Ok(done.then_some((phase, progress)))
    });
    println!();
    r
}

fn bar(phase: Option<MigrationPhase>, p: Option<&Progress>) -> String {
    let phase = phase
        .map(|p| format!("{p:?}"))
        .unwrap_or_else(|| "Pending".into());
    let Some(p) = p else {
        return format!("  {phase}");
    };
    const WIDTH: usize = 30;
    let total = p.total_bytes.max(1);
    let done = ((p.transferred_bytes.min(total) as f64 / total as f64) * WIDTH as f64) as usize;
    format!(
        "  [{}{}] {:>6.1} MiB sent  {:>6.1} MiB/s  {:>6.1} MiB remaining  {phase}",
        "#".repeat(done),
        "-".repeat(WIDTH - done),
        mib(p.transferred_bytes),
        mib(p.bytes_per_second),
        mib(p.remaining_bytes),
    )
}

/// The seed's YAML: `$MIGNET_EXAMPLES_DIR`, else the checkout this binary
/// was built from, else `./examples`.
pub fn examples_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MIGNET_EXAMPLES_DIR").filter(|d| !d.is_empty()) {
        return d.into();
    }
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    if built.join("nad.yaml").is_file() {
        built
    } else {
        PathBuf::from("examples")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_fills_with_transferred_bytes() {
        let p = Progress {
            transferred_bytes: 128 << 20,
            remaining_bytes: 128 << 20,
            total_bytes: 256 << 20,
            bytes_per_second: 64 << 20,
            updated: String::new(),
        };
        let b = bar(Some(MigrationPhase::Running), Some(&p));
        assert!(
            b.contains(&format!("[{}{}]", "#".repeat(15), "-".repeat(15))),
            "{b}"
        );
        assert!(
            b.contains("128.0 MiB sent") && b.contains("64.0 MiB/s"),
            "{b}"
        );
        assert!(bar(None, None).contains("Pending"));
    }
}
