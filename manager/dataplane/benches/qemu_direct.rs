//! `cargo bench -p mignet-dataplane --bench qemu_direct`
//!
//! QEMU -> QEMU live migration, directly over TCP on a veth pair between two
//! network namespaces (plaintext, no agents): the baseline that the
//! through-the-agents (mTLS) numbers are compared with. A 1 GiB TCG guest with
//! ~0.9 GiB of non-zero memory (plus the kernel's own) hops between the two
//! namespaces, once per run, so the memory is filled only once.
//!
//! Prints a table: transferred MiB, MiB/s over QEMU's total time, the steady
//! rate between the first and last `active` sample, total time, downtime, and
//! for the capped runs the deviation from the cap (target within +-5%).
//!
//! Env: MIGNET_BENCH_FILL_MIB (default 900), MIGNET_BENCH_MEMORY_MIB (1024),
//! MIGNET_BENCH_REPEAT (3; uncapped configurations only).

use std::time::Duration;

use mignet_dataplane::qemu::testbed::{
    bench_env, bench_main, benchmark_cases, migrate_and_measure, wait_serial, GuestImage,
    MigrationMeasurement, NetnsPair, RunDir,
};
use mignet_dataplane::qemu::{MigrationSettings, QmpClient, VmProcess};

const MIB: u64 = 1 << 20;

struct Case {
    label: &'static str,
    settings: MigrationSettings,
}

fn main() {
    bench_main("qemu_direct", run);
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let memory = bench_env::<u64>("MIGNET_BENCH_MEMORY_MIB", 1024);
    let fill = bench_env::<u64>("MIGNET_BENCH_FILL_MIB", 900);
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

    // Uncapped runs are short and noisy on a shared 2-core machine: repeat
    // them and report the median (and the range). Capped runs take ~15 s and
    // are steady by construction.
    let repeat = bench_env::<u64>("MIGNET_BENCH_REPEAT", 3).max(1);
    let mut runs: Vec<(usize, MigrationMeasurement)> = Vec::new();
    let mut in_a = true;
    let mut hop = 0;
    for (ci, case) in cases.iter().enumerate() {
        let n = if case.settings.max_bandwidth > 0 {
            1
        } else {
            repeat
        };
        for _ in 0..n {
            hop += 1;
            let (dest_ns, dest_addr) = if in_a {
                (&net.b, net.addr_b)
            } else {
                (&net.a, net.addr_a)
            };
            let dir = RunDir::new("bench")?;
            let mut dspec = image.vm_spec(&format!("bench-{hop}"), dir.path(), memory, fill, 0);
            dspec.netns = Some(dest_ns.clone());
            let uri = format!("tcp:{dest_addr}:{}", 4444 + hop);
            eprintln!("qemu_direct: {} (hop {hop}) ...", case.label);
            let (dvm, dqmp, m) =
                migrate_and_measure(&qmp, &dspec, &case.settings, &uri, &uri).await?;
            eprintln!(
                "qemu_direct:   {:.0} MiB in {:.2} s (wall {:.2} s): {:.1} MiB/s, downtime {} ms",
                m.transferred as f64 / MIB as f64,
                m.total_time.as_secs_f64(),
                m.wall.as_secs_f64(),
                m.mib_s,
                m.downtime.as_millis()
            );
            runs.push((ci, m));
            // The old source is paused (postmigrate): stop it, continue from
            // the destination.
            drop(qmp);
            vm.kill()?;
            vm = dvm;
            qmp = dqmp;
            dirs.push(dir);
            in_a = !in_a;
        }
    }
    drop(qmp);
    vm.kill()?;

    print_table(&cases, &runs);
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn print_table(cases: &[Case], runs: &[(usize, MigrationMeasurement)]) {
    println!();
    println!("QEMU -> QEMU direct, plaintext TCP over veth between two namespaces (TCG guest)");
    println!("medians over the runs; MiB/s = transferred / QEMU total-time; steady = between first and last active sample");
    println!(
        "| {:<26} | {:>4} | {:>8} | {:>8} | {:>15} | {:>12} | {:>7} | {:>8} | {:>11} |",
        "configuration",
        "runs",
        "MiB sent",
        "MiB/s",
        "MiB/s min-max",
        "steady MiB/s",
        "total s",
        "downtime",
        "vs cap"
    );
    println!(
        "|{:-<28}|{:->6}|{:->10}|{:->10}|{:->17}|{:->14}|{:->9}|{:->10}|{:->13}|",
        "", "", "", "", "", "", "", "", ""
    );
    for (ci, case) in cases.iter().enumerate() {
        let ms: Vec<&MigrationMeasurement> = runs
            .iter()
            .filter(|(i, _)| *i == ci)
            .map(|(_, m)| m)
            .collect();
        if ms.is_empty() {
            continue;
        }
        let rate: Vec<f64> = ms.iter().map(|m| m.mib_s).collect();
        let lo = rate.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = rate.iter().copied().fold(0.0, f64::max);
        let steady = median(ms.iter().map(|m| m.steady_mib_s).collect());
        let vs_cap = if case.settings.max_bandwidth > 0 {
            let cap = case.settings.max_bandwidth as f64 / MIB as f64;
            let dev = (steady - cap) / cap * 100.0;
            format!("{dev:+.1}% {}", if dev.abs() <= 5.0 { "ok" } else { "OUT" })
        } else {
            "-".into()
        };
        println!(
            "| {:<26} | {:>4} | {:>8.0} | {:>8.1} | {:>15} | {:>12.1} | {:>7.2} | {:>6} ms | {:>11} |",
            case.label,
            ms.len(),
            median(ms.iter().map(|m| m.transferred as f64 / MIB as f64).collect()),
            median(rate),
            format!("{lo:.0}-{hi:.0}"),
            steady,
            median(ms.iter().map(|m| m.total_time.as_secs_f64()).collect()),
            median(ms.iter().map(|m| m.downtime.as_millis() as f64).collect()),
            vs_cap
        );
    }
}
