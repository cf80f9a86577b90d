//! confer-archive-store: the compliance archive's storage.
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
//!
//! Failing closed, queueing and catching up are the binary's (`src/archive.rs`): it follows
//! the event journal, whose durable log is the queue, so this crate keeps no queue of its
//! own.

mod store;

pub use store::{ArchiveStore, Location, StoreConfig, StoreError, VerifyError};
