//! A real QEMU (TCG) guest migrates through the mTLS proxy between two node
//! namespaces, after a plaintext peer, a foreign-CA agent and a wrong-role
//! certificate have all tried the target listener first. A destination QEMU
//! started with `-incoming` fails and exits on the first bad connection it
//! accepts, so "it is still waiting, and then the real migration succeeds"
//! proves none of those peers reached it.

mod proxy_support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use mignet_dataplane::certs::Role;
use mignet_dataplane::listener::MigrationListener;
use mignet_dataplane::monitor::MonitorConfig;
use mignet_dataplane::proxy::{self, MigrationCounters, ProxyOptions};
use mignet_dataplane::qemu::migration::{self, Outcome};
use mignet_dataplane::qemu::testbed::{ticks, wait_serial, wait_tick_after, GuestImage, RunDir};
use mignet_dataplane::qemu::{MigrationSettings, QmpClient, VmProcess};
use mignet_dataplane::tls::{ReloadingTls, TlsPaths, TlsSettings};
use proxy_support::{test_client, veth, Netns, Pki, TempDir, TrustAnything};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};
use tokio_rustls::TlsConnector;

const BOOT: Duration = Duration::from_secs(90);
const MIB: u64 = 1 << 20;
const SRC_IP: &str = "10.78.0.1";
const DST_IP: &str = "10.78.0.2";

/// One refused attempt: plaintext when `config` is None.
async fn intruder(target: SocketAddr, config: Option<Arc<rustls::ClientConfig>>) {
    let mut tcp = TcpStream::connect(target).await.unwrap();
    let mut buf = Vec::new();
    match config {
        None => {
            // QEMU's own stream header, as if a plaintext QEMU dialled in.
            let _ = tcp.write_all(b"QEVM\x00\x00\x00\x03").await;
            let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
        }
        Some(config) => {
            if let Ok(mut s) = TlsConnector::from(config)
                .connect(ServerName::IpAddress(target.ip().into()), tcp)
                .await
            {
                let _ = s.write_all(b"QEVM\x00\x00\x00\x03").await;
                let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_migrates_through_the_proxy_after_intruders_are_refused() {
    let src_ns = Netns::new("mgpq-s");
    let dst_ns = Netns::new("mgpq-d");
    veth(
        &src_ns,
        "mig-src",
        &format!("{SRC_IP}/24"),
        &dst_ns,
        "migration0",
        &format!("{DST_IP}/24"),
    );
    let tmp = TempDir::new("mgpq");
    let pki = Pki::new("cluster CA");

    // Guests: a ticking source and a fresh destination waiting for the stream.
    let image = GuestImage::ensure().unwrap();
    let sdir = RunDir::new("pq-s").unwrap();
    let ddir = RunDir::new("pq-d").unwrap();
    let src_spec = image.vm_spec("pq-src", sdir.path(), 256, 32, 0);
    let mut dst_spec = image.vm_spec("pq-dst", ddir.path(), 256, 32, 0);
    dst_spec.incoming_defer = true;
    let src = VmProcess::start(&src_spec).await.unwrap();
    let dst = VmProcess::start(&dst_spec).await.unwrap();
    let src_qmp = QmpClient::connect(src.qmp_socket()).await.unwrap();
    let dst_qmp = QmpClient::connect(dst.qmp_socket()).await.unwrap();
    wait_serial(&src, "mignet: ready", BOOT).await.unwrap();
    wait_tick_after(&src, None, BOOT).await.unwrap();

    let settings = MigrationSettings {
        multifd_channels: Some(2),
        max_bandwidth: 0,
        downtime_limit_ms: 300,
    };
    let dst_qemu_sock = ddir.join("incoming.sock");
    migration::prepare_destination(
        &dst_qmp,
        &settings,
        &format!("unix:{}", dst_qemu_sock.display()),
    )
    .await
    .unwrap();

    // Target agent: listener on the migration IP inside the target namespace.
    let dst_ip: IpAddr = DST_IP.parse().unwrap();
    let listener = dst_ns.run(move || MigrationListener::bind(dst_ip).unwrap());
    let target = listener.local_addr();
    let dst_tls = ReloadingTls::load(
        TlsPaths::in_dir(&pki.agent_dir(tmp.path(), "node-b")),
        TlsSettings::default(),
    )
    .unwrap();
    let target_side = proxy::spawn_target(
        listener.into_tokio().unwrap(),
        dst_qemu_sock.clone(),
        dst_tls,
        Arc::new(MigrationCounters::default()),
        ProxyOptions::default(),
    );

    // Source agent: its own runtime on a thread inside the source namespace,
    // so its outgoing connections leave through the source's veth. Intruders
    // try first, from the same namespace.
    let src_tls = ReloadingTls::load(
        TlsPaths::in_dir(&pki.agent_dir(tmp.path(), "node-a")),
        TlsSettings::default(),
    )
    .unwrap();
    let foreign = Pki::new("foreign CA").issue(Role::Agent, "node-x");
    let wrong_role = pki.issue(Role::Console, "console");
    let src_qemu_sock = sdir.join("outgoing.sock");
    let sock = src_qemu_sock.clone();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let source_agent = src_ns.spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let any = Arc::new(TrustAnything::default());
                let tls13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
                intruder(target, None).await;
                intruder(
                    target,
                    Some(test_client(Some(&foreign), tls13, any.clone())),
                )
                .await;
                intruder(
                    target,
                    Some(test_client(Some(&wrong_role), tls13, any.clone())),
                )
                .await;
                intruder(target, Some(test_client(None, tls13, any))).await;
                let task = proxy::spawn_source(
                    UnixListener::bind(&sock).unwrap(),
                    target,
                    src_tls,
                    Arc::new(MigrationCounters::default()),
                    ProxyOptions {
                        bind_ip: Some(SRC_IP.parse().unwrap()),
                        ..Default::default()
                    },
                );
                ready_tx.send(()).unwrap();
                let _ = stop_rx.await;
                task.counters().snapshot()
            })
    });
    ready_rx.await.unwrap();

    // All four were refused, and the destination QEMU is untouched.
    for _ in 0..200 {
        if target_side.counters().refused.load(Ordering::SeqCst) >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(target_side.counters().snapshot().refused, 4);
    assert_eq!(target_side.counters().snapshot().connections, 0);
    assert!(
        dst.is_alive(),
        "destination QEMU died: an intruder reached it"
    );
    assert_eq!(dst_qmp.run_state().await.unwrap(), "inmigrate");

    // The real migration, through both agents.
    let report = migration::run_monitored(
        &src_qmp,
        &settings,
        &format!("unix:{}", src_qemu_sock.display()),
        &MonitorConfig {
            progress_timeout: Duration::from_secs(60),
            completion_timeout_per_gib: Duration::from_secs(800),
            data_size_bytes: 256 * MIB,
            setup_timeout: Duration::from_secs(30),
        },
        Duration::from_millis(100),
    )
    .await
    .unwrap();
    assert_eq!(report.outcome, Outcome::Completed, "{:?}", report.last);

    let last_src = *ticks(&src.serial_output()).last().expect("source ticked");
    wait_tick_after(&dst, None, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(
        ticks(&dst.serial_output()).first().copied(),
        Some(last_src + 1),
        "guest did not continue with the next tick on the destination"
    );

    stop_tx.send(()).unwrap();
    let src_counters = source_agent.join().unwrap();
    let dst_counters = target_side.counters().snapshot();
    // Main channel + 2 multifd channels, each its own TLS connection.
    assert_eq!(src_counters.connections, 3, "{src_counters:?}");
    assert_eq!(dst_counters.connections, 3, "{dst_counters:?}");
    let transferred = report.last.ram.as_ref().map_or(0, |r| r.transferred);
    assert!(
        src_counters.to_target >= transferred,
        "proxy carried {} bytes, QEMU reports {transferred} transferred",
        src_counters.to_target
    );
    assert!(
        dst_counters.to_target <= src_counters.to_target,
        "{dst_counters:?} vs {src_counters:?}"
    );
}
