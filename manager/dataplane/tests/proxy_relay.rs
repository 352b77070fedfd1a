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
