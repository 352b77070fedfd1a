//! Pre-flight of a migration network: before the manager points the agent
//! DaemonSet at a new (or first) network, it proves that network carries
//! what a migration needs, between every pair of nodes.
//!
//! How a round runs, in both modes:
//! 1. The manager creates one probe pod per node (`mignet probe`, the
//!    agent's image, ServiceAccount and certificate source), labelled
//!    [`ROUND_LABEL`]`=<network hash>`, pinned with `spec.nodeName`, and
//!    annotated with the NAD as `<nad>@migration0`, exactly as the agents
//!    will be. Multus (the lab kubelet in the lab) attaches `migration0` and
//!    records its address in `k8s.v1.cni.cncf.io/network-status`.
//! 2. Each probe finds its own address on `migration0` (none: it reports
//!    [`FailureReason::NoAddress`]), then serves on [`PROBE_PORT`] of that
//!    address: UDP echo and a TLS listener with the agent's server config.
//! 3. Each probe lists the round's pods, reads the peers' addresses from
//!    their network-status, and for each peer: a small UDP packet, a
//!    full-size one (the interface MTU minus IP and UDP headers, with DF
//!    set), and a TLS handshake with the agent's client config (certificate
//!    of the agent role from the cluster CA, TLS 1.3).
//! 4. A probe stays until every reachable peer says it is done with it too
//!    (or its deadline passes), then writes a [`ProbeReport`] as its
//!    termination message (one JSON line) and exits 0.
//! 5. The manager reads the reports from the pods' terminated state, decides
//!    ([`verdict`]), deletes the pods either way (their addresses go with
//!    the CNI DEL), and only on a pass patches the DaemonSet.
//!
//! The wire format between probes is ours alone (both ends are this
//! binary); the report is what the manager parses.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

/// Label on every probe pod of a round; the value is the network hash
/// ([`super::decide::network_hash`]) the round proves.
pub const ROUND_LABEL: &str = "mignet.io/preflight";
/// UDP echo and TLS, both on the probe's own migration address.
pub const PROBE_PORT: u16 = 4790;
/// The probe pods' container name.
pub const PROBE_CONTAINER: &str = "probe";
/// Termination messages are cut at 4096 bytes by the kubelet: the report
/// must fit (ok peers are listed by name only).
pub const REPORT_MAX_BYTES: usize = 4096;

/// Why a node, or a pair of nodes, failed the pre-flight. Fixed strings
/// (`as_str`): they are metric labels and what an operator greps for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailureReason {
    /// The probe got no usable address on `migration0` (the interface is
    /// missing, down, or has only a link-local address).
    NoAddress,
    /// The NAD's `master` is not an interface of that node (the CNI ADD
    /// failed, so the probe pod never started).
    WrongMaster,
    /// Small packets pass, full-size ones do not: the segment's MTU is
    /// smaller than the NAD's.
    Mtu,
    /// Nothing arrives from the peer (not even small packets).
    Unreachable,
    /// Packets pass but the TLS handshake with the agents' certificates
    /// fails (CA, role, clock).
    Tls,
    /// The probe pod did not start or report before the round's deadline
    /// (any other reason; the detail says what the pod shows).
    NotStarted,
}

impl FailureReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::NoAddress => "NoAddress",
            FailureReason::WrongMaster => "WrongMaster",
            FailureReason::Mtu => "MTU",
            FailureReason::Unreachable => "Unreachable",
            FailureReason::Tls => "TLS",
            FailureReason::NotStarted => "NotStarted",
        }
    }
}

/// One failure: the class and what exactly was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub reason: FailureReason,
    /// Human words, e.g. `a 8972-byte UDP payload (MTU 9000) got no echo in
    /// 3 tries; 64-byte ones did`.
    pub detail: String,
}

/// One peer as a probe saw it; `failure: None` = every check passed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerResult {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
}

/// What one probe pod reports (its termination message, one JSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The node the probe ran on.
    pub node: String,
    /// Its address on `migration0` (`None` with `own_failure`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The MTU of its `migration0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Why the probe could not take part at all (no address, no
    /// certificate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_failure: Option<Failure>,
    /// Every peer it was told of, in node order.
    #[serde(default)]
    pub peers: Vec<PeerResult>,
}

impl ProbeReport {
    /// The report as the termination message: one JSON line. Failure
    /// details are shortened, longest first, until it fits.
    pub fn to_message(&self) -> String {
        let mut r = self.clone();
        loop {
            let s = serde_json::to_string(&r).unwrap_or_default();
            if s.len() <= REPORT_MAX_BYTES {
                return s;
            }
            let longest = r
                .peers
                .iter_mut()
                .filter_map(|p| p.failure.as_mut())
                .chain(r.own_failure.as_mut())
                .max_by_key(|f| f.detail.len());
            match longest {
                Some(f) if f.detail.len() > 16 => {
                    let keep = f.detail.len() / 2;
                    let mut cut = keep;
                    while !f.detail.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    f.detail.truncate(cut);
                    f.detail.push('…');
                }
                _ => return s,
            }
        }
    }

    pub fn from_message(message: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(message.trim())
    }
}

// ------------------------------------------------------------ the manager

/// How the manager runs rounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreflightSettings {
    /// Off: the DaemonSet is annotated at once, as before (for clusters
    /// that cannot run the probe pods; the operator then proves the network
    /// by other means).
    pub enabled: bool,
    /// What each probe is given (`--deadline-seconds`): it reports by then.
    pub probe_deadline: Duration,
    /// A round with pods that have not reported by this long after the
    /// first was created ends: those nodes fail as NotStarted. Covers image
    /// pulls, scheduling and the certificate request on top of the probe's
    /// own deadline.
    pub round_deadline: Duration,
    /// After a failed round, the next one for the same network starts this
    /// much later (the fix, say a cable or a switch port's MTU, is outside
    /// Kubernetes, so nothing would wake the manager for it).
    pub retry_after: Duration,
    /// How long the drain's hold stands before the DaemonSet is patched
    /// ([`super::switch::HOLD_SETTLE`]). Not part of the pre-flight, but of
    /// the same change of network.
    pub hold_settle: Duration,
}

impl Default for PreflightSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            probe_deadline: Duration::from_secs(45),
            round_deadline: Duration::from_secs(120),
            retry_after: Duration::from_secs(120),
            hold_settle: super::switch::HOLD_SETTLE,
        }
    }
}

/// A probe pod as the manager sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbePodView {
    pub name: String,
    /// `spec.nodeName`.
    pub node: String,
    /// The round it belongs to ([`ROUND_LABEL`]).
    pub round: String,
    pub created: Option<Timestamp>,
    pub state: ProbeState,
    pub deleting: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeState {
    /// Not started; `why` is what the kubelet says (the CNI ADD's error
    /// from a `FailedCreatePodSandBox` event or the pod's
    /// `PodReadyToStartContainers` condition).
    Waiting {
        why: Option<String>,
    },
    Running,
    Ended {
        exit_code: i32,
        message: String,
    },
}

impl ProbePodView {
    /// The view of a pod of any round; `None` for pods that are not probes.
    pub fn of(pod: &Pod) -> Option<Self> {
        let round = pod.labels().get(ROUND_LABEL)?.clone();
        let node = pod.spec.as_ref()?.node_name.clone()?;
        let status = pod.status.clone().unwrap_or_default();
        let terminated = status
            .container_statuses
            .iter()
            .flatten()
            .find(|c| c.name == PROBE_CONTAINER)
            .and_then(|c| c.state.as_ref()?.terminated.clone());
        let state = if let Some(t) = terminated {
            ProbeState::Ended {
                exit_code: t.exit_code,
                message: t.message.unwrap_or_default(),
            }
        } else if status.phase.as_deref() == Some("Running") {
            ProbeState::Running
        } else {
            let why = status
                .conditions
                .iter()
                .flatten()
                .find(|c| {
                    c.type_ == "PodReadyToStartContainers"
                        && c.status == "False"
                        && c.message.is_some()
                })
                .and_then(|c| c.message.clone());
            ProbeState::Waiting { why }
        };
        Some(Self {
            name: pod.name_any(),
            node,
            round,
            created: pod.metadata.creation_timestamp.as_ref().map(|t| t.0),
            state,
            deleting: pod.metadata.deletion_timestamp.is_some(),
        })
    }
}

/// One thing the round found wrong: a node on its own (`peer: None`), or
/// the pair `node`–`peer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub node: String,
    pub peer: Option<String>,
    pub failure: Failure,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.peer {
            Some(p) => write!(f, "{} -> {}", self.node, p)?,
            None => write!(f, "{}", self.node)?,
        }
        write!(
            f,
            ": {} ({})",
            self.failure.reason.as_str(),
            self.failure.detail
        )
    }
}

/// Where a round stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundVerdict {
    /// Probes still out: `reported` of `total` are done.
    Running { reported: usize, total: usize },
    /// Every pair of `nodes` passed every check.
    Passed { nodes: usize },
    /// Node failures first, then the failing pairs (each pair once).
    Failed(Vec<Finding>),
}

/// Judge a round over `nodes` (every node an agent runs on) from its pods.
/// `deadline_passed`: probes not done by now count as NotStarted.
pub fn verdict(nodes: &[String], pods: &[ProbePodView], deadline_passed: bool) -> RoundVerdict {
    let mut reports: Vec<(&str, ProbeReport)> = Vec::new();
    let mut node_findings: Vec<Finding> = Vec::new();
    let mut pending = 0;
    let node_failure = |node: &str, reason, detail: String| Finding {
        node: node.to_owned(),
        peer: None,
        failure: Failure { reason, detail },
    };
    for node in nodes {
        let Some(pod) = pods.iter().find(|p| &p.node == node && !p.deleting) else {
            if deadline_passed {
                node_findings.push(node_failure(
                    node,
                    FailureReason::NotStarted,
                    "no probe pod".into(),
                ));
            } else {
                pending += 1;
            }
            continue;
        };
        match &pod.state {
            ProbeState::Ended {
                exit_code: 0,
                message,
            } => match ProbeReport::from_message(message) {
                Ok(r) => match &r.own_failure {
                    Some(f) => node_findings.push(node_failure(node, f.reason, f.detail.clone())),
                    None => reports.push((node.as_str(), r)),
                },
                Err(e) => node_findings.push(node_failure(
                    node,
                    FailureReason::NotStarted,
                    format!("probe {} left no readable report: {e}", pod.name),
                )),
            },
            ProbeState::Ended { exit_code, message } => node_findings.push(node_failure(
                node,
                FailureReason::NotStarted,
                format!(
                    "probe {} exited with code {exit_code}: {}",
                    pod.name,
                    message.trim()
                ),
            )),
            // A sandbox that failed does not heal on its own (the kubelet
            // retries the same ADD): final as soon as it is seen.
            ProbeState::Waiting { why: Some(why) } => node_findings.push(node_failure(
                node,
                classify_start_error(why),
                cni_error(why).to_owned(),
            )),
            ProbeState::Waiting { why: None } | ProbeState::Running => {
                if deadline_passed {
                    let what = if pod.state == ProbeState::Running {
                        "still running"
                    } else {
                        "not started"
                    };
                    node_findings.push(node_failure(
                        node,
                        FailureReason::NotStarted,
                        format!("probe {} {what} at the round's deadline", pod.name),
                    ));
                } else {
                    pending += 1;
                }
            }
        }
    }
    if pending > 0 {
        return RoundVerdict::Running {
            reported: nodes.len() - pending,
            total: nodes.len(),
        };
    }
    let bad: std::collections::BTreeSet<&str> =
        node_findings.iter().map(|f| f.node.as_str()).collect();
    let mut pairs: Vec<Finding> = Vec::new();
    for (node, r) in &reports {
        for p in &r.peers {
            let Some(f) = &p.failure else { continue };
            // A peer that failed on its own is said once, as itself.
            if bad.contains(p.node.as_str()) || !nodes.contains(&p.node) {
                continue;
            }
            let seen = pairs.iter().any(|x| {
                (x.node == p.node && x.peer.as_deref() == Some(node))
                    || (x.node == *node && x.peer.as_deref() == Some(p.node.as_str()))
            });
            if !seen {
                pairs.push(Finding {
                    node: (*node).to_owned(),
                    peer: Some(p.node.clone()),
                    failure: f.clone(),
                });
            }
        }
        // A good peer the probe never reported on is a gap, not a pass.
        for other in nodes {
            if other.as_str() == *node || bad.contains(other.as_str()) {
                continue;
            }
            if !r.peers.iter().any(|p| &p.node == other) {
                pairs.push(Finding {
                    node: (*node).to_owned(),
                    peer: Some(other.clone()),
                    failure: Failure {
                        reason: FailureReason::NotStarted,
                        detail: "the probe did not report on this peer".into(),
                    },
                });
            }
        }
    }
    if node_findings.is_empty() && pairs.is_empty() {
        return RoundVerdict::Passed { nodes: nodes.len() };
    }
    node_findings.extend(pairs);
    RoundVerdict::Failed(node_findings)
}

/// The plugin's own words from a kubelet's sandbox message: after Multus'
/// `[namespace/pod/uid:network]: ` prefix, else after `failed (add): `,
/// else all of it. The sandbox id and the runtime's wrapping say nothing an
/// operator acts on.
fn cni_error(why: &str) -> &str {
    if let Some(i) = why.rfind("]: ") {
        return &why[i + 3..];
    }
    match why.rfind("failed (add): ") {
        Some(i) => &why[i + "failed (add): ".len()..],
        None => why,
    }
}

/// A CNI ADD's error, in the classes an operator acts on: the master
/// interface is not on that node, or something else kept the address away.
fn classify_start_error(why: &str) -> FailureReason {
    let w = why.to_ascii_lowercase();
    if w.contains("master") {
        FailureReason::WrongMaster
    } else if w.contains("mtu") {
        FailureReason::Mtu
    } else {
        FailureReason::NoAddress
    }
}

/// The findings as one condition message: each on its own clause, at most
/// `MAX_FINDINGS` named (then how many more).
pub fn describe_findings(findings: &[Finding]) -> String {
    const MAX_FINDINGS: usize = 12;
    let mut parts: Vec<String> = findings
        .iter()
        .take(MAX_FINDINGS)
        .map(ToString::to_string)
        .collect();
    if findings.len() > MAX_FINDINGS {
        parts.push(format!("and {} more", findings.len() - MAX_FINDINGS));
    }
    parts.join("; ")
}

/// What `/metrics` says about the rounds since the manager started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PreflightStats {
    pub passed: u64,
    pub failed: u64,
    /// The last round's findings while its network stays refused.
    pub findings: Vec<Finding>,
}

/// A failed round the manager remembers, so it neither probes again at
/// once nor forgets why the network was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRound {
    pub round: String,
    pub at: Timestamp,
    pub message: String,
}

/// What the rollout does about the pre-flight in this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Create the round's pods on these nodes.
    Start { nodes: Vec<String> },
    /// Probes are out; say so.
    Wait { message: String },
    /// The round passed: patch the DaemonSet, then delete the pods.
    Passed { message: String },
    /// The round failed: delete its pods, remember and report it.
    Failed {
        message: String,
        findings: Vec<Finding>,
    },
    /// A recent failure of this round stands until `retry_after`.
    Hold { message: String },
    /// No agent runs anywhere: nothing to probe, and nothing to prove.
    NoNodes,
}

/// Decide the pre-flight step for the round `round` (the desired network's
/// hash) over the nodes the agents run on.
pub fn step(
    round: &str,
    nodes: &[String],
    pods: &[ProbePodView],
    last_failure: Option<&FailedRound>,
    settings: &PreflightSettings,
    now: Timestamp,
) -> Step {
    if nodes.is_empty() {
        return Step::NoNodes;
    }
    let mine: Vec<ProbePodView> = pods
        .iter()
        .filter(|p| p.round == round && !p.deleting)
        .cloned()
        .collect();
    if mine.is_empty() {
        if let Some(f) = last_failure.filter(|f| f.round == round) {
            if now.duration_since(f.at).unsigned_abs() < settings.retry_after {
                return Step::Hold {
                    message: f.message.clone(),
                };
            }
        }
        if pods.iter().any(|p| p.round == round) {
            // The last round's pods are on their way out (their addresses
            // with them): wait rather than start pods that collide with
            // their names.
            return Step::Wait {
                message: "removing the previous probe pods".into(),
            };
        }
        return Step::Start {
            nodes: nodes.to_vec(),
        };
    }
    let started = mine.iter().filter_map(|p| p.created).min().unwrap_or(now);
    let deadline_passed = now.duration_since(started).unsigned_abs() >= settings.round_deadline;
    match verdict(nodes, &mine, deadline_passed) {
        RoundVerdict::Running { reported, total } => Step::Wait {
            message: format!("{reported} of {total} probes reported"),
        },
        RoundVerdict::Passed { nodes } => Step::Passed {
            message: format!(
                "passed on {nodes} nodes ({} pairs: full-size frames and TLS handshakes)",
                nodes * nodes.saturating_sub(1) / 2
            ),
        },
        RoundVerdict::Failed(findings) => Step::Failed {
            message: describe_findings(&findings),
            findings,
        },
    }
}

/// The probe pod of round `round` for `node`, made from the agent
/// DaemonSet's pod template: the agent's image, ServiceAccount,
/// tolerations and certificate volumes, so the probe proves what the
/// agents will have. Its labels are not the DaemonSet's selector (the
/// DaemonSet controller would adopt it), and it never restarts.
pub fn probe_pod(
    agents: &DaemonSet,
    node: &str,
    round: &str,
    networks_annotation: &str,
    expect: usize,
    probe_deadline: Duration,
) -> Pod {
    let namespace = agents.metadata.namespace.clone().unwrap_or_default();
    let template = agents
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let tspec = template.spec.unwrap_or_default();
    let agent = tspec
        .containers
        .iter()
        .find(|c| c.name == "agent")
        .or_else(|| tspec.containers.first())
        .cloned()
        .unwrap_or_default();
    // The agent's certificate flags, as given (`--flag=value` or `--flag
    // value`), so the probe asks for and trusts the same certificates.
    const CERT_FLAGS: [&str; 4] = [
        "--cert-source",
        "--cert-dir",
        "--ca-bundle",
        "--cert-lifetime-seconds",
    ];
    let agent_args = agent.args.clone().unwrap_or_default();
    let mut cert_args = Vec::new();
    let mut it = agent_args.iter().peekable();
    while let Some(a) = it.next() {
        let flag = a.split('=').next().unwrap_or_default();
        if CERT_FLAGS.contains(&flag) {
            cert_args.push(a.clone());
            if !a.contains('=') {
                if let Some(v) = it.next() {
                    cert_args.push(v.clone());
                }
            }
        }
    }
    let mount_paths: Vec<&str> = cert_args
        .iter()
        .filter_map(|a| a.split_once('=').map(|(_, v)| v))
        .collect();
    let mounts: Vec<_> = agent
        .volume_mounts
        .iter()
        .flatten()
        .filter(|m| {
            mount_paths
                .iter()
                .any(|p| p.starts_with(m.mount_path.as_str()))
        })
        .cloned()
        .collect();
    let volumes: Vec<_> = tspec
        .volumes
        .iter()
        .flatten()
        .filter(|v| mounts.iter().any(|m| m.name == v.name))
        .cloned()
        .collect();
    let mut args = vec![
        "probe".to_owned(),
        "--node=$(NODE_NAME)".to_owned(),
        "--namespace=$(POD_NAMESPACE)".to_owned(),
        format!("--round={round}"),
        format!("--expect={expect}"),
        format!("--deadline-seconds={}", probe_deadline.as_secs()),
    ];
    args.extend(cert_args);
    let field_env = |name: &str, path: &str| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let owner = agents.metadata.uid.clone().map(|uid| OwnerReference {
        api_version: "apps/v1".into(),
        kind: "DaemonSet".into(),
        name: agents.metadata.name.clone().unwrap_or_default(),
        uid,
        ..Default::default()
    });
    Pod {
        metadata: ObjectMeta {
            name: Some(probe_pod_name(node, round)),
            namespace: Some(namespace),
            labels: Some(BTreeMap::from([
                (ROUND_LABEL.to_owned(), round.to_owned()),
                ("app.kubernetes.io/part-of".to_owned(), "mignet".to_owned()),
                (
                    "app.kubernetes.io/name".to_owned(),
                    "mignet-probe".to_owned(),
                ),
            ])),
            annotations: Some(BTreeMap::from([(
                super::decide::NETWORKS_ANNOTATION.to_owned(),
                networks_annotation.to_owned(),
            )])),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(PodSpec {
            node_name: Some(node.to_owned()),
            restart_policy: Some("Never".into()),
            service_account_name: tspec.service_account_name.clone(),
            tolerations: tspec.tolerations.clone(),
            priority_class_name: tspec.priority_class_name.clone(),
            termination_grace_period_seconds: Some(5),
            volumes: (!volumes.is_empty()).then_some(volumes),
            containers: vec![Container {
                name: PROBE_CONTAINER.to_owned(),
                image: agent.image.clone(),
                image_pull_policy: agent.image_pull_policy.clone(),
                command: agent.command.clone(),
                args: Some(args),
                env: Some(vec![
                    field_env("NODE_NAME", "spec.nodeName"),
                    field_env("POD_NAMESPACE", "metadata.namespace"),
                    EnvVar {
                        name: "RUST_LOG".into(),
                        value: Some("info".into()),
                        ..Default::default()
                    },
                ]),
                volume_mounts: (!mounts.is_empty()).then_some(mounts),
                resources: agent.resources.clone(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    }
}

/// `mignet-probe-<node>-<round prefix>`, cut to a DNS label.
pub fn probe_pod_name(node: &str, round: &str) -> String {
    let short = &round[..round.len().min(8)];
    let mut node = node.to_owned();
    let room = 63 - "mignet-probe--".len() - short.len();
    if node.len() > room {
        node.truncate(room);
        while node.ends_with('-') || node.ends_with('.') {
            node.pop();
        }
    }
    format!("mignet-probe-{}-{short}", node.replace('.', "-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_round_trips_and_fits_a_termination_message() {
        let r = ProbeReport {
            node: "node1".into(),
            address: Some("10.200.5.1".into()),
            mtu: Some(1500),
            own_failure: None,
            peers: (0..40)
                .map(|i| PeerResult {
                    node: format!("node{i}"),
                    failure: Some(Failure {
                        reason: FailureReason::Mtu,
                        detail: "x".repeat(200),
                    }),
                })
                .collect(),
        };
        let m = r.to_message();
        assert!(m.len() <= REPORT_MAX_BYTES, "{}", m.len());
        let back = ProbeReport::from_message(&m).unwrap();
        assert_eq!(back.peers.len(), 40);
        assert_eq!(
            back.peers[3].failure.as_ref().unwrap().reason,
            FailureReason::Mtu
        );
        let small = ProbeReport {
            peers: vec![PeerResult {
                node: "node2".into(),
                failure: None,
            }],
            ..r
        };
        assert_eq!(
            small.to_message(),
            r#"{"node":"node1","address":"10.200.5.1","mtu":1500,"peers":[{"node":"node2"}]}"#
        );
    }

    fn nodes() -> Vec<String> {
        ["node1", "node2", "node3"].map(String::from).to_vec()
    }

    fn ended(node: &str, report: &ProbeReport) -> ProbePodView {
        ProbePodView {
            name: format!("mignet-probe-{node}-abc"),
            node: node.into(),
            round: "abc".into(),
            created: Some(Timestamp::UNIX_EPOCH),
            state: ProbeState::Ended {
                exit_code: 0,
                message: report.to_message(),
            },
            deleting: false,
        }
    }

    fn report(node: &str, failing: &[(&str, FailureReason)]) -> ProbeReport {
        ProbeReport {
            node: node.into(),
            address: Some("10.200.5.9".into()),
            mtu: Some(1500),
            own_failure: None,
            peers: nodes()
                .into_iter()
                .filter(|n| n != node)
                .map(|n| PeerResult {
                    failure: failing.iter().find(|(f, _)| *f == n).map(|(_, r)| Failure {
                        reason: *r,
                        detail: format!("seen from {node}"),
                    }),
                    node: n,
                })
                .collect(),
        }
    }

    #[test]
    fn every_pair_passing_passes_and_one_missing_report_waits() {
        let all: Vec<_> = nodes().iter().map(|n| ended(n, &report(n, &[]))).collect();
        assert_eq!(
            verdict(&nodes(), &all, false),
            RoundVerdict::Passed { nodes: 3 }
        );
        let mut two = all.clone();
        two[2].state = ProbeState::Running;
        assert_eq!(
            verdict(&nodes(), &two, false),
            RoundVerdict::Running {
                reported: 2,
                total: 3
            }
        );
        // At the deadline the silent one fails the round, by name.
        let RoundVerdict::Failed(f) = verdict(&nodes(), &two, true) else {
            panic!()
        };
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].node, "node3");
        assert_eq!(f[0].failure.reason, FailureReason::NotStarted);
    }

    #[test]
    fn a_pair_failing_both_ways_is_named_once_and_a_node_failure_hides_its_pairs() {
        use FailureReason::*;
        let pods = vec![
            ended("node1", &report("node1", &[("node3", Mtu)])),
            ended("node2", &report("node2", &[("node3", Unreachable)])),
            ended(
                "node3",
                &report("node3", &[("node1", Mtu), ("node2", Unreachable)]),
            ),
        ];
        let RoundVerdict::Failed(f) = verdict(&nodes(), &pods, false) else {
            panic!()
        };
        let said: Vec<String> = f.iter().map(ToString::to_string).collect();
        assert_eq!(
            said,
            [
                "node1 -> node3: MTU (seen from node1)",
                "node2 -> node3: Unreachable (seen from node2)"
            ]
        );
        // node3 without an address: said once, as itself.
        let mut no_addr = report("node3", &[]);
        no_addr.own_failure = Some(Failure {
            reason: NoAddress,
            detail: "migration0 has no global address".into(),
        });
        no_addr.peers.clear();
        let pods = vec![
            ended("node1", &report("node1", &[("node3", NotStarted)])),
            ended("node2", &report("node2", &[("node3", NotStarted)])),
            ended("node3", &no_addr),
        ];
        let RoundVerdict::Failed(f) = verdict(&nodes(), &pods, false) else {
            panic!()
        };
        assert_eq!(
            describe_findings(&f),
            "node3: NoAddress (migration0 has no global address)"
        );
    }

    #[test]
    fn a_sandbox_that_failed_is_final_and_classified() {
        let mut pods: Vec<_> = nodes().iter().map(|n| ended(n, &report(n, &[]))).collect();
        pods[1].state = ProbeState::Waiting {
            why: Some("plugin type=\"macvlan\" failed (add): master eth9: link not found".into()),
        };
        let RoundVerdict::Failed(f) = verdict(&nodes(), &pods, false) else {
            panic!()
        };
        assert_eq!(f[0].node, "node2");
        assert_eq!(f[0].failure.reason, FailureReason::WrongMaster);
        // A real kubelet's words (the cluster bed): the plugin's part is kept.
        pods[1].state = ProbeState::Waiting {
            why: Some(r#"Failed to create pod sandbox: rpc error: code = Unknown desc = failed to setup network for sandbox "33e1": plugin type="multus" name="multus-cni-network" failed (add): [mignet-system/mignet-probe-node2-ad26d457/f3e1:migration-net-empty]: error adding container to network "migration-net-empty": range exhausted: no free address in ipam.range 10.200.7.0/30 (10.200.7.1 - 10.200.7.2)"#.into()),
        };
        let RoundVerdict::Failed(f) = verdict(&nodes(), &pods, false) else {
            panic!()
        };
        assert_eq!(f[0].failure.reason, FailureReason::NoAddress);
        assert_eq!(
            f[0].failure.detail,
            r#"error adding container to network "migration-net-empty": range exhausted: no free address in ipam.range 10.200.7.0/30 (10.200.7.1 - 10.200.7.2)"#
        );
        // A report that leaves out a good peer is a gap, not a pass.
        let mut short = report("node1", &[]);
        short.peers.pop();
        let pods = vec![
            ended("node1", &short),
            ended("node2", &report("node2", &[])),
            ended("node3", &report("node3", &[])),
        ];
        assert!(matches!(
            verdict(&nodes(), &pods, false),
            RoundVerdict::Failed(_)
        ));
    }

    #[test]
    fn step_starts_holds_after_a_failure_and_retries_later() {
        let s = PreflightSettings::default();
        let t0 = Timestamp::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(
            step("abc", &nodes(), &[], None, &s, t0),
            Step::Start { nodes: nodes() }
        );
        let failed = FailedRound {
            round: "abc".into(),
            at: t0,
            message: "node2: MTU (x)".into(),
        };
        assert!(matches!(
            step(
                "abc",
                &nodes(),
                &[],
                Some(&failed),
                &s,
                t0 + Duration::from_secs(10)
            ),
            Step::Hold { .. }
        ));
        assert!(matches!(
            step("abc", &nodes(), &[], Some(&failed), &s, t0 + s.retry_after),
            Step::Start { .. }
        ));
        // The failed round's pods still going: the refusal stands.
        let mut going = ended("node1", &report("node1", &[]));
        going.deleting = true;
        assert!(matches!(
            step(
                "abc",
                &nodes(),
                &[going.clone()],
                Some(&failed),
                &s,
                t0 + Duration::from_secs(1)
            ),
            Step::Hold { .. }
        ));
        // Past the retry, they must be gone first.
        assert!(matches!(
            step(
                "abc",
                &nodes(),
                &[going],
                Some(&failed),
                &s,
                t0 + s.retry_after
            ),
            Step::Wait { .. }
        ));
        // Another network's failure does not hold this one.
        assert!(matches!(
            step("def", &nodes(), &[], Some(&failed), &s, t0),
            Step::Start { .. }
        ));
        assert_eq!(step("abc", &[], &[], None, &s, t0), Step::NoNodes);
        let all: Vec<_> = nodes().iter().map(|n| ended(n, &report(n, &[]))).collect();
        assert!(matches!(
            step("abc", &nodes(), &all, None, &s, t0),
            Step::Passed { .. }
        ));
        // Pods of another round are not this round's.
        assert!(matches!(
            step("zzz", &nodes(), &all, None, &s, t0),
            Step::Start { .. }
        ));
    }

    #[test]
    fn the_probe_pod_is_the_agents_image_identity_and_certificates_on_one_node() {
        let ds: DaemonSet = serde_yaml::from_str(include_str!("../../../deploy/base/agent.yaml"))
            .expect("deploy/base/agent.yaml");
        let pod = probe_pod(
            &ds,
            "node2",
            "0123456789abcdef",
            "mignet-system/seed@migration0",
            3,
            Duration::from_secs(45),
        );
        assert_eq!(
            pod.metadata.name.as_deref(),
            Some("mignet-probe-node2-01234567")
        );
        assert_eq!(pod.labels()[ROUND_LABEL], "0123456789abcdef");
        // Not the DaemonSet's selector, or its controller would adopt it.
        assert!(
            !pod.labels().contains_key("app.kubernetes.io/name")
                || pod.labels()["app.kubernetes.io/name"] != "mignet-agent"
        );
        assert_eq!(
            pod.annotations()["k8s.v1.cni.cncf.io/networks"],
            "mignet-system/seed@migration0"
        );
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("node2"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
        assert_eq!(spec.service_account_name.as_deref(), Some("mignet-agent"));
        let c = &spec.containers[0];
        assert_eq!(c.image.as_deref(), Some("mignet:dev"));
        let args = c.args.clone().unwrap();
        for want in [
            "probe",
            "--round=0123456789abcdef",
            "--expect=3",
            "--deadline-seconds=45",
            "--cert-source=csr",
            "--cert-dir=/etc/mignet/certs",
            "--ca-bundle=/etc/mignet/ca/ca.crt",
        ] {
            assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
        }
        let mounts: Vec<_> = c
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(mounts, ["certs", "ca-bundle"]);
        let volumes: Vec<_> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, ["certs", "ca-bundle"]);
        assert!(c.security_context.is_none(), "the probe needs no privilege");
    }
}
