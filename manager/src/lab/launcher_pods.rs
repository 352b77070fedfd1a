//! The lab kubelet for launcher pods: every launcher pod bound to a lab node
//! (the lab scheduler wrote its `spec.nodeName`) runs as `mignet launcher`,
//! started as a detached process (its own session, in the node's network
//! namespace), exactly as the container would run it:
//!
//! - the pod's `MIGNET_LAUNCH_SPEC`, with the image's lab guest
//!   (`/usr/share/mignet/guest/...`) mapped to the lab's guest image files;
//! - `--run-dir` from the pod's hostPath `/var/run/mignet/vms/<x>` mapped to
//!   that node's own directory, [`super::node_vms_dir`]`/<x>` (the agent of
//!   the node attaches there: its `launcher_root`);
//! - `--termination-log` to a file of the pod's state, read back as the
//!   container's terminated message (`FallbackToLogsOnError`: the log's tail
//!   when the file is empty and the exit code is not 0).
//!
//! Per pod the state is `<dir>/pods/<node>/<namespace>_<name>/`: `pod.json`
//! ([`PodRecord`]), `launcher.pid`, `exit-code` (both written by the small
//! `sh` wrapper that waits for the launcher, so the exit code is known even
//! after the lab daemon restarted), `termination-log`, `launcher.log`.
//! A launcher outlives the agent and the lab daemon; a new daemon finds it
//! again from its record (the wrapper's pid and start time, and
//! [`crate::launcher::launcher_alive`] on its run directory).
//!
//! Pod status as a kubelet writes it: `Running` once the launcher runs;
//! `Succeeded`/`Failed` with `containerStatuses[0].state.terminated`
//! (`exitCode`, `message`) when it exits. A pod that is deleted (gone from
//! the store, or `deletionTimestamp` set) gets SIGTERM, SIGKILL after its
//! grace period, and its state is removed once the launcher is gone.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStatus, Pod,
    PodCondition,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::inventory::{self, ProcessRecord};
use super::{netns_path, plan, LabConfig, LabError};
use crate::control::launcher_pod::{CONTAINER, LAUNCHER_LABEL};
use crate::launcher::{self as launch, Boot, LaunchSpec};
use crate::store::Store;

/// The record of one launcher pod a lab node runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRecord {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node: String,
    /// The node-side run directory (`--run-dir`).
    pub run_dir: PathBuf,
    /// The `sh` wrapper that waits for the launcher and writes its exit code.
    pub wrapper: ProcessRecord,
    pub grace_seconds: u64,
    /// Unix seconds when SIGTERM was sent (the pod was deleted).
    #[serde(default)]
    pub terminating_since: Option<u64>,
    /// The final status was written.
    #[serde(default)]
    pub reported: bool,
    /// RFC 3339.
    pub started_at: String,
}

const RECORD: &str = "pod.json";
pub(crate) const PID_FILE: &str = "launcher.pid";
const EXIT_FILE: &str = "exit-code";
const TERMINATION_LOG: &str = "termination-log";
const LOG_FILE: &str = "launcher.log";
/// The longest socket name the agent binds in a run directory: the source
/// side's `<uid 8>-<port 5>-source.sock` (`SourceEndpoints::socket_path`).
const LONGEST_AGENT_SOCKET: usize = "01234567-49152-source.sock".len();
/// `sun_path` holds 107 bytes and the NUL.
const MAX_UNIX_PATH: usize = 107;

/// Runs `$0 "$@"` (after its own three arguments) with output to `$1`;
/// the container's pid to `$2`, its exit code to `$3` when it ends.
const WRAPPER: &str = r#"log=$1 pidfile=$2 exitfile=$3
shift 3
"$0" "$@" >>"$log" 2>&1 </dev/null &
pid=$!
echo "$pid" >"$pidfile.tmp" && mv "$pidfile.tmp" "$pidfile"
wait "$pid"
echo "$?" >"$exitfile.tmp" && mv "$exitfile.tmp" "$exitfile""#;

/// Where the pods of `node` keep their state.
pub fn pods_dir(lab_dir: &Path, node: &str) -> PathBuf {
    lab_dir.join("pods").join(node)
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn now_time() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

/// The `mignet` binary that runs launchers: this one when it is `mignet`,
/// else a `mignet` next to it or one level up (a test binary in
/// `target/*/deps`).
pub fn find_mignet() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating this binary: {e}"))?;
    if exe.file_name().is_some_and(|n| n == "mignet") {
        return Ok(exe);
    }
    let mut searched = Vec::new();
    let mut dir = exe.parent();
    for _ in 0..2 {
        let Some(d) = dir else { break };
        let c = d.join("mignet");
        if c.is_file() {
            return Ok(c);
        }
        searched.push(d.display().to_string());
        dir = d.parent();
    }
    Err(format!(
        "no mignet binary to run launchers (searched {}); build it with `cargo build -p mignet`",
        searched.join(", ")
    ))
}

/// What the container runs, mapped onto the lab node (pure): the launch
/// spec (guest files mapped) and the node-side run directory.
pub fn lab_launch(
    pod: &Pod,
    node_vms: &Path,
    guest: &(PathBuf, PathBuf),
) -> Result<(String, PathBuf), String> {
    let c = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == CONTAINER))
        .ok_or_else(|| format!("the pod has no container {CONTAINER:?}"))?;
    let json = c
        .env
        .iter()
        .flatten()
        .find(|e| e.name == launch::SPEC_ENV)
        .and_then(|e| e.value.clone())
        .ok_or_else(|| format!("container {CONTAINER} has no {}", launch::SPEC_ENV))?;
    let mut spec: LaunchSpec =
        serde_json::from_str(&json).map_err(|e| format!("{}: {e}", launch::SPEC_ENV))?;
    if let Boot::Kernel { kernel, initrd } = &mut spec.boot {
        let (k, i) = launch::guest_files();
        if *kernel == k && *initrd == i {
            (*kernel, *initrd) = guest.clone();
        }
    }
    let args = c.args.clone().unwrap_or_default();
    let run_dir = args
        .iter()
        .position(|a| a == "--run-dir")
        .and_then(|i| args.get(i + 1))
        .ok_or("the container's args name no --run-dir")?;
    let rel = Path::new(run_dir)
        .strip_prefix(launch::RUN_ROOT)
        .map_err(|_| {
            format!(
                "--run-dir {run_dir} is not under the hostPath {} the lab maps",
                launch::RUN_ROOT
            )
        })?;
    let mapped = node_vms.join(rel);
    let longest = mapped.as_os_str().len() + 1 + LONGEST_AGENT_SOCKET;
    if longest > MAX_UNIX_PATH {
        return Err(format!(
            "the run directory {} is too long for the sockets in it ({longest} > {MAX_UNIX_PATH} \
             bytes); use a shorter MIGNET_LAB_DIR",
            mapped.display()
        ));
    }
    let json = serde_json::to_string(&spec).map_err(|e| e.to_string())?;
    Ok((json, mapped))
}

/// The file of a pod's state that the container's `--termination-log` names.
pub(crate) fn termination_log(pod_dir: &Path) -> PathBuf {
    pod_dir.join(TERMINATION_LOG)
}

/// Start `exe args` as a pod's container: through [`WRAPPER`] (pid and exit
/// code into `pod_dir`, output to its log), in a session of its own, in the
/// network namespace at `netns`. `env` sets the container's environment.
/// The termination log is created empty first: a container writes its
/// message into an existing file only.
pub(crate) fn spawn_container(
    exe: &Path,
    args: &[&std::ffi::OsStr],
    pod_dir: &Path,
    netns: &Path,
    env: impl FnOnce(&mut Command),
) -> Result<Child, String> {
    std::fs::write(termination_log(pod_dir), b"")
        .map_err(|e| format!("{}: {e}", pod_dir.display()))?;
    let ns = std::fs::File::open(netns)
        .map_err(|e| format!("network namespace {}: {e}", netns.display()))?;
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(WRAPPER)
        .arg(exe)
        .arg(pod_dir.join(LOG_FILE))
        .arg(pod_dir.join(PID_FILE))
        .arg(pod_dir.join(EXIT_FILE))
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    env(&mut cmd);
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = ns.as_raw_fd();
    // SAFETY: setsid and setns are async-signal-safe system calls; no
    // allocation between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Its own session: outlives the agent, the daemon, a terminal.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The pod's network namespace.
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("starting {}: {e}", exe.display()))?;
    drop(ns);
    Ok(child)
}

fn read_record(dir: &Path) -> Option<PodRecord> {
    serde_json::from_slice(&std::fs::read(dir.join(RECORD)).ok()?).ok()
}

fn write_record(dir: &Path, r: &PodRecord) -> Result<(), LabError> {
    let tmp = dir.join(format!("{RECORD}.tmp"));
    let io = |source| LabError::Io {
        op: "writing",
        path: dir.join(RECORD),
        source,
    };
    std::fs::write(&tmp, serde_json::to_vec_pretty(r).unwrap_or_default()).map_err(io)?;
    std::fs::rename(&tmp, dir.join(RECORD)).map_err(io)
}

/// The launcher's pid, if it is still the launcher of `run_dir` (a recycled
/// pid is never signalled).
fn launcher_pid(pod_dir: &Path, run_dir: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pod_dir.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let want = run_dir.display().to_string();
    cmdline
        .split(|&b| b == 0)
        .any(|a| a == want.as_bytes())
        .then_some(pid)
}

pub(crate) fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
}

/// The last `max` bytes of `path`, as text.
fn tail(path: &Path, max: usize) -> String {
    let b = std::fs::read(path).unwrap_or_default();
    let start = b.len().saturating_sub(max);
    String::from_utf8_lossy(&b[start..]).trim().to_owned()
}

/// The lab kubelet's launcher half. Keeps the wrappers it started, to reap
/// them; everything else is on disk, so a new instance adopts the pods.
pub struct Launchers<'a> {
    cfg: &'a LabConfig,
    store: &'a Store,
    children: HashMap<PathBuf, Child>,
    guest: Option<(PathBuf, PathBuf)>,
}

impl<'a> Launchers<'a> {
    pub fn new(cfg: &'a LabConfig, store: &'a Store) -> Self {
        Launchers {
            cfg,
            store,
            children: HashMap::new(),
            guest: None,
        }
    }

    /// Every record on disk: (pod state directory, record).
    fn records(&self) -> Vec<(PathBuf, PodRecord)> {
        let mut out = Vec::new();
        for node in std::fs::read_dir(self.cfg.dir.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            for pod in std::fs::read_dir(node.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let dir = pod.path();
                match read_record(&dir) {
                    Some(r) => out.push((dir, r)),
                    // A start that crashed before its record: nothing runs
                    // for it that `lab down` would not find (the command
                    // lines name the run directory).
                    None => {
                        let _ = std::fs::remove_dir_all(&dir);
                    }
                }
            }
        }
        out
    }

    /// One pass: reap, report ends, stop deleted pods, start bound ones.
    pub fn sync(&mut self) -> Result<(), LabError> {
        self.children
            .retain(|_, c| !matches!(c.try_wait(), Ok(Some(_)) | Err(_)));
        let mut pods: Vec<Pod> = self
            .store
            .list::<Pod>(None)?
            .into_iter()
            .filter(|p| p.labels().contains_key(LAUNCHER_LABEL))
            .collect();
        self.collect_garbage(&mut pods)?;
        let by_key: BTreeMap<(String, String), &Pod> = pods
            .iter()
            .map(|p| ((p.namespace().unwrap_or_default(), p.name_any()), p))
            .collect();
        let mut known = std::collections::BTreeSet::new();
        for (dir, mut rec) in self.records() {
            known.insert((rec.namespace.clone(), rec.name.clone()));
            let pod = by_key
                .get(&(rec.namespace.clone(), rec.name.clone()))
                .filter(|p| p.metadata.uid.as_deref() == Some(rec.uid.as_str()));
            let alive = inventory::is_alive(&rec.wrapper) || launch::launcher_alive(&rec.run_dir);
            let deleted = pod.is_none_or(|p| p.metadata.deletion_timestamp.is_some());
            if deleted {
                if alive {
                    self.terminate(&dir, &mut rec)?;
                    continue;
                }
                info!(pod = %rec.name, node = %rec.node, "launcher pod gone; state removed");
                self.children.remove(&dir);
                let _ = std::fs::remove_dir_all(&rec.run_dir);
                let _ = std::fs::remove_dir_all(&dir);
                continue;
            }
            let pod = pod.expect("not deleted");
            if alive {
                if pod.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Running") {
                    write_running(self.store, pod, CONTAINER, &rec.node, &rec.started_at)?;
                }
                continue;
            }
            if !rec.reported {
                write_terminated(self.store, pod, CONTAINER, &dir, &rec.started_at)?;
                rec.reported = true;
                write_record(&dir, &rec)?;
                // Killed outright, the launcher could not remove its directory.
                let _ = std::fs::remove_dir_all(&rec.run_dir);
            }
        }
        for p in &pods {
            let key = (p.namespace().unwrap_or_default(), p.name_any());
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            let Some(node) = node else { continue };
            if known.contains(&key)
                || p.metadata.deletion_timestamp.is_some()
                || matches!(phase, Some("Succeeded" | "Failed"))
                || plan::node_index(&node).is_none_or(|i| i > self.cfg.nodes)
            {
                continue;
            }
            if let Err(why) = self.start(p, &node) {
                warn!(pod = %key.1, %node, %why, "launcher pod could not start");
                write_failed_to_start(self.store, p, CONTAINER, &why)?;
            }
        }
        Ok(())
    }

    /// The lab store has no garbage collector: a launcher pod whose owner
    /// VMI is gone is deleted here, as Kubernetes' collector would (the
    /// owner reference the controller set).
    fn collect_garbage(&self, pods: &mut Vec<Pod>) -> Result<(), LabError> {
        let vmis: std::collections::BTreeSet<String> = self
            .store
            .list::<crate::api::VirtualMachineInstance>(None)?
            .into_iter()
            .filter_map(|v| v.metadata.uid)
            .collect();
        let orphan = |p: &Pod| {
            p.owner_references()
                .iter()
                .find(|o| o.kind == "VirtualMachineInstance")
                .is_some_and(|o| !vmis.contains(&o.uid))
        };
        for p in pods.iter().filter(|p| orphan(p)) {
            let key = crate::store::Key::for_type::<Pod>(
                &p.namespace().unwrap_or_default(),
                &p.name_any(),
            );
            match self.store.delete(&key) {
                Ok(_) => info!(pod = %p.name_any(), "launcher pod's VMI is gone; pod deleted"),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        pods.retain(|p| !orphan(p));
        Ok(())
    }

    fn guest(&mut self) -> Result<(PathBuf, PathBuf), String> {
        if let Some(g) = &self.guest {
            return Ok(g.clone());
        }
        let boot = super::daemon::guest_boot().map_err(|e| e.to_string())?;
        let g = (boot.kernel, boot.initrd);
        self.guest = Some(g.clone());
        Ok(g)
    }

    fn start(&mut self, pod: &Pod, node: &str) -> Result<(), String> {
        let guest = self.guest()?;
        let node_vms = super::node_vms_dir(&self.cfg.dir, node);
        let (spec_json, run_dir) = lab_launch(pod, &node_vms, &guest)?;
        let exe = find_mignet()?;
        let ns = pod.namespace().unwrap_or_default();
        let name = pod.name_any();
        let dir = pods_dir(&self.cfg.dir, node).join(format!("{ns}_{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        std::fs::create_dir_all(&node_vms).map_err(|e| format!("{}: {e}", node_vms.display()))?;
        let netns = netns_path(&self.cfg.node_ns(node));
        let env = pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == CONTAINER))
            .and_then(|c| c.env.clone())
            .unwrap_or_default();
        let tl = termination_log(&dir);
        let args = [
            "launcher".as_ref(),
            "--run-dir".as_ref(),
            run_dir.as_os_str(),
            "--termination-log".as_ref(),
            tl.as_os_str(),
        ];
        let child = spawn_container(&exe, &args, &dir, &netns, |cmd| {
            cmd.env_remove("MIGNET_LAB_DIR");
            for e in env {
                if let Some(v) = e.value {
                    cmd.env(&e.name, v);
                }
            }
            cmd.env(launch::SPEC_ENV, &spec_json);
        })
        .map_err(|e| format!("node {node}: {e}"))?;
        let pid = child.id() as i32;
        let rec = PodRecord {
            namespace: ns,
            name: name.clone(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            node: node.to_owned(),
            run_dir: run_dir.clone(),
            wrapper: ProcessRecord {
                pid,
                start_time: inventory::process_start_time(pid).unwrap_or(0),
                what: format!("launcher pod {name}"),
            },
            grace_seconds: grace_seconds(pod),
            terminating_since: None,
            reported: false,
            started_at: now_time().0.to_string(),
        };
        self.children.insert(dir.clone(), child);
        write_record(&dir, &rec).map_err(|e| e.to_string())?;
        info!(pod = %name, %node, run_dir = %run_dir.display(), pid, "launcher pod started");
        write_running(self.store, pod, CONTAINER, node, &rec.started_at).map_err(|e| e.to_string())
    }

    /// SIGTERM once, SIGKILL after the grace period.
    fn terminate(&mut self, dir: &Path, rec: &mut PodRecord) -> Result<(), LabError> {
        use nix::sys::signal::Signal;
        let pid = launcher_pid(dir, &rec.run_dir);
        match rec.terminating_since {
            None => {
                info!(pod = %rec.name, node = %rec.node, "launcher pod deleted: SIGTERM");
                match pid {
                    Some(p) => signal(p, Signal::SIGTERM),
                    // Not started yet: the wrapper, before it starts one.
                    None if inventory::is_alive(&rec.wrapper) => {
                        signal(rec.wrapper.pid, Signal::SIGTERM)
                    }
                    None => {}
                }
                rec.terminating_since = Some(now_secs());
                write_record(dir, rec)
            }
            Some(t) if now_secs() >= t + rec.grace_seconds => {
                warn!(pod = %rec.name, "launcher did not stop within its grace period: SIGKILL");
                if let Some(p) = pid {
                    signal(p, Signal::SIGKILL);
                }
                if inventory::is_alive(&rec.wrapper) {
                    signal(rec.wrapper.pid, Signal::SIGKILL);
                }
                Ok(())
            }
            Some(_) => Ok(()),
        }
    }
}

/// Read-modify-write of a pod's status (same uid), retried on conflict.
pub(crate) fn patch_status(store: &Store, pod: &Pod, f: impl Fn(&mut Pod)) -> Result<(), LabError> {
    let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    for _ in 0..5 {
        let Some(mut cur) = store.get::<Pod>(&ns, &name)? else {
            return Ok(());
        };
        if cur.metadata.uid != pod.metadata.uid {
            return Ok(());
        }
        f(&mut cur);
        match store.update_status(&cur) {
            Ok(_) => return Ok(()),
            Err(e) if e.is_conflict() => continue,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// `Running`, as a kubelet writes it once `container` runs.
pub(crate) fn write_running(
    store: &Store,
    pod: &Pod,
    container: &str,
    node: &str,
    started_at: &str,
) -> Result<(), LabError> {
    let started = started_at.parse().map(Time).unwrap_or_else(|_| now_time());
    let host_ip = plan::node_index(node).map(|i| plan::node_ip(i).to_string());
    patch_status(store, pod, |p| {
        let image = image_of(p);
        let st = p.status.get_or_insert_with(Default::default);
        st.phase = Some("Running".into());
        st.host_ip = host_ip.clone();
        st.start_time.get_or_insert_with(|| started.clone());
        set_conditions(st, "True", &started);
        st.container_statuses = Some(vec![ContainerStatus {
            name: container.into(),
            image,
            image_id: String::new(),
            ready: true,
            restart_count: 0,
            started: Some(true),
            state: Some(ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: Some(started.clone()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]);
    })
}

/// `Succeeded`/`Failed` with `container`'s exit code and termination
/// message, read from its state in `dir`.
pub(crate) fn write_terminated(
    store: &Store,
    pod: &Pod,
    container: &str,
    dir: &Path,
    started_at: &str,
) -> Result<(), LabError> {
    let code: Option<i32> = std::fs::read_to_string(dir.join(EXIT_FILE))
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let mut message = tail(&dir.join(TERMINATION_LOG), 4096);
    if message.is_empty() && code != Some(0) {
        // FallbackToLogsOnError.
        message = tail(&dir.join(LOG_FILE), 2048);
    }
    // No exit code: the wrapper itself was killed (SIGKILL = 137).
    let exit_code = code.unwrap_or(137);
    if message.is_empty() && code.is_none() {
        message = format!("the {container} container was killed");
    }
    info!(pod = %pod.name_any(), exit_code, %message, "pod ended");
    let started = started_at.parse().map(Time).ok();
    let finished = now_time();
    patch_status(store, pod, |p| {
        let image = image_of(p);
        let st = p.status.get_or_insert_with(Default::default);
        st.phase = Some(
            if exit_code == 0 {
                "Succeeded"
            } else {
                "Failed"
            }
            .into(),
        );
        set_conditions(st, "False", &finished);
        st.container_statuses = Some(vec![ContainerStatus {
            name: container.into(),
            image,
            image_id: String::new(),
            ready: false,
            restart_count: 0,
            started: Some(false),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code,
                    reason: Some(if exit_code == 0 { "Completed" } else { "Error" }.into()),
                    message: (!message.is_empty()).then(|| message.clone()),
                    started_at: started.clone(),
                    finished_at: Some(finished.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]);
    })
}

/// The container could not even start (a pod the lab cannot map):
/// Failed, with why as the terminated message.
pub(crate) fn write_failed_to_start(
    store: &Store,
    pod: &Pod,
    container: &str,
    why: &str,
) -> Result<(), LabError> {
    let now = now_time();
    patch_status(store, pod, |p| {
        let st = p.status.get_or_insert_with(Default::default);
        st.phase = Some("Failed".into());
        set_conditions(st, "False", &now);
        st.container_statuses = Some(vec![ContainerStatus {
            name: container.into(),
            state: Some(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: 128,
                    reason: Some("StartError".into()),
                    message: Some(why.to_owned()),
                    finished_at: Some(now.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }]);
    })
}

fn set_conditions(st: &mut k8s_openapi::api::core::v1::PodStatus, ready: &str, t: &Time) {
    let conds = st.conditions.get_or_insert_with(Vec::new);
    for type_ in ["Initialized", "ContainersReady", "Ready"] {
        let status = if type_ == "Initialized" {
            "True"
        } else {
            ready
        };
        if conds.iter().any(|c| c.type_ == type_ && c.status == status) {
            continue;
        }
        conds.retain(|c| c.type_ != type_);
        conds.push(PodCondition {
            type_: type_.into(),
            status: status.into(),
            last_transition_time: Some(t.clone()),
            ..Default::default()
        });
    }
}

/// The launcher container's image, as a kubelet reports it in the status.
fn image_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// A pod's `terminationGracePeriodSeconds` (Kubernetes' 30 when unset):
/// SIGTERM turns into SIGKILL after it.
pub(crate) fn grace_seconds(pod: &Pod) -> u64 {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .unwrap_or(30)
        .max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{VirtualMachineInstance, VirtualMachineInstanceSpec};
    use crate::control::launcher_pod::{launcher_pod, LauncherSettings, Role};

    fn pod() -> Pod {
        let mut v = VirtualMachineInstance::new("vm-fedora", VirtualMachineInstanceSpec::default());
        v.metadata.namespace = Some("mignet-system".into());
        v.metadata.uid = Some("abcdef12".into());
        let s = LauncherSettings {
            image: "mignet:lab".into(),
            image_pull_policy: None,
            emulation_allowed: true,
        };
        launcher_pod(&v, &Role::Source, &s).unwrap()
    }

    #[test]
    fn the_wrapper_runs_any_args_and_records_pid_output_and_exit_code() {
        let dir = std::env::temp_dir().join(format!("mignet-wrapper-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let script = r#"echo "$1|$2"; echo "$X" >&2; exit 3"#;
        let args = ["-c", script, "sh", "two words", "$(not expanded)"].map(std::ffi::OsStr::new);
        let mut child = spawn_container(
            Path::new("/bin/sh"),
            &args,
            &dir,
            Path::new("/proc/self/ns/net"),
            |c| {
                c.env("X", "from env");
            },
        )
        .unwrap();
        child.wait().unwrap();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read(EXIT_FILE).trim(), "3");
        assert_eq!(read(LOG_FILE), "two words|$(not expanded)\nfrom env\n");
        assert!(read(PID_FILE).trim().parse::<i32>().unwrap() > 0);
        assert_eq!(read(TERMINATION_LOG), "", "created empty for the container");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_pod_maps_onto_the_node_directory_and_the_lab_guest() {
        let guest = (
            PathBuf::from("/g/vmlinuz"),
            PathBuf::from("/g/initramfs.img"),
        );
        let (json, run_dir) = lab_launch(&pod(), Path::new("/lab/vms/node1"), &guest).unwrap();
        assert_eq!(
            run_dir,
            Path::new("/lab/vms/node1/mignet-system_virt-launcher-vm-fedora-abcde")
        );
        let spec: LaunchSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(
            spec.boot,
            Boot::Kernel {
                kernel: guest.0.clone(),
                initrd: guest.1.clone()
            }
        );
        assert!(spec.emulation_allowed && !spec.incoming);
        // A lab directory too long for the agent's sockets is said so.
        let long = Path::new("/tmp").join("d".repeat(40));
        let e = lab_launch(&pod(), &long, &guest).unwrap_err();
        assert!(
            e.contains("too long") && e.contains("MIGNET_LAB_DIR"),
            "{e}"
        );
    }
}
