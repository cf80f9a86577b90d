//! Top-K speaker switching with hysteresis, through the room: three quiet talkers hold the
//! three places; a loud cough does not take one; a sustained loud talker replaces the
//! weakest after the hold time, once, without flapping.

mod room_support;

use confer_conference::room::{ParticipantId, RoomConfig};
use confer_engine::leg::Codec;
use room_support::*;

fn speaker_set(h: &Harness) -> Vec<ParticipantId> {
    let mut v: Vec<_> = h.room.speakers().collect();
    v.sort_unstable();
    v
}

#[test]
fn a_cough_does_not_switch_and_a_sustained_louder_talker_replaces_the_weakest() {
    let mut h = Harness::new(RoomConfig::default());
    // Levels about -27, -29 and -43 dBov while the tone sounds, with 40 ms pauses (in
    // which the smoothed level of a and b stays above c's).
    let a = h.join(Codec::Pcmu, gapped_tone(300.0, 0.06, 20, 2, 0));
    let b = h.join(Codec::Pcmu, gapped_tone(500.0, 0.05, 20, 2, 7));
    let c = h.join(Codec::Pcmu, gapped_tone(700.0, 0.01, 20, 2, 14));
    // D coughs for 200 ms at t = 2 s; E talks loudly from t = 4 s.
    let d = h.join(
        Codec::Pcmu,
        Box::new(|i, frame| {
            if (100..110).contains(&i) {
                tone_into(900.0, 0.6, i, frame);
            }
            true
        }),
    );
    let e = h.join(
        Codec::Pcmu,
        Box::new(|i, frame| {
            if i >= 200 && (i % 20) >= 2 {
                tone_into(1100.0, 0.5, i, frame);
            }
            true
        }),
    );
    let id = |h: &Harness, i: usize| h.clients[i].id;
    let first: Vec<ParticipantId> = {
        let mut v = vec![id(&h, a), id(&h, b), id(&h, c)];
        v.sort_unstable();
        v
    };
    h.run(10);
    assert_eq!(speaker_set(&h), first, "the three talkers are selected");
    // Through the cough and up to E's start: never a change.
    for _ in 10..200 {
        h.step();
        assert_eq!(speaker_set(&h), first);
    }
    let mut switched_at = None;
    let mut changes = 0;
    let mut last = speaker_set(&h);
    for f in 200..400 {
        h.step();
        let now = speaker_set(&h);
        if now != last {
            changes += 1;
            switched_at.get_or_insert(f);
            last = now;
        }
    }
    let f = switched_at.expect("the loud talker never became a speaker");
    let after_ms = (f - 200) * 20;
    println!("switched {after_ms} ms after the loud talker started");
    // The hold is 400 ms; the jitter buffer and the smoothing add a few frames.
    assert!(
        (400..=600).contains(&after_ms),
        "switched after {after_ms} ms"
    );
    assert_eq!(changes, 1, "no flapping");
    let mut want = vec![id(&h, a), id(&h, b), id(&h, e)];
    want.sort_unstable();
    assert_eq!(last, want, "the weakest (c) made way");
    // The cough was a talk event, but never mixed.
    let st = h.room.participant_stats(id(&h, d)).unwrap();
    assert_eq!(st.frames_mixed, 0);
}
