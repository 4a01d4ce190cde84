//! Operator requests (queued by a command, carried out by the daemon) and
//! parked stores, as the state database keeps them; the migration that
//! added them keeps the pauses recorded before it.

mod support;

use contact_sync_core::model::parse_ts;
use contact_sync_core::Timestamp;
use contact_sync_state::{
    Parked, PauseKind, PausedStore, RequestKind, RequestStatus, StateDb, StateError,
};
use serde_json::json;

fn ts(s: &str) -> Timestamp {
    parse_ts(s).expect("test timestamp")
}

on_both! {
    fn a_request_goes_from_queued_to_done_or_failed_in_order(place) {
        let mut db = place.open();
        assert!(!db.has_queued_request().unwrap());
        let tx = db.tx().unwrap();
        let a = tx
            .queue_request(
                RequestKind::RepairDrift,
                &json!({}),
                ts("2026-01-01T00:00:00Z"),
            )
            .unwrap();
        let b = tx
            .queue_request(
                RequestKind::CdcReset,
                &json!({"store": "supabase"}),
                ts("2026-01-01T00:00:01Z"),
            )
            .unwrap();
        tx.commit().unwrap();
        assert!(db.has_queued_request().unwrap());
        assert_eq!(
            db.unfinished_requests()
                .unwrap()
                .iter()
                .map(|r| r.id)
                .collect::<Vec<_>>(),
            vec![a, b]
        );

        // Oldest first.
        let tx = db.tx().unwrap();
        let r = tx
            .start_next_request(ts("2026-01-01T00:00:02Z"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.id, r.kind.as_str(), r.status),
            (a, "repair_drift", RequestStatus::Running)
        );
        tx.finish_request(a, Ok(&json!({"repaired": 2})), ts("2026-01-01T00:00:03Z"))
            .unwrap();
        let r = tx
            .start_next_request(ts("2026-01-01T00:00:04Z"))
            .unwrap()
            .unwrap();
        assert_eq!((r.id, &r.args), (b, &json!({"store": "supabase"})));
        assert!(tx
            .start_next_request(ts("2026-01-01T00:00:05Z"))
            .unwrap()
            .is_none());
        tx.commit().unwrap();
        assert!(!db.has_queued_request().unwrap());

        let done = db.request(a).unwrap().unwrap();
        assert_eq!(done.status, RequestStatus::Done);
        assert_eq!(done.result, Some(json!({"repaired": 2})));
        assert_eq!(done.finished_at, Some(ts("2026-01-01T00:00:03Z")));

        // The daemon stopped while carrying out `b`: failed at its next start.
        let tx = db.tx().unwrap();
        assert_eq!(
            tx.fail_interrupted_requests(ts("2026-01-01T00:01:00Z"))
                .unwrap(),
            1
        );
        assert!(matches!(
            tx.finish_request(999, Err("nope"), ts("2026-01-01T00:01:00Z")),
            Err(StateError::NotFound { .. })
        ));
        tx.commit().unwrap();
        let failed = db.request(b).unwrap().unwrap();
        assert_eq!(failed.status, RequestStatus::Failed);
        assert!(failed.error.unwrap().starts_with("interrupted"));
        assert!(db.unfinished_requests().unwrap().is_empty());

        // Finished requests expire with the audit window.
        let report = db
            .compact(ts("2026-01-01T00:00:30Z"), ts("2026-02-01T00:00:00Z"))
            .unwrap();
        assert_eq!(report.requests_removed, 1);
        assert!(db.request(a).unwrap().is_none());
        assert!(db.request(b).unwrap().is_some());
    }
}

fn parked(store: &str, hash: Option<&str>) -> PausedStore {
    PausedStore {
        store: store.into(),
        kind: PauseKind::Schema,
        reason: "capture failed with an error retrying cannot fix: authentication failed".into(),
        details: json!({"step": "capture"}),
        since: ts("2026-01-01T00:00:00Z"),
        decision: None,
        decided_at: None,
        parked: Some(Parked {
            config_hash: hash.map(str::to_string),
        }),
    }
}

on_both! {
    fn a_parked_store_is_a_failed_pause_with_its_configuration_fingerprint(place) {
        let mut db = place.open();
        let tx = db.tx().unwrap();
        tx.pause_store(&parked("crm", Some("abc123"))).unwrap();
        let mut wrong = parked("local", None);
        wrong.kind = PauseKind::MassChange;
        assert!(matches!(
            tx.pause_store(&wrong),
            Err(StateError::Invalid { .. })
        ));
        tx.commit().unwrap();
        let p = db.paused("crm").unwrap().unwrap();
        assert_eq!(p, parked("crm", Some("abc123")));
        assert_eq!(p.label(), "failed");
        let shown = serde_json::to_value(&p).unwrap();
        assert_eq!(
            (shown["kind"].as_str(), shown["config_hash"].as_str()),
            (Some("failed"), Some("abc123")),
            "{shown}"
        );
        // A guard's pause replacing it is no longer parked.
        let tx = db.tx().unwrap();
        let mut schema = parked("crm", None);
        schema.parked = None;
        tx.pause_store(&schema).unwrap();
        tx.commit().unwrap();
        let p = db.paused("crm").unwrap().unwrap();
        assert_eq!((p.label(), p.parked), ("schema", None));
    }
}

#[test]
fn the_migration_keeps_pauses_recorded_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    drop(StateDb::open(&path).unwrap());
    // Back to version 3 of the hand-written ladder (no migration history,
    // `PRAGMA user_version` 3): `paused_stores` as it was, with a pause,
    // and no request table (nor what version 5 adds).
    let c = rusqlite::Connection::open(&path).unwrap();
    c.execute_batch(
        "DROP TABLE refinery_schema_history;
         DROP TABLE leases;
         DROP TABLE run_history;
         DROP INDEX conflicts_contact;
         DROP TABLE operator_requests;
         DROP TABLE paused_stores;
         CREATE TABLE paused_stores (
             store      TEXT PRIMARY KEY NOT NULL,
             kind       TEXT NOT NULL CHECK (kind IN ('mass_change', 'schema')),
             reason     TEXT NOT NULL,
             details    TEXT NOT NULL,
             since      TEXT NOT NULL,
             decision   TEXT CHECK (decision IN ('approve', 'reject', 'resume')),
             decided_at TEXT
         );
         INSERT INTO paused_stores VALUES ('local', 'mass_change', 'too many deletes', '{\"deletes\": 40}',
             '2026-01-01T00:00:00.000000Z', 'approve', '2026-01-01T00:05:00.000000Z');
         PRAGMA user_version = 3;",
    )
    .unwrap();
    drop(c);
    let mut db = StateDb::open(&path).unwrap();
    assert_eq!(
        db.schema_version().unwrap(),
        contact_sync_state::SCHEMA_VERSION
    );
    let p = db.paused("local").unwrap().unwrap();
    assert_eq!(
        (
            p.kind,
            p.reason.as_str(),
            p.details["deletes"].as_i64(),
            p.parked
        ),
        (PauseKind::MassChange, "too many deletes", Some(40), None)
    );
    assert_eq!(p.decided_at, Some(ts("2026-01-01T00:05:00Z")));
    let tx = db.tx().unwrap();
    tx.pause_store(&parked("crm", None)).unwrap();
    tx.queue_request(
        RequestKind::RepairDrift,
        &json!({}),
        ts("2026-01-02T00:00:00Z"),
    )
    .unwrap();
    tx.commit().unwrap();
    assert_eq!(db.paused_stores().unwrap().len(), 2);
    assert!(db.has_queued_request().unwrap());
}
