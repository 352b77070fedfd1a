//! Migration metrics scraped during a real migration (issue 18, item 2;
//! root, real QEMU/TCG guests in the lab): the source agent's `/metrics`
//! carries KubeVirt's domain-stats families for the running migration
//! (labels namespace, name, node; processed bytes growing, remaining
//! shrinking), the cap in force, and the bytes per interface (migration0
//! carried the stream, the pod's eth0 next to nothing); the controller's
//! `/metrics` counts it running, then as succeeded, with its end time. Once
//! it is over, its gauges are gone from the agent.

mod lab_common;
mod reliability;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use mignet::api::MigrationPhase;
use reliability::{Bed, Guest, NS};

/// 448 MiB of non-zero memory at 32Mi: ~14 s of transfer to watch.
const GUEST: Guest = Guest {
    memory_mib: 512,
    fill_mib: 448,
    dirty_mib_s: 0,
};

const CAP: u64 = 32 << 20;

fn scrape(addr_file: &std::path::Path) -> String {
    let addr = std::fs::read_to_string(addr_file)
        .unwrap_or_else(|e| panic!("{}: {e}", addr_file.display()));
    let mut s = std::net::TcpStream::connect(addr.trim()).expect("connecting to /metrics");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.0 200"), "{out}");
    out
}

/// The value of series `name{labels}` (labels exactly as rendered).
fn value(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().unwrap())
}

#[test]
fn kubevirt_families_and_interface_bytes_during_a_lab_migration() {
    let cap = format!("bandwidthPerMigration={}Mi", CAP >> 20);
    let bed = Bed::up("met", 2, &[&cap]);
    bed.vm("met1", GUEST);
    bed.wait_booted(&["met1"]);
    let (source, _) = bed.placement("met1").expect("the VM runs");
    let agent = mignet::lab::agent_metrics_addr_file(&bed.lab.dir, &source);
    let controller = mignet::lab::controller_metrics_addr_file(&bed.lab.dir);

    let vmim = bed.migrate("met1");
    bed.wait_running(&vmim, Duration::from_secs(120))
        .unwrap_or_else(|end| panic!("{vmim} ended before Running: {end:?}"));
    let vm = format!("namespace=\"{NS}\",name=\"met1\",node=\"{source}\"");
    let iface = |i: &str, d: &str| format!("{vm},interface=\"{i}\",direction=\"{d}\"");

    // Samples of the agent's families while the migration runs.
    let mut samples: Vec<(f64, f64, String)> = Vec::new();
    let mut controller_running = false;
    let mut last_controller = String::new();
    let mut scrapes = 0;
    let t0 = Instant::now();
    while bed.phase(&vmim) == Some(MigrationPhase::Running)
        && t0.elapsed() < Duration::from_secs(120)
    {
        let text = scrape(&agent);
        if let (Some(p), Some(r)) = (
            value(&text, "kubevirt_vmi_migration_data_processed_bytes", &vm),
            value(&text, "kubevirt_vmi_migration_data_remaining_bytes", &vm),
        ) {
            samples.push((p, r, text));
        }
        let c = scrape(&controller);
        controller_running |=
            value(&c, "kubevirt_vmi_migrations_in_running_phase", "") == Some(1.0);
        last_controller = c;
        scrapes += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    let end = bed.wait_end(&vmim, Duration::from_secs(300));
    assert!(end.succeeded(), "{end:?}\n{}", bed.daemon_log_tail(60));
    eprintln!(
        "{scrapes} scrapes over {:.1} s of Running",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        controller_running,
        "the controller never counted the migration running; last scrape:\n{last_controller}"
    );
    assert!(
        samples.len() >= 3,
        "only {} agent samples of the running migration",
        samples.len()
    );
    let (first, last) = (&samples[0], &samples[samples.len() - 1]);
    eprintln!(
        "{} samples: processed {:.0} -> {:.0} MiB, remaining {:.0} -> {:.0} MiB",
        samples.len(),
        first.0 / 1048576.0,
        last.0 / 1048576.0,
        first.1 / 1048576.0,
        last.1 / 1048576.0
    );
    assert!(last.0 > first.0, "processed bytes did not grow");
    assert!(last.1 < first.1, "remaining bytes did not shrink");
    let text = &last.2;
    assert_eq!(
        value(
            text,
            "mignet_migration_bandwidth_limit_bytes_per_second",
            &vm
        ),
        Some(CAP as f64),
        "{text}"
    );
    let rate = value(
        text,
        "kubevirt_vmi_migration_memory_transfer_rate_bytes",
        &vm,
    )
    .expect("transfer rate");
    assert!(
        rate > 0.0 && rate < 2.0 * CAP as f64,
        "transfer rate {rate}"
    );
    assert!(value(text, "kubevirt_vmi_migration_dirty_memory_rate_bytes", &vm).is_some());
    // The stream left through migration0; eth0 carried next to nothing.
    let stream = value(
        text,
        "mignet_migration_stream_bytes",
        &iface("migration0", "tx"),
    )
    .expect("stream bytes on migration0");
    let mig0 = value(
        text,
        "mignet_migration_interface_bytes",
        &iface("migration0", "tx"),
    )
    .expect("migration0 tx bytes");
    let eth0 = value(
        text,
        "mignet_migration_interface_bytes",
        &iface("eth0", "tx"),
    )
    .expect("eth0 tx bytes");
    eprintln!(
        "stream {:.1} MiB; during the migration migration0 sent {:.1} MiB, eth0 {:.0} bytes",
        stream / 1048576.0,
        mig0 / 1048576.0,
        eth0
    );
    assert!(stream > 64.0 * 1048576.0, "{text}");
    assert!(
        mig0 >= stream,
        "migration0 sent less than the stream: {mig0} < {stream}"
    );
    assert!(
        eth0 < 64.0 * 1024.0,
        "eth0 sent {eth0} bytes during the migration"
    );

    // After: the controller reports the outcome; the agent's gauges are gone.
    let outcome = format!("vmi=\"met1\",vmim=\"{vmim}\",namespace=\"{NS}\"");
    let c = lab_common::wait_for("the succeeded series", Duration::from_secs(30), || {
        let c = scrape(&controller);
        (value(&c, "kubevirt_vmi_migration_succeeded", &outcome) == Some(1.0)).then_some(c)
    });
    assert!(
        c.lines().any(
            |l| l.starts_with("kubevirt_vmi_migration_end_time_seconds{")
                && l.contains(&format!(
                    "name=\"met1\",migration_name=\"{vmim}\",status=\"succeeded\""
                ))
        ),
        "{c}"
    );
    let a = scrape(&agent);
    assert!(
        !a.contains("name=\"met1\""),
        "the ended migration's series are still served:\n{a}"
    );
    assert!(
        a.contains("mignet_tls_handshake_failures_total{reason=\"unknown_ca\"} 0\n"),
        "{a}"
    );
}
