//! Runs a jitter buffer over a simulated link or a recorded trace and scores it against
//! the hindsight oracle: the measurement behind `confer bench jitter` and the jitter-buffer
//! scenario tests.
//!
//! Definitions (so that numbers compare across tools):
//! - a packet's **delay** is its playout time (when its first sample leaves the buffer)
//!   minus its send time minus the smallest transit (arrival - send) in the run;
//! - **late loss** is packets that arrived but too late to be played (including those
//!   dropped to catch up after a backlog), over packets sent;
//! - **concealed** is concealed audio over the audio sent;
//! - the **oracle** is the smallest fixed delay that would have had no more late loss than
//!   the buffer had;
//! - the **1% oracle** is the smallest fixed delay that loses at most 1% of the packets that
//!   arrived. A buffer that holds for late packets (concealing while it waits) has no late
//!   loss, so its oracle must cover the worst spike; the 1% oracle is the stricter
//!   comparison for it.
//!
//! The receiver's frame clock ticks every `frame_ms` on the receiver's clock. A packet that
//! arrives just after a tick waits for the next one, so results include the frame-clock
//! alignment a real engine has; each evaluation repeats the same network at `phases` evenly
//! spaced clock phases and reports them together, so that alignment averages half a frame
//! instead of depending on luck. Everything runs on virtual time: a minute of network
//! takes milliseconds.

use std::time::{Duration, Instant};

use confer_codecs::decoder::AudioDecoder;

use crate::jitter::{JbPacket, JitterBuffer, JitterConfig, JitterError, JitterStats};
use crate::netsim::{Link, Scenario, ScenarioConfig, SimEvent};

/// One scored run.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    /// Preset name or trace stem.
    pub name: String,
    /// Packets sent per run.
    pub packets: u64,
    /// Distinct packets that arrived, over all phases.
    pub arrived: u64,
    /// Packets played, over all phases.
    pub played: u64,
    /// Packets that arrived too late to play (late + discarded), over all phases.
    pub late: u64,
    /// Mean delay of played packets, ms.
    pub mean_delay_ms: f64,
    /// 95th percentile delay of played packets, ms.
    pub p95_delay_ms: f64,
    /// Late loss over packets sent, percent.
    pub late_loss_pct: f64,
    /// Concealed audio over audio sent, percent.
    pub concealed_pct: f64,
    /// The hindsight oracle's fixed delay, ms.
    pub oracle_delay_ms: f64,
    /// The smallest fixed delay that loses at most 1% of the packets that arrived, ms: a
    /// stricter yardstick where the buffer holds for late packets (and so has no late
    /// loss) instead of dropping them.
    pub oracle_1pct_delay_ms: f64,
    /// The buffer's own counters at the end (first phase).
    pub jitter: JitterStats,
    /// (seconds since start, delay ms) of every played packet (first phase).
    pub delays: Vec<(f64, f64)>,
    /// (seconds since start, the buffer level it aims for in ms) once per 100 ms (first
    /// phase).
    pub targets: Vec<(f64, f64)>,
}

/// How to run an evaluation.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// The jitter buffer under test.
    pub jitter: JitterConfig,
    /// Packet interval (the sender's packetisation), normally 20 ms.
    pub interval: Duration,
    /// How long the sender sends.
    pub duration: Duration,
    /// Number of runs, each with the receiver's frame clock at another phase relative to
    /// the sender (evenly spaced over one frame, so the alignment averages half a frame).
    pub phases: u32,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            jitter: JitterConfig::default(),
            interval: Duration::from_millis(20),
            duration: Duration::from_secs(60),
            phases: 4,
        }
    }
}

/// Runs `frames` (encoded payloads, one per interval, looped) through a link made by
/// `make_link` (once per phase: it must give the same network every time) into a jitter
/// buffer decoding with a decoder from `make_decoder`, and scores it. Payload `i` of the
/// link is packet `i`.
pub fn evaluate<L, D>(
    name: &str,
    make_link: impl Fn() -> L,
    start: Instant,
    frames: &[Vec<u8>],
    make_decoder: impl Fn() -> D,
    cfg: &EvalConfig,
) -> Result<EvalReport, JitterError>
where
    L: Link<u64>,
    D: AudioDecoder,
{
    if frames.is_empty() || cfg.phases == 0 {
        return Err(JitterError::BadConfig("no frames to send or no phases"));
    }
    let frame_d = Duration::from_millis(cfg.jitter.frame_ms as u64);
    let mut runs = Vec::with_capacity(cfg.phases as usize);
    for k in 0..cfg.phases {
        let phase = frame_d.mul_f64((k as f64 + 0.5) / cfg.phases as f64);
        runs.push(run_once(
            make_link(),
            start,
            phase,
            frames,
            make_decoder(),
            cfg,
        )?);
    }
    let packets: u64 = runs.iter().map(|r| r.packets).sum();
    let late: u64 = runs.iter().map(|r| r.late).sum();
    let concealed_ms: f64 = runs.iter().map(|r| r.concealed_ms).sum();
    let mut rel: Vec<f64> = runs.iter().flat_map(|r| r.rel.iter().copied()).collect();
    rel.sort_by(f64::total_cmp);
    let mut sorted: Vec<f64> = runs
        .iter()
        .flat_map(|r| r.delays.iter().map(|d| d.1))
        .collect();
    sorted.sort_by(f64::total_cmp);
    let mean = if sorted.is_empty() {
        0.0
    } else {
        sorted.iter().sum::<f64>() / sorted.len() as f64
    };
    let audio_ms = packets as f64 * cfg.interval.as_secs_f64() * 1000.0;
    let first = runs.swap_remove(0);
    Ok(EvalReport {
        name: name.to_string(),
        packets: packets / cfg.phases as u64,
        arrived: rel.len() as u64,
        played: sorted.len() as u64,
        late,
        mean_delay_ms: mean,
        p95_delay_ms: quantile(&sorted, 0.95),
        late_loss_pct: pct(late as f64, packets as f64),
        concealed_pct: pct(concealed_ms, audio_ms),
        oracle_delay_ms: oracle_delay(&rel, late),
        oracle_1pct_delay_ms: oracle_delay(&rel, rel.len() as u64 / 100),
        jitter: first.stats,
        delays: first.delays,
        targets: first.targets,
    })
}

/// One phase's raw results.
struct Run {
    packets: u64,
    late: u64,
    concealed_ms: f64,
    /// Relative transit (ms above the run's smallest) of every arrived packet.
    rel: Vec<f64>,
    delays: Vec<(f64, f64)>,
    targets: Vec<(f64, f64)>,
    stats: JitterStats,
}

fn run_once<L, D>(
    link: L,
    start: Instant,
    phase: Duration,
    frames: &[Vec<u8>],
    decoder: D,
    cfg: &EvalConfig,
) -> Result<Run, JitterError>
where
    L: Link<u64>,
    D: AudioDecoder,
{
    let mut jb = JitterBuffer::new(cfg.jitter.clone(), decoder)?;
    let samples_per_packet =
        (cfg.jitter.clock_rate as u128 * cfg.interval.as_nanos() / 1_000_000_000) as u64;
    let scenario_cfg =
        ScenarioConfig::new(cfg.interval, cfg.duration).with_drain(Duration::from_secs(8));
    let mut scenario = Scenario::new(link, start, scenario_cfg, |i, _| (i, 200))
        .map_err(|_| JitterError::BadConfig("invalid scenario"))?;
    let frame_d = Duration::from_millis(cfg.jitter.frame_ms as u64);
    let mut next_tick = start + phase;
    scenario.set_timeout(next_tick);

    let n = frames.len();
    let mut sent: Vec<Option<Instant>> = Vec::new();
    let mut transit: Vec<Option<f64>> = Vec::new();
    let mut played_at: Vec<Option<Instant>> = Vec::new();
    let mut out = vec![0.0f32; jb.frame_samples()];
    let mut targets = Vec::new();
    let mut next_target = start;
    // Concealment counts until the last packet played, not through the silence after.
    let mut concealed_ms = 0.0;
    while let Some(ev) = scenario.poll_event() {
        match ev {
            SimEvent::Sent { seq, at } => {
                let i = seq as usize;
                if sent.len() <= i {
                    sent.resize(i + 1, None);
                    transit.resize(i + 1, None);
                    played_at.resize(i + 1, None);
                }
                sent[i] = Some(at);
            }
            SimEvent::Arrival(d) => {
                let i = d.seq as usize;
                if i < transit.len() && transit[i].is_none() {
                    transit[i] = Some(signed_secs(d.arrival, d.sent));
                }
                let packet = JbPacket {
                    seq: d.seq,
                    timestamp: d.seq * samples_per_packet,
                    payload: &frames[d.payload as usize % n],
                };
                jb.push(packet, d.arrival)?;
            }
            SimEvent::Timeout(now) => {
                jb.pop(now, &mut out)?;
                let mut any = false;
                for p in jb.drain_played() {
                    if let Some(slot) = played_at.get_mut(p.seq as usize) {
                        *slot = Some(p.at);
                        any = true;
                    }
                }
                if any {
                    concealed_ms = jb.stats().concealed_ms;
                }
                if now >= next_target {
                    targets.push((secs(now, start), jb.stats().target_delay_ms));
                    next_target = now + Duration::from_millis(100);
                }
                next_tick += frame_d;
                scenario.set_timeout(next_tick);
            }
            SimEvent::Tick(_) => {}
        }
    }
    let stats = jb.stats();
    let min_transit = transit
        .iter()
        .flatten()
        .copied()
        .fold(f64::INFINITY, f64::min);
    let mut delays = Vec::new();
    for i in 0..sent.len() {
        if let (Some(s), Some(p)) = (sent[i], played_at[i]) {
            let d = (signed_secs(p, s) - min_transit) * 1000.0;
            delays.push((secs(s, start), d));
        }
    }
    let rel = transit
        .iter()
        .flatten()
        .map(|t| (t - min_transit) * 1000.0)
        .collect();
    Ok(Run {
        packets: sent.iter().filter(|s| s.is_some()).count() as u64,
        late: stats.late + stats.discarded,
        concealed_ms,
        rel,
        delays,
        targets,
        stats,
    })
}

/// The smallest fixed delay whose late loss (packets with relative transit above it) is
/// at most `late` packets; `rel` sorted ascending, in ms.
pub fn oracle_delay(rel: &[f64], late: u64) -> f64 {
    if rel.is_empty() || late as usize >= rel.len() {
        return 0.0;
    }
    rel[rel.len() - 1 - late as usize]
}

/// The q-quantile (nearest rank) of ascending `sorted`, 0 when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn pct(a: f64, b: f64) -> f64 {
    if b > 0.0 { 100.0 * a / b } else { 0.0 }
}

fn secs(t: Instant, start: Instant) -> f64 {
    t.saturating_duration_since(start).as_secs_f64()
}

fn signed_secs(a: Instant, b: Instant) -> f64 {
    if a >= b {
        (a - b).as_secs_f64()
    } else {
        -(b - a).as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oracle_is_the_smallest_delay_with_no_more_late_loss() {
        let rel = [0.0, 1.0, 2.0, 5.0, 40.0];
        assert_eq!(oracle_delay(&rel, 0), 40.0);
        assert_eq!(oracle_delay(&rel, 1), 5.0);
        assert_eq!(oracle_delay(&rel, 4), 0.0);
        assert_eq!(oracle_delay(&rel, 9), 0.0);
    }

    #[test]
    fn quantile_is_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.95), 95.0);
        assert_eq!(quantile(&v, 1.0), 100.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
    }
}
