//! Appends from many tasks, and from two stores on one database (as two confer processes
//! would), still make one chain; closing the store and opening it again loses nothing and
//! the chain continues where it was.

mod common;

use std::sync::Arc;

use common::{TestDb, entry, t};
use confer_signalling::archive::TimeRange;

both_backends!(
    concurrent_appends_from_many_tasks_and_two_stores_form_one_chain,
    reopening_the_store_loses_nothing_and_continues_the_chain,
);

const TASKS: i64 = 8;
const PER_TASK: i64 = 25;

async fn concurrent_appends_from_many_tasks_and_two_stores_form_one_chain(db: TestDb) {
    let a = Arc::new(db.open_patient().await);
    // A second pool on the same database: its appends are serialised by the database
    // (BEGIN IMMEDIATE, or the advisory lock), not by the first store's mutex.
    let b = Arc::new(db.open_patient().await);
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = if task % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for k in 0..PER_TASK {
                let e = entry(task * 1000 + k).detail("task", task).detail("k", k);
                let r = if k % 5 == 4 {
                    // some batches, to mix transaction sizes
                    store.append_all(vec![e]).await.map(|mut v| v.remove(0))
                } else {
                    store.append(e).await
                };
                seqs.push(r.expect("append").seq);
            }
            seqs
        }));
    }
    let mut per_task = Vec::new();
    for task in tasks {
        per_task.push(task.await.unwrap());
    }
    let total = (TASKS * PER_TASK) as u64;
    let summary = a.verify().await.unwrap();
    assert_eq!(
        (summary.records, summary.head.seq),
        (total, total),
        "{}",
        db.name()
    );

    let mut all: Vec<u64> = per_task.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=total).collect::<Vec<_>>(),
        "every sequence number exactly once"
    );
    // Each task's records are in the chain in the order it appended them.
    let records = a
        .read_range(TimeRange {
            from: t(-1),
            to: t(1_000_000),
        })
        .await
        .unwrap();
    for task in 0..TASKS {
        let ks: Vec<i64> = records
            .iter()
            .filter(|r| r.details["task"] == task)
            .map(|r| r.details["k"].as_i64().unwrap())
            .collect();
        assert_eq!(ks, (0..PER_TASK).collect::<Vec<_>>());
        assert!(per_task[task as usize].windows(2).all(|w| w[0] < w[1]));
    }
}

async fn reopening_the_store_loses_nothing_and_continues_the_chain(db: TestDb) {
    let store = db.open().await;
    for i in 0..12 {
        store.append(entry(i)).await.unwrap();
    }
    let head = store.head().await.unwrap();
    let before = store
        .read_range(TimeRange {
            from: t(0),
            to: t(100),
        })
        .await
        .unwrap();
    store.close().await;
    drop(store);

    let store = db.open().await; // migrations run again: a no-op
    assert_eq!(store.head().await.unwrap(), head);
    let after = store
        .read_range(TimeRange {
            from: t(0),
            to: t(100),
        })
        .await
        .unwrap();
    assert_eq!(after, before);
    let next = store.append(entry(12)).await.unwrap();
    assert_eq!((next.seq, next.prev_hash), (13, head.hash));
    assert_eq!(store.verify().await.unwrap().records, 13);
}
