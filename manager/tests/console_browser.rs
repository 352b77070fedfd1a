//! The web console in real headless Chromium (Debian's chromium +
//! chromium-driver) against a real lab: `mignet lab up` with the seed's
//! NAD and HyperConverged (agents on `migration0`), VMIs made with
//! `mignet create -f` running as QEMU/TCG guests, migrations carried by
//! the lab's agents over mTLS, and `mignet console --lab-dir` as a child
//! process. The tests share one lab, one at a time (see
//! `console_support/lab.rs`), each with its own VMs.
//!
//! Run (as root, after tests/setup.sh and `cargo build -p mignet-cni`):
//! `cargo test -p mignet --test console_browser`
//! Artifacts: target/console-artifacts/list-migrating.png (the list during
//! a migration), details-migrated.png, details-migrating.png,
//! maintenance-migrating.png (a node in maintenance, its VM leaving).

mod console_support;
mod control_common;
mod lab_common;
#[path = "console_support/lab.rs"]
mod real_lab;

use std::time::{Duration, Instant};

use console_support::*;
use fantoccini::Locator;
use ipnetwork::IpNetwork;
use kube::ResourceExt;
use mignet::api::{MigrationAbortStatus, MigrationPhase, VmiPhase};
use real_lab::*;

fn row(vm: &str) -> String {
    format!(r#"tr[data-vm="{LAB_NS}/{vm}"]"#)
}

/// Wait for a lab condition from async code (the lab's store is read
/// synchronously; each read is a file read).
async fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The details page is taller than the 800-pixel window: grow it so the
/// screenshot shows the chart and the migrationState, then shrink it back.
async fn full_page_screenshot(br: &Browser, file: &str) {
    br.client.set_window_size(1280, 1500).await.unwrap();
    let png = br.client.screenshot().await.unwrap();
    std::fs::write(artifacts_dir().join(file), png).unwrap();
    br.client.set_window_size(1280, 800).await.unwrap();
}

/// a. An administrator migrates a VM from the list (kebab -> Migrate):
/// `Migrating` with progress, then Running on another node; the details
/// page shows the migrationState (target address on the migration
/// network, completed); the VMIM is the one `virtctl migrate` creates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_migrates_a_vm_from_the_list() {
    let lab = turn().await;
    // Slow enough (200 MiB at 32 MiB/s) for the list to show progress.
    lab.config(&[("bandwidthPerMigration", "32Mi")]);
    let name = vm_name("list");
    let vm = lab.create_vm(&name);
    let idle = lab.create_vm(&vm_name("idle"));
    let from = lab.vmi_node(&name).unwrap();
    let r = row(&name);

    let br = Browser::start().await;
    br.login(&lab.console.base, ADMIN_TOKEN).await;
    br.wait_text("#whoami", |t| t == "alice (administrator)")
        .await;
    br.wait_text(&format!("{r} .status"), |t| t == "Running")
        .await;
    br.wait_text(&format!("{r} .node"), |t| t == from).await;
    br.wait_text(&format!("{} .status", row(&idle.name)), |t| t == "Running")
        .await;

    br.click(&format!("{r} .kebab")).await;
    br.click(&format!("{r} [data-action=migrate]")).await;
    let msg = br.wait_text("#message", |t| t.contains("created")).await;
    assert!(msg.contains("kubevirt-migrate-vm-"), "{msg}");
    br.wait_text(&format!("{r} .status"), |t| t == "Migrating")
        .await;
    // A progress sample from the source agent, so the screenshot shows the bar.
    let progress = br
        .wait_text(&format!("{r} .mig-text"), |t| {
            t.starts_with("Running:") && t.contains(" of ") && !t.starts_with("Running: 0 B")
        })
        .await;
    println!("list during the migration: {progress}");
    let png = br.client.screenshot().await.expect("screenshot");
    let path = artifacts_dir().join("list-migrating.png");
    std::fs::write(&path, &png).unwrap();
    println!("screenshot: {}", path.display());
    assert!(png.starts_with(b"\x89PNG"), "a PNG");

    br.wait_text(&format!("{r} .mig-text"), |t| t.ends_with(": Succeeded"))
        .await;
    br.wait_text(&format!("{r} .status"), |t| t == "Running")
        .await;
    let to = br.wait_text(&format!("{r} .node"), |t| !t.is_empty()).await;
    assert_ne!(to, from, "moved to another node");
    assert_eq!(lab.vmi_node(&name).as_deref(), Some(to.as_str()));
    assert_eq!(
        lab.vmi(&name).unwrap().status.unwrap().phase,
        Some(VmiPhase::Running)
    );

    // Exactly the VMIM `virtctl migrate` creates: generateName
    // kubevirt-migrate-vm- (5 more characters), the VM's namespace, a spec
    // of spec.vmiName alone.
    let ms = lab.vmims_of(&name);
    assert_eq!(ms.len(), 1, "{ms:?}");
    let m = &ms[0];
    let vmim = m.name_any();
    assert!(vmim.starts_with("kubevirt-migrate-vm-"), "{vmim}");
    assert_eq!(vmim.len(), "kubevirt-migrate-vm-".len() + 5);
    assert_eq!(m.namespace().as_deref(), Some(LAB_NS));
    let spec = serde_json::to_value(&m.spec).unwrap();
    assert_eq!(spec, serde_json::json!({ "vmiName": name }));
    assert_eq!(
        m.status.as_ref().and_then(|s| s.phase),
        Some(MigrationPhase::Succeeded)
    );

    // The details page (through the link) with the migrationState.
    br.click(&format!("{r} a.vm-link")).await;
    br.wait_text("#vm-name", |t| t == name).await;
    br.wait_text("#vm-node", |t| t == to).await;
    let field = |f: &str| format!("#migration-state [data-field={f}]");
    br.wait_text(&field("completed"), |t| t == "true").await;
    br.wait_text(&field("sourceNode"), |t| t == from).await;
    br.wait_text(&field("targetNode"), |t| t == to).await;
    br.wait_text(&field("migrationUid"), |t| Some(t) == m.uid().as_deref())
        .await;
    let addr = br
        .wait_text(&field("targetNodeAddress"), |t| !t.is_empty())
        .await;
    let addr: std::net::SocketAddr = addr.parse().expect("ip:port");
    let range: IpNetwork = MIGRATION_RANGE.parse().unwrap();
    assert!(
        range.contains(addr.ip()),
        "{addr} outside {MIGRATION_RANGE}"
    );
    let target_ip = lab
        .migration_ips
        .iter()
        .find(|(n, _)| *n == to)
        .map(|x| x.1);
    assert_eq!(Some(addr.ip()), target_ip, "the target's migration0");
    // A succeeded migration is not also failed.
    if let Ok(e) = br.client.find(Locator::Css(&field("failed"))).await {
        assert_eq!(e.text().await.unwrap(), "false");
    }
    full_page_screenshot(&br, "details-migrated.png").await;
    br.finish().await;
    drop((vm, idle));
}

/// b. An administrator cancels a slow migration from the details page
/// (Actions -> Cancel Migration): the VMIM goes, the abort is recorded,
/// the VM stays Running on its node in the same QEMU, whose guest keeps
/// ticking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cancels_a_slow_migration_from_the_details_page() {
    let lab = turn().await;
    // 200 MiB at 4 MiB/s: still running when cancelled.
    lab.config(&[
        ("bandwidthPerMigration", "4Mi"),
        ("progressTimeout", "3600"),
    ]);
    let name = vm_name("cancel");
    let _vm = lab.create_vm(&name);
    let node = lab.vmi_node(&name).unwrap();
    let qemu = lab.qemu_pids(&node, &name);
    assert_eq!(qemu.len(), 1, "one QEMU for {name} on {node}: {qemu:?}");

    let br = Browser::start().await;
    br.login(&lab.console.base, ADMIN_TOKEN).await;
    br.client
        .goto(&format!("{}/vms/{LAB_NS}/{name}", lab.console.base))
        .await
        .unwrap();
    br.wait_text("#vm-status", |t| t == "Running").await;
    br.click("#actions-toggle").await;
    br.click(".actions [data-action=migrate]").await;
    br.wait_text("#message", |t| t.contains("created")).await;
    br.wait_text("#vm-status", |t| t == "Migrating").await;
    br.wait_text("#mig-phase", |t| t == "Running").await;

    // The live chart: a transferred-bytes line with several samples, rising.
    let deadline = Instant::now() + LAB_TIMEOUT;
    let points = loop {
        let p = br
            .attr("#chart polyline.bytes", "points")
            .await
            .unwrap_or_default();
        let pts: Vec<(f64, f64)> = p
            .split_whitespace()
            .filter_map(|xy| xy.split_once(','))
            .map(|(x, y)| (x.parse().unwrap(), y.parse().unwrap()))
            .collect();
        if pts.len() >= 4 && pts.first().unwrap().1 > pts.last().unwrap().1 {
            break pts;
        }
        assert!(Instant::now() < deadline, "chart points: {p:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // SVG y grows downwards: more bytes = smaller y.
    assert!(
        points
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 >= w[1].1),
        "{points:?}"
    );
    assert!(br.attr("#chart polyline.rate", "points").await.is_some());
    full_page_screenshot(&br, "details-migrating.png").await;
    let vmim = lab.vmims_of(&name);
    assert_eq!(vmim.len(), 1);
    let phase = vmim[0].status.as_ref().and_then(|s| s.phase);
    assert_eq!(
        phase,
        Some(MigrationPhase::Running),
        "still running when cancelled"
    );
    let target = lab
        .vmi(&name)
        .and_then(|v| v.status?.migration_state?.target_node);

    br.click("#actions-toggle").await;
    br.click(".actions [data-action=cancel]").await;
    br.wait_text("#message", |t| t.contains("Cancelling migration"))
        .await;
    br.wait_text("#migration-state [data-field=abortStatus]", |t| {
        t == "Succeeded"
    })
    .await;
    br.wait_text("#vm-status", |t| t == "Running").await;
    br.wait_text("#vm-node", |t| t == node).await;

    eventually("the cancelled VMIM gone", LAB_TIMEOUT, || {
        lab.vmims_of(&name).is_empty().then_some(())
    })
    .await;
    let vmi = lab.vmi(&name).unwrap();
    let st = vmi.status.unwrap();
    assert_eq!(st.phase, Some(VmiPhase::Running));
    assert_eq!(
        st.node_name.as_deref(),
        Some(node.as_str()),
        "stays on its node"
    );
    let ms = st.migration_state.expect("migrationState");
    assert_eq!(ms.abort_status, Some(MigrationAbortStatus::Succeeded));
    assert_ne!(ms.completed, Some(true), "{ms:?}");
    println!("after the cancel: {ms:?}");
    // The same QEMU, still alive and its guest still ticking.
    assert_eq!(
        lab.qemu_pids(&node, &name),
        qemu,
        "the source QEMU is the same"
    );
    assert!(lab_common::pid_alive(qemu[0]));
    let t0 = last_tick(&lab.serial(&node, &name));
    eventually("the guest ticking after the cancel", LAB_TIMEOUT, || {
        let t = last_tick(&lab.serial(&node, &name));
        (t > t0).then_some(())
    })
    .await;
    // The destination's QEMU exits.
    if let Some(target) = target {
        eventually("the target QEMU gone", LAB_TIMEOUT, || {
            lab.qemu_pids(&target, &name).is_empty().then_some(())
        })
        .await;
    }
    br.finish().await;
}

/// c. A non-administrator sees Migrate (and Cancel Migration), clicks it,
/// is refused in words, and no VMIM exists afterwards; an administrator's
/// migration is not cancelled by them either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admin_sees_migrate_and_is_refused() {
    let lab = turn().await;
    lab.config(&[
        ("bandwidthPerMigration", "4Mi"),
        ("progressTimeout", "3600"),
    ]);
    let name = vm_name("viewer");
    let _vm = lab.create_vm(&name);
    let r = row(&name);
    let br = Browser::start().await;
    // Not logged in: sent to the login form; a wrong token is refused in words.
    br.client
        .goto(&format!("{}/", lab.console.base))
        .await
        .unwrap();
    let url = br.client.current_url().await.unwrap();
    assert_eq!(url.path(), "/login", "{url}");
    br.client
        .find(Locator::Css("#token"))
        .await
        .unwrap()
        .send_keys("wrong-token-000")
        .await
        .unwrap();
    br.click("#login").await;
    br.wait_text("#login-error", |t| t == "Invalid token.")
        .await;

    br.login(&lab.console.base, VIEWER_TOKEN).await;
    br.wait_text("#whoami", |t| t == "bob").await;
    br.wait_text(&format!("{r} .status"), |t| t == "Running")
        .await;
    br.click(&format!("{r} .kebab")).await;
    let item = br
        .client
        .find(Locator::Css(&format!("{r} [data-action=migrate]")))
        .await
        .unwrap();
    assert!(
        item.is_displayed().await.unwrap(),
        "Migrate visible to everyone"
    );
    assert_eq!(item.text().await.unwrap(), "Migrate");
    item.click().await.unwrap();
    let msg = br
        .wait_text("#message", |t| {
            t.contains("only administrators may migrate")
        })
        .await;
    assert_eq!(
        msg,
        "Forbidden: bob is not an administrator; only administrators may migrate virtual machines."
    );
    assert_eq!(br.attr("#message", "class").await.as_deref(), Some("error"));
    // Give a wrongly created VMIM time to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        lab.vmims_of(&name).is_empty(),
        "no VMIM after a refused Migrate"
    );
    assert_eq!(
        br.wait_text(&format!("{r} .status"), |_| true).await,
        "Running"
    );

    // An administrator's migration (the seed's way: `mignet create -f`):
    // bob sees Migrating and may not cancel it.
    let file = lab.files.0.join(format!("{name}-vmim.yaml"));
    std::fs::write(
        &file,
        format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstanceMigration\n\
             metadata:\n  name: {name}-job\n  namespace: {LAB_NS}\nspec:\n  vmiName: {name}\n"
        ),
    )
    .unwrap();
    lab.lab.ok(&["create", "-f", &file.display().to_string()]);
    br.wait_text(&format!("{r} .status"), |t| t == "Migrating")
        .await;
    br.click(&format!("{r} .kebab")).await;
    br.click(&format!("{r} [data-action=cancel]")).await;
    br.wait_text("#message", |t| {
        t.contains("only administrators may cancel migrations of")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ms = lab.vmims_of(&name);
    assert_eq!(ms.len(), 1);
    assert_eq!(ms[0].name_any(), format!("{name}-job"));
    assert!(ms[0].metadata.deletion_timestamp.is_none(), "not deleted");
    br.finish().await;
}

/// A migration that waits for a limit says why, in words, in the list;
/// it starts once the running one is cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_waiting_for_a_limit_says_why() {
    let lab = turn().await;
    lab.config(&[
        ("parallelMigrationsPerCluster", "1"),
        ("bandwidthPerMigration", "4Mi"),
        ("progressTimeout", "3600"),
    ]);
    let (first, second) = (
        lab.create_vm(&vm_name("first")),
        lab.create_vm(&vm_name("second")),
    );
    let br = Browser::start().await;
    br.login(&lab.console.base, ADMIN_TOKEN).await;
    for vm in [&first, &second] {
        let r = row(&vm.name);
        br.wait_text(&format!("{r} .status"), |t| t == "Running")
            .await;
        br.click(&format!("{r} .kebab")).await;
        br.click(&format!("{r} [data-action=migrate]")).await;
        br.wait_text("#message", |t| {
            t.contains("created") && t.contains(&vm.name)
        })
        .await;
        br.wait_text(&format!("{r} .status"), |t| t == "Migrating")
            .await;
    }
    br.wait_text(&format!("{} .mig-text", row(&first.name)), |t| {
        t.starts_with("Running")
    })
    .await;
    let note = br
        .wait_text(&format!("{} .mig-note", row(&second.name)), |t| {
            !t.is_empty()
        })
        .await;
    println!("the waiting migration's note: {note}");
    assert!(
        note.starts_with("Waiting: ")
            && note.ends_with("1 migrations running in the cluster (limit 1)"),
        "{note}"
    );
    br.wait_text(&format!("{} .mig-text", row(&second.name)), |t| {
        t == "Pending"
    })
    .await;
    // Cancel the running one from the list: the waiting one starts.
    br.click(&format!("{} .kebab", row(&first.name))).await;
    br.click(&format!("{} [data-action=cancel]", row(&first.name)))
        .await;
    br.wait_text("#message", |t| t.contains("Cancelling migration"))
        .await;
    br.wait_text(&format!("{} .mig-text", row(&second.name)), |t| {
        t.starts_with("Running")
    })
    .await;
    br.wait_text(&format!("{} .status", row(&first.name)), |t| t == "Running")
        .await;
    br.finish().await;
    drop((second, first));
}

/// A node in maintenance (`mignet lab maintenance start NODE`): the Nodes
/// table says "Starting maintenance" with the reason and the cordon while
/// the VM leaves; the VM's row shows Migrating with its node marked
/// "(maintenance)"; then "Under maintenance" with the VM Running on another
/// node; `maintenance stop` ends it and the node is schedulable again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_in_maintenance_and_its_vm_leaving_it() {
    let lab = turn().await;
    // Slow enough (200 MiB at 32 MiB/s) to see the VM Migrating.
    lab.config(&[("bandwidthPerMigration", "32Mi")]);
    let name = vm_name("maint");
    let vm = lab.create_vm(&name);
    let from = lab.vmi_node(&name).unwrap();
    let (r, nr) = (row(&name), format!(r#"tr[data-node="{from}"]"#));
    /// Ends the maintenance even when the test fails, so the shared lab's
    /// next test finds every node schedulable.
    struct Stop<'a>(&'a lab_common::Lab, String);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = self.0.run(&["lab", "maintenance", "stop", &self.1]);
        }
    }

    let br = Browser::start().await;
    br.login(&lab.console.base, ADMIN_TOKEN).await;
    let ready = br
        .wait_text(&format!("{nr} .node-status"), |t| !t.is_empty())
        .await;
    assert!(!ready.contains("SchedulingDisabled"), "{ready}");
    br.wait_text(&format!("{nr} .node-vms"), |t| t.contains(&name))
        .await;
    br.wait_text(&format!("{nr} .maint-state"), |t| t.is_empty())
        .await;

    let out = lab.lab.ok(&[
        "lab",
        "maintenance",
        "start",
        &from,
        "--reason",
        "firmware update",
    ]);
    let _stop = Stop(&lab.lab, from.clone());
    assert!(out.ends_with(" created\n"), "{out}");
    br.wait_text(&format!("{nr} .node-status"), |t| {
        *t == format!("{ready}, SchedulingDisabled")
    })
    .await;
    br.wait_text(&format!("{r} .status"), |t| t == "Migrating")
        .await;
    br.wait_text(&format!("{r} .node"), |t| {
        *t == format!("{from} (maintenance)")
    })
    .await;
    br.wait_text(&format!("{nr} .maint-state"), |t| {
        t == "Starting maintenance"
    })
    .await;
    let note = br
        .wait_text(&format!("{nr} .maint-note"), |t| {
            t.contains("Reason: firmware update")
        })
        .await;
    println!("the node in maintenance, while its VM leaves: {note}");
    let png = br.client.screenshot().await.expect("screenshot");
    std::fs::write(artifacts_dir().join("maintenance-migrating.png"), &png).unwrap();

    br.wait_text(&format!("{nr} .maint-state"), |t| t == "Under maintenance")
        .await;
    br.wait_text(&format!("{r} .status"), |t| t == "Running")
        .await;
    let to = br
        .wait_text(&format!("{r} .node"), |t| {
            !t.is_empty() && !t.contains("maintenance")
        })
        .await;
    assert_ne!(to, from, "the VM left the node");
    br.wait_text(&format!("{nr} .node-vms"), |t| t.is_empty())
        .await;

    lab.lab.ok(&["lab", "maintenance", "stop", &from]);
    br.wait_text(&format!("{nr} .maint-state"), |t| t.is_empty())
        .await;
    br.wait_text(&format!("{nr} .node-status"), |t| t == ready)
        .await;
    br.finish().await;
    drop(vm);
}

/// d. At the HTTP level against the lab's console process: no token or a
/// bad one is rejected, and a cookie session's state-changing request
/// without the CSRF token (or from another origin) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_token_or_csrf_are_refused() {
    let lab = turn().await;
    let a = lab.console.addr;
    let origin = format!("http://{a}");
    // No VM of this name: the refusals must come before any lookup, and a
    // correct request shows what it would have met (409, not running).
    let name = vm_name("nobody");
    let migrate = format!("/api/vms/{LAB_NS}/{name}/migrate");

    for path in ["/api/vms", "/api/session", "/assets/app.js"] {
        let r = http(a, "GET", path, &[], "").await;
        assert_eq!(r.status, 401, "GET {path}: {r:?}");
    }
    let r = http(a, "GET", "/", &[], "").await;
    assert_eq!(r.status, 303, "{r:?}");
    assert_eq!(r.header("location"), Some("/login"));
    for (what, h) in [
        (
            "bad bearer token",
            ("Authorization", "Bearer not-a-token-at-all"),
        ),
        ("forged session cookie", ("Cookie", "mignet_session=forged")),
    ] {
        let r = http(a, "GET", "/api/vms", &[h], "").await;
        assert_eq!(r.status, 401, "{what}: {r:?}");
        let r = http(a, "POST", &migrate, &[h, ("Origin", &origin)], "").await;
        assert_eq!(r.status, 401, "{what}: {r:?}");
    }
    let r = http(a, "POST", &migrate, &[("Origin", &origin)], "").await;
    assert_eq!(r.status, 401, "{r:?}");
    let form = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("Origin", origin.as_str()),
    ];
    let r = http(a, "POST", "/login", &form, "token=wrong-token-123").await;
    assert_eq!(r.status, 401);
    assert!(r.body.contains("Invalid token.") && !r.body.contains("wrong-token-123"));

    let r = http(a, "POST", "/login", &form, &format!("token={ADMIN_TOKEN}")).await;
    assert_eq!(r.status, 303, "{r:?}");
    let cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let r = http(a, "GET", "/api/session", &[("Cookie", &cookie)], "").await;
    let session: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(session["admin"], true);
    let csrf = session["csrf"].as_str().unwrap().to_owned();
    let cases = forged_post_headers(&cookie, &origin, &csrf);
    for (what, headers) in &cases {
        let r = http(a, "POST", &migrate, headers, "").await;
        assert_eq!(r.status, 403, "{what}: {r:?}");
        assert!(r.body.contains("Forbidden"), "{what}: {}", r.body);
        let r = http(a, "POST", "/api/logout", headers, "").await;
        assert_eq!(r.status, 403, "logout, {what}: {r:?}");
    }
    assert!(lab.vmims_of(&name).is_empty());
    // The same request with the token gets past the checks.
    let ok = [
        ("Cookie", cookie.as_str()),
        ("Origin", origin.as_str()),
        ("X-CSRF-Token", csrf.as_str()),
    ];
    let r = http(a, "POST", &migrate, &ok, "").await;
    assert_eq!(r.status, 409, "{r:?}");
    assert!(r.body.contains("the VM is not running"), "{}", r.body);
    assert!(lab.vmims_of(&name).is_empty());
    // The log names users, never the tokens or the session.
    let log = lab.console.log_text();
    assert!(log.contains("console: login user=alice"), "{log}");
    for secret in [
        ADMIN_TOKEN,
        VIEWER_TOKEN,
        csrf.as_str(),
        cookie.split_once('=').unwrap().1,
    ] {
        assert!(!log.contains(secret), "a secret in the console's log");
    }
}

/// `mignet console --lab` without `--tokens`: the lab from
/// $MIGNET_LAB_DIR, and a private tokens file with an administrator and a
/// viewer, made once in the lab's pki/ and named on stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_mode_makes_an_admin_and_a_viewer_token() {
    use std::os::unix::fs::PermissionsExt as _;
    let lab = turn().await;
    let path = lab.dir().join("pki/console-tokens.csv");
    let existed = path.exists();
    let c = ConsoleProcess::start(&lab.lab, &["--lab"], lab.files.0.join("lab-console.log"));
    println!("{}", c.banner.join("\n"));
    let banner = c.banner.join("\n");
    assert_eq!(banner.contains("created"), !existed, "{banner}");
    assert!(
        banner.contains(&format!(
            "tokens in {} for admin (administrator), viewer",
            path.display()
        )),
        "{banner}"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let tokens: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(tokens.len(), 2, "{}", text.lines().count());
    for (token, user, admin) in [(tokens[0], "admin", true), (tokens[1], "viewer", false)] {
        assert!(!banner.contains(token), "the token is not printed");
        let bearer = format!("Bearer {token}");
        let r = http(
            c.addr,
            "GET",
            "/api/session",
            &[("Authorization", &bearer)],
            "",
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
        let s: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            (s["user"].as_str(), s["admin"].as_bool()),
            (Some(user), Some(admin))
        );
        assert!(!c.log_text().contains(token));
    }
    // The lab's own console's tokens do not work here, and vice versa.
    let r = http(
        c.addr,
        "GET",
        "/api/vms",
        &[("Authorization", &format!("Bearer {ADMIN_TOKEN}"))],
        "",
    )
    .await;
    assert_eq!(r.status, 401);
}
