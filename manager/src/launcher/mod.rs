//! `mignet launcher`: one VM's QEMU inside its own pod (KubeVirt's
//! virt-launcher model).
//!
//! The controller creates one launcher pod per VMI with the [`LaunchSpec`] in
//! `$MIGNET_LAUNCH_SPEC`; the launcher runs QEMU as its direct child, so the
//! pod lives exactly as long as the VM (a QEMU started by the node agent
//! would live in the agent's cgroup and die with it). The agent reaches the
//! VM through the per-VMI run directory on a hostPath both pods mount,
//! [`run_dir_for`]`(namespace, pod)`:
//!
//! | file | written by | meaning |
//! |---|---|---|
//! | `launcher.lock` | launcher | `flock`ed for the launcher's lifetime: [`launcher_alive`] |
//! | `launcher.json` | launcher | [`LauncherStatus`]: spec, accelerator, start time |
//! | `qmp.sock` | QEMU | QMP for the agent (QEMU serves one client; the launcher never connects) |
//! | `launcher-qmp.sock` | QEMU | the launcher's own QMP: readiness, then held while QEMU runs to watch its events (why the VM ended) |
//! | `serial.log`, `qemu.pid` | QEMU | guest console, QEMU's pid (in the pod's pid namespace) |
//! | `vm.json` | launcher / agent | the `VmRequest` (`request` format); written by the launcher once QMP answers, except for `incoming` launches, where the agent writes it when the migration completes |
//!
//! When QEMU exits the launcher removes the directory (the lock last) and
//! exits with one of these codes (the pod's container exit code; the
//! controller turns non-zero into a `Failed` VMI with the message):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | QEMU exited 0 and the VM ended normally: the guest powered off (`guest-shutdown`), the launcher stopped it on SIGTERM (`host-signal`), or it was told to `quit` over QMP (`host-qmp-quit`, the source after a migration); also when why is unknown |
//! | 1 | anything else: QEMU failed to start or exited non-zero (its stderr in the message), QEMU stopped the VM after a host-side error (`host-error`), I/O errors |
//! | 2 | the launch spec cannot run |
//! | 3 | no usable KVM and emulation not allowed |
//! | 4 | the guest reset itself (a reboot, or a kernel panic: the guest boots with `panic=-1`) or reported a panic; QEMU runs with `-no-reboot`, so the VM ended although QEMU exited 0 |
//!
//! Why QEMU ended comes from its `SHUTDOWN` event (`reason`) and
//! `GUEST_PANICKED`, read on `launcher-qmp.sock`: the launcher connects once
//! QEMU starts and keeps the session until QEMU closes it ([`guest_end`]).
//! If that connection is lost or an event is missed, QEMU's exit status
//! decides alone and the reason is logged as unknown. A SIGTERM is passed
//! on to QEMU as a signal, never over that session.
//!
//! Failure messages go to stderr and to `/dev/termination-log` (the
//! container's termination message). For exit 4 the message says what
//! happened in words, then the console's `Kernel panic` line if it has one
//! and its last lines.
//!
//! Pure parts: [`spec`] (validation, the QEMU command), [`accel`] (the
//! choice) and [`guest_end`] (QMP events and console to an exit code and
//! words); the I/O is in `run`.

pub mod accel;
pub mod guest_end;
pub mod request;
mod run;
pub mod spec;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use accel::{choose_accel, probe_kvm, Accel, AccelError, KvmProbe};
pub use run::{report_failure, run, LaunchOptions};
pub use spec::{Boot, DiskSpec, LaunchSpec, SpecError};

/// The hostPath under which every launcher has its run directory.
pub const RUN_ROOT: &str = "/var/run/mignet/vms";
/// The environment variable holding the [`LaunchSpec`] as JSON.
pub const SPEC_ENV: &str = "MIGNET_LAUNCH_SPEC";
/// Held with `flock(LOCK_EX)` by the launcher while it runs.
pub const LOCK_FILE: &str = "launcher.lock";
/// [`LauncherStatus`] as JSON.
pub const STATUS_FILE: &str = "launcher.json";
/// The launcher's own QMP socket (the agent's is `qmp.sock`).
pub const LAUNCHER_QMP: &str = "launcher-qmp.sock";
/// Where Kubernetes reads a container's termination message.
pub const TERMINATION_LOG: &str = "/dev/termination-log";

/// Longest unix socket path (`sun_path` is 108 bytes with the NUL).
const MAX_UNIX_PATH: usize = 107;
/// The socket names QEMU creates in a run directory; the longest decides.
const SOCKETS: [&str; 2] = ["qmp.sock", LAUNCHER_QMP];

/// `launcher.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LauncherStatus {
    pub spec: LaunchSpec,
    pub accel: Accel,
    /// RFC 3339.
    pub started_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("--run-dir {dir:?}: socket {socket:?} would be {len} bytes, more than a unix socket path holds ({MAX_UNIX_PATH}); use shorter names")]
    RunDirTooLong {
        dir: PathBuf,
        socket: PathBuf,
        len: usize,
    },
    #[error(transparent)]
    Accel(#[from] AccelError),
    #[error("run directory {dir:?} is in use by a live launcher ({LOCK_FILE} is locked)")]
    Busy { dir: PathBuf },
    #[error("run directory {dir:?}: {what}: {source}")]
    RunDir {
        dir: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path:?}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path:?}: {detail}")]
    Record { path: PathBuf, detail: String },
    #[error("cannot install the {signal} handler: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start QEMU ({binary:?}): {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU did not answer on {socket:?}: {detail}")]
    NoQmp { socket: PathBuf, detail: String },
    #[error("QEMU exited with {status}: {stderr}")]
    QemuExited {
        status: std::process::ExitStatus,
        stderr: String,
    },
    /// QEMU exited 0, but the VM did not end normally (a guest reset or
    /// panic, a host-side error).
    #[error("{message}")]
    VmEnded {
        ending: guest_end::Ending,
        /// [`guest_end::failure_message`]: what happened, then the console.
        message: String,
    },
}

impl LauncherError {
    /// The launcher's exit code for this error: 2 for a spec that cannot
    /// run, 3 for missing KVM without `useEmulation`, 4 for a guest that
    /// reset itself or panicked, 1 for the rest.
    pub fn exit_code(&self) -> i32 {
        match self {
            LauncherError::Spec(_) | LauncherError::RunDirTooLong { .. } => 2,
            LauncherError::Accel(_) => 3,
            LauncherError::VmEnded { ending, .. } => match ending.exit_code() {
                // Never 0 for an error.
                0 => 1,
                code => code,
            },
            _ => 1,
        }
    }
}

/// `RUN_ROOT/<namespace>_<pod_name>`. Names are used as they are (Kubernetes
/// names hold no `/` or `_`, so the pair is unambiguous) while every socket
/// path in the directory fits a unix socket address (namespace and pod name
/// together up to 68 bytes). Longer pairs (a 63-character pod name in a
/// long namespace) get a stable short form, the first 52 bytes of
/// `<namespace>_<pod_name>`, `-` and a 64-bit FNV-1a hash of all of it in
/// hex, so the same pod always maps to the same directory.
pub fn run_dir_for(namespace: &str, pod_name: &str) -> PathBuf {
    let stem = format!("{namespace}_{pod_name}");
    let longest = SOCKETS.iter().map(|s| s.len()).max().unwrap_or(0);
    // RUN_ROOT "/" stem "/" socket
    let budget = MAX_UNIX_PATH - RUN_ROOT.len() - 2 - longest;
    if stem.len() <= budget {
        return Path::new(RUN_ROOT).join(stem);
    }
    let hash = stem.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let mut cut = budget - 17;
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    Path::new(RUN_ROOT).join(format!("{}-{hash:016x}", &stem[..cut]))
}

/// Checks that every socket QEMU creates in `run_dir` fits `sun_path`.
pub fn check_run_dir(run_dir: &Path) -> Result<(), LauncherError> {
    for s in SOCKETS {
        let socket = run_dir.join(s);
        let len = socket.as_os_str().len();
        if len > MAX_UNIX_PATH {
            return Err(LauncherError::RunDirTooLong {
                dir: run_dir.to_path_buf(),
                socket,
                len,
            });
        }
    }
    Ok(())
}

/// Whether a launcher holds `run_dir`'s lock: a non-blocking shared `flock`
/// probe (shared, so two probing agents never see each other as a launcher).
/// A missing directory or lock file means no launcher. The QEMU pid is no
/// use to the agent: it lives in the launcher pod's pid namespace.
pub fn launcher_alive(run_dir: &Path) -> bool {
    use nix::fcntl::{Flock, FlockArg};
    let Ok(file) = std::fs::File::open(run_dir.join(LOCK_FILE)) else {
        return false;
    };
    match Flock::lock(file, FlockArg::LockSharedNonblock) {
        // Dropping the guard unlocks at once.
        Ok(_probe) => false,
        Err((_, errno)) => errno == nix::errno::Errno::EWOULDBLOCK,
    }
}

/// `launcher.json` of `run_dir`, if there is a readable one.
pub fn read_status(run_dir: &Path) -> Option<LauncherStatus> {
    let bytes = std::fs::read(run_dir.join(STATUS_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The lab guest the mignet image carries (deploy/image/build.sh,
/// `MIGNET_GUEST_DIR`), for VMIs without disks: kernel and initramfs.
pub fn guest_files() -> (PathBuf, PathBuf) {
    let dir = Path::new("/usr/share/mignet/guest");
    (dir.join("vmlinuz"), dir.join("initramfs.img"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dir_layout_and_socket_limit() {
        assert_eq!(
            run_dir_for("default", "virt-launcher-vm1-abcde"),
            PathBuf::from("/var/run/mignet/vms/default_virt-launcher-vm1-abcde")
        );
        check_run_dir(&run_dir_for("default", "virt-launcher-vm1-abcde")).unwrap();
        // "/var/run/mignet/vms/" + 68 + "/launcher-qmp.sock" = 106 bytes fit
        // as they are.
        let ns = "n".repeat(30);
        let fits = run_dir_for(&ns, &"p".repeat(38));
        assert_eq!(
            fits,
            Path::new(RUN_ROOT).join(format!("{ns}_{}", "p".repeat(38)))
        );
        assert_eq!(fits.join(LAUNCHER_QMP).as_os_str().len(), MAX_UNIX_PATH);
        check_run_dir(&fits).unwrap();
        // Longer names: shortened, stable, distinct, still fitting.
        let long = run_dir_for(&"n".repeat(63), &"p".repeat(63));
        assert_eq!(long, run_dir_for(&"n".repeat(63), &"p".repeat(63)));
        assert_ne!(
            long,
            run_dir_for(&"n".repeat(63), &format!("{}q", "p".repeat(62)))
        );
        assert_eq!(long.join(LAUNCHER_QMP).as_os_str().len(), MAX_UNIX_PATH);
        check_run_dir(&long).unwrap();
        let name = long.file_name().unwrap().to_str().unwrap();
        assert!(
            name.starts_with(&"n".repeat(52)) && name.len() == 69,
            "{name}"
        );
        // A --run-dir given by hand is checked.
        let e = check_run_dir(&Path::new("/tmp").join("d".repeat(90))).unwrap_err();
        assert!(e.to_string().contains("launcher-qmp.sock"), "{e}");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn lock_probe() {
        use nix::fcntl::{Flock, FlockArg};
        let dir = std::env::temp_dir().join(format!("mignet-lockprobe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!launcher_alive(&dir), "no lock file");
        let f = std::fs::File::create(dir.join(LOCK_FILE)).unwrap();
        assert!(!launcher_alive(&dir), "unlocked");
        let held = Flock::lock(f, FlockArg::LockExclusiveNonblock).unwrap();
        assert!(launcher_alive(&dir), "locked");
        drop(held);
        assert!(!launcher_alive(&dir), "released");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exit_codes() {
        let spec = LauncherError::Spec(SpecError::Missing { env: SPEC_ENV });
        assert_eq!(spec.exit_code(), 2);
        assert_eq!(
            spec.to_string(),
            "no launch spec: set $MIGNET_LAUNCH_SPEC or pass --spec-json"
        );
        let accel = LauncherError::Accel(AccelError::NoKvmNoEmulation { why: "x".into() });
        assert_eq!(accel.exit_code(), 3);
        let busy = LauncherError::Busy { dir: "/d".into() };
        assert_eq!(busy.exit_code(), 1);
        for (ending, code) in [
            (guest_end::Ending::GuestReset, 4),
            (guest_end::Ending::GuestPanic, 4),
            (guest_end::Ending::HostError, 1),
        ] {
            let e = LauncherError::VmEnded {
                ending,
                message: "the words".into(),
            };
            assert_eq!((e.exit_code(), e.to_string().as_str()), (code, "the words"));
        }
    }
}
