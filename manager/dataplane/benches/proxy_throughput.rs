//! Proxy throughput against raw TCP on the same veth path between two namespaces.
//!
//! ```text
//! raw:   writer --TCP over veth--> reader
//! proxy: writer --unix--> source proxy ==mTLS over veth==> target proxy --unix--> reader
//! ```
//!
//! Writers and readers are plain blocking threads moving a non-zero pattern;
//! each proxy side is one current-thread tokio runtime on its own thread (as a
//! node agent would run one per node). Everything shares the machine's cores, so
//! TLS and copy CPU cost shows up directly.
//!
//! `cargo bench -p mignet-dataplane --bench proxy_throughput`
//! Env: `MIGNET_BENCH_GIB` (default 2) bytes per run; `MIGNET_BENCH_ROUNDS`
//! (default 3); `MIGNET_BENCH_CAP_SECS` (default 8) seconds for the capped run;
//! `MIGNET_BENCH_BUF_KIB` overrides the proxy's copy buffer (default 256);
//! `MIGNET_BENCH_PATHS` (default `raw,plain,tls`) and `MIGNET_BENCH_CONNS`
//! (default `1,4`) pick what to run, e.g. a single path under `perf record`.
//!
//! The CPU column is this process's user+system CPU-seconds per GiB carried
//! (writers, readers, both proxies and the kernel work done on their behalf,
//! read from /proc/self/stat): on a machine whose cores are all busy, the
//! ratio of CPU per GiB is what the throughput ratio converges to.

#[path = "../tests/proxy_support/mod.rs"]
mod proxy_support;

use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::unix::net::{UnixListener as StdUnixListener, UnixStream as StdUnixStream};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mignet_dataplane::listener::MigrationListener;
use mignet_dataplane::proxy::{self, MigrationCounters, ProxyOptions, RateLimit};
use mignet_dataplane::qemu::testbed::bench_env;
use mignet_dataplane::tls::{ReloadingTls, TlsPaths, TlsSettings};
use proxy_support::{veth, Netns, Pki, TempDir};

const SRC_IP: &str = "10.77.0.1";
const DST_IP: &str = "10.77.0.2";
const CHUNK: usize = 256 * 1024;
const MIB: f64 = 1024.0 * 1024.0;

fn pattern() -> Vec<u8> {
    (0..CHUNK).map(|i| (i * 31 % 251) as u8 + 1).collect()
}

fn write_n(w: &mut impl Write, mut n: u64) {
    let buf = pattern();
    while n > 0 {
        let k = n.min(CHUNK as u64) as usize;
        w.write_all(&buf[..k]).expect("writer");
        n -= k as u64;
    }
}

fn read_all(r: &mut impl Read) -> u64 {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return total,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("reader: {e}"),
        }
    }
}

/// Raw TCP: `conns` connections from src to dst, `total` bytes split among them.
fn raw_tcp(src: &Netns, dst: &Netns, total: u64, conns: usize) -> Duration {
    let listener =
        dst.run(|| std::net::TcpListener::bind((DST_IP.parse::<IpAddr>().unwrap(), 0)).unwrap());
    let addr = listener.local_addr().unwrap();
    let readers: JoinHandle<u64> = std::thread::spawn(move || {
        let mut hs = Vec::new();
        for _ in 0..conns {
            let (mut s, _) = listener.accept().unwrap();
            s.set_nodelay(true).unwrap();
            hs.push(std::thread::spawn(move || read_all(&mut s)));
        }
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let start = Instant::now();
    let writers: Vec<_> = (0..conns)
        .map(|_| {
            src.spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                s.set_nodelay(true).unwrap();
                write_n(&mut s, total / conns as u64);
                s.shutdown(Shutdown::Write).unwrap();
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let got = readers.join().unwrap();
    let took = start.elapsed();
    assert_eq!(got, total / conns as u64 * conns as u64);
    took
}

/// The proxy path; returns the elapsed time for `total` bytes.
fn through_proxy(
    src: &Netns,
    dst: &Netns,
    total: u64,
    conns: usize,
    cap: Option<u64>,
    tls: bool,
) -> Duration {
    let tmp = TempDir::new("mgbench");
    let pki = Pki::new("bench CA");
    let src_dir = pki.agent_dir(tmp.path(), "node-a");
    let dst_dir = pki.agent_dir(tmp.path(), "node-b");
    let src_sock: PathBuf = tmp.path().join("src.sock");
    let dst_sock: PathBuf = tmp.path().join("dst.sock");

    // Reader = destination QEMU.
    let sink = StdUnixListener::bind(&dst_sock).unwrap();
    let readers: JoinHandle<u64> = std::thread::spawn(move || {
        let mut hs = Vec::new();
        for _ in 0..conns {
            let (mut s, _) = sink.accept().unwrap();
            hs.push(std::thread::spawn(move || read_all(&mut s)));
        }
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });

    let listener = dst.run(|| MigrationListener::bind(DST_IP.parse().unwrap()).unwrap());
    let target: SocketAddr = listener.local_addr();
    let (stop_dst, dst_stopped) = tokio::sync::oneshot::channel::<()>();
    let dst_tls = ReloadingTls::load(TlsPaths::in_dir(&dst_dir), TlsSettings::default()).unwrap();
    let dst_rt = dst.spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let listener = listener.into_tokio().unwrap();
                let _task = if tls {
                    Some(proxy::spawn_target(
                        listener,
                        dst_sock,
                        dst_tls,
                        Arc::new(MigrationCounters::default()),
                        bench_options(),
                    ))
                } else {
                    tokio::spawn(plain_target(listener, dst_sock));
                    None
                };
                let _ = dst_stopped.await;
            })
    });

    let (stop_src, src_stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let src_tls = ReloadingTls::load(TlsPaths::in_dir(&src_dir), TlsSettings::default()).unwrap();
    let sock = src_sock.clone();
    let src_rt = src.spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let unix = tokio::net::UnixListener::bind(&sock).unwrap();
                let _task = if tls {
                    Some(proxy::spawn_source(
                        unix,
                        target,
                        src_tls,
                        Arc::new(MigrationCounters::default()),
                        ProxyOptions {
                            bind_ip: Some(SRC_IP.parse().unwrap()),
                            rate_limit: cap.map(RateLimit::new),
                            ..bench_options()
                        },
                    ))
                } else {
                    tokio::spawn(plain_source(unix, target));
                    None
                };
                ready_tx.send(()).unwrap();
                let _ = src_stopped.await;
            })
    });
    ready_rx.recv().unwrap();

    // Writer = source QEMU.
    let start = Instant::now();
    let writers: Vec<_> = (0..conns)
        .map(|_| {
            let sock = src_sock.clone();
            std::thread::spawn(move || {
                let mut s = StdUnixStream::connect(&sock).unwrap();
                write_n(&mut s, total / conns as u64);
                s.shutdown(Shutdown::Write).unwrap();
                // Wait for the far side's EOF: the path has drained.
                read_all(&mut s);
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let got = readers.join().unwrap();
    let took = start.elapsed();
    assert_eq!(got, total / conns as u64 * conns as u64);
    let _ = stop_src.send(());
    let _ = stop_dst.send(());
    src_rt.join().unwrap();
    dst_rt.join().unwrap();
    took
}

/// Reference relay without TLS: same hops, same copy loop (`proxy::relay`).
async fn plain_source(unix: tokio::net::UnixListener, target: SocketAddr) {
    loop {
        let (u, _) = unix.accept().await.unwrap();
        tokio::spawn(async move {
            let t = tokio::net::TcpStream::connect(target).await.unwrap();
            t.set_nodelay(true).unwrap();
            let (a, b) = (AtomicU64::new(0), AtomicU64::new(0));
            proxy::relay(u, t, &a, &b, CHUNK, None).await.unwrap();
        });
    }
}

async fn plain_target(tcp: tokio::net::TcpListener, qemu: PathBuf) {
    loop {
        let (t, _) = tcp.accept().await.unwrap();
        t.set_nodelay(true).unwrap();
        let qemu = qemu.clone();
        tokio::spawn(async move {
            let u = tokio::net::UnixStream::connect(&qemu).await.unwrap();
            let (a, b) = (AtomicU64::new(0), AtomicU64::new(0));
            proxy::relay(t, u, &a, &b, CHUNK, None).await.unwrap();
        });
    }
}

/// Proxy options, with the copy buffer from `MIGNET_BENCH_BUF_KIB` if set.
fn bench_options() -> ProxyOptions {
    let mut o = ProxyOptions::default();
    o.buffer_size = bench_env("MIGNET_BENCH_BUF_KIB", o.buffer_size / 1024) * 1024;
    o
}

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

/// (user, system) CPU-seconds of this process so far.
fn cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the parenthesised command name (which may hold spaces);
    // utime and stime are fields 14 and 15, in clock ticks.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let tick = |i: usize| f[i - 3].parse::<f64>().expect("tick count") / hz;
    (tick(14), tick(15))
}

/// One measured run: wall time and CPU-seconds (user, system).
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
struct Sample {
    wall: Duration,
    user: f64,
    sys: f64,
}

fn measure(run: impl FnOnce() -> Duration) -> Sample {
    let (u0, s0) = cpu_seconds();
    let wall = run();
    let (u1, s1) = cpu_seconds();
    Sample {
        wall,
        user: u1 - u0,
        sys: s1 - s0,
    }
}

/// A comma-separated list; an entry that does not parse stops the bench
/// (naming it) rather than being skipped.
fn env_list<T: std::str::FromStr>(name: &str, default: &str) -> Vec<String> {
    let v = std::env::var(name).unwrap_or_else(|_| default.to_string());
    v.split(',')
        .map(|s| {
            if s.parse::<T>().is_err() {
                eprintln!("{name}={v:?}: {s:?} is not a valid entry");
                std::process::exit(2);
            }
            s.to_string()
        })
        .collect()
}

fn rate(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB / d.as_secs_f64()
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us without
    // it: then only check that we start.
    if !std::env::args().any(|a| a == "--bench") {
        println!("proxy_throughput: run with `cargo bench` to measure");
        return;
    }
    let gib: f64 = bench_env("MIGNET_BENCH_GIB", 2.0);
    let cap_secs: f64 = bench_env("MIGNET_BENCH_CAP_SECS", 8.0);
    let rounds: usize = bench_env("MIGNET_BENCH_ROUNDS", 3);
    let total = (gib * 1024.0 * MIB) as u64;

    let src = Netns::new("mgbn-s");
    let dst = Netns::new("mgbn-d");
    veth(
        &src,
        "mig-src",
        &format!("{SRC_IP}/24"),
        &dst,
        "migration0",
        &format!("{DST_IP}/24"),
    );

    println!(
        "proxy_throughput: {gib} GiB per run, median of {rounds} interleaved rounds, veth between two namespaces, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<34} {:>5} {:>8} {:>8} {:>10} {:>14}",
        "path", "conns", "seconds", "MiB/s", "vs raw TCP", "CPU s/GiB u+s"
    );
    let paths = env_list::<String>("MIGNET_BENCH_PATHS", "raw,plain,tls");
    let conns_list: Vec<usize> = env_list::<usize>("MIGNET_BENCH_CONNS", "1,4")
        .iter()
        .map(|c| c.parse().expect("filtered"))
        .collect();
    let gib_moved = total as f64 / (1024.0 * MIB);
    // Rounds interleave the three paths so background load hits them alike;
    // the table shows medians (by wall time).
    for &conns in &conns_list {
        let mut samples: Vec<(&str, Vec<Sample>)> = Vec::new();
        for _ in 0..rounds {
            for path in &paths {
                let (name, s) = match path.as_str() {
                    "raw" => (
                        "raw TCP (plaintext)",
                        measure(|| raw_tcp(&src, &dst, total, conns)),
                    ),
                    "plain" => (
                        "same relay hops, plaintext (ref.)",
                        measure(|| through_proxy(&src, &dst, total, conns, None, false)),
                    ),
                    "tls" => (
                        "unix->mTLS proxy->TCP->proxy->unix",
                        measure(|| through_proxy(&src, &dst, total, conns, None, true)),
                    ),
                    other => panic!("MIGNET_BENCH_PATHS: unknown path {other}"),
                };
                match samples.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, v)) => v.push(s),
                    None => samples.push((name, vec![s])),
                }
            }
        }
        let medians: Vec<(&str, Sample)> =
            samples.into_iter().map(|(n, v)| (n, median(v))).collect();
        let raw = medians
            .iter()
            .find(|(n, _)| n.starts_with("raw"))
            .map(|(_, s)| rate(total, s.wall));
        for (name, s) in medians {
            let r = rate(total, s.wall);
            println!(
                "{:<34} {:>5} {:>8.2} {:>8.1} {:>10} {:>5.2}+{:<5.2}={:.2}",
                name,
                conns,
                s.wall.as_secs_f64(),
                r,
                raw.map_or("-".to_string(), |raw| format!("{:.3}", r / raw)),
                s.user / gib_moved,
                s.sys / gib_moved,
                (s.user + s.sys) / gib_moved
            );
        }
    }
    if std::env::var("MIGNET_BENCH_CAP_SECS").as_deref() == Ok("0") {
        return;
    }
    let cap = 64u64 << 20;
    let capped_total = (cap as f64 * cap_secs) as u64;
    for conns in [1usize, 4] {
        let d = through_proxy(&src, &dst, capped_total, conns, Some(cap), true);
        let r = rate(capped_total, d);
        println!(
            "{:<34} {:>5} {:>8.2} {:>8.1} {:>9.1}%",
            "proxy with 64 MiB/s cap (vs cap)",
            conns,
            d.as_secs_f64(),
            r,
            (r / 64.0 - 1.0) * 100.0
        );
    }
}
