//! Soak (issue 15, item 3; root, real QEMU/TCG guests in the lab): four
//! VMs on three nodes, migrations in a random order (one to three at a
//! time, the scheduler picking each target), a random share of them
//! cancelled by deleting the VMIM at a random moment, and one network
//! change half way. After every step the invariants of
//! `reliability::Bed::check` must hold: each VM Running on exactly one node
//! with one QEMU and its guest ticking, nothing left behind, every VMIM
//! final (a cancelled one gone with its finalizer). Every migration that
//! was not cancelled must succeed.
//!
//! Knobs: `MIGNET_SOAK_MIGRATIONS` (default 200, the soak; 60 took
//! 69 s here, so the default fits CI; raise it for longer runs),
//! `MIGNET_SOAK_SEED` (default: from the clock, printed, so a failing order
//! can be replayed).

mod lab_common;
mod reliability;

use std::time::{Duration, Instant};

use lab_common::*;
use mignet::api::MigrationPhase;
use reliability::{Bed, Guest, Rng};

const VMS: [&str; 4] = ["k1", "k2", "k3", "k4"];

#[test]
fn four_vms_hundreds_of_random_migrations_and_cancels() {
    let total: usize = std::env::var("MIGNET_SOAK_MIGRATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("MIGNET_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("soak: {total} migrations, MIGNET_SOAK_SEED={seed}");
    let mut rng = Rng::new(seed);
    let t0 = Instant::now();
    let bed = Bed::up("sok", 3, &["bandwidthPerMigration=0"]);
    let guest = Guest {
        memory_mib: 128,
        fill_mib: 16,
        dirty_mib_s: 1,
    };
    for vm in VMS {
        bed.vm(vm, guest);
    }
    bed.wait_booted(&VMS);
    let mut uids = bed.uids(&VMS);
    let mut tcg_crashes = std::collections::BTreeMap::new();
    let (mut started, mut cancelled, mut succeeded) = (0, 0, 0);
    let mut switched = false;
    let mut step = 0;
    while started < total {
        step += 1;
        if !switched && started >= total / 2 {
            switch_to_second_network(&bed.lab);
            bed.wait_network();
            switched = true;
            println!("step {step}: network switched to second-network");
        }
        // One to three distinct VMs at once.
        let n = 1 + rng.below(3) as usize;
        let mut pick: Vec<&str> = Vec::new();
        while pick.len() < n.min(total - started) {
            let vm = VMS[rng.below(VMS.len() as u64) as usize];
            if !pick.contains(&vm) {
                pick.push(vm);
            }
        }
        let migs: Vec<(String, Option<Duration>)> = pick
            .iter()
            .map(|vm| {
                // One in five is cancelled, at a random moment of its first
                // three seconds.
                let cancel = (rng.below(5) == 0).then(|| Duration::from_millis(rng.below(3000)));
                (bed.migrate(vm), cancel)
            })
            .collect();
        started += migs.len();
        let begun = Instant::now();
        let mut cancels: Vec<&(String, Option<Duration>)> =
            migs.iter().filter(|(_, c)| c.is_some()).collect();
        cancels.sort_by_key(|(_, c)| *c);
        for (m, at) in cancels {
            std::thread::sleep(at.unwrap().saturating_sub(begun.elapsed()));
            bed.cancel(m);
        }
        for (m, cancel) in &migs {
            if cancel.is_some() {
                cancelled += 1;
                // The finalizer goes once the abort (or the end) is recorded.
                let gone = wait_for_opt(Duration::from_secs(120), || {
                    bed.vmim(m).is_none().then_some(())
                });
                assert!(
                    gone.is_some(),
                    "step {step}: cancelled {m} still there: {:#?}\n--- daemon log:\n{}",
                    bed.vmim(m).and_then(|v| v.status),
                    bed.daemon_log_tail(80)
                );
            } else {
                let end = bed.wait_end(m, Duration::from_secs(300));
                assert!(
                    end.succeeded(),
                    "step {step} (seed {seed}): {end:?}\n--- daemon log:\n{}",
                    bed.daemon_log_tail(80)
                );
                succeeded += 1;
            }
        }
        let p = bed
            .check(&VMS, Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("after step {step} (seed {seed}): {e}"));
        bed.same_vmis_but_tcg_crashes(&mut uids, &mut tcg_crashes)
            .unwrap_or_else(|e| panic!("after step {step} (seed {seed}): {e}"));
        if step % 10 == 0 {
            bed.ticking_but_tcg_faults(&VMS, &p, &mut uids, &mut tcg_crashes)
                .unwrap_or_else(|e| panic!("after step {step} (seed {seed}): {e}"));
        }
        // Cancelled VMIMs are gone; drop the finished ones too, as a
        // user's clean-up would, so the list stays short.
        for m in bed
            .store
            .list::<mignet::api::VirtualMachineInstanceMigration>(Some(reliability::NS))
            .unwrap()
        {
            let phase = m.status.as_ref().and_then(|s| s.phase);
            if phase == Some(MigrationPhase::Succeeded) {
                bed.cancel(m.metadata.name.as_deref().unwrap());
            } else {
                panic!("step {step}: VMIM {:?} left {phase:?}", m.metadata.name);
            }
        }
    }
    assert!(switched, "the network changed half way");
    let p = bed.check(&VMS, Duration::from_secs(60)).unwrap();
    bed.ticking_but_tcg_faults(&VMS, &p, &mut uids, &mut tcg_crashes)
        .unwrap();
    // The known TCG fault (reliability::Bed::same_vmis_but_tcg_crashes,
    // ticking_but_tcg_faults) is rare with kvm64: once in about 210
    // migrations here. More than 2 % of them is not that fault's rate.
    let crashes: usize = tcg_crashes.values().sum();
    println!("soak: guests lost to QEMU 7.2's TCG precopy fault and restarted: {crashes} {tcg_crashes:?}");
    assert!(
        crashes * 50 <= started.max(50),
        "{crashes} guests crashed after arriving in {started} migrations: more than QEMU's TCG fault explains"
    );
    println!(
        "soak: {started} migrations in {step} steps ({succeeded} succeeded, {cancelled} \
         cancelled) in {:.0?}, seed {seed}",
        t0.elapsed()
    );
}

fn wait_for_opt<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
