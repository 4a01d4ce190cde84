//! Other writers of the canonical table, driven through Google's official
//! Python client (`google-cloud-bigquery`, as analysts and pipelines use
//! it) against the emulator: their edits are never overwritten by a
//! conditional write, and every kind of edit arrives as a change.

mod common;

use common::{python, TestDataset};
use contact_sync_bigquery::BigQueryStore;
use contact_sync_connector::{
    Change, ChangeKind, ChangeSource, Checkpoint, Conditional, Expect, RecordSink, StoreInfo,
    WriteOutcome,
};
use contact_sync_core::{content_hash, Contact};

fn contact(id: &str, name: &str, version: i64) -> Contact {
    let mut c = Contact::new(id, name);
    c.version = version;
    c.last_updated = Some(contact_sync_core::model::now());
    c.notes = Some("from the engine".into());
    c.content_hash = Some(content_hash(&c));
    c
}

async fn read_one(store: &mut BigQueryStore, id: &str) -> Contact {
    store
        .read(&[id.to_string()])
        .await
        .expect("read")
        .pop()
        .unwrap_or_else(|| panic!("{id} is in the table"))
}

/// Reads changes until caught up, acknowledging each batch as the engine
/// does; returns them and the last checkpoint.
async fn drain(store: &mut BigQueryStore, from: Option<Checkpoint>) -> (Vec<Change>, Checkpoint) {
    let mut cp = from;
    let mut all = Vec::new();
    for _ in 0..50 {
        let b = store
            .read_changes(cp.as_ref(), 100)
            .await
            .expect("read_changes");
        store.acknowledge(&b.checkpoint).await.expect("acknowledge");
        let empty = b.changes.is_empty();
        all.extend(b.changes);
        cp = Some(b.checkpoint);
        if empty {
            return (all, cp.expect("checkpoint"));
        }
    }
    panic!("change capture never caught up");
}

fn ids(changes: &[Change]) -> Vec<(String, &'static str)> {
    let mut v: Vec<(String, &'static str)> = changes
        .iter()
        .map(|c| {
            let kind = match &c.kind {
                ChangeKind::Upsert(_) => "upsert",
                ChangeKind::Delete { .. } => "delete",
                ChangeKind::Undecodable { .. } => "undecodable",
            };
            (c.native_id.clone(), kind)
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

#[tokio::test]
async fn an_analyst_update_between_the_engines_read_and_its_merge_is_not_overwritten() {
    let ds = TestDataset::create("cas").await;
    let mut store = ds.store().await;
    assert_eq!(store.conditional_writes(), Conditional::Atomic);
    let seed: Vec<Contact> = (0..4)
        .map(|i| contact(&format!("c{i}"), "Ann", 1))
        .collect();
    store.write_batch(&seed).await.expect("seed");
    // What the engine last saw of each row.
    let seen: Vec<Expect> = seed.iter().map(|c| Expect::Hash(content_hash(c))).collect();

    // c0: edited by an analyst (official client, no version or
    // last_updated bump) after the engine's read, before its MERGE.
    let ds_hook = TestDataset {
        client: ds.client.clone(),
        dataset: ds.dataset.clone(),
    };
    store.set_before_merge_hook(Some(Box::new(move || {
        python(
            &ds_hook,
            "print(run(f\"UPDATE {T} SET notes = 'analyst edit' WHERE contact_id = @id\", id='c0'))",
        );
    })));
    // c1: edited before the write (the hash no longer matches).
    python(
        &ds,
        "run(f\"UPDATE {T} SET job_title = 'CFO' WHERE contact_id = @id\", id='c1')",
    );
    let writes: Vec<Contact> = seed
        .iter()
        .map(|c| {
            let mut w = c.clone();
            w.canonical_name = "Ann Engine".into();
            w.version = 2;
            w.content_hash = Some(content_hash(&w));
            w
        })
        .collect();
    let (outcomes, back) = store
        .write_batch_if(writes.clone(), &seen)
        .await
        .expect("conditional write");
    assert_eq!(back, writes, "the batch comes back");
    store.set_before_merge_hook(None);
    assert_eq!(
        outcomes[0],
        WriteOutcome::Changed,
        "raced in the MERGE window"
    );
    assert_eq!(
        outcomes[1],
        WriteOutcome::Changed,
        "changed before the read"
    );
    assert!(
        matches!(outcomes[2], WriteOutcome::Applied { .. }),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[3], WriteOutcome::Applied { .. }),
        "{outcomes:?}"
    );

    let c0 = read_one(&mut store, "c0").await;
    assert_eq!(c0.notes.as_deref(), Some("analyst edit"), "not overwritten");
    assert_eq!(c0.canonical_name, "Ann");
    let c1 = read_one(&mut store, "c1").await;
    assert_eq!(c1.job_title.as_deref(), Some("CFO"));
    assert_eq!(c1.canonical_name, "Ann");
    assert_eq!(
        read_one(&mut store, "c2").await.canonical_name,
        "Ann Engine"
    );

    // Written again with what the engine now sees, it applies.
    let again = vec![writes[0].clone()];
    let (o, _) = store
        .write_batch_if(again, &[Expect::Hash(content_hash(&c0))])
        .await
        .expect("write");
    assert!(matches!(o[0], WriteOutcome::Applied { .. }), "{o:?}");
    ds.cleanup().await;
}

#[tokio::test]
async fn expect_absent_inserts_only_where_no_live_row_exists() {
    let ds = TestDataset::create("absent").await;
    let mut store = ds.store().await;
    // A pipeline streams a row the engine has not seen.
    python(
        &ds,
        "errs = client.insert_rows_json(DS + '.contacts', [{'contact_id': 'p1', 'canonical_name': 'Pipe', 'version': 1}])\nassert not errs, errs",
    );
    // And another writer inserts one during the engine's write.
    let ds_hook = TestDataset {
        client: ds.client.clone(),
        dataset: ds.dataset.clone(),
    };
    store.set_before_merge_hook(Some(Box::new(move || {
        python(
            &ds_hook,
            "run(f\"INSERT INTO {T} (contact_id, canonical_name, version) VALUES (@id, 'Racer', 1)\", id='r1')",
        );
    })));
    let writes = vec![
        contact("p1", "Engine", 1),
        contact("r1", "Engine", 1),
        contact("n1", "Engine", 1),
    ];
    let (o, _) = store
        .write_batch_if(writes, &[Expect::Absent, Expect::Absent, Expect::Absent])
        .await
        .expect("write");
    store.set_before_merge_hook(None);
    assert_eq!(o[0], WriteOutcome::Changed);
    assert_eq!(o[1], WriteOutcome::Changed, "inserted in the MERGE window");
    assert!(matches!(o[2], WriteOutcome::Applied { .. }), "{o:?}");
    assert_eq!(read_one(&mut store, "p1").await.canonical_name, "Pipe");
    assert_eq!(read_one(&mut store, "r1").await.canonical_name, "Racer");
    assert_eq!(read_one(&mut store, "n1").await.canonical_name, "Engine");
    ds.cleanup().await;
}

#[tokio::test]
async fn duplicate_rows_of_a_contact_are_reported_not_rewritten() {
    let ds = TestDataset::create("dups").await;
    let mut store = ds.store().await;
    let c = contact("d1", "Dee", 1);
    store
        .write_batch(std::slice::from_ref(&c))
        .await
        .expect("seed");
    python(
        &ds,
        "run(f\"INSERT INTO {T} (contact_id, canonical_name, version) VALUES (@id, 'Dee copy', 1)\", id='d1')",
    );
    let mut w = c.clone();
    w.canonical_name = "Dee Engine".into();
    w.version = 2;
    let (o, _) = store
        .write_batch_if(vec![w], &[Expect::Hash(content_hash(&c))])
        .await
        .expect("write");
    match &o[0] {
        WriteOutcome::Rejected { field, reason } => {
            assert_eq!(field, "contact_id");
            assert!(reason.contains("2 rows"), "{reason}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    let names: Vec<String> = store
        .read(&["d1".into()])
        .await
        .expect("read")
        .into_iter()
        .map(|c| c.canonical_name)
        .collect();
    assert!(!names.contains(&"Dee Engine".to_string()), "{names:?}");
    ds.cleanup().await;
}

#[tokio::test]
async fn every_kind_of_edit_through_the_official_client_arrives_as_a_change() {
    let ds = TestDataset::create("writers").await;
    let mut store = ds.store().await;
    let seed: Vec<Contact> = ["u1", "u2", "u3", "u4"]
        .iter()
        .map(|id| contact(id, "Seed", 1))
        .collect();
    store.write_batch(&seed).await.expect("seed");
    let (first, cp) = drain(&mut store, None).await;
    assert_eq!(ids(&first).len(), 4, "{:?}", ids(&first));
    let (none, cp) = drain(&mut store, Some(cp)).await;
    assert!(none.is_empty(), "caught up: {:?}", ids(&none));

    python(
        &ds,
        r#"
# 1. DML UPDATE that leaves version and last_updated alone.
run(f"UPDATE {T} SET notes = 'no bump' WHERE contact_id = @id", id='u1')
# 2. Back-dated: last_updated set to last year.
run(f"UPDATE {T} SET notes = 'back-dated', last_updated = TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 400 DAY) WHERE contact_id = @id", id='u2')
# 3. DML INSERT without last_updated.
run(f"INSERT INTO {T} (contact_id, canonical_name, version) VALUES (@id, 'Inserted', 1)", id='i1')
# 4. Streaming insert (insertAll) without last_updated.
errs = client.insert_rows_json(DS + '.contacts', [{'contact_id': 's1', 'canonical_name': 'Streamed', 'version': 1}])
assert not errs, errs
# 5. A load job.
job = client.load_table_from_json([{'contact_id': 'l1', 'canonical_name': 'Loaded', 'version': 1}], DS + '.contacts',
    job_config=bigquery.LoadJobConfig(write_disposition='WRITE_APPEND'))
job.result()
# 6. A hard DELETE.
run(f"DELETE FROM {T} WHERE contact_id = @id", id='u3')
"#,
    );
    let (changes, cp) = drain(&mut store, Some(cp)).await;
    assert_eq!(
        ids(&changes),
        vec![
            ("i1".to_string(), "upsert"),
            ("l1".to_string(), "upsert"),
            ("s1".to_string(), "upsert"),
            ("u1".to_string(), "upsert"),
            ("u2".to_string(), "upsert"),
            ("u3".to_string(), "delete"),
        ]
    );
    let u1 = changes
        .iter()
        .find_map(|c| match &c.kind {
            ChangeKind::Upsert(x) if x.contact_id == "u1" => Some(x.clone()),
            _ => None,
        })
        .expect("u1");
    assert_eq!(u1.notes.as_deref(), Some("no bump"), "the row as it is now");
    match &changes
        .iter()
        .find(|c| c.native_id == "u3")
        .expect("u3")
        .kind
    {
        ChangeKind::Delete { contact_id } => assert_eq!(contact_id.as_deref(), Some("u3")),
        other => panic!("{other:?}"),
    }
    // Each once: nothing more once acknowledged.
    let (none, _) = drain(&mut store, Some(cp)).await;
    assert!(none.is_empty(), "{:?}", ids(&none));
    ds.cleanup().await;
}

#[tokio::test]
async fn a_row_stamped_in_the_future_does_not_blind_capture() {
    let ds = TestDataset::create("future").await;
    let mut store = ds.store().await;
    store
        .write_batch(&[contact("f1", "Fay", 1), contact("f2", "Gus", 1)])
        .await
        .expect("seed");
    let (_, cp) = drain(&mut store, None).await;
    // A skewed writer stamps f1 two hours ahead.
    python(
        &ds,
        "run(f\"UPDATE {T} SET notes = 'skewed', last_updated = TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL 2 HOUR) WHERE contact_id = @id\", id='f1')",
    );
    let (c1, cp) = drain(&mut store, Some(cp)).await;
    assert_eq!(
        ids(&c1),
        vec![("f1".to_string(), "upsert")],
        "found by the sweep"
    );
    assert!(cp.as_str().len() < 200, "bounded checkpoint: {cp}");
    // A later, careful edit of another row is still seen.
    python(
        &ds,
        "run(f\"UPDATE {T} SET notes = 'careful', version = version + 1, last_updated = CURRENT_TIMESTAMP() WHERE contact_id = @id\", id='f2')",
    );
    let (c2, _) = drain(&mut store, Some(cp)).await;
    assert_eq!(ids(&c2), vec![("f2".to_string(), "upsert")]);
    ds.cleanup().await;
}

#[tokio::test]
async fn an_idle_table_costs_no_query() {
    let ds = TestDataset::create("idle").await;
    let mut cfg = ds.config();
    cfg.idle_check = true;
    BigQueryStore::migrate(&ds.client, &cfg)
        .await
        .expect("migrate");
    let mut store = BigQueryStore::open(ds.client.clone(), cfg)
        .await
        .expect("open");
    store
        .write_batch(&[contact("a1", "Ida", 1)])
        .await
        .expect("seed");
    let (_, cp) = drain(&mut store, None).await;
    let before = store.usage();
    for _ in 0..3 {
        let b = store.read_changes(Some(&cp), 100).await.expect("poll");
        assert!(b.changes.is_empty());
        assert_eq!(b.checkpoint, cp);
    }
    let after = store.usage();
    assert_eq!(after.queries, before.queries, "no query job while idle");
    assert_eq!(
        after.capture.idle_polls_skipped,
        before.capture.idle_polls_skipped + 3
    );
    // A streamed row changes the table's metadata: the next poll looks.
    python(
        &ds,
        "errs = client.insert_rows_json(DS + '.contacts', [{'contact_id': 'a2', 'canonical_name': 'New', 'version': 1}])\nassert not errs, errs",
    );
    let (c, _) = drain(&mut store, Some(cp)).await;
    assert_eq!(ids(&c), vec![("a2".to_string(), "upsert")]);
    ds.cleanup().await;
}

/// The soak benchmark's finding (issue 15): the sweep ran only when the
/// fast path was caught up, which a steady stream of bumped edits never
/// allowed, so unbumped edits and hard deletes waited 20 minutes. Here a
/// pipeline bumps a row before every poll (every batch has changes: never
/// caught up) while an analyst makes an unbumped UPDATE and a hard DELETE
/// through the official client; both arrive within `sweep_interval` plus
/// one polling round.
#[tokio::test]
async fn unbumped_edits_and_hard_deletes_arrive_within_the_sweep_interval_under_steady_load() {
    let ds = TestDataset::create("starve").await;
    let interval = std::time::Duration::from_secs(4);
    let mut cfg = ds.config();
    cfg.sweep_every = Some(3);
    cfg.sweep_interval = Some(interval);
    BigQueryStore::migrate(&ds.client, &cfg)
        .await
        .expect("migrate");
    let mut store = BigQueryStore::open(ds.client.clone(), cfg.clone())
        .await
        .expect("open");
    // The pipeline writes through a store of its own (no sweep).
    let mut wcfg = cfg.clone();
    wcfg.sweep_every = None;
    let mut pipeline = BigQueryStore::open(ds.client.clone(), wcfg)
        .await
        .expect("open the pipeline's store");
    let mut hot = contact("hot", "Busy", 1);
    pipeline
        .write_batch(&[
            hot.clone(),
            contact("u1", "Una", 1),
            contact("d1", "Dan", 1),
        ])
        .await
        .expect("seed");
    let (_, mut cp) = drain(&mut store, None).await;

    let start = std::time::Instant::now();
    let deadline = interval + std::time::Duration::from_secs(90);
    let mut edited_at: Option<std::time::Instant> = None;
    let mut longest_round = std::time::Duration::ZERO;
    let (mut got_update, mut got_delete) = (None, None);
    let sweeps_before = store.usage().capture.sweeps;
    let mut round = 0;
    while got_update.is_none() || got_delete.is_none() {
        assert!(
            start.elapsed() < deadline,
            "not arrived within {deadline:?}: update {got_update:?}, delete {got_delete:?}"
        );
        let t = std::time::Instant::now();
        round += 1;
        hot.version += 1;
        hot.notes = Some(format!("bump {round}"));
        hot.last_updated = Some(contact_sync_core::model::now());
        pipeline
            .write_batch(std::slice::from_ref(&hot))
            .await
            .expect("bump");
        if round == 2 {
            python(
                &ds,
                "run(f\"UPDATE {T} SET notes = 'unbumped' WHERE contact_id = @id\", id='u1')\n\
                 run(f\"DELETE FROM {T} WHERE contact_id = @id\", id='d1')",
            );
            edited_at = Some(std::time::Instant::now());
        }
        let b = store.read_changes(Some(&cp), 100).await.expect("poll");
        store.acknowledge(&b.checkpoint).await.expect("acknowledge");
        assert!(!b.changes.is_empty(), "round {round}: never caught up");
        for c in &b.changes {
            match (&c.kind, c.native_id.as_str()) {
                (ChangeKind::Upsert(x), "u1") if x.notes.as_deref() == Some("unbumped") => {
                    got_update = edited_at.map(|e| e.elapsed())
                }
                (ChangeKind::Delete { .. }, "d1") => got_delete = edited_at.map(|e| e.elapsed()),
                _ => {}
            }
        }
        cp = b.checkpoint;
        longest_round = longest_round.max(t.elapsed());
    }
    let bound = interval + 2 * longest_round;
    let (u, d) = (got_update.unwrap(), got_delete.unwrap());
    assert!(
        u <= bound && d <= bound,
        "update after {u:?}, delete after {d:?}; bound {bound:?}"
    );
    assert!(
        store.usage().capture.sweeps > sweeps_before,
        "a sweep ran under load"
    );
    ds.cleanup().await;
}

/// A bulk UPDATE gives every row it touches the same `last_updated`
/// (`CURRENT_TIMESTAMP()` is the statement's time): 250 rows read in pages
/// of 100, each once, with a checkpoint of fixed size (before: a `seen`
/// set of every key at the watermark, re-sent on every idle poll).
#[tokio::test]
async fn a_bulk_update_giving_many_rows_one_timestamp_is_paged_with_a_bounded_checkpoint() {
    let ds = TestDataset::create("bulk").await;
    let mut store = ds.store().await;
    let seed: Vec<Contact> = (0..250)
        .map(|i| contact(&format!("b{i:03}"), "Bulk", 1))
        .collect();
    for chunk in seed.chunks(100) {
        store.write_batch(chunk).await.expect("seed");
    }
    let (_, mut cp) = drain(&mut store, None).await;
    python(
        &ds,
        "print(run(f\"UPDATE {T} SET job_title = 'bulk', version = version + 1, last_updated = CURRENT_TIMESTAMP() WHERE TRUE\"))",
    );
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    let mut batches = 0;
    loop {
        let b = store.read_changes(Some(&cp), 100).await.expect("poll");
        store.acknowledge(&b.checkpoint).await.expect("acknowledge");
        assert!(
            b.checkpoint.as_str().len() < 100,
            "bounded checkpoint: {}",
            b.checkpoint
        );
        assert!(b.changes.len() <= 100);
        cp = b.checkpoint;
        if b.changes.is_empty() {
            break;
        }
        batches += 1;
        assert!(batches < 10, "never caught up");
        for c in b.changes {
            match &c.kind {
                ChangeKind::Upsert(x) => assert_eq!(x.job_title.as_deref(), Some("bulk")),
                other => panic!("{other:?}"),
            }
            *seen.entry(c.native_id).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 250, "every row");
    assert!(seen.values().all(|n| *n == 1), "each once: {seen:?}");
    assert!(batches >= 3, "in pages: {batches}");
    // Caught up: polling again delivers nothing and keeps the checkpoint.
    let b = store.read_changes(Some(&cp), 100).await.expect("poll");
    assert!(b.changes.is_empty());
    assert_eq!(b.checkpoint, cp);
    ds.cleanup().await;
}
