//! An Opus leg whose peer asked for `a=ptime:40` or `60` (or `maxptime` up to 120) sends
//! packets of that duration that libopus decodes to the input: its 10/20 ms frames, encoded
//! one per tick, joined into one RFC 6716 packet. So is a payload encoded once for many
//! listeners (`send_payload`). A frame that cannot share the packet's TOC ends it early,
//! and a DTX frame ends the talkspurt's last packet.
//!
//! Deterministic: the speech sample is committed, libopus is deterministic for a given
//! input and configuration, legs are seeded, and time is an origin `Instant` plus frame
//! periods. The strongest check compares with a one-frame-per-packet leg fed the same
//! input: joining frames must not change a single decoded sample.

mod leg_harness;

use std::time::{Duration, Instant};

use confer_codecs::decoder::{AudioDecoder, AudioEncoder};
use confer_codecs::opus::{OpusDecoder, OpusEncoder, OpusEncoderConfig, parse_packet};
use confer_engine::leg::{Codec, LegConfig, LegError, MediaLeg, OpusParams};
use confer_engine::rtp::RtpPacket;
use leg_harness::{epoch, leg, speech};

const TS0: u32 = 1_000;

fn config(frame_ms: u32, ptime_ms: Option<u32>, dtx: bool) -> LegConfig {
    LegConfig {
        codec: Codec::Opus(OpusParams {
            dtx,
            ..OpusParams::default()
        }),
        frame_ms,
        ptime_ms,
        initial_timestamp: Some(TS0),
        ..LegConfig::default()
    }
}

fn tick(k: usize, frame_ms: u32) -> Instant {
    epoch() + Duration::from_millis(u64::from(frame_ms) * k as u64)
}

/// A sent packet: the tick that returned it, its timestamp, marker and payload.
#[derive(Debug, Clone)]
struct Sent {
    tick: usize,
    ts: u32,
    marker: bool,
    payload: Vec<u8>,
}

fn read(tick: usize, datagram: &[u8]) -> Sent {
    let p = RtpPacket::parse(datagram).expect("the leg writes valid RTP");
    Sent {
        tick,
        ts: p.timestamp(),
        marker: p.marker(),
        payload: p.payload().to_vec(),
    }
}

/// Sends `signal` frame by frame through `l`.
fn send_all(l: &mut MediaLeg, signal: &[f32], frame_ms: u32) -> Vec<Sent> {
    let n = 48 * frame_ms as usize;
    let mut out = [0u8; 1500];
    let mut sent = Vec::new();
    for (k, frame) in signal.chunks_exact(n).enumerate() {
        let len = l
            .send_frame(frame, tick(k, frame_ms), &mut out)
            .expect("send");
        if len > 0 {
            sent.push(read(k, &out[..len]));
        }
    }
    sent
}

/// Decodes packets one after the other with one decoder, asserting each decodes to the
/// duration its TOC declares.
fn decode_all(packets: &[Sent]) -> Vec<f32> {
    let mut dec = OpusDecoder::new(48_000).expect("decoder");
    let mut buf = vec![0.0f32; 5760];
    let mut out = Vec::new();
    for p in packets {
        let info = parse_packet(&p.payload).expect("a valid Opus packet");
        let n = dec
            .decode(&p.payload, &mut buf)
            .expect("libopus decodes it");
        assert_eq!(n, info.samples(48_000));
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// The best normalised correlation, over one second of `x` from 0.2 s on, of `y` delayed
/// by up to 20 ms (libopus delays by 6.5 ms) with `x`.
fn best_correlation(x: &[f32], y: &[f32]) -> f64 {
    let x = &x[9600..57_600];
    (0..960)
        .map(|lag| {
            let (mut sxy, mut sxx, mut syy) = (0.0f64, 0.0f64, 0.0f64);
            for (a, b) in x.iter().zip(y.iter().skip(9600 + lag)) {
                let (a, b) = (f64::from(*a), f64::from(*b));
                sxy += a * b;
                sxx += a * a;
                syy += b * b;
            }
            sxy / (sxx * syy).sqrt().max(1e-12)
        })
        .fold(f64::MIN, f64::max)
}

#[test]
fn opus_at_ptime_40_to_120_decodes_to_the_same_audio_as_one_frame_per_packet() {
    // 3.6 s: a whole number of packets at every ptime below.
    let input = speech(0.5, 3.6);
    for (frame_ms, ptime) in [(20, 40), (20, 60), (10, 60), (20, 120)] {
        let frames_per_packet = (ptime / frame_ms) as usize;
        let frame = 48 * frame_ms as usize;
        let total_frames = input.len() / frame;
        let mut reference = leg(config(frame_ms, None, false), None, 1, epoch());
        let mut l = leg(config(frame_ms, Some(ptime), false), None, 1, epoch());
        let single = send_all(&mut reference, &input, frame_ms);
        let sent = send_all(&mut l, &input, frame_ms);
        assert_eq!(single.len(), total_frames, "no DTX: a packet per frame");

        // Each packet: whole frames of the frame duration, at most the ptime, at the
        // timestamp where the previous one ended; a packet that ends early (the next
        // frame's TOC differed) is written on the tick of that next frame.
        let mut frames_before = 0usize;
        let mut early = 0;
        for p in &sent {
            let info = parse_packet(&p.payload).expect("valid Opus");
            assert_eq!(info.samples_per_frame(48_000), frame);
            assert!(info.frame_count <= frames_per_packet);
            assert_eq!(p.ts, TS0 + (frame * frames_before) as u32);
            if info.frame_count == frames_per_packet {
                assert_eq!(p.tick, frames_before + frames_per_packet - 1);
            } else {
                early += 1;
                assert_eq!(p.tick, frames_before + info.frame_count);
            }
            frames_before += info.frame_count;
            assert_eq!(p.marker, p.ts == TS0);
        }
        assert_eq!(frames_before, total_frames, "every frame was sent");
        println!(
            "{frame_ms} ms frames, ptime {ptime}: {} packets, {early} ended early by a TOC change",
            sent.len()
        );
        assert!(
            early * 10 <= sent.len(),
            "{early} of {} packets ended early",
            sent.len()
        );

        // Joined frames decode exactly as the same frames one per packet.
        let joined = decode_all(&sent);
        let separate = decode_all(&single);
        assert_eq!(joined.len(), input.len());
        assert_eq!(joined, separate, "{frame_ms} ms frames, ptime {ptime}");
        let c = best_correlation(&input, &joined);
        println!("  correlation with the input {c:.3}");
        assert!(c > 0.9, "correlation with the input {c:.3}");
    }
}

#[test]
fn a_steady_tone_at_ptime_40_and_60_goes_out_on_every_second_and_third_tick() {
    let tone: Vec<f32> = (0..86_400)
        .map(|i| 0.3 * (2.0 * std::f32::consts::PI * 300.0 * i as f32 / 48_000.0).sin())
        .collect();
    for (ptime, frames) in [(40, 2), (60, 3)] {
        let mut l = leg(config(20, Some(ptime), false), None, 2, epoch());
        let sent = send_all(&mut l, &tone, 20);
        let ticks: Vec<usize> = sent.iter().map(|p| p.tick).collect();
        let every: Vec<usize> = (0..90).filter(|k| k % frames == frames - 1).collect();
        assert_eq!(ticks, every, "ptime {ptime}");
        for (i, p) in sent.iter().enumerate() {
            let info = parse_packet(&p.payload).expect("valid Opus");
            assert_eq!(
                (info.frame_count, info.samples(48_000)),
                (frames, 960 * frames)
            );
            assert_eq!(p.ts, TS0 + (960 * frames * i) as u32);
        }
        let decoded = decode_all(&sent);
        let c = best_correlation(&tone, &decoded);
        assert!(c > 0.95, "ptime {ptime}: tone correlation {c:.3}");
        assert_eq!(
            l.stats().rtp_packets_sent,
            sent.len() as u64,
            "ptime {ptime}"
        );
    }
}

/// The speech encoded as 20 ms frames once, as a conference room encodes a mix for all its
/// listeners, with the leg's own settings.
fn shared_payloads(seconds: f64) -> (Vec<f32>, Vec<Vec<u8>>) {
    let input = speech(1.0, seconds);
    let mut enc = OpusEncoder::new(OpusEncoderConfig {
        complexity: 5,
        expected_loss_percent: 0,
        ..OpusEncoderConfig::default()
    })
    .expect("encoder");
    let mut buf = [0u8; 1500];
    let payloads = input
        .chunks_exact(960)
        .map(|f| {
            let n = enc.encode(f, &mut buf).expect("encode");
            buf[..n].to_vec()
        })
        .collect();
    (input, payloads)
}

#[test]
fn a_payload_shared_by_many_listeners_is_joined_at_ptime_40_by_each_leg() {
    let (input, payloads) = shared_payloads(2.0);
    let mut listeners: Vec<MediaLeg> = (0..3)
        .map(|seed| leg(config(20, Some(40), false), None, 10 + seed, epoch()))
        .collect();
    let mut out = [0u8; 1500];
    let mut sent: Vec<Vec<Sent>> = vec![Vec::new(); listeners.len()];
    for (k, payload) in payloads.iter().enumerate() {
        for (l, s) in listeners.iter_mut().zip(sent.iter_mut()) {
            let n = l
                .send_payload(payload, tick(k, 20), &mut out)
                .expect("payload");
            if n > 0 {
                s.push(read(k, &out[..n]));
            }
        }
    }
    for (i, s) in sent.iter().enumerate() {
        // Every frame, joined in pairs unless a TOC change ended a packet early.
        let frames: usize = s
            .iter()
            .map(|p| parse_packet(&p.payload).expect("valid").frame_count)
            .sum();
        assert_eq!(frames, payloads.len(), "listener {i}");
        let pairs = s
            .iter()
            .filter(|p| parse_packet(&p.payload).expect("valid").frame_count == 2)
            .count();
        assert!(
            pairs * 10 >= s.len() * 9,
            "listener {i}: {pairs} of {}",
            s.len()
        );
        // Each listener joins the same frames the same way; only the headers differ.
        let payloads_of = |s: &[Sent]| s.iter().map(|p| p.payload.clone()).collect::<Vec<_>>();
        assert_eq!(payloads_of(s), payloads_of(&sent[0]));
    }
    assert_ne!(listeners[0].local_ssrc(), listeners[1].local_ssrc());
    // Decoded, the joined packets are the shared frames decoded one by one.
    let joined = decode_all(&sent[0]);
    let mut dec = OpusDecoder::new(48_000).expect("decoder");
    let mut buf = [0.0f32; 960];
    let mut separate = Vec::new();
    for p in &payloads {
        let n = dec.decode(p, &mut buf).expect("decode");
        separate.extend_from_slice(&buf[..n]);
    }
    assert_eq!(joined, separate);
    let c = best_correlation(&input, &joined);
    assert!(c > 0.9, "correlation with the input {c:.3}");
}

#[test]
fn a_payload_that_is_not_one_frame_is_refused_and_nothing_moves() {
    let (_, payloads) = shared_payloads(0.2);
    let mut ten_ms = OpusEncoder::new(OpusEncoderConfig {
        frame_ms: 10,
        ..OpusEncoderConfig::default()
    })
    .expect("encoder");
    let mut buf = [0u8; 1500];
    let n = ten_ms.encode(&[0.1; 480], &mut buf).expect("encode");
    let short = buf[..n].to_vec();

    let mut l = leg(config(20, Some(40), false), None, 3, epoch());
    let mut out = [0u8; 1500];
    assert_eq!(l.send_payload(&payloads[0], tick(0, 20), &mut out), Ok(0));
    let refused = [
        (
            &short[..],
            "an Opus payload of another duration than the frame",
        ),
        // A code 1 TOC byte with an odd length: not Opus.
        (&[0xF9, 1, 2, 3][..], "not a valid Opus packet"),
        (&[0u8][..0], "not a valid Opus packet"),
        (
            &[0x78u8; 1300][..],
            "an Opus payload larger than MAX_ENCODED_PAYLOAD",
        ),
    ];
    for (payload, why) in refused {
        assert_eq!(
            l.send_payload(payload, tick(1, 20), &mut out),
            Err(LegError::BadPayload(why))
        );
    }
    // The gathered frame, the timestamp and the counters are as before the refusals.
    let n = l
        .send_payload(&payloads[1], tick(1, 20), &mut out)
        .expect("payload");
    let p = read(1, &out[..n]);
    assert_eq!(p.ts, TS0);
    assert_eq!(parse_packet(&p.payload).expect("valid").frame_count, 2);
    assert_eq!(l.stats().rtp_packets_sent, 1);
}

#[test]
fn a_frame_with_another_toc_ends_the_packet_early_and_starts_the_next() {
    let (_, wide) = shared_payloads(0.2);
    // 8 kbit/s: libopus codes narrowband SILK, a TOC no 32 kbit/s frame has.
    let mut narrow_enc = OpusEncoder::new(OpusEncoderConfig {
        bitrate_bps: 8_000,
        ..OpusEncoderConfig::default()
    })
    .expect("encoder");
    let mut buf = [0u8; 1500];
    let input = speech(1.0, 0.2);
    let narrow: Vec<Vec<u8>> = input
        .chunks_exact(960)
        .map(|f| {
            let n = narrow_enc.encode(f, &mut buf).expect("encode");
            buf[..n].to_vec()
        })
        .collect();
    let toc = |p: &[u8]| parse_packet(p).expect("valid").toc & !3;
    assert_ne!(toc(&wide[0]), toc(&narrow[9]), "the test needs two TOCs");
    assert_eq!(toc(&narrow[7]), toc(&narrow[8]));
    assert_eq!(toc(&narrow[8]), toc(&narrow[9]));

    let mut l = leg(config(20, Some(60), false), None, 4, epoch());
    let mut out = [0u8; 1500];
    let mut send = |k: usize, payload: &[u8]| {
        let n = l
            .send_payload(payload, tick(k, 20), &mut out)
            .expect("payload");
        (n > 0).then(|| read(k, &out[..n]))
    };
    assert!(send(0, &wide[0]).is_none());
    // The narrowband frame cannot join: the wideband frame goes out alone, as encoded.
    let p = send(1, &narrow[7]).expect("the early packet");
    assert_eq!((p.ts, p.marker), (TS0, true));
    assert_eq!(p.payload, wide[0]);
    assert!(send(2, &narrow[8]).is_none());
    let p = send(3, &narrow[9]).expect("a full packet");
    assert_eq!((p.ts, p.marker), (TS0 + 960, false));
    let info = parse_packet(&p.payload).expect("valid");
    assert_eq!((info.frame_count, info.toc & !3), (3, toc(&narrow[9])));
    let decoded = decode_all(&[p]);
    assert_eq!(decoded.len(), 2880);
}

#[test]
fn a_dtx_frame_sends_the_partial_packet_and_marks_the_next() {
    let (_, voice) = shared_payloads(0.2);
    let mut l = leg(config(20, Some(40), true), None, 5, epoch());
    let mut out = [0u8; 1500];
    let dtx = &voice[0][..1];
    let mut send = |k: usize, payload: &[u8]| {
        let n = l
            .send_payload(payload, tick(k, 20), &mut out)
            .expect("payload");
        (n > 0).then(|| read(k, &out[..n]))
    };
    assert!(send(0, &voice[0]).is_none());
    let p = send(1, &voice[1]).expect("a packet");
    assert_eq!((p.ts, p.marker), (TS0, true));
    assert!(send(2, &voice[2]).is_none());
    // The talkspurt ends: its last frame goes out alone.
    let p = send(3, dtx).expect("the partial packet");
    assert_eq!(
        (p.ts, p.marker, p.payload.clone()),
        (TS0 + 1920, false, voice[2].clone())
    );
    // DTX with nothing gathered sends nothing.
    assert!(send(4, dtx).is_none());
    assert!(send(5, &voice[3]).is_none());
    let p = send(6, &voice[4]).expect("a packet");
    assert_eq!((p.ts, p.marker), (TS0 + 5 * 960, true));
    assert_eq!(parse_packet(&p.payload).expect("valid").frame_count, 2);
    let s = l.stats();
    assert_eq!(
        (s.dtx_frames, s.rtp_packets_sent, s.unsent_frames),
        (2, 3, 0)
    );
}

#[test]
fn an_own_encode_with_dtx_at_ptime_60_sends_partial_packets_at_talkspurt_ends() {
    // Speech, then 2 s of silence, then speech: the own encoder's DTX ends a talkspurt.
    let mut signal = speech(0.5, 1.0);
    signal.extend(std::iter::repeat_n(0.0f32, 96_000));
    signal.extend(speech(2.0, 1.0));
    let mut l = leg(config(20, Some(60), true), None, 6, epoch());
    let mut sent = send_all(&mut l, &signal, 20);
    let mut out = [0u8; 1500];
    let n = l.flush(&mut out).expect("flush");
    if n > 0 {
        sent.push(read(signal.len() / 960, &out[..n]));
    }
    let s = l.stats();
    assert!(s.dtx_frames >= 50, "{} DTX frames", s.dtx_frames);
    // Timestamps never overlap, and every frame not suppressed went out.
    let mut frames = 0u64;
    let mut end = TS0;
    for p in &sent {
        let info = parse_packet(&p.payload).expect("valid");
        assert!(info.frame_count <= 3);
        assert!(p.ts >= end, "packet at {} overlaps the previous", p.ts);
        assert_eq!(
            p.marker,
            p.ts > end || p.ts == TS0,
            "marked only after a gap"
        );
        end = p.ts + info.samples(48_000) as u32;
        frames += info.frame_count as u64;
    }
    assert_eq!(frames + s.dtx_frames, (signal.len() / 960) as u64);
    assert!(
        sent.iter().skip(1).any(|p| p.marker),
        "the second talkspurt is marked"
    );
    assert_eq!(s.unsent_frames, 0);
}
