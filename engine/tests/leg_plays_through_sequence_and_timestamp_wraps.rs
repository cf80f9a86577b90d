//! A stream whose sequence number starts at 65500 and whose timestamp starts two seconds
//! before 2^32 wraps both in the middle of the call. Every packet must be played, none
//! counted late, lost or resynced, nothing concealed while the stream runs, and the audio
//! must come out intact.

mod leg_harness;

use confer_engine::leg::{Codec, LegConfig, OpusParams};
use confer_engine::netsim::LinkConfig;
use confer_engine::rtcp::{CompoundRules, RtcpPacket, parse_compound};
use leg_harness::{Pair, aligned_correlation, epoch, leg, speech};

fn wraps_cleanly(codec: Codec, seed: u64) {
    let t0 = epoch();
    let rate = u64::from(codec.clock_rate().hz());
    let sender = LegConfig {
        codec,
        initial_seq: Some(65_500),
        // Wraps 2 s into the call.
        initial_timestamp: Some((u64::from(u32::MAX) + 1 - 2 * rate) as u32),
        ..LegConfig::default()
    };
    let receiver = LegConfig {
        codec,
        ..LegConfig::default()
    };
    let a = leg(sender, None, seed, t0);
    let b = leg(receiver, None, seed + 1, t0);
    let mut pair = Pair::new(a, b, LinkConfig::lan(), seed, t0);
    let input = speech(1.0, 6.0);
    pair.send_all(&input);
    // Stats at the moment the last packet has been played, before the tail's underrun.
    let mut at_end = None;
    for _ in 0..50 {
        pair.step(None);
        let jb = pair.b.stats().jitter_buffer;
        if at_end.is_none() && jb.played == pair.sent {
            at_end = Some(jb);
        }
    }
    let jb = at_end.expect("every packet was played");
    let b = pair.b.stats();
    let al = aligned_correlation(&input, &pair.out);
    println!(
        "{codec:?}: sent {} played {} late {} concealed {:.1} ms resyncs {} accelerated {:.1} ms \
         expanded {:.1} ms; lost {}; correlation {:.3} (min {:.3}), delay {:.1} ms",
        pair.sent,
        jb.played,
        jb.late,
        jb.concealed_ms,
        jb.resyncs,
        jb.accelerated_ms,
        jb.expanded_ms,
        b.packets_lost,
        al.mean,
        al.min,
        al.delay_ms
    );
    assert_eq!(pair.sent, 300);
    assert_eq!(jb.played, pair.sent);
    assert_eq!(jb.late, 0);
    assert_eq!(jb.resyncs, 0);
    assert_eq!(jb.discarded, 0);
    assert_eq!(jb.duplicates, 0);
    assert_eq!(jb.concealed_ms, 0.0);
    assert_eq!(b.packets_lost, 0);
    assert_eq!(b.packets_expected, pair.sent);
    assert_eq!(b.dropped.sequence_jumps, 0);
    assert_eq!(b.errors.total(), 0);
    assert!(al.mean > 0.8, "correlation {:.3}", al.mean);
    // The receiver's report shows the wrap: 300 packets from 65500 end in cycle 1.
    let mut buf = [0u8; 512];
    let n = pair.b.write_bye(pair.now, &mut buf).expect("report fits");
    let packets = parse_compound(&buf[..n], CompoundRules::Rfc3550).expect("valid RTCP");
    let RtcpPacket::ReceiverReport(rr) = &packets[0] else {
        panic!(
            "B sends no media, so it reports with an RR: {:?}",
            packets[0]
        );
    };
    assert_eq!(rr.reports[0].ssrc, pair.a.local_ssrc());
    assert_eq!(rr.reports[0].extended_highest_seq, 65_500 + 299);
    assert_eq!(rr.reports[0].cumulative_lost, 0);
}

#[test]
fn opus_playout_survives_sequence_and_timestamp_wraps() {
    wraps_cleanly(Codec::Opus(OpusParams::default()), 5);
}

#[test]
fn pcma_playout_survives_sequence_and_timestamp_wraps() {
    wraps_cleanly(Codec::Pcma, 7);
}
