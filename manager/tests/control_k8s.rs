//! The migration controller on the real kube-apiserver (KubeBackend), with
//! simulated node agents (no QEMU here; the real agent migrates in lab
//! mode). Each test has its own namespace and its own uniquely named,
//! labelled Nodes (deleted on drop).
//!
//! Run: `tests/k8s/run.sh cargo test -p mignet --test control_k8s -- --nocapture`

mod common;
mod control_common;
mod rollout_common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use common::{client, client_as, ensure_crds, kubectl, kubectl_ok, kubectl_stdin, TestNamespace};
use control_common::*;
use futures::StreamExt;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use mignet::api::{MigrationPhase, VirtualMachineInstanceMigration};
use mignet::backend::KubeBackend;

/// A test's namespace, backend and Nodes; the Nodes (cluster-scoped) are
/// deleted on drop, also on panic.
struct Bed {
    ns: TestNamespace,
    backend: KubeBackend,
}

impl Bed {
    async fn new(prefix: &str) -> Self {
        ensure_crds();
        let ns = TestNamespace::new(prefix);
        let backend = KubeBackend::new(client().await, Some(&ns.name));
        Self { ns, backend }
    }

    fn ns(&self) -> &str {
        &self.ns.name
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let _ = kubectl(&[
            "delete",
            "nodes",
            "-l",
            &format!("{TEST_LABEL}={}", self.ns.name),
            "--wait=false",
        ]);
    }
}

/// Exact counts from the watch stream: every VMIM state the API server
/// served, applied in order; the highest number of active migrations
/// (Scheduling..Running) in the namespace and per source node.
fn spawn_watch_counter(api: Api<VirtualMachineInstanceMigration>) -> (Task, Arc<Mutex<Maxima>>) {
    let out = Arc::new(Mutex::new(Maxima::default()));
    let o = out.clone();
    let t = tokio::spawn(async move {
        let mut seen: BTreeMap<String, (bool, String)> = BTreeMap::new();
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        while let Some(ev) = stream.next().await {
            let Ok(ev) = ev else { continue };
            match ev {
                watcher::Event::Apply(m) | watcher::Event::InitApply(m) => {
                    let active = matches!(
                        phase_of(&m),
                        Some(
                            MigrationPhase::Scheduling
                                | MigrationPhase::Scheduled
                                | MigrationPhase::PreparingTarget
                                | MigrationPhase::TargetReady
                                | MigrationPhase::Running
                        )
                    );
                    let src = m
                        .status
                        .as_ref()
                        .and_then(|s| s.migration_state.as_ref())
                        .and_then(|s| s.source_node.clone())
                        .unwrap_or_default();
                    seen.insert(m.name_any(), (active, src));
                }
                watcher::Event::Delete(m) => {
                    seen.remove(&m.name_any());
                }
                watcher::Event::Init | watcher::Event::InitDone => {}
            }
            let active: Vec<_> = seen.values().filter(|(a, _)| *a).collect();
            let mut per: BTreeMap<&str, usize> = BTreeMap::new();
            for (_, s) in &active {
                *per.entry(s.as_str()).or_default() += 1;
            }
            let mut g = o.lock().unwrap();
            g.cluster = g.cluster.max(active.len());
            g.per_node = g.per_node.max(per.values().copied().max().unwrap_or(0));
            g.samples += 1;
        }
    });
    (Task(t), out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twelve_migrations_under_5_2_never_exceed_and_all_succeed() {
    let bed = Bed::new("ctl-limits").await;
    let api: Api<VirtualMachineInstanceMigration> =
        Api::namespaced(bed.backend.client().clone(), bed.ns());
    let (_w, watched) = spawn_watch_counter(api);
    let polled = scenario_limits(&bed.backend, bed.ns(), bed.ns()).await;
    let watched = watched.lock().unwrap().clone();
    println!("| observer | max active in cluster | max outbound per node | samples |");
    println!("|---|---|---|---|");
    println!(
        "| list poll | {} | {} | {} |",
        polled.cluster, polled.per_node, polled.samples
    );
    println!(
        "| watch stream | {} | {} | {} |",
        watched.cluster, watched.per_node, watched.samples
    );
    assert!(
        watched.cluster <= 5,
        "cluster limit exceeded (watch): {watched:?}"
    );
    assert!(
        watched.per_node <= 2,
        "node limit exceeded (watch): {watched:?}"
    );
    assert_eq!(watched.cluster, 5, "{watched:?}");

    // What a user (and the console) reads: kubectl jsonpath on the VMI.
    let nodes = node_names(bed.ns(), 4);
    for i in [0, 7] {
        let vmi = format!("vm{i}");
        let target = kubectl_ok(&[
            "get",
            "vmi",
            &vmi,
            "-n",
            bed.ns(),
            "-o",
            "jsonpath={.status.migrationState.targetNode}",
        ]);
        let addr = kubectl_ok(&[
            "get",
            "vmi",
            &vmi,
            "-n",
            bed.ns(),
            "-o",
            "jsonpath={.status.migrationState.targetNodeAddress}",
        ]);
        assert_eq!(addr, sim_address(&nodes, &target), "{vmi} on {target}");
        assert!(addr.starts_with("10.200.5."), "{addr}");
        let node = kubectl_ok(&[
            "get",
            "vmi",
            &vmi,
            "-n",
            bed.ns(),
            "-o",
            "jsonpath={.status.nodeName}",
        ]);
        assert_eq!(node, target);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_migration_aborts_it() {
    let bed = Bed::new("ctl-cancel").await;
    scenario_cancel_running(&bed.backend, bed.ns(), bed.ns()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pending_migration_removes_it() {
    let bed = Bed::new("ctl-pending").await;
    scenario_cancel_pending(&bed.backend, bed.ns(), bed.ns()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_refuses_stopped_and_duplicate() {
    let bed = Bed::new("ctl-refuse").await;
    scenario_refusals(&bed.backend, bed.ns(), bed.ns()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_evacuates_reports_and_uncordon_cancels() {
    let bed = Bed::new("ctl-drain").await;
    scenario_drain(&bed.backend, bed.ns(), bed.ns()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_model_without_matching_node_is_not_migratable() {
    let bed = Bed::new("ctl-hostmodel").await;
    scenario_host_model(&bed.backend, bed.ns(), bed.ns()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cordon_plus_evacuation_node_name_evacuates() {
    let bed = Bed::new("ctl-evac").await;
    scenario_evacuation_node_name(&bed.backend, bed.ns(), bed.ns()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_backend_keeps_the_contract() {
    let bed = Bed::new("ctl-contract").await;
    scenario_backend_semantics(&bed.backend, bed.ns(), bed.ns()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_machines_run_stop_and_go_with_their_vmis() {
    let bed = Bed::new("ctl-vm").await;
    scenario_vm_lifecycle(&bed.backend, bed.ns(), bed.ns()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_stop_restart_vm_through_state_change_requests() {
    let bed = Bed::new("ctl-power").await;
    scenario_vm_power(&bed.backend, bed.ns(), bed.ns()).await;
}

/// Status writes merge (issue 14, item 5): a status field another client
/// wrote, which our types do not model, survives the controller's writes
/// (the LiveMigratable condition here, then a whole migration's phases).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_writes_keep_fields_we_do_not_model() {
    let bed = Bed::new("ctl-merge").await;
    let (b, ns) = (&bed.backend, bed.ns());
    let nodes = node_names(ns, 2);
    for n in &nodes {
        create_node(b, &node(n, ns, None)).await;
    }
    create_running_vmi(b, ns, "keep", &nodes[0], VmiOpts::default()).await;
    // What KubeVirt's virt-handler writes and mignet does not model.
    let foreign = r#"{"status":{"guestOSInfo":{"id":"fedora","name":"Fedora Linux"},"interfaces":[{"name":"default","ipAddress":"10.244.1.7"}]}}"#;
    kubectl_ok(&[
        "patch",
        "vmi",
        "keep",
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        foreign,
    ]);
    create_hco(b, ns, 5, 2).await;
    let _ctl = spawn_controller(b, ns, ns);
    let _sim = spawn_sim(b, ns, &nodes, std::time::Duration::from_millis(300));
    eventually(LONG, "LiveMigratable written", || async {
        let v = get_vmi(b, ns, "keep").await;
        condition(
            &v.status?.conditions,
            mignet::backend::protocol::LIVE_MIGRATABLE,
        )
        .cloned()
    })
    .await;
    create_vmim(b, ns, "mig", "keep").await;
    wait_phase(b, ns, "mig", MigrationPhase::Succeeded).await;
    let raw = kubectl_ok(&["get", "vmi", "keep", "-n", ns, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&raw).expect("VMI JSON");
    assert_eq!(v["status"]["guestOSInfo"]["name"], "Fedora Linux", "{raw}");
    assert_eq!(
        v["status"]["interfaces"][0]["ipAddress"], "10.244.1.7",
        "{raw}"
    );
    assert_eq!(v["status"]["migrationState"]["completed"], true, "{raw}");
    let raw = kubectl_ok(&["get", "vmim", "mig", "-n", ns, "-o", "json"]);
    assert!(raw.contains("Succeeded"), "{raw}");
}

// ------------------------------------------------- the network rollout

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_dotted_nad_name_is_valid_and_rolled_out() {
    let bed = Bed::new("roll-dot").await;
    rollout_common::scenario_dotted_nad_name_is_valid_and_rolled_out(&bed.backend, bed.ns()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_invalid_network_is_refused_without_a_daemonset_write() {
    let bed = Bed::new("roll-bad").await;
    rollout_common::scenario_invalid_network_is_refused_without_a_daemonset_write(
        &bed.backend,
        bed.ns(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_conflict_retries_soon() {
    let bed = Bed::new("roll-conflict").await;
    rollout_common::scenario_conflict_retries_soon(&bed.backend, bed.ns()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_forbidden_nad_reads_as_not_found() {
    let bed = Bed::new("roll-403").await;
    let ns = bed.ns();
    // What a rollout pass needs in its own namespace, and nothing elsewhere.
    let user = format!("rollout-{ns}");
    let rbac = format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: rollout, namespace: {ns}}}
rules:
  - apiGroups: ["hco.kubevirt.io"]
    resources: ["hyperconvergeds", "hyperconvergeds/status"]
    verbs: ["get", "patch"]
  - apiGroups: ["apps"]
    resources: ["daemonsets"]
    verbs: ["get", "patch"]
  - apiGroups: ["k8s.cni.cncf.io"]
    resources: ["network-attachment-definitions"]
    verbs: ["get"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: rollout, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: rollout}}
subjects:
  - {{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}
"#
    );
    let out = kubectl_stdin(&["apply", "-f", "-"], &rbac);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let limited = KubeBackend::unwatched(client_as(&user).await);
    rollout_common::scenario_forbidden_nad_reads_as_not_found(&bed.backend, &limited, ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_backend_lists_by_label_selector() {
    let bed = Bed::new("ctl-select").await;
    scenario_list_selected(&bed.backend, bed.ns(), bed.ns()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_observes_only_its_nodes_vmis_and_its_migrations() {
    let bed = Bed::new("ctl-observe").await;
    scenario_agent_observation(&bed.backend, bed.ns(), bed.ns()).await;
}

// ------------------------------------------------- NodeMaintenance

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_maintenance_evacuates_stops_reports_and_ends_on_delete() {
    let bed = Bed::new("ctl-nm").await;
    scenario_node_maintenance(&bed.backend, bed.ns(), bed.ns()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_maintenance_deleted_cancels_the_pending_evacuation() {
    let bed = Bed::new("ctl-nm-cancel").await;
    scenario_node_maintenance_cancel(&bed.backend, bed.ns(), bed.ns()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_maintenance_missing_node_duplicate_and_blocker_are_reported() {
    let bed = Bed::new("ctl-nm-fail").await;
    scenario_node_maintenance_failures(&bed.backend, bed.ns(), bed.ns()).await;
}

/// deploy/base/rbac-manager.yaml suffices for NodeMaintenance: passes of
/// the controller under the manager's ServiceAccount (impersonated) put the
/// node into maintenance (finalizer, cordon, taints, evacuation, stop,
/// status) and, after the NodeMaintenance is deleted, out again; every pass
/// returns Ok (a refused write would be an error of the pass).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_maintenance_works_with_the_managers_own_role() {
    use mignet::api::{MaintenancePhase, NodeMaintenance, VirtualMachineInstance};
    use mignet::backend::Backend;
    let bed = Bed::new("ctl-nm-rbac").await;
    let (admin, ns) = (&bed.backend, bed.ns());
    let rbac = common::TestRbac::apply(ns);
    let manager = KubeBackend::unwatched(common::client_as(&rbac.manager_sa).await);
    let nodes = node_names(ns, 2);
    for n in &nodes {
        create_node(admin, &node(n, ns, None)).await;
    }
    let live = VmiOpts {
        eviction: Some(mignet::api::EvictionStrategy::LiveMigrate),
        ..Default::default()
    };
    create_running_vmi(admin, ns, "live", &nodes[0], live).await;
    let plain = VmiOpts {
        eviction: Some(mignet::api::EvictionStrategy::None),
        ..Default::default()
    };
    create_running_vmi(admin, ns, "plain", &nodes[0], plain).await;
    let nm_name = format!("nm-{}", nodes[0]);
    admin
        .create(&node_maintenance(&nm_name, &nodes[0], ns))
        .await
        .unwrap();
    let s = settings(ns, ns);
    let pass = || async {
        let now = k8s_openapi::jiff::Timestamp::now();
        mignet::control::reconcile_once(&manager, &s, now)
            .await
            .unwrap_or_else(|e| panic!("pass as the manager: {e}: {:?}", e.is_transient()))
    };
    for _ in 0..4 {
        pass().await;
    }
    let nm: NodeMaintenance = admin.get("", &nm_name).await.unwrap().unwrap();
    let st = nm.status.clone().unwrap_or_default();
    assert_eq!(st.phase, Some(MaintenancePhase::Running), "{nm:?}");
    assert_eq!(st.pending_pods, vec!["live".to_owned()], "{st:?}");
    assert!(nm.metadata.finalizers.is_some(), "{nm:?}");
    let n: k8s_openapi::api::core::v1::Node = admin.get("", &nodes[0]).await.unwrap().unwrap();
    assert_eq!(n.spec.as_ref().unwrap().unschedulable, Some(true), "{n:?}");
    assert!(admin
        .get::<VirtualMachineInstance>(ns, "plain")
        .await
        .unwrap()
        .is_none());
    let ms: Vec<VirtualMachineInstanceMigration> = admin.list(Some(ns)).await.unwrap();
    assert_eq!(ms.len(), 1, "{ms:?}");

    admin.delete::<NodeMaintenance>("", &nm_name).await.unwrap();
    for _ in 0..3 {
        pass().await;
    }
    assert!(admin
        .get::<NodeMaintenance>("", &nm_name)
        .await
        .unwrap()
        .is_none());
    let n: k8s_openapi::api::core::v1::Node = admin.get("", &nodes[0]).await.unwrap().unwrap();
    assert_eq!(n.spec.as_ref().unwrap().unschedulable, None, "{n:?}");
    // Its evacuation mark is gone (a started evacuation finishes; a
    // Pending one would be cancelled, see scenario_node_maintenance_cancel).
    let live = admin
        .get::<VirtualMachineInstance>(ns, "live")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(live.status.unwrap().evacuation_node_name, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_migration_phases_and_outcomes() {
    let bed = Bed::new("ctl-metrics").await;
    scenario_metrics(&bed.backend, bed.ns(), bed.ns()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_preflight_gates_the_network_change() {
    let bed = Bed::new("roll-preflight").await;
    // No controller-manager here makes the namespace's default account,
    // which pods (agents, probes) run under.
    kubectl_ok(&["create", "serviceaccount", "default", "-n", bed.ns()]);
    rollout_common::scenario_preflight_gates_the_network_change(&bed.backend, bed.ns()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_a_network_change_waits_for_the_migration_in_flight() {
    let bed = Bed::new("roll-inflight").await;
    rollout_common::scenario_a_network_change_waits_for_the_migration_in_flight(
        &bed.backend,
        bed.ns(),
    )
    .await;
}
