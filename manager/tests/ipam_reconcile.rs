//! The manager's IPAM reconciler (`mignet::kube_adapter::ipam`) against the
//! real kube-apiserver, under the RBAC of deploy/base/ipam-rbac.yaml:
//! `tests/k8s/run.sh cargo test -p mignet --test ipam_reconcile`.
//!
//! A pool holds the entries of a live pod, of a pod that is gone, of a pod
//! that finished, and of a live pod that reuses a dead one's name (a new
//! object, new UID). One pass frees the gone and finished ones (and their
//! reservations) and keeps the two live ones; the loop then frees an entry
//! added later on its next pass and stops on shutdown.

mod common;

use std::time::Duration;

use common::{client_as, kubectl, kubectl_ok, kubectl_stdin, wait_for, TestNamespace};
use mignet::kube_adapter::ipam::{reconcile_once, run, IpamReconcileSettings};
use serde_json::Value;

fn apply(yaml: &str) {
    let out = kubectl_stdin(&["apply", "-f", "-"], yaml);
    assert!(
        out.status.success(),
        "kubectl apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// deploy/base/ipam-rbac.yaml for a test namespace: its namespace becomes
/// `ns` and the cluster-scoped names get `ns` as suffix (parallel tests).
struct IpamRbac {
    yaml: String,
    reconciler: String,
}

impl IpamRbac {
    fn apply(ns: &str) -> Self {
        let text = std::fs::read_to_string(common::repo_root().join("deploy/base/ipam-rbac.yaml"))
            .expect("read ipam-rbac.yaml");
        let yaml = text
            .replace("mignet-system", ns)
            .replace("name: mignet-ipam\n", &format!("name: mignet-ipam-{ns}\n"))
            .replace(
                "name: mignet-ipam-reconciler\n",
                &format!("name: mignet-ipam-reconciler-{ns}\n"),
            );
        kubectl_ok(&["create", "serviceaccount", "mignet-manager", "-n", ns]);
        apply(&yaml);
        IpamRbac {
            yaml,
            reconciler: format!("system:serviceaccount:{ns}:mignet-manager"),
        }
    }
}

impl Drop for IpamRbac {
    fn drop(&mut self) {
        let _ = kubectl_stdin(&["delete", "--ignore-not-found", "-f", "-"], &self.yaml);
    }
}

/// Pools and reservations go first: without a controller-manager a deleted
/// namespace keeps its objects.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for what in [
            "ippools.whereabouts.cni.cncf.io",
            "overlappingrangeipreservations.whereabouts.cni.cncf.io",
            "pods",
        ] {
            let _ = kubectl(&[
                "delete",
                what,
                "--all",
                "-n",
                &self.0,
                "--wait=false",
                "--grace-period=0",
                "--force",
            ]);
        }
    }
}

fn ensure_whereabouts_crds() {
    for f in [
        "deploy/crds/whereabouts.cni.cncf.io_ippools.yaml",
        "deploy/crds/whereabouts.cni.cncf.io_overlappingrangeipreservations.yaml",
    ] {
        kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-f", f]);
        kubectl_ok(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "-f",
            f,
        ]);
    }
}

fn pod(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  containers:\n  - name: c\n    image: registry.invalid/none:0\n"
    )
}

fn entry(id: &str, podref: &str) -> String {
    format!("{{id: {id}, podref: \"{podref}\", ifname: net1}}")
}

fn orip(ns: &str, ip: &str, podref: &str, cid: &str) -> String {
    format!(
        "apiVersion: whereabouts.cni.cncf.io/v1alpha1\nkind: OverlappingRangeIPReservation\nmetadata:\n  name: {ip}\n  namespace: {ns}\nspec:\n  podref: \"{podref}\"\n  ifname: net1\n  containerid: {cid}\n"
    )
}

fn pool_offsets(ns: &str) -> Vec<u128> {
    let out = kubectl_ok(&[
        "get",
        "ippools.whereabouts.cni.cncf.io",
        "10.250.0.0-24",
        "-n",
        ns,
        "-o",
        "json",
    ]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut offs: Vec<u128> = v["spec"]["allocations"]
        .as_object()
        .map(|m| m.keys().map(|k| k.parse().unwrap()).collect())
        .unwrap_or_default();
    offs.sort();
    offs
}

fn orip_names(ns: &str) -> Vec<String> {
    let out = kubectl_ok(&[
        "get",
        "overlappingrangeipreservations.whereabouts.cni.cncf.io",
        "-n",
        ns,
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ]);
    let mut names: Vec<String> = out.split_whitespace().map(String::from).collect();
    names.sort();
    names
}

#[tokio::test]
async fn manager_reconciler_frees_dead_pods_addresses_and_keeps_live_ones() {
    ensure_whereabouts_crds();
    let ns = TestNamespace::new("mignet-ipam-rec");
    let n = ns.name.as_str();
    let _cleanup = Cleanup(n.to_string());
    let rbac = IpamRbac::apply(n);
    // Pods need the default ServiceAccount (no controller-manager here).
    kubectl_ok(&["create", "serviceaccount", "default", "-n", n]);

    // The reconciler's rights, and what it must not have.
    let can = |verb: &str, what: &str, all: bool| {
        let mut args = vec!["auth", "can-i", verb, what, "--as", &rbac.reconciler];
        if all {
            args.push("--all-namespaces");
        } else {
            args.extend(["-n", n]);
        }
        String::from_utf8_lossy(&kubectl(&args).stdout).trim() == "yes"
    };
    assert!(can("list", "pods", true));
    assert!(can("get", "ippools.whereabouts.cni.cncf.io", false));
    assert!(can("patch", "ippools.whereabouts.cni.cncf.io", false));
    assert!(can(
        "delete",
        "overlappingrangeipreservations.whereabouts.cni.cncf.io",
        false
    ));
    assert!(!can("delete", "pods", true));
    assert!(!can("create", "ippools.whereabouts.cni.cncf.io", false));
    assert!(!can("get", "secrets", false));

    // Pods: "live" and "reused" exist (reused was deleted and created again:
    // a new object under the old name); "gone" never existed any more;
    // "done" has finished.
    apply(&pod(n, "live"));
    apply(&pod(n, "reused"));
    kubectl_ok(&[
        "delete",
        "pod",
        "reused",
        "-n",
        n,
        "--grace-period=0",
        "--force",
    ]);
    apply(&pod(n, "reused"));
    apply(&pod(n, "done"));
    let status = r#"{"status":{"phase":"Succeeded"}}"#;
    kubectl_ok(&[
        "patch",
        "pod",
        "done",
        "-n",
        n,
        "--subresource=status",
        "--type=merge",
        "-p",
        status,
    ]);

    let pool = format!(
        "apiVersion: whereabouts.cni.cncf.io/v1alpha1\nkind: IPPool\nmetadata:\n  name: 10.250.0.0-24\n  namespace: {n}\nspec:\n  range: 10.250.0.0/24\n  allocations:\n    \"1\": {}\n    \"2\": {}\n    \"3\": {}\n    \"4\": {}\n",
        entry("c-live", &format!("{n}/live")),
        entry("c-gone", &format!("{n}/gone")),
        entry("c-done", &format!("{n}/done")),
        entry("c-old-sandbox", &format!("{n}/reused")),
    );
    apply(&pool);
    for (ip, p, c) in [
        ("10.250.0.1", "live", "c-live"),
        ("10.250.0.2", "gone", "c-gone"),
        ("10.250.0.3", "done", "c-done"),
        ("10.250.0.4", "reused", "c-old-sandbox"),
    ] {
        apply(&orip(n, ip, &format!("{n}/{p}"), c));
    }
    assert_eq!(pool_offsets(n), vec![1, 2, 3, 4]);

    // One pass, as the manager's ServiceAccount.
    let client = client_as(&rbac.reconciler).await;
    let settings = IpamReconcileSettings {
        namespaces: vec![n.to_string()],
        interval: Duration::from_secs(1),
        grace: Duration::ZERO,
    };
    // RBAC reaches the authorizer's cache asynchronously: retry until the
    // pass is allowed.
    let (report, _) = wait_for("reconcile allowed by RBAC", Duration::from_secs(30), || {
        let (client, settings) = (client.clone(), settings.clone());
        async move {
            let mut out = reconcile_once(&client, &settings).await;
            match out.pop() {
                Some((_, Ok(rep))) => Some(rep),
                Some((_, Err(e))) if e.code == 5 && e.message.contains("forbidden") => None,
                Some((_, Err(e))) => panic!("reconcile failed: {e} ({})", e.details),
                None => panic!("no namespace reconciled"),
            }
        }
    })
    .await;
    assert_eq!(report.freed, 2, "{report:?}");
    assert_eq!(
        pool_offsets(n),
        vec![1, 4],
        "gone and done freed, live kept"
    );
    assert_eq!(
        orip_names(n),
        vec!["10.250.0.1".to_string(), "10.250.0.4".to_string()],
        "their reservations go too"
    );

    // The loop: a later orphan (pod "gone2" never existed) is freed by a
    // following pass; shutdown stops it.
    let later = format!(
        "[{{\"op\":\"add\",\"path\":\"/spec/allocations/9\",\"value\":{{\"id\":\"c-gone2\",\"podref\":\"{n}/gone2\",\"ifname\":\"net1\"}}}}]"
    );
    kubectl_ok(&[
        "patch",
        "ippools.whereabouts.cni.cncf.io",
        "10.250.0.0-24",
        "-n",
        n,
        "--type=json",
        "-p",
        &later,
    ]);
    assert_eq!(pool_offsets(n), vec![1, 4, 9]);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run(client.clone(), settings, async move {
        let _ = stop_rx.await;
    }));
    wait_for(
        "the loop frees the later orphan",
        Duration::from_secs(30),
        || async { (pool_offsets(n) == vec![1, 4]).then_some(()) },
    )
    .await;
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the loop stops on shutdown")
        .unwrap();
}
