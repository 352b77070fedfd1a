//! The console's access rules at the HTTP level (no browser): every
//! request authenticated, cookie sessions need the CSRF token and a
//! same-origin `Origin` to change anything, non-administrators are
//! refused, API reasons come back in words, no secret in a reply.
//!
//! Run: `cargo test -p mignet --test console_http`

mod console_support;
mod control_common;

use std::time::Duration;

use console_support::*;
use control_common::{create_running_vmi, eventually, VmiOpts};
use kube::ResourceExt;

const MIGRATE: &str = "/api/vms/lab/vm/migrate";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_token_or_csrf_are_rejected() {
    let logs = captured_logs();
    let lab = Lab::start("http", Duration::from_secs(600)).await;
    let a = lab.console.addr;
    let origin = format!("http://{a}");
    let admin = format!("Bearer {ADMIN_TOKEN}");
    let viewer = format!("Bearer {VIEWER_TOKEN}");

    // No credentials: API 401, pages redirect to the login form, assets 401.
    for path in [
        "/api/vms",
        "/api/vms/lab/vm",
        "/api/session",
        "/assets/app.js",
    ] {
        let r = http(a, "GET", path, &[], "").await;
        assert_eq!(r.status, 401, "GET {path}: {r:?}");
    }
    let r = http(a, "GET", "/", &[], "").await;
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), Some("/login"));
    let r = http(a, "GET", "/login", &[], "").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("<form"));
    let r = http(a, "POST", MIGRATE, &[("Origin", &origin)], "").await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = http(
        a,
        "GET",
        "/api/vms",
        &[("Authorization", "Bearer not-a-token")],
        "",
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");
    let r = http(
        a,
        "GET",
        "/api/vms",
        &[("Cookie", "mignet_session=forged")],
        "",
    )
    .await;
    assert_eq!(r.status, 401, "{r:?}");

    // A bearer token works for the API.
    let r = http(a, "GET", "/api/vms", &[("Authorization", &admin)], "").await;
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(r#""name":"vm""#), "{}", r.body);

    // Login: a wrong token is refused in words, without echoing it.
    let form = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Origin", origin.as_str()),
    ];
    let r = http(a, "POST", "/login", &form, "token=wrong-token-123").await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("Invalid token."));
    assert!(!r.body.contains("wrong-token-123"));
    // A login posted from another origin is refused.
    let r = http(
        a,
        "POST",
        "/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", "http://evil.example"),
        ],
        &format!("token={ADMIN_TOKEN}"),
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(r.header("set-cookie").is_none());
    // The admin logs in: an HttpOnly, SameSite=Strict session cookie.
    let r = http(a, "POST", "/login", &form, &format!("token={ADMIN_TOKEN}")).await;
    assert_eq!(r.status, 303, "{r:?}");
    let set = r.header("set-cookie").expect("session cookie").to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(
        !set.contains(ADMIN_TOKEN),
        "the token is not the session id"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let r = http(a, "GET", "/api/session", &[("Cookie", &cookie)], "").await;
    assert_eq!(r.status, 200);
    assert!(!r.body.contains(ADMIN_TOKEN));
    let session: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(session["user"], "alice");
    assert_eq!(session["admin"], true);
    let csrf = session["csrf"].as_str().expect("csrf token").to_owned();
    let page = http(a, "GET", "/", &[("Cookie", &cookie)], "").await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains(ADMIN_TOKEN));
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("frame-ancestors 'none'"));

    // Cookie POSTs without the CSRF token, with a wrong one, from another
    // origin or without Origin: 403, nothing created.
    let cases = forged_post_headers(&cookie, &origin, &csrf);
    for (what, headers) in &cases {
        let r = http(a, "POST", MIGRATE, headers, "").await;
        assert_eq!(r.status, 403, "{what}: {r:?}");
        assert!(r.body.contains("Forbidden"), "{what}: {}", r.body);
    }
    // A non-administrator (bearer: no CSRF needed) is refused in words.
    let r = http(a, "POST", MIGRATE, &[("Authorization", &viewer)], "").await;
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body.contains("only administrators may migrate"),
        "{}",
        r.body
    );
    let r = http(
        a,
        "POST",
        "/api/vms/lab/vm/cancel",
        &[("Authorization", &viewer)],
        "",
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        lab.vmims().await.is_empty(),
        "refused requests created nothing"
    );

    // Nothing to cancel yet: said in words.
    let r = http(
        a,
        "POST",
        "/api/vms/lab/vm/cancel",
        &[("Authorization", &admin)],
        "",
    )
    .await;
    assert_eq!(r.status, 409);
    assert!(r.body.contains("no migration in progress"), "{}", r.body);

    // With the session's CSRF token and our Origin it works.
    let ok = [
        ("Cookie", cookie.as_str()),
        ("Origin", origin.as_str()),
        ("X-CSRF-Token", csrf.as_str()),
    ];
    let r = http(a, "POST", MIGRATE, &ok, "").await;
    assert_eq!(r.status, 201, "{r:?}");
    let ms = lab.vmims().await;
    assert_eq!(ms.len(), 1);
    assert!(ms[0].name_any().starts_with("kubevirt-migrate-vm-"));
    // A second one while it runs: refused in words, still one VMIM.
    let r = http(a, "POST", MIGRATE, &ok, "").await;
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.body.contains("already migrating"), "{}", r.body);
    assert_eq!(lab.vmims().await.len(), 1);

    // The log names the users, never a token, session id or CSRF token.
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(text.contains("console: login user=alice"), "{text}");
    assert!(text.contains("console: migrate user=alice"), "{text}");
    assert!(text.contains("refused (not an administrator)"), "{text}");
    let session_id = cookie.split_once('=').unwrap().1;
    for secret in [
        ADMIN_TOKEN,
        VIEWER_TOKEN,
        "wrong-token-123",
        session_id,
        csrf.as_str(),
    ] {
        assert!(!text.contains(secret), "a secret in the log");
    }

    // Logout ends the session.
    let r = http(a, "POST", "/api/logout", &ok, "").await;
    assert_eq!(r.status, 204, "{r:?}");
    let r = http(a, "GET", "/api/vms", &[("Cookie", &cookie)], "").await;
    assert_eq!(r.status, 401);
}

/// Reasons from the API in words: a VM that is not live-migratable (the
/// LiveMigratable condition's reason) and a migration that waits (the
/// VMIM's Pending condition).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_reasons_in_words() {
    let _ = captured_logs();
    let lab = Lab::start("reasons", Duration::from_secs(600)).await;
    let a = lab.console.addr;
    let admin = format!("Bearer {ADMIN_TOKEN}");
    create_running_vmi(
        &lab.backend,
        NS,
        "rwo",
        &lab.nodes[0],
        VmiOpts {
            rwo_disk: true,
            ..Default::default()
        },
    )
    .await;
    eventually(TIMEOUT, "rwo judged not live-migratable", || async {
        let r = http(
            a,
            "GET",
            "/api/vms/lab/rwo",
            &[("Authorization", &admin)],
            "",
        )
        .await;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        (v["liveMigratable"]["ok"] == false).then_some(())
    })
    .await;
    let r = http(
        a,
        "POST",
        "/api/vms/lab/rwo/migrate",
        &[("Authorization", &admin)],
        "",
    )
    .await;
    assert_eq!(r.status, 409, "{r:?}");
    assert!(
        r.body
            .contains("is not live-migratable: DisksNotLiveMigratable"),
        "{}",
        r.body
    );
    assert!(lab.vmims().await.is_empty());

    // Both nodes' VMs migrating away from node 1 under a limit of 1 per
    // node: the second waits, with the reason.
    control_common::create_hco(&lab.backend, NS, 5, 1).await;
    create_running_vmi(&lab.backend, NS, "vm2", &lab.nodes[0], VmiOpts::default()).await;
    for vm in ["vm", "vm2"] {
        let r = http(
            a,
            "POST",
            &format!("/api/vms/lab/{vm}/migrate"),
            &[("Authorization", &admin)],
            "",
        )
        .await;
        assert_eq!(r.status, 201, "{vm}: {r:?}");
    }
    let waiting = eventually(TIMEOUT, "one migration waiting with a reason", || async {
        let r = http(a, "GET", "/api/vms", &[("Authorization", &admin)], "").await;
        let rows: Vec<serde_json::Value> = serde_json::from_str(&r.body).ok()?;
        let running = rows
            .iter()
            .filter(|r| r["migration"]["phase"] == "Running")
            .count();
        let w = rows
            .iter()
            .find_map(|r| r["migration"]["waiting"].as_str().map(str::to_owned))?;
        (running == 1).then_some(w)
    })
    .await;
    println!("waiting reason: {waiting}");
    assert!(
        waiting.contains("outbound migrations from node") && waiting.contains("(limit 1)"),
        "{waiting}"
    );
}
