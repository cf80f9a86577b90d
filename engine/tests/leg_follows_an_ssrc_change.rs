//! The peer restarts mid-call with a new SSRC, new random sequence numbers and timestamps
//! (a re-INVITE, a transfer, a crashed and restarted client). Playout must continue with
//! the new stream: the audio after the change matches what the new sender sent, the
//! jitter buffer resyncs once, no packet of the new stream is lost (its first packet is
//! held until the second confirms the source), and stragglers of the old stream do not
//! switch playout back, though the old SSRC may return once it is no longer recent.

mod leg_harness;

use std::time::{Duration, Instant};

use confer_engine::leg::{
    Codec, DropReason, LegConfig, LegEvent, MediaLeg, OpusParams, RETIRED_FOR, Received,
};
use confer_engine::netsim::LinkConfig;
use confer_engine::types::Ssrc;
use leg_harness::{FRAME, Pair, aligned_correlation, epoch, leg, speech};

#[test]
fn playout_follows_the_new_ssrc_after_a_restart() {
    let t0 = epoch();
    let codec = Codec::Opus(OpusParams::default());
    let config = |ssrc: u32| LegConfig {
        codec,
        local_ssrc: Some(Ssrc(ssrc)),
        ..LegConfig::default()
    };
    let a1 = leg(config(0x1111_1111), None, 1, t0);
    let b = leg(config(0xBBBB_BBBB), None, 2, t0);
    let mut pair = Pair::new(a1, b, LinkConfig::lan(), 3, t0);

    let first = speech(0.0, 5.0);
    let second = speech(9.0, 5.0);
    // Keep two consecutive packets of the old stream to replay after the change.
    let mut old_packets = Vec::new();
    for (i, frame) in first.chunks_exact(FRAME).enumerate() {
        let mut tap = |d: &[u8], _: Instant, _: &mut MediaLeg| {
            if (200..202).contains(&i) && d[1] & 0x7F == 111 {
                old_packets.push(d.to_vec());
            }
        };
        pair.step_tapped(Some(frame), &mut tap);
    }
    let sent_first = pair.sent;

    // The peer restarts: a new leg with its own SSRC and random sequence and timestamp.
    pair.a = leg(config(0x2222_2222), None, 4, pair.now);
    let change_at = pair.out.len();
    let (head, tail) = second.split_at(25 * FRAME);
    pair.send_all(head);
    // Stragglers of the old stream shortly after the change, two in sequence: dropped,
    // playout stays with the new stream.
    for old in &old_packets {
        assert_eq!(
            pair.b.handle_datagram(old, pair.now),
            Ok(Received::Dropped(DropReason::StaleSource))
        );
    }
    assert_eq!(pair.b.remote_ssrc(), Some(Ssrc(0x2222_2222)));
    pair.send_all(tail);
    pair.idle(Duration::from_millis(500));
    let sent_second = pair.sent - sent_first;

    let b = pair.b.stats();
    let after = &pair.out[change_at..];
    let al = aligned_correlation(&second, after);
    let before = aligned_correlation(&first, &pair.out[..change_at]);
    println!(
        "before the change: correlation {:.3}; after: {:.3} (min {:.3}, {} windows, delay \
         {:.1} ms); resyncs {}, source changes {}, pending {}, expected {} lost {}, \
         jb discarded {}",
        before.mean,
        al.mean,
        al.min,
        al.windows,
        al.delay_ms,
        b.jitter_buffer.resyncs,
        b.source_changes,
        b.dropped.source_pending,
        b.packets_expected,
        b.packets_lost,
        b.jitter_buffer.discarded
    );
    assert!(before.mean > 0.8, "old stream {:.3}", before.mean);
    assert!(al.mean > 0.8, "new stream {:.3}", al.mean);
    assert!(al.delay_ms < 200.0, "{:.1} ms", al.delay_ms);
    assert_eq!(b.remote_ssrc, Some(Ssrc(0x2222_2222)));
    assert_eq!(b.source_changes, 1);
    assert!(b.jitter_buffer.resyncs >= 1);
    // The first packet of the new stream waited for the second, then played: nothing lost.
    assert_eq!(b.dropped.source_pending, 1);
    assert_eq!(b.packets_expected, sent_second);
    assert_eq!(b.packets_lost, 0);
    assert_eq!(
        b.jitter_buffer.played + b.jitter_buffer.discarded,
        sent_first + sent_second
    );
    let events: Vec<_> = std::iter::from_fn(|| pair.b.poll_event()).collect();
    assert_eq!(
        events,
        [
            LegEvent::NewSource {
                previous: None,
                ssrc: Ssrc(0x1111_1111)
            },
            LegEvent::NewSource {
                previous: Some(Ssrc(0x1111_1111)),
                ssrc: Ssrc(0x2222_2222)
            }
        ]
    );

    assert_eq!(b.dropped.stale_source, 2);

    // Long after the change the old SSRC may come back (a phone resuming after music on
    // hold): two packets in sequence switch playout to it again.
    assert!(pair.now > t0 + Duration::from_secs(5) + RETIRED_FOR);
    assert_eq!(
        pair.b.handle_datagram(&old_packets[0], pair.now),
        Ok(Received::Dropped(DropReason::SourcePending))
    );
    assert!(matches!(
        pair.b.handle_datagram(&old_packets[1], pair.now),
        Ok(Received::Audio(_))
    ));
    assert_eq!(pair.b.remote_ssrc(), Some(Ssrc(0x1111_1111)));
    assert_eq!(pair.b.stats().source_changes, 2);
}
