//! The reconciler's decision, pure: which pool entries lost their pod and
//! which reservations no pool entry backs. `kube::reconcile` lists the
//! pools, pods and reservations, asks `plan_reconcile`, and writes the plan.

use super::allocator::Allocation;
use super::file_store::PoolKey;
use super::ippool::orip_name;
use std::collections::{BTreeMap, HashSet};

/// What a pod object says about the attachments that name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodState {
    /// `<namespace>/<name>`.
    pub podref: String,
    /// Succeeded or Failed: its sandbox is gone, so are its addresses.
    pub finished: bool,
}

/// One allocation the reconciler frees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    pub pool: String,
    pub offset: u128,
    pub allocation: Allocation,
}

/// The reconciler's decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcilePlan {
    /// Pool entries whose pod is gone.
    pub free: Vec<Orphan>,
    /// ORIPs (name, uid, resourceVersion) that no pool entry backs and that
    /// are older than the grace period.
    pub delete_orips: Vec<(String, String, String)>,
}

/// A reservation as the reconciler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OripState {
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    /// Seconds since creation at decision time.
    pub age_secs: i64,
}

/// A pool as the reconciler sees it: its name, subnet and allocations.
#[derive(Debug, Clone)]
pub struct PoolState {
    pub name: String,
    pub subnet: ipnetwork::IpNetwork,
    pub allocations: BTreeMap<u128, Allocation>,
}

/// Pure reconcile decision.
///
/// An allocation is orphaned when its `podref` names no pod, or a pod that
/// has finished. A pod that exists under that name keeps the address even
/// when it is a *new* pod reusing the name (a StatefulSet replica): our ADD
/// hands the entry of `(podref, ifname)` to the new sandbox (it only swaps
/// the container id), so the address is the live pod's, and freeing it would
/// be whereabouts' #176 (a duplicate address). The IPPool schema has no pod
/// UID to tell the two apart, and it does not need one: the only cost is
/// that a recreated pod which no longer attaches this network keeps the
/// address until it is deleted. Entries without a podref (the runtime gave
/// no pod) are left to CNI GC, which knows the live container ids.
///
/// A reservation is an orphan when no pool entry backs it (its name is not
/// the ORIP name of any allocated address) and it is older than
/// `grace_secs`: younger ones may belong to an ADD between its two writes.
pub fn plan_reconcile(
    pools: &[PoolState],
    pods: &[PodState],
    orips: &[OripState],
    grace_secs: i64,
) -> ReconcilePlan {
    let live: HashSet<&str> = pods
        .iter()
        .filter(|p| !p.finished)
        .map(|p| p.podref.as_str())
        .collect();
    let mut plan = ReconcilePlan::default();
    let mut backed: HashSet<String> = HashSet::new();
    for p in pools {
        let net = network_name_of(&p.name, p.subnet);
        for (&off, a) in &p.allocations {
            let orphan = !a.podref.is_empty() && !live.contains(a.podref.as_str());
            if orphan {
                plan.free.push(Orphan {
                    pool: p.name.clone(),
                    offset: off,
                    allocation: a.clone(),
                });
            } else {
                let ip = super::config::from_u128(
                    p.subnet.network(),
                    super::config::ip_to_u128(p.subnet.network()) + off,
                );
                backed.insert(orip_name(net, ip));
            }
        }
    }
    for o in orips {
        if !backed.contains(&o.name) && o.age_secs >= grace_secs {
            plan.delete_orips
                .push((o.name.clone(), o.uid.clone(), o.resource_version.clone()));
        }
    }
    plan
}

/// The network_name a pool name carries: `<network_name>-<range>`.
pub fn network_name_of(pool_name: &str, subnet: ipnetwork::IpNetwork) -> &str {
    let suffix = PoolKey::new("", subnet).name;
    pool_name
        .strip_suffix(suffix.as_str())
        .and_then(|p| p.strip_suffix('-'))
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alloc(id: &str, pod: &str) -> Allocation {
        Allocation {
            id: id.into(),
            ifname: "net1".into(),
            podref: pod.into(),
        }
    }

    #[test]
    fn reconcile_frees_dead_pods_only_and_orphan_orips_after_grace() {
        let subnet: ipnetwork::IpNetwork = "10.0.0.0/24".parse().unwrap();
        let mut allocations = BTreeMap::new();
        allocations.insert(1, alloc("c-live", "ns/live"));
        allocations.insert(2, alloc("c-gone", "ns/gone"));
        allocations.insert(3, alloc("c-done", "ns/done"));
        allocations.insert(4, alloc("c-anon", ""));
        // A new pod reusing the name "ns/reused": its ADD adopts the entry,
        // so the reconciler must keep it whatever the container id says.
        allocations.insert(5, alloc("c-old-sandbox", "ns/reused"));
        let pools = vec![PoolState {
            name: "net-10.0.0.0-24".into(),
            subnet,
            allocations,
        }];
        let pods = vec![
            PodState {
                podref: "ns/live".into(),
                finished: false,
            },
            PodState {
                podref: "ns/done".into(),
                finished: true,
            },
            PodState {
                podref: "ns/reused".into(),
                finished: false,
            },
        ];
        let orip = |name: &str, age| OripState {
            name: name.into(),
            uid: format!("uid-{name}"),
            resource_version: "1".into(),
            age_secs: age,
        };
        let orips = vec![
            orip("net-10.0.0.1", 999), // backed by a live entry
            orip("net-10.0.0.2", 999), // its entry is freed now
            orip("net-10.0.0.9", 999), // nothing backs it: a crashed ADD
            orip("net-10.0.0.10", 5),  // young: maybe an ADD in flight
            orip("net-10.0.0.5", 999), // the reused name's, kept
        ];
        let plan = plan_reconcile(&pools, &pods, &orips, 60);
        let freed: Vec<u128> = plan.free.iter().map(|o| o.offset).collect();
        assert_eq!(freed, vec![2, 3]);
        let del: Vec<&str> = plan.delete_orips.iter().map(|d| d.0.as_str()).collect();
        assert_eq!(del, vec!["net-10.0.0.2", "net-10.0.0.9"]);
    }

    #[test]
    fn network_name_from_pool_name() {
        let s: ipnetwork::IpNetwork = "10.0.0.0/24".parse().unwrap();
        assert_eq!(network_name_of("10.0.0.0-24", s), "");
        assert_eq!(network_name_of("my-net-10.0.0.0-24", s), "my-net");
    }
}
