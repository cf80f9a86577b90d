//! The jitter buffer is fed what a hostile or broken peer can make the edge produce:
//! sequence numbers and timestamps anywhere in the 64-bit range, jumps in every
//! direction, garbage payloads, oversized payloads. It never panics, and always fills the
//! frame it is asked for.

mod common;

use std::time::Duration;

use confer_codecs::g711::{G711Decoder, G711Law};
use confer_codecs::opus::OpusDecoder;
use confer_engine::jitter::{JbPacket, JitterBuffer, JitterConfig, JitterError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn pick(rng: &mut ChaCha8Rng, last: u64) -> u64 {
    match rng.random_range(0..6) {
        0 => rng.random(),
        1 => u64::MAX - rng.random_range(0..5000),
        2 if rng.random_bool(0.5) => (1 << 62) - rng.random_range(1..5000),
        2 => rng.random_range(0..5000),
        3 => last.wrapping_add(rng.random_range(0..3)),
        4 => last.wrapping_sub(rng.random_range(0..100)),
        _ => last.wrapping_add(rng.random_range(0..100_000)),
    }
}

#[test]
fn random_sequence_numbers_timestamps_and_payloads_never_panic() {
    let mut rng = ChaCha8Rng::seed_from_u64(4733);
    let start = common::epoch();
    let frames = common::frames();
    let mut opus =
        JitterBuffer::new(JitterConfig::default(), OpusDecoder::new(48_000).unwrap()).unwrap();
    let mut pcmu = JitterBuffer::new(
        JitterConfig {
            clock_rate: 8000,
            ..JitterConfig::default()
        },
        G711Decoder::new(G711Law::Ulaw),
    )
    .unwrap();
    let mut out48 = vec![0.0f32; opus.frame_samples()];
    let mut out8 = vec![0.0f32; pcmu.frame_samples()];
    let (mut seq, mut ts) = (1000u64, 100_000u64);
    let mut garbage = vec![0u8; 2000];
    let mut now = start;
    for i in 0..30_000u32 {
        seq = pick(&mut rng, seq);
        ts = pick(&mut rng, ts);
        let payload: &[u8] = match rng.random_range(0..4) {
            0 => &frames[i as usize % frames.len()],
            1 => {
                let n = rng.random_range(0..garbage.len());
                rng.fill(&mut garbage[..n]);
                &garbage[..n]
            }
            2 => &[],
            _ => &garbage[..1600],
        };
        let p = JbPacket {
            seq,
            timestamp: ts,
            payload,
        };
        for r in [opus.push(p, now), pcmu.push(p, now)] {
            match r {
                Ok(_) | Err(JitterError::PayloadTooLarge(_)) | Err(JitterError::OutOfRange) => {}
                Err(e) => panic!("unexpected error {e}"),
            }
        }
        if i % 3 == 0 {
            opus.pop(now, &mut out48).unwrap();
            pcmu.pop(now, &mut out8).unwrap();
            assert!(out48.iter().chain(&out8).all(|x| x.is_finite()));
        }
        now += Duration::from_micros(rng.random_range(0..15_000));
    }
    println!("{:?}\n{:?}", opus.stats(), pcmu.stats());
}

#[test]
fn a_frame_of_the_wrong_size_is_a_typed_error() {
    let mut jb =
        JitterBuffer::new(JitterConfig::default(), OpusDecoder::new(48_000).unwrap()).unwrap();
    let mut out = vec![0.0f32; 100];
    assert_eq!(
        jb.pop(common::epoch(), &mut out),
        Err(JitterError::BadFrame {
            expected: 960,
            got: 100
        })
    );
}

#[test]
fn a_configuration_that_cannot_work_is_refused() {
    let bad = [
        JitterConfig {
            frame_ms: 15,
            ..JitterConfig::default()
        },
        JitterConfig {
            clock_rate: 8000,
            ..JitterConfig::default()
        },
        JitterConfig {
            capacity: 100,
            ..JitterConfig::default()
        },
    ];
    for cfg in bad {
        assert!(matches!(
            JitterBuffer::new(cfg, OpusDecoder::new(48_000).unwrap()),
            Err(JitterError::BadConfig(_))
        ));
    }
}
