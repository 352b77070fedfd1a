//! mignet-ipam's Kubernetes store side by side with whereabouts, on the same
//! real kube-apiserver, the same range and the same parallel load:
//!
//! ```sh
//! tests/k8s/run.sh cargo bench -p mignet-cni --bench ipam_k8s
//! ```
//!
//! Both plugins run as processes (as kubelet/Multus would exec them):
//! WORKERS threads (default 30) each run ADDS/WORKERS ADDs back to back
//! (default 300 in all), each under a pod name of its own and one of six
//! node identities' pod namespaces, then the same for DEL. Each plugin gets
//! a fresh namespace (its kubeconfig's context namespace, where both keep
//! their pools). whereabouts is built by tests/tools/build-whereabouts.sh
//! (v0.9.2, cached) and configured with `kubernetes.kubeconfig` plus the
//! flat file it insists on. Its runs are capped (MIGNET_BENCH_WA_TIMEOUT,
//! default 300 s per phase): workers start no new operation after the cap,
//! and the table says how many completed.
//!
//! Columns: completed/attempted ADDs; ADD phase wall time; allocations per
//! second; API requests per allocation (the apiserver's
//! `apiserver_request_total`, summed over all labels, before/after the
//! phase: includes a few background requests of the bed itself); the same
//! for DEL; duplicates (addresses reported to more than one container);
//! leaks (pool entries and reservations left after every DEL).
//!
//! Overrides: MIGNET_BENCH_ADDS, MIGNET_BENCH_WORKERS,
//! MIGNET_BENCH_WA_TIMEOUT (seconds), MIGNET_BENCH_SKIP_WA=1.

#[path = "../tests/ipam_common/k8s.rs"]
mod k8s;

use k8s::TestNs;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const OURS: &str = env!("CARGO_BIN_EXE_mignet-ipam");
const RANGE: &str = "10.220.0.0/23";
const POOL: &str = "10.220.0.0-23";

fn env_num(k: &str, d: u64) -> u64 {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

struct Plugin {
    name: &'static str,
    bin: PathBuf,
    conf: String,
    cap: Option<Duration>,
}

/// One CNI invocation: (success, stdout).
fn run(p: &Plugin, verb: &str, cid: &str, args: &str) -> (bool, String) {
    let mut child = Command::new(&p.bin)
        .env_clear()
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", "/var/run/netns/mignet-bench-absent")
        .env("CNI_IFNAME", "net1")
        .env("CNI_PATH", "/nonexistent")
        .env("CNI_ARGS", args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn plugin");
    let _ = child.stdin.take().unwrap().write_all(p.conf.as_bytes());
    let out = child.wait_with_output().expect("wait plugin");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn address(stdout: &str) -> Option<String> {
    let v: Value = serde_json::from_str(stdout).ok()?;
    Some(v["ips"][0]["address"].as_str()?.to_string())
}

#[derive(Default)]
struct Phase {
    ok: usize,
    attempted: usize,
    wall: Duration,
    requests: u64,
    failures: BTreeMap<String, usize>,
    /// Requests per "VERB resource code" during the phase.
    kinds: BTreeMap<String, u64>,
    /// CPU seconds of kube-apiserver and etcd during the phase.
    server_cpu: Option<(f64, f64)>,
    /// CPU seconds of the plugin processes (children of this bench).
    plugin_cpu: f64,
}

/// CPU seconds (user + system) of this process's waited-for children.
fn children_cpu() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_CHILDREN is a valid selector, `ru` is valid memory.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Run `verb` for every (cid, args) over `workers` threads; returns the
/// phase totals and, per cid, the address printed (ADD).
fn phase(
    p: &Plugin,
    verb: &str,
    work: &[(String, String)],
    workers: usize,
) -> (Phase, Vec<(String, Option<String>)>) {
    let before = k8s::apiserver_requests_by_kind();
    let cpu_before = k8s::server_cpu_secs();
    let plugin_before = children_cpu();
    let start = Instant::now();
    let chunk = work.len().div_ceil(workers);
    let results: Vec<(String, bool, String)> = std::thread::scope(|sc| {
        let hs: Vec<_> = work
            .chunks(chunk)
            .map(|part| {
                sc.spawn(move || {
                    let mut out = Vec::new();
                    for (cid, args) in part {
                        if p.cap.is_some_and(|c| start.elapsed() > c) {
                            break;
                        }
                        let (ok, stdout) = run(p, verb, cid, args);
                        out.push((cid.clone(), ok, stdout));
                    }
                    out
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let wall = start.elapsed();
    let plugin_cpu = children_cpu() - plugin_before;
    let server_cpu = match (cpu_before, k8s::server_cpu_secs()) {
        (Some(a), Some(b)) => Some((b.0 - a.0, b.1 - a.1)),
        _ => None,
    };
    let after = k8s::apiserver_requests_by_kind();
    let kinds: BTreeMap<String, u64> = after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect();
    let requests = kinds.values().sum();
    let mut ph = Phase {
        ok: 0,
        attempted: results.len(),
        wall,
        requests,
        failures: BTreeMap::new(),
        kinds,
        server_cpu,
        plugin_cpu,
    };
    let mut addrs = Vec::new();
    for (cid, ok, stdout) in results {
        if ok {
            ph.ok += 1;
            addrs.push((cid, address(&stdout)));
        } else {
            let msg: String = serde_json::from_str::<Value>(&stdout)
                .ok()
                .and_then(|v| {
                    Some(format!(
                        "code {}: {}",
                        v["code"],
                        v["msg"].as_str()?.chars().take(90).collect::<String>()
                    ))
                })
                .unwrap_or_else(|| "no CNI error (killed or timed out)".into());
            *ph.failures.entry(msg).or_default() += 1;
            addrs.push((cid, None));
        }
    }
    (ph, addrs)
}

struct Row {
    name: &'static str,
    add: Phase,
    del: Phase,
    duplicates: usize,
    leaked_entries: usize,
    leaked_orips: usize,
}

fn bench(p: &Plugin, ns: &TestNs, adds: usize, workers: usize) -> Row {
    let work: Vec<(String, String)> = (0..adds)
        .map(|i| {
            (
                format!("{}-cid-{i}", p.name),
                format!("K8S_POD_NAMESPACE=node-{};K8S_POD_NAME=pod-{i}", i % 6),
            )
        })
        .collect();
    let (add, addrs) = phase(p, "ADD", &work, workers);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for a in addrs.iter().filter_map(|(_, a)| a.clone()) {
        *seen.entry(a).or_default() += 1;
    }
    let duplicates = seen.values().map(|n| n - 1).sum();
    // DEL every attempted ADD, as a runtime does for a failed one too.
    let attempted: Vec<(String, String)> = work[..]
        .iter()
        .filter(|(cid, _)| addrs.iter().any(|(c, _)| c == cid))
        .cloned()
        .collect();
    let del_plugin = Plugin {
        name: p.name,
        bin: p.bin.clone(),
        conf: p.conf.clone(),
        cap: p.cap,
    };
    let (del, _) = phase(&del_plugin, "DEL", &attempted, workers);
    Row {
        name: p.name,
        add,
        del,
        duplicates,
        leaked_entries: ns.pool(POOL).len(),
        leaked_orips: ns.orips().len(),
    }
}

fn build_whereabouts() -> PathBuf {
    let script = k8s::repo_root().join("tests/tools/build-whereabouts.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .expect("run build-whereabouts.sh");
    assert!(out.status.success(), "build-whereabouts.sh failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn ours(ns: &TestNs) -> Plugin {
    Plugin {
        name: "mignet-ipam",
        bin: OURS.into(),
        conf: format!(
            r#"{{"cniVersion":"0.3.1","name":"bench","type":"macvlan","ipam":{{"type":"whereabouts","range":"{RANGE}","kubernetes":{{"kubeconfig":"{}"}}}}}}"#,
            ns.admin_kubeconfig().display()
        ),
        cap: None,
    }
}

fn whereabouts(ns: &TestNs, bin: &Path, cap: Duration) -> Plugin {
    let kc = ns.admin_kubeconfig();
    // whereabouts refuses to run without a flat file (config file not found).
    let flat = ns.dir().join("whereabouts.conf");
    std::fs::write(
        &flat,
        format!(
            r#"{{"datastore":"kubernetes","kubernetes":{{"kubeconfig":"{}"}},"log_level":"error","log_file":"{}"}}"#,
            kc.display(),
            ns.dir().join("whereabouts.log").display()
        ),
    )
    .unwrap();
    Plugin {
        name: "whereabouts",
        bin: bin.to_path_buf(),
        conf: format!(
            r#"{{"cniVersion":"0.3.1","name":"bench","type":"macvlan","ipam":{{"type":"whereabouts","range":"{RANGE}","kubernetes":{{"kubeconfig":"{}"}},"configuration_path":"{}"}}}}"#,
            kc.display(),
            flat.display()
        ),
        cap: Some(cap),
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` would run us too:
    // do the real work only under cargo bench.
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "ipam_k8s: run with `tests/k8s/run.sh cargo bench -p mignet-cni --bench ipam_k8s`"
        );
        return;
    }
    let adds = env_num("MIGNET_BENCH_ADDS", 300) as usize;
    let workers = env_num("MIGNET_BENCH_WORKERS", 30) as usize;
    let cap = Duration::from_secs(env_num("MIGNET_BENCH_WA_TIMEOUT", 300));
    let _ = k8s::bed();

    let mut rows = Vec::new();
    {
        let ns = TestNs::new("bench-ours");
        rows.push(bench(&ours(&ns), &ns, adds, workers));
    }
    if std::env::var("MIGNET_BENCH_SKIP_WA").ok().as_deref() != Some("1") {
        let bin = build_whereabouts();
        let ns = TestNs::new("bench-wa");
        rows.push(bench(&whereabouts(&ns, &bin, cap), &ns, adds, workers));
    }

    println!();
    println!(
        "IPAM on the Kubernetes API: {adds} ADDs then their DELs, {workers} parallel processes, range {RANGE}, one apiserver (tests/k8s)"
    );
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6} {:>12}",
        "plugin",
        "ADD ok",
        "ADD s",
        "alloc/s",
        "req/alloc",
        "DEL ok",
        "DEL s",
        "req/DEL",
        "dups",
        "leaks(e/r)"
    );
    for r in &rows {
        let per = |req: u64, n: usize| {
            if n == 0 {
                f64::NAN
            } else {
                req as f64 / n as f64
            }
        };
        println!(
            "{:<12} {:>9} {:>9.1} {:>9.1} {:>9.1} {:>9} {:>9.1} {:>9.1} {:>6} {:>12}",
            r.name,
            format!("{}/{}", r.add.ok, adds),
            r.add.wall.as_secs_f64(),
            r.add.ok as f64 / r.add.wall.as_secs_f64(),
            per(r.add.requests, r.add.ok),
            format!("{}/{}", r.del.ok, r.del.attempted),
            r.del.wall.as_secs_f64(),
            per(r.del.requests, r.del.ok),
            r.duplicates,
            format!("{}/{}", r.leaked_entries, r.leaked_orips),
        );
    }
    for r in &rows {
        for (what, ph) in [("ADD", &r.add), ("DEL", &r.del)] {
            for (msg, n) in &ph.failures {
                println!("  {} {what} failures x{n}: {msg}", r.name);
            }
        }
    }
    println!("where the time went (CPU seconds during the phase; the machine has 2 cores):");
    for r in &rows {
        for (what, ph) in [("ADD", &r.add), ("DEL", &r.del)] {
            let (api, etcd) = ph.server_cpu.unwrap_or((f64::NAN, f64::NAN));
            println!(
                "  {:<12} {what}: wall {:.1} s, kube-apiserver {api:.1} s, etcd {etcd:.1} s, plugin processes {:.1} s",
                r.name,
                ph.wall.as_secs_f64(),
                ph.plugin_cpu
            );
            let kinds: Vec<String> = ph
                .kinds
                .iter()
                .filter(|(k, _)| {
                    k.contains("ippools") || k.contains("overlapping") || k.contains("leases")
                })
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            println!("    requests: {}", kinds.join(", "));
        }
    }
    if let Ok(l) = std::fs::read_to_string("/proc/loadavg") {
        println!(
            "load average at the end: {}",
            l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        );
    }
    if rows.len() == 2 {
        let tput = |r: &Row| r.add.ok as f64 / r.add.wall.as_secs_f64();
        println!(
            "throughput ratio (ADD allocations/s, mignet-ipam / whereabouts): {:.1}x",
            tput(&rows[0]) / tput(&rows[1])
        );
    }
}
