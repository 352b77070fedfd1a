//! Lab mode: a whole cluster's worth of networking on one machine, inside
//! network namespaces the lab creates, records and removes.
//!
//! - [`topology`]: the switch namespace (bridges `br-pod`, `br-mig`) and the
//!   node namespaces (`eth0` on the pod/node network, `eth1` on the
//!   migration VLAN).
//! - [`daemon`] runs the manager's network rollout
//!   ([`crate::network::reconcile`], the same pass as in a cluster) against
//!   the local store.
//! - [`agent_pods`]: kubelet + Multus for the agent DaemonSet: one agent pod
//!   (a namespace) per node, secondary networks attached by exec'ing the CNI
//!   binaries the NAD names, rolled one node at a time on change.
//! - [`in_process_agents`]: the real node agent, one per agent pod, run in
//!   this process (the kubelet's agent hook).
//! - [`history`]: the kubelet's record of every agent pod stop/start, read
//!   to check a roll kept at most one agent down.
//! - [`placement`]: kube-scheduler for launcher pods: binds each to the
//!   least-loaded node that fits it, or says why none does.
//! - [`launcher_pods`]: the kubelet for launcher pods: runs `mignet launcher`
//!   for each pod bound to a lab node and reports its status.
//! - [`probe_pods`]: kubelet + Multus for the network pre-flight's probe
//!   pods: a namespace each, the NAD's interface, `mignet probe` in it.
//! - [`daemon`]: the loop that runs the above (and, in full, the migration
//!   controller and the node agents) until stopped.
//! - [`inventory`]: the record of everything created, read by `lab down`.
//!
//! Above the lab: `crate::demo` (`mignet lab demo`, the seed's story,
//! checked step by step) and `crate::cli::lab_status` (`mignet lab status`).
//!
//! See `README.md` in this directory for the process model.

pub mod agent_pods;
pub mod annotation;
pub mod cni;
pub mod daemon;
pub mod history;
pub mod in_process_agents;
pub mod inventory;
pub mod launcher_pods;
pub mod lifecycle;
pub mod placement;
pub mod probe_pods;
pub mod topology;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;

use crate::network::ClusterNetworks;
use crate::store::{Store, StoreError};

/// Namespace of every lab object: HCO, NADs, the agent DaemonSet and pods,
/// and the default for VMs (the seed's files use it).
pub const LAB_NAMESPACE: &str = "mignet-system";
/// The HyperConverged the lab's rollout follows (as `--hyperconverged`).
pub const HYPERCONVERGED: &str = "kubevirt-hyperconverged";
/// The agent DaemonSet whose pod template carries the network annotation.
pub const AGENT_DAEMONSET: &str = "mignet-agent";
/// Annotation on Nodes and agent Pods: the network namespace path.
pub const NETNS_ANNOTATION: &str = "mignet.io/netns";
/// Default state directory.
pub const DEFAULT_DIR: &str = "/var/lib/mignet/lab";
/// Default namespace-name prefix.
pub const DEFAULT_PREFIX: &str = "mignet-lab";

/// Where the lab lives and what its namespaces are called. `dir` and
/// `prefix` come from `$MIGNET_LAB_DIR` / `$MIGNET_LAB_PREFIX` so tests and a
/// user's own lab never collide.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabConfig {
    pub dir: PathBuf,
    pub prefix: String,
    pub nodes: u32,
}

impl LabConfig {
    pub fn from_env(nodes: u32) -> Self {
        let dir = std::env::var_os("MIGNET_LAB_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR));
        let prefix = std::env::var("MIGNET_LAB_PREFIX")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
        Self { dir, prefix, nodes }
    }

    /// The lab directory named by the environment (for verbs that only need
    /// the store).
    pub fn dir_from_env() -> PathBuf {
        Self::from_env(0).dir
    }

    pub fn node_names(&self) -> Vec<String> {
        (1..=self.nodes).map(|i| format!("node{i}")).collect()
    }

    pub fn switch_ns(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    pub fn node_ns(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    pub fn agent_ns(&self, node: &str) -> String {
        format!("{}-agent-{node}", self.prefix)
    }

    pub fn store_dir(&self) -> PathBuf {
        store_dir(&self.dir)
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.join("ipam")
    }

    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir.join("cni-bin")
    }

    pub fn state_file(&self) -> PathBuf {
        state_file(&self.dir)
    }

    pub fn log_file(&self) -> PathBuf {
        self.dir.join("daemon.log")
    }
}

/// The lab node's hostPath for launcher run directories (what
/// `/var/run/mignet/vms` is on a cluster node): `<dir>/vms/<node>`. Kept
/// short: the agent binds sockets in the run directories, and a unix socket
/// path holds 107 bytes.
pub fn node_vms_dir(lab_dir: &Path, node: &str) -> PathBuf {
    lab_dir.join("vms").join(node)
}

/// Where the lab writes the `ip:port` of node `node`'s agent `/metrics`
/// (on the host's loopback, so scrapes do not show up on the pod's eth0).
pub fn agent_metrics_addr_file(lab_dir: &Path, node: &str) -> PathBuf {
    lab_dir.join("agents").join(node).join("metrics.addr")
}

/// Where the lab daemon writes the `ip:port` of the controller's `/metrics`.
pub fn controller_metrics_addr_file(lab_dir: &Path) -> PathBuf {
    lab_dir.join("agents").join("controller.metrics.addr")
}

/// Serves `metrics` on the host's loopback and records the bound address in
/// `file`; the server stops when the returned guard drops.
pub(crate) async fn serve_metrics(
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    file: PathBuf,
) -> Result<AbortOnDrop, String> {
    let (addr, task) = crate::http::serve(([127, 0, 0, 1], 0).into(), metrics)
        .await
        .map_err(|e| e.to_string())?;
    let guard = AbortOnDrop(task.abort_handle());
    if let Some(d) = file.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    mignet_dataplane::certs::write_atomic(&file, addr.to_string().as_bytes(), 0o644)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(guard)
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn store_dir(lab_dir: &Path) -> PathBuf {
    lab_dir.join("store")
}

pub fn state_file(lab_dir: &Path) -> PathBuf {
    lab_dir.join("lab.json")
}

pub fn netns_path(ns: &str) -> PathBuf {
    Path::new("/var/run/netns").join(ns)
}

/// Open the store of the lab in `dir`; fails when no lab was set up there
/// (so a typo in `$MIGNET_LAB_DIR` does not start an empty store).
pub fn open_store(dir: &Path) -> Result<Store, LabError> {
    if !state_file(dir).exists() {
        return Err(LabError::NotUp {
            dir: dir.to_owned(),
        });
    }
    Ok(Store::open(store_dir(dir))?)
}

/// The lab's address plan.
///
/// - node network (br-pod): `192.168.10.<i>/24` on each node's `eth0`;
/// - pod network 10.244.0.0/16, node `i` owning `10.244.<i>.0/24`: the node
///   end of an agent pod's veth is `.1`, the pod's `eth0` is `.2`; nodes route
///   each other's pod subnets over the node network (host-gw style), so no
///   address ever lands in the root namespace;
/// - service network 10.96.0.0/12 (nothing listens; it only takes part in the
///   migration-range overlap check, as in a cluster);
/// - the migration VLAN (br-mig) carries no lab address: `eth1` is the
///   macvlan master and the NAD's IPAM gives `migration0` its address.
pub mod plan {
    use super::*;

    pub const NODE_NETWORK: &str = "192.168.10.0/24";
    pub const POD_NETWORK: &str = "10.244.0.0/16";
    pub const SERVICE_NETWORK: &str = "10.96.0.0/12";

    pub fn node_ip(index: u32) -> Ipv4Addr {
        Ipv4Addr::new(192, 168, 10, index as u8)
    }

    pub fn pod_subnet(index: u32) -> String {
        format!("10.244.{index}.0/24")
    }

    pub fn pod_gateway(index: u32) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, index as u8, 1)
    }

    pub fn agent_ip(index: u32) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, index as u8, 2)
    }

    pub fn cluster_networks() -> ClusterNetworks {
        let n = |s: &str| s.parse::<IpNetwork>().expect("constant CIDR");
        ClusterNetworks {
            pod: vec![n(POD_NETWORK), n(NODE_NETWORK)],
            service: vec![n(SERVICE_NETWORK)],
        }
    }

    /// Index of `nodeN`.
    pub fn node_index(node: &str) -> Option<u32> {
        node.strip_prefix("node")?
            .parse()
            .ok()
            .filter(|i| (1..=250).contains(i))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("no lab in {dir} (run `mignet lab up`, or set MIGNET_LAB_DIR)")]
    NotUp { dir: PathBuf },
    #[error("a lab is already up in {dir} (run `mignet lab down` first)")]
    AlreadyUp { dir: PathBuf },
    #[error("a lab daemon already runs for {dir} (pids {pids:?}): two would both run the controller, the kubelet and the agents; stop it first")]
    DaemonRunning { dir: PathBuf, pids: Vec<i32> },
    #[error("network namespace {name} already exists and is not this lab's (a leftover? remove it with `ip netns del {name}`)")]
    NamespaceExists { name: String },
    #[error("{nodes} nodes requested; the lab supports 1 to 250")]
    NodeCount { nodes: u32 },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("running `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin binary {name} not found in {searched} (build it with `cargo build -p mignet-cni`, or set MIGNET_CNI_BIN_DIR)")]
    CniBinaryMissing { name: String, searched: String },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("lab state file {path} is corrupt")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cni(#[from] cni::CniCallError),
    #[error("entering network namespace")]
    Netns(#[from] mignet_cni::netns::NetnsError),
    #[error("node {node:?} is not a lab node (expected node1..node250)")]
    UnknownNode { node: String },
    #[error("{0}")]
    Teardown(String),
}

/// Run a command (`ip ...`), failing with its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, LabError> {
    let command = format!("{program} {}", args.join(" "));
    let out = std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|source| LabError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(LabError::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip <args>`.
pub(crate) fn ip(args: &[&str]) -> Result<String, LabError> {
    run("ip", args)
}

pub fn netns_exists(ns: &str) -> bool {
    netns_path(ns).exists()
}
