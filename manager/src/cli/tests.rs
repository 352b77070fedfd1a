use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::json;

use super::*;

struct Tmp(PathBuf);
impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tmp() -> (Tmp, Store) {
    static N: AtomicU32 = AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!(
        "mignet-cli-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let s = Store::open(&p).unwrap();
    (Tmp(p), s)
}

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn get(store: &Store, args: &[&str], output: Option<&str>) -> Result<String, CliError> {
    run_on(
        store,
        Verb::Get {
            resource: args[0].into(),
            name: args.get(1).map(|s| (*s).to_owned()),
            output: output.map(str::to_owned),
            namespace: Some(LAB_NAMESPACE.into()),
            all_namespaces: false,
        },
    )
}

#[test]
fn seed_files_create_and_list() {
    let (_t, store) = tmp();
    let files = ["nad.yaml", "hyperconverged.yaml", "vm.yaml", "vmim.yaml"]
        .iter()
        .map(|f| examples().join(f))
        .collect();
    let out = run_on(
        &store,
        Verb::Create {
            files,
            namespace: LAB_NAMESPACE.into(),
        },
    )
    .unwrap();
    assert_eq!(
        out,
        "networkattachmentdefinition.k8s.cni.cncf.io/my-secondary-network created\n\
         hyperconverged.hco.kubevirt.io/kubevirt-hyperconverged created\n\
         virtualmachine.kubevirt.io/vm-fedora created\n\
         virtualmachineinstancemigration.kubevirt.io/migration-job created\n"
    );
    // The VMIM had no namespace: it lands in -n's.
    let t = get(&store, &["vmim"], None).unwrap();
    assert_eq!(
        t,
        "NAME            PHASE   VMI\nmigration-job           vmi-fedora\n"
    );
    assert_eq!(
        get(
            &store,
            &["vmim", "migration-job"],
            Some("jsonpath={.spec.vmiName}")
        )
        .unwrap(),
        "vmi-fedora"
    );
    assert_eq!(
        get(
            &store,
            &["hco"],
            Some("jsonpath={.items[0].spec.liveMigrationConfig.network}")
        )
        .unwrap(),
        "my-secondary-network"
    );
    // Creating twice fails like kubectl.
    let e = run_on(
        &store,
        Verb::Create {
            files: vec![examples().join("vmim.yaml")],
            namespace: LAB_NAMESPACE.into(),
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
}

#[test]
fn jsonpath_and_describe_read_the_stored_status() {
    let (_t, store) = tmp();
    let vmi = json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "vmi-fedora", "namespace": LAB_NAMESPACE},
        "spec": {"domain": {}, "evictionStrategy": "LiveMigrate"}
    });
    let mut v = store.create_value(vmi).unwrap();
    v["status"] = json!({
        "phase": "Running",
        "nodeName": "node1",
        "conditions": [{"type": "LiveMigratable", "status": "True"}],
        "migrationMethod": "LiveMigration",
        "migrationState": {
            "completed": true,
            "targetNode": "node1",
            "sourceNode": "node2",
            "targetNodeAddress": "10.200.5.3:43891",
            "targetNodeDomainDetected": true
        }
    });
    store.update_status_value(v).unwrap();
    assert_eq!(
        get(
            &store,
            &["vmi", "vmi-fedora"],
            Some("jsonpath={.status.migrationState.targetNodeAddress}")
        )
        .unwrap(),
        "10.200.5.3:43891"
    );
    assert_eq!(
        get(&store, &["vmi/vmi-fedora"], Some("jsonpath={.status.nope}")).unwrap(),
        "",
        "missing field prints nothing"
    );
    let d = run_on(
        &store,
        Verb::Describe {
            resource: "vmi".into(),
            name: Some("vmi-fedora".into()),
            namespace: Some(LAB_NAMESPACE.into()),
        },
    )
    .unwrap();
    for line in [
        "Conditions: LiveMigratable=True\n",
        "Migration Method: LiveMigration\n",
        "Migration State:\n  Completed: true\n",
        "  Target Node Address: 10.200.5.3:43891\n",
        "  Source Node: node2\n",
    ] {
        assert!(d.contains(line), "{line:?} missing in\n{d}");
    }
    let t = get(&store, &["vmi"], None).unwrap();
    assert!(t.starts_with("NAME         AGE"), "{t}");
    assert!(t.contains("Running") && t.contains("node1"), "{t}");
    let y = get(&store, &["vmi", "vmi-fedora"], Some("yaml")).unwrap();
    assert!(y.contains("targetNodeAddress: 10.200.5.3:43891"), "{y}");
    assert!(get(&store, &["vmi", "x"], Some("jsonpath={.a}")).is_err());
    assert!(get(&store, &["vmi", "vmi-fedora"], Some("table")).is_err());
}

#[test]
fn delete_waits_for_finalizers_only_when_asked() {
    let (_t, store) = tmp();
    let m = json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstanceMigration",
        "metadata": {"name": "migration-job", "namespace": LAB_NAMESPACE, "finalizers": ["mignet.io/abort"]},
        "spec": {"vmiName": "vmi-fedora"}
    });
    store.create_value(m).unwrap();
    let out = run_on(
        &store,
        Verb::Delete {
            resource: "vmim".into(),
            names: vec!["migration-job".into()],
            namespace: LAB_NAMESPACE.into(),
            wait: false,
        },
    )
    .unwrap();
    assert_eq!(
        out,
        "virtualmachineinstancemigration.kubevirt.io \"migration-job\" deleted\n"
    );
    let ts = get(
        &store,
        &["vmim", "migration-job"],
        Some("jsonpath={.metadata.deletionTimestamp}"),
    )
    .unwrap();
    assert!(ts.ends_with('Z'), "held by its finalizer: {ts:?}");
    let e = run_on(
        &store,
        Verb::Delete {
            resource: "nodes".into(),
            names: vec!["node1".into()],
            namespace: LAB_NAMESPACE.into(),
            wait: false,
        },
    )
    .unwrap_err();
    assert!(e.to_string().contains("belong to the lab"), "{e}");
}

#[test]
fn delete_pod_is_allowed_and_waits_for_the_kubelets_finalizer() {
    let (_t, store) = tmp();
    store
        .create_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "mignet-agent-node1", "namespace": LAB_NAMESPACE,
                "finalizers": [crate::lab::agent_pods::KUBELET_FINALIZER]
            },
            "spec": {"containers": [{"name": "agent", "image": "mignet"}]}
        }))
        .unwrap();
    let out = run_on(
        &store,
        Verb::Delete {
            resource: "pod".into(),
            names: vec!["mignet-agent-node1".into()],
            namespace: LAB_NAMESPACE.into(),
            wait: false,
        },
    )
    .unwrap();
    assert_eq!(out, "pod \"mignet-agent-node1\" deleted\n");
    let pod = store
        .get::<k8s_openapi::api::core::v1::Pod>(LAB_NAMESPACE, "mignet-agent-node1")
        .unwrap()
        .expect("held by the kubelet's finalizer until it has stopped the pod");
    assert!(pod.metadata.deletion_timestamp.is_some());
}

/// The seed's HyperConverged naming `network`, as a file `apply` reads.
fn hco_yaml(network: &str) -> String {
    format!(
        "apiVersion: hco.kubevirt.io/v1beta1\nkind: HyperConverged\nmetadata:\n  name: kubevirt-hyperconverged\nspec:\n  liveMigrationConfig:\n    network: {network}\n---\n"
    )
}

/// A controller writing the status while `apply` runs (the lab_maintenance
/// failure in CI: the VM controller wrote the VM between apply's read and
/// its write): apply reads again and applies, it does not fail.
#[test]
fn apply_retries_when_a_controller_writes_the_status_in_between() {
    let (_t, store) = tmp();
    let dir = _t.0.join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("hco.yaml");
    let hco = hco_yaml;
    let key = Key::new("HyperConverged", LAB_NAMESPACE, "kubevirt-hyperconverged");
    std::fs::write(&f, hco("n0")).unwrap();
    let apply = |store: &Store| {
        run_on(
            store,
            Verb::Apply {
                files: vec![f.clone()],
                namespace: LAB_NAMESPACE.into(),
            },
        )
    };
    apply(&store).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(Some(mut v)) = store.get_value(&key) {
                    n += 1;
                    v["status"] = serde_json::json!({"conditions": [{"type": "Tick", "status": "True", "reason": "T", "message": n.to_string(), "lastTransitionTime": "2026-12-06T00:00:00Z"}]});
                    let _ = store.update_status_value(v);
                }
                // A busy controller: a status write every millisecond.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        });
        let outs: Vec<_> = (1..=40)
            .map(|i| {
                std::fs::write(&f, hco(&format!("n{i}"))).unwrap();
                apply(&store)
            })
            .collect();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for (i, out) in outs.iter().enumerate() {
            assert!(
                out.as_ref().is_ok_and(|o| o.ends_with("configured\n")),
                "apply {}: {out:?}",
                i + 1
            );
        }
    });
    let v = store.get_value(&key).unwrap().unwrap();
    assert_eq!(v["spec"]["liveMigrationConfig"]["network"], "n40");
}

#[test]
fn apply_creates_then_configures_then_is_unchanged() {
    let (_t, store) = tmp();
    let apply = |f: &str| {
        run_on(
            &store,
            Verb::Apply {
                files: vec![PathBuf::from(f)],
                namespace: LAB_NAMESPACE.into(),
            },
        )
    };
    let dir = _t.0.join("files");
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("hco.yaml");
    let hco = hco_yaml;
    std::fs::write(&f, hco("a")).unwrap();
    let p = f.to_str().unwrap();
    assert!(apply(p).unwrap().ends_with("created\n"));
    assert!(apply(p).unwrap().ends_with("unchanged\n"));
    std::fs::write(&f, hco("b")).unwrap();
    assert!(apply(p).unwrap().ends_with("configured\n"));
    let v = store
        .get_value(&Key::new(
            "HyperConverged",
            LAB_NAMESPACE,
            "kubevirt-hyperconverged",
        ))
        .unwrap()
        .unwrap();
    assert_eq!(v["spec"]["liveMigrationConfig"]["network"], "b");
    assert_eq!(v["metadata"]["generation"], 2);
    // A document that does not fit its type is refused before anything is written.
    std::fs::write(&f, "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstanceMigration\nmetadata:\n  name: x\nspec: {}\n").unwrap();
    let e = apply(p).unwrap_err();
    assert!(e.to_string().contains("vmiName"), "{e}");
    std::fs::write(&f, "apiVersion: v1\nkind: Secret\nmetadata:\n  name: x\n").unwrap();
    assert!(apply(p).unwrap_err().to_string().contains("not supported"));
}

#[test]
fn edit_config_sets_unsets_and_validates() {
    let (_t, store) = tmp();
    let edit = |args: &[&str]| {
        run_on(
            &store,
            Verb::EditConfig {
                changes: args.iter().map(|s| (*s).to_owned()).collect(),
                namespace: LAB_NAMESPACE.into(),
                hyperconverged: "kubevirt-hyperconverged".into(),
            },
        )
    };
    let out = edit(&["bandwidthPerMigration=64Mi", "network=my-secondary-network"]).unwrap();
    assert!(out.contains("bandwidthPerMigration=67108864"), "{out}");
    let out = edit(&["bandwidthPerMigration-"]).unwrap();
    assert!(
        out.contains("bandwidthPerMigration=0"),
        "default restored: {out}"
    );
    let e = edit(&["parallelMigrationsPerCluster=-1"]).unwrap_err();
    assert!(
        e.to_string().contains("parallelMigrationsPerCluster"),
        "{e}"
    );
    let v = get(
        &store,
        &["hco", "kubevirt-hyperconverged"],
        Some("jsonpath={.spec.liveMigrationConfig}"),
    )
    .unwrap();
    assert_eq!(v, r#"{"network":"my-secondary-network"}"#);
}

fn running_vmi(store: &Store, name: &str) {
    let vmi = json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": name, "namespace": LAB_NAMESPACE},
        "spec": {"domain": {}}
    });
    let mut v = store.create_value(vmi).unwrap();
    v["status"] = json!({
        "phase": "Running",
        "nodeName": "node1",
        "migrationState": {"sourceNode": "node1", "targetNode": "node2", "completed": false}
    });
    store.update_status_value(v).unwrap();
}

#[tokio::test]
async fn migrate_and_migrate_cancel_on_the_lab_store_print_virtctls_lines() {
    let (_t, store) = tmp();
    running_vmi(&store, "vmi-fedora");
    let store = std::sync::Arc::new(store);
    let b = crate::backend::LocalBackend::new(store.clone());
    let verb = |vm: &str, cancel: bool| {
        let (vm, namespace) = (vm.to_owned(), None);
        if cancel {
            Verb::MigrateCancel { vm, namespace }
        } else {
            Verb::Migrate { vm, namespace }
        }
    };
    let out = over_backend::run(&b, LAB_NAMESPACE, verb("vmi-fedora", false))
        .await
        .unwrap();
    assert_eq!(out, "VM vmi-fedora was scheduled to migrate\n");
    let vmims = store
        .list_values("VirtualMachineInstanceMigration", Some(LAB_NAMESPACE))
        .unwrap();
    assert_eq!(vmims.len(), 1);
    let m = &vmims[0];
    assert_eq!(m["spec"]["vmiName"], "vmi-fedora");
    assert_eq!(m["metadata"]["generateName"], "kubevirt-migrate-vm-");
    let vmim = m["metadata"]["name"].as_str().unwrap();
    assert!(
        vmim.starts_with("kubevirt-migrate-vm-") && vmim.len() == 25,
        "{vmim}"
    );

    let e = over_backend::run(&b, LAB_NAMESPACE, verb("nope", false))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "VirtualMachine nope not found in namespace mignet-system"
    );

    let out = over_backend::run(&b, LAB_NAMESPACE, verb("vmi-fedora", true))
        .await
        .unwrap();
    assert_eq!(out, "VM vmi-fedora was scheduled to migrate-cancel\n");
    assert!(store
        .list_values("VirtualMachineInstanceMigration", Some(LAB_NAMESPACE))
        .unwrap()
        .is_empty());
    let e = over_backend::run(&b, LAB_NAMESPACE, verb("vmi-fedora", true))
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(e, "Found no migration to cancel for vmi-fedora");
}

#[tokio::test]
async fn get_and_describe_over_a_backend_print_what_the_store_verbs_print() {
    let (_t, store) = tmp();
    running_vmi(&store, "vmi-fedora");
    let store = std::sync::Arc::new(store);
    let b = crate::backend::LocalBackend::new(store.clone());
    let describe = || Verb::Describe {
        resource: "vmi".into(),
        name: Some("vmi-fedora".into()),
        namespace: None,
    };
    let via_backend = over_backend::run(&b, LAB_NAMESPACE, describe())
        .await
        .unwrap();
    assert!(via_backend.contains("Migration State:\n"), "{via_backend}");
    assert!(
        via_backend.contains("  Target Node: node2\n"),
        "{via_backend}"
    );
    assert_eq!(via_backend, run_on(&store, describe()).unwrap());
    for output in [None, Some("jsonpath={.status.migrationState.targetNode}")] {
        let get = || Verb::Get {
            resource: "vmi".into(),
            name: None,
            output: output.map(str::to_owned),
            namespace: None,
            all_namespaces: false,
        };
        assert_eq!(
            over_backend::run(&b, LAB_NAMESPACE, get()).await.unwrap(),
            run_on(&store, get()).unwrap()
        );
    }
}
