//! Two-node topology for the agent tests and benchmark, built from scratch in
//! namespaces this process owns (all deleted on Drop, also on panic):
//!
//! ```text
//!   <id>-sw:  br-pod  br-mig          (bridges in a namespace of their own)
//!   <id>-n1:  eth0 (br-pod, 192.168.77.1)  eth1 (br-mig, no address)
//!   <id>-a1:  eth0 (br-pod, 10.244.77.11 = pod IP)  migration0 (macvlan on n1's eth1,
//!             made by OUR CNI plugin binary from the seed NAD, whereabouts-style IPAM)
//!   ... same for node 2
//! ```
//! The CNI binaries are `target/debug/mignet-macvlan` and `mignet-ipam`,
//! installed as `macvlan` / `whereabouts` in a temp CNI_PATH (via the lab's
//! installer), so the seed's NAD config works verbatim.
#![allow(dead_code)]

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use mignet::agent::{AgentSettings, GuestBoot};
use mignet::lab::cni::CniCall;
use mignet::lab::LabConfig;
use mignet_dataplane::certs::{self, ClusterCa, Role, Validity};

/// The seed's NAD config (examples/nad.yaml), verbatim.
pub const SEED_NAD: &str = r#"{"cniVersion":"0.3.1","name":"migration-bridge","type":"macvlan","master":"eth1","mode":"bridge","ipam":{"type":"whereabouts","range":"10.200.5.0/24"}}"#;

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub fn run(cmd: &[&str]) -> String {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(ns: &str, args: &[&str]) {
    let mut cmd = vec!["ip", "-n", ns];
    cmd.extend_from_slice(args);
    run(&cmd);
}

/// A temporary directory, removed on Drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        // Short: VM sockets live below it (unix paths < 108 bytes).
        let p = PathBuf::from("/tmp").join(unique(prefix));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Any QEMU left under it (a failed test) goes too.
        if let Ok(out) = Command::new("find")
            .args([
                self.0.to_str().unwrap_or("/nonexistent"),
                "-name",
                "qemu.pid",
            ])
            .output()
        {
            for pid_file in String::from_utf8_lossy(&out.stdout).lines() {
                let p = Path::new(pid_file);
                if let Ok(vm) = mignet_dataplane::qemu::VmProcess::reattach(
                    "leftover",
                    p,
                    &p.with_file_name("qmp.sock"),
                ) {
                    drop(vm);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One node: its namespace and its agent pod's namespace.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub node_ns: String,
    pub agent_ns: String,
    pub pod_ip: IpAddr,
    /// migration0's address as the CNI result gave it (None if not attached).
    pub migration_ip: Option<IpAddr>,
}

/// The whole topology; namespaces deleted on Drop.
#[derive(Debug)]
pub struct Topology {
    pub id: String,
    pub switch_ns: String,
    pub nodes: Vec<Node>,
    pub tmp: TempDir,
    namespaces: Vec<String>,
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

impl Topology {
    /// `n` nodes; `attach_migration0` runs the CNI plugin for each agent pod.
    pub fn new(prefix: &str, n: u32, attach_migration0: bool) -> Topology {
        let id = unique(prefix);
        let tmp = TempDir::new(&format!("{prefix}t"));
        let mut t = Topology {
            switch_ns: format!("{id}-sw"),
            id: id.clone(),
            nodes: Vec::new(),
            tmp,
            namespaces: Vec::new(),
        };
        let sw = t.switch_ns.clone();
        t.add_ns(&sw);
        for br in ["br-pod", "br-mig"] {
            ip(&sw, &["link", "add", br, "type", "bridge"]);
            ip(&sw, &["link", "set", br, "up"]);
        }
        let cni_bin = if attach_migration0 {
            Some(install_cni(t.tmp.path()))
        } else {
            None
        };
        for i in 1..=n {
            let node_ns = format!("{id}-n{i}");
            let agent_ns = format!("{id}-a{i}");
            t.add_ns(&node_ns);
            t.add_ns(&agent_ns);
            let pod_ip: IpAddr = format!("10.244.77.{}", 10 + i).parse().unwrap();
            for (port, bridge, ns, nic, addr) in [
                (
                    format!("n{i}p"),
                    "br-pod",
                    &node_ns,
                    "eth0",
                    Some(format!("192.168.77.{i}/24")),
                ),
                (format!("n{i}m"), "br-mig", &node_ns, "eth1", None),
                (
                    format!("a{i}p"),
                    "br-pod",
                    &agent_ns,
                    "eth0",
                    Some(format!("{pod_ip}/24")),
                ),
            ] {
                ip(
                    &sw,
                    &[
                        "link", "add", &port, "type", "veth", "peer", "name", nic, "netns", ns,
                    ],
                );
                ip(&sw, &["link", "set", &port, "master", bridge, "up"]);
                if let Some(a) = addr {
                    ip(ns, &["addr", "add", &a, "dev", nic]);
                }
                ip(ns, &["link", "set", nic, "up"]);
            }
            let migration_ip = cni_bin.as_ref().map(|bin| {
                let attached = CniCall {
                    bin_dir: bin,
                    ipam_store_dir: &t.tmp.path().join("ipam"),
                    node_ns: &node_ns,
                    pod_netns: &agent_ns,
                    container_id: &format!("{id}-a{i}"),
                    ifname: "migration0",
                    pod_namespace: "mignet-system",
                    pod_name: &format!("mignet-agent-node{i}"),
                    pod_uid: &format!("uid-{id}-{i}"),
                    config: SEED_NAD,
                }
                .add()
                .unwrap_or_else(|e| panic!("CNI ADD migration0 for node{i}: {e}"));
                let cidr = attached.ips.first().expect("CNI result has an address");
                cidr.split('/').next().unwrap().parse().unwrap()
            });
            t.nodes.push(Node {
                name: format!("node{i}"),
                node_ns,
                agent_ns,
                pod_ip,
                migration_ip,
            });
        }
        t
    }

    fn add_ns(&mut self, ns: &str) {
        run(&["ip", "netns", "add", ns]);
        self.namespaces.push(ns.to_string());
        ip(ns, &["link", "set", "lo", "up"]);
    }
}

/// Install the built CNI binaries as `macvlan` / `whereabouts` (and their own
/// names) in a temp CNI_PATH; fails clearly when they are not built.
fn install_cni(root: &Path) -> PathBuf {
    let cfg = LabConfig {
        dir: root.to_path_buf(),
        prefix: "unused".into(),
        nodes: 0,
    };
    mignet::lab::cni::install_plugins(&cfg).unwrap_or_else(|e| {
        panic!("{e}: build the CNI plugin first: cargo build -p mignet-cni --bins")
    })
}

/// A byte counter of `ifname` inside `ns`.
pub fn if_stat(ns: &str, ifname: &str, stat: &str) -> u64 {
    run(&[
        "ip",
        "netns",
        "exec",
        ns,
        "cat",
        &format!("/sys/class/net/{ifname}/statistics/{stat}"),
    ])
    .trim()
    .parse()
    .unwrap()
}

/// A cluster CA and per-node agent certificate directories.
pub struct Pki {
    pub ca: ClusterCa,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        Pki {
            ca: ClusterCa::generate(name, Validity::days_from_now(1)).unwrap(),
        }
    }

    pub fn agent_dir(&self, root: &Path, node: &str) -> PathBuf {
        let dir = root.join(format!("certs-{node}"));
        let leaf = self
            .ca
            .issue(Role::Agent, node, Validity::days_from_now(1))
            .unwrap();
        certs::write_tls_dir(&dir, self.ca.cert_pem(), &leaf).unwrap();
        dir
    }
}

/// Agent settings for `node` of `topo`, certificates from `pki`.
pub fn agent_settings(
    topo: &Topology,
    node: &Node,
    pki: &Pki,
    boot: &GuestBoot,
    multifd: Option<u8>,
) -> AgentSettings {
    let root = topo.tmp.path();
    AgentSettings {
        node_name: node.name.clone(),
        pod_ip: node.pod_ip,
        migration_network: Some("mignet-system/my-secondary-network".parse().unwrap()),
        migration_interface: "migration0".into(),
        prefer_family: None,
        netns: Some(node.agent_ns.clone()),
        cert_dir: pki.agent_dir(root, &node.name),
        allow_tls12: false,
        state_dir: root.join(format!("st-{}", node.name)),
        boot: boot.clone(),
        multifd_channels: multifd,
        shutdown_grace: std::time::Duration::ZERO,
        launcher_root: None,
    }
}

pub fn guest_boot() -> GuestBoot {
    let image = mignet_dataplane::qemu::testbed::GuestImage::ensure().expect("guest image");
    GuestBoot::new(image.kernel, image.initrd)
}

/// All `tick N` numbers on a serial console.
pub fn ticks(serial: &str) -> Vec<u64> {
    mignet_dataplane::qemu::testbed::ticks(serial)
}

/// Wait until `read()` shows a tick greater than `after`.
pub async fn wait_tick_after(
    read: impl Fn() -> String,
    after: Option<u64>,
    timeout: std::time::Duration,
) -> u64 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let out = read();
        if let Some(&t) = ticks(&out).last() {
            if after.is_none_or(|a| t > a) {
                return t;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no tick after {after:?} within {timeout:?}; serial:\n{out}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Plays the migration controller's label step for tests that play the
/// controller by hand: every 50 ms, each VMI and VMIM gets the node labels
/// its status calls for (`mignet::backend::protocol::vmi_node_labels`,
/// `vmim_node_labels`), by which the agents select what they read. Runs
/// until its task is aborted; a lost race is redone next round.
pub async fn keep_node_labels<B: mignet::backend::Backend>(b: B) {
    use mignet::api::{VirtualMachineInstance, VirtualMachineInstanceMigration};
    use mignet::backend::protocol::{set_labels, vmi_node_labels, vmim_node_labels};
    loop {
        let vmis: Vec<VirtualMachineInstance> = b.list(None).await.unwrap_or_default();
        for v in &vmis {
            let mut after = v.clone();
            if set_labels(&mut after.metadata.labels, &vmi_node_labels(v)) {
                let _ = b.patch_object(v, &after).await;
            }
        }
        let vmims: Vec<VirtualMachineInstanceMigration> = b.list(None).await.unwrap_or_default();
        for m in &vmims {
            let mut after = m.clone();
            if set_labels(&mut after.metadata.labels, &vmim_node_labels(m)) {
                let _ = b.patch_object(m, &after).await;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
