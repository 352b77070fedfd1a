//! The macvlan plugin, in the reference plugin's order: config types, pure
//! parsing, host checks, then the verbs.
//!
//! Everything ADD creates (the link, the IPAM allocation) is held by a guard
//! that undoes it on Drop unless the ADD got all the way to its result, so no
//! early return can leave a half-configured interface or a leaked address.

use crate::delegate::Ipam;
use crate::error::{chain, plugin_codes, CniError, CniResult, Code};
use crate::netlink::{self, Link, LinkOps, MacvlanSpec, Netlink, NetlinkError, RouteSpec};
use crate::netns::{self, NetNs};
use crate::skel::{CmdArgs, Plugin};
use crate::types::{CniOutput, Dns, Interface};
use crate::version;
use netlink_packet_route::link::MacVlanMode;
use serde::Deserialize;

// ---------------------------------------------------------------- config --

/// macvlan modes; `source` is one the reference plugin lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Bridge,
    Private,
    Vepa,
    Passthru,
    Source,
}

impl Mode {
    pub fn parse(s: &str) -> CniResult<Mode> {
        Ok(match s {
            "" | "bridge" => Mode::Bridge,
            "private" => Mode::Private,
            "vepa" => Mode::Vepa,
            "passthru" => Mode::Passthru,
            "source" => Mode::Source,
            other => {
                return Err(CniError::invalid_field(
                    "mode",
                    other,
                    "unknown macvlan mode (expected bridge, private, vepa, passthru or source)",
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Bridge => "bridge",
            Mode::Private => "private",
            Mode::Vepa => "vepa",
            Mode::Passthru => "passthru",
            Mode::Source => "source",
        }
    }

    pub fn to_kernel(self) -> MacVlanMode {
        match self {
            Mode::Bridge => MacVlanMode::Bridge,
            Mode::Private => MacVlanMode::Private,
            Mode::Vepa => MacVlanMode::Vepa,
            Mode::Passthru => MacVlanMode::Passthrough,
            Mode::Source => MacVlanMode::Source,
        }
    }
}

/// The config exactly as JSON has it (unknown keys ignored, like Go).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    #[serde(default)]
    cni_version: Option<String>,
    #[serde(default)]
    master: Option<String>,
    #[serde(default)]
    mode: Option<String>,
    #[serde(default)]
    mtu: Option<i64>,
    #[serde(default)]
    mac: Option<String>,
    #[serde(default)]
    link_in_container: Option<bool>,
    #[serde(default)]
    bcqueuelen: Option<u32>,
    #[serde(default)]
    ipam: Option<RawIpam>,
    #[serde(default)]
    dns: Option<Dns>,
    #[serde(default)]
    runtime_config: Option<RawRuntimeConfig>,
    #[serde(default)]
    prev_result: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RawIpam {
    #[serde(default, rename = "type")]
    kind: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RawRuntimeConfig {
    #[serde(default)]
    mac: Option<String>,
}

/// A validated config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    pub cni_version: String,
    /// None: use the interface of the default route.
    pub master: Option<String>,
    pub mode: Mode,
    /// 0: inherit the master's MTU.
    pub mtu: u32,
    pub mac: Option<[u8; 6]>,
    pub link_in_container: bool,
    pub bcqueuelen: Option<u32>,
    /// None (absent or `{}`): L2 only, like the reference plugin.
    pub ipam_type: Option<String>,
    pub dns: Dns,
    pub runtime_mac: Option<[u8; 6]>,
    pub prev_result: Option<serde_json::Value>,
}

// --------------------------------------------------------- pure parsing --

fn decode(stdin: &[u8]) -> CniResult<RawConf> {
    let mut v: serde_json::Value =
        serde_json::from_slice(stdin).map_err(|e| CniError::decode("network config", e))?;
    normalize_keys(&mut v);
    RawConf::deserialize(&v).map_err(|e| {
        // serde does not say which key had the wrong type; find it so the
        // message names the field.
        CniError::decode(&format!("network config field \"{}\"", bad_field(&v)), e)
    })
}

/// Go's encoding/json matches keys case-insensitively (an exact match wins),
/// so `"linkincontainer"` works with the reference plugin; accept the same.
fn normalize_keys(v: &mut serde_json::Value) {
    const TOP: &[&str] = &[
        "cniVersion",
        "master",
        "mode",
        "mtu",
        "mac",
        "linkInContainer",
        "bcqueuelen",
        "ipam",
        "dns",
        "runtimeConfig",
        "prevResult",
    ];
    fn fix(m: &mut serde_json::Map<String, serde_json::Value>, known: &[&str]) {
        for k in known {
            if m.contains_key(*k) {
                continue;
            }
            let found = m.keys().find(|mk| mk.eq_ignore_ascii_case(k)).cloned();
            if let Some(found) = found {
                let val = m.remove(&found).expect("key just found");
                m.insert((*k).to_string(), val);
            }
        }
    }
    if let Some(m) = v.as_object_mut() {
        fix(m, TOP);
        if let Some(rc) = m.get_mut("runtimeConfig").and_then(|r| r.as_object_mut()) {
            fix(rc, &["mac"]);
        }
        if let Some(ipam) = m.get_mut("ipam").and_then(|r| r.as_object_mut()) {
            fix(ipam, &["type"]);
        }
    }
}

/// The first known key whose value does not decode, checked with the very
/// types `RawConf` decodes it into (a hand-kept list of JSON types missed
/// nested fields such as `ipam.type` and ranges such as `bcqueuelen`).
fn bad_field(v: &serde_json::Value) -> &'static str {
    use serde_json::Value as V;
    fn fails<T: serde::de::DeserializeOwned>(v: &V, key: &str) -> bool {
        v.get(key).is_some_and(|x| T::deserialize(x).is_err())
    }
    type Check = (&'static str, fn(&V, &str) -> bool);
    let checks: [Check; 10] = [
        ("cniVersion", fails::<Option<String>>),
        ("master", fails::<Option<String>>),
        ("mode", fails::<Option<String>>),
        ("mtu", fails::<Option<i64>>),
        ("mac", fails::<Option<String>>),
        ("linkInContainer", fails::<Option<bool>>),
        ("bcqueuelen", fails::<Option<u32>>),
        ("ipam", fails::<Option<RawIpam>>),
        ("dns", fails::<Option<Dns>>),
        ("runtimeConfig", fails::<Option<RawRuntimeConfig>>),
    ];
    checks
        .iter()
        .find(|(k, fails)| fails(v, k))
        .map(|(k, _)| *k)
        .unwrap_or("?")
}

fn parse_mac_field(field: &str, s: &str) -> CniResult<[u8; 6]> {
    netlink::parse_mac(s)
        .ok_or_else(|| CniError::invalid_field(field, s, "not a MAC address (aa:bb:cc:dd:ee:ff)"))
}

/// Strict parsing for ADD and CHECK.
pub fn parse_config(stdin: &[u8]) -> CniResult<NetConf> {
    let raw = decode(stdin)?;
    let mtu = match raw.mtu {
        None => 0,
        Some(m) if (0..=i64::from(u32::MAX)).contains(&m) => m as u32,
        Some(m) => return Err(CniError::invalid_field("mtu", m, "must not be negative")),
    };
    let master = raw.master.filter(|m| !m.is_empty());
    if let Some(m) = &master {
        // Same rules as an interface name; a bad one can never exist.
        crate::skel::validate_ifname(m)
            .map_err(|_| CniError::invalid_field("master", m, "not a valid interface name"))?;
    }
    let ipam_type = raw.ipam.map(|i| i.kind).filter(|t| !t.is_empty());
    if let Some(t) = &ipam_type {
        Ipam::for_type(t)?;
    }
    Ok(NetConf {
        cni_version: raw.cni_version.unwrap_or_else(|| "0.1.0".into()),
        master,
        mode: Mode::parse(raw.mode.as_deref().unwrap_or(""))?,
        mtu,
        mac: raw
            .mac
            .filter(|m| !m.is_empty())
            .map(|m| parse_mac_field("mac", &m))
            .transpose()?,
        link_in_container: raw.link_in_container.unwrap_or(false),
        bcqueuelen: raw.bcqueuelen,
        ipam_type,
        dns: raw.dns.unwrap_or_default(),
        runtime_mac: raw
            .runtime_config
            .and_then(|r| r.mac)
            .filter(|m| !m.is_empty())
            .map(|m| parse_mac_field("runtimeConfig.mac", &m))
            .transpose()?,
        prev_result: raw.prev_result.filter(|v| !v.is_null()),
    })
}

/// What DEL needs, parsed leniently: a DEL must work after the master NIC or
/// a config value it once accepted has gone bad.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DelConf {
    pub ipam_type: Option<String>,
}

pub fn parse_del_config(stdin: &[u8]) -> CniResult<DelConf> {
    let mut v: serde_json::Value =
        serde_json::from_slice(stdin).map_err(|e| CniError::decode("network config", e))?;
    normalize_keys(&mut v);
    let ipam_type = v
        .get("ipam")
        .and_then(|i| i.get("type"))
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    Ok(DelConf { ipam_type })
}

/// MAC precedence: config `mac` < CNI_ARGS `MAC` < `runtimeConfig.mac`.
pub fn effective_mac(conf: &NetConf, args: &CmdArgs) -> CniResult<Option<[u8; 6]>> {
    if conf.runtime_mac.is_some() {
        return Ok(conf.runtime_mac);
    }
    if let Some(m) = args.arg("MAC").filter(|m| !m.is_empty()) {
        return netlink::parse_mac(m).map(Some).ok_or_else(|| {
            CniError::env(
                "CNI_ARGS",
                format!("invalid MAC \"{m}\": not a MAC address"),
            )
        });
    }
    Ok(conf.mac)
}

/// `0 <= mtu <= master's MTU`.
pub fn check_mtu(conf: &NetConf, master: &Link) -> CniResult<()> {
    let master_mtu = master.mtu.unwrap_or(u32::MAX);
    if conf.mtu > master_mtu {
        return Err(CniError::invalid_field(
            "mtu",
            conf.mtu,
            format!(
                "must be in [0, {master_mtu}], the MTU of master \"{}\"",
                master.name
            ),
        ));
    }
    Ok(())
}

// ------------------------------------------------------------ host checks --

fn nl_err(what: impl Into<String>, e: NetlinkError) -> CniError {
    CniError::new(Code::Plugin(plugin_codes::NETLINK), what).with_details(chain(&e))
}

/// The master link: named in the config, or the default route's interface.
fn resolve_master(nl: &mut Netlink, conf: &NetConf) -> CniResult<Link> {
    let where_ = if conf.link_in_container {
        "the container namespace"
    } else {
        "the host namespace"
    };
    match &conf.master {
        Some(name) => nl
            .link_by_name(name)
            .map_err(|e| nl_err(format!("failed to look up master \"{name}\""), e))?
            .ok_or_else(|| {
                CniError::invalid_field("master", name, format!("no such link in {where_}"))
            }),
        None => {
            let oif = nl
                .default_route_oif()
                .map_err(|e| nl_err("failed to list routes to find the default master", e))?
                .ok_or_else(|| {
                    CniError::new(
                        Code::InvalidConfig,
                        format!("master is not set and {where_} has no default route interface"),
                    )
                })?;
            nl.link_by_index(oif)
                .map_err(|e| nl_err("failed to look up the default route's interface", e))?
                .ok_or_else(|| {
                    CniError::new(
                        Code::InvalidConfig,
                        "master is not set and the default route's interface vanished",
                    )
                })
        }
    }
}

// ----------------------------------------------------------------- guards --

/// A link in the container netns, deleted on Drop unless committed.
struct LinkGuard {
    nl: Netlink,
    index: u32,
    committed: bool,
}

impl LinkGuard {
    fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for LinkGuard {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = self.nl.delete_link(self.index) {
                if !e.is_not_found() {
                    eprintln!(
                        "cleanup: failed to delete link {}: {}",
                        self.index,
                        chain(&e)
                    );
                }
            }
        }
    }
}

/// An IPAM ADD in progress or done; IPAM DEL on Drop unless committed. Armed
/// before the ADD is sent: SPEC §4 wants a DEL after a failed ADD as well.
struct IpamGuard<'a> {
    ipam: &'a Ipam,
    args: &'a CmdArgs,
    committed: bool,
}

impl IpamGuard<'_> {
    fn commit(mut self) {
        self.committed = true;
    }
}

impl Drop for IpamGuard<'_> {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = self.ipam.del(self.args) {
                eprintln!("cleanup: ipam {} DEL failed: {e}", self.ipam.name());
            }
        }
    }
}

// ------------------------------------------------------------------ verbs --

pub struct Macvlan;

impl Plugin for Macvlan {
    fn add(&self, args: &CmdArgs) -> CniResult<CniOutput> {
        cmd_add(args)
    }
    fn del(&self, args: &CmdArgs) -> CniResult<()> {
        cmd_del(args)
    }
    fn check(&self, args: &CmdArgs) -> CniResult<()> {
        cmd_check(args)
    }
    fn status(&self, args: &CmdArgs) -> CniResult<()> {
        cmd_status(args)
    }
    fn gc(&self, args: &CmdArgs) -> CniResult<()> {
        cmd_gc(args)
    }
}

fn netns_arg(args: &CmdArgs) -> CniResult<&std::path::Path> {
    args.netns
        .as_deref()
        .ok_or_else(|| CniError::env("CNI_NETNS", "required environment variable is not set"))
}

pub fn cmd_add(args: &CmdArgs) -> CniResult<CniOutput> {
    let conf = parse_config(&args.stdin)?;
    let mac = effective_mac(&conf, args)?;
    let ipam = conf.ipam_type.as_deref().map(Ipam::for_type).transpose()?;
    // Refuse before creating anything rather than fail in the printer.
    if ipam.is_none() && version::shape(&conf.cni_version).ok() == Some(version::Shape::V020) {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            "cannot convert: no valid IP addresses",
        )
        .with_details(format!(
            "an L2-only macvlan (no ipam) cannot be expressed in version {}",
            conf.cni_version
        )));
    }
    let netns_path = netns_arg(args)?;
    let ns = NetNs::open(netns_path)?;
    // With linkInContainer the master lives in the container, so that socket
    // is needed first; otherwise the master is in our (the node's) namespace.
    let mut early_ctr = None;
    let mut host = None;
    let master_nl = if conf.link_in_container {
        early_ctr.insert(Netlink::open_in(&ns).map_err(|e| nl_err("failed to open netlink", e))?)
    } else {
        host.insert(Netlink::new().map_err(|e| nl_err("failed to open netlink", e))?)
    };
    let master = resolve_master(master_nl, &conf)?;
    check_mtu(&conf, &master)?;

    let tmp = netlink::temp_link_name();
    master_nl
        .create_macvlan(&MacvlanSpec {
            name: &tmp,
            master_index: master.index,
            mode: conf.mode.to_kernel(),
            mtu: (conf.mtu > 0).then_some(conf.mtu),
            mac,
            bcqueuelen: conf.bcqueuelen,
            netns_fd: (!conf.link_in_container).then(|| ns.raw_fd()),
        })
        .map_err(|e| {
            nl_err(
                format!(
                    "failed to create macvlan on master \"{}\" (mode {})",
                    master.name,
                    conf.mode.as_str()
                ),
                e,
            )
        })?;

    // The link exists from here on. Its container side (find, rename,
    // announce knobs) runs on a thread inside the netns while this thread
    // asks the IPAM, so the IPAM's latency (store fsyncs, or an exec)
    // overlaps with it. IPAM still comes after the link: a bad master or
    // mode costs no allocation.
    let ifname = args.ifname.as_str();
    let l3 = ipam.is_some();
    let mut ipam_guard = None;
    let (setup, ipam_res) = std::thread::scope(|s| {
        let tmp = tmp.as_str();
        let handle = match ns.spawn_in(s, move || container_setup(early_ctr, tmp, ifname, l3)) {
            Ok(h) => h,
            Err(e) => return (Err(SetupFailure::new(None, None, e.into())), None),
        };
        let ipam_res = ipam.as_ref().map(|ipam| {
            // Armed before the call: SPEC §4 wants a DEL after a failed ADD too.
            ipam_guard = Some(IpamGuard {
                ipam,
                args,
                committed: false,
            });
            ipam.add(args)
        });
        let setup =
            netns::join(handle).unwrap_or_else(|e| Err(SetupFailure::new(None, None, e.into())));
        (setup, ipam_res)
    });
    let (nl, index) = match setup {
        Ok(x) => x,
        Err(f) => {
            remove_half_made(&ns, f.nl, f.index, &tmp);
            return Err(f.err);
        }
    };
    let mut link = LinkGuard {
        nl,
        index,
        committed: false,
    };
    let ipam_out = match ipam_res {
        None => None,
        Some(res) => {
            let out = res?;
            if out.ips.is_empty() {
                return Err(CniError::new(
                    Code::Plugin(plugin_codes::DELEGATE),
                    format!(
                        "ipam plugin \"{}\" returned no IP config",
                        ipam.as_ref().map(Ipam::name).unwrap_or("?")
                    ),
                ));
            }
            Some(out)
        }
    };

    if ipam_out
        .as_ref()
        .is_some_and(|o| o.ips.iter().any(|ip| ip.address.is_ipv6()))
    {
        enable_ipv6(&ns, &args.ifname)?;
    }
    configure(
        &mut link.nl,
        link.index,
        &args.ifname,
        ipam_out.as_ref(),
        Settle::DEFAULT,
    )?;

    let final_link = link
        .nl
        .link_by_index(link.index)
        .map_err(|e| nl_err("failed to read back the macvlan", e))?
        .ok_or_else(|| {
            CniError::new(
                Code::Plugin(plugin_codes::NETLINK),
                format!("macvlan \"{}\" vanished during ADD", args.ifname),
            )
        })?;

    let mut result = CniOutput {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![Interface {
            name: args.ifname.clone(),
            mac: final_link
                .mac
                .as_deref()
                .map(netlink::format_mac)
                .unwrap_or_default(),
            sandbox: netns_path.display().to_string(),
            // `interfaces[].mtu` is new in 1.1.0; older results keep the
            // reference plugin's exact shape.
            mtu: if conf.cni_version == "1.1.0" {
                final_link.mtu
            } else {
                None
            },
            ..Default::default()
        }],
        ..Default::default()
    };
    if let Some(out) = ipam_out {
        result.ips = out
            .ips
            .into_iter()
            .map(|mut ip| {
                ip.interface = Some(0);
                ip
            })
            .collect();
        result.routes = out.routes;
        result.dns = out.dns;
    }
    if !conf.dns.is_empty() {
        result.dns = conf.dns.clone();
    }
    if let Some(g) = ipam_guard {
        g.commit();
    }
    link.commit();
    Ok(result)
}

/// A container-side setup that failed, with what it got hold of for cleanup.
struct SetupFailure {
    nl: Option<Netlink>,
    index: Option<u32>,
    err: CniError,
}

impl SetupFailure {
    fn new(nl: Option<Netlink>, index: Option<u32>, err: CniError) -> SetupFailure {
        SetupFailure { nl, index, err }
    }
}

/// On a thread inside the container netns: open (or reuse) the netlink
/// socket there, find the new link by its temporary name, rename it to
/// CNI_IFNAME and set the announce knobs.
fn container_setup(
    early: Option<Netlink>,
    tmp: &str,
    ifname: &str,
    l3: bool,
) -> Result<(Netlink, u32), SetupFailure> {
    let mut nl = match early {
        Some(nl) => nl,
        None => Netlink::new().map_err(|e| {
            SetupFailure::new(
                None,
                None,
                nl_err("failed to open netlink in the container namespace", e),
            )
        })?,
    };
    let index = match find_and_rename(&mut nl, tmp, ifname) {
        Ok(i) => i,
        Err((index, err)) => return Err(SetupFailure::new(Some(nl), index, err)),
    };
    if l3 {
        // With these the kernel announces the address itself (gratuitous
        // ARP / unsolicited NA) when the link comes up. Best effort, as in
        // the reference plugin: a kernel without the knob still works.
        let _ = netns::set_sysctl(&format!("net/ipv4/conf/{ifname}/arp_notify"), "1");
        let _ = netns::set_sysctl(&format!("net/ipv6/conf/{ifname}/ndisc_notify"), "1");
    }
    Ok((nl, index))
}

/// Find the new link by its temporary name and rename it to CNI_IFNAME. On
/// failure, the index (if found) comes back so the caller can delete it.
fn find_and_rename(
    nl: &mut dyn LinkOps,
    tmp: &str,
    ifname: &str,
) -> Result<u32, (Option<u32>, CniError)> {
    let index = match nl.link_by_name(tmp) {
        Ok(Some(l)) => l.index,
        Ok(None) => {
            return Err((
                None,
                CniError::new(
                    Code::Plugin(plugin_codes::NETLINK),
                    format!("the new macvlan {tmp} vanished from the container namespace"),
                ),
            ))
        }
        Err(e) => return Err((None, nl_err("failed to find the new macvlan", e))),
    };
    if let Err(e) = nl.rename_link(index, ifname) {
        let err = if e.is_exists() {
            // The spec's duplicate-name rule: an existing CNI_IFNAME is an error.
            CniError::env(
                "CNI_IFNAME",
                format!("interface \"{ifname}\" already exists in the container namespace"),
            )
        } else {
            nl_err(format!("failed to rename macvlan to \"{ifname}\""), e)
        };
        return Err((Some(index), err));
    }
    Ok(index)
}

/// Delete a link whose setup failed: by index over the socket we have, or
/// by its temporary name from a fresh socket in the namespace.
fn remove_half_made(ns: &NetNs, nl: Option<Netlink>, index: Option<u32>, tmp: &str) {
    let res = match (nl, index) {
        (Some(mut nl), Some(i)) => nl.delete_link(i).map_err(|e| chain(&e)),
        _ => ns
            .run(|| -> Result<(), String> {
                let mut nl = Netlink::new().map_err(|e| chain(&e))?;
                match nl.link_by_name(tmp).map_err(|e| chain(&e))? {
                    Some(l) => nl.delete_link(l.index).map_err(|e| chain(&e)),
                    None => Ok(()),
                }
            })
            .map_err(|e| chain(&e))
            .and_then(|r| r),
    };
    if let Err(e) = res {
        eprintln!("cleanup: failed to delete macvlan {tmp}: {e}");
    }
}

/// IPv6 needs enabling on the interface (and lo) before an address sticks,
/// and `keep_addr_on_down` so a flap does not drop it; sysctls need a thread
/// inside the namespace.
fn enable_ipv6(ns: &NetNs, ifname: &str) -> CniResult<()> {
    ns.run(|| -> CniResult<()> {
        for key in [
            format!("net/ipv6/conf/{ifname}/disable_ipv6"),
            "net/ipv6/conf/lo/disable_ipv6".to_string(),
        ] {
            match netns::set_sysctl(&key, "0") {
                Ok(()) => {}
                // IPv6 compiled out or disabled at boot: the address add
                // reports that more precisely.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(CniError::io(format!("failed to set {key}=0"), e)),
            }
        }
        let _ = netns::set_sysctl(&format!("net/ipv6/conf/{ifname}/keep_addr_on_down"), "1");
        Ok(())
    })?
}

/// How long to wait for IPv6 duplicate address detection, and how often to look.
#[derive(Debug, Clone, Copy)]
pub struct Settle {
    pub timeout: std::time::Duration,
    pub interval: std::time::Duration,
}

impl Settle {
    /// The reference plugin's bound.
    pub const DEFAULT: Settle = Settle {
        timeout: std::time::Duration::from_secs(5),
        interval: std::time::Duration::from_millis(20),
    };
}

/// Addresses, link up, routes: over the container's netlink socket only.
fn settle_addresses(
    nl: &mut dyn LinkOps,
    index: u32,
    ifname: &str,
    settle: Settle,
) -> CniResult<()> {
    let deadline = std::time::Instant::now() + settle.timeout;
    loop {
        let states = nl
            .address_states(index)
            .map_err(|e| nl_err("failed to list addresses", e))?;
        if let Some(bad) = states.iter().find(|a| a.dad_failed) {
            return Err(CniError::new(
                Code::Plugin(plugin_codes::NETLINK),
                format!(
                    "address {} on \"{ifname}\" failed duplicate address detection",
                    bad.addr
                ),
            ));
        }
        if !states.iter().any(|a| a.tentative) {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(CniError::new(
                Code::TryAgainLater,
                format!(
                    "IPv6 addresses on \"{ifname}\" still tentative after {:?}",
                    settle.timeout
                ),
            ));
        }
        std::thread::sleep(settle.interval);
    }
}

fn configure(
    nl: &mut dyn LinkOps,
    index: u32,
    ifname: &str,
    ipam: Option<&CniOutput>,
    settle: Settle,
) -> CniResult<()> {
    if let Some(out) = ipam {
        for ip in &out.ips {
            nl.add_address(index, ip.address).map_err(|e| {
                nl_err(
                    format!("failed to add IP addr {} to \"{ifname}\"", ip.address),
                    e,
                )
            })?;
        }
    }
    nl.set_link_up(index)
        .map_err(|e| nl_err(format!("failed to set \"{ifname}\" up"), e))?;
    // A tentative IPv6 address cannot be a source yet (binds fail with
    // EADDRNOTAVAIL): with a v6 gateway, wait for DAD like the reference.
    if ipam.is_some_and(|o| {
        o.ips
            .iter()
            .any(|ip| ip.gateway.is_some_and(|g| g.is_ipv6()))
    }) {
        settle_addresses(nl, index, ifname, settle)?;
    }
    if let Some(out) = ipam {
        for r in &out.routes {
            // A route without a gateway goes via the family's IPAM gateway,
            // as the reference's ConfigureIface does.
            let gw = r.gw.or_else(|| {
                out.ips
                    .iter()
                    .filter(|ip| ip.address.is_ipv4() == r.dst.is_ipv4())
                    .find_map(|ip| ip.gateway)
            });
            let spec = RouteSpec {
                dst: r.dst,
                gw,
                oif: index,
                mtu: r.mtu,
                advmss: r.advmss,
                priority: r.priority,
                table: r.table,
                scope: r.scope,
            };
            match nl.add_route(&spec) {
                Ok(()) => {}
                // Already there (e.g. the connected route of the address).
                Err(e) if e.is_exists() => {}
                Err(e) => {
                    return Err(nl_err(
                        format!(
                            "failed to add route {} via {} dev \"{ifname}\"",
                            r.dst,
                            gw.map(|g| g.to_string()).unwrap_or_else(|| "-".into())
                        ),
                        e,
                    ))
                }
            }
        }
    }
    Ok(())
}

pub fn cmd_del(args: &CmdArgs) -> CniResult<()> {
    let conf = parse_del_config(&args.stdin)?;
    let mut errors: Vec<CniError> = Vec::new();
    // A missing netns (or none given) leaves only the IPAM to release.
    let ns = match &args.netns {
        None => None,
        Some(p) => match NetNs::open(p) {
            Ok(ns) => Some(ns),
            Err(e) if e.is_not_found() => None,
            Err(e) => {
                errors.push(e.into());
                None
            }
        },
    };
    let ifname = args.ifname.as_str();
    // The link deletion (the kernel waits for RCU grace periods there) and
    // the IPAM DEL are independent: run them side by side. The IPAM DEL
    // runs whatever happens to the link; a DEL must free the address.
    std::thread::scope(|s| {
        let handle = ns
            .as_ref()
            .map(|ns| ns.spawn_in(s, move || delete_link_here(ifname)));
        if let Some(t) = &conf.ipam_type {
            if let Err(e) = Ipam::for_type(t).and_then(|ipam| ipam.del(args)) {
                errors.push(e);
            }
        }
        match handle {
            None => {}
            Some(Err(e)) => errors.push(e.into()),
            Some(Ok(h)) => match netns::join(h) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(e.into()),
            },
        }
    });
    // Report the first failure; the rest go into its details.
    let mut it = errors.into_iter();
    match it.next() {
        None => Ok(()),
        Some(mut first) => {
            for e in it {
                if !first.details.is_empty() {
                    first.details.push_str("; ");
                }
                first.details.push_str(&format!("also: {e}"));
            }
            Err(first)
        }
    }
}

/// On a thread inside the container netns: delete `ifname`; a missing link
/// is success.
fn delete_link_here(ifname: &str) -> CniResult<()> {
    let mut nl = Netlink::new().map_err(|e| nl_err("failed to open netlink", e))?;
    let Some(link) = nl
        .link_by_name(ifname)
        .map_err(|e| nl_err(format!("failed to look up \"{ifname}\""), e))?
    else {
        return Ok(());
    };
    match nl.delete_link(link.index) {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(nl_err(format!("failed to delete \"{ifname}\""), e)),
    }
}

fn mismatch(msg: impl Into<String>) -> CniError {
    CniError::new(Code::Plugin(plugin_codes::CHECK_MISMATCH), msg)
}

pub fn cmd_check(args: &CmdArgs) -> CniResult<()> {
    let conf = parse_config(&args.stdin)?;
    if let Some(t) = &conf.ipam_type {
        Ipam::for_type(t)?.check(args)?;
    }
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(Code::InvalidConfig, "required prevResult missing"))?;
    let prev = version::decode_result(prev).map_err(|e| CniError {
        msg: format!("invalid prevResult: {}", e.msg),
        ..e
    })?;
    let netns_path = netns_arg(args)?;
    let sandbox = netns_path.display().to_string();
    let (if_idx, iface) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == args.ifname)
        .ok_or_else(|| mismatch(format!("prevResult has no interface \"{}\"", args.ifname)))?;
    if iface.sandbox != sandbox {
        return Err(mismatch(format!(
            "sandbox in prevResult {} doesn't match configured netns: {sandbox}",
            iface.sandbox
        )));
    }
    let ns = NetNs::open(netns_path)?;
    let mut ctr = Netlink::open_in(&ns).map_err(|e| nl_err("failed to open netlink", e))?;
    if conf.link_in_container {
        resolve_master(&mut ctr, &conf)?;
    } else {
        let mut host = Netlink::new().map_err(|e| nl_err("failed to open netlink", e))?;
        resolve_master(&mut host, &conf)?;
    }
    let link = ctr
        .link_by_name(&args.ifname)
        .map_err(|e| nl_err(format!("failed to look up \"{}\"", args.ifname), e))?
        .ok_or_else(|| mismatch(format!("link \"{}\" not found in {sandbox}", args.ifname)))?;
    if link.kind.as_deref() != Some("macvlan") {
        return Err(mismatch(format!(
            "link \"{}\" is {:?}, not a macvlan",
            args.ifname, link.kind
        )));
    }
    if link.macvlan_mode != Some(conf.mode.to_kernel()) {
        return Err(mismatch(format!(
            "container macvlan mode {:?} does not match expected value: {}",
            link.macvlan_mode,
            conf.mode.as_str()
        )));
    }
    let actual_mac = link
        .mac
        .as_deref()
        .map(netlink::format_mac)
        .unwrap_or_default();
    if !iface.mac.is_empty() && !iface.mac.eq_ignore_ascii_case(&actual_mac) {
        return Err(mismatch(format!(
            "interface \"{}\" MAC {actual_mac} does not match prevResult {}",
            args.ifname, iface.mac
        )));
    }
    let addrs = ctr
        .list_addresses(Some(link.index))
        .map_err(|e| nl_err("failed to list addresses", e))?;
    for ip in prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == if_idx))
    {
        if !addrs.iter().any(|(_, a)| *a == ip.address) {
            return Err(mismatch(format!(
                "address {} not found on \"{}\"",
                ip.address, args.ifname
            )));
        }
    }
    let routes = ctr
        .list_routes()
        .map_err(|e| nl_err("failed to list routes", e))?;
    for r in &prev.routes {
        let found = routes.iter().any(|k| {
            k.dst == canonical(r.dst)
                && k.oif == Some(link.index)
                && (r.gw.is_none() || k.gw == r.gw)
        });
        if !found {
            return Err(mismatch(format!(
                "route {} via {} not found on \"{}\"",
                r.dst,
                r.gw.map(|g| g.to_string()).unwrap_or_else(|| "-".into()),
                args.ifname
            )));
        }
    }
    Ok(())
}

/// The kernel reports route destinations with host bits cleared.
fn canonical(c: crate::types::IpCidr) -> crate::types::IpCidr {
    crate::types::IpCidr::new(c.network(), c.prefix()).unwrap_or(c)
}

pub fn cmd_status(args: &CmdArgs) -> CniResult<()> {
    // Ready means an ADD could succeed: the master must exist here (the
    // reference leaves this as a TODO), and the IPAM must be ready.
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct StatusConf {
        #[serde(default)]
        master: Option<String>,
        #[serde(default)]
        link_in_container: Option<bool>,
    }
    let mut v: serde_json::Value =
        serde_json::from_slice(&args.stdin).map_err(|e| CniError::decode("network config", e))?;
    normalize_keys(&mut v);
    // Wrong types here are left to ADD to report; STATUS only needs the names.
    let sc = StatusConf::deserialize(&v).unwrap_or(StatusConf {
        master: None,
        link_in_container: None,
    });
    if let Some(master) = sc.master.filter(|m| !m.is_empty()) {
        if !sc.link_in_container.unwrap_or(false) {
            let mut nl = Netlink::new().map_err(|e| nl_err("failed to open netlink", e))?;
            let found = nl
                .link_by_name(&master)
                .map_err(|e| nl_err(format!("failed to look up master \"{master}\""), e))?;
            if found.is_none() {
                return Err(CniError::new(
                    Code::Unavailable,
                    format!("master \"{master}\" does not exist on this node"),
                ));
            }
        }
    }
    let conf = parse_del_config(&args.stdin)?;
    match &conf.ipam_type {
        Some(t) => Ipam::for_type(t)?.status(args),
        None => Ok(()),
    }
}

pub fn cmd_gc(args: &CmdArgs) -> CniResult<()> {
    // The spec wants GC forwarded to the delegate; the reference drops it.
    let conf = parse_del_config(&args.stdin)?;
    match &conf.ipam_type {
        Some(t) => Ipam::for_type(t)?.gc(args),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(s: &str) -> CniResult<NetConf> {
        parse_config(s.as_bytes())
    }

    #[test]
    fn seed_config_parses() {
        let c = conf(r#"{"cniVersion":"0.3.1","name":"migration-bridge","type":"macvlan","master":"eth1","mode":"bridge","ipam":{"type":"whereabouts","range":"10.200.5.0/24"}}"#).unwrap();
        assert_eq!(c.master.as_deref(), Some("eth1"));
        assert_eq!(c.mode, Mode::Bridge);
        assert_eq!(c.ipam_type.as_deref(), Some("whereabouts"));
        assert_eq!(c.mtu, 0);
    }

    #[test]
    fn every_mode_and_unknown() {
        for m in ["bridge", "private", "vepa", "passthru", "source"] {
            let c = conf(&format!(r#"{{"mode":"{m}"}}"#)).unwrap();
            assert_eq!(c.mode.as_str(), m);
        }
        assert_eq!(conf("{}").unwrap().mode, Mode::Bridge);
        let e = conf(r#"{"mode":"bogus"}"#).unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(
            e.msg.contains("mode") && e.msg.contains("bogus"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        for (json, field, code) in [
            (r#"{"mtu":-1}"#, "mtu", Code::InvalidConfig),
            (r#"{"mac":"zz"}"#, "mac", Code::InvalidConfig),
            (
                r#"{"runtimeConfig":{"mac":"1:2"}}"#,
                "runtimeConfig.mac",
                Code::InvalidConfig,
            ),
            (r#"{"master":"a/b"}"#, "master", Code::InvalidConfig),
            (
                r#"{"ipam":{"type":"../x"}}"#,
                "ipam.type",
                Code::InvalidConfig,
            ),
            (r#"{"mtu":"big"}"#, "mtu", Code::Decode),
            // Nested and out-of-range values (found by tests/fuzz).
            (r#"{"ipam":{"type":5}}"#, "field \"ipam\"", Code::Decode),
            (r#"{"bcqueuelen":5000000000}"#, "bcqueuelen", Code::Decode),
            (
                r#"{"dns":{"nameservers":"x"}}"#,
                "field \"dns\"",
                Code::Decode,
            ),
            (r#"{not json"#, "network config", Code::Decode),
        ] {
            let e = conf(json).unwrap_err();
            assert_eq!(e.code, code, "{json}");
            assert!(e.msg.contains(field), "{json}: {}", e.msg);
        }
    }

    #[test]
    fn keys_match_case_insensitively_like_go() {
        let c = conf(r#"{"Master":"eth1","MODE":"vepa","linkincontainer":true,"RuntimeConfig":{"MAC":"02:00:00:00:00:09"},"ipam":{"Type":"static"}}"#)
            .unwrap();
        assert_eq!(c.master.as_deref(), Some("eth1"));
        assert_eq!(c.mode, Mode::Vepa);
        assert!(c.link_in_container);
        assert_eq!(c.runtime_mac.unwrap()[5], 9);
        assert_eq!(c.ipam_type.as_deref(), Some("static"));
        // An exact match wins over a case variant.
        let c = conf(r#"{"mode":"private","Mode":"vepa"}"#).unwrap();
        assert_eq!(c.mode, Mode::Private);
    }

    #[test]
    fn empty_ipam_is_l2() {
        assert_eq!(conf(r#"{"ipam":{}}"#).unwrap().ipam_type, None);
        assert_eq!(conf("{}").unwrap().ipam_type, None);
    }

    #[test]
    fn mac_precedence() {
        let c = conf(r#"{"mac":"02:00:00:00:00:01","runtimeConfig":{"mac":"02:00:00:00:00:03"}}"#)
            .unwrap();
        let args = CmdArgs {
            args: vec![("MAC".into(), "02:00:00:00:00:02".into())],
            ..Default::default()
        };
        assert_eq!(effective_mac(&c, &args).unwrap().unwrap()[5], 3);
        let c2 = conf(r#"{"mac":"02:00:00:00:00:01"}"#).unwrap();
        assert_eq!(effective_mac(&c2, &args).unwrap().unwrap()[5], 2);
        assert_eq!(
            effective_mac(&c2, &CmdArgs::default()).unwrap().unwrap()[5],
            1
        );
        let bad = CmdArgs {
            args: vec![("MAC".into(), "nope".into())],
            ..Default::default()
        };
        assert_eq!(
            effective_mac(&c2, &bad).unwrap_err().code,
            Code::InvalidEnvironment
        );
    }

    #[test]
    fn mtu_against_master() {
        let master = Link {
            name: "eth1".into(),
            mtu: Some(1500),
            ..Default::default()
        };
        assert!(check_mtu(&conf(r#"{"mtu":1500}"#).unwrap(), &master).is_ok());
        assert!(check_mtu(&conf(r#"{"mtu":0}"#).unwrap(), &master).is_ok());
        let e = check_mtu(&conf(r#"{"mtu":9000}"#).unwrap(), &master).unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(
            e.msg.contains("mtu") && e.msg.contains("9000") && e.msg.contains("1500"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn del_is_lenient() {
        let d = parse_del_config(
            br#"{"master":"gone0","mode":"bogus","mtu":-5,"ipam":{"type":"host-local"}}"#,
        )
        .unwrap();
        assert_eq!(d.ipam_type.as_deref(), Some("host-local"));
        assert_eq!(parse_del_config(b"{oops").unwrap_err().code, Code::Decode);
    }

    /// A recording fake of the container-side netlink seam.
    #[derive(Default)]
    struct FakeNl {
        ops: Vec<String>,
        links: Vec<(u32, String)>,
        /// (operation prefix, errno): the first op starting with it fails.
        fail: Vec<(&'static str, i32)>,
        /// address_states answers, popped front; empty: settled.
        states: Vec<Vec<netlink::AddrState>>,
    }

    impl FakeNl {
        fn record(&mut self, op: String) -> netlink::Result<()> {
            let hit = self.fail.iter().position(|(p, _)| op.starts_with(p));
            self.ops.push(op);
            match hit {
                Some(i) => {
                    let (_, errno) = self.fail.remove(i);
                    Err(NetlinkError::Kernel {
                        op: "fake",
                        source: std::io::Error::from_raw_os_error(errno),
                    })
                }
                None => Ok(()),
            }
        }
    }

    impl LinkOps for FakeNl {
        fn link_by_name(&mut self, name: &str) -> netlink::Result<Option<Link>> {
            self.record(format!("get {name}"))?;
            Ok(self
                .links
                .iter()
                .find(|(_, n)| n == name)
                .map(|(i, n)| Link {
                    index: *i,
                    name: n.clone(),
                    ..Default::default()
                }))
        }
        fn rename_link(&mut self, index: u32, name: &str) -> netlink::Result<()> {
            self.record(format!("rename {index} {name}"))
        }
        fn set_link_up(&mut self, index: u32) -> netlink::Result<()> {
            self.record(format!("up {index}"))
        }
        fn delete_link(&mut self, index: u32) -> netlink::Result<()> {
            self.record(format!("del {index}"))
        }
        fn add_address(&mut self, index: u32, addr: crate::types::IpCidr) -> netlink::Result<()> {
            self.record(format!("addr {index} {addr}"))
        }
        fn add_route(&mut self, r: &RouteSpec) -> netlink::Result<()> {
            let gw = r.gw.map(|g| g.to_string()).unwrap_or_else(|| "-".into());
            self.record(format!("route {} via {gw} oif {}", r.dst, r.oif))
        }
        fn address_states(&mut self, index: u32) -> netlink::Result<Vec<netlink::AddrState>> {
            self.record(format!("states {index}"))?;
            Ok(if self.states.is_empty() {
                Vec::new()
            } else {
                self.states.remove(0)
            })
        }
    }

    fn ipam_result(json: serde_json::Value) -> CniOutput {
        serde_json::from_value(json).unwrap()
    }

    const FAST: Settle = Settle {
        timeout: std::time::Duration::from_millis(50),
        interval: std::time::Duration::from_millis(1),
    };

    #[test]
    fn configure_orders_ops_and_fills_family_gateways() {
        let out = ipam_result(serde_json::json!({
            "cniVersion": "1.0.0",
            "ips": [{"address": "10.0.0.5/24", "gateway": "10.0.0.1"}, {"address": "fd00::5/64"}],
            "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.9.0.0/16", "gw": "10.0.0.254"}, {"dst": "fd01::/64"}]
        }));
        let mut nl = FakeNl::default();
        configure(&mut nl, 7, "net1", Some(&out), FAST).unwrap();
        assert_eq!(
            nl.ops,
            [
                "addr 7 10.0.0.5/24",
                "addr 7 fd00::5/64",
                "up 7",
                "route 0.0.0.0/0 via 10.0.0.1 oif 7",
                "route 10.9.0.0/16 via 10.0.0.254 oif 7",
                "route fd01::/64 via - oif 7",
            ]
        );
    }

    #[test]
    fn configure_l2_only_sets_up() {
        let mut nl = FakeNl::default();
        configure(&mut nl, 3, "net1", None, FAST).unwrap();
        assert_eq!(nl.ops, ["up 3"]);
    }

    #[test]
    fn existing_route_is_fine_unreachable_gateway_is_not() {
        let out = ipam_result(serde_json::json!({
            "cniVersion": "1.0.0",
            "ips": [{"address": "10.0.0.5/24"}],
            "routes": [{"dst": "10.0.0.0/24"}, {"dst": "192.168.0.0/16", "gw": "172.16.0.1"}]
        }));
        let mut nl = FakeNl {
            fail: vec![
                ("route 10.0.0.0/24", libc::EEXIST),
                ("route 192.168", libc::ENETUNREACH),
            ],
            ..Default::default()
        };
        let e = configure(&mut nl, 2, "net1", Some(&out), FAST).unwrap_err();
        assert_eq!(e.code, Code::Plugin(plugin_codes::NETLINK));
        assert!(
            e.msg.contains("192.168.0.0/16") && e.msg.contains("172.16.0.1"),
            "{}",
            e.msg
        );
        assert!(e.details.contains("unreachable"), "{}", e.details);
    }

    #[test]
    fn address_failure_names_address_and_interface() {
        let out = ipam_result(
            serde_json::json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/24"}]}),
        );
        let mut nl = FakeNl {
            fail: vec![("addr", libc::EADDRNOTAVAIL)],
            ..Default::default()
        };
        let e = configure(&mut nl, 2, "net1", Some(&out), FAST).unwrap_err();
        assert!(
            e.msg.contains("10.0.0.5/24") && e.msg.contains("net1"),
            "{}",
            e.msg
        );
        assert_eq!(nl.ops, ["addr 2 10.0.0.5/24"], "stops at the first failure");
    }

    fn v6_with_gateway() -> CniOutput {
        ipam_result(serde_json::json!({
            "cniVersion": "1.0.0",
            "ips": [{"address": "fd00::5/64", "gateway": "fd00::1"}]
        }))
    }

    fn state(tentative: bool, dad_failed: bool) -> Vec<netlink::AddrState> {
        vec![netlink::AddrState {
            addr: "fd00::5/64".parse().unwrap(),
            tentative,
            dad_failed,
        }]
    }

    #[test]
    fn v6_gateway_waits_for_dad() {
        let mut nl = FakeNl {
            states: vec![state(true, false), state(true, false), state(false, false)],
            ..Default::default()
        };
        configure(&mut nl, 4, "net1", Some(&v6_with_gateway()), FAST).unwrap();
        assert_eq!(nl.ops.iter().filter(|o| o.starts_with("states")).count(), 3);
    }

    #[test]
    fn dad_failure_and_timeout_are_errors() {
        let mut nl = FakeNl {
            states: vec![state(false, true)],
            ..Default::default()
        };
        let e = configure(&mut nl, 4, "net1", Some(&v6_with_gateway()), FAST).unwrap_err();
        assert!(e.msg.contains("duplicate address detection"), "{}", e.msg);
        let mut nl = FakeNl {
            states: (0..1000).map(|_| state(true, false)).collect(),
            ..Default::default()
        };
        let e = configure(&mut nl, 4, "net1", Some(&v6_with_gateway()), FAST).unwrap_err();
        assert_eq!(e.code, Code::TryAgainLater);
    }

    #[test]
    fn rename_conflict_is_code_4_and_returns_index_for_cleanup() {
        let mut nl = FakeNl {
            links: vec![(9, "mgv0000abcd".into())],
            fail: vec![("rename", libc::EEXIST)],
            ..Default::default()
        };
        let (idx, e) = find_and_rename(&mut nl, "mgv0000abcd", "net1").unwrap_err();
        assert_eq!(idx, Some(9));
        assert_eq!(e.code, Code::InvalidEnvironment);
        assert!(e.msg.contains("CNI_IFNAME") && e.msg.contains("net1"));
        let mut nl = FakeNl::default();
        let (idx, e) = find_and_rename(&mut nl, "mgv0000abcd", "net1").unwrap_err();
        assert_eq!((idx, e.code), (None, Code::Plugin(plugin_codes::NETLINK)));
        let mut nl = FakeNl {
            links: vec![(9, "mgv0000abcd".into())],
            ..Default::default()
        };
        assert_eq!(find_and_rename(&mut nl, "mgv0000abcd", "net1").unwrap(), 9);
        assert_eq!(nl.ops, ["get mgv0000abcd", "rename 9 net1"]);
    }
}
