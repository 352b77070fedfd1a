//! The migration monitor's decision: given the previous state and one
//! `query-migrate` sample, continue, abort (and why), or report the end.
//!
//! Pure: no clock is read here; the caller passes `now` (any monotonic
//! timeline, e.g. time since the agent started) and does the QMP I/O.
//!
//! The rules follow KubeVirt's virt-launcher monitor
//! (`processInflightMigration` / `handleLegacyConvergence`), with one change to
//! what counts as progress, explained on [`decide`]:
//! - abort after `progress_timeout` without progress (0 disables);
//! - abort when the migration has run longer than the completion budget,
//!   `completion_timeout_per_gib` x the data size in GiB (memory, plus disks
//!   when they migrate too; 0 disables);
//! - abort when it is still in `setup` after `setup_timeout` (0 disables):
//!   a parameter mismatch between the two QEMUs leaves the source in `setup`
//!   forever, where neither rule above is meant to catch it.
//! - in post-copy nothing is aborted: the guest already runs on the target,
//!   and cancelling would lose it (KubeVirt does the same).

pub mod sample;

use std::time::Duration;

pub use sample::{MigrationSample, MigrationStatus, RamStats};

const GIB: u128 = 1 << 30;

/// Limits for one migration, from the effective migration configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorConfig {
    /// `progressTimeout`; zero disables the check.
    pub progress_timeout: Duration,
    /// `completionTimeoutPerGiB`; zero disables the check.
    pub completion_timeout_per_gib: Duration,
    /// What the migration has to move: guest memory plus migrating disks, in
    /// bytes.
    pub data_size_bytes: u64,
    /// Longest time the migration may stay in `setup`; zero disables.
    pub setup_timeout: Duration,
}

impl MonitorConfig {
    /// `completion_timeout_per_gib` x size in GiB, or `None` when disabled.
    ///
    /// Exact binary GiB, pro rata (6 GiB at 800 s/GiB = 4800 s, 512 MiB at
    /// 150 s/GiB = 75 s). KubeVirt rounds the size up to whole decimal GB
    /// (8 GiB counts as 9); the documented formula is per GiB, and that is
    /// what we apply.
    pub fn completion_budget(&self) -> Option<Duration> {
        if self.completion_timeout_per_gib.is_zero() {
            return None;
        }
        let per_gib_ms = self.completion_timeout_per_gib.as_millis();
        let ms = per_gib_ms * u128::from(self.data_size_bytes) / GIB;
        Some(Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)))
    }
}

/// What the monitor remembers between samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorState {
    /// When the migration was started (`migrate` issued).
    pub started_at: Duration,
    /// The lowest `ram.remaining` seen so far; `None` before the first sample
    /// with RAM statistics.
    pub low_watermark: Option<u64>,
    /// When progress was last seen (initially `started_at`).
    pub last_progress_at: Duration,
}

impl MonitorState {
    pub fn new(started_at: Duration) -> Self {
        MonitorState {
            started_at,
            low_watermark: None,
            last_progress_at: started_at,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AbortReason {
    ProgressTimeout,
    CompletionTimeout,
    SetupTimeout,
}

impl AbortReason {
    /// Stable name for status fields and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            AbortReason::ProgressTimeout => "ProgressTimeout",
            AbortReason::CompletionTimeout => "CompletionTimeout",
            AbortReason::SetupTimeout => "SetupTimeout",
        }
    }
}

impl std::fmt::Display for AbortReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Continue,
    /// Cancel the migration (`migrate_cancel` on the source) and record why.
    Abort {
        reason: AbortReason,
        message: String,
    },
    Completed,
    /// QEMU ended the migration without success (`failed`, or `cancelled` by
    /// someone other than this monitor).
    Failed {
        error: String,
    },
}

/// One monitor step.
///
/// **Progress.** KubeVirt counts progress when `remaining` is lower than at the
/// previous sample. But `ram.remaining` is a sawtooth: within one pass over
/// guest memory it falls as pages are sent, and at the end of the pass QEMU
/// re-syncs the dirty bitmap and it jumps back up by everything the guest
/// dirtied meanwhile. A guest that dirties memory faster than the bandwidth
/// cap therefore still "progresses" between almost every pair of samples (each
/// pass drains slowly) and would never hit the progress timeout, although the
/// migration can never finish. So here progress means: `ram.remaining` is
/// lower than the lowest value seen so far in this migration (a new low
/// watermark), i.e. the migration is closer to done than it has ever been.
/// During the first pass that is every decrease, exactly KubeVirt's rule; in
/// later passes only a pass that drains below the best point so far counts,
/// which a non-converging migration does not do. The first sample that carries
/// RAM statistics is progress (KubeVirt's `watermark == 0` case). A sample
/// without RAM statistics (`setup`) neither makes nor breaks progress.
pub fn decide(
    config: &MonitorConfig,
    state: &MonitorState,
    sample: &MigrationSample,
    now: Duration,
) -> (MonitorState, Decision) {
    let mut next = state.clone();
    let elapsed = now.saturating_sub(state.started_at);

    match sample.status {
        MigrationStatus::Completed => return (next, Decision::Completed),
        MigrationStatus::Failed => {
            let error = sample
                .error_desc
                .clone()
                .unwrap_or_else(|| "migration failed (QEMU gave no error description)".into());
            return (next, Decision::Failed { error });
        }
        MigrationStatus::Cancelled => {
            return (
                next,
                Decision::Failed {
                    error: "migration was cancelled outside the monitor".into(),
                },
            )
        }
        // Post-copy: the guest runs on the target; never abort (see module doc).
        MigrationStatus::PostcopyActive
        | MigrationStatus::PostcopyPaused
        | MigrationStatus::PostcopyRecover => return (next, Decision::Continue),
        _ => {}
    }

    let in_setup = matches!(
        sample.status,
        MigrationStatus::None | MigrationStatus::Setup
    );

    if let Some(ram) = &sample.ram {
        if !in_setup && next.low_watermark.is_none_or(|low| ram.remaining < low) {
            next.low_watermark = Some(ram.remaining);
            next.last_progress_at = now;
        }
    }

    if in_setup && !config.setup_timeout.is_zero() && elapsed > config.setup_timeout {
        let message = format!(
            "migration still in setup after {:.1}s (setup timeout {:.1}s); \
             the two ends may disagree on capabilities or parameters",
            elapsed.as_secs_f64(),
            config.setup_timeout.as_secs_f64()
        );
        return (
            next,
            Decision::Abort {
                reason: AbortReason::SetupTimeout,
                message,
            },
        );
    }

    // `cancelling` is on its way out: let it finish rather than abort twice.
    if sample.status == MigrationStatus::Cancelling {
        return (next, Decision::Continue);
    }

    if !in_setup && !config.progress_timeout.is_zero() {
        let stalled = now.saturating_sub(next.last_progress_at);
        if stalled > config.progress_timeout {
            let message = format!(
                "no progress for {:.1}s (progress timeout {:.1}s): remaining {} bytes, \
                 lowest so far {} bytes, dirty-sync passes {}",
                stalled.as_secs_f64(),
                config.progress_timeout.as_secs_f64(),
                sample.ram.as_ref().map_or(0, |r| r.remaining),
                next.low_watermark.unwrap_or(0),
                sample.ram.as_ref().map_or(0, |r| r.dirty_sync_count),
            );
            return (
                next,
                Decision::Abort {
                    reason: AbortReason::ProgressTimeout,
                    message,
                },
            );
        }
    }

    if let Some(budget) = config.completion_budget() {
        if elapsed > budget {
            let message = format!(
                "migration running for {:.1}s exceeds its completion budget of {:.1}s \
                 ({}s/GiB x {:.3} GiB)",
                elapsed.as_secs_f64(),
                budget.as_secs_f64(),
                config.completion_timeout_per_gib.as_secs_f64(),
                config.data_size_bytes as f64 / GIB as f64,
            );
            return (
                next,
                Decision::Abort {
                    reason: AbortReason::CompletionTimeout,
                    message,
                },
            );
        }
    }

    (next, Decision::Continue)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn cfg() -> MonitorConfig {
        MonitorConfig {
            progress_timeout: secs(150),
            completion_timeout_per_gib: secs(800),
            data_size_bytes: 6 << 30,
            setup_timeout: secs(30),
        }
    }

    fn sample(status: MigrationStatus, remaining: Option<u64>) -> MigrationSample {
        MigrationSample {
            status,
            error_desc: None,
            ram: remaining.map(|r| RamStats {
                transferred: 0,
                remaining: r,
                total: 6 << 30,
                dirty_sync_count: 1,
                mbps: 0.0,
                dirty_pages_rate: 0,
            }),
            expected_downtime_ms: None,
            downtime_ms: None,
            total_time_ms: None,
            setup_time_ms: None,
        }
    }

    fn active(remaining: u64) -> MigrationSample {
        sample(MigrationStatus::Active, Some(remaining))
    }

    /// Feeds `(t_secs, sample)` pairs; returns the last state and every decision.
    fn run(
        config: &MonitorConfig,
        steps: &[(u64, MigrationSample)],
    ) -> (MonitorState, Vec<Decision>) {
        let mut state = MonitorState::new(Duration::ZERO);
        let mut out = Vec::new();
        for (t, s) in steps {
            let (n, d) = decide(config, &state, s, secs(*t));
            state = n;
            out.push(d);
        }
        (state, out)
    }

    fn reason(d: &Decision) -> Option<AbortReason> {
        match d {
            Decision::Abort { reason, .. } => Some(*reason),
            _ => None,
        }
    }

    #[test]
    fn completion_budget_examples() {
        assert_eq!(cfg().completion_budget(), Some(secs(4800)));
        let mut c = cfg();
        c.completion_timeout_per_gib = secs(150);
        c.data_size_bytes = 512 * MIB;
        assert_eq!(c.completion_budget(), Some(secs(75)));
        c.completion_timeout_per_gib = secs(20);
        c.data_size_bytes = (8 << 30) + (10 << 30); // 8 GiB memory + 10 GiB disk
        assert_eq!(c.completion_budget(), Some(secs(360)));
        c.completion_timeout_per_gib = Duration::ZERO;
        assert_eq!(c.completion_budget(), None);
        c.completion_timeout_per_gib = secs(800);
        c.data_size_bytes = 0;
        assert_eq!(c.completion_budget(), Some(Duration::ZERO));
    }

    #[test]
    fn completion_budget_aborts_just_after_4800s_for_6gib_at_800() {
        // Keep making progress so only the budget can fire.
        let steps: Vec<_> = (0..=4801u64)
            .step_by(100)
            .chain([4800, 4801])
            .map(|t| (t, active(u64::MAX - t)))
            .collect();
        let (_, ds) = run(&cfg(), &steps);
        let first_abort = steps
            .iter()
            .zip(&ds)
            .find(|(_, d)| reason(d).is_some())
            .map(|((t, _), d)| (*t, reason(d).unwrap()));
        assert_eq!(first_abort, Some((4801, AbortReason::CompletionTimeout)));
        // Exactly at the budget is still allowed.
        let (_, d) = decide(
            &cfg(),
            &MonitorState::new(Duration::ZERO),
            &active(1),
            secs(4800),
        );
        assert_eq!(d, Decision::Continue);
    }

    #[test]
    fn completion_budget_counts_from_start_not_from_zero() {
        let state = MonitorState::new(secs(1000));
        let mut c = cfg();
        c.progress_timeout = Duration::ZERO;
        let (_, d) = decide(&c, &state, &active(5), secs(5800));
        assert_eq!(d, Decision::Continue);
        let (_, d) = decide(&c, &state, &active(5), secs(5801));
        assert_eq!(reason(&d), Some(AbortReason::CompletionTimeout));
    }

    #[test]
    fn steady_decrease_is_progress() {
        let steps: Vec<_> = (0..100)
            .map(|i| (i * 10, active(1_000_000 - i * 1000)))
            .collect();
        let (state, ds) = run(&cfg(), &steps);
        assert!(ds.iter().all(|d| *d == Decision::Continue));
        assert_eq!(state.last_progress_at, secs(990));
        assert_eq!(state.low_watermark, Some(1_000_000 - 99_000));
    }

    #[test]
    fn flat_remaining_trips_progress_timeout_after_it_not_at_it() {
        let mut c = cfg();
        c.progress_timeout = secs(10);
        let (_, ds) = run(
            &c,
            &[
                (0, active(100)),
                (5, active(100)),
                (10, active(100)),
                (11, active(100)),
            ],
        );
        assert_eq!(
            ds[..3],
            [Decision::Continue, Decision::Continue, Decision::Continue]
        );
        assert_eq!(reason(&ds[3]), Some(AbortReason::ProgressTimeout));
    }

    #[test]
    fn rising_remaining_is_not_progress() {
        let mut c = cfg();
        c.progress_timeout = secs(10);
        let (_, ds) = run(&c, &[(0, active(100)), (6, active(200)), (12, active(300))]);
        assert_eq!(reason(&ds[2]), Some(AbortReason::ProgressTimeout));
    }

    #[test]
    fn sawtooth_that_never_beats_its_low_is_not_progress() {
        // Each pass drains from 64 MiB to 2 MiB, then the dirty bitmap sync
        // brings it back to 64 MiB: a guest dirtying faster than the cap.
        // KubeVirt's previous-sample rule would see progress at nearly every
        // sample; ours only during the first pass.
        let mut c = cfg();
        c.progress_timeout = secs(20);
        let mut steps = Vec::new();
        let mut t = 0;
        for _pass in 0..4 {
            for k in 0..8u64 {
                steps.push((t, active((64 - k * 9) * MIB)));
                t += 2;
            }
        }
        let (state, ds) = run(&c, &steps);
        assert_eq!(state.low_watermark, Some(MIB));
        // First pass's low at t=14; abort first once 20 s passed without a new low.
        let first_abort = steps
            .iter()
            .zip(&ds)
            .find(|(_, d)| reason(d).is_some())
            .map(|((t, _), _)| *t);
        assert_eq!(first_abort, Some(36));
        // The previous-sample rule would have seen progress at t=34.
        assert!(
            steps[17].1.ram.as_ref().unwrap().remaining
                < steps[16].1.ram.as_ref().unwrap().remaining
        );
    }

    #[test]
    fn sawtooth_with_lower_lows_is_progress() {
        // A converging migration: every pass ends lower than the one before
        // (each pass lasts 8 s, shorter than the progress timeout).
        let mut c = cfg();
        c.progress_timeout = secs(10);
        let mut steps = Vec::new();
        let mut t = 0;
        for pass in 0..5u64 {
            let top = (64 * MIB) >> pass;
            for k in 0..4u64 {
                steps.push((t, active(top - k * (top / 4))));
                t += 2;
            }
        }
        let (_, ds) = run(&c, &steps);
        assert!(ds.iter().all(|d| *d == Decision::Continue), "{ds:?}");
    }

    #[test]
    fn progress_timeout_zero_disables() {
        let mut c = cfg();
        c.progress_timeout = Duration::ZERO;
        let (_, ds) = run(&c, &[(0, active(100)), (1000, active(100))]);
        assert_eq!(ds, [Decision::Continue, Decision::Continue]);
    }

    #[test]
    fn first_ram_sample_counts_as_progress_even_after_a_long_setup() {
        let mut c = cfg();
        c.progress_timeout = secs(5);
        c.setup_timeout = secs(60);
        let (state, ds) = run(
            &c,
            &[
                (0, sample(MigrationStatus::Setup, None)),
                (20, sample(MigrationStatus::Setup, Some(0))),
                (21, active(500)),
            ],
        );
        assert_eq!(
            ds,
            [Decision::Continue, Decision::Continue, Decision::Continue]
        );
        assert_eq!(state.last_progress_at, secs(21));
    }

    #[test]
    fn setup_timeout_fires_only_in_setup() {
        let mut c = cfg();
        c.setup_timeout = secs(3);
        let (_, ds) = run(
            &c,
            &[
                (0, sample(MigrationStatus::None, None)),
                (2, sample(MigrationStatus::Setup, None)),
                (3, sample(MigrationStatus::Setup, None)),
                (4, sample(MigrationStatus::Setup, None)),
            ],
        );
        assert_eq!(
            ds[..3],
            [Decision::Continue, Decision::Continue, Decision::Continue]
        );
        match &ds[3] {
            Decision::Abort { reason, message } => {
                assert_eq!(*reason, AbortReason::SetupTimeout);
                assert!(message.contains("setup"), "{message}");
            }
            d => panic!("expected abort, got {d:?}"),
        }
        // Active after the setup timeout would have passed: no setup abort.
        let (_, ds) = run(
            &c,
            &[(0, sample(MigrationStatus::Setup, None)), (10, active(1))],
        );
        assert_eq!(ds[1], Decision::Continue);
        c.setup_timeout = Duration::ZERO;
        let (_, ds) = run(
            &c,
            &[
                (0, sample(MigrationStatus::Setup, None)),
                (1000, sample(MigrationStatus::Setup, None)),
            ],
        );
        assert_eq!(ds[1], Decision::Continue);
    }

    #[test]
    fn setup_is_not_judged_by_progress() {
        let mut c = cfg();
        c.progress_timeout = secs(1);
        c.setup_timeout = secs(100);
        let (_, ds) = run(
            &c,
            &[
                (0, sample(MigrationStatus::Setup, None)),
                (50, sample(MigrationStatus::Setup, None)),
            ],
        );
        assert_eq!(ds[1], Decision::Continue);
    }

    #[test]
    fn completion_budget_applies_during_setup_too() {
        let mut c = cfg();
        c.data_size_bytes = 1 << 30;
        c.completion_timeout_per_gib = secs(10);
        c.setup_timeout = Duration::ZERO;
        let (_, ds) = run(&c, &[(11, sample(MigrationStatus::Setup, None))]);
        assert_eq!(reason(&ds[0]), Some(AbortReason::CompletionTimeout));
    }

    #[test]
    fn progress_timeout_wins_over_completion_when_both_hold() {
        // KubeVirt checks "not progressing" before the completion budget.
        let mut c = cfg();
        c.progress_timeout = secs(5);
        c.completion_timeout_per_gib = secs(1);
        let (_, ds) = run(&c, &[(0, active(10)), (7, active(10))]);
        assert_eq!(reason(&ds[1]), Some(AbortReason::ProgressTimeout));
        let (_, ds) = run(&c, &[(0, active(10)), (7, active(9))]);
        assert_eq!(reason(&ds[1]), Some(AbortReason::CompletionTimeout));
    }

    #[test]
    fn terminal_states() {
        let state = MonitorState::new(Duration::ZERO);
        let (_, d) = decide(
            &cfg(),
            &state,
            &sample(MigrationStatus::Completed, Some(0)),
            secs(99_999),
        );
        assert_eq!(d, Decision::Completed);
        let mut failed = sample(MigrationStatus::Failed, None);
        failed.error_desc = Some("Unable to write to socket: Broken pipe".into());
        let (_, d) = decide(&cfg(), &state, &failed, secs(1));
        assert_eq!(
            d,
            Decision::Failed {
                error: "Unable to write to socket: Broken pipe".into()
            }
        );
        let (_, d) = decide(
            &cfg(),
            &state,
            &sample(MigrationStatus::Failed, None),
            secs(1),
        );
        assert!(matches!(d, Decision::Failed { .. }));
        let (_, d) = decide(
            &cfg(),
            &state,
            &sample(MigrationStatus::Cancelled, None),
            secs(1),
        );
        assert!(matches!(d, Decision::Failed { .. }));
    }

    #[test]
    fn cancelling_and_postcopy_are_left_alone() {
        let mut c = cfg();
        c.progress_timeout = secs(1);
        c.completion_timeout_per_gib = secs(1);
        let state = MonitorState::new(Duration::ZERO);
        for st in [
            MigrationStatus::Cancelling,
            MigrationStatus::PostcopyActive,
            MigrationStatus::PostcopyPaused,
            MigrationStatus::PostcopyRecover,
        ] {
            let (_, d) = decide(&c, &state, &sample(st, Some(10)), secs(100));
            assert_eq!(d, Decision::Continue, "{st:?}");
        }
    }

    #[test]
    fn device_and_pre_switchover_count_as_active() {
        let mut c = cfg();
        c.progress_timeout = secs(2);
        let (_, ds) = run(
            &c,
            &[
                (0, active(10)),
                (1, sample(MigrationStatus::Device, Some(0))),
                (4, sample(MigrationStatus::PreSwitchover, Some(0))),
            ],
        );
        assert_eq!(ds[1], Decision::Continue);
        assert_eq!(reason(&ds[2]), Some(AbortReason::ProgressTimeout));
    }

    #[test]
    fn time_going_backwards_does_not_panic_or_abort() {
        let state = MonitorState::new(secs(100));
        let (_, d) = decide(&cfg(), &state, &active(1), secs(50));
        assert_eq!(d, Decision::Continue);
    }

    #[test]
    fn abort_messages_carry_numbers() {
        let mut c = cfg();
        c.progress_timeout = secs(10);
        let (_, ds) = run(&c, &[(0, active(100)), (11, active(100))]);
        match &ds[1] {
            Decision::Abort { message, .. } => {
                assert!(
                    message.contains("11.0s") && message.contains("10.0s"),
                    "{message}"
                )
            }
            d => panic!("{d:?}"),
        }
        assert_eq!(
            AbortReason::CompletionTimeout.to_string(),
            "CompletionTimeout"
        );
    }
}
