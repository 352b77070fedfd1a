//! NodeMaintenance in the lab, through the `mignet` binary and the
//! background daemon (controller in launcher mode, real agents, a real
//! QEMU/TCG guest; root): `mignet lab maintenance start NODE` cordons the
//! VM's node with the operator's taints, the LiveMigrate VM is
//! live-migrated away by an evacuation migration (its launcher pod on the
//! node is what the maintenance waits for), the NodeMaintenance ends
//! Succeeded, and `mignet lab maintenance stop NODE` makes the node
//! schedulable again and the object goes (finalizer released).

mod lab_common;

use std::time::Duration;

use lab_common::*;
use mignet::api::{
    NodeMaintenance, VirtualMachineInstance, VirtualMachineInstanceMigration, VmiPhase,
};
use mignet::backend::protocol::EVACUATION_ANNOTATION;
use mignet::store::Store;

const NS: &str = "mignet-system";
const VM: &str = "vm-fedora";

/// (node, phase) of the VMI.
fn placement(store: &Store) -> Option<(String, VmiPhase)> {
    let st = store
        .get::<VirtualMachineInstance>(NS, VM)
        .unwrap()?
        .status?;
    Some((st.node_name?, st.phase?))
}

#[test]
fn lab_maintenance_moves_the_vm_away_and_stop_ends_it() {
    let lab = Lab::new("maint");
    lab.ok(&["lab", "up", "--nodes", "2"]);
    let store = Store::open(lab.dir.join("store")).unwrap();
    let lab_vm = examples().join("lab/vm.yaml");
    lab.ok(&["create", "-f", lab_vm.to_str().unwrap()]);
    let (node, _) = wait_for("VMI Running", Duration::from_secs(90), || {
        placement(&store).filter(|(_, p)| *p == VmiPhase::Running)
    });
    wait_for("guest memory filled", Duration::from_secs(90), || {
        serial_output(&lab.dir, &node, VM)
            .contains("mignet: ready")
            .then_some(())
    });
    let uid = store
        .get::<VirtualMachineInstance>(NS, VM)
        .unwrap()
        .unwrap()
        .metadata
        .uid;

    let nm = format!("nm-{node}");
    let out = lab.ok(&[
        "lab",
        "maintenance",
        "start",
        &node,
        "--reason",
        "kernel update",
    ]);
    assert_eq!(
        out,
        format!("nodemaintenance.nodemaintenance.medik8s.io/{nm} created\n")
    );
    let again = lab.run(&["lab", "maintenance", "start", &node]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );

    let target = wait_for("VMI on the other node", Duration::from_secs(180), || {
        placement(&store)
            .filter(|(n, p)| *n != node && *p == VmiPhase::Running)
            .map(|(n, _)| n)
    });
    let v = store
        .get::<VirtualMachineInstance>(NS, VM)
        .unwrap()
        .unwrap();
    assert_eq!(v.metadata.uid, uid, "the same VMI: migrated, not restarted");
    let evac: Vec<VirtualMachineInstanceMigration> = store
        .list::<VirtualMachineInstanceMigration>(Some(NS))
        .unwrap()
        .into_iter()
        .filter(|m| {
            m.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(EVACUATION_ANNOTATION))
                == Some(&node)
        })
        .collect();
    assert_eq!(evac.len(), 1, "one evacuation migration: {evac:?}");

    wait_for("NodeMaintenance Succeeded", Duration::from_secs(60), || {
        (lab.ok(&["get", "nm", &nm, "-o", "jsonpath={.status.phase}"]) == "Succeeded").then_some(())
    });
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
        table.contains(&node) && table.contains("Succeeded"),
        "{table}"
    );
    assert_eq!(
        lab.ok(&[
            "get",
            "nodes",
            &node,
            "-o",
            "jsonpath={.spec.unschedulable} {.spec.taints[*].key}"
        ]),
        "true node.kubernetes.io/unschedulable medik8s.io/drain"
    );
    println!(
        "vm-fedora: {node} -> {target} by {}",
        evac[0].metadata.name.as_deref().unwrap_or("")
    );

    let out = lab.ok(&["lab", "maintenance", "stop", &node]);
    assert!(out.contains(&format!("{nm} deleted")), "{out}");
    wait_for("NodeMaintenance gone", Duration::from_secs(30), || {
        store
            .get::<NodeMaintenance>("", &nm)
            .unwrap()
            .is_none()
            .then_some(())
    });
    assert_eq!(
        lab.ok(&[
            "get",
            "nodes",
            &node,
            "-o",
            "jsonpath={.spec.unschedulable}{.spec.taints[*].key}"
        ]),
        ""
    );
    lab.ok(&["delete", "vm", VM]);
    lab.ok(&["lab", "down"]);
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}
