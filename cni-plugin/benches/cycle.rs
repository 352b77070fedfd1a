//! One ADD+DEL cycle of the seed config: our binaries against the reference
//! macvlan + host-local from /usr/lib/cni, in one harness, on the same kind of
//! namespaces. Prints a table; asserts nothing about speed.
//!
//! `cargo bench -p mignet-cni --bench cycle` (as root). Every process is
//! spawned directly inside the node namespace (setns in pre_exec), and its
//! CPU time and peak RSS come from wait4's rusage, which also counts the
//! children it reaped (the exec'd IPAM of the reference).

#[path = "../tests/common/mod.rs"]
mod common;

use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const ITERATIONS: usize = 40;
const WARMUP: usize = 3;

struct Sample {
    wall: Duration,
    cpu: Duration,
    maxrss_kib: i64,
}

/// Run one invocation to completion and measure it.
// The child is reaped with wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn measure(inv: &Invocation) -> Sample {
    let start = Instant::now();
    let mut child = inv.spawn();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(inv.stdin.as_bytes())
        .unwrap();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid with valid out-pointers; the Child
    // handle is never waited on again afterwards.
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut ru) };
    let wall = start.elapsed();
    assert_eq!(pid, child.id() as libc::pid_t, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{:?} {} failed: {out} {err}",
        inv.bin,
        inv.get("CNI_COMMAND").unwrap_or("?")
    );
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Sample {
        wall,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        maxrss_kib: ru.ru_maxrss,
    }
}

struct Variant {
    label: &'static str,
    add: Invocation,
    del: Invocation,
    walls: Vec<Duration>,
    cpus: Vec<Duration>,
    add_walls: Vec<Duration>,
    del_walls: Vec<Duration>,
    rss: i64,
}

impl Variant {
    fn new(
        label: &'static str,
        bin: std::path::PathBuf,
        cni: &CniPath,
        lab: &Lab,
        conf: &str,
    ) -> Variant {
        let add = Invocation::new(bin, "ADD", cni, conf)
            .pod(&lab.pod)
            .on_node(&lab.node.ns)
            .set("CNI_CONTAINERID", "bench")
            .set(
                "MIGNET_IPAM_STORE_DIR",
                &lab.store.path.display().to_string(),
            );
        let del = Invocation {
            bin: add.bin.clone(),
            env: add.env.clone(),
            stdin: add.stdin.clone(),
            netns: add.netns.clone(),
        }
        .command("DEL");
        Variant {
            label,
            add,
            del,
            walls: Vec::new(),
            cpus: Vec::new(),
            add_walls: Vec::new(),
            del_walls: Vec::new(),
            rss: 0,
        }
    }

    fn cycle(&mut self, record: bool, gap: Duration) {
        let a = measure(&self.add);
        // Optional pause between ADD and DEL (MIGNET_BENCH_GAP_MS): a DEL
        // right after an ADD may wait longer in the kernel for RCU.
        std::thread::sleep(gap);
        let d = measure(&self.del);
        if record {
            self.walls.push(a.wall + d.wall);
            self.add_walls.push(a.wall);
            self.del_walls.push(d.wall);
            self.cpus.push(a.cpu + d.cpu);
            self.rss = self.rss.max(a.maxrss_kib).max(d.maxrss_kib);
        }
    }
}

struct Lab {
    node: Node,
    pod: Netns,
    store: TempDir,
}

fn median(v: &[Duration]) -> Duration {
    let mut s = v.to_vec();
    s.sort();
    s[s.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs us too: keep
    // that quick.
    let quick = std::env::args().all(|a| a != "--bench");
    let iterations = if quick { 2 } else { ITERATIONS };
    let gap = Duration::from_millis(
        std::env::var("MIGNET_BENCH_GAP_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    let cni = CniPath::new();
    let hl = TempDir::new("mgbenchhl");
    let mk_lab = || Lab {
        node: Node::new(),
        pod: Netns::new("mgp"),
        store: TempDir::new("mgbenchstore"),
    };
    let (lab_ours, lab_ours_hl, lab_ref, lab_nosync) = (mk_lab(), mk_lab(), mk_lab(), mk_lab());
    // The seed NAD with the IPAM store's flushes off: shows what durability
    // costs (host-local, the reference's IPAM, never fsyncs).
    let seed_nosync = SEED_NAD.replace(
        r#""range":"10.200.5.0/24""#,
        r#""range":"10.200.5.0/24","fsync":false"#,
    );
    let host_local = format!(
        r#"{{"cniVersion":"0.3.1","name":"migration-bridge","type":"macvlan","master":"eth1","mode":"bridge","ipam":{{"type":"host-local","subnet":"10.200.5.0/24","dataDir":"{}"}}}}"#,
        hl.path.display()
    );
    let mut variants = [
        Variant::new(
            "ours: macvlan + whereabouts (seed NAD, in-process IPAM)",
            cni.bin("macvlan"),
            &cni,
            &lab_ours,
            SEED_NAD,
        ),
        Variant::new(
            "ours: macvlan + host-local (exec'd IPAM)",
            cni.bin("macvlan"),
            &cni,
            &lab_ours_hl,
            &host_local,
        ),
        Variant::new(
            "reference: macvlan + host-local (/usr/lib/cni)",
            cni.bin("ref-macvlan"),
            &cni,
            &lab_ref,
            &host_local,
        ),
        Variant::new(
            "ours: seed NAD, IPAM \"fsync\":false",
            cni.bin("macvlan"),
            &cni,
            &lab_nosync,
            &seed_nosync,
        ),
    ];
    for i in 0..WARMUP + iterations {
        // Interleaved, so drift in machine load hits every variant alike.
        for v in variants.iter_mut() {
            v.cycle(i >= WARMUP, gap);
        }
    }

    println!();
    println!(
        "One ADD+DEL cycle, {iterations} iterations each (median), {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "| {:<56} | {:>9} | {:>9} | {:>13} | {:>10} | {:>10} |",
        "variant", "wall ms", "CPU ms", "peak RSS MiB", "ADD wall", "DEL wall"
    );
    println!(
        "|{:-<58}|{:-<11}|{:-<11}|{:-<15}|{:-<12}|{:-<12}|",
        "", "", "", "", "", ""
    );
    for v in &variants {
        println!(
            "| {:<56} | {:>9.2} | {:>9.2} | {:>13.2} | {:>10.2} | {:>10.2} |",
            v.label,
            ms(median(&v.walls)),
            ms(median(&v.cpus)),
            v.rss as f64 / 1024.0,
            ms(median(&v.add_walls)),
            ms(median(&v.del_walls)),
        );
    }
    let reference = &variants[2];
    let ours = [&variants[0], &variants[1], &variants[3]];
    for v in ours {
        println!(
            "ratio ours/reference [{}]: cycle wall {:.3}, CPU {:.3}, ADD wall {:.3}",
            v.label,
            ms(median(&v.walls)) / ms(median(&reference.walls)),
            ms(median(&v.cpus)) / ms(median(&reference.cpus)),
            ms(median(&v.add_walls)) / ms(median(&reference.add_walls)),
        );
    }
    // What no plugin can go below: the kernel's own RTM_NEWLINK (straight
    // into the pod) + RTM_DELLINK of one macvlan, over sockets opened
    // beforehand, no process start. Unregistering a netdevice waits for RCU
    // grace periods, which dominates a DEL on both sides.
    let floor = kernel_floor(&lab_ref, iterations);
    let f = ms(median(&floor));
    println!("kernel floor (RTM_NEWLINK + RTM_DELLINK only, in-process): median {f:.2} ms wall");
    for v in ours {
        let ours = ms(median(&v.walls)) - f;
        let theirs = ms(median(&reference.walls)) - f;
        println!(
            "ratio above the floor [{}]: ({:.2} - floor) / ({:.2} - floor) = {:.3}",
            v.label,
            ms(median(&v.walls)),
            ms(median(&reference.walls)),
            ours / theirs
        );
    }
    println!("targets: ratio <= 0.2, our peak RSS <= 8 MiB");
}

/// Time create-into-pod + delete of a macvlan with our netlink client alone.
fn kernel_floor(lab: &Lab, iterations: usize) -> Vec<Duration> {
    use mignet_cni::netlink::{MacvlanSpec, Netlink};
    use mignet_cni::netns::NetNs;
    use netlink_packet_route::link::MacVlanMode;
    let node = NetNs::open(lab.node.ns.path()).unwrap();
    let pod = NetNs::open(lab.pod.path()).unwrap();
    let mut node_nl = Netlink::open_in(&node).unwrap();
    let mut pod_nl = Netlink::open_in(&pod).unwrap();
    let master = node_nl.link_by_name("eth1").unwrap().unwrap().index;
    let mut out = Vec::new();
    for i in 0..WARMUP + iterations {
        let start = Instant::now();
        node_nl
            .create_macvlan(&MacvlanSpec {
                name: "floor0",
                master_index: master,
                mode: MacVlanMode::Bridge,
                mtu: None,
                mac: None,
                bcqueuelen: None,
                netns_fd: Some(pod.raw_fd()),
            })
            .unwrap();
        let idx = pod_nl.link_by_name("floor0").unwrap().unwrap().index;
        pod_nl.delete_link(idx).unwrap();
        if i >= WARMUP {
            out.push(start.elapsed());
        }
    }
    out
}
