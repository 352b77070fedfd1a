//! Shared helpers for the privileged CNI tests (run as root).
//!
//! Everything here lives in namespaces the test creates, with unique names
//! (prefix + pid + counter) and a Drop guard that removes them even when the
//! test panics. Nothing touches the root namespace's devices, addresses or
//! routes: the plugin binaries run *inside* a "node" namespace (setns in
//! pre_exec of the child), like a kubelet on that node would run them.
#![allow(dead_code)]

use serde_json::Value;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A process-unique short name: `<prefix>-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn run_ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A named network namespace (`ip netns add`), deleted on Drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = unique(prefix);
        run_ip(&["netns", "add", &name]).expect("create netns");
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    pub fn path_str(&self) -> String {
        self.path().display().to_string()
    }

    /// `ip -n <ns> <args>`, panicking with ip's stderr on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        self.try_ip(args).unwrap()
    }

    pub fn try_ip(&self, args: &[&str]) -> Result<String, String> {
        let mut a = vec!["-n", &self.name];
        a.extend_from_slice(args);
        run_ip(&a)
    }

    fn json(&self, args: &[&str]) -> Vec<Value> {
        let mut a = vec!["-j"];
        a.extend_from_slice(args);
        let s = self.ip(&a);
        if s.trim().is_empty() {
            return Vec::new();
        }
        serde_json::from_str(&s).unwrap_or_default()
    }

    /// `ip -d -j link show` entries.
    pub fn links(&self) -> Vec<Value> {
        self.json(&["-d", "link", "show"])
    }

    pub fn link_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .links()
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_string))
            .collect();
        v.sort();
        v
    }

    pub fn link(&self, name: &str) -> Option<Value> {
        self.links()
            .into_iter()
            .find(|l| l["ifname"].as_str() == Some(name))
    }

    /// Global addresses on `dev` as "a.b.c.d/len".
    pub fn addrs(&self, dev: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .json(&["addr", "show", "dev", dev])
            .iter()
            .flat_map(|l| l["addr_info"].as_array().cloned().unwrap_or_default())
            .filter(|a| a["scope"].as_str() == Some("global"))
            .map(|a| {
                format!(
                    "{}/{}",
                    a["local"].as_str().unwrap_or(""),
                    a["prefixlen"].as_u64().unwrap_or(0)
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Routes via `dev` in the main table of both families, as "dst via gw"
    /// strings (kernel-made link-local and multicast ones left out).
    pub fn routes(&self, dev: &str) -> Vec<String> {
        let mut v = Vec::new();
        for fam in ["-4", "-6"] {
            for r in self.json(&[fam, "route", "show", "dev", dev]) {
                let dst = r["dst"].as_str().unwrap_or("");
                if dst.starts_with("fe80") || dst.starts_with("ff00") {
                    continue;
                }
                let dst = if dst == "default" {
                    if fam == "-4" { "0.0.0.0/0" } else { "::/0" }.to_string()
                } else if dst.contains('/') {
                    dst.to_string()
                } else if fam == "-4" {
                    format!("{dst}/32")
                } else {
                    format!("{dst}/128")
                };
                match r["gateway"].as_str() {
                    Some(gw) => v.push(format!("{dst} via {gw}")),
                    None => v.push(dst),
                }
            }
        }
        v.sort();
        v
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Already gone is fine (a test may delete it on purpose).
        if self.path().exists() {
            if let Err(e) = run_ip(&["netns", "del", &self.name]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// A node namespace with the migration NIC `eth1` (a veth whose peer
/// `eth1p` stays in the same namespace; both up, MTU 1500).
pub struct Node {
    pub ns: Netns,
}

impl Node {
    pub fn new() -> Node {
        let ns = Netns::new("mgn");
        ns.ip(&[
            "link", "add", "eth1", "mtu", "1500", "type", "veth", "peer", "name", "eth1p",
        ]);
        ns.ip(&["link", "set", "eth1", "up"]);
        ns.ip(&["link", "set", "eth1p", "up"]);
        Node { ns }
    }

    /// A default route out of eth1 (inside the node namespace only), so the
    /// "master = default route interface" rule has something to find.
    pub fn with_default_route(self) -> Node {
        self.ns
            .ip(&["addr", "add", "192.168.250.2/24", "dev", "eth1"]);
        self.ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            "192.168.250.1",
            "dev",
            "eth1",
        ]);
        self
    }
}

impl Default for Node {
    fn default() -> Self {
        Node::new()
    }
}

/// A temporary directory, removed on Drop.
pub struct TempDir {
    pub path: PathBuf,
}

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let path = std::env::temp_dir().join(unique(prefix));
        std::fs::create_dir_all(&path).unwrap();
        TempDir { path }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

pub fn macvlan_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mignet-macvlan"))
}

pub fn ipam_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mignet-ipam"))
}

/// Where Debian's containernetworking-plugins puts the reference plugins.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

/// A CNI_PATH directory: our binaries installed as `macvlan` and
/// `whereabouts` (also under their own names), plus the reference IPAMs
/// `host-local` and `static`, and the reference macvlan as `ref-macvlan`.
pub struct CniPath {
    pub dir: TempDir,
}

impl CniPath {
    pub fn new() -> CniPath {
        let dir = TempDir::new("mgcnipath");
        let link = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, dir.path.join(name)).unwrap();
        };
        link(&macvlan_bin(), "macvlan");
        link(&macvlan_bin(), "mignet-macvlan");
        link(&ipam_bin(), "whereabouts");
        link(&ipam_bin(), "mignet-ipam");
        for p in ["host-local", "static"] {
            link(&Path::new(REFERENCE_DIR).join(p), p);
        }
        link(&Path::new(REFERENCE_DIR).join("macvlan"), "ref-macvlan");
        CniPath { dir }
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.path.join(name)
    }

    pub fn as_env(&self) -> String {
        self.dir.path.display().to_string()
    }
}

impl Default for CniPath {
    fn default() -> Self {
        CniPath::new()
    }
}

/// What a plugin run printed and how it exited.
#[derive(Debug)]
pub struct CniRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub json: Value,
}

impl CniRun {
    pub fn ok(&self) -> &Value {
        assert_eq!(
            self.code, 0,
            "plugin failed: stdout={} stderr={}",
            self.stdout, self.stderr
        );
        &self.json
    }

    /// Assert a CNI error with `code`; returns its msg.
    pub fn err(&self, code: u64) -> String {
        assert_ne!(self.code, 0, "expected failure, got {}", self.stdout);
        assert_eq!(
            self.json["code"].as_u64(),
            Some(code),
            "stdout={} stderr={}",
            self.stdout,
            self.stderr
        );
        self.json["msg"].as_str().unwrap_or("").to_string()
    }
}

/// One plugin invocation: binary, CNI_* environment, stdin, and the node
/// namespace to run it in.
pub struct Invocation {
    pub bin: PathBuf,
    pub env: Vec<(String, String)>,
    pub stdin: String,
    /// Run inside this namespace (None: the test's own, for pure protocol cases).
    pub netns: Option<PathBuf>,
}

impl Invocation {
    /// The usual env for `command` against `pod` with ifname net1.
    pub fn new(bin: PathBuf, command: &str, cni_path: &CniPath, stdin: &str) -> Invocation {
        Invocation {
            bin,
            env: vec![
                ("CNI_COMMAND".into(), command.into()),
                ("CNI_CONTAINERID".into(), unique("ctr")),
                ("CNI_IFNAME".into(), "net1".into()),
                ("CNI_PATH".into(), cni_path.as_env()),
            ],
            stdin: stdin.into(),
            netns: None,
        }
    }

    pub fn set(mut self, k: &str, v: &str) -> Invocation {
        self.env.retain(|(kk, _)| kk != k);
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn unset(mut self, k: &str) -> Invocation {
        self.env.retain(|(kk, _)| kk != k);
        self
    }

    pub fn pod(self, pod: &Netns) -> Invocation {
        self.set("CNI_NETNS", &pod.path_str())
    }

    pub fn on_node(mut self, node: &Netns) -> Invocation {
        self.netns = Some(node.path());
        self
    }

    pub fn command(self, c: &str) -> Invocation {
        self.set("CNI_COMMAND", c)
    }

    pub fn get(&self, k: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_str())
    }

    pub fn with_stdin(mut self, s: &str) -> Invocation {
        self.stdin = s.into();
        self
    }

    /// Spawn and wait; the child enters `netns` itself (setns in pre_exec),
    /// so no thread of the test process ever switches namespace.
    pub fn spawn(&self) -> std::process::Child {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ns) = &self.netns {
            let f = File::open(ns).expect("open node netns");
            let fd = f.as_raw_fd();
            // SAFETY: pre_exec runs in the forked child before exec; setns is
            // an async-signal-safe syscall and `fd` stays open (owned by `f`,
            // which outlives spawn) until exec closes it (O_CLOEXEC).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd.spawn().expect("spawn plugin");
            drop(f);
            return child;
        }
        cmd.spawn().expect("spawn plugin")
    }

    pub fn run(&self) -> CniRun {
        let mut child = self.spawn();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(self.stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        CniRun {
            code: out.status.code().unwrap_or(-1),
            json: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// Every version a config may carry (the reference's AllSpecVersions plus 1.1.0).
pub const ALL_VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// The seed NetworkAttachmentDefinition's config, verbatim.
pub const SEED_NAD: &str = r#"{"cniVersion":"0.3.1","name":"migration-bridge","type":"macvlan","master":"eth1","mode":"bridge","ipam":{"type":"whereabouts","range":"10.200.5.0/24"}}"#;

/// Insert `prevResult` into a config (for CHECK and DEL).
pub fn with_prev_result(conf: &str, prev: &Value) -> String {
    let mut v: Value = serde_json::from_str(conf).unwrap();
    v["prevResult"] = prev.clone();
    v.to_string()
}
