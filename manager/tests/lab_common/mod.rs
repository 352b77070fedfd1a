//! Shared plumbing of the lab tests: a lab per test, with its own state
//! directory and namespace prefix, torn down by a guard even on panic.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Lab {
    pub dir: PathBuf,
    pub prefix: String,
}

impl Lab {
    /// A fresh, unique lab identity (nothing created yet).
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("mlt{}{tag}{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("{prefix}-lab"));
        check_cni_binaries();
        Self { dir, prefix }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_mignet"));
        c.env("MIGNET_LAB_DIR", &self.dir)
            .env("MIGNET_LAB_PREFIX", &self.prefix)
            .env_remove("RUST_BACKTRACE");
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("running mignet")
    }

    /// Run and require success; stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "mignet {args:?} failed: {}\n{}\n--- daemon log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn ns(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.prefix)
    }

    pub fn our_namespaces(&self) -> Vec<String> {
        let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
            .map(str::to_owned)
            .collect()
    }

    /// What `lab down` must have removed and did not (`lifecycle::leftovers`:
    /// namespaces, the daemon, VMs, unix sockets, files).
    pub fn leftovers(&self) -> Vec<String> {
        mignet::lab::lifecycle::leftovers(&mignet::lab::LabConfig {
            dir: self.dir.clone(),
            prefix: self.prefix.clone(),
            nodes: 0,
        })
    }

    pub fn state(&self) -> Option<Value> {
        std::fs::read(self.dir.join("lab.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }

    pub fn daemon_pid(&self) -> Option<i32> {
        self.state()?["processes"][0]["pid"]
            .as_i64()
            .map(|p| p as i32)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A failing test's lab kept for a post-mortem, on request only
        // (then `MIGNET_LAB_DIR=<dir> MIGNET_LAB_PREFIX=<prefix> mignet lab down`).
        if std::thread::panicking() && std::env::var_os("MIGNET_LAB_KEEP_ON_FAILURE").is_some() {
            eprintln!(
                "lab kept: MIGNET_LAB_DIR={} MIGNET_LAB_PREFIX={}",
                self.dir.display(),
                self.prefix
            );
            return;
        }
        // Idempotent; does nothing if the test already took the lab down.
        let _ = self.run(&["lab", "down"]);
        for ns in self.our_namespaces() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The lab execs the real CNI binaries: they must be built. A clear
/// failure, not a skip.
pub fn check_cni_binaries() {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_mignet"));
    let dir = exe.parent().unwrap();
    for bin in ["mignet-macvlan", "mignet-ipam"] {
        assert!(
            dir.join(bin).is_file(),
            "{} is missing: build the CNI plugins first with `cargo build -p mignet-cni` \
             (`cargo test --workspace` builds them)",
            dir.join(bin).display()
        );
    }
}

/// `ip -j -n NS addr show DEV` as JSON (None if the device is missing).
pub fn addrs(ns: &str, dev: &str) -> Option<Vec<(String, String, u8)>> {
    let out = Command::new("ip")
        .args(["-j", "-n", ns, "addr", "show", "dev", dev])
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    let list = v.as_array()?.first()?.get("addr_info")?.as_array()?.clone();
    Some(
        list.iter()
            .map(|a| {
                (
                    a["family"].as_str().unwrap_or("").to_owned(),
                    a["local"].as_str().unwrap_or("").to_owned(),
                    a["prefixlen"].as_u64().unwrap_or(0) as u8,
                )
            })
            .collect(),
    )
}

/// IPv4 addresses of DEV in NS.
pub fn ipv4(ns: &str, dev: &str) -> Option<Vec<String>> {
    addrs(ns, dev).map(|l| {
        l.into_iter()
            .filter(|(f, _, _)| f == "inet")
            .map(|(_, a, p)| format!("{a}/{p}"))
            .collect()
    })
}

pub fn links(ns: &str) -> Vec<Value> {
    let out = Command::new("ip")
        .args(["-j", "-d", "-n", ns, "link", "show"])
        .output()
        .unwrap();
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// Poll `f` until it returns Some, or panic with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// `lab up` with `nodes`, then the seed's NAD and HyperConverged (network
/// my-secondary-network, the seed's limits), as the README's walkthrough.
pub fn up_with_seed_network(lab: &Lab, nodes: u32) {
    lab.ok(&["lab", "up", "--nodes", &nodes.to_string()]);
    let ex = examples();
    lab.ok(&["create", "-f", ex.join("nad.yaml").to_str().unwrap()]);
    lab.ok(&[
        "apply",
        "-f",
        ex.join("hyperconverged.yaml").to_str().unwrap(),
    ]);
}

pub fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// The newest serial console of VMI `name` (namespace mignet-system) on
/// `node`: each launcher pod (a start, or a migration's target) has a run
/// directory of its own under the node's `<lab>/vms/<node>/`.
pub fn serial_output(dir: &std::path::Path, node: &str, name: &str) -> String {
    let vms = mignet::lab::node_vms_dir(dir, node);
    let needle = format!("mignet-system_virt-launcher-{name}-");
    std::fs::read_dir(&vms)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&needle))
        .map(|e| e.path().join("serial.log"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .and_then(|(_, p)| std::fs::read(p).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `tick N` a guest printed.
pub fn last_tick(serial: &str) -> Option<u64> {
    mignet_dataplane::qemu::testbed::ticks(serial)
        .last()
        .copied()
}

/// The parent of `pid` (field 4 of /proc/<pid>/stat).
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The launcher pods in the store: (pod, spec.nodeName, status.phase).
pub fn launcher_pods(
    store: &mignet::store::Store,
) -> Vec<(k8s_openapi::api::core::v1::Pod, Option<String>, String)> {
    store
        .list::<k8s_openapi::api::core::v1::Pod>(None)
        .unwrap()
        .into_iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(mignet::control::launcher_pod::LAUNCHER_LABEL))
        })
        .map(|p| {
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            let phase = p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default();
            (p, node, phase)
        })
        .collect()
}

/// Create the NAD `second-network` (10.200.6.0/24, the seed's shape) and
/// `apply` the seed's HyperConverged naming it; the agents then roll onto
/// it. The files live outside the lab dir (`down` removes only what the
/// lab made) and are removed at once. Returns `apply`'s output.
pub fn switch_to_second_network(lab: &Lab) -> String {
    create_second_network(lab);
    let hco2 = std::env::temp_dir().join(format!("{}-hco2.yaml", lab.prefix));
    let seed_hco = std::fs::read_to_string(examples().join("hyperconverged.yaml")).unwrap();
    std::fs::write(
        &hco2,
        seed_hco.replace("network: my-secondary-network", "network: second-network"),
    )
    .unwrap();
    let out = lab.ok(&["apply", "-f", hco2.to_str().unwrap()]);
    let _ = std::fs::remove_file(&hco2);
    out
}

/// Create the NAD `second-network` (10.200.6.0/24, the seed's shape).
pub fn create_second_network(lab: &Lab) {
    create_nad(
        lab,
        "second-network",
        r#"{"cniVersion":"0.3.1","name":"migration-bridge-2","type":"macvlan","master":"eth1","mode":"bridge","ipam":{"type":"whereabouts","range":"10.200.6.0/24"}}"#,
    );
}

/// `mignet create -f` of NAD `name` in mignet-system with CNI `config`, as
/// a user writes it. The file lives outside the lab dir (`down` removes
/// only what the lab made) and is removed at once.
pub fn create_nad(lab: &Lab, name: &str, config: &str) {
    let file = std::env::temp_dir().join(format!("{}-nad-{name}.yaml", lab.prefix));
    std::fs::write(
        &file,
        format!(
            "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata:\n  name: {name}\n  namespace: mignet-system\nspec:\n  config: '{config}'\n"
        ),
    )
    .unwrap();
    lab.ok(&["create", "-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
}
