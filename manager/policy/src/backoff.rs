//! The one retry backoff of mignet: how long to wait before the next try
//! after `attempt` consecutive failures. Every retry loop in the tree (the
//! network rollout's requeue, the IPAM pool writers' conflict window, the
//! evacuation retry, the agent's certificate requests) asks this type, so
//! the doubling, the cap and the overflow handling are written once.
//!
//! Pure: no clock and no random source; a caller that wants jitter passes
//! its own random number to [`Backoff::jittered`].

use std::time::Duration;

/// Exponential backoff: `base * 2^(attempt-1)`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub const fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max }
    }

    /// The delay after `attempt` consecutive failures (1 = the first
    /// failure waits `base`). No failure yet waits nothing.
    pub fn delay(&self, attempt: u32) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        // 2^31 already exceeds any cap we use; shifting further would wrap.
        let factor = 1u32 << (attempt - 1).min(31);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// "Full jitter": a point in `[0, delay(attempt))` chosen by `random`
    /// (any uniformly distributed u64). Writers that collide on one object
    /// spread over the window instead of retrying in lockstep.
    pub fn jittered(&self, attempt: u32, random: u64) -> Duration {
        let window = self.delay(attempt).as_nanos();
        if window == 0 {
            return Duration::ZERO;
        }
        let nanos = u128::from(random) % window;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_base_and_stops_at_the_cap() {
        let b = Backoff::new(500 * MS, 60_000 * MS);
        let got: Vec<_> = (0..=9).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(
            got,
            vec![0, 500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
    }

    #[test]
    fn huge_attempts_neither_overflow_nor_exceed_the_cap() {
        let b = Backoff::new(Duration::from_secs(20), Duration::from_secs(320));
        for n in [32, 33, 64, 1000, u32::MAX] {
            assert_eq!(b.delay(n), Duration::from_secs(320), "attempt {n}");
        }
        let unbounded = Backoff::new(Duration::from_secs(1), Duration::MAX);
        assert!(unbounded.delay(u32::MAX) >= Duration::from_secs(1 << 31));
    }

    #[test]
    fn jitter_stays_inside_the_window() {
        let b = Backoff::new(2 * MS, 64 * MS);
        assert_eq!(b.jittered(0, 12345), Duration::ZERO);
        for attempt in 1..8 {
            let window = b.delay(attempt);
            for r in [0, 1, 7, u64::MAX / 3, u64::MAX] {
                assert!(b.jittered(attempt, r) < window, "attempt {attempt} r {r}");
            }
        }
        assert_eq!(b.jittered(3, 0), Duration::ZERO);
    }
}
