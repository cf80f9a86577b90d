//! Sealed records, their hashes, their stored form and their JSON-lines export form.

use std::fmt;

use serde_json::{Map, Value};

use super::canonical::{self, Hashed};
use super::entry::RecordKind;

/// Wall-clock time in milliseconds since the Unix epoch (UTC), given by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// The time `ms` milliseconds later (saturating).
    #[must_use]
    pub fn plus_millis(self, ms: i64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    /// RFC 3339 UTC text with milliseconds, e.g. `2026-11-26T08:00:00.000Z`, for people
    /// reading an export (proleptic Gregorian calendar, years 0..=9999 written as four
    /// digits, others as they come).
    pub fn to_rfc3339(self) -> String {
        let ms = self.0.rem_euclid(1000);
        let secs = self.0.div_euclid(1000);
        let days = secs.div_euclid(86_400);
        let tod = secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            tod / 3600,
            (tod / 60) % 60,
            tod % 60
        )
    }
}

/// Days since 1970-01-01 to (year, month, day); the well-known era-based conversion.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A half-open time range `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub from: UnixMillis,
    pub to: UnixMillis,
}

impl TimeRange {
    pub fn contains(&self, at: UnixMillis) -> bool {
        self.from <= at && at < self.to
    }
}

/// A SHA-256 value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// The `prev_hash` of record 1.
    pub const ZERO: Hash = Hash([0; 32]);

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 0xf)] as char);
        }
        s
    }

    /// Parses 64 hex digits (either case); `None` for anything else.
    pub fn from_hex(s: &str) -> Option<Hash> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = hex_digit(pair[0])?;
            let lo = hex_digit(pair[1])?;
            out[i] = (hi << 4) | lo;
        }
        Some(Hash(out))
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A sealed archive record: an entry with its place in the chain.
///
/// Fields are public because a record read back from storage is only as trustworthy as
/// [`Record::hash_is_valid`] and the chain's verification say; nothing here trusts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// 1 for the first record ever appended; consecutive.
    pub seq: u64,
    pub at: UnixMillis,
    pub kind: RecordKind,
    pub conversation: Option<String>,
    pub user: Option<String>,
    pub details: Map<String, Value>,
    /// The previous record's `hash` ([`Hash::ZERO`] for record 1).
    pub prev_hash: Hash,
    /// SHA-256 of the canonical encoding of all the fields above.
    pub hash: Hash,
}

impl Record {
    /// The hash these fields should have.
    pub fn compute_hash(&self) -> Hash {
        Hash(self.hashed().digest())
    }

    /// Whether the stored hash matches the content.
    pub fn hash_is_valid(&self) -> bool {
        self.compute_hash() == self.hash
    }

    fn hashed(&self) -> Hashed<'_> {
        Hashed {
            seq: self.seq,
            at: self.at.0,
            kind: self.kind.label(),
            conversation: self.conversation.as_deref(),
            user: self.user.as_deref(),
            details: &self.details,
            prev_hash: &self.prev_hash.0,
        }
    }

    /// The form a database row holds.
    pub fn to_raw(&self) -> RawRecord {
        RawRecord {
            // Sequence numbers come from a chain that starts at 1 and grows by one per
            // record, so they stay far below i64::MAX; saturation is unreachable.
            seq: i64::try_from(self.seq).unwrap_or(i64::MAX),
            at: self.at.0,
            kind: self.kind.label().to_owned(),
            conversation: self.conversation.clone(),
            user: self.user.clone(),
            details: canonical::json_object(&self.details),
            prev_hash: self.prev_hash.to_hex(),
            hash: self.hash.to_hex(),
        }
    }

    /// One line of a JSON-lines export: the canonical JSON of the record (keys `at`,
    /// `conversation`, `details`, `hash`, `kind`, `prev_hash`, `seq`, `time`, `user`;
    /// `time` is `at` as RFC 3339 UTC for people and is not hashed), then `\n`.
    pub fn to_json_line(&self) -> String {
        let mut obj = Map::new();
        obj.insert("seq".into(), Value::from(self.seq));
        obj.insert("at".into(), Value::from(self.at.0));
        obj.insert("time".into(), Value::from(self.at.to_rfc3339()));
        obj.insert("kind".into(), Value::from(self.kind.label()));
        obj.insert(
            "conversation".into(),
            opt_value(self.conversation.as_deref()),
        );
        obj.insert("user".into(), opt_value(self.user.as_deref()));
        obj.insert("details".into(), Value::Object(self.details.clone()));
        obj.insert("prev_hash".into(), Value::from(self.prev_hash.to_hex()));
        obj.insert("hash".into(), Value::from(self.hash.to_hex()));
        let mut line = canonical::json_value(&Value::Object(obj));
        line.push('\n');
        line
    }

    /// Reads a line written by [`Self::to_json_line`] (the `time` field is ignored).
    pub fn from_json_line(line: &str) -> Result<Record, DecodeError> {
        let value: Value =
            serde_json::from_str(line).map_err(|e| DecodeError::Json(e.to_string()))?;
        let Value::Object(mut obj) = value else {
            return Err(DecodeError::NotAnObject("line"));
        };
        let seq = obj
            .get("seq")
            .and_then(Value::as_i64)
            .ok_or(DecodeError::Field("seq"))?;
        let at = obj
            .get("at")
            .and_then(Value::as_i64)
            .ok_or(DecodeError::Field("at"))?;
        let text = |obj: &Map<String, Value>, key: &'static str| {
            obj.get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or(DecodeError::Field(key))
        };
        let opt_text = |obj: &Map<String, Value>, key: &'static str| match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(DecodeError::Field(key)),
        };
        let kind = text(&obj, "kind")?;
        let prev_hash = text(&obj, "prev_hash")?;
        let hash = text(&obj, "hash")?;
        let conversation = opt_text(&obj, "conversation")?;
        let user = opt_text(&obj, "user")?;
        let Some(Value::Object(details)) = obj.remove("details") else {
            return Err(DecodeError::NotAnObject("details"));
        };
        Ok(Record {
            seq: seq_from_i64(seq)?,
            at: UnixMillis(at),
            kind: RecordKind::from_label(&kind),
            conversation,
            user,
            details,
            prev_hash: Hash::from_hex(&prev_hash).ok_or(DecodeError::Hash("prev_hash"))?,
            hash: Hash::from_hex(&hash).ok_or(DecodeError::Hash("hash"))?,
        })
    }
}

fn opt_value(s: Option<&str>) -> Value {
    s.map_or(Value::Null, Value::from)
}

fn seq_from_i64(seq: i64) -> Result<u64, DecodeError> {
    u64::try_from(seq)
        .ok()
        .filter(|&s| s > 0)
        .ok_or(DecodeError::Seq(seq))
}

/// A record as a database row holds it: hashes as lowercase hex, details as canonical
/// JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub seq: i64,
    pub at: i64,
    pub kind: String,
    pub conversation: Option<String>,
    pub user: Option<String>,
    pub details: String,
    pub prev_hash: String,
    pub hash: String,
}

impl TryFrom<RawRecord> for Record {
    type Error = DecodeError;

    fn try_from(raw: RawRecord) -> Result<Record, DecodeError> {
        let details: Value =
            serde_json::from_str(&raw.details).map_err(|e| DecodeError::Json(e.to_string()))?;
        let Value::Object(details) = details else {
            return Err(DecodeError::NotAnObject("details"));
        };
        Ok(Record {
            seq: seq_from_i64(raw.seq)?,
            at: UnixMillis(raw.at),
            kind: RecordKind::from_label(&raw.kind),
            conversation: raw.conversation,
            user: raw.user,
            details,
            prev_hash: Hash::from_hex(&raw.prev_hash).ok_or(DecodeError::Hash("prev_hash"))?,
            hash: Hash::from_hex(&raw.hash).ok_or(DecodeError::Hash("hash"))?,
        })
    }
}

/// A stored or exported record that cannot even be read back as a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not valid JSON: {0}")]
    Json(String),
    #[error("{0} is not a JSON object")]
    NotAnObject(&'static str),
    #[error("field {0} is missing or has the wrong type")]
    Field(&'static str),
    #[error("{0} is not 64 hex digits")]
    Hash(&'static str),
    #[error("sequence number {0} is not positive")]
    Seq(i64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_through_hex_and_reject_anything_else() {
        let h = Hash([0x0f; 32]);
        assert_eq!(Hash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(Hash::from_hex(&h.to_hex().to_uppercase()), Some(h));
        assert_eq!(Hash::from_hex(&h.to_hex()[..62]), None);
        assert_eq!(Hash::from_hex(&"g".repeat(64)), None);
        assert_eq!(Hash::from_hex(&"é".repeat(32)), None);
    }

    #[test]
    fn times_are_written_as_utc_text() {
        assert_eq!(UnixMillis(0).to_rfc3339(), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            UnixMillis(1_795_680_000_123).to_rfc3339(),
            "2026-11-26T08:00:00.123Z"
        );
        assert_eq!(
            UnixMillis(951_782_400_000).to_rfc3339(),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(UnixMillis(-1).to_rfc3339(), "1969-12-31T23:59:59.999Z");
        // no panic at the extremes
        let _ = UnixMillis(i64::MIN).to_rfc3339();
        let _ = UnixMillis(i64::MAX).to_rfc3339();
    }

    #[test]
    fn a_hostile_stored_row_is_a_decode_error_not_a_panic() {
        let raw = RawRecord {
            seq: -4,
            at: 0,
            kind: "joined".into(),
            conversation: None,
            user: None,
            details: "{}".into(),
            prev_hash: Hash::ZERO.to_hex(),
            hash: Hash::ZERO.to_hex(),
        };
        assert_eq!(Record::try_from(raw.clone()), Err(DecodeError::Seq(-4)));
        let bad_json = RawRecord {
            seq: 1,
            details: "{".into(),
            ..raw.clone()
        };
        assert!(matches!(
            Record::try_from(bad_json),
            Err(DecodeError::Json(_))
        ));
        let array = RawRecord {
            seq: 1,
            details: "[]".into(),
            ..raw.clone()
        };
        assert_eq!(
            Record::try_from(array),
            Err(DecodeError::NotAnObject("details"))
        );
        let short = RawRecord {
            seq: 1,
            hash: "ab".into(),
            ..raw
        };
        assert_eq!(Record::try_from(short), Err(DecodeError::Hash("hash")));
        for line in ["", "[]", "{\"seq\":1}", "{\"seq\":\"1\"}", "\u{0}"] {
            assert!(Record::from_json_line(line).is_err(), "{line:?}");
        }
    }
}
