//! The whole lab demo (`mignet lab demo`), in-process: network rollout,
//! a real QEMU guest, a migration over `migration0` with mTLS, the target
//! address, the interface counters, a drain, and a cancelled migration.
//! Each step is asserted from the [`DemoReport`] the demo built from the
//! lab's store and the kernel's counters, plus what is left on the machine.
//!
//! Run as root: `cargo build -p mignet-cni && cargo test -p mignet --test lab_demo`.

mod lab_common;

use std::net::SocketAddr;

use ipnetwork::IpNetwork;
use lab_common::Lab;
use mignet::api::{MigrationAbortStatus, VmiPhase};
use mignet::demo::{self, DemoOptions, MIGRATION_RANGE};

#[test]
fn the_demo_tells_the_whole_story_and_leaves_nothing_behind() {
    // The guard takes the lab down (and any VM with it) even on panic.
    let lab = Lab::new("demo");
    // The demo reads its identity from the environment, as the CLI does;
    // this is the only test in this binary, so no other thread reads it.
    std::env::set_var("MIGNET_LAB_DIR", &lab.dir);
    std::env::set_var("MIGNET_LAB_PREFIX", &lab.prefix);
    // The demo runs its manager and agents in this process: every socket
    // they opened (listeners, relays, QMP, netlink) must be closed again.
    // Except the socketpair tokio keeps for the life of the process once a
    // signal is watched (its orphan-child reaper watches SIGCHLD): make it
    // exist first.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()).map(drop)
        })
        .unwrap();
    let sockets_before = socket_fds();
    let opts = DemoOptions {
        nodes: 3,
        keep: false,
        examples: demo::examples_dir(),
    };
    let r = demo::run(&opts).unwrap_or_else(|e| panic!("demo failed: {e}"));
    let range: IpNetwork = MIGRATION_RANGE.parse().unwrap();

    // The agents came back with distinct migration0 addresses in the range.
    assert_eq!(r.migration_addresses.len(), 3, "{r:?}");
    for ip in r.migration_addresses.values() {
        assert!(range.contains(*ip), "{ip}");
    }
    let mut ips: Vec<_> = r.migration_addresses.values().collect();
    ips.dedup();
    assert_eq!(ips.len(), 3);

    // The VM started on node1 (the scheduler stand-in) and ticked.
    assert_eq!(r.vm_node, "node1");
    assert!(r.first_tick_seen);

    // migration-job moved it; the target address is the target's migration0.
    assert_ne!(r.migrated_to, r.vm_node);
    let addr: SocketAddr = r.target_node_address.parse().unwrap();
    assert!(range.contains(addr.ip()), "{addr}");
    assert_eq!(r.migration_addresses[&r.migrated_to], addr.ip());
    assert_eq!(r.jsonpath_output.trim(), r.target_node_address);

    // The bytes went over migration0 on both ends, not eth0.
    assert!(r.transferred_bytes > 128 << 20, "{}", r.transferred_bytes);
    for node in [&r.vm_node, &r.migrated_to] {
        let t = r.traffic.iter().find(|t| &t.node == node).unwrap();
        assert!(t.migration0 >= r.transferred_bytes, "{t:?}");
        assert!(t.eth0 * 20 < t.migration0, "{t:?}");
    }

    // The drain moved it off the drained node via an evacuation VMIM.
    assert_eq!(r.drained_node, r.migrated_to);
    assert!(r.evacuation_migration.contains("evacuation"), "{r:?}");
    assert_ne!(r.after_drain_node, r.drained_node);

    // The cancelled migration: aborted, the VM stays where it was, running.
    assert_eq!(r.abort_status, Some(MigrationAbortStatus::Succeeded));
    assert_eq!(r.cancel_node_after, r.cancel_node_before);
    assert_eq!(r.cancel_phase_after, Some(VmiPhase::Running));
    assert!(r.ticks_after_cancel);

    // down left nothing: no namespace, VM process, record or store.
    assert!(r.leftovers.is_empty(), "{:?}", r.leftovers);
    assert!(lab.our_namespaces().is_empty());
    assert!(mignet::lab::lifecycle::vm_processes(&lab.dir).is_empty());
    assert!(!lab.dir.join("lab.json").exists());
    assert!(!lab.dir.join("agents").exists());
    assert!(!lab.dir.join("pki").exists());
    let leaked: Vec<_> = socket_fds()
        .into_iter()
        .filter(|(inode, _)| !sockets_before.iter().any(|(b, _)| b == inode))
        .collect();
    assert!(
        leaked.is_empty(),
        "sockets left open by the demo: {leaked:#?}"
    );
}

/// This process's open sockets (`socket:[inode]` links under /proc/self/fd):
/// the inode, and its line from the kernel's socket tables when it has one,
/// so a failure says what kind of socket leaked.
fn socket_fds() -> Vec<(String, String)> {
    let tables: String = ["unix", "netlink", "tcp", "tcp6", "udp", "udp6", "packet"]
        .iter()
        .filter_map(|t| {
            std::fs::read_to_string(format!("/proc/self/net/{t}"))
                .ok()
                .map(|c| format!("{t}: {c}"))
        })
        .collect();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| t.display().to_string())
        .filter_map(|t| {
            let inode = t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned();
            let line = tables
                .lines()
                .find(|l| l.split_whitespace().any(|w| w == inode))
                .unwrap_or("(not in this namespace's tables)");
            Some((inode, line.trim().to_owned()))
        })
        .collect()
}
