//! `confer archive verify | export | purge` on a real SQLite archive in a data directory:
//! verify exits 0 on a good archive and 1 naming the first broken record after one row
//! is edited behind the archive's back; export writes exactly the records of a time range
//! as JSON lines that verify offline; a purge by hand keeps the chain verifiable.
//!
//! The archive is written with `confer-archive-store` (what the running server's follower
//! uses), then the binary is run as a user would, with `CONFER_DATA_DIR` naming the data
//! directory. Deterministic: fixed times and names.

use std::path::Path;
use std::process::{Command, Output};

use confer_archive_store::{ArchiveStore, StoreConfig};
use confer_signalling::archive::{
    Entry, PinOutcome, PolicyOutcome, Record, RecordKind, UnixMillis, verify,
};
use sqlx::{Connection, Executor};

/// 2026-11-26T10:00:00Z plus `m` minutes.
fn t(m: i64) -> UnixMillis {
    UnixMillis(1_795_687_200_000 + m * 60_000)
}

/// Six records of one call, one a minute from 10:00, each with the journal cursor the
/// server's follower stores.
async fn write_archive(data: &Path) {
    let store = ArchiveStore::open(&StoreConfig::sqlite(data.join("archive.db")))
        .await
        .expect("open the archive");
    let entries = [
        Entry::new(t(0), RecordKind::ConversationStarted)
            .conversation("chat-1")
            .user("alice")
            .detail("modality", "voice"),
        Entry::new(t(1), RecordKind::Joined)
            .conversation("chat-1")
            .user("alice"),
        Entry::pin_entry(t(2), "chat-1", PinOutcome::Rejected { attempt: 1 }),
        Entry::policy_decision(t(3), PolicyOutcome::Refused, "dial_out", "premium rate")
            .conversation("chat-1"),
        Entry::new(t(4), RecordKind::Left)
            .conversation("chat-1")
            .user("alice"),
        Entry::new(t(5), RecordKind::ConversationEnded).conversation("chat-1"),
    ];
    for (i, e) in entries.into_iter().enumerate() {
        store
            .append(e.detail("event", i as u64 + 1))
            .await
            .expect("append");
    }
    store.close().await;
}

fn confer(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_confer"))
        .arg("archive")
        .args(args)
        .env("CONFER_DATA_DIR", data)
        .env_remove("CONFER_ARCHIVE_URL")
        .output()
        .expect("run confer")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn verify_passes_a_good_archive_and_names_the_first_tampered_record() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    write_archive(data).await;

    let ok = confer(data, &["verify"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(
        text(&ok.stdout).contains("archive verified: 6 records, seq 1..6"),
        "{}",
        text(&ok.stdout)
    );

    // Someone rewrites who left the call, straight in the database.
    let mut db =
        sqlx::SqliteConnection::connect(&format!("sqlite://{}", data.join("archive.db").display()))
            .await
            .unwrap();
    let changed = db
        .execute(
            "UPDATE archive_records SET user_id = 'mallory' WHERE seq = 5; \
             UPDATE archive_records SET details = '{\"event\":4,\"outcome\":\"allowed\"}' \
             WHERE seq = 4",
        )
        .await
        .unwrap();
    assert_eq!(changed.rows_affected(), 2);
    db.close().await.unwrap();

    let broken = confer(data, &["verify"]);
    assert_eq!(broken.status.code(), Some(1));
    let err = text(&broken.stderr);
    assert!(
        err.contains("archive record 4 is broken: its content does not match its hash"),
        "{err}"
    );
    assert!(text(&broken.stdout).is_empty());
}

#[tokio::test]
async fn export_writes_the_range_as_json_lines_that_verify_offline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    write_archive(data).await;
    let out = data.join("export.jsonl");

    // [10:01, 10:04): records 2, 3 and 4; one bound as RFC 3339, one as unix ms.
    let to_ms = t(4).0.to_string();
    let run = confer(
        data,
        &[
            "export",
            "--from",
            "2026-11-26T10:01:00Z",
            "--to",
            &to_ms,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(run.status.code(), Some(0), "{}", text(&run.stderr));
    assert!(text(&run.stderr).contains("exported 3 records"));
    let lines = std::fs::read_to_string(&out).unwrap();
    let records: Vec<Record> = lines
        .lines()
        .map(|l| Record::from_json_line(l).expect("an exported record"))
        .collect();
    assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [2, 3, 4]);
    assert_eq!(records[1].kind, RecordKind::PinEntry);
    assert!(
        lines.contains("\"time\":\"2026-11-26T10:02:00.000Z\""),
        "{lines}"
    );
    assert!(records.iter().all(Record::hash_is_valid));
    for pair in records.windows(2) {
        assert_eq!(pair[1].prev_hash, pair[0].hash);
    }

    // Everything, to standard output: the whole chain verifies offline.
    let all = confer(data, &["export"]);
    assert_eq!(all.status.code(), Some(0), "{}", text(&all.stderr));
    let records: Vec<Record> = text(&all.stdout)
        .lines()
        .map(|l| Record::from_json_line(l).unwrap())
        .collect();
    assert_eq!(verify(&records).expect("verifies").records, 6);

    let bad = confer(data, &["export", "--from", "tomorrow"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("\"tomorrow\""),
        "{}",
        text(&bad.stderr)
    );
}

#[tokio::test]
async fn a_purge_by_hand_keeps_the_chain_verifiable_and_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    write_archive(data).await;

    let purge = confer(data, &["purge", "--before", "2026-11-26T10:03:00Z"]);
    assert_eq!(purge.status.code(), Some(0), "{}", text(&purge.stderr));
    assert!(
        text(&purge.stdout).contains("purged 3 records through seq 3; checkpoint is record 7"),
        "{}",
        text(&purge.stdout)
    );
    let ok = confer(data, &["verify"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    let summary = text(&ok.stdout);
    assert!(summary.contains("4 records, seq 4..7"), "{summary}");
    assert!(
        summary.contains("records through 3 were purged"),
        "{summary}"
    );

    // Purging everything keeps the record holding the server's journal cursor (event 6).
    let purge = confer(data, &["purge", "--before", "2100-01-01T00:00:00Z"]);
    assert_eq!(purge.status.code(), Some(0), "{}", text(&purge.stderr));
    assert!(
        text(&purge.stdout).contains("purged 2 records through seq 5"),
        "{}",
        text(&purge.stdout)
    );
    let all = confer(data, &["export"]);
    let kept: Vec<Record> = text(&all.stdout)
        .lines()
        .map(|l| Record::from_json_line(l).unwrap())
        .collect();
    assert_eq!(kept.iter().map(|r| r.seq).collect::<Vec<_>>(), [6, 7, 8]);
    assert_eq!(kept[0].details["event"], 6);
    assert_eq!(confer(data, &["verify"]).status.code(), Some(0));
}

#[test]
fn a_missing_archive_is_an_error_not_a_new_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    let run = confer(dir.path(), &["verify"]);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        text(&run.stderr).contains("no archive at"),
        "{}",
        text(&run.stderr)
    );
    assert!(!dir.path().join("archive.db").exists());
}
