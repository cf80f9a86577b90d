//! A room times its stages with an injected clock, never its own: with a fake clock that
//! advances 1 ms at every read, every stage's sum is exactly the number of stage boundaries
//! the tick crossed in it, and the stages add up to the whole tick. Without a clock, a tick
//! reads none and still reports its counts.
//!
//! The lap structure this test pins down (one clock read per boundary):
//! - a decoded participant: one jitter and one decode lap around each decoder call, then
//!   jitter (after the pop), decode (after resampling), denoise (when on), vad; a
//!   challenger (decoded only to be warm) stops after the decode lap;
//! - a skipped participant: one jitter lap;
//! - mix after speaker selection, after mixing, after the listeners' groups are chosen,
//!   after each group's mix and each speaker's N-1 mix; encode after each encode; record
//!   after the recording; send after a speaker's packetizing and after each participant's
//!   sends.
//!
//! Deterministic: seeded legs, virtual media time, and a thread-local fake clock.

mod room_support;

use std::cell::Cell;
use std::time::{Duration, Instant};

use confer_conference::room::{ParticipantConfig, ParticipantId, RecordSink, Room, RoomConfig};
use confer_engine::leg::{Codec, LegConfig, MediaLeg, StageTimes};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use room_support::{FRAME, FRAME_DURATION, origin, tone_into};

thread_local! {
    static BASE: Instant = origin();
    static READS: Cell<u64> = const { Cell::new(0) };
}

/// A clock that advances by 1 ms at every read.
fn fake_clock() -> Instant {
    let n = READS.with(|r| {
        r.set(r.get() + 1);
        r.get()
    });
    BASE.with(|b| *b + Duration::from_millis(n))
}

fn reads() -> u64 {
    READS.with(|r| r.get())
}

struct Talker {
    id: ParticipantId,
    client: MediaLeg,
    freq: f32,
    amp: f32,
}

struct Setup {
    room: Room,
    talkers: Vec<Talker>,
    now: Instant,
    frame: u64,
}

struct NullSink;

impl RecordSink for NullSink {
    fn mix(&mut self, _: &[f32]) {}
    fn track(&mut self, _: ParticipantId, _: &[f32]) {}
}

impl Setup {
    /// Three loud browsers, two quieter ones and a silent one (all with header levels),
    /// and one phone without levels whose leg denoises; the room records its mix.
    fn new() -> Self {
        let now = origin();
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut room = Room::new(RoomConfig::default(), now).unwrap();
        room.start_recording(Box::new(NullSink), false).unwrap();
        let mut talkers = Vec::new();
        let people = [
            (true, 0.3, 440.0),
            (true, 0.28, 660.0),
            (true, 0.26, 880.0),
            (true, 0.06, 500.0),
            (true, 0.05, 550.0),
            (true, 0.0, 600.0),
            (false, 0.05, 300.0),
        ];
        for (browser, amp, freq) in people {
            let config = if browser {
                LegConfig {
                    audio_level_extension: Some(1),
                    ..LegConfig::default()
                }
            } else {
                LegConfig {
                    codec: Codec::Pcmu,
                    ..LegConfig::default()
                }
            };
            let room_side = MediaLeg::new(
                LegConfig {
                    denoise: !browser,
                    ..config.clone()
                },
                None,
                &mut rng,
                now,
            )
            .unwrap();
            let client = MediaLeg::new(config, None, &mut rng, now).unwrap();
            let id = room.join(ParticipantConfig::new(room_side), now).unwrap();
            talkers.push(Talker {
                id,
                client,
                freq,
                amp,
            });
        }
        Setup {
            room,
            talkers,
            now,
            frame: 0,
        }
    }

    fn step(&mut self) {
        let mut pcm = vec![0.0f32; FRAME];
        let mut out = vec![0u8; 1500];
        for t in &mut self.talkers {
            pcm.fill(0.0);
            // A 40 ms pause every 400 ms keeps the sender's VAD noise floor low.
            if self.frame % 20 >= 2 {
                tone_into(t.freq, t.amp, self.frame, &mut pcm);
            }
            let n = t.client.send_frame(&pcm, self.now, &mut out).unwrap();
            if n > 0 {
                self.room
                    .handle_datagram(t.id, &out[..n], self.now)
                    .unwrap();
            }
        }
        self.room.tick(self.now, &mut |_, _| {});
        self.now += FRAME_DURATION;
        self.frame += 1;
    }
}

fn ms(n: u32) -> Duration {
    Duration::from_millis(u64::from(n))
}

#[test]
fn every_stage_boundary_is_one_lap_and_the_stages_add_up_to_the_tick() {
    let mut s = Setup::new();
    s.room.set_stage_clock(Some(fake_clock));
    let participants = s.talkers.len() as u32;
    for k in 0..60 {
        let before = reads();
        s.step();
        let read = reads() - before;
        let t: StageTimes = s.room.last_tick_stages();
        let stats = s.room.stats();
        let (decoded, skipped, calls) = (t.frames_decoded, t.frames_skipped, t.decoder_calls);
        let (shared, own) = (
            stats.shared_encodes_last_tick,
            stats.speaker_encodes_last_tick,
        );
        assert_eq!(decoded + skipped, participants);
        assert_eq!(t.encodes, shared + own);
        // The first read starts the timer; every other read is a lap of 1 ms.
        assert_eq!(t.total(), ms(read as u32 - 1), "tick {k}: {t:?}");
        // Those skipped are lapped together: once per run of them between two decodes.
        let runs = t.jitter.saturating_sub(ms(calls + decoded));
        if skipped == 0 {
            assert_eq!(runs, Duration::ZERO, "tick {k}: {t:?}");
        } else {
            assert!(
                runs >= ms(1) && runs <= ms(skipped.min(decoded + 1)),
                "tick {k}: {t:?}"
            );
        }
        assert_eq!(t.decode, ms(calls + decoded), "tick {k}: {t:?}");
        assert!(t.vad <= ms(decoded), "tick {k}: {t:?}");
        assert_eq!(t.denoise, ms(1), "the phone's leg denoises: {t:?}");
        assert_eq!(t.mix, ms(3 + shared + own), "tick {k}: {t:?}");
        assert_eq!(t.encode, ms(shared + own), "tick {k}: {t:?}");
        assert_eq!(t.record, ms(1), "tick {k}: {t:?}");
        // Two laps per own encode (its packetizing, then its queueing), and one after
        // each of the two passes (the shared payload's packets are lapped together).
        assert_eq!(t.send, ms(2 * own + 2), "tick {k}: {t:?}");
        if k >= 10 {
            // Steady: the three loud browsers speak, the two quieter are challengers, the
            // phone is decoded for its VAD, the silent browser is skipped.
            assert_eq!((decoded, skipped), (6, 1), "tick {k}: {t:?}");
            assert_eq!(t.jitter, ms(calls + decoded + 1), "tick {k}: {t:?}");
            // The challengers are decoded without VAD (or noise suppression).
            assert_eq!(t.vad, ms(4), "three speakers and the phone: {t:?}");
            assert_eq!(own, 3);
            assert!(calls >= 6, "tick {k}: {t:?}");
        }
    }
    // The mixed speakers' jitter-buffer delays, for the host's histogram.
    let delays: Vec<_> = s.room.mixed_jitter_delays().collect();
    let speakers: Vec<_> = s.room.speakers().collect();
    assert_eq!(delays.len(), 3);
    for (id, d) in delays {
        assert!(speakers.contains(&id));
        assert!(
            d > Duration::ZERO && d < Duration::from_millis(200),
            "{d:?}"
        );
    }
}

#[test]
fn without_a_clock_a_tick_reads_none_and_still_counts() {
    let mut s = Setup::new();
    for _ in 0..20 {
        s.step();
    }
    let before = reads();
    s.step();
    assert_eq!(reads(), before, "no clock read");
    let t = s.room.last_tick_stages();
    assert_eq!(t.total(), Duration::ZERO);
    assert_eq!((t.frames_decoded, t.frames_skipped), (6, 1));
    assert_eq!(
        t.encodes, 5,
        "three speakers' own, two listener groups: {t:?}"
    );
    // A clock set later takes effect at the next tick, and can be taken away again.
    s.room.set_stage_clock(Some(fake_clock));
    s.step();
    assert!(s.room.last_tick_stages().total() > Duration::ZERO);
    s.room.set_stage_clock(None);
    let before = reads();
    s.step();
    assert_eq!(reads(), before);
}
