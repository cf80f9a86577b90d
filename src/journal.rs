//! The durable event journal: every event of confer (room events, escalation steps,
//! presence changes, SIP dial-in and PIN outcomes, policy refusals) in ONE gapless sequence.
//!
//! Three consumers follow it: the WebSocket event stream (`/v1/events?after=SEQ` resumes
//! after a disconnect or a restart without losing an event), the webhooks
//! ([`crate::webhooks`]) and the compliance archive ([`crate::archive`]), each from its own
//! cursor. So an event is handed to subscribers only after it is committed: a seq that
//! anybody saw is never reused after a crash or a `kill -9`, seqs are gapless and strictly
//! increasing from 1, and they survive restarts.
//!
//! # Design
//!
//! - [`Journal::append`] never blocks and never fails: it pushes the event into an
//!   unbounded channel (callable from sync code and any thread: media workers' event drain,
//!   the SIP core task, API handlers). The order of one caller's appends is kept.
//! - One writer task takes everything waiting (up to [`BATCH`] events) and writes it in one
//!   SQLite transaction (WAL, `synchronous=NORMAL`: a committed transaction survives a
//!   process kill; see "Limits" for a power cut).
//!   Seqs are assigned by the writer, in channel order, and become visible only at commit:
//!   the transaction also stores the head in `journal_meta`, so the seq survives even when
//!   retention purges every event. Only then are the events published: pushed into an
//!   in-memory ring of recent events and announced through a `watch` of the head.
//! - When a commit fails (disk full, read-only file, a lock held by another process), the
//!   writer keeps the uncommitted events in memory, in order (bounded only by memory;
//!   `confer_journal_backlog` counts them), reports [`Journal::healthy`] `false`, drops
//!   its connection (SQLite may have rolled the transaction back by itself) and retries
//!   with backoff (100 ms doubling to 5 s). Nothing past the first uncommitted event is
//!   published, and nothing is lost while the process lives.
//! - A subscriber ([`Subscription`]) reads from the ring while it keeps up, and from the
//!   database, a page at a time, when it falls behind the ring: a slow subscriber never
//!   makes the writer wait and never loses an event (until retention purges it: then its
//!   stream ends and [`Subscription::expired`] says so).
//! - Retention: the transaction that commits a batch also deletes what exceeds
//!   `max_events`; every minute the writer deletes, 10 000 rows at a time, the events older
//!   than `retention` (by their `at`, the caller's clock; always a prefix of the sequence,
//!   up to the first event young enough, so the kept seqs stay contiguous).
//! - Memory mode (`path: None`, for benchmarks): the same semantics without a database;
//!   the ring (the last 100 000 events, or `max_events` if fewer) is all there is, and a
//!   cursor before it is expired.
//! - A file lock (`<path>.lock`) keeps a second process (or a second `open` in this one)
//!   from writing the same journal, which would fork the sequence.
//! - A small key-value table (`journal_state`) keeps other parts' durable cursors and
//!   state ([`Journal::save_state`]): webhook cursors, the users directory.
//! - Schema: `journal_events(seq INTEGER PRIMARY KEY, at_ms, source, kind, body JSON
//!   text)`, `journal_meta(head)`, `journal_state(key, value)`, created at open; `PRAGMA
//!   user_version` = 1, and a file from a newer confer is refused rather than misread.
//!
//! # Event JSON
//!
//! [`Event::to_json`] is one flat object: `{"seq":N,"at":MS,"source":"room","kind":"joined",
//! ...body}`. A body key that would collide with one of the four header keys is renamed
//! when appended, by prefixing `_` until the name is free (`seq` becomes `_seq`, or `__seq`
//! if the body also has `_seq`), so the object stays unambiguous and nothing is dropped.
//!
//! # Limits
//!
//! - `secure_delete=ON`: what is deleted (purged events, a replaced state value) is
//!   overwritten in the file; a copy may live on in the WAL until its next checkpoint.
//! - `synchronous=NORMAL` is durable against a process crash, not against a power cut
//!   (where the last transactions before the cut may be lost and their seqs reused).
//! - An event whose stored body cannot be parsed back (only possible if the body nests
//!   deeper than serde_json's 128 levels) is delivered with the body
//!   `{"journal_error":"unreadable body"}`.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use confer_signalling::directory::Timestamp;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, Row};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Most events written in one transaction.
const BATCH: usize = 4096;
/// Rows per `INSERT` statement (5 parameters each, far below SQLite's 32 766).
const ROWS_PER_INSERT: usize = 256;
/// Published events kept in memory with a database behind them.
const RING_DB: usize = 16_384;
/// Published events kept in memory without a database (all there is).
const RING_MEMORY: usize = 100_000;
/// Events a subscriber copies from the ring, or reads from the database, at a time.
const READ_PAGE: usize = 1024;
/// Rows the age purge deletes per transaction.
const PURGE_CHUNK: u64 = 10_000;
/// The schema this code writes (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 1;
/// The body that replaces one that cannot be parsed back.
const UNREADABLE_BODY: &str = "unreadable body";
/// Keys of the flat event object that a body key may not take.
const RESERVED: [&str; 4] = ["seq", "at", "source", "kind"];

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS journal_events (
    seq INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS journal_meta (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    head INTEGER NOT NULL
);
INSERT OR IGNORE INTO journal_meta (id, head) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS journal_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
PRAGMA user_version = 1;
";

/// Where and how long the journal keeps events.
#[derive(Debug, Clone)]
pub struct JournalConfig {
    /// SQLite file (e.g. DATA/journal.db); None: in memory only (benchmarks).
    pub path: Option<PathBuf>,
    /// Events older than this are purged (default 7 days).
    pub retention: Duration,
    /// At most this many events are kept (default 1_000_000; at least 1).
    pub max_events: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            path: None,
            retention: Duration::from_secs(7 * 24 * 3600),
            max_events: 1_000_000,
        }
    }
}

/// Why the journal refused a request.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The cursor points before the oldest event kept (purged by retention).
    #[error("cursor expired: the oldest event kept is {oldest}")]
    CursorExpired { oldest: u64 },
    /// The cursor points after the last committed event.
    #[error("cursor ahead: the last event is {head}")]
    CursorAhead { head: u64 },
    /// The database could not do it.
    #[error("journal database: {0}")]
    Database(#[from] sqlx::Error),
    /// The file was written by a newer confer.
    #[error("journal schema version {found} is newer than this confer's ({SCHEMA_VERSION})")]
    Schema { found: i64 },
    /// Another process (or another `open` in this one) has the journal open.
    #[error("journal {} is in use by another process", .0.display())]
    Locked(PathBuf),
    /// Creating the directory or the lock file failed.
    #[error("journal file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One journal event. Serialises as one flat JSON object (see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub seq: u64,
    pub at: Timestamp,
    pub source: String,
    pub kind: String,
    pub body: Map<String, Value>,
}

impl Event {
    /// `{"seq":N,"at":MS,"source":..,"kind":..,...body}`.
    pub fn to_json(&self) -> String {
        // Serialising string-keyed JSON values cannot fail; the fallback is never taken.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(4 + self.body.len()))?;
        map.serialize_entry("seq", &self.seq)?;
        map.serialize_entry("at", &self.at.as_millis())?;
        map.serialize_entry("source", &self.source)?;
        map.serialize_entry("kind", &self.kind)?;
        for (k, v) in &self.body {
            // `append` renamed reserved keys; a hand-built Event may still carry one.
            if !RESERVED.contains(&k.as_str()) {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

/// Renames body keys that collide with the header keys (see the module doc).
fn unambiguous(mut body: Map<String, Value>) -> Map<String, Value> {
    for key in RESERVED {
        if let Some(value) = body.remove(key) {
            let mut name = format!("_{key}");
            while body.contains_key(&name) {
                name.insert(0, '_');
            }
            body.insert(name, value);
        }
    }
    body
}

/// Knobs that tests turn; production uses [`Tuning::default`].
#[derive(Clone)]
struct Tuning {
    busy_timeout: Duration,
    retry_min: Duration,
    retry_max: Duration,
    purge_every: Duration,
    /// How long `close` keeps retrying a failing database before giving up.
    close_give_up: Duration,
    ring_db: usize,
    /// `PRAGMA max_page_count` for the writer, read at each (re)connect: simulates a full
    /// disk with the real database.
    max_page_count: Option<Arc<AtomicU64>>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            busy_timeout: Duration::from_secs(2),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            purge_every: Duration::from_secs(60),
            close_give_up: Duration::from_secs(10),
            ring_db: RING_DB,
            max_page_count: None,
        }
    }
}

/// The published recent events.
struct Ring {
    events: VecDeque<Arc<Event>>,
    capacity: usize,
}

/// Where `load_state`/`save_state` keep their values, and where old events are read back.
enum Store {
    Memory(Mutex<HashMap<String, String>>),
    Sqlite(SqlitePool),
}

/// What the writer and the readers share.
struct Shared {
    ring: Mutex<Ring>,
    /// Last published seq (0: none).
    head: AtomicU64,
    /// Oldest kept seq (head + 1 when none is kept).
    oldest: AtomicU64,
    /// The head, announced; closed when the writer has stopped.
    head_rx: watch::Receiver<u64>,
    healthy: AtomicBool,
    appended: AtomicU64,
    committed: AtomicU64,
    write_errors: AtomicU64,
    /// Appended after the writer stopped, or given up at close.
    lost: AtomicU64,
    store: Store,
}

impl Shared {
    fn ring(&self) -> MutexGuard<'_, Ring> {
        // A panic while holding the ring lock leaves it consistent (pushes and pops only).
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The appending side; when the last handle drops, the writer commits and stops.
struct Handle {
    tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
    warned_lost: AtomicBool,
}

/// The journal (cheap to clone).
#[derive(Clone)]
pub struct Journal {
    handle: Arc<Handle>,
}

enum Msg {
    Append(Pending),
    Close,
}

/// An appended event waiting for its commit.
struct Pending {
    source: String,
    kind: String,
    at: Timestamp,
    body: Map<String, Value>,
}

impl Journal {
    /// Opens (creating if needed) the journal and starts its writer task.
    pub async fn open(cfg: &JournalConfig) -> Result<Journal, JournalError> {
        Journal::open_tuned(cfg, Tuning::default()).await
    }

    async fn open_tuned(cfg: &JournalConfig, tuning: Tuning) -> Result<Journal, JournalError> {
        let max_events = cfg.max_events.max(1);
        let (store, db, head, oldest, lock, ring_capacity) = match &cfg.path {
            None => {
                let capacity =
                    usize::try_from(max_events).map_or(RING_MEMORY, |m| m.min(RING_MEMORY));
                (
                    Store::Memory(Mutex::new(HashMap::new())),
                    None,
                    0,
                    1,
                    None,
                    capacity,
                )
            }
            Some(path) => {
                let lock = lock_file(path)?;
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    // Deleted content is overwritten, not left in free pages: purged
                    // events and replaced state (once clear SIP passwords) are gone.
                    .pragma("secure_delete", "ON")
                    .busy_timeout(tuning.busy_timeout);
                let pool = SqlitePoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options.clone())
                    .await?;
                let found: i64 = sqlx::query_scalar("PRAGMA user_version")
                    .fetch_one(&pool)
                    .await?;
                if found > SCHEMA_VERSION {
                    return Err(JournalError::Schema { found });
                }
                sqlx::raw_sql(SCHEMA).execute(&pool).await?;
                let meta: i64 = sqlx::query_scalar("SELECT head FROM journal_meta WHERE id = 1")
                    .fetch_one(&pool)
                    .await?;
                let row = sqlx::query("SELECT MIN(seq), MAX(seq) FROM journal_events")
                    .fetch_one(&pool)
                    .await?;
                let min: Option<i64> = row.try_get(0)?;
                let max: Option<i64> = row.try_get(1)?;
                let head = to_u64(meta.max(max.unwrap_or(0)));
                let oldest = min.map_or(head + 1, to_u64);
                let mut db = Db {
                    options,
                    conn: None,
                    max_page_count: tuning.max_page_count.clone(),
                };
                // Fail at open rather than later when the file cannot be written at all.
                db.connect().await?;
                (
                    Store::Sqlite(pool),
                    Some(db),
                    head,
                    oldest,
                    Some(lock),
                    tuning.ring_db,
                )
            }
        };
        let (head_tx, head_rx) = watch::channel(head);
        let shared = Arc::new(Shared {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                capacity: ring_capacity.max(1),
            }),
            head: AtomicU64::new(head),
            oldest: AtomicU64::new(oldest),
            head_rx,
            healthy: AtomicBool::new(true),
            appended: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            store,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Writer {
            rx,
            shared: shared.clone(),
            head_tx,
            db,
            pending: VecDeque::new(),
            head,
            oldest,
            max_events,
            retention: cfg.retention,
            tuning,
            insert_sql: insert_sql(ROWS_PER_INSERT),
            lock,
        };
        tokio::spawn(writer.run());
        Ok(Journal {
            handle: Arc::new(Handle {
                tx,
                shared,
                warned_lost: AtomicBool::new(false),
            }),
        })
    }

    /// Never blocks, callable from sync code and any thread. Order is preserved. `at` is
    /// the caller's wall clock. Body keys `seq`, `at`, `source`, `kind` are renamed (see
    /// the module doc). After [`Journal::close`] the event is dropped and counted.
    pub fn append(&self, source: &str, kind: &str, at: Timestamp, body: Map<String, Value>) {
        let shared = &self.handle.shared;
        shared.appended.fetch_add(1, Ordering::Relaxed);
        let pending = Pending {
            source: source.to_owned(),
            kind: kind.to_owned(),
            at,
            body: unambiguous(body),
        };
        if self.handle.tx.send(Msg::Append(pending)).is_err() {
            shared.lost.fetch_add(1, Ordering::Relaxed);
            if !self.handle.warned_lost.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    source,
                    kind,
                    "event appended after the journal closed: dropped (counted in confer_journal_lost_total)"
                );
            }
        }
    }

    /// Events with seq > after (None: only events appended from now on), replayed from
    /// memory or from the database, then live, with no gap and no duplicate.
    pub fn subscribe(&self, after: Option<u64>) -> Result<Subscription, JournalError> {
        let shared = &self.handle.shared;
        let head = shared.head.load(Ordering::Acquire);
        let oldest = shared.oldest.load(Ordering::Acquire);
        let last = match after {
            None => head,
            Some(a) if a > head => return Err(JournalError::CursorAhead { head }),
            Some(a) if a.saturating_add(1) < oldest => {
                return Err(JournalError::CursorExpired { oldest });
            }
            Some(a) => a,
        };
        Ok(Subscription {
            shared: shared.clone(),
            head_rx: shared.head_rx.clone(),
            last,
            buf: VecDeque::new(),
            expired: false,
        })
    }

    /// Last committed seq (0: none).
    pub fn head(&self) -> u64 {
        self.handle.shared.head.load(Ordering::Acquire)
    }

    /// Oldest seq still kept (`head + 1` when none is kept).
    pub fn oldest(&self) -> u64 {
        self.handle.shared.oldest.load(Ordering::Acquire)
    }

    /// False while commits fail (disk full, read-only, locked).
    pub fn healthy(&self) -> bool {
        self.handle.shared.healthy.load(Ordering::Relaxed)
    }

    /// Commits everything appended so far (retrying a failing database for up to 10 s,
    /// then giving up and counting the events as lost), stops the writer and releases the
    /// file lock. Subscriptions end once they have read everything. Idempotent.
    pub async fn close(&self) {
        let _ = self.handle.tx.send(Msg::Close);
        let mut done = self.handle.shared.head_rx.clone();
        while done.changed().await.is_ok() {}
        // The last connection to go checkpoints the WAL into the file and removes it.
        if let Store::Sqlite(pool) = &self.handle.shared.store {
            pool.close().await;
        }
    }

    /// Prometheus text.
    pub fn metrics_text(&self) -> String {
        let s = &self.handle.shared;
        let appended = s.appended.load(Ordering::Relaxed);
        let committed = s.committed.load(Ordering::Relaxed);
        let lost = s.lost.load(Ordering::Relaxed);
        let backlog = appended.saturating_sub(committed).saturating_sub(lost);
        format!(
            "# HELP confer_journal_events_total Events committed to the journal by this process.\n\
             # TYPE confer_journal_events_total counter\n\
             confer_journal_events_total {committed}\n\
             # HELP confer_journal_write_errors_total Failed journal commits (each is retried).\n\
             # TYPE confer_journal_write_errors_total counter\n\
             confer_journal_write_errors_total {}\n\
             # HELP confer_journal_backlog Events appended but not committed yet.\n\
             # TYPE confer_journal_backlog gauge\n\
             confer_journal_backlog {backlog}\n\
             # HELP confer_journal_lost_total Events appended after close or given up at close.\n\
             # TYPE confer_journal_lost_total counter\n\
             confer_journal_lost_total {lost}\n\
             # HELP confer_journal_head_seq Last committed event seq.\n\
             # TYPE confer_journal_head_seq gauge\n\
             confer_journal_head_seq {}\n\
             # HELP confer_journal_oldest_seq Oldest event seq kept.\n\
             # TYPE confer_journal_oldest_seq gauge\n\
             confer_journal_oldest_seq {}\n\
             # HELP confer_journal_healthy 1 while commits succeed.\n\
             # TYPE confer_journal_healthy gauge\n\
             confer_journal_healthy {}\n",
            s.write_errors.load(Ordering::Relaxed),
            s.head.load(Ordering::Acquire),
            s.oldest.load(Ordering::Acquire),
            u8::from(s.healthy.load(Ordering::Relaxed)),
        )
    }

    /// A value saved with [`Journal::save_state`] (in memory mode: since `open`).
    pub async fn load_state(&self, key: &str) -> Result<Option<String>, JournalError> {
        match &self.handle.shared.store {
            Store::Memory(map) => Ok(map
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(key)
                .cloned()),
            Store::Sqlite(pool) => Ok(sqlx::query_scalar(
                "SELECT value FROM journal_state WHERE key = $1",
            )
            .bind(key)
            .fetch_optional(pool)
            .await?),
        }
    }

    /// Durably saves a small value (committed when this returns).
    pub async fn save_state(&self, key: &str, value: &str) -> Result<(), JournalError> {
        match &self.handle.shared.store {
            Store::Memory(map) => {
                map.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.to_owned(), value.to_owned());
            }
            Store::Sqlite(pool) => {
                sqlx::query(
                    "INSERT INTO journal_state (key, value) VALUES ($1, $2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .bind(key)
                .bind(value)
                .execute(pool)
                .await?;
            }
        }
        Ok(())
    }
}

/// Takes `<path>.lock` (creating the directory if needed); held by the writer.
fn lock_file(path: &Path) -> Result<File, JournalError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| JournalError::Io {
            path: dir.to_owned(),
            source: e,
        })?;
    }
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| JournalError::Io {
            path: lock_path.clone(),
            source: e,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(JournalError::Locked(path.to_owned())),
        Err(TryLockError::Error(e)) => Err(JournalError::Io {
            path: lock_path,
            source: e,
        }),
    }
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn insert_sql(rows: usize) -> Arc<str> {
    let mut sql =
        String::from("INSERT INTO journal_events (seq, at_ms, source, kind, body) VALUES ");
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?)");
    }
    sql.into()
}

fn now_ms() -> u64 {
    crate::uc::now().0
}

/// The writer's database connection, re-opened after every failure.
struct Db {
    options: SqliteConnectOptions,
    conn: Option<SqliteConnection>,
    max_page_count: Option<Arc<AtomicU64>>,
}

impl Db {
    async fn connect(&mut self) -> Result<&mut SqliteConnection, sqlx::Error> {
        if self.conn.is_none() {
            let mut conn = SqliteConnection::connect_with(&self.options).await?;
            if let Some(limit) = &self.max_page_count {
                let sql = format!("PRAGMA max_page_count = {}", limit.load(Ordering::Relaxed));
                sqlx::query(AssertSqlSafe(sql)).execute(&mut conn).await?;
            }
            self.conn = Some(conn);
        }
        // Just set when it was None.
        self.conn.as_mut().ok_or(sqlx::Error::PoolClosed)
    }
}

/// The one task that assigns seqs, commits and publishes.
struct Writer {
    rx: mpsc::UnboundedReceiver<Msg>,
    shared: Arc<Shared>,
    head_tx: watch::Sender<u64>,
    db: Option<Db>,
    /// Appended, not committed, in order.
    pending: VecDeque<Pending>,
    head: u64,
    oldest: u64,
    max_events: u64,
    retention: Duration,
    tuning: Tuning,
    insert_sql: Arc<str>,
    /// Held until the writer stops.
    lock: Option<File>,
}

impl Writer {
    async fn run(mut self) {
        let mut backoff = self.tuning.retry_min;
        let mut next_purge = Instant::now();
        // Set once `close` was called or every handle dropped: commit what is left, stop.
        let mut stop_by: Option<Instant> = None;
        loop {
            if stop_by.is_none() && Instant::now() >= next_purge {
                next_purge = match self.purge().await {
                    Ok(true) => Instant::now(),
                    Ok(false) => Instant::now() + self.tuning.purge_every,
                    Err(e) => {
                        tracing::warn!(error = %e, "journal retention purge failed; retrying later");
                        self.drop_connection();
                        Instant::now() + self.tuning.purge_every
                    }
                };
            }
            if self.pending.is_empty() {
                if stop_by.is_some() {
                    break;
                }
                tokio::select! {
                    msg = self.rx.recv() => self.take(msg, &mut stop_by),
                    () = tokio::time::sleep_until(next_purge) => continue,
                }
            }
            while let Ok(msg) = self.rx.try_recv() {
                self.take(Some(msg), &mut stop_by);
            }
            if self.pending.is_empty() {
                continue;
            }
            match self.commit().await {
                Ok(()) => {
                    if !self.shared.healthy.swap(true, Ordering::Relaxed) {
                        tracing::info!(
                            head = self.head,
                            backlog = self.pending.len(),
                            "journal writes work again"
                        );
                    }
                    backoff = self.tuning.retry_min;
                }
                Err(e) => {
                    self.shared.write_errors.fetch_add(1, Ordering::Relaxed);
                    if self.shared.healthy.swap(false, Ordering::Relaxed) {
                        tracing::error!(error = %e, head = self.head, "journal commit failed: events are kept in memory, unpublished, and retried");
                    } else {
                        tracing::debug!(error = %e, backlog = self.pending.len(), "journal commit failed again");
                    }
                    // A failed transaction can leave the connection unusable.
                    self.drop_connection();
                    if stop_by.is_some_and(|t| Instant::now() >= t) {
                        let n = self.pending.len() as u64;
                        self.shared.lost.fetch_add(n, Ordering::Relaxed);
                        tracing::error!(
                            events = n,
                            "journal closed while its database fails: uncommitted events lost"
                        );
                        break;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.tuning.retry_max);
                }
            }
        }
        if let Some(Some(conn)) = self.db.as_mut().map(|db| db.conn.take()) {
            let _ = conn.close().await;
        }
        // Unlock before dropping `head_tx` (with self), which tells `close` we are done:
        // a reopen right after `close` must find the file free.
        drop(self.lock.take());
    }

    fn drop_connection(&mut self) {
        if let Some(db) = &mut self.db {
            db.conn = None;
        }
    }

    fn take(&mut self, msg: Option<Msg>, stop_by: &mut Option<Instant>) {
        match msg {
            Some(Msg::Append(p)) => self.pending.push_back(p),
            Some(Msg::Close) | None => {
                if stop_by.is_none() {
                    *stop_by = Some(Instant::now() + self.tuning.close_give_up);
                    // Later appends fail fast; those already queued are still committed.
                    self.rx.close();
                }
            }
        }
    }

    /// Commits and publishes the first (up to) [`BATCH`] pending events.
    async fn commit(&mut self) -> Result<(), sqlx::Error> {
        let n = self.pending.len().min(BATCH);
        let first = self.head + 1;
        let new_head = self.head + n as u64;
        let mut new_oldest = self.oldest;
        if let Some(db) = &mut self.db {
            // Count retention in the same transaction, bounded so one transaction stays short.
            let keep_from = (new_head + 1).saturating_sub(self.max_events);
            let purge_below = keep_from.min(self.oldest + PURGE_CHUNK);
            let conn = db.connect().await?;
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            let bodies: Vec<String> = self
                .pending
                .iter()
                .take(n)
                // Serialising string-keyed JSON values cannot fail; never taken.
                .map(|p| serde_json::to_string(&p.body).unwrap_or_else(|_| String::from("{}")))
                .collect();
            let mut seq = first;
            let mut rows = self.pending.iter().take(n).zip(&bodies).peekable();
            while rows.peek().is_some() {
                let chunk: Vec<_> = rows.by_ref().take(ROWS_PER_INSERT).collect();
                let sql = if chunk.len() == ROWS_PER_INSERT {
                    self.insert_sql.clone()
                } else {
                    insert_sql(chunk.len())
                };
                let mut query = sqlx::query(AssertSqlSafe(sql));
                for (p, body) in chunk {
                    query = query
                        .bind(to_i64(seq))
                        .bind(to_i64(p.at.as_millis()))
                        .bind(p.source.as_str())
                        .bind(p.kind.as_str())
                        .bind(body.as_str());
                    seq += 1;
                }
                query.execute(&mut *tx).await?;
            }
            sqlx::query("UPDATE journal_meta SET head = $1 WHERE id = 1")
                .bind(to_i64(new_head))
                .execute(&mut *tx)
                .await?;
            if purge_below > self.oldest {
                sqlx::query("DELETE FROM journal_events WHERE seq < $1")
                    .bind(to_i64(purge_below))
                    .execute(&mut *tx)
                    .await?;
                new_oldest = purge_below;
            }
            tx.commit().await?;
        }
        let events: Vec<Arc<Event>> = self
            .pending
            .drain(..n)
            .zip(first..)
            .map(|(p, seq)| {
                Arc::new(Event {
                    seq,
                    at: p.at,
                    source: p.source,
                    kind: p.kind,
                    body: p.body,
                })
            })
            .collect();
        self.head = new_head;
        self.shared.committed.fetch_add(n as u64, Ordering::Relaxed);
        self.publish(events, new_oldest);
        Ok(())
    }

    /// Hands committed events to the ring and announces the new head.
    fn publish(&mut self, events: Vec<Arc<Event>>, db_oldest: u64) {
        let memory = self.db.is_none();
        {
            let mut ring = self.shared.ring();
            ring.events.extend(events);
            let excess = ring.events.len().saturating_sub(ring.capacity);
            ring.events.drain(..excess);
            if memory {
                self.oldest = ring.events.front().map_or(self.head + 1, |e| e.seq);
            } else {
                self.oldest = db_oldest;
                let stale = ring.events.iter().take_while(|e| e.seq < db_oldest).count();
                ring.events.drain(..stale);
            }
        }
        self.shared.oldest.store(self.oldest, Ordering::Release);
        self.shared.head.store(self.head, Ordering::Release);
        self.head_tx.send_replace(self.head);
    }

    /// One step of retention (age and count). Ok(true): more to purge.
    async fn purge(&mut self) -> Result<bool, sqlx::Error> {
        let cutoff =
            now_ms().saturating_sub(u64::try_from(self.retention.as_millis()).unwrap_or(u64::MAX));
        let by_count = (self.head + 1).saturating_sub(self.max_events);
        let Some(db) = &mut self.db else {
            let mut ring = self.shared.ring();
            let old = ring
                .events
                .iter()
                .take_while(|e| e.at.as_millis() < cutoff || e.seq < by_count)
                .count();
            ring.events.drain(..old);
            self.oldest = ring.events.front().map_or(self.head + 1, |e| e.seq);
            drop(ring);
            self.shared.oldest.store(self.oldest, Ordering::Release);
            return Ok(false);
        };
        let conn = db.connect().await?;
        let young: Option<i64> = sqlx::query_scalar(
            "SELECT seq FROM journal_events WHERE seq >= $1 AND at_ms >= $2 ORDER BY seq LIMIT 1",
        )
        .bind(to_i64(self.oldest))
        .bind(to_i64(cutoff))
        .fetch_optional(&mut *conn)
        .await?;
        let keep_from = young.map_or(self.head + 1, to_u64).max(by_count);
        if keep_from <= self.oldest {
            return Ok(false);
        }
        let below = keep_from.min(self.oldest + PURGE_CHUNK);
        sqlx::query("DELETE FROM journal_events WHERE seq < $1")
            .bind(to_i64(below))
            .execute(&mut *conn)
            .await?;
        self.oldest = below;
        {
            let mut ring = self.shared.ring();
            let stale = ring.events.iter().take_while(|e| e.seq < below).count();
            ring.events.drain(..stale);
        }
        self.shared.oldest.store(below, Ordering::Release);
        Ok(below < keep_from)
    }
}

/// A cursor following the journal: every event after it, in order, once.
pub struct Subscription {
    shared: Arc<Shared>,
    head_rx: watch::Receiver<u64>,
    /// Seq of the last event handed out (or the starting cursor).
    last: u64,
    /// Fetched, not handed out yet.
    buf: VecDeque<Arc<Event>>,
    expired: bool,
}

impl Subscription {
    /// The next event; None once the journal is closed and everything was read, or when
    /// the next event was purged before this subscriber got to it (see [`Self::expired`]).
    pub async fn next(&mut self) -> Option<Arc<Event>> {
        loop {
            if let Some(event) = self.buf.pop_front() {
                self.last = event.seq;
                return Some(event);
            }
            if self.expired {
                return None;
            }
            let head = *self.head_rx.borrow_and_update();
            if self.last < head {
                self.fill(head).await;
                continue;
            }
            if self.head_rx.changed().await.is_err() && *self.head_rx.borrow() <= self.last {
                return None;
            }
        }
    }

    /// Seq of the last event handed out (the cursor to resume from).
    pub fn cursor(&self) -> u64 {
        self.last
    }

    /// True when the stream ended because the next event was purged (retention) before
    /// this subscriber read it: resubscribing from the cursor gives `CursorExpired`.
    pub fn expired(&self) -> bool {
        self.expired
    }

    /// Fetches events after `last` up to `head`: from the ring, else from the database.
    async fn fill(&mut self, head: u64) {
        let want = self.last + 1;
        {
            let ring = self.shared.ring();
            if let Some(front) = ring.events.front()
                && front.seq <= want
            {
                // Seqs in the ring are contiguous, so the index follows from the front's.
                let start = usize::try_from(want - front.seq).unwrap_or(usize::MAX);
                self.buf.extend(
                    ring.events
                        .iter()
                        .skip(start)
                        .take(READ_PAGE)
                        .take_while(|e| e.seq <= head)
                        .cloned(),
                );
                if !self.buf.is_empty() {
                    return;
                }
            }
        }
        let Store::Sqlite(pool) = &self.shared.store else {
            self.expired = true;
            return;
        };
        let mut backoff = Duration::from_millis(100);
        let rows = loop {
            match sqlx::query(
                "SELECT seq, at_ms, source, kind, body FROM journal_events \
                 WHERE seq >= $1 AND seq <= $2 ORDER BY seq LIMIT $3",
            )
            .bind(to_i64(want))
            .bind(to_i64(head))
            .bind(READ_PAGE as i64)
            .fetch_all(pool)
            .await
            {
                Ok(rows) => break rows,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the journal back failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        let mut expect = want;
        for row in &rows {
            match event_from_row(row) {
                Some(event) if event.seq == expect => {
                    self.buf.push_back(Arc::new(event));
                    expect += 1;
                }
                _ => break,
            }
        }
        if self.buf.is_empty() {
            // The next event is gone: purged while this subscriber lagged behind.
            self.expired = true;
        }
    }
}

fn event_from_row(row: &SqliteRow) -> Option<Event> {
    let seq: i64 = row.try_get(0).ok()?;
    let at: i64 = row.try_get(1).ok()?;
    let body: &str = row.try_get(4).ok()?;
    let body = serde_json::from_str::<Map<String, Value>>(body).unwrap_or_else(|_| {
        let mut m = Map::new();
        m.insert("journal_error".into(), UNREADABLE_BODY.into());
        m
    });
    Some(Event {
        seq: to_u64(seq),
        at: Timestamp::from_millis(to_u64(at)),
        source: row.try_get(2).ok()?,
        kind: row.try_get(3).ok()?,
        body,
    })
}

/// Failures are real SQLite failures, made deterministic: another connection holding the
/// write lock (SQLITE_BUSY) and `PRAGMA max_page_count` on the writer's connection
/// (SQLITE_FULL, what a full disk returns). Waits poll with a 20 s bound; nothing sleeps
/// to let time pass except the 100 ms "nothing more arrives" checks.
#[cfg(test)]
mod tests {
    use super::*;

    fn body(i: u64) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("i".into(), i.into());
        m
    }

    /// A recent time: retention keeps it.
    fn at() -> Timestamp {
        Timestamp(now_ms())
    }

    fn file_config(dir: &tempfile::TempDir) -> JournalConfig {
        JournalConfig {
            path: Some(dir.path().join("data").join("journal.db")),
            ..JournalConfig::default()
        }
    }

    fn fast() -> Tuning {
        Tuning {
            busy_timeout: Duration::from_millis(50),
            retry_min: Duration::from_millis(10),
            retry_max: Duration::from_millis(50),
            purge_every: Duration::from_millis(20),
            ..Tuning::default()
        }
    }

    /// Polls `f` every 5 ms; fails the test after 20 s.
    async fn wait_until(what: &str, f: impl Fn() -> bool) {
        let give_up = Instant::now() + Duration::from_secs(20);
        while !f() {
            assert!(Instant::now() < give_up, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn next(sub: &mut Subscription) -> Arc<Event> {
        tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("an event within 20 s")
            .expect("the stream goes on")
    }

    /// Nothing more arrives within 100 ms.
    async fn assert_quiet(sub: &mut Subscription) {
        let got = tokio::time::timeout(Duration::from_millis(100), sub.next()).await;
        assert!(got.is_err(), "unexpected event {:?}", got.ok().flatten());
    }

    async fn read_seqs(sub: &mut Subscription, n: usize) -> Vec<u64> {
        let mut seqs = Vec::with_capacity(n);
        for _ in 0..n {
            let e = next(sub).await;
            assert_eq!(
                e.body.get("i"),
                Some(&Value::from(e.seq)),
                "body of {}",
                e.seq
            );
            seqs.push(e.seq);
        }
        seqs
    }

    fn metric(j: &Journal, name: &str) -> u64 {
        let text = j.metrics_text();
        let line = text
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("metric {name} in\n{text}"));
        line[name.len() + 1..].parse().expect("an integer")
    }

    #[tokio::test]
    async fn journal_seqs_are_gapless_and_continue_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = file_config(&dir);
        let j = Journal::open(&cfg).await.unwrap();
        assert_eq!(j.head(), 0);
        let t0 = at();
        for i in 1..=10 {
            j.append("room", "joined", Timestamp(t0.as_millis() + i), body(i));
        }
        j.close().await;
        assert_eq!(j.head(), 10);

        let j = Journal::open(&cfg).await.unwrap();
        assert_eq!(j.head(), 10, "the head survives the reopen");
        let mut live = j.subscribe(None).unwrap();
        for i in 11..=15 {
            j.append("room", "left", at(), body(i));
        }
        assert_eq!(read_seqs(&mut live, 5).await, (11..=15).collect::<Vec<_>>());
        let mut all = j.subscribe(Some(0)).unwrap();
        let mut events = Vec::new();
        for _ in 0..15 {
            events.push(next(&mut all).await);
        }
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=15).collect::<Vec<_>>());
        assert_eq!(events[0].at, Timestamp(t0.as_millis() + 1));
        assert_eq!(events[0].source, "room");
        assert_eq!(events[0].kind, "joined");
        assert_eq!(events[14].kind, "left");
        j.close().await;
    }

    #[tokio::test]
    async fn journal_subscribe_after_replays_exactly_the_missing_events_then_live_ones() {
        for path in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = if path {
                file_config(&dir)
            } else {
                JournalConfig::default()
            };
            let j = Journal::open(&cfg).await.unwrap();
            for i in 1..=20 {
                j.append("call", "ringing", at(), body(i));
            }
            wait_until("head 20", || j.head() == 20).await;
            let mut sub = j.subscribe(Some(12)).unwrap();
            assert_eq!(read_seqs(&mut sub, 8).await, (13..=20).collect::<Vec<_>>());
            assert_quiet(&mut sub).await;
            for i in 21..=23 {
                j.append("call", "answered", at(), body(i));
            }
            assert_eq!(read_seqs(&mut sub, 3).await, vec![21, 22, 23]);
            assert_quiet(&mut sub).await;
            assert_eq!(sub.cursor(), 23);
            // A cursor at the head is valid and gives only what comes next.
            let mut at_head = j.subscribe(Some(23)).unwrap();
            j.append("call", "ended", at(), body(24));
            assert_eq!(read_seqs(&mut at_head, 1).await, vec![24]);
            j.close().await;
        }
    }

    #[tokio::test]
    async fn journal_a_cursor_after_the_head_is_refused_as_ahead() {
        let j = Journal::open(&JournalConfig::default()).await.unwrap();
        j.append("room", "created", at(), body(1));
        wait_until("head 1", || j.head() == 1).await;
        assert!(matches!(
            j.subscribe(Some(2)),
            Err(JournalError::CursorAhead { head: 1 })
        ));
        assert!(j.subscribe(Some(1)).is_ok());
        assert!(j.subscribe(Some(0)).is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn journal_a_slow_subscriber_200k_behind_gets_every_event_in_order() {
        const N: u64 = 200_000;
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(&file_config(&dir)).await.unwrap();
        let mut slow = j.subscribe(Some(0)).unwrap();
        let started = std::time::Instant::now();
        for i in 1..=N {
            j.append("room", "talking", at(), body(i));
        }
        let appended = started.elapsed();
        // The writer commits all of it while the subscriber reads nothing.
        wait_until("head 200k", || j.head() == N).await;
        let committed = started.elapsed();
        let mut expect = 1;
        while expect <= N {
            let e = next(&mut slow).await;
            assert_eq!(e.seq, expect);
            assert_eq!(e.body.get("i"), Some(&Value::from(expect)));
            expect += 1;
        }
        let read = started.elapsed();
        assert_quiet(&mut slow).await;
        eprintln!(
            "200k events: appended in {appended:?}, committed by {committed:?}, read back by {read:?}"
        );
        j.close().await;
    }

    #[tokio::test]
    async fn journal_a_cursor_before_the_events_purged_by_count_is_expired() {
        for path in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let cfg = JournalConfig {
                max_events: 100,
                ..if path {
                    file_config(&dir)
                } else {
                    JournalConfig::default()
                }
            };
            let j = Journal::open(&cfg).await.unwrap();
            let mut lagging = j.subscribe(Some(0)).unwrap();
            for i in 1..=300 {
                j.append("room", "joined", Timestamp(now_ms()), body(i));
            }
            wait_until("head 300", || j.head() == 300).await;
            assert_eq!(j.oldest(), 201, "path {path}");
            assert!(matches!(
                j.subscribe(Some(0)),
                Err(JournalError::CursorExpired { oldest: 201 })
            ));
            assert!(matches!(
                j.subscribe(Some(199)),
                Err(JournalError::CursorExpired { .. })
            ));
            let mut sub = j.subscribe(Some(200)).unwrap();
            assert_eq!(
                read_seqs(&mut sub, 100).await,
                (201..=300).collect::<Vec<_>>()
            );
            // A subscriber that was behind the purge ends, and says why.
            assert!(lagging.next().await.is_none());
            assert!(lagging.expired());
            j.close().await;
        }
    }

    #[tokio::test]
    async fn journal_events_older_than_the_retention_are_purged_as_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = JournalConfig {
            retention: Duration::from_secs(3600),
            ..file_config(&dir)
        };
        let j = Journal::open_tuned(&cfg, fast()).await.unwrap();
        let now = now_ms();
        for i in 1..=10 {
            j.append("presence", "changed", Timestamp(i), body(i));
        }
        for i in 11..=15 {
            j.append("presence", "changed", Timestamp(now), body(i));
        }
        wait_until("the purge", || j.oldest() == 11).await;
        assert!(matches!(
            j.subscribe(Some(9)),
            Err(JournalError::CursorExpired { oldest: 11 })
        ));
        let mut sub = j.subscribe(Some(10)).unwrap();
        assert_eq!(read_seqs(&mut sub, 5).await, (11..=15).collect::<Vec<_>>());
        j.close().await;
        // All purged: the head still survives a reopen, the next seq continues after it.
        let cfg = JournalConfig {
            retention: Duration::ZERO,
            ..cfg
        };
        let j = Journal::open_tuned(&cfg, fast()).await.unwrap();
        wait_until("all purged", || j.oldest() == 16).await;
        j.close().await;
        let j = Journal::open(&cfg).await.unwrap();
        assert_eq!((j.head(), j.oldest()), (15, 16));
        let mut sub = j.subscribe(Some(15)).unwrap();
        j.append("presence", "changed", Timestamp(now), body(16));
        assert_eq!(read_seqs(&mut sub, 1).await, vec![16]);
        j.close().await;
    }

    #[tokio::test]
    async fn journal_memory_mode_expires_a_cursor_beyond_its_ring() {
        let j = Journal::open(&JournalConfig::default()).await.unwrap();
        let mut slow = j.subscribe(Some(0)).unwrap();
        let n = RING_MEMORY as u64 + 10;
        for i in 1..=n {
            j.append("room", "talking", at(), body(i));
        }
        wait_until("head", || j.head() == n).await;
        assert_eq!(j.oldest(), 11);
        assert!(slow.next().await.is_none());
        assert!(slow.expired());
        let mut sub = j.subscribe(Some(10)).unwrap();
        assert_eq!(next(&mut sub).await.seq, 11);
    }

    /// Another connection holds SQLite's write lock: the real database refuses our commits
    /// (SQLITE_BUSY after the busy timeout) until it lets go.
    #[tokio::test]
    async fn journal_a_locked_database_keeps_events_unpublished_then_commits_them_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = file_config(&dir);
        let j = Journal::open_tuned(&cfg, fast()).await.unwrap();
        let mut sub = j.subscribe(Some(0)).unwrap();
        j.append("room", "created", at(), body(1));
        assert_eq!(read_seqs(&mut sub, 1).await, vec![1]);

        let options = SqliteConnectOptions::new().filename(cfg.path.as_ref().unwrap());
        let mut other = SqliteConnection::connect_with(&options).await.unwrap();
        sqlx::raw_sql("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        for i in 2..=50 {
            j.append("room", "joined", at(), body(i));
        }
        wait_until("unhealthy", || !j.healthy()).await;
        // Several retries later, still nothing published past seq 1.
        let errors = metric(&j, "confer_journal_write_errors_total");
        wait_until("more retries", || {
            metric(&j, "confer_journal_write_errors_total") >= errors + 3
        })
        .await;
        assert_eq!(j.head(), 1);
        assert_eq!(metric(&j, "confer_journal_backlog"), 49);
        assert_quiet(&mut sub).await;
        for i in 51..=60 {
            j.append("room", "left", at(), body(i));
        }

        sqlx::raw_sql("ROLLBACK").execute(&mut other).await.unwrap();
        assert_eq!(read_seqs(&mut sub, 59).await, (2..=60).collect::<Vec<_>>());
        wait_until("healthy", || j.healthy()).await;
        assert_eq!(metric(&j, "confer_journal_backlog"), 0);
        j.close().await;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM journal_events")
            .fetch_one(&mut other)
            .await
            .unwrap();
        assert_eq!(count, 60);
    }

    /// `PRAGMA max_page_count` makes SQLite answer SQLITE_FULL exactly as a full disk does.
    #[tokio::test]
    async fn journal_a_full_disk_loses_nothing_and_commits_in_order_once_space_returns() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = file_config(&dir);
        // Room for the schema and a few dozen events, not for 2000.
        let pages = Arc::new(AtomicU64::new(12));
        let tuning = Tuning {
            max_page_count: Some(pages.clone()),
            ..fast()
        };
        let j = Journal::open_tuned(&cfg, tuning).await.unwrap();
        let mut sub = j.subscribe(Some(0)).unwrap();
        let filler = "x".repeat(200);
        for i in 1..=2000 {
            let mut b = body(i);
            b.insert("filler".into(), filler.clone().into());
            j.append("room", "joined", at(), b);
        }
        wait_until("unhealthy", || !j.healthy()).await;
        let stuck = j.head();
        assert!(stuck < 2000);
        let errors = metric(&j, "confer_journal_write_errors_total");
        wait_until("more retries", || {
            metric(&j, "confer_journal_write_errors_total") >= errors + 3
        })
        .await;
        assert_eq!(
            j.head(),
            stuck,
            "nothing is published while the disk is full"
        );
        assert_eq!(metric(&j, "confer_journal_backlog"), 2000 - stuck);
        assert_eq!(
            read_seqs(&mut sub, stuck as usize).await,
            (1..=stuck).collect::<Vec<_>>()
        );
        assert_quiet(&mut sub).await;

        pages.store(1_000_000, Ordering::Relaxed);
        let rest = read_seqs(&mut sub, (2000 - stuck) as usize).await;
        assert_eq!(rest, (stuck + 1..=2000).collect::<Vec<_>>());
        wait_until("healthy", || j.healthy()).await;
        j.close().await;
        let j = Journal::open(&cfg).await.unwrap();
        assert_eq!(j.head(), 2000);
        j.close().await;
    }

    #[tokio::test]
    async fn journal_an_event_handed_to_a_subscriber_is_already_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = file_config(&dir);
        let j = Journal::open(&cfg).await.unwrap();
        let mut sub = j.subscribe(None).unwrap();
        j.append("sip", "pin", at(), body(1));
        assert_eq!(next(&mut sub).await.seq, 1);
        // No close: what another process sees now is what a kill -9 would leave.
        let options = SqliteConnectOptions::new().filename(cfg.path.as_ref().unwrap());
        let mut other = SqliteConnection::connect_with(&options).await.unwrap();
        let row: (i64, String) = sqlx::query_as("SELECT seq, kind FROM journal_events")
            .fetch_one(&mut other)
            .await
            .unwrap();
        assert_eq!(row, (1, "pin".to_owned()));
        let head: i64 = sqlx::query_scalar("SELECT head FROM journal_meta")
            .fetch_one(&mut other)
            .await
            .unwrap();
        assert_eq!(head, 1);
        j.close().await;
    }

    #[tokio::test]
    async fn journal_close_commits_everything_appended_and_ends_subscriptions() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = file_config(&dir);
        let j = Journal::open(&cfg).await.unwrap();
        let mut sub = j.subscribe(Some(0)).unwrap();
        for i in 1..=5000 {
            j.append("room", "joined", at(), body(i));
        }
        j.close().await;
        assert_eq!(j.head(), 5000);
        assert_eq!(
            read_seqs(&mut sub, 5000).await,
            (1..=5000).collect::<Vec<_>>()
        );
        assert!(sub.next().await.is_none());
        assert!(!sub.expired());
        // Appends after close are counted, not committed; close is idempotent.
        j.append("room", "left", at(), body(5001));
        j.close().await;
        assert_eq!(metric(&j, "confer_journal_lost_total"), 1);
        assert_eq!(j.head(), 5000);
        // A subscription made after close replays and ends.
        let mut late = j.subscribe(Some(4998)).unwrap();
        assert_eq!(read_seqs(&mut late, 2).await, vec![4999, 5000]);
        assert!(late.next().await.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn journal_appends_from_many_threads_keep_each_threads_order() {
        let j = Journal::open(&JournalConfig::default()).await.unwrap();
        let mut sub = j.subscribe(Some(0)).unwrap();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let j = j.clone();
                std::thread::spawn(move || {
                    for i in 0..5000u64 {
                        let mut b = Map::new();
                        b.insert("t".into(), t.into());
                        b.insert("n".into(), i.into());
                        j.append("room", "talking", at(), b);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut seen = [0u64; 4];
        for seq in 1..=20_000 {
            let e = next(&mut sub).await;
            assert_eq!(e.seq, seq);
            let t = e.body["t"].as_u64().unwrap() as usize;
            assert_eq!(e.body["n"].as_u64(), Some(seen[t]));
            seen[t] += 1;
        }
        assert_eq!(seen, [5000; 4]);
    }

    #[test]
    fn journal_reserved_body_keys_are_renamed_and_the_json_is_one_flat_object() {
        let mut b = Map::new();
        b.insert("seq".into(), "body-seq".into());
        b.insert("_seq".into(), 1.into());
        b.insert("kind".into(), Value::Null);
        b.insert("room".into(), "r1".into());
        let b = unambiguous(b);
        assert_eq!(b.get("__seq"), Some(&Value::from("body-seq")));
        assert_eq!(b.get("_seq"), Some(&Value::from(1)));
        assert_eq!(b.get("_kind"), Some(&Value::Null));
        assert!(!b.contains_key("seq") && !b.contains_key("kind"));
        let e = Event {
            seq: 9,
            at: Timestamp(1_700_000_000_123),
            source: "room".into(),
            kind: "joined".into(),
            body: b,
        };
        let v: Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"seq": 9, "at": 1_700_000_000_123u64, "source": "room",
                "kind": "joined", "__seq": "body-seq", "_seq": 1, "_kind": null, "room": "r1"})
        );
    }

    #[tokio::test]
    async fn journal_state_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = file_config(&dir);
        let j = Journal::open(&cfg).await.unwrap();
        assert_eq!(j.load_state("webhook:a").await.unwrap(), None);
        j.save_state("webhook:a", "41").await.unwrap();
        j.save_state("webhook:a", "42").await.unwrap();
        j.close().await;
        let j = Journal::open(&cfg).await.unwrap();
        assert_eq!(
            j.load_state("webhook:a").await.unwrap().as_deref(),
            Some("42")
        );
        j.close().await;
        let m = Journal::open(&JournalConfig::default()).await.unwrap();
        m.save_state("k", "v").await.unwrap();
        assert_eq!(m.load_state("k").await.unwrap().as_deref(), Some("v"));
    }

    #[tokio::test]
    async fn journal_a_replaced_state_value_is_gone_from_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = file_config(&dir);
        let j = Journal::open(&cfg).await.unwrap();
        let secret = "clear-password-the-old-version-saved";
        // A directory of many users spans overflow pages, which a delete frees whole.
        let users: Vec<String> = (0..200).map(|i| format!("\"u{i}\":\"{secret}\"")).collect();
        j.save_state(
            "directory",
            &format!("{{\"sip_passwords\":{{{}}}}}", users.join(",")),
        )
        .await
        .unwrap();
        j.save_state("directory", "{}").await.unwrap();
        j.close().await;
        let data = dir.path().join("data");
        for entry in std::fs::read_dir(&data).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{} still holds the replaced value",
                path.display()
            );
        }
    }

    #[tokio::test]
    async fn journal_a_second_open_of_the_same_file_is_refused_until_close() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = file_config(&dir);
        let j = Journal::open(&cfg).await.unwrap();
        assert!(matches!(
            Journal::open(&cfg).await,
            Err(JournalError::Locked(_))
        ));
        j.close().await;
        Journal::open(&cfg).await.unwrap().close().await;
    }

    #[tokio::test]
    async fn journal_an_unwritable_path_fails_to_open() {
        let cfg = JournalConfig {
            path: Some(PathBuf::from("/proc/confer-journal-test/journal.db")),
            ..JournalConfig::default()
        };
        assert!(matches!(
            Journal::open(&cfg).await,
            Err(JournalError::Io { .. })
        ));
    }

    #[tokio::test]
    async fn journal_metrics_name_the_counters() {
        let j = Journal::open(&JournalConfig::default()).await.unwrap();
        j.append("room", "created", at(), body(1));
        wait_until("head 1", || j.head() == 1).await;
        assert_eq!(metric(&j, "confer_journal_events_total"), 1);
        assert_eq!(metric(&j, "confer_journal_write_errors_total"), 0);
        assert_eq!(metric(&j, "confer_journal_backlog"), 0);
        assert_eq!(metric(&j, "confer_journal_head_seq"), 1);
        assert_eq!(metric(&j, "confer_journal_healthy"), 1);
    }
}
