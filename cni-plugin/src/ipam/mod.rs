//! `mignet-ipam`: a whereabouts-compatible IPAM with a local file store, or
//! whereabouts' IPPool resources on the Kubernetes API when the config has
//! `ipam.kubernetes` (module `kube`).
//!
//! Layout follows the reference plugins: config (pure parsing), allocator
//! (pure decisions), backend (the `Store` trait the verbs talk to, chosen
//! once per config), its two stores (store: flat files; kube: IPPools, with
//! the pure ippool and reconcile_plan beside it), then the verbs below.
//! macvlan calls `Whereabouts` in-process through `skel::Plugin` with the
//! same `CmdArgs`; the `mignet-ipam` binary runs it through `skel::run`.

pub mod allocator;
pub mod backend;
pub mod config;
pub mod file_store;
pub mod flatfile;
#[cfg(feature = "k8s")]
pub mod ippool;
#[cfg(feature = "k8s")]
pub mod kube;
#[cfg(feature = "k8s")]
pub mod reconcile_plan;

use crate::error::{plugin_codes, CniError, CniResult, Code};
use crate::skel::{CmdArgs, Plugin};
use crate::types::{CniOutput, IpConfig};
use allocator::Owner;
use backend::Store;
use config::{NetConf, DEFAULT_STORE_DIR, STORE_DIR_ENV};
use file_store::PoolKey;
use ipnetwork::IpNetwork;
use std::collections::HashSet;
use std::path::PathBuf;

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
    let offsets = backend::open(conf)?.add(&pool_keys(conf), &conf.ipam.ranges, owner)?;
    output(conf, offsets)
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
    backend::open(conf)?.del(&pool_keys(conf), container_id, ifname)
}

/// CHECK for an already parsed config: (container ID, ifname) holds an
/// address in every range and, when the runtime sent a prevResult, each of
/// them is listed there.
pub fn check_parsed(
    store: &dyn Store,
    conf: &NetConf,
    container_id: &str,
    ifname: &str,
) -> CniResult<()> {
    let keys = pool_keys(conf);
    let found = store.find(&keys, container_id, ifname)?;
    let mismatch = |msg: String| CniError::new(Code::Plugin(plugin_codes::CHECK_MISMATCH), msg);
    for ((range, key), off) in conf.ipam.ranges.iter().zip(&keys).zip(found) {
        let Some(off) = off else {
            return Err(mismatch(format!(
                "no allocation for container {container_id} interface {ifname} in pool {} ({})",
                key.name, range.subnet
            )));
        };
        let ip = range.ip_at(off);
        if let Some(prev) = &conf.prev_result_ips {
            if !prev.contains(&ip) {
                return Err(mismatch(format!(
                    "allocated address {ip} of container {container_id} interface {ifname} is not in prevResult.ips"
                )));
            }
        }
    }
    Ok(())
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
        check_parsed(
            &*backend::open(&conf)?,
            &conf,
            &args.container_id,
            &args.ifname,
        )
    }

    fn status(&self, args: &CmdArgs) -> CniResult<()> {
        let conf = load(args)?;
        backend::open(&conf)?.status()
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
        let valid: HashSet<(String, String)> = valid
            .iter()
            .map(|a| (a.container_id.clone(), a.ifname.clone()))
            .collect();
        backend::open(&conf)?.gc(&pool_keys(&conf), &valid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CHECK's decision against the fake store: a range without an
    /// allocation, or an address missing from prevResult, is a mismatch.
    #[test]
    fn check_wants_every_range_allocated_and_listed_in_prev_result() {
        let text = |prev: &str| {
            format!(
                r#"{{"cniVersion":"1.0.0","name":"n","type":"macvlan","ipam":{{"type":"whereabouts","ipRanges":[{{"range":"10.0.0.0/24"}},{{"range":"fd00::/64"}}]}}{prev}}}"#
            )
        };
        let parse = |prev: &str| {
            config::parse_netconf(text(prev).as_bytes(), std::path::Path::new("/unused")).unwrap()
        };
        let conf = parse("");
        let store = backend::fake::MemStore::default();
        let code = |r: CniResult<()>| r.unwrap_err().code;
        let mismatch = Code::Plugin(plugin_codes::CHECK_MISMATCH);
        assert_eq!(code(check_parsed(&store, &conf, "c1", "net1")), mismatch);
        let owner = Owner {
            container_id: "c1".into(),
            ifname: "net1".into(),
            podref: None,
        };
        // Only the v4 pool holds c1: still a mismatch.
        store
            .add(&pool_keys(&conf)[..1], &conf.ipam.ranges[..1], &owner)
            .unwrap();
        assert_eq!(code(check_parsed(&store, &conf, "c1", "net1")), mismatch);
        store
            .add(&pool_keys(&conf), &conf.ipam.ranges, &owner)
            .unwrap();
        check_parsed(&store, &conf, "c1", "net1").unwrap();
        let both = r#","prevResult":{"ips":[{"address":"10.0.0.1/24"},{"address":"fd00::1/64"}]}"#;
        check_parsed(&store, &parse(both), "c1", "net1").unwrap();
        let v4_only = r#","prevResult":{"ips":[{"address":"10.0.0.1/24"}]}"#;
        let e = check_parsed(&store, &parse(v4_only), "c1", "net1").unwrap_err();
        assert_eq!(e.code, mismatch);
        assert!(e.msg.contains("fd00::1"), "{}", e.msg);
    }

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
        assert!(conf.ipam.kubernetes.is_some());
        assert!(!dir.join("store").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
