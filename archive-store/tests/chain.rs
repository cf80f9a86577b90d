//! The stored chain on both backends: appended records read back and verify; an edit made
//! directly in the database is detected and named; retention purges keep the chain
//! verifiable; an export is exactly a time range and verifies offline.

mod common;

use common::{TestDb, entry, t};
use confer_archive_store::VerifyError;
use confer_signalling::archive::{
    Anchor, Broken, BrokenAt, CheckpointInfo, Record, RecordKind, TimeRange, verify,
};

both_backends!(
    appended_records_read_back_in_order_and_verify,
    an_edit_made_in_the_database_is_named_at_its_record,
    a_purge_keeps_the_stored_chain_verifiable_and_appends_continue_it,
    an_export_is_the_time_range_as_json_lines_that_verify,
);

async fn appended_records_read_back_in_order_and_verify(db: TestDb) {
    let store = db.open().await;
    assert_eq!(store.verify().await.unwrap().records, 0);
    let mut appended = Vec::new();
    for i in 0..20 {
        appended.push(store.append(entry(i)).await.unwrap());
    }
    let batch = store
        .append_all((20..25).map(entry).collect())
        .await
        .unwrap();
    appended.extend(batch);
    let seqs: Vec<u64> = appended.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=25).collect::<Vec<_>>());

    let all = store
        .read_range(TimeRange {
            from: t(0),
            to: t(1000),
        })
        .await
        .unwrap();
    assert_eq!(
        all,
        appended,
        "{}: stored records differ from appended",
        db.name()
    );
    let summary = store.verify().await.unwrap();
    assert_eq!(summary.anchor, Anchor::Genesis);
    assert_eq!((summary.first_seq, summary.records), (Some(1), 25));
    assert_eq!(summary.head, store.head().await.unwrap());
    assert_eq!(summary.head.hash, appended[24].hash);

    let conv = store.read_conversation("conv-1").await.unwrap();
    // entries 10..20 (seq i + 1), except the policy decisions (i % 5 == 3), which are the
    // user's and belong to no conversation
    let expected: Vec<u64> = (10..20).filter(|i| i % 5 != 3).map(|i| i + 1).collect();
    assert_eq!(conv.iter().map(|r| r.seq).collect::<Vec<_>>(), expected);
    // no digits of a PIN anywhere, only the outcome
    assert!(
        all.iter()
            .filter(|r| r.kind == RecordKind::PinEntry)
            .all(|r| r.details["outcome"] == "accepted")
    );
}

async fn an_edit_made_in_the_database_is_named_at_its_record(db: TestDb) {
    let store = db.open().await;
    for i in 0..10 {
        store.append(entry(i)).await.unwrap();
    }
    // An insider rewrites who was refused video, leaving the hash as it was.
    db.execute("UPDATE archive_records SET user_id = 'mallory' WHERE seq = 4")
        .await;
    let err = store.verify().await.unwrap_err();
    let VerifyError::Broken(BrokenAt { seq, why }) = err else {
        panic!("{}: expected a broken chain, got {err}", db.name());
    };
    assert_eq!(seq, 4);
    assert!(matches!(why, Broken::HashMismatch { .. }), "{why}");

    // Put it back: verifies again. Then delete a record in the middle: the gap is named.
    db.execute("UPDATE archive_records SET user_id = 'bob' WHERE seq = 4")
        .await;
    store.verify().await.unwrap();
    db.execute("DELETE FROM archive_records WHERE seq = 6")
        .await;
    let err = store.verify().await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Broken(BrokenAt {
                seq: 7,
                why: Broken::Gap { expected: 6 }
            })
        ),
        "{err}"
    );

    // Details that are no longer JSON are named too, and reading does not panic.
    db.execute("UPDATE archive_records SET details = '{not json' WHERE seq = 2")
        .await;
    let err = store.verify().await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Broken(BrokenAt {
                seq: 2,
                why: Broken::Undecodable(_)
            })
        ),
        "{err}"
    );
    assert!(
        store
            .read_range(TimeRange {
                from: t(0),
                to: t(100)
            })
            .await
            .is_err()
    );
}

async fn a_purge_keeps_the_stored_chain_verifiable_and_appends_continue_it(db: TestDb) {
    let store = db.open().await;
    for i in 0..30 {
        store.append(entry(i)).await.unwrap();
    }
    let purged_last = store
        .read_range(TimeRange {
            from: t(9),
            to: t(10),
        })
        .await
        .unwrap();
    let cp = store
        .purge_before(t(10), t(500), "365d")
        .await
        .unwrap()
        .unwrap();
    let info = CheckpointInfo::from_record(&cp).unwrap();
    assert_eq!((cp.seq, info.through_seq, info.purged), (31, 10, 10));
    assert_eq!(info.through_hash, purged_last[0].hash);

    let summary = store.verify().await.unwrap();
    assert_eq!(summary.anchor, Anchor::Checkpoint(info));
    assert_eq!((summary.first_seq, summary.records), (Some(11), 21));
    let left = store
        .read_range(TimeRange {
            from: t(0),
            to: t(10_000),
        })
        .await
        .unwrap();
    assert_eq!(left.first().map(|r| r.seq), Some(11));

    // Nothing is old enough: no-op. Appends continue after the checkpoint.
    assert!(
        store
            .purge_before(t(10), t(501), "365d")
            .await
            .unwrap()
            .is_none()
    );
    let next = store.append(entry(600)).await.unwrap();
    assert_eq!((next.seq, next.prev_hash), (32, cp.hash));
    // Purge everything (the first checkpoint included): the chain is its last checkpoint.
    let cp2 = store
        .purge_before(t(10_000), t(10_000), "365d")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(CheckpointInfo::from_record(&cp2).unwrap().purged, 22);
    let summary = store.verify().await.unwrap();
    assert_eq!(
        (summary.first_seq, summary.records, summary.head.seq),
        (Some(33), 1, 33)
    );

    // Deleting the purge's checkpoint leaves the first record unanchored.
    store.append(entry(10_001)).await.unwrap();
    db.execute("DELETE FROM archive_records WHERE kind = 'checkpoint'")
        .await;
    let err = store.verify().await.unwrap_err();
    assert!(
        matches!(
            err,
            VerifyError::Broken(BrokenAt {
                seq: 34,
                why: Broken::Unanchored
            })
        ),
        "{err}"
    );
}

async fn an_export_is_the_time_range_as_json_lines_that_verify(db: TestDb) {
    let store = db.open().await;
    // More records than one page of the export (1000), in five transactions.
    for batch in 0..5 {
        let entries = (batch * 500..(batch + 1) * 500).map(entry).collect();
        store.append_all(entries).await.unwrap();
    }
    // A range across several pages of the export.
    let mut out = Vec::new();
    let n = store
        .export(
            TimeRange {
                from: t(100),
                to: t(2200),
            },
            &mut out,
        )
        .await
        .unwrap();
    assert_eq!(n, 2100);
    let text = String::from_utf8(out).unwrap();
    let records: Vec<Record> = text
        .lines()
        .map(|l| Record::from_json_line(l).unwrap())
        .collect();
    assert_eq!(records.len(), 2100);
    assert_eq!((records[0].seq, records[2099].seq), (101, 2200));
    assert!(records.iter().all(|r| r.hash_is_valid()));
    assert!(records.windows(2).all(|w| w[1].prev_hash == w[0].hash));

    let mut all = Vec::new();
    store
        .export(
            TimeRange {
                from: t(0),
                to: t(100_000),
            },
            &mut all,
        )
        .await
        .unwrap();
    let all: Vec<Record> = String::from_utf8(all)
        .unwrap()
        .lines()
        .map(|l| Record::from_json_line(l).unwrap())
        .collect();
    assert_eq!(verify(&all).unwrap().records, 2500);

    let mut empty = Vec::new();
    let n = store
        .export(
            TimeRange {
                from: t(-10),
                to: t(0),
            },
            &mut empty,
        )
        .await
        .unwrap();
    assert_eq!((n, empty.len()), (0, 0));
}
