//! `cargo bench -p mignet-dataplane --bench migration_cpu` (root; QEMU + guest image)
//!
//! Where the CPU goes in a live migration on this machine: the same TCG guest
//! migrated (a) QEMU -> QEMU directly over TCP on a veth pair between two
//! namespaces, and (b) through our mTLS proxy (source endpoint on a unix
//! socket -> mTLS over the veth -> target endpoint -> unix socket of the
//! destination QEMU), each proxy side on its own 2-worker runtime inside its
//! namespace, as an agent runs it. Runs of (a) and (b) alternate.
//!
//! For every run it reads CPU time (user + system) of the source QEMU, the
//! destination QEMU and this process (= both proxies), plus the machine's
//! irq/softirq time and total busy time from /proc/stat, and prints each as
//! CPU-seconds per GiB transferred, and how many of the machine's cores were
//! busy on average (everything, including other work on the machine).
//!
//! Env: MIGNET_BENCH_FILL_MIB (900), MIGNET_BENCH_MEMORY_MIB (1024),
//! MIGNET_BENCH_REPEAT (2).

#[path = "../tests/proxy_support/mod.rs"]
mod proxy_support;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use mignet_dataplane::proxy::{ProxyOptions, SourceEndpoints, TargetEndpoints, STREAM_MEMORY};
use mignet_dataplane::qemu::migration::{self, MigrationStatus};
use mignet_dataplane::qemu::testbed::{
    bench_env, migrate_and_measure, wait_serial, GuestImage, MigrationMeasurement, NetnsPair,
    RunDir,
};
use mignet_dataplane::qemu::{MigrationSettings, QmpClient, VmProcess};
use mignet_dataplane::tls::{ReloadingTls, TlsPaths, TlsSettings};
use proxy_support::{Pki, TempDir};

const GIB: f64 = (1u64 << 30) as f64;

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

/// Machine-wide (busy, irq+softirq) CPU-seconds so far, from /proc/stat.
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or_default();
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 8 {
        return (0.0, 0.0);
    }
    // user nice system idle iowait irq softirq steal
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    (busy / clk_tck(), (v[5] + v[6]) / clk_tck())
}

/// A multi-threaded runtime whose threads all live in network namespace `ns`
/// (entered when each thread starts, before any task runs on it).
fn runtime_in(ns: &str) -> tokio::runtime::Runtime {
    let path = format!("/run/netns/{ns}");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            let fd = std::fs::File::open(&path).expect("netns file");
            nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        })
        .build()
        .expect("runtime")
}

#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    src: f64,
    dst: f64,
    proxies: f64,
    irq: f64,
    busy: f64,
}

/// (time, [src QEMU, dst QEMU, this process, machine busy, machine irq]) CPU-seconds.
type Sample = (Instant, [f64; 5]);

struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Sample>>,
}

impl Sampler {
    fn start(src_pid: i32, dst_pid_file: std::path::PathBuf) -> Sampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let me = std::process::id().to_string();
            let src = src_pid.to_string();
            let mut dst: Option<String> = None;
            let mut out = Vec::new();
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                if dst.is_none() {
                    dst = std::fs::read_to_string(&dst_pid_file)
                        .ok()
                        .map(|p| p.trim().to_string())
                        .filter(|p| !p.is_empty());
                }
                let (busy, irq) = machine_cpu();
                let d = dst.as_deref().map_or(0.0, process_cpu);
                out.push((
                    Instant::now(),
                    [process_cpu(&src), d, process_cpu(&me), busy, irq],
                ));
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
            .unwrap_or((t, [0.0; 5]))
    };
    let ((t0, a), (t1, b)) = (near(from), near(to));
    let d = |i: usize| (b[i] - a[i]).max(0.0);
    (
        Cpu {
            src: d(0),
            dst: d(1),
            proxies: d(2),
            busy: d(3),
            irq: d(4),
        },
        (t1 - t0).as_secs_f64(),
    )
}

struct Run {
    case: usize,
    proxied: bool,
    m: MigrationMeasurement,
    cpu: Cpu,
    /// Wall time of the whole measured step (destination start to completion).
    wall: f64,
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
    let net = match NetnsPair::new("mqc", 78) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("migration_cpu: {e}");
            std::process::exit(1);
        }
    };
    // Built and dropped out here: a runtime may not be dropped inside another
    // one's block_on, which an early `?` in `run` would do.
    let rts = [runtime_in(&net.a), runtime_in(&net.b)];
    let handles = [rts[0].handle().clone(), rts[1].handle().clone()];
    let result = rt.block_on(run(&net, handles));
    drop(rts);
    if let Err(e) = result {
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

async fn run(
    net: &NetnsPair,
    rts: [tokio::runtime::Handle; 2],
) -> Result<(), Box<dyn std::error::Error>> {
    let memory = bench_env::<u64>("MIGNET_BENCH_MEMORY_MIB", 1024);
    let fill = bench_env::<u64>("MIGNET_BENCH_FILL_MIB", 900);
    let repeat = bench_env::<u64>("MIGNET_BENCH_REPEAT", 2).max(1);
    let image = GuestImage::ensure()?;
    let tmp = TempDir::new("mgcpu");
    let pki = Pki::new("bench CA");
    let tls = [
        ReloadingTls::load(
            TlsPaths::in_dir(&pki.agent_dir(tmp.path(), "node-a")),
            TlsSettings::default(),
        )?,
        ReloadingTls::load(
            TlsPaths::in_dir(&pki.agent_dir(tmp.path(), "node-b")),
            TlsSettings::default(),
        )?,
    ];
    let only = std::env::var("MIGNET_BENCH_CASES").unwrap_or_default();
    let mut cases: Vec<(&str, MigrationSettings)> = vec![
        ("no multifd (1 conn)", MigrationSettings::default()),
        (
            "multifd 1 channel",
            MigrationSettings {
                multifd_channels: Some(1),
                ..Default::default()
            },
        ),
        (
            "multifd 4 channels",
            MigrationSettings {
                multifd_channels: Some(4),
                ..Default::default()
            },
        ),
    ];
    // MIGNET_BENCH_CASES=multifd4 (substring of the label, spaces removed).
    cases.retain(|(label, _)| only.is_empty() || label.replace(' ', "").contains(&only));

    let mut dirs = vec![RunDir::new("cpu")?];
    let mut spec = image.vm_spec("cpu-0", dirs[0].path(), memory, fill, 0);
    spec.netns = Some(net.a.clone());
    let mut vm = VmProcess::start(&spec).await?;
    let mut qmp = QmpClient::connect(vm.qmp_socket()).await?;
    wait_serial(&vm, "mignet: ready", Duration::from_secs(300)).await?;
    eprintln!("migration_cpu: guest of {memory} MiB with {fill} MiB filled is ready");

    let mut runs = Vec::new();
    let mut side = 0usize; // the namespace the guest runs in
    let mut hop = 0;
    for (ci, (label, settings)) in cases.iter().enumerate() {
        for _ in 0..repeat {
            for proxied in [false, true] {
                hop += 1;
                let (src_ns, dst_ns) = (side, 1 - side);
                let addrs = [net.addr_a, net.addr_b];
                let names = [&net.a, &net.b];
                let dir = RunDir::new("cpu")?;
                let mut dspec = image.vm_spec(&format!("cpu-{hop}"), dir.path(), memory, fill, 0);
                dspec.netns = Some(names[dst_ns].clone());
                let dst_ip = std::net::IpAddr::V4(addrs[dst_ns]);
                let src_ip = std::net::IpAddr::V4(addrs[src_ns]);

                // Proxy endpoints for this one migration (as the agents make them).
                let mut endpoints = None;
                let (listen_uri, connect_uri) = if proxied {
                    let dst_sock = dir.join("incoming.sock");
                    let (t, s) = (tls[dst_ns].clone(), tls[src_ns].clone());
                    let ds = dst_sock.clone();
                    let target = rts[dst_ns]
                        .spawn(async move {
                            TargetEndpoints::start(
                                dst_ip,
                                &[(STREAM_MEMORY, ds)],
                                t,
                                ProxyOptions::default(),
                            )
                        })
                        .await??;
                    let port_map = target.port_map();
                    let work = dir.path().to_path_buf();
                    let source = rts[src_ns]
                        .spawn(async move {
                            SourceEndpoints::start(
                                &work,
                                "bench",
                                dst_ip,
                                &port_map,
                                &[STREAM_MEMORY],
                                s,
                                ProxyOptions {
                                    bind_ip: Some(src_ip),
                                    ..Default::default()
                                },
                            )
                        })
                        .await??;
                    let sock = source
                        .socket(STREAM_MEMORY)
                        .ok_or("no source socket")?
                        .clone();
                    endpoints = Some((target, source));
                    (
                        format!("unix:{}", dst_sock.display()),
                        format!("unix:{}", sock.display()),
                    )
                } else {
                    let uri = format!("tcp:{}:{}", addrs[dst_ns], 4600 + hop);
                    (uri.clone(), uri)
                };

                // Sample every 20 ms on a thread of its own; the window that
                // counts is the migration itself (from `migrate` until its
                // completion was seen), not the destination's start-up.
                let sampler = Sampler::start(vm.pid(), dspec.pid_file());
                let (dvm, dqmp, m) =
                    migrate_and_measure(&qmp, &dspec, settings, &listen_uri, &connect_uri).await?;
                let end = Instant::now();
                let samples = sampler.stop();
                let (cpu, wall) = window(&samples, end - m.wall, end);
                let gib = m.transferred as f64 / GIB;
                eprintln!(
                    "migration_cpu: {label:<20} {:<6} {:>7.1} MiB/s  CPU s/GiB: src QEMU {:.2}, dst QEMU {:.2}, proxies {:.2}, irq {:.2}, machine {:.2}; {:.2} cores busy",
                    if proxied { "proxy" } else { "direct" },
                    m.mib_s,
                    cpu.src / gib,
                    cpu.dst / gib,
                    cpu.proxies / gib,
                    cpu.irq / gib,
                    cpu.busy / gib,
                    cpu.busy / wall
                );
                // The source reports completion once it has written its last
                // bytes, which may still be inside the proxies: keep them until
                // the destination has loaded everything (QEMU also refuses
                // migration commands until its incoming side is done).
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let st = migration::query(&dqmp, migration::Side::Destination)
                        .await?
                        .status;
                    if st == MigrationStatus::Completed || Instant::now() > deadline {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if let Some((target, source)) = endpoints {
                    source.finish(Duration::from_secs(10)).await;
                    target.finish(Duration::from_secs(10)).await;
                }
                runs.push(Run {
                    case: ci,
                    proxied,
                    m,
                    cpu,
                    wall,
                });
                drop(qmp);
                vm.kill()?;
                vm = dvm;
                qmp = dqmp;
                dirs.push(dir);
                side = dst_ns;
            }
        }
    }
    drop(qmp);
    vm.kill()?;
    print_table(&cases, &runs);
    Ok(())
}

fn print_table(cases: &[(&str, MigrationSettings)], runs: &[Run]) {
    println!();
    println!("QEMU live migration, TCG guest, veth between two namespaces: direct plaintext TCP vs our mTLS proxy");
    println!("medians; CPU-seconds per GiB transferred (user+sys per process; irq/softirq and busy machine-wide, all work on the machine)");
    println!(
        "| {:<20} | {:<6} | {:>7} | {:>8} | {:>8} | {:>8} | {:>7} | {:>7} | {:>8} | {:>11} |",
        "configuration",
        "path",
        "MiB/s",
        "src QEMU",
        "dst QEMU",
        "proxies",
        "irq",
        "machine",
        "cores",
        "proxy/direct"
    );
    println!(
        "|{:-<22}|{:-<8}|{:->9}|{:->10}|{:->10}|{:->10}|{:->9}|{:->9}|{:->10}|{:->13}|",
        "", "", "", "", "", "", "", "", "", ""
    );
    let med = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    for (ci, (label, _)) in cases.iter().enumerate() {
        let mut direct_rate = 0.0;
        for proxied in [false, true] {
            let rs: Vec<&Run> = runs
                .iter()
                .filter(|r| r.case == ci && r.proxied == proxied)
                .collect();
            if rs.is_empty() {
                continue;
            }
            let per = |f: fn(&Cpu) -> f64| {
                med(rs
                    .iter()
                    .map(|r| f(&r.cpu) / (r.m.transferred as f64 / GIB))
                    .collect())
            };
            let rate = med(rs.iter().map(|r| r.m.mib_s).collect());
            let cores = med(rs.iter().map(|r| r.cpu.busy / r.wall.max(1e-3)).collect());
            let ratio = if proxied {
                format!("{:.2}", rate / direct_rate)
            } else {
                direct_rate = rate;
                "-".into()
            };
            println!(
                "| {:<20} | {:<6} | {:>7.1} | {:>8.2} | {:>8.2} | {:>8.2} | {:>7.2} | {:>7.2} | {:>8.2} | {:>11} |",
                label,
                if proxied { "proxy" } else { "direct" },
                rate,
                per(|c| c.src),
                per(|c| c.dst),
                per(|c| c.proxies),
                per(|c| c.irq),
                per(|c| c.busy),
                cores,
                ratio
            );
        }
    }
}
