//! Where the target listens: migration IP discovery on a real `migration0` in a
//! namespace, and the listener not answering on the pod-network address.

mod proxy_support;

use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use mignet_dataplane::listener::MigrationListener;
use mignet_dataplane::migration_ip::{
    discover, Family, MigrationIpError, MigrationNetwork, NotReady, Origin, SkipReason,
};
use proxy_support::{veth, Netns};

const POD_IP: &str = "10.88.0.2";
const MIG_IP: &str = "10.77.0.2";

fn dedicated(prefer: Option<Family>) -> MigrationNetwork {
    MigrationNetwork::Dedicated {
        network: "default/migration-net".into(),
        interface: "migration0".into(),
        prefer,
    }
}

/// A node namespace with `eth0` on the pod network and `migration0` on the
/// migration network, each a veth to a peer namespace.
struct Node {
    node: Netns,
    peer: Netns,
}

fn node() -> Node {
    let node = Netns::new("mglst-n");
    let peer = Netns::new("mglst-p");
    veth(
        &peer,
        "pod-peer",
        "10.88.0.1/24",
        &node,
        "eth0",
        &format!("{POD_IP}/24"),
    );
    veth(
        &peer,
        "mig-peer",
        "10.77.0.1/24",
        &node,
        "migration0",
        &format!("{MIG_IP}/24"),
    );
    Node { node, peer }
}

fn discover_in(ns: &Netns, config: MigrationNetwork) -> Result<IpAddr, MigrationIpError> {
    ns.block_on(move || async move {
        discover(&config, POD_IP.parse().unwrap())
            .await
            .map(|m| m.ip)
    })
}

#[test]
fn listener_binds_migration_ip_and_ignores_the_pod_address() {
    let n = node();
    let found = n.node.block_on(|| async {
        discover(&dedicated(None), POD_IP.parse().unwrap())
            .await
            .unwrap()
    });
    assert_eq!(found.ip, MIG_IP.parse::<IpAddr>().unwrap());
    assert_eq!(found.origin, Origin::Interface("migration0".into()));

    let ip = found.ip;
    let listener = n.node.run(move || MigrationListener::bind(ip).unwrap());
    let port = listener.local_addr().port();
    assert_eq!(listener.local_addr().ip(), ip);
    assert_eq!(listener.published(), format!("{MIG_IP}:{port}"));

    // From the peer namespace: the migration address answers, the pod address
    // of the same node does not (RST: connection refused).
    let (mig, pod) = n.peer.run(move || {
        let connect = |ip: &str| {
            TcpStream::connect_timeout(
                &SocketAddr::new(ip.parse().unwrap(), port),
                Duration::from_secs(3),
            )
        };
        (connect(MIG_IP).map(|_| ()), connect(POD_IP).map(|_| ()))
    });
    mig.expect("migration address must answer");
    let err = pod.expect_err("pod-network address answered");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    drop(listener);
}

#[test]
fn ipv6_preference_and_brackets() {
    let n = node();
    n.node
        .ip(&["addr", "add", "fd00:77::2/64", "dev", "migration0", "nodad"]);
    let v6 = discover_in(&n.node, dedicated(Some(Family::V6))).unwrap();
    assert_eq!(v6, "fd00:77::2".parse::<IpAddr>().unwrap());
    let listener = n.node.run(move || MigrationListener::bind(v6).unwrap());
    let port = listener.local_addr().port();
    assert_eq!(listener.published(), format!("[fd00:77::2]:{port}"));
    // Reachable over v6 from the peer; the node's v4 addresses are not listening.
    n.peer
        .ip(&["addr", "add", "fd00:77::1/64", "dev", "mig-peer", "nodad"]);
    let (v6_ok, v4_refused) = n.peer.run(move || {
        let connect = |ip: &str| {
            TcpStream::connect_timeout(
                &SocketAddr::new(ip.parse().unwrap(), port),
                Duration::from_secs(3),
            )
        };
        (
            connect("fd00:77::2").map(|_| ()),
            connect(MIG_IP).map(|_| ()),
        )
    });
    v6_ok.expect("v6 migration address must answer");
    assert_eq!(
        v4_refused.expect_err("v4 address answered").kind(),
        ErrorKind::ConnectionRefused
    );
    let v4 = discover_in(&n.node, dedicated(Some(Family::V4))).unwrap();
    assert_eq!(v4, MIG_IP.parse::<IpAddr>().unwrap());
}

#[test]
fn without_migration0_the_agent_is_not_ready_and_never_uses_the_pod_ip() {
    let ns = Netns::new("mglst-x");
    let peer = Netns::new("mglst-q");
    veth(
        &peer,
        "pod-peer",
        "10.88.0.1/24",
        &ns,
        "eth0",
        &format!("{POD_IP}/24"),
    );
    match discover_in(&ns, dedicated(None)) {
        Err(MigrationIpError::NotReady(NotReady::InterfaceMissing { interface, .. })) => {
            assert_eq!(interface, "migration0")
        }
        other => panic!("expected InterfaceMissing, got {other:?}"),
    }
    // No migration network configured: the pod IP is the documented default.
    assert_eq!(
        discover_in(&ns, MigrationNetwork::PodNetwork).unwrap(),
        POD_IP.parse::<IpAddr>().unwrap()
    );
}

#[test]
fn addressless_or_down_migration0_is_not_ready_with_reason() {
    let ns = Netns::new("mglst-y");
    let peer = Netns::new("mglst-r");
    peer.ip(&[
        "link",
        "add",
        "mig-peer",
        "type",
        "veth",
        "peer",
        "name",
        "migration0",
        "netns",
        &ns.name,
    ]);
    peer.ip(&["link", "set", "mig-peer", "up"]);

    // Down: reported as such.
    let err = discover_in(&ns, dedicated(None)).unwrap_err();
    assert!(
        matches!(
            err,
            MigrationIpError::NotReady(NotReady::InterfaceDown { .. })
        ),
        "{err:?}"
    );

    // Up with only the kernel's IPv6 link-local address (or none yet): no global address.
    ns.ip(&["link", "set", "migration0", "up"]);
    // Give IPv6 a moment to add fe80::/64 so the reason lists it.
    std::thread::sleep(Duration::from_millis(200));
    let err = discover_in(&ns, dedicated(None)).unwrap_err();
    match &err {
        MigrationIpError::NotReady(NotReady::NoGlobalAddress { skipped, .. }) => {
            assert!(
                skipped
                    .iter()
                    .all(|(_, why)| matches!(why, SkipReason::LinkLocal | SkipReason::Tentative)),
                "{skipped:?}"
            );
        }
        other => panic!("expected NoGlobalAddress, got {other:?}"),
    }
    assert!(err.to_string().contains("migration0"), "{err}");

    // An address added later makes it ready (what the agent's readiness re-check sees).
    ns.ip(&["addr", "add", "10.77.9.2/24", "dev", "migration0"]);
    assert_eq!(
        discover_in(&ns, dedicated(None)).unwrap(),
        "10.77.9.2".parse::<IpAddr>().unwrap()
    );
}

#[test]
fn migration_connections_get_keepalive_user_timeout_and_nodelay() {
    use mignet_dataplane::proxy::{tune_socket, ProxyOptions};
    let n = node();
    let opts = ProxyOptions::default();
    let o = opts.clone();
    let got = n.node.block_on(move || async move {
        let listener = MigrationListener::bind(MIG_IP.parse().unwrap())
            .unwrap()
            .into_tokio()
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (server, _) = server.unwrap();
        let _client = client.unwrap();
        tune_socket(&server, &o).unwrap();
        let s = socket2::SockRef::from(&server);
        (
            s.tcp_nodelay().unwrap(),
            s.keepalive().unwrap(),
            s.tcp_keepalive_time().unwrap(),
            s.tcp_keepalive_interval().unwrap(),
            s.tcp_keepalive_retries().unwrap(),
            s.tcp_user_timeout().unwrap(),
        )
    });
    assert_eq!(
        got,
        (
            true,
            true,
            opts.keepalive_idle,
            opts.keepalive_interval,
            opts.keepalive_retries,
            Some(opts.user_timeout)
        )
    );
}
