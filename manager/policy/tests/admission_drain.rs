//! Admission, the LiveMigratable condition, and drain evacuation plans.

mod common;

use common::*;
use mignet_policy::*;

fn hm_vmi(name: &str, node: &str) -> VmiView {
    let mut v = vmi(name, node, 2);
    v.cpu = CpuModel::HostModel;
    v
}

#[test]
fn admission_accepts_a_running_migratable_vmi_and_reports_the_method() {
    let nodes = vec![node("a", 64), node("b", 64)];
    let mut block = vmi("block", "a", 1);
    block.volumes.push(VolumeView {
        name: "cd".into(),
        source: VolumeSource::Ephemeral,
    });
    let vmis = vec![vmi("v", "a", 1), block];
    // The new migration itself may already be in the snapshot.
    let migs = vec![mig("m", "v", 0)];
    let mut idx = ClusterIndex::build(snap(&nodes, &vmis, &migs));
    assert_eq!(
        admit(&mut idx, &key("m"), &key("v")),
        Ok(MigrationMethod::LiveMigration)
    );
    assert_eq!(
        admit(&mut idx, &key("m2"), &key("block")),
        Ok(MigrationMethod::BlockMigration)
    );
}

#[test]
fn admission_refuses_with_the_reason() {
    let nodes = vec![
        host_model(node("a", 64), "Skylake"),
        host_model(node("b", 64), "Haswell"),
        node("plain", 64),
    ];
    let mut pending_vmi = vmi("starting", "a", 1);
    pending_vmi.phase = VmiPhase::Scheduling;
    let mut rwo_vm = vmi("rwo", "a", 1);
    rwo_vm.volumes = vec![rwo()];
    let vmis = vec![
        pending_vmi,
        rwo_vm,
        hm_vmi("lonely", "a"),
        hm_vmi("unlabelled", "plain"),
        vmi("busy", "b", 1),
    ];
    let migs = vec![mig("first", "busy", 0)];
    let mut idx = ClusterIndex::build(snap(&nodes, &vmis, &migs));
    let mut refuse = |vmi: &str| admit(&mut idx, &key("new"), &key(vmi)).unwrap_err();

    assert_eq!(refuse("ghost"), Refusal::VmiNotFound { vmi: key("ghost") });
    assert_eq!(
        refuse("starting"),
        Refusal::VmiNotRunning {
            vmi: key("starting"),
            phase: VmiPhase::Scheduling
        }
    );
    let r = refuse("rwo");
    assert_eq!(r.reason(), "DisksNotLiveMigratable");
    assert!(r.to_string().contains("ReadWriteMany"), "{r}");
    let r = refuse("lonely");
    assert_eq!(r.reason(), "NoSuitableNodesForHostModelMigration");
    assert!(r.to_string().contains("Skylake"), "{r}");
    assert_eq!(refuse("unlabelled").reason(), "CPUModeLiveMigratable");
    // Another open migration (even Pending) makes it "already migrating".
    assert_eq!(
        refuse("busy"),
        Refusal::AlreadyMigrating {
            vmi: key("busy"),
            migration: key("first")
        }
    );
    assert_eq!(refuse("busy").reason(), "MigrationInFlight");
}

#[test]
fn live_migratable_host_model_depends_on_other_schedulable_nodes() {
    let v = hm_vmi("v", "a");
    let cases = [
        // (other node, migratable?)
        (host_model(node("b", 64), "Skylake"), true),
        (
            label(
                node("b", 64),
                "cpu-model-migration.node.kubevirt.io/Skylake",
                "true",
            ),
            true,
        ),
        (cordoned(host_model(node("b", 64), "Skylake")), false),
        (drained(host_model(node("b", 64), "Skylake")), false),
        (host_model(node("b", 64), "Haswell"), false),
        // Memory does not matter for the condition.
        (host_model(node("b", 0), "Skylake"), true),
    ];
    for (other, ok) in cases {
        let nodes = vec![host_model(node("a", 64), "Skylake"), other.clone()];
        let vmis = vec![v.clone()];
        let mut idx = ClusterIndex::build(snap(&nodes, &vmis, &[]));
        let m = idx.live_migratable(&v);
        assert_eq!(m.is_migratable(), ok, "{other:?}: {m:?}");
        let c = m.condition();
        assert_eq!(c.type_, "LiveMigratable");
        if !ok {
            assert_eq!(c.status, "False");
            assert_eq!(c.reason, Some("NoSuitableNodesForHostModelMigration"));
        }
    }
    // The source itself never counts as "another node".
    let nodes = vec![host_model(node("a", 64), "Skylake")];
    let vmis = vec![v.clone()];
    let mut idx = ClusterIndex::build(snap(&nodes, &vmis, &[]));
    assert!(!idx.live_migratable(&v).is_migratable());
}

fn with_strategy(mut v: VmiView, s: Option<EvictionStrategy>) -> VmiView {
    v.eviction_strategy = s;
    v
}

#[test]
fn drain_plan_follows_each_eviction_strategy() {
    use EvictionStrategy::*;
    let nodes = vec![drained(node("d", 64)), node("ok", 64), node("other", 64)];
    let mut rwo_lm = vmi("lm-rwo", "d", 1);
    rwo_lm.volumes = vec![rwo()];
    let mut rwo_ifp = with_strategy(vmi("ifp-rwo", "d", 1), Some(LiveMigrateIfPossible));
    rwo_ifp.volumes = vec![rwo()];
    let mut not_running = vmi("lm-pending", "d", 1);
    not_running.phase = VmiPhase::Scheduled;
    let mut finished = vmi("done", "d", 1);
    finished.phase = VmiPhase::Succeeded;
    let vmis = vec![
        vmi("lm", "d", 1),
        rwo_lm,
        with_strategy(vmi("ifp", "d", 1), Some(LiveMigrateIfPossible)),
        rwo_ifp,
        with_strategy(vmi("ext", "d", 1), Some(External)),
        with_strategy(vmi("none", "d", 1), Some(None)),
        with_strategy(vmi("unset", "d", 1), Option::None),
        vmi("lm-busy", "d", 1),
        not_running,
        finished,
        vmi("elsewhere", "other", 1),
    ];
    let migs = vec![mig("user-m", "lm-busy", 0)];
    let plan_for = |default| {
        let mut idx = ClusterIndex::build(snap(&nodes, &vmis, &migs));
        plan_evacuations(&mut idx, default)
    };
    let plan = plan_for(Option::None);
    let action = |plan: &EvacuationPlan, vmi: &str| {
        plan.entries
            .iter()
            .find(|e| e.vmi.name == vmi)
            .unwrap_or_else(|| panic!("{vmi} missing from {plan:#?}"))
            .clone()
    };
    assert_eq!(action(&plan, "lm").action, DrainAction::Evacuate);
    match action(&plan, "lm-rwo").action {
        DrainAction::Blocked(BlockReason::NotMigratable(n)) => {
            assert_eq!(n.reason, NotMigratableReason::DisksNotLiveMigratable)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(action(&plan, "ifp").action, DrainAction::Evacuate);
    assert_eq!(action(&plan, "ifp-rwo").action, DrainAction::Stop);
    assert_eq!(action(&plan, "ext").action, DrainAction::External);
    assert_eq!(action(&plan, "none").action, DrainAction::Stop);
    let unset = action(&plan, "unset");
    assert_eq!((unset.strategy, unset.action), (None, DrainAction::Stop));
    assert_eq!(
        action(&plan, "lm-busy").action,
        DrainAction::AlreadyMigrating {
            migration: key("user-m")
        }
    );
    assert_eq!(
        action(&plan, "lm-pending").action,
        DrainAction::Blocked(BlockReason::NotRunning(VmiPhase::Scheduled))
    );
    assert_eq!(
        plan.entries.len(),
        9,
        "final and off-node VMIs are not listed"
    );
    assert!(plan.entries.iter().all(|e| e.node == "d"));
    assert_eq!(plan.on_node("d").count(), 9);
    assert!(!plan.drain_can_complete());
    assert!(plan.cancel.is_empty());

    // The cluster default applies to unset VMIs only.
    let plan = plan_for(Some(LiveMigrate));
    let unset = action(&plan, "unset");
    assert_eq!(
        (unset.strategy, unset.action),
        (LiveMigrate, DrainAction::Evacuate)
    );
    assert_eq!(action(&plan, "none").action, DrainAction::Stop);
}

#[test]
fn drain_blocks_a_host_model_vmi_with_nowhere_to_go() {
    let nodes = vec![
        drained(host_model(node("d", 64), "Skylake")),
        host_model(node("h", 64), "Haswell"),
    ];
    let vmis = vec![hm_vmi("v", "d")];
    let mut idx = ClusterIndex::build(snap(&nodes, &vmis, &[]));
    let plan = plan_evacuations(&mut idx, None);
    match &plan.entries[0].action {
        DrainAction::Blocked(BlockReason::NotMigratable(n)) => assert_eq!(
            n.reason,
            NotMigratableReason::NoSuitableNodesForHostModelMigration
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_drain_with_only_migratable_or_stoppable_vmis_can_complete() {
    let nodes = vec![drained(node("d", 64)), node("ok", 64)];
    let vmis = vec![
        vmi("a", "d", 1),
        with_strategy(vmi("b", "d", 1), Some(EvictionStrategy::None)),
    ];
    let mut idx = ClusterIndex::build(snap(&nodes, &vmis, &[]));
    let plan = plan_evacuations(&mut idx, None);
    assert!(plan.drain_can_complete());
    assert_eq!(plan.entries.len(), 2);
}

#[test]
fn uncordon_cancels_pending_evacuations_only() {
    let nodes = vec![
        node("was-drained", 64),
        node("ok", 64),
        drained(node("d", 64)),
    ];
    let vmis = vec![
        vmi("p", "was-drained", 1),
        vmi("r", "was-drained", 1),
        vmi("u", "was-drained", 1),
        vmi("still", "d", 1),
        vmi("left", "ok", 1),
    ];
    let migs = vec![
        evac(mig("evac-pending", "p", 0)),
        active(evac(mig("evac-running", "r", 0)), "was-drained", "ok"),
        mig("user-pending", "u", 0),
        evac(mig("evac-still", "still", 0)),
        // Its VMI already moved off the draining node.
        evac(mig("evac-left", "left", 0)),
    ];
    let mut idx = ClusterIndex::build(snap(&nodes, &vmis, &migs));
    let plan = plan_evacuations(&mut idx, None);
    assert_eq!(plan.cancel, vec![key("evac-left"), key("evac-pending")]);
    // The one on the still-draining node is reported, not duplicated.
    assert_eq!(
        plan.entries[0].action,
        DrainAction::AlreadyMigrating {
            migration: key("evac-still")
        }
    );
}
