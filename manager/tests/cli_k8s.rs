//! The `mignet` binary's verbs against the real kube-apiserver
//! (tests/k8s/up.sh), pointed at it with `--kubeconfig`: virtctl's
//! `migrate` / `migrate-cancel`, `get`, `describe`; and KubeVirt's
//! Live-Migratable column in `kubectl get vmi -o wide`.
//!
//! Run: `tests/k8s/run.sh cargo test -p mignet --test cli_k8s`

mod common;

use std::process::Output;

use common::*;
use kube::api::{Api, ListParams, PostParams};
use mignet::api::{
    VirtualMachineInstance, VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationState,
    VirtualMachineInstanceSpec, VmiCondition, VmiPhase,
};
use mignet::backend::{modify_status, KubeBackend};

/// `mignet --kubeconfig <bed> ARGS`, with no lab in its environment.
fn mignet(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_mignet"))
        .arg("--kubeconfig")
        .arg(env().kubeconfig)
        .args(args)
        .env_remove("MIGNET_LAB_DIR")
        .env_remove("KUBECONFIG")
        .output()
        .expect("run mignet")
}

fn stdout_ok(args: &[&str]) -> String {
    let out = mignet(args);
    assert!(
        out.status.success(),
        "mignet {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr_failed(args: &[&str]) -> String {
    let out = mignet(args);
    assert!(!out.status.success(), "mignet {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A Running VMI on node1 with a migration state and LiveMigratable=True,
/// written as the controller and agents write it.
async fn running_vmi(client: &kube::Client, ns: &str, name: &str) {
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(client.clone(), ns);
    vmis.create(
        &PostParams::default(),
        &VirtualMachineInstance::new(name, VirtualMachineInstanceSpec::default()),
    )
    .await
    .expect("create VMI");
    let backend = KubeBackend::unwatched(client.clone());
    modify_status::<_, VirtualMachineInstance>(&backend, ns, name, |v| {
        let st = v.status.get_or_insert_with(Default::default);
        st.phase = Some(VmiPhase::Running);
        st.node_name = Some("node1".into());
        st.conditions = vec![VmiCondition {
            type_: "LiveMigratable".into(),
            status: "True".into(),
            ..Default::default()
        }];
        st.migration_state = Some(VirtualMachineInstanceMigrationState {
            source_node: Some("node1".into()),
            target_node: Some("node2".into()),
            target_node_address: Some("10.200.5.18:43891".into()),
            completed: Some(false),
            ..Default::default()
        });
        true
    })
    .await
    .expect("status write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_migrate_cancel_with_kubeconfig_print_virtctls_lines() {
    ensure_crds();
    let ns = TestNamespace::new("mignet-cli");
    let client = client().await;
    running_vmi(&client, &ns.name, "vmi-fedora").await;

    assert_eq!(
        stdout_ok(&["migrate", "vmi-fedora", "-n", &ns.name]),
        "VM vmi-fedora was scheduled to migrate\n"
    );
    let vmims: Api<VirtualMachineInstanceMigration> = Api::namespaced(client.clone(), &ns.name);
    let list = vmims.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].spec.vmi_name, "vmi-fedora");
    assert_eq!(
        list[0].metadata.generate_name.as_deref(),
        Some("kubevirt-migrate-vm-")
    );

    let err = stderr_failed(&["migrate", "vmi-nope", "-n", &ns.name]);
    assert!(
        err.contains(&format!(
            "VirtualMachine vmi-nope not found in namespace {}",
            ns.name
        )),
        "{err}"
    );

    assert_eq!(
        stdout_ok(&["migrate-cancel", "vmi-fedora", "-n", &ns.name]),
        "VM vmi-fedora was scheduled to migrate-cancel\n"
    );
    // No controller holds a finalizer here: the delete removes it.
    assert!(vmims
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    let err = stderr_failed(&["migrate-cancel", "vmi-fedora", "-n", &ns.name]);
    assert!(
        err.contains("Found no migration to cancel for vmi-fedora"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_describe_with_kubeconfig_read_the_cluster() {
    ensure_crds();
    let ns = TestNamespace::new("mignet-cli");
    let client = client().await;
    running_vmi(&client, &ns.name, "vmi-fedora").await;

    let table = stdout_ok(&["get", "vmi", "-n", &ns.name]);
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with("NAME"), "{table}");
    let row = lines.next().unwrap_or_default();
    assert!(
        row.starts_with("vmi-fedora") && row.contains("Running") && row.contains("node1"),
        "{table}"
    );
    assert_eq!(
        stdout_ok(&[
            "get",
            "vmi",
            "vmi-fedora",
            "-n",
            &ns.name,
            "-o",
            "jsonpath={.status.migrationState.targetNodeAddress}",
        ]),
        "10.200.5.18:43891"
    );
    let json: serde_json::Value =
        serde_json::from_str(&stdout_ok(&["get", "vmi", "-n", &ns.name, "-o", "json"])).unwrap();
    assert_eq!(json["kind"], "List");
    assert_eq!(json["items"][0]["metadata"]["name"], "vmi-fedora");
    assert_eq!(
        stdout_ok(&["get", "vmim", "-n", &ns.name]),
        format!("No resources found in {} namespace.\n", ns.name)
    );

    // $KUBECONFIG instead of the flag: the same cluster (kubectl's rule),
    // unless a lab is up at the default directory, where the verb refuses
    // to guess (cli::target).
    let by_env = std::process::Command::new(env!("CARGO_BIN_EXE_mignet"))
        .args(["get", "vmi", "vmi-fedora", "-n", &ns.name, "-o", "name"])
        .env("KUBECONFIG", env().kubeconfig)
        .env_remove("MIGNET_LAB_DIR")
        .output()
        .unwrap();
    if mignet::lab::state_file(std::path::Path::new(mignet::lab::DEFAULT_DIR)).exists() {
        let err = String::from_utf8_lossy(&by_env.stderr);
        assert!(err.contains("--kubeconfig PATH or --lab"), "{err}");
    } else {
        assert_eq!(
            String::from_utf8_lossy(&by_env.stdout),
            "virtualmachineinstance.kubevirt.io/vmi-fedora\n",
            "{}",
            String::from_utf8_lossy(&by_env.stderr)
        );
    }

    let d = stdout_ok(&["describe", "vmi", "vmi-fedora", "-n", &ns.name]);
    for line in [
        "Phase:        Running\n",
        "Node Name:    node1\n",
        "Conditions: LiveMigratable=True\n",
        "Migration State:\n",
        "  Completed: false\n",
        "  Source Node: node1\n",
        "  Target Node: node2\n",
        "  Target Node Address: 10.200.5.18:43891\n",
    ] {
        assert!(d.contains(line), "missing {line:?} in:\n{d}");
    }
    let err = stderr_failed(&["describe", "vmi", "vmi-nope", "-n", &ns.name]);
    assert!(
        err.contains("vmi-nope") && err.contains("not found"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_get_vmi_wide_shows_live_migratable() {
    ensure_crds();
    let ns = TestNamespace::new("mignet-cli");
    let client = client().await;
    running_vmi(&client, &ns.name, "vmi-fedora").await;
    let plain = kubectl_ok(&["get", "vmi", "-n", &ns.name]);
    assert!(
        !plain.contains("LIVE-MIGRATABLE"),
        "priority 1: wide only\n{plain}"
    );
    let wide = kubectl_ok(&["get", "vmi", "-n", &ns.name, "-o", "wide"]);
    let mut lines = wide.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.contains("LIVE-MIGRATABLE"), "{wide}");
    let col = header.find("LIVE-MIGRATABLE").unwrap();
    assert_eq!(
        lines.next().unwrap_or_default().get(col..col + 4),
        Some("True"),
        "{wide}"
    );
}

/// One controller pass over the test's namespace (no Nodes of its own, so
/// the node steps leave other tests' Nodes alone).
async fn controller_pass(client: &kube::Client, ns: &str) {
    let settings = mignet::control::Settings {
        namespace: Some(ns.to_owned()),
        hco_namespace: Some(ns.to_owned()),
        node_selector: Some(("mignet.io/test".into(), ns.to_owned())),
        ..Default::default()
    };
    let b = KubeBackend::new(client.clone(), Some(ns));
    let now = k8s_openapi::jiff::Timestamp::now();
    mignet::control::reconcile_once(&b, &settings, now)
        .await
        .expect("controller pass");
}

fn jsonpath(kind: &str, ns: &str, path: &str) -> String {
    kubectl_ok(&[
        "get",
        kind,
        "custom-vm",
        "-n",
        ns,
        "-o",
        &format!("jsonpath={path}"),
    ])
}

/// Section 10.7.1 against the API server: `kubectl patch` adds
/// `evictionStrategy: LiveMigrate` to a running VM, `mignet restart vm`
/// (through --kubeconfig) queues KubeVirt's [Stop{uid}, Start] in the VM's
/// status (kept by the API server), and controller passes over the
/// KubeBackend replace the VMI with one carrying the new strategy. Then
/// virtctl's refusals and stop/start as runStrategy changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_stop_start_vm_with_kubeconfig() {
    ensure_crds();
    let ns = TestNamespace::new("mignet-cli-power");
    let client = client().await;
    let vm: mignet::api::VirtualMachine = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachine",
        "metadata": {"name": "custom-vm", "namespace": &ns.name},
        "spec": {
            "runStrategy": "Always",
            "template": {"spec": {"domain": {"memory": {"guest": "256Mi"}}}}
        }
    }))
    .unwrap();
    Api::<mignet::api::VirtualMachine>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &vm)
        .await
        .expect("create VM");
    controller_pass(&client, &ns.name).await;
    let old_uid = jsonpath("vmi", &ns.name, "{.metadata.uid}");
    assert!(!old_uid.is_empty());
    let backend = KubeBackend::unwatched(client.clone());
    let running = || async {
        modify_status::<_, VirtualMachineInstance>(&backend, &ns.name, "custom-vm", |v| {
            v.status.get_or_insert_with(Default::default).phase = Some(VmiPhase::Running);
            true
        })
        .await
        .expect("status write")
        .expect("VMI exists");
    };
    running().await;

    kubectl_ok(&[
        "patch",
        "vm",
        "custom-vm",
        "-n",
        &ns.name,
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"template":{"spec":{"evictionStrategy":"LiveMigrate"}}}}"#,
    ]);
    assert_eq!(
        stdout_ok(&["restart", "vm", "custom-vm", "-n", &ns.name]),
        "VM custom-vm was scheduled to restart\n"
    );
    assert_eq!(
        jsonpath(
            "vm",
            &ns.name,
            "{.status.stateChangeRequests[*].action} {.status.stateChangeRequests[0].uid}"
        ),
        format!("Stop Start {old_uid}")
    );
    let err = stderr_failed(&["restart", "vm", "custom-vm", "-n", &ns.name]);
    assert!(
        err.contains("unable to complete request: stop/start already underway"),
        "{err}"
    );
    controller_pass(&client, &ns.name).await; // deletes the old VMI
    controller_pass(&client, &ns.name).await; // makes the new one
    assert_ne!(jsonpath("vmi", &ns.name, "{.metadata.uid}"), old_uid);
    assert_eq!(
        jsonpath("vmi", &ns.name, "{.spec.evictionStrategy}"),
        "LiveMigrate"
    );
    running().await;
    controller_pass(&client, &ns.name).await; // the Start is done
    assert_eq!(
        jsonpath("vm", &ns.name, "{.status.stateChangeRequests}"),
        ""
    );
    assert_eq!(
        jsonpath("vm", &ns.name, "{.status.printableStatus}"),
        "Running"
    );

    let err = stderr_failed(&["start", "vm", "custom-vm", "-n", &ns.name]);
    assert!(
        err.contains(&format!(
            "Error starting VirtualMachine custom-vm in namespace {}: VM is already running",
            ns.name
        )),
        "{err}"
    );
    assert_eq!(
        stdout_ok(&["stop", "vm", "custom-vm", "-n", &ns.name]),
        "VM custom-vm was scheduled to stop\n"
    );
    assert_eq!(jsonpath("vm", &ns.name, "{.spec.runStrategy}"), "Halted");
    let err = stderr_failed(&["restart", "vm", "custom-vm", "-n", &ns.name]);
    assert!(
        err.contains("RunStrategy Halted does not support manual restart requests"),
        "{err}"
    );
    // Until the controller stops it, the VMI runs: start is refused.
    let err = stderr_failed(&["start", "vm", "custom-vm", "-n", &ns.name]);
    assert!(err.contains("VM is already running"), "{err}");
    controller_pass(&client, &ns.name).await;
    assert_eq!(
        kubectl_ok(&["get", "vmi", "-n", &ns.name, "-o", "name"]),
        ""
    );
    assert_eq!(
        stdout_ok(&["start", "vm", "custom-vm", "-n", &ns.name]),
        "VM custom-vm was scheduled to start\n"
    );
    assert_eq!(jsonpath("vm", &ns.name, "{.spec.runStrategy}"), "Always");
    let err = stderr_failed(&["stop", "vm", "nope", "-n", &ns.name]);
    assert!(
        err.contains(&format!(
            "VirtualMachine nope not found in namespace {}",
            ns.name
        )),
        "{err}"
    );
}
