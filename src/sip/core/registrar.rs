//! confer's SIP registrar (RFC 3261 §10.3, RFC 5626 §6): desk phones and softphones
//! register their contacts under their users' SIP accounts, and [`SipCore::ring`] calls
//! a registered phone over the flow it registered on. Sans-IO like the rest of the core:
//! expiry is a core timer, and what happens to bindings leaves as
//! [`Output::Registrar`] events (with `Instant`s; the shell turns them into
//! [`RegistrarEvent`]s with Unix times).
//!
//! # A REGISTER
//!
//! 1. The Request-URI and the To (the address-of-record) must be ours, else 404: a host
//!    listed in [`RegistrarConfig::domains`] (any host name when none is listed) or an
//!    IP literal (a request that reached us by address is for us: we are no proxy).
//! 2. Digest, with the trunk side's server, realm and stateless nonces (`inbound.rs`):
//!    SHA-256 and MD5 challenges with `qop=auth`, SHA-256 first
//!    ([`RegistrarConfig::challenges`] puts MD5 first, or offers it alone, for phones
//!    that need it). No credentials for our realm, a stale nonce or one from before a
//!    restart: 401. A wrong password or an unknown username: 403 (the same answer and
//!    work for both: an unknown user's digest is checked against an HA1 of zeros), and
//!    a failure counted for the lock-out. Accounts hold no password, only its HA1s
//!    ([`SipSecret`]); the one of the algorithm the phone answered with is used.
//! 3. The AOR's user must be the digest username, else 403.
//! 4. `Contact: *` with `Expires: 0` (and nothing else) removes every binding. Each
//!    contact's expiry is its `expires` parameter, else the `Expires` header, else
//!    [`DEFAULT_EXPIRES`]; 0 removes the binding; under [`MIN_EXPIRES`] the whole request
//!    is answered 423 with `Min-Expires` and nothing changes; above [`MAX_EXPIRES`] it is
//!    shortened. A binding whose Call-ID is the request's and whose CSeq is not lower is
//!    out of order: 500, nothing changes (§10.3 step 7).
//! 5. 200 with every binding of the AOR (each with its `expires`) and `Expires`.
//!
//! # Bindings
//!
//! - A binding is identified by its RFC 5626 `+sip.instance` when it has one (a phone
//!   whose address changes keeps its binding), else by its contact URI (RFC 3261
//!   equivalence). A refresh keeps the binding's device id, updates everything else.
//! - It records the flow it came on (transport and source address, which for TCP and TLS
//!   names the connection), the User-Agent and the AOR. Its device id is stable:
//!   `sip-<user>-<the instance's UUID>`, else `sip-<user>-<hash>` of the instance or
//!   of the contact URI (a user id that would make it longer than 128 bytes is hashed
//!   too). One UA instance of one user is one device: a binding that takes another's
//!   device id replaces it.
//! - At most [`MAX_BINDINGS`] per AOR: a new one replaces the binding refreshed longest
//!   ago ([`UnbindReason::Replaced`]).
//! - Events: [`BindingEvent::Bound`] on every registration and refresh (with the new
//!   expiry), [`BindingEvent::Unbound`] when one is removed (`unregistered`), lapses
//!   (`expired`), is replaced, or its TCP/TLS connection closes (`disconnected`:
//!   [`SipCore::on_flow_closed`]). Nothing is said at shutdown: UDP bindings outlive a
//!   restart (see "Restarts"), and stream ones die with their connections.
//!
//! # Flows
//!
//! Ringing sends the INVITE to the binding's flow: the UDP source address from our SIP
//! socket, or the very TCP/TLS connection the phone registered over (a phone behind NAT
//! is reachable only that way). A connection closes after `sip_idle_timeout_ms` of
//! silence, so a stream binding is granted at most that long (the phone's refresh keeps
//! the connection up), unless the phone does RFC 5626 outbound (`+sip.instance`,
//! `reg-id`, `Supported: outbound`): then the 200 says `Require: outbound` and a
//! `Flow-Timer` of half the idle timeout, and its CRLF keep-alives (answered by the
//! listener) keep the flow. Outbound over UDP is not confirmed: it wants STUN
//! keep-alives, which we do not answer. Several flows of one instance (several
//! `reg-id`s) are one binding: the last one registered is used.
//!
//! # Restarts
//!
//! The shell saves a snapshot of the bindings ([`SipCore::export_bindings`], expiries in
//! Unix milliseconds) after changes and at shutdown, and gives it back at the next start
//! ([`SipCore::restore_bindings`]): a phone registered before a restart can be rung at
//! once, over UDP to the address it registered from, and its binding lapses when it
//! would have. Each restored binding comes out as [`BindingEvent::Bound`], so the rest of
//! confer sees the device reachable again. Only UDP bindings come back: a TCP or TLS
//! binding is reachable only over its connection, which the restart closed (its phone
//! registers again when it notices, at the latest at its refresh). Bindings that lapsed
//! while confer was down are not restored. The lock-outs are not saved.
//!
//! # Lock-out
//!
//! Like the PIN's ([`Lockouts`]): 5 failed attempts within 10 minutes lock a username
//! out for 15 minutes at one source, and 20 lock out the source itself (an IPv6 source
//! by its /64), so a guesser cannot lock a user out from elsewhere and a phone with a
//! stale password does not lock out the other phones behind its NAT. A locked-out
//! attempt is answered 403 without being checked.

use std::collections::HashMap;
use std::sync::RwLock;

use confer_pstn_bridge::digest::{DigestHash, StoredSecret, ha1_hex};
use confer_pstn_bridge::ivr::{LockoutConfig, Lockouts};
use confer_pstn_bridge::sip::{Contacts, NameAddr, Param, ParamValue, Token};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use super::inbound::Challenges;
use super::inbound::{DigestVerdict, REALM, our_authorization};
use super::*;
use crate::sip::metrics::RegisterResult;

/// Expiry granted when the REGISTER asks for none, seconds.
pub const DEFAULT_EXPIRES: u32 = 3600;
/// Longest expiry granted, seconds.
pub const MAX_EXPIRES: u32 = 3600;
/// Shortest expiry accepted (423 below), seconds.
pub const MIN_EXPIRES: u32 = 60;
/// Bindings per AOR at most.
pub const MAX_BINDINGS: usize = 10;
/// Longest device id (the directory's id limit).
const MAX_DEVICE_ID: usize = 128;
/// Longest User-Agent kept, characters.
const MAX_USER_AGENT: usize = 256;
/// Failed attempts at one source that lock the source itself out.
const SOURCE_MAX_FAILURES: u32 = 20;

/// A user's SIP credentials (the map's key is the SIP username).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipAccount {
    /// The directory user the registered phones belong to.
    pub user: String,
    /// What the digest is checked against: HA1s, never the password.
    pub secret: SipSecret,
}

/// The digest HA1s of a SIP account in our realm: lowercase hex of MD5 and of SHA-256
/// over `username:confer:password` (what Kamailio's `ha1`/`ha1b` and Asterisk's
/// `md5secret` keep). The password itself is never stored: these are enough to check
/// a phone's digest with either algorithm we offer, and (like a password) to answer
/// our challenges, so they are still secrets: `Debug` redacts them.
///
/// An HA1 binds the username and the realm: renaming the account or changing
/// [`REALM`](super::inbound::REALM) needs the password again.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SipSecretFields", into = "SipSecretFields")]
pub struct SipSecret {
    md5: String,
    sha256: String,
}

/// [`SipSecret`] as saved: `{"md5": "<32 hex>", "sha256": "<64 hex>"}`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SipSecretFields {
    md5: String,
    sha256: String,
}

/// A saved [`SipSecret`] that is not two HA1s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a SIP secret must be an MD5 and a SHA-256 HA1 in hex")]
pub struct SipSecretError;

impl TryFrom<SipSecretFields> for SipSecret {
    type Error = SipSecretError;

    fn try_from(f: SipSecretFields) -> Result<SipSecret, SipSecretError> {
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !hex(&f.md5, 32) || !hex(&f.sha256, 64) {
            return Err(SipSecretError);
        }
        Ok(SipSecret {
            md5: f.md5.to_ascii_lowercase(),
            sha256: f.sha256.to_ascii_lowercase(),
        })
    }
}

impl From<SipSecret> for SipSecretFields {
    fn from(s: SipSecret) -> SipSecretFields {
        SipSecretFields {
            md5: s.md5,
            sha256: s.sha256,
        }
    }
}

impl std::fmt::Debug for SipSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SipSecret(<redacted>)")
    }
}

impl SipSecret {
    /// The HA1s of `username`'s `password` in our realm.
    pub fn from_password(username: &str, password: &str) -> SipSecret {
        SipSecret {
            md5: ha1_hex(DigestHash::Md5, username, REALM, password),
            sha256: ha1_hex(DigestHash::Sha256, username, REALM, password),
        }
    }

    /// What a digest with `hash` is checked against (none for SHA-512-256, which we do
    /// not offer).
    pub(super) fn stored(&self, hash: DigestHash) -> Option<StoredSecret<'_>> {
        let hex = match hash {
            DigestHash::Md5 => &self.md5,
            DigestHash::Sha256 => &self.sha256,
            DigestHash::Sha512_256 => return None,
        };
        Some(StoredSecret::Ha1 { hash, hex })
    }
}

/// The SIP accounts phones register with, by SIP username; shared between the user API
/// (which fills it) and the registrar (which reads it). Cheap to clone.
#[derive(Clone, Default)]
pub struct SipAccounts(Arc<RwLock<HashMap<String, SipAccount>>>);

impl std::fmt::Debug for SipAccounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipAccounts")
            .field("accounts", &self.len())
            .finish()
    }
}

impl SipAccounts {
    /// Adds or replaces `username`'s account. Existing bindings stay until they lapse or
    /// the phone registers again (with the new password); `account.secret` must be made
    /// for `username` ([`SipSecret::from_password`]).
    pub fn set(&self, username: &str, account: SipAccount) {
        self.write().insert(username.to_owned(), account);
    }

    /// Removes `username`'s account: its phones can no longer register, and ringing
    /// its bindings fails.
    pub fn remove(&self, username: &str) {
        self.write().remove(username);
    }

    /// `username`'s account.
    pub fn get(&self, username: &str) -> Option<SipAccount> {
        self.read().get(username).cloned()
    }

    /// Accounts now.
    fn len(&self) -> usize {
        self.read().len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, SipAccount>> {
        // A plain map: a panic while holding it leaves consistent data; keep going.
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, SipAccount>> {
        self.0.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// Settings of the registrar.
#[derive(Debug, Clone, Default)]
pub struct RegistrarConfig {
    /// Serve REGISTER (off: 405, as a server that is no registrar answers).
    pub enabled: bool,
    /// The accounts.
    pub accounts: SipAccounts,
    /// Our domains (host names, compared case-insensitively). Empty: any host name is
    /// ours. IP literals are always ours.
    pub domains: Vec<String>,
    /// How long a silent TCP/TLS connection lives (`sip_idle_timeout_ms`): stream
    /// bindings are granted at most this long unless the phone keeps the flow alive.
    pub stream_idle: Option<Duration>,
    /// The challenges phones get (default: SHA-256 then MD5, RFC 8760).
    pub challenges: Challenges,
}

/// Why a binding went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnbindReason {
    /// The phone removed it (expiry 0, or `Contact: *`).
    Unregistered,
    /// It was not refreshed in time.
    Expired,
    /// A newer binding took its place (the AOR's limit, or the same device id).
    Replaced,
    /// The TCP/TLS connection it registered over closed: nothing can reach it.
    Disconnected,
}

impl UnbindReason {
    /// `unregistered`, `expired`, `replaced` or `disconnected`.
    pub fn as_str(self) -> &'static str {
        match self {
            UnbindReason::Unregistered => "unregistered",
            UnbindReason::Expired => "expired",
            UnbindReason::Replaced => "replaced",
            UnbindReason::Disconnected => "disconnected",
        }
    }
}

/// What happened to a binding, as the core says it (time as an `Instant`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindingEvent {
    /// Registered or refreshed.
    Bound {
        /// The directory user.
        user: String,
        /// The device id.
        device: String,
        /// The contact URI.
        contact: String,
        /// When it lapses unless refreshed.
        expires_at: Instant,
        /// The phone's User-Agent.
        user_agent: Option<String>,
        /// `udp`, `tcp` or `tls`: the flow it came on.
        transport: &'static str,
    },
    /// Removed.
    Unbound {
        /// The directory user.
        user: String,
        /// The device id.
        device: String,
        /// Why.
        reason: UnbindReason,
    },
}

/// What happened to a binding, for the rest of confer (see [`BindingEvent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrarEvent {
    /// Registered or refreshed.
    Bound {
        /// The directory user.
        user: String,
        /// The device id, stable across refreshes.
        device: String,
        /// The contact URI.
        contact: String,
        /// When it lapses unless refreshed, Unix milliseconds.
        expires_at_ms: u64,
        /// The phone's User-Agent.
        user_agent: Option<String>,
        /// `udp`, `tcp` or `tls`.
        transport: &'static str,
    },
    /// Removed.
    Unbound {
        /// The directory user.
        user: String,
        /// The device id.
        device: String,
        /// `unregistered`, `expired`, `replaced` or `disconnected`.
        reason: &'static str,
    },
}

impl BindingEvent {
    /// The event with Unix times: `unix_ms` turns an `Instant` into Unix milliseconds.
    pub fn into_event(self, unix_ms: impl Fn(Instant) -> u64) -> RegistrarEvent {
        match self {
            BindingEvent::Bound {
                user,
                device,
                contact,
                expires_at,
                user_agent,
                transport,
            } => RegistrarEvent::Bound {
                user,
                device,
                contact,
                expires_at_ms: unix_ms(expires_at),
                user_agent,
                transport,
            },
            BindingEvent::Unbound {
                user,
                device,
                reason,
            } => RegistrarEvent::Unbound {
                user,
                device,
                reason: reason.as_str(),
            },
        }
    }
}

/// Ring a registered phone into a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingRequest {
    /// The room the phone joins when answered.
    pub room: u64,
    /// The directory user the device belongs to.
    pub user: String,
    /// The device id (from [`RegistrarEvent::Bound`]).
    pub device: String,
    /// Who calls (From's display name).
    pub caller: Option<String>,
    /// The conversation's subject (`Subject`).
    pub subject: Option<String>,
}

/// Why a phone could not be rung.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// No such binding (never registered, expired, removed, another user's, or its
    /// account is gone).
    #[error("device {0} is not registered")]
    UnknownDevice(String),
    /// The call could not be placed.
    #[error(transparent)]
    Dial(#[from] DialError),
}

/// A binding as saved across a restart (see "Restarts" in the module docs), with its
/// expiry in Unix milliseconds. Made by [`SipCore::export_bindings`], read back by
/// [`SipCore::restore_bindings`]; serialized as a JSON object with these fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedBinding {
    /// The device id.
    device: String,
    /// The SIP username (the AOR's user).
    username: String,
    /// The directory user.
    user: String,
    /// The AOR: To of our INVITEs.
    aor: String,
    /// The Contact as registered.
    contact: String,
    /// The RFC 5626 instance id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
    /// Call-ID and CSeq of its last REGISTER (for the out-of-order check).
    call_id: String,
    cseq: u32,
    /// When it lapses unless refreshed, Unix milliseconds.
    expires_at_ms: u64,
    /// `udp`, `tcp` or `tls`: the flow it came on.
    transport: String,
    /// Where it came from: where ringing it goes.
    source: SocketAddr,
    /// The phone's User-Agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_agent: Option<String>,
}

/// One registered contact.
#[derive(Debug, Clone)]
struct Binding {
    /// The SIP username (the AOR's user).
    username: String,
    /// The directory user.
    user: String,
    /// The AOR (To of the REGISTER, without parameters): To of our INVITEs.
    aor: Uri,
    /// The Contact as registered (its `expires` is rewritten in our answers).
    contact: NameAddr,
    /// The RFC 5626 instance id, as written inside the angle brackets.
    instance: Option<String>,
    call_id: String,
    cseq: u32,
    expires_at: Instant,
    /// Order of the last registration (the smallest is the stalest).
    refreshed: u64,
    flow: Peer,
    user_agent: Option<String>,
}

/// What a REGISTER asks for one contact, once checked.
struct Planned {
    contact: NameAddr,
    instance: Option<String>,
    /// Seconds granted; 0 removes.
    granted: u32,
    /// The device id of the binding it refreshes or removes.
    existing: Option<String>,
}

/// The bindings and the lock-outs (see the module docs).
pub(super) struct Registrar {
    bindings: HashMap<String, Binding>,
    /// Device ids by SIP username.
    by_username: HashMap<String, Vec<String>>,
    /// Device ids by TCP/TLS flow.
    by_flow: HashMap<Peer, Vec<String>>,
    expiries: BTreeSet<(Instant, String)>,
    /// Failures per (source, username).
    account_lockouts: Lockouts,
    /// Failures per source.
    source_lockouts: Lockouts,
    next_refresh: u64,
}

impl std::fmt::Debug for Registrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrar")
            .field("bindings", &self.bindings.len())
            .finish_non_exhaustive()
    }
}

impl Registrar {
    pub(super) fn new() -> Registrar {
        let account = LockoutConfig::default();
        let source = LockoutConfig {
            max_failures: SOURCE_MAX_FAILURES,
            ..account
        };
        Registrar {
            bindings: HashMap::new(),
            by_username: HashMap::new(),
            by_flow: HashMap::new(),
            expiries: BTreeSet::new(),
            // Both configurations are constants inside the accepted ranges.
            account_lockouts: Lockouts::new(account).expect("a valid lock-out configuration"),
            source_lockouts: Lockouts::new(source).expect("a valid lock-out configuration"),
            next_refresh: 0,
        }
    }

    /// Bindings now.
    pub(super) fn len(&self) -> usize {
        self.bindings.len()
    }

    /// When the next binding lapses.
    pub(super) fn next_timeout(&self) -> Option<Instant> {
        self.expiries.first().map(|(at, _)| *at)
    }

    fn devices_of(&self, username: &str) -> &[String] {
        self.by_username.get(username).map_or(&[], Vec::as_slice)
    }

    /// The device id of `username`'s binding for this instance or contact.
    fn find(&self, username: &str, instance: Option<&str>, uri: &Uri) -> Option<String> {
        self.devices_of(username)
            .iter()
            .find(|d| {
                self.bindings.get(*d).is_some_and(|b| match instance {
                    Some(i) => b.instance.as_deref() == Some(i),
                    None => b.instance.is_none() && b.contact.uri.equivalent(uri),
                })
            })
            .cloned()
    }

    fn index_flow(&mut self, device: &str, flow: &Peer) {
        if flow.transport.is_stream() {
            self.by_flow
                .entry(flow.clone())
                .or_default()
                .push(device.to_owned());
        }
    }

    fn unindex_flow(&mut self, device: &str, flow: &Peer) {
        if let Some(list) = self.by_flow.get_mut(flow) {
            list.retain(|d| d != device);
            if list.is_empty() {
                self.by_flow.remove(flow);
            }
        }
    }

    fn remove(&mut self, device: &str, reason: UnbindReason, out: &mut VecDeque<Output>) {
        let Some(b) = self.bindings.remove(device) else {
            return;
        };
        self.unindex_flow(device, &b.flow);
        self.expiries.remove(&(b.expires_at, device.to_owned()));
        if let Some(list) = self.by_username.get_mut(&b.username) {
            list.retain(|d| d != device);
            if list.is_empty() {
                self.by_username.remove(&b.username);
            }
        }
        tracing::debug!(user = %b.user, device, reason = reason.as_str(), "SIP binding removed");
        out.push_back(Output::Registrar(BindingEvent::Unbound {
            user: b.user,
            device: device.to_owned(),
            reason,
        }));
    }

    /// Adds or refreshes a binding under `device`.
    fn bind(&mut self, device: String, mut b: Binding, out: &mut VecDeque<Output>) {
        b.refreshed = self.next_refresh;
        self.next_refresh += 1;
        match self.bindings.get(&device) {
            Some(old) if old.username == b.username => {
                let (at, flow) = (old.expires_at, old.flow.clone());
                self.expiries.remove(&(at, device.clone()));
                self.unindex_flow(&device, &flow);
            }
            Some(_) => self.remove(&device, UnbindReason::Replaced, out),
            None => {}
        }
        let fresh = !self.bindings.contains_key(&device);
        if fresh {
            // The AOR is full: the binding refreshed longest ago makes room.
            while self.devices_of(&b.username).len() >= MAX_BINDINGS {
                let stalest = self
                    .devices_of(&b.username)
                    .iter()
                    .filter_map(|d| self.bindings.get(d).map(|x| (x.refreshed, d.clone())))
                    .min();
                let Some((_, d)) = stalest else { break };
                self.remove(&d, UnbindReason::Replaced, out);
            }
            self.by_username
                .entry(b.username.clone())
                .or_default()
                .push(device.clone());
        }
        self.expiries.insert((b.expires_at, device.clone()));
        self.index_flow(&device, &b.flow);
        tracing::debug!(user = %b.user, %device, transport = %b.flow.transport, "SIP binding registered");
        out.push_back(Output::Registrar(BindingEvent::Bound {
            user: b.user.clone(),
            device: device.clone(),
            contact: b.contact.uri.to_string(),
            expires_at: b.expires_at,
            user_agent: b.user_agent.clone(),
            transport: transport_name(&b.flow.transport),
        }));
        self.bindings.insert(device, b);
    }

    /// Removes the bindings that came over `flow`, a connection now closed.
    fn flow_closed(&mut self, flow: &Peer, out: &mut VecDeque<Output>) {
        for device in self.by_flow.remove(flow).unwrap_or_default() {
            self.remove(&device, UnbindReason::Disconnected, out);
        }
    }

    /// Removes what lapsed by `now`.
    fn expire(&mut self, now: Instant, out: &mut VecDeque<Output>) {
        while let Some((at, device)) = self.expiries.first().cloned() {
            if at > now {
                break;
            }
            self.remove(&device, UnbindReason::Expired, out);
        }
    }
}

/// The binding `s` describes, if it may come back at `now` (= `now_unix_ms`): a UDP one,
/// not lapsed, that reads back as a registration would have made it.
fn restorable(s: SavedBinding, now: Instant, now_unix_ms: u64) -> Option<(String, Binding)> {
    let left_ms = s
        .expires_at_ms
        .checked_sub(now_unix_ms)
        .filter(|&ms| ms > 0)?;
    let left = Duration::from_millis(left_ms).min(Duration::from_secs(u64::from(MAX_EXPIRES)));
    let aor: Uri = s.aor.parse().ok()?;
    let contact: NameAddr = s.contact.parse().ok()?;
    let clean = |t: &str| !t.is_empty() && !t.chars().any(|c| c.is_whitespace() || c.is_control());
    let valid = s.transport == "udp"
        && aor.as_sip().is_some()
        && contact.uri.as_sip().is_some()
        && clean(&s.device)
        && s.device.len() <= MAX_DEVICE_ID
        && !s.username.is_empty()
        && !s.user.is_empty();
    if !valid {
        return None;
    }
    let binding = Binding {
        username: s.username,
        user: s.user,
        aor,
        contact,
        instance: s.instance,
        call_id: s.call_id,
        cseq: s.cseq,
        expires_at: now.checked_add(left)?,
        refreshed: 0,
        flow: Peer::udp(s.source),
        user_agent: s
            .user_agent
            .and_then(|ua| outbound::one_line(&ua, MAX_USER_AGENT)),
    };
    Some((s.device, binding))
}

/// `udp`, `tcp`, `tls` (`other` for transports we do not listen on).
fn transport_name(t: &Transport) -> &'static str {
    match t {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
        Transport::Tls => "tls",
        _ => "other",
    }
}

/// 16 hex digits of SHA-256 over `text`.
fn short_hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The UUID of a `urn:uuid:` instance id, lower case.
fn uuid_of(instance: &str) -> Option<String> {
    let prefix = "urn:uuid:";
    let head = instance.get(..prefix.len())?;
    let uuid = &instance[prefix.len()..];
    (head.eq_ignore_ascii_case(prefix)
        && uuid.len() == 36
        && uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
    .then(|| uuid.to_ascii_lowercase())
}

/// The stable device id (see the module docs).
fn device_id(user: &str, instance: Option<&str>, contact: &Uri) -> String {
    let suffix = match instance {
        Some(i) => uuid_of(i).unwrap_or_else(|| short_hash(i)),
        None => short_hash(&contact.to_string()),
    };
    let id = format!("sip-{user}-{suffix}");
    let clean = !user.chars().any(|c| c.is_whitespace() || c.is_control());
    if clean && id.len() <= MAX_DEVICE_ID {
        id
    } else {
        format!("sip-{}-{suffix}", short_hash(user))
    }
}

/// The `+sip.instance` of a contact, without quotes and angle brackets.
fn instance_of(contact: &NameAddr) -> Option<String> {
    let v = contact.params.get("+sip.instance")?.value.as_ref()?;
    let text = v.unquoted();
    let inner = text.trim().trim_start_matches('<').trim_end_matches('>');
    (!inner.is_empty()).then(|| inner.to_owned())
}

/// Who failed, for the lock-outs: the source (an IPv6 one by its /64) and the username
/// tried from it.
fn lockout_keys(source: &Peer, username: &str) -> (CallerKey, CallerKey) {
    let ip = lockout_address(source.addr.ip());
    let name: String = username.chars().take(128).collect();
    (
        CallerKey::Address(ip),
        CallerKey::Number(format!("{ip} {name}")),
    )
}

/// The registrar's answer: 200 with the bindings, or an error status.
enum Verdict {
    Ok {
        /// The AOR's user.
        username: String,
        /// `Expires` of the answer (the first contact's grant).
        expires: Option<u32>,
        /// Confirm RFC 5626 outbound.
        outbound: bool,
    },
    Status(StatusCode, RegisterResult),
}

impl<R: RngCore> SipCore<R> {
    /// Whether `host` is one of ours (see the module docs).
    fn is_our_host(&self, host: &SipHost) -> bool {
        match host {
            SipHost::Ipv4(_) | SipHost::Ipv6(_) => true,
            SipHost::Name(name) => {
                let domains = &self.config.registrar.domains;
                domains.is_empty()
                    || domains
                        .iter()
                        .any(|d| d.eq_ignore_ascii_case(name.as_str()))
            }
        }
    }

    /// A REGISTER outside a dialog (see the module docs).
    pub(super) fn on_register(
        &mut self,
        tx: TransactionId,
        req: &Request,
        source: &Peer,
        now: Instant,
    ) {
        let result = match self.register(tx, req, source, now) {
            Verdict::Ok {
                username,
                expires,
                outbound,
            } => {
                self.answer_register(tx, req, source, &username, expires, outbound, now);
                RegisterResult::Ok
            }
            Verdict::Status(status, result) => {
                if status != StatusCode::UNAUTHORIZED {
                    let extra = match status {
                        StatusCode::INTERVAL_TOO_BRIEF => {
                            vec![header(HeaderName::MinExpires, MIN_EXPIRES.to_string())]
                        }
                        StatusCode::SERVER_INTERNAL_ERROR => {
                            vec![header(HeaderName::RetryAfter, "1")]
                        }
                        _ => Vec::new(),
                    };
                    self.answer(tx, req, status, &extra, now);
                }
                result
            }
        };
        self.metrics.register_result(result);
        self.metrics
            .registrations
            .store(self.registrar.len() as u64, Ordering::Relaxed);
    }

    /// Checks and applies a REGISTER; 401 challenges are sent here, other answers by the
    /// caller.
    fn register(
        &mut self,
        tx: TransactionId,
        req: &Request,
        source: &Peer,
        now: Instant,
    ) -> Verdict {
        use RegisterResult as Res;
        let bad = Verdict::Status(StatusCode::BAD_REQUEST, Res::Invalid);
        let not_found = Verdict::Status(StatusCode::NOT_FOUND, Res::NotFound);
        let Some(target) = req.uri.as_sip() else {
            return not_found;
        };
        if !self.is_our_host(target.host()) {
            return not_found;
        }
        let Ok(to) = req.headers.to() else { return bad };
        let Some(aor) = to.uri.as_sip() else {
            return bad;
        };
        if !self.is_our_host(aor.host()) {
            return not_found;
        }
        let aor_user = aor.user().and_then(|u| u.to_str()).map(|u| u.into_owned());
        // The AOR without parameters or headers: To of our INVITEs to it.
        let mut aor_uri = SipUri::new(aor.host().clone());
        aor_uri.set_secure(aor.is_secure());
        aor_uri.set_user(aor_user.as_deref());
        aor_uri.set_port(aor.port());
        let (source_key, _) = lockout_keys(source, "");
        if self
            .registrar
            .source_lockouts
            .status(&source_key, now)
            .is_locked_out()
        {
            return Verdict::Status(StatusCode::FORBIDDEN, Res::LockedOut);
        }
        let offer = self.config.registrar.challenges;
        let Some(auth) = our_authorization(req) else {
            self.challenge(tx, req, false, offer, now);
            return Verdict::Status(StatusCode::UNAUTHORIZED, Res::Challenged);
        };
        let (source_key, account_key) = lockout_keys(source, &auth.username);
        if self
            .registrar
            .account_lockouts
            .status(&account_key, now)
            .is_locked_out()
        {
            return Verdict::Status(StatusCode::FORBIDDEN, Res::LockedOut);
        }
        let account = self.config.registrar.accounts.get(&auth.username);
        // The HA1 of the algorithm the phone answered with.
        let secret = account.as_ref().and_then(|a| {
            let hash = auth.algorithm().ok()?.hash();
            a.secret.stored(hash)
        });
        match self.check_digest(req, &auth, secret, now) {
            DigestVerdict::Valid => {}
            DigestVerdict::Rechallenge { stale } => {
                self.challenge(tx, req, stale, offer, now);
                return Verdict::Status(StatusCode::UNAUTHORIZED, Res::Challenged);
            }
            DigestVerdict::Refused(e) => {
                tracing::info!(source = %source.addr, "registration refused: {e}");
                if matches!(e, confer_pstn_bridge::digest::DigestError::BadResponse) {
                    self.registrar
                        .account_lockouts
                        .record_failure(&account_key, now);
                    if self
                        .registrar
                        .source_lockouts
                        .record_failure(&source_key, now)
                        .is_locked_out()
                    {
                        tracing::warn!(source = %source.addr, "registration attempts locked out");
                    }
                }
                return Verdict::Status(StatusCode::FORBIDDEN, Res::AuthFailed);
            }
        }
        // Verified: `account` is the one whose HA1 matched.
        let Some(account) = account else { return bad };
        if aor_user.as_deref() != Some(auth.username.as_str()) {
            tracing::info!(source = %source.addr, "a REGISTER for another user's AOR");
            return Verdict::Status(StatusCode::FORBIDDEN, Res::Forbidden);
        }
        let username = auth.username;
        let (Ok(contacts), Ok(header_expires), Ok(call_id), Ok(cseq)) = (
            req.headers.contacts(),
            req.headers.expires(),
            req.headers.call_id(),
            req.headers.cseq(),
        ) else {
            return bad;
        };
        let call_id = call_id.to_owned();
        // §10.3 step 7: a request older than what a binding of this Call-ID saw.
        let out_of_order = |b: &Binding| b.call_id == call_id && b.cseq >= cseq.seq;
        let list = match contacts {
            Contacts::Wildcard => {
                if header_expires != Some(0) {
                    return bad;
                }
                let devices = self.registrar.devices_of(&username).to_vec();
                if devices
                    .iter()
                    .filter_map(|d| self.registrar.bindings.get(d))
                    .any(out_of_order)
                {
                    return Verdict::Status(StatusCode::SERVER_INTERNAL_ERROR, Res::Invalid);
                }
                for d in devices {
                    self.registrar
                        .remove(&d, UnbindReason::Unregistered, &mut self.out);
                }
                return Verdict::Ok {
                    username,
                    expires: Some(0),
                    outbound: false,
                };
            }
            Contacts::List(list) => list,
        };
        if list.len() > MAX_BINDINGS {
            return bad;
        }
        let supports_outbound = req
            .headers
            .supported()
            .is_ok_and(|s| s.iter().any(|t| t.eq_ignore_ascii_case("outbound")));
        let stream_cap = self
            .config
            .registrar
            .stream_idle
            .filter(|_| source.transport.is_stream())
            .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        let mut plan = Vec::with_capacity(list.len());
        let mut outbound = false;
        for contact in list {
            if contact.uri.as_sip().is_none() {
                return bad;
            }
            let Ok(asked) = contact.expires() else {
                return bad;
            };
            let asked = asked.or(header_expires).unwrap_or(DEFAULT_EXPIRES);
            if asked != 0 && asked < MIN_EXPIRES {
                return Verdict::Status(StatusCode::INTERVAL_TOO_BRIEF, Res::TooBrief);
            }
            let instance = instance_of(&contact);
            let flow_kept = instance.is_some()
                && contact.params.contains("reg-id")
                && supports_outbound
                && source.transport.is_stream();
            outbound |= flow_kept && asked != 0;
            let mut granted = asked.min(MAX_EXPIRES);
            if let Some(cap) = stream_cap.filter(|_| !flow_kept && granted != 0) {
                granted = granted.min(cap).max(MIN_EXPIRES);
            }
            let existing = self
                .registrar
                .find(&username, instance.as_deref(), &contact.uri);
            if existing
                .as_ref()
                .and_then(|d| self.registrar.bindings.get(d))
                .is_some_and(out_of_order)
            {
                return Verdict::Status(StatusCode::SERVER_INTERNAL_ERROR, Res::Invalid);
            }
            plan.push(Planned {
                contact,
                instance,
                granted,
                existing,
            });
        }
        // Control characters (a tab) become spaces: the directory takes no other.
        let user_agent = req
            .headers
            .get(HeaderName::UserAgent)
            .and_then(|ua| outbound::one_line(ua, MAX_USER_AGENT));
        let expires = plan.first().map(|p| p.granted);
        for p in plan {
            if p.granted == 0 {
                if let Some(d) = p.existing {
                    self.registrar
                        .remove(&d, UnbindReason::Unregistered, &mut self.out);
                }
                continue;
            }
            let device = p
                .existing
                .unwrap_or_else(|| device_id(&account.user, p.instance.as_deref(), &p.contact.uri));
            let Some(expires_at) = now.checked_add(Duration::from_secs(u64::from(p.granted)))
            else {
                continue;
            };
            let binding = Binding {
                username: username.clone(),
                user: account.user.clone(),
                aor: Uri::Sip(aor_uri.clone()),
                contact: p.contact,
                instance: p.instance,
                call_id: call_id.clone(),
                cseq: cseq.seq,
                expires_at,
                refreshed: 0,
                flow: source.clone(),
                user_agent: user_agent.clone(),
            };
            self.registrar.bind(device, binding, &mut self.out);
        }
        Verdict::Ok {
            username,
            expires,
            outbound,
        }
    }

    /// 200 to a REGISTER: every binding of the AOR with its remaining time.
    #[allow(clippy::too_many_arguments)]
    fn answer_register(
        &mut self,
        tx: TransactionId,
        req: &Request,
        source: &Peer,
        username: &str,
        expires: Option<u32>,
        outbound: bool,
        now: Instant,
    ) {
        let mut extra = Vec::new();
        for d in self.registrar.devices_of(username) {
            let Some(b) = self.registrar.bindings.get(d) else {
                continue;
            };
            let left = b.expires_at.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            let mut contact = b.contact.clone();
            contact.params.remove("expires");
            if let (Ok(name), Ok(value)) =
                (Token::new("expires"), ParamValue::new(&secs.to_string()))
            {
                contact.params.push(Param {
                    name,
                    value: Some(value),
                });
            }
            extra.push(header(HeaderName::Contact, contact.to_string()));
        }
        if let Some(e) = expires {
            extra.push(header(HeaderName::Expires, e.to_string()));
        }
        if outbound {
            extra.push(header(HeaderName::Require, "outbound"));
        }
        extra.push(header(HeaderName::Supported, "outbound"));
        let tag = new_tag(&mut self.rng);
        let mut r = self.response(req, StatusCode::OK, Some(&tag), &extra);
        if outbound && let Some(idle) = self.config.registrar.stream_idle {
            // RFC 5626 §4.4.1: keep-alives at 80-100% of this keep the connection open.
            let secs = (idle.as_secs() / 2).max(1);
            let _ = r.headers.push("Flow-Timer", &secs.to_string());
        }
        tracing::debug!(source = %source.addr, "REGISTER answered 200");
        self.send(tx, &r, now);
    }

    /// Rings a registered phone: a call to its contact over its flow, joining `room` when
    /// answered (see `outbound.rs`); its progress comes as [`Output::Dial`].
    pub fn ring(&mut self, req: RingRequest, now: Instant) -> Result<CallId, RingError> {
        let unknown = || RingError::UnknownDevice(req.device.clone());
        let b = self
            .registrar
            .bindings
            .get(&req.device)
            .filter(|b| b.user == req.user && b.expires_at > now)
            .ok_or_else(unknown)?;
        let still_theirs = self
            .config
            .registrar
            .accounts
            .get(&b.username)
            .is_some_and(|a| a.user == b.user);
        if !still_theirs {
            return Err(unknown());
        }
        let mut uri = b.contact.uri.clone();
        if let Uri::Sip(u) = &mut uri {
            // Headers in a Contact are not for us to send (RFC 3261 §19.1.5).
            u.clear_headers();
            u.remove_param("method");
        }
        let host = match (self.config.registrar.domains.first(), self.config.local.ip) {
            (Some(d), _) => d.clone(),
            (None, IpAddr::V4(a)) => a.to_string(),
            (None, IpAddr::V6(a)) => format!("[{a}]"),
        };
        let from = format!("sip:confer@{host}")
            .parse::<Uri>()
            .map_err(|e| DialError::Build(format!("From: {e}")))?;
        let request = DialRequest {
            to: Some(b.aor.clone()),
            caller: req.caller.clone(),
            subject: req.subject.clone(),
            ..DialRequest::new(req.room, uri, from, b.flow.clone())
        };
        tracing::debug!(device = %req.device, room = req.room, "ringing a registered phone");
        Ok(self.dial(request, now)?)
    }

    /// A TCP/TLS connection closed: the bindings that came over it go
    /// ([`UnbindReason::Disconnected`]).
    pub fn on_flow_closed(&mut self, flow: &Peer) {
        if flow.transport.is_stream() {
            self.registrar.flow_closed(flow, &mut self.out);
            self.metrics
                .registrations
                .store(self.registrar.len() as u64, Ordering::Relaxed);
        }
    }

    /// Every binding, to be saved across a restart (see "Restarts" in the module docs),
    /// the one refreshed longest ago first; `now` is `now_unix_ms` on the wall clock (the
    /// shell reads both clocks).
    pub fn export_bindings(&self, now: Instant, now_unix_ms: u64) -> Vec<SavedBinding> {
        let mut list: Vec<(&String, &Binding)> = self.registrar.bindings.iter().collect();
        list.sort_by_key(|(_, b)| b.refreshed);
        list.into_iter()
            .map(|(device, b)| {
                let left = b.expires_at.saturating_duration_since(now);
                SavedBinding {
                    device: device.clone(),
                    username: b.username.clone(),
                    user: b.user.clone(),
                    aor: b.aor.to_string(),
                    contact: b.contact.to_string(),
                    instance: b.instance.clone(),
                    call_id: b.call_id.clone(),
                    cseq: b.cseq,
                    expires_at_ms: now_unix_ms
                        .saturating_add(u64::try_from(left.as_millis()).unwrap_or(u64::MAX)),
                    transport: transport_name(&b.flow.transport).to_owned(),
                    source: b.flow.addr,
                    user_agent: b.user_agent.clone(),
                }
            })
            .collect()
    }

    /// Restores bindings saved before a restart ([`SipCore::export_bindings`]); `now` is
    /// `now_unix_ms` on the wall clock. Each lapses at its saved expiry (at most
    /// [`MAX_EXPIRES`] from now: the wall clock may have stepped back) and comes out as
    /// [`BindingEvent::Bound`]. Left out: those that lapsed, TCP and TLS ones (their
    /// connections are gone), any that does not read back, and all of them with the
    /// registrar off. Returns how many were restored.
    pub fn restore_bindings(
        &mut self,
        saved: Vec<SavedBinding>,
        now: Instant,
        now_unix_ms: u64,
    ) -> usize {
        if !self.config.registrar.enabled {
            return 0;
        }
        let mut restored = 0;
        for s in saved {
            if let Some((device, binding)) = restorable(s, now, now_unix_ms) {
                self.registrar.bind(device, binding, &mut self.out);
                restored += 1;
            }
        }
        self.metrics
            .registrations
            .store(self.registrar.len() as u64, Ordering::Relaxed);
        restored
    }

    /// When the next binding lapses.
    pub(super) fn registrar_timeout(&self) -> Option<Instant> {
        self.registrar.next_timeout()
    }

    /// Removes the bindings that lapsed.
    pub(super) fn registrar_timers(&mut self, now: Instant) {
        if self.registrar_timeout().is_some_and(|t| t <= now) {
            self.registrar.expire(now, &mut self.out);
            self.metrics
                .registrations
                .store(self.registrar.len() as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{ANSWER, Drained, LOCAL_RTP, callee, core, drain, t0};
    use super::*;
    use confer_pstn_bridge::digest::{
        Algorithm, AuthChallenge, Credentials, DigestClient, DigestRequest, parse_challenge,
        strongest,
    };
    use confer_pstn_bridge::sip::parse_datagram;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    type Core = SipCore<ChaCha8Rng>;

    const UUID: &str = "f81d4fae-7dec-11d0-a765-00a0c91e6bf6";

    /// A core whose registrar knows alice (user `u-alice`, password `wonderland`) and bob.
    fn registrar() -> Core {
        let mut c = core(10);
        let accounts = SipAccounts::default();
        for (name, user) in [("alice", "u-alice"), ("bob", "u-bob")] {
            accounts.set(
                name,
                SipAccount {
                    user: user.into(),
                    secret: SipSecret::from_password(name, "wonderland"),
                },
            );
        }
        c.config.registrar = RegistrarConfig {
            enabled: true,
            accounts,
            domains: vec!["example.com".into()],
            stream_idle: Some(Duration::from_secs(300)),
            challenges: Challenges::default(),
        };
        c
    }

    /// A phone: its account, its REGISTER's Call-ID and CSeq, where it sends from, and
    /// the challenge it answers.
    struct Phone {
        username: String,
        password: String,
        aor: String,
        call_id: String,
        cseq: u32,
        source: Peer,
        client: Option<DigestClient>,
    }

    impl Phone {
        fn new(username: &str, source: &str) -> Phone {
            Phone {
                username: username.into(),
                password: "wonderland".into(),
                aor: username.into(),
                call_id: format!("reg-{username}-{}", source.replace([':', '.'], "-")),
                cseq: 0,
                source: Peer::udp(source.parse().unwrap()),
                client: None,
            }
        }

        fn tcp(mut self) -> Phone {
            self.source.transport = Transport::Tcp;
            self
        }

        /// The next REGISTER with `contact` (none when empty) and `extra` headers.
        fn request(&mut self, contact: &str, extra: &str) -> Message {
            self.cseq += 1;
            let transport = self.source.transport.as_str();
            let auth = self.client.as_mut().map_or(String::new(), |client| {
                let a = client
                    .authorize(
                        &Credentials {
                            username: self.username.clone(),
                            password: self.password.clone(),
                        },
                        &DigestRequest {
                            method: "REGISTER",
                            uri: "sip:example.com",
                            body: b"",
                        },
                        &mut ChaCha8Rng::seed_from_u64(u64::from(self.cseq)),
                    )
                    .unwrap();
                format!("Authorization: {a}\r\n")
            });
            let contact = if contact.is_empty() {
                String::new()
            } else {
                format!("Contact: {contact}\r\n")
            };
            let text = format!(
                "REGISTER sip:example.com SIP/2.0\r\n\
                 Via: SIP/2.0/{transport} {src};branch=z9hG4bK-{call_id}-{cseq};rport\r\n\
                 Max-Forwards: 70\r\n\
                 From: <sip:{aor}@example.com>;tag=ph{cseq}\r\n\
                 To: <sip:{aor}@example.com>\r\n\
                 Call-ID: {call_id}\r\n\
                 CSeq: {cseq} REGISTER\r\n\
                 User-Agent: TestPhone/1.0\t(test)\r\n\
                 {contact}{auth}{extra}Content-Length: 0\r\n\r\n",
                src = self.source.addr,
                aor = self.aor,
                call_id = self.call_id,
                cseq = self.cseq,
            );
            parse_datagram(text.as_bytes()).unwrap()
        }

        /// Keeps the strongest challenge of a 401.
        fn take_challenge(&mut self, d: &Drained) {
            let offered: Vec<AuthChallenge> = d
                .response(401)
                .headers
                .get_all(HeaderName::WwwAuthenticate)
                .filter_map(|v| parse_challenge(v).ok())
                .collect();
            self.client = Some(DigestClient::new(strongest(&offered).unwrap().clone()).unwrap());
        }

        /// Registers `contact` (answering one challenge); what came out last.
        fn register(&mut self, c: &mut Core, contact: &str, extra: &str, now: Instant) -> Drained {
            let m = self.request(contact, extra);
            c.on_message(m, self.source.clone(), now);
            let d = drain(c);
            if d.statuses() != [401] {
                return d;
            }
            self.take_challenge(&d);
            let m = self.request(contact, extra);
            c.on_message(m, self.source.clone(), now);
            drain(c)
        }
    }

    fn contact_headers(r: &Response) -> Vec<String> {
        r.headers
            .get_all(HeaderName::Contact)
            .map(str::to_owned)
            .collect()
    }

    fn bound_devices(d: &Drained) -> Vec<String> {
        d.bindings
            .iter()
            .filter_map(|e| match e {
                BindingEvent::Bound { device, .. } => Some(device.clone()),
                BindingEvent::Unbound { .. } => None,
            })
            .collect()
    }

    fn unbound(d: &Drained) -> Vec<(String, UnbindReason)> {
        d.bindings
            .iter()
            .filter_map(|e| match e {
                BindingEvent::Unbound { device, reason, .. } => Some((device.clone(), *reason)),
                BindingEvent::Bound { .. } => None,
            })
            .collect()
    }

    fn result_count(c: &Core, result: &str) -> u64 {
        let text = c.metrics.render();
        let key = format!("confer_sip_register_total{{result=\"{result}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn with_the_registrar_off_a_register_is_not_served() {
        let mut c = registrar();
        c.config.registrar.enabled = false;
        let mut phone = Phone::new("alice", "192.0.2.20:5062");
        let d = phone.register(&mut c, "<sip:alice@192.0.2.20:5062>", "", t0());
        assert_eq!(d.statuses(), [405]);
        assert!(
            !d.response(405)
                .headers
                .get(HeaderName::Allow)
                .unwrap()
                .contains("REGISTER")
        );
    }

    #[test]
    fn a_register_without_credentials_is_challenged_with_sha256_and_md5() {
        let mut c = registrar();
        let mut phone = Phone::new("alice", "192.0.2.20:5062");
        let m = phone.request("<sip:alice@192.0.2.20:5062>", "");
        c.on_message(m, phone.source.clone(), t0());
        let d = drain(&mut c);
        assert_eq!(d.statuses(), [401]);
        let challenges: Vec<String> = d
            .response(401)
            .headers
            .get_all(HeaderName::WwwAuthenticate)
            .map(str::to_owned)
            .collect();
        assert_eq!(challenges.len(), 2, "{challenges:?}");
        assert!(
            challenges[0].contains("algorithm=SHA-256"),
            "{challenges:?}"
        );
        assert!(challenges[1].contains("algorithm=MD5"), "{challenges:?}");
        assert!(challenges.iter().all(|h| h.contains("qop=\"auth\"")));
        assert!(d.bindings.is_empty());
        assert_eq!(result_count(&c, "challenged"), 1);
        // For phones that answer the first challenge, whatever it is: MD5 first; for
        // those that give up on one they cannot answer: MD5 alone.
        for (offer, expected) in [
            (Challenges::Md5ThenSha256, &["MD5", "SHA-256"][..]),
            (Challenges::Md5Only, &["MD5"][..]),
        ] {
            c.config.registrar.challenges = offer;
            let m = phone.request("<sip:alice@192.0.2.20:5062>", "");
            c.on_message(m, phone.source.clone(), t0());
            let d = drain(&mut c);
            let algorithms: Vec<String> = d
                .response(401)
                .headers
                .get_all(HeaderName::WwwAuthenticate)
                .filter_map(|v| v.split("algorithm=").nth(1))
                .filter_map(|v| v.split(',').next())
                .map(str::to_owned)
                .collect();
            assert_eq!(algorithms, expected, "{offer:?}");
        }
    }

    #[test]
    fn the_right_password_binds_the_contact_and_the_200_lists_it_with_its_expiry() {
        let mut c = registrar();
        let now = t0();
        let mut phone = Phone::new("alice", "192.0.2.20:5062");
        let contact = format!("<sip:alice@10.0.0.5:5062>;+sip.instance=\"<urn:uuid:{UUID}>\"");
        let d = phone.register(&mut c, &contact, "", now);
        assert_eq!(d.statuses(), [200]);
        let ok = d.response(200);
        assert_eq!(ok.headers.get(HeaderName::Expires), Some("3600"));
        let contacts = contact_headers(ok);
        assert_eq!(contacts.len(), 1, "{contacts:?}");
        assert!(
            contacts[0].starts_with("<sip:alice@10.0.0.5:5062>;")
                && contacts[0].ends_with(";expires=3600")
                && contacts[0].contains(UUID),
            "{contacts:?}"
        );
        assert_eq!(
            d.bindings,
            [BindingEvent::Bound {
                user: "u-alice".into(),
                device: format!("sip-u-alice-{UUID}"),
                contact: "sip:alice@10.0.0.5:5062".into(),
                expires_at: now + Duration::from_secs(3600),
                user_agent: Some("TestPhone/1.0 (test)".into()),
                transport: "udp",
            }]
        );
        assert!(
            c.metrics
                .render()
                .contains("\nconfer_sip_registrations 1\n")
        );
        assert_eq!(result_count(&c, "ok"), 1);
        // A REGISTER without Contact lists the bindings and changes nothing.
        let d = phone.register(&mut c, "", "", now + Duration::from_secs(10));
        assert_eq!(d.statuses(), [200]);
        let contacts = contact_headers(d.response(200));
        assert!(contacts[0].ends_with(";expires=3590"), "{contacts:?}");
        assert!(d.bindings.is_empty());
    }

    #[test]
    fn a_wrong_password_or_an_unknown_user_is_403_and_five_lock_the_account_out_at_that_source() {
        let mut c = registrar();
        let now = t0();
        let contact = "<sip:alice@192.0.2.20:5062>";
        let mut stranger = Phone::new("mallory", "192.0.2.30:5062");
        assert_eq!(
            stranger.register(&mut c, contact, "", now).statuses(),
            [403]
        );
        let mut phone = Phone::new("alice", "192.0.2.20:5062");
        phone.password = "guess".into();
        for _ in 0..5 {
            let d = phone.register(&mut c, contact, "", now);
            assert_eq!(d.statuses(), [403]);
            assert!(d.bindings.is_empty());
        }
        assert_eq!(result_count(&c, "auth_failed"), 6);
        // Now even the right password is refused there, without being checked...
        phone.password = "wonderland".into();
        assert_eq!(phone.register(&mut c, contact, "", now).statuses(), [403]);
        assert_eq!(result_count(&c, "locked_out"), 1);
        // ...while alice's phone elsewhere registers, and after the cool-down so does this.
        let mut other = Phone::new("alice", "198.51.100.7:5060");
        assert_eq!(other.register(&mut c, contact, "", now).statuses(), [200]);
        let later = now + Duration::from_secs(16 * 60);
        assert_eq!(phone.register(&mut c, contact, "", later).statuses(), [200]);
    }

    #[test]
    fn a_register_for_another_users_aor_is_403() {
        let mut c = registrar();
        let mut phone = Phone::new("alice", "192.0.2.20:5062");
        phone.aor = "bob".into();
        let d = phone.register(&mut c, "<sip:bob@192.0.2.20:5062>", "", t0());
        assert_eq!(d.statuses(), [403]);
        assert!(d.bindings.is_empty());
        assert_eq!(result_count(&c, "forbidden"), 1);
    }

    #[test]
    fn a_register_for_a_domain_not_ours_is_404() {
        let mut c = registrar();
        let mut phone = Phone::new("alice", "192.0.2.20:5062");
        let m = phone.request("<sip:alice@192.0.2.20:5062>", "");
        let Message::Request(mut req) = m else {
            unreachable!()
        };
        req.uri = "sip:elsewhere.example".parse().unwrap();
        c.on_message(Message::Request(req), phone.source.clone(), t0());
        assert_eq!(drain(&mut c).statuses(), [404]);
    }

    #[test]
    fn an_expiry_under_a_minute_is_423_with_min_expires_and_one_over_an_hour_is_shortened() {
        let mut c = registrar();
        let now = t0();
        let mut phone = Phone::new("alice", "192.0.2.20:5062");
        let d = phone.register(&mut c, "<sip:alice@192.0.2.20:5062>;expires=30", "", now);
        assert_eq!(d.statuses(), [423]);
        assert_eq!(
            d.response(423).headers.get(HeaderName::MinExpires),
            Some("60")
        );
        assert!(d.bindings.is_empty());
        let d = phone.register(
            &mut c,
            "<sip:alice@192.0.2.20:5062>",
            "Expires: 86400\r\n",
            now,
        );
        assert_eq!(d.statuses(), [200]);
        assert_eq!(
            d.response(200).headers.get(HeaderName::Expires),
            Some("3600")
        );
        let d = phone.register(
            &mut c,
            "<sip:alice@192.0.2.20:5062>",
            "Expires: 600\r\n",
            now,
        );
        assert_eq!(
            d.response(200).headers.get(HeaderName::Expires),
            Some("600")
        );
    }

    #[test]
    fn contact_star_removes_every_binding_and_expires_0_removes_one() {
        let mut c = registrar();
        let now = t0();
        let mut phone = Phone::new("alice", "192.0.2.20:5062");
        let d = phone.register(
            &mut c,
            "<sip:alice@192.0.2.20:5062>, <sip:alice@192.0.2.20:5064>, <sip:alice@192.0.2.20:5066>",
            "",
            now,
        );
        let devices = bound_devices(&d);
        assert_eq!(devices.len(), 3);
        assert_eq!(contact_headers(d.response(200)).len(), 3);
        // One goes.
        let d = phone.register(&mut c, "<sip:alice@192.0.2.20:5064>;expires=0", "", now);
        assert_eq!(
            unbound(&d),
            [(devices[1].clone(), UnbindReason::Unregistered)]
        );
        assert_eq!(contact_headers(d.response(200)).len(), 2);
        // `*` needs Expires: 0.
        let d = phone.register(&mut c, "*", "", now);
        assert_eq!(d.statuses(), [400]);
        let d = phone.register(&mut c, "*", "Expires: 0\r\n", now);
        assert_eq!(d.statuses(), [200]);
        let mut gone = unbound(&d);
        gone.sort_by(|a, b| a.0.cmp(&b.0));
        let mut expected = vec![
            (devices[0].clone(), UnbindReason::Unregistered),
            (devices[2].clone(), UnbindReason::Unregistered),
        ];
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(gone, expected);
        assert!(contact_headers(d.response(200)).is_empty());
        assert!(
            c.metrics
                .render()
                .contains("\nconfer_sip_registrations 0\n")
        );
    }

    #[test]
    fn a_binding_not_refreshed_lapses_on_the_core_timer_and_is_reported_expired() {
        let mut c = registrar();
        let now = t0();
        let mut phone = Phone::new("alice", "192.0.2.20:5062");
        let d = phone.register(&mut c, "<sip:alice@192.0.2.20:5062>;expires=120", "", now);
        let device = bound_devices(&d).remove(0);
        let at = now + Duration::from_secs(120);
        assert!(c.next_timeout().is_some_and(|t| t <= at));
        c.handle_timeout(now + Duration::from_secs(119));
        assert!(drain(&mut c).bindings.is_empty());
        c.handle_timeout(at);
        assert_eq!(
            drain(&mut c).bindings,
            [BindingEvent::Unbound {
                user: "u-alice".into(),
                device: device.clone(),
                reason: UnbindReason::Expired,
            }]
        );
        assert!(
            c.metrics
                .render()
                .contains("\nconfer_sip_registrations 0\n")
        );
        assert!(matches!(
            c.ring(
                RingRequest {
                    room: 1,
                    user: "u-alice".into(),
                    device,
                    caller: None,
                    subject: None
                },
                at
            ),
            Err(RingError::UnknownDevice(_))
        ));
    }

    #[test]
    fn a_refresh_keeps_the_device_id_and_moves_the_expiry_even_from_a_new_address() {
        let mut c = registrar();
        let now = t0();
        let mut phone = Phone::new("alice", "192.0.2.20:5062");
        let instance = format!(";+sip.instance=\"<urn:uuid:{UUID}>\"");
        let d = phone.register(
            &mut c,
            &format!("<sip:alice@192.0.2.20:5062>{instance}"),
            "",
            now,
        );
        let device = bound_devices(&d).remove(0);
        // Half an hour on, the phone has a new address: the same binding, refreshed.
        let later = now + Duration::from_secs(1800);
        phone.source = Peer::udp("192.0.2.21:5062".parse().unwrap());
        let d = phone.register(
            &mut c,
            &format!("<sip:alice@192.0.2.21:5062>{instance}"),
            "",
            later,
        );
        assert_eq!(d.statuses(), [200]);
        assert_eq!(contact_headers(d.response(200)).len(), 1);
        let [
            BindingEvent::Bound {
                device: again,
                contact,
                expires_at,
                ..
            },
        ] = &d.bindings[..]
        else {
            panic!("{:?}", d.bindings)
        };
        assert_eq!(again, &device);
        assert_eq!(contact, "sip:alice@192.0.2.21:5062");
        assert_eq!(*expires_at, later + Duration::from_secs(3600));
        // The first expiry passes: nothing lapses.
        c.handle_timeout(now + Duration::from_secs(3600));
        assert!(drain(&mut c).bindings.is_empty());
        // A contact without an instance is known by its URI: the same hash each time.
        let d = phone.register(&mut c, "<sip:alice@192.0.2.21:5070>", "", later);
        let plain = bound_devices(&d).remove(0);
        assert!(plain.starts_with("sip-u-alice-") && plain.len() == "sip-u-alice-".len() + 16);
        let d = phone.register(&mut c, "<sip:alice@192.0.2.21:5070>", "", later);
        assert_eq!(bound_devices(&d), [plain]);
    }

    #[test]
    fn a_request_older_than_the_binding_is_refused_500_and_changes_nothing() {
        let mut c = registrar();
        let now = t0();
        let mut phone = Phone::new("alice", "192.0.2.20:5062");
        phone.cseq = 10;
        assert_eq!(
            phone
                .register(&mut c, "<sip:alice@192.0.2.20:5062>", "", now)
                .statuses(),
            [200]
        );
        phone.cseq = 3;
        let d = phone.register(&mut c, "<sip:alice@192.0.2.20:5062>;expires=0", "", now);
        assert_eq!(d.statuses(), [500]);
        assert!(d.bindings.is_empty());
    }

    #[test]
    fn an_eleventh_binding_replaces_the_one_refreshed_longest_ago() {
        let mut c = registrar();
        let now = t0();
        let mut phone = Phone::new("alice", "192.0.2.20:5062");
        let mut devices = Vec::new();
        for i in 0..10u64 {
            let at = now + Duration::from_secs(i);
            let d = phone.register(
                &mut c,
                &format!("<sip:alice@192.0.2.20:{}>", 6000 + i),
                "",
                at,
            );
            devices.extend(bound_devices(&d));
        }
        assert_eq!(devices.len(), 10);
        // The first is refreshed: the second is now the stalest.
        let d = phone.register(
            &mut c,
            "<sip:alice@192.0.2.20:6000>",
            "",
            now + Duration::from_secs(20),
        );
        assert_eq!(bound_devices(&d), [devices[0].clone()]);
        let d = phone.register(
            &mut c,
            "<sip:alice@192.0.2.20:7000>",
            "",
            now + Duration::from_secs(21),
        );
        assert_eq!(unbound(&d), [(devices[1].clone(), UnbindReason::Replaced)]);
        assert_eq!(bound_devices(&d).len(), 1);
        assert_eq!(contact_headers(d.response(200)).len(), 10);
        assert!(
            c.metrics
                .render()
                .contains("\nconfer_sip_registrations 10\n")
        );
    }

    #[test]
    fn a_stale_nonce_and_one_from_before_a_restart_are_challenged_again() {
        let mut c = registrar();
        let now = t0();
        let mut phone = Phone::new("alice", "192.0.2.20:5062");
        assert_eq!(
            phone
                .register(&mut c, "<sip:alice@192.0.2.20:5062>", "", now)
                .statuses(),
            [200]
        );
        // Ten minutes on, the phone refreshes with the nonce it has: stale.
        let m = phone.request("<sip:alice@192.0.2.20:5062>", "");
        c.on_message(m, phone.source.clone(), now + Duration::from_secs(600));
        let d = drain(&mut c);
        assert_eq!(d.statuses(), [401]);
        assert!(
            d.response(401)
                .headers
                .get(HeaderName::WwwAuthenticate)
                .unwrap()
                .contains("stale=true")
        );
        // Another process (a restart) does not know the nonce: a fresh challenge.
        let mut restarted = registrar();
        restarted.rng = ChaCha8Rng::seed_from_u64(99);
        let m = phone.request("<sip:alice@192.0.2.20:5062>", "");
        restarted.on_message(m, phone.source.clone(), now);
        assert_eq!(drain(&mut restarted).statuses(), [401]);
        assert_eq!(result_count(&restarted, "auth_failed"), 0);
    }

    #[test]
    fn a_stream_binding_lasts_no_longer_than_an_idle_connection_unless_the_phone_keeps_the_flow() {
        let mut c = registrar();
        let now = t0();
        let mut plain = Phone::new("alice", "192.0.2.20:40000").tcp();
        let d = plain.register(
            &mut c,
            "<sip:alice@192.0.2.20:40000;transport=tcp>",
            "",
            now,
        );
        let ok = d.response(200);
        assert_eq!(ok.headers.get(HeaderName::Expires), Some("300"));
        assert!(
            !ok.headers
                .get_all(HeaderName::Require)
                .any(|r| r == "outbound")
        );
        let mut outbound = Phone::new("bob", "192.0.2.21:40000").tcp();
        let contact = format!(
            "<sip:bob@192.0.2.21:40000;transport=tcp;ob>;reg-id=1;+sip.instance=\"<urn:uuid:{UUID}>\""
        );
        let d = outbound.register(&mut c, &contact, "Supported: path, outbound\r\n", now);
        let ok = d.response(200);
        assert_eq!(ok.headers.get(HeaderName::Expires), Some("3600"));
        assert_eq!(ok.headers.get(HeaderName::Require), Some("outbound"));
        assert_eq!(ok.headers.get("Flow-Timer"), Some("150"));
        let [BindingEvent::Bound { transport, .. }] = &d.bindings[..] else {
            panic!("{:?}", d.bindings)
        };
        assert_eq!(*transport, "tcp");
    }

    #[test]
    fn a_stream_binding_goes_when_its_connection_closes() {
        let mut c = registrar();
        let now = t0();
        let mut tcp = Phone::new("alice", "192.0.2.20:40000").tcp();
        let d = tcp.register(
            &mut c,
            "<sip:alice@192.0.2.20:40000;transport=tcp>",
            "",
            now,
        );
        let device = bound_devices(&d).remove(0);
        let mut udp = Phone::new("alice", "192.0.2.20:5062");
        udp.register(&mut c, "<sip:alice@192.0.2.20:5062>", "", now);
        // Another connection, and UDP "flows", close nothing.
        c.on_flow_closed(&Peer::tcp("192.0.2.20:40001".parse().unwrap()));
        c.on_flow_closed(&udp.source);
        assert!(drain(&mut c).bindings.is_empty());
        c.on_flow_closed(&tcp.source);
        assert_eq!(
            unbound(&drain(&mut c)),
            [(device, UnbindReason::Disconnected)]
        );
        assert!(
            c.metrics
                .render()
                .contains("\nconfer_sip_registrations 1\n")
        );
    }

    fn ring_request(device: &str) -> RingRequest {
        RingRequest {
            room: 7,
            user: "u-alice".into(),
            device: device.into(),
            caller: Some("Carol \"CEO\"\r\nVia: evil".into()),
            subject: Some("Q3 numbers\r\nX-Evil: 1".into()),
        }
    }

    #[test]
    fn a_registered_phone_is_rung_over_its_flow_at_its_contact_and_joins_when_it_answers() {
        let mut c = registrar();
        let now = t0();
        let mut phone = Phone::new("alice", "192.0.2.20:40000").tcp();
        let d = phone.register(
            &mut c,
            "<sip:alice@10.0.0.5:5062;transport=tcp?Subject=hi>",
            "",
            now,
        );
        let device = bound_devices(&d).remove(0);
        let call = c.ring(ring_request(&device), now).unwrap();
        let d = drain(&mut c);
        assert_eq!(d.dials, [(call, DialProgress::Trying)]);
        assert_eq!(
            d.media,
            [(
                call,
                MediaCommand::Prepare {
                    target: Target::RoomId(7)
                }
            )]
        );
        c.on_media(
            MediaEvent::Prepared {
                call,
                local: LOCAL_RTP.parse().unwrap(),
            },
            now,
        );
        let d = drain(&mut c);
        let invite = d.sent[0].as_request().expect("an INVITE").clone();
        // To the contact (its headers dropped), over the connection it registered on.
        assert_eq!(d.to[0], phone.source);
        assert_eq!(
            invite.uri.to_string(),
            "sip:alice@10.0.0.5:5062;transport=tcp"
        );
        assert_eq!(
            invite.headers.to().unwrap().uri.to_string(),
            "sip:alice@example.com"
        );
        let from = invite.headers.get(HeaderName::From).unwrap();
        assert!(
            from.starts_with("\"Carol \\\"CEO\\\"  Via: evil\" <sip:confer@example.com>"),
            "{from}"
        );
        assert_eq!(
            invite.headers.get(HeaderName::Subject),
            Some("Q3 numbers  X-Evil: 1")
        );
        assert!(invite.headers.get("X-Evil").is_none());
        assert!(
            invite
                .headers
                .get(HeaderName::Via)
                .unwrap()
                .starts_with("SIP/2.0/TCP")
        );
        // It rings, answers, joins the room.
        c.on_message(callee(&invite, 180, &[], ""), phone.source.clone(), now);
        c.on_message(callee(&invite, 200, &[], ANSWER), phone.source.clone(), now);
        let d = drain(&mut c);
        assert_eq!(d.dials, [(call, DialProgress::Ringing)]);
        assert_eq!(d.requests(), ["ACK"]);
        assert_eq!(d.to[0], phone.source);
        c.on_media(
            MediaEvent::Joined {
                call,
                participant: 3,
            },
            now,
        );
        assert_eq!(
            drain(&mut c).dials,
            [(call, DialProgress::Answered { participant: 3 })]
        );
        // Hung up from our side: BYE over the same flow.
        c.hang_up_dialled_in(call, Some(7), now).unwrap();
        let d = drain(&mut c);
        assert_eq!(d.requests(), ["BYE"]);
        assert_eq!(d.to[0], phone.source);
        assert_eq!(d.dials, [(call, DialProgress::HungUp)]);
    }

    #[test]
    fn ringing_is_refused_for_an_unknown_device_another_users_device_or_a_removed_account() {
        let mut c = registrar();
        let now = t0();
        let mut phone = Phone::new("alice", "192.0.2.20:5062");
        let d = phone.register(&mut c, "<sip:alice@192.0.2.20:5062>", "", now);
        let device = bound_devices(&d).remove(0);
        let unknown = |r: Result<CallId, RingError>| matches!(r, Err(RingError::UnknownDevice(_)));
        assert!(unknown(c.ring(ring_request("sip-u-alice-nope"), now)));
        let mut bobs = ring_request(&device);
        bobs.user = "u-bob".into();
        assert!(unknown(c.ring(bobs, now)));
        c.config.registrar.accounts.remove("alice");
        assert!(unknown(c.ring(ring_request(&device), now)));
        assert!(drain(&mut c).sent.is_empty());
    }

    #[test]
    fn a_ringing_phone_is_cancelled_before_it_answers() {
        let mut c = registrar();
        let now = t0();
        let mut phone = Phone::new("alice", "192.0.2.20:5062");
        let d = phone.register(&mut c, "<sip:alice@192.0.2.20:5062>", "", now);
        let device = bound_devices(&d).remove(0);
        let call = c.ring(ring_request(&device), now).unwrap();
        drain(&mut c);
        c.on_media(
            MediaEvent::Prepared {
                call,
                local: LOCAL_RTP.parse().unwrap(),
            },
            now,
        );
        let invite = drain(&mut c).sent[0].as_request().unwrap().clone();
        c.on_message(callee(&invite, 180, &[], ""), phone.source.clone(), now);
        drain(&mut c);
        c.hang_up_dialled_in(call, Some(7), now).unwrap();
        let d = drain(&mut c);
        assert_eq!(d.requests(), ["CANCEL"]);
        assert_eq!(d.to[0], phone.source);
        c.on_message(callee(&invite, 487, &[], ""), phone.source.clone(), now);
        let d = drain(&mut c);
        assert_eq!(d.requests(), ["ACK"], "the 487 is acknowledged");
        assert_eq!(d.dials, [(call, DialProgress::Failed { status: 487 })]);
    }

    #[test]
    fn an_account_keeps_the_ha1s_of_its_password_and_never_shows_them() {
        let s = SipSecret::from_password("alice", "wonderland");
        // `printf 'alice:confer:wonderland' | md5sum` and `| sha256sum`.
        let md5 = "77ded9d3d9d9b10cb0b2368a06dbddb6";
        let sha256 = "b8dc0f0445b8e6c926ff0f0292b6039d8737e65d9b959f71389757b150c29ee9";
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, format!(r#"{{"md5":"{md5}","sha256":"{sha256}"}}"#));
        assert_eq!(format!("{s:?}"), "SipSecret(<redacted>)");
        let account = SipAccount {
            user: "u-alice".into(),
            secret: s.clone(),
        };
        assert!(!format!("{account:?}").contains(md5));
        assert_eq!(serde_json::from_str::<SipSecret>(&json).unwrap(), s);
        // Upper-case hex reads back; anything but two HA1s does not.
        let upper = json.replace(md5, &md5.to_uppercase());
        assert_eq!(serde_json::from_str::<SipSecret>(&upper).unwrap(), s);
        for bad in [
            format!(r#"{{"md5":"{sha256}","sha256":"{md5}"}}"#),
            format!(r#"{{"md5":"{}","sha256":"{sha256}"}}"#, "z".repeat(32)),
            format!(r#"{{"sha256":"{sha256}"}}"#),
            format!(r#"{{"md5":"{md5}","sha256":"{sha256}","password":"x"}}"#),
        ] {
            assert!(serde_json::from_str::<SipSecret>(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn phones_answering_sha256_or_md5_register_against_the_stored_ha1s() {
        for (offer, algorithm) in [
            (Challenges::Sha256ThenMd5, Algorithm::Sha256),
            (Challenges::Md5Only, Algorithm::Md5),
        ] {
            let mut c = registrar();
            c.config.registrar.challenges = offer;
            let now = t0();
            let mut phone = Phone::new("alice", "192.0.2.20:5062");
            let d = phone.register(&mut c, "<sip:alice@192.0.2.20:5062>", "", now);
            assert_eq!(d.statuses(), [200], "{offer:?}");
            assert_eq!(phone.client.as_ref().unwrap().algorithm(), algorithm);
            assert_eq!(bound_devices(&d).len(), 1);
            let mut guesser = Phone::new("bob", "192.0.2.21:5062");
            guesser.password = "wonderlant".into();
            let d = guesser.register(&mut c, "<sip:bob@192.0.2.21:5062>", "", now);
            assert_eq!(d.statuses(), [403], "{offer:?}");
            assert_eq!(guesser.client.as_ref().unwrap().algorithm(), algorithm);
            assert_eq!(result_count(&c, "auth_failed"), 1);
        }
    }

    /// Unix milliseconds of the save in the restart tests.
    const SAVED_AT_MS: u64 = 1_700_000_000_000;

    /// Through the JSON the shell saves.
    fn saved_and_read_back(c: &Core, now: Instant) -> Vec<SavedBinding> {
        let text = serde_json::to_string(&c.export_bindings(now, SAVED_AT_MS)).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn a_restored_udp_binding_is_reported_and_rung_at_its_recorded_address() {
        let mut old = registrar();
        let now = t0();
        let mut phone = Phone::new("alice", "192.0.2.20:5062");
        let contact = format!("<sip:alice@10.0.0.5:5062>;+sip.instance=\"<urn:uuid:{UUID}>\"");
        let d = phone.register(&mut old, &contact, "", now);
        let device = bound_devices(&d).remove(0);
        let saved = saved_and_read_back(&old, now + Duration::from_secs(10));
        // The new process starts 20 s after the save, its monotonic clock elsewhere.
        let mut new = registrar();
        let start = t0() + Duration::from_secs(5000);
        assert_eq!(new.restore_bindings(saved, start, SAVED_AT_MS + 20_000), 1);
        assert_eq!(
            drain(&mut new).bindings,
            [BindingEvent::Bound {
                user: "u-alice".into(),
                device: device.clone(),
                contact: "sip:alice@10.0.0.5:5062".into(),
                expires_at: start + Duration::from_secs(3600 - 30),
                user_agent: Some("TestPhone/1.0 (test)".into()),
                transport: "udp",
            }]
        );
        assert!(
            new.metrics
                .render()
                .contains("\nconfer_sip_registrations 1\n")
        );
        let call = new.ring(ring_request(&device), start).unwrap();
        drain(&mut new);
        new.on_media(
            MediaEvent::Prepared {
                call,
                local: LOCAL_RTP.parse().unwrap(),
            },
            start,
        );
        let d = drain(&mut new);
        let invite = d.sent[0].as_request().expect("an INVITE");
        assert_eq!(d.to[0], Peer::udp("192.0.2.20:5062".parse().unwrap()));
        assert_eq!(invite.uri.to_string(), "sip:alice@10.0.0.5:5062");
        assert_eq!(
            invite.headers.to().unwrap().uri.to_string(),
            "sip:alice@example.com"
        );
        // The phone's next refresh (its nonce is the old process's: challenged again)
        // is the same binding.
        let d = phone.register(&mut new, &contact, "", start + Duration::from_secs(60));
        assert_eq!(d.statuses(), [200]);
        assert_eq!(bound_devices(&d), [device]);
    }

    #[test]
    fn a_binding_that_lapsed_while_confer_was_down_is_not_restored() {
        let mut old = registrar();
        let now = t0();
        let mut phone = Phone::new("alice", "192.0.2.20:5062");
        let d = phone.register(&mut old, "<sip:alice@192.0.2.20:5062>;expires=120", "", now);
        let device = bound_devices(&d).remove(0);
        // Saved 10 s after the registration: 110 s left.
        let saved = saved_and_read_back(&old, now + Duration::from_secs(10));
        let start = t0();
        let mut early = registrar();
        assert_eq!(
            early.restore_bindings(saved.clone(), start, SAVED_AT_MS + 109_999),
            1
        );
        let mut late = registrar();
        assert_eq!(
            late.restore_bindings(saved, start, SAVED_AT_MS + 110_000),
            0
        );
        assert!(drain(&mut late).bindings.is_empty());
        assert!(matches!(
            late.ring(ring_request(&device), start),
            Err(RingError::UnknownDevice(_))
        ));
    }

    #[test]
    fn a_tcp_binding_is_not_restored_its_connection_is_gone() {
        let mut old = registrar();
        let now = t0();
        let mut tcp = Phone::new("alice", "192.0.2.20:40000").tcp();
        let d = tcp.register(
            &mut old,
            "<sip:alice@192.0.2.20:40000;transport=tcp>",
            "",
            now,
        );
        let stream_device = bound_devices(&d).remove(0);
        let mut udp = Phone::new("alice", "192.0.2.20:5062");
        let d = udp.register(&mut old, "<sip:alice@192.0.2.20:5062>", "", now);
        let udp_device = bound_devices(&d).remove(0);
        let saved = saved_and_read_back(&old, now);
        assert_eq!(saved.len(), 2);
        let mut new = registrar();
        let start = t0();
        assert_eq!(new.restore_bindings(saved, start, SAVED_AT_MS), 1);
        assert_eq!(bound_devices(&drain(&mut new)), [udp_device]);
        assert!(matches!(
            new.ring(ring_request(&stream_device), start),
            Err(RingError::UnknownDevice(_))
        ));
    }

    #[test]
    fn a_restored_binding_lapses_at_its_original_expiry() {
        let mut old = registrar();
        let now = t0();
        let mut phone = Phone::new("alice", "192.0.2.20:5062");
        let d = phone.register(&mut old, "<sip:alice@192.0.2.20:5062>;expires=600", "", now);
        let device = bound_devices(&d).remove(0);
        let saved = saved_and_read_back(&old, now);
        // Restarted 100 s later: 500 s left.
        let mut new = registrar();
        let start = t0() + Duration::from_secs(7000);
        new.restore_bindings(saved, start, SAVED_AT_MS + 100_000);
        drain(&mut new);
        let lapse = start + Duration::from_secs(500);
        assert!(new.next_timeout().is_some_and(|t| t <= lapse));
        new.handle_timeout(lapse - Duration::from_millis(1));
        assert!(drain(&mut new).bindings.is_empty());
        assert!(
            new.ring(ring_request(&device), lapse - Duration::from_millis(1))
                .is_ok()
        );
        drain(&mut new);
        new.handle_timeout(lapse);
        assert_eq!(
            drain(&mut new).bindings,
            [BindingEvent::Unbound {
                user: "u-alice".into(),
                device,
                reason: UnbindReason::Expired,
            }]
        );
    }

    #[test]
    fn device_ids_are_stable_bounded_and_never_carry_whitespace() {
        let uri: Uri = "sip:a@192.0.2.1".parse().unwrap();
        assert_eq!(
            device_id(
                "u1",
                Some(&format!("urn:uuid:{}", UUID.to_uppercase())),
                &uri
            ),
            format!("sip-u1-{UUID}")
        );
        let gsma = device_id("u1", Some("urn:gsma:imei:35-209900-176148-1"), &uri);
        assert_eq!(gsma.len(), "sip-u1-".len() + 16);
        assert_eq!(device_id("u1", None, &uri), device_id("u1", None, &uri));
        let long = "x".repeat(200);
        assert!(device_id(&long, None, &uri).len() <= MAX_DEVICE_ID);
        assert!(!device_id("a b", None, &uri).contains(' '));
    }
}
