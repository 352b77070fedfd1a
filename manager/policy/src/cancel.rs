//! Cancel by deleting the VMIM (a finalizer holds the object until this
//! says it may go), and the retry backoff of evacuations.
//!
//! KubeVirt (reference §5, finalizer `kubevirt.io/migrationJobFinalize`):
//! before the handoff the target is torn down and the migration fails with
//! `migrationAbortRequested`; once source and target are handed off, the
//! VMI gets `abortRequested=true`, the source agent aborts the transfer and
//! reports `abortStatus`. The VM keeps running on the source.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::lifecycle::Phase;
use crate::model::Timestamp;

/// The finalizer mignet puts on VMIMs (KubeVirt's name, so either
/// controller's cleanup recognises it).
pub const MIGRATION_FINALIZER: &str = "kubevirt.io/migrationJobFinalize";

/// `status.migrationState.abortStatus` as reported by the source agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AbortStatus {
    Aborting,
    Succeeded,
    Failed,
}

/// What to do with a VMIM that has a deletion timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelStep {
    /// Nothing was started (Pending) or it already ended: drop the
    /// finalizer now.
    RemoveFinalizer,
    /// Started but not handed off: release the target, mark the migration
    /// Failed (cancelled, condition `migrationAbortRequested`), then drop
    /// the finalizer.
    FailAndRemove,
    /// Handed off and no abort asked yet: set `abortRequested=true` on the
    /// VMI's migration state; the source agent aborts.
    RequestAbort,
    /// The abort is under way, or it failed and the migration runs to its
    /// own end: keep the finalizer and look again on the next change.
    Wait,
    /// The source agent aborted the transfer: the VM stays on the source;
    /// mark the migration Failed (cancelled) and drop the finalizer.
    AbortedRemove,
}

/// The next step of cancelling a deleted migration.
pub fn on_delete(phase: Phase, abort: Option<AbortStatus>) -> CancelStep {
    match phase {
        Phase::Pending | Phase::Succeeded | Phase::Failed => CancelStep::RemoveFinalizer,
        Phase::Scheduling | Phase::Scheduled => CancelStep::FailAndRemove,
        Phase::PreparingTarget | Phase::TargetReady | Phase::Running => match abort {
            None => CancelStep::RequestAbort,
            Some(AbortStatus::Aborting) => CancelStep::Wait,
            Some(AbortStatus::Succeeded) => CancelStep::AbortedRemove,
            // The transfer could not be stopped (typically it was already
            // completing): the migration ends on its own, Succeeded or
            // Failed, and the phase check above then releases it.
            Some(AbortStatus::Failed) => CancelStep::Wait,
        },
    }
}

/// The evacuation retry: 20 s after the first failure, doubling with every
/// further consecutive failure (KubeVirt's numbers), capped at 320 s (our
/// choice: a node drain should keep retrying at least every few minutes).
pub const EVACUATION_BACKOFF: Backoff =
    Backoff::new(Duration::from_secs(20), Duration::from_secs(320));

/// When an evacuation of a VMI whose previous `failures` consecutive
/// evacuations failed (the last one at `last_failure`) may start; feeds
/// `MigrationView::not_before`. `None` when there was no failure.
pub fn evacuation_not_before(failures: u32, last_failure: Timestamp) -> Option<Timestamp> {
    if failures == 0 {
        return None;
    }
    let delay = EVACUATION_BACKOFF.delay(failures);
    Some(Timestamp(last_failure.0.saturating_add(
        i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_phase_and_abort_status() {
        use AbortStatus::*;
        use CancelStep::*;
        let aborts = [None, Some(Aborting), Some(Succeeded), Some(Failed)];
        for phase in Phase::ALL {
            for abort in aborts {
                let expected = match phase {
                    Phase::Pending | Phase::Succeeded | Phase::Failed => RemoveFinalizer,
                    Phase::Scheduling | Phase::Scheduled => FailAndRemove,
                    _ => match abort {
                        None => RequestAbort,
                        Some(Succeeded) => AbortedRemove,
                        Some(Aborting) | Some(Failed) => Wait,
                    },
                };
                assert_eq!(on_delete(phase, abort), expected, "{phase} {abort:?}");
            }
        }
    }

    #[test]
    fn a_failed_abort_releases_once_the_migration_ends() {
        assert_eq!(
            on_delete(Phase::Running, Some(AbortStatus::Failed)),
            CancelStep::Wait
        );
        for end in [Phase::Succeeded, Phase::Failed] {
            assert_eq!(
                on_delete(end, Some(AbortStatus::Failed)),
                CancelStep::RemoveFinalizer
            );
        }
    }

    #[test]
    fn evacuation_backoff_doubles_from_20s_and_is_capped() {
        let t = Timestamp::from_unix_secs(1000);
        assert_eq!(evacuation_not_before(0, t), None);
        let secs = |n| (evacuation_not_before(n, t).unwrap().0 - t.0) / 1000;
        assert_eq!(
            (1..=6).map(secs).collect::<Vec<_>>(),
            vec![20, 40, 80, 160, 320, 320]
        );
        assert_eq!(secs(u32::MAX), 320);
    }
}
