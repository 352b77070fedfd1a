//! `mignet-ipam`: a whereabouts-compatible IPAM with a local file store, or
//! whereabouts' IPPool resources on the Kubernetes API when the config has
//! `ipam.kubernetes` (module `kube`).
//!
//! Layout follows the reference plugins: config (pure parsing), allocator
//! (pure decisions), store (file I/O), kube (IPPool I/O, with the pure
//! ippool and reconcile_plan beside it), then the verbs below. macvlan calls
//! `Whereabouts` in-process through `skel::Plugin` with the same `CmdArgs`;
//! the `mignet-ipam` binary runs it through `skel::run`.

pub mod allocator;
pub mod config;
pub mod flatfile;
#[cfg(feature = "k8s")]
pub mod ippool;
#[cfg(feature = "k8s")]
pub mod kube;
#[cfg(feature = "k8s")]
pub mod reconcile_plan;
pub mod store;

use crate::error::{plugin_codes, CniError, CniResult, Code};
use crate::skel::{CmdArgs, Plugin};
use crate::types::{CniOutput, IpConfig};
use allocator::Owner;
use config::{NetConf, DEFAULT_STORE_DIR, STORE_DIR_ENV};
use ipnetwork::IpNetwork;
use std::collections::HashSet;
use std::path::PathBuf;
use store::{FileStore, Open, PoolKey};

/// The IPAM plugin. Stateless: everything comes from the config and CmdArgs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Whereabouts;

/// The store directory when the config has no `store_dir`.
pub fn default_store_dir() -> PathBuf {
    std::env::var_os(STORE_DIR_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STORE_DIR))
}

/// The file store a config names.
pub fn store_of(conf: &NetConf) -> FileStore {
    FileStore::new(&conf.ipam.store_dir).with_fsync(conf.ipam.fsync)
}

/// Parse stdin as whereabouts would: find its flat file (I/O, here at the
/// edge), merge it under the NAD's `ipam` and choose the store
/// (`config::select_store`), with the environment's default store
/// directory. The binary and macvlan's in-process IPAM both come here.
pub fn load(args: &CmdArgs) -> CniResult<NetConf> {
    let configuration_path = config::configuration_path(&args.stdin)?;
    let flat = flatfile::find(configuration_path.as_deref())?;
    config::parse_netconf_with(&args.stdin, &default_store_dir(), flat.as_ref())
}

/// The pool keys of a config, in range order.
pub fn pool_keys(conf: &NetConf) -> Vec<PoolKey> {
    conf.ipam
        .ranges
        .iter()
        .map(|r| PoolKey::new(&conf.ipam.network_name, r.subnet))
        .collect()
}

/// The allocation owner named by the runtime: the pod from CNI_ARGS when
/// given (whereabouts keys on it), always the container ID and ifname.
pub fn owner(args: &CmdArgs) -> Owner {
    let pod = args.arg("K8S_POD_NAME").filter(|p| !p.is_empty());
    Owner {
        container_id: args.container_id.clone(),
        ifname: args.ifname.clone(),
        podref: pod.map(|p| format!("{}/{p}", args.arg("K8S_POD_NAMESPACE").unwrap_or(""))),
    }
}

/// ADD for an already parsed config (the benchmark and macvlan reuse it).
pub fn add_parsed(conf: &NetConf, owner: &Owner) -> CniResult<CniOutput> {
    let offsets = if conf.ipam.kubernetes.is_some() {
        kube_store::add(conf, owner)?
    } else {
        add_local(conf, owner)?
    };
    output(conf, offsets)
}

/// Which store a config names, for the verbs that differ.
fn uses_kube(conf: &NetConf) -> bool {
    conf.ipam.kubernetes.is_some()
}

fn add_local(conf: &NetConf, owner: &Owner) -> CniResult<Vec<u128>> {
    let store = store_of(conf);
    let ranges = &conf.ipam.ranges;
    store.transact(&pool_keys(conf), Open::Create, |pools| {
        pools
            .iter_mut()
            .zip(ranges)
            .map(|(pool, range)| {
                pool.assign(range, owner).map(|a| a.offset).ok_or_else(|| {
                    // Returning Err makes transact write nothing at all.
                    CniError::new(
                        Code::Plugin(plugin_codes::RANGE_EXHAUSTED),
                        format!(
                            "range exhausted: no free address in {} {}",
                            range.field,
                            range.describe()
                        ),
                    )
                })
            })
            .collect::<CniResult<Vec<u128>>>()
    })
}

/// The ADD result for the offsets taken in each range.
fn output(conf: &NetConf, offsets: Vec<u128>) -> CniResult<CniOutput> {
    let ranges = &conf.ipam.ranges;
    let gateway = conf.ipam.gateway;
    let ips = ranges
        .iter()
        .zip(offsets)
        .map(|(range, off)| {
            let ip = range.ip_at(off);
            IpConfig {
                interface: None,
                address: IpNetwork::new(ip, range.subnet.prefix())
                    .expect("prefix comes from a valid subnet"),
                // whereabouts puts the gateway on every IP; a v4 gateway on a
                // v6 address is meaningless, so only same-family IPs get it.
                gateway: gateway.filter(|g| g.is_ipv4() == ip.is_ipv4()),
            }
        })
        .collect();
    Ok(CniOutput {
        cni_version: conf.cni_version.clone(),
        interfaces: Vec::new(),
        ips,
        routes: conf.ipam.routes.clone(),
        dns: conf.ipam.dns.clone(),
    })
}

/// DEL for an already parsed config: frees (container ID, ifname) in every
/// pool; nothing to free is success.
pub fn del_parsed(conf: &NetConf, container_id: &str, ifname: &str) -> CniResult<()> {
    if uses_kube(conf) {
        return kube_store::del(conf, container_id, ifname);
    }
    let store = store_of(conf);
    store.transact(&pool_keys(conf), Open::Existing, |pools| {
        for p in pools {
            p.release(container_id, ifname);
        }
        Ok(())
    })
}

/// Synchronous entry points to the Kubernetes store, each on a runtime of
/// its own; without the `k8s` feature they refuse the config.
mod kube_store {
    use super::*;
    #[cfg(not(feature = "k8s"))]
    fn off() -> CniError {
        CniError::new(
            Code::UnsupportedField,
            "unsupported ipam.kubernetes: this mignet-ipam was built without the k8s feature",
        )
    }

    #[cfg(feature = "k8s")]
    pub fn add(conf: &NetConf, owner: &Owner) -> CniResult<Vec<u128>> {
        super::kube::block_on(super::kube::add(conf, owner))
    }
    #[cfg(feature = "k8s")]
    pub fn del(conf: &NetConf, container_id: &str, ifname: &str) -> CniResult<()> {
        super::kube::block_on(super::kube::del(conf, container_id, ifname))
    }
    #[cfg(feature = "k8s")]
    pub fn find(conf: &NetConf, container_id: &str, ifname: &str) -> CniResult<Vec<Option<u128>>> {
        super::kube::block_on(super::kube::find(conf, container_id, ifname))
    }
    #[cfg(feature = "k8s")]
    pub fn gc(conf: &NetConf, valid: &HashSet<(String, String)>) -> CniResult<()> {
        super::kube::block_on(super::kube::gc(conf, valid)).map(|_| ())
    }
    #[cfg(feature = "k8s")]
    pub fn status(conf: &NetConf) -> CniResult<()> {
        super::kube::block_on(super::kube::status(conf))
    }

    #[cfg(not(feature = "k8s"))]
    pub fn add(_: &NetConf, _: &Owner) -> CniResult<Vec<u128>> {
        Err(off())
    }
    #[cfg(not(feature = "k8s"))]
    pub fn del(_: &NetConf, _: &str, _: &str) -> CniResult<()> {
        Err(off())
    }
    #[cfg(not(feature = "k8s"))]
    pub fn find(_: &NetConf, _: &str, _: &str) -> CniResult<Vec<Option<u128>>> {
        Err(off())
    }
    #[cfg(not(feature = "k8s"))]
    pub fn gc(_: &NetConf, _: &HashSet<(String, String)>) -> CniResult<()> {
        Err(off())
    }
    #[cfg(not(feature = "k8s"))]
    pub fn status(_: &NetConf) -> CniResult<()> {
        Err(off())
    }
}

impl Plugin for Whereabouts {
    fn add(&self, args: &CmdArgs) -> CniResult<CniOutput> {
        let conf = load(args)?;
        add_parsed(&conf, &owner(args))
    }

    fn del(&self, args: &CmdArgs) -> CniResult<()> {
        let conf = load(args)?;
        del_parsed(&conf, &args.container_id, &args.ifname)
    }

    fn check(&self, args: &CmdArgs) -> CniResult<()> {
        let conf = load(args)?;
        let keys = pool_keys(&conf);
        let found = if uses_kube(&conf) {
            kube_store::find(&conf, &args.container_id, &args.ifname)?
        } else {
            store_of(&conf).transact(&keys, Open::Existing, |pools| {
                Ok(pools
                    .iter()
                    .map(|p| p.find(&args.container_id, &args.ifname))
                    .collect::<Vec<_>>())
            })?
        };
        let mismatch = |msg: String| CniError::new(Code::Plugin(plugin_codes::CHECK_MISMATCH), msg);
        for ((range, key), off) in conf.ipam.ranges.iter().zip(&keys).zip(found) {
            let Some(off) = off else {
                return Err(mismatch(format!(
                    "no allocation for container {} interface {} in pool {} ({})",
                    args.container_id, args.ifname, key.name, range.subnet
                )));
            };
            let ip = range.ip_at(off);
            if let Some(prev) = &conf.prev_result_ips {
                if !prev.contains(&ip) {
                    return Err(mismatch(format!(
                        "allocated address {ip} of container {} interface {} is not in prevResult.ips",
                        args.container_id, args.ifname
                    )));
                }
            }
        }
        Ok(())
    }

    fn status(&self, args: &CmdArgs) -> CniResult<()> {
        let conf = load(args)?;
        if uses_kube(&conf) {
            return kube_store::status(&conf);
        }
        let dir = &conf.ipam.store_dir;
        let unavailable = |e: &dyn std::fmt::Display| {
            CniError::new(
                Code::Unavailable,
                format!("store dir {}: {e}", dir.display()),
            )
        };
        std::fs::create_dir_all(dir).map_err(|e| unavailable(&e))?;
        nix::unistd::access(
            dir.as_path(),
            nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
        )
        .map_err(|e| unavailable(&e))?;
        Ok(())
    }

    fn gc(&self, args: &CmdArgs) -> CniResult<()> {
        let conf = load(args)?;
        let Some(valid) = &conf.valid_attachments else {
            // Treating a missing list as "nothing is valid" would free every
            // address of the network; refuse instead.
            return Err(CniError::new(
                Code::InvalidConfig,
                "missing cni.dev/valid-attachments: GC needs the list of valid attachments",
            ));
        };
        if uses_kube(&conf) {
            let valid: HashSet<(String, String)> = valid
                .iter()
                .map(|a| (a.container_id.clone(), a.ifname.clone()))
                .collect();
            return kube_store::gc(&conf, &valid);
        }
        let valid: HashSet<(&str, &str)> = valid
            .iter()
            .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
            .collect();
        let store = store_of(&conf);
        store.transact(&pool_keys(&conf), Open::Existing, |pools| {
            for p in pools {
                p.retain_valid(&valid);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-process path macvlan uses: the same CmdArgs, no binary.
    #[test]
    fn plugin_trait_add_check_del_in_process() {
        let dir = std::env::temp_dir().join(format!("mignet-ipam-inproc-{}", std::process::id()));
        struct Rm(PathBuf);
        impl Drop for Rm {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _rm = Rm(dir.clone());
        let stdin = format!(
            r#"{{"cniVersion":"1.1.0","name":"n","type":"macvlan","ipam":{{"type":"whereabouts","range":"10.200.5.0/24","gateway":"10.200.5.254","store_dir":"{}"}}}}"#,
            dir.display()
        );
        let args = CmdArgs {
            container_id: "c1".into(),
            ifname: "net1".into(),
            args: vec![
                ("K8S_POD_NAMESPACE".into(), "ns".into()),
                ("K8S_POD_NAME".into(), "p".into()),
            ],
            stdin: stdin.into_bytes(),
            ..Default::default()
        };
        let out = Whereabouts.add(&args).unwrap();
        assert_eq!(out.cni_version, "1.1.0");
        assert_eq!(out.ips.len(), 1);
        assert_eq!(out.ips[0].address.to_string(), "10.200.5.1/24");
        assert_eq!(out.ips[0].gateway, Some("10.200.5.254".parse().unwrap()));
        assert_eq!(out.ips[0].interface, None);
        Whereabouts.check(&args).unwrap();
        Whereabouts.status(&args).unwrap();
        Whereabouts.del(&args).unwrap();
        let e = Whereabouts.check(&args).unwrap_err();
        assert_eq!(e.code, Code::Plugin(plugin_codes::CHECK_MISMATCH));
        // GC without the list is refused; the store is untouched either way.
        assert_eq!(Whereabouts.gc(&args).unwrap_err().code, Code::InvalidConfig);
    }

    /// macvlan's in-process IPAM (`delegate::Ipam::for_type("whereabouts")`)
    /// goes through `load`, so it reads whereabouts' flat file and chooses
    /// the store exactly as the binary does.
    #[test]
    fn in_process_ipam_reads_the_flat_file() {
        let dir =
            std::env::temp_dir().join(format!("mignet-ipam-inproc-flat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let flat = dir.join("whereabouts.conf");
        let args = CmdArgs {
            container_id: "c1".into(),
            ifname: "net1".into(),
            stdin: format!(
                r#"{{"cniVersion":"0.3.1","name":"migration-bridge","type":"macvlan","master":"eth1","mode":"bridge","ipam":{{"type":"whereabouts","range":"10.200.5.0/24","configuration_path":"{}","store_dir":"{}"}}}}"#,
                flat.display(),
                dir.join("store").display()
            )
            .into_bytes(),
            ..Default::default()
        };
        let ipam = crate::delegate::Ipam::for_type("whereabouts").unwrap();
        std::fs::write(&flat, "not json").unwrap();
        let e = ipam.add(&args).unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(e.msg.contains(&flat.display().to_string()), "{}", e.msg);
        std::fs::write(&flat, r#"{"datastore":"etcd"}"#).unwrap();
        assert_eq!(ipam.add(&args).unwrap_err().code, Code::UnsupportedField);
        // The flat file's kubeconfig selects the Kubernetes store, whatever
        // the NAD's store_dir says.
        std::fs::write(
            &flat,
            format!(
                r#"{{"kubernetes":{{"kubeconfig":"{}"}}}}"#,
                dir.join("nope").display()
            ),
        )
        .unwrap();
        let conf = load(&args).unwrap();
        assert!(uses_kube(&conf));
        assert!(!dir.join("store").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
