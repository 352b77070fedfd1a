//! mignet-ipam's Kubernetes store against the real kube-apiserver of
//! tests/k8s/run.sh (fails, naming run.sh, when its environment is missing):
//! `tests/k8s/run.sh cargo test -p mignet-cni --test ipam_k8s`.
//!
//! Every test works in a namespace of its own (the kubeconfig's context
//! namespace is where the store keeps its pools, as in whereabouts).

mod ipam_common;
#[path = "ipam_common/k8s.rs"]
mod k8s;

use ipam_common::{cni, spawn, Reply};
use k8s::TestNs;
use mignet_cni::ipam::config::KubeConf;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn conf(kubeconfig: &Path, ipam: &str) -> String {
    format!(
        r#"{{"cniVersion":"1.0.0","name":"migration-bridge","type":"macvlan","master":"eth1","ipam":{{"type":"whereabouts",{ipam},"kubernetes":{{"kubeconfig":"{}"}}}}}}"#,
        kubeconfig.display()
    )
}

fn pod_args(ns: &str, pod: &str) -> String {
    format!("K8S_POD_NAMESPACE={ns};K8S_POD_NAME={pod}")
}

fn add(cid: &str, args: &str, c: &str) -> Reply {
    cni("ADD", cid, "net1", args, c)
}

fn add_ok(cid: &str, args: &str, c: &str) -> String {
    let r = add(cid, args, c);
    assert!(r.ok, "ADD {cid} failed: {}", r.stdout);
    let a = r.addresses();
    assert_eq!(a.len(), 1, "{}", r.stdout);
    a[0].clone()
}

fn last_octet(addr: &str) -> u128 {
    addr.split('/')
        .next()
        .unwrap()
        .rsplit('.')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The reconciler, as the manager would call it, with the admin identity.
fn reconcile(kubeconfig: &Path, grace: Duration) -> mignet_cni::ipam::kube::ReconcileReport {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (client, ns) = mignet_cni::ipam::kube::connect(&KubeConf {
            kubeconfig: Some(kubeconfig.to_path_buf()),
        })
        .await
        .expect("connect");
        mignet_cni::ipam::kube::reconcile(client, &ns, grace)
            .await
            .expect("reconcile")
    })
}

#[test]
fn three_hundred_parallel_adds_from_six_nodes_are_distinct_and_dels_empty_the_pool() {
    let ns = TestNs::new("ipam-par");
    const NODES: usize = 6;
    const WORKERS: usize = 30;
    const PER_WORKER: usize = 10;
    // Six node identities, each its own ServiceAccount bound to the
    // mignet-ipam ClusterRole of deploy/base/ipam-rbac.yaml.
    let confs: Vec<String> = (0..NODES)
        .map(|n| {
            conf(
                &ns.node_kubeconfig(&format!("node-{n}")),
                r#""range":"10.200.4.0/23""#,
            )
        })
        .collect();

    let t0 = Instant::now();
    let results: Vec<(String, String, String)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let c = &confs[w % NODES];
                let nsname = &ns.name;
                sc.spawn(move || {
                    (0..PER_WORKER)
                        .map(|i| {
                            let pod = format!("pod-{w}-{i}");
                            let cid = format!("cid-{w}-{i}");
                            let args = pod_args(nsname, &pod);
                            let a = add_ok(&cid, &args, c);
                            (cid, args, a)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    eprintln!("300 ADDs, 30-way, 6 nodes: {:?}", t0.elapsed());

    assert_eq!(results.len(), WORKERS * PER_WORKER);
    let distinct: BTreeSet<&str> = results.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(distinct.len(), 300, "duplicate addresses handed out");

    // The pool holds exactly these 300, each under the container that got it.
    let pool = ns.pool("10.200.4.0-23");
    assert_eq!(pool.len(), 300);
    for (cid, args, addr) in &results {
        let ip: std::net::Ipv4Addr = addr.split('/').next().unwrap().parse().unwrap();
        let off = u32::from(ip) as u128 - u32::from(std::net::Ipv4Addr::new(10, 200, 4, 0)) as u128;
        let e = &pool[&off];
        assert_eq!(e["id"], cid.as_str(), "{addr}");
        assert_eq!(e["ifname"], "net1");
        let pod = args.rsplit('=').next().unwrap();
        assert_eq!(e["podref"], format!("{}/{pod}", ns.name));
    }
    // One reservation per address, claimed cluster-wide.
    let orips = ns.orips();
    assert_eq!(orips.len(), 300, "reservations: {:?}", orips.keys());
    for (_, _, addr) in &results {
        assert!(
            orips.contains_key(addr.split('/').next().unwrap()),
            "{addr}"
        );
    }

    // A repeated ADD (same pod and ifname, new sandbox) gets the same address
    // and takes the entry over.
    let (cid, args, addr) = &results[7];
    assert_eq!(&add_ok("cid-new-sandbox", args, &confs[0]), addr);
    let pool = ns.pool("10.200.4.0-23");
    assert_eq!(pool.len(), 300);
    assert!(pool.values().any(|e| e["id"] == "cid-new-sandbox"));
    // The old sandbox's late DEL frees nothing.
    let r = cni("DEL", cid, "net1", args, &confs[1]);
    assert!(r.ok, "{}", r.stdout);
    assert_eq!(ns.pool("10.200.4.0-23").len(), 300);
    // CHECK finds the new sandbox's address.
    let r = cni("CHECK", "cid-new-sandbox", "net1", args, &confs[2]);
    assert!(r.ok, "{}", r.stdout);

    // All DELs, 30-way, empty the pool and drop every reservation.
    std::thread::scope(|sc| {
        for (w, chunk) in results.chunks(PER_WORKER).enumerate() {
            let c = &confs[w % NODES];
            sc.spawn(move || {
                for (i, (cid, args, _)) in chunk.iter().enumerate() {
                    let cid = if w == 0 && i == 7 {
                        "cid-new-sandbox"
                    } else {
                        cid
                    };
                    let r = cni("DEL", cid, "net1", args, c);
                    assert!(r.ok, "DEL {cid}: {}", r.stdout);
                }
            });
        }
    });
    assert!(
        ns.pool("10.200.4.0-23").is_empty(),
        "DELs left {:?}",
        ns.pool("10.200.4.0-23")
    );
    assert!(
        ns.orips().is_empty(),
        "DELs left reservations {:?}",
        ns.orips()
    );
}

#[test]
fn sigkill_mid_add_then_reconcile_and_gc_leave_exactly_the_live_attachments() {
    let ns = TestNs::new("ipam-kill");
    let kc = ns.admin_kubeconfig();
    let c = conf(&kc, r#""range":"10.201.0.0/24""#);

    // Ten completed ADDs whose pods exist.
    let mut live: BTreeMap<String, (String, String)> = BTreeMap::new();
    for i in 0..10 {
        let pod = format!("live-{i}");
        ns.create_pod(&pod);
        let cid = format!("live-cid-{i}");
        let args = pod_args(&ns.name, &pod);
        let a = add_ok(&cid, &args, &c);
        live.insert(cid, (args, a));
    }

    // 40 ADDs of pods that do not exist, SIGKILLed at staggered moments
    // while they connect, read, reserve or write.
    let mut killed = 0;
    let mut children: Vec<_> = (0..40)
        .map(|i| {
            let cid = format!("victim-{i}");
            spawn(
                "ADD",
                &cid,
                "net1",
                &pod_args(&ns.name, &format!("victim-{i}")),
                &c,
            )
        })
        .collect();
    let start = Instant::now();
    for (i, ch) in children.iter_mut().enumerate() {
        let at = Duration::from_millis(5 * i as u64);
        if let Some(w) = at.checked_sub(start.elapsed()) {
            std::thread::sleep(w);
        }
        if ch.try_wait().unwrap().is_none() {
            let _ = ch.kill();
            killed += 1;
        }
    }
    for mut ch in children {
        let _ = ch.wait();
    }
    eprintln!("killed {killed} of 40 ADDs mid-flight");
    assert!(killed > 0, "no ADD was still running when killed");

    // The pool still parses and never holds an address twice.
    let pool = ns.pool("10.201.0.0-24");
    assert!(pool.len() >= 10);
    for (cid, (_, a)) in &live {
        assert_eq!(pool[&last_octet(a)]["id"], cid.as_str());
    }

    // Reconcile: entries of pods that do not exist go, reservations that no
    // entry backs go (grace 0: every ADD is dead by now).
    let rep = reconcile(&kc, Duration::ZERO);
    eprintln!("reconcile: {rep:?}");
    let pool = ns.pool("10.201.0.0-24");
    let got: BTreeSet<String> = pool
        .values()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let want: BTreeSet<String> = live.keys().cloned().collect();
    assert_eq!(
        got, want,
        "reconcile must leave exactly the live attachments"
    );
    let orips: BTreeSet<String> = ns.orips().into_keys().collect();
    let want_orips: BTreeSet<String> = live
        .values()
        .map(|(_, a)| a.split('/').next().unwrap().to_string())
        .collect();
    assert_eq!(orips, want_orips);

    // CNI GC with one live attachment missing from the valid list frees it
    // (and its reservation); the others stay.
    let dropped = "live-cid-3";
    let valid: Vec<String> = live
        .keys()
        .filter(|k| *k != dropped)
        .map(|k| format!(r#"{{"containerID":"{k}","ifname":"net1"}}"#))
        .collect();
    let gc_conf = c.replacen(
        r#""name":"#,
        &format!(
            r#""cni.dev/valid-attachments":[{}],"name":"#,
            valid.join(",")
        ),
        1,
    );
    let gc_conf = gc_conf.replacen(r#""cniVersion":"1.0.0""#, r#""cniVersion":"1.1.0""#, 1);
    let r = cni("GC", "", "", "", &gc_conf);
    assert!(r.ok, "GC: {}", r.stdout);
    let pool = ns.pool("10.201.0.0-24");
    assert_eq!(pool.len(), 9);
    assert!(pool.values().all(|e| e["id"] != dropped));
    assert_eq!(ns.orips().len(), 9);

    // A live pod that reuses a name keeps its address: recreate pod live-5
    // (a new object, new UID); reconcile keeps its entry, and the new
    // sandbox's ADD gets the same address back.
    kubectl_delete_pod(&ns, "live-5");
    ns.create_pod("live-5");
    reconcile(&kc, Duration::ZERO);
    let (args5, addr5) = &live["live-cid-5"];
    assert_eq!(ns.pool("10.201.0.0-24").len(), 9);
    assert_eq!(&add_ok("live-cid-5-new", args5, &c), addr5);
}

fn kubectl_delete_pod(ns: &TestNs, pod: &str) {
    k8s::kubectl(&[
        "delete",
        "pod",
        pod,
        "-n",
        &ns.name,
        "--grace-period=0",
        "--force",
    ]);
}

#[test]
fn a_pool_written_by_whereabouts_is_read_and_kept() {
    let ns = TestNs::new("ipam-wa");
    let kc = ns.admin_kubeconfig();
    // As whereabouts writes them: offsets from the network address, podref
    // `<ns>/<pod>`, no container id in the reservation. The v6 pool holds an
    // offset above 2^63, which whereabouts itself cannot read (its #83).
    let yaml = format!(
        r#"apiVersion: whereabouts.cni.cncf.io/v1alpha1
kind: IPPool
metadata:
  name: 10.202.0.0-24
  namespace: {ns}
spec:
  range: 10.202.0.0/24
  allocations:
    "1":
      id: 4f0c3ab1e1d2
      podref: {ns}/wa-pod-a
      ifname: net1
    "2":
      id: 9b2d77aa0c41
      podref: {ns}/wa-pod-b
      ifname: net1
---
apiVersion: whereabouts.cni.cncf.io/v1alpha1
kind: OverlappingRangeIPReservation
metadata:
  name: 10.202.0.1
  namespace: {ns}
spec:
  podref: {ns}/wa-pod-a
  ifname: net1
---
apiVersion: whereabouts.cni.cncf.io/v1alpha1
kind: OverlappingRangeIPReservation
metadata:
  name: 10.202.0.2
  namespace: {ns}
spec:
  podref: {ns}/wa-pod-b
  ifname: net1
---
apiVersion: whereabouts.cni.cncf.io/v1alpha1
kind: IPPool
metadata:
  name: v6net-fd10---64
  namespace: {ns}
spec:
  range: fd10::/64
  allocations:
    "1":
      id: aaaa
      podref: {ns}/v6-a
      ifname: net1
    "18446744073709551614":
      id: bbbb
      podref: {ns}/v6-b
      ifname: net1
"#,
        ns = ns.name
    );
    k8s::kubectl_in(&["apply", "-f", "-"], Some(&yaml));

    let c = conf(&kc, r#""range":"10.202.0.0/24""#);
    // A new pod gets the lowest free address after whereabouts' two.
    assert_eq!(
        add_ok("new-cid", &pod_args(&ns.name, "new-pod"), &c),
        "10.202.0.3/24"
    );
    // whereabouts' pod A, re-added from a new sandbox, keeps .1.
    assert_eq!(
        add_ok("new-sandbox-a", &pod_args(&ns.name, "wa-pod-a"), &c),
        "10.202.0.1/24"
    );
    // DEL by whereabouts' container id of B frees .2 and its reservation
    // (owned by pod+ifname, as whereabouts writes it).
    let r = cni("DEL", "9b2d77aa0c41", "net1", "", &c);
    assert!(r.ok, "{}", r.stdout);
    let pool = ns.pool("10.202.0.0-24");
    assert_eq!(pool.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(pool[&1]["id"], "new-sandbox-a");
    assert_eq!(pool[&1]["podref"], format!("{}/wa-pod-a", ns.name));
    let orips = ns.orips();
    assert!(!orips.contains_key("10.202.0.2"), "{orips:?}");
    assert!(orips.contains_key("10.202.0.1") && orips.contains_key("10.202.0.3"));
    // The freed address is handed out again, lowest first.
    assert_eq!(
        add_ok("third", &pod_args(&ns.name, "third"), &c),
        "10.202.0.2/24"
    );

    // The v6 pool with a network_name: offsets beyond 64 bits read fully.
    let c6 = conf(&kc, r#""range":"fd10::/64","network_name":"v6net""#);
    assert_eq!(
        add_ok("v6-new", &pod_args(&ns.name, "v6-new"), &c6),
        "fd10::2/64"
    );
    assert_eq!(
        add_ok("v6-b-again", &pod_args(&ns.name, "v6-b"), &c6),
        "fd10::ffff:ffff:ffff:fffe/64"
    );
    let pool = ns.pool("v6net-fd10---64");
    assert_eq!(pool.len(), 3);
    assert_eq!(pool[&((1u128 << 64) - 2)]["id"], "v6-b-again");
    assert!(ns.orips().contains_key("v6net-fd10--2"));
}

#[test]
fn exhaustion_bad_kubeconfig_and_missing_rights_give_clear_codes() {
    let ns = TestNs::new("ipam-err");
    let kc = ns.admin_kubeconfig();
    // A /30 has two usable addresses.
    let c = conf(&kc, r#""range":"10.203.0.0/30""#);
    add_ok("a", &pod_args(&ns.name, "a"), &c);
    add_ok("b", &pod_args(&ns.name, "b"), &c);
    let r = add("c", &pod_args(&ns.name, "c"), &c);
    assert!(!r.ok);
    assert_eq!(r.code(), 100, "{}", r.stdout);
    assert!(
        r.msg().contains("range exhausted") && r.msg().contains("10.203.0.0/30"),
        "{}",
        r.msg()
    );
    // The failed ADD left no entry and no reservation behind.
    assert_eq!(ns.pool("10.203.0.0-30").len(), 2);
    assert_eq!(ns.orips().len(), 2);

    // STATUS answers for a reachable, permitted API.
    let r = cni("STATUS", "", "", "", &c.replacen("1.0.0", "1.1.0", 1));
    assert!(r.ok, "{}", r.stdout);

    // A kubeconfig that does not exist: code 7 naming the key.
    let missing = ns.dir().join("nope.kubeconfig");
    let r = add(
        "d",
        &pod_args(&ns.name, "d"),
        &conf(&missing, r#""range":"10.203.0.0/30""#),
    );
    assert_eq!(r.code(), 7, "{}", r.stdout);
    assert!(
        r.msg().contains("ipam.kubernetes.kubeconfig"),
        "{}",
        r.msg()
    );
    // Garbage in the file: code 7 too.
    let garbage = ns.dir().join("garbage.kubeconfig");
    std::fs::write(&garbage, "{{{ not yaml").unwrap();
    let r = add(
        "d",
        &pod_args(&ns.name, "d"),
        &conf(&garbage, r#""range":"10.203.0.0/30""#),
    );
    assert_eq!(r.code(), 7, "{}", r.stdout);

    // A server nobody listens on: 11 (try again later); STATUS says 50.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dead = ns.token_kubeconfig("dead", "x", &format!("https://127.0.0.1:{port}"));
    let dc = conf(&dead, r#""range":"10.203.0.0/30""#);
    let r = add("d", &pod_args(&ns.name, "d"), &dc);
    assert_eq!(r.code(), 11, "{}", r.stdout);
    let r = cni("STATUS", "", "", "", &dc.replacen("1.0.0", "1.1.0", 1));
    assert_eq!(r.code(), 50, "{}", r.stdout);

    // A wrong token: 5, saying unauthorized.
    let bad = ns.token_kubeconfig("badtoken", "not-a-token", &k8s::bed().server);
    let r = add(
        "d",
        &pod_args(&ns.name, "d"),
        &conf(&bad, r#""range":"10.203.0.0/30""#),
    );
    assert_eq!(r.code(), 5, "{}", r.stdout);
    assert!(r.msg().contains("unauthorized"), "{}", r.msg());

    // An identity without the RBAC of deploy/base/ipam-rbac.yaml: 5, and
    // the message says which rights are missing.
    let sa = "no-rights";
    k8s::kubectl(&["create", "serviceaccount", sa, "-n", &ns.name]);
    let token = k8s::kubectl(&["create", "token", sa, "-n", &ns.name]);
    let weak = ns.token_kubeconfig(sa, token.trim(), &k8s::bed().server);
    let r = add(
        "d",
        &pod_args(&ns.name, "d"),
        &conf(&weak, r#""range":"10.203.0.0/30""#),
    );
    assert_eq!(r.code(), 5, "{}", r.stdout);
    assert!(
        r.msg().contains("forbidden") && r.msg().contains("ippools"),
        "{}",
        r.msg()
    );
    // Nothing changed in the pool through all of this.
    assert_eq!(ns.pool("10.203.0.0-30").len(), 2);
}

/// The CNI installer's kubeconfig writer (deploy/base/cni-installer.yaml,
/// the script between its BEGIN/END markers), run once against a
/// ServiceAccount token and CA laid out as the kubelet mounts them: the
/// kubeconfig it writes drives an ADD, and a rotated token is picked up.
#[test]
fn the_installer_writes_a_kubeconfig_that_works_and_follows_token_rotation() {
    let ns = TestNs::new("ipam-inst");
    let yaml = std::fs::read_to_string(k8s::repo_root().join("deploy/base/cni-installer.yaml"))
        .expect("read cni-installer.yaml");
    let lines: Vec<&str> = yaml
        .lines()
        .skip_while(|l| !l.contains("# BEGIN mignet-ipam kubeconfig writer"))
        .take_while(|l| !l.contains("# END mignet-ipam kubeconfig writer"))
        .collect();
    assert!(
        lines.len() > 10,
        "writer script not found in cni-installer.yaml"
    );
    let indent = lines[0].len() - lines[0].trim_start().len();
    let script: String = lines
        .iter()
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
        .collect();

    // The mount the kubelet provides: token + ca.crt of the mignet-ipam
    // identity (here a ServiceAccount of the test namespace bound to the
    // same ClusterRole).
    let sa_dir = ns.dir().join("serviceaccount");
    let out = ns.dir().join("mignet-ipam.d");
    std::fs::create_dir_all(&sa_dir).unwrap();
    std::fs::copy(&k8s::bed().ca, sa_dir.join("ca.crt")).unwrap();
    let token = |sa: &str| {
        k8s::kubectl(&["create", "token", sa, "-n", &ns.name, "--duration=1h"])
            .trim()
            .to_string()
    };
    ns.node_kubeconfig("cni-node"); // creates the SA and its binding
    let t1 = token("cni-node");
    std::fs::write(sa_dir.join("token"), &t1).unwrap();
    let (host, port) = k8s::bed()
        .server
        .trim_start_matches("https://")
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .unwrap();
    let run_writer = || {
        let o = std::process::Command::new("sh")
            .arg("-ec")
            .arg(&script)
            .env("SA_DIR", &sa_dir)
            .env("OUT_DIR", &out)
            .env("HOST_DIR", &out)
            .env("KUBERNETES_SERVICE_HOST", &host)
            .env("KUBERNETES_SERVICE_PORT", &port)
            .env("IPAM_NAMESPACE", &ns.name)
            .env("ONCE", "1")
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "writer failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run_writer();
    let kc = out.join("mignet-ipam.kubeconfig");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&kc).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the kubeconfig holds a token");
    let text = std::fs::read_to_string(&kc).unwrap();
    assert!(text.contains(&t1));

    // A NAD naming that kubeconfig works: the pool lands in its namespace.
    let c = conf(&kc, r#""range":"10.204.0.0/24""#);
    assert_eq!(
        add_ok("inst-1", &pod_args(&ns.name, "p1"), &c),
        "10.204.0.1/24"
    );
    assert_eq!(ns.pool("10.204.0.0-24").len(), 1);

    // The kubelet rotates the projected token: the next pass rewrites it.
    std::thread::sleep(Duration::from_secs(1)); // a distinct token (iat)
    let t2 = token("cni-node");
    assert_ne!(t1, t2);
    std::fs::write(sa_dir.join("token"), &t2).unwrap();
    run_writer();
    let text = std::fs::read_to_string(&kc).unwrap();
    assert!(text.contains(&t2) && !text.contains(&t1));
    assert_eq!(
        add_ok("inst-2", &pod_args(&ns.name, "p2"), &c),
        "10.204.0.2/24"
    );
}

/// The seed's NAD, verbatim but for `configuration_path` (tests cannot write
/// /etc/cni/net.d/whereabouts.d/whereabouts.conf).
fn seed_nad(flat: &Path) -> String {
    format!(
        r#"{{"cniVersion":"0.3.1","name":"migration-bridge","type":"macvlan","master":"eth1","mode":"bridge","ipam":{{"type":"whereabouts","range":"10.200.5.0/24","configuration_path":"{}"}}}}"#,
        flat.display()
    )
}

/// Run `bin` as a runtime would, with the environment's file store at
/// `store`, so a fall back to the file store would show there.
fn run_bin(bin: &Path, verb: &str, cid: &str, args: &str, store: &Path, stdin: &str) -> Reply {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(bin)
        .env_clear()
        .env("CNI_COMMAND", verb)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", "/var/run/netns/mignet-ipam-test-absent")
        .env("CNI_IFNAME", "net1")
        .env("CNI_PATH", "/nonexistent")
        .env("CNI_ARGS", args)
        .env("MIGNET_IPAM_STORE_DIR", store)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    ipam_common::reply(&child.wait_with_output().unwrap())
}

fn ipam_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_mignet-ipam"))
}

/// The defect: the seed's NAD has no `kubernetes` key. With whereabouts'
/// flat file saying datastore kubernetes and a kubeconfig, the real binary
/// allocates in the IPPool (cluster-wide), and two "nodes" with their own
/// flat file and identity get distinct addresses; the file store stays
/// untouched.
#[test]
fn the_seed_nad_with_a_whereabouts_flat_file_allocates_in_an_ippool() {
    let ns = TestNs::new("ipam-flat");
    let store = ns.dir().join("file-store");
    let nodes: Vec<PathBuf> = (0..2)
        .map(|n| {
            let kc = ns.node_kubeconfig(&format!("flat-node-{n}"));
            let flat = ns
                .dir()
                .join(format!("node-{n}/whereabouts.d/whereabouts.conf"));
            std::fs::create_dir_all(flat.parent().unwrap()).unwrap();
            std::fs::write(
                &flat,
                format!(
                    r#"{{"datastore":"kubernetes","kubernetes":{{"kubeconfig":"{}"}}}}"#,
                    kc.display()
                ),
            )
            .unwrap();
            flat
        })
        .collect();

    let mut got = Vec::new();
    for (n, flat) in nodes.iter().enumerate() {
        let args = pod_args(&ns.name, &format!("virt-launcher-{n}"));
        let r = run_bin(
            ipam_bin(),
            "ADD",
            &format!("cid-{n}"),
            &args,
            &store,
            &seed_nad(flat),
        );
        assert!(r.ok, "ADD on node {n}: {}", r.stdout);
        got.extend(r.addresses());
    }
    assert_eq!(got, ["10.200.5.1/24", "10.200.5.2/24"]);
    let pool = ns.pool("10.200.5.0-24");
    assert_eq!(pool.len(), 2, "{pool:?}");
    assert_eq!(pool[&1]["id"], "cid-0");
    assert_eq!(pool[&1]["podref"], format!("{}/virt-launcher-0", ns.name));
    assert_eq!(pool[&2]["id"], "cid-1");
    let orips = ns.orips();
    assert!(orips.contains_key("10.200.5.1") && orips.contains_key("10.200.5.2"));
    assert!(!store.exists(), "the file store was used");

    // DEL through the same selection frees the IPPool entries.
    for (n, flat) in nodes.iter().enumerate() {
        let r = run_bin(
            ipam_bin(),
            "DEL",
            &format!("cid-{n}"),
            "",
            &store,
            &seed_nad(flat),
        );
        assert!(r.ok, "DEL on node {n}: {}", r.stdout);
    }
    assert!(ns.pool("10.200.5.0-24").is_empty());
    assert!(ns.orips().is_empty());
}

/// The CNI installer's init script (deploy/base/cni-installer.yaml, between
/// its BEGIN/END "mignet-ipam installer" markers), run with temp dirs: with
/// INSTALL_WHEREABOUTS_ALIAS=true it writes whereabouts.conf naming the
/// IPAM kubeconfig, and the installed `whereabouts` alias then puts the
/// seed's NAD into an IPPool. It never overwrites an existing
/// whereabouts.conf or a real whereabouts binary.
#[test]
fn the_installer_writes_whereabouts_conf_with_the_alias_and_never_over_an_existing_one() {
    let ns = TestNs::new("ipam-alias");
    let yaml = std::fs::read_to_string(k8s::repo_root().join("deploy/base/cni-installer.yaml"))
        .expect("read cni-installer.yaml");
    let lines: Vec<&str> = yaml
        .lines()
        .skip_while(|l| !l.contains("# BEGIN mignet-ipam installer"))
        .take_while(|l| !l.contains("# END mignet-ipam installer"))
        .collect();
    assert!(
        lines.len() > 10,
        "installer script not found in cni-installer.yaml"
    );
    let indent = lines[0].len() - lines[0].trim_start().len();
    let script: String = lines
        .iter()
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
        .collect();

    // The image's /usr/local/bin.
    let src = ns.dir().join("image-bin");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::copy(ipam_bin(), src.join("mignet-ipam")).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_mignet-macvlan"),
        src.join("mignet-macvlan"),
    )
    .unwrap();

    // One node's /opt/cni/bin and /etc/cni/net.d. HOST_NET_DIR is where the
    // written file says the kubeconfig is: here the same temp dir.
    let node = |tag: &str| {
        let bin = ns.dir().join(format!("{tag}/opt-cni-bin"));
        let net = ns.dir().join(format!("{tag}/etc-cni-net.d"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&net).unwrap();
        (bin, net)
    };
    let install = |bin: &Path, net: &Path, alias: &str| {
        let o = std::process::Command::new("sh")
            .arg("-ec")
            .arg(&script)
            .env("SRC_DIR", &src)
            .env("BIN_DIR", bin)
            .env("NET_DIR", net)
            .env("HOST_NET_DIR", net)
            .env("INSTALL_WHEREABOUTS_ALIAS", alias)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "installer failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let flat_of = |net: &Path| net.join("whereabouts.d/whereabouts.conf");

    // Without the alias: no whereabouts binary, no flat file.
    let (bin, net) = node("no-alias");
    install(&bin, &net, "false");
    assert!(bin.join("mignet-ipam").exists() && bin.join("mignet-macvlan").exists());
    assert!(!bin.join("whereabouts").exists());
    assert!(!flat_of(&net).exists());

    // With the alias on a node without whereabouts: both, and the flat file
    // names the kubeconfig the ipam-kubeconfig container writes.
    let (bin, net) = node("alias");
    let out = install(&bin, &net, "true");
    assert!(out.contains("installed whereabouts"), "{out}");
    let flat = flat_of(&net);
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&flat).unwrap()).unwrap();
    let kc_path = net.join("mignet-ipam.d/mignet-ipam.kubeconfig");
    assert_eq!(v["datastore"], "kubernetes");
    assert_eq!(v["kubernetes"]["kubeconfig"], kc_path.display().to_string());
    let leftovers: Vec<_> = std::fs::read_dir(net.join("whereabouts.d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["whereabouts.conf"], "temp file left behind");
    // The kubeconfig (here a node identity of this namespace, in place of
    // the writer's) makes the alias put the seed's NAD into the IPPool.
    std::fs::create_dir_all(kc_path.parent().unwrap()).unwrap();
    std::fs::copy(ns.node_kubeconfig("alias-node"), &kc_path).unwrap();
    let store = ns.dir().join("file-store");
    let r = run_bin(
        &bin.join("whereabouts"),
        "ADD",
        "alias-1",
        &pod_args(&ns.name, "virt-launcher-a"),
        &store,
        &seed_nad(&flat),
    );
    assert!(r.ok, "{}", r.stdout);
    assert_eq!(r.addresses(), ["10.200.5.1/24"]);
    assert_eq!(ns.pool("10.200.5.0-24")[&1]["id"], "alias-1");
    assert!(!store.exists(), "the file store was used");

    // A rerun (pod restart): the alias is ours, the flat file stays as is.
    std::fs::write(&flat, r#"{"kubernetes":{"kubeconfig":"/edited"}}"#).unwrap();
    let out = install(&bin, &net, "true");
    assert!(out.contains("whereabouts is our alias already"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&flat).unwrap(),
        r#"{"kubernetes":{"kubeconfig":"/edited"}}"#
    );
    // Our alias without its flat file (a run that died in between): written.
    std::fs::remove_file(&flat).unwrap();
    install(&bin, &net, "true");
    assert!(std::fs::read_to_string(&flat)
        .unwrap()
        .contains("mignet-ipam.kubeconfig"));

    // A real whereabouts' flat file, no binary yet: the alias goes in, the
    // file is kept.
    let (bin, net) = node("wa-conf");
    std::fs::create_dir_all(net.join("whereabouts.d")).unwrap();
    let theirs = r#"{"datastore":"kubernetes","kubernetes":{"kubeconfig":"/etc/cni/net.d/whereabouts.d/whereabouts.kubeconfig"}}"#;
    std::fs::write(flat_of(&net), theirs).unwrap();
    let out = install(&bin, &net, "true");
    assert!(out.contains("already present; not replacing it"), "{out}");
    assert!(bin.join("whereabouts").exists());
    assert_eq!(std::fs::read_to_string(flat_of(&net)).unwrap(), theirs);

    // A real whereabouts binary: neither it nor the (absent) flat file is
    // touched; the real one brings its own.
    let (bin, net) = node("wa-bin");
    std::fs::write(
        bin.join("whereabouts"),
        "#!/bin/sh\necho real whereabouts\n",
    )
    .unwrap();
    let out = install(&bin, &net, "true");
    assert!(
        out.contains("whereabouts already present; not replacing it"),
        "{out}"
    );
    assert_eq!(
        std::fs::read_to_string(bin.join("whereabouts")).unwrap(),
        "#!/bin/sh\necho real whereabouts\n"
    );
    assert!(!flat_of(&net).exists());
}
