//! Room test harness: a [`Room`] and, for each participant, the client end of its RTP
//! session, on virtual time with datagrams looped back directly (no sockets, no clock).
//!
//! Each participant is a pair of media legs: the room-side leg joins the room, the
//! client-side leg stays here, sends what a test's source produces and decodes what the
//! room sends back. Every step is one frame: clients send, the room takes their datagrams
//! at once, the room ticks, its packets reach the clients at once, the clients decode one
//! frame each. Deterministic: the legs' RNG is seeded, time only moves by `step`.
//! It is not a network simulator: there is no loss, delay or jitter here.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use confer_codecs::resample::Resampler;
use confer_conference::room::{ParticipantConfig, ParticipantId, Room, RoomConfig};
use confer_engine::leg::{Codec, LegConfig, MediaLeg};
use confer_engine::rtp::RtpPacket;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub const RATE: usize = 48_000;
pub const FRAME: usize = 960;
pub const FRAME_DURATION: Duration = Duration::from_millis(20);

/// What a client sends in a frame: `Some` fills the frame and sends it, `None` sends nothing.
pub type Source = Box<dyn FnMut(u64, &mut [f32]) -> bool>;

pub struct Client {
    pub id: ParticipantId,
    pub leg: MediaLeg,
    pub source: Source,
    /// Every decoded sample, one frame per step.
    pub heard: Vec<f32>,
    /// RTP packets received (RTCP not counted), and their payloads of the last step.
    pub rtp_packets: u64,
    pub last_payloads: Vec<Vec<u8>>,
    /// Everything this client sent, sample-aligned with `heard` (zeros when silent).
    pub sent: Vec<f32>,
}

pub struct Harness {
    pub room: Room,
    pub clients: Vec<Client>,
    pub now: Instant,
    pub start: Instant,
    pub frame_index: u64,
    rng: ChaCha8Rng,
    inbox: Vec<(ParticipantId, Vec<u8>)>,
}

pub fn origin() -> Instant {
    // An arbitrary origin; only differences matter.
    #[allow(clippy::disallowed_methods)]
    Instant::now()
}

impl Harness {
    pub fn new(config: RoomConfig) -> Self {
        let start = origin();
        Harness {
            room: Room::new(config, start).unwrap(),
            clients: Vec::new(),
            now: start,
            start,
            frame_index: 0,
            rng: ChaCha8Rng::seed_from_u64(7),
            inbox: Vec::new(),
        }
    }

    pub fn leg_pair(&mut self, codec: Codec) -> (MediaLeg, MediaLeg) {
        let config = LegConfig {
            codec,
            ..LegConfig::default()
        };
        let room_side = MediaLeg::new(config.clone(), None, &mut self.rng, self.now).unwrap();
        let client = MediaLeg::new(config, None, &mut self.rng, self.now).unwrap();
        (room_side, client)
    }

    /// Joins a participant; returns its index in `clients`.
    pub fn join_with(
        &mut self,
        codec: Codec,
        source: Source,
        configure: impl FnOnce(&mut ParticipantConfig),
    ) -> usize {
        let (room_side, client) = self.leg_pair(codec);
        let mut pc = ParticipantConfig::new(room_side);
        configure(&mut pc);
        let id = self.room.join(pc, self.now).unwrap();
        self.clients.push(Client {
            id,
            leg: client,
            source,
            heard: Vec::new(),
            rtp_packets: 0,
            last_payloads: Vec::new(),
            sent: Vec::new(),
        });
        self.clients.len() - 1
    }

    pub fn join(&mut self, codec: Codec, source: Source) -> usize {
        self.join_with(codec, source, |_| {})
    }

    /// One frame: clients send, the room ticks, clients receive and decode.
    pub fn step(&mut self) {
        let now = self.now;
        let mut frame = vec![0.0f32; FRAME];
        let mut out = vec![0u8; 1500];
        for c in &mut self.clients {
            frame.fill(0.0);
            let send = (c.source)(self.frame_index, &mut frame);
            c.sent.extend_from_slice(&frame);
            if !send {
                c.leg.skip_frame();
                continue;
            }
            let n = c.leg.send_frame(&frame, now, &mut out).unwrap();
            if n > 0 && self.room.handle_datagram(c.id, &out[..n], now).is_err() {
                // A kicked participant's packets are refused; nothing else is expected.
            }
        }
        let inbox = &mut self.inbox;
        inbox.clear();
        self.room
            .tick(now, &mut |id, p: &[u8]| inbox.push((id, p.to_vec())));
        for c in &mut self.clients {
            c.last_payloads.clear();
        }
        for (id, p) in self.inbox.drain(..) {
            let Some(c) = self.clients.iter_mut().find(|c| c.id == id) else {
                panic!("a packet for {id}, who is not a client");
            };
            let is_rtcp = p.len() > 1 && (192..=223).contains(&p[1]);
            if !is_rtcp {
                c.rtp_packets += 1;
                c.last_payloads
                    .push(RtpPacket::parse(&p).unwrap().payload().to_vec());
            }
            c.leg.handle_datagram(&p, now).unwrap();
        }
        for c in &mut self.clients {
            c.leg.poll_frame(now, &mut frame).unwrap();
            c.heard.extend_from_slice(&frame);
        }
        self.now += FRAME_DURATION;
        self.frame_index += 1;
    }

    pub fn run(&mut self, frames: u64) {
        for _ in 0..frames {
            self.step();
        }
    }
}

/// A tone of `freq` Hz at `amp`, continuous across frames, with a `gap_frames` pause
/// every `period_frames` starting at `phase` frames (speech-like: the VAD's noise floor
/// stays low).
pub fn gapped_tone(freq: f32, amp: f32, period_frames: u64, gap_frames: u64, phase: u64) -> Source {
    Box::new(move |i, frame| {
        if (i + phase) % period_frames < gap_frames {
            return true;
        }
        tone_into(freq, amp, i, frame);
        true
    })
}

pub fn tone_into(freq: f32, amp: f32, frame_index: u64, frame: &mut [f32]) {
    let base = frame_index as f64 * FRAME as f64;
    for (k, x) in frame.iter_mut().enumerate() {
        let t = (base + k as f64) / RATE as f64;
        *x = amp * (2.0 * std::f64::consts::PI * f64::from(freq) * t).sin() as f32;
    }
}

/// Sends nothing.
pub fn silent() -> Source {
    Box::new(|_, _| false)
}

/// Sends digital silence.
pub fn zeros() -> Source {
    Box::new(|_, _| true)
}

/// The shipped speech sample at 48 kHz.
pub fn speech_48k() -> Vec<f32> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../testdata/audio/speech-16k.wav"
    );
    let mut r = hound::WavReader::open(path).unwrap();
    assert_eq!(r.spec().sample_rate, 16000);
    let pcm: Vec<f32> = r
        .samples::<i16>()
        .map(|s| f32::from(s.unwrap()) / 32768.0)
        .collect();
    let mut rs = Resampler::new(16000, 48000, 20).unwrap();
    let mut out = Vec::with_capacity(pcm.len() * 3);
    let mut buf = [0f32; FRAME];
    for chunk in pcm.chunks_exact(320) {
        let n = rs.process(chunk, &mut buf).unwrap();
        out.extend_from_slice(&buf[..n]);
    }
    out
}

/// Plays `speech[offset..]` at `gain`, one frame per step.
pub fn speech_from(speech: &[f32], offset: usize, gain: f32) -> Source {
    let s = speech[offset..].to_vec();
    Box::new(move |i, frame| {
        let at = i as usize * FRAME;
        if let Some(src) = s.get(at..at + FRAME) {
            for (x, y) in frame.iter_mut().zip(src) {
                *x = y * gain;
            }
        }
        true
    })
}

/// The power of `freq` in `x` (Goertzel), normalised so a sine of amplitude `a` gives
/// about `a`.
pub fn tone_amplitude(x: &[f32], freq: f32) -> f64 {
    let w = 2.0 * std::f64::consts::PI * f64::from(freq) / RATE as f64;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for &v in x {
        let s0 = f64::from(v) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    2.0 * power.sqrt() / x.len() as f64
}

/// Averages blocks of `factor` samples (a crude low-pass and decimation, enough to align
/// speech).
pub fn decimate(x: &[f32], factor: usize) -> Vec<f32> {
    x.chunks_exact(factor)
        .map(|c| c.iter().sum::<f32>() / factor as f32)
        .collect()
}

/// Normalised correlation of `y[lag..]` with `x[..]` over `len` samples from `start`.
pub fn correlation_at(x: &[f32], y: &[f32], start: usize, len: usize, lag: usize) -> f64 {
    let (mut xy, mut xx, mut yy) = (0.0f64, 0.0f64, 0.0f64);
    for i in start..start + len {
        let a = f64::from(x[i]);
        let b = f64::from(y[i + lag]);
        xy += a * b;
        xx += a * a;
        yy += b * b;
    }
    if xx == 0.0 || yy == 0.0 {
        return 0.0;
    }
    xy / (xx * yy).sqrt()
}

/// The best normalised correlation of `y` with `x` delayed by 0..`max_lag` samples, and
/// that lag.
pub fn best_correlation(
    x: &[f32],
    y: &[f32],
    start: usize,
    len: usize,
    max_lag: usize,
) -> (f64, usize) {
    (0..max_lag)
        .map(|lag| (correlation_at(x, y, start, len, lag), lag))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .unwrap()
}
