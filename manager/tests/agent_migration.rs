//! The node agent end to end with real QEMU (TCG) guests: two nodes in
//! namespaces, agent pods with `migration0` made by our CNI plugin from the
//! seed NAD, two agents (the core API) migrating a ticking guest over mTLS.
//! Run as root; names are unique per process and everything is removed on
//! Drop.

mod agent_support;

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use agent_support::{agent_settings, guest_boot, if_stat, ticks, wait_tick_after, Pki, Topology};
use mignet::agent::{
    AgentCore, IncomingResult, MigrationParams, Readiness, TargetAddress, VmRequest,
};
use mignet_dataplane::migration_ip::Origin;
use mignet_dataplane::proxy::{self, MigrationCounters, ProxyOptions};
use mignet_dataplane::qemu::migration::Outcome;
use mignet_dataplane::qemu::process::process_alive;
use mignet_dataplane::tls::{ReloadingTls, TlsPaths, TlsSettings};

const BOOT: Duration = Duration::from_secs(90);
const MIB: u64 = 1 << 20;

fn request(key: &str, memory_mib: u64, fill_mib: u64, dirty_mib_s: u64) -> VmRequest {
    VmRequest {
        key: key.into(),
        memory_mib,
        vcpus: 1,
        cpu_model: None,
        kernel_args: format!("mignet.fill_mib={fill_mib} mignet.dirty_mib_s={dirty_mib_s}"),
    }
}

fn params(multifd: Option<u8>, bandwidth: u64) -> MigrationParams {
    MigrationParams {
        multifd_channels: multifd,
        bandwidth_bytes_per_sec: bandwidth,
        progress_timeout: Duration::from_secs(60),
        completion_timeout_per_gib: Duration::from_secs(800),
        setup_timeout: Duration::from_secs(30),
        sample_interval: Duration::from_millis(100),
        ..MigrationParams::default()
    }
}

/// Run `f` on a short-lived thread inside `ns`.
fn in_ns<R: Send + 'static>(ns: &str, f: impl FnOnce() -> R + Send + 'static) -> R {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn eth0_bytes(ns: &str) -> u64 {
    if_stat(ns, "eth0", "rx_bytes") + if_stat(ns, "eth0", "tx_bytes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_migrates_between_agents_over_migration0() {
    let topo = Topology::new("mgag", 2, true);
    let (n1, n2) = (topo.nodes[0].clone(), topo.nodes[1].clone());
    let pki = Pki::new("cluster CA");
    let boot = guest_boot();
    let s1 = agent_settings(&topo, &n1, &pki, &boot, Some(2));
    let s2 = agent_settings(&topo, &n2, &pki, &boot, Some(2));

    // Readiness: migration0's address, found inside the agent pod.
    let core1 = AgentCore::start(s1.clone()).await.unwrap();
    let core2 = AgentCore::start(s2.clone()).await.unwrap();
    let Readiness::Ready(ip1) = core1.readiness().await else {
        panic!("agent 1 not ready")
    };
    assert_eq!(Some(ip1.ip), n1.migration_ip);
    assert_eq!(ip1.origin, Origin::Interface("migration0".into()));
    // Network configured but no migration0 (the node namespace has none):
    // not ready, and says why; no fall back to the pod IP.
    let mut no_if = s1.clone();
    no_if.netns = Some(n1.node_ns.clone());
    no_if.state_dir = topo.tmp.path().join("st-noif");
    let Readiness::NotReady(why) = AgentCore::start(no_if).await.unwrap().readiness().await else {
        panic!("ready without migration0")
    };
    assert!(why.contains("migration0"), "{why}");
    // No network configured: the pod IP.
    let mut pod_net = s1.clone();
    pod_net.migration_network = None;
    pod_net.state_dir = topo.tmp.path().join("st-pod");
    assert_eq!(
        AgentCore::start(pod_net).await.unwrap().readiness().await,
        Readiness::Ready(mignet_dataplane::migration_ip::MigrationIp {
            ip: n1.pod_ip,
            origin: Origin::PodNetwork
        })
    );

    // A ticking guest on node 1.
    let key = "default/vm-ticker";
    let vm = core1.vms.start(&request(key, 256, 64, 0)).await.unwrap();
    let t0 = wait_tick_after(|| vm.serial_output(), None, BOOT).await;

    // Restarting the source agent does not stop its VM: the new agent
    // reattaches it and the guest keeps ticking.
    // QEMU serves one QMP client at a time: let go of ours first.
    let pid = vm.pid;
    drop(vm);
    drop(core1);
    assert!(process_alive(pid), "VM died with its agent");
    let core1 = AgentCore::start(s1.clone()).await.unwrap();
    assert_eq!(core1.vms.keys(), vec![key.to_string()]);
    let vm = core1.vms.get(key).unwrap();
    assert_eq!(vm.pid, pid);
    assert_eq!(vm.qmp.run_state().await.unwrap(), "running");
    wait_tick_after(|| vm.serial_output(), Some(t0), Duration::from_secs(20)).await;

    let eth0_before: Vec<u64> = [&n1.agent_ns, &n2.agent_ns, &n1.node_ns, &n2.node_ns]
        .iter()
        .map(|ns| eth0_bytes(ns))
        .collect();
    let mig_rx_before = if_stat(&n2.agent_ns, "migration0", "rx_bytes");

    // Target prepares: listener on its migration IP only.
    let p = params(Some(2), 0);
    let req = vm.request.clone();
    let prepared = core2.prepare_target(&req, "uid-1", &p).await.unwrap();
    let target_sa: SocketAddr = prepared.address.parse().unwrap();
    assert_eq!(Some(target_sa.ip()), n2.migration_ip);
    let dest_pid = prepared.pid().unwrap();

    // The listener does not answer on the pod-network address.
    let pod_addr = SocketAddr::new(n2.pod_ip, target_sa.port());
    let refused = in_ns(&n1.agent_ns, move || {
        std::net::TcpStream::connect_timeout(&pod_addr, Duration::from_secs(3)).map(|_| ())
    });
    assert!(refused.is_err(), "listener answered on the pod IP");

    // A peer with a certificate from another CA is refused before QEMU sees
    // a byte (a destination QEMU exits on the first bad stream it accepts).
    let foreign = Pki::new("foreign CA");
    let foreign_dir = foreign.agent_dir(topo.tmp.path(), "intruder");
    let sock = topo.tmp.path().join("intruder.sock");
    let src_ip = n1.migration_ip.unwrap();
    let intruder = core1
        .dataplane()
        .run(async move {
            let tls =
                ReloadingTls::load(TlsPaths::in_dir(&foreign_dir), TlsSettings::default()).unwrap();
            let task = proxy::spawn_source(
                tokio::net::UnixListener::bind(&sock).unwrap(),
                target_sa,
                tls,
                Arc::new(MigrationCounters::default()),
                ProxyOptions {
                    bind_ip: Some(src_ip),
                    ..Default::default()
                },
            );
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut c = tokio::net::UnixStream::connect(&sock).await.unwrap();
            let _ = c.write_all(b"QEVM\x00\x00\x00\x03").await;
            let mut buf = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut buf)).await;
            task.counters().snapshot()
        })
        .await
        .unwrap();
    assert_eq!(intruder.connections, 0, "{intruder:?}");
    for _ in 0..100 {
        if prepared.counters().refused >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(prepared.counters().refused, 1, "{:?}", prepared.counters());
    assert_eq!(prepared.counters().connections, 0);
    assert!(
        process_alive(dest_pid),
        "foreign peer reached the destination QEMU"
    );

    // The migration, through both agents.
    let target = TargetAddress::parse(&prepared.address, &prepared.port_map).unwrap();
    let progress_seen = std::sync::Mutex::new(Vec::new());
    // The source agent's /metrics text at each progress sample.
    let scraped = std::sync::Mutex::new(Vec::new());
    let record = |pr| {
        progress_seen.lock().unwrap().push(pr);
        let text = mignet::metrics::text::render(&core1.migration_metrics.families("node1"));
        scraped.lock().unwrap().push(text);
    };
    // The target commits as soon as its guest runs, while the source may
    // still be draining its relays, as the two agents do in a cluster.
    let (result, moved) = tokio::join!(
        core1.migrate(key, "uid-1", &target, &p, std::future::pending(), &record),
        async {
            let incoming = prepared.wait_incoming(Duration::from_secs(120)).await;
            assert_eq!(incoming, IncomingResult::Running);
            prepared.commit(&core2).unwrap()
        },
    );
    let result = result.unwrap();
    assert_eq!(result.outcome, Outcome::Completed, "{result:?}");
    assert_eq!(moved.qmp.run_state().await.unwrap(), "running");

    // The guest continues with the next tick on node 2.
    let last_src = *ticks(&vm.serial_output()).last().unwrap();
    wait_tick_after(|| moved.serial_output(), None, Duration::from_secs(30)).await;
    assert_eq!(
        ticks(&moved.serial_output()).first().copied(),
        Some(last_src + 1),
        "guest did not continue with the next tick"
    );
    assert!(core1.vms.stop(key).unwrap());
    assert!(!process_alive(vm.pid));

    // Per-migration counter: main channel + 2 multifd channels, all bytes.
    assert_eq!(result.bytes.connections, 3, "{:?}", result.bytes);
    // Every relay ended with close_notify: a target that cut its connections
    // on commit showed up here as failed ("closed without close_notify").
    assert_eq!(result.bytes.failed, 0, "{:?}", result.bytes);
    assert!(result.bytes.to_target >= result.transferred, "{result:?}");
    assert!(result.transferred > 64 * MIB, "{result:?}");
    assert!(!progress_seen.lock().unwrap().is_empty());

    // The source's metrics while it ran: KubeVirt's families for the VMI
    // and the stream on migration0; once over, its series are gone. The
    // intruder is counted on the target under its reason.
    let scraped = scraped.into_inner().unwrap();
    let vm_labels = "namespace=\"default\",name=\"vm-ticker\",node=\"node1\"";
    let value = |text: &str, series: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{series} ")))
            .map(|v| v.parse().unwrap())
    };
    let during = scraped
        .iter()
        .rev()
        .find(|t| {
            value(
                t,
                &format!("kubevirt_vmi_migration_data_processed_bytes{{{vm_labels}}}"),
            )
            .is_some_and(|v| v > 0.0)
        })
        .unwrap_or_else(|| panic!("no sample with processed bytes: {scraped:?}"));
    let iface = |i: &str| {
        value(
            during,
            &format!("mignet_migration_interface_bytes{{{vm_labels},interface=\"{i}\",direction=\"tx\"}}"),
        )
        .unwrap_or_else(|| panic!("no {i} series in\n{during}"))
    };
    assert!(iface("migration0") > 16.0 * MIB as f64, "{during}");
    assert!(iface("eth0") < MIB as f64, "{during}");
    assert!(
        value(
            during,
            &format!("mignet_migration_stream_bytes{{{vm_labels},interface=\"migration0\",direction=\"tx\"}}")
        )
        .is_some_and(|v| v > 0.0),
        "{during}"
    );
    let after = mignet::metrics::text::render(&core1.migration_metrics.families("node1"));
    assert!(!after.contains("vm-ticker"), "{after}");
    let target_metrics = mignet::metrics::text::render(&core2.migration_metrics.families("node2"));
    assert_eq!(
        value(
            &target_metrics,
            "mignet_tls_handshake_failures_total{reason=\"unknown_ca\"}"
        ),
        Some(1.0),
        "{target_metrics}"
    );

    // The bytes went over migration0; the pod network saw essentially none.
    let mig_rx = if_stat(&n2.agent_ns, "migration0", "rx_bytes") - mig_rx_before;
    assert!(
        mig_rx >= result.transferred,
        "migration0 received {mig_rx} bytes, QEMU sent {}",
        result.transferred
    );
    for (ns, before) in [&n1.agent_ns, &n2.agent_ns, &n1.node_ns, &n2.node_ns]
        .iter()
        .zip(eth0_before)
    {
        let delta = eth0_bytes(ns) - before;
        assert!(delta < MIB, "eth0 in {ns} carried {delta} bytes");
    }

    // Restarting the agent that now runs the VM does not stop it either.
    let moved_pid = moved.pid;
    let t = *ticks(&moved.serial_output()).last().unwrap();
    let serial = moved.serial_log();
    drop(moved);
    drop(core2);
    let core2 = AgentCore::start(s2).await.unwrap();
    assert_eq!(core2.vms.keys(), vec![key.to_string()]);
    assert_eq!(core2.vms.get(key).unwrap().pid, moved_pid);
    let read = || String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
    wait_tick_after(read, Some(t), Duration::from_secs(20)).await;
    core2.vms.stop(key).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_a_dying_target_agent_leave_the_source_running() {
    let topo = Topology::new("mgak", 2, true);
    let (n1, n2) = (topo.nodes[0].clone(), topo.nodes[1].clone());
    let pki = Pki::new("cluster CA");
    let boot = guest_boot();
    let s1 = agent_settings(&topo, &n1, &pki, &boot, None);
    let s2 = agent_settings(&topo, &n2, &pki, &boot, None);
    let core1 = AgentCore::start(s1).await.unwrap();
    let key = "default/vm-slow";
    // 192 MiB of data at 8 MiB/s: a migration of about 25 s.
    let vm = core1.vms.start(&request(key, 256, 192, 0)).await.unwrap();
    wait_tick_after(|| vm.serial_output(), None, BOOT).await;
    let p = params(None, 8 * MIB);

    // 1. Cancel on request: the source keeps running.
    let core2 = AgentCore::start(s2.clone()).await.unwrap();
    let prepared = core2
        .prepare_target(&vm.request, "uid-c", &p)
        .await
        .unwrap();
    let target = TargetAddress::parse(&prepared.address, &prepared.port_map).unwrap();
    let result = core1
        .migrate(
            key,
            "uid-c",
            &target,
            &p,
            tokio::time::sleep(Duration::from_secs(2)),
            &|_| {},
        )
        .await
        .unwrap();
    assert_eq!(result.outcome, Outcome::Cancelled, "{result:?}");
    assert!(result.bytes.to_target > 0, "{result:?}");
    assert_eq!(vm.qmp.run_state().await.unwrap(), "running");
    drop(prepared);

    // 2. The target agent dies mid-migration: the source records the
    //    failure and its VM keeps running.
    let prepared = core2
        .prepare_target(&vm.request, "uid-k", &p)
        .await
        .unwrap();
    let dest_pid = prepared.pid().unwrap();
    let target = TargetAddress::parse(&prepared.address, &prepared.port_map).unwrap();
    let kill_target = async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            prepared.counters().to_target > MIB,
            "{:?}",
            prepared.counters()
        );
        drop(prepared);
        drop(core2);
    };
    let (result, ()) = tokio::join!(
        core1.migrate(key, "uid-k", &target, &p, std::future::pending(), &|_| {}),
        kill_target
    );
    let result = result.unwrap();
    assert!(!result.completed(), "{result:?}");
    let reason = result.failure_reason().unwrap();
    assert!(
        matches!(result.outcome, Outcome::Failed { .. }),
        "{result:?}"
    );
    assert!(!reason.is_empty());
    assert!(
        !process_alive(dest_pid),
        "destination QEMU outlived its agent"
    );
    assert!(core1.vms.is_alive(key));
    assert_eq!(vm.qmp.run_state().await.unwrap(), "running");
    let t = *ticks(&vm.serial_output()).last().unwrap();
    wait_tick_after(|| vm.serial_output(), Some(t), Duration::from_secs(20)).await;

    // A fresh target afterwards still works (the source is not wedged).
    let core2 = AgentCore::start(s2).await.unwrap();
    let fast = params(None, 0);
    let prepared = core2
        .prepare_target(&vm.request, "uid-ok", &fast)
        .await
        .unwrap();
    let target = TargetAddress::parse(&prepared.address, &prepared.port_map).unwrap();
    let (result, incoming) = tokio::join!(
        core1.migrate(
            key,
            "uid-ok",
            &target,
            &fast,
            std::future::pending(),
            &|_| {}
        ),
        prepared.wait_incoming(Duration::from_secs(120)),
    );
    assert_eq!(result.unwrap().outcome, Outcome::Completed);
    assert_eq!(incoming, IncomingResult::Running);
    prepared.commit(&core2).unwrap();
    core1.vms.stop(key).unwrap();
    assert!(core2.vms.is_alive(key));
    core2.vms.stop(key).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_limits_abort_and_the_source_keeps_running() {
    let topo = Topology::new("mgam", 2, true);
    let (n1, n2) = (topo.nodes[0].clone(), topo.nodes[1].clone());
    let pki = Pki::new("cluster CA");
    let boot = guest_boot();
    let core1 = AgentCore::start(agent_settings(&topo, &n1, &pki, &boot, None))
        .await
        .unwrap();
    let core2 = AgentCore::start(agent_settings(&topo, &n2, &pki, &boot, None))
        .await
        .unwrap();
    let key = "default/vm-dirty";
    // 64 MiB rewritten at 32 MiB/s against a 4 MiB/s cap: never converges.
    let vm = core1.vms.start(&request(key, 256, 64, 32)).await.unwrap();
    wait_tick_after(|| vm.serial_output(), None, BOOT).await;

    // progressTimeout (short for the test), completion budget off.
    let mut p = params(None, 4 * MIB);
    p.progress_timeout = Duration::from_secs(4);
    p.completion_timeout_per_gib = Duration::ZERO;
    let prepared = core2
        .prepare_target(&vm.request, "uid-p", &p)
        .await
        .unwrap();
    let target = TargetAddress::parse(&prepared.address, &prepared.port_map).unwrap();
    let r = core1
        .migrate(key, "uid-p", &target, &p, std::future::pending(), &|_| {})
        .await
        .unwrap();
    assert!(
        r.failure_reason().unwrap().starts_with("ProgressTimeout"),
        "{r:?}"
    );
    assert!(r.cancel_confirmed, "{r:?}");
    assert_eq!(vm.qmp.run_state().await.unwrap(), "running");
    drop(prepared);

    // Completion budget: 256 MiB at 40 s/GiB = 10 s, progress check off.
    let mut p = params(None, 4 * MIB);
    p.progress_timeout = Duration::ZERO;
    p.completion_timeout_per_gib = Duration::from_secs(40);
    let prepared = core2
        .prepare_target(&vm.request, "uid-b", &p)
        .await
        .unwrap();
    let target = TargetAddress::parse(&prepared.address, &prepared.port_map).unwrap();
    let r = core1
        .migrate(key, "uid-b", &target, &p, std::future::pending(), &|_| {})
        .await
        .unwrap();
    assert!(
        r.failure_reason().unwrap().starts_with("CompletionTimeout"),
        "{r:?}"
    );
    assert!(r.elapsed >= Duration::from_secs(10), "{r:?}");
    assert_eq!(vm.qmp.run_state().await.unwrap(), "running");
    let t = *ticks(&vm.serial_output()).last().unwrap();
    wait_tick_after(|| vm.serial_output(), Some(t), Duration::from_secs(20)).await;
    drop(prepared);
    core1.vms.stop(key).unwrap();
}
