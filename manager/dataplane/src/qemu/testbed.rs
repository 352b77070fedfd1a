//! Helpers for tests and benchmarks that run real QEMU guests: per-VM run
//! directories that clean up after themselves, network-namespace pairs,
//! waiting on the serial console, and a reusable
//! migration measurement (used by the `qemu_direct` benchmark and by the
//! through-the-agents benchmark, which passes other URIs).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub use super::lab_guest::{ticks, GuestImage, GuestImageError};
use super::migration::{self, MigrationError, MigrationSettings, MigrationStatus, Outcome};
use super::process::{process_alive, VmError, VmProcess, VmSpec};
use super::qmp::{QmpClient, QmpError};
use crate::monitor::MonitorConfig;

#[derive(Debug, thiserror::Error)]
pub enum TestbedError {
    #[error(transparent)]
    GuestImage(#[from] GuestImageError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error(transparent)]
    Migration(#[from] MigrationError),
    #[error("VM {name}: {what} did not appear on the serial console within {after:?}; output:\n{output}")]
    SerialTimeout {
        name: String,
        what: String,
        after: Duration,
        output: String,
    },
    #[error("migration did not complete: {outcome:?}")]
    NotCompleted { outcome: Outcome },
}

/// A short, unique directory under /tmp for one VM (unix socket paths must
/// stay under 108 bytes). On drop it kills any QEMU whose pid file is inside
/// (a safety net for VMs whose guard never existed, e.g. started by another
/// process) and removes the directory.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    pub fn new(prefix: &str) -> std::io::Result<RunDir> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("mq-{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(RunDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.path.join(p)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let pid_file = self.path.join("qemu.pid");
        let qmp = self.path.join("qmp.sock");
        if pid_file.exists() {
            if let Ok(vm) = VmProcess::reattach("leftover", &pid_file, &qmp) {
                drop(vm); // kills it
            }
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Two network namespaces joined by a veth pair (`eth0` in each), with
/// addresses from a /24 only these namespaces use, for migrations over TCP
/// between "nodes". Created with `ip` and removed on drop. QEMU joins one
/// through [`VmSpec::netns`].
#[derive(Debug)]
pub struct NetnsPair {
    pub a: String,
    pub b: String,
    pub addr_a: std::net::Ipv4Addr,
    pub addr_b: std::net::Ipv4Addr,
}

impl NetnsPair {
    /// `subnet` is the third octet of 10.231.x.0/24 (use a different one per
    /// concurrent pair to keep captures readable; namespaces isolate anyway).
    pub fn new(prefix: &str, subnet: u8) -> std::io::Result<NetnsPair> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let id = format!("{prefix}-{}-{n}", std::process::id());
        let pair = NetnsPair {
            a: format!("{id}-a"),
            b: format!("{id}-b"),
            addr_a: std::net::Ipv4Addr::new(10, 231, subnet, 1),
            addr_b: std::net::Ipv4Addr::new(10, 231, subnet, 2),
        };
        // From here on, drop cleans up whatever was created.
        ip(&["netns", "add", &pair.a])?;
        ip(&["netns", "add", &pair.b])?;
        // Created inside `a` with its peer directly in `b`: nothing touches
        // the root namespace.
        ip(&[
            "-n", &pair.a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
            &pair.b,
        ])?;
        for (ns, addr) in [(&pair.a, pair.addr_a), (&pair.b, pair.addr_b)] {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(pair)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            if let Err(e) = ip(&["netns", "del", ns]) {
                tracing::warn!(netns = %ns, error = %e, "could not delete test namespace");
            }
        }
    }
}

fn ip(args: &[&str]) -> std::io::Result<()> {
    let out = std::process::Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Waits until the VM's serial console contains `needle`.
pub async fn wait_serial(
    vm: &VmProcess,
    needle: &str,
    timeout: Duration,
) -> Result<(), TestbedError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let out = vm.serial_output();
        if out.contains(needle) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline || !process_alive(vm.pid()) {
            return Err(TestbedError::SerialTimeout {
                name: vm.name().to_string(),
                what: format!("{needle:?}"),
                after: timeout,
                output: out,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the VM prints a tick greater than `after`; returns it.
pub async fn wait_tick_after(
    vm: &VmProcess,
    after: Option<u64>,
    timeout: Duration,
) -> Result<u64, TestbedError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let out = vm.serial_output();
        if let Some(&t) = ticks(&out).last() {
            if after.is_none_or(|a| t > a) {
                return Ok(t);
            }
        }
        if tokio::time::Instant::now() >= deadline || !process_alive(vm.pid()) {
            return Err(TestbedError::SerialTimeout {
                name: vm.name().to_string(),
                what: format!("a tick after {after:?}"),
                after: timeout,
                output: out,
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Throughput and timing of one completed migration.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationMeasurement {
    /// Bytes QEMU reported as transferred.
    pub transferred: u64,
    /// QEMU's `total-time`.
    pub total_time: Duration,
    /// QEMU's `downtime` (guest paused for the final copy).
    pub downtime: Duration,
    /// transferred / total-time, MiB/s.
    pub mib_s: f64,
    /// Rate over the steady middle of the migration (between the first and
    /// the last `active` sample), MiB/s: what a bandwidth cap is compared with.
    pub steady_mib_s: f64,
    /// Wall time from `migrate` until completion was seen (sampling every
    /// 100 ms, so up to that much more than `total_time`).
    pub wall: Duration,
    /// The final `query-migrate` sample on the source.
    pub last: migration::MigrationSample,
}

/// The configurations every migration benchmark runs, in order, so the direct
/// baseline and the through-the-agents numbers line up row by row.
pub fn benchmark_cases() -> Vec<(&'static str, MigrationSettings)> {
    const MIB: u64 = 1 << 20;
    let d = MigrationSettings::default();
    vec![
        ("no multifd (1 conn)", d.clone()),
        (
            "multifd 1 channel",
            MigrationSettings {
                multifd_channels: Some(1),
                ..d.clone()
            },
        ),
        (
            "multifd 4 channels",
            MigrationSettings {
                multifd_channels: Some(4),
                ..d.clone()
            },
        ),
        (
            "cap 64 MiB/s, no multifd",
            MigrationSettings {
                max_bandwidth: 64 * MIB,
                ..d.clone()
            },
        ),
        (
            "cap 64 MiB/s, multifd 4",
            MigrationSettings {
                multifd_channels: Some(4),
                max_bandwidth: 64 * MIB,
                ..d
            },
        ),
    ]
}

/// Migrates `source` to a fresh destination started from `dest_spec`: the
/// destination listens on `dest_listen_uri`, the source connects to
/// `source_connect_uri` (the same URI for a direct migration; a proxy's
/// socket when our agents carry the stream). Returns the new running VM and
/// the measurement. The source VM is left in `postmigrate` (paused).
pub async fn migrate_and_measure(
    source: &QmpClient,
    dest_spec: &VmSpec,
    settings: &MigrationSettings,
    dest_listen_uri: &str,
    source_connect_uri: &str,
) -> Result<(VmProcess, QmpClient, MigrationMeasurement), TestbedError> {
    let mut spec = dest_spec.clone();
    spec.incoming_defer = true;
    let dest = VmProcess::start(&spec).await?;
    let dest_qmp = QmpClient::connect_retry(dest.qmp_socket(), Duration::from_secs(10)).await?;
    migration::prepare_destination(&dest_qmp, settings, dest_listen_uri).await?;
    let limits = MonitorConfig {
        progress_timeout: Duration::from_secs(60),
        completion_timeout_per_gib: Duration::ZERO,
        data_size_bytes: 0,
        setup_timeout: Duration::from_secs(30),
    };
    let report = migration::run_monitored(
        source,
        settings,
        source_connect_uri,
        &limits,
        Duration::from_millis(100),
    )
    .await?;
    if report.outcome != Outcome::Completed {
        return Err(TestbedError::NotCompleted {
            outcome: report.outcome,
        });
    }
    let last = &report.last;
    let ram = last.ram.clone().unwrap_or(migration::RamStats {
        transferred: 0,
        remaining: 0,
        total: 0,
        dirty_sync_count: 0,
        mbps: 0.0,
        dirty_pages_rate: 0,
    });
    let total_time = Duration::from_millis(last.total_time_ms.unwrap_or(0));
    let actives: Vec<_> = report
        .samples
        .iter()
        .filter(|(_, s)| s.status == MigrationStatus::Active)
        .filter_map(|(t, s)| s.ram.as_ref().map(|r| (*t, r.transferred)))
        .collect();
    let steady_mib_s = match (actives.first(), actives.last()) {
        (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
            (b1 - b0) as f64 / (1 << 20) as f64 / (*t1 - *t0).as_secs_f64()
        }
        _ => 0.0,
    };
    let mib_s = if total_time.is_zero() {
        0.0
    } else {
        ram.transferred as f64 / (1 << 20) as f64 / total_time.as_secs_f64()
    };
    Ok((
        dest,
        dest_qmp,
        MigrationMeasurement {
            transferred: ram.transferred,
            total_time,
            downtime: Duration::from_millis(last.downtime_ms.unwrap_or(0)),
            mib_s,
            steady_mib_s,
            last: last.clone(),
            wall: report.elapsed,
        },
    ))
}

/// A benchmark knob from the environment, or `default` when unset. A value
/// that does not parse stops the benchmark naming the variable and the
/// value: a typo must not quietly measure the default instead.
pub fn bench_env<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Err(_) => default,
        Ok(v) => v.trim().parse().unwrap_or_else(|_| {
            eprintln!("{name}={v:?} is not a valid value");
            std::process::exit(2)
        }),
    }
}

/// `main` of a benchmark binary: `cargo bench` passes `--bench` and gets
/// the measurement; `cargo test --benches` runs the binary without it, and
/// then it only shows that it starts. Exits 1 with the error on failure.
pub fn bench_main<F>(name: &str, run: impl FnOnce() -> F)
where
    F: std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>,
{
    if !std::env::args().any(|a| a == "--bench") {
        println!("{name}: run with `cargo bench` to measure");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(run()) {
        eprintln!("{name}: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ticks_between_other_output() {
        let s = "memload: filled 10 MiB\nmignet: ready\ntick 0\ntick 1\r\n[  3.1] random kernel line\ntick 2\ntick x\n";
        assert_eq!(ticks(s), vec![0, 1, 2]);
        assert!(ticks("").is_empty());
    }

    #[test]
    fn run_dirs_are_unique_short_and_removed() {
        let a = RunDir::new("t").unwrap();
        let b = RunDir::new("t").unwrap();
        assert_ne!(a.path(), b.path());
        assert!(a.join("qmp.sock").as_os_str().len() < 100);
        let p = a.path().to_path_buf();
        drop(a);
        assert!(!p.exists());
    }
}
