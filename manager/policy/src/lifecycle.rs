//! The VMIM phase machine: KubeVirt's phases as a consuming state machine,
//! plus the record of when each phase was entered.
//!
//! Entry conditions (KubeVirt `processMigrationPhase`, reference §5):
//! Pending (accepted) → Scheduling (the scheduler granted a slot and a target
//! is being prepared; KubeVirt: target pod created) → Scheduled (target side
//! up; KubeVirt: target pod Ready) → PreparingTarget (handoff done: source
//! and target nodes recorded on the VMI) → TargetReady (`targetNodeAddress`
//! published) → Running (`startTimestamp` set) → Succeeded (`completed`).
//! Any non-final phase may fail. Phases are never skipped: an adapter that
//! observes several steps at once feeds the events in order, so the
//! timestamps of every phase are recorded.

use crate::admission::Refusal;
pub use crate::model::Phase;
use crate::model::Timestamp;

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a migration failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FailureReason {
    /// Admission refused it (VMI not running, not migratable, already
    /// migrating...).
    #[error("refused: {0}")]
    Refused(Refusal),
    /// Cancelled by deleting the VMIM; the VM stays on the source.
    #[error("cancelled by deleting the migration")]
    Cancelled,
    /// Reported by an agent or the monitor (abort on timeout, QEMU error,
    /// target lost...), in its own words.
    #[error("{0}")]
    Reported(String),
}

/// What happened to a migration; each moves it at most one phase forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The scheduler granted a slot and picked a target: Pending → Scheduling.
    SlotGranted,
    /// The target side is up: Scheduling → Scheduled.
    TargetScheduled,
    /// Source and target recorded on the VMI: Scheduled → PreparingTarget.
    HandedOff,
    /// The target agent published its address: PreparingTarget → TargetReady.
    TargetListening,
    /// The source started sending: TargetReady → Running.
    TransferStarted,
    /// The target acknowledged completion: Running → Succeeded.
    Completed,
    /// Any failure, from any non-final phase.
    Failed(FailureReason),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("illegal migration transition: event {event:?} in phase {phase}")]
pub struct IllegalTransition {
    pub phase: Phase,
    pub event: Event,
}

/// One step of the phase machine.
pub fn step(phase: Phase, event: Event) -> Result<Phase, IllegalTransition> {
    use Event as E;
    use Phase as P;
    match (phase, &event) {
        (P::Pending, E::SlotGranted) => Ok(P::Scheduling),
        (P::Scheduling, E::TargetScheduled) => Ok(P::Scheduled),
        (P::Scheduled, E::HandedOff) => Ok(P::PreparingTarget),
        (P::PreparingTarget, E::TargetListening) => Ok(P::TargetReady),
        (P::TargetReady, E::TransferStarted) => Ok(P::Running),
        (P::Running, E::Completed) => Ok(P::Succeeded),
        (p, E::Failed(_)) if !p.is_final() => Ok(P::Failed),
        _ => Err(IllegalTransition { phase, event }),
    }
}

/// `status.phaseTransitionTimestamps` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PhaseTransition {
    pub phase: Phase,
    pub at: Timestamp,
}

/// A migration's phase with the time each phase was entered and, once
/// failed, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    phase: Phase,
    transitions: Vec<PhaseTransition>,
    failure: Option<FailureReason>,
}

impl Lifecycle {
    /// A newly accepted migration: Pending since `now`.
    pub fn new(now: Timestamp) -> Self {
        Self {
            phase: Phase::Pending,
            transitions: vec![PhaseTransition {
                phase: Phase::Pending,
                at: now,
            }],
            failure: None,
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn transitions(&self) -> &[PhaseTransition] {
        &self.transitions
    }

    pub fn failure(&self) -> Option<&FailureReason> {
        self.failure.as_ref()
    }

    /// When `phase` was entered, if it was.
    pub fn entered(&self, phase: Phase) -> Option<Timestamp> {
        self.transitions
            .iter()
            .find(|t| t.phase == phase)
            .map(|t| t.at)
    }

    /// Apply one event at `now`; the lifecycle is consumed and returned in
    /// its new phase, or the error names the phase and the event.
    pub fn apply(mut self, event: Event, now: Timestamp) -> Result<Self, IllegalTransition> {
        let next = step(self.phase, event.clone())?;
        // Timestamps come from the callers' clocks (several processes in
        // cluster mode); a step back would make the history read out of
        // order, so a transition is never recorded before the previous one.
        let last = self.transitions.last().map_or(now, |t| t.at);
        self.transitions.push(PhaseTransition {
            phase: next,
            at: now.max(last),
        });
        if let Event::Failed(reason) = event {
            self.failure = Some(reason);
        }
        self.phase = next;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_events() -> Vec<Event> {
        vec![
            Event::SlotGranted,
            Event::TargetScheduled,
            Event::HandedOff,
            Event::TargetListening,
            Event::TransferStarted,
            Event::Completed,
            Event::Failed(FailureReason::Cancelled),
        ]
    }

    // The whole table: exactly the listed pairs are legal.
    #[test]
    fn transition_table_is_exact() {
        let legal = [
            (Phase::Pending, 0usize, Phase::Scheduling),
            (Phase::Scheduling, 1, Phase::Scheduled),
            (Phase::Scheduled, 2, Phase::PreparingTarget),
            (Phase::PreparingTarget, 3, Phase::TargetReady),
            (Phase::TargetReady, 4, Phase::Running),
            (Phase::Running, 5, Phase::Succeeded),
        ];
        let events = all_events();
        for phase in Phase::ALL {
            for (i, event) in events.iter().enumerate() {
                let got = step(phase, event.clone());
                let expected = if i == 6 {
                    (!phase.is_final()).then_some(Phase::Failed)
                } else {
                    legal
                        .iter()
                        .find(|(p, e, _)| *p == phase && *e == i)
                        .map(|(_, _, n)| *n)
                };
                match expected {
                    Some(n) => assert_eq!(got, Ok(n), "{phase} + {event:?}"),
                    None => assert_eq!(
                        got,
                        Err(IllegalTransition {
                            phase,
                            event: event.clone()
                        }),
                        "{phase} + {event:?}"
                    ),
                }
            }
        }
    }

    #[test]
    fn lifecycle_records_every_phase_in_order() {
        let mut l = Lifecycle::new(Timestamp(1000));
        let evs = all_events();
        for (i, e) in evs.into_iter().take(6).enumerate() {
            l = l.apply(e, Timestamp(2000 + i as i64 * 10)).unwrap();
        }
        assert_eq!(l.phase(), Phase::Succeeded);
        let phases: Vec<Phase> = l.transitions().iter().map(|t| t.phase).collect();
        assert_eq!(&phases[..], &Phase::ALL[..7]);
        assert_eq!(l.entered(Phase::Pending), Some(Timestamp(1000)));
        assert_eq!(l.entered(Phase::Running), Some(Timestamp(2040)));
        assert_eq!(l.entered(Phase::Failed), None);
        assert!(l.failure().is_none());
    }

    #[test]
    fn failure_is_recorded_with_its_reason_and_is_final() {
        let l = Lifecycle::new(Timestamp(5))
            .apply(Event::SlotGranted, Timestamp(6))
            .unwrap()
            .apply(
                Event::Failed(FailureReason::Reported("target lost".into())),
                Timestamp(7),
            )
            .unwrap();
        assert_eq!(l.phase(), Phase::Failed);
        assert_eq!(
            l.failure(),
            Some(&FailureReason::Reported("target lost".into()))
        );
        let err = l
            .clone()
            .apply(Event::Failed(FailureReason::Cancelled), Timestamp(8))
            .unwrap_err();
        assert_eq!(err.phase, Phase::Failed);
        assert_eq!(err.event, Event::Failed(FailureReason::Cancelled));
        assert!(err.to_string().contains("Failed"), "{err}");
    }

    #[test]
    fn a_clock_step_back_never_reorders_the_history() {
        let l = Lifecycle::new(Timestamp(10_000))
            .apply(Event::SlotGranted, Timestamp(9_000))
            .unwrap();
        assert_eq!(l.entered(Phase::Scheduling), Some(Timestamp(10_000)));
    }

    #[test]
    fn phase_strings_round_trip() {
        for p in Phase::ALL {
            assert_eq!(Phase::parse(p.as_str()), Some(p));
            assert_eq!(p.to_string(), p.as_str());
        }
        assert_eq!(Phase::parse("WaitingForSync"), None);
        assert_eq!(Phase::parse("running"), None);
    }

    #[test]
    fn phases_are_ordered_like_kubevirt_and_active_is_scheduling_to_running() {
        let mut sorted = Phase::ALL;
        sorted.sort();
        assert_eq!(sorted, Phase::ALL);
        let active: Vec<Phase> = Phase::ALL.into_iter().filter(|p| p.is_active()).collect();
        assert_eq!(
            active,
            vec![
                Phase::Scheduling,
                Phase::Scheduled,
                Phase::PreparingTarget,
                Phase::TargetReady,
                Phase::Running
            ]
        );
        assert!(!Phase::Pending.is_active() && !Phase::Pending.is_final());
    }
}
