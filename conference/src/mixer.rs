//! The N-1 mixer and the limiter.
//!
//! A room mixes at the engine rate (48 kHz) on its frame clock (20 ms, or 10 ms). Each
//! tick the talkers' frames are added once, each with its input gain, into a *total*; each
//! talker's own (gained) contribution is kept beside it, so its N-1 mix (everyone but
//! itself) is `total - own`, one subtraction per sample whatever the number of talkers,
//! instead of re-summing N-1 frames per talker. Listeners share the total.
//!
//! Every output mix then goes through its own [`Limiter`]: a sum of talkers can exceed
//! full scale, and the codecs would otherwise clip it (or, in integer paths, wrap). The
//! limiter has no look-ahead beyond the frame being output:
//!
//! - the gain is computed per frame from the frame's peak: the *target* is
//!   `threshold / peak` (at most 1);
//! - a lower target is reached within [`LimiterConfig::attack`] (1 ms) from the start of
//!   the frame, a higher one approached with a one-pole [`LimiterConfig::release`] (150 ms)
//!   per frame; the gain moves linearly sample by sample, so it never steps;
//! - the few samples at the start of a sudden loud frame, before the attack ramp is
//!   down, go through a soft knee: linear up to [`LimiterConfig::threshold`] (0.9, about
//!   -0.9 dBFS), then a tanh curve with a continuous slope that tends to, and never
//!   reaches, full scale. Nothing is ever hard-clipped and every output sample is within
//!   (-1, 1), so the integer conversion of any codec cannot wrap.
//!
//! All buffers are sized at construction; a tick allocates nothing.

use std::time::Duration;

/// Why a mixer or limiter configuration was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MixerError {
    /// A setting out of range.
    #[error("bad mixer setting: {0}")]
    BadConfig(&'static str),
    /// An input frame of the wrong length.
    #[error("frame of {got} samples, the mixer works in frames of {expected}")]
    BadFrame {
        /// Samples per frame.
        expected: usize,
        /// Samples passed.
        got: usize,
    },
    /// A talker index beyond the mixer's capacity.
    #[error("talker {index} beyond the mixer's {capacity}")]
    NoSuchTalker {
        /// The index passed.
        index: usize,
        /// Talkers the mixer was built for.
        capacity: usize,
    },
}

/// Tuning of a [`Limiter`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimiterConfig {
    /// Peak level the gain aims for, and the start of the soft knee (0 < t < 1).
    pub threshold: f32,
    /// Time to reach a lower gain.
    pub attack: Duration,
    /// Time constant of the return to a higher gain.
    pub release: Duration,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterConfig {
            threshold: 0.9,
            attack: Duration::from_millis(1),
            release: Duration::from_millis(150),
        }
    }
}

/// A per-output peak limiter (see the module docs).
#[derive(Debug, Clone)]
pub struct Limiter {
    threshold: f32,
    attack_samples: usize,
    release_coef: f32,
    gain: f32,
}

impl Limiter {
    /// A limiter for frames of `frame_samples` at `sample_rate`.
    pub fn new(
        config: LimiterConfig,
        sample_rate: u32,
        frame_samples: usize,
    ) -> Result<Self, MixerError> {
        if !(config.threshold > 0.0 && config.threshold < 1.0) {
            return Err(MixerError::BadConfig("limiter threshold must be in (0, 1)"));
        }
        if sample_rate == 0 || frame_samples == 0 {
            return Err(MixerError::BadConfig(
                "sample rate and frame must be non-zero",
            ));
        }
        let frame = frame_samples as f32 / sample_rate as f32;
        let release = config.release.as_secs_f32();
        if release <= 0.0 {
            return Err(MixerError::BadConfig("limiter release must be non-zero"));
        }
        let attack_samples = (config.attack.as_secs_f32() * sample_rate as f32).round() as usize;
        Ok(Limiter {
            threshold: config.threshold,
            attack_samples: attack_samples.clamp(1, frame_samples),
            release_coef: (-frame / release).exp(),
            gain: 1.0,
        })
    }

    /// The gain at the end of the last frame.
    pub fn gain(&self) -> f32 {
        self.gain
    }

    /// Forgets the gain history (a new stream starts).
    pub fn reset(&mut self) {
        self.gain = 1.0;
    }

    /// Limits one frame in place.
    pub fn process(&mut self, frame: &mut [f32]) {
        let mut peak = 0.0f32;
        for x in frame.iter_mut() {
            if !x.is_finite() {
                *x = 0.0;
            }
            peak = peak.max(x.abs());
        }
        let target = if peak > self.threshold {
            self.threshold / peak
        } else {
            1.0
        };
        let start = self.gain;
        let (end, ramp) = if target < start {
            (target, self.attack_samples.min(frame.len()))
        } else {
            // Released towards the target, at most to unity.
            let g = target + self.release_coef * (start - target);
            (g.min(1.0), frame.len())
        };
        let step = if ramp > 0 {
            (end - start) / ramp as f32
        } else {
            0.0
        };
        let t = self.threshold;
        for (i, x) in frame.iter_mut().enumerate() {
            let g = if i < ramp {
                start + step * (i + 1) as f32
            } else {
                end
            };
            *x = soft_knee(*x * g, t);
        }
        self.gain = end;
    }
}

/// Linear up to `t`, then `t + (1 - t) tanh((|x| - t) / (1 - t))`: the slope is 1 at the
/// knee and falls smoothly; the output never reaches 1.
fn soft_knee(x: f32, t: f32) -> f32 {
    let a = x.abs();
    if a <= t {
        return x;
    }
    let room = 1.0 - t;
    let y = t + room * ((a - t) / room).tanh();
    // tanh rounds to 1.0 in f32 for large arguments; stay strictly inside full scale.
    y.min(1.0 - f32::EPSILON).copysign(x)
}

/// Sums talkers once and derives every N-1 mix by subtraction. See the module docs.
#[derive(Debug, Clone)]
pub struct Mixer {
    frame_samples: usize,
    total: Vec<f32>,
    /// Each talker's gained frame, by talker index.
    contributions: Vec<Vec<f32>>,
    /// Which talker indices were added this frame.
    present: Vec<bool>,
    talkers: usize,
}

impl Mixer {
    /// A mixer for at most `max_talkers` talkers of `frame_samples` per frame.
    pub fn new(frame_samples: usize, max_talkers: usize) -> Result<Self, MixerError> {
        if frame_samples == 0 || max_talkers == 0 {
            return Err(MixerError::BadConfig(
                "frame_samples and max_talkers must be non-zero",
            ));
        }
        Ok(Mixer {
            frame_samples,
            total: vec![0.0; frame_samples],
            contributions: vec![vec![0.0; frame_samples]; max_talkers],
            present: vec![false; max_talkers],
            talkers: 0,
        })
    }

    /// Samples per frame.
    pub fn frame_samples(&self) -> usize {
        self.frame_samples
    }

    /// Starts a new frame with no talkers.
    pub fn begin(&mut self) {
        self.total.fill(0.0);
        self.present.fill(false);
        self.talkers = 0;
    }

    /// Adds talker `index`'s frame with linear `gain` to this frame's mix.
    pub fn add(&mut self, index: usize, frame: &[f32], gain: f32) -> Result<(), MixerError> {
        if frame.len() != self.frame_samples {
            return Err(MixerError::BadFrame {
                expected: self.frame_samples,
                got: frame.len(),
            });
        }
        let capacity = self.contributions.len();
        let Some(own) = self.contributions.get_mut(index) else {
            return Err(MixerError::NoSuchTalker { index, capacity });
        };
        if self.present[index] {
            // Added twice in one frame: take the previous contribution out first.
            for (t, o) in self.total.iter_mut().zip(own.iter()) {
                *t -= *o;
            }
        } else {
            self.talkers += 1;
        }
        self.present[index] = true;
        for ((t, o), &x) in self.total.iter_mut().zip(own.iter_mut()).zip(frame) {
            let v = if x.is_finite() { x * gain } else { 0.0 };
            *o = v;
            *t += v;
        }
        Ok(())
    }

    /// Talkers added this frame.
    pub fn talkers(&self) -> usize {
        self.talkers
    }

    /// The sum of every talker this frame (unlimited).
    pub fn total(&self) -> &[f32] {
        &self.total
    }

    /// Writes the full mix times `gain` into `out` (unlimited).
    pub fn mix_all(&self, gain: f32, out: &mut [f32]) -> Result<(), MixerError> {
        self.check_out(out)?;
        for (o, &t) in out.iter_mut().zip(&self.total) {
            *o = t * gain;
        }
        Ok(())
    }

    /// Writes the mix without talker `index` (N-1) times `gain` into `out` (unlimited).
    /// A talker not added this frame gets the full mix.
    pub fn mix_without(&self, index: usize, gain: f32, out: &mut [f32]) -> Result<(), MixerError> {
        self.check_out(out)?;
        let capacity = self.contributions.len();
        let Some(own) = self.contributions.get(index) else {
            return Err(MixerError::NoSuchTalker { index, capacity });
        };
        if !self.present[index] {
            return self.mix_all(gain, out);
        }
        for ((o, &t), &c) in out.iter_mut().zip(&self.total).zip(own) {
            *o = (t - c) * gain;
        }
        Ok(())
    }

    fn check_out(&self, out: &[f32]) -> Result<(), MixerError> {
        if out.len() != self.frame_samples {
            return Err(MixerError::BadFrame {
                expected: self.frame_samples,
                got: out.len(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: usize = 960;

    fn tone(freq: f32, amp: f32, offset: usize) -> Vec<f32> {
        (0..N)
            .map(|i| {
                amp * ((i + offset) as f32 * 2.0 * std::f32::consts::PI * freq / 48_000.0).sin()
            })
            .collect()
    }

    #[test]
    fn each_talkers_mix_is_everyone_else_and_listeners_get_everyone() {
        let mut m = Mixer::new(N, 3).unwrap();
        let frames = [
            tone(300.0, 0.2, 0),
            tone(500.0, 0.1, 0),
            tone(700.0, 0.3, 0),
        ];
        let gains = [1.0, 2.0, 0.5];
        m.begin();
        for (i, f) in frames.iter().enumerate() {
            m.add(i, f, gains[i]).unwrap();
        }
        let mut out = vec![0.0; N];
        for me in 0..3 {
            m.mix_without(me, 1.0, &mut out).unwrap();
            for s in 0..N {
                let want: f32 = (0..3)
                    .filter(|&j| j != me)
                    .map(|j| frames[j][s] * gains[j])
                    .sum();
                assert!((out[s] - want).abs() < 1e-6);
            }
        }
        m.mix_all(0.5, &mut out).unwrap();
        let want: f32 = (0..3).map(|j| frames[j][10] * gains[j]).sum::<f32>() * 0.5;
        assert!((out[10] - want).abs() < 1e-6);
        assert_eq!(m.talkers(), 3);
        assert!(matches!(
            m.add(3, &frames[0], 1.0),
            Err(MixerError::NoSuchTalker { .. })
        ));
        assert!(matches!(
            m.add(0, &frames[0][..10], 1.0),
            Err(MixerError::BadFrame { .. })
        ));
    }

    #[test]
    fn quiet_audio_passes_the_limiter_untouched() {
        let mut l = Limiter::new(LimiterConfig::default(), 48_000, N).unwrap();
        let input = tone(440.0, 0.5, 0);
        let mut x = input.clone();
        l.process(&mut x);
        assert_eq!(x, input);
        assert_eq!(l.gain(), 1.0);
    }

    #[test]
    fn a_loud_sum_is_limited_below_full_scale_without_flat_tops_and_released_afterwards() {
        let mut l = Limiter::new(LimiterConfig::default(), 48_000, N).unwrap();
        let mut peak = 0.0f32;
        let mut near_top = 0usize;
        let mut total = 0usize;
        let mut before = 1.0f32;
        for f in 0..50 {
            // Twenty full-scale tones summed: peaks near 20.
            let mut x = vec![0.0f32; N];
            for k in 0..20 {
                let t = tone(200.0 + 37.0 * k as f32, 1.0, f * N);
                for (a, b) in x.iter_mut().zip(&t) {
                    *a += b;
                }
            }
            let input = x.clone();
            l.process(&mut x);
            for (&y, &u) in x.iter().zip(&input) {
                // Below full scale, and never a wrap: same sign as the input, and smaller.
                assert!(y.abs() < 1.0);
                assert!(y == 0.0 || y.signum() == u.signum(), "{u} became {y}");
                assert!(y.abs() <= u.abs());
                peak = peak.max(y.abs());
                near_top += usize::from(y.abs() > 0.97);
                total += 1;
            }
            // After the onset the gain only ramps between its values at the frame edges:
            // the output keeps the input's shape.
            let g = l.gain();
            if f > 0 {
                let (lo, hi) = (g.min(before), g.max(before));
                for (&y, &u) in x.iter().zip(&input) {
                    if u.abs() > 0.01 {
                        let r = y / u;
                        assert!(
                            r >= lo - 1e-4 && r <= hi + 1e-4,
                            "gain {r} outside {lo}..{hi}"
                        );
                    }
                }
            }
            before = g;
        }
        assert!(peak > 0.8, "limited too hard: peak {peak}");
        // A hard clipper would leave many samples pinned at the top.
        assert!(
            (near_top as f64) < 0.001 * total as f64,
            "{near_top} of {total} samples near full scale"
        );
        let limited = l.gain();
        assert!(limited < 0.1);
        // Quiet again: the gain climbs back, smoothly, over the release time.
        for _ in 0..50 {
            let mut x = tone(440.0, 0.1, 0);
            l.process(&mut x);
        }
        assert!(l.gain() > 0.99, "gain {} after a second of quiet", l.gain());
    }

    #[test]
    fn non_finite_input_becomes_silence_not_noise() {
        let mut l = Limiter::new(LimiterConfig::default(), 48_000, 4).unwrap();
        let mut x = [f32::NAN, f32::INFINITY, 0.5, -0.5];
        l.process(&mut x);
        assert_eq!(x, [0.0, 0.0, 0.5, -0.5]);
    }
}
