//! Which IP the agent's migration listeners bind and publish.
//!
//! - A migration network configured: the global unicast address of `migration0`
//!   (the interface Multus attaches as `<nad>@migration0`). If the interface is
//!   missing, down, or has no usable address, the agent is *not ready* and says
//!   why. It never falls back to the pod network: migration traffic silently
//!   moving back onto the pod network is exactly what the feature must prevent.
//! - No migration network: the pod IP (KubeVirt's documented default).
//!
//! The decision ([`select`]) is pure over an observed snapshot of the interface;
//! [`observe`] reads that snapshot over rtnetlink. A netlink socket belongs to
//! the network namespace it was opened in, so [`discover`] must run in the
//! agent's own namespace (the agent pod's, which is where it runs anyway).

use std::fmt;
use std::net::IpAddr;

use futures::TryStreamExt;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags};

/// The interface name Multus gives the migration network attachment.
pub const MIGRATION_INTERFACE: &str = "migration0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// What the agent is configured to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationNetwork {
    /// No dedicated network: migrate over the pod network.
    PodNetwork,
    /// A dedicated network attached as `interface` (normally `migration0`);
    /// `network` is the NAD name, for messages.
    Dedicated {
        network: String,
        interface: String,
        prefer: Option<Family>,
    },
}

/// Scope as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Global,
    Site,
    Link,
    Host,
    Other,
}

/// One address of the interface, as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedAddress {
    pub ip: IpAddr,
    pub prefix_len: u8,
    pub scope: Scope,
    pub tentative: bool,
    pub deprecated: bool,
    pub dad_failed: bool,
}

/// A snapshot of one interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedInterface {
    pub name: String,
    pub up: bool,
    /// IFLA_MTU (`None` if the kernel sent none); the pre-flight probe sizes
    /// its full-size packets from it.
    pub mtu: Option<u32>,
    pub addresses: Vec<ObservedAddress>,
}

/// Why the agent cannot serve migrations on the configured network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    #[error("migration network {network} is configured but interface {interface} does not exist in the agent's namespace")]
    InterfaceMissing { network: String, interface: String },
    #[error("migration network {network}: interface {interface} is down")]
    InterfaceDown { network: String, interface: String },
    #[error("migration network {network}: interface {interface} has no usable global address ({})", describe_skipped(.skipped))]
    NoGlobalAddress {
        network: String,
        interface: String,
        /// Every address seen and why it was not taken.
        skipped: Vec<(IpAddr, SkipReason)>,
    },
}

fn describe_skipped(skipped: &[(IpAddr, SkipReason)]) -> String {
    if skipped.is_empty() {
        return "no addresses at all".to_string();
    }
    skipped
        .iter()
        .map(|(ip, why)| format!("{ip}: {why}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    LinkLocal,
    HostScope,
    NotUnicast,
    Tentative,
    Deprecated,
    DadFailed,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::LinkLocal => "link-local",
            SkipReason::HostScope => "host scope",
            SkipReason::NotUnicast => "not unicast",
            SkipReason::Tentative => "tentative (DAD running)",
            SkipReason::Deprecated => "deprecated",
            SkipReason::DadFailed => "duplicate address detected",
        })
    }
}

/// Where the chosen address came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    PodNetwork,
    Interface(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationIp {
    pub ip: IpAddr,
    pub origin: Origin,
}

impl MigrationIp {
    /// `ip:port` with IPv6 in brackets.
    pub fn endpoint(&self, port: u16) -> String {
        crate::listener::format_endpoint(self.ip, port)
    }
}

fn skip_reason(a: &ObservedAddress) -> Option<SkipReason> {
    let link_local = match a.ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    let unicast = match a.ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast()),
    };
    if !unicast {
        Some(SkipReason::NotUnicast)
    } else if link_local || a.scope == Scope::Link {
        Some(SkipReason::LinkLocal)
    } else if a.ip.is_loopback() || a.scope == Scope::Host {
        Some(SkipReason::HostScope)
    } else if a.dad_failed {
        Some(SkipReason::DadFailed)
    } else if a.tentative {
        Some(SkipReason::Tentative)
    } else if a.deprecated {
        Some(SkipReason::Deprecated)
    } else {
        None
    }
}

/// The pure decision: which IP to use, or why not ready.
///
/// `observed` is `None` when the interface does not exist. Within the usable
/// addresses the preferred family wins; otherwise the kernel's order (primary
/// address first) decides.
pub fn select(
    config: &MigrationNetwork,
    pod_ip: IpAddr,
    observed: Option<&ObservedInterface>,
) -> Result<MigrationIp, NotReady> {
    let (network, interface, prefer) = match config {
        MigrationNetwork::PodNetwork => {
            return Ok(MigrationIp {
                ip: pod_ip,
                origin: Origin::PodNetwork,
            })
        }
        MigrationNetwork::Dedicated {
            network,
            interface,
            prefer,
        } => (network, interface, prefer),
    };
    let Some(iface) = observed else {
        return Err(NotReady::InterfaceMissing {
            network: network.clone(),
            interface: interface.clone(),
        });
    };
    if !iface.up {
        return Err(NotReady::InterfaceDown {
            network: network.clone(),
            interface: interface.clone(),
        });
    }
    let mut usable = Vec::new();
    let mut skipped = Vec::new();
    for a in &iface.addresses {
        match skip_reason(a) {
            None => usable.push(a.ip),
            Some(why) => skipped.push((a.ip, why)),
        }
    }
    let chosen = prefer
        .and_then(|fam| usable.iter().find(|ip| Family::of(ip) == fam))
        .or_else(|| usable.first());
    match chosen {
        Some(ip) => Ok(MigrationIp {
            ip: *ip,
            origin: Origin::Interface(interface.clone()),
        }),
        None => Err(NotReady::NoGlobalAddress {
            network: network.clone(),
            interface: interface.clone(),
            skipped,
        }),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationIpError {
    #[error(transparent)]
    NotReady(#[from] NotReady),
    #[error("opening a netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("netlink {op}")]
    Netlink {
        op: &'static str,
        #[source]
        source: rtnetlink::Error,
    },
}

fn observed_address(msg: &AddressMessage) -> Option<ObservedAddress> {
    // For IPv4, IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer
    // on point-to-point links); IPv6 only sends IFA_ADDRESS.
    let mut ip = None;
    let mut flags = AddressFlags::empty();
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(a) => ip = Some(*a),
            AddressAttribute::Address(a) if ip.is_none() => ip = Some(*a),
            AddressAttribute::Flags(f) => flags = *f,
            _ => {}
        }
    }
    let h = &msg.header;
    let scope = match h.scope {
        AddressScope::Universe => Scope::Global,
        AddressScope::Site => Scope::Site,
        AddressScope::Link => Scope::Link,
        AddressScope::Host => Scope::Host,
        _ => Scope::Other,
    };
    // The 8-bit header flags are a subset of IFA_FLAGS; take either.
    let hf = h.flags;
    Some(ObservedAddress {
        ip: ip?,
        prefix_len: h.prefix_len,
        scope,
        tentative: flags.contains(AddressFlags::Tentative)
            || hf.contains(AddressHeaderFlags::Tentative),
        deprecated: flags.contains(AddressFlags::Deprecated)
            || hf.contains(AddressHeaderFlags::Deprecated),
        dad_failed: flags.contains(AddressFlags::Dadfailed)
            || hf.contains(AddressHeaderFlags::Dadfailed),
    })
}

/// Read `name` and its addresses through `handle`'s namespace; `None` if absent.
pub async fn observe(
    handle: &rtnetlink::Handle,
    name: &str,
) -> Result<Option<ObservedInterface>, MigrationIpError> {
    // Dump and match instead of a by-name request: a missing link then means
    // "not in the dump", not an errno to interpret.
    let mut links = handle.link().get().execute();
    let mut found = None;
    while let Some(link) = links
        .try_next()
        .await
        .map_err(|source| MigrationIpError::Netlink {
            op: "dumping links",
            source,
        })?
    {
        let is_it = link
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::IfName(n) if n == name));
        if is_it {
            let mtu = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::Mtu(m) => Some(*m),
                _ => None,
            });
            found = Some((
                link.header.index,
                link.header.flags.contains(LinkFlags::Up),
                mtu,
            ));
        }
    }
    let Some((index, up, mtu)) = found else {
        return Ok(None);
    };
    let mut addrs = handle
        .address()
        .get()
        .set_link_index_filter(index)
        .execute();
    let mut addresses = Vec::new();
    while let Some(msg) = addrs
        .try_next()
        .await
        .map_err(|source| MigrationIpError::Netlink {
            op: "dumping addresses",
            source,
        })?
    {
        addresses.extend(observed_address(&msg));
    }
    Ok(Some(ObservedInterface {
        name: name.to_string(),
        up,
        mtu,
        addresses,
    }))
}

/// [`observe`] in the calling thread's network namespace, over a netlink
/// socket opened (and closed) for this one read.
pub async fn observe_here(name: &str) -> Result<Option<ObservedInterface>, MigrationIpError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(MigrationIpError::Socket)?;
    let conn = tokio::spawn(conn);
    let observed = observe(&handle, name).await;
    conn.abort();
    observed
}

/// Observe and decide, in the calling thread's network namespace.
pub async fn discover(
    config: &MigrationNetwork,
    pod_ip: IpAddr,
) -> Result<MigrationIp, MigrationIpError> {
    let interface = match config {
        MigrationNetwork::PodNetwork => return Ok(select(config, pod_ip, None)?),
        MigrationNetwork::Dedicated { interface, .. } => interface,
    };
    let observed = observe_here(interface).await?;
    Ok(select(config, pod_ip, observed.as_ref())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str) -> ObservedAddress {
        ObservedAddress {
            ip: ip.parse().unwrap(),
            prefix_len: 24,
            scope: Scope::Global,
            tentative: false,
            deprecated: false,
            dad_failed: false,
        }
    }

    fn dedicated(prefer: Option<Family>) -> MigrationNetwork {
        MigrationNetwork::Dedicated {
            network: "migration-net".into(),
            interface: MIGRATION_INTERFACE.into(),
            prefer,
        }
    }

    fn iface(addresses: Vec<ObservedAddress>) -> ObservedInterface {
        ObservedInterface {
            name: MIGRATION_INTERFACE.into(),
            up: true,
            mtu: Some(1500),
            addresses,
        }
    }

    const POD: &str = "10.244.1.7";

    #[test]
    fn pod_network_uses_pod_ip() {
        let got = select(&MigrationNetwork::PodNetwork, POD.parse().unwrap(), None).unwrap();
        assert_eq!(got.ip, POD.parse::<IpAddr>().unwrap());
        assert_eq!(got.origin, Origin::PodNetwork);
    }

    #[test]
    fn missing_interface_is_not_ready_never_pod_ip() {
        let err = select(&dedicated(None), POD.parse().unwrap(), None).unwrap_err();
        assert!(matches!(err, NotReady::InterfaceMissing { .. }));
        assert!(err.to_string().contains("migration0"), "{err}");
        assert!(err.to_string().contains("does not exist"), "{err}");
    }

    #[test]
    fn down_interface_is_not_ready() {
        let mut i = iface(vec![addr("10.200.5.3")]);
        i.up = false;
        let err = select(&dedicated(None), POD.parse().unwrap(), Some(&i)).unwrap_err();
        assert!(matches!(err, NotReady::InterfaceDown { .. }));
    }

    #[test]
    fn takes_global_address_skipping_link_local_tentative_deprecated() {
        let mut ll = addr("fe80::1");
        ll.scope = Scope::Link;
        let mut tent = addr("fd00::5");
        tent.tentative = true;
        let mut dep = addr("10.200.5.9");
        dep.deprecated = true;
        let i = iface(vec![ll, tent, dep, addr("10.200.5.3")]);
        let got = select(&dedicated(None), POD.parse().unwrap(), Some(&i)).unwrap();
        assert_eq!(got.ip, "10.200.5.3".parse::<IpAddr>().unwrap());
        assert_eq!(got.origin, Origin::Interface("migration0".into()));
    }

    #[test]
    fn link_local_by_address_is_skipped_even_with_global_scope() {
        // The kernel reports fe80::/10 with link scope, but a snapshot built by
        // hand (or a 169.254/16 address added with default scope) may not.
        let i = iface(vec![addr("169.254.3.3"), addr("fe80::7")]);
        let err = select(&dedicated(None), POD.parse().unwrap(), Some(&i)).unwrap_err();
        match err {
            NotReady::NoGlobalAddress { skipped, .. } => {
                assert_eq!(skipped.len(), 2);
                assert!(skipped.iter().all(|(_, w)| *w == SkipReason::LinkLocal));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn addressless_interface_reports_reason() {
        let err = select(&dedicated(None), POD.parse().unwrap(), Some(&iface(vec![]))).unwrap_err();
        assert!(
            err.to_string().contains("no usable global address"),
            "{err}"
        );
        assert!(err.to_string().contains("no addresses at all"), "{err}");
    }

    #[test]
    fn preferred_family_wins_then_falls_back_to_the_other() {
        let i = iface(vec![addr("10.200.5.3"), addr("fd00:5::3")]);
        let v6 = select(&dedicated(Some(Family::V6)), POD.parse().unwrap(), Some(&i)).unwrap();
        assert_eq!(v6.ip, "fd00:5::3".parse::<IpAddr>().unwrap());
        assert_eq!(v6.endpoint(4444), "[fd00:5::3]:4444");
        let v4 = select(&dedicated(Some(Family::V4)), POD.parse().unwrap(), Some(&i)).unwrap();
        assert_eq!(v4.endpoint(4444), "10.200.5.3:4444");
        let only4 = iface(vec![addr("10.200.5.3")]);
        let fallback = select(
            &dedicated(Some(Family::V6)),
            POD.parse().unwrap(),
            Some(&only4),
        )
        .unwrap();
        assert_eq!(fallback.ip, "10.200.5.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn dad_failed_is_reported() {
        let mut a = addr("fd00::9");
        a.dad_failed = true;
        let err = select(
            &dedicated(None),
            POD.parse().unwrap(),
            Some(&iface(vec![a])),
        )
        .unwrap_err();
        assert!(err.to_string().contains("duplicate address"), "{err}");
    }
}
