//! `cargo bench -p mignet-dataplane --bench migration_cpu` (root; QEMU, the
//! guest image, Go for KubeVirt's proxy)
//!
//! Issue 16's side-by-side: the same TCG guest (1 GiB, 900 MiB of non-zero
//! memory, dirtying 4 MiB/s) migrated back and forth between two network
//! namespaces joined by a veth, through
//! - **direct**: QEMU to QEMU, plaintext TCP (the floor);
//! - **mignet**: our proxy, `mignet-proxy-endpoint` (the agent's
//!   `SourceEndpoints` / `TargetEndpoints` on a 2-worker runtime);
//! - **kubevirt**: KubeVirt v1.9.0's virt-handler migration proxy as a
//!   library (`tests/tools/kubevirt-proxy`, built by
//!   `tests/tools/build-kubevirt-proxy.sh`);
//!
//! with the same certificates (one CA, a certificate per node; TLS 1.3
//! negotiated by both), each proxy side a process of its own in its
//! namespace. Configurations: one connection, multifd 4 (our default) and
//! multifd 8 (KubeVirt's fixed count). For every run it reads CPU time
//! (user + system) of the source QEMU, the destination QEMU and the two
//! proxy processes, the machine's busy time from /proc/stat, and the
//! proxies' peak RSS (VmHWM), and prints medians per path.
//!
//! Then the cap sweep (issue 16, item 3): `bandwidthPerMigration` at 1, 8,
//! 32, 64 and 256 MiB/s, with and without multifd, held by our proxy's
//! limiter (what the agent does) and, for comparison, by QEMU's own
//! max-bandwidth; measured on the source's veth, net of framing
//! (`tests/wire_rate`).
//!
//! Env: MIGNET_BENCH_FILL_MIB (900), MIGNET_BENCH_MEMORY_MIB (1024),
//! MIGNET_BENCH_DIRTY_MIB_S (4), MIGNET_BENCH_REPEAT (3),
//! MIGNET_BENCH_CASES (substring filter, e.g. multifd8),
//! MIGNET_BENCH_SWEEP (1; 0 skips the cap sweep), MIGNET_KUBEVIRT_PROXY
//! (a built binary instead of running the build script).

#[path = "../tests/proxy_support/mod.rs"]
mod proxy_support;
#[path = "../tests/wire_rate/mod.rs"]
mod wire_rate;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mignet_dataplane::certs::{CA_FILE, CERT_FILE, KEY_FILE};
use mignet_dataplane::proxy::STREAM_MEMORY;
use mignet_dataplane::qemu::migration::{self, MigrationStatus, Side};
use mignet_dataplane::qemu::testbed::{
    bench_env, migrate_and_measure, wait_serial, GuestImage, MigrationMeasurement, NetnsPair,
    RunDir,
};
use mignet_dataplane::qemu::{MigrationSettings, QmpClient, VmProcess, VmSpec};
use proxy_support::{Pki, TempDir};

const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

/// user + system CPU-seconds of process `pid` (all its threads).
fn process_cpu(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let f: Vec<&str> = stat[close + 2..].split(' ').collect();
    // Fields 14 and 15 (utime, stime); index 0 here is field 3.
    let tick = |i: usize| {
        f.get(i - 3)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (tick(14) + tick(15)) / clk_tck()
}

/// Peak resident set of process `pid`, in MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// read- and write-family system calls process `pid` made so far
/// (`syscr` + `syscw` of /proc/PID/io: read, readv, recvmsg, write, writev,
/// sendmsg, ...; not epoll or futex).
fn rw_syscalls(pid: u32) -> f64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    io.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k, "syscr" | "syscw").then(|| v.trim().parse::<f64>().ok())?
        })
        .sum()
}

/// Machine-wide busy CPU-seconds so far, from /proc/stat.
fn machine_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return 0.0;
    }
    // user nice system idle iowait irq softirq steal
    (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / clk_tck()
}

#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    src: f64,
    dst: f64,
    proxies: f64,
    busy: f64,
}

/// (time, [src QEMU, dst QEMU, proxies, machine busy]) CPU-seconds.
type Sample = (Instant, [f64; 4]);

struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    fn start(src_pid: i32, dst_pid_file: PathBuf, proxies: Vec<u32>) -> Sampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let src = src_pid.to_string();
            let proxies: Vec<String> = proxies.iter().map(|p| p.to_string()).collect();
            let mut dst: Option<String> = None;
            let mut out = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if dst.is_none() {
                    dst = std::fs::read_to_string(&dst_pid_file)
                        .ok()
                        .map(|p| p.trim().to_string())
                        .filter(|p| !p.is_empty());
                }
                let d = dst.as_deref().map_or(0.0, process_cpu);
                let p: f64 = proxies.iter().map(|p| process_cpu(p)).sum();
                out.push((Instant::now(), [process_cpu(&src), d, p, machine_cpu()]));
                std::thread::sleep(Duration::from_millis(20));
            }
            out
        });
        Sampler { stop, thread }
    }

    fn stop(self) -> Vec<Sample> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// CPU used between `from` and `to` (nearest samples), and that span's length.
fn window(samples: &[Sample], from: Instant, to: Instant) -> (Cpu, f64) {
    let near = |t: Instant| {
        samples
            .iter()
            .min_by_key(|(at, _)| if *at > t { *at - t } else { t - *at })
            .copied()
            .unwrap_or((t, [0.0; 4]))
    };
    let ((t0, a), (t1, b)) = (near(from), near(to));
    let d = |i: usize| (b[i] - a[i]).max(0.0);
    (
        Cpu {
            src: d(0),
            dst: d(1),
            proxies: d(2),
            busy: d(3),
        },
        (t1 - t0).as_secs_f64(),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    Direct,
    Mignet,
    Kubevirt,
}

impl Via {
    const ALL: [Via; 3] = [Via::Direct, Via::Mignet, Via::Kubevirt];
    fn label(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Mignet => "mignet",
            Via::Kubevirt => "kubevirt",
        }
    }
}

/// A proxy side running as its own process in a namespace.
struct ProxyProc {
    child: Child,
    /// What it printed after `ready` (our target: its port).
    ready: String,
}

impl ProxyProc {
    /// Its stderr goes to `log`, shown when a migration through it fails.
    fn spawn(ns: &str, bin: &Path, log: &Path, args: &[String]) -> Result<ProxyProc, String> {
        let err = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("{}: {e}", bin.display()))?;
        let stdout = child.stdout.take();
        let mut me = ProxyProc {
            child,
            ready: String::new(),
        };
        let mut line = String::new();
        // `ready` arrives within milliseconds; a proxy that fails exits and
        // closes stdout, so this read does not hang.
        BufReader::new(stdout.ok_or("no stdout")?)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let Some(rest) = line.trim().strip_prefix("ready") else {
            return Err(format!(
                "{} {args:?} did not become ready (printed {line:?})",
                bin.display()
            ));
        };
        me.ready = rest.trim().to_string();
        Ok(me)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then wait (SIGKILL after 15 s, by `Drop`).
    fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A proxy never outlives the run that started it, whichever way the run
/// ends (an error in the other side's start, a failed migration, a panic).
impl Drop for ProxyProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Bed {
    net: NetnsPair,
    image: GuestImage,
    memory: u64,
    fill: u64,
    dirty: u64,
    /// TLS directories (ca.crt, tls.crt, tls.key) of node a and node b.
    tls: [PathBuf; 2],
    ours: PathBuf,
    kubevirt: PathBuf,
    hop: u32,
}

impl Bed {
    fn ns(&self, i: usize) -> &str {
        [&self.net.a, &self.net.b][i]
    }
    fn ip(&self, i: usize) -> std::net::Ipv4Addr {
        [self.net.addr_a, self.net.addr_b][i]
    }

    /// The proxies of `path` for one migration from side `src` to `dst`;
    /// returns them and the URIs the destination listens on and the source
    /// connects to.
    fn proxies(
        &mut self,
        path: Via,
        src: usize,
        dst: usize,
        dir: &Path,
        rate: Option<u64>,
    ) -> Result<(Vec<ProxyProc>, String, String), String> {
        self.hop += 1;
        let dst_sock = dir.join("incoming.sock");
        let src_sock = dir.join(format!("bench-{STREAM_MEMORY}-source.sock"));
        let files = |i: usize| -> Vec<String> {
            let d = &self.tls[i];
            [
                "--ca".into(),
                d.join(CA_FILE).display().to_string(),
                "--cert".into(),
                d.join(CERT_FILE).display().to_string(),
                "--key".into(),
                d.join(KEY_FILE).display().to_string(),
            ]
            .to_vec()
        };
        let s = |x: &dyn std::fmt::Display| x.to_string();
        let (target, source) = match path {
            Via::Direct => {
                let uri = format!("tcp:{}:{}", self.ip(dst), 4600 + self.hop);
                return Ok((Vec::new(), uri.clone(), uri));
            }
            Via::Mignet => {
                let target = ProxyProc::spawn(
                    self.ns(dst),
                    &self.ours,
                    &dir.join("target.log"),
                    &[
                        s(&"target"),
                        s(&"--bind"),
                        s(&self.ip(dst)),
                        s(&"--unix"),
                        s(&dst_sock.display()),
                        s(&"--tls-dir"),
                        s(&self.tls[dst].display()),
                    ],
                )?;
                let mut args = vec![
                    s(&"source"),
                    s(&"--unix"),
                    s(&src_sock.display()),
                    s(&"--target"),
                    format!("{}:{}", self.ip(dst), target.ready),
                    s(&"--tls-dir"),
                    s(&self.tls[src].display()),
                ];
                if let Some(r) = rate {
                    args.extend([s(&"--rate"), s(&r)]);
                }
                let source =
                    ProxyProc::spawn(self.ns(src), &self.ours, &dir.join("source.log"), &args)?;
                (target, source)
            }
            Via::Kubevirt => {
                let port = 4800 + self.hop;
                let mut args = vec![
                    s(&"target"),
                    s(&"--bind"),
                    s(&self.ip(dst)),
                    s(&"--port"),
                    s(&port),
                    s(&"--unix"),
                    s(&dst_sock.display()),
                ];
                args.extend(files(dst));
                let target =
                    ProxyProc::spawn(self.ns(dst), &self.kubevirt, &dir.join("target.log"), &args)?;
                let mut args = vec![
                    s(&"source"),
                    s(&"--unix"),
                    s(&src_sock.display()),
                    s(&"--target"),
                    format!("{}:{port}", self.ip(dst)),
                ];
                args.extend(files(src));
                let source =
                    ProxyProc::spawn(self.ns(src), &self.kubevirt, &dir.join("source.log"), &args)?;
                (target, source)
            }
        };
        Ok((
            vec![source, target],
            format!("unix:{}", dst_sock.display()),
            format!("unix:{}", src_sock.display()),
        ))
    }

    fn dest_spec(&self, dir: &Path, dst: usize) -> VmSpec {
        let mut spec = self.image.vm_spec(
            &format!("cpu-{}", self.hop),
            dir,
            self.memory,
            self.fill,
            self.dirty,
        );
        spec.netns = Some(self.ns(dst).to_string());
        spec
    }
}

struct Run {
    case: usize,
    path: Via,
    m: MigrationMeasurement,
    cpu: Cpu,
    rss_mib: f64,
    /// The proxies' read/write system calls per MiB carried.
    calls_per_mib: f64,
}

/// The guest now running and where.
struct Guest {
    vm: VmProcess,
    qmp: QmpClient,
    side: usize,
    _dirs: Vec<RunDir>,
}

impl Guest {
    fn arrived(&mut self, vm: VmProcess, qmp: QmpClient, dir: RunDir) -> Result<(), String> {
        let mut old = std::mem::replace(&mut self.vm, vm);
        self.qmp = qmp;
        self.side = 1 - self.side;
        self._dirs.push(dir);
        old.kill().map_err(|e| e.to_string())
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("migration_cpu: run with `cargo bench` to measure");
        return;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run()) {
        let mut msg = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            msg.push_str(&format!(": {c}"));
            cur = c.source();
        }
        eprintln!("migration_cpu: {msg}");
        std::process::exit(1);
    }
}

/// KubeVirt's proxy: MIGNET_KUBEVIRT_PROXY, or built (and cached) by the
/// project's script. No row is ever silently left out.
fn kubevirt_proxy() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("MIGNET_KUBEVIRT_PROXY") {
        return Ok(PathBuf::from(p));
    }
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/tools/build-kubevirt-proxy.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("{}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed ({})", script.display(), out.status));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let memory = bench_env::<u64>("MIGNET_BENCH_MEMORY_MIB", 1024);
    let fill = bench_env::<u64>("MIGNET_BENCH_FILL_MIB", 900);
    let dirty = bench_env::<u64>("MIGNET_BENCH_DIRTY_MIB_S", 4);
    let repeat = bench_env::<u64>("MIGNET_BENCH_REPEAT", 3).max(1);
    let sweep = bench_env::<u64>("MIGNET_BENCH_SWEEP", 1) != 0;
    let kubevirt = kubevirt_proxy()?;
    let image = GuestImage::ensure()?;
    let net = NetnsPair::new("mqc", 78)?;
    let tmp = TempDir::new("mgcpu");
    let pki = Pki::new("bench CA");
    let tls = [
        pki.agent_dir(tmp.path(), "node-a"),
        pki.agent_dir(tmp.path(), "node-b"),
    ];
    let mut bed = Bed {
        net,
        image,
        memory,
        fill,
        dirty,
        tls,
        ours: PathBuf::from(env!("CARGO_BIN_EXE_mignet-proxy-endpoint")),
        kubevirt,
        hop: 0,
    };
    let only = std::env::var("MIGNET_BENCH_CASES").unwrap_or_default();
    let mut cases: Vec<(&str, MigrationSettings)> = vec![
        ("one connection", MigrationSettings::default()),
        (
            "multifd 4 (ours)",
            MigrationSettings {
                multifd_channels: Some(4),
                ..Default::default()
            },
        ),
        (
            "multifd 8 (kubevirt)",
            MigrationSettings {
                multifd_channels: Some(8),
                ..Default::default()
            },
        ),
    ];
    cases.retain(|(label, _)| only.is_empty() || label.replace(' ', "").contains(&only));

    let dir0 = RunDir::new("cpu")?;
    let mut spec = bed.image.vm_spec("cpu-0", dir0.path(), memory, fill, dirty);
    spec.netns = Some(bed.net.a.clone());
    let vm = VmProcess::start(&spec).await?;
    let qmp = QmpClient::connect(vm.qmp_socket()).await?;
    wait_serial(&vm, "mignet: ready", Duration::from_secs(300)).await?;
    eprintln!("migration_cpu: guest of {memory} MiB with {fill} MiB filled, dirtying {dirty} MiB/s, is ready");
    let mut guest = Guest {
        vm,
        qmp,
        side: 0,
        _dirs: vec![dir0],
    };

    let mut runs = Vec::new();
    let mut failures = Vec::new();
    // Paths alternate run by run, so load from other work on the machine
    // spreads over all three. A failed migration leaves the guest where it
    // was; it is counted and shown in the table, and retried until the path
    // has `repeat` successes (at most 3x `repeat` attempts).
    for (ci, (label, settings)) in cases.iter().enumerate() {
        let mut attempts = 0;
        loop {
            let todo: Vec<Via> = Via::ALL
                .into_iter()
                .filter(|p| {
                    runs.iter()
                        .filter(|r: &&Run| r.case == ci && r.path == *p)
                        .count()
                        < repeat as usize
                })
                .collect();
            if todo.is_empty() || attempts >= 3 * repeat {
                break;
            }
            attempts += 1;
            for path in todo {
                let r = match one(&mut bed, &mut guest, path, settings).await? {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("migration_cpu: {label:<20} {:<8} FAILED: {e}", path.label());
                        failures.push((ci, path));
                        continue;
                    }
                };
                let gib = r.0.transferred as f64 / GIB;
                eprintln!(
                    "migration_cpu: {label:<20} {:<8} {:>7.1} MiB/s  CPU s/GiB: src QEMU {:.2}, dst QEMU {:.2}, proxies {:.2}, machine {:.2}; proxies' peak RSS {:.1} MiB",
                    path.label(),
                    r.0.mib_s,
                    r.1.src / gib,
                    r.1.dst / gib,
                    r.1.proxies / gib,
                    r.1.busy / gib,
                    r.2
                );
                runs.push(Run {
                    case: ci,
                    path,
                    m: r.0,
                    cpu: r.1,
                    rss_mib: r.2,
                    calls_per_mib: r.3,
                });
            }
        }
    }
    print_table(&cases, &runs, &failures, &bed, repeat);
    if sweep {
        let points = cap_sweep(&mut bed, &mut guest).await?;
        print_sweep(&points);
    }
    drop(guest.qmp);
    guest.vm.kill()?;
    Ok(())
}

/// One completed migration of the guest to the other side through `path`.
async fn one(
    bed: &mut Bed,
    guest: &mut Guest,
    path: Via,
    settings: &MigrationSettings,
) -> Result<Result<(MigrationMeasurement, Cpu, f64, f64), String>, Box<dyn std::error::Error>> {
    let (src, dst) = (guest.side, 1 - guest.side);
    let dir = RunDir::new("cpu")?;
    let (procs, listen, connect) = bed.proxies(path, src, dst, dir.path(), None)?;
    let dspec = bed.dest_spec(dir.path(), dst);
    let sampler = Sampler::start(
        guest.vm.pid(),
        dspec.pid_file(),
        procs.iter().map(ProxyProc::pid).collect(),
    );
    let result = migrate_and_measure(&guest.qmp, &dspec, settings, &listen, &connect).await;
    let end = Instant::now();
    let samples = sampler.stop();
    let (dvm, dqmp, m) = match result {
        Ok(r) => r,
        Err(e) => {
            procs.into_iter().for_each(ProxyProc::stop);
            let logs: String = ["source.log", "target.log"]
                .iter()
                .map(|f| {
                    let t = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
                    let lines: Vec<&str> = t.lines().collect();
                    format!(
                        "--- {f} (tail):\n{}\n",
                        lines[lines.len().saturating_sub(15)..].join("\n")
                    )
                })
                .collect();
            return Ok(Err(format!("{} migration: {e}\n{logs}", path.label())));
        }
    };
    let (cpu, _) = window(&samples, end - m.wall, end);
    // The source reports completion once its last bytes are written, which
    // may still be inside the proxies: keep them until the destination has
    // loaded everything.
    wait_destination(&dqmp).await;
    let rss = procs.iter().map(|p| peak_rss_mib(p.pid())).sum();
    let calls: f64 = procs.iter().map(|p| rw_syscalls(p.pid())).sum();
    let calls_per_mib = calls / (m.transferred as f64 / MIB);
    procs.into_iter().for_each(ProxyProc::stop);
    guest.arrived(dvm, dqmp, dir)?;
    Ok(Ok((m, cpu, rss, calls_per_mib)))
}

async fn wait_destination(dqmp: &QmpClient) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = migration::query(dqmp, Side::Destination)
            .await
            .map(|s| s.status);
        if matches!(st, Ok(MigrationStatus::Completed)) || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn med(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn print_table(
    cases: &[(&str, MigrationSettings)],
    runs: &[Run],
    failures: &[(usize, Via)],
    bed: &Bed,
    repeat: u64,
) {
    println!();
    println!(
        "QEMU live migration of a {} MiB TCG guest ({} MiB non-zero, dirtying {} MiB/s), veth between two namespaces; medians of {repeat}",
        bed.memory, bed.fill, bed.dirty
    );
    println!("CPU-seconds per GiB transferred (user+sys per process; machine = all busy CPU on the machine during the migration)");
    println!(
        "| {:<20} | {:<8} | {:>11} | {:>7} | {:>8} | {:>8} | {:>7} | {:>7} | {:>9} | {:>12} | {:>15} |",
        "configuration",
        "path",
        "failed/runs",
        "MiB/s",
        "src QEMU",
        "dst QEMU",
        "proxies",
        "machine",
        "proxy RSS",
        "rw calls/MiB",
        "vs kubevirt"
    );
    println!(
        "|{:-<22}|{:-<10}|{:->13}|{:->9}|{:->10}|{:->10}|{:->9}|{:->9}|{:->11}|{:->14}|{:->17}|",
        "", "", "", "", "", "", "", "", "", "", ""
    );
    let mut verdicts = Vec::new();
    for (ci, (label, _)) in cases.iter().enumerate() {
        let stats = |path: Via| {
            let rs: Vec<&Run> = runs
                .iter()
                .filter(|r| r.case == ci && r.path == path)
                .collect();
            if rs.is_empty() {
                return None;
            }
            let per = |f: fn(&Cpu) -> f64| {
                med(rs
                    .iter()
                    .map(|r| f(&r.cpu) / (r.m.transferred as f64 / GIB))
                    .collect())
            };
            Some([
                med(rs.iter().map(|r| r.m.mib_s).collect()),
                per(|c| c.src),
                per(|c| c.dst),
                per(|c| c.proxies),
                per(|c| c.busy),
                med(rs.iter().map(|r| r.rss_mib).collect()),
                med(rs.iter().map(|r| r.calls_per_mib).collect()),
            ])
        };
        let kv = stats(Via::Kubevirt);
        for path in Via::ALL {
            let Some(v) = stats(path) else { continue };
            let vs = match (path, kv) {
                (Via::Mignet, Some(k)) => {
                    let (rate, cpu) = (v[0] / k[0], v[3] / k[3]);
                    verdicts.push((label, rate, cpu));
                    format!("{rate:.2}x, {cpu:.2}x CPU")
                }
                _ => "-".into(),
            };
            println!(
                "| {:<20} | {:<8} | {:>11} | {:>7.1} | {:>8.2} | {:>8.2} | {:>7} | {:>7.2} | {:>9} | {:>12} | {:>15} |",
                label,
                path.label(),
                {
                    let failed = failures.iter().filter(|f| **f == (ci, path)).count();
                    let ok = runs.iter().filter(|r| r.case == ci && r.path == path).count();
                    format!("{failed}/{}", failed + ok)
                },
                v[0],
                v[1],
                v[2],
                if path == Via::Direct { "-".into() } else { format!("{:.2}", v[3]) },
                v[4],
                if path == Via::Direct { "-".into() } else { format!("{:.1} MiB", v[5]) },
                if path == Via::Direct { "-".into() } else { format!("{:.0}", v[6]) },
                vs
            );
        }
    }
    println!();
    println!("targets: mignet >= 1.0x kubevirt's throughput and <= 0.6x its proxy CPU-s/GiB");
    for (label, rate, cpu) in verdicts {
        println!(
            "  {label:<20} throughput {rate:.2}x ({}), proxy CPU {cpu:.2}x ({})",
            if rate >= 1.0 { "met" } else { "MISSED" },
            if cpu <= 0.6 { "met" } else { "MISSED" }
        );
    }
}

struct Point {
    cap_mib: u64,
    multifd: Option<u8>,
    limiter: &'static str,
    stream: f64,
    wire: f64,
    window: Duration,
}

/// The cap sweep: for each rate and channel count, a migration held by our
/// proxy's limiter and one held by QEMU's max-bandwidth, each measured on
/// the source's veth through the steady part, then cancelled (or left to
/// complete when it is that fast).
async fn cap_sweep(
    bed: &mut Bed,
    guest: &mut Guest,
) -> Result<Vec<Point>, Box<dyn std::error::Error>> {
    let mut points = Vec::new();
    for cap_mib in [1u64, 8, 32, 64, 256] {
        for multifd in [None, Some(4u8)] {
            for limiter in ["mignet proxy", "QEMU max-bandwidth"] {
                let ours = limiter == "mignet proxy";
                let (src, dst) = (guest.side, 1 - guest.side);
                let dir = RunDir::new("cap")?;
                let cap = cap_mib << 20;
                let (procs, listen, connect) = bed.proxies(
                    if ours { Via::Mignet } else { Via::Direct },
                    src,
                    dst,
                    dir.path(),
                    ours.then_some(cap),
                )?;
                let settings = MigrationSettings {
                    multifd_channels: multifd,
                    max_bandwidth: if ours { 0 } else { cap },
                    ..Default::default()
                };
                let mut dspec = bed.dest_spec(dir.path(), dst);
                dspec.incoming_defer = true;
                let dvm = VmProcess::start(&dspec).await?;
                let dqmp =
                    QmpClient::connect_retry(dvm.qmp_socket(), Duration::from_secs(10)).await?;
                migration::prepare_destination(&dqmp, &settings, &listen).await?;
                let ns = bed.ns(src).to_string();
                // Long enough for a steady window, short of the whole guest.
                let span = Duration::from_secs_f64((bed.fill as f64 / cap_mib as f64).min(10.0));
                let sampler = std::thread::spawn(move || {
                    let t0 = Instant::now();
                    wire_rate::sample_until(&ns, "eth0", Duration::from_millis(100), |_| {
                        t0.elapsed() > span
                    })
                });
                migration::start_source(&guest.qmp, &settings, &connect).await?;
                let samples = sampler.join().map_err(|_| "sampler panicked")?;
                let status = migration::query(&guest.qmp, Side::Source).await?.status;
                let completed = if status == MigrationStatus::Completed {
                    true
                } else {
                    let st = migration::cancel_hard(&guest.qmp).await?;
                    st == MigrationStatus::Completed
                };
                let idle = cap / 100;
                let got = wire_rate::steady_rate(
                    &samples,
                    idle,
                    Duration::from_millis(700),
                    Duration::from_millis(1500),
                    ours,
                );
                if completed {
                    wait_destination(&dqmp).await;
                    procs.into_iter().for_each(ProxyProc::stop);
                    guest.arrived(dvm, dqmp, dir)?;
                } else {
                    procs.into_iter().for_each(ProxyProc::stop);
                    drop(dqmp);
                    let mut dvm = dvm;
                    dvm.kill()?;
                }
                let Some((stream, wire, window)) = got else {
                    return Err(format!(
                        "cap {cap_mib}Mi {limiter} multifd {multifd:?}: no steady window in {} samples",
                        samples.len()
                    )
                    .into());
                };
                eprintln!(
                    "migration_cpu: cap {cap_mib:>3}Mi multifd {:<4} {limiter:<18} {:>8.2} MiB/s stream ({:+.1} %), {:.2} MiB/s wire, over {:.1} s",
                    multifd.map_or("off".into(), |n| n.to_string()),
                    stream / MIB,
                    (stream / cap as f64 - 1.0) * 100.0,
                    wire / MIB,
                    window.as_secs_f64()
                );
                points.push(Point {
                    cap_mib,
                    multifd,
                    limiter,
                    stream,
                    wire,
                    window,
                });
            }
        }
    }
    Ok(points)
}

fn print_sweep(points: &[Point]) {
    println!();
    println!("bandwidthPerMigration on the wire: the source's veth transmit counters over the steady part,");
    println!(
        "net of {} bytes of Ethernet/IPv4/TCP headers per packet counted and, through the proxy, {} bytes of TLS per 16 KiB record",
        wire_rate::FRAME_BYTES,
        wire_rate::TLS_RECORD_OVERHEAD
    );
    println!(
        "| {:>5} | {:<7} | {:<18} | {:>10} | {:>7} | {:>10} | {:>6} |",
        "cap", "multifd", "held by", "stream MiB/s", "error", "wire MiB/s", "window"
    );
    println!(
        "|{:->7}|{:-<9}|{:-<20}|{:->14}|{:->9}|{:->12}|{:->8}|",
        "", "", "", "", "", "", ""
    );
    for p in points {
        println!(
            "| {:>3}Mi | {:<7} | {:<18} | {:>12.2} | {:>+6.1} % | {:>10.2} | {:>4.1} s |",
            p.cap_mib,
            p.multifd.map_or("off".into(), |n| n.to_string()),
            p.limiter,
            p.stream / MIB,
            (p.stream / (p.cap_mib as f64 * MIB) - 1.0) * 100.0,
            p.wire / MIB,
            p.window.as_secs_f64()
        );
    }
}
