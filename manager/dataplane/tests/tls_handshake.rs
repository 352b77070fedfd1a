//! Who gets through the target side of the proxy. Each test runs in its own
//! network namespace (loopback only); the "QEMU" backend is a unix socket that
//! counts connections, so "refused before a byte reaches QEMU" is checked as
//! "the backend saw no connection at all".

mod proxy_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mignet_dataplane::certs::{self, IssuedCert, Role};
use mignet_dataplane::listener::MigrationListener;
use mignet_dataplane::proxy::{
    self, HandshakeFailures, MigrationCounters, ProxyOptions, ProxyTask,
};
use mignet_dataplane::tls::{ReloadingTls, TlsPaths, TlsSettings};
use proxy_support::{test_client, Netns, Pki, TempDir, TrustAnything};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};
use tokio_rustls::TlsConnector;

struct Target {
    addr: SocketAddr,
    tls: Arc<ReloadingTls>,
    backend_accepts: Arc<AtomicU64>,
    task: ProxyTask,
    failures: Arc<HandshakeFailures>,
}

impl Target {
    /// Failed handshakes counted for `reason` (the metric's label).
    fn failed(&self, reason: &str) -> u64 {
        self.failures
            .snapshot()
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

/// A unix "QEMU" that echoes each connection and counts them.
fn spawn_backend(path: &Path) -> Arc<AtomicU64> {
    let listener = UnixListener::bind(path).unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    count
}

fn start_target(dir: &Path, sock: PathBuf, settings: TlsSettings) -> Target {
    let tls = ReloadingTls::load(TlsPaths::in_dir(dir), settings).unwrap();
    let backend_accepts = spawn_backend(&sock);
    let listener = MigrationListener::bind(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
    let addr = listener.local_addr();
    let failures = Arc::new(HandshakeFailures::default());
    let opts = ProxyOptions {
        handshake_timeout: Duration::from_secs(2),
        handshake_failures: Some(failures.clone()),
        ..Default::default()
    };
    let task = proxy::spawn_target(
        listener.into_tokio().unwrap(),
        sock,
        tls.clone(),
        Arc::new(MigrationCounters::default()),
        opts,
    );
    Target {
        addr,
        tls,
        backend_accepts,
        task,
        failures,
    }
}

/// Handshake, send a line, half-close, read the echo. `Err` with the reason on
/// any failure (client-side handshake error, alert on read, empty echo).
async fn attempt(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    seq: u32,
) -> Result<ProtocolVersion, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut s = TlsConnector::from(config)
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let version = s.get_ref().1.protocol_version().unwrap();
    // In TLS 1.3 the client finishes first; a refusal of its certificate shows
    // up as an alert on the first read.
    let io = async {
        s.write_all(&proxy::stream_header(seq)).await?;
        s.write_all(b"migrate\n").await?;
        s.shutdown().await?;
        let mut got = Vec::new();
        s.read_to_end(&mut got).await?;
        Ok::<_, std::io::Error>(got)
    };
    match tokio::time::timeout(Duration::from_secs(5), io).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(e)) => Err(format!("after handshake: {e}")),
        Ok(Ok(got)) if got == b"migrate\n" => Ok(version),
        Ok(Ok(got)) => Err(format!("echo was {got:?}")),
    }
}

async fn wait_refused(t: &Target, n: u64) {
    for _ in 0..200 {
        if t.task.counters().refused.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "target refused {} connections, expected {n}",
        t.task.counters().refused.load(Ordering::SeqCst)
    );
}

const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];

#[test]
fn only_agents_of_the_cluster_ca_reach_qemu() {
    let ns = Netns::new("mgtls-");
    ns.block_on(|| async {
        let tmp = TempDir::new("mgtls-hs");
        let pki = Pki::new("cluster CA");
        let dir = pki.agent_dir(tmp.path(), "node-b");
        let t = start_target(&dir, tmp.path().join("qemu.sock"), TlsSettings::default());

        // Plaintext, as QEMU itself would speak.
        let mut plain = TcpStream::connect(t.addr).await.unwrap();
        plain.write_all(b"QEVM\x00\x00\x00\x03").await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut sink)).await;
        wait_refused(&t, 1).await;
        // Each refusal is counted for /metrics under its reason.
        assert_eq!(
            t.failed("protocol"),
            1,
            "plaintext: {:?}",
            t.failures.snapshot()
        );

        let any = Arc::new(TrustAnything::default());
        let no_cert = attempt(t.addr, test_client(None, TLS13, any.clone()), 0).await;
        assert!(no_cert.is_err(), "client without certificate got through");
        wait_refused(&t, 2).await;
        assert_eq!(
            t.failed("bad_certificate"),
            1,
            "no certificate: {:?}",
            t.failures.snapshot()
        );

        let foreign = Pki::new("foreign CA").issue(Role::Agent, "node-x");
        let r = attempt(t.addr, test_client(Some(&foreign), TLS13, any.clone()), 0).await;
        assert!(r.is_err(), "foreign-CA agent got through");
        wait_refused(&t, 3).await;
        assert_eq!(
            t.failed("unknown_ca"),
            1,
            "foreign CA: {:?}",
            t.failures.snapshot()
        );

        for role in [Role::Manager, Role::Console] {
            let wrong = pki.issue(role, "someone");
            let r = attempt(t.addr, test_client(Some(&wrong), TLS13, any.clone()), 0).await;
            assert!(r.is_err(), "{role} certificate got through");
        }
        wait_refused(&t, 5).await;
        assert_eq!(
            t.failed("bad_certificate"),
            3,
            "wrong roles: {:?}",
            t.failures.snapshot()
        );

        assert_eq!(
            t.backend_accepts.load(Ordering::SeqCst),
            0,
            "a refused peer reached the QEMU socket"
        );
        assert_eq!(t.task.counters().connections.load(Ordering::SeqCst), 0);

        // And the control: a cluster agent does get through, over TLS 1.3.
        let good = pki.issue(Role::Agent, "node-a");
        let v = attempt(t.addr, test_client(Some(&good), TLS13, any.clone()), 0)
            .await
            .unwrap();
        assert_eq!(v, ProtocolVersion::TLSv1_3);
        assert_eq!(t.backend_accepts.load(Ordering::SeqCst), 1);
        // The server presented its agent certificate.
        let seen = any.seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!(
            certs::identities(&seen).unwrap()[0].name,
            "node-b".to_string()
        );
    });
}

#[test]
fn stalled_handshake_times_out_without_reaching_qemu() {
    let ns = Netns::new("mgtls-");
    ns.block_on(|| async {
        let tmp = TempDir::new("mgtls-hs");
        let pki = Pki::new("cluster CA");
        let dir = pki.agent_dir(tmp.path(), "node-b");
        let t = start_target(&dir, tmp.path().join("qemu.sock"), TlsSettings::default());
        // Connect and say nothing: the 2 s handshake timeout must drop us.
        let mut idle = TcpStream::connect(t.addr).await.unwrap();
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "expected the server to close, got {r:?}"
        );
        wait_refused(&t, 1).await;
        assert_eq!(t.failed("timeout"), 1, "{:?}", t.failures.snapshot());
        assert_eq!(t.backend_accepts.load(Ordering::SeqCst), 0);
    });
}

#[test]
fn tls12_refused_by_default_and_accepted_when_allowed() {
    let ns = Netns::new("mgtls-");
    ns.block_on(|| async {
        let tmp = TempDir::new("mgtls-hs");
        let pki = Pki::new("cluster CA");
        let dir = pki.agent_dir(tmp.path(), "node-b");
        let client_cert = pki.issue(Role::Agent, "node-a");
        let any = Arc::new(TrustAnything::default());

        let strict = start_target(&dir, tmp.path().join("q1.sock"), TlsSettings::default());
        let r = attempt(
            strict.addr,
            test_client(Some(&client_cert), TLS12, any.clone()),
            0,
        )
        .await;
        assert!(r.is_err(), "TLS 1.2 accepted by default");
        wait_refused(&strict, 1).await;
        assert_eq!(strict.backend_accepts.load(Ordering::SeqCst), 0);

        let lenient = start_target(
            &dir,
            tmp.path().join("q2.sock"),
            TlsSettings {
                allow_tls12: true,
                ..Default::default()
            },
        );
        let v = attempt(
            lenient.addr,
            test_client(Some(&client_cert), TLS12, any.clone()),
            0,
        )
        .await
        .unwrap();
        assert_eq!(v, ProtocolVersion::TLSv1_2);
        // Role checks still apply under 1.2.
        let wrong = pki.issue(Role::Manager, "m");
        assert!(
            attempt(lenient.addr, test_client(Some(&wrong), TLS12, any), 1)
                .await
                .is_err()
        );
        assert_eq!(lenient.backend_accepts.load(Ordering::SeqCst), 1);
    });
}

#[test]
fn rotated_certificates_apply_to_new_handshakes_without_restart() {
    let ns = Netns::new("mgtls-");
    ns.block_on(|| async {
        let tmp = TempDir::new("mgtls-hs");
        let old = Pki::new("CA one");
        let dir = old.agent_dir(tmp.path(), "node-b");
        let t = start_target(&dir, tmp.path().join("qemu.sock"), TlsSettings::default());
        let _watch = t.tls.spawn_watcher(Duration::from_millis(50));
        let any = Arc::new(TrustAnything::default());

        let old_client = old.issue(Role::Agent, "node-a");
        attempt(
            t.addr,
            test_client(Some(&old_client), TLS13, any.clone()),
            0,
        )
        .await
        .unwrap();

        // A live connection opened before the rotation keeps working after it.
        let tcp = TcpStream::connect(t.addr).await.unwrap();
        let mut live = TlsConnector::from(test_client(Some(&old_client), TLS13, any.clone()))
            .connect(ServerName::IpAddress(t.addr.ip().into()), tcp)
            .await
            .unwrap();
        live.write_all(&proxy::stream_header(1)).await.unwrap();
        live.write_all(b"ping").await.unwrap();
        let mut four = [0u8; 4];
        live.read_exact(&mut four).await.unwrap();

        // Rotate: new CA, new certificate for this node, files replaced in place.
        let new = Pki::new("CA two");
        let new_leaf: IssuedCert = new.issue(Role::Agent, "node-b");
        let before = t.tls.current();
        certs::write_tls_dir(&dir, new.ca.cert_pem(), &new_leaf).unwrap();
        let mut reloaded = false;
        for _ in 0..200 {
            if !Arc::ptr_eq(&before, &t.tls.current()) {
                reloaded = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(reloaded, "watcher did not pick up the new files");

        // The old CA's agents are now refused ...
        let refused_before = t.task.counters().refused.load(Ordering::SeqCst);
        assert!(
            attempt(
                t.addr,
                test_client(Some(&old_client), TLS13, any.clone()),
                2
            )
            .await
            .is_err(),
            "old CA still accepted after rotation"
        );
        wait_refused(&t, refused_before + 1).await;

        // ... the new CA's are accepted, and the server presents the new certificate.
        let new_client = new.issue(Role::Agent, "node-a");
        attempt(
            t.addr,
            test_client(Some(&new_client), TLS13, any.clone()),
            2,
        )
        .await
        .unwrap();
        let seen = any.seen.lock().unwrap().last().cloned().unwrap();
        let expected = proxy_support::chain_and_key(&new_leaf).0.remove(0);
        assert_eq!(seen, expected, "server still presents the old certificate");

        live.write_all(b"pong").await.unwrap();
        live.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"pong");
        assert_eq!(t.backend_accepts.load(Ordering::SeqCst), 3);
    });
}

/// QEMU < 8.0 takes the first connection as its main channel: connections must
/// reach it in the order the source accepted them from QEMU, whatever order
/// their TLS handshakes finish in.
#[test]
fn target_hands_connections_to_qemu_in_source_order() {
    let ns = Netns::new("mgtls-");
    ns.block_on(|| async {
        let tmp = TempDir::new("mgtls-hs");
        let pki = Pki::new("cluster CA");
        let dir = pki.agent_dir(tmp.path(), "node-b");
        let sock = tmp.path().join("qemu.sock");
        let tls = ReloadingTls::load(TlsPaths::in_dir(&dir), TlsSettings::default()).unwrap();
        // Backend records the first byte of each connection in accept order.
        let backend = UnixListener::bind(&sock).unwrap();
        let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut keep = Vec::new();
            loop {
                let (mut s, _) = backend.accept().await.unwrap();
                let mut tag = [0u8; 1];
                s.read_exact(&mut tag).await.unwrap();
                order_tx.send(tag[0]).unwrap();
                keep.push(s);
            }
        });
        let listener = MigrationListener::bind(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap();
        let addr = listener.local_addr();
        let _task = proxy::spawn_target(
            listener.into_tokio().unwrap(),
            sock,
            tls,
            Arc::new(MigrationCounters::default()),
            ProxyOptions::default(),
        );
        let cert = pki.issue(Role::Agent, "node-a");
        let any = Arc::new(TrustAnything::default());
        // Handshakes complete in the order 2, 1, 0.
        let mut streams = Vec::new();
        for seq in [2u32, 1, 0] {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut s = TlsConnector::from(test_client(Some(&cert), TLS13, any.clone()))
                .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                .await
                .unwrap();
            s.write_all(&proxy::stream_header(seq)).await.unwrap();
            s.write_all(&[seq as u8]).await.unwrap();
            s.flush().await.unwrap();
            streams.push(s);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut seen = Vec::new();
        for _ in 0..3 {
            let tag = tokio::time::timeout(Duration::from_secs(5), order_rx.recv())
                .await
                .expect("backend saw fewer than 3 connections")
                .unwrap();
            seen.push(tag);
        }
        assert_eq!(seen, vec![0, 1, 2]);
        drop(streams);
    });
}

#[test]
fn stream_header_round_trips_and_rejects_foreign_magic() {
    assert_eq!(proxy::parse_stream_header(&proxy::stream_header(7)), Ok(7));
    assert!(proxy::parse_stream_header(b"QEVM\0\0\0\x03").is_err());
}
