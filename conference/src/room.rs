//! A conference room: participants (each a [`MediaLeg`]), their controls, and the tick that
//! mixes once and encodes as few times as possible.
//!
//! # Drive contract (sans-IO)
//!
//! - [`Room::new`] with the room's creation time; [`Room::join`] a participant with its
//!   room-side leg (its frame duration must be the room's); [`Room::leave`] or
//!   [`Room::kick`] gives the leg back (to send its BYE).
//! - [`Room::handle_datagram`] for every datagram from a participant, with its arrival time.
//! - [`Room::tick`] once per frame (every `frame_ms`) with the tick's time: it calls `send`
//!   with every packet to transmit (RTP and RTCP) and the participant it goes to.
//! - [`Room::poll_event`] after the above until `None`: joins, leaves, talking, mute, lock,
//!   each with its media time (time since the room was created).
//! - Controls (`set_muted`, `set_deaf`, `set_input_gain_db`, `set_output_gain_db`,
//!   `set_moderator`, `set_inband_dtmf`, `lock`, `unlock`, `end`) at any time between
//!   ticks.
//! - Playback ([`Room::play_to`], [`Room::stop_playback`], [`Room::announce`]) at any time
//!   between ticks: a [`Clip`] is 48 kHz mono audio shared by reference (an IVR prompt
//!   cached once is queued for many callers without a copy).
//!
//! - Recording: [`Room::start_recording`] hands the room a [`RecordSink`]; every tick then
//!   gives it the full mix (what a silent listener hears, before any output gain, through
//!   its own limiter; silence when nobody talks, so the timeline is continuous, also while
//!   the room is empty) and, when tracks are on, each participant's own input after input
//!   gain and mute. [`Room::stop_recording`] gives the sink back. The room never opens a
//!   file: the sink is the caller's (the host writes Ogg Opus files).
//!
//! Time never comes from the clock; an empty room's tick returns at once (no work, no
//! timer), so idle rooms cost nothing.
//!
//! # Playback, announcements and in-band keys
//!
//! The PSTN dial-in IVR needs three things of the room: prompts for one caller ("enter
//! your PIN", "please wait for the moderator"), room-wide announcements ("a participant
//! joined"), and keys from phones that send DTMF as tones in the audio rather than as
//! RFC 4733 events.
//!
//! - Each participant has a queue of at most [`PLAYBACK_QUEUE_LEN`] clips
//!   ([`Room::play_to`]). A clip plays one frame per tick, its last partial frame padded
//!   with silence; the next clip starts at the next frame. A participant whose clip plays
//!   hears it *on top of* what the room gives it that tick (its N-1 mix as a speaker, the
//!   full mix as a listener, silence when deaf or while the room waits for a moderator:
//!   a prompt addressed to one participant always reaches it), times its output gain,
//!   through its own limiter, encoded by its own leg: its audio differs from its group's,
//!   so it cannot share the group's payload. [`RoomEventKind::PlaybackFinished`] comes in
//!   the tick that sent the queue's last samples; [`Room::stop_playback`] drops the queue
//!   at once without it (barge-in), and leaving drops it silently.
//! - The room has one announcement queue of the same length ([`Room::announce`]; it and
//!   its frame buffer are allocated at the first announcement, so rooms that never
//!   announce stay small), played
//!   frame by frame into every output mix: each group's shared mix (times the group's
//!   gain, before its limiter), each speaker's N-1 mix, the base of a participant hearing
//!   a clip, and the recording's mix. Nobody talking is no exception: groups with a
//!   hearing listener encode every tick anyway. Deaf participants, and everyone while the
//!   room waits for a moderator, do not hear it. An empty room drops the queue.
//! - A participant with in-band DTMF detection on ([`ParticipantConfig::inband_dtmf`],
//!   [`Room::set_inband_dtmf`]) has its frame decoded every tick, whether it sends header
//!   levels, is muted or not, resampled to 8 kHz and fed to a [`DtmfDetector`] (its
//!   Goertzel filters then run over a sixth of the samples they would at 48 kHz, and a
//!   phone's band ends below 4 kHz anyway). Each key press is one
//!   [`RoomEventKind::Digit`], the event an RFC 4733 key gives; a caller that sends both
//!   gives both (deduplicating is the host's). It hears the frame the room decoded: when
//!   the leg denoises, the tones pass the noise suppressor first (the tests find every
//!   key, 60 ms at -25 dBov per tone, through it).
//!
//! Clip samples that are not finite count as silence and samples are clamped to full
//! scale, so a bad clip cannot poison a mix. The room holds a reference to each queued
//! clip and drops it when the clip has played: if that was the last one, the clip is freed
//! on the tick's thread (keep prompts cached to avoid it).
//!
//! # One tick
//!
//! 1. Levels and voice. A participant whose packets carry the RFC 6464 audio level
//!    ([`MediaLeg::header_level`]: browsers send it) is judged from that header level and
//!    its V flag, **without decoding**; any other (a G.711 phone behind a PBX) has its
//!    frame polled, decoded and measured by the leg's VAD, as every participant once was.
//!    A participant *talks* when it has voice, its smoothed level is above
//!    [`SpeakerConfig::min_level_dbov`], it is not muted, and the room is not waiting for
//!    a moderator. Changes are `StartedTalking`/`StoppedTalking` events.
//! 2. [`ActiveSpeakers`] picks at most K speakers (hysteresis, see [`crate::speakers`]).
//!    Of the header-level participants, the speakers and the
//!    [`RoomConfig::challengers`] loudest other talkers ([`ActiveSpeakers::challengers`])
//!    are decoded; everyone else's leg is only advanced ([`MediaLeg::poll_skip`]: its
//!    jitter buffer takes packets out at their playout time and counts them, nothing is
//!    decoded, resampled, denoised or analysed). Why: decoding costs about 44 us per
//!    20 ms Opus frame (146 us more with noise suppression), so a room where 700 browsers
//!    all send speech could not decode everyone on one core (31 ms per 20 ms tick); it
//!    decodes K + challengers (measured: a 700-talker tick takes 3.0 ms this way against
//!    30 ms decoding everyone, release build on the 2-core development machine,
//!    `cargo test --release -p confer-conference --test room_header_levels seven --
//!    --nocapture`). A newcomer louder than the weakest speaker ranks among the loudest
//!    non-speakers, so it is decoded for the whole hold time and its decoder is warm when
//!    it is first mixed; a talker given a free place at once is decoded from that tick,
//!    from a freshly reset decoder (see [`MediaLeg::poll_frame`] for what its first frame
//!    sounds like). Challengers are chosen among header-level participants only (the
//!    others are decoded anyway). While a recording keeps per-participant tracks, or
//!    with [`RoomConfig::header_levels`] off, everyone is decoded. Counts: [`RoomStats::frames_decoded_last_tick`] and
//!    [`RoomStats::frames_skipped_last_tick`].
//!    Participants with in-band DTMF detection are decoded too (as challengers are, without
//!    noise suppression or VAD unless they are speakers), and every such participant's
//!    decoded frame goes through its detector (counted as the vad stage).
//! 3. The [`Mixer`] adds each speaker's frame once (with its input gain). Silent
//!    participants cost a poll, not a mix. The announcement queue gives its next frame.
//! 4. Each speaker who can hear gets its own N-1 mix (total minus itself, plus the
//!    announcement, times its output gain, through its own [`Limiter`]), encoded by its own
//!    leg ([`MediaLeg::send_frame`]). So does each participant hearing a clip, whatever it
//!    is (see above); these own encodes are counted with the speakers'.
//! 5. Every other participant is a listener. Listeners are grouped by what their encoded
//!    audio depends on: codec and its settings (Opus bitrate, FEC, DTX; G.711 law), frame
//!    duration, and output gain. Each group with at least one listener who hears this tick
//!    (and hears no clip) encodes the full mix (plus the announcement, times the group's
//!    gain, through the group's limiter) **once**;
//!    each listener's leg packetizes that same payload with its own SSRC, sequence number,
//!    timestamp and SRTP context ([`MediaLeg::send_payload`]). Payload types are
//!    per leg, so they are not part of the group. Encoder calls are counted in
//!    [`RoomStats`].
//! 6. Deaf participants, and everyone while the room waits for a moderator, get nothing
//!    but their own clips (without one, their leg's media clock advances, so the next
//!    packet is a marked talkspurt).
//! 7. Every leg's RTCP is polled.
//!
//! # Stage timing
//!
//! With a clock injected ([`Room::set_stage_clock`]; the room never reads one itself), a
//! tick laps a [`StageTimer`] at every stage boundary, and hands it down to the legs it
//! polls and encodes with, so each interval of the tick is counted once, in one stage:
//! jitter (jitter-buffer pops and skips, and the per-participant loop around them),
//! decode (decoder calls and resampling), denoise, vad, mix (speaker selection, mixing,
//! limiting), encode, record (the recording sink), send (packetizing, RTCP and the `send`
//! callback). [`Room::last_tick_stages`] gives them after the tick, with the tick's
//! counts. Untimed, a tick reads no clock at all.
//!
//! A participant moving between speaker and listener switches between its own encoder and
//! its group's: the decoder sees a new encoder's stream (Opus copes; no reset is signalled),
//! which is what every mixing server that shares encodes does.
//!
//! # Allocation
//!
//! Buffers are allocated at [`Room::new`] and [`Room::join`] (the participant's frame,
//! limiter, playback queue of [`PLAYBACK_QUEUE_LEN`], in-band detector and its resampler;
//! a new encoder group when its settings are new; the detector also at
//! [`Room::set_inband_dtmf`], the announcement queue and frame at the first
//! [`Room::announce`]); a tick allocates nothing
//! (events go to a bounded queue allocated up front; beyond it they are dropped and
//! counted). The leg's own exceptions (RTCP, `rtc-srtp`) are documented in
//! [`confer_engine::leg`].

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use confer_codecs::decoder::{AudioEncoder, CodecError};
use confer_codecs::dtmf::{DtmfDetector, DtmfDigit, DtmfEvent, ReceivedEvent};
use confer_codecs::g711::{G711Encoder, G711Law};
use confer_codecs::opus::{OpusEncoder, OpusEncoderConfig, OpusSignal};
use confer_codecs::resample::Resampler;
use confer_engine::leg::{
    Codec, LegError, LegEvent, LegStats, MAX_DATAGRAM, MAX_ENCODED_PAYLOAD, MediaLeg, Received,
    Stage, StageClock, StageTimer, StageTimes,
};

use crate::mixer::{Limiter, LimiterConfig, Mixer, MixerError};
use crate::speakers::{ActiveSpeakers, SILENCE_DBOV, SpeakerConfig, SpeakerConfigError};

/// The room's sample rate: every leg delivers and takes frames at this rate.
pub const ROOM_RATE: u32 = 48_000;
/// Events kept for [`Room::poll_event`]; more are dropped and counted.
pub const EVENT_QUEUE_LEN: usize = 4096;
/// Events a new room has room for before its queue grows.
const EVENT_QUEUE_INITIAL: usize = 32;
/// The input and output gains a participant may be given, in dB.
pub const GAIN_DB_RANGE: std::ops::RangeInclusive<f32> = -60.0..=20.0;
/// Audio at the room rate (48 kHz mono f32 in -1..1), shared without copying.
pub type Clip = Arc<[f32]>;
/// Clips queued per participant, and for the room's announcements.
pub const PLAYBACK_QUEUE_LEN: usize = 16;
/// The rate in-band DTMF is detected at.
const INBAND_DTMF_RATE: u32 = 8000;

/// A participant of one room: its slot and the slot's generation, so an id that left is
/// never mistaken for whoever took its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId {
    slot: u32,
    generation: u32,
}

impl std::fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "p{}.{}", self.slot, self.generation)
    }
}

/// Where a recording room puts its audio, once per tick (called on the room's thread, from
/// [`Room::tick`]: it must not block for long). It is `Any` so that the caller who built it
/// can get its own type back from [`Room::stop_recording`] (`Box<dyn Any>::downcast`).
pub trait RecordSink: Any + Send {
    /// The room's full mix for this tick (`frame_ms` of 48 kHz mono samples).
    fn mix(&mut self, frame: &[f32]);
    /// Participant `id`'s own input for this tick, after its input gain (zeros while muted
    /// or while the room waits for a moderator).
    /// Only called when the recording was started with tracks.
    fn track(&mut self, id: ParticipantId, frame: &[f32]);
}

struct Recording {
    sink: Box<dyn RecordSink>,
    tracks: bool,
    limiter: Limiter,
}

/// The settings of a room.
#[derive(Debug, Clone, PartialEq)]
pub struct RoomConfig {
    /// The frame clock: 10 or 20 ms.
    pub frame_ms: u32,
    /// Active-speaker selection (K, hysteresis).
    pub speakers: SpeakerConfig,
    /// The limiter on every output mix.
    pub limiter: LimiterConfig,
    /// Joins beyond this many participants are refused (1..=100000).
    pub max_participants: usize,
    /// Non-moderators hear nothing and are not mixed until a moderator is present.
    pub wait_for_moderator: bool,
    /// Decide who speaks from the RFC 6464 levels in participants' RTP headers, for those
    /// who send them, and decode only who may be heard (see the module docs). Off: every
    /// participant is decoded every tick.
    pub header_levels: bool,
    /// Besides the speakers, this many of the loudest talking participants are decoded
    /// ahead of being mixed (0..=64), when speakers come from header levels.
    pub challengers: usize,
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig {
            frame_ms: 20,
            speakers: SpeakerConfig::default(),
            limiter: LimiterConfig::default(),
            max_participants: 1000,
            wait_for_moderator: false,
            header_levels: true,
            challengers: 2,
        }
    }
}

/// A participant joining: its room-side leg and initial controls.
#[derive(Debug)]
pub struct ParticipantConfig {
    /// The room-side media leg (frame duration equal to the room's, 48 kHz engine rate).
    pub leg: MediaLeg,
    /// Moderator role.
    pub moderator: bool,
    /// Joins muted.
    pub muted: bool,
    /// Joins deaf.
    pub deaf: bool,
    /// Gain on what the participant says, in dB ([`GAIN_DB_RANGE`]).
    pub input_gain_db: f32,
    /// Gain on what the participant hears, in dB ([`GAIN_DB_RANGE`]).
    pub output_gain_db: f32,
    /// Detect DTMF tones in its audio (a phone that does not send RFC 4733 events).
    pub inband_dtmf: bool,
}

impl ParticipantConfig {
    /// A non-moderator, unmuted, hearing, at unity gains, without in-band DTMF detection.
    pub fn new(leg: MediaLeg) -> Self {
        ParticipantConfig {
            leg,
            moderator: false,
            muted: false,
            deaf: false,
            input_gain_db: 0.0,
            output_gain_db: 0.0,
            inband_dtmf: false,
        }
    }
}

/// Why a call on a room failed. All are the caller's errors except [`RoomError::Leg`] from
/// [`Room::handle_datagram`], which is the peer's (counted by the leg).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RoomError {
    /// The room is locked: no joins.
    #[error("the room is locked")]
    Locked,
    /// The room has its maximum number of participants.
    #[error("the room is full ({0} participants)")]
    Full(usize),
    /// The room has ended.
    #[error("the room has ended")]
    Ended,
    /// No such participant (never joined, or left).
    #[error("no participant {0}")]
    UnknownParticipant(ParticipantId),
    /// A gain outside [`GAIN_DB_RANGE`] (or not a number).
    #[error("gain {0} dB is outside -60..=20 dB")]
    GainOutOfRange(f32),
    /// The leg's frames do not fit the room's.
    #[error("the leg's frames are {got} samples, the room's {expected}")]
    FrameMismatch {
        /// Samples per room frame.
        expected: usize,
        /// Samples per leg frame.
        got: usize,
    },
    /// The room configuration is unusable.
    #[error("bad room configuration: {0}")]
    BadConfig(&'static str),
    /// Bad active-speaker settings.
    #[error("speakers: {0}")]
    Speakers(#[from] SpeakerConfigError),
    /// Bad mixer settings.
    #[error("mixer: {0}")]
    Mixer(#[from] MixerError),
    /// A codec could not be built for an encoder group.
    #[error("codec: {0}")]
    Codec(#[from] CodecError),
    /// [`Room::start_recording`] while a recording runs.
    #[error("the room is already recording")]
    AlreadyRecording,
    /// The leg rejected a datagram (the peer's fault).
    #[error("leg: {0}")]
    Leg(#[from] LegError),
    /// [`PLAYBACK_QUEUE_LEN`] clips already wait (for the participant, or for the room's
    /// announcements).
    #[error("the playback queue is full ({PLAYBACK_QUEUE_LEN} clips)")]
    PlaybackQueueFull,
}

/// Why a participant left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaveReason {
    /// [`Room::leave`].
    Left,
    /// [`Room::kick`].
    Kicked,
    /// [`Room::end`].
    RoomEnded,
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomEventKind {
    /// The room was created.
    Created,
    /// The room ended.
    Ended,
    /// A participant joined.
    Joined {
        /// Who.
        id: ParticipantId,
        /// With the moderator role.
        moderator: bool,
    },
    /// A participant left.
    Left {
        /// Who.
        id: ParticipantId,
        /// Why.
        reason: LeaveReason,
    },
    /// A participant started talking (voice, unmuted, audible).
    StartedTalking(ParticipantId),
    /// A participant stopped talking.
    StoppedTalking(ParticipantId),
    /// A participant was muted.
    Muted(ParticipantId),
    /// A participant was unmuted.
    Unmuted(ParticipantId),
    /// A participant was made deaf.
    Deafened(ParticipantId),
    /// A participant hears again.
    Undeafened(ParticipantId),
    /// The room was locked.
    Locked,
    /// The room was unlocked.
    Unlocked,
    /// A participant pressed a key: an RFC 4733 telephone-event began, or, with in-band
    /// detection on, its DTMF tone was recognised (once per press).
    Digit {
        /// Who.
        id: ParticipantId,
        /// Which key.
        digit: DtmfDigit,
    },
    /// The participant's playback queue has played out: this tick sent its last samples.
    PlaybackFinished(ParticipantId),
}

/// An event with its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomEvent {
    /// Media time: since the room was created.
    pub media_time: Duration,
    /// The `now` of the call that caused it.
    pub at: Instant,
    /// What happened.
    pub kind: RoomEventKind,
}

/// A participant's state and counters.
#[derive(Debug, Clone, PartialEq)]
pub struct ParticipantStats {
    /// Audio buffered ahead of playout in the jitter buffer, in ms.
    pub jitter_buffer_delay_ms: f64,
    /// What the jitter buffer steers towards, in ms.
    pub jitter_buffer_target_ms: f64,
    /// RFC 3550 packets expected from the participant.
    pub packets_expected: u64,
    /// RFC 3550 cumulative loss (negative with duplicates).
    pub packets_lost: i64,
    /// `packets_lost / packets_expected`, 0 before any packet.
    pub loss_fraction: f64,
    /// The last frame's level in dBov (-127 for silence).
    pub level_dbov: f32,
    /// The smoothed level speaker selection uses, in dBov.
    pub smoothed_level_dbov: f32,
    /// Talking (voice, unmuted, audible) at the last tick.
    pub talking: bool,
    /// One of the mixed active speakers at the last tick.
    pub speaker: bool,
    /// Muted.
    pub muted: bool,
    /// Deaf.
    pub deaf: bool,
    /// Moderator.
    pub moderator: bool,
    /// Input gain in dB.
    pub input_gain_db: f32,
    /// Output gain in dB.
    pub output_gain_db: f32,
    /// Frames this participant was mixed into the room.
    pub frames_mixed: u64,
    /// At the last tick, whether it spoke was decided from its RTP header level.
    pub header_levels: bool,
    /// Its frame was decoded at the last tick (not only advanced).
    pub decoded: bool,
    /// The loss the Opus FEC of what it hears is sized for, in percent (its own encoder's
    /// while it is a speaker, else its encoder group's, which follows the member reporting
    /// the most loss); `None` for G.711 or without negotiated FEC.
    pub fec_loss_percent: Option<u8>,
    /// The loss it last reported (RTCP) for what it receives from the room, in percent.
    pub reported_loss_percent: Option<u8>,
    /// The leg's own counters.
    pub leg: LegStats,
}

/// Room-wide counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoomStats {
    /// Participants now.
    pub participants: usize,
    /// Active speakers at the last tick.
    pub speakers: usize,
    /// Encoder groups now.
    pub encoder_groups: usize,
    /// Ticks that did work (an empty room's ticks are not counted).
    pub ticks: u64,
    /// Encoder calls at the last tick (shared plus per-speaker).
    pub encoder_calls_last_tick: u32,
    /// Shared (per-group) encodes at the last tick.
    pub shared_encodes_last_tick: u32,
    /// Per-participant encodes at the last tick: speakers' N-1 mixes, and participants
    /// hearing a clip of their own.
    pub speaker_encodes_last_tick: u32,
    /// Encoder calls since the room was created.
    pub encoder_calls_total: u64,
    /// Packets written for participants since the room was created (RTP and RTCP).
    pub packets_sent: u64,
    /// Failures on the send path (encoding or packetizing), frames not sent.
    pub send_errors: u64,
    /// Events dropped because nobody polled them.
    pub events_dropped: u64,
    /// Participants' frames decoded at the last tick.
    pub frames_decoded_last_tick: u32,
    /// Participants' frames advanced without decoding at the last tick.
    pub frames_skipped_last_tick: u32,
    /// Frames decoded since the room was created.
    pub frames_decoded_total: u64,
    /// Frames advanced without decoding since the room was created.
    pub frames_skipped_total: u64,
}

/// What a listener's encoded audio depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct GroupKey {
    codec: CodecKey,
    frame_ms: u32,
    /// The output gain's bits: equal gains share, any difference does not.
    output_gain_bits: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CodecKey {
    Opus {
        bitrate_bps: u32,
        fec: bool,
        /// The members' floor for the FEC's expected loss.
        expected_loss_percent: u8,
        dtx: bool,
        complexity: u8,
    },
    G711(bool),
}

enum GroupEncoder {
    Opus(Box<OpusEncoder>),
    G711(G711Encoder),
}

struct EncoderGroup {
    key: GroupKey,
    members: usize,
    output_gain: f32,
    encoder: GroupEncoder,
    resampler: Resampler,
    limiter: Limiter,
    pcm: Vec<f32>,
    codec_pcm: Vec<f32>,
    payload: Vec<u8>,
    /// This tick's payload length; `None` when not encoded (or failed).
    payload_len: Option<usize>,
    wanted: bool,
    /// The highest loss a member reported for its stream (RTCP) this tick, at least the
    /// group's floor.
    reported_loss: u8,
}

impl EncoderGroup {
    fn new(
        key: GroupKey,
        output_gain: f32,
        config: &RoomConfig,
        frame: usize,
    ) -> Result<Self, RoomError> {
        let (encoder, rate) = match key.codec {
            CodecKey::Opus {
                bitrate_bps,
                fec,
                expected_loss_percent,
                dtx,
                complexity,
            } => (
                // The same settings as the leg's own encoder (`MediaLeg::new`).
                GroupEncoder::Opus(Box::new(OpusEncoder::new(OpusEncoderConfig {
                    sample_rate: ROOM_RATE,
                    bitrate_bps,
                    inband_fec: fec,
                    dtx,
                    // Raised each tick by the members' reports (`tick`).
                    expected_loss_percent,
                    frame_ms: key.frame_ms,
                    complexity,
                    signal: OpusSignal::MusicUntilLoss,
                    ..OpusEncoderConfig::default()
                })?)),
                ROOM_RATE,
            ),
            CodecKey::G711(ulaw) => (
                GroupEncoder::G711(G711Encoder::new(
                    if ulaw { G711Law::Ulaw } else { G711Law::Alaw },
                    key.frame_ms,
                )?),
                confer_codecs::g711::SAMPLE_RATE,
            ),
        };
        Ok(EncoderGroup {
            key,
            members: 0,
            output_gain,
            encoder,
            resampler: Resampler::new(ROOM_RATE, rate, key.frame_ms)?,
            limiter: Limiter::new(config.limiter, ROOM_RATE, frame)?,
            pcm: vec![0.0; frame],
            codec_pcm: vec![0.0; (rate / 1000 * key.frame_ms) as usize],
            payload: vec![0; MAX_ENCODED_PAYLOAD],
            payload_len: None,
            wanted: false,
            reported_loss: 0,
        })
    }

    fn fec_loss_percent(&self) -> Option<u8> {
        match &self.encoder {
            GroupEncoder::Opus(e) => e.fec_loss_percent(),
            GroupEncoder::G711(_) => None,
        }
    }

    fn encode(&mut self) -> Result<usize, CodecError> {
        self.resampler.process(&self.pcm, &mut self.codec_pcm)?;
        match &mut self.encoder {
            GroupEncoder::Opus(e) => {
                // FEC sized for the member that loses most (a leg does the same for its
                // own peer): none until someone reports loss.
                if e.fec_loss_percent()
                    .is_some_and(|l| l != self.reported_loss)
                {
                    e.set_expected_loss_percent(self.reported_loss)?;
                }
                e.encode(&self.codec_pcm, &mut self.payload)
            }
            GroupEncoder::G711(e) => e.encode(&self.codec_pcm, &mut self.payload),
        }
    }
}

/// A queue of clips played one frame per tick (see the module docs).
struct Playback {
    /// Holds at most [`PLAYBACK_QUEUE_LEN`] clips: allocated with that many places, it
    /// never grows.
    queue: VecDeque<Clip>,
    /// Samples of the front clip already played.
    pos: usize,
}

impl Playback {
    fn new() -> Self {
        Playback {
            queue: VecDeque::with_capacity(PLAYBACK_QUEUE_LEN),
            pos: 0,
        }
    }

    /// A queue that allocates its places at the first [`Playback::reserve`].
    fn unallocated() -> Self {
        Playback {
            queue: VecDeque::new(),
            pos: 0,
        }
    }

    fn reserve(&mut self) {
        self.queue
            .reserve_exact(PLAYBACK_QUEUE_LEN.saturating_sub(self.queue.len()));
    }

    fn push(&mut self, clip: Clip) -> Result<(), RoomError> {
        if self.queue.len() >= PLAYBACK_QUEUE_LEN {
            return Err(RoomError::PlaybackQueueFull);
        }
        self.queue.push_back(clip);
        Ok(())
    }

    fn clear(&mut self) {
        self.queue.clear();
        self.pos = 0;
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Drops played and empty clips from the front; whether samples are left to play.
    fn settle(&mut self) -> bool {
        while let Some(clip) = self.queue.front() {
            if self.pos < clip.len() {
                return true;
            }
            self.queue.pop_front();
            self.pos = 0;
        }
        false
    }

    /// Adds the next frame of the front clip times `gain` into `out` (a clip's last frame
    /// is padded: the next clip starts at the next frame); whether the queue has played
    /// out.
    fn add_next(&mut self, out: &mut [f32], gain: f32) -> bool {
        if self.settle()
            && let Some(clip) = self.queue.front()
        {
            let rest = clip.get(self.pos..).unwrap_or_default();
            let n = rest.len().min(out.len());
            for (o, &x) in out.iter_mut().zip(&rest[..n]) {
                let x = if x.is_finite() {
                    x.clamp(-1.0, 1.0)
                } else {
                    0.0
                };
                *o += x * gain;
            }
            self.pos += n;
        }
        !self.settle()
    }
}

/// A participant's in-band DTMF detector, with what it takes to feed it at 8 kHz.
struct InbandDtmf {
    resampler: Resampler,
    pcm: Vec<f32>,
    detector: DtmfDetector,
}

impl InbandDtmf {
    fn new(frame_ms: u32) -> Result<Box<Self>, RoomError> {
        let resampler = Resampler::new(ROOM_RATE, INBAND_DTMF_RATE, frame_ms)?;
        let detector = DtmfDetector::new(INBAND_DTMF_RATE)
            .map_err(|_| RoomError::BadConfig("in-band DTMF detector rate"))?;
        Ok(Box::new(InbandDtmf {
            pcm: vec![0.0; resampler.output_len()],
            resampler,
            detector,
        }))
    }

    /// Feeds one room frame; each key press that starts goes to `out`.
    fn process(
        &mut self,
        frame: &[f32],
        id: ParticipantId,
        out: &mut Vec<(ParticipantId, DtmfDigit)>,
    ) {
        let Ok(n) = self.resampler.process(frame, &mut self.pcm) else {
            // Frame sizes were checked at join; nothing else fails.
            return;
        };
        let pcm = self.pcm.get(..n).unwrap_or_default();
        self.detector.process(pcm, |e| {
            if let DtmfEvent::Started { digit, .. } = e {
                out.push((id, digit));
            }
        });
    }
}

struct Participant {
    id: ParticipantId,
    leg: MediaLeg,
    moderator: bool,
    muted: bool,
    deaf: bool,
    input_gain_db: f32,
    input_gain: f32,
    output_gain_db: f32,
    output_gain: f32,
    group: usize,
    frame: Vec<f32>,
    limiter: Limiter,
    talking: bool,
    level_dbov: f32,
    /// The participant's place in this tick's mixer, when it is a speaker.
    mix_index: Option<usize>,
    frames_mixed: u64,
    /// This tick, whether it speaks is decided from its RTP header level.
    header: bool,
    /// Its frame was decoded this tick.
    decoded: bool,
    /// Clips for it alone.
    playback: Playback,
    /// A clip of its own plays this tick.
    playing: bool,
    /// In-band DTMF detection, when on.
    inband: Option<Box<InbandDtmf>>,
}

struct Slot {
    generation: u32,
    participant: Option<Participant>,
}

/// A conference room. See the module docs for the drive contract.
pub struct Room {
    config: RoomConfig,
    created: Instant,
    frame_samples: usize,
    locked: bool,
    ended: bool,
    slots: Vec<Slot>,
    count: usize,
    moderators: usize,
    speakers: ActiveSpeakers,
    mixer: Mixer,
    groups: Vec<EncoderGroup>,
    scratch: Vec<f32>,
    packet: Vec<u8>,
    events: VecDeque<RoomEvent>,
    stats: RoomStats,
    recording: Option<Recording>,
    /// Non-speakers decoded ahead of time this tick (slots), at most `challengers`.
    challengers: Vec<usize>,
    /// Keys pressed this tick, by whom (reused).
    digits: Vec<(ParticipantId, DtmfDigit)>,
    /// The room's announcements; allocated, with `announcement`, at the first
    /// [`Room::announce`] (most rooms never announce, and idle rooms must stay small).
    announcements: Playback,
    /// This tick's frame of the announcement.
    announcement: Vec<f32>,
    stage_clock: Option<StageClock>,
    last_stages: StageTimes,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room")
            .field("participants", &self.count)
            .field("locked", &self.locked)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

fn gain_from_db(db: f32) -> Result<f32, RoomError> {
    if !GAIN_DB_RANGE.contains(&db) {
        return Err(RoomError::GainOutOfRange(db));
    }
    Ok(10f32.powf(db / 20.0))
}

impl Room {
    /// A room created at `now` (the origin of its media time).
    pub fn new(config: RoomConfig, now: Instant) -> Result<Self, RoomError> {
        if config.frame_ms != 10 && config.frame_ms != 20 {
            return Err(RoomError::BadConfig("frame_ms must be 10 or 20"));
        }
        if !(1..=100_000).contains(&config.max_participants) {
            return Err(RoomError::BadConfig("max_participants must be 1..=100000"));
        }
        if config.challengers > 64 {
            return Err(RoomError::BadConfig("challengers must be 0..=64"));
        }
        let frame_samples = (ROOM_RATE / 1000 * config.frame_ms) as usize;
        let frame = Duration::from_millis(u64::from(config.frame_ms));
        let speakers = ActiveSpeakers::new(config.speakers, frame, 0)?;
        let mixer = Mixer::new(frame_samples, config.speakers.max_speakers)?;
        // Validates the limiter settings now rather than at the first join.
        Limiter::new(config.limiter, ROOM_RATE, frame_samples)?;
        // Sized for a tick's worth of events: an idle room must stay small (10,000 of them
        // per process); a burst grows it, up to EVENT_QUEUE_LEN, once.
        let mut events = VecDeque::with_capacity(EVENT_QUEUE_INITIAL);
        events.push_back(RoomEvent {
            media_time: Duration::ZERO,
            at: now,
            kind: RoomEventKind::Created,
        });
        Ok(Room {
            created: now,
            frame_samples,
            locked: false,
            ended: false,
            slots: Vec::new(),
            count: 0,
            moderators: 0,
            speakers,
            mixer,
            groups: Vec::new(),
            scratch: vec![0.0; frame_samples],
            packet: vec![0; MAX_DATAGRAM],
            events,
            stats: RoomStats::default(),
            recording: None,
            challengers: Vec::with_capacity(config.challengers),
            digits: Vec::new(),
            announcements: Playback::unallocated(),
            announcement: Vec::new(),
            stage_clock: None,
            last_stages: StageTimes::default(),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RoomConfig {
        &self.config
    }

    /// Participants now.
    pub fn len(&self) -> usize {
        self.count
    }

    /// No participants.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The participants now, in slot order.
    pub fn participants(&self) -> impl Iterator<Item = ParticipantId> + '_ {
        self.slots
            .iter()
            .filter_map(|s| s.participant.as_ref().map(|p| p.id))
    }

    /// The room is waiting for a moderator (non-moderators hear nothing, are not mixed).
    pub fn waiting_for_moderator(&self) -> bool {
        self.config.wait_for_moderator && self.moderators == 0
    }

    /// The active speakers at the last tick.
    pub fn speakers(&self) -> impl Iterator<Item = ParticipantId> + '_ {
        self.speakers
            .speakers()
            .iter()
            .filter_map(|&s| self.slots.get(s)?.participant.as_ref().map(|p| p.id))
    }

    fn push_event(&mut self, now: Instant, kind: RoomEventKind) {
        push_event(&mut self.events, &mut self.stats, self.created, now, kind);
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<RoomEvent> {
        self.events.pop_front()
    }

    fn participant(&self, id: ParticipantId) -> Result<&Participant, RoomError> {
        self.slots
            .get(id.slot as usize)
            .filter(|s| s.generation == id.generation)
            .and_then(|s| s.participant.as_ref())
            .ok_or(RoomError::UnknownParticipant(id))
    }

    fn participant_mut(&mut self, id: ParticipantId) -> Result<&mut Participant, RoomError> {
        self.slots
            .get_mut(id.slot as usize)
            .filter(|s| s.generation == id.generation)
            .and_then(|s| s.participant.as_mut())
            .ok_or(RoomError::UnknownParticipant(id))
    }

    /// Adds a participant at `now`. Refused when the room is locked, full or ended, when a
    /// gain is out of range, or when the leg's frames are not the room's (the leg is then
    /// dropped).
    pub fn join(&mut self, p: ParticipantConfig, now: Instant) -> Result<ParticipantId, RoomError> {
        if self.ended {
            return Err(RoomError::Ended);
        }
        if self.locked {
            return Err(RoomError::Locked);
        }
        if self.count >= self.config.max_participants {
            return Err(RoomError::Full(self.config.max_participants));
        }
        let got = p.leg.frame_samples();
        if got != self.frame_samples
            || p.leg.frame_duration() != Duration::from_millis(u64::from(self.config.frame_ms))
        {
            return Err(RoomError::FrameMismatch {
                expected: self.frame_samples,
                got,
            });
        }
        let input_gain = gain_from_db(p.input_gain_db)?;
        let output_gain = gain_from_db(p.output_gain_db)?;
        let inband = if p.inband_dtmf {
            Some(InbandDtmf::new(self.config.frame_ms)?)
        } else {
            None
        };
        let group = self.group_for(&p.leg, p.output_gain_db, output_gain)?;
        let limiter = Limiter::new(self.config.limiter, ROOM_RATE, self.frame_samples)?;
        let slot = match self.slots.iter().position(|s| s.participant.is_none()) {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    participant: None,
                });
                self.slots.len() - 1
            }
        };
        let s = &mut self.slots[slot];
        s.generation = s.generation.wrapping_add(1);
        // Slots are bounded by max_participants (<= 100000), so the index fits.
        let id = ParticipantId {
            slot: slot as u32,
            generation: s.generation,
        };
        s.participant = Some(Participant {
            id,
            leg: p.leg,
            moderator: p.moderator,
            muted: p.muted,
            deaf: p.deaf,
            input_gain_db: p.input_gain_db,
            input_gain,
            output_gain_db: p.output_gain_db,
            output_gain,
            group,
            frame: vec![0.0; self.frame_samples],
            limiter,
            talking: false,
            level_dbov: SILENCE_DBOV,
            mix_index: None,
            frames_mixed: 0,
            header: false,
            decoded: false,
            playback: Playback::new(),
            playing: false,
            inband,
        });
        self.groups[group].members += 1;
        self.count += 1;
        if p.moderator {
            self.moderators += 1;
        }
        self.speakers.reset_slot(slot);
        self.stats.participants = self.count;
        self.stats.encoder_groups = self.groups.len();
        self.push_event(
            now,
            RoomEventKind::Joined {
                id,
                moderator: p.moderator,
            },
        );
        Ok(id)
    }

    /// The index of the encoder group for a listener on `leg` with this output gain,
    /// created if new.
    fn group_for(&mut self, leg: &MediaLeg, gain_db: f32, gain: f32) -> Result<usize, RoomError> {
        let codec = match leg.codec() {
            Codec::Opus(o) => CodecKey::Opus {
                bitrate_bps: o.bitrate_bps,
                fec: o.fec,
                expected_loss_percent: if o.fec { o.expected_loss_percent } else { 0 },
                dtx: o.dtx,
                complexity: o.complexity,
            },
            Codec::Pcmu => CodecKey::G711(true),
            Codec::Pcma => CodecKey::G711(false),
        };
        let key = GroupKey {
            codec,
            frame_ms: self.config.frame_ms,
            output_gain_bits: gain_db.to_bits(),
        };
        if let Some(i) = self.groups.iter().position(|g| g.key == key) {
            return Ok(i);
        }
        self.groups.push(EncoderGroup::new(
            key,
            gain,
            &self.config,
            self.frame_samples,
        )?);
        Ok(self.groups.len() - 1)
    }

    /// Takes a participant out of its encoder group, dropping the group when empty.
    fn release_group(&mut self, group: usize) {
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        g.members = g.members.saturating_sub(1);
        if g.members > 0 {
            return;
        }
        self.groups.swap_remove(group);
        let moved = self.groups.len();
        if group < moved {
            for p in self.slots.iter_mut().filter_map(|s| s.participant.as_mut()) {
                if p.group == moved {
                    p.group = group;
                }
            }
        }
        self.stats.encoder_groups = self.groups.len();
    }

    fn remove(
        &mut self,
        id: ParticipantId,
        reason: LeaveReason,
        now: Instant,
    ) -> Result<MediaLeg, RoomError> {
        // The generation check (the slot may hold someone else by now).
        self.participant(id)?;
        let slot = id.slot as usize;
        let Some(p) = self.slots.get_mut(slot).and_then(|s| s.participant.take()) else {
            return Err(RoomError::UnknownParticipant(id));
        };
        self.count -= 1;
        if p.moderator {
            self.moderators -= 1;
        }
        self.speakers.remove(slot);
        self.release_group(p.group);
        self.stats.participants = self.count;
        if self.count == 0 {
            self.announcements.clear();
        }
        if p.talking {
            self.push_event(now, RoomEventKind::StoppedTalking(id));
        }
        self.push_event(now, RoomEventKind::Left { id, reason });
        Ok(p.leg)
    }

    /// The participant leaves at `now`; its leg is given back (to send a BYE).
    pub fn leave(&mut self, id: ParticipantId, now: Instant) -> Result<MediaLeg, RoomError> {
        self.remove(id, LeaveReason::Left, now)
    }

    /// The participant is removed at `now` by a moderator or the API; its leg is given back.
    pub fn kick(&mut self, id: ParticipantId, now: Instant) -> Result<MediaLeg, RoomError> {
        self.remove(id, LeaveReason::Kicked, now)
    }

    /// Ends the room at `now`: everyone leaves, later joins are refused. Returns the legs.
    pub fn end(&mut self, now: Instant) -> Vec<(ParticipantId, MediaLeg)> {
        if self.ended {
            return Vec::new();
        }
        let ids: Vec<ParticipantId> = self.participants().collect();
        let mut legs = Vec::with_capacity(ids.len());
        for id in ids {
            if let Ok(leg) = self.remove(id, LeaveReason::RoomEnded, now) {
                legs.push((id, leg));
            }
        }
        self.ended = true;
        self.push_event(now, RoomEventKind::Ended);
        legs
    }

    /// No more joins.
    pub fn lock(&mut self, now: Instant) {
        if !self.locked {
            self.locked = true;
            self.push_event(now, RoomEventKind::Locked);
        }
    }

    /// Joins allowed again.
    pub fn unlock(&mut self, now: Instant) {
        if self.locked {
            self.locked = false;
            self.push_event(now, RoomEventKind::Unlocked);
        }
    }

    /// Whether the room is locked.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Mutes (the participant's audio is not mixed) or unmutes.
    pub fn set_muted(
        &mut self,
        id: ParticipantId,
        muted: bool,
        now: Instant,
    ) -> Result<(), RoomError> {
        let p = self.participant_mut(id)?;
        if p.muted == muted {
            return Ok(());
        }
        p.muted = muted;
        self.push_event(
            now,
            if muted {
                RoomEventKind::Muted(id)
            } else {
                RoomEventKind::Unmuted(id)
            },
        );
        Ok(())
    }

    /// Makes deaf (the participant receives nothing) or hearing again.
    pub fn set_deaf(
        &mut self,
        id: ParticipantId,
        deaf: bool,
        now: Instant,
    ) -> Result<(), RoomError> {
        let p = self.participant_mut(id)?;
        if p.deaf == deaf {
            return Ok(());
        }
        p.deaf = deaf;
        self.push_event(
            now,
            if deaf {
                RoomEventKind::Deafened(id)
            } else {
                RoomEventKind::Undeafened(id)
            },
        );
        Ok(())
    }

    /// Gain on what the participant says, in dB ([`GAIN_DB_RANGE`]).
    pub fn set_input_gain_db(&mut self, id: ParticipantId, db: f32) -> Result<(), RoomError> {
        let g = gain_from_db(db)?;
        let p = self.participant_mut(id)?;
        p.input_gain_db = db;
        p.input_gain = g;
        Ok(())
    }

    /// Gain on what the participant hears, in dB ([`GAIN_DB_RANGE`]). Listeners share an
    /// encode per output gain, so this may move the participant to another encoder group
    /// (built here if new).
    pub fn set_output_gain_db(&mut self, id: ParticipantId, db: f32) -> Result<(), RoomError> {
        let g = gain_from_db(db)?;
        self.move_to_group(id, db, g)
    }

    fn move_to_group(&mut self, id: ParticipantId, db: f32, g: f32) -> Result<(), RoomError> {
        // The generation check; then the participant is taken out of its slot for the
        // lookup, so `group_for` can borrow the room mutably, and put back whatever happens.
        self.participant(id)?;
        let slot = id.slot as usize;
        let Some(mut p) = self.slots.get_mut(slot).and_then(|s| s.participant.take()) else {
            return Err(RoomError::UnknownParticipant(id));
        };
        match self.group_for(&p.leg, db, g) {
            Ok(new) => {
                self.groups[new].members += 1;
                let old = p.group;
                p.group = new;
                p.output_gain_db = db;
                p.output_gain = g;
                self.slots[slot].participant = Some(p);
                self.release_group(old);
                self.stats.encoder_groups = self.groups.len();
                Ok(())
            }
            Err(e) => {
                self.slots[slot].participant = Some(p);
                Err(e)
            }
        }
    }

    /// Gives or takes the moderator role.
    pub fn set_moderator(&mut self, id: ParticipantId, moderator: bool) -> Result<(), RoomError> {
        let p = self.participant_mut(id)?;
        if p.moderator == moderator {
            return Ok(());
        }
        p.moderator = moderator;
        if moderator {
            self.moderators += 1;
        } else {
            self.moderators -= 1;
        }
        Ok(())
    }

    /// Turns in-band DTMF detection on (a fresh detector; nothing if already on) or off
    /// for `id` (see the module docs).
    pub fn set_inband_dtmf(&mut self, id: ParticipantId, on: bool) -> Result<(), RoomError> {
        let frame_ms = self.config.frame_ms;
        let p = self.participant_mut(id)?;
        match (on, p.inband.is_some()) {
            (true, false) => p.inband = Some(InbandDtmf::new(frame_ms)?),
            (false, true) => p.inband = None,
            _ => {}
        }
        Ok(())
    }

    /// Queues `clip` for participant `id` alone, after what it already has queued (see
    /// the module docs). Beyond [`PLAYBACK_QUEUE_LEN`] queued clips (the one playing
    /// included): [`RoomError::PlaybackQueueFull`]. An empty clip finishes at the next
    /// tick.
    pub fn play_to(&mut self, id: ParticipantId, clip: Clip) -> Result<(), RoomError> {
        self.participant_mut(id)?.playback.push(clip)
    }

    /// Drops the participant's queue at once (barge-in); no
    /// [`RoomEventKind::PlaybackFinished`] for it.
    pub fn stop_playback(&mut self, id: ParticipantId) -> Result<(), RoomError> {
        self.participant_mut(id)?.playback.clear();
        Ok(())
    }

    /// Whether a clip plays (or waits) for `id`.
    pub fn is_playing(&self, id: ParticipantId) -> Result<bool, RoomError> {
        Ok(!self.participant(id)?.playback.is_empty())
    }

    /// Queues `clip` for everyone in the room (an announcement): mixed into what every
    /// hearing participant hears and into the recording's mix, one frame per tick, after
    /// the announcements already queued. Beyond [`PLAYBACK_QUEUE_LEN`] queued:
    /// [`RoomError::PlaybackQueueFull`]; an ended room: [`RoomError::Ended`]. In an empty
    /// room nobody could hear it: it is dropped (`Ok`).
    pub fn announce(&mut self, clip: Clip) -> Result<(), RoomError> {
        if self.ended {
            return Err(RoomError::Ended);
        }
        if self.count == 0 {
            return Ok(());
        }
        if self.announcement.len() != self.frame_samples {
            self.announcements.reserve();
            self.announcement = vec![0.0; self.frame_samples];
        }
        self.announcements.push(clip)
    }

    /// A datagram from participant `id` that arrived at `now`.
    pub fn handle_datagram(
        &mut self,
        id: ParticipantId,
        datagram: &[u8],
        now: Instant,
    ) -> Result<Received, RoomError> {
        let p = self.participant_mut(id)?;
        Ok(p.leg.handle_datagram(datagram, now)?)
    }

    /// Starts recording into `sink` (see the module docs); `tracks` also gives it every
    /// participant's own input. Refused while a recording runs (the new sink is dropped).
    pub fn start_recording(
        &mut self,
        sink: Box<dyn RecordSink>,
        tracks: bool,
    ) -> Result<(), RoomError> {
        if self.recording.is_some() {
            return Err(RoomError::AlreadyRecording);
        }
        let limiter = Limiter::new(self.config.limiter, ROOM_RATE, self.frame_samples)?;
        self.recording = Some(Recording {
            sink,
            tracks,
            limiter,
        });
        Ok(())
    }

    /// Stops recording and gives the sink back (`None` when not recording).
    pub fn stop_recording(&mut self) -> Option<Box<dyn RecordSink>> {
        self.recording.take().map(|r| r.sink)
    }

    /// Whether a recording runs.
    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    /// The running recording's sink, e.g. to tell it about a new participant.
    pub fn record_sink_mut(&mut self) -> Option<&mut dyn Any> {
        self.recording
            .as_mut()
            .map(|r| &mut *r.sink as &mut dyn Any)
    }

    /// Room-wide counters.
    pub fn stats(&self) -> RoomStats {
        self.stats
    }

    /// One participant's state and counters.
    pub fn participant_stats(&self, id: ParticipantId) -> Result<ParticipantStats, RoomError> {
        let p = self.participant(id)?;
        let leg = p.leg.stats();
        let slot = id.slot as usize;
        Ok(ParticipantStats {
            jitter_buffer_delay_ms: leg.jitter_buffer.current_delay_ms,
            jitter_buffer_target_ms: leg.jitter_buffer.target_delay_ms,
            packets_expected: leg.packets_expected,
            packets_lost: leg.packets_lost,
            loss_fraction: if leg.packets_expected == 0 {
                0.0
            } else {
                leg.packets_lost as f64 / leg.packets_expected as f64
            },
            level_dbov: p.level_dbov,
            smoothed_level_dbov: self.speakers.smoothed_dbov(slot),
            talking: p.talking,
            speaker: self.speakers.is_speaker(slot),
            muted: p.muted,
            deaf: p.deaf,
            moderator: p.moderator,
            input_gain_db: p.input_gain_db,
            output_gain_db: p.output_gain_db,
            frames_mixed: p.frames_mixed,
            header_levels: p.header,
            decoded: p.decoded,
            fec_loss_percent: if p.mix_index.is_some() {
                p.leg.fec_loss_percent()
            } else {
                self.groups
                    .get(p.group)
                    .and_then(EncoderGroup::fec_loss_percent)
            },
            reported_loss_percent: p.leg.reported_loss_percent(),
            leg,
        })
    }

    /// Times the stages of every tick with `clock` (see the module docs), or stops timing
    /// (`None`). The room never reads a clock of its own: the host passes `Instant::now`,
    /// tests a fake one.
    pub fn set_stage_clock(&mut self, clock: Option<StageClock>) {
        self.stage_clock = clock;
    }

    /// What the last tick did: its time per stage (zero without a stage clock) and its
    /// counts (frames decoded and skipped, decoder and encoder calls; always counted). An
    /// empty room's tick reports nothing.
    pub fn last_tick_stages(&self) -> StageTimes {
        self.last_stages
    }

    /// The jitter-buffer delay of every participant mixed at the last tick.
    pub fn mixed_jitter_delays(&self) -> impl Iterator<Item = (ParticipantId, Duration)> + '_ {
        self.slots
            .iter()
            .filter_map(|s| s.participant.as_ref())
            .filter(|p| p.mix_index.is_some())
            .map(|p| (p.id, p.leg.jitter_buffer_delay()))
    }

    /// One frame tick at `now`: see the module docs. `send` gets every packet to transmit
    /// and its participant.
    pub fn tick(&mut self, now: Instant, send: &mut impl FnMut(ParticipantId, &[u8])) {
        self.last_stages = StageTimes::default();
        if self.count == 0 {
            self.announcements.clear();
            if let Some(r) = self.recording.as_mut() {
                // An empty room's recording goes on as silence (continuous timeline).
                self.scratch.fill(0.0);
                r.sink.mix(&self.scratch);
            }
            return;
        }
        let mut timer = self.stage_clock.map(StageTimer::start);
        self.stats.ticks += 1;
        let waiting = self.waiting_for_moderator();
        // Recorded tracks need everyone's audio.
        let use_headers =
            self.config.header_levels && !self.recording.as_ref().is_some_and(|r| r.tracks);
        let (mut decoded, mut skipped, mut decoder_calls) = (0u32, 0u32, 0u32);

        // 1. Levels and voice: from the RTP header where the participant sends levels,
        //    else from its decoded frame.
        for slot in 0..self.slots.len() {
            let Some(p) = self.slots[slot].participant.as_mut() else {
                continue;
            };
            p.mix_index = None;
            let header = if use_headers {
                p.leg.header_level(now)
            } else {
                None
            };
            p.header = header.is_some();
            p.decoded = header.is_none();
            let (level, voice) = match header {
                Some(l) => (-f32::from(l.level()), l.voice()),
                None => {
                    decoded += 1;
                    let r = p.leg.poll_frame_timed(now, &mut p.frame, timer.as_mut());
                    take_digits(&mut p.leg, p.id, &mut self.digits);
                    match r {
                        Ok(info) => {
                            decoder_calls += info.decoder_calls;
                            (-f32::from(info.level.level()), info.voice && !info.idle)
                        }
                        Err(_) => {
                            // Frame sizes were checked at join; nothing else fails. Silence.
                            p.frame.fill(0.0);
                            (SILENCE_DBOV, false)
                        }
                    }
                }
            };
            p.level_dbov = level;
            if p.muted || waiting {
                self.speakers.silence(slot);
            } else {
                self.speakers.update(slot, level, voice);
            }
            let talking = self.speakers.is_talking(slot);
            if talking != p.talking {
                p.talking = talking;
                let id = p.id;
                self.push_event(
                    now,
                    if talking {
                        RoomEventKind::StartedTalking(id)
                    } else {
                        RoomEventKind::StoppedTalking(id)
                    },
                );
            }
        }

        // 2. Speakers, and who else to decode ahead of time.
        self.speakers.select();
        if use_headers {
            // Those decoded for their VAD anyway take no challenger's place.
            let slots = &self.slots;
            self.speakers
                .challengers(self.config.challengers, &mut self.challengers, |slot| {
                    slots[slot].participant.as_ref().is_some_and(|p| p.header)
                });
        }
        lap(&mut timer, Stage::Mix);

        // Header-level participants: speakers, challengers and those whose keys come as
        // tones are decoded, everyone else's jitter buffer only keeps its schedule. Those
        // skipped are timed together, one jitter lap before the next decode and one after.
        let mut skipping = false;
        for slot in 0..self.slots.len() {
            let Some(p) = self.slots[slot].participant.as_mut().filter(|p| p.header) else {
                continue;
            };
            let speaker = self.speakers.is_speaker(slot);
            if speaker || self.challengers.contains(&slot) || p.inband.is_some() {
                if std::mem::take(&mut skipping) {
                    lap(&mut timer, Stage::Jitter);
                }
                decoded += 1;
                p.decoded = true;
                // A challenger is decoded only to be warm when it is mixed (a key detector
                // needs only the audio): no noise suppression or VAD until then (its level
                // comes from the headers).
                let r = if speaker {
                    p.leg.poll_frame_timed(now, &mut p.frame, timer.as_mut())
                } else {
                    p.leg.poll_frame_warm(now, &mut p.frame, timer.as_mut())
                };
                match r {
                    Ok(info) => decoder_calls += info.decoder_calls,
                    Err(_) => p.frame.fill(0.0),
                }
            } else {
                skipped += 1;
                skipping = true;
                p.leg.poll_skip(now, None);
            }
            take_digits(&mut p.leg, p.id, &mut self.digits);
        }
        if skipping {
            lap(&mut timer, Stage::Jitter);
        }
        self.challengers.clear();
        // In-band keys, from every decoded frame of those who want them (muted or not).
        let mut detectors = false;
        for p in self.slots.iter_mut().filter_map(|s| s.participant.as_mut()) {
            if let Some(d) = p.inband.as_mut() {
                d.process(&p.frame, p.id, &mut self.digits);
                detectors = true;
            }
        }
        if detectors {
            lap(&mut timer, Stage::Vad);
        }
        let mut digits = std::mem::take(&mut self.digits);
        for (id, digit) in digits.drain(..) {
            self.push_event(now, RoomEventKind::Digit { id, digit });
        }
        self.digits = digits;

        // 3. Speakers, mixed once.
        self.mixer.begin();
        for (k, &slot) in self.speakers.speakers().iter().enumerate() {
            let Some(p) = self
                .slots
                .get_mut(slot)
                .and_then(|s| s.participant.as_mut())
            else {
                continue;
            };
            if self.mixer.add(k, &p.frame, p.input_gain).is_ok() {
                p.mix_index = Some(k);
                p.frames_mixed += 1;
            }
        }
        self.stats.speakers = self.mixer.talkers();
        // The announcement's frame (it plays on, unheard, while the room waits for a
        // moderator), and who hears a clip of its own this tick (a queue of empty clips
        // finishes now, unheard).
        let announcing =
            self.announcements.settle() && self.announcement.len() == self.frame_samples;
        if announcing {
            self.announcement.fill(0.0);
            self.announcements.add_next(&mut self.announcement, 1.0);
        }
        let announcing = announcing && !waiting;
        for p in self.slots.iter_mut().filter_map(|s| s.participant.as_mut()) {
            let queued = !p.playback.is_empty();
            p.playing = p.playback.settle();
            if queued && !p.playing {
                let kind = RoomEventKind::PlaybackFinished(p.id);
                push_event(&mut self.events, &mut self.stats, self.created, now, kind);
            }
        }
        lap(&mut timer, Stage::Mix);

        // The recording: the full mix at unity gain, and each participant's own input.
        if let Some(r) = self.recording.as_mut() {
            if self.mixer.mix_all(1.0, &mut self.scratch).is_err() {
                self.scratch.fill(0.0);
            }
            if announcing {
                add_scaled(&mut self.scratch, &self.announcement, 1.0);
            }
            r.limiter.process(&mut self.scratch);
            r.sink.mix(&self.scratch);
            if r.tracks {
                for p in self.slots.iter().filter_map(|s| s.participant.as_ref()) {
                    let gain = if p.muted || waiting {
                        0.0
                    } else {
                        p.input_gain
                    };
                    for (o, &x) in self.scratch.iter_mut().zip(&p.frame) {
                        *o = x * gain;
                    }
                    r.sink.track(p.id, &self.scratch);
                }
            }
            lap(&mut timer, Stage::Record);
        }

        // 5. Shared encodes, once per group that has a listener this tick.
        for g in &mut self.groups {
            g.wanted = false;
            g.payload_len = None;
            g.reported_loss = match g.key.codec {
                CodecKey::Opus {
                    expected_loss_percent,
                    ..
                } => expected_loss_percent,
                CodecKey::G711(_) => 0,
            };
        }
        if !waiting {
            for p in self.slots.iter().filter_map(|s| s.participant.as_ref()) {
                if p.mix_index.is_none()
                    && !p.deaf
                    && !p.playing
                    && let Some(g) = self.groups.get_mut(p.group)
                {
                    g.wanted = true;
                    g.reported_loss = g
                        .reported_loss
                        .max(p.leg.reported_loss_percent().unwrap_or(0));
                }
            }
        }
        lap(&mut timer, Stage::Mix);
        let mut shared = 0u32;
        for g in self.groups.iter_mut().filter(|g| g.wanted) {
            if self.mixer.mix_all(g.output_gain, &mut g.pcm).is_err() {
                self.stats.send_errors += 1;
                continue;
            }
            if announcing {
                add_scaled(&mut g.pcm, &self.announcement, g.output_gain);
            }
            g.limiter.process(&mut g.pcm);
            lap(&mut timer, Stage::Mix);
            shared += 1;
            match g.encode() {
                Ok(n) => g.payload_len = Some(n),
                Err(_) => self.stats.send_errors += 1,
            }
            lap(&mut timer, Stage::Encode);
        }

        // 4, 6, 7. Per participant: shared payload, own encode (N-1 mix, or a clip on top
        // of what it hears), or nothing; RTCP. Listeners of the shared mixes first: their
        // packets are ready now and can be on their way while the own mixes are encoded.
        let mut own = 0u32;
        let mut sent = 0u64;
        let order = [false, true];
        for own_pass in order {
            for slot in self.slots.iter_mut() {
                let Some(p) = slot.participant.as_mut().filter(|p| {
                    (p.playing || (p.mix_index.is_some() && !waiting && !p.deaf)) == own_pass
                }) else {
                    continue;
                };
                let hears = !waiting && !p.deaf;
                let r = if own_pass {
                    // What the room gives it (nothing when it cannot hear), its clip on
                    // top, all times its output gain.
                    let gain = p.output_gain;
                    let base = match (hears, p.mix_index) {
                        (false, _) => None,
                        (true, Some(k)) => self.mixer.mix_without(k, gain, &mut self.scratch).ok(),
                        (true, None) => self.mixer.mix_all(gain, &mut self.scratch).ok(),
                    };
                    if base.is_none() {
                        self.scratch.fill(0.0);
                    } else if announcing {
                        add_scaled(&mut self.scratch, &self.announcement, p.output_gain);
                    }
                    if p.playing && p.playback.add_next(&mut self.scratch, p.output_gain) {
                        let kind = RoomEventKind::PlaybackFinished(p.id);
                        push_event(&mut self.events, &mut self.stats, self.created, now, kind);
                    }
                    p.limiter.process(&mut self.scratch);
                    lap(&mut timer, Stage::Mix);
                    own += 1;
                    p.leg
                        .send_frame_timed(&self.scratch, now, &mut self.packet, timer.as_mut())
                } else if !hears {
                    // A packet longer than a frame, partly gathered, leaves now.
                    p.leg.skip_frame_flush(&mut self.packet)
                } else {
                    match self
                        .groups
                        .get(p.group)
                        .and_then(|g| Some(&g.payload[..g.payload_len?]))
                    {
                        Some(payload) => p.leg.send_payload(payload, now, &mut self.packet),
                        None => p.leg.skip_frame_flush(&mut self.packet),
                    }
                };
                match r {
                    Ok(0) => {}
                    Ok(n) => {
                        send(p.id, &self.packet[..n]);
                        sent += 1;
                    }
                    Err(_) => self.stats.send_errors += 1,
                }
                match p.leg.poll_rtcp(now, &mut self.packet) {
                    Ok(Some(n)) => {
                        send(p.id, &self.packet[..n]);
                        sent += 1;
                    }
                    Ok(None) => {}
                    Err(_) => self.stats.send_errors += 1,
                }
                if own_pass {
                    lap(&mut timer, Stage::Send);
                }
            }
            // The shared pass laps no other stage: one clock read for all its packets.
            lap(&mut timer, Stage::Send);
        }
        self.stats.shared_encodes_last_tick = shared;
        self.stats.speaker_encodes_last_tick = own;
        self.stats.encoder_calls_last_tick = shared + own;
        self.stats.encoder_calls_total += u64::from(shared + own);
        self.stats.packets_sent += sent;
        self.stats.frames_decoded_last_tick = decoded;
        self.stats.frames_skipped_last_tick = skipped;
        self.stats.frames_decoded_total += u64::from(decoded);
        self.stats.frames_skipped_total += u64::from(skipped);
        let mut stages = timer.map(|t| *t.times()).unwrap_or_default();
        stages.frames_decoded = decoded;
        stages.frames_skipped = skipped;
        stages.decoder_calls = decoder_calls;
        stages.encodes = shared + own;
        self.last_stages = stages;
    }
}

/// Moves the keys `leg` received since the last tick into `out` (the other leg events
/// concern only the leg).
fn take_digits(leg: &mut MediaLeg, id: ParticipantId, out: &mut Vec<(ParticipantId, DtmfDigit)>) {
    while let Some(e) = leg.poll_event() {
        if let LegEvent::Dtmf(ReceivedEvent::Started { event, .. }) = e
            && let Some(digit) = DtmfDigit::from_event_code(event)
        {
            out.push((id, digit));
        }
    }
}

/// Queues an event (a function of the fields it needs, so that a loop over the slots can
/// push events).
fn push_event(
    events: &mut VecDeque<RoomEvent>,
    stats: &mut RoomStats,
    created: Instant,
    now: Instant,
    kind: RoomEventKind,
) {
    if events.len() < EVENT_QUEUE_LEN {
        events.push_back(RoomEvent {
            media_time: now.saturating_duration_since(created),
            at: now,
            kind,
        });
    } else {
        stats.events_dropped += 1;
    }
}

/// `out += x * gain`.
fn add_scaled(out: &mut [f32], x: &[f32], gain: f32) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o += v * gain;
    }
}

fn lap(timer: &mut Option<StageTimer>, stage: Stage) {
    if let Some(t) = timer.as_mut() {
        t.lap(stage);
    }
}
