//! The console's cluster route on the real kube-apiserver: tokens checked
//! with TokenReview, administrators decided by SubjectAccessReview, the
//! console serving the cluster's objects through KubeBackend.
//!
//! Run: `tests/k8s/run.sh cargo test -p mignet --test console_k8s`

mod common;
mod console_support;
mod control_common;

use std::sync::Arc;

use console_support::http;
use mignet::backend::KubeBackend;
use mignet::console::{Authenticator, KubeAuthenticator};

fn var(k: &str) -> String {
    std::env::var(k).unwrap_or_else(|_| panic!("{k} is not set: run under tests/k8s/run.sh"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_review_and_access_review_decide_who_may_migrate() {
    common::ensure_crds();
    let client = common::client().await;
    let auth = KubeAuthenticator::new(client.clone());
    let admin_token = var("MIGNET_ADMIN_TOKEN");
    let user_token = var("MIGNET_NONADMIN_TOKEN");

    let admin = auth
        .authenticate(&admin_token)
        .await
        .expect("TokenReview")
        .expect("admin token valid");
    assert_eq!(admin.name, "mignet-admin");
    assert!(
        admin.groups.iter().any(|g| g == "system:masters"),
        "{admin:?}"
    );
    assert!(admin.admin, "system:masters may create VMIMs");
    let user = auth
        .authenticate(&user_token)
        .await
        .expect("TokenReview")
        .expect("user token valid");
    assert_eq!(user.name, var("MIGNET_NONADMIN_USER"));
    assert!(!user.admin, "a plain user may not create VMIMs: {user:?}");
    assert!(auth
        .authenticate("definitely-not-a-token-0000")
        .await
        .expect("TokenReview")
        .is_none());

    // The console over the cluster: lists with the admin's token, refuses
    // the user's Migrate, 401 without a token.
    let console = mignet::console::serve(
        "127.0.0.1:0".parse().unwrap(),
        KubeBackend::new(client, None),
        Arc::new(auth),
    )
    .await
    .unwrap();
    let a = console.addr;
    let r = http(a, "GET", "/api/vms", &[], "").await;
    assert_eq!(r.status, 401, "{r:?}");
    let bearer = format!("Bearer {admin_token}");
    let r = http(a, "GET", "/api/vms", &[("Authorization", &bearer)], "").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.starts_with('['), "{}", r.body);
    let r = http(a, "GET", "/api/session", &[("Authorization", &bearer)], "").await;
    assert!(r.body.contains(r#""admin":true"#), "{}", r.body);
    let bearer = format!("Bearer {user_token}");
    let r = http(
        a,
        "POST",
        "/api/vms/default/none/migrate",
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body.contains("only administrators may migrate"),
        "{}",
        r.body
    );
}

/// deploy/base/console.yaml's ServiceAccount, ClusterRole and binding, in
/// `ns` and suffixed with it; the cluster-scoped part is deleted on drop.
struct ConsoleRbac {
    sa: String,
    yaml: String,
}

impl ConsoleRbac {
    fn apply(ns: &str) -> Self {
        let text =
            std::fs::read_to_string(common::repo_root().join("deploy/base/console.yaml")).unwrap();
        let yaml = text
            .split("\n---\n")
            .filter(|d| {
                ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
                    .iter()
                    .any(|k| d.contains(&format!("\nkind: {k}\n")))
            })
            .collect::<Vec<_>>()
            .join("\n---\n")
            .replace("mignet-system", ns)
            .replace(
                "name: mignet-console",
                &format!("name: mignet-console-{ns}"),
            );
        let out = common::kubectl_stdin(&["apply", "-f", "-"], &yaml);
        assert!(
            out.status.success(),
            "applying the console's RBAC: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            sa: format!("system:serviceaccount:{ns}:mignet-console-{ns}"),
            yaml,
        }
    }
}

impl Drop for ConsoleRbac {
    fn drop(&mut self) {
        let _ = common::kubectl_stdin(&["delete", "--ignore-not-found", "-f", "-"], &self.yaml);
    }
}

/// The Nodes table on a cluster, read with the console's own
/// ServiceAccount (deploy/base/console.yaml): a node with a NodeMaintenance
/// shows it in OpenShift's words with the reason and the pending pods.
/// Without the role's nodemaintenances rule the console reads no
/// maintenance and this fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nodes_table_shows_maintenance_under_the_consoles_own_role() {
    use mignet::api::{MaintenancePhase, NodeMaintenance, NodeMaintenanceSpec};
    use mignet::backend::Backend;
    common::ensure_crds();
    let ns = common::TestNamespace::new("console-nodes");
    let rbac = ConsoleRbac::apply(&ns.name);
    let admin = KubeBackend::unwatched(common::client().await);
    let node_name = format!("{}-n1", ns.name);
    let node = k8s_openapi::api::core::v1::Node {
        metadata: kube::api::ObjectMeta {
            name: Some(node_name.clone()),
            ..Default::default()
        },
        ..Default::default()
    };
    admin.create(&node).await.unwrap();
    let nm_name = format!("nm-{node_name}");
    let nm = NodeMaintenance::new(
        &nm_name,
        NodeMaintenanceSpec {
            node_name: node_name.clone(),
            reason: Some("firmware".into()),
        },
    );
    admin.create(&nm).await.unwrap();
    let mut nm: NodeMaintenance = admin.get("", &nm_name).await.unwrap().unwrap();
    let st = nm.status.get_or_insert_with(Default::default);
    st.phase = Some(MaintenancePhase::Running);
    st.pending_pods = vec!["virt-launcher-vm-a-abcde".into()];
    admin.replace_status(&nm).await.unwrap();

    let console_client = common::client_as(&rbac.sa).await;
    let console = mignet::console::serve(
        "127.0.0.1:0".parse().unwrap(),
        KubeBackend::new(console_client.clone(), None),
        Arc::new(KubeAuthenticator::new(console_client)),
    )
    .await
    .unwrap();
    let bearer = format!("Bearer {}", var("MIGNET_ADMIN_TOKEN"));
    let r = http(
        console.addr,
        "GET",
        "/api/nodes",
        &[("Authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    let rows: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == node_name.as_str())
        .unwrap_or_else(|| panic!("{node_name} in {rows}"));
    assert_eq!(
        row["maintenance"],
        serde_json::json!({
            "name": nm_name,
            "state": "Starting maintenance",
            "phase": "Running",
            "reason": "firmware",
            "pendingPods": ["virt-launcher-vm-a-abcde"],
            "lastError": null,
        }),
        "{row}"
    );
    admin.delete::<NodeMaintenance>("", &nm_name).await.unwrap();
    admin
        .delete::<k8s_openapi::api::core::v1::Node>("", &node_name)
        .await
        .unwrap();
}
