//! A small synchronous rtnetlink client: exactly the requests macvlan needs,
//! over one blocking `netlink_sys::Socket`, with no async runtime to start.
//!
//! A netlink socket is bound to the network namespace it was opened in; open
//! one inside the container netns (`Netlink::open_in`) and it can be used from
//! any thread afterwards without switching that thread.

use crate::netns::{NetNs, NetnsError};
use crate::types::IpCidr;
use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoMacVlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVlanMode,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteMetric, RouteProtocol,
    RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

/// How often a dump interrupted by a concurrent change is retried (the Go
/// plugins' netlinksafe uses the same bound).
const DUMP_RETRIES: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("failed to open a netlink socket")]
    Open(#[source] io::Error),
    #[error("failed to open a netlink socket in the container namespace")]
    OpenInNetns(#[source] NetnsError),
    #[error("netlink {op}: socket I/O failed")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("netlink {op}: the kernel refused")]
    Kernel {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("netlink {op}: undecodable reply: {detail}")]
    Decode { op: &'static str, detail: String },
    #[error("netlink {op}: dump interrupted {DUMP_RETRIES} times in a row by concurrent changes")]
    DumpInterrupted { op: &'static str },
}

impl NetlinkError {
    /// The errno the kernel answered with, if this is a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self.errno(), Some(libc::ENODEV) | Some(libc::ENOENT))
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }
}

pub type Result<T> = std::result::Result<T, NetlinkError>;

/// What we read back about a link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<Vec<u8>>,
    pub mtu: Option<u32>,
    /// IFLA_INFO_KIND, e.g. "macvlan", "veth".
    pub kind: Option<String>,
    pub macvlan_mode: Option<MacVlanMode>,
    pub up: bool,
}

/// A route as dumped from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub dst: IpCidr,
    pub gw: Option<IpAddr>,
    /// The output interface; for a multipath route, the first next hop's.
    pub oif: Option<u32>,
    pub table: u32,
    pub priority: Option<u32>,
    pub kind: RouteType,
}

/// A route to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub dst: IpCidr,
    pub gw: Option<IpAddr>,
    pub oif: u32,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    pub scope: Option<u8>,
}

/// An address and its DAD state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrState {
    pub addr: IpCidr,
    pub tentative: bool,
    pub dad_failed: bool,
}

/// The link operations the plugin logic needs inside the container: a narrow
/// seam so that logic is unit-testable with a recording fake (no root).
pub trait LinkOps {
    fn link_by_name(&mut self, name: &str) -> Result<Option<Link>>;
    fn rename_link(&mut self, index: u32, name: &str) -> Result<()>;
    fn set_link_up(&mut self, index: u32) -> Result<()>;
    fn delete_link(&mut self, index: u32) -> Result<()>;
    fn add_address(&mut self, index: u32, addr: IpCidr) -> Result<()>;
    fn add_route(&mut self, r: &RouteSpec) -> Result<()>;
    fn address_states(&mut self, index: u32) -> Result<Vec<AddrState>>;
}

impl LinkOps for Netlink {
    fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        Netlink::link_by_name(self, name)
    }
    fn rename_link(&mut self, index: u32, name: &str) -> Result<()> {
        Netlink::rename_link(self, index, name)
    }
    fn set_link_up(&mut self, index: u32) -> Result<()> {
        Netlink::set_link_up(self, index)
    }
    fn delete_link(&mut self, index: u32) -> Result<()> {
        Netlink::delete_link(self, index)
    }
    fn add_address(&mut self, index: u32, addr: IpCidr) -> Result<()> {
        Netlink::add_address(self, index, addr)
    }
    fn add_route(&mut self, r: &RouteSpec) -> Result<()> {
        Netlink::add_route(self, r)
    }
    fn address_states(&mut self, index: u32) -> Result<Vec<AddrState>> {
        Netlink::address_states(self, index)
    }
}

/// Everything the single RTM_NEWLINK that creates a macvlan carries.
#[derive(Debug, Clone)]
pub struct MacvlanSpec<'a> {
    pub name: &'a str,
    pub master_index: u32,
    pub mode: MacVlanMode,
    /// None (or 0) lets the kernel inherit the master's MTU.
    pub mtu: Option<u32>,
    pub mac: Option<[u8; 6]>,
    pub bcqueuelen: Option<u32>,
    /// Create the link directly in this namespace (IFLA_NET_NS_FD): no
    /// create-then-move window in which it sits in the host namespace.
    pub netns_fd: Option<RawFd>,
}

pub struct Netlink {
    sock: Socket,
    seq: u32,
}

impl Netlink {
    /// A socket in the calling thread's namespace.
    pub fn new() -> Result<Netlink> {
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Open)?;
        sock.bind_auto().map_err(NetlinkError::Open)?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(NetlinkError::Open)?;
        Ok(Netlink { sock, seq: 0 })
    }

    /// A socket bound to `ns`, opened on a short-lived thread inside it.
    pub fn open_in(ns: &NetNs) -> Result<Netlink> {
        ns.run(Netlink::new).map_err(NetlinkError::OpenInNetns)?
    }

    fn send(&mut self, op: &'static str, msg: RouteNetlinkMessage, flags: u16) -> Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut m = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        m.finalize();
        let mut buf = vec![0u8; m.buffer_len()];
        m.serialize(&mut buf);
        self.sock
            .send(&buf, 0)
            .map_err(|source| NetlinkError::Io { op, source })?;
        Ok(self.seq)
    }

    /// One datagram, split into its netlink messages.
    fn recv(&mut self, op: &'static str) -> Result<Vec<NetlinkMessage<RouteNetlinkMessage>>> {
        let (data, _) = self
            .sock
            .recv_from_full()
            .map_err(|source| NetlinkError::Io { op, source })?;
        let mut out = Vec::new();
        let mut off = 0;
        while off < data.len() {
            let len = NetlinkBuffer::new_checked(&data[off..])
                .map_err(|e| NetlinkError::Decode {
                    op,
                    detail: e.to_string(),
                })?
                .length() as usize;
            if len == 0 {
                break;
            }
            let end = (off + len).min(data.len());
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..end]).map_err(
                |e| NetlinkError::Decode {
                    op,
                    detail: e.to_string(),
                },
            )?;
            out.push(msg);
            off += (len + 3) & !3;
        }
        Ok(out)
    }

    /// Send a request with NLM_F_ACK; collect replies until the ack.
    fn request(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(op, msg, flags | NLM_F_ACK)?;
        let mut replies = Vec::new();
        loop {
            for m in self.recv(op)? {
                if m.header.sequence_number != seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(_) => Err(NetlinkError::Kernel {
                                op,
                                source: e.to_io(),
                            }),
                        }
                    }
                    NetlinkPayload::InnerMessage(r) => replies.push(r),
                    NetlinkPayload::Done(_) => return Ok(replies),
                    _ => {}
                }
            }
        }
    }

    /// A dump, retried when the kernel flags it NLM_F_DUMP_INTR (the set
    /// changed while it was being read, so it may be inconsistent).
    fn dump(
        &mut self,
        op: &'static str,
        msg: impl Fn() -> RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        'retry: for _ in 0..DUMP_RETRIES {
            let seq = self.send(op, msg(), NLM_F_DUMP)?;
            let mut replies = Vec::new();
            let mut interrupted = false;
            loop {
                for m in self.recv(op)? {
                    if m.header.sequence_number != seq {
                        continue;
                    }
                    interrupted |= m.header.flags & NLM_F_DUMP_INTR != 0;
                    match m.payload {
                        NetlinkPayload::Done(_) => {
                            if interrupted {
                                continue 'retry;
                            }
                            return Ok(replies);
                        }
                        NetlinkPayload::Error(e) if e.code.is_some() => {
                            return Err(NetlinkError::Kernel {
                                op,
                                source: e.to_io(),
                            })
                        }
                        NetlinkPayload::InnerMessage(r) => replies.push(r),
                        _ => {}
                    }
                }
            }
        }
        Err(NetlinkError::DumpInterrupted { op })
    }

    // ---- links ----

    /// The link called `name`, or None.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(m)
    }

    pub fn link_by_index(&mut self, index: u32) -> Result<Option<Link>> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.get_link(m)
    }

    fn get_link(&mut self, m: LinkMessage) -> Result<Option<Link>> {
        match self.request("get link", RouteNetlinkMessage::GetLink(m), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(parse_link(&l)),
                _ => None,
            })),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One RTM_NEWLINK: a macvlan on `master_index`, optionally straight into
    /// another namespace. Exclusive: an existing name is EEXIST.
    pub fn create_macvlan(&mut self, spec: &MacvlanSpec<'_>) -> Result<()> {
        let mut m = LinkMessage::default();
        m.attributes
            .push(LinkAttribute::IfName(spec.name.to_string()));
        m.attributes.push(LinkAttribute::Link(spec.master_index));
        let mut data = vec![InfoMacVlan::Mode(spec.mode)];
        if let Some(q) = spec.bcqueuelen {
            data.push(InfoMacVlan::BcQueueLen(q));
        }
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::MacVlan),
            LinkInfo::Data(InfoData::MacVlan(data)),
        ]));
        // IFLA_TXQLEN is never sent: 0 would give a queue-less device
        // (the reference plugin's bug fixed in its commit 3a49cff1).
        if let Some(mtu) = spec.mtu.filter(|m| *m > 0) {
            m.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = spec.mac {
            m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(fd) = spec.netns_fd {
            m.attributes.push(LinkAttribute::NetNsFd(fd));
        }
        self.request(
            "create macvlan",
            RouteNetlinkMessage::NewLink(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    pub fn rename_link(&mut self, index: u32, name: &str) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.request("rename link", RouteNetlinkMessage::SetLink(m), 0)
            .map(drop)
    }

    pub fn set_link_up(&mut self, index: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request("set link up", RouteNetlinkMessage::SetLink(m), 0)
            .map(drop)
    }

    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.request("delete link", RouteNetlinkMessage::DelLink(m), 0)
            .map(drop)
    }

    // ---- addresses ----

    pub fn add_address(&mut self, index: u32, addr: IpCidr) -> Result<()> {
        let mut m = AddressMessage::default();
        m.header.index = index;
        m.header.prefix_len = addr.prefix();
        match addr.ip() {
            IpAddr::V4(ip) => {
                m.header.family = AddressFamily::Inet;
                m.attributes.push(AddressAttribute::Local(ip.into()));
                m.attributes.push(AddressAttribute::Address(ip.into()));
                if addr.prefix() < 31 {
                    let host_bits = u32::MAX >> addr.prefix();
                    let brd = Ipv4Addr::from(u32::from(ip) | host_bits);
                    m.attributes.push(AddressAttribute::Broadcast(brd));
                }
            }
            IpAddr::V6(ip) => {
                m.header.family = AddressFamily::Inet6;
                m.attributes.push(AddressAttribute::Address(ip.into()));
            }
        }
        self.request(
            "add address",
            RouteNetlinkMessage::NewAddress(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Addresses on link `index` (all links when None), with prefix length.
    pub fn list_addresses(&mut self, index: Option<u32>) -> Result<Vec<(u32, IpCidr)>> {
        let replies = self.dump("list addresses", || {
            RouteNetlinkMessage::GetAddress(AddressMessage::default())
        })?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewAddress(a) = r else {
                continue;
            };
            if index.is_some_and(|i| i != a.header.index) {
                continue;
            }
            // IFA_LOCAL is the local address on point-to-point links; IFA_ADDRESS otherwise.
            let local = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let addr = local.or_else(|| {
                a.attributes.iter().find_map(|at| match at {
                    AddressAttribute::Address(ip) => Some(*ip),
                    _ => None,
                })
            });
            if let Some(ip) = addr {
                if let Ok(c) = IpCidr::new(ip, a.header.prefix_len) {
                    out.push((a.header.index, c));
                }
            }
        }
        Ok(out)
    }

    /// IPv6 duplicate address detection state of the addresses on `index`.
    pub fn address_states(&mut self, index: u32) -> Result<Vec<AddrState>> {
        let replies = self.dump("list addresses", || {
            RouteNetlinkMessage::GetAddress(AddressMessage::default())
        })?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewAddress(a) = r else {
                continue;
            };
            if a.header.index != index {
                continue;
            }
            // IFA_FLAGS (32 bit) supersedes the 8-bit header flags when present.
            let flags = a
                .attributes
                .iter()
                .find_map(|at| match at {
                    AddressAttribute::Flags(f) => Some(*f),
                    _ => None,
                })
                .unwrap_or_else(|| AddressFlags::from_bits_retain(a.header.flags.bits() as u32));
            let ip = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            if let Some(Ok(addr)) = ip.map(|ip| IpCidr::new(ip, a.header.prefix_len)) {
                out.push(AddrState {
                    addr,
                    tentative: flags.contains(AddressFlags::Tentative),
                    dad_failed: flags.contains(AddressFlags::Dadfailed),
                });
            }
        }
        Ok(out)
    }

    // ---- routes ----

    pub fn add_route(&mut self, r: &RouteSpec) -> Result<()> {
        let mut m = RouteMessage::default();
        let v4 = r.dst.is_ipv4();
        m.header.address_family = if v4 {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        m.header.destination_prefix_length = r.dst.prefix();
        m.header.protocol = RouteProtocol::Boot;
        m.header.kind = RouteType::Unicast;
        // iproute2's default: a route without a gateway is on-link.
        m.header.scope = match (r.scope, r.gw) {
            (Some(s), _) => RouteScope::from(s),
            (None, None) => RouteScope::Link,
            (None, Some(_)) => RouteScope::Universe,
        };
        let table = r.table.unwrap_or(RouteHeader::RT_TABLE_MAIN as u32);
        m.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
        m.attributes.push(RouteAttribute::Table(table));
        if r.dst.prefix() > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(network(
                    r.dst,
                ))));
        }
        if let Some(gw) = r.gw {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
        }
        m.attributes.push(RouteAttribute::Oif(r.oif));
        if let Some(p) = r.priority {
            m.attributes.push(RouteAttribute::Priority(p));
        }
        let mut metrics = Vec::new();
        if let Some(mtu) = r.mtu {
            metrics.push(RouteMetric::Mtu(mtu));
        }
        if let Some(a) = r.advmss {
            metrics.push(RouteMetric::Advmss(a));
        }
        if !metrics.is_empty() {
            m.attributes.push(RouteAttribute::Metrics(metrics));
        }
        self.request(
            "add route",
            RouteNetlinkMessage::NewRoute(m),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Every route of both families in every table.
    pub fn list_routes(&mut self) -> Result<Vec<RouteEntry>> {
        let replies = self.dump("list routes", || {
            RouteNetlinkMessage::GetRoute(RouteMessage::default())
        })?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(m) => parse_route(&m),
                _ => None,
            })
            .collect())
    }

    /// The output interface of the first default route in the main table.
    pub fn default_route_oif(&mut self) -> Result<Option<u32>> {
        Ok(self
            .list_routes()?
            .into_iter()
            .find(|r| {
                r.dst.prefix() == 0
                    && r.table == RouteHeader::RT_TABLE_MAIN as u32
                    && r.kind == RouteType::Unicast
                    && r.oif.is_some()
            })
            .and_then(|r| r.oif))
    }
}

fn network(c: IpCidr) -> IpAddr {
    c.network()
}

fn parse_link(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        up: l.header.flags.contains(LinkFlags::Up),
        ..Default::default()
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Address(m) => link.mac = Some(m.clone()),
            LinkAttribute::Mtu(m) => link.mtu = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::MacVlan(d)) => {
                            link.macvlan_mode = d.iter().find_map(|x| match x {
                                InfoMacVlan::Mode(m) => Some(*m),
                                _ => None,
                            })
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

fn parse_route(m: &RouteMessage) -> Option<RouteEntry> {
    let zero = match m.header.address_family {
        AddressFamily::Inet => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut dst_ip = zero;
    let mut e = RouteEntry {
        dst: IpCidr::new(zero, 0).ok()?,
        gw: None,
        oif: None,
        table: m.header.table as u32,
        priority: None,
        kind: m.header.kind,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => dst_ip = route_ip(d)?,
            RouteAttribute::Gateway(g) => e.gw = route_ip(g),
            RouteAttribute::Oif(i) => e.oif = Some(*i),
            RouteAttribute::Table(t) => e.table = *t,
            RouteAttribute::Priority(p) => e.priority = Some(*p),
            RouteAttribute::MultiPath(hops) => {
                // A multipath default route has no RTA_OIF; its first hop
                // names the interface (the reference plugin misses this).
                if e.oif.is_none() {
                    e.oif = hops.first().map(|h| h.interface_index);
                }
                if e.gw.is_none() {
                    e.gw = hops.first().and_then(|h| {
                        h.attributes.iter().find_map(|a| match a {
                            RouteAttribute::Gateway(g) => route_ip(g),
                            _ => None,
                        })
                    });
                }
            }
            _ => {}
        }
    }
    e.dst = IpCidr::new(dst_ip, m.header.destination_prefix_length).ok()?;
    Some(e)
}

/// A random interface name for the moment between creation and rename, so
/// two concurrent ADDs never collide on it.
pub fn temp_link_name() -> String {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most `b.len()` bytes into the valid buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        // Entropy is not critical here: fall back to pid and time.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        b = (t ^ std::process::id().rotate_left(16)).to_ne_bytes();
    }
    format!("mgv{:08x}", u32::from_ne_bytes(b))
}

/// "aa:bb:cc:dd:ee:ff" (the format the Go plugins print).
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parse "aa:bb:cc:dd:ee:ff" (also '-' separated), 6 bytes only.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        mac[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let m = parse_mac("0A:58:0a:c8:05:07").unwrap();
        assert_eq!(format_mac(&m), "0a:58:0a:c8:05:07");
        assert!(parse_mac("0a:58:0a:c8:05").is_none());
        assert!(parse_mac("0a:58:0a:c8:05:zz").is_none());
        assert!(parse_mac("0a:58:0a:c8:05:077").is_none());
    }

    #[test]
    fn temp_names_fit_ifnamsiz_and_differ() {
        let a = temp_link_name();
        assert_eq!(a.len(), 11);
        assert_ne!(a, temp_link_name());
    }

    #[test]
    fn multipath_default_route_names_its_first_hop() {
        use netlink_packet_route::route::RouteNextHop;
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.kind = RouteType::Unicast;
        let mut hop = RouteNextHop::default();
        hop.interface_index = 7;
        hop.attributes
            .push(RouteAttribute::Gateway(RouteAddress::Inet(Ipv4Addr::new(
                10, 0, 0, 1,
            ))));
        m.attributes.push(RouteAttribute::MultiPath(vec![hop]));
        let r = parse_route(&m).unwrap();
        assert_eq!(r.dst.to_string(), "0.0.0.0/0");
        assert_eq!(r.oif, Some(7));
        assert_eq!(r.gw, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(r.table, 254);
    }

    #[test]
    fn route_destination_and_table_attribute() {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet6;
        m.header.destination_prefix_length = 64;
        m.attributes
            .push(RouteAttribute::Destination(RouteAddress::Inet6(
                "fd00::".parse().unwrap(),
            )));
        m.attributes.push(RouteAttribute::Table(1000));
        m.attributes.push(RouteAttribute::Oif(3));
        let r = parse_route(&m).unwrap();
        assert_eq!(r.dst.to_string(), "fd00::/64");
        assert_eq!((r.table, r.oif, r.gw), (1000, Some(3), None));
    }

    #[test]
    fn lists_loopback_in_own_namespace() {
        let mut nl = Netlink::new().unwrap();
        let lo = nl.link_by_name("lo").unwrap().expect("lo exists");
        assert_eq!(lo.index, 1);
        assert!(nl.link_by_name("mignet-nope0").unwrap().is_none());
        assert_eq!(nl.link_by_index(1).unwrap().unwrap().name, "lo");
        // Read-only dumps; they must decode.
        nl.list_routes().unwrap();
        nl.list_addresses(Some(1)).unwrap();
    }
}
