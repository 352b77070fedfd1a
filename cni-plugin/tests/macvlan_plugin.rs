//! Privileged end-to-end tests of the macvlan plugin binary (run as root).
//! Each test builds its own node namespace (with `eth1`) and pod namespace;
//! the plugin runs inside the node namespace like a kubelet would run it.

mod common;

use common::*;
use serde_json::{json, Value};

/// A lab of one node, one pod and a CNI_PATH with our binaries installed
/// under the reference names; IPAM state goes to a temp dir.
struct Lab {
    node: Node,
    pod: Netns,
    cni: CniPath,
    store: TempDir,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            node: Node::new(),
            pod: Netns::new("mgp"),
            cni: CniPath::new(),
            store: TempDir::new("mgstore"),
        }
    }

    /// An invocation of `bin` (a name in CNI_PATH) in this lab.
    fn inv(&self, bin: &str, command: &str, conf: &str) -> Invocation {
        Invocation::new(self.cni.bin(bin), command, &self.cni, conf)
            .pod(&self.pod)
            .on_node(&self.node.ns)
            .set(
                "MIGNET_IPAM_STORE_DIR",
                &self.store.path.display().to_string(),
            )
    }

    fn macvlan(&self, command: &str, conf: &str) -> Invocation {
        self.inv("macvlan", command, conf)
    }

    /// Only the test's own links exist: lo in the pod; lo, eth1, eth1p on the node.
    fn assert_clean(&self) {
        assert_eq!(self.pod.link_names(), ["lo"], "pod namespace has leftovers");
        assert_eq!(
            self.node.ns.link_names(),
            ["eth1", "eth1p", "lo"],
            "node namespace has leftovers"
        );
    }

    /// The seed range still hands out its lowest address: nothing leaked.
    fn assert_no_allocation(&self) {
        let pod2 = Netns::new("mgp");
        let inv = self.macvlan("ADD", SEED_NAD).pod(&pod2);
        let r = inv.run();
        let ip = r.ok()["ips"][0]["address"].as_str().unwrap().to_string();
        assert_eq!(
            ip, "10.200.5.1/24",
            "an earlier failure leaked an allocation"
        );
        inv.command("DEL").run().ok();
    }
}

fn static_ipam(version: &str, extra: Value) -> String {
    let mut v = json!({
        "cniVersion": version,
        "name": "mig",
        "type": "macvlan",
        "master": "eth1",
        "ipam": {
            "type": "static",
            "addresses": [{"address": "10.30.0.5/24", "gateway": "10.30.0.1"}],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.50.0/24", "gw": "10.30.0.254"}]
        }
    });
    if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in e {
            m.insert(k.clone(), val.clone());
        }
    }
    v.to_string()
}

#[test]
fn seed_nad_verbatim_add_del() {
    let lab = Lab::new();
    let add = lab.macvlan("ADD", SEED_NAD);
    let r = add.run();
    let res = r.ok();
    assert_eq!(res["cniVersion"], "0.3.1");
    assert_eq!(res["interfaces"][0]["name"], "net1");
    assert_eq!(res["interfaces"][0]["sandbox"], lab.pod.path_str());
    let mac = res["interfaces"][0]["mac"].as_str().unwrap();
    assert_eq!(mac.len(), 17);
    assert_eq!(res["ips"][0]["version"], "4");
    assert_eq!(res["ips"][0]["interface"], 0);
    assert_eq!(res["ips"][0]["address"], "10.200.5.1/24");

    let link = lab.pod.link("net1").expect("net1 in pod");
    assert_eq!(link["linkinfo"]["info_kind"], "macvlan");
    assert_eq!(link["linkinfo"]["info_data"]["mode"], "bridge");
    assert_eq!(link["address"].as_str(), Some(mac));
    assert!(link["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert_eq!(lab.pod.addrs("net1"), ["10.200.5.1/24"]);
    // Created straight in the pod: nothing appeared on the node.
    assert_eq!(lab.node.ns.link_names(), ["eth1", "eth1p", "lo"]);
    // The announce knobs were set inside the pod namespace.
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.pod.name,
            "cat",
            "/proc/sys/net/ipv4/conf/net1/arp_notify",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");

    // CHECK is not allowed for a 0.3.1 config.
    let msg = add.clone_with("CHECK").run().err(1);
    assert!(msg.contains("CHECK"), "{msg}");

    let del = add.clone_with("DEL");
    del.run().ok();
    lab.assert_clean();
    del.run().ok(); // DEL twice
    lab.assert_clean();
    lab.assert_no_allocation();
}

trait CloneWith {
    fn clone_with(&self, command: &str) -> Invocation;
}

impl CloneWith for Invocation {
    fn clone_with(&self, command: &str) -> Invocation {
        Invocation {
            bin: self.bin.clone(),
            env: self.env.clone(),
            stdin: self.stdin.clone(),
            netns: self.netns.clone(),
        }
        .command(command)
    }
}

#[test]
fn four_nodes_get_distinct_addresses_from_one_store() {
    let cni = CniPath::new();
    let store = TempDir::new("mgstore");
    let nodes: Vec<Node> = (0..4).map(|_| Node::new()).collect();
    let pods: Vec<Netns> = (0..4).map(|_| Netns::new("mgp")).collect();
    let mut ips = Vec::new();
    let mut dels = Vec::new();
    for (node, pod) in nodes.iter().zip(&pods) {
        let inv = Invocation::new(cni.bin("macvlan"), "ADD", &cni, SEED_NAD)
            .pod(pod)
            .on_node(&node.ns)
            .set("CNI_IFNAME", "migration0")
            .set("MIGNET_IPAM_STORE_DIR", &store.path.display().to_string());
        let r = inv.run();
        let ip = r.ok()["ips"][0]["address"].as_str().unwrap().to_string();
        assert_eq!(pod.addrs("migration0"), std::slice::from_ref(&ip));
        ips.push(ip);
        dels.push(inv.clone_with("DEL"));
    }
    let mut uniq = ips.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 4, "{ips:?}");
    assert!(ips
        .iter()
        .all(|i| i.starts_with("10.200.5.") && i.ends_with("/24")));
    for d in dels {
        d.run().ok();
    }
}

#[test]
fn every_mode() {
    for mode in ["bridge", "private", "vepa", "passthru", "source"] {
        let lab = Lab::new();
        let conf = static_ipam("1.0.0", json!({"mode": mode}));
        let add = lab.macvlan("ADD", &conf);
        let res = add.run();
        let res = res.ok();
        assert_eq!(res["ips"][0]["address"], "10.30.0.5/24", "{mode}");
        let link = lab.pod.link("net1").expect("net1");
        assert_eq!(link["linkinfo"]["info_data"]["mode"], mode);
        assert_eq!(lab.pod.addrs("net1"), ["10.30.0.5/24"]);
        assert_eq!(
            lab.pod.routes("net1"),
            [
                "0.0.0.0/0 via 10.30.0.1",
                "10.30.0.0/24",
                "192.168.50.0/24 via 10.30.0.254"
            ]
        );
        // CHECK verifies the mode too.
        let check = add
            .clone_with("CHECK")
            .with_stdin(&with_prev_result(&conf, res));
        check.run().ok();
        add.clone_with("DEL").run().ok();
        lab.assert_clean();
    }
}

#[test]
fn mac_from_config_args_and_runtime_config() {
    let lab = Lab::new();
    let cases = [
        (
            json!({"mac": "02:aa:00:00:00:01"}),
            None,
            "02:aa:00:00:00:01",
        ),
        (
            json!({"mac": "02:aa:00:00:00:01"}),
            Some("IgnoreUnknown=1;MAC=02:aa:00:00:00:02"),
            "02:aa:00:00:00:02",
        ),
        (
            json!({"mac": "02:aa:00:00:00:01", "runtimeConfig": {"mac": "02:AA:00:00:00:03"}}),
            Some("IgnoreUnknown=1;MAC=02:aa:00:00:00:02"),
            "02:aa:00:00:00:03",
        ),
    ];
    for (extra, args, want) in cases {
        let conf = static_ipam("1.0.0", extra);
        let mut add = lab.macvlan("ADD", &conf);
        if let Some(a) = args {
            add = add.set("CNI_ARGS", a);
        }
        let r = add.run();
        assert_eq!(r.ok()["interfaces"][0]["mac"], want);
        assert_eq!(lab.pod.link("net1").unwrap()["address"], want);
        add.clone_with("DEL").run().ok();
    }
    lab.assert_clean();
}

#[test]
fn mtu_above_master_is_code_7_and_leaves_nothing() {
    let lab = Lab::new();
    let conf = r#"{"cniVersion":"1.0.0","name":"m","type":"macvlan","master":"eth1","mtu":9000,"ipam":{"type":"whereabouts","range":"10.200.5.0/24"}}"#;
    let msg = lab.macvlan("ADD", conf).run().err(7);
    assert!(
        msg.contains("mtu") && msg.contains("9000") && msg.contains("1500"),
        "{msg}"
    );
    lab.assert_clean();
    lab.assert_no_allocation();

    // Within the limit it is applied.
    let ok = r#"{"cniVersion":"1.0.0","name":"m","type":"macvlan","master":"eth1","mtu":1400}"#;
    let add = lab.macvlan("ADD", ok);
    add.run().ok();
    assert_eq!(lab.pod.link("net1").unwrap()["mtu"], 1400);
    add.clone_with("DEL").run().ok();
    lab.assert_clean();
}

#[test]
fn bad_inputs_get_their_code_and_leave_nothing() {
    let lab = Lab::new();
    let wa = |extra: &str| {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"m","type":"macvlan"{extra},"ipam":{{"type":"whereabouts","range":"10.200.5.0/24"}}}}"#
        )
    };
    let cases: Vec<(&str, Invocation, u64, &str)> = vec![
        (
            "unknown mode",
            lab.macvlan("ADD", &wa(r#","master":"eth1","mode":"bogus""#)),
            7,
            "mode",
        ),
        (
            "malformed JSON",
            lab.macvlan("ADD", "{\"cniVersion\":"),
            6,
            "config",
        ),
        (
            "missing master",
            lab.macvlan("ADD", &wa(r#","master":"eth9""#)),
            7,
            "master",
        ),
        (
            "no master, no default route",
            lab.macvlan("ADD", &wa("")),
            7,
            "master",
        ),
        (
            "missing CNI_COMMAND",
            lab.macvlan("ADD", &wa(r#","master":"eth1""#))
                .unset("CNI_COMMAND"),
            4,
            "CNI_COMMAND",
        ),
        (
            "missing CNI_IFNAME",
            lab.macvlan("ADD", &wa(r#","master":"eth1""#))
                .unset("CNI_IFNAME"),
            4,
            "CNI_IFNAME",
        ),
        (
            "unsupported cniVersion",
            lab.macvlan("ADD", &wa(r#","master":"eth1""#).replace("1.0.0", "0.9.0")),
            1,
            "incompatible",
        ),
        (
            "bad mac",
            lab.macvlan("ADD", &wa(r#","master":"eth1","mac":"xx""#)),
            7,
            "mac",
        ),
        (
            "bad ipam type",
            lab.macvlan(
                "ADD",
                &wa(r#","master":"eth1""#).replace("whereabouts", "nope-ipam"),
            ),
            7,
            "ipam.type",
        ),
        (
            "L2 result in 0.2.0",
            lab.macvlan(
                "ADD",
                r#"{"cniVersion":"0.2.0","name":"m","type":"macvlan","master":"eth1"}"#,
            ),
            1,
            "cannot convert",
        ),
    ];
    for (what, inv, code, needle) in cases {
        let r = inv.run();
        let msg = r.err(code);
        assert!(
            msg.contains(needle) || r.json["details"].as_str().unwrap_or("").contains(needle),
            "{what}: {msg}"
        );
        lab.assert_clean();
    }
    lab.assert_no_allocation();
}

#[test]
fn failure_after_ipam_add_releases_the_allocation() {
    let lab = Lab::new();
    // The route's gateway is unreachable, so ADD fails after IPAM allocated.
    let conf = r#"{"cniVersion":"1.0.0","name":"m","type":"macvlan","master":"eth1","ipam":{"type":"whereabouts","range":"10.200.5.0/24","routes":[{"dst":"192.168.77.0/24","gw":"172.16.9.1"}]}}"#;
    let r = lab.macvlan("ADD", conf).run();
    let msg = r.err(101);
    assert!(msg.contains("route"), "{msg}");
    lab.assert_clean();
    lab.assert_no_allocation();

    // Same through the exec path (host-local), whose allocation is a file.
    let hl_dir = TempDir::new("mghl");
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"m","type":"macvlan","master":"eth1","ipam":{{"type":"host-local","dataDir":"{}","subnet":"10.40.0.0/24","routes":[{{"dst":"192.168.77.0/24","gw":"172.16.9.1"}}]}}}}"#,
        hl_dir.path.display()
    );
    lab.macvlan("ADD", &conf).run().err(101);
    lab.assert_clean();
    let files: Vec<_> = std::fs::read_dir(hl_dir.path.join("m"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    assert!(files.is_empty(), "host-local still holds {files:?}");
}

#[test]
fn existing_ifname_is_refused_and_cleaned() {
    let lab = Lab::new();
    lab.pod.ip(&[
        "link", "add", "net1", "type", "veth", "peer", "name", "net1p",
    ]);
    let conf = r#"{"cniVersion":"1.0.0","name":"m","type":"macvlan","master":"eth1","ipam":{"type":"whereabouts","range":"10.200.5.0/24"}}"#;
    let msg = lab.macvlan("ADD", conf).run().err(4);
    assert!(msg.contains("net1"), "{msg}");
    assert_eq!(lab.pod.link_names(), ["lo", "net1", "net1p"]);
    lab.pod.ip(&["link", "del", "net1"]);
    lab.assert_no_allocation();
}

#[test]
fn del_twice_and_after_netns_is_gone() {
    let lab = Lab::new();
    let add = lab.macvlan("ADD", SEED_NAD);
    add.run().ok();
    let del = add.clone_with("DEL");
    del.run().ok();
    del.run().ok();

    // A fresh pod whose namespace disappears before DEL.
    let pod2 = Netns::new("mgp");
    let add2 = lab.macvlan("ADD", SEED_NAD).pod(&pod2);
    add2.run().ok();
    lab.pod.path(); // keep the first pod alive
    std::process::Command::new("ip")
        .args(["netns", "del", &pod2.name])
        .status()
        .unwrap();
    assert!(!pod2.path().exists());
    let del2 = add2.clone_with("DEL");
    del2.run().ok();
    del2.run().ok();
    // Its allocation was released despite the missing netns.
    lab.assert_no_allocation();
    // DEL without CNI_NETNS at all is fine too.
    del2.unset("CNI_NETNS").run().ok();
    lab.assert_clean();
}

#[test]
fn del_of_a_non_namespace_path_is_code_8() {
    let lab = Lab::new();
    let f = TempDir::new("mgnotns");
    let p = f.path.join("netns");
    std::fs::write(&p, b"").unwrap();
    let inv = lab
        .macvlan("DEL", SEED_NAD)
        .set("CNI_NETNS", &p.display().to_string());
    inv.run().err(8);
}

#[test]
fn check_passes_then_fails_after_address_removed() {
    let lab = Lab::new();
    let hl_dir = TempDir::new("mghl");
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"chk","type":"macvlan","master":"eth1","mode":"vepa","ipam":{{"type":"host-local","dataDir":"{}","subnet":"10.41.0.0/24","gateway":"10.41.0.1","routes":[{{"dst":"0.0.0.0/0"}}]}}}}"#,
        hl_dir.path.display()
    );
    let add = lab.macvlan("ADD", &conf);
    let r = add.run();
    let prev = r.ok().clone();
    let addr = prev["ips"][0]["address"].as_str().unwrap().to_string();
    let check = add
        .clone_with("CHECK")
        .with_stdin(&with_prev_result(&conf, &prev));
    check.run().ok();

    lab.pod.ip(&["addr", "del", &addr, "dev", "net1"]);
    let msg = check.run().err(102);
    assert!(msg.contains(&addr), "{msg}");

    // CHECK without prevResult is an invalid config.
    add.clone_with("CHECK").run().err(7);

    let del = add
        .clone_with("DEL")
        .with_stdin(&with_prev_result(&conf, &prev));
    del.run().ok();
    lab.assert_clean();
}

#[test]
fn check_detects_mode_and_mac_mismatch() {
    let lab = Lab::new();
    // The reference static IPAM (Debian 1.1.1) stops at 1.0.0.
    let conf = static_ipam("1.0.0", json!({"mode": "private"}));
    let add = lab.macvlan("ADD", &conf);
    let r = add.run();
    let prev = r.ok().clone();
    // Same link, but the config now says bridge.
    let other_mode = conf.replace("private", "bridge");
    let msg = add
        .clone_with("CHECK")
        .with_stdin(&with_prev_result(&other_mode, &prev))
        .run()
        .err(102);
    assert!(msg.contains("mode"), "{msg}");
    let mut wrong_mac = prev.clone();
    wrong_mac["interfaces"][0]["mac"] = json!("02:00:00:00:00:99");
    let msg = add
        .clone_with("CHECK")
        .with_stdin(&with_prev_result(&conf, &wrong_mac))
        .run()
        .err(102);
    assert!(msg.contains("MAC"), "{msg}");
    add.clone_with("DEL").run().ok();
    lab.assert_clean();
}

#[test]
fn result_shape_per_version() {
    for v in ALL_VERSIONS {
        let lab = Lab::new();
        let conf = format!(
            r#"{{"cniVersion":"{v}","name":"mv","type":"macvlan","master":"eth1","ipam":{{"type":"whereabouts","range":"10.200.5.0/24","gateway":"10.200.5.254"}}}}"#
        );
        let add = lab.macvlan("ADD", &conf);
        let r = add.run();
        let res = r.ok().clone();
        assert_eq!(res["cniVersion"], *v);
        let mut keys: Vec<String> = res.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        match *v {
            "0.1.0" | "0.2.0" => {
                assert_eq!(keys, ["cniVersion", "dns", "ip4"], "{v}: {res}");
                assert_eq!(res["ip4"]["ip"], "10.200.5.1/24");
                assert_eq!(res["ip4"]["gateway"], "10.200.5.254");
            }
            "0.3.0" | "0.3.1" | "0.4.0" => {
                assert_eq!(
                    keys,
                    ["cniVersion", "dns", "interfaces", "ips"],
                    "{v}: {res}"
                );
                assert_eq!(res["ips"][0]["version"], "4");
                assert_eq!(res["ips"][0]["interface"], 0);
                assert_eq!(res["interfaces"][0]["sandbox"], lab.pod.path_str());
            }
            _ => {
                assert_eq!(
                    keys,
                    ["cniVersion", "dns", "interfaces", "ips"],
                    "{v}: {res}"
                );
                assert!(res["ips"][0].get("version").is_none());
                let mtu = res["interfaces"][0].get("mtu").cloned();
                if *v == "1.1.0" {
                    assert_eq!(mtu, Some(json!(1500)), "1.1.0 reports the MTU");
                } else {
                    assert_eq!(mtu, None);
                }
                assert_eq!(res["ips"][0]["gateway"], "10.200.5.254");
            }
        }
        assert_eq!(lab.pod.addrs("net1"), ["10.200.5.1/24"]);
        let with_prev = with_prev_result(&conf, &res);
        if crate_version_at_least(v, "0.4.0") {
            add.clone_with("CHECK").with_stdin(&with_prev).run().ok();
        } else {
            add.clone_with("CHECK").with_stdin(&with_prev).run().err(1);
        }
        if crate_version_at_least(v, "1.1.0") {
            add.clone_with("STATUS").run().ok();
        } else {
            add.clone_with("STATUS").run().err(1);
        }
        add.clone_with("DEL").with_stdin(&with_prev).run().ok();
        lab.assert_clean();
        lab.assert_no_allocation();
    }
}

fn crate_version_at_least(v: &str, min: &str) -> bool {
    let p = |s: &str| -> Vec<u32> { s.split('.').map(|x| x.parse().unwrap()).collect() };
    p(v) >= p(min)
}

#[test]
fn version_verb() {
    let cni = CniPath::new();
    for name in ["macvlan", "mignet-macvlan"] {
        let r = Invocation::new(cni.bin(name), "VERSION", &cni, r#"{"cniVersion":"0.3.1"}"#).run();
        let v = r.ok();
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["supportedVersions"], json!(ALL_VERSIONS));
    }
}

#[test]
fn default_master_is_the_default_route_interface() {
    let node = Node::new().with_default_route();
    let pod = Netns::new("mgp");
    let cni = CniPath::new();
    let conf = static_ipam("1.0.0", json!({"master": ""}));
    let add = Invocation::new(cni.bin("macvlan"), "ADD", &cni, &conf)
        .pod(&pod)
        .on_node(&node.ns);
    add.run().ok();
    let link = pod.link("net1").unwrap();
    assert_eq!(link["linkinfo"]["info_kind"], "macvlan");
    // The link's parent is eth1 of the node (shown as link_index in the node ns).
    let eth1 = node.ns.link("eth1").unwrap();
    assert_eq!(link["link_index"], eth1["ifindex"]);
    add.clone_with("DEL").run().ok();
    assert_eq!(pod.link_names(), ["lo"]);
}

#[test]
fn link_in_container_uses_a_master_inside_the_pod() {
    let node = Node::new();
    let pod = Netns::new("mgp");
    pod.ip(&[
        "link", "add", "eth2", "type", "veth", "peer", "name", "eth2p",
    ]);
    pod.ip(&["link", "set", "eth2", "up"]);
    let cni = CniPath::new();
    let conf = static_ipam("1.0.0", json!({"master": "eth2", "linkInContainer": true}));
    let add = Invocation::new(cni.bin("macvlan"), "ADD", &cni, &conf)
        .pod(&pod)
        .on_node(&node.ns);
    let r = add.run();
    let prev = r.ok().clone();
    let link = pod.link("net1").unwrap();
    assert_eq!(link["link"], "eth2");
    add.clone_with("CHECK")
        .with_stdin(&with_prev_result(&conf, &prev))
        .run()
        .ok();
    // eth2 does not exist on the node: without linkInContainer that is code 7.
    let host_side = conf.replace("\"linkInContainer\":true", "\"linkInContainer\":false");
    Invocation::new(cni.bin("macvlan"), "ADD", &cni, &host_side)
        .pod(&pod)
        .set("CNI_IFNAME", "net2")
        .on_node(&node.ns)
        .run()
        .err(7);
    add.clone_with("DEL").run().ok();
    assert_eq!(pod.link_names(), ["eth2", "eth2p", "lo"]);
}

#[test]
fn gc_and_status_are_forwarded_to_ipam() {
    let lab = Lab::new();
    let conf = r#"{"cniVersion":"1.1.0","name":"gcnet","type":"macvlan","master":"eth1","ipam":{"type":"whereabouts","range":"10.200.5.0/24"}}"#;
    let add = lab.macvlan("ADD", conf);
    add.run().ok();
    lab.macvlan("STATUS", conf).run().ok();
    // A node without the master is not ready (code 50, naming it).
    let msg = lab
        .macvlan("STATUS", &conf.replace("eth1", "eth7"))
        .run()
        .err(50);
    assert!(msg.contains("eth7"), "{msg}");
    // GC with an empty valid-attachments list frees the allocation (the link
    // itself is the runtime's to DEL; here we only look at IPAM).
    let gc_conf = r#"{"cniVersion":"1.1.0","name":"gcnet","type":"macvlan","master":"eth1","ipam":{"type":"whereabouts","range":"10.200.5.0/24"},"cni.dev/valid-attachments":[]}"#;
    lab.macvlan("GC", gc_conf)
        .unset("CNI_NETNS")
        .unset("CNI_IFNAME")
        .unset("CNI_CONTAINERID")
        .run()
        .ok();
    // The address is free again even though the link still exists.
    let pod2 = Netns::new("mgp");
    let r = lab.macvlan("ADD", conf).pod(&pod2).run();
    assert_eq!(r.ok()["ips"][0]["address"], "10.200.5.1/24");
    // GC needs 1.1.0.
    lab.macvlan("GC", &conf.replace("1.1.0", "1.0.0"))
        .run()
        .err(1);
}

#[test]
fn ipv6_with_gateway_is_usable_when_add_returns() {
    let lab = Lab::new();
    let conf = json!({
        "cniVersion": "1.0.0", "name": "v6", "type": "macvlan", "master": "eth1",
        "ipam": {"type": "static",
                 "addresses": [{"address": "fd00:40::5/64", "gateway": "fd00:40::1"}],
                 "routes": [{"dst": "::/0"}]}
    })
    .to_string();
    let add = lab.macvlan("ADD", &conf);
    let r = add.run();
    let res = r.ok().clone();
    assert_eq!(res["ips"][0]["address"], "fd00:40::5/64");
    // DAD has finished: the address is not tentative, so it can be bound.
    let addrs = lab.pod.ip(&["-6", "addr", "show", "dev", "net1"]);
    assert!(addrs.contains("fd00:40::5/64"), "{addrs}");
    assert!(!addrs.contains("tentative"), "{addrs}");
    assert_eq!(
        lab.pod.routes("net1"),
        ["::/0 via fd00:40::1", "fd00:40::/64"]
    );
    // Bind from a short-lived thread that entered the pod namespace.
    let pod_ns = std::fs::File::open(lab.pod.path()).unwrap();
    let bound = std::thread::spawn(move || {
        nix::sched::setns(&pod_ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        std::net::TcpListener::bind("[fd00:40::5]:0").map(|_| ())
    })
    .join()
    .unwrap();
    assert!(bound.is_ok(), "{bound:?}");
    add.clone_with("CHECK")
        .with_stdin(&with_prev_result(&conf, &res))
        .run()
        .ok();
    add.clone_with("DEL").run().ok();
    lab.assert_clean();
}

#[test]
fn del_removes_the_link_even_when_ipam_del_fails() {
    let lab = Lab::new();
    let conf = static_ipam("1.0.0", json!({}));
    let add = lab.macvlan("ADD", &conf);
    add.run().ok();
    // The IPAM named at DEL time cannot be found: its error is reported, but
    // the link is deleted anyway (DEL is best effort and collects errors).
    let broken = conf.replace("\"static\"", "\"no-such-ipam\"");
    let msg = add.clone_with("DEL").with_stdin(&broken).run().err(7);
    assert!(msg.contains("no-such-ipam"), "{msg}");
    lab.assert_clean();
}

#[test]
fn parallel_adds_and_dels_on_one_node() {
    const N: usize = 12;
    let lab = Lab::new();
    let pods: Vec<Netns> = (0..N).map(|_| Netns::new("mgp")).collect();
    let invs: Vec<Invocation> = pods
        .iter()
        .map(|p| lab.macvlan("ADD", SEED_NAD).pod(p))
        .collect();
    // All ADD processes at once: temporary names, renames and the shared
    // IPAM store must not collide.
    let children: Vec<_> = invs.iter().map(|i| (i, i.spawn())).collect();
    let mut ips = Vec::new();
    for (inv, mut child) in children {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(inv.stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        ips.push(v["ips"][0]["address"].as_str().unwrap().to_string());
    }
    let mut uniq = ips.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), N, "{ips:?}");
    for (p, ip) in pods.iter().zip(&ips) {
        assert_eq!(p.addrs("net1"), std::slice::from_ref(ip));
    }
    assert_eq!(lab.node.ns.link_names(), ["eth1", "eth1p", "lo"]);
    let dels: Vec<_> = invs.iter().map(|i| i.clone_with("DEL")).collect();
    let children: Vec<_> = dels.iter().map(|d| (d, d.spawn())).collect();
    for (d, mut child) in children {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(d.stdin.as_bytes())
            .unwrap();
        assert!(child.wait_with_output().unwrap().status.success());
    }
    for p in &pods {
        assert_eq!(p.link_names(), ["lo"]);
    }
    lab.assert_no_allocation();
}

#[test]
fn ipam_config_errors_and_exhaustion_leave_no_link() {
    let lab = Lab::new();
    let with_ipam = |ipam: &str| {
        format!(
            r#"{{"cniVersion":"1.0.0","name":"m","type":"macvlan","master":"eth1","ipam":{ipam}}}"#
        )
    };
    for (ipam, code, field) in [
        (
            r#"{"type":"whereabouts","range":"10.200.5.0/33"}"#,
            7,
            "range",
        ),
        (
            r#"{"type":"whereabouts","range":"10.200.5.0/24","range_start":"10.9.0.1"}"#,
            7,
            "range_start",
        ),
    ] {
        let msg = lab.macvlan("ADD", &with_ipam(ipam)).run().err(code);
        assert!(msg.contains(field), "{ipam}: {msg}");
        lab.assert_clean();
    }
    // A /30 has two usable addresses; the third ADD finds the range full.
    let small = with_ipam(r#"{"type":"whereabouts","range":"10.200.9.0/30"}"#);
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("mgp")).collect();
    let adds: Vec<Invocation> = pods
        .iter()
        .map(|p| lab.macvlan("ADD", &small).pod(p))
        .collect();
    adds[0].run().ok();
    adds[1].run().ok();
    let msg = adds[2].run().err(100);
    assert!(msg.contains("10.200.9.0/30"), "{msg}");
    assert_eq!(pods[2].link_names(), ["lo"], "the failed ADD left its link");
    for a in &adds {
        a.clone_with("DEL").run().ok();
    }
    lab.assert_clean();
}
