//! A room whose participants send RFC 6464 audio levels in their RTP headers (as browsers
//! do) decides who speaks from those levels and decodes only the speakers and a few
//! challengers; everyone else's jitter buffer only keeps its schedule. Participants without
//! levels (G.711 from a PBX) are decoded every tick as before.
//!
//! Deterministic and fast enough for hundreds of participants in a debug build: each
//! distinct signal is encoded once by a client-side leg (which writes the level extension
//! as a browser would), and its packets are re-addressed for every participant that plays
//! it (own SSRC, sequence numbers and timestamps). Time is virtual; nothing goes through a
//! socket. The observers are client legs that decode what the room sends them.

mod room_support;

use std::time::{Duration, Instant};

use confer_conference::room::{ParticipantConfig, ParticipantId, Room, RoomConfig};
use confer_engine::leg::{Codec, LegConfig, MediaLeg};
use confer_engine::rtp::{AudioLevel, RtpExtension, RtpPacket, RtpPacketBuilder};
use confer_engine::types::{PayloadType, Ssrc};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use room_support::{FRAME, decimate, origin, speech_48k, tone_amplitude, tone_into};

const LEVEL_ID: u8 = 1;
const STEP: Duration = Duration::from_millis(20);

/// One signal encoded once: per frame, the payload (`None`: Opus DTX sent nothing) and the
/// level byte the sender wrote.
struct Stream {
    pcm: Vec<f32>,
    packets: Vec<Option<(Vec<u8>, Option<AudioLevel>)>>,
    payload_type: PayloadType,
}

/// Encodes `frames` frames of `signal` with a client leg of `codec`, with the level
/// extension when `levels`.
fn encode(
    codec: Codec,
    levels: bool,
    frames: usize,
    mut signal: impl FnMut(usize, &mut [f32]),
) -> Stream {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let config = LegConfig {
        codec,
        audio_level_extension: levels.then_some(LEVEL_ID),
        ..LegConfig::default()
    };
    let t0 = origin();
    let mut leg = MediaLeg::new(config, None, &mut rng, t0).unwrap();
    let mut pcm = Vec::with_capacity(frames * FRAME);
    let mut packets = Vec::with_capacity(frames);
    let mut frame = vec![0.0f32; FRAME];
    let mut out = vec![0u8; 1500];
    for k in 0..frames {
        frame.fill(0.0);
        signal(k, &mut frame);
        pcm.extend_from_slice(&frame);
        let n = leg.send_frame(&frame, t0, &mut out).unwrap();
        packets.push((n > 0).then(|| {
            let p = RtpPacket::parse(&out[..n]).unwrap();
            (p.payload().to_vec(), p.audio_level(LEVEL_ID))
        }));
    }
    Stream {
        pcm,
        packets,
        payload_type: codec.payload_type(),
    }
}

/// A participant: which stream it plays, from which frame, and its RTP numbering.
struct Sender {
    id: ParticipantId,
    stream: usize,
    offset: usize,
    ssrc: u32,
    seq: u16,
    ts: u32,
}

/// A participant whose received audio is decoded.
struct Observer {
    id: ParticipantId,
    leg: MediaLeg,
    heard: Vec<f32>,
}

struct Conference {
    room: Room,
    streams: Vec<Stream>,
    senders: Vec<Sender>,
    observers: Vec<Observer>,
    now: Instant,
    frame: usize,
    rng: ChaCha8Rng,
    inbox: Vec<(ParticipantId, Vec<u8>)>,
    /// When set, the wall time of handing the datagrams to the room is added here.
    receive_time: Option<Duration>,
}

impl Conference {
    fn new(config: RoomConfig, streams: Vec<Stream>) -> Self {
        let now = origin();
        Conference {
            room: Room::new(config, now).unwrap(),
            streams,
            senders: Vec::new(),
            observers: Vec::new(),
            now,
            frame: 0,
            rng: ChaCha8Rng::seed_from_u64(7),
            inbox: Vec::new(),
            receive_time: None,
        }
    }

    fn config(codec: Codec) -> LegConfig {
        LegConfig {
            codec,
            audio_level_extension: Some(LEVEL_ID),
            ..LegConfig::default()
        }
    }

    /// Joins a participant playing `stream` from frame `offset`; returns its index.
    fn join(&mut self, codec: Codec, stream: usize, offset: usize) -> usize {
        let leg = MediaLeg::new(Self::config(codec), None, &mut self.rng, self.now).unwrap();
        let id = self
            .room
            .join(ParticipantConfig::new(leg), self.now)
            .unwrap();
        let n = self.senders.len() as u32;
        self.senders.push(Sender {
            id,
            stream,
            offset,
            ssrc: 0x1000 + n,
            seq: (n * 7919) as u16,
            ts: n.wrapping_mul(104_729),
        });
        self.senders.len() - 1
    }

    /// Decodes what the room sends to sender `i` from now on.
    fn observe(&mut self, i: usize, codec: Codec) {
        let leg = MediaLeg::new(Self::config(codec), None, &mut self.rng, self.now).unwrap();
        self.observers.push(Observer {
            id: self.senders[i].id,
            leg,
            heard: Vec::new(),
        });
    }

    fn step(&mut self) {
        let now = self.now;
        let mut buf = vec![0u8; 1500];
        let mut receiving = Duration::ZERO;
        for s in &mut self.senders {
            let stream = &self.streams[s.stream];
            let k = (self.frame + s.offset) % stream.packets.len();
            let frame_ticks = stream.pcm.len() / stream.packets.len();
            let codec_ticks = if stream.payload_type == PayloadType::PCMU {
                frame_ticks as u32 / 6
            } else {
                frame_ticks as u32
            };
            let ts = s.ts;
            s.ts = s.ts.wrapping_add(codec_ticks);
            let Some((payload, level)) = &stream.packets[k] else {
                continue;
            };
            let byte;
            let ext;
            let extensions: &[RtpExtension<'_>] = match level {
                Some(l) => {
                    byte = [l.to_byte()];
                    ext = [RtpExtension {
                        id: LEVEL_ID,
                        data: &byte,
                    }];
                    &ext
                }
                None => &[],
            };
            let n = RtpPacketBuilder::new(stream.payload_type, s.seq, ts, Ssrc(s.ssrc))
                .extensions(extensions)
                .payload(payload)
                .write(&mut buf)
                .unwrap();
            s.seq = s.seq.wrapping_add(1);
            let started = self.receive_time.map(|_| wall_clock());
            self.room.handle_datagram(s.id, &buf[..n], now).unwrap();
            if let Some(t) = started {
                receiving += wall_clock().saturating_duration_since(t);
            }
        }
        if let Some(r) = self.receive_time.as_mut() {
            *r += receiving;
        }
        let observed: Vec<ParticipantId> = self.observers.iter().map(|o| o.id).collect();
        let inbox = &mut self.inbox;
        inbox.clear();
        self.room.tick(now, &mut |id, p: &[u8]| {
            if observed.contains(&id) {
                inbox.push((id, p.to_vec()));
            }
        });
        let mut frame = vec![0.0f32; FRAME];
        for o in &mut self.observers {
            for (_, p) in self.inbox.iter().filter(|(id, _)| *id == o.id) {
                o.leg.handle_datagram(p, now).unwrap();
            }
            o.leg.poll_frame(now, &mut frame).unwrap();
            o.heard.extend_from_slice(&frame);
        }
        self.now += STEP;
        self.frame += 1;
    }

    fn id(&self, i: usize) -> ParticipantId {
        self.senders[i].id
    }
}

fn opus() -> Codec {
    Codec::Opus(Default::default())
}

/// A tone at `freq` and `amp` with a 40 ms pause every 400 ms (a talker's rhythm: the
/// sender's VAD keeps a low noise floor), starting with the pause.
fn talker(freq: f32, amp: f32, frames: usize) -> Stream {
    encode(opus(), true, frames, move |k, f| {
        if k % 20 >= 2 {
            tone_into(freq, amp, k as u64, f);
        }
    })
}

/// The shipped speech at `gain`, from `offset` frames in.
fn speech_stream(gain: f32, offset: usize, frames: usize) -> Stream {
    let speech = speech_48k();
    encode(opus(), true, frames, move |k, f| {
        let at = ((k + offset) * FRAME) % (speech.len() - FRAME);
        for (x, y) in f.iter_mut().zip(&speech[at..at + FRAME]) {
            *x = y * gain;
        }
    })
}

const LOUD: [f32; 3] = [440.0, 660.0, 880.0];

/// Three loud talkers (streams 0..3), quiet speech (streams 3..7), and a quiet G.711 tone
/// without levels (stream 7).
fn streams(frames: usize) -> Vec<Stream> {
    let mut v: Vec<Stream> = LOUD.iter().map(|&f| talker(f, 0.3, frames)).collect();
    for i in 0..4 {
        v.push(speech_stream(0.05, 37 * i, frames));
    }
    v.push(encode(Codec::Pcmu, false, frames, |k, f| {
        if k % 20 >= 2 {
            tone_into(300.0, 0.01, k as u64, f);
        }
    }));
    v
}

/// The mean over 200 ms windows of `x` (8 kHz) of the best normalised correlation with
/// `y` within 60 ms of their overall delay (found over 0..300 ms).
fn windowed_correlation(x: &[f32], y: &[f32]) -> f64 {
    const WINDOW: usize = 1600;
    const NEAR: usize = 480;
    let max_lag = 2400;
    let (_, delay) = room_support::best_correlation(x, y, 0, y.len() - max_lag, max_lag);
    let mut sum = 0.0;
    let mut n = 0;
    for start in (0..y.len() - max_lag - NEAR - WINDOW).step_by(WINDOW) {
        let lags = delay.saturating_sub(NEAR)..delay + NEAR;
        let best = lags
            .map(|lag| room_support::correlation_at(x, y, start, WINDOW, lag))
            .fold(f64::MIN, f64::max);
        sum += best;
        n += 1;
    }
    sum / f64::from(n)
}

#[test]
fn a_room_of_200_talkers_decodes_only_its_speakers_and_challengers() {
    let frames = 150;
    // Two frames more than played: the loud talkers start two frames in.
    let mut c = Conference::new(RoomConfig::default(), streams(frames + 2));
    // The loud talkers start past their first pause, so they are the first talkers.
    let loud: Vec<usize> = (0..3).map(|s| c.join(opus(), s, 2)).collect();
    let quiet: Vec<usize> = (0..197).map(|i| c.join(opus(), 3 + i % 4, i)).collect();
    let phones: Vec<usize> = (0..2).map(|_| c.join(Codec::Pcmu, 7, 0)).collect();
    c.observe(quiet[10], opus());
    let challengers = RoomConfig::default().challengers as u32;
    for k in 0..frames {
        c.step();
        let s = c.room.stats();
        // The header-level participants decoded: speakers and challengers only; the phones
        // send no levels and are decoded every tick.
        let header_decoded = s.frames_decoded_last_tick - phones.len() as u32;
        assert!(header_decoded <= 3 + challengers, "tick {k}: {s:?}");
        assert_eq!(s.frames_decoded_last_tick + s.frames_skipped_last_tick, 202);
        if k >= 1 {
            let mut speakers: Vec<_> = c.room.speakers().collect();
            speakers.sort_unstable();
            let expected: Vec<_> = loud.iter().map(|&i| c.id(i)).collect();
            assert_eq!(speakers, expected, "tick {k}");
        }
    }
    let s = c.room.stats();
    println!("{s:?}");
    // Counters agree with the legs', and quiet talkers were mostly skipped.
    let mut decoded_by_legs = 0;
    for i in 0..c.senders.len() {
        let p = c.room.participant_stats(c.id(i)).unwrap();
        decoded_by_legs += p.leg.frames_decoded;
        assert_eq!(p.leg.frames_decoded + p.leg.frames_skipped, frames as u64);
    }
    assert_eq!(decoded_by_legs, s.frames_decoded_total);
    assert!(s.frames_skipped_total > 190 * frames as u64, "{s:?}");
    for &i in &phones {
        let p = c.room.participant_stats(c.id(i)).unwrap();
        assert!(!p.header_levels);
        assert_eq!(
            p.leg.frames_decoded, frames as u64,
            "a phone is always decoded"
        );
    }
    for &i in &loud {
        let p = c.room.participant_stats(c.id(i)).unwrap();
        assert!(p.header_levels && p.speaker && p.decoded);
        assert!(p.frames_mixed >= frames as u64 - 1);
    }
    // A skipped participant's jitter buffer played its packets all the same.
    let q = c.room.participant_stats(c.id(quiet[100])).unwrap();
    assert!(q.leg.frames_decoded < 10, "{:?}", q.leg.frames_decoded);
    let jb = q.leg.jitter_buffer;
    assert!(jb.played + 5 >= q.leg.rtp_packets_received, "{jb:?}");
    assert_eq!(jb.late + jb.decode_errors, 0);
    // A listener hears the three loud talkers: each is found in what it hears, window by
    // window, near its own delay (the jitter buffers adapt and stretch separately).
    let heard = decimate(&c.observers[0].heard[50 * FRAME..], 6);
    for s in 0..LOUD.len() {
        // Room frame k carried the talker's frame k + 2.
        let x = decimate(&c.streams[s].pcm[(50 + 2) * FRAME..(frames + 2) * FRAME], 6);
        let corr = windowed_correlation(&x, &heard);
        println!("talker {s}: mean windowed correlation {corr:.3}");
        // One of three equally loud tones: about 1 / sqrt(3) of what is heard.
        assert!(corr > 0.45, "talker {s}: {corr}");
    }
    let heard = &c.observers[0].heard;
    let start = 50 * FRAME;
    for f in LOUD {
        let a = tone_amplitude(&heard[start..], f);
        assert!(a > 0.05, "{f} Hz at {a}");
    }
}

#[test]
fn a_louder_newcomer_is_decoded_before_it_is_mixed_and_takes_a_place_after_the_hold() {
    let frames = 250;
    let mut streams: Vec<Stream> = [(440.0, 0.1), (660.0, 0.09), (880.0, 0.08)]
        .into_iter()
        .map(|(f, a)| talker(f, a, frames))
        .collect();
    for i in 0..4 {
        streams.push(speech_stream(0.05, 37 * i, frames));
    }
    // The newcomer: quiet speech until frame 100, a pause, then a loud tone at 1100 Hz from
    // frame 102.
    let quiet = speech_48k();
    streams.push(encode(opus(), true, frames, move |k, f| {
        if k < 100 {
            let at = k * FRAME;
            for (x, y) in f.iter_mut().zip(&quiet[at..at + FRAME]) {
                *x = y * 0.02;
            }
        } else if k % 20 >= 2 {
            tone_into(1100.0, 0.5, k as u64, f);
        }
    }));
    let mut c = Conference::new(RoomConfig::default(), streams);
    // The speakers start past their first pause, so they are the first talkers.
    for s in 0..3 {
        c.join(opus(), s, 2);
    }
    for i in 0..8 {
        c.join(opus(), 3 + i % 4, i);
    }
    let newcomer = c.join(opus(), 7, 0);
    c.observe(4, opus());
    let id = c.id(newcomer);
    let (mut decoded_at, mut mixed_at) = (None, None);
    for k in 0..frames {
        c.step();
        let p = c.room.participant_stats(id).unwrap();
        if k < 102 {
            assert!(!p.decoded, "decoded at {k} while quieter than everyone");
        }
        if p.decoded && decoded_at.is_none() {
            decoded_at = Some(k);
        }
        if let Some(d) = decoded_at {
            assert!(p.decoded, "decoded from {d}, not at {k}");
        }
        if p.speaker && mixed_at.is_none() {
            mixed_at = Some(k);
        }
        let s = c.room.stats();
        assert!(s.frames_decoded_last_tick <= 5, "tick {k}: {s:?}");
    }
    let (d, m) = (decoded_at.unwrap(), mixed_at.unwrap());
    println!("the newcomer got loud at 102, was decoded from {d}, mixed from {m}");
    // Its header level says it at once; it is decoded while it beats the weakest speaker
    // for the hold (400 ms, 20 frames), then takes the place.
    assert!((102..=103).contains(&d), "{d}");
    assert!(m > d);
    assert!((121..=126).contains(&m), "{m}");
    let heard = &c.observers[0].heard;
    assert!(tone_amplitude(&heard[..100 * FRAME], 1100.0) < 0.002);
    let after = tone_amplitude(&heard[(m + 10) * FRAME..], 1100.0);
    assert!(after > 0.2, "{after}");
}

/// A recording sink that keeps nothing.
struct NullSink;

impl confer_conference::room::RecordSink for NullSink {
    fn mix(&mut self, _: &[f32]) {}
    fn track(&mut self, _: ParticipantId, _: &[f32]) {}
}

#[test]
fn everyone_is_decoded_when_header_levels_are_off_or_tracks_are_recorded() {
    let frames = 40;
    let mut c = Conference::new(
        RoomConfig {
            header_levels: false,
            ..RoomConfig::default()
        },
        streams(frames),
    );
    for i in 0..12 {
        c.join(opus(), i % 7, i);
    }
    for _ in 0..10 {
        c.step();
        assert_eq!(c.room.stats().frames_decoded_last_tick, 12);
    }
    let mut c = Conference::new(RoomConfig::default(), streams(frames));
    for i in 0..12 {
        c.join(opus(), i % 7, i);
    }
    c.run_checked(10, |s| s.frames_decoded_last_tick <= 5);
    c.room.start_recording(Box::new(NullSink), true).unwrap();
    c.run_checked(10, |s| s.frames_decoded_last_tick == 12);
    c.room.stop_recording();
    c.room.start_recording(Box::new(NullSink), false).unwrap();
    c.run_checked(10, |s| s.frames_decoded_last_tick <= 5);
}

impl Conference {
    fn run_checked(
        &mut self,
        frames: usize,
        ok: impl Fn(&confer_conference::room::RoomStats) -> bool,
    ) {
        for k in 0..frames {
            self.step();
            let s = self.room.stats();
            assert!(ok(&s), "tick {k}: {s:?}");
        }
    }
}

/// Measures (prints, never asserts) the tick of a room where 700 browsers all send
/// speech, with header levels and with everyone decoded. Meant for
/// `cargo test --release -p confer-conference --test room_header_levels -- --nocapture`.
#[test]
fn seven_hundred_talkers_tick_within_a_frame_when_only_speakers_are_decoded() {
    let frames = 60;
    let measure = |header_levels: bool, ticks: usize| {
        let mut c = Conference::new(
            RoomConfig {
                header_levels,
                ..RoomConfig::default()
            },
            streams(frames),
        );
        for s in 0..3 {
            c.join(opus(), s, 2);
        }
        for i in 0..697 {
            c.join(opus(), 3 + i % 4, i);
        }
        c.room.set_stage_clock(Some(wall_clock));
        c.observe(10, opus());
        for _ in 0..10 {
            c.step();
        }
        let mut ticks_us = Vec::new();
        let mut sum = confer_engine::leg::StageTimes::default();
        c.receive_time = Some(Duration::ZERO);
        for _ in 0..ticks {
            c.step();
            let t = c.room.last_tick_stages();
            ticks_us.push(t.total().as_secs_f64() * 1e6);
            sum.jitter += t.jitter;
            sum.decode += t.decode;
            sum.mix += t.mix;
            sum.encode += t.encode;
            sum.send += t.send;
            if header_levels {
                assert!(t.frames_decoded <= 5, "{t:?}");
            } else {
                assert_eq!(t.frames_decoded, 700);
            }
        }
        ticks_us.sort_by(f64::total_cmp);
        let n = ticks_us.len();
        let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        println!(
            "700 talkers, header levels {header_levels}: tick median {:.0} us, max {:.0} us \
             over {n} ticks; mean per tick: jitter {:.0} us, decode {:.0} us, mix {:.0} us, \
             encode {:.0} us, send {:.0} us; decoded {} skipped {} per tick; receiving the \
             700 datagrams (before the tick) {:.0} us",
            ticks_us[n / 2],
            ticks_us[n - 1],
            per(sum.jitter),
            per(sum.decode),
            per(sum.mix),
            per(sum.encode),
            per(sum.send),
            c.room.stats().frames_decoded_last_tick,
            c.room.stats().frames_skipped_last_tick,
            per(c.receive_time.unwrap_or_default()),
        );
    };
    measure(true, 40);
    measure(false, 5);
}

/// The wall clock, for the measurement above only (printed, never asserted).
fn wall_clock() -> Instant {
    #[allow(clippy::disallowed_methods)]
    Instant::now()
}
