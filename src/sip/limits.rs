//! Per-source rate limits with temporary bans, sans-IO (time is an argument).
//!
//! Why: a SIP listener is open to anyone who can reach it; one source flooding requests
//! (a scanner, a toll-fraud dialler, a broken PBX in a retransmission loop) must not take
//! the signalling core from everyone else. Every message (every datagram, every stream
//! frame, every new connection) from an IP costs one token of that IP's bucket, refilled
//! at `rate` per second up to `burst`. A source that finds its bucket empty is banned for
//! `ban`, doubled on every repeat within [`OFFENCE_MEMORY`] (at most 64 times); while
//! banned, everything it sends is dropped before parsing and its connections are refused.
//!
//! The table is bounded ([`RateLimiter::new`]'s `max_sources`): when it is full, sources
//! that are idle (full bucket, not banned, no offence to remember) are forgotten; if none
//! can be, new sources share one overflow bucket, so an attack from very many addresses
//! is still limited as a whole and memory stays fixed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long an offence counts towards a longer next ban.
pub const OFFENCE_MEMORY: Duration = Duration::from_secs(3600);
/// The longest ban is the first one times this.
const MAX_BAN_FACTOR: u32 = 64;

/// What to do with a message from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Process it.
    Allow,
    /// Drop it: the source is banned; `newly` when this message started the ban.
    Banned {
        /// This message emptied the bucket and started the ban.
        newly: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct Source {
    tokens: f64,
    last: Instant,
    banned_until: Option<Instant>,
    offences: u32,
    last_offence: Option<Instant>,
}

impl Source {
    fn new(burst: f64, now: Instant) -> Self {
        Source {
            tokens: burst,
            last: now,
            banned_until: None,
            offences: 0,
            last_offence: None,
        }
    }

    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.last = self.last.max(now);
    }

    fn is_banned(&self, now: Instant) -> bool {
        self.banned_until.is_some_and(|t| now < t)
    }

    /// Idle: nothing would change if it were forgotten now.
    fn is_idle(&self, rate: f64, burst: f64, now: Instant) -> bool {
        let mut s = *self;
        s.refill(rate, burst, now);
        s.tokens >= burst
            && !s.is_banned(now)
            && s.last_offence
                .is_none_or(|t| now.saturating_duration_since(t) >= OFFENCE_MEMORY)
    }

    fn take(&mut self, limits: &Limits, now: Instant) -> Verdict {
        if self.is_banned(now) {
            return Verdict::Banned { newly: false };
        }
        self.refill(limits.rate, limits.burst, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        let remembered = self
            .last_offence
            .is_some_and(|t| now.saturating_duration_since(t) < OFFENCE_MEMORY);
        self.offences = if remembered {
            self.offences.saturating_add(1)
        } else {
            1
        };
        self.last_offence = Some(now);
        let factor = 1u32 << (self.offences - 1).min(MAX_BAN_FACTOR.trailing_zeros());
        // Bans are at most days long, so the sum fits any platform's `Instant`.
        let until = now
            .checked_add(limits.ban.saturating_mul(factor))
            .unwrap_or(now);
        self.banned_until = Some(until);
        // Refilling starts from the end of the ban.
        self.tokens = 0.0;
        self.last = until;
        Verdict::Banned { newly: true }
    }
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    rate: f64,
    burst: f64,
    ban: Duration,
}

/// Token buckets and bans per source IP (see the module docs).
#[derive(Debug)]
pub struct RateLimiter {
    limits: Limits,
    max_sources: usize,
    sources: HashMap<IpAddr, Source>,
    overflow: Option<Source>,
}

impl RateLimiter {
    /// `rate` tokens per second (0: no limit), `burst` bucket size, first `ban`, at most
    /// `max_sources` remembered.
    pub fn new(rate: u32, burst: u32, ban: Duration, max_sources: usize) -> Self {
        RateLimiter {
            limits: Limits {
                rate: f64::from(rate),
                burst: f64::from(burst.max(1)),
                ban,
            },
            max_sources: max_sources.max(1),
            sources: HashMap::new(),
            overflow: None,
        }
    }

    fn enabled(&self) -> bool {
        self.limits.rate > 0.0
    }

    /// Charges one message from `ip` at `now`.
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Verdict {
        if !self.enabled() {
            return Verdict::Allow;
        }
        let limits = self.limits;
        if let Some(s) = self.sources.get_mut(&ip) {
            return s.take(&limits, now);
        }
        if self.sources.len() >= self.max_sources {
            self.sources
                .retain(|_, s| !s.is_idle(limits.rate, limits.burst, now));
        }
        if self.sources.len() >= self.max_sources {
            return self
                .overflow
                .get_or_insert_with(|| Source::new(limits.burst, now))
                .take(&limits, now);
        }
        self.sources
            .entry(ip)
            .or_insert_with(|| Source::new(limits.burst, now))
            .take(&limits, now)
    }

    /// Whether `ip` is banned now (without charging it).
    #[cfg(test)]
    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        match self.sources.get(&ip) {
            Some(s) => s.is_banned(now),
            None => {
                self.sources.len() >= self.max_sources
                    && self.overflow.is_some_and(|s| s.is_banned(now))
            }
        }
    }

    /// Sources banned now (the overflow bucket counts as one).
    pub fn banned(&self, now: Instant) -> usize {
        self.sources.values().filter(|s| s.is_banned(now)).count()
            + usize::from(self.overflow.is_some_and(|s| s.is_banned(now)))
    }

    /// Sources remembered.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only differences between instants matter here; any start will do.
    #[allow(clippy::disallowed_methods)]
    fn start() -> Instant {
        Instant::now()
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn a_burst_passes_and_the_next_message_starts_a_ban_that_ends() {
        let t0 = start();
        let mut r = RateLimiter::new(10, 5, Duration::from_secs(2), 100);
        for _ in 0..5 {
            assert_eq!(r.check(ip(1), t0), Verdict::Allow);
        }
        assert_eq!(r.check(ip(1), t0), Verdict::Banned { newly: true });
        assert_eq!(r.check(ip(1), t0), Verdict::Banned { newly: false });
        assert!(r.is_banned(ip(1), t0 + Duration::from_millis(1999)));
        assert_eq!(r.banned(t0), 1);
        // Another source is not affected.
        assert_eq!(r.check(ip(2), t0), Verdict::Allow);
        // After the ban the bucket refills at the rate, from the ban's end.
        let after = t0 + Duration::from_secs(2);
        assert!(!r.is_banned(ip(1), after));
        assert_eq!(
            r.check(ip(1), after + Duration::from_millis(100)),
            Verdict::Allow
        );
    }

    #[test]
    fn the_average_rate_is_never_banned() {
        let t0 = start();
        let mut r = RateLimiter::new(10, 2, Duration::from_secs(2), 100);
        for i in 0..1000u64 {
            let t = t0 + Duration::from_millis(100 * i);
            assert_eq!(r.check(ip(1), t), Verdict::Allow, "message {i}");
        }
    }

    #[test]
    fn a_repeat_offender_is_banned_twice_as_long_up_to_a_cap() {
        let t0 = start();
        let ban = Duration::from_secs(1);
        let mut r = RateLimiter::new(1, 1, ban, 100);
        let mut t = t0;
        let mut lengths = Vec::new();
        for _ in 0..9 {
            assert_eq!(r.check(ip(1), t), Verdict::Allow);
            assert_eq!(r.check(ip(1), t), Verdict::Banned { newly: true });
            let start = t;
            while r.is_banned(ip(1), t) {
                t += Duration::from_millis(250);
            }
            lengths.push((t - start).as_secs());
            // Refill one token.
            t += Duration::from_secs(1);
        }
        assert_eq!(lengths, [1, 2, 4, 8, 16, 32, 64, 64, 64]);
        // An hour of good behaviour and the next ban is short again.
        t += OFFENCE_MEMORY;
        assert_eq!(r.check(ip(1), t), Verdict::Allow);
        assert_eq!(r.check(ip(1), t), Verdict::Banned { newly: true });
        assert!(!r.is_banned(ip(1), t + ban));
    }

    #[test]
    fn a_full_table_forgets_idle_sources_and_else_shares_one_bucket() {
        let t0 = start();
        let mut r = RateLimiter::new(10, 2, Duration::from_secs(60), 4);
        for i in 0..4 {
            assert_eq!(r.check(ip(i), t0), Verdict::Allow);
        }
        // A second later the four are idle again: a fifth source takes a fresh entry.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(r.check(ip(10), t1), Verdict::Allow);
        assert!(r.len() <= 4);
        // Four sources banned: nothing can be forgotten, newcomers share the overflow.
        let mut r = RateLimiter::new(10, 1, Duration::from_secs(60), 4);
        for i in 0..4 {
            r.check(ip(i), t0);
            assert_eq!(r.check(ip(i), t0), Verdict::Banned { newly: true });
        }
        assert_eq!(r.check(ip(20), t0), Verdict::Allow);
        assert_eq!(r.check(ip(21), t0), Verdict::Banned { newly: true });
        assert!(r.is_banned(ip(22), t0));
        assert_eq!(r.len(), 4);
        assert_eq!(r.banned(t0), 5);
    }

    #[test]
    fn a_zero_rate_turns_the_limit_off() {
        let t0 = start();
        let mut r = RateLimiter::new(0, 1, Duration::from_secs(60), 4);
        for _ in 0..10_000 {
            assert_eq!(r.check(ip(1), t0), Verdict::Allow);
        }
        assert_eq!(r.len(), 0);
    }
}
