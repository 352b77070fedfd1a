//! The pre-flight probe's bed on the real kernel, shared by
//! `tests/probe_pair.rs` and `benches/preflight_round.rs`: "nodes" are
//! network namespaces whose `migration0` is a veth into one bridge in a
//! switch namespace, the round's pods are in a lab store, and `mignet probe`
//! runs once per namespace (`ip netns exec`) as the lab kubelet runs it.
//!
//! Runs as root. Every namespace is deleted on Drop (also when a test
//! panics); [`delete_namespaces_on_panic`] covers `panic = "abort"` builds,
//! where no Drop runs. The including crate declares `mod agent_support`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use crate::agent_support::{run, unique};
use k8s_openapi::api::core::v1::Pod;
use mignet::network::preflight::ROUND_LABEL;
use mignet_dataplane::certs::{self, ClusterCa, Role, Validity};

/// The namespace of the round's pods.
pub const NS: &str = "mignet-system";

/// Namespaces that exist now, for the panic hook.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn live() -> std::sync::MutexGuard<'static, Vec<String>> {
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// With `panic = "abort"` (the release profile) no Drop runs on a panic:
/// the hook deletes what is left before the process ends.
pub fn delete_namespaces_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        for ns in live().drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }));
}

/// A network namespace of this process; deleted on Drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = unique(&format!("mp{tag}"));
        run(&["ip", "netns", "add", &name]);
        live().push(name.clone());
        let ns = Netns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn ip(&self, args: &[&str]) {
        let mut cmd = vec!["ip", "-n", &self.0];
        cmd.extend_from_slice(args);
        run(&cmd);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        live().retain(|n| *n != self.0);
    }
}

/// One node of a [`Segment`]: `node<i>` with `migration0` at `ip`.
pub struct Node {
    pub ns: Netns,
    pub name: String,
    pub ip: String,
}

/// Nodes whose `migration0` are bridged in a switch namespace: the switch's
/// port to node i (0-based) is `p<i>`. Fields drop in order: the nodes,
/// then the switch.
pub struct Segment {
    pub nodes: Vec<Node>,
    pub switch: Netns,
}

impl Segment {
    /// `n` nodes at 10.231.0.1, .2, ...: `migration0` of MTU `node_mtu`,
    /// the switch's ports (the other veth ends) of MTU `port_mtu`.
    pub fn v4(n: usize, node_mtu: u32, port_mtu: u32) -> Self {
        let ips = (1..=n).map(|i| format!("10.231.0.{i}")).collect();
        Self::with_addresses(node_mtu, port_mtu, ips)
    }

    /// IPv6 addresses (added without DAD: a tentative address is not
    /// usable, and the probe would rightly say NoAddress).
    pub fn v6(n: usize, node_mtu: u32, port_mtu: u32) -> Self {
        let ips = (1..=n).map(|i| format!("fd31::{i}")).collect();
        Self::with_addresses(node_mtu, port_mtu, ips)
    }

    fn with_addresses(node_mtu: u32, port_mtu: u32, ips: Vec<String>) -> Self {
        let switch = Netns::new("sw");
        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        switch.ip(&["link", "set", "br0", "up"]);
        let mut nodes = Vec::new();
        for (i, ip) in ips.into_iter().enumerate() {
            let ns = Netns::new(&format!("n{}", i + 1));
            let port = format!("p{i}");
            switch.ip(&[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "migration0",
                "netns",
                &ns.0,
            ]);
            switch.ip(&["link", "set", &port, "mtu", &port_mtu.to_string()]);
            switch.ip(&["link", "set", &port, "master", "br0", "up"]);
            ns.ip(&["link", "set", "migration0", "mtu", &node_mtu.to_string()]);
            if ip.contains(':') {
                let cidr = format!("{ip}/64");
                ns.ip(&["addr", "add", &cidr, "dev", "migration0", "nodad"]);
            } else {
                ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "migration0"]);
            }
            ns.ip(&["link", "set", "migration0", "up"]);
            nodes.push(Node {
                ns,
                name: format!("node{}", i + 1),
                ip,
            });
        }
        Segment { nodes, switch }
    }

    /// (node, address) of every node, for [`lab_with_round`].
    pub fn round(&self) -> Vec<(&str, &str)> {
        self.nodes
            .iter()
            .map(|n| (n.name.as_str(), n.ip.as_str()))
            .collect()
    }

    /// Set the switch's port to node `i` (0-based) down or up.
    pub fn set_port(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        self.switch.ip(&["link", "set", &format!("p{i}"), state]);
    }
}

/// A lab directory whose store holds round `round`'s pods, one per node,
/// with Multus' network-status naming their `migration0` address.
pub fn lab_with_round(dir: &Path, round: &str, nodes: &[(&str, &str)]) {
    std::fs::write(mignet::lab::state_file(dir), "{}").unwrap();
    let store = mignet::store::Store::open(mignet::lab::store_dir(dir)).unwrap();
    for (node, ip) in nodes {
        let status = serde_json::json!([
            {"name": "cbr0", "interface": "eth0", "ips": ["10.244.9.9"], "default": true},
            {"name": "mignet-system/migration", "interface": "migration0", "ips": [ip]},
        ]);
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": format!("mignet-probe-{node}"),
                "namespace": NS,
                "labels": {ROUND_LABEL: round},
                "annotations": {"k8s.v1.cni.cncf.io/network-status": status.to_string()},
            },
            "spec": {"nodeName": node, "containers": [{"name": "probe", "image": "mignet:dev"}]},
        }))
        .unwrap();
        store.create(&pod).unwrap();
    }
}

/// An agent certificate directory for `node` from `ca`.
pub fn cert_dir(root: &Path, ca: &ClusterCa, node: &str) -> PathBuf {
    let dir = root.join("certs").join(node);
    let leaf = ca
        .issue(Role::Agent, node, Validity::days_from_now(1))
        .unwrap();
    certs::write_tls_dir(&dir, ca.cert_pem(), &leaf).unwrap();
    dir
}

/// What one `mignet probe` is started with.
pub struct ProbeArgs<'a> {
    pub node: &'a str,
    pub round: &'a str,
    pub lab: &'a Path,
    pub certs: &'a Path,
    pub expect: usize,
    pub deadline_s: u64,
    /// Its termination log (the report).
    pub log: &'a Path,
}

/// `mignet probe` inside `ns`, as the lab kubelet starts it (stdio left
/// to the caller).
pub fn probe_command(ns: &Netns, a: &ProbeArgs) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args([
        "netns",
        "exec",
        &ns.0,
        env!("CARGO_BIN_EXE_mignet"),
        "probe",
    ])
    .args(["--node", a.node, "--namespace", NS, "--round", a.round])
    .args(["--expect", &a.expect.to_string()])
    .args(["--deadline-seconds", &a.deadline_s.to_string()])
    .arg("--termination-log")
    .arg(a.log)
    .args(["--cert-source", "files", "--cert-dir"])
    .arg(a.certs)
    .arg("--lab")
    .env("MIGNET_LAB_DIR", a.lab)
    .env("RUST_LOG", "info");
    cmd
}
