//! Reconcile latency of the network rollout controller against the real
//! kube-apiserver: time from a HyperConverged write (network flipped between
//! two valid NADs) to the agent DaemonSet's pod template carrying the new
//! annotation, as seen by a client polling every 5 ms.
//!
//! `tests/k8s/run.sh cargo bench -p mignet --bench rollout_latency`
//! (or with the bed's env file sourced). Prints a table; asserts nothing
//! about speed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::DaemonSet;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use mignet::api::{
    HyperConverged, HyperConvergedSpec, LiveMigrationConfig, NetworkAttachmentDefinition,
    NetworkAttachmentDefinitionSpec,
};
use mignet::network::decide::NETWORKS_ANNOTATION;
use serde_json::json;

const ROUNDS: usize = 40;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    ensure_crds();
    let ns = TestNamespace::new("mignet-bench");
    let client = client().await;
    create_agent_daemonset(&client, &ns.name).await;
    let nads: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), &ns.name);
    for (name, range) in [("net-a", "10.200.5.0/24"), ("net-b", "10.201.5.0/24")] {
        let cfg = SEED_NAD_CONFIG.replace("10.200.5.0/24", range);
        let nad = NetworkAttachmentDefinition::new(
            name,
            NetworkAttachmentDefinitionSpec { config: Some(cfg) },
        );
        nads.create(&PostParams::default(), &nad).await.unwrap();
    }
    let hcos: Api<HyperConverged> = Api::namespaced(client.clone(), &ns.name);
    let hco = HyperConverged::new(
        "kubevirt-hyperconverged",
        HyperConvergedSpec {
            live_migration_config: Some(LiveMigrationConfig::default()),
        },
    );
    hcos.create(&PostParams::default(), &hco).await.unwrap();
    let ds: Api<DaemonSet> = Api::namespaced(client.clone(), &ns.name);

    let _ctl = RunningController::start(client.clone(), settings(&ns.name));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut samples = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS {
        let net = if i % 2 == 0 { "net-a" } else { "net-b" };
        let want = format!("{net}@migration0");
        let t0 = Instant::now();
        hcos.patch(
            "kubevirt-hyperconverged",
            &PatchParams::default(),
            &Patch::Merge(&json!({"spec": {"liveMigrationConfig": {"network": net}}})),
        )
        .await
        .unwrap();
        let write = t0.elapsed();
        let (_, _) = wait_for("annotation", Duration::from_secs(15), || async {
            let d = ds.get("mignet-agent").await.ok()?;
            let a = d.spec?.template.metadata?.annotations?;
            (a.get(NETWORKS_ANNOTATION) == Some(&want)).then_some(())
        })
        .await;
        samples.push((t0.elapsed(), write));
    }

    let mut total: Vec<f64> = samples.iter().map(|s| s.0.as_secs_f64() * 1e3).collect();
    let mut write: Vec<f64> = samples.iter().map(|s| s.1.as_secs_f64() * 1e3).collect();
    total.sort_by(f64::total_cmp);
    write.sort_by(f64::total_cmp);
    let pct = |v: &[f64], p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    println!("\nrollout reconcile latency, {ROUNDS} network flips (ms)");
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>8}",
        "measure", "min", "median", "p90", "max"
    );
    for (name, v) in [
        ("HCO patch -> DaemonSet annotated", &total),
        ("  of which: the HCO patch call", &write),
    ] {
        println!(
            "{name:<34} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
            v[0],
            pct(v, 0.5),
            pct(v, 0.9),
            v[v.len() - 1]
        );
    }
}
