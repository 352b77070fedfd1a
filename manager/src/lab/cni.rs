//! Calling CNI plugins the way Multus does for the lab's agent pods: the
//! binary named by the config's `type`, from the lab's CNI path, with the
//! NAD's config on stdin and the CNI_* environment, run inside the NODE's
//! namespace (where the macvlan master `eth1` lives).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::{netns_path, LabConfig, LabError};

/// (name in the CNI path, binary built by mignet-cni). Both names are
/// installed so the seed's NAD (`macvlan` + `whereabouts`) works verbatim.
pub const PLUGINS: &[(&str, &str)] = &[
    ("macvlan", "mignet-macvlan"),
    ("whereabouts", "mignet-ipam"),
    ("mignet-macvlan", "mignet-macvlan"),
    ("mignet-ipam", "mignet-ipam"),
];

/// Where the built plugin binaries are: `$MIGNET_CNI_BIN_DIR`, else next to
/// the running binary, else one level up (a test binary in `target/*/deps`).
pub fn find_plugin_dir() -> Result<PathBuf, LabError> {
    let mut candidates = Vec::new();
    if let Some(d) = std::env::var_os("MIGNET_CNI_BIN_DIR").filter(|d| !d.is_empty()) {
        candidates.push(PathBuf::from(d));
    } else if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            candidates.push(dir.to_owned());
            if let Some(up) = dir.parent() {
                candidates.push(up.to_owned());
            }
        }
    }
    for c in &candidates {
        if PLUGINS.iter().all(|(_, bin)| c.join(bin).is_file()) {
            return Ok(c.clone());
        }
    }
    Err(LabError::CniBinaryMissing {
        name: "mignet-macvlan / mignet-ipam".into(),
        searched: candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

/// Fill the lab's CNI path with symlinks to the built plugins.
pub fn install_plugins(cfg: &LabConfig) -> Result<PathBuf, LabError> {
    let src = find_plugin_dir()?;
    let dst = cfg.cni_bin_dir();
    std::fs::create_dir_all(&dst).map_err(|source| LabError::Io {
        op: "creating",
        path: dst.clone(),
        source,
    })?;
    for (name, bin) in PLUGINS {
        let link = dst.join(name);
        let _ = std::fs::remove_file(&link);
        let target = src.join(bin);
        let target = target.canonicalize().unwrap_or(target);
        std::os::unix::fs::symlink(&target, &link).map_err(|source| LabError::Io {
            op: "linking",
            path: link.clone(),
            source,
        })?;
    }
    Ok(dst)
}

#[derive(Debug, thiserror::Error)]
pub enum CniCallError {
    #[error("CNI config is not a JSON object with a \"type\"")]
    NoType,
    #[error("CNI plugin {plugin:?} not found in the lab's CNI path {dir}")]
    PluginMissing { plugin: String, dir: PathBuf },
    #[error("running CNI plugin {plugin} {command}")]
    Exec {
        plugin: String,
        command: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} {command} failed with code {code}: {msg}")]
    Failed {
        plugin: String,
        command: &'static str,
        code: i64,
        msg: String,
    },
    #[error("CNI plugin {plugin} {command} printed no valid result: {output:?}")]
    BadResult {
        plugin: String,
        command: &'static str,
        output: String,
    },
}

/// One CNI invocation for one pod attachment.
pub struct CniCall<'a> {
    pub bin_dir: &'a Path,
    pub ipam_store_dir: &'a Path,
    /// Namespace the plugin runs in (the node's).
    pub node_ns: &'a str,
    /// The pod's namespace (CNI_NETNS).
    pub pod_netns: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    pub pod_namespace: &'a str,
    pub pod_name: &'a str,
    pub pod_uid: &'a str,
    pub config: &'a str,
}

/// What ADD gave the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Addresses in CIDR form (`10.200.5.1/24`).
    pub ips: Vec<String>,
    pub mac: Option<String>,
    pub raw: Value,
}

impl CniCall<'_> {
    pub fn add(&self) -> Result<Attached, CniCallError> {
        let out = self.exec("ADD")?;
        let plugin = plugin_type(self.config)?;
        let bad = || CniCallError::BadResult {
            plugin: plugin.clone(),
            command: "ADD",
            output: out.to_string(),
        };
        let ips: Vec<String> = match out.get("ips").and_then(Value::as_array) {
            Some(list) => list
                .iter()
                .filter_map(|ip| ip.get("address").and_then(Value::as_str))
                .map(str::to_owned)
                .collect(),
            // 0.1.0/0.2.0 results: ip4/ip6.
            None => ["ip4", "ip6"]
                .iter()
                .filter_map(|k| out.pointer(&format!("/{k}/ip")).and_then(Value::as_str))
                .map(str::to_owned)
                .collect(),
        };
        if ips.is_empty() && out.get("interfaces").is_none() {
            return Err(bad());
        }
        let mac = out
            .get("interfaces")
            .and_then(Value::as_array)
            .and_then(|l| {
                l.iter()
                    .find(|i| i.get("name").and_then(Value::as_str) == Some(self.ifname))
            })
            .and_then(|i| i.get("mac").and_then(Value::as_str))
            .map(str::to_owned);
        Ok(Attached { ips, mac, raw: out })
    }

    pub fn del(&self) -> Result<(), CniCallError> {
        self.exec("DEL").map(|_| ())
    }

    fn exec(&self, command: &'static str) -> Result<Value, CniCallError> {
        let plugin = plugin_type(self.config)?;
        let bin = self.bin_dir.join(&plugin);
        if !bin.exists() {
            return Err(CniCallError::PluginMissing {
                plugin,
                dir: self.bin_dir.to_owned(),
            });
        }
        let cni_args = format!(
            "IgnoreUnknown=true;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.pod_namespace, self.pod_name, self.container_id, self.pod_uid
        );
        // `ip netns exec` enters the node's namespace in the child only; no
        // thread of ours changes namespace.
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.node_ns])
            .arg(&bin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_NETNS", netns_path(self.pod_netns))
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_PATH", self.bin_dir)
            .env("CNI_ARGS", cni_args)
            .env("MIGNET_IPAM_STORE_DIR", self.ipam_store_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| CniCallError::Exec {
                plugin: plugin.clone(),
                command,
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin that exits without reading its stdin is reported by
            // its exit status below, not as a broken pipe here.
            let _ = stdin.write_all(self.config.as_bytes());
        }
        let out = child
            .wait_with_output()
            .map_err(|source| CniCallError::Exec {
                plugin: plugin.clone(),
                command,
                source,
            })?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let parsed: Option<Value> = serde_json::from_str(stdout.trim()).ok();
        if !out.status.success() {
            let (code, msg) = match &parsed {
                Some(v) => (
                    v.get("code").and_then(Value::as_i64).unwrap_or(-1),
                    v.get("msg")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned()
                        + v.get("details")
                            .and_then(Value::as_str)
                            .map(|d| format!(" ({d})"))
                            .unwrap_or_default()
                            .as_str(),
                ),
                None => (
                    -1,
                    format!(
                        "{} {}",
                        stdout.trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    ),
                ),
            };
            return Err(CniCallError::Failed {
                plugin,
                command,
                code,
                msg,
            });
        }
        match (command, parsed) {
            (_, Some(v)) => Ok(v),
            ("DEL", None) => Ok(Value::Null),
            (_, None) => Err(CniCallError::BadResult {
                plugin,
                command,
                output: stdout.into_owned(),
            }),
        }
    }
}

fn plugin_type(config: &str) -> Result<String, CniCallError> {
    serde_json::from_str::<Value>(config)
        .ok()
        .and_then(|v| v.get("type").and_then(Value::as_str).map(str::to_owned))
        .filter(|t| !t.is_empty() && !t.contains('/'))
        .ok_or(CniCallError::NoType)
}
