//! Shared harness of the media-leg behaviour tests: two legs back to back over the simulated
//! network on virtual time, real speech, and an alignment measure of the decoded audio.
//!
//! Why: a leg is only right if what comes out of the far end *sounds like* what went in, so
//! these tests compare audio, not packet counts. [`Pair`] steps a sender leg and a receiver
//! leg on one virtual frame clock through two seeded [`NetSim`] links (A to B carries media
//! and RTCP, B to A carries B's RTCP). [`aligned_correlation`] measures how well the
//! receiver's output matches the input once the playout delay is found.
//!
//! Deterministic: the speech file is committed, libopus is deterministic, the links and leg
//! RNGs are seeded, and time is an origin `Instant` plus frame periods (no clock is read
//! after the origin). What it is not: a model of the engine's threading, or of real sockets
//! (the UDP test does that).
#![allow(dead_code)]

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use confer_codecs::resample::Resampler;
use confer_engine::leg::{FrameInfo, LegConfig, MediaLeg};
use confer_engine::netsim::{LinkConfig, NetSim};
use confer_engine::srtp::SrtpSession;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// Engine rate and frame of every test.
pub const RATE: usize = 48_000;
pub const FRAME_MS: u64 = 20;
pub const FRAME: usize = RATE / 1000 * FRAME_MS as usize;

/// The origin of virtual time. Only differences from it matter.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // The one clock read of these tests: an arbitrary origin, never compared with real time.
    #[allow(clippy::disallowed_methods)]
    *EPOCH.get_or_init(Instant::now)
}

/// The 16 kHz speech sample upsampled to 48 kHz with the engine's resampler (cached).
pub fn speech_48k() -> &'static [f32] {
    static SPEECH: OnceLock<Vec<f32>> = OnceLock::new();
    SPEECH.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/audio/speech-16k.wav"
        );
        let mut reader = hound::WavReader::open(path).expect("speech sample is committed");
        let pcm: Vec<f32> = reader
            .samples::<i16>()
            .map(|s| f32::from(s.expect("valid wav")) / 32768.0)
            .collect();
        resample_all(&pcm, 16_000, 48_000)
    })
}

/// `seconds` of speech starting `offset` seconds into the sample, at 48 kHz, a whole number
/// of frames long.
pub fn speech(offset: f64, seconds: f64) -> Vec<f32> {
    let s = speech_48k();
    let start = (offset * RATE as f64) as usize;
    let len = ((seconds * RATE as f64) as usize / FRAME) * FRAME;
    s[start..start + len].to_vec()
}

/// Resamples a whole signal in 20 ms frames (zero-padded to whole frames).
pub fn resample_all(x: &[f32], from: u32, to: u32) -> Vec<f32> {
    let mut r = Resampler::new(from, to, 20).expect("supported rates");
    let n = r.input_len();
    let mut out = vec![0.0; r.output_len()];
    let mut y = Vec::with_capacity(x.len() * to as usize / from as usize + out.len());
    for chunk in x.chunks(n) {
        let mut frame = chunk.to_vec();
        frame.resize(n, 0.0);
        let m = r.process(&frame, &mut out).expect("whole frames");
        y.extend_from_slice(&out[..m]);
    }
    y
}

/// Builds a leg with a seeded RNG, starting at `now`.
pub fn leg(config: LegConfig, srtp: Option<SrtpSession>, seed: u64, now: Instant) -> MediaLeg {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    MediaLeg::new(config, srtp, &mut rng, now).expect("valid leg config")
}

/// What happened to a datagram the harness delivered to B, for tests that tamper.
pub type Tap<'a> = dyn FnMut(&[u8], Instant, &mut MediaLeg) + 'a;

/// Sender A and receiver B over two seeded links on one virtual frame clock.
pub struct Pair {
    pub a: MediaLeg,
    pub b: MediaLeg,
    pub ab: NetSim<Vec<u8>>,
    pub ba: NetSim<Vec<u8>>,
    pub now: Instant,
    /// Everything B played, one frame per tick.
    pub out: Vec<f32>,
    /// B's frame infos, one per tick.
    pub frames: Vec<FrameInfo>,
    /// A's packets sent (RTP only).
    pub sent: u64,
    packet: Vec<u8>,
}

impl Pair {
    pub fn new(a: MediaLeg, b: MediaLeg, link: LinkConfig, seed: u64, now: Instant) -> Self {
        Pair {
            a,
            b,
            ab: NetSim::new(link.clone(), seed, now).expect("valid link"),
            ba: NetSim::new(link, seed + 1000, now).expect("valid link"),
            now,
            out: Vec::new(),
            frames: Vec::new(),
            sent: 0,
            packet: vec![0; 2048],
        }
    }

    /// One frame tick: deliver what has arrived, B plays a frame, A sends `input` (or lets
    /// the frame pass), both send RTCP when due. Every datagram delivered to B also goes to
    /// `tap` afterwards.
    pub fn step_tapped(&mut self, input: Option<&[f32]>, tap: &mut Tap<'_>) {
        let now = self.now;
        while let Some(d) = self.ab.poll_deliver(now) {
            // Rejections are counted by the leg; tests assert on its counters.
            let _ = self.b.handle_datagram(&d.payload, d.arrival);
            tap(&d.payload, d.arrival, &mut self.b);
        }
        while let Some(d) = self.ba.poll_deliver(now) {
            let _ = self.a.handle_datagram(&d.payload, d.arrival);
        }
        let mut frame = [0.0f32; FRAME];
        let info = self.b.poll_frame(now, &mut frame).expect("frame size");
        self.out.extend_from_slice(&frame);
        self.frames.push(info);
        let mut sink = [0.0f32; FRAME];
        self.a.poll_frame(now, &mut sink).expect("frame size");
        match input {
            Some(pcm) => {
                let n = self.a.send_frame(pcm, now, &mut self.packet).expect("send");
                if n > 0 {
                    // 28 bytes of IPv4/UDP headers for the link's accounting.
                    self.ab.send(self.packet[..n].to_vec(), n + 28, now);
                    self.sent += 1;
                }
            }
            None => self.a.skip_frame(),
        }
        if let Some(n) = self.a.poll_rtcp(now, &mut self.packet).expect("rtcp") {
            self.ab.send(self.packet[..n].to_vec(), n + 28, now);
        }
        if let Some(n) = self.b.poll_rtcp(now, &mut self.packet).expect("rtcp") {
            self.ba.send(self.packet[..n].to_vec(), n + 28, now);
        }
        self.now += Duration::from_millis(FRAME_MS);
    }

    pub fn step(&mut self, input: Option<&[f32]>) {
        self.step_tapped(input, &mut |_, _, _| {});
    }

    /// Sends all of `signal` (whole frames), one frame per tick.
    pub fn send_all(&mut self, signal: &[f32]) {
        for frame in signal.chunks_exact(FRAME) {
            self.step(Some(frame));
        }
    }

    /// Ticks `duration` with nothing to send.
    pub fn idle(&mut self, duration: Duration) {
        let ticks = duration.as_millis() as u64 / FRAME_MS;
        for _ in 0..ticks {
            self.step(None);
        }
    }
}

/// How well a received signal matches a reference after alignment.
#[derive(Debug, Clone)]
pub struct Alignment {
    /// Mean over speech windows of the best normalised correlation.
    pub mean: f64,
    /// The lowest window.
    pub min: f64,
    /// Speech windows measured.
    pub windows: usize,
    /// Delay of the output behind the reference found by the envelope search, in ms.
    pub delay_ms: f64,
}

/// Compares `output` with `reference` (both 48 kHz) in the telephone band: both are
/// decimated to 8 kHz; the overall delay (0..=1 s) is found by cross-correlating 1 ms energy
/// envelopes; then every 200 ms speech window of the reference (RMS above 30 % of the whole
/// signal's) gets its own best lag within +-120 ms of that delay, because an adaptive
/// jitter buffer moves the delay during the call (time-stretching, holds), and its
/// normalised correlation at that lag is recorded.
pub fn aligned_correlation(reference: &[f32], output: &[f32]) -> Alignment {
    const SUB: usize = 8; // 1 ms at 8 kHz
    const WINDOW: usize = 1600; // 200 ms
    const SEARCH: isize = 960; // 120 ms
    let r = resample_all(reference, 48_000, 8000);
    let o = resample_all(output, 48_000, 8000);
    let env = |x: &[f32]| -> Vec<f64> {
        x.chunks(SUB)
            .map(|c| c.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt())
            .collect()
    };
    let (er, eo) = (env(&r), env(&o));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (mr, mo) = (mean(&er), mean(&eo));
    let mut best = (f64::MIN, 0usize);
    for lag in 0..=1000usize {
        let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
        for (i, x) in er.iter().enumerate() {
            let Some(y) = eo.get(i + lag) else { break };
            let (dx, dy) = (x - mr, y - mo);
            sxy += dx * dy;
            sxx += dx * dx;
            syy += dy * dy;
        }
        let c = sxy / (sxx * syy).sqrt().max(1e-12);
        if c > best.0 {
            best = (c, lag);
        }
    }
    let delay = (best.1 * SUB) as isize;

    let total_rms = (r.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>() / r.len() as f64).sqrt();
    let mut corrs = Vec::new();
    for start in (0..r.len().saturating_sub(WINDOW)).step_by(WINDOW) {
        let w = &r[start..start + WINDOW];
        let ww: f64 = w.iter().map(|v| f64::from(*v).powi(2)).sum();
        if (ww / WINDOW as f64).sqrt() < 0.3 * total_rms {
            continue;
        }
        let mut best = f64::MIN;
        for lag in (delay - SEARCH)..=(delay + SEARCH) {
            let s = start as isize + lag;
            if s < 0 || s as usize + WINDOW > o.len() {
                continue;
            }
            let seg = &o[s as usize..s as usize + WINDOW];
            let (mut sxy, mut syy) = (0.0f64, 0.0f64);
            for (x, y) in w.iter().zip(seg) {
                sxy += f64::from(*x) * f64::from(*y);
                syy += f64::from(*y) * f64::from(*y);
            }
            let c = sxy / (ww * syy).sqrt().max(1e-12);
            best = best.max(c);
        }
        corrs.push(best);
    }
    let n = corrs.len();
    Alignment {
        mean: corrs.iter().sum::<f64>() / n.max(1) as f64,
        min: corrs.iter().copied().fold(f64::INFINITY, f64::min),
        windows: n,
        delay_ms: delay as f64 / 8.0,
    }
}
