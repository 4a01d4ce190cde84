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

/// Canonical on BigQuery seeded with `n` rows by an earlier tool, a local
/// SQLite store, and an engine copying with pages of `page`. Returns the
/// engine and canonical's client (its counters count canonical's jobs).
async fn seeded_engine(
    ds: &TestDataset,
    n: u64,
    page: usize,
    dir: &std::path::Path,
) -> (Engine, contact_sync_bigquery::BigQueryClient) {
    let mut other = ds.store().await;
    let mut g = Generator::new(14);
    let seed: Vec<Contact> = (0..n).map(|i| g.contact(i)).collect();
    for chunk in seed.chunks(2_500) {
        let out = other.write_batch(chunk).await.expect("seed");
        assert!(out
            .iter()
            .all(|o| matches!(o, WriteOutcome::Applied { .. })));
    }
    let local = SqliteStore::open(&dir.join("local.db"), "local").expect("sqlite");
    let client = contact_sync_bigquery::BigQueryClient::emulator(&common::url(), common::PROJECT)
        .expect("client");
    let canonical = BigQueryStore::open(client.clone(), ds.config())
        .await
        .expect("open bigquery");
    let opts = EngineOptions {
        backfill_page: page,
        ..EngineOptions::default()
    };
    let e = Engine::new(
        StateDb::open_in_memory().expect("state"),
        Box::new(canonical),
        vec![Box::new(local)],
        opts,
    )
    .expect("engine");
    (e, client)
}

/// Issue 14, observation 9: the first cycle after an initial sync read the
/// whole table again as changes (5,000 rows: 51 s, 105 query jobs). The
/// initial sync now commits canonical's position taken before its copy
/// (the server's clock and the sweep's fingerprint baseline): the first
/// cycle captures nothing and sends two query jobs (the sweep the first
/// poll after `open` runs, and the fast-path poll); the search index's
/// fill from canonical, which the cycles after an initial sync also do
/// (a scan of canonical, not capture), is run and counted apart. `CONTACT_SYNC_BQ_ROWS` sets
/// the size (default 2,000; BENCHMARKS.md has 5,000).
#[tokio::test]
async fn the_first_cycle_after_an_initial_sync_reads_nothing_again() {
    let n: u64 = std::env::var("CONTACT_SYNC_BQ_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let ds = TestDataset::create("firstcycle").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut e, client) = seeded_engine(&ds, n, 2_000, dir.path()).await;
    let mut progress = |_: &str, _: u64, _: u64| {};
    let started = std::time::Instant::now();
    let v = e.initial_sync(&mut progress).await.expect("initial sync");
    let sync_secs = started.elapsed().as_secs_f64();
    assert_eq!((v[0].expected, v[0].matching), (n, n), "{:?}", v[0]);

    // The search index is filled from canonical by the cycles after an
    // initial sync (a scan, not change capture): done first, counted apart.
    let jobs = client.stats().jobs;
    let started = std::time::Instant::now();
    let filled = e
        .fill_search_index_for(std::time::Duration::from_secs(600))
        .await
        .expect("search fill");
    assert!(filled, "the search fill finished");
    let (fill_secs, fill_jobs) = (started.elapsed().as_secs_f64(), client.stats().jobs - jobs);

    let jobs = client.stats().jobs;
    let started = std::time::Instant::now();
    let r = e.cycle().await.expect("cycle");
    let secs = started.elapsed().as_secs_f64();
    let jobs = client.stats().jobs - jobs;
    assert!(r.errors().is_empty(), "{:?}", r.errors());
    let captured: u64 = r.stores.iter().map(|s| s.stats.captured).sum();
    println!(
        "rows {n}: initial sync {sync_secs:.1} s; search fill {fill_secs:.2} s, {fill_jobs} jobs; \
         first cycle {secs:.2} s, {jobs} query jobs, {captured} changes captured"
    );
    assert_eq!(captured, 0, "{r:?}");
    assert!(jobs <= 2, "the first cycle sent {jobs} query jobs");
    ds.cleanup().await;
}

/// The position is taken before the copy starts: edits made in BigQuery
/// through Google's official client while the initial sync copies (after
/// its first page, to rows already copied) still arrive: an UPDATE that
/// bumps `last_updated`, one that leaves it alone, a back-dated one, a
/// hard DELETE and an INSERT.
#[tokio::test]
async fn edits_made_in_bigquery_during_the_initial_sync_arrive() {
    let ds = TestDataset::create("duringsync").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut e, _) = seeded_engine(&ds, 300, 100, dir.path()).await;
    let id = Generator::contact_id;
    let new_id = Generator::contact_id(900_000);
    let mut edited = false;
    let body = format!(
        "run(f\"UPDATE {{T}} SET job_title = 'bumped during sync', version = version + 1, last_updated = CURRENT_TIMESTAMP() WHERE contact_id = @id\", id='{b}')\n\
         run(f\"UPDATE {{T}} SET notes = 'unbumped during sync' WHERE contact_id = @id\", id='{u}')\n\
         run(f\"UPDATE {{T}} SET notes = 'back-dated during sync', last_updated = TIMESTAMP '2001-01-01' WHERE contact_id = @id\", id='{d}')\n\
         run(f\"DELETE FROM {{T}} WHERE contact_id = @id\", id='{x}')\n\
         errs = client.insert_rows_json(f'{{DS}}.contacts', [{{'contact_id': '{new_id}', 'canonical_name': 'Inserted During Sync', 'version': 1}}])\n\
         assert not errs, errs\n",
        b = id(10),
        u = id(20),
        d = id(30),
        x = id(40),
    );
    let mut progress = |_: &str, done: u64, _: u64| {
        if done >= 100 && !edited {
            edited = true;
            common::python(&ds, &body);
        }
    };
    e.initial_sync(&mut progress).await.expect("initial sync");
    assert!(edited, "the hook between pages ran");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        cycles(&mut e, 1).await;
        let local = e.store_mut("local").expect("local");
        let got = local
            .read(&[id(10), id(20), id(30), id(40), new_id.clone()])
            .await
            .expect("read");
        let by = |i: &str| got.iter().find(|c| c.contact_id == i);
        let arrived = by(&id(10)).and_then(|c| c.job_title.as_deref())
            == Some("bumped during sync")
            && by(&id(20)).and_then(|c| c.notes.as_deref()) == Some("unbumped during sync")
            && by(&id(30)).and_then(|c| c.notes.as_deref()) == Some("back-dated during sync")
            && by(&id(40)).is_none_or(|c| c.is_deleted())
            && by(&new_id).is_some_and(|c| c.canonical_name == "Inserted During Sync");
        if arrived {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the edits made during the initial sync did not all arrive: {got:#?}"
        );
    }
    ds.cleanup().await;
}

/// `drift` with BigQuery as canonical: rows a user made unreadable (with
/// Google's official client) are named, with canonical as their store, and
/// the rest is compared as usual.
#[tokio::test]
async fn drift_names_the_canonical_rows_it_cannot_read() {
    let ds = TestDataset::create("driftbad").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut e, _) = seeded_engine(&ds, 4, 100, dir.path()).await;
    let mut progress = |_: &str, _: u64, _: u64| {};
    e.initial_sync(&mut progress).await.expect("initial sync");
    common::python(
        &ds,
        r#"run(f"INSERT INTO {T} (contact_id, canonical_name, version, external_ids) VALUES ('c900000001', 'New Row', 1, JSON '[1, 2]')")
run(f"""INSERT INTO {T} (contact_id, canonical_name, version, external_ids) VALUES ('c000000002a', 'Other Row', 1, JSON '{{"crm": {{"n": 7}}}}')""")"#,
    );
    let v = e.verify().await.expect("verify");
    let local = v.iter().find(|v| v.store == "local").expect("local");
    let named: Vec<(&str, &str, &str)> = local
        .unreadable
        .iter()
        .map(|u| (u.store.as_str(), u.contact_id.as_str(), u.field.as_str()))
        .collect();
    assert_eq!(
        named,
        [
            (CANONICAL, "c000000002a", "external_ids"),
            (CANONICAL, "c900000001", "external_ids")
        ],
        "{local:?}"
    );
    // The readable contacts are compared as usual.
    assert_eq!(
        (local.expected, local.matching, local.missing, local.extra),
        (4, 4, 0, 0),
        "{local:?}"
    );
    ds.cleanup().await;
}
