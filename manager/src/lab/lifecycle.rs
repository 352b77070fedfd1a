//! `lab up` and `lab down`.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use serde_json::json;

use super::inventory::LabInventory;
use super::topology::{self, DownReport};
use super::{cni, netns_path, plan, LabConfig, LabError};
use super::{AGENT_DAEMONSET, LAB_NAMESPACE, NETNS_ANNOTATION};
use crate::store::Store;

/// The agent DaemonSet the lab seeds at `up`: no network annotation yet.
pub fn agent_daemonset() -> DaemonSet {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": AGENT_DAEMONSET, "namespace": LAB_NAMESPACE},
        "spec": {
            "selector": {"matchLabels": {"app": AGENT_DAEMONSET}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": {"app": AGENT_DAEMONSET}},
                "spec": {"containers": [{"name": "agent", "image": "mignet"}]}
            }
        }
    }))
    .expect("static DaemonSet shape")
}

/// Label a node carries for each CPU model it supports as host-model
/// (KubeVirt's `host-model-cpu.node.kubevirt.io/<model>`). Lab nodes all run
/// TCG's host model (`launcher::request::TCG_HOST_MODEL`).
pub const HOST_MODEL_LABEL: &str = "host-model-cpu.node.kubevirt.io/kvm64";

/// A lab node's labels: its hostname, and what the agent puts on a cluster
/// node (`agent::node_labels::desired`): schedulable for VMs, no KVM (lab
/// guests run under TCG), host-model `kvm64`.
pub fn node_labels(name: &str) -> std::collections::BTreeMap<String, String> {
    let mut l = crate::agent::node_labels::desired(false, crate::launcher::request::TCG_HOST_MODEL);
    l.insert("kubernetes.io/hostname".into(), name.into());
    debug_assert!(l.contains_key(HOST_MODEL_LABEL));
    l
}

fn node_object(cfg: &LabConfig, index: u32, name: &str) -> Node {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": node_labels(name),
            "annotations": {
                NETNS_ANNOTATION: netns_path(&cfg.node_ns(name)).display().to_string(),
            },
        },
        "spec": {"podCIDR": plan::pod_subnet(index)},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": plan::node_ip(index).to_string()},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [{"type": "Ready", "status": "True", "reason": "LabNodeUp"}],
        },
    }))
    .expect("static node shape")
}

/// Create the lab: record, CNI path, topology, seed objects (Nodes, the
/// agent DaemonSet). On failure, everything created so far is removed.
pub fn create(cfg: &LabConfig) -> Result<(), LabError> {
    LabInventory::create(cfg)?;
    let result = (|| {
        cni::install_plugins(cfg)?;
        topology::up(cfg)?;
        let store = Store::open(cfg.store_dir())?;
        for (i, name) in (1u32..).zip(cfg.node_names()) {
            let node = node_object(cfg, i, &name);
            let created = store.create(&node)?;
            let mut with_status = node;
            with_status.metadata = created.metadata;
            store.update_status(&with_status)?;
        }
        store.create(&agent_daemonset())?;
        Ok(())
    })();
    if let Err(e) = result {
        let report = topology::down(&cfg.dir);
        return Err(match report {
            Ok(r) if r.errors.is_empty() => e,
            Ok(r) => LabError::Teardown(format!(
                "{e}; cleaning up also failed: {}",
                r.errors.join("; ")
            )),
            Err(e2) => LabError::Teardown(format!("{e}; cleaning up also failed: {e2}")),
        });
    }
    Ok(())
}

/// Wait until the agent DaemonSet reports every pod updated and ready.
pub fn wait_for_agents(cfg: &LabConfig, timeout: Duration) -> Result<bool, LabError> {
    let store = Store::open(cfg.store_dir())?;
    let deadline = Instant::now() + timeout;
    loop {
        let rev = store.revision()?;
        if let Some(ds) = store.get::<DaemonSet>(LAB_NAMESPACE, AGENT_DAEMONSET)? {
            let st = ds.status.unwrap_or_default();
            let done = st.desired_number_scheduled == cfg.nodes as i32
                && st.number_ready == st.desired_number_scheduled
                && st.updated_number_scheduled == Some(st.desired_number_scheduled)
                && st.observed_generation == ds.metadata.generation;
            if done {
                return Ok(true);
            }
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        store.wait_for_change(rev, Duration::from_millis(500))?;
    }
}

/// Remove the lab: everything in the record (the daemon first, so no
/// launcher pod is started again), then the VMs (launchers and their QEMUs
/// outlive the daemon by design, so a crashed lab can leave them), the
/// nodes' run directories and pod state, the agents' state and PKI.
pub fn destroy(dir: &std::path::Path) -> Result<DownReport, LabError> {
    let mut report = topology::down(dir)?;
    // Probe containers need not name a lab path; their records do.
    super::probe_pods::kill_all(dir);
    let vm_errors = stop_vms(dir);
    // The nodes' launcher run directories (`vms/`) and pod state (`pods/`,
    // `probes/`), the in-process agents' state (`agents/`) and the lab CA
    // (`pki/`).
    for sub in [
        dir.join("vms"),
        dir.join("pods"),
        super::probe_pods::probes_dir(dir),
        dir.join("agents"),
        dir.join("pki"),
    ] {
        if vm_errors.is_empty() && sub.exists() {
            if let Err(e) = std::fs::remove_dir_all(&sub) {
                report
                    .errors
                    .push(format!("removing {}: {e}", sub.display()));
            }
        }
    }
    report.errors.extend(vm_errors);
    // `down` removes the directory when it is empty; agents/ and pki/ were not yet.
    if report.errors.is_empty() {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(report)
}

/// Whether a command line names a path of the lab's VMs or pods: the
/// nodes' run directories (`<dir>/vms/`), the agents' state and
/// certificates (`<dir>/agents/`), a probe pod's state (`<dir>/probes/`:
/// its wrapper names them). Matched on our own directory, never on a
/// process name.
fn names_lab_vm_path(dir: &std::path::Path, cmdline: &str) -> bool {
    ["vms", "agents", "probes"]
        .iter()
        .any(|sub| cmdline.contains(&(dir.join(sub).display().to_string() + "/")))
}

fn cmdline(pid: i32) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/cmdline")).ok()
}

/// Pids of the lab's QEMU processes: their command line names a QMP socket
/// in a run directory of the lab.
pub fn vm_processes(dir: &std::path::Path) -> Vec<i32> {
    other_processes(|pid| {
        cmdline(pid).is_some_and(|c| {
            let c = String::from_utf8_lossy(&c);
            names_lab_vm_path(dir, &c) && c.contains("/qmp.sock")
        })
    })
}

/// Pids of the lab's `mignet launcher` processes (`<mignet> launcher
/// --run-dir` in a node's run directory). The subcommand comes first: the
/// lab kubelet's wrapper passes the same words further down its own
/// command line, and is not a launcher.
pub fn launcher_processes(dir: &std::path::Path) -> Vec<i32> {
    let root = dir.join("vms").display().to_string() + "/";
    other_processes(|pid| {
        cmdline(pid).is_some_and(|c| {
            let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
            matches!(args.get(1..4), Some([sub, flag, run_dir])
                if *sub == b"launcher" && *flag == b"--run-dir" && run_dir.starts_with(root.as_bytes()))
        })
    })
}

/// Every process of the lab's VMs: QEMUs, launchers and the lab kubelet's
/// wrappers around them (all name a path under `vms/` or `agents/`).
pub fn lab_vm_processes(dir: &std::path::Path) -> Vec<i32> {
    other_processes(|pid| {
        cmdline(pid).is_some_and(|c| names_lab_vm_path(dir, &String::from_utf8_lossy(&c)))
    })
}

/// Probe pod containers of the lab at `dir`, whatever their args: their
/// environment names their state under `<dir>/probes/`.
pub fn probe_processes(dir: &std::path::Path) -> Vec<i32> {
    let want = format!(
        "{}={}/",
        super::probe_pods::POD_ENV,
        super::probe_pods::probes_dir(dir).display()
    );
    other_processes(|pid| {
        std::fs::read(format!("/proc/{pid}/environ"))
            .map(|env| {
                env.split(|&b| b == 0)
                    .any(|v| v.starts_with(want.as_bytes()))
            })
            .unwrap_or(false)
    })
}

/// Pids, other than ours, of the processes `matches` accepts. A process
/// may exit between the listing and the read: `matches` then sees an
/// unreadable /proc entry and should say no.
fn other_processes(matches: impl Fn(i32) -> bool) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me && matches(pid))
        .collect()
}

/// TERM, then KILL after 3 s, every lab VM process (launchers stop their
/// QEMU on TERM); returns what could not be stopped.
fn stop_vms(dir: &std::path::Path) -> Vec<String> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let pids = lab_vm_processes(dir);
    for &pid in &pids {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && !lab_vm_processes(dir).is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in lab_vm_processes(dir) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    std::thread::sleep(Duration::from_millis(100));
    lab_vm_processes(dir)
        .into_iter()
        .map(|pid| format!("VM process {pid} survived SIGKILL"))
        .collect()
}

/// What of the lab in `cfg` is still on the machine: namespaces with its
/// prefix (every link of the lab lives in one), its daemon and VM
/// processes, unix sockets bound under its directory, its files. Empty
/// after a clean `down`. TCP listeners live in the agents' namespaces, and
/// a socket cannot outlive every process that holds it, so namespaces plus
/// processes plus socket paths cover what can be left.
pub fn leftovers(cfg: &LabConfig) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{}-", cfg.prefix)) {
                out.push(format!("netns {name}"));
            }
        }
    }
    for pid in daemon_processes(&cfg.dir) {
        out.push(format!("lab daemon process {pid}"));
    }
    for pid in lab_vm_processes(&cfg.dir) {
        out.push(format!("VM process {pid}"));
    }
    for pid in probe_processes(&cfg.dir) {
        out.push(format!("probe pod process {pid}"));
    }
    for path in unix_sockets_under(&cfg.dir) {
        out.push(format!("unix socket {path}"));
    }
    for p in [
        cfg.state_file(),
        cfg.store_dir(),
        cfg.ipam_dir(),
        cfg.cni_bin_dir(),
        cfg.log_file(),
        cfg.dir.join("vms"),
        cfg.dir.join("pods"),
        super::probe_pods::probes_dir(&cfg.dir),
        cfg.dir.join("agents"),
        cfg.dir.join("pki"),
        super::history::history_file(&cfg.dir),
        super::inventory::lock_path(&cfg.dir),
    ] {
        if p.exists() {
            out.push(format!("file {}", p.display()));
        }
    }
    out
}

/// `mignet lab daemon` processes of the lab at `dir` (other than this
/// one): the daemon finds its lab through MIGNET_LAB_DIR, so that is what
/// names it, not a process name another program could share.
pub fn daemon_processes(dir: &std::path::Path) -> Vec<i32> {
    let want = format!("MIGNET_LAB_DIR={}", dir.display());
    other_processes(|pid| {
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            return false;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if !args.windows(2).any(|w| w == [&b"lab"[..], &b"daemon"[..]]) {
            return false;
        }
        std::fs::read(format!("/proc/{pid}/environ"))
            .map(|env| env.split(|&b| b == 0).any(|v| v == want.as_bytes()))
            .unwrap_or(false)
    })
}

/// Paths of the unix sockets, open in this network namespace, bound at or
/// under `dir` (QMP, serial and migration sockets of the lab's VMs and
/// agents), whether or not the file is still there.
pub fn unix_sockets_under(dir: &std::path::Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
    unix_socket_paths(&table, &dir.display().to_string())
}

/// The bound paths in a `/proc/net/unix` table that lie under `prefix`.
fn unix_socket_paths(table: &str, prefix: &str) -> Vec<String> {
    let under = |p: &str| {
        p.strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    table
        .lines()
        .skip(1)
        // Num RefCount Protocol Flags Type St Inode [Path]
        .filter_map(|l| l.split_whitespace().nth(7))
        .filter(|p| under(p))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::unix_socket_paths;

    #[test]
    fn unix_socket_paths_keeps_bound_paths_under_the_directory_only() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 1001 /tmp/lab/agents/node1/qmp.sock
0000000000000000: 00000002 00000000 00000000 0001 03 1002
0000000000000000: 00000002 00000000 00010000 0001 01 1003 /tmp/lab-other/x.sock
0000000000000000: 00000002 00000000 00010000 0001 01 1004 @/tmp/lab/abstract
0000000000000000: 00000002 00000000 00010000 0001 01 1005 /tmp/lab
";
        assert_eq!(
            unix_socket_paths(table, "/tmp/lab"),
            ["/tmp/lab/agents/node1/qmp.sock", "/tmp/lab"]
        );
    }
}
