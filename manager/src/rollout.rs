//! Network rollout decision (pure): from the HyperConverged's migration
//! network, the NAD it names, the cluster's own CIDRs and the agent
//! DaemonSet as observed, decide the DaemonSet's pod-template annotations and
//! the `MigrationNetworkReady` condition. The kube adapter
//! ([`crate::kube_adapter::rollout`]) does the I/O around it.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde_json::Value;

/// Multus' pod annotation naming the secondary networks to attach.
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";
/// Hash of the effective network config; a change restarts the agents.
pub const NETWORK_HASH_ANNOTATION: &str = "mignet.io/migration-network-hash";
/// Interface name the agents find the migration network on (KubeVirt's name).
pub const MIGRATION_INTERFACE: &str = "migration0";
/// Condition type on the HyperConverged status.
pub const CONDITION_TYPE: &str = "MigrationNetworkReady";

/// Condition reasons: fixed strings, usable as metric labels.
pub mod reason {
    pub const POD_NETWORK: &str = "PodNetwork";
    pub const ROLLED_OUT: &str = "RolledOut";
    pub const ROLLING_OUT: &str = "RollingOut";
    pub const INVALID_REFERENCE: &str = "InvalidNetworkReference";
    pub const NAD_NOT_FOUND: &str = "NetworkAttachmentDefinitionNotFound";
    pub const INVALID_NAD: &str = "InvalidNetworkAttachmentDefinition";
    pub const RANGE_OVERLAP: &str = "RangeOverlapsClusterNetwork";
    pub const AGENT_DAEMONSET_NOT_FOUND: &str = "AgentDaemonSetNotFound";
}

/// Where a `network` value points: `name` resolves in the manager's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NetworkRef {
    pub namespace: String,
    pub name: String,
}

impl NetworkRef {
    pub fn parse(value: &str, default_namespace: &str) -> Option<Self> {
        let value = value.trim();
        let (ns, name) = match value.split_once('/') {
            Some((ns, name)) => (ns, name),
            None => (default_namespace, value),
        };
        let ok = crate::config::is_dns1123_label(ns)
            && !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'.');
        ok.then(|| Self {
            namespace: ns.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The Multus annotation value for an agent pod in `pod_namespace`:
    /// short form when the NAD is local (Multus resolves a bare name in the
    /// pod's namespace), `ns/name` otherwise.
    pub fn annotation_value(&self, pod_namespace: &str) -> String {
        if self.namespace == pod_namespace {
            format!("{}@{MIGRATION_INTERFACE}", self.name)
        } else {
            format!("{}/{}@{MIGRATION_INTERFACE}", self.namespace, self.name)
        }
    }
}

impl std::fmt::Display for NetworkRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// ------------------------------------------------------- NAD config parsing

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

// ----------------------------------------------------------- the decision

/// The cluster's own networks, which a migration range must not overlap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterNetworks {
    pub pod: Vec<IpNetwork>,
    pub service: Vec<IpNetwork>,
}

/// What the adapter found when it looked the NAD up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NadLookup {
    Missing,
    Found { config: Option<String> },
}

/// The agent DaemonSet as observed (None = it does not exist).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentDaemonSet {
    pub namespace: String,
    pub name: String,
    pub template_annotations: BTreeMap<String, String>,
    pub generation: i64,
    pub observed_generation: i64,
    pub desired: i32,
    pub updated: i32,
    pub ready: i32,
}

impl AgentDaemonSet {
    /// What the rollout decision needs from the agent DaemonSet; shared by the
    /// kube adapter and the lab so both observe it the same way.
    pub fn observe(ds: &k8s_openapi::api::apps::v1::DaemonSet, default_namespace: &str) -> Self {
        let status = ds.status.clone().unwrap_or_default();
        AgentDaemonSet {
            namespace: ds
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| default_namespace.to_owned()),
            name: ds.metadata.name.clone().unwrap_or_default(),
            template_annotations: ds
                .spec
                .as_ref()
                .and_then(|s| s.template.metadata.as_ref())
                .and_then(|m| m.annotations.clone())
                .unwrap_or_default(),
            generation: ds.metadata.generation.unwrap_or(0),
            observed_generation: status.observed_generation.unwrap_or(0),
            desired: status.desired_number_scheduled,
            updated: status.updated_number_scheduled.unwrap_or(0),
            ready: status.number_ready,
        }
    }
}

pub struct RolloutInput<'a> {
    /// The effective `network` (already validated by the config module).
    pub network: Option<&'a str>,
    /// Namespace a bare NAD name resolves in (the manager's namespace).
    pub default_namespace: &'a str,
    /// Result of looking the NAD up; ignored when `network` is None.
    pub nad: &'a NadLookup,
    pub cluster: &'a ClusterNetworks,
    pub agents: Option<&'a AgentDaemonSet>,
}

/// Desired values of our two pod-template annotations (None = absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredAnnotations {
    pub networks: Option<String>,
    pub hash: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConditionSpec {
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Some = patch the DaemonSet's pod template to these values;
    /// None = leave the DaemonSet as it is (already right, or input is bad).
    pub patch: Option<DesiredAnnotations>,
    pub condition: ConditionSpec,
}

fn not_ready(reason: &'static str, message: String) -> Decision {
    Decision {
        patch: None,
        condition: ConditionSpec {
            status: false,
            reason,
            message,
        },
    }
}

/// Decide the DaemonSet annotations and the condition. A bad or missing NAD
/// never touches the DaemonSet: agents keep the last good network.
pub fn decide(input: &RolloutInput<'_>) -> Decision {
    let desired = match input.network {
        None => DesiredAnnotations {
            networks: None,
            hash: None,
        },
        Some(value) => {
            let Some(nref) = NetworkRef::parse(value, input.default_namespace) else {
                return not_ready(
                    reason::INVALID_REFERENCE,
                    format!("migration network {value:?} is not a valid NetworkAttachmentDefinition reference"),
                );
            };
            let config = match input.nad {
                NadLookup::Missing => {
                    return not_ready(
                        reason::NAD_NOT_FOUND,
                        format!("NetworkAttachmentDefinition {nref} not found"),
                    )
                }
                NadLookup::Found { config } => config.as_deref(),
            };
            let summary = match parse_nad_config(config) {
                Ok(s) => s,
                Err(e) => {
                    return not_ready(
                        reason::INVALID_NAD,
                        format!("NetworkAttachmentDefinition {nref}: {e}"),
                    )
                }
            };
            let cluster = input
                .cluster
                .pod
                .iter()
                .map(|n| ("pod", n))
                .chain(input.cluster.service.iter().map(|n| ("service", n)));
            for (kind, cnet) in cluster {
                if let Some(r) = summary.ranges.iter().find(|r| overlaps(r.network, *cnet)) {
                    return not_ready(
                        reason::RANGE_OVERLAP,
                        format!(
                            "NetworkAttachmentDefinition {nref}: range {} overlaps the cluster {kind} network {cnet}",
                            r.network
                        ),
                    );
                }
            }
            let Some(agents) = input.agents else {
                return not_ready(
                    reason::AGENT_DAEMONSET_NOT_FOUND,
                    format!("agent DaemonSet not found; network {nref} not applied"),
                );
            };
            DesiredAnnotations {
                networks: Some(nref.annotation_value(&agents.namespace)),
                hash: Some(network_hash(&nref, config.unwrap_or_default())),
            }
        }
    };

    let Some(agents) = input.agents else {
        return not_ready(
            reason::AGENT_DAEMONSET_NOT_FOUND,
            "agent DaemonSet not found".into(),
        );
    };
    let current = DesiredAnnotations {
        networks: agents
            .template_annotations
            .get(NETWORKS_ANNOTATION)
            .cloned(),
        hash: agents
            .template_annotations
            .get(NETWORK_HASH_ANNOTATION)
            .cloned(),
    };
    let patch = (current != desired).then(|| desired.clone());
    // A patch bumps the generation, so the rollout is in progress by definition.
    let rolled_out = patch.is_none()
        && agents.observed_generation >= agents.generation
        && agents.updated >= agents.desired
        && agents.ready >= agents.desired;
    let what = match input.network {
        Some(n) => format!("migration network {n}"),
        None => "no migration network; migrations use the pod network".into(),
    };
    let counts = if patch.is_some() {
        format!("DaemonSet {} updated, agents restarting", agents.name)
    } else {
        format!(
            "{} of {} agents updated, {} ready",
            agents.updated, agents.desired, agents.ready
        )
    };
    let condition = if rolled_out {
        ConditionSpec {
            status: true,
            reason: if input.network.is_some() {
                reason::ROLLED_OUT
            } else {
                reason::POD_NETWORK
            },
            message: format!("{what}: {counts}"),
        }
    } else {
        ConditionSpec {
            status: false,
            reason: reason::ROLLING_OUT,
            message: format!("{what}: {counts}"),
        }
    };
    Decision { patch, condition }
}

/// Hash of the effective network config: the NAD's identity plus its config
/// in canonical JSON (serde_json sorts object keys), so a whitespace-only edit
/// does not restart the agents but any real change does. FNV-1a 64: this is
/// change detection, not security.
pub fn network_hash(nref: &NetworkRef, config: &str) -> String {
    let canonical = serde_json::from_str::<Value>(config)
        .map(|v| v.to_string())
        .unwrap_or_else(|_| config.to_owned());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in nref
        .to_string()
        .bytes()
        .chain(std::iter::once(b'\n'))
        .chain(canonical.bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"{"cniVersion":"0.3.1","name":"migration-bridge","type":"macvlan","master":"eth1","mode":"bridge","ipam":{"type":"whereabouts","range":"10.200.5.0/24"}}"#;

    fn cluster() -> ClusterNetworks {
        ClusterNetworks {
            pod: vec!["10.244.0.0/16".parse().unwrap()],
            service: vec!["10.96.0.0/12".parse().unwrap()],
        }
    }

    fn agents() -> AgentDaemonSet {
        AgentDaemonSet {
            namespace: "mignet-system".into(),
            name: "mignet-agent".into(),
            generation: 1,
            observed_generation: 1,
            desired: 3,
            updated: 3,
            ready: 3,
            ..Default::default()
        }
    }

    fn decide_with(network: Option<&str>, nad: NadLookup, ds: Option<&AgentDaemonSet>) -> Decision {
        decide(&RolloutInput {
            network,
            default_namespace: "mignet-system",
            nad: &nad,
            cluster: &cluster(),
            agents: ds,
        })
    }

    fn found(c: &str) -> NadLookup {
        NadLookup::Found {
            config: Some(c.into()),
        }
    }

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

    #[test]
    fn seed_network_annotates_and_hashes() {
        let ds = agents();
        let d = decide_with(Some("my-secondary-network"), found(SEED), Some(&ds));
        let p = d.patch.expect("patch");
        assert_eq!(
            p.networks.as_deref(),
            Some("my-secondary-network@migration0")
        );
        assert_eq!(p.hash.as_ref().map(String::len), Some(16));
        assert!(!d.condition.status);
        assert_eq!(d.condition.reason, reason::ROLLING_OUT);

        // Once applied and rolled out: no patch, condition True with counts.
        let mut ds2 = agents();
        ds2.template_annotations
            .insert(NETWORKS_ANNOTATION.into(), p.networks.clone().unwrap());
        ds2.template_annotations
            .insert(NETWORK_HASH_ANNOTATION.into(), p.hash.clone().unwrap());
        let d = decide_with(Some("my-secondary-network"), found(SEED), Some(&ds2));
        assert_eq!(d.patch, None);
        assert!(d.condition.status);
        assert_eq!(d.condition.reason, reason::ROLLED_OUT);
        assert!(d.condition.message.contains("my-secondary-network"));
        assert!(
            d.condition.message.contains("3 of 3 agents"),
            "{}",
            d.condition.message
        );

        // Rolling: generation ahead of observed.
        ds2.generation = 2;
        let d = decide_with(Some("my-secondary-network"), found(SEED), Some(&ds2));
        assert_eq!(d.patch, None);
        assert_eq!(d.condition.reason, reason::ROLLING_OUT);
    }

    #[test]
    fn other_namespace_is_qualified() {
        let d = decide_with(Some("net-ns/nad1"), found(SEED), Some(&agents()));
        assert_eq!(
            d.patch.unwrap().networks.as_deref(),
            Some("net-ns/nad1@migration0")
        );
    }

    #[test]
    fn hash_changes_with_network_and_config_not_whitespace() {
        let a = NetworkRef::parse("a", "ns").unwrap();
        let b = NetworkRef::parse("b", "ns").unwrap();
        assert_ne!(network_hash(&a, SEED), network_hash(&b, SEED));
        let changed = SEED.replace("eth1", "eth2");
        assert_ne!(network_hash(&a, SEED), network_hash(&a, &changed));
        let spaced = SEED.replace(",", " , ");
        assert_eq!(network_hash(&a, SEED), network_hash(&a, &spaced));
    }

    #[test]
    fn unset_removes_annotations() {
        let mut ds = agents();
        ds.template_annotations
            .insert(NETWORKS_ANNOTATION.into(), "x@migration0".into());
        ds.template_annotations
            .insert(NETWORK_HASH_ANNOTATION.into(), "0123".into());
        ds.template_annotations
            .insert("other".into(), "kept".into());
        let d = decide_with(None, NadLookup::Missing, Some(&ds));
        assert_eq!(
            d.patch,
            Some(DesiredAnnotations {
                networks: None,
                hash: None
            })
        );
        // Already clean: nothing to do, pod network reported.
        let d = decide_with(None, NadLookup::Missing, Some(&agents()));
        assert_eq!(d.patch, None);
        assert!(d.condition.status);
        assert_eq!(d.condition.reason, reason::POD_NETWORK);
    }

    #[test]
    fn bad_inputs_leave_daemonset_alone() {
        let ds = agents();
        let d = decide_with(Some("missing"), NadLookup::Missing, Some(&ds));
        assert_eq!(d.patch, None);
        assert_eq!(d.condition.reason, reason::NAD_NOT_FOUND);
        assert!(d.condition.message.contains("mignet-system/missing"));

        let bad = SEED.replace("10.200.5.0/24", "10.200.5.0/99");
        let d = decide_with(Some("n"), found(&bad), Some(&ds));
        assert_eq!(d.patch, None);
        assert_eq!(d.condition.reason, reason::INVALID_NAD);
        assert!(d.condition.message.contains("10.200.5.0/99"));

        let overlapping = SEED.replace("10.200.5.0/24", "10.244.3.0/24");
        let d = decide_with(Some("n"), found(&overlapping), Some(&ds));
        assert_eq!(d.patch, None);
        assert_eq!(d.condition.reason, reason::RANGE_OVERLAP);
        assert!(
            d.condition.message.contains("pod network 10.244.0.0/16"),
            "{}",
            d.condition.message
        );

        let svc = SEED.replace("10.200.5.0/24", "10.100.0.0/16");
        let d = decide_with(Some("n"), found(&svc), Some(&ds));
        assert!(d.condition.message.contains("service network"));

        let d = decide_with(Some("Bad_Name"), found(SEED), Some(&ds));
        assert_eq!(d.condition.reason, reason::INVALID_REFERENCE);

        let d = decide_with(Some("n"), found(SEED), None);
        assert_eq!(d.patch, None);
        assert_eq!(d.condition.reason, reason::AGENT_DAEMONSET_NOT_FOUND);
    }
}
