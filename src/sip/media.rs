//! The media side of SIP calls: runs the core's [`MediaCommand`]s against the [`Host`].
//!
//! Why a task per call: a call's commands must run in order (prepare, join, hold,
//! release) while the core task never waits on the host. Each call gets a small task fed
//! by a bounded queue; its results go back to the core over one bounded channel. The
//! task owns the call's reserved socket and participant, and leaves the room when it
//! ends, whichever way it ends: after [`MediaCommand::Release`], or when its queue
//! closes (the core dropped the call, or the server stops), so no participant outlives
//! its call.
//!
//! Once the caller is in its room, the host hands the task the keys its caller presses
//! (RFC 4733, [`JoinOptions::keys`]): they drive the in-call controls.
//!
//! Rooms are found by name (one made through the API counts) or created on the first
//! call; the name-to-id cache is bounded by the dial plan and checked before use, so a
//! room deleted through the API is created again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use confer_codecs::dtmf::DtmfDigit;
use confer_conference::room::RoomError;
use confer_pstn_bridge::ivr::{
    ControlAction, ControlMap, ControlSequence, DEFAULT_SEQUENCE_TIMEOUT, InCallControls,
};
use tokio::sync::{Mutex, mpsc};
use tokio::task::JoinSet;

use super::core::{CallId, MediaCommand, MediaEvent, MediaFailure, MediaSpec};
use super::metrics::SipMetrics;
use crate::host::{Host, HostError, JoinOptions, JoinSpec, ParticipantUpdate, RoomSpec, RtpSocket};

/// Commands queued per call (a call issues a handful in its life).
const CALL_QUEUE: usize = 16;
/// Keys queued per call (a person presses a few a second).
const KEY_QUEUE: usize = 16;

type RoomCache = Arc<Mutex<HashMap<String, u64>>>;

/// Runs media commands (see the module docs).
pub struct MediaDriver {
    host: Host,
    rooms: RoomCache,
    calls: HashMap<CallId, mpsc::Sender<MediaCommand>>,
    events: mpsc::Sender<MediaEvent>,
    tasks: JoinSet<()>,
    metrics: Arc<SipMetrics>,
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
    pub fn new(host: Host, events: mpsc::Sender<MediaEvent>, metrics: Arc<SipMetrics>) -> Self {
        MediaDriver {
            host,
            rooms: RoomCache::default(),
            calls: HashMap::new(),
            events,
            tasks: JoinSet::new(),
            metrics,
        }
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
                self.tasks.spawn(call_media(
                    self.host.clone(),
                    self.rooms.clone(),
                    call,
                    rx,
                    self.events.clone(),
                    self.metrics.clone(),
                ));
                self.calls.insert(call, tx.clone());
                tx
            }
        };
        if sender.try_send(command).is_err() {
            // A call's queue is never this long; if it is, the call cannot be served.
            tracing::error!(call, "media command queue full: releasing the call's media");
            self.metrics.task_errors.fetch_add(1, Ordering::Relaxed);
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
            self.metrics.task_errors.fetch_add(1, Ordering::Relaxed);
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
        match host.room(id).await {
            Ok(_) => return Ok(id),
            Err(HostError::UnknownRoom(_)) => {
                cache.remove(name);
            }
            Err(e) => return Err(e),
        }
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

/// One call's media, in command order (see the module docs).
async fn call_media(
    host: Host,
    rooms: RoomCache,
    call: CallId,
    mut commands: mpsc::Receiver<MediaCommand>,
    events: mpsc::Sender<MediaEvent>,
    metrics: Arc<SipMetrics>,
) {
    let mut room = None;
    let mut socket: Option<RtpSocket> = None;
    let mut participant = None;
    let error = |what: &str, e: &HostError| {
        tracing::warn!(call, "{what}: {e}");
        metrics.task_errors.fetch_add(1, Ordering::Relaxed);
    };
    // Keys the caller presses in the room (RFC 4733) drive the in-call controls; the host
    // sends them here once the caller is in.
    let (keys_tx, mut keys_rx) = mpsc::channel(KEY_QUEUE);
    let mut keys_tx = Some(keys_tx);
    let mut controls = InCallControls::new(in_call_controls(), DEFAULT_SEQUENCE_TIMEOUT);
    let mut keys = CallerKeys::default();
    loop {
        let command = tokio::select! {
            command = commands.recv() => match command {
                Some(c) => c,
                None => break,
            },
            Some(digit) = keys_rx.recv(), if participant.is_some() => {
                let action = controls.handle_digit(digit, std::time::Instant::now());
                if let (Some(action), Some(r), Some(p)) = (action, room, participant)
                    && let Err(e) = host.update(r, p, keys.apply(action)).await
                {
                    error("applying an in-call control", &e);
                }
                continue;
            }
        };
        let reply = match command {
            MediaCommand::Prepare { room: name } => {
                let prepared = match resolve_room(&host, &rooms, &name).await {
                    Ok(id) => {
                        room = Some(id);
                        host.reserve_rtp()
                    }
                    Err(e) => Err(e),
                };
                match prepared {
                    Ok(s) => {
                        let local = s.local_addr();
                        socket = Some(s);
                        Some(MediaEvent::Prepared { call, local })
                    }
                    Err(e) => {
                        error("preparing the media", &e);
                        Some(MediaEvent::Failed {
                            call,
                            reason: failure(&e),
                        })
                    }
                }
            }
            MediaCommand::Join(spec) => Some(
                match join(&host, room, &mut socket, spec, keys_tx.take()).await {
                    Ok(p) => {
                        participant = Some(p);
                        MediaEvent::Joined { call }
                    }
                    Err(e) => {
                        error("joining the room", &e);
                        MediaEvent::Failed {
                            call,
                            reason: failure(&e),
                        }
                    }
                },
            ),
            MediaCommand::Hold { held } => {
                keys.held = held;
                if let (Some(r), Some(p)) = (room, participant) {
                    let update = ParticipantUpdate {
                        muted: Some(keys.muted()),
                        deaf: Some(held),
                        ..ParticipantUpdate::default()
                    };
                    if let Err(e) = host.update(r, p, update).await {
                        error("holding the participant", &e);
                    }
                }
                None
            }
            MediaCommand::Release => break,
        };
        if let Some(ev) = reply
            && events.send(ev).await.is_err()
        {
            // The core has stopped: release below.
            break;
        }
    }
    if let (Some(r), Some(p)) = (room, participant) {
        match host.leave(r, p).await {
            Ok(()) => tracing::debug!(call, room = r, participant = p, "caller left the room"),
            // The room was deleted (or the engine stopped) with the participant in it.
            Err(HostError::UnknownRoom(_) | HostError::UnknownParticipant { .. }) => {}
            Err(HostError::Room(RoomError::UnknownParticipant(_))) => {}
            Err(e) => error("leaving the room", &e),
        }
    }
}

/// The in-call keys: `*6` mutes or unmutes the caller, `*4` and `*7` lower and raise what
/// it hears by 3 dB (a participant count, `*0` elsewhere, needs a prompt played to one
/// participant, which rooms cannot do yet).
fn in_call_controls() -> ControlMap {
    let entries = [
        ("*6", ControlAction::ToggleMute),
        ("*4", ControlAction::VolumeDown),
        ("*7", ControlAction::VolumeUp),
    ]
    .into_iter()
    .filter_map(|(keys, action)| ControlSequence::parse(keys).ok().map(|k| (k, action)));
    // Fixed, unambiguous sequences: the empty map is only a fallback that cannot happen.
    ControlMap::new(entries).unwrap_or_else(|_| ControlMap::empty())
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

    /// The update `action` calls for (`AnnounceCount` is not in the map).
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

async fn join(
    host: &Host,
    room: Option<u64>,
    socket: &mut Option<RtpSocket>,
    spec: MediaSpec,
    keys: Option<mpsc::Sender<DtmfDigit>>,
) -> Result<u64, HostError> {
    let room = room.ok_or(HostError::Stopped)?;
    let info = host
        .join_with(
            room,
            JoinSpec {
                rtp_address: spec.remote,
                codec: spec.codec,
                audio_level_extension: None,
                denoise: false,
                muted: spec.held,
                deaf: spec.held,
                moderator: false,
            },
            JoinOptions {
                socket: socket.take(),
                telephone_event: spec.telephone_event,
                keys,
            },
        )
        .await?;
    Ok(info.id)
}
