//! Fail closed: when archiving is required and the archive cannot be written (PostgreSQL
//! stopped, SQLite locked by another writer or made read-only underneath), new
//! escalations and calls are refused with a typed error and counted, records of ongoing
//! calls wait in order, and they are all written, in order, once the archive is back;
//! with a spool they survive a restart of the archiver; at the queue bound a record is
//! refused loudly.

mod common;

use std::sync::Arc;

use common::{TestDb, entry, t};
use confer_archive_store::{Archived, Archiver, ArchiverConfig, ArchiverError};
use confer_signalling::archive::{Entry, PolicyOutcome, RecordKind, TimeRange};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_by_another_writer_fails_closed_and_catches_up() {
    outage_fails_closed_and_catches_up(TestDb::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_fails_closed_and_catches_up() {
    let Some(db) = TestDb::postgres_dedicated().await else {
        return;
    };
    outage_fails_closed_and_catches_up(db).await;
}

async fn outage_fails_closed_and_catches_up(mut db: TestDb) {
    let store = Arc::new(db.open().await);
    let archiver = Archiver::open(store.clone(), ArchiverConfig::default())
        .await
        .unwrap();
    archiver.require_writable().await.unwrap();
    let first = archiver
        .append(Entry::new(t(0), RecordKind::ConversationStarted).conversation("conv-0"))
        .await
        .unwrap();
    assert!(matches!(first, Archived::Written(ref r) if r.seq == 1));
    assert!(matches!(
        archiver.record(entry(1)).await.unwrap(),
        Archived::Written(_)
    ));

    db.outage_begin().await;
    // The ongoing call goes on: its records wait, in order.
    for i in 2..7 {
        let queued = archiver.record(entry(i)).await.unwrap();
        assert_eq!(
            queued,
            Archived::Queued {
                waiting: (i - 1) as usize
            },
            "{}",
            db.name()
        );
    }
    // A new escalation is refused, with a reason, and counted.
    let refused = archiver.require_writable().await.unwrap_err();
    assert_eq!(refused.reason(), "archive_unavailable");
    let refused = archiver
        .append(Entry::new(t(7), RecordKind::ConversationStarted).conversation("conv-new"))
        .await
        .unwrap_err();
    assert_eq!(refused.reason(), "archive_unavailable");
    // ... and the refusal itself waits to be archived.
    let why = Entry::policy_decision(t(8), PolicyOutcome::Refused, "escalation", refused.reason())
        .conversation("conv-new");
    assert_eq!(
        archiver.record(why).await.unwrap(),
        Archived::Queued { waiting: 6 }
    );
    assert!(archiver.flush().await.is_err(), "still down");
    let stats = archiver.stats();
    assert_eq!(
        (stats.refused, stats.waiting, stats.queued, stats.available),
        (2, 6, 6, false)
    );
    assert!(stats.store_failures >= 1);
    assert_eq!(
        store.head().await.ok().map(|h| h.seq).unwrap_or(2),
        2,
        "nothing written while down"
    );

    db.outage_end().await;
    assert_eq!(archiver.flush().await.unwrap(), 6);
    archiver.require_writable().await.unwrap();
    let stats = archiver.stats();
    assert_eq!(
        (stats.written, stats.waiting, stats.available),
        (8, 0, true)
    );

    let records = store
        .read_range(TimeRange {
            from: t(0),
            to: t(100),
        })
        .await
        .unwrap();
    let order: Vec<(u64, String)> = records
        .iter()
        .map(|r| (r.seq, r.kind.label().to_owned()))
        .collect();
    assert_eq!(order.len(), 8);
    // the waiting records in the order they came, the refusal last; never conv-new started
    let is: Vec<i64> = records[2..7]
        .iter()
        .map(|r| r.details["i"].as_i64().unwrap())
        .collect();
    assert_eq!(is, [2, 3, 4, 5, 6]);
    assert_eq!(records[7].kind, RecordKind::PolicyDecision);
    assert!(
        records
            .iter()
            .all(|r| r.conversation.as_deref() != Some("conv-new")
                || r.kind == RecordKind::PolicyDecision)
    );
    assert_eq!(store.verify().await.unwrap().records, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_made_read_only_underneath_fails_closed_and_catches_up() {
    let mut db = TestDb::sqlite().await;
    let store = Arc::new(db.open().await);
    let archiver = Archiver::open(store.clone(), ArchiverConfig::default())
        .await
        .unwrap();
    archiver.record(entry(0)).await.unwrap();
    if !db.make_read_only() {
        eprintln!("SKIP: cannot make files immutable here (needs root and chattr)");
        return;
    }
    let err = archiver.require_writable().await.unwrap_err();
    assert!(matches!(err, ArchiverError::Unavailable(_)), "{err}");
    assert_eq!(
        archiver.record(entry(1)).await.unwrap(),
        Archived::Queued { waiting: 1 }
    );
    assert_eq!(
        archiver.record(entry(2)).await.unwrap(),
        Archived::Queued { waiting: 2 }
    );
    db.make_writable();
    assert_eq!(archiver.flush().await.unwrap(), 2);
    let summary = store.verify().await.unwrap();
    assert_eq!(summary.records, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_records_survive_an_archiver_restart_through_the_spool() {
    let mut db = TestDb::sqlite().await;
    let spool = db.scratch_path("spool/archive-spool.jsonl");
    let config = ArchiverConfig {
        spool: Some(spool.clone()),
        ..ArchiverConfig::default()
    };
    let store = Arc::new(db.open().await);
    let archiver = Archiver::open(store.clone(), config.clone()).await.unwrap();
    archiver.record(entry(0)).await.unwrap();
    db.outage_begin().await;
    for i in 1..4 {
        assert!(matches!(
            archiver.record(entry(i)).await.unwrap(),
            Archived::Queued { .. }
        ));
    }
    // confer stops while the archive is down: the queue in memory is gone...
    drop(archiver);
    db.outage_end().await;
    // ... and the next run finds it in the spool and writes it first.
    let archiver = Archiver::open(store.clone(), config).await.unwrap();
    assert_eq!(archiver.stats().waiting, 3);
    archiver.record(entry(4)).await.unwrap();
    assert_eq!(archiver.stats().waiting, 0);
    let records = store
        .read_range(TimeRange {
            from: t(0),
            to: t(100),
        })
        .await
        .unwrap();
    let is: Vec<i64> = records
        .iter()
        .map(|r| r.details["i"].as_i64().unwrap())
        .collect();
    assert_eq!(is, [0, 1, 2, 3, 4]);
    assert_eq!(
        std::fs::read(&spool).unwrap().len(),
        0,
        "spool emptied once written"
    );
    store.verify().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_queue_bound_a_record_is_refused_and_counted() {
    let mut db = TestDb::sqlite().await;
    let store = Arc::new(db.open().await);
    let config = ArchiverConfig {
        queue_records: 3,
        ..ArchiverConfig::default()
    };
    let archiver = Archiver::open(store.clone(), config).await.unwrap();
    db.outage_begin().await;
    for i in 0..3 {
        archiver.record(entry(i)).await.unwrap();
    }
    let err = archiver.record(entry(3)).await.unwrap_err();
    assert!(
        matches!(err, ArchiverError::QueueFull { records: 3, .. }),
        "{err}"
    );
    assert_eq!(err.reason(), "archive_queue_full");
    assert_eq!((archiver.stats().dropped, archiver.stats().waiting), (1, 3));
    db.outage_end().await;
    assert_eq!(archiver.flush().await.unwrap(), 3);
    assert_eq!(store.verify().await.unwrap().records, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_archiving_is_not_required_an_outage_refuses_nothing() {
    let mut db = TestDb::sqlite().await;
    let store = Arc::new(db.open().await);
    let config = ArchiverConfig {
        required: false,
        ..ArchiverConfig::default()
    };
    let archiver = Archiver::open(store.clone(), config).await.unwrap();
    db.outage_begin().await;
    archiver.require_writable().await.unwrap();
    let started = Entry::new(t(0), RecordKind::ConversationStarted).conversation("c");
    assert_eq!(
        archiver.append(started).await.unwrap(),
        Archived::Queued { waiting: 1 }
    );
    assert_eq!(archiver.stats().refused, 0);
    db.outage_end().await;
    assert_eq!(archiver.flush().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_entry_is_refused_and_never_queued() {
    let mut db = TestDb::sqlite().await;
    let store = Arc::new(db.open().await);
    let archiver = Archiver::open(store, ArchiverConfig::default())
        .await
        .unwrap();
    db.outage_begin().await;
    let pin = Entry::new(t(0), RecordKind::DialIn).detail("pin", "4711");
    let err = archiver.record(pin).await.unwrap_err();
    assert!(matches!(err, ArchiverError::Entry(_)), "{err}");
    assert_eq!(archiver.stats().waiting, 0);
    db.outage_end().await;
}
