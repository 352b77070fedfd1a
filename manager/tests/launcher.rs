//! `mignet launcher` as the real binary, with the lab guest under TCG: the
//! run directory's files, the console on stdout, QMP for the agent, SIGTERM,
//! clean-up, the exit codes of a spec that cannot run, and how the VM ended
//! (QEMU exits 0 for all of these under -no-reboot): a guest power-off,
//! SIGTERM and a `quit` after a migration exit 0, a guest reboot or kernel
//! panic exits 4 with the words and the panic line.
//!
//! Run as root: `cargo test -p mignet --test launcher`.

mod agent_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mignet::agent::VmRequest;
use mignet::launcher::{self, Accel, Boot, DiskSpec, LaunchSpec};
use mignet_dataplane::qemu::QmpClient;

static N: AtomicU32 = AtomicU32::new(0);

/// A unique directory under /tmp (socket paths stay short), removed on drop
/// even when the test fails. The launcher's run directory is `run` in it.
struct TestDir(PathBuf);

impl TestDir {
    fn new() -> TestDir {
        let p = PathBuf::from(format!(
            "/tmp/mgl-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TestDir(p)
    }
    fn run_dir(&self) -> PathBuf {
        self.0.join("run")
    }
    /// A VM key no other test (or leftover) uses: `/proc` is searched for it.
    fn key(&self) -> String {
        format!("{}/vm", self.0.file_name().unwrap().to_string_lossy())
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `mignet launcher`: stdout and stderr collected by threads;
/// SIGKILLed on drop if still running (its QEMU follows: PDEATHSIG).
struct Launcher {
    child: Child,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

fn collect(mut r: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let out = Arc::new(Mutex::new(String::new()));
    let o = out.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            o.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    out
}

impl Launcher {
    fn start(run_dir: &Path, spec_json: &str, extra: &[&str]) -> Launcher {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mignet"))
            .arg("launcher")
            .arg("--run-dir")
            .arg(run_dir)
            .arg("--spec-json")
            .arg(spec_json)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run mignet launcher");
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Launcher {
            child,
            stdout,
            stderr,
        }
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "launcher still running after {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn sigterm(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spec(key: &str, emulation_allowed: bool, incoming: bool) -> LaunchSpec {
    let boot = agent_support::guest_boot();
    LaunchSpec {
        request: VmRequest {
            key: key.into(),
            memory_mib: 256,
            vcpus: 1,
            cpu_model: Some("host-model".into()),
            kernel_args: String::new(),
        },
        boot: Boot::Kernel {
            kernel: boot.kernel,
            initrd: boot.initrd,
        },
        disks: vec![],
        emulation_allowed,
        incoming,
    }
}

/// Pids of QEMU processes started with `-name <name>`.
fn qemus_named(name: &str) -> Vec<i32> {
    let needle = format!("\0-name\0{name}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                let c = String::from_utf8_lossy(&c);
                c.contains("qemu-system") && c.contains(&needle)
            })
        })
        .filter(|pid| mignet_dataplane::qemu::process::process_alive(*pid))
        .collect()
}

async fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn launcher_runs_the_guest_and_stops_on_sigterm() {
    let t0 = Instant::now();
    let tmp = TestDir::new();
    let dir = tmp.run_dir();
    let spec = spec(&tmp.key(), true, false);
    let json = serde_json::to_string(&spec).unwrap();
    let mut l = Launcher::start(&dir, &json, &[]);

    let serial = dir.join("serial.log");
    wait_for("tick 2 in serial.log", Duration::from_secs(120), || {
        std::fs::read_to_string(&serial).is_ok_and(|s| s.contains("tick 2"))
    })
    .await;
    wait_for("tick 2 on stdout", Duration::from_secs(5), || {
        l.stdout().contains("tick 2")
    })
    .await;

    // vm.json in the agent's format, launcher.json with the spec.
    assert_eq!(
        mignet::launcher::request::read_record(&dir).as_ref(),
        Some(&spec.request)
    );
    let status = launcher::read_status(&dir).expect("launcher.json");
    assert_eq!((status.accel, &status.spec), (Accel::Tcg, &spec));
    status
        .started_at
        .parse::<k8s_openapi::jiff::Timestamp>()
        .unwrap();
    assert!(launcher::launcher_alive(&dir));
    let pids = qemus_named(&spec.request.key);
    assert_eq!(pids.len(), 1, "one QEMU for the VM");
    assert_eq!(
        std::fs::read_to_string(dir.join("qemu.pid"))
            .unwrap()
            .trim()
            .parse::<i32>()
            .unwrap(),
        pids[0]
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dir).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o755);

    // The agent's QMP is free (the launcher holds no session on it).
    let qmp = QmpClient::connect(&dir.join("qmp.sock")).await.unwrap();
    assert_eq!(qmp.run_state().await.unwrap(), "running");
    drop(qmp);

    // A second launcher on the same directory is refused and leaves it be.
    let mut second = Launcher::start(&dir, &json, &[]);
    let s = second.wait(Duration::from_secs(20));
    assert_eq!(s.code(), Some(1), "stderr: {}", second.stderr());
    assert!(
        second.stderr().contains("in use by a live launcher"),
        "{}",
        second.stderr()
    );
    assert!(dir.join("vm.json").exists() && launcher::launcher_alive(&dir));

    let stopped = Instant::now();
    l.sigterm();
    let s = l.wait(Duration::from_secs(30));
    assert_eq!(s.code(), Some(0), "stderr: {}", l.stderr());
    // The launcher held its QMP session through the stop and read why.
    assert!(
        l.stdout()
            .contains("QEMU exited 0: QEMU was stopped by a signal (host-signal"),
        "{}",
        l.stdout()
    );
    eprintln!(
        "launcher: tick 2 and checks after {:?}, SIGTERM to exit {:?}",
        stopped - t0,
        stopped.elapsed()
    );
    assert!(
        !dir.exists(),
        "run directory left: {:?}",
        std::fs::read_dir(&dir).map(|d| d.count())
    );
    assert!(!launcher::launcher_alive(&dir));
    assert_eq!(qemus_named(&spec.request.key), Vec::<i32>::new());
}

#[tokio::test]
async fn incoming_launch_waits_in_inmigrate_without_vm_json() {
    let tmp = TestDir::new();
    let dir = tmp.run_dir();
    let spec = spec(&tmp.key(), true, true);
    let mut l = Launcher::start(&dir, &serde_json::to_string(&spec).unwrap(), &[]);
    let qmp = QmpClient::connect_retry(&dir.join("qmp.sock"), Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}; launcher stderr:\n{}", l.stderr()));
    assert_eq!(qmp.run_state().await.unwrap(), "inmigrate");
    wait_for("launcher.json", Duration::from_secs(5), || {
        dir.join(launcher::STATUS_FILE).exists()
    })
    .await;
    // The launcher's own QMP probe is done by now (QEMU answered ours);
    // give it a moment to (wrongly) write vm.json.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !dir.join("vm.json").exists(),
        "vm.json written for an incoming VM"
    );
    assert!(launcher::read_status(&dir).unwrap().spec.incoming);
    drop(qmp);
    l.sigterm();
    let s = l.wait(Duration::from_secs(30));
    assert_eq!(s.code(), Some(0), "stderr: {}", l.stderr());
    assert!(!dir.exists());
    assert_eq!(qemus_named(&spec.request.key), Vec::<i32>::new());
}

#[tokio::test]
async fn without_kvm_and_without_emulation_exits_3() {
    // This machine's /dev/kvm cannot run guests (see launcher::accel).
    assert!(
        matches!(launcher::probe_kvm(), launcher::KvmProbe::Unusable(_)),
        "this test expects a node without usable KVM"
    );
    let tmp = TestDir::new();
    let dir = tmp.run_dir();
    let term_log = tmp.0.join("termination-log");
    std::fs::write(&term_log, "").unwrap();
    let spec = spec(&tmp.key(), false, false);
    let mut l = Launcher::start(
        &dir,
        &serde_json::to_string(&spec).unwrap(),
        &["--termination-log", term_log.to_str().unwrap()],
    );
    let s = l.wait(Duration::from_secs(20));
    let err = l.stderr();
    assert_eq!(s.code(), Some(3), "stderr: {err}");
    assert!(
        err.contains("KVM is not usable on this node (")
            && err.contains("and emulation is not allowed (useEmulation)"),
        "{err}"
    );
    let msg = std::fs::read_to_string(&term_log).unwrap();
    assert!(
        msg.starts_with("KVM is not usable") && msg.contains("useEmulation"),
        "{msg}"
    );
    assert!(!dir.exists());
    assert_eq!(qemus_named(&spec.request.key), Vec::<i32>::new());
}

#[tokio::test]
async fn invalid_spec_exits_2_naming_the_field() {
    let tmp = TestDir::new();
    let dir = tmp.run_dir();
    let mut bad = spec(&tmp.key(), true, false);
    bad.disks = vec![DiskSpec {
        name: "rootdisk".into(),
        path: "/var/run/mignet/disks/rootdisk/disk.img".into(),
        bus: "ide".into(),
        read_only: false,
    }];
    let mut l = Launcher::start(&dir, &serde_json::to_string(&bad).unwrap(), &[]);
    let s = l.wait(Duration::from_secs(20));
    assert_eq!(s.code(), Some(2));
    assert!(
        l.stderr()
            .contains(r#"disks[0].bus: "ide" is not supported (virtio, sata, scsi)"#),
        "{}",
        l.stderr()
    );
    assert!(!dir.exists());

    // Not JSON of a LaunchSpec at all.
    let mut l = Launcher::start(&dir, r#"{"request":{}}"#, &[]);
    assert_eq!(l.wait(Duration::from_secs(20)).code(), Some(2));
    assert!(
        l.stderr().contains("launch spec is not valid JSON"),
        "{}",
        l.stderr()
    );

    // A kernel that is not there.
    let mut missing = spec(&tmp.key(), true, false);
    missing.boot = Boot::Kernel {
        kernel: "/nonexistent/vmlinuz".into(),
        initrd: "/nonexistent/initramfs.img".into(),
    };
    let mut l = Launcher::start(&dir, &serde_json::to_string(&missing).unwrap(), &[]);
    assert_eq!(l.wait(Duration::from_secs(20)).code(), Some(2));
    assert!(
        l.stderr()
            .contains(r#"boot.kernel: "/nonexistent/vmlinuz""#),
        "{}",
        l.stderr()
    );
    assert!(!dir.exists());
}

#[tokio::test]
async fn disks_on_every_bus_boot_from_the_first() {
    let tmp = TestDir::new();
    let dir = tmp.run_dir();
    let mut s = spec(&tmp.key(), true, false);
    s.boot = Boot::Disk;
    s.request.cpu_model = None;
    s.disks = [
        ("root", "virtio", false),
        ("data", "sata", false),
        ("ro", "scsi", true),
    ]
    .into_iter()
    .map(|(name, bus, read_only)| {
        let path = tmp.0.join(format!("{name}.img"));
        // Raw images; an empty one boots nothing, QEMU runs regardless.
        std::fs::File::create(&path)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        DiskSpec {
            name: name.into(),
            path,
            bus: bus.into(),
            read_only,
        }
    })
    .collect();
    let mut l = Launcher::start(&dir, &serde_json::to_string(&s).unwrap(), &[]);
    wait_for("vm.json", Duration::from_secs(60), || {
        dir.join("vm.json").exists()
    })
    .await;
    let qmp = QmpClient::connect(&dir.join("qmp.sock")).await.unwrap();
    let blocks = qmp.execute("query-block", None).await.unwrap();
    let mut found: Vec<(String, String, bool)> = blocks
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["qdev"].as_str().unwrap_or_default().to_string(),
                b["inserted"]["file"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                b["inserted"]["ro"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    found.sort();
    let img = |n: &str| tmp.0.join(format!("{n}.img")).display().to_string();
    assert_eq!(
        found,
        [
            (
                "/machine/peripheral/disk-root/virtio-backend".to_string(),
                img("root"),
                false
            ),
            ("disk-data".to_string(), img("data"), false),
            ("disk-ro".to_string(), img("ro"), true),
        ]
    );
    let argv = std::fs::read(format!(
        "/proc/{}/cmdline",
        std::fs::read_to_string(dir.join("qemu.pid"))
            .unwrap()
            .trim()
    ))
    .unwrap();
    let argv = String::from_utf8_lossy(&argv);
    assert!(argv.contains("virtio-blk-pci,drive=drive-root,id=disk-root,bootindex=0"));
    assert!(!argv.contains("\0-kernel\0"));
    drop(qmp);
    l.sigterm();
    assert_eq!(
        l.wait(Duration::from_secs(30)).code(),
        Some(0),
        "{}",
        l.stderr()
    );
    assert!(!dir.exists());
}

#[tokio::test]
async fn qemu_failing_exits_1_with_its_stderr() {
    let tmp = TestDir::new();
    let dir = tmp.run_dir();
    let mut s = spec(&tmp.key(), true, false);
    s.request.cpu_model = Some("nosuchcpu".into());
    let term_log = tmp.0.join("termination-log");
    std::fs::write(&term_log, "").unwrap();
    let mut l = Launcher::start(
        &dir,
        &serde_json::to_string(&s).unwrap(),
        &["--termination-log", term_log.to_str().unwrap()],
    );
    let st = l.wait(Duration::from_secs(30));
    assert_eq!(st.code(), Some(1), "{}", l.stderr());
    let msg = std::fs::read_to_string(&term_log).unwrap();
    assert!(
        msg.starts_with("QEMU exited with exit status: 1: ") && msg.contains("nosuchcpu"),
        "{msg}"
    );
    assert!(l.stderr().contains(&msg), "{}", l.stderr());
    assert!(!dir.exists());
}

/// The launcher's own log lines (tracing writes to stdout, with the console).
fn log_lines(out: &str) -> String {
    out.lines()
        .filter(|l| l.contains("mignet::launcher"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A launch of the lab guest with `kernel_args`, its termination log in the
/// test's directory.
fn start_with_args(tmp: &TestDir, kernel_args: &str, incoming: bool) -> (Launcher, PathBuf) {
    let mut s = spec(&tmp.key(), true, incoming);
    s.request.kernel_args = kernel_args.into();
    let term_log = tmp.0.join("termination-log");
    std::fs::write(&term_log, "").unwrap();
    let l = Launcher::start(
        &tmp.run_dir(),
        &serde_json::to_string(&s).unwrap(),
        &["--termination-log", term_log.to_str().unwrap()],
    );
    (l, term_log)
}

const RESET_WORDS: &str = "the guest reset itself (a reboot or a kernel panic); QEMU runs with -no-reboot, so the VM ended";

/// Exit 4, the words first in the termination log and on stderr, the run
/// directory gone; returns the termination message.
fn assert_guest_reset(l: &mut Launcher, term_log: &Path, run_dir: &Path) -> String {
    let s = l.wait(Duration::from_secs(60));
    assert_eq!(
        s.code(),
        Some(4),
        "stderr: {}\nlog: {}",
        l.stderr(),
        log_lines(&l.stdout())
    );
    let msg = std::fs::read_to_string(term_log).unwrap();
    assert!(msg.starts_with(RESET_WORDS), "{msg}");
    assert!(msg.contains("\nthe console's last lines:\n"), "{msg}");
    assert!(msg.len() < 4096, "{} bytes", msg.len());
    assert!(
        l.stderr().contains(&format!("mignet launcher: {msg}")),
        "{}",
        l.stderr()
    );
    assert!(!run_dir.exists());
    msg
}

/// A guest kernel panic (an NMI nobody claims, with `unknown_nmi_panic=1`:
/// the guest kernel panics, `panic=-1` resets, `-no-reboot` ends QEMU with
/// 0) is exit 4 with the panic line, not a clean shutdown.
#[tokio::test]
async fn guest_kernel_panic_exits_4_with_the_panic_line() {
    let tmp = TestDir::new();
    let dir = tmp.run_dir();
    let (mut l, term_log) = start_with_args(&tmp, "unknown_nmi_panic=1", false);
    wait_for("tick 2 in serial.log", Duration::from_secs(120), || {
        std::fs::read_to_string(dir.join("serial.log")).is_ok_and(|s| s.contains("tick 2"))
    })
    .await;
    let qmp = QmpClient::connect(&dir.join("qmp.sock")).await.unwrap();
    qmp.execute("inject-nmi", None).await.unwrap();
    let msg = assert_guest_reset(&mut l, &term_log, &dir);
    assert!(
        msg.contains("\nthe console shows a kernel panic: [")
            && msg.contains("] Kernel panic - not syncing: NMI: Not continuing\n"),
        "{msg}"
    );
    // The console's last lines: the panic's trace, up to its last line.
    let (_, last) = msg.split_once("\nthe console's last lines:\n").unwrap();
    assert_eq!(
        last.lines().count(),
        launcher::guest_end::CONSOLE_LINES,
        "{msg}"
    );
    assert!(
        last.lines().last().unwrap().contains("] Kernel Offset: "),
        "{msg}"
    );
    assert!(
        log_lines(&l.stdout()).contains(r#""reason":"guest-reset""#),
        "{}",
        l.stdout()
    );
    assert_eq!(qemus_named(&tmp.key()), Vec::<i32>::new());
}

/// The guest's own reboot (its init runs `reboot -f`) ends QEMU under
/// -no-reboot: exit 4 with the words, no panic line; a guest power-off
/// (`poweroff -f`) stays exit 0, read as guest-shutdown.
#[tokio::test]
async fn guest_reboot_exits_4_and_guest_poweroff_exits_0() {
    let tmp = TestDir::new();
    let dir = tmp.run_dir();
    // Kernel arguments after `--` go to init: busybox runs the applet.
    let (mut l, term_log) = start_with_args(&tmp, "rdinit=/bin/busybox -- reboot -f", false);
    let msg = assert_guest_reset(&mut l, &term_log, &dir);
    assert!(!msg.contains("Kernel panic"), "{msg}");
    assert!(msg.contains("reboot: Restarting system"), "{msg}");

    let tmp = TestDir::new();
    let dir = tmp.run_dir();
    let (mut l, term_log) = start_with_args(&tmp, "rdinit=/bin/busybox -- poweroff -f", false);
    let s = l.wait(Duration::from_secs(60));
    assert_eq!(s.code(), Some(0), "stderr: {}", l.stderr());
    assert!(
        l.stdout()
            .contains("QEMU exited 0: the guest shut itself down (guest-shutdown)"),
        "{}",
        log_lines(&l.stdout())
    );
    assert_eq!(std::fs::read_to_string(&term_log).unwrap(), "");
    assert!(!dir.exists());
}

/// The incident: a guest that panics right after arriving by live
/// migration. The source launcher, told to `quit` as the agent does after a
/// migration, exits 0 (host-qmp-quit); the target launcher, whose session
/// was opened while QEMU waited in `inmigrate`, exits 4 with the panic.
#[tokio::test]
async fn panic_after_migration_fails_the_target_and_quit_keeps_the_source_clean() {
    let src_tmp = TestDir::new();
    let dst_tmp = TestDir::new();
    let (src_dir, dst_dir) = (src_tmp.run_dir(), dst_tmp.run_dir());
    let (mut src, _) = start_with_args(&src_tmp, "unknown_nmi_panic=1", false);
    let (mut dst, dst_log) = start_with_args(&dst_tmp, "unknown_nmi_panic=1", true);
    wait_for("tick 2 on the source", Duration::from_secs(120), || {
        std::fs::read_to_string(src_dir.join("serial.log")).is_ok_and(|s| s.contains("tick 2"))
    })
    .await;
    let src_qmp = QmpClient::connect(&src_dir.join("qmp.sock")).await.unwrap();
    let dst_qmp = QmpClient::connect_retry(&dst_dir.join("qmp.sock"), Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}; target stderr:\n{}", dst.stderr()));
    let uri = format!("unix:{}", dst_tmp.0.join("mig.sock").display());
    dst_qmp
        .execute("migrate-incoming", Some(serde_json::json!({ "uri": uri })))
        .await
        .unwrap();
    src_qmp
        .execute(
            "migrate-set-parameters",
            Some(serde_json::json!({ "max-bandwidth": 1u64 << 40 })),
        )
        .await
        .unwrap();
    src_qmp
        .execute("migrate", Some(serde_json::json!({ "uri": uri })))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let m = src_qmp.execute("query-migrate", None).await.unwrap();
        match m["status"].as_str() {
            Some("completed") => break,
            Some("failed") | Some("cancelled") => panic!("migration: {m}"),
            _ => {}
        }
        assert!(Instant::now() < deadline, "migration not done: {m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for("ticks on the target", Duration::from_secs(30), || {
        std::fs::read_to_string(dst_dir.join("serial.log")).is_ok_and(|s| s.contains("tick"))
    })
    .await;

    // The source ends as the agent ends it: exit 0.
    let _ = src_qmp.execute("quit", None).await;
    drop(src_qmp);
    assert_eq!(
        src.wait(Duration::from_secs(30)).code(),
        Some(0),
        "{}",
        src.stderr()
    );
    assert!(
        src.stdout()
            .contains("QEMU exited 0: QEMU was told to quit over QMP (host-qmp-quit"),
        "{}",
        log_lines(&src.stdout())
    );

    dst_qmp.execute("inject-nmi", None).await.unwrap();
    let msg = assert_guest_reset(&mut dst, &dst_log, &dst_dir);
    assert!(
        msg.contains("] Kernel panic - not syncing: NMI: Not continuing"),
        "{msg}"
    );
}
