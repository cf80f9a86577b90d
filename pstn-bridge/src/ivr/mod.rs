//! The dial-in IVR: a phone caller dials a conference number, enters a PIN by DTMF, and
//! joins the room. Sans-IO, like the other cores: the binary feeds digits, PIN answers,
//! playback ends and time in, and carries out what comes out.
//!
//! # Pieces
//!
//! - [`Ivr`]: the state machine of one call (greeting, PIN entry, tries, lock-out,
//!   joining, in-call controls).
//! - [`Lockouts`]: failed PIN entries per caller across calls, owned by the binary and
//!   passed to the IVR where it decides ([`lockout`] explains the rules).
//! - [`DigitInput`], [`parse_sip_info`], [`DigitFilter`]: digits from RFC 4733, SIP INFO and
//!   in-band tones, one press counted once ([`digits`] explains the rules).
//! - [`Prompts`] and [`PromptPlayer`]: the recorded prompts (embedded Ogg Opus, generated
//!   by `scripts/make-prompts.sh`) decoded at a leg's or the room's rate, and rendered into
//!   frames with pauses between them.
//! - [`InCallControls`]: `*6` mute, `*0` participant count and the like, once joined.
//!
//! # Drive contract
//!
//! 1. After answering, [`Ivr::new`] with the call's [`CallInfo`] and the shared
//!    [`Lockouts`]. (The binary may check [`Lockouts::status`] before answering and refuse
//!    a locked-out caller at the SIP level; the IVR checks again and says goodbye.)
//! 2. After every call into the IVR, drain [`Ivr::poll_output`] until `None`:
//!    - [`IvrOutput::Play`]: queue the prompts on the call's [`PromptPlayer`];
//!      [`IvrOutput::StopPlayback`]: [`PromptPlayer::stop`].
//!    - [`IvrOutput::CheckPin`]: look the PIN up for the dialled number (possibly
//!      asynchronously), then [`Ivr::handle_pin_result`] with the ticket and a
//!      [`PinVerdict`]. The PIN must not be logged.
//!    - [`IvrOutput::JoinRoom`]: join the leg to the room.
//!    - [`IvrOutput::Control`]: carry out the in-call action, and answer with
//!      [`Ivr::announce`] (e.g. [`PromptId::Muted`], [`PromptQueue::participant_count`]).
//!    - [`IvrOutput::Hangup`]: send BYE; nothing follows.
//! 3. Every frame tick, [`PromptPlayer::fill`] the frame to send; when it returns
//!    [`PlayerStatus::Finished`], call [`Ivr::handle_playback_finished`].
//! 4. Digits: [`Ivr::handle_digit`] with a [`DigitInput`] from
//!    [`LegEvent::Dtmf`](confer_engine::leg::LegEvent) ([`DigitInput::from_leg_event`]),
//!    from a SIP INFO ([`DigitInput::from_sip_info`]; answer the INFO 200, or 415/400 on a
//!    [`DigitError`]), or from a [`DtmfDetector`](confer_codecs::dtmf::DtmfDetector) run on
//!    the caller's decoded audio while [`Ivr::wants_inband`] is true
//!    ([`DigitInput::from_detector_event`]).
//! 5. Call [`Ivr::handle_timeout`] when [`Ivr::poll_timeout`] passes (spurious calls are
//!    harmless). [`Ivr::handle_call_ended`] when the caller hangs up.
//!
//! The IVR never reads the clock, never panics on input, and keeps no secret in `Debug`.
//!
//! # Rules
//!
//! - The IVR plays "welcome" and "enter your PIN"; any digit stops a prompt (barge-in).
//! - `#` ends the entry; an entry of [`IvrConfig::max_pin_len`] digits ends by itself. `*`
//!   clears the entry and asks again. `A`-`D` are ignored.
//! - The first digit is due [`IvrConfig::first_digit_timeout`] (10 s) after the prompt
//!   ended, each further one within [`IvrConfig::inter_digit_timeout`] (5 s). On a timeout
//!   the partial entry is **discarded, not submitted**: a slow typist's half PIN is not a
//!   wrong guess and costs no try. A timeout, or `#` on an empty entry, re-prompts; the
//!   [`IvrConfig::max_no_input`]th (3rd) says "we did not receive a PIN, goodbye" and
//!   hangs up.
//! - The PIN check is asked of the binary ([`IvrOutput::CheckPin`]) rather than through a
//!   trait: rooms live in another crate and possibly another thread, and the answer may
//!   take a database round trip. No answer within [`IvrConfig::pin_check_timeout`] fails
//!   closed ("service not available", hang-up).
//! - A rejected PIN is recorded in [`Lockouts`]; the caller hears "not valid, try again"
//!   until [`IvrConfig::max_attempts`] (3) failures in this call, then "too many failed
//!   attempts, goodbye". A caller locked out (at the start, by this failure, or meanwhile
//!   by a parallel call) hears the same and is hung up on without a PIN check.
//! - A right PIN for a locked or full conference ends the call with that prompt and is not
//!   a failure. An admitted caller hears "you are now joining" (plus "first participant",
//!   "wait for the moderator" as the [`Admission`] says), then [`IvrOutput::JoinRoom`]; a
//!   digit skips the prompts.
//! - The whole IVR phase is limited to [`IvrConfig::session_limit`] (3 min), so `*` cannot
//!   hold a line forever.
//! - If the binary never reports the end of a playback, [`IvrConfig::playback_guard`]
//!   (60 s) moves on as if it had.

pub mod audio;
pub mod controls;
pub mod digits;
pub mod lockout;
mod machine;
pub mod player;
pub mod prompts;

pub use audio::AudioFileError;
pub use controls::{
    ControlAction, ControlMap, ControlMapError, ControlSequence, DEFAULT_SEQUENCE_TIMEOUT,
    InCallControls,
};
pub use digits::{
    DigitError, DigitFilter, DigitFilterStats, DigitInput, DigitSource, DigitVerdict, InfoDtmf,
    parse_sip_info,
};
pub use lockout::{CallerKey, LockoutConfig, LockoutConfigError, LockoutStatus, Lockouts};
pub use machine::{
    Admission, CallInfo, HangupReason, Ivr, IvrConfig, IvrError, IvrOutput, IvrPhase, IvrStats,
    IvrTimer, MAX_PIN_DIGITS, Pin, PinCheck, PinTicket, PinVerdict, RoomRef,
};
pub use player::{PlayerConfig, PlayerError, PlayerStatus, PromptPlayer};
pub use prompts::{PromptError, PromptId, PromptQueue, Prompts, SpokenNumber};
