//! A leg advanced without decoding (`MediaLeg::poll_skip`: a conference participant that
//! nobody hears) keeps its jitter buffer on the same schedule, with the same accounting,
//! as a leg that decodes; it reads the RFC 6464 level the peer puts in its RTP headers; and
//! when it is decoded again it plays the current speech.
//!
//! Deterministic: a seeded sender leg encodes the committed speech sample, a seeded
//! simulated link delays, reorders, duplicates and drops its packets on virtual time, and
//! the same delivered trace is replayed into legs built from the same seed.

mod leg_harness;

use std::time::{Duration, Instant};

use confer_engine::jitter::JitterStats;
use confer_engine::leg::{
    Codec, HEADER_LEVEL_ABSENT_AFTER, HEADER_LEVEL_MAX_AGE, LegConfig, OpusParams,
};
use confer_engine::netsim::{Duplicate, LinkConfig, NetSim, Reorder};
use confer_engine::rtp::{AudioLevel, ExtensionForm, RtpExtension, RtpPacketBuilder};
use confer_engine::types::{PayloadType, Ssrc};
use leg_harness::{FRAME, FRAME_MS, aligned_correlation, epoch, leg, speech};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const LEVEL_ID: u8 = 1;

fn opus_config(dtx: bool) -> LegConfig {
    opus_config_fec(dtx, true)
}

fn opus_config_fec(dtx: bool, fec: bool) -> LegConfig {
    LegConfig {
        codec: Codec::Opus(OpusParams {
            fec,
            // The trace's receiver sends no RTCP: size the FEC for the link's loss.
            expected_loss_percent: if fec { 10 } else { 0 },
            dtx,
            ..OpusParams::default()
        }),
        audio_level_extension: Some(LEVEL_ID),
        ..LegConfig::default()
    }
}

fn tick(k: usize) -> Instant {
    epoch() + Duration::from_millis(FRAME_MS * k as u64)
}

/// One delivered datagram: the tick at which it is handed over, the datagram, its arrival.
type Delivery = (usize, Vec<u8>, Instant);

/// What a sender leg with `config` sends for `signal` (then `tail` ticks of nothing),
/// through `link`, as delivered.
fn trace(config: &LegConfig, signal: &[f32], tail: usize, link: LinkConfig) -> Vec<Delivery> {
    let mut a = leg(config.clone(), None, 11, epoch());
    let mut net = NetSim::new(link, 5, epoch()).expect("valid link");
    let mut out = vec![0u8; 2048];
    let frames = signal.len() / FRAME;
    let mut delivered = Vec::new();
    for k in 0..frames + tail {
        let now = tick(k);
        while let Some(d) = net.poll_deliver(now) {
            delivered.push((k, d.payload, d.arrival));
        }
        match signal.get(k * FRAME..(k + 1) * FRAME) {
            Some(frame) => {
                let n = a.send_frame(frame, now, &mut out).expect("send");
                if n > 0 {
                    net.send(out[..n].to_vec(), n + 28, now);
                }
            }
            None => a.skip_frame(),
        }
    }
    delivered
}

/// The jitter-buffer counters that must not depend on decoding.
fn accounting(s: &JitterStats) -> [u64; 10] {
    [
        s.received,
        s.played,
        s.late,
        s.duplicates,
        s.overflow,
        s.discarded,
        s.fec_recovered,
        s.decode_errors,
        s.resyncs,
        s.suspects,
    ]
}

#[test]
fn a_skipped_leg_plays_loses_and_drops_the_same_packets_as_a_decoding_leg() {
    // With FEC, a packet that comes after its successor was played has been recovered
    // (it is then a duplicate); without, it is late.
    for fec in [true, false] {
        same_accounting(fec);
    }
}

fn same_accounting(fec: bool) {
    // Speech with pauses (Opus DTX stops sending in them) over a congested link with more
    // reordering and duplication: loss bursts (FEC and concealment), late packets.
    let config = opus_config_fec(true, fec);
    let mut link = LinkConfig::congested();
    // Rarer than the buffer's 1 % late quantile and long: these come too late to play.
    link.reorder = Reorder {
        probability: 0.008,
        delay: Duration::from_millis(200),
    };
    link.duplicate = Duplicate {
        probability: 0.02,
        delay: Duration::from_millis(5),
    };
    let deliveries = trace(&config, &speech(0.0, 19.0), 100, link);
    let mut decoding = leg(config.clone(), None, 2, epoch());
    let mut skipping = leg(config, None, 2, epoch());
    let mut frame = vec![0.0f32; FRAME];
    let ticks = deliveries.last().map_or(0, |d| d.0) + 10;
    let mut next = 0;
    let (mut decoded_samples, mut skipped_samples) = (0usize, 0usize);
    for k in 0..ticks {
        while let Some((_, d, arrival)) = deliveries.get(next).filter(|d| d.0 == k) {
            let r1 = decoding.handle_datagram(d, *arrival);
            let r2 = skipping.handle_datagram(d, *arrival);
            assert_eq!(r1, r2, "the receive path does not depend on decoding");
            next += 1;
        }
        let a = decoding
            .poll_frame(tick(k), &mut frame)
            .expect("frame size");
        let b = skipping.poll_skip(tick(k), None);
        assert_eq!(b.decoder_calls, 0, "a skipped frame calls no decoder");
        decoded_samples += a.decoded + a.concealed;
        skipped_samples += b.decoded + b.concealed;
    }
    let (d, s) = (decoding.stats(), skipping.stats());
    let (dj, sj) = (d.jitter_buffer, s.jitter_buffer);
    println!("fec {fec}:\ndecoding: {dj:?}\nskipping: {sj:?}");
    // The trace exercises what it must: lost (FEC or concealed), late, duplicates.
    assert!(dj.duplicates > 0, "{dj:?}");
    assert!(
        if fec {
            dj.fec_recovered > 0
        } else {
            dj.late > 0
        },
        "{dj:?}"
    );
    assert!(dj.concealed_ms > 100.0 && dj.played > 800, "{dj:?}");
    assert_eq!(accounting(&dj), accounting(&sj));
    // Concealment of an underrun fills what the frame lacks, which a stretch of another
    // length changes by a 2.5 ms step now and then.
    assert!(
        (dj.concealed_ms - sj.concealed_ms).abs() <= 0.05 * dj.concealed_ms,
        "concealed {} vs {} ms",
        dj.concealed_ms,
        sj.concealed_ms
    );
    // The same media time went through both, to within what stretching changed.
    let stretched = |j: &JitterStats| (j.accelerated_ms + j.expanded_ms) * 48.0;
    let apart = (decoded_samples as f64 - skipped_samples as f64).abs();
    assert!(
        apart <= stretched(&dj) + stretched(&sj),
        "{apart} samples apart"
    );
    assert_eq!(d.packets_lost, s.packets_lost);
    assert_eq!((d.frames_decoded, d.frames_skipped), (ticks as u64, 0));
    assert_eq!((s.frames_decoded, s.frames_skipped), (0, ticks as u64));
    assert_eq!(sj.decoder_calls, 0);
    assert!(dj.decoder_calls >= dj.played);
    // Delays agree to within the stretch that skipping takes at once (a frame or two).
    assert!(
        (dj.current_delay_ms - sj.current_delay_ms).abs() <= 40.0,
        "{} vs {} ms",
        dj.current_delay_ms,
        sj.current_delay_ms
    );
}

/// A packet of the peer's stream with `level` in the audio level extension (or none).
fn packet(
    ssrc: u32,
    seq: u16,
    ext: &[RtpExtension<'_>],
    form: ExtensionForm,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = vec![0u8; 1500];
    let n = RtpPacketBuilder::new(
        PayloadType::new(111).expect("valid"),
        seq,
        u32::from(seq) * 960,
        Ssrc(ssrc),
    )
    .extensions(ext)
    .extension_form(form)
    .payload(payload)
    .write(&mut out)
    .expect("fits");
    out.truncate(n);
    out
}

fn level_ext(data: &[u8]) -> [RtpExtension<'_>; 1] {
    [RtpExtension { id: LEVEL_ID, data }]
}

/// A valid 20 ms Opus payload (a TOC byte for SILK wideband 20 ms, then bytes).
const OPUS_20MS: [u8; 4] = [0x48, 0x00, 0x00, 0x00];

#[test]
fn the_header_level_is_the_latest_packets_and_reads_as_silence_once_old() {
    let mut b = leg(opus_config(false), None, 3, epoch());
    let t = epoch();
    assert_eq!(b.header_level(t), None, "nothing received yet");
    let loud = AudioLevel::new(true, 20).expect("valid");
    let quiet = AudioLevel::new(false, 70).expect("valid");
    let one = ExtensionForm::OneByte;
    b.handle_datagram(
        &packet(9, 100, &level_ext(&[loud.to_byte()]), one, &OPUS_20MS),
        t,
    )
    .expect("valid");
    assert_eq!(b.header_level(t), Some(loud));
    let t1 = t + Duration::from_millis(20);
    b.handle_datagram(
        &packet(9, 101, &level_ext(&[quiet.to_byte()]), one, &OPUS_20MS),
        t1,
    )
    .expect("valid");
    assert_eq!(b.header_level(t1), Some(quiet));
    assert_eq!(b.header_level(t1 + HEADER_LEVEL_MAX_AGE), Some(quiet));
    assert_eq!(
        b.header_level(t1 + HEADER_LEVEL_MAX_AGE + Duration::from_millis(1)),
        Some(AudioLevel::SILENCE),
        "an old level is silence"
    );
    // Packets without it: the peer still sends levels until enough of them in a row.
    let mut now = t1;
    for i in 0..HEADER_LEVEL_ABSENT_AFTER {
        assert!(b.header_level(now).is_some(), "after {i} packets without");
        now += Duration::from_millis(20);
        b.handle_datagram(&packet(9, 102 + i as u16, &[], one, &OPUS_20MS), now)
            .expect("valid");
    }
    assert_eq!(b.header_level(now), None, "the peer stopped sending levels");
    let seq = 102 + HEADER_LEVEL_ABSENT_AFTER as u16;
    b.handle_datagram(
        &packet(9, seq, &level_ext(&[loud.to_byte()]), one, &OPUS_20MS),
        now,
    )
    .expect("valid");
    assert_eq!(b.header_level(now), Some(loud), "and started again");
    assert_eq!(b.stats().header_levels_received, 3);
    // A new source starts without a level until its packets carry one.
    for (i, ext) in [&[][..], &[][..]].into_iter().enumerate() {
        b.handle_datagram(&packet(77, 500 + i as u16, ext, one, &OPUS_20MS), now)
            .expect("valid");
    }
    assert_eq!(b.remote_ssrc(), Some(Ssrc(77)));
    assert_eq!(b.header_level(now), None);
    // The same extension on a leg that did not negotiate it is not read.
    let mut plain = leg(LegConfig::default(), None, 4, epoch());
    plain
        .handle_datagram(
            &packet(9, 100, &level_ext(&[loud.to_byte()]), one, &OPUS_20MS),
            t,
        )
        .expect("valid");
    assert_eq!(plain.header_level(t), None);
}

#[test]
fn packets_with_and_without_the_extension_in_one_stream_never_panic() {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let config = opus_config(false);
    let mut b = leg(config.clone(), None, 5, epoch());
    let mut frame = vec![0.0f32; FRAME];
    let mut with_level = 0u64;
    let mut seq = 1000u16;
    for k in 0..3000usize {
        let now = tick(k);
        let long = [0x80u8 | 30, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF, 0x11];
        let byte = [rng.random::<u8>()];
        let (ext, form): (Vec<RtpExtension<'_>>, ExtensionForm) = match rng.random_range(0..7) {
            0 => (vec![], ExtensionForm::OneByte),
            1 => (level_ext(&byte).to_vec(), ExtensionForm::OneByte),
            // Padded past one byte (read from its first byte).
            2 => (level_ext(&long).to_vec(), ExtensionForm::OneByte),
            // Empty data, only the two-byte form can say it: no level.
            3 => (level_ext(&[]).to_vec(), ExtensionForm::TwoByte),
            4 => (
                vec![RtpExtension {
                    id: 5,
                    data: &long[..3],
                }],
                ExtensionForm::OneByte,
            ),
            5 => (level_ext(&byte).to_vec(), ExtensionForm::TwoByte),
            _ => (
                vec![
                    RtpExtension {
                        id: 3,
                        data: &long[..2],
                    },
                    RtpExtension {
                        id: LEVEL_ID,
                        data: &byte,
                    },
                ],
                ExtensionForm::OneByte,
            ),
        };
        let carries = ext.iter().any(|e| e.id == LEVEL_ID && !e.data.is_empty());
        // Valid Opus, garbage, and an empty payload.
        let payload: Vec<u8> = match rng.random_range(0..6) {
            0 => (0..rng.random_range(1..40)).map(|_| rng.random()).collect(),
            1 => vec![],
            _ => OPUS_20MS.to_vec(),
        };
        seq = seq.wrapping_add(rng.random_range(0..3));
        let d = packet(21, seq, &ext, form, &payload);
        if b.handle_datagram(&d, now).is_ok() && carries {
            with_level += 1;
        }
        if rng.random_bool(0.5) {
            b.poll_skip(now, None);
        } else {
            b.poll_frame(now, &mut frame).expect("frame size");
            assert!(frame.iter().all(|x| x.is_finite()));
        }
        if let Some(l) = b.header_level(now) {
            assert!(l.level() <= 127);
        }
    }
    let s = b.stats();
    assert_eq!(s.header_levels_received, with_level);
    assert!(with_level > 1000, "{with_level}");
    assert_eq!(s.frames_decoded + s.frames_skipped, 3000);
}

#[test]
fn a_leg_that_resumes_decoding_after_skipping_plays_the_current_speech() {
    let config = opus_config(false);
    let input = speech(0.5, 8.0);
    let deliveries = trace(&config, &input, 50, LinkConfig::wifi());
    let mut b = leg(config, None, 6, epoch());
    let mut frame = vec![0.0f32; FRAME];
    let resume = 150; // 3 s skipped
    let mut out = Vec::new();
    let mut next = 0;
    let mut first = Vec::new();
    for k in 0..input.len() / FRAME + 50 {
        while let Some((_, d, arrival)) = deliveries.get(next).filter(|d| d.0 == k) {
            b.handle_datagram(d, *arrival).expect("valid");
            next += 1;
        }
        if k < resume {
            let info = b.poll_skip(tick(k), None);
            assert_eq!(info.decoder_calls, 0);
        } else {
            let info = b.poll_frame(tick(k), &mut frame).expect("frame size");
            if k == resume {
                assert!(info.decoder_calls > 0, "the first frame decodes");
                first = frame.clone();
            }
            out.extend_from_slice(&frame);
        }
    }
    // The first frame is bounded audio, not a burst from a stale decoder state.
    assert!(first.iter().all(|x| x.is_finite() && x.abs() < 1.0));
    // What was played after resuming is the speech sent from then on.
    let reference = &input[resume * FRAME..];
    let al = aligned_correlation(reference, &out);
    println!("after resuming: {al:?}");
    assert!(al.windows >= 10, "{al:?}");
    assert!(al.mean > 0.8, "{al:?}");
    assert!(al.delay_ms < 200.0, "{al:?}");
    let s = b.stats();
    assert_eq!(s.frames_skipped, resume as u64);
}
