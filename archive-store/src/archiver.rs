//! [`Archiver`]: the fail-closed front of the archive that the binary calls.
//!
//! # Contract
//! - Before a new escalation or call: [`Archiver::require_writable`], then
//!   [`Archiver::append`] for its first record. When archiving is required
//!   ([`ArchiverConfig::required`]) and the store cannot be written, both return
//!   [`ArchiverError::Unavailable`] or [`ArchiverError::Down`] and count a refusal ([`ArchiverStats::refused`]); the
//!   binary refuses the escalation or call with [`ArchiverError::reason`] and archives
//!   that refusal with [`Archiver::record`]. Nothing new starts unarchived.
//! - For calls already going: [`Archiver::record`]. The record is written now, or, when
//!   the store is down (or records are already waiting), queued behind the waiting ones:
//!   [`Archived::Queued`]. Ongoing calls keep going.
//! - [`Archiver::run_flusher`] (or [`Archiver::flush`] called periodically) writes the
//!   queue in order once the store is back, and notices that it is back. While the store
//!   is known to be down, `require_writable` and `append` refuse at once rather than wait
//!   for a connection timeout per call.
//!
//! # The bound
//! The queue holds at most [`ArchiverConfig::queue_records`] entries and
//! [`ArchiverConfig::queue_bytes`] bytes of their JSON (defaults
//! [`DEFAULT_QUEUE_RECORDS`] = 10 000 and [`DEFAULT_QUEUE_BYTES`] = 16 MiB: hours of
//! records for hundreds of calls, as one call writes tens of records). At the bound,
//! `record` returns [`ArchiverError::QueueFull`], the entry is not kept and
//! [`ArchiverStats::dropped`] counts it: the binary must then end the calls it cannot
//! archive (fail closed), which is the only case where records are lost, and it is
//! loud. With a spool ([`ArchiverConfig::spool`]) the queue also survives a restart of
//! confer (see the spool module for its at-least-once guarantee); the bound is the same.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use confer_signalling::archive::{Entry, EntryError, Record};
use tokio::sync::Mutex;

use crate::spool::{Spool, entry_line};
use crate::store::{ArchiveStore, StoreError};

/// Default bound on queued records.
pub const DEFAULT_QUEUE_RECORDS: usize = 10_000;
/// Default bound on the JSON bytes of queued records.
pub const DEFAULT_QUEUE_BYTES: usize = 16 * 1024 * 1024;
/// Queued entries written per transaction when flushing.
const FLUSH_BATCH: usize = 500;

/// How the archiver behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiverConfig {
    /// Policy requires archiving: refuse new escalations and calls when the archive
    /// cannot be written. When false, records that cannot be written are queued and
    /// nothing is refused. Default true.
    pub required: bool,
    pub queue_records: usize,
    pub queue_bytes: usize,
    /// A file that mirrors the queue durably (e.g. `DATA/archive-spool.jsonl`). Default
    /// none: the queue lives in memory only.
    pub spool: Option<PathBuf>,
}

impl Default for ArchiverConfig {
    fn default() -> Self {
        ArchiverConfig {
            required: true,
            queue_records: DEFAULT_QUEUE_RECORDS,
            queue_bytes: DEFAULT_QUEUE_BYTES,
            spool: None,
        }
    }
}

/// What happened to a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Archived {
    /// Stored and chained.
    Written(Record),
    /// Waiting for the store; `waiting` records are queued, this one included.
    Queued { waiting: usize },
}

/// Why the archiver refused.
#[derive(Debug, thiserror::Error)]
pub enum ArchiverError {
    /// Archiving is required and the archive cannot be written.
    #[error("archiving is required and the archive cannot be written: {0}")]
    Unavailable(#[source] StoreError),
    /// Archiving is required and the store failed earlier and has not accepted a write
    /// since (refused at once; the flusher keeps retrying).
    #[error("archiving is required and the archive has been unwritable since its last failure")]
    Down,
    /// Archiving is required, the archive is down and the queue of records waiting for
    /// it is at its bound.
    #[error(
        "archiving is required and the archive queue is full ({records} records, {bytes} bytes waiting)"
    )]
    QueueFull { records: usize, bytes: usize },
    /// The entry is invalid (the caller's mistake).
    #[error("invalid archive entry: {0}")]
    Entry(#[from] EntryError),
}

impl ArchiverError {
    /// A short, stable reason for API responses, SIP reason headers and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ArchiverError::Unavailable(_) | ArchiverError::Down => "archive_unavailable",
            ArchiverError::QueueFull { .. } => "archive_queue_full",
            ArchiverError::Entry(_) => "archive_entry_invalid",
        }
    }
}

/// Counters for `/metrics`, totals since the archiver was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ArchiverStats {
    /// Records written to the store.
    pub written: u64,
    /// Records waiting now, and their bytes.
    pub waiting: usize,
    pub waiting_bytes: usize,
    /// Records that had to wait.
    pub queued: u64,
    /// New escalations or calls refused because the archive could not be written.
    pub refused: u64,
    /// Failed store operations.
    pub store_failures: u64,
    /// Records lost at the queue bound.
    pub dropped: u64,
    /// Spool writes or reads that failed (the queue in memory still holds the records).
    pub spool_errors: u64,
    /// Whether the store is believed writable (false after a failure, until a write or
    /// probe succeeds).
    pub available: bool,
}

#[derive(Default)]
struct Counters {
    written: AtomicU64,
    waiting: AtomicUsize,
    waiting_bytes: AtomicUsize,
    queued: AtomicU64,
    refused: AtomicU64,
    store_failures: AtomicU64,
    dropped: AtomicU64,
    spool_errors: AtomicU64,
    down: AtomicBool,
}

struct State {
    /// Entries waiting, oldest first, with their spool line.
    queue: VecDeque<(Entry, String)>,
    bytes: usize,
    spool: Option<Spool>,
}

/// The fail-closed front of the archive; share it behind an `Arc`.
pub struct Archiver {
    store: Arc<ArchiveStore>,
    config: ArchiverConfig,
    state: Mutex<State>,
    counters: Counters,
}

impl Archiver {
    /// Wraps `store`; with a spool, reloads the entries a previous run left waiting (they
    /// are written by the next flush or record, ahead of anything new).
    pub async fn open(
        store: Arc<ArchiveStore>,
        config: ArchiverConfig,
    ) -> Result<Archiver, std::io::Error> {
        let counters = Counters::default();
        let mut queue = VecDeque::new();
        let mut bytes = 0;
        let spool = match &config.spool {
            None => None,
            Some(path) => {
                let (spool, entries, bad) = Spool::load(path).await?;
                if bad > 0 {
                    tracing::warn!(lines = bad, "archive spool: unreadable lines skipped");
                    counters
                        .spool_errors
                        .fetch_add(bad as u64, Ordering::Relaxed);
                }
                for entry in entries {
                    // Entries were validated before they were spooled; one edited since
                    // then would block the queue forever, so it is dropped, loudly.
                    if let Err(e) = entry.validate() {
                        tracing::error!(error = %e, "archive spool: invalid entry dropped");
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let line = entry_line(&entry);
                    bytes += line.len();
                    queue.push_back((entry, line));
                }
                if !queue.is_empty() {
                    tracing::info!(records = queue.len(), "archive spool: records waiting");
                }
                Some(spool)
            }
        };
        counters.waiting.store(queue.len(), Ordering::Relaxed);
        counters.waiting_bytes.store(bytes, Ordering::Relaxed);
        Ok(Archiver {
            store,
            config,
            state: Mutex::new(State {
                queue,
                bytes,
                spool,
            }),
            counters,
        })
    }

    pub fn store(&self) -> &Arc<ArchiveStore> {
        &self.store
    }

    pub fn config(&self) -> &ArchiverConfig {
        &self.config
    }

    /// Succeeds when a new escalation or call may start: archiving is not required, or
    /// the waiting records were written and the store accepted a write.
    pub async fn require_writable(&self) -> Result<(), ArchiverError> {
        if !self.config.required {
            return Ok(());
        }
        let mut state = self.state.lock().await;
        let result = self.writable_locked(&mut state).await;
        result.map_err(|e| self.refuse(e))
    }

    /// Archives the first record of a new escalation or call. When archiving is required
    /// and the record cannot be written now, fails (the caller refuses the escalation or
    /// call); otherwise a record that cannot be written waits in the queue.
    pub async fn append(&self, entry: Entry) -> Result<Archived, ArchiverError> {
        entry.validate()?;
        let mut state = self.state.lock().await;
        let written = match self.writable_queue_locked(&mut state).await {
            Ok(()) => self
                .write_one(entry.clone())
                .await
                .map_err(ArchiverError::Unavailable),
            Err(e) => Err(e),
        };
        match written {
            Ok(record) => Ok(Archived::Written(record)),
            Err(e) if self.config.required => Err(self.refuse(e)),
            Err(_) => self.enqueue(&mut state, entry).await,
        }
    }

    /// Archives a record of an ongoing call: written now, or queued in order when the
    /// store is down or records are already waiting. Fails only at the queue bound, or
    /// for an invalid entry.
    pub async fn record(&self, entry: Entry) -> Result<Archived, ArchiverError> {
        entry.validate()?;
        let mut state = self.state.lock().await;
        if !self.is_down() {
            if !state.queue.is_empty() {
                // Failure marks the store down; the entry then waits behind the queue.
                let _ = self.flush_locked(&mut state).await;
            }
            if state.queue.is_empty()
                && !self.is_down()
                && let Ok(record) = self.write_one(entry.clone()).await
            {
                return Ok(Archived::Written(record));
            }
        }
        self.enqueue(&mut state, entry).await
    }

    /// Writes the waiting records in order, or, with none waiting and the store marked
    /// down, checks whether it is back. Returns how many records were written.
    pub async fn flush(&self) -> Result<usize, ArchiverError> {
        let mut state = self.state.lock().await;
        if state.queue.is_empty() {
            if self.is_down() {
                self.probe().await.map_err(ArchiverError::Unavailable)?;
            }
            return Ok(0);
        }
        self.flush_locked(&mut state)
            .await
            .map_err(ArchiverError::Unavailable)
    }

    /// Flushes every `every` (1 s is a good period), forever: spawn it next to the
    /// archiver.
    pub async fn run_flusher(&self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            // Failures are counted and logged by flush; the next tick retries.
            let _ = self.flush().await;
        }
    }

    pub fn stats(&self) -> ArchiverStats {
        let c = &self.counters;
        ArchiverStats {
            written: c.written.load(Ordering::Relaxed),
            waiting: c.waiting.load(Ordering::Relaxed),
            waiting_bytes: c.waiting_bytes.load(Ordering::Relaxed),
            queued: c.queued.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            store_failures: c.store_failures.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            spool_errors: c.spool_errors.load(Ordering::Relaxed),
            available: !self.is_down(),
        }
    }

    fn is_down(&self) -> bool {
        self.counters.down.load(Ordering::Relaxed)
    }

    fn refuse(&self, e: ArchiverError) -> ArchiverError {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        e
    }

    /// The store failed: count it, and log the transition to down once.
    fn store_failed(&self, e: &StoreError) {
        self.counters.store_failures.fetch_add(1, Ordering::Relaxed);
        if !self.counters.down.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %e, "archive store cannot be written");
        }
    }

    fn store_ok(&self) {
        if self.counters.down.swap(false, Ordering::Relaxed) {
            tracing::info!("archive store writable again");
        }
    }

    /// Known down: fail fast; otherwise the queue is written first (order), then a probe
    /// write.
    async fn writable_locked(&self, state: &mut State) -> Result<(), ArchiverError> {
        self.writable_queue_locked(state).await?;
        self.probe().await.map_err(ArchiverError::Unavailable)
    }

    /// Fails fast when the store is known down, else writes the queue.
    async fn writable_queue_locked(&self, state: &mut State) -> Result<(), ArchiverError> {
        if self.is_down() {
            return Err(ArchiverError::Down);
        }
        if !state.queue.is_empty() {
            self.flush_locked(state)
                .await
                .map_err(ArchiverError::Unavailable)?;
        }
        Ok(())
    }

    async fn probe(&self) -> Result<(), StoreError> {
        match self.store.probe_writable().await {
            Ok(()) => {
                self.store_ok();
                Ok(())
            }
            Err(e) => {
                self.store_failed(&e);
                Err(e)
            }
        }
    }

    async fn write_one(&self, entry: Entry) -> Result<Record, StoreError> {
        match self.store.append(entry).await {
            Ok(record) => {
                self.store_ok();
                self.counters.written.fetch_add(1, Ordering::Relaxed);
                Ok(record)
            }
            Err(e) => {
                self.store_failed(&e);
                Err(e)
            }
        }
    }

    async fn flush_locked(&self, state: &mut State) -> Result<usize, StoreError> {
        let mut written = 0;
        while !state.queue.is_empty() {
            let batch: Vec<Entry> = state
                .queue
                .iter()
                .take(FLUSH_BATCH)
                .map(|(e, _)| e.clone())
                .collect();
            match self.store.append_all(batch).await {
                Ok(records) => {
                    self.store_ok();
                    for _ in 0..records.len() {
                        if let Some((_, line)) = state.queue.pop_front() {
                            state.bytes -= line.len();
                        }
                    }
                    written += records.len();
                    self.counters
                        .written
                        .fetch_add(records.len() as u64, Ordering::Relaxed);
                    self.publish_queue(state);
                    self.rewrite_spool(state).await;
                }
                Err(e) => {
                    self.store_failed(&e);
                    return Err(e);
                }
            }
        }
        if written > 0 {
            tracing::info!(records = written, "archive: waiting records written");
        }
        Ok(written)
    }

    async fn enqueue(&self, state: &mut State, entry: Entry) -> Result<Archived, ArchiverError> {
        let line = entry_line(&entry);
        if state.queue.len() >= self.config.queue_records
            || state.bytes + line.len() > self.config.queue_bytes
        {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                kind = entry.kind.label(),
                waiting = state.queue.len(),
                "archive queue full: record dropped"
            );
            return Err(ArchiverError::QueueFull {
                records: state.queue.len(),
                bytes: state.bytes,
            });
        }
        if let Some(spool) = &state.spool
            && let Err(e) = spool.append(&line).await
        {
            self.counters.spool_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "archive spool: append failed, record kept in memory");
        }
        state.bytes += line.len();
        state.queue.push_back((entry, line));
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        self.publish_queue(state);
        Ok(Archived::Queued {
            waiting: state.queue.len(),
        })
    }

    fn publish_queue(&self, state: &State) {
        self.counters
            .waiting
            .store(state.queue.len(), Ordering::Relaxed);
        self.counters
            .waiting_bytes
            .store(state.bytes, Ordering::Relaxed);
    }

    async fn rewrite_spool(&self, state: &State) {
        let Some(spool) = &state.spool else { return };
        let lines = state.queue.iter().map(|(_, line)| line.as_str());
        if let Err(e) = spool.rewrite(lines).await {
            self.counters.spool_errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "archive spool: rewrite failed (written records may be written again after a restart)");
        }
    }
}
