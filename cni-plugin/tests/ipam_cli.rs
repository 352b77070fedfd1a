//! The `mignet-ipam` binary driven like a runtime would: ADD, DEL, CHECK,
//! STATUS, GC, idempotency, exhaustion, bad inputs, dual stack, IPv6.

mod ipam_common;

use ipam_common::*;
use serde_json::Value;

const SEED_RANGE: &str = r#""range":"10.200.5.0/24""#;

#[test]
fn add_check_del_roundtrip_on_the_seed_range() {
    let s = StoreDir::new("rt");
    let c = conf("0.3.1", &s, SEED_RANGE);
    let r = cni("ADD", "ctr1", "net1", "", &c);
    assert!(r.ok, "{}", r.stdout);
    assert_eq!(r.addresses(), vec!["10.200.5.1/24"]);
    assert_eq!(r.json["cniVersion"], "0.3.1");
    // An IPAM result carries no interface index (SPEC §4) and no gateway
    // when none is configured.
    assert!(r.json["ips"][0].get("interface").is_none(), "{}", r.stdout);
    assert!(r.json["ips"][0].get("gateway").is_none(), "{}", r.stdout);
    assert!(r.json.get("interfaces").is_none(), "{}", r.stdout);

    let pool = s.pool("10.200.5.0-24");
    assert_eq!(pool.len(), 1);
    assert_eq!(pool[&1]["id"], "ctr1");
    assert_eq!(pool[&1]["ifname"], "net1");

    let c040 = conf("0.4.0", &s, SEED_RANGE);
    ok("CHECK", "ctr1", "net1", &c040);
    let r = cni("CHECK", "ctr9", "net1", "", &c040);
    assert!(!r.ok);
    assert_eq!(r.code(), 102);
    assert!(
        r.msg().contains("ctr9") && r.msg().contains("10.200.5.0/24"),
        "{}",
        r.msg()
    );

    ok("DEL", "ctr1", "net1", &c);
    assert!(s.pool("10.200.5.0-24").is_empty());
    // DEL is idempotent, and DEL of something never added succeeds.
    ok("DEL", "ctr1", "net1", &c);
    ok("DEL", "never", "net1", &c);
    let r = cni("CHECK", "ctr1", "net1", "", &c040);
    assert_eq!(r.code(), 102, "{}", r.stdout);
}

#[test]
fn check_compares_against_prev_result() {
    let s = StoreDir::new("prev");
    let c = conf("1.0.0", &s, SEED_RANGE);
    assert_eq!(add_ok("c1", "net1", "", &c), vec!["10.200.5.1/24"]);
    let with_prev = |addr: &str| {
        let mut v: Value = serde_json::from_str(&c).unwrap();
        v["prevResult"] = serde_json::json!({"cniVersion":"1.0.0","ips":[{"address":addr}]});
        v.to_string()
    };
    ok("CHECK", "c1", "net1", &with_prev("10.200.5.1/24"));
    let r = cni("CHECK", "c1", "net1", "", &with_prev("10.200.5.9/24"));
    assert_eq!(r.code(), 102, "{}", r.stdout);
    assert!(
        r.msg().contains("10.200.5.1") && r.msg().contains("prevResult"),
        "{}",
        r.msg()
    );
}

#[test]
fn re_add_is_idempotent_per_pod_and_per_container() {
    let s = StoreDir::new("idem");
    let c = conf("1.0.0", &s, SEED_RANGE);
    let pod = "IgnoreUnknown=true;K8S_POD_NAMESPACE=ns1;K8S_POD_NAME=agent-a;K8S_POD_INFRA_CONTAINER_ID=x";
    assert_eq!(add_ok("sandbox1", "net1", pod, &c), vec!["10.200.5.1/24"]);
    assert_eq!(add_ok("sandbox1", "net1", pod, &c), vec!["10.200.5.1/24"]);
    assert_eq!(s.pool("10.200.5.0-24")[&1]["podref"], "ns1/agent-a");
    // The pod's new sandbox keeps its address (whereabouts #291).
    assert_eq!(add_ok("sandbox2", "net1", pod, &c), vec!["10.200.5.1/24"]);
    assert_eq!(s.pool("10.200.5.0-24")[&1]["id"], "sandbox2");
    // The old sandbox's DEL must not free the address the new one holds.
    ok("DEL", "sandbox1", "net1", &c);
    assert_eq!(s.pool("10.200.5.0-24").len(), 1);
    // Another ifname of the same pod is another address.
    assert_eq!(add_ok("sandbox2", "net2", pod, &c), vec!["10.200.5.2/24"]);
    // Without a pod, the container ID keys the allocation.
    assert_eq!(add_ok("bare", "net1", "", &c), vec!["10.200.5.3/24"]);
    assert_eq!(add_ok("bare", "net1", "", &c), vec!["10.200.5.3/24"]);
    assert_eq!(s.pool("10.200.5.0-24").len(), 3);
    // A freed address is the next one handed out (lowest free).
    ok("DEL", "sandbox2", "net1", &c);
    assert_eq!(add_ok("late", "net1", "", &c), vec!["10.200.5.1/24"]);
}

#[test]
fn exhaustion_names_the_range_and_writes_nothing() {
    let s = StoreDir::new("exh");
    let c = conf(
        "1.0.0",
        &s,
        r#""range":"10.0.0.0/29","exclude":["10.0.0.2/31"]"#,
    );
    // /29 = .1-.6 usable, minus .2 and .3.
    let got: Vec<String> = (0..4)
        .map(|i| add_ok(&format!("c{i}"), "net1", "", &c).remove(0))
        .collect();
    assert_eq!(
        got,
        ["10.0.0.1/29", "10.0.0.4/29", "10.0.0.5/29", "10.0.0.6/29"]
    );
    let before = std::fs::read(s.path().join("10.0.0.0-29.json")).unwrap();
    let r = cni("ADD", "c-extra", "net1", "", &c);
    assert!(!r.ok);
    assert_eq!(r.code(), 100, "{}", r.stdout);
    assert!(
        r.msg().contains("ipam.range") && r.msg().contains("10.0.0.0/29"),
        "{}",
        r.msg()
    );
    assert_eq!(
        std::fs::read(s.path().join("10.0.0.0-29.json")).unwrap(),
        before
    );
    assert!(!s.path().join("10.0.0.0-29.json.tmp").exists());

    // Dual stack with the v4 side full: the v6 pool must not keep a half-made allocation.
    let s2 = StoreDir::new("exh2");
    let c2 = conf(
        "1.0.0",
        &s2,
        r#""ipRanges":[{"range":"fd00:5::/64"},{"range":"10.0.0.0/30"}]"#,
    );
    add_ok("a", "net1", "", &c2);
    add_ok("b", "net1", "", &c2);
    let r = cni("ADD", "c", "net1", "", &c2);
    assert_eq!(r.code(), 100, "{}", r.stdout);
    assert!(
        r.msg().contains("ipam.ipRanges[1].range") && r.msg().contains("10.0.0.0/30"),
        "{}",
        r.msg()
    );
    assert_eq!(s2.pool("fd00-5---64").len(), 2);
    assert_eq!(s2.pool("10.0.0.0-30").len(), 2);
}

#[test]
fn bad_inputs_get_the_right_code_and_leave_no_allocation() {
    let s = StoreDir::new("bad");
    let good = conf("1.0.0", &s, SEED_RANGE);
    let cases: Vec<(String, u64, &str)> = vec![
        (
            r#"{"cniVersion":"1.0.0","name":"x","ipam":{"type":"#.into(),
            6,
            "decode",
        ),
        (
            r#"{"cniVersion":"1.0.0","name":"x","type":"macvlan"}"#.into(),
            7,
            "ipam",
        ),
        (
            conf("1.0.0", &s, r#""range":"10.200.5.0/33""#),
            7,
            "ipam.range \"10.200.5.0/33\"",
        ),
        (
            conf("1.0.0", &s, r#""range":"not-a-cidr""#),
            7,
            "ipam.range \"not-a-cidr\"",
        ),
        (
            conf(
                "1.0.0",
                &s,
                r#""range":"10.200.5.0/24","range_start":"10.9.0.1""#,
            ),
            7,
            "invalid ipam.range_start \"10.9.0.1\": outside range 10.200.5.0/24",
        ),
        (
            conf(
                "1.0.0",
                &s,
                r#""range":"10.200.5.0/24","range_end":"10.200.6.1""#,
            ),
            7,
            "ipam.range_end \"10.200.6.1\"",
        ),
        (
            conf(
                "1.0.0",
                &s,
                r#""range":"10.200.5.0/24","exclude":["10.300.0.0/16"]"#,
            ),
            7,
            "ipam.exclude[0]",
        ),
        (
            conf("1.0.0", &s, r#""range":"10.200.5.0/24","gateway":"gw""#),
            7,
            "ipam.gateway \"gw\"",
        ),
        (
            conf(
                "1.0.0",
                &s,
                r#""ipRanges":[{"range":"10.200.5.0/24"},{"range":"10.200.5.128/25"}]"#,
            ),
            7,
            "ipam.ipRanges[1].range",
        ),
        (
            conf(
                "1.0.0",
                &s,
                r#""range":"10.200.5.0/24","network_name":"a/b""#,
            ),
            7,
            "ipam.network_name",
        ),
        (
            conf(
                "1.0.0",
                &s,
                r#""range":"10.200.5.0/24","routes":[{"dst":"x"}]"#,
            ),
            7,
            "ipam.routes",
        ),
        (
            conf(
                "1.0.0",
                &s,
                r#""range":"10.200.5.0/24","addresses":[{"address":"10.200.5.9/24"}]"#,
            ),
            2,
            "ipam.addresses",
        ),
        (
            good.replace(r#""type":"whereabouts""#, r#""type":"host-local""#),
            7,
            "ipam.type \"host-local\"",
        ),
        (good.replace(r#""1.0.0""#, r#""9.9.9""#), 1, "incompatible"),
    ];
    for (stdin, code, needle) in &cases {
        let r = cni("ADD", "bad1", "net1", "", stdin);
        assert!(!r.ok, "accepted: {stdin}");
        assert_eq!(r.code(), *code, "{stdin}: {}", r.stdout);
        assert!(
            r.msg().contains(needle),
            "{stdin}: message {:?} lacks {needle:?}",
            r.msg()
        );
        assert_eq!(s.total_allocations(), 0, "{stdin} left an allocation");
    }
    // Missing CNI_IFNAME is the runtime's mistake: code 4, nothing allocated.
    let out = command("ADD", "bad2", "net1", "")
        .env_remove("CNI_IFNAME")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let r = reply(&out);
    assert_eq!(r.code(), 4, "{}", r.stdout);
    assert_eq!(s.total_allocations(), 0);
    // And the good config still works afterwards.
    assert_eq!(add_ok("good", "net1", "", &good), vec!["10.200.5.1/24"]);
}

#[test]
fn dual_stack_ip_ranges_with_gateway_routes_dns() {
    let s = StoreDir::new("dual");
    let c = conf(
        "1.1.0",
        &s,
        r#""range":"10.200.5.0/24","gateway":"10.200.5.1",
           "ipRanges":[{"range":"fd00:200:5::/64","exclude":["fd00:200:5::1/128"]}],
           "routes":[{"dst":"10.201.0.0/16"}],"dns":{"nameservers":["10.200.5.53"]}"#,
    );
    let r = cni("ADD", "d1", "net1", "", &c);
    assert!(r.ok, "{}", r.stdout);
    assert_eq!(r.addresses(), vec!["10.200.5.2/24", "fd00:200:5::2/64"]);
    // The gateway is skipped for allocation and attached only to its family.
    assert_eq!(r.json["ips"][0]["gateway"], "10.200.5.1");
    assert!(r.json["ips"][1].get("gateway").is_none(), "{}", r.stdout);
    assert_eq!(r.json["routes"][0]["dst"], "10.201.0.0/16");
    assert_eq!(r.json["dns"]["nameservers"][0], "10.200.5.53");
    assert_eq!(s.pool("10.200.5.0-24").len(), 1);
    assert_eq!(s.pool("fd00-200-5---64").len(), 1);
    // 0.3.x results carry the address family.
    let c031 = c.replace(r#""1.1.0""#, r#""0.3.1""#);
    let r = cni("ADD", "d1", "net1", "", &c031);
    assert_eq!(r.json["ips"][1]["version"], "6", "{}", r.stdout);
    ok("DEL", "d1", "net1", &c);
    assert_eq!(s.total_allocations(), 0);
}

#[test]
fn ipv6_64_range_from_the_top_and_full_offsets() {
    let s = StoreDir::new("v6");
    let c = conf(
        "1.0.0",
        &s,
        r#""range":"fd00:1:2:3::/64","range_start":"fd00:1:2:3:ffff:ffff:ffff:fff0""#,
    );
    let got: Vec<String> = (0..3)
        .map(|i| add_ok(&format!("v{i}"), "net1", "", &c).remove(0))
        .collect();
    assert_eq!(
        got,
        [
            "fd00:1:2:3:ffff:ffff:ffff:fff0/64",
            "fd00:1:2:3:ffff:ffff:ffff:fff1/64",
            "fd00:1:2:3:ffff:ffff:ffff:fff2/64"
        ]
    );
    // Offsets above 2^63 are stored exactly (whereabouts truncates them).
    let pool = s.pool("fd00-1-2-3---64");
    assert_eq!(pool.keys().next().copied(), Some(0xffff_ffff_ffff_fff0));
    // The top of a /64 is reachable: the a-b form up to all-ones minus one.
    let s2 = StoreDir::new("v6top");
    let c2 = conf(
        "1.0.0",
        &s2,
        r#""range":"fd00::ffff:ffff:ffff:fffd-fd00::ffff:ffff:ffff:ffff/64""#,
    );
    assert_eq!(
        add_ok("t1", "net1", "", &c2),
        vec!["fd00::ffff:ffff:ffff:fffd/64"]
    );
    assert_eq!(
        add_ok("t2", "net1", "", &c2),
        vec!["fd00::ffff:ffff:ffff:fffe/64"]
    );
    assert_eq!(cni("ADD", "t3", "net1", "", &c2).code(), 100);
}

#[test]
fn gc_keeps_exactly_the_valid_attachments() {
    let s = StoreDir::new("gc");
    let c = conf(
        "1.1.0",
        &s,
        r#""ipRanges":[{"range":"10.200.5.0/24"},{"range":"fd00:9::/64"}]"#,
    );
    for cid in ["a", "b", "c", "d"] {
        add_ok(cid, "net1", "", &c);
    }
    let mut v: Value = serde_json::from_str(&c).unwrap();
    v["cni.dev/valid-attachments"] = serde_json::json!([{"containerID":"b","ifname":"net1"},{"containerID":"a","ifname":"other"}]);
    // The 1.1.0 tag's key counts too (libcni sends both).
    v["cni.dev/attachments"] = serde_json::json!([{"containerID":"d","ifname":"net1"}]);
    ok("GC", "", "", &v.to_string());
    for pool in ["10.200.5.0-24", "fd00-9---64"] {
        let ids: Vec<String> = s
            .pool(pool)
            .values()
            .map(|a| a["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["b", "d"], "{pool}");
    }
    // GC without any list would free everything: refused.
    let r = cni("GC", "", "", "", &c);
    assert_eq!(r.code(), 7, "{}", r.stdout);
    assert!(r.msg().contains("cni.dev/valid-attachments"), "{}", r.msg());
    assert_eq!(s.total_allocations(), 4);
    // An empty list frees everything.
    v["cni.dev/valid-attachments"] = serde_json::json!([]);
    v["cni.dev/attachments"] = serde_json::json!([]);
    ok("GC", "", "", &v.to_string());
    assert_eq!(s.total_allocations(), 0);
}

#[test]
fn status_reports_an_unusable_store() {
    let s = StoreDir::new("status");
    let c = conf("1.1.0", &s, SEED_RANGE);
    ok("STATUS", "", "", &c);
    assert!(s.path().is_dir(), "STATUS prepares the store directory");
    // A regular file where the store's parent should be: code 50.
    let file = s.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let bad = c.replace(
        &s.path().display().to_string(),
        &file.join("store").display().to_string(),
    );
    let r = cni("STATUS", "", "", "", &bad);
    assert_eq!(r.code(), 50, "{}", r.stdout);
    assert!(r.msg().contains("plain-file"), "{}", r.msg());
}

#[test]
fn network_names_are_independent_pools() {
    let s = StoreDir::new("nn");
    let a = conf(
        "1.0.0",
        &s,
        r#""range":"10.200.5.0/24","network_name":"blue""#,
    );
    let b = conf(
        "1.0.0",
        &s,
        r#""range":"10.200.5.0/24","network_name":"green""#,
    );
    assert_eq!(add_ok("x", "net1", "", &a), vec!["10.200.5.1/24"]);
    assert_eq!(add_ok("y", "net1", "", &b), vec!["10.200.5.1/24"]);
    assert_eq!(s.pool("blue-10.200.5.0-24").len(), 1);
    assert_eq!(s.pool("green-10.200.5.0-24").len(), 1);
}

#[test]
fn store_dir_from_the_environment_when_the_config_has_none() {
    let s = StoreDir::new("env");
    let c = r#"{"cniVersion":"0.3.1","name":"migration-bridge","type":"macvlan","master":"eth1","mode":"bridge","ipam":{"type":"whereabouts","range":"10.200.5.0/24"}}"#;
    let out = {
        use std::io::Write;
        let mut child = command("ADD", "envc", "net1", "")
            .env("MIGNET_IPAM_STORE_DIR", s.path())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(c.as_bytes()).unwrap();
        child.wait_with_output().unwrap()
    };
    let r = reply(&out);
    assert!(r.ok, "{}", r.stdout);
    assert_eq!(s.pool("10.200.5.0-24")[&1]["id"], "envc");
}

/// whereabouts' flat file named by `configuration_path` (tests cannot
/// write /etc): an invalid or unreadable one fails with code 7 naming the
/// file, a flat file without a kubeconfig or with `datastore: etcd` is
/// refused, and none of them falls back to the file store.
#[test]
fn an_invalid_whereabouts_flat_file_fails_naming_its_path() {
    let s = StoreDir::new("flat");
    std::fs::create_dir_all(s.path()).unwrap();
    let flat = s.path().join("whereabouts.conf");
    // The seed's NAD, verbatim but for configuration_path, on the
    // environment's default store directory (as the lab runs it).
    let seed = format!(
        r#"{{"cniVersion":"0.3.1","name":"migration-bridge","type":"macvlan","master":"eth1","mode":"bridge","ipam":{{"type":"whereabouts","range":"10.200.5.0/24","configuration_path":"{}"}}}}"#,
        flat.display()
    );
    let store = s.path().join("store");
    let run = |verb: &str| {
        let mut c = command(verb, "ctr1", "net1", "");
        c.env("MIGNET_IPAM_STORE_DIR", &store);
        let mut child = c.spawn().unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(seed.as_bytes())
            .unwrap();
        reply(&child.wait_with_output().unwrap())
    };
    let path = flat.display().to_string();

    std::fs::write(&flat, "{\"datastore\": \"kubernetes\", ").unwrap();
    for verb in ["ADD", "DEL"] {
        let r = run(verb);
        assert_eq!(r.code(), 7, "{verb}: {}", r.stdout);
        assert!(
            r.msg()
                .starts_with(&format!("whereabouts flat file {path}: not valid JSON")),
            "{}",
            r.msg()
        );
    }

    std::fs::write(&flat, r#"{"kubernetes": "/etc/k.kubeconfig"}"#).unwrap();
    let r = run("ADD");
    assert_eq!(r.code(), 7, "{}", r.stdout);
    assert_eq!(
        r.msg(),
        format!(
            "whereabouts flat file {path}: invalid kubernetes \"/etc/k.kubeconfig\": must be an object"
        )
    );

    // Present but not readable as a file (a directory): code 7, not "absent".
    std::fs::remove_file(&flat).unwrap();
    std::fs::create_dir(&flat).unwrap();
    let r = run("ADD");
    assert_eq!(r.code(), 7, "{}", r.stdout);
    assert!(
        r.msg()
            .starts_with(&format!("whereabouts flat file {path}: cannot read it: ")),
        "{}",
        r.msg()
    );
    std::fs::remove_dir(&flat).unwrap();

    // Valid JSON, but it names no kubeconfig: whereabouts fails there too.
    std::fs::write(
        &flat,
        r#"{"datastore": "kubernetes", "log_level": "debug"}"#,
    )
    .unwrap();
    let r = run("ADD");
    assert_eq!(r.code(), 7, "{}", r.stdout);
    assert!(
        r.msg().starts_with(&format!(
            "whereabouts flat file {path}: no kubernetes.kubeconfig"
        )),
        "{}",
        r.msg()
    );

    // etcd: unsupported (code 2), naming the datastore and the file.
    std::fs::write(
        &flat,
        r#"{"datastore": "etcd", "etcd_host": "10.0.0.1:2379"}"#,
    )
    .unwrap();
    let r = run("ADD");
    assert_eq!(r.code(), 2, "{}", r.stdout);
    assert!(
        r.msg().contains("ipam.datastore") && r.msg().contains(&path) && r.msg().contains("etcd"),
        "{}",
        r.msg()
    );

    // None of these touched the file store.
    assert!(!store.exists(), "the file store was used");
}
