//! [`ArchiveStore`]: the archive's records in SQLite or PostgreSQL.
//!
//! Both backends run the same SQL text (`$n` parameters, which SQLite also accepts); the
//! `on_pool!` macro expands each operation once per backend, so there is one code path to
//! read and the compiler checks both. Rows hold exactly [`RawRecord`]: hashes as hex,
//! details as canonical JSON text, so an auditor can read them with `sqlite3` or `psql`.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use confer_signalling::archive::{
    Anchor, Broken, BrokenAt, ChainHead, ChainSummary, DecodeError, Entry, EntryError, PurgePlan,
    RawRecord, Record, RecordKind, TimeRange, UnixMillis, Verifier, find_anchor,
};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Postgres, Row, Sqlite, Transaction};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Mutex;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// Records read per query when verifying or exporting, so memory stays bounded.
const PAGE: i64 = 1000;
/// How often an append is retried after another writer took its sequence number (only
/// possible for a writer that does not take the append lock).
const APPEND_ATTEMPTS: u32 = 3;
/// The PostgreSQL advisory lock that serialises appends across processes ("confer" + 1).
const PG_APPEND_LOCK: i64 = 0x636f_6e66_6572_0001;

/// The columns of a record, in [`RawRecord`] order.
macro_rules! columns {
    () => {
        "seq, at_ms, kind, conversation, user_id, details, prev_hash, hash"
    };
}

/// Where the archive lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A SQLite database file (created with its directory if missing).
    Sqlite(PathBuf),
    /// A PostgreSQL URL, e.g. `postgres://confer@db.example/confer`; a Unix socket
    /// directory is given as `?host=/run/postgresql`.
    Postgres(String),
}

/// How to open an [`ArchiveStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub location: Location,
    /// How long an operation waits for a database connection before failing (the time a
    /// refusal takes when the database is down). Default 2 s.
    pub connect_timeout: Duration,
    /// How long a SQLite write waits for a lock held by another connection or process
    /// before failing. Default 2 s.
    pub busy_timeout: Duration,
    /// Pool size. Default 4 (appends are serialised; reads and exports use the rest).
    pub max_connections: u32,
}

impl StoreConfig {
    pub fn sqlite(path: impl Into<PathBuf>) -> StoreConfig {
        StoreConfig::new(Location::Sqlite(path.into()))
    }

    pub fn postgres(url: impl Into<String>) -> StoreConfig {
        StoreConfig::new(Location::Postgres(url.into()))
    }

    /// `postgres://...` or `postgresql://...` for PostgreSQL, `sqlite://PATH` or a plain
    /// path for SQLite.
    pub fn from_url(url: &str) -> StoreConfig {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            StoreConfig::postgres(url)
        } else {
            let path = url.strip_prefix("sqlite://").unwrap_or(url);
            StoreConfig::sqlite(path)
        }
    }

    fn new(location: Location) -> StoreConfig {
        StoreConfig {
            location,
            connect_timeout: Duration::from_secs(2),
            busy_timeout: Duration::from_secs(2),
            max_connections: 4,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not do it: unreachable, down, read-only, full, locked by
    /// another writer for longer than the busy timeout, or it refused the statement.
    #[error("archive database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("archive migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The entry itself is invalid; retrying does not help.
    #[error("invalid archive entry: {0}")]
    Entry(#[from] EntryError),
    /// A stored row is not a record any more (see [`ArchiveStore::verify`] for which).
    #[error("stored archive record {seq} cannot be read: {why}")]
    Corrupt { seq: i64, why: DecodeError },
    /// Other writers kept taking the next sequence number.
    #[error("archive append lost {0} races in a row to other writers")]
    Contended(u32),
    #[error("creating the archive directory failed: {0}")]
    Directory(#[source] std::io::Error),
    #[error("writing the export failed: {0}")]
    Export(#[source] std::io::Error),
    #[error("invalid archive configuration: {0}")]
    Config(String),
}

impl StoreError {
    /// Whether this is the caller's mistake (an invalid entry) rather than the store's
    /// failure; the archiver never queues such an entry.
    pub fn is_invalid_entry(&self) -> bool {
        matches!(self, StoreError::Entry(_))
    }
}

/// Why verification did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The chain is broken: the first broken record and why.
    #[error(transparent)]
    Broken(#[from] BrokenAt),
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Expands `$body` once per backend with `$p` bound to that backend's pool.
macro_rules! on_pool {
    ($pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            Pool::Sqlite($p) => $body,
            Pool::Postgres($p) => $body,
        }
    };
}

/// The write transaction of each backend, holding the cross-process append lock.
trait WriteConn: sqlx::Connection {
    fn begin_write(
        &mut self,
    ) -> impl Future<Output = Result<Transaction<'_, Self::Database>, sqlx::Error>> + Send + '_;
}

impl WriteConn for SqliteConnection {
    fn begin_write(
        &mut self,
    ) -> impl Future<Output = Result<Transaction<'_, Sqlite>, sqlx::Error>> + Send + '_ {
        // IMMEDIATE takes the write lock now (waiting up to the busy timeout), so the head
        // read in this transaction is still the head when it commits.
        self.begin_with("BEGIN IMMEDIATE")
    }
}

impl WriteConn for PgConnection {
    async fn begin_write(&mut self) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
        let mut tx = self.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(PG_APPEND_LOCK)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
}

/// Runs `$body` in a write transaction on a connection of `$pool`; the body commits. A
/// connection whose transaction failed is closed rather than returned to the pool: after
/// an I/O error SQLite may roll the transaction back by itself, and sqlx 0.9 then still
/// counts it open, so the connection would refuse every later `BEGIN IMMEDIATE`.
macro_rules! in_write_tx {
    ($pool:expr, |$tx:ident| $body:block) => {{
        let mut conn = $pool.acquire().await?;
        let result: Result<_, StoreError> = async {
            #[allow(unused_mut)]
            let mut $tx = conn.begin_write().await?;
            $body
        }
        .await;
        if result.is_err() {
            conn.close_on_drop();
        }
        result
    }};
}

/// Reads a [`RawRecord`] from a row selected with [`columns!`].
macro_rules! raw_record {
    ($row:expr) => {{
        let row = $row;
        RawRecord {
            seq: row.try_get("seq")?,
            at: row.try_get("at_ms")?,
            kind: row.try_get("kind")?,
            conversation: row.try_get("conversation")?,
            user: row.try_get("user_id")?,
            details: row.try_get("details")?,
            prev_hash: row.try_get("prev_hash")?,
            hash: row.try_get("hash")?,
        }
    }};
}

/// Reads the chain head through an executor (a pool or `&mut *tx`).
macro_rules! read_head {
    ($exec:expr) => {{
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT seq, hash FROM archive_records ORDER BY seq DESC LIMIT 1")
                .fetch_optional($exec)
                .await?;
        match row {
            None => ChainHead::EMPTY,
            Some((seq, hash)) => ChainHead {
                seq: u64::try_from(seq).map_err(|_| StoreError::Corrupt {
                    seq,
                    why: DecodeError::Seq(seq),
                })?,
                hash: confer_signalling::archive::Hash::from_hex(&hash).ok_or(
                    StoreError::Corrupt {
                        seq,
                        why: DecodeError::Hash("hash"),
                    },
                )?,
            },
        }
    }};
}

/// Inserts one sealed record through an executor.
macro_rules! insert_record {
    ($exec:expr, $record:expr) => {{
        let raw = $record.to_raw();
        sqlx::query(
            "INSERT INTO archive_records \
             (seq, at_ms, kind, conversation, user_id, details, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(raw.seq)
        .bind(raw.at)
        .bind(raw.kind)
        .bind(raw.conversation)
        .bind(raw.user)
        .bind(raw.details)
        .bind(raw.prev_hash)
        .bind(raw.hash)
        .execute($exec)
        .await?;
    }};
}

/// The compliance archive's records in a database. Cheap to share behind an `Arc`; all
/// methods take `&self`.
pub struct ArchiveStore {
    pool: Pool,
    /// Serialises appends and purges within this process.
    append_lock: Mutex<()>,
}

impl ArchiveStore {
    /// Connects, and creates or migrates the schema.
    pub async fn open(config: &StoreConfig) -> Result<ArchiveStore, StoreError> {
        let pool = match &config.location {
            Location::Sqlite(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    tokio::fs::create_dir_all(dir)
                        .await
                        .map_err(StoreError::Directory)?;
                }
                let options = SqliteConnectOptions::new()
                    .filename(path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // Every committed record reaches the disk before the append returns.
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(config.busy_timeout);
                let pool = SqlitePoolOptions::new()
                    .max_connections(config.max_connections.max(1))
                    .acquire_timeout(config.connect_timeout)
                    .connect_with(options)
                    .await?;
                SQLITE_MIGRATIONS.run(&pool).await?;
                Pool::Sqlite(pool)
            }
            Location::Postgres(url) => {
                let options = PgConnectOptions::from_str(url)
                    .map_err(|e| StoreError::Config(format!("PostgreSQL URL: {e}")))?;
                let pool = PgPoolOptions::new()
                    .max_connections(config.max_connections.max(1))
                    .acquire_timeout(config.connect_timeout)
                    .connect_with(options)
                    .await?;
                POSTGRES_MIGRATIONS.run(&pool).await?;
                Pool::Postgres(pool)
            }
        };
        Ok(ArchiveStore {
            pool,
            append_lock: Mutex::new(()),
        })
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Closes every connection; later calls fail.
    pub async fn close(&self) {
        on_pool!(&self.pool, |p| p.close().await)
    }

    /// Seals and stores one entry as the next record.
    pub async fn append(&self, entry: Entry) -> Result<Record, StoreError> {
        let mut records = self.append_all(vec![entry]).await?;
        // append_all returns one record per entry, and there was one entry.
        records.pop().ok_or(StoreError::Contended(0))
    }

    /// Seals and stores `entries`, in order, in one transaction: all or none.
    pub async fn append_all(&self, entries: Vec<Entry>) -> Result<Vec<Record>, StoreError> {
        for entry in &entries {
            entry.validate()?;
        }
        let _serial = self.append_lock.lock().await;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_append(&entries).await {
                Err(StoreError::Database(e)) if is_unique_violation(&e) => {
                    if attempt >= APPEND_ATTEMPTS {
                        return Err(StoreError::Contended(attempt));
                    }
                }
                other => return other,
            }
        }
    }

    async fn try_append(&self, entries: &[Entry]) -> Result<Vec<Record>, StoreError> {
        on_pool!(&self.pool, |p| in_write_tx!(p, |tx| {
            let mut head = read_head!(&mut *tx);
            let mut sealed = Vec::with_capacity(entries.len());
            for entry in entries {
                let record = head.seal(entry.clone())?;
                insert_record!(&mut *tx, &record);
                head = ChainHead::of(&record);
                sealed.push(record);
            }
            tx.commit().await?;
            Ok(sealed)
        }))
    }

    /// The last record's sequence number and hash.
    pub async fn head(&self) -> Result<ChainHead, StoreError> {
        on_pool!(&self.pool, |p| Ok(read_head!(p)))
    }

    /// Writes to the database without archiving anything: what the archiver asks before
    /// letting a new call start. Fails as an append would (down, read-only, full,
    /// locked).
    pub async fn probe_writable(&self) -> Result<(), StoreError> {
        on_pool!(&self.pool, |p| in_write_tx!(p, |tx| {
            sqlx::query("UPDATE archive_probe SET n = n + 1 WHERE id = 1")
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        }))
    }

    /// Up to `limit` records of `range` after sequence number `after_seq`, in chain
    /// order: one page of a larger read.
    pub async fn read_page(
        &self,
        range: TimeRange,
        after_seq: u64,
        limit: u32,
    ) -> Result<Vec<Record>, StoreError> {
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let rows: Vec<RawRecord> = on_pool!(&self.pool, |p| {
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM archive_records",
                " WHERE at_ms >= $1 AND at_ms < $2 AND seq > $3 ORDER BY seq LIMIT $4"
            ))
            .bind(range.from.0)
            .bind(range.to.0)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(p)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(raw_record!(row));
            }
            out
        });
        rows.into_iter().map(decode).collect()
    }

    /// Every record of `range`, in chain order.
    pub async fn read_range(&self, range: TimeRange) -> Result<Vec<Record>, StoreError> {
        let mut out = Vec::new();
        let mut after = 0;
        loop {
            let page = self.read_page(range, after, PAGE as u32).await?;
            let Some(last) = page.last() else {
                return Ok(out);
            };
            after = last.seq;
            out.extend(page);
        }
    }

    /// Every record of one conversation or call, in chain order.
    pub async fn read_conversation(&self, conversation: &str) -> Result<Vec<Record>, StoreError> {
        let rows: Vec<RawRecord> = on_pool!(&self.pool, |p| {
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM archive_records WHERE conversation = $1 ORDER BY seq"
            ))
            .bind(conversation)
            .fetch_all(p)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(raw_record!(row));
            }
            out
        });
        rows.into_iter().map(decode).collect()
    }

    /// Writes the records of `range` to `out` as JSON lines (see
    /// [`Record::to_json_line`]), in chain order; returns how many.
    pub async fn export<W: AsyncWrite + Unpin + Send>(
        &self,
        range: TimeRange,
        out: &mut W,
    ) -> Result<u64, StoreError> {
        let mut after = 0;
        let mut count = 0;
        loop {
            let page = self.read_page(range, after, PAGE as u32).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            let mut text = String::new();
            for record in &page {
                text.push_str(&record.to_json_line());
            }
            out.write_all(text.as_bytes())
                .await
                .map_err(StoreError::Export)?;
            count += page.len() as u64;
        }
        out.flush().await.map_err(StoreError::Export)?;
        Ok(count)
    }

    /// Verifies the whole stored chain page by page: every record's hash, every link, and
    /// the checkpoint that anchors it when older records were purged. Names the first
    /// broken record; a row that cannot even be decoded is broken too.
    pub async fn verify(&self) -> Result<ChainSummary, VerifyError> {
        let first = self.first_seq().await?;
        let Some(first) = first else {
            return Ok(Verifier::new(Anchor::Genesis).finish()?);
        };
        let anchor = if first == 1 {
            Anchor::Genesis
        } else {
            let checkpoints = self.checkpoints().await?;
            find_anchor(first, checkpoints.iter())?
        };
        let mut verifier = Verifier::new(anchor);
        let mut after: i64 = 0;
        loop {
            let rows = self.raw_page_by_seq(after).await?;
            let Some(last) = rows.last() else { break };
            after = last.seq;
            for raw in rows {
                let seq = u64::try_from(raw.seq).unwrap_or(0);
                let record = Record::try_from(raw).map_err(|e| BrokenAt {
                    seq,
                    why: Broken::Undecodable(e.to_string()),
                })?;
                verifier.push(&record)?;
            }
        }
        Ok(verifier.finish()?)
    }

    /// Up to [`PAGE`] rows after sequence number `after`, undecoded.
    async fn raw_page_by_seq(&self, after: i64) -> Result<Vec<RawRecord>, StoreError> {
        Ok(on_pool!(&self.pool, |p| {
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM archive_records WHERE seq > $1 ORDER BY seq LIMIT $2"
            ))
            .bind(after)
            .bind(PAGE)
            .fetch_all(p)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(raw_record!(row));
            }
            out
        }))
    }

    async fn first_seq(&self) -> Result<Option<u64>, StoreError> {
        let first: Option<i64> = on_pool!(&self.pool, |p| {
            sqlx::query_scalar("SELECT MIN(seq) FROM archive_records")
                .fetch_one(p)
                .await?
        });
        Ok(first.and_then(|s| u64::try_from(s).ok()))
    }

    /// Checkpoint records that decode; a malformed one is reported by the walk.
    async fn checkpoints(&self) -> Result<Vec<Record>, StoreError> {
        let rows: Vec<RawRecord> = on_pool!(&self.pool, |p| {
            let rows = sqlx::query(concat!(
                "SELECT ",
                columns!(),
                " FROM archive_records WHERE kind = $1 ORDER BY seq"
            ))
            .bind(RecordKind::Checkpoint.label())
            .fetch_all(p)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(raw_record!(row));
            }
            out
        });
        Ok(rows
            .into_iter()
            .filter_map(|raw| Record::try_from(raw).ok())
            .collect())
    }

    /// Retention: removes the oldest records, those before `cutoff` up to the first record
    /// at or after it (a prefix, see `confer_signalling::archive::plan_purge`), after
    /// appending the checkpoint that keeps the rest verifiable, in one transaction.
    /// `now` stamps the checkpoint, `policy` names the rule. Returns the checkpoint, or
    /// `None` when nothing was old enough.
    pub async fn purge_before(
        &self,
        cutoff: UnixMillis,
        now: UnixMillis,
        policy: &str,
    ) -> Result<Option<Record>, StoreError> {
        let _serial = self.append_lock.lock().await;
        on_pool!(&self.pool, |p| in_write_tx!(p, |tx| {
            let head = read_head!(&mut *tx);
            let first: Option<i64> = sqlx::query_scalar("SELECT MIN(seq) FROM archive_records")
                .fetch_one(&mut *tx)
                .await?;
            let stop: Option<i64> = sqlx::query_scalar(
                "SELECT seq FROM archive_records WHERE at_ms >= $1 ORDER BY seq LIMIT 1",
            )
            .bind(cutoff.0)
            .fetch_optional(&mut *tx)
            .await?;
            let head_seq = i64::try_from(head.seq).unwrap_or(i64::MAX);
            let through = stop.map_or(head_seq, |s| s - 1);
            let Some(first) = first.filter(|&f| f <= through) else {
                return Ok(None);
            };
            let through_hash: String =
                sqlx::query_scalar("SELECT hash FROM archive_records WHERE seq = $1")
                    .bind(through)
                    .fetch_one(&mut *tx)
                    .await?;
            let through_hash = confer_signalling::archive::Hash::from_hex(&through_hash).ok_or(
                StoreError::Corrupt {
                    seq: through,
                    why: DecodeError::Hash("hash"),
                },
            )?;
            let plan = PurgePlan {
                // Both are positive (CHECK (seq > 0)) and first <= through.
                through_seq: u64::try_from(through).unwrap_or(0),
                through_hash,
                purged: u64::try_from(through - first + 1).unwrap_or(0),
            };
            let checkpoint = head.seal_checkpoint(now, &plan, cutoff, policy);
            insert_record!(&mut *tx, &checkpoint);
            sqlx::query("DELETE FROM archive_records WHERE seq <= $1")
                .bind(through)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(checkpoint))
        }))
    }
}

fn decode(raw: RawRecord) -> Result<Record, StoreError> {
    let seq = raw.seq;
    Record::try_from(raw).map_err(|why| StoreError::Corrupt { seq, why })
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}
