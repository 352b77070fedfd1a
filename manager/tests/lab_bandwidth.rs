//! `bandwidthPerMigration` holds on the wire (issue 16, item 3; root, real
//! QEMU/TCG guests in the lab): one VM migrated by the agents under 8Mi and
//! under 64Mi, the source agent's migration0 transmit counters sampled
//! through the steady part of each transfer and taken net of TCP/IP and
//! TLS framing (`dataplane/tests/wire_rate`). Each rate must be within
//! +-5 % of the cap: a slow machine may make the migration take longer,
//! never go faster or slower than the cap while it has data to send.
//! The 8Mi migration is cancelled once measured (it would take a minute);
//! the 64Mi one completes; the VM then runs on exactly one node with its
//! guest ticking and nothing left behind.

mod lab_common;
mod reliability;
#[path = "../dataplane/tests/wire_rate/mod.rs"]
mod wire_rate;

use std::time::{Duration, Instant};

use reliability::{Bed, Guest};

/// 448 MiB of non-zero memory: 7 s at 64Mi, enough for a steady window.
const GUEST: Guest = Guest {
    memory_mib: 512,
    fill_mib: 448,
    dirty_mib_s: 0,
};

const MI: f64 = (1u64 << 20) as f64;

/// Migrates `vm` under the cap in force, samples the source's migration0
/// for `measure` (or until the migration ends), and returns the steady
/// stream rate in bytes/s with a line that says how it was measured.
fn measure(bed: &Bed, vm: &str, cap_mib: f64, measure: Duration, cancel: bool) -> (f64, String) {
    let (source, _) = bed.placement(vm).expect("the VM runs");
    let ns = bed.agent_ns(&source);
    let vmim = bed.migrate(vm);
    let running = bed
        .wait_running(&vmim, Duration::from_secs(120))
        .unwrap_or_else(|end| panic!("{vmim} ended before Running: {end:?}"));
    let samples = wire_rate::sample_until(&ns, "migration0", Duration::from_millis(200), |_| {
        running.elapsed() > measure
            || matches!(
                bed.phase(&vmim),
                Some(mignet::api::MigrationPhase::Succeeded | mignet::api::MigrationPhase::Failed)
            )
    });
    if cancel {
        // Deleting the VMIM cancels it; its finalizer goes once the agents
        // have ended the migration, and the VM stays on the source.
        bed.cancel(&vmim);
        lab_common::wait_for(
            &format!("{vmim} cancelled and gone"),
            Duration::from_secs(120),
            || bed.vmim(&vmim).is_none().then_some(()),
        );
        assert_eq!(
            bed.placement(vm).map(|(n, _)| n),
            Some(source.clone()),
            "a cancelled migration leaves the VM where it was"
        );
    } else {
        let end = bed.wait_end(&vmim, Duration::from_secs(300));
        assert!(end.succeeded(), "{end:?}\n{}", bed.daemon_log_tail(60));
    }
    // Idle: less than a tenth of the cap in one 200 ms interval.
    let idle = (cap_mib * MI / 50.0) as u64;
    let (stream, wire, window) = wire_rate::steady_rate(
        &samples,
        idle,
        Duration::from_millis(1500),
        Duration::from_secs(3),
        true,
    )
    .unwrap_or_else(|| {
        panic!(
            "{vmim}: no steady window of 3 s in {} samples over {:?}",
            samples.len(),
            samples.last().map(|s| s.at - samples[0].at)
        )
    });
    let line = format!(
        "bandwidthPerMigration={cap_mib}Mi: {:.2} MiB/s of stream ({:.2} MiB/s on the wire) over {:.1} s of {source}'s migration0",
        stream / MI,
        wire / MI,
        window.as_secs_f64()
    );
    eprintln!("{line}");
    (stream, line)
}

#[test]
fn the_cap_holds_on_the_wire_at_8mi_and_64mi() {
    let bed = Bed::up("bw", 2, &["bandwidthPerMigration=8Mi"]);
    bed.vm("bw1", GUEST);
    bed.wait_booted(&["bw1"]);
    let t0 = Instant::now();

    let (slow, slow_line) = measure(&bed, "bw1", 8.0, Duration::from_secs(10), true);
    bed.edit(&["bandwidthPerMigration=64Mi"]);
    let (fast, fast_line) = measure(&bed, "bw1", 64.0, Duration::from_secs(120), false);

    let p = bed
        .check(&["bw1"], Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("after the migrations: {e}"));
    bed.ticking(&["bw1"], &p).unwrap();
    eprintln!("both measured in {:.0} s", t0.elapsed().as_secs_f64());

    for (rate, cap, line) in [(slow, 8.0, slow_line), (fast, 64.0, fast_line)] {
        let ratio = rate / (cap * MI);
        assert!(
            (0.95..=1.05).contains(&ratio),
            "{line}: {ratio:.3} of the cap, outside +-5 %"
        );
    }
}
