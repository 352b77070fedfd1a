//! A QEMU VM as an operating-system process that outlives the agent.
//!
//! QEMU is started with `-daemonize`: it forks, calls `setsid()`, writes its pid
//! file and only then lets the process we spawned exit, after the machine is
//! initialised and the QMP socket is listening. So the VM is never our child
//! (an agent restart or crash does not take it down: no `PR_SET_PDEATHSIG`, no
//! shared session or process group), start-up errors still come back as the
//! exit status and stderr of the spawned process, and "started" means "QMP is
//! reachable". A restarted agent finds the VM again through the pid file and
//! the QMP socket ([`VmProcess::reattach`]).
//!
//! [`VmProcess`] is a guard: dropping it kills the VM unless it was detached.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Longest path a unix socket address can hold (`sun_path` is 108 bytes,
/// including the terminating NUL).
const MAX_UNIX_PATH: usize = 107;

/// How long QEMU may take to initialise before `-daemonize` lets the spawned
/// parent exit. TCG start-up is well under a second; the margin covers a
/// loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a VM gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("VM {name}: {what} path {path:?} is too long for a unix socket ({len} > {MAX_UNIX_PATH} bytes)")]
    SocketPathTooLong {
        name: String,
        what: &'static str,
        path: PathBuf,
        len: usize,
    },
    #[error("VM {name}: cannot create run directory {dir:?}")]
    RunDir {
        name: String,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("VM {name}: cannot run {binary:?}")]
    Spawn {
        name: String,
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("VM {name}: QEMU did not finish starting within {after:?}")]
    StartTimeout { name: String, after: Duration },
    #[error("VM {name}: QEMU failed to start ({status}): {stderr}")]
    StartFailed {
        name: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("cannot read pid file {path:?}")]
    PidFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pid file {path:?} does not hold a pid: {content:?}")]
    PidFileContent { path: PathBuf, content: String },
    #[error("process {pid} from {pid_file:?} is not running")]
    NotRunning { pid: i32, pid_file: PathBuf },
    #[error("process {pid} is not the QEMU serving {qmp_socket:?} (pid reused?)")]
    NotOurQemu { pid: i32, qmp_socket: PathBuf },
    #[error("cannot signal QEMU process {pid} with {signal}")]
    Signal {
        pid: i32,
        signal: Signal,
        #[source]
        source: Errno,
    },
    #[error("QEMU process {pid} still alive {after:?} after SIGKILL")]
    Unkillable { pid: i32, after: Duration },
}

/// Everything needed to start one VM. Paths of the QMP socket, serial log and
/// pid file are derived from `run_dir`, one directory per VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Used in `-name` and in error messages.
    pub name: String,
    pub qemu_binary: PathBuf,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// `-cpu` model; `qemu64` is what TCG on these machines runs reliably.
    pub cpu_model: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Kernel command line (`-append`).
    pub cmdline: String,
    pub run_dir: PathBuf,
    /// Start as a migration destination: `-incoming defer`, waiting for
    /// `migrate-incoming` over QMP.
    pub incoming_defer: bool,
    /// Run QEMU inside this named network namespace (`ip netns exec`), for
    /// migrations over TCP between namespaces. `None` for unix-socket paths.
    pub netns: Option<String>,
    /// Appended verbatim at the end of the command line.
    pub extra_args: Vec<String>,
}

impl VmSpec {
    /// A small TCG guest with defaults that work on these machines:
    /// 256 MiB, 1 vCPU, `qemu64`, serial console on ttyS0.
    pub fn new(
        name: impl Into<String>,
        run_dir: impl Into<PathBuf>,
        kernel: impl Into<PathBuf>,
        initrd: impl Into<PathBuf>,
    ) -> Self {
        VmSpec {
            name: name.into(),
            qemu_binary: PathBuf::from("qemu-system-x86_64"),
            memory_mib: 256,
            vcpus: 1,
            cpu_model: "qemu64".into(),
            kernel: kernel.into(),
            initrd: initrd.into(),
            cmdline: "console=ttyS0 quiet panic=-1".into(),
            run_dir: run_dir.into(),
            incoming_defer: false,
            netns: None,
            extra_args: Vec::new(),
        }
    }

    pub fn qmp_socket(&self) -> PathBuf {
        self.run_dir.join("qmp.sock")
    }

    pub fn serial_log(&self) -> PathBuf {
        self.run_dir.join("serial.log")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.run_dir.join("qemu.pid")
    }

    /// Checks what can be checked without touching the system.
    pub fn validate(&self) -> Result<(), VmError> {
        let qmp = self.qmp_socket();
        let len = qmp.as_os_str().len();
        if len > MAX_UNIX_PATH {
            return Err(VmError::SocketPathTooLong {
                name: self.name.clone(),
                what: "QMP socket",
                path: qmp,
                len,
            });
        }
        Ok(())
    }

    /// The full command line: program first, then its arguments.
    pub fn command_line(&self) -> Vec<OsString> {
        let mut argv: Vec<OsString> = Vec::new();
        if let Some(ns) = &self.netns {
            argv.extend(["ip", "netns", "exec"].map(OsString::from));
            argv.push(ns.into());
        }
        argv.push(self.qemu_binary.clone().into());
        let mut push = |s: &str| argv.push(s.into());
        // KVM does not work on these machines (emulation errors): always TCG.
        for a in [
            "-accel",
            "tcg",
            "-machine",
            "q35",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ] {
            push(a);
        }
        push("-name");
        push(&self.name);
        push("-cpu");
        push(&self.cpu_model);
        push("-m");
        push(&self.memory_mib.to_string());
        push("-smp");
        push(&self.vcpus.to_string());
        push("-kernel");
        argv.push(self.kernel.clone().into());
        argv.push("-initrd".into());
        argv.push(self.initrd.clone().into());
        argv.push("-append".into());
        argv.push(self.cmdline.clone().into());
        argv.push("-serial".into());
        argv.push(path_arg("file:", &self.serial_log()));
        argv.push("-qmp".into());
        let mut qmp = path_arg("unix:", &self.qmp_socket());
        qmp.push(",server=on,wait=off");
        argv.push(qmp);
        argv.push("-pidfile".into());
        argv.push(self.pid_file().into());
        argv.push("-daemonize".into());
        if self.incoming_defer {
            argv.push("-incoming".into());
            argv.push("defer".into());
        }
        argv.extend(self.extra_args.iter().map(OsString::from));
        argv
    }
}

fn path_arg(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path.as_os_str());
    s
}

/// A running QEMU process. Kills the VM on drop unless [`detach`](Self::detach)ed.
#[derive(Debug)]
pub struct VmProcess {
    name: String,
    pid: i32,
    qmp_socket: PathBuf,
    serial_log: Option<PathBuf>,
    pid_file: PathBuf,
    kill_on_drop: bool,
}

impl VmProcess {
    /// Starts the VM and returns once QEMU has daemonized (QMP is listening).
    pub async fn start(spec: &VmSpec) -> Result<VmProcess, VmError> {
        spec.validate()?;
        std::fs::create_dir_all(&spec.run_dir).map_err(|source| VmError::RunDir {
            name: spec.name.clone(),
            dir: spec.run_dir.clone(),
            source,
        })?;
        // Leftovers of an earlier VM in the same directory would make us read a
        // stale pid or let QEMU fail to bind the socket.
        for p in [spec.qmp_socket(), spec.pid_file(), spec.serial_log()] {
            let _ = std::fs::remove_file(p);
        }
        let argv = spec.command_line();
        let mut cmd = tokio::process::Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            // Only the short-lived daemonizing parent is our child; if we are
            // cancelled while it runs, do not leave it behind.
            .kill_on_drop(true);
        let child = cmd.spawn().map_err(|source| VmError::Spawn {
            name: spec.name.clone(),
            binary: PathBuf::from(&argv[0]),
            source,
        })?;
        let out = match tokio::time::timeout(START_TIMEOUT, child.wait_with_output()).await {
            Ok(out) => out,
            Err(_) => {
                // The daemonizing parent is killed with the dropped future; a
                // daemon that already wrote its pid file would be left behind.
                if let Ok(vm) =
                    VmProcess::reattach(&spec.name, &spec.pid_file(), &spec.qmp_socket())
                {
                    drop(vm);
                }
                return Err(VmError::StartTimeout {
                    name: spec.name.clone(),
                    after: START_TIMEOUT,
                });
            }
        }
        .map_err(|source| VmError::Spawn {
            name: spec.name.clone(),
            binary: PathBuf::from(&argv[0]),
            source,
        })?;
        if !out.status.success() {
            return Err(VmError::StartFailed {
                name: spec.name.clone(),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        let pid = read_pid_file(&spec.pid_file())?;
        Ok(VmProcess {
            name: spec.name.clone(),
            pid,
            qmp_socket: spec.qmp_socket(),
            serial_log: Some(spec.serial_log()),
            pid_file: spec.pid_file(),
            kill_on_drop: true,
        })
    }

    /// Finds a VM started earlier (possibly by another process) through its
    /// pid file, checking that the pid still belongs to the QEMU serving
    /// `qmp_socket` (a pid file can outlive its process and the pid be reused).
    /// The returned guard kills the VM on drop unless detached, like `start`.
    pub fn reattach(
        name: impl Into<String>,
        pid_file: &Path,
        qmp_socket: &Path,
    ) -> Result<VmProcess, VmError> {
        let pid = read_pid_file(pid_file)?;
        if !process_alive(pid) {
            return Err(VmError::NotRunning {
                pid,
                pid_file: pid_file.to_path_buf(),
            });
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let needle = qmp_socket.as_os_str().as_encoded_bytes();
        if !contains(&cmdline, needle) {
            return Err(VmError::NotOurQemu {
                pid,
                qmp_socket: qmp_socket.to_path_buf(),
            });
        }
        let serial_log = qmp_socket.parent().map(|d| d.join("serial.log"));
        Ok(VmProcess {
            name: name.into(),
            pid,
            qmp_socket: qmp_socket.to_path_buf(),
            serial_log: serial_log.filter(|p| p.exists()),
            pid_file: pid_file.to_path_buf(),
            kill_on_drop: true,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    pub fn qmp_socket(&self) -> &Path {
        &self.qmp_socket
    }

    pub fn pid_file(&self) -> &Path {
        &self.pid_file
    }

    pub fn serial_log(&self) -> Option<&Path> {
        self.serial_log.as_deref()
    }

    /// The serial console output so far (empty if there is none yet).
    pub fn serial_output(&self) -> String {
        self.serial_log
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn is_alive(&self) -> bool {
        process_alive(self.pid)
    }

    /// Lets the VM run on after this guard is gone; returns its pid.
    pub fn detach(mut self) -> i32 {
        self.kill_on_drop = false;
        self.pid
    }

    /// Waits up to `timeout` for the process to exit on its own (a migration
    /// destination exits after a failed or cancelled incoming migration).
    pub async fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_alive() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the VM: SIGTERM, then SIGKILL after a grace period; removes the
    /// QMP socket and pid file. Idempotent.
    pub fn kill(&mut self) -> Result<(), VmError> {
        self.stop(TERM_GRACE)?;
        self.kill_on_drop = false;
        Ok(())
    }

    fn stop(&self, grace: Duration) -> Result<(), VmError> {
        if self.is_alive() {
            if !grace.is_zero() {
                signal(self.pid, Signal::SIGTERM)?;
                wait_dead(self.pid, grace);
            }
            if self.is_alive() {
                signal(self.pid, Signal::SIGKILL)?;
                if !wait_dead(self.pid, Duration::from_secs(5)) {
                    return Err(VmError::Unkillable {
                        pid: self.pid,
                        after: Duration::from_secs(5),
                    });
                }
            }
        }
        let _ = std::fs::remove_file(&self.qmp_socket);
        let _ = std::fs::remove_file(&self.pid_file);
        Ok(())
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        if self.kill_on_drop {
            // Drop may run during a panic: no grace period, just make sure it
            // is gone.
            if let Err(e) = self.stop(Duration::ZERO) {
                tracing::warn!(vm = %self.name, error = %e, "could not kill VM on drop");
            }
        }
    }
}

fn signal(pid: i32, sig: Signal) -> Result<(), VmError> {
    match kill(Pid::from_raw(pid), sig) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(source) => Err(VmError::Signal {
            pid,
            signal: sig,
            source,
        }),
    }
}

fn wait_dead(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while process_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Whether `pid` is a live process. The VM is not our child, so once dead it
/// is reaped by init (or a subreaper) and may linger as a zombie until then:
/// a zombie counts as dead.
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => proc_stat_state(&stat).is_some_and(|s| s != 'Z' && s != 'X'),
        Err(_) => false,
    }
}

/// The state letter of a `/proc/<pid>/stat` line. The command name in
/// parentheses may itself contain spaces and parentheses, so split at the
/// last `)`.
fn proc_stat_state(stat: &str) -> Option<char> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

fn read_pid_file(path: &Path) -> Result<i32, VmError> {
    let content = std::fs::read_to_string(path).map_err(|source| VmError::PidFile {
        path: path.to_path_buf(),
        source,
    })?;
    match content.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(VmError::PidFileContent {
            path: path.to_path_buf(),
            content,
        }),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec::new("t1", "/run/mignet/vm/t1", "/k/vmlinuz", "/k/initrd")
    }

    fn args(spec: &VmSpec) -> Vec<String> {
        spec.command_line()
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn command_line_has_tcg_daemonize_pidfile_and_qmp() {
        let a = args(&spec());
        assert_eq!(a[0], "qemu-system-x86_64");
        let joined = a.join(" ");
        assert!(joined.contains("-accel tcg"));
        assert!(joined.contains("-daemonize"));
        assert!(joined.contains("-pidfile /run/mignet/vm/t1/qemu.pid"));
        assert!(joined.contains("-qmp unix:/run/mignet/vm/t1/qmp.sock,server=on,wait=off"));
        assert!(joined.contains("-serial file:/run/mignet/vm/t1/serial.log"));
        assert!(joined.contains("-m 256"));
        assert!(!joined.contains("-incoming"));
    }

    #[test]
    fn incoming_defer_and_netns() {
        let mut s = spec();
        s.incoming_defer = true;
        s.netns = Some("ns1".into());
        let a = args(&s);
        assert_eq!(
            &a[..5],
            ["ip", "netns", "exec", "ns1", "qemu-system-x86_64"]
        );
        let joined = a.join(" ");
        assert!(joined.contains("-incoming defer"));
    }

    #[test]
    fn too_long_socket_path_is_rejected() {
        let mut s = spec();
        s.run_dir = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
        assert!(matches!(
            s.validate(),
            Err(VmError::SocketPathTooLong { .. })
        ));
        assert!(spec().validate().is_ok());
    }

    #[test]
    fn stat_state_survives_odd_comm() {
        assert_eq!(proc_stat_state("42 (qemu) S 1 2 3"), Some('S'));
        assert_eq!(proc_stat_state("42 (a) b) Z 1 2 3"), Some('Z'));
        assert_eq!(proc_stat_state("garbage"), None);
    }

    #[test]
    fn own_process_is_alive_and_bogus_pid_is_not() {
        assert!(process_alive(std::process::id() as i32));
        assert!(!process_alive(i32::MAX));
    }
}
