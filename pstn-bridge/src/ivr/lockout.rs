//! Lock-out of callers who keep entering wrong PINs, across calls.
//!
//! Three tries per call do not stop a caller who simply calls again. [`Lockouts`] counts
//! failed PIN entries per caller identity ([`CallerKey`]: the calling number, or the source
//! address for trunks that do not send a trustworthy one; the binary chooses). A caller with
//! [`LockoutConfig::max_failures`] failures within [`LockoutConfig::window`] is locked out
//! for [`LockoutConfig::cooldown`]: the IVR refuses it at once, and a locked-out caller's
//! PIN is never checked (a correct PIN during the lock-out is refused too, so guessing on
//! during a lock-out teaches nothing). When the cool-down ends the count starts afresh.
//!
//! A correct PIN does *not* clear earlier failures: otherwise someone who knows the PIN of
//! one conference could interleave it with guesses at others and never be locked out.
//!
//! One `Lockouts` is owned by the binary and shared by all calls (one thread, `&mut`); the
//! [`Ivr`](super::Ivr) consults and updates it at the points where it matters, so a call
//! cannot forget to record a failure. Parallel calls from one caller share the count, and a
//! call whose caller got locked out by another call is refused at its next PIN result.
//!
//! Memory is bounded: at most [`LockoutConfig::capacity`] identities are tracked. When a new
//! identity arrives at capacity, entries with nothing left to remember are purged; if none
//! is, the entry whose last failure is oldest and which is not locked out is evicted (only
//! if every entry is locked out, the one whose lock-out ends first). A flood of fresh
//! identities thus cannot release a current lock-out before it evicts every idle entry.
//! Caller identities are easy to forge (calling numbers most of all), so this is a brake
//! on guessing, not an authentication: toll-fraud rate limits live in the policy layer.
//!
//! Time is injected; nothing reads the clock.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::digits::Redacted;

/// Who is calling, as far as lock-out is concerned. `Debug` hides the value (phone numbers
/// and addresses are personal data).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CallerKey {
    /// The calling number (normalised by the binary, e.g. E.164).
    Number(String),
    /// The source address of the signalling.
    Address(IpAddr),
}

impl std::fmt::Debug for CallerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallerKey::Number(_) => f.debug_tuple("Number").field(&Redacted).finish(),
            CallerKey::Address(_) => f.debug_tuple("Address").field(&Redacted).finish(),
        }
    }
}

/// Lock-out limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutConfig {
    /// Failures within `window` that lock a caller out (default 5).
    pub max_failures: u32,
    /// The window failures are counted in (default 10 minutes).
    pub window: Duration,
    /// How long a lock-out lasts (default 15 minutes).
    pub cooldown: Duration,
    /// Identities tracked at most (default 10 000).
    pub capacity: usize,
}

impl Default for LockoutConfig {
    fn default() -> Self {
        Self {
            max_failures: 5,
            window: Duration::from_secs(10 * 60),
            cooldown: Duration::from_secs(15 * 60),
            capacity: 10_000,
        }
    }
}

/// The longest window or cool-down accepted.
pub const MAX_LOCKOUT_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);

/// A [`LockoutConfig`] value out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LockoutConfigError {
    /// `max_failures` must be 1 to 1000.
    #[error("max_failures must be 1 to 1000")]
    MaxFailures,
    /// `window` and `cooldown` must be non-zero and at most 30 days.
    #[error("window and cooldown must be between 1 ns and 30 days")]
    Duration,
    /// `capacity` must be at least 1.
    #[error("capacity must be at least 1")]
    Capacity,
}

/// Whether a caller may try a PIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockoutStatus {
    /// Not locked out.
    Allowed,
    /// Locked out until the given time.
    LockedOut {
        /// When the lock-out ends.
        until: Instant,
    },
}

impl LockoutStatus {
    /// True when locked out.
    pub fn is_locked_out(self) -> bool {
        matches!(self, LockoutStatus::LockedOut { .. })
    }
}

/// Counters of a [`Lockouts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LockoutStats {
    /// Failures recorded.
    pub failures: u64,
    /// Lock-outs imposed.
    pub lockouts: u64,
    /// Entries evicted at capacity (not purged as expired).
    pub evicted: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    /// Failures inside the window, oldest first (at most `max_failures`).
    failures: VecDeque<Instant>,
    locked_until: Option<Instant>,
}

impl Entry {
    fn locked_at(&self, now: Instant) -> Option<Instant> {
        self.locked_until.filter(|&until| now < until)
    }

    fn last_failure(&self) -> Option<Instant> {
        self.failures.back().copied()
    }
}

/// Failed PIN entries per caller, across calls (see the module docs).
#[derive(Debug, Clone)]
pub struct Lockouts {
    config: LockoutConfig,
    entries: HashMap<CallerKey, Entry>,
    stats: LockoutStats,
}

impl Lockouts {
    /// An empty table.
    pub fn new(config: LockoutConfig) -> Result<Self, LockoutConfigError> {
        if !(1..=1000).contains(&config.max_failures) {
            return Err(LockoutConfigError::MaxFailures);
        }
        for d in [config.window, config.cooldown] {
            if d.is_zero() || d > MAX_LOCKOUT_DURATION {
                return Err(LockoutConfigError::Duration);
            }
        }
        if config.capacity == 0 {
            return Err(LockoutConfigError::Capacity);
        }
        Ok(Self {
            config,
            entries: HashMap::new(),
            stats: LockoutStats::default(),
        })
    }

    /// The limits.
    pub fn config(&self) -> LockoutConfig {
        self.config
    }

    /// Identities tracked now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Counters.
    pub fn stats(&self) -> LockoutStats {
        self.stats
    }

    /// Whether `caller` may try a PIN at `now`.
    pub fn status(&self, caller: &CallerKey, now: Instant) -> LockoutStatus {
        match self.entries.get(caller).and_then(|e| e.locked_at(now)) {
            Some(until) => LockoutStatus::LockedOut { until },
            None => LockoutStatus::Allowed,
        }
    }

    /// Failures of `caller` inside the window at `now` (0 while locked out).
    pub fn failures(&self, caller: &CallerKey, now: Instant) -> u32 {
        self.entries.get(caller).map_or(0, |e| {
            e.failures
                .iter()
                .filter(|&&t| now.saturating_duration_since(t) < self.config.window)
                .count() as u32
        })
    }

    /// Records a failed PIN entry of `caller` at `now`; returns the caller's status after
    /// it. A failure during a lock-out does not extend it.
    pub fn record_failure(&mut self, caller: &CallerKey, now: Instant) -> LockoutStatus {
        self.stats.failures += 1;
        if !self.entries.contains_key(caller) && self.entries.len() >= self.config.capacity {
            self.make_room(now);
        }
        let config = self.config;
        let entry = self.entries.entry(caller.clone()).or_insert_with(|| Entry {
            failures: VecDeque::with_capacity(config.max_failures as usize),
            locked_until: None,
        });
        if let Some(until) = entry.locked_at(now) {
            return LockoutStatus::LockedOut { until };
        }
        entry.locked_until = None;
        while entry
            .failures
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= config.window)
        {
            entry.failures.pop_front();
        }
        entry.failures.push_back(now);
        if entry.failures.len() >= config.max_failures as usize {
            entry.failures.clear();
            // Cannot overflow: the cool-down is at most 30 days (checked in `new`); if the
            // platform's Instant could not hold it, the lock-out starts now and lasts one
            // window check, which still refuses this call.
            let until = now.checked_add(config.cooldown).unwrap_or(now);
            entry.locked_until = Some(until);
            self.stats.lockouts += 1;
            return LockoutStatus::LockedOut { until };
        }
        LockoutStatus::Allowed
    }

    /// Forgets entries that neither are locked out nor hold a failure inside the window.
    pub fn purge(&mut self, now: Instant) {
        let window = self.config.window;
        self.entries.retain(|_, e| {
            e.locked_at(now).is_some()
                || e.last_failure()
                    .is_some_and(|t| now.saturating_duration_since(t) < window)
        });
    }

    /// Frees one slot at capacity (see the module docs).
    fn make_room(&mut self, now: Instant) {
        self.purge(now);
        if self.entries.len() < self.config.capacity {
            return;
        }
        // The oldest idle entry; failing that, the lock-out that ends first. Ties are broken
        // by the key, so the choice does not depend on the map's hash order.
        let victim = self
            .entries
            .iter()
            .filter(|(_, e)| e.locked_at(now).is_none())
            .min_by(|a, b| (a.1.last_failure(), a.0).cmp(&(b.1.last_failure(), b.0)))
            .or_else(|| {
                self.entries
                    .iter()
                    .min_by(|a, b| (a.1.locked_until, a.0).cmp(&(b.1.locked_until, b.0)))
            })
            .map(|(k, _)| k.clone());
        if let Some(k) = victim {
            self.entries.remove(&k);
            self.stats.evicted += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u32) -> CallerKey {
        CallerKey::Number(format!("+1555000{n:04}"))
    }

    #[allow(clippy::disallowed_methods)] // the one real Instant of the test; time is virtual
    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let mut l = Lockouts::new(LockoutConfig::default()).unwrap();
        let t = t0();
        for i in 0..4 {
            assert_eq!(
                l.record_failure(&key(1), t + Duration::from_secs(i)),
                LockoutStatus::Allowed
            );
        }
        // Eleven minutes later the first four have left the window.
        let later = t + Duration::from_secs(11 * 60);
        assert_eq!(l.record_failure(&key(1), later), LockoutStatus::Allowed);
        assert_eq!(l.failures(&key(1), later), 1);
    }

    #[test]
    fn a_flood_of_new_callers_evicts_idle_entries_before_lockouts() {
        let config = LockoutConfig {
            capacity: 3,
            max_failures: 1,
            ..LockoutConfig::default()
        };
        let mut l = Lockouts::new(config).unwrap();
        let t = t0();
        // key 1 is locked out (one failure suffices here).
        assert!(l.record_failure(&key(1), t).is_locked_out());
        // Two more locked callers fill the table; the next one must evict the lock-out
        // that ends first, never leaving the table over capacity.
        assert!(
            l.record_failure(&key(2), t + Duration::from_secs(1))
                .is_locked_out()
        );
        assert!(
            l.record_failure(&key(3), t + Duration::from_secs(2))
                .is_locked_out()
        );
        assert!(
            l.record_failure(&key(4), t + Duration::from_secs(3))
                .is_locked_out()
        );
        assert_eq!(l.len(), 3);
        assert_eq!(
            l.status(&key(1), t + Duration::from_secs(4)),
            LockoutStatus::Allowed
        );
        assert!(
            l.status(&key(2), t + Duration::from_secs(4))
                .is_locked_out()
        );
        assert_eq!(l.stats().evicted, 1);
    }

    #[test]
    fn an_idle_entry_is_evicted_rather_than_a_lockout() {
        let config = LockoutConfig {
            capacity: 2,
            max_failures: 2,
            ..LockoutConfig::default()
        };
        let mut l = Lockouts::new(config).unwrap();
        let t = t0();
        l.record_failure(&key(1), t);
        assert!(l.record_failure(&key(1), t).is_locked_out());
        l.record_failure(&key(2), t + Duration::from_secs(1)); // one failure, not locked
        l.record_failure(&key(3), t + Duration::from_secs(2));
        assert!(
            l.status(&key(1), t + Duration::from_secs(3))
                .is_locked_out()
        );
        assert_eq!(l.failures(&key(2), t + Duration::from_secs(3)), 0);
        assert_eq!(l.failures(&key(3), t + Duration::from_secs(3)), 1);
    }

    #[test]
    fn bad_configs_are_refused() {
        let bad = |c: LockoutConfig| Lockouts::new(c).unwrap_err();
        let d = LockoutConfig::default();
        assert_eq!(
            bad(LockoutConfig {
                max_failures: 0,
                ..d
            }),
            LockoutConfigError::MaxFailures
        );
        assert_eq!(
            bad(LockoutConfig {
                cooldown: Duration::MAX,
                ..d
            }),
            LockoutConfigError::Duration
        );
        assert_eq!(
            bad(LockoutConfig { capacity: 0, ..d }),
            LockoutConfigError::Capacity
        );
    }

    #[test]
    fn debug_output_hides_the_caller() {
        let mut l = Lockouts::new(LockoutConfig::default()).unwrap();
        l.record_failure(&key(42), t0());
        let s = format!("{l:?}");
        assert!(!s.contains("+1555"), "{s}");
    }
}
