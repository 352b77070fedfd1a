//! The adapter's loop in miniature: decisions drive each migration's
//! lifecycle from Pending to Succeeded, one phase per tick, with a cancel
//! in the middle. This is the way the kube and lab adapters are meant to
//! use the crate.

mod common;

use std::collections::BTreeMap;

use common::*;
use mignet_policy::*;

#[test]
fn twelve_migrations_run_to_completion_under_5_2_with_one_cancelled() {
    let nodes: Vec<NodeView> = (0..4).map(|i| node(&format!("n{i}"), 64)).collect();
    let mut vmis: Vec<VmiView> = (0..12)
        .map(|i| vmi(&format!("v{i:02}"), &format!("n{}", i % 3), 2))
        .collect();
    let mut migs: Vec<MigrationView> = (0..12)
        .map(|i| mig(&format!("m{i:02}"), &format!("v{i:02}"), i as i64))
        .collect();
    let mut life: BTreeMap<ObjectKey, Lifecycle> = migs
        .iter()
        .map(|m| (m.key.clone(), Lifecycle::new(m.created)))
        .collect();
    let cancelled = key("m03");
    let mut abort_requested = false;
    let mut max_active = 0;

    for tick in 100..200i64 {
        let now = Timestamp::from_unix_secs(tick);
        let d = decide(snap(&nodes, &vmis, &migs), limits(5, 2), now);
        assert!(d.refuse.is_empty(), "{d:?}");
        for s in &d.start {
            let m = migs.iter_mut().find(|m| m.key == s.migration).unwrap();
            let l = life.remove(&m.key).unwrap();
            life.insert(m.key.clone(), l.apply(Event::SlotGranted, s.at).unwrap());
            m.phase = Phase::Scheduling;
            m.source_node = Some(s.source_node.clone());
            m.target_node = Some(s.target_node.clone());
        }
        let active = migs.iter().filter(|m| m.phase.is_active()).count();
        max_active = max_active.max(active);
        assert!(active <= 5);
        for n in &nodes {
            let out = migs
                .iter()
                .filter(|m| m.phase.is_active() && m.source_node.as_ref() == Some(&n.name))
                .count();
            assert!(out <= 2, "{} has {out} outbound", n.name);
        }

        // Agents move every started migration one phase forward per tick,
        // except the one the user deletes once it runs.
        for m in migs.iter_mut().filter(|m| m.phase.is_active()) {
            let l = life.remove(&m.key).unwrap();
            let l = if m.key == cancelled && m.phase == Phase::Running {
                // Deleted: the finalizer logic asks for an abort, the
                // source agent reports it done, the migration fails.
                match on_delete(m.phase, abort_requested.then_some(AbortStatus::Succeeded)) {
                    CancelStep::RequestAbort => {
                        abort_requested = true;
                        l
                    }
                    CancelStep::AbortedRemove => l
                        .apply(Event::Failed(FailureReason::Cancelled), now)
                        .unwrap(),
                    other => panic!("{other:?}"),
                }
            } else {
                let ev = match m.phase {
                    Phase::Scheduling => Event::TargetScheduled,
                    Phase::Scheduled => Event::HandedOff,
                    Phase::PreparingTarget => Event::TargetListening,
                    Phase::TargetReady => Event::TransferStarted,
                    Phase::Running => Event::Completed,
                    p => panic!("{p}"),
                };
                l.apply(ev, now).unwrap()
            };
            m.phase = l.phase();
            if m.phase == Phase::Succeeded {
                let v = vmis.iter_mut().find(|v| v.key == m.vmi).unwrap();
                v.node = m.target_node.clone();
            }
            life.insert(m.key.clone(), l);
        }
        if migs.iter().all(|m| m.phase.is_final()) {
            break;
        }
    }

    assert_eq!(max_active, 5, "the cluster limit was used fully");
    for m in &migs {
        let l = &life[&m.key];
        if m.key == cancelled {
            assert_eq!(l.phase(), Phase::Failed);
            assert_eq!(l.failure(), Some(&FailureReason::Cancelled));
            let v = vmis.iter().find(|v| v.key == m.vmi).unwrap();
            assert_eq!(
                v.node.as_deref(),
                Some("n0"),
                "a cancelled VM stays on its source"
            );
            continue;
        }
        assert_eq!(l.phase(), Phase::Succeeded, "{}", m.key);
        let phases: Vec<Phase> = l.transitions().iter().map(|t| t.phase).collect();
        assert_eq!(&phases[..], &Phase::ALL[..7]);
        let times: Vec<Timestamp> = l.transitions().iter().map(|t| t.at).collect();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
        let v = vmis.iter().find(|v| v.key == m.vmi).unwrap();
        assert_eq!(v.node, m.target_node, "the VMI moved to its target");
        assert_ne!(m.source_node, m.target_node);
    }
    // Oldest first: m00..m04 started at the first tick, m05 only later.
    assert_eq!(
        life[&key("m00")].entered(Phase::Scheduling),
        Some(Timestamp::from_unix_secs(100))
    );
    assert!(life[&key("m05")].entered(Phase::Scheduling) > Some(Timestamp::from_unix_secs(100)));
}
