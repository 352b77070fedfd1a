//! The VMs of one node: QEMU processes started from a VMI's spec, one run
//! directory each (pid file, QMP socket, serial log, `vm.json`) under the
//! agent's state directory.
//!
//! QEMU daemonizes (see `mignet_dataplane::qemu::process`), so the VMs are not
//! children of the agent: dropping the runner, or the agent crashing, leaves
//! them running, and a new runner on the same state directory finds them again
//! ([`VmRunner::reattach_all`]) without touching them (QMP is reconnected,
//! nothing is sent to the guest).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mignet_dataplane::qemu::{QmpClient, VmProcess, VmSpec};

use super::AgentError;
use crate::launcher::request::write_record as write_record_file;
pub use crate::launcher::request::{read_record, GuestBoot, VmRequest};

/// A VM the runner manages.
#[derive(Debug, Clone)]
pub struct VmInfo {
    pub request: VmRequest,
    pub pid: i32,
    pub run_dir: PathBuf,
    pub qmp: Arc<QmpClient>,
}

impl VmInfo {
    pub fn serial_log(&self) -> PathBuf {
        self.run_dir.join("serial.log")
    }

    pub fn serial_output(&self) -> String {
        std::fs::read(self.serial_log())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

struct Managed {
    info: VmInfo,
    /// `None` only transiently (the guard is detached on drop), and always
    /// for a VM in a launcher pod: its QEMU is the launcher's child.
    process: Option<VmProcess>,
}

/// Who starts a node's QEMUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The runner itself (lab mode): daemonized QEMUs under the state
    /// directory.
    Own,
    /// Launcher pods (`mignet launcher`, cluster mode): the runner only
    /// attaches to the run directories they make, never starts or kills a
    /// QEMU (a VM's life is its pod's), and asks QEMU to quit over QMP when
    /// the VM has left.
    Launchers,
}

/// The node's VMs. Dropping it detaches every VM (they keep running).
pub struct VmRunner {
    vms_dir: PathBuf,
    boot: GuestBoot,
    mode: Mode,
    vms: Mutex<BTreeMap<String, Managed>>,
}

impl std::fmt::Debug for VmRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmRunner")
            .field("vms_dir", &self.vms_dir)
            .field("vms", &self.keys())
            .finish()
    }
}

/// `namespace/name` to a file-name-safe, short directory stem.
fn dir_stem(key: &str) -> String {
    let s: String = key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    s
}

impl VmRunner {
    /// VMs live under `<state_dir>/vms/`.
    pub fn new(state_dir: &Path, boot: GuestBoot) -> Result<Self, AgentError> {
        let vms_dir = state_dir.join("vms");
        std::fs::create_dir_all(&vms_dir).map_err(|source| AgentError::StateDir {
            path: vms_dir.clone(),
            source,
        })?;
        Ok(VmRunner {
            vms_dir,
            boot,
            mode: Mode::Own,
            vms: Mutex::new(BTreeMap::new()),
        })
    }

    /// VMs run by launcher pods, whose run directories are under `root`
    /// (the hostPath both mount, [`crate::launcher::RUN_ROOT`]).
    pub fn launched(root: &Path, boot: GuestBoot) -> Result<Self, AgentError> {
        std::fs::create_dir_all(root).map_err(|source| AgentError::StateDir {
            path: root.to_path_buf(),
            source,
        })?;
        Ok(VmRunner {
            vms_dir: root.to_path_buf(),
            boot,
            mode: Mode::Launchers,
            vms: Mutex::new(BTreeMap::new()),
        })
    }

    /// Whether QEMUs come from launcher pods.
    pub fn in_launchers(&self) -> bool {
        self.mode == Mode::Launchers
    }

    /// The root of the run directories.
    pub fn vms_dir(&self) -> &Path {
        &self.vms_dir
    }

    /// Launcher mode: attach to the running VM `key` a launcher pod on this
    /// node runs (its directory has `vm.json` and a live launcher).
    /// `Ok(None)` while no such launcher is up yet.
    pub async fn attach(&self, key: &str) -> Result<Option<VmInfo>, AgentError> {
        if let Some(info) = self.get(key) {
            return Ok(Some(info));
        }
        let Ok(entries) = std::fs::read_dir(&self.vms_dir) else {
            return Ok(None);
        };
        for entry in entries.flatten() {
            let dir = entry.path();
            let Some(req) = read_record(&dir).filter(|r| r.key == key) else {
                continue;
            };
            if !crate::launcher::launcher_alive(&dir) {
                continue;
            }
            let qmp = QmpClient::connect_retry(&dir.join("qmp.sock"), Duration::from_secs(10))
                .await
                .map_err(|source| AgentError::Qmp {
                    key: key.to_string(),
                    source,
                })?;
            return Ok(Some(self.adopt_launched(req, dir, Arc::new(qmp))?));
        }
        Ok(None)
    }

    /// Launcher mode: manage the VM in `run_dir` (a launcher's directory)
    /// through `qmp`; records it as `vm.json` there, so a restarted agent
    /// finds it again.
    pub fn adopt_launched(
        &self,
        req: VmRequest,
        run_dir: PathBuf,
        qmp: Arc<QmpClient>,
    ) -> Result<VmInfo, AgentError> {
        write_record(&run_dir, &req)?;
        let pid = std::fs::read_to_string(run_dir.join("qemu.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let info = VmInfo {
            request: req,
            pid,
            run_dir,
            qmp,
        };
        self.lock().insert(
            info.request.key.clone(),
            Managed {
                info: info.clone(),
                process: None,
            },
        );
        Ok(info)
    }
    pub fn boot(&self) -> &GuestBoot {
        &self.boot
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Managed>> {
        self.vms.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn keys(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    pub fn get(&self, key: &str) -> Option<VmInfo> {
        self.lock().get(key).map(|m| m.info.clone())
    }

    /// A fresh run directory for `key` (a source start or an incoming
    /// migration each get their own, so a destination never reuses the
    /// directory of a VM that left this node earlier).
    pub fn new_run_dir(&self, key: &str, tag: &str) -> PathBuf {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        self.vms_dir.join(format!("{}-{tag}{n}", dir_stem(key)))
    }

    /// The QEMU spec for `req` in `run_dir`.
    pub fn spec(&self, req: &VmRequest, run_dir: &Path, incoming: bool) -> VmSpec {
        let mut spec = VmSpec::new(&req.key, run_dir, &self.boot.kernel, &self.boot.initrd);
        spec.qemu_binary = self.boot.qemu_binary.clone();
        spec.memory_mib = req.memory_mib;
        spec.vcpus = req.vcpus.max(1);
        spec.cpu_model = match req.cpu_model.as_deref() {
            None | Some("") | Some("host-model") | Some("host-passthrough") => {
                self.boot.default_cpu_model.clone()
            }
            Some(m) => m.to_string(),
        };
        spec.cmdline = if req.kernel_args.is_empty() {
            self.boot.base_cmdline.clone()
        } else {
            format!("{} {}", self.boot.base_cmdline, req.kernel_args)
        };
        spec.incoming_defer = incoming;
        spec
    }

    /// Start `req` as a new VM; an already managed VM of that key is an error.
    pub async fn start(&self, req: &VmRequest) -> Result<VmInfo, AgentError> {
        if self.lock().contains_key(&req.key) {
            return Err(AgentError::VmExists {
                key: req.key.clone(),
            });
        }
        let run_dir = self.new_run_dir(&req.key, "s");
        let spec = self.spec(req, &run_dir, false);
        let process = VmProcess::start(&spec)
            .await
            .map_err(|source| AgentError::Vm {
                key: req.key.clone(),
                source,
            })?;
        self.adopt(req.clone(), process).await
    }

    /// Take over a running QEMU (a started VM, or a destination whose incoming
    /// migration completed): record it, connect QMP, manage it.
    pub async fn adopt(&self, req: VmRequest, process: VmProcess) -> Result<VmInfo, AgentError> {
        let run_dir = process
            .qmp_socket()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        write_record(&run_dir, &req)?;
        let qmp = QmpClient::connect_retry(process.qmp_socket(), Duration::from_secs(10))
            .await
            .map_err(|source| AgentError::Qmp {
                key: req.key.clone(),
                source,
            })?;
        let info = VmInfo {
            request: req.clone(),
            pid: process.pid(),
            run_dir,
            qmp: Arc::new(qmp),
        };
        self.insert(info.clone(), process);
        Ok(info)
    }

    /// Adopt a process whose QMP session the caller already holds (QEMU's QMP
    /// monitor serves one client at a time).
    pub fn adopt_with_qmp(
        &self,
        req: VmRequest,
        process: VmProcess,
        qmp: Arc<QmpClient>,
    ) -> Result<VmInfo, AgentError> {
        let run_dir = process
            .qmp_socket()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        write_record(&run_dir, &req)?;
        let info = VmInfo {
            request: req,
            pid: process.pid(),
            run_dir,
            qmp,
        };
        self.insert(info.clone(), process);
        Ok(info)
    }

    fn insert(&self, info: VmInfo, process: VmProcess) {
        let key = info.request.key.clone();
        let old = self.lock().insert(
            key,
            Managed {
                info,
                process: Some(process),
            },
        );
        if let Some(mut old) = old {
            // A replaced entry would otherwise be detached on drop and leak.
            if let Some(mut p) = old.process.take() {
                let _ = p.kill();
            }
        }
    }

    /// Find the VMs a previous agent left in the state directory. Directories
    /// whose QEMU is gone are removed. Returns the keys now managed.
    pub async fn reattach_all(&self) -> Result<Vec<String>, AgentError> {
        if self.mode == Mode::Launchers {
            // Each pass attaches to the VMIs of this node ([`Self::attach`]);
            // directories belong to their launchers, never removed here.
            return Ok(Vec::new());
        }
        let entries = std::fs::read_dir(&self.vms_dir).map_err(|source| AgentError::StateDir {
            path: self.vms_dir.clone(),
            source,
        })?;
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            let Some(req) = read_record(&dir) else {
                // No record: an incoming migration that never completed, or
                // a half-written start. Its QEMU (if any) is not ours to keep.
                kill_leftover(&dir);
                continue;
            };
            if self.lock().contains_key(&req.key) {
                continue;
            }
            match VmProcess::reattach(&req.key, &dir.join("qemu.pid"), &dir.join("qmp.sock")) {
                Ok(process) => match self.adopt(req.clone(), process).await {
                    Ok(_) => found.push(req.key),
                    Err(e) => {
                        tracing::warn!(vm = %req.key, error = %e, "reattached VM has no usable QMP")
                    }
                },
                Err(e) => {
                    tracing::info!(vm = %req.key, dir = %dir.display(), error = %e, "VM gone; removing its directory");
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
        Ok(found)
    }

    /// Stop a VM (SIGTERM, then SIGKILL) and remove its directory. In
    /// launcher mode: QMP `quit`, so QEMU ends and its launcher pod with it
    /// (the launcher removes the directory).
    pub fn stop(&self, key: &str) -> Result<bool, AgentError> {
        let Some(mut m) = self.lock().remove(key) else {
            return Ok(false);
        };
        if self.mode == Mode::Launchers {
            // Sent from a task so that callers need not be async; a QEMU
            // already gone answers nothing, which is stopped too.
            let qmp = m.info.qmp.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = qmp
                        .execute_timeout("quit", None, Duration::from_secs(5))
                        .await;
                });
            }
            return Ok(true);
        }
        if let Some(mut p) = m.process.take() {
            p.kill().map_err(|source| AgentError::Vm {
                key: key.to_string(),
                source,
            })?;
        }
        let _ = std::fs::remove_dir_all(&m.info.run_dir);
        Ok(true)
    }

    /// Whether the VM's QEMU is still alive (launcher mode: its launcher,
    /// which lives exactly as long as QEMU).
    pub fn is_alive(&self, key: &str) -> bool {
        let vms = self.lock();
        let Some(m) = vms.get(key) else {
            return false;
        };
        match self.mode {
            Mode::Own => m.process.as_ref().is_some_and(VmProcess::is_alive),
            Mode::Launchers => crate::launcher::launcher_alive(&m.info.run_dir),
        }
    }

    /// Forget VMs whose QEMU is gone (launcher mode: the pod ended), so the
    /// next attach finds the VM's current launcher.
    pub fn forget_dead(&self) -> Vec<String> {
        if self.mode != Mode::Launchers {
            return Vec::new();
        }
        let mut vms = self.lock();
        let dead: Vec<String> = vms
            .iter()
            .filter(|(_, m)| !crate::launcher::launcher_alive(&m.info.run_dir))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &dead {
            vms.remove(k);
        }
        dead
    }
}

impl Drop for VmRunner {
    fn drop(&mut self) {
        // VMs outlive the agent: let go of every guard without killing.
        let vms = std::mem::take(&mut *self.lock());
        for (_, mut m) in vms {
            if let Some(p) = m.process.take() {
                p.detach();
            }
        }
    }
}

fn write_record(dir: &Path, req: &VmRequest) -> Result<(), AgentError> {
    write_record_file(dir, req).map_err(|source| AgentError::StateDir {
        path: dir.join(crate::launcher::request::RECORD_FILE),
        source,
    })
}

fn kill_leftover(dir: &Path) {
    if let Ok(p) = VmProcess::reattach("leftover", &dir.join("qemu.pid"), &dir.join("qmp.sock")) {
        drop(p); // kills it
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_maps_cpu_model_memory_and_args() {
        let tmp = std::env::temp_dir().join(format!("mgvm-unit-{}", std::process::id()));
        let r = VmRunner::new(&tmp, GuestBoot::new("/k", "/i")).unwrap();
        let mut req = VmRequest {
            key: "default/vm1".into(),
            memory_mib: 512,
            vcpus: 2,
            cpu_model: Some("host-model".into()),
            kernel_args: "mignet.fill_mib=8".into(),
        };
        let dir = r.new_run_dir(&req.key, "s");
        assert!(dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("default_vm1-s"));
        let s = r.spec(&req, &dir, true);
        assert_eq!(
            (s.memory_mib, s.vcpus, s.cpu_model.as_str()),
            (512, 2, "kvm64")
        );
        assert!(s.incoming_defer);
        assert!(s.cmdline.ends_with("mignet.fill_mib=8"));
        req.cpu_model = Some("Haswell".into());
        assert_eq!(r.spec(&req, &dir, false).cpu_model, "Haswell");
        drop(r);
        let _ = std::fs::remove_dir_all(tmp);
    }
}
