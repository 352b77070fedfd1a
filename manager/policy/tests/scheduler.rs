//! Scheduler and target-selection scenarios.

mod common;

use common::*;
use mignet_policy::*;

/// n nodes "n0".."n{n-1}" of 64 GiB; VMIs "v{i}" of 1 GiB spread round-robin.
fn cluster(nodes: usize, vmis: usize) -> (Vec<NodeView>, Vec<VmiView>) {
    let ns = (0..nodes).map(|i| node(&format!("n{i}"), 64)).collect();
    let vs = (0..vmis)
        .map(|i| vmi(&format!("v{i}"), &format!("n{}", i % nodes), 1))
        .collect();
    (ns, vs)
}

#[test]
fn twelve_pending_under_limits_5_2_start_five_and_never_more_than_two_per_node() {
    let (nodes, vmis) = cluster(6, 12);
    let migs: Vec<_> = (0..12)
        .map(|i| mig(&format!("m{i:02}"), &format!("v{i}"), i as i64))
        .collect();
    let d = decide(snap(&nodes, &vmis, &migs), limits(5, 2), NOW);
    assert_eq!(started(&d), vec!["m00", "m01", "m02", "m03", "m04"]);
    assert_eq!(d.waiting.len(), 7);
    assert!(d.refuse.is_empty());
    for w in &d.waiting {
        assert!(
            matches!(
                w.reason,
                WaitReason::ClusterLimit {
                    active: 5,
                    limit: 5
                }
            ),
            "{w:?}"
        );
    }
    for s in &d.start {
        assert_ne!(s.source_node, s.target_node);
        assert_eq!(s.at, NOW);
    }
}

#[test]
fn per_node_limit_caps_outbound_from_one_source() {
    let nodes = vec![node("a", 64), node("b", 64), node("c", 64)];
    let vmis: Vec<_> = (0..5).map(|i| vmi(&format!("v{i}"), "a", 1)).collect();
    let migs: Vec<_> = (0..5)
        .map(|i| mig(&format!("m{i}"), &format!("v{i}"), i))
        .collect();
    let d = decide(snap(&nodes, &vmis, &migs), limits(5, 2), NOW);
    assert_eq!(started(&d), vec!["m0", "m1"]);
    for name in ["m2", "m3", "m4"] {
        assert_eq!(
            wait_reason(&d, name),
            &WaitReason::NodeLimit {
                node: "a".into(),
                active: 2,
                limit: 2
            }
        );
    }
}

#[test]
fn a_saturated_source_does_not_block_migrations_behind_it() {
    let nodes = vec![node("a", 64), node("b", 64), node("c", 64)];
    let vmis = vec![
        vmi("busy1", "a", 1),
        vmi("busy2", "a", 1),
        vmi("old1", "a", 1),
        vmi("old2", "a", 1),
        vmi("young", "b", 1),
    ];
    let migs = vec![
        active(mig("r1", "busy1", 0), "a", "c"),
        active(mig("r2", "busy2", 0), "a", "c"),
        mig("m-old1", "old1", 1),
        mig("m-old2", "old2", 2),
        mig("m-young", "young", 100),
    ];
    let d = decide(snap(&nodes, &vmis, &migs), limits(5, 2), NOW);
    assert_eq!(started(&d), vec!["m-young"]);
    assert!(matches!(
        wait_reason(&d, "m-old1"),
        WaitReason::NodeLimit { active: 2, .. }
    ));
}

#[test]
fn evacuations_go_first_then_oldest_then_name() {
    let (nodes, vmis) = cluster(4, 4);
    let migs = vec![
        mig("user-old", "v0", 1),
        evac(mig("evac-young", "v1", 50)),
        mig("user-b", "v2", 10),
        mig("user-a", "v3", 10),
    ];
    let d = decide(snap(&nodes, &vmis, &migs), limits(1, 2), NOW);
    assert_eq!(started(&d), vec!["evac-young"]);
    let order: Vec<&str> = d
        .waiting
        .iter()
        .map(|w| w.migration.name.as_str())
        .collect();
    assert_eq!(order, vec!["user-old", "user-a", "user-b"]);
    // With room for all: the same order.
    let d = decide(snap(&nodes, &vmis, &migs), limits(10, 10), NOW);
    assert_eq!(
        started(&d),
        vec!["evac-young", "user-old", "user-a", "user-b"]
    );
}

#[test]
fn lowered_limits_stop_new_starts_but_leave_running_ones() {
    let (nodes, mut vmis) = cluster(6, 6);
    vmis.push(vmi("waiter", "n5", 1));
    let mut migs: Vec<_> = (0..4)
        .map(|i| {
            active(
                mig(&format!("r{i}"), &format!("v{i}"), 0),
                &format!("n{i}"),
                "n5",
            )
        })
        .collect();
    migs.push(mig("p", "waiter", 5));
    let d = decide(snap(&nodes, &vmis, &migs), limits(2, 1), NOW);
    assert!(d.start.is_empty());
    assert!(d.refuse.is_empty(), "running ones are not touched: {d:?}");
    assert_eq!(
        wait_reason(&d, "p"),
        &WaitReason::ClusterLimit {
            active: 4,
            limit: 2
        }
    );
    // At exactly the limit: still no start. Below it: one.
    let d = decide(snap(&nodes, &vmis, &migs), limits(4, 1), NOW);
    assert!(d.start.is_empty());
    let d = decide(snap(&nodes, &vmis, &migs), limits(5, 1), NOW);
    assert_eq!(started(&d), vec!["p"]);
}

#[test]
fn zero_limits_start_nothing() {
    let (nodes, vmis) = cluster(3, 3);
    let migs = vec![mig("m", "v0", 0)];
    assert!(decide(snap(&nodes, &vmis, &migs), limits(0, 2), NOW)
        .start
        .is_empty());
    assert!(decide(snap(&nodes, &vmis, &migs), limits(5, 0), NOW)
        .start
        .is_empty());
}

#[test]
fn target_is_the_node_with_most_free_memory_then_by_name() {
    let nodes = vec![node("src", 64), node("b", 32), node("a", 32), node("c", 16)];
    let vmis = vec![vmi("v", "src", 4)];
    let migs = vec![mig("m", "v", 0)];
    let d = decide(snap(&nodes, &vmis, &migs), limits(5, 2), NOW);
    assert_eq!(d.start[0].target_node, "a", "tie on memory broken by name");
    assert_eq!(d.start[0].source_node, "src");
}

#[test]
fn starts_in_one_decision_reserve_memory_on_their_targets() {
    // Two 20 GiB VMs, targets t1 (32 GiB) and t2 (24 GiB): the first takes
    // t1, which then has 12 GiB free, so the second must go to t2.
    let nodes = vec![node("src", 64), node("t1", 32), node("t2", 24)];
    let vmis = vec![vmi("v1", "src", 20), vmi("v2", "src", 20)];
    let migs = vec![mig("m1", "v1", 0), mig("m2", "v2", 1)];
    let d = decide(snap(&nodes, &vmis, &migs), limits(5, 5), NOW);
    let targets: Vec<&str> = d.start.iter().map(|s| s.target_node.as_str()).collect();
    assert_eq!(targets, vec!["t1", "t2"]);
    // A third one has no room anywhere.
    let mut vmis = vmis;
    vmis.push(vmi("v3", "src", 20));
    let mut migs = migs;
    migs.push(mig("m3", "v3", 2));
    let d = decide(snap(&nodes, &vmis, &migs), limits(5, 5), NOW);
    assert!(matches!(
        wait_reason(&d, "m3"),
        WaitReason::NoTarget(NoTarget::InsufficientMemory { node, .. }) if node == "t1"
    ));
}

#[test]
fn memory_of_resident_vmis_and_inbound_migrations_counts_against_a_target() {
    // t1 has 32 GiB with a 10 GiB VMI and an inbound 10 GiB migration:
    // 12 GiB free. t2 has 16 GiB empty. A 14 GiB VM goes to t2.
    let nodes = vec![
        node("src", 64),
        node("t1", 32),
        node("t2", 16),
        node("o", 64),
    ];
    let vmis = vec![
        vmi("resident", "t1", 10),
        vmi("inbound", "o", 10),
        vmi("v", "src", 14),
    ];
    let migs = vec![active(mig("in", "inbound", 0), "o", "t1"), mig("m", "v", 1)];
    let mut idx = ClusterIndex::build(snap(&nodes, &vmis, &migs));
    assert_eq!(idx.free_memory("t1"), Some(12 * GIB as i64));
    assert_eq!(idx.free_memory("o"), Some(54 * GIB as i64));
    assert_eq!(idx.active_count(), 1);
    assert_eq!(idx.outbound_count("o"), 1);
    // o has the most room; make it unusable to check the t1/t2 choice.
    assert_eq!(idx.select_target(&vmis[2]), Ok("o"));
    let nodes2 = vec![
        node("src", 64),
        node("t1", 32),
        node("t2", 16),
        cordoned(node("o", 64)),
    ];
    let d = decide(snap(&nodes2, &vmis, &migs), limits(5, 5), NOW);
    assert_eq!(d.start[0].target_node, "t2");
    // Final VMIs hold nothing.
    let mut gone = vmis.clone();
    gone[0].phase = VmiPhase::Succeeded;
    let idx = ClusterIndex::build(snap(&nodes, &gone, &migs));
    assert_eq!(idx.free_memory("t1"), Some(22 * GIB as i64));
}

#[test]
fn unschedulable_nodes_are_never_targets() {
    let base = |extra: NodeView| vec![node("src", 8), node("small", 8), extra];
    let vmis = vec![vmi("v", "src", 2)];
    let migs = vec![mig("m", "v", 0)];
    for (extra, ok) in [
        (cordoned(node("big", 64)), false),
        (
            tainted(
                node("big", 64),
                "kubevirt.io/drain",
                TaintEffect::NoSchedule,
            ),
            false,
        ),
        (
            tainted(
                node("big", 64),
                "kubevirt.io/drain",
                TaintEffect::PreferNoSchedule,
            ),
            false,
        ),
        (
            tainted(node("big", 64), "other", TaintEffect::NoExecute),
            false,
        ),
        (
            tainted(node("big", 64), "other", TaintEffect::NoSchedule),
            false,
        ),
        (
            tainted(node("big", 64), "other", TaintEffect::PreferNoSchedule),
            true,
        ),
        (node("big", 64), true),
    ] {
        let nodes = base(extra.clone());
        let d = decide(snap(&nodes, &vmis, &migs), limits(5, 5), NOW);
        let expect = if ok { "big" } else { "small" };
        assert_eq!(d.start[0].target_node, expect, "{extra:?}");
    }
    // Only the source is schedulable: no target.
    let nodes = vec![node("src", 64), cordoned(node("x", 64))];
    let d = decide(snap(&nodes, &vmis, &migs), limits(5, 5), NOW);
    assert_eq!(
        wait_reason(&d, "m"),
        &WaitReason::NoTarget(NoTarget::NoOtherSchedulableNode {
            source_node: "src".into()
        })
    );
}

#[test]
fn host_model_vms_only_go_to_nodes_advertising_the_model_and_features() {
    let src = label(
        host_model(node("src", 64), "Skylake"),
        "host-model-required-features.node.kubevirt.io/avx512",
        "true",
    );
    let nodes = vec![
        src,
        host_model(node("haswell", 128), "Haswell"),
        // Advertises the model through KubeVirt's migration label but lacks the feature.
        label(
            node("nofeat", 96),
            "cpu-model-migration.node.kubevirt.io/Skylake",
            "true",
        ),
        label(
            label(
                node("match", 32),
                "cpu-model-migration.node.kubevirt.io/Skylake",
                "true",
            ),
            "cpu-feature.node.kubevirt.io/avx512",
            "true",
        ),
    ];
    let mut v = vmi("v", "src", 4);
    v.cpu = CpuModel::HostModel;
    let named = vmi("w", "src", 4);
    let vmis = vec![v, named];
    let migs = vec![mig("m", "v", 0), mig("n", "w", 1)];
    let d = decide(snap(&nodes, &vmis, &migs), limits(5, 5), NOW);
    assert_eq!(d.start[0].migration.name, "m");
    assert_eq!(d.start[0].target_node, "match");
    assert_eq!(
        d.start[1].target_node, "haswell",
        "non-host-model: any node"
    );

    // Without the matching node: waits with the model in the reason.
    let nodes: Vec<_> = nodes.into_iter().filter(|n| n.name != "match").collect();
    let d = decide(snap(&nodes, &vmis, &migs), limits(5, 5), NOW);
    match wait_reason(&d, "m") {
        WaitReason::NoTarget(NoTarget::NoNodeWithHostModel { model, source_node }) => {
            assert!(model.contains("Skylake"), "{model}");
            assert_eq!(source_node, "src");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn pending_migrations_that_can_no_longer_run_are_refused_with_the_reason() {
    let nodes = vec![node("a", 64), node("b", 64), node("c", 64)];
    let mut stopped = vmi("stopped", "a", 1);
    stopped.phase = VmiPhase::Succeeded;
    let mut rwo_vm = vmi("rwo", "a", 1);
    rwo_vm.volumes.push(rwo());
    let mut unlabelled = vmi("hm", "a", 1);
    unlabelled.cpu = CpuModel::HostModel;
    let vmis = vec![
        stopped,
        rwo_vm,
        unlabelled,
        vmi("busy", "b", 1),
        vmi("dup", "b", 1),
    ];
    let migs = vec![
        mig("m-missing", "nope", 0),
        mig("m-stopped", "stopped", 1),
        mig("m-rwo", "rwo", 2),
        mig("m-hm", "hm", 3),
        active(mig("m-busy-running", "busy", 0), "b", "c"),
        mig("m-busy", "busy", 4),
        mig("m-dup-1", "dup", 5),
        mig("m-dup-2", "dup", 6),
    ];
    let d = decide(snap(&nodes, &vmis, &migs), limits(5, 5), NOW);
    let refusal = |name: &str| {
        d.refuse
            .iter()
            .find(|r| r.migration.name == name)
            .unwrap_or_else(|| panic!("{name} not refused: {d:#?}"))
            .refusal
            .clone()
    };
    assert!(matches!(refusal("m-missing"), Refusal::VmiNotFound { .. }));
    assert!(matches!(
        refusal("m-stopped"),
        Refusal::VmiNotRunning {
            phase: VmiPhase::Succeeded,
            ..
        }
    ));
    let r = refusal("m-rwo");
    assert_eq!(r.reason(), "DisksNotLiveMigratable");
    assert!(r.to_string().contains("data-pvc"), "{r}");
    assert_eq!(refusal("m-hm").reason(), "CPUModeLiveMigratable");
    assert_eq!(
        refusal("m-busy"),
        Refusal::AlreadyMigrating {
            vmi: key("busy"),
            migration: key("m-busy-running")
        }
    );
    assert_eq!(
        refusal("m-dup-2"),
        Refusal::AlreadyMigrating {
            vmi: key("dup"),
            migration: key("m-dup-1")
        }
    );
    assert_eq!(started(&d), vec!["m-dup-1"]);
    assert_eq!(d.refuse.len(), 6);
    assert!(d.waiting.is_empty());
}

#[test]
fn backoff_waits_until_not_before() {
    let (nodes, vmis) = cluster(3, 1);
    let mut m = mig("m", "v0", 0);
    m.not_before = Some(Timestamp(NOW.0 + 20_000));
    let migs = vec![m];
    let d = decide(snap(&nodes, &vmis, &migs), limits(5, 2), NOW);
    assert_eq!(
        wait_reason(&d, "m"),
        &WaitReason::Backoff {
            until: Timestamp(NOW.0 + 20_000)
        }
    );
    let d = decide(
        snap(&nodes, &vmis, &migs),
        limits(5, 2),
        Timestamp(NOW.0 + 20_000),
    );
    assert_eq!(started(&d), vec!["m"]);
}

#[test]
fn the_decision_does_not_depend_on_input_order() {
    let (nodes, vmis) = cluster(7, 40);
    let migs: Vec<_> = (0..40)
        .map(|i| {
            let m = mig(&format!("m{i:02}"), &format!("v{i}"), (i % 5) as i64);
            if i % 3 == 0 {
                evac(m)
            } else {
                m
            }
        })
        .collect();
    let d1 = decide(snap(&nodes, &vmis, &migs), limits(9, 2), NOW);
    let mut n2 = nodes.clone();
    n2.reverse();
    let mut v2 = vmis.clone();
    v2.reverse();
    let mut m2 = migs.clone();
    m2.rotate_left(17);
    let d2 = decide(snap(&n2, &v2, &m2), limits(9, 2), NOW);
    assert_eq!(d1, d2);
    assert_eq!(d1.start.len(), 9);
    // Every pending migration is in exactly one list.
    let mut all: Vec<&str> = d1
        .start
        .iter()
        .map(|s| s.migration.name.as_str())
        .chain(d1.waiting.iter().map(|w| w.migration.name.as_str()))
        .chain(d1.refuse.iter().map(|r| r.migration.name.as_str()))
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 40);
}

#[test]
fn a_network_switch_hold_queues_every_start_and_keeps_the_refusals() {
    let (nodes, vmis) = cluster(3, 3);
    let mut migs: Vec<_> = (0..3)
        .map(|i| mig(&format!("m{i}"), &format!("v{i}"), i as i64))
        .collect();
    migs.push(mig("gone", "no-such-vmi", 9));
    let mut d = decide(snap(&nodes, &vmis, &migs), limits(5, 2), NOW);
    assert_eq!(started(&d), vec!["m0", "m1", "m2"]);
    d.hold("the migration network is changing: waiting for 1 migration in flight");
    assert!(d.start.is_empty());
    let held: Vec<_> = d
        .waiting
        .iter()
        .map(|w| w.migration.name.as_str())
        .collect();
    assert_eq!(held, ["m0", "m1", "m2"], "queued in scheduling order");
    for w in &d.waiting {
        assert_eq!(w.reason.reason(), "NetworkSwitch");
        assert!(w.reason.to_string().contains("network is changing"));
    }
    assert_eq!(d.refuse.len(), 1, "a refusal cannot heal by waiting");
}
