//! The web console in real headless Chromium (Debian's chromium +
//! chromium-driver), against a local store with the migration controller
//! and simulated agents in-process: migrations really go through the
//! controller <-> agent protocol, only QEMU is left out.
//!
//! Run (as root, after tests/setup.sh): `cargo test -p mignet --test console_browser`
//! Artifact: target/console-artifacts/list-migrating.png

mod console_support;
mod control_common;

use std::time::Duration;

use console_support::*;
use control_common::{create_vmim, phase_of, wait_phase};
use fantoccini::Locator;
use kube::ResourceExt;
use mignet::api::MigrationPhase;

const ROW: &str = r#"tr[data-vm="lab/vm"]"#;

/// An administrator migrates `vm` from the list: the row shows
/// `Migrating` with progress, then Running on the other node; the details
/// page shows the migrationState; the VMIM is the one the CLI would make.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_migrates_from_the_list() {
    let lab = Lab::start("list", Duration::from_secs(4)).await;
    // A second, idle VM on the other node, so the list has more than one row.
    control_common::create_running_vmi(
        &lab.backend,
        NS,
        "web",
        &lab.nodes[1],
        control_common::VmiOpts::default(),
    )
    .await;
    let br = Browser::start().await;
    br.login(&lab.base, ADMIN_TOKEN).await;
    br.wait_text("#whoami", |t| t == "alice (administrator)")
        .await;
    br.wait_text(&format!("{ROW} .status"), |t| t == "Running")
        .await;
    br.wait_text(&format!("{ROW} .node"), |t| t == lab.nodes[0])
        .await;
    br.wait_text(r#"tr[data-vm="lab/web"] .status"#, |t| t == "Running")
        .await;

    br.click(&format!("{ROW} .kebab")).await;
    br.click(&format!("{ROW} [data-action=migrate]")).await;
    let msg = br.wait_text("#message", |t| t.contains("created")).await;
    assert!(msg.contains("kubevirt-migrate-vm-"), "{msg}");
    br.wait_text(&format!("{ROW} .status"), |t| t == "Migrating")
        .await;
    // Wait for a progress sample so the screenshot shows the bar.
    let progress = br
        .wait_text(&format!("{ROW} .mig-text"), |t| {
            t.starts_with("Running:") && t.contains("of 1.0 GiB")
        })
        .await;
    println!("list during the migration: {progress}");
    let png = br.client.screenshot().await.expect("screenshot");
    let path = artifacts_dir().join("list-migrating.png");
    std::fs::write(&path, &png).unwrap();
    println!("screenshot: {}", path.display());
    assert!(png.starts_with(b"\x89PNG"), "a PNG");

    br.wait_text(&format!("{ROW} .status"), |t| t == "Running")
        .await;
    br.wait_text(&format!("{ROW} .node"), |t| t == lab.nodes[1])
        .await;
    br.wait_text(&format!("{ROW} .mig-text"), |t| t.ends_with(": Succeeded"))
        .await;
    assert_eq!(lab.vmi_node("vm").await, lab.nodes[1]);
    assert_eq!(
        lab.vmi_node("web").await,
        lab.nodes[1],
        "the other VM untouched"
    );

    // Exactly the VMIM `virtctl migrate` makes.
    let ms = lab.vmims().await;
    assert_eq!(ms.len(), 1, "{ms:?}");
    assert!(ms[0].name_any().starts_with("kubevirt-migrate-vm-"));
    assert_eq!(ms[0].name_any().len(), "kubevirt-migrate-vm-".len() + 5);
    assert_eq!(ms[0].spec.vmi_name, "vm");
    assert_eq!(phase_of(&ms[0]), Some(MigrationPhase::Succeeded));

    // The details page (through the link) with the migrationState.
    br.click(&format!("{ROW} a.vm-link")).await;
    br.wait_text("#vm-name", |t| t == "vm").await;
    br.wait_text("#migration-state [data-field=completed]", |t| t == "true")
        .await;
    br.wait_text("#migration-state [data-field=sourceNode]", |t| {
        t == lab.nodes[0]
    })
    .await;
    br.wait_text("#migration-state [data-field=targetNode]", |t| {
        t == lab.nodes[1]
    })
    .await;
    br.wait_text("#migration-state [data-field=migrationUid]", |t| {
        Some(t) == ms[0].uid().as_deref()
    })
    .await;
    br.wait_text("#vm-node", |t| t == lab.nodes[1]).await;
    br.finish().await;
}

/// An administrator starts a slow migration from the details page, sees
/// it Running with a live chart, cancels it: the VMIM goes, abortStatus
/// is Succeeded and the VM stays on its node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_cancels_a_slow_migration_from_details() {
    let lab = Lab::start("cancel", Duration::from_secs(600)).await;
    let br = Browser::start().await;
    br.login(&lab.base, ADMIN_TOKEN).await;
    br.client
        .goto(&format!("{}/vms/lab/vm", lab.base))
        .await
        .unwrap();
    br.wait_text("#vm-status", |t| t == "Running").await;
    br.click("#actions-toggle").await;
    br.click(".actions [data-action=migrate]").await;
    br.wait_text("#message", |t| t.contains("created")).await;
    br.wait_text("#vm-status", |t| t == "Migrating").await;
    br.wait_text("#mig-phase", |t| t == "Running").await;

    // The live chart: a transferred-bytes line with several samples, rising.
    let deadline = std::time::Instant::now() + TIMEOUT;
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
        if pts.len() >= 4 {
            break pts;
        }
        assert!(std::time::Instant::now() < deadline, "chart points: {p:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // SVG y grows downwards: more bytes = smaller y.
    assert!(
        points
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 >= w[1].1),
        "{points:?}"
    );
    assert!(
        points.first().unwrap().1 > points.last().unwrap().1,
        "{points:?}"
    );
    assert!(br.attr("#chart polyline.rate", "points").await.is_some());
    let png = br.client.screenshot().await.unwrap();
    std::fs::write(artifacts_dir().join("details-migrating.png"), png).unwrap();

    br.click("#actions-toggle").await;
    br.click(".actions [data-action=cancel]").await;
    br.wait_text("#message", |t| t.contains("Cancelling migration"))
        .await;
    br.wait_text("#migration-state [data-field=abortStatus]", |t| {
        t == "Succeeded"
    })
    .await;
    br.wait_text("#migration-state [data-field=failureReason]", |t| {
        t.contains("aborted")
    })
    .await;
    br.wait_text("#vm-status", |t| t == "Running").await;
    br.wait_text("#vm-node", |t| t == lab.nodes[0]).await;
    control_common::eventually(TIMEOUT, "cancelled VMIM gone", || async {
        lab.vmims().await.is_empty().then_some(())
    })
    .await;
    assert_eq!(
        lab.vmi_node("vm").await,
        lab.nodes[0],
        "VM stays on its node"
    );
    br.finish().await;
}

/// A non-administrator sees Migrate and Cancel Migration, is refused in
/// words, and nothing is created or deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_admin_sees_the_actions_and_is_refused() {
    let lab = Lab::start("viewer", Duration::from_secs(600)).await;
    let br = Browser::start().await;
    // Not logged in: the page sends the browser to the login form; a wrong
    // token is refused in words.
    br.client.goto(&format!("{}/", lab.base)).await.unwrap();
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
    br.login(&lab.base, VIEWER_TOKEN).await;
    br.wait_text("#whoami", |t| t == "bob").await;
    br.wait_text(&format!("{ROW} .status"), |t| t == "Running")
        .await;
    br.click(&format!("{ROW} .kebab")).await;
    let item = br
        .client
        .find(Locator::Css(&format!("{ROW} [data-action=migrate]")))
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
    assert!(
        msg.starts_with("Forbidden: bob is not an administrator"),
        "{msg}"
    );
    assert_eq!(br.attr("#message", "class").await.as_deref(), Some("error"));
    // Give a wrongly created VMIM time to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        lab.vmims().await.is_empty(),
        "no VMIM after a refused Migrate"
    );

    // A migration an administrator started: bob sees Migrating and may
    // not cancel it.
    create_vmim(&lab.backend, NS, "admin-mig", "vm").await;
    wait_phase(&lab.backend, NS, "admin-mig", MigrationPhase::Running).await;
    br.wait_text(&format!("{ROW} .status"), |t| t == "Migrating")
        .await;
    br.click(&format!("{ROW} .kebab")).await;
    br.click(&format!("{ROW} [data-action=cancel]")).await;
    br.wait_text("#message", |t| {
        t.contains("only administrators may cancel migrations of")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ms = lab.vmims().await;
    assert_eq!(ms.len(), 1);
    assert!(ms[0].metadata.deletion_timestamp.is_none(), "not deleted");
    assert_eq!(phase_of(&ms[0]), Some(MigrationPhase::Running));
    br.finish().await;
}
