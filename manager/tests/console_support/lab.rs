//! The console against a real lab: `mignet lab up` (3 nodes, the seed's
//! NAD + HyperConverged, so every agent has `migration0`), VMIs created
//! with `mignet create -f` and run as QEMU/TCG guests by the lab's agents,
//! and `mignet console --lab-dir` as a child process.
//!
//! One lab per test binary, shared by its tests one at a time ([`turn`]):
//! a lab up costs seconds and the guests share 2 cores. Each test makes
//! its own VMs (unique names, deleted by [`Vm`]'s guard) and sets the
//! HyperConverged keys it depends on, so no test depends on another's
//! order. The lab is taken down when the test process exits (an `atexit`
//! hook: Rust never drops statics), also after a failed test.

#![allow(dead_code)]

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use mignet::api::{VirtualMachineInstance, VirtualMachineInstanceMigration, VmiPhase};
use mignet::store::Store;

use crate::console_support::{TempDir, ADMIN_TOKEN, VIEWER_TOKEN};
use crate::lab_common;

/// Namespace of the seed's objects and of the lab's VMs.
pub const LAB_NS: &str = "mignet-system";
/// The seed NAD's range (examples/nad.yaml).
pub const MIGRATION_RANGE: &str = "10.200.5.0/24";
/// Lab steps (boot, rollout, a migration under TCG) take seconds each;
/// generous so a loaded CI machine fails only on real faults.
pub const LAB_TIMEOUT: Duration = Duration::from_secs(180);

/// `mignet console` as a child process, killed on drop (also on panic).
pub struct ConsoleProcess {
    child: Child,
    pub addr: SocketAddr,
    pub base: String,
    /// What it printed to stdout before serving (where to go, tokens file).
    pub banner: Vec<String>,
    /// Its stderr.
    pub log: PathBuf,
    /// Every stdout line (the banner, then the log: mignet's tracing
    /// writes to stdout).
    stdout: Arc<Mutex<Vec<String>>>,
}

impl ConsoleProcess {
    /// `mignet console ARGS --listen 127.0.0.1:0` with the lab's
    /// environment; waits for the `open http://...` line it prints once
    /// the listener is bound (port 0: no port race with other tests).
    pub fn start(lab: &lab_common::Lab, args: &[&str], log: PathBuf) -> Self {
        let mut child = lab
            .cmd()
            .arg("console")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("console log file"))
            .spawn()
            .expect("starting mignet console");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let all = Arc::new(Mutex::new(Vec::new()));
        let keep = all.clone();
        // Reads to EOF so the console never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                keep.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line.clone());
                let _ = tx.send(line);
            }
        });
        let mut banner = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let url = line.strip_prefix("mignet console: open http://");
                    let addr = url.and_then(|u| u.trim_end_matches('/').parse().ok());
                    banner.push(line);
                    if let Some(a) = addr {
                        break a;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "mignet console {args:?} did not print its address; stdout {banner:?}; log:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        };
        Self {
            child,
            addr,
            base: format!("http://{addr}"),
            banner,
            log,
            stdout: all,
        }
    }

    /// Everything it wrote so far: stdout, then stderr.
    pub fn log_text(&self) -> String {
        let mut text = self
            .stdout
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n");
        text.push('\n');
        text.push_str(&std::fs::read_to_string(&self.log).unwrap_or_default());
        text
    }
}

impl Drop for ConsoleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shared lab. Field order = drop order: the console goes before the
/// lab (whose guard runs `mignet lab down`), the temp files last.
pub struct SharedLab {
    pub console: ConsoleProcess,
    pub lab: lab_common::Lab,
    pub store: Store,
    /// Node -> its agent pod's `migration0` address.
    pub migration_ips: Vec<(String, std::net::IpAddr)>,
    pub files: TempDir,
}

static SHARED: Mutex<Option<Arc<SharedLab>>> = Mutex::new(None);
/// One test at a time on the lab. A tokio mutex: held across awaits, and
/// a panicking test releases it (no poisoning).
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A test's exclusive use of the shared lab.
pub struct Turn {
    pub shared: Arc<SharedLab>,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl std::ops::Deref for Turn {
    type Target = SharedLab;
    fn deref(&self) -> &SharedLab {
        &self.shared
    }
}

/// Set when creating the lab failed: later tests fail at once instead of
/// each waiting minutes for the same fault.
static CREATE_FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Wait for the lab (creating it on first use).
pub async fn turn() -> Turn {
    let guard = TURN.lock().await;
    assert!(
        !CREATE_FAILED.load(Ordering::SeqCst),
        "the shared lab failed to start in an earlier test (see that test's failure)"
    );
    let existing = SHARED.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let lab = match existing {
        Some(l) => l,
        None => {
            // Blocking: `ip`, CNI binaries, QEMU; a failed start tears down
            // what it made (the guard inside) and fails this test.
            let l = tokio::task::spawn_blocking(SharedLab::create)
                .await
                .unwrap_or_else(|e| {
                    CREATE_FAILED.store(true, Ordering::SeqCst);
                    std::panic::resume_unwind(e.into_panic())
                });
            let l = Arc::new(l);
            *SHARED.lock().unwrap_or_else(|p| p.into_inner()) = Some(l.clone());
            l
        }
    };
    Turn {
        shared: lab,
        _turn: guard,
    }
}

extern "C" fn teardown_at_exit() {
    // Never unwind into libc.
    let _ = std::panic::catch_unwind(|| {
        let lab = SHARED.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(lab);
    });
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A VM name unique in this process: `<tag>-<n>`.
pub fn vm_name(tag: &str) -> String {
    format!("{tag}-{}", COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl SharedLab {
    fn create() -> Self {
        let lab = lab_common::Lab::new("con");
        let files = TempDir::new("lab-console");
        lab.ok(&["lab", "up", "--nodes", "3"]);
        // Register the teardown as soon as there is something to tear down.
        static HOOK: std::sync::Once = std::sync::Once::new();
        HOOK.call_once(|| {
            // SAFETY: registers a plain extern "C" fn with no arguments;
            // it catches every panic, so nothing unwinds into libc.
            let rc = unsafe { libc::atexit(teardown_at_exit) };
            assert_eq!(rc, 0, "atexit");
        });
        let ex = lab_common::examples();
        for f in ["nad.yaml", "hyperconverged.yaml"] {
            lab.ok(&["apply", "-f", &ex.join(f).display().to_string()]);
        }
        let store = Store::open(lab.dir.join("store")).expect("the lab's store");
        let migration_ips = lab_common::wait_for(
            "agents restarted with migration0 (MigrationNetworkReady)",
            LAB_TIMEOUT,
            || agents_on_migration_network(&store, 3),
        );
        let range: IpNetwork = MIGRATION_RANGE.parse().unwrap();
        for (node, ip) in &migration_ips {
            assert!(range.contains(*ip), "{node}: migration0 {ip}");
        }
        let tokens = files.0.join("tokens.csv");
        std::fs::write(
            &tokens,
            format!(
                "# token,user,groups\n{ADMIN_TOKEN},alice,admins\n{VIEWER_TOKEN},bob,viewers\n"
            ),
        )
        .unwrap();
        let console = ConsoleProcess::start(
            &lab,
            &[
                "--lab-dir",
                &lab.dir.display().to_string(),
                "--tokens",
                &tokens.display().to_string(),
            ],
            files.0.join("console.log"),
        );
        Self {
            console,
            lab,
            store,
            migration_ips,
            files,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.lab.dir
    }

    /// `mignet edit-config` on the lab's HyperConverged: `set` keys get
    /// their value, every other migration-limit key its default (`KEY-`),
    /// so what an earlier test set never leaks into the next one.
    pub fn config(&self, set: &[(&str, &str)]) {
        const KEYS: [&str; 5] = [
            "bandwidthPerMigration",
            "completionTimeoutPerGiB",
            "parallelMigrationsPerCluster",
            "parallelOutboundMigrationsPerNode",
            "progressTimeout",
        ];
        for (k, _) in set {
            assert!(KEYS.contains(k), "unknown key {k}");
        }
        let changes: Vec<String> = KEYS
            .iter()
            .map(|k| match set.iter().find(|(s, _)| s == k) {
                Some((_, v)) => format!("{k}={v}"),
                None => format!("{k}-"),
            })
            .collect();
        let mut args = vec!["edit-config"];
        args.extend(changes.iter().map(String::as_str));
        self.lab.ok(&args);
    }

    pub fn vmi(&self, name: &str) -> Option<VirtualMachineInstance> {
        self.store.get(LAB_NS, name).expect("reading the VMI")
    }

    pub fn vmi_node(&self, name: &str) -> Option<String> {
        self.vmi(name)?.status?.node_name
    }

    /// The VMIMs whose `spec.vmiName` is `vm`.
    pub fn vmims_of(&self, vm: &str) -> Vec<VirtualMachineInstanceMigration> {
        self.store
            .list::<VirtualMachineInstanceMigration>(Some(LAB_NS))
            .expect("listing VMIMs")
            .into_iter()
            .filter(|m| m.spec.vmi_name == vm)
            .collect()
    }

    /// `mignet create -f` a VMI like examples/lab/vmi.yaml (256Mi, fills
    /// 200 MiB, re-dirties 8 MiB/s) named `name`; waits until it is
    /// Running and its guest has filled its memory.
    pub fn create_vm(&self, name: &str) -> Vm<'_> {
        let seed = std::fs::read_to_string(lab_common::examples().join("lab/vmi.yaml")).unwrap();
        assert!(seed.contains("name: vmi-fedora"), "{seed}");
        let yaml = seed.replace("name: vmi-fedora", &format!("name: {name}"));
        let file = self.files.0.join(format!("{name}.yaml"));
        std::fs::write(&file, yaml).unwrap();
        let vm = Vm {
            lab: self,
            name: name.to_owned(),
        };
        let out = self.lab.ok(&["create", "-f", &file.display().to_string()]);
        assert!(out.contains(&format!("{name} created")), "{out}");
        let node = lab_common::wait_for(&format!("{name} Running"), LAB_TIMEOUT, || {
            let st = self.vmi(name)?.status?;
            (st.phase == Some(VmiPhase::Running)).then_some(st.node_name?)
        });
        lab_common::wait_for(&format!("{name}'s guest ready"), LAB_TIMEOUT, || {
            let log = self.serial(&node, name);
            (log.contains("mignet: ready") && last_tick(&log).is_some()).then_some(())
        });
        vm
    }

    /// The newest serial console of VM `name` on `node` (each start and
    /// each incoming migration gets a run directory of its own).
    pub fn serial(&self, node: &str, name: &str) -> String {
        newest_run_dir(&self.vms_dir(node), name)
            .and_then(|d| std::fs::read(d.join("serial.log")).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The node's launcher run directories (the lab kubelet runs each VM's
    /// launcher pod there; run directories are named after the pod,
    /// `<ns>_virt-launcher-<vm>-<uid>`).
    fn vms_dir(&self, node: &str) -> PathBuf {
        mignet::lab::node_vms_dir(self.dir(), node)
    }

    /// Pids of the QEMU processes of VM `name` on `node` (their command
    /// line names the run directory under that node's agent state).
    pub fn qemu_pids(&self, node: &str, name: &str) -> Vec<i32> {
        let dir = self.vms_dir(node).display().to_string() + "/";
        mignet::lab::lifecycle::vm_processes(self.dir())
            .into_iter()
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| {
                        let c = String::from_utf8_lossy(&c);
                        c.split('\0')
                            .any(|a| a.contains(&dir) && run_dir_of(a, &dir).contains(name))
                    })
                    .unwrap_or(false)
            })
            .collect()
    }
}

/// The run directory's name in an argument naming a path under `vms_dir`.
fn run_dir_of<'a>(arg: &'a str, vms_dir: &str) -> &'a str {
    arg.split_once(vms_dir)
        .map(|(_, rest)| rest.split('/').next().unwrap_or(""))
        .unwrap_or("")
}

fn newest_run_dir(vms_dir: &Path, name: &str) -> Option<PathBuf> {
    std::fs::read_dir(vms_dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(name))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
}

pub fn last_tick(serial: &str) -> Option<u64> {
    mignet_dataplane::qemu::testbed::ticks(serial)
        .last()
        .copied()
}

/// Every agent pod Ready on its node with a `migration0` address and the
/// rollout reported done; node -> address.
fn agents_on_migration_network(
    store: &Store,
    nodes: usize,
) -> Option<Vec<(String, std::net::IpAddr)>> {
    let hco: serde_json::Value = store
        .get_value(&mignet::store::Key::new(
            "HyperConverged",
            LAB_NS,
            "kubevirt-hyperconverged",
        ))
        .ok()??;
    let ready = hco
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .any(|c| c["type"] == mignet::network::decide::CONDITION_TYPE && c["status"] == "True");
    if !ready {
        return None;
    }
    let mut out = Vec::new();
    for p in store.list::<Pod>(Some(LAB_NS)).ok()? {
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
        let status = p.annotations().get("k8s.v1.cni.cncf.io/network-status");
        let ip = status
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .and_then(|v| {
                v.as_array()?
                    .iter()
                    .find(|e| e["interface"] == "migration0")?
                    .get("ips")?
                    .as_array()?
                    .first()?
                    .as_str()?
                    .split('/')
                    .next()?
                    .parse()
                    .ok()
            });
        if let (Some(node), Some(ip)) = (node, ip) {
            out.push((node, ip));
        }
    }
    out.sort();
    (out.len() == nodes).then_some(out)
}

/// A VM of one test: deleted (migrations first) on drop, and waited for
/// until its QEMU processes are gone, so the next test has the CPU.
pub struct Vm<'a> {
    lab: &'a SharedLab,
    pub name: String,
}

impl Drop for Vm<'_> {
    fn drop(&mut self) {
        let l = self.lab;
        let ms: Vec<String> = l
            .vmims_of(&self.name)
            .iter()
            .map(|m| m.name_any())
            .collect();
        for m in &ms {
            let _ = l.lab.run(&["delete", "vmim", m]);
        }
        // A deleted running migration is aborted first; then the VMI.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !l.vmims_of(&self.name).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = l.lab.run(&["delete", "vmi", &self.name]);
        let nodes = ["node1", "node2", "node3"];
        while Instant::now() < deadline {
            let left: usize = nodes.iter().map(|n| l.qemu_pids(n, &self.name).len()).sum();
            if left == 0 && l.vmi(&self.name).is_none() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let pids: Vec<_> = nodes
            .iter()
            .map(|n| (n, l.qemu_pids(n, &self.name)))
            .collect();
        eprintln!(
            "VM {} not gone after 60 s (lab down will stop it): VMIMs {:?}, VMI status {:?}, QEMU {pids:?}",
            self.name,
            l.vmims_of(&self.name).iter().map(|m| (m.name_any(), m.status.clone())).collect::<Vec<_>>(),
            l.vmi(&self.name).map(|v| v.status),
        );
    }
}
