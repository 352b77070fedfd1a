//! VirtualMachine -> VirtualMachineInstance in the lab, through the
//! `mignet` binary and the background daemon (controller + real agents,
//! real QEMU/TCG guests; root):
//! - `create -f examples/lab/vm.yaml` gives an owned VMI Running on a node
//!   with a ticking guest, and `get vm` shows Running / ready;
//! - a VMIM on that VMI migrates it (VM Migrating meanwhile, then Running on
//!   the other node, the guest's ticks continue there);
//! - runStrategy Halted stops it (VMI and QEMU gone, Stopped), Always starts
//!   it again;
//! - deleting the VM deletes its VMI and stops the guest (QEMU gone);
//! - the seed's examples/vm.yaml (a ReadWriteMany claim) is refused with a
//!   clear status: its launcher pod is unschedulable (the lab has no
//!   storage), the VM shows ErrorUnschedulable, no QEMU started.
//!
//! Every QEMU is the child of a `mignet launcher` the lab kubelet runs for
//! the VMI's launcher pod (made by the controller, bound by the lab
//! scheduler), as in a cluster.

mod lab_common;

use std::time::Duration;

use lab_common::*;
use mignet::api::{VirtualMachine, VirtualMachineInstance, VmiPhase};
use mignet::lab::lifecycle;
use mignet::store::Store;

const NS: &str = "mignet-system";
const VM: &str = "vm-fedora";

fn vmi(store: &Store) -> Option<VirtualMachineInstance> {
    store.get::<VirtualMachineInstance>(NS, VM).unwrap()
}

fn vm(store: &Store) -> Option<VirtualMachine> {
    store.get::<VirtualMachine>(NS, VM).unwrap()
}

fn printable(store: &Store) -> Option<String> {
    vm(store)?.status?.printable_status
}

/// (node, phase) of the VMI.
fn placement(store: &Store) -> Option<(String, VmiPhase)> {
    let st = vmi(store)?.status?;
    Some((st.node_name?, st.phase?))
}

/// The one QEMU of the lab, once there is exactly one.
fn single_qemu(lab: &Lab) -> Option<i32> {
    let pids = lifecycle::vm_processes(&lab.dir);
    (pids.len() == 1).then(|| pids[0])
}

/// `qemu` is the child of a `mignet launcher` of the lab, which runs the
/// VMI's launcher pod: bound to `node`, Running.
fn assert_launched(lab: &Lab, store: &Store, qemu: i32, node: &str) {
    let launcher = parent_pid(qemu).expect("QEMU's parent");
    assert!(
        lifecycle::launcher_processes(&lab.dir).contains(&launcher),
        "QEMU {qemu}'s parent {launcher} is a lab launcher"
    );
    let pods = wait_for("the launcher pod Running", Duration::from_secs(30), || {
        let pods = launcher_pods(store);
        pods.iter()
            .any(|(_, n, phase)| n.as_deref() == Some(node) && phase == "Running")
            .then_some(pods)
    });
    let v = vmi(store).unwrap();
    let uid = v.metadata.uid.unwrap();
    assert!(pods
        .iter()
        .all(|(p, _, _)| p.metadata.labels.as_ref().unwrap()["kubevirt.io/created-by"] == uid));
}

/// Wait until the VM's guest on `node` prints a tick after `after`.
fn ticks_past(lab: &Lab, node: &str, after: Option<u64>) -> u64 {
    wait_for(
        &format!("guest ticks on {node} past {after:?}"),
        Duration::from_secs(60),
        || {
            let t = last_tick(&serial_output(&lab.dir, node, VM))?;
            (Some(t) > after).then_some(t)
        },
    )
}

fn write_temp(lab: &Lab, name: &str, text: &str) -> String {
    let p = std::env::temp_dir().join(format!("{}-{name}", lab.prefix));
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn a_virtual_machine_runs_migrates_halts_and_goes_with_its_vmi() {
    let lab = Lab::new("vm");
    lab.ok(&["lab", "up", "--nodes", "2"]);
    let store = Store::open(lab.dir.join("store")).unwrap();
    let lab_vm = examples().join("lab/vm.yaml");
    let out = lab.ok(&["create", "-f", lab_vm.to_str().unwrap()]);
    assert_eq!(out, "virtualmachine.kubevirt.io/vm-fedora created\n");

    // The controller creates the VMI, the scheduler places it, the agent
    // boots it.
    let (node, _) = wait_for("VMI Running", Duration::from_secs(90), || {
        placement(&store).filter(|(_, p)| *p == VmiPhase::Running)
    });
    let v = vmi(&store).unwrap();
    let owner = &v.metadata.owner_references.as_ref().unwrap()[0];
    let the_vm = vm(&store).unwrap();
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str(), owner.controller),
        ("VirtualMachine", VM, Some(true))
    );
    assert_eq!(Some(&owner.uid), the_vm.metadata.uid.as_ref());
    assert_eq!(v.spec, the_vm.spec.template.spec, "the template's spec");
    assert_eq!(v.metadata.labels.as_ref().unwrap()["kubevirt.io/vm"], VM);
    assert!(
        v.metadata.annotations.as_ref().unwrap()["mignet.io/guest-kernel-args"]
            .contains("mignet.fill_mib=64")
    );
    let pid = wait_for("one QEMU", Duration::from_secs(30), || single_qemu(&lab));
    assert_launched(&lab, &store, pid, &node);
    // The guest filled its memory (so the migration moves real pages).
    wait_for("guest memory filled", Duration::from_secs(90), || {
        serial_output(&lab.dir, &node, VM)
            .contains("mignet: ready")
            .then_some(())
    });
    let t0 = ticks_past(&lab, &node, None);

    // `kubectl get vm`: STATUS Running, READY True.
    wait_for("VM Running", Duration::from_secs(30), || {
        (printable(&store).as_deref() == Some("Running")).then_some(())
    });
    let table = lab.ok(&["get", "vm"]);
    let mut lines = table.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["NAME", "AGE", "STATUS", "READY"]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!((row[0], row[2], row[3]), (VM, "Running", "True"), "{table}");
    assert_eq!(
        lab.ok(&[
            "get",
            "vm",
            VM,
            "-o",
            "jsonpath={.status.created}/{.status.ready}/{.status.printableStatus}"
        ]),
        "true/true/Running"
    );

    // A migration of the VM's VMI.
    let vmim = write_temp(
        &lab,
        "vmim.yaml",
        "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstanceMigration\nmetadata:\n  name: migrate-vm\nspec:\n  vmiName: vm-fedora\n",
    );
    lab.ok(&["create", "-f", &vmim]);
    let _ = std::fs::remove_file(&vmim);
    // Poll the store directly (fast) for the VM's status while it moves.
    let mut seen_migrating = false;
    let target = wait_for("VMI on the other node", Duration::from_secs(180), || {
        seen_migrating |= printable(&store).as_deref() == Some("Migrating");
        let phase = lab.ok(&[
            "get",
            "vmim",
            "migrate-vm",
            "-o",
            "jsonpath={.status.phase}",
        ]);
        assert_ne!(phase, "Failed", "{:#?}", vmi(&store).and_then(|v| v.status));
        (phase == "Succeeded")
            .then(|| placement(&store))
            .flatten()
            .filter(|(n, p)| *n != node && *p == VmiPhase::Running)
            .map(|(n, _)| n)
    });
    assert!(seen_migrating, "printableStatus Migrating while it moved");
    let t1 = ticks_past(&lab, &target, Some(t0));
    println!("guest: tick {t0} on {node}, tick {t1} on {target} after the migration");
    wait_for(
        "VM Running after the migration",
        Duration::from_secs(30),
        || (printable(&store).as_deref() == Some("Running")).then_some(()),
    );
    let new_pid = wait_for(
        "one QEMU after the migration",
        Duration::from_secs(30),
        || single_qemu(&lab),
    );
    assert_ne!(new_pid, pid, "the target's QEMU runs the guest now");
    assert!(!pid_alive(pid), "the source QEMU exited");
    assert_launched(&lab, &store, new_pid, &target);
    wait_for(
        "only the target's launcher pod",
        Duration::from_secs(30),
        || {
            (launcher_pods(&store).len() == 1 && lifecycle::launcher_processes(&lab.dir).len() == 1)
                .then_some(())
        },
    );

    // Halted: the controller deletes the VMI; the agent stops the guest.
    let text = std::fs::read_to_string(&lab_vm).unwrap();
    let halted = write_temp(
        &lab,
        "halted.yaml",
        &text.replace("runStrategy: Always", "runStrategy: Halted"),
    );
    assert!(lab.ok(&["apply", "-f", &halted]).ends_with("configured\n"));
    let _ = std::fs::remove_file(&halted);
    wait_for(
        "VM Stopped, VMI and QEMU gone",
        Duration::from_secs(60),
        || {
            (vmi(&store).is_none()
                && lifecycle::vm_processes(&lab.dir).is_empty()
                && printable(&store).as_deref() == Some("Stopped"))
            .then_some(())
        },
    );
    assert!(!pid_alive(new_pid));
    assert_eq!(
        lab.ok(&[
            "get",
            "vm",
            VM,
            "-o",
            "jsonpath={.status.created}/{.status.ready}"
        ]),
        "/"
    );
    // Always again: a new VMI, a new guest.
    assert!(lab
        .ok(&["apply", "-f", lab_vm.to_str().unwrap()])
        .ends_with("configured\n"));
    wait_for("VM Running again", Duration::from_secs(90), || {
        (placement(&store).is_some_and(|(_, p)| p == VmiPhase::Running)
            && printable(&store).as_deref() == Some("Running"))
        .then_some(())
    });
    let pid3 = wait_for("one QEMU again", Duration::from_secs(30), || {
        single_qemu(&lab)
    });

    // Deleting the VM deletes its VMI (the lab store has no garbage
    // collector: the controller does it) and the agent stops the guest.
    assert_eq!(
        lab.ok(&["delete", "vm", VM]),
        "virtualmachine.kubevirt.io \"vm-fedora\" deleted\n"
    );
    wait_for(
        "VMI, QEMU, launcher and its pod gone",
        Duration::from_secs(60),
        || {
            (vmi(&store).is_none()
                && lifecycle::vm_processes(&lab.dir).is_empty()
                && lifecycle::launcher_processes(&lab.dir).is_empty()
                && launcher_pods(&store).is_empty())
            .then_some(())
        },
    );
    assert!(!pid_alive(pid3));

    // The seed's VM names a claim: the lab says it cannot run it.
    let seed = examples().join("vm.yaml");
    lab.ok(&["create", "-f", seed.to_str().unwrap()]);
    wait_for("ErrorUnschedulable", Duration::from_secs(30), || {
        (printable(&store).as_deref() == Some("ErrorUnschedulable")).then_some(())
    });
    let msg = lab.ok(&[
        "get",
        "vm",
        VM,
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="Ready")].message}"#,
    ]);
    assert!(
        msg.contains("fedora-rwx") && msg.contains("the lab has no storage"),
        "{msg}"
    );
    assert!(lab.ok(&["get", "vm"]).contains("ErrorUnschedulable"));
    let v = vmi(&store).expect("the VMI exists, not placed");
    let st = v.status.unwrap();
    assert_eq!((st.phase, st.node_name), (Some(VmiPhase::Scheduling), None));
    // kube-scheduler's condition on the pod, copied to the VMI.
    let pods = launcher_pods(&store);
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].1, None, "the pod is not bound");
    let c = st
        .conditions
        .iter()
        .find(|c| c.type_ == "PodScheduled")
        .expect("PodScheduled on the VMI");
    assert_eq!(
        (c.status.as_str(), c.reason.as_deref()),
        ("False", Some("Unschedulable"))
    );
    assert!(
        c.message
            .as_deref()
            .unwrap_or_default()
            .contains("the lab has no storage"),
        "{c:?}"
    );
    assert!(
        lifecycle::vm_processes(&lab.dir).is_empty(),
        "no guest started"
    );
    lab.ok(&["delete", "vm", VM]);
    wait_for(
        "the seed VM's VMI and pod gone",
        Duration::from_secs(30),
        || (vmi(&store).is_none() && launcher_pods(&store).is_empty()).then_some(()),
    );

    lab.ok(&["lab", "down"]);
    assert!(lab.our_namespaces().is_empty());
}
