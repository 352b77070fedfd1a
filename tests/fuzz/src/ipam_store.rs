//! One pool file of the IPAM's node-local file store
//! (`<store_dir>/<pool>.json`), decoded as `FileStore` does before every
//! allocation, then used the way ADD uses it.
//!
//! The pool key is taken from the file's own `range` when that is a CIDR
//! (so the fuzzer gets past the range check), else a fixed /24.
//!
//! Properties:
//! - a refused file is code 5 (I/O: a corrupt store) and names the file;
//! - a decoded pool re-encodes (as `save` writes it) to a file that decodes
//!   to the same pool;
//! - a repeated ADD of an owner the file lists returns an address inside
//!   the pool's subnet, and a new owner gets a free offset inside the range;
//! - allocation stays proportional to the input.

use std::path::Path;

use ipnetwork::IpNetwork;
use mignet_cni::ipam::allocator::Owner;
use mignet_cni::ipam::config::parse_netconf;
use mignet_cni::ipam::file_store::{decode_pool_file, encode_pool_file, PoolKey};
use mignet_cni::Code;

const PATH: &str = "/fuzz/store/pool.json";

fn key_for(data: &[u8]) -> PoolKey {
    let subnet = serde_json::from_slice::<serde_json::Value>(data)
        .ok()
        .and_then(|v| v.get("range")?.as_str()?.parse::<IpNetwork>().ok())
        .filter(|n| n.network() == n.ip())
        .unwrap_or_else(|| "10.200.5.0/24".parse().expect("fixed subnet"));
    PoolKey::new("", subnet)
}

pub fn check(data: &[u8]) {
    let key = key_for(data);
    let path = Path::new(PATH);
    let pool = match crate::alloc_guard::bounded("decode_pool_file", data.len(), || {
        decode_pool_file(path, &key, data)
    }) {
        Ok(p) => p,
        Err(e) => {
            assert_eq!(e.code, Code::Io, "{e:?}");
            assert!(e.msg.contains(PATH), "the file is not named: {e:?}");
            return;
        }
    };

    let bytes = encode_pool_file(&key, &pool).expect("a decoded pool encodes");
    let again = decode_pool_file(path, &key, &bytes).expect("an encoded pool decodes");
    assert_eq!(again.allocations, pool.allocations);

    // The range ADD would use for this pool (the whole subnet).
    let conf = format!(
        r#"{{"cniVersion":"1.1.0","name":"fuzz","ipam":{{"type":"whereabouts","range":"{}"}}}}"#,
        key.subnet
    );
    let Ok(conf) = parse_netconf(conf.as_bytes(), Path::new("/fuzz/store")) else {
        return; // a subnet too small to allocate from (/31, /32, /127, /128)
    };
    let range = &conf.ipam.ranges[0];

    // A repeated ADD of an owner the file lists (the same pod again).
    if let Some((_, a)) = pool.allocations.iter().next() {
        let owner = Owner {
            container_id: a.id.clone(),
            ifname: a.ifname.clone(),
            podref: (!a.podref.is_empty()).then(|| a.podref.clone()),
        };
        let mut p = pool.clone();
        if let Some(got) = p.assign(range, &owner) {
            let ip = range.ip_at(got.offset);
            assert!(
                range.subnet.contains(ip),
                "repeated ADD got {ip} (offset {}) outside {}",
                got.offset,
                range.subnet
            );
        }
    }

    // A new owner.
    let owner = Owner {
        container_id: "fuzz-new-container".into(),
        ifname: "net1".into(),
        podref: Some("fuzz/new-pod".into()),
    };
    let mut p = pool.clone();
    if p.held_by(&owner).is_none() {
        if let Some(got) = p.assign(range, &owner) {
            assert!(!got.existing);
            assert!(
                range.first <= got.offset && got.offset <= range.last,
                "{got:?}"
            );
            assert!(
                !pool.allocations.contains_key(&got.offset),
                "{got:?} was taken"
            );
            assert!(range.subnet.contains(range.ip_at(got.offset)));
        }
    }
}
