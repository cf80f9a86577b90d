//! Time stretching of decoded audio, so the jitter buffer can follow its target delay
//! without audible jumps.
//!
//! Why: an adaptive jitter buffer (NetEQ-style) moves its playout delay when the network
//! changes. Dropping or repeating whole frames to do so clicks and stutters; instead the
//! buffer shortens ([`TimeStretcher::accelerate`]) or lengthens ([`TimeStretcher::expand`],
//! NetEQ's "preemptive expand") the audio it has already decoded, by about one pitch
//! period, where that cannot be heard. Packet-loss concealment is not done here: that is
//! the codec's PLC.
//!
//! Design (WSOLA-style, one splice per call):
//! - **Pitch search.** The normalised cross-correlation between the first period
//!   `x[0..L]` and the next one `x[L..2L]` is computed for every lag `L` from 2.5 ms to
//!   `min(20 ms, len / 2)`, first on a copy decimated to about 4 kHz (box-car
//!   anti-alias), then at full rate within one decimation step around the best few
//!   coarse peaks. Among refined lags that reach the threshold and are within
//!   [`OCTAVE_MARGIN`] of the best correlation, the shortest wins, so a steady vowel
//!   loses one period rather than two.
//!   The correlated pair is exactly the pair that gets cross-faded, so the score measures
//!   the splice itself.
//! - **Splice.** The output jumps forward (accelerate) or back (expand) by `L`, with a
//!   raised-cosine cross-fade over the whole period: accelerate plays
//!   `fade(x[0..L] -> x[L..2L])` then `x[2L..]`; expand plays `x[0..L]`,
//!   `fade(x[L..2L] -> x[0..L])`, then `x[L..]`. The first and last output samples are
//!   the input's, so the chunk joins its neighbours as the decoder produced them.
//! - **Decision.** Periodic enough (correlation >= 0.9 by default, NetEQ's value):
//!   splice one period. Quiet (RMS below -50 dBFS by default, whatever its
//!   periodicity): jump as far as the quiet cap allows (default 40 ms, at most the
//!   input minus a 5 ms raised-cosine cross-fade; whole periods when the quiet signal is
//!   periodic). Otherwise (loud and noise-like: fricatives, onsets): leave the input
//!   unchanged and let the caller try again on the next chunk. Never a hard cut.
//! - Deliberate differences from NetEQ: the quiet decision is an absolute level (set it
//!   from a noise-floor estimate with [`TimeStretcher::set_quiet_threshold_dbfs`])
//!   rather than an internal background-noise model; quiet audio may lose more than one
//!   period per call; the octave preference above.
//! - Pure DSP: no state carries from one call to the next (each call sees a fresh chunk),
//!   scratch buffers are sized in [`TimeStretcher::new`], nothing allocates per call.
//!   NaN or infinite input is never spliced (it is copied through unchanged).
//!
//! Drive contract: decode a chunk (20-30 ms; at least [`TimeStretcher::min_input_len`]
//! for anything to happen, and `2 *` [`TimeStretcher::max_period`] to allow the longest
//! pitch periods), call `accelerate` or `expand` with an output buffer of at least
//! `input.len()` (accelerate) or [`TimeStretcher::max_expand_len`] (expand) samples,
//! play `out[..written]`, and account `changed` samples against the buffer delay.

use std::f64::consts::PI;

use crate::decoder::CodecError;

/// The rate the coarse pitch search runs at (Hz, approximately: the decimation factor is
/// `sample_rate / 4000` rounded down).
const COARSE_RATE: u32 = 4000;
/// Shortest pitch period searched, in microseconds (400 Hz).
const MIN_PERIOD_US: u64 = 2_500;
/// Longest pitch period searched, in microseconds (50 Hz).
const MAX_PERIOD_US: u64 = 20_000;
/// Cross-fade length for a splice in quiet audio, in microseconds.
const QUIET_FADE_US: u64 = 5_000;
/// Default cap on what one call removes or inserts in quiet audio, in microseconds.
const DEFAULT_QUIET_CAP_US: u64 = 40_000;
/// Default normalised correlation a splice needs in non-quiet audio.
pub const DEFAULT_CORRELATION_THRESHOLD: f32 = 0.9;
/// Default level (RMS relative to full scale 1.0) below which audio counts as quiet.
pub const DEFAULT_QUIET_DBFS: f32 = -50.0;
/// A shorter lag is preferred to a longer one (its multiple) when its correlation is
/// at most this much lower.
pub const OCTAVE_MARGIN: f32 = 0.05;
/// Coarse correlation peaks refined at full rate.
const CANDIDATES: usize = 4;

/// How a call changed (or did not change) its input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StretchKind {
    /// One pitch period of `period` samples was removed or inserted, cross-faded over
    /// the whole period.
    Periodic {
        /// The pitch period in samples (= |changed|).
        period: usize,
        /// Normalised cross-correlation between the two spliced periods.
        correlation: f32,
    },
    /// The input was quiet: up to the quiet cap was removed or inserted (a multiple of
    /// the pitch period when the quiet signal is periodic) with a short cross-fade.
    Quiet,
    /// Loud and not periodic enough to splice inaudibly: the input was copied unchanged.
    NotPeriodic {
        /// The best correlation found (0 when none could be computed).
        correlation: f32,
    },
    /// The input is shorter than [`TimeStretcher::min_input_len`]: copied unchanged.
    TooShort,
}

/// The result of [`TimeStretcher::accelerate`] or [`TimeStretcher::expand`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StretchResult {
    /// Samples written to the front of `out` (= input length + `changed`).
    pub written: usize,
    /// Samples inserted (positive) or removed (negative); 0 when unchanged.
    pub changed: isize,
    /// Why the input was (or was not) changed.
    pub kind: StretchKind,
    /// Where in `out` the cross-fade starts (0 with `crossfade_len` 0 when unchanged).
    pub crossfade_start: usize,
    /// Length of the cross-fade in `out`.
    pub crossfade_len: usize,
}

impl StretchResult {
    fn unchanged(len: usize, kind: StretchKind) -> Self {
        Self {
            written: len,
            changed: 0,
            kind,
            crossfade_start: 0,
            crossfade_len: 0,
        }
    }
}

/// The pitch found in a chunk: `lag` 0 when none could be computed.
#[derive(Debug, Clone, Copy)]
struct Pitch {
    lag: usize,
    correlation: f32,
}

/// Shortens or lengthens decoded audio by about one pitch period without audible
/// artefacts. One per decoded stream (it only holds scratch space and settings).
#[derive(Debug, Clone)]
pub struct TimeStretcher {
    sample_rate: u32,
    decimation: usize,
    min_lag: usize,
    max_lag: usize,
    /// Longest lag a periodic splice may use (<= max_lag).
    lag_cap: usize,
    quiet_fade: usize,
    quiet_cap: usize,
    correlation_threshold: f32,
    quiet_mean_square: f64,
    /// Full-rate prefix sums of x^2 over the analysed `2 * max_lag` samples.
    energy: Vec<f64>,
    /// The analysed samples decimated to about 4 kHz.
    coarse: Vec<f32>,
    /// Prefix sums of `coarse^2`.
    coarse_energy: Vec<f64>,
    /// Coarse normalised correlation per coarse lag.
    coarse_corr: Vec<f32>,
}

impl TimeStretcher {
    /// A stretcher for mono audio at `sample_rate` Hz (8000..=48000; 8, 16, 24 and
    /// 48 kHz are the rates the engine uses). All scratch space is allocated here.
    pub fn new(sample_rate: u32) -> Result<Self, CodecError> {
        if !(8_000..=48_000).contains(&sample_rate) {
            return Err(CodecError::BadConfig {
                what: "time-stretch sample rate",
                value: i64::from(sample_rate),
            });
        }
        let fs = u64::from(sample_rate);
        // Bounded by 48_000 * 40_000 / 1e6 = 1920: the casts cannot truncate.
        let samples = |us: u64| (fs * us / 1_000_000) as usize;
        let min_lag = (fs * MIN_PERIOD_US).div_ceil(1_000_000) as usize;
        let max_lag = samples(MAX_PERIOD_US);
        let decimation = (sample_rate / COARSE_RATE) as usize;
        let coarse_len = 2 * max_lag / decimation;
        Ok(Self {
            sample_rate,
            decimation,
            min_lag,
            max_lag,
            lag_cap: max_lag,
            quiet_fade: samples(QUIET_FADE_US),
            quiet_cap: samples(DEFAULT_QUIET_CAP_US),
            correlation_threshold: DEFAULT_CORRELATION_THRESHOLD,
            quiet_mean_square: db_to_mean_square(DEFAULT_QUIET_DBFS),
            energy: vec![0.0; 2 * max_lag + 1],
            coarse: vec![0.0; coarse_len],
            coarse_energy: vec![0.0; coarse_len + 1],
            coarse_corr: vec![0.0; coarse_len / 2 + 1],
        })
    }

    /// Sets the normalised correlation a splice in non-quiet audio needs (clamped to
    /// 0..=1; default [`DEFAULT_CORRELATION_THRESHOLD`]). Lower splices more often and
    /// less cleanly.
    pub fn set_correlation_threshold(&mut self, threshold: f32) {
        self.correlation_threshold = if threshold.is_nan() {
            DEFAULT_CORRELATION_THRESHOLD
        } else {
            threshold.clamp(0.0, 1.0)
        };
    }

    /// Sets the level (RMS in dB relative to full scale 1.0) below which a chunk is
    /// quiet and may be spliced regardless of its periodicity (default
    /// [`DEFAULT_QUIET_DBFS`]). A jitter buffer that tracks the stream's noise floor
    /// can set it a few dB above that floor. `f32::NEG_INFINITY` disables it.
    pub fn set_quiet_threshold_dbfs(&mut self, dbfs: f32) {
        self.quiet_mean_square = if dbfs.is_nan() {
            db_to_mean_square(DEFAULT_QUIET_DBFS)
        } else {
            db_to_mean_square(dbfs.min(0.0))
        };
    }

    /// Caps what one call removes or inserts in quiet audio, in samples (default 40 ms;
    /// 0 disables quiet splicing). A jitter buffer sets it to its excess or deficit.
    pub fn set_quiet_cap(&mut self, samples: usize) {
        self.quiet_cap = samples;
    }

    /// Caps the pitch period a periodic splice may remove or insert, in samples (default
    /// and upper bound [`max_period`](Self::max_period); below [`min_period`](Self::min_period)
    /// only quiet audio is spliced). A jitter buffer that must not change its delay by
    /// more than a given amount sets this and the quiet cap to that amount.
    pub fn set_max_splice_period(&mut self, samples: usize) {
        self.lag_cap = samples.min(self.max_lag);
    }

    /// The sample rate this stretcher was built for.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// Shortest pitch period searched (2.5 ms), in samples.
    pub fn min_period(&self) -> usize {
        self.min_lag
    }

    /// Longest pitch period searched (20 ms), in samples.
    pub fn max_period(&self) -> usize {
        self.max_lag
    }

    /// Shortest input that can be changed: two minimum pitch periods (5 ms).
    pub fn min_input_len(&self) -> usize {
        2 * self.min_lag
    }

    /// The output length [`expand`](Self::expand) needs for `input_len` samples.
    pub fn max_expand_len(&self, input_len: usize) -> usize {
        if input_len < self.min_input_len() {
            return input_len;
        }
        let periodic = self.max_lag.min(input_len / 2);
        let quiet = self.quiet_cap.min(input_len - self.quiet_fade(input_len));
        input_len + periodic.max(quiet)
    }

    /// Shortens `input`: writes the result to the front of `out` (which must hold at
    /// least `input.len()` samples, else `Err(BufferTooSmall)`).
    ///
    /// Removes one pitch period when the audio is periodic enough, as much as the quiet
    /// cap allows when it is quiet, and nothing otherwise (`changed == 0`, `out` holds a
    /// copy of `input`).
    pub fn accelerate(
        &mut self,
        input: &[f32],
        out: &mut [f32],
    ) -> Result<StretchResult, CodecError> {
        self.stretch(input, out, Direction::Shorten)
    }

    /// Lengthens `input`: writes the result to the front of `out` (which must hold at
    /// least [`max_expand_len`](Self::max_expand_len) samples, else
    /// `Err(BufferTooSmall)`).
    ///
    /// Inserts one pitch period when the audio is periodic enough, as much as the quiet
    /// cap allows (at most `input.len()` minus 5 ms) when it is quiet, and nothing
    /// otherwise.
    pub fn expand(&mut self, input: &[f32], out: &mut [f32]) -> Result<StretchResult, CodecError> {
        self.stretch(input, out, Direction::Lengthen)
    }

    fn stretch(
        &mut self,
        x: &[f32],
        out: &mut [f32],
        direction: Direction,
    ) -> Result<StretchResult, CodecError> {
        let n = x.len();
        let needed = match direction {
            Direction::Shorten => n,
            Direction::Lengthen => self.max_expand_len(n),
        };
        if out.len() < needed {
            return Err(CodecError::BufferTooSmall {
                needed,
                got: out.len(),
            });
        }
        let copy = |out: &mut [f32], kind| {
            out[..n].copy_from_slice(x);
            StretchResult::unchanged(n, kind)
        };
        if n < self.min_input_len() {
            return Ok(copy(out, StretchKind::TooShort));
        }
        let level = mean_square(x);
        if level.is_nan() {
            // NaN or infinite samples: pass them through, never smear them over a splice.
            return Ok(copy(out, StretchKind::NotPeriodic { correlation: 0.0 }));
        }
        let pitch = if self.lag_cap >= self.min_lag {
            self.find_pitch(x)
        } else {
            Pitch {
                lag: 0,
                correlation: 0.0,
            }
        };
        let periodic = pitch.lag > 0 && pitch.correlation >= self.correlation_threshold;
        let (jump, fade, kind) = if level < self.quiet_mean_square {
            let fade = self.quiet_fade(n);
            let cap = self.quiet_cap.min(n - fade);
            let jump = if periodic && pitch.lag <= cap {
                cap / pitch.lag * pitch.lag
            } else {
                cap
            };
            (jump, fade, StretchKind::Quiet)
        } else if periodic {
            let kind = StretchKind::Periodic {
                period: pitch.lag,
                correlation: pitch.correlation,
            };
            (pitch.lag, pitch.lag, kind)
        } else {
            let kind = StretchKind::NotPeriodic {
                correlation: pitch.correlation,
            };
            return Ok(copy(out, kind));
        };
        if jump == 0 {
            return Ok(copy(out, kind));
        }
        // Shorten: fade from x[0..] to x[jump..]; lengthen: fade from x[jump..] back to x[0..].
        let (from, to) = match direction {
            Direction::Shorten => (0, jump),
            Direction::Lengthen => (jump, 0),
        };
        let written = splice(x, from, to, fade, out);
        // Both are at most 2 * n and n is a slice length: they fit in isize.
        let changed = written as isize - n as isize;
        Ok(StretchResult {
            written,
            changed,
            kind,
            crossfade_start: from,
            crossfade_len: fade,
        })
    }

    fn quiet_fade(&self, input_len: usize) -> usize {
        self.quiet_fade.min(input_len / 2)
    }

    /// Finds the lag `L` in `min_lag..=min(lag_cap, len / 2)` that best correlates
    /// `x[0..L]` with `x[L..2L]`. Needs `x.len() >= min_input_len()` and
    /// `lag_cap >= min_lag`.
    fn find_pitch(&mut self, x: &[f32]) -> Pitch {
        let hi = self.lag_cap.min(x.len() / 2);
        let seg = &x[..2 * hi];
        let d = self.decimation;

        self.energy[0] = 0.0;
        for (i, &v) in seg.iter().enumerate() {
            self.energy[i + 1] = self.energy[i] + f64::from(v) * f64::from(v);
        }

        // Box-car average then keep one in d: a crude anti-alias filter is enough for
        // candidate lags, the full-rate refinement decides.
        let m = seg.len() / d;
        let inv_d = 1.0 / d as f32;
        for (c, chunk) in self.coarse[..m].iter_mut().zip(seg.chunks_exact(d)) {
            *c = chunk.iter().sum::<f32>() * inv_d;
        }
        self.coarse_energy[0] = 0.0;
        for i in 0..m {
            let v = f64::from(self.coarse[i]);
            self.coarse_energy[i + 1] = self.coarse_energy[i] + v * v;
        }

        // min_lag <= hi, so lo <= hi_c; 2 * hi_c <= m.
        let lo = (self.min_lag / d).max(1);
        let hi_c = hi / d;
        for lag in lo..=hi_c {
            let dot = dot(&self.coarse[..lag], &self.coarse[lag..2 * lag]);
            let e = &self.coarse_energy;
            self.coarse_corr[lag] = ncc(dot, e[lag] - e[0], e[2 * lag] - e[lag]);
        }

        // The best few local maxima of the coarse correlation.
        let mut peaks = [(f32::NEG_INFINITY, 0usize); CANDIDATES];
        for lag in lo..=hi_c {
            let c = self.coarse_corr[lag];
            let left = if lag > lo {
                self.coarse_corr[lag - 1]
            } else {
                f32::NEG_INFINITY
            };
            let right = if lag < hi_c {
                self.coarse_corr[lag + 1]
            } else {
                f32::NEG_INFINITY
            };
            // NaN compares false: a NaN peak is never taken.
            if c > 0.0
                && c >= left
                && c > right
                && let Some(slot) = peaks.iter().position(|&(v, _)| c > v)
            {
                peaks.copy_within(slot..CANDIDATES - 1, slot + 1);
                peaks[slot] = (c, lag);
            }
        }

        // Refine each peak at full rate within one coarse step.
        let mut refined = [(f32::NEG_INFINITY, 0usize); CANDIDATES];
        for (r, &(_, coarse_lag)) in refined.iter_mut().zip(peaks.iter()) {
            if coarse_lag == 0 {
                continue;
            }
            let first = (coarse_lag * d).saturating_sub(d).max(self.min_lag);
            let last = (coarse_lag * d + d).min(hi);
            for lag in first..=last {
                let dot = dot(&seg[..lag], &seg[lag..2 * lag]);
                let e = &self.energy;
                let c = ncc(dot, e[lag] - e[0], e[2 * lag] - e[lag]);
                if c > r.0 {
                    *r = (c, lag);
                }
            }
        }

        let best = refined.iter().copied().filter(|&(_, lag)| lag > 0).fold(
            (f32::NEG_INFINITY, 0usize),
            |b, r| if r.0 > b.0 { r } else { b },
        );
        if best.1 == 0 {
            return Pitch {
                lag: 0,
                correlation: 0.0,
            };
        }
        let floor = (best.0 - OCTAVE_MARGIN).max(self.correlation_threshold);
        let chosen = refined
            .iter()
            .copied()
            .filter(|&(c, lag)| lag > 0 && c >= floor)
            .min_by_key(|&(_, lag)| lag)
            .unwrap_or(best);
        Pitch {
            lag: chosen.1,
            correlation: chosen.0,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    Shorten,
    Lengthen,
}

fn db_to_mean_square(dbfs: f32) -> f64 {
    10f64.powf(f64::from(dbfs) / 10.0)
}

/// Mean of x^2; NaN if the input holds NaN or infinities (so it is never "quiet").
fn mean_square(x: &[f32]) -> f64 {
    let sum: f64 = x.iter().map(|&v| f64::from(v) * f64::from(v)).sum();
    let ms = sum / x.len().max(1) as f64;
    if ms.is_finite() { ms } else { f64::NAN }
}

/// Normalised cross-correlation from a dot product and the two energies; 0 when either
/// segment is silent, NaN stays NaN (and never passes a threshold).
fn ncc(dot: f64, energy_a: f64, energy_b: f64) -> f32 {
    let denominator = (energy_a * energy_b).sqrt();
    if denominator > 1e-20 {
        (dot / denominator) as f32
    } else if denominator.is_nan() {
        f32::NAN
    } else {
        0.0
    }
}

/// Dot product of two equally long slices, in eight f32 lanes (vectorises) summed in f64.
fn dot(a: &[f32], b: &[f32]) -> f64 {
    let mut lanes = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    let tail: f64 = ra.iter().zip(rb).map(|(&x, &y)| f64::from(x * y)).sum();
    lanes.iter().map(|&v| f64::from(v)).sum::<f64>() + tail
}

/// Writes `x[..from]`, a raised-cosine cross-fade from `x[from..from + fade]` to
/// `x[to..to + fade]`, then `x[to + fade..]`; returns the samples written
/// (`x.len() + from - to`). The caller guarantees both fade ranges lie inside `x`.
fn splice(x: &[f32], from: usize, to: usize, fade: usize, out: &mut [f32]) -> usize {
    debug_assert!(from.max(to) + fade <= x.len());
    out[..from].copy_from_slice(&x[..from]);
    // w(i) = (1 + cos(pi * (i + 1) / (fade + 1))) / 2 falls from just under 1 to just
    // over 0; the implied w = 1 before and w = 0 after make both joins continuous.
    // The angle advances by a rotation (exact to ~1e-13 over 2000 steps).
    let step = PI / (fade + 1) as f64;
    let (sin_step, cos_step) = step.sin_cos();
    let (mut sin, mut cos) = (sin_step, cos_step);
    for ((o, &a), &b) in out[from..from + fade]
        .iter_mut()
        .zip(&x[from..from + fade])
        .zip(&x[to..to + fade])
    {
        let w = (0.5 * (1.0 + cos)) as f32;
        *o = b + w * (a - b);
        (cos, sin) = (
            cos * cos_step - sin * sin_step,
            sin * cos_step + cos * sin_step,
        );
    }
    let tail = &x[to + fade..];
    let start = from + fade;
    out[start..start + tail.len()].copy_from_slice(tail);
    start + tail.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const RATES: [u32; 4] = [8_000, 16_000, 24_000, 48_000];

    fn tone(fs: u32, freq: f64, amplitude: f64, len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (amplitude * (2.0 * PI * freq * i as f64 / f64::from(fs)).sin()) as f32)
            .collect()
    }

    fn max_first_difference(y: &[f32]) -> f32 {
        y.windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f32::max)
    }

    fn second_differences(y: &[f32]) -> impl Iterator<Item = f32> + '_ {
        y.windows(3).map(|w| (w[2] - 2.0 * w[1] + w[0]).abs())
    }

    fn max_second_difference(y: &[f32]) -> f32 {
        second_differences(y).fold(0.0, f32::max)
    }

    fn white_noise(seed: u64, amplitude: f32, len: usize) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..len)
            .map(|_| rng.random_range(-amplitude..amplitude))
            .collect()
    }

    fn speech_16k() -> Vec<f32> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/audio/speech-16k.wav"
        );
        let mut reader = hound::WavReader::open(path).expect("test asset present");
        assert_eq!(reader.spec().sample_rate, 16_000);
        reader
            .samples::<i16>()
            .map(|s| f32::from(s.expect("valid wav")) / 32768.0)
            .collect()
    }

    /// Streams `signal` in `chunk`-sample pieces through `op` and concatenates the output.
    fn stream(
        ts: &mut TimeStretcher,
        signal: &[f32],
        chunk: usize,
        mut op: impl FnMut(&mut TimeStretcher, &[f32], &mut [f32]) -> StretchResult,
    ) -> (Vec<f32>, Vec<StretchResult>) {
        let mut out = Vec::new();
        let mut results = Vec::new();
        let mut buf = vec![0.0; 3 * chunk];
        for piece in signal.chunks_exact(chunk) {
            let r = op(ts, piece, &mut buf);
            out.extend_from_slice(&buf[..r.written]);
            results.push(r);
        }
        (out, results)
    }

    #[test]
    fn accelerate_removes_exactly_one_period_of_a_steady_tone_and_stays_phase_continuous() {
        for fs in RATES {
            let mut ts = TimeStretcher::new(fs).unwrap();
            let period = (fs / 200) as usize;
            let chunk = (fs / 1000 * 30) as usize;
            let signal = tone(fs, 200.0, 0.5, 20 * chunk);
            let (out, results) = stream(&mut ts, &signal, chunk, |ts, x, o| {
                ts.accelerate(x, o).unwrap()
            });
            for r in &results {
                assert_eq!(r.changed, -(period as isize), "{fs} Hz: {r:?}");
                assert!(matches!(r.kind, StretchKind::Periodic { .. }));
            }
            // Removing whole periods of a periodic signal leaves the ideal tone.
            let ideal = tone(fs, 200.0, 0.5, out.len());
            let error = out
                .iter()
                .zip(&ideal)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            let ratio = max_first_difference(&out) / max_first_difference(&signal);
            println!(
                "accelerate 200 Hz @ {fs}: removed {} x {period}, max |out - ideal| = {error:.2e}, \
                 max diff / tone max diff = {ratio:.4}",
                results.len()
            );
            assert!(error < 1e-5, "{fs}: {error}");
            assert!(ratio < 1.0001, "{fs}: {ratio}");
        }
    }

    #[test]
    fn expand_inserts_exactly_one_period_of_a_steady_tone_and_stays_phase_continuous() {
        for fs in RATES {
            let mut ts = TimeStretcher::new(fs).unwrap();
            let period = (fs / 200) as usize;
            let chunk = (fs / 1000 * 30) as usize;
            let signal = tone(fs, 200.0, 0.5, 20 * chunk);
            let (out, results) =
                stream(&mut ts, &signal, chunk, |ts, x, o| ts.expand(x, o).unwrap());
            for r in &results {
                assert_eq!(r.changed, period as isize, "{fs} Hz: {r:?}");
            }
            let ideal = tone(fs, 200.0, 0.5, out.len());
            let error = out
                .iter()
                .zip(&ideal)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            let ratio = max_first_difference(&out) / max_first_difference(&signal);
            println!(
                "expand 200 Hz @ {fs}: inserted {} x {period}, max |out - ideal| = {error:.2e}, \
                 max diff / tone max diff = {ratio:.4}",
                results.len()
            );
            assert_eq!(out.len(), signal.len() + results.len() * period);
            assert!(error < 1e-5, "{fs}: {error}");
            assert!(ratio < 1.0001, "{fs}: {ratio}");
        }
    }

    #[test]
    fn a_tone_with_a_fractional_period_is_spliced_without_a_click() {
        // 233 Hz at 16 kHz: a 68.67-sample period, so every splice is 1/3 sample off.
        let fs = 16_000;
        let mut ts = TimeStretcher::new(fs).unwrap();
        let signal = tone(fs, 233.0, 0.5, 20 * 480);
        let mut flip = false;
        let (out, results) = stream(&mut ts, &signal, 480, |ts, x, o| {
            flip = !flip;
            if flip {
                ts.accelerate(x, o).unwrap()
            } else {
                ts.expand(x, o).unwrap()
            }
        });
        let periods: Vec<isize> = results.iter().map(|r| r.changed).collect();
        let d1 = max_first_difference(&out) / max_first_difference(&signal);
        let d2 = max_second_difference(&out) / max_second_difference(&signal);
        println!(
            "233 Hz @ 16k alternating: changes {periods:?}, max diff ratio {d1:.4}, \
             max 2nd diff ratio {d2:.4}"
        );
        assert!(periods.iter().all(|&c| c.abs() == 69), "{periods:?}");
        assert!(d1 < 1.01, "{d1}");
        assert!(d2 < 1.05, "{d2}");
    }

    #[test]
    fn the_shortest_period_is_preferred_over_its_multiples() {
        // 100 Hz at 16 kHz in 60 ms: lags 160 and 320 correlate equally well.
        let mut ts = TimeStretcher::new(16_000).unwrap();
        let signal = tone(16_000, 100.0, 0.3, 960);
        let mut out = vec![0.0; ts.max_expand_len(960)];
        let r = ts.accelerate(&signal, &mut out).unwrap();
        assert_eq!(r.changed, -160, "{r:?}");
        let r = ts.expand(&signal, &mut out).unwrap();
        assert_eq!(r.changed, 160, "{r:?}");
    }

    /// Click measure at one splice: the largest first and second difference of the output
    /// over the cross-fade and its two joins, relative to the largest in the input chunk
    /// (including its join with the previous chunk).
    fn splice_ratios(out: &[f32], at: usize, len: usize, input_ctx: &[f32]) -> (f32, f32) {
        let lo = at.saturating_sub(2);
        let hi = (at + len + 2).min(out.len());
        let region = &out[lo..hi];
        (
            max_first_difference(region) / max_first_difference(input_ctx),
            max_second_difference(region) / max_second_difference(input_ctx),
        )
    }

    #[test]
    fn speech_in_30ms_chunks_is_stretched_without_clicks() {
        let speech = speech_16k();
        let mut ts = TimeStretcher::new(16_000).unwrap();
        let chunk = 480;
        let mut out: Vec<f32> = Vec::new();
        let mut buf = vec![0.0; ts.max_expand_len(chunk)];
        let (mut removed, mut inserted) = (0usize, 0usize);
        let (mut periodic_removed, mut periodic_inserted) = (0usize, 0usize);
        let (mut periodic, mut quiet, mut refused) = (0, 0, 0);
        let (mut worst_d1, mut worst_d2, mut worst_quiet_d1) = (0f32, 0f32, 0f32);
        let mut hard_cut_d1 = Vec::new();
        let mut ratios_d1 = Vec::new();
        for (i, piece) in speech.chunks_exact(chunk).enumerate() {
            let r = if i % 2 == 0 {
                ts.accelerate(piece, &mut buf).unwrap()
            } else {
                ts.expand(piece, &mut buf).unwrap()
            };
            assert_eq!(r.written as isize, chunk as isize + r.changed);
            let base = out.len();
            out.extend_from_slice(&buf[..r.written]);
            match r.kind {
                StretchKind::Periodic { .. } => periodic += 1,
                StretchKind::Quiet => quiet += 1,
                _ => refused += 1,
            }
            let amount = r.changed.unsigned_abs();
            let by_period = usize::from(matches!(r.kind, StretchKind::Periodic { .. }));
            if r.changed < 0 {
                removed += amount;
                periodic_removed += amount * by_period;
            } else {
                inserted += amount;
                periodic_inserted += amount * by_period;
            }
            if r.changed == 0 {
                continue;
            }
            if r.kind == StretchKind::Quiet {
                let ctx = &speech[(i * chunk).saturating_sub(2)..(i + 1) * chunk];
                let (d1, _) = splice_ratios(&out, base + r.crossfade_start, r.crossfade_len, ctx);
                worst_quiet_d1 = worst_quiet_d1.max(d1);
                continue;
            }
            // The source of the splice: both faded periods, with the samples on either side
            // (the first one from the previous chunk).
            let lag = r.changed.unsigned_abs();
            let ctx = &speech[(i * chunk).saturating_sub(2)..i * chunk + 2 * lag + 2];
            let (d1, d2) = splice_ratios(&out, base + r.crossfade_start, r.crossfade_len, ctx);
            worst_d1 = worst_d1.max(d1);
            worst_d2 = worst_d2.max(d2);
            ratios_d1.push(d1);
            // Control: a hard cut of half a period at the same place, same measure.
            let (cut, jump) = (lag / 2, lag / 2);
            let join = (piece[cut + jump] - piece[cut - 1]).abs();
            hard_cut_d1.push(join / max_first_difference(&piece[cut - 1..=cut + jump]));
        }
        ratios_d1.sort_by(f32::total_cmp);
        hard_cut_d1.sort_by(f32::total_cmp);
        let median = |v: &[f32]| v[v.len() / 2];
        println!(
            "speech 16k, 30 ms chunks alternating: {} chunks, {periodic} periodic splices, \
             {quiet} quiet, {refused} unchanged; removed {removed} samples ({:.0} ms), \
             inserted {inserted} ({:.0} ms); by periodic splices: removed {periodic_removed}, \
             inserted {periodic_inserted}",
            speech.len() / chunk,
            removed as f64 / 16.0,
            inserted as f64 / 16.0
        );
        println!(
            "periodic splices, max |diff| at the splice / max |diff| of its source: median \
             {:.3}, worst {worst_d1:.3}; same for the 2nd difference: worst {worst_d2:.3}; \
             quiet splices / their chunk: worst {worst_quiet_d1:.3}",
            median(&ratios_d1)
        );
        println!(
            "control, a hard cut of half a period at the same places: median {:.3}, worst {:.3}",
            median(&hard_cut_d1),
            hard_cut_d1[hard_cut_d1.len() - 1]
        );
        assert!(periodic >= 100, "too few periodic splices: {periodic}");
        assert!(quiet >= 20, "too few quiet splices: {quiet}");
        assert!(worst_d1 <= 1.1, "click: first difference ratio {worst_d1}");
        assert!(
            worst_d2 <= 1.25,
            "click: second difference ratio {worst_d2}"
        );
        assert!(worst_quiet_d1 <= 1.1, "click in quiet: {worst_quiet_d1}");
        // The measure does see clicks.
        assert!(hard_cut_d1[hard_cut_d1.len() - 1] > 5.0);
    }

    #[test]
    fn silence_is_shortened_by_far_more_than_a_pitch_period() {
        for fs in RATES {
            let mut ts = TimeStretcher::new(fs).unwrap();
            let n = (fs / 1000 * 30) as usize;
            let silence = vec![0.0; n];
            let mut out = vec![1.0; n];
            let r = ts.accelerate(&silence, &mut out).unwrap();
            println!("silence 30 ms @ {fs}: removed {} samples", -r.changed);
            assert_eq!(r.kind, StretchKind::Quiet);
            // All but the 5 ms cross-fade.
            assert_eq!(r.changed, -((n - n / 6) as isize));
            assert!(out[..r.written].iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn quiet_noise_is_spliced_without_a_jump_beyond_its_own_differences() {
        let mut ts = TimeStretcher::new(16_000).unwrap();
        let mut out = vec![0.0; ts.max_expand_len(480)];
        let (mut worst, mut total_removed, mut total_inserted) = (0f32, 0, 0);
        for seed in 0..50 {
            // About -60 dBFS RMS.
            let noise = white_noise(seed, 0.0017, 480);
            let own = max_first_difference(&noise);
            let r = ts.accelerate(&noise, &mut out).unwrap();
            assert_eq!(r.kind, StretchKind::Quiet);
            total_removed += -r.changed;
            worst = worst.max(max_first_difference(&out[..r.written]) / own);
            let r = ts.expand(&noise, &mut out).unwrap();
            assert_eq!(r.kind, StretchKind::Quiet);
            total_inserted += r.changed;
            worst = worst.max(max_first_difference(&out[..r.written]) / own);
        }
        println!(
            "quiet white noise (-60 dBFS), 50 x 30 ms @ 16k: removed {total_removed}, \
             inserted {total_inserted}, worst max diff / noise max diff = {worst:.3}"
        );
        assert!(worst <= 1.0, "{worst}");
    }

    #[test]
    fn loud_white_noise_is_left_unchanged() {
        let mut ts = TimeStretcher::new(16_000).unwrap();
        let mut out = vec![0.0; ts.max_expand_len(480)];
        let mut best = f32::NEG_INFINITY;
        for seed in 0..50 {
            let noise = white_noise(seed, 0.5, 480);
            for lengthen in [false, true] {
                let r = if lengthen {
                    ts.expand(&noise, &mut out).unwrap()
                } else {
                    ts.accelerate(&noise, &mut out).unwrap()
                };
                let StretchKind::NotPeriodic { correlation } = r.kind else {
                    panic!("noise spliced: {r:?}");
                };
                best = best.max(correlation);
                assert_eq!(r.changed, 0);
                assert_eq!(&out[..r.written], &noise[..]);
            }
        }
        println!("loud white noise: best pitch correlation over 50 chunks {best:.3}");
    }

    #[test]
    fn white_noise_forced_through_a_splice_never_jumps_beyond_its_own_differences() {
        // Threshold 0: the splice runs on uncorrelated audio; the cross-fade must still
        // stay within the noise's own sample-to-sample differences.
        let mut ts = TimeStretcher::new(16_000).unwrap();
        ts.set_correlation_threshold(0.0);
        let mut out = vec![0.0; ts.max_expand_len(480)];
        let mut worst = 0f32;
        let mut spliced = 0;
        for seed in 0..50 {
            let noise = white_noise(100 + seed, 0.5, 480);
            let own = max_first_difference(&noise);
            for lengthen in [false, true] {
                let r = if lengthen {
                    ts.expand(&noise, &mut out).unwrap()
                } else {
                    ts.accelerate(&noise, &mut out).unwrap()
                };
                if r.changed != 0 {
                    spliced += 1;
                }
                worst = worst.max(max_first_difference(&out[..r.written]) / own);
            }
        }
        println!(
            "white noise, threshold 0: {spliced}/100 calls spliced, worst max diff / \
             noise max diff = {worst:.3}"
        );
        assert_eq!(spliced, 100);
        assert!(worst <= 1.0, "{worst}");
    }

    #[test]
    fn inputs_too_short_are_returned_unchanged() {
        for fs in RATES {
            let mut ts = TimeStretcher::new(fs).unwrap();
            let mut out = vec![0.0; 4 * ts.min_input_len()];
            for len in [0, 1, ts.min_input_len() - 1] {
                let x = tone(fs, 200.0, 0.5, len);
                let r = ts.accelerate(&x, &mut out).unwrap();
                assert_eq!(
                    (r.written, r.changed, r.kind),
                    (len, 0, StretchKind::TooShort)
                );
                assert_eq!(&out[..len], &x[..]);
                let r = ts.expand(&x, &mut out).unwrap();
                assert_eq!(
                    (r.written, r.changed, r.kind),
                    (len, 0, StretchKind::TooShort)
                );
            }
            // The shortest input that can change: two minimum periods of a 400 Hz tone.
            let len = ts.min_input_len();
            let x = tone(fs, f64::from(fs) / ts.min_period() as f64, 0.5, len);
            let r = ts.accelerate(&x, &mut out).unwrap();
            assert_eq!(r.changed, -(ts.min_period() as isize), "{fs}: {r:?}");
        }
    }

    #[test]
    fn an_output_buffer_too_small_is_a_typed_error() {
        let mut ts = TimeStretcher::new(16_000).unwrap();
        let x = tone(16_000, 200.0, 0.5, 480);
        let mut small = vec![0.0; 479];
        assert_eq!(
            ts.accelerate(&x, &mut small),
            Err(CodecError::BufferTooSmall {
                needed: 480,
                got: 479
            })
        );
        // Expand needs room for the largest possible insertion, whatever the content.
        let needed = ts.max_expand_len(480);
        assert_eq!(needed, 480 + 400);
        let mut short = vec![0.0; needed - 1];
        assert_eq!(
            ts.expand(&x, &mut short),
            Err(CodecError::BufferTooSmall {
                needed,
                got: needed - 1
            })
        );
    }

    #[test]
    fn unsupported_sample_rates_are_rejected() {
        for fs in [0, 4_000, 7_999, 48_001, 96_000] {
            assert!(matches!(
                TimeStretcher::new(fs),
                Err(CodecError::BadConfig { .. })
            ));
        }
        assert!(TimeStretcher::new(44_100).is_ok());
    }

    #[test]
    fn hostile_input_never_panics_and_non_finite_audio_is_never_spliced() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for fs in RATES {
            let mut ts = TimeStretcher::new(fs).unwrap();
            let mut out = vec![0.0; 4 * fs as usize / 10];
            for _ in 0..200 {
                let len = rng.random_range(0..fs as usize / 10);
                let mut x: Vec<f32> = (0..len).map(|_| rng.random_range(-1.0..1.0)).collect();
                if len > 0 && rng.random_bool(0.3) {
                    let at = rng.random_range(0..len);
                    x[at] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][at % 3];
                }
                for lengthen in [false, true] {
                    let r = if lengthen {
                        ts.expand(&x, &mut out).unwrap()
                    } else {
                        ts.accelerate(&x, &mut out).unwrap()
                    };
                    assert_eq!(r.written as isize, len as isize + r.changed);
                    if x.iter().any(|v| !v.is_finite()) {
                        assert_eq!(r.changed, 0, "{r:?}");
                    }
                }
            }
        }
    }
}
