//! The hash chain: sealing entries, verifying a chain (from record 1 or from a retention
//! checkpoint), planning purges, and [`Chain`], an in-memory archive with the same rules as
//! the store.

use serde_json::{Map, Value};

use super::canonical::Hashed;
use super::entry::{Entry, EntryError, RecordKind};
use super::record::{Hash, Record, TimeRange, UnixMillis};

/// The end of a chain: the last record's sequence number and hash (0 and
/// [`Hash::ZERO`] for an empty chain). What to note down elsewhere to detect truncation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: u64,
    pub hash: Hash,
}

impl ChainHead {
    pub const EMPTY: ChainHead = ChainHead {
        seq: 0,
        hash: Hash::ZERO,
    };

    /// The head after `record`.
    pub fn of(record: &Record) -> ChainHead {
        ChainHead {
            seq: record.seq,
            hash: record.hash,
        }
    }

    /// Seals `entry` as the next record after this head. The caller stores it and then
    /// advances the head to [`ChainHead::of`] the record; two records sealed from the same
    /// head are a fork, which the store's serialised appends and unique sequence numbers
    /// prevent.
    pub fn seal(&self, entry: Entry) -> Result<Record, EntryError> {
        entry.validate()?;
        Ok(self.seal_unchecked(entry))
    }

    /// Seals the checkpoint that a purge of `plan` appends, `at` the time of the purge.
    /// `policy` names the retention rule (e.g. `365d`).
    pub fn seal_checkpoint(
        &self,
        at: UnixMillis,
        plan: &PurgePlan,
        cutoff: UnixMillis,
        policy: &str,
    ) -> Record {
        let mut details = Map::new();
        details.insert("through_seq".into(), Value::from(plan.through_seq));
        details.insert(
            "through_hash".into(),
            Value::from(plan.through_hash.to_hex()),
        );
        details.insert("purged".into(), Value::from(plan.purged));
        details.insert("cutoff".into(), Value::from(cutoff.0));
        details.insert("policy".into(), Value::from(policy));
        self.seal_unchecked(Entry {
            at,
            kind: RecordKind::Checkpoint,
            conversation: None,
            user: None,
            details,
        })
    }

    fn seal_unchecked(&self, entry: Entry) -> Record {
        let seq = self.seq.saturating_add(1);
        let hash = Hashed {
            seq,
            at: entry.at.0,
            kind: entry.kind.label(),
            conversation: entry.conversation.as_deref(),
            user: entry.user.as_deref(),
            details: &entry.details,
            prev_hash: &self.hash.0,
        }
        .digest();
        Record {
            seq,
            at: entry.at,
            kind: entry.kind,
            conversation: entry.conversation,
            user: entry.user,
            details: entry.details,
            prev_hash: self.hash,
            hash: Hash(hash),
        }
    }
}

/// What a checkpoint record says about the purge that made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointInfo {
    /// The checkpoint record's own sequence number.
    pub checkpoint_seq: u64,
    /// The last purged record, and its hash.
    pub through_seq: u64,
    pub through_hash: Hash,
    pub purged: u64,
    pub cutoff: UnixMillis,
    pub policy: String,
}

impl CheckpointInfo {
    /// Reads a checkpoint record's details; `Err` says what is wrong.
    pub fn from_record(record: &Record) -> Result<CheckpointInfo, String> {
        if record.kind != RecordKind::Checkpoint {
            return Err(format!("record {} is not a checkpoint", record.seq));
        }
        let d = &record.details;
        let through_seq = d
            .get("through_seq")
            .and_then(Value::as_u64)
            .ok_or("through_seq missing")?;
        let through_hash = d
            .get("through_hash")
            .and_then(Value::as_str)
            .and_then(Hash::from_hex)
            .ok_or("through_hash missing")?;
        let purged = d
            .get("purged")
            .and_then(Value::as_u64)
            .ok_or("purged missing")?;
        let cutoff = d
            .get("cutoff")
            .and_then(Value::as_i64)
            .ok_or("cutoff missing")?;
        let policy = d
            .get("policy")
            .and_then(Value::as_str)
            .ok_or("policy missing")?;
        if through_seq >= record.seq {
            return Err(format!(
                "it covers records through {through_seq}, not before itself"
            ));
        }
        Ok(CheckpointInfo {
            checkpoint_seq: record.seq,
            through_seq,
            through_hash,
            purged,
            cutoff: UnixMillis(cutoff),
            policy: policy.to_owned(),
        })
    }
}

/// Where verification starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anchor {
    /// At record 1, whose `prev_hash` is [`Hash::ZERO`].
    Genesis,
    /// After the records a purge removed.
    Checkpoint(CheckpointInfo),
}

/// The first broken record of a chain, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("archive record {seq} is broken: {why}")]
pub struct BrokenAt {
    pub seq: u64,
    pub why: Broken,
}

/// Why a record breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    #[error("its content does not match its hash (stored {stored}, computed {computed})")]
    HashMismatch { stored: Hash, computed: Hash },
    #[error(
        "it does not link to the record before it (expected prev_hash {expected}, found {found})"
    )]
    LinkMismatch { expected: Hash, found: Hash },
    #[error("records are missing or out of order before it (expected record {expected})")]
    Gap { expected: u64 },
    #[error("it is the first record kept but no checkpoint accounts for the records before it")]
    Unanchored,
    #[error("it is a malformed checkpoint: {0}")]
    BadCheckpoint(String),
    #[error("the checkpoint that anchors the chain is not in it")]
    AnchorMissing,
    #[error("it cannot be read: {0}")]
    Undecodable(String),
}

/// A verified chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    pub anchor: Anchor,
    /// The first record, `None` for an empty chain.
    pub first_seq: Option<u64>,
    pub records: u64,
    pub head: ChainHead,
}

/// Finds where a chain whose first kept record is `first_seq` starts: record 1 needs no
/// anchor; otherwise the checkpoint (among `checkpoints`) that covers exactly the records
/// before it. The latest such checkpoint wins.
pub fn find_anchor<'a>(
    first_seq: u64,
    checkpoints: impl IntoIterator<Item = &'a Record>,
) -> Result<Anchor, BrokenAt> {
    if first_seq == 1 {
        return Ok(Anchor::Genesis);
    }
    let mut best: Option<CheckpointInfo> = None;
    for record in checkpoints {
        if record.kind != RecordKind::Checkpoint {
            continue;
        }
        // A malformed checkpoint is reported when the walk reaches it.
        if let Ok(info) = CheckpointInfo::from_record(record)
            && info.through_seq.checked_add(1) == Some(first_seq)
            && best
                .as_ref()
                .is_none_or(|b| b.checkpoint_seq < info.checkpoint_seq)
        {
            best = Some(info);
        }
    }
    best.map(Anchor::Checkpoint).ok_or(BrokenAt {
        seq: first_seq,
        why: Broken::Unanchored,
    })
}

/// Walks a chain record by record (ascending `seq`), so a store can verify millions of
/// records page by page. Stops being useful after the first error.
#[derive(Debug, Clone)]
pub struct Verifier {
    anchor: Anchor,
    expected_seq: u64,
    expected_prev: Hash,
    anchor_seen: bool,
    first_seq: Option<u64>,
    records: u64,
    head: ChainHead,
}

impl Verifier {
    pub fn new(anchor: Anchor) -> Verifier {
        let (expected_seq, expected_prev) = match &anchor {
            Anchor::Genesis => (1, Hash::ZERO),
            Anchor::Checkpoint(info) => (info.through_seq.saturating_add(1), info.through_hash),
        };
        Verifier {
            anchor,
            expected_seq,
            expected_prev,
            anchor_seen: false,
            first_seq: None,
            records: 0,
            head: ChainHead::EMPTY,
        }
    }

    /// Checks the next record: its place, its own hash, its link, and checkpoints'
    /// content.
    pub fn push(&mut self, record: &Record) -> Result<(), BrokenAt> {
        let broken = |why| BrokenAt {
            seq: record.seq,
            why,
        };
        if record.seq != self.expected_seq {
            return Err(broken(Broken::Gap {
                expected: self.expected_seq,
            }));
        }
        let computed = record.compute_hash();
        if computed != record.hash {
            return Err(broken(Broken::HashMismatch {
                stored: record.hash,
                computed,
            }));
        }
        if record.prev_hash != self.expected_prev {
            return Err(broken(Broken::LinkMismatch {
                expected: self.expected_prev,
                found: record.prev_hash,
            }));
        }
        if record.kind == RecordKind::Checkpoint {
            let info = CheckpointInfo::from_record(record)
                .map_err(|e| broken(Broken::BadCheckpoint(e)))?;
            if let Anchor::Checkpoint(anchor) = &self.anchor
                && anchor.checkpoint_seq == record.seq
            {
                if *anchor != info {
                    return Err(broken(Broken::BadCheckpoint(
                        "it differs from the anchor read before".into(),
                    )));
                }
                self.anchor_seen = true;
            }
        }
        self.first_seq.get_or_insert(record.seq);
        self.records += 1;
        self.expected_seq = record.seq.saturating_add(1);
        self.expected_prev = record.hash;
        self.head = ChainHead::of(record);
        Ok(())
    }

    /// Ends the walk: the anchoring checkpoint must have been met.
    pub fn finish(self) -> Result<ChainSummary, BrokenAt> {
        if let Anchor::Checkpoint(info) = &self.anchor
            && !self.anchor_seen
        {
            return Err(BrokenAt {
                seq: info.checkpoint_seq,
                why: Broken::AnchorMissing,
            });
        }
        Ok(ChainSummary {
            anchor: self.anchor,
            first_seq: self.first_seq,
            records: self.records,
            head: self.head,
        })
    }
}

/// Verifies a whole chain held in memory, in ascending `seq` order (as stored or
/// exported), naming the first broken record.
pub fn verify(records: &[Record]) -> Result<ChainSummary, BrokenAt> {
    let Some(first) = records.first() else {
        return Verifier::new(Anchor::Genesis).finish();
    };
    let anchor = find_anchor(
        first.seq,
        records.iter().filter(|r| r.kind == RecordKind::Checkpoint),
    )?;
    let mut verifier = Verifier::new(anchor);
    for record in records {
        verifier.push(record)?;
    }
    verifier.finish()
}

/// What a purge removes: records from the oldest kept one through `through_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgePlan {
    pub through_seq: u64,
    pub through_hash: Hash,
    pub purged: u64,
}

/// The purge at `cutoff` of a chain given oldest first: the longest prefix whose records
/// are all older than `cutoff` (a record at or after it stops the purge, even if later
/// records are older, so the rest stays one chain). `None` when nothing is that old.
pub fn plan_purge<'a>(
    records: impl IntoIterator<Item = &'a Record>,
    cutoff: UnixMillis,
) -> Option<PurgePlan> {
    let mut plan: Option<PurgePlan> = None;
    for record in records {
        if record.at >= cutoff {
            break;
        }
        plan = Some(PurgePlan {
            through_seq: record.seq,
            through_hash: record.hash,
            purged: plan.map_or(0, |p| p.purged) + 1,
        });
    }
    plan
}

/// An archive held in memory with the store's rules: for tests, tools and as the
/// reference the store is checked against.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    records: Vec<Record>,
    head: Option<ChainHead>,
}

impl Chain {
    pub fn new() -> Chain {
        Chain::default()
    }

    pub fn records(&self) -> &[Record] {
        &self.records
    }

    pub fn head(&self) -> ChainHead {
        self.head.unwrap_or(ChainHead::EMPTY)
    }

    /// Seals and keeps `entry`.
    pub fn append(&mut self, entry: Entry) -> Result<&Record, EntryError> {
        let record = self.head().seal(entry)?;
        Ok(self.push(record))
    }

    fn push(&mut self, record: Record) -> &Record {
        self.head = Some(ChainHead::of(&record));
        self.records.push(record);
        // Just pushed.
        &self.records[self.records.len() - 1]
    }

    pub fn verify(&self) -> Result<ChainSummary, BrokenAt> {
        verify(&self.records)
    }

    /// Removes the records older than `cutoff` (see [`plan_purge`]) after appending their
    /// checkpoint, made `at`; returns the checkpoint, or `None` when nothing was purged.
    pub fn purge_before(
        &mut self,
        cutoff: UnixMillis,
        at: UnixMillis,
        policy: &str,
    ) -> Option<&Record> {
        let plan = plan_purge(&self.records, cutoff)?;
        let checkpoint = self.head().seal_checkpoint(at, &plan, cutoff, policy);
        self.records.retain(|r| r.seq > plan.through_seq);
        Some(self.push(checkpoint))
    }

    /// The records in `range`, as JSON lines, in chain order.
    pub fn export(&self, range: TimeRange) -> String {
        self.records
            .iter()
            .filter(|r| range.contains(r.at))
            .map(Record::to_json_line)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{DeviceInfo, PinOutcome, PolicyOutcome};

    fn t(s: i64) -> UnixMillis {
        UnixMillis(1_795_680_000_000 + s * 1000)
    }

    /// A short call: escalation, two joins, a PIN, a refusal, the end; record i at t(i).
    fn story() -> Chain {
        let mut c = Chain::new();
        let browser = DeviceInfo {
            id: "alice-browser",
            kind: "browser",
            client: Some("confer-web/1.4"),
        };
        let entries = vec![
            Entry::new(t(0), RecordKind::ConversationStarted)
                .conversation("c1")
                .user("alice")
                .detail("modality", "video"),
            Entry::new(t(1), RecordKind::Joined)
                .conversation("c1")
                .user("alice")
                .device(browser),
            Entry::dial_in(t(2), "c1", "+15550100", "+15550199"),
            Entry::pin_entry(t(3), "c1", PinOutcome::Accepted { attempt: 1 }),
            Entry::policy_decision(
                t(4),
                PolicyOutcome::Refused,
                "dial_out",
                "prefix +1900 blocked",
            )
            .conversation("c1")
            .user("alice"),
            Entry::modality_changed(t(5), "c1", "video", "voice"),
            Entry::new(t(6), RecordKind::ConversationEnded).conversation("c1"),
        ];
        for e in entries {
            c.append(e).unwrap();
        }
        c
    }

    #[test]
    fn a_fresh_chain_verifies_and_reports_its_head() {
        let c = story();
        let s = c.verify().unwrap();
        assert_eq!(s.anchor, Anchor::Genesis);
        assert_eq!(s.records, 7);
        assert_eq!(s.first_seq, Some(1));
        assert_eq!(s.head, ChainHead::of(&c.records()[6]));
        assert_eq!(c.records()[0].prev_hash, Hash::ZERO);
        assert_eq!(verify(&[]).unwrap().records, 0);
    }

    #[test]
    fn editing_a_record_is_named_at_that_record() {
        let mut records = story().records().to_vec();
        records[3]
            .details
            .insert("outcome".into(), "rejected".into());
        let err = verify(&records).unwrap_err();
        assert_eq!(err.seq, 4);
        assert!(matches!(err.why, Broken::HashMismatch { .. }));
    }

    #[test]
    fn an_edit_with_a_recomputed_hash_breaks_the_next_link() {
        let mut records = story().records().to_vec();
        records[2].user = Some("mallory".into());
        records[2].hash = records[2].compute_hash();
        let err = verify(&records).unwrap_err();
        assert_eq!(err.seq, 4);
        assert!(matches!(err.why, Broken::LinkMismatch { .. }));
    }

    #[test]
    fn a_deleted_record_is_a_gap_and_a_deleted_prefix_is_unanchored() {
        let mut records = story().records().to_vec();
        records.remove(2);
        let err = verify(&records).unwrap_err();
        assert_eq!(
            err,
            BrokenAt {
                seq: 4,
                why: Broken::Gap { expected: 3 }
            }
        );
        let whole = story();
        assert_eq!(
            verify(&whole.records()[2..]).unwrap_err(),
            BrokenAt {
                seq: 3,
                why: Broken::Unanchored
            }
        );
    }

    #[test]
    fn a_purge_removes_the_old_prefix_and_the_rest_still_verifies() {
        let mut c = story();
        let before = c.records()[2].clone();
        let cp = c.purge_before(t(3), t(100), "90d").unwrap().clone();
        assert_eq!(cp.seq, 8);
        let info = CheckpointInfo::from_record(&cp).unwrap();
        assert_eq!((info.through_seq, info.purged), (3, 3));
        assert_eq!(info.through_hash, before.hash);
        assert_eq!(c.records().first().map(|r| r.seq), Some(4));
        let s = c.verify().unwrap();
        assert_eq!(s.anchor, Anchor::Checkpoint(info));
        assert_eq!((s.first_seq, s.records), (Some(4), 5));
        // appending continues the chain after the checkpoint
        c.append(Entry::new(t(101), RecordKind::CallStarted))
            .unwrap();
        assert_eq!(c.verify().unwrap().head.seq, 9);
    }

    #[test]
    fn purging_again_and_purging_everything_keep_the_chain_verifiable() {
        let mut c = story();
        c.purge_before(t(2), t(100), "90d").unwrap();
        // the second purge also removes the first checkpoint (made at t(100))
        let cp = c.purge_before(t(1000), t(1000), "90d").unwrap().clone();
        assert_eq!(c.records(), std::slice::from_ref(&cp));
        let info = CheckpointInfo::from_record(&cp).unwrap();
        assert_eq!((info.through_seq, info.purged), (8, 6));
        assert_eq!(c.verify().unwrap().records, 1);
        assert!(c.purge_before(t(0), t(1001), "90d").is_none());
    }

    #[test]
    fn a_purge_stops_at_the_first_record_inside_retention() {
        let mut c = Chain::new();
        for s in [0, 1, 50, 2, 3] {
            c.append(Entry::new(t(s), RecordKind::Alerting)).unwrap();
        }
        let plan = plan_purge(c.records(), t(10)).unwrap();
        assert_eq!((plan.through_seq, plan.purged), (2, 2));
    }

    #[test]
    fn a_forged_or_missing_anchor_is_detected() {
        let mut c = story();
        c.purge_before(t(3), t(100), "90d");
        let mut records = c.records().to_vec();
        // checkpoint edited to claim fewer purged records: its own hash breaks
        let last = records.len() - 1;
        records[last].details.insert("purged".into(), 1.into());
        let err = verify(&records).unwrap_err();
        assert_eq!(err.seq, 8);
        assert!(matches!(err.why, Broken::HashMismatch { .. }));
        // a verifier anchored on a checkpoint that never shows up
        let good = c.records().to_vec();
        let anchor = find_anchor(4, good.iter()).unwrap();
        let mut v = Verifier::new(anchor);
        for r in &good[..good.len() - 1] {
            v.push(r).unwrap();
        }
        assert_eq!(v.finish().unwrap_err().why, Broken::AnchorMissing);
    }

    #[test]
    fn seal_refuses_a_hand_made_checkpoint() {
        let e = Entry::new(t(0), RecordKind::Checkpoint).detail("through_seq", 0);
        assert_eq!(ChainHead::EMPTY.seal(e), Err(EntryError::ReservedKind));
    }

    #[test]
    fn an_export_is_the_time_range_and_reads_back_verifiable() {
        let c = story();
        let all = c.export(TimeRange {
            from: t(0),
            to: t(7),
        });
        let back: Vec<Record> = all
            .lines()
            .map(|l| Record::from_json_line(l).unwrap())
            .collect();
        assert_eq!(back, c.records());
        assert_eq!(verify(&back).unwrap().records, 7);
        let some = c.export(TimeRange {
            from: t(2),
            to: t(4),
        });
        let seqs: Vec<u64> = some
            .lines()
            .map(|l| Record::from_json_line(l).unwrap().seq)
            .collect();
        assert_eq!(seqs, [3, 4]);
        assert!(some.contains("\"time\":\"2026-11-26T08:00:02.000Z\""));
        assert!(!some.contains("1234"));
    }

    #[test]
    fn a_stored_row_round_trips_to_the_same_record() {
        for r in story().records() {
            let back = Record::try_from(r.to_raw()).unwrap();
            assert_eq!(&back, r);
            assert!(back.hash_is_valid());
        }
    }
}
