//! Behaviour of the state database as the engine uses it.

mod support;

use contact_sync_core::model::parse_ts;
use contact_sync_core::{
    Contact, DeadLetter, Email, FieldChange, FieldConflict, JournalEntry, Op, Phone, Resolution,
    Timestamp,
};
use contact_sync_state::{RunStats, StateDb, StateError, StoreRecord};
use serde_json::json;

fn ts(s: &str) -> Timestamp {
    parse_ts(s).expect("test timestamp")
}

fn contact(id: &str, version: i64) -> Contact {
    let mut c = Contact::new(id, format!("Person {id}"));
    c.first_name = Some("Ada".into());
    c.organization = Some("Analytical Engines".into());
    c.category_code = Some("G".into());
    c.subcategory_code = Some("G1".into());
    c.tags = vec!["math".into(), "early".into()];
    c.created_at = Some(ts("2024-02-03T04:05:06.123456Z"));
    c.llm_context = Some(json!({
        "relationship_arc": "colleague turned friend",
        "key_interests": ["engines", "poetry"],
        "important_dates": [{"date": "1815-12-10", "event": "birthday", "significance": "high"}],
        "closeness_level": 7
    }));
    c.custom_attributes = Some(json!({"nested": {"a": [1, 2, {"b": null}]}}));
    c.emails = vec![Email {
        address: "ada@example.com".into(),
        label: Some("work".into()),
        is_primary: true,
    }];
    c.phones = vec![Phone {
        number: "+441234567890".into(),
        label: None,
        is_primary: true,
    }];
    c.version = version;
    c.last_updated = Some(ts("2025-06-01T10:00:00.000001Z"));
    c.last_updated_by = Some("twenty".into());
    c
}

fn entry(id: &str, version: i64) -> JournalEntry {
    let after = contact(id, version);
    JournalEntry {
        seq: 999, // ignored by append_journal
        contact_id: id.into(),
        version,
        prev_version: version - 1,
        op: Op::Upsert,
        origin: "twenty".into(),
        changes: vec![FieldChange {
            field: "first_name".into(),
            old: json!("Augusta"),
            new: json!("Ada"),
        }],
        conflicts: vec![FieldConflict {
            field: "notes".into(),
            base: json!(null),
            canonical: json!("a"),
            incoming: json!("b"),
            canonical_version: version - 1,
            incoming_version: version,
            resolution: Resolution::IncomingByVersion,
        }],
        hash: format!("hash-{id}-{version}"),
        after,
        at: ts("2025-06-01T10:00:01.5Z"),
    }
}

fn record(store: &str, id: &str, version: i64) -> StoreRecord {
    StoreRecord {
        store: store.into(),
        contact_id: id.into(),
        native_id: Some(format!("n-{id}")),
        synced_version: version,
        hash: format!("h-{id}-{version}"),
        deleted: false,
        ..Default::default()
    }
}

fn conflict(field: &str, resolution: Resolution) -> FieldConflict {
    FieldConflict {
        field: field.into(),
        base: json!("base"),
        canonical: json!({"v": 1}),
        incoming: json!(["x", 2]),
        canonical_version: 3,
        incoming_version: 3,
        resolution,
    }
}

on_both! {
    fn journal_assigns_increasing_seqs_and_reads_in_order(place) {
        let mut db = place.open();
        assert_eq!(db.journal_head().unwrap(), 0);
        let tx = db.tx().unwrap();
        let mut seqs = Vec::new();
        for v in 1..=5 {
            seqs.push(tx.append_journal(&entry("c1", v)).unwrap());
        }
        seqs.push(tx.append_journal(&entry("c2", 1)).unwrap());
        tx.commit().unwrap();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(db.journal_head().unwrap(), 6);

        let all = db.journal_after(0, i64::MAX, 100).unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs);
        assert_eq!(
            all.iter()
                .map(|e| (e.contact_id.as_str(), e.version))
                .collect::<Vec<_>>(),
            vec![
                ("c1", 1),
                ("c1", 2),
                ("c1", 3),
                ("c1", 4),
                ("c1", 5),
                ("c2", 1)
            ]
        );

        // `after` is exclusive, `upto` inclusive, `limit` caps.
        let mid = db.journal_after(2, 4, 100).unwrap();
        assert_eq!(mid.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
        let capped = db.journal_after(0, 6, 2).unwrap();
        assert_eq!(capped.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert!(db.journal_after(6, 100, 10).unwrap().is_empty());

        // Per contact, newest first.
        let of = db.journal_of("c1", 3).unwrap();
        assert_eq!(
            of.iter().map(|e| e.version).collect::<Vec<_>>(),
            vec![5, 4, 3]
        );
        assert!(db.journal_of("nobody", 10).unwrap().is_empty());
    }
}

on_both! {
    fn journal_round_trips_a_full_contact(place) {
        let mut db = place.open();
        let mut e = entry("c9", 3);
        e.op = Op::Delete;
        e.after.deleted_at = Some(ts("2025-06-02T00:00:00Z"));
        let tx = db.tx().unwrap();
        let seq = tx.append_journal(&e).unwrap();
        tx.commit().unwrap();
        e.seq = seq;

        let by_version = db.journal_version("c9", 3).unwrap().expect("entry of v3");
        assert_eq!(by_version, e);
        let by_prev = db
            .journal_after_version("c9", 2)
            .unwrap()
            .expect("entry after v2");
        assert_eq!(by_prev, e);
        assert_eq!(by_prev.after.llm_context, e.after.llm_context);
        assert_eq!(by_prev.after.emails, e.after.emails);

        assert!(db.journal_version("c9", 2).unwrap().is_none());
        assert!(db.journal_after_version("c9", 3).unwrap().is_none());
        assert!(db.journal_version("other", 3).unwrap().is_none());
    }
}

on_both! {
    fn dropping_a_transaction_rolls_everything_back(place) {
        let mut db = place.open();
        {
            let tx = db.tx().unwrap();
            tx.append_journal(&entry("c1", 1)).unwrap();
            tx.put_store_record(&record("pg", "c1", 1)).unwrap();
            tx.set_checkpoint("pg", "0/16B3748").unwrap();
            tx.set_cursor("pg", 1).unwrap();
            tx.set_meta("initial_sync_done", "1").unwrap();
            tx.add_conflict(
                "c1",
                "pg",
                &conflict("notes", Resolution::Open),
                ts("2025-01-01T00:00:00Z"),
            )
            .unwrap();
            tx.record_run(
                "pg",
                &RunStats {
                    captured: 1,
                    ..Default::default()
                },
                None,
                ts("2025-01-01T00:00:00Z"),
            )
            .unwrap();
            // The transaction sees its own writes.
            assert_eq!(tx.journal_head().unwrap(), 1);
            assert_eq!(
                tx.store_record("pg", "c1").unwrap(),
                Some(record("pg", "c1", 1))
            );
            // dropped here without commit
        }
        assert_eq!(db.journal_head().unwrap(), 0);
        assert!(db.journal_after(0, i64::MAX, 10).unwrap().is_empty());
        assert!(db.store_record("pg", "c1").unwrap().is_none());
        assert!(db.checkpoint("pg").unwrap().is_none());
        assert_eq!(db.cursor("pg").unwrap(), 0);
        assert!(db.meta("initial_sync_done").unwrap().is_none());
        assert_eq!(db.open_conflict_count().unwrap(), 0);
        assert!(db.known_stores().unwrap().is_empty());
    }
}

on_both! {
    fn checkpoints_cursors_and_meta_overwrite(place) {
        let mut db = place.open();
        let tx = db.tx().unwrap();
        tx.set_checkpoint("bigquery", "2025-01-01T00:00:00Z")
            .unwrap();
        tx.set_checkpoint("bigquery", "2025-01-02T00:00:00Z")
            .unwrap();
        tx.set_cursor("twenty", 7).unwrap();
        tx.set_cursor("twenty", 9).unwrap();
        tx.set_meta("backfill:twenty", "c100").unwrap();
        tx.set_meta("backfill:twenty", "c200").unwrap();
        tx.set_meta("gone", "x").unwrap();
        tx.delete_meta("gone").unwrap();
        tx.commit().unwrap();
        assert_eq!(
            db.checkpoint("bigquery").unwrap().as_deref(),
            Some("2025-01-02T00:00:00Z")
        );
        assert_eq!(db.cursor("twenty").unwrap(), 9);
        assert_eq!(db.cursor("bigquery").unwrap(), 0);
        assert_eq!(db.meta("backfill:twenty").unwrap().as_deref(), Some("c200"));
        assert!(db.meta("gone").unwrap().is_none());
    }
}

on_both! {
    fn store_records_bulk_read_crosses_chunks(place) {
        let mut db = place.open();
        let tx = db.tx().unwrap();
        for i in 0..1_500 {
            tx.put_store_record(&record("twenty", &format!("c{i:05}"), i))
                .unwrap();
        }
        // Same ids in another store must not leak into the result.
        for i in 0..10 {
            tx.put_store_record(&record("pg", &format!("c{i:05}"), 1000 + i))
                .unwrap();
        }
        tx.commit().unwrap();

        let mut ids: Vec<String> = (0..1_500).map(|i| format!("c{i:05}")).collect();
        ids.push("missing-1".into());
        ids.push("missing-2".into());
        let mut got = db.store_records("twenty", &ids).unwrap();
        assert_eq!(got.len(), 1_500);
        got.sort_by(|a, b| a.contact_id.cmp(&b.contact_id));
        for (i, rec) in got.iter().enumerate() {
            assert_eq!(rec, &record("twenty", &format!("c{i:05}"), i as i64));
        }
        assert!(db.store_records("twenty", &[]).unwrap().is_empty());
        assert_eq!(db.store_records("pg", &ids).unwrap().len(), 10);
    }
}

on_both! {
    fn store_records_upsert_lookup_by_native_count_and_delete(place) {
        let mut db = place.open();
        let tx = db.tx().unwrap();
        tx.put_store_record(&record("twenty", "c1", 1)).unwrap();
        tx.put_store_record(&record("twenty", "c2", 1)).unwrap();
        let mut gone = record("twenty", "c3", 2);
        gone.deleted = true;
        tx.put_store_record(&gone).unwrap();
        // Replace c1.
        let mut c1 = record("twenty", "c1", 4);
        c1.native_id = Some("person-uuid-1".into());
        tx.put_store_record(&c1).unwrap();
        tx.commit().unwrap();

        assert_eq!(db.store_record("twenty", "c1").unwrap(), Some(c1.clone()));
        assert_eq!(
            db.store_record_by_native("twenty", "person-uuid-1")
                .unwrap(),
            Some(c1)
        );
        assert!(db
            .store_record_by_native("twenty", "n-c1")
            .unwrap()
            .is_none());
        assert!(db
            .store_record_by_native("pg", "person-uuid-1")
            .unwrap()
            .is_none());
        assert_eq!(db.store_record("twenty", "c3").unwrap(), Some(gone));
        assert_eq!(
            db.store_record_count("twenty").unwrap(),
            2,
            "tombstones are not live"
        );

        let tx = db.tx().unwrap();
        tx.delete_store_record("twenty", "c2").unwrap();
        tx.delete_store_record("twenty", "never-there").unwrap();
        tx.commit().unwrap();
        assert!(db.store_record("twenty", "c2").unwrap().is_none());
        assert_eq!(db.store_record_count("twenty").unwrap(), 1);
    }
}

on_both! {
    fn conflicts_add_list_and_resolve(place) {
        let mut db = place.open();
        let t1 = ts("2025-03-01T12:00:00.000001Z");
        let tx = db.tx().unwrap();
        let open1 = tx
            .add_conflict("c1", "twenty", &conflict("notes", Resolution::Open), t1)
            .unwrap();
        let auto = tx
            .add_conflict(
                "c1",
                "twenty",
                &conflict("job_title", Resolution::IncomingByTime),
                t1,
            )
            .unwrap();
        let open2 = tx
            .add_conflict("c2", "pg", &conflict("deleted_at", Resolution::Open), t1)
            .unwrap();
        tx.commit().unwrap();

        assert_eq!(db.open_conflict_count().unwrap(), 2);
        let open = db.conflicts(true).unwrap();
        assert_eq!(
            open.iter().map(|c| c.id).collect::<Vec<_>>(),
            vec![open2, open1]
        );
        let all = db.conflicts(false).unwrap();
        assert_eq!(
            all.iter().map(|c| c.id).collect::<Vec<_>>(),
            vec![open2, auto, open1]
        );

        let row = db.conflict(open1).unwrap().expect("conflict row");
        assert_eq!(row.contact_id, "c1");
        assert_eq!(row.store, "twenty");
        assert_eq!(row.conflict, conflict("notes", Resolution::Open));
        assert_eq!(row.status, "open");
        assert_eq!(row.created_at, t1);
        assert_eq!(row.resolved_at, None);

        let settled = db.conflict(auto).unwrap().expect("auto-settled row");
        assert_eq!(settled.status, "kept_incoming");
        assert_eq!(settled.resolved_at, Some(t1));

        let t2 = ts("2025-03-02T08:00:00Z");
        let tx = db.tx().unwrap();
        tx.resolve_conflict(open1, "kept_canonical", t2).unwrap();
        assert!(matches!(
            tx.resolve_conflict(open2, "maybe", t2),
            Err(StateError::Invalid { .. })
        ));
        assert!(matches!(
            tx.resolve_conflict(424242, "kept_incoming", t2),
            Err(StateError::NotFound { .. })
        ));
        tx.commit().unwrap();

        let row = db.conflict(open1).unwrap().unwrap();
        assert_eq!(row.status, "kept_canonical");
        assert_eq!(row.resolved_at, Some(t2));
        assert_eq!(db.open_conflict_count().unwrap(), 1);
        assert_eq!(db.conflicts(true).unwrap()[0].id, open2);
        assert!(db.conflict(424242).unwrap().is_none());
    }
}

on_both! {
    fn dead_letters_newest_first_with_payload(place) {
        let mut db = place.open();
        let tx = db.tx().unwrap();
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(
                tx.add_dead_letter(&DeadLetter {
                    id: -1,
                    store: "twenty".into(),
                    record: format!("person-{i}"),
                    field: "category_code".into(),
                    reason: "unknown category \"Q\"".into(),
                    payload: (i != 1).then(|| json!({"name": {"firstName": "Ada"}, "n": i})),
                    at: ts("2025-04-01T00:00:00Z"),
                })
                .unwrap(),
            );
        }
        tx.commit().unwrap();
        assert_eq!(db.dead_letter_count().unwrap(), 3);
        let dls = db.dead_letters(2).unwrap();
        assert_eq!(
            dls.iter().map(|d| d.id).collect::<Vec<_>>(),
            vec![ids[2], ids[1]]
        );
        assert_eq!(dls[0].record, "person-2");
        assert_eq!(
            dls[0].payload,
            Some(json!({"name": {"firstName": "Ada"}, "n": 2}))
        );
        assert_eq!(dls[1].payload, None);
        assert_eq!(dls[0].reason, "unknown category \"Q\"");
        assert_eq!(dls[0].at, ts("2025-04-01T00:00:00Z"));
    }
}

on_both! {
    fn record_run_sums_totals_and_counts_consecutive_errors(place) {
        let mut db = place.open();
        let s = |n: u64| RunStats {
            captured: n,
            applied: n * 2,
            written: n * 3,
            skipped_echo: n * 4,
            dead_letters: n * 5,
            conflicts: n * 6,
        };
        let t1 = ts("2025-05-01T00:00:00Z");
        let t2 = ts("2025-05-01T00:05:00Z");
        let t3 = ts("2025-05-01T00:10:00Z");
        let t4 = ts("2025-05-01T00:15:00Z");

        let status = db.store_status("twenty").unwrap();
        assert_eq!(status.store, "twenty");
        assert_eq!(status.totals, RunStats::default());
        assert_eq!(status.last_success, None);

        let tx = db.tx().unwrap();
        tx.record_run("twenty", &s(1), None, t1).unwrap();
        tx.record_run("twenty", &s(2), Some("429 rate limited"), t2)
            .unwrap();
        tx.record_run("twenty", &s(0), Some("connection refused"), t3)
            .unwrap();
        tx.commit().unwrap();

        let status = db.store_status("twenty").unwrap();
        assert_eq!(status.totals, s(3));
        assert_eq!(status.last_success, Some(t1));
        assert_eq!(status.last_error.as_deref(), Some("connection refused"));
        assert_eq!(status.last_error_at, Some(t3));
        assert_eq!(status.consecutive_errors, 2);

        let tx = db.tx().unwrap();
        tx.record_run("twenty", &s(1), None, t4).unwrap();
        tx.commit().unwrap();
        let status = db.store_status("twenty").unwrap();
        assert_eq!(status.totals, s(4));
        assert_eq!(status.last_success, Some(t4));
        assert_eq!(status.consecutive_errors, 0);
        assert_eq!(status.last_error.as_deref(), Some("connection refused"));

        // Other stores are separate.
        assert_eq!(db.store_status("pg").unwrap().totals, RunStats::default());
    }
}

on_both! {
    fn known_stores_lists_every_store_once_sorted(place) {
        let mut db = place.open();
        let tx = db.tx().unwrap();
        tx.put_store_record(&record("twenty", "c1", 1)).unwrap();
        tx.put_store_record(&record("twenty", "c2", 1)).unwrap();
        tx.put_store_record(&record("local", "c1", 1)).unwrap();
        tx.set_checkpoint("bigquery", "w").unwrap();
        tx.set_cursor("supabase", 3).unwrap();
        tx.set_cursor("twenty", 3).unwrap();
        tx.record_run(
            "zeta",
            &RunStats::default(),
            None,
            ts("2025-01-01T00:00:00Z"),
        )
        .unwrap();
        tx.commit().unwrap();
        assert_eq!(
            db.known_stores().unwrap(),
            vec!["bigquery", "local", "supabase", "twenty", "zeta"]
        );
    }
}

#[test]
fn file_database_persists_and_reopens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("state.db");
    {
        let mut db = StateDb::open(&path).unwrap();
        let tx = db.tx().unwrap();
        tx.append_journal(&entry("c1", 1)).unwrap();
        tx.set_cursor("twenty", 1).unwrap();
        tx.commit().unwrap();
    }
    let db = StateDb::open(&path).unwrap();
    assert_eq!(db.path(), Some(path.as_path()));
    assert_eq!(
        db.schema_version().unwrap(),
        contact_sync_state::SCHEMA_VERSION
    );
    assert_eq!(db.journal_head().unwrap(), 1);
    assert_eq!(db.cursor("twenty").unwrap(), 1);
    let mode: String = rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
}

on_both! {
    fn corrupt_rows_are_reported_with_what(place) {
        {
            let mut db = place.open();
            let tx = db.tx().unwrap();
            tx.append_journal(&entry("c1", 1)).unwrap();
            tx.commit().unwrap();
        }
        place.exec("UPDATE journal SET at = 'yesterday' WHERE seq = 1");
        let db = place.open();
        match db.journal_after(0, 10, 10) {
            Err(StateError::Corrupt { what, message }) => {
                assert!(what.contains("seq 1") && what.contains("at"), "{what}");
                assert!(message.contains("yesterday"), "{message}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    fn newer_schema_is_refused(place) {
        drop(place.open());
        // What a newer build leaves: its migration in the history (and, in
        // a SQLite file, its version in `PRAGMA user_version`).
        place.exec(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
             VALUES (99, 'from_the_future', '2030-01-01T00:00:00Z', '1')",
        );
        match StateDb::open_target(&place.target) {
            Err(e @ StateError::Open { .. }) => assert!(e.to_string().contains("newer"), "{e}"),
            other => panic!("expected Open error, got {other:?}"),
        }
    }

    fn the_schema_is_at_this_builds_version(place) {
        let db = place.open();
        assert_eq!(
            db.schema_version().unwrap(),
            contact_sync_state::SCHEMA_VERSION
        );
        drop(db);
        // Opening again applies nothing and changes nothing.
        assert_eq!(
            place.open().schema_version().unwrap(),
            contact_sync_state::SCHEMA_VERSION
        );
    }
}

#[test]
fn a_newer_ladder_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    drop(StateDb::open(&path).unwrap());
    rusqlite::Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    match StateDb::open(&path) {
        Err(e @ StateError::Open { .. }) => assert!(e.to_string().contains("newer"), "{e}"),
        other => panic!("expected Open error, got {other:?}"),
    }
}

#[test]
fn a_file_that_is_not_a_database_is_an_open_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    std::fs::write(&path, vec![b'x'; 4096]).unwrap();
    match StateDb::open(&path) {
        Err(e @ StateError::Open { .. }) => {
            assert!(e.to_string().contains(&path.display().to_string()), "{e}")
        }
        other => panic!("expected Open error, got {other:?}"),
    }
}

on_both! {
    fn one_batch_may_name_a_record_twice_and_the_last_wins(place) {
        let mut db = place.open();
        let tx = db.tx().unwrap();
        let mut second = record("twenty", "c1", 2);
        second.native_id = Some("p2".into());
        tx.put_store_records(&[
            record("twenty", "c1", 1),
            record("twenty", "c2", 1),
            second.clone(),
        ])
        .unwrap();
        // The search index: the newest version of a contact wins, in
        // whatever order a batch names them.
        let mut newer = contact("c3", 2);
        newer.canonical_name = "Grace Hopper".into();
        let mut older = contact("c3", 1);
        older.canonical_name = "Grace Brewster".into();
        tx.index_contacts([&newer, &older]).unwrap();
        tx.commit().unwrap();
        assert_eq!(db.store_record("twenty", "c1").unwrap(), Some(second));
        assert_eq!(db.store_record_count("twenty").unwrap(), 2);
        let hits = db.search_index("grace", None, 10).unwrap().items;
        assert_eq!(hits.len(), 1);
        assert_eq!((hits[0].name.as_str(), hits[0].version), ("Grace Hopper", 2));
    }
}
