//! Faults during a live migration (issue 15, item 2; root, real QEMU/TCG
//! guests in the lab). Each case starts a migration of the same VM, injects
//! one fault at 10 %, 50 % or 90 % of the transfer (by time: the transfer
//! of an undisturbed migration of this VM is measured first), and then
//! requires:
//! - the VMIM ends Succeeded or Failed, a Failed one with a reason in
//!   words;
//! - the VM runs on exactly one node with its guest ticking, one QEMU, one
//!   live launcher pod; no migration socket, TCP listener or IPAM
//!   allocation is left behind (`reliability::Bed::check`);
//! - the next migration of the VM succeeds.
//!
//! The outcome of every case is written into the table of RELIABILITY.md
//! (between its `faults` markers) by this test, so the table is what the
//! suite last saw; the test fails if any case broke an invariant.
//!
//! What each fault is in the lab: the agents, the migration controller and
//! the store's writers all run in the lab daemon (`lab/README.md`), so
//! "agent killed" is its pod deleted (the lab kubelet aborts the agent and
//! starts a new pod, as a kubelet does for a deleted DaemonSet pod), and
//! the lab daemon SIGKILLed and started again kills both agents, the
//! controller and the store's writer at once, with no chance to tidy up.

mod lab_common;
mod reliability;

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab_common::*;
use mignet::backend::protocol::{Progress, PROGRESS_ANNOTATION};
use reliability::{Bed, End, Guest};

const VM: &str = "fv";

/// 48 MiB of non-zero memory under a 16Mi cap: a transfer of a few
/// seconds, long enough to hit 10 % of it.
const GUEST: Guest = Guest {
    memory_mib: 128,
    fill_mib: 48,
    dirty_mib_s: 1,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    SourceQemuKilled,
    TargetQemuKilled,
    SourceAgentPodDeleted,
    TargetAgentPodDeleted,
    DaemonKilled,
    SourceLinkDown,
    TargetLinkDown,
    SegmentDrops,
    DiskFull,
}

impl Fault {
    fn describe(self) -> &'static str {
        match self {
            Fault::SourceQemuKilled => "source QEMU SIGKILLed",
            Fault::TargetQemuKilled => "target QEMU SIGKILLed",
            Fault::SourceAgentPodDeleted => "source agent pod deleted (agent aborted, new pod)",
            Fault::TargetAgentPodDeleted => "target agent pod deleted (agent aborted, new pod)",
            Fault::DaemonKilled => {
                "lab daemon SIGKILLed and restarted (controller, both agents, store writer)"
            }
            Fault::SourceLinkDown => "source migration0 down for 3 s, then up",
            Fault::TargetLinkDown => "target migration0 down for 3 s, then up",
            Fault::SegmentDrops => "every packet on the source's migration0 dropped for 3 s (nft)",
            Fault::DiskFull => {
                "the lab's filesystem full for 3 s (the store, the IPAM file store, the run directories, the logs)"
            }
        }
    }
}

/// Each fault at the points of the transfer where timing matters.
const CASES: &[(Fault, &[u32])] = &[
    (Fault::SourceQemuKilled, &[10, 50, 90]),
    (Fault::TargetQemuKilled, &[10, 50, 90]),
    (Fault::SourceAgentPodDeleted, &[10, 50, 90]),
    (Fault::TargetAgentPodDeleted, &[10, 50, 90]),
    (Fault::DaemonKilled, &[10, 50, 90]),
    (Fault::SourceLinkDown, &[50]),
    (Fault::TargetLinkDown, &[50]),
    (Fault::SegmentDrops, &[50]),
    (Fault::DiskFull, &[50]),
];

struct Row {
    fault: Fault,
    at: u32,
    transferred_mib: Option<f64>,
    end: Option<End>,
    vm: String,
    next: String,
    ok: Result<(), String>,
}

fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?}");
}

fn progress_mib(bed: &Bed, vmim: &str) -> Option<f64> {
    let m = bed.vmim(vmim)?;
    let p: Progress =
        serde_json::from_str(m.metadata.annotations?.get(PROGRESS_ANNOTATION)?).ok()?;
    Some(p.transferred_bytes as f64 / (1 << 20) as f64)
}

fn restart_daemon(bed: &Bed) {
    // The daemon now running: lab.json's first record is `lab up`'s, which
    // an earlier case may have replaced already.
    let daemons = mignet::lab::lifecycle::daemon_processes(&bed.lab.dir);
    assert_eq!(daemons.len(), 1, "one lab daemon runs: {daemons:?}");
    kill9(daemons[0]);
    wait_for("the daemon gone", Duration::from_secs(10), || {
        mignet::lab::lifecycle::daemon_processes(&bed.lab.dir)
            .is_empty()
            .then_some(())
    });
    let log = std::fs::OpenOptions::new()
        .append(true)
        .open(bed.lab.dir.join("daemon.log"))
        .unwrap();
    let mut c = bed.lab.cmd();
    c.args(["lab", "daemon"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut c, 0);
    let mut daemon = c.spawn().unwrap();
    // Reaped when it ends (the next case may SIGKILL it again).
    std::thread::spawn(move || daemon.wait());
}

/// Inject `fault` into the running migration `vmim` of VM from `source`.
fn inject(bed: &Bed, fault: Fault, source: &str, vmim: &str) {
    let target = || {
        wait_for("the target node", Duration::from_secs(10), || {
            bed.end_of(vmim, None).target
        })
    };
    let qemu_on = |node: &str| {
        bed.qemus(VM)
            .into_iter()
            .find(|(_, n, _)| n == node)
            .map(|(p, _, _)| p)
    };
    match fault {
        Fault::SourceQemuKilled => kill9(qemu_on(source).expect("the source QEMU")),
        Fault::TargetQemuKilled => {
            let t = target();
            kill9(qemu_on(&t).expect("the target QEMU"))
        }
        Fault::SourceAgentPodDeleted | Fault::TargetAgentPodDeleted => {
            let node = if fault == Fault::SourceAgentPodDeleted {
                source.to_owned()
            } else {
                target()
            };
            bed.lab.ok(&[
                "delete",
                "pod",
                &mignet::lab::agent_pods::pod_name(&node),
                "-n",
                reliability::NS,
            ]);
        }
        Fault::DaemonKilled => restart_daemon(bed),
        Fault::SourceLinkDown | Fault::TargetLinkDown => {
            let node = if fault == Fault::SourceLinkDown {
                source.to_owned()
            } else {
                target()
            };
            let ns = bed.agent_ns(&node);
            sh(&["ip", "-n", &ns, "link", "set", "migration0", "down"]);
            std::thread::sleep(Duration::from_secs(3));
            sh(&["ip", "-n", &ns, "link", "set", "migration0", "up"]);
        }
        Fault::DiskFull => {
            // Fill the lab's own tmpfs to the last byte, hold, free it.
            let ballast = bed.lab.dir.join("ballast");
            let mut f = std::fs::File::create(&ballast).unwrap();
            let chunk = vec![0x5au8; 1 << 20];
            use std::io::Write as _;
            while f.write_all(&chunk).is_ok() {}
            let small = [0x5au8; 512];
            while f.write_all(&small).is_ok() {}
            let _ = f.sync_all();
            std::thread::sleep(Duration::from_secs(3));
            drop(f);
            std::fs::remove_file(&ballast).unwrap();
        }
        Fault::SegmentDrops => {
            let ns = bed.agent_ns(source);
            let nft = |rules: &str| {
                let mut c = Command::new("ip")
                    .args(["netns", "exec", &ns, "nft", "-f", "-"])
                    .stdin(Stdio::piped())
                    .spawn()
                    .expect("nft (Debian package nftables)");
                use std::io::Write as _;
                c.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
                assert!(c.wait().unwrap().success(), "nft {rules}");
            };
            nft("table inet mignet_fault {\n\
                 chain in { type filter hook input priority 0; iifname \"migration0\" drop; }\n\
                 chain out { type filter hook output priority 0; oifname \"migration0\" drop; }\n\
                 }\n");
            std::thread::sleep(Duration::from_secs(3));
            nft("delete table inet mignet_fault\n");
        }
    }
}

/// A tmpfs mounted at a directory, unmounted (lazily, so a straggling
/// process cannot keep it) when dropped.
#[derive(Default)]
struct TmpfsMount(std::cell::RefCell<Option<std::path::PathBuf>>);

impl TmpfsMount {
    fn mount(&self, dir: &std::path::Path, size: &str) {
        std::fs::create_dir_all(dir).unwrap();
        sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "mignet-lab-faults",
            dir.to_str().unwrap(),
        ]);
        *self.0.borrow_mut() = Some(dir.to_path_buf());
    }
}

impl Drop for TmpfsMount {
    fn drop(&mut self) {
        // A kept lab (lab_common's MIGNET_LAB_KEEP_ON_FAILURE) keeps its files.
        if std::thread::panicking() && std::env::var_os("MIGNET_LAB_KEEP_ON_FAILURE").is_some() {
            return;
        }
        if let Some(dir) = self.0.borrow_mut().take() {
            let _ = Command::new("umount").arg("-l").arg(&dir).status();
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

fn run_case(bed: &Bed, fault: Fault, at: u32, transfer: Duration) -> Row {
    let before = bed.check(&[VM], Duration::from_secs(120));
    let mut row = Row {
        fault,
        at,
        transferred_mib: None,
        end: None,
        vm: String::new(),
        next: String::new(),
        ok: Ok(()),
    };
    let before = match before {
        Ok(p) => p,
        Err(e) => {
            row.ok = Err(format!("not settled before the case: {e}"));
            return row;
        }
    };
    let source = before.nodes[VM].clone();
    let uid = bed.vmi(VM).and_then(|v| v.metadata.uid);
    let vmim = bed.migrate(VM);
    let running = match bed.wait_running(&vmim, Duration::from_secs(120)) {
        Ok(t) => t,
        Err(end) => {
            row.ok = Err(format!("ended before the fault: {end:?}"));
            row.end = Some(end);
            return row;
        }
    };
    let when = running + transfer.mul_f64(f64::from(at) / 100.0);
    std::thread::sleep(when.saturating_duration_since(Instant::now()));
    row.transferred_mib = progress_mib(bed, &vmim);
    inject(bed, fault, &source, &vmim);
    let end = bed.wait_end(&vmim, Duration::from_secs(300));
    if end.phase == mignet::api::MigrationPhase::Failed && end.reason.trim().is_empty() {
        row.ok = Err("Failed without a reason".into());
    }
    row.end = Some(end);
    if fault == Fault::DaemonKilled {
        bed.wait_network();
    }
    match bed
        .check(&[VM], Duration::from_secs(180))
        .and_then(|p| bed.ticking(&[VM], &p).map(|()| p))
    {
        Ok(p) => {
            let node = &p.nodes[VM];
            let same_vmi = bed.vmi(VM).and_then(|v| v.metadata.uid) == uid;
            row.vm = match (same_vmi, node == &source) {
                (true, true) => format!("Running on the source ({node})"),
                (true, false) => format!("Running on the target ({node})"),
                (false, _) => format!("restarted by its VirtualMachine, Running on {node}"),
            };
        }
        Err(e) => {
            row.vm = "NOT SETTLED".into();
            if row.ok.is_ok() {
                row.ok = Err(e);
            }
            return row;
        }
    }
    // The next migration of the same VM.
    let next = bed.migrate(VM);
    let end = bed.wait_end(&next, Duration::from_secs(300));
    row.next = if end.succeeded() {
        "Succeeded".into()
    } else {
        format!("{:?}: {}", end.phase, end.reason)
    };
    if !end.succeeded() && row.ok.is_ok() {
        row.ok = Err(format!("the next migration: {end:?}"));
    }
    if let Err(e) = bed.check(&[VM], Duration::from_secs(60)) {
        if row.ok.is_ok() {
            row.ok = Err(format!("after the next migration: {e}"));
        }
    }
    row
}

fn cell(s: &str) -> String {
    let s = s.replace('|', "\\|").replace('\n', " ");
    if s.chars().count() > 160 {
        format!("{}…", s.chars().take(160).collect::<String>())
    } else {
        s
    }
}

fn table(rows: &[Row], transfer: Duration, total: Duration) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Generated by `manager/tests/lab_faults.rs` on {}: one VM ({} MiB guest, {} MiB non-zero, \
         re-dirtying {} MiB/s), bandwidthPerMigration 16Mi, progressTimeout 20 s; an undisturbed \
         transfer took {:.1} s. The whole suite took {:.0} s.\n",
        mignet::store::now_rfc3339(),
        GUEST.memory_mib,
        GUEST.fill_mib,
        GUEST.dirty_mib_s,
        transfer.as_secs_f64(),
        total.as_secs_f64()
    );
    t.push_str("| fault | at | MiB sent then | VMIM | reason | the VM after | next migration | invariants |\n");
    t.push_str("|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let (phase, reason) = r
            .end
            .as_ref()
            .map(|e| (format!("{:?}", e.phase), e.reason.clone()))
            .unwrap_or_default();
        let _ = writeln!(
            t,
            "| {} | {} % | {} | {} | {} | {} | {} | {} |",
            r.fault.describe(),
            r.at,
            r.transferred_mib
                .map(|m| format!("{m:.0}"))
                .unwrap_or_else(|| "-".into()),
            phase,
            cell(if phase == "Succeeded" { "" } else { &reason }),
            cell(&r.vm),
            cell(&r.next),
            match &r.ok {
                Ok(()) => "hold".to_string(),
                Err(e) => format!("**broken**: {}", cell(e)),
            }
        );
    }
    t
}

/// Replace the text between the `faults` markers of RELIABILITY.md.
fn write_table(text: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../RELIABILITY.md");
    let (begin, end) = ("<!-- faults:begin -->", "<!-- faults:end -->");
    let doc = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match (doc.find(begin), doc.find(end)) {
        (Some(b), Some(e)) if b < e => format!("{}{begin}\n{text}{}", &doc[..b], &doc[e..]),
        _ => format!("{doc}\n{begin}\n{text}{end}\n"),
    };
    std::fs::write(&path, new).unwrap();
}

#[test]
fn faults_during_a_migration_never_lose_the_vm() {
    let t0 = Instant::now();
    // The lab lives on a tmpfs of its own, so "disk full" fills that one
    // filesystem and nothing of the machine's. Unmounted after the lab is
    // down (locals drop in reverse order).
    let mount = TmpfsMount::default();
    let bed = Bed::up_with(
        "flt",
        2,
        &["bandwidthPerMigration=16Mi", "progressTimeout=20"],
        |lab| mount.mount(&lab.dir, "256m"),
    );
    bed.vm(VM, GUEST);
    bed.wait_booted(&[VM]);
    // The undisturbed transfer, there and back.
    let mut transfers = Vec::new();
    for _ in 0..2 {
        let m = bed.migrate(VM);
        let end = bed.wait_end(&m, Duration::from_secs(300));
        assert!(end.succeeded(), "calibration: {end:?}");
        transfers.extend(end.running_for);
        bed.check(&[VM], Duration::from_secs(60)).unwrap();
    }
    let transfer = transfers.iter().sum::<Duration>() / transfers.len() as u32;
    println!("undisturbed transfer: {transfer:?}");
    let only = std::env::var("MIGNET_FAULTS").ok();
    let mut rows = Vec::new();
    for (fault, points) in CASES {
        if only
            .as_deref()
            .is_some_and(|o| !format!("{fault:?}").contains(o))
        {
            continue;
        }
        for &at in *points {
            let row = run_case(&bed, *fault, at, transfer);
            println!(
                "{:?} at {at} %: {:?} / {} / next {} / {:?}",
                fault,
                row.end.as_ref().map(|e| (&e.phase, &e.reason)),
                row.vm,
                row.next,
                row.ok
            );
            rows.push(row);
        }
    }
    let text = table(&rows, transfer, t0.elapsed());
    if only.is_none() {
        write_table(&text);
    }
    println!("{text}");
    let broken: Vec<_> = rows
        .iter()
        .filter_map(|r| {
            r.ok.as_ref()
                .err()
                .map(|e| format!("{:?} at {} %: {e}", r.fault, r.at))
        })
        .collect();
    assert!(
        broken.is_empty(),
        "cases that broke an invariant:\n{}\n--- daemon log (tail):\n{}",
        broken.join("\n"),
        bed.daemon_log_tail(120)
    );
}
