//! The lab kubelet + Multus for the network pre-flight's probe pods
//! (`lab::probe_pods`): a pod made the way the manager makes them gets its
//! own namespace with the NAD's `migration0`, its container runs, and its
//! end is reported as a kubelet reports it; a NAD whose master does not
//! exist leaves the pod Pending with the kubelet's Event and nothing behind;
//! a deleted pod takes its process, namespace and address with it (root,
//! no QEMU).

mod lab_common;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use lab_common::*;
use mignet::lab::probe_pods::{self, ProbePods};
use mignet::lab::LabConfig;
use mignet::network::preflight::{PROBE_CONTAINER, ROUND_LABEL};
use mignet::store::Store;
use serde_json::{json, Value};

const NS: &str = "mignet-system";
const SEED_POOL: &str = "10.200.5.0-24.json";

const ROUND: &str = "0123abcd";

/// What the container runs: the manager's args for a round of `expect`
/// pods (cluster paths; the lab maps the certificate flags and
/// `--termination-log`, and adds `--lab`).
fn quick_args(expect: u32) -> Vec<String> {
    let expect = expect.to_string();
    [
        "probe",
        "--node=$(NODE_NAME)",
        "--namespace",
        NS,
        "--round",
        ROUND,
        "--expect",
        &expect,
        "--interface",
        "migration0",
        "--deadline-seconds",
        "20",
        "--cert-source",
        "csr",
        "--cert-dir",
        "/etc/mignet/certs",
        "--ca-bundle",
        "/etc/mignet/ca/ca.crt",
        "--termination-log",
        "/dev/termination-log",
    ]
    .map(String::from)
    .to_vec()
}

/// A container that runs until it is stopped (in the pod's namespace).
fn long_args() -> Vec<String> {
    ["console", "--lab", "--listen", "127.0.0.1:0"]
        .map(String::from)
        .to_vec()
}

/// A probe pod as the manager makes one: round label, pinned to `node`,
/// the NAD as `<nad>@migration0`, container `probe`.
fn probe_pod(name: &str, node: &str, nad: &str, args: Vec<String>) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {ROUND_LABEL: ROUND},
            "annotations": {"k8s.v1.cni.cncf.io/networks": format!("{nad}@migration0")},
        },
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": PROBE_CONTAINER,
                "image": "mignet:lab",
                "command": ["/usr/local/bin/mignet"],
                "args": args,
                "env": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
            }],
        },
    }))
    .unwrap()
}

fn up(lab: &Lab, nodes: u32) -> (LabConfig, Store) {
    lab.ok(&["lab", "up", "--nodes", &nodes.to_string(), "--no-daemon"]);
    lab.ok(&[
        "create",
        "-f",
        examples().join("nad.yaml").to_str().unwrap(),
    ]);
    let cfg = LabConfig {
        dir: lab.dir.clone(),
        prefix: lab.prefix.clone(),
        nodes,
    };
    let store = Store::open(cfg.store_dir()).unwrap();
    (cfg, store)
}

fn pod(store: &Store, name: &str) -> Option<Pod> {
    store.get::<Pod>(NS, name).unwrap()
}

fn phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

/// Run the kubelet step until `done` holds (or fail after `timeout`).
fn sync_until<T>(
    kubelet: &mut ProbePods,
    what: &str,
    timeout: Duration,
    mut done: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        kubelet.sync().unwrap();
        if let Some(v) = done() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn allocations(lab: &Lab, pool: &str) -> usize {
    std::fs::read(lab.dir.join("ipam").join(pool))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["allocations"].as_object().map(|m| m.len()))
        .unwrap_or(0)
}

fn probe_namespaces(lab: &Lab) -> Vec<String> {
    lab.our_namespaces()
        .into_iter()
        .filter(|n| n.contains("-probe-"))
        .collect()
}

fn recorded_probe_namespaces(lab: &Lab) -> Vec<String> {
    lab.state().unwrap()["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .filter(|n| n.contains("-probe-"))
        .map(str::to_owned)
        .collect()
}

/// The node's links: only what the topology made (no macvlan left over).
fn node_links(lab: &Lab, node: &str) -> Vec<String> {
    let mut l: Vec<String> = links(&lab.ns(node))
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect();
    l.sort();
    l
}

fn migration0_status(p: &Pod) -> Value {
    let raw = &p.metadata.annotations.as_ref().unwrap()["k8s.v1.cni.cncf.io/network-status"];
    let status: Vec<Value> = serde_json::from_str(raw).unwrap();
    status
        .into_iter()
        .find(|e| e["interface"] == "migration0")
        .unwrap_or_else(|| panic!("no migration0 in network-status {raw}"))
}

/// The pid of the pod's container (its wrapper wrote it).
fn container_pid(lab: &Lab, node: &str, pod: &str) -> i32 {
    let file = probe_pods::probes_dir(&lab.dir)
        .join(node)
        .join(format!("{NS}_{pod}"))
        .join("launcher.pid");
    wait_for("the container's pid", Duration::from_secs(10), || {
        std::fs::read_to_string(&file).ok()?.trim().parse().ok()
    })
}

fn in_seed_range(ip: &str) -> bool {
    let net: ipnetwork::Ipv4Network = "10.200.5.0/24".parse().unwrap();
    net.contains(ip.parse().unwrap())
}

#[test]
fn a_probe_pod_gets_migration0_in_its_own_namespace_runs_and_leaves_nothing_when_deleted() {
    let lab = Lab::new("prb");
    let (cfg, store) = up(&lab, 2);
    let mut kubelet = ProbePods::new(&cfg, &store);
    for node in ["node1", "node2"] {
        store
            .create(&probe_pod(
                &format!("probe-{node}"),
                node,
                "my-secondary-network",
                quick_args(2),
            ))
            .unwrap();
    }
    sync_until(
        &mut kubelet,
        "both probes Succeeded",
        Duration::from_secs(60),
        || {
            ["probe-node1", "probe-node2"]
                .iter()
                .all(|n| pod(&store, n).is_some_and(|p| phase(&p) == "Succeeded"))
                .then_some(())
        },
    );
    let mut ips = Vec::new();
    for node in ["node1", "node2"] {
        let p = pod(&store, &format!("probe-{node}")).unwrap();
        let st = p.status.as_ref().unwrap();
        let terminated = st.container_statuses.as_ref().unwrap()[0]
            .state
            .as_ref()
            .unwrap()
            .terminated
            .clone()
            .unwrap();
        assert_eq!(terminated.exit_code, 0, "{terminated:?}");
        assert_eq!(st.container_statuses.as_ref().unwrap()[0].name, "probe");
        // Multus' record and the namespace agree: one address of the NAD's range.
        let entry = migration0_status(&p);
        assert_eq!(entry["name"], "mignet-system/my-secondary-network");
        let ip = entry["ips"][0].as_str().unwrap().to_owned();
        assert!(in_seed_range(&ip), "{ip}");
        let report = mignet::network::preflight::ProbeReport::from_message(
            terminated.message.as_deref().unwrap_or_default(),
        )
        .unwrap();
        assert_eq!(report.node, node);
        assert!(report.own_failure.is_none(), "{report:?}");
        assert_eq!(report.address.as_deref(), Some(ip.as_str()), "{report:?}");
        assert_eq!(report.peers.len(), 1, "{report:?}");
        assert!(
            report.peers.iter().all(|p| p.failure.is_none()),
            "{report:?}"
        );
        let netns = probe_pods::netns_name(&lab.prefix, node, p.metadata.uid.as_deref().unwrap());
        assert_eq!(
            ipv4(&netns, "migration0").unwrap(),
            vec![format!("{ip}/24")]
        );
        // Its own namespace: no pod-network eth0, lo up.
        assert!(addrs(&netns, "eth0").is_none());
        assert_eq!(ipv4(&netns, "lo").unwrap(), vec!["127.0.0.1/8".to_owned()]);
        assert!(recorded_probe_namespaces(&lab).contains(&netns));
        ips.push(ip);
    }
    assert_ne!(ips[0], ips[1]);
    assert_eq!(allocations(&lab, SEED_POOL), 2);
    assert_eq!(probe_namespaces(&lab).len(), 2);

    // The manager deletes the pods: the kubelet's finalizer holds them
    // until their addresses are back.
    for node in ["node1", "node2"] {
        store
            .delete_typed::<Pod>(NS, &format!("probe-{node}"))
            .unwrap();
    }
    assert!(pod(&store, "probe-node1").is_some_and(|p| p.metadata.deletion_timestamp.is_some()));
    sync_until(
        &mut kubelet,
        "both pods gone",
        Duration::from_secs(30),
        || {
            (pod(&store, "probe-node1").is_none() && pod(&store, "probe-node2").is_none())
                .then_some(())
        },
    );
    assert_eq!(probe_namespaces(&lab), Vec::<String>::new());
    assert_eq!(recorded_probe_namespaces(&lab), Vec::<String>::new());
    assert_eq!(allocations(&lab, SEED_POOL), 0);
    for node in ["node1", "node2"] {
        assert_eq!(node_links(&lab, node), ["eth0", "eth1", "lo"]);
    }
    assert!(std::fs::read_dir(probe_pods::probes_dir(&lab.dir))
        .map(|d| d
            .flatten()
            .all(|n| std::fs::read_dir(n.path()).unwrap().next().is_none()))
        .unwrap_or(true));
    lab.ok(&["lab", "down"]);
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

#[test]
fn a_missing_master_leaves_the_pod_pending_with_the_kubelets_event_and_nothing_behind() {
    let lab = Lab::new("prbm");
    let (cfg, store) = up(&lab, 1);
    create_nad(
        &lab,
        "wrong-master",
        r#"{"cniVersion":"0.3.1","name":"wrong","type":"macvlan","master":"eth9","mode":"bridge","ipam":{"type":"whereabouts","range":"10.200.9.0/24"}}"#,
    );
    let mut kubelet = ProbePods::new(&cfg, &store);
    let created = store
        .create(&probe_pod(
            "probe-node1",
            "node1",
            "wrong-master",
            quick_args(1),
        ))
        .unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    kubelet.sync().unwrap();

    let p = pod(&store, "probe-node1").unwrap();
    assert_eq!(phase(&p), "Pending");
    let cond = p
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "PodReadyToStartContainers")
        .cloned()
        .expect("sandbox condition");
    assert_eq!(cond.status, "False");
    let message = cond.message.unwrap();
    assert!(message.contains("eth9"), "{message}");
    assert!(
        message.starts_with("Failed to create pod sandbox"),
        "{message}"
    );
    let events: Vec<Value> = store.list_values("Event", Some(NS)).unwrap();
    let ev = events
        .iter()
        .find(|e| e["involvedObject"]["uid"] == uid.as_str())
        .unwrap_or_else(|| panic!("no event for the pod in {events:?}"));
    assert_eq!(ev["reason"], "FailedCreatePodSandBox");
    assert_eq!(ev["type"], "Warning");
    assert_eq!(ev["involvedObject"]["kind"], "Pod");
    assert_eq!(ev["involvedObject"]["name"], "probe-node1");
    assert_eq!(ev["message"], message.as_str());
    // No process, namespace, link, address or state is left.
    assert_eq!(probe_namespaces(&lab), Vec::<String>::new());
    assert_eq!(recorded_probe_namespaces(&lab), Vec::<String>::new());
    assert_eq!(allocations(&lab, "10.200.9.0-24.json"), 0);
    assert_eq!(node_links(&lab, "node1"), ["eth0", "eth1", "lo"]);
    assert!(!probe_pods::probes_dir(&lab.dir)
        .join("node1")
        .join("mignet-system_probe-node1")
        .exists());
    assert!(p
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .state
        .as_ref()
        .unwrap()
        .waiting
        .is_some());

    // Retried later, not at once; the Event counts the tries.
    kubelet.sync().unwrap();
    let count = |store: &Store| {
        store.list_values("Event", Some(NS)).unwrap()[0]["count"]
            .as_i64()
            .unwrap()
    };
    assert_eq!(count(&store), 1);
    std::thread::sleep(Duration::from_millis(3100));
    kubelet.sync().unwrap();
    assert_eq!(count(&store), 2);
    assert_eq!(probe_namespaces(&lab), Vec::<String>::new());

    // Deleted, it goes at once (nothing to undo), and so does its Event.
    store.delete_typed::<Pod>(NS, "probe-node1").unwrap();
    kubelet.sync().unwrap();
    assert!(pod(&store, "probe-node1").is_none());
    assert_eq!(
        store.list_values("Event", Some(NS)).unwrap(),
        Vec::<Value>::new()
    );
    lab.ok(&["lab", "down"]);
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

#[test]
fn a_deleted_running_probe_is_stopped_and_its_address_freed() {
    let lab = Lab::new("prbd");
    let (cfg, store) = up(&lab, 1);
    let mut kubelet = ProbePods::new(&cfg, &store);
    store
        .create(&probe_pod(
            "probe-node1",
            "node1",
            "my-secondary-network",
            long_args(),
        ))
        .unwrap();
    let p = sync_until(
        &mut kubelet,
        "probe Running",
        Duration::from_secs(30),
        || pod(&store, "probe-node1").filter(|p| phase(p) == "Running"),
    );
    let netns = probe_pods::netns_name(&lab.prefix, "node1", p.metadata.uid.as_deref().unwrap());
    let ip = migration0_status(&p)["ips"][0].as_str().unwrap().to_owned();
    assert_eq!(
        ipv4(&netns, "migration0").unwrap(),
        vec![format!("{ip}/24")]
    );
    // The container runs inside the pod's namespace.
    let pid = container_pid(&lab, "node1", "probe-node1");
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap(),
        {
            let f = std::fs::File::open(format!("/var/run/netns/{netns}")).unwrap();
            use std::os::unix::fs::MetadataExt;
            std::path::PathBuf::from(format!("net:[{}]", f.metadata().unwrap().ino()))
        }
    );
    assert_eq!(allocations(&lab, SEED_POOL), 1);
    kubelet.sync().unwrap();
    assert_eq!(phase(&pod(&store, "probe-node1").unwrap()), "Running");

    store.delete_typed::<Pod>(NS, "probe-node1").unwrap();
    sync_until(&mut kubelet, "pod gone", Duration::from_secs(30), || {
        pod(&store, "probe-node1").is_none().then_some(())
    });
    assert!(!pid_alive(pid), "the probe's process was stopped");
    assert_eq!(probe_namespaces(&lab), Vec::<String>::new());
    assert_eq!(allocations(&lab, SEED_POOL), 0);
    lab.ok(&["lab", "down"]);
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}

#[test]
fn the_lab_daemon_runs_probe_pods_and_down_removes_a_running_one() {
    let lab = Lab::new("prbl");
    lab.ok(&["lab", "up", "--nodes", "1"]);
    lab.ok(&[
        "create",
        "-f",
        examples().join("nad.yaml").to_str().unwrap(),
    ]);
    let store = Store::open(mignet::lab::store_dir(&lab.dir)).unwrap();
    store
        .create(&probe_pod(
            "probe-node1",
            "node1",
            "my-secondary-network",
            long_args(),
        ))
        .unwrap();
    let p = wait_for("the daemon runs the probe", Duration::from_secs(60), || {
        pod(&store, "probe-node1").filter(|p| phase(p) == "Running")
    });
    assert!(in_seed_range(
        migration0_status(&p)["ips"][0].as_str().unwrap()
    ));
    assert_eq!(probe_namespaces(&lab).len(), 1);
    let pid = container_pid(&lab, "node1", "probe-node1");
    assert!(pid_alive(pid));
    // `lab down` with the probe still running: nothing stays.
    lab.ok(&["lab", "down"]);
    assert_eq!(lab.leftovers(), Vec::<String>::new());
    assert!(!pid_alive(pid), "the probe's process was stopped");
    assert_eq!(lab.our_namespaces(), Vec::<String>::new());
}

/// A node whose migration NIC is down is not the kubelet's business: the
/// sandbox is made (macvlan on a down master), the probe starts and sees a
/// `migration0` with an address and no carrier (the probe's NoAddress or
/// Unreachable to report, not the kubelet's FailedCreatePodSandBox).
#[test]
fn a_node_whose_eth1_is_down_still_runs_its_probe_with_migration0_down() {
    let lab = Lab::new("prbx");
    let (cfg, store) = up(&lab, 1);
    let node_ns = lab.ns("node1");
    let out = std::process::Command::new("ip")
        .args(["-n", &node_ns, "link", "set", "eth1", "down"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let mut kubelet = ProbePods::new(&cfg, &store);
    store
        .create(&probe_pod(
            "probe-node1",
            "node1",
            "my-secondary-network",
            long_args(),
        ))
        .unwrap();
    let p = sync_until(
        &mut kubelet,
        "probe Running",
        Duration::from_secs(30),
        || pod(&store, "probe-node1").filter(|p| phase(p) == "Running"),
    );
    let netns = probe_pods::netns_name(&lab.prefix, "node1", p.metadata.uid.as_deref().unwrap());
    let m0 = links(&netns)
        .into_iter()
        .find(|l| l["ifname"] == "migration0")
        .expect("migration0");
    // Administratively up, no carrier: its master is down.
    let flags = m0["flags"].as_array().unwrap();
    assert!(flags.iter().any(|f| f == "NO-CARRIER"), "{m0}");
    assert_ne!(m0["operstate"], "UP", "{m0}");
    assert!(in_seed_range(
        migration0_status(&p)["ips"][0].as_str().unwrap()
    ));
    store.delete_typed::<Pod>(NS, "probe-node1").unwrap();
    sync_until(&mut kubelet, "pod gone", Duration::from_secs(30), || {
        pod(&store, "probe-node1").is_none().then_some(())
    });
    assert_eq!(allocations(&lab, SEED_POOL), 0);
    lab.ok(&["lab", "down"]);
    assert_eq!(lab.leftovers(), Vec::<String>::new());
}
