//! The seam between the IPAM verbs and where pools live: the `Store` trait,
//! implemented by the local file store (`file_store::FileStore`) and the
//! Kubernetes IPPool store (`kube::BlockingKubeStore`), and `open`, which
//! picks one from the config once. Like host-local's `backend`, the verbs
//! above it do not know which store they talk to, and a fake in memory
//! stands in for both in tests.

use super::allocator::Owner;
use super::config::{IpRange, NetConf};
use super::file_store::{FileStore, Open, PoolKey};
use crate::error::{plugin_codes, CniError, CniResult, Code};
use std::collections::HashSet;

/// The pools of one network, wherever they are stored. Every method takes
/// the config's pools in range order (`pool_keys`) and answers in that order.
pub trait Store {
    /// ADD: in each pool, the offset `owner` already holds or a free one of
    /// the matching range, stored before it is returned. All pools or none:
    /// when one range is exhausted, nothing this call took stays taken.
    fn add(&self, pools: &[PoolKey], ranges: &[IpRange], owner: &Owner) -> CniResult<Vec<u128>>;
    /// DEL: free what (container ID, ifname) holds in every pool; nothing
    /// to free is success.
    fn del(&self, pools: &[PoolKey], container_id: &str, ifname: &str) -> CniResult<()>;
    /// CHECK: the offset (container ID, ifname) holds in each pool.
    fn find(
        &self,
        pools: &[PoolKey],
        container_id: &str,
        ifname: &str,
    ) -> CniResult<Vec<Option<u128>>>;
    /// GC: free every allocation whose (container ID, ifname) is not in
    /// `valid`.
    fn gc(&self, pools: &[PoolKey], valid: &HashSet<(String, String)>) -> CniResult<()>;
    /// STATUS: whether an ADD could be served now.
    fn status(&self) -> CniResult<()>;
}

/// The store the config names: the Kubernetes API when it has
/// `ipam.kubernetes` (connected here, so every verb fails alike on a bad
/// kubeconfig), else the flat files under `store_dir`.
pub fn open(conf: &NetConf) -> CniResult<Box<dyn Store>> {
    if conf.ipam.kubernetes.is_some() {
        return open_kube(conf);
    }
    Ok(Box::new(
        FileStore::new(&conf.ipam.store_dir).with_fsync(conf.ipam.fsync),
    ))
}

#[cfg(feature = "k8s")]
fn open_kube(conf: &NetConf) -> CniResult<Box<dyn Store>> {
    Ok(Box::new(super::kube::BlockingKubeStore::open(conf)?))
}

#[cfg(not(feature = "k8s"))]
fn open_kube(_: &NetConf) -> CniResult<Box<dyn Store>> {
    Err(CniError::new(
        Code::UnsupportedField,
        "unsupported ipam.kubernetes: this mignet-ipam was built without the k8s feature",
    ))
}

/// The error of an ADD that found no free address in `range`, whichever
/// store it asked.
pub fn exhausted(range: &IpRange) -> CniError {
    CniError::new(
        Code::Plugin(plugin_codes::RANGE_EXHAUSTED),
        format!(
            "range exhausted: no free address in {} {}",
            range.field,
            range.describe()
        ),
    )
}

/// One flock-guarded transaction per verb over all the config's pools.
impl Store for FileStore {
    fn add(&self, pools: &[PoolKey], ranges: &[IpRange], owner: &Owner) -> CniResult<Vec<u128>> {
        self.transact(pools, Open::Create, |pools| {
            pools
                .iter_mut()
                .zip(ranges)
                .map(|(pool, range)| {
                    // Returning Err makes transact write nothing at all.
                    pool.assign(range, owner)
                        .map(|a| a.offset)
                        .ok_or_else(|| exhausted(range))
                })
                .collect::<CniResult<Vec<u128>>>()
        })
    }

    fn del(&self, pools: &[PoolKey], container_id: &str, ifname: &str) -> CniResult<()> {
        self.transact(pools, Open::Existing, |pools| {
            for p in pools {
                p.release(container_id, ifname);
            }
            Ok(())
        })
    }

    fn find(
        &self,
        pools: &[PoolKey],
        container_id: &str,
        ifname: &str,
    ) -> CniResult<Vec<Option<u128>>> {
        self.transact(pools, Open::Existing, |pools| {
            Ok(pools
                .iter()
                .map(|p| p.find(container_id, ifname))
                .collect::<Vec<_>>())
        })
    }

    fn gc(&self, pools: &[PoolKey], valid: &HashSet<(String, String)>) -> CniResult<()> {
        let valid: HashSet<(&str, &str)> = valid
            .iter()
            .map(|(c, i)| (c.as_str(), i.as_str()))
            .collect();
        self.transact(pools, Open::Existing, |pools| {
            for p in pools {
                p.retain_valid(&valid);
            }
            Ok(())
        })
    }

    /// The directory exists (made if need be) and we may create files in it.
    fn status(&self) -> CniResult<()> {
        let dir = self.dir();
        let unavailable = |e: &dyn std::fmt::Display| {
            CniError::new(
                Code::Unavailable,
                format!("store dir {}: {e}", dir.display()),
            )
        };
        std::fs::create_dir_all(dir).map_err(|e| unavailable(&e))?;
        nix::unistd::access(
            dir,
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .map_err(|e| unavailable(&e))?;
        Ok(())
    }
}

/// A store in memory over the real allocator, for tests of what sits above
/// the seam (host-local's fake backend): no disk, no API server.
#[cfg(test)]
pub mod fake {
    use super::*;
    use crate::ipam::allocator::Pool;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    #[derive(Default)]
    pub struct MemStore {
        pools: RefCell<BTreeMap<String, Pool>>,
    }

    impl Store for MemStore {
        fn add(
            &self,
            pools: &[PoolKey],
            ranges: &[IpRange],
            owner: &Owner,
        ) -> CniResult<Vec<u128>> {
            // Decide on a copy, keep it only when every range succeeded.
            let mut next = self.pools.borrow().clone();
            let offsets = pools
                .iter()
                .zip(ranges)
                .map(|(k, r)| {
                    let pool = next.entry(k.name.clone()).or_default();
                    pool.assign(r, owner)
                        .map(|a| a.offset)
                        .ok_or_else(|| exhausted(r))
                })
                .collect::<CniResult<Vec<u128>>>()?;
            *self.pools.borrow_mut() = next;
            Ok(offsets)
        }

        fn del(&self, pools: &[PoolKey], container_id: &str, ifname: &str) -> CniResult<()> {
            let mut all = self.pools.borrow_mut();
            for k in pools {
                if let Some(p) = all.get_mut(&k.name) {
                    p.release(container_id, ifname);
                }
            }
            Ok(())
        }

        fn find(
            &self,
            pools: &[PoolKey],
            container_id: &str,
            ifname: &str,
        ) -> CniResult<Vec<Option<u128>>> {
            let all = self.pools.borrow();
            Ok(pools
                .iter()
                .map(|k| all.get(&k.name)?.find(container_id, ifname))
                .collect())
        }

        fn gc(&self, pools: &[PoolKey], valid: &HashSet<(String, String)>) -> CniResult<()> {
            let valid: HashSet<(&str, &str)> = valid
                .iter()
                .map(|(c, i)| (c.as_str(), i.as_str()))
                .collect();
            let mut all = self.pools.borrow_mut();
            for k in pools {
                if let Some(p) = all.get_mut(&k.name) {
                    p.retain_valid(&valid);
                }
            }
            Ok(())
        }

        fn status(&self) -> CniResult<()> {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::config::parse_netconf;
    use std::path::{Path, PathBuf};

    fn owner(cid: &str) -> Owner {
        Owner {
            container_id: cid.into(),
            ifname: "net1".into(),
            podref: Some(format!("ns/{cid}")),
        }
    }

    /// What every store must do, asked through the trait. The Kubernetes
    /// store runs the same verbs in tests/ipam_k8s.rs (it needs a server).
    fn contract(store: &dyn Store) {
        let conf = parse_netconf(
            br#"{"ipam":{"type":"whereabouts","ipRanges":[{"range":"10.0.0.0/24"},{"range":"10.0.1.0/30"}]}}"#,
            Path::new("/unused"),
        )
        .unwrap();
        let keys = crate::ipam::pool_keys(&conf);
        let ranges = &conf.ipam.ranges;
        let find = |cid: &str| store.find(&keys, cid, "net1").unwrap();

        store.status().unwrap();
        assert_eq!(find("c1"), [None, None], "empty before any ADD");
        assert_eq!(store.add(&keys, ranges, &owner("c1")).unwrap(), [1, 1]);
        assert_eq!(store.add(&keys, ranges, &owner("c1")).unwrap(), [1, 1]);
        assert_eq!(store.add(&keys, ranges, &owner("c2")).unwrap(), [2, 2]);
        assert_eq!(find("c1"), [Some(1), Some(1)]);
        // The /30 has two addresses: the third ADD takes none, not even the
        // free one of the /24.
        let e = store.add(&keys, ranges, &owner("c3")).unwrap_err();
        assert_eq!(e.code, Code::Plugin(plugin_codes::RANGE_EXHAUSTED));
        assert!(e.msg.contains("10.0.1.0/30"), "{}", e.msg);
        assert_eq!(find("c3"), [None, None]);
        let valid: HashSet<(String, String)> = [("c1".into(), "net1".into())].into();
        store.gc(&keys, &valid).unwrap();
        assert_eq!(find("c2"), [None, None]);
        assert_eq!(find("c1"), [Some(1), Some(1)]);
        store.del(&keys, "c1", "net1").unwrap();
        store.del(&keys, "c1", "net1").unwrap();
        assert_eq!(find("c1"), [None, None]);
        assert_eq!(store.add(&keys, ranges, &owner("c3")).unwrap(), [1, 1]);
    }

    #[test]
    fn the_file_store_keeps_the_store_contract() {
        let dir = std::env::temp_dir().join(format!("mignet-ipam-contract-{}", std::process::id()));
        struct Rm(PathBuf);
        impl Drop for Rm {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _rm = Rm(dir.clone());
        contract(&FileStore::new(&dir));
    }

    #[test]
    fn the_fake_keeps_the_store_contract() {
        contract(&fake::MemStore::default());
    }
}
