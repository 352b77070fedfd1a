//! Tests against the real kube-apiserver (tests/k8s/up.sh). Each test works
//! in a namespace of its own and runs the manager's controller in-process.
//!
//! Run: `tests/k8s/run.sh cargo test -p mignet --test k8s -- --nocapture`
//! (prints the reconcile latency table).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client};
use mignet::api::{
    HyperConverged, HyperConvergedSpec, LiveMigrationConfig, MigrationAbortStatus, MigrationMode,
    MigrationPhase, NetworkAttachmentDefinition, NetworkAttachmentDefinitionSpec,
    VirtualMachineInstance, VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationSpec,
    VirtualMachineInstanceMigrationState, VirtualMachineInstanceSpec,
};
use mignet::backend::{modify_status, protocol, Backend, KubeBackend};
use mignet::network::decide::{
    reason, CONDITION_TYPE, NETWORKS_ANNOTATION, NETWORK_HASH_ANNOTATION,
};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

async fn create_nad(client: &Client, ns: &str, name: &str, config: &str) {
    let api: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), ns);
    let nad = NetworkAttachmentDefinition::new(
        name,
        NetworkAttachmentDefinitionSpec {
            config: Some(config.to_owned()),
        },
    );
    api.create(&PostParams::default(), &nad)
        .await
        .expect("create NAD");
}

async fn create_hco(client: &Client, ns: &str, network: Option<&str>) -> HyperConverged {
    let api: Api<HyperConverged> = Api::namespaced(client.clone(), ns);
    let hco = HyperConverged::new(
        "kubevirt-hyperconverged",
        HyperConvergedSpec {
            live_migration_config: Some(LiveMigrationConfig {
                bandwidth_per_migration: Some("64Mi".into()),
                network: network.map(str::to_owned),
                ..Default::default()
            }),
        },
    );
    api.create(&PostParams::default(), &hco)
        .await
        .expect("create HCO")
}

async fn set_network(client: &Client, ns: &str, network: Option<&str>) {
    let api: Api<HyperConverged> = Api::namespaced(client.clone(), ns);
    let patch = json!({"spec": {"liveMigrationConfig": {"network": network}}});
    api.patch(
        "kubevirt-hyperconverged",
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .expect("patch HCO network");
}

async fn template_annotations(client: &Client, ns: &str) -> BTreeMap<String, String> {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let ds = api.get("mignet-agent").await.expect("get DaemonSet");
    ds.spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .unwrap_or_default()
}

async fn network_condition(client: &Client, ns: &str) -> Option<Condition> {
    let api: Api<HyperConverged> = Api::namespaced(client.clone(), ns);
    let hco = api.get("kubevirt-hyperconverged").await.expect("get HCO");
    hco.status?
        .conditions
        .into_iter()
        .find(|c| c.type_ == CONDITION_TYPE)
}

async fn wait_condition_reason(client: &Client, ns: &str, reason: &str) -> Condition {
    wait_for(&format!("condition reason {reason}"), WAIT, || async {
        network_condition(client, ns)
            .await
            .filter(|c| c.reason == reason)
    })
    .await
    .0
}

/// Play the DaemonSet controller: report every agent updated and ready.
async fn mark_daemonset_rolled_out(client: &Client, ns: &str, agents: i32) {
    let api: Api<DaemonSet> = Api::namespaced(client.clone(), ns);
    let ds = api.get("mignet-agent").await.unwrap();
    let patch = json!({"status": {
        "observedGeneration": ds.metadata.generation,
        "currentNumberScheduled": agents, "desiredNumberScheduled": agents,
        "numberMisscheduled": 0, "numberReady": agents,
        "updatedNumberScheduled": agents, "numberAvailable": agents,
    }});
    api.patch_status(
        "mignet-agent",
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .expect("patch DaemonSet status");
}

#[test]
fn deploy_kustomization_passes_server_dry_run() {
    ensure_crds();
    // Dry-run cannot create the namespace its objects go into; create the
    // product namespace for real (idempotent: apply).
    kubectl_ok(&["apply", "-f", "deploy/base/namespace.yaml"]);
    let out = kubectl_ok(&["apply", "--dry-run=server", "-k", "deploy/"]);
    for kind in [
        "deployment.apps/mignet-manager",
        "daemonset.apps/mignet-agent",
        "daemonset.apps/mignet-cni-installer",
        "clusterrole.rbac.authorization.k8s.io/mignet-manager",
        "role.rbac.authorization.k8s.io/mignet-manager",
        "clusterrole.rbac.authorization.k8s.io/mignet-agent",
        "service/mignet-manager-metrics",
        "service/mignet-agent-metrics",
    ] {
        assert!(out.contains(kind), "{kind} missing from dry run:\n{out}");
    }
    // ServiceMonitors are an overlay of their own: the default apply must
    // not need the Prometheus operator's CRDs.
    assert!(!out.contains("servicemonitor"), "{out}");
    let mon = kubectl_ok(&["kustomize", "deploy/overlays/monitoring"]);
    assert_eq!(mon.matches("kind: ServiceMonitor").count(), 2, "{mon}");
    assert!(
        mon.contains("app.kubernetes.io/component: metrics"),
        "{mon}"
    );
    assert!(out.contains("(server dry run)"), "{out}");
    // The seed's CRs are a separate step (deploy/examples), applied once
    // their CRDs are established: in one pass with the CRDs, a fresh
    // cluster refuses them ("no matches for kind HyperConverged").
    assert!(!out.contains("hyperconverged.hco.kubevirt.io/"), "{out}");
    let examples = kubectl_ok(&["apply", "--dry-run=server", "-k", "deploy/examples"]);
    for kind in [
        "hyperconverged.hco.kubevirt.io/kubevirt-hyperconverged",
        "networkattachmentdefinition.k8s.cni.cncf.io/my-secondary-network",
    ] {
        assert!(
            examples.contains(kind),
            "{kind} missing from dry run:\n{examples}"
        );
    }
    // The bed's overlay renders with its pull policy.
    let bed = kubectl_ok(&["kustomize", "deploy/overlays/bed"]);
    assert!(bed.contains("imagePullPolicy: Never"), "{bed}");
}

#[test]
fn seed_vm_and_vmim_pass_server_dry_run() {
    ensure_crds();
    let ns = TestNamespace::new("mignet-ex");
    let out = kubectl_ok(&[
        "apply",
        "--dry-run=server",
        "-n",
        &ns.name,
        "-f",
        "examples/vm.yaml",
        "-f",
        "examples/vmim.yaml",
    ]);
    assert!(
        out.contains("virtualmachine.kubevirt.io/vm-fedora created (server dry run)"),
        "{out}"
    );
    assert!(
        out.contains(
            "virtualmachineinstancemigration.kubevirt.io/migration-job created (server dry run)"
        ),
        "{out}"
    );
    // Fields our subset does not model survive (preserve-unknown-fields
    // where the real object has far more than we read).
    let devices = kubectl_ok(&[
        "create",
        "--dry-run=server",
        "-n",
        &ns.name,
        "-f",
        "examples/vm.yaml",
        "-o",
        "jsonpath={.spec.template.spec.domain.devices.disks[0].disk.bus}",
    ]);
    assert_eq!(devices, "virtio");
    // The CRD schema rejects a bandwidth that is not a quantity.
    let bad = format!(
        "apiVersion: hco.kubevirt.io/v1beta1\nkind: HyperConverged\nmetadata: {{name: x, namespace: {}}}\nspec:\n  liveMigrationConfig: {{bandwidthPerMigration: fast}}\n",
        ns.name
    );
    let out = kubectl_stdin(&["create", "--dry-run=server", "-f", "-"], &bad);
    assert!(!out.status.success(), "a garbage bandwidth must be refused");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bandwidthPerMigration"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_network_annotates_daemonset_and_follows_changes() {
    ensure_crds();
    let ns = TestNamespace::new("mignet-roll");
    let client = client().await;
    create_agent_daemonset(&client, &ns.name).await;
    create_nad(&client, &ns.name, "my-secondary-network", SEED_NAD_CONFIG).await;
    let other = SEED_NAD_CONFIG.replace("10.200.5.0/24", "10.201.0.0/24");
    create_nad(&client, &ns.name, "other-network", &other).await;

    let _ctl = RunningController::start(client.clone(), settings(&ns.name));
    // Let the controller's watches establish so we time reconciles, not start-up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut table: Vec<(&str, Duration)> = Vec::new();

    // 1. Seed: network my-secondary-network.
    let t0 = Instant::now();
    create_hco(&client, &ns.name, Some("my-secondary-network")).await;
    let (ann, _) = wait_for("networks annotation", WAIT, || async {
        let a = template_annotations(&client, &ns.name).await;
        a.contains_key(NETWORKS_ANNOTATION).then_some(a)
    })
    .await;
    table.push(("create HCO (network set)", t0.elapsed()));
    assert_eq!(
        ann.get(NETWORKS_ANNOTATION).map(String::as_str),
        Some("my-secondary-network@migration0")
    );
    let hash1 = ann
        .get(NETWORK_HASH_ANNOTATION)
        .cloned()
        .expect("hash annotation");
    assert_eq!(ann.get("example.com/keep").map(String::as_str), Some("yes"));
    let c = wait_condition_reason(&client, &ns.name, reason::ROLLING_OUT).await;
    assert_eq!(c.status, "False");

    // The DaemonSet controller would now roll the agents; play it.
    mark_daemonset_rolled_out(&client, &ns.name, 3).await;
    let c = wait_condition_reason(&client, &ns.name, reason::ROLLED_OUT).await;
    assert_eq!(c.status, "True");
    assert!(c.message.contains("my-secondary-network"), "{}", c.message);
    assert!(c.message.contains("3 of 3 agents"), "{}", c.message);

    // 2. Another valid NAD: annotation and hash change.
    let t0 = Instant::now();
    set_network(&client, &ns.name, Some("other-network")).await;
    let (ann, _) = wait_for("annotation for other-network", WAIT, || async {
        let a = template_annotations(&client, &ns.name).await;
        (a.get(NETWORKS_ANNOTATION).map(String::as_str) == Some("other-network@migration0"))
            .then_some(a)
    })
    .await;
    table.push(("change network", t0.elapsed()));
    let hash2 = ann.get(NETWORK_HASH_ANNOTATION).cloned().expect("hash");
    assert_ne!(hash1, hash2, "a different network must change the hash");

    // 3. Editing the NAD itself (same name) changes the hash too.
    let t0 = Instant::now();
    let nads: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), &ns.name);
    let edited = other.replace("eth1", "eth2");
    nads.patch(
        "other-network",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"config": edited}})),
    )
    .await
    .unwrap();
    let (hash3, _) = wait_for("hash after NAD edit", WAIT, || async {
        let a = template_annotations(&client, &ns.name).await;
        a.get(NETWORK_HASH_ANNOTATION)
            .filter(|h| **h != hash2)
            .cloned()
    })
    .await;
    table.push(("edit NAD config", t0.elapsed()));
    assert_ne!(hash3, hash1);

    // 4. Remove the network: both annotations go, the foreign one stays.
    let t0 = Instant::now();
    set_network(&client, &ns.name, None).await;
    let (ann, _) = wait_for("annotations removed", WAIT, || async {
        let a = template_annotations(&client, &ns.name).await;
        (!a.contains_key(NETWORKS_ANNOTATION)).then_some(a)
    })
    .await;
    table.push(("remove network", t0.elapsed()));
    assert!(!ann.contains_key(NETWORK_HASH_ANNOTATION), "{ann:?}");
    assert_eq!(ann.get("example.com/keep").map(String::as_str), Some("yes"));
    mark_daemonset_rolled_out(&client, &ns.name, 3).await;
    let c = wait_condition_reason(&client, &ns.name, reason::POD_NETWORK).await;
    assert_eq!(c.status, "True");

    println!("\nreconcile latency: HyperConverged/NAD write -> DaemonSet template observed");
    println!("{:<28} {:>10}", "step", "ms");
    for (step, d) in &table {
        println!("{step:<28} {:>10.1}", d.as_secs_f64() * 1000.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_or_missing_nad_leaves_daemonset_untouched() {
    ensure_crds();
    let ns = TestNamespace::new("mignet-bad");
    let client = client().await;
    create_agent_daemonset(&client, &ns.name).await;
    create_nad(&client, &ns.name, "good", SEED_NAD_CONFIG).await;
    let bad_range = SEED_NAD_CONFIG.replace("10.200.5.0/24", "10.200.5.0/40");
    create_nad(&client, &ns.name, "bad-range", &bad_range).await;
    let overlapping = SEED_NAD_CONFIG.replace("10.200.5.0/24", "10.244.7.0/24");
    create_nad(&client, &ns.name, "overlapping", &overlapping).await;

    let _ctl = RunningController::start(client.clone(), settings(&ns.name));
    create_hco(&client, &ns.name, Some("good")).await;
    let (good, _) = wait_for("good network applied", WAIT, || async {
        let a = template_annotations(&client, &ns.name).await;
        a.contains_key(NETWORK_HASH_ANNOTATION).then_some(a)
    })
    .await;
    let ds_api: Api<DaemonSet> = Api::namespaced(client.clone(), &ns.name);
    let before = ds_api.get("mignet-agent").await.unwrap();

    for (network, want_reason, needle) in [
        ("bad-range", reason::INVALID_NAD, "10.200.5.0/40"),
        ("overlapping", reason::RANGE_OVERLAP, POD_CIDR),
        ("does-not-exist", reason::NAD_NOT_FOUND, "does-not-exist"),
    ] {
        set_network(&client, &ns.name, Some(network)).await;
        let c = wait_condition_reason(&client, &ns.name, want_reason).await;
        assert_eq!(c.status, "False", "{network}");
        assert!(c.message.contains(needle), "{network}: {}", c.message);
        let now = ds_api.get("mignet-agent").await.unwrap();
        assert_eq!(
            now.metadata.resource_version, before.metadata.resource_version,
            "{network}: the DaemonSet must not be written"
        );
        assert_eq!(template_annotations(&client, &ns.name).await, good);
    }

    // A bad unrelated field is reported on its own condition, naming field
    // and value (the CRD pattern allows a sign; our validation does not).
    let hcos: Api<HyperConverged> = Api::namespaced(client.clone(), &ns.name);
    hcos.patch(
        "kubevirt-hyperconverged",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"liveMigrationConfig": {"bandwidthPerMigration": "-1Mi"}}})),
    )
    .await
    .unwrap();
    let (c, _) = wait_for("MigrationConfigValid=False", WAIT, || async {
        let hco = hcos.get("kubevirt-hyperconverged").await.ok()?;
        hco.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "MigrationConfigValid" && c.status == "False")
    })
    .await;
    assert!(
        c.message.contains("bandwidthPerMigration") && c.message.contains("-1Mi"),
        "{}",
        c.message
    );

    // A second HyperConverged in the namespace is not ours to follow.
    let stranger = HyperConverged::new(
        "someone-else",
        HyperConvergedSpec {
            live_migration_config: Some(LiveMigrationConfig {
                network: Some("good".into()),
                ..Default::default()
            }),
        },
    );
    hcos.create(&PostParams::default(), &stranger)
        .await
        .unwrap();

    // Creating the missing NAD is itself a trigger: the NAD watch applies it.
    create_nad(&client, &ns.name, "does-not-exist", SEED_NAD_CONFIG).await;
    wait_for("late NAD applied", WAIT, || async {
        let a = template_annotations(&client, &ns.name).await;
        (a.get(NETWORKS_ANNOTATION).map(String::as_str) == Some("does-not-exist@migration0"))
            .then_some(())
    })
    .await;
    let c = wait_condition_reason(&client, &ns.name, reason::ROLLING_OUT).await;
    assert!(c.message.contains("does-not-exist"), "{}", c.message);
    let stranger = hcos.get("someone-else").await.unwrap();
    assert_eq!(
        stranger.status, None,
        "only the configured HyperConverged is followed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vmi_migration_state_reads_back_with_kubectl_jsonpath() {
    ensure_crds();
    let ns = TestNamespace::new("mignet-vmi");
    let client = client().await;
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), &ns.name);
    let vmi = VirtualMachineInstance::new("vmi-fedora", VirtualMachineInstanceSpec::default());
    vmis.create(&PostParams::default(), &vmi)
        .await
        .expect("create VMI");

    let start = Time(Timestamp::from_second(1_545_632_375).unwrap());
    let state = VirtualMachineInstanceMigrationState {
        start_timestamp: Some(start),
        migration_uid: Some("d78c8962-0743-11e9-a540-fa163e0c69f1".into()),
        source_node: Some("node2.example.com".into()),
        target_node: Some("node1.example.com".into()),
        target_node_address: Some("10.200.5.18:43891".into()),
        target_node_domain_detected: Some(true),
        mode: Some(MigrationMode::PreCopy),
        target_direct_migration_node_ports: [("43891".to_owned(), 0), ("43892".to_owned(), 49152)]
            .into_iter()
            .collect(),
        ..Default::default()
    };
    // Written the way the agents write: read, change, merge-patch what
    // changed, conditional on the resourceVersion read.
    let backend = KubeBackend::unwatched(client.clone());
    let write = |change: VirtualMachineInstanceMigrationState| {
        let backend = &backend;
        let ns = ns.name.clone();
        async move {
            modify_status::<_, VirtualMachineInstance>(backend, &ns, "vmi-fedora", move |v| {
                let st = v.status.get_or_insert_with(Default::default);
                let ms = st.migration_state.get_or_insert_with(Default::default);
                if change.start_timestamp.is_some() {
                    *ms = change.clone();
                } else {
                    ms.completed = change.completed;
                    ms.abort_status = change.abort_status;
                }
                true
            })
            .await
            .expect("status write")
        }
    };
    write(state).await;
    // A second, partial write (the source side) must not erase the first.
    write(VirtualMachineInstanceMigrationState {
        completed: Some(true),
        abort_status: Some(MigrationAbortStatus::Succeeded),
        ..Default::default()
    })
    .await;

    let jp = |path: &str| {
        kubectl_ok(&[
            "get",
            "vmi",
            "vmi-fedora",
            "-n",
            &ns.name,
            "-o",
            &format!("jsonpath={{{path}}}"),
        ])
    };
    assert_eq!(
        jp(".status.migrationState.targetNodeAddress"),
        "10.200.5.18:43891"
    );
    assert_eq!(jp(".status.migrationState.completed"), "true");
    assert_eq!(jp(".status.migrationState.sourceNode"), "node2.example.com");
    assert_eq!(
        jp(".status.migrationState.startTimestamp"),
        "2018-12-24T06:19:35Z"
    );
    assert_eq!(jp(".status.migrationState.abortStatus"), "Succeeded");
    assert_eq!(
        jp(".status.migrationState.targetDirectMigrationNodePorts.43892"),
        "49152"
    );

    // The VMIM status writer: phase plus a transition timestamp per phase.
    let vmims: Api<VirtualMachineInstanceMigration> = Api::namespaced(client.clone(), &ns.name);
    let m = VirtualMachineInstanceMigration::new(
        "migration-job",
        VirtualMachineInstanceMigrationSpec {
            vmi_name: "vmi-fedora".into(),
        },
    );
    let m = vmims.create(&PostParams::default(), &m).await.unwrap();
    let enter = |phase| {
        let backend = &backend;
        let ns = ns.name.clone();
        async move {
            modify_status::<_, VirtualMachineInstanceMigration>(
                backend,
                &ns,
                "migration-job",
                move |m| {
                    protocol::enter_phase(m, phase, Time(Timestamp::now()));
                    true
                },
            )
            .await
            .expect("phase write")
            .expect("migration exists")
        }
    };
    enter(MigrationPhase::Pending).await;
    enter(MigrationPhase::Scheduling).await;
    let phases = kubectl_ok(&[
        "get",
        "vmim",
        "migration-job",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.status.phase} {.status.phaseTransitionTimestamps[*].phase}",
    ]);
    assert_eq!(phases, "Scheduling Pending Scheduling");
    // A stale copy (old resourceVersion) is refused: no double append.
    let mut stale = m.clone();
    protocol::enter_phase(&mut stale, MigrationPhase::Failed, Time(Timestamp::now()));
    let refused = backend.patch_status(&m, &stale).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.is_conflict()),
        "a write from a stale read must be a conflict, got {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_runs_under_its_own_least_privilege_rbac() {
    ensure_crds();
    let ns = TestNamespace::new("mignet-rbac");
    let admin = client().await;
    let rbac = TestRbac::apply(&ns.name);
    create_agent_daemonset(&admin, &ns.name).await;
    create_nad(&admin, &ns.name, "my-secondary-network", SEED_NAD_CONFIG).await;
    create_hco(&admin, &ns.name, Some("my-secondary-network")).await;

    // RBAC takes effect asynchronously in the authorizer's cache.
    let manager = client_as(&rbac.manager_sa).await;
    wait_for("manager RBAC effective", WAIT, || async {
        let api: Api<HyperConverged> = Api::namespaced(manager.clone(), &ns.name);
        api.get("kubevirt-hyperconverged").await.ok()
    })
    .await;
    let _ctl = RunningController::start(manager.clone(), settings(&ns.name));
    wait_for("annotation written by the manager SA", WAIT, || async {
        let a = template_annotations(&admin, &ns.name).await;
        a.contains_key(NETWORK_HASH_ANNOTATION).then_some(())
    })
    .await;
    wait_condition_reason(&admin, &ns.name, reason::ROLLING_OUT).await;

    // What each role may and may not do (kubectl auth can-i as the SA).
    let can = |who: &str, verb: &str, what: &str, namespace: Option<&str>| {
        // `what` may carry flags, e.g. "hyperconvergeds --subresource=status".
        let mut args = vec!["auth", "can-i", verb];
        args.extend(what.split_whitespace());
        args.extend(["--as", who]);
        if let Some(n) = namespace {
            args.extend(["-n", n]);
        }
        let out = kubectl(&args);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    let (m, a, n) = (
        rbac.manager_sa.as_str(),
        rbac.agent_sa.as_str(),
        Some(ns.name.as_str()),
    );
    assert!(can(m, "patch", "daemonsets/mignet-agent", n));
    assert!(!can(m, "patch", "daemonsets/something-else", n));
    assert!(
        !can(m, "patch", "hyperconvergeds", n),
        "spec is the admin's"
    );
    assert!(can(m, "patch", "hyperconvergeds --subresource=status", n));
    assert!(can(
        m,
        "create",
        "virtualmachineinstancemigrations",
        Some("default")
    ));
    assert!(can(m, "patch", "nodes", None));
    assert!(!can(m, "delete", "nodes", None));
    assert!(!can(m, "get", "secrets", n));
    assert!(can(
        a,
        "patch",
        "virtualmachineinstances --subresource=status",
        Some("default")
    ));
    assert!(!can(a, "patch", "virtualmachineinstances", Some("default")));
    assert!(!can(
        a,
        "create",
        "virtualmachineinstancemigrations",
        Some("default")
    ));
    // The agent lists and watches no Node (its backend watches VMIs, VMIMs
    // and HyperConvergeds only); it reads and patches its own node's labels
    // at start (kubevirt.io/schedulable, mignet.io/kvm, host-model CPU);
    // incluster_identity.rs runs it under its token.
    assert!(!can(a, "list", "nodes", None));
    assert!(can(a, "patch", "nodes", None));
    assert!(!can(a, "delete", "nodes", None));
    // Launcher pods: the manager makes and removes them, never changes one;
    // the agent touches no pod.
    assert!(can(m, "create", "pods", Some("default")));
    assert!(can(m, "delete", "pods", Some("default")));
    assert!(!can(m, "update", "pods", Some("default")));
    assert!(can(m, "list", "persistentvolumeclaims", Some("default")));
    assert!(!can(a, "create", "pods", Some("default")));
    // The CA Secret by name only; no other Secret.
    assert!(can(m, "get", "secrets/mignet-ca", n));
    assert!(!can(m, "get", "secrets/other", n));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mignet_manager_binary_rolls_out_and_stops_on_sigterm() {
    ensure_crds();
    let ns = TestNamespace::new("mignet-bin");
    let client = client().await;
    create_agent_daemonset(&client, &ns.name).await;
    create_nad(&client, &ns.name, "my-secondary-network", SEED_NAD_CONFIG).await;

    let log = std::env::temp_dir().join(format!("{}-manager.log", ns.name));
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http_addr = format!("127.0.0.1:{http_port}");
    let mut child = common::ChildGuard(
        std::process::Command::new(env!("CARGO_BIN_EXE_mignet"))
            .args([
                "manager",
                "--namespace",
                &ns.name,
                "--agent-daemonset",
                "mignet-agent",
                "--pod-cidr",
                POD_CIDR,
                "--service-cidr",
                SERVICE_CIDR,
                "--http-addr",
                &http_addr,
                // Other tests share the API server: a network change here
                // waits only for this namespace's migrations.
                "--migrations-namespace",
                &ns.name,
            ])
            .env("KUBECONFIG", env().kubeconfig)
            .stderr(std::fs::File::create(&log).unwrap())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn mignet manager"),
    );
    create_hco(&client, &ns.name, Some("my-secondary-network")).await;
    wait_for("annotation from the binary", WAIT, || async {
        let a = template_annotations(&client, &ns.name).await;
        (a.get(NETWORKS_ANNOTATION).map(String::as_str) == Some("my-secondary-network@migration0"))
            .then_some(())
    })
    .await;
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "manager exited early"
    );
    assert!(common::http_get(&http_addr, "/readyz").starts_with("HTTP/1.0 200"));
    // The pass counts its DaemonSet write when it ends, a moment after the
    // write is visible.
    let (metrics, _) = wait_for("the DaemonSet write counted", WAIT, || async {
        let m = common::http_get(&http_addr, "/metrics");
        m.contains("mignet_rollout_daemonset_patches_total 1\n")
            .then_some(m)
    })
    .await;
    assert!(metrics.contains("mignet_manager_ready 1\n"), "{metrics}");
    // The agent CA was created and its certificate (only) published.
    let bundle = kubectl_ok(&[
        "get",
        "configmap",
        "mignet-ca-bundle",
        "-n",
        &ns.name,
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    assert!(bundle.contains("BEGIN CERTIFICATE"), "{bundle}");
    assert!(!bundle.contains("PRIVATE KEY"));

    let pid = child.0.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let (status, _) = wait_for("manager exit after SIGTERM", WAIT, || {
        let s = child.0.try_wait().unwrap();
        async move { s }
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(status.success(), "exit {status:?}; log:\n{text}");
}
