//! Private playback, announcements and in-band keys: what the PSTN dial-in IVR builds on.
//!
//! A clip played to one participant is decoded from its packets, at its level, and is in
//! nobody else's; a deaf participant and a room waiting for a moderator still deliver it.
//! An announcement reaches every hearing participant and the recording, also when nobody
//! talks. `PlaybackFinished` comes once, in the tick that sent the queue's last samples.
//! DTMF tones inside a G.711 (or Opus) stream are keys, once per press, muted or not,
//! through the leg's noise suppression too, and a minute of speech is none.

mod room_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use confer_codecs::decoder::AudioEncoder;
use confer_codecs::dtmf::{DtmfDigit, DtmfGenerator};
use confer_codecs::g711::{G711Encoder, G711Law};
use confer_conference::room::{
    Clip, PLAYBACK_QUEUE_LEN, ParticipantConfig, ParticipantId, RecordSink, Room, RoomConfig,
    RoomError, RoomEventKind,
};
use confer_engine::leg::{Codec, LegConfig, MediaLeg, OpusParams};
use confer_engine::rtp::RtpPacketBuilder;
use confer_engine::types::Ssrc;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use room_support::*;

/// The prompt's tone: no participant sends it.
const PROMPT_HZ: f32 = 1000.0;
const TALKER_HZ: f32 = 600.0;

/// `frames` frames of a `freq` tone at `amp` (a fractional count leaves a partial frame).
fn tone_clip(freq: f32, amp: f32, frames: f64) -> Clip {
    let n = (frames * FRAME as f64).round() as usize;
    let mut x = vec![0.0f32; n];
    for (k, s) in x.iter_mut().enumerate() {
        let t = k as f64 / RATE as f64;
        *s = amp * (2.0 * std::f64::consts::PI * f64::from(freq) * t).sin() as f32;
    }
    x.into()
}

/// The amplitude of `freq` in what client `c` heard over frames `from..to` of its timeline.
fn heard(h: &Harness, c: usize, freq: f32, from: usize, to: usize) -> f64 {
    tone_amplitude(&h.clients[c].heard[from * FRAME..to * FRAME], freq)
}

fn events(room: &mut Room) -> Vec<(Duration, RoomEventKind)> {
    std::iter::from_fn(|| room.poll_event())
        .map(|e| (e.media_time, e.kind))
        .collect()
}

fn finished(ev: &[(Duration, RoomEventKind)], id: ParticipantId) -> Vec<Duration> {
    ev.iter()
        .filter(|e| e.1 == RoomEventKind::PlaybackFinished(id))
        .map(|e| e.0)
        .collect()
}

fn tick_time(frame_index: u64) -> Duration {
    FRAME_DURATION * frame_index as u32
}

#[test]
fn a_clip_is_heard_by_its_participant_alone_on_top_of_the_room_and_finishes_once() {
    let mut h = Harness::new(RoomConfig::default());
    let talker = h.join(Codec::Pcmu, gapped_tone(TALKER_HZ, 0.3, 20, 2, 0));
    let caller = h.join(Codec::Pcmu, silent());
    let other = h.join(Codec::Opus(OpusParams::default()), silent());
    let id = h.clients[caller].id;
    h.run(50);
    events(&mut h.room);

    // 40.5 frames: the last one is half a frame, padded.
    let start = h.frame_index;
    h.room.play_to(id, tone_clip(PROMPT_HZ, 0.3, 40.5)).unwrap();
    assert!(h.room.is_playing(id).unwrap());
    let mut own_encodes = Vec::new();
    for _ in 0..60 {
        h.step();
        own_encodes.push(h.room.stats().speaker_encodes_last_tick);
    }
    // Its own encode while the clip plays (41 ticks), beside the talker's N-1 one.
    assert!(own_encodes[..41].iter().all(|&n| n == 2), "{own_encodes:?}");
    assert!(own_encodes[41..].iter().all(|&n| n == 1), "{own_encodes:?}");
    assert!(!h.room.is_playing(id).unwrap());
    let ev = events(&mut h.room);
    assert_eq!(
        finished(&ev, id),
        [tick_time(start + 40)],
        "once, in the tick of the last samples"
    );
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e.1, RoomEventKind::PlaybackFinished(_)))
            .count(),
        1
    );

    // Measured away from the edges (the client's jitter buffer delays what it hears).
    let (from, to) = (start as usize + 10, start as usize + 35);
    let prompt = heard(&h, caller, PROMPT_HZ, from, to);
    println!("prompt heard by the caller at {prompt:.3}");
    assert!((0.27..0.33).contains(&prompt), "the caller hears {prompt}");
    let room = heard(&h, caller, TALKER_HZ, from, to);
    assert!(room > 0.2, "the room under the prompt is gone: {room}");
    for c in [talker, other] {
        let leak = heard(&h, c, PROMPT_HZ, from, to);
        assert!(leak < 0.002, "client {c} hears the prompt at {leak}");
    }
    // After it: gone.
    let after = heard(
        &h,
        caller,
        PROMPT_HZ,
        start as usize + 50,
        start as usize + 60,
    );
    assert!(after < 0.002, "the prompt goes on at {after}");
    assert!(
        heard(
            &h,
            caller,
            TALKER_HZ,
            start as usize + 50,
            start as usize + 60
        ) > 0.2
    );
}

#[test]
fn a_speaker_hears_its_clip_on_top_of_its_n_minus_one_mix_times_its_output_gain() {
    let mut h = Harness::new(RoomConfig::default());
    let a = h.join(Codec::Pcmu, gapped_tone(TALKER_HZ, 0.3, 20, 2, 0));
    let b = h.join(Codec::Pcmu, gapped_tone(900.0, 0.3, 20, 2, 5));
    let id = h.clients[a].id;
    h.room.set_output_gain_db(id, -6.0).unwrap();
    h.run(50);
    assert_eq!(h.room.stats().speakers, 2);
    let start = h.frame_index as usize;
    h.room.play_to(id, tone_clip(PROMPT_HZ, 0.4, 40.0)).unwrap();
    h.run(40);
    assert_eq!(
        h.room.stats().speakers,
        2,
        "the clip made no one stop talking"
    );
    let (from, to) = (start + 10, start + 35);
    let prompt = heard(&h, a, PROMPT_HZ, from, to);
    // 0.4 at -6 dB: 0.200.
    assert!((0.18..0.22).contains(&prompt), "prompt at {prompt}");
    assert!(
        heard(&h, a, 900.0, from, to) > 0.12,
        "b is gone under the prompt"
    );
    assert!(heard(&h, a, TALKER_HZ, from, to) < 0.01, "a hears itself");
    assert!(heard(&h, b, PROMPT_HZ, from, to) < 0.002);
}

#[test]
fn stopping_playback_cuts_the_queue_at_once_without_an_event() {
    let mut h = Harness::new(RoomConfig::default());
    h.join(Codec::Pcmu, gapped_tone(TALKER_HZ, 0.3, 20, 2, 0));
    let caller = h.join(Codec::Pcmu, silent());
    let id = h.clients[caller].id;
    h.run(20);
    h.room
        .play_to(id, tone_clip(PROMPT_HZ, 0.3, 100.0))
        .unwrap();
    h.room.play_to(id, tone_clip(1200.0, 0.3, 10.0)).unwrap();
    h.run(30);
    assert!(heard(&h, caller, PROMPT_HZ, 35, 50) > 0.25);
    h.room.stop_playback(id).unwrap();
    assert!(!h.room.is_playing(id).unwrap());
    let stop = h.frame_index as usize;
    h.run(150);
    let ev = events(&mut h.room);
    assert!(finished(&ev, id).is_empty(), "an event after a stop");
    let after = &h.clients[caller].heard[(stop + 10) * FRAME..];
    assert!(tone_amplitude(after, PROMPT_HZ) < 0.002);
    assert!(
        tone_amplitude(after, 1200.0) < 0.002,
        "the next clip played"
    );
    assert_eq!(h.room.stats().speaker_encodes_last_tick, 1);
}

#[test]
fn a_deaf_participant_hears_its_own_clip_and_nothing_else() {
    let mut h = Harness::new(RoomConfig::default());
    h.join(Codec::Pcmu, gapped_tone(TALKER_HZ, 0.3, 20, 2, 0));
    let deaf = h.join_with(Codec::Pcmu, silent(), |p| p.deaf = true);
    let id = h.clients[deaf].id;
    h.run(30);
    assert_eq!(h.clients[deaf].rtp_packets, 0);
    h.room.play_to(id, tone_clip(PROMPT_HZ, 0.3, 40.0)).unwrap();
    h.room.announce(tone_clip(1200.0, 0.3, 40.0)).unwrap();
    h.run(60);
    assert_eq!(h.clients[deaf].rtp_packets, 40, "one packet per clip frame");
    let prompt = heard(&h, deaf, PROMPT_HZ, 40, 65);
    assert!(
        (0.27..0.33).contains(&prompt),
        "the deaf caller hears {prompt}"
    );
    assert!(
        heard(&h, deaf, TALKER_HZ, 40, 65) < 0.002,
        "deaf, yet hears the room"
    );
    assert!(
        heard(&h, deaf, 1200.0, 40, 65) < 0.002,
        "deaf, yet hears the announcement"
    );
}

#[test]
fn while_the_room_waits_for_a_moderator_a_prompt_still_reaches_its_participant() {
    let mut h = Harness::new(RoomConfig {
        wait_for_moderator: true,
        ..RoomConfig::default()
    });
    let talker = h.join(Codec::Pcmu, gapped_tone(TALKER_HZ, 0.3, 20, 2, 0));
    let caller = h.join(Codec::Pcmu, silent());
    let id = h.clients[caller].id;
    assert!(h.room.waiting_for_moderator());
    h.run(10);
    h.room.play_to(id, tone_clip(PROMPT_HZ, 0.3, 40.0)).unwrap();
    h.room.announce(tone_clip(1200.0, 0.3, 40.0)).unwrap();
    h.run(50);
    assert_eq!(h.clients[caller].rtp_packets, 40);
    assert_eq!(
        h.clients[talker].rtp_packets, 0,
        "the others still get nothing"
    );
    let prompt = heard(&h, caller, PROMPT_HZ, 20, 45);
    assert!(
        (0.27..0.33).contains(&prompt),
        "the waiting caller hears {prompt}"
    );
    assert!(heard(&h, caller, TALKER_HZ, 20, 45) < 0.002);
    assert!(
        heard(&h, caller, 1200.0, 20, 45) < 0.002,
        "an announcement while waiting"
    );
    let ev = events(&mut h.room);
    assert_eq!(finished(&ev, id), [tick_time(10 + 39)]);
}

#[derive(Default)]
struct Seen {
    mix: Vec<Vec<f32>>,
}

struct Probe(Arc<Mutex<Seen>>);

impl RecordSink for Probe {
    fn mix(&mut self, frame: &[f32]) {
        self.0.lock().unwrap().mix.push(frame.to_vec());
    }
    fn track(&mut self, _: ParticipantId, _: &[f32]) {}
}

#[test]
fn an_announcement_reaches_every_hearing_participant_and_the_recording() {
    let mut h = Harness::new(RoomConfig::default());
    let talker = h.join(Codec::Pcmu, gapped_tone(TALKER_HZ, 0.3, 20, 2, 0));
    let phone = h.join(Codec::Pcmu, silent());
    let browser = h.join(Codec::Opus(OpusParams::default()), silent());
    let quiet = h.join_with(Codec::Pcmu, silent(), |p| p.output_gain_db = -6.0);
    let deaf = h.join_with(Codec::Pcmu, silent(), |p| p.deaf = true);
    let seen = Arc::new(Mutex::new(Seen::default()));
    h.room
        .start_recording(Box::new(Probe(seen.clone())), false)
        .unwrap();
    h.run(50);
    let start = h.frame_index as usize;
    h.room.announce(tone_clip(PROMPT_HZ, 0.3, 40.0)).unwrap();
    h.run(60);
    let (from, to) = (start + 10, start + 35);
    for (c, want) in [(talker, 0.3), (phone, 0.3), (browser, 0.3), (quiet, 0.15)] {
        let a = heard(&h, c, PROMPT_HZ, from, to);
        println!("client {c} hears the announcement at {a:.3}");
        assert!((a - want).abs() < 0.03, "client {c} hears it at {a}");
    }
    // The listeners still hear the talker under it, and no one hears it afterwards.
    assert!(heard(&h, phone, TALKER_HZ, from, to) > 0.2);
    for c in [talker, phone, browser, quiet] {
        assert!(heard(&h, c, PROMPT_HZ, start + 50, start + 60) < 0.002);
    }
    assert_eq!(h.clients[deaf].rtp_packets, 0, "the deaf one got audio");
    let s = seen.lock().unwrap();
    let recorded: Vec<f32> = s.mix[start..start + 40].concat();
    let a = tone_amplitude(&recorded, PROMPT_HZ);
    // The recording gets the room's own PCM: no codec, no jitter buffer.
    assert!((a - 0.3).abs() < 0.003, "the recording has it at {a}");
    assert!(tone_amplitude(&s.mix[start + 40..].concat(), PROMPT_HZ) < 0.002);
}

#[test]
fn an_announcement_is_heard_when_nobody_talks() {
    let mut h = Harness::new(RoomConfig::default());
    let phone = h.join(Codec::Pcmu, silent());
    let browser = h.join(Codec::Opus(OpusParams::default()), zeros());
    h.run(20);
    assert_eq!(h.room.stats().speakers, 0);
    h.room.announce(tone_clip(PROMPT_HZ, 0.3, 40.0)).unwrap();
    h.run(50);
    for c in [phone, browser] {
        let a = heard(&h, c, PROMPT_HZ, 30, 55);
        assert!((a - 0.3).abs() < 0.03, "client {c} hears it at {a}");
    }
    assert_eq!(h.room.stats().speakers, 0);
}

#[test]
fn clips_play_back_to_back_frame_aligned_in_queue_order() {
    // The recording gets the announcements' exact samples (a quiet constant passes the
    // limiter unchanged), so the frame layout can be read off it.
    let mut h = Harness::new(RoomConfig::default());
    h.join(Codec::Pcmu, silent());
    let seen = Arc::new(Mutex::new(Seen::default()));
    h.room
        .start_recording(Box::new(Probe(seen.clone())), false)
        .unwrap();
    h.run(3);
    let first: Clip = vec![0.25f32; FRAME + FRAME / 2].into();
    let empty: Clip = Vec::new().into();
    let second: Clip = vec![0.5f32; FRAME].into();
    h.room.announce(first).unwrap();
    h.room.announce(empty).unwrap();
    h.room.announce(second).unwrap();
    h.run(4);
    let s = seen.lock().unwrap();
    let f = &s.mix[3..];
    assert!(f[0].iter().all(|&x| x == 0.25));
    assert!(f[1][..FRAME / 2].iter().all(|&x| x == 0.25));
    assert!(f[1][FRAME / 2..].iter().all(|&x| x == 0.0), "not padded");
    assert!(f[2].iter().all(|&x| x == 0.5), "the next clip is late");
    assert!(f[3].iter().all(|&x| x == 0.0));
}

#[test]
fn an_empty_clip_finishes_at_the_next_tick_without_an_encode_of_its_own() {
    let mut h = Harness::new(RoomConfig::default());
    let caller = h.join(Codec::Pcmu, silent());
    let id = h.clients[caller].id;
    h.run(5);
    events(&mut h.room);
    h.room.play_to(id, Vec::new().into()).unwrap();
    assert!(h.room.is_playing(id).unwrap());
    h.step();
    assert!(!h.room.is_playing(id).unwrap());
    assert_eq!(h.room.stats().speaker_encodes_last_tick, 0);
    assert_eq!(h.room.stats().shared_encodes_last_tick, 1);
    assert_eq!(finished(&events(&mut h.room), id), [tick_time(5)]);
}

#[test]
fn non_finite_clip_samples_are_silence_and_do_not_poison_anyone() {
    let mut h = Harness::new(RoomConfig::default());
    let talker = h.join(Codec::Pcmu, gapped_tone(TALKER_HZ, 0.3, 20, 2, 0));
    let caller = h.join(Codec::Pcmu, silent());
    let id = h.clients[caller].id;
    h.run(20);
    // Quiet enough that the caller's sum (two of it and the talker) stays below the
    // limiter's threshold: any level change would be the bad samples' doing.
    let mut bad = tone_clip(PROMPT_HZ, 0.2, 40.0).to_vec();
    for (k, x) in bad.iter_mut().enumerate() {
        match k % 97 {
            0 => *x = f32::NAN,
            1 => *x = f32::INFINITY,
            2 => *x = f32::NEG_INFINITY,
            _ => {}
        }
    }
    let bad: Clip = bad.into();
    h.room.play_to(id, bad.clone()).unwrap();
    h.room.announce(bad).unwrap();
    h.run(80);
    // A 30th of the samples is silence.
    for (c, want) in [(talker, 0.2 * 0.97), (caller, 0.4 * 0.97)] {
        assert!(h.clients[c].heard.iter().all(|v| v.is_finite()));
        let prompt = heard(&h, c, PROMPT_HZ, 30, 55);
        println!("client {c} hears the bad clip's tone at {prompt:.3}");
        assert!((prompt - want).abs() < 0.02, "client {c} hears {prompt}");
    }
    // The room under it is as loud as after it (two talker periods later).
    let under = heard(&h, caller, TALKER_HZ, 30, 55);
    let after = heard(&h, caller, TALKER_HZ, 70, 95);
    assert!(
        (under - after).abs() < 0.01,
        "the room is at {under} under the clip, {after} after"
    );
}

#[test]
fn a_full_queue_and_an_unknown_participant_are_refused() {
    let mut h = Harness::new(RoomConfig::default());
    let caller = h.join(Codec::Pcmu, silent());
    let id = h.clients[caller].id;
    let clip = tone_clip(PROMPT_HZ, 0.3, 2.0);
    for _ in 0..PLAYBACK_QUEUE_LEN {
        h.room.play_to(id, clip.clone()).unwrap();
        h.room.announce(clip.clone()).unwrap();
    }
    assert_eq!(
        h.room.play_to(id, clip.clone()),
        Err(RoomError::PlaybackQueueFull)
    );
    assert_eq!(
        h.room.announce(clip.clone()),
        Err(RoomError::PlaybackQueueFull)
    );
    // Two frames later the first clip has played: a place is free.
    h.run(2);
    h.room.play_to(id, clip.clone()).unwrap();
    h.room.announce(clip.clone()).unwrap();

    let _leg = h.room.leave(id, h.now).unwrap();
    let unknown = Err(RoomError::UnknownParticipant(id));
    assert_eq!(h.room.play_to(id, clip.clone()), unknown);
    assert_eq!(h.room.stop_playback(id), unknown);
    assert_eq!(h.room.is_playing(id), unknown.clone().map(|()| false));
    assert_eq!(h.room.set_inband_dtmf(id, true), unknown);
    // Left with its queue: no event for it, ever.
    h.run(40);
    assert!(finished(&events(&mut h.room), id).is_empty());
    // Nobody left to hear an announcement: dropped, and a newcomer does not hear it.
    h.room.announce(tone_clip(PROMPT_HZ, 0.3, 40.0)).unwrap();
    h.run(2);
    let late = h.join(Codec::Pcmu, silent());
    h.run(30);
    assert!(heard(&h, late, PROMPT_HZ, 10, 30) < 0.002);
}

// ---------------------------------------------------------------------------
// In-band DTMF
// ---------------------------------------------------------------------------

/// A phone whose keys are tones in its G.711 stream: 8 kHz samples, G.711-encoded and
/// packetized by hand, one packet per 20 ms tick.
struct Phone {
    room: Room,
    id: ParticipantId,
    encoder: G711Encoder,
    seq: u16,
    ts: u32,
    now: std::time::Instant,
}

impl Phone {
    fn new(inband: bool) -> Self {
        Self::with_denoise(inband, false)
    }

    fn with_denoise(inband: bool, denoise: bool) -> Self {
        let now = origin();
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let leg = MediaLeg::new(
            LegConfig {
                codec: Codec::Pcmu,
                denoise,
                ..LegConfig::default()
            },
            None,
            &mut rng,
            now,
        )
        .unwrap();
        let mut room = Room::new(RoomConfig::default(), now).unwrap();
        let mut pc = ParticipantConfig::new(leg);
        pc.inband_dtmf = inband;
        let id = room.join(pc, now).unwrap();
        Phone {
            room,
            id,
            encoder: G711Encoder::new(G711Law::Ulaw, 20).unwrap(),
            seq: 1000,
            ts: 5000,
            now,
        }
    }

    /// Sends `pcm` (8 kHz) 160 samples per tick and ticks; returns the keys the room saw.
    fn send(&mut self, pcm: &[f32]) -> Vec<DtmfDigit> {
        let mut payload = [0u8; 160];
        let mut packet = [0u8; 256];
        let mut keys = Vec::new();
        for chunk in pcm.chunks_exact(160) {
            let n = self.encoder.encode(chunk, &mut payload).unwrap();
            let len = RtpPacketBuilder::new(Codec::Pcmu.payload_type(), self.seq, self.ts, Ssrc(9))
                .payload(&payload[..n])
                .write(&mut packet)
                .unwrap();
            self.room
                .handle_datagram(self.id, &packet[..len], self.now)
                .unwrap();
            self.room.tick(self.now, &mut |_, _| {});
            self.seq = self.seq.wrapping_add(1);
            self.ts = self.ts.wrapping_add(160);
            self.now += FRAME_DURATION;
            for e in events(&mut self.room) {
                if let RoomEventKind::Digit { id, digit } = e.1 {
                    assert_eq!(id, self.id);
                    keys.push(digit);
                }
            }
        }
        keys
    }
}

/// The tones of `digits` (100 ms each, 100 ms apart) at 8 kHz, then half a second of
/// silence.
fn dtmf_8k(digits: &str) -> Vec<f32> {
    let mut g = DtmfGenerator::new(8000).unwrap();
    g.push_digits(digits).unwrap();
    let mut pcm = vec![0.0f32; 8 * (200 * digits.len() + 500)];
    g.fill(&mut pcm);
    pcm
}

fn keys(s: &str) -> Vec<DtmfDigit> {
    s.chars()
        .map(|c| DtmfDigit::from_char(c).unwrap())
        .collect()
}

#[test]
fn a_phones_dtmf_tones_are_one_digit_event_per_press_muted_or_not() {
    let mut phone = Phone::new(true);
    phone.send(&vec![0.0; 8000]);
    assert_eq!(phone.send(&dtmf_8k("1590#")), keys("1590#"));
    // The same key twice is two presses.
    assert_eq!(phone.send(&dtmf_8k("55")), keys("55"));
    // A muted phone in an IVR still types its PIN.
    phone.room.set_muted(phone.id, true, phone.now).unwrap();
    assert_eq!(phone.send(&dtmf_8k("*0D")), keys("*0D"));
    let st = phone.room.participant_stats(phone.id).unwrap();
    assert!(st.muted && !st.speaker);
}

#[test]
fn without_in_band_detection_tones_are_no_keys_and_it_can_be_turned_on_and_off() {
    let mut phone = Phone::new(false);
    phone.send(&vec![0.0; 8000]);
    assert!(phone.send(&dtmf_8k("123")).is_empty());
    phone.room.set_inband_dtmf(phone.id, true).unwrap();
    assert_eq!(phone.send(&dtmf_8k("123")), keys("123"));
    phone.room.set_inband_dtmf(phone.id, false).unwrap();
    assert!(phone.send(&dtmf_8k("456")).is_empty());
}

#[test]
fn a_minute_of_speech_is_no_key() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/audio/speech-8k-60s.wav"
    );
    let mut r = hound::WavReader::open(path).unwrap();
    assert_eq!(r.spec().sample_rate, 8000);
    let pcm: Vec<f32> = r
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect();
    let mut phone = Phone::new(true);
    let keys = phone.send(&pcm);
    assert!(keys.is_empty(), "speech read as keys: {keys:?}");
    // And the speaker was heard as one (the detector is beside the mix, not instead).
    assert!(phone.room.participant_stats(phone.id).unwrap().frames_mixed > 1000);
}

#[test]
fn a_muted_browser_sending_header_levels_is_decoded_for_its_tones() {
    // An Opus participant whose packets carry RFC 6464 levels is normally only advanced
    // while muted; with in-band detection it is decoded, and its tones are keys.
    let now = origin();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let config = LegConfig {
        audio_level_extension: Some(1),
        ..LegConfig::default()
    };
    let room_side = MediaLeg::new(config.clone(), None, &mut rng, now).unwrap();
    let mut client = MediaLeg::new(config, None, &mut rng, now).unwrap();
    let mut room = Room::new(RoomConfig::default(), now).unwrap();
    let mut pc = ParticipantConfig::new(room_side);
    pc.muted = true;
    pc.inband_dtmf = true;
    let id = room.join(pc, now).unwrap();
    let mut g = DtmfGenerator::new(48_000).unwrap();
    g.push_digits("74#").unwrap();
    let mut frame = vec![0.0f32; FRAME];
    let mut out = [0u8; 1500];
    let mut now = now;
    let mut got = Vec::new();
    let mut header_ticks = 0;
    for _ in 0..60 {
        g.fill(&mut frame);
        let n = client.send_frame(&frame, now, &mut out).unwrap();
        if n > 0 {
            room.handle_datagram(id, &out[..n], now).unwrap();
        }
        room.tick(now, &mut |_, _| {});
        let st = room.participant_stats(id).unwrap();
        assert!(st.decoded, "a detector's participant was not decoded");
        header_ticks += u32::from(st.header_levels);
        now += FRAME_DURATION;
        for e in events(&mut room) {
            if let RoomEventKind::Digit { digit, .. } = e.1 {
                got.push(digit);
            }
        }
    }
    assert!(
        header_ticks > 50,
        "not judged from its headers: {header_ticks}"
    );
    assert_eq!(got, keys("74#"));
}

#[test]
fn every_key_short_and_quiet_is_detected_also_through_noise_suppression() {
    // 60 ms tones 60 ms apart at -25 dBov per tone: near the limits a keypad is held to.
    let mut g = DtmfGenerator::new(8000).unwrap();
    g.set_timing(Duration::from_millis(60), Duration::from_millis(60));
    g.set_level(-25.0);
    let all = "1234567890*#ABCD";
    g.push_digits(all).unwrap();
    let mut pcm = vec![0.0f32; 8 * (120 * all.len() + 500)];
    g.fill(&mut pcm);
    for denoise in [false, true] {
        let mut phone = Phone::with_denoise(true, denoise);
        phone.send(&vec![0.0; 8000]);
        assert_eq!(phone.send(&pcm), keys(all), "denoise {denoise}");
    }
}
