//! Login throttling per client: the pure decision (no clock, no I/O; the
//! caller passes `now`). [`super::handlers`] asks [`Throttle::check`]
//! before a token is checked, sleeps outside the lock when told to wait,
//! and reports the outcome with [`Throttle::failure`] or
//! [`Throttle::success`].
//!
//! - A client is its TCP peer address; IPv6 peers by their /64 (one host
//!   usually owns the whole prefix and could otherwise rotate addresses
//!   within it). `X-Forwarded-For` is not trusted: the console is reached
//!   directly or through `kubectl port-forward`, neither adds the header,
//!   and trusting it without a known proxy would let anyone pick their key.
//! - Failures are counted in a sliding window (each is forgotten `window`
//!   after it happened). From `failures_before_delay` on, every attempt
//!   waits before the token is checked: `first_delay`, doubling per further
//!   failure, at most `max_delay`. Parallel attempts queue one delay apart
//!   (so concurrency does not bypass the delay); a client whose queue is
//!   already `max_delay` long is refused ("busy") instead of queued.
//! - The failure that reaches `failures_before_lockout` locks the client
//!   out for `lockout`: it is refused without its token being checked.
//!   After the lockout its failures are still in the window, so one more
//!   failure locks it out again (a success clears them).
//! - A success forgets the client.
//! - Memory is bounded: only clients with a failure are tracked, at most
//!   `max_clients` of them (each holds at most
//!   `max(failures_before_lockout, failures_before_delay + 8)` instants).
//!   A new client in a full table first drops the expired entries, then the
//!   least recently seen tenth of the table.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// The limits (settings of `mignet console`, see the console README).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginLimits {
    /// Failures within `window` that are answered without waiting.
    pub failures_before_delay: u32,
    /// The wait of the first delayed attempt; doubles per further failure.
    pub first_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
    /// Failures within `window` that lock the client out.
    pub failures_before_lockout: u32,
    /// How long a locked-out client is refused.
    pub lockout: Duration,
    /// How long a failure counts.
    pub window: Duration,
    /// Most clients tracked at once.
    pub max_clients: usize,
}

impl LoginLimits {
    pub const DEFAULT: LoginLimits = LoginLimits {
        failures_before_delay: 5,
        first_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(8),
        failures_before_lockout: 10,
        lockout: Duration::from_secs(5 * 60),
        window: Duration::from_secs(15 * 60),
        max_clients: 10_000,
    };

    /// The wait of an attempt after `failures` failures (zero below the
    /// delay threshold).
    pub fn delay_for(&self, failures: u32) -> Duration {
        let Some(k) = failures.checked_sub(self.failures_before_delay) else {
            return Duration::ZERO;
        };
        self.first_delay
            .saturating_mul(1u32 << k.min(20))
            .min(self.max_delay)
    }

    /// Failure instants kept per client: enough to reach the lockout and
    /// the longest delay, no more.
    fn kept(&self) -> usize {
        (self
            .failures_before_lockout
            .max(self.failures_before_delay.saturating_add(8)))
        .max(1) as usize
    }
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What to do with an attempt before its token is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Check the token now.
    Go,
    /// Check it after waiting this long (outside any lock), then ask
    /// [`Throttle::locked_out`] again: a lockout may have begun meanwhile.
    Wait(Duration),
    /// Do not check it: answer 429 with `Retry-After`.
    Refuse(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RefusalReason,
    /// When the client may try again.
    pub retry_after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// Too many failures: locked out.
    LockedOut { failures: u32 },
    /// Too many delayed attempts in flight at once.
    Busy,
}

/// Returned by [`Throttle::failure`] when that failure locked the client
/// out (the caller logs it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    pub failures: u32,
    pub duration: Duration,
}

#[derive(Debug)]
struct Client {
    /// Failure instants, oldest first, at most [`LoginLimits::kept`].
    failures: VecDeque<Instant>,
    locked_until: Option<Instant>,
    /// The next delayed attempt is answered no earlier than this.
    next_slot: Instant,
    last_seen: Instant,
}

impl Client {
    fn forget_old(&mut self, now: Instant, window: Duration) {
        while self
            .failures
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            self.failures.pop_front();
        }
    }

    fn lock_left(&self, now: Instant) -> Option<Duration> {
        self.locked_until
            .filter(|u| *u > now)
            .map(|u| u.duration_since(now))
    }

    fn expired(&mut self, now: Instant, window: Duration) -> bool {
        self.forget_old(now, window);
        self.failures.is_empty() && self.lock_left(now).is_none() && self.next_slot <= now
    }
}

/// The failure table. Keep it behind a `Mutex`; every method is quick.
#[derive(Debug)]
pub struct Throttle {
    limits: LoginLimits,
    clients: HashMap<IpAddr, Client>,
}

/// The key of a peer: IPv4 as is (also when IPv4-mapped), IPv6 by /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !((1u128 << 64) - 1))),
        },
    }
}

impl Throttle {
    pub fn new(limits: LoginLimits) -> Self {
        Self {
            limits,
            clients: HashMap::new(),
        }
    }

    pub fn limits(&self) -> &LoginLimits {
        &self.limits
    }

    /// Clients tracked now.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// Before checking a token from `ip`. Unknown clients are not added.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        let l = &self.limits;
        let Some(c) = self.clients.get_mut(&client_key(ip)) else {
            return Verdict::Go;
        };
        c.forget_old(now, l.window);
        c.last_seen = now;
        if let Some(left) = c.lock_left(now) {
            return Verdict::Refuse(Refusal {
                reason: RefusalReason::LockedOut {
                    failures: c.failures.len() as u32,
                },
                retry_after: left,
            });
        }
        let delay = l.delay_for(c.failures.len() as u32);
        if delay.is_zero() {
            return Verdict::Go;
        }
        let start = c.next_slot.max(now);
        let queued = start.duration_since(now);
        if !queued.is_zero() && queued >= l.max_delay {
            return Verdict::Refuse(Refusal {
                reason: RefusalReason::Busy,
                retry_after: queued,
            });
        }
        c.next_slot = start + delay;
        Verdict::Wait(queued + delay)
    }

    /// After a wait: is the client locked out now?
    pub fn locked_out(&mut self, ip: IpAddr, now: Instant) -> Option<Refusal> {
        let c = self.clients.get_mut(&client_key(ip))?;
        c.forget_old(now, self.limits.window);
        let left = c.lock_left(now)?;
        Some(Refusal {
            reason: RefusalReason::LockedOut {
                failures: c.failures.len() as u32,
            },
            retry_after: left,
        })
    }

    /// A token from `ip` was not valid. `Some` when this failure locked the
    /// client out.
    pub fn failure(&mut self, ip: IpAddr, now: Instant) -> Option<Lockout> {
        let key = client_key(ip);
        if !self.clients.contains_key(&key) {
            self.make_room(now);
        }
        let l = &self.limits;
        let c = self.clients.entry(key).or_insert_with(|| Client {
            failures: VecDeque::new(),
            locked_until: None,
            next_slot: now,
            last_seen: now,
        });
        c.forget_old(now, l.window);
        c.failures.push_back(now);
        while c.failures.len() > l.kept() {
            c.failures.pop_front();
        }
        c.last_seen = now;
        let failures = c.failures.len() as u32;
        if failures >= l.failures_before_lockout && c.lock_left(now).is_none() {
            c.locked_until = Some(now + l.lockout);
            return Some(Lockout {
                failures,
                duration: l.lockout,
            });
        }
        None
    }

    /// A token from `ip` was valid: forget the client's failures.
    pub fn success(&mut self, ip: IpAddr) {
        self.clients.remove(&client_key(ip));
    }

    /// Before adding a client: keep the table below `max_clients`.
    fn make_room(&mut self, now: Instant) {
        let cap = self.limits.max_clients.max(1);
        if self.clients.len() < cap {
            return;
        }
        let window = self.limits.window;
        self.clients.retain(|_, c| !c.expired(now, window));
        if self.clients.len() < cap {
            return;
        }
        // Drop the least recently seen tenth at once, so a flood of new
        // addresses costs one scan per `cap / 10` insertions, not per one.
        let drop = (self.clients.len() + 1 - cap).max(cap / 10).max(1);
        let mut seen: Vec<(Instant, IpAddr)> = self
            .clients
            .iter()
            .map(|(k, c)| (c.last_seen, *k))
            .collect();
        seen.select_nth_unstable(drop - 1);
        for (_, k) in &seen[..drop] {
            self.clients.remove(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn limits() -> LoginLimits {
        LoginLimits {
            failures_before_delay: 2,
            first_delay: ms(100),
            max_delay: ms(400),
            failures_before_lockout: 5,
            lockout: ms(1000),
            window: ms(10_000),
            max_clients: 100,
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn locked(failures: u32, left_ms: u64) -> Verdict {
        Verdict::Refuse(Refusal {
            reason: RefusalReason::LockedOut { failures },
            retry_after: ms(left_ms),
        })
    }

    #[test]
    fn delay_grows_doubling_and_is_capped() {
        let l = limits();
        let table = [
            (0, 0),
            (1, 0),
            (2, 100),
            (3, 200),
            (4, 400),
            (5, 400),
            (99, 400),
        ];
        for (failures, want) in table {
            assert_eq!(l.delay_for(failures), ms(want), "after {failures} failures");
        }
        let d = LoginLimits::default();
        let table = [
            (4, 0),
            (5, 1000),
            (6, 2000),
            (7, 4000),
            (8, 8000),
            (9, 8000),
        ];
        for (failures, want) in table {
            assert_eq!(
                d.delay_for(failures),
                ms(want),
                "default, {failures} failures"
            );
        }
        assert_eq!(d.delay_for(u32::MAX), d.max_delay);
    }

    /// Step by step: (ms since start, event, what `check` then says).
    #[test]
    fn failures_are_slowed_then_locked_out_then_forgiven() {
        enum Ev {
            Fail,
            Ok,
            Wait,
        }
        use Ev::*;
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        let mut th = Throttle::new(limits());
        // (at ms, event before the check, expected verdict of the check)
        let table: &[(u64, Ev, Verdict)] = &[
            (0, Wait, Verdict::Go),
            (0, Fail, Verdict::Go),
            (10, Fail, Verdict::Wait(ms(100))),
            (200, Fail, Verdict::Wait(ms(200))),
            (500, Fail, Verdict::Wait(ms(400))),
            // The fifth failure locks out for 1000 ms, token unchecked.
            (1000, Fail, locked(5, 1000)),
            (1999, Wait, locked(5, 1)),
            // Lockout over; the failures still count: the longest wait.
            (2000, Wait, Verdict::Wait(ms(400))),
            // A success forgets everything.
            (2500, Ok, Verdict::Go),
            (2600, Fail, Verdict::Go),
            (2700, Fail, Verdict::Wait(ms(100))),
            // The window slides: each failure counts for 10 s.
            (12_599, Wait, Verdict::Wait(ms(100))),
            (12_600, Wait, Verdict::Go),
        ];
        for (i, (at, ev, want)) in table.iter().enumerate() {
            let now = t0 + ms(*at);
            match ev {
                Fail => {
                    th.failure(a, now);
                }
                Ok => th.success(a),
                Wait => {}
            }
            // Probe without reserving a queue slot for later rows.
            let got = th.check(a, now);
            if let Some(c) = th.clients.get_mut(&a) {
                c.next_slot = now;
            }
            assert_eq!(&got, want, "row {i} at {at} ms");
        }
    }

    #[test]
    fn the_lockout_is_reported_once_and_renewed_by_a_failure_after_it() {
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        let mut th = Throttle::new(limits());
        let got: Vec<Option<Lockout>> = (0..5).map(|i| th.failure(a, t0 + ms(i))).collect();
        assert_eq!(got[..4], [None, None, None, None]);
        assert_eq!(
            got[4],
            Some(Lockout {
                failures: 5,
                duration: ms(1000)
            })
        );
        // An attempt admitted before the lockout failing during it: no
        // second report, the lockout is not extended.
        assert_eq!(th.failure(a, t0 + ms(500)), None);
        assert_eq!(th.check(a, t0 + ms(504)), locked(6, 500));
        // After it, the next failure locks out again at once.
        let again = th.failure(a, t0 + ms(1100));
        assert!(again.is_some(), "{again:?}");
        assert_eq!(th.check(a, t0 + ms(1100)), locked(7, 1000));
    }

    #[test]
    fn parallel_attempts_queue_one_delay_apart_then_are_refused() {
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        let mut th = Throttle::new(limits());
        for _ in 0..3 {
            th.failure(a, t0);
        }
        // Three failures: 200 ms each; four arrive at once. The queue
        // holds less than `max_delay` (400 ms) of waiting.
        let got: Vec<Verdict> = (0..4).map(|_| th.check(a, t0)).collect();
        let busy = Verdict::Refuse(Refusal {
            reason: RefusalReason::Busy,
            retry_after: ms(400),
        });
        assert_eq!(
            got,
            [
                Verdict::Wait(ms(200)),
                Verdict::Wait(ms(400)),
                busy.clone(),
                busy
            ]
        );
        // Once the queue has drained, one waits again.
        assert_eq!(th.check(a, t0 + ms(400)), Verdict::Wait(ms(200)));
    }

    #[test]
    fn clients_are_independent_and_ipv6_counts_per_64() {
        let t0 = Instant::now();
        let mut th = Throttle::new(limits());
        for _ in 0..5 {
            th.failure(ip("127.0.0.1"), t0);
            th.failure(ip("2001:db8:1:2::1"), t0);
        }
        let table = [
            ("127.0.0.1", true),
            ("::ffff:127.0.0.1", true),
            ("127.0.0.2", false),
            ("2001:db8:1:2::1", true),
            ("2001:db8:1:2:ffff:ffff:ffff:ffff", true),
            ("2001:db8:1:3::1", false),
        ];
        for (who, is_locked) in table {
            let v = th.check(ip(who), t0);
            assert_eq!(matches!(v, Verdict::Refuse(_)), is_locked, "{who}: {v:?}");
        }
        assert_eq!(th.len(), 2, "only clients with failures are tracked");
    }

    #[test]
    fn the_table_stays_bounded_under_a_flood_of_addresses() {
        let t0 = Instant::now();
        let mut th = Throttle::new(limits());
        let addr = |base: u32, i: u32| IpAddr::V4((base + i).into());
        // 10 000 addresses failing once each, 1 µs apart.
        let n = 10_000u32;
        for i in 0..n {
            th.failure(
                addr(0x0a00_0000, i),
                t0 + Duration::from_micros(u64::from(i)),
            );
            assert!(th.len() <= 100, "{} clients after {i}", th.len());
        }
        // A tenth is evicted at a time, the least recently seen: what is
        // left is the newest.
        let left = th.len() as u32;
        assert!((90..=100).contains(&left), "{left}");
        for i in n - left..n {
            assert!(th.clients.contains_key(&addr(0x0a00_0000, i)), "{i}");
        }
        // After the window every entry has expired: a full table drops
        // those first, and the new clients all stay.
        let later = t0 + ms(20_000);
        for i in 0..10 {
            th.failure(addr(0x0b00_0000, i), later);
        }
        assert_eq!(th.len(), 10);
        // Checking unknown clients adds nothing.
        for i in 0..1000 {
            assert_eq!(th.check(addr(0x0c00_0000, i), later), Verdict::Go);
        }
        assert_eq!(th.len(), 10);
    }
}
