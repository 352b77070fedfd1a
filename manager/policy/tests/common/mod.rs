//! Builders for policy test fixtures.
#![allow(dead_code)]

use mignet_policy::*;

pub const GIB: u64 = 1 << 30;
pub const NS: &str = "vms";

pub fn key(name: &str) -> ObjectKey {
    ObjectKey::new(NS, name)
}

pub fn node(name: &str, mem_gib: u64) -> NodeView {
    NodeView {
        name: name.into(),
        allocatable_memory: mem_gib * GIB,
        ..Default::default()
    }
}

pub fn label(mut n: NodeView, k: &str, v: &str) -> NodeView {
    n.labels.insert(k.into(), v.into());
    n
}

pub fn host_model(n: NodeView, model: &str) -> NodeView {
    label(
        n,
        &format!("host-model-cpu.node.kubevirt.io/{model}"),
        "true",
    )
}

pub fn cordoned(mut n: NodeView) -> NodeView {
    n.unschedulable = true;
    n
}

pub fn tainted(mut n: NodeView, key: &str, effect: TaintEffect) -> NodeView {
    n.taints.push(Taint {
        key: key.into(),
        effect,
    });
    n
}

pub fn drained(n: NodeView) -> NodeView {
    cordoned(tainted(n, "kubevirt.io/drain", TaintEffect::NoSchedule))
}

pub fn rwx() -> VolumeView {
    VolumeView {
        name: "root".into(),
        source: VolumeSource::Claim {
            claim_name: "root-pvc".into(),
            access_modes: vec![AccessMode::ReadWriteMany],
        },
    }
}

pub fn rwo() -> VolumeView {
    VolumeView {
        name: "data".into(),
        source: VolumeSource::Claim {
            claim_name: "data-pvc".into(),
            access_modes: vec![AccessMode::ReadWriteOnce],
        },
    }
}

/// A running, migratable VMI with a named (non-host-model) CPU.
pub fn vmi(name: &str, node: &str, mem_gib: u64) -> VmiView {
    VmiView {
        key: key(name),
        phase: VmiPhase::Running,
        node: Some(node.into()),
        memory_bytes: mem_gib * GIB,
        cpu: CpuModel::Named("Haswell".into()),
        volumes: vec![rwx()],
        eviction_strategy: Some(EvictionStrategy::LiveMigrate),
    }
}

pub fn mig(name: &str, vmi: &str, created: i64) -> MigrationView {
    MigrationView {
        key: key(name),
        vmi: key(vmi),
        phase: Phase::Pending,
        created: Timestamp::from_unix_secs(created),
        origin: Origin::User,
        source_node: None,
        target_node: None,
        not_before: None,
    }
}

pub fn active(mut m: MigrationView, source: &str, target: &str) -> MigrationView {
    m.phase = Phase::Running;
    m.source_node = Some(source.into());
    m.target_node = Some(target.into());
    m
}

pub fn evac(mut m: MigrationView) -> MigrationView {
    m.origin = Origin::Evacuation;
    m
}

pub fn limits(cluster: u32, node: u32) -> Limits {
    Limits {
        parallel_migrations_per_cluster: cluster,
        parallel_outbound_migrations_per_node: node,
    }
}

pub fn snap<'a>(
    nodes: &'a [NodeView],
    vmis: &'a [VmiView],
    migrations: &'a [MigrationView],
) -> Snapshot<'a> {
    Snapshot {
        nodes,
        vmis,
        migrations,
    }
}

pub fn started(d: &Decision) -> Vec<&str> {
    d.start.iter().map(|s| s.migration.name.as_str()).collect()
}

pub fn wait_reason<'d>(d: &'d Decision, name: &str) -> &'d WaitReason {
    &d.waiting
        .iter()
        .find(|w| w.migration.name == name)
        .unwrap_or_else(|| panic!("{name} not waiting: {d:#?}"))
        .reason
}

pub const NOW: Timestamp = Timestamp(1_000_000_000);
