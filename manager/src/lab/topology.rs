//! Lab topology: the switch namespace and the node namespaces.
//!
//! Every link is created inside a lab namespace (`ip -n`), with the peer end
//! moved straight into its node namespace (`peer ... netns`), so nothing ever
//! appears in the root namespace, even for a moment. Removing the namespaces
//! removes every link; there is nothing else to undo.

use mignet_cni::netns::{set_sysctl, NetNs};

use super::inventory::{is_alive, LabInventory};
use super::{ip, netns_exists, netns_path, plan, LabConfig, LabError};

/// Bridge of the pod/node network, in the switch namespace.
pub const POD_BRIDGE: &str = "br-pod";
/// Bridge of the migration VLAN, in the switch namespace.
pub const MIGRATION_BRIDGE: &str = "br-mig";
/// A node's pod/node-network NIC.
pub const NODE_POD_NIC: &str = "eth0";
/// A node's migration NIC (the macvlan master; no address of its own).
pub const NODE_MIGRATION_NIC: &str = "eth1";

/// Create a namespace we own: refuse one that exists (it is not ours), and
/// record it before creating it.
pub fn add_namespace(cfg: &LabConfig, ns: &str) -> Result<(), LabError> {
    if netns_exists(ns) {
        return Err(LabError::NamespaceExists {
            name: ns.to_owned(),
        });
    }
    LabInventory::record_namespace(&cfg.dir, ns)?;
    ip(&["netns", "add", ns])?;
    ip(&["-n", ns, "link", "set", "lo", "up"])?;
    Ok(())
}

/// Build the switch and the nodes. The caller has created the state record.
pub fn up(cfg: &LabConfig) -> Result<(), LabError> {
    if !(1..=250).contains(&cfg.nodes) {
        return Err(LabError::NodeCount { nodes: cfg.nodes });
    }
    let sw = cfg.switch_ns();
    add_namespace(cfg, &sw)?;
    for br in [POD_BRIDGE, MIGRATION_BRIDGE] {
        LabInventory::record_link(&cfg.dir, &sw, br)?;
        ip(&["-n", &sw, "link", "add", br, "type", "bridge"])?;
        ip(&["-n", &sw, "link", "set", br, "up"])?;
    }
    let names = cfg.node_names();
    for (i, node) in (1u32..).zip(&names) {
        let ns = cfg.node_ns(node);
        add_namespace(cfg, &ns)?;
        for (port, bridge, nic) in [
            (format!("n{i}-pod"), POD_BRIDGE, NODE_POD_NIC),
            (format!("n{i}-mig"), MIGRATION_BRIDGE, NODE_MIGRATION_NIC),
        ] {
            LabInventory::record_link(&cfg.dir, &sw, &port)?;
            LabInventory::record_link(&cfg.dir, &ns, nic)?;
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", nic, "netns", &ns,
            ])?;
            ip(&["-n", &sw, "link", "set", &port, "master", bridge, "up"])?;
            ip(&["-n", &ns, "link", "set", nic, "up"])?;
        }
        let addr = format!("{}/24", plan::node_ip(i));
        ip(&["-n", &ns, "addr", "add", &addr, "dev", NODE_POD_NIC])?;
        // host-gw: every other node's pod subnet via that node.
        for j in (1u32..).take(names.len()).filter(|j| *j != i) {
            ip(&[
                "-n",
                &ns,
                "route",
                "add",
                &plan::pod_subnet(j),
                "via",
                &plan::node_ip(j).to_string(),
            ])?;
        }
        // The node routes for its pods. /proc/sys/net belongs to the netns
        // of the thread that opens it, hence the namespace thread.
        NetNs::open(netns_path(&ns))?
            .run(|| set_sysctl("net/ipv4/ip_forward", "1"))?
            .map_err(|source| LabError::Io {
                op: "enabling ip_forward in",
                path: netns_path(&ns),
                source,
            })?;
    }
    Ok(())
}

/// What `down` removed and what it could not.
#[derive(Debug, Default)]
pub struct DownReport {
    pub processes_stopped: Vec<i32>,
    pub namespaces_removed: Vec<String>,
    pub errors: Vec<String>,
}

/// Remove everything the record lists: stop processes (SIGTERM, then
/// SIGKILL after 5 s), delete namespaces (newest first: agents, nodes,
/// switch), then the lab's files. Idempotent; collects every error instead
/// of stopping at the first. No record = nothing to do.
pub fn down(dir: &std::path::Path) -> Result<DownReport, LabError> {
    let mut report = DownReport::default();
    let Some(state) = LabInventory::load(dir)? else {
        return Ok(report);
    };
    for p in &state.processes {
        if !is_alive(p) {
            continue;
        }
        match stop_process(p.pid) {
            Ok(()) => report.processes_stopped.push(p.pid),
            Err(e) => report
                .errors
                .push(format!("stopping {} (pid {}): {e}", p.what, p.pid)),
        }
    }
    // Re-read: the daemon may have recorded agent namespaces until it stopped.
    let state = LabInventory::load(dir)?.unwrap_or(state);
    for ns in state.namespaces.iter().rev() {
        if !netns_exists(ns) {
            continue;
        }
        match ip(&["netns", "del", ns]) {
            Ok(_) => report.namespaces_removed.push(ns.clone()),
            Err(e) => report.errors.push(e.to_string()),
        }
    }
    // Links whose namespace is still there (its removal failed above).
    for (ns, link) in state.links.iter().rev() {
        if netns_exists(ns) {
            if let Err(e) = ip(&["-n", ns, "link", "del", link]) {
                if !e.to_string().contains("Cannot find device") {
                    report.errors.push(e.to_string());
                }
            }
        }
    }
    if !report.errors.is_empty() {
        // Keep the record so a second `down` can finish the job.
        return Ok(report);
    }
    let cfg = &state.config;
    for sub in [cfg.store_dir(), cfg.ipam_dir(), cfg.cni_bin_dir()] {
        if let Err(e) = std::fs::remove_dir_all(&sub) {
            if e.kind() != std::io::ErrorKind::NotFound {
                report
                    .errors
                    .push(format!("removing {}: {e}", sub.display()));
            }
        }
    }
    for f in [
        cfg.log_file(),
        super::history::history_file(dir),
        super::inventory::lock_path(dir),
        cfg.state_file(),
    ] {
        if let Err(e) = std::fs::remove_file(&f) {
            if e.kind() != std::io::ErrorKind::NotFound {
                report.errors.push(format!("removing {}: {e}", f.display()));
            }
        }
    }
    // Only if empty: the directory may be a user's with other things in it.
    let _ = std::fs::remove_dir(dir);
    Ok(report)
}

fn stop_process(pid: i32) -> Result<(), nix::Error> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(pid);
    kill(pid, Signal::SIGTERM)?;
    let gone = |pid: Pid| {
        // Reap it if it is our child (the demo's case); ignore otherwise.
        let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        super::inventory::process_start_time(pid.as_raw()).is_none()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
    };
    for _ in 0..100 {
        if gone(pid) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    kill(pid, Signal::SIGKILL)?;
    for _ in 0..100 {
        if gone(pid) {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Err(nix::Error::EBUSY)
}
