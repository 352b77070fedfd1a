//! Migration metrics as pure functions from what the manager and the agents
//! already hold (VMIMs and VMIs; a running migration's last `query-migrate`
//! sample, proxy counters and interface counters) to metric families.
//!
//! Names, types, labels and help texts follow KubeVirt where a family exists
//! (kubevirt/kubevirt `docs/observability/metrics.md`,
//! `pkg/monitoring/metrics/virt-controller/{migrationstats,vmistats}_collector.go`,
//! `pkg/monitoring/metrics/virt-handler/migrationdomainstats/`), so existing
//! dashboards and alerts work; our own families are prefixed `mignet_`.
//!
//! A running migration's gauges exist only while it runs: the agent drops
//! them when it ends (a stale series is a lie); counters persist.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use mignet_dataplane::monitor::RamStats;
use mignet_dataplane::proxy::{CountersSnapshot, HandshakeFailures};

use super::text::{Family, Kind};
use crate::api::{MigrationPhase, VirtualMachineInstance, VirtualMachineInstanceMigration};

/// QEMU reports the dirty rate in pages; x86 target pages are 4 KiB.
const PAGE_SIZE: u64 = 4096;

// ------------------------------------------------------------ manager

/// KubeVirt virt-controller's migration families, from the VMIMs and VMIs
/// of one controller pass.
pub fn manager_families<'a>(
    vmims: &[VirtualMachineInstanceMigration],
    vmis: impl IntoIterator<Item = &'a VirtualMachineInstance>,
) -> Vec<Family> {
    let (mut pending, mut scheduling, mut unset, mut running) = (0u64, 0u64, 0u64, 0u64);
    let mut succeeded = Family::new(
        "kubevirt_vmi_migration_succeeded",
        Kind::Gauge,
        "Indicates if the VMI migration succeeded.",
    );
    let mut failed = Family::new(
        "kubevirt_vmi_migration_failed",
        Kind::Gauge,
        "Indicates if the VMI migration failed.",
    );
    let mut by_uid: HashMap<String, String> = HashMap::new();
    let mut sorted: Vec<&VirtualMachineInstanceMigration> = vmims.iter().collect();
    sorted.sort_by_key(|m| (m.namespace(), m.name_any()));
    for m in sorted {
        if let Some(uid) = m.uid() {
            by_uid.insert(uid, m.name_any());
        }
        let labels = || {
            vec![
                ("vmi", m.spec.vmi_name.clone()),
                ("vmim", m.name_any()),
                ("namespace", m.namespace().unwrap_or_default()),
            ]
        };
        match m.status.as_ref().and_then(|s| s.phase) {
            None => unset += 1,
            Some(MigrationPhase::Pending) => pending += 1,
            Some(MigrationPhase::Scheduling) => scheduling += 1,
            // KubeVirt counts every phase between scheduled and done as running.
            Some(
                MigrationPhase::Scheduled
                | MigrationPhase::PreparingTarget
                | MigrationPhase::TargetReady
                | MigrationPhase::Running,
            ) => running += 1,
            Some(MigrationPhase::Succeeded) => succeeded.push(labels(), 1.0),
            Some(MigrationPhase::Failed) => failed.push(labels(), 1.0),
        }
    }
    let mut start = Family::new(
        "kubevirt_vmi_migration_start_time_seconds",
        Kind::Gauge,
        "The time at which the migration started.",
    );
    let mut end = Family::new(
        "kubevirt_vmi_migration_end_time_seconds",
        Kind::Gauge,
        "The time at which the migration ended.",
    );
    let mut vmis: Vec<&VirtualMachineInstance> = vmis.into_iter().collect();
    vmis.sort_by_key(|v| (v.namespace(), v.name_any()));
    for v in vmis {
        let Some(st) = v.status.as_ref() else {
            continue;
        };
        let Some(ms) = st.migration_state.as_ref() else {
            continue;
        };
        let migration_name = ms
            .migration_uid
            .as_ref()
            .and_then(|u| by_uid.get(u))
            .cloned()
            .unwrap_or_default();
        let labels = vec![
            ("node", st.node_name.clone().unwrap_or_default()),
            ("namespace", v.namespace().unwrap_or_default()),
            ("name", v.name_any()),
            ("migration_name", migration_name),
        ];
        if let Some(t) = &ms.start_timestamp {
            start.push(labels.clone(), t.0.as_second() as f64);
        }
        if let Some(t) = &ms.end_timestamp {
            // KubeVirt: empty until completed, then failed/succeeded.
            let status = match (ms.completed, ms.failed) {
                (Some(true), Some(true)) => "failed",
                (Some(true), _) => "succeeded",
                _ => "",
            };
            let mut labels = labels;
            labels.push(("status", status.to_string()));
            end.push(labels, t.0.as_second() as f64);
        }
    }
    let count = |name, help, n: u64| Family::new(name, Kind::Gauge, help).with(vec![], n as f64);
    vec![
        count(
            "kubevirt_vmi_migrations_in_pending_phase",
            "Number of current pending migrations.",
            pending,
        ),
        count(
            "kubevirt_vmi_migrations_in_scheduling_phase",
            "Number of current scheduling migrations.",
            scheduling,
        ),
        count(
            "kubevirt_vmi_migrations_in_unset_phase",
            "Number of current unset migrations. These are pending items the virt-controller hasn’t processed yet from the queue.",
            unset,
        ),
        count(
            "kubevirt_vmi_migrations_in_running_phase",
            "Number of current running migrations.",
            running,
        ),
        succeeded,
        failed,
        start,
        end,
    ]
}

// ------------------------------------------------------------ agent

/// Bytes an interface received and sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IfBytes {
    pub rx: u64,
    pub tx: u64,
}

/// Parses `/proc/net/dev`: interface -> bytes received and sent. Lines
/// that do not parse are skipped (the two header lines among them).
pub fn parse_net_dev(text: &str) -> BTreeMap<String, IfBytes> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        // rx: bytes packets errs drop fifo frame compressed multicast; then tx.
        if f.len() >= 16 {
            out.insert(name.trim().to_string(), IfBytes { rx: f[0], tx: f[8] });
        }
    }
    out
}

/// What the source agent knows about one running migration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunningMigration {
    pub namespace: String,
    pub name: String,
    /// QEMU's last `query-migrate` RAM section.
    pub ram: Option<RamStats>,
    /// The proxy's pacing cap in bytes/s; 0 = none.
    pub bandwidth_cap: u64,
    /// The interface the proxy's outgoing connections are bound to (the
    /// one holding the migration IP).
    pub stream_interface: String,
    /// Plaintext bytes the proxy carried for this migration.
    pub stream: CountersSnapshot,
    /// Interface counters of the agent's network namespace when the
    /// migration started and now: the difference is what each interface
    /// carried while it ran (the migration network vs the pod network).
    pub interfaces_at_start: BTreeMap<String, IfBytes>,
    pub interfaces_now: BTreeMap<String, IfBytes>,
}

/// The source agent's families for its running migrations (`node` = this
/// agent's node) and its TLS handshake failures since start.
pub fn agent_families(
    node: &str,
    running: &[RunningMigration],
    tls_failures: &[(&'static str, u64)],
) -> Vec<Family> {
    let fam = |name, help| Family::new(name, Kind::Gauge, help);
    let mut total = Family::new(
        "kubevirt_vmi_migration_data_bytes_total",
        Kind::Counter,
        "The total Guest OS data to be migrated to the new VM.",
    );
    let mut processed = fam(
        "kubevirt_vmi_migration_data_processed_bytes",
        "The total Guest OS data processed and migrated to the new VM.",
    );
    let mut remaining = fam(
        "kubevirt_vmi_migration_data_remaining_bytes",
        "The remaining guest OS data to be migrated to the new VM.",
    );
    let mut dirty = fam(
        "kubevirt_vmi_migration_dirty_memory_rate_bytes",
        "The rate of memory being dirty in the Guest OS.",
    );
    let mut rate = fam(
        "kubevirt_vmi_migration_memory_transfer_rate_bytes",
        "The rate at which the memory is being transferred.",
    );
    let mut cap = fam(
        "mignet_migration_bandwidth_limit_bytes_per_second",
        "Pacing cap in force on the migration's proxy (bandwidthPerMigration); 0 = none.",
    );
    let mut stream = fam(
        "mignet_migration_stream_bytes",
        "Plaintext bytes the agent's proxy carried for the migration, by the interface its connections are bound to and direction (tx = towards the target).",
    );
    let mut iface = fam(
        "mignet_migration_interface_bytes",
        "Bytes each interface of the agent's pod network namespace carried since the migration started (kernel counters): the migration interface carries the stream, the pod interface should carry ~nothing.",
    );
    let mut sorted: Vec<&RunningMigration> = running.iter().collect();
    sorted.sort_by_key(|m| (&m.namespace, &m.name));
    for m in sorted {
        let base = || {
            vec![
                ("namespace", m.namespace.clone()),
                ("name", m.name.clone()),
                ("node", node.to_string()),
            ]
        };
        if let Some(r) = &m.ram {
            total.push(base(), r.total as f64);
            processed.push(base(), r.transferred as f64);
            remaining.push(base(), r.remaining as f64);
            dirty.push(base(), (r.dirty_pages_rate * PAGE_SIZE) as f64);
            // QEMU's mbps is 10^6 bits per second.
            rate.push(base(), (r.mbps * 1e6 / 8.0).round());
        }
        cap.push(base(), m.bandwidth_cap as f64);
        for (dir, v) in [("tx", m.stream.to_target), ("rx", m.stream.from_target)] {
            let mut l = base();
            l.push(("interface", m.stream_interface.clone()));
            l.push(("direction", dir.to_string()));
            stream.push(l, v as f64);
        }
        for (name, now) in &m.interfaces_now {
            if name == "lo" {
                continue;
            }
            let start = m.interfaces_at_start.get(name).copied().unwrap_or_default();
            for (dir, v) in [
                ("rx", now.rx.saturating_sub(start.rx)),
                ("tx", now.tx.saturating_sub(start.tx)),
            ] {
                let mut l = base();
                l.push(("interface", name.clone()));
                l.push(("direction", dir.to_string()));
                iface.push(l, v as f64);
            }
        }
    }
    let mut tls = Family::new(
        "mignet_tls_handshake_failures_total",
        Kind::Counter,
        "Failed mutual-TLS handshakes of the migration data path, by reason.",
    );
    for (reason, n) in tls_failures {
        tls.push(vec![("reason", reason.to_string())], *n as f64);
    }
    vec![
        total, processed, remaining, dirty, rate, cap, stream, iface, tls,
    ]
}

/// The source agent's running migrations, keyed by migration UID: updated
/// on each sample, removed when the migration ends.
#[derive(Debug, Default)]
pub struct AgentMigrations {
    running: Mutex<BTreeMap<String, RunningMigration>>,
    tls_failures: Arc<HandshakeFailures>,
}

impl AgentMigrations {
    /// Records the latest state of migration `uid`.
    pub fn update(&self, uid: &str, m: RunningMigration) {
        if let Ok(mut r) = self.running.lock() {
            r.insert(uid.to_string(), m);
        }
    }

    /// Changes migration `uid`'s record in place, if it is known.
    pub fn modify(&self, uid: &str, f: impl FnOnce(&mut RunningMigration)) {
        if let Ok(mut r) = self.running.lock() {
            if let Some(m) = r.get_mut(uid) {
                f(m);
            }
        }
    }

    /// Migration `uid` is over: its gauges go.
    pub fn end(&self, uid: &str) {
        if let Ok(mut r) = self.running.lock() {
            r.remove(uid);
        }
    }

    /// Where the agent's proxies count failed handshakes.
    pub fn tls_failures(&self) -> Arc<HandshakeFailures> {
        self.tls_failures.clone()
    }

    pub fn families(&self, node: &str) -> Vec<Family> {
        let running: Vec<RunningMigration> = self
            .running
            .lock()
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        agent_families(node, &running, &self.tls_failures.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::super::text::render;
    use super::*;
    use crate::api::{
        VirtualMachineInstanceMigrationSpec, VirtualMachineInstanceMigrationState,
        VirtualMachineInstanceMigrationStatus, VirtualMachineInstanceStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff;
    use mignet_dataplane::proxy::HandshakeFailure;

    fn vmim(
        ns: &str,
        name: &str,
        vmi: &str,
        phase: Option<MigrationPhase>,
    ) -> VirtualMachineInstanceMigration {
        let mut m = VirtualMachineInstanceMigration::new(
            name,
            VirtualMachineInstanceMigrationSpec {
                vmi_name: vmi.into(),
            },
        );
        m.metadata.namespace = Some(ns.into());
        m.metadata.uid = Some(format!("uid-{name}"));
        m.status = phase.map(|p| VirtualMachineInstanceMigrationStatus {
            phase: Some(p),
            ..Default::default()
        });
        m
    }

    #[test]
    fn manager_counts_phases_like_kubevirt_and_labels_outcomes_per_vmim() {
        use MigrationPhase::*;
        let ms = vec![
            vmim("a", "m1", "vm1", Some(Pending)),
            vmim("a", "m2", "vm2", Some(Scheduling)),
            vmim("a", "m3", "vm3", Some(PreparingTarget)),
            vmim("a", "m4", "vm4", Some(Running)),
            vmim("a", "m5", "vm5", Some(Succeeded)),
            vmim("b", "m6", "vm6", Some(Failed)),
            vmim("a", "m7", "vm7", None),
        ];
        let text = render(&manager_families(&ms, []));
        for line in [
            "kubevirt_vmi_migrations_in_pending_phase 1\n",
            "kubevirt_vmi_migrations_in_scheduling_phase 1\n",
            "kubevirt_vmi_migrations_in_running_phase 2\n",
            "kubevirt_vmi_migrations_in_unset_phase 1\n",
            "# TYPE kubevirt_vmi_migration_succeeded gauge\n",
            "kubevirt_vmi_migration_succeeded{vmi=\"vm5\",vmim=\"m5\",namespace=\"a\"} 1\n",
            "kubevirt_vmi_migration_failed{vmi=\"vm6\",vmim=\"m6\",namespace=\"b\"} 1\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("vmim=\"m4\""), "{text}");
    }

    #[test]
    fn manager_start_and_end_times_name_the_migration() {
        let m = vmim("a", "m1", "vm1", Some(MigrationPhase::Succeeded));
        let mut v = VirtualMachineInstance::new("vm1", Default::default());
        v.metadata.namespace = Some("a".into());
        let t = |s| Some(Time(jiff::Timestamp::from_second(s).unwrap()));
        v.status = Some(VirtualMachineInstanceStatus {
            node_name: Some("node2".into()),
            migration_state: Some(VirtualMachineInstanceMigrationState {
                migration_uid: Some("uid-m1".into()),
                start_timestamp: t(1_700_000_000),
                end_timestamp: t(1_700_000_042),
                completed: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        });
        let text = render(&manager_families(&[m], [&v]));
        assert!(text.contains(
            "kubevirt_vmi_migration_start_time_seconds{node=\"node2\",namespace=\"a\",name=\"vm1\",migration_name=\"m1\"} 1700000000\n"
        ), "{text}");
        assert!(text.contains(
            "kubevirt_vmi_migration_end_time_seconds{node=\"node2\",namespace=\"a\",name=\"vm1\",migration_name=\"m1\",status=\"succeeded\"} 1700000042\n"
        ), "{text}");
    }

    fn running(name: &str) -> RunningMigration {
        let iface = |rx, tx| IfBytes { rx, tx };
        RunningMigration {
            namespace: "default".into(),
            name: name.into(),
            ram: Some(RamStats {
                transferred: 1000,
                remaining: 500,
                total: 4096,
                dirty_sync_count: 1,
                mbps: 80.0,
                dirty_pages_rate: 3,
            }),
            bandwidth_cap: 64 << 20,
            stream_interface: "migration0".into(),
            stream: CountersSnapshot {
                to_target: 900,
                from_target: 10,
                ..Default::default()
            },
            interfaces_at_start: [
                ("eth0".into(), iface(100, 100)),
                ("migration0".into(), iface(0, 0)),
            ]
            .into(),
            interfaces_now: [
                ("eth0".into(), iface(100, 160)),
                ("migration0".into(), iface(50, 2000)),
                ("lo".into(), iface(9, 9)),
            ]
            .into(),
        }
    }

    #[test]
    fn agent_renders_kubevirt_domain_families_and_ours() {
        let text = render(&agent_families(
            "node1",
            &[running("vm1")],
            &[("bad_certificate", 0), ("unknown_ca", 2), ("timeout", 0)],
        ));
        let l = "{namespace=\"default\",name=\"vm1\",node=\"node1\"}";
        for line in [
            format!("kubevirt_vmi_migration_data_processed_bytes{l} 1000\n"),
            format!("kubevirt_vmi_migration_data_remaining_bytes{l} 500\n"),
            format!("kubevirt_vmi_migration_data_bytes_total{l} 4096\n"),
            format!("kubevirt_vmi_migration_dirty_memory_rate_bytes{l} 12288\n"),
            format!("kubevirt_vmi_migration_memory_transfer_rate_bytes{l} 10000000\n"),
            format!("mignet_migration_bandwidth_limit_bytes_per_second{l} 67108864\n"),
            "mignet_migration_stream_bytes{namespace=\"default\",name=\"vm1\",node=\"node1\",interface=\"migration0\",direction=\"tx\"} 900\n".into(),
            "mignet_migration_interface_bytes{namespace=\"default\",name=\"vm1\",node=\"node1\",interface=\"migration0\",direction=\"tx\"} 2000\n".into(),
            "mignet_migration_interface_bytes{namespace=\"default\",name=\"vm1\",node=\"node1\",interface=\"eth0\",direction=\"tx\"} 60\n".into(),
            "mignet_tls_handshake_failures_total{reason=\"unknown_ca\"} 2\n".into(),
            "mignet_tls_handshake_failures_total{reason=\"timeout\"} 0\n".into(),
        ] {
            assert!(text.contains(&line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("interface=\"lo\""), "{text}");
    }

    #[test]
    fn agent_gauges_vanish_when_the_migration_ends_and_counters_stay() {
        let a = AgentMigrations::default();
        a.update("u1", running("vm1"));
        a.update("u2", running("vm2"));
        a.tls_failures().count(HandshakeFailure::BadCertificate);
        a.tls_failures().count(HandshakeFailure::Other);
        a.end("u1");
        let text = render(&a.families("node1"));
        assert!(!text.contains("name=\"vm1\""), "{text}");
        assert!(
            text.contains(
                "kubevirt_vmi_migration_data_processed_bytes{namespace=\"default\",name=\"vm2\""
            ),
            "{text}"
        );
        a.end("u2");
        let text = render(&a.families("node1"));
        assert!(
            !text.contains("kubevirt_vmi_migration_data_processed_bytes{"),
            "{text}"
        );
        assert!(text.contains("# TYPE kubevirt_vmi_migration_data_processed_bytes gauge\n"));
        assert!(
            text.contains("mignet_tls_handshake_failures_total{reason=\"bad_certificate\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("mignet_tls_handshake_failures_total{reason=\"other\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn net_dev_parses_rx_and_tx_bytes() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     120       2    0    0    0     0          0         0      120       2    0    0    0     0       0          0\n  \
eth0: 5000      10    0    0    0     0          0         0     7000      12    0    0    0     0       0          0\n";
        let m = parse_net_dev(text);
        assert_eq!(m.get("eth0"), Some(&IfBytes { rx: 5000, tx: 7000 }));
        assert_eq!(m.get("lo"), Some(&IfBytes { rx: 120, tx: 120 }));
        assert_eq!(m.len(), 2);
    }
}
