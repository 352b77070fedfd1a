//! Helpers for the IPAM integration tests: run the built `mignet-ipam`
//! binary with a temporary store directory and inspect the pool files.
#![allow(dead_code)]

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub const BIN: &str = env!("CARGO_BIN_EXE_mignet-ipam");

/// A store directory unique to this test, removed on drop (also on panic).
pub struct StoreDir(pub PathBuf);

impl StoreDir {
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("mignet-ipam-it-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        StoreDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The allocations of pool file `name` (e.g. "10.200.5.0-24"), offset -> entry.
    /// A missing file is an empty pool.
    pub fn pool(&self, name: &str) -> BTreeMap<u128, Value> {
        let path = self.0.join(format!("{name}.json"));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BTreeMap::new(),
            Err(e) => panic!("read {}: {e}", path.display()),
        };
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("pool {} does not parse: {e}: {text}", path.display()));
        v["allocations"]
            .as_object()
            .unwrap_or_else(|| panic!("pool {} has no allocations object: {text}", path.display()))
            .iter()
            .map(|(k, v)| (k.parse().expect("offset key is a decimal"), v.clone()))
            .collect()
    }

    /// Total allocations over every pool file in the directory.
    pub fn total_allocations(&self) -> usize {
        let Ok(rd) = std::fs::read_dir(&self.0) else {
            return 0;
        };
        rd.filter_map(|e| e.ok())
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_suffix(".json").map(String::from)
            })
            .map(|n| self.pool(&n).len())
            .sum()
    }
}

impl Drop for StoreDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A network config with the given `ipam` body (without braces) and store.
pub fn conf(version: &str, store: &StoreDir, ipam: &str) -> String {
    format!(
        r#"{{"cniVersion":"{version}","name":"migration-bridge","type":"macvlan","master":"eth1","mode":"bridge","ipam":{{"type":"whereabouts",{ipam},"store_dir":"{}"}}}}"#,
        store.path().display()
    )
}

/// One invocation's parsed outcome.
#[derive(Debug)]
pub struct Reply {
    pub ok: bool,
    pub stdout: String,
    pub json: Value,
}

impl Reply {
    pub fn code(&self) -> u64 {
        self.json["code"].as_u64().unwrap_or(0)
    }
    pub fn msg(&self) -> &str {
        self.json["msg"].as_str().unwrap_or("")
    }
    /// `ips[i].address` of a successful ADD.
    pub fn addresses(&self) -> Vec<String> {
        self.json["ips"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|ip| ip["address"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

pub fn command(verb: &str, cid: &str, ifname: &str, cni_args: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env_clear()
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", cid)
        // A path that does not exist: the IPAM never enters the netns, and
        // skel only refuses the plugin's own namespace.
        .env("CNI_NETNS", "/var/run/netns/mignet-ipam-test-absent")
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", "/nonexistent")
        .env("CNI_ARGS", cni_args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

pub fn spawn(verb: &str, cid: &str, ifname: &str, cni_args: &str, stdin: &str) -> Child {
    use std::io::Write;
    let mut child = command(verb, cid, ifname, cni_args)
        .spawn()
        .expect("spawn mignet-ipam");
    let mut input = child.stdin.take().unwrap();
    // The child may be killed before it reads: ignore a broken pipe.
    let _ = input.write_all(stdin.as_bytes());
    drop(input);
    child
}

pub fn reply(out: &Output) -> Reply {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let json = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {stdout}"))
    };
    Reply {
        ok: out.status.success(),
        stdout,
        json,
    }
}

pub fn cni(verb: &str, cid: &str, ifname: &str, cni_args: &str, stdin: &str) -> Reply {
    let out = spawn(verb, cid, ifname, cni_args, stdin)
        .wait_with_output()
        .expect("wait mignet-ipam");
    reply(&out)
}

/// ADD that must succeed; returns its addresses.
pub fn add_ok(cid: &str, ifname: &str, cni_args: &str, stdin: &str) -> Vec<String> {
    let r = cni("ADD", cid, ifname, cni_args, stdin);
    assert!(r.ok, "ADD {cid}/{ifname} failed: {}", r.stdout);
    r.addresses()
}

pub fn ok(verb: &str, cid: &str, ifname: &str, stdin: &str) {
    let r = cni(verb, cid, ifname, "", stdin);
    assert!(r.ok, "{verb} {cid}/{ifname} failed: {}", r.stdout);
}
