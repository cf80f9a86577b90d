//! Listeners share one encode per encoder group: with 2 talkers and 10 silent listeners
//! in two codec groups, a tick costs exactly 2 N-1 encodes and 2 shared encodes, and the
//! listeners of a group receive the same payload bytes in their own RTP streams.

mod room_support;

use confer_conference::room::RoomConfig;
use confer_engine::leg::{Codec, OpusParams};
use room_support::*;

#[test]
fn ten_silent_listeners_cost_one_encode_per_group_per_tick() {
    let mut h = Harness::new(RoomConfig::default());
    let opus = Codec::Opus(OpusParams::default());
    let a = h.join(opus, gapped_tone(440.0, 0.3, 20, 3, 0));
    let b = h.join(Codec::Pcmu, gapped_tone(1000.0, 0.3, 20, 3, 10));
    let mut opus_listeners = Vec::new();
    let mut pcmu_listeners = Vec::new();
    for i in 0..10 {
        // Half send digital silence, half send nothing at all.
        let source = if i % 2 == 0 { zeros() } else { silent() };
        if i < 5 {
            opus_listeners.push(h.join(opus, source));
        } else {
            pcmu_listeners.push(h.join(Codec::Pcmu, source));
        }
    }
    assert_eq!(h.room.stats().encoder_groups, 2);
    // The talkers' first packets need the jitter buffer's initial delay to play.
    h.run(10);
    let mut checked = 0;
    for _ in 0..100 {
        h.step();
        let s = h.room.stats();
        assert_eq!(s.speakers, 2, "both talkers are mixed");
        assert_eq!(s.speaker_encodes_last_tick, 2, "one N-1 encode per talker");
        assert_eq!(
            s.shared_encodes_last_tick, 2,
            "one encode per group for all listeners"
        );
        assert_eq!(s.encoder_calls_last_tick, 4);
        // Same bytes for every listener of a group (a DTX-free 32 kbit/s Opus stream and
        // G.711 always produce a packet).
        for group in [&opus_listeners, &pcmu_listeners] {
            let first = &h.clients[group[0]].last_payloads;
            assert_eq!(first.len(), 1);
            for &l in group.iter() {
                assert_eq!(&h.clients[l].last_payloads, first);
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 100);
    for &l in opus_listeners.iter().chain(&pcmu_listeners) {
        let st = h.room.participant_stats(h.clients[l].id).unwrap();
        assert_eq!(st.frames_mixed, 0, "a silent listener is never mixed");
        assert!(!st.speaker);
        // Every listener hears both talkers.
        let heard = &h.clients[l].heard[60 * FRAME..];
        let (t1, t2) = (tone_amplitude(heard, 440.0), tone_amplitude(heard, 1000.0));
        assert!(
            t1 > 0.1 && t2 > 0.1,
            "listener {l}: 440 Hz {t1:.3}, 1 kHz {t2:.3}"
        );
    }
    // Each listener's stream is its own: distinct SSRCs.
    let mut ssrcs: Vec<_> = h
        .clients
        .iter()
        .map(|c| h.room.participant_stats(c.id).unwrap().leg.local_ssrc)
        .collect();
    ssrcs.sort_unstable_by_key(|s| s.0);
    ssrcs.dedup();
    assert_eq!(ssrcs.len(), 12);
    // The talkers each hear the other one only.
    let heard_a = &h.clients[a].heard[60 * FRAME..];
    let heard_b = &h.clients[b].heard[60 * FRAME..];
    assert!(tone_amplitude(heard_a, 440.0) < 0.01 && tone_amplitude(heard_a, 1000.0) > 0.1);
    assert!(tone_amplitude(heard_b, 1000.0) < 0.01 && tone_amplitude(heard_b, 440.0) > 0.1);
}

#[test]
fn an_empty_room_does_no_work_on_a_tick() {
    let mut h = Harness::new(RoomConfig::default());
    let mut sent = 0;
    for _ in 0..1000 {
        h.room.tick(h.now, &mut |_, _| sent += 1);
        h.now += FRAME_DURATION;
    }
    assert_eq!(sent, 0);
    assert_eq!(h.room.stats().ticks, 0);
    assert_eq!(h.room.stats().encoder_calls_total, 0);
}

/// A listener's RTCP report on the room's stream to it, saying `fraction_lost`/256 lost.
fn loss_report(h: &Harness, listener: usize, fraction_lost: u8) -> Vec<u8> {
    use confer_engine::rtcp::{
        CompoundRules, ReceiverReport, ReportBlock, RtcpPacket, Sdes, build_compound,
    };
    let c = &h.clients[listener];
    let rr = RtcpPacket::ReceiverReport(ReceiverReport {
        ssrc: c.leg.local_ssrc(),
        reports: vec![ReportBlock {
            ssrc: c.leg.remote_ssrc().expect("the listener hears the room"),
            fraction_lost,
            ..ReportBlock::default()
        }],
    });
    let sdes = RtcpPacket::SourceDescription(Sdes::cname(c.leg.local_ssrc(), b"listener"));
    let mut out = [0u8; 256];
    let n = build_compound(&[rr, sdes], CompoundRules::Rfc3550, &mut out).unwrap();
    out[..n].to_vec()
}

#[test]
fn a_groups_fec_follows_the_listener_that_reports_the_most_loss() {
    let mut h = Harness::new(RoomConfig::default());
    let opus = Codec::Opus(OpusParams::default());
    let talker = h.join(opus, gapped_tone(440.0, 0.3, 20, 3, 0));
    let listeners: Vec<usize> = (0..3).map(|_| h.join(opus, zeros())).collect();
    h.run(10);
    let fec = |h: &Harness, c: usize| {
        let s = h.room.participant_stats(h.clients[c].id).unwrap();
        (s.fec_loss_percent, s.reported_loss_percent)
    };
    // Nobody reported loss: FEC negotiated but not spent.
    for &l in &listeners {
        assert_eq!(fec(&h, l), (Some(0), None));
    }
    let now = h.now;
    let (lossy, other) = (listeners[1], listeners[2]);
    let report = loss_report(&h, lossy, 52);
    h.room
        .handle_datagram(h.clients[lossy].id, &report, now)
        .unwrap();
    let report = loss_report(&h, other, 13);
    h.room
        .handle_datagram(h.clients[other].id, &report, now)
        .unwrap();
    h.step();
    // 52/256 = 20.3 % and 13/256 = 5.1 %, rounded up; the shared stream serves the worst.
    assert_eq!(fec(&h, lossy), (Some(21), Some(21)));
    assert_eq!(fec(&h, other), (Some(21), Some(6)));
    assert_eq!(fec(&h, listeners[0]), (Some(21), None));
    // The talker hears its own N-1 mix from its own encoder: its peer reported nothing.
    assert_eq!(fec(&h, talker), (Some(0), None));

    let now = h.now;
    let report = loss_report(&h, lossy, 0);
    h.room
        .handle_datagram(h.clients[lossy].id, &report, now)
        .unwrap();
    h.step();
    assert_eq!(fec(&h, listeners[0]), (Some(6), None));
}
