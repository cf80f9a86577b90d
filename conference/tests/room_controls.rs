//! Participant and room controls: mute, deaf, kick, gains, lock, max participants,
//! wait-for-moderator, and the events they produce with their media time.

mod room_support;

use std::time::Duration;

use confer_conference::room::{LeaveReason, RoomConfig, RoomError, RoomEventKind};
use confer_engine::leg::Codec;
use room_support::*;

fn events(h: &mut Harness) -> Vec<(Duration, RoomEventKind)> {
    std::iter::from_fn(|| h.room.poll_event())
        .map(|e| (e.media_time, e.kind))
        .collect()
}

/// The amplitude of `freq` in what client `c` heard over the last `frames` frames.
fn heard(h: &Harness, c: usize, freq: f32, frames: usize) -> f64 {
    let x = &h.clients[c].heard;
    tone_amplitude(&x[x.len() - frames * FRAME..], freq)
}

#[test]
fn a_muted_participant_is_not_mixed_and_unmuting_brings_it_back() {
    let mut h = Harness::new(RoomConfig::default());
    let talker = h.join(Codec::Pcmu, gapped_tone(600.0, 0.3, 20, 2, 0));
    let listener = h.join(Codec::Pcmu, silent());
    h.run(50);
    assert!(heard(&h, listener, 600.0, 20) > 0.1);
    let id = h.clients[talker].id;
    h.room.set_muted(id, true, h.now).unwrap();
    h.run(50);
    assert!(
        heard(&h, listener, 600.0, 20) < 0.002,
        "a muted talker is heard"
    );
    let st = h.room.participant_stats(id).unwrap();
    assert!(st.muted && !st.speaker && !st.talking);
    h.room.set_muted(id, false, h.now).unwrap();
    h.run(50);
    assert!(heard(&h, listener, 600.0, 20) > 0.1);
    let ev = events(&mut h);
    let muted_at = ev
        .iter()
        .find(|e| e.1 == RoomEventKind::Muted(id))
        .map(|e| e.0);
    assert_eq!(muted_at, Some(Duration::from_millis(1000)));
    assert!(ev.contains(&(Duration::from_millis(2000), RoomEventKind::Unmuted(id))));
    // Talking stopped when muted, and started again after.
    let talk: Vec<_> = ev
        .iter()
        .filter(|e| {
            matches!(
                e.1,
                RoomEventKind::StartedTalking(_) | RoomEventKind::StoppedTalking(_)
            )
        })
        .map(|e| e.1)
        .collect();
    assert_eq!(
        talk,
        [
            RoomEventKind::StartedTalking(id),
            RoomEventKind::StoppedTalking(id),
            RoomEventKind::StartedTalking(id)
        ]
    );
}

#[test]
fn a_deaf_participant_receives_nothing_while_the_others_still_hear_it() {
    let mut h = Harness::new(RoomConfig::default());
    let a = h.join(Codec::Pcmu, gapped_tone(600.0, 0.3, 20, 2, 0));
    let b = h.join_with(Codec::Pcmu, gapped_tone(900.0, 0.3, 20, 2, 5), |p| {
        p.deaf = true
    });
    h.run(100);
    assert_eq!(h.clients[b].rtp_packets, 0, "a deaf participant got audio");
    assert!(
        heard(&h, a, 900.0, 40) > 0.1,
        "the deaf talker is still heard"
    );
    let id = h.clients[b].id;
    h.room.set_deaf(id, false, h.now).unwrap();
    h.run(50);
    assert!(h.clients[b].rtp_packets >= 49);
    assert!(heard(&h, b, 600.0, 20) > 0.1);
}

#[test]
fn a_kicked_participant_is_gone_and_its_packets_are_refused() {
    let mut h = Harness::new(RoomConfig::default());
    let a = h.join(Codec::Pcmu, gapped_tone(600.0, 0.3, 20, 2, 0));
    let listener = h.join(Codec::Pcmu, silent());
    h.run(50);
    let id = h.clients[a].id;
    let _leg = h.room.kick(id, h.now).unwrap();
    let before = h.clients[a].rtp_packets;
    h.run(50);
    assert_eq!(
        h.clients[a].rtp_packets, before,
        "a kicked participant still gets audio"
    );
    assert!(heard(&h, listener, 600.0, 20) < 0.002);
    assert_eq!(
        h.room.handle_datagram(id, &[0x80, 0, 0, 1], h.now),
        Err(RoomError::UnknownParticipant(id))
    );
    assert_eq!(
        h.room.kick(id, h.now).unwrap_err(),
        RoomError::UnknownParticipant(id)
    );
    let ev = events(&mut h);
    assert!(ev.contains(&(
        Duration::from_millis(1000),
        RoomEventKind::Left {
            id,
            reason: LeaveReason::Kicked
        }
    )));
    // A new participant in the freed slot gets a different id, and the old id cannot
    // touch it.
    let c = h.join(Codec::Pcmu, silent());
    assert_ne!(h.clients[c].id, id);
    assert_eq!(
        h.room.set_output_gain_db(id, -6.0),
        Err(RoomError::UnknownParticipant(id))
    );
    assert_eq!(
        h.room.set_muted(id, true, h.now),
        Err(RoomError::UnknownParticipant(id))
    );
    let st = h.room.participant_stats(h.clients[c].id).unwrap();
    assert!(!st.muted && st.output_gain_db == 0.0);
}

#[test]
fn a_locked_room_refuses_joins_until_unlocked() {
    let mut h = Harness::new(RoomConfig::default());
    h.join(Codec::Pcmu, silent());
    h.room.lock(h.now);
    let (leg, _) = h.leg_pair(Codec::Pcmu);
    let p = confer_conference::room::ParticipantConfig::new(leg);
    assert_eq!(h.room.join(p, h.now).unwrap_err(), RoomError::Locked);
    h.room.unlock(h.now);
    h.join(Codec::Pcmu, silent());
    assert_eq!(h.room.len(), 2);
    let kinds: Vec<_> = events(&mut h).into_iter().map(|e| e.1).collect();
    assert_eq!(kinds[0], RoomEventKind::Created);
    assert!(kinds.contains(&RoomEventKind::Locked) && kinds.contains(&RoomEventKind::Unlocked));
}

#[test]
fn joins_beyond_the_maximum_are_refused() {
    let mut h = Harness::new(RoomConfig {
        max_participants: 3,
        ..RoomConfig::default()
    });
    for _ in 0..3 {
        h.join(Codec::Pcmu, silent());
    }
    let (leg, _) = h.leg_pair(Codec::Pcmu);
    let p = confer_conference::room::ParticipantConfig::new(leg);
    assert_eq!(h.room.join(p, h.now).unwrap_err(), RoomError::Full(3));
    let first = h.clients[0].id;
    h.room.leave(first, h.now).unwrap();
    h.join(Codec::Pcmu, silent());
    assert_eq!(h.room.len(), 3);
}

#[test]
fn without_a_moderator_nobody_is_mixed_or_hears_anything() {
    let mut h = Harness::new(RoomConfig {
        wait_for_moderator: true,
        ..RoomConfig::default()
    });
    let a = h.join(Codec::Pcmu, gapped_tone(600.0, 0.3, 20, 2, 0));
    let b = h.join(Codec::Pcmu, gapped_tone(900.0, 0.3, 20, 2, 5));
    h.run(50);
    assert!(h.room.waiting_for_moderator());
    assert_eq!(h.clients[a].rtp_packets + h.clients[b].rtp_packets, 0);
    assert_eq!(h.room.stats().encoder_calls_total, 0);
    let m = h.join_with(Codec::Pcmu, silent(), |p| p.moderator = true);
    h.run(50);
    assert!(!h.room.waiting_for_moderator());
    assert!(heard(&h, m, 600.0, 20) > 0.1 && heard(&h, m, 900.0, 20) > 0.1);
    assert!(heard(&h, a, 900.0, 20) > 0.1);
    // The moderator leaves: back to waiting.
    let mid = h.clients[m].id;
    h.room.leave(mid, h.now).unwrap();
    h.clients.remove(m);
    let before = h.clients[a].rtp_packets;
    h.run(20);
    assert_eq!(h.clients[a].rtp_packets, before);
}

#[test]
fn gains_out_of_range_are_refused_and_valid_gains_scale_the_audio() {
    let mut h = Harness::new(RoomConfig::default());
    let a = h.join(Codec::Pcmu, gapped_tone(600.0, 0.1, 20, 2, 0));
    let plain = h.join(Codec::Pcmu, silent());
    let quiet = h.join_with(Codec::Pcmu, silent(), |p| p.output_gain_db = -6.0);
    let id = h.clients[a].id;
    for bad in [21.0, -61.0, f32::NAN, f32::INFINITY] {
        assert!(matches!(
            h.room.set_input_gain_db(id, bad),
            Err(RoomError::GainOutOfRange(_))
        ));
        assert!(matches!(
            h.room.set_output_gain_db(id, bad),
            Err(RoomError::GainOutOfRange(_))
        ));
    }
    // Different output gains cannot share an encode.
    assert_eq!(h.room.stats().encoder_groups, 2);
    h.run(50);
    let (p0, q0) = (heard(&h, plain, 600.0, 20), heard(&h, quiet, 600.0, 20));
    let ratio = q0 / p0;
    println!("output gain -6 dB: amplitude ratio {ratio:.3}");
    assert!((0.45..0.56).contains(&ratio), "ratio {ratio}");
    h.room.set_input_gain_db(id, 6.0).unwrap();
    h.run(50);
    let up = heard(&h, plain, 600.0, 20) / p0;
    println!("input gain +6 dB: amplitude ratio {up:.3}");
    assert!((1.8..2.2).contains(&up), "ratio {up}");
    // Back to 0 dB output: the group is shared again.
    h.room.set_output_gain_db(h.clients[quiet].id, 0.0).unwrap();
    assert_eq!(h.room.stats().encoder_groups, 1);
}

#[test]
fn ending_the_room_removes_everyone_and_refuses_joins() {
    let mut h = Harness::new(RoomConfig::default());
    h.join(Codec::Pcmu, silent());
    h.join(Codec::Pcmu, silent());
    h.run(5);
    let legs = h.room.end(h.now);
    assert_eq!(legs.len(), 2);
    assert!(h.room.is_empty());
    let (leg, _) = h.leg_pair(Codec::Pcmu);
    let p = confer_conference::room::ParticipantConfig::new(leg);
    assert_eq!(h.room.join(p, h.now).unwrap_err(), RoomError::Ended);
    let kinds: Vec<_> = events(&mut h).into_iter().map(|e| e.1).collect();
    assert_eq!(kinds.last(), Some(&RoomEventKind::Ended));
    assert_eq!(
        kinds
            .iter()
            .filter(|k| matches!(
                k,
                RoomEventKind::Left {
                    reason: LeaveReason::RoomEnded,
                    ..
                }
            ))
            .count(),
        2
    );
}

#[test]
fn a_leg_with_other_frames_than_the_room_is_refused() {
    let mut h = Harness::new(RoomConfig {
        frame_ms: 10,
        ..RoomConfig::default()
    });
    let (leg, _) = h.leg_pair(Codec::Pcmu);
    let p = confer_conference::room::ParticipantConfig::new(leg);
    assert_eq!(
        h.room.join(p, h.now).unwrap_err(),
        RoomError::FrameMismatch {
            expected: 480,
            got: 960
        }
    );
}

#[test]
fn participant_stats_report_level_jitter_buffer_delay_and_loss() {
    let mut h = Harness::new(RoomConfig::default());
    // A 0.3 tone is -13.5 dBov (RMS).
    let a = h.join(
        Codec::Pcmu,
        Box::new(|i, frame| {
            tone_into(600.0, 0.3, i, frame);
            true
        }),
    );
    h.run(50);
    let st = h.room.participant_stats(h.clients[a].id).unwrap();
    assert!(
        (-15.0..=-12.0).contains(&st.level_dbov),
        "level {}",
        st.level_dbov
    );
    assert!(st.smoothed_level_dbov > -15.0);
    assert!(st.talking && st.speaker && st.frames_mixed > 40);
    assert!(st.jitter_buffer_delay_ms > 0.0 && st.jitter_buffer_delay_ms < 100.0);
    assert_eq!(st.packets_lost, 0);
    assert_eq!(st.loss_fraction, 0.0);
    assert!(st.packets_expected >= 49);
    // Now lose every fourth packet of the next 100 on the way in (the client is driven
    // by hand here).
    let id = h.clients[a].id;
    let mut out = [0u8; 1500];
    let mut frame = vec![0.0f32; FRAME];
    for i in 0..100u64 {
        tone_into(600.0, 0.3, 50 + i, &mut frame);
        let n = h.clients[a]
            .leg
            .send_frame(&frame, h.now, &mut out)
            .unwrap();
        if i % 4 != 3 {
            h.room.handle_datagram(id, &out[..n], h.now).unwrap();
        }
        h.room.tick(h.now, &mut |_, _| {});
        h.now += FRAME_DURATION;
    }
    let st = h.room.participant_stats(id).unwrap();
    println!(
        "loss {} of {} ({:.3})",
        st.packets_lost, st.packets_expected, st.loss_fraction
    );
    // 25 dropped; the last one is not known lost until a later packet arrives.
    assert_eq!((st.packets_lost, st.packets_expected), (24, 149));
    assert!((st.loss_fraction - 24.0 / 149.0).abs() < 1e-9);
}
