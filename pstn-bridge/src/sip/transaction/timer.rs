//! The transaction timers (RFC 3261 §17 table 4, RFC 6026 §8.4) as one closed enum, their
//! durations from T1/T2/T4, and the deadline queue the layer drains.
//!
//! The queue is a binary heap with lazy deletion: arming a timer pushes `(deadline,
//! transaction, timer)`; cancelling one only clears the transaction's slot. An entry is
//! live when its transaction still holds exactly that `(timer, deadline)` in a slot;
//! dead entries are dropped when they reach the top, and the heap is rebuilt from the
//! live ones when dead ones outnumber them, so its size stays proportional to the armed
//! timers however many transactions end early.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use super::TransactionId;

/// A transaction timer. Each transaction holds at most one retransmission timer (A, E,
/// G, [`Timer::Resend2xx`]) and one lifetime timer (the others) at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// INVITE client, Calling: retransmit the INVITE (T1, doubling; unreliable only).
    A,
    /// INVITE client, Calling: give up (64·T1); the TU gets a 408.
    B,
    /// INVITE client, Completed: absorb final-response retransmissions (32 s; 0 on
    /// reliable transports).
    D,
    /// Non-INVITE client: retransmit the request (T1 doubling to T2; T2 in Proceeding;
    /// unreliable only).
    E,
    /// Non-INVITE client: give up (64·T1); the TU gets a 408.
    F,
    /// INVITE server, Completed: retransmit the non-2xx final response (T1 doubling to
    /// T2; unreliable only).
    G,
    /// INVITE server, Completed: give up waiting for the ACK (64·T1).
    H,
    /// INVITE server, Confirmed: absorb ACK retransmissions (T4; 0 on reliable).
    I,
    /// Non-INVITE server, Completed: absorb request retransmissions (64·T1; 0 on
    /// reliable).
    J,
    /// Non-INVITE client, Completed: absorb response retransmissions (T4; 0 on reliable).
    K,
    /// INVITE server, Accepted (RFC 6026): absorb INVITE retransmissions and pass ACKs
    /// (64·T1).
    L,
    /// INVITE client, Accepted (RFC 6026): pass 2xx retransmissions and forks to the TU
    /// (64·T1).
    M,
    /// INVITE server, Accepted: the UAS core's 2xx retransmission until the ACK comes
    /// (RFC 3261 §13.3.1.4: T1 doubling to T2; unreliable only). Not in the RFC's timer
    /// table, which leaves it to the core; kept here because this layer owns the
    /// transmit queue and the clock.
    Resend2xx,
}

impl Timer {
    /// True for the retransmission timers (A, E, G, Resend2xx); the rest end a state.
    pub fn is_retransmission(self) -> bool {
        matches!(self, Timer::A | Timer::E | Timer::G | Timer::Resend2xx)
    }
}

/// The base intervals the timers derive from. Defaults are RFC 3261's: T1 500 ms, T2 4 s,
/// T4 5 s, Timer D 32 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate; retransmissions start at T1 and transactions give up after 64·T1.
    pub t1: Duration,
    /// Cap on the retransmission interval of non-INVITE requests and INVITE responses.
    pub t2: Duration,
    /// Maximum time a message stays in the network.
    pub t4: Duration,
    /// Timer D on unreliable transports (RFC 3261: at least 32 s).
    pub timer_d: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            timer_d: Duration::from_secs(32),
        }
    }
}

impl TimerConfig {
    /// The same values made safe to run: T1 at least 1 ms (a zero T1 would retransmit in
    /// a loop), T2 at least T1.
    pub(crate) fn sanitized(self) -> Self {
        let t1 = self.t1.max(Duration::from_millis(1));
        Self {
            t1,
            t2: self.t2.max(t1),
            ..self
        }
    }

    /// 64·T1: Timers B, F, H, J (unreliable), L, M.
    pub fn transaction_timeout(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// The initial duration of `timer` on a reliable or unreliable transport: `None` when
    /// the timer is not used there, `Some(ZERO)` when it fires at once (the transaction
    /// then moves on without arming it).
    pub fn initial(&self, timer: Timer, reliable: bool) -> Option<Duration> {
        let zero_if_reliable = |d: Duration| Some(if reliable { Duration::ZERO } else { d });
        match timer {
            Timer::A | Timer::E | Timer::G | Timer::Resend2xx => (!reliable).then_some(self.t1),
            Timer::B | Timer::F | Timer::H | Timer::L | Timer::M => {
                Some(self.transaction_timeout())
            }
            Timer::D => zero_if_reliable(self.timer_d),
            Timer::I | Timer::K => zero_if_reliable(self.t4),
            Timer::J => zero_if_reliable(self.transaction_timeout()),
        }
    }
}

/// One armed timer as the heap stores it.
type Entry = Reverse<(Instant, TransactionId, Timer)>;

/// The deadline heap; see the module documentation.
#[derive(Debug, Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Entry>,
}

impl TimerQueue {
    pub(crate) fn push(&mut self, at: Instant, id: TransactionId, timer: Timer) {
        self.heap.push(Reverse((at, id, timer)));
    }

    /// The earliest entry, live or not.
    pub(crate) fn peek(&self) -> Option<(Instant, TransactionId, Timer)> {
        self.heap.peek().map(|Reverse(e)| *e)
    }

    pub(crate) fn pop(&mut self) {
        self.heap.pop();
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Rebuilds the heap from the entries `live` keeps, when dead entries outnumber the
    /// `armed` live ones by enough to matter.
    pub(crate) fn compact_if_sparse(
        &mut self,
        armed: usize,
        live: impl Fn(Instant, TransactionId, Timer) -> bool,
    ) {
        if self.heap.len() <= 2 * armed + 1024 {
            return;
        }
        let entries = std::mem::take(&mut self.heap).into_vec();
        self.heap = entries
            .into_iter()
            .filter(|Reverse((at, id, t))| live(*at, *id, *t))
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reliable_transports_drop_retransmission_timers_and_zero_the_wait_states() {
        let c = TimerConfig::default();
        for t in [Timer::A, Timer::E, Timer::G, Timer::Resend2xx] {
            assert_eq!(c.initial(t, true), None);
            assert_eq!(c.initial(t, false), Some(c.t1));
        }
        for t in [Timer::D, Timer::I, Timer::J, Timer::K] {
            assert_eq!(c.initial(t, true), Some(Duration::ZERO));
        }
        assert_eq!(c.initial(Timer::D, false), Some(Duration::from_secs(32)));
        assert_eq!(c.initial(Timer::J, false), Some(Duration::from_secs(32)));
        assert_eq!(c.initial(Timer::K, false), Some(Duration::from_secs(5)));
        assert_eq!(c.initial(Timer::B, true), Some(Duration::from_secs(32)));
    }

    #[test]
    fn a_zero_t1_is_raised_so_retransmissions_cannot_spin() {
        let c = TimerConfig {
            t1: Duration::ZERO,
            t2: Duration::ZERO,
            ..TimerConfig::default()
        }
        .sanitized();
        assert_eq!(c.t1, Duration::from_millis(1));
        assert_eq!(c.t2, Duration::from_millis(1));
        let huge = TimerConfig {
            t1: Duration::MAX,
            ..TimerConfig::default()
        };
        assert_eq!(huge.transaction_timeout(), Duration::MAX);
    }
}
