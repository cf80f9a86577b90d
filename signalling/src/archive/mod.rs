//! The compliance archive model: what confer records about every conversation and call,
//! how the records form a tamper-evident hash chain, how the chain is verified, purged by
//! retention and exported. Sans-IO: `confer-archive-store` does the I/O (SQLite or
//! PostgreSQL), this module decides every byte that is hashed.
//!
//! # Records
//! A caller builds an [`Entry`]: a wall-clock time ([`UnixMillis`], archive records are read
//! by people and compared across restarts and machines, so they carry wall-clock time given
//! by the caller, never read here), a [`RecordKind`] from a small closed set, the
//! conversation (or call) id, the user concerned, and a JSON object of details (device,
//! client, numbers, reasons). Typed constructors ([`Entry::pin_entry`],
//! [`Entry::policy_decision`], ...) build the details of the sensitive kinds, so a PIN
//! cannot be archived by construction; [`Entry::validate`] also refuses detail keys that name
//! secrets (`pin`, `password`, `token`, ...), floats, and oversized entries.
//!
//! # Chain
//! [`ChainHead::seal`] turns an entry into a [`Record`]: sequence number `head.seq + 1`,
//! `prev_hash` = the previous record's hash (all zeroes for record 1), and `hash` =
//! SHA-256 of the record's canonical encoding (below). Appends must be serialised (the
//! store does it); verification ([`verify`], [`Verifier`]) recomputes every hash and link and
//! names the first broken record ([`BrokenAt`]).
//!
//! ## Canonical encoding (version 1), hashed with SHA-256
//! ```text
//! "confer-archive/v1\n"                      18 bytes, domain separation
//! seq                                        u64, big-endian
//! at                                         i64 milliseconds since the Unix epoch, big-endian
//! str(kind label)                            e.g. "pin_entry"
//! opt(conversation)  opt(user)
//! str(canonical JSON of details)
//! prev_hash                                  32 bytes
//!
//! str(s) = u32 big-endian byte length, then the UTF-8 bytes
//! opt(x) = 0x00 when absent, 0x01 then str(x) when present
//! canonical JSON: no whitespace; object keys sorted by their UTF-8 bytes; strings escape
//! only `"` `\` (as \" \\) and U+0000..U+001F (as \u00xx, lowercase hex), everything else
//! literal UTF-8; integers in plain decimal; true, false, null.
//! ```
//! Floats are refused in details (their text form is not stable across libraries), so a
//! valid record's details round-trip through any JSON parser to the same bytes. The store
//! keeps the details as this canonical JSON text.
//!
//! # Retention
//! A purge removes the oldest records: the longest run from the oldest kept record whose
//! times are all before the cutoff (a prefix, so the rest stays one chain). In the same
//! transaction it first appends a [`RecordKind::Checkpoint`] record, chained like any other,
//! whose details carry the sequence number and hash of the last purged record
//! ([`CheckpointInfo`]). Verification of a chain whose first record is not record 1 starts
//! from that checkpoint: the first kept record must be `through_seq + 1` and link to
//! `through_hash`, and the checkpoint itself is verified when the walk reaches it (so it
//! cannot be edited without breaking the chain after it). Only checkpoints made by
//! [`ChainHead::seal_checkpoint`] exist: `seal` refuses the kind.
//!
//! What a hash chain cannot show on its own: the loss of the newest records (truncating the
//! tail leaves a valid shorter chain), and a rewrite of the whole chain by someone who
//! recomputes every hash. [`ChainSummary::head`] is the value to keep elsewhere (a log, a
//! ticket) to detect both.
//!
//! # Export
//! [`Record::to_json_line`] writes one record as a canonical JSON object (plus a readable
//! UTC `time`, not hashed) and a newline; [`Record::from_json_line`] reads it back, so an
//! export of the whole chain can be verified offline with [`verify`].

mod canonical;
mod chain;
mod entry;
mod record;

pub use chain::{
    Anchor, Broken, BrokenAt, Chain, ChainHead, ChainSummary, CheckpointInfo, PurgePlan, Verifier,
    find_anchor, plan_purge, verify,
};
pub use entry::{
    DeviceInfo, Entry, EntryError, MAX_DETAILS_BYTES, MAX_ID_BYTES, PinOutcome, PolicyOutcome,
    RecordKind,
};
pub use record::{DecodeError, Hash, RawRecord, Record, TimeRange, UnixMillis};
