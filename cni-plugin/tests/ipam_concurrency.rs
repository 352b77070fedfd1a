//! Many `mignet-ipam` processes on one store: parallel ADDs never share an
//! address, and processes killed with SIGKILL mid-ADD leave a store that
//! parses and that GC brings back to exactly the live attachments.

mod ipam_common;

use ipam_common::*;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

const POOL: &str = "10.200.5.0-24";

fn seed_conf(s: &StoreDir, version: &str) -> String {
    conf(version, s, r#""range":"10.200.5.0/24""#)
}

#[test]
fn two_hundred_parallel_adds_get_distinct_addresses_then_dels_empty_the_pool() {
    let s = StoreDir::new("par");
    let c = seed_conf(&s, "0.3.1");
    const WORKERS: usize = 20;
    const PER_WORKER: usize = 10;

    // 20 threads, each running its 10 ADD processes back to back, so 20
    // processes contend for the pool at any moment.
    let results: Vec<(String, String)> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let c = &c;
                sc.spawn(move || {
                    (0..PER_WORKER)
                        .map(|i| {
                            let cid = format!("par-{w}-{i}");
                            // Spread over four "node" pod names like the agents would be.
                            let args =
                                format!("K8S_POD_NAMESPACE=node{};K8S_POD_NAME={cid}", w % 4);
                            let mut a = add_ok(&cid, "net1", &args, c);
                            assert_eq!(a.len(), 1);
                            (cid, a.remove(0))
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

    assert_eq!(results.len(), WORKERS * PER_WORKER);
    let distinct: BTreeSet<&str> = results.iter().map(|(_, a)| a.as_str()).collect();
    assert_eq!(distinct.len(), 200, "duplicate addresses handed out");
    // Lowest-free allocation with no DELs: exactly .1 to .200.
    let expected: BTreeSet<String> = (1..=200).map(|i| format!("10.200.5.{i}/24")).collect();
    assert_eq!(distinct, expected.iter().map(String::as_str).collect());

    // The store agrees with what the processes printed.
    let pool = s.pool(POOL);
    assert_eq!(pool.len(), 200);
    for (cid, addr) in &results {
        let last: u128 = addr
            .trim_end_matches("/24")
            .rsplit('.')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(pool[&last]["id"], cid.as_str(), "{addr}");
    }

    std::thread::scope(|sc| {
        for chunk in results.chunks(PER_WORKER) {
            let c = &c;
            sc.spawn(move || {
                for (cid, _) in chunk {
                    ok("DEL", cid, "net1", c);
                }
            });
        }
    });
    assert!(s.pool(POOL).is_empty(), "DELs left {:?}", s.pool(POOL));
}

/// xorshift64*: enough randomness for kill timing without a dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn sigkill_mid_add_then_gc_restores_exactly_the_live_attachments() {
    let s = StoreDir::new("kill");
    let c = seed_conf(&s, "1.1.0");
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("kill test seed {seed:#x}");
    let mut rng = Rng(seed);

    // cid -> address printed by a completed ADD.
    let mut live: BTreeMap<String, String> = BTreeMap::new();
    let mut killed = 0usize;
    for round in 0..4 {
        let children: Vec<_> = (0..40)
            .map(|i| {
                let cid = format!("k{round}-{i}");
                let child = spawn("ADD", &cid, "net1", "", &c);
                (cid, child)
            })
            .collect();
        // Kill about half of them at random moments in the first few
        // milliseconds, while they start, wait for the lock or write.
        let start = Instant::now();
        let mut victims: Vec<(Duration, usize)> = Vec::new();
        for i in 0..children.len() {
            if rng.below(2) == 0 {
                victims.push((Duration::from_micros(rng.below(15_000)), i));
            }
        }
        victims.sort();
        let mut children = children;
        for (at, i) in victims {
            if let Some(wait) = at.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            let _ = children[i].1.kill(); // SIGKILL
        }
        for (cid, child) in children {
            let out = child.wait_with_output().unwrap();
            if out.status.signal() == Some(9) {
                killed += 1;
                continue;
            }
            let r = reply(&out);
            assert!(r.ok, "ADD {cid} failed without being killed: {}", r.stdout);
            live.insert(cid, r.addresses().remove(0));
        }
    }
    assert!(killed > 0, "no process was killed; the test proved nothing");
    assert!(!live.is_empty(), "no ADD completed");
    eprintln!("killed {killed}, completed {}", live.len());

    // After the carnage the store parses, holds every completed ADD with the
    // address it printed, and never two owners for one address.
    let pool = s.pool(POOL);
    for (cid, addr) in &live {
        let off: u128 = addr
            .trim_end_matches("/24")
            .rsplit('.')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            pool.get(&off).map(|a| a["id"].clone()),
            Some(cid.as_str().into()),
            "{cid} {addr}"
        );
    }
    eprintln!("orphaned by kills before GC: {}", pool.len() - live.len());
    let printed: HashSet<&String> = live.values().collect();
    assert_eq!(
        printed.len(),
        live.len(),
        "two live ADDs printed the same address"
    );

    // GC with the completed attachments frees whatever killed processes left.
    let mut v: serde_json::Value = serde_json::from_str(&c).unwrap();
    v["cni.dev/valid-attachments"] = live
        .keys()
        .map(|cid| serde_json::json!({"containerID": cid, "ifname": "net1"}))
        .collect();
    ok("GC", "", "", &v.to_string());
    let after: BTreeSet<String> = s
        .pool(POOL)
        .values()
        .map(|a| a["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(after, live.keys().cloned().collect::<BTreeSet<_>>());

    // And the store keeps working: the next ADD gets the lowest free address.
    let used: BTreeSet<u128> = s.pool(POOL).keys().copied().collect();
    let lowest = (1u128..).find(|o| !used.contains(o)).unwrap();
    assert_eq!(
        add_ok("after", "net1", "", &c),
        vec![format!("10.200.5.{lowest}/24")]
    );
}
