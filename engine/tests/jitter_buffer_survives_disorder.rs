//! The jitter buffer under disorder that does not change the network's delay: reordering,
//! duplicates, DTX pauses, timestamp jumps, loss recovered by FEC. Driven directly on
//! virtual time.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use confer_codecs::opus::OpusDecoder;
use confer_engine::jitter::{JbPacket, JitterBuffer, JitterConfig, PushOutcome};
use confer_engine::jitter_eval::EvalReport;
use confer_engine::netsim::{Duplicate, Jitter, LinkConfig, Reorder};

fn jb() -> JitterBuffer<OpusDecoder> {
    JitterBuffer::new(
        JitterConfig::default(),
        OpusDecoder::new(48_000).expect("decoder"),
    )
    .expect("valid config")
}

fn link() -> LinkConfig {
    LinkConfig {
        latency: Duration::from_millis(20),
        jitter: Jitter::normal(Duration::from_millis(3)),
        ..LinkConfig::default()
    }
}

fn eval(name: &str, link: LinkConfig, frames: &[Vec<u8>]) -> EvalReport {
    common::evaluate_link(name, &link, 11, 30, frames)
}

#[test]
fn reordered_packets_within_the_delay_are_played_in_order() {
    let mut l = link();
    l.reorder = Reorder {
        probability: 0.05,
        delay: Duration::from_millis(30),
    };
    let r = eval("reorder", l, common::frames());
    assert!(r.late_loss_pct <= 1.0, "late {:.2}%", r.late_loss_pct);
    assert!(r.mean_delay_ms <= 1.15 * r.oracle_delay_ms + 10.0);
    // Played in sequence order: playout times never go backwards along the sequence.
    let times: Vec<f64> = r.delays.iter().map(|d| d.0 * 1000.0 + d.1).collect();
    for (k, w) in times.windows(2).enumerate() {
        assert!(
            w[1] >= w[0] - 1e-6,
            "played out of order at {k}: {:?}",
            &r.delays[k.saturating_sub(2)..k + 3]
        );
    }
}

#[test]
fn a_duplicate_packet_is_counted_once_and_played_once() {
    let mut l = link();
    l.duplicate = Duplicate {
        probability: 0.1,
        delay: Duration::from_millis(5),
    };
    let r = eval("duplicates", l, common::frames());
    // About 10% of 1500 packets arrived twice; each was played once.
    assert!(
        (100..=200).contains(&r.jitter.duplicates),
        "{} duplicates",
        r.jitter.duplicates
    );
    assert_eq!(r.jitter.played, 1500);
    assert_eq!(r.late, 0);
}

#[test]
fn a_packet_pushed_twice_in_a_row_is_a_duplicate() {
    let mut jb = jb();
    let t = common::epoch();
    let frames = common::frames();
    let p = JbPacket {
        seq: 10,
        timestamp: 9600,
        payload: &frames[0],
    };
    assert_eq!(jb.push(p, t).unwrap(), PushOutcome::Stored);
    assert_eq!(jb.push(p, t).unwrap(), PushOutcome::Duplicate);
    assert_eq!(jb.stats().duplicates, 1);
}

#[test]
fn lost_packets_are_recovered_from_the_next_packets_fec() {
    let mut l = link();
    l.loss = 0.05;
    let with_fec = eval("loss with FEC", l.clone(), common::frames());
    let without: Vec<Vec<u8>> = common::opus_speech_frames(false);
    let no_fec = eval("loss without FEC", l, &without);
    // Isolated losses are recovered from in-band FEC; what is left is concealed.
    assert!(
        with_fec.jitter.fec_recovered >= 40,
        "{} recovered",
        with_fec.jitter.fec_recovered
    );
    assert_eq!(no_fec.jitter.fec_recovered, 0);
    assert!(
        with_fec.concealed_pct < no_fec.concealed_pct * 0.6,
        "concealed {:.2}% with FEC, {:.2}% without",
        with_fec.concealed_pct,
        no_fec.concealed_pct
    );
}

/// Drives a stream with talk spurts and DTX pauses: sequence numbers stay contiguous,
/// timestamps jump over the pauses. Returns (delay per played seq, jitter buffer).
fn talk_spurts(
    spurt: u64,
    pause_ms: u64,
    spurts: u64,
) -> (HashMap<u64, f64>, JitterBuffer<OpusDecoder>) {
    let mut jb = jb();
    let frames = common::frames();
    let start = common::epoch();
    let mut sends: Vec<(u64, u64, Instant)> = Vec::new(); // (seq, ts, send time)
    let (mut seq, mut t_ms) = (1000u64, 0u64);
    for _ in 0..spurts {
        for _ in 0..spurt {
            sends.push((seq, t_ms * 48, start + Duration::from_millis(t_ms)));
            seq += 1;
            t_ms += 20;
        }
        t_ms += pause_ms;
    }
    let end = sends.last().map(|s| s.2).unwrap() + Duration::from_secs(1);
    let latency = Duration::from_millis(30);
    let mut out = vec![0.0f32; jb.frame_samples()];
    let mut played = HashMap::new();
    let sent_at: HashMap<u64, Instant> = sends.iter().map(|s| (s.0, s.2)).collect();
    let mut next = 0;
    let mut tick = start + Duration::from_millis(7);
    while tick < end {
        while next < sends.len() && sends[next].2 + latency <= tick {
            let (seq, ts, at) = sends[next];
            let p = JbPacket {
                seq,
                timestamp: ts,
                payload: &frames[seq as usize % frames.len()],
            };
            jb.push(p, at + latency).unwrap();
            next += 1;
        }
        jb.pop(tick, &mut out).unwrap();
        for p in jb.drain_played() {
            let d = p.at.duration_since(sent_at[&p.seq]).as_secs_f64() * 1000.0;
            played.insert(p.seq, d);
        }
        tick += Duration::from_millis(20);
    }
    (played, jb)
}

#[test]
fn dtx_pauses_neither_drop_packets_nor_leave_extra_delay() {
    let (played, jb) = talk_spurts(50, 1500, 10);
    let stats = jb.stats();
    assert_eq!(played.len(), 500, "{stats:?}");
    assert_eq!(stats.late + stats.discarded, 0, "{stats:?}");
    // The first packet after each pause plays with the delay the stream had before it.
    let mut firsts = Vec::new();
    for k in 1..10u64 {
        let before = played[&(1000 + k * 50 - 1)];
        let first = played[&(1000 + k * 50)];
        firsts.push(first);
        assert!(
            (first - before).abs() < 25.0,
            "spurt {k}: delay {before:.1} ms before the pause, {first:.1} ms after"
        );
    }
    println!("delays after pauses: {firsts:?}");
}

#[test]
fn a_timestamp_jump_with_contiguous_sequence_restarts_playout() {
    let mut jb = jb();
    let frames = common::frames();
    let start = common::epoch();
    let mut out = vec![0.0f32; jb.frame_samples()];
    let mut played = 0;
    for i in 0..400u64 {
        // At packet 200 the sender's timestamp jumps back by 10 minutes (a restart).
        let ts = if i < 200 {
            30_000_000 + i * 960
        } else {
            1_000 + (i - 200) * 960
        };
        let t = start + Duration::from_millis(20 * i);
        let p = JbPacket {
            seq: 5000 + i,
            timestamp: ts,
            payload: &frames[i as usize % frames.len()],
        };
        jb.push(p, t + Duration::from_millis(25)).unwrap();
        jb.pop(t + Duration::from_millis(30), &mut out).unwrap();
        played += jb.drain_played().count();
    }
    let s = jb.stats();
    assert_eq!(s.resyncs, 1, "{s:?}");
    assert_eq!(s.late, 0, "{s:?}");
    assert!(played >= 396, "{played} played, {s:?}");
}

#[test]
fn telephone_event_packets_in_the_sequence_are_not_taken_for_lost_audio() {
    let mut jb = jb();
    let frames = common::frames();
    let start = common::epoch();
    let latency = Duration::from_millis(30);
    let mut out = vec![0.0f32; jb.frame_samples()];
    let mut delays = HashMap::new();
    let mut sent = HashMap::new();
    // 50 audio packets, a 200 ms digit sent as 10 telephone-event packets (same sequence
    // space, the event's start timestamp), then 50 audio packets again. Taken for lost
    // audio, the 10 sequence numbers would first be waited for and then concealed: the
    // stream would come back 200 ms later than it left.
    for i in 0..110u64 {
        let t = start + Duration::from_millis(20 * i);
        let (seq, ts) = (7000 + i, 48_000 + i * 960);
        if (50..60).contains(&i) {
            jb.push_foreign(seq, 48_000 + 50 * 960).unwrap();
        } else {
            let p = JbPacket {
                seq,
                timestamp: ts,
                payload: &frames[i as usize],
            };
            jb.push(p, t + latency).unwrap();
            sent.insert(seq, t);
        }
        jb.pop(t + latency + Duration::from_millis(5), &mut out)
            .unwrap();
        for p in jb.drain_played() {
            delays.insert(
                p.seq,
                p.at.duration_since(sent[&p.seq]).as_secs_f64() * 1000.0,
            );
        }
    }
    // Let the buffer play out what it still holds.
    for k in 0..5u32 {
        let t = start + Duration::from_millis(20 * 110) + Duration::from_millis(20) * k;
        jb.pop(t + latency + Duration::from_millis(5), &mut out)
            .unwrap();
    }
    let s = jb.stats();
    assert_eq!(s.late + s.discarded, 0, "{s:?}");
    assert_eq!(s.played, 100, "{s:?}");
    let before = delays[&(7000 + 49)];
    let after = delays[&(7000 + 60)];
    assert!(
        (after - before).abs() < 5.0,
        "delay {before:.1} ms before the digit, {after:.1} ms after"
    );
}

#[test]
fn packets_reordered_later_than_the_delay_teach_the_buffer_to_wait_for_them() {
    // A quiet link where 3% of packets arrive 80 ms late (after their successors): each
    // is too late at first; the buffer measures how late and grows to cover them.
    let l = LinkConfig {
        latency: Duration::from_millis(20),
        jitter: Jitter::normal(Duration::from_millis(1)),
        reorder: Reorder {
            probability: 0.03,
            delay: Duration::from_millis(80),
        },
        ..LinkConfig::default()
    };
    let r = common::evaluate_link("deep reorder", &l, 11, 60, common::frames());
    assert!(r.late_loss_pct <= 1.0, "late {:.2}%", r.late_loss_pct);
}

#[test]
fn a_single_packet_with_a_wild_timestamp_does_not_restart_playout() {
    let mut jb = jb();
    let frames = common::frames();
    let start = common::epoch();
    let mut out = vec![0.0f32; jb.frame_samples()];
    for i in 0..200u64 {
        let t = start + Duration::from_millis(20 * i);
        // Packet 100 carries a timestamp 20 s ahead (a stray or forged packet).
        let ts = if i == 100 {
            960_000 + 20 * 48_000
        } else {
            960_000 + i * 960
        };
        let p = JbPacket {
            seq: 3000 + i,
            timestamp: ts,
            payload: &frames[i as usize],
        };
        jb.push(p, t + Duration::from_millis(25)).unwrap();
        jb.pop(t + Duration::from_millis(30), &mut out).unwrap();
    }
    let s = jb.stats();
    assert_eq!(s.resyncs, 0, "{s:?}");
    assert_eq!(s.suspects, 1, "{s:?}");
    assert_eq!(s.discarded, 0, "{s:?}");
    assert!(s.played >= 197, "{s:?}");
}
