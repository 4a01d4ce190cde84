//! Retention (`StateDb::compact`): a state database with months of history
//! shrinks to the audit window plus one entry per contact, while every
//! cursor still finds everything after it and every store's merge base is
//! still in the journal.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use chrono::Duration;
use contact_sync_core::model::now;
use contact_sync_core::{Contact, DeadLetter, FieldConflict, JournalEntry, Resolution, Timestamp};
use contact_sync_state::{StateDb, StoreRecord};
use serde_json::json;

fn entry(id: &str, version: i64, at: Timestamp) -> JournalEntry {
    let mut c = Contact::new(id, format!("Person {id} v{version}"));
    c.version = version;
    let mut e = JournalEntry::snapshot(c, "local", at);
    e.prev_version = version - 1;
    e
}

fn record(store: &str, id: &str, version: i64) -> StoreRecord {
    StoreRecord {
        store: store.into(),
        contact_id: id.into(),
        native_id: None,
        synced_version: version,
        hash: format!("h{version}"),
        deleted: false,
        needs_write: false,
        writeback: false,
        late: vec![],
    }
}

fn conflict() -> FieldConflict {
    FieldConflict {
        field: "notes".into(),
        base: json!(null),
        canonical: json!("a"),
        incoming: json!("b"),
        canonical_version: 1,
        incoming_version: 2,
        resolution: Resolution::Open,
    }
}

/// Every journal entry: seq → (contact, version).
fn journal(db: &StateDb) -> BTreeMap<i64, (String, i64)> {
    db.journal_after(0, i64::MAX, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| (e.seq, (e.contact_id, e.version)))
        .collect()
}

on_both! {
    fn compaction_keeps_cursors_bases_the_window_and_the_newest_entry_per_contact(place) {
        let mut db = place.open();
        let now = now();
        let old = now - Duration::days(90);
        // 200 contacts, 5 versions each, 90 days old, interleaved; then 20
        // recent edits.
        let tx = db.tx().unwrap();
        for v in 1..=5 {
            for i in 0..200 {
                tx.append_journal(&entry(&format!("c{i:03}"), v, old))
                    .unwrap();
            }
        }
        for i in 0..20 {
            tx.append_journal(&entry(&format!("c{i:03}"), 6, now - Duration::days(1)))
                .unwrap();
        }
        let head = tx.journal_head().unwrap();
        assert_eq!(head, 1020);
        // Cursors: canonical and local caught up; twenty behind (seq 700);
        // the BigQuery journal table at 900.
        tx.set_cursor("canonical", head).unwrap();
        tx.set_cursor("local", head).unwrap();
        tx.set_cursor("twenty", 700).unwrap();
        tx.set_meta("journal_consumer:bigquery:ds.contact_changes", "900")
            .unwrap();
        // Merge bases: twenty last agreed with c050 at v2 and c051 at v3.
        tx.put_store_record(&record("twenty", "c050", 2)).unwrap();
        tx.put_store_record(&record("twenty", "c051", 3)).unwrap();
        // Conflicts: one settled 90 days ago, one open 90 days ago.
        let settled = tx.add_conflict("c001", "twenty", &conflict(), old).unwrap();
        tx.resolve_conflict(settled, "kept_canonical", old).unwrap();
        let open = tx.add_conflict("c002", "twenty", &conflict(), old).unwrap();
        // Dead letters: one open, one to dismiss (both 90 days old).
        for rec in ["c003", "c004"] {
            tx.add_dead_letter(&DeadLetter {
                id: 0,
                store: "twenty".into(),
                record: rec.into(),
                field: "emails".into(),
                reason: "bad".into(),
                payload: None,
                at: old,
            })
            .unwrap();
        }
        tx.commit().unwrap();
        let c4 = db
            .dead_letter_rows(true, 10)
            .unwrap()
            .into_iter()
            .find(|d| d.letter.record == "c004")
            .unwrap()
            .letter
            .id;
        let tx = db.tx().unwrap();
        tx.dismiss_dead_letter(c4, old).unwrap();
        tx.commit().unwrap();

        let before = journal(&db);
        let report = db.compact(now - Duration::days(30), now).unwrap();
        let after = journal(&db);

        assert_eq!(report.floor_seq, 700);
        assert!(after.len() < before.len() / 2, "{report:?}");
        assert_eq!(report.journal_kept as usize, after.len());
        assert_eq!(report.journal_removed as usize, before.len() - after.len());
        // Every cursor still has every entry after it.
        for (seq, e) in before.range(701..) {
            assert_eq!(
                after.get(seq),
                Some(e),
                "entry {seq} after the floor is gone"
            );
        }
        // The newest entry of every contact survives.
        let mut newest: BTreeMap<&str, i64> = BTreeMap::new();
        for (seq, (id, _)) in &before {
            newest.insert(id, *seq);
        }
        for (id, seq) in newest {
            assert!(after.contains_key(&seq), "newest entry of {id} is gone");
        }
        // The merge bases are still there.
        assert!(db.journal_version("c050", 2).unwrap().is_some());
        assert!(db.journal_version("c051", 3).unwrap().is_some());
        // Below the floor, beyond the window: one entry per contact, plus bases.
        let below: BTreeSet<(String, i64)> = after.range(..=700).map(|(_, e)| e.clone()).collect();
        assert!(below.contains(&("c050".into(), 2)));
        assert!(
            !below.contains(&("c100".into(), 1)),
            "an old superseded entry stayed"
        );
        // Settled conflicts and closed dead letters expire; open ones stay.
        assert_eq!(report.conflicts_removed, 1);
        assert!(db.conflict(open).unwrap().is_some());
        assert!(db.conflict(settled).unwrap().is_none());
        assert_eq!(report.dead_letters_removed, 1);
        assert_eq!(db.dead_letter_rows(false, 10).unwrap().len(), 1);
        assert!(db.meta("retention:last_compacted").unwrap().is_some());

        // Idempotent: a second run removes nothing more.
        let again = db.compact(now - Duration::days(30), now).unwrap();
        assert_eq!(again.journal_removed, 0);
        assert_eq!(journal(&db), after);
    }
}

on_both! {
    fn an_unreadable_outside_cursor_keeps_everything(place) {
        let mut db = place.open();
        let old = now() - Duration::days(90);
        let tx = db.tx().unwrap();
        for v in 1..=3 {
            tx.append_journal(&entry("c1", v, old)).unwrap();
        }
        tx.set_cursor("local", 3).unwrap();
        tx.set_meta("journal_consumer:bigquery:ds.t", "garbage")
            .unwrap();
        tx.commit().unwrap();
        let r = db.compact(now() - Duration::days(30), now()).unwrap();
        assert_eq!((r.floor_seq, r.journal_removed), (0, 0));
    }
}
