//! Per-allocation cost of mignet-ipam on a /24, a /16 and a /64.
//!
//! `cargo bench -p mignet-cni --bench ipam_alloc` prints one table:
//! - allocator: the pure lowest-free search (`Allocator::allocate`);
//! - pool.assign: the pure per-ADD decision, which rebuilds the interval set
//!   from the pool's allocations (what every ADD does after reading the file);
//! - store ADD: in-process `add_parsed` through the file store (lock, read,
//!   decide, write tmp, fsync, rename, fsync dir), on the temp dir's disk,
//!   once with the default `fsync: true` and once with `fsync: false`.
//!
//! A /24 holds only 254 addresses, so every range is measured over its first
//! 254 allocations (the like-for-like column) and the /16 and /64 also over
//! 10,000 (MIGNET_BENCH_ALLOCS overrides). Flat means: the same cost per
//! allocation for the same number of allocations, whatever the range size.
//! Store costs grow with the number of allocations in the pool (the file is
//! read and rewritten whole), not with the size of the range.
//! The pure columns are the best of several passes; the store columns are one
//! pass each (n fsync'd writes).

use mignet_cni::ipam::allocator::{Allocator, Owner, Pool};
use mignet_cni::ipam::config::parse_netconf;
use mignet_cni::ipam::{add_parsed, config::NetConf};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const FIRST: usize = 254;

fn conf(range: &str, store: &Path, fsync: bool) -> NetConf {
    let text = format!(
        r#"{{"cniVersion":"1.0.0","name":"bench","ipam":{{"type":"whereabouts","range":"{range}","store_dir":"{}","fsync":{fsync}}}}}"#,
        store.display()
    );
    parse_netconf(text.as_bytes(), Path::new("/unused")).expect("bench config parses")
}

fn owner(i: usize) -> Owner {
    Owner {
        container_id: format!("bench-container-{i:06}"),
        ifname: "net1".into(),
        podref: Some(format!("bench/pod-{i:06}")),
    }
}

/// Time of the first FIRST items and of all items.
struct Split {
    first: Duration,
    all: Duration,
}

fn per(d: Duration, n: usize) -> f64 {
    d.as_secs_f64() * 1e9 / n as f64
}

fn bench_allocator(conf: &NetConf, n: usize) -> Split {
    // Repeat the pure part and keep the fastest pass: the machine is shared,
    // and a preempted pass says nothing about the algorithm.
    best_of(20, || {
        let mut a = Allocator::new(&conf.ipam.ranges[0]);
        timed(n, |_| {
            std::hint::black_box(a.allocate().expect("range has room"));
        })
    })
}

fn bench_pool_assign(conf: &NetConf, n: usize) -> Split {
    let r = &conf.ipam.ranges[0];
    best_of(3, || {
        let mut pool = Pool::default();
        timed(n, |i| {
            std::hint::black_box(pool.assign(r, &owner(i)).expect("range has room"));
        })
    })
}

/// Run `step(i)` for i in 0..n; time the first FIRST steps and all of them.
fn timed(n: usize, mut step: impl FnMut(usize)) -> Split {
    let t = Instant::now();
    let mut first = None;
    for i in 0..n {
        if i == FIRST {
            first = Some(t.elapsed());
        }
        step(i);
    }
    let all = t.elapsed();
    Split {
        first: first.unwrap_or(all),
        all,
    }
}

fn best_of(reps: usize, mut run: impl FnMut() -> Split) -> Split {
    let mut best = run();
    for _ in 1..reps {
        let s = run();
        best.first = best.first.min(s.first);
        best.all = best.all.min(s.all);
    }
    best
}

fn bench_store(conf: &NetConf, n: usize) -> Split {
    // One pass only: each pass writes n files with fsync.
    timed(n, |i| {
        add_parsed(conf, &owner(i)).expect("store ADD");
    })
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() {
    let big: usize = std::env::var("MIGNET_BENCH_ALLOCS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let base =
        TempDir(std::env::temp_dir().join(format!("mignet-ipam-bench-{}", std::process::id())));
    let ranges = [
        ("/24", "10.200.5.0/24", FIRST),
        ("/16", "10.200.0.0/16", big),
        ("/64", "fd00:200:5::/64", big),
    ];
    println!(
        "mignet-ipam per-allocation cost, mean per ADD (store dir under {}; allocator and pool.assign are pure, in memory)",
        std::env::temp_dir().display()
    );
    let head = |a: &str, b: &str, c: &str, d: &str| {
        println!(
            "{:<5} {:>6} | {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9}",
            "", "", a, "", b, "", c, "", d, ""
        )
    };
    head("allocator", "pool.asgn", "store ADD", "store ADD");
    head("ns", "us", "us,fsync", "us,nosync");
    println!(
        "{:<5} {:>6} | {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9}",
        "range",
        "allocs",
        "first254",
        "all",
        "first254",
        "all",
        "first254",
        "all",
        "first254",
        "all"
    );
    for (label, cidr, n) in ranges {
        let name = label.trim_start_matches('/');
        let c = conf(cidr, &base.0.join(name), true);
        let a = bench_allocator(&c, n);
        let p = bench_pool_assign(&c, n);
        let s = bench_store(&c, n);
        let ns = bench_store(
            &conf(cidr, &base.0.join(format!("{name}-nosync")), false),
            n,
        );
        let f = FIRST.min(n);
        println!(
            "{:<5} {:>6} | {:>9.1} {:>9.1} | {:>9.2} {:>9.2} | {:>9.0} {:>9.0} | {:>9.0} {:>9.0}",
            label,
            n,
            per(a.first, f),
            per(a.all, n),
            per(p.first, f) / 1e3,
            per(p.all, n) / 1e3,
            per(s.first, f) / 1e3,
            per(s.all, n) / 1e3,
            per(ns.first, f) / 1e3,
            per(ns.all, n) / 1e3,
        );
    }
}
