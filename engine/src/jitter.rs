//! The adaptive jitter buffer: one per received SSRC, the heart of the media path.
//!
//! # Drive contract (sans-IO)
//!
//! - [`JitterBuffer::push`] every received packet with its arrival `Instant` (as soon as it
//!   is read from the socket: the arrival time is the measurement).
//! - [`JitterBuffer::push_foreign`] for a packet that takes a sequence number of the
//!   stream but carries no audio (an RFC 4733 telephone-event), so it is not taken for a
//!   lost audio packet.
//! - [`JitterBuffer::pop`] once per output frame on the engine's frame clock (every
//!   `frame_ms`), with that tick's `Instant`. It always fills exactly one frame: decoded
//!   audio, audio recovered from FEC, concealment, or silence before the stream starts.
//!   [`JitterBuffer::pop_skip`] instead, for a frame nobody will hear: the same schedule
//!   and counters, no decoding, no audio (see below).
//! - Time never comes from the clock; the same inputs always give the same output.
//!
//! # How the delay adapts
//!
//! The buffer does not estimate "network jitter" and add it to a fixed base. It measures,
//! for every packet, its **slack**: how long before its first sample is played, under the
//! playout schedule in force, the packet arrived. It keeps the slack of the last `window`
//! packets and looks at a low quantile of it (`late_quantile`, 1% by default): what the
//! buffer could give up and still play all but that fraction on time.
//!
//! Output leaves in whole frames on the engine's frame clock, so two numbers steer it:
//! the **phase** (where the next packet starts inside an output frame: pure delay, since
//! a packet decoded at a tick plays `phase` later for no safety gain) and the **margin**
//! (the slack quantile minus the phase: how long before the tick that must decode it the
//! late-quantile packet arrives). The buffer:
//!
//! - shortens decoded audio (time-stretching by a pitch period or within silence,
//!   [`confer_codecs::timestretch`]; inaudible, unlike dropping a frame) by up to the
//!   phase, plus whole frames of margin beyond one frame;
//! - lengthens it the same way to the next frame boundary when the margin is negative
//!   (packets beyond the quantile are late): one frame more margin;
//! - when there is nothing to play (a delay spike, a freeze): conceals with the codec and
//!   *holds* the schedule, by exactly what the frame lacks, so the missing packet keeps its
//!   place and plays when it comes instead of being thrown away as late; the delay this
//!   adds is given back by shortening once the slack shows it is not needed;
//! - when a packet is missing while later ones are here: recovers it from the next
//!   packet's Opus FEC when it carries it, else conceals, and moves on;
//! - after a DTX pause (contiguous sequence, later timestamp): gives back the time it held
//!   while the sender was silent, so the stream resumes with the delay it had;
//! - when more than `max_excess_ms` of audio is waiting (a freeze released its backlog at
//!   once): drops the oldest packets down to `catch_up_to_ms` (counted as discarded) and
//!   starts measuring afresh.
//!
//! Slack samples are stored in a frame of reference that the buffer's own changes do not
//! move (each sample minus the delay the buffer had added when it was taken), so they stay
//! comparable while the schedule changes. Clock drift between sender and receiver moves
//! the slack steadily (at +-25 ms/s by half a millisecond per 20 ms packet); the buffer
//! estimates that skew from the least delayed packet of each second (least squares over
//! 30 s) and projects older samples to the present, so drift is followed by stretching
//! instead of reading as lateness or excess.
//!
//! The delay is thus the smallest that the measured network allows, never a fixed
//! prebuffer; `confer bench jitter` compares it with the hindsight oracle.
//!
//! # Deliberate differences from NetEQ
//!
//! - One statistic (the slack quantile) replaces NetEQ's inter-arrival histogram,
//!   filtered buffer level and target level: slack already contains the network delay, our
//!   own playout phase and the effect of every stretch, so there is nothing to reconcile.
//! - The frame clock is part of the model (phase and margin), so the buffer does not keep
//!   up to a frame of delay that buys no protection.
//! - An underrun holds the schedule instead of advancing the playout timestamp, so a delay
//!   spike costs delay (given back by acceleration) rather than lost packets.
//! - A sliding window (exact quantile over a sorted array) instead of exponential
//!   forgetting: old conditions leave the estimate completely once out of the window.
//!
//! # Advancing without decoding
//!
//! A conference room of hundreds decodes only the few participants it may mix; everyone
//! else's buffer must still follow its schedule, so that a participant who becomes a
//! speaker plays from the right place with the right delay, and so that its statistics
//! (played, late, lost, DTX) stay true. [`JitterBuffer::pop_skip`] advances exactly as
//! [`JitterBuffer::pop`] would, producing no audio: a packet counts the duration its header
//! declares ([`SkipDecoder::skip`]; for Opus the TOC byte's frame count and size), a gap
//! that the next packet's FEC would recover is recovered ([`SkipDecoder::skip_fec`]),
//! concealment is silence, and the buffer's decoded-but-unplayed audio is zeros. Steering
//! sees silence, where the time-stretcher would remove or insert as much as it is asked
//! to (its quiet splice): that is what the skip does, as a plain drop or insert of zeros,
//! without the pitch search. The schedule, the slack measurements, the settled sequence
//! numbers and every counter move as they would with decoding; only a stretch differs
//! (decoded speech may be stretched later or by a pitch period instead of at once), so
//! delays, and with them a borderline late packet, can differ slightly.
//!
//! The first `pop` after a `pop_skip` resets the decoder ([`SkipDecoder::reset`]): its
//! state belongs to a packet played long ago. The first frame after resuming therefore
//! plays what is left of the skipped audio (silence, less than a packet) and then the next
//! packet decoded from a fresh state, as the first packet of any stream is (for Opus:
//! without prediction history, so its first milliseconds may come out softer); the frames
//! after are decoded normally.
//!
//! # Stage timing
//!
//! [`JitterBuffer::pop_timed`] laps a [`StageTimer`] (a clock the caller injects: the
//! buffer never reads one) around every decoder call: decode, FEC and concealment go to
//! [`Stage::Decode`], the bookkeeping before each call to [`Stage::Jitter`]. The leg and
//! the room lap the same timer, so every interval of a tick is counted once.
//!
//! # Limits
//!
//! - The buffer assumes the RTP clock rate equals the decoder's output rate (true for Opus
//!   at 48 kHz and G.711; G.722's 8 kHz RTP clock for 16 kHz audio is not handled yet).
//! - Packets of one stream are assumed to have one duration; the phase is computed for the
//!   next packet only.
//! - Played-packet times (for measurement) are exact except for a packet whose start falls
//!   inside a stretched region, which is placed to within one pitch period.

use std::time::{Duration, Instant};

use confer_codecs::decoder::{AudioDecoder, CodecError};
use confer_codecs::g711::G711Decoder;
use confer_codecs::timestretch::TimeStretcher;

/// A stage of the media path, as [`StageTimer`] attributes time to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Jitter-buffer bookkeeping: pops, skips, time-stretching, and the per-participant
    /// loop around them.
    Jitter,
    /// Decoder calls (decode, FEC, concealment) and resampling to the engine rate.
    Decode,
    /// Noise suppression.
    Denoise,
    /// Level and voice-activity detection of decoded frames.
    Vad,
    /// Speaker selection, mixing, limiting.
    Mix,
    /// Encoding (shared group encodes and per-speaker encodes, with their resampling).
    Encode,
    /// Recording sinks.
    Record,
    /// Packetizing, protecting, RTCP, and the caller's send callback.
    Send,
}

/// Wall time per [`Stage`] over a span a [`StageTimer`] measured (a room tick), and what
/// was done in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StageTimes {
    /// [`Stage::Jitter`].
    pub jitter: Duration,
    /// [`Stage::Decode`].
    pub decode: Duration,
    /// [`Stage::Denoise`].
    pub denoise: Duration,
    /// [`Stage::Vad`].
    pub vad: Duration,
    /// [`Stage::Mix`].
    pub mix: Duration,
    /// [`Stage::Encode`].
    pub encode: Duration,
    /// [`Stage::Record`].
    pub record: Duration,
    /// [`Stage::Send`].
    pub send: Duration,
    /// Frames decoded (legs polled with decoding).
    pub frames_decoded: u32,
    /// Frames advanced without decoding.
    pub frames_skipped: u32,
    /// Decoder calls (decode, FEC, concealment).
    pub decoder_calls: u32,
    /// Encoder calls.
    pub encodes: u32,
}

impl StageTimes {
    /// The time of one stage.
    pub fn get(&self, stage: Stage) -> Duration {
        match stage {
            Stage::Jitter => self.jitter,
            Stage::Decode => self.decode,
            Stage::Denoise => self.denoise,
            Stage::Vad => self.vad,
            Stage::Mix => self.mix,
            Stage::Encode => self.encode,
            Stage::Record => self.record,
            Stage::Send => self.send,
        }
    }

    fn get_mut(&mut self, stage: Stage) -> &mut Duration {
        match stage {
            Stage::Jitter => &mut self.jitter,
            Stage::Decode => &mut self.decode,
            Stage::Denoise => &mut self.denoise,
            Stage::Vad => &mut self.vad,
            Stage::Mix => &mut self.mix,
            Stage::Encode => &mut self.encode,
            Stage::Record => &mut self.record,
            Stage::Send => &mut self.send,
        }
    }

    /// Every stage's time added up: the span from the timer's start to its last lap.
    pub fn total(&self) -> Duration {
        self.jitter
            + self.decode
            + self.denoise
            + self.vad
            + self.mix
            + self.encode
            + self.record
            + self.send
    }
}

/// A clock the owner of a sans-IO core injects for stage timing (the host passes
/// `Instant::now`; tests pass a fake).
pub type StageClock = fn() -> Instant;

/// Splits a span of work into [`Stage`]s with an injected clock, by laps: each
/// [`lap`](Self::lap) reads the clock once and gives the time since the previous lap (or
/// the start) to one stage. Every interval is thus counted exactly once, and the stages add
/// up to the span. The cores that take one ([`JitterBuffer::pop_timed`], the leg's and the
/// room's timed calls) lap it at their stage boundaries; they never read a clock otherwise.
#[derive(Debug, Clone)]
pub struct StageTimer {
    clock: StageClock,
    last: Instant,
    times: StageTimes,
}

impl StageTimer {
    /// Starts timing now (one clock read).
    pub fn start(clock: StageClock) -> Self {
        StageTimer {
            clock,
            last: clock(),
            times: StageTimes::default(),
        }
    }

    /// Gives the time since the previous lap to `stage`.
    pub fn lap(&mut self, stage: Stage) {
        let now = (self.clock)();
        *self.times.get_mut(stage) += now.saturating_duration_since(self.last);
        self.last = now;
    }

    /// What was measured so far.
    pub fn times(&self) -> &StageTimes {
        &self.times
    }

    /// The counts, for the owner to fill in.
    pub fn times_mut(&mut self) -> &mut StageTimes {
        &mut self.times
    }
}

/// A decoder the jitter buffer can run past without decoding ([`JitterBuffer::pop_skip`]).
pub trait SkipDecoder: AudioDecoder {
    /// Accounts for `payload` as [`AudioDecoder::decode`] would, without decoding it: the
    /// samples it holds (from its header), or the error `decode` gives a malformed one.
    fn skip(&mut self, payload: &[u8]) -> Result<usize, CodecError>;

    /// Answers as [`AudioDecoder::decode_fec`] would for a gap of `missing` samples before
    /// `next_payload`, without decoding: `Ok(Some(missing))` when its FEC would recover
    /// the gap.
    fn skip_fec(
        &mut self,
        next_payload: &[u8],
        missing: usize,
    ) -> Result<Option<usize>, CodecError>;

    /// Forgets the decoding state: the next decode starts afresh.
    fn reset(&mut self);
}

impl SkipDecoder for G711Decoder {
    fn skip(&mut self, payload: &[u8]) -> Result<usize, CodecError> {
        self.samples_in(payload)
    }

    fn skip_fec(&mut self, _: &[u8], _: usize) -> Result<Option<usize>, CodecError> {
        // G.711 has no FEC.
        Ok(None)
    }

    fn reset(&mut self) {
        // The concealment history is the only state.
        *self = G711Decoder::new(self.law());
    }
}

/// Settings of one jitter buffer. `Default` suits 20 ms Opus or G.711 voice.
#[derive(Debug, Clone, PartialEq)]
pub struct JitterConfig {
    /// RTP clock rate of the stream; must equal the decoder's output rate.
    pub clock_rate: u32,
    /// Output frame length in milliseconds (the engine's frame clock): 10 or 20.
    pub frame_ms: u32,
    /// Fraction of packets the buffer accepts to lose to lateness (the slack quantile).
    pub late_quantile: f64,
    /// Number of recent packets whose slack is kept.
    pub window: usize,
    /// Delay before the first packet plays (until measurements take over), in ms.
    pub initial_delay_ms: u32,
    /// Removable delay (see `stretch`) above which audio is accelerated, in ms.
    pub accelerate_above_ms: f64,
    /// Late-quantile margin below minus this is expanded, in ms.
    pub expand_below_ms: f64,
    /// Buffered audio above which whole packets are dropped (a backlog after a network
    /// freeze), in ms.
    pub max_excess_ms: f64,
    /// Buffered audio a catch-up leaves, in ms.
    pub catch_up_to_ms: f64,
    /// Longest an underrun holds the schedule for the missing packet, in ms; beyond it
    /// playout moves on and the packet, if it comes, is late.
    pub max_hold_ms: f64,
    /// Packets the buffer can hold (a power of two); more in flight are dropped.
    pub capacity: usize,
    /// Largest payload accepted, in bytes.
    pub max_payload: usize,
    /// A contiguous-sequence timestamp jump larger than this (ms) is a discontinuity (sender
    /// restart), not a DTX pause.
    pub max_dtx_gap_ms: u32,
}

impl Default for JitterConfig {
    fn default() -> Self {
        JitterConfig {
            clock_rate: 48_000,
            frame_ms: 20,
            late_quantile: 0.01,
            window: 750,
            initial_delay_ms: 40,
            accelerate_above_ms: 0.5,
            expand_below_ms: 0.0,
            max_excess_ms: 1000.0,
            catch_up_to_ms: 100.0,
            max_hold_ms: 1000.0,
            capacity: 512,
            max_payload: 1500,
            max_dtx_gap_ms: 10_000,
        }
    }
}

/// A packet as the jitter buffer needs it: sequence number and timestamp already extended
/// to 64 bits at the edge (`types::SeqExtender`, `types::TimestampExtender`).
#[derive(Debug, Clone, Copy)]
pub struct JbPacket<'a> {
    /// Extended RTP sequence number.
    pub seq: u64,
    /// Extended RTP timestamp (clock-rate units).
    pub timestamp: u64,
    /// The codec payload.
    pub payload: &'a [u8],
}

/// Why a packet was not taken in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JitterError {
    /// The configuration is unusable (caller misuse).
    #[error("bad jitter buffer configuration: {0}")]
    BadConfig(&'static str),
    /// The payload is larger than `max_payload` (peer misbehaved).
    #[error("payload of {0} bytes is larger than the configured maximum")]
    PayloadTooLarge(usize),
    /// A sequence number or timestamp of 2^62 or more: not what the edge's extenders
    /// produce (caller misuse).
    #[error("extended sequence number or timestamp out of range")]
    OutOfRange,
    /// The output frame passed to `pop` has the wrong length (caller misuse).
    #[error("output frame has {got} samples, the buffer produces {expected}")]
    BadFrame {
        /// Samples per frame the buffer was configured for.
        expected: usize,
        /// Samples passed.
        got: usize,
    },
}

/// What happened to a pushed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Stored for playout.
    Stored,
    /// Already stored or already played: counted once, dropped.
    Duplicate,
    /// Its playout time has passed: counted as a late loss, dropped.
    Late,
    /// Too far ahead of playout for the buffer's capacity: dropped.
    Overflow,
    /// A timestamp or sequence jump that the next packet has not confirmed yet (a stray
    /// or forged packet must not restart playout): dropped; the jump is taken when the
    /// packet after it continues it.
    Suspect,
}

/// What one `pop` produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PopInfo {
    /// Samples of the frame that came from decoded packets (incl. FEC).
    pub decoded: usize,
    /// Samples of the frame that the decoder concealed (loss or underrun).
    pub concealed: usize,
    /// True when the stream has not started yet (the frame is silence).
    pub idle: bool,
    /// Calls into the decoder (decode, FEC, concealment); 0 from [`JitterBuffer::pop_skip`].
    pub decoder_calls: u32,
}

/// Counters and current state, for stats, metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct JitterStats {
    /// Packets pushed (all outcomes).
    pub received: u64,
    /// Packets decoded and played (FEC recoveries not included).
    pub played: u64,
    /// Packets that arrived after their playout time.
    pub late: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Packets dropped because the buffer was full or the packet far ahead.
    pub overflow: u64,
    /// Packets dropped to catch up after a backlog (freeze, burst).
    pub discarded: u64,
    /// Lost frames recovered from FEC.
    pub fec_recovered: u64,
    /// Payloads the decoder rejected.
    pub decode_errors: u64,
    /// Calls into the decoder (decode, FEC, concealment); none while skipping.
    pub decoder_calls: u64,
    /// Frames advanced without decoding ([`JitterBuffer::pop_skip`]).
    pub skipped_frames: u64,
    /// Milliseconds of concealment (loss and underrun).
    pub concealed_ms: f64,
    /// Milliseconds removed by acceleration.
    pub accelerated_ms: f64,
    /// Milliseconds inserted by expansion.
    pub expanded_ms: f64,
    /// Stream restarts (SSRC change or timestamp discontinuity).
    pub resyncs: u64,
    /// Packets dropped as a jump their successor did not confirm.
    pub suspects: u64,
    /// Buffered audio the buffer steers towards (current plus the change it wants), in ms.
    pub target_delay_ms: f64,
    /// Audio buffered ahead of playout (decoded and in packets), in ms.
    pub current_delay_ms: f64,
    /// Estimated sender clock skew relative to ours, in ms per second.
    pub skew_ms_per_s: f64,
}

/// A played packet, for delay measurement: its sequence number and the time its first
/// sample was output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Played {
    /// Extended sequence number.
    pub seq: u64,
    /// When its first sample left the buffer.
    pub at: Instant,
}

struct Slot {
    used: bool,
    /// Takes a sequence number but carries no audio (an RFC 4733 telephone-event in the
    /// audio stream's sequence space).
    foreign: bool,
    seq: u64,
    ts: u64,
    len: usize,
    data: Box<[u8]>,
}

/// Exact low quantile over the last N slack samples, with skew projection.
struct SlackWindow {
    /// (arrival seconds since epoch, slack ms in the fixed frame, unprojected)
    ring: Vec<(f64, f64)>,
    head: usize,
    len: usize,
    /// Projected values (slack + skew * arrival), kept sorted.
    sorted: Vec<f64>,
    skew_used: f64,
}

impl SlackWindow {
    fn new(n: usize) -> Self {
        SlackWindow {
            ring: vec![(0.0, 0.0); n],
            head: 0,
            len: 0,
            sorted: Vec::with_capacity(n),
            skew_used: 0.0,
        }
    }

    fn projected(&self, t: f64, v: f64) -> f64 {
        // With a skew of s ms/s a packet arriving now reads s * (now - t) more than one that
        // arrived at t: storing v - s * t and adding s * now back in `quantile` projects
        // every sample to the present.
        v - self.skew_used * t
    }

    fn insert_sorted(&mut self, x: f64) {
        let i = self.sorted.partition_point(|&y| y < x);
        self.sorted.insert(i, x);
    }

    fn remove_sorted(&mut self, x: f64) {
        let i = self.sorted.partition_point(|&y| y < x);
        if i < self.sorted.len() {
            self.sorted.remove(i);
        }
    }

    fn push(&mut self, t: f64, v: f64) {
        let n = self.ring.len();
        if self.len == n {
            let (ot, ov) = self.ring[self.head];
            let old = self.projected(ot, ov);
            self.remove_sorted(old);
        } else {
            self.len += 1;
        }
        self.ring[self.head] = (t, v);
        self.head = (self.head + 1) % n;
        let x = self.projected(t, v);
        self.insert_sorted(x);
    }

    fn clear(&mut self) {
        self.len = 0;
        self.head = 0;
        self.sorted.clear();
    }

    fn set_skew(&mut self, skew: f64) {
        self.skew_used = skew;
        self.sorted.clear();
        let n = self.ring.len();
        for k in 0..self.len {
            let (t, v) = self.ring[(self.head + n - 1 - k) % n];
            let x = self.projected(t, v);
            self.sorted.push(x);
        }
        self.sorted.sort_by(f64::total_cmp);
    }

    /// The q-quantile of slack projected to time `now_s`, or None when empty.
    fn quantile(&self, q: f64, now_s: f64) -> Option<f64> {
        if self.sorted.is_empty() {
            return None;
        }
        let idx = ((self.sorted.len() as f64 - 1.0) * q).floor() as usize;
        let idx = idx.min(self.sorted.len() - 1);
        Some(self.sorted[idx] + self.skew_used * now_s)
    }
}

/// Estimates sender/receiver clock skew from the least delayed packet of each second.
struct SkewEstimator {
    /// (bucket mid time s, max slack ms) for closed buckets, oldest first.
    points: Vec<(f64, f64)>,
    cap: usize,
    bucket: i64,
    bucket_max: f64,
    bucket_has: bool,
}

impl SkewEstimator {
    fn new() -> Self {
        SkewEstimator {
            points: Vec::with_capacity(32),
            cap: 30,
            bucket: i64::MIN,
            bucket_max: f64::NEG_INFINITY,
            bucket_has: false,
        }
    }

    /// Feeds a sample; returns a new estimate (ms/s) when a bucket closes.
    fn push(&mut self, t: f64, v: f64) -> Option<f64> {
        let b = t.floor() as i64;
        let mut closed = None;
        if b != self.bucket {
            if self.bucket_has {
                if self.points.len() == self.cap {
                    self.points.remove(0);
                }
                self.points
                    .push((self.bucket as f64 + 0.5, self.bucket_max));
                closed = self.fit();
            }
            self.bucket = b;
            self.bucket_max = f64::NEG_INFINITY;
            self.bucket_has = false;
        }
        self.bucket_max = self.bucket_max.max(v);
        self.bucket_has = true;
        closed
    }

    fn fit(&self) -> Option<f64> {
        let n = self.points.len();
        if n < 6 {
            return None;
        }
        let nf = n as f64;
        let mt = self.points.iter().map(|p| p.0).sum::<f64>() / nf;
        let mv = self.points.iter().map(|p| p.1).sum::<f64>() / nf;
        let (mut sxy, mut sxx) = (0.0, 0.0);
        for &(t, v) in &self.points {
            sxy += (t - mt) * (v - mv);
            sxx += (t - mt) * (t - mt);
        }
        if sxx <= 0.0 {
            return None;
        }
        Some((sxy / sxx).clamp(-60.0, 60.0))
    }
}

/// The sync buffer: decoded samples not yet output, followed by `zeros` samples of silence
/// that are counted but not written. A skipped leg's buffer (nobody hears it) is all
/// silence; writing a frame of zeros into a thousand legs' buffers every tick was a fifth
/// of a big room's tick (memset, cache misses). The zeros are written out only when real
/// audio follows them or they are read.
#[derive(Debug)]
struct SyncBuf {
    real: Vec<f32>,
    zeros: usize,
}

impl SyncBuf {
    fn len(&self) -> usize {
        self.real.len() + self.zeros
    }

    fn capacity(&self) -> usize {
        self.real.capacity()
    }

    fn push_zeros(&mut self, n: usize) {
        self.zeros += n;
    }

    fn materialize(&mut self) {
        if self.zeros > 0 {
            self.real.resize(self.real.len() + self.zeros, 0.0);
            self.zeros = 0;
        }
    }

    fn extend(&mut self, samples: &[f32]) {
        self.materialize();
        self.real.extend_from_slice(samples);
    }

    /// All samples, the silence written out.
    fn slice(&mut self) -> &[f32] {
        self.materialize();
        &self.real
    }

    fn truncate(&mut self, len: usize) {
        if len >= self.real.len() {
            self.zeros = self.zeros.min(len - self.real.len());
        } else {
            self.real.truncate(len);
            self.zeros = 0;
        }
    }

    /// Removes the first `n` samples (output).
    fn consume(&mut self, n: usize) {
        if n <= self.real.len() {
            self.real.drain(..n);
        } else {
            let from_zeros = n - self.real.len();
            self.real.clear();
            self.zeros = self.zeros.saturating_sub(from_zeros);
        }
    }
}

/// The adaptive jitter buffer for one SSRC. See the module docs.
pub struct JitterBuffer<D: AudioDecoder> {
    cfg: JitterConfig,
    decoder: D,
    stretcher: TimeStretcher,
    /// Samples per output frame.
    frame: usize,
    slots: Vec<Slot>,
    stored: usize,
    /// Highest seq stored or played.
    highest_seq: Option<u64>,
    /// Sequence number and timestamp of the next packet to decode.
    next_seq: u64,
    next_ts: u64,
    started: bool,
    /// Nominal samples per packet (from the last decode).
    packet_samples: usize,
    /// Decoded, not yet output samples.
    sync: SyncBuf,
    /// Absolute sample position of `sync[0]` in the output stream.
    sync_pos: u64,
    /// (seq, absolute output position of its first sample), oldest first.
    markers: Vec<(u64, u64)>,
    played: Vec<Played>,
    decode_buf: Vec<f32>,
    stretch_buf: Vec<f32>,
    /// Time of the next frame tick, as far as the buffer knows (last pop + frame).
    next_tick: Option<Instant>,
    epoch: Option<Instant>,
    /// Cumulative delay the buffer has added to its schedule, in samples (holds and
    /// expansions minus accelerations, skips and DTX catch-up).
    offset: i64,
    /// Samples held (concealed without moving the schedule) since the last decode.
    held_since_decode: i64,
    window: SlackWindow,
    skew: SkewEstimator,
    /// Sequence numbers already accounted for (played, recovered, late or discarded),
    /// indexed by `seq % len`: a second arrival of one of them is a duplicate, not a loss.
    settled: Vec<u64>,
    /// A jump (sequence or timestamp) seen once, waiting for its successor to confirm it.
    pending_jump: Option<(u64, u64)>,
    /// Stored slots that carry no audio (telephone-events).
    stored_foreign: usize,
    /// Set by `pop_skip`: the decoder's reset, for the next `pop` to run.
    resume_reset: Option<fn(&mut D)>,
    stats: JitterStats,
}

/// How one pop produces its frame: by decoding, or by accounting without decoding.
struct PopCtx<'t, D> {
    skip: Option<SkipFns<D>>,
    timer: Option<&'t mut StageTimer>,
}

impl<D> PopCtx<'_, D> {
    fn lap(&mut self, stage: Stage) {
        if let Some(t) = self.timer.as_deref_mut() {
            t.lap(stage);
        }
    }
}

/// The [`SkipDecoder`] methods, taken as plain functions so that the pop path, which
/// needs only [`AudioDecoder`], can run them.
struct SkipFns<D> {
    samples: fn(&mut D, &[u8]) -> Result<usize, CodecError>,
    fec: SkipFecFn<D>,
}

/// [`SkipDecoder::skip_fec`] as a plain function.
type SkipFecFn<D> = fn(&mut D, &[u8], usize) -> Result<Option<usize>, CodecError>;

impl<D> Clone for SkipFns<D> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<D> Copy for SkipFns<D> {}

const MAX_PACKET_MS: usize = 120;
/// Extended sequence numbers and timestamps start at 2^16 and 2^32 and grow by one cycle
/// per wrap: 2^62 is out of reach (centuries of media) and keeps every sum below 2^64.
const MAX_EXTENDED: u64 = 1 << 62;

impl<D: AudioDecoder> JitterBuffer<D> {
    /// Creates a buffer that decodes with `decoder`.
    pub fn new(cfg: JitterConfig, decoder: D) -> Result<Self, JitterError> {
        if cfg.frame_ms != 10 && cfg.frame_ms != 20 {
            return Err(JitterError::BadConfig("frame_ms must be 10 or 20"));
        }
        if decoder.sample_rate() != cfg.clock_rate {
            return Err(JitterError::BadConfig(
                "clock_rate must equal the decoder's sample rate",
            ));
        }
        if !cfg.capacity.is_power_of_two() || cfg.capacity < 16 {
            return Err(JitterError::BadConfig(
                "capacity must be a power of two >= 16",
            ));
        }
        if cfg.window < 10 || !(0.0..0.5).contains(&cfg.late_quantile) {
            return Err(JitterError::BadConfig(
                "window must be >= 10 and late_quantile in [0, 0.5)",
            ));
        }
        let stretcher = TimeStretcher::new(cfg.clock_rate)
            .map_err(|_| JitterError::BadConfig("no time-stretcher for this clock rate"))?;
        let frame = (cfg.clock_rate * cfg.frame_ms / 1000) as usize;
        let max_packet = cfg.clock_rate as usize * MAX_PACKET_MS / 1000;
        let slots = (0..cfg.capacity)
            .map(|_| Slot {
                used: false,
                foreign: false,
                seq: 0,
                ts: 0,
                len: 0,
                data: vec![0u8; cfg.max_payload].into_boxed_slice(),
            })
            .collect();
        Ok(JitterBuffer {
            frame,
            slots,
            stored: 0,
            highest_seq: None,
            next_seq: 0,
            next_ts: 0,
            started: false,
            packet_samples: frame,
            sync: SyncBuf {
                real: Vec::with_capacity(max_packet * 4 + frame * 4),
                zeros: 0,
            },
            sync_pos: 0,
            markers: Vec::with_capacity(64),
            played: Vec::with_capacity(64),
            decode_buf: vec![0.0; max_packet],
            stretch_buf: vec![0.0; max_packet * 3 + frame * 2],
            next_tick: None,
            epoch: None,
            offset: 0,
            held_since_decode: 0,
            window: SlackWindow::new(cfg.window),
            skew: SkewEstimator::new(),
            settled: vec![u64::MAX; cfg.capacity * 2],
            pending_jump: None,
            stored_foreign: 0,
            resume_reset: None,
            stats: JitterStats::default(),
            stretcher,
            decoder,
            cfg,
        })
    }

    /// Samples per output frame.
    pub fn frame_samples(&self) -> usize {
        self.frame
    }

    /// Audio buffered ahead of playout (decoded and in packets), as
    /// [`JitterStats::current_delay_ms`] says, without computing the other stats.
    pub fn current_delay(&self) -> Duration {
        Duration::from_secs_f64(self.buffered_samples() as f64 / self.rate())
    }

    /// The decoder (e.g. to read its configuration).
    pub fn decoder(&self) -> &D {
        &self.decoder
    }

    /// Current counters and delay state.
    pub fn stats(&self) -> JitterStats {
        let mut s = self.stats;
        s.current_delay_ms = self.buffered_samples() as f64 * 1000.0 / self.rate();
        s.skew_ms_per_s = self.window.skew_used;
        s.target_delay_ms = match self.steering() {
            Some(change_ms) => (s.current_delay_ms + change_ms).max(0.0),
            None => self.cfg.initial_delay_ms as f64,
        };
        s
    }

    /// Packets played since the last call, with the time their first sample was output.
    pub fn drain_played(&mut self) -> std::vec::Drain<'_, Played> {
        self.played.drain(..)
    }

    fn rate(&self) -> f64 {
        self.cfg.clock_rate as f64
    }

    fn ms_to_samples(&self, ms: f64) -> i64 {
        (ms * self.rate() / 1000.0).round() as i64
    }

    fn secs(&self, t: Instant) -> f64 {
        match self.epoch {
            Some(e) => t.saturating_duration_since(e).as_secs_f64(),
            None => 0.0,
        }
    }

    fn slot_index(&self, seq: u64) -> usize {
        (seq as usize) & (self.cfg.capacity - 1)
    }

    /// Audio waiting to be played: decoded samples plus stored packets at their nominal
    /// length (a DTX pause or a loss gap is not audio waiting).
    fn buffered_samples(&self) -> u64 {
        self.sync.len() as u64 + ((self.stored - self.stored_foreign) * self.packet_samples) as u64
    }

    /// The late-quantile slack projected to now, in ms, once measured. Until the window
    /// holds enough packets for the quantile to mean something (1 / `late_quantile`), up
    /// to `initial_delay_ms` is held in reserve, shrinking as packets come in.
    fn slack_quantile_ms(&self) -> Option<f64> {
        let now_s = self.secs(self.next_tick.unwrap_or(self.epoch?));
        let q = self.window.quantile(self.cfg.late_quantile, now_s)?;
        let needed = (1.0 / self.cfg.late_quantile.max(1e-3)).ceil();
        let seen = self.window.len as f64;
        let reserve = self.cfg.initial_delay_ms as f64 * ((needed - seen) / needed).max(0.0);
        Some(q + self.offset as f64 * 1000.0 / self.rate() - reserve)
    }

    /// Takes in one received packet.
    pub fn push(
        &mut self,
        packet: JbPacket<'_>,
        arrival: Instant,
    ) -> Result<PushOutcome, JitterError> {
        self.stats.received += 1;
        if packet.payload.len() > self.cfg.max_payload {
            return Err(JitterError::PayloadTooLarge(packet.payload.len()));
        }
        if packet.seq >= MAX_EXTENDED || packet.timestamp >= MAX_EXTENDED {
            return Err(JitterError::OutOfRange);
        }
        if self.epoch.is_none() {
            self.epoch = Some(arrival);
        }
        if !self.started {
            self.start_at(packet);
        } else if self.is_discontinuity(&packet) {
            // Restart only when the packet after the jump continues it.
            let max_gap = self.cfg.clock_rate as u64 * self.cfg.max_dtx_gap_ms as u64 / 1000;
            let confirmed = self.pending_jump.is_some_and(|(seq, ts)| {
                packet.seq == seq + 1 && packet.timestamp > ts && packet.timestamp - ts <= max_gap
            });
            if !confirmed {
                self.pending_jump = Some((packet.seq, packet.timestamp));
                self.stats.suspects += 1;
                return Ok(PushOutcome::Suspect);
            }
            self.pending_jump = None;
            self.resync(packet);
        }
        if packet.seq < self.next_seq {
            return Ok(self.already_past(packet, arrival));
        }
        if packet.seq >= self.next_seq + self.cfg.capacity as u64 {
            self.stats.overflow += 1;
            return Ok(PushOutcome::Overflow);
        }
        let i = self.slot_index(packet.seq);
        if self.slots[i].used {
            if self.slots[i].seq == packet.seq {
                self.stats.duplicates += 1;
                return Ok(PushOutcome::Duplicate);
            }
            self.stats.overflow += 1;
            return Ok(PushOutcome::Overflow);
        }
        if packet.timestamp + self.packet_samples as u64 <= self.next_ts
            || (packet.timestamp < self.next_ts && packet.seq > self.next_seq)
        {
            // Its start has already been concealed.
            self.settle(packet.seq);
            self.stats.late += 1;
            self.record_slack(packet, arrival);
            return Ok(PushOutcome::Late);
        }
        self.record_slack(packet, arrival);
        let slot = &mut self.slots[i];
        slot.used = true;
        slot.foreign = false;
        slot.seq = packet.seq;
        slot.ts = packet.timestamp;
        slot.len = packet.payload.len();
        slot.data[..slot.len].copy_from_slice(packet.payload);
        self.stored += 1;
        if self.highest_seq.is_none_or(|h| packet.seq > h) {
            self.highest_seq = Some(packet.seq);
        }
        Ok(PushOutcome::Stored)
    }

    /// Takes in a packet that uses the stream's sequence space but carries no audio (an
    /// RFC 4733 telephone-event: its timestamp is the event's start). Its sequence number
    /// is then not mistaken for a lost audio packet; the audio after it resumes like after
    /// a DTX pause. Before the stream has started it is ignored.
    pub fn push_foreign(&mut self, seq: u64, timestamp: u64) -> Result<PushOutcome, JitterError> {
        if seq >= MAX_EXTENDED || timestamp >= MAX_EXTENDED {
            return Err(JitterError::OutOfRange);
        }
        if !self.started || seq < self.next_seq {
            return Ok(PushOutcome::Late);
        }
        if seq >= self.next_seq + self.cfg.capacity as u64 {
            return Ok(PushOutcome::Overflow);
        }
        let i = self.slot_index(seq);
        if self.slots[i].used {
            return Ok(if self.slots[i].seq == seq {
                PushOutcome::Duplicate
            } else {
                PushOutcome::Overflow
            });
        }
        let slot = &mut self.slots[i];
        slot.used = true;
        slot.foreign = true;
        slot.seq = seq;
        slot.ts = timestamp;
        slot.len = 0;
        self.stored += 1;
        self.stored_foreign += 1;
        if self.highest_seq.is_none_or(|h| seq > h) {
            self.highest_seq = Some(seq);
        }
        Ok(PushOutcome::Stored)
    }

    /// Starts playout with the first packet, `initial_delay_ms` from now.
    fn start_at(&mut self, packet: JbPacket<'_>) {
        self.started = true;
        self.next_seq = packet.seq;
        self.next_ts = packet.timestamp;
        self.highest_seq = None;
        let pre = self.ms_to_samples(self.cfg.initial_delay_ms as f64).max(0) as usize;
        let pre = pre.min(self.sync.capacity().saturating_sub(self.sync.len()));
        self.sync.push_zeros(pre);
    }

    fn is_discontinuity(&self, p: &JbPacket<'_>) -> bool {
        let max_gap = self.cfg.clock_rate as u64 * self.cfg.max_dtx_gap_ms as u64 / 1000;
        // Sequence far outside the buffer's reach in either direction: a new stream.
        let seq_far = p.seq + 3000 < self.next_seq || p.seq > self.next_seq + 3000;
        let ts_far = p.timestamp + max_gap < self.next_ts || p.timestamp > self.next_ts + max_gap;
        seq_far || (ts_far && p.seq <= self.next_seq + 1)
    }

    /// Restarts the sequence after an SSRC change or a discontinuity: stored packets of the
    /// old stream are dropped, playout continues after what is already decoded.
    pub fn resync(&mut self, packet: JbPacket<'_>) {
        for s in &mut self.slots {
            if s.used {
                s.used = false;
                if !s.foreign {
                    self.stats.discarded += 1;
                }
            }
        }
        self.stored = 0;
        self.stored_foreign = 0;
        // A new stream may come from another clock, and nothing held is waited for now.
        self.skew = SkewEstimator::new();
        self.window.set_skew(0.0);
        self.held_since_decode = 0;
        self.highest_seq = None;
        self.next_seq = packet.seq;
        self.next_ts = packet.timestamp;
        self.stats.resyncs += 1;
    }

    /// A packet whose place has passed: a duplicate if it was accounted for already, else
    /// a late arrival. Its lateness is measured: the buffer must learn from what it missed.
    fn already_past(&mut self, packet: JbPacket<'_>, arrival: Instant) -> PushOutcome {
        if self.is_settled(packet.seq) {
            self.stats.duplicates += 1;
            return PushOutcome::Duplicate;
        }
        self.settle(packet.seq);
        self.stats.late += 1;
        self.record_slack(packet, arrival);
        PushOutcome::Late
    }

    fn settle(&mut self, seq: u64) {
        let n = self.settled.len();
        self.settled[(seq as usize) % n] = seq;
    }

    fn is_settled(&self, seq: u64) -> bool {
        self.settled[(seq as usize) % self.settled.len()] == seq
    }

    /// Slack: time from arrival to when the packet's first sample will be played under
    /// the schedule in force (continuous; the frame quantisation is applied at decision).
    fn record_slack(&mut self, packet: JbPacket<'_>, arrival: Instant) {
        let ahead = self.sync.len() as i64 + packet.timestamp as i64 - self.next_ts as i64;
        if ahead < -self.ms_to_samples(self.cfg.max_excess_ms) {
            // A straggler from before a restart: its timestamp is on another timeline.
            return;
        }
        let base = self.next_tick.unwrap_or(arrival);
        let t = self.secs(arrival);
        let play_s = self.secs(base) + ahead as f64 / self.rate();
        let slack_ms = (play_s - t) * 1000.0;
        let fixed = slack_ms - self.offset as f64 * 1000.0 / self.rate();
        self.window.push(t, fixed);
        if let Some(s) = self.skew.push(t, fixed)
            && (s - self.window.skew_used).abs() > 0.2
        {
            self.window.set_skew(s);
        }
    }
}

impl<D: AudioDecoder> JitterBuffer<D> {
    /// Produces the next output frame into `out` (exactly `frame_samples()` long).
    pub fn pop(&mut self, now: Instant, out: &mut [f32]) -> Result<PopInfo, JitterError> {
        self.pop_with(now, out, None)
    }

    /// [`pop`](Self::pop), lapping `timer` around every decoder call (see the module docs).
    pub fn pop_timed(
        &mut self,
        now: Instant,
        out: &mut [f32],
        timer: &mut StageTimer,
    ) -> Result<PopInfo, JitterError> {
        self.pop_with(now, out, Some(timer))
    }

    fn pop_with(
        &mut self,
        now: Instant,
        out: &mut [f32],
        timer: Option<&mut StageTimer>,
    ) -> Result<PopInfo, JitterError> {
        if out.len() != self.frame {
            return Err(JitterError::BadFrame {
                expected: self.frame,
                got: out.len(),
            });
        }
        if let Some(reset) = self.resume_reset.take() {
            reset(&mut self.decoder);
        }
        let mut ctx = PopCtx { skip: None, timer };
        Ok(self.advance(now, Some(out), &mut ctx))
    }

    /// One frame of the schedule, into `out` when given.
    fn advance(
        &mut self,
        now: Instant,
        out: Option<&mut [f32]>,
        ctx: &mut PopCtx<'_, D>,
    ) -> PopInfo {
        let frame_d = Duration::from_millis(self.cfg.frame_ms as u64);
        let mut info = PopInfo::default();
        if !self.started {
            if let Some(out) = out {
                out.fill(0.0);
            }
            info.idle = true;
            self.next_tick = Some(now + frame_d);
            return info;
        }
        self.catch_up();
        while self.sync.len() < self.frame {
            self.produce(&mut info, ctx);
        }
        if let Some(out) = out {
            out.copy_from_slice(&self.sync.slice()[..self.frame]);
        }
        let end = self.sync_pos + self.frame as u64;
        let mut k = 0;
        while k < self.markers.len() && self.markers[k].1 < end {
            let (seq, pos) = self.markers[k];
            let offset = (pos.saturating_sub(self.sync_pos)) as f64 / self.rate();
            if self.played.len() < self.played.capacity() {
                self.played.push(Played {
                    seq,
                    at: now + Duration::from_secs_f64(offset),
                });
            }
            k += 1;
        }
        self.markers.drain(..k);
        self.sync.consume(self.frame);
        self.sync_pos = end;
        self.next_tick = Some(now + frame_d);
        info
    }

    /// The lowest stored packet at or after `next_seq`: (slot, seq, ts).
    fn next_candidate(&self) -> Option<(usize, u64, u64)> {
        if self.stored == 0 {
            return None;
        }
        let hi = self.highest_seq?;
        let mut seq = self.next_seq;
        while seq <= hi {
            let i = self.slot_index(seq);
            let s = &self.slots[i];
            if s.used && s.seq == seq {
                return Some((i, seq, s.ts));
            }
            seq += 1;
        }
        None
    }

    fn free_slot(&mut self, i: usize) {
        if self.slots[i].used {
            self.slots[i].used = false;
            self.stored -= 1;
            if self.slots[i].foreign {
                self.stored_foreign -= 1;
            }
        }
    }

    /// Appends `n` samples of concealment to the sync buffer (silence when skipping).
    fn conceal(&mut self, n: usize, info: &mut PopInfo, ctx: &mut PopCtx<'_, D>) {
        let n = n.min(self.decode_buf.len());
        if ctx.skip.is_some() {
            self.sync.push_zeros(n);
        } else {
            ctx.lap(Stage::Jitter);
            self.stats.decoder_calls += 1;
            info.decoder_calls += 1;
            let buf = &mut self.decode_buf[..n];
            if self.decoder.conceal(buf).is_err() {
                buf.fill(0.0);
            }
            ctx.lap(Stage::Decode);
            self.sync.extend(&self.decode_buf[..n]);
        }
        info.concealed += n;
        self.stats.concealed_ms += n as f64 * 1000.0 / self.cfg.clock_rate as f64;
    }

    /// Adds at least some samples to the sync buffer: decoded, recovered or concealed.
    fn produce(&mut self, info: &mut PopInfo, ctx: &mut PopCtx<'_, D>) {
        let frame = self.frame;
        let Some((i, seq, ts)) = self.next_candidate() else {
            // Underrun: conceal what this frame lacks (in 2.5 ms steps, the finest that
            // Opus conceals) and hold the schedule: the missing packet keeps its place.
            let step = (self.cfg.clock_rate / 400) as usize;
            let n = (frame - self.sync.len().min(frame)).div_ceil(step) * step;
            self.conceal(n, info, ctx);
            if self.held_since_decode < self.ms_to_samples(self.cfg.max_hold_ms) {
                self.offset += n as i64;
                self.held_since_decode += n as i64;
            } else {
                // Held long enough: the schedule moves on, what comes later is late.
                self.next_ts += n as u64;
            }
            return;
        };
        let foreign = self.slots[i].foreign;
        if foreign && (seq == self.next_seq || ts <= self.next_ts) {
            // Not audio: its sequence number is accounted for, nothing to play.
            self.free_slot(i);
            self.next_seq = seq + 1;
            return;
        }
        if seq == self.next_seq {
            if ts > self.next_ts {
                // Contiguous sequence, later timestamp: the sender paused (DTX). The time we
                // held while waiting was that pause: give it back, then fill what is left.
                let gap = (ts - self.next_ts) as i64;
                let undo = gap.min(self.held_since_decode.max(0));
                self.next_ts += undo as u64;
                self.offset -= undo;
                self.held_since_decode -= undo;
                if ts > self.next_ts {
                    let n = ((ts - self.next_ts) as usize).min(frame);
                    self.conceal(n, info, ctx);
                    self.next_ts += n as u64;
                    return;
                }
            }
            if ts < self.next_ts {
                // It overlaps what was already played (after a hold ran out): the overlap
                // plays again, which delays the schedule by as much.
                self.offset += (self.next_ts - ts) as i64;
            }
            self.next_ts = ts;
            self.decode_slot(i, info, ctx);
            return;
        }
        // Packets between next_seq and seq are missing and their time has come.
        let missing = ts.saturating_sub(self.next_ts) as usize;
        if missing == 0 {
            self.next_seq = seq;
            self.next_ts = ts;
            self.decode_slot(i, info, ctx);
            return;
        }
        if seq == self.next_seq + 1
            && missing <= self.decode_buf.len()
            && !foreign
            && let Some(n) = self.recover_fec(i, missing, info, ctx)
        {
            info.decoded += n;
            self.stats.fec_recovered += 1;
            self.settle(self.next_seq);
            // FEC covered `n` of the `missing` samples of media.
            self.offset += n as i64 - missing as i64;
            self.next_seq = seq;
            self.next_ts = ts;
            return;
        }
        let n = missing.min(frame);
        self.conceal(n, info, ctx);
        self.next_ts += n as u64;
        if self.next_ts >= ts {
            self.next_seq = seq;
        }
    }

    /// Recovers the `missing` samples before slot `i`'s packet from its FEC, appended to the
    /// sync buffer; `None` when it carries none.
    fn recover_fec(
        &mut self,
        i: usize,
        missing: usize,
        info: &mut PopInfo,
        ctx: &mut PopCtx<'_, D>,
    ) -> Option<usize> {
        let payload = &self.slots[i].data[..self.slots[i].len];
        if let Some(f) = ctx.skip {
            let n = (f.fec)(&mut self.decoder, payload, missing)
                .ok()
                .flatten()?
                .min(missing);
            self.sync.push_zeros(n);
            return Some(n);
        }
        ctx.lap(Stage::Jitter);
        self.stats.decoder_calls += 1;
        info.decoder_calls += 1;
        let r = self
            .decoder
            .decode_fec(payload, &mut self.decode_buf[..missing]);
        ctx.lap(Stage::Decode);
        let n = r.ok().flatten()?.min(missing);
        self.sync.extend(&self.decode_buf[..n]);
        Some(n)
    }

    /// The samples slot `i`'s packet decodes to (into `decode_buf`), or would when
    /// skipping; `None` when the decoder rejects it.
    fn decode_payload(
        &mut self,
        i: usize,
        info: &mut PopInfo,
        ctx: &mut PopCtx<'_, D>,
    ) -> Option<usize> {
        let payload = &self.slots[i].data[..self.slots[i].len];
        let n = match ctx.skip {
            Some(f) => (f.samples)(&mut self.decoder, payload)
                .ok()
                // `decode` could not write more than the buffer holds.
                .filter(|&n| n <= self.decode_buf.len()),
            None => {
                ctx.lap(Stage::Jitter);
                self.stats.decoder_calls += 1;
                info.decoder_calls += 1;
                let r = self.decoder.decode(payload, &mut self.decode_buf);
                ctx.lap(Stage::Decode);
                r.ok()
            }
        };
        n.filter(|&n| n > 0)
    }

    fn decode_slot(&mut self, i: usize, info: &mut PopInfo, ctx: &mut PopCtx<'_, D>) {
        let (seq, ts) = (self.slots[i].seq, self.slots[i].ts);
        let result = self.decode_payload(i, info, ctx);
        self.free_slot(i);
        self.next_seq = seq + 1;
        self.settle(seq);
        let Some(n) = result else {
            // A payload the decoder rejects is lost: conceal its nominal length.
            self.stats.decode_errors += 1;
            let n = self.packet_samples;
            self.conceal(n, info, ctx);
            self.next_ts = ts + n as u64;
            return;
        };
        self.markers
            .push((seq, self.sync_pos + self.sync.len() as u64));
        if ctx.skip.is_some() {
            self.sync.push_zeros(n);
        } else {
            self.sync.extend(&self.decode_buf[..n]);
        }
        info.decoded += n;
        self.stats.played += 1;
        self.packet_samples = n;
        self.next_ts = ts + n as u64;
        self.held_since_decode = 0;
        self.stretch(ctx.skip.is_some());
    }

    /// How much delay (ms) the schedule should gain (> 0) or lose (< 0) now, once
    /// measured: see the module docs for phase and margin.
    fn steering(&self) -> Option<f64> {
        let quantile = self.slack_quantile_ms()?;
        let frame_ms = self.cfg.frame_ms as f64;
        let phase = (self.sync.len() % self.frame) as f64 * 1000.0 / self.rate();
        let margin = quantile - phase;
        if margin < -self.cfg.expand_below_ms {
            Some(frame_ms - phase)
        } else {
            Some(-(phase + frame_ms * (margin.max(0.0) / frame_ms).floor()))
        }
    }

    /// Accelerates or expands the freshly decoded audio to steer the schedule.
    ///
    /// Output leaves in whole frames, so two quantities matter: `phase`, where the next
    /// packet starts inside an output frame (pure delay: a packet decoded at a tick plays
    /// `phase` later for no safety gain), and `margin`, the late-quantile slack to the tick
    /// that must decode it. Shortening by up to `phase` costs no margin; beyond that the
    /// margin can only be spent in whole frames. Lateness (negative margin) is cured by
    /// lengthening to the next frame boundary, which adds a whole frame of margin.
    ///
    /// When `skipping`, the sync buffer holds zeros, on which the stretcher would make its
    /// quiet splice: as much as asked, up to the chunk minus its 5 ms cross-fade. That
    /// amount is dropped or inserted directly.
    fn stretch(&mut self, skipping: bool) {
        let Some(change_ms) = self.steering() else {
            return;
        };
        let (accelerate, want_ms) = if change_ms > 0.0 {
            (false, change_ms)
        } else if -change_ms > self.cfg.accelerate_above_ms {
            (true, -change_ms)
        } else {
            return;
        };
        // The splice is capped at `want`; the input is as long as the stretcher can use,
        // so that long pitch periods are found.
        let want = self.ms_to_samples(want_ms).max(0) as usize;
        let len = (2 * self.stretcher.max_period()).min(self.sync.len());
        if len < self.stretcher.min_input_len() {
            return;
        }
        let start = self.sync.len() - len;
        let changed = if skipping {
            // The stretcher's quiet cross-fade: 5 ms, at most half the chunk.
            let fade = (self.cfg.clock_rate as usize / 200).min(len / 2);
            let jump = want.min(len - fade);
            if accelerate {
                self.sync.truncate(self.sync.len() - jump);
                -(jump as isize)
            } else {
                self.sync.push_zeros(jump);
                jump as isize
            }
        } else {
            self.stretcher.set_quiet_cap(want);
            self.stretcher.set_max_splice_period(want);
            let result = if accelerate {
                self.stretcher
                    .accelerate(&self.sync.slice()[start..], &mut self.stretch_buf)
            } else {
                self.stretcher
                    .expand(&self.sync.slice()[start..], &mut self.stretch_buf)
            };
            let Ok(r) = result else {
                return;
            };
            if r.changed != 0 {
                self.sync.truncate(start);
                self.sync.extend(&self.stretch_buf[..r.written]);
            }
            r.changed
        };
        if changed == 0 {
            return;
        }
        self.offset += changed as i64;
        let ms = changed.unsigned_abs() as f64 * 1000.0 / self.rate();
        if changed < 0 {
            self.stats.accelerated_ms += ms;
        } else {
            self.stats.expanded_ms += ms;
        }
        // Packet starts inside the stretched region move with it (to within a period).
        let region = self.sync_pos + start as u64;
        for m in self.markers.iter_mut().filter(|m| m.1 > region) {
            m.1 = (m.1 as i64 + changed as i64).max(region as i64) as u64;
        }
    }

    /// After a backlog (a freeze released at once), drops the oldest packets rather than
    /// play seconds of stale audio, and starts measuring afresh: the slack of packets that
    /// waited out the freeze says nothing about the network after it.
    fn catch_up(&mut self) {
        let limit = self.ms_to_samples(self.cfg.max_excess_ms).max(0) as u64;
        if self.buffered_samples() <= limit {
            return;
        }
        let keep = self.ms_to_samples(self.cfg.catch_up_to_ms).max(0) as u64;
        while self.buffered_samples() > keep {
            let Some((i, seq, ts)) = self.next_candidate() else {
                break;
            };
            let dur = self.packet_samples as u64;
            if !self.slots[i].foreign {
                self.stats.discarded += 1;
                self.settle(seq);
            }
            self.free_slot(i);
            self.next_seq = seq + 1;
            let skipped = (ts + dur).saturating_sub(self.next_ts);
            self.next_ts = ts + dur;
            self.offset -= skipped as i64;
        }
        self.window.clear();
    }
}

impl<D: SkipDecoder> JitterBuffer<D> {
    /// Advances one output frame exactly as [`pop`](Self::pop) would, without decoding
    /// anything and producing no audio (see the module docs). The next `pop` resets the
    /// decoder first.
    pub fn pop_skip(&mut self, now: Instant) -> PopInfo {
        self.resume_reset = Some(<D as SkipDecoder>::reset);
        self.stats.skipped_frames += 1;
        let mut ctx = PopCtx {
            skip: Some(SkipFns {
                samples: <D as SkipDecoder>::skip,
                fec: <D as SkipDecoder>::skip_fec,
            }),
            timer: None,
        };
        self.advance(now, None, &mut ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use confer_codecs::g711::G711Law;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use std::cell::Cell;

    fn t0() -> Instant {
        // An arbitrary origin; only differences matter.
        #[allow(clippy::disallowed_methods)]
        Instant::now()
    }

    thread_local! {
        static FAKE_NOW: Cell<Option<Instant>> = const { Cell::new(None) };
    }

    /// A clock that advances by 1 ms at every read.
    fn fake_clock() -> Instant {
        FAKE_NOW.with(|c| {
            let next = c.get().unwrap_or_else(t0) + Duration::from_millis(1);
            c.set(Some(next));
            next
        })
    }

    fn pcmu_buffer() -> JitterBuffer<G711Decoder> {
        let cfg = JitterConfig {
            clock_rate: 8000,
            ..JitterConfig::default()
        };
        JitterBuffer::new(cfg, G711Decoder::new(G711Law::Ulaw)).unwrap()
    }

    #[test]
    fn skipping_a_silent_stream_matches_decoding_it_in_every_counter() {
        // On silence the stretcher makes its quiet splice, which is what a skip does: the
        // two schedules are then identical, stretches included.
        let (mut decoding, mut skipping) = (pcmu_buffer(), pcmu_buffer());
        let silence = [0xFFu8; 160];
        let start = t0();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut arrivals = Vec::new();
        let mut ts = 1u64 << 32;
        for k in 0..3000u64 {
            // A DTX pause of a second every 10 s, 2 % loss, 0-60 ms of jitter, a 300 ms spike.
            if k % 500 == 499 {
                ts += 8000;
            }
            ts += 160;
            if rng.random_bool(0.02) {
                continue;
            }
            let spike = if (1000..1010).contains(&k) { 300 } else { 0 };
            let delay = Duration::from_millis(rng.random_range(0..60) + spike);
            let sent = start + Duration::from_millis(20 * k);
            arrivals.push((sent + delay, (1u64 << 16) + k, ts));
        }
        arrivals.sort_by_key(|a| a.0);
        let mut out = [1.0f32; 160];
        let mut next = 0;
        for tick in 0..3200u64 {
            let now = start + Duration::from_millis(20 * tick);
            while let Some(&(at, seq, ts)) = arrivals.get(next).filter(|a| a.0 <= now) {
                let p = JbPacket {
                    seq,
                    timestamp: ts,
                    payload: &silence,
                };
                assert_eq!(decoding.push(p, at), skipping.push(p, at));
                next += 1;
            }
            let a = decoding.pop(now, &mut out).unwrap();
            let b = skipping.pop_skip(now);
            assert!(out.iter().all(|&x| x == 0.0));
            assert_eq!(
                (a.decoded, a.concealed, a.idle),
                (b.decoded, b.concealed, b.idle),
                "tick {tick}"
            );
            assert_eq!(b.decoder_calls, 0);
        }
        let (mut d, s) = (decoding.stats(), skipping.stats());
        assert!(
            d.accelerated_ms > 0.0 && d.expanded_ms > 0.0 && d.late > 0,
            "{d:?}"
        );
        assert!(
            d.decoder_calls > 2900 && s.skipped_frames == 3200,
            "{d:?} {s:?}"
        );
        d.decoder_calls = 0;
        d.skipped_frames = 3200;
        assert_eq!(d, s);
    }

    #[test]
    fn a_timed_pop_gives_decoder_calls_to_decode_and_the_rest_to_jitter() {
        let mut jb = pcmu_buffer();
        let start = t0();
        let payload = [0x55u8; 160];
        for k in 0..10u64 {
            let p = JbPacket {
                seq: 100 + k,
                timestamp: 160 * k,
                payload: &payload,
            };
            jb.push(p, start + Duration::from_millis(20 * k)).unwrap();
        }
        let mut out = [0.0f32; 160];
        let mut timer = StageTimer::start(fake_clock);
        let mut calls = 0;
        for k in 0..8u64 {
            let info = jb
                .pop_timed(start + Duration::from_millis(20 * k), &mut out, &mut timer)
                .unwrap();
            calls += info.decoder_calls;
            timer.lap(Stage::Mix);
        }
        let t = timer.times();
        // Every decoder call: one lap before it (jitter), one after (decode); every pop
        // closes with the caller's lap.
        let ms = |n: u32| Duration::from_millis(u64::from(n));
        assert!(calls >= 6, "{calls}");
        assert_eq!(t.decode, ms(calls));
        assert_eq!(t.jitter, ms(calls));
        assert_eq!(t.mix, ms(8));
        assert_eq!(t.total(), ms(2 * calls + 8));
        assert_eq!(jb.stats().decoder_calls, u64::from(calls));
    }

    #[test]
    fn the_first_pop_after_skipping_starts_the_decoder_afresh() {
        let mut jb = pcmu_buffer();
        let start = t0();
        let loud = [0x80u8; 160];
        let mut out = [0.0f32; 160];
        let push = |jb: &mut JitterBuffer<G711Decoder>, k: u64| {
            let p = JbPacket {
                seq: 100 + k,
                timestamp: 160 * k,
                payload: &loud,
            };
            jb.push(p, start + Duration::from_millis(20 * k)).unwrap();
        };
        for k in 0..40u64 {
            push(&mut jb, k);
            jb.pop(start + Duration::from_millis(20 * k), &mut out)
                .unwrap();
        }
        for k in 40..50u64 {
            jb.pop_skip(start + Duration::from_millis(20 * k));
        }
        // Nothing arrived while skipping: the decoder conceals. From a fresh state it has
        // no history to continue, so it is silence rather than the old loud signal.
        jb.pop(start + Duration::from_millis(1000), &mut out)
            .unwrap();
        assert!(out.iter().all(|&x| x == 0.0), "{:?}", &out[..8]);
    }
}
