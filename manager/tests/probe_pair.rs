//! `mignet probe` between two network namespaces, on the real kernel: each
//! namespace has a `migration0` (a veth into a bridge in a third
//! namespace), the round's two pods are in a lab store, and the built binary
//! runs once per namespace (`ip netns exec`) as the lab kubelet will run it.
//! The reports must name the failure class the topology was made with: none,
//! MTU (bridge ports smaller than `migration0`), unreachable (a bridge port
//! down), TLS (a certificate from another CA), no address.
//!
//! Runs as root (namespaces); every namespace is deleted on Drop, also when
//! an assertion fails.

mod agent_support;
mod probe_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::TempDir;
use mignet::network::preflight::{FailureReason, ProbeReport};
use mignet_dataplane::certs::{ClusterCa, Validity};
use probe_support::{cert_dir, lab_with_round, probe_command, Netns, ProbeArgs, Segment, NS};

const ROUND: &str = "r0und";

struct Probe {
    node: String,
    child: std::process::Child,
    log: PathBuf,
}

/// `mignet probe` for `node` inside `ns`, as the lab kubelet starts it.
fn start_probe(
    ns: &Netns,
    node: &str,
    lab: &Path,
    certs: &Path,
    expect: usize,
    deadline_s: u64,
) -> Probe {
    let log = lab.join(format!("termination-{node}.log"));
    let args = ProbeArgs {
        node,
        round: ROUND,
        lab,
        certs,
        expect,
        deadline_s,
        log: &log,
    };
    let child = probe_command(ns, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning ip netns exec mignet probe");
    Probe {
        node: node.to_owned(),
        child,
        log,
    }
}

/// Wait for the probe (killed past `limit`), check it exited 0 with the
/// report on the last stdout line and in the termination log.
fn finish(p: Probe, limit: Duration) -> ProbeReport {
    let pid = p.child.id();
    let waiter = std::thread::spawn(move || p.child.wait_with_output());
    let start = Instant::now();
    while !waiter.is_finished() && start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !waiter.is_finished() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let out = waiter.join().unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Shown when a test fails.
    println!("probe {}:\n{stdout}\n{stderr}", p.node);
    assert!(
        start.elapsed() < limit,
        "probe {} outlived {limit:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        p.node
    );
    assert!(
        out.status.success(),
        "probe {} exited {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        p.node,
        out.status
    );
    let logged = std::fs::read_to_string(&p.log).unwrap_or_default();
    let report = ProbeReport::from_message(&logged).unwrap_or_else(|e| {
        panic!(
            "probe {}: report {logged:?}: {e}\nstdout:\n{stdout}",
            p.node
        )
    });
    assert_eq!(
        stdout.lines().last().map(str::trim),
        Some(logged.trim()),
        "the report is also the last stdout line"
    );
    report
}

/// Both probes of `pair` (node1 with `certs[0]`, node2 with `certs[1]`
/// `stagger` later, as pods start), their reports in node order and how
/// long the slower one took.
fn run_pair(
    pair: &Segment,
    lab: &TempDir,
    certs: [&Path; 2],
    deadline_s: u64,
    stagger: Duration,
) -> (Vec<ProbeReport>, Duration) {
    lab_with_round(lab.path(), ROUND, &pair.round());
    let start = Instant::now();
    let probes: Vec<Probe> = pair
        .nodes
        .iter()
        .zip(certs)
        .enumerate()
        .map(|(i, (n, c))| {
            if i > 0 {
                std::thread::sleep(stagger);
            }
            start_probe(&n.ns, &n.name, lab.path(), c, 2, deadline_s)
        })
        .collect();
    let limit = Duration::from_secs(deadline_s + 15);
    let reports = probes.into_iter().map(|p| finish(p, limit)).collect();
    (reports, start.elapsed())
}

/// Each report lists exactly the other node, with `reason` (`None`: passed).
fn assert_pairwise(reports: &[ProbeReport], reason: Option<FailureReason>, words: &str) {
    for (r, other) in reports.iter().zip(["node2", "node1"]) {
        assert_eq!(r.own_failure, None, "{r:?}");
        assert_eq!(r.peers.len(), 1, "{r:?}");
        let p = &r.peers[0];
        assert_eq!(p.node, other, "{r:?}");
        assert_eq!(p.failure.as_ref().map(|f| f.reason), reason, "{r:?}");
        if let Some(f) = &p.failure {
            assert!(f.detail.contains(words), "{}: {:?}", r.node, f.detail);
        }
    }
}

#[test]
fn probes_on_a_working_network_pass_each_other_at_full_size_and_leave_early() {
    let pair = Segment::v4(2, 9000, 9000);
    let dir = TempDir::new("probe-pass");
    let ca = ClusterCa::generate("probe test CA", Validity::days_from_now(1)).unwrap();
    let c1 = cert_dir(dir.path(), &ca, "node1");
    let c2 = cert_dir(dir.path(), &ca, "node2");
    // node2 starts a second late: node1 retries until it answers, is done
    // with it first, and must not be left asking after node2 leaves.
    let (reports, took) = run_pair(&pair, &dir, [&c1, &c2], 30, Duration::from_secs(1));
    assert_pairwise(&reports, None, "");
    for r in &reports {
        assert_eq!(r.mtu, Some(9000), "{r:?}");
        assert!(r
            .address
            .as_deref()
            .is_some_and(|a| a.starts_with("10.231.0.")));
    }
    // The barrier ends when both are done, not at the deadline.
    assert!(took < Duration::from_secs(15), "took {took:?}");
    drop(pair);
}

#[test]
fn a_segment_smaller_than_migration0_is_reported_as_mtu_by_both_sides() {
    let pair = Segment::v4(2, 9000, 1500);
    let dir = TempDir::new("probe-mtu");
    let ca = ClusterCa::generate("probe test CA", Validity::days_from_now(1)).unwrap();
    let c1 = cert_dir(dir.path(), &ca, "node1");
    let c2 = cert_dir(dir.path(), &ca, "node2");
    let (reports, _) = run_pair(&pair, &dir, [&c1, &c2], 30, Duration::ZERO);
    assert_pairwise(
        &reports,
        Some(FailureReason::Mtu),
        "a 8972-byte UDP payload (MTU 9000) got no echo in 3 tries; 64-byte ones did",
    );
}

#[test]
fn over_ipv6_the_full_size_payload_fills_the_mtu_and_a_smaller_segment_is_mtu() {
    // 9000 - 48 bytes of IPv6 and UDP headers: one byte more would not
    // leave the interface, one less would not prove the MTU.
    for (port_mtu, reason, words) in [
        (9000, None, ""),
        (
            1500,
            Some(FailureReason::Mtu),
            "a 8952-byte UDP payload (MTU 9000) got no echo in 3 tries",
        ),
    ] {
        let pair = Segment::v6(2, 9000, port_mtu);
        let dir = TempDir::new("probe-v6");
        let ca = ClusterCa::generate("probe test CA", Validity::days_from_now(1)).unwrap();
        let c1 = cert_dir(dir.path(), &ca, "node1");
        let c2 = cert_dir(dir.path(), &ca, "node2");
        let (reports, _) = run_pair(&pair, &dir, [&c1, &c2], 30, Duration::ZERO);
        assert_pairwise(&reports, reason, words);
    }
}

#[test]
fn a_node_whose_port_is_down_is_unreachable_from_both_sides() {
    let pair = Segment::v4(2, 1500, 1500);
    pair.set_port(1, false);
    let dir = TempDir::new("probe-down");
    let ca = ClusterCa::generate("probe test CA", Validity::days_from_now(1)).unwrap();
    let c1 = cert_dir(dir.path(), &ca, "node1");
    let c2 = cert_dir(dir.path(), &ca, "node2");
    let (reports, took) = run_pair(&pair, &dir, [&c1, &c2], 8, Duration::ZERO);
    assert_pairwise(
        &reports,
        Some(FailureReason::Unreachable),
        "64-byte UDP payloads",
    );
    assert!(
        took < Duration::from_secs(8),
        "the deadline holds: {took:?}"
    );
}

#[test]
fn a_certificate_from_another_ca_fails_tls_on_both_sides() {
    let pair = Segment::v4(2, 1500, 1500);
    let dir = TempDir::new("probe-tls");
    let ca = ClusterCa::generate("probe test CA", Validity::days_from_now(1)).unwrap();
    let other = ClusterCa::generate("another CA", Validity::days_from_now(1)).unwrap();
    let c1 = cert_dir(dir.path(), &ca, "node1");
    let c2 = cert_dir(dir.path(), &other, "node2");
    let (reports, _) = run_pair(&pair, &dir, [&c1, &c2], 30, Duration::ZERO);
    assert_pairwise(
        &reports,
        Some(FailureReason::Tls),
        "TLS handshake with 10.231.0.",
    );
}

#[test]
fn a_probe_without_migration0_reports_no_address_and_exits_at_once() {
    // The switch namespace has no migration0.
    let pair = Segment::v4(2, 1500, 1500);
    let dir = TempDir::new("probe-noaddr");
    lab_with_round(dir.path(), ROUND, &[("node1", "10.231.0.1")]);
    let ca = ClusterCa::generate("probe test CA", Validity::days_from_now(1)).unwrap();
    let c = cert_dir(dir.path(), &ca, "node1");
    let start = Instant::now();
    let p = start_probe(&pair.switch, "node1", dir.path(), &c, 2, 30);
    let r = finish(p, Duration::from_secs(20));
    assert!(start.elapsed() < Duration::from_secs(10));
    let f = r.own_failure.clone().expect("own failure");
    assert_eq!(f.reason, FailureReason::NoAddress);
    assert!(
        f.detail.contains("migration0 does not exist"),
        "{}",
        f.detail
    );
    assert!(r.peers.is_empty() && r.address.is_none(), "{r:?}");
}

#[test]
fn bad_flags_are_the_only_exit_without_a_report() {
    let dir = TempDir::new("probe-flags");
    let log = dir.path().join("termination.log");
    let out = Command::new(env!("CARGO_BIN_EXE_mignet"))
        .args(["probe", "--node", "node1", "--namespace", NS])
        .args(["--round", "not a label", "--expect", "2", "--lab"])
        .arg("--termination-log")
        .arg(&log)
        .env("MIGNET_LAB_DIR", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--round"), "{err}");
    assert!(!log.exists(), "no report on bad flags");
}

#[test]
fn sigterm_ends_the_probe_at_once_with_a_report() {
    let pair = Segment::v4(2, 1500, 1500);
    let dir = TempDir::new("probe-term");
    // node2's pod never appears: node1 would look for it until its deadline.
    lab_with_round(dir.path(), ROUND, &[("node1", "10.231.0.1")]);
    let ca = ClusterCa::generate("probe test CA", Validity::days_from_now(1)).unwrap();
    let c = cert_dir(dir.path(), &ca, "node1");
    let p = start_probe(&pair.nodes[0].ns, "node1", dir.path(), &c, 2, 60);
    std::thread::sleep(Duration::from_secs(1));
    let start = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(p.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let r = finish(p, Duration::from_secs(10));
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let f = r.own_failure.clone().expect("own failure");
    assert_eq!(f.reason, FailureReason::NotStarted);
    assert!(f.detail.contains("SIGTERM"), "{}", f.detail);
}
