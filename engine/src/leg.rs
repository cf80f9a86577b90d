//! The media leg: one RTP session with one peer. Packets in, PCM frames out on the engine's
//! frame clock; PCM in, packets out.
//!
//! A leg owns everything one audio session needs: the negotiated codec and payload types,
//! our SSRC and the peer's, the sequence/timestamp extenders, the adaptive jitter buffer and
//! its decoder, the encoder, resamplers between the codec rate and the engine rate, optional
//! noise suppression, RFC 3550 statistics and RTCP, optional SRTP. It is sans-IO: it never
//! reads the clock, never touches a socket; `now` is always an argument and every random
//! choice (SSRC, initial sequence number and timestamp, RTCP interval) comes from the
//! caller's RNG. [`crate::udp`] is the thin tokio shell around it.
//!
//! # Drive contract
//!
//! - [`MediaLeg::handle_datagram`] for every datagram from the peer, with its arrival time
//!   (read right after the socket returned it). It demultiplexes RTP and RTCP (RFC 5761: a
//!   second byte in 192..=223 is RTCP), unprotects SRTP/SRTCP, and feeds the jitter buffer.
//!   Hostile input is a typed [`LegError`], counted in [`LegStats::errors`]; nothing panics.
//! - [`MediaLeg::poll_frame`] once per engine frame tick (every `frame_ms`) with that tick's
//!   time: it always fills one engine-rate frame (audio, concealment, or silence before the
//!   stream starts) and reports its RFC 6464 level and voice activity.
//!   [`MediaLeg::poll_skip`] instead, for a tick whose audio nobody will hear (a
//!   conference participant that is not mixed): the jitter buffer keeps its schedule and
//!   its counters, nothing is decoded. The `_timed` variants lap a [`StageTimer`].
//! - [`MediaLeg::send_frame`] once per tick with one engine-rate frame to send: it returns
//!   the length of the (S)RTP packet written to `out`, or 0 when no packet goes out this
//!   tick (Opus DTX suppressed the frame, or it was gathered into a packet of several
//!   frames: see *Packet time*).
//!   [`MediaLeg::skip_frame_flush`] when there is nothing to send: the media clock still
//!   advances, and a partly gathered packet goes out ([`MediaLeg::skip_frame`] drops it).
//!   [`MediaLeg::send_payload`] instead of `send_frame` when the frame was encoded elsewhere
//!   (a conference mix encoded once and sent to many listeners): only packetized here.
//! - [`MediaLeg::poll_rtcp`] every tick (or at [`MediaLeg::next_rtcp_at`]): a compound
//!   report to send when its interval has elapsed.
//! - [`MediaLeg::poll_event`] after the above, until `None`: DTMF digits, source changes, BYE.
//!
//! # Receive path
//!
//! Sequence numbers and timestamps are extended to 64 bits once, here, per source; the same
//! [`SeqUpdate`] feeds [`ReceiverStats`] and the jitter buffer, so a wrap, a reorder or a
//! restart is decided once. The first SSRC is latched at once (the first syllable is not
//! dropped). A *different* SSRC is adopted only when two of its packets arrive in sequence
//! (RFC 3550 A.1's probation applied to source changes): a stray or forged datagram cannot
//! take over playout, while a restarted peer loses nothing, since its first packet is held
//! and played once the second confirms it. For [`RETIRED_FOR`] after a change, packets of
//! the previous SSRC are dropped as stragglers rather than switching back; after that it is
//! a candidate like any other (a phone resuming after music on hold). A source change
//! resets the extenders and the RTCP statistics and resyncs the jitter buffer, which keeps
//! playing what it already decoded. One jitter buffer serves the active source.
//!
//! With [`LegConfig::audio_level_extension`] set, the RFC 6464 level and voice flag of the
//! latest received audio packet are kept ([`MediaLeg::header_level`]): a conference room
//! decides who speaks from them without decoding anyone. They expire after
//! [`HEADER_LEVEL_MAX_AGE`], and a peer whose last [`HEADER_LEVEL_ABSENT_AFTER`] audio
//! packets carried none (or a new source that sent none yet) is taken to send none.
//!
//! Telephone-events (RFC 4733) share the audio stream's SSRC and sequence space; they go to
//! a [`TelephoneEventReceiver`] and come out as [`LegEvent::Dtmf`]. Their sequence numbers
//! are handed to the jitter buffer as foreign ([`JitterBuffer::push_foreign`]), so they do
//! not read as lost audio; the audio after an event resumes as after a DTX pause.
//!
//! # Send path
//!
//! Engine-rate PCM is resampled to the codec rate, encoded, and packetized with the codec's
//! payload type, a sequence number and timestamp that start at random values and advance by
//! one per packet and by the packet's duration, the marker bit on the first packet of a
//! talkspurt, and, when configured, the RFC 6464 audio level (level and VAD flag of the
//! frame) as a one-byte header extension. Frames that Opus DTX reduces to 1-2 bytes are not
//! sent (RFC 7587 allows it; the receiver conceals or plays comfort noise), but their time
//! passes.
//!
//! # Packet time
//!
//! The engine ticks every `frame_ms` (10 or 20 ms), but a peer may want longer packets
//! (`a=ptime:40` from a PBX or a carrier, Opus with `maxptime`). With
//! [`LegConfig::ptime_ms`] a whole number N of frames (at most [`MAX_PTIME_MS`]), the send
//! path gathers N frames and writes one packet on every N-th call; the calls in between
//! return 0. A packet carries its first frame's timestamp, the marker when it starts a
//! talkspurt, and one RFC 6464 level: the mean power of its frames, with the voice flag if
//! any frame had it (no level when a frame came without one, as shared payloads do). The
//! RTCP sender report counts packets and payload octets as sent, and maps its RTP time
//! from the last frame of the last packet sent.
//!
//! G.711 frames are concatenated (N * 160 bytes at 20 ms). Opus frames stay 10/20 ms
//! frames, encoded one per tick (a shared payload is encoded once for many listeners, a
//! tick at a time, so encoding one long frame is not an option), and libopus's
//! repacketizer joins them into one RFC 6716 section 3.2 packet (code 1, 2 or 3). Only
//! frames with the same TOC configuration (mode, bandwidth, frame size, channels) can
//! share a packet: a frame whose TOC differs (libopus changed mode or bandwidth, or a
//! shared payload follows the leg's own encode) ends the packet early and starts the next
//! one, as does a frame that would take the packet past [`MAX_ENCODED_PAYLOAD`]. Such a
//! packet holds fewer frames; the receiver reads its duration from the TOC byte, and the
//! next packet's timestamp still follows on.
//!
//! A talkspurt's end sends what was gathered, since a short last packet is valid for both
//! codecs: an Opus DTX frame, or [`MediaLeg::skip_frame_flush`], writes the partial packet
//! and marks the next one. [`MediaLeg::skip_frame`] has no buffer to write into, so it
//! drops a partial packet (counted in [`LegStats::unsent_frames`]): callers that set a
//! packet time should use `skip_frame_flush`. [`MediaLeg::flush`] writes a partial packet
//! without a pause (before a BYE, or a hold). The leg sends no telephone-events itself.
//!
//! 120 ms is the longest one Opus packet may be (RFC 6716 section 3.2.5), and the limit is
//! taken for G.711 too: 960 bytes of payload, a datagram well under a 1500-byte MTU with
//! headers, the level extension and an SRTP tag (200 ms would be 1600 bytes and fragment).
//! [`fit_packet_time`] turns a peer's `a=ptime`/`a=maxptime` into a valid value.
//!
//! The receive path does not depend on the packet time: the jitter buffer decodes whatever
//! duration a packet holds (up to 120 ms) and plays it out one frame per tick.
//!
//! # RTCP
//!
//! A compound SR (while we send) or RR, with a report block on the active source, and an
//! SDES CNAME, every `rtcp_interval` randomised to [0.5, 1.5] times the interval divided by
//! e - 3/2 as RFC 3550 6.3.1 prescribes (the first report after half an interval). Report
//! blocks about our SSRC give the round-trip time (LSR/DLSR). NTP timestamps come from
//! [`LegConfig::ntp_at_start`] plus the `Instant`s the caller passes, so the leg never
//! reads the wall clock; the RTT does not depend on that anchor.
//!
//! # Allocation
//!
//! Every buffer of the audio path is allocated in [`MediaLeg::new`]; receiving, decoding,
//! playing and sending a packet allocate nothing of ours. Exceptions, both off the per-frame
//! path or owned by another module: RTCP compound parsing and building use `Vec`s (one report
//! every few seconds), and `rtc-srtp` allocates per packet (see [`crate::srtp`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use confer_codecs::decoder::{AudioDecoder, AudioEncoder, CodecError};
use confer_codecs::denoise::{self, Denoiser};
use confer_codecs::dtmf::{ReceivedEvent, TelephoneEventError, TelephoneEventReceiver};
use confer_codecs::g711::{G711Decoder, G711Encoder, G711Law};
use confer_codecs::level::{Vad, VadConfig};
use confer_codecs::opus::{
    self, OpusDecoder, OpusEncoder, OpusEncoderConfig, OpusMode, OpusSignal,
};
use confer_codecs::resample::{self, Resampler};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::jitter::{
    JbPacket, JitterBuffer, JitterConfig, JitterError, JitterStats, PushOutcome, SkipDecoder,
};
pub use crate::jitter::{Stage, StageClock, StageTimer, StageTimes};
use crate::rtcp::{
    CompoundRules, ReceiverReport, ReportBlock, RtcpError, RtcpPacket, Sdes, build_compound,
    parse_compound,
};
use crate::rtp::{AudioLevel, RtpError, RtpExtension, RtpPacket, RtpPacketBuilder};
use crate::srtp::{SrtpCounters, SrtpError, SrtpSession};
use crate::stats::{ReceiverStats, SenderStats, round_trip_time};
use crate::types::{
    ClockRate, NtpTime, PayloadType, RtpTime, SeqExtender, SeqUpdate, Ssrc, TimestampExtender,
};

/// Largest datagram a leg accepts (larger ones are rejected before any parsing).
pub const MAX_DATAGRAM: usize = 2048;
/// Largest Opus payload the encoder may produce, so that a packet stays under a 1500-byte
/// MTU with headers, the audio level extension and the SRTP tag.
pub const MAX_ENCODED_PAYLOAD: usize = 1200;
/// The longest packet time a leg sends ([`LegConfig::ptime_ms`]): the most one Opus packet
/// may hold (RFC 6716 section 3.2.5), and for G.711 a 960-byte payload, well under the MTU.
pub const MAX_PTIME_MS: u32 = 120;
/// Events kept for [`MediaLeg::poll_event`]; more are dropped and counted.
pub const EVENT_QUEUE_LEN: usize = 64;
/// RFC 3550 6.3.1: the randomised interval is divided by e - 3/2 to compensate for the
/// timer reconsideration algorithm's bias towards short intervals.
const RTCP_COMPENSATION: f64 = std::f64::consts::E - 1.5;
/// How long after a source change packets of the replaced SSRC are dropped as stragglers
/// (after that it may come back, e.g. a phone resuming after music on hold).
pub const RETIRED_FOR: Duration = Duration::from_secs(2);
/// Opus DTX frames are this long or shorter (the TOC byte, maybe one more).
const DTX_MAX_BYTES: usize = 2;
/// A received RFC 6464 level older than this reads as silence (the peer paused, is in
/// DTX, or its network froze): see [`MediaLeg::header_level`].
pub const HEADER_LEVEL_MAX_AGE: Duration = Duration::from_millis(200);
/// After this many audio packets in a row without the audio level extension, the peer is
/// taken not to send levels (see [`MediaLeg::header_level`]).
pub const HEADER_LEVEL_ABSENT_AFTER: u32 = 16;

/// Opus settings negotiated in SDP (`a=rtpmap` and `a=fmtp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusParams {
    /// The dynamic payload type (`a=rtpmap:<pt> opus/48000/2`).
    pub payload_type: PayloadType,
    /// In-band FEC (`useinbandfec=1`): the encoder sends it, sized by the loss the peer
    /// reports for our stream in RTCP (see [`MediaLeg::reported_loss_percent`]). Until a
    /// report says packets are lost the encoder adds none: libopus only encodes the
    /// redundancy when told to expect loss, and that redundancy costs 40 % more encode
    /// time (`cargo bench --bench codecs -- encode_mix`: 231 against 166 us a frame).
    /// Until then the leg codes CELT, which has no FEC at all
    /// ([`confer_codecs::opus::OpusSignal::MusicUntilLoss`]).
    pub fec: bool,
    /// The least loss, in percent, the FEC is sized for (local, not negotiated): reports
    /// of more raise it, never lower. 0 by default; raise it for a peer that sends no RTCP
    /// over a lossy path.
    pub expected_loss_percent: u8,
    /// Discontinuous transmission (`usedtx=1`).
    pub dtx: bool,
    /// Target bitrate (`maxaveragebitrate`), 6000..=510000 bit/s.
    pub bitrate_bps: u32,
    /// Encoder complexity 0..=10 (local, not negotiated). 5 by default: on 20 ms speech
    /// frames at 32 kbit/s it costs about two thirds of complexity 9's encode time, about
    /// what 3 and 4 cost (`cargo bench --bench codecs -- opus/encode_complexity`: 3, 4, 5,
    /// 9, 10 took 214, 246, 229, 321, 315 us here); Janus AudioBridge encodes at 4.
    pub complexity: u8,
}

impl Default for OpusParams {
    fn default() -> Self {
        OpusParams {
            // 111 is what browsers offer; validated as a 7-bit value by construction.
            payload_type: match PayloadType::new(111) {
                Ok(pt) => pt,
                Err(_) => PayloadType::PCMU,
            },
            fec: true,
            expected_loss_percent: 0,
            dtx: false,
            bitrate_bps: 32_000,
            complexity: 5,
        }
    }
}

/// The audio codec of a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// Opus at 48 kHz (RFC 7587), mono.
    Opus(OpusParams),
    /// G.711 mu-law, payload type 0.
    Pcmu,
    /// G.711 A-law, payload type 8.
    Pcma,
}

impl Codec {
    /// The RTP payload type.
    pub fn payload_type(&self) -> PayloadType {
        match self {
            Codec::Opus(p) => p.payload_type,
            Codec::Pcmu => PayloadType::PCMU,
            Codec::Pcma => PayloadType::PCMA,
        }
    }

    /// The RTP clock rate, which is also the rate the codec works at here.
    pub fn clock_rate(&self) -> ClockRate {
        match self {
            Codec::Opus(_) => ClockRate::HZ_48000,
            Codec::Pcmu | Codec::Pcma => ClockRate::HZ_8000,
        }
    }
}

/// Everything a leg is built from (besides the SRTP keys and the RNG).
#[derive(Debug, Clone)]
pub struct LegConfig {
    /// The audio codec and its payload type.
    pub codec: Codec,
    /// The telephone-event payload type (RFC 4733, at the codec's clock rate), if
    /// negotiated.
    pub telephone_event: Option<PayloadType>,
    /// Our SSRC; `None` draws it from the RNG.
    pub local_ssrc: Option<Ssrc>,
    /// Our first sequence number; `None` draws it (RFC 3550 wants it random).
    pub initial_seq: Option<u16>,
    /// Our first RTP timestamp; `None` draws it.
    pub initial_timestamp: Option<u32>,
    /// The engine's frame clock: 10 or 20 ms. Also our packet time, unless `ptime_ms` sets
    /// a longer one.
    pub frame_ms: u32,
    /// Our packet time in ms, when the peer wants packets longer than a frame (`a=ptime`):
    /// a whole multiple of `frame_ms`, at most [`MAX_PTIME_MS`]; `None` sends one packet
    /// per frame. See the module docs (*Packet time*) and [`fit_packet_time`].
    pub ptime_ms: Option<u32>,
    /// The engine's sample rate (48 kHz); frames in and out are at this rate.
    pub engine_rate: u32,
    /// Noise suppression (RNNoise) on received audio; needs a 48 kHz engine and adds 10 ms.
    pub denoise: bool,
    /// The `a=extmap` id (1..=14) of the RFC 6464 audio level extension: written on what
    /// we send, and read on what we receive (RFC 8285: one mapping serves both
    /// directions). See [`MediaLeg::header_level`].
    pub audio_level_extension: Option<u8>,
    /// Our RTCP CNAME (at most 255 bytes).
    pub cname: String,
    /// The nominal RTCP report interval (RFC 3550's minimum is 5 s).
    pub rtcp_interval: Duration,
    /// The wall-clock (NTP) time at the `now` given to [`MediaLeg::new`], for sender
    /// reports. The shell reads it from the system clock; only lip sync across streams
    /// depends on it being right.
    pub ntp_at_start: NtpTime,
    /// Jitter buffer settings; its `clock_rate` and `frame_ms` are set by the leg.
    pub jitter: JitterConfig,
}

impl Default for LegConfig {
    fn default() -> Self {
        LegConfig {
            codec: Codec::Opus(OpusParams::default()),
            telephone_event: None,
            local_ssrc: None,
            initial_seq: None,
            initial_timestamp: None,
            frame_ms: 20,
            ptime_ms: None,
            engine_rate: 48_000,
            denoise: false,
            audio_level_extension: None,
            cname: "confer".to_owned(),
            rtcp_interval: Duration::from_secs(5),
            // 2023-11-14: any fixed point works for RTT; see the field's docs.
            ntp_at_start: NtpTime::from_unix(Duration::from_secs(1_700_000_000)),
            jitter: JitterConfig::default(),
        }
    }
}

/// Why a datagram was rejected, or why a call failed.
///
/// The first group is the peer's fault (count and drop; [`LegError::is_peer_error`]), the
/// second the caller's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LegError {
    /// An empty datagram.
    #[error("empty datagram")]
    Empty,
    /// A datagram larger than [`MAX_DATAGRAM`].
    #[error("datagram of {0} bytes exceeds the {MAX_DATAGRAM}-byte maximum")]
    TooLarge(usize),
    /// The first byte does not have RTP version 2 (STUN, DTLS, or noise).
    #[error("not RTP or RTCP (first byte {0:#04x})")]
    NotRtp(u8),
    /// A malformed RTP packet.
    #[error("malformed RTP: {0}")]
    Rtp(#[from] RtpError),
    /// A malformed compound RTCP packet.
    #[error("malformed RTCP: {0}")]
    Rtcp(#[from] RtcpError),
    /// SRTP/SRTCP rejected the packet (authentication, replay, framing), or protecting ours
    /// failed.
    #[error("SRTP: {0}")]
    Srtp(#[from] SrtpError),
    /// A payload type that was not negotiated.
    #[error("payload type {0} was not negotiated")]
    UnknownPayloadType(PayloadType),
    /// A malformed telephone-event payload.
    #[error("telephone-event: {0}")]
    TelephoneEvent(#[from] TelephoneEventError),
    /// The jitter buffer refused the packet (payload larger than its maximum).
    #[error("jitter buffer: {0}")]
    Jitter(#[from] JitterError),
    /// Caller: the configuration is unusable.
    #[error("bad leg configuration: {0}")]
    BadConfig(&'static str),
    /// Caller: [`LegConfig::ptime_ms`] is not a whole number of frames, or is longer than
    /// [`MAX_PTIME_MS`].
    #[error(
        "packet time of {ptime_ms} ms: it must be a multiple of the {frame_ms} ms frame, at most {MAX_PTIME_MS} ms"
    )]
    BadPtime {
        /// The packet time asked for.
        ptime_ms: u32,
        /// The leg's frame duration.
        frame_ms: u32,
    },
    /// Caller: a payload given to [`MediaLeg::send_payload`], on a leg that gathers several
    /// frames per packet, that is not one frame of the leg's codec and frame duration (or
    /// is larger than [`MAX_ENCODED_PAYLOAD`]).
    #[error("payload cannot join a packet of several frames: {0}")]
    BadPayload(&'static str),
    /// Caller: a PCM frame of the wrong length.
    #[error("frame of {got} samples, the leg works in frames of {expected}")]
    BadFrame {
        /// Samples per engine frame.
        expected: usize,
        /// Samples passed.
        got: usize,
    },
    /// Caller: the output buffer is too small for the packet.
    #[error("output buffer of {available} bytes, {needed} needed")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// A codec, resampler or filter failed (encoding our audio, or an internal error).
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
}

impl LegError {
    /// True when the peer (or the network) is at fault: the datagram was counted and
    /// dropped and the leg carries on.
    pub fn is_peer_error(&self) -> bool {
        matches!(
            self,
            LegError::Empty
                | LegError::TooLarge(_)
                | LegError::NotRtp(_)
                | LegError::Rtp(_)
                | LegError::Rtcp(_)
                | LegError::Srtp(_)
                | LegError::UnknownPayloadType(_)
                | LegError::TelephoneEvent(_)
                | LegError::Jitter(JitterError::PayloadTooLarge(_))
        )
    }
}

/// Rejected datagrams by cause.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegErrorCounts {
    /// Empty, oversized, or not version 2.
    pub not_rtp: u64,
    /// Malformed RTP.
    pub malformed_rtp: u64,
    /// Malformed RTCP.
    pub malformed_rtcp: u64,
    /// SRTP or SRTCP authentication failures.
    pub srtp_auth_failed: u64,
    /// SRTP or SRTCP replays.
    pub srtp_replayed: u64,
    /// Other SRTP or SRTCP rejections (truncated, malformed header, unencrypted SRTCP).
    pub srtp_malformed: u64,
    /// Payload types that were not negotiated.
    pub unknown_payload_type: u64,
    /// Malformed telephone-event payloads.
    pub malformed_telephone_event: u64,
    /// Payloads too large for the jitter buffer.
    pub payload_too_large: u64,
    /// Anything else (not expected from the network).
    pub other: u64,
}

impl LegErrorCounts {
    /// All rejected datagrams.
    pub fn total(&self) -> u64 {
        self.not_rtp
            + self.malformed_rtp
            + self.malformed_rtcp
            + self.srtp_auth_failed
            + self.srtp_replayed
            + self.srtp_malformed
            + self.unknown_payload_type
            + self.malformed_telephone_event
            + self.payload_too_large
            + self.other
    }

    fn count(&mut self, e: &LegError) {
        let slot = match e {
            LegError::Empty | LegError::TooLarge(_) | LegError::NotRtp(_) => &mut self.not_rtp,
            LegError::Rtp(_) => &mut self.malformed_rtp,
            LegError::Rtcp(_) => &mut self.malformed_rtcp,
            LegError::Srtp(SrtpError::AuthenticationFailed) => &mut self.srtp_auth_failed,
            LegError::Srtp(SrtpError::Replay) => &mut self.srtp_replayed,
            LegError::Srtp(_) => &mut self.srtp_malformed,
            LegError::UnknownPayloadType(_) => &mut self.unknown_payload_type,
            LegError::TelephoneEvent(_) => &mut self.malformed_telephone_event,
            LegError::Jitter(JitterError::PayloadTooLarge(_)) => &mut self.payload_too_large,
            _ => &mut self.other,
        };
        *slot += 1;
    }
}

/// Valid packets that were deliberately not used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropCounts {
    /// Sequence number far from the expected one (probable restart, awaiting confirmation).
    pub sequence_jumps: u64,
    /// First packets of a new SSRC awaiting confirmation by a second one.
    pub source_pending: u64,
    /// Packets of the SSRC a source change replaced, within [`RETIRED_FOR`].
    pub stale_source: u64,
    /// Telephone-events from an SSRC other than the active source.
    pub foreign_source: u64,
}

/// Why a valid packet was not used (see [`DropCounts`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Far from the expected sequence number.
    SequenceJump,
    /// A new SSRC, held until a second packet confirms it.
    SourcePending,
    /// The SSRC a source change replaced, within [`RETIRED_FOR`].
    StaleSource,
    /// A telephone-event from an SSRC other than the active source.
    ForeignSource,
}

/// What [`MediaLeg::handle_datagram`] did with a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// An audio packet, and what the jitter buffer did with it.
    Audio(PushOutcome),
    /// A telephone-event packet; `events` events were queued for [`MediaLeg::poll_event`].
    TelephoneEvent {
        /// Events this packet produced.
        events: usize,
    },
    /// An RTCP compound packet.
    Rtcp(RtcpSummary),
    /// A valid RTP packet that was not used.
    Dropped(DropReason),
}

/// What an RTCP compound packet contained that matters to the leg.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtcpSummary {
    /// A sender report from the active source.
    pub sender_report: bool,
    /// The round-trip time from a report block about our stream.
    pub rtt: Option<Duration>,
    /// The active source said BYE.
    pub bye: bool,
}

/// Something the owner of the leg should know about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegEvent {
    /// A telephone-event (DTMF digit) started or ended.
    Dtmf(ReceivedEvent),
    /// The peer's stream started, or changed SSRC (restart, re-INVITE, transfer).
    NewSource {
        /// The SSRC played before, if any.
        previous: Option<Ssrc>,
        /// The SSRC played from now on.
        ssrc: Ssrc,
    },
    /// The active source sent an RTCP BYE.
    Bye(Ssrc),
}

/// What one [`MediaLeg::poll_frame`] produced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FrameInfo {
    /// Codec-rate samples decoded from packets (FEC included).
    pub decoded: usize,
    /// Codec-rate samples concealed (loss or underrun).
    pub concealed: usize,
    /// No stream yet: the frame is silence.
    pub idle: bool,
    /// The frame's RFC 6464 level, with the voice flag of `voice`.
    pub level: AudioLevel,
    /// The energy VAD's decision for the frame.
    pub voice: bool,
    /// RNNoise's voice probability (maximum over the 10 ms sub-frames) when denoising.
    pub vad_probability: Option<f32>,
    /// Calls into the decoder (decode, FEC, concealment); 0 for a skipped frame.
    pub decoder_calls: u32,
}

/// Counters and state of a leg.
#[derive(Debug, Clone, PartialEq)]
pub struct LegStats {
    /// Our SSRC.
    pub local_ssrc: Ssrc,
    /// The SSRC being played.
    pub remote_ssrc: Option<Ssrc>,
    /// RTP datagrams accepted (after SRTP), any payload type.
    pub rtp_packets_received: u64,
    /// Bytes of those datagrams.
    pub rtp_bytes_received: u64,
    /// RTCP datagrams accepted.
    pub rtcp_packets_received: u64,
    /// RTP packets sent.
    pub rtp_packets_sent: u64,
    /// Bytes of those packets (as sent, SRTP tag included).
    pub rtp_bytes_sent: u64,
    /// RTCP compound packets sent.
    pub rtcp_packets_sent: u64,
    /// Frames Opus DTX suppressed.
    pub dtx_frames: u64,
    /// Frames gathered for a packet of several frames that never went out: dropped by
    /// [`MediaLeg::skip_frame`], or in a packet that could not be written.
    pub unsent_frames: u64,
    /// RFC 3550 packets expected from the active source.
    pub packets_expected: u64,
    /// RFC 3550 cumulative loss of the active source (negative with duplicates).
    pub packets_lost: i64,
    /// RFC 3550 interarrival jitter of the active source, in ms.
    pub jitter_ms: f64,
    /// Round-trip time from the latest report block about our stream.
    pub rtt: Option<Duration>,
    /// The latest report block the peer sent about our stream.
    pub remote_report: Option<ReportBlock>,
    /// Source changes (not counting the first source).
    pub source_changes: u64,
    /// DTMF events queued (starts and ends).
    pub dtmf_events: u64,
    /// The active source sent BYE.
    pub bye_received: bool,
    /// Events dropped because nobody polled them.
    pub events_dropped: u64,
    /// Valid packets not used, by reason.
    pub dropped: DropCounts,
    /// Rejected datagrams, by cause.
    pub errors: LegErrorCounts,
    /// The jitter buffer's counters and delay.
    pub jitter_buffer: JitterStats,
    /// The SRTP receiver's counters, with SRTP.
    pub srtp: Option<SrtpCounters>,
    /// Frames produced by decoding ([`MediaLeg::poll_frame`]).
    pub frames_decoded: u64,
    /// Frames advanced without decoding ([`MediaLeg::poll_skip`]).
    pub frames_skipped: u64,
    /// Audio packets received with the RFC 6464 audio level extension.
    pub header_levels_received: u64,
}

/// The codecs a leg can decode, without dynamic dispatch.
enum LegDecoder {
    /// The decoder, and the mode of the last packet it decoded or skipped (libopus ignores
    /// FEC after a CELT-only packet; mirrored so that a skip answers as a decode would).
    Opus(OpusDecoder, Option<OpusMode>),
    G711(Box<G711Decoder>),
}

impl LegDecoder {
    fn note_mode(&mut self, payload: &[u8]) {
        if let LegDecoder::Opus(_, mode) = self {
            *mode = opus::parse_packet(payload).ok().map(|p| p.mode);
        }
    }
}

impl AudioDecoder for LegDecoder {
    fn sample_rate(&self) -> u32 {
        match self {
            LegDecoder::Opus(d, _) => d.sample_rate(),
            LegDecoder::G711(d) => d.sample_rate(),
        }
    }

    fn samples_in(&self, payload: &[u8]) -> Result<usize, CodecError> {
        match self {
            LegDecoder::Opus(d, _) => d.samples_in(payload),
            LegDecoder::G711(d) => d.samples_in(payload),
        }
    }

    fn decode(&mut self, payload: &[u8], out: &mut [f32]) -> Result<usize, CodecError> {
        let n = match self {
            LegDecoder::Opus(d, _) => d.decode(payload, out),
            LegDecoder::G711(d) => d.decode(payload, out),
        }?;
        self.note_mode(payload);
        Ok(n)
    }

    fn decode_fec(
        &mut self,
        next_payload: &[u8],
        out: &mut [f32],
    ) -> Result<Option<usize>, CodecError> {
        let r = match self {
            LegDecoder::Opus(d, _) => d.decode_fec(next_payload, out),
            LegDecoder::G711(d) => d.decode_fec(next_payload, out),
        }?;
        if r.is_some() {
            self.note_mode(next_payload);
        }
        Ok(r)
    }

    fn conceal(&mut self, out: &mut [f32]) -> Result<usize, CodecError> {
        match self {
            LegDecoder::Opus(d, _) => d.conceal(out),
            LegDecoder::G711(d) => d.conceal(out),
        }
    }
}

impl SkipDecoder for LegDecoder {
    fn skip(&mut self, payload: &[u8]) -> Result<usize, CodecError> {
        let n = self.samples_in(payload)?;
        self.note_mode(payload);
        Ok(n)
    }

    fn skip_fec(
        &mut self,
        next_payload: &[u8],
        missing: usize,
    ) -> Result<Option<usize>, CodecError> {
        let LegDecoder::Opus(d, last_mode) = self else {
            // G.711 has no FEC.
            return Ok(None);
        };
        // `OpusDecoder::decode_fec`'s rules: a gap of whole 2.5 ms steps up to 120 ms,
        // FEC in the packet, not after a CELT-only packet, at least one frame long.
        let quantum = d.sample_rate() as usize / 400;
        if missing == 0 || !missing.is_multiple_of(quantum) || missing > d.max_frame_samples() {
            return Err(CodecError::BadFrameSize {
                got: missing,
                rule: "a multiple of 2.5 ms, at most 120 ms",
            });
        }
        let info = opus::parse_packet(next_payload)?;
        let usable = info.has_fec()
            && *last_mode != Some(OpusMode::Celt)
            && missing >= info.samples_per_frame(d.sample_rate());
        if !usable {
            return Ok(None);
        }
        *last_mode = Some(info.mode);
        Ok(Some(missing))
    }

    fn reset(&mut self) {
        match self {
            LegDecoder::Opus(d, mode) => {
                // A reset of a valid decoder state does not fail; if it did, the decoder
                // would go on from its old state, which is what skipping leaves anyway.
                let _ = d.reset();
                *mode = None;
            }
            LegDecoder::G711(d) => SkipDecoder::reset(&mut **d),
        }
    }
}

/// The codecs a leg can encode.
enum LegEncoder {
    Opus(Box<OpusEncoder>),
    G711(G711Encoder),
}

impl LegEncoder {
    fn encode(&mut self, pcm: &[f32], out: &mut [u8]) -> Result<usize, CodecError> {
        match self {
            LegEncoder::Opus(e) => e.encode(pcm, out),
            LegEncoder::G711(e) => e.encode(pcm, out),
        }
    }
}

/// The frames of the packet being gathered, when a packet holds several frames (see the
/// module docs, *Packet time*). Every buffer is allocated with the leg.
struct Gather {
    /// Frames per packet (2 or more).
    frames: usize,
    /// The gathered frames' payloads, back to back.
    data: Box<[u8]>,
    /// End of each gathered frame in `data`.
    ends: Box<[usize]>,
    /// Frames gathered so far.
    count: usize,
    /// Opus: the TOC byte of the gathered frames without its frame-count code; a frame must
    /// match it to join them.
    toc: u8,
    /// RTP timestamp of the first gathered frame: the packet's.
    first_ts: u32,
    /// Timestamp and send time of the latest gathered frame (the sender report's clock).
    last: (u32, Instant),
    /// The frames' summed linear power and voice flag, for the packet's RFC 6464 level;
    /// `None` when a frame came without a level.
    level: Option<(f64, bool)>,
    /// Opus: libopus's repacketizer, and the packet it writes.
    repacketizer: Option<::opus::Repacketizer>,
    packed: Box<[u8]>,
}

impl Gather {
    /// Whether a frame of `len` bytes with TOC `toc` can join the gathered ones.
    fn fits(&self, len: usize, toc: u8) -> bool {
        let Some(last) = self.count.checked_sub(1) else {
            return true;
        };
        if self.repacketizer.is_none() {
            // G.711 frames have one size, and `data` holds a packet of them.
            return true;
        }
        // A code 3 packet: TOC, frame count, a length of at most 2 bytes per frame, the
        // frames without their own TOC bytes (so this bound is not tight).
        toc == self.toc && self.ends[last] + len + 2 + 2 * (self.count + 1) <= self.packed.len()
    }

    /// Adds a frame (checked by `fits`, or the first of a packet).
    fn push(&mut self, payload: &[u8], toc: u8, ts: u32, now: Instant, level: Option<AudioLevel>) {
        let start = match self.count.checked_sub(1) {
            Some(last) => self.ends[last],
            None => {
                self.first_ts = ts;
                self.toc = toc;
                self.level = Some((0.0, false));
                0
            }
        };
        let end = start + payload.len();
        self.data[start..end].copy_from_slice(payload);
        self.ends[self.count] = end;
        self.count += 1;
        self.last = (ts, now);
        self.level = self.level.zip(level).map(|((power, voice), l)| {
            (
                power + 10f64.powf(-f64::from(l.level()) / 10.0),
                voice || l.voice(),
            )
        });
    }

    /// The packet's RFC 6464 level: the mean power of its frames.
    fn packet_level(&self) -> Option<AudioLevel> {
        let (power, voice) = self.level?;
        let mean = power / self.count.max(1) as f64;
        Some(AudioLevel::from_dbov((10.0 * mean.log10()) as f32, voice))
    }

    /// The payload of the gathered frames as one packet.
    fn payload(&mut self) -> Result<&[u8], LegError> {
        let Some(last) = self.count.checked_sub(1) else {
            return Ok(&[]);
        };
        let used = self.ends[last];
        let rp = match &mut self.repacketizer {
            // G.711 (frames back to back), or a lone Opus frame as it was encoded.
            None => return Ok(&self.data[..used]),
            Some(_) if self.count == 1 => return Ok(&self.data[..used]),
            Some(rp) => rp,
        };
        let mut state = rp.begin();
        let mut start = 0;
        for &end in &self.ends[..self.count] {
            state.cat(&self.data[start..end]).map_err(opus_error)?;
            start = end;
        }
        let n = state.out(&mut self.packed).map_err(opus_error)?;
        Ok(&self.packed[..n])
    }

    fn clear(&mut self) {
        self.count = 0;
    }
}

fn opus_error(e: ::opus::Error) -> LegError {
    LegError::Codec(e.into())
}

/// The packet time (for [`LegConfig::ptime_ms`]) to send to a peer that asks for `wanted_ms`
/// (its `a=ptime`, or `a=maxptime` when that is lower) on a leg whose frame clock is
/// `frame_ms`: the longest whole number of frames within `wanted_ms` and [`MAX_PTIME_MS`],
/// at least one frame. `fit_packet_time(20, 30)` is 20, `fit_packet_time(10, 30)` is 30,
/// `fit_packet_time(20, 200)` is 120.
pub fn fit_packet_time(frame_ms: u32, wanted_ms: u32) -> u32 {
    let frame = frame_ms.max(1);
    (wanted_ms.min(MAX_PTIME_MS) / frame).max(1) * frame
}

/// The peer's stream being played.
struct Source {
    ssrc: Ssrc,
    seq: SeqExtender,
    ts: TimestampExtender,
    stats: ReceiverStats,
    /// Highest extended timestamp and when it arrived: the source's media clock, for the
    /// telephone-event timeout.
    latest: Option<(RtpTime, Instant)>,
}

impl Source {
    fn new(ssrc: Ssrc, rate: ClockRate) -> Self {
        Source {
            ssrc,
            seq: SeqExtender::new(),
            ts: TimestampExtender::new(),
            stats: ReceiverStats::new(ssrc, rate),
            latest: None,
        }
    }
}

/// The first packet of a candidate new source, held until a second confirms it.
struct Pending {
    ssrc: Option<Ssrc>,
    seq: u16,
    timestamp: u32,
    marker: bool,
    payload_type: PayloadType,
    arrival: Instant,
    datagram_len: usize,
    level: Option<AudioLevel>,
    /// Payload length, `None` when it did not fit `data` (it is then not played).
    len: Option<usize>,
    data: Box<[u8]>,
}

/// One RTP packet's fields, detached from its buffer.
#[derive(Clone, Copy)]
struct RtpMeta {
    payload_type: PayloadType,
    marker: bool,
    seq: u16,
    timestamp: u32,
    datagram_len: usize,
    /// The RFC 6464 level it carried.
    level: Option<AudioLevel>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    rtp_received: u64,
    rtp_bytes_received: u64,
    rtcp_received: u64,
    rtp_sent: u64,
    rtp_bytes_sent: u64,
    rtcp_sent: u64,
    dtx_frames: u64,
    unsent_frames: u64,
    source_changes: u64,
    dtmf_events: u64,
    events_dropped: u64,
    dropped: DropCounts,
    errors: LegErrorCounts,
    frames_decoded: u64,
    frames_skipped: u64,
    header_levels: u64,
}

/// One RTP session with a peer. See the module docs for the drive contract.
pub struct MediaLeg {
    codec: Codec,
    telephone_event: Option<PayloadType>,
    codec_rate: ClockRate,
    /// Samples per frame at the codec rate and at the engine rate.
    codec_frame: usize,
    engine_frame: usize,
    frame_ms: u32,
    srtp: Option<SrtpSession>,

    // Receive.
    rx_buf: Vec<u8>,
    source: Option<Source>,
    /// The SSRC the last source change replaced, and until when its packets are stale.
    retired: Option<(Ssrc, Instant)>,
    pending: Pending,
    /// The next audio packet restarts the jitter buffer's sequence (source change/restart).
    resync_next: bool,
    bye_received: bool,
    jb: JitterBuffer<LegDecoder>,
    rx_codec: Vec<f32>,
    rx_resampler: Resampler,
    denoiser: Option<Box<Denoiser>>,
    denoise_out: Vec<f32>,
    rx_vad: Vad,
    /// The RFC 6464 level of the latest audio packet that carried one, and its arrival.
    rx_level: Option<(AudioLevel, Instant)>,
    /// Audio packets in a row without the level extension since then.
    rx_without_level: u32,
    /// The last frame was skipped, not decoded: the resampler's history is stale.
    skipping: bool,
    dtmf: TelephoneEventReceiver,
    events: VecDeque<LegEvent>,

    // Send.
    encoder: LegEncoder,
    dtx: bool,
    tx_resampler: Resampler,
    tx_codec: Vec<f32>,
    tx_payload: Vec<u8>,
    tx_plain: Vec<u8>,
    tx_vad: Vad,
    /// The packet being gathered when a packet holds several frames; `None` for one
    /// frame per packet.
    gather: Option<Box<Gather>>,
    audio_level_extension: Option<u8>,
    local_ssrc: Ssrc,
    next_seq: u16,
    next_ts: u32,
    marker_next: bool,
    sender: SenderStats,
    /// Timestamp and time of the last packet sent (for the SR's RTP timestamp).
    last_sent: Option<(u32, Instant)>,

    // RTCP.
    rng: ChaCha8Rng,
    cname: Vec<u8>,
    rtcp_interval: Duration,
    next_rtcp: Instant,
    start: Instant,
    ntp_at_start: NtpTime,
    rtt: Option<Duration>,
    remote_report: Option<ReportBlock>,

    counters: Counters,
}

impl std::fmt::Debug for MediaLeg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaLeg")
            .field("codec", &self.codec)
            .field("local_ssrc", &self.local_ssrc)
            .field("remote_ssrc", &self.source.as_ref().map(|s| s.ssrc))
            .field("srtp", &self.srtp.is_some())
            .finish_non_exhaustive()
    }
}

/// An RTCP fraction lost (loss in 1/256ths) in percent, rounded up so that any loss
/// counts.
fn loss_percent(fraction_lost: u8) -> u8 {
    // At most 100: fits.
    (u16::from(fraction_lost) * 100).div_ceil(256) as u8
}

impl MediaLeg {
    /// Builds a leg. `srtp` protects both directions when given; `rng` draws our SSRC and
    /// initial sequence number and timestamp (use a cryptographic RNG in production: they
    /// should not be guessable) and seeds the RTCP timer; `now` is the leg's start (RTCP
    /// timing, NTP anchor).
    pub fn new(
        config: LegConfig,
        srtp: Option<SrtpSession>,
        rng: &mut impl RngCore,
        now: Instant,
    ) -> Result<Self, LegError> {
        validate(&config)?;
        // Identifiers straight from the caller's RNG; the leg's own generator only jitters
        // the RTCP interval (not security-relevant).
        let local_ssrc = config.local_ssrc.unwrap_or_else(|| Ssrc(rng.random()));
        let next_seq = config.initial_seq.unwrap_or_else(|| rng.random());
        let next_ts = config.initial_timestamp.unwrap_or_else(|| rng.random());
        let rng = ChaCha8Rng::from_rng(rng);
        let codec_rate = config.codec.clock_rate();
        let codec_hz = codec_rate.hz();
        let codec_frame = (codec_hz / 1000 * config.frame_ms) as usize;
        let engine_frame = (config.engine_rate / 1000 * config.frame_ms) as usize;

        let (decoder, encoder, dtx) = match config.codec {
            Codec::Opus(p) => {
                let enc = OpusEncoder::new(OpusEncoderConfig {
                    sample_rate: codec_hz,
                    bitrate_bps: p.bitrate_bps,
                    inband_fec: p.fec,
                    dtx: p.dtx,
                    // Raised when the peer reports loss (`on_rtcp`).
                    expected_loss_percent: if p.fec { p.expected_loss_percent } else { 0 },
                    frame_ms: config.frame_ms,
                    complexity: p.complexity,
                    // What a leg sends is a mix: CELT until the peer reports loss.
                    signal: OpusSignal::MusicUntilLoss,
                    ..OpusEncoderConfig::default()
                })?;
                (
                    LegDecoder::Opus(OpusDecoder::new(codec_hz)?, None),
                    LegEncoder::Opus(Box::new(enc)),
                    p.dtx,
                )
            }
            Codec::Pcmu | Codec::Pcma => {
                let law = if config.codec == Codec::Pcmu {
                    G711Law::Ulaw
                } else {
                    G711Law::Alaw
                };
                (
                    LegDecoder::G711(Box::new(G711Decoder::new(law))),
                    LegEncoder::G711(G711Encoder::new(law, config.frame_ms)?),
                    false,
                )
            }
        };
        let frames_per_packet = config
            .ptime_ms
            .map_or(1, |p| (p / config.frame_ms) as usize);
        let gather = if frames_per_packet > 1 {
            let (capacity, repacketizer) = match config.codec {
                Codec::Opus(_) => (
                    MAX_ENCODED_PAYLOAD,
                    Some(::opus::Repacketizer::new().map_err(opus_error)?),
                ),
                // One byte per sample; within MAX_ENCODED_PAYLOAD at MAX_PTIME_MS.
                Codec::Pcmu | Codec::Pcma => (codec_frame * frames_per_packet, None),
            };
            Some(Box::new(Gather {
                frames: frames_per_packet,
                data: vec![0; capacity].into_boxed_slice(),
                ends: vec![0; frames_per_packet].into_boxed_slice(),
                count: 0,
                toc: 0,
                first_ts: 0,
                last: (0, now),
                level: None,
                repacketizer,
                packed: vec![0; capacity].into_boxed_slice(),
            }))
        } else {
            None
        };
        let jitter_cfg = JitterConfig {
            clock_rate: codec_hz,
            frame_ms: config.frame_ms,
            ..config.jitter.clone()
        };
        let max_payload = jitter_cfg.max_payload;
        let jb = JitterBuffer::new(jitter_cfg, decoder)?;

        let mut leg = MediaLeg {
            codec: config.codec,
            telephone_event: config.telephone_event,
            codec_rate,
            codec_frame,
            engine_frame,
            frame_ms: config.frame_ms,
            srtp,
            rx_buf: vec![0; MAX_DATAGRAM],
            source: None,
            retired: None,
            pending: Pending {
                ssrc: None,
                seq: 0,
                timestamp: 0,
                marker: false,
                payload_type: config.codec.payload_type(),
                arrival: now,
                datagram_len: 0,
                level: None,
                len: None,
                data: vec![0; max_payload].into_boxed_slice(),
            },
            resync_next: false,
            bye_received: false,
            jb,
            rx_codec: vec![0.0; codec_frame],
            rx_resampler: Resampler::new(codec_hz, config.engine_rate, config.frame_ms)?,
            denoiser: config.denoise.then(|| Box::new(Denoiser::new())),
            denoise_out: vec![0.0; denoise::FRAME_SAMPLES],
            rx_vad: Vad::new(config.engine_rate, VadConfig::default())?,
            rx_level: None,
            rx_without_level: 0,
            skipping: false,
            dtmf: TelephoneEventReceiver::new(codec_hz),
            events: VecDeque::with_capacity(EVENT_QUEUE_LEN),
            encoder,
            dtx,
            tx_resampler: Resampler::new(config.engine_rate, codec_hz, config.frame_ms)?,
            tx_codec: vec![0.0; codec_frame],
            tx_payload: vec![0; MAX_ENCODED_PAYLOAD],
            tx_plain: vec![0; MAX_DATAGRAM],
            tx_vad: Vad::new(config.engine_rate, VadConfig::default())?,
            gather,
            audio_level_extension: config.audio_level_extension,
            local_ssrc,
            next_seq,
            next_ts,
            marker_next: true,
            sender: SenderStats::new(local_ssrc),
            last_sent: None,
            rng,
            cname: config.cname.into_bytes(),
            rtcp_interval: config.rtcp_interval,
            next_rtcp: now,
            start: now,
            ntp_at_start: config.ntp_at_start,
            rtt: None,
            remote_report: None,
            counters: Counters::default(),
        };
        // RFC 3550 6.2: the first report goes out after half the minimum interval.
        leg.next_rtcp = now + leg.randomised_interval() / 2;
        Ok(leg)
    }

    /// Our SSRC.
    pub fn local_ssrc(&self) -> Ssrc {
        self.local_ssrc
    }

    /// The SSRC being played, once a stream has started.
    pub fn remote_ssrc(&self) -> Option<Ssrc> {
        self.source.as_ref().map(|s| s.ssrc)
    }

    /// The codec.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Samples in every frame given to [`send_frame`](Self::send_frame) and
    /// [`poll_frame`](Self::poll_frame) (engine rate).
    pub fn frame_samples(&self) -> usize {
        self.engine_frame
    }

    /// The engine frame period (the tick of `poll_frame` and `send_frame`).
    pub fn frame_duration(&self) -> Duration {
        Duration::from_millis(u64::from(self.frame_ms))
    }

    /// The duration of the packets we send: [`LegConfig::ptime_ms`], or one frame.
    pub fn packet_duration(&self) -> Duration {
        let frames = self.gather.as_ref().map_or(1, |g| g.frames);
        self.frame_duration() * frames as u32
    }

    /// When [`poll_rtcp`](Self::poll_rtcp) will next produce a report.
    pub fn next_rtcp_at(&self) -> Instant {
        self.next_rtcp
    }

    /// The next queued event.
    pub fn poll_event(&mut self) -> Option<LegEvent> {
        self.events.pop_front()
    }

    /// Takes in one datagram from the peer that arrived at `now`. Errors are the peer's
    /// (see [`LegError::is_peer_error`]); each is counted in [`LegStats::errors`].
    pub fn handle_datagram(&mut self, datagram: &[u8], now: Instant) -> Result<Received, LegError> {
        let mut buf = std::mem::take(&mut self.rx_buf);
        let r = self.demux(datagram, &mut buf, now);
        self.rx_buf = buf;
        if let Err(e) = &r {
            self.counters.errors.count(e);
        }
        r
    }

    fn demux(
        &mut self,
        datagram: &[u8],
        buf: &mut [u8],
        now: Instant,
    ) -> Result<Received, LegError> {
        if datagram.len() > MAX_DATAGRAM {
            return Err(LegError::TooLarge(datagram.len()));
        }
        match datagram {
            [] => Err(LegError::Empty),
            [b0, ..] if b0 >> 6 != 2 => Err(LegError::NotRtp(*b0)),
            [_, b1, ..] if (192..=223).contains(b1) => {
                let packets = match self.srtp.as_mut() {
                    Some(s) => s
                        .receiver
                        .unprotect_rtcp(datagram, buf)?
                        .parse(CompoundRules::ReducedSize)?,
                    None => parse_compound(datagram, CompoundRules::ReducedSize)?,
                };
                Ok(Received::Rtcp(self.on_rtcp(&packets, now)))
            }
            _ => {
                let packet = match self.srtp.as_mut() {
                    Some(s) => s.receiver.unprotect_rtp(datagram, buf)?.parse()?,
                    None => RtpPacket::parse(datagram)?,
                };
                self.on_rtp(&packet, datagram.len(), now)
            }
        }
    }

    fn on_rtp(
        &mut self,
        packet: &RtpPacket<'_>,
        datagram_len: usize,
        now: Instant,
    ) -> Result<Received, LegError> {
        let pt = packet.payload_type();
        let is_event = self.telephone_event == Some(pt);
        if pt != self.codec.payload_type() && !is_event {
            return Err(LegError::UnknownPayloadType(pt));
        }
        let meta = RtpMeta {
            payload_type: pt,
            marker: packet.marker(),
            seq: packet.sequence_number(),
            timestamp: packet.timestamp(),
            datagram_len,
            level: self
                .audio_level_extension
                .filter(|_| !is_event)
                .and_then(|id| packet.audio_level(id)),
        };
        let ssrc = packet.ssrc();
        match self.source.as_ref().map(|s| s.ssrc) {
            None => self.start_source(ssrc, now),
            Some(active) if active == ssrc => {}
            Some(_)
                if self
                    .retired
                    .is_some_and(|(r, until)| r == ssrc && now < until) =>
            {
                self.counters.dropped.stale_source += 1;
                return Ok(Received::Dropped(DropReason::StaleSource));
            }
            Some(_) if is_event => {
                // A new source proves itself with its audio.
                self.counters.dropped.foreign_source += 1;
                return Ok(Received::Dropped(DropReason::ForeignSource));
            }
            Some(_) => {
                if self.pending.ssrc != Some(ssrc) || self.pending.seq.wrapping_add(1) != meta.seq {
                    self.hold(ssrc, meta, packet.payload(), now);
                    self.counters.dropped.source_pending += 1;
                    return Ok(Received::Dropped(DropReason::SourcePending));
                }
                self.start_source(ssrc, now);
                self.play_held();
            }
        }
        self.accept(meta, packet.payload(), now)
    }

    /// Keeps the first packet of a candidate source.
    fn hold(&mut self, ssrc: Ssrc, meta: RtpMeta, payload: &[u8], now: Instant) {
        let p = &mut self.pending;
        p.ssrc = Some(ssrc);
        p.seq = meta.seq;
        p.timestamp = meta.timestamp;
        p.marker = meta.marker;
        p.payload_type = meta.payload_type;
        p.arrival = now;
        p.datagram_len = meta.datagram_len;
        p.level = meta.level;
        p.len = p.data.get_mut(..payload.len()).map(|d| {
            d.copy_from_slice(payload);
            payload.len()
        });
    }

    /// Plays the held first packet of the source just confirmed.
    fn play_held(&mut self) {
        let Some(len) = self.pending.len.take() else {
            return;
        };
        let meta = RtpMeta {
            payload_type: self.pending.payload_type,
            marker: self.pending.marker,
            seq: self.pending.seq,
            timestamp: self.pending.timestamp,
            datagram_len: self.pending.datagram_len,
            level: self.pending.level,
        };
        let arrival = self.pending.arrival;
        let data = std::mem::take(&mut self.pending.data);
        // The held packet was validated when it arrived; a jitter buffer refusal here is
        // counted like any other.
        if let Err(e) = self.accept(meta, &data[..len], arrival) {
            self.counters.errors.count(&e);
        }
        self.pending.data = data;
    }

    /// Makes `ssrc` the active source from `now`.
    fn start_source(&mut self, ssrc: Ssrc, now: Instant) {
        let previous = self.source.take().map(|s| s.ssrc);
        if let Some(old) = previous {
            self.counters.source_changes += 1;
            self.retired = Some((old, now + RETIRED_FOR));
            self.resync_next = true;
        }
        self.source = Some(Source::new(ssrc, self.codec_rate));
        // The held packet (if this source was pending) stays for `play_held`.
        self.pending.ssrc = None;
        self.bye_received = false;
        // Whether the new source sends levels is for its own packets to say.
        self.rx_level = None;
        self.rx_without_level = 0;
        self.dtmf = TelephoneEventReceiver::new(self.codec_rate.hz());
        self.push_event(LegEvent::NewSource { previous, ssrc });
    }

    /// Processes a packet of the active source.
    fn accept(
        &mut self,
        meta: RtpMeta,
        payload: &[u8],
        now: Instant,
    ) -> Result<Received, LegError> {
        let Some(src) = self.source.as_mut() else {
            // Callers start a source first; nothing to play into otherwise.
            return Ok(Received::Dropped(DropReason::ForeignSource));
        };
        let update = src.seq.extend(meta.seq);
        let ts = match update {
            SeqUpdate::Dropped => {
                self.counters.dropped.sequence_jumps += 1;
                return Ok(Received::Dropped(DropReason::SequenceJump));
            }
            SeqUpdate::Restarted(_) => {
                // The sender restarted its numbering: its timestamps restarted too.
                src.ts.reset();
                self.resync_next = true;
                src.ts.extend(meta.timestamp)
            }
            _ => src.ts.extend(meta.timestamp),
        };
        if self.telephone_event == Some(meta.payload_type) {
            // Every packet of an event carries its start timestamp: no transit to measure.
            src.stats.on_rtp_untimed(update);
        } else {
            src.stats.on_rtp(update, ts, now);
        }
        if src.latest.is_none_or(|(t, _)| ts > t) {
            src.latest = Some((ts, now));
        }
        self.counters.rtp_received += 1;
        self.counters.rtp_bytes_received += meta.datagram_len as u64;

        if self.telephone_event == Some(meta.payload_type) {
            let events = self
                .dtmf
                .handle_packet(meta.timestamp, meta.marker, payload)?;
            if let Some(seq) = update.seq() {
                // Its sequence number is not a lost audio packet.
                self.jb.push_foreign(seq.0, ts.0)?;
            }
            let mut n = 0;
            for e in events {
                self.push_event(LegEvent::Dtmf(e));
                self.counters.dtmf_events += 1;
                n += 1;
            }
            return Ok(Received::TelephoneEvent { events: n });
        }
        // The extender accepted it, so the sequence number is there.
        let Some(seq) = update.seq() else {
            return Ok(Received::Dropped(DropReason::SequenceJump));
        };
        match meta.level {
            Some(level) => {
                self.rx_level = Some((level, now));
                self.rx_without_level = 0;
                self.counters.header_levels += 1;
            }
            None => self.rx_without_level = self.rx_without_level.saturating_add(1),
        }
        let packet = JbPacket {
            seq: seq.0,
            timestamp: ts.0,
            payload,
        };
        if self.resync_next {
            self.jb.resync(packet);
            self.resync_next = false;
        }
        Ok(Received::Audio(self.jb.push(packet, now)?))
    }

    fn on_rtcp(&mut self, packets: &[RtcpPacket], now: Instant) -> RtcpSummary {
        self.counters.rtcp_received += 1;
        let arrival = self.ntp_at(now);
        let active = self.source.as_ref().map(|s| s.ssrc);
        let mut summary = RtcpSummary::default();
        for p in packets {
            let blocks: &[ReportBlock] = match p {
                RtcpPacket::SenderReport(sr) => {
                    if let Some(src) = self.source.as_mut().filter(|s| s.ssrc == sr.ssrc) {
                        src.stats.on_sender_report(sr.ntp_time, now);
                        summary.sender_report = true;
                    }
                    &sr.reports
                }
                RtcpPacket::ReceiverReport(rr) => &rr.reports,
                RtcpPacket::Bye(bye) => {
                    if let Some(ssrc) = active.filter(|a| bye.sources.contains(a)) {
                        if !self.bye_received {
                            self.push_event(LegEvent::Bye(ssrc));
                        }
                        self.bye_received = true;
                        summary.bye = true;
                    }
                    &[]
                }
                _ => &[],
            };
            for b in blocks.iter().filter(|b| b.ssrc == self.local_ssrc) {
                self.remote_report = Some(*b);
                if let (LegEncoder::Opus(e), Codec::Opus(p)) = (&mut self.encoder, self.codec)
                    && p.fec
                {
                    let loss = loss_percent(b.fraction_lost).max(p.expected_loss_percent);
                    // Both at most 100 (the floor was checked when the encoder was built).
                    let _ = e.set_expected_loss_percent(loss);
                }
                if let Some(rtt) = round_trip_time(b, arrival) {
                    self.rtt = Some(rtt);
                    summary.rtt = Some(rtt);
                }
            }
        }
        summary
    }

    fn push_event(&mut self, event: LegEvent) {
        if self.events.len() < EVENT_QUEUE_LEN {
            self.events.push_back(event);
        } else {
            self.counters.events_dropped += 1;
        }
    }

    /// The loss the peer last reported for our stream (its RTCP report block's fraction
    /// lost), in percent rounded up; `None` before its first report.
    pub fn reported_loss_percent(&self) -> Option<u8> {
        self.remote_report.map(|b| loss_percent(b.fraction_lost))
    }

    /// The loss the leg's own Opus encoder sizes its in-band FEC for, in percent; `None`
    /// for G.711 or when FEC was not negotiated.
    pub fn fec_loss_percent(&self) -> Option<u8> {
        match &self.encoder {
            LegEncoder::Opus(e) => e.fec_loss_percent(),
            LegEncoder::G711(_) => None,
        }
    }

    /// Produces the frame for the tick at `now` into `out` (exactly
    /// [`frame_samples`](Self::frame_samples) long).
    ///
    /// After [`poll_skip`](Self::poll_skip), the decoder and the resampler start afresh:
    /// the first frame plays what is left of the skipped time as silence (less than a
    /// packet), then the next packet decoded from a fresh state, as the first packet of a
    /// stream is (Opus has no prediction history yet, so its first milliseconds may come
    /// out softer); the frames after are decoded normally. Noise suppression and the VAD
    /// keep their state from before the skip and adapt within a few frames.
    pub fn poll_frame(&mut self, now: Instant, out: &mut [f32]) -> Result<FrameInfo, LegError> {
        self.poll_frame_timed(now, out, None)
    }

    /// [`poll_frame`](Self::poll_frame), lapping `timer` at its stage boundaries:
    /// [`Stage::Jitter`] (the jitter buffer; its decoder calls go to [`Stage::Decode`]),
    /// [`Stage::Decode`] (resampling), [`Stage::Denoise`], [`Stage::Vad`].
    pub fn poll_frame_timed(
        &mut self,
        now: Instant,
        out: &mut [f32],
        timer: Option<&mut StageTimer>,
    ) -> Result<FrameInfo, LegError> {
        self.poll_frame_with(now, out, timer, true)
    }

    /// Decodes the frame for the tick at `now` into `out` without noise suppression or
    /// VAD: for a frame decoded only to keep the decoder warm (a room's challenger, not
    /// mixed yet). The denoiser and VAD keep their state and adapt within a few frames
    /// once full polls resume. The returned level is silence, the voice flag false.
    pub fn poll_frame_warm(
        &mut self,
        now: Instant,
        out: &mut [f32],
        timer: Option<&mut StageTimer>,
    ) -> Result<FrameInfo, LegError> {
        self.poll_frame_with(now, out, timer, false)
    }

    fn poll_frame_with(
        &mut self,
        now: Instant,
        out: &mut [f32],
        mut timer: Option<&mut StageTimer>,
        full: bool,
    ) -> Result<FrameInfo, LegError> {
        if out.len() != self.engine_frame {
            return Err(LegError::BadFrame {
                expected: self.engine_frame,
                got: out.len(),
            });
        }
        if self.skipping {
            self.skipping = false;
            self.rx_resampler.reset();
        }
        let pop = match timer.as_deref_mut() {
            Some(t) => self.jb.pop_timed(now, &mut self.rx_codec, t)?,
            None => self.jb.pop(now, &mut self.rx_codec)?,
        };
        // Playout times are not used here; draining keeps the buffer's record short.
        self.jb.drain_played();
        lap(&mut timer, Stage::Jitter);
        self.rx_resampler.process(&self.rx_codec, out)?;
        lap(&mut timer, Stage::Decode);
        if !full {
            self.poll_dtmf_timeout(now);
            self.counters.frames_decoded += 1;
            return Ok(FrameInfo {
                decoded: pop.decoded,
                concealed: pop.concealed,
                idle: pop.idle,
                level: AudioLevel::SILENCE,
                voice: false,
                vad_probability: None,
                decoder_calls: pop.decoder_calls,
            });
        }
        let mut vad_probability = None;
        if let Some(dn) = self.denoiser.as_mut() {
            let mut p = 0.0f32;
            for chunk in out.chunks_exact_mut(denoise::FRAME_SAMPLES) {
                p = p.max(dn.process(chunk, &mut self.denoise_out)?);
                chunk.copy_from_slice(&self.denoise_out);
            }
            vad_probability = Some(p);
            lap(&mut timer, Stage::Denoise);
        }
        let decision = self.rx_vad.process(out);
        self.poll_dtmf_timeout(now);
        self.counters.frames_decoded += 1;
        lap(&mut timer, Stage::Vad);
        Ok(FrameInfo {
            decoded: pop.decoded,
            concealed: pop.concealed,
            idle: pop.idle,
            level: AudioLevel::from_dbov(decision.level_dbov, decision.voice),
            voice: decision.voice,
            vad_probability,
            decoder_calls: pop.decoder_calls,
        })
    }

    /// Lets the tick at `now` pass without decoding: the jitter buffer follows its
    /// schedule exactly as [`poll_frame`](Self::poll_frame) would (packets leave at their
    /// playout time; played, late, lost, DTX and FEC are counted the same), but nothing is
    /// decoded, resampled, denoised or analysed, and no audio comes out. For participants
    /// a room will not mix; see [`JitterBuffer::pop_skip`]. The frame's `level` and
    /// `voice` are the peer's [`header_level`](Self::header_level) (silence without one);
    /// `vad_probability` is `None`. Laps `timer` once, as [`Stage::Jitter`].
    pub fn poll_skip(&mut self, now: Instant, mut timer: Option<&mut StageTimer>) -> FrameInfo {
        let pop = self.jb.pop_skip(now);
        self.jb.drain_played();
        self.skipping = true;
        self.poll_dtmf_timeout(now);
        self.counters.frames_skipped += 1;
        let level = self.header_level(now).unwrap_or(AudioLevel::SILENCE);
        lap(&mut timer, Stage::Jitter);
        FrameInfo {
            decoded: pop.decoded,
            concealed: pop.concealed,
            idle: pop.idle,
            level,
            voice: level.voice() && !pop.idle,
            vad_probability: None,
            decoder_calls: 0,
        }
    }

    /// The RFC 6464 audio level the peer puts in its packets (client to mixer), so that
    /// who speaks can be decided without decoding: the level and voice flag of the latest
    /// audio packet that carried one, or [`AudioLevel::SILENCE`] when that packet arrived
    /// more than [`HEADER_LEVEL_MAX_AGE`] before `now` (a pause, DTX, a frozen network).
    ///
    /// `None` when the peer does not send levels: no extension id configured
    /// ([`LegConfig::audio_level_extension`]), none received from the current source, or
    /// none in its last [`HEADER_LEVEL_ABSENT_AFTER`] audio packets. A peer that declares
    /// `vad=off` (RFC 6464 section 4: the V flag is not used) reads as never talking.
    pub fn header_level(&self, now: Instant) -> Option<AudioLevel> {
        let (level, at) = self.rx_level?;
        if self.rx_without_level >= HEADER_LEVEL_ABSENT_AFTER {
            return None;
        }
        if now.saturating_duration_since(at) > HEADER_LEVEL_MAX_AGE {
            return Some(AudioLevel::SILENCE);
        }
        Some(level)
    }

    /// Audio buffered in the jitter buffer ahead of playout.
    pub fn jitter_buffer_delay(&self) -> Duration {
        self.jb.current_delay()
    }

    /// Ends a telephone-event whose end packets were lost, on the source's media clock
    /// (its latest timestamp advanced by the time since it arrived).
    fn poll_dtmf_timeout(&mut self, now: Instant) {
        if self.dtmf.poll_timeout().is_none() {
            return;
        }
        let Some((ts, at)) = self.source.as_ref().and_then(|s| s.latest) else {
            return;
        };
        let elapsed = self
            .codec_rate
            .duration_to_ticks(now.saturating_duration_since(at));
        // RTP time is modulo 2^32; the receiver compares it with serial arithmetic.
        let media_now = ts.wire().wrapping_add(elapsed as u32);
        if let Some(e) = self.dtmf.handle_timeout(media_now) {
            self.push_event(LegEvent::Dtmf(e));
            self.counters.dtmf_events += 1;
        }
    }

    /// Encodes and packetizes one engine-rate frame sent at `now` into `out`; returns the
    /// packet length, or 0 when no packet goes out this tick: Opus DTX suppressed the frame,
    /// or the frame was gathered into a packet of several frames ([`LegConfig::ptime_ms`];
    /// that packet goes out with its last frame). An error means the packet that could not
    /// be written is lost; the frame's time has passed.
    pub fn send_frame(
        &mut self,
        pcm: &[f32],
        now: Instant,
        out: &mut [u8],
    ) -> Result<usize, LegError> {
        self.send_frame_timed(pcm, now, out, None)
    }

    /// [`send_frame`](Self::send_frame), lapping `timer`: [`Stage::Encode`] after
    /// resampling, encoding and the level of the frame, [`Stage::Send`] after packetizing.
    pub fn send_frame_timed(
        &mut self,
        pcm: &[f32],
        now: Instant,
        out: &mut [u8],
        mut timer: Option<&mut StageTimer>,
    ) -> Result<usize, LegError> {
        if pcm.len() != self.engine_frame {
            return Err(LegError::BadFrame {
                expected: self.engine_frame,
                got: pcm.len(),
            });
        }
        self.tx_resampler.process(pcm, &mut self.tx_codec)?;
        let n = self.encoder.encode(&self.tx_codec, &mut self.tx_payload)?;
        let decision = self.tx_vad.process(pcm);
        let level = AudioLevel::from_dbov(decision.level_dbov, decision.voice);
        lap(&mut timer, Stage::Encode);
        // Taken out for the call (an empty `Vec` does not allocate) and put back.
        let payload = std::mem::take(&mut self.tx_payload);
        let r = self.send_encoded(&payload[..n], Some(level), now, out);
        self.tx_payload = payload;
        lap(&mut timer, Stage::Send);
        r
    }

    /// Packetizes (and protects) one frame's payload that was encoded elsewhere (a mix
    /// encoded once for many listeners) with this leg's SSRC, sequence number and
    /// timestamp, sent at `now`, into `out`; returns the packet length, or 0 when no packet
    /// goes out this tick: an Opus DTX frame (1-2 bytes) on a leg with DTX, or a frame
    /// gathered into a packet of several frames ([`LegConfig::ptime_ms`]).
    ///
    /// The payload must be one frame of this leg's codec and frame duration, encoded with
    /// its negotiated settings. With one frame per packet the leg cannot check that; when
    /// it gathers frames it must read them, and refuses ([`LegError::BadPayload`], nothing
    /// advanced) a payload that is not one frame's duration of Opus, or not one frame of
    /// G.711 samples. No audio level extension is written: the leg never saw the PCM.
    pub fn send_payload(
        &mut self,
        payload: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> Result<usize, LegError> {
        self.send_encoded(payload, None, now, out)
    }

    /// One frame's payload: packetized at once, or gathered.
    fn send_encoded(
        &mut self,
        payload: &[u8],
        level: Option<AudioLevel>,
        now: Instant,
        out: &mut [u8],
    ) -> Result<usize, LegError> {
        // Taken out for the call (moving a `Box` does not allocate) and put back.
        let Some(mut gather) = self.gather.take() else {
            return self.packetize(payload, level, now, out);
        };
        let r = self.gather_frame(&mut gather, payload, level, now, out);
        self.gather = Some(gather);
        r
    }

    /// The send path after encoding, one frame per packet: DTX suppression, RTP header,
    /// SRTP, counters. The frame's time passes whether or not a packet goes out.
    fn packetize(
        &mut self,
        payload: &[u8],
        level: Option<AudioLevel>,
        now: Instant,
        out: &mut [u8],
    ) -> Result<usize, LegError> {
        let ts = self.next_ts;
        self.next_ts = ts.wrapping_add(self.codec_frame as u32);
        if self.dtx && payload.len() <= DTX_MAX_BYTES {
            self.counters.dtx_frames += 1;
            self.marker_next = true;
            return Ok(0);
        }
        self.write_rtp(payload, ts, level, (ts, now), out)
    }

    /// The send path after encoding, several frames per packet: the frame joins the
    /// gathered ones, and the packet goes out when it is full, when the frame cannot join
    /// it (it then starts the next), or at a DTX frame (the talkspurt ends).
    fn gather_frame(
        &mut self,
        g: &mut Gather,
        payload: &[u8],
        level: Option<AudioLevel>,
        now: Instant,
        out: &mut [u8],
    ) -> Result<usize, LegError> {
        let dtx = self.dtx && payload.len() <= DTX_MAX_BYTES;
        // Checked before anything moves: a payload that cannot join is the caller's error.
        let toc = if dtx { 0 } else { self.gather_toc(payload)? };
        let ts = self.next_ts;
        self.next_ts = ts.wrapping_add(self.codec_frame as u32);
        if dtx {
            self.counters.dtx_frames += 1;
            let r = self.write_gathered(g, out);
            self.marker_next = true;
            return r;
        }
        let mut r = Ok(0);
        if !g.fits(payload.len(), toc) {
            r = self.write_gathered(g, out);
        }
        g.push(payload, toc, ts, now, level);
        // After an early write this frame is alone, and a packet holds at least two.
        if g.count == g.frames {
            r = self.write_gathered(g, out);
        }
        r
    }

    /// The TOC byte (without its frame-count code) that a payload must share with the
    /// frames it joins (0 for G.711), once the payload is seen to be one frame.
    fn gather_toc(&self, payload: &[u8]) -> Result<u8, LegError> {
        if !matches!(self.codec, Codec::Opus(_)) {
            return if payload.len() == self.codec_frame {
                Ok(0)
            } else {
                Err(LegError::BadPayload("not one frame of G.711 samples"))
            };
        }
        if payload.len() > MAX_ENCODED_PAYLOAD {
            return Err(LegError::BadPayload(
                "an Opus payload larger than MAX_ENCODED_PAYLOAD",
            ));
        }
        let info = opus::parse_packet(payload)
            .map_err(|_| LegError::BadPayload("not a valid Opus packet"))?;
        if info.samples(self.codec_rate.hz()) != self.codec_frame {
            return Err(LegError::BadPayload(
                "an Opus payload of another duration than the frame",
            ));
        }
        Ok(info.toc & !3)
    }

    /// Writes the gathered frames as one packet, if any; they are gone either way.
    fn write_gathered(&mut self, g: &mut Gather, out: &mut [u8]) -> Result<usize, LegError> {
        if g.count == 0 {
            return Ok(0);
        }
        let (first_ts, last, level) = (g.first_ts, g.last, g.packet_level());
        let frames = g.count as u64;
        let r = g
            .payload()
            .and_then(|payload| self.write_rtp(payload, first_ts, level, last, out));
        g.clear();
        if r.is_err() {
            self.counters.unsent_frames += frames;
        }
        r
    }

    /// Writes (and protects) one RTP packet with timestamp `ts`; `last` is the timestamp
    /// and send time of its last frame, for the sender report.
    fn write_rtp(
        &mut self,
        payload: &[u8],
        ts: u32,
        level: Option<AudioLevel>,
        last: (u32, Instant),
        out: &mut [u8],
    ) -> Result<usize, LegError> {
        let level = level.map(|l| [l.to_byte()]);
        let ext;
        let extensions: &[RtpExtension<'_>] = match (self.audio_level_extension, &level) {
            (Some(id), Some(level)) => {
                ext = [RtpExtension { id, data: level }];
                &ext
            }
            _ => &[],
        };
        let builder = RtpPacketBuilder::new(
            self.codec.payload_type(),
            self.next_seq,
            ts,
            self.local_ssrc,
        )
        .marker(self.marker_next)
        .extensions(extensions)
        .payload(payload);
        let len = match self.srtp.as_mut() {
            None => builder.write(out).map_err(build_error)?,
            Some(s) => {
                let plain = builder.write(&mut self.tx_plain).map_err(build_error)?;
                s.sender
                    .protect_rtp(&self.tx_plain[..plain], out)
                    .map_err(protect_error)?
            }
        };
        self.next_seq = self.next_seq.wrapping_add(1);
        self.marker_next = false;
        self.sender.on_sent(payload.len());
        self.last_sent = Some(last);
        self.counters.rtp_sent += 1;
        self.counters.rtp_bytes_sent += len as u64;
        Ok(len)
    }

    /// Writes the frames gathered so far as one (shorter) packet into `out` now, without
    /// a pause in the media clock (before a BYE or a hold); returns its length, 0 when
    /// nothing was gathered (always with one frame per packet).
    pub fn flush(&mut self, out: &mut [u8]) -> Result<usize, LegError> {
        let Some(mut gather) = self.gather.take() else {
            return Ok(0);
        };
        let r = self.write_gathered(&mut gather, out);
        self.gather = Some(gather);
        r
    }

    /// Lets one frame of media time pass without sending (nothing to send this tick); the
    /// next packet starts a talkspurt. A packet partly gathered ([`LegConfig::ptime_ms`])
    /// is dropped, having nowhere to go: counted in [`LegStats::unsent_frames`]. Use
    /// [`skip_frame_flush`](Self::skip_frame_flush) to send it instead.
    pub fn skip_frame(&mut self) {
        if let Some(g) = self.gather.as_mut() {
            self.counters.unsent_frames += g.count as u64;
            g.clear();
        }
        self.next_ts = self.next_ts.wrapping_add(self.codec_frame as u32);
        self.marker_next = true;
    }

    /// [`skip_frame`](Self::skip_frame), sending the partly gathered packet first (the
    /// talkspurt's last packet, shorter than the packet time) into `out`; returns its
    /// length, 0 when there was none. With one frame per packet it is `skip_frame`.
    pub fn skip_frame_flush(&mut self, out: &mut [u8]) -> Result<usize, LegError> {
        let r = self.flush(out);
        self.skip_frame();
        r
    }

    /// A compound RTCP report (SR or RR, SDES CNAME) into `out` when the report interval
    /// has elapsed at `now`; `None` before.
    pub fn poll_rtcp(&mut self, now: Instant, out: &mut [u8]) -> Result<Option<usize>, LegError> {
        if now < self.next_rtcp {
            return Ok(None);
        }
        self.next_rtcp = now + self.randomised_interval();
        self.write_rtcp(now, false, out).map(Some)
    }

    /// A final compound report with a BYE for our SSRC (RFC 3550 6.6), to send when the
    /// leg ends.
    pub fn write_bye(&mut self, now: Instant, out: &mut [u8]) -> Result<usize, LegError> {
        self.write_rtcp(now, true, out)
    }

    fn write_rtcp(&mut self, now: Instant, bye: bool, out: &mut [u8]) -> Result<usize, LegError> {
        let reports: Vec<ReportBlock> = self
            .source
            .as_mut()
            .and_then(|s| s.stats.report_block(now))
            .into_iter()
            .collect();
        // RFC 3550 6.4: an SR if we sent since the report before last.
        let sending = self
            .last_sent
            .filter(|(_, at)| now.saturating_duration_since(*at) < 2 * self.rtcp_interval);
        let first = match sending {
            Some((ts, at)) => {
                let ticks = self
                    .codec_rate
                    .duration_to_ticks(now.saturating_duration_since(at));
                // RTP time is modulo 2^32.
                let rtp_time = ts.wrapping_add(ticks as u32);
                RtcpPacket::SenderReport(self.sender.sender_report(
                    self.ntp_at(now),
                    rtp_time,
                    reports,
                ))
            }
            None => RtcpPacket::ReceiverReport(ReceiverReport {
                ssrc: self.local_ssrc,
                reports,
            }),
        };
        let mut packets = vec![
            first,
            RtcpPacket::SourceDescription(Sdes::cname(self.local_ssrc, &self.cname)),
        ];
        if bye {
            packets.push(RtcpPacket::Bye(crate::rtcp::Bye {
                sources: vec![self.local_ssrc],
                reason: None,
            }));
        }
        let len = match self.srtp.as_mut() {
            None => {
                build_compound(&packets, CompoundRules::Rfc3550, out).map_err(rtcp_build_error)?
            }
            Some(s) => {
                let plain = build_compound(&packets, CompoundRules::Rfc3550, &mut self.tx_plain)
                    .map_err(rtcp_build_error)?;
                s.sender
                    .protect_rtcp(&self.tx_plain[..plain], out)
                    .map_err(protect_error)?
            }
        };
        self.counters.rtcp_sent += 1;
        Ok(len)
    }

    /// The RFC 3550 6.3.1 randomised interval: uniform in [0.5, 1.5] times the nominal,
    /// divided by e - 3/2.
    fn randomised_interval(&mut self) -> Duration {
        let factor = self.rng.random_range(0.5..1.5) / RTCP_COMPENSATION;
        self.rtcp_interval.mul_f64(factor)
    }

    /// Our wall-clock time at `now`, from the anchor given at construction.
    fn ntp_at(&self, now: Instant) -> NtpTime {
        let d = now.saturating_duration_since(self.start);
        let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
        // NTP seconds are modulo 2^32: bits shifted out are meant to go.
        NtpTime(self.ntp_at_start.0.wrapping_add((d.as_secs() << 32) | frac))
    }

    /// Counters and state.
    pub fn stats(&self) -> LegStats {
        let c = &self.counters;
        let src = self.source.as_ref();
        LegStats {
            local_ssrc: self.local_ssrc,
            remote_ssrc: src.map(|s| s.ssrc),
            rtp_packets_received: c.rtp_received,
            rtp_bytes_received: c.rtp_bytes_received,
            rtcp_packets_received: c.rtcp_received,
            rtp_packets_sent: c.rtp_sent,
            rtp_bytes_sent: c.rtp_bytes_sent,
            rtcp_packets_sent: c.rtcp_sent,
            dtx_frames: c.dtx_frames,
            unsent_frames: c.unsent_frames,
            packets_expected: src.map_or(0, |s| s.stats.expected()),
            packets_lost: src.map_or(0, |s| s.stats.cumulative_lost()),
            jitter_ms: src.map_or(0.0, |s| s.stats.jitter_ms()),
            rtt: self.rtt,
            remote_report: self.remote_report,
            source_changes: c.source_changes,
            dtmf_events: c.dtmf_events,
            bye_received: self.bye_received,
            events_dropped: c.events_dropped,
            dropped: c.dropped,
            errors: c.errors,
            jitter_buffer: self.jb.stats(),
            srtp: self.srtp.as_ref().map(|s| s.receiver.counters()),
            frames_decoded: c.frames_decoded,
            frames_skipped: c.frames_skipped,
            header_levels_received: c.header_levels,
        }
    }
}

fn lap(timer: &mut Option<&mut StageTimer>, stage: Stage) {
    if let Some(t) = timer.as_deref_mut() {
        t.lap(stage);
    }
}

fn validate(c: &LegConfig) -> Result<(), LegError> {
    if c.frame_ms != 10 && c.frame_ms != 20 {
        return Err(LegError::BadConfig("frame_ms must be 10 or 20"));
    }
    if let Some(ptime_ms) = c.ptime_ms
        && (ptime_ms == 0 || !ptime_ms.is_multiple_of(c.frame_ms) || ptime_ms > MAX_PTIME_MS)
    {
        return Err(LegError::BadPtime {
            ptime_ms,
            frame_ms: c.frame_ms,
        });
    }
    if !resample::RATES.contains(&c.engine_rate) {
        return Err(LegError::BadConfig("engine_rate is not a supported rate"));
    }
    if c.denoise && c.engine_rate != denoise::SAMPLE_RATE {
        return Err(LegError::BadConfig(
            "noise suppression needs a 48 kHz engine",
        ));
    }
    let pt = c.codec.payload_type();
    if c.telephone_event == Some(pt) {
        return Err(LegError::BadConfig(
            "telephone-event and the codec share a payload type",
        ));
    }
    if !pt.is_rtcp_mux_safe() || c.telephone_event.is_some_and(|t| !t.is_rtcp_mux_safe()) {
        return Err(LegError::BadConfig(
            "payload types 64..=95 collide with RTCP on a muxed port (RFC 5761)",
        ));
    }
    if c.audio_level_extension
        .is_some_and(|id| !(1..=14).contains(&id))
    {
        return Err(LegError::BadConfig(
            "the audio level extension id must be 1..=14 (one-byte form)",
        ));
    }
    if c.cname.len() > 255 {
        return Err(LegError::BadConfig("cname longer than 255 bytes"));
    }
    if c.rtcp_interval < Duration::from_millis(100) || c.rtcp_interval > Duration::from_secs(3600) {
        return Err(LegError::BadConfig("rtcp_interval must be 100 ms..=1 h"));
    }
    Ok(())
}

fn build_error(e: RtpError) -> LegError {
    match e {
        RtpError::BufferTooSmall { needed, available } => {
            LegError::BufferTooSmall { needed, available }
        }
        other => LegError::Rtp(other),
    }
}

fn rtcp_build_error(e: RtcpError) -> LegError {
    match e {
        RtcpError::BufferTooSmall { needed, available } => {
            LegError::BufferTooSmall { needed, available }
        }
        other => LegError::Rtcp(other),
    }
}

fn protect_error(e: SrtpError) -> LegError {
    match e {
        SrtpError::BufferTooSmall { needed, available } => {
            LegError::BufferTooSmall { needed, available }
        }
        other => LegError::Srtp(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        // An arbitrary origin; only differences matter.
        #[allow(clippy::disallowed_methods)]
        Instant::now()
    }

    fn leg(config: LegConfig) -> MediaLeg {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        MediaLeg::new(config, None, &mut rng, t0()).unwrap()
    }

    #[test]
    fn unusable_configurations_are_refused() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let bad = [
            LegConfig {
                frame_ms: 30,
                ..LegConfig::default()
            },
            LegConfig {
                telephone_event: Some(PayloadType::new(111).unwrap()),
                ..LegConfig::default()
            },
            LegConfig {
                codec: Codec::Opus(OpusParams {
                    payload_type: PayloadType::new(72).unwrap(),
                    ..OpusParams::default()
                }),
                ..LegConfig::default()
            },
            LegConfig {
                audio_level_extension: Some(15),
                ..LegConfig::default()
            },
            LegConfig {
                denoise: true,
                engine_rate: 16_000,
                ..LegConfig::default()
            },
        ];
        for c in bad {
            assert!(matches!(
                MediaLeg::new(c, None, &mut rng, t0()),
                Err(LegError::BadConfig(_))
            ));
        }
    }

    #[test]
    fn a_frame_of_the_wrong_length_is_a_caller_error() {
        let mut l = leg(LegConfig::default());
        let now = t0();
        let mut out = [0u8; 1500];
        let e = l.send_frame(&[0.0; 100], now, &mut out).unwrap_err();
        assert_eq!(
            e,
            LegError::BadFrame {
                expected: 960,
                got: 100
            }
        );
        assert!(!e.is_peer_error());
        let mut frame = [0.0f32; 480];
        assert!(matches!(
            l.poll_frame(now, &mut frame),
            Err(LegError::BadFrame { .. })
        ));
    }

    #[test]
    fn sent_packets_advance_sequence_and_timestamp_from_the_configured_start() {
        let mut l = leg(LegConfig {
            codec: Codec::Pcmu,
            initial_seq: Some(0xFFFF),
            initial_timestamp: Some(0xFFFF_FF00),
            audio_level_extension: Some(1),
            local_ssrc: Some(Ssrc(42)),
            ..LegConfig::default()
        });
        let now = t0();
        let pcm = [0.1f32; 960];
        let mut out = [0u8; 1500];
        let mut seen = Vec::new();
        for i in 0..3u32 {
            let n = l
                .send_frame(
                    &pcm,
                    now + Duration::from_millis(20 * u64::from(i)),
                    &mut out,
                )
                .unwrap();
            let p = RtpPacket::parse(&out[..n]).unwrap();
            assert_eq!(p.payload_type(), PayloadType::PCMU);
            assert_eq!(p.ssrc(), Ssrc(42));
            assert_eq!(p.payload().len(), 160);
            assert_eq!(p.marker(), i == 0);
            assert!(p.audio_level(1).is_some());
            seen.push((p.sequence_number(), p.timestamp()));
        }
        assert_eq!(seen, [(0xFFFF, 0xFFFF_FF00), (0, 0xFFFF_FFA0), (1, 0x40)]);
        // A skipped frame advances the timestamp and marks the next packet.
        l.skip_frame();
        let n = l.send_frame(&pcm, now, &mut out).unwrap();
        let p = RtpPacket::parse(&out[..n]).unwrap();
        assert_eq!((p.sequence_number(), p.timestamp()), (2, 0x40 + 320));
        assert!(p.marker());
    }

    #[test]
    fn a_payload_encoded_elsewhere_continues_the_legs_own_sequence_and_timestamp() {
        let mut l = leg(LegConfig {
            codec: Codec::Pcmu,
            initial_seq: Some(10),
            initial_timestamp: Some(1000),
            audio_level_extension: Some(1),
            local_ssrc: Some(Ssrc(7)),
            ..LegConfig::default()
        });
        let now = t0();
        let mut out = [0u8; 1500];
        let n = l.send_frame(&[0.1f32; 960], now, &mut out).unwrap();
        let p = RtpPacket::parse(&out[..n]).unwrap();
        assert_eq!((p.sequence_number(), p.timestamp()), (10, 1000));
        let shared = [0x55u8; 160];
        let n = l.send_payload(&shared, now, &mut out).unwrap();
        let p = RtpPacket::parse(&out[..n]).unwrap();
        assert_eq!((p.sequence_number(), p.timestamp()), (11, 1160));
        assert_eq!(p.ssrc(), Ssrc(7));
        assert_eq!(p.payload_type(), PayloadType::PCMU);
        assert_eq!(p.payload(), &shared[..]);
        assert!(!p.marker());
        // The leg never saw the PCM, so it claims no level.
        assert!(p.audio_level(1).is_none());
        assert_eq!(l.stats().rtp_packets_sent, 2);
        // Too small an output buffer is the caller's error, and nothing advances.
        let e = l.send_payload(&shared, now, &mut out[..20]).unwrap_err();
        assert!(matches!(e, LegError::BufferTooSmall { .. }));
        assert_eq!(l.stats().rtp_packets_sent, 2);
    }

    #[test]
    fn a_payload_sent_with_srtp_is_accepted_by_the_peer_and_dtx_payloads_are_not_sent() {
        let profile = crate::srtp::SrtpProfile::Aes128CmHmacSha1_80;
        let material: Vec<u8> = (0..60).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let opus = Codec::Opus(OpusParams {
            dtx: true,
            ..OpusParams::default()
        });
        let config = LegConfig {
            codec: opus,
            ..LegConfig::default()
        };
        let now = t0();
        let mut room_side = MediaLeg::new(
            config.clone(),
            Some(SrtpSession::from_dtls_keying_material(profile, &material, false).unwrap()),
            &mut rng,
            now,
        )
        .unwrap();
        let mut client = MediaLeg::new(
            config,
            Some(SrtpSession::from_dtls_keying_material(profile, &material, true).unwrap()),
            &mut rng,
            now,
        )
        .unwrap();
        let mut enc = OpusEncoder::new(OpusEncoderConfig::default()).unwrap();
        let tone: Vec<f32> = (0..960)
            .map(|i| 0.3 * (i as f32 * 2.0 * std::f32::consts::PI * 440.0 / 48_000.0).sin())
            .collect();
        let mut payload = [0u8; 1200];
        let mut out = [0u8; 1500];
        for i in 0..5u64 {
            let m = enc.encode(&tone, &mut payload).unwrap();
            let at = now + Duration::from_millis(20 * i);
            let n = room_side.send_payload(&payload[..m], at, &mut out).unwrap();
            assert!(n > m, "an SRTP packet is larger than its payload");
            assert!(matches!(
                client.handle_datagram(&out[..n], at).unwrap(),
                Received::Audio(_)
            ));
        }
        assert_eq!(client.stats().rtp_packets_received, 5);
        // A 1-byte DTX payload is not sent, and the next packet starts a talkspurt.
        assert_eq!(room_side.send_payload(&[0x08], now, &mut out).unwrap(), 0);
        assert_eq!(room_side.stats().dtx_frames, 1);
        let m = enc.encode(&tone, &mut payload).unwrap();
        let n = room_side
            .send_payload(&payload[..m], now, &mut out)
            .unwrap();
        let mut plain = [0u8; 1500];
        let mut receiver = SrtpSession::from_dtls_keying_material(profile, &material, true)
            .unwrap()
            .receiver;
        let p = receiver.unprotect_rtp(&out[..n], &mut plain).unwrap();
        let p = p.parse().unwrap();
        assert!(p.marker());
        assert_eq!(p.payload(), &payload[..m]);
    }

    #[test]
    fn opus_dtx_silence_is_not_sent_and_the_next_talkspurt_is_marked() {
        let mut l = leg(LegConfig {
            codec: Codec::Opus(OpusParams {
                dtx: true,
                ..OpusParams::default()
            }),
            initial_timestamp: Some(0),
            ..LegConfig::default()
        });
        let now = t0();
        let mut out = [0u8; 1500];
        let silence = [0.0f32; 960];
        let sent: Vec<usize> = (0..50)
            .map(|_| l.send_frame(&silence, now, &mut out).unwrap())
            .collect();
        let suppressed = sent.iter().filter(|&&n| n == 0).count();
        assert!(
            suppressed >= 30,
            "only {suppressed} of 50 silent frames suppressed"
        );
        assert_eq!(l.stats().dtx_frames, suppressed as u64);
        let tone: Vec<f32> = (0..960)
            .map(|i| 0.3 * (i as f32 * 2.0 * std::f32::consts::PI * 440.0 / 48_000.0).sin())
            .collect();
        let n = l.send_frame(&tone, now, &mut out).unwrap();
        let p = RtpPacket::parse(&out[..n]).unwrap();
        assert!(p.marker());
        // The timestamp counted the suppressed frames too.
        assert_eq!(p.timestamp(), 50 * 960);
    }

    /// The peer's RTCP receiver report on our stream, with `fraction_lost`.
    fn report_on(l: &MediaLeg, fraction_lost: u8) -> Vec<u8> {
        let peer = Ssrc(0x5eed);
        let rr = RtcpPacket::ReceiverReport(ReceiverReport {
            ssrc: peer,
            reports: vec![ReportBlock {
                ssrc: l.local_ssrc(),
                fraction_lost,
                ..ReportBlock::default()
            }],
        });
        let sdes = RtcpPacket::SourceDescription(Sdes::cname(peer, b"peer"));
        let mut out = [0u8; 256];
        let n = build_compound(&[rr, sdes], CompoundRules::Rfc3550, &mut out).unwrap();
        out[..n].to_vec()
    }

    fn expected_loss(l: &MediaLeg) -> u8 {
        match &l.encoder {
            LegEncoder::Opus(e) => e.config().expected_loss_percent,
            LegEncoder::G711(_) => panic!("an Opus leg"),
        }
    }

    #[test]
    fn fec_follows_the_loss_the_peer_reports() {
        let start = t0();
        let mut l = leg(LegConfig::default());
        assert!(matches!(l.codec(), Codec::Opus(p) if p.fec));
        assert_eq!((l.reported_loss_percent(), expected_loss(&l)), (None, 0));
        l.handle_datagram(&report_on(&l, 26), start).unwrap();
        // 26/256 = 10.2 %, rounded up.
        assert_eq!(
            (l.reported_loss_percent(), expected_loss(&l)),
            (Some(11), 11)
        );
        l.handle_datagram(&report_on(&l, 0), start).unwrap();
        assert_eq!((l.reported_loss_percent(), expected_loss(&l)), (Some(0), 0));
        l.handle_datagram(&report_on(&l, 255), start).unwrap();
        assert_eq!(expected_loss(&l), 100);

        let mut no_fec = leg(LegConfig {
            codec: Codec::Opus(OpusParams {
                fec: false,
                ..OpusParams::default()
            }),
            ..LegConfig::default()
        });
        no_fec
            .handle_datagram(&report_on(&no_fec, 26), start)
            .unwrap();
        assert_eq!(
            (no_fec.reported_loss_percent(), expected_loss(&no_fec)),
            (Some(11), 0)
        );
        assert_eq!(
            (l.fec_loss_percent(), no_fec.fec_loss_percent()),
            (Some(100), None)
        );
    }

    #[test]
    fn the_first_report_is_due_within_the_randomised_half_interval() {
        let start = t0();
        let mut l = leg(LegConfig::default());
        let first = l.next_rtcp_at().duration_since(l.start);
        // [0.5, 1.5] * 5 s / 1.218 / 2.
        assert!(first >= Duration::from_millis(1020) && first <= Duration::from_millis(3080));
        let mut out = [0u8; 512];
        assert_eq!(l.poll_rtcp(start, &mut out).unwrap(), None);
        let n = l.poll_rtcp(l.next_rtcp_at(), &mut out).unwrap().unwrap();
        let packets = parse_compound(&out[..n], CompoundRules::Rfc3550).unwrap();
        // Nothing sent yet: an RR, then the CNAME.
        assert!(matches!(packets[0], RtcpPacket::ReceiverReport(_)));
        match &packets[1] {
            RtcpPacket::SourceDescription(s) => {
                assert_eq!(s.cname_of(l.local_ssrc()), Some(&b"confer"[..]));
            }
            other => panic!("expected SDES, got {other:?}"),
        }
    }
}
