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
}
