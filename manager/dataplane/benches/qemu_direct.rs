//! `cargo bench -p mignet-dataplane --bench qemu_direct`
//!
//! QEMU -> QEMU live migration, directly over TCP on a veth pair between two
//! network namespaces (plaintext, no agents): the baseline that the
//! through-the-agents (mTLS) numbers are compared with. A 1 GiB TCG guest with
//! ~0.9 GiB of non-zero memory (plus the kernel's own) hops between the two
//! namespaces, once per configuration, so the memory is filled only once.
//!
//! Prints a table: transferred MiB, MiB/s over QEMU's total time, the steady
//! rate between the first and last `active` sample, total time, downtime, and
//! for the capped runs the deviation from the cap (target within +-5%).
//!
//! Env: MIGNET_BENCH_FILL_MIB (default 900), MIGNET_BENCH_MEMORY_MIB (1024).

use std::time::Duration;

use mignet_dataplane::qemu::testbed::{
    benchmark_cases, migrate_and_measure, wait_serial, GuestImage, MigrationMeasurement, NetnsPair,
    RunDir,
};
use mignet_dataplane::qemu::{MigrationSettings, QmpClient, VmProcess};

const MIB: u64 = 1 << 20;

struct Case {
    label: &'static str,
    settings: MigrationSettings,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs us without
    // it: then only check that we start.
    if !std::env::args().any(|a| a == "--bench") {
        println!("qemu_direct: run with `cargo bench` to measure");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run()) {
        eprintln!("qemu_direct: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let memory = env_u64("MIGNET_BENCH_MEMORY_MIB", 1024);
    let fill = env_u64("MIGNET_BENCH_FILL_MIB", 900);
    let image = GuestImage::ensure()?;
    let net = NetnsPair::new("mqb", 77)?;
    let cases: Vec<Case> = benchmark_cases()
        .into_iter()
        .map(|(label, settings)| Case { label, settings })
        .collect();

    // Source in namespace a; each run migrates to the other namespace.
    let mut dirs = vec![RunDir::new("bench")?];
    let mut spec = image.vm_spec("bench-0", dirs[0].path(), memory, fill, 0);
    spec.netns = Some(net.a.clone());
    let t0 = std::time::Instant::now();
    let mut vm = VmProcess::start(&spec).await?;
    let mut qmp = QmpClient::connect(vm.qmp_socket()).await?;
    wait_serial(&vm, "mignet: ready", Duration::from_secs(300)).await?;
    eprintln!(
        "qemu_direct: guest {memory} MiB with {fill} MiB filled, ready after {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    let mut rows = Vec::new();
    let mut in_a = true;
    for (i, case) in cases.iter().enumerate() {
        let (dest_ns, dest_addr) = if in_a {
            (&net.b, net.addr_b)
        } else {
            (&net.a, net.addr_a)
        };
        let dir = RunDir::new("bench")?;
        let mut dspec = image.vm_spec(&format!("bench-{}", i + 1), dir.path(), memory, fill, 0);
        dspec.netns = Some(dest_ns.clone());
        let uri = format!("tcp:{dest_addr}:{}", 4444 + i);
        eprintln!("qemu_direct: {} ...", case.label);
        let (dvm, dqmp, m) = migrate_and_measure(&qmp, &dspec, &case.settings, &uri, &uri).await?;
        rows.push((case, m));
        // The old source is paused (postmigrate): stop it, continue from the
        // destination.
        drop(qmp);
        vm.kill()?;
        vm = dvm;
        qmp = dqmp;
        dirs.push(dir);
        in_a = !in_a;
    }
    drop(qmp);
    vm.kill()?;

    print_table(&rows);
    Ok(())
}

fn print_table(rows: &[(&Case, MigrationMeasurement)]) {
    println!();
    println!("QEMU -> QEMU direct, plaintext TCP over veth between two namespaces (TCG guest)");
    println!(
        "| {:<26} | {:>9} | {:>8} | {:>10} | {:>9} | {:>10} | {:>13} |",
        "configuration", "MiB sent", "MiB/s", "steady MiB/s", "total s", "downtime ms", "vs cap"
    );
    println!(
        "|{:-<28}|{:->11}|{:->10}|{:->14}|{:->11}|{:->12}|{:->15}|",
        "", "", "", "", "", "", ""
    );
    for (case, m) in rows {
        let vs_cap = if case.settings.max_bandwidth > 0 {
            let cap = case.settings.max_bandwidth as f64 / MIB as f64;
            let dev = (m.steady_mib_s - cap) / cap * 100.0;
            format!("{dev:+.1}% {}", if dev.abs() <= 5.0 { "ok" } else { "OUT" })
        } else {
            "-".into()
        };
        println!(
            "| {:<26} | {:>9.0} | {:>8.1} | {:>12.1} | {:>9.2} | {:>11} | {:>13} |",
            case.label,
            m.transferred as f64 / MIB as f64,
            m.mib_s,
            m.steady_mib_s,
            m.total_time.as_secs_f64(),
            m.downtime.as_millis(),
            vs_cap
        );
    }
}
