//! A NetworkAttachmentDefinition's CNI config, read for what the rollout
//! checks (pure): the interface plugin and its master, the IPAM type and its
//! address ranges, and whether a range overlaps the cluster's own networks.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NadConfigError {
    #[error("spec.config is missing")]
    MissingConfig,
    #[error("spec.config is not valid JSON: {0}")]
    Json(String),
    #[error("spec.config has no plugin with a \"type\"")]
    MissingType,
    #[error("plugin {cni_type:?} has no \"master\" interface")]
    MissingMaster { cni_type: String },
    #[error("plugin {cni_type:?} has no \"ipam\" section with a \"type\"")]
    MissingIpam { cni_type: String },
    #[error("ipam {ipam_type:?} has no address range (range, ipRanges, subnet or ranges)")]
    NoRange { ipam_type: String },
    #[error("ipam {field} {value:?} is not a valid range: {reason}")]
    BadRange {
        field: &'static str,
        value: String,
        reason: String,
    },
}

/// An IPAM range: the CIDR and, for whereabouts' `a-b/prefix` form or
/// `range_start`/`range_end`, the bounds inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamRange {
    pub network: IpNetwork,
    pub start: Option<IpAddr>,
    pub end: Option<IpAddr>,
}

/// What we need from a NAD's CNI config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NadSummary {
    pub cni_type: String,
    pub master: String,
    pub ipam_type: String,
    pub ranges: Vec<IpamRange>,
}

/// Parse a NAD's `spec.config`: a single plugin config or a conflist (the
/// first plugin carrying `type` is the interface plugin). Checks `type`,
/// `master`, and the IPAM ranges (whereabouts `range` incl. `a-b/cidr`,
/// `range_start`/`range_end`, `ipRanges`; host-local `subnet`/`ranges`).
pub fn parse_nad_config(config: Option<&str>) -> Result<NadSummary, NadConfigError> {
    let config = config
        .filter(|c| !c.trim().is_empty())
        .ok_or(NadConfigError::MissingConfig)?;
    let v: Value = serde_json::from_str(config).map_err(|e| NadConfigError::Json(e.to_string()))?;
    let plugin = match v.get("plugins").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .find(|p| p.get("type").and_then(Value::as_str).is_some())
            .ok_or(NadConfigError::MissingType)?,
        None => &v,
    };
    let cni_type = non_empty_str(plugin, "type").ok_or(NadConfigError::MissingType)?;
    let master = non_empty_str(plugin, "master").ok_or_else(|| NadConfigError::MissingMaster {
        cni_type: cni_type.clone(),
    })?;
    let ipam = plugin.get("ipam").filter(|i| i.is_object());
    let ipam_type =
        ipam.and_then(|i| non_empty_str(i, "type"))
            .ok_or_else(|| NadConfigError::MissingIpam {
                cni_type: cni_type.clone(),
            })?;
    let ipam = ipam.ok_or_else(|| NadConfigError::MissingIpam {
        cni_type: cni_type.clone(),
    })?;
    let ranges = ipam_ranges(ipam)?;
    if ranges.is_empty() {
        return Err(NadConfigError::NoRange { ipam_type });
    }
    Ok(NadSummary {
        cni_type,
        master,
        ipam_type,
        ranges,
    })
}

fn non_empty_str(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn ipam_ranges(ipam: &Value) -> Result<Vec<IpamRange>, NadConfigError> {
    let mut out = Vec::new();
    // whereabouts: top-level range (+ range_start/range_end) ...
    if let Some(r) = ipam.get("range") {
        out.push(whereabouts_range("range", r, ipam)?);
    }
    // ... and ipRanges for dual stack.
    if let Some(list) = ipam.get("ipRanges").and_then(Value::as_array) {
        for item in list {
            let r = item.get("range").ok_or_else(|| NadConfigError::BadRange {
                field: "ipRanges",
                value: item.to_string(),
                reason: "entry has no \"range\"".into(),
            })?;
            out.push(whereabouts_range("ipRanges.range", r, item)?);
        }
    }
    // host-local: subnet, or ranges: [[{subnet, rangeStart, rangeEnd}]].
    if let Some(s) = ipam.get("subnet") {
        out.push(cidr_range("subnet", s)?);
    }
    if let Some(sets) = ipam.get("ranges").and_then(Value::as_array) {
        for set in sets {
            for r in set.as_array().into_iter().flatten() {
                let s = r.get("subnet").ok_or_else(|| NadConfigError::BadRange {
                    field: "ranges",
                    value: r.to_string(),
                    reason: "entry has no \"subnet\"".into(),
                })?;
                out.push(cidr_range("ranges.subnet", s)?);
            }
        }
    }
    Ok(out)
}

fn cidr_range(field: &'static str, v: &Value) -> Result<IpamRange, NadConfigError> {
    let s = v.as_str().ok_or_else(|| NadConfigError::BadRange {
        field,
        value: v.to_string(),
        reason: "not a string".into(),
    })?;
    let network = parse_cidr(field, s)?;
    Ok(IpamRange {
        network,
        start: None,
        end: None,
    })
}

fn parse_cidr(field: &'static str, s: &str) -> Result<IpNetwork, NadConfigError> {
    let bad = |reason: String| NadConfigError::BadRange {
        field,
        value: s.to_owned(),
        reason,
    };
    if !s.contains('/') {
        return Err(bad("missing /prefix".into()));
    }
    let net: IpNetwork = s.trim().parse().map_err(|e| bad(format!("{e}")))?;
    // Normalise 10.200.5.7/24 to its network so overlap checks see the block.
    let net = IpNetwork::new(net.network(), net.prefix()).map_err(|e| bad(format!("{e}")))?;
    let usable = match net {
        IpNetwork::V4(n) => n.prefix() <= 30,
        IpNetwork::V6(n) => n.prefix() <= 126,
    };
    if !usable {
        return Err(bad("too small to hold addresses for the agents".into()));
    }
    Ok(net)
}

fn whereabouts_range(
    field: &'static str,
    v: &Value,
    section: &Value,
) -> Result<IpamRange, NadConfigError> {
    let s = v.as_str().ok_or_else(|| NadConfigError::BadRange {
        field,
        value: v.to_string(),
        reason: "not a string".into(),
    })?;
    let bad = |reason: String| NadConfigError::BadRange {
        field,
        value: s.to_owned(),
        reason,
    };
    let parse_ip = |what: &str, t: &str| -> Result<IpAddr, NadConfigError> {
        t.trim()
            .parse::<IpAddr>()
            .map_err(|e| bad(format!("{what} {t:?}: {e}")))
    };
    // `a-b/prefix`: the block is b/prefix, the allocatable part a..=b.
    let (mut start, mut end, network) = match s.split_once('-') {
        Some((a, rest)) => {
            let network = parse_cidr(field, rest)?;
            let (b, _) = rest.split_once('/').unwrap_or((rest, ""));
            (
                Some(parse_ip("start", a)?),
                Some(parse_ip("end", b)?),
                network,
            )
        }
        None => (None, None, parse_cidr(field, s)?),
    };
    if let Some(a) = section.get("range_start").and_then(Value::as_str) {
        start = Some(parse_ip("range_start", a)?);
    }
    if let Some(b) = section.get("range_end").and_then(Value::as_str) {
        end = Some(parse_ip("range_end", b)?);
    }
    for (what, ip) in [("start", start), ("end", end)] {
        if let Some(ip) = ip {
            if !network.contains(ip) {
                return Err(bad(format!("{what} {ip} is outside {network}")));
            }
        }
    }
    if let (Some(a), Some(b)) = (start, end) {
        if a > b {
            return Err(bad(format!("start {a} is after end {b}")));
        }
    }
    Ok(IpamRange {
        network,
        start,
        end,
    })
}

/// Two CIDR blocks overlap iff one contains the other's base address.
pub fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"{"cniVersion":"0.3.1","name":"migration-bridge","type":"macvlan","master":"eth1","mode":"bridge","ipam":{"type":"whereabouts","range":"10.200.5.0/24"}}"#;

    #[test]
    fn seed_nad_parses() {
        let s = parse_nad_config(Some(SEED)).unwrap();
        assert_eq!(s.cni_type, "macvlan");
        assert_eq!(s.master, "eth1");
        assert_eq!(s.ipam_type, "whereabouts");
        assert_eq!(
            s.ranges[0].network,
            "10.200.5.0/24".parse::<IpNetwork>().unwrap()
        );
    }

    #[test]
    fn range_forms() {
        let cfg = |ipam: &str| format!(r#"{{"type":"macvlan","master":"eth1","ipam":{ipam}}}"#);
        let s = parse_nad_config(Some(&cfg(
            r#"{"type":"whereabouts","range":"10.0.0.10-10.0.0.50/24"}"#,
        )))
        .unwrap();
        assert_eq!(s.ranges[0].start, Some("10.0.0.10".parse().unwrap()));
        assert_eq!(s.ranges[0].network.to_string(), "10.0.0.0/24");
        let s = parse_nad_config(Some(&cfg(
            r#"{"type":"whereabouts","ipRanges":[{"range":"10.1.0.0/24"},{"range":"fd00:1::/64"}]}"#,
        )))
        .unwrap();
        assert_eq!(s.ranges.len(), 2);
        let s = parse_nad_config(Some(&cfg(
            r#"{"type":"host-local","ranges":[[{"subnet":"10.2.0.0/24"}]]}"#,
        )))
        .unwrap();
        assert_eq!(s.ranges[0].network.to_string(), "10.2.0.0/24");
        // Conflist: first plugin with a type.
        let s = parse_nad_config(Some(
            r#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"macvlan","master":"eth1","ipam":{"type":"whereabouts","range":"10.3.0.0/24"}},{"type":"tuning"}]}"#,
        ))
        .unwrap();
        assert_eq!(s.ranges[0].network.to_string(), "10.3.0.0/24");
    }

    #[test]
    fn bad_configs_say_why() {
        let cases = [
            (None, "missing"),
            (Some("{not json"), "not valid JSON"),
            (Some(r#"{"master":"eth1"}"#), "\"type\""),
            (
                Some(r#"{"type":"macvlan","ipam":{"type":"x","range":"10.0.0.0/24"}}"#),
                "master",
            ),
            (Some(r#"{"type":"macvlan","master":"eth1"}"#), "ipam"),
            (
                Some(r#"{"type":"macvlan","master":"eth1","ipam":{"type":"whereabouts"}}"#),
                "no address range",
            ),
            (
                Some(
                    r#"{"type":"macvlan","master":"eth1","ipam":{"type":"whereabouts","range":"10.200.5.0/33"}}"#,
                ),
                "10.200.5.0/33",
            ),
            (
                Some(
                    r#"{"type":"macvlan","master":"eth1","ipam":{"type":"whereabouts","range":"banana"}}"#,
                ),
                "banana",
            ),
            (
                Some(
                    r#"{"type":"macvlan","master":"eth1","ipam":{"type":"whereabouts","range":"10.0.0.50-10.0.0.10/24"}}"#,
                ),
                "after",
            ),
            (
                Some(
                    r#"{"type":"macvlan","master":"eth1","ipam":{"type":"whereabouts","range":"10.0.0.0/24","range_start":"10.0.1.1"}}"#,
                ),
                "outside",
            ),
            (
                Some(
                    r#"{"type":"macvlan","master":"eth1","ipam":{"type":"whereabouts","range":"10.0.0.0/31"}}"#,
                ),
                "too small",
            ),
        ];
        for (cfg, needle) in cases {
            let e = parse_nad_config(cfg).expect_err(needle).to_string();
            assert!(e.contains(needle), "{cfg:?}: {e:?} lacks {needle:?}");
        }
    }

    #[test]
    fn overlap() {
        let n = |s: &str| s.parse::<IpNetwork>().unwrap();
        assert!(overlaps(n("10.0.0.0/8"), n("10.200.5.0/24")));
        assert!(overlaps(n("10.200.5.0/24"), n("10.0.0.0/8")));
        assert!(!overlaps(n("10.200.5.0/24"), n("10.200.6.0/24")));
        assert!(!overlaps(n("10.0.0.0/8"), n("fd00::/8")));
    }
}
