//! Result versions: encoding our canonical 1.x result in whatever version the
//! config asked for, and decoding a result of any version (prevResult, a
//! delegated IPAM's stdout) back into the canonical shape.
//!
//! The shapes follow the Go library's `types/{020,040,100}`:
//! - 1.1.0 and 1.0.0 share one shape; only the label differs.
//! - 0.3.0, 0.3.1, 0.4.0 add `ips[].version` and have no interface
//!   `mtu`/`socketPath`/`pciID` (route extras survive: routes share one type).
//! - 0.1.0, 0.2.0 are `{ip4:{ip,gateway,routes}, ip6:{...}, dns}` with only the
//!   first address of each family, and cannot express a result without IPs.

use crate::error::{CniError, CniResult, Code};
use crate::types::{CniOutput, Dns, IpConfig, Route};
use serde_json::{json, Map, Value};
use std::cmp::Ordering;

/// Compare two dotted versions numerically ("0.10.0" > "0.4.0").
pub fn cmp(a: &str, b: &str) -> Ordering {
    let parse = |s: &str| -> Vec<u64> { s.split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    parse(a).cmp(&parse(b))
}

/// Which result shape a version uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// 0.1.0, 0.2.0
    V020,
    /// 0.3.0, 0.3.1, 0.4.0
    V040,
    /// 1.0.0, 1.1.0
    V100,
}

pub fn shape(version: &str) -> CniResult<Shape> {
    Ok(match version {
        "0.1.0" | "0.2.0" => Shape::V020,
        "0.3.0" | "0.3.1" | "0.4.0" => Shape::V040,
        "1.0.0" | "1.1.0" => Shape::V100,
        other => {
            return Err(CniError::new(
                Code::IncompatibleVersion,
                format!("unsupported result version \"{other}\""),
            ))
        }
    })
}

/// Our result as the JSON of `version`.
///
/// `dns` is always present (`{}` when empty): Go's `omitempty` never omits a
/// struct, so every reference plugin prints it, and byte-level consumers of
/// the result (cached results, diff tools) see the same shape from us.
pub fn encode_result(out: &CniOutput, version: &str) -> CniResult<Value> {
    let mut v = match shape(version)? {
        Shape::V100 => {
            let mut o = out.clone();
            o.cni_version = version.to_string();
            serde_json::to_value(&o).expect("result types always serialize")
        }
        Shape::V040 => encode_040(out, version),
        Shape::V020 => encode_020(out, version)?,
    };
    if let Some(m) = v.as_object_mut() {
        m.entry("dns").or_insert_with(|| json!({}));
    }
    Ok(v)
}

fn dns_value(dns: &Dns) -> Option<Value> {
    (!dns.is_empty()).then(|| serde_json::to_value(dns).expect("dns serializes"))
}

fn encode_040(out: &CniOutput, version: &str) -> Value {
    let mut m = Map::new();
    m.insert("cniVersion".into(), json!(version));
    if !out.interfaces.is_empty() {
        let ifs: Vec<Value> = out
            .interfaces
            .iter()
            .map(|i| {
                let mut o = Map::new();
                o.insert("name".into(), json!(i.name));
                if !i.mac.is_empty() {
                    o.insert("mac".into(), json!(i.mac));
                }
                if !i.sandbox.is_empty() {
                    o.insert("sandbox".into(), json!(i.sandbox));
                }
                Value::Object(o)
            })
            .collect();
        m.insert("interfaces".into(), Value::Array(ifs));
    }
    if !out.ips.is_empty() {
        let ips: Vec<Value> = out
            .ips
            .iter()
            .map(|ip| {
                let mut o = Map::new();
                o.insert(
                    "version".into(),
                    json!(if ip.address.is_ipv4() { "4" } else { "6" }),
                );
                if let Some(i) = ip.interface {
                    o.insert("interface".into(), json!(i));
                }
                o.insert("address".into(), json!(ip.address.to_string()));
                if let Some(gw) = ip.gateway {
                    o.insert("gateway".into(), json!(gw.to_string()));
                }
                Value::Object(o)
            })
            .collect();
        m.insert("ips".into(), Value::Array(ips));
    }
    if !out.routes.is_empty() {
        m.insert(
            "routes".into(),
            serde_json::to_value(&out.routes).expect("routes serialize"),
        );
    }
    if let Some(d) = dns_value(&out.dns) {
        m.insert("dns".into(), d);
    }
    Value::Object(m)
}

fn encode_020(out: &CniOutput, version: &str) -> CniResult<Value> {
    let first = |v4: bool| out.ips.iter().find(|ip| ip.address.is_ipv4() == v4);
    let family = |v4: bool| -> Option<Value> {
        let ip = first(v4)?;
        let mut o = Map::new();
        o.insert("ip".into(), json!(ip.address.to_string()));
        if let Some(gw) = ip.gateway {
            o.insert("gateway".into(), json!(gw.to_string()));
        }
        let routes: Vec<Value> = out
            .routes
            .iter()
            .filter(|r| r.dst.is_ipv4() == v4)
            .map(|r| {
                let mut ro = Map::new();
                ro.insert("dst".into(), json!(r.dst.to_string()));
                if let Some(gw) = r.gw {
                    ro.insert("gw".into(), json!(gw.to_string()));
                }
                Value::Object(ro)
            })
            .collect();
        if !routes.is_empty() {
            o.insert("routes".into(), Value::Array(routes));
        }
        Some(Value::Object(o))
    };
    let (ip4, ip6) = (family(true), family(false));
    if ip4.is_none() && ip6.is_none() {
        return Err(CniError::new(
            Code::IncompatibleVersion,
            "cannot convert: no valid IP addresses",
        )
        .with_details(format!(
            "a result without IPs cannot be expressed in version {version}"
        )));
    }
    let mut m = Map::new();
    m.insert("cniVersion".into(), json!(version));
    if let Some(v) = ip4 {
        m.insert("ip4".into(), v);
    }
    if let Some(v) = ip6 {
        m.insert("ip6".into(), v);
    }
    if let Some(d) = dns_value(&out.dns) {
        m.insert("dns".into(), d);
    }
    Ok(Value::Object(m))
}

/// A result of any version back into the canonical shape. A missing
/// `cniVersion` means 0.1.0, as for configs.
pub fn decode_result(v: &Value) -> CniResult<CniOutput> {
    let bad = |e: &dyn std::fmt::Display| CniError::decode("result", e);
    let version = match v.get("cniVersion") {
        None | Some(Value::Null) => "0.1.0".to_string(),
        Some(Value::String(s)) if s.is_empty() => "0.1.0".to_string(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => return Err(bad(&format!("cniVersion is not a string: {other}"))),
    };
    match shape(&version)? {
        // 0.3.x/0.4.0 differ from 1.x only by fields we ignore on input
        // (`ips[].version`), so the same decoder serves both.
        Shape::V100 | Shape::V040 => {
            let mut out: CniOutput = serde_json::from_value(v.clone()).map_err(|e| bad(&e))?;
            out.cni_version = version;
            Ok(out)
        }
        Shape::V020 => decode_020(v, version),
    }
}

pub fn decode_result_bytes(b: &[u8]) -> CniResult<CniOutput> {
    let v: Value = serde_json::from_slice(b).map_err(|e| CniError::decode("result", e))?;
    decode_result(&v)
}

fn decode_020(v: &Value, version: String) -> CniResult<CniOutput> {
    #[derive(serde::Deserialize)]
    struct Route020 {
        dst: crate::types::IpCidr,
        #[serde(default)]
        gw: Option<std::net::IpAddr>,
    }
    #[derive(serde::Deserialize)]
    struct Ip020 {
        ip: crate::types::IpCidr,
        #[serde(default)]
        gateway: Option<std::net::IpAddr>,
        #[serde(default)]
        routes: Vec<Route020>,
    }
    #[derive(serde::Deserialize)]
    struct R020 {
        #[serde(default)]
        ip4: Option<Ip020>,
        #[serde(default)]
        ip6: Option<Ip020>,
        #[serde(default)]
        dns: Dns,
    }
    let r: R020 =
        serde_json::from_value(v.clone()).map_err(|e| CniError::decode("0.2.0 result", e))?;
    let mut out = CniOutput {
        cni_version: version,
        dns: r.dns,
        ..Default::default()
    };
    for fam in [r.ip4, r.ip6].into_iter().flatten() {
        out.ips.push(IpConfig {
            interface: None,
            address: fam.ip,
            gateway: fam.gateway,
        });
        out.routes.extend(fam.routes.into_iter().map(|r| Route {
            dst: r.dst,
            gw: r.gw,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
        }));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Interface;

    fn sample() -> CniOutput {
        serde_json::from_value(json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "net1", "mac": "02:00:00:00:00:01", "mtu": 1400,
                            "sandbox": "/var/run/netns/x", "socketPath": "/s", "pciID": "0000:00:01.0"}],
            "ips": [
                {"interface": 0, "address": "10.200.5.7/24", "gateway": "10.200.5.1"},
                {"interface": 0, "address": "10.200.6.7/24"},
                {"interface": 0, "address": "fd00::7/64", "gateway": "fd00::1"}
            ],
            "routes": [
                {"dst": "0.0.0.0/0", "gw": "10.200.5.1", "mtu": 1300, "priority": 5},
                {"dst": "::/0"}
            ],
            "dns": {"nameservers": ["10.0.0.53"]}
        }))
        .unwrap()
    }

    #[test]
    fn v110_and_v100_same_shape() {
        let a = encode_result(&sample(), "1.1.0").unwrap();
        let b = encode_result(&sample(), "1.0.0").unwrap();
        assert_eq!(a["cniVersion"], "1.1.0");
        assert_eq!(b["cniVersion"], "1.0.0");
        assert_eq!(a["interfaces"], b["interfaces"]);
        assert_eq!(a["interfaces"][0]["mtu"], 1400);
        assert_eq!(a["interfaces"][0]["pciID"], "0000:00:01.0");
        assert!(a["ips"][0].get("version").is_none());
        assert_eq!(a["routes"][0]["priority"], 5);
    }

    #[test]
    fn v040_family_adds_version_drops_interface_extras() {
        for v in ["0.3.0", "0.3.1", "0.4.0"] {
            let r = encode_result(&sample(), v).unwrap();
            assert_eq!(r["cniVersion"], v);
            let i = r["interfaces"][0].as_object().unwrap();
            let mut keys: Vec<_> = i.keys().cloned().collect();
            keys.sort();
            assert_eq!(keys, ["mac", "name", "sandbox"]);
            assert_eq!(r["ips"][0]["version"], "4");
            assert_eq!(r["ips"][0]["interface"], 0);
            assert_eq!(r["ips"][2]["version"], "6");
            assert_eq!(r["ips"][1].get("gateway"), None);
            assert_eq!(r["routes"][0]["mtu"], 1300, "route extras survive");
            assert_eq!(r["dns"]["nameservers"][0], "10.0.0.53");
        }
    }

    #[test]
    fn v020_first_ip_per_family_routes_bucketed() {
        for v in ["0.1.0", "0.2.0"] {
            let r = encode_result(&sample(), v).unwrap();
            let m = r.as_object().unwrap();
            let mut keys: Vec<_> = m.keys().cloned().collect();
            keys.sort();
            assert_eq!(keys, ["cniVersion", "dns", "ip4", "ip6"]);
            assert_eq!(r["ip4"]["ip"], "10.200.5.7/24");
            assert_eq!(r["ip4"]["gateway"], "10.200.5.1");
            assert_eq!(
                r["ip4"]["routes"],
                json!([{"dst": "0.0.0.0/0", "gw": "10.200.5.1"}])
            );
            assert_eq!(r["ip6"]["ip"], "fd00::7/64");
            assert_eq!(r["ip6"]["routes"], json!([{"dst": "::/0"}]));
        }
    }

    #[test]
    fn v020_without_ips_fails() {
        let l2 = CniOutput {
            cni_version: "1.1.0".into(),
            interfaces: vec![Interface {
                name: "net1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let e = encode_result(&l2, "0.2.0").unwrap_err();
        assert_eq!(e.msg, "cannot convert: no valid IP addresses");
        let r = encode_result(&l2, "0.3.1").unwrap();
        assert_eq!(r["dns"], json!({}), "dns always present, like Go");
    }

    #[test]
    fn round_trips_through_every_version() {
        for v in crate::skel::SUPPORTED_VERSIONS {
            let enc = encode_result(&sample(), v).unwrap();
            let dec = decode_result(&enc).unwrap();
            assert_eq!(dec.cni_version, *v);
            match shape(v).unwrap() {
                Shape::V100 => assert_eq!(
                    CniOutput {
                        cni_version: "1.1.0".into(),
                        ..dec
                    },
                    sample()
                ),
                Shape::V040 => {
                    assert_eq!(dec.ips, sample().ips);
                    assert_eq!(dec.routes, sample().routes);
                    assert_eq!(dec.interfaces[0].mtu, None);
                }
                Shape::V020 => {
                    assert_eq!(dec.ips.len(), 2);
                    assert_eq!(dec.ips[0].address.to_string(), "10.200.5.7/24");
                    assert_eq!(dec.routes.len(), 2);
                }
            }
        }
    }

    #[test]
    fn decode_rejects_unknown_version_and_garbage() {
        assert_eq!(
            decode_result(&json!({"cniVersion": "9.9.9"}))
                .unwrap_err()
                .code,
            Code::IncompatibleVersion
        );
        assert_eq!(
            decode_result(&json!({"cniVersion": "1.0.0", "ips": [{"address": "nope"}]}))
                .unwrap_err()
                .code,
            Code::Decode
        );
        // No cniVersion: the 0.1.0 shape.
        let r = decode_result(&json!({"ip4": {"ip": "10.1.1.1/8"}})).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.1.1.1/8");
    }

    #[test]
    fn version_ordering() {
        assert_eq!(cmp("0.3.1", "0.4.0"), Ordering::Less);
        assert_eq!(cmp("1.1.0", "1.1.0"), Ordering::Equal);
        assert_eq!(cmp("0.10.0", "0.4.0"), Ordering::Greater);
    }
}
