//! A seeded, sans-IO simulated network: the link every jitter-buffer, leg and conference test
//! (and `confer bench jitter`) runs on.
//!
//! # Why
//!
//! Real networks delay, jitter, lose, burst, reorder, duplicate, throttle, freeze, and the
//! two ends' clocks drift apart. The media cores must be tested against all of that, a minute
//! of it in milliseconds, and the same way every run. This module is that network: a
//! one-direction link ([`NetSim`]) that never reads the clock and draws every random decision
//! from a seeded ChaCha8 generator; a harness ([`Scenario`]) that drives a packet source and a
//! receiver on virtual time; and CSV traces ([`Trace`]) to capture a run or replay a recording
//! of a real network.
//!
//! # Drive contract
//!
//! - [`NetSim::send`]`(payload, size, now)` offers a packet at `now` on the **sender's** clock.
//!   Send times must not go backwards (an earlier `now` is treated as the latest one seen).
//! - [`NetSim::next_event`] is the earliest pending arrival, on the **receiver's** clock.
//! - [`NetSim::poll_deliver`]`(now)` takes `now` on the receiver's clock; call it until it
//!   returns `None` to get every packet whose arrival is `<= now`, in arrival order (equal
//!   arrival times keep send order).
//! - With zero drift both clocks are the same `Instant`s; [`NetSim::to_receiver_clock`] maps
//!   one to the other. Both clocks read `start` at the start.
//!
//! # The packet's path
//!
//! Each packet crosses, in this order (all times on the sender's timeline until the last step):
//!
//! 1. **Schedule.** Every [`LinkChange`] whose offset is `<=` the send time is applied first:
//!    a packet travels with the parameters in force when it was sent.
//! 2. **Bottleneck** (only with [`LinkConfig::rate`]): a FIFO queue drained at `bits_per_second`
//!    (`size_bytes * 8 / rate` per packet). A packet that does not fit the queue limit
//!    (packets or bytes waiting or in transmission) is tail-dropped (`lost_queue`). Queueing
//!    delay is not configured: it emerges from the backlog. `size_bytes` is whatever the link
//!    carries: add 40 bytes of IPv4/UDP/RTP headers for realistic rates.
//! 3. **Path loss**: the Gilbert-Elliott chain (`lost_burst`) then Bernoulli loss
//!    (`lost_random`). A packet lost on the path has used the bottleneck (like a radio loss).
//! 4. **Delay**: `departure + latency + spike + jitter`, where jitter is non-negative (the base
//!    latency is the floor: queueing only adds). **FIFO rule:** a packet never overtakes the
//!    previous in-order packet: `arrival = max(own, previous in-order arrival)`. So jitter
//!    never reorders; a large jitter sample holds the packets behind it, which then arrive
//!    together (the burst after a Wi-Fi delay spike). The measured mean delay is therefore a
//!    little above `latency + E[jitter]` when jitter is large relative to the packet spacing.
//! 5. **Reorder** (separate from jitter): with `reorder.probability` a packet gets
//!    `reorder.delay` more and steps out of the FIFO chain, so packets sent after it can
//!    arrive first (with 20 ms spacing, 50 ms displaces it by about two packets).
//! 6. **Duplication**: with `duplicate.probability` a delivered packet is delivered a second
//!    time, `duplicate.delay` after the original (`Delivery::duplicate` is set on the copy).
//! 7. **Freeze** ([`LinkChange::Freeze`]): the receiving side stops for a while; every packet
//!    whose arrival falls in `[at, at + duration)` is released at `at + duration`, all at once,
//!    in order (a 5 s freeze of a 20 ms stream is a burst of 250 packets).
//! 8. **Receiver clock**: `receiver_time = start + (t - start) * (1 + drift_ppm / 1e6)`.
//!    `+25 ms/s` is `25_000` ppm: 20 ms sends arrive 20.5 ms apart on the receiver's clock.
//!
//! # Jitter model
//!
//! One sample per packet, in [`Jitter`]: a half-normal body `|N(0, std_dev)|` (mean
//! `0.798 std_dev`), plus, with probability `tail_probability`, a Pareto excursion of scale
//! `x_m = tail_scale` and shape `alpha = tail_shape` (`P(X > x) = (x_m / x)^alpha`, mean
//! `alpha x_m / (alpha - 1)` for `alpha > 1`; `alpha <= 2` has infinite variance: the heavy
//! tail of cellular and congested links). The sum is capped at `max` (default 10 s). Delay
//! spikes are the tail's excursions; scheduled spikes and steps are [`LinkChange`]s.
//!
//! # Gilbert-Elliott loss
//!
//! A two-state Markov chain stepped once per packet: in Good the packet is lost with
//! probability `loss_good` (`1 - k` in the literature), in Bad with `loss_bad` (`1 - h`); after
//! the loss decision the chain moves Good -> Bad with probability `p` and Bad -> Good with `r`.
//! Stationary share of Bad `pi_B = p / (p + r)`; loss rate `pi_G (1 - k) + pi_B (1 - h)`; a
//! Bad run lasts `1 / r` packets on average. The simple Gilbert model (`k = 1`, `h = 0`,
//! [`GilbertElliott::gilbert`]) has loss rate `p / (p + r)` and mean burst length `1 / r`.
//!
//! # Presets
//!
//! The configured numbers, then the two columns the test
//! `a_preset_measures_within_its_documented_delay_and_loss` checks: over 10 minutes of 20 ms
//! packets of 200 bytes (seeds 1 to 3), the mean one-way delay and the loss rate fall in
//! these ranges (set from 12 seeds, with a margin).
//!
//! | preset | latency | jitter body (sigma) | jitter tail (share, Pareto x_m / alpha, cap) | random loss | Gilbert-Elliott (p, r, 1-k, 1-h) | reorder | duplicate | rate / queue | mean delay | loss |
//! |---|---|---|---|---|---|---|---|---|---|---|
//! | `lan` | 0.5 ms | 0.2 ms | none | 0 | none | 0 | 0 | none | 0.6-0.7 ms | 0 |
//! | `wifi` | 4 ms | 3 ms | 1 %, 50 ms / 2.0, 150 ms (50-150 ms spikes) | 0.5 % | none | 0 | 0 | none | 8-10 ms | 0.35-0.65 % |
//! | `cellular` | 35 ms | 8 ms | 2 %, 30 ms / 1.5, 500 ms | 0 | 0.008, 0.25, 0.001, 0.6 (bursts of 4 packets) | 0.1 %, +40 ms | 0 | none | 46-51 ms | 1.6-2.4 % |
//! | `congested` | 30 ms | 15 ms | 5 %, 40 ms / 2.5, 300 ms | 1 % | 0.01, 0.5, 0, 0.5 | 0.5 %, +30 ms | 0.1 % | 1 Mbit/s, 64 KB | 50-56 ms | 1.7-2.3 % |
//! | `satellite` | 280 ms (GEO) | 4 ms | 0.5 %, 20 ms / 2.0, 200 ms | 0.5 % | none | 0 | 0 | 2 Mbit/s, 128 KB | 283-286 ms | 0.35-0.65 % |
//!
//! # Determinism
//!
//! Nothing reads the clock (time is always an argument) and nothing iterates a hash map.
//! Every impairment draws from its own ChaCha8 stream of the seed (loss, jitter, reorder,
//! duplication), and draws the same count of numbers for every packet whether or not it is
//! enabled: turning duplication on does not change which packets are lost or how they are
//! delayed. Equal arrival times are delivered in send order; in a [`Scenario`], events at
//! the same instant come as send, arrival, tick, timeout.
//!
//! # What it is not
//!
//! No cross traffic (congestion is modelled by its effects: queueing jitter and bursty loss),
//! no MTU or fragmentation, no route flaps beyond what the schedule expresses, and the clock
//! drift is constant for a run.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Longest delay-like duration a [`LinkConfig`] accepts (latency, jitter cap, freeze, ...).
pub const MAX_DELAY: Duration = Duration::from_secs(3600);
/// Cap on one jitter sample when [`Jitter::max`] is `None`.
pub const DEFAULT_JITTER_CAP: Duration = Duration::from_secs(10);
/// Largest clock drift accepted, in ppm (10 %, i.e. 100 ms/s).
pub const MAX_DRIFT_PPM: f64 = 100_000.0;

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// Per-packet jitter: a half-normal body plus an optional Pareto tail (see the module doc).
/// The default is no jitter.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Jitter {
    /// `sigma` of the body: the body sample is `|N(0, sigma)|`.
    pub std_dev: Duration,
    /// Probability per packet of adding a Pareto excursion.
    pub tail_probability: f64,
    /// Pareto scale `x_m`: the smallest excursion.
    pub tail_scale: Duration,
    /// Pareto shape `alpha` (> 0 when the tail is on); smaller is heavier.
    pub tail_shape: f64,
    /// Cap on one sample (body + tail); `None` is [`DEFAULT_JITTER_CAP`].
    pub max: Option<Duration>,
}

impl Jitter {
    /// Half-normal jitter `|N(0, std_dev)|` without a tail.
    pub fn normal(std_dev: Duration) -> Self {
        Self {
            std_dev,
            ..Self::default()
        }
    }

    /// Adds a Pareto tail: with `probability`, an excursion of scale `scale` and shape `shape`;
    /// the whole sample is capped at `max`.
    pub fn with_pareto_tail(
        self,
        probability: f64,
        scale: Duration,
        shape: f64,
        max: Duration,
    ) -> Self {
        Self {
            tail_probability: probability,
            tail_scale: scale,
            tail_shape: shape,
            max: Some(max),
            ..self
        }
    }
}

/// Gilbert-Elliott bursty loss. The literature's `k` and `h` are the probabilities of
/// *delivery* in Good and Bad; here the fields are the loss probabilities `1 - k` and `1 - h`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    /// Probability per packet of moving Good -> Bad.
    pub p: f64,
    /// Probability per packet of moving Bad -> Good.
    pub r: f64,
    /// Loss probability in Good (`1 - k`).
    pub loss_good: f64,
    /// Loss probability in Bad (`1 - h`).
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// The simple Gilbert model: nothing lost in Good, everything lost in Bad.
    pub fn gilbert(p: f64, r: f64) -> Self {
        Self {
            p,
            r,
            loss_good: 0.0,
            loss_bad: 1.0,
        }
    }

    /// The simple Gilbert model with a given loss rate and mean burst length (in packets):
    /// `r = 1 / mean_burst`, `p = loss_rate r / (1 - loss_rate)`. Out-of-range inputs give
    /// parameters that [`NetSim::new`] rejects.
    pub fn from_loss_and_burst(loss_rate: f64, mean_burst: f64) -> Self {
        let r = 1.0 / mean_burst;
        Self::gilbert(loss_rate * r / (1.0 - loss_rate), r)
    }

    /// Long-run share of packets in Bad, `p / (p + r)` (0 when both are 0).
    pub fn stationary_bad(&self) -> f64 {
        let sum = self.p + self.r;
        if sum > 0.0 { self.p / sum } else { 0.0 }
    }

    /// Long-run loss rate, `pi_G (1 - k) + pi_B (1 - h)`.
    pub fn stationary_loss(&self) -> f64 {
        let bad = self.stationary_bad();
        (1.0 - bad) * self.loss_good + bad * self.loss_bad
    }
}

/// Reordering: with `probability`, a packet is held `delay` longer and leaves the FIFO chain.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Reorder {
    pub probability: f64,
    pub delay: Duration,
}

/// Duplication: with `probability`, a delivered packet arrives again `delay` later.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Duplicate {
    pub probability: f64,
    pub delay: Duration,
}

/// How much the bottleneck queue holds (including the packet being transmitted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueLimit {
    Unlimited,
    Packets(usize),
    Bytes(usize),
}

/// A bottleneck: packets leave at `bits_per_second`; the queue before it tail-drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub bits_per_second: u64,
    pub queue: QueueLimit,
}

/// A change of the link at a given offset from the start, in [`LinkConfig::schedule`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LinkChange {
    /// Sets the base latency (a delay step) for packets sent from then on.
    Latency(Duration),
    /// Sets the jitter model.
    Jitter(Jitter),
    /// Sets the Bernoulli loss probability.
    Loss(f64),
    /// Sets or removes Gilbert-Elliott loss (the chain keeps its state).
    GilbertElliott(Option<GilbertElliott>),
    /// Sets reordering.
    Reorder(Reorder),
    /// Sets duplication.
    Duplicate(Duplicate),
    /// Sets or removes the rate limit (packets already queued keep their departure).
    Rate(Option<RateLimit>),
    /// A delay spike: packets sent in `[at, at + duration)` get `extra` more delay.
    Spike { extra: Duration, duration: Duration },
    /// The receiving side freezes: arrivals in `[at, at + duration)` are released at its end.
    Freeze(Duration),
}

/// Everything a one-direction link does to packets. All impairments default to off.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LinkConfig {
    /// Base one-way latency (the floor of the delay).
    pub latency: Duration,
    pub jitter: Jitter,
    /// Bernoulli loss probability per packet.
    pub loss: f64,
    pub gilbert_elliott: Option<GilbertElliott>,
    pub reorder: Reorder,
    pub duplicate: Duplicate,
    pub rate: Option<RateLimit>,
    /// Receiver clock rate relative to the sender, in ppm (1 ms/s = 1000 ppm; positive: the
    /// receiver's clock runs fast). Constant for the run.
    pub clock_drift_ppm: f64,
    /// Changes at offsets from the start (applied in offset order; equal offsets in list order).
    pub schedule: Vec<(Duration, LinkChange)>,
}

/// The named presets, in the module doc's table order.
/// A named preset and its builder.
pub type Preset = (&'static str, fn() -> LinkConfig);

const PRESETS: &[Preset] = &[
    ("lan", LinkConfig::lan),
    ("wifi", LinkConfig::wifi),
    ("cellular", LinkConfig::cellular),
    ("congested", LinkConfig::congested),
    ("satellite", LinkConfig::satellite),
];

/// The named presets (`lan`, `wifi`, `cellular`, `congested`, `satellite`) and their builders.
pub fn presets() -> &'static [Preset] {
    PRESETS
}

impl LinkConfig {
    /// A perfect link: no delay, no loss.
    pub fn ideal() -> Self {
        Self::default()
    }

    /// Wired LAN: 0.5 ms, tiny jitter, no loss.
    pub fn lan() -> Self {
        Self {
            latency: Duration::from_micros(500),
            jitter: Jitter::normal(Duration::from_micros(200)),
            ..Self::default()
        }
    }

    /// Home/office Wi-Fi: a few ms, with occasional 50-150 ms spikes (retries, scans) and
    /// light random loss.
    pub fn wifi() -> Self {
        Self {
            latency: Duration::from_millis(4),
            jitter: Jitter::normal(Duration::from_millis(3)).with_pareto_tail(
                0.01,
                Duration::from_millis(50),
                2.0,
                Duration::from_millis(150),
            ),
            loss: 0.005,
            ..Self::default()
        }
    }

    /// 4G/5G mobile: 35 ms, heavy-tailed jitter, Gilbert-Elliott loss bursts, rare reordering.
    pub fn cellular() -> Self {
        Self {
            latency: Duration::from_millis(35),
            jitter: Jitter::normal(Duration::from_millis(8)).with_pareto_tail(
                0.02,
                Duration::from_millis(30),
                1.5,
                Duration::from_millis(500),
            ),
            gilbert_elliott: Some(GilbertElliott {
                p: 0.008,
                r: 0.25,
                loss_good: 0.001,
                loss_bad: 0.6,
            }),
            reorder: Reorder {
                probability: 0.001,
                delay: Duration::from_millis(40),
            },
            ..Self::default()
        }
    }

    /// A congested shared path: large heavy-tailed queueing jitter, random and bursty loss,
    /// some reordering and duplication, a 1 Mbit/s bottleneck with a 64 KB buffer.
    pub fn congested() -> Self {
        Self {
            latency: Duration::from_millis(30),
            jitter: Jitter::normal(Duration::from_millis(15)).with_pareto_tail(
                0.05,
                Duration::from_millis(40),
                2.5,
                Duration::from_millis(300),
            ),
            loss: 0.01,
            gilbert_elliott: Some(GilbertElliott {
                p: 0.01,
                r: 0.5,
                loss_good: 0.0,
                loss_bad: 0.5,
            }),
            reorder: Reorder {
                probability: 0.005,
                delay: Duration::from_millis(30),
            },
            duplicate: Duplicate {
                probability: 0.001,
                delay: Duration::from_millis(1),
            },
            rate: Some(RateLimit {
                bits_per_second: 1_000_000,
                queue: QueueLimit::Bytes(64_000),
            }),
            ..Self::default()
        }
    }

    /// Geostationary satellite: 280 ms one way, small jitter, light loss, 2 Mbit/s.
    pub fn satellite() -> Self {
        Self {
            latency: Duration::from_millis(280),
            jitter: Jitter::normal(Duration::from_millis(4)).with_pareto_tail(
                0.005,
                Duration::from_millis(20),
                2.0,
                Duration::from_millis(200),
            ),
            loss: 0.005,
            rate: Some(RateLimit {
                bits_per_second: 2_000_000,
                queue: QueueLimit::Bytes(128_000),
            }),
            ..Self::default()
        }
    }

    /// The preset with this name (ASCII case-insensitive), if any.
    pub fn by_name(name: &str) -> Option<Self> {
        PRESETS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, build)| build())
    }

    /// Adds a scheduled change at `at` from the start.
    pub fn with_change(mut self, at: Duration, change: LinkChange) -> Self {
        self.schedule.push((at, change));
        self
    }

    /// Sets the receiver's clock drift in ms per second (`25.0` is `25_000` ppm).
    pub fn with_drift_ms_per_s(mut self, ms_per_s: f64) -> Self {
        self.clock_drift_ppm = ms_per_s * 1000.0;
        self
    }

    /// Checks every parameter, including the schedule's.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_delay("latency", self.latency)?;
        check_jitter(&self.jitter)?;
        check_probability("loss", self.loss)?;
        if let Some(ge) = &self.gilbert_elliott {
            check_gilbert_elliott(ge)?;
        }
        check_reorder(&self.reorder)?;
        check_duplicate(&self.duplicate)?;
        if let Some(rate) = &self.rate {
            check_rate(rate)?;
        }
        if !self.clock_drift_ppm.is_finite() || self.clock_drift_ppm.abs() > MAX_DRIFT_PPM {
            return Err(ConfigError::Drift(self.clock_drift_ppm));
        }
        for (index, (_, change)) in self.schedule.iter().enumerate() {
            check_change(change).map_err(|e| ConfigError::Schedule {
                index,
                source: Box::new(e),
            })?;
        }
        Ok(())
    }
}

/// A configuration the simulator cannot run (caller misuse, never network input).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("{field} must be a probability in [0, 1], got {value}")]
    Probability { field: &'static str, value: f64 },
    #[error("jitter.tail_shape must be a finite number > 0 when a tail is configured, got {0}")]
    TailShape(f64),
    #[error("a rate limit must be above 0 bit/s")]
    ZeroRate,
    #[error("clock drift must be finite and within +-{MAX_DRIFT_PPM} ppm, got {0}")]
    Drift(f64),
    #[error("{field} is {value:?}, above the {MAX_DELAY:?} the simulator accepts")]
    TooLong {
        field: &'static str,
        value: Duration,
    },
    #[error("{0} must be greater than zero")]
    ZeroPeriod(&'static str),
    #[error("schedule entry {index}: {source}")]
    Schedule {
        index: usize,
        source: Box<ConfigError>,
    },
}

fn check_probability(field: &'static str, value: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::Probability { field, value })
    }
}

fn check_delay(field: &'static str, value: Duration) -> Result<(), ConfigError> {
    if value <= MAX_DELAY {
        Ok(())
    } else {
        Err(ConfigError::TooLong { field, value })
    }
}

fn check_jitter(j: &Jitter) -> Result<(), ConfigError> {
    check_delay("jitter.std_dev", j.std_dev)?;
    check_probability("jitter.tail_probability", j.tail_probability)?;
    check_delay("jitter.tail_scale", j.tail_scale)?;
    if let Some(max) = j.max {
        check_delay("jitter.max", max)?;
    }
    if j.tail_probability > 0.0 && !(j.tail_shape.is_finite() && j.tail_shape > 0.0) {
        return Err(ConfigError::TailShape(j.tail_shape));
    }
    Ok(())
}

fn check_gilbert_elliott(ge: &GilbertElliott) -> Result<(), ConfigError> {
    check_probability("gilbert_elliott.p", ge.p)?;
    check_probability("gilbert_elliott.r", ge.r)?;
    check_probability("gilbert_elliott.loss_good", ge.loss_good)?;
    check_probability("gilbert_elliott.loss_bad", ge.loss_bad)
}

fn check_reorder(r: &Reorder) -> Result<(), ConfigError> {
    check_probability("reorder.probability", r.probability)?;
    check_delay("reorder.delay", r.delay)
}

fn check_duplicate(d: &Duplicate) -> Result<(), ConfigError> {
    check_probability("duplicate.probability", d.probability)?;
    check_delay("duplicate.delay", d.delay)
}

fn check_rate(rate: &RateLimit) -> Result<(), ConfigError> {
    if rate.bits_per_second == 0 {
        Err(ConfigError::ZeroRate)
    } else {
        Ok(())
    }
}

fn check_change(change: &LinkChange) -> Result<(), ConfigError> {
    match change {
        LinkChange::Latency(d) => check_delay("latency", *d),
        LinkChange::Jitter(j) => check_jitter(j),
        LinkChange::Loss(p) => check_probability("loss", *p),
        LinkChange::GilbertElliott(Some(ge)) => check_gilbert_elliott(ge),
        LinkChange::GilbertElliott(None) | LinkChange::Rate(None) => Ok(()),
        LinkChange::Reorder(r) => check_reorder(r),
        LinkChange::Duplicate(d) => check_duplicate(d),
        LinkChange::Rate(Some(rate)) => check_rate(rate),
        LinkChange::Spike { extra, duration } => {
            check_delay("spike.extra", *extra)?;
            check_delay("spike.duration", *duration)
        }
        LinkChange::Freeze(d) => check_delay("freeze", *d),
    }
}

// ---------------------------------------------------------------------------------------------
// Deliveries and counters
// ---------------------------------------------------------------------------------------------

/// A packet coming out of a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery<P> {
    pub payload: P,
    /// The link's index of the packet: 0 for the first `send`, then 1, 2, ...
    pub seq: u64,
    /// When it was sent, on the sender's clock.
    pub sent: Instant,
    /// When it arrives, on the receiver's clock.
    pub arrival: Instant,
    /// This is the second copy of a duplicated packet.
    pub duplicate: bool,
    /// A packet sent later was delivered before this one.
    pub reordered: bool,
}

impl<P> Delivery<P> {
    /// `arrival - sent` as a receiver comparing the two clocks would see it (includes the
    /// drift accumulated since the start); zero if negative.
    pub fn apparent_delay(&self) -> Duration {
        self.arrival.saturating_duration_since(self.sent)
    }
}

/// What a link did so far. Every sent packet is delivered, lost for exactly one cause, or
/// still in flight; `delivered` also counts the duplicate copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkStats {
    pub sent: u64,
    /// Bernoulli loss.
    pub lost_random: u64,
    /// Gilbert-Elliott loss.
    pub lost_burst: u64,
    /// Tail-dropped by the bottleneck queue.
    pub lost_queue: u64,
    /// Lost because a replayed trace says so or ends before it ([`TraceLink`] only).
    pub lost_trace: u64,
    /// Duplicate copies scheduled.
    pub duplicated: u64,
    /// Deliveries that came after a packet sent later (duplicates not counted).
    pub reordered: u64,
    /// Deliveries returned, duplicate copies included.
    pub delivered: u64,
}

impl LinkStats {
    /// Packets lost for any cause.
    pub fn lost(&self) -> u64 {
        self.lost_random + self.lost_burst + self.lost_queue + self.lost_trace
    }
}

/// One entry of the arrival heap, ordered by (arrival, insertion order) only.
struct Pending<P> {
    order: u64,
    delivery: Delivery<P>,
}

impl<P> Pending<P> {
    fn key(&self) -> (Instant, u64) {
        (self.delivery.arrival, self.order)
    }
}

impl<P> PartialEq for Pending<P> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl<P> Eq for Pending<P> {}
impl<P> PartialOrd for Pending<P> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<P> Ord for Pending<P> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key().cmp(&other.key())
    }
}

/// Packets in flight, released in arrival order; shared by [`NetSim`] and [`TraceLink`].
struct InFlight<P> {
    heap: BinaryHeap<Reverse<Pending<P>>>,
    next_order: u64,
    highest_seq: Option<u64>,
    delivered: u64,
    reordered: u64,
}

impl<P> InFlight<P> {
    fn new() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_order: 0,
            highest_seq: None,
            delivered: 0,
            reordered: 0,
        }
    }

    fn push(&mut self, delivery: Delivery<P>) {
        let order = self.next_order;
        self.next_order += 1;
        self.heap.push(Reverse(Pending { order, delivery }));
    }

    fn next_arrival(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse(p)| p.delivery.arrival)
    }

    fn pop(&mut self, now: Instant) -> Option<Delivery<P>> {
        if self.next_arrival()? > now {
            return None;
        }
        let Reverse(Pending { mut delivery, .. }) = self.heap.pop()?;
        if !delivery.duplicate {
            match self.highest_seq {
                Some(h) if delivery.seq < h => {
                    delivery.reordered = true;
                    self.reordered += 1;
                }
                _ => self.highest_seq = Some(delivery.seq),
            }
        }
        self.delivered += 1;
        Some(delivery)
    }
}

// ---------------------------------------------------------------------------------------------
// The link
// ---------------------------------------------------------------------------------------------

/// Something packets cross: a [`NetSim`] or a replayed [`TraceLink`]. See the module doc for
/// the clocks of each argument.
pub trait Link<P> {
    /// Offers a packet at `now` (sender's clock); returns its link index ([`Delivery::seq`]).
    fn send(&mut self, payload: P, size_bytes: usize, now: Instant) -> u64;
    /// The next packet whose arrival is `<= now` (receiver's clock).
    fn poll_deliver(&mut self, now: Instant) -> Option<Delivery<P>>;
    /// The earliest pending arrival (receiver's clock).
    fn next_event(&self) -> Option<Instant>;
    /// Maps a sender-clock instant to the receiver's clock.
    fn to_receiver_clock(&self, sender_time: Instant) -> Instant;
    /// Counters so far.
    fn stats(&self) -> LinkStats;
}

/// Stream ids of the per-impairment generators (see "Determinism").
const STREAM_LOSS: u64 = 1;
const STREAM_JITTER: u64 = 2;
const STREAM_REORDER: u64 = 3;
const STREAM_DUPLICATE: u64 = 4;

fn stream(seed: u64, id: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(id);
    rng
}

/// The bottleneck queue: departure times of the packets waiting or in transmission.
struct Bottleneck {
    busy_until: Duration,
    queued: VecDeque<(Duration, usize)>,
    queued_bytes: usize,
}

impl Bottleneck {
    /// The departure (end of transmission) of a packet offered at `now`, or `None` if the
    /// queue is full.
    fn offer(&mut self, rate: &RateLimit, now: Duration, size: usize) -> Option<Duration> {
        while let Some(&(departure, bytes)) = self.queued.front() {
            if departure > now {
                break;
            }
            self.queued.pop_front();
            self.queued_bytes -= bytes;
        }
        let fits = match rate.queue {
            QueueLimit::Unlimited => true,
            QueueLimit::Packets(n) => self.queued.len() < n,
            QueueLimit::Bytes(n) => self.queued_bytes.saturating_add(size) <= n,
        };
        if !fits {
            return None;
        }
        // u128: usize::MAX * 8e9 fits; the validated rate is > 0.
        let nanos = (size as u128) * 8 * 1_000_000_000 / u128::from(rate.bits_per_second.max(1));
        let transmit = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        let departure = self.busy_until.max(now).saturating_add(transmit);
        self.busy_until = departure;
        self.queued.push_back((departure, size));
        self.queued_bytes = self.queued_bytes.saturating_add(size);
        Some(departure)
    }
}

/// A seeded one-direction link with the impairments of a [`LinkConfig`]. Sans-IO: time is
/// always an argument. See the module doc for the drive contract and the model.
pub struct NetSim<P> {
    start: Instant,
    /// The parameters in force (the schedule is kept apart).
    config: LinkConfig,
    schedule: Vec<(Duration, LinkChange)>,
    next_change: usize,
    /// `[from, until)` on the sender's timeline, sorted by `from`.
    freezes: Vec<(Duration, Duration)>,
    /// `(from, until, extra)` by send time.
    spikes: Vec<(Duration, Duration, Duration)>,
    drift_factor: f64,
    loss_rng: ChaCha8Rng,
    jitter_rng: ChaCha8Rng,
    reorder_rng: ChaCha8Rng,
    duplicate_rng: ChaCha8Rng,
    ge_bad: bool,
    bottleneck: Bottleneck,
    last_send: Duration,
    /// Arrival of the last in-order packet (the FIFO rule), sender's timeline.
    fifo_tail: Duration,
    next_seq: u64,
    in_flight: InFlight<P>,
    stats: LinkStats,
}

impl<P: Clone> NetSim<P> {
    /// A link starting at `start` (both clocks read `start` then), its randomness seeded by
    /// `seed`. Fails if a parameter is out of range.
    pub fn new(config: LinkConfig, seed: u64, start: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut config = config;
        let mut schedule = std::mem::take(&mut config.schedule);
        // Stable: equal offsets keep list order.
        schedule.sort_by_key(|(at, _)| *at);
        let mut freezes = Vec::new();
        let mut spikes = Vec::new();
        for (at, change) in &schedule {
            match *change {
                LinkChange::Freeze(d) => freezes.push((*at, at.saturating_add(d))),
                LinkChange::Spike { extra, duration } => {
                    spikes.push((*at, at.saturating_add(duration), extra));
                }
                _ => {}
            }
        }
        let drift_factor = 1.0 + config.clock_drift_ppm / 1e6;
        Ok(Self {
            start,
            config,
            schedule,
            next_change: 0,
            freezes,
            spikes,
            drift_factor,
            loss_rng: stream(seed, STREAM_LOSS),
            jitter_rng: stream(seed, STREAM_JITTER),
            reorder_rng: stream(seed, STREAM_REORDER),
            duplicate_rng: stream(seed, STREAM_DUPLICATE),
            ge_bad: false,
            bottleneck: Bottleneck {
                busy_until: Duration::ZERO,
                queued: VecDeque::new(),
                queued_bytes: 0,
            },
            last_send: Duration::ZERO,
            fifo_tail: Duration::ZERO,
            next_seq: 0,
            in_flight: InFlight::new(),
            stats: LinkStats::default(),
        })
    }

    /// Offers a packet of `size_bytes` at `now` (sender's clock). Returns its link index.
    pub fn send(&mut self, payload: P, size_bytes: usize, now: Instant) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.stats.sent += 1;
        let t = now
            .saturating_duration_since(self.start)
            .max(self.last_send);
        self.last_send = t;
        self.apply_schedule(t);

        // Every stream draws the same count per packet, used or not (see "Determinism").
        let burst_lost = self.step_gilbert_elliott();
        let random_lost = self.loss_rng.random::<f64>() < self.config.loss;
        let jitter = self.sample_jitter();
        let reordered = self.reorder_rng.random::<f64>() < self.config.reorder.probability;
        let duplicated = self.duplicate_rng.random::<f64>() < self.config.duplicate.probability;

        let departure = match self.config.rate {
            Some(rate) => match self.bottleneck.offer(&rate, t, size_bytes) {
                Some(departure) => departure,
                None => {
                    self.stats.lost_queue += 1;
                    return seq;
                }
            },
            None => t,
        };
        if burst_lost {
            self.stats.lost_burst += 1;
            return seq;
        }
        if random_lost {
            self.stats.lost_random += 1;
            return seq;
        }

        let own = departure
            .saturating_add(self.config.latency)
            .saturating_add(self.spike_extra(t))
            .saturating_add(jitter);
        let in_order = own.max(self.fifo_tail);
        let arrival = if reordered {
            in_order.saturating_add(self.config.reorder.delay)
        } else {
            self.fifo_tail = in_order;
            in_order
        };

        let copy = if duplicated {
            Some((
                payload.clone(),
                arrival.saturating_add(self.config.duplicate.delay),
            ))
        } else {
            None
        };
        if !self.schedule_delivery(payload, seq, now, arrival, false) {
            return seq;
        }
        if let Some((payload, at)) = copy
            && self.schedule_delivery(payload, seq, now, at, true)
        {
            self.stats.duplicated += 1;
        }
        seq
    }

    /// Queues a delivery at `arrival` (sender's timeline). False if the time is not
    /// representable, which only a backlog of centuries can cause: counted as a queue drop.
    fn schedule_delivery(
        &mut self,
        payload: P,
        seq: u64,
        sent: Instant,
        arrival: Duration,
        duplicate: bool,
    ) -> bool {
        let arrival = self.receiver_offset(self.thaw(arrival));
        let Some(arrival) = self.start.checked_add(arrival) else {
            self.stats.lost_queue += 1;
            return false;
        };
        self.in_flight.push(Delivery {
            payload,
            seq,
            sent,
            arrival,
            duplicate,
            reordered: false,
        });
        true
    }
}

impl<P> NetSim<P> {
    /// The next packet whose arrival is `<= now` (receiver's clock), in arrival order.
    #[must_use]
    pub fn poll_deliver(&mut self, now: Instant) -> Option<Delivery<P>> {
        self.in_flight.pop(now)
    }

    /// The earliest pending arrival (receiver's clock).
    #[must_use]
    pub fn next_event(&self) -> Option<Instant> {
        self.in_flight.next_arrival()
    }

    /// Counters so far.
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            delivered: self.in_flight.delivered,
            reordered: self.in_flight.reordered,
            ..self.stats
        }
    }

    /// Packets (and duplicate copies) not yet delivered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.heap.len()
    }

    /// The parameters in force now (the schedule applied up to the last send).
    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// The instant both clocks read at the start.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Maps a sender-clock instant to the receiver's clock (instants before the start are
    /// returned unchanged).
    pub fn to_receiver_clock(&self, sender_time: Instant) -> Instant {
        let offset = sender_time.saturating_duration_since(self.start);
        self.start
            .checked_add(self.receiver_offset(offset))
            .unwrap_or(sender_time)
    }

    fn receiver_offset(&self, t: Duration) -> Duration {
        if self.config.clock_drift_ppm == 0.0 {
            return t;
        }
        // f64 holds whole nanoseconds exactly up to 104 days; `as` saturates.
        let nanos = (t.as_nanos() as f64 * self.drift_factor).round();
        Duration::from_nanos(nanos as u64)
    }

    fn apply_schedule(&mut self, t: Duration) {
        while let Some(&(at, change)) = self.schedule.get(self.next_change) {
            if at > t {
                break;
            }
            self.next_change += 1;
            let c = &mut self.config;
            match change {
                LinkChange::Latency(d) => c.latency = d,
                LinkChange::Jitter(j) => c.jitter = j,
                LinkChange::Loss(p) => c.loss = p,
                LinkChange::GilbertElliott(ge) => c.gilbert_elliott = ge,
                LinkChange::Reorder(r) => c.reorder = r,
                LinkChange::Duplicate(d) => c.duplicate = d,
                LinkChange::Rate(r) => c.rate = r,
                // Precomputed as windows in `new`.
                LinkChange::Spike { .. } | LinkChange::Freeze(_) => {}
            }
        }
    }

    /// Loss decision in the current state, then the state transition.
    fn step_gilbert_elliott(&mut self) -> bool {
        let u_loss = self.loss_rng.random::<f64>();
        let u_move = self.loss_rng.random::<f64>();
        let Some(ge) = self.config.gilbert_elliott else {
            return false;
        };
        let lost = u_loss
            < if self.ge_bad {
                ge.loss_bad
            } else {
                ge.loss_good
            };
        if self.ge_bad {
            self.ge_bad = u_move >= ge.r;
        } else {
            self.ge_bad = u_move < ge.p;
        }
        lost
    }

    fn sample_jitter(&mut self) -> Duration {
        let normal: f64 = self.jitter_rng.sample(StandardNormal);
        let u_tail = self.jitter_rng.random::<f64>();
        // (0, 1]: never 0, so the Pareto inverse below stays finite.
        let u_pareto = 1.0 - self.jitter_rng.random::<f64>();
        let j = &self.config.jitter;
        let mut secs = normal.abs() * j.std_dev.as_secs_f64();
        if u_tail < j.tail_probability {
            secs += j.tail_scale.as_secs_f64() * u_pareto.powf(-1.0 / j.tail_shape);
        }
        let cap = j.max.unwrap_or(DEFAULT_JITTER_CAP);
        Duration::try_from_secs_f64(secs).map_or(cap, |d| d.min(cap))
    }

    fn spike_extra(&self, t: Duration) -> Duration {
        self.spikes
            .iter()
            .filter(|(from, until, _)| (*from..*until).contains(&t))
            .fold(Duration::ZERO, |sum, (_, _, extra)| {
                sum.saturating_add(*extra)
            })
    }

    /// Moves an arrival that falls in a freeze to the freeze's end (a monotone map, so it
    /// keeps order; one pass suffices because the windows are sorted by start).
    fn thaw(&self, mut arrival: Duration) -> Duration {
        for &(from, until) in &self.freezes {
            if (from..until).contains(&arrival) {
                arrival = until;
            }
        }
        arrival
    }
}

impl<P: Clone> Link<P> for NetSim<P> {
    fn send(&mut self, payload: P, size_bytes: usize, now: Instant) -> u64 {
        NetSim::send(self, payload, size_bytes, now)
    }
    fn poll_deliver(&mut self, now: Instant) -> Option<Delivery<P>> {
        NetSim::poll_deliver(self, now)
    }
    fn next_event(&self) -> Option<Instant> {
        NetSim::next_event(self)
    }
    fn to_receiver_clock(&self, sender_time: Instant) -> Instant {
        NetSim::to_receiver_clock(self, sender_time)
    }
    fn stats(&self) -> LinkStats {
        NetSim::stats(self)
    }
}

// ---------------------------------------------------------------------------------------------
// Scenario harness
// ---------------------------------------------------------------------------------------------

/// The shape of a [`Scenario`]: a packet every `interval` for `duration`, receiver ticks
/// every `tick` (if any), and `drain` more time after the last send for packets in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScenarioConfig {
    pub interval: Duration,
    pub duration: Duration,
    pub tick: Option<Duration>,
    pub drain: Duration,
}

impl ScenarioConfig {
    /// A packet every `interval` for `duration`; no ticks; 1 s drain.
    pub fn new(interval: Duration, duration: Duration) -> Self {
        Self {
            interval,
            duration,
            tick: None,
            drain: Duration::from_secs(1),
        }
    }

    /// Adds receiver ticks (the playout clock) every `period`, on the receiver's clock,
    /// the first at the start.
    pub fn with_tick(self, period: Duration) -> Self {
        Self {
            tick: Some(period),
            ..self
        }
    }

    /// Sets how long the run goes on after the end of `duration`.
    pub fn with_drain(self, drain: Duration) -> Self {
        Self { drain, ..self }
    }
}

/// What a [`Scenario`] produces, in time order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimEvent<P> {
    /// The source sent packet `seq` at `at` (sender's clock).
    Sent { seq: u64, at: Instant },
    /// A packet reached the receiver.
    Arrival(Delivery<P>),
    /// A receiver tick (receiver's clock).
    Tick(Instant),
    /// The timeout asked with [`Scenario::set_timeout`] (receiver's clock).
    Timeout(Instant),
}

/// Drives a periodic source through a [`Link`] to a receiver on virtual time: each
/// [`Scenario::poll_event`] jumps to the earliest of the next send, the next arrival, the
/// next tick and the requested timeout, so a 60 s call runs in milliseconds. It is
/// deterministic because the link is seeded, time only moves to computed instants, and
/// events at the same instant come in a fixed order: send, arrival, tick, timeout.
///
/// `make_packet(index, sent_at)` builds the `index`-th packet and its size in bytes.
pub struct Scenario<P, L, F> {
    link: L,
    start: Instant,
    config: ScenarioConfig,
    make_packet: F,
    sends_total: u64,
    sends_done: u64,
    ticks_done: u64,
    timeout: Option<Instant>,
    now: Instant,
    end: Instant,
    _payload: PhantomData<fn() -> P>,
}

/// `d * k`, saturating.
fn mul_duration(d: Duration, k: u64) -> Duration {
    let nanos = d.as_nanos().saturating_mul(u128::from(k));
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    // The remainder is below 1e9 and fits u32.
    Duration::new(secs, (nanos % 1_000_000_000) as u32)
}

impl<P, L, F> Scenario<P, L, F>
where
    L: Link<P>,
    F: FnMut(u64, Instant) -> (P, usize),
{
    /// A scenario over `link`, which must have been created with the same `start`.
    pub fn new(
        link: L,
        start: Instant,
        config: ScenarioConfig,
        make_packet: F,
    ) -> Result<Self, ConfigError> {
        if config.interval.is_zero() {
            return Err(ConfigError::ZeroPeriod("interval"));
        }
        if config.tick.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::ZeroPeriod("tick"));
        }
        let interval = config.interval.as_nanos();
        let sends = config.duration.as_nanos().div_ceil(interval);
        let sends_total = u64::try_from(sends).unwrap_or(u64::MAX);
        let last = start
            .checked_add(config.duration)
            .map_or(start, |t| link.to_receiver_clock(t));
        let end = last.checked_add(config.drain).unwrap_or(last);
        Ok(Self {
            link,
            start,
            config,
            make_packet,
            sends_total,
            sends_done: 0,
            ticks_done: 0,
            timeout: None,
            now: start,
            end,
            _payload: PhantomData,
        })
    }

    /// The next event, or `None` once nothing is left before the end (packets still in
    /// flight then stay in the link).
    pub fn poll_event(&mut self) -> Option<SimEvent<P>> {
        let send_at = (self.sends_done < self.sends_total)
            .then(|| {
                self.start
                    .checked_add(mul_duration(self.config.interval, self.sends_done))
            })
            .flatten();
        let tick_at = self
            .config
            .tick
            .and_then(|p| self.start.checked_add(mul_duration(p, self.ticks_done)));
        let candidates = [
            send_at.map(|s| self.link.to_receiver_clock(s)),
            self.link.next_event(),
            tick_at,
            self.timeout,
        ];
        // The earliest; on a tie the first in the list (send, arrival, tick, timeout).
        let (kind, at) = candidates
            .iter()
            .enumerate()
            .filter_map(|(kind, t)| t.map(|t| (kind, t)))
            .min_by_key(|&(kind, t)| (t, kind))?;
        if at > self.end {
            return None;
        }
        self.now = at;
        match kind {
            0 => {
                // `kind` 0 only exists when `send_at` is `Some`.
                let sent = send_at?;
                let (payload, size) = (self.make_packet)(self.sends_done, sent);
                self.sends_done += 1;
                let seq = self.link.send(payload, size, sent);
                Some(SimEvent::Sent { seq, at: sent })
            }
            1 => self.link.poll_deliver(at).map(SimEvent::Arrival),
            2 => {
                self.ticks_done += 1;
                Some(SimEvent::Tick(at))
            }
            _ => {
                self.timeout = None;
                Some(SimEvent::Timeout(at))
            }
        }
    }

    /// Asks for a [`SimEvent::Timeout`] at `at` (receiver's clock), replacing any earlier
    /// request; a time in the past fires at the current time.
    pub fn set_timeout(&mut self, at: Instant) {
        self.timeout = Some(at.max(self.now));
    }

    /// Runs to the end, handing every event to `on_event`.
    pub fn run(&mut self, mut on_event: impl FnMut(SimEvent<P>)) {
        while let Some(event) = self.poll_event() {
            on_event(event);
        }
    }

    /// The time of the last event (receiver's clock).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// When the run ends (receiver's clock).
    pub fn end(&self) -> Instant {
        self.end
    }

    pub fn link(&self) -> &L {
        &self.link
    }

    pub fn link_mut(&mut self) -> &mut L {
        &mut self.link
    }
}

// ---------------------------------------------------------------------------------------------
// Traces
// ---------------------------------------------------------------------------------------------

/// Missing trace rows up to this many in a row are replayed as lost packets.
const MAX_TRACE_GAP: u64 = 3000;

/// The CSV header a trace file must start with.
pub const TRACE_HEADER: &str = "seq,send_ms,arrival_ms";
/// Largest time a trace line may hold, in ms (about 115 days).
pub const TRACE_MAX_MS: f64 = 1e10;

/// One line of a trace: packet `seq` sent at `send` and arrived at `arrival` (`None`: lost),
/// both as offsets from the start, in whole microseconds. A duplicated packet has one line
/// per copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceRow {
    pub seq: u64,
    pub send: Duration,
    pub arrival: Option<Duration>,
}

/// A recorded network run: `seq,send_ms,arrival_ms` lines. `send_ms` is on the sender's
/// clock, `arrival_ms` on the receiver's own clock (empty: lost), both in ms from the start
/// of the capture with up to microsecond precision. `seq` is the packet's index, not wrapped.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Trace {
    rows: Vec<TraceRow>,
}

/// Why a trace file was refused. Lines are numbered from 1.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("the trace is empty: it needs the header line `{TRACE_HEADER}`")]
    MissingHeader,
    #[error("line {line}: expected the header `{TRACE_HEADER}`, found {found:?}")]
    BadHeader { line: usize, found: String },
    #[error("line {line}: expected 3 comma-separated fields, found {found}")]
    FieldCount { line: usize, found: usize },
    #[error("line {line}: seq {value:?} is not an unsigned integer")]
    BadSeq { line: usize, value: String },
    #[error("line {line}: {column} {value:?} is not a time in ms (a number from 0 to 1e10)")]
    BadTime {
        line: usize,
        column: &'static str,
        value: String,
    },
    #[error("line {line}: seq {seq} has a different send_ms than on an earlier line")]
    ConflictingSend { line: usize, seq: u64 },
    #[error("line {line}: seq {seq} is marked lost on one line and arrived on another")]
    ConflictingLoss { line: usize, seq: u64 },
    #[error("reading the trace: {0}")]
    Io(#[from] io::Error),
}

/// At most 40 characters of a hostile field, for an error message.
fn snippet(s: &str) -> String {
    s.chars().take(40).collect()
}

fn parse_ms(line: usize, column: &'static str, field: &str) -> Result<Duration, TraceError> {
    let bad = || TraceError::BadTime {
        line,
        column,
        value: snippet(field),
    };
    let ms: f64 = field.parse().map_err(|_| bad())?;
    if !(0.0..=TRACE_MAX_MS).contains(&ms) {
        return Err(bad());
    }
    // In range, so the product fits u64.
    Ok(Duration::from_micros((ms * 1000.0).round() as u64))
}

fn round_to_micros(d: Duration) -> Duration {
    let micros = d.as_nanos().saturating_add(500) / 1000;
    Duration::from_micros(u64::try_from(micros).unwrap_or(u64::MAX))
}

fn write_ms(out: &mut impl io::Write, d: Duration) -> io::Result<()> {
    let micros = d.as_micros();
    write!(out, "{}.{:03}", micros / 1000, micros % 1000)
}

impl Trace {
    /// Parses a trace from text (see [`Trace`] for the format). Blank lines and lines
    /// starting with `#` are skipped.
    pub fn parse_csv(text: &str) -> Result<Self, TraceError> {
        Self::read_csv(text.as_bytes())
    }

    /// Parses a trace from a reader.
    pub fn read_csv(reader: impl io::BufRead) -> Result<Self, TraceError> {
        let mut header_seen = false;
        let mut rows = Vec::new();
        // seq -> (send, lost)
        let mut seen: HashMap<u64, (Duration, bool)> = HashMap::new();
        for (index, line) in reader.lines().enumerate() {
            let line_no = index + 1;
            let line = line?;
            let text = line.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            if !header_seen {
                let fields: Vec<&str> = text.split(',').map(str::trim).collect();
                if fields != ["seq", "send_ms", "arrival_ms"] {
                    return Err(TraceError::BadHeader {
                        line: line_no,
                        found: snippet(text),
                    });
                }
                header_seen = true;
                continue;
            }
            let mut fields = text.split(',').map(str::trim);
            let (Some(seq), Some(send), Some(arrival), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                return Err(TraceError::FieldCount {
                    line: line_no,
                    found: text.split(',').count(),
                });
            };
            let seq: u64 = seq.parse().map_err(|_| TraceError::BadSeq {
                line: line_no,
                value: snippet(seq),
            })?;
            let send = parse_ms(line_no, "send_ms", send)?;
            let arrival = if arrival.is_empty() {
                None
            } else {
                Some(parse_ms(line_no, "arrival_ms", arrival)?)
            };
            if let Some(&(first_send, first_lost)) = seen.get(&seq) {
                if first_send != send {
                    return Err(TraceError::ConflictingSend { line: line_no, seq });
                }
                if first_lost || arrival.is_none() {
                    return Err(TraceError::ConflictingLoss { line: line_no, seq });
                }
            } else {
                seen.insert(seq, (send, arrival.is_none()));
            }
            rows.push(TraceRow { seq, send, arrival });
        }
        if !header_seen {
            return Err(TraceError::MissingHeader);
        }
        Ok(Self { rows })
    }

    /// Writes the trace as CSV (header, then one line per row, times with 3 decimals).
    pub fn write_csv(&self, mut out: impl io::Write) -> io::Result<()> {
        writeln!(out, "{TRACE_HEADER}")?;
        for row in &self.rows {
            write!(out, "{},", row.seq)?;
            write_ms(&mut out, row.send)?;
            write!(out, ",")?;
            if let Some(arrival) = row.arrival {
                write_ms(&mut out, arrival)?;
            }
            writeln!(out)?;
        }
        Ok(())
    }

    /// The trace as CSV text.
    pub fn to_csv(&self) -> String {
        let mut out = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.write_csv(&mut out);
        // Only ASCII digits, commas, dots and newlines were written.
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The rows, in file (or recording) order.
    pub fn rows(&self) -> &[TraceRow] {
        &self.rows
    }

    /// Distinct packets (seqs) in the trace.
    pub fn packet_count(&self) -> usize {
        let mut seqs: Vec<u64> = self.rows.iter().map(|r| r.seq).collect();
        seqs.sort_unstable();
        seqs.dedup();
        seqs.len()
    }

    /// Absolute replay: every arrival as a [`Delivery`] with the seq as payload, `sent` and
    /// `arrival` at `start` plus the file's times, in arrival order (equal times in file
    /// order), with the duplicate and reordered flags set.
    pub fn deliveries(&self, start: Instant) -> Vec<Delivery<u64>> {
        let mut in_flight = InFlight::new();
        let mut seen = HashMap::new();
        let mut arrived: Vec<&TraceRow> =
            self.rows.iter().filter(|r| r.arrival.is_some()).collect();
        arrived.sort_by_key(|r| r.arrival);
        for row in arrived {
            let (Some(arrival), Some(sent)) = (
                row.arrival.and_then(|a| start.checked_add(a)),
                start.checked_add(row.send),
            ) else {
                continue;
            };
            let copies = seen.entry(row.seq).or_insert(0u32);
            *copies += 1;
            in_flight.push(Delivery {
                payload: row.seq,
                seq: row.seq,
                sent,
                arrival,
                duplicate: *copies > 1,
                reordered: false,
            });
        }
        std::iter::from_fn(|| {
            let next = in_flight.next_arrival()?;
            in_flight.pop(next)
        })
        .collect()
    }
}

/// Records a run (a [`Scenario`]'s events, or sends and deliveries by hand) into a [`Trace`].
#[derive(Debug, Clone)]
pub struct TraceRecorder {
    start: Instant,
    sends: Vec<(u64, Duration)>,
    arrivals: Vec<(u64, Duration, Duration)>,
}

impl TraceRecorder {
    /// A recorder whose times are offsets from `start`.
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            sends: Vec::new(),
            arrivals: Vec::new(),
        }
    }

    /// Notes that packet `seq` was sent at `at` (sender's clock).
    pub fn record_sent(&mut self, seq: u64, at: Instant) {
        self.sends
            .push((seq, at.saturating_duration_since(self.start)));
    }

    /// Notes a delivery (receiver's clock).
    pub fn record_arrival<P>(&mut self, delivery: &Delivery<P>) {
        self.arrivals.push((
            delivery.seq,
            delivery.sent.saturating_duration_since(self.start),
            delivery.arrival.saturating_duration_since(self.start),
        ));
    }

    /// Notes a [`SimEvent::Sent`] or [`SimEvent::Arrival`]; ignores the others.
    pub fn record<P>(&mut self, event: &SimEvent<P>) {
        match event {
            SimEvent::Sent { seq, at } => self.record_sent(*seq, *at),
            SimEvent::Arrival(d) => self.record_arrival(d),
            SimEvent::Tick(_) | SimEvent::Timeout(_) => {}
        }
    }

    /// The trace: one row per arrival, one lost row per sent packet that never arrived,
    /// sorted by seq then arrival, times rounded to microseconds.
    pub fn into_trace(self) -> Trace {
        let mut sends: Vec<(u64, Duration)> = self.sends;
        sends.extend(self.arrivals.iter().map(|&(seq, sent, _)| (seq, sent)));
        // Stable: a recorded send wins over a delivery's copy of it.
        sends.sort_by_key(|&(seq, _)| seq);
        sends.dedup_by_key(|&mut (seq, _)| seq);
        let mut arrivals = self.arrivals;
        arrivals.sort_by_key(|&(seq, _, arrival)| (seq, arrival));
        let mut rows = Vec::with_capacity(sends.len().max(arrivals.len()));
        let mut next = 0;
        for (seq, send) in sends {
            let send = round_to_micros(send);
            let first = next;
            while let Some(&(s, _, arrival)) = arrivals.get(next) {
                if s != seq {
                    break;
                }
                rows.push(TraceRow {
                    seq,
                    send,
                    arrival: Some(round_to_micros(arrival)),
                });
                next += 1;
            }
            if next == first {
                rows.push(TraceRow {
                    seq,
                    send,
                    arrival: None,
                });
            }
        }
        Trace { rows }
    }
}

/// Replays a [`Trace`] as a [`Link`]: the `k`-th packet sent gets the one-way delays of the
/// trace's `k`-th packet (by ascending seq), measured from the time it is actually sent, so
/// sending with the capture's interval reproduces the capture. Lost packets, and packets sent
/// past the trace's end, count as `lost_trace`. If the capture's clocks were offset so that a
/// delay is negative, every delay is shifted up by the same amount (relative timing is what
/// matters). The trace's arrival times are already on the receiver's clock, so
/// `to_receiver_clock` is the identity.
pub struct TraceLink<P> {
    /// Per packet, the range of `delays` holding its copies' delays.
    packets: Vec<(usize, usize)>,
    delays: Vec<Duration>,
    next_packet: usize,
    in_flight: InFlight<P>,
    stats: LinkStats,
}

impl<P> TraceLink<P> {
    pub fn new(trace: &Trace) -> Self {
        let mut rows: Vec<&TraceRow> = trace.rows.iter().collect();
        rows.sort_by_key(|r| (r.seq, r.arrival));
        let delay_nanos = |r: &TraceRow| {
            r.arrival
                .map(|a| a.as_nanos() as i128 - r.send.as_nanos() as i128)
        };
        let shift = rows
            .iter()
            .filter_map(|r| delay_nanos(r))
            .min()
            .map_or(0, |min| (-min).max(0));
        let mut packets = Vec::new();
        let mut delays = Vec::new();
        let mut i = 0;
        let mut prev_seq: Option<u64> = None;
        while let Some(first) = rows.get(i) {
            // A sequence number without a row was never seen: lost. (A gap wider than a
            // minute of packets is closed up instead, so a renumbering cannot blow up.)
            if let Some(prev) = prev_seq {
                let missing = first.seq.saturating_sub(prev + 1);
                if missing <= MAX_TRACE_GAP {
                    let at = delays.len();
                    packets.extend((0..missing).map(|_| (at, at)));
                }
            }
            prev_seq = Some(first.seq);
            let from = delays.len();
            while let Some(row) = rows.get(i).filter(|r| r.seq == first.seq) {
                if let Some(d) = delay_nanos(row) {
                    // Non-negative after the shift.
                    delays.push(Duration::from_nanos(
                        u64::try_from(d + shift).unwrap_or(u64::MAX),
                    ));
                }
                i += 1;
            }
            packets.push((from, delays.len()));
        }
        Self {
            packets,
            delays,
            next_packet: 0,
            in_flight: InFlight::new(),
            stats: LinkStats::default(),
        }
    }
}

impl<P> TraceLink<P> {
    /// Packets the trace describes, rows missing inside the sequence counted as lost.
    pub fn packet_count(&self) -> usize {
        self.packets.len()
    }
}

impl<P: Clone> Link<P> for TraceLink<P> {
    fn send(&mut self, payload: P, _size_bytes: usize, now: Instant) -> u64 {
        let seq = self.stats.sent;
        self.stats.sent += 1;
        let Some(&(from, to)) = self.packets.get(self.next_packet) else {
            self.stats.lost_trace += 1;
            return seq;
        };
        self.next_packet += 1;
        let delays = self.delays.get(from..to).unwrap_or(&[]);
        if delays.is_empty() {
            self.stats.lost_trace += 1;
        }
        let mut payload = Some(payload);
        for (copy, delay) in delays.iter().enumerate() {
            // The last copy takes the payload; the others clone it.
            let payload = if copy + 1 == delays.len() {
                payload.take()
            } else {
                payload.clone()
            };
            let (Some(payload), Some(arrival)) = (payload, now.checked_add(*delay)) else {
                continue;
            };
            if copy > 0 {
                self.stats.duplicated += 1;
            }
            self.in_flight.push(Delivery {
                payload,
                seq,
                sent: now,
                arrival,
                duplicate: copy > 0,
                reordered: false,
            });
        }
        seq
    }
    fn poll_deliver(&mut self, now: Instant) -> Option<Delivery<P>> {
        self.in_flight.pop(now)
    }
    fn next_event(&self) -> Option<Instant> {
        self.in_flight.next_arrival()
    }
    fn to_receiver_clock(&self, sender_time: Instant) -> Instant {
        sender_time
    }
    fn stats(&self) -> LinkStats {
        LinkStats {
            delivered: self.in_flight.delivered,
            reordered: self.in_flight.reordered,
            ..self.stats
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An arbitrary origin for virtual time. The only clock read here; every measurement is
    /// relative to it, so results do not depend on its value.
    #[allow(clippy::disallowed_methods)]
    fn t0() -> Instant {
        Instant::now()
    }

    const MS: Duration = Duration::from_millis(1);
    const MS20: Duration = Duration::from_millis(20);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn as_ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1000.0
    }

    /// Sends `n` packets (payload = index) every `interval` and returns every delivery in
    /// delivery order.
    fn run_link_with(
        config: LinkConfig,
        seed: u64,
        n: u64,
        interval: Duration,
        size: usize,
    ) -> (Instant, Vec<Delivery<u64>>, LinkStats) {
        let start = t0();
        let mut link = NetSim::new(config, seed, start).unwrap();
        for k in 0..n {
            link.send(k, size, start + mul_duration(interval, k));
        }
        let mut out = Vec::new();
        while let Some(t) = link.next_event() {
            while let Some(d) = link.poll_deliver(t) {
                out.push(d);
            }
        }
        (start, out, link.stats())
    }

    fn run_link(config: LinkConfig, seed: u64, n: u64) -> (Instant, Vec<Delivery<u64>>, LinkStats) {
        run_link_with(config, seed, n, MS20, 200)
    }

    fn delays_ms(deliveries: &[Delivery<u64>]) -> Vec<f64> {
        deliveries
            .iter()
            .map(|d| as_ms(d.apparent_delay()))
            .collect()
    }

    fn mean(xs: &[f64]) -> f64 {
        xs.iter().sum::<f64>() / xs.len() as f64
    }

    fn assert_near(measured: f64, expected: f64, tolerance: f64, what: &str) {
        assert!(
            (measured - expected).abs() <= tolerance,
            "{what}: measured {measured}, expected {expected} +- {tolerance}"
        );
    }

    /// Lengths of the runs of consecutive seqs missing from the deliveries.
    fn loss_bursts(deliveries: &[Delivery<u64>], n: u64) -> Vec<u64> {
        let mut arrived = vec![false; n as usize];
        for d in deliveries {
            arrived[d.seq as usize] = true;
        }
        let mut bursts = Vec::new();
        let mut run = 0;
        for got in arrived {
            if got {
                if run > 0 {
                    bursts.push(run);
                }
                run = 0;
            } else {
                run += 1;
            }
        }
        if run > 0 {
            bursts.push(run);
        }
        bursts
    }

    #[test]
    fn the_same_seed_gives_identical_deliveries() {
        let (_, a, sa) = run_link(LinkConfig::congested(), 7, 5000);
        let (_, b, sb) = run_link(LinkConfig::congested(), 7, 5000);
        let strip = |v: &[Delivery<u64>], start: Instant| -> Vec<(u64, Duration, Duration, bool)> {
            v.iter()
                .map(|d| (d.seq, d.sent - start, d.arrival - start, d.duplicate))
                .collect()
        };
        // Different origins, same relative behaviour.
        let (sa_start, sb_start) = (a[0].sent, b[0].sent);
        assert_eq!(strip(&a, sa_start), strip(&b, sb_start));
        assert_eq!(sa, sb);
        assert!(sa.lost() > 0 && sa.duplicated > 0 && sa.reordered > 0);
    }

    #[test]
    fn different_seeds_give_different_deliveries() {
        let (s1, a, _) = run_link(LinkConfig::wifi(), 1, 2000);
        let (s2, b, _) = run_link(LinkConfig::wifi(), 2, 2000);
        let seqs = |v: &[Delivery<u64>]| v.iter().map(|d| d.seq).collect::<Vec<_>>();
        let arrivals =
            |v: &[Delivery<u64>], s: Instant| v.iter().map(|d| d.arrival - s).collect::<Vec<_>>();
        assert_ne!(seqs(&a), seqs(&b));
        assert_ne!(arrivals(&a, s1), arrivals(&b, s2));
    }

    #[test]
    fn bernoulli_loss_rate_matches_the_probability_over_50k_packets() {
        let config = LinkConfig {
            loss: 0.05,
            ..LinkConfig::default()
        };
        let (_, out, stats) = run_link(config, 3, 50_000);
        // 4.5 sigma of a binomial(50k, 0.05) share.
        let sigma = (0.05f64 * 0.95 / 50_000.0).sqrt();
        assert_near(
            stats.lost_random as f64 / 50_000.0,
            0.05,
            4.5 * sigma,
            "loss rate",
        );
        assert_eq!(stats.lost(), stats.lost_random);
        assert_eq!(out.len() as u64 + stats.lost(), 50_000);
        assert_eq!(stats.delivered, out.len() as u64);
    }

    #[test]
    fn gilbert_loss_rate_is_p_over_p_plus_r_and_mean_burst_is_one_over_r() {
        let ge = GilbertElliott::from_loss_and_burst(0.05, 4.0);
        assert_near(ge.stationary_loss(), 0.05, 1e-12, "analytic loss");
        let config = LinkConfig {
            gilbert_elliott: Some(ge),
            ..LinkConfig::default()
        };
        let n = 100_000;
        let (_, out, stats) = run_link(config, 11, n);
        assert_eq!(stats.lost(), stats.lost_burst);
        // Correlated losses: the share's sigma is about 0.0018 here; 4 sigma.
        assert_near(
            stats.lost_burst as f64 / n as f64,
            0.05,
            0.0075,
            "loss rate",
        );
        let bursts = loss_bursts(&out, n);
        let mean_burst = bursts.iter().sum::<u64>() as f64 / bursts.len() as f64;
        // About 1250 geometric bursts of sigma 3.5: standard error 0.1; 4 sigma.
        assert_near(mean_burst, 4.0, 0.4, "mean burst length");
    }

    #[test]
    fn gilbert_elliott_with_loss_in_both_states_matches_the_stationary_loss() {
        let ge = GilbertElliott {
            p: 0.02,
            r: 0.2,
            loss_good: 0.01,
            loss_bad: 0.5,
        };
        let expected = (1.0 - 0.02 / 0.22) * 0.01 + 0.02 / 0.22 * 0.5;
        assert_near(ge.stationary_loss(), expected, 1e-12, "analytic loss");
        let config = LinkConfig {
            gilbert_elliott: Some(ge),
            ..LinkConfig::default()
        };
        let (_, _, stats) = run_link(config, 5, 100_000);
        assert_near(stats.lost_burst as f64 / 1e5, expected, 0.006, "loss rate");
    }

    #[test]
    fn heavy_jitter_never_reorders_without_the_reorder_option() {
        let config = LinkConfig {
            latency: ms(30),
            jitter: Jitter::normal(ms(50)).with_pareto_tail(0.05, ms(50), 1.5, ms(800)),
            loss: 0.02,
            ..LinkConfig::default()
        };
        let (_, out, stats) = run_link(config, 9, 20_000);
        assert!(out.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(stats.reordered, 0);
        assert!(out.iter().all(|d| !d.reordered));
        // The jitter was large enough to reorder if it could.
        let d = delays_ms(&out);
        let spread =
            d.iter().cloned().fold(f64::MIN, f64::max) - d.iter().cloned().fold(f64::MAX, f64::min);
        assert!(spread > 200.0, "spread {spread}");
    }

    #[test]
    fn the_reorder_probability_is_the_share_of_late_packets() {
        let config = LinkConfig {
            latency: ms(40),
            reorder: Reorder {
                probability: 0.05,
                delay: ms(50),
            },
            ..LinkConfig::default()
        };
        let (_, out, stats) = run_link(config, 13, 20_000);
        let late = out.iter().filter(|d| d.reordered).count() as u64;
        assert_eq!(late, stats.reordered);
        let sigma = (0.05f64 * 0.95 / 20_000.0).sqrt();
        assert_near(late as f64 / 20_000.0, 0.05, 4.5 * sigma, "reorder rate");
        // A late packet arrives after the next two (50 ms at 20 ms spacing), not later.
        let position: HashMap<u64, usize> =
            out.iter().enumerate().map(|(i, d)| (d.seq, i)).collect();
        for d in out.iter().filter(|d| d.reordered && d.seq + 3 < 20_000) {
            assert!(
                position[&d.seq] < position[&(d.seq + 3)] || out[position[&(d.seq + 3)]].reordered
            );
        }
    }

    #[test]
    fn the_duplicate_probability_is_the_share_of_copies() {
        let config = LinkConfig {
            latency: ms(10),
            duplicate: Duplicate {
                probability: 0.02,
                delay: ms(3),
            },
            ..LinkConfig::default()
        };
        let (_, out, stats) = run_link(config, 17, 50_000);
        let copies: Vec<&Delivery<u64>> = out.iter().filter(|d| d.duplicate).collect();
        assert_eq!(copies.len() as u64, stats.duplicated);
        assert_eq!(out.len() as u64, 50_000 + stats.duplicated);
        let sigma = (0.02f64 * 0.98 / 50_000.0).sqrt();
        assert_near(
            stats.duplicated as f64 / 50_000.0,
            0.02,
            4.5 * sigma,
            "duplicate rate",
        );
        let first: HashMap<u64, Instant> = out
            .iter()
            .filter(|d| !d.duplicate)
            .map(|d| (d.seq, d.arrival))
            .collect();
        for c in copies {
            assert_eq!(c.arrival - first[&c.seq], ms(3));
        }
        assert_eq!(stats.reordered, 0, "copies do not count as reordered");
    }

    #[test]
    fn sending_above_the_rate_grows_delay_then_tail_drops_and_delivers_the_rate() {
        // 1000 bytes every 4 ms is 2 Mbit/s into 1 Mbit/s (8 ms per packet), 20-packet queue.
        let config = LinkConfig {
            latency: ms(10),
            rate: Some(RateLimit {
                bits_per_second: 1_000_000,
                queue: QueueLimit::Packets(20),
            }),
            ..LinkConfig::default()
        };
        let n = 5000;
        let (_, out, stats) = run_link_with(config, 1, n, ms(4), 1000);
        let delays = delays_ms(&out);
        assert!(delays[..20].windows(2).all(|w| w[1] > w[0]), "delay grows");
        let first_lost = (0..n).find(|k| out.get(*k as usize).is_none_or(|d| d.seq != *k));
        let first_lost = first_lost.unwrap();
        assert!(
            (35..=45).contains(&first_lost),
            "first drop at {first_lost}"
        );
        assert_eq!(stats.lost(), stats.lost_queue);
        assert_near(stats.lost_queue as f64 / n as f64, 0.5, 0.01, "drop share");
        // A full queue: 20 packets of 8 ms plus the 10 ms path.
        let max = delays.iter().cloned().fold(0.0, f64::max);
        assert!((150.0..=170.0 + 1e-6).contains(&max), "max delay {max}");
        let span = out.last().unwrap().arrival - out[0].arrival;
        let throughput = (out.len() - 1) as f64 * 8000.0 / span.as_secs_f64();
        assert_near(throughput, 1_000_000.0, 5_000.0, "throughput bit/s");
    }

    #[test]
    fn a_queue_limit_in_bytes_holds_that_many_bytes() {
        // A burst of 10 packets of 500 bytes at once into a 2000-byte queue: 4 fit.
        let config = LinkConfig {
            rate: Some(RateLimit {
                bits_per_second: 64_000,
                queue: QueueLimit::Bytes(2000),
            }),
            ..LinkConfig::default()
        };
        let (_, out, stats) = run_link_with(config, 1, 10, Duration::ZERO, 500);
        assert_eq!(
            out.iter().map(|d| d.seq).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        assert_eq!(stats.lost_queue, 6);
        // 500 bytes at 64 kbit/s is 62.5 ms each.
        assert_eq!(
            out[3].arrival - out[0].arrival,
            Duration::from_micros(187_500)
        );
    }

    #[test]
    fn a_receiver_clock_fast_by_25_ms_per_s_sees_20_ms_sends_20_5_ms_apart() {
        let config = LinkConfig {
            latency: ms(50),
            ..LinkConfig::default()
        }
        .with_drift_ms_per_s(25.0);
        assert_eq!(config.clock_drift_ppm, 25_000.0);
        let (start, out, _) = run_link(config, 1, 1000);
        for w in out.windows(2) {
            let gap = w[1].arrival - w[0].arrival;
            assert!(gap.abs_diff(Duration::from_micros(20_500)) <= Duration::from_nanos(1));
        }
        // Packet 999 arrives at (999 * 20 + 50) ms * 1.025 on the receiver's clock.
        assert_eq!(
            out[999].arrival - start,
            Duration::from_micros(20_030_000 * 1025 / 1000)
        );
    }

    #[test]
    fn a_receiver_clock_slow_by_25_ms_per_s_sees_20_ms_sends_19_5_ms_apart() {
        let config = LinkConfig::default().with_drift_ms_per_s(-25.0);
        let (_, out, _) = run_link(config, 1, 1000);
        for w in out.windows(2) {
            let gap = w[1].arrival - w[0].arrival;
            assert!(gap.abs_diff(Duration::from_micros(19_500)) <= Duration::from_nanos(1));
        }
    }

    #[test]
    fn a_5_s_freeze_releases_every_held_packet_at_its_end_in_one_burst() {
        let config = LinkConfig {
            latency: ms(50),
            ..LinkConfig::default()
        }
        .with_change(
            Duration::from_secs(10),
            LinkChange::Freeze(Duration::from_secs(5)),
        );
        let (start, out, stats) = run_link(config, 1, 1000);
        let release = start + Duration::from_secs(15);
        let burst: Vec<u64> = out
            .iter()
            .filter(|d| d.arrival == release)
            .map(|d| d.seq)
            .collect();
        // Arrivals due in [10 s, 15 s): sent from 9.96 s to 14.94 s.
        assert_eq!(burst, (498..=747).collect::<Vec<_>>());
        assert!(
            !out.iter()
                .any(|d| d.arrival > start + Duration::from_secs(10) && d.arrival < release)
        );
        assert!(out.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(out[748].arrival - start, ms(748 * 20 + 50));
        assert_eq!(stats.delivered, 1000);
    }

    #[test]
    fn a_scheduled_latency_step_delays_packets_sent_from_then_on() {
        let config = LinkConfig {
            latency: ms(50),
            ..LinkConfig::default()
        }
        .with_change(Duration::from_secs(10), LinkChange::Latency(ms(130)));
        let (_, out, _) = run_link(config, 1, 1000);
        for d in &out {
            let expected = if d.seq < 500 { ms(50) } else { ms(130) };
            assert_eq!(d.apparent_delay(), expected, "seq {}", d.seq);
        }
    }

    #[test]
    fn a_scheduled_spike_delays_only_packets_sent_inside_it() {
        let config = LinkConfig {
            latency: ms(50),
            ..LinkConfig::default()
        }
        .with_change(
            Duration::from_secs(5),
            LinkChange::Spike {
                extra: ms(100),
                duration: Duration::from_secs(1),
            },
        );
        let (_, out, _) = run_link(config, 1, 500);
        for d in &out {
            let expected = if (250..300).contains(&d.seq) {
                ms(150)
            } else {
                ms(50)
            };
            // The FIFO rule holds the 5 packets right after the spike behind its last one.
            let held = (300..305).contains(&d.seq);
            assert!(held || d.apparent_delay() == expected, "seq {}", d.seq);
        }
        assert_eq!(out[300].apparent_delay(), ms(130));
        assert_eq!(out[305].apparent_delay(), ms(50));
    }

    #[test]
    fn half_normal_jitter_has_mean_0_8_sigma() {
        let config = LinkConfig {
            latency: ms(10),
            jitter: Jitter::normal(ms(4)),
            ..LinkConfig::default()
        };
        let (_, out, _) = run_link(config, 21, 20_000);
        let jitter = mean(&delays_ms(&out)) - 10.0;
        assert_near(
            jitter,
            4.0 * (2.0 / std::f64::consts::PI).sqrt(),
            0.1,
            "mean jitter ms",
        );
    }

    #[test]
    fn the_pareto_tail_has_the_configured_share_and_shape() {
        // 1 s apart so the FIFO rule never binds: each delay is its own sample.
        let config = LinkConfig {
            latency: ms(10),
            jitter: Jitter::default().with_pareto_tail(0.1, ms(50), 2.0, ms(900)),
            ..LinkConfig::default()
        };
        let n = 20_000;
        let (_, out, _) = run_link_with(config, 23, n, Duration::from_secs(1), 200);
        let share =
            |limit: f64| delays_ms(&out).iter().filter(|&&d| d >= limit).count() as f64 / n as f64;
        assert_near(share(60.0), 0.1, 0.009, "tail share");
        // P(X > 2 x_m) = 2^-alpha = 1/4 of the tail.
        assert_near(share(110.0), 0.025, 0.0045, "share beyond 2 x_m");
    }

    /// The module doc's preset table, measured columns: (name, mean delay ms, loss share).
    type Range = (f64, f64);
    const PRESET_TABLE: &[(&str, Range, Range)] = &[
        ("lan", (0.6, 0.7), (0.0, 0.0)),
        ("wifi", (8.0, 10.0), (0.0035, 0.0065)),
        ("cellular", (46.0, 51.0), (0.016, 0.024)),
        ("congested", (50.0, 56.0), (0.017, 0.023)),
        ("satellite", (283.0, 286.0), (0.0035, 0.0065)),
    ];

    #[test]
    fn a_preset_measures_within_its_documented_delay_and_loss() {
        let mut failures = Vec::new();
        for &(name, (dmin, dmax), (lmin, lmax)) in PRESET_TABLE {
            for seed in 1..=3 {
                let config = LinkConfig::by_name(name).unwrap();
                let n = 30_000;
                let (_, out, stats) = run_link(config, seed, n);
                let firsts: Vec<Delivery<u64>> = out.into_iter().filter(|d| !d.duplicate).collect();
                let delay = mean(&delays_ms(&firsts));
                let loss = stats.lost() as f64 / n as f64;
                let ok = (dmin..=dmax).contains(&delay) && (lmin..=lmax).contains(&loss);
                if !ok {
                    failures.push(format!(
                        "{name} seed {seed}: delay {delay:.3} ms, loss {loss:.4}"
                    ));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "outside the documented ranges: {failures:#?}"
        );
    }

    #[test]
    fn presets_are_found_by_name_and_are_valid() {
        assert_eq!(presets().len(), 5);
        for (name, build) in presets() {
            assert_eq!(LinkConfig::by_name(name), Some(build()));
            assert_eq!(build().validate(), Ok(()));
        }
        assert_eq!(LinkConfig::by_name("WiFi"), Some(LinkConfig::wifi()));
        assert_eq!(LinkConfig::by_name("dialup"), None);
    }

    #[test]
    fn an_out_of_range_parameter_is_a_typed_error() {
        let bad_loss = LinkConfig {
            loss: 1.5,
            ..LinkConfig::default()
        };
        assert_eq!(
            NetSim::<u64>::new(bad_loss, 1, t0()).err(),
            Some(ConfigError::Probability {
                field: "loss",
                value: 1.5
            })
        );
        let nan_drift = LinkConfig {
            clock_drift_ppm: f64::NAN,
            ..LinkConfig::default()
        };
        assert!(matches!(nan_drift.validate(), Err(ConfigError::Drift(_))));
        let zero_rate = LinkConfig {
            rate: Some(RateLimit {
                bits_per_second: 0,
                queue: QueueLimit::Unlimited,
            }),
            ..LinkConfig::default()
        };
        assert_eq!(zero_rate.validate(), Err(ConfigError::ZeroRate));
        let bad_tail = LinkConfig {
            jitter: Jitter::default().with_pareto_tail(0.1, ms(10), 0.0, ms(100)),
            ..LinkConfig::default()
        };
        assert_eq!(bad_tail.validate(), Err(ConfigError::TailShape(0.0)));
        let bad_change = LinkConfig::default()
            .with_change(ms(1), LinkChange::Loss(0.1))
            .with_change(ms(2), LinkChange::Latency(Duration::from_secs(7200)));
        assert!(matches!(
            bad_change.validate(),
            Err(ConfigError::Schedule { index: 1, .. })
        ));
        // A mean burst below one packet needs r > 1.
        let too_short = GilbertElliott::from_loss_and_burst(0.1, 0.5);
        assert!(matches!(
            check_gilbert_elliott(&too_short),
            Err(ConfigError::Probability {
                field: "gilbert_elliott.r",
                ..
            })
        ));
    }

    #[test]
    fn a_send_time_going_backwards_is_taken_as_the_latest_one() {
        let start = t0();
        let config = LinkConfig {
            latency: ms(10),
            ..LinkConfig::default()
        };
        let mut link = NetSim::new(config, 1, start).unwrap();
        link.send(0u8, 100, start + ms(100));
        link.send(1u8, 100, start + ms(50));
        link.send(2u8, 100, start.checked_sub(ms(1)).unwrap_or(start));
        let at = start + ms(110);
        assert_eq!(link.next_event(), Some(at));
        let got: Vec<(u8, Instant)> = std::iter::from_fn(|| link.poll_deliver(at))
            .map(|d| (d.payload, d.arrival))
            .collect();
        assert_eq!(got, vec![(0, at), (1, at), (2, at)]);
        assert_eq!(link.in_flight(), 0);
    }

    #[test]
    fn poll_deliver_returns_nothing_before_the_arrival() {
        let start = t0();
        let config = LinkConfig {
            latency: ms(30),
            ..LinkConfig::default()
        };
        let mut link = NetSim::new(config, 1, start).unwrap();
        link.send("a", 100, start);
        assert!(link.poll_deliver(start + ms(29)).is_none());
        assert_eq!(
            link.poll_deliver(start + ms(30)).map(|d| d.payload),
            Some("a")
        );
        assert!(link.poll_deliver(start + ms(31)).is_none());
        assert_eq!(link.next_event(), None);
    }

    /// Runs a scenario to the end and returns its events.
    fn scenario_events<L: Link<u64>>(
        link: L,
        start: Instant,
        config: ScenarioConfig,
    ) -> Vec<SimEvent<u64>> {
        let mut scenario = Scenario::new(link, start, config, |k, _| (k, 200)).unwrap();
        let mut events = Vec::new();
        scenario.run(|e| events.push(e));
        events
    }

    #[test]
    fn a_scenario_emits_events_in_receiver_time_order_with_ticks_on_the_receiver_clock() {
        let start = t0();
        let link_config = LinkConfig::cellular().with_drift_ms_per_s(25.0);
        let link = NetSim::new(link_config, 4, start).unwrap();
        let to_rx = |t: Instant| {
            start + Duration::from_nanos(((t - start).as_nanos() as f64 * 1.025).round() as u64)
        };
        let config = ScenarioConfig::new(MS20, Duration::from_secs(10)).with_tick(MS20);
        let events = scenario_events(link, start, config);
        let time = |e: &SimEvent<u64>| match e {
            SimEvent::Sent { at, .. } => (to_rx(*at), 0),
            SimEvent::Arrival(d) => (d.arrival, 1),
            SimEvent::Tick(t) => (*t, 2),
            SimEvent::Timeout(t) => (*t, 3),
        };
        assert!(events.windows(2).all(|w| time(&w[0]) <= time(&w[1])));
        let sent = events
            .iter()
            .filter(|e| matches!(e, SimEvent::Sent { .. }))
            .count();
        assert_eq!(sent, 500);
        let ticks: Vec<Instant> = events
            .iter()
            .filter_map(|e| {
                if let SimEvent::Tick(t) = e {
                    Some(*t)
                } else {
                    None
                }
            })
            .collect();
        // Ticks every 20 ms of the receiver's clock from the start to 10.25 s + 1 s drain.
        assert_eq!(ticks.len(), 563);
        assert!(
            ticks
                .iter()
                .enumerate()
                .all(|(k, t)| *t == start + MS20 * k as u32)
        );
    }

    #[test]
    fn a_60_s_scenario_replays_identically() {
        let config = ScenarioConfig::new(MS20, Duration::from_secs(60)).with_tick(MS20);
        let relative = |start: Instant, events: Vec<SimEvent<u64>>| -> Vec<(u8, u64, Duration)> {
            events
                .into_iter()
                .map(|e| match e {
                    SimEvent::Sent { seq, at } => (0, seq, at - start),
                    SimEvent::Arrival(d) => (1, d.seq, d.arrival - start),
                    SimEvent::Tick(t) => (2, 0, t - start),
                    SimEvent::Timeout(t) => (3, 0, t - start),
                })
                .collect()
        };
        let s1 = t0();
        let a = scenario_events(
            NetSim::new(LinkConfig::congested(), 8, s1).unwrap(),
            s1,
            config,
        );
        let s2 = s1 + Duration::from_secs(1000);
        let b = scenario_events(
            NetSim::new(LinkConfig::congested(), 8, s2).unwrap(),
            s2,
            config,
        );
        assert_eq!(relative(s1, a), relative(s2, b));
    }

    #[test]
    fn an_arrival_at_a_tick_comes_before_the_tick_and_a_timeout_after_it() {
        let start = t0();
        let link = NetSim::new(
            LinkConfig {
                latency: MS20,
                ..LinkConfig::default()
            },
            1,
            start,
        )
        .unwrap();
        let config = ScenarioConfig::new(MS20, MS20)
            .with_tick(MS20)
            .with_drain(MS20);
        let mut scenario = Scenario::new(link, start, config, |k, _| (k, 100)).unwrap();
        scenario.set_timeout(start + MS20);
        let events: Vec<SimEvent<u64>> = std::iter::from_fn(|| scenario.poll_event()).collect();
        let kinds: Vec<&str> = events
            .iter()
            .map(|e| match e {
                SimEvent::Sent { .. } => "sent",
                SimEvent::Arrival(_) => "arrival",
                SimEvent::Tick(_) => "tick",
                SimEvent::Timeout(_) => "timeout",
            })
            .collect();
        assert_eq!(
            kinds,
            ["sent", "tick", "arrival", "tick", "timeout", "tick"]
        );
        assert_eq!(scenario.now(), start + ms(40));
    }

    #[test]
    fn a_zero_interval_scenario_is_refused() {
        let start = t0();
        let link = NetSim::<u64>::new(LinkConfig::default(), 1, start).unwrap();
        let config = ScenarioConfig::new(Duration::ZERO, MS);
        let result = Scenario::new(link, start, config, |k, _| (k, 1));
        assert!(matches!(result, Err(ConfigError::ZeroPeriod("interval"))));
    }

    /// Records a scenario over `config` into a trace and returns it with the arrivals.
    fn record(config: LinkConfig, seed: u64, secs: u64) -> (Instant, Trace, Vec<Delivery<u64>>) {
        let start = t0();
        let link = NetSim::new(config, seed, start).unwrap();
        let sc =
            ScenarioConfig::new(MS20, Duration::from_secs(secs)).with_drain(Duration::from_secs(5));
        let mut scenario = Scenario::new(link, start, sc, |k, _| (k, 200)).unwrap();
        let mut recorder = TraceRecorder::new(start);
        let mut arrivals = Vec::new();
        scenario.run(|e| {
            recorder.record(&e);
            if let SimEvent::Arrival(d) = e {
                arrivals.push(d);
            }
        });
        (start, recorder.into_trace(), arrivals)
    }

    #[test]
    fn a_recorded_trace_round_trips_through_csv() {
        let (_, trace, _) = record(LinkConfig::congested(), 3, 20);
        let csv = trace.to_csv();
        assert!(csv.starts_with("seq,send_ms,arrival_ms\n0,0.000,"));
        assert!(
            csv.lines().any(|l| l.ends_with(',')),
            "lost packets have an empty arrival"
        );
        let parsed = Trace::parse_csv(&csv).unwrap();
        assert_eq!(parsed, trace);
        assert_eq!(parsed.to_csv(), csv);
        assert_eq!(parsed.packet_count(), 1000);
        assert!(
            parsed.rows().len() > 1000 - 60,
            "duplicates add rows, losses keep theirs"
        );
    }

    #[test]
    fn replaying_a_trace_through_a_scenario_reproduces_the_recorded_arrivals() {
        let (start, trace, recorded) = record(LinkConfig::wifi().with_drift_ms_per_s(10.0), 5, 20);
        let link = TraceLink::new(&Trace::parse_csv(&trace.to_csv()).unwrap());
        let sc =
            ScenarioConfig::new(MS20, Duration::from_secs(20)).with_drain(Duration::from_secs(5));
        let replayed: Vec<Delivery<u64>> = scenario_events(link, start, sc)
            .into_iter()
            .filter_map(|e| {
                if let SimEvent::Arrival(d) = e {
                    Some(d)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(replayed.len(), recorded.len());
        for (a, b) in recorded.iter().zip(&replayed) {
            assert_eq!((a.seq, a.duplicate, a.sent), (b.seq, b.duplicate, b.sent));
            // Times went through microsecond rounding.
            assert!(
                a.arrival.max(b.arrival) - a.arrival.min(b.arrival) <= Duration::from_micros(1)
            );
        }
    }

    #[test]
    fn a_trace_link_counts_trace_losses_and_sends_past_its_end() {
        let trace =
            Trace::parse_csv("seq,send_ms,arrival_ms\n0,0,30\n1,20,\n2,40,70\n2,40,75\n").unwrap();
        let start = t0();
        let sc = ScenarioConfig::new(MS20, ms(100));
        let mut scenario = Scenario::new(TraceLink::new(&trace), start, sc, |k, _| (k, 1)).unwrap();
        scenario.run(|_| {});
        let stats = scenario.link().stats();
        assert_eq!(stats.sent, 5);
        assert_eq!(stats.lost_trace, 3);
        assert_eq!(stats.duplicated, 1);
        assert_eq!(stats.delivered, 3);
    }

    #[test]
    fn a_sequence_number_missing_from_a_trace_replays_as_a_lost_packet() {
        // Rows for 0, 1 and 4: 2 and 3 were never seen.
        let trace =
            Trace::parse_csv("seq,send_ms,arrival_ms\n0,0,30\n1,20,50\n4,80,110\n").unwrap();
        let link: TraceLink<u64> = TraceLink::new(&trace);
        assert_eq!(link.packet_count(), 5);
        let start = t0();
        let sc = ScenarioConfig::new(MS20, ms(100));
        let mut scenario = Scenario::new(link, start, sc, |k, _| (k, 1)).unwrap();
        let mut arrived = Vec::new();
        scenario.run(|e| {
            if let SimEvent::Arrival(d) = e {
                arrived.push(d.seq);
            }
        });
        assert_eq!(arrived, vec![0, 1, 4]);
        assert_eq!(scenario.link().stats().lost_trace, 2);
    }

    #[test]
    fn absolute_trace_deliveries_flag_reordering_and_duplicates() {
        let csv =
            "# captured\nseq,send_ms,arrival_ms\n\n0,0,50.5\n1,20,45\n2,40,\n3,60,80\n3,60,81.25\n";
        let trace = Trace::parse_csv(csv).unwrap();
        let start = t0();
        let got: Vec<(u64, Duration, bool, bool)> = trace
            .deliveries(start)
            .into_iter()
            .map(|d| (d.seq, d.arrival - start, d.duplicate, d.reordered))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, ms(45), false, false),
                (0, Duration::from_micros(50_500), false, true),
                (3, ms(80), false, false),
                (3, Duration::from_micros(81_250), true, false),
            ]
        );
    }

    #[test]
    fn malformed_trace_lines_are_errors_naming_the_line() {
        const H: &str = "seq,send_ms,arrival_ms\n";
        type Case = (String, fn(&TraceError) -> bool);
        let cases: Vec<Case> = vec![
            (String::new(), |e| matches!(e, TraceError::MissingHeader)),
            ("# only a comment\n".into(), |e| {
                matches!(e, TraceError::MissingHeader)
            }),
            ("seq,send,arrival\n".into(), |e| {
                matches!(e, TraceError::BadHeader { line: 1, .. })
            }),
            ("0,0,20\n".into(), |e| {
                matches!(e, TraceError::BadHeader { line: 1, .. })
            }),
            (format!("{H}1,2\n"), |e| {
                matches!(e, TraceError::FieldCount { line: 2, found: 2 })
            }),
            (format!("{H}1,2,3,4\n"), |e| {
                matches!(e, TraceError::FieldCount { line: 2, found: 4 })
            }),
            (format!("{H}x,1,2\n"), |e| {
                matches!(e, TraceError::BadSeq { line: 2, .. })
            }),
            (format!("{H}-1,1,2\n"), |e| {
                matches!(e, TraceError::BadSeq { line: 2, .. })
            }),
            (format!("{H}1,abc,2\n"), |e| {
                matches!(
                    e,
                    TraceError::BadTime {
                        line: 2,
                        column: "send_ms",
                        ..
                    }
                )
            }),
            (format!("{H}1,,2\n"), |e| {
                matches!(
                    e,
                    TraceError::BadTime {
                        line: 2,
                        column: "send_ms",
                        ..
                    }
                )
            }),
            (format!("{H}1,NaN,2\n"), |e| {
                matches!(e, TraceError::BadTime { line: 2, .. })
            }),
            (format!("{H}1,inf,2\n"), |e| {
                matches!(e, TraceError::BadTime { line: 2, .. })
            }),
            (format!("{H}1,-5,2\n"), |e| {
                matches!(e, TraceError::BadTime { line: 2, .. })
            }),
            (format!("{H}1,1e11,2\n"), |e| {
                matches!(e, TraceError::BadTime { line: 2, .. })
            }),
            (format!("{H}1,1,zz\n"), |e| {
                matches!(
                    e,
                    TraceError::BadTime {
                        line: 2,
                        column: "arrival_ms",
                        ..
                    }
                )
            }),
            (format!("{H}1,1,\n1,2,3\n"), |e| {
                matches!(e, TraceError::ConflictingSend { line: 3, seq: 1 })
            }),
            (format!("{H}1,1,\n1,1,3\n"), |e| {
                matches!(e, TraceError::ConflictingLoss { line: 3, seq: 1 })
            }),
            (format!("{H}1,1,3\n1,1,\n"), |e| {
                matches!(e, TraceError::ConflictingLoss { line: 3, seq: 1 })
            }),
            (format!("# c\n\n{H}\n0,0,1\n1,x,2\n"), |e| {
                matches!(e, TraceError::BadTime { line: 6, .. })
            }),
        ];
        for (input, expected) in &cases {
            let err = Trace::parse_csv(input).expect_err(input);
            assert!(expected(&err), "{input:?} gave {err:?}");
        }
        let long = format!("{H}1,{},2\n", "9".repeat(10_000));
        let message = Trace::parse_csv(&long).unwrap_err().to_string();
        assert!(
            message.len() < 200,
            "the error quotes a bounded snippet: {message}"
        );
        let not_utf8: &[u8] = b"seq,send_ms,arrival_ms\n1,\xff,2\n";
        assert!(matches!(Trace::read_csv(not_utf8), Err(TraceError::Io(_))));
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_trace_parser() {
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        let alphabet = b"0123456789,.-+eEinfNa \r\n#x";
        for _ in 0..5000 {
            let len = rng.random_range(0..60);
            let mut text = String::from("seq,send_ms,arrival_ms\n");
            for _ in 0..len {
                text.push(alphabet[rng.random_range(0..alphabet.len())] as char);
            }
            if let Ok(trace) = Trace::parse_csv(&text) {
                let start = t0();
                let _ = trace.deliveries(start);
                let mut link = TraceLink::<u8>::new(&trace);
                for k in 0..4 {
                    Link::send(&mut link, 0, 1, start + MS20 * k);
                }
                while let Some(t) = link.next_event() {
                    while link.poll_deliver(t).is_some() {}
                }
            }
        }
    }
}
