//! `mignet lab ...`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use serde_json::Value;

use super::CliError;
use crate::api::{EvictionStrategy, VirtualMachineInstance};
use crate::lab::kubelet::NoAgent;
use crate::lab::state::LabState;
use crate::lab::{daemon, lifecycle, open_store, status, LabConfig, LabError};

#[derive(clap::Subcommand, Debug)]
pub enum LabCommand {
    /// Create the lab (namespaces, bridges, nodes) and start its daemon.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Do not start the background daemon (run `mignet lab daemon` yourself).
        #[arg(long)]
        no_daemon: bool,
        /// Wait this long for the agent pods to be ready.
        #[arg(long, default_value_t = 60)]
        wait_seconds: u64,
    },
    /// Remove everything the lab created (also after a crash). Idempotent.
    Down,
    /// Nodes, agents, VMs and the daemon.
    Status,
    /// Run the lab's control loop in the foreground (what `up` starts).
    Daemon,
    /// Mark a node unschedulable and ask its LiveMigrate VMs to leave.
    Drain { node: String },
    /// Mark a node schedulable again.
    Uncordon { node: String },
    /// Run the seed's story, narrated, in one foreground process.
    Demo {
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Leave the lab up at the end.
        #[arg(long)]
        keep: bool,
    },
}

pub fn run(cmd: LabCommand) -> Result<(), CliError> {
    match cmd {
        LabCommand::Up {
            nodes,
            no_daemon,
            wait_seconds,
        } => {
            let cfg = LabConfig::from_env(nodes);
            lifecycle::create(&cfg)?;
            println!(
                "lab up in {}: switch {}, nodes {}",
                cfg.dir.display(),
                cfg.switch_ns(),
                cfg.node_names()
                    .iter()
                    .map(|n| cfg.node_ns(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if !no_daemon {
                let pid = daemon::spawn(&cfg)?;
                println!("daemon pid {pid}, log {}", cfg.log_file().display());
                if !lifecycle::wait_for_agents(&cfg, Duration::from_secs(wait_seconds))? {
                    return Err(CliError::Failed(format!(
                        "agent pods not ready after {wait_seconds} s; see {}",
                        cfg.log_file().display()
                    )));
                }
                println!("agent pods ready");
            }
            Ok(())
        }
        LabCommand::Down => {
            let dir = LabConfig::dir_from_env();
            let r = lifecycle::destroy(&dir)?;
            for pid in &r.processes_stopped {
                println!("stopped pid {pid}");
            }
            for ns in &r.namespaces_removed {
                println!("removed netns {ns}");
            }
            if r.errors.is_empty() {
                println!("lab down");
                Ok(())
            } else {
                Err(CliError::Failed(format!(
                    "lab down incomplete (run it again): {}",
                    r.errors.join("; ")
                )))
            }
        }
        LabCommand::Status => {
            print!("{}", status::render(&LabConfig::dir_from_env())?);
            Ok(())
        }
        LabCommand::Daemon => {
            let dir = LabConfig::dir_from_env();
            let state = LabState::load(&dir)?.ok_or(LabError::NotUp { dir: dir.clone() })?;
            // Started by hand (say after a crash): record ourselves so
            // `lab down` stops us too. `lab up` recorded the pid already.
            let me = std::process::id() as i32;
            if !state.processes.iter().any(|p| p.pid == me) {
                LabState::record_process(&dir, me, "lab daemon")?;
            }
            let stop = AtomicBool::new(false);
            daemon::run_full(&state.config, &stop)?;
            Ok(())
        }
        LabCommand::Drain { node } => {
            print!("{}", drain(&node, true)?);
            Ok(())
        }
        LabCommand::Uncordon { node } => {
            print!("{}", drain(&node, false)?);
            Ok(())
        }
        LabCommand::Demo { nodes, keep } => demo(nodes, keep),
    }
}

/// Cordon (or uncordon) a node; on drain, mark its VMIs with
/// `evacuationNodeName` as KubeVirt does for `LiveMigrate` VMIs, so the
/// migration controller moves them. Others are reported as blocking.
fn drain(node: &str, cordon: bool) -> Result<String, CliError> {
    let store = open_store(&LabConfig::dir_from_env())?;
    store.modify::<Node>("", node, |n| {
        n.spec.get_or_insert_with(Default::default).unschedulable = cordon.then_some(true);
    })?;
    let mut out = format!(
        "node/{node} {}\n",
        if cordon { "cordoned" } else { "uncordoned" }
    );
    if !cordon {
        return Ok(out);
    }
    for vmi in store.list::<VirtualMachineInstance>(None)? {
        let st = vmi.status.clone().unwrap_or_default();
        if st.node_name.as_deref() != Some(node) {
            continue;
        }
        let name = vmi.metadata.name.clone().unwrap_or_default();
        match vmi.spec.eviction_strategy {
            Some(EvictionStrategy::LiveMigrate) | Some(EvictionStrategy::LiveMigrateIfPossible) => {
                let mut v = vmi.clone();
                v.status
                    .get_or_insert_with(Default::default)
                    .evacuation_node_name = Some(node.to_owned());
                store.update_status(&v)?;
                out.push_str(&format!("evicting vmi/{name} (live migration)\n"));
            }
            other => out.push_str(&format!(
                "vmi/{name} has evictionStrategy {:?}: not migrated, it blocks the drain\n",
                other
                    .map(|s| format!("{s:?}"))
                    .unwrap_or_else(|| "None".into())
            )),
        }
    }
    Ok(out)
}

/// The narrated story, as far as the lab goes today: the migration network
/// rollout. VM steps need the node agent (QEMU driver + proxy) and are
/// reported as not yet available, and the demo exits non-zero, so nobody
/// mistakes the partial story for the whole one.
fn demo(nodes: u32, keep: bool) -> Result<(), CliError> {
    let cfg = LabConfig::from_env(nodes);
    let root = examples_dir();
    let step = |s: &str| println!("\n==> {s}");
    step(&format!(
        "creating the lab: {nodes} nodes in network namespaces"
    ));
    lifecycle::create(&cfg)?;
    let stop = Arc::new(AtomicBool::new(false));
    let loop_cfg = cfg.clone();
    let loop_stop = stop.clone();
    let control = std::thread::spawn(move || daemon::run(&loop_cfg, &NoAgent, &loop_stop));
    let result = (|| -> Result<(), CliError> {
        if !lifecycle::wait_for_agents(&cfg, Duration::from_secs(60))? {
            return Err(CliError::Failed("agent pods did not start".into()));
        }
        let store = open_store(&cfg.dir)?;
        step("creating the seed's NetworkAttachmentDefinition (examples/nad.yaml)");
        print!(
            "{}",
            super::run_on(
                &store,
                super::Verb::Apply {
                    files: vec![root.join("nad.yaml")],
                    namespace: crate::lab::LAB_NAMESPACE.into()
                }
            )?
        );
        step("setting liveMigrationConfig.network: my-secondary-network (examples/hyperconverged.yaml)");
        print!(
            "{}",
            super::run_on(
                &store,
                super::Verb::Apply {
                    files: vec![root.join("hyperconverged.yaml")],
                    namespace: crate::lab::LAB_NAMESPACE.into()
                }
            )?
        );
        step("agents restart onto the migration network, one node at a time");
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let hco: Option<Value> = store.get_value(&crate::store::Key::new(
                "HyperConverged",
                crate::lab::LAB_NAMESPACE,
                crate::lab::HYPERCONVERGED,
            ))?;
            let rolled = hco
                .as_ref()
                .and_then(|h| h.pointer("/status/conditions"))
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter().any(|c| {
                        c["type"] == crate::rollout::CONDITION_TYPE && c["status"] == "True"
                    })
                });
            if rolled {
                break;
            }
            if std::time::Instant::now() > deadline {
                return Err(CliError::Failed(
                    "network rollout did not finish in 60 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        print!("{}", status::render(&cfg.dir)?);
        step("VM, migration, drain and cancel steps");
        Err(CliError::Failed(
            "not yet available in the lab: they need the node agent (QEMU driver, mTLS proxy)"
                .into(),
        ))
    })();
    stop.store(true, Ordering::SeqCst);
    let _ = control.join();
    if !keep {
        step("removing the lab");
        let r = lifecycle::destroy(&cfg.dir)?;
        if !r.errors.is_empty() {
            return Err(CliError::Failed(r.errors.join("; ")));
        }
        println!("lab down");
    }
    result
}

/// The seed's YAML: `$MIGNET_EXAMPLES_DIR`, else the checkout this binary
/// was built from, else `./examples`.
fn examples_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("MIGNET_EXAMPLES_DIR").filter(|d| !d.is_empty()) {
        return d.into();
    }
    let built = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    if built.join("nad.yaml").is_file() {
        built
    } else {
        std::path::PathBuf::from("examples")
    }
}
