//! The media side of SIP calls: runs the core's [`MediaCommand`]s against the [`Host`],
//! and the PIN prompts.
//!
//! Why a task per call: a call's commands must run in order (prepare, join, hold,
//! release) while the core task never waits on the host. Each call gets a small task fed
//! by a bounded queue; its results go back to the core over one bounded channel. The
//! task owns the call's reserved socket and participant, and leaves the room when it
//! ends, whichever way it ends: after [`MediaCommand::Release`], or when its queue
//! closes (the core dropped the call, or the server stops), so no participant outlives
//! its call.
//!
//! # A call to a room's number
//!
//! The caller joins the room at once. The host hands the task the keys its caller
//! presses (RFC 4733, [`JoinOptions::signals`]; SIP INFO comes as
//! [`MediaCommand::Digit`]): they drive the in-call controls (`*6` mute, `*4`/`*7`
//! volume, `*0` the participant count, spoken to the caller alone).
//!
//! # A call to a PIN number
//!
//! The caller first joins a room of its own (internal: not listed, no events), muted,
//! where it hears only the prompts played to it ([`Host::play_to`]); a
//! [`confer_pstn_bridge::ivr::Ivr`] runs the dialogue: prompts, digits from RFC 4733,
//! SIP INFO or, without RFC 4733, tones detected in its audio; three tries; the lock-out
//! across calls ([`Lockouts`], shared by all calls); the PIN looked up in [`Pins`] and the
//! room's state (locked, full, waiting for its moderator). An admitted caller is moved
//! into the room with the same socket, leg and participant id
//! ([`Host::move_participant`]): the phone notices nothing. The IVR's hang-ups (too many
//! tries, no input, locked out) go to the core as [`MediaEvent::Hangup`] (a BYE). The
//! PIN is never logged: [`Pin`](confer_pstn_bridge::ivr::Pin) and the digits hide
//! themselves in `Debug`, and nothing here prints them.
//!
//! Rooms that ask for it (`announce_joins`) hear "a participant joined/left" when a caller
//! comes or goes.
//!
//! Rooms are found by name (one made through the API counts) or created on the first
//! call; the name-to-id cache is bounded by the dial plan and checked before use, so a
//! room deleted through the API is created again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use confer_conference::room::{Clip, PLAYBACK_QUEUE_LEN, ROOM_RATE, RoomError};
use confer_pstn_bridge::ivr::{
    Admission, CallInfo, CallerKey, ControlAction, ControlMap, DigitInput, DigitSource,
    InCallControls, Ivr, IvrConfig, IvrOutput, Lockouts, PinCheck, PinVerdict, PlayerConfig,
    PlayerStatus, PromptId, PromptPlayer, PromptQueue, Prompts, RoomRef,
};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;

use super::core::{CallId, MediaCommand, MediaEvent, MediaFailure, MediaSpec, Target};
use super::metrics::SipMetrics;
use super::pins::Pins;
use crate::host::{
    Host, HostError, JoinOptions, JoinSpec, MoveSpec, ParticipantUpdate, RoomSpec, RtpSocket,
    Signal,
};

/// Commands queued per call (a call issues a handful in its life).
const CALL_QUEUE: usize = 16;
/// Signals queued per call (a person presses a few keys a second).
const SIGNAL_QUEUE: usize = 16;

type RoomCache = Arc<Mutex<HashMap<String, u64>>>;

/// What every call's task shares.
struct Shared {
    host: Host,
    rooms: RoomCache,
    events: mpsc::Sender<MediaEvent>,
    metrics: Arc<SipMetrics>,
    pins: Arc<Pins>,
    /// Failed PINs per caller, across calls.
    lockouts: std::sync::Mutex<Lockouts>,
    /// The prompts at the room rate.
    prompts: Prompts,
    ivr: IvrConfig,
    /// Where PIN outcomes are recorded (the event journal, which the archive follows).
    journal: Option<crate::journal::Journal>,
}

/// What the PIN prompts need besides the host.
pub struct PromptSetup {
    /// The live rooms' PINs.
    pub pins: Arc<Pins>,
    /// Lock-out limits.
    pub lockouts: Lockouts,
    /// The prompts, decoded at [`ROOM_RATE`].
    pub prompts: Prompts,
    /// Digits of a PIN: an entry of this many digits ends by itself.
    pub pin_digits: usize,
    /// Where PIN outcomes are recorded (never the PIN).
    pub journal: Option<crate::journal::Journal>,
}

/// Runs media commands (see the module docs).
pub struct MediaDriver {
    shared: Arc<Shared>,
    calls: HashMap<CallId, mpsc::Sender<MediaCommand>>,
    tasks: JoinSet<()>,
}

fn failure(e: &HostError) -> MediaFailure {
    match e {
        HostError::PortsExhausted { .. } | HostError::Busy(_) | HostError::Stopped => {
            MediaFailure::Unavailable
        }
        HostError::Room(RoomError::Locked | RoomError::Full(_) | RoomError::Ended) => {
            MediaFailure::Refused
        }
        _ => MediaFailure::Internal,
    }
}

impl MediaDriver {
    /// A driver whose results go to `events`.
    pub fn new(
        host: Host,
        events: mpsc::Sender<MediaEvent>,
        metrics: Arc<SipMetrics>,
        setup: PromptSetup,
    ) -> anyhow::Result<Self> {
        let ivr = IvrConfig {
            max_pin_len: setup.pin_digits,
            controls: ControlMap::default(),
            ..IvrConfig::default()
        };
        // Checked once here rather than failing every call.
        Ivr::new(
            ivr.clone(),
            CallInfo {
                caller: CallerKey::Number(String::new()),
                dialed: String::new(),
                rfc4733_negotiated: true,
            },
            &setup.lockouts,
            Instant::now(),
        )
        .map_err(|e| anyhow::anyhow!("PIN prompts: {e}"))?;
        anyhow::ensure!(
            setup.prompts.sample_rate() == ROOM_RATE,
            "the prompts must be decoded at {ROOM_RATE} Hz"
        );
        Ok(MediaDriver {
            shared: Arc::new(Shared {
                host,
                rooms: RoomCache::default(),
                events,
                metrics,
                pins: setup.pins,
                lockouts: std::sync::Mutex::new(setup.lockouts),
                prompts: setup.prompts,
                ivr,
                journal: setup.journal,
            }),
            calls: HashMap::new(),
            tasks: JoinSet::new(),
        })
    }

    /// Queues `command` for `call` (starting its task on the first one).
    pub fn run(&mut self, call: CallId, command: MediaCommand) {
        // Reap finished tasks so the set stays as large as the live calls.
        while let Some(r) = self.tasks.try_join_next() {
            self.count_panic(r);
        }
        let release = command == MediaCommand::Release;
        let sender = match self.calls.get(&call) {
            Some(s) => s.clone(),
            None if release => return,
            None => {
                let (tx, rx) = mpsc::channel(CALL_QUEUE);
                let task = CallMedia::new(self.shared.clone(), call);
                self.tasks.spawn(task.run(rx));
                self.calls.insert(call, tx.clone());
                tx
            }
        };
        if sender.try_send(command).is_err() {
            // A call's queue is never this long; if it is, the call cannot be served.
            tracing::error!(call, "media command queue full: releasing the call's media");
            self.shared
                .metrics
                .task_errors
                .fetch_add(1, Ordering::Relaxed);
            self.calls.remove(&call);
            return;
        }
        if release {
            // Dropping the sender ends the task after the release.
            self.calls.remove(&call);
        }
    }

    fn count_panic(&self, r: Result<(), tokio::task::JoinError>) {
        if let Err(e) = r {
            tracing::error!("a call's media task failed: {e}");
            self.shared
                .metrics
                .task_errors
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Ends every call's media (each leaves its room) and waits for them, at most
    /// `timeout`.
    pub async fn finish(mut self, timeout: Duration) {
        self.calls.clear();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.tasks.join_next()).await {
                Ok(Some(r)) => self.count_panic(r),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(
                        left = self.tasks.len(),
                        "media tasks still running at shutdown"
                    );
                    break;
                }
            }
        }
    }
}

/// The room named `name`: cached (if it still exists), found, or created.
async fn resolve_room(host: &Host, rooms: &RoomCache, name: &str) -> Result<u64, HostError> {
    let mut cache = rooms.lock().await;
    if let Some(&id) = cache.get(name) {
        // Checked in the control plane, not by a round trip to the room's worker: this
        // runs for every call.
        if host.has_room(id) {
            return Ok(id);
        }
        cache.remove(name);
    }
    if let Some(r) = host.rooms().await?.into_iter().find(|r| r.name == name) {
        cache.insert(name.to_owned(), r.id);
        return Ok(r.id);
    }
    let info = host
        .create_room(RoomSpec {
            name: name.to_owned(),
            ..RoomSpec::default()
        })
        .await?;
    tracing::info!(room = info.id, name, "created the room of a dial-in number");
    cache.insert(name.to_owned(), info.id);
    Ok(info.id)
}

/// `queue` rendered at the room rate, with the player's pauses between prompts.
fn render(prompts: &Prompts, queue: &PromptQueue) -> Option<Clip> {
    let mut player = PromptPlayer::new(ROOM_RATE, PlayerConfig::default()).ok()?;
    player.play(queue).ok()?;
    let chunk = ROOM_RATE as usize / 50;
    let mut out = Vec::new();
    let mut frame = vec![0.0; chunk];
    loop {
        match player.fill(prompts, &mut frame).ok()? {
            PlayerStatus::Playing => out.extend_from_slice(&frame),
            PlayerStatus::Finished => {
                out.extend_from_slice(&frame);
                break;
            }
            PlayerStatus::Idle => break,
        }
    }
    Some(out.into())
}

/// The PIN prompts of a call to a PIN number.
struct PinCall {
    ivr: Ivr,
    /// The call's own room (deleted once the caller is admitted, or at the end).
    lobby: u64,
    /// Keys arrive by RFC 4733 (else tones are detected in the caller's audio).
    rfc4733: bool,
}

/// One call's media (see the module docs).
struct CallMedia {
    shared: Arc<Shared>,
    call: CallId,
    /// The room the participant is in (or will join).
    room: Option<u64>,
    socket: Option<RtpSocket>,
    participant: Option<u64>,
    /// For a call to a PIN number, before `Join`: who calls and what was dialled.
    pin_target: Option<(String, CallerKey)>,
    pin: Option<PinCall>,
    /// In-call controls of a call straight into a room.
    controls: InCallControls,
    keys: CallerKeys,
    /// The room announces this caller's arrival and departure.
    announced: bool,
    /// The clips last handed to the host, kept so that the last reference (and the
    /// free) is here, not on the media worker that played them.
    clips: std::collections::VecDeque<Clip>,
    /// The PIN prompts' own room, from `Prepare` until it is deleted (on every path: a
    /// setup that fails, a CANCEL, the admission, the end).
    lobby: Option<u64>,
    /// Prompts played so far: the number of the last one.
    plays: u64,
}

impl CallMedia {
    fn new(shared: Arc<Shared>, call: CallId) -> Self {
        let controls = InCallControls::new(
            shared.ivr.controls.clone(),
            shared.ivr.control_sequence_timeout,
        );
        CallMedia {
            shared,
            call,
            room: None,
            socket: None,
            participant: None,
            pin_target: None,
            pin: None,
            controls,
            keys: CallerKeys::default(),
            announced: false,
            clips: std::collections::VecDeque::with_capacity(PLAYBACK_QUEUE_LEN),
            lobby: None,
            plays: 0,
        }
    }

    fn error(&self, what: &str, e: &HostError) {
        tracing::warn!(call = self.call, "{what}: {e}");
        self.shared
            .metrics
            .task_errors
            .fetch_add(1, Ordering::Relaxed);
    }

    async fn run(mut self, mut commands: mpsc::Receiver<MediaCommand>) {
        let (signals_tx, mut signals) = mpsc::channel(SIGNAL_QUEUE);
        let mut signals_tx = Some(signals_tx);
        loop {
            let deadline = self.pin.as_ref().and_then(|p| p.ivr.poll_timeout());
            let command = tokio::select! {
                command = commands.recv() => match command {
                    Some(c) => c,
                    None => break,
                },
                Some(signal) = signals.recv(), if self.participant.is_some() => {
                    self.on_signal(signal).await;
                    continue;
                }
                () = sleep_until(deadline), if deadline.is_some() => {
                    if let Some(p) = self.pin.as_mut() {
                        p.ivr.handle_timeout(Instant::now());
                    }
                    self.drive_ivr().await;
                    continue;
                }
            };
            let reply = match command {
                MediaCommand::Prepare { target } => Some(self.prepare(target).await),
                MediaCommand::Join(spec) => Some(self.join(spec, signals_tx.take()).await),
                MediaCommand::Hold { held } => {
                    self.hold(held).await;
                    None
                }
                MediaCommand::Digit(input) => {
                    self.on_digit(input).await;
                    None
                }
                MediaCommand::Remote(remote) => {
                    if let (Some(r), Some(p)) = (self.room, self.participant)
                        && let Err(e) = self.shared.host.set_remote(r, p, remote).await
                    {
                        self.error("moving the participant's media", &e);
                    }
                    None
                }
                MediaCommand::Release => break,
            };
            if let Some(ev) = reply
                && self.shared.events.send(ev).await.is_err()
            {
                // The core has stopped: release below.
                break;
            }
        }
        self.release().await;
    }

    async fn prepare(&mut self, target: Target) -> MediaEvent {
        let call = self.call;
        let host = &self.shared.host;
        let room = match target {
            Target::Room(name) => resolve_room(host, &self.shared.rooms, &name).await,
            Target::RoomId(id) => {
                if host.has_room(id) {
                    Ok(id)
                } else {
                    Err(HostError::UnknownRoom(id))
                }
            }
            Target::Pin { dialed, caller } => {
                self.pin_target = Some((dialed, caller));
                let created = host
                    .create_room(RoomSpec {
                        name: format!("pin-prompts-{call}"),
                        max_participants: Some(1),
                        internal: true,
                        ..RoomSpec::default()
                    })
                    .await
                    .map(|info| info.id);
                if let Ok(id) = created {
                    self.lobby = Some(id);
                }
                created
            }
        };
        let prepared = match room {
            Ok(id) => {
                self.room = Some(id);
                host.reserve_rtp()
            }
            Err(e) => Err(e),
        };
        match prepared {
            Ok(s) => {
                let local = s.local_addr();
                self.socket = Some(s);
                MediaEvent::Prepared { call, local }
            }
            Err(e) => {
                self.error("preparing the media", &e);
                MediaEvent::Failed {
                    call,
                    reason: failure(&e),
                }
            }
        }
    }

    async fn join(&mut self, spec: MediaSpec, signals: Option<mpsc::Sender<Signal>>) -> MediaEvent {
        let call = self.call;
        let Some(room) = self.room else {
            return MediaEvent::Failed {
                call,
                reason: MediaFailure::Internal,
            };
        };
        let prompts = self.pin_target.is_some();
        let rfc4733 = spec.telephone_event.is_some();
        self.keys.held = spec.held;
        let joined = self
            .shared
            .host
            .join_with(
                room,
                JoinSpec {
                    rtp_address: spec.remote,
                    codec: spec.codec,
                    audio_level_extension: None,
                    denoise: false,
                    // Nobody hears a caller at its PIN prompts (there is nobody else).
                    muted: spec.held || prompts,
                    deaf: spec.held,
                    moderator: false,
                },
                JoinOptions {
                    socket: self.socket.take(),
                    telephone_event: spec.telephone_event,
                    signals,
                    inband_dtmf: prompts && !rfc4733,
                    ptime_ms: Some(spec.ptime_ms),
                    identity: None,
                },
            )
            .await;
        let participant = match joined {
            Ok(p) => p.id,
            Err(e) => {
                self.error("joining the room", &e);
                return MediaEvent::Failed {
                    call,
                    reason: failure(&e),
                };
            }
        };
        self.participant = Some(participant);
        if let Some((dialed, caller)) = self.pin_target.take() {
            let now = Instant::now();
            let ivr = {
                let lockouts = lock(&self.shared.lockouts);
                Ivr::new(
                    self.shared.ivr.clone(),
                    CallInfo {
                        caller,
                        dialed,
                        rfc4733_negotiated: rfc4733,
                    },
                    &lockouts,
                    now,
                )
            };
            match ivr {
                Ok(ivr) => {
                    self.pin = Some(PinCall {
                        ivr,
                        lobby: room,
                        rfc4733,
                    });
                    self.drive_ivr().await;
                }
                Err(e) => {
                    // The configuration was checked when the driver started.
                    tracing::error!(call, "PIN prompts: {e}");
                    return MediaEvent::Failed {
                        call,
                        reason: MediaFailure::Internal,
                    };
                }
            }
        } else {
            self.arrived(room).await;
        }
        MediaEvent::Joined { call, participant }
    }

    /// The caller is in `room`: announce it if the room asks for that.
    async fn arrived(&mut self, room: u64) {
        match self.shared.host.announces_joins(room) {
            Ok(true) => {
                self.announced = true;
                self.announce(room, PromptId::ParticipantJoined).await;
            }
            Ok(false) => {}
            Err(e) => self.error("reading the room", &e),
        }
    }

    async fn announce(&mut self, room: u64, prompt: PromptId) {
        let Some(clip) = self.rendered(&PromptQueue::one(prompt)) else {
            return;
        };
        if let Err(e) = self.shared.host.announce(room, clip).await {
            self.error("announcing to the room", &e);
        }
    }

    /// `queue` rendered, and kept (see `clips`).
    fn rendered(&mut self, queue: &PromptQueue) -> Option<Clip> {
        let clip = render(&self.shared.prompts, queue)?;
        if self.clips.len() == PLAYBACK_QUEUE_LEN {
            self.clips.pop_front();
        }
        self.clips.push_back(clip.clone());
        Some(clip)
    }

    async fn hold(&mut self, held: bool) {
        self.keys.held = held;
        if let (Some(r), Some(p)) = (self.room, self.participant) {
            let update = ParticipantUpdate {
                muted: Some(self.keys.muted() || self.in_prompts()),
                deaf: Some(held),
                ..ParticipantUpdate::default()
            };
            if let Err(e) = self.shared.host.update(r, p, update).await {
                self.error("holding the participant", &e);
            }
        }
    }

    /// Still at the PIN prompts (not yet in the conference).
    fn in_prompts(&self) -> bool {
        self.pin
            .as_ref()
            .is_some_and(|p| self.room == Some(p.lobby))
    }

    async fn on_signal(&mut self, signal: Signal) {
        match signal {
            Signal::Key(digit) => {
                let source = match &self.pin {
                    Some(p) if !p.rfc4733 => DigitSource::InBand,
                    _ => DigitSource::Rfc4733,
                };
                self.on_digit(DigitInput { digit, source }).await;
            }
            // Only the finish of the last prompt played counts (see `Signal`).
            Signal::PlaybackFinished(number) if number == self.plays => {
                if let Some(p) = self.pin.as_mut() {
                    p.ivr.handle_playback_finished(Instant::now());
                    self.drive_ivr().await;
                }
            }
            Signal::PlaybackFinished(_) => {}
        }
    }

    async fn on_digit(&mut self, input: DigitInput) {
        let now = Instant::now();
        if let Some(p) = self.pin.as_mut() {
            p.ivr.handle_digit(input, now);
            self.drive_ivr().await;
            return;
        }
        if let Some(action) = self.controls.handle_digit(input.digit, now)
            && let Some(prompt) = self.control(action).await
        {
            self.play(prompt).await;
        }
    }

    /// Carries out an in-call control; returns what to say to the caller.
    async fn control(&mut self, action: ControlAction) -> Option<PromptQueue> {
        let (room, participant) = (self.room?, self.participant?);
        let host = &self.shared.host;
        if action == ControlAction::AnnounceCount {
            return match host.room(room).await {
                Ok(info) => Some(PromptQueue::participant_count(
                    u32::try_from(info.participants).unwrap_or(u32::MAX),
                )),
                Err(e) => {
                    self.error("counting the participants", &e);
                    None
                }
            };
        }
        let update = self.keys.apply(action);
        if let Err(e) = host.update(room, participant, update).await {
            self.error("applying an in-call control", &e);
            return None;
        }
        match action {
            ControlAction::ToggleMute => Some(PromptQueue::one(if self.keys.self_muted {
                PromptId::Muted
            } else {
                PromptId::Unmuted
            })),
            _ => None,
        }
    }

    async fn play(&mut self, prompt: PromptQueue) {
        let (Some(room), Some(participant)) = (self.room, self.participant) else {
            return;
        };
        self.plays += 1;
        if let Some(clip) = self.rendered(&prompt)
            && let Err(e) = self
                .shared
                .host
                .play_to(room, participant, clip, self.plays)
                .await
        {
            self.error("playing a prompt", &e);
        }
    }

    /// Carries out what the PIN prompts ask for, until they ask nothing more.
    async fn drive_ivr(&mut self) {
        loop {
            let Some(output) = self.pin.as_mut().and_then(|p| p.ivr.poll_output()) else {
                return;
            };
            match output {
                IvrOutput::Play(queue) => self.play(queue).await,
                IvrOutput::StopPlayback => {
                    if let (Some(r), Some(p)) = (self.room, self.participant)
                        && let Err(e) = self.shared.host.stop_playback(r, p).await
                    {
                        self.error("stopping a prompt", &e);
                    }
                }
                IvrOutput::CheckPin(check) => {
                    let verdict = self.check_pin(&check).await;
                    self.record_pin(&verdict);
                    let now = Instant::now();
                    if let Some(p) = self.pin.as_mut() {
                        let mut lockouts = lock(&self.shared.lockouts);
                        if let Err(e) =
                            p.ivr
                                .handle_pin_result(check.ticket, verdict, &mut lockouts, now)
                        {
                            tracing::warn!(call = self.call, "PIN result: {e}");
                        }
                    }
                }
                IvrOutput::JoinRoom(RoomRef(room)) => self.admit(room).await,
                IvrOutput::Control(action) => {
                    if let Some(prompt) = self.control(action).await
                        && let Some(p) = self.pin.as_mut()
                        && let Err(e) = p.ivr.announce(prompt, Instant::now())
                    {
                        tracing::debug!(call = self.call, "in-call prompt: {e}");
                    }
                }
                IvrOutput::Hangup(reason) => {
                    let ev = MediaEvent::Hangup {
                        call: self.call,
                        reason,
                    };
                    if self.shared.events.send(ev).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    /// Journals a PIN's outcome (the archive records it; the PIN itself never).
    fn record_pin(&self, verdict: &PinVerdict) {
        let Some(journal) = &self.shared.journal else {
            return;
        };
        let (outcome, reason, room) = match verdict {
            PinVerdict::Accepted(a) => ("accepted", None, Some(a.room.0)),
            PinVerdict::Rejected => ("rejected", Some("wrong_pin"), None),
            PinVerdict::ConferenceLocked => ("rejected", Some("conference_locked"), None),
            PinVerdict::ConferenceFull => ("rejected", Some("conference_full"), None),
            _ => ("rejected", Some("unavailable"), None),
        };
        let mut body = serde_json::Map::new();
        body.insert("outcome".into(), outcome.into());
        body.insert("call".into(), self.call.into());
        if let Some(r) = reason {
            body.insert("reason".into(), r.into());
        }
        if let Some(r) = room {
            body.insert("room".into(), r.into());
        }
        if let Some((dialed, _)) = &self.pin_target {
            body.insert("called".into(), dialed.clone().into());
        }
        journal.append("sip", "pin", crate::uc::now(), body);
    }

    /// What the PIN opens: looked up, then the room's state.
    async fn check_pin(&self, check: &PinCheck) -> PinVerdict {
        let Some(room) = self.shared.pins.lookup(check.pin.expose()) else {
            tracing::info!(call = self.call, "a PIN that opens no room");
            return PinVerdict::Rejected;
        };
        match self.shared.host.room(room).await {
            Ok(info) if info.locked => PinVerdict::ConferenceLocked,
            Ok(info) if info.participants >= info.max_participants => PinVerdict::ConferenceFull,
            Ok(info) => PinVerdict::Accepted(Admission {
                room: RoomRef(room),
                first_participant: info.participants == 0,
                wait_for_moderator: info.waiting_for_moderator,
            }),
            Err(HostError::UnknownRoom(_)) => {
                // Deleted without its PIN being freed: it opens nothing now.
                self.shared.pins.release(room);
                PinVerdict::Rejected
            }
            Err(e) => {
                self.error("reading the PIN's room", &e);
                PinVerdict::Unavailable
            }
        }
    }

    /// Moves the admitted caller from its prompts' room into `room`.
    async fn admit(&mut self, room: u64) {
        let (Some(lobby), Some(participant)) =
            (self.pin.as_ref().map(|p| p.lobby), self.participant)
        else {
            return;
        };
        let spec = MoveSpec {
            muted: self.keys.muted(),
            deaf: self.keys.held,
            inband_dtmf: self.pin.as_ref().is_some_and(|p| !p.rfc4733),
        };
        let host = self.shared.host.clone();
        let moved = patiently(|| host.move_participant(lobby, participant, room, spec)).await;
        match moved {
            Ok(_) => {
                tracing::info!(call = self.call, room, "caller admitted by PIN");
                self.room = Some(room);
                self.delete_lobby().await;
                self.arrived(room).await;
            }
            Err(e) => {
                self.error("moving the caller into its room", &e);
                let reason = match e {
                    HostError::Room(RoomError::Locked) => {
                        confer_pstn_bridge::ivr::HangupReason::ConferenceLocked
                    }
                    HostError::Room(RoomError::Full(_)) => {
                        confer_pstn_bridge::ivr::HangupReason::ConferenceFull
                    }
                    _ => confer_pstn_bridge::ivr::HangupReason::ServiceUnavailable,
                };
                let _ = self
                    .shared
                    .events
                    .send(MediaEvent::Hangup {
                        call: self.call,
                        reason,
                    })
                    .await;
            }
        }
    }

    /// The call ended: the participant leaves (announced if it was), the prompts' room
    /// goes.
    async fn release(mut self) {
        let host = self.shared.host.clone();
        if let Some(p) = self.pin.as_mut() {
            p.ivr.handle_call_ended();
        }
        if let (Some(r), Some(p)) = (self.room, self.participant) {
            match leave(&host, r, p).await {
                Ok(()) => {
                    tracing::debug!(call = self.call, room = r, participant = p, "caller left")
                }
                // The room was deleted (or the engine stopped) with the participant in it.
                Err(HostError::UnknownRoom(_) | HostError::UnknownParticipant { .. }) => {}
                Err(HostError::Room(RoomError::UnknownParticipant(_))) => {}
                Err(e) => self.error("leaving the room", &e),
            }
            if self.announced {
                self.announce(r, PromptId::ParticipantLeft).await;
            }
        }
        self.delete_lobby().await;
    }

    /// Deletes the PIN prompts' room, if it still exists.
    async fn delete_lobby(&mut self) {
        let Some(lobby) = self.lobby.take() else {
            return;
        };
        let host = self.shared.host.clone();
        match patiently(|| host.delete_room(lobby)).await {
            Ok(()) | Err(HostError::UnknownRoom(_)) => {}
            Err(e) => self.error("deleting the PIN prompts' room", &e),
        }
    }
}

/// Runs `op` again while a worker's command queue is full (at most about 2 s): a leave,
/// a move or a deletion must not be dropped because of a burst.
async fn patiently<T, F, Fut>(mut op: F) -> Result<T, HostError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, HostError>>,
{
    let mut wait = Duration::from_millis(2);
    for _ in 0..12 {
        match op().await {
            Err(HostError::Busy(_)) => {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_millis(200));
            }
            other => return other,
        }
    }
    op().await
}

/// Leaves the room, waiting out a busy worker: a participant must not outlive its call.
async fn leave(host: &Host, room: u64, participant: u64) -> Result<(), HostError> {
    patiently(|| host.leave(room, participant)).await
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The lock-out table stays consistent across a panic (whole-entry updates).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// What the caller's keys and the call's hold state make of the participant.
#[derive(Debug, Default)]
struct CallerKeys {
    /// Muted by `*6`.
    self_muted: bool,
    /// Held by SIP (re-INVITE or UPDATE).
    held: bool,
    /// Output gain set by `*4`/`*7`, dB.
    gain_db: f32,
}

impl CallerKeys {
    /// Largest volume change the keys make either way, dB.
    const GAIN_LIMIT_DB: f32 = 12.0;
    const GAIN_STEP_DB: f32 = 3.0;

    fn muted(&self) -> bool {
        self.held || self.self_muted
    }

    /// The update `action` calls for (`AnnounceCount` changes nothing).
    fn apply(&mut self, action: ControlAction) -> ParticipantUpdate {
        let mut update = ParticipantUpdate::default();
        match action {
            ControlAction::ToggleMute => {
                self.self_muted = !self.self_muted;
                update.muted = Some(self.muted());
            }
            ControlAction::VolumeUp | ControlAction::VolumeDown => {
                let step = if action == ControlAction::VolumeUp {
                    Self::GAIN_STEP_DB
                } else {
                    -Self::GAIN_STEP_DB
                };
                self.gain_db =
                    (self.gain_db + step).clamp(-Self::GAIN_LIMIT_DB, Self::GAIN_LIMIT_DB);
                update.output_gain_db = Some(self.gain_db);
            }
            ControlAction::AnnounceCount => {}
        }
        update
    }
}
