//! The lab plays kubelet + Multus: the seed's NAD and HCO put `migration0`
//! into every agent pod through the real CNI binaries; changing the network
//! moves the agents; unsetting it removes `migration0`; `down` leaves no
//! allocation behind (root).

mod lab_common;

use std::collections::BTreeSet;
use std::time::Duration;

use lab_common::*;
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

    // A second network: the agents move to 10.200.6.0/24 and free .5.
    // Outside the lab dir: `down` removes only what the lab made.
    let nad2 = std::env::temp_dir().join(format!("{}-nad2.yaml", lab.prefix));
    std::fs::write(
        &nad2,
        r#"apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: second-network
spec:
  config: '{"cniVersion":"0.3.1","name":"migration-bridge-2","type":"macvlan","master":"eth1","mode":"bridge","ipam":{"type":"whereabouts","range":"10.200.6.0/24"}}'
"#,
    )
    .unwrap();
    lab.ok(&["create", "-f", nad2.to_str().unwrap()]);
    let _ = std::fs::remove_file(&nad2);
    lab.ok(&["edit-config", "network=second-network"]);
    let ips6 = wait_for(
        "migration0 in 10.200.6.0/24",
        Duration::from_secs(60),
        || migration_ips(&lab, "10.200.6."),
    );
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
    assert_eq!(
        allocations(&lab, "10.200.5.0-24.json"),
        0,
        "old pool released"
    );
    assert_eq!(allocations(&lab, "10.200.6.0-24.json"), NODES as usize);

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
