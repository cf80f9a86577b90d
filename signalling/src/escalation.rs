//! Escalation: a chat turned into a call. The state machine behind `POST /v1/escalations`.
//!
//! An IM server names a conversation, its participants (users or phone numbers) and a
//! modality (voice, video, dial-in). [`Escalations`] decides, for every invitee, which
//! devices ring with which media and when, what happens when nobody answers, and tells the
//! binary what to do through [`Command`]s and what happened through [`Event`]s. It never
//! rings anything itself: sans-IO, time is an argument, and the only outside knowledge it
//! uses is passed in (the directory and presence, the dial-out policy decision).
//!
//! # Drive contract
//!
//! 1. [`Escalations::new`] with a [`RoutingPolicy`] (validated).
//! 2. Inputs, each with `now`: [`Escalations::escalate`] (create, change or end a call),
//!    [`Escalations::end`], the legs' outcomes by [`LegId`] ([`Escalations::on_answered`],
//!    [`Escalations::on_declined`], [`Escalations::on_failed`]), room membership
//!    ([`Escalations::on_joined`], [`Escalations::on_left`]).
//! 3. After each input, drain [`Escalations::poll_output`] until `None` and carry out the
//!    commands in order ([`Command::Ring`] a device, [`Command::DialPstn`] through the
//!    bridge, [`Command::JoinRoom`] an answered leg, ...); send the events to the stream
//!    and the archive.
//! 4. Sleep until [`Escalations::poll_timeout`], call [`Escalations::handle_timeout`]
//!    (early, late or spurious calls are harmless), go to 3.
//!
//! Every ring and dial is a *leg* with a [`LegId`] in its command; the binary reports the
//! leg's fate with that id. SIP mapping: 200 -> answered; 603 -> declined; 486/600 ->
//! [`LegFailure::Busy`], 404/408/480 or transport errors -> [`LegFailure::Unreachable`],
//! other final responses -> [`LegFailure::Rejected`]; the 487 that follows our CANCEL is a
//! failure of a leg already ended, ignored. The binary forwards `joined`/`left` events to
//! [`Presence`] as conference calls.
//!
//! # Routing rules
//!
//! - **Devices.** For a user: the devices online at `now` ([`Device::is_online`]) that can
//!   do audio, not PSTN numbers (those are the fallback), at most
//!   [`RoutingPolicy::max_rung_devices`], the earliest ring and the most recently active
//!   first.
//! - **Media per device.** Video on a device that declares video when the call is video;
//!   audio otherwise (a mobile without video, a desk phone). Decided when the device starts
//!   ringing, and again when it answers (a call upgraded while it rang joins with video).
//! - **Simultaneous ring with delays.** Every chosen device rings after its kind's delay
//!   ([`RingDelays`]: desktop app, browser and desk phone at once, mobile after 5 s, so the
//!   device at hand gets the first chance and the pocket still buzzes). All of an invitee's
//!   rings stop at one deadline, [`RoutingPolicy::ring_timeout`] after the invitation
//!   (20 s, the Teams and Skype for Business default before unanswered-call forwarding);
//!   a delay must be shorter than it.
//! - **First answer wins**: the other rings are cancelled ([`CancelReason::AnsweredElsewhere`]),
//!   the answered leg joins the room. An explicit **decline** on any device is the person
//!   saying no: the other rings stop and there is no fallback. A device that **fails**
//!   just drops out; when none is left, the fallback starts at once.
//! - **Fallback**, when the ring deadline passes, every device failed, or there was no
//!   device: dial the user's number ([`Directory::fallback_number`]) through the PSTN if
//!   the dial-out policy allowed it, with [`RoutingPolicy::pstn_timeout`] (40 s) to answer;
//!   else, or when that fails, [`Command::GiveDialInInstructions`]. The policy is asked
//!   once per invitee, at invitation ([`DialOutPolicy`]), so the response can say what
//!   will happen and the archive records the decision at the time it was made.
//! - **Phone participants** are dialled at once (if allowed), else get dial-in
//!   instructions. **Dial-in modality**: nobody is rung, every invitee gets instructions.
//! - **Do not disturb** (presence): no ring and no PSTN call, dial-in instructions only,
//!   unless [`RoutingPolicy::ring_when_do_not_disturb`].
//!
//! # A later escalation on the same conversation
//!
//! It changes the call in place: a voice/video modality different from the call's becomes
//! the call's ([`EventKind::ModalityChanged`]), and each answered or joined participant
//! whose media changes gets a [`Command::ChangeMedia`] (voice -> video upgrades only the
//! video-capable, video -> voice downgrades everyone; a dial-in request changes no one's
//! media). Listed participants not yet in the call are invited (a person who left,
//! declined or got instructions is invited again); those ringing, answered or joined are
//! reported as [`InviteeAction::AlreadyPresent`]. `end: true` ends the call.
//!
//! # End of a call
//!
//! [`Escalations::end`] or `end: true`; by itself when the last joined participant leaves
//! with nobody being rung ([`EndReason::Empty`]), or when nobody has joined and nothing is
//! pending for [`RoutingPolicy::unattended_timeout`] (15 min, room for dial-in people to
//! arrive; [`EndReason::Unattended`]). Ending cancels every ring, reports every joined
//! participant as left and emits [`Command::CloseRoom`]. An ended call is kept for
//! [`RoutingPolicy::ended_linger`] (2 min) so late inputs are recognised; an escalation on
//! its conversation starts a new call.
//!
//! # Late and duplicate inputs
//!
//! Inputs are idempotent ([`InputOutcome::Duplicate`]). An answer on a leg already
//! cancelled (another device won, the deadline passed, the call ended: the usual
//! CANCEL/200 crossing) gets a [`Command::CancelRing`] to hang it up, an
//! [`EventKind::LateInputIgnored`] event and [`InputOutcome::Ignored`]. Failures and
//! declines of ended legs are ignored silently. Unknown legs or conversations, and answers
//! on legs that never rang, are typed errors.
//!
//! # Bounds
//!
//! [`RoutingPolicy::max_participants`] per call (invitees and walk-ins),
//! [`RoutingPolicy::max_rung_devices`] per invitee, [`RoutingPolicy::max_calls`] live
//! calls (and as many ended ones lingering), legs per call bounded by those (a re-invited
//! person's old legs are dropped). A request is validated whole before anything changes.
//!
//! No randomness is needed: [`LegId`]s are sequential and not secrets (the binary's join
//! tokens and PINs are, and they never pass through here).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[cfg(doc)]
use crate::directory::Device;
use crate::directory::{
    DeviceId, DeviceKind, Directory, PhoneNumber, Timestamp, UserId, ValidationError, check_text,
    serde_ms, text_id,
};
use crate::presence::{Presence, PresenceState};

/// Longest subject, in bytes.
pub const MAX_SUBJECT_BYTES: usize = 512;

text_id!(
    /// The IM server's id of the chat being escalated; one call at a time per conversation.
    ConversationId,
    "conversation id"
);

/// What the IM server asks for: the policy's modality, one type for both.
pub use crate::policy::Modality;

/// What one leg or participant sends and receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Media {
    Audio,
    AudioVideo,
}

fn media_for(modality: Modality, video_capable: bool) -> Media {
    if modality == Modality::Video && video_capable {
        Media::AudioVideo
    } else {
        Media::Audio
    }
}

/// Someone in a call: a user of the directory, or an outside phone number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Participant {
    User(UserId),
    Phone(PhoneNumber),
}

impl fmt::Display for Participant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Participant::User(u) => write!(f, "user {u}"),
            // Redacted: errors end up in logs.
            Participant::Phone(n) => write!(f, "{n:?}"),
        }
    }
}

/// One ring of a device or one PSTN dial, named in commands and in the binary's reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LegId(pub u64);

impl fmt::Display for LegId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "leg-{}", self.0)
    }
}

/// What a leg calls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegTarget {
    Device(DeviceId),
    Pstn(PhoneNumber),
}

/// The body of `POST /v1/escalations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscalationRequest {
    pub conversation: ConversationId,
    /// Duplicates are ignored. May be empty for a change of an existing call.
    #[serde(default)]
    pub participants: Vec<Participant>,
    pub modality: Modality,
    /// The chat's subject, shown on the ringing devices.
    #[serde(default)]
    pub subject: Option<String>,
    /// End the conversation's call (the other fields are then ignored).
    #[serde(default)]
    pub end: bool,
}

/// How long after the invitation each kind of device starts ringing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RingDelays {
    /// Default 0.
    #[serde(rename = "desktop_app_ms", with = "serde_ms")]
    pub desktop_app: Duration,
    /// Default 0.
    #[serde(rename = "browser_ms", with = "serde_ms")]
    pub browser: Duration,
    /// Default 5 s.
    #[serde(rename = "mobile_ms", with = "serde_ms")]
    pub mobile: Duration,
    /// Default 0.
    #[serde(rename = "desk_phone_ms", with = "serde_ms")]
    pub desk_phone: Duration,
}

impl Default for RingDelays {
    fn default() -> RingDelays {
        RingDelays {
            desktop_app: Duration::ZERO,
            browser: Duration::ZERO,
            mobile: Duration::from_secs(5),
            desk_phone: Duration::ZERO,
        }
    }
}

impl RingDelays {
    /// The delay of a kind; PSTN numbers are never rung simultaneously (zero).
    pub fn of(&self, kind: DeviceKind) -> Duration {
        match kind {
            DeviceKind::DesktopApp => self.desktop_app,
            DeviceKind::Browser => self.browser,
            DeviceKind::Mobile => self.mobile,
            DeviceKind::DeskPhone => self.desk_phone,
            DeviceKind::PstnNumber => Duration::ZERO,
        }
    }
}

/// Routing values: delays, timeouts, bounds. See the module doc for their use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoutingPolicy {
    pub ring_delays: RingDelays,
    /// From invitation to the end of all of an invitee's rings. Default 20 s.
    #[serde(rename = "ring_timeout_ms", with = "serde_ms")]
    pub ring_timeout: Duration,
    /// For a PSTN dial to be answered. Default 40 s.
    #[serde(rename = "pstn_timeout_ms", with = "serde_ms")]
    pub pstn_timeout: Duration,
    /// A call nobody joined, with nothing pending, ends after this. Default 15 min.
    #[serde(rename = "unattended_timeout_ms", with = "serde_ms")]
    pub unattended_timeout: Duration,
    /// How long an ended call is remembered for late inputs. Default 2 min.
    #[serde(rename = "ended_linger_ms", with = "serde_ms")]
    pub ended_linger: Duration,
    /// Ring users whose presence is do-not-disturb. Default false.
    pub ring_when_do_not_disturb: bool,
    /// Most participants per call. Default 100.
    pub max_participants: usize,
    /// Most devices rung per invitee. Default 8.
    pub max_rung_devices: usize,
    /// Most live calls. Default 10 000.
    pub max_calls: usize,
}

impl Default for RoutingPolicy {
    fn default() -> RoutingPolicy {
        RoutingPolicy {
            ring_delays: RingDelays::default(),
            ring_timeout: Duration::from_secs(20),
            pstn_timeout: Duration::from_secs(40),
            unattended_timeout: Duration::from_secs(15 * 60),
            ended_linger: Duration::from_secs(120),
            ring_when_do_not_disturb: false,
            max_participants: 100,
            max_rung_devices: 8,
            max_calls: 10_000,
        }
    }
}

impl RoutingPolicy {
    /// Checks the values are usable: positive timeouts and bounds, every ring delay
    /// shorter than the ring timeout (else that device would never ring).
    pub fn validate(&self) -> Result<(), EscalationError> {
        let d = &self.ring_delays;
        let problem = if self.ring_timeout.is_zero() || self.pstn_timeout.is_zero() {
            "timeouts must be positive"
        } else if [d.desktop_app, d.browser, d.mobile, d.desk_phone]
            .iter()
            .any(|x| *x >= self.ring_timeout)
        {
            "every ring delay must be shorter than the ring timeout"
        } else if self.max_participants == 0 || self.max_rung_devices == 0 || self.max_calls == 0 {
            "bounds must be at least 1"
        } else {
            return Ok(());
        };
        Err(EscalationError::InvalidPolicy(problem))
    }
}

/// The dial-out policy's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum DialOutDecision {
    Allow,
    Deny { reason: String },
}

/// May confer dial `number` for `invitee` in `conversation`? Implemented by the binary
/// over the policy module; asked once per invitee when invited. Any
/// `Fn(&ConversationId, &Participant, &PhoneNumber) -> DialOutDecision` is one.
pub trait DialOutPolicy {
    fn decide(
        &self,
        conversation: &ConversationId,
        invitee: &Participant,
        number: &PhoneNumber,
    ) -> DialOutDecision;

    /// May `invitee` send and receive video (policy can block it per group)? When not,
    /// every leg and join of theirs is audio, whatever the device can do. Asked once per
    /// invitation; default yes.
    fn video_allowed(&self, _invitee: &Participant) -> bool {
        true
    }
}

impl<F> DialOutPolicy for F
where
    F: Fn(&ConversationId, &Participant, &PhoneNumber) -> DialOutDecision,
{
    fn decide(&self, c: &ConversationId, i: &Participant, n: &PhoneNumber) -> DialOutDecision {
        self(c, i, n)
    }
}

/// What will happen when an invitee's devices do not answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PstnPlan {
    /// Dial this number.
    Dial { number: PhoneNumber },
    /// The policy refused dialling it.
    Refused { number: PhoneNumber, reason: String },
    /// No number to dial.
    NoNumber,
    /// No PSTN step (dial-in modality, do not disturb).
    NotApplicable,
}

/// Why an invitee fell back (to the PSTN, or to dial-in instructions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackReason {
    NoDevice,
    NoAnswer,
    AllDevicesFailed,
    DoNotDisturb,
    DialInRequested,
    DialOutRefused,
    PstnNoAnswer,
    PstnFailed,
}

/// Why a ring or dial was cancelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    AnsweredElsewhere,
    DeclinedElsewhere,
    JoinedElsewhere,
    NoAnswer,
    CallEnded,
}

/// Why a leg failed (see the module doc for the SIP mapping).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LegFailure {
    Busy,
    Unreachable,
    Rejected,
    Error,
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Requested,
    Empty,
    Unattended,
}

/// Why a participant left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftReason {
    HungUp,
    Failed,
    CallEnded,
}

/// How a participant is in the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinedVia {
    Device(DeviceId),
    Pstn,
    DialIn,
}

/// Which input a [`EventKind::LateInputIgnored`] was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    Answered,
    Joined,
}

/// Why an input changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IgnoredReason {
    CallEnded,
    AnsweredElsewhere,
    LegEnded,
    NotInCall,
}

/// What an input did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputOutcome {
    Applied,
    Duplicate,
    Ignored(IgnoredReason),
}

/// Where an invitee stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InviteeStatus {
    Ringing,
    DiallingPstn,
    Answered,
    Joined,
    Left,
    Declined,
    DialInOffered,
    /// Still ringing when the call ended.
    Cancelled,
}

/// Where a leg stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum LegStatus {
    Scheduled,
    Ringing,
    Answered,
    Cancelled { reason: CancelReason },
    Declined,
    Failed { failure: LegFailure },
}

/// Instructions for the binary, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// Create (or reuse) the conversation's room.
    OpenRoom {
        conversation: ConversationId,
        subject: Option<String>,
    },
    /// Ring a device; report with the leg id.
    Ring {
        leg: LegId,
        conversation: ConversationId,
        invitee: Participant,
        device: DeviceId,
        media: Media,
        subject: Option<String>,
    },
    /// Dial a number through the PSTN bridge; report with the leg id.
    DialPstn {
        leg: LegId,
        conversation: ConversationId,
        invitee: Participant,
        number: PhoneNumber,
    },
    /// Stop ringing or dialling; hang up if it answered meanwhile.
    CancelRing {
        leg: LegId,
        conversation: ConversationId,
        target: LegTarget,
        reason: CancelReason,
    },
    /// Connect an answered leg to the room.
    JoinRoom {
        leg: LegId,
        conversation: ConversationId,
        participant: Participant,
        target: LegTarget,
        media: Media,
    },
    /// Change a participant's media in place.
    ChangeMedia {
        conversation: ConversationId,
        participant: Participant,
        media: Media,
    },
    /// Send the invitee the room's dial-in number and PIN (the binary has them).
    GiveDialInInstructions {
        conversation: ConversationId,
        invitee: Participant,
        reason: FallbackReason,
    },
    /// Disconnect everyone and close the room.
    CloseRoom {
        conversation: ConversationId,
        reason: EndReason,
    },
}

/// Something that happened, for the event stream, webhooks and the archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at: Timestamp,
    pub conversation: ConversationId,
    #[serde(flatten)]
    pub kind: EventKind,
}

/// The steps of a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    Started {
        modality: Modality,
        subject: Option<String>,
    },
    Invited {
        invitee: Participant,
    },
    Ringing {
        leg: LegId,
        invitee: Participant,
        device: DeviceId,
        media: Media,
    },
    Answered {
        leg: LegId,
        invitee: Participant,
        target: LegTarget,
        media: Media,
    },
    RingCancelled {
        leg: LegId,
        invitee: Participant,
        target: LegTarget,
        reason: CancelReason,
    },
    Declined {
        leg: LegId,
        invitee: Participant,
        target: LegTarget,
    },
    RingFailed {
        leg: LegId,
        invitee: Participant,
        target: LegTarget,
        failure: LegFailure,
    },
    FellBackToPstn {
        invitee: Participant,
        reason: FallbackReason,
    },
    DiallingPstn {
        leg: LegId,
        invitee: Participant,
        number: PhoneNumber,
    },
    DialOutRefused {
        invitee: Participant,
        number: PhoneNumber,
        reason: String,
    },
    DialInOffered {
        invitee: Participant,
        reason: FallbackReason,
    },
    Joined {
        participant: Participant,
        via: JoinedVia,
        media: Media,
    },
    Left {
        participant: Participant,
        reason: LeftReason,
    },
    ModalityChanged {
        from: Modality,
        to: Modality,
    },
    MediaChanged {
        participant: Participant,
        media: Media,
    },
    LateInputIgnored {
        leg: Option<LegId>,
        input: InputKind,
        reason: IgnoredReason,
    },
    Ended {
        reason: EndReason,
    },
}

/// What [`Escalations::poll_output`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Command(Command),
    Event(Event),
}

/// A device ring planned by an escalation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedRing {
    pub leg: LegId,
    pub device: DeviceId,
    pub kind: DeviceKind,
    /// The media offered if it started ringing now.
    pub media: Media,
    /// When it starts ringing.
    pub at: Timestamp,
}

/// What was done for one invitee.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InviteeAction {
    Ringing {
        devices: Vec<PlannedRing>,
        /// When the rings stop and the fallback starts.
        until: Timestamp,
    },
    DiallingPstn {
        leg: LegId,
        number: PhoneNumber,
    },
    DialInInstructions {
        reason: FallbackReason,
    },
    AlreadyPresent {
        status: InviteeStatus,
    },
}

/// The room's dial-in access. `Debug` hides the PIN.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialInInfo {
    pub number: String,
    pub pin: String,
}

impl fmt::Debug for DialInInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DialInInfo")
            .field("number", &self.number)
            .field("pin", &"<redacted>")
            .finish()
    }
}

/// How an invitee joins by themselves. Empty here: the binary fills it (client join
/// token and URL, dial-in number and PIN) before answering the IM server.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinInfo {
    pub url: Option<String>,
    pub token: Option<String>,
    pub dial_in: Option<DialInInfo>,
}

impl fmt::Debug for JoinInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinInfo")
            .field("url", &self.url)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("dial_in", &self.dial_in)
            .finish()
    }
}

/// One invitee in the response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteeReport {
    pub invitee: Participant,
    pub action: InviteeAction,
    /// What happens if the devices do not answer.
    pub pstn: PstnPlan,
    pub join: JoinInfo,
}

/// The answer to an escalation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EscalationResponse {
    pub conversation: ConversationId,
    /// A new call (and room) was started.
    pub created: bool,
    /// The call is over (it was asked to end).
    pub ended: bool,
    /// The call's modality now.
    pub modality: Modality,
    /// One per listed participant, in request order, duplicates removed.
    pub invitees: Vec<InviteeReport>,
}

/// One leg, for the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegView {
    pub leg: LegId,
    pub target: LegTarget,
    /// The device's kind; `None` for a PSTN dial.
    pub kind: Option<DeviceKind>,
    pub media: Media,
    pub status: LegStatus,
}

/// One participant, for the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantView {
    pub participant: Participant,
    /// Invited by an escalation (rather than walked in).
    pub invited: bool,
    pub status: InviteeStatus,
    /// Current media when answered or joined.
    pub media: Option<Media>,
    pub legs: Vec<LegView>,
}

/// A call, for the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallView {
    pub conversation: ConversationId,
    pub modality: Modality,
    pub subject: Option<String>,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub end_reason: Option<EndReason>,
    pub participants: Vec<ParticipantView>,
}

/// Why an input was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EscalationError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("invalid routing policy: {0}")]
    InvalidPolicy(&'static str),
    #[error("unknown user {0}")]
    UnknownUser(UserId),
    #[error("unknown device {0}")]
    UnknownDevice(DeviceId),
    #[error("device {device} does not belong to {participant}")]
    NotParticipantsDevice {
        device: DeviceId,
        participant: Participant,
    },
    #[error("a new call needs at least one participant")]
    NoParticipants,
    #[error("a call has at most {max} participants")]
    TooManyParticipants { max: usize },
    #[error("at most {max} calls at a time")]
    TooManyCalls { max: usize },
    #[error("no call for conversation {0}")]
    UnknownConversation(ConversationId),
    #[error("unknown {0}")]
    UnknownLeg(LegId),
    #[error("{0} has not started ringing")]
    LegNotRinging(LegId),
    #[error("{0} is not in this call")]
    NotAParticipant(Participant),
}

// ---------------------------------------------------------------------------------------
// Internal state
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct CallSeq(u64);

/// Every timer: the set is ordered by time, each entity stores the time it armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerRef {
    /// A scheduled ring starts.
    LegStart(CallSeq, LegId),
    /// An invitee's ring deadline or PSTN answer deadline.
    Invitee(CallSeq, usize),
    /// Unattended end, or forgetting an ended call.
    Call(CallSeq),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LegState {
    Scheduled,
    Ringing,
    Answered,
    Cancelled(CancelReason),
    Declined,
    Failed(LegFailure),
}

#[derive(Debug, Clone)]
struct Leg {
    invitee: usize,
    target: LegTarget,
    kind: Option<DeviceKind>,
    video: bool,
    media: Media,
    state: LegState,
    timer: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Ringing,
    DiallingPstn(LegId),
    Answered(LegId),
    Joined { via: JoinedVia, leg: Option<LegId> },
    Left,
    Declined,
    DialInOffered,
    Cancelled,
}

impl Phase {
    fn pending(&self) -> bool {
        matches!(
            self,
            Phase::Ringing | Phase::DiallingPstn(_) | Phase::Answered(_)
        )
    }
    fn present(&self) -> bool {
        matches!(
            self,
            Phase::Ringing | Phase::DiallingPstn(_) | Phase::Answered(_) | Phase::Joined { .. }
        )
    }
    fn status(&self) -> InviteeStatus {
        match self {
            Phase::Ringing => InviteeStatus::Ringing,
            Phase::DiallingPstn(_) => InviteeStatus::DiallingPstn,
            Phase::Answered(_) => InviteeStatus::Answered,
            Phase::Joined { .. } => InviteeStatus::Joined,
            Phase::Left => InviteeStatus::Left,
            Phase::Declined => InviteeStatus::Declined,
            Phase::DialInOffered => InviteeStatus::DialInOffered,
            Phase::Cancelled => InviteeStatus::Cancelled,
        }
    }
}

#[derive(Debug, Clone)]
struct Invitee {
    who: Participant,
    invited: bool,
    phase: Phase,
    pstn: PstnPlan,
    /// The answered or joined endpoint can do video.
    video: bool,
    /// Policy lets this invitee have video (see [`DialOutPolicy::video_allowed`]).
    video_allowed: bool,
    deadline: Option<Timestamp>,
    /// The current attempt's legs.
    legs: Vec<LegId>,
}

#[derive(Debug, Clone)]
struct Call {
    seq: CallSeq,
    conversation: ConversationId,
    subject: Option<String>,
    modality: Modality,
    started_at: Timestamp,
    ended: Option<(Timestamp, EndReason)>,
    invitees: Vec<Invitee>,
    legs: BTreeMap<LegId, Leg>,
    ever_joined: bool,
    timer: Option<Timestamp>,
    /// In `Escalations::ended`.
    listed_ended: bool,
}

/// A planned invitation, computed before anything changes.
enum Plan {
    Ring {
        rings: Vec<RingPlan>,
        pstn: PstnPlan,
    },
    DialPhone {
        number: PhoneNumber,
    },
    Fallback {
        reason: FallbackReason,
        pstn: PstnPlan,
    },
}

struct RingPlan {
    device: DeviceId,
    kind: DeviceKind,
    video: bool,
    delay: Duration,
}

/// The shared parts a call's operations write to.
struct Io<'a> {
    now: Timestamp,
    policy: &'a RoutingPolicy,
    timers: &'a mut BTreeSet<(Timestamp, TimerRef)>,
    out: &'a mut VecDeque<Output>,
    leg_index: &'a mut BTreeMap<LegId, CallSeq>,
    next_leg: &'a mut u64,
}

impl Io<'_> {
    fn arm(&mut self, slot: &mut Option<Timestamp>, at: Option<Timestamp>, r: TimerRef) {
        if let Some(old) = slot.take() {
            self.timers.remove(&(old, r));
        }
        if let Some(at) = at {
            self.timers.insert((at, r));
        }
        *slot = at;
    }

    fn command(&mut self, c: Command) {
        self.out.push_back(Output::Command(c));
    }

    fn event(&mut self, conversation: &ConversationId, kind: EventKind) {
        self.out.push_back(Output::Event(Event {
            at: self.now,
            conversation: conversation.clone(),
            kind,
        }));
    }

    fn new_leg(&mut self, seq: CallSeq) -> LegId {
        *self.next_leg += 1;
        let id = LegId(*self.next_leg);
        self.leg_index.insert(id, seq);
        id
    }
}

impl Call {
    fn find(&self, who: &Participant) -> Option<usize> {
        self.invitees.iter().position(|i| &i.who == who)
    }

    fn ev(&self, io: &mut Io<'_>, kind: EventKind) {
        io.event(&self.conversation, kind);
    }

    /// A scheduled ring starts (or is dropped if its invitee stopped ringing).
    fn start_leg(&mut self, io: &mut Io<'_>, id: LegId) {
        let Some(leg) = self.legs.get_mut(&id) else {
            return;
        };
        io.arm(&mut leg.timer, None, TimerRef::LegStart(self.seq, id));
        if leg.state != LegState::Scheduled {
            return;
        }
        let Some(inv) = self.invitees.get(leg.invitee) else {
            return;
        };
        if inv.phase != Phase::Ringing || inv.deadline.is_none_or(|d| d <= io.now) {
            leg.state = LegState::Cancelled(CancelReason::NoAnswer);
            return;
        }
        let LegTarget::Device(device) = &leg.target else {
            return;
        };
        leg.state = LegState::Ringing;
        leg.media = media_for(self.modality, leg.video);
        io.command(Command::Ring {
            leg: id,
            conversation: self.conversation.clone(),
            invitee: inv.who.clone(),
            device: device.clone(),
            media: leg.media,
            subject: self.subject.clone(),
        });
        io.event(
            &self.conversation,
            EventKind::Ringing {
                leg: id,
                invitee: inv.who.clone(),
                device: device.clone(),
                media: leg.media,
            },
        );
    }

    /// Cancels the invitee's ringing and scheduled legs but `except`.
    fn cancel_legs(
        &mut self,
        io: &mut Io<'_>,
        idx: usize,
        except: Option<LegId>,
        reason: CancelReason,
    ) {
        let Some(inv) = self.invitees.get(idx) else {
            return;
        };
        for id in &inv.legs {
            if Some(*id) == except {
                continue;
            }
            let Some(leg) = self.legs.get_mut(id) else {
                continue;
            };
            match leg.state {
                LegState::Ringing => {
                    leg.state = LegState::Cancelled(reason);
                    io.command(Command::CancelRing {
                        leg: *id,
                        conversation: self.conversation.clone(),
                        target: leg.target.clone(),
                        reason,
                    });
                    io.event(
                        &self.conversation,
                        EventKind::RingCancelled {
                            leg: *id,
                            invitee: inv.who.clone(),
                            target: leg.target.clone(),
                            reason,
                        },
                    );
                }
                LegState::Scheduled => {
                    leg.state = LegState::Cancelled(reason);
                    io.arm(&mut leg.timer, None, TimerRef::LegStart(self.seq, *id));
                }
                _ => {}
            }
        }
    }

    fn set_deadline(&mut self, io: &mut Io<'_>, idx: usize, at: Option<Timestamp>) {
        if let Some(inv) = self.invitees.get_mut(idx) {
            io.arm(&mut inv.deadline, at, TimerRef::Invitee(self.seq, idx));
        }
    }

    /// The devices did not connect: PSTN if planned and allowed, else dial-in.
    fn fall_back(&mut self, io: &mut Io<'_>, idx: usize, reason: FallbackReason) {
        self.set_deadline(io, idx, None);
        let Some(inv) = self.invitees.get(idx) else {
            return;
        };
        let who = inv.who.clone();
        match inv.pstn.clone() {
            PstnPlan::Dial { number } => {
                if matches!(who, Participant::User(_)) {
                    self.ev(
                        io,
                        EventKind::FellBackToPstn {
                            invitee: who,
                            reason,
                        },
                    );
                }
                self.dial_pstn(io, idx, number);
            }
            PstnPlan::Refused {
                number,
                reason: why,
            } => {
                self.ev(
                    io,
                    EventKind::DialOutRefused {
                        invitee: who,
                        number,
                        reason: why,
                    },
                );
                self.offer_dial_in(io, idx, reason);
            }
            PstnPlan::NoNumber | PstnPlan::NotApplicable => self.offer_dial_in(io, idx, reason),
        }
    }

    fn dial_pstn(&mut self, io: &mut Io<'_>, idx: usize, number: PhoneNumber) {
        let id = io.new_leg(self.seq);
        let deadline = io.now.saturating_add(io.policy.pstn_timeout);
        let Some(inv) = self.invitees.get_mut(idx) else {
            return;
        };
        inv.legs.push(id);
        inv.phase = Phase::DiallingPstn(id);
        let who = inv.who.clone();
        self.legs.insert(
            id,
            Leg {
                invitee: idx,
                target: LegTarget::Pstn(number.clone()),
                kind: None,
                video: false,
                media: Media::Audio,
                state: LegState::Ringing,
                timer: None,
            },
        );
        self.set_deadline(io, idx, Some(deadline));
        io.command(Command::DialPstn {
            leg: id,
            conversation: self.conversation.clone(),
            invitee: who.clone(),
            number: number.clone(),
        });
        self.ev(
            io,
            EventKind::DiallingPstn {
                leg: id,
                invitee: who,
                number,
            },
        );
    }

    fn offer_dial_in(&mut self, io: &mut Io<'_>, idx: usize, reason: FallbackReason) {
        self.set_deadline(io, idx, None);
        let Some(inv) = self.invitees.get_mut(idx) else {
            return;
        };
        inv.phase = Phase::DialInOffered;
        let who = inv.who.clone();
        io.command(Command::GiveDialInInstructions {
            conversation: self.conversation.clone(),
            invitee: who.clone(),
            reason,
        });
        self.ev(
            io,
            EventKind::DialInOffered {
                invitee: who,
                reason,
            },
        );
    }

    /// Invites one participant per its plan (validated beforehand).
    fn invite(
        &mut self,
        io: &mut Io<'_>,
        who: Participant,
        plan: Plan,
        video_allowed: bool,
    ) -> InviteeReport {
        let idx = match self.find(&who) {
            Some(idx) => idx,
            None => {
                self.invitees.push(Invitee {
                    who: who.clone(),
                    invited: true,
                    phase: Phase::Left,
                    pstn: PstnPlan::NotApplicable,
                    video: false,
                    video_allowed: true,
                    deadline: None,
                    legs: Vec::new(),
                });
                self.invitees.len() - 1
            }
        };
        if let Some(inv) = self.invitees.get_mut(idx) {
            inv.video_allowed = video_allowed;
        }
        // A new attempt: the previous one's legs are all over; forget them (bounds legs).
        if let Some(inv) = self.invitees.get_mut(idx) {
            for id in inv.legs.drain(..) {
                if let Some(t) = self.legs.remove(&id).and_then(|l| l.timer) {
                    io.timers.remove(&(t, TimerRef::LegStart(self.seq, id)));
                }
                io.leg_index.remove(&id);
            }
            inv.invited = true;
            inv.video = false;
        }
        self.ev(
            io,
            EventKind::Invited {
                invitee: who.clone(),
            },
        );
        let mut planned = Vec::new();
        match plan {
            Plan::Ring { rings, pstn } => {
                let until = io.now.saturating_add(io.policy.ring_timeout);
                if let Some(inv) = self.invitees.get_mut(idx) {
                    inv.pstn = pstn;
                    inv.phase = Phase::Ringing;
                }
                self.set_deadline(io, idx, Some(until));
                for r in rings {
                    let id = io.new_leg(self.seq);
                    let at = io.now.saturating_add(r.delay);
                    let media = media_for(self.modality, r.video);
                    self.legs.insert(
                        id,
                        Leg {
                            invitee: idx,
                            target: LegTarget::Device(r.device.clone()),
                            kind: Some(r.kind),
                            video: r.video,
                            media,
                            state: LegState::Scheduled,
                            timer: None,
                        },
                    );
                    if let Some(inv) = self.invitees.get_mut(idx) {
                        inv.legs.push(id);
                    }
                    planned.push(PlannedRing {
                        leg: id,
                        device: r.device,
                        kind: r.kind,
                        media,
                        at,
                    });
                    if r.delay.is_zero() {
                        self.start_leg(io, id);
                    } else if let Some(leg) = self.legs.get_mut(&id) {
                        io.arm(&mut leg.timer, Some(at), TimerRef::LegStart(self.seq, id));
                    }
                }
                let pstn = self.invitees.get(idx).map(|i| i.pstn.clone());
                InviteeReport {
                    invitee: who,
                    action: InviteeAction::Ringing {
                        devices: planned,
                        until,
                    },
                    pstn: pstn.unwrap_or(PstnPlan::NotApplicable),
                    join: JoinInfo::default(),
                }
            }
            Plan::DialPhone { number } => {
                if let Some(inv) = self.invitees.get_mut(idx) {
                    inv.pstn = PstnPlan::Dial {
                        number: number.clone(),
                    };
                }
                self.dial_pstn(io, idx, number);
                self.report(idx, who, FallbackReason::NoDevice)
            }
            Plan::Fallback { reason, pstn } => {
                if let Some(inv) = self.invitees.get_mut(idx) {
                    inv.pstn = pstn;
                }
                self.fall_back(io, idx, reason);
                self.report(idx, who, reason)
            }
        }
    }

    /// The report of an invitee that is being dialled or got dial-in instructions.
    fn report(&self, idx: usize, who: Participant, reason: FallbackReason) -> InviteeReport {
        let inv = self.invitees.get(idx);
        let dialled = match inv.map(|i| &i.phase) {
            Some(Phase::DiallingPstn(leg)) => self.legs.get(leg).and_then(|l| match &l.target {
                LegTarget::Pstn(n) => Some((*leg, n.clone())),
                LegTarget::Device(_) => None,
            }),
            _ => None,
        };
        let action = match dialled {
            Some((leg, number)) => InviteeAction::DiallingPstn { leg, number },
            None => InviteeAction::DialInInstructions { reason },
        };
        InviteeReport {
            invitee: who,
            action,
            pstn: inv.map_or(PstnPlan::NotApplicable, |i| i.pstn.clone()),
            join: JoinInfo::default(),
        }
    }

    /// Answered: first answer wins.
    fn answered(&mut self, io: &mut Io<'_>, id: LegId) -> Result<InputOutcome, EscalationError> {
        let leg = self.legs.get(&id).ok_or(EscalationError::UnknownLeg(id))?;
        let idx = leg.invitee;
        let phase_ok = self.invitees.get(idx).is_some_and(|i| match i.phase {
            Phase::Ringing => true,
            Phase::DiallingPstn(l) => l == id,
            _ => false,
        });
        match leg.state {
            LegState::Answered => return Ok(InputOutcome::Duplicate),
            LegState::Scheduled => return Err(EscalationError::LegNotRinging(id)),
            LegState::Ringing if self.ended.is_none() && phase_ok => {}
            state => {
                let (cancel, ignored) = if self.ended.is_some() {
                    (CancelReason::CallEnded, IgnoredReason::CallEnded)
                } else {
                    match state {
                        LegState::Cancelled(
                            r @ (CancelReason::AnsweredElsewhere | CancelReason::JoinedElsewhere),
                        ) => (r, IgnoredReason::AnsweredElsewhere),
                        LegState::Cancelled(r) => (r, IgnoredReason::LegEnded),
                        _ => (CancelReason::NoAnswer, IgnoredReason::LegEnded),
                    }
                };
                io.command(Command::CancelRing {
                    leg: id,
                    conversation: self.conversation.clone(),
                    target: leg.target.clone(),
                    reason: cancel,
                });
                self.ev(
                    io,
                    EventKind::LateInputIgnored {
                        leg: Some(id),
                        input: InputKind::Answered,
                        reason: ignored,
                    },
                );
                return Ok(InputOutcome::Ignored(ignored));
            }
        }
        let media = media_for(self.modality, leg.video);
        let (target, video) = (leg.target.clone(), leg.video);
        if let Some(leg) = self.legs.get_mut(&id) {
            leg.state = LegState::Answered;
        }
        let Some(inv) = self.invitees.get_mut(idx) else {
            return Err(EscalationError::UnknownLeg(id));
        };
        inv.phase = Phase::Answered(id);
        inv.video = video;
        let who = inv.who.clone();
        self.set_deadline(io, idx, None);
        self.ev(
            io,
            EventKind::Answered {
                leg: id,
                invitee: who.clone(),
                target: target.clone(),
                media,
            },
        );
        io.command(Command::JoinRoom {
            leg: id,
            conversation: self.conversation.clone(),
            participant: who,
            target,
            media,
        });
        self.cancel_legs(io, idx, Some(id), CancelReason::AnsweredElsewhere);
        self.settle(io);
        Ok(InputOutcome::Applied)
    }

    /// Declined: the person said no; no fallback.
    fn declined(&mut self, io: &mut Io<'_>, id: LegId) -> Result<InputOutcome, EscalationError> {
        let leg = self
            .legs
            .get_mut(&id)
            .ok_or(EscalationError::UnknownLeg(id))?;
        match leg.state {
            LegState::Declined => return Ok(InputOutcome::Duplicate),
            LegState::Scheduled => return Err(EscalationError::LegNotRinging(id)),
            LegState::Ringing if self.ended.is_none() => {}
            _ => return Ok(InputOutcome::Ignored(IgnoredReason::LegEnded)),
        }
        leg.state = LegState::Declined;
        let (idx, target) = (leg.invitee, leg.target.clone());
        let Some(inv) = self.invitees.get_mut(idx) else {
            return Err(EscalationError::UnknownLeg(id));
        };
        inv.phase = Phase::Declined;
        let who = inv.who.clone();
        self.set_deadline(io, idx, None);
        self.ev(
            io,
            EventKind::Declined {
                leg: id,
                invitee: who,
                target,
            },
        );
        self.cancel_legs(io, idx, Some(id), CancelReason::DeclinedElsewhere);
        self.settle(io);
        Ok(InputOutcome::Applied)
    }

    /// Failed: the device drops out; an answered leg that fails is a participant leaving.
    fn failed(
        &mut self,
        io: &mut Io<'_>,
        id: LegId,
        failure: LegFailure,
    ) -> Result<InputOutcome, EscalationError> {
        let leg = self
            .legs
            .get_mut(&id)
            .ok_or(EscalationError::UnknownLeg(id))?;
        let (idx, target, state) = (leg.invitee, leg.target.clone(), leg.state);
        match state {
            LegState::Failed(_) => return Ok(InputOutcome::Duplicate),
            LegState::Scheduled => return Err(EscalationError::LegNotRinging(id)),
            LegState::Ringing | LegState::Answered if self.ended.is_none() => {}
            _ => return Ok(InputOutcome::Ignored(IgnoredReason::LegEnded)),
        }
        leg.state = LegState::Failed(failure);
        let Some(inv) = self.invitees.get_mut(idx) else {
            return Err(EscalationError::UnknownLeg(id));
        };
        let who = inv.who.clone();
        if state == LegState::Answered {
            let ours = match &inv.phase {
                Phase::Answered(l) => *l == id,
                Phase::Joined { leg, .. } => *leg == Some(id),
                _ => false,
            };
            if !ours {
                return Ok(InputOutcome::Ignored(IgnoredReason::LegEnded));
            }
            inv.phase = Phase::Left;
            self.ev(
                io,
                EventKind::Left {
                    participant: who,
                    reason: LeftReason::Failed,
                },
            );
            self.settle(io);
            return Ok(InputOutcome::Applied);
        }
        let phase = inv.phase.clone();
        let legs = inv.legs.clone();
        self.ev(
            io,
            EventKind::RingFailed {
                leg: id,
                invitee: who,
                target,
                failure,
            },
        );
        match phase {
            Phase::Ringing => {
                let any_left = legs.iter().any(|l| {
                    self.legs
                        .get(l)
                        .is_some_and(|l| matches!(l.state, LegState::Ringing | LegState::Scheduled))
                });
                if !any_left {
                    self.fall_back(io, idx, FallbackReason::AllDevicesFailed);
                }
            }
            Phase::DiallingPstn(l) if l == id => {
                self.offer_dial_in(io, idx, FallbackReason::PstnFailed);
            }
            _ => {}
        }
        self.settle(io);
        Ok(InputOutcome::Applied)
    }

    /// Someone is in the room.
    fn joined(
        &mut self,
        io: &mut Io<'_>,
        who: Participant,
        via: JoinedVia,
        video: bool,
    ) -> Result<InputOutcome, EscalationError> {
        if self.ended.is_some() {
            self.ev(
                io,
                EventKind::LateInputIgnored {
                    leg: None,
                    input: InputKind::Joined,
                    reason: IgnoredReason::CallEnded,
                },
            );
            return Ok(InputOutcome::Ignored(IgnoredReason::CallEnded));
        }
        let idx = match self.find(&who) {
            Some(idx) => idx,
            None => {
                if self.invitees.len() >= io.policy.max_participants {
                    return Err(EscalationError::TooManyParticipants {
                        max: io.policy.max_participants,
                    });
                }
                self.invitees.push(Invitee {
                    who: who.clone(),
                    invited: false,
                    phase: Phase::Left,
                    pstn: PstnPlan::NotApplicable,
                    video: false,
                    video_allowed: true,
                    deadline: None,
                    legs: Vec::new(),
                });
                self.invitees.len() - 1
            }
        };
        let phase = self.invitees.get(idx).map(|i| i.phase.clone());
        let video = video && self.invitees.get(idx).is_some_and(|i| i.video_allowed);
        let leg = match phase {
            Some(Phase::Joined { .. }) | None => return Ok(InputOutcome::Duplicate),
            Some(Phase::Answered(l)) => Some(l),
            Some(Phase::DiallingPstn(l)) if via == JoinedVia::Pstn => {
                if let Some(leg) = self.legs.get_mut(&l) {
                    leg.state = LegState::Answered;
                }
                Some(l)
            }
            Some(Phase::Ringing | Phase::DiallingPstn(_)) => {
                self.cancel_legs(io, idx, None, CancelReason::JoinedElsewhere);
                None
            }
            Some(_) => None,
        };
        self.set_deadline(io, idx, None);
        if let Some(inv) = self.invitees.get_mut(idx) {
            inv.phase = Phase::Joined {
                via: via.clone(),
                leg,
            };
            inv.video = video;
        }
        self.ever_joined = true;
        let media = media_for(self.modality, video);
        self.ev(
            io,
            EventKind::Joined {
                participant: who,
                via,
                media,
            },
        );
        self.settle(io);
        Ok(InputOutcome::Applied)
    }

    /// Someone left the room.
    fn left(
        &mut self,
        io: &mut Io<'_>,
        who: &Participant,
    ) -> Result<InputOutcome, EscalationError> {
        if self.ended.is_some() {
            return Ok(InputOutcome::Ignored(IgnoredReason::CallEnded));
        }
        let idx = self
            .find(who)
            .ok_or_else(|| EscalationError::NotAParticipant(who.clone()))?;
        let Some(inv) = self.invitees.get_mut(idx) else {
            return Err(EscalationError::NotAParticipant(who.clone()));
        };
        match inv.phase {
            Phase::Joined { .. } | Phase::Answered(_) => {}
            Phase::Left => return Ok(InputOutcome::Duplicate),
            _ => return Ok(InputOutcome::Ignored(IgnoredReason::NotInCall)),
        }
        inv.phase = Phase::Left;
        self.ev(
            io,
            EventKind::Left {
                participant: who.clone(),
                reason: LeftReason::HungUp,
            },
        );
        self.settle(io);
        Ok(InputOutcome::Applied)
    }

    /// An invitee's ring or PSTN deadline passed.
    fn deadline_passed(&mut self, io: &mut Io<'_>, idx: usize) {
        let Some(inv) = self.invitees.get_mut(idx) else {
            return;
        };
        inv.deadline = None;
        match inv.phase {
            Phase::Ringing => {
                self.cancel_legs(io, idx, None, CancelReason::NoAnswer);
                self.fall_back(io, idx, FallbackReason::NoAnswer);
            }
            Phase::DiallingPstn(_) => {
                self.cancel_legs(io, idx, None, CancelReason::NoAnswer);
                self.offer_dial_in(io, idx, FallbackReason::PstnNoAnswer);
            }
            _ => {}
        }
        self.settle(io);
    }

    /// A voice/video request changes the call's modality and the media of those in it.
    fn change_modality(&mut self, io: &mut Io<'_>, to: Modality) {
        let from = self.modality;
        if to == Modality::DialIn || to == from {
            return;
        }
        self.modality = to;
        self.ev(io, EventKind::ModalityChanged { from, to });
        for inv in &self.invitees {
            if !matches!(inv.phase, Phase::Answered(_) | Phase::Joined { .. }) {
                continue;
            }
            let (old, new) = (media_for(from, inv.video), media_for(to, inv.video));
            if old != new {
                io.command(Command::ChangeMedia {
                    conversation: self.conversation.clone(),
                    participant: inv.who.clone(),
                    media: new,
                });
                io.event(
                    &self.conversation,
                    EventKind::MediaChanged {
                        participant: inv.who.clone(),
                        media: new,
                    },
                );
            }
        }
    }

    /// Ends the call if it is empty; arms or disarms the unattended timer.
    fn settle(&mut self, io: &mut Io<'_>) {
        if self.ended.is_some() {
            return;
        }
        let pending = self.invitees.iter().any(|i| i.phase.pending());
        let joined = self
            .invitees
            .iter()
            .any(|i| matches!(i.phase, Phase::Joined { .. }));
        let r = TimerRef::Call(self.seq);
        if pending || joined {
            io.arm(&mut self.timer, None, r);
        } else if self.ever_joined {
            self.end_call(io, EndReason::Empty);
        } else if self.timer.is_none() {
            let at = io.now.saturating_add(io.policy.unattended_timeout);
            io.arm(&mut self.timer, Some(at), r);
        }
    }

    fn end_call(&mut self, io: &mut Io<'_>, reason: EndReason) {
        if self.ended.is_some() {
            return;
        }
        for idx in 0..self.invitees.len() {
            let phase = self.invitees.get(idx).map(|i| i.phase.clone());
            match phase {
                Some(Phase::Ringing | Phase::DiallingPstn(_)) => {
                    self.cancel_legs(io, idx, None, CancelReason::CallEnded);
                    if let Some(inv) = self.invitees.get_mut(idx) {
                        inv.phase = Phase::Cancelled;
                    }
                }
                Some(Phase::Answered(_) | Phase::Joined { .. }) => {
                    if let Some(inv) = self.invitees.get_mut(idx) {
                        inv.phase = Phase::Left;
                        let participant = inv.who.clone();
                        self.ev(
                            io,
                            EventKind::Left {
                                participant,
                                reason: LeftReason::CallEnded,
                            },
                        );
                    }
                }
                _ => {}
            }
            self.set_deadline(io, idx, None);
        }
        self.ended = Some((io.now, reason));
        io.command(Command::CloseRoom {
            conversation: self.conversation.clone(),
            reason,
        });
        self.ev(io, EventKind::Ended { reason });
        let forget_at = io.now.saturating_add(io.policy.ended_linger);
        io.arm(&mut self.timer, Some(forget_at), TimerRef::Call(self.seq));
    }

    fn view(&self) -> CallView {
        let participants = self
            .invitees
            .iter()
            .map(|inv| ParticipantView {
                participant: inv.who.clone(),
                invited: inv.invited,
                status: inv.phase.status(),
                media: matches!(inv.phase, Phase::Answered(_) | Phase::Joined { .. })
                    .then(|| media_for(self.modality, inv.video)),
                legs: inv
                    .legs
                    .iter()
                    .filter_map(|id| {
                        let leg = self.legs.get(id)?;
                        Some(LegView {
                            leg: *id,
                            target: leg.target.clone(),
                            kind: leg.kind,
                            media: leg.media,
                            status: match leg.state {
                                LegState::Scheduled => LegStatus::Scheduled,
                                LegState::Ringing => LegStatus::Ringing,
                                LegState::Answered => LegStatus::Answered,
                                LegState::Cancelled(reason) => LegStatus::Cancelled { reason },
                                LegState::Declined => LegStatus::Declined,
                                LegState::Failed(failure) => LegStatus::Failed { failure },
                            },
                        })
                    })
                    .collect(),
            })
            .collect();
        CallView {
            conversation: self.conversation.clone(),
            modality: self.modality,
            subject: self.subject.clone(),
            started_at: self.started_at,
            ended_at: self.ended.map(|(t, _)| t),
            end_reason: self.ended.map(|(_, r)| r),
            participants,
        }
    }
}

// ---------------------------------------------------------------------------------------
// The public state machine
// ---------------------------------------------------------------------------------------

/// Every escalated call. See the module doc for the rules and the drive contract.
#[derive(Debug)]
pub struct Escalations {
    policy: RoutingPolicy,
    calls: BTreeMap<CallSeq, Call>,
    by_conversation: BTreeMap<ConversationId, CallSeq>,
    leg_index: BTreeMap<LegId, CallSeq>,
    /// Ended calls still remembered, oldest first.
    ended: VecDeque<CallSeq>,
    timers: BTreeSet<(Timestamp, TimerRef)>,
    out: VecDeque<Output>,
    next_seq: u64,
    next_leg: u64,
}

impl Escalations {
    /// No calls yet. Errors: an unusable policy ([`RoutingPolicy::validate`]).
    pub fn new(policy: RoutingPolicy) -> Result<Escalations, EscalationError> {
        policy.validate()?;
        Ok(Escalations {
            policy,
            calls: BTreeMap::new(),
            by_conversation: BTreeMap::new(),
            leg_index: BTreeMap::new(),
            ended: VecDeque::new(),
            timers: BTreeSet::new(),
            out: VecDeque::new(),
            next_seq: 0,
            next_leg: 0,
        })
    }

    /// The routing values in use.
    pub fn policy(&self) -> &RoutingPolicy {
        &self.policy
    }

    /// Calls not ended.
    pub fn live_calls(&self) -> usize {
        self.calls.len().saturating_sub(self.ended.len())
    }

    fn split(&mut self, seq: CallSeq, now: Timestamp) -> Option<(&mut Call, Io<'_>)> {
        let call = self.calls.get_mut(&seq)?;
        Some((
            call,
            Io {
                now,
                policy: &self.policy,
                timers: &mut self.timers,
                out: &mut self.out,
                leg_index: &mut self.leg_index,
                next_leg: &mut self.next_leg,
            },
        ))
    }

    /// Records a call that ended and forgets the oldest ended ones beyond the bound.
    fn after(&mut self, seq: CallSeq) {
        let Some(call) = self.calls.get_mut(&seq) else {
            return;
        };
        if call.ended.is_some() && !call.listed_ended {
            call.listed_ended = true;
            self.ended.push_back(seq);
            while self.ended.len() > self.policy.max_calls {
                if let Some(old) = self.ended.front().copied() {
                    self.forget(old);
                }
            }
        }
    }

    fn forget(&mut self, seq: CallSeq) {
        self.ended.retain(|s| *s != seq);
        let Some(call) = self.calls.remove(&seq) else {
            return;
        };
        for (id, leg) in &call.legs {
            self.leg_index.remove(id);
            if let Some(t) = leg.timer {
                self.timers.remove(&(t, TimerRef::LegStart(seq, *id)));
            }
        }
        for (idx, inv) in call.invitees.iter().enumerate() {
            if let Some(t) = inv.deadline {
                self.timers.remove(&(t, TimerRef::Invitee(seq, idx)));
            }
        }
        if let Some(t) = call.timer {
            self.timers.remove(&(t, TimerRef::Call(seq)));
        }
        if self.by_conversation.get(&call.conversation) == Some(&seq) {
            self.by_conversation.remove(&call.conversation);
        }
    }

    fn live_seq(&self, conversation: &ConversationId) -> Option<CallSeq> {
        let seq = *self.by_conversation.get(conversation)?;
        self.calls
            .get(&seq)
            .is_some_and(|c| c.ended.is_none())
            .then_some(seq)
    }

    /// Creates, changes or ends the conversation's call (see the module doc). `presence`
    /// gives the directory and do-not-disturb; `dial_out` is asked once per invitee that
    /// may need the PSTN. Validated whole before anything changes.
    pub fn escalate(
        &mut self,
        request: EscalationRequest,
        presence: &Presence,
        dial_out: &dyn DialOutPolicy,
        now: Timestamp,
    ) -> Result<EscalationResponse, EscalationError> {
        let EscalationRequest {
            conversation,
            participants,
            modality,
            subject,
            end,
        } = request;
        if end {
            let seq = *self
                .by_conversation
                .get(&conversation)
                .ok_or_else(|| EscalationError::UnknownConversation(conversation.clone()))?;
            if let Some((call, mut io)) = self.split(seq, now) {
                call.end_call(&mut io, EndReason::Requested);
            }
            self.after(seq);
            let modality = self.calls.get(&seq).map_or(modality, |c| c.modality);
            return Ok(EscalationResponse {
                conversation,
                created: false,
                ended: true,
                modality,
                invitees: Vec::new(),
            });
        }
        if let Some(s) = &subject {
            check_text("subject", s, MAX_SUBJECT_BYTES, false)?;
        }
        let mut seen = BTreeSet::new();
        let participants: Vec<Participant> = participants
            .into_iter()
            .filter(|p| seen.insert(p.clone()))
            .collect();
        let max = self.policy.max_participants;
        if participants.len() > max {
            return Err(EscalationError::TooManyParticipants { max });
        }
        let dir = presence.directory();
        for p in &participants {
            if let Participant::User(u) = p
                && dir.user(u).is_none()
            {
                return Err(EscalationError::UnknownUser(u.clone()));
            }
        }
        let live = self.live_seq(&conversation);
        match live.and_then(|s| self.calls.get(&s)) {
            None => {
                if participants.is_empty() {
                    return Err(EscalationError::NoParticipants);
                }
                if self.live_calls() >= self.policy.max_calls {
                    return Err(EscalationError::TooManyCalls {
                        max: self.policy.max_calls,
                    });
                }
            }
            Some(call) => {
                let new = participants
                    .iter()
                    .filter(|p| call.find(p).is_none())
                    .count();
                if call.invitees.len() + new > max {
                    return Err(EscalationError::TooManyParticipants { max });
                }
            }
        }

        // Plan every invitation before changing anything.
        let call_modality = match live.and_then(|s| self.calls.get(&s)) {
            Some(c) if modality == Modality::DialIn => c.modality,
            _ => modality,
        };
        let mut plans = Vec::with_capacity(participants.len());
        for p in participants {
            let present = live
                .and_then(|s| self.calls.get(&s))
                .and_then(|c| c.find(&p).and_then(|i| c.invitees.get(i)))
                .filter(|i| i.phase.present())
                .map(|i| i.phase.status());
            let plan = match present {
                Some(status) => Err(status),
                None => Ok(self.plan(&conversation, &p, modality, presence, dial_out, now)),
            };
            plans.push((p, plan));
        }

        // Commit.
        let (seq, created) = match live {
            Some(seq) => (seq, false),
            None => {
                self.next_seq += 1;
                let seq = CallSeq(self.next_seq);
                self.calls.insert(
                    seq,
                    Call {
                        seq,
                        conversation: conversation.clone(),
                        subject: subject.clone(),
                        modality: call_modality,
                        started_at: now,
                        ended: None,
                        invitees: Vec::new(),
                        legs: BTreeMap::new(),
                        ever_joined: false,
                        timer: None,
                        listed_ended: false,
                    },
                );
                self.by_conversation.insert(conversation.clone(), seq);
                (seq, true)
            }
        };
        let Some((call, mut io)) = self.split(seq, now) else {
            // Inserted or found live just above.
            return Err(EscalationError::UnknownConversation(conversation));
        };
        if created {
            io.command(Command::OpenRoom {
                conversation: conversation.clone(),
                subject: subject.clone(),
            });
            call.ev(
                &mut io,
                EventKind::Started {
                    modality: call_modality,
                    subject,
                },
            );
        } else {
            if subject.is_some() {
                call.subject = subject;
            }
            call.change_modality(&mut io, modality);
        }
        let mut invitees = Vec::with_capacity(plans.len());
        for (p, plan) in plans {
            invitees.push(match plan {
                Ok(plan) => {
                    let video_allowed = dial_out.video_allowed(&p);
                    call.invite(&mut io, p, plan, video_allowed)
                }
                Err(status) => InviteeReport {
                    invitee: p,
                    action: InviteeAction::AlreadyPresent { status },
                    pstn: PstnPlan::NotApplicable,
                    join: JoinInfo::default(),
                },
            });
        }
        call.settle(&mut io);
        let modality = call.modality;
        self.after(seq);
        Ok(EscalationResponse {
            conversation,
            created,
            ended: false,
            modality,
            invitees,
        })
    }

    /// Decides what to do for one participant; pure.
    fn plan(
        &self,
        conversation: &ConversationId,
        who: &Participant,
        modality: Modality,
        presence: &Presence,
        dial_out: &dyn DialOutPolicy,
        now: Timestamp,
    ) -> Plan {
        let not_applicable = |reason| Plan::Fallback {
            reason,
            pstn: PstnPlan::NotApplicable,
        };
        if modality == Modality::DialIn {
            return not_applicable(FallbackReason::DialInRequested);
        }
        let decide = |number: &PhoneNumber| match dial_out.decide(conversation, who, number) {
            DialOutDecision::Allow => PstnPlan::Dial {
                number: number.clone(),
            },
            DialOutDecision::Deny { reason } => PstnPlan::Refused {
                number: number.clone(),
                reason,
            },
        };
        let user = match who {
            Participant::Phone(number) => {
                return match decide(number) {
                    PstnPlan::Dial { number } => Plan::DialPhone { number },
                    pstn => Plan::Fallback {
                        reason: FallbackReason::DialOutRefused,
                        pstn,
                    },
                };
            }
            Participant::User(u) => u,
        };
        if !self.policy.ring_when_do_not_disturb
            && presence.evaluate(user, now) == Some(PresenceState::DoNotDisturb)
        {
            return not_applicable(FallbackReason::DoNotDisturb);
        }
        let dir = presence.directory();
        let pstn = dir.fallback_number(user).map_or(PstnPlan::NoNumber, decide);
        let video_ok = dial_out.video_allowed(who);
        let mut rings: Vec<(RingPlan, Timestamp)> = dir
            .online_devices(user, now)
            .filter(|d| d.capabilities.audio && d.kind != DeviceKind::PstnNumber)
            .map(|d| {
                (
                    RingPlan {
                        device: d.id.clone(),
                        kind: d.kind,
                        video: d.capabilities.video && video_ok,
                        delay: self.policy.ring_delays.of(d.kind),
                    },
                    d.last_activity.unwrap_or_default(),
                )
            })
            .collect();
        // Earliest ring first, then the most recently active; ids keep it deterministic.
        rings.sort_by(|(a, at), (b, bt)| {
            a.delay
                .cmp(&b.delay)
                .then(bt.cmp(at))
                .then(a.device.cmp(&b.device))
        });
        rings.truncate(self.policy.max_rung_devices);
        if rings.is_empty() {
            return Plan::Fallback {
                reason: FallbackReason::NoDevice,
                pstn,
            };
        }
        Plan::Ring {
            rings: rings.into_iter().map(|(r, _)| r).collect(),
            pstn,
        }
    }

    /// Ends the conversation's call ([`EndReason::Requested`]). Ending an ended call
    /// changes nothing.
    pub fn end(
        &mut self,
        conversation: &ConversationId,
        now: Timestamp,
    ) -> Result<InputOutcome, EscalationError> {
        let seq = *self
            .by_conversation
            .get(conversation)
            .ok_or_else(|| EscalationError::UnknownConversation(conversation.clone()))?;
        let Some((call, mut io)) = self.split(seq, now) else {
            return Err(EscalationError::UnknownConversation(conversation.clone()));
        };
        if call.ended.is_some() {
            return Ok(InputOutcome::Duplicate);
        }
        call.end_call(&mut io, EndReason::Requested);
        self.after(seq);
        Ok(InputOutcome::Applied)
    }

    fn with_leg(
        &mut self,
        leg: LegId,
        now: Timestamp,
        f: impl FnOnce(&mut Call, &mut Io<'_>) -> Result<InputOutcome, EscalationError>,
    ) -> Result<InputOutcome, EscalationError> {
        let seq = *self
            .leg_index
            .get(&leg)
            .ok_or(EscalationError::UnknownLeg(leg))?;
        let (call, mut io) = self
            .split(seq, now)
            .ok_or(EscalationError::UnknownLeg(leg))?;
        let r = f(call, &mut io);
        self.after(seq);
        r
    }

    /// A rung device or a dialled number answered.
    pub fn on_answered(
        &mut self,
        leg: LegId,
        now: Timestamp,
    ) -> Result<InputOutcome, EscalationError> {
        self.with_leg(leg, now, |c, io| c.answered(io, leg))
    }

    /// A rung device or a dialled number declined (SIP 603, the decline button).
    pub fn on_declined(
        &mut self,
        leg: LegId,
        now: Timestamp,
    ) -> Result<InputOutcome, EscalationError> {
        self.with_leg(leg, now, |c, io| c.declined(io, leg))
    }

    /// A ring or dial failed, or an answered leg dropped.
    pub fn on_failed(
        &mut self,
        leg: LegId,
        failure: LegFailure,
        now: Timestamp,
    ) -> Result<InputOutcome, EscalationError> {
        self.with_leg(leg, now, |c, io| c.failed(io, leg, failure))
    }

    /// Someone is in the conversation's room: an answered leg after [`Command::JoinRoom`],
    /// or anyone who joined by link or dial-in (invited or not). A user's device must be
    /// theirs; its video capability comes from `directory`.
    pub fn on_joined(
        &mut self,
        directory: &Directory,
        conversation: &ConversationId,
        participant: Participant,
        via: JoinedVia,
        now: Timestamp,
    ) -> Result<InputOutcome, EscalationError> {
        let video = match (&participant, &via) {
            (Participant::User(u), _) if directory.user(u).is_none() => {
                return Err(EscalationError::UnknownUser(u.clone()));
            }
            (p, JoinedVia::Device(d)) => {
                let device = directory
                    .device(d)
                    .ok_or_else(|| EscalationError::UnknownDevice(d.clone()))?;
                if !matches!(p, Participant::User(u) if *u == device.user) {
                    return Err(EscalationError::NotParticipantsDevice {
                        device: d.clone(),
                        participant: p.clone(),
                    });
                }
                device.capabilities.video
            }
            _ => false,
        };
        let seq = *self
            .by_conversation
            .get(conversation)
            .ok_or_else(|| EscalationError::UnknownConversation(conversation.clone()))?;
        let (call, mut io) = self
            .split(seq, now)
            .ok_or_else(|| EscalationError::UnknownConversation(conversation.clone()))?;
        let r = call.joined(&mut io, participant, via, video);
        self.after(seq);
        r
    }

    /// Someone left the conversation's room.
    pub fn on_left(
        &mut self,
        conversation: &ConversationId,
        participant: &Participant,
        now: Timestamp,
    ) -> Result<InputOutcome, EscalationError> {
        let seq = *self
            .by_conversation
            .get(conversation)
            .ok_or_else(|| EscalationError::UnknownConversation(conversation.clone()))?;
        let (call, mut io) = self
            .split(seq, now)
            .ok_or_else(|| EscalationError::UnknownConversation(conversation.clone()))?;
        let r = call.left(&mut io, participant);
        self.after(seq);
        r
    }

    /// Runs the timers due by `now`: delayed rings start, deadlines pass, unattended calls
    /// end, ended calls are forgotten.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        while let Some(&(at, r)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let seq = match r {
                TimerRef::LegStart(seq, _) | TimerRef::Invitee(seq, _) | TimerRef::Call(seq) => seq,
            };
            let Some((call, mut io)) = self.split(seq, now) else {
                continue;
            };
            match r {
                TimerRef::LegStart(_, leg) => {
                    if let Some(l) = call.legs.get_mut(&leg) {
                        l.timer = None;
                    }
                    call.start_leg(&mut io, leg);
                }
                TimerRef::Invitee(_, idx) => call.deadline_passed(&mut io, idx),
                TimerRef::Call(_) => {
                    call.timer = None;
                    if call.ended.is_some() {
                        self.forget(seq);
                        continue;
                    }
                    let idle = !call
                        .invitees
                        .iter()
                        .any(|i| i.phase.pending() || matches!(i.phase, Phase::Joined { .. }));
                    if idle {
                        call.end_call(&mut io, EndReason::Unattended);
                    } else {
                        call.settle(&mut io);
                    }
                }
            }
            self.after(seq);
        }
    }

    /// When [`Escalations::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// The next command or event, in order.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The conversation's current (or just ended) call, for the API.
    #[must_use]
    pub fn call(&self, conversation: &ConversationId) -> Option<CallView> {
        let seq = self.by_conversation.get(conversation)?;
        self.calls.get(seq).map(Call::view)
    }
}
