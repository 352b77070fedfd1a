//! The `mignet` binary's commands that need no cluster.

use std::process::Command;

fn mignet() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mignet"))
}

#[test]
fn crdgen_writes_the_committed_crds() {
    let dir = std::env::temp_dir().join(format!("mignet-crdgen-{}", std::process::id()));
    let out = mignet()
        .args(["crdgen", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            std::fs::read_to_string(committed.join(name)).unwrap(),
            "{name:?}"
        );
        n += 1;
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(n, 6);
}

#[test]
fn manager_rejects_a_bad_cidr_naming_the_flag() {
    let out = mignet()
        .args([
            "manager",
            "--pod-cidr",
            "10.244.0.0/16",
            "--service-cidr",
            "10.96.0.0/99",
        ])
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--service-cidr") && err.contains("10.96.0.0/99"),
        "{err}"
    );
}

#[test]
fn manager_requires_the_cluster_cidrs() {
    let out = mignet().args(["manager"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--pod-cidr"), "{err}");
}

#[test]
fn completion_scripts_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = mignet().args(["completion", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for verb in ["migrate-cancel", "describe", "completion", "lab"] {
            assert!(script.contains(verb), "{shell} completion lacks {verb}");
        }
    }
}

#[test]
fn man_page_renders_from_the_clap_definitions() {
    let out = mignet().arg("man").output().unwrap();
    assert!(out.status.success());
    let roff = String::from_utf8_lossy(&out.stdout);
    assert!(
        roff.starts_with(".ie") || roff.contains(".TH mignet"),
        "{roff}"
    );
    for text in [".SH SUBCOMMANDS", "migrate\\-cancel", "\\-\\-kubeconfig"] {
        assert!(roff.contains(text), "man page lacks {text:?}:\n{roff}");
    }
    // One page per subcommand, and each one renders (groff, as man does).
    let dir = std::env::temp_dir().join(format!("mignet-man-{}", std::process::id()));
    let out = mignet().args(["man", "--out"]).arg(&dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page = dir.join("mignet-migrate-cancel.1");
    let rendered = Command::new("groff")
        .args(["-man", "-Tascii", "-P", "-cbou"])
        .arg(&page)
        .output()
        .expect("groff (the man page renderer) is needed for this test");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&rendered.stdout);
    assert!(
        rendered.status.success() && text.contains("--namespace"),
        "{text}"
    );
    assert!(text.contains("mignet-migrate-cancel"), "{text}");
}

#[test]
fn target_flags_are_refused_where_they_would_be_ignored() {
    let out = mignet()
        .args(["crdgen", "--kubeconfig", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--kubeconfig is for the CLI verbs"), "{err}");
    let out = mignet()
        .args(["lab", "status", "--kubeconfig", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("drop --kubeconfig"), "{err}");
    let out = mignet()
        .args(["get", "vmi", "--kubeconfig", "/nonexistent", "--lab"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--kubeconfig and --lab"), "{err}");
}

/// A lab directory the verbs accept (its state file and store) with a
/// Running VMI, and no QEMU: the verbs only read and write the store.
fn lab_with_running_vmi() -> std::path::PathBuf {
    use mignet::store::Store;
    use serde_json::json;
    let dir = std::env::temp_dir().join(format!("mignet-cli-lab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(mignet::lab::state_file(&dir), "{}").unwrap();
    let store = Store::open(mignet::lab::store_dir(&dir)).unwrap();
    let mut v = store
        .create_value(json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachineInstance",
            "metadata": {"name": "vmi-fedora", "namespace": "mignet-system"},
            "spec": {"domain": {}}
        }))
        .unwrap();
    v["status"] = json!({"phase": "Running", "nodeName": "node1"});
    store.update_status_value(v).unwrap();
    dir
}

#[test]
fn migrate_and_migrate_cancel_on_the_lab_from_mignet_lab_dir() {
    let dir = lab_with_running_vmi();
    let run = |args: &[&str]| {
        mignet()
            .args(args)
            .env("MIGNET_LAB_DIR", &dir)
            .env("KUBECONFIG", "/nonexistent")
            .output()
            .unwrap()
    };
    let out = run(&["migrate", "vmi-fedora"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "VM vmi-fedora was scheduled to migrate\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["get", "vmim", "-o", "jsonpath={.items[*].spec.vmiName}"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "vmi-fedora");
    let out = run(&["migrate-cancel", "vmi-fedora"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "VM vmi-fedora was scheduled to migrate-cancel\n"
    );
    let out = run(&["migrate-cancel", "vmi-fedora"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Found no migration to cancel for vmi-fedora"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The seed's VM (10.7.1) as YAML for `mignet apply -f`, before and after
/// the edit that adds `evictionStrategy: LiveMigrate`.
fn seed_vm_yaml(live_migrate: bool) -> String {
    let eviction = if live_migrate {
        "      evictionStrategy: LiveMigrate\n"
    } else {
        ""
    };
    format!(
        "apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: custom-vm
spec:
  runStrategy: Always
  template:
    spec:
{eviction}      domain:
        memory:
          guest: 256Mi
"
    )
}

/// One controller pass over the lab store, as the lab daemon runs it.
async fn controller_pass(dir: &std::path::Path) {
    let store = mignet::store::Store::open(mignet::lab::store_dir(dir)).unwrap();
    let b = mignet::backend::LocalBackend::new(std::sync::Arc::new(store));
    let now = k8s_openapi::jiff::Timestamp::now();
    mignet::control::reconcile_once(&b, &Default::default(), now)
        .await
        .expect("controller pass");
}

/// The lab-store VMI's (uid, evictionStrategy), if it exists.
fn lab_vmi(dir: &std::path::Path) -> Option<(String, Option<String>)> {
    let store = mignet::store::Store::open(mignet::lab::store_dir(dir)).unwrap();
    let v: mignet::api::VirtualMachineInstance =
        store.get("mignet-system", "custom-vm").unwrap()?;
    Some((
        v.metadata.uid.unwrap(),
        v.spec.eviction_strategy.map(|e| {
            serde_json::to_value(e)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        }),
    ))
}

/// Mark the lab VMI Running (what the lab's scheduler and agent do).
fn lab_vmi_running(dir: &std::path::Path) {
    let store = mignet::store::Store::open(mignet::lab::store_dir(dir)).unwrap();
    let key = mignet::store::Key::new("VirtualMachineInstance", "mignet-system", "custom-vm");
    let mut v = store.get_value(&key).unwrap().expect("VMI");
    v["status"] = serde_json::json!({"phase": "Running", "nodeName": "node1"});
    store.update_status_value(v).unwrap();
}

/// Section 10.7.1 on the lab store (no QEMU): a running VM without an
/// eviction strategy is edited to LiveMigrate and `mignet restart vm`-ed;
/// the controller then replaces its VMI with one (new uid) that carries
/// the new strategy. Also the virtctl refusals and stop/start wording.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_vm_on_the_lab_recreates_the_vmi_from_the_edited_template() {
    let dir = std::env::temp_dir().join(format!("mignet-cli-power-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(mignet::lab::state_file(&dir), "{}").unwrap();
    let run = |args: &[&str], stdin: Option<&str>| {
        use std::io::Write;
        let mut c = mignet()
            .args(args)
            .env("MIGNET_LAB_DIR", &dir)
            .env("KUBECONFIG", "/nonexistent")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = c.stdin.take().unwrap();
        input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
        drop(input);
        let out = c.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = run(&["apply", "-f", "-"], Some(&seed_vm_yaml(false)));
    assert!(ok, "{err}");
    controller_pass(&dir).await;
    let (old_uid, strategy) = lab_vmi(&dir).expect("the VM's VMI");
    assert_eq!(strategy, None);
    lab_vmi_running(&dir);

    let (ok, _, err) = run(&["apply", "-f", "-"], Some(&seed_vm_yaml(true)));
    assert!(ok, "{err}");
    // Editing the template alone changes nothing running.
    controller_pass(&dir).await;
    assert_eq!(lab_vmi(&dir), Some((old_uid.clone(), None)));

    let (ok, out, err) = run(&["restart", "vm", "custom-vm"], None);
    assert!(ok, "{err}");
    assert_eq!(out, "VM custom-vm was scheduled to restart\n");
    // Pass 1 deletes the old VMI; pass 2 creates the new one.
    controller_pass(&dir).await;
    assert_eq!(lab_vmi(&dir), None, "the old VMI is deleted");
    controller_pass(&dir).await;
    let (new_uid, strategy) = lab_vmi(&dir).expect("a new VMI");
    assert_ne!(new_uid, old_uid);
    assert_eq!(strategy.as_deref(), Some("LiveMigrate"));
    lab_vmi_running(&dir);
    controller_pass(&dir).await;
    let (_, requests, _) = run(
        &[
            "get",
            "vm",
            "custom-vm",
            "-o",
            "jsonpath={.status.stateChangeRequests}",
        ],
        None,
    );
    assert_eq!(requests, "", "the restart's requests are done");

    // virtctl's refusals and lines.
    let (ok, _, err) = run(&["start", "vm", "custom-vm"], None);
    assert!(!ok);
    assert!(
        err.contains(
            "Error starting VirtualMachine custom-vm in namespace mignet-system: VM is already running"
        ),
        "{err}"
    );
    let (ok, out, _) = run(&["stop", "vm/custom-vm"], None);
    assert!(ok);
    assert_eq!(out, "VM custom-vm was scheduled to stop\n");
    let (ok, _, err) = run(&["restart", "vm", "custom-vm"], None);
    assert!(!ok);
    assert!(
        err.contains("RunStrategy Halted does not support manual restart requests"),
        "{err}"
    );
    controller_pass(&dir).await;
    assert_eq!(lab_vmi(&dir), None, "stopped");
    let (ok, out, _) = run(&["start", "vm", "custom-vm"], None);
    assert!(ok);
    assert_eq!(out, "VM custom-vm was scheduled to start\n");
    controller_pass(&dir).await;
    assert!(lab_vmi(&dir).is_some(), "started again");
    let (ok, _, err) = run(&["restart", "vmi", "custom-vm"], None);
    assert!(!ok);
    assert!(err.contains("works on VirtualMachines"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
