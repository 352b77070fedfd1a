//! A VM that has just arrived by migration is migratable again at once,
//! whatever changed in between (issue 15, item 1; root, real QEMU/TCG
//! guests in the lab):
//! - the reported sequence: six VMs, each migrated once under limits 2/1,
//!   then `bandwidthPerMigration` changed and one of them migrated again
//!   at once (twice over);
//! - three VMs migrated back and forth 20 times each, all at once, with a
//!   config change before every round and no pause: every one of the 60
//!   migrations must succeed, and after each round every VM runs on
//!   exactly one node with its guest ticking and nothing left behind.

mod lab_common;
mod reliability;

use std::time::{Duration, Instant};

use reliability::{Bed, Guest};

/// Guests lost to QEMU 7.2's TCG precopy fault (RELIABILITY.md) after
/// `migrations` migrations: with qemu64 it hit every VM of the first round;
/// with kvm64 about once in 200 migrations. One is that fault; more than 2 %
/// (and more than one) is not.
fn assert_rare(crashes: &std::collections::BTreeMap<String, usize>, migrations: usize) {
    let n: usize = crashes.values().sum();
    assert!(
        n <= 1 || n * 50 <= migrations,
        "{n} guests crashed after arriving in {migrations} migrations: {crashes:?}"
    );
}

/// Six 128Mi guests with a little non-zero memory: a 2Mi cap must still
/// finish in seconds.
const LIGHT: Guest = Guest {
    memory_mib: 128,
    fill_mib: 8,
    dirty_mib_s: 0,
};

#[test]
fn a_vm_that_just_arrived_migrates_again_after_a_bandwidth_change() {
    let bed = Bed::up(
        "b2b",
        2,
        &[
            "parallelMigrationsPerCluster=2",
            "parallelOutboundMigrationsPerNode=1",
            "bandwidthPerMigration=0",
        ],
    );
    let vms = ["s1", "s2", "s3", "s4", "s5", "s6"];
    for vm in vms {
        bed.vm(vm, LIGHT);
    }
    bed.wait_booted(&vms);
    let mut uids = bed.uids(&vms);
    let mut crashes = std::collections::BTreeMap::new();
    for (round, bandwidth) in [(1, "2Mi"), (2, "8Mi")] {
        // Each VM once, all at once: the limits queue them.
        let migs: Vec<String> = vms.iter().map(|vm| bed.migrate(vm)).collect();
        for m in &migs {
            let end = bed.wait_end(m, Duration::from_secs(300));
            assert!(end.succeeded(), "round {round}: {end:?}");
        }
        // The change, and at once a VM that has just arrived migrates again.
        bed.edit(&[&format!("bandwidthPerMigration={bandwidth}")]);
        let again = bed.migrate(vms[vms.len() - 1 - round]);
        let end = bed.wait_end(&again, Duration::from_secs(180));
        assert!(
            end.succeeded(),
            "round {round}: after bandwidthPerMigration={bandwidth}: {end:?}\n--- daemon log:\n{}",
            bed.daemon_log_tail(80)
        );
        let p = bed
            .check(&vms, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        bed.ticking_but_tcg_faults(&vms, &p, &mut uids, &mut crashes)
            .and_then(|()| bed.same_vmis_but_tcg_crashes(&mut uids, &mut crashes))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_rare(&crashes, 7 * round);
        bed.edit(&["bandwidthPerMigration=0"]);
    }
}

/// The config changes made before each round, in turn: every key the
/// controller reads, set and unset (its default restored).
const CHANGES: &[&[&str]] = &[
    &["bandwidthPerMigration=32Mi"],
    &["parallelOutboundMigrationsPerNode=1"],
    &["bandwidthPerMigration-", "progressTimeout=120"],
    &["parallelMigrationsPerCluster=2"],
    &["bandwidthPerMigration=64Mi", "completionTimeoutPerGiB=1600"],
    &["parallelOutboundMigrationsPerNode-", "progressTimeout-"],
    &[
        "parallelMigrationsPerCluster-",
        "bandwidthPerMigration=16Mi",
    ],
    &["completionTimeoutPerGiB-", "bandwidthPerMigration=0"],
];

#[test]
fn three_vms_migrate_back_and_forth_twenty_times_with_config_changes() {
    let rounds: usize = std::env::var("MIGNET_BACK_AND_FORTH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let bed = Bed::up("bnf", 2, &[]);
    let vms = ["b1", "b2", "b3"];
    let guest = Guest {
        memory_mib: 128,
        fill_mib: 24,
        dirty_mib_s: 1,
    };
    for vm in vms {
        bed.vm(vm, guest);
    }
    bed.wait_booted(&vms);
    let mut uids = bed.uids(&vms);
    let mut crashes = std::collections::BTreeMap::new();
    let t0 = Instant::now();
    let mut durations = Vec::new();
    for round in 0..rounds {
        bed.edit(CHANGES[round % CHANGES.len()]);
        let migs: Vec<(String, Option<String>, String)> = vms
            .iter()
            .map(|vm| {
                let before = bed.placement(vm).map(|(n, _)| n);
                (vm.to_string(), before, bed.migrate(vm))
            })
            .collect();
        for (vm, before, m) in &migs {
            let end = bed.wait_end(m, Duration::from_secs(300));
            assert!(
                end.succeeded(),
                "round {round} ({:?}): {vm}: {end:?}\n--- daemon log:\n{}",
                CHANGES[round % CHANGES.len()],
                bed.daemon_log_tail(80)
            );
            assert_ne!(&end.target, before, "{vm} moved to the other node");
            durations.extend(end.running_for);
        }
        let p = bed
            .check(&vms, Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("after round {round}: {e}"));
        bed.ticking_but_tcg_faults(&vms, &p, &mut uids, &mut crashes)
            .and_then(|()| bed.same_vmis_but_tcg_crashes(&mut uids, &mut crashes))
            .unwrap_or_else(|e| panic!("after round {round}: {e}"));
        assert_rare(&crashes, vms.len() * (round + 1));
    }
    durations.sort();
    println!(
        "{} migrations in {:.0?}; transfer (Running to final) median {:?}, max {:?}",
        rounds * vms.len(),
        t0.elapsed(),
        durations.get(durations.len() / 2),
        durations.last()
    );
}
