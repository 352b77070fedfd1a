//! One migration-controller pass (`mignet::control::reconcile_once`) over
//! the lab's local store: list + decide + writes, as lab mode runs it.
//! Prints a table; no assertion on time.
//!
//! A second table: launcher mode (`Settings::launchers`, both modes run it
//! now), where a pass over new VMIs makes one launcher pod per VMI.
//!
//! Run: `cargo bench -p mignet --bench control_pass`

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::{Node, NodeStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mignet::api::{
    Cpu, DomainSpec, Memory, PersistentVolumeClaimInfo, PersistentVolumeClaimVolumeSource,
    VirtualMachineInstance, VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationSpec,
    VirtualMachineInstanceSpec, VirtualMachineInstanceStatus, VmiPhase, Volume, VolumeStatus,
};
use mignet::backend::LocalBackend;
use mignet::control::{reconcile_once, Settings};
use mignet::store::Store;

const NS: &str = "bench";

fn populate(store: &Store, nodes: usize, vmis: usize, vmims: usize) {
    for i in 0..nodes {
        let n = Node {
            metadata: ObjectMeta {
                name: Some(format!("node{i}")),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut n = store.create(&n).unwrap();
        n.status = Some(NodeStatus {
            allocatable: Some(BTreeMap::from([(
                "memory".to_owned(),
                Quantity("512Gi".into()),
            )])),
            ..Default::default()
        });
        store.update_status(&n).unwrap();
    }
    for i in 0..vmis {
        let mut v = VirtualMachineInstance::new(
            &format!("vm{i}"),
            VirtualMachineInstanceSpec {
                domain: DomainSpec {
                    cpu: Some(Cpu {
                        model: Some("Westmere".into()),
                        ..Default::default()
                    }),
                    memory: Some(Memory {
                        guest: Some("1Gi".into()),
                    }),
                    resources: None,
                    ..Default::default()
                },
                eviction_strategy: None,
                volumes: vec![Volume {
                    name: "root".into(),
                    persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                        claim_name: format!("vm{i}"),
                        read_only: None,
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
        );
        v.metadata.namespace = Some(NS.into());
        let mut v = store.create(&v).unwrap();
        v.status = Some(VirtualMachineInstanceStatus {
            node_name: Some(format!("node{}", i % nodes)),
            phase: Some(VmiPhase::Running),
            volume_status: vec![VolumeStatus {
                name: "root".into(),
                persistent_volume_claim_info: Some(PersistentVolumeClaimInfo {
                    access_modes: vec!["ReadWriteMany".into()],
                    ..Default::default()
                }),
            }],
            ..Default::default()
        });
        store.update_status(&v).unwrap();
    }
    for i in 0..vmims {
        let mut m = VirtualMachineInstanceMigration::new(
            &format!("mig{i}"),
            VirtualMachineInstanceMigrationSpec {
                vmi_name: format!("vm{i}"),
            },
        );
        m.metadata.namespace = Some(NS.into());
        store.create(&m).unwrap();
    }
}

/// One pass: its wall time (ms) and how many writes it made.
async fn timed_pass(backend: &LocalBackend, store: &Store, settings: &Settings) -> (f64, u64) {
    let before = store.revision().unwrap();
    let t = Instant::now();
    reconcile_once(backend, settings, k8s_openapi::jiff::Timestamp::now())
        .await
        .unwrap();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    (ms, store.revision().unwrap() - before)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("| nodes | VMIs | VMIMs | pass | ms | writes |");
    println!("|---|---|---|---|---|---|");
    for (nodes, vmis, vmims) in [(4, 12, 12), (50, 500, 50), (100, 1000, 100)] {
        let dir = std::env::temp_dir().join(format!(
            "mignet-bench-control-{}-{nodes}",
            std::process::id()
        ));
        let store = Arc::new(Store::open(&dir).unwrap());
        populate(&store, nodes, vmis, vmims);
        let backend = LocalBackend::new(store.clone());
        let settings = Settings {
            namespace: Some(NS.into()),
            ..Default::default()
        };
        for label in [
            "1: admit all, start 5, wait reasons, LiveMigratable on every VMI",
            "2: steady (nothing changed)",
            "3: steady again",
        ] {
            let (ms, writes) = timed_pass(&backend, &store, &settings).await;
            println!("| {nodes} | {vmis} | {vmims} | {label} | {ms:.1} | {writes} |");
        }
        drop(backend);
        let _ = std::fs::remove_dir_all(&dir);
    }

    println!();
    println!("launcher mode: new VMIs, one launcher pod each");
    println!();
    println!("| VMIs | pass | ms | writes | per VMI (ms) |");
    println!("|---|---|---|---|---|");
    for vmis in [12usize, 500, 1000] {
        let dir = std::env::temp_dir().join(format!(
            "mignet-bench-launchers-{}-{vmis}",
            std::process::id()
        ));
        let store = Arc::new(Store::open(&dir).unwrap());
        for i in 0..vmis {
            let mut v = VirtualMachineInstance::new(
                &format!("vm{i}"),
                VirtualMachineInstanceSpec {
                    domain: DomainSpec {
                        memory: Some(Memory {
                            guest: Some("1Gi".into()),
                        }),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            );
            v.metadata.namespace = Some(NS.into());
            store.create(&v).unwrap();
        }
        let backend = LocalBackend::new(store.clone());
        let settings = Settings {
            namespace: Some(NS.into()),
            launchers: Some(mignet::control::launcher_pod::LauncherSettings {
                image: "mignet:dev".into(),
                image_pull_policy: None,
                emulation_allowed: true,
            }),
            ..Default::default()
        };
        for label in [
            "1: a launcher pod per VMI, VMIs Scheduling",
            "2: steady (pods not placed yet)",
        ] {
            let (ms, writes) = timed_pass(&backend, &store, &settings).await;
            let per = ms / vmis as f64;
            println!("| {vmis} | {label} | {ms:.1} | {writes} | {per:.2} |");
        }
        drop(backend);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
