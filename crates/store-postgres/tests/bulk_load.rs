//! Issue 18 on the real cluster: a bulk load (an initial sync) nobody else
//! wrote in is skipped by the capture without decoding its WAL; any write
//! by someone else during it (an edit, a delete, a truncate, even across a
//! crash of the loading process) is delivered as always.

mod support;

use contact_sync_connector::{
    Change, ChangeKind, ChangeSource, Checkpoint, Expect, RecordSink, RetryClass,
};
use contact_sync_core::{content_hash, Contact};
use contact_sync_postgres::harness;
use contact_sync_postgres::pgoutput::Lsn;
use contact_sync_postgres::PgStore;
use support::{cfg_for, confirmed, cp_lsn, lsn, sql};
use tokio_postgres::Client;

fn contact(i: usize) -> Contact {
    let mut c = Contact::new(format!("c-{i:06}"), format!("Person {i}"));
    c.job_title = Some("Engineer".into());
    c.normalize();
    c.content_hash = Some(content_hash(&c));
    c
}

/// Writes contacts `range` in pages of 500, as the initial sync does.
async fn backfill(s: &mut PgStore, range: std::ops::Range<usize>) {
    let all: Vec<usize> = range.collect();
    for page in all.chunks(500) {
        let writes: Vec<Contact> = page.iter().map(|i| contact(*i)).collect();
        let expect = vec![Expect::Absent; writes.len()];
        let (out, _) = s.write_batch_if(writes, &expect).await.expect("write");
        assert_eq!(out.len(), page.len());
    }
}

/// The recorded window of the last bulk load: (bulk_from, bulk_to).
async fn window(c: &Client) -> (Option<String>, Option<String>) {
    let r = c
        .query_one(
            "SELECT bulk_from::text, bulk_to::text FROM contact_sync_meta WHERE tbl = 'public.contacts'",
            &[],
        )
        .await
        .expect("meta");
    (r.get(0), r.get(1))
}

/// Bytes of the transactions the slot has decoded and passed to the output
/// plugin so far.
async fn decoded_bytes(c: &Client, slot: &str) -> i64 {
    c.query_one(
        "SELECT COALESCE((SELECT total_bytes FROM pg_stat_replication_slots WHERE slot_name = $1), 0)",
        &[&slot],
    )
    .await
    .expect("slot stats")
    .get(0)
}

/// Reads (acknowledging each batch, as the engine does) until a read
/// returns nothing and says there is no more.
async fn drain(s: &mut PgStore) -> (Vec<Change>, Checkpoint) {
    let mut cp: Option<Checkpoint> = None;
    let mut all = Vec::new();
    for _ in 0..50 {
        let b = s.read_changes(cp.as_ref(), 100).await.expect("read");
        let empty = b.changes.is_empty();
        all.extend(b.changes);
        s.acknowledge(&b.checkpoint).await.expect("ack");
        cp = Some(b.checkpoint);
        if empty && !b.has_more {
            return (all, cp.unwrap());
        }
    }
    panic!("the slot never ran dry");
}

/// (contact id, what happened) of each change.
fn summary(changes: &[Change]) -> Vec<(String, String)> {
    changes
        .iter()
        .map(|ch| match &ch.kind {
            ChangeKind::Upsert(c) => (
                c.contact_id.clone(),
                c.job_title.clone().unwrap_or_default(),
            ),
            ChangeKind::Delete { contact_id } => {
                (contact_id.clone().unwrap_or_default(), "deleted".into())
            }
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn a_bulk_load_nobody_else_wrote_in_is_skipped_without_decoding_it() {
    let url = harness::shared().create_database().await;
    let cfg = cfg_for(&url);
    let slot = cfg.slot_name.clone();
    let mut s = PgStore::connect(cfg).await.expect("connect");
    s.migrate().await.expect("migrate");
    let user = sql(&url).await;
    // Before the load: delivered first.
    user.execute(
        "INSERT INTO contacts (contact_id, canonical_name, job_title) VALUES ('u-1', 'Before', 'before')",
        &[],
    )
    .await
    .unwrap();
    s.begin_bulk_load().await.expect("begin");
    backfill(&mut s, 0..3000).await;
    s.end_bulk_load().await.expect("end");
    let after_load = lsn(&user, "SELECT pg_current_wal_lsn()::text").await;
    let (from, to) = window(&user).await;
    assert!(
        from.is_some() && to.is_some(),
        "window recorded: {from:?} {to:?}"
    );
    let triggers: i64 = user
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgname LIKE '%bulk_watch'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(triggers, 0, "the watch is removed at the end of the load");
    // After the load: delivered after the skipped window.
    user.execute(
        "UPDATE contacts SET job_title = 'after' WHERE contact_id = 'c-000010'",
        &[],
    )
    .await
    .unwrap();

    let decoded_before = decoded_bytes(&user, &slot).await;
    let (changes, cp) = drain(&mut s).await;
    assert_eq!(
        summary(&changes),
        vec![
            ("u-1".to_string(), "before".to_string()),
            ("c-000010".to_string(), "after".to_string())
        ]
    );
    assert!(cp_lsn(&cp) > after_load, "{cp}");
    // The load's 3,000 rows (hundreds of kB decoded) never reached the
    // output plugin: what was decoded is the two edits and bookkeeping.
    let decoded = decoded_bytes(&user, &slot).await - decoded_before;
    assert!(
        decoded < 100_000,
        "{decoded} bytes decoded: the load was not skipped"
    );
    assert_eq!(
        window(&user).await,
        (None, None),
        "the window is forgotten once passed"
    );
    assert_eq!(s.count().await.unwrap(), 3001);
}

#[tokio::test]
async fn writes_by_someone_else_during_a_bulk_load_are_delivered() {
    let url = harness::shared().create_database().await;
    let db = url.rsplit('/').next().unwrap().to_string();
    let mut s = PgStore::connect(cfg_for(&url)).await.expect("connect");
    s.migrate().await.expect("migrate");
    // An application role with rights on the contacts table only.
    let role = format!("app_{db}");
    let admin = sql(&url).await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{role}\" LOGIN; GRANT SELECT, INSERT, UPDATE, DELETE ON contacts TO \"{role}\";"
        ))
        .await
        .unwrap();
    let app = sql(&url.replacen("postgres@", &format!("{role}@"), 1)).await;

    s.begin_bulk_load().await.expect("begin");
    backfill(&mut s, 0..2000).await;
    app.batch_execute(
        "UPDATE contacts SET job_title = 'Analyst' WHERE contact_id = 'c-000007'; \
         DELETE FROM contacts WHERE contact_id = 'c-000008';",
    )
    .await
    .expect("the application's writes are not refused by the watch");
    backfill(&mut s, 2000..4000).await;
    s.end_bulk_load().await.expect("end");
    assert_eq!(
        window(&admin).await.1,
        None,
        "no window to skip: someone else wrote"
    );

    let (changes, _) = drain(&mut s).await;
    assert_eq!(
        summary(&changes),
        vec![
            ("c-000007".to_string(), "Analyst".to_string()),
            ("c-000008".to_string(), "deleted".to_string())
        ]
    );
    drop(app);
    admin
        .batch_execute(&format!(
            "REVOKE ALL ON contacts FROM \"{role}\"; DROP ROLE \"{role}\";"
        ))
        .await
        .ok();
}

#[tokio::test]
async fn an_edit_during_a_bulk_load_cut_by_a_crash_is_delivered_after_the_resumed_load() {
    let url = harness::shared().create_database().await;
    let mut s = PgStore::connect(cfg_for(&url)).await.expect("connect");
    s.migrate().await.expect("migrate");
    s.begin_bulk_load().await.expect("begin");
    backfill(&mut s, 0..1000).await;
    let user = sql(&url).await;
    user.execute(
        "UPDATE contacts SET job_title = 'Analyst' WHERE contact_id = 'c-000003'",
        &[],
    )
    .await
    .unwrap();
    // The loading process dies: no end_bulk_load.
    drop(s);
    let mut s = PgStore::connect(cfg_for(&url)).await.expect("connect");
    s.migrate().await.expect("migrate");
    s.begin_bulk_load().await.expect("begin again");
    backfill(&mut s, 1000..2000).await;
    s.end_bulk_load().await.expect("end");

    let (changes, _) = drain(&mut s).await;
    assert_eq!(
        summary(&changes),
        vec![("c-000003".to_string(), "Analyst".to_string())]
    );
}

#[tokio::test]
async fn a_truncate_during_a_bulk_load_pauses_the_store() {
    let url = harness::shared().create_database().await;
    let mut s = PgStore::connect(cfg_for(&url)).await.expect("connect");
    s.migrate().await.expect("migrate");
    s.begin_bulk_load().await.expect("begin");
    backfill(&mut s, 0..1000).await;
    sql(&url)
        .await
        .batch_execute("TRUNCATE contacts")
        .await
        .unwrap();
    backfill(&mut s, 1000..2000).await;
    s.end_bulk_load().await.expect("end");

    let mut cp: Option<Checkpoint> = None;
    for _ in 0..5 {
        match s.read_changes(cp.as_ref(), 100).await {
            Ok(b) => {
                assert!(b.changes.is_empty(), "{:?}", b.changes);
                cp = Some(b.checkpoint);
            }
            Err(e) => {
                assert_eq!(e.class, RetryClass::Paused, "{e}");
                assert!(e.to_string().contains("truncated"), "{e}");
                return;
            }
        }
    }
    panic!("the capture did not pause on the truncate");
}

/// A fresh database and its store, set up, that moves its slot during a
/// bulk load after every page (the default: every 128 MB of WAL): (url,
/// slot, store, an admin connection).
async fn following() -> (String, String, PgStore, Client) {
    let url = harness::shared().create_database().await;
    let cfg = cfg_for(&url);
    let slot = cfg.slot_name.clone();
    let mut s = PgStore::connect(cfg).await.expect("connect");
    s.migrate().await.expect("migrate");
    s.set_bulk_advance_every(0);
    let admin = sql(&url).await;
    (url, slot, s, admin)
}

#[tokio::test]
async fn the_slot_follows_a_bulk_load_nobody_else_wrote_in() {
    let (url, slot, mut s, admin) = following().await;
    s.begin_bulk_load().await.expect("begin");
    backfill(&mut s, 0..1000).await;
    let from = Lsn::parse(&window(&admin).await.0.expect("bulk_from")).expect("lsn");
    let after_first = confirmed(&admin, &slot).await;
    assert!(
        after_first > from,
        "the slot moved over the load's WAL during it: {after_first:?} after {from:?}"
    );
    backfill(&mut s, 1000..2000).await;
    let after_second = confirmed(&admin, &slot).await;
    assert!(after_second > after_first, "and kept following it");
    s.end_bulk_load().await.expect("end");
    assert!(window(&admin).await.1.is_some(), "the window is recorded");

    // A user's edit right after the load is the only change delivered.
    sql(&url)
        .await
        .execute(
            "UPDATE contacts SET job_title = 'Analyst' WHERE contact_id = 'c-000003'",
            &[],
        )
        .await
        .unwrap();
    let (changes, _) = drain(&mut s).await;
    assert_eq!(
        summary(&changes),
        vec![("c-000003".to_string(), "Analyst".to_string())]
    );
}

#[tokio::test]
async fn a_write_by_someone_else_during_a_bulk_load_stops_the_slot_where_it_was() {
    let (_url, slot, mut s, admin) = following().await;
    s.begin_bulk_load().await.expect("begin");
    backfill(&mut s, 0..1000).await;
    let before = confirmed(&admin, &slot).await;
    admin
        .batch_execute("UPDATE contacts SET job_title = 'Analyst' WHERE contact_id = 'c-000007'")
        .await
        .unwrap();
    backfill(&mut s, 1000..2000).await;
    assert_eq!(
        confirmed(&admin, &slot).await,
        before,
        "not moved past someone else's write"
    );
    s.end_bulk_load().await.expect("end");
    let (changes, _) = drain(&mut s).await;
    assert_eq!(
        summary(&changes),
        vec![("c-000007".to_string(), "Analyst".to_string())]
    );
}

#[tokio::test]
async fn changes_in_the_slot_before_a_bulk_load_keep_the_slot_where_it_is() {
    let (_url, slot, mut s, admin) = following().await;
    // Someone adds a row and removes it again before the initial sync (the
    // table is empty when it starts): not delivered yet.
    admin
        .batch_execute(
            "INSERT INTO contacts (contact_id, canonical_name, job_title) VALUES ('c-early', 'Early', 'Early'); \
             DELETE FROM contacts WHERE contact_id = 'c-early';",
        )
        .await
        .unwrap();
    let before = confirmed(&admin, &slot).await;
    s.begin_bulk_load().await.expect("begin");
    backfill(&mut s, 0..1000).await;
    assert_eq!(confirmed(&admin, &slot).await, before, "not moved");
    s.end_bulk_load().await.expect("end");
    let (changes, _) = drain(&mut s).await;
    assert_eq!(
        summary(&changes),
        vec![
            ("c-early".to_string(), "Early".to_string()),
            ("c-early".to_string(), "deleted".to_string())
        ]
    );
}
