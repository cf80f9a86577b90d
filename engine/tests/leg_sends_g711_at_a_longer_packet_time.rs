//! A G.711 leg whose peer asked for `a=ptime:40` (or 30, 60) sends one packet every second
//! (third) frame tick: the frames' samples back to back, the first frame's timestamp, the
//! marker on a talkspurt's first packet, one RFC 6464 level for the packet, and sender
//! reports that count what went out. A pause sends the partial packet (or drops it, when
//! the caller has no buffer to give).
//!
//! Deterministic: the input is a fixed tone whose amplitude changes per frame, G.711 is
//! stateless, and time is an origin `Instant` plus frame periods. Every expected payload
//! is what a one-frame-per-packet leg sends for the same input: the two must agree byte
//! for byte.

mod leg_harness;

use std::time::{Duration, Instant};

use confer_engine::leg::{Codec, LegConfig, LegError, MediaLeg};
use confer_engine::rtcp::{CompoundRules, RtcpPacket, parse_compound};
use confer_engine::rtp::RtpPacket;
use confer_engine::types::{PayloadType, Ssrc};
use leg_harness::{epoch, leg};

const LEVEL_ID: u8 = 3;

/// One 20 ms (or `frame_ms`) frame of a 440 Hz tone at an amplitude that depends on `k`.
fn frame(k: usize, frame_ms: u32) -> Vec<f32> {
    let n = 48 * frame_ms as usize;
    let amplitude = [0.5, 0.05, 0.2, 0.0, 0.8][k % 5];
    (0..n)
        .map(|i| {
            let t = (k * n + i) as f32 / 48_000.0;
            amplitude * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
        })
        .collect()
}

fn config(codec: Codec, frame_ms: u32, ptime_ms: Option<u32>) -> LegConfig {
    LegConfig {
        codec,
        frame_ms,
        ptime_ms,
        local_ssrc: Some(Ssrc(0x1234)),
        initial_seq: Some(65_534),
        initial_timestamp: Some(u32::MAX - 200),
        audio_level_extension: Some(LEVEL_ID),
        ..LegConfig::default()
    }
}

fn tick(k: usize, frame_ms: u32) -> Instant {
    epoch() + Duration::from_millis(u64::from(frame_ms) * k as u64)
}

/// A sent packet's fields.
#[derive(Debug, Clone, PartialEq)]
struct Sent {
    /// The frame tick that returned it.
    tick: usize,
    seq: u16,
    ts: u32,
    marker: bool,
    level: Option<(bool, u8)>,
    payload: Vec<u8>,
}

fn read(tick: usize, datagram: &[u8]) -> Sent {
    let p = RtpPacket::parse(datagram).expect("the leg writes valid RTP");
    assert_eq!(p.ssrc(), Ssrc(0x1234));
    Sent {
        tick,
        seq: p.sequence_number(),
        ts: p.timestamp(),
        marker: p.marker(),
        level: p.audio_level(LEVEL_ID).map(|l| (l.voice(), l.level())),
        payload: p.payload().to_vec(),
    }
}

/// Sends `frames` frames (tick by tick) and returns each call's result length and the
/// packets.
fn send(l: &mut MediaLeg, frames: usize, frame_ms: u32) -> (Vec<usize>, Vec<Sent>) {
    let mut out = [0u8; 1500];
    let mut lens = Vec::new();
    let mut sent = Vec::new();
    for k in 0..frames {
        let n = l
            .send_frame(&frame(k, frame_ms), tick(k, frame_ms), &mut out)
            .expect("send");
        lens.push(n);
        if n > 0 {
            sent.push(read(k, &out[..n]));
        }
    }
    (lens, sent)
}

#[test]
fn pcmu_at_ptime_40_sends_a_packet_every_second_frame_of_both_frames_samples() {
    let mut reference = leg(config(Codec::Pcmu, 20, None), None, 1, epoch());
    let mut l = leg(config(Codec::Pcmu, 20, Some(40)), None, 1, epoch());
    assert_eq!(l.packet_duration(), Duration::from_millis(40));
    let (_, single) = send(&mut reference, 10, 20);
    let (lens, sent) = send(&mut l, 10, 20);

    // Nothing on the first frame of each pair, a packet on the second.
    for (k, n) in lens.iter().enumerate() {
        assert_eq!(*n > 0, k % 2 == 1, "tick {k}: {n}");
    }
    assert_eq!(sent.len(), 5);
    for (i, p) in sent.iter().enumerate() {
        assert_eq!(p.payload.len(), 320);
        // The first frame's timestamp, advancing by 320 (across the 32-bit wrap), one
        // sequence number per packet (across the 16-bit wrap).
        assert_eq!(p.ts, (u32::MAX - 200).wrapping_add(320 * i as u32));
        assert_eq!(p.seq, 65_534u16.wrapping_add(i as u16));
        assert_eq!(p.marker, i == 0);
        // The samples of frames 2i and 2i+1, exactly as one packet per frame carries them.
        let both = [
            single[2 * i].payload.clone(),
            single[2 * i + 1].payload.clone(),
        ]
        .concat();
        assert_eq!(p.payload, both, "packet {i}");
    }
    assert_eq!(l.stats().rtp_packets_sent, 5);
    assert_eq!(l.stats().unsent_frames, 0);
}

#[test]
fn pcma_at_ptime_60_and_10_ms_frames_at_ptime_30_send_every_third_frame() {
    for (frame_ms, ptime, bytes) in [(20, 60, 480), (10, 30, 240)] {
        let mut reference = leg(config(Codec::Pcma, frame_ms, None), None, 2, epoch());
        let mut l = leg(config(Codec::Pcma, frame_ms, Some(ptime)), None, 2, epoch());
        let (_, single) = send(&mut reference, 12, frame_ms);
        let (lens, sent) = send(&mut l, 12, frame_ms);
        let ticks: Vec<usize> = sent.iter().map(|p| p.tick).collect();
        assert_eq!(ticks, [2, 5, 8, 11], "{frame_ms} ms frames, ptime {ptime}");
        assert_eq!(lens.iter().filter(|&&n| n == 0).count(), 8);
        for (i, p) in sent.iter().enumerate() {
            assert_eq!(p.payload.len(), bytes);
            assert_eq!(p.ts, (u32::MAX - 200).wrapping_add(bytes as u32 * i as u32));
            let three: Vec<u8> = single[3 * i..3 * i + 3]
                .iter()
                .flat_map(|s| s.payload.clone())
                .collect();
            assert_eq!(p.payload, three);
        }
    }
}

#[test]
fn a_ptime_of_one_frame_sends_exactly_what_no_ptime_sends() {
    let mut reference = leg(config(Codec::Pcmu, 20, None), None, 3, epoch());
    let mut l = leg(config(Codec::Pcmu, 20, Some(20)), None, 3, epoch());
    assert_eq!(send(&mut l, 6, 20), send(&mut reference, 6, 20));
    let mut out = [0u8; 1500];
    l.skip_frame();
    assert_eq!(l.skip_frame_flush(&mut out), Ok(0));
    assert_eq!(l.flush(&mut out), Ok(0));
}

#[test]
fn the_packets_level_is_the_mean_power_of_its_frames() {
    let mut reference = leg(config(Codec::Pcmu, 20, None), None, 4, epoch());
    let mut l = leg(config(Codec::Pcmu, 20, Some(40)), None, 4, epoch());
    let (_, single) = send(&mut reference, 10, 20);
    let (_, sent) = send(&mut l, 10, 20);
    for (i, p) in sent.iter().enumerate() {
        let (v0, l0) = single[2 * i].level.expect("level");
        let (v1, l1) = single[2 * i + 1].level.expect("level");
        let power = (10f64.powf(-f64::from(l0) / 10.0) + 10f64.powf(-f64::from(l1) / 10.0)) / 2.0;
        let expected = (-10.0 * power.log10()).round() as i32;
        let (voice, level) = p.level.expect("the packet carries a level");
        // Within the rounding of the per-frame levels.
        assert!(
            (i32::from(level) - expected).abs() <= 1,
            "packet {i}: frames at -{l0} and -{l1} dBov, packet at -{level}, expected -{expected}"
        );
        assert_eq!(voice, v0 || v1, "packet {i}");
    }
    // The tone's loud and quiet frames: the packets are not all at one level.
    let levels: Vec<u8> = sent.iter().map(|p| p.level.expect("level").1).collect();
    assert!(levels.iter().max() > levels.iter().min(), "{levels:?}");
}

#[test]
fn a_pause_sends_the_partial_packet_and_marks_the_next() {
    let mut l = leg(config(Codec::Pcmu, 20, Some(60)), None, 5, epoch());
    let ts0 = u32::MAX - 200;
    let mut out = [0u8; 1500];
    for k in 0..2 {
        assert_eq!(l.send_frame(&frame(k, 20), tick(k, 20), &mut out), Ok(0));
    }
    // Nothing to send at tick 2: the two frames go out as a 40 ms packet.
    let n = l.skip_frame_flush(&mut out).expect("flush");
    let p = read(2, &out[..n]);
    assert_eq!((p.ts, p.marker, p.payload.len()), (ts0, true, 320));
    // The next talkspurt starts after the skipped frame's time, marked.
    let mut lens = Vec::new();
    let mut sent = Vec::new();
    for k in 3..9 {
        let n = l
            .send_frame(&frame(k, 20), tick(k, 20), &mut out)
            .expect("send");
        lens.push(n);
        if n > 0 {
            sent.push(read(k, &out[..n]));
        }
    }
    assert_eq!(lens.iter().filter(|&&n| n > 0).count(), 2);
    assert_eq!(
        sent.iter()
            .map(|p| (p.tick, p.ts, p.marker, p.payload.len()))
            .collect::<Vec<_>>(),
        [
            (5, ts0.wrapping_add(480), true, 480),
            (8, ts0.wrapping_add(960), false, 480)
        ]
    );
    assert_eq!(
        sent.iter().map(|p| p.seq).collect::<Vec<_>>(),
        [65_535, 0],
        "one sequence number per packet, the partial one included"
    );
    assert_eq!(l.stats().unsent_frames, 0);

    // A flush without a pause: the partial packet goes, the next one follows unmarked.
    l.send_frame(&frame(9, 20), tick(9, 20), &mut out)
        .expect("send");
    let n = l.flush(&mut out).expect("flush");
    let p = read(9, &out[..n]);
    assert_eq!(
        (p.ts, p.marker, p.payload.len()),
        (ts0.wrapping_add(1440), false, 160)
    );
    assert_eq!(l.flush(&mut out), Ok(0), "nothing left to flush");
    for k in 10..13 {
        let n = l
            .send_frame(&frame(k, 20), tick(k, 20), &mut out)
            .expect("send");
        if k == 12 {
            let p = read(k, &out[..n]);
            assert_eq!((p.ts, p.marker), (ts0.wrapping_add(1600), false));
        }
    }
}

#[test]
fn a_skip_without_a_buffer_drops_the_partial_packet_and_counts_it() {
    let mut l = leg(config(Codec::Pcmu, 20, Some(60)), None, 6, epoch());
    let ts0 = u32::MAX - 200;
    let mut out = [0u8; 1500];
    for k in 0..2 {
        assert_eq!(l.send_frame(&frame(k, 20), tick(k, 20), &mut out), Ok(0));
    }
    l.skip_frame();
    assert_eq!(l.stats().unsent_frames, 2);
    assert_eq!(l.flush(&mut out), Ok(0), "the dropped frames are gone");
    let mut sent = Vec::new();
    for k in 3..6 {
        let n = l
            .send_frame(&frame(k, 20), tick(k, 20), &mut out)
            .expect("send");
        if n > 0 {
            sent.push(read(k, &out[..n]));
        }
    }
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].ts, sent[0].marker), (ts0.wrapping_add(480), true));
    assert_eq!(
        sent[0].seq, 65_534,
        "the dropped packet took no sequence number"
    );
}

#[test]
fn a_shared_payload_is_gathered_like_an_own_frame() {
    let mut l = leg(config(Codec::Pcmu, 20, Some(40)), None, 7, epoch());
    let mut out = [0u8; 1500];
    let a = [0x11u8; 160];
    let b = [0x22u8; 160];
    assert_eq!(l.send_payload(&a, tick(0, 20), &mut out), Ok(0));
    // A payload that is not one frame of samples is refused, and nothing moves.
    assert_eq!(
        l.send_payload(&[0x33; 80], tick(1, 20), &mut out),
        Err(LegError::BadPayload("not one frame of G.711 samples"))
    );
    let n = l.send_payload(&b, tick(1, 20), &mut out).expect("payload");
    let p = read(1, &out[..n]);
    assert_eq!(p.payload, [a, b].concat());
    assert_eq!(p.ts, u32::MAX - 200);
    // Shared payloads carry no level: the leg never saw their PCM.
    assert_eq!(p.level, None);
    // An own frame and a shared payload share a packet; the packet then has no level.
    assert_eq!(l.send_frame(&frame(2, 20), tick(2, 20), &mut out), Ok(0));
    let n = l.send_payload(&b, tick(3, 20), &mut out).expect("payload");
    let p = read(3, &out[..n]);
    assert_eq!(
        (p.ts, p.level, p.payload.len()),
        ((u32::MAX - 200).wrapping_add(320), None, 320)
    );
    assert_eq!(&p.payload[160..], &b[..]);
}

#[test]
fn sender_reports_count_the_packets_and_octets_sent_and_the_frames_clock() {
    let mut l = leg(
        LegConfig {
            rtcp_interval: Duration::from_millis(500),
            ..config(Codec::Pcmu, 20, Some(40))
        },
        None,
        8,
        epoch(),
    );
    let ts0 = u32::MAX - 200;
    let mut out = [0u8; 1500];
    let mut packets = 0u32;
    let mut reports = 0;
    for k in 0..300 {
        let now = tick(k, 20);
        if l.send_frame(&frame(k, 20), now, &mut out).expect("send") > 0 {
            packets += 1;
        }
        let Some(n) = l.poll_rtcp(now, &mut out).expect("rtcp") else {
            continue;
        };
        let compound = parse_compound(&out[..n], CompoundRules::Rfc3550).expect("valid RTCP");
        let RtcpPacket::SenderReport(sr) = &compound[0] else {
            panic!("a sending leg reports with an SR: {compound:?}");
        };
        reports += 1;
        assert_eq!(sr.packet_count, packets, "tick {k}");
        assert_eq!(sr.octet_count, 320 * packets, "tick {k}");
        // The media clock at the report: 8 samples per ms since the first frame, whether
        // or not this tick's frame went out yet.
        assert_eq!(sr.rtp_time, ts0.wrapping_add(160 * k as u32), "tick {k}");
    }
    assert!(reports >= 5, "{reports} reports in 6 s");
    assert_eq!(packets, 150);
    let s = l.stats();
    assert_eq!(s.rtp_packets_sent, 150);
    // Header (12) and one-byte level extension (8) on each.
    assert_eq!(s.rtp_bytes_sent, 150 * (12 + 8 + 320));
}

#[test]
fn the_payload_type_is_the_codecs_at_any_packet_time() {
    let mut l = leg(config(Codec::Pcma, 20, Some(120)), None, 9, epoch());
    let (lens, sent) = send(&mut l, 6, 20);
    assert_eq!(lens, [0, 0, 0, 0, 0, 12 + 8 + 960]);
    let mut out = [0u8; 1500];
    for k in 0..6 {
        let n = l
            .send_frame(&frame(k, 20), tick(k + 6, 20), &mut out)
            .expect("send");
        if n > 0 {
            let p = RtpPacket::parse(&out[..n]).expect("valid");
            assert_eq!(p.payload_type(), PayloadType::PCMA);
        }
    }
    assert_eq!(sent[0].payload.len(), 960);
}

#[test]
fn a_packet_that_does_not_fit_the_buffer_is_lost_and_counted_and_the_next_follows() {
    let mut l = leg(config(Codec::Pcmu, 20, Some(40)), None, 10, epoch());
    let mut out = [0u8; 1500];
    assert_eq!(l.send_frame(&frame(0, 20), tick(0, 20), &mut out), Ok(0));
    let e = l
        .send_frame(&frame(1, 20), tick(1, 20), &mut out[..100])
        .expect_err("320 bytes do not fit 100");
    assert!(matches!(e, LegError::BufferTooSmall { .. }), "{e:?}");
    let s = l.stats();
    assert_eq!((s.unsent_frames, s.rtp_packets_sent), (2, 0));
    let mut sent = Vec::new();
    for k in 2..4 {
        let n = l
            .send_frame(&frame(k, 20), tick(k, 20), &mut out)
            .expect("send");
        if n > 0 {
            sent.push(read(k, &out[..n]));
        }
    }
    // The lost packet's time passed; it took no sequence number, and the first packet
    // that goes out is still the talkspurt's first.
    assert_eq!(sent.len(), 1);
    assert_eq!(
        (sent[0].ts, sent[0].seq, sent[0].marker),
        ((u32::MAX - 200).wrapping_add(320), 65_534, true)
    );
}
