//! IPAM configuration: the `ipam` object of the network config, parsed into
//! resolved ranges. Pure: no file system, no environment (the default store
//! directory is passed in), so every rule here is unit-tested.
//!
//! Keys follow whereabouts (`wa:pkg/types/types.go`). Like Go's encoding/json,
//! keys match case-insensitively and `null` counts as absent; keys we do not
//! use (kubernetes, log_file, leader_*, ...) are ignored so whereabouts NADs
//! work verbatim. Unlike whereabouts, out-of-range `range_start`/`range_end`
//! and malformed `exclude` entries are rejected up front instead of ignored.

use crate::error::{CniError, CniResult, Code};
use crate::ipam::flatfile::{merge, FlatFile};
use crate::types::{Dns, Route};
use ipnetwork::IpNetwork;
use serde_json::{Map, Value};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

/// Where pools live when the config names no `store_dir`.
pub const DEFAULT_STORE_DIR: &str = "/var/lib/cni/mignet-ipam";
/// Environment override for the default store directory (the config key wins).
pub const STORE_DIR_ENV: &str = "MIGNET_IPAM_STORE_DIR";
/// IPAM `type` values we answer to.
pub const IPAM_TYPES: [&str; 2] = ["whereabouts", "mignet-ipam"];

/// whereabouts' `datastore` values. whereabouts v0.9 only has the
/// Kubernetes store (it decodes `datastore` and drops it); older versions
/// also had etcd.
const DATASTORE_KUBERNETES: &str = "kubernetes";
const DATASTORE_ETCD: &str = "etcd";

/// Choose the store from the merged `ipam` object (NAD over flat file):
/// `Some` is the Kubernetes store with that config, `None` the node-local
/// file store. Pure; every path is unit-tested.
///
/// - `datastore: etcd` is refused (code 2): we cannot honour it, and
///   ignoring it would allocate somewhere the operator did not ask for.
/// - `kubernetes` present (from the NAD or the flat file): Kubernetes.
/// - A flat file without a kubeconfig: code 7 naming the file. whereabouts
///   fails there too ("you have not configured the storage engine"); a
///   flat file means a cluster-wide setup, and the file store would hand
///   out the same address on several nodes.
/// - An explicit `datastore: kubernetes` without a kubeconfig: code 7, for
///   the same reason.
/// - Otherwise (no flat file, no `kubernetes`, no datastore): the file
///   store, as before (one host; the lab depends on it).
pub fn select_store(
    kubernetes: Option<KubeConf>,
    datastore: Option<&str>,
    flat_file: Option<&Path>,
) -> CniResult<Option<KubeConf>> {
    let from = |field: &str| match flat_file {
        Some(p) => format!("{field} (NAD or whereabouts flat file {})", p.display()),
        None => field.to_string(),
    };
    match datastore.filter(|d| !d.is_empty()) {
        None => {}
        Some(d) if d == DATASTORE_KUBERNETES => {}
        Some(d) if d == DATASTORE_ETCD => {
            return Err(CniError::new(
                Code::UnsupportedField,
                format!(
                    "unsupported {} \"{d}\": mignet-ipam keeps pools in the Kubernetes API \
                     (datastore \"kubernetes\" with kubernetes.kubeconfig), not in etcd",
                    from("ipam.datastore")
                ),
            ))
        }
        Some(d) => {
            return Err(CniError::invalid_field(
                &from("ipam.datastore"),
                d,
                "must be \"kubernetes\"",
            ))
        }
    }
    if kubernetes.is_some() {
        return Ok(kubernetes);
    }
    if let Some(p) = flat_file {
        return Err(CniError::new(
            Code::InvalidConfig,
            format!(
                "whereabouts flat file {}: no kubernetes.kubeconfig, and ipam has no kubernetes: \
                 the Kubernetes store needs one (a node-local store would hand out the same \
                 address on several nodes)",
                p.display()
            ),
        ));
    }
    if datastore == Some(DATASTORE_KUBERNETES) {
        return Err(CniError::new(
            Code::InvalidConfig,
            "invalid ipam.datastore \"kubernetes\": needs ipam.kubernetes (a kubeconfig) or a \
             whereabouts flat file naming one",
        ));
    }
    Ok(None)
}

/// One address range, resolved to offsets from the subnet's network address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpRange {
    /// The pool's subnet with host bits cleared; it names the pool.
    pub subnet: IpNetwork,
    /// First offset that may be handed out (inclusive).
    pub first: u128,
    /// Last offset that may be handed out (inclusive).
    pub last: u128,
    /// Offsets never handed out (excludes and the gateway), inclusive intervals
    /// clipped to the subnet.
    pub excluded: Vec<(u128, u128)>,
    /// Config path of this range for messages, e.g. `ipam.range` or `ipam.ipRanges[1].range`.
    pub field: String,
}

impl IpRange {
    /// The address at `offset` from the network address.
    pub fn ip_at(&self, offset: u128) -> IpAddr {
        from_u128(
            self.subnet.network(),
            ip_to_u128(self.subnet.network()) + offset,
        )
    }

    /// The offset of `ip` if it lies in the subnet.
    pub fn offset_of(&self, ip: IpAddr) -> Option<u128> {
        self.subnet
            .contains(ip)
            .then(|| ip_to_u128(ip) - ip_to_u128(self.subnet.network()))
    }

    /// Human form of the usable span, used in exhaustion messages.
    pub fn describe(&self) -> String {
        format!(
            "{} ({} - {})",
            self.subnet,
            self.ip_at(self.first),
            self.ip_at(self.last)
        )
    }
}

/// The parsed `ipam` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// `network_name`: an independent allocation namespace ("" = shared).
    pub network_name: String,
    /// Legacy `range` first, then `ipRanges` in order.
    pub ranges: Vec<IpRange>,
    pub gateway: Option<IpAddr>,
    pub routes: Vec<Route>,
    pub dns: Dns,
    pub store_dir: PathBuf,
    /// `fsync` (default true): flush every pool write to disk.
    pub fsync: bool,
    /// `kubernetes`: when present, pools live in the Kubernetes API
    /// (whereabouts' IPPool resources) instead of the file store.
    pub kubernetes: Option<KubeConf>,
    /// `enable_overlapping_ranges` (default true, as in whereabouts): claim
    /// each address cluster-wide with an OverlappingRangeIPReservation.
    /// Only the Kubernetes store uses it.
    pub overlapping_ranges: bool,
}

/// The `ipam.kubernetes` object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeConf {
    /// `kubernetes.kubeconfig`; `None` means in-cluster service-account
    /// credentials (KUBERNETES_SERVICE_HOST and the mounted token).
    pub kubeconfig: Option<PathBuf>,
}

/// One `{containerID, ifname}` entry of `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attachment {
    pub container_id: String,
    pub ifname: String,
}

/// The whole network config as far as the IPAM cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub ipam: IpamConfig,
    /// Union of `cni.dev/valid-attachments` and `cni.dev/attachments`;
    /// `None` when neither key is present.
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Addresses of `prevResult.ips` (CHECK), when present.
    pub prev_result_ips: Option<Vec<IpAddr>>,
}

/// Parse stdin as if no whereabouts flat file existed (tests, benches).
/// Malformed JSON is code 6; every invalid value is code 7 with the field
/// and the value in the message.
pub fn parse_netconf(stdin: &[u8], default_store_dir: &Path) -> CniResult<NetConf> {
    parse_netconf_with(stdin, default_store_dir, None)
}

fn parse_root(stdin: &[u8]) -> CniResult<Map<String, Value>> {
    let root: Value =
        serde_json::from_slice(stdin).map_err(|e| CniError::decode("network config", e))?;
    let Value::Object(root) = root else {
        return Err(CniError::decode("network config", "expected a JSON object"));
    };
    Ok(root)
}

/// `ipam.configuration_path`: where to look for whereabouts' flat file
/// first. Read before the flat file, so before everything else.
pub fn configuration_path(stdin: &[u8]) -> CniResult<Option<PathBuf>> {
    let root = parse_root(stdin)?;
    let Some(Value::Object(m)) = get(&root, "ipam") else {
        // parse_netconf_with reports a missing or malformed ipam.
        return Ok(None);
    };
    Ok(opt_str(m, "configuration_path", "ipam.configuration_path")?
        .filter(|s| !s.is_empty())
        .map(PathBuf::from))
}

/// Parse stdin with whereabouts' flat file (if one was found) merged under
/// the `ipam` object, then choose the store (`select_store`).
pub fn parse_netconf_with(
    stdin: &[u8],
    default_store_dir: &Path,
    flat: Option<&FlatFile>,
) -> CniResult<NetConf> {
    let root = parse_root(stdin)?;
    let cni_version = opt_str(&root, "cniVersion", "cniVersion")?.unwrap_or_default();
    let name = opt_str(&root, "name", "name")?.unwrap_or_default();
    let ipam = match get(&root, "ipam") {
        Some(Value::Object(m)) => {
            let mut m = m.clone();
            let taken = flat.map(|f| merge(&mut m, &f.ipam)).unwrap_or_default();
            parse_ipam(&m, default_store_dir, flat.map(|f| f.path.as_path())).map_err(|mut e| {
                // A value that came from the flat file is fixed there, not
                // in the NAD: say so.
                if let (Some(f), false) = (flat, taken.is_empty()) {
                    if e.details.is_empty() {
                        e.details = format!(
                            "ipam keys {} came from whereabouts flat file {}",
                            taken.join(", "),
                            f.path.display()
                        );
                    }
                }
                e
            })?
        }
        Some(other) => return Err(CniError::invalid_field("ipam", other, "must be an object")),
        None => {
            return Err(CniError::new(
                Code::InvalidConfig,
                "missing ipam: the network config has no \"ipam\" object",
            ))
        }
    };
    let valid_attachments = parse_attachments(&root)?;
    let prev_result_ips = parse_prev_result_ips(&root)?;
    Ok(NetConf {
        cni_version,
        name,
        ipam,
        valid_attachments,
        prev_result_ips,
    })
}

fn parse_ipam(
    m: &Map<String, Value>,
    default_store_dir: &Path,
    flat_file: Option<&Path>,
) -> CniResult<IpamConfig> {
    let ty = opt_str(m, "type", "ipam.type")?.unwrap_or_default();
    if !IPAM_TYPES.contains(&ty.as_str()) {
        return Err(CniError::invalid_field(
            "ipam.type",
            &ty,
            format!("must be one of {}", IPAM_TYPES.join(", ")),
        ));
    }
    if let Some(Value::Array(a)) = get(m, "addresses") {
        if !a.is_empty() {
            // Silently ignoring static addresses would hand out a different
            // address than the user asked for; say so instead.
            return Err(CniError::new(
                Code::UnsupportedField,
                "unsupported ipam.addresses: static addresses are not supported by mignet-ipam",
            ));
        }
    }

    let gateway = match opt_str(m, "gateway", "ipam.gateway")? {
        Some(s) if !s.is_empty() => Some(
            s.parse::<IpAddr>()
                .map_err(|_| CniError::invalid_field("ipam.gateway", &s, "not an IP address"))?,
        ),
        _ => None,
    };

    let mut specs = Vec::new();
    if get(m, "range").is_some() {
        specs.push(RangeSpec::from_object(m, "ipam.")?);
    } else {
        for key in ["range_start", "range_end", "exclude"] {
            if get(m, key).is_some() {
                return Err(CniError::new(
                    Code::InvalidConfig,
                    format!("invalid ipam.{key}: given without ipam.range"),
                ));
            }
        }
    }
    match get(m, "ipRanges") {
        None => {}
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let prefix = format!("ipam.ipRanges[{i}].");
                let Value::Object(obj) = item else {
                    return Err(CniError::invalid_field(
                        &format!("ipam.ipRanges[{i}]"),
                        item,
                        "must be an object",
                    ));
                };
                if get(obj, "range").is_none() {
                    return Err(CniError::new(
                        Code::InvalidConfig,
                        format!("missing {prefix}range"),
                    ));
                }
                specs.push(RangeSpec::from_object(obj, &prefix)?);
            }
        }
        Some(other) => {
            return Err(CniError::invalid_field(
                "ipam.ipRanges",
                other,
                "must be a list",
            ))
        }
    }
    if specs.is_empty() {
        return Err(CniError::new(
            Code::InvalidConfig,
            "missing ipam.range: give ipam.range or ipam.ipRanges",
        ));
    }

    let mut ranges: Vec<IpRange> = Vec::with_capacity(specs.len());
    for spec in specs {
        let r = spec.resolve(gateway)?;
        if let Some(prev) = ranges.iter().find(|p| overlaps(p.subnet, r.subnet)) {
            // Two ranges of one config sharing addresses would be two pools
            // that can hand out the same address.
            return Err(CniError::invalid_field(
                &r.field,
                r.subnet,
                format!("overlaps {} {}", prev.field, prev.subnet),
            ));
        }
        ranges.push(r);
    }

    let network_name = opt_str(m, "network_name", "ipam.network_name")?.unwrap_or_default();
    if !network_name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        || network_name.starts_with('.')
    {
        // It becomes part of a file name.
        return Err(CniError::invalid_field(
            "ipam.network_name",
            &network_name,
            "only letters, digits, '-', '_' and '.' are allowed (not leading '.')",
        ));
    }

    let routes = match get(m, "routes") {
        None => Vec::new(),
        Some(v) => serde_json::from_value::<Vec<Route>>(v.clone())
            .map_err(|e| CniError::invalid_field("ipam.routes", v, e))?,
    };
    let dns = match get(m, "dns") {
        None => Dns::default(),
        Some(v) => serde_json::from_value::<Dns>(v.clone())
            .map_err(|e| CniError::invalid_field("ipam.dns", v, e))?,
    };
    let store_dir = match opt_str(m, "store_dir", "ipam.store_dir")? {
        Some(s) if !s.is_empty() => {
            let p = PathBuf::from(&s);
            if !p.is_absolute() {
                return Err(CniError::invalid_field(
                    "ipam.store_dir",
                    &s,
                    "must be an absolute path",
                ));
            }
            p
        }
        _ => default_store_dir.to_path_buf(),
    };

    let fsync = match get(m, "fsync") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(CniError::invalid_field(
                "ipam.fsync",
                other,
                "must be true or false",
            ))
        }
    };

    let kubernetes = match get(m, "kubernetes") {
        None => None,
        Some(Value::Object(k)) => {
            let kubeconfig = opt_str(k, "kubeconfig", "ipam.kubernetes.kubeconfig")?
                .filter(|s| !s.is_empty())
                .map(PathBuf::from);
            Some(KubeConf { kubeconfig })
        }
        Some(other) => {
            return Err(CniError::invalid_field(
                "ipam.kubernetes",
                other,
                "must be an object",
            ))
        }
    };
    let datastore = opt_str(m, "datastore", "ipam.datastore")?;
    let kubernetes = select_store(kubernetes, datastore.as_deref(), flat_file)?;
    let overlapping_ranges = match get(m, "enable_overlapping_ranges") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(CniError::invalid_field(
                "ipam.enable_overlapping_ranges",
                other,
                "must be true or false",
            ))
        }
    };

    Ok(IpamConfig {
        network_name,
        ranges,
        gateway,
        routes,
        dns,
        store_dir,
        fsync,
        kubernetes,
        overlapping_ranges,
    })
}

/// One range as written: strings not yet checked against each other.
struct RangeSpec {
    prefix: String,
    range: String,
    start: Option<String>,
    end: Option<String>,
    exclude: Vec<String>,
}

impl RangeSpec {
    fn from_object(m: &Map<String, Value>, prefix: &str) -> CniResult<Self> {
        let f = |k: &str| format!("{prefix}{k}");
        let range = opt_str(m, "range", &f("range"))?.unwrap_or_default();
        let start = opt_str(m, "range_start", &f("range_start"))?.filter(|s| !s.is_empty());
        let end = opt_str(m, "range_end", &f("range_end"))?.filter(|s| !s.is_empty());
        let exclude = match get(m, "exclude") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(CniError::invalid_field(
                        &format!("{prefix}exclude[{i}]"),
                        other,
                        "must be a string",
                    )),
                })
                .collect::<CniResult<_>>()?,
            Some(other) => {
                return Err(CniError::invalid_field(
                    &f("exclude"),
                    other,
                    "must be a list of CIDRs or IP addresses",
                ))
            }
        };
        Ok(RangeSpec {
            prefix: prefix.to_string(),
            range,
            start,
            end,
            exclude,
        })
    }

    fn resolve(self, gateway: Option<IpAddr>) -> CniResult<IpRange> {
        let field = |k: &str| format!("{}{k}", self.prefix);
        let range_field = field("range");
        let bad_range = |why: &str| CniError::invalid_field(&range_field, &self.range, why);

        // "a-b/cidr" or "cidr".
        let (cidr_text, span) = match self.range.split_once('-') {
            Some((a, rest)) => {
                let (b, prefix) = rest
                    .split_once('/')
                    .ok_or_else(|| bad_range("expected CIDR or a-b/prefix"))?;
                (
                    format!("{a}/{prefix}"),
                    Some((a.to_string(), b.to_string())),
                )
            }
            None => (self.range.clone(), None),
        };
        if !cidr_text.contains('/') {
            return Err(bad_range("expected CIDR (address/prefix) or a-b/prefix"));
        }
        let parsed: IpNetwork = cidr_text
            .parse()
            .map_err(|_| bad_range("not a valid CIDR"))?;
        let subnet = IpNetwork::new(parsed.network(), parsed.prefix())
            .map_err(|_| bad_range("not a valid CIDR"))?;
        let host_bits = u32::from(max_prefix(subnet)) - u32::from(subnet.prefix());
        if host_bits < 2 {
            return Err(bad_range("no usable addresses (the prefix is too long)"));
        }
        let max_off = u128::MAX >> (128 - host_bits);

        let offset_in = |key: String, text: &str| -> CniResult<u128> {
            let ip: IpAddr = text
                .parse()
                .map_err(|_| CniError::invalid_field(&key, text, "not an IP address"))?;
            if !subnet.contains(ip) {
                return Err(CniError::invalid_field(
                    &key,
                    text,
                    format!("outside range {subnet}"),
                ));
            }
            Ok(ip_to_u128(ip) - ip_to_u128(subnet.network()))
        };

        let (mut start, mut end) = (None, None);
        if let Some((a, b)) = span {
            start = Some(offset_in(range_field.clone(), &a)?);
            end = Some(offset_in(range_field.clone(), &b)?);
        }
        if let Some(s) = &self.start {
            if start.is_some() {
                return Err(CniError::invalid_field(
                    &field("range_start"),
                    s,
                    format!("conflicts with the start given in {range_field}"),
                ));
            }
            start = Some(offset_in(field("range_start"), s)?);
        }
        if let Some(e) = &self.end {
            if end.is_some() {
                return Err(CniError::invalid_field(
                    &field("range_end"),
                    e,
                    format!("conflicts with the end given in {range_field}"),
                ));
            }
            end = Some(offset_in(field("range_end"), e)?);
        }
        // Never the network address (v4) / subnet-router anycast (v6), never
        // the v4 broadcast; v6 skips the all-ones address too, as whereabouts does.
        let first = start.unwrap_or(1).max(1);
        let last = end.unwrap_or(max_off - 1).min(max_off - 1);
        if first > last {
            // Name the key the user wrote that made the span empty.
            let (key, val) = match (&self.start, &self.end) {
                (Some(s), _) => (field("range_start"), s),
                (None, Some(e)) => (field("range_end"), e),
                (None, None) => (range_field.clone(), &self.range),
            };
            return Err(CniError::invalid_field(
                &key,
                val,
                format!(
                    "leaves no usable address in {subnet} (start {} is after end {})",
                    from_u128(subnet.network(), ip_to_u128(subnet.network()) + first),
                    from_u128(subnet.network(), ip_to_u128(subnet.network()) + last),
                ),
            ));
        }

        let base = ip_to_u128(subnet.network());
        let mut excluded = Vec::new();
        for (i, text) in self.exclude.iter().enumerate() {
            let key = format!("{}exclude[{i}]", self.prefix);
            let net: IpNetwork = text
                .parse()
                .map_err(|_| CniError::invalid_field(&key, text, "not a CIDR or IP address"))?;
            if net.is_ipv4() != subnet.is_ipv4() {
                return Err(CniError::invalid_field(
                    &key,
                    text,
                    format!("address family differs from range {subnet}"),
                ));
            }
            let lo = ip_to_u128(net.network());
            let hi = ip_to_u128(net.broadcast());
            let (sub_lo, sub_hi) = (base, base + max_off);
            if hi < sub_lo || lo > sub_hi {
                continue; // Valid but outside this subnet: nothing to skip.
            }
            excluded.push((lo.max(sub_lo) - base, hi.min(sub_hi) - base));
        }
        if let Some(gw) = gateway {
            // Handing the gateway's address to a pod breaks the whole network.
            if subnet.contains(gw) {
                let off = ip_to_u128(gw) - base;
                excluded.push((off, off));
            }
        }
        Ok(IpRange {
            subnet,
            first,
            last,
            excluded,
            field: range_field,
        })
    }
}

fn parse_attachments(root: &Map<String, Value>) -> CniResult<Option<Vec<Attachment>>> {
    let mut out: Option<Vec<Attachment>> = None;
    for key in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
        let Some(v) = get(root, key) else { continue };
        let Value::Array(items) = v else {
            return Err(CniError::invalid_field(key, v, "must be a list"));
        };
        let list = out.get_or_insert_with(Vec::new);
        for (i, item) in items.iter().enumerate() {
            let field = format!("{key}[{i}]");
            let Value::Object(obj) = item else {
                return Err(CniError::invalid_field(&field, item, "must be an object"));
            };
            let container_id =
                opt_str(obj, "containerID", &format!("{field}.containerID"))?.unwrap_or_default();
            let ifname = opt_str(obj, "ifname", &format!("{field}.ifname"))?.unwrap_or_default();
            if container_id.is_empty() || ifname.is_empty() {
                return Err(CniError::invalid_field(
                    &field,
                    item,
                    "needs containerID and ifname",
                ));
            }
            list.push(Attachment {
                container_id,
                ifname,
            });
        }
    }
    Ok(out)
}

fn parse_prev_result_ips(root: &Map<String, Value>) -> CniResult<Option<Vec<IpAddr>>> {
    let Some(Value::Object(prev)) = get(root, "prevResult") else {
        return Ok(None);
    };
    let Some(Value::Array(ips)) = get(prev, "ips") else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(ips.len());
    for (i, ip) in ips.iter().enumerate() {
        let field = format!("prevResult.ips[{i}].address");
        let addr = match ip {
            Value::Object(o) => opt_str(o, "address", &field)?.unwrap_or_default(),
            _ => String::new(),
        };
        let net: IpNetwork = addr
            .parse()
            .map_err(|_| CniError::invalid_field(&field, &addr, "not a CIDR"))?;
        out.push(net.ip());
    }
    Ok(Some(out))
}

/// Key lookup as Go's encoding/json does it: exact first, then ASCII
/// case-insensitive; `null` counts as absent.
fn get<'a>(m: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    let v = m.get(key).or_else(|| {
        m.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })?;
    (!v.is_null()).then_some(v)
}

fn opt_str(m: &Map<String, Value>, key: &str, field: &str) -> CniResult<Option<String>> {
    match get(m, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(CniError::invalid_field(field, other, "must be a string")),
    }
}

/// The largest offset from the network address that lies inside `subnet`
/// (0 for a /32 or /128).
pub fn max_offset(subnet: IpNetwork) -> u128 {
    let host_bits = u32::from(max_prefix(subnet)) - u32::from(subnet.prefix());
    u128::MAX.checked_shr(128 - host_bits).unwrap_or(0)
}

fn max_prefix(n: IpNetwork) -> u8 {
    if n.is_ipv4() {
        32
    } else {
        128
    }
}

fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    match (a, b) {
        (IpNetwork::V4(a), IpNetwork::V4(b)) => a.overlaps(b),
        (IpNetwork::V6(a), IpNetwork::V6(b)) => a.overlaps(b),
        _ => false,
    }
}

/// An address as an integer (v4 in the low 32 bits).
pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// The integer `n` as an address of `family`'s family.
pub fn from_u128(family: IpAddr, n: u128) -> IpAddr {
    match family {
        // Offsets are clipped to the subnet, so a v4 value fits in 32 bits.
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(ipam: &str) -> CniResult<NetConf> {
        let text =
            format!(r#"{{"cniVersion":"0.3.1","name":"net","type":"macvlan","ipam":{ipam}}}"#);
        parse_netconf(text.as_bytes(), Path::new("/default/store"))
    }

    fn err(ipam: &str) -> CniError {
        parse(ipam).expect_err("config must be rejected")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn seed_config_parses_with_defaults() {
        let c = parse(r#"{"type":"whereabouts","range":"10.200.5.0/24"}"#).unwrap();
        assert_eq!(c.cni_version, "0.3.1");
        assert_eq!(c.name, "net");
        let r = &c.ipam.ranges[0];
        assert_eq!(r.subnet.to_string(), "10.200.5.0/24");
        assert_eq!((r.first, r.last), (1, 254));
        assert_eq!(r.ip_at(r.first), ip("10.200.5.1"));
        assert_eq!(r.ip_at(r.last), ip("10.200.5.254"));
        assert_eq!(r.field, "ipam.range");
        assert_eq!(c.ipam.store_dir, PathBuf::from("/default/store"));
        assert_eq!(c.ipam.network_name, "");
        assert!(c.ipam.fsync);
        assert!(c.valid_attachments.is_none());
    }

    #[test]
    fn both_type_names_accepted_others_rejected() {
        assert!(parse(r#"{"type":"mignet-ipam","range":"10.0.0.0/24"}"#).is_ok());
        let e = err(r#"{"type":"host-local","range":"10.0.0.0/24"}"#);
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(
            e.msg.contains("ipam.type") && e.msg.contains("host-local"),
            "{}",
            e.msg
        );
        let e = err(r#"{"range":"10.0.0.0/24"}"#);
        assert!(e.msg.contains("ipam.type"), "{}", e.msg);
    }

    #[test]
    fn start_end_form_and_host_bits() {
        let c = parse(r#"{"type":"whereabouts","range":"10.0.0.10-10.0.0.20/24"}"#).unwrap();
        let r = &c.ipam.ranges[0];
        assert_eq!(r.subnet.to_string(), "10.0.0.0/24");
        assert_eq!((r.first, r.last), (10, 20));
        // Host bits in the CIDR are cleared, as Go's ParseCIDR does.
        let c = parse(r#"{"type":"whereabouts","range":"10.0.0.77/24"}"#).unwrap();
        assert_eq!(c.ipam.ranges[0].subnet.to_string(), "10.0.0.0/24");
        let e = err(r#"{"type":"whereabouts","range":"10.0.0.10-10.1.0.20/24"}"#);
        assert!(
            e.msg.contains("ipam.range") && e.msg.contains("outside range 10.0.0.0/24"),
            "{}",
            e.msg
        );
    }

    #[test]
    fn range_start_end_bounds_and_clamps() {
        let c = parse(
            r#"{"type":"whereabouts","range":"10.0.0.0/24","range_start":"10.0.0.0","range_end":"10.0.0.255"}"#,
        )
        .unwrap();
        // Network and broadcast are never usable even when the bounds include them.
        assert_eq!((c.ipam.ranges[0].first, c.ipam.ranges[0].last), (1, 254));
        let c = parse(
            r#"{"type":"whereabouts","range":"10.0.0.0/24","range_start":"10.0.0.100","range_end":"10.0.0.110"}"#,
        )
        .unwrap();
        assert_eq!((c.ipam.ranges[0].first, c.ipam.ranges[0].last), (100, 110));
    }

    #[test]
    fn range_start_outside_is_named() {
        let e = err(r#"{"type":"whereabouts","range":"10.200.5.0/24","range_start":"10.9.0.1"}"#);
        assert_eq!(e.code, Code::InvalidConfig);
        assert_eq!(
            e.msg,
            "invalid ipam.range_start \"10.9.0.1\": outside range 10.200.5.0/24"
        );
        let e = err(r#"{"type":"whereabouts","range":"10.200.5.0/24","range_end":"nope"}"#);
        assert_eq!(e.msg, "invalid ipam.range_end \"nope\": not an IP address");
        let e = err(
            r#"{"type":"whereabouts","range":"10.0.0.0/24","range_start":"10.0.0.50","range_end":"10.0.0.40"}"#,
        );
        assert!(
            e.msg.starts_with("invalid ipam.range_start \"10.0.0.50\""),
            "{}",
            e.msg
        );
        let e = err(
            r#"{"type":"whereabouts","range":"10.0.0.5-10.0.0.9/24","range_start":"10.0.0.6"}"#,
        );
        assert!(e.msg.contains("conflicts"), "{}", e.msg);
    }

    #[test]
    fn bad_cidrs_are_code_7_and_named() {
        for (range, why) in [
            ("10.0.0.0/33", "not a valid CIDR"),
            ("10.0.0.0", "expected CIDR"),
            ("banana/24", "not a valid CIDR"),
            ("10.0.0.0/31", "no usable addresses"),
            ("10.0.0.1/32", "no usable addresses"),
            ("fd00::/127", "no usable addresses"),
            ("10.0.0.1-10.0.0.5", "expected CIDR or a-b/prefix"),
        ] {
            let e = err(&format!(r#"{{"type":"whereabouts","range":"{range}"}}"#));
            assert_eq!(e.code, Code::InvalidConfig, "{range}");
            assert!(
                e.msg
                    .starts_with(&format!("invalid ipam.range \"{range}\""))
                    && e.msg.contains(why),
                "{range}: {}",
                e.msg
            );
        }
        let e = err(r#"{"type":"whereabouts","range":24}"#);
        assert_eq!(e.msg, "invalid ipam.range \"24\": must be a string");
        let e = err(r#"{"type":"whereabouts"}"#);
        assert!(e.msg.contains("missing ipam.range"), "{}", e.msg);
        let e = err(
            r#"{"type":"whereabouts","range_start":"10.0.0.1","ipRanges":[{"range":"10.0.0.0/24"}]}"#,
        );
        assert!(e.msg.contains("ipam.range_start"), "{}", e.msg);
    }

    #[test]
    fn smallest_usable_subnets() {
        let c = parse(r#"{"type":"whereabouts","range":"10.0.0.4/30"}"#).unwrap();
        assert_eq!((c.ipam.ranges[0].first, c.ipam.ranges[0].last), (1, 2));
        let c = parse(r#"{"type":"whereabouts","range":"fd00::/126"}"#).unwrap();
        assert_eq!((c.ipam.ranges[0].first, c.ipam.ranges[0].last), (1, 2));
    }

    #[test]
    fn malformed_json_is_code_6() {
        let e = parse_netconf(b"{\"cniVersion\": ", Path::new("/x")).unwrap_err();
        assert_eq!(e.code, Code::Decode);
        let e = parse_netconf(b"[1,2]", Path::new("/x")).unwrap_err();
        assert_eq!(e.code, Code::Decode);
        let e =
            parse_netconf(br#"{"cniVersion":"1.0.0","name":"n"}"#, Path::new("/x")).unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(e.msg.contains("ipam"));
    }

    #[test]
    fn excludes_cidrs_and_bare_ips() {
        let c = parse(
            r#"{"type":"whereabouts","range":"10.0.0.0/24","exclude":["10.0.0.0/28","10.0.0.100","10.1.0.0/16"]}"#,
        )
        .unwrap();
        assert_eq!(c.ipam.ranges[0].excluded, vec![(0, 15), (100, 100)]);
        let e = err(r#"{"type":"whereabouts","range":"10.0.0.0/24","exclude":["fd00::1"]}"#);
        assert!(
            e.msg.starts_with("invalid ipam.exclude[0] \"fd00::1\""),
            "{}",
            e.msg
        );
        let e = err(r#"{"type":"whereabouts","range":"10.0.0.0/24","exclude":["x"]}"#);
        assert!(
            e.msg.starts_with("invalid ipam.exclude[0] \"x\""),
            "{}",
            e.msg
        );
        let e = err(r#"{"type":"whereabouts","range":"10.0.0.0/24","exclude":"10.0.0.1"}"#);
        assert!(e.msg.starts_with("invalid ipam.exclude"), "{}", e.msg);
        // An exclude wider than the subnet is clipped to it.
        let c = parse(r#"{"type":"whereabouts","range":"10.0.0.0/24","exclude":["10.0.0.0/8"]}"#)
            .unwrap();
        assert_eq!(c.ipam.ranges[0].excluded, vec![(0, 255)]);
    }

    #[test]
    fn gateway_is_excluded_and_validated() {
        let c =
            parse(r#"{"type":"whereabouts","range":"10.0.0.0/24","gateway":"10.0.0.1"}"#).unwrap();
        assert_eq!(c.ipam.gateway, Some(ip("10.0.0.1")));
        assert_eq!(c.ipam.ranges[0].excluded, vec![(1, 1)]);
        let e = err(r#"{"type":"whereabouts","range":"10.0.0.0/24","gateway":"10.0.0"}"#);
        assert_eq!(e.msg, "invalid ipam.gateway \"10.0.0\": not an IP address");
    }

    #[test]
    fn ip_ranges_dual_stack_legacy_first() {
        let c = parse(
            r#"{"type":"whereabouts","range":"10.0.0.0/24","ipRanges":[{"range":"fd00:1::/64","exclude":["fd00:1::1"]},{"range":"10.1.0.0/16","range_start":"10.1.2.0"}]}"#,
        )
        .unwrap();
        let r = &c.ipam.ranges;
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].subnet.to_string(), "10.0.0.0/24");
        assert_eq!(r[1].subnet.to_string(), "fd00:1::/64");
        assert_eq!(r[1].field, "ipam.ipRanges[0].range");
        assert_eq!(r[1].excluded, vec![(1, 1)]);
        assert_eq!((r[1].first, r[1].last), (1, u128::from(u64::MAX) - 1));
        assert_eq!(r[2].first, 2 * 256);
        let e = err(
            r#"{"type":"whereabouts","ipRanges":[{"range":"10.0.0.0/24"},{"range":"10.0.0.0/25"}]}"#,
        );
        assert!(
            e.msg.starts_with(
                "invalid ipam.ipRanges[1].range \"10.0.0.0/25\": overlaps ipam.ipRanges[0].range"
            ),
            "{}",
            e.msg
        );
        let e = err(r#"{"type":"whereabouts","ipRanges":[{"range_start":"10.0.0.1"}]}"#);
        assert!(e.msg.contains("ipam.ipRanges[0].range"), "{}", e.msg);
        let e = err(
            r#"{"type":"whereabouts","ipRanges":[{"range":"10.0.0.0/24","range_end":"10.0.1.1"}]}"#,
        );
        assert!(
            e.msg
                .starts_with("invalid ipam.ipRanges[0].range_end \"10.0.1.1\""),
            "{}",
            e.msg
        );
    }

    #[test]
    fn full_128_bit_ranges() {
        let c = parse(r#"{"type":"whereabouts","range":"::/0"}"#).unwrap();
        let r = &c.ipam.ranges[0];
        assert_eq!((r.first, r.last), (1, u128::MAX - 1));
        assert_eq!(
            r.ip_at(r.last),
            ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")
        );
        let c = parse(
            r#"{"type":"whereabouts","range":"fd00::/8","range_start":"fdff::1","exclude":["fd80::/9"]}"#,
        )
        .unwrap();
        let r = &c.ipam.ranges[0];
        assert_eq!(r.ip_at(r.first), ip("fdff::1"));
        assert_eq!(r.offset_of(ip("fd80::")), Some(1u128 << 119));
        assert_eq!(r.excluded, vec![(1u128 << 119, (1u128 << 120) - 1)]);
    }

    #[test]
    fn routes_dns_network_name_store_dir() {
        let c = parse(
            r#"{"type":"whereabouts","range":"10.0.0.0/24","routes":[{"dst":"0.0.0.0/0","gw":"10.0.0.1"}],
                "dns":{"nameservers":["10.0.0.53"]},"network_name":"mig-net_1","store_dir":"/tmp/s"}"#,
        )
        .unwrap();
        assert_eq!(c.ipam.routes.len(), 1);
        assert_eq!(c.ipam.routes[0].gw, Some(ip("10.0.0.1")));
        assert_eq!(c.ipam.dns.nameservers, vec!["10.0.0.53".to_string()]);
        assert_eq!(c.ipam.network_name, "mig-net_1");
        assert_eq!(c.ipam.store_dir, PathBuf::from("/tmp/s"));
        let c = parse(r#"{"type":"whereabouts","range":"10.0.0.0/24","fsync":false}"#).unwrap();
        assert!(!c.ipam.fsync);
        let e = err(r#"{"type":"whereabouts","range":"10.0.0.0/24","fsync":"no"}"#);
        assert_eq!(
            e.msg,
            "invalid ipam.fsync \"\"no\"\": must be true or false"
        );
        let e = err(r#"{"type":"whereabouts","range":"10.0.0.0/24","routes":[{"dst":"nope"}]}"#);
        assert!(e.msg.starts_with("invalid ipam.routes"), "{}", e.msg);
        let e = err(r#"{"type":"whereabouts","range":"10.0.0.0/24","network_name":"../etc"}"#);
        assert!(
            e.msg.starts_with("invalid ipam.network_name \"../etc\""),
            "{}",
            e.msg
        );
        let e = err(r#"{"type":"whereabouts","range":"10.0.0.0/24","store_dir":"rel/dir"}"#);
        assert!(
            e.msg.starts_with("invalid ipam.store_dir \"rel/dir\""),
            "{}",
            e.msg
        );
    }

    #[test]
    fn whereabouts_only_keys_ignored_and_case_insensitive() {
        let c = parse(
            r#"{"type":"whereabouts","Range":"10.0.0.0/24","kubernetes":{"kubeconfig":"/x"},"log_file":"/tmp/wa.log",
                "log_level":"debug","leader_lease_duration":1500,"enable_overlapping_ranges":false,
                "node_slice_size":"/28","configuration_path":"/etc/whereabouts.conf","sleep_for_race":1,
                "datastore":"kubernetes","reconciler_cron_expression":"* * * * *","addresses":[],"gateway":null}"#,
        )
        .unwrap();
        assert_eq!(c.ipam.ranges[0].subnet.to_string(), "10.0.0.0/24");
        let e = err(
            r#"{"type":"whereabouts","range":"10.0.0.0/24","addresses":[{"address":"10.0.0.5/24"}]}"#,
        );
        assert_eq!(e.code, Code::UnsupportedField);
        assert!(e.msg.contains("ipam.addresses"));
    }

    #[test]
    fn gc_attachments_and_prev_result() {
        let text = br#"{"cniVersion":"1.1.0","name":"n","ipam":{"type":"whereabouts","range":"10.0.0.0/24"},
            "cni.dev/valid-attachments":[{"containerID":"a","ifname":"net1"}],
            "cni.dev/attachments":[{"containerID":"b","ifname":"net1"}],
            "prevResult":{"ips":[{"address":"10.0.0.3/24"}]}}"#;
        let c = parse_netconf(text, Path::new("/x")).unwrap();
        let v = c.valid_attachments.unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].container_id, "b");
        assert_eq!(c.prev_result_ips, Some(vec![ip("10.0.0.3")]));
        let bad = br#"{"ipam":{"type":"whereabouts","range":"10.0.0.0/24"},"cni.dev/valid-attachments":[{"ifname":"x"}]}"#;
        let e = parse_netconf(bad, Path::new("/x")).unwrap_err();
        assert!(
            e.msg.starts_with("invalid cni.dev/valid-attachments[0]"),
            "{}",
            e.msg
        );
    }

    const SEED: &str = r#"{"cniVersion":"0.3.1","name":"migration-bridge","type":"macvlan","master":"eth1","mode":"bridge","ipam":{"type":"whereabouts","range":"10.200.5.0/24"}}"#;

    fn flat(text: &str) -> FlatFile {
        FlatFile::parse(PathBuf::from("/tmp/t/whereabouts.conf"), text.as_bytes()).unwrap()
    }

    fn kube(path: &str) -> Option<KubeConf> {
        Some(KubeConf {
            kubeconfig: Some(PathBuf::from(path)),
        })
    }

    #[test]
    fn select_store_every_path() {
        let f = Some(Path::new("/f/whereabouts.conf"));
        // No flat file, no kubernetes, no datastore: the file store, as before.
        assert_eq!(select_store(None, None, None).unwrap(), None);
        assert_eq!(select_store(None, Some(""), None).unwrap(), None);
        // kubernetes present (NAD or merged from the flat file) wins.
        assert_eq!(select_store(kube("/k"), None, None).unwrap(), kube("/k"));
        assert_eq!(
            select_store(kube("/k"), Some("kubernetes"), f).unwrap(),
            kube("/k")
        );
        // In-cluster credentials (kubernetes: {}) stay a Kubernetes store.
        let in_cluster = Some(KubeConf { kubeconfig: None });
        assert_eq!(
            select_store(in_cluster.clone(), None, None).unwrap(),
            in_cluster
        );
        // etcd: unsupported, code 2, wherever it came from.
        for file in [None, f] {
            let e = select_store(kube("/k"), Some("etcd"), file).unwrap_err();
            assert_eq!(e.code, Code::UnsupportedField);
            assert!(
                e.msg.contains("ipam.datastore") && e.msg.contains("\"etcd\""),
                "{}",
                e.msg
            );
        }
        let e = select_store(kube("/k"), Some("etcd"), f).unwrap_err();
        assert!(e.msg.contains("/f/whereabouts.conf"), "{}", e.msg);
        // Another datastore value: invalid, code 7.
        let e = select_store(None, Some("consul"), None).unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(
            e.msg.starts_with("invalid ipam.datastore \"consul\""),
            "{}",
            e.msg
        );
        // A flat file but no kubeconfig anywhere: never the file store.
        let e = select_store(None, Some("kubernetes"), f).unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(
            e.msg
                .starts_with("whereabouts flat file /f/whereabouts.conf: no kubernetes.kubeconfig"),
            "{}",
            e.msg
        );
        assert_eq!(
            select_store(None, None, f).unwrap_err().code,
            Code::InvalidConfig
        );
        // An explicit datastore kubernetes without a kubeconfig: refused too.
        let e = select_store(None, Some("kubernetes"), None).unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(e.msg.contains("ipam.datastore"), "{}", e.msg);
    }

    #[test]
    fn seed_nad_with_flat_file_uses_the_kubernetes_store() {
        let f = flat(
            r#"{"datastore":"kubernetes","kubernetes":{"kubeconfig":"/etc/cni/net.d/mignet-ipam.d/mignet-ipam.kubeconfig"}}"#,
        );
        let c = parse_netconf_with(SEED.as_bytes(), Path::new("/d"), Some(&f)).unwrap();
        // Exactly as if the NAD had "kubernetes":{"kubeconfig":...}.
        let nad = SEED.replace(
            r#""range":"10.200.5.0/24""#,
            r#""range":"10.200.5.0/24","kubernetes":{"kubeconfig":"/etc/cni/net.d/mignet-ipam.d/mignet-ipam.kubeconfig"}"#,
        );
        assert_eq!(c, parse_netconf(nad.as_bytes(), Path::new("/d")).unwrap());
        assert_eq!(
            c.ipam.kubernetes,
            kube("/etc/cni/net.d/mignet-ipam.d/mignet-ipam.kubeconfig")
        );
        // Without a flat file the seed's NAD keeps the file store.
        let c = parse_netconf_with(SEED.as_bytes(), Path::new("/d"), None).unwrap();
        assert_eq!(c.ipam.kubernetes, None);
        assert_eq!(c.ipam.store_dir, PathBuf::from("/d"));
    }

    #[test]
    fn nad_keys_win_over_the_flat_file() {
        let f = flat(
            r#"{"kubernetes":{"kubeconfig":"/flat"},"gateway":"10.200.5.254",
            "enable_overlapping_ranges":false,"range":"10.0.0.0/8"}"#,
        );
        let nad = SEED.replace(
            r#""range":"10.200.5.0/24""#,
            r#""range":"10.200.5.0/24","kubernetes":{"kubeconfig":"/nad"}"#,
        );
        let c = parse_netconf_with(nad.as_bytes(), Path::new("/d"), Some(&f)).unwrap();
        assert_eq!(c.ipam.kubernetes, kube("/nad"));
        assert_eq!(c.ipam.ranges.len(), 1);
        assert_eq!(c.ipam.ranges[0].subnet.to_string(), "10.200.5.0/24");
        // The flat file fills what the NAD lacks (gateway) but never
        // enable_overlapping_ranges (whereabouts restores the NAD's).
        assert_eq!(c.ipam.gateway, Some(ip("10.200.5.254")));
        assert!(c.ipam.overlapping_ranges);
    }

    #[test]
    fn flat_file_errors_name_the_file() {
        let f = flat(r#"{"datastore":"etcd","etcd_host":"10.0.0.1:2379"}"#);
        let e = parse_netconf_with(SEED.as_bytes(), Path::new("/d"), Some(&f)).unwrap_err();
        assert_eq!(e.code, Code::UnsupportedField);
        assert!(e.msg.contains("/tmp/t/whereabouts.conf"), "{}", e.msg);
        // A bad value merged from the file: the message names the field,
        // the details the file.
        let f = flat(r#"{"kubernetes":{"kubeconfig":"/k"},"gateway":"not-an-ip"}"#);
        let e = parse_netconf_with(SEED.as_bytes(), Path::new("/d"), Some(&f)).unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(
            e.msg.starts_with("invalid ipam.gateway \"not-an-ip\""),
            "{}",
            e.msg
        );
        assert!(
            e.details
                .contains("whereabouts flat file /tmp/t/whereabouts.conf"),
            "{}",
            e.details
        );
        // A NAD with datastore etcd and no flat file is refused as well.
        let nad = SEED.replace(r#""range""#, r#""datastore":"etcd","range""#);
        let e = parse_netconf(nad.as_bytes(), Path::new("/d")).unwrap_err();
        assert_eq!(e.code, Code::UnsupportedField);
    }

    #[test]
    fn configuration_path_is_read_first() {
        let nad = SEED.replace(
            r#""range""#,
            r#""configuration_path":"/tmp/wa.conf","range""#,
        );
        assert_eq!(
            configuration_path(nad.as_bytes()).unwrap(),
            Some(PathBuf::from("/tmp/wa.conf"))
        );
        assert_eq!(configuration_path(SEED.as_bytes()).unwrap(), None);
        let bad = SEED.replace(r#""range""#, r#""configuration_path":7,"range""#);
        let e = configuration_path(bad.as_bytes()).unwrap_err();
        assert!(
            e.msg.starts_with("invalid ipam.configuration_path \"7\""),
            "{}",
            e.msg
        );
    }
}
