//! The whole data path between two namespaces joined by a veth pair:
//! "source QEMU" --unix--> source proxy ==mTLS over veth==> target proxy --unix--> "target QEMU".

mod proxy_support;

use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mignet_dataplane::certs::Role;
use mignet_dataplane::listener::MigrationListener;
use mignet_dataplane::proxy::{self, CountersSnapshot, MigrationCounters, ProxyOptions, ProxyTask};
use mignet_dataplane::tls::{ReloadingTls, TlsPaths, TlsSettings};
use proxy_support::{check_payload, send_payload, veth, Netns, Pki, TempDir};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};

const SRC_IP: &str = "10.77.0.1";
const DST_IP: &str = "10.77.0.2";

/// Two node namespaces joined by a "migration" veth pair.
struct Nodes {
    src: Netns,
    dst: Netns,
}

fn nodes() -> Nodes {
    let src = Netns::new("mgpx-s");
    let dst = Netns::new("mgpx-d");
    veth(
        &src,
        "mig-src",
        &format!("{SRC_IP}/24"),
        &dst,
        "migration0",
        &format!("{DST_IP}/24"),
    );
    Nodes { src, dst }
}

/// Bind the target listener inside the destination namespace.
fn bind_in(ns: &Netns, ip: &str) -> MigrationListener {
    let ip: IpAddr = ip.parse().unwrap();
    ns.run(move || MigrationListener::bind(ip).unwrap())
}

struct Path2 {
    src: ProxyTask,
    dst: ProxyTask,
    src_sock: std::path::PathBuf,
}

/// Start both proxy sides; must run inside a runtime on a thread in the source ns.
fn start(
    tmp: &Path,
    pki: &Pki,
    listener: MigrationListener,
    dst_qemu: &Path,
    dst_role: Role,
) -> Path2 {
    let target_addr = listener.local_addr();
    let dst_dir = if dst_role == Role::Agent {
        pki.agent_dir(tmp, "node-b")
    } else {
        let d = tmp.join("node-b");
        mignet_dataplane::certs::write_tls_dir(&d, pki.ca.cert_pem(), &pki.issue(dst_role, "b"))
            .unwrap();
        d
    };
    let dst_tls = ReloadingTls::load(
        TlsPaths::in_dir(&dst_dir),
        TlsSettings {
            role: dst_role,
            ..Default::default()
        },
    )
    .unwrap();
    let src_tls = ReloadingTls::load(
        TlsPaths::in_dir(&pki.agent_dir(tmp, "node-a")),
        TlsSettings::default(),
    )
    .unwrap();
    let dst = proxy::spawn_target(
        listener.into_tokio().unwrap(),
        dst_qemu.to_path_buf(),
        dst_tls,
        Arc::new(MigrationCounters::default()),
        ProxyOptions::default(),
    );
    let src_sock = tmp.join("src-qemu.sock");
    let src = proxy::spawn_source(
        UnixListener::bind(&src_sock).unwrap(),
        target_addr,
        src_tls,
        Arc::new(MigrationCounters::default()),
        ProxyOptions {
            bind_ip: Some(SRC_IP.parse().unwrap()),
            ..Default::default()
        },
    );
    Path2 { src, dst, src_sock }
}

#[test]
fn large_payload_both_ways_with_half_close_and_exact_counters() {
    const UP: u64 = 48 << 20; // source -> target, like RAM pages
    const DOWN: u64 = 24 << 20; // target -> source, sent only after the half-close
    let n = nodes();
    let listener = bind_in(&n.dst, DST_IP);
    n.src.block_on(move || async move {
        let tmp = TempDir::new("mgpx");
        let pki = Pki::new("cluster CA");
        let dst_qemu = tmp.path().join("dst-qemu.sock");
        // Target "QEMU": reads everything until EOF (which only arrives if the
        // half-close was carried through), then answers with its own stream.
        let backend = UnixListener::bind(&dst_qemu).unwrap();
        let backend = tokio::spawn(async move {
            let (s, _) = backend.accept().await.unwrap();
            let (mut r, mut w) = s.into_split();
            let got = check_payload(&mut r, 1).await.unwrap();
            send_payload(&mut w, 2, DOWN).await.unwrap();
            w.shutdown().await.unwrap();
            got
        });
        let p = start(tmp.path(), &pki, listener, &dst_qemu, Role::Agent);

        let qemu = UnixStream::connect(&p.src_sock).await.unwrap();
        let (mut r, mut w) = qemu.into_split();
        let sender = async {
            send_payload(&mut w, 1, UP).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let (_, down) = tokio::join!(sender, check_payload(&mut r, 2));
        assert_eq!(
            down.unwrap(),
            DOWN,
            "source QEMU got a short or corrupt stream"
        );
        assert_eq!(backend.await.unwrap(), UP, "target QEMU got a short stream");

        let want = CountersSnapshot {
            to_target: UP,
            from_target: DOWN,
            connections: 1,
            refused: 0,
            failed: 0,
        };
        // Counters are bumped after each write; give the last one a moment.
        settle(&p.src, want).await;
        settle(&p.dst, want).await;
    });
}

async fn settle(task: &ProxyTask, want: CountersSnapshot) {
    for _ in 0..100 {
        if task.counters().snapshot() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(task.counters().snapshot(), want);
}

#[test]
fn many_concurrent_connections_like_multifd() {
    const CONNS: u64 = 24;
    const EACH: u64 = 2 << 20;
    let n = nodes();
    let listener = bind_in(&n.dst, DST_IP);
    n.src.block_on(move || async move {
        let tmp = TempDir::new("mgpx");
        let pki = Pki::new("cluster CA");
        let dst_qemu = tmp.path().join("dst-qemu.sock");
        // Echo backend.
        let backend = UnixListener::bind(&dst_qemu).unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = backend.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    tokio::io::copy(&mut r, &mut w).await.unwrap();
                    w.shutdown().await.unwrap();
                });
            }
        });
        let p = start(tmp.path(), &pki, listener, &dst_qemu, Role::Agent);

        let mut clients = tokio::task::JoinSet::new();
        for i in 0..CONNS {
            let sock = p.src_sock.clone();
            clients.spawn(async move {
                let s = UnixStream::connect(&sock).await.unwrap();
                let (mut r, mut w) = s.into_split();
                let send = async {
                    send_payload(&mut w, 100 + i, EACH).await.unwrap();
                    w.shutdown().await.unwrap();
                };
                let (_, got) = tokio::join!(send, check_payload(&mut r, 100 + i));
                got.unwrap()
            });
        }
        while let Some(got) = clients.join_next().await {
            assert_eq!(got.unwrap(), EACH);
        }
        let want = CountersSnapshot {
            to_target: CONNS * EACH,
            from_target: CONNS * EACH,
            connections: CONNS,
            refused: 0,
            failed: 0,
        };
        settle(&p.src, want).await;
        settle(&p.dst, want).await;
    });
}

#[test]
fn source_refuses_a_target_that_is_not_an_agent() {
    let n = nodes();
    let listener = bind_in(&n.dst, DST_IP);
    n.src.block_on(move || async move {
        let tmp = TempDir::new("mgpx");
        let pki = Pki::new("cluster CA");
        let dst_qemu = tmp.path().join("dst-qemu.sock");
        let backend = UnixListener::bind(&dst_qemu).unwrap();
        let p = start(tmp.path(), &pki, listener, &dst_qemu, Role::Manager);
        let mut qemu = UnixStream::connect(&p.src_sock).await.unwrap();
        let _ = qemu.write_all(b"QEVM").await;
        // The source side drops QEMU's connection after the failed handshake.
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            tokio::io::AsyncReadExt::read_to_end(&mut qemu, &mut buf),
        )
        .await
        .expect("source side did not close QEMU's connection");
        for _ in 0..100 {
            if p.src.counters().failed.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(p.src.counters().failed.load(Ordering::SeqCst), 1);
        assert_eq!(p.src.counters().connections.load(Ordering::SeqCst), 0);
        let accepted = tokio::time::timeout(Duration::from_millis(200), backend.accept()).await;
        assert!(accepted.is_err(), "target QEMU saw a connection");
    });
}

#[test]
fn endpoints_publish_a_port_map_and_keep_streams_apart() {
    use mignet_dataplane::proxy::{SourceEndpoints, TargetEndpoints, STREAM_BLOCK, STREAM_MEMORY};
    use tokio::io::AsyncReadExt;

    let n = nodes();
    let tmp = TempDir::new("mgpx-ep");
    let pki = Pki::new("cluster CA");
    let dst_dir = pki.agent_dir(tmp.path(), "node-b");
    let src_dir = pki.agent_dir(tmp.path(), "node-a");
    let (mem_sock, blk_sock) = (tmp.path().join("mem.sock"), tmp.path().join("blk.sock"));
    let work = tmp.path().to_path_buf();

    // Target agent: its own runtime on a thread inside the target namespace.
    let (published_tx, published_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let target = n.dst.spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                // Each "QEMU" socket answers with its own tag, then echoes.
                for (path, tag) in [(mem_sock.clone(), b"MEM:"), (blk_sock.clone(), b"BLK:")] {
                    let l = UnixListener::bind(&path).unwrap();
                    tokio::spawn(async move {
                        loop {
                            let (s, _) = l.accept().await.unwrap();
                            tokio::spawn(async move {
                                let (mut r, mut w) = s.into_split();
                                w.write_all(tag).await.unwrap();
                                tokio::io::copy(&mut r, &mut w).await.unwrap();
                                w.shutdown().await.unwrap();
                            });
                        }
                    });
                }
                let tls =
                    ReloadingTls::load(TlsPaths::in_dir(&dst_dir), TlsSettings::default()).unwrap();
                let ep = TargetEndpoints::start(
                    DST_IP.parse().unwrap(),
                    &[(STREAM_MEMORY, mem_sock), (STREAM_BLOCK, blk_sock)],
                    tls,
                    ProxyOptions::default(),
                )
                .unwrap();
                published_tx
                    .send((ep.target_node_address().unwrap(), ep.port_map()))
                    .unwrap();
                let _ = stop_rx.await;
                ep.counters().snapshot()
            })
    });
    let (address, port_map) = published_rx.recv().unwrap();
    assert!(address.starts_with(&format!("{DST_IP}:")), "{address}");
    let mut keys: Vec<u16> = port_map.values().copied().collect();
    keys.sort();
    assert_eq!(keys, vec![STREAM_MEMORY, STREAM_BLOCK], "{port_map:?}");
    // targetNodeAddress names the memory stream's port.
    let mem_port = port_map
        .iter()
        .find(|(_, k)| **k == STREAM_MEMORY)
        .map(|(p, _)| p.clone())
        .unwrap();
    assert_eq!(address, format!("{DST_IP}:{mem_port}"));

    let sock_paths = n.src.block_on(move || async move {
        let tls = ReloadingTls::load(TlsPaths::in_dir(&src_dir), TlsSettings::default()).unwrap();
        let ep = SourceEndpoints::start(
            &work,
            "uid-1",
            DST_IP.parse().unwrap(),
            &port_map,
            &[STREAM_MEMORY, STREAM_BLOCK],
            tls,
            ProxyOptions::default(),
        )
        .unwrap();
        for (key, tag) in [(STREAM_MEMORY, "MEM:"), (STREAM_BLOCK, "BLK:")] {
            let path = ep.socket(key).unwrap();
            assert_eq!(*path, SourceEndpoints::socket_path(&work, "uid-1", key));
            let mut s = UnixStream::connect(path).await.unwrap();
            s.write_all(b"hello").await.unwrap();
            s.shutdown().await.unwrap();
            let mut got = String::new();
            s.read_to_string(&mut got).await.unwrap();
            assert_eq!(got, format!("{tag}hello"));
        }
        let snap = ep.counters().snapshot();
        assert_eq!(snap.connections, 2);
        let paths: Vec<_> = ep.socket(STREAM_MEMORY).into_iter().cloned().collect();
        drop(ep);
        paths
    });
    for p in sock_paths {
        assert!(!p.exists(), "{} left behind", p.display());
    }
    stop_tx.send(()).unwrap();
    let target_counters = target.join().unwrap();
    assert_eq!(target_counters.connections, 2);
    assert_eq!(target_counters.to_target, 10);
}

#[test]
fn finish_delivers_what_is_still_in_flight_when_qemu_reports_completion() {
    in_flight_survives(false);
}

#[test]
fn dropped_source_lingers_until_in_flight_bytes_are_delivered() {
    // What SourceEndpoints' Drop does (linger): an agent that drops its
    // source endpoints on "completed" must not truncate the stream either.
    in_flight_survives(true);
}

/// QEMU calls a migration completed once its last write returned; the bytes
/// can still be inside the proxies. finish() / linger() must carry them to the
/// destination (an abort at that moment would truncate its stream).
fn in_flight_survives(linger: bool) {
    const UP: u64 = 64 << 20;
    let n = nodes();
    let listener = bind_in(&n.dst, DST_IP);
    n.src.block_on(move || async move {
        let tmp = TempDir::new("mgpx-fin");
        let pki = Pki::new("cluster CA");
        let dst_qemu = tmp.path().join("dst-qemu.sock");
        let backend = UnixListener::bind(&dst_qemu).unwrap();
        let backend = tokio::spawn(async move {
            let (s, _) = backend.accept().await.unwrap();
            let (mut r, mut w) = s.into_split();
            // A slow destination: the stream backs up into the proxies.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let got = check_payload(&mut r, 5).await;
            w.shutdown().await.unwrap();
            got
        });
        let p = start(tmp.path(), &pki, listener, &dst_qemu, Role::Agent);
        let qemu = UnixStream::connect(&p.src_sock).await.unwrap();
        let (r, mut w) = qemu.into_split();
        send_payload(&mut w, 5, UP).await.unwrap();
        w.shutdown().await.unwrap();
        // "Completed": QEMU closes its end without waiting for anything.
        drop((r, w));
        let in_flight = UP - p.src.counters().snapshot().to_target;
        if linger {
            let dst = p.dst;
            p.src.linger(Duration::from_secs(20));
            let got = backend.await.unwrap().unwrap();
            assert_eq!(got, UP, "truncated ({in_flight} bytes were in flight)");
            assert!(dst.finish(Duration::from_secs(20)).await);
        } else {
            assert!(finish_both(p).await, "connections did not drain");
            assert_eq!(
                backend.await.unwrap().unwrap(),
                UP,
                "destination stream truncated ({in_flight} bytes were in flight)"
            );
        }
    });
}

async fn finish_both(p: Path2) -> bool {
    let (src, dst) = (p.src, p.dst);
    let (a, b) = tokio::join!(
        src.finish(Duration::from_secs(20)),
        dst.finish(Duration::from_secs(20))
    );
    a && b
}
