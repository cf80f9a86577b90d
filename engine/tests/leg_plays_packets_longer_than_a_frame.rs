//! A peer that sends 40, 60 or 120 ms packets (its `a=ptime`) plays out as continuous
//! audio on the engine's 10 or 20 ms frame clock: the jitter buffer decodes each packet
//! whole and hands out one frame per tick, for G.711 and for multi-frame Opus packets.
//!
//! Deterministic: the sender is a leg with a packet time (itself tested to send what a
//! peer with that ptime sends), encoding the committed speech sample; the seeded simulated
//! link delays its packets on virtual time; the receiver is polled on its own frame clock.

mod leg_harness;

use std::time::{Duration, Instant};

use confer_engine::leg::{Codec, FrameInfo, LegConfig, MediaLeg, OpusParams};
use confer_engine::netsim::{LinkConfig, NetSim};
use leg_harness::{aligned_correlation, epoch, leg, speech};

/// What the receiver played, and the legs afterwards.
struct Run {
    output: Vec<f32>,
    frames: Vec<FrameInfo>,
    a: MediaLeg,
    b: MediaLeg,
    sent: u64,
}

/// The sender sends `input` on its frame clock, then pauses for a second; the receiver
/// plays on a frame clock of `rx_frame_ms`; both clocks are 10 ms steps of one timeline.
fn run(sender: LegConfig, rx_frame_ms: u32, link: LinkConfig, input: &[f32], seed: u64) -> Run {
    let t0 = epoch();
    let codec = sender.codec;
    let tx_frame_ms = sender.frame_ms;
    let mut a = leg(sender, None, seed, t0);
    let mut b = leg(
        LegConfig {
            codec,
            frame_ms: rx_frame_ms,
            ..LegConfig::default()
        },
        None,
        seed + 1,
        t0,
    );
    let mut net: NetSim<Vec<u8>> = NetSim::new(link, seed, t0).expect("valid link");
    let tx_frame = 48 * tx_frame_ms as usize;
    let rx_frame = 48 * rx_frame_ms as usize;
    let mut frame = vec![0.0f32; rx_frame];
    let mut packet = [0u8; 1500];
    let mut output = Vec::new();
    let mut frames = Vec::new();
    let mut sent = 0;
    let steps = input.len() / 480 + 100;
    for step in 0..steps {
        let now: Instant = t0 + Duration::from_millis(10 * step as u64);
        while let Some(d) = net.poll_deliver(now) {
            b.handle_datagram(&d.payload, d.arrival)
                .expect("the sender's packets are valid");
        }
        let ms = 10 * step as u32;
        if ms.is_multiple_of(rx_frame_ms) {
            frames.push(b.poll_frame(now, &mut frame).expect("frame size"));
            output.extend_from_slice(&frame);
        }
        if ms.is_multiple_of(tx_frame_ms) {
            let k = (ms / tx_frame_ms) as usize;
            let n = match input.get(k * tx_frame..(k + 1) * tx_frame) {
                Some(pcm) => a.send_frame(pcm, now, &mut packet).expect("send"),
                None => a.skip_frame_flush(&mut packet).expect("flush"),
            };
            if n > 0 {
                net.send(packet[..n].to_vec(), n + 28, now);
                sent += 1;
            }
        }
    }
    Run {
        output,
        frames,
        a,
        b,
        sent,
    }
}

fn sender(codec: Codec, ptime_ms: Option<u32>) -> LegConfig {
    LegConfig {
        codec,
        ptime_ms,
        ..LegConfig::default()
    }
}

fn opus() -> Codec {
    Codec::Opus(OpusParams {
        expected_loss_percent: 0,
        ..OpusParams::default()
    })
}

/// Checks that `r` played `input` continuously: every packet decoded, no concealment once
/// the stream started, and the audio matching the input (`min_correlation`: the measure
/// also sees the jitter buffer's time-stretching as it gives back its initial delay, the
/// same with any packet time, and Opus is not waveform-exact).
fn check_continuous(r: &Run, input: &[f32], what: &str, min_correlation: f64) {
    let b = r.b.stats();
    let jb = b.jitter_buffer;
    let al = aligned_correlation(input, &r.output);
    println!(
        "{what}: {} packets, correlation {:.3} (min {:.3}, {} windows), delay {:.1} ms, \
         concealed {:.0} ms, late {}, played {}, accelerated {:.0} ms, expanded {:.0} ms",
        r.sent,
        al.mean,
        al.min,
        al.windows,
        al.delay_ms,
        jb.concealed_ms,
        jb.late,
        jb.played,
        jb.accelerated_ms,
        jb.expanded_ms,
    );
    assert_eq!(r.a.stats().rtp_packets_sent, r.sent);
    assert_eq!(b.rtp_packets_received, r.sent, "{what}");
    assert_eq!(b.errors.total(), 0, "{what}");
    assert_eq!(jb.played, r.sent, "{what}: every packet played");
    assert_eq!((jb.late, jb.decode_errors), (0, 0), "{what}");
    // Once the first packet decoded, no frame until the input's end was concealed.
    let first = r
        .frames
        .iter()
        .position(|f| f.decoded > 0)
        .expect("audio was decoded");
    let speech_ticks = input.len() / (r.output.len() / r.frames.len());
    let concealed: usize = r.frames[first..speech_ticks]
        .iter()
        .map(|f| f.concealed)
        .sum();
    assert_eq!(concealed, 0, "{what}: concealed during the speech");
    assert!(al.windows >= 10, "{what}: {} windows", al.windows);
    assert!(
        al.mean > min_correlation,
        "{what}: correlation {:.3}",
        al.mean
    );
}

#[test]
fn g711_packets_of_40_to_120_ms_play_out_as_continuous_audio() {
    // 4.8 s: whole packets at every ptime below.
    let input = speech(0.5, 4.8);
    let baseline = run(
        sender(Codec::Pcmu, None),
        20,
        LinkConfig::ideal(),
        &input,
        1,
    );
    check_continuous(&baseline, &input, "20 ms packets", 0.95);
    // A-law differs from mu-law only in the sample code: one case is enough.
    let pcma: &[(u32, u32)] = &[(40, 20)];
    let pcmu: &[(u32, u32)] = &[(40, 20), (60, 20), (40, 10), (120, 20)];
    for (codec, cases) in [(Codec::Pcmu, pcmu), (Codec::Pcma, pcma)] {
        for &(ptime, rx_frame_ms) in cases {
            let what = format!("{codec:?} ptime {ptime}, {rx_frame_ms} ms frames");
            let r = run(
                sender(codec, Some(ptime)),
                rx_frame_ms,
                LinkConfig::ideal(),
                &input,
                1,
            );
            assert_eq!(r.sent, (4800 / ptime) as u64, "{what}");
            check_continuous(&r, &input, &what, 0.95);
        }
    }
}

#[test]
fn opus_packets_of_several_frames_play_out_as_continuous_audio() {
    let input = speech(0.5, 4.8);
    let baseline = run(sender(opus(), None), 20, LinkConfig::ideal(), &input, 2);
    check_continuous(&baseline, &input, "opus 20 ms packets", 0.8);
    for (ptime, rx_frame_ms) in [(40, 20), (60, 20), (60, 10), (120, 20)] {
        let what = format!("opus ptime {ptime}, {rx_frame_ms} ms frames");
        let r = run(
            sender(opus(), Some(ptime)),
            rx_frame_ms,
            LinkConfig::ideal(),
            &input,
            2,
        );
        assert_eq!(r.sent, (4800 / ptime) as u64, "{what}");
        check_continuous(&r, &input, &what, 0.8);
    }
}

#[test]
fn packets_of_40_ms_over_wifi_play_out_like_the_input() {
    let input = speech(0.5, 8.0);
    for codec in [Codec::Pcmu, opus()] {
        let r = run(sender(codec, Some(40)), 20, LinkConfig::wifi(), &input, 3);
        let b = r.b.stats();
        let lost = b.packets_lost.max(0) as u64;
        let al = aligned_correlation(&input, &r.output);
        println!(
            "{codec:?} ptime 40 over wifi: correlation {:.3} (min {:.3}), delay {:.1} ms, \
             lost {lost}, late {}, concealed {:.0} ms, target {:.1} ms",
            al.mean,
            al.min,
            al.delay_ms,
            b.jitter_buffer.late,
            b.jitter_buffer.concealed_ms,
            b.jitter_buffer.target_delay_ms,
        );
        assert_eq!(b.errors.total(), 0);
        assert_eq!(b.packets_expected, r.sent);
        assert!(al.mean > 0.8, "{codec:?}: correlation {:.3}", al.mean);
        assert!(
            al.delay_ms < 300.0,
            "{codec:?}: delay {:.1} ms",
            al.delay_ms
        );
    }
}
