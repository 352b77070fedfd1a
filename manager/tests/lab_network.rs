//! The lab plays kubelet + Multus: the seed's NAD and HCO put `migration0`
//! into every agent pod through the real CNI binaries; changing the network
//! (`apply` of an HCO naming another NAD) moves the agents one node at a
//! time (judged from the kubelet's recorded history) while a real QEMU guest
//! keeps running untouched, and the next migration goes over the new range;
//! unsetting it removes `migration0`; `down` leaves no allocation behind
//! (root).

mod lab_common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use lab_common::*;
use mignet::api::{VirtualMachineInstance, VmiPhase};
use mignet::lab::history::{self, PodStep};
use mignet::lab::lifecycle;
use mignet::store::Store;
use serde_json::Value;

const NODES: u32 = 3;

/// migration0 IPv4 address of every agent, once all have one in `prefix`.
fn migration_ips(lab: &Lab, prefix: &str) -> Option<Vec<String>> {
    let mut ips = Vec::new();
    for i in 1..=NODES {
        let v4 = ipv4(&lab.ns(&format!("agent-node{i}")), "migration0")?;
        let ip = v4.into_iter().find(|a| a.starts_with(prefix))?;
        ips.push(ip);
    }
    Some(ips)
}

fn no_migration0(lab: &Lab, nodes: u32) -> Option<()> {
    (1..=nodes)
        .all(|i| {
            let ns = lab.ns(&format!("agent-node{i}"));
            // The pod must be back (eth0) and without migration0.
            ipv4(&ns, "eth0").is_some() && addrs(&ns, "migration0").is_none()
        })
        .then_some(())
}

fn allocations(lab: &Lab, pool: &str) -> usize {
    let p = lab.dir.join("ipam").join(pool);
    std::fs::read(&p)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["allocations"].as_object().map(|m| m.len()))
        .unwrap_or(0)
}

const VMI: &str = "vmi-fedora";

fn vmi(store: &Store) -> Option<VirtualMachineInstance> {
    store
        .get::<VirtualMachineInstance>("mignet-system", VMI)
        .unwrap()
}

/// The rollout condition says every agent runs on `network`.
fn rolled_out_on(lab: &Lab, network: &str) -> Option<()> {
    let out = lab.ok(&[
        "get",
        "hco",
        "kubevirt-hyperconverged",
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="MigrationNetworkReady")].status}/{.status.conditions[?(@.type=="MigrationNetworkReady")].message}"#,
    ]);
    (out.starts_with("True/") && out.contains(network)).then_some(())
}

fn rolled_out(lab: &Lab, reason: &str) -> Option<()> {
    let out = lab.ok(&[
        "get",
        "hco",
        "kubevirt-hyperconverged",
        "-o",
        "jsonpath={range .status.conditions[*]}{.type}={.status}/{.reason}{\"\\n\"}{end}",
    ]);
    out.lines()
        .any(|l| l == format!("MigrationNetworkReady=True/{reason}"))
        .then_some(())
}

#[test]
fn seed_network_attaches_moves_and_detaches_the_agents() {
    let lab = Lab::new("net");
    lab.ok(&["lab", "up", "--nodes", &NODES.to_string()]);
    let ex = examples();
    let out = lab.ok(&["create", "-f", ex.join("nad.yaml").to_str().unwrap()]);
    assert_eq!(
        out,
        "networkattachmentdefinition.k8s.cni.cncf.io/my-secondary-network created\n"
    );
    lab.ok(&[
        "apply",
        "-f",
        ex.join("hyperconverged.yaml").to_str().unwrap(),
    ]);

    // Every agent gets migration0 with its own 10.200.5.x/24.
    let ips = wait_for(
        "migration0 in 10.200.5.0/24 on every agent",
        Duration::from_secs(60),
        || migration_ips(&lab, "10.200.5."),
    );
    let distinct: BTreeSet<&String> = ips.iter().collect();
    assert_eq!(distinct.len(), ips.len(), "distinct addresses: {ips:?}");
    assert!(ips.iter().all(|a| a.ends_with("/24")), "{ips:?}");
    wait_for("rollout condition", Duration::from_secs(30), || {
        rolled_out(&lab, "RolledOut")
    });
    // The DaemonSet template carries the annotation the rollout decided.
    let ann = lab.ok(&[
        "get",
        "ds",
        "mignet-agent",
        "-o",
        r"jsonpath={.spec.template.metadata.annotations.k8s\.v1\.cni\.cncf\.io/networks}",
    ]);
    assert_eq!(ann, "my-secondary-network@migration0");
    // Multus-style network-status on each pod names the address it got.
    for (i, ip) in (1..=NODES).zip(&ips) {
        let status = lab.ok(&[
            "get",
            "pod",
            &format!("mignet-agent-node{i}"),
            "-o",
            r"jsonpath={.metadata.annotations.k8s\.v1\.cni\.cncf\.io/network-status}",
        ]);
        let v: Value = serde_json::from_str(&status).unwrap();
        let m0 = v
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["interface"] == "migration0")
            .unwrap_or_else(|| panic!("no migration0 entry in {status}"));
        assert_eq!(m0["name"], "mignet-system/my-secondary-network");
        assert_eq!(m0["ips"][0], ip.split('/').next().unwrap());
    }
    // The macvlan hangs off the node's eth1 (link-netns is the node).
    assert_eq!(allocations(&lab, "10.200.5.0-24.json"), NODES as usize);

    // A VM running on node1 before the change: a real QEMU guest.
    let store = Store::open(lab.dir.join("store")).unwrap();
    lab.ok(&["create", "-f", ex.join("lab/vmi.yaml").to_str().unwrap()]);
    let vm_node = wait_for("vmi-fedora Running", Duration::from_secs(90), || {
        let st = vmi(&store)?.status?;
        (st.phase == Some(VmiPhase::Running)).then_some(st.node_name?)
    });
    assert_eq!(vm_node, "node1");
    wait_for("guest memory filled", Duration::from_secs(120), || {
        serial_output(&lab.dir, &vm_node, VMI)
            .contains("mignet: ready")
            .then_some(())
    });
    let qemu = wait_for("the guest's QEMU", Duration::from_secs(30), || {
        let p = lifecycle::vm_processes(&lab.dir);
        (p.len() == 1).then(|| p[0])
    });
    let tick_before = wait_for("a tick", Duration::from_secs(30), || {
        last_tick(&serial_output(&lab.dir, &vm_node, VMI))
    });

    // A second network: `apply` an HCO naming it; the agents move to
    // 10.200.6.0/24 and free .5.
    // Outside the lab dir: `down` removes only what the lab made.
    let history_before = history::read(&lab.dir).unwrap().len();
    let out = switch_to_second_network(&lab);
    assert_eq!(
        out,
        "hyperconverged.hco.kubevirt.io/kubevirt-hyperconverged configured\n"
    );

    // While the agents roll, sample the VM: same QEMU, VMI Running on
    // node1, ticks never going back.
    let mut samples = 0;
    let mut last = tick_before;
    let deadline = Instant::now() + Duration::from_secs(90);
    let ips6 = loop {
        let v = vmi(&store).expect("vmi-fedora exists");
        let st = v.status.clone().unwrap_or_default();
        assert_eq!(
            (st.phase, st.node_name.as_deref()),
            (Some(VmiPhase::Running), Some("node1")),
            "the VM is left alone during the roll"
        );
        assert!(pid_alive(qemu), "QEMU {qemu} died during the roll");
        assert_eq!(lifecycle::vm_processes(&lab.dir), vec![qemu]);
        let t = last_tick(&serial_output(&lab.dir, &vm_node, VMI)).unwrap();
        assert!(t >= last, "ticks went back: {last} -> {t}");
        last = t;
        samples += 1;
        if let (Some(ips), Some(())) = (
            migration_ips(&lab, "10.200.6."),
            rolled_out_on(&lab, "second-network"),
        ) {
            break ips;
        }
        assert!(
            Instant::now() < deadline,
            "agents did not move to 10.200.6.0/24"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(ips6.iter().collect::<BTreeSet<_>>().len(), NODES as usize);
    for i in 1..=NODES {
        let v4 = ipv4(&lab.ns(&format!("agent-node{i}")), "migration0").unwrap();
        assert!(
            v4.iter().all(|a| !a.starts_with("10.200.5.")),
            "old address gone: {v4:?}"
        );
    }
    wait_for("rollout condition", Duration::from_secs(30), || {
        rolled_out(&lab, "RolledOut")
    });
    // The roll, from the kubelet's own record: one node at a time, in
    // order, each back Ready on the new network before the next went down.
    // No pod needed a retry: a restarted pod whose old veth was still being
    // torn down once failed with "File exists" here.
    let events = history::read(&lab.dir).unwrap().split_off(history_before);
    let retried: Vec<_> = events
        .iter()
        .filter(|e| e.step == PodStep::NotReady)
        .collect();
    assert!(
        retried.is_empty(),
        "pods retried during the roll: {retried:#?}"
    );
    let a = history::availability(&events);
    assert_eq!(a.max_down, 1, "maxUnavailable = 1: {events:#?}");
    assert_eq!(a.stop_order, ["node1", "node2", "node3"], "{events:#?}");
    assert_eq!(a.ready_order, ["node1", "node2", "node3"]);
    assert!(a.down_at_end.is_empty());
    assert!(events
        .iter()
        .filter(|e| e.step == PodStep::Ready)
        .all(|e| e.networks.as_deref() == Some("second-network@migration0")));
    assert_eq!(
        allocations(&lab, "10.200.5.0-24.json"),
        0,
        "old pool released"
    );
    assert_eq!(allocations(&lab, "10.200.6.0-24.json"), NODES as usize);
    // The guest kept running through it, and still does.
    let tick_after_roll = wait_for("ticks after the roll", Duration::from_secs(30), || {
        last_tick(&serial_output(&lab.dir, &vm_node, VMI)).filter(|t| *t > last.max(tick_before))
    });
    assert_eq!(lifecycle::vm_processes(&lab.dir), vec![qemu], "same QEMU");
    println!(
        "roll: {samples} samples, QEMU {qemu} throughout, ticks {tick_before} -> {tick_after_roll}"
    );

    // The next migration uses the new network.
    lab.ok(&["create", "-f", ex.join("vmim.yaml").to_str().unwrap()]);
    let target = wait_for("migration-job Succeeded", Duration::from_secs(300), || {
        let phase = lab.ok(&[
            "get",
            "vmim",
            "migration-job",
            "-o",
            "jsonpath={.status.phase}",
        ]);
        assert_ne!(phase, "Failed", "{:#?}", vmi(&store).and_then(|v| v.status));
        let st = vmi(&store)?.status?;
        (phase == "Succeeded" && st.node_name.as_deref() != Some("node1")).then_some(st.node_name?)
    });
    let addr: SocketAddr = lab
        .ok(&[
            "get",
            "vmi",
            VMI,
            "-o",
            "jsonpath={.status.migrationState.targetNodeAddress}",
        ])
        .parse()
        .unwrap();
    let range: IpNetwork = "10.200.6.0/24".parse().unwrap();
    assert!(range.contains(addr.ip()), "{addr} outside 10.200.6.0/24");
    let target_ip = ipv4(&lab.ns(&format!("agent-{target}")), "migration0").unwrap();
    assert_eq!(
        target_ip[0].split('/').next().unwrap(),
        addr.ip().to_string(),
        "the target's migration0"
    );
    let t_target = wait_for(
        "the guest ticking on the target",
        Duration::from_secs(60),
        || last_tick(&serial_output(&lab.dir, &target, VMI)).filter(|t| *t > tick_after_roll),
    );
    println!("migrated to {target} via {addr}; guest at tick {t_target}");
    assert!(
        !pid_alive(qemu),
        "the source QEMU exited after the migration"
    );

    // Unset: back to the pod network, no migration0 anywhere.
    lab.ok(&["edit-config", "network-"]);
    wait_for("migration0 removed", Duration::from_secs(60), || {
        no_migration0(&lab, NODES)
    });
    wait_for("pod-network condition", Duration::from_secs(30), || {
        rolled_out(&lab, "PodNetwork")
    });
    assert_eq!(allocations(&lab, "10.200.6.0-24.json"), 0);
    let ann = lab.ok(&[
        "get",
        "ds",
        "mignet-agent",
        "-o",
        "jsonpath={.spec.template.metadata.annotations}",
    ]);
    assert!(!ann.contains("k8s.v1.cni.cncf.io/networks"), "{ann}");

    let pid = lab.daemon_pid().unwrap();
    lab.ok(&["lab", "down"]);
    assert!(lab.our_namespaces().is_empty());
    assert_eq!(lab.leftovers(), Vec::<String>::new());
    assert!(!lab.dir.exists(), "IPAM store and state removed");
    assert!(!pid_alive(pid));
}

#[test]
fn a_missing_nad_leaves_agents_on_their_last_network() {
    let lab = Lab::new("miss");
    lab.ok(&["lab", "up", "--nodes", "2"]);
    lab.ok(&["edit-config", "network=does-not-exist"]);
    let reason = wait_for("NAD not found reason", Duration::from_secs(30), || {
        let out = lab.ok(&[
            "get",
            "hco",
            "kubevirt-hyperconverged",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="MigrationNetworkReady")].reason}"#,
        ]);
        (out == "NetworkAttachmentDefinitionNotFound").then_some(out)
    });
    assert_eq!(reason, "NetworkAttachmentDefinitionNotFound");
    // Agents stay up, untouched, on the pod network.
    assert_eq!(
        lab.ok(&[
            "get",
            "ds",
            "mignet-agent",
            "-o",
            "jsonpath={.status.numberReady}"
        ]),
        "2"
    );
    assert!(no_migration0(&lab, 2).is_some());
    // Creating the NAD afterwards completes the rollout.
    lab.ok(&[
        "create",
        "-f",
        examples().join("nad.yaml").to_str().unwrap(),
    ]);
    lab.ok(&["edit-config", "network=my-secondary-network"]);
    let ips = wait_for(
        "migration0 after the NAD appears",
        Duration::from_secs(60),
        || {
            let a = ipv4(&lab.ns("agent-node1"), "migration0")?;
            let b = ipv4(&lab.ns("agent-node2"), "migration0")?;
            (!a.is_empty() && !b.is_empty()).then_some((a, b))
        },
    );
    assert_ne!(ips.0, ips.1);

    // Editing the NAD itself (same name, new range) changes the config hash:
    // the agents restart onto the new range.
    let edited = std::env::temp_dir().join(format!("{}-nad-edited.yaml", lab.prefix));
    let seed = std::fs::read_to_string(examples().join("nad.yaml")).unwrap();
    std::fs::write(&edited, seed.replace("10.200.5.0/24", "10.200.7.0/24")).unwrap();
    let out = lab.ok(&["apply", "-f", edited.to_str().unwrap()]);
    let _ = std::fs::remove_file(&edited);
    assert!(out.ends_with("configured\n"), "{out}");
    wait_for(
        "agents on the edited range",
        Duration::from_secs(60),
        || {
            let a = ipv4(&lab.ns("agent-node1"), "migration0")?;
            let b = ipv4(&lab.ns("agent-node2"), "migration0")?;
            (a.iter().any(|x| x.starts_with("10.200.7."))
                && b.iter().any(|x| x.starts_with("10.200.7.")))
            .then_some(())
        },
    );
}
