//! `cargo bench -p mignet --bench agent_migration` (root; QEMU + guest image)
//!
//! Side by side in one run, on the same two-node topology (agent pods with
//! `migration0` = macvlan on each node's eth1, from our CNI plugin and the
//! seed NAD, over the migration bridge):
//! - (a) QEMU -> QEMU directly, plaintext TCP between the two agent-pod
//!   namespaces over migration0 (the same veth/bridge path);
//! - (b) through our two agents: source QEMU -> unix -> agent ==mTLS over
//!   migration0==> agent -> unix -> destination QEMU.
//!
//! A 1 GiB TCG guest with ~0.9 GiB of non-zero memory per side (filled once;
//! each run hops it to the other node). Runs of (a) and (b) alternate per
//! configuration so machine noise hits both alike. Prints MiB/s (QEMU's
//! transferred / total-time), total time, downtime, the ratio b/a, and for
//! capped runs the steady rate against the cap (target within +-5%).
//!
//! Env: MIGNET_BENCH_FILL_MIB (900), MIGNET_BENCH_MEMORY_MIB (1024),
//! MIGNET_BENCH_REPEAT (3, uncapped configurations only).

#[path = "../tests/agent_support/mod.rs"]
mod agent_support;

use std::sync::Mutex;
use std::time::Duration;

use agent_support::{agent_settings, guest_boot, Pki, Topology};
use mignet::agent::{
    AgentCore, IncomingResult, MigrationParams, Progress, TargetAddress, VmRequest,
};
use mignet_dataplane::qemu::migration::Outcome;
use mignet_dataplane::qemu::testbed::{
    bench_env, bench_main, benchmark_cases, migrate_and_measure, wait_serial, GuestImage, RunDir,
};
use mignet_dataplane::qemu::{MigrationSettings, QmpClient, VmProcess};

const MIB: u64 = 1 << 20;

/// One measured migration.
#[derive(Debug, Clone)]
struct Run {
    mib: f64,
    mib_s: f64,
    steady_mib_s: f64,
    total_s: f64,
    downtime_ms: f64,
}

fn main() {
    bench_main("agent_migration", run);
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let memory = bench_env::<u64>("MIGNET_BENCH_MEMORY_MIB", 1024);
    let fill = bench_env::<u64>("MIGNET_BENCH_FILL_MIB", 900);
    let repeat = bench_env::<u64>("MIGNET_BENCH_REPEAT", 3).max(1);
    let topo = Topology::new("mgab", 2, true);
    let (n1, n2) = (topo.nodes[0].clone(), topo.nodes[1].clone());
    let pki = Pki::new("cluster CA");
    let boot = guest_boot();
    let image = GuestImage::ensure()?;
    let cases = benchmark_cases();

    // (a) a guest that migrates directly between the agent-pod namespaces.
    let mut direct_dirs = vec![RunDir::new("abd")?];
    let mut spec = image.vm_spec("direct-0", direct_dirs[0].path(), memory, fill, 0);
    spec.netns = Some(n1.agent_ns.clone());
    let mut dvm = VmProcess::start(&spec).await?;
    let mut dqmp = QmpClient::connect(dvm.qmp_socket()).await?;

    // (b) a guest run by agent 1, migrating through the agents.
    let cores = [
        AgentCore::start(agent_settings(&topo, &n1, &pki, &boot, None)).await?,
        AgentCore::start(agent_settings(&topo, &n2, &pki, &boot, None)).await?,
    ];
    let key = "bench/vm";
    let req = VmRequest {
        key: key.into(),
        memory_mib: memory,
        vcpus: 1,
        cpu_model: None,
        kernel_args: format!("mignet.fill_mib={fill} mignet.dirty_mib_s=0"),
    };
    let t0 = std::time::Instant::now();
    let info = cores[0].vms.start(&req).await?;
    wait_serial(&dvm, "mignet: ready", Duration::from_secs(300)).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while !info.serial_output().contains("mignet: ready") {
        if std::time::Instant::now() > deadline {
            return Err("agent guest did not get ready".into());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(info);
    eprintln!(
        "agent_migration: two guests of {memory} MiB with {fill} MiB filled, ready after {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    let mut direct: Vec<(usize, Run)> = Vec::new();
    let mut agents: Vec<(usize, Run)> = Vec::new();
    let (mut direct_in_1, mut agent_on) = (true, 0usize);
    let mut hop = 0u32;
    for (ci, (label, settings)) in cases.iter().enumerate() {
        let n = if settings.max_bandwidth > 0 {
            1
        } else {
            repeat
        };
        for _ in 0..n {
            hop += 1;
            // (a) direct
            let (dest_ns, dest_ip) = if direct_in_1 {
                (&n2.agent_ns, n2.migration_ip.unwrap())
            } else {
                (&n1.agent_ns, n1.migration_ip.unwrap())
            };
            let dir = RunDir::new("abd")?;
            let mut dspec = image.vm_spec(&format!("direct-{hop}"), dir.path(), memory, fill, 0);
            dspec.netns = Some(dest_ns.clone());
            let uri = format!("tcp:{dest_ip}:{}", 4444 + hop);
            let (nvm, nqmp, m) = migrate_and_measure(&dqmp, &dspec, settings, &uri, &uri).await?;
            let r = Run {
                mib: m.transferred as f64 / MIB as f64,
                mib_s: m.mib_s,
                steady_mib_s: m.steady_mib_s,
                total_s: m.total_time.as_secs_f64(),
                downtime_ms: m.downtime.as_millis() as f64,
            };
            eprintln!("agent_migration: {label}: direct {:.1} MiB/s", r.mib_s);
            direct.push((ci, r));
            drop(dqmp);
            dvm.kill()?;
            (dvm, dqmp) = (nvm, nqmp);
            direct_dirs.push(dir);
            direct_in_1 = !direct_in_1;

            // (b) through the agents
            let (src, dst) = (&cores[agent_on], &cores[1 - agent_on]);
            let r = through_agents(src, dst, &req, settings, &format!("bench-{hop}")).await?;
            eprintln!("agent_migration: {label}: agents {:.1} MiB/s", r.mib_s);
            agents.push((ci, r));
            agent_on = 1 - agent_on;
        }
    }
    drop(dqmp);
    dvm.kill()?;
    for c in &cores {
        c.vms.stop(key)?;
    }
    print_table(&cases, &direct, &agents);
    Ok(())
}

async fn through_agents(
    src: &AgentCore,
    dst: &AgentCore,
    req: &VmRequest,
    settings: &MigrationSettings,
    uid: &str,
) -> Result<Run, Box<dyn std::error::Error>> {
    let params = MigrationParams {
        multifd_channels: settings.multifd_channels,
        bandwidth_bytes_per_sec: settings.max_bandwidth,
        downtime_limit_ms: settings.downtime_limit_ms,
        progress_timeout: Duration::from_secs(60),
        completion_timeout_per_gib: Duration::ZERO,
        setup_timeout: Duration::from_secs(30),
        sample_interval: Duration::from_millis(100),
    };
    let prepared = dst.prepare_target(req, uid, &params).await?;
    let target = TargetAddress::parse(&prepared.address, &prepared.port_map)?;
    let samples = Mutex::new(Vec::<Progress>::new());
    let record = |p: Progress| samples.lock().unwrap().push(p);
    let (result, incoming) = tokio::join!(
        src.migrate(
            &req.key,
            uid,
            &target,
            &params,
            std::future::pending(),
            &record
        ),
        prepared.wait_incoming(Duration::from_secs(600)),
    );
    let result = result?;
    if result.outcome != Outcome::Completed || incoming != IncomingResult::Running {
        return Err(format!("through agents: {:?} / {incoming:?}", result.outcome).into());
    }
    prepared.commit(dst)?;
    src.vms.stop(&req.key)?;
    // Steady rate between the first and last samples still sending.
    let s = samples.into_inner().unwrap();
    let active: Vec<&Progress> = s
        .iter()
        .filter(|p| p.transferred > 0 && p.remaining > 0)
        .collect();
    let steady = match (active.first(), active.last()) {
        (Some(a), Some(b)) if b.elapsed > a.elapsed => {
            (b.transferred - a.transferred) as f64
                / MIB as f64
                / (b.elapsed - a.elapsed).as_secs_f64()
        }
        _ => 0.0,
    };
    Ok(Run {
        mib: result.transferred as f64 / MIB as f64,
        mib_s: result.mib_s(),
        steady_mib_s: steady,
        total_s: result.total_time.as_secs_f64(),
        downtime_ms: result.downtime.as_millis() as f64,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn print_table(
    cases: &[(&'static str, MigrationSettings)],
    direct: &[(usize, Run)],
    agents: &[(usize, Run)],
) {
    let pick = |runs: &[(usize, Run)], ci: usize| -> Vec<Run> {
        runs.iter()
            .filter(|(i, _)| *i == ci)
            .map(|(_, r)| r.clone())
            .collect()
    };
    let med = |rs: &[Run], f: fn(&Run) -> f64| median(rs.iter().map(f).collect());
    println!();
    println!("Live migration of a TCG guest between two lab nodes: (a) QEMU->QEMU direct, plaintext TCP over migration0;");
    println!("(b) through the mignet agents, mutual TLS over migration0. Medians; MiB/s = transferred / QEMU total-time.");
    println!(
        "| {:<26} | {:>4} | {:>9} | {:>9} | {:>6} | {:>9} | {:>9} | {:>11} | {:>11} | {:>14} |",
        "configuration",
        "runs",
        "a MiB/s",
        "b MiB/s",
        "b/a",
        "a total s",
        "b total s",
        "a downtime",
        "b downtime",
        "b steady vs cap"
    );
    println!(
        "|{:-<28}|{:->6}|{:->11}|{:->11}|{:->8}|{:->11}|{:->11}|{:->13}|{:->13}|{:->16}|",
        "", "", "", "", "", "", "", "", "", ""
    );
    for (ci, (label, settings)) in cases.iter().enumerate() {
        let (a, b) = (pick(direct, ci), pick(agents, ci));
        if a.is_empty() || b.is_empty() {
            continue;
        }
        let (ra, rb) = (med(&a, |r| r.mib_s), med(&b, |r| r.mib_s));
        let vs_cap = if settings.max_bandwidth > 0 {
            let cap = settings.max_bandwidth as f64 / MIB as f64;
            let steady = med(&b, |r| r.steady_mib_s);
            let dev = (steady - cap) / cap * 100.0;
            format!(
                "{steady:.1} {dev:+.1}% {}",
                if dev.abs() <= 5.0 { "ok" } else { "OUT" }
            )
        } else {
            "-".into()
        };
        println!(
            "| {:<26} | {:>4} | {:>9.1} | {:>9.1} | {:>6.2} | {:>9.2} | {:>9.2} | {:>8.0} ms | {:>8.0} ms | {:>14} |",
            label,
            a.len(),
            ra,
            rb,
            if ra > 0.0 { rb / ra } else { 0.0 },
            med(&a, |r| r.total_s),
            med(&b, |r| r.total_s),
            med(&a, |r| r.downtime_ms),
            med(&b, |r| r.downtime_ms),
            vs_cap
        );
        let _ = med(&b, |r| r.mib);
    }
}
