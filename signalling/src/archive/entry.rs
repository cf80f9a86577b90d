//! What callers archive: an [`Entry`] of one [`RecordKind`], with typed constructors for
//! the kinds whose details matter to compliance, and the validation every entry passes
//! before it is sealed.

use serde_json::{Map, Value};

use super::canonical;
use super::record::UnixMillis;

/// Longest conversation id or user id, in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Longest details object, as canonical JSON bytes.
pub const MAX_DETAILS_BYTES: usize = 64 * 1024;
/// Deepest nesting of arrays and objects in details.
const MAX_DEPTH: usize = 16;
/// Detail keys that name secrets: an entry carrying one is refused (case-insensitive).
const SECRET_KEYS: &[&str] = &[
    "pin",
    "password",
    "passwd",
    "secret",
    "token",
    "authorization",
    "api_key",
    "credentials",
];

/// What a record is about. A small closed set; the details say the rest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A conversation became a call (an escalation): who asked, from which IM server,
    /// which modality.
    ConversationStarted,
    ConversationEnded,
    /// A single call not tied to a conversation (a dial-in, a PBX call): start.
    CallStarted,
    CallEnded,
    /// Someone was invited, and how they were offered to join (devices, PSTN, dial-in).
    Invited,
    /// A device alerted, answered, was cancelled or did not answer (`outcome`).
    Alerting,
    /// A participant joined, on which device and client.
    Joined,
    Left,
    /// Voice to video and back, for whom.
    ModalityChanged,
    /// A caller reached confer from the PSTN: caller and called numbers.
    DialIn,
    /// confer called out: the number and why (fallback, invitation).
    DialOut,
    /// A PIN was entered: whether it was accepted, never the digits.
    PinEntry,
    /// A recording started or stopped, and its file.
    Recording,
    /// A policy decision: what was refused (or allowed with a notice) and why.
    PolicyDecision,
    /// Retention removed older records; made only by
    /// [`ChainHead::seal_checkpoint`](super::ChainHead::seal_checkpoint).
    Checkpoint,
    /// A kind this version does not know (written by a newer confer): kept and verified
    /// by its label.
    Other(String),
}

impl RecordKind {
    const KNOWN: [(RecordKind, &'static str); 15] = [
        (RecordKind::ConversationStarted, "conversation_started"),
        (RecordKind::ConversationEnded, "conversation_ended"),
        (RecordKind::CallStarted, "call_started"),
        (RecordKind::CallEnded, "call_ended"),
        (RecordKind::Invited, "invited"),
        (RecordKind::Alerting, "alerting"),
        (RecordKind::Joined, "joined"),
        (RecordKind::Left, "left"),
        (RecordKind::ModalityChanged, "modality_changed"),
        (RecordKind::DialIn, "dial_in"),
        (RecordKind::DialOut, "dial_out"),
        (RecordKind::PinEntry, "pin_entry"),
        (RecordKind::Recording, "recording"),
        (RecordKind::PolicyDecision, "policy_decision"),
        (RecordKind::Checkpoint, "checkpoint"),
    ];

    /// The stable label stored and hashed (`snake_case`).
    pub fn label(&self) -> &str {
        if let RecordKind::Other(label) = self {
            return label;
        }
        Self::KNOWN
            .iter()
            .find(|(k, _)| k == self)
            .map_or("", |(_, label)| label)
    }

    /// The kind of a stored label; unknown labels become [`RecordKind::Other`].
    pub fn from_label(label: &str) -> RecordKind {
        Self::KNOWN
            .iter()
            .find(|(_, l)| *l == label)
            .map_or_else(|| RecordKind::Other(label.to_owned()), |(k, _)| k.clone())
    }
}

/// The device and client a participant used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo<'a> {
    pub id: &'a str,
    /// `browser`, `mobile`, `desktop`, `desk_phone`, `pstn`, ...
    pub kind: &'a str,
    /// The client's name and version (user agent), when known.
    pub client: Option<&'a str>,
}

/// The result of one PIN entry. The digits are never part of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinOutcome {
    Accepted {
        attempt: u32,
    },
    Rejected {
        attempt: u32,
    },
    /// Too many wrong attempts: the caller was disconnected.
    LockedOut {
        attempts: u32,
    },
}

/// What a policy decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyOutcome {
    Refused,
    /// Allowed, with a notice to the user (e.g. an old client version).
    AllowedWithNotice,
}

/// An archive record before it is sealed into the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub at: UnixMillis,
    pub kind: RecordKind,
    /// The conversation or call the record belongs to.
    pub conversation: Option<String>,
    /// The user concerned (the actor, or the participant), when there is one.
    pub user: Option<String>,
    /// Everything else, as a JSON object; see [`Entry::validate`].
    pub details: Map<String, Value>,
}

impl Entry {
    pub fn new(at: UnixMillis, kind: RecordKind) -> Self {
        Entry {
            at,
            kind,
            conversation: None,
            user: None,
            details: Map::new(),
        }
    }

    #[must_use]
    pub fn conversation(mut self, id: impl Into<String>) -> Self {
        self.conversation = Some(id.into());
        self
    }

    #[must_use]
    pub fn user(mut self, id: impl Into<String>) -> Self {
        self.user = Some(id.into());
        self
    }

    /// Adds (or replaces) one detail.
    #[must_use]
    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// Adds `device: {id, kind, client}`.
    #[must_use]
    pub fn device(self, device: DeviceInfo<'_>) -> Self {
        let mut d = Map::new();
        d.insert("id".into(), device.id.into());
        d.insert("kind".into(), device.kind.into());
        if let Some(client) = device.client {
            d.insert("client".into(), client.into());
        }
        self.detail("device", Value::Object(d))
    }

    /// A PIN entry on a conversation's dial-in: only the outcome and attempt number.
    pub fn pin_entry(at: UnixMillis, conversation: &str, outcome: PinOutcome) -> Self {
        let (label, attempt) = match outcome {
            PinOutcome::Accepted { attempt } => ("accepted", attempt),
            PinOutcome::Rejected { attempt } => ("rejected", attempt),
            PinOutcome::LockedOut { attempts } => ("locked_out", attempts),
        };
        Entry::new(at, RecordKind::PinEntry)
            .conversation(conversation)
            .detail("outcome", label)
            .detail("attempt", attempt)
    }

    /// A policy decision: the activity concerned (`escalate_video`, `dial_out`,
    /// `client_connect`, `recording`, ...) and the reason given to the user.
    pub fn policy_decision(
        at: UnixMillis,
        outcome: PolicyOutcome,
        activity: &str,
        reason: &str,
    ) -> Self {
        let label = match outcome {
            PolicyOutcome::Refused => "refused",
            PolicyOutcome::AllowedWithNotice => "allowed_with_notice",
        };
        Entry::new(at, RecordKind::PolicyDecision)
            .detail("outcome", label)
            .detail("activity", activity)
            .detail("reason", reason)
    }

    /// A modality change (`voice`, `video`, ...).
    pub fn modality_changed(at: UnixMillis, conversation: &str, from: &str, to: &str) -> Self {
        Entry::new(at, RecordKind::ModalityChanged)
            .conversation(conversation)
            .detail("from", from)
            .detail("to", to)
    }

    /// A PSTN caller reached confer.
    pub fn dial_in(at: UnixMillis, conversation: &str, caller: &str, called: &str) -> Self {
        Entry::new(at, RecordKind::DialIn)
            .conversation(conversation)
            .detail("caller_number", caller)
            .detail("called_number", called)
    }

    /// confer called a number; `reason` is e.g. `no_device_answered` or `invited`.
    pub fn dial_out(at: UnixMillis, conversation: &str, number: &str, reason: &str) -> Self {
        Entry::new(at, RecordKind::DialOut)
            .conversation(conversation)
            .detail("number", number)
            .detail("reason", reason)
    }

    /// A recording `started` or `stopped`, and its file.
    pub fn recording(at: UnixMillis, conversation: &str, action: &str, file: &str) -> Self {
        Entry::new(at, RecordKind::Recording)
            .conversation(conversation)
            .detail("action", action)
            .detail("file", file)
    }

    /// Checks what sealing requires: ids at most [`MAX_ID_BYTES`], details at most
    /// [`MAX_DETAILS_BYTES`] of canonical JSON and 16 levels deep, no floats, no key that
    /// names a secret, a known kind or a `snake_case` label of at most 64 bytes, and not
    /// [`RecordKind::Checkpoint`] (retention makes those).
    pub fn validate(&self) -> Result<(), EntryError> {
        match &self.kind {
            RecordKind::Checkpoint => return Err(EntryError::ReservedKind),
            RecordKind::Other(label) => {
                let ok = !label.is_empty()
                    && label.len() <= 64
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
                if !ok {
                    return Err(EntryError::BadKindLabel);
                }
            }
            _ => {}
        }
        for (field, value) in [("conversation", &self.conversation), ("user", &self.user)] {
            if value.as_ref().is_some_and(|v| v.len() > MAX_ID_BYTES) {
                return Err(EntryError::TooLong(field));
            }
        }
        check_map(&self.details, "details", 1)?;
        let bytes = canonical::json_object(&self.details).len();
        if bytes > MAX_DETAILS_BYTES {
            return Err(EntryError::TooLarge(bytes));
        }
        Ok(())
    }
}

fn check_map(map: &Map<String, Value>, path: &str, depth: usize) -> Result<(), EntryError> {
    if depth > MAX_DEPTH {
        return Err(EntryError::TooDeep);
    }
    for (key, value) in map {
        if SECRET_KEYS.iter().any(|s| key.eq_ignore_ascii_case(s)) {
            return Err(EntryError::SecretKey(format!("{path}.{key}")));
        }
        check_value(value, &format!("{path}.{key}"), depth)?;
    }
    Ok(())
}

fn check_value(value: &Value, path: &str, depth: usize) -> Result<(), EntryError> {
    match value {
        Value::Number(n) if n.as_i64().is_none() && n.as_u64().is_none() => {
            Err(EntryError::Float(path.to_owned()))
        }
        Value::Object(map) => check_map(map, path, depth + 1),
        Value::Array(items) => {
            if depth + 1 > MAX_DEPTH {
                return Err(EntryError::TooDeep);
            }
            items
                .iter()
                .enumerate()
                .try_for_each(|(i, v)| check_value(v, &format!("{path}[{i}]"), depth + 1))
        }
        _ => Ok(()),
    }
}

/// Why an entry cannot be archived. A caller error: retrying does not help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("{0} is longer than {MAX_ID_BYTES} bytes")]
    TooLong(&'static str),
    #[error("details are {0} bytes, more than {MAX_DETAILS_BYTES}")]
    TooLarge(usize),
    #[error("details are nested more than {MAX_DEPTH} levels deep")]
    TooDeep,
    #[error("{0} is a float; archive details hold integers, strings, booleans and null")]
    Float(String),
    #[error("{0} names a secret; secrets are never archived")]
    SecretKey(String),
    #[error("a record kind label is 1 to 64 characters of a-z, 0-9 and _")]
    BadKindLabel,
    #[error("checkpoint records are made by retention only")]
    ReservedKind,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T: UnixMillis = UnixMillis(1_795_680_000_000);

    #[test]
    fn every_known_kind_round_trips_through_its_label() {
        for (kind, label) in RecordKind::KNOWN {
            assert_eq!(kind.label(), label);
            assert_eq!(RecordKind::from_label(label), kind);
        }
        assert_eq!(
            RecordKind::from_label("screen_share"),
            RecordKind::Other("screen_share".into())
        );
        assert_eq!(
            RecordKind::Other("screen_share".into()).label(),
            "screen_share"
        );
    }

    #[test]
    fn a_pin_entry_carries_the_outcome_and_never_digits() {
        let e = Entry::pin_entry(T, "conv", PinOutcome::Rejected { attempt: 2 });
        assert_eq!(
            serde_json::Value::Object(e.details.clone()),
            json!({"outcome": "rejected", "attempt": 2})
        );
        assert_eq!(e.validate(), Ok(()));
    }

    #[test]
    fn a_detail_that_names_a_secret_is_refused_at_any_depth() {
        let e = Entry::new(T, RecordKind::DialIn).detail("PIN", "1234");
        assert_eq!(
            e.validate(),
            Err(EntryError::SecretKey("details.PIN".into()))
        );
        let nested =
            Entry::new(T, RecordKind::Joined).detail("client", json!({"auth": [{"token": "abc"}]}));
        assert_eq!(
            nested.validate(),
            Err(EntryError::SecretKey("details.client.auth[0].token".into()))
        );
        // a key that merely contains the word is fine
        let ok = Entry::new(T, RecordKind::PinEntry).detail("pin_attempts", 3);
        assert_eq!(ok.validate(), Ok(()));
    }

    #[test]
    fn floats_oversized_ids_deep_nesting_and_bad_labels_are_refused() {
        let float = Entry::new(T, RecordKind::Left).detail("mos", 4.2);
        assert_eq!(
            float.validate(),
            Err(EntryError::Float("details.mos".into()))
        );
        let long = Entry::new(T, RecordKind::Left).user("u".repeat(MAX_ID_BYTES + 1));
        assert_eq!(long.validate(), Err(EntryError::TooLong("user")));
        let mut deep = json!(1);
        for _ in 0..20 {
            deep = json!([deep]);
        }
        let deep = Entry::new(T, RecordKind::Left).detail("x", deep);
        assert_eq!(deep.validate(), Err(EntryError::TooDeep));
        let big = Entry::new(T, RecordKind::Left).detail("x", "a".repeat(MAX_DETAILS_BYTES));
        assert!(matches!(big.validate(), Err(EntryError::TooLarge(_))));
        for label in ["", "Bad", "a b", &"x".repeat(65)] {
            let e = Entry::new(T, RecordKind::Other(label.to_owned()));
            assert_eq!(e.validate(), Err(EntryError::BadKindLabel), "{label:?}");
        }
        let cp = Entry::new(T, RecordKind::Checkpoint);
        assert_eq!(cp.validate(), Err(EntryError::ReservedKind));
    }
}
