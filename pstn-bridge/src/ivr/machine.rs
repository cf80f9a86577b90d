//! The PIN IVR state machine of one dial-in call (the drive contract is in the parent
//! module's docs).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use confer_codecs::dtmf::DtmfDigit;

use super::controls::{ControlAction, ControlMap, DEFAULT_SEQUENCE_TIMEOUT, InCallControls};
use super::digits::{DigitFilter, DigitFilterStats, DigitInput, DigitVerdict, Redacted};
use super::lockout::{CallerKey, LockoutStatus, Lockouts};
use super::prompts::{PromptId, PromptQueue};

/// The most digits a PIN may have.
pub const MAX_PIN_DIGITS: usize = 16;

/// The longest timeout any [`IvrConfig`] duration may have.
pub const MAX_IVR_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The digits a caller entered. Never shown: `Debug` prints `Pin(<redacted>)`, there is no
/// `Display`, and it is not `Clone`, so it is handed on rather than copied around.
pub struct Pin {
    digits: [u8; MAX_PIN_DIGITS],
    len: usize,
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Pin").field(&Redacted).finish()
    }
}

impl Pin {
    /// The digits as ASCII text, for the PIN directory only. Do not log it.
    pub fn expose(&self) -> &str {
        // Only ASCII digits are ever stored (`Entry::push`), so this is UTF-8.
        std::str::from_utf8(&self.digits[..self.len]).unwrap_or_default()
    }

    /// Number of digits.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no digit was entered (never the case for a PIN the IVR submits).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Compares with a stored PIN without an early exit on the first differing digit (the
    /// length is not hidden).
    pub fn matches(&self, expected: &str) -> bool {
        let expected = expected.as_bytes();
        if expected.len() != self.len {
            return false;
        }
        expected
            .iter()
            .zip(&self.digits[..self.len])
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        // Best effort: the optimiser may remove this; it shortens the time the digits
        // linger in memory, it is not a guarantee.
        self.digits = [0; MAX_PIN_DIGITS];
    }
}

/// The PIN being entered. `Debug` hides the digits.
#[derive(Clone, Default)]
struct Entry {
    digits: [u8; MAX_PIN_DIGITS],
    len: usize,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("digits", &Redacted)
            .finish_non_exhaustive()
    }
}

impl Entry {
    /// Appends a decimal digit; false when full.
    fn push(&mut self, digit: DtmfDigit) -> bool {
        let c = digit.to_char();
        match self.digits.get_mut(self.len) {
            Some(slot) if c.is_ascii_digit() => {
                *slot = c as u8;
                self.len += 1;
                true
            }
            _ => false,
        }
    }

    fn clear(&mut self) {
        self.digits = [0; MAX_PIN_DIGITS];
        self.len = 0;
    }

    fn take(&mut self) -> Pin {
        let pin = Pin {
            digits: self.digits,
            len: self.len,
        };
        self.clear();
        pin
    }
}

/// The conference the binary admits the caller to; opaque to the IVR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoomRef(pub u64);

/// Identifies one PIN check, so a late answer to an earlier one is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PinTicket(u64);

/// "Check this PIN for this dialled number": the binary looks it up (rooms live outside
/// this crate) and answers with [`Ivr::handle_pin_result`].
#[derive(Debug)]
pub struct PinCheck {
    /// Quote it in the answer.
    pub ticket: PinTicket,
    /// The number the caller dialled ([`CallInfo::dialed`]).
    pub dialed: String,
    /// The digits entered.
    pub pin: Pin,
}

/// The admission the binary grants for a correct PIN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// The conference to join.
    pub room: RoomRef,
    /// Nobody is in the conference yet: say "you are the first participant".
    pub first_participant: bool,
    /// The conference waits for its moderator: say "please wait for the moderator".
    pub wait_for_moderator: bool,
}

/// The binary's answer to a [`PinCheck`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinVerdict {
    /// The PIN opens a conference.
    Accepted(Admission),
    /// No conference has this PIN: a failed attempt.
    Rejected,
    /// The PIN is right but the conference is locked (not counted as a failure).
    ConferenceLocked,
    /// The PIN is right but the conference is full (not counted as a failure).
    ConferenceFull,
    /// The directory could not answer (fail closed: the call ends).
    Unavailable,
}

/// Why the IVR hangs up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HangupReason {
    /// The caller is locked out after too many failures across calls.
    LockedOut,
    /// The caller used up the tries of this call.
    TooManyAttempts,
    /// No PIN was entered after the re-prompts.
    NoInput,
    /// The caller stayed in the IVR longer than [`IvrConfig::session_limit`].
    SessionTimeout,
    /// The conference is locked.
    ConferenceLocked,
    /// The conference is full.
    ConferenceFull,
    /// The PIN directory did not answer, or answered [`PinVerdict::Unavailable`].
    ServiceUnavailable,
}

impl std::fmt::Display for HangupReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HangupReason::LockedOut => "caller locked out after repeated PIN failures",
            HangupReason::TooManyAttempts => "too many failed PIN attempts",
            HangupReason::NoInput => "no PIN entered",
            HangupReason::SessionTimeout => "IVR session time limit reached",
            HangupReason::ConferenceLocked => "conference locked",
            HangupReason::ConferenceFull => "conference full",
            HangupReason::ServiceUnavailable => "PIN directory unavailable",
        })
    }
}

/// What the IVR asks the binary to do.
#[derive(Debug)]
pub enum IvrOutput {
    /// Append these prompts to the call's [`PromptPlayer`](super::PromptPlayer); report
    /// the end with [`Ivr::handle_playback_finished`].
    Play(PromptQueue),
    /// Stop playback at once and drop the queue (barge-in, or before a new message).
    StopPlayback,
    /// Check a PIN; answer with [`Ivr::handle_pin_result`].
    CheckPin(PinCheck),
    /// Join the caller to the conference; the IVR now only handles in-call controls.
    JoinRoom(RoomRef),
    /// An in-call control sequence was pressed.
    Control(ControlAction),
    /// End the call (BYE). Nothing follows.
    Hangup(HangupReason),
}

/// The IVR's timers, one of each at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IvrTimer {
    /// The first digit is due this long after the prompt ended.
    FirstDigit,
    /// The next digit (or `#`) is due this long after the last one.
    InterDigit,
    /// The binary did not report the end of playback in time: go on as if it had.
    Playback,
    /// The PIN directory did not answer in time.
    PinCheck,
    /// The caller has been in the IVR too long.
    Session,
    /// A partial in-call control sequence expires.
    ControlSequence,
}

const TIMERS: [IvrTimer; 6] = [
    IvrTimer::FirstDigit,
    IvrTimer::InterDigit,
    IvrTimer::Playback,
    IvrTimer::PinCheck,
    IvrTimer::Session,
    IvrTimer::ControlSequence,
];

impl IvrTimer {
    fn index(self) -> usize {
        self as usize
    }
}

/// Settings of the IVR; `Default` gives the documented values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IvrConfig {
    /// Wait for the first digit after the prompt ended (default 10 s).
    pub first_digit_timeout: Duration,
    /// Wait for each further digit (default 5 s).
    pub inter_digit_timeout: Duration,
    /// Wrong PINs per call before hanging up (default 3).
    pub max_attempts: u32,
    /// Times without input (a digit timeout, or `#` on an empty entry) before hanging up
    /// (default 3; the first two re-prompt).
    pub max_no_input: u32,
    /// An entry ends by itself when it reaches this many digits (default 12, at most
    /// [`MAX_PIN_DIGITS`]); `#` ends it earlier.
    pub max_pin_len: usize,
    /// Wait for the PIN directory's answer (default 10 s).
    pub pin_check_timeout: Duration,
    /// The longest a `Play` may last before the IVR stops waiting for
    /// `handle_playback_finished` (default 60 s).
    pub playback_guard: Duration,
    /// The longest time in the IVR before joining (default 3 min).
    pub session_limit: Duration,
    /// Same press on two paths within this window counts once (default 500 ms).
    pub duplicate_window: Duration,
    /// In-call control sequences.
    pub controls: ControlMap,
    /// A partial control sequence expires after this (default 3 s).
    pub control_sequence_timeout: Duration,
}

impl Default for IvrConfig {
    fn default() -> Self {
        Self {
            first_digit_timeout: Duration::from_secs(10),
            inter_digit_timeout: Duration::from_secs(5),
            max_attempts: 3,
            max_no_input: 3,
            max_pin_len: 12,
            pin_check_timeout: Duration::from_secs(10),
            playback_guard: Duration::from_secs(60),
            session_limit: Duration::from_secs(180),
            duplicate_window: DigitFilter::DEFAULT_DUPLICATE_WINDOW,
            controls: ControlMap::default(),
            control_sequence_timeout: DEFAULT_SEQUENCE_TIMEOUT,
        }
    }
}

/// What the binary knows about the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInfo {
    /// Who calls, for lock-out.
    pub caller: CallerKey,
    /// The number dialled (which PIN namespace applies), passed back in [`PinCheck`].
    pub dialed: String,
    /// The SDP answer negotiated telephone-event (RFC 4733): in-band digits are ignored.
    pub rfc4733_negotiated: bool,
}

/// Misuse of the IVR (caller errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IvrError {
    /// A configuration value out of range.
    #[error("IVR configuration: {0}")]
    Config(&'static str),
    /// A PIN result for a check that is not pending (late, repeated, or invented).
    #[error("no PIN check with this ticket is pending")]
    UnexpectedPinResult,
    /// An announcement before the caller joined.
    #[error("announcements are for callers in the conference")]
    NotJoined,
}

/// Where the call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IvrPhase {
    /// Collecting the PIN (prompting, or waiting for digits).
    CollectingPin,
    /// Waiting for the PIN directory.
    CheckingPin,
    /// Admitted; playing the joining prompts.
    Joining,
    /// In the conference; in-call controls.
    Joined,
    /// Saying goodbye before hanging up.
    Closing,
    /// Hung up; the IVR does nothing more.
    Ended,
}

#[derive(Debug, Clone)]
enum Phase {
    Collecting,
    Checking { ticket: PinTicket },
    Joining { room: RoomRef },
    Joined,
    Closing { reason: HangupReason },
    Ended,
}

/// Counters of one call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IvrStats {
    /// The digit paths ([`DigitFilter`]).
    pub digits: DigitFilterStats,
    /// Wrong PINs entered in this call.
    pub failed_attempts: u32,
    /// Digit timeouts and empty entries.
    pub no_input: u32,
    /// Accepted digits that had no effect in the current phase (while checking, closing).
    pub ignored_digits: u64,
    /// Digits that stopped a prompt.
    pub barge_ins: u64,
}

/// The PIN IVR of one dial-in call (see the module docs for the drive contract and the
/// rules). `Debug` never shows entered digits or the caller's identity.
#[derive(Debug)]
pub struct Ivr {
    config: IvrConfig,
    caller: CallerKey,
    dialed: String,
    phase: Phase,
    entry: Entry,
    filter: DigitFilter,
    controls: InCallControls,
    /// A `Play` is out and its end not reported yet.
    playing: bool,
    timers: [Option<Instant>; TIMERS.len()],
    next_ticket: u64,
    outputs: VecDeque<IvrOutput>,
    stats: IvrStats,
}

fn later(now: Instant, d: Duration) -> Instant {
    // Durations are at most a day (checked in `Ivr::new`), far inside Instant's range; if
    // a platform could not add them, the timer fires at once rather than never.
    now.checked_add(d).unwrap_or(now)
}

impl IvrConfig {
    fn validate(&self) -> Result<(), IvrError> {
        for d in [
            self.first_digit_timeout,
            self.inter_digit_timeout,
            self.pin_check_timeout,
            self.playback_guard,
            self.session_limit,
            self.control_sequence_timeout,
        ] {
            if d.is_zero() || d > MAX_IVR_DURATION {
                return Err(IvrError::Config("timeouts must be between 1 ns and 24 h"));
            }
        }
        if self.duplicate_window > Duration::from_secs(5) {
            return Err(IvrError::Config("duplicate_window must be at most 5 s"));
        }
        if self.max_attempts == 0 || self.max_no_input == 0 {
            return Err(IvrError::Config(
                "max_attempts and max_no_input must be at least 1",
            ));
        }
        if !(1..=MAX_PIN_DIGITS).contains(&self.max_pin_len) {
            return Err(IvrError::Config("max_pin_len must be 1 to 16"));
        }
        Ok(())
    }
}

impl Ivr {
    /// Starts the IVR for an answered call at `now`: it greets and asks for the PIN, or,
    /// when the caller is locked out, says so and hangs up.
    pub fn new(
        config: IvrConfig,
        call: CallInfo,
        lockouts: &Lockouts,
        now: Instant,
    ) -> Result<Self, IvrError> {
        config.validate()?;
        let filter = DigitFilter::new(call.rfc4733_negotiated, config.duplicate_window);
        let controls =
            InCallControls::new(config.controls.clone(), config.control_sequence_timeout);
        let mut ivr = Self {
            caller: call.caller,
            dialed: call.dialed,
            phase: Phase::Collecting,
            entry: Entry::default(),
            filter,
            controls,
            playing: false,
            timers: [None; TIMERS.len()],
            next_ticket: 0,
            outputs: VecDeque::new(),
            stats: IvrStats::default(),
            config,
        };
        if lockouts.status(&ivr.caller, now).is_locked_out() {
            ivr.close(HangupReason::LockedOut, PromptId::TooManyAttempts, now);
        } else {
            ivr.set_timer(IvrTimer::Session, later(now, ivr.config.session_limit));
            ivr.play(&[PromptId::Welcome, PromptId::EnterPin], now);
        }
        Ok(ivr)
    }

    /// Where the call is.
    pub fn phase(&self) -> IvrPhase {
        match self.phase {
            Phase::Collecting => IvrPhase::CollectingPin,
            Phase::Checking { .. } => IvrPhase::CheckingPin,
            Phase::Joining { .. } => IvrPhase::Joining,
            Phase::Joined => IvrPhase::Joined,
            Phase::Closing { .. } => IvrPhase::Closing,
            Phase::Ended => IvrPhase::Ended,
        }
    }

    /// Counters.
    pub fn stats(&self) -> IvrStats {
        IvrStats {
            digits: self.filter.stats(),
            ..self.stats
        }
    }

    /// True when in-band digits would be used; when false the binary may skip running the
    /// tone detector on this call's audio.
    pub fn wants_inband(&self) -> bool {
        self.filter.wants_inband() && !matches!(self.phase, Phase::Ended)
    }

    /// A re-INVITE changed whether telephone-event is negotiated.
    pub fn set_rfc4733_negotiated(&mut self, negotiated: bool) {
        self.filter.set_rfc4733_negotiated(negotiated);
    }

    /// The next output, until `None`. Drain after every call into the IVR.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<IvrOutput> {
        self.outputs.pop_front()
    }

    /// The earliest timer, if any: call [`handle_timeout`](Self::handle_timeout) then.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().flatten().min().copied()
    }

    /// The earliest timer and which one it is (diagnostics and tests).
    pub fn next_timer(&self) -> Option<(IvrTimer, Instant)> {
        TIMERS
            .iter()
            .filter_map(|&t| self.timers[t.index()].map(|at| (t, at)))
            .min_by_key(|&(_, at)| at)
    }

    fn set_timer(&mut self, timer: IvrTimer, at: Instant) {
        self.timers[timer.index()] = Some(at);
    }

    fn clear_timer(&mut self, timer: IvrTimer) {
        self.timers[timer.index()] = None;
    }

    fn play(&mut self, prompts: &[PromptId], now: Instant) {
        // Every caller passes at most three prompts, below the queue's capacity.
        let queue = PromptQueue::of(prompts).unwrap_or_default();
        self.outputs.push_back(IvrOutput::Play(queue));
        self.playing = true;
        self.set_timer(IvrTimer::Playback, later(now, self.config.playback_guard));
    }

    fn stop_playback(&mut self) {
        if self.playing {
            self.outputs.push_back(IvrOutput::StopPlayback);
            self.playing = false;
            self.clear_timer(IvrTimer::Playback);
        }
    }

    /// Says `prompt` and hangs up with `reason` when it has been played.
    fn close(&mut self, reason: HangupReason, prompt: PromptId, now: Instant) {
        self.stop_playback();
        self.entry.clear();
        self.timers = [None; TIMERS.len()];
        self.phase = Phase::Closing { reason };
        self.play(&[prompt], now);
    }

    fn hang_up(&mut self, reason: HangupReason) {
        self.stop_playback();
        self.timers = [None; TIMERS.len()];
        self.phase = Phase::Ended;
        self.outputs.push_back(IvrOutput::Hangup(reason));
    }

    /// Asks for the PIN again after a timeout or an empty entry, or gives up.
    fn no_input(&mut self, now: Instant) {
        self.stats.no_input += 1;
        self.entry.clear();
        self.clear_timer(IvrTimer::FirstDigit);
        self.clear_timer(IvrTimer::InterDigit);
        if self.stats.no_input >= self.config.max_no_input {
            self.close(HangupReason::NoInput, PromptId::NoInput, now);
        } else {
            self.stop_playback();
            self.play(&[PromptId::EnterPin], now);
        }
    }

    fn submit(&mut self, now: Instant) {
        self.clear_timer(IvrTimer::FirstDigit);
        self.clear_timer(IvrTimer::InterDigit);
        let ticket = PinTicket(self.next_ticket);
        self.next_ticket += 1;
        let pin = self.entry.take();
        self.outputs.push_back(IvrOutput::CheckPin(PinCheck {
            ticket,
            dialed: self.dialed.clone(),
            pin,
        }));
        self.phase = Phase::Checking { ticket };
        self.set_timer(
            IvrTimer::PinCheck,
            later(now, self.config.pin_check_timeout),
        );
    }

    fn join(&mut self, room: RoomRef) {
        self.stop_playback();
        self.timers = [None; TIMERS.len()];
        self.phase = Phase::Joined;
        self.outputs.push_back(IvrOutput::JoinRoom(room));
    }

    /// A key press from any path at `now`. Returns what the duplicate filter decided;
    /// digits that the current phase has no use for are counted and ignored.
    pub fn handle_digit(&mut self, input: DigitInput, now: Instant) -> DigitVerdict {
        let verdict = self.filter.accept(input, now);
        if verdict != DigitVerdict::Accepted {
            return verdict;
        }
        match self.phase {
            Phase::Collecting => self.collect(input.digit, now),
            Phase::Joining { room } => {
                // Barge-in skips the joining prompts.
                self.stats.barge_ins += 1;
                self.join(room);
            }
            Phase::Joined => {
                if let Some(action) = self.controls.handle_digit(input.digit, now) {
                    self.outputs.push_back(IvrOutput::Control(action));
                }
                self.timers[IvrTimer::ControlSequence.index()] = self.controls.poll_timeout();
            }
            Phase::Checking { .. } | Phase::Closing { .. } | Phase::Ended => {
                self.stats.ignored_digits += 1;
            }
        }
        verdict
    }

    fn collect(&mut self, digit: DtmfDigit, now: Instant) {
        if matches!(
            digit,
            DtmfDigit::A | DtmfDigit::B | DtmfDigit::C | DtmfDigit::D
        ) {
            // Not on a phone's keypad and not part of any PIN: no barge-in, no timer change.
            self.stats.ignored_digits += 1;
            return;
        }
        if self.playing {
            self.stats.barge_ins += 1;
            self.stop_playback();
        }
        self.clear_timer(IvrTimer::FirstDigit);
        match digit {
            DtmfDigit::Star => {
                // Start the entry over, with the request for it.
                self.entry.clear();
                self.clear_timer(IvrTimer::InterDigit);
                self.play(&[PromptId::EnterPin], now);
            }
            DtmfDigit::Hash if self.entry.len == 0 => self.no_input(now),
            DtmfDigit::Hash => self.submit(now),
            _ => {
                self.entry.push(digit);
                if self.entry.len >= self.config.max_pin_len {
                    self.submit(now);
                } else {
                    let at = later(now, self.config.inter_digit_timeout);
                    self.set_timer(IvrTimer::InterDigit, at);
                }
            }
        }
    }

    /// The [`PromptPlayer`](super::PromptPlayer) reported `Finished`. Spurious calls are
    /// harmless.
    pub fn handle_playback_finished(&mut self, now: Instant) {
        if !self.playing {
            return;
        }
        self.playing = false;
        self.clear_timer(IvrTimer::Playback);
        match self.phase {
            Phase::Collecting => {
                if self.entry.len == 0 {
                    self.set_timer(
                        IvrTimer::FirstDigit,
                        later(now, self.config.first_digit_timeout),
                    );
                }
            }
            Phase::Joining { room } => self.join(room),
            Phase::Closing { reason } => self.hang_up(reason),
            Phase::Checking { .. } | Phase::Joined | Phase::Ended => {}
        }
    }

    /// The answer to the [`PinCheck`] with `ticket`. `lockouts` records a rejection; a
    /// caller locked out meanwhile (by a parallel call) is refused whatever the verdict.
    pub fn handle_pin_result(
        &mut self,
        ticket: PinTicket,
        verdict: PinVerdict,
        lockouts: &mut Lockouts,
        now: Instant,
    ) -> Result<(), IvrError> {
        match self.phase {
            Phase::Checking { ticket: pending } if pending == ticket => {}
            _ => return Err(IvrError::UnexpectedPinResult),
        }
        self.clear_timer(IvrTimer::PinCheck);
        if lockouts.status(&self.caller, now).is_locked_out() {
            self.close(HangupReason::LockedOut, PromptId::TooManyAttempts, now);
            return Ok(());
        }
        match verdict {
            PinVerdict::Accepted(admission) => {
                self.clear_timer(IvrTimer::Session);
                self.phase = Phase::Joining {
                    room: admission.room,
                };
                let mut prompts = PromptQueue::one(PromptId::Joining);
                // Three prompts at most, below the queue's capacity.
                if admission.first_participant {
                    let _ = prompts.push(PromptId::FirstParticipant);
                }
                if admission.wait_for_moderator {
                    let _ = prompts.push(PromptId::WaitForModerator);
                }
                self.play(prompts.as_slice(), now);
            }
            PinVerdict::Rejected => {
                self.stats.failed_attempts += 1;
                let status = lockouts.record_failure(&self.caller, now);
                if let LockoutStatus::LockedOut { .. } = status {
                    self.close(HangupReason::LockedOut, PromptId::TooManyAttempts, now);
                } else if self.stats.failed_attempts >= self.config.max_attempts {
                    self.close(
                        HangupReason::TooManyAttempts,
                        PromptId::TooManyAttempts,
                        now,
                    );
                } else {
                    self.phase = Phase::Collecting;
                    self.play(&[PromptId::InvalidPin, PromptId::EnterPin], now);
                }
            }
            PinVerdict::ConferenceLocked => {
                self.close(
                    HangupReason::ConferenceLocked,
                    PromptId::ConferenceLocked,
                    now,
                );
            }
            PinVerdict::ConferenceFull => {
                self.close(HangupReason::ConferenceFull, PromptId::ConferenceFull, now);
            }
            PinVerdict::Unavailable => {
                self.close(
                    HangupReason::ServiceUnavailable,
                    PromptId::ServiceUnavailable,
                    now,
                );
            }
        }
        Ok(())
    }

    /// Plays an announcement to a caller in the conference (mute state, participant count,
    /// someone joined or left). It queues after whatever is playing.
    pub fn announce(&mut self, prompts: PromptQueue, now: Instant) -> Result<(), IvrError> {
        if !matches!(self.phase, Phase::Joined) {
            return Err(IvrError::NotJoined);
        }
        self.play(prompts.as_slice(), now);
        Ok(())
    }

    /// Fires the timers due at `now`. Safe to call early or repeatedly.
    pub fn handle_timeout(&mut self, now: Instant) {
        for timer in TIMERS {
            let due = self.timers[timer.index()].is_some_and(|at| at <= now);
            if !due {
                continue;
            }
            self.clear_timer(timer);
            match timer {
                IvrTimer::Playback => {
                    // The binary never said the prompts ended: stop them and go on.
                    if self.playing {
                        self.outputs.push_back(IvrOutput::StopPlayback);
                    }
                    self.handle_playback_finished(now);
                }
                IvrTimer::FirstDigit | IvrTimer::InterDigit => {
                    if matches!(self.phase, Phase::Collecting) {
                        self.no_input(now);
                    }
                }
                IvrTimer::PinCheck => {
                    if matches!(self.phase, Phase::Checking { .. }) {
                        self.close(
                            HangupReason::ServiceUnavailable,
                            PromptId::ServiceUnavailable,
                            now,
                        );
                    }
                }
                IvrTimer::Session => {
                    if matches!(self.phase, Phase::Collecting | Phase::Checking { .. }) {
                        self.close(HangupReason::SessionTimeout, PromptId::NoInput, now);
                    }
                }
                IvrTimer::ControlSequence => {
                    self.controls.handle_timeout(now);
                    self.timers[IvrTimer::ControlSequence.index()] = self.controls.poll_timeout();
                }
            }
        }
    }

    /// Ends the IVR because the call ended (the caller hung up): no more outputs.
    pub fn handle_call_ended(&mut self) {
        self.timers = [None; TIMERS.len()];
        self.entry.clear();
        self.playing = false;
        self.phase = Phase::Ended;
        self.outputs.clear();
    }

    /// The caller's identity (for the binary's logs, behind its own redaction).
    pub fn caller(&self) -> &CallerKey {
        &self.caller
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_compares_without_showing_itself() {
        let mut e = Entry::default();
        for d in [DtmfDigit::D4, DtmfDigit::D7, DtmfDigit::D1, DtmfDigit::D1] {
            assert!(e.push(d));
        }
        assert!(!e.push(DtmfDigit::Star));
        let pin = e.take();
        assert_eq!(e.len, 0);
        assert!(pin.matches("4711"));
        assert!(!pin.matches("4712"));
        assert!(!pin.matches("47110"));
        assert_eq!(pin.expose(), "4711");
        assert_eq!(format!("{pin:?}"), "Pin(<redacted>)");
    }

    #[test]
    fn bad_configs_are_refused() {
        let lockouts = Lockouts::new(Default::default()).unwrap();
        #[allow(clippy::disallowed_methods)] // one real Instant; nothing waits on it
        let now = Instant::now();
        let call = CallInfo {
            caller: CallerKey::Number("+15550100".into()),
            dialed: "+15550199".into(),
            rfc4733_negotiated: true,
        };
        for config in [
            IvrConfig {
                max_pin_len: 17,
                ..IvrConfig::default()
            },
            IvrConfig {
                first_digit_timeout: Duration::ZERO,
                ..IvrConfig::default()
            },
            IvrConfig {
                session_limit: Duration::MAX,
                ..IvrConfig::default()
            },
            IvrConfig {
                max_attempts: 0,
                ..IvrConfig::default()
            },
        ] {
            assert!(matches!(
                Ivr::new(config, call.clone(), &lockouts, now),
                Err(IvrError::Config(_))
            ));
        }
    }
}
