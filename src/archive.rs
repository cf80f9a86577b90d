//! The compliance archive, wired into the binary: a follower of the event journal that
//! turns archivable events into hash-chained archive records, the fail-closed check that
//! new escalations and calls ask, daily retention, and `confer archive verify | export |
//! purge`.
//!
//! # Why a follower
//! Every event of confer goes into one durable journal ([`crate::journal`]). The archive
//! does not get its own copy of each event from the code that makes it: it follows the
//! journal, converts the events listed below into [`Entry`]s and appends them to the
//! [`ArchiveStore`] in batches (one transaction per batch, up to [`BATCH`] events). So a
//! call's records never depend on the archive being up when the call happens: while the
//! store fails (database down, disk full, read-only), the follower keeps its place and
//! retries with backoff (100 ms doubling to 5 s, and at once when the probe sees the store
//! back), and the journal holds the events meanwhile. Ongoing calls go on and lose nothing.
//!
//! # The cursor is in the archive
//! Each record carries the journal sequence number of its event in its details, as
//! `"event": seq` (with `"source"` and `"kind"`, the event's). After a restart the follower
//! reads the last record that has an `event` and subscribes to the journal after it:
//! exactly once, with no separate cursor that could disagree with the records. A batch is
//! one transaction, so a crash leaves either all of it or none. When an append fails
//! ambiguously (the commit may have happened), the follower reads the last record back
//! before retrying and drops the batch if it is already there. A retention purge never
//! removes the record holding the cursor (its cutoff is clamped to that record's time), so
//! the cursor survives any retention.
//!
//! What the journal can no longer replay is recorded, never skipped silently: when the
//! cursor is older than the journal's oldest event (the journal's own retention purged
//! events the archive never saw, e.g. after a week-long outage), a `journal_gap` record
//! names the missing range; when the cursor is ahead of the journal (the journal file was
//! replaced), a `journal_reset` record says so and archiving restarts at the new journal's
//! first event.
//!
//! # Fail closed
//! [`Archive::check_writable`] is a fast synchronous check for new escalations and calls.
//! With `archive_required` (the default) it refuses when the store failed its last write or
//! probe (`archive_unavailable`), when the journal cannot commit (`journal_unavailable`:
//! the events of a new call could not even be kept for the archive), or when the follower
//! is more than [`MAX_LAG_EVENTS`] events behind the journal (`archive_behind`: after a
//! long outage, new calls wait until the backlog is archived). A probe
//! ([`ArchiveStore::probe_writable`]) runs every second while the store is down, and every
//! 10 s while it is up so that an idle archive that broke is noticed before the next call.
//! With `archive_required = false` the check always passes (records are still written,
//! late if need be).
//!
//! # Events and records
//! Table-driven by (source, kind), in [`RULES`]. The record's conversation is the body's
//! `conversation`, else `room:<room>`; its user is the body's `user`, else the `user` of its
//! `invitee` or `participant`. Details are the body, cleaned: keys that name secrets are
//! dropped at any depth (`pin`, `*_pin`, `digits`, `dtmf`, anything with `password`,
//! `secret`, `token`, `credential`, `authorization`, `api_key`, and `url`/`*_url`, as join
//! links carry tokens); floats become integers for keys ending in `_ms` (media times, in
//! whole ms) and decimal text otherwise (the archive refuses floats, whose text form is not
//! stable); then `event`, `source` and `kind` are set (a body field `event` is kept as
//! `event_field`). An entry the archive's validator still refuses (an oversized body, an id
//! longer than 256 bytes) is archived as an `unarchivable_event` record naming the event
//! and the reason; it never blocks the follower and is never dropped silently.
//!
//! | source | kind | record kind (label) | notes |
//! |---|---|---|---|
//! | `room` | `created`, `ended` | `call_started`, `call_ended` | |
//! | `room` | `joined`, `left` | `joined`, `left` | device, client when known |
//! | `room` | `kicked` | `left` | `reason: kicked` |
//! | `room` | `muted`, `unmuted`, `locked`, `unlocked` | same label (no closer kind) | what others hear, who may enter |
//! | `room` | `recording_started`, `recording_stopped` | `recording` | `action: started/stopped`, `files` |
//! | `room` | `dial_trying` | `dial_out` | `number` when known |
//! | `room` | `dial_ringing`, `dial_answered`, `dial_failed` | `alerting` | `outcome: ringing/answered/failed`, SIP `status` |
//! | `room` | `dial_hung_up` | `call_ended` | the dialled call |
//! | `call` | `started`, `ended` | `conversation_started`, `conversation_ended` | |
//! | `call` | `invited`, `fell_back_to_pstn`, `dial_in_offered` | `invited` | how they are offered to join |
//! | `call` | `ringing`, `answered`, `ring_cancelled`, `declined`, `ring_failed` | `alerting` | `outcome` = the step |
//! | `call` | `dialling_pstn` | `dial_out` | |
//! | `call` | `dial_out_refused` | `policy_decision` | refused `dial_out`, with the reason |
//! | `call` | `joined`, `left` | `joined`, `left` | |
//! | `call` | `modality_changed`, `media_changed` | `modality_changed` | |
//! | `sip` | `dial_in` | `dial_in` | caller and called numbers, room |
//! | `sip` | `pin` | `pin_entry` | outcome (`accepted`, `rejected`, `locked_out`) and attempt only, never digits |
//! | `sip` | `call_refused` | `policy_decision` | refused `sip_call`, with the reason |
//! | `policy` | `refused`, `allowed_with_notice` | `policy_decision` | `activity` = what, user = who, `rule`, `reason` |
//!
//! Not archived, and why: `room` `started_talking`/`stopped_talking` (voice activity, tens
//! per minute per participant: content-like telemetry, not who was in the call),
//! `digit` (DTMF keys can be a PIN or a card number; PIN outcomes come from `sip` `pin`),
//! `playback_finished` (an IVR prompt ended: internal), `deafened`/`undeafened` (what one
//! participant hears, which changes nothing for the others); `call` `late_input_ignored`
//! (an input that changed nothing); every `presence` event (availability, not
//! communication; frequent). An unknown kind of an archived source is archived as
//! `<source>_<kind>` (compliance errs on the side of keeping); an unknown source is not
//! archived and is counted (`confer_archive_events_skipped_total`).
//!
//! # Command line
//! `confer archive verify` (exit 0 with a summary, or 1 naming the first broken record),
//! `confer archive export [--from T] [--to T] [--out FILE]` (JSON lines, see
//! `Record::to_json_line`), `confer archive purge --before T` (retention by hand, with the
//! checkpoint that keeps the chain verifiable). T is RFC 3339 UTC
//! (`2026-11-26T10:00:00Z`, fractions and `+hh:mm` offsets accepted) or unix milliseconds.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use confer_archive_store::{ArchiveStore, Location, StoreConfig, StoreError, VerifyError};
use confer_signalling::archive::{
    Anchor, Entry, MAX_ID_BYTES, PinOutcome, PolicyOutcome, Record, RecordKind, TimeRange,
    UnixMillis,
};
use serde_json::{Map, Value};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::journal::{Event, Journal, JournalError, Subscription};

/// New calls are refused (when archiving is required) while the follower is more than
/// this many journal events behind: minutes of a busy server's events, seconds of work.
pub const MAX_LAG_EVENTS: u64 = 10_000;
/// Journal events read per archive transaction at most.
pub const BATCH: usize = 500;
/// Events read ahead of the archive's transactions by default; beyond them the journal
/// holds the backlog.
pub const READ_AHEAD: usize = 4096;
/// The label of the record of an event whose entry the archive refused.
const UNARCHIVABLE: &str = "unarchivable_event";
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const PROBE_WHILE_DOWN: Duration = Duration::from_secs(1);
const PROBE_WHILE_UP: Duration = Duration::from_secs(10);
const RETENTION_EVERY: Duration = Duration::from_secs(24 * 3600);
/// How long [`Archive::close`] waits for the follower to reach the journal's head.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Events to entries
// ---------------------------------------------------------------------------------------

/// What one (source, kind) becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum To {
    /// A record of this label (a `RecordKind` label; unknown labels are `Other`).
    Plain(&'static str),
    /// `alerting` with this `outcome`.
    Alerting(&'static str),
    /// `recording` with this `action`.
    Recording(&'static str),
    /// `left` with this `reason` unless the body gives one.
    Left(&'static str),
    /// `dial_in` (caller and called numbers).
    DialIn,
    /// `dial_out` (the number).
    DialOut,
    /// `pin_entry`: outcome and attempt only.
    Pin,
    /// `policy_decision`; the activity comes from the body's `what`, else this one.
    Policy(PolicyOutcome, &'static str),
    /// `modality_changed`.
    Modality,
    /// Not archived, and why (for the table above and the tests).
    Skip(&'static str),
}

/// The mapping of the module doc's table.
pub(crate) const RULES: &[(&str, &str, To)] = &[
    ("room", "created", To::Plain("call_started")),
    ("room", "ended", To::Plain("call_ended")),
    ("room", "joined", To::Plain("joined")),
    ("room", "left", To::Left("left")),
    ("room", "kicked", To::Left("kicked")),
    ("room", "muted", To::Plain("muted")),
    ("room", "unmuted", To::Plain("unmuted")),
    ("room", "locked", To::Plain("locked")),
    ("room", "unlocked", To::Plain("unlocked")),
    ("room", "recording_started", To::Recording("started")),
    ("room", "recording_stopped", To::Recording("stopped")),
    ("room", "dial_trying", To::DialOut),
    ("room", "dial_ringing", To::Alerting("ringing")),
    ("room", "dial_answered", To::Alerting("answered")),
    ("room", "dial_failed", To::Alerting("failed")),
    ("room", "dial_hung_up", To::Plain("call_ended")),
    ("room", "started_talking", To::Skip("voice activity")),
    ("room", "stopped_talking", To::Skip("voice activity")),
    ("room", "digit", To::Skip("DTMF keys may be a PIN")),
    ("room", "playback_finished", To::Skip("internal prompt end")),
    ("room", "deafened", To::Skip("what one participant hears")),
    ("room", "undeafened", To::Skip("what one participant hears")),
    ("call", "started", To::Plain("conversation_started")),
    ("call", "ended", To::Plain("conversation_ended")),
    ("call", "invited", To::Plain("invited")),
    ("call", "fell_back_to_pstn", To::Plain("invited")),
    ("call", "dial_in_offered", To::Plain("invited")),
    ("call", "ringing", To::Alerting("ringing")),
    ("call", "answered", To::Alerting("answered")),
    ("call", "ring_cancelled", To::Alerting("cancelled")),
    ("call", "declined", To::Alerting("declined")),
    ("call", "ring_failed", To::Alerting("failed")),
    ("call", "dialling_pstn", To::DialOut),
    (
        "call",
        "dial_out_refused",
        To::Policy(PolicyOutcome::Refused, "dial_out"),
    ),
    ("call", "joined", To::Plain("joined")),
    ("call", "left", To::Left("left")),
    ("call", "modality_changed", To::Modality),
    ("call", "media_changed", To::Modality),
    (
        "call",
        "late_input_ignored",
        To::Skip("an input that changed nothing"),
    ),
    ("sip", "dial_in", To::DialIn),
    ("sip", "pin", To::Pin),
    (
        "sip",
        "call_refused",
        To::Policy(PolicyOutcome::Refused, "sip_call"),
    ),
    (
        "policy",
        "refused",
        To::Policy(PolicyOutcome::Refused, "unknown"),
    ),
    (
        "policy",
        "allowed_with_notice",
        To::Policy(PolicyOutcome::AllowedWithNotice, "unknown"),
    ),
];

/// Sources whose unknown kinds are still archived.
const ARCHIVED_SOURCES: &[&str] = &["room", "call", "sip", "policy"];
/// Sources never archived.
const SKIPPED_SOURCES: &[(&str, &str)] = &[("presence", "availability, not communication")];

/// What the follower does with one event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Mapped {
    /// Archive this (already validated) entry.
    Archive(Entry),
    /// Not archived: a listed kind, or an unknown source.
    Skip(&'static str),
}

/// The rule for (source, kind): the table's, or the default for unknown ones.
pub(crate) fn rule(source: &str, kind: &str) -> To {
    if let Some((_, _, to)) = RULES.iter().find(|(s, k, _)| *s == source && *k == kind) {
        return *to;
    }
    if let Some((_, why)) = SKIPPED_SOURCES.iter().find(|(s, _)| *s == source) {
        return To::Skip(why);
    }
    if ARCHIVED_SOURCES.contains(&source) {
        return To::Plain("");
    }
    To::Skip("unknown source")
}

/// Converts one journal event into what the archive keeps of it. Never fails: an entry
/// the archive's validator refuses becomes an `unarchivable_event` record.
pub(crate) fn map_event(ev: &Event) -> Mapped {
    let to = rule(&ev.source, &ev.kind);
    if let To::Skip(why) = to {
        return Mapped::Skip(why);
    }
    let at = UnixMillis(i64::try_from(ev.at.as_millis()).unwrap_or(i64::MAX));
    let body = &ev.body;
    let text = |key: &str| body.get(key).and_then(Value::as_str);
    let conversation = conversation_of(body);
    let user = user_of(body);
    let mut entry = match to {
        To::Plain("") => Entry::new(at, RecordKind::from_label(&other_label(ev))),
        To::Plain(label) => Entry::new(at, RecordKind::from_label(label)),
        To::Alerting(outcome) => Entry::new(at, RecordKind::Alerting).detail("outcome", outcome),
        To::Recording(action) => Entry::new(at, RecordKind::Recording).detail("action", action),
        To::Left(reason) => Entry::new(at, RecordKind::Left).detail("reason", reason),
        To::DialIn => {
            let mut e = Entry::new(at, RecordKind::DialIn);
            if let Some(n) = text("caller").or(text("caller_number")) {
                e = e.detail("caller_number", n);
            }
            if let Some(n) = text("called").or(text("called_number")) {
                e = e.detail("called_number", n);
            }
            e
        }
        To::DialOut => {
            let mut e = Entry::new(at, RecordKind::DialOut);
            if let Some(n) = text("number") {
                e = e.detail("number", n);
            }
            e
        }
        To::Pin => pin_entry(at, ev),
        To::Policy(outcome, activity) => {
            let activity = text("what").or(text("activity")).unwrap_or(activity);
            let reason = text("reason").unwrap_or("");
            let mut e = Entry::policy_decision(at, outcome, activity, reason);
            if let Some(who) = text("who") {
                e = e.user(who);
            }
            e
        }
        To::Modality => match (text("from"), text("to")) {
            (Some(from), Some(to)) => Entry::modality_changed(at, "", from, to),
            _ => Entry::new(at, RecordKind::ModalityChanged),
        },
        To::Skip(why) => return Mapped::Skip(why),
    };
    entry.conversation = conversation;
    if entry.user.is_none() {
        entry.user = user;
    }
    if to != To::Pin {
        for (k, v) in clean_map(body, 0) {
            entry.details.entry(k).or_insert(v);
        }
    }
    if let Some(v) = entry.details.remove("event") {
        entry.details.insert("event_field".into(), v);
    }
    stamp(&mut entry.details, ev.seq, &ev.source, &ev.kind);
    match entry.validate() {
        Ok(()) => Mapped::Archive(entry),
        Err(e) => Mapped::Archive(unarchivable(ev, &e.to_string())),
    }
}

/// The label of an unknown kind of an archived source: `<source>_<kind>` in the
/// archive's label alphabet (lowercase ASCII, digits, `_`; at most 64 bytes).
fn other_label(ev: &Event) -> String {
    let mut label: String = format!("{}_{}", ev.source, ev.kind)
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() {
                c
            } else {
                '_'
            }
        })
        .collect();
    label.truncate(64);
    label
}

/// `event`, `source`, `kind`: where the record came from, and the follower's cursor.
fn stamp(details: &mut Map<String, Value>, seq: u64, source: &str, kind: &str) {
    details.insert("event".into(), Value::from(seq));
    details.insert("source".into(), Value::from(truncated(source, 64)));
    details.insert("kind".into(), Value::from(truncated(kind, 64)));
}

/// The record of an event whose entry the archive refused: which event, and why.
fn unarchivable(ev: &Event, why: &str) -> Entry {
    let at = UnixMillis(i64::try_from(ev.at.as_millis()).unwrap_or(i64::MAX));
    let mut e =
        Entry::new(at, RecordKind::Other(UNARCHIVABLE.into())).detail("error", truncated(why, 512));
    e.conversation = conversation_of(&ev.body).filter(|c| c.len() <= MAX_ID_BYTES);
    stamp(&mut e.details, ev.seq, &ev.source, &ev.kind);
    e
}

/// A PIN outcome: only `outcome`, `attempt` and a few named non-secret fields of the
/// body, whatever else the body holds.
fn pin_entry(at: UnixMillis, ev: &Event) -> Entry {
    let body = &ev.body;
    let attempt = body
        .get("attempt")
        .or(body.get("attempts"))
        .and_then(Value::as_u64)
        .and_then(|a| u32::try_from(a).ok())
        .unwrap_or(0);
    let outcome = match body.get("outcome").and_then(Value::as_str) {
        Some("accepted") => Some(PinOutcome::Accepted { attempt }),
        Some("rejected") => Some(PinOutcome::Rejected { attempt }),
        Some("locked_out") => Some(PinOutcome::LockedOut { attempts: attempt }),
        _ => None,
    };
    let mut e = match outcome {
        Some(o) => Entry::pin_entry(at, "", o),
        None => Entry::new(at, RecordKind::PinEntry)
            .detail("outcome", "unknown")
            .detail("attempt", attempt),
    };
    for key in [
        "room",
        "call",
        "caller",
        "caller_number",
        "called",
        "called_number",
    ] {
        if let Some(v) = body.get(key).filter(|v| v.is_string() || v.is_u64()) {
            e.details.insert(key.into(), v.clone());
        }
    }
    e
}

fn conversation_of(body: &Map<String, Value>) -> Option<String> {
    match body.get("conversation") {
        Some(Value::String(s)) => return Some(s.clone()),
        Some(v @ Value::Number(_)) => return Some(v.to_string()),
        _ => {}
    }
    match body.get("room") {
        Some(Value::String(s)) => Some(format!("room:{s}")),
        Some(v @ Value::Number(_)) => Some(format!("room:{v}")),
        _ => None,
    }
}

fn user_of(body: &Map<String, Value>) -> Option<String> {
    if let Some(u) = body.get("user").and_then(Value::as_str) {
        return Some(u.to_owned());
    }
    ["invitee", "participant"].iter().find_map(|k| {
        body.get(*k)
            .and_then(|p| p.get("user"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    })
}

/// Whether a detail key names a secret (or something that carries one); see the module
/// doc. Broader than the archive's own list, which refuses rather than drops.
fn names_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    k == "pin"
        || k.ends_with("_pin")
        || k == "digit"
        || k == "digits"
        || k == "dtmf"
        || k == "url"
        || k.ends_with("_url")
        || [
            "password",
            "passwd",
            "secret",
            "token",
            "credential",
            "authorization",
            "api_key",
        ]
        .iter()
        .any(|s| k.contains(s))
}

/// Deeper than this, a value is replaced by null (the archive refuses more than 16
/// levels; the record then says it could not archive the event).
const CLEAN_DEPTH: usize = 24;

fn clean_map(map: &Map<String, Value>, depth: usize) -> Map<String, Value> {
    map.iter()
        .filter(|(k, _)| !names_secret(k))
        .map(|(k, v)| (k.clone(), clean_value(k, v, depth + 1)))
        .collect()
}

fn clean_value(key: &str, v: &Value, depth: usize) -> Value {
    if depth > CLEAN_DEPTH {
        return Value::Null;
    }
    match v {
        Value::Number(n) if n.as_i64().is_none() && n.as_u64().is_none() => {
            let f = n.as_f64().unwrap_or(0.0);
            if key.ends_with("_ms") {
                // `as` saturates at the i64 bounds; JSON numbers are never NaN.
                Value::from(f.round() as i64)
            } else {
                Value::from(n.to_string())
            }
        }
        Value::Object(m) => Value::Object(clean_map(m, depth)),
        Value::Array(a) => Value::Array(a.iter().map(|x| clean_value(key, x, depth + 1)).collect()),
        other => other.clone(),
    }
}

fn truncated(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

// ---------------------------------------------------------------------------------------
// The follower
// ---------------------------------------------------------------------------------------

/// Why a new escalation or call may not start now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct ArchiveRefusal {
    /// Stable, for API responses, SIP reason headers and metric labels:
    /// `archive_unavailable`, `journal_unavailable` or `archive_behind`.
    pub reason: &'static str,
    /// For people.
    pub detail: String,
}

/// How to open the archive (from [`Config`] by [`Archive::open`]; tests shorten timeouts).
/// Its `Debug` names the backend only: a PostgreSQL URL may hold a password.
#[derive(Clone)]
pub struct ArchiveOptions {
    pub store: StoreConfig,
    pub required: bool,
    /// 0: keep forever.
    pub retention_days: u32,
    /// Journal events read ahead of the archive's transactions ([`READ_AHEAD`]).
    pub read_ahead: usize,
}

impl ArchiveOptions {
    pub fn from_config(cfg: &Config) -> ArchiveOptions {
        ArchiveOptions {
            store: cfg.archive_store(),
            required: cfg.archive_required,
            retention_days: cfg.archive_retention_days,
            read_ahead: READ_AHEAD,
        }
    }
}

impl std::fmt::Debug for ArchiveOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.store.location {
            Location::Sqlite(_) => "sqlite",
            Location::Postgres(_) => "postgres",
        };
        f.debug_struct("ArchiveOptions")
            .field("backend", &backend)
            .field("required", &self.required)
            .field("retention_days", &self.retention_days)
            .field("read_ahead", &self.read_ahead)
            .finish()
    }
}

/// The archive of a running confer: cheap to clone.
#[derive(Clone)]
pub struct Archive {
    inner: Arc<Inner>,
}

struct Inner {
    options: ArchiveOptions,
    journal: Journal,
    store: OnceLock<Arc<ArchiveStore>>,
    /// The store failed its last write or probe (or is not open yet).
    down: AtomicBool,
    down_detail: Mutex<String>,
    /// The follower has found its cursor and follows the journal.
    following: AtomicBool,
    /// The last journal seq the follower is done with (archived or skipped).
    position: AtomicU64,
    records: AtomicU64,
    skipped: AtomicU64,
    unarchivable: AtomicU64,
    gaps: AtomicU64,
    store_failures: AtomicU64,
    purged: AtomicU64,
    refusals: Mutex<Vec<(&'static str, u64)>>,
    /// The probe saw the store come back: the follower retries now.
    back: Notify,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Archive {
    /// Opens the store named by the configuration and starts following `journal`.
    pub async fn open(cfg: &Config, journal: Journal) -> anyhow::Result<Archive> {
        Archive::open_with(ArchiveOptions::from_config(cfg), journal).await
    }

    /// Opens the store and starts the follower, the probe and (with a retention) the daily
    /// purge. A store that cannot be reached now is not an error: the archive starts down
    /// (new calls refused when required) and keeps trying. A configuration the store
    /// rejects (a malformed URL) is.
    pub async fn open_with(options: ArchiveOptions, journal: Journal) -> anyhow::Result<Archive> {
        let (stop, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            options,
            journal,
            store: OnceLock::new(),
            down: AtomicBool::new(true),
            down_detail: Mutex::new("the archive is not open yet".into()),
            following: AtomicBool::new(false),
            position: AtomicU64::new(0),
            records: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            unarchivable: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            store_failures: AtomicU64::new(0),
            purged: AtomicU64::new(0),
            refusals: Mutex::new(Vec::new()),
            back: Notify::new(),
            stop,
            tasks: Mutex::new(Vec::new()),
        });
        // One attempt now, so that a healthy archive is following when open returns.
        let mut start = None;
        match ArchiveStore::open(&inner.options.store).await {
            Ok(store) => {
                let store = Arc::new(store);
                tracing::info!(backend = store.backend(), "archive open");
                let _ = inner.store.set(store.clone());
                inner.store_ok();
                match start_point(&inner, &store).await {
                    Ok(s) => {
                        // Following from here on: a call right after open is not refused.
                        inner.position.store(s.after, Ordering::Release);
                        inner.following.store(true, Ordering::Release);
                        start = Some(s);
                    }
                    Err(e) => inner.store_failed(&e),
                }
            }
            Err(StoreError::Config(e)) => bail!("archive_url: {e}"),
            Err(e) => inner.store_failed(&e),
        }
        let follower = tokio::spawn(follow(inner.clone(), start));
        if let Ok(mut tasks) = inner.tasks.lock() {
            tasks.push(follower);
        }
        Ok(Archive { inner })
    }

    /// Fast and synchronous: `Ok` when a new escalation or call may start; see the module
    /// doc ("Fail closed").
    pub fn check_writable(&self) -> Result<(), ArchiveRefusal> {
        let i = &self.inner;
        if !i.options.required {
            return Ok(());
        }
        if i.down.load(Ordering::Acquire) {
            let detail = i.down_detail.lock().map(|d| d.clone()).unwrap_or_default();
            return Err(ArchiveRefusal {
                reason: "archive_unavailable",
                detail: format!(
                    "archiving is required and the archive cannot be written ({detail})"
                ),
            });
        }
        if !i.journal.healthy() {
            return Err(ArchiveRefusal {
                reason: "journal_unavailable",
                detail: "archiving is required and the event journal cannot be written".into(),
            });
        }
        let lag = self.lag();
        if !i.following.load(Ordering::Acquire) || lag > MAX_LAG_EVENTS {
            return Err(ArchiveRefusal {
                reason: "archive_behind",
                detail: format!(
                    "archiving is required and the archive is {lag} events behind (at most {MAX_LAG_EVENTS})"
                ),
            });
        }
        Ok(())
    }

    /// Counts a refusal made because of [`Archive::check_writable`] (`what`: `escalation`,
    /// `sip_call`, ...), for `confer_archive_refusals_total{what}`.
    /// [`check_writable`](Self::check_writable) before a new call of kind `what`
    /// (`escalation`, `sip_call`, `dial_out`), counting a refusal under it.
    pub fn admit(&self, what: &'static str) -> Result<(), ArchiveRefusal> {
        self.check_writable()
            .inspect_err(|_| self.count_refusal(what))
    }

    pub fn count_refusal(&self, what: &'static str) {
        if let Ok(mut r) = self.inner.refusals.lock() {
            match r.iter_mut().find(|(w, _)| *w == what) {
                Some((_, n)) => *n += 1,
                None => r.push((what, 1)),
            }
        }
    }

    /// Journal events not yet archived (or skipped).
    pub fn lag(&self) -> u64 {
        self.inner
            .journal
            .head()
            .saturating_sub(self.inner.position.load(Ordering::Acquire))
    }

    /// Prometheus text.
    pub fn metrics_text(&self) -> String {
        use std::fmt::Write;
        let i = &self.inner;
        let writable = !i.down.load(Ordering::Acquire) && i.following.load(Ordering::Acquire);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        metric(
            "confer_archive_records_total",
            "counter",
            "Archive records appended by this process.",
            i.records.load(Ordering::Relaxed),
        );
        metric(
            "confer_archive_writable",
            "gauge",
            "1 when the archive store accepted its last write or probe and the follower runs.",
            u64::from(writable),
        );
        metric(
            "confer_archive_required",
            "gauge",
            "1 when policy requires archiving (new calls are refused while it is not writable).",
            u64::from(i.options.required),
        );
        metric(
            "confer_archive_lag_events",
            "gauge",
            "Journal events not yet archived.",
            self.lag(),
        );
        metric(
            "confer_archive_events_skipped_total",
            "counter",
            "Journal events not archived by rule (talking, presence, unknown sources).",
            i.skipped.load(Ordering::Relaxed),
        );
        metric(
            "confer_archive_unarchivable_total",
            "counter",
            "Events archived only as an unarchivable_event record (the entry was refused).",
            i.unarchivable.load(Ordering::Relaxed),
        );
        metric(
            "confer_archive_journal_gaps_total",
            "counter",
            "journal_gap or journal_reset records: events the journal could no longer replay.",
            i.gaps.load(Ordering::Relaxed),
        );
        metric(
            "confer_archive_store_failures_total",
            "counter",
            "Failed archive writes and probes.",
            i.store_failures.load(Ordering::Relaxed),
        );
        metric(
            "confer_archive_purged_total",
            "counter",
            "Records removed by retention.",
            i.purged.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP confer_archive_refusals_total New escalations and calls refused because the archive could not be written.\n# TYPE confer_archive_refusals_total counter"
        );
        if let Ok(r) = i.refusals.lock() {
            for (what, n) in r.iter() {
                let _ = writeln!(out, "confer_archive_refusals_total{{what=\"{what}\"}} {n}");
            }
        }
        out
    }

    /// Waits (at most 5 s) for the follower to archive everything the journal held when
    /// called, then stops the background tasks and closes the store. What is left is
    /// archived at the next start.
    pub async fn close(&self) {
        let i = &self.inner;
        let target = i.journal.head();
        let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
        while i.position.load(Ordering::Acquire) < target {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    behind = self.lag(),
                    "archive: closing before the journal's last events were archived; \
                     they are archived at the next start"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        i.stop.send_replace(true);
        let tasks: Vec<_> = i
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        if let Some(store) = i.store.get() {
            store.close().await;
        }
    }
}

impl Inner {
    fn store_failed(&self, e: &dyn std::fmt::Display) {
        self.store_failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut d) = self.down_detail.lock() {
            *d = e.to_string();
        }
        if !self.down.swap(true, Ordering::AcqRel) {
            tracing::error!(error = %e, "archive cannot be written");
        }
    }

    fn store_ok(&self) {
        if self.down.swap(false, Ordering::AcqRel) {
            tracing::info!("archive writable");
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleeps `d`; true when asked to stop meanwhile. `wake_on_back`: the probe seeing
    /// the store back ends the sleep early.
    async fn pause(&self, d: Duration, wake_on_back: bool) -> bool {
        let mut stop = self.stop.subscribe();
        if *stop.borrow_and_update() {
            return true;
        }
        tokio::select! {
            _ = tokio::time::sleep(d) => false,
            _ = self.back.notified(), if wake_on_back => false,
            _ = stop.changed() => true,
        }
    }
}

/// Where the follower starts: the subscription, and the records the journal's state asks
/// for first (gap, reset).
struct Start {
    subscription: Subscription,
    after: u64,
    preface: Vec<Entry>,
}

/// The last record that carries a journal cursor (`details.event`), searching back from
/// the head; `None` for an archive without one.
pub(crate) async fn last_event_record(store: &ArchiveStore) -> Result<Option<Record>, StoreError> {
    let all = TimeRange {
        from: UnixMillis(i64::MIN),
        to: UnixMillis(i64::MAX),
    };
    let mut hi = store.head().await?.seq;
    let mut span: u64 = 16;
    while hi > 0 {
        let lo = hi.saturating_sub(span);
        let limit = u32::try_from(hi - lo).unwrap_or(u32::MAX);
        let page = store.read_page(all, lo, limit).await?;
        if let Some(r) = page
            .into_iter()
            .rev()
            .find(|r| r.details.get("event").and_then(Value::as_u64).is_some())
        {
            return Ok(Some(r));
        }
        hi = lo;
        span = (span * 4).min(4096);
    }
    Ok(None)
}

fn event_of(record: &Record) -> u64 {
    record
        .details
        .get("event")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

fn now_millis() -> UnixMillis {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    UnixMillis(ms)
}

/// The record of journal events `from..=to` that the journal purged before the archive
/// read them; its cursor is `to`.
fn gap_note(from: u64, to: u64) -> Entry {
    journal_note("journal_gap", to)
        .detail("missing_from", from)
        .detail("missing_to", to)
}

/// A record about the journal itself, carrying the cursor the follower continues from.
fn journal_note(label: &str, cursor: u64) -> Entry {
    let mut e = Entry::new(now_millis(), RecordKind::Other(label.into()));
    stamp(&mut e.details, cursor, "archive", label);
    e
}

/// Why the follower could not start yet.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("event journal: {0}")]
    Journal(JournalError),
}

async fn start_point(inner: &Inner, store: &ArchiveStore) -> Result<Start, StartError> {
    let mut after = last_event_record(store).await?.map_or(0, |r| event_of(&r));
    let mut preface = Vec::new();
    loop {
        match inner.journal.subscribe(Some(after)) {
            Ok(subscription) => {
                return Ok(Start {
                    subscription,
                    after,
                    preface,
                });
            }
            Err(JournalError::CursorExpired { oldest }) => {
                let to = oldest.saturating_sub(1);
                tracing::error!(
                    from = after + 1,
                    to,
                    "archive: the journal no longer holds these events; archiving a gap record"
                );
                preface.push(gap_note(after + 1, to));
                after = to;
            }
            Err(JournalError::CursorAhead { head }) => {
                tracing::error!(
                    archived_through = after,
                    journal_head = head,
                    "archive: the journal is behind the archive (replaced?); archiving from its start"
                );
                preface.push(
                    journal_note("journal_reset", 0)
                        .detail("archived_through", after)
                        .detail("journal_head", head),
                );
                after = 0;
            }
            Err(e) => return Err(StartError::Journal(e)),
        }
    }
}

/// The follower task: finds its start (retrying while the store is down), starts the
/// probe and the retention purge, then archives the journal's events in batches.
async fn follow(inner: Arc<Inner>, start: Option<Start>) {
    let mut backoff = BACKOFF_MIN;
    let (store, start) = loop {
        let store = match inner.store.get() {
            Some(s) => s.clone(),
            None => match ArchiveStore::open(&inner.options.store).await {
                Ok(s) => {
                    let s = Arc::new(s);
                    let _ = inner.store.set(s.clone());
                    s
                }
                Err(e) => {
                    inner.store_failed(&e);
                    if inner.pause(backoff, false).await {
                        return;
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            },
        };
        if let Some(start) = start {
            break (store, start);
        }
        match start_point(&inner, &store).await {
            Ok(s) => {
                inner.store_ok();
                break (store, s);
            }
            Err(e) => {
                inner.store_failed(&e);
                if inner.pause(backoff, false).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    };
    let probe = tokio::spawn(run_probe(inner.clone(), store.clone()));
    let mut tasks = vec![probe];
    if inner.options.retention_days > 0 {
        tasks.push(tokio::spawn(run_retention(inner.clone(), store.clone())));
    }
    if let Ok(mut t) = inner.tasks.lock() {
        t.extend(tasks);
    }

    let Start {
        subscription,
        after,
        preface,
    } = start;
    inner.position.store(after, Ordering::Release);
    inner.following.store(true, Ordering::Release);
    let (tx, mut rx) = mpsc::channel::<Item>(inner.options.read_ahead.max(1));
    let reader = tokio::spawn(read_journal(inner.journal.clone(), subscription, tx));
    let mut stop = inner.stop.subscribe();
    if !preface.is_empty() {
        inner
            .gaps
            .fetch_add(preface.len() as u64, Ordering::Relaxed);
        if !write(&inner, &store, preface).await {
            reader.abort();
            return;
        }
    }
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        let first = tokio::select! {
            biased;
            _ = stop.changed() => break,
            item = rx.recv() => match item {
                Some(item) => item,
                None => break,
            },
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let mut last = 0;
        let mut entries = Vec::new();
        for item in &batch {
            match item {
                Item::Event(ev) => {
                    last = ev.seq;
                    match map_event(ev) {
                        Mapped::Archive(entry) => {
                            if entry.kind.label() == UNARCHIVABLE {
                                inner.unarchivable.fetch_add(1, Ordering::Relaxed);
                            }
                            entries.push(entry);
                        }
                        Mapped::Skip(_) => {
                            inner.skipped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Item::Gap { from, to } => {
                    last = *to;
                    inner.gaps.fetch_add(1, Ordering::Relaxed);
                    entries.push(gap_note(*from, *to));
                }
            }
        }
        if !entries.is_empty() && !write(&inner, &store, entries).await {
            break;
        }
        inner.position.store(last, Ordering::Release);
    }
    reader.abort();
}

/// What the journal reader hands the follower.
enum Item {
    Event(Arc<Event>),
    /// Events `from..=to` were purged from the journal before the archive read them.
    Gap {
        from: u64,
        to: u64,
    },
}

/// Reads the journal into the follower's channel. It never cancels `next()` mid-way (only
/// its whole task ends), and the bounded channel leaves any backlog in the journal. A
/// subscription that expired (the journal's retention purged events the archive had not
/// read yet, after a long outage) continues after the purge with a gap item.
async fn read_journal(journal: Journal, mut subscription: Subscription, tx: mpsc::Sender<Item>) {
    loop {
        while let Some(ev) = subscription.next().await {
            if tx.send(Item::Event(ev)).await.is_err() {
                return;
            }
        }
        if !subscription.expired() {
            return; // the journal closed
        }
        let from = subscription.cursor() + 1;
        let mut after = subscription.cursor();
        subscription = loop {
            match journal.subscribe(Some(after)) {
                Ok(s) => break s,
                Err(JournalError::CursorExpired { oldest }) => after = oldest.saturating_sub(1),
                Err(e) => {
                    tracing::error!(error = %e, "archive: cannot follow the journal any more");
                    return;
                }
            }
        };
        tracing::error!(
            from,
            to = after,
            "archive: the journal purged these events before they were archived"
        );
        if after >= from && tx.send(Item::Gap { from, to: after }).await.is_err() {
            return;
        }
    }
}

/// Appends `entries` in one transaction, retrying until it succeeds; false when asked to
/// stop first.
async fn write(inner: &Inner, store: &ArchiveStore, mut entries: Vec<Entry>) -> bool {
    let mut backoff = BACKOFF_MIN;
    loop {
        match store.append_all(entries.clone()).await {
            Ok(records) => {
                inner
                    .records
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                inner.store_ok();
                return true;
            }
            Err(e) if e.is_invalid_entry() => {
                // Every entry was validated when made; should one still be refused, it is
                // archived as the record saying so rather than blocking the rest.
                for entry in &mut entries {
                    if let Err(why) = entry.validate() {
                        let seq = entry
                            .details
                            .get("event")
                            .and_then(Value::as_u64)
                            .unwrap_or(0);
                        let mut e = Entry::new(entry.at, RecordKind::Other(UNARCHIVABLE.into()))
                            .detail("error", truncated(&why.to_string(), 512));
                        stamp(&mut e.details, seq, "archive", UNARCHIVABLE);
                        *entry = e;
                    }
                }
            }
            Err(e) => {
                inner.store_failed(&e);
                if inner.pause(backoff, true).await {
                    return false;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                // A failure reported after the commit (a connection lost on COMMIT) must
                // not archive the batch twice: is its last entry the last record?
                if let (Ok(Some(last)), Some(mine)) =
                    (last_event_record(store).await, entries.last())
                    && same_entry(&last, mine)
                {
                    inner.store_ok();
                    return true;
                }
            }
        }
    }
}

fn same_entry(r: &Record, e: &Entry) -> bool {
    r.at == e.at
        && r.kind == e.kind
        && r.conversation == e.conversation
        && r.user == e.user
        && r.details == e.details
}

/// Probes the store every second while it is down (waking the follower when it is back)
/// and every 10 s while it is up.
async fn run_probe(inner: Arc<Inner>, store: Arc<ArchiveStore>) {
    loop {
        let every = if inner.down.load(Ordering::Acquire) {
            PROBE_WHILE_DOWN
        } else {
            PROBE_WHILE_UP
        };
        if inner.pause(every, false).await {
            return;
        }
        match store.probe_writable().await {
            Ok(()) => {
                inner.store_ok();
                inner.back.notify_waiters();
            }
            Err(e) => inner.store_failed(&e),
        }
    }
}

/// Purges records older than the retention, now and then daily.
async fn run_retention(inner: Arc<Inner>, store: Arc<ArchiveStore>) {
    let days = inner.options.retention_days;
    loop {
        if inner.stopping() {
            return;
        }
        let now = now_millis();
        let cutoff = now.plus_millis(-i64::from(days) * 86_400_000);
        match purge(&store, cutoff, now, &format!("retention {days}d")).await {
            Ok(Some(p)) => {
                inner.purged.fetch_add(p.purged, Ordering::Relaxed);
                tracing::info!(
                    purged = p.purged,
                    through = p.through_seq,
                    checkpoint = p.checkpoint_seq,
                    "archive retention"
                );
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "archive retention purge failed; retried tomorrow")
            }
        }
        if inner.pause(RETENTION_EVERY, false).await {
            return;
        }
    }
}

/// What a purge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Purged {
    pub purged: u64,
    pub through_seq: u64,
    pub checkpoint_seq: u64,
    /// The cutoff used: the one asked, or earlier to keep the follower's cursor record.
    pub cutoff: UnixMillis,
}

/// Purges the records before `cutoff`, never the record holding the follower's cursor.
pub(crate) async fn purge(
    store: &ArchiveStore,
    cutoff: UnixMillis,
    now: UnixMillis,
    policy: &str,
) -> Result<Option<Purged>, StoreError> {
    let cutoff = match last_event_record(store).await? {
        Some(r) => cutoff.min(r.at),
        None => cutoff,
    };
    let Some(checkpoint) = store.purge_before(cutoff, now, policy).await? else {
        return Ok(None);
    };
    let get = |k: &str| {
        checkpoint
            .details
            .get(k)
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Ok(Some(Purged {
        purged: get("purged"),
        through_seq: get("through_seq"),
        checkpoint_seq: checkpoint.seq,
        cutoff,
    }))
}

// ---------------------------------------------------------------------------------------
// confer archive
// ---------------------------------------------------------------------------------------

/// `confer archive`: check, export and purge the compliance archive named by the
/// configuration (`archive_url`, else `DATA_DIR/archive.db`).
#[derive(Args, Debug)]
#[command(after_help = "Settings (TOML key / environment variable, default):
  archive_url            CONFER_ARCHIVE_URL            DATA_DIR/archive.db (SQLite)
                         postgres://user@host/db for PostgreSQL, sqlite://PATH or a path
  archive_required       CONFER_ARCHIVE_REQUIRED       true: refuse new calls while the
                                                       archive cannot be written
  archive_retention_days CONFER_ARCHIVE_RETENTION_DAYS 0 (keep forever)
  data_dir               CONFER_DATA_DIR               confer-data
Times (T): RFC 3339 UTC such as 2026-11-26T10:00:00Z, or unix milliseconds.")]
pub struct ArchiveArgs {
    /// TOML configuration file (`CONFER_*` variables work too).
    #[arg(long, short, global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: ArchiveCommand,
}

#[derive(Subcommand, Debug)]
pub enum ArchiveCommand {
    /// Check every record's hash and link (and the checkpoint after a purge): prints a
    /// summary and exits 0, or names the first broken record and exits 1.
    Verify,
    /// Write the records of a time range as JSON lines (one record per line, with its
    /// hashes, so the export can be verified offline).
    Export {
        /// First time included (default: the beginning).
        #[arg(long)]
        from: Option<String>,
        /// First time excluded (default: the end).
        #[arg(long)]
        to: Option<String>,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Remove the records before a time, keeping the chain verifiable (a checkpoint
    /// record names the last removed record and its hash). The record holding the
    /// running server's journal cursor is always kept.
    Purge {
        /// Records before this time are removed.
        #[arg(long)]
        before: String,
    },
}

/// Runs `confer archive ...`.
pub fn run(args: ArchiveArgs) -> anyhow::Result<()> {
    let cfg = Config::load(args.config.as_deref())?;
    let store_config = cfg.archive_store();
    let where_ = match (&store_config.location, &cfg.archive_url) {
        (Location::Sqlite(path), _) => {
            if !path.exists() {
                bail!("no archive at {} (archive_url / data_dir)", path.display());
            }
            path.display().to_string()
        }
        (Location::Postgres(_), Some(url)) => url.redacted(),
        (Location::Postgres(_), None) => "PostgreSQL".into(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(async {
        let store = ArchiveStore::open(&store_config)
            .await
            .with_context(|| format!("opening the archive at {where_}"))?;
        let result = run_command(&store, args.command).await;
        store.close().await;
        result
    })
}

async fn run_command(store: &ArchiveStore, command: ArchiveCommand) -> anyhow::Result<()> {
    match command {
        ArchiveCommand::Verify => match store.verify().await {
            Ok(summary) => {
                let mut line = match (summary.first_seq, summary.records) {
                    (_, 0) | (None, _) => "archive verified: empty".to_owned(),
                    (Some(first), n) => format!(
                        "archive verified: {n} records, seq {first}..{}, head hash {}",
                        summary.head.seq, summary.head.hash
                    ),
                };
                if let Anchor::Checkpoint(c) = &summary.anchor {
                    line.push_str(&format!(
                        "; records through {} were purged (checkpoint seq {}, policy {:?})",
                        c.through_seq, c.checkpoint_seq, c.policy
                    ));
                }
                println!("{line}");
                Ok(())
            }
            Err(VerifyError::Broken(b)) => bail!("archive verification failed: {b}"),
            Err(VerifyError::Store(e)) => Err(e).context("reading the archive"),
        },
        ArchiveCommand::Export { from, to, out } => {
            let range = TimeRange {
                from: from
                    .as_deref()
                    .map(parse_time)
                    .transpose()?
                    .unwrap_or(UnixMillis(i64::MIN)),
                to: to
                    .as_deref()
                    .map(parse_time)
                    .transpose()?
                    .unwrap_or(UnixMillis(i64::MAX)),
            };
            if range.from > range.to {
                bail!("--from is after --to");
            }
            let n = match &out {
                Some(path) => {
                    let mut file = tokio::fs::File::create(path)
                        .await
                        .with_context(|| format!("creating {}", path.display()))?;
                    let n = store.export(range, &mut file).await?;
                    file.sync_all().await.context("writing the export")?;
                    n
                }
                None => store.export(range, &mut BlockingStdout).await?,
            };
            eprintln!("exported {n} records");
            Ok(())
        }
        ArchiveCommand::Purge { before } => {
            let cutoff = parse_time(&before)?;
            match purge(store, cutoff, now_millis(), "manual").await? {
                None => println!("nothing to purge before {}", cutoff.to_rfc3339()),
                Some(p) => {
                    if p.cutoff != cutoff {
                        println!(
                            "kept the records from {} on: the last archived event's record stays",
                            p.cutoff.to_rfc3339()
                        );
                    }
                    println!(
                        "purged {} records through seq {}; checkpoint is record {}",
                        p.purged, p.through_seq, p.checkpoint_seq
                    );
                }
            }
            Ok(())
        }
    }
}

/// Standard output for the export's writer. The binary's tokio has no `io-std`; the CLI
/// runs nothing else on its runtime, so blocking writes are fine here.
struct BlockingStdout;

impl tokio::io::AsyncWrite for BlockingStdout {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::io::Write;
        std::task::Poll::Ready(std::io::stdout().lock().write(buf))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::io::Write;
        std::task::Poll::Ready(std::io::stdout().lock().flush())
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

/// Unix milliseconds (digits only) or RFC 3339 (`2026-11-26T10:00:00Z`, with optional
/// fraction and a `Z` or `+hh:mm` offset).
pub(crate) fn parse_time(s: &str) -> anyhow::Result<UnixMillis> {
    let s = s.trim();
    let bad = || anyhow::anyhow!("{s:?} is neither RFC 3339 (2026-11-26T10:00:00Z) nor unix ms");
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<i64>().map(UnixMillis).map_err(|_| bad());
    }
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    if b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| -> anyhow::Result<i64> {
        let t = s.get(r).ok_or_else(bad)?;
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let mut rest = &s[19..];
    let mut ms = 0;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let mut scaled = 0i64;
        for (i, c) in frac[..digits].bytes().take(3).enumerate() {
            scaled += i64::from(c - b'0') * [100, 10, 1][i];
        }
        ms = scaled;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && matches!(rest.as_bytes()[0], b'+' | b'-')
            && rest.as_bytes()[3] == b':' =>
        {
            let h = num_in(rest, 1..3).ok_or_else(bad)?;
            let m = num_in(rest, 4..6).ok_or_else(bad)?;
            if h > 23 || m > 59 {
                return Err(bad());
            }
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (h * 60 + m)
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Ok(UnixMillis(secs * 1000 + ms))
}

fn num_in(s: &str, r: std::ops::Range<usize>) -> Option<i64> {
    let t = s.get(r)?;
    t.bytes()
        .all(|c| c.is_ascii_digit())
        .then(|| t.parse().ok())?
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (the era-based conversion).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The archive-store crate's test harness: a SQLite file in a temporary directory, or a
/// throwaway PostgreSQL cluster (initdb/pg_ctl as the postgres user), with real outages of
/// each (a stopped server, a read-only or locked file).
#[cfg(test)]
#[path = "../archive-store/tests/common/mod.rs"]
mod test_db;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::JournalConfig;
    use confer_signalling::directory::Timestamp;
    use serde_json::json;

    use super::test_db as db;
    use db::TestDb;

    /// 2026-11-26T08:00:00Z
    const T0: u64 = 1_795_680_000_000;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("a test body is an object"),
        }
    }

    fn event(seq: u64, source: &str, kind: &str, b: Value) -> Event {
        Event {
            seq,
            at: Timestamp::from_millis(T0 + seq),
            source: source.into(),
            kind: kind.into(),
            body: body(b),
        }
    }

    fn archived(ev: &Event) -> Entry {
        match map_event(ev) {
            Mapped::Archive(e) => e,
            Mapped::Skip(why) => panic!("{}/{} skipped: {why}", ev.source, ev.kind),
        }
    }

    #[test]
    fn every_listed_kind_maps_to_its_record_kind_with_its_cursor() {
        let expected: &[(&str, &str, &str)] = &[
            ("room", "created", "call_started"),
            ("room", "ended", "call_ended"),
            ("room", "joined", "joined"),
            ("room", "left", "left"),
            ("room", "kicked", "left"),
            ("room", "muted", "muted"),
            ("room", "unmuted", "unmuted"),
            ("room", "locked", "locked"),
            ("room", "unlocked", "unlocked"),
            ("room", "recording_started", "recording"),
            ("room", "recording_stopped", "recording"),
            ("room", "dial_trying", "dial_out"),
            ("room", "dial_ringing", "alerting"),
            ("room", "dial_answered", "alerting"),
            ("room", "dial_failed", "alerting"),
            ("room", "dial_hung_up", "call_ended"),
            ("call", "started", "conversation_started"),
            ("call", "invited", "invited"),
            ("call", "ringing", "alerting"),
            ("call", "answered", "alerting"),
            ("call", "ring_cancelled", "alerting"),
            ("call", "declined", "alerting"),
            ("call", "ring_failed", "alerting"),
            ("call", "fell_back_to_pstn", "invited"),
            ("call", "dialling_pstn", "dial_out"),
            ("call", "dial_out_refused", "policy_decision"),
            ("call", "dial_in_offered", "invited"),
            ("call", "joined", "joined"),
            ("call", "left", "left"),
            ("call", "modality_changed", "modality_changed"),
            ("call", "media_changed", "modality_changed"),
            ("call", "ended", "conversation_ended"),
            ("sip", "dial_in", "dial_in"),
            ("sip", "pin", "pin_entry"),
            ("sip", "call_refused", "policy_decision"),
            ("policy", "refused", "policy_decision"),
            ("policy", "allowed_with_notice", "policy_decision"),
        ];
        for (i, (source, kind, label)) in expected.iter().enumerate() {
            let seq = 100 + i as u64;
            let ev = event(seq, source, kind, json!({"room": 7, "outcome": "accepted"}));
            let e = archived(&ev);
            assert_eq!(e.kind.label(), *label, "{source}/{kind}");
            assert!(
                !matches!(e.kind, RecordKind::Other(_))
                    || ["muted", "unmuted", "locked", "unlocked"].contains(label)
            );
            assert_eq!(e.details["event"], json!(seq), "{source}/{kind}");
            assert_eq!(e.details["source"], json!(source));
            assert_eq!(e.details["kind"], json!(kind));
            assert_eq!(e.conversation.as_deref(), Some("room:7"), "{source}/{kind}");
            assert_eq!(e.at, UnixMillis((T0 + seq) as i64));
            assert_eq!(e.validate(), Ok(()));
        }
        // Every archived rule of the table is in the list above.
        let listed = RULES
            .iter()
            .filter(|(_, _, to)| !matches!(to, To::Skip(_)))
            .count();
        assert_eq!(listed, expected.len());
    }

    #[test]
    fn the_steps_of_an_escalation_keep_who_how_and_why() {
        let ring = archived(&event(
            1,
            "call",
            "ringing",
            json!({"conversation": "chat-42", "leg": 3, "invitee": {"user": "alice"},
                   "device": "alice-mobile", "media": "audio"}),
        ));
        assert_eq!(ring.conversation.as_deref(), Some("chat-42"));
        assert_eq!(ring.user.as_deref(), Some("alice"));
        assert_eq!(ring.details["outcome"], json!("ringing"));
        assert_eq!(ring.details["device"], json!("alice-mobile"));
        let refused = archived(&event(
            2,
            "call",
            "dial_out_refused",
            json!({"conversation": "chat-42", "invitee": {"user": "bob"},
                   "number": "+19005550100", "reason": "premium-rate prefix blocked"}),
        ));
        assert_eq!(refused.details["outcome"], json!("refused"));
        assert_eq!(refused.details["activity"], json!("dial_out"));
        assert_eq!(
            refused.details["reason"],
            json!("premium-rate prefix blocked")
        );
        assert_eq!(refused.user.as_deref(), Some("bob"));
        let policy = archived(&event(
            3,
            "policy",
            "refused",
            json!({"what": "escalate_video", "who": "carol", "rule": "groups.contractors.escalate",
                   "reason": "contractors may not escalate to video"}),
        ));
        assert_eq!(policy.kind, RecordKind::PolicyDecision);
        assert_eq!(policy.user.as_deref(), Some("carol"));
        assert_eq!(policy.details["activity"], json!("escalate_video"));
        assert_eq!(policy.details["rule"], json!("groups.contractors.escalate"));
        let modality = archived(&event(
            4,
            "call",
            "modality_changed",
            json!({"conversation": "chat-42", "from": "voice", "to": "video"}),
        ));
        assert_eq!(
            (
                modality.details["from"].clone(),
                modality.details["to"].clone()
            ),
            (json!("voice"), json!("video"))
        );
        let dial_in = archived(&event(
            5,
            "sip",
            "dial_in",
            json!({"caller": "+15550100", "called": "+15550199", "room": 9}),
        ));
        assert_eq!(dial_in.details["caller_number"], json!("+15550100"));
        assert_eq!(dial_in.details["called_number"], json!("+15550199"));
        assert_eq!(dial_in.conversation.as_deref(), Some("room:9"));
        let kicked = archived(&event(
            6,
            "room",
            "kicked",
            json!({"room": 9, "participant": 4}),
        ));
        assert_eq!(
            (kicked.kind.clone(), kicked.details["reason"].clone()),
            (RecordKind::Left, json!("kicked"))
        );
    }

    #[test]
    fn a_pin_never_reaches_the_archive_whatever_the_body_holds() {
        let ev = event(
            9,
            "sip",
            "pin",
            json!({"outcome": "rejected", "attempt": 2, "pin": "482913", "digits": "482913",
                   "entered": "482913", "caller": "+15550100", "room": 3}),
        );
        let e = archived(&ev);
        assert_eq!(e.kind, RecordKind::PinEntry);
        assert_eq!(e.details["outcome"], json!("rejected"));
        assert_eq!(e.details["attempt"], json!(2));
        assert_eq!(e.details["caller"], json!("+15550100"));
        let sealed = confer_signalling::archive::ChainHead::EMPTY
            .seal(e)
            .unwrap();
        assert!(
            !sealed.to_json_line().contains("482913"),
            "{}",
            sealed.to_json_line()
        );
        let locked = archived(&event(
            10,
            "sip",
            "pin",
            json!({"outcome": "locked_out", "attempts": 3}),
        ));
        assert_eq!(locked.details["outcome"], json!("locked_out"));
        assert_eq!(locked.details["attempt"], json!(3));
        // Elsewhere too: secrets are dropped at any depth, the rest is kept.
        let joined = archived(&event(
            11,
            "room",
            "joined",
            json!({"room": 3, "user": "alice", "client": {"name": "confer-web", "join_token": "eyJ.x",
                   "auth": {"Password": "hunter2"}}, "room_pin": "1234", "join_url": "https://x/?t=abc"}),
        ));
        let text = serde_json::to_string(&joined.details).unwrap();
        for secret in ["eyJ.x", "hunter2", "1234", "abc"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert_eq!(joined.details["client"]["name"], json!("confer-web"));
        assert_eq!(joined.user.as_deref(), Some("alice"));
    }

    #[test]
    fn floats_become_integer_milliseconds_or_decimal_text() {
        let e = archived(&event(
            1,
            "room",
            "joined",
            json!({"room": 1, "media_time_ms": 1234.6, "mos": 4.25, "nested": [{"offset_ms": 0.4}]}),
        ));
        assert_eq!(e.details["media_time_ms"], json!(1235));
        assert_eq!(e.details["mos"], json!("4.25"));
        assert_eq!(e.details["nested"][0]["offset_ms"], json!(0));
        assert_eq!(e.validate(), Ok(()));
    }

    #[test]
    fn talking_digits_prompts_deafening_presence_and_unknown_sources_are_not_archived() {
        for (source, kind) in [
            ("room", "started_talking"),
            ("room", "stopped_talking"),
            ("room", "digit"),
            ("room", "playback_finished"),
            ("room", "deafened"),
            ("room", "undeafened"),
            ("call", "late_input_ignored"),
            ("presence", "changed"),
            ("presence", "anything"),
            ("registrar", "registered"),
        ] {
            assert!(
                matches!(
                    map_event(&event(1, source, kind, json!({"digit": "5"}))),
                    Mapped::Skip(_)
                ),
                "{source}/{kind}"
            );
        }
        // An unknown kind of an archived source is kept, under a label of its own.
        let e = archived(&event(2, "room", "Hand-Raised", json!({"room": 1})));
        assert_eq!(e.kind, RecordKind::Other("room_hand_raised".into()));
    }

    #[test]
    fn an_event_the_archive_refuses_becomes_a_record_saying_so() {
        let long = "c".repeat(MAX_ID_BYTES + 1);
        let e = archived(&event(
            5,
            "call",
            "started",
            json!({"conversation": long, "modality": "voice"}),
        ));
        assert_eq!(e.kind, RecordKind::Other(UNARCHIVABLE.into()));
        assert_eq!(e.conversation, None);
        assert_eq!(e.details["event"], json!(5));
        assert_eq!(e.details["kind"], json!("started"));
        assert!(
            e.details["error"]
                .as_str()
                .unwrap()
                .contains("conversation"),
            "{:?}",
            e.details
        );
        let huge = archived(&event(
            6,
            "room",
            "joined",
            json!({"room": 2, "blob": "x".repeat(70_000)}),
        ));
        assert_eq!(huge.kind, RecordKind::Other(UNARCHIVABLE.into()));
        assert_eq!(huge.conversation.as_deref(), Some("room:2"));
        assert_eq!(huge.validate(), Ok(()));
    }

    #[test]
    fn times_are_read_as_rfc3339_utc_or_unix_milliseconds() {
        let t = |s: &str| parse_time(s).map(|t| t.0).ok();
        assert_eq!(t("2026-11-26T08:00:00Z"), Some(1_795_680_000_000));
        assert_eq!(t("2026-11-26T08:00:00.123Z"), Some(1_795_680_000_123));
        assert_eq!(t("2026-11-26T09:30:00+01:30"), Some(1_795_680_000_000));
        assert_eq!(t("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(t("1795680000000"), Some(1_795_680_000_000));
        for bad in [
            "",
            "yesterday",
            "2026-02-30T00:00:00Z",
            "2026-11-26T08:00:00",
            "2026-11-26T24:00:00Z",
            "2026-11-26T08:00:00.Z",
            "-5",
        ] {
            assert_eq!(t(bad), None, "{bad}");
        }
    }

    // ---- the follower, on real databases ----

    /// A journal (in memory: the archive's cursor lives in the archive) and the events the
    /// test appended to it; event `n` is stamped `T0 + n` ms.
    struct Events {
        journal: Journal,
        n: u64,
    }

    impl Events {
        async fn new() -> Events {
            let journal = Journal::open(&JournalConfig::default())
                .await
                .expect("journal");
            Events { journal, n: 0 }
        }

        fn add(&mut self, source: &str, kind: &str, b: Value) {
            self.n += 1;
            let at = Timestamp::from_millis(T0 + self.n);
            self.journal.append(source, kind, at, body(b));
        }

        /// Waits until the journal committed every event added and `archive` followed.
        async fn archived_by(&self, archive: &Archive) {
            let n = self.n;
            until("the journal's commit", || self.journal.head() == n).await;
            until("the archive following", || archive.lag() == 0).await;
        }
    }

    fn options(db: &TestDb, required: bool) -> ArchiveOptions {
        ArchiveOptions {
            store: db.config().clone(),
            required,
            retention_days: 0,
            read_ahead: READ_AHEAD,
        }
    }

    /// Waits (at most 20 s) until `cond` holds.
    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every record, in chain order, after verifying the chain.
    async fn archived_records(db: &TestDb) -> Vec<Record> {
        let store = db.open().await;
        let all = TimeRange {
            from: UnixMillis(i64::MIN),
            to: UnixMillis(i64::MAX),
        };
        let records = store.read_range(all).await.expect("read the archive");
        store.verify().await.expect("the chain verifies");
        store.close().await;
        records
    }

    /// The `event` of every record, in chain order.
    async fn archived_events(db: &TestDb) -> Vec<u64> {
        let records = archived_records(db).await;
        records
            .iter()
            .filter_map(|r| r.details.get("event")?.as_u64())
            .collect()
    }

    /// Checks that the records account for journal events `1..=head` exactly once each:
    /// as a record of the event, or inside one `journal_gap` record's range.
    fn accounts_for_every_event(records: &[Record], head: u64) -> u64 {
        let mut next = 1;
        let mut gaps = 0;
        for r in records {
            if r.kind == RecordKind::Other("journal_gap".into()) {
                assert_eq!(r.details["missing_from"], json!(next), "{r:?}");
                next = r.details["missing_to"].as_u64().unwrap() + 1;
                assert_eq!(event_of(r), next - 1);
                gaps += 1;
            } else {
                assert_eq!(event_of(r), next, "{r:?}");
                next += 1;
            }
        }
        assert_eq!(next, head + 1);
        gaps
    }

    fn small_journal() -> JournalConfig {
        JournalConfig {
            max_events: 5,
            ..JournalConfig::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_the_journal_purged_before_a_restart_are_recorded_as_a_gap() {
        let db = TestDb::sqlite().await;
        let journal = Journal::open(&small_journal()).await.unwrap();
        let mut ev = Events { journal, n: 0 };
        ev.add("room", "created", json!({"room": 1}));
        ev.add("room", "joined", json!({"room": 1, "participant": 1}));
        let journal = ev.journal.clone();
        let open = || Archive::open_with(options(&db, true), journal.clone());
        let archive = open().await.unwrap();
        ev.archived_by(&archive).await;
        archive.close().await;
        for p in 2..22 {
            ev.add("room", "joined", json!({"room": 1, "participant": p}));
        }
        until("the journal's commit", || ev.journal.head() == ev.n).await;
        let archive = open().await.unwrap();
        ev.archived_by(&archive).await;
        assert!(
            archive
                .metrics_text()
                .contains("confer_archive_journal_gaps_total 1\n")
        );
        archive.close().await;
        let records = archived_records(&db).await;
        assert_eq!(accounts_for_every_event(&records, 22), 1);
        assert_eq!(
            records.iter().map(event_of).collect::<Vec<_>>(),
            [1, 2, 17, 18, 19, 20, 21, 22]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_the_journal_purged_during_an_outage_are_recorded_as_a_gap() {
        let mut db = TestDb::sqlite().await;
        let journal = Journal::open(&small_journal()).await.unwrap();
        let mut ev = Events { journal, n: 0 };
        let opts = ArchiveOptions {
            read_ahead: 1,
            ..options(&db, true)
        };
        let archive = Archive::open_with(opts, ev.journal.clone()).await.unwrap();
        ev.add("room", "created", json!({"room": 1}));
        ev.archived_by(&archive).await;
        db.outage_begin().await;
        for p in 1..40 {
            ev.add("room", "joined", json!({"room": 1, "participant": p}));
        }
        until("the archive seen down", || {
            archive.check_writable().is_err()
        })
        .await;
        until("the journal's commit", || ev.journal.head() == ev.n).await;
        db.outage_end().await;
        ev.archived_by(&archive).await;
        archive.close().await;
        let records = archived_records(&db).await;
        assert!(accounts_for_every_event(&records, 40) >= 1, "{records:?}");
    }

    async fn archives_events_and_resumes_exactly_after_the_last_one(db: TestDb) {
        let mut ev = Events::new().await;
        ev.add("room", "created", json!({"room": 1}));
        ev.add("room", "joined", json!({"room": 1, "user": "alice"}));
        ev.add("room", "started_talking", json!({"room": 1}));
        ev.add("presence", "changed", json!({"user": "alice"}));
        ev.add("room", "left", json!({"room": 1, "user": "alice"}));
        let journal = ev.journal.clone();
        let open = || Archive::open_with(options(&db, true), journal.clone());
        let archive = open().await.unwrap();
        ev.archived_by(&archive).await;
        assert_eq!(archive.check_writable(), Ok(()));
        ev.add("room", "joined", json!({"room": 1, "user": "bob"}));
        ev.archived_by(&archive).await;
        archive.close().await;
        assert_eq!(archived_events(&db).await, [1, 2, 5, 6], "{}", db.name());
        let metrics = archive.metrics_text();
        assert!(
            metrics.contains("confer_archive_records_total 4\n"),
            "{metrics}"
        );
        assert!(
            metrics.contains("confer_archive_events_skipped_total 2\n"),
            "{metrics}"
        );

        // Events while the archive is closed are archived after a reopen, once.
        ev.add("room", "muted", json!({"room": 1, "user": "bob"}));
        ev.add("room", "stopped_talking", json!({"room": 1}));
        ev.add("room", "ended", json!({"room": 1}));
        until("the journal's commit", || ev.journal.head() == ev.n).await;
        let archive = open().await.unwrap();
        ev.archived_by(&archive).await;
        archive.close().await;
        let archive = open().await.unwrap();
        ev.archived_by(&archive).await;
        archive.close().await;
        assert_eq!(
            archived_events(&db).await,
            [1, 2, 5, 6, 7, 9],
            "{}",
            db.name()
        );
    }

    async fn an_outage_refuses_new_calls_and_loses_nothing(mut db: TestDb) {
        let mut ev = Events::new().await;
        let archive = Archive::open_with(options(&db, true), ev.journal.clone())
            .await
            .unwrap();
        ev.add(
            "call",
            "started",
            json!({"conversation": "c1", "modality": "voice"}),
        );
        ev.add(
            "call",
            "joined",
            json!({"conversation": "c1", "participant": {"user": "alice"}}),
        );
        ev.archived_by(&archive).await;
        assert_eq!(archive.check_writable(), Ok(()));

        let read_only = matches!(db.backend, db::Backend::Sqlite) && db.make_read_only();
        if !read_only {
            db.outage_begin().await;
        }
        // The ongoing call goes on; its next record cannot be written.
        ev.add(
            "call",
            "joined",
            json!({"conversation": "c1", "participant": {"user": "bob"}}),
        );
        until("the archive seen down", || {
            archive.check_writable().is_err()
        })
        .await;
        let refusal = archive.check_writable().unwrap_err();
        assert_eq!(refusal.reason, "archive_unavailable", "{refusal}");
        archive.count_refusal("escalation");
        archive.count_refusal("escalation");
        for who in ["carol", "dave"] {
            ev.add(
                "call",
                "joined",
                json!({"conversation": "c1", "participant": {"user": who}}),
            );
        }
        ev.add(
            "call",
            "ended",
            json!({"conversation": "c1", "reason": "requested"}),
        );
        until("the journal's commit", || ev.journal.head() == ev.n).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(archive.lag(), 4, "{}", db.name());
        assert!(
            archive
                .metrics_text()
                .contains("confer_archive_writable 0\n")
        );

        if read_only {
            db.make_writable();
        } else {
            db.outage_end().await;
        }
        until("the archive back", || archive.check_writable().is_ok()).await;
        ev.archived_by(&archive).await;
        let metrics = archive.metrics_text();
        archive.close().await;
        assert_eq!(
            archived_events(&db).await,
            [1, 2, 3, 4, 5, 6],
            "{}",
            db.name()
        );
        assert!(
            metrics.contains("confer_archive_refusals_total{what=\"escalation\"} 2\n"),
            "{metrics}"
        );
        assert!(metrics.contains("confer_archive_writable 1\n"), "{metrics}");
        assert!(
            !metrics.contains("confer_archive_store_failures_total 0\n"),
            "{metrics}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_archives_events_and_resumes_exactly_after_the_last_one() {
        archives_events_and_resumes_exactly_after_the_last_one(TestDb::sqlite().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_read_only_refuses_new_calls_and_loses_nothing() {
        an_outage_refuses_new_calls_and_loses_nothing(TestDb::sqlite().await).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_archives_events_and_resumes_exactly_after_the_last_one() {
        let Some(db) = TestDb::postgres().await else {
            return;
        };
        archives_events_and_resumes_exactly_after_the_last_one(db).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_stopped_refuses_new_calls_and_loses_nothing() {
        let Some(db) = TestDb::postgres_dedicated().await else {
            return;
        };
        an_outage_refuses_new_calls_and_loses_nothing(db).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_archive_starts_down_and_refuses_only_when_required() {
        let journal = Events::new().await.journal;
        let unreachable = |required| ArchiveOptions {
            store: StoreConfig::sqlite("/proc/confer-no-such-dir/archive.db"),
            required,
            retention_days: 0,
            read_ahead: READ_AHEAD,
        };
        let required = Archive::open_with(unreachable(true), journal.clone())
            .await
            .unwrap();
        let refusal = required.check_writable().unwrap_err();
        assert_eq!(refusal.reason, "archive_unavailable");
        assert!(refusal.detail.contains("archive"), "{refusal}");
        required.close().await;
        let optional = Archive::open_with(unreachable(false), journal.clone())
            .await
            .unwrap();
        assert_eq!(optional.check_writable(), Ok(()));
        assert!(
            optional
                .metrics_text()
                .contains("confer_archive_writable 0\n")
        );
        optional.close().await;
        let bad_url = ArchiveOptions {
            store: StoreConfig::postgres("postgres://x:y@[bad"),
            required: true,
            retention_days: 0,
            read_ahead: READ_AHEAD,
        };
        assert!(Archive::open_with(bad_url, journal).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_never_purges_the_cursor_and_the_chain_still_verifies() {
        let db = TestDb::sqlite().await;
        let mut ev = Events::new().await;
        for i in 0..5 {
            ev.add("room", "joined", json!({"room": 1, "participant": i}));
        }
        let journal = ev.journal.clone();
        let open = || Archive::open_with(options(&db, true), journal.clone());
        let archive = open().await.unwrap();
        ev.archived_by(&archive).await;
        archive.close().await;
        // Every record is older than a cutoff of now: all but the cursor's record go.
        let store = db.open().await;
        let now = now_millis();
        let p = purge(&store, now, now, "test")
            .await
            .unwrap()
            .expect("a purge");
        assert_eq!((p.purged, p.through_seq, p.checkpoint_seq), (4, 4, 6));
        assert_eq!(p.cutoff, UnixMillis((T0 + 5) as i64));
        assert_eq!(purge(&store, now, now, "test").await.unwrap(), None);
        store.close().await;
        ev.add("room", "left", json!({"room": 1, "participant": 0}));
        until("the journal's commit", || ev.journal.head() == ev.n).await;
        let archive = open().await.unwrap();
        ev.archived_by(&archive).await;
        archive.close().await;
        assert_eq!(archived_events(&db).await, [5, 6]);
    }
}
