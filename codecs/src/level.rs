//! Audio level (RFC 6464 / RFC 6465) and a per-stream voice activity detector.
//!
//! The room needs two things from every frame: its level, to send in the
//! `ssrc-audio-level` / `csrc-audio-level` RTP header extensions and to rank
//! speakers, and a voice/no-voice decision, to skip mixing silent legs.
//!
//! **Level** ([`audio_level`]): RFC 6464 section 3 expresses it in -dBov, 0 to
//! 127, where dBov is relative to the overload point of the system (a full-scale
//! square wave is 0 dBov, a full-scale sine -3 dBov) and 127 means -127 dBov or
//! quieter (silence). Following the reference implementation of RFC 6465
//! appendix A: the RMS of the frame's samples relative to the overload point,
//! `-20 log10(rms)`, clamped to 0..=127 and rounded to the nearest integer
//! (halves up). The overload point is this crate's full scale 1.0 (32768 as a
//! 16-bit sample); non-finite samples count as 0 and samples beyond full scale
//! as they are (the clamp makes them 0 dBov).
//!
//! **VAD** ([`Vad`]): energy against an adaptive noise floor, sans-IO (time is
//! counted in samples of the frames it is given). The floor is the minimum
//! frame level seen over the last [`VadConfig::floor_window_ms`] (minimum
//! statistics over ten sub-windows, so it follows a rising noise within that
//! window and a falling one at once, and speech pauses keep pulling it down);
//! before the first frame it is taken as `min_level_dbov`.
//! A frame is voiced when it is [`VadConfig::threshold_db`] above the floor and
//! above an absolute [`VadConfig::min_level_dbov`]; voice starts after
//! [`VadConfig::onset_ms`] of voiced frames and is held for
//! [`VadConfig::hangover_ms`] after the last one, so word endings and short
//! gaps are not clipped.

use crate::decoder::CodecError;

/// The RFC 6464 level that means silence (-127 dBov or below).
pub const SILENCE: u8 = 127;

/// The RMS level of `frame` in dBov (0.0 for full scale, `-inf` for silence).
pub fn rms_dbov(frame: &[f32]) -> f64 {
    if frame.is_empty() {
        return f64::NEG_INFINITY;
    }
    let sum: f64 = frame
        .iter()
        .map(|&x| {
            if x.is_finite() {
                f64::from(x) * f64::from(x)
            } else {
                0.0
            }
        })
        .sum();
    10.0 * (sum / frame.len() as f64).log10()
}

/// The RFC 6464 audio level of `frame`: 0 (0 dBov, loudest) ..= 127 (silence).
pub fn audio_level(frame: &[f32]) -> u8 {
    level_from_dbov(rms_dbov(frame))
}

/// Converts a dBov value to the RFC 6464 level (negated, clamped, rounded).
pub fn level_from_dbov(dbov: f64) -> u8 {
    if dbov.is_nan() {
        return SILENCE;
    }
    // Clamped to 0..=127 first, so the cast cannot truncate.
    (-dbov).clamp(0.0, 127.0).round() as u8
}

/// The one-byte RFC 6464 header extension element: the V (voice) bit and the
/// 7-bit level.
pub fn extension_byte(level: u8, voice: bool) -> u8 {
    (if voice { 0x80 } else { 0 }) | level.min(SILENCE)
}

/// Tuning of a [`Vad`]. The defaults suit 10 or 20 ms frames of speech.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadConfig {
    /// A frame is voiced at least this far above the noise floor (dB).
    pub threshold_db: f32,
    /// Frames below this level (dBov) are never voiced.
    pub min_level_dbov: f32,
    /// Voiced frames needed before voice starts (ms).
    pub onset_ms: u32,
    /// How long voice is held after the last voiced frame (ms).
    pub hangover_ms: u32,
    /// The noise floor is the quietest frame within this window (ms).
    pub floor_window_ms: u32,
}

impl Default for VadConfig {
    fn default() -> Self {
        Self {
            threshold_db: 10.0,
            min_level_dbov: -60.0,
            onset_ms: 20,
            hangover_ms: 200,
            floor_window_ms: 2000,
        }
    }
}

/// What [`Vad::process`] concluded about one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadDecision {
    /// Voice is active (after onset and including hangover).
    pub voice: bool,
    /// The frame's level in dBov.
    pub level_dbov: f32,
    /// The noise floor estimate in dBov after this frame.
    pub noise_floor_dbov: f32,
}

impl VadDecision {
    /// The frame's RFC 6464 level.
    pub fn audio_level(&self) -> u8 {
        level_from_dbov(f64::from(self.level_dbov))
    }
}

const SUB_WINDOWS: usize = 10;
/// The level given to digital silence.
const FLOOR_DBOV: f32 = -127.0;

/// Energy voice activity detector for one stream.
#[derive(Debug, Clone)]
pub struct Vad {
    config: VadConfig,
    sample_rate: u32,
    /// Minimum level of each completed sub-window, oldest overwritten first.
    minima: [f32; SUB_WINDOWS],
    filled: usize,
    next: usize,
    /// Minimum of the sub-window in progress and its length so far (samples).
    current_min: f32,
    current_len: u64,
    sub_window_len: u64,
    /// Voiced samples in a row, and samples left of the hangover.
    onset_run: u64,
    onset_len: u64,
    hang_left: u64,
    hangover_len: u64,
    active: bool,
}

impl Vad {
    /// A detector for frames at `sample_rate` Hz.
    pub fn new(sample_rate: u32, config: VadConfig) -> Result<Self, CodecError> {
        if sample_rate == 0 || sample_rate > 384_000 {
            return Err(CodecError::BadConfig {
                what: "sample_rate",
                value: i64::from(sample_rate),
            });
        }
        if config.floor_window_ms < SUB_WINDOWS as u32 {
            return Err(CodecError::BadConfig {
                what: "floor_window_ms",
                value: i64::from(config.floor_window_ms),
            });
        }
        if !config.threshold_db.is_finite() || !config.min_level_dbov.is_finite() {
            return Err(CodecError::BadConfig {
                what: "threshold_db or min_level_dbov (not finite)",
                value: 0,
            });
        }
        let samples = |ms: u32| u64::from(sample_rate) * u64::from(ms) / 1000;
        Ok(Self {
            config,
            sample_rate,
            minima: [FLOOR_DBOV; SUB_WINDOWS],
            filled: 0,
            next: 0,
            current_min: f32::INFINITY,
            current_len: 0,
            sub_window_len: samples(config.floor_window_ms) / SUB_WINDOWS as u64,
            onset_run: 0,
            onset_len: samples(config.onset_ms),
            hang_left: 0,
            hangover_len: samples(config.hangover_ms),
            active: false,
        })
    }

    /// The sample rate this detector counts time in.
    pub fn sample_rate(&self) -> u32 {
        self.sample_rate
    }

    /// The current noise floor estimate (dBov); before the first frame,
    /// [`VadConfig::min_level_dbov`].
    pub fn noise_floor_dbov(&self) -> f32 {
        let done = self.minima[..self.filled]
            .iter()
            .copied()
            .fold(f32::INFINITY, f32::min);
        let floor = done.min(self.current_min);
        if floor.is_finite() {
            floor
        } else {
            self.config.min_level_dbov
        }
    }

    /// Classifies one frame (any length; empty frames change nothing).
    pub fn process(&mut self, frame: &[f32]) -> VadDecision {
        let level = (rms_dbov(frame) as f32).max(FLOOR_DBOV);
        if frame.is_empty() {
            return VadDecision {
                voice: self.active,
                level_dbov: level,
                noise_floor_dbov: self.noise_floor_dbov(),
            };
        }
        let len = frame.len() as u64;
        // Decide against the floor before this frame updates it.
        let floor = self.noise_floor_dbov();
        let voiced =
            level >= self.config.min_level_dbov && level >= floor + self.config.threshold_db;

        if voiced {
            self.onset_run += len;
            if self.onset_run >= self.onset_len {
                self.active = true;
                self.hang_left = self.hangover_len;
            }
        } else {
            self.onset_run = 0;
            if self.active {
                self.hang_left = self.hang_left.saturating_sub(len);
                if self.hang_left == 0 {
                    self.active = false;
                }
            }
        }

        self.current_min = self.current_min.min(level);
        self.current_len += len;
        if self.current_len >= self.sub_window_len {
            self.minima[self.next] = self.current_min;
            self.next = (self.next + 1) % SUB_WINDOWS;
            self.filled = (self.filled + 1).min(SUB_WINDOWS);
            self.current_min = f32::INFINITY;
            self.current_len = 0;
        }

        VadDecision {
            voice: self.active,
            level_dbov: level,
            noise_floor_dbov: self.noise_floor_dbov(),
        }
    }

    /// True while voice is active.
    pub fn is_active(&self) -> bool {
        self.active
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::f64::consts::PI;

    fn sine(amp: f64, hz: f64, rate: u32, len: usize) -> Vec<f32> {
        (0..len)
            .map(|n| (amp * (2.0 * PI * hz * n as f64 / f64::from(rate)).sin()) as f32)
            .collect()
    }

    #[test]
    fn full_scale_square_is_0_and_full_scale_sine_is_3() {
        let square: Vec<f32> = (0..960)
            .map(|n| if (n / 24) % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        assert_eq!(audio_level(&square), 0);
        // 1 kHz at 48 kHz: 20 ms is a whole number of periods.
        assert_eq!(audio_level(&sine(1.0, 1000.0, 48000, 960)), 3);
        assert!((rms_dbov(&sine(1.0, 1000.0, 48000, 960)) + 3.0103).abs() < 1e-3);
        let half: Vec<f32> = square.iter().map(|x| x * 0.5).collect();
        assert_eq!(audio_level(&half), 6); // -6.02 dBov
        // Beyond full scale is still 0.
        let hot: Vec<f32> = square.iter().map(|x| x * 3.0).collect();
        assert_eq!(audio_level(&hot), 0);
    }

    #[test]
    fn silence_is_127_and_levels_round_to_the_nearest_db() {
        assert_eq!(audio_level(&[0.0; 160]), 127);
        assert_eq!(audio_level(&[]), 127);
        assert_eq!(audio_level(&[f32::NAN; 160]), 127);
        // One 16-bit LSB of DC is -90.3 dBov.
        assert_eq!(audio_level(&[1.0 / 32768.0; 160]), 90);
        // Below -127 dBov clamps to 127.
        assert_eq!(audio_level(&[1e-7; 160]), 127);
        for (dbov, level) in [
            (-20.4, 20),
            (-20.6, 21),
            (-40.0, 40),
            (-126.6, 127),
            (-0.4, 0),
        ] {
            let dc = 10f64.powf(dbov / 20.0) as f32;
            assert_eq!(audio_level(&[dc; 480]), level, "{dbov} dBov");
        }
        assert_eq!(extension_byte(40, true), 0x80 | 40);
        assert_eq!(extension_byte(127, false), 127);
        assert_eq!(extension_byte(200, false), 127);
    }

    fn speech_16k() -> Vec<f32> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/audio/speech-16k.wav"
        );
        let mut r = hound::WavReader::open(path).expect("test speech file");
        r.samples::<i16>()
            .map(|s| f32::from(s.expect("valid wav sample")) / 32768.0)
            .collect()
    }

    fn white(rng: &mut ChaCha8Rng, len: usize, dbov: f64) -> Vec<f32> {
        // Uniform noise in [-a, a] has RMS a / sqrt(3).
        let a = 10f64.powf(dbov / 20.0) * 3f64.sqrt();
        (0..len).map(|_| rng.random_range(-a..a) as f32).collect()
    }

    /// Speech with low noise (-55 dBov) added: frames the clean signal says
    /// are speech (above -40 dBov) must be detected; noise-only frames past the
    /// hangover and a noise-only stream must not.
    #[test]
    fn the_vad_finds_speech_and_ignores_low_noise() {
        // The speech with 1.5 s pauses inserted after every 5 s.
        let mut clean = Vec::new();
        for part in speech_16k().chunks(16000 * 5) {
            clean.extend_from_slice(part);
            clean.extend(std::iter::repeat_n(0f32, 24000));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let noise = white(&mut rng, clean.len(), -55.0);
        let noisy: Vec<f32> = clean.iter().zip(&noise).map(|(a, b)| a + b).collect();
        let frame = 320; // 20 ms
        let mut vad = Vad::new(16000, VadConfig::default()).unwrap();
        let decisions: Vec<bool> = noisy
            .chunks_exact(frame)
            .map(|f| vad.process(f).voice)
            .collect();
        let levels: Vec<f64> = clean.chunks_exact(frame).map(rms_dbov).collect();
        let speech: Vec<usize> = (0..levels.len()).filter(|&k| levels[k] > -40.0).collect();
        // Silence (below -70 dBov) past the 200 ms hangover of any sound.
        let quiet: Vec<usize> = (11..levels.len())
            .filter(|&k| (k - 11..=k).all(|j| levels[j] < -70.0))
            .collect();
        let hits = speech.iter().filter(|&&k| decisions[k]).count();
        let false_alarms = quiet.iter().filter(|&&k| decisions[k]).count();
        let hit_rate = hits as f64 / speech.len() as f64;
        let fa_rate = false_alarms as f64 / quiet.len() as f64;

        let mut vad = Vad::new(16000, VadConfig::default()).unwrap();
        let only_noise = white(&mut rng, 16000 * 10, -55.0);
        let noise_hits = only_noise
            .chunks_exact(frame)
            .filter(|f| vad.process(f).voice)
            .count();
        println!(
            "VAD: speech frames detected {hits}/{} ({:.1} %), quiet frames flagged {false_alarms}/{} \
             ({:.1} %), noise-only stream flagged {noise_hits}/500",
            speech.len(),
            hit_rate * 100.0,
            quiet.len(),
            fa_rate * 100.0
        );
        assert!(hit_rate >= 0.97, "hit rate {hit_rate}");
        assert!(
            quiet.len() > 50 && fa_rate <= 0.02,
            "false alarms {fa_rate}"
        );
        assert!(
            noise_hits <= 2,
            "the first frame may trigger before a floor exists"
        );
    }

    /// The floor follows a noise that gets 20 dB louder: after the floor window
    /// the noise alone is no longer voice, and speech-level tones on top are.
    #[test]
    fn the_noise_floor_adapts_to_a_louder_room() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut vad = Vad::new(8000, VadConfig::default()).unwrap();
        for f in white(&mut rng, 8000 * 3, -60.0).chunks_exact(160) {
            vad.process(f);
        }
        assert!(!vad.is_active());
        let loud = white(&mut rng, 8000 * 4, -40.0);
        let decisions: Vec<bool> = loud
            .chunks_exact(160)
            .map(|f| vad.process(f).voice)
            .collect();
        // 2 s window + 200 ms hangover: quiet again after 2.2 s (110 frames).
        let first_quiet = decisions.iter().position(|v| !v).unwrap_or(decisions.len());
        println!(
            "VAD: after a 20 dB noise step, voice flagged for {} ms",
            first_quiet * 20
        );
        assert!(first_quiet <= 115);
        assert!(decisions[115..].iter().all(|v| !v));
        assert!((vad.noise_floor_dbov() + 40.0).abs() < 2.0);
        let tone = sine(0.1, 440.0, 8000, 160); // -23 dBov over -40 dBov noise
        let noise = white(&mut rng, 160, -40.0);
        let sum: Vec<f32> = tone.iter().zip(&noise).map(|(a, b)| a + b).collect();
        vad.process(&sum);
        assert!(vad.process(&sum).voice, "onset is 20 ms = 2 frames");
    }

    #[test]
    fn voice_holds_through_the_hangover_then_stops() {
        let mut vad = Vad::new(8000, VadConfig::default()).unwrap();
        let quiet = vec![0f32; 80]; // 10 ms frames
        for _ in 0..50 {
            assert!(!vad.process(&quiet).voice);
        }
        let tone = sine(0.3, 300.0, 8000, 80);
        assert!(
            !vad.process(&tone).voice,
            "one 10 ms frame is below the 20 ms onset"
        );
        assert!(vad.process(&tone).voice);
        let held = (0..30).take_while(|_| vad.process(&quiet).voice).count();
        assert_eq!(
            held, 19,
            "200 ms hangover: 19 more frames voiced, the 20th ends it"
        );
        assert!(matches!(
            Vad::new(0, VadConfig::default()),
            Err(CodecError::BadConfig { .. })
        ));
    }
}
