//! What the synthetic participants of `confer bench` send, encoded once before the run.
//!
//! Senders replay precomputed packets, so a thousand participants cost the load generator
//! a `sendto` each, not an encoder each: the machine's cores stay with the engine under
//! test.
//!
//! - **Speech**: the shipped sample, low-passed (below [`Band::speech_cutoff_hz`]) so that
//!   nothing any talker says reaches the marker band, with its RFC 6464 level and voice
//!   flag per frame. Talkers start at different points of it.
//! - **Probe**: the talker whose audio is timed. A steady hum (loud enough to stay among
//!   the active speakers; 60 ms of silence per cycle keep an energy VAD's noise floor
//!   low, so the hum counts as voice) plus, at the start of every cycle, a short burst in
//!   the marker band; a listener detects the burst's onset in its decoded audio. The cycle is a whole
//!   number of hum periods and the loop seam is the burst onset, so the replay loop adds no
//!   click anywhere else.
//! - **Silence**: what an Opus sender with DTX sends while quiet (one comfort-noise packet
//!   every 400 ms), or G.711 silence every frame.

use std::f32::consts::PI;
use std::io::Cursor;

use anyhow::{Context, bail};
use confer_codecs::decoder::AudioEncoder;
use confer_codecs::g711::{G711Encoder, G711Law};
use confer_codecs::level::{audio_level, rms_dbov};
use confer_codecs::opus::{OpusEncoder, OpusEncoderConfig};
use confer_codecs::resample::Resampler;

/// The speech that the benchmark sends, shipped in the repository (16 kHz mono).
const SPEECH_WAV: &[u8] = include_bytes!("../../testdata/audio/speech-16k.wav");

/// Frame duration of every synthetic sender.
pub const FRAME_MS: u32 = 20;
/// Probe cycle: one marker burst per second.
pub const PROBE_CYCLE_FRAMES: usize = 50;
/// An Opus DTX sender sends one packet per this many frames while quiet.
pub const DTX_EVERY_FRAMES: usize = 20;

/// The codec the synthetic participants use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchCodec {
    /// Opus, 48 kHz, 32 kbit/s, in-band FEC.
    Opus,
    /// G.711 µ-law, 8 kHz.
    Pcmu,
}

impl BenchCodec {
    /// The RTP payload type used for it.
    pub fn payload_type(self) -> u8 {
        match self {
            BenchCodec::Opus => 111,
            BenchCodec::Pcmu => 0,
        }
    }

    /// RTP clock rate and the rate of its decoded audio.
    pub fn rate(self) -> u32 {
        match self {
            BenchCodec::Opus => 48_000,
            BenchCodec::Pcmu => 8_000,
        }
    }

    /// The name the control APIs use.
    pub fn name(self) -> &'static str {
        match self {
            BenchCodec::Opus => "opus",
            BenchCodec::Pcmu => "pcmu",
        }
    }

    /// Samples per frame at [`rate`](Self::rate).
    pub fn frame_samples(self) -> usize {
        (self.rate() * FRAME_MS / 1000) as usize
    }

    /// Where speech may be and where the marker is.
    pub fn band(self) -> Band {
        match self {
            BenchCodec::Opus => Band {
                speech_cutoff_hz: 3_000.0,
                marker_hz: 6_000.0,
                hum_hz: 400.0,
            },
            BenchCodec::Pcmu => Band {
                speech_cutoff_hz: 1_500.0,
                marker_hz: 3_000.0,
                hum_hz: 400.0,
            },
        }
    }
}

/// The frequency plan that keeps speech out of the probe's marker band.
#[derive(Debug, Clone, Copy)]
pub struct Band {
    /// Speech is low-passed here.
    pub speech_cutoff_hz: f32,
    /// The probe's burst frequency; listeners detect its onset.
    pub marker_hz: f32,
    /// The probe's steady hum.
    pub hum_hz: f32,
}

/// One precomputed packet: payload and RFC 6464 level (0..=127, -dBov) and voice flag.
#[derive(Debug, Clone)]
pub struct Frame {
    /// Encoded payload.
    pub payload: Vec<u8>,
    /// RFC 6464 level, -dBov.
    pub level: u8,
    /// RFC 6464 V flag.
    pub voice: bool,
}

/// Everything the senders replay.
#[derive(Debug)]
pub struct Signals {
    /// The codec.
    pub codec: BenchCodec,
    /// Speech frames, looped.
    pub speech: Vec<Frame>,
    /// One probe cycle ([`PROBE_CYCLE_FRAMES`]); the marker burst starts frame 0.
    pub probe: Vec<Frame>,
    /// What a quiet participant sends (every [`DTX_EVERY_FRAMES`] frames for Opus, every
    /// frame for G.711).
    pub silence: Frame,
}

/// Second-order IIR section (RBJ cookbook), direct form I.
#[derive(Debug, Clone, Copy, Default)]
pub struct Biquad {
    b: [f32; 3],
    a: [f32; 2],
    x: [f32; 2],
    y: [f32; 2],
}

impl Biquad {
    /// Low-pass at `f0` with quality `q`.
    pub fn lowpass(rate: f32, f0: f32, q: f32) -> Biquad {
        let w = 2.0 * PI * f0 / rate;
        let (s, c) = w.sin_cos();
        let alpha = s / (2.0 * q);
        let a0 = 1.0 + alpha;
        Biquad {
            b: [(1.0 - c) / 2.0 / a0, (1.0 - c) / a0, (1.0 - c) / 2.0 / a0],
            a: [-2.0 * c / a0, (1.0 - alpha) / a0],
            ..Biquad::default()
        }
    }

    /// Band-pass (0 dB peak) at `f0` with quality `q`.
    pub fn bandpass(rate: f32, f0: f32, q: f32) -> Biquad {
        let w = 2.0 * PI * f0 / rate;
        let (s, c) = w.sin_cos();
        let alpha = s / (2.0 * q);
        let a0 = 1.0 + alpha;
        Biquad {
            b: [alpha / a0, 0.0, -alpha / a0],
            a: [-2.0 * c / a0, (1.0 - alpha) / a0],
            ..Biquad::default()
        }
    }

    /// Filters one sample.
    pub fn process(&mut self, x: f32) -> f32 {
        let y = self.b[0] * x + self.b[1] * self.x[0] + self.b[2] * self.x[1]
            - self.a[0] * self.y[0]
            - self.a[1] * self.y[1];
        self.x = [x, self.x[0]];
        self.y = [y, self.y[0]];
        y
    }
}

/// The shipped speech sample: its sample rate and mono samples.
pub fn speech_sample() -> anyhow::Result<(u32, Vec<f32>)> {
    let mut reader = hound::WavReader::new(Cursor::new(SPEECH_WAV)).context("speech sample")?;
    let spec = reader.spec();
    if spec.channels != 1 {
        bail!("the speech sample must be mono");
    }
    let pcm: Vec<f32> = reader
        .samples::<i16>()
        .map(|s| s.map(|v| f32::from(v) / 32768.0))
        .collect::<Result<_, _>>()
        .context("speech sample")?;
    Ok((spec.sample_rate, pcm))
}

/// The shipped speech at `rate`, low-passed at `cutoff` (8th order Butterworth).
fn speech_pcm(rate: u32, cutoff: f32) -> anyhow::Result<Vec<f32>> {
    let (sample_rate, pcm) = speech_sample()?;
    let mut out = if sample_rate == rate {
        pcm
    } else {
        let mut rs = Resampler::new(sample_rate, rate, FRAME_MS)?;
        let mut out = Vec::with_capacity(pcm.len() * rate as usize / sample_rate as usize);
        let mut buf = vec![0.0f32; rs.output_len()];
        for chunk in pcm.chunks_exact(rs.input_len()) {
            let n = rs.process(chunk, &mut buf)?;
            out.extend_from_slice(&buf[..n]);
        }
        out
    };
    // Butterworth 8th order: Q of the four sections.
    for q in [0.5098, 0.6013, 0.9000, 2.5629] {
        let mut f = Biquad::lowpass(rate as f32, cutoff, q);
        for x in out.iter_mut() {
            *x = f.process(*x);
        }
    }
    Ok(out)
}

fn encoder(codec: BenchCodec, dtx: bool) -> anyhow::Result<Box<dyn AudioEncoder>> {
    Ok(match codec {
        BenchCodec::Opus => Box::new(OpusEncoder::new(OpusEncoderConfig {
            sample_rate: 48_000,
            bitrate_bps: 32_000,
            complexity: 5,
            inband_fec: true,
            expected_loss_percent: 10,
            dtx,
            frame_ms: FRAME_MS,
            ..OpusEncoderConfig::default()
        })?),
        BenchCodec::Pcmu => Box::new(G711Encoder::new(G711Law::Ulaw, FRAME_MS)?),
    })
}

fn encode_all(codec: BenchCodec, pcm: &[f32], voice_floor_dbov: f64) -> anyhow::Result<Vec<Frame>> {
    let mut enc = encoder(codec, false)?;
    let mut out = vec![0u8; 1500];
    pcm.chunks_exact(codec.frame_samples())
        .map(|f| {
            let n = enc.encode(f, &mut out)?;
            Ok(Frame {
                payload: out[..n].to_vec(),
                level: audio_level(f),
                voice: rms_dbov(f) > voice_floor_dbov,
            })
        })
        .collect()
}

impl Signals {
    /// Encodes the speech, the probe cycle and the silence packet for `codec`.
    pub fn new(codec: BenchCodec) -> anyhow::Result<Signals> {
        let rate = codec.rate();
        let band = codec.band();
        let mut speech = speech_pcm(rate, band.speech_cutoff_hz)?;
        // Speech at about -20 dBov active level, as a headset delivers it.
        let peak = speech.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-6);
        let gain = 0.5 / peak;
        speech.iter_mut().for_each(|x| *x *= gain);
        let speech = encode_all(codec, &speech, -45.0)?;

        // Probe: hum at -14 dBFS peak always, marker burst (raised-cosine 1 ms edges) for
        // the first 60 ms of each second.
        let n = codec.frame_samples() * PROBE_CYCLE_FRAMES;
        let burst = codec.frame_samples() * 3;
        let ramp = (rate / 1000) as usize;
        let probe_pcm: Vec<f32> = (0..n)
            .map(|i| {
                let t = i as f32 / rate as f32;
                let hum = 0.2 * (2.0 * PI * band.hum_hz * t).sin();
                let env = if i < ramp {
                    0.5 - 0.5 * (PI * i as f32 / ramp as f32).cos()
                } else if i < burst - ramp {
                    1.0
                } else if i < burst {
                    0.5 + 0.5 * (PI * (i - (burst - ramp)) as f32 / ramp as f32).cos()
                } else {
                    0.0
                };
                // 60 ms of silence mid-cycle keep a VAD's noise floor low, so the hum
                // reads as continuous voice (its hangover bridges the gap). Three frames,
                // so that a receiver whose frames straddle ours still sees a silent one.
                let quiet = (i / codec.frame_samples()).abs_diff(PROBE_CYCLE_FRAMES / 2) <= 1;
                if quiet {
                    0.0
                } else {
                    hum + 0.3 * env * (2.0 * PI * band.marker_hz * t).sin()
                }
            })
            .collect();
        // Encode two cycles and keep the second, so the encoder's state at the loop seam
        // is the steady state of the cycle.
        let two: Vec<f32> = probe_pcm.iter().chain(&probe_pcm).copied().collect();
        let mut probe = encode_all(codec, &two, -45.0)?;
        probe.drain(..PROBE_CYCLE_FRAMES);

        let silence = {
            let mut enc = encoder(codec, codec == BenchCodec::Opus)?;
            let zeros = vec![0.0f32; codec.frame_samples()];
            let mut out = vec![0u8; 1500];
            let mut last = Vec::new();
            // Let the encoder settle into DTX; keep its steady-state packet.
            for _ in 0..50 {
                let n = enc.encode(&zeros, &mut out)?;
                if n > 0 {
                    last = out[..n].to_vec();
                }
            }
            Frame {
                payload: last,
                level: 127,
                voice: false,
            }
        };
        if speech.is_empty() || silence.payload.is_empty() {
            bail!("the speech sample is too short");
        }
        Ok(Signals {
            codec,
            speech,
            probe,
            silence,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_speech_leaves_the_marker_band_30_db_below_the_marker() {
        for codec in [BenchCodec::Opus, BenchCodec::Pcmu] {
            let band = codec.band();
            let rate = codec.rate() as f32;
            // The detector's filter: two band-pass sections at the marker.
            let in_band = |x: &[f32]| {
                let mut f = [Biquad::bandpass(rate, band.marker_hz, 6.0); 2];
                let e: f32 = x
                    .iter()
                    .map(|&s| {
                        let y = f[0].process(s);
                        f[1].process(y).powi(2)
                    })
                    .sum();
                e / x.len() as f32
            };
            let speech = speech_pcm(codec.rate(), band.speech_cutoff_hz).unwrap();
            let peak = speech.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            let speech: Vec<f32> = speech.iter().map(|x| x * 0.5 / peak).collect();
            // The loudest 100 ms of speech against the marker burst.
            let worst = speech
                .chunks(codec.rate() as usize / 10)
                .map(in_band)
                .fold(0.0f32, f32::max);
            let burst: Vec<f32> = (0..codec.rate() as usize / 10)
                .map(|i| 0.3 * (2.0 * PI * band.marker_hz * i as f32 / rate).sin())
                .collect();
            let ratio_db = 10.0 * (worst / in_band(&burst)).log10();
            assert!(
                ratio_db < -30.0,
                "{codec:?}: speech {ratio_db:.1} dB of the marker"
            );
            let s = Signals::new(codec).unwrap();
            assert_eq!(s.probe.len(), PROBE_CYCLE_FRAMES);
            assert!(s.speech.iter().any(|f| f.voice) && s.speech.iter().any(|f| !f.voice));
        }
    }
}
