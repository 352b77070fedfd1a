//! The reliability suites' bed (issue 15): a lab with the seed's network,
//! VirtualMachines of real QEMU/TCG guests, migrations driven through the
//! store as the controller sees them, config changes through `mignet
//! edit-config` as a user makes them, and one check of the invariants every
//! step must leave behind:
//! - each VM's VMI is Running on exactly one node, with exactly one QEMU
//!   (on that node, the child of a live launcher), its guest still ticking;
//! - no launcher pod other than that one is still Pending or Running;
//! - no migration socket is left in any run directory, no TCP listener
//!   beyond each agent's idle set, no IPAM allocation beyond the agents';
//! - every VMIM is final, and a Failed one has a reason in words.
//!
//! Used by `lab_back_to_back`, `lab_faults` and `lab_soak`.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use mignet::api::{
    MigrationPhase, VirtualMachineInstance, VirtualMachineInstanceMigration, VmiPhase,
};
use mignet::lab::lifecycle;
use mignet::store::Store;
use serde_json::{json, Value};

use super::lab_common::*;

pub const NS: &str = "mignet-system";

/// The lab, its store and what was true when it was idle.
pub struct Bed {
    pub lab: Lab,
    pub store: Store,
    pub nodes: u32,
    /// TCP listeners of each agent namespace before any migration.
    idle_listeners: BTreeMap<String, BTreeSet<String>>,
    vmim_serial: std::cell::Cell<u32>,
}

/// How a migration ended.
#[derive(Debug, Clone)]
pub struct End {
    pub name: String,
    pub phase: MigrationPhase,
    /// `status.migrationState.failureReason`, else the Failed condition's
    /// message.
    pub reason: String,
    pub source: Option<String>,
    pub target: Option<String>,
    /// From seeing the VMIM Running to seeing it final.
    pub running_for: Option<Duration>,
}

impl End {
    pub fn succeeded(&self) -> bool {
        self.phase == MigrationPhase::Succeeded
    }
}

/// A guest: its VM name and memory shape.
#[derive(Debug, Clone, Copy)]
pub struct Guest {
    pub memory_mib: u32,
    /// Non-zero bytes the guest writes at boot (what a migration moves).
    pub fill_mib: u32,
    /// Re-dirtied per second while it runs.
    pub dirty_mib_s: u32,
}

impl Bed {
    /// `lab up` with `nodes`, the seed's NAD, and the seed's HyperConverged
    /// with `limits` (edit-config changes) applied on top.
    pub fn up(tag: &str, nodes: u32, limits: &[&str]) -> Bed {
        Self::up_with(tag, nodes, limits, |_| {})
    }

    /// As [`Bed::up`], with `prepare` run on the lab's identity before
    /// `lab up` (lab_faults mounts a filesystem of its own at its directory).
    pub fn up_with(tag: &str, nodes: u32, limits: &[&str], prepare: impl FnOnce(&Lab)) -> Bed {
        let lab = Lab::new(tag);
        prepare(&lab);
        up_with_seed_network(&lab, nodes);
        let store = Store::open(lab.dir.join("store")).unwrap();
        let bed = Bed {
            lab,
            store,
            nodes,
            idle_listeners: BTreeMap::new(),
            vmim_serial: std::cell::Cell::new(0),
        };
        if !limits.is_empty() {
            bed.edit(limits);
        }
        bed.wait_network();
        let mut bed = bed;
        bed.idle_listeners = bed.listeners();
        bed
    }

    pub fn node_names(&self) -> Vec<String> {
        (1..=self.nodes).map(|i| format!("node{i}")).collect()
    }

    pub fn agent_ns(&self, node: &str) -> String {
        self.lab.ns(&format!("agent-{node}"))
    }

    /// `mignet edit-config` as a user types it.
    pub fn edit(&self, changes: &[&str]) {
        let mut args = vec!["edit-config"];
        args.extend_from_slice(changes);
        self.lab.ok(&args);
    }

    /// Every agent has migration0 and the agent DaemonSet is rolled out.
    pub fn wait_network(&self) {
        wait_for(
            "every agent ready with migration0",
            Duration::from_secs(120),
            || {
                let ds = self.lab.ok(&[
                    "get",
                    "ds",
                    "mignet-agent",
                    "-o",
                    "jsonpath={.status.numberReady}/{.status.updatedNumberScheduled}",
                ]);
                let n = self.nodes;
                (ds == format!("{n}/{n}")).then_some(())?;
                self.node_names()
                    .iter()
                    .all(|node| {
                        ipv4(&self.agent_ns(node), "migration0").is_some_and(|a| !a.is_empty())
                    })
                    .then_some(())
            },
        );
    }

    /// Create VirtualMachine `name` (runStrategy Always, LiveMigrate) and
    /// wait for its guest to have filled its memory.
    pub fn vm(&self, name: &str, g: Guest) {
        let vm = json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": NS},
            "spec": {
                "runStrategy": "Always",
                "template": {
                    "metadata": {
                        "labels": {"kubevirt.io/vm": name},
                        "annotations": {
                            "mignet.io/guest-kernel-args": format!(
                                "mignet.fill_mib={} mignet.dirty_mib_s={}",
                                g.fill_mib, g.dirty_mib_s
                            )
                        }
                    },
                    "spec": {
                        "evictionStrategy": "LiveMigrate",
                        "domain": {
                            "cpu": {"model": "host-model", "cores": 1},
                            "memory": {"guest": format!("{}Mi", g.memory_mib)}
                        }
                    }
                }
            }
        });
        self.store.create_value(vm).unwrap();
    }

    /// Wait for every named VM to run a guest that has filled its memory.
    pub fn wait_booted(&self, names: &[&str]) {
        for name in names {
            wait_for(&format!("{name} Running"), Duration::from_secs(180), || {
                self.placement(name)
                    .filter(|(_, p)| *p == VmiPhase::Running)
            });
            wait_for(
                &format!("{name}'s guest memory filled"),
                Duration::from_secs(180),
                || self.serial(name).contains("mignet: ready").then_some(()),
            );
        }
    }

    pub fn vmi(&self, name: &str) -> Option<VirtualMachineInstance> {
        self.store
            .get::<VirtualMachineInstance>(NS, name)
            .ok()
            .flatten()
    }

    /// The VMI uids of `names`: a VM restarted by its VirtualMachine (its
    /// guest lost) has a new one, which `check` alone does not see.
    pub fn uids(&self, names: &[&str]) -> BTreeMap<String, String> {
        names
            .iter()
            .map(|n| {
                let uid = self.vmi(n).and_then(|v| v.metadata.uid).unwrap_or_default();
                (n.to_string(), uid)
            })
            .collect()
    }

    /// Every VM of `uids` still runs the same VMI (never restarted), except
    /// for one known fault outside mignet.
    /// Debian's QEMU 7.2 under TCG sometimes loses guest memory writes
    /// during a multi-pass precopy, and the guest then panics on the target
    /// right after it arrives (RELIABILITY.md). The launcher reports that as
    /// exit 4 with the kernel's panic line, and the VirtualMachine restarts
    /// the guest. Each such replacement is counted in `crashes` and the VM's
    /// uid in `uids` is updated. Any other replacement is an error: one
    /// without a new panic of that VM in the daemon's log.
    pub fn same_vmis_but_tcg_crashes(
        &self,
        uids: &mut BTreeMap<String, String>,
        crashes: &mut BTreeMap<String, usize>,
    ) -> Result<(), String> {
        let names: Vec<String> = uids.keys().cloned().collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let now = self.uids(&refs);
        let log = std::fs::read_to_string(self.lab.dir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        for n in &names {
            if now[n] == uids[n] {
                continue;
            }
            // The controller's "VM ended" line for this VM with the
            // launcher's exit 4, then the console's panic line.
            let panics = (0..lines.len())
                .filter(|&i| {
                    lines[i].contains(&format!("VM ended vmi={NS}/{n} "))
                        && lines[i].contains("launcher exited with code 4")
                        && lines[i + 1..(i + 4).min(lines.len())]
                            .iter()
                            .any(|l| l.contains("Kernel panic - not syncing"))
                })
                .count();
            let counted = crashes.entry(n.clone()).or_default();
            if panics > *counted {
                *counted = panics;
                uids.insert(n.clone(), now[n].clone());
                continue;
            }
            return Err(format!(
                "{n}: its VMI was replaced ({} -> {}): the guest was lost and restarted\n--- daemon log:\n{}",
                uids[n],
                now[n],
                self.daemon_log_tail(60)
            ));
        }
        Ok(())
    }

    /// (node, phase) of VMI `name`.
    pub fn placement(&self, name: &str) -> Option<(String, VmiPhase)> {
        let st = self.vmi(name)?.status?;
        Some((st.node_name?, st.phase?))
    }

    pub fn vmim(&self, name: &str) -> Option<VirtualMachineInstanceMigration> {
        self.store
            .get::<VirtualMachineInstanceMigration>(NS, name)
            .ok()
            .flatten()
    }

    /// Create a VMIM for `vm`; returns its name.
    pub fn migrate(&self, vm: &str) -> String {
        let n = self.vmim_serial.get() + 1;
        self.vmim_serial.set(n);
        let name = format!("mig-{vm}-{n}");
        self.store
            .create_value(json!({
                "apiVersion": "kubevirt.io/v1",
                "kind": "VirtualMachineInstanceMigration",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"vmiName": vm}
            }))
            .unwrap();
        name
    }

    /// Delete a VMIM (a cancel when it still runs).
    pub fn cancel(&self, vmim: &str) {
        let _ = self.lab.run(&["delete", "vmim", vmim, "-n", NS]);
    }

    pub fn phase(&self, vmim: &str) -> Option<MigrationPhase> {
        self.vmim(vmim)?.status?.phase
    }

    /// Wait until `vmim` is Running (the transfer started); when it was
    /// seen so.
    pub fn wait_running(&self, vmim: &str, timeout: Duration) -> Result<Instant, End> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.phase(vmim) {
                Some(MigrationPhase::Running) => return Ok(Instant::now()),
                Some(MigrationPhase::Succeeded | MigrationPhase::Failed) => {
                    return Err(self.end_of(vmim, None))
                }
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "{vmim} not Running after {timeout:?}: {:#?}",
                self.vmim(vmim).and_then(|m| m.status)
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Wait until `vmim` is final.
    pub fn wait_end(&self, vmim: &str, timeout: Duration) -> End {
        let deadline = Instant::now() + timeout;
        let mut running_since = None;
        loop {
            match self.phase(vmim) {
                Some(MigrationPhase::Succeeded | MigrationPhase::Failed) => {
                    return self.end_of(vmim, running_since.map(|t: Instant| t.elapsed()))
                }
                Some(MigrationPhase::Running) if running_since.is_none() => {
                    running_since = Some(Instant::now())
                }
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "{vmim} not final after {timeout:?}: {:#?}\n--- daemon log (tail):\n{}",
                self.vmim(vmim).and_then(|m| m.status),
                self.daemon_log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn end_of(&self, vmim: &str, running_for: Option<Duration>) -> End {
        let m = self.vmim(vmim).expect("the VMIM");
        let st = m.status.unwrap_or_default();
        let ms = st.migration_state.unwrap_or_default();
        let condition = st
            .conditions
            .iter()
            .filter(|c| c.status == "True" || c.type_ == "Failed")
            .filter_map(|c| c.message.clone())
            .next_back()
            .unwrap_or_default();
        End {
            name: vmim.to_owned(),
            phase: st.phase.unwrap_or(MigrationPhase::Pending),
            reason: ms.failure_reason.clone().unwrap_or(condition),
            source: ms.source_node.clone(),
            target: ms.target_node.clone(),
            running_for,
        }
    }

    pub fn daemon_log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(self.lab.dir.join("daemon.log")).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// QEMU processes of VM `name`: (pid, node, run dir).
    pub fn qemus(&self, name: &str) -> Vec<(i32, String, PathBuf)> {
        let vms = self.lab.dir.join("vms");
        let needle = format!("{NS}_virt-launcher-{name}-");
        lifecycle::vm_processes(&self.lab.dir)
            .into_iter()
            .filter_map(|pid| {
                let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                let at = cmd.find(&format!("{}/", vms.display()))?;
                let rest = &cmd[at + vms.display().to_string().len() + 1..];
                let mut parts = rest.split('/');
                let node = parts.next()?.to_owned();
                let dir = parts.next()?.to_owned();
                dir.starts_with(&needle)
                    .then(|| (pid, node.clone(), vms.join(&node).join(dir)))
            })
            .collect()
    }

    /// TCP listeners (`addr:port`) in each agent namespace.
    pub fn listeners(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.node_names()
            .into_iter()
            .map(|node| {
                let ns = self.agent_ns(&node);
                let out = Command::new("ip")
                    .args(["netns", "exec", &ns, "ss", "-Htln"])
                    .output()
                    .unwrap();
                let set = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| l.split_whitespace().nth(3).map(str::to_owned))
                    .collect();
                (node, set)
            })
            .collect()
    }

    /// Unix sockets bound in the run directories of the lab's VMs other
    /// than a live launcher's own (`qmp.sock`, `launcher-qmp.sock`, the
    /// serial console): a migration's proxy sockets must go with it.
    fn stray_sockets(&self) -> Vec<String> {
        let vms = self.lab.dir.join("vms");
        let mut found = BTreeSet::new();
        let mut tables = vec![std::fs::read_to_string("/proc/net/unix").unwrap_or_default()];
        for node in self.node_names() {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &self.lab.ns(&node),
                    "cat",
                    "/proc/net/unix",
                ])
                .output()
                .unwrap();
            tables.push(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let prefix = format!("{}/", vms.display());
        for t in &tables {
            for path in t.lines().filter_map(|l| l.split_whitespace().nth(7)) {
                if let Some(rest) = path.strip_prefix(&prefix) {
                    let file = rest.rsplit('/').next().unwrap_or("");
                    let dir = Path::new(path).parent().unwrap();
                    let own =
                        ["qmp.sock", mignet::launcher::LAUNCHER_QMP, "serial.sock"].contains(&file);
                    if !(own && mignet::launcher::launcher_alive(dir)) {
                        found.insert(path.to_owned());
                    }
                }
            }
        }
        found.into_iter().collect()
    }

    /// IPAM allocations of the lab: every pool file under `<dir>/ipam`
    /// (`{"allocations": {ip: owner}}`); one per agent pod is right.
    fn ipam_allocations(&self) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.lab.dir.join("ipam"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(bytes) = std::fs::read(e.path()) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            if let Some(m) = v["allocations"].as_object() {
                out.extend(m.iter().map(|(ip, owner)| format!("{ip} {owner}")));
            }
        }
        out.sort();
        out
    }

    /// The invariants after a step, for the VMs `names`; waits up to
    /// `settle` for them to hold (a failed migration's cleanup and a
    /// restarted VM take a moment) and returns what still does not hold.
    pub fn check(&self, names: &[&str], settle: Duration) -> Result<Placement, String> {
        let deadline = Instant::now() + settle;
        loop {
            match self.check_once(names) {
                Ok(p) => return Ok(p),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    fn check_once(&self, names: &[&str]) -> Result<Placement, String> {
        let mut placement = Placement::default();
        for name in names {
            let (node, phase) = self
                .placement(name)
                .ok_or_else(|| format!("{name}: no VMI or no node"))?;
            if phase != VmiPhase::Running {
                return Err(format!("{name}: VMI {phase:?} on {node}"));
            }
            let q = self.qemus(name);
            if q.len() != 1 {
                return Err(format!(
                    "{name}: {} QEMU processes {:?} (want exactly one, on {node})",
                    q.len(),
                    q.iter().map(|(p, n, _)| (p, n)).collect::<Vec<_>>()
                ));
            }
            let (pid, qnode, dir) = &q[0];
            if *qnode != node {
                return Err(format!(
                    "{name}: VMI on {node} but its QEMU {pid} on {qnode}"
                ));
            }
            if !mignet::launcher::launcher_alive(dir) {
                return Err(format!("{name}: no live launcher holds {}", dir.display()));
            }
            let uid = self
                .vmi(name)
                .and_then(|v| v.metadata.uid)
                .unwrap_or_default();
            let live: Vec<_> = launcher_pods(&self.store)
                .into_iter()
                .filter(|(p, _, phase)| {
                    p.metadata.labels.as_ref().unwrap()["kubevirt.io/created-by"] == uid
                        && (phase == "Running" || phase == "Pending" || phase.is_empty())
                })
                .map(|(p, n, phase)| (p.metadata.name.unwrap_or_default(), n, phase))
                .collect();
            if live.len() != 1 || live[0].1.as_deref() != Some(node.as_str()) {
                return Err(format!(
                    "{name}: live launcher pods {live:?} (want one, on {node})"
                ));
            }
            placement.nodes.insert(name.to_string(), node.clone());
            placement.qemu.insert(name.to_string(), *pid);
        }
        let stray = self.stray_sockets();
        if !stray.is_empty() {
            return Err(format!("sockets left behind: {stray:?}"));
        }
        let now = self.listeners();
        if now != self.idle_listeners {
            return Err(format!(
                "TCP listeners {now:?}, idle set {:?}",
                self.idle_listeners
            ));
        }
        let ipam = self.ipam_allocations();
        if ipam.len() != self.nodes as usize {
            return Err(format!(
                "IPAM allocations {ipam:?}: want one per agent ({})",
                self.nodes
            ));
        }
        for m in self
            .store
            .list::<VirtualMachineInstanceMigration>(Some(NS))
            .unwrap()
        {
            let name = m.metadata.name.clone().unwrap_or_default();
            let end = self.end_of(&name, None);
            match end.phase {
                MigrationPhase::Succeeded => {}
                MigrationPhase::Failed if !end.reason.trim().is_empty() => {}
                MigrationPhase::Failed => return Err(format!("{name}: Failed without a reason")),
                p => return Err(format!("{name}: still {p:?}")),
            }
        }
        Ok(placement)
    }

    /// The serial console of VM `name`'s one QEMU (the run directory of its
    /// live launcher; older run directories of the VM on the same node keep
    /// their consoles until their pods go).
    pub fn serial(&self, name: &str) -> String {
        let q = self.qemus(name);
        match q.as_slice() {
            [(_, _, dir)] => std::fs::read(dir.join("serial.log"))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
            _ => String::new(),
        }
    }

    /// [`Self::ticking`], but for the known TCG fault showing as a hang.
    /// QEMU 7.2's lost precopy writes (RELIABILITY.md) corrupt the guest
    /// kernel on the target: usually it panics (QEMU exits, the VMI fails,
    /// [`Self::same_vmis_but_tcg_crashes`] counts it), sometimes it reports
    /// a kernel fault on arrival (`BUG: scheduling while atomic`, an Oops)
    /// and stops. Only a guest that stopped ticking AND whose serial on the
    /// target (the run directory of its arrival) carries such a kernel
    /// fault line is counted, as `"<vm> (hang)"` in `crashes`, against the
    /// same budget as the panics; so is one whose console shows nothing since
    /// it arrived while its vCPU keeps at least half a core busy (the fault
    /// struck on an earlier hop, whose console went with its pod); it is then restarted (its VMI deleted,
    /// the VirtualMachine makes a new one) so the later rounds keep every
    /// VM, and its uid in `uids` follows. A guest that stops without a
    /// kernel fault line is still an error.
    pub fn ticking_but_tcg_faults(
        &self,
        names: &[&str],
        p: &Placement,
        uids: &mut BTreeMap<String, String>,
        crashes: &mut BTreeMap<String, usize>,
    ) -> Result<(), String> {
        const KERNEL_FAULT: [&str; 5] = [
            "BUG: ",
            "Oops",
            "general protection fault",
            "invalid opcode",
            "Kernel panic",
        ];
        for name in names {
            let Err(e) = self.ticking(&[name], p) else {
                continue;
            };
            let serial = self.serial(name);
            let faulted = KERNEL_FAULT.iter().any(|f| serial.contains(f));
            // The same fault on an earlier hop leaves its line on a console
            // that went with that pod; the guest then arrives spinning: its
            // vCPU burns CPU and it prints nothing (seen in CI: a 94 MB VM
            // took 45 s to move, 16 s of CPU on arrival, no tick). A guest
            // that is idle or paused is not this, and stays an error.
            let busy = p
                .qemu
                .get(*name)
                .and_then(|pid| vcpu_busy(*pid, Duration::from_secs(5)));
            let spinning = !faulted
                && busy.is_some_and(|b| b >= 0.5)
                && last_tick(&self.serial(name)).is_none();
            if !faulted && !spinning {
                return Err(format!(
                    "{e}\n(QEMU busy {busy:?} of a core over 5 s: not the TCG fault's forms)"
                ));
            }
            let how = if faulted {
                "after a kernel fault on arrival"
            } else {
                "spinning silently on arrival (its vCPU busy, no output)"
            };
            eprintln!(
                "{name}: the guest stopped {how} (QEMU 7.2 TCG precopy fault); restarting it: {e}"
            );
            *crashes.entry(format!("{name} (hang)")).or_default() += 1;
            let old = uids.get(*name).cloned().unwrap_or_default();
            self.lab.ok(&["delete", "vmi", name, "-n", NS]);
            let uid = wait_for(
                &format!("{name} restarted by its VirtualMachine"),
                Duration::from_secs(180),
                || {
                    let v = self.vmi(name)?;
                    let uid = v.metadata.uid.clone()?;
                    (uid != old && v.status?.phase == Some(VmiPhase::Running)).then_some(uid)
                },
            );
            wait_for(
                &format!("{name}'s new guest memory filled"),
                Duration::from_secs(180),
                || self.serial(name).contains("mignet: ready").then_some(()),
            );
            uids.insert(name.to_string(), uid);
        }
        Ok(())
    }

    /// The guests of `names` print a tick after the one they printed now.
    pub fn ticking(&self, names: &[&str], p: &Placement) -> Result<(), String> {
        for name in names {
            let node = &p.nodes[*name];
            let before = last_tick(&self.serial(name));
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let now = last_tick(&self.serial(name));
                if now.is_some() && now > before {
                    break;
                }
                if Instant::now() > deadline {
                    let serial = self.serial(name);
                    let tail: String = serial
                        .chars()
                        .rev()
                        .take(400)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    let stat: Vec<String> = self
                        .qemus(name)
                        .iter()
                        .map(|(pid, _, dir)| {
                            format!(
                                "{pid} {} stat {:?} launcher.json {:?}",
                                dir.display(),
                                std::fs::read_to_string(format!("/proc/{pid}/stat")).ok(),
                                std::fs::read_to_string(dir.join("launcher.json")).ok()
                            )
                        })
                        .collect();
                    // The daemon's last words about this VM say whether its
                    // last migration completed and who received it (a silent
                    // guest on arrival was seen once in CI, without them).
                    let log: Vec<String> = self
                        .daemon_log_tail(400)
                        .lines()
                        .filter(|l| {
                            l.contains(&format!("/{name}")) || l.contains(&format!("-{name}-"))
                        })
                        .map(str::to_owned)
                        .collect();
                    let log = log[log.len().saturating_sub(25)..].join("\n");
                    return Err(format!(
                        "{name}: the guest on {node} did not tick for 20 s (last {before:?}); \
                         QEMU {stat:?}; serial ({} bytes) ends {tail:?}\n--- daemon log about {name}:\n{log}",
                        serial.len()
                    ));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        Ok(())
    }
}

/// Where each VM runs, and its QEMU.
#[derive(Debug, Default, Clone)]
pub struct Placement {
    pub nodes: BTreeMap<String, String>,
    pub qemu: BTreeMap<String, i32>,
}

/// The share of `window` that QEMU `pid` spent on a CPU (utime + stime of
/// the whole process: without `-name debug-threads=on` its vCPU threads are
/// not named, and an idle QEMU's other threads use next to nothing).
fn vcpu_busy(pid: i32, window: Duration) -> Option<f64> {
    fn ticks(pid: i32) -> Option<u64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the name start at field 3 (state): utime is field
        // 14, stime 15.
        let f: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    }
    // SAFETY: sysconf reads a constant of the running system.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let before = ticks(pid)?;
    std::thread::sleep(window);
    let after = ticks(pid)?;
    Some(after.saturating_sub(before) as f64 / hz / window.as_secs_f64())
}

/// A small seeded PRNG (xorshift64*): the soak's order is reproducible
/// from the seed it prints.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}
