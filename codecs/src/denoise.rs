//! Noise suppression per participant, with RNNoise (`nnnoiseless`, the Rust
//! port).
//!
//! RNNoise works on 10 ms frames (480 samples) at 48 kHz, the room rate, and
//! keeps per-stream state, so every participant gets its own [`Denoiser`]
//! (about 100 kB, allocated once in [`Denoiser::new`]; nothing is allocated per
//! frame). Besides the denoised frame it estimates the probability that the
//! frame holds voice, which [`Denoiser::process`] returns: a better talker
//! signal than an energy VAD in noise.
//!
//! **Strength** is a wet/dry mix: `out = s * denoised + (1 - s) * original`.
//! A mix (rather than a floor under RNNoise's band gains, which the crate does
//! not expose) keeps speech untouched at every setting; the price is that the
//! residual noise at strength `s < 1` is at least `(1 - s)` of the original, so
//! the reduction is capped at `-20 log10(1 - s)` dB (6 dB at 0.5, 20 dB at 0.9).
//!
//! **Latency**: RNNoise's overlap-add synthesis delays its output by one frame
//! (480 samples, 10 ms); the original is delayed by the same amount before the
//! mix, so every strength has the same [`DELAY_SAMPLES`] and changing it never
//! jumps. nnnoiseless expects samples scaled like 16-bit integers; the scaling
//! to and from this crate's [-1, 1) convention happens here.

use crate::decoder::CodecError;
use nnnoiseless::DenoiseState;

/// The sample rate RNNoise runs at.
pub const SAMPLE_RATE: u32 = 48000;
/// Samples in one frame (10 ms at 48 kHz).
pub const FRAME_SAMPLES: usize = DenoiseState::FRAME_SIZE;
/// Output delay in samples (one frame, 10 ms).
pub const DELAY_SAMPLES: usize = FRAME_SAMPLES;

const SCALE: f32 = 32768.0;

/// RNNoise noise suppression for one stream.
pub struct Denoiser {
    state: Box<DenoiseState<'static>>,
    strength: f32,
    vad: f32,
    scaled_in: [f32; FRAME_SAMPLES],
    scaled_out: [f32; FRAME_SAMPLES],
    /// The previous input frame: the dry signal aligned with RNNoise's output.
    dry: [f32; FRAME_SAMPLES],
}

impl std::fmt::Debug for Denoiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Denoiser")
            .field("strength", &self.strength)
            .field("vad", &self.vad)
            .finish_non_exhaustive()
    }
}

impl Default for Denoiser {
    fn default() -> Self {
        Self::new()
    }
}

impl Denoiser {
    /// A denoiser at full strength.
    pub fn new() -> Self {
        Self {
            state: DenoiseState::new(),
            strength: 1.0,
            vad: 0.0,
            scaled_in: [0.0; FRAME_SAMPLES],
            scaled_out: [0.0; FRAME_SAMPLES],
            dry: [0.0; FRAME_SAMPLES],
        }
    }

    /// Sets the strength: 0.0 passes the (delayed) input through, 1.0 is
    /// RNNoise's full output. Values outside 0.0..=1.0 are clamped; NaN leaves
    /// the strength unchanged.
    pub fn set_strength(&mut self, strength: f32) {
        if !strength.is_nan() {
            self.strength = strength.clamp(0.0, 1.0);
        }
    }

    /// The current strength.
    pub fn strength(&self) -> f32 {
        self.strength
    }

    /// The voice probability (0.0..=1.0) RNNoise gave the last frame.
    pub fn vad_probability(&self) -> f32 {
        self.vad
    }

    /// Denoises one 10 ms frame (`input.len() == FRAME_SAMPLES`) into
    /// `out[..FRAME_SAMPLES]`, which is the signal [`DELAY_SAMPLES`] earlier;
    /// returns RNNoise's voice probability for the frame.
    pub fn process(&mut self, input: &[f32], out: &mut [f32]) -> Result<f32, CodecError> {
        if input.len() != FRAME_SAMPLES {
            return Err(CodecError::BadFrameSize {
                got: input.len(),
                rule: "480 samples (10 ms at 48 kHz)",
            });
        }
        if out.len() < FRAME_SAMPLES {
            return Err(CodecError::BufferTooSmall {
                needed: FRAME_SAMPLES,
                got: out.len(),
            });
        }
        for (s, &x) in self.scaled_in.iter_mut().zip(input) {
            // NaN would poison the recurrent state for good.
            *s = if x.is_finite() { x * SCALE } else { 0.0 };
        }
        let vad = self
            .state
            .process_frame(&mut self.scaled_out, &self.scaled_in);
        self.vad = if vad.is_finite() {
            vad.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let wet = self.strength / SCALE;
        let dry = 1.0 - self.strength;
        for ((o, &w), d) in out.iter_mut().zip(&self.scaled_out).zip(&self.dry) {
            *o = w * wet + d * dry;
        }
        for (d, &x) in self.dry.iter_mut().zip(&self.scaled_in) {
            *d = x / SCALE;
        }
        Ok(self.vad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resample::Resampler;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// The 16 kHz test speech, upsampled to 48 kHz and advanced by the
    /// resampler's delay so that it lines up with the 16 kHz original.
    fn speech_48k() -> Vec<f32> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/audio/speech-16k.wav"
        );
        let mut r = hound::WavReader::open(path).expect("test speech file");
        let pcm: Vec<f32> = r
            .samples::<i16>()
            .map(|s| f32::from(s.expect("valid wav sample")) / 32768.0)
            .collect();
        let mut up = Resampler::new(16000, 48000, 10).unwrap();
        let mut out = vec![0f32; pcm.len() / 160 * 480];
        for (i, o) in pcm.chunks_exact(160).zip(out.chunks_exact_mut(480)) {
            up.process(i, o).unwrap();
        }
        out.drain(..up.delay_samples());
        out.truncate(out.len() / FRAME_SAMPLES * FRAME_SAMPLES);
        out
    }

    fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
        let u1 = rng.random::<f64>().max(1e-300);
        let u2 = rng.random::<f64>();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Pink (1/f) noise: white noise through Paul Kellet's economy filter.
    fn pink(rng: &mut ChaCha8Rng, len: usize) -> Vec<f64> {
        let (mut b0, mut b1, mut b2) = (0.0, 0.0, 0.0);
        (0..len)
            .map(|_| {
                let w = gaussian(rng);
                b0 = 0.99765 * b0 + w * 0.0990460;
                b1 = 0.96300 * b1 + w * 0.2965164;
                b2 = 0.57000 * b2 + w * 1.0526913;
                b0 + b1 + b2 + w * 0.1848
            })
            .collect()
    }

    fn energy(x: &[f32]) -> f64 {
        x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / x.len() as f64
    }

    fn db(ratio: f64) -> f64 {
        10.0 * ratio.log10()
    }

    struct Measured {
        noise_reduction_db: f64,
        speech_change_db: f64,
        vad_speech: f64,
        vad_silence: f64,
    }

    /// Adds `noise` scaled to `snr_db` below the mean speech-frame power,
    /// denoises at `strength`, and measures per frame class (classes from the
    /// clean signal: speech above -40 dBov, silence below -70 dBov).
    fn measure(clean: &[f32], noise: &[f64], snr_db: f64, strength: f32) -> Measured {
        let frames: Vec<&[f32]> = clean.chunks_exact(FRAME_SAMPLES).collect();
        let is_speech: Vec<bool> = frames.iter().map(|f| db(energy(f)) > -40.0).collect();
        let is_silence: Vec<bool> = frames.iter().map(|f| db(energy(f)) < -70.0).collect();
        let speech_power: f64 = frames
            .iter()
            .zip(&is_speech)
            .filter(|(_, s)| **s)
            .map(|(f, _)| energy(f))
            .sum::<f64>()
            / is_speech.iter().filter(|s| **s).count() as f64;
        let noise_power = noise.iter().map(|v| v * v).sum::<f64>() / noise.len() as f64;
        let gain = (speech_power / noise_power / 10f64.powf(snr_db / 10.0)).sqrt();
        let noisy: Vec<f32> = clean
            .iter()
            .zip(noise)
            .map(|(&c, &n)| c + (n * gain) as f32)
            .collect();

        let mut d = Denoiser::new();
        d.set_strength(strength);
        let mut out = vec![0f32; noisy.len()];
        let mut vads = Vec::with_capacity(frames.len());
        for (i, o) in noisy
            .chunks_exact(FRAME_SAMPLES)
            .zip(out.chunks_exact_mut(FRAME_SAMPLES))
        {
            vads.push(d.process(i, o).unwrap());
        }
        // Output frame k + 1 is input frame k. Skip the first second (adaptation).
        let (mut n_in, mut n_out, mut s_clean, mut s_out) = (0.0, 0.0, 0.0, 0.0);
        let (mut vad_s, mut n_s, mut vad_q, mut n_q) = (0.0, 0, 0.0, 0);
        for k in 100..frames.len() - 1 {
            let o = &out[(k + 1) * FRAME_SAMPLES..(k + 2) * FRAME_SAMPLES];
            let x = &noisy[k * FRAME_SAMPLES..(k + 1) * FRAME_SAMPLES];
            if is_silence[k] {
                n_in += energy(x);
                n_out += energy(o);
                vad_q += f64::from(vads[k]);
                n_q += 1;
            }
            if is_speech[k] {
                s_clean += energy(frames[k]);
                s_out += energy(o);
                vad_s += f64::from(vads[k]);
                n_s += 1;
            }
        }
        Measured {
            noise_reduction_db: db(n_in / n_out),
            speech_change_db: db(s_out / s_clean),
            vad_speech: vad_s / f64::from(n_s),
            vad_silence: vad_q / f64::from(n_q),
        }
    }

    #[test]
    fn speech_in_10_db_noise_keeps_its_level_while_the_noise_floor_drops() {
        let clean = speech_48k();
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let pink_noise = pink(&mut rng, clean.len());
        let white_noise: Vec<f64> = (0..clean.len()).map(|_| gaussian(&mut rng)).collect();
        for (name, noise) in [("pink", &pink_noise), ("white", &white_noise)] {
            let m = measure(&clean, noise, 10.0, 1.0);
            println!(
                "{name} noise at 10 dB SNR: noise floor -{:.1} dB, speech level {:+.2} dB, \
                 mean VAD probability speech {:.2} / silence {:.2}",
                m.noise_reduction_db, m.speech_change_db, m.vad_speech, m.vad_silence
            );
            assert!(
                m.noise_reduction_db >= 10.0,
                "{name}: {}",
                m.noise_reduction_db
            );
            assert!(
                m.speech_change_db.abs() <= 3.0,
                "{name}: {}",
                m.speech_change_db
            );
            assert!(
                m.vad_speech > 0.7 && m.vad_silence < m.vad_speech - 0.4,
                "{name}"
            );
        }
    }

    #[test]
    fn half_strength_caps_the_reduction_at_6_db() {
        let clean = speech_48k();
        let mut rng = ChaCha8Rng::seed_from_u64(43);
        let noise = pink(&mut rng, clean.len());
        let m = measure(&clean, &noise, 10.0, 0.5);
        println!(
            "strength 0.5: noise floor -{:.1} dB, speech level {:+.2} dB",
            m.noise_reduction_db, m.speech_change_db
        );
        assert!((4.0..=6.1).contains(&m.noise_reduction_db));
        assert!(m.speech_change_db.abs() <= 1.5);
    }

    #[test]
    fn zero_strength_is_the_input_delayed_by_one_frame() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let input: Vec<f32> = (0..FRAME_SAMPLES * 4)
            .map(|_| rng.random_range(-0.5..0.5))
            .collect();
        let mut d = Denoiser::new();
        d.set_strength(0.0);
        let mut out = vec![0f32; input.len()];
        for (i, o) in input
            .chunks_exact(FRAME_SAMPLES)
            .zip(out.chunks_exact_mut(FRAME_SAMPLES))
        {
            d.process(i, o).unwrap();
        }
        assert!(out[..DELAY_SAMPLES].iter().all(|&x| x == 0.0));
        assert_eq!(&out[DELAY_SAMPLES..], &input[..input.len() - DELAY_SAMPLES]);
    }

    /// The wet path has the same delay as the dry one: the denoised speech
    /// correlates best with the clean speech at exactly DELAY_SAMPLES.
    #[test]
    fn the_denoised_output_lags_the_input_by_exactly_one_frame() {
        let clean = speech_48k();
        let clean = &clean[..48000 * 2];
        let mut d = Denoiser::new();
        let mut out = vec![0f32; clean.len()];
        for (i, o) in clean
            .chunks_exact(FRAME_SAMPLES)
            .zip(out.chunks_exact_mut(FRAME_SAMPLES))
        {
            d.process(i, o).unwrap();
        }
        // Correlate the second second of output with the input at each lag.
        let corr = |lag: usize| -> f64 {
            (48000..96000)
                .map(|n| f64::from(clean[n - lag]) * f64::from(out[n]))
                .sum()
        };
        let best = (0..1000)
            .max_by(|&a, &b| corr(a).total_cmp(&corr(b)))
            .unwrap();
        assert_eq!(best, DELAY_SAMPLES);
    }

    #[test]
    fn bad_frames_are_errors_and_nan_does_not_poison_the_state() {
        let mut d = Denoiser::new();
        let mut out = [0f32; FRAME_SAMPLES];
        assert!(matches!(
            d.process(&[0.0; 479], &mut out),
            Err(CodecError::BadFrameSize { got: 479, .. })
        ));
        assert!(matches!(
            d.process(&[0.0; 480], &mut out[..10]),
            Err(CodecError::BufferTooSmall { .. })
        ));
        d.process(&[f32::NAN; FRAME_SAMPLES], &mut out).unwrap();
        for _ in 0..3 {
            d.process(&[0.01; FRAME_SAMPLES], &mut out).unwrap();
        }
        assert!(out.iter().all(|x| x.is_finite()));
        d.set_strength(7.0);
        assert_eq!(d.strength(), 1.0);
        d.set_strength(f32::NAN);
        assert_eq!(d.strength(), 1.0);
        d.set_strength(-1.0);
        assert_eq!(d.strength(), 0.0);
    }
}
