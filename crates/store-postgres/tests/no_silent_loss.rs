//! Issue 12 on the real cluster: conditional writes are atomic, change
//! images carry provenance, schema changes pause the store, blank-id rows
//! get their id in place.

use std::time::{Duration, Instant};

use contact_sync_connector::{
    Change, ChangeKind, ChangeSource, Checkpoint, Conditional, Expect, RecordSink, RetryClass,
    StoreError, StoreInfo, WriteOutcome,
};
use contact_sync_core::hash::tombstone_hash;
use contact_sync_core::model::parse_ts;
use contact_sync_core::{content_hash, Contact};
use contact_sync_postgres::harness;
use contact_sync_postgres::{CdcMode, PgConfig, PgStore};
use tokio_postgres::{Client, NoTls};

fn cfg_for(url: &str, cdc: CdcMode) -> PgConfig {
    let mut cfg = PgConfig::new("supabase", url);
    cfg.slot_name = url.rsplit('/').next().unwrap().to_string();
    cfg.cdc = cdc;
    cfg
}

async fn fresh(cdc: CdcMode) -> (PgStore, String) {
    let url = harness::shared().create_database().await;
    let mut s = PgStore::connect(cfg_for(&url, cdc)).await.expect("connect");
    s.migrate().await.expect("migrate");
    (s, url)
}

/// A connection of "another app".
async fn other(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

async fn other_app(url: &str, sql: &str) {
    other(url)
        .await
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// `c` normalized, carrying its content hash (as the engine writes it).
fn hashed(mut c: Contact) -> Contact {
    c.normalize();
    c.content_hash = Some(content_hash(&c));
    c
}

fn contact(id: &str, name: &str, job: &str, version: i64) -> Contact {
    let mut c = Contact::new(id, name);
    c.job_title = Some(job.into());
    c.version = version;
    hashed(c)
}

async fn job_title(url: &str, id: &str) -> Option<String> {
    other(url)
        .await
        .query_one(
            "SELECT job_title FROM contacts WHERE contact_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}

async fn count_rows(url: &str) -> i64 {
    other(url)
        .await
        .query_one("SELECT count(*) FROM contacts", &[])
        .await
        .unwrap()
        .get(0)
}

async fn write_if(s: &mut PgStore, writes: Vec<Contact>, expect: Vec<Expect>) -> Vec<WriteOutcome> {
    s.write_batch_if(writes, &expect)
        .await
        .expect("write_batch_if")
        .0
}

fn applied(o: &WriteOutcome) -> bool {
    matches!(o, WriteOutcome::Applied { .. })
}

/// Waits (deadline 30 s) until a session of database `url` waits on a lock.
async fn until_someone_waits_on_a_lock(url: &str) {
    let c = other(url).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no session waited on a lock within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn drain(s: &mut PgStore, from: Option<Checkpoint>) -> (Vec<Change>, Option<Checkpoint>) {
    let mut cp = from;
    let mut all = Vec::new();
    loop {
        let b = s
            .read_changes(cp.as_ref(), 100)
            .await
            .expect("read_changes");
        all.extend(b.changes);
        cp = Some(b.checkpoint);
        if !b.has_more {
            return (all, cp);
        }
    }
}

fn upserted(ch: &Change) -> &Contact {
    match &ch.kind {
        ChangeKind::Upsert(c) => c,
        other => panic!("expected an upsert, got {other:?}"),
    }
}

/// Reads until an error (deadline: a few reads), which must be `Paused`.
async fn paused(s: &mut PgStore, from: Option<Checkpoint>) -> StoreError {
    let mut cp = from;
    for _ in 0..5 {
        match s.read_changes(cp.as_ref(), 100).await {
            Ok(b) => {
                for ch in &b.changes {
                    if let ChangeKind::Upsert(c) = &ch.kind {
                        assert!(
                            c.job_title.is_some(),
                            "a change decoded with job_title cleared: {c:?}"
                        );
                    }
                }
                cp = Some(b.checkpoint);
            }
            Err(e) => {
                assert_eq!(e.class, RetryClass::Paused, "{e}");
                return e;
            }
        }
    }
    panic!("the capture did not pause");
}

// ---- 1. atomic conditional writes ----

#[tokio::test]
async fn a_row_edited_after_the_engine_read_it_is_changed_and_left_untouched() {
    let (mut s, url) = fresh(CdcMode::Slot).await;
    assert_eq!(s.conditional_writes(), Conditional::Atomic);
    let a = contact("c-a", "Ada", "Programmer", 1);
    let seen = a.content_hash.clone().unwrap();
    assert!(applied(
        &write_if(&mut s, vec![a.clone()], vec![Expect::Absent]).await[0]
    ));
    // Kept hash equal: admitted without decoding.
    let a2 = contact("c-a", "Ada", "Engineer", 2);
    let out = write_if(&mut s, vec![a2.clone()], vec![Expect::Hash(seen.clone())]).await;
    assert!(applied(&out[0]), "{out:?}");
    // Someone edits after the engine read a2.
    other_app(
        &url,
        "UPDATE contacts SET job_title = 'Analyst' WHERE contact_id = 'c-a'",
    )
    .await;
    let a3 = contact("c-a", "Ada", "Manager", 3);
    let out = write_if(
        &mut s,
        vec![a3.clone()],
        vec![Expect::Hash(a2.content_hash.clone().unwrap())],
    )
    .await;
    assert_eq!(out, vec![WriteOutcome::Changed]);
    assert_eq!(job_title(&url, "c-a").await.as_deref(), Some("Analyst"));
    // Expecting what is there now (no kept hash: decoded and hashed): admitted.
    let now = s.read(&["c-a".into()]).await.unwrap().remove(0);
    let out = write_if(
        &mut s,
        vec![a3.clone()],
        vec![Expect::Hash(content_hash(&now))],
    )
    .await;
    assert!(applied(&out[0]), "{out:?}");
    assert_eq!(job_title(&url, "c-a").await.as_deref(), Some("Manager"));
    // The version guard still holds for admitted writes.
    let old = contact("c-a", "Ada", "Intern", 1);
    let out = write_if(
        &mut s,
        vec![old],
        vec![Expect::Hash(a3.content_hash.clone().unwrap())],
    )
    .await;
    assert_eq!(out, vec![WriteOutcome::Stale { stored_version: 3 }]);
    // Plain write_batch is unconditional.
    let any = contact("c-a", "Ada", "Boss", 4);
    assert!(applied(&s.write_batch(&[any]).await.unwrap()[0]));
}

#[tokio::test]
async fn a_writer_holding_the_row_lock_is_waited_for_and_its_edit_wins() {
    let (mut s, url) = fresh(CdcMode::Slot).await;
    let a = contact("c-a", "Ada", "Programmer", 1);
    s.write_batch(std::slice::from_ref(&a)).await.unwrap();
    let holder = other(&url).await;
    holder
        .batch_execute("BEGIN; UPDATE contacts SET job_title = 'Analyst' WHERE contact_id = 'c-a'")
        .await
        .unwrap();
    let a2 = contact("c-a", "Ada", "Manager", 2);
    let expect = vec![Expect::Hash(a.content_hash.clone().unwrap())];
    let task = tokio::spawn(async move {
        let out = s.write_batch_if(vec![a2], &expect).await.map(|r| r.0);
        (s, out)
    });
    until_someone_waits_on_a_lock(&url).await;
    holder.batch_execute("COMMIT").await.unwrap();
    let (_s, out) = task.await.unwrap();
    assert_eq!(out.unwrap(), vec![WriteOutcome::Changed]);
    assert_eq!(job_title(&url, "c-a").await.as_deref(), Some("Analyst"));
}

#[tokio::test]
async fn a_row_inserted_meanwhile_is_not_overwritten_by_a_write_expecting_none() {
    let (mut s, url) = fresh(CdcMode::Slot).await;
    let inserter = other(&url).await;
    inserter
        .batch_execute(
            "BEGIN; INSERT INTO contacts (contact_id, canonical_name, job_title) VALUES ('c-n', 'Nia', 'Theirs')",
        )
        .await
        .unwrap();
    let mine = contact("c-n", "Nia", "Mine", 5);
    let task = tokio::spawn(async move {
        let out = s
            .write_batch_if(vec![mine], &[Expect::Absent])
            .await
            .map(|r| r.0);
        (s, out)
    });
    until_someone_waits_on_a_lock(&url).await;
    inserter.batch_execute("COMMIT").await.unwrap();
    let (_s, out) = task.await.unwrap();
    assert_eq!(out.unwrap(), vec![WriteOutcome::Changed]);
    assert_eq!(job_title(&url, "c-n").await.as_deref(), Some("Theirs"));
    assert_eq!(count_rows(&url).await, 1);
}

#[tokio::test]
async fn absent_admits_no_row_or_a_tombstone_and_the_tombstone_hash_admits_no_row() {
    let (mut s, url) = fresh(CdcMode::Slot).await;
    let live = contact("c-live", "Liv", "Theirs", 1);
    let mut dead = contact("c-dead", "Ded", "Gone", 1);
    dead.deleted_at = parse_ts("2024-01-01T00:00:00Z");
    let dead = hashed(dead);
    s.write_batch(&[live.clone(), dead.clone()]).await.unwrap();
    let tomb = Expect::Hash(tombstone_hash().to_string());
    let out = write_if(
        &mut s,
        vec![
            contact("c-live", "Liv", "Mine", 2),
            contact("c-dead", "Ded", "Back", 2),
            contact("c-none", "Non", "New", 1),
            contact("c-live", "Liv", "Mine", 2),
            contact("c-none2", "Non", "New", 1),
        ],
        vec![
            Expect::Absent,
            Expect::Absent,
            Expect::Absent,
            tomb.clone(),
            tomb.clone(),
        ],
    )
    .await;
    assert_eq!(out[0], WriteOutcome::Changed);
    assert!(applied(&out[1]), "{out:?}");
    assert!(applied(&out[2]), "{out:?}");
    assert_eq!(out[3], WriteOutcome::Changed);
    assert!(applied(&out[4]), "{out:?}");
    assert_eq!(job_title(&url, "c-live").await.as_deref(), Some("Theirs"));
    assert_eq!(job_title(&url, "c-dead").await.as_deref(), Some("Back"));
    // A tombstone written over a tombstone expected by its hash.
    let mut again = contact("c-dead", "Ded", "Back", 3);
    again.deleted_at = parse_ts("2024-02-01T00:00:00Z");
    let again = hashed(again);
    let out = write_if(&mut s, vec![again], vec![tomb]).await;
    assert_eq!(out, vec![WriteOutcome::Changed], "the row is live again");
}

#[tokio::test]
async fn a_mixed_batch_keeps_outcome_order() {
    let (mut s, url) = fresh(CdcMode::Slot).await;
    let a = contact("c-a", "A", "a1", 1);
    let b = contact("c-b", "B", "b1", 1);
    s.write_batch(&[a.clone(), b.clone()]).await.unwrap();
    other_app(
        &url,
        "UPDATE contacts SET job_title = 'b-user' WHERE contact_id = 'c-b'",
    )
    .await;
    let out = write_if(
        &mut s,
        vec![
            contact("c-b", "B", "b2", 2),
            contact("c-a", "A", "a2", 2),
            contact("c-c", "C", "c1", 1),
            contact("c-a", "A", "a0", 2),
            contact("c-d", "D", "d1", 1),
        ],
        vec![
            Expect::Hash(b.content_hash.clone().unwrap()),
            Expect::Hash(a.content_hash.clone().unwrap()),
            Expect::Any,
            Expect::Absent,
            Expect::Absent,
        ],
    )
    .await;
    assert_eq!(out.len(), 5);
    assert_eq!(out[0], WriteOutcome::Changed, "{out:?}");
    assert!(applied(&out[1]), "{out:?}");
    assert!(applied(&out[2]), "{out:?}");
    assert_eq!(out[3], WriteOutcome::Changed, "{out:?}");
    assert!(applied(&out[4]), "{out:?}");
    assert_eq!(job_title(&url, "c-b").await.as_deref(), Some("b-user"));
    assert_eq!(job_title(&url, "c-a").await.as_deref(), Some("a2"));
    assert_eq!(count_rows(&url).await, 4);
}

// ---- 2. provenance ----

/// Outbox mode (and slot mode without the rights to replication origins,
/// see tests/origin.rs): the engine's writes come back carrying their kept
/// hash. Slot mode with an origin: they do not come back at all.
#[tokio::test]
async fn images_carry_the_kept_hash_of_the_engines_writes_only() {
    for cdc in [CdcMode::Slot, CdcMode::Outbox] {
        let (mut s, url) = fresh(cdc).await;
        let a = contact("c-a", "Ada", "Programmer", 1);
        s.write_batch(std::slice::from_ref(&a)).await.unwrap();
        other_app(
            &url,
            "UPDATE contacts SET job_title = 'Analyst' WHERE contact_id = 'c-a'",
        )
        .await;
        let (changes, _) = drain(&mut s, None).await;
        if cdc == CdcMode::Slot {
            assert_eq!(changes.len(), 1, "own write skipped by its origin");
            let theirs = upserted(&changes[0]);
            assert_eq!(theirs.job_title.as_deref(), Some("Analyst"));
            assert_eq!(theirs.content_hash, None);
            continue;
        }
        assert_eq!(changes.len(), 2, "{cdc:?}");
        let mine = upserted(&changes[0]);
        assert_eq!(mine.content_hash, a.content_hash, "{cdc:?}");
        assert_eq!(
            mine.content_hash.as_deref(),
            Some(content_hash(mine).as_str())
        );
        let theirs = upserted(&changes[1]);
        assert_eq!(theirs.job_title.as_deref(), Some("Analyst"));
        assert_eq!(theirs.content_hash, None, "{cdc:?}");
    }
}

// ---- 4. schema guard ----

#[tokio::test]
async fn a_renamed_column_pauses_the_store_and_is_never_read_as_cleared() {
    for cdc in [CdcMode::Slot, CdcMode::Outbox] {
        let (mut s, url) = fresh(cdc).await;
        s.write_batch(&[contact("c-a", "Ada", "Consultant", 1)])
            .await
            .unwrap();
        let (_, cp) = drain(&mut s, None).await;
        s.acknowledge(cp.as_ref().unwrap()).await.unwrap();
        other_app(
            &url,
            "ALTER TABLE contacts RENAME COLUMN job_title TO title;
             UPDATE contacts SET nickname = 'Countess' WHERE contact_id = 'c-a';",
        )
        .await;
        let e = paused(&mut s, cp.clone()).await;
        assert!(
            e.message.contains("job_title") && e.message.contains("public.contacts"),
            "{e}"
        );
        assert!(e.message.contains("renamed or dropped"), "{e}");
        assert!(e.message.contains("cdc reset supabase"), "{e}");
        // Writes and reads pause too; migrate does not re-create it empty.
        let w = s
            .write_batch(&[contact("c-b", "Bo", "x", 1)])
            .await
            .unwrap_err();
        assert_eq!(w.class, RetryClass::Paused, "{w}");
        s.migrate().await.expect("migrate keeps working");
        let cols: i64 = other(&url)
            .await
            .query_one(
                "SELECT count(*) FROM information_schema.columns WHERE table_name = 'contacts' AND column_name = 'job_title'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(cols, 0, "{cdc:?}: migrate re-created the renamed column");
        // Renamed back: the edits made meanwhile still lack the column.
        other_app(
            &url,
            "ALTER TABLE contacts RENAME COLUMN title TO job_title",
        )
        .await;
        let e = paused(&mut s, cp.clone()).await;
        assert!(e.message.contains("job_title"), "{e}");
        // `cdc reset` skips them (canonical is copied again).
        let cp = s.cdc_reset().await.unwrap();
        other_app(
            &url,
            "UPDATE contacts SET nickname = 'Ada' WHERE contact_id = 'c-a'",
        )
        .await;
        let (changes, _) = drain(&mut s, Some(cp)).await;
        assert_eq!(
            upserted(&changes[0]).job_title.as_deref(),
            Some("Consultant")
        );
    }
}

#[tokio::test]
async fn changes_before_a_lost_column_are_delivered_then_the_store_pauses() {
    let (mut s, url) = fresh(CdcMode::Slot).await;
    other_app(
        &url,
        "INSERT INTO contacts (contact_id, canonical_name, job_title) VALUES ('c-1', 'One', 'Before');
         ALTER TABLE contacts RENAME COLUMN job_title TO title;
         UPDATE contacts SET nickname = 'n' WHERE contact_id = 'c-1';
         ALTER TABLE contacts RENAME COLUMN title TO job_title;",
    )
    .await;
    let b = s
        .read_changes(None, 100)
        .await
        .expect("the change before the rename");
    assert_eq!(b.changes.len(), 1);
    assert_eq!(upserted(&b.changes[0]).job_title.as_deref(), Some("Before"));
    let e = paused(&mut s, Some(b.checkpoint)).await;
    assert!(e.message.contains("job_title"), "{e}");
}

#[tokio::test]
async fn a_table_left_out_of_the_publication_pauses_the_store() {
    let (mut s, url) = fresh(CdcMode::Slot).await;
    other_app(&url, "ALTER PUBLICATION contact_sync DROP TABLE contacts").await;
    let e = paused(&mut s, None).await;
    assert!(
        e.message.contains("publication contact_sync") && e.message.contains("public.contacts"),
        "{e}"
    );
    // migrate adds it back; the changes made meanwhile need a reset.
    s.migrate().await.unwrap();
    let cp = s.cdc_reset().await.unwrap();
    other_app(
        &url,
        "INSERT INTO contacts (contact_id, canonical_name) VALUES ('c-1', 'One')",
    )
    .await;
    assert_eq!(drain(&mut s, Some(cp)).await.0.len(), 1);
}

#[tokio::test]
async fn a_truncate_pauses_the_store() {
    for cdc in [CdcMode::Slot, CdcMode::Outbox] {
        let (mut s, url) = fresh(cdc).await;
        s.write_batch(&[contact("c-a", "Ada", "x", 1)])
            .await
            .unwrap();
        let (_, cp) = drain(&mut s, None).await;
        s.acknowledge(cp.as_ref().unwrap()).await.unwrap();
        other_app(&url, "TRUNCATE contacts").await;
        let e = paused(&mut s, cp).await;
        assert!(
            e.message.contains("truncated") && e.message.contains("public.contacts"),
            "{cdc:?}: {e}"
        );
    }
}

#[tokio::test]
async fn a_dropped_and_re_created_table_pauses_the_store() {
    for cdc in [CdcMode::Slot, CdcMode::Outbox] {
        let (mut s, url) = fresh(cdc).await;
        s.write_batch(&[contact("c-a", "Ada", "x", 1)])
            .await
            .unwrap();
        let (_, cp) = drain(&mut s, None).await;
        s.acknowledge(cp.as_ref().unwrap()).await.unwrap();
        other_app(&url, "DROP TABLE contacts").await;
        let e = paused(&mut s, cp.clone()).await;
        assert!(e.message.contains("no longer exists"), "{cdc:?}: {e}");
        s.migrate().await.expect("migrate creates it again");
        let e = paused(&mut s, cp).await;
        assert!(
            e.message.contains("re-created") && e.message.contains("cdc reset supabase"),
            "{cdc:?}: {e}"
        );
        // `cdc reset` adopts the new table.
        let cp = s.cdc_reset().await.unwrap();
        other_app(
            &url,
            "INSERT INTO contacts (contact_id, canonical_name) VALUES ('c-1', 'One')",
        )
        .await;
        assert_eq!(drain(&mut s, Some(cp)).await.0.len(), 1, "{cdc:?}");
    }
}

// ---- 5. blank ids ----

#[tokio::test]
async fn a_blank_id_row_gets_the_minted_id_in_place() {
    for cdc in [CdcMode::Slot, CdcMode::Outbox] {
        let (mut s, url) = fresh(cdc).await;
        other_app(
            &url,
            "INSERT INTO contacts (contact_id, canonical_name, job_title) VALUES ('', 'Blank', 'Typed by hand')",
        )
        .await;
        let (changes, _) = drain(&mut s, None).await;
        assert_eq!(changes.len(), 1);
        let native = changes[0].native_id.clone();
        let seen = upserted(&changes[0]).clone();
        assert_eq!(seen.contact_id, "");
        // The engine's writeback: the minted id, the row's native id.
        let mut w = seen.clone();
        w.contact_id = "minted-1".into();
        w.external_ids.insert("supabase".into(), native.clone());
        w.version = 2;
        let w = hashed(w);
        let out = write_if(&mut s, vec![w], vec![Expect::Hash(content_hash(&seen))]).await;
        assert_eq!(
            out,
            vec![WriteOutcome::Applied {
                native_id: native.clone()
            }],
            "{cdc:?}"
        );
        assert_eq!(
            count_rows(&url).await,
            1,
            "{cdc:?}: a second row was inserted"
        );
        let row = other(&url)
            .await
            .query_one("SELECT contact_id, id::text, job_title FROM contacts", &[])
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(0), "minted-1");
        assert_eq!(row.get::<_, String>(1), native);
        assert_eq!(row.get::<_, String>(2), "Typed by hand");
    }
}
