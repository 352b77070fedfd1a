//! The network change is checked first and never breaks a migration (issue
//! 18, item 1; root, real namespaces, the real probe, the lab kubelet):
//! - a node whose eth1 is down: the pre-flight refuses the network, naming
//!   the pairs with that node as Unreachable; the agents keep their
//!   network; no probe pod, namespace or address is left; once eth1 is up
//!   the retried round passes and the agents move;
//! - a segment whose MTU is smaller than the NAD's: refused as MTU;
//! - with real QEMU guests: a migration in flight when the network changes
//!   ends on the old network, one created during the change waits (Pending,
//!   not failed) and then runs on the new network.

mod lab_common;
mod reliability;

use std::process::Command;
use std::time::Duration;

use lab_common::*;
use mignet::api::MigrationPhase;
use reliability::{Bed, Guest};

const NS: &str = "mignet-system";

/// The MigrationNetworkReady condition as `reason|message`.
fn network_condition(lab: &Lab) -> String {
    lab.ok(&[
        "get",
        "hco",
        "kubevirt-hyperconverged",
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="MigrationNetworkReady")].reason}|{.status.conditions[?(@.type=="MigrationNetworkReady")].message}"#,
    ])
}

fn wait_reason(lab: &Lab, reason: &str, timeout: Duration) -> String {
    wait_for(&format!("MigrationNetworkReady {reason}"), timeout, || {
        let c = network_condition(lab);
        c.starts_with(&format!("{reason}|")).then_some(c)
    })
}

fn ds_networks(lab: &Lab) -> String {
    lab.ok(&[
        "get",
        "ds",
        "mignet-agent",
        "-o",
        r"jsonpath={.spec.template.metadata.annotations.k8s\.v1\.cni\.cncf\.io/networks}",
    ])
}

/// Nothing of a round is left: no probe pod, no probe namespace, no
/// address in the seed's pool.
fn no_probe_left(lab: &Lab) -> Option<()> {
    let pods = lab.ok(&[
        "get",
        "pods",
        "-n",
        NS,
        "-o",
        r"jsonpath={range .items[*]}{.metadata.labels.mignet\.io/preflight}{end}",
    ]);
    let netns = lab
        .our_namespaces()
        .into_iter()
        .filter(|n| n.contains("probe"))
        .count();
    let pool = lab.dir.join("ipam").join("10.200.5.0-24.json");
    let addresses = std::fs::read_to_string(&pool)
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|v| v["allocations"].as_object().map(|a| a.len()))
        .unwrap_or(0);
    (pods.trim().is_empty() && netns == 0 && addresses == 0).then_some(())
}

fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().unwrap();
    assert!(st.success(), "ip {args:?}");
}

#[test]
fn a_node_whose_eth1_is_down_refuses_the_network_and_passes_once_it_is_up() {
    let lab = Lab::new("pfdown");
    lab.ok(&["lab", "up", "--nodes", "3"]);
    let node3 = lab.ns("node3");
    ip(&["-n", &node3, "link", "set", "eth1", "down"]);
    let ex = examples();
    lab.ok(&["create", "-f", ex.join("nad.yaml").to_str().unwrap()]);
    lab.ok(&[
        "apply",
        "-f",
        ex.join("hyperconverged.yaml").to_str().unwrap(),
    ]);

    let c = wait_reason(&lab, "PreflightFailed", Duration::from_secs(90));
    assert!(
        c.contains("pre-flight of migration network mignet-system/my-secondary-network failed; the agents keep the current network: "),
        "{c}"
    );
    for pair in ["node1 -> node3: Unreachable", "node2 -> node3: Unreachable"] {
        assert!(c.contains(pair), "{pair} in {c}");
    }
    assert!(
        !c.contains("node1 -> node2"),
        "the working pair is not named: {c}"
    );
    assert_eq!(ds_networks(&lab), "", "the DaemonSet keeps the pod network");
    for n in ["node1", "node2", "node3"] {
        assert_eq!(
            ipv4(&lab.ns(&format!("agent-{n}")), "migration0"),
            None,
            "{n}'s agent got no migration0"
        );
    }
    wait_for(
        "the round's pods, namespaces and addresses gone",
        Duration::from_secs(30),
        || no_probe_left(&lab),
    );
    // What an operator reads.
    let yaml = lab.ok(&["get", "hco", "kubevirt-hyperconverged", "-o", "yaml"]);
    assert!(yaml.contains("reason: PreflightFailed"), "{yaml}");
    let described = lab.ok(&["describe", "hco", "kubevirt-hyperconverged"]);
    assert!(
        described.contains("\n      node1 -> node3: Unreachable"),
        "{described}"
    );
    println!("--- mignet get hco -o yaml\n{yaml}\n--- mignet describe hco\n{described}");

    // The cable is back: the retried round passes and the agents move.
    ip(&["-n", &node3, "link", "set", "eth1", "up"]);
    wait_reason(&lab, "RolledOut", Duration::from_secs(120));
    assert_eq!(ds_networks(&lab), "my-secondary-network@migration0");
    for n in ["node1", "node2", "node3"] {
        let a = ipv4(&lab.ns(&format!("agent-{n}")), "migration0").unwrap_or_default();
        assert!(a.iter().any(|a| a.starts_with("10.200.5.")), "{n}: {a:?}");
    }
    lab.ok(&["lab", "down"]);
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

#[test]
fn a_segment_smaller_than_the_nads_mtu_is_refused_as_mtu() {
    let lab = Lab::new("pfmtu");
    lab.ok(&["lab", "up", "--nodes", "2"]);
    // The nodes' NICs take jumbo frames; the switch's ports do not.
    for n in ["node1", "node2"] {
        ip(&["-n", &lab.ns(n), "link", "set", "eth1", "mtu", "9000"]);
    }
    create_nad(
        &lab,
        "jumbo",
        r#"{"cniVersion":"0.3.1","name":"jumbo","type":"macvlan","master":"eth1","mode":"bridge","mtu":9000,"ipam":{"type":"whereabouts","range":"10.200.5.0/24"}}"#,
    );
    lab.ok(&["edit-config", "network=jumbo"]);

    let c = wait_reason(&lab, "PreflightFailed", Duration::from_secs(90));
    assert!(
        c.contains("node1 -> node2: MTU (a 8972-byte UDP payload (MTU 9000) got no echo in 3 tries; 64-byte ones did)"),
        "{c}"
    );
    assert_eq!(ds_networks(&lab), "");
    wait_for(
        "the round's pods, namespaces and addresses gone",
        Duration::from_secs(30),
        || no_probe_left(&lab),
    );
    lab.ok(&["lab", "down"]);
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

const GUEST: Guest = Guest {
    memory_mib: 256,
    fill_mib: 200,
    dirty_mib_s: 4,
};

/// KubeVirt issue 18765: the migrations around a network change fail. Here
/// the one in flight ends on the network it started on, and one created
/// during the change is queued (Pending, reason NetworkSwitch) and runs on
/// the new network once every agent is there.
#[test]
fn a_network_change_lets_the_migration_in_flight_end_and_queues_the_next() {
    let bed = Bed::up("pfmove", 2, &["bandwidthPerMigration=8Mi"]);
    bed.vm("va", GUEST);
    bed.vm("vb", GUEST);
    bed.wait_booted(&["va", "vb"]);
    let uids = bed.uids(&["va", "vb"]);

    let first = bed.migrate("va");
    bed.wait_running(&first, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("{first}: {e:?}"));
    create_second_network(&bed.lab);
    bed.edit(&["network=second-network"]);
    // The new network passes its pre-flight, then the change waits for va.
    let c = wait_reason(&bed.lab, "WaitingForMigrations", Duration::from_secs(60));
    assert!(c.contains(&format!("{NS}/{first}")), "{c}");
    assert!(c.contains("new migrations wait"), "{c}");

    // Created during the change: queued, not failed.
    let second = bed.migrate("vb");
    wait_for(&format!("{second} queued"), Duration::from_secs(20), || {
        let m = bed.vmim(&second)?;
        let st = m.status?;
        (st.phase == Some(MigrationPhase::Pending)
            && st
                .conditions
                .iter()
                .any(|c| c.reason.as_deref() == Some("NetworkSwitch")))
        .then_some(())
    });
    assert_eq!(ds_networks(&bed.lab), "my-secondary-network@migration0");

    let end = bed.wait_end(&first, Duration::from_secs(300));
    assert!(end.succeeded(), "{first}: {end:?}");
    // The VMI's migrationState records the target address (as KubeVirt's).
    let addr = bed
        .vmi("va")
        .and_then(|v| v.status?.migration_state?.target_node_address)
        .unwrap_or_default();
    assert!(
        addr.starts_with("10.200.5."),
        "{first} ran on the old network: {addr}"
    );

    let end = bed.wait_end(&second, Duration::from_secs(300));
    assert!(end.succeeded(), "{second}: {end:?}");
    let addr = bed
        .vmi("vb")
        .and_then(|v| v.status?.migration_state?.target_node_address)
        .unwrap_or_default();
    assert!(
        addr.starts_with("10.200.6."),
        "{second} ran on the new network: {addr}"
    );
    assert_eq!(ds_networks(&bed.lab), "second-network@migration0");
    assert_eq!(bed.uids(&["va", "vb"]), uids, "no guest was lost");
}
