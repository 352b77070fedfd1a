//! The migration controller on the lab's local store (LocalBackend), with
//! the simulated agents: the same scenarios as on the real apiserver
//! (`control_k8s.rs`), at unit speed and without root.
//!
//! Run: `cargo test -p mignet --test control_local`

mod control_common;
mod rollout_common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use control_common::*;
use mignet::backend::{Backend, LocalBackend};
use mignet::store::Store;

/// A store in a fresh temporary directory, removed on drop.
struct TempStore {
    dir: std::path::PathBuf,
    backend: LocalBackend,
}

impl TempStore {
    fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mignet-control-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let store = Arc::new(Store::open(&dir).expect("open store"));
        Self {
            dir,
            backend: LocalBackend::new(store),
        }
    }
}

impl Drop for TempStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const NS: &str = "lab";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_5_2_hold_and_all_succeed() {
    let s = TempStore::new("limits");
    let m = scenario_limits(&s.backend, NS, "limits").await;
    println!("observed maxima: {m:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_migration_aborts_it() {
    let s = TempStore::new("cancel");
    scenario_cancel_running(&s.backend, NS, "cancel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pending_migration_removes_it() {
    let s = TempStore::new("pending");
    scenario_cancel_pending(&s.backend, NS, "pending").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refuses_stopped_and_duplicate() {
    let s = TempStore::new("refuse");
    scenario_refusals(&s.backend, NS, "refuse").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_evacuates_reports_and_uncordon_cancels() {
    let s = TempStore::new("drain");
    scenario_drain(&s.backend, NS, "drain").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_model_without_matching_node_is_not_migratable() {
    let s = TempStore::new("hostmodel");
    scenario_host_model(&s.backend, NS, "hostmodel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_drain_via_evacuation_node_name() {
    let s = TempStore::new("evac");
    scenario_evacuation_node_name(&s.backend, NS, "evac").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_backend_keeps_the_contract() {
    let s = TempStore::new("contract");
    scenario_backend_semantics(&s.backend, NS, "contract").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_machines_run_stop_and_go_with_their_vmis() {
    let s = TempStore::new("vm");
    scenario_vm_lifecycle(&s.backend, NS, "vm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_restart_vm_through_state_change_requests() {
    let s = TempStore::new("power");
    scenario_vm_power(&s.backend, NS, "power").await;
}

// ------------------------------------------------- the network rollout

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_rollout_dotted_nad_name_is_valid_and_rolled_out() {
    let s = TempStore::new("roll-dot");
    rollout_common::scenario_dotted_nad_name_is_valid_and_rolled_out(&s.backend, NS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_rollout_invalid_network_is_refused_without_a_daemonset_write() {
    let s = TempStore::new("roll-bad");
    rollout_common::scenario_invalid_network_is_refused_without_a_daemonset_write(&s.backend, NS)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_rollout_conflict_retries_soon() {
    let s = TempStore::new("roll-conflict");
    rollout_common::scenario_conflict_retries_soon(&s.backend, NS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_backend_lists_by_label_selector() {
    let s = TempStore::new("select");
    scenario_list_selected(&s.backend, NS, "select").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_observes_only_its_nodes_vmis_and_its_migrations() {
    let s = TempStore::new("observe");
    scenario_agent_observation(&s.backend, NS, "observe").await;
}

// ------------------------------------------------- NodeMaintenance

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_maintenance_evacuates_stops_reports_and_ends_on_delete() {
    let s = TempStore::new("nm");
    scenario_node_maintenance(&s.backend, NS, "nm").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_maintenance_deleted_cancels_the_pending_evacuation() {
    let s = TempStore::new("nm-cancel");
    scenario_node_maintenance_cancel(&s.backend, NS, "nm-cancel").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_maintenance_missing_node_duplicate_and_blocker_are_reported() {
    let s = TempStore::new("nm-fail");
    scenario_node_maintenance_failures(&s.backend, NS, "nm-fail").await;
}

/// `--node-maintenance=false` (the real operator runs): the controller
/// leaves NodeMaintenances and their nodes alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_maintenance_off_leaves_them_to_the_operator() {
    let s = TempStore::new("nm-off");
    let (b, test) = (&s.backend, "nm-off");
    let n = format!("{test}-n1");
    create_node(b, &node(&n, test, None)).await;
    b.create(&node_maintenance("nm", &n, test)).await.unwrap();
    let off = mignet::control::Settings {
        node_maintenance: false,
        ..settings(NS, test)
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    mignet::control::reconcile_once(b, &off, now).await.unwrap();
    let nm: mignet::api::NodeMaintenance = b.get("", "nm").await.unwrap().unwrap();
    assert!(
        nm.metadata.finalizers.is_none() && nm.status.is_none(),
        "{nm:?}"
    );
    let node: k8s_openapi::api::core::v1::Node = b.get("", &n).await.unwrap().unwrap();
    assert_eq!(node.spec.unwrap().unschedulable, None);
    // The same pass with the default honours it.
    mignet::control::reconcile_once(b, &settings(NS, test), now)
        .await
        .unwrap();
    let nm: mignet::api::NodeMaintenance = b.get("", "nm").await.unwrap().unwrap();
    assert!(nm.metadata.finalizers.is_some(), "{nm:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_migration_phases_and_outcomes() {
    let s = TempStore::new("metrics");
    scenario_metrics(&s.backend, NS, "metrics").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_rollout_preflight_gates_the_network_change() {
    let s = TempStore::new("roll-preflight");
    rollout_common::scenario_preflight_gates_the_network_change(&s.backend, NS).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_rollout_a_network_change_waits_for_the_migration_in_flight() {
    let s = TempStore::new("roll-inflight");
    rollout_common::scenario_a_network_change_waits_for_the_migration_in_flight(&s.backend, NS)
        .await;
}
