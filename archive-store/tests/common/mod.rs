//! The harness the archive-store tests share: one suite, two real databases.
//!
//! - SQLite: a file in a fresh temporary directory.
//! - PostgreSQL: `CONFER_TEST_POSTGRES_URL` when set (each test creates its own database
//!   there); otherwise a throwaway cluster made for the test binary from the Debian
//!   `postgresql` package: `initdb` in a temporary directory, `postgres` started with
//!   `pg_ctl` on a free loopback port with its Unix socket in that directory, one database
//!   per test, stopped when the last test holding it ends (Drop). As root, both run as the
//!   `postgres` user (`runuser`), which owns the directory. Without the package the
//!   PostgreSQL tests print why and pass, unless `CI` is set: then they fail.
//! - Outages are real: PostgreSQL is stopped (`pg_ctl stop`); SQLite is locked by another
//!   connection holding `BEGIN EXCLUSIVE`, or made read-only underneath the open store
//!   (`chattr +i` on the database and its WAL, which needs root on ext4-like file systems).
//!
//! Deterministic: records are made from fixed times and names; no randomness is needed.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use confer_archive_store::{ArchiveStore, StoreConfig};
use confer_signalling::archive::{
    DeviceInfo, Entry, PinOutcome, PolicyOutcome, RecordKind, UnixMillis,
};
use sqlx::{Connection, Executor};

/// 2026-11-26T08:00:00Z plus `s` seconds.
pub fn t(s: i64) -> UnixMillis {
    UnixMillis(1_795_680_000_000 + s * 1000)
}

/// Entry number `i` of a plausible call, at `t(i)`.
pub fn entry(i: i64) -> Entry {
    let conv = format!("conv-{}", i / 10);
    match i % 5 {
        0 => Entry::new(t(i), RecordKind::Joined)
            .conversation(conv)
            .user("alice")
            .device(DeviceInfo {
                id: "alice-mobile",
                kind: "mobile",
                client: Some("confer-ios/2.1"),
            })
            .detail("i", i),
        1 => Entry::pin_entry(t(i), &conv, PinOutcome::Accepted { attempt: 1 }).detail("i", i),
        2 => Entry::dial_out(t(i), &conv, "+15550100", "no_device_answered").detail("i", i),
        3 => Entry::policy_decision(t(i), PolicyOutcome::Refused, "video", "group blocks video")
            .user("bob")
            .detail("i", i),
        _ => Entry::modality_changed(t(i), &conv, "voice", "video").detail("i", i),
    }
}

pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database for one test.
pub struct TestDb {
    pub backend: Backend,
    config: StoreConfig,
    /// SQLite: the directory (removed on drop) and file.
    dir: Option<tempfile::TempDir>,
    sqlite_path: Option<PathBuf>,
    /// PostgreSQL: the cluster when we run it.
    cluster: Option<Arc<PgCluster>>,
    /// SQLite outage: the connection holding the write lock.
    locker: Option<sqlx::SqliteConnection>,
    /// SQLite outage: files made immutable.
    immutable: Vec<PathBuf>,
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("data").join("archive.sqlite");
        TestDb {
            backend: Backend::Sqlite,
            config: short_timeouts(StoreConfig::sqlite(&path)),
            dir: Some(dir),
            sqlite_path: Some(path),
            cluster: None,
            locker: None,
            immutable: Vec::new(),
        }
    }

    /// A fresh database on the binary's shared cluster (or the external server); `None`
    /// when PostgreSQL is not available here (already reported).
    pub async fn postgres() -> Option<TestDb> {
        if let Some(url) = external_url() {
            return Some(TestDb::on_external(&url).await);
        }
        let cluster = PgCluster::shared()?;
        Some(TestDb::on_cluster(cluster).await)
    }

    /// A database on a cluster of its own, which the test may stop and start. `None` also
    /// with an external server, which a test must not stop.
    pub async fn postgres_dedicated() -> Option<TestDb> {
        if external_url().is_some() {
            eprintln!("SKIP: CONFER_TEST_POSTGRES_URL is set; this test stops its server");
            return None;
        }
        let cluster = Arc::new(PgCluster::start()?);
        Some(TestDb::on_cluster(cluster).await)
    }

    async fn on_cluster(cluster: Arc<PgCluster>) -> TestDb {
        let name = next_db_name();
        create_database(&cluster.url("postgres"), &name).await;
        TestDb {
            backend: Backend::Postgres,
            config: short_timeouts(StoreConfig::postgres(cluster.url(&name))),
            dir: None,
            sqlite_path: None,
            cluster: Some(cluster),
            locker: None,
            immutable: Vec::new(),
        }
    }

    async fn on_external(url: &str) -> TestDb {
        let name = next_db_name();
        create_database(url, &name).await;
        let (base, query) = url.split_once('?').map_or((url, ""), |(b, q)| (b, q));
        let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
        let sep = if query.is_empty() { "" } else { "?" };
        TestDb {
            backend: Backend::Postgres,
            config: short_timeouts(StoreConfig::postgres(format!("{base}/{name}{sep}{query}"))),
            dir: None,
            sqlite_path: None,
            cluster: None,
            locker: None,
            immutable: Vec::new(),
        }
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn name(&self) -> &'static str {
        match self.backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    pub async fn open(&self) -> ArchiveStore {
        ArchiveStore::open(&self.config)
            .await
            .expect("open the archive store")
    }

    /// Opens with the production busy timeout (2 s) instead of the tests' short one, for
    /// two stores contending for one SQLite file: SQLite's busy handler polls, so one
    /// writer can wait several commits long.
    pub async fn open_patient(&self) -> ArchiveStore {
        let mut config = self.config.clone();
        config.busy_timeout = Duration::from_secs(2);
        ArchiveStore::open(&config)
            .await
            .expect("open the archive store")
    }

    /// Runs `sql` on a connection of its own, around the store: the tamperer.
    pub async fn execute(&self, sql: &str) {
        match (&self.backend, &self.config.location) {
            (Backend::Sqlite, _) => {
                let mut c = self.sqlite_connection().await;
                c.execute(sqlx::AssertSqlSafe(sql.to_owned()))
                    .await
                    .expect("sql");
                c.close().await.ok();
            }
            (Backend::Postgres, confer_archive_store::Location::Postgres(url)) => {
                let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
                c.execute(sqlx::AssertSqlSafe(sql.to_owned()))
                    .await
                    .expect("sql");
                c.close().await.ok();
            }
            _ => unreachable!("a postgres test database has a postgres URL"),
        }
    }

    async fn sqlite_connection(&self) -> sqlx::SqliteConnection {
        let path = self
            .sqlite_path
            .as_ref()
            .expect("a sqlite test database has a path");
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(Duration::from_secs(5));
        sqlx::SqliteConnection::connect_with(&options)
            .await
            .expect("sqlite connect")
    }

    /// The real outage of each backend: PostgreSQL stopped; SQLite write-locked by
    /// another connection.
    pub async fn outage_begin(&mut self) {
        match self.backend {
            Backend::Sqlite => {
                let mut c = self.sqlite_connection().await;
                c.execute("BEGIN EXCLUSIVE")
                    .await
                    .expect("take the write lock");
                self.locker = Some(c);
            }
            Backend::Postgres => self
                .cluster
                .as_ref()
                .expect("outage tests use postgres_dedicated")
                .stop(),
        }
    }

    pub async fn outage_end(&mut self) {
        if let Some(mut c) = self.locker.take() {
            c.execute("ROLLBACK").await.expect("release the write lock");
            c.close().await.ok();
        }
        if let Some(cluster) = &self.cluster {
            cluster.restart();
        }
    }

    /// SQLite only: makes the database file and its WAL immutable underneath the open
    /// store (writes through open descriptors then fail with EPERM). `false` when this
    /// machine cannot (not root, or a file system without the attribute).
    pub fn make_read_only(&mut self) -> bool {
        let Some(path) = self.sqlite_path.clone() else {
            return false;
        };
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        for file in [path, PathBuf::from(wal)] {
            if !file.exists() {
                continue;
            }
            let ok = Command::new("chattr")
                .arg("+i")
                .arg(&file)
                .output()
                .is_ok_and(|o| o.status.success());
            if !ok {
                self.make_writable();
                return false;
            }
            self.immutable.push(file);
        }
        !self.immutable.is_empty()
    }

    pub fn make_writable(&mut self) {
        for file in self.immutable.drain(..) {
            let _ = Command::new("chattr").arg("-i").arg(&file).output();
        }
    }

    /// A path in the test's temporary directory (SQLite tests) or a fresh temporary one.
    pub fn scratch_path(&mut self, name: &str) -> PathBuf {
        if self.dir.is_none() {
            self.dir = Some(tempfile::tempdir().expect("temporary directory"));
        }
        self.dir
            .as_ref()
            .map(|d| d.path().join(name))
            .unwrap_or_default()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        // Never leave immutable files behind (the temporary directory could not be removed).
        self.make_writable();
    }
}

fn short_timeouts(mut config: StoreConfig) -> StoreConfig {
    config.connect_timeout = Duration::from_millis(1500);
    config.busy_timeout = Duration::from_millis(300);
    config
}

fn external_url() -> Option<String> {
    std::env::var("CONFER_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

fn next_db_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "confer_archive_test_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn create_database(admin_url: &str, name: &str) {
    let mut c = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("connect to the PostgreSQL test server");
    c.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .await
        .expect("create the test database");
    c.close().await.ok();
}

/// A PostgreSQL cluster that lives as long as the tests that hold it.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: Mutex<u16>,
    as_postgres_user: bool,
}

impl PgCluster {
    /// The cluster the tests of this binary share, started by the first that asks and
    /// stopped when the last lets go.
    pub fn shared() -> Option<Arc<PgCluster>> {
        static SHARED: Mutex<Weak<PgCluster>> = Mutex::new(Weak::new());
        let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(cluster) = slot.upgrade() {
            return Some(cluster);
        }
        let cluster = Arc::new(PgCluster::start()?);
        *slot = Arc::downgrade(&cluster);
        Some(cluster)
    }

    /// `initdb` and start a new cluster; `None` (after saying why) when PostgreSQL is not
    /// installed and `CI` is not set.
    pub fn start() -> Option<PgCluster> {
        let Some(bin) = find_postgres_bin() else {
            let msg = "PostgreSQL is not installed (Debian: apt-get install postgresql), \
                       and CONFER_TEST_POSTGRES_URL is not set";
            if std::env::var_os("CI").is_some() {
                panic!("{msg}; CI is set, so the PostgreSQL tests must run");
            }
            eprintln!("SKIP: {msg}");
            return None;
        };
        let as_postgres_user = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("confer-pg-")
            .tempdir()
            .expect("temporary directory");
        if as_postgres_user {
            run(Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path()));
        }
        let cluster = PgCluster {
            dir,
            bin,
            port: Mutex::new(0),
            as_postgres_user,
        };
        let data = cluster.data_dir();
        cluster.run_pg(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--auth=trust".as_ref(),
                "--no-sync".as_ref(),
                "--no-locale".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--no-instructions".as_ref(),
            ],
        );
        cluster.start_server();
        Some(cluster)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn port(&self) -> u16 {
        *self.port.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts `postgres -D data -p PORT -k DIR` through `pg_ctl -w` (which waits until it
    /// accepts connections), on a free port; retried on another port if one was taken in
    /// between.
    fn start_server(&self) {
        let mut last = String::new();
        for _ in 0..3 {
            let port = free_port();
            let out = self.try_pg_ctl_start(port);
            if out.status.success() {
                *self.port.lock().unwrap_or_else(|e| e.into_inner()) = port;
                return;
            }
            last = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
        panic!("PostgreSQL did not start: {last}\n{log}");
    }

    fn try_pg_ctl_start(&self, port: u16) -> Output {
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.dir.path().display()
        );
        let data = self.data_dir();
        let log = self.dir.path().join("log");
        self.pg_command(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-l".as_ref(),
                log.as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
                "-w".as_ref(),
                "-t".as_ref(),
                "60".as_ref(),
                "start".as_ref(),
            ],
        )
        .output()
        .expect("run pg_ctl")
    }

    /// Stops the server (fast shutdown: sessions are cut, as when a database goes down).
    pub fn stop(&self) {
        let data = self.data_dir();
        self.run_pg(
            "pg_ctl",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-m".as_ref(),
                "fast".as_ref(),
                "-w".as_ref(),
                "stop".as_ref(),
            ],
        );
    }

    /// Starts it again on the same port (clients keep their URL).
    pub fn restart(&self) {
        let out = self.try_pg_ctl_start(self.port());
        assert!(
            out.status.success(),
            "PostgreSQL did not restart: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A URL for database `db` over TCP on loopback.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port())
    }

    fn pg_command(&self, tool: &str, args: &[&std::ffi::OsStr]) -> Command {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(args).current_dir(self.dir.path());
        cmd
    }

    fn run_pg(&self, tool: &str, args: &[&std::ffi::OsStr]) {
        run(&mut self.pg_command(tool, args));
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self
            .pg_command(
                "pg_ctl",
                &[
                    "-D".as_ref(),
                    data.as_os_str(),
                    "-m".as_ref(),
                    "immediate".as_ref(),
                    "-w".as_ref(),
                    "stop".as_ref(),
                ],
            )
            .output();
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The newest `/usr/lib/postgresql/<version>/bin` with `initdb`, or `pg_config --bindir`.
fn find_postgres_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let out = Command::new("pg_config").arg("--bindir").output().ok()?;
    let bin = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    bin.join("initdb").exists().then_some(bin)
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Runs the async test body `$f(TestDb)` once per backend: `mod sqlite { fn $f }` and
/// `mod postgres { fn $f }`.
#[macro_export]
macro_rules! both_backends {
    ($($f:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $f() {
                    super::$f($crate::common::TestDb::sqlite().await).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $f() {
                    let Some(db) = $crate::common::TestDb::postgres().await else { return };
                    super::$f(db).await;
                }
            )*
        }
    };
}
