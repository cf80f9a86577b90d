//! Presence: one aggregated availability per user, from its devices, its calls and what
//! the user said, in the enterprise-UC model (available, busy, in a call, in a conference,
//! presenting, do not disturb, away, offline).
//!
//! [`Presence`] owns the [`Directory`] (presence is a function of it, so they cannot drift
//! apart); the binary changes the directory through [`Presence::update_directory`], reports
//! call facts, and reads the aggregated states and the change events.
//!
//! # Rules
//!
//! Evaluated in this order at time `now`; the first that applies gives the state:
//!
//! 1. **Offline** when no device is online ([`Device::is_online`]) and the user is in no
//!    call. A user-set state does not make an absent user look present (Teams and Skype
//!    for Business show offline when every client is gone, whatever was set). A user in a
//!    call with no online device (reached on a phone number by the PSTN fallback) is not
//!    offline: the call says where they are.
//! 2. **Do not disturb** when the user set it: it outranks every call state, because it is
//!    what escalation reads to decide whether to ring (and the only state that silences it).
//! 3. **Presenting**, then **in a conference**, then **in a call**, from the call facts the
//!    binary reports ([`Presence::on_call_started`], [`Presence::set_presenting`]): they
//!    outrank a user-set busy, away or available, which would be less precise (someone
//!    visibly in a call is not "away").
//! 4. The **user-set** available, busy or away, until its expiry if it has one. A user-set
//!    "available" is sticky: idleness does not turn it into away (that is what setting it
//!    means); give it an expiry to make it lapse.
//! 5. **Away** when there has been no activity for [`PresenceConfig::idle_timeout`]
//!    (default 10 min, the Teams and Skype for Business default), else **available**.
//!    Activity is the latest of: any device's reported activity
//!    ([`Directory::record_activity`]), a device coming online (logging in is activity), a
//!    call starting or ending.
//!
//! "Busy" is only ever user-set: confer's own busy states are the more precise call states.
//!
//! # Events
//!
//! Every change of a user's aggregated state is one [`PresenceEvent`] with its time;
//! nothing is emitted when the state does not change (an activity report, a second
//! device coming online). Several changes inside one call (e.g. one
//! [`Presence::update_directory`] removing two devices) give at most one event per user.
//! Building a [`Presence`] from a loaded directory emits nothing: initial states are a
//! snapshot, not changes. A user removed from the directory goes offline (one event if it
//! was not) and is forgotten.
//!
//! # Drive contract
//!
//! 1. [`Presence::new`] with the loaded directory.
//! 2. Change the directory only through [`Presence::update_directory`]; report calls with
//!    [`Presence::on_call_started`], [`Presence::on_call_ended`],
//!    [`Presence::set_presenting`]; user choices with [`Presence::set_user_state`] and
//!    [`Presence::clear_user_state`].
//! 3. After each of those, drain [`Presence::poll_event`] until `None`.
//! 4. Sleep until [`Presence::poll_timeout`] (registration expiries, idle-away, expiry of a
//!    user-set state) and call [`Presence::handle_timeout`]; early, late or spurious calls
//!    are harmless. Then go to 3.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[cfg(doc)]
use crate::directory::Device;
use crate::directory::{
    DeviceId, Directory, Reachability, Timestamp, UserId, ValidationError, serde_ms, text_id,
};

/// A user's aggregated availability.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    Available,
    Busy,
    InACall,
    InAConference,
    Presenting,
    DoNotDisturb,
    Away,
    Offline,
}

/// What a user may set themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserState {
    Available,
    Busy,
    DoNotDisturb,
    Away,
}

impl From<UserState> for PresenceState {
    fn from(s: UserState) -> PresenceState {
        match s {
            UserState::Available => PresenceState::Available,
            UserState::Busy => PresenceState::Busy,
            UserState::DoNotDisturb => PresenceState::DoNotDisturb,
            UserState::Away => PresenceState::Away,
        }
    }
}

/// A user-set state and when it lapses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSetState {
    pub state: UserState,
    /// `None`: until cleared.
    pub until: Option<Timestamp>,
}

text_id!(
    /// The binary's name for one call or conference a user is in (a conversation id, a
    /// SIP Call-ID): the key of [`Presence::on_call_started`] and its peers.
    CallId,
    "call id"
);

/// What kind of call a user is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    /// A two-party call.
    Call,
    /// A room with any number of participants (an escalated chat, a meeting).
    Conference,
}

/// Presence settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PresenceConfig {
    /// No activity for this long makes a user away. Default 10 min.
    #[serde(rename = "idle_timeout_ms", with = "serde_ms")]
    pub idle_timeout: Duration,
    /// Most simultaneous calls tracked per user. Default 16.
    pub max_calls_per_user: usize,
}

impl Default for PresenceConfig {
    fn default() -> PresenceConfig {
        PresenceConfig {
            idle_timeout: Duration::from_secs(600),
            max_calls_per_user: 16,
        }
    }
}

/// A user's aggregated state changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEvent {
    pub user: UserId,
    pub previous: PresenceState,
    pub state: PresenceState,
    pub at: Timestamp,
}

/// A user's presence as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceView {
    pub user: UserId,
    pub state: PresenceState,
    /// When the aggregated state last changed.
    pub since: Timestamp,
    pub user_set: Option<UserSetState>,
    pub online_devices: usize,
    pub calls: usize,
}

/// Why a presence input was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PresenceError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("unknown user {0}")]
    UnknownUser(UserId),
    #[error("unknown device {0}")]
    UnknownDevice(DeviceId),
    #[error("device {device} does not belong to {user}")]
    NotUsersDevice { device: DeviceId, user: UserId },
    #[error("user {user} is not in call {call}")]
    UnknownCall { user: UserId, call: CallId },
    #[error("user {user} is already in {max} calls")]
    TooManyCalls { user: UserId, max: usize },
}

#[derive(Debug, Clone)]
struct CallFact {
    kind: CallKind,
    presenting: bool,
}

#[derive(Debug, Clone)]
struct UserPresence {
    state: PresenceState,
    since: Timestamp,
    user_set: Option<UserSetState>,
    calls: BTreeMap<CallId, CallFact>,
    last_active: Timestamp,
    was_online: bool,
    timer: Option<Timestamp>,
}

impl UserPresence {
    fn new(now: Timestamp) -> UserPresence {
        UserPresence {
            state: PresenceState::Offline,
            since: now,
            user_set: None,
            calls: BTreeMap::new(),
            last_active: Timestamp(0),
            was_online: false,
            timer: None,
        }
    }
}

/// The outcome of the rules for one user at one time.
struct Aggregate {
    state: PresenceState,
    online: bool,
    last_active: Timestamp,
    user_set: Option<UserSetState>,
    /// When the outcome may change without any input.
    next: Option<Timestamp>,
}

fn earliest(a: Option<Timestamp>, b: Timestamp) -> Option<Timestamp> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// The rules of the module doc; pure.
fn aggregate(
    dir: &Directory,
    id: &UserId,
    p: &UserPresence,
    idle: Duration,
    now: Timestamp,
) -> Aggregate {
    let mut next = None;
    let mut online = false;
    let mut last_active = p.last_active;
    for d in dir.devices_of(id) {
        if d.is_online(now) {
            online = true;
            if let Reachability::SipRegistration { expires_at, .. } = d.reach {
                next = earliest(next, expires_at);
            }
        }
        if let Some(t) = d.last_activity {
            last_active = last_active.max(t);
        }
    }
    if online && !p.was_online {
        last_active = last_active.max(now);
    }
    let user_set = p.user_set.filter(|u| u.until.is_none_or(|t| now < t));
    if let Some(t) = user_set.and_then(|u| u.until) {
        next = earliest(next, t);
    }
    let calls = p.calls.values();
    let state = if !online && p.calls.is_empty() {
        PresenceState::Offline
    } else if user_set.is_some_and(|u| u.state == UserState::DoNotDisturb) {
        PresenceState::DoNotDisturb
    } else if calls.clone().any(|c| c.presenting) {
        PresenceState::Presenting
    } else if calls.clone().any(|c| c.kind == CallKind::Conference) {
        PresenceState::InAConference
    } else if !p.calls.is_empty() {
        PresenceState::InACall
    } else if let Some(u) = user_set {
        u.state.into()
    } else {
        let away_at = last_active.saturating_add(idle);
        if now >= away_at {
            PresenceState::Away
        } else {
            next = earliest(next, away_at);
            PresenceState::Available
        }
    };
    Aggregate {
        state,
        online,
        last_active,
        user_set,
        next,
    }
}

/// Aggregated presence of every user of the directory it owns. See the module doc.
#[derive(Debug)]
pub struct Presence {
    dir: Directory,
    config: PresenceConfig,
    users: BTreeMap<UserId, UserPresence>,
    timers: BTreeSet<(Timestamp, UserId)>,
    events: VecDeque<PresenceEvent>,
}

impl Presence {
    /// Takes the directory and computes every user's state at `now`, emitting nothing.
    pub fn new(directory: Directory, config: PresenceConfig, now: Timestamp) -> Presence {
        let mut p = Presence {
            dir: directory,
            config,
            users: BTreeMap::new(),
            timers: BTreeSet::new(),
            events: VecDeque::new(),
        };
        p.dir.take_touched();
        let ids: Vec<UserId> = p.dir.users().map(|u| u.id.clone()).collect();
        for id in &ids {
            p.recompute(id, now);
        }
        p.events.clear();
        p
    }

    /// The settings.
    pub fn config(&self) -> PresenceConfig {
        self.config
    }

    /// The directory, to read.
    pub fn directory(&self) -> &Directory {
        &self.dir
    }

    /// Changes the directory with `f` at `now`, then re-aggregates the users it touched.
    /// Returns what `f` returns. Directory methods that fail change nothing, so `f` may
    /// stop at the first error.
    pub fn update_directory<R>(
        &mut self,
        now: Timestamp,
        f: impl FnOnce(&mut Directory) -> R,
    ) -> R {
        let r = f(&mut self.dir);
        self.sync(now);
        r
    }

    /// Sets a user's own state, until `until` (exclusive) or until cleared.
    pub fn set_user_state(
        &mut self,
        user: &UserId,
        state: UserState,
        until: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<(), PresenceError> {
        self.entry(user, now)?.user_set = Some(UserSetState { state, until });
        self.recompute(user, now);
        Ok(())
    }

    /// Clears a user's own state (back to the computed one).
    pub fn clear_user_state(&mut self, user: &UserId, now: Timestamp) -> Result<(), PresenceError> {
        self.entry(user, now)?.user_set = None;
        self.recompute(user, now);
        Ok(())
    }

    /// A user is in call `call` (on `device`, if known: it must be theirs). Reporting the
    /// same call again updates its kind (a call escalated to a conference) and keeps its
    /// presenting flag.
    pub fn on_call_started(
        &mut self,
        user: &UserId,
        call: CallId,
        device: Option<&DeviceId>,
        kind: CallKind,
        now: Timestamp,
    ) -> Result<(), PresenceError> {
        if self.dir.user(user).is_none() {
            return Err(PresenceError::UnknownUser(user.clone()));
        }
        if let Some(d) = device {
            let owner = &self
                .dir
                .device(d)
                .ok_or_else(|| PresenceError::UnknownDevice(d.clone()))?
                .user;
            if owner != user {
                return Err(PresenceError::NotUsersDevice {
                    device: d.clone(),
                    user: user.clone(),
                });
            }
        }
        let max = self.config.max_calls_per_user;
        let p = self.entry(user, now)?;
        if p.calls.len() >= max && !p.calls.contains_key(&call) {
            return Err(PresenceError::TooManyCalls {
                user: user.clone(),
                max,
            });
        }
        p.calls
            .entry(call)
            .and_modify(|c| c.kind = kind)
            .or_insert(CallFact {
                kind,
                presenting: false,
            });
        p.last_active = p.last_active.max(now);
        self.recompute(user, now);
        Ok(())
    }

    /// A user left call `call`. Idempotent: ending an unknown call changes nothing.
    pub fn on_call_ended(
        &mut self,
        user: &UserId,
        call: &CallId,
        now: Timestamp,
    ) -> Result<(), PresenceError> {
        let p = self.entry(user, now)?;
        if p.calls.remove(call).is_some() {
            p.last_active = p.last_active.max(now);
            self.recompute(user, now);
        }
        Ok(())
    }

    /// A user started or stopped presenting (sharing their screen) in call `call`.
    pub fn set_presenting(
        &mut self,
        user: &UserId,
        call: &CallId,
        presenting: bool,
        now: Timestamp,
    ) -> Result<(), PresenceError> {
        let fact = self.entry(user, now)?.calls.get_mut(call).ok_or_else(|| {
            PresenceError::UnknownCall {
                user: user.clone(),
                call: call.clone(),
            }
        })?;
        fact.presenting = presenting;
        self.recompute(user, now);
        Ok(())
    }

    /// The aggregated state as of the last input or timeout; `None` for an unknown user.
    #[must_use]
    pub fn state(&self, user: &UserId) -> Option<PresenceState> {
        self.dir.user(user)?;
        Some(
            self.users
                .get(user)
                .map_or(PresenceState::Offline, |p| p.state),
        )
    }

    /// The state the rules give at `now`, without changing anything (escalation asks this,
    /// so a state that lapsed since the last timeout is not used).
    #[must_use]
    pub fn evaluate(&self, user: &UserId, now: Timestamp) -> Option<PresenceState> {
        self.dir.user(user)?;
        let fresh;
        let p = match self.users.get(user) {
            Some(p) => p,
            None => {
                fresh = UserPresence::new(now);
                &fresh
            }
        };
        Some(aggregate(&self.dir, user, p, self.config.idle_timeout, now).state)
    }

    /// A user's presence for the API; `None` for an unknown user.
    pub fn view(&self, user: &UserId, now: Timestamp) -> Option<PresenceView> {
        let state = self.state(user)?;
        let p = self.users.get(user);
        Some(PresenceView {
            user: user.clone(),
            state,
            since: p.map_or(now, |p| p.since),
            user_set: p.and_then(|p| p.user_set),
            online_devices: self.dir.online_devices(user, now).count(),
            calls: p.map_or(0, |p| p.calls.len()),
        })
    }

    /// Re-aggregates the users whose time-based inputs lapsed by `now`.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.sync(now);
        while let Some((at, _)) = self.timers.first() {
            if *at > now {
                break;
            }
            // first() just returned Some.
            let Some((_, user)) = self.timers.pop_first() else {
                break;
            };
            if let Some(p) = self.users.get_mut(&user) {
                p.timer = None;
            }
            self.recompute(&user, now);
        }
    }

    /// When [`Presence::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// The next state change, oldest first.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<PresenceEvent> {
        self.events.pop_front()
    }

    fn sync(&mut self, now: Timestamp) {
        for id in self.dir.take_touched() {
            self.recompute(&id, now);
        }
    }

    fn entry(&mut self, user: &UserId, now: Timestamp) -> Result<&mut UserPresence, PresenceError> {
        if self.dir.user(user).is_none() {
            return Err(PresenceError::UnknownUser(user.clone()));
        }
        Ok(self
            .users
            .entry(user.clone())
            .or_insert_with(|| UserPresence::new(now)))
    }

    fn recompute(&mut self, id: &UserId, now: Timestamp) {
        if self.dir.user(id).is_none() {
            if let Some(p) = self.users.remove(id) {
                if let Some(t) = p.timer {
                    self.timers.remove(&(t, id.clone()));
                }
                if p.state != PresenceState::Offline {
                    self.events.push_back(PresenceEvent {
                        user: id.clone(),
                        previous: p.state,
                        state: PresenceState::Offline,
                        at: now,
                    });
                }
            }
            return;
        }
        let p = self
            .users
            .entry(id.clone())
            .or_insert_with(|| UserPresence::new(now));
        let a = aggregate(&self.dir, id, p, self.config.idle_timeout, now);
        p.user_set = a.user_set;
        p.last_active = a.last_active;
        p.was_online = a.online;
        if a.state != p.state {
            self.events.push_back(PresenceEvent {
                user: id.clone(),
                previous: p.state,
                state: a.state,
                at: now,
            });
            p.state = a.state;
            p.since = now;
        }
        if p.timer != a.next {
            if let Some(t) = p.timer {
                self.timers.remove(&(t, id.clone()));
            }
            if let Some(t) = a.next {
                self.timers.insert((t, id.clone()));
            }
            p.timer = a.next;
        }
    }
}
