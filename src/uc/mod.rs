//! Unified communications: users and their devices, presence, client sessions, and chats
//! escalated to calls, carried out on the media host and SIP.
//!
//! Why here: the decisions are the signalling crate's sans-IO cores ([`Presence`] with its
//! [`Directory`], [`Escalations`], [`Policy`]); this module is their shell. It owns one
//! lock around all of them (they are small and every input touches several), feeds them
//! inputs with the wall clock, and carries out what they ask:
//!
//! - `OpenRoom` creates a host room for the conversation, with a dial-in PIN when a PIN
//!   number is configured; `CloseRoom` deletes it.
//! - `Ring` a device: on a client session, a `ring` message; on a SIP registration, an
//!   INVITE to the phone ([`SipControl::ring`]); `DialPstn` dials through a trunk. Each
//!   SIP leg has a task that turns its [`DialProgress`] into answered / declined / failed.
//! - `JoinRoom`: a SIP leg is in the room from its answer; a client session gets a `join`
//!   message with a client token for the room, and joins with it like any client. The
//!   control API tells us when it did ([`Uc::on_client_joined`]).
//! - Every escalation step and presence change is appended to the journal (the event
//!   stream, webhooks and the archive follow it); a room participant leaving is read back
//!   from the journal, so a hang-up is never missed.
//!
//! Inputs and the draining of outputs are serialised by an async "executor" lock, so the
//! commands of one input are carried out in order before the next input's; the state lock
//! is a plain mutex never held across an await. A driver task sleeps until the cores'
//! next timer (ring delays, ring timeouts, presence idleness).
//!
//! The directory (users, admin-made devices, SIP passwords) is persisted in the journal's
//! state table as one JSON document after every change: it is small (bounded by
//! [`DirectoryLimits`]) and rewritten whole, which keeps restarts trivially consistent.
//! Session and registration reachability are not persisted: they are live facts that a
//! restart ends.

#[cfg(test)]
mod invitee_tests;
pub mod routes;
mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use confer_signalling::directory::{
    Device, DeviceId, Directory, DirectoryLimits, Reachability, Timestamp, User, UserId,
};
use confer_signalling::escalation::{
    Command, ConversationId, DialOutDecision, DialOutPolicy, EscalationError, EscalationRequest,
    EscalationResponse, Escalations, Event as CallEvent, JoinedVia, LegFailure, LegId, LegTarget,
    Media, Output, Participant, RoutingPolicy,
};
use confer_signalling::policy::{self, Policy, PolicyConfig, RateLimiters, Refusal};
use confer_signalling::presence::{CallId as PresenceCall, CallKind, Presence, PresenceConfig};
use confer_signalling::token::{Keyring, Scope};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, mpsc, watch};

use crate::host::{Host, RoomSpec};
use crate::journal::Journal;
use crate::sip::{
    DialProgress, Pins, RegistrarEvent, RingRequest, SipAccount, SipAccounts, SipControl,
    SipSecret, Trunks,
};

/// The wall clock as a [`Timestamp`] (the cores never read it themselves).
pub fn now() -> Timestamp {
    Timestamp(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    )
}

/// Settings of users, presence, escalation and policy (`[escalation]`, `[presence]`,
/// `[policy]` and `directory_limits` in the config file).
#[derive(Debug, Clone, Default)]
pub struct UcSettings {
    pub routing: RoutingPolicy,
    pub presence: PresenceConfig,
    pub policy: PolicyConfig,
    pub limits: DirectoryLimits,
}

/// Why an input was refused, with the HTTP status it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UcError {
    pub status: u16,
    pub message: String,
    /// Machine-readable reason (`archive_unavailable`, a policy refusal code, ...).
    pub code: Option<String>,
}

impl UcError {
    fn new(status: u16, message: impl Into<String>) -> UcError {
        UcError {
            status,
            message: message.into(),
            code: None,
        }
    }

    fn refusal(r: &Refusal) -> UcError {
        UcError {
            status: if r.code == policy::RefusalCode::RateLimited {
                429
            } else {
                403
            },
            message: r.reason.clone(),
            code: Some(r.code.as_str().to_owned()),
        }
    }
}

impl From<EscalationError> for UcError {
    fn from(e: EscalationError) -> UcError {
        let status = match &e {
            EscalationError::UnknownUser(_)
            | EscalationError::UnknownDevice(_)
            | EscalationError::UnknownConversation(_)
            | EscalationError::UnknownLeg(_) => 404,
            EscalationError::TooManyCalls { .. } | EscalationError::TooManyParticipants { .. } => {
                409
            }
            _ => 422,
        };
        UcError::new(status, e.to_string())
    }
}

/// How a leg is carried.
#[derive(Debug, Clone)]
enum LegCarrier {
    /// Rung on a client session.
    Session { session: String },
    /// A SIP call (a registered phone or a PSTN dial) into `room`; `participant` once it
    /// answered.
    Sip {
        room: u64,
        call: u64,
        participant: Option<u64>,
    },
}

#[derive(Debug, Clone)]
struct LegInfo {
    conversation: ConversationId,
    carrier: LegCarrier,
}

/// A conversation's room.
#[derive(Debug, Clone)]
struct ConvRoom {
    room: u64,
}

/// One connected client session.
struct SessionHandle {
    user: UserId,
    device: DeviceId,
    tx: mpsc::UnboundedSender<String>,
}

/// Who a host participant is, for participants that are part of a conversation.
#[derive(Debug, Clone)]
struct Member {
    conversation: ConversationId,
    participant: Participant,
}

struct State {
    presence: Presence,
    escalations: Escalations,
    policy: Policy,
    limiters: RateLimiters,
    rooms: HashMap<ConversationId, ConvRoom>,
    room_conv: HashMap<u64, ConversationId>,
    legs: HashMap<LegId, LegInfo>,
    members: HashMap<(u64, u64), Member>,
    sessions: HashMap<String, SessionHandle>,
    /// SIP usernames (= user ids) and their digest HA1s (never the passwords), persisted
    /// with the directory.
    sip_secrets: HashMap<String, SipSecret>,
    next_session: u64,
}

/// What the directory document holds.
#[derive(Serialize, Deserialize, Default)]
struct Persisted {
    users: Vec<User>,
    devices: Vec<Device>,
    /// SIP usernames and their digest HA1s.
    #[serde(default)]
    sip_secrets: HashMap<String, SipSecret>,
    /// What versions before HA1s saved: clear SIP passwords. Read only to be turned into
    /// HA1s ([`Persisted::hash_sip_passwords`]), never written.
    #[serde(default, skip_serializing)]
    sip_passwords: HashMap<String, String>,
}

impl Persisted {
    /// Turns the clear SIP passwords of a document saved by an older version into HA1s;
    /// whether there were any (then the document must be saved again at once, so that
    /// no password stays in the database).
    fn hash_sip_passwords(&mut self) -> bool {
        let clear = std::mem::take(&mut self.sip_passwords);
        let found = !clear.is_empty();
        for (username, password) in clear {
            let secret = SipSecret::from_password(&username, &password);
            self.sip_secrets.insert(username, secret);
        }
        found
    }
}

const DIRECTORY_KEY: &str = "directory";
const POLICY_KEY: &str = "policy";

struct Shared {
    state: Mutex<State>,
    exec: tokio::sync::Mutex<()>,
    wake: Notify,
    host: Host,
    journal: Journal,
    sip: Option<SipControl>,
    trunks: Arc<Trunks>,
    pins: Arc<Pins>,
    accounts: SipAccounts,
    keys: Option<Arc<Keyring>>,
    archive: Option<crate::archive::Archive>,
}

/// The unified-communications service (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Uc(Arc<Shared>);

/// What [`Uc::start`] needs.
pub struct UcParts {
    pub host: Host,
    pub journal: Journal,
    pub sip: Option<SipControl>,
    pub trunks: Arc<Trunks>,
    pub pins: Arc<Pins>,
    pub accounts: SipAccounts,
    pub keys: Option<Arc<Keyring>>,
    pub archive: Option<crate::archive::Archive>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    // A panic while holding it is a bug already reported; the state stays usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Uc {
    /// Loads the directory and policy from the journal's state, and starts the driver.
    pub async fn start(
        settings: UcSettings,
        parts: UcParts,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Uc> {
        use anyhow::Context;
        let at = now();
        let mut directory = Directory::new(settings.limits);
        let mut persisted: Persisted = match parts.journal.load_state(DIRECTORY_KEY).await? {
            Some(text) => serde_json::from_str(&text).context("reading the saved directory")?,
            None => Persisted::default(),
        };
        let clear_sip_passwords = persisted.hash_sip_passwords();
        for u in persisted.users {
            directory
                .add_user(u)
                .context("loading a saved user (limits lowered?)")?;
        }
        for mut d in persisted.devices {
            if !matches!(d.reach, Reachability::PhoneNumber { .. }) {
                d.reach = Reachability::Unreachable;
            }
            directory.add_device(d).context("loading a saved device")?;
        }
        for (username, secret) in &persisted.sip_secrets {
            parts.accounts.set(
                username,
                SipAccount {
                    user: username.clone(),
                    secret: secret.clone(),
                },
            );
        }
        let policy_config = match parts.journal.load_state(POLICY_KEY).await? {
            Some(text) => serde_json::from_str(&text).context("reading the saved policy")?,
            None => settings.policy.clone(),
        };
        let policy = Policy::new(policy_config).map_err(|e| anyhow::anyhow!("policy: {e}"))?;
        let escalations =
            Escalations::new(settings.routing).map_err(|e| anyhow::anyhow!("escalation: {e}"))?;
        let limiters = policy.rate_limiters();
        let state = State {
            presence: Presence::new(directory, settings.presence, at),
            escalations,
            policy,
            limiters,
            rooms: HashMap::new(),
            room_conv: HashMap::new(),
            legs: HashMap::new(),
            members: HashMap::new(),
            sessions: HashMap::new(),
            sip_secrets: persisted.sip_secrets,
            next_session: 1,
        };
        let uc = Uc(Arc::new(Shared {
            state: Mutex::new(state),
            exec: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            host: parts.host,
            journal: parts.journal,
            sip: parts.sip,
            trunks: parts.trunks,
            pins: parts.pins,
            accounts: parts.accounts,
            keys: parts.keys,
            archive: parts.archive,
        }));
        if clear_sip_passwords {
            uc.persist().await.map_err(|e| {
                anyhow::anyhow!(
                    "saving the directory without its clear SIP passwords: {}",
                    e.message
                )
            })?;
            tracing::info!("the saved SIP passwords were replaced by their digest HA1s");
        }
        tokio::spawn(uc.clone().drive(shutdown.clone()));
        tokio::spawn(uc.clone().follow_rooms(shutdown));
        Ok(uc)
    }

    /// Sleeps until the cores' next timer or an input, and carries out what they ask.
    async fn drive(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            let deadline = {
                let st = lock(&self.0.state);
                [st.escalations.poll_timeout(), st.presence.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min()
            };
            let sleep = match deadline {
                Some(t) => Duration::from_millis(t.0.saturating_sub(now().0)),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.0.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
            self.input(|st, at| {
                st.escalations.handle_timeout(at);
                st.presence.handle_timeout(at);
            })
            .await;
        }
    }

    /// Applies the registrar's bindings: a registered phone is an online desk phone of its
    /// user (created on its first registration), unreachable once unbound.
    pub async fn follow_registrar(self, mut rx: mpsc::UnboundedReceiver<RegistrarEvent>) {
        while let Some(ev) = rx.recv().await {
            let created = self
                .input(|st, at| match ev {
                    RegistrarEvent::Bound {
                        user,
                        device,
                        contact,
                        expires_at_ms,
                        user_agent,
                        transport: _,
                    } => {
                        let (Ok(user), Ok(device)) = (UserId::new(user), DeviceId::new(device))
                        else {
                            return false;
                        };
                        let reach = Reachability::SipRegistration {
                            contact,
                            expires_at: Timestamp(expires_at_ms),
                        };
                        let existing = st.presence.directory().device(&device).cloned();
                        let client =
                            user_agent.map(|ua| confer_signalling::directory::ClientInfo {
                                user_agent: confer_signalling::directory::clip_to_bytes(
                                    &ua,
                                    confer_signalling::directory::MAX_USER_AGENT_BYTES,
                                )
                                .to_owned(),
                                version: String::new(),
                            });
                        let r = st.presence.update_directory(at, |dir| match existing {
                            Some(mut d) if d.user == user => {
                                d.reach = reach;
                                d.client = client;
                                dir.update_device(d).map(|_| false)
                            }
                            Some(_) => Ok(false),
                            None => {
                                let mut d = Device::new(
                                    device,
                                    user,
                                    confer_signalling::directory::DeviceKind::DeskPhone,
                                    confer_signalling::directory::Capabilities::AUDIO,
                                    reach,
                                );
                                d.client = client;
                                dir.add_device(d).map(|()| true)
                            }
                        });
                        r.unwrap_or_else(|e| {
                            tracing::warn!("a registered phone is not a device: {e}");
                            false
                        })
                    }
                    RegistrarEvent::Unbound { device, .. } => {
                        if let Ok(device) = DeviceId::new(device) {
                            let sip = st.presence.directory().device(&device).is_some_and(|d| {
                                matches!(d.reach, Reachability::SipRegistration { .. })
                            });
                            if sip {
                                let _ = st.presence.update_directory(at, |dir| {
                                    dir.set_reachability(&device, Reachability::Unreachable)
                                });
                            }
                        }
                        false
                    }
                })
                .await;
            if created && let Err(e) = self.persist().await {
                tracing::warn!("saving a registered phone's device: {}", e.message);
            }
        }
    }

    /// Follows the journal's room events: a participant of a conversation that leaves
    /// (hangs up, is kicked, its room ends) leaves the call.
    async fn follow_rooms(self, mut shutdown: watch::Receiver<bool>) {
        let mut sub = match self.0.journal.subscribe(None) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("escalation cannot follow room events: {e}");
                return;
            }
        };
        loop {
            let ev = tokio::select! {
                ev = sub.next() => match ev { Some(ev) => ev, None => return },
                _ = shutdown.changed() => return,
            };
            if ev.source != "room" || ev.kind != "left" {
                continue;
            }
            let (Some(room), Some(p)) = (
                ev.body.get("room").and_then(Value::as_u64),
                ev.body.get("participant").and_then(Value::as_u64),
            ) else {
                continue;
            };
            self.on_participant_left(room, p).await;
        }
    }

    /// Applies `f` to the state with the current time, then carries out every command and
    /// publishes every event it caused, in order. Returns what `f` returned.
    async fn input<R>(&self, f: impl FnOnce(&mut State, Timestamp) -> R) -> R {
        let _exec = self.0.exec.lock().await;
        let (r, outputs) = {
            let mut st = lock(&self.0.state);
            let at = now();
            let r = f(&mut st, at);
            (r, drain(&mut st))
        };
        self.carry_out(outputs).await;
        r
    }

    async fn carry_out(&self, mut outputs: Vec<Out>) {
        // Commands can cause more outputs (a failed ring); loop until quiet.
        while !outputs.is_empty() {
            for out in outputs {
                match out {
                    Out::Call(Output::Event(e)) => self.publish_call_event(&e),
                    Out::Call(Output::Command(c)) => self.command(c).await,
                    Out::Presence(e) => {
                        let mut body = Map::new();
                        body.insert("user".into(), json!(e.user));
                        body.insert("previous".into(), json!(e.previous));
                        body.insert("state".into(), json!(e.state));
                        self.0.journal.append("presence", "changed", e.at, body);
                    }
                }
            }
            outputs = drain(&mut lock(&self.0.state));
        }
        self.0.wake.notify_one();
    }

    fn publish_call_event(&self, e: &CallEvent) {
        let Ok(Value::Object(mut body)) = serde_json::to_value(e) else {
            return;
        };
        let kind = match body.remove("type") {
            Some(Value::String(k)) => k,
            _ => "unknown".to_owned(),
        };
        body.remove("at");
        if let Some(room) = body
            .get("conversation")
            .and_then(Value::as_str)
            .and_then(|c| ConversationId::new(c).ok())
            .and_then(|c| self.room_of(&c))
        {
            body.insert("room".into(), json!(room));
        }
        self.0.journal.append("call", &kind, e.at, body);
    }

    async fn command(&self, c: Command) {
        match c {
            Command::OpenRoom {
                conversation,
                subject,
            } => self.open_room(conversation, subject).await,
            Command::Ring {
                leg,
                conversation,
                invitee: _,
                device,
                media,
                subject,
            } => self.ring(leg, conversation, device, media, subject).await,
            Command::DialPstn {
                leg,
                conversation,
                invitee: _,
                number,
            } => self.dial_pstn(leg, conversation, number.as_str()).await,
            Command::CancelRing { leg, reason, .. } => {
                let info = lock(&self.0.state).legs.get(&leg).cloned();
                match info.map(|i| i.carrier) {
                    Some(LegCarrier::Session { session }) => {
                        self.send(
                            &session,
                            json!({ "type": "cancel", "leg": leg, "reason": reason }),
                        );
                    }
                    Some(LegCarrier::Sip { room, call, .. }) => {
                        if let Some(sip) = &self.0.sip
                            && let Err(e) = sip.hang_up(room, call).await
                        {
                            tracing::debug!(%leg, "cancelling a SIP leg: {e}");
                        }
                    }
                    None => {}
                }
            }
            Command::JoinRoom {
                leg,
                conversation,
                participant,
                target,
                media,
            } => {
                self.join_room(leg, conversation, participant, target, media)
                    .await
            }
            Command::ChangeMedia {
                conversation,
                participant,
                media,
            } => {
                // Client sessions switch their own media; SIP phones here are audio only.
                let sessions: Vec<String> = {
                    let st = lock(&self.0.state);
                    match &participant {
                        Participant::User(u) => st
                            .sessions
                            .iter()
                            .filter(|(_, s)| &s.user == u)
                            .map(|(id, _)| id.clone())
                            .collect(),
                        Participant::Phone(_) => Vec::new(),
                    }
                };
                for s in sessions {
                    self.send(
                        &s,
                        json!({ "type": "media", "conversation": conversation, "media": media }),
                    );
                }
            }
            Command::GiveDialInInstructions { .. } => {
                // The response and the `dial_in_offered` event carry the number and PIN
                // (the event stream is for IM servers, which pass them on).
            }
            Command::CloseRoom { conversation, .. } => self.close_room(&conversation).await,
        }
    }

    async fn open_room(&self, conversation: ConversationId, subject: Option<String>) {
        if lock(&self.0.state).rooms.contains_key(&conversation) {
            return;
        }
        let spec = RoomSpec {
            name: subject.unwrap_or_else(|| conversation.as_str().to_owned()),
            max_participants: None,
            wait_for_moderator: false,
            announce_joins: false,
            internal: false,
        };
        match self.0.host.create_room(spec).await {
            Ok(info) => {
                if self.0.pins.number().is_some()
                    && let Err(e) = self.0.pins.assign(info.id)
                {
                    tracing::warn!(room = info.id, "no dial-in PIN for a conversation: {e}");
                }
                let mut st = lock(&self.0.state);
                st.room_conv.insert(info.id, conversation.clone());
                st.rooms.insert(conversation, ConvRoom { room: info.id });
            }
            Err(e) => {
                tracing::error!(%conversation, "creating the conversation's room: {e}");
                let mut st = lock(&self.0.state);
                let _ = st.escalations.end(&conversation, now());
            }
        }
    }

    async fn close_room(&self, conversation: &ConversationId) {
        // Answered SIP legs (phones, PSTN) are hung up with a BYE before the room goes.
        let answered: Vec<(u64, u64)> = lock(&self.0.state)
            .legs
            .values()
            .filter(|l| &l.conversation == conversation)
            .filter_map(|l| match l.carrier {
                LegCarrier::Sip {
                    room,
                    call,
                    participant: Some(_),
                } => Some((room, call)),
                _ => None,
            })
            .collect();
        if let Some(sip) = &self.0.sip {
            for (room, call) in answered {
                if let Err(e) = sip.hang_up(room, call).await {
                    tracing::debug!(room, call, "hanging up at the call's end: {e}");
                }
            }
        }
        let room = {
            let mut st = lock(&self.0.state);
            let room = st.rooms.remove(conversation);
            if let Some(r) = &room {
                st.room_conv.remove(&r.room);
                // Its members' presence leaves the call with it (their `left` events
                // come after the room is gone from these maps).
                let users: Vec<UserId> = st
                    .members
                    .iter()
                    .filter(|((room, _), _)| *room == r.room)
                    .filter_map(|(_, m)| match &m.participant {
                        Participant::User(u) => Some(u.clone()),
                        Participant::Phone(_) => None,
                    })
                    .collect();
                st.members.retain(|(room, _), _| *room != r.room);
                if let Ok(call) = PresenceCall::new(conversation.as_str()) {
                    let at = now();
                    for u in users {
                        let _ = st.presence.on_call_ended(&u, &call, at);
                    }
                }
            }
            st.legs.retain(|_, l| &l.conversation != conversation);
            room
        };
        let sessions: Vec<String> = lock(&self.0.state).sessions.keys().cloned().collect();
        for s in sessions {
            self.send(&s, json!({ "type": "ended", "conversation": conversation }));
        }
        if let Some(r) = room {
            self.0.pins.release(r.room);
            if let Err(e) = self.0.host.delete_room(r.room).await {
                tracing::warn!(room = r.room, "closing a conversation's room: {e}");
            }
        }
    }

    fn room_of(&self, conversation: &ConversationId) -> Option<u64> {
        lock(&self.0.state).rooms.get(conversation).map(|r| r.room)
    }

    async fn ring(
        &self,
        leg: LegId,
        conversation: ConversationId,
        device: DeviceId,
        media: Media,
        subject: Option<String>,
    ) {
        let (reach, user, caller) = {
            let st = lock(&self.0.state);
            let d = st.presence.directory().device(&device).cloned();
            match d {
                Some(d) => (Some(d.reach), Some(d.user), None::<String>),
                None => (None, None, None),
            }
        };
        let room = self.room_of(&conversation);
        match (reach, room) {
            (Some(Reachability::Session { session_id }), Some(_)) => {
                let sent = self.send(
                    &session_id,
                    json!({
                        "type": "ring", "leg": leg, "conversation": conversation,
                        "media": media, "subject": subject,
                    }),
                );
                if sent {
                    lock(&self.0.state).legs.insert(
                        leg,
                        LegInfo {
                            conversation,
                            carrier: LegCarrier::Session {
                                session: session_id,
                            },
                        },
                    );
                } else {
                    self.fail_leg(leg, LegFailure::Unreachable);
                }
            }
            (Some(Reachability::SipRegistration { .. }), Some(room)) => {
                let Some(sip) = self.0.sip.clone() else {
                    self.fail_leg(leg, LegFailure::Unreachable);
                    return;
                };
                let request = RingRequest {
                    room,
                    user: user.map(|u| u.as_str().to_owned()).unwrap_or_default(),
                    device: device.as_str().to_owned(),
                    caller,
                    subject,
                };
                match sip.ring(request).await {
                    Ok((call, progress)) => {
                        self.track_sip_leg(leg, conversation, room, call, progress)
                    }
                    Err(e) => {
                        tracing::debug!(%leg, "ringing a registered phone: {e}");
                        self.fail_leg(leg, LegFailure::Unreachable);
                    }
                }
            }
            _ => self.fail_leg(leg, LegFailure::Unreachable),
        }
    }

    async fn dial_pstn(&self, leg: LegId, conversation: ConversationId, number: &str) {
        let (Some(sip), Some(room)) = (self.0.sip.clone(), self.room_of(&conversation)) else {
            self.fail_leg(leg, LegFailure::Error);
            return;
        };
        let request = match self.0.trunks.plan(room, number, None) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(%leg, "dial-out plan: {e}");
                self.fail_leg(leg, LegFailure::Rejected);
                return;
            }
        };
        match sip.dial_tracked(request).await {
            Ok((call, progress)) => self.track_sip_leg(leg, conversation, room, call, progress),
            Err(e) => {
                tracing::debug!(%leg, "dialling out: {e}");
                self.fail_leg(leg, LegFailure::Error);
            }
        }
    }

    /// Reports a leg's failure (from a command's own execution) as an input.
    fn fail_leg(&self, leg: LegId, failure: LegFailure) {
        let mut st = lock(&self.0.state);
        let _ = st.escalations.on_failed(leg, failure, now());
        st.legs.remove(&leg);
        // Drained by the caller's carry_out loop.
    }

    fn track_sip_leg(
        &self,
        leg: LegId,
        conversation: ConversationId,
        room: u64,
        call: u64,
        mut progress: mpsc::UnboundedReceiver<DialProgress>,
    ) {
        lock(&self.0.state).legs.insert(
            leg,
            LegInfo {
                conversation,
                carrier: LegCarrier::Sip {
                    room,
                    call,
                    participant: None,
                },
            },
        );
        let uc = self.clone();
        tokio::spawn(async move {
            while let Some(p) = progress.recv().await {
                match p {
                    DialProgress::Trying | DialProgress::Ringing => {}
                    DialProgress::Answered { participant } => {
                        uc.input(|st, at| {
                            if let Some(LegInfo {
                                carrier: LegCarrier::Sip { participant: p, .. },
                                ..
                            }) = st.legs.get_mut(&leg)
                            {
                                *p = Some(participant);
                            }
                            let _ = st.escalations.on_answered(leg, at);
                        })
                        .await;
                    }
                    DialProgress::Failed { status } => {
                        uc.input(|st, at| {
                            st.legs.remove(&leg);
                            let _ = match status {
                                603 => st.escalations.on_declined(leg, at),
                                // Our own CANCEL: the leg already ended.
                                487 => return,
                                486 | 600 => st.escalations.on_failed(leg, LegFailure::Busy, at),
                                404 | 408 | 480 => {
                                    st.escalations.on_failed(leg, LegFailure::Unreachable, at)
                                }
                                _ => st.escalations.on_failed(leg, LegFailure::Rejected, at),
                            };
                        })
                        .await;
                        return;
                    }
                    // The participant's `left` event (journal) reports the hang-up.
                    DialProgress::HungUp => return,
                }
            }
        });
    }

    async fn join_room(
        &self,
        leg: LegId,
        conversation: ConversationId,
        participant: Participant,
        target: LegTarget,
        media: Media,
    ) {
        let Some(info) = lock(&self.0.state).legs.get(&leg).cloned() else {
            return;
        };
        let Some(room) = self.room_of(&conversation) else {
            return;
        };
        match info.carrier {
            LegCarrier::Sip {
                participant: Some(p),
                ..
            } => {
                let via = match target {
                    LegTarget::Device(d) => JoinedVia::Device(d),
                    LegTarget::Pstn(_) => JoinedVia::Pstn,
                };
                let device = match &via {
                    JoinedVia::Device(d) => Some(d.clone()),
                    _ => None,
                };
                // Inside a command: the state lock only (the caller drains the outputs).
                let join = Joined {
                    room,
                    host_participant: p,
                    conversation,
                    participant,
                    via,
                    device,
                };
                record_joined(&mut lock(&self.0.state), now(), join);
            }
            LegCarrier::Sip { .. } => {}
            LegCarrier::Session { session } => {
                let (user, device) = {
                    let st = lock(&self.0.state);
                    match st.sessions.get(&session) {
                        Some(s) => (s.user.clone(), s.device.clone()),
                        None => return,
                    }
                };
                let token = self.client_token(room, &user, &device);
                self.send(
                    &session,
                    json!({
                        "type": "join", "leg": leg, "conversation": conversation,
                        "room": room, "media": media, "token": token,
                    }),
                );
            }
        }
    }

    /// A client token for `room` as `user` on `device`, when the API has keys.
    fn client_token(&self, room: u64, user: &UserId, device: &DeviceId) -> Option<String> {
        let keys = self.0.keys.as_ref()?;
        let scope = Scope::Client {
            room: room.to_string(),
            user: user.as_str().to_owned(),
            device: device.as_str().to_owned(),
        };
        let ttl = scope.default_ttl_s();
        keys.issue(user.as_str(), scope, now().0 / 1000, ttl, &mut rand::rng())
            .map(|t| t.token)
            .ok()
    }

    /// Records a member and reports the join to escalation and presence.
    async fn joined(&self, join: Joined) {
        self.input(|st, at| record_joined(st, at, join)).await;
    }

    /// The control API let a client device join `room` as `participant`.
    pub async fn on_client_joined(&self, room: u64, user: &str, device: &str, participant: u64) {
        let conversation = lock(&self.0.state).room_conv.get(&room).cloned();
        let (Some(conversation), Ok(user), Ok(device)) =
            (conversation, UserId::new(user), DeviceId::new(device))
        else {
            return;
        };
        let known = lock(&self.0.state)
            .presence
            .directory()
            .device(&device)
            .is_some_and(|d| d.user == user);
        let via = if known {
            JoinedVia::Device(device.clone())
        } else {
            JoinedVia::DialIn
        };
        self.joined(Joined {
            room,
            host_participant: participant,
            conversation,
            participant: Participant::User(user),
            via,
            device: known.then_some(device),
        })
        .await;
    }

    async fn on_participant_left(&self, room: u64, participant: u64) {
        self.input(|st, at| {
            let Some(m) = st.members.remove(&(room, participant)) else {
                return;
            };
            let _ = st.escalations.on_left(&m.conversation, &m.participant, at);
            if let Participant::User(u) = &m.participant
                && let Ok(call) = PresenceCall::new(m.conversation.as_str())
            {
                let _ = st.presence.on_call_ended(u, &call, at);
            }
        })
        .await;
    }

    /// Sends a session a JSON message; false when it is gone.
    fn send(&self, session: &str, msg: Value) -> bool {
        let st = lock(&self.0.state);
        st.sessions
            .get(session)
            .is_some_and(|s| s.tx.send(msg.to_string()).is_ok())
    }

    /// `POST /v1/escalations`: policy, rate limits and the archive first, then the call.
    pub async fn escalate(
        &self,
        request: EscalationRequest,
        requester: Option<&str>,
        im_server: Option<&str>,
    ) -> Result<EscalationResponse, UcError> {
        if !request.end
            && let Some(archive) = &self.0.archive
            && let Err(r) = archive.admit("escalation")
        {
            self.policy_refused("escalation", requester, "archive", &r.to_string());
            return Err(UcError {
                status: 503,
                message: r.to_string(),
                code: Some(r.reason.to_owned()),
            });
        }
        let trunks = self.0.trunks.clone();
        let journal = self.0.journal.clone();
        let requester = requester.map(str::to_owned);
        let im_server = im_server.map(str::to_owned);
        let result = self
            .input(move |st, at| -> Result<EscalationResponse, UcError> {
                let instant = std::time::Instant::now();
                if let Some(server) = &im_server {
                    st.limiters
                        .check_im_server(server, instant)
                        .map_err(|r| UcError::refusal(&r))?;
                }
                if let Some(user) = &requester {
                    st.limiters
                        .check_user(user, instant)
                        .map_err(|r| UcError::refusal(&r))?;
                    if !request.end {
                        st.policy
                            .check_escalation(user, request.modality)
                            .map_err(|r| UcError::refusal(&r))?;
                    }
                }
                let dial_out = InviteePolicy {
                    policy: &st.policy,
                    trunks: &trunks,
                    requester: requester.as_deref(),
                    journal: &journal,
                    at,
                };
                Ok(st
                    .escalations
                    .escalate(request, &st.presence, &dial_out, at)?)
            })
            .await;
        match result {
            Ok(mut response) => {
                self.fill_join_info(&mut response);
                Ok(response)
            }
            Err(e) => {
                if let Some(code) = &e.code {
                    self.policy_refused("escalation", None, code, &e.message);
                }
                Err(e)
            }
        }
    }

    /// Puts the room's dial-in number and PIN, and for users a client join URL, into each
    /// invitee's report.
    fn fill_join_info(&self, response: &mut EscalationResponse) {
        let Some(room) = self.room_of(&response.conversation) else {
            return;
        };
        let dial_in = self.0.pins.of(room);
        for inv in &mut response.invitees {
            if let Some(d) = &dial_in {
                inv.join.dial_in = Some(confer_signalling::escalation::DialInInfo {
                    number: d.number.clone(),
                    pin: d.pin.clone(),
                });
            }
            inv.join.url = Some(format!("/v1/rooms/{room}/participants"));
        }
    }

    fn policy_refused(&self, what: &str, who: Option<&str>, code: &str, reason: &str) {
        Refused {
            what,
            who,
            rule: code,
            reason,
        }
        .journal(&self.0.journal, "policy", "refused", now());
    }

    /// May `by` have room `room` recorded? The policy's `recording` activity of `by`'s
    /// group decides; a refusal is journaled (and archived) like the others.
    pub fn check_recording(&self, room: u64, by: &str) -> Result<(), UcError> {
        let user = UserId::new(by).map_err(|e| UcError::new(400, format!("by: {e}")))?;
        let decision = {
            let st = lock(&self.0.state);
            if st.presence.directory().user(&user).is_none() {
                return Err(UcError::new(404, format!("no user {user}")));
            }
            st.policy
                .check_activity(user.as_str(), policy::Activity::Recording)
        };
        decision.map_err(|r| {
            tracing::info!(room, user = %user, reason = %r.reason, "recording refused");
            self.policy_refused("recording", Some(user.as_str()), r.code.as_str(), &r.reason);
            UcError::refusal(&r)
        })
    }

    /// Whether room `room` is an escalated conversation's (what an IM server may record).
    pub fn is_conversation_room(&self, room: u64) -> bool {
        lock(&self.0.state).room_conv.contains_key(&room)
    }

    /// The call of a conversation, for `GET /v1/escalations/{conversation}`.
    pub fn call_view(&self, conversation: &str) -> Option<Value> {
        let c = ConversationId::new(conversation).ok()?;
        let st = lock(&self.0.state);
        let view = st.escalations.call(&c)?;
        let mut v = serde_json::to_value(view).ok()?;
        if let (Some(room), Some(obj)) = (st.rooms.get(&c), v.as_object_mut()) {
            obj.insert("room".into(), json!(room.room));
        }
        Some(v)
    }

    /// Saves the directory and the SIP accounts' HA1s (after an admin change).
    async fn persist(&self) -> Result<(), UcError> {
        let doc = {
            let st = lock(&self.0.state);
            let dir = st.presence.directory();
            let users: Vec<User> = dir.users().cloned().collect();
            let devices: Vec<Device> = users
                .iter()
                .flat_map(|u| dir.devices_of(&u.id).cloned().collect::<Vec<_>>())
                .collect();
            Persisted {
                users,
                devices,
                sip_secrets: st.sip_secrets.clone(),
                sip_passwords: HashMap::new(),
            }
        };
        let text = serde_json::to_string(&doc).map_err(|e| UcError::new(500, e.to_string()))?;
        self.0
            .journal
            .save_state(DIRECTORY_KEY, &text)
            .await
            .map_err(|e| UcError::new(503, format!("saving the directory: {e}")))
    }
}

/// Something refused, as the journal (and so the archive's policy decisions) records it.
pub(crate) struct Refused<'a> {
    pub what: &'a str,
    pub who: Option<&'a str>,
    pub rule: &'a str,
    pub reason: &'a str,
}

impl Refused<'_> {
    pub(crate) fn journal(self, journal: &Journal, source: &str, kind: &str, at: Timestamp) {
        let mut body = Map::new();
        body.insert("what".into(), json!(self.what));
        if let Some(w) = self.who {
            body.insert("who".into(), json!(w));
        }
        body.insert("rule".into(), json!(self.rule));
        body.insert("reason".into(), json!(self.reason));
        journal.append(source, kind, at, body);
    }
}

/// What escalation asks of policy per invitee: may their number be dialled (the group's
/// dial-out rules, then the trunks' dial-out policy), may they have video (the group's
/// blocked activities; a refusal is journaled, so archived).
struct InviteePolicy<'a> {
    policy: &'a Policy,
    trunks: &'a Trunks,
    requester: Option<&'a str>,
    journal: &'a Journal,
    at: Timestamp,
}

impl DialOutPolicy for InviteePolicy<'_> {
    fn decide(
        &self,
        _: &ConversationId,
        p: &Participant,
        number: &confer_signalling::directory::PhoneNumber,
    ) -> DialOutDecision {
        let user = match p {
            Participant::User(u) => u.as_str(),
            Participant::Phone(_) => self.requester.unwrap_or_default(),
        };
        if let Err(r) = self.policy.check_dial_out(user, number.as_str()) {
            return DialOutDecision::Deny { reason: r.reason };
        }
        match self.trunks.plan(0, number.as_str(), None) {
            Ok(_) => DialOutDecision::Allow,
            Err(e) => DialOutDecision::Deny {
                reason: e.to_string(),
            },
        }
    }

    fn video_allowed(&self, p: &Participant) -> bool {
        let Participant::User(u) = p else {
            return true;
        };
        match self
            .policy
            .check_activity(u.as_str(), policy::Activity::Video)
        {
            Ok(()) => true,
            Err(r) => {
                Refused {
                    what: "video",
                    who: Some(u.as_str()),
                    rule: &r.rule,
                    reason: &r.reason,
                }
                .journal(self.journal, "policy", "refused", self.at);
                false
            }
        }
    }
}

/// A participant of a conversation is in its room.
struct Joined {
    room: u64,
    host_participant: u64,
    conversation: ConversationId,
    participant: Participant,
    via: JoinedVia,
    device: Option<DeviceId>,
}

fn record_joined(st: &mut State, at: Timestamp, j: Joined) {
    st.members.insert(
        (j.room, j.host_participant),
        Member {
            conversation: j.conversation.clone(),
            participant: j.participant.clone(),
        },
    );
    let State {
        presence,
        escalations,
        ..
    } = st;
    if let Err(e) = escalations.on_joined(
        presence.directory(),
        &j.conversation,
        j.participant.clone(),
        j.via,
        at,
    ) {
        tracing::debug!(conversation = %j.conversation, "join not part of the call: {e}");
    }
    if let Participant::User(u) = &j.participant
        && let Ok(call) = PresenceCall::new(j.conversation.as_str())
    {
        let _ = st
            .presence
            .on_call_started(u, call, j.device.as_ref(), CallKind::Conference, at);
    }
}

/// One output of the cores.
enum Out {
    Call(Output),
    Presence(confer_signalling::presence::PresenceEvent),
}

fn drain(st: &mut State) -> Vec<Out> {
    let mut v = Vec::new();
    while let Some(o) = st.escalations.poll_output() {
        v.push(Out::Call(o));
    }
    while let Some(e) = st.presence.poll_event() {
        v.push(Out::Presence(e));
    }
    v
}

#[cfg(test)]
mod sip_secret_tests {
    use super::*;

    #[test]
    fn the_saved_directory_keeps_only_sip_ha1s_and_hashes_an_old_ones_clear_passwords() {
        // As saved by a version before HA1s.
        let old = r#"{"users":[],"devices":[],"sip_passwords":{"alice":"wonderland-1"}}"#;
        let mut doc: Persisted = serde_json::from_str(old).unwrap();
        assert!(doc.hash_sip_passwords());
        let text = serde_json::to_string(&doc).unwrap();
        assert!(!text.contains("wonderland"), "{text}");
        assert!(!text.contains("sip_passwords"), "{text}");
        assert_eq!(
            doc.sip_secrets.get("alice"),
            Some(&SipSecret::from_password("alice", "wonderland-1"))
        );
        // Read back, nothing is left to convert and the HA1s are the same.
        let mut again: Persisted = serde_json::from_str(&text).unwrap();
        assert!(!again.hash_sip_passwords());
        assert_eq!(again.sip_secrets, doc.sip_secrets);
    }
}
