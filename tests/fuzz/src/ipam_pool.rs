//! A whereabouts IPPool object as read from the Kubernetes API (its spec:
//! `range` and `allocations`), parsed as the Kubernetes store does.
//!
//! The expected subnet is the object's own `range` when that is a CIDR
//! (so the fuzzer gets past the range check), else a fixed /24.
//!
//! Properties:
//! - a refused pool is code 5 and names the pool;
//! - no allocation is lost: offsets we use plus foreign keys kept verbatim
//!   add up to the object's allocations, and writing the pool back
//!   (`pool_spec`) and parsing it again gives the same pool;
//! - every offset the allocator may use lies inside the subnet, so a
//!   repeated ADD never answers with an address outside it;
//! - allocation stays proportional to the input.

use ipnetwork::IpNetwork;
use mignet_cni::ipam::ippool::{parse_pool, pool_spec, IPPoolSpec};
use mignet_cni::Code;

const NAME: &str = "fuzz-pool";

fn subnet_of(spec: &IPPoolSpec) -> IpNetwork {
    spec.range
        .parse::<IpNetwork>()
        .ok()
        .filter(|n| n.network() == n.ip())
        .unwrap_or_else(|| "10.200.5.0/24".parse().expect("fixed subnet"))
}

/// Offsets in `subnet`: 2^(host bits).
fn size(subnet: IpNetwork) -> Option<u128> {
    let host_bits = match subnet {
        IpNetwork::V4(n) => 32 - u32::from(n.prefix()),
        IpNetwork::V6(n) => 128 - u32::from(n.prefix()),
    };
    1u128.checked_shl(host_bits).filter(|_| host_bits < 128)
}

pub fn check(data: &[u8]) {
    let Ok(spec) = serde_json::from_slice::<IPPoolSpec>(data) else {
        return; // kube's client refuses it before we see it
    };
    let subnet = subnet_of(&spec);
    let parsed = match crate::alloc_guard::bounded("parse_pool", data.len(), || {
        parse_pool(NAME, &spec, subnet)
    }) {
        Ok(p) => p,
        Err(e) => {
            assert_eq!(e.code, Code::Io, "{e:?}");
            assert!(e.msg.contains(NAME), "{e:?}");
            return;
        }
    };
    assert_eq!(
        parsed.pool.allocations.len() + parsed.foreign.len(),
        spec.allocations.len(),
        "allocations lost"
    );
    if let Some(size) = size(subnet) {
        for &o in parsed.pool.allocations.keys() {
            assert!(o < size, "offset {o} is outside {subnet} yet would be used");
        }
    }
    let back = pool_spec(subnet, &parsed);
    assert_eq!(
        back.allocations, spec.allocations,
        "write-back changed allocations"
    );
    let again = parse_pool(NAME, &back, subnet).expect("the written-back pool parses");
    assert_eq!(again, parsed);
}
