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
//!
//! The same [`VmSpec`] also describes a QEMU that runs in the foreground as
//! the direct child of a launcher (`daemonize: false`, KVM or TCG, booting a
//! kernel or a disk): the launcher owns that child itself, `VmProcess::start`
//! is only for daemonized VMs.

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
    #[error("VM {name}: VmProcess::start runs daemonized VMs only (daemonize is false); spawn a foreground QEMU from command_line() instead")]
    NotDaemonized { name: String },
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

/// The QEMU accelerator (`-accel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Emulation: works everywhere, slowly.
    Tcg,
    /// Hardware virtualization through /dev/kvm.
    Kvm,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Tcg => "tcg",
            Accel::Kvm => "kvm",
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The controller a disk hangs off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveBus {
    /// `virtio-blk-pci`, one PCI device per disk.
    Virtio,
    /// `ide-hd` on an added AHCI controller (`ahci0`).
    Sata,
    /// `scsi-hd` on an added virtio-scsi controller (`scsi0`).
    Scsi,
}

/// A raw disk image attached to the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drive {
    /// Suffix of the QEMU ids (`drive-<id>`, `disk-<id>`); `[A-Za-z0-9_-]`.
    pub id: String,
    pub path: PathBuf,
    pub bus: DriveBus,
    pub read_only: bool,
    /// Boot from this disk (`bootindex=0`); at most one drive should say so.
    pub boot: bool,
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
    /// `-cpu` model. Under TCG the default is `kvm64`, not `qemu64`: a guest
    /// with qemu64's AMD vendor loses memory writes made during a
    /// multi-pass precopy migration in QEMU 7.2 (see the manager's
    /// `launcher::request::TCG_HOST_MODEL`).
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
    /// `-accel`; TCG unless the caller knows KVM works.
    pub accel: Accel,
    /// Boot `kernel` + `initrd` with `cmdline` (`-kernel`, `-initrd`,
    /// `-append`). When false the three fields are ignored and the firmware
    /// boots from the drive marked `boot`.
    pub kernel_boot: bool,
    /// Raw disk images, in order.
    pub drives: Vec<Drive>,
    /// `-daemonize` (the agent's VMs, which outlive the agent). False for a
    /// QEMU that stays the direct child of its launcher.
    pub daemonize: bool,
    /// A second QMP socket (QEMU's QMP serves one client at a time: the
    /// launcher probes its own socket and leaves `qmp.sock` to the agent).
    pub second_qmp_socket: Option<PathBuf>,
}

impl VmSpec {
    /// A small TCG guest with defaults that work on these machines:
    /// 256 MiB, 1 vCPU, `kvm64`, serial console on ttyS0.
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
            cpu_model: "kvm64".into(),
            kernel: kernel.into(),
            initrd: initrd.into(),
            cmdline: "console=ttyS0 quiet panic=-1".into(),
            run_dir: run_dir.into(),
            incoming_defer: false,
            netns: None,
            extra_args: Vec::new(),
            accel: Accel::Tcg,
            kernel_boot: true,
            drives: Vec::new(),
            daemonize: true,
            second_qmp_socket: None,
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
        let sockets = std::iter::once(("QMP socket", self.qmp_socket())).chain(
            self.second_qmp_socket
                .iter()
                .map(|p| ("second QMP socket", p.clone())),
        );
        for (what, path) in sockets {
            let len = path.as_os_str().len();
            if len > MAX_UNIX_PATH {
                return Err(VmError::SocketPathTooLong {
                    name: self.name.clone(),
                    what,
                    path,
                    len,
                });
            }
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
        // The default is TCG: KVM does not work on the lab machines.
        push("-accel");
        push(self.accel.as_str());
        for a in [
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
        if self.kernel_boot {
            argv.push("-kernel".into());
            argv.push(self.kernel.clone().into());
            argv.push("-initrd".into());
            argv.push(self.initrd.clone().into());
            argv.push("-append".into());
            argv.push(self.cmdline.clone().into());
        }
        argv.extend(drive_args(&self.drives));
        argv.push("-serial".into());
        argv.push(path_arg("file:", &self.serial_log()));
        argv.push("-qmp".into());
        let mut qmp = path_arg("unix:", &self.qmp_socket());
        qmp.push(",server=on,wait=off");
        argv.push(qmp);
        if let Some(second) = &self.second_qmp_socket {
            argv.push("-qmp".into());
            let mut qmp = path_arg("unix:", second);
            qmp.push(",server=on,wait=off");
            argv.push(qmp);
        }
        argv.push("-pidfile".into());
        argv.push(self.pid_file().into());
        if self.daemonize {
            argv.push("-daemonize".into());
        }
        if self.incoming_defer {
            argv.push("-incoming".into());
            argv.push("defer".into());
        }
        argv.extend(self.extra_args.iter().map(OsString::from));
        argv
    }
}

/// `-drive if=none` plus one `-device` per disk, so every bus works the same
/// way and the boot disk can carry `bootindex` (with `if=virtio` SeaBIOS
/// picks the boot order itself). The AHCI and virtio-scsi controllers are
/// added once, before their first disk.
fn drive_args(drives: &[Drive]) -> Vec<OsString> {
    let mut argv: Vec<OsString> = Vec::new();
    let (mut sata, mut scsi) = (0usize, 0usize);
    for d in drives {
        let mut drive = path_arg("file=", &escape_commas(&d.path));
        drive.push(format!(
            ",format=raw,if=none,id=drive-{},cache=writeback",
            d.id
        ));
        if d.read_only {
            drive.push(",readonly=on");
        }
        argv.push("-drive".into());
        argv.push(drive);
        let device = match d.bus {
            DriveBus::Virtio => format!("virtio-blk-pci,drive=drive-{0},id=disk-{0}", d.id),
            DriveBus::Sata => {
                if sata == 0 {
                    argv.extend(["-device", "ahci,id=ahci0"].map(OsString::from));
                }
                sata += 1;
                // One disk per AHCI port: ahci0.0 .. ahci0.5.
                format!(
                    "ide-hd,drive=drive-{0},id=disk-{0},bus=ahci0.{1}",
                    d.id,
                    sata - 1
                )
            }
            DriveBus::Scsi => {
                if scsi == 0 {
                    argv.extend(["-device", "virtio-scsi-pci,id=scsi0"].map(OsString::from));
                }
                scsi += 1;
                format!("scsi-hd,drive=drive-{0},id=disk-{0},bus=scsi0.0", d.id)
            }
        };
        let device = if d.boot {
            format!("{device},bootindex=0")
        } else {
            device
        };
        argv.push("-device".into());
        argv.push(device.into());
    }
    argv
}

/// QEMU's option syntax ends a value at `,`; a literal comma is written `,,`.
fn escape_commas(path: &Path) -> PathBuf {
    let bytes = path.as_os_str().as_encoded_bytes();
    if !bytes.contains(&b',') {
        return path.to_path_buf();
    }
    let s = path.to_string_lossy().replace(',', ",,");
    PathBuf::from(s)
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
        if !spec.daemonize {
            return Err(VmError::NotDaemonized {
                name: spec.name.clone(),
            });
        }
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
    fn defaults_keep_todays_command_line() {
        // What the agent's VMs ran before accel/drives/daemonize existed.
        assert_eq!(
            args(&spec()),
            [
                "qemu-system-x86_64",
                "-accel",
                "tcg",
                "-machine",
                "q35",
                "-nodefaults",
                "-display",
                "none",
                "-no-reboot",
                "-name",
                "t1",
                "-cpu",
                "kvm64",
                "-m",
                "256",
                "-smp",
                "1",
                "-kernel",
                "/k/vmlinuz",
                "-initrd",
                "/k/initrd",
                "-append",
                "console=ttyS0 quiet panic=-1",
                "-serial",
                "file:/run/mignet/vm/t1/serial.log",
                "-qmp",
                "unix:/run/mignet/vm/t1/qmp.sock,server=on,wait=off",
                "-pidfile",
                "/run/mignet/vm/t1/qemu.pid",
                "-daemonize",
            ]
        );
    }

    #[test]
    fn foreground_kvm_disk_boot_with_second_qmp() {
        let mut s = spec();
        s.accel = Accel::Kvm;
        s.cpu_model = "host".into();
        s.daemonize = false;
        s.kernel_boot = false;
        s.second_qmp_socket = Some("/run/mignet/vm/t1/launcher-qmp.sock".into());
        s.drives = vec![Drive {
            id: "rootdisk".into(),
            path: "/d/root,1.img".into(),
            bus: DriveBus::Virtio,
            read_only: false,
            boot: true,
        }];
        let joined = args(&s).join(" ");
        assert!(joined.contains("-accel kvm"), "{joined}");
        assert!(joined.contains("-cpu host"));
        assert!(!joined.contains("-daemonize"));
        assert!(!joined.contains("-kernel"));
        assert!(!joined.contains("-append"));
        assert!(joined.contains(
            "-drive file=/d/root,,1.img,format=raw,if=none,id=drive-rootdisk,cache=writeback -device virtio-blk-pci,drive=drive-rootdisk,id=disk-rootdisk,bootindex=0"
        ), "{joined}");
        assert!(joined.contains(
            "-qmp unix:/run/mignet/vm/t1/qmp.sock,server=on,wait=off -qmp unix:/run/mignet/vm/t1/launcher-qmp.sock,server=on,wait=off"
        ));
        assert!(joined.contains("-pidfile /run/mignet/vm/t1/qemu.pid"));
    }

    #[test]
    fn sata_and_scsi_disks_get_one_controller_each() {
        let mut s = spec();
        let d = |id: &str, bus, read_only| Drive {
            id: id.into(),
            path: format!("/d/{id}.img").into(),
            bus,
            read_only,
            boot: false,
        };
        s.drives = vec![
            d("a", DriveBus::Sata, false),
            d("b", DriveBus::Scsi, true),
            d("c", DriveBus::Sata, false),
            d("e", DriveBus::Scsi, false),
        ];
        let a = args(&s);
        let joined = a.join(" ");
        assert_eq!(a.iter().filter(|x| *x == "ahci,id=ahci0").count(), 1);
        assert_eq!(
            a.iter()
                .filter(|x| *x == "virtio-scsi-pci,id=scsi0")
                .count(),
            1
        );
        assert!(joined
            .contains("-device ahci,id=ahci0 -device ide-hd,drive=drive-a,id=disk-a,bus=ahci0.0"));
        assert!(joined.contains("ide-hd,drive=drive-c,id=disk-c,bus=ahci0.1"));
        assert!(joined.contains(
            "-drive file=/d/b.img,format=raw,if=none,id=drive-b,cache=writeback,readonly=on -device virtio-scsi-pci,id=scsi0 -device scsi-hd,drive=drive-b,id=disk-b,bus=scsi0.0"
        ), "{joined}");
        assert!(!joined.contains("bootindex"));
        // Kernel boot stays on unless turned off.
        assert!(joined.contains("-kernel /k/vmlinuz"));
    }

    #[test]
    fn start_refuses_a_foreground_spec() {
        let mut s = spec();
        s.daemonize = false;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(matches!(
            rt.block_on(VmProcess::start(&s)),
            Err(VmError::NotDaemonized { .. })
        ));
    }

    #[test]
    fn second_qmp_socket_length_is_checked() {
        let mut s = spec();
        s.second_qmp_socket = Some(PathBuf::from(format!("/tmp/{}", "y".repeat(110))));
        assert!(matches!(
            s.validate(),
            Err(VmError::SocketPathTooLong {
                what: "second QMP socket",
                ..
            })
        ));
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
