//! `mignet lab up|down|status` build and remove the lab's namespaces (root).

mod lab_common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use lab_common::*;
use mignet_cni::netns::NetNs;

#[test]
fn up_builds_the_topology_and_down_removes_everything() {
    let lab = Lab::new("topo");
    lab.ok(&["lab", "up", "--nodes", "3"]);

    // Namespaces: switch, three nodes, three agent pods.
    let mut want: Vec<String> = [
        "sw",
        "node1",
        "node2",
        "node3",
        "agent-node1",
        "agent-node2",
        "agent-node3",
    ]
    .iter()
    .map(|s| lab.ns(s))
    .collect();
    want.sort();
    let mut have = lab.our_namespaces();
    have.sort();
    assert_eq!(have, want);

    // The switch holds both bridges, each with one port per node.
    let sw = links(&lab.ns("sw"));
    for (bridge, suffix) in [("br-pod", "pod"), ("br-mig", "mig")] {
        assert!(
            sw.iter()
                .any(|l| l["ifname"] == bridge && l["linkinfo"]["info_kind"] == "bridge"),
            "{bridge} missing in {sw:?}"
        );
        for i in 1..=3 {
            let port = format!("n{i}-{suffix}");
            let l = sw
                .iter()
                .find(|l| l["ifname"] == port.as_str())
                .unwrap_or_else(|| panic!("{port} missing"));
            assert_eq!(l["master"], bridge, "{port}");
            assert_eq!(l["operstate"], "UP", "{port}");
        }
    }

    for i in 1..=3 {
        let node = lab.ns(&format!("node{i}"));
        assert_eq!(
            ipv4(&node, "eth0").unwrap(),
            vec![format!("192.168.10.{i}/24")]
        );
        // eth1 is the macvlan master: up, but no address of its own.
        let eth1 = addrs(&node, "eth1").expect("eth1 exists");
        assert!(
            eth1.iter().all(|(f, _, _)| f == "inet6"),
            "eth1 must carry no IPv4 address: {eth1:?}"
        );
        let l = links(&node);
        let e1 = l.iter().find(|l| l["ifname"] == "eth1").unwrap();
        assert_eq!(e1["linkinfo"]["info_kind"], "veth");
        assert!(e1["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
        // The agent pod: eth0 on the node's pod subnet, no migration0 yet.
        let agent = lab.ns(&format!("agent-node{i}"));
        assert_eq!(
            ipv4(&agent, "eth0").unwrap(),
            vec![format!("10.244.{i}.2/24")]
        );
        assert!(addrs(&agent, "migration0").is_none());
    }

    // The pod network routes between nodes: agent 2 reaches agent 1.
    let a1 = NetNs::open(format!("/var/run/netns/{}", lab.ns("agent-node1"))).unwrap();
    let a2 = NetNs::open(format!("/var/run/netns/{}", lab.ns("agent-node2"))).unwrap();
    let listener = a1
        .run(|| TcpListener::bind("10.244.1.2:0"))
        .unwrap()
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = listener.accept().unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).unwrap();
        (b, peer.ip().to_string())
    });
    a2.run(move || {
        let mut c = TcpStream::connect_timeout(
            &format!("10.244.1.2:{port}").parse().unwrap(),
            Duration::from_secs(5),
        )
        .expect("pod network route between nodes");
        c.write_all(b"ping").unwrap();
    })
    .unwrap();
    let (got, peer) = server.join().unwrap();
    assert_eq!(&got, b"ping");
    assert_eq!(peer, "10.244.2.2", "routed, not NATed");

    // Store: nodes and the agent DaemonSet, visible through the CLI.
    let nodes = lab.ok(&["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"]);
    assert_eq!(nodes, "node1 node2 node3");
    let ready = lab.ok(&[
        "get",
        "ds",
        "mignet-agent",
        "-o",
        "jsonpath={.status.numberReady}",
    ]);
    assert_eq!(ready, "3");
    let status = lab.ok(&["lab", "status"]);
    assert!(status.contains("running"), "{status}");
    assert!(status.contains("mignet-agent-node3"), "{status}");

    // The record lists every link the lab made, in lab namespaces only.
    let state = lab.state().unwrap();
    let recorded: Vec<(String, String)> = serde_json::from_value(state["links"].clone()).unwrap();
    assert!(recorded.contains(&(lab.ns("sw"), "br-mig".into())));
    assert!(recorded.contains(&(lab.ns("node2"), "eth1".into())));
    assert!(recorded.contains(&(lab.ns("node3"), "agent0".into())));
    assert!(recorded.iter().all(|(ns, _)| ns.starts_with(&lab.prefix)));
    // Nothing of the lab's shows up in the root namespace.
    let root: Vec<String> = root_links();
    for name in [
        "br-pod",
        "br-mig",
        "n1-pod",
        "n1-mig",
        "agent0",
        "migration0",
    ] {
        assert!(
            !root.iter().any(|l| l == name),
            "{name} in the root namespace"
        );
    }

    let pid = lab.daemon_pid().expect("daemon recorded");
    assert!(pid_alive(pid));
    lab.ok(&["lab", "down"]);
    assert!(
        lab.our_namespaces().is_empty(),
        "{:?}",
        lab.our_namespaces()
    );
    assert!(!lab.dir.exists(), "lab dir removed");
    assert!(!pid_alive(pid), "daemon stopped");
    assert_eq!(lab.leftovers(), Vec::<String>::new());
    // Idempotent.
    lab.ok(&["lab", "down"]);
}

#[test]
fn down_after_a_crash_cleans_up_from_the_record() {
    let lab = Lab::new("crash");
    lab.ok(&["lab", "up", "--nodes", "2"]);
    let pid = lab.daemon_pid().unwrap();
    // The lab process dies without any chance to clean up.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("daemon gone", Duration::from_secs(10), || {
        (!pid_alive(pid)).then_some(())
    });
    assert_eq!(
        lab.our_namespaces().len(),
        5,
        "sw, 2 nodes, 2 agents still there"
    );
    let out = lab.ok(&["lab", "down"]);
    assert!(out.contains("lab down"), "{out}");
    assert!(
        lab.our_namespaces().is_empty(),
        "{:?}",
        lab.our_namespaces()
    );
    assert!(!lab.dir.exists());
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

#[test]
fn a_second_up_is_refused_and_a_foreign_namespace_is_not_adopted() {
    let lab = Lab::new("twice");
    lab.ok(&["lab", "up", "--nodes", "1", "--no-daemon"]);
    let again = lab.run(&["lab", "up", "--nodes", "1", "--no-daemon"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already up"));
    lab.ok(&["lab", "down"]);

    // A namespace with the lab's name that the lab did not create: up
    // fails, cleans what it made, and leaves the stranger alone.
    let other = Lab::new("foreign");
    let stranger = other.ns("node1");
    assert!(std::process::Command::new("ip")
        .args(["netns", "add", &stranger])
        .status()
        .unwrap()
        .success());
    let out = other.run(&["lab", "up", "--nodes", "1", "--no-daemon"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        other.our_namespaces(),
        vec![stranger.clone()],
        "switch removed, stranger kept"
    );
    assert!(std::process::Command::new("ip")
        .args(["netns", "del", &stranger])
        .status()
        .unwrap()
        .success());
}

#[test]
fn a_restarted_daemon_adopts_the_running_agents() {
    let lab = Lab::new("restart");
    lab.ok(&["lab", "up", "--nodes", "2"]);
    lab.ok(&[
        "create",
        "-f",
        examples().join("nad.yaml").to_str().unwrap(),
    ]);
    lab.ok(&[
        "apply",
        "-f",
        examples().join("hyperconverged.yaml").to_str().unwrap(),
    ]);
    let before = wait_for("migration0 on both agents", Duration::from_secs(60), || {
        let a = ipv4(&lab.ns("agent-node1"), "migration0")?;
        let b = ipv4(&lab.ns("agent-node2"), "migration0")?;
        (!a.is_empty() && !b.is_empty()).then_some((a, b))
    });
    // Killed only once the rollout is complete: a pod killed half-started
    // is (rightly) restarted by the next daemon.
    wait_for("rollout complete", Duration::from_secs(60), || {
        let reason = lab.ok(&[
            "get",
            "hco",
            "kubevirt-hyperconverged",
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="MigrationNetworkReady")].reason}"#,
        ]);
        (reason == "RolledOut").then_some(())
    });
    let uids = |lab: &Lab| lab.ok(&["get", "pods", "-o", "jsonpath={.items[*].metadata.uid}"]);
    let uids_before = uids(&lab);
    let pid = lab.daemon_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_for("daemon gone", Duration::from_secs(10), || {
        (!pid_alive(pid)).then_some(())
    });

    // A new lab process on the same state: the pods are kept as they are.
    let mut daemon = lab
        .cmd()
        .args(["lab", "daemon"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let new_pid = daemon.id() as i32;
    wait_for("new daemon recorded", Duration::from_secs(10), || {
        lab.state()?["processes"]
            .as_array()?
            .iter()
            .any(|p| p["pid"] == new_pid)
            .then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(uids(&lab), uids_before, "agent pods not restarted");
    let after = (
        ipv4(&lab.ns("agent-node1"), "migration0").unwrap(),
        ipv4(&lab.ns("agent-node2"), "migration0").unwrap(),
    );
    assert_eq!(after, before);
    // ... and it reconciles: unsetting the network detaches the agents.
    lab.ok(&["edit-config", "network-"]);
    wait_for(
        "migration0 removed by the new daemon",
        Duration::from_secs(60),
        || {
            (ipv4(&lab.ns("agent-node1"), "eth0").is_some()
                && addrs(&lab.ns("agent-node1"), "migration0").is_none()
                && ipv4(&lab.ns("agent-node2"), "eth0").is_some()
                && addrs(&lab.ns("agent-node2"), "migration0").is_none())
            .then_some(())
        },
    );
    lab.ok(&["lab", "down"]);
    let _ = daemon.wait();
    assert!(!pid_alive(new_pid), "down stops the hand-started daemon");
    assert!(lab.our_namespaces().is_empty());
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

#[test]
fn missing_cni_plugins_fail_up_clearly_and_leave_nothing() {
    let lab = Lab::new("nocni");
    let out = lab
        .cmd()
        .env("MIGNET_CNI_BIN_DIR", "/nonexistent-cni-dir")
        .args(["lab", "up", "--nodes", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cargo build -p mignet-cni"), "{err}");
    assert!(lab.our_namespaces().is_empty());
    assert!(!lab.dir.exists());
}

fn root_links() -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["-j", "link", "show"])
        .output()
        .unwrap();
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect()
}
