//! Micro-benchmarks of the per-frame DSP on the media path: Opus (our wrapper against
//! the raw `opus` crate, to show what the wrapper costs), resampling, noise suppression,
//! the RFC 6464 level, G.711 and time-stretching.
//!
//! Every input is real speech (`testdata/audio/speech-16k.wav`, resampled with our own
//! resampler), prepared before timing starts; the timed closures cycle through it frame
//! by frame so that stateful processors (Opus, RNNoise) see a speech signal, not one
//! repeated frame. Run: `cargo bench --bench codecs` (add `-- --quick` for a fast look).

mod common;

use std::hint::black_box;

use confer_codecs::decoder::{AudioDecoder, AudioEncoder};
use confer_codecs::denoise::{self, Denoiser};
use confer_codecs::g711::{G711Decoder, G711Encoder, G711Law};
use confer_codecs::level;
use confer_codecs::opus::{
    MAX_PACKET_BYTES, OpusApplication, OpusChannels, OpusDecoder, OpusEncoder, OpusEncoderConfig,
    OpusRateControl, OpusSignal,
};
use confer_codecs::resample::Resampler;
use confer_codecs::timestretch::TimeStretcher;
use criterion::{Criterion, criterion_group, criterion_main};

/// 20 ms at 48 kHz.
const FRAME_48K: usize = 960;
/// 20 ms at 8 kHz.
const FRAME_8K: usize = 160;

/// Cycles through `n` items: returns the current index and moves on.
fn next(i: &mut usize, n: usize) -> usize {
    let cur = *i;
    *i = if cur + 1 == n { 0 } else { cur + 1 };
    cur
}

/// A raw libopus encoder with exactly the settings `OpusEncoder::apply` gives
/// `common::opus_config()`.
fn raw_encoder() -> opus::Encoder {
    let c = common::opus_config();
    // The literal settings below must be the wrapper's, or the comparison is void.
    assert_eq!(
        (
            c.sample_rate,
            c.channels,
            c.bitrate_bps,
            c.complexity,
            c.rate_control,
            c.inband_fec,
            c.dtx,
            c.expected_loss_percent,
            c.application,
            c.frame_ms,
        ),
        (
            48000,
            OpusChannels::Mono,
            32000,
            10,
            OpusRateControl::Vbr,
            true,
            false,
            10,
            OpusApplication::Voip,
            20,
        )
    );
    let mut e = opus::Encoder::new(48000, opus::Channels::Mono, opus::Application::Voip)
        .expect("raw encoder");
    e.set_bitrate(opus::Bitrate::Bits(32000)).expect("ctl");
    e.set_complexity(10).expect("ctl");
    e.set_vbr(true).expect("ctl");
    e.set_vbr_constraint(false).expect("ctl");
    e.set_inband_fec(true).expect("ctl");
    e.set_dtx(false).expect("ctl");
    e.set_packet_loss_perc(10).expect("ctl");
    e.set_expert_frame_duration(opus::FrameSize::Ms20)
        .expect("ctl");
    e
}

/// Wrapper and raw calls side by side in one group, same inputs, same settings.
fn bench_opus(c: &mut Criterion) {
    let speech = common::speech_at(48000);
    let frames: Vec<&[f32]> = speech.chunks_exact(FRAME_48K).collect();
    let packets = common::opus_packets_48k(&speech);
    let mut g = c.benchmark_group("opus");

    let mut enc = OpusEncoder::new(common::opus_config()).expect("encoder");
    let mut buf = [0u8; MAX_PACKET_BYTES];
    let mut i = 0;
    g.bench_function("encode_wrapper", |b| {
        b.iter(|| {
            let frame = frames[next(&mut i, frames.len())];
            black_box(enc.encode(black_box(frame), &mut buf).expect("encode"))
        })
    });

    let mut raw = raw_encoder();
    let mut i = 0;
    g.bench_function("encode_raw", |b| {
        b.iter(|| {
            let frame = frames[next(&mut i, frames.len())];
            black_box(
                raw.encode_float(black_box(frame), &mut buf)
                    .expect("encode"),
            )
        })
    });

    // What the engine's encoders cost per complexity (rooms default to 5, Janus uses 4).
    for complexity in [3u8, 4, 5, 9, 10] {
        let mut enc = OpusEncoder::new(OpusEncoderConfig {
            complexity,
            ..common::opus_config()
        })
        .expect("encoder");
        let mut i = 0;
        g.bench_function(format!("encode_complexity{complexity}"), |b| {
            b.iter(|| {
                let frame = frames[next(&mut i, frames.len())];
                black_box(enc.encode(black_box(frame), &mut buf).expect("encode"))
            })
        });
    }

    // What a room encodes: three talkers at once (the speech at three offsets, summed at
    // the mixer's -6 dB per talker), under the settings that decide an encoder's cost.
    let mix: Vec<f32> = (0..speech.len())
        .map(|n| {
            let at = |k: usize| speech[(n + k * speech.len() / 3) % speech.len()];
            0.5 * (at(0) + at(1) + at(2))
        })
        .collect();
    let mix_frames: Vec<&[f32]> = mix.chunks_exact(FRAME_48K).collect();
    let nofec = |complexity: u8| OpusEncoderConfig {
        complexity,
        inband_fec: false,
        expected_loss_percent: 0,
        ..common::opus_config()
    };
    let settings: Vec<(String, OpusEncoderConfig)> = [
        (
            "c5_fec".to_owned(),
            OpusEncoderConfig {
                complexity: 5,
                ..common::opus_config()
            },
        ),
        (
            "c5_fec_loss0".to_owned(),
            OpusEncoderConfig {
                complexity: 5,
                expected_loss_percent: 0,
                ..common::opus_config()
            },
        ),
        (
            "c5_audio".to_owned(),
            OpusEncoderConfig {
                application: OpusApplication::Audio,
                ..nofec(5)
            },
        ),
        (
            "c5_mdct".to_owned(),
            OpusEncoderConfig {
                signal: OpusSignal::MusicUntilLoss,
                ..nofec(5)
            },
        ),
        (
            "c5_nofec_24k".to_owned(),
            OpusEncoderConfig {
                bitrate_bps: 24_000,
                ..nofec(5)
            },
        ),
    ]
    .into_iter()
    .chain((3u8..=9).map(|c| (format!("c{c}_nofec"), nofec(c))))
    .collect();
    for (name, config) in settings {
        let mut enc = OpusEncoder::new(config).expect("encoder");
        let mut i = 0;
        g.bench_function(format!("encode_mix_{name}"), |b| {
            b.iter(|| {
                let frame = mix_frames[next(&mut i, mix_frames.len())];
                black_box(enc.encode(black_box(frame), &mut buf).expect("encode"))
            })
        });
    }

    let mut dec = OpusDecoder::new(48000).expect("decoder");
    let mut out = [0f32; FRAME_48K];
    let mut i = 0;
    g.bench_function("decode_wrapper", |b| {
        b.iter(|| {
            let p = &packets[next(&mut i, packets.len())];
            black_box(dec.decode(black_box(p), &mut out).expect("decode"))
        })
    });

    let mut raw = opus::Decoder::new(48000, opus::Channels::Mono).expect("raw decoder");
    let mut i = 0;
    g.bench_function("decode_raw", |b| {
        b.iter(|| {
            let p = &packets[next(&mut i, packets.len())];
            black_box(
                raw.decode_float(black_box(p), &mut out, false)
                    .expect("decode"),
            )
        })
    });
    g.finish();
}

fn bench_resample(c: &mut Criterion) {
    let speech_48k = common::speech_at(48000);
    let speech_8k = common::speech_at(8000);
    let mut g = c.benchmark_group("resample");

    let frames: Vec<&[f32]> = speech_48k.chunks_exact(FRAME_48K).collect();
    let mut down = Resampler::new(48000, 8000, 20).expect("resampler");
    let mut out = [0f32; FRAME_48K];
    let mut i = 0;
    g.bench_function("48k_to_8k_20ms", |b| {
        b.iter(|| {
            let frame = frames[next(&mut i, frames.len())];
            black_box(down.process(black_box(frame), &mut out).expect("resample"))
        })
    });

    let frames: Vec<&[f32]> = speech_8k.chunks_exact(FRAME_8K).collect();
    let mut up = Resampler::new(8000, 48000, 20).expect("resampler");
    let mut i = 0;
    g.bench_function("8k_to_48k_20ms", |b| {
        b.iter(|| {
            let frame = frames[next(&mut i, frames.len())];
            black_box(up.process(black_box(frame), &mut out).expect("resample"))
        })
    });
    g.finish();
}

fn bench_denoise(c: &mut Criterion) {
    let speech = common::speech_at(48000);
    let frames: Vec<&[f32]> = speech.chunks_exact(denoise::FRAME_SAMPLES).collect();
    let mut denoiser = Denoiser::new();
    let mut out = [0f32; denoise::FRAME_SAMPLES];
    let mut i = 0;
    let mut g = c.benchmark_group("denoise");
    g.bench_function("10ms_48k", |b| {
        b.iter(|| {
            let frame = frames[next(&mut i, frames.len())];
            black_box(
                denoiser
                    .process(black_box(frame), &mut out)
                    .expect("denoise"),
            )
        })
    });
    g.finish();
}

fn bench_level(c: &mut Criterion) {
    let speech = common::speech_at(48000);
    let frames: Vec<&[f32]> = speech.chunks_exact(FRAME_48K).collect();
    let mut i = 0;
    let mut g = c.benchmark_group("level");
    g.bench_function("rfc6464_20ms_48k", |b| {
        b.iter(|| {
            let frame = frames[next(&mut i, frames.len())];
            black_box(level::audio_level(black_box(frame)))
        })
    });
    g.finish();
}

fn bench_g711(c: &mut Criterion) {
    let speech = common::speech_at(8000);
    let frames: Vec<&[f32]> = speech.chunks_exact(FRAME_8K).collect();
    let mut enc = G711Encoder::new(G711Law::Ulaw, 20).expect("encoder");
    let payloads: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| {
            let mut p = vec![0u8; FRAME_8K];
            enc.encode(f, &mut p).expect("encode");
            p
        })
        .collect();
    let mut g = c.benchmark_group("g711");

    let mut buf = [0u8; FRAME_8K];
    let mut i = 0;
    g.bench_function("ulaw_encode_20ms", |b| {
        b.iter(|| {
            let frame = frames[next(&mut i, frames.len())];
            black_box(enc.encode(black_box(frame), &mut buf).expect("encode"))
        })
    });

    let mut dec = G711Decoder::new(G711Law::Ulaw);
    let mut out = [0f32; FRAME_8K];
    let mut i = 0;
    g.bench_function("ulaw_decode_20ms", |b| {
        b.iter(|| {
            let p = &payloads[next(&mut i, payloads.len())];
            black_box(dec.decode(black_box(p), &mut out).expect("decode"))
        })
    });
    g.finish();
}

fn bench_timestretch(c: &mut Criterion) {
    const CHUNK: usize = 1440; // 30 ms at 48 kHz
    let speech = common::speech_at(48000);
    let chunks: Vec<&[f32]> = speech.chunks_exact(CHUNK).collect();
    let mut stretcher = TimeStretcher::new(48000).expect("stretcher");
    let mut out = [0f32; CHUNK];
    let mut i = 0;
    let mut g = c.benchmark_group("timestretch");
    g.bench_function("accelerate_30ms_48k", |b| {
        b.iter(|| {
            let chunk = chunks[next(&mut i, chunks.len())];
            black_box(
                stretcher
                    .accelerate(black_box(chunk), &mut out)
                    .expect("accelerate"),
            )
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_opus,
    bench_resample,
    bench_denoise,
    bench_level,
    bench_g711,
    bench_timestretch
);
criterion_main!(benches);
