//! Two-way scenarios with BigQuery (emulator) as the canonical store and
//! the local SQLite store, driven by the engine: initial sync, edits on
//! each side, a stale replay, a tombstone, and a bad row written into
//! BigQuery by another tool going to dead letters.

mod common;

use common::TestDataset;
use contact_sync_bigquery::{BigQueryStore, QueryParam};
use contact_sync_connector::{RecordSink, WriteOutcome};
use contact_sync_core::synth::Generator;
use contact_sync_core::Contact;
use contact_sync_engine::{Engine, EngineOptions, CANONICAL};
use contact_sync_sqlite::SqliteStore;
use contact_sync_state::StateDb;

async fn cycles(e: &mut Engine, n: usize) {
    for _ in 0..n {
        let r = e.cycle().await.expect("cycle");
        assert!(r.errors().is_empty(), "cycle errors: {:?}", r.errors());
    }
}

async fn read(e: &mut Engine, store: &str, id: &str) -> Contact {
    let s = e.store_mut(store).expect("store");
    let mut got = s.read(&[id.to_string()]).await.expect("read");
    got.pop().unwrap_or_else(|| panic!("{store} has no {id}"))
}

#[tokio::test]
async fn bigquery_canonical_with_local_sqlite_two_way() {
    let ds = TestDataset::create("engine").await;
    // Contacts already in BigQuery, written by an earlier tool.
    let mut other = ds.store().await;
    let mut g = Generator::new(5);
    let seed: Vec<Contact> = (0..10).map(|i| g.contact(i)).collect();
    let out = other.write_batch(&seed).await.expect("seed");
    assert!(out
        .iter()
        .all(|o| matches!(o, WriteOutcome::Applied { .. })));
    let id = |i: u64| Generator::contact_id(i);

    let dir = tempfile::tempdir().expect("tempdir");
    let local_path = dir.path().join("local.db");
    let local = SqliteStore::open(&local_path, "local").expect("sqlite");
    let canonical = BigQueryStore::open(ds.client.clone(), ds.config())
        .await
        .expect("open bigquery");
    let state = StateDb::open_in_memory().expect("state");
    let mut e = Engine::new(
        state,
        Box::new(canonical),
        vec![Box::new(local)],
        EngineOptions::default(),
    )
    .expect("engine");

    // Initial sync copies everything and verifies it.
    let mut progress = |_: &str, _: u64, _: u64| {};
    let v = e.initial_sync(&mut progress).await.expect("initial sync");
    let lv = v
        .iter()
        .find(|s| s.store == "local")
        .expect("local verification");
    assert_eq!(
        (lv.expected, lv.matching, lv.missing),
        (10, 10, 0),
        "{lv:?}"
    );
    cycles(&mut e, 2).await;

    // Another tool edits BigQuery with DML: the edit reaches the local store.
    let sql = format!(
        "UPDATE {} SET job_title = @t, version = version + 1, last_updated = CURRENT_TIMESTAMP(), last_updated_by = 'etl' WHERE contact_id = @id",
        ds.table_sql("contacts")
    );
    ds.client
        .query(
            &sql,
            &[
                QueryParam::string("t", "Edited in BigQuery"),
                QueryParam::string("id", id(1)),
            ],
            "etl edit",
        )
        .await
        .expect("DML");
    cycles(&mut e, 2).await;
    assert_eq!(
        read(&mut e, "local", &id(1)).await.job_title.as_deref(),
        Some("Edited in BigQuery")
    );

    // A user edits the local SQLite file: the edit reaches BigQuery with a new version.
    let before = read(&mut e, CANONICAL, &id(2)).await;
    {
        let conn = rusqlite::Connection::open(&local_path).expect("sqlite conn");
        conn.execute(
            "UPDATE contacts SET notes = 'edited locally' WHERE contact_id = ?1",
            [id(2)],
        )
        .expect("local edit");
    }
    cycles(&mut e, 2).await;
    let after = read(&mut e, CANONICAL, &id(2)).await;
    assert_eq!(after.notes.as_deref(), Some("edited locally"));
    assert_eq!(after.version, before.version + 1);
    assert_eq!(after.last_updated_by.as_deref(), Some("local"));

    // A stale replay of the old record into BigQuery is refused.
    let out = other
        .write_batch(std::slice::from_ref(&before))
        .await
        .expect("replay");
    assert_eq!(
        out[0],
        WriteOutcome::Stale {
            stored_version: after.version
        }
    );
    cycles(&mut e, 1).await;
    assert_eq!(read(&mut e, CANONICAL, &id(2)).await, after);
    assert_eq!(
        read(&mut e, "local", &id(2)).await.notes.as_deref(),
        Some("edited locally")
    );

    // A delete in the local store becomes a versioned tombstone in BigQuery.
    {
        let conn = rusqlite::Connection::open(&local_path).expect("sqlite conn");
        conn.execute("DELETE FROM contacts WHERE contact_id = ?1", [id(3)])
            .expect("local delete");
    }
    cycles(&mut e, 2).await;
    let tomb = read(&mut e, CANONICAL, &id(3)).await;
    assert!(tomb.is_deleted(), "{tomb:?}");
    assert_eq!(
        e.store_mut(CANONICAL)
            .expect("canonical")
            .count()
            .await
            .expect("count"),
        9
    );

    // Another tool writes a bad category into BigQuery: a dead letter, not a sync.
    let sql = format!(
        "UPDATE {} SET category_code = 'Z', version = version + 1, last_updated = CURRENT_TIMESTAMP() WHERE contact_id = @id",
        ds.table_sql("contacts")
    );
    let local_before = read(&mut e, "local", &id(4)).await;
    ds.client
        .query(&sql, &[QueryParam::string("id", id(4))], "bad etl edit")
        .await
        .expect("DML");
    cycles(&mut e, 2).await;
    let dead = e.state().dead_letters(100).expect("dead letters");
    assert!(
        dead.iter()
            .any(|d| d.record == id(4) && d.field == "category_code"),
        "{dead:?}"
    );
    assert_eq!(
        read(&mut e, "local", &id(4)).await.category_code,
        local_before.category_code
    );
    ds.cleanup().await;
}

/// A user duplicates a contact's row in BigQuery (an INSERT through the
/// official client); an edit of that contact made in the local store is
/// not written over the two rows: it goes to dead letters naming the
/// contact and `contact_id`, and the rows stay as the user left them.
#[tokio::test]
async fn an_edit_of_a_contact_with_duplicate_rows_goes_to_dead_letters() {
    let ds = TestDataset::create("dupengine").await;
    let mut other = ds.store().await;
    let mut g = Generator::new(9);
    let seed: Vec<Contact> = (0..3).map(|i| g.contact(i)).collect();
    other.write_batch(&seed).await.expect("seed");
    let id = Generator::contact_id(1);

    let dir = tempfile::tempdir().expect("tempdir");
    let local_path = dir.path().join("local.db");
    let local = SqliteStore::open(&local_path, "local").expect("sqlite");
    let canonical = BigQueryStore::open(ds.client.clone(), ds.config())
        .await
        .expect("open bigquery");
    let mut e = Engine::new(
        StateDb::open_in_memory().expect("state"),
        Box::new(canonical),
        vec![Box::new(local)],
        EngineOptions::default(),
    )
    .expect("engine");
    let mut progress = |_: &str, _: u64, _: u64| {};
    e.initial_sync(&mut progress).await.expect("initial sync");
    cycles(&mut e, 2).await;

    common::python(
        &ds,
        &format!(
            "run(f\"INSERT INTO {{T}} (contact_id, canonical_name, version) VALUES (@id, 'A copy', 1)\", id='{id}')"
        ),
    );
    {
        let conn = rusqlite::Connection::open(&local_path).expect("sqlite conn");
        conn.execute(
            "UPDATE contacts SET notes = 'edited locally' WHERE contact_id = ?1",
            [&id],
        )
        .expect("local edit");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        e.cycle().await.expect("cycle");
        let dead = e.state().dead_letters(100).expect("dead letters");
        if let Some(d) = dead.iter().find(|d| d.record == id) {
            assert_eq!(d.field, "contact_id", "{d:?}");
            assert!(d.reason.contains("2 rows"), "{d:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no dead letter for {id}: {dead:?}"
        );
    }
    let rows = e
        .store_mut(CANONICAL)
        .expect("canonical")
        .read(std::slice::from_ref(&id))
        .await
        .expect("read");
    assert_eq!(rows.len(), 2, "both rows kept: {rows:?}");
    assert!(
        rows.iter()
            .all(|c| c.notes.as_deref() != Some("edited locally")),
        "not rewritten: {rows:?}"
    );
    ds.cleanup().await;
}
