//! The proxy's own record layer (session.rs + record.rs) against plain rustls
//! peers: every TLS version and cipher suite the ring provider offers, in both
//! roles, with TLS 1.3 key updates started by either side, half-close carried
//! through, and a stream that is checked byte by byte. Loopback in a namespace
//! of the test's own.

mod proxy_support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mignet_dataplane::certs::Role;
use mignet_dataplane::proxy::MigrationCounters;
use mignet_dataplane::session::{self, Direction, Which};
use mignet_dataplane::tls::{ReloadingTls, TlsPaths, TlsSettings};
use proxy_support::{chain_and_key, Netns, Payload, Pki, TempDir, TrustAnything};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::{CipherSuite, ClientConfig, ProtocolVersion, ServerConfig, SupportedProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const LEN: usize = 3 * 1024 * 1024 + 777;

fn provider_with(suite: CipherSuite) -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites.retain(|s| s.suite() == suite);
    assert_eq!(p.cipher_suites.len(), 1, "{suite:?}");
    Arc::new(p)
}

fn cases() -> Vec<(&'static SupportedProtocolVersion, CipherSuite)> {
    use CipherSuite::*;
    vec![
        (&rustls::version::TLS13, TLS13_AES_128_GCM_SHA256),
        (&rustls::version::TLS13, TLS13_AES_256_GCM_SHA384),
        (&rustls::version::TLS13, TLS13_CHACHA20_POLY1305_SHA256),
        (
            &rustls::version::TLS12,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        ),
        (
            &rustls::version::TLS12,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
        (
            &rustls::version::TLS12,
            TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ),
    ]
}

fn direction(c: &Arc<MigrationCounters>, which: Which) -> Direction {
    Direction {
        counter: c.clone(),
        which,
        limit: None,
    }
}

/// "QEMU" on the far side of our relay: echo everything, then half-close.
fn spawn_echo(mut s: UnixStream) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let (mut r, mut w) = s.split();
        let n = tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
        n
    })
}

/// Send `LEN` checked bytes through `s` (optionally asking for a key update
/// half way), half-close, and check the echo that comes back.
async fn exchange<S>(s: &mut S, refresh: impl FnOnce(&mut S))
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut data = vec![0u8; LEN];
    Payload::new(7).fill(&mut data);
    let (first, second) = data.split_at(LEN / 2);
    let (mut r, mut w) = tokio::io::split(&mut *s);
    let send = async {
        w.write_all(first).await.unwrap();
        w.flush().await.unwrap();
        w
    };
    let mut got = Vec::with_capacity(LEN);
    let recv_first = async {
        // Read the first half back before asking for a key update, so the
        // update falls in the middle of a busy stream in both directions.
        while got.len() < first.len() {
            let mut buf = vec![0u8; 65536];
            let n = r.read(&mut buf).await.unwrap();
            assert!(n > 0, "echo ended early");
            got.extend_from_slice(&buf[..n]);
        }
    };
    let (w, ()) = tokio::join!(send, recv_first);
    let joined = r.unsplit(w);
    refresh(joined);
    let (mut r, mut w) = tokio::io::split(joined);
    let send = async {
        w.write_all(second).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let recv = async {
        r.read_to_end(&mut got).await.unwrap();
    };
    tokio::join!(send, recv);
    assert_eq!(got.len(), LEN);
    assert!(got == data, "echoed stream differs");
}

#[test]
fn rustls_client_against_our_server_every_version_and_suite_with_key_updates() {
    let ns = Netns::new("mgrec-");
    ns.block_on(|| async {
        let tmp = TempDir::new("mgrec");
        let pki = Pki::new("cluster CA");
        let dir = pki.agent_dir(tmp.path(), "node-b");
        let ours = ReloadingTls::load(
            TlsPaths::in_dir(&dir),
            TlsSettings {
                allow_tls12: true,
                ..Default::default()
            },
        )
        .unwrap();
        let client_cert = pki.issue(Role::Agent, "node-a");
        for (version, suite) in cases() {
            let listener = TcpListener::bind((IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
                .await
                .unwrap();
            let addr = listener.local_addr().unwrap();
            let server_config = ours.current().server.clone();
            let counters = Arc::new(MigrationCounters::default());
            let c = counters.clone();
            let server = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut est = session::accept(tcp, server_config).await.unwrap();
                let v = est.protocol_version();
                if v == ProtocolVersion::TLSv1_3 {
                    // Our side updates its sending key every 20 records too.
                    est.set_tx_records_per_key(20);
                }
                let (ours, theirs) = UnixStream::pair().unwrap();
                let echo = spawn_echo(theirs);
                let relayed = est
                    .relay(
                        ours,
                        direction(&c, Which::FromTarget),
                        direction(&c, Which::ToTarget),
                        256 * 1024,
                    )
                    .await
                    .unwrap();
                (v, relayed, echo.await.unwrap())
            });

            let (chain, key) = chain_and_key(&client_cert);
            let mut cfg = ClientConfig::builder_with_provider(provider_with(suite))
                .with_protocol_versions(&[version])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(TrustAnything::default()))
                .with_client_auth_cert(chain, key)
                .unwrap();
            cfg.resumption = rustls::client::Resumption::disabled();
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut s = TlsConnector::from(Arc::new(cfg))
                .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                .await
                .unwrap();
            assert_eq!(
                s.get_ref().1.negotiated_cipher_suite().unwrap().suite(),
                suite
            );
            let tls13 = version.version == ProtocolVersion::TLSv1_3;
            tokio::time::timeout(
                Duration::from_secs(30),
                exchange(&mut s, |s| {
                    if tls13 {
                        s.get_mut().1.refresh_traffic_keys().unwrap();
                    }
                }),
            )
            .await
            .unwrap_or_else(|_| panic!("{suite:?} timed out"));
            let (v, (up, down), echoed) = server.await.unwrap();
            assert_eq!(v, version.version);
            assert_eq!((up, down, echoed), (LEN as u64, LEN as u64, LEN as u64));
            let snap = counters.snapshot();
            assert_eq!((snap.to_target, snap.from_target), (LEN as u64, LEN as u64));
        }
    });
}

#[test]
fn our_client_against_rustls_server_every_version_and_suite_with_key_updates() {
    let ns = Netns::new("mgrec-");
    ns.block_on(|| async {
        let tmp = TempDir::new("mgrec");
        let pki = Pki::new("cluster CA");
        let dir = pki.agent_dir(tmp.path(), "node-a");
        let ours = ReloadingTls::load(
            TlsPaths::in_dir(&dir),
            TlsSettings {
                allow_tls12: true,
                ..Default::default()
            },
        )
        .unwrap();
        // The server is a plain rustls peer with an agent certificate, so our
        // client's CA and role checks accept it.
        let (chain, key) = chain_and_key(&pki.issue(Role::Agent, "node-b"));
        for (version, suite) in cases() {
            let cfg = ServerConfig::builder_with_provider(provider_with(suite))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain.clone(), key.clone_key())
                .unwrap();
            let listener = TcpListener::bind((IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
                .await
                .unwrap();
            let addr: SocketAddr = listener.local_addr().unwrap();
            let server = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut s = TlsAcceptor::from(Arc::new(cfg)).accept(tcp).await.unwrap();
                let tls13 = s.get_ref().1.protocol_version() == Some(ProtocolVersion::TLSv1_3);
                // rustls echoes, updating its key half way (TLS 1.3).
                exchange_echo(&mut s, tls13).await
            });

            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut est = session::connect(
                tcp,
                ours.current().client.clone(),
                ServerName::IpAddress(addr.ip().into()),
            )
            .await
            .unwrap();
            assert_eq!(est.protocol_version(), version.version);
            if version.version == ProtocolVersion::TLSv1_3 {
                est.set_tx_records_per_key(20);
            }
            let counters = Arc::new(MigrationCounters::default());
            let (ours_end, mut qemu) = UnixStream::pair().unwrap();
            let relay = tokio::spawn({
                let c = counters.clone();
                async move {
                    est.relay(
                        ours_end,
                        direction(&c, Which::ToTarget),
                        direction(&c, Which::FromTarget),
                        64 * 1024,
                    )
                    .await
                }
            });
            tokio::time::timeout(Duration::from_secs(30), exchange(&mut qemu, |_| {}))
                .await
                .unwrap_or_else(|_| panic!("{suite:?} timed out"));
            assert_eq!(
                relay.await.unwrap().unwrap(),
                (LEN as u64, LEN as u64),
                "{suite:?}"
            );
            assert_eq!(server.await.unwrap(), LEN as u64);
        }
    });
}

/// Server side of `exchange`: echo until EOF, with a key update after the
/// first megabyte when `tls13`; then close_notify.
async fn exchange_echo<S>(s: &mut tokio_rustls::server::TlsStream<S>, tls13: bool) -> u64
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 65536];
    let mut total = 0u64;
    let mut updated = !tls13;
    loop {
        let n = s.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        if !updated && total > 1 << 20 {
            s.get_mut().1.refresh_traffic_keys().unwrap();
            updated = true;
        }
        s.write_all(&buf[..n]).await.unwrap();
        total += n as u64;
    }
    s.shutdown().await.unwrap();
    total
}

#[test]
fn truncation_and_tampering_fail_the_relay() {
    let ns = Netns::new("mgrec-");
    ns.block_on(|| async {
        let tmp = TempDir::new("mgrec");
        let pki = Pki::new("cluster CA");
        let dir = pki.agent_dir(tmp.path(), "node-b");
        let ours = ReloadingTls::load(TlsPaths::in_dir(&dir), TlsSettings::default()).unwrap();
        let client_cert = pki.issue(Role::Agent, "node-a");
        let client = proxy_support::test_client(
            Some(&client_cert),
            &[&rustls::version::TLS13],
            Arc::new(TrustAnything::default()),
        );
        for tamper in [false, true] {
            let listener = TcpListener::bind((IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
                .await
                .unwrap();
            let addr = listener.local_addr().unwrap();
            let server_config = ours.current().server.clone();
            let (handshaken_tx, handshaken) = tokio::sync::oneshot::channel();
            let server = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                let est = session::accept(tcp, server_config).await.unwrap();
                handshaken_tx.send(()).unwrap();
                let (ours, mut theirs) = UnixStream::pair().unwrap();
                let c = Arc::new(MigrationCounters::default());
                let drain = tokio::spawn(async move {
                    let mut v = Vec::new();
                    let _ = theirs.read_to_end(&mut v).await;
                    v
                });
                let r = est
                    .relay(
                        ours,
                        direction(&c, Which::FromTarget),
                        direction(&c, Which::ToTarget),
                        64 * 1024,
                    )
                    .await;
                (r, drain.await.unwrap())
            });
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut s = TlsConnector::from(client.clone())
                .connect(ServerName::IpAddress(addr.ip().into()), tcp)
                .await
                .unwrap();
            s.write_all(b"intact").await.unwrap();
            s.flush().await.unwrap();
            let (mut tcp, _) = s.into_inner();
            // Damage only what our record layer reads (rustls would reject it
            // inside the handshake otherwise, which other tests cover).
            handshaken.await.unwrap();
            if tamper {
                // A record whose tag cannot verify.
                tcp.write_all(&[23, 3, 3, 0, 20]).await.unwrap();
                tcp.write_all(&[0x55; 20]).await.unwrap();
            }
            // Then FIN without close_notify.
            tcp.shutdown().await.unwrap();
            let (r, delivered) = tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .unwrap()
                .unwrap();
            let e = r.expect_err("the relay must fail");
            let msg = format!("{e}");
            if tamper {
                assert!(msg.contains("bad_record_mac"), "{msg}");
            } else {
                assert!(msg.contains("close_notify"), "{msg}");
            }
            // What came before the damage was delivered; nothing after it.
            assert_eq!(delivered, b"intact");
        }
    });
}

#[test]
fn data_and_close_notify_in_the_same_flight_as_the_finished_message() {
    // The client's Finished, its first data and its close_notify leave in one
    // TCP write, so the server's handshake loop sees all three at once: the
    // data must be relayed and the close_notify taken as a half-close (not as
    // a peer that hung up during the handshake).
    use std::io::{Read, Write};
    let ns = Netns::new("mgrec-");
    ns.block_on(|| async {
        for data in [&b"first bytes"[..], &b""[..]] {
            let tmp = TempDir::new("mgrec");
            let pki = Pki::new("cluster CA");
            let dir = pki.agent_dir(tmp.path(), "node-b");
            let ours = ReloadingTls::load(TlsPaths::in_dir(&dir), TlsSettings::default()).unwrap();
            let listener = TcpListener::bind((IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
                .await
                .unwrap();
            let addr = listener.local_addr().unwrap();
            let server_config = ours.current().server.clone();
            let server = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                let est = session::accept(tcp, server_config).await.unwrap();
                let (ours, theirs) = UnixStream::pair().unwrap();
                let echo = spawn_echo(theirs);
                let c = Arc::new(MigrationCounters::default());
                let relayed = est
                    .relay(
                        ours,
                        direction(&c, Which::FromTarget),
                        direction(&c, Which::ToTarget),
                        64 * 1024,
                    )
                    .await
                    .unwrap();
                (relayed, echo.await.unwrap())
            });

            let config = proxy_support::test_client(
                Some(&pki.issue(Role::Agent, "node-a")),
                &[&rustls::version::TLS13],
                Arc::new(TrustAnything::default()),
            );
            let client = std::thread::spawn(move || {
                let mut conn =
                    rustls::ClientConnection::new(config, ServerName::IpAddress(addr.ip().into()))
                        .unwrap();
                let mut sock = std::net::TcpStream::connect(addr).unwrap();
                // Drive the handshake until our side is done; our Finished is
                // still queued then, not sent.
                while conn.is_handshaking() {
                    while conn.wants_write() {
                        conn.write_tls(&mut sock).unwrap();
                    }
                    if conn.is_handshaking() {
                        conn.read_tls(&mut sock).unwrap();
                        conn.process_new_packets().unwrap();
                    }
                }
                conn.writer().write_all(data).unwrap();
                conn.send_close_notify();
                let mut flight = Vec::new();
                while conn.wants_write() {
                    conn.write_tls(&mut flight).unwrap();
                }
                sock.write_all(&flight).unwrap();
                let mut echoed = Vec::new();
                loop {
                    if conn.read_tls(&mut sock).unwrap() == 0 {
                        break;
                    }
                    let state = conn.process_new_packets().unwrap();
                    let mut buf = vec![0u8; state.plaintext_bytes_to_read()];
                    conn.reader().read_exact(&mut buf).unwrap();
                    echoed.extend_from_slice(&buf);
                    if state.peer_has_closed() {
                        break;
                    }
                }
                echoed
            });
            let ((up, down), echoed) = tokio::time::timeout(Duration::from_secs(10), server)
                .await
                .unwrap()
                .unwrap();
            let n = data.len() as u64;
            assert_eq!((up, down, echoed), (n, n, n));
            assert_eq!(client.join().unwrap(), data);
        }
    });
}
