//! `mignet lab ...`.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;

use super::lab_status as status;
use super::CliError;
use crate::api::{EvictionStrategy, VirtualMachineInstance};
use crate::lab::inventory::LabInventory;
use crate::lab::{daemon, lifecycle, open_store, LabConfig, LabError};
use crate::store::Store;

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
    /// Maintenance mode (a NodeMaintenance): `start NODE [--reason R]`,
    /// `stop NODE`.
    Maintenance {
        #[command(subcommand)]
        cmd: super::lab_maintenance::MaintenanceCommand,
    },
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
            let state = LabInventory::load(&dir)?.ok_or(LabError::NotUp { dir: dir.clone() })?;
            let _one_daemon = daemon::take_daemon_lock(&dir)?;
            // Started by hand (say after a crash): record ourselves so
            // `lab down` stops us too. `lab up` recorded the pid already.
            let me = std::process::id() as i32;
            if !state.processes.iter().any(|p| p.pid == me) {
                LabInventory::record_process(&dir, me, "lab daemon")?;
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
        LabCommand::Maintenance { cmd } => {
            let store = open_store(&LabConfig::dir_from_env())?;
            print!("{}", super::lab_maintenance::run_on(&store, cmd)?);
            Ok(())
        }
        // The demo drives the CLI, so it sits above it: the binary runs
        // it (crate::demo) and never hands it to cli::run.
        LabCommand::Demo { .. } => Err(CliError::Usage(
            "`mignet lab demo` is run by the mignet binary (mignet::demo::run_command)".into(),
        )),
    }
}

/// Cordon (or uncordon) a node; on drain, mark its VMIs with
/// `evacuationNodeName` as KubeVirt does for `LiveMigrate` VMIs, so the
/// migration controller moves them. Others are reported as blocking.
fn drain(node: &str, cordon: bool) -> Result<String, CliError> {
    drain_on(&open_store(&LabConfig::dir_from_env())?, node, cordon)
}

/// [`drain`] on a given store (the demo's).
pub fn drain_on(store: &Store, node: &str, cordon: bool) -> Result<String, CliError> {
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
