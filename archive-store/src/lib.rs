//! confer-archive-store: the compliance archive's storage, and the fail-closed front the
//! binary calls.
//!
//! The records, their hash chain, verification and retention rules are the sans-IO model in
//! `confer_signalling::archive`; this crate only moves them to and from a database:
//!
//! - [`ArchiveStore`]: SQLite (a file in the data directory, the embedded default, in WAL
//!   mode with `synchronous = FULL`) or PostgreSQL (by URL), one code path over `sqlx`
//!   with runtime queries and embedded migrations (`migrations/sqlite`,
//!   `migrations/postgres`). Appends are serialised so the stored records stay one chain:
//!   an async mutex inside the process, and across processes `BEGIN IMMEDIATE` (SQLite) or
//!   a transaction-scoped advisory lock (PostgreSQL); the sequence number is the primary
//!   key, so even a writer that bypasses both cannot fork the chain, only fail.
//! - [`Archiver`]: what the binary calls. [`Archiver::require_writable`] before a new
//!   escalation or call, [`Archiver::append`] for the record that starts it: when policy
//!   requires archiving and the store cannot be written, both return
//!   [`ArchiverError::Unavailable`] (or [`ArchiverError::Down`], at once, while the store
//!   is known down) and count a refusal, and the binary refuses with
//!   [`ArchiverError::reason`] (`archive_unavailable`). [`Archiver::record`] for records of calls already going:
//!   written now, or queued in order (bounded, optionally spooled to disk) and written by
//!   [`Archiver::flush`] when the store is back.

mod archiver;
mod spool;
mod store;

pub use archiver::{
    Archived, Archiver, ArchiverConfig, ArchiverError, ArchiverStats, DEFAULT_QUEUE_BYTES,
    DEFAULT_QUEUE_RECORDS,
};
pub use store::{ArchiveStore, Location, StoreConfig, StoreError, VerifyError};
