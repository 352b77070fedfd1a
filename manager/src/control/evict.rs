//! What an eviction of a running VMI's pod means for the VMI, by its
//! eviction strategy: one decision for the two ways a node is emptied, the
//! pod-eviction webhook (`kubectl drain`, `kube_adapter::eviction`) and
//! NodeMaintenance (`control::maintenance`). Each words it its own way.
//! Pure.

use mignet_policy::EvictionStrategy;

use crate::api::{VirtualMachineInstance, VmiPhase};
use crate::backend::protocol::LIVE_MIGRATABLE;
use crate::control::views;

/// The VMI's answer to an eviction of its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmiEviction {
    /// It leaves by live migration (marked for evacuation).
    Evacuate,
    /// `External`: marked, left to an external controller.
    External,
    /// It stops with its pod: `None`, or `LiveMigrateIfPossible` when it
    /// cannot migrate (`if_possible` says which, for the words).
    Stop { if_possible: bool },
    /// `LiveMigrate` but not running: the pod may not go.
    NotRunning(Option<VmiPhase>),
    /// `LiveMigrate` but `LiveMigratable=False` (`reason: message`).
    NotMigratable(String),
}

/// The VMI's strategy with the cluster-wide default applied.
pub fn effective_strategy(
    vmi: &VirtualMachineInstance,
    cluster_default: Option<EvictionStrategy>,
) -> EvictionStrategy {
    EvictionStrategy::effective(
        vmi.spec.eviction_strategy.map(views::eviction_to_policy),
        cluster_default,
    )
}

/// The VMI's `LiveMigratable` condition: `Some(Ok)`/`Some(Err(reason:
/// message))`; `None` when the controller has not written it yet.
pub fn live_migratable(vmi: &VirtualMachineInstance) -> Option<Result<(), String>> {
    let c = vmi
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == LIVE_MIGRATABLE)?;
    Some(if c.status == "True" {
        Ok(())
    } else {
        Err(format!(
            "{}: {}",
            c.reason.as_deref().unwrap_or("NotMigratable"),
            c.message.as_deref().unwrap_or("")
        ))
    })
}

/// KubeVirt's pod-eviction admitter: `LiveMigrate` evacuates a running VMI
/// unless it is known not to be live-migratable (no condition yet counts as
/// migratable: the drain step checks again before it creates the
/// migration); `LiveMigrateIfPossible` evacuates only a VMI known to be
/// migratable and otherwise lets it stop.
pub fn vmi_eviction(
    vmi: &VirtualMachineInstance,
    cluster_default: Option<EvictionStrategy>,
) -> VmiEviction {
    let phase = vmi.status.as_ref().and_then(|s| s.phase);
    let running = phase == Some(VmiPhase::Running);
    match effective_strategy(vmi, cluster_default) {
        EvictionStrategy::None => VmiEviction::Stop { if_possible: false },
        EvictionStrategy::External => VmiEviction::External,
        EvictionStrategy::LiveMigrate => match (running, live_migratable(vmi)) {
            (false, _) => VmiEviction::NotRunning(phase),
            (true, Some(Err(why))) => VmiEviction::NotMigratable(why),
            (true, _) => VmiEviction::Evacuate,
        },
        EvictionStrategy::LiveMigrateIfPossible => match (running, live_migratable(vmi)) {
            (true, Some(Ok(()))) => VmiEviction::Evacuate,
            _ => VmiEviction::Stop { if_possible: true },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{self, VirtualMachineInstanceStatus, VmiCondition};

    fn vmi(
        s: api::EvictionStrategy,
        phase: VmiPhase,
        migratable: Option<bool>,
    ) -> VirtualMachineInstance {
        let mut v = VirtualMachineInstance::new("v", Default::default());
        v.spec.eviction_strategy = Some(s);
        v.status = Some(VirtualMachineInstanceStatus {
            phase: Some(phase),
            conditions: migratable
                .map(|m| VmiCondition {
                    type_: LIVE_MIGRATABLE.into(),
                    status: if m { "True" } else { "False" }.into(),
                    reason: Some("DisksNotLiveMigratable".into()),
                    message: Some("RWO".into()),
                    ..Default::default()
                })
                .into_iter()
                .collect(),
            ..Default::default()
        });
        v
    }

    /// One table for `kubectl drain` and NodeMaintenance. NodeMaintenance
    /// had its own copy that evacuated a LiveMigrateIfPossible VMI not yet
    /// judged migratable, where the webhook (and KubeVirt) lets it stop.
    #[test]
    fn each_strategy_answers_an_eviction_once_for_drain_and_maintenance() {
        use api::EvictionStrategy as S;
        use VmiPhase::{Running, Scheduled};
        let not = || VmiEviction::NotMigratable("DisksNotLiveMigratable: RWO".into());
        for (s, phase, m, want) in [
            (
                S::None,
                Running,
                Some(true),
                VmiEviction::Stop { if_possible: false },
            ),
            (S::External, Running, Some(false), VmiEviction::External),
            (S::LiveMigrate, Running, Some(true), VmiEviction::Evacuate),
            (S::LiveMigrate, Running, None, VmiEviction::Evacuate),
            (S::LiveMigrate, Running, Some(false), not()),
            (
                S::LiveMigrate,
                Scheduled,
                Some(true),
                VmiEviction::NotRunning(Some(Scheduled)),
            ),
            (
                S::LiveMigrateIfPossible,
                Running,
                Some(true),
                VmiEviction::Evacuate,
            ),
            (
                S::LiveMigrateIfPossible,
                Running,
                None,
                VmiEviction::Stop { if_possible: true },
            ),
            (
                S::LiveMigrateIfPossible,
                Running,
                Some(false),
                VmiEviction::Stop { if_possible: true },
            ),
        ] {
            assert_eq!(
                vmi_eviction(&vmi(s, phase, m), None),
                want,
                "{s:?} {phase:?} {m:?}"
            );
        }
    }
}
