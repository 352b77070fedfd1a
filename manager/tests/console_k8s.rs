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
