//! `copy_sqlite_to_postgres`: a SQLite state database copied into a fresh
//! Postgres one (the store-postgres test harness: `CONTACT_SYNC_PG_URL` or a
//! private cluster; it panics with what to do when there is no Postgres).

use std::path::Path;

use chrono::Duration;
use contact_sync_core::model::{now, parse_ts};
use contact_sync_core::{Contact, DeadLetter, FieldConflict, JournalEntry, Resolution};
use contact_sync_state::{
    copy_sqlite_to_postgres, MigrateError, RunStats, StateDb, StateTarget, StoreRecord,
};
use serde_json::json;

mod support;
use support::Place;

fn url(place: &Place) -> &str {
    match &place.target {
        StateTarget::Url(u) => u,
        StateTarget::Path(_) => unreachable!(),
    }
}

fn person(id: &str, name: &str) -> Contact {
    let mut c = Contact::new(id, name);
    c.last_name = Some("Lovelace".into());
    c
}

/// A SQLite state database with something in every table.
fn filled(path: &Path) {
    let mut db = StateDb::open(path).unwrap();
    // Both runs in one history bucket.
    let t0 = parse_ts("2026-01-01T00:01:00.000000Z").unwrap();
    let tx = db.tx().unwrap();
    for i in 1..=5 {
        tx.append_journal(&JournalEntry::snapshot(
            person(&format!("c{i}"), &format!("Ada {i}")),
            "local",
            t0,
        ))
        .unwrap();
    }
    tx.set_checkpoint("local", "{\"change_id\":17}").unwrap();
    tx.set_cursor("local", 5).unwrap();
    tx.put_store_record(&StoreRecord {
        store: "local".into(),
        contact_id: "c1".into(),
        native_id: Some("n1".into()),
        synced_version: 1,
        hash: "h1".into(),
        needs_write: true,
        late: vec!["x".into(), "y".into()],
        ..Default::default()
    })
    .unwrap();
    let conflict = FieldConflict {
        field: "job_title".into(),
        base: json!("Analyst"),
        canonical: json!("Lead"),
        incoming: json!("Head"),
        canonical_version: 2,
        incoming_version: 2,
        resolution: Resolution::Open,
    };
    tx.add_conflict("c2", "local", &conflict, t0).unwrap();
    tx.add_dead_letter(&DeadLetter {
        id: 0,
        store: "local".into(),
        record: "c9".into(),
        field: "phones".into(),
        reason: "not E.164".into(),
        payload: Some(json!({"phones": ["020"]})),
        at: t0,
    })
    .unwrap();
    tx.record_run("local", &RunStats::default(), None, t0)
        .unwrap();
    tx.record_run(
        "local",
        &RunStats::default(),
        Some("boom"),
        t0 + Duration::microseconds(12_345_678),
    )
    .unwrap();
    tx.queue_request(
        contact_sync_state::RequestKind::RepairDrift,
        &json!({"store": "local"}),
        t0,
    )
    .unwrap();
    tx.record_erasure("c5", t0, 3).unwrap();
    tx.set_meta("backfill:local", "done").unwrap();
    tx.commit().unwrap();
    drop(db);
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "INSERT INTO paused_stores (store, kind, reason, details, since)
             VALUES ('pg', 'mass_change', '40 deletes', '{}', '2026-01-01T00:00:00.000000Z');
         INSERT INTO leases (name, holder, token, acquired_at, heartbeat_at, expires_at)
             VALUES ('engine', 'gone', 7, 'x', 'x', 'x');
         -- entries removed (compact, at the start): their seqs are never
         -- given again, the last one's included
         DELETE FROM journal WHERE seq <= 2 OR seq = 5;",
    )
    .unwrap();
}

#[test]
fn every_table_is_copied_and_ids_and_seqs_go_on_after_the_largest_ever_given() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    filled(&path);
    let place = Place::postgres();
    let report = copy_sqlite_to_postgres(&path, url(&place)).unwrap();
    let rows = |t: &str| {
        report
            .tables
            .iter()
            .find(|r| r.table == t)
            .unwrap_or_else(|| panic!("no table {t} in {report:?}"))
            .rows
    };
    assert_eq!(rows("journal"), 2);
    assert_eq!(rows("search_docs"), 5);
    assert_eq!(rows("run_history"), 1);
    assert!(!report.tables.iter().any(|r| r.table == "leases"));
    assert_eq!((report.journal_max_seq, report.journal_next_seq), (4, 6));

    let sq = StateDb::open(&path).unwrap();
    let mut pg = place.open();
    let sync = |db: &StateDb| {
        (
            db.journal_after(0, i64::MAX, 100).unwrap(),
            db.conflicts(false).unwrap(),
            db.dead_letters(100).unwrap(),
            db.store_record("local", "c1").unwrap(),
            db.checkpoint("local").unwrap(),
            db.cursor("local").unwrap(),
        )
    };
    let ops = |db: &StateDb| {
        (
            db.meta("backfill:local").unwrap(),
            db.meta(contact_sync_state::SEARCH_FILL_META).unwrap(),
            db.store_status("local").unwrap(),
            db.run_history(&parse_ts("2025-12-31T00:00:00.000000Z").unwrap())
                .unwrap(),
            db.paused_stores().unwrap(),
            db.unfinished_requests().unwrap(),
        )
    };
    assert_eq!(sync(&pg), sync(&sq));
    assert_eq!(ops(&pg), ops(&sq));
    assert_eq!(pg.erasure("c5").unwrap(), sq.erasure("c5").unwrap());
    assert!(
        ops(&pg).3[0].max_lag_secs.unwrap() > 12.0,
        "the run history's reals are kept"
    );
    // The search index works on Postgres's own columns.
    let hits = pg.search_index("lovelace", None, 10).unwrap();
    assert_eq!(hits.items.len(), 5, "{hits:?}");
    assert!(pg.leases().unwrap().is_empty());

    // Ids and seqs go on after the largest SQLite ever gave.
    let t = now();
    let tx = pg.tx().unwrap();
    let seq = tx
        .append_journal(&JournalEntry::snapshot(person("c6", "Grace"), "local", t))
        .unwrap();
    let conflict = FieldConflict {
        field: "notes".into(),
        base: json!(null),
        canonical: json!("a"),
        incoming: json!("b"),
        canonical_version: 1,
        incoming_version: 1,
        resolution: Resolution::Open,
    };
    let cid = tx.add_conflict("c6", "local", &conflict, t).unwrap();
    let rid = tx
        .queue_request(contact_sync_state::RequestKind::RepairDrift, &json!({}), t)
        .unwrap();
    tx.commit().unwrap();
    assert_eq!((seq, cid, rid), (6, 2, 2));
    assert_eq!(pg.search_index("grace", None, 10).unwrap().items.len(), 1);
}

#[test]
fn a_value_postgres_cannot_take_commits_nothing_and_names_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    filled(&path);
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch("UPDATE journal SET version = 1.5 WHERE seq = 4")
        .unwrap();
    let place = Place::postgres();
    let err = copy_sqlite_to_postgres(&path, url(&place)).unwrap_err();
    assert!(matches!(err, MigrateError::Row { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "table journal, row seq 4, column version: expected an integer, found the real 1.5; nothing was copied"
    );
    // Nothing of it was committed: once the row is mended the copy goes
    // into the same, still empty, database.
    c.execute_batch("UPDATE journal SET version = 1 WHERE seq = 4")
        .unwrap();
    drop(c);
    copy_sqlite_to_postgres(&path, url(&place)).unwrap();
    assert_eq!(place.open().journal_head().unwrap(), 4);
}

#[test]
fn rows_still_in_the_write_ahead_log_are_copied_and_the_file_is_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    filled(&path);
    // A writer's last commits, not yet checkpointed into the file (as a
    // killed daemon leaves them): this connection stays open.
    let mut db = StateDb::open(&path).unwrap();
    let before = std::fs::read(&path).unwrap();
    let tx = db.tx().unwrap();
    tx.append_journal(&JournalEntry::snapshot(
        person("c7", "Late"),
        "local",
        now(),
    ))
    .unwrap();
    tx.commit().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), before, "still in the log");
    let wal = std::fs::read(dir.path().join("state.db-wal")).unwrap();

    let place = Place::postgres();
    let report = copy_sqlite_to_postgres(&path, url(&place)).unwrap();
    assert_eq!(report.journal_max_seq, 6);
    assert_eq!(place.open().journal_head().unwrap(), 6);
    assert_eq!(std::fs::read(&path).unwrap(), before);
    assert_eq!(std::fs::read(dir.path().join("state.db-wal")).unwrap(), wal);
    drop(db);
}

#[test]
fn a_postgres_state_database_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    filled(&path);
    let place = Place::postgres();
    let other = place.open();
    let _held = other.lock().unwrap();
    let err = copy_sqlite_to_postgres(&path, url(&place)).unwrap_err();
    assert!(matches!(err, MigrateError::TargetLocked { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&format!(
            "is in use by another contact-sync (pid {}",
            std::process::id()
        )),
        "{err}"
    );
    assert_eq!(other.journal_head().unwrap(), 0);
}
