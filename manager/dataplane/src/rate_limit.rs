//! The pacing limiter behind `bandwidthPerMigration`: one clock per
//! migration, shared by all its connections, consulted by the record layer
//! (`session`) per batch of plaintext. Its own module so that `session`
//! and `proxy` both use it without using each other.

use std::sync::Arc;
use std::time::Duration;

/// A pacing limiter: bytes are admitted on a virtual clock advancing at
/// `bytes_per_sec`; up to `burst` of idle time may be banked, so a short pause
/// does not turn into a long burst afterwards.
#[derive(Debug)]
pub struct RateLimit {
    bytes_per_sec: u64,
    burst: Duration,
    next: std::sync::Mutex<Option<std::time::Instant>>,
}

impl RateLimit {
    pub fn new(bytes_per_sec: u64) -> Arc<Self> {
        Arc::new(RateLimit {
            bytes_per_sec: bytes_per_sec.max(1),
            burst: Duration::from_millis(20),
            next: std::sync::Mutex::new(None),
        })
    }

    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Book `n` bytes at `now`; returns how long to wait before sending them.
    pub fn reserve(&self, n: usize, now: std::time::Instant) -> Duration {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let floor = now.checked_sub(self.burst).unwrap_or(now);
        let start = next.map_or(floor, |t| t.max(floor));
        let cost = Duration::from_secs_f64(n as f64 / self.bytes_per_sec as f64);
        let done = start + cost;
        *next = Some(done);
        done.saturating_duration_since(now)
    }

    pub async fn take(&self, n: usize) {
        let wait = self.reserve(n, std::time::Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn rate_limit_paces_on_a_virtual_clock() {
        let l = RateLimit::new(1000);
        let t0 = Instant::now();
        // The first 20 ms of burst credit covers 20 bytes without waiting.
        assert_eq!(l.reserve(20, t0), Duration::ZERO);
        // Then every byte costs a millisecond.
        assert_eq!(l.reserve(100, t0), Duration::from_millis(100));
        assert_eq!(l.reserve(100, t0), Duration::from_millis(200));
        // After a long idle period only the burst is banked, not the whole pause.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(l.reserve(20, later), Duration::ZERO);
        assert_eq!(l.reserve(10, later), Duration::from_millis(10));
    }
}
