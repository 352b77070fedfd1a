//! What the probe's raw observations mean: the failure class of a peer from
//! its small, full-size and TLS attempts ([`classify`]), and the peers'
//! addresses from the round's pods ([`peers_of`]). Pure.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::super::preflight::{Failure, FailureReason};

pub use super::super::decide::NETWORK_STATUS_ANNOTATION;

/// The payload of the small packets: proves reachability, fits any MTU.
pub const SMALL_PAYLOAD: usize = 64;
/// Tries of the full-size packet (each waits [`super::TRY_TIMEOUT`]).
pub const LARGE_TRIES: u32 = 3;

/// The UDP payload that fills an `mtu`-byte IP packet exactly.
pub fn full_payload(mtu: u32, ip: IpAddr) -> usize {
    let headers = if ip.is_ipv4() { 20 + 8 } else { 40 + 8 };
    (mtu as usize).saturating_sub(headers)
}

/// How one series of echo requests of one size ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Udp {
    /// An echo of the right size and nonce came back.
    Echoed,
    /// Nothing came back to `tries` requests over `waited`.
    NoEcho { tries: u32, waited: Duration },
    /// Only ICMP port unreachable came back: the node is there, no probe
    /// serves the port (not yet, or no more).
    Refused { tries: u32, waited: Duration },
    /// The kernel refused to send it without fragmenting (EMSGSIZE: larger
    /// than the interface or the known path MTU).
    TooBig { error: String },
    /// Sending or receiving failed otherwise (no route, host unreachable).
    Error { error: String },
}

/// Everything one probe tried against one peer, in order; `None` = that
/// step never ran (an earlier one failed, or the deadline came first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAttempts {
    /// The peer's `migration0` address from its network-status.
    pub address: Option<IpAddr>,
    pub port: u16,
    /// Our own interface MTU (the full-size packet's size comes from it).
    pub mtu: u32,
    pub small: Option<Udp>,
    pub large: Option<Udp>,
    /// The TLS handshake (with the peer's acknowledgement that it accepted
    /// our certificate): the error chain on failure.
    pub tls: Option<Result<(), String>>,
}

impl PeerAttempts {
    pub fn new(address: Option<IpAddr>, port: u16, mtu: u32) -> Self {
        PeerAttempts {
            address,
            port,
            mtu,
            small: None,
            large: None,
            tls: None,
        }
    }
}

fn failure(reason: FailureReason, detail: String) -> Option<Failure> {
    Some(Failure { reason, detail })
}

/// The failure class of a peer (`None`: every check passed). A later step
/// only counts when the earlier ones passed: a full-size packet lost while
/// small ones are lost too is unreachability, not MTU.
pub fn classify(a: &PeerAttempts) -> Option<Failure> {
    use FailureReason::*;
    let Some(ip) = a.address else {
        return failure(NotStarted, "no probe address published".into());
    };
    let at = mignet_dataplane::listener::format_endpoint(ip, a.port);
    let unfinished = |what: &str| {
        failure(
            NotStarted,
            format!("the deadline passed before the {what} check of {at} ran"),
        )
    };
    match &a.small {
        None => return unfinished("UDP"),
        Some(Udp::Echoed) => {}
        Some(Udp::NoEcho { tries, waited }) => {
            return failure(
                Unreachable,
                format!(
                    "no echo to {tries} {SMALL_PAYLOAD}-byte UDP payloads sent to {at} over {:.1} s",
                    waited.as_secs_f64()
                ),
            )
        }
        Some(Udp::Refused { tries, waited }) => {
            return failure(
                NotStarted,
                format!(
                    "{ip} answers but no probe serves UDP port {}: port unreachable to {tries} tries over {:.1} s",
                    a.port,
                    waited.as_secs_f64()
                ),
            )
        }
        Some(Udp::TooBig { error } | Udp::Error { error }) => {
            return failure(
                Unreachable,
                format!("sending {SMALL_PAYLOAD}-byte UDP payloads to {at}: {error}"),
            )
        }
    }
    let size = full_payload(a.mtu, ip);
    match &a.large {
        None => return unfinished("full-size UDP"),
        Some(Udp::Echoed) => {}
        Some(Udp::NoEcho { tries, .. }) => {
            return failure(
                Mtu,
                format!(
                    "a {size}-byte UDP payload (MTU {}) got no echo in {tries} tries; {SMALL_PAYLOAD}-byte ones did",
                    a.mtu
                ),
            )
        }
        Some(Udp::TooBig { error }) => {
            return failure(
                Mtu,
                format!(
                    "a {size}-byte UDP payload (MTU {}) to {at} could not be sent unfragmented: {error}; {SMALL_PAYLOAD}-byte ones were echoed",
                    a.mtu
                ),
            )
        }
        // The peer was there a moment ago: it stopped serving, whatever
        // the size.
        Some(Udp::Refused { .. }) => {
            return failure(
                NotStarted,
                format!("the probe at {at} stopped serving during the checks"),
            )
        }
        Some(Udp::Error { error }) => {
            return failure(
                Unreachable,
                format!("sending a {size}-byte UDP payload to {at}: {error}"),
            )
        }
    }
    match &a.tls {
        None => unfinished("TLS"),
        Some(Ok(())) => None,
        Some(Err(e)) => failure(Tls, e.clone()),
    }
}

/// The round's peers (every pod of it on another node): node name to its
/// `migration0` address from `k8s.v1.cni.cncf.io/network-status` (`None`
/// while Multus has not published one). Pods without a node are skipped
/// (the manager pins every probe pod to its node).
pub fn peers_of(pods: &[Pod], own_node: &str, interface: &str) -> BTreeMap<String, Option<IpAddr>> {
    let mut peers = BTreeMap::new();
    for p in pods {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) else {
            continue;
        };
        if node == own_node {
            continue;
        }
        let ip = p
            .annotations()
            .get(NETWORK_STATUS_ANNOTATION)
            .and_then(|s| network_status_ip(s, interface));
        // Two pods on one node (an old round's leftover): any address wins.
        let slot = peers.entry(node.to_owned()).or_insert(None);
        if slot.is_none() {
            *slot = ip;
        }
    }
    peers
}

/// The first address of `interface` in a network-status annotation (a JSON
/// list of `{interface, ips: ["10.0.0.2" or "10.0.0.2/24", ...]}`).
pub fn network_status_ip(annotation: &str, interface: &str) -> Option<IpAddr> {
    let v: serde_json::Value = serde_json::from_str(annotation).ok()?;
    v.as_array()?
        .iter()
        .find(|e| e["interface"] == interface)?
        .get("ips")?
        .as_array()?
        .first()?
        .as_str()?
        .split('/')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn each_combination_of_attempts_has_one_class() {
        use FailureReason::*;
        let ip: IpAddr = "10.200.0.2".parse().unwrap();
        let base = PeerAttempts::new(Some(ip), 4790, 9000);
        let no_echo = |tries| Udp::NoEcho {
            tries,
            waited: secs(3),
        };
        let ok = PeerAttempts {
            small: Some(Udp::Echoed),
            large: Some(Udp::Echoed),
            tls: Some(Ok(())),
            ..base.clone()
        };
        /// Name, attempts, expected class and words of the detail.
        type Case = (
            &'static str,
            PeerAttempts,
            Option<(FailureReason, &'static str)>,
        );
        let cases: Vec<Case> = vec![
            ("all passed", ok.clone(), None),
            (
                "never published",
                PeerAttempts::new(None, 4790, 9000),
                Some((NotStarted, "no probe address published")),
            ),
            (
                "deadline before anything",
                base.clone(),
                Some((NotStarted, "before the UDP check of 10.200.0.2:4790")),
            ),
            (
                "small lost",
                PeerAttempts {
                    small: Some(no_echo(10)),
                    ..base.clone()
                },
                Some((Unreachable, "no echo to 10 64-byte UDP payloads")),
            ),
            (
                "small lost, full-size too (not MTU)",
                PeerAttempts {
                    small: Some(no_echo(10)),
                    large: Some(no_echo(3)),
                    ..base.clone()
                },
                Some((Unreachable, "64-byte")),
            ),
            (
                "port unreachable",
                PeerAttempts {
                    small: Some(Udp::Refused {
                        tries: 4,
                        waited: secs(1),
                    }),
                    ..base.clone()
                },
                Some((NotStarted, "no probe serves UDP port 4790")),
            ),
            (
                "no route",
                PeerAttempts {
                    small: Some(Udp::Error {
                        error: "Network is unreachable".into(),
                    }),
                    ..base.clone()
                },
                Some((Unreachable, "Network is unreachable")),
            ),
            (
                "full-size lost",
                PeerAttempts {
                    small: Some(Udp::Echoed),
                    large: Some(no_echo(3)),
                    ..base.clone()
                },
                Some((
                    Mtu,
                    "a 8972-byte UDP payload (MTU 9000) got no echo in 3 tries; 64-byte ones did",
                )),
            ),
            (
                "full-size EMSGSIZE",
                PeerAttempts {
                    small: Some(Udp::Echoed),
                    large: Some(Udp::TooBig {
                        error: "Message too long".into(),
                    }),
                    ..base.clone()
                },
                Some((Mtu, "could not be sent unfragmented: Message too long")),
            ),
            (
                "peer left between the sizes",
                PeerAttempts {
                    small: Some(Udp::Echoed),
                    large: Some(Udp::Refused {
                        tries: 1,
                        waited: secs(0),
                    }),
                    ..base.clone()
                },
                Some((NotStarted, "stopped serving")),
            ),
            (
                "deadline before full-size",
                PeerAttempts {
                    small: Some(Udp::Echoed),
                    ..base.clone()
                },
                Some((NotStarted, "full-size UDP check")),
            ),
            (
                "handshake refused",
                PeerAttempts {
                    tls: Some(Err("TLS handshake with 10.200.0.2:4790: unknown CA".into())),
                    ..ok.clone()
                },
                Some((Tls, "unknown CA")),
            ),
            (
                "deadline before TLS",
                PeerAttempts { tls: None, ..ok },
                Some((NotStarted, "TLS check")),
            ),
        ];
        for (name, attempts, want) in cases {
            let got = classify(&attempts);
            match (got, want) {
                (None, None) => {}
                (Some(f), Some((reason, words))) => {
                    assert_eq!(f.reason, reason, "{name}: {}", f.detail);
                    assert!(f.detail.contains(words), "{name}: {:?}", f.detail);
                }
                (got, want) => panic!("{name}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn full_size_payload_fills_the_mtu_in_both_families() {
        assert_eq!(full_payload(9000, "10.0.0.1".parse().unwrap()), 8972);
        assert_eq!(full_payload(1500, "fd00::1".parse().unwrap()), 1452);
        assert_eq!(full_payload(10, "10.0.0.1".parse().unwrap()), 0);
    }

    fn pod(name: &str, node: Option<&str>, status: Option<&str>) -> Pod {
        let mut p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "mignet-system"},
            "spec": {"containers": []},
        }))
        .unwrap();
        p.spec.as_mut().unwrap().node_name = node.map(str::to_owned);
        if let Some(s) = status {
            p.annotations_mut()
                .insert(NETWORK_STATUS_ANNOTATION.into(), s.into());
        }
        p
    }

    #[test]
    fn peers_come_from_other_nodes_network_status() {
        let status = |ip: &str| {
            format!(
                r#"[{{"name":"cbr0","interface":"eth0","ips":["10.244.1.2"]}},{{"name":"mignet-system/mig","interface":"migration0","ips":["{ip}"]}}]"#
            )
        };
        let pods = vec![
            pod("p1", Some("node1"), Some(&status("10.200.0.1"))),
            pod("p2", Some("node2"), Some(&status("10.200.0.2/24"))),
            pod("p3", Some("node3"), None),
            pod(
                "p4",
                Some("node4"),
                Some(r#"[{"interface":"eth0","ips":["10.244.4.2"]}]"#),
            ),
            pod("p5", None, Some(&status("10.200.0.5"))),
            pod("p6", Some("node6"), Some("not json")),
        ];
        let got = peers_of(&pods, "node1", "migration0");
        let want: BTreeMap<String, Option<IpAddr>> = [
            ("node2", Some("10.200.0.2".parse().unwrap())),
            ("node3", None),
            ("node4", None),
            ("node6", None),
        ]
        .into_iter()
        .map(|(n, ip)| (n.to_owned(), ip))
        .collect();
        assert_eq!(got, want);
    }
}
