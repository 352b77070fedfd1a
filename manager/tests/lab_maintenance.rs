//! The seed's last two steps in the lab, end to end through the `mignet`
//! binary and the lab daemon (controller + real agents, real QEMU/TCG
//! guests on the seed's migration network; root):
//! - section 10.7.1: a running VirtualMachine without an eviction strategy
//!   is edited to `evictionStrategy: LiveMigrate`; the running VMI keeps
//!   its spec (the change "takes effect after a restart"); `mignet restart
//!   vm` answers virtctl's line and the controller replaces the VMI with one
//!   made from the edited template (new uid, a new guest boots);
//! - maintenance mode: `mignet lab maintenance start NODE` creates the
//!   NodeMaintenance; the node is cordoned and tainted, the VM live-migrates
//!   away (an evacuation VMIM Succeeded, the target address on the migration
//!   network, the guest's ticks go on without a reboot) and the
//!   NodeMaintenance reaches `Succeeded` (drainProgress 100, the VM's
//!   launcher pod the one pod to evict, the operator's finalizer);
//!   `maintenance stop` deletes it, the node is schedulable and untainted
//!   again, and the object goes (finalizer released).

mod lab_common;

use std::time::Duration;

use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::Node;
use lab_common::*;
use mignet::api::{
    EvictionStrategy, MigrationPhase, NodeMaintenance, VirtualMachineInstance,
    VirtualMachineInstanceMigration, VmiPhase,
};
use mignet::backend::protocol::EVACUATION_ANNOTATION;
use mignet::store::Store;

const NS: &str = "mignet-system";
const VM: &str = "vm-fedora";

fn vmi(store: &Store) -> Option<VirtualMachineInstance> {
    store.get::<VirtualMachineInstance>(NS, VM).unwrap()
}

/// (uid, node) of the VMI once it runs.
fn running(store: &Store) -> Option<(String, String)> {
    let v = vmi(store)?;
    let st = v.status?;
    (st.phase == Some(VmiPhase::Running)).then_some((v.metadata.uid?, st.node_name?))
}

fn write_temp(lab: &Lab, name: &str, text: &str) -> String {
    let p = std::env::temp_dir().join(format!("{}-{name}", lab.prefix));
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn cordoned(store: &Store, node: &str) -> bool {
    let n = store.get::<Node>("", node).unwrap().expect("the node");
    n.spec.and_then(|s| s.unschedulable).unwrap_or(false)
}

fn taints(store: &Store, node: &str) -> Vec<String> {
    let n = store.get::<Node>("", node).unwrap().expect("the node");
    n.spec
        .and_then(|s| s.taints)
        .unwrap_or_default()
        .into_iter()
        .map(|t| format!("{}:{}", t.key, t.effect))
        .collect()
}

#[test]
fn seed_restart_after_the_edit_then_maintenance_live_migrates_the_vm() {
    let lab = Lab::new("maint");
    up_with_seed_network(&lab, 2);
    let store = Store::open(lab.dir.join("store")).unwrap();
    let seed = std::fs::read_to_string(examples().join("lab/vm.yaml")).unwrap();
    let line = "      evictionStrategy: LiveMigrate\n";
    assert!(seed.contains(line), "{seed}");
    let plain = write_temp(&lab, "vm-plain.yaml", &seed.replace(line, ""));
    let edited = write_temp(&lab, "vm-edited.yaml", &seed);

    // A running VM without an eviction strategy.
    lab.ok(&["create", "-f", &plain]);
    let (uid0, node0) = wait_for("VMI Running", Duration::from_secs(120), || running(&store));
    assert_eq!(vmi(&store).unwrap().spec.eviction_strategy, None);

    // The edit alone changes nothing that runs.
    assert!(lab.ok(&["apply", "-f", &edited]).ends_with("configured\n"));
    std::thread::sleep(Duration::from_secs(3));
    let v = vmi(&store).unwrap();
    assert_eq!(v.metadata.uid.as_deref(), Some(uid0.as_str()));
    assert_eq!(v.spec.eviction_strategy, None, "applied only by a restart");

    // virtctl restart: a new VMI from the edited template, a new guest.
    assert_eq!(
        lab.ok(&["restart", "vm", VM]),
        format!("VM {VM} was scheduled to restart\n")
    );
    let (uid1, node1) = wait_for(
        "a new VMI Running after the restart",
        Duration::from_secs(120),
        || running(&store).filter(|(uid, _)| *uid != uid0),
    );
    assert_eq!(
        vmi(&store).unwrap().spec.eviction_strategy,
        Some(EvictionStrategy::LiveMigrate)
    );
    wait_for("the new guest ready", Duration::from_secs(120), || {
        serial_output(&lab.dir, &node1, VM)
            .contains("mignet: ready")
            .then_some(())
    });
    let t0 = wait_for("a tick", Duration::from_secs(60), || {
        last_tick(&serial_output(&lab.dir, &node1, VM))
    });
    println!("restart: {uid0} on {node0} -> {uid1} on {node1}");

    // Maintenance: the VM leaves the node by live migration.
    let out = lab.ok(&[
        "lab",
        "maintenance",
        "start",
        &node1,
        "--reason",
        "seed 10.7.1",
    ]);
    let nm = format!("nm-{node1}");
    assert_eq!(
        out,
        format!("nodemaintenance.nodemaintenance.medik8s.io/{nm} created\n")
    );
    let again = lab.run(&["lab", "maintenance", "start", &node1]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );
    let target = wait_for(
        "the VMI Running on the other node",
        Duration::from_secs(240),
        || {
            running(&store)
                .filter(|(uid, node)| *uid == uid1 && *node != node1)
                .map(|(_, n)| n)
        },
    );
    assert!(
        cordoned(&store, &node1),
        "the node in maintenance is cordoned"
    );
    let t = taints(&store, &node1);
    for want in [
        "node.kubernetes.io/unschedulable:NoSchedule",
        "medik8s.io/drain:NoSchedule",
    ] {
        assert!(t.iter().any(|x| x == want), "{want} in {t:?}");
    }
    let vmims: Vec<VirtualMachineInstanceMigration> = store.list(Some(NS)).unwrap();
    let evac: Vec<_> = vmims
        .iter()
        .filter(|m| m.spec.vmi_name == VM)
        .filter(|m| {
            m.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(EVACUATION_ANNOTATION))
                == Some(&node1)
        })
        .collect();
    assert_eq!(evac.len(), 1, "one evacuation migration: {vmims:#?}");
    assert_eq!(
        evac[0].status.as_ref().and_then(|s| s.phase),
        Some(MigrationPhase::Succeeded)
    );
    let ms = vmi(&store)
        .unwrap()
        .status
        .unwrap()
        .migration_state
        .expect("migrationState");
    let addr = ms.target_node_address.expect("targetNodeAddress");
    let net: Ipv4Network = "10.200.5.0/24".parse().unwrap();
    let ip = match addr.parse::<std::net::SocketAddr>() {
        Ok(std::net::SocketAddr::V4(a)) => *a.ip(),
        other => panic!("targetNodeAddress {addr}: {other:?}"),
    };
    assert!(net.contains(ip), "{addr} on the migration network");
    // No reboot: the ticks go on on the target, and it never printed ready.
    let t1 = wait_for("ticks on the target", Duration::from_secs(60), || {
        last_tick(&serial_output(&lab.dir, &target, VM)).filter(|t| *t > t0)
    });
    assert!(!serial_output(&lab.dir, &target, VM).contains("mignet: ready"));
    println!("maintenance: {node1} -> {target} at {addr}, ticks {t0} -> {t1}");
    let phase = wait_for(
        "the NodeMaintenance Succeeded",
        Duration::from_secs(60),
        || {
            let p = lab.ok(&[
                "get",
                "nodemaintenance",
                &nm,
                "-o",
                "jsonpath={.status.phase}/{.status.pendingPods}",
            ]);
            p.starts_with("Succeeded").then_some(p)
        },
    );
    println!("NodeMaintenance {nm}: {phase}");
    assert_eq!(
        lab.ok(&[
            "get",
            "nm",
            &nm,
            "-o",
            "jsonpath={.status.drainProgress}/{.status.evictionPods}/{.metadata.finalizers[0]}"
        ]),
        "100/1/foregroundDeleteNodeMaintenance",
        "the VM's launcher pod was the one to evict"
    );
    let table = lab.ok(&["get", "nm"]);
    assert!(
        table.contains(&node1) && table.contains("Succeeded"),
        "{table}"
    );

    // The end of maintenance: uncordoned, untainted, the object gone.
    assert_eq!(
        lab.ok(&["lab", "maintenance", "stop", &node1]),
        format!("nodemaintenance.nodemaintenance.medik8s.io/{nm} deleted\n")
    );
    wait_for(
        "the node schedulable, the NodeMaintenance gone",
        Duration::from_secs(60),
        || {
            (!cordoned(&store, &node1)
                && taints(&store, &node1).is_empty()
                && store.get::<NodeMaintenance>("", &nm).unwrap().is_none())
            .then_some(())
        },
    );
    assert_eq!(
        running(&store).map(|(_, n)| n),
        Some(target),
        "the VM stays"
    );
    let _ = std::fs::remove_file(&plain);
    let _ = std::fs::remove_file(&edited);
    lab.ok(&["delete", "vm", VM]);
    lab.ok(&["lab", "down"]);
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}
