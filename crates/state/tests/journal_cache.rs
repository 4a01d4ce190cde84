//! The journal reads a `StateDb` answers from the entries it committed
//! itself: always what the database holds, also when another handle
//! appended in between, a transaction rolled back, or an erasure scrubbed
//! the entries. On both backends (a rolled-back append leaves a gap in
//! Postgres's sequence).

mod support;

use contact_sync_core::model::parse_ts;
use contact_sync_core::{Contact, JournalEntry, Timestamp};
use contact_sync_state::StateDb;
use serde_json::{json, Value};

fn at() -> Timestamp {
    // Nanoseconds: the row keeps microseconds.
    parse_ts("2026-03-01T10:00:00Z").unwrap() + chrono::Duration::nanoseconds(1_234_567)
}

fn entry(id: &str, version: i64, title: &str) -> JournalEntry {
    let mut c = Contact::new(id, format!("Person {id}"));
    c.version = version;
    c.job_title = Some(title.into());
    // JSON null reads back as absent.
    c.llm_context = Some(Value::Null);
    c.custom_attributes = Some(json!({"k": [1, 2.5, "x"]}));
    let mut e = JournalEntry::snapshot(c, "local", at());
    e.prev_version = version - 1;
    e
}

fn append(db: &mut StateDb, entries: &[JournalEntry]) -> Vec<i64> {
    let tx = db.tx().unwrap();
    let seqs = entries
        .iter()
        .map(|e| tx.append_journal(e).unwrap())
        .collect();
    tx.commit().unwrap();
    seqs
}

/// Every read the engine makes, by `db` and by a handle that caches nothing.
fn assert_reads_agree(db: &StateDb, fresh: &StateDb, ids: &[&str]) {
    let head = fresh.journal_head().unwrap();
    assert_eq!(db.journal_head().unwrap(), head);
    for after in 0..=head {
        for limit in [1, 2, 100] {
            assert_eq!(
                db.journal_after(after, head, limit).unwrap(),
                fresh.journal_after(after, head, limit).unwrap(),
                "entries after {after} (limit {limit})"
            );
        }
    }
    for id in ids {
        assert_eq!(
            db.journal_of(id, 1).unwrap(),
            fresh.journal_of(id, 1).unwrap(),
            "newest entry of {id}"
        );
        for v in 0..5 {
            assert_eq!(
                db.journal_version(id, v).unwrap(),
                fresh.journal_version(id, v).unwrap(),
                "entry of {id} v{v}"
            );
        }
    }
}

fn both(test: impl Fn(&support::Place)) {
    test(&support::Place::sqlite());
    test(&support::Place::postgres());
}

#[test]
fn cached_entries_read_as_their_rows() {
    both(cached_entries_read_as_their_rows_on);
}

fn cached_entries_read_as_their_rows_on(place: &support::Place) {
    let mut db = place.open();
    let fresh = place.open();
    append(&mut db, &[entry("a", 1, "one"), entry("b", 1, "one")]);
    append(&mut db, &[entry("a", 2, "two"), entry("a", 2, "two again")]);
    assert_reads_agree(&db, &fresh, &["a", "b", "c"]);
    let newest = db.journal_of("a", 1).unwrap().remove(0);
    assert_eq!(newest.after.job_title.as_deref(), Some("two again"));
    assert_eq!(newest.after.llm_context, None);
}

#[test]
fn entries_another_handle_appended_are_read_from_the_database() {
    both(entries_another_handle_appended_on);
}

fn entries_another_handle_appended_on(place: &support::Place) {
    let mut db = place.open();
    let mut other = place.open();
    let fresh = place.open();
    append(&mut db, &[entry("a", 1, "mine"), entry("b", 1, "mine")]);
    // Beyond this handle's entries: its newest of `a` is no longer the newest.
    append(&mut other, &[entry("a", 2, "theirs")]);
    assert_reads_agree(&db, &fresh, &["a", "b"]);
    assert_eq!(
        db.journal_of("a", 1).unwrap()[0].after.job_title.as_deref(),
        Some("theirs")
    );
    // Between this handle's entries: a new run starts after theirs.
    append(&mut db, &[entry("b", 2, "mine again")]);
    assert_reads_agree(&db, &fresh, &["a", "b"]);
    append(&mut other, &[entry("b", 3, "theirs again")]);
    append(&mut db, &[entry("a", 3, "mine last")]);
    assert_reads_agree(&db, &fresh, &["a", "b"]);
}

#[test]
fn a_rolled_back_append_or_a_scrub_is_never_served() {
    both(a_rolled_back_append_or_a_scrub_on);
}

fn a_rolled_back_append_or_a_scrub_on(place: &support::Place) {
    let mut db = place.open();
    let fresh = place.open();
    append(&mut db, &[entry("a", 1, "kept")]);
    {
        let tx = db.tx().unwrap();
        tx.append_journal(&entry("a", 2, "rolled back")).unwrap();
        // Dropped: rolled back.
    }
    assert_reads_agree(&db, &fresh, &["a"]);
    assert_eq!(
        db.journal_of("a", 1).unwrap()[0].after.job_title.as_deref(),
        Some("kept")
    );
    append(&mut db, &[entry("a", 2, "secret")]);
    {
        let tx = db.tx().unwrap();
        tx.scrub_contact("a", at()).unwrap();
        tx.commit().unwrap();
    }
    assert_reads_agree(&db, &fresh, &["a"]);
    assert_eq!(db.journal_of("a", 1).unwrap()[0].after.job_title, None);
}

#[test]
fn newest_seqs_are_the_newest_entries_seqs() {
    both(newest_seqs_on);
}

fn newest_seqs_on(place: &support::Place) {
    let mut db = place.open();
    append(&mut db, &[entry("a", 1, "x"), entry("b", 1, "x")]);
    let seqs = append(&mut db, &[entry("a", 2, "y")]);
    let ids: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
    let newest = db.journal_newest_seqs(&ids).unwrap();
    assert_eq!(newest.len(), 2, "{newest:?}");
    for id in ["a", "b"] {
        assert_eq!(newest[id], db.journal_of(id, 1).unwrap()[0].seq);
    }
    assert_eq!(newest["a"], seqs[0]);
}
