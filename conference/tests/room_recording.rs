//! A recording room hands its sink one full-mix frame per tick (silence included, also
//! while empty) and, only when tracks are on, each participant's own input.

mod room_support;

use std::sync::{Arc, Mutex};

use confer_conference::room::{ParticipantId, RecordSink, RoomConfig, RoomError};
use confer_engine::leg::Codec;
use room_support::*;

#[derive(Default)]
struct Seen {
    mix: Vec<Vec<f32>>,
    tracks: Vec<(ParticipantId, Vec<f32>)>,
}

struct Probe(Arc<Mutex<Seen>>);

impl RecordSink for Probe {
    fn mix(&mut self, frame: &[f32]) {
        self.0.lock().unwrap().mix.push(frame.to_vec());
    }
    fn track(&mut self, id: ParticipantId, frame: &[f32]) {
        self.0.lock().unwrap().tracks.push((id, frame.to_vec()));
    }
}

fn probe() -> (Box<Probe>, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    (Box::new(Probe(seen.clone())), seen)
}

#[test]
fn a_sink_gets_one_mix_frame_per_tick_and_no_tracks_unless_asked() {
    let mut h = Harness::new(RoomConfig::default());
    let talker = h.join(Codec::Pcmu, gapped_tone(600.0, 0.3, 20, 2, 0));
    h.join(Codec::Pcmu, silent());
    let (sink, seen) = probe();
    h.room.start_recording(sink, false).unwrap();
    assert!(h.room.is_recording());
    h.run(50);
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.mix.len(), 50);
        assert!(s.mix.iter().all(|f| f.len() == FRAME));
        assert!(s.tracks.is_empty());
        let mixed: Vec<f32> = s.mix[30..].concat();
        assert!(
            tone_amplitude(&mixed, 600.0) > 0.1,
            "the talker is not in the mix"
        );
    }
    h.room.set_muted(h.clients[talker].id, true, h.now).unwrap();
    h.run(30);
    let s = seen.lock().unwrap();
    assert_eq!(
        s.mix.len(),
        80,
        "a silent room still records a frame per tick"
    );
    let quiet: Vec<f32> = s.mix[60..].concat();
    assert!(tone_amplitude(&quiet, 600.0) < 0.002);
}

#[test]
fn tracks_carry_each_participants_own_input_after_gain_and_mute() {
    let mut h = Harness::new(RoomConfig::default());
    let a = h.join(Codec::Pcmu, gapped_tone(600.0, 0.3, 20, 2, 0));
    let b = h.join(Codec::Pcmu, gapped_tone(900.0, 0.3, 20, 2, 0));
    let (a_id, b_id) = (h.clients[a].id, h.clients[b].id);
    h.room.set_muted(b_id, true, h.now).unwrap();
    h.room.set_input_gain_db(a_id, -6.0).unwrap();
    let (sink, seen) = probe();
    h.room.start_recording(sink, true).unwrap();
    h.run(50);
    let s = seen.lock().unwrap();
    assert_eq!(s.mix.len(), 50);
    assert_eq!(
        s.tracks.len(),
        100,
        "one track frame per participant per tick"
    );
    let track = |id| -> Vec<f32> {
        s.tracks[60..]
            .iter()
            .filter(|(p, _)| *p == id)
            .flat_map(|(_, f)| f.iter().copied())
            .collect()
    };
    let a_amp = tone_amplitude(&track(a_id), 600.0);
    // 0.3 at -6 dB is 0.150; G.711 and the jitter buffer leave it within a few percent.
    assert!((0.13..0.17).contains(&a_amp), "a's track at {a_amp}");
    assert!(
        tone_amplitude(&track(a_id), 900.0) < 0.01,
        "b leaks into a's track"
    );
    assert!(
        track(b_id).iter().all(|&x| x == 0.0),
        "a muted track is not silent"
    );
}

#[test]
fn a_second_recording_is_refused_and_stopping_gives_the_sink_back() {
    let mut h = Harness::new(RoomConfig::default());
    let (sink, seen) = probe();
    h.room.start_recording(sink, false).unwrap();
    let (other, _) = probe();
    assert_eq!(
        h.room.start_recording(other, false),
        Err(RoomError::AlreadyRecording)
    );
    // Empty: the timeline goes on as silence.
    h.run(5);
    assert_eq!(seen.lock().unwrap().mix.len(), 5);
    let back: Box<dyn std::any::Any> = h.room.stop_recording().unwrap();
    assert!(back.downcast::<Probe>().is_ok());
    assert!(!h.room.is_recording());
    h.run(5);
    assert_eq!(seen.lock().unwrap().mix.len(), 5);
}
