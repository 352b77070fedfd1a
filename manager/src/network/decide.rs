//! The network rollout decision (pure): from the HyperConverged's parsed
//! migration network, the NAD it names, the cluster's own CIDRs and the
//! agent DaemonSet as observed, decide the DaemonSet's pod-template
//! annotations and the `MigrationNetworkReady` condition.
//! [`super::reconcile`] does the I/O around it, in both modes.

use std::collections::BTreeMap;

use ipnetwork::IpNetwork;
use serde_json::Value;

use super::nad_config::{overlaps, parse_nad_config};
use crate::api::network_ref::{NetworkRef, NetworkRefError};

/// Multus' pod annotation naming the secondary networks to attach.
pub const NETWORKS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/networks";
/// Multus' record of what each interface of a pod got (the lab kubelet
/// writes the same).
pub const NETWORK_STATUS_ANNOTATION: &str = "k8s.v1.cni.cncf.io/network-status";
/// Hash of the effective network config; a change restarts the agents.
pub const NETWORK_HASH_ANNOTATION: &str = "mignet.io/migration-network-hash";
/// The migration network as the agent reads it (`--migration-network`, via
/// the downward API): always `namespace/name`, whatever form the
/// HyperConverged used and whatever form Multus is given.
pub const MIGRATION_NETWORK_ANNOTATION: &str = "mignet.io/migration-network";
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
    /// Probe pods are proving the network; the DaemonSet is not touched yet.
    pub const PREFLIGHT_RUNNING: &str = "PreflightRunning";
    /// The last round found pairs of nodes the network does not carry.
    pub const PREFLIGHT_FAILED: &str = "PreflightFailed";
    /// The network is proven; new migrations are held while the running
    /// ones end, then the agents restart onto it.
    pub const WAITING_FOR_MIGRATIONS: &str = "WaitingForMigrations";
    /// Agents are restarting onto the new network; new migrations are held
    /// until every Ready agent is on it.
    pub const SWITCHING_AGENTS: &str = "SwitchingAgents";
}

/// The Multus selection for an agent pod in `pod_namespace`: short form
/// when the NAD is local (Multus resolves a bare name in the pod's
/// namespace), `ns/name` otherwise.
pub fn multus_selection(nref: &NetworkRef, default_namespace: &str, pod_namespace: &str) -> String {
    let ns = nref.namespace_or(default_namespace);
    if ns == pod_namespace {
        format!("{}@{MIGRATION_INTERFACE}", nref.name())
    } else {
        format!("{ns}/{}@{MIGRATION_INTERFACE}", nref.name())
    }
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
    /// The HyperConverged's `network`, parsed once by its reader: `Ok(None)`
    /// = the pod network, `Err` = a value that names no NAD.
    pub network: Result<Option<&'a NetworkRef>, &'a NetworkRefError>,
    /// Namespace a bare NAD name resolves in (the manager's namespace).
    pub default_namespace: &'a str,
    /// Result of looking the NAD up; ignored without a network.
    pub nad: &'a NadLookup,
    pub cluster: &'a ClusterNetworks,
    pub agents: Option<&'a AgentDaemonSet>,
}

/// Desired values of our pod-template annotations (None = absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredAnnotations {
    /// [`NETWORKS_ANNOTATION`]: what Multus attaches.
    pub networks: Option<String>,
    /// [`NETWORK_HASH_ANNOTATION`].
    pub hash: Option<String>,
    /// [`MIGRATION_NETWORK_ANNOTATION`]: what the agent is told.
    pub network: Option<String>,
}

impl DesiredAnnotations {
    /// The three annotations as (key, value); `None` = remove the key.
    pub fn entries(&self) -> [(&'static str, Option<&str>); 3] {
        [
            (NETWORKS_ANNOTATION, self.networks.as_deref()),
            (NETWORK_HASH_ANNOTATION, self.hash.as_deref()),
            (MIGRATION_NETWORK_ANNOTATION, self.network.as_deref()),
        ]
    }

    fn of(annotations: &BTreeMap<String, String>) -> Self {
        let get = |k: &str| annotations.get(k).cloned();
        DesiredAnnotations {
            networks: get(NETWORKS_ANNOTATION),
            hash: get(NETWORK_HASH_ANNOTATION),
            network: get(MIGRATION_NETWORK_ANNOTATION),
        }
    }
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
    let network = match input.network {
        Ok(n) => n,
        Err(e) => return not_ready(reason::INVALID_REFERENCE, e.to_string()),
    };
    let desired = match network {
        None => DesiredAnnotations {
            networks: None,
            hash: None,
            network: None,
        },
        Some(nref) => {
            let nref = nref.resolved(input.default_namespace);
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
                networks: Some(multus_selection(
                    &nref,
                    input.default_namespace,
                    &agents.namespace,
                )),
                hash: Some(network_hash(&nref, config.unwrap_or_default())),
                network: Some(nref.to_string()),
            }
        }
    };

    let Some(agents) = input.agents else {
        return not_ready(
            reason::AGENT_DAEMONSET_NOT_FOUND,
            "agent DaemonSet not found".into(),
        );
    };
    let current = DesiredAnnotations::of(&agents.template_annotations);
    let patch = (current != desired).then(|| desired.clone());
    // A patch bumps the generation, so the rollout is in progress by definition.
    let rolled_out = patch.is_none()
        && agents.observed_generation >= agents.generation
        && agents.updated >= agents.desired
        && agents.ready >= agents.desired;
    let what = match network {
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
            reason: if network.is_some() {
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
/// change detection, not security. `nref` is resolved (`namespace/name`):
/// the same NAD hashes the same whichever form the HyperConverged uses.
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
        let parsed = NetworkRef::from_setting(network);
        decide(&RolloutInput {
            network: parsed.as_ref().map(Option::as_ref),
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
        ds2.template_annotations.insert(
            MIGRATION_NETWORK_ANNOTATION.into(),
            p.network.clone().unwrap(),
        );
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
    fn the_agent_is_told_namespace_slash_name_whichever_form_the_hco_uses() {
        let bare = decide_with(Some("my-secondary-network"), found(SEED), Some(&agents()));
        let full = decide_with(
            Some("mignet-system/my-secondary-network"),
            found(SEED),
            Some(&agents()),
        );
        let bare = bare.patch.unwrap();
        assert_eq!(
            bare.network.as_deref(),
            Some("mignet-system/my-secondary-network")
        );
        assert_eq!(Some(bare), full.patch, "same NAD, same annotations");
        let other = decide_with(Some("net-ns/nad1"), found(SEED), Some(&agents()));
        assert_eq!(other.patch.unwrap().network.as_deref(), Some("net-ns/nad1"));
    }

    #[test]
    fn hash_changes_with_network_and_config_not_whitespace() {
        let a = NetworkRef::parse("ns/a").unwrap();
        let b = NetworkRef::parse("ns/b").unwrap();
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
                hash: None,
                network: None,
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
