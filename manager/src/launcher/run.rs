//! The launcher's I/O: run directory and lock, status file, QEMU as a
//! direct child, its QMP events, console copy, signals, clean-up.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mignet_dataplane::qemu::QmpClient;
use nix::fcntl::{Flock, FlockArg};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::signal::unix::{signal, SignalKind};

use super::guest_end::{self, ConsoleTail, Ending};
use super::{
    accel, check_run_dir, spec, LaunchSpec, LauncherError, LauncherStatus, LAUNCHER_QMP, LOCK_FILE,
    SPEC_ENV, STATUS_FILE,
};

/// SIGTERM to QEMU, then this long before SIGKILL (the pod's default grace
/// period is 30 s; QEMU itself exits within a second on SIGTERM).
const STOP_GRACE: Duration = Duration::from_secs(25);
/// How long QEMU may take to answer QMP (TCG on a loaded 2-core machine
/// starts in well under 5 s).
const QMP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a busy lock is retried: an agent's `launcher_alive` probe holds
/// a shared lock for an instant, which must not fail a starting launcher.
const LOCK_RETRY: Duration = Duration::from_secs(2);
/// Console copy interval (cheap polling of serial.log).
const TAIL_EVERY: Duration = Duration::from_millis(200);
/// QEMU stderr lines kept for the exit message.
const STDERR_LINES: usize = 8;
/// After QEMU exited, how long the event watcher may take to read what
/// QEMU wrote before it closed the socket (the SHUTDOWN event is written
/// before QEMU exits; this is a bound, normally a few milliseconds).
const EVENTS_DRAIN: Duration = Duration::from_secs(2);

/// What `mignet launcher` was given.
#[derive(Debug, Clone)]
pub struct LaunchOptions {
    pub run_dir: PathBuf,
    /// `--spec-json`; `None`: `$MIGNET_LAUNCH_SPEC`.
    pub spec_json: Option<String>,
}

/// Writes a failure where Kubernetes and a human look: stderr, and the
/// termination log when it is writable (never created: outside a pod the
/// file does not exist and must not appear).
pub fn report_failure(message: &str, termination_log: &Path) {
    eprintln!("mignet launcher: {message}");
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(termination_log)
    {
        let _ = f.write_all(message.as_bytes());
    }
}

/// Runs the launcher until QEMU exits (or a signal stopped it). `Ok` when
/// QEMU exited 0.
pub async fn run(opts: LaunchOptions) -> Result<(), LauncherError> {
    // 1. The spec, checked before anything is created.
    let json = match opts.spec_json {
        Some(j) => j,
        None => std::env::var(SPEC_ENV).map_err(|_| spec::SpecError::Missing { env: SPEC_ENV })?,
    };
    let spec = spec::parse(&json)?;
    spec.validate()?;
    spec.check_files()?;
    check_run_dir(&opts.run_dir)?;

    // Handlers first: a SIGTERM during start-up must stop QEMU too, not
    // kill the launcher (as PID 1 it would be ignored without a handler).
    let mut sigterm = signal(SignalKind::terminate()).map_err(|source| LauncherError::Signal {
        signal: "SIGTERM",
        source,
    })?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|source| LauncherError::Signal {
        signal: "SIGINT",
        source,
    })?;

    // 2. The directory and its lock; from here on the guard removes it.
    let dir = RunDir::take(&opts.run_dir).await?;

    // 3. The accelerator.
    let accel = accel::choose_accel(accel::probe_kvm(), spec.emulation_allowed)?;

    // 5. launcher.json.
    let status = LauncherStatus {
        spec: spec.clone(),
        accel,
        started_at: now_rfc3339(),
    };
    write_atomic(
        &dir.path.join(STATUS_FILE),
        &serde_json::to_vec_pretty(&status).unwrap_or_default(),
    )?;
    tracing::info!(vm = %spec.request.key, %accel, dir = %dir.path.display(), incoming = spec.incoming, "launching QEMU");

    // 6. QEMU, our child.
    let launcher_qmp = dir.path.join(LAUNCHER_QMP);
    let vm = spec.vm_spec(&dir.path, accel, &launcher_qmp);
    let argv = vm.command_line();
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Our signals decide QEMU's end: a Ctrl-C on a terminal reaches the
        // launcher only, which passes SIGTERM on.
        .process_group(0);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec only async-signal-safe calls: prctl and
    // getppid, no allocation.
    unsafe {
        cmd.pre_exec(move || {
            // A launcher killed outright (SIGKILL, outside a pod) must not
            // leave its VM behind.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::other("launcher exited while starting QEMU"));
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| LauncherError::Spawn {
        binary: PathBuf::from(&argv[0]),
        source,
    })?;
    let stderr_tail = spawn_stderr_copy(&mut child);
    let (tail_stop, tail_stop_rx) = tokio::sync::watch::channel(false);
    let console = tokio::spawn(copy_console(vm.serial_log(), tail_stop_rx));

    // 7-9. Wait for QMP (then vm.json), for QEMU to exit, or for a signal.
    // The QMP session stays open while QEMU runs: its events say why QEMU
    // ended. It is only read; SIGTERM goes to QEMU as a signal.
    let ready = wait_qmp(&launcher_qmp);
    tokio::pin!(ready);
    let mut waiting_for_qmp = true;
    let mut failure: Option<LauncherError> = None;
    let seen = Arc::new(Mutex::new(guest_end::Events::default()));
    let mut watcher: Option<tokio::task::JoinHandle<()>> = None;
    let exit = loop {
        tokio::select! {
            status = child.wait() => break status,
            r = &mut ready, if waiting_for_qmp => {
                waiting_for_qmp = false;
                if r.is_err() {
                    // A QEMU that refused its arguments (an unknown CPU
                    // model, a bad disk) closes its sockets as it exits:
                    // its own words on stderr say more than "no QMP".
                    if let Ok(status) = tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
                        break status;
                    }
                }
                let written = r.and_then(|qmp| {
                    watcher = Some(tokio::spawn(watch_events(qmp, seen.clone())));
                    if spec.incoming {
                        // The agent writes vm.json once the migration lands.
                        Ok(())
                    } else {
                        write_record(&dir.path, &spec)
                    }
                });
                match written {
                    Ok(()) => tracing::info!(vm = %spec.request.key, "QEMU is up (QMP answers)"),
                    Err(e) => {
                        failure = Some(e);
                        break stop(&mut child).await;
                    }
                }
            }
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: stopping QEMU");
                break stop(&mut child).await;
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT: stopping QEMU");
                break stop(&mut child).await;
            }
        }
    };

    // 10. The console's last lines and QEMU's last events, then the
    // directory goes.
    let _ = tail_stop.send(true);
    let mut console_tail = console.await.unwrap_or_default();
    console_tail.finish();
    if let Some(mut w) = watcher {
        // QEMU is gone, so the session ends at its socket's EOF. Should it
        // not, what was seen so far stands.
        if tokio::time::timeout(EVENTS_DRAIN, &mut w).await.is_err() {
            tracing::warn!("QMP events not drained {EVENTS_DRAIN:?} after QEMU exited");
            w.abort();
        }
    }
    let ending = Ending::of(&seen.lock().unwrap_or_else(|p| p.into_inner()));
    let stderr = tokio::time::timeout(Duration::from_secs(2), stderr_tail)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    drop(dir);
    if let Some(e) = failure {
        return Err(e);
    }
    match exit {
        // QEMU's status decides first: 0 can still hide a lost VM.
        Ok(status) if status.success() && ending.exit_code() != 0 => {
            let message = guest_end::failure_message(&ending, &console_tail);
            tracing::warn!(vm = %spec.request.key, "QEMU exited 0, but {}", ending.describe());
            Err(LauncherError::VmEnded { ending, message })
        }
        Ok(status) if status.success() => {
            tracing::info!(vm = %spec.request.key, "QEMU exited 0: {}", ending.describe());
            Ok(())
        }
        Ok(status) => Err(LauncherError::QemuExited {
            status,
            stderr: if stderr.is_empty() {
                "(no output on stderr)".into()
            } else {
                stderr.join("\n")
            },
        }),
        Err(source) => Err(LauncherError::RunDir {
            dir: opts.run_dir,
            what: "waiting for QEMU".into(),
            source,
        }),
    }
}

/// The run directory, locked. Dropping it removes the directory with
/// everything in it, the lock file last, and then releases the lock.
struct RunDir {
    path: PathBuf,
    lock: Option<Flock<File>>,
}

impl RunDir {
    async fn take(path: &Path) -> Result<RunDir, LauncherError> {
        let err = |what: &str| {
            let what = what.to_string();
            move |source| LauncherError::RunDir {
                dir: path.to_path_buf(),
                what,
                source,
            }
        };
        let deadline = tokio::time::Instant::now() + LOCK_RETRY;
        let lock = loop {
            // Inside the loop: a launcher that was still ending when we
            // first looked removes the directory before it lets go.
            {
                use std::os::unix::fs::DirBuilderExt as _;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(path)
                    .map_err(err("cannot create it"))?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(path.join(LOCK_FILE))
                .map_err(err("cannot open the lock file"))?;
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                // The lock counts only if the file is still the directory's:
                // an ending launcher unlinks it before it lets go, and a
                // lock on the unlinked file would guard nothing.
                Ok(lock) if same_file(&lock, &path.join(LOCK_FILE)) => break lock,
                Ok(_) => {}
                Err((_, nix::errno::Errno::EWOULDBLOCK))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    return Err(LauncherError::Busy {
                        dir: path.to_path_buf(),
                    })
                }
                Err((_, errno)) => {
                    return Err(err("cannot lock")(std::io::Error::from(errno)));
                }
            }
        };
        let dir = RunDir {
            path: path.to_path_buf(),
            lock: Some(lock),
        };
        // The umask may have narrowed the mode; the agent must be able to
        // enter the directory.
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
                .map_err(err("cannot set mode 0755"))?;
        }
        // Leftovers of a launcher that died without cleaning up (a stale
        // vm.json or socket would mislead the agent or QEMU).
        dir.clear()
            .map_err(err("cannot remove a previous launcher's files"))?;
        Ok(dir)
    }

    /// Removes everything but the lock file.
    fn clear(&self) -> std::io::Result<()> {
        for entry in std::fs::read_dir(&self.path)? {
            let entry = entry?;
            if entry.file_name() == LOCK_FILE {
                continue;
            }
            let p = entry.path();
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&p)?;
            } else {
                std::fs::remove_file(&p)?;
            }
        }
        Ok(())
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Err(e) = self.clear() {
            tracing::warn!(dir = %self.path.display(), error = %e, "cannot empty the run directory");
        }
        let _ = std::fs::remove_file(self.path.join(LOCK_FILE));
        if let Err(e) = std::fs::remove_dir(&self.path) {
            tracing::warn!(dir = %self.path.display(), error = %e, "cannot remove the run directory");
        }
        // The lock goes last: until here a probing agent still sees us.
        drop(self.lock.take());
    }
}

fn same_file(open: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    match (open.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

fn now_rfc3339() -> String {
    use k8s_openapi::jiff::Timestamp;
    let t = Timestamp::now();
    Timestamp::from_second(t.as_second())
        .unwrap_or(t)
        .to_string()
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LauncherError> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| LauncherError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// `vm.json`, through the one writer the agent reads back.
fn write_record(dir: &Path, spec: &LaunchSpec) -> Result<(), LauncherError> {
    super::request::write_record(dir, &spec.request).map_err(|e| LauncherError::Record {
        path: dir.join("vm.json"),
        detail: e.to_string(),
    })
}

/// Ready = QEMU answers on the launcher's own QMP socket (both sockets are
/// listening before QEMU's main loop runs, so `qmp.sock` is then ready too).
/// The session is kept for [`watch_events`]; nothing is sent to the VM.
async fn wait_qmp(socket: &Path) -> Result<QmpClient, LauncherError> {
    QmpClient::connect_retry(socket, QMP_TIMEOUT)
        .await
        .map_err(|e| LauncherError::NoQmp {
            socket: socket.to_path_buf(),
            detail: e.to_string(),
        })
}

/// Records QEMU's events into `seen` until the session ends (QEMU closed
/// it by exiting, or it was lost). A lost session only costs the reason:
/// QEMU's exit status still decides, the ending is then unknown.
async fn watch_events(qmp: QmpClient, seen: Arc<Mutex<guest_end::Events>>) {
    use tokio::sync::broadcast::error::RecvError;
    let mut events = qmp.subscribe();
    loop {
        match events.recv().await {
            Ok(ev) => {
                if matches!(ev.name.as_str(), "SHUTDOWN" | "GUEST_PANICKED" | "RESET") {
                    tracing::info!(event = %ev.name, data = %ev.data, "QEMU event");
                }
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .observe(&ev.name, &ev.data);
            }
            Err(RecvError::Lagged(n)) => {
                tracing::warn!("{n} QMP events missed (the watcher fell behind)");
            }
            Err(RecvError::Closed) => break,
        }
    }
    tracing::debug!("launcher QMP session ended");
}

/// SIGTERM (QEMU shuts the VM down and exits 0), SIGKILL after the grace.
async fn stop(child: &mut tokio::process::Child) -> std::io::Result<ExitStatus> {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    match tokio::time::timeout(STOP_GRACE, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            tracing::warn!("QEMU still running {STOP_GRACE:?} after SIGTERM: SIGKILL");
            let _ = child.start_kill();
            child.wait().await
        }
    }
}

/// Passes QEMU's stderr on to ours (visible in `kubectl logs`) and keeps
/// its last lines for the exit message.
fn spawn_stderr_copy(child: &mut tokio::process::Child) -> tokio::task::JoinHandle<Vec<String>> {
    let stderr = child.stderr.take();
    tokio::spawn(async move {
        let Some(stderr) = stderr else {
            return Vec::new();
        };
        let last = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_LINES)));
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{line}");
            let mut l = last.lock().unwrap_or_else(|p| p.into_inner());
            if l.len() == STDERR_LINES {
                l.pop_front();
            }
            l.push_back(line);
        }
        let l = last.lock().unwrap_or_else(|p| p.into_inner());
        l.iter().cloned().collect()
    })
}

/// Copies the guest console (serial.log) to stdout as it grows, until told
/// to stop; then copies what is left once more. Returns its last lines.
async fn copy_console(
    serial: PathBuf,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> ConsoleTail {
    let mut tail = ConsoleTail::default();
    let mut offset = 0u64;
    loop {
        let last = *stop.borrow();
        if let Ok(mut f) = File::open(&serial) {
            let mut buf = Vec::new();
            if f.seek(std::io::SeekFrom::Start(offset)).is_ok()
                && f.read_to_end(&mut buf).is_ok()
                && !buf.is_empty()
            {
                offset += buf.len() as u64;
                tail.push(&buf);
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&buf);
                let _ = out.flush();
            }
        }
        if last {
            return tail;
        }
        tokio::select! {
            _ = tokio::time::sleep(TAIL_EVERY) => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn termination_log_is_written_only_when_it_exists() {
        let dir = std::env::temp_dir().join(format!("mignet-termlog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("termination-log");
        report_failure("absent", &log);
        assert!(!log.exists());
        std::fs::write(&log, "old and longer").unwrap();
        report_failure("boom", &log);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "boom");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A fake QEMU on a unix socket: greeting, `qmp_capabilities`, then
    /// `lines` and a close.
    async fn fake_qmp(lines: &'static [&'static str]) -> (PathBuf, tokio::task::JoinHandle<()>) {
        use tokio::io::AsyncWriteExt as _;
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mignet-launcher-qmp-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("q.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut input = BufReader::new(r).lines();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .await
                .unwrap();
            let caps: serde_json::Value =
                serde_json::from_str(&input.next_line().await.unwrap().unwrap()).unwrap();
            w.write_all(format!("{{\"return\": {{}}, \"id\": {}}}\n", caps["id"]).as_bytes())
                .await
                .unwrap();
            // Give the watcher time to subscribe.
            tokio::time::sleep(Duration::from_millis(200)).await;
            for l in lines {
                w.write_all(format!("{l}\n").as_bytes()).await.unwrap();
            }
            let _ = std::fs::remove_dir_all(dir);
        });
        (sock, server)
    }

    /// The watcher ends by itself when QEMU closes the session, with the
    /// SHUTDOWN written just before; a session lost without one leaves the
    /// ending unknown (exit 0 stays 0) instead of failing or hanging.
    #[tokio::test]
    async fn event_watcher_records_shutdown_and_survives_a_lost_session() {
        let cases: [(&'static [&'static str], Ending); 3] = [
            (
                &[
                    r#"{"event": "RESET", "data": {"guest": true, "reason": "guest-reset"}}"#,
                    r#"{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-reset"}}"#,
                ],
                Ending::GuestReset,
            ),
            (
                &[r#"{"event": "SHUTDOWN", "data": {"guest": false, "reason": "host-signal"}}"#],
                Ending::Host("host-signal".into()),
            ),
            (&[r#"{"event": "STOP"}"#, "garbage"], Ending::Unknown),
        ];
        for (lines, want) in cases {
            let (sock, server) = fake_qmp(lines).await;
            let qmp = wait_qmp(&sock).await.unwrap();
            let seen = Arc::new(Mutex::new(guest_end::Events::default()));
            tokio::time::timeout(Duration::from_secs(5), watch_events(qmp, seen.clone()))
                .await
                .expect("the watcher ends with the session");
            server.await.unwrap();
            assert_eq!(Ending::of(&seen.lock().unwrap()), want, "{lines:?}");
        }
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let t = now_rfc3339();
        assert!(t.ends_with('Z') && t.contains('T'), "{t}");
        t.parse::<k8s_openapi::jiff::Timestamp>().unwrap();
    }

    #[test]
    fn accel_is_lowercase_json() {
        assert_eq!(
            serde_json::to_string(&crate::launcher::Accel::Tcg).unwrap(),
            "\"tcg\""
        );
    }
}
