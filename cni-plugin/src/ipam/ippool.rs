//! whereabouts' resources as we store them: the `IPPool` and
//! `OverlappingRangeIPReservation` (ORIP) types, their names, the labels our
//! reservations carry, and the pure translation between a stored IPPool and
//! the allocator's `Pool` (read: `parse_pool`; write: `pool_spec` and the
//! preconditioned `write_patch`). No API calls; `kube` does those.

use super::allocator::{Allocation, Owner, Pool};
use crate::error::{CniError, CniResult, Code};
use kube::CustomResource;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// whereabouts' IPPool spec.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "whereabouts.cni.cncf.io",
    version = "v1alpha1",
    kind = "IPPool",
    namespaced,
    schema = "disabled"
)]
pub struct IPPoolSpec {
    /// The subnet in CIDR notation.
    pub range: String,
    /// Decimal offset from the network address -> owner. Offsets are full
    /// 128-bit here; whereabouts reads them as signed 64-bit.
    #[serde(default)]
    pub allocations: BTreeMap<String, Allocation>,
}

/// whereabouts' OverlappingRangeIPReservation spec. `containerid` is in its
/// schema but whereabouts never writes it; we do, so ownership is exact.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "whereabouts.cni.cncf.io",
    version = "v1alpha1",
    kind = "OverlappingRangeIPReservation",
    namespaced,
    schema = "disabled"
)]
pub struct OverlappingRangeIPReservationSpec {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub containerid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub ifname: String,
    #[serde(default)]
    pub podref: String,
}

/// whereabouts' ORIP name: the address with ':' -> '-' (a trailing ':'
/// gets a '0' first), prefixed by `<network_name>-` when there is one.
pub fn orip_name(network_name: &str, ip: IpAddr) -> String {
    let mut s = ip.to_string();
    if s.ends_with(':') {
        s.push('0');
    }
    let s = s.replace(':', "-");
    if network_name.is_empty() {
        s
    } else {
        format!("{network_name}-{s}")
    }
}

/// A pool read from the API: the allocations we understand, plus keys that
/// are not decimal `u128` offsets inside the subnet (e.g. whereabouts'
/// negative /64 offsets, its #83). Those are kept verbatim on every write
/// but never allocated from, so we neither lose nor reuse what another
/// writer recorded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedPool {
    pub pool: Pool,
    pub foreign: BTreeMap<String, Allocation>,
}

/// Parse an IPPool spec for `subnet`; a pool holding another range is an
/// error (two configs disagreeing about one pool name).
pub fn parse_pool(
    name: &str,
    spec: &IPPoolSpec,
    subnet: ipnetwork::IpNetwork,
) -> CniResult<ParsedPool> {
    let same = spec
        .range
        .parse::<ipnetwork::IpNetwork>()
        .ok()
        .is_some_and(|r| r.network() == subnet.network() && r.prefix() == subnet.prefix());
    if !same {
        return Err(CniError::new(
            Code::Io,
            format!(
                "IPPool {name} holds range {:?} but {subnet} was expected",
                spec.range
            ),
        ));
    }
    let mut out = ParsedPool::default();
    let max = super::config::max_offset(subnet);
    for (k, a) in &spec.allocations {
        match k.parse::<u128>() {
            // An offset outside the subnet (another writer's bug) is kept
            // verbatim like any foreign key: used, it would hand out an
            // address outside the range.
            Ok(o) if o.to_string() == *k && o <= max => {
                out.pool.allocations.insert(o, a.clone());
            }
            _ => {
                out.foreign.insert(k.clone(), a.clone());
            }
        }
    }
    Ok(out)
}

/// The spec to write back for a parsed pool.
pub fn pool_spec(subnet: ipnetwork::IpNetwork, p: &ParsedPool) -> IPPoolSpec {
    let mut allocations = p.foreign.clone();
    for (o, a) in &p.pool.allocations {
        allocations.insert(o.to_string(), a.clone());
    }
    IPPoolSpec {
        range: subnet.to_string(),
        allocations,
    }
}

/// Whether a reservation belongs to `owner`: the same container, or (for
/// reservations whereabouts wrote, without a container id) the same pod and
/// interface.
pub fn orip_owned_by(r: &OverlappingRangeIPReservationSpec, owner: &Owner) -> bool {
    if !r.containerid.is_empty() && r.containerid == owner.container_id {
        return true;
    }
    match &owner.podref {
        Some(p) => r.podref == *p && (r.ifname.is_empty() || r.ifname == owner.ifname),
        None => false,
    }
}

/// Label on our reservations naming their pool (pending-claim lookup).
pub const POOL_LABEL: &str = "ipam.mignet.io/ippool";
/// Label a DEL puts on its reservation before taking its entry out: a
/// release pending in that pool (value: the pool label).
pub const RELEASE_LABEL: &str = "ipam.mignet.io/release";
/// Annotation on our reservations: the offset in that pool.
pub const OFFSET_ANNOTATION: &str = "ipam.mignet.io/offset";
/// Label on our reservations: when they were made, in epochs of
/// `CLAIM_EPOCH_SECS`. The pending-claim lookup selects the current and the
/// previous epoch only, so it returns the few claims of ADDs in flight, not
/// every reservation the pool ever got (the pool label stays on all of
/// them). A claim older than that is either committed or its ADD commits it
/// itself (a waiter in `kube` writes after `MAX_WAITS`): the lookup only finds work
/// to combine, correctness never depends on it.
pub const EPOCH_LABEL: &str = "ipam.mignet.io/claim-epoch";
/// Seconds per claim epoch.
pub const CLAIM_EPOCH_SECS: u64 = 32;
/// Field manager of every write, whichever name the binary was installed
/// under.
pub const FIELD_MANAGER: &str = "mignet-ipam";

/// The write of a pool: a JSON Patch that holds only on version `rv`
/// (a `test` of `/metadata/resourceVersion`, as whereabouts writes), then
/// adds, replaces or removes just the entries that differ from `old`.
///
/// Why a patch and not a PUT of the whole object with the same
/// precondition: a failed test is rejected right after the server applied
/// a few small ops to its cached copy, while a stale PUT is decoded and
/// validated in full (300 entries) before etcd refuses it; and a good write
/// sends a few hundred bytes instead of the pool. The first op resets
/// `managedFields` (one empty entry is the documented reset): otherwise the
/// server records every allocation key per writer there, which more than
/// doubles the object that every ADD reads and every write re-encodes
/// (300 entries: 123 KB with, 47 KB without, measured in IPAM.md).
/// Nobody server-side-applies IPPools (whereabouts and we patch them), so
/// that record has no reader.
pub fn write_patch(old: &IPPoolSpec, rv: &str, new: &IPPoolSpec) -> serde_json::Value {
    let mut ops = vec![
        serde_json::json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}),
        serde_json::json!({"op": "replace", "path": "/metadata/managedFields", "value": [{}]}),
    ];
    if old.allocations.is_empty() {
        // The map may be absent on the server: write it whole.
        ops.push(serde_json::json!({
            "op": "add", "path": "/spec/allocations", "value": new.allocations
        }));
        return serde_json::Value::Array(ops);
    }
    for (k, a) in &new.allocations {
        if old.allocations.get(k) != Some(a) {
            ops.push(serde_json::json!({
                "op": "add", "path": format!("/spec/allocations/{}", json_pointer_escape(k)), "value": a
            }));
        }
    }
    for k in old.allocations.keys() {
        if !new.allocations.contains_key(k) {
            ops.push(serde_json::json!({
                "op": "remove", "path": format!("/spec/allocations/{}", json_pointer_escape(k))
            }));
        }
    }
    serde_json::Value::Array(ops)
}

/// RFC 6901: `~` and `/` in a key are escaped (foreign keys may hold any
/// text).
fn json_pointer_escape(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

/// The label selector of the pending claims of pool `label` at `epoch`.
pub fn pending_selector(label: &str, epoch: u64) -> String {
    format!(
        "{POOL_LABEL}={label},{EPOCH_LABEL} in ({epoch},{})",
        epoch.saturating_sub(1)
    )
}

/// The label value for a pool name, if it fits a label (63 characters);
/// longer pool names get no label and so no combining, only plain commits.
pub fn pool_label(pool: &str) -> Option<String> {
    (pool.len() <= 63
        && pool
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && pool.starts_with(|c: char| c.is_ascii_alphanumeric())
        && pool.ends_with(|c: char| c.is_ascii_alphanumeric()))
    .then(|| pool.to_string())
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
    fn orip_names_follow_whereabouts() {
        assert_eq!(orip_name("", "10.200.5.7".parse().unwrap()), "10.200.5.7");
        assert_eq!(
            orip_name("net", "10.200.5.7".parse().unwrap()),
            "net-10.200.5.7"
        );
        assert_eq!(orip_name("", "fd00::".parse().unwrap()), "fd00--0");
        assert_eq!(orip_name("", "fd00::1:2".parse().unwrap()), "fd00--1-2");
    }

    #[test]
    fn pool_spec_roundtrip_keeps_foreign_keys_and_128_bit_offsets() {
        let subnet: ipnetwork::IpNetwork = "fd00::/64".parse().unwrap();
        let big = (1u128 << 64) - 2;
        let mut spec = IPPoolSpec {
            range: "fd00::/64".into(),
            allocations: BTreeMap::new(),
        };
        spec.allocations.insert(big.to_string(), alloc("a", "ns/a"));
        spec.allocations.insert("-5".into(), alloc("b", "ns/b"));
        spec.allocations.insert("007".into(), alloc("c", "ns/c"));
        let p = parse_pool("fd00---64", &spec, subnet).unwrap();
        assert_eq!(p.pool.allocations.len(), 1);
        assert_eq!(p.pool.allocations[&big].id, "a");
        assert_eq!(p.foreign.len(), 2);
        assert_eq!(pool_spec(subnet, &p), spec);
    }

    #[test]
    fn offsets_outside_the_subnet_are_kept_but_never_used() {
        // Found by tests/fuzz (ipam_pool): used, offset 1000 of a /24 made a
        // repeated ADD answer 10.0.3.232.
        let subnet: ipnetwork::IpNetwork = "10.0.0.0/24".parse().unwrap();
        let mut spec = IPPoolSpec {
            range: "10.0.0.0/24".into(),
            allocations: BTreeMap::new(),
        };
        spec.allocations.insert("255".into(), alloc("a", "ns/a"));
        spec.allocations.insert("1000".into(), alloc("b", "ns/b"));
        let p = parse_pool("x", &spec, subnet).unwrap();
        assert_eq!(p.pool.allocations.keys().collect::<Vec<_>>(), [&255]);
        assert!(p.foreign.contains_key("1000"));
        assert_eq!(pool_spec(subnet, &p), spec);
    }

    #[test]
    fn a_pool_with_another_range_is_refused() {
        let spec = IPPoolSpec {
            range: "10.0.0.0/16".into(),
            allocations: BTreeMap::new(),
        };
        let e = parse_pool("x", &spec, "10.0.0.0/24".parse().unwrap()).unwrap_err();
        assert_eq!(e.code, Code::Io);
        assert!(e.msg.contains("holds range"), "{}", e.msg);
        // Host bits in the stored range do not matter.
        let spec = IPPoolSpec {
            range: "10.0.0.0/24".into(),
            allocations: BTreeMap::new(),
        };
        parse_pool("x", &spec, "10.0.0.0/24".parse().unwrap()).unwrap();
    }

    #[test]
    fn orip_ownership() {
        let owner = Owner {
            container_id: "c1".into(),
            ifname: "net1".into(),
            podref: Some("ns/p".into()),
        };
        let mine = OverlappingRangeIPReservationSpec {
            containerid: "c1".into(),
            ifname: "net1".into(),
            podref: "ns/p".into(),
        };
        assert!(orip_owned_by(&mine, &owner));
        // whereabouts writes no container id: pod + ifname decide.
        let wa = OverlappingRangeIPReservationSpec {
            containerid: String::new(),
            ifname: "net1".into(),
            podref: "ns/p".into(),
        };
        assert!(orip_owned_by(&wa, &owner));
        let other = OverlappingRangeIPReservationSpec {
            containerid: "c2".into(),
            ifname: "net1".into(),
            podref: "ns/q".into(),
        };
        assert!(!orip_owned_by(&other, &owner));
        let anon = Owner {
            podref: None,
            ..owner
        };
        assert!(!orip_owned_by(&wa, &anon));
    }

    #[test]
    fn write_patch_tests_the_version_and_touches_only_changed_entries() {
        let mut old = IPPoolSpec {
            range: "10.0.0.0/24".into(),
            allocations: BTreeMap::new(),
        };
        old.allocations.insert("1".into(), alloc("a", "ns/a"));
        old.allocations.insert("2".into(), alloc("b", "ns/b"));
        old.allocations.insert("x/~".into(), alloc("f", "ns/f"));
        let mut new = old.clone();
        new.allocations.remove("2");
        new.allocations.insert("3".into(), alloc("c", "ns/c"));
        new.allocations.insert("x/~".into(), alloc("g", "ns/f"));
        let ops = write_patch(&old, "42", &new);
        let ops = ops.as_array().unwrap();
        assert_eq!(ops[0]["op"], "test");
        assert_eq!(ops[0]["path"], "/metadata/resourceVersion");
        assert_eq!(ops[0]["value"], "42");
        assert_eq!(ops[1]["path"], "/metadata/managedFields");
        let rest: Vec<(String, String)> = ops[2..]
            .iter()
            .map(|o| {
                (
                    o["op"].as_str().unwrap().into(),
                    o["path"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert_eq!(
            rest,
            vec![
                ("add".into(), "/spec/allocations/3".into()),
                ("add".into(), "/spec/allocations/x~1~0".into()),
                ("remove".into(), "/spec/allocations/2".into()),
            ]
        );
        // An empty pool gets its map written whole (it may be absent).
        let empty = IPPoolSpec {
            range: "10.0.0.0/24".into(),
            allocations: BTreeMap::new(),
        };
        let ops = write_patch(&empty, "7", &new);
        assert_eq!(ops[2]["path"], "/spec/allocations");
        assert_eq!(ops[2]["value"]["3"]["id"], "c");
        // It parses as a JSON Patch document.
        serde_json::from_value::<json_patch::Patch>(ops).unwrap();
    }

    #[test]
    fn pending_claims_select_the_pool_and_two_epochs() {
        assert_eq!(
            pending_selector("10.0.0.0-24", 100),
            "ipam.mignet.io/ippool=10.0.0.0-24,ipam.mignet.io/claim-epoch in (100,99)"
        );
        assert_eq!(pool_label(&"x".repeat(64)), None);
    }
}
