//! Real QEMU (TCG) guests: the process driver and the QMP client.
//!
//! Needs qemu-system-x86 and the test guest; `GuestImage::ensure` runs
//! `tests/guest/build.sh`, which installs and builds what is missing.

use std::time::Duration;

use mignet_dataplane::qemu::process::process_alive;
use mignet_dataplane::qemu::testbed::{ticks, wait_serial, wait_tick_after, GuestImage, RunDir};
use mignet_dataplane::qemu::{QmpClient, QmpError, VmProcess};

const BOOT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_answers_qmp_and_guard_kills_it() {
    let image = GuestImage::ensure().unwrap();
    let dir = RunDir::new("boot").unwrap();
    let spec = image.vm_spec("boot", dir.path(), 256, 0, 0);
    let vm = VmProcess::start(&spec).await.unwrap();
    let pid = vm.pid();
    assert!(process_alive(pid));

    let qmp = QmpClient::connect(vm.qmp_socket()).await.unwrap();
    let (major, minor, _) = qmp.qemu_version().expect("version in greeting");
    assert!(major >= 7, "QEMU {major}.{minor}");
    assert_eq!(qmp.run_state().await.unwrap(), "running");

    // A QMP error carries the command, class and description.
    match qmp.execute("no-such-command", None).await {
        Err(QmpError::Command {
            command,
            class,
            desc,
        }) => {
            assert_eq!(command, "no-such-command");
            assert_eq!(class, "CommandNotFound");
            assert!(desc.contains("no-such-command"), "{desc}");
        }
        other => panic!("expected a command error, got {other:?}"),
    }

    // The guest runs: ticks advance on the serial console.
    wait_serial(&vm, "mignet: ready", BOOT).await.unwrap();
    let t = wait_tick_after(&vm, None, BOOT).await.unwrap();
    let t2 = wait_tick_after(&vm, Some(t), Duration::from_secs(10))
        .await
        .unwrap();
    assert!(t2 > t);

    // Events are delivered apart from replies: stop/cont produce STOP/RESUME.
    let mut events = qmp.subscribe();
    qmp.execute("stop", None).await.unwrap();
    assert_eq!(qmp.run_state().await.unwrap(), "paused");
    qmp.execute("cont", None).await.unwrap();
    let mut names = Vec::new();
    while names.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.recv())
            .await
            .expect("event within 5 s")
            .unwrap();
        names.push(ev.name);
    }
    assert_eq!(names, ["STOP", "RESUME"]);

    let qmp_path = vm.qmp_socket().to_path_buf();
    drop(qmp);
    drop(vm);
    assert!(!process_alive(pid), "guard must kill QEMU {pid}");
    assert!(!qmp_path.exists(), "QMP socket removed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_failure_reports_qemu_stderr() {
    let dir = RunDir::new("bad").unwrap();
    let spec = mignet_dataplane::qemu::VmSpec::new(
        "bad",
        dir.path(),
        "/nonexistent/vmlinuz",
        "/nonexistent/initrd",
    );
    match VmProcess::start(&spec).await {
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("failed to start"), "{msg}");
            assert!(msg.contains("/nonexistent/vmlinuz"), "{msg}");
        }
        Ok(vm) => panic!("QEMU started without a kernel: pid {}", vm.pid()),
    }
}

/// The VM is started by a separate process (the `mignet-qemu-vm` binary)
/// that exits right away: the VM must keep running, outside our session,
/// and be found again through its pid file and QMP socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_outlives_the_process_that_started_it_and_reattaches() {
    let image = GuestImage::ensure().unwrap();
    let dir = RunDir::new("orphan").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mignet-qemu-vm"))
        .arg("start")
        .arg(dir.path())
        .arg(&image.kernel)
        .arg(&image.initrd)
        .arg("128")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "starter failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pid: i32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pid="))
        .expect("pid line")
        .parse()
        .unwrap();
    // The starter is gone (output() waited for it); the VM is not.
    assert!(process_alive(pid), "VM died with its starter");
    // Not in our session: QEMU calls setsid() when daemonizing (and forks once
    // more, so the daemon itself is not the session leader).
    let our_sid = nix::unistd::getsid(None).unwrap();
    let vm_sid = nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(pid))).unwrap();
    assert_ne!(our_sid, vm_sid, "QEMU still in our session");

    let vm = VmProcess::reattach("orphan", &dir.join("qemu.pid"), &dir.join("qmp.sock")).unwrap();
    assert_eq!(vm.pid(), pid);
    let qmp = QmpClient::connect_retry(vm.qmp_socket(), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(qmp.run_state().await.unwrap(), "running");
    let t = wait_tick_after(&vm, None, BOOT).await.unwrap();
    wait_tick_after(&vm, Some(t), Duration::from_secs(10))
        .await
        .unwrap();

    // Reattaching to a pid file whose process is another program fails.
    let fake_pid = dir.join("other.pid");
    std::fs::write(&fake_pid, std::process::id().to_string()).unwrap();
    assert!(VmProcess::reattach("x", &fake_pid, &dir.join("qmp.sock")).is_err());

    // A detached guard leaves the VM running; a reattached one kills it.
    let vm2 = VmProcess::reattach("orphan", &dir.join("qemu.pid"), &dir.join("qmp.sock")).unwrap();
    vm2.detach();
    assert!(process_alive(pid));
    drop(qmp);
    drop(vm);
    assert!(!process_alive(pid));
    assert!(ticks(&std::fs::read_to_string(dir.join("serial.log")).unwrap()).len() >= 2);
}
