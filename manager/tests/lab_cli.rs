//! The CLI verbs through the `mignet` binary against a lab's store: the
//! seed's files, jsonpath and describe on a VMI whose status the lab wrote,
//! delete with a finalizer, drain/uncordon (root: `lab up` makes namespaces).

mod lab_common;

use lab_common::*;
use mignet::store::Store;
use serde_json::json;

fn seed_vmi(lab: &Lab) {
    let store = Store::open(lab.dir.join("store")).unwrap();
    let vmi = json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "vmi-fedora", "namespace": "mignet-system"},
        "spec": {"domain": {"memory": {"guest": "256Mi"}}, "evictionStrategy": "LiveMigrate"}
    });
    let mut v = store.create_value(vmi).unwrap();
    v["status"] = json!({
        "phase": "Running",
        "nodeName": "node1",
        "conditions": [{"type": "LiveMigratable", "status": "True"}],
        "migrationMethod": "LiveMigration",
        "migrationState": {
            "completed": true,
            "endTimestamp": "2026-01-01T00:00:09Z",
            "migrationUid": "d78c8962-0743-11e9-a540-fa163e0c69f1",
            "sourceNode": "node2",
            "startTimestamp": "2026-01-01T00:00:01Z",
            "targetNode": "node1",
            "targetNodeAddress": "10.200.5.1:43891",
            "targetNodeDomainDetected": true
        }
    });
    store.update_status_value(v).unwrap();
}

#[test]
fn seed_commands_against_the_lab_store() {
    let lab = Lab::new("cli");
    lab.ok(&["lab", "up", "--nodes", "2", "--no-daemon"]);
    let ex = examples();
    let files: Vec<String> = ["nad.yaml", "hyperconverged.yaml", "vm.yaml", "vmim.yaml"]
        .iter()
        .map(|f| ex.join(f).display().to_string())
        .collect();
    let mut args = vec!["create"];
    for f in &files {
        args.extend(["-f", f.as_str()]);
    }
    let out = lab.ok(&args);
    assert_eq!(out.lines().count(), 4, "{out}");
    assert!(out.contains("virtualmachineinstancemigration.kubevirt.io/migration-job created"));

    seed_vmi(&lab);
    // The seed's verification command, verbatim apart from the binary.
    let addr = lab.ok(&[
        "get",
        "vmi",
        "vmi-fedora",
        "-o",
        "jsonpath={.status.migrationState.targetNodeAddress}",
    ]);
    assert_eq!(addr, "10.200.5.1:43891");
    assert_eq!(
        lab.ok(&[
            "get",
            "vmi",
            "vmi-fedora",
            "-o",
            "jsonpath={.status.nothing}"
        ]),
        ""
    );
    let d = lab.ok(&["describe", "vmi", "vmi-fedora"]);
    let block = "Conditions: LiveMigratable=True
Migration Method: LiveMigration
Migration State:
  Completed: true
  End Timestamp: 2026-01-01T00:00:09Z
  Migration UID: d78c8962-0743-11e9-a540-fa163e0c69f1
  Source Node: node2
  Start Timestamp: 2026-01-01T00:00:01Z
  Target Node: node1
  Target Node Address: 10.200.5.1:43891
  Target Node Domain Detected: true
";
    assert!(d.contains(block), "{d}");
    let table = lab.ok(&["get", "vmi"]);
    let mut lines = table.lines();
    assert_eq!(
        lines.next().unwrap().split_whitespace().collect::<Vec<_>>(),
        ["NAME", "AGE", "PHASE", "IP", "NODENAME", "READY"]
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!((row[0], row[2], row[3]), ("vmi-fedora", "Running", "node1"));

    // The VMIM table, then cancel by deleting it.
    let t = lab.ok(&["get", "vmim"]);
    assert!(
        t.starts_with("NAME") && t.contains("migration-job") && t.contains("vmi-fedora"),
        "{t}"
    );
    let out = lab.ok(&["delete", "vmim", "migration-job"]);
    assert_eq!(
        out,
        "virtualmachineinstancemigration.kubevirt.io \"migration-job\" deleted\n"
    );
    let gone = lab.run(&["get", "vmim", "migration-job"]);
    assert!(!gone.status.success());
    assert!(String::from_utf8_lossy(&gone.stderr).contains("not found"));
    assert_eq!(
        lab.ok(&["get", "vmim"]),
        "No resources found in mignet-system namespace.\n"
    );

    // Drain: cordon, and the LiveMigrate VMI is asked to leave.
    let out = lab.ok(&["lab", "drain", "node1"]);
    assert!(
        out.contains("node/node1 cordoned") && out.contains("evicting vmi/vmi-fedora"),
        "{out}"
    );
    assert_eq!(
        lab.ok(&[
            "get",
            "vmi",
            "vmi-fedora",
            "-o",
            "jsonpath={.status.evacuationNodeName}"
        ]),
        "node1"
    );
    assert_eq!(
        lab.ok(&[
            "get",
            "nodes",
            "node1",
            "-o",
            "jsonpath={.spec.unschedulable}"
        ]),
        "true"
    );
    assert!(lab
        .ok(&["get", "nodes"])
        .contains("Ready,SchedulingDisabled"));
    lab.ok(&["lab", "uncordon", "node1"]);
    assert_eq!(
        lab.ok(&[
            "get",
            "nodes",
            "node1",
            "-o",
            "jsonpath={.spec.unschedulable}"
        ]),
        ""
    );

    // Errors read like kubectl's.
    let bad = lab.run(&["get", "deployments"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("doesn't have a resource type"));
    lab.ok(&["lab", "down"]);
    assert!(lab.our_namespaces().is_empty());
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}
