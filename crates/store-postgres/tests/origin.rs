//! Issue 18 on the real cluster: the engine's write transactions carry the
//! store's replication origin and the slot capture skips them whole, moving
//! its position (and the slot) past them; a role without the rights to
//! origins falls back to the kept content hash; a busy capture keeps the
//! slot's restart point (where every peek starts decoding) close behind.

mod support;

use contact_sync_connector::{ChangeKind, ChangeSource, Expect, RecordSink};
use contact_sync_core::{content_hash, Contact};
use contact_sync_postgres::harness;
use contact_sync_postgres::{PgStore, Provenance};
use support::{cfg_for, confirmed, cp_lsn, lsn, sql};

fn contact(i: usize) -> Contact {
    let mut c = Contact::new(format!("c-{i:06}"), format!("Person {i}"));
    c.job_title = Some("Engineer".into());
    c.notes = Some(format!("note {i}"));
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

#[tokio::test]
async fn a_backfill_is_skipped_whole_and_the_slot_moves_past_it() {
    let url = harness::shared().create_database().await;
    let cfg = cfg_for(&url);
    let slot = cfg.slot_name.clone();
    let mut s = PgStore::connect(cfg).await.expect("connect");
    s.migrate().await.expect("migrate");
    assert!(
        matches!(s.provenance().await.unwrap(), Provenance::Origin(ref o) if o == &format!("contact_sync_{slot}")),
        "a superuser tags its writes"
    );
    let admin = sql(&url).await;
    backfill(&mut s, 0..5000).await;
    let after_backfill = lsn(&admin, "SELECT pg_current_wal_lsn()::text").await;
    let health = s.slot_health().await.unwrap();
    assert!(
        health.provenance.contains("replication origin"),
        "{health:?}"
    );

    let b = s.read_changes(None, 100).await.expect("read");
    assert!(b.changes.is_empty(), "{} changes", b.changes.len());
    assert!(!b.has_more);
    assert!(cp_lsn(&b.checkpoint) >= after_backfill, "{}", b.checkpoint);
    // The slot itself moved past the backfill: its WAL can go (PostgreSQL
    // lets it go at the next xl_running_xacts record, within 15 s; not
    // waited for here, see the capture bench).
    assert!(confirmed(&admin, &slot).await >= after_backfill);
    assert_eq!(s.count().await.unwrap(), 5000);
}

#[tokio::test]
async fn a_users_edit_between_backfill_pages_is_delivered_alone() {
    let url = harness::shared().create_database().await;
    let mut s = PgStore::connect(cfg_for(&url)).await.expect("connect");
    s.migrate().await.expect("migrate");
    backfill(&mut s, 0..2000).await;
    let user = sql(&url).await;
    user.execute(
        "UPDATE contacts SET job_title = 'Analyst' WHERE contact_id = 'c-000007'",
        &[],
    )
    .await
    .unwrap();
    backfill(&mut s, 2000..4000).await;

    let b = s.read_changes(None, 100).await.expect("read");
    assert_eq!(b.changes.len(), 1, "only the user's edit");
    let ChangeKind::Upsert(c) = &b.changes[0].kind else {
        panic!("{:?}", b.changes[0])
    };
    assert_eq!(c.contact_id, "c-000007");
    assert_eq!(c.job_title.as_deref(), Some("Analyst"));
    assert_eq!(c.content_hash, None, "a user's write keeps no hash");
    s.acknowledge(&b.checkpoint).await.unwrap();
    let rest = s.read_changes(Some(&b.checkpoint), 100).await.unwrap();
    assert!(
        rest.changes.is_empty(),
        "the second backfill half is skipped"
    );
    assert!(!rest.has_more);
}

/// A role with REPLICATION but no rights to replication origins (as on a
/// managed service): the store says so, its writes come back with their
/// kept hash, and nothing is lost. Granted the functions, it tags them.
#[tokio::test]
async fn without_the_rights_to_origins_the_kept_hash_tells_own_writes() {
    let url = harness::shared().create_database().await;
    let db = url.rsplit('/').next().unwrap().to_string();
    let role = format!("r_{db}");
    let admin = sql(&url).await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE \"{role}\" LOGIN REPLICATION; ALTER DATABASE \"{db}\" OWNER TO \"{role}\"; \
             ALTER SCHEMA public OWNER TO \"{role}\";"
        ))
        .await
        .unwrap();
    let role_url = url.replacen("postgres@", &format!("{role}@"), 1);
    assert_ne!(role_url, url, "the test URL names user postgres");
    let mut s = PgStore::connect(cfg_for(&role_url)).await.expect("connect");
    let p = s.provenance().await.unwrap();
    assert!(
        matches!(&p, Provenance::ContentHash(why) if why.contains("pg_replication_origin_session_setup")),
        "{p}"
    );
    s.migrate().await.expect("migrate as the role");
    assert!(s
        .slot_health()
        .await
        .unwrap()
        .provenance
        .contains("kept content_hash"));
    let a = contact(1);
    s.write_batch(std::slice::from_ref(&a)).await.unwrap();
    sql(&url)
        .await
        .execute(
            "UPDATE contacts SET job_title = 'Analyst' WHERE contact_id = 'c-000001'",
            &[],
        )
        .await
        .unwrap();
    let b = s.read_changes(None, 100).await.expect("read");
    assert_eq!(b.changes.len(), 2);
    let hashes: Vec<Option<String>> = b
        .changes
        .iter()
        .map(|ch| match &ch.kind {
            ChangeKind::Upsert(c) => c.content_hash.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(hashes, vec![a.content_hash.clone(), None]);
    s.acknowledge(&b.checkpoint).await.unwrap();

    // Granted the functions (the origin is created by whoever may).
    admin
        .batch_execute(&format!(
            "GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup(text), \
             pg_replication_origin_session_reset(), pg_replication_origin_create(text) TO \"{role}\""
        ))
        .await
        .unwrap();
    let mut s2 = PgStore::connect(cfg_for(&role_url)).await.expect("connect");
    assert!(matches!(
        s2.provenance().await.unwrap(),
        Provenance::Origin(_)
    ));
    s2.write_batch(&[contact(2)]).await.unwrap();
    let b2 = s2.read_changes(Some(&b.checkpoint), 100).await.unwrap();
    assert!(b2.changes.is_empty(), "{:?}", b2.changes);
    drop((s, s2));
    admin
        .batch_execute(&format!(
            "REVOKE EXECUTE ON FUNCTION pg_replication_origin_session_setup(text), \
             pg_replication_origin_session_reset(), pg_replication_origin_create(text) FROM \"{role}\""
        ))
        .await
        .unwrap();
}

/// A busy capture moves the slot's restart point along: PostgreSQL logs the
/// record it moves to only every 15 s of activity, and every peek decodes
/// the WAL from there (at 1,000 edits/s, up to 15 s of it per peek). While
/// edits keep coming and are read and acknowledged, the restart point
/// passes the WAL written before a round within 3 s, twice in a row.
#[tokio::test]
async fn a_busy_capture_moves_the_slots_restart_point_along() {
    use std::time::{Duration, Instant};
    let url = harness::shared().create_database().await;
    let cfg = cfg_for(&url);
    let slot = cfg.slot_name.clone();
    let mut s = PgStore::connect(cfg).await.expect("connect");
    s.migrate().await.expect("migrate");
    let c = sql(&url).await;
    let restart_q =
        format!("SELECT restart_lsn::text FROM pg_replication_slots WHERE slot_name = '{slot}'");
    let mut cp = None;
    let mut n = 0;
    for round in 0..2 {
        let written = lsn(&c, "SELECT pg_current_wal_lsn()::text").await;
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            // A busy database: edits keep coming, each its own transaction.
            for _ in 0..20 {
                n += 1;
                c.execute(
                    "INSERT INTO contacts (contact_id, canonical_name) VALUES ($1, 'N')",
                    &[&format!("r-{n}")],
                )
                .await
                .expect("insert");
            }
            let b = s.read_changes(cp.as_ref(), 1000).await.expect("read");
            s.acknowledge(&b.checkpoint).await.expect("ack");
            cp = Some(b.checkpoint);
            let restart = lsn(&c, &restart_q).await;
            if restart >= written {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: the restart point is still at {restart}, before {written}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
