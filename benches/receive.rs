//! The full receive path of one media leg for a 20 ms frame, next to the same parts
//! composed by hand: RTP parse, jitter buffer (with Opus decode), noise suppression
//! (two 10 ms RNNoise frames), level and VAD.
//!
//! `receive/leg` is `MediaLeg::handle_datagram` + `MediaLeg::poll_frame`; `receive/parts`
//! does the same work by calling each part directly. The goal is a leg within 1.1x of the
//! sum of its parts. Both run on virtual time with the same packets (48 kHz speech,
//! Opus 20 ms) arriving in order, one per frame. Run: `cargo bench --bench receive`.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use confer_codecs::denoise::{Denoiser, FRAME_SAMPLES};
use confer_codecs::level::{Vad, VadConfig};
use confer_codecs::opus::OpusDecoder;
use confer_engine::jitter::{JbPacket, JitterBuffer, JitterConfig};
use confer_engine::leg::{LegConfig, MediaLeg};
use confer_engine::rtp::{RtpPacket, RtpPacketBuilder};
use confer_engine::types::{PayloadType, Ssrc};
use criterion::{Criterion, criterion_group, criterion_main};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const FRAME: Duration = Duration::from_millis(20);

/// The speech as RTP datagrams (payload type 111, 20 ms apart).
fn datagrams() -> Vec<Vec<u8>> {
    let speech = common::speech_at(48_000);
    let pt = PayloadType::new(111).expect("dynamic payload type");
    common::opus_packets_48k(&speech)
        .iter()
        .enumerate()
        .map(|(i, payload)| {
            let mut buf = vec![0u8; 1500];
            let n = RtpPacketBuilder::new(pt, i as u16, (i as u32) * 960, Ssrc(0x1234_5678))
                .payload(payload)
                .write(&mut buf)
                .expect("fits");
            buf.truncate(n);
            buf
        })
        .collect()
}

fn receive(c: &mut Criterion) {
    let packets = datagrams();
    let origin = Instant::now();
    let mut g = c.benchmark_group("receive");

    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let cfg = LegConfig {
        denoise: true,
        ..LegConfig::default()
    };
    let mut leg = MediaLeg::new(cfg, None, &mut rng, origin).expect("leg");
    let mut out = vec![0.0f32; 960];
    let mut k = 0usize;
    g.bench_function("leg", |b| {
        b.iter(|| {
            let now = origin + FRAME * k as u32;
            let d = &packets[k % packets.len()];
            let _ = black_box(leg.handle_datagram(d, now + Duration::from_millis(3)));
            let info = leg.poll_frame(now + Duration::from_millis(5), &mut out);
            let _ = black_box((info, &out));
            k += 1;
        })
    });

    let mut jb = JitterBuffer::new(
        JitterConfig::default(),
        OpusDecoder::new(48_000).expect("decoder"),
    )
    .expect("jitter buffer");
    let mut dn = Denoiser::new();
    let mut vad = Vad::new(48_000, VadConfig::default()).expect("vad");
    let mut dn_out = vec![0.0f32; FRAME_SAMPLES];
    let mut out = vec![0.0f32; 960];
    let mut k = 0usize;
    // Sequence numbers extended the way the leg does it: here they never wrap (the bench
    // stays far below 2^16 packets per run of the closure's counter plus the offset).
    g.bench_function("parts", |b| {
        b.iter(|| {
            let now = origin + FRAME * k as u32;
            let d = &packets[k % packets.len()];
            let p = RtpPacket::parse(d).expect("valid");
            let seq = 65_536 + k as u64;
            let ts = (1u64 << 32) + k as u64 * 960;
            let _ = black_box(jb.push(
                JbPacket {
                    seq,
                    timestamp: ts,
                    payload: p.payload(),
                },
                now + Duration::from_millis(3),
            ));
            let info = jb.pop(now + Duration::from_millis(5), &mut out);
            for chunk in out.chunks_exact_mut(FRAME_SAMPLES) {
                let _ = black_box(dn.process(chunk, &mut dn_out));
                chunk.copy_from_slice(&dn_out);
            }
            let _ = black_box((info, vad.process(&out)));
            k += 1;
        })
    });
    g.finish();
}

criterion_group!(benches, receive);
criterion_main!(benches);
