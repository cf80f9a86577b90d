//! Shared fixtures for the engine's behaviour tests: real speech encoded with real codecs,
//! and a fixed epoch for virtual time.
//!
//! Deterministic: the speech sample is a committed file, libopus is deterministic for a
//! given input and configuration, and time starts at one `Instant` that only serves as an
//! origin (no test reads the clock after it).
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::Instant;

use std::time::Duration;

use confer_codecs::decoder::AudioEncoder;
use confer_codecs::opus::{OpusDecoder, OpusEncoder, OpusEncoderConfig};
use confer_engine::jitter_eval::{EvalConfig, EvalReport, evaluate};
use confer_engine::netsim::{LinkConfig, NetSim};

/// The origin of virtual time. Only differences from it matter.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // The one clock read of the tests: an arbitrary origin, never compared with real time.
    #[allow(clippy::disallowed_methods)]
    *EPOCH.get_or_init(Instant::now)
}

/// The 16 kHz speech sample as f32.
pub fn speech_16k() -> Vec<f32> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/audio/speech-16k.wav"
    );
    let mut reader = hound::WavReader::open(path).expect("speech sample is committed");
    reader
        .samples::<i16>()
        .map(|s| s.expect("valid wav") as f32 / 32768.0)
        .collect()
}

/// The speech sample encoded as 20 ms Opus packets (16 kHz input, decodable at 48 kHz),
/// with in-band FEC when `fec`.
pub fn opus_speech_frames(fec: bool) -> Vec<Vec<u8>> {
    let cfg = OpusEncoderConfig {
        sample_rate: 16_000,
        complexity: 5,
        inband_fec: fec,
        expected_loss_percent: if fec { 10 } else { 0 },
        ..OpusEncoderConfig::default()
    };
    let mut enc = OpusEncoder::new(cfg).expect("valid opus config");
    let n = enc.frame_samples();
    let pcm = speech_16k();
    let mut out = vec![0u8; 1500];
    pcm.chunks_exact(n)
        .map(|frame| {
            let len = enc.encode(frame, &mut out).expect("encode");
            out[..len].to_vec()
        })
        .collect()
}

/// Cached FEC-enabled frames (encoding takes a moment in debug builds).
pub fn frames() -> &'static [Vec<u8>] {
    static FRAMES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    FRAMES.get_or_init(|| opus_speech_frames(true))
}

/// Runs `frames` for `secs` seconds over `link` (seeded with `seed`) into an Opus jitter
/// buffer, scored against the oracle, and prints the result.
pub fn evaluate_link(
    name: &str,
    link: &LinkConfig,
    seed: u64,
    secs: u64,
    frames: &[Vec<u8>],
) -> EvalReport {
    let start = epoch();
    let cfg = EvalConfig {
        duration: Duration::from_secs(secs),
        ..EvalConfig::default()
    };
    let r = evaluate(
        name,
        || NetSim::new(link.clone(), seed, start).expect("valid link"),
        start,
        frames,
        || OpusDecoder::new(48_000).expect("decoder"),
        &cfg,
    )
    .expect("run");
    println!(
        "{name} (seed {seed}): mean {:.1} ms p95 {:.1} ms late {:.2}% concealed {:.2}% oracle {:.1} ms; {:?}",
        r.mean_delay_ms,
        r.p95_delay_ms,
        r.late_loss_pct,
        r.concealed_pct,
        r.oracle_delay_ms,
        r.jitter,
    );
    r
}
