//! The Postgres store against a real PostgreSQL, through the store traits.

use std::time::Duration;

use contact_sync_connector::{
    Change, ChangeKind, ChangeSource, Checkpoint, RecordSink, StoreInfo, WriteOutcome,
};
use contact_sync_core::model::{parse_ts, ALL_FIELDS};
use contact_sync_core::{Contact, Email, Phone};
use contact_sync_postgres::harness::{self, ClusterOptions, PgCluster};
use contact_sync_postgres::{CdcMode, PgConfig, PgStore};
use serde_json::json;
use tokio_postgres::NoTls;

/// Slots are cluster-wide: one per test database.
fn cfg_for(url: &str) -> PgConfig {
    let mut cfg = PgConfig::new("supabase", url);
    cfg.slot_name = url.rsplit('/').next().unwrap().to_string();
    cfg
}

async fn new_store(url: &str, cdc: CdcMode) -> PgStore {
    let mut cfg = cfg_for(url);
    cfg.cdc = cdc;
    let mut s = PgStore::connect(cfg).await.expect("connect");
    s.migrate().await.expect("migrate");
    s
}

async fn fresh(cdc: CdcMode) -> (PgStore, String) {
    let url = harness::shared().create_database().await;
    (new_store(&url, cdc).await, url)
}

/// Runs SQL as "another app" on its own connection.
async fn other_app(url: &str, sql: &str) {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect other app");
    let task = tokio::spawn(conn);
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    drop(client);
    let _ = task.await;
}

/// Reads every change after `from` in pages of `page`.
async fn drain(
    s: &mut PgStore,
    from: Option<Checkpoint>,
    page: usize,
) -> (Vec<Change>, Option<Checkpoint>) {
    let mut cp = from;
    let mut all = Vec::new();
    loop {
        let b = s
            .read_changes(cp.as_ref(), page)
            .await
            .expect("read_changes");
        assert!(b.changes.len() <= page);
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

fn full_contact(id: &str) -> Contact {
    let mut c = Contact::new(id, "Ada Lovelace");
    c.external_ids.insert("twenty".into(), "p-1".into());
    c.display_name = Some("Ada".into());
    c.first_name = Some("Ada".into());
    c.middle_name = Some("King".into());
    c.last_name = Some("Lovelace".into());
    c.name_prefix = Some("Countess".into());
    c.name_suffix = Some("I".into());
    c.nickname = Some("Enchantress of Numbers".into());
    c.phonetic_name = Some("AY-duh".into());
    c.organization = Some("Analytical Engine Ltd".into());
    c.job_title = Some("Programmer".into());
    c.department = Some("R&D".into());
    c.category_code = Some("G".into());
    c.subcategory_code = Some("G1".into());
    c.relationship_label = Some("colleague".into());
    c.notes = Some("Tab\there, newline\nthere, quote ' \" and backslash \\ and ünïcödé".into());
    c.tags = vec!["math".into(), "poetry".into()];
    c.source = Some("import".into());
    c.created_at = parse_ts("2020-02-03T04:05:06.123456Z");
    c.llm_context = Some(
        json!({"relationship_arc": "long", "closeness_level": 8, "key_interests": ["engines"]}),
    );
    c.relationships = Some(json!([{"contact_id": "c-babbage", "relation": "mentor"}]));
    c.communication_stats = Some(json!({"messages": 12}));
    c.social_profiles = Some(json!({"github": "ada"}));
    c.custom_attributes = Some(json!({"favourite": "bernoulli"}));
    c.emails = vec![Email {
        address: "ada@example.com".into(),
        label: Some("work".into()),
        is_primary: true,
    }];
    c.phones = vec![Phone {
        number: "+442071234567".into(),
        label: None,
        is_primary: true,
    }];
    c.version = 3;
    c.last_updated = parse_ts("2024-05-06T07:08:09.654321Z");
    c.last_updated_by = Some("canonical".into());
    c.deleted_at = None;
    c.content_hash = Some("abc123".into());
    c
}

#[tokio::test]
async fn migrate_is_idempotent_and_creates_the_design_schema() {
    let (mut s, url) = fresh(CdcMode::Slot).await;
    s.migrate().await.expect("second migrate");
    s.migrate().await.expect("third migrate");
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(conn);
    let rows = client
        .query(
            "SELECT column_name::text, data_type::text FROM information_schema.columns WHERE table_name = 'contacts'",
            &[],
        )
        .await
        .unwrap();
    let types: std::collections::HashMap<String, String> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for f in ALL_FIELDS {
        assert!(types.contains_key(*f), "column {f} missing");
    }
    assert_eq!(types["id"], "uuid");
    assert_eq!(types["llm_context"], "jsonb");
    assert_eq!(types["tags"], "jsonb");
    assert_eq!(types["emails"], "jsonb");
    assert_eq!(types["created_at"], "timestamp with time zone");
    assert_eq!(types["version"], "bigint");
    assert!(types.contains_key("updated_at"));
    let slots: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 1);
    // updated_at is maintained by the trigger.
    client
        .batch_execute("INSERT INTO contacts (contact_id, canonical_name, updated_at) VALUES ('u1', 'U', '2000-01-01')")
        .await
        .unwrap();
    let fresh: bool = client
        .query_one(
            "SELECT updated_at > now() - interval '1 hour' FROM contacts WHERE contact_id = 'u1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(fresh);
    assert_eq!(s.name(), "supabase");
    assert!(s.keeps_version());
}

#[tokio::test]
async fn round_trip_of_all_33_fields() {
    let (mut s, _) = fresh(CdcMode::Slot).await;
    let mut c = full_contact("c-ada");
    let out = s.write_batch(std::slice::from_ref(&c)).await.unwrap();
    assert!(
        matches!(&out[0], WriteOutcome::Applied { native_id } if native_id.len() == 36),
        "{out:?}"
    );
    c.normalize();
    let back = s.read(&["c-ada".to_string()]).await.unwrap();
    assert_eq!(back, vec![c.clone()]);
    // Every one of the 33 fields is set (none left at its default) and survives.
    let v = serde_json::to_value(&back[0]).unwrap();
    for f in ALL_FIELDS {
        if *f != "deleted_at" {
            assert!(!v[*f].is_null(), "{f} did not round-trip");
        }
    }
    // Same write again: idempotent.
    let out = s.write_batch(std::slice::from_ref(&c)).await.unwrap();
    assert!(matches!(out[0], WriteOutcome::Applied { .. }));
    assert_eq!(s.count().await.unwrap(), 1);
    let found = s
        .find_by_identity(&["ADA@example.com".into()], &[])
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    let found = s
        .find_by_identity(&[], &["+442071234567".into()])
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert!(s
        .find_by_identity(&["nobody@example.com".into()], &[])
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn version_guard_and_in_batch_order() {
    let (mut s, _) = fresh(CdcMode::Slot).await;
    let mut c = Contact::new("c1", "Version Five");
    c.version = 5;
    s.write_batch(&[c.clone()]).await.unwrap();
    let mut older = Contact::new("c1", "Version Four");
    older.version = 4;
    let out = s.write_batch(&[older]).await.unwrap();
    assert_eq!(out, vec![WriteOutcome::Stale { stored_version: 5 }]);
    assert_eq!(
        s.read(&["c1".into()]).await.unwrap()[0].canonical_name,
        "Version Five"
    );
    // Equal version applies; in one batch the writes apply in order.
    let mut same = Contact::new("c1", "Also Five");
    same.version = 5;
    let mut six = Contact::new("c1", "Six");
    six.version = 6;
    let mut three = Contact::new("c1", "Three");
    three.version = 3;
    let out = s.write_batch(&[same, six, three]).await.unwrap();
    assert!(matches!(out[0], WriteOutcome::Applied { .. }));
    assert!(matches!(out[1], WriteOutcome::Applied { .. }));
    assert_eq!(out[2], WriteOutcome::Stale { stored_version: 6 });
    let back = &s.read(&["c1".into()]).await.unwrap()[0];
    assert_eq!((back.canonical_name.as_str(), back.version), ("Six", 6));
    // A record without contact_id is rejected, the rest applies.
    let out = s
        .write_batch(&[Contact::new("", "No Id"), Contact::new("c2", "Two")])
        .await
        .unwrap();
    assert!(matches!(&out[0], WriteOutcome::Rejected { field, .. } if field == "contact_id"));
    assert!(matches!(out[1], WriteOutcome::Applied { .. }));
}

#[tokio::test]
async fn tombstones_are_rows_with_deleted_at() {
    let (mut s, _) = fresh(CdcMode::Slot).await;
    s.write_batch(&[
        Contact::new("a", "A"),
        Contact::new("b", "B"),
        Contact::new("c", "C"),
    ])
    .await
    .unwrap();
    let mut dead = Contact::new("b", "B");
    dead.version = 2;
    dead.deleted_at = parse_ts("2024-01-01T00:00:00Z");
    s.write_batch(&[dead.clone()]).await.unwrap();
    assert_eq!(s.count().await.unwrap(), 2);
    let back = s.read(&["b".into()]).await.unwrap();
    assert_eq!(back[0].deleted_at, dead.deleted_at);
    let all = s.scan(None, 10).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|c| c.contact_id.as_str())
            .collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    let page = s.scan(Some("a"), 1).await.unwrap();
    assert_eq!(page[0].contact_id, "b");
    assert!(s.find_by_identity(&[], &[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn other_apps_changes_come_in_commit_order_with_images() {
    let (mut s, url) = fresh(CdcMode::Slot).await;
    other_app(
        &url,
        "INSERT INTO contacts (contact_id, canonical_name, tags, emails) VALUES ('x1', 'Xavier', '[\"a\"]', '[{\"address\":\"X@Example.com\",\"is_primary\":true}]');
         INSERT INTO contacts (contact_id, canonical_name) VALUES ('x2', 'Yolanda');
         UPDATE contacts SET canonical_name = 'Xavier II', version = 2 WHERE contact_id = 'x1';
         BEGIN; UPDATE contacts SET notes = 'n' WHERE contact_id = 'x2'; DELETE FROM contacts WHERE contact_id = 'x1'; COMMIT;",
    )
    .await;
    let (changes, cp) = drain(&mut s, None, 2).await;
    assert_eq!(changes.len(), 5, "{changes:#?}");
    let c0 = upserted(&changes[0]);
    assert_eq!(
        (c0.contact_id.as_str(), c0.canonical_name.as_str()),
        ("x1", "Xavier")
    );
    assert_eq!(c0.tags, vec!["a".to_string()]);
    assert_eq!(c0.emails[0].address, "x@example.com", "normalized");
    assert_eq!(upserted(&changes[1]).contact_id, "x2");
    let c2 = upserted(&changes[2]);
    assert_eq!((c2.canonical_name.as_str(), c2.version), ("Xavier II", 2));
    assert_eq!(upserted(&changes[3]).notes.as_deref(), Some("n"));
    assert_eq!(
        changes[4].kind,
        ChangeKind::Delete {
            contact_id: Some("x1".into())
        }
    );
    assert_eq!(
        changes[4].native_id, changes[0].native_id,
        "native id is the row uuid"
    );
    // Nothing after the last checkpoint; reading again from it is empty
    // (the position may move on past WAL with nothing of ours in it).
    let b = s.read_changes(cp.as_ref(), 10).await.unwrap();
    assert!(b.changes.is_empty() && !b.has_more);
    let lsn = |c: &Checkpoint| {
        contact_sync_postgres::pgoutput::Lsn::parse(c.as_str().split(':').next().unwrap()).unwrap()
    };
    assert!(lsn(&b.checkpoint) >= lsn(cp.as_ref().unwrap()));
}

#[tokio::test]
async fn acknowledged_changes_never_come_back_and_unacknowledged_do() {
    let (mut s, url) = fresh(CdcMode::Slot).await;
    other_app(
        &url,
        "INSERT INTO contacts (contact_id, canonical_name) VALUES ('a', 'A');",
    )
    .await;
    let b1 = s.read_changes(None, 10).await.unwrap();
    assert_eq!(b1.changes.len(), 1);
    other_app(
        &url,
        "INSERT INTO contacts (contact_id, canonical_name) VALUES ('b', 'B');",
    )
    .await;
    // "Crash" between apply and slot advance: reconnect, read again from the
    // stored (older) checkpoint → the same changes, nothing lost.
    drop(s);
    let mut s = new_store(&url, CdcMode::Slot).await;
    let again = s.read_changes(None, 10).await.unwrap();
    assert_eq!(again.changes.len(), 2);
    assert_eq!(again.changes[0], b1.changes[0]);
    s.acknowledge(&b1.checkpoint).await.unwrap();
    s.acknowledge(&b1.checkpoint).await.unwrap(); // idempotent
                                                  // Replay from an older checkpoint (or none) returns nothing acknowledged.
    let replay = s.read_changes(None, 10).await.unwrap();
    assert_eq!(replay.changes.len(), 1);
    assert_eq!(upserted(&replay.changes[0]).contact_id, "b");
    s.acknowledge(&replay.checkpoint).await.unwrap();
    s.acknowledge(&b1.checkpoint).await.unwrap(); // older: no-op
    let none = s.read_changes(Some(&b1.checkpoint), 10).await.unwrap();
    assert!(none.changes.is_empty());
    let health = s.slot_health().await.unwrap();
    assert!(health.exists && health.wal_level == "logical");
    assert!(health.retained_wal_bytes.is_some());
}

/// The engine's writes carry the store's replication origin: the slot
/// delivers nothing for them and its position moves past them.
#[tokio::test]
async fn our_own_writes_are_skipped_by_the_slot() {
    let (mut s, _) = fresh(CdcMode::Slot).await;
    let c = full_contact("own");
    s.write_batch(std::slice::from_ref(&c)).await.unwrap();
    let b = s.read_changes(None, 10).await.expect("read");
    assert!(b.changes.is_empty(), "{:?}", b.changes);
    assert!(!b.has_more);
    let again = s.read_changes(Some(&b.checkpoint), 10).await.expect("read");
    assert!(again.changes.is_empty());
}

#[tokio::test]
async fn a_thousand_changes_while_down_are_delivered_once() {
    let (s, url) = fresh(CdcMode::Slot).await;
    drop(s);
    let mut sql = String::new();
    for i in 0..1000 {
        sql.push_str(&format!(
            "INSERT INTO contacts (contact_id, canonical_name) VALUES ('d{i:04}', 'Down {i}');\n"
        ));
    }
    sql.push_str("BEGIN; UPDATE contacts SET notes = 'bulk' WHERE contact_id < 'd0100'; COMMIT;");
    other_app(&url, &sql).await;
    let mut s = new_store(&url, CdcMode::Slot).await;
    let mut cp: Option<Checkpoint> = None;
    let mut seen = Vec::new();
    loop {
        let b = s.read_changes(cp.as_ref(), 64).await.unwrap();
        seen.extend(
            b.changes
                .iter()
                .map(|c| (upserted(c).contact_id.clone(), upserted(c).notes.clone())),
        );
        s.acknowledge(&b.checkpoint).await.unwrap();
        cp = Some(b.checkpoint);
        if !b.has_more {
            break;
        }
    }
    assert_eq!(seen.len(), 1100);
    for (i, (id, notes)) in seen.iter().take(1000).enumerate() {
        assert_eq!(id, &format!("d{i:04}"));
        assert!(notes.is_none());
    }
    assert!(seen[1000..]
        .iter()
        .all(|(_, n)| n.as_deref() == Some("bulk")));
    let mut ids: Vec<&String> = seen[1000..].iter().map(|(i, _)| i).collect();
    ids.dedup();
    assert_eq!(ids.len(), 100);
    // A new reader after all acknowledgements sees nothing again.
    drop(s);
    let mut s = new_store(&url, CdcMode::Slot).await;
    assert!(s.read_changes(None, 100).await.unwrap().changes.is_empty());
}

#[tokio::test]
async fn changes_across_a_postgres_restart_are_all_delivered() {
    let cluster = PgCluster::start(ClusterOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let url = cluster.server().create_database().await;
    let s = new_store(&url, CdcMode::Slot).await;
    drop(s);
    other_app(
        &url,
        "INSERT INTO contacts (contact_id, canonical_name) VALUES ('r1', 'Before');",
    )
    .await;
    cluster.restart().unwrap();
    other_app(&url, "INSERT INTO contacts (contact_id, canonical_name) VALUES ('r2', 'After');
                     UPDATE contacts SET canonical_name = 'Before, edited' WHERE contact_id = 'r1';")
        .await;
    cluster.restart().unwrap();
    let mut s = new_store(&url, CdcMode::Slot).await;
    let (changes, _) = drain(&mut s, None, 10).await;
    let names: Vec<&str> = changes
        .iter()
        .map(|c| upserted(c).canonical_name.as_str())
        .collect();
    assert_eq!(names, ["Before", "After", "Before, edited"]);
}

#[tokio::test]
async fn broken_json_in_a_text_column_is_undecodable_with_row_and_field() {
    let (mut s, url) = fresh(CdcMode::Slot).await;
    // A user's table keeps llm_context as TEXT.
    other_app(
        &url,
        "ALTER TABLE contacts ALTER COLUMN llm_context TYPE text;",
    )
    .await;
    drop(s);
    let mut s2 = new_store(&url, CdcMode::Slot).await;
    other_app(
        &url,
        "INSERT INTO contacts (contact_id, canonical_name, llm_context) VALUES ('bad', 'Bad', '{\"closeness_level\": 3');
         INSERT INTO contacts (contact_id, canonical_name, llm_context) VALUES ('good', 'Good', '{\"closeness_level\": 3}');",
    )
    .await;
    let (changes, _) = drain(&mut s2, None, 10).await;
    assert_eq!(changes.len(), 2);
    match &changes[0].kind {
        ChangeKind::Undecodable { invalid, payload } => {
            assert_eq!(invalid.field, "llm_context");
            assert_eq!(invalid.record, "bad");
            assert!(
                invalid.reason.contains(&changes[0].native_id),
                "{}",
                invalid.reason
            );
            assert_eq!(payload.as_ref().unwrap()["canonical_name"], "Bad");
        }
        other => panic!("expected undecodable, got {other:?}"),
    }
    assert_eq!(
        upserted(&changes[1]).llm_context,
        Some(json!({"closeness_level": 3}))
    );
    // Our writes into the TEXT column round-trip too.
    let mut c = Contact::new("mine", "Mine");
    c.llm_context = Some(json!({"a": [1, 2]}));
    s2.write_batch(std::slice::from_ref(&c)).await.unwrap();
    assert_eq!(
        s2.read(&["mine".into()]).await.unwrap()[0].llm_context,
        c.llm_context
    );
    // Drift's scan names the broken row (issue 13, observation 7).
    let scan = s2.scan_hashes_checked(None, 10).await.unwrap();
    assert_eq!(scan.unreadable.len(), 1, "{scan:?}");
    assert_eq!(scan.unreadable[0].contact_id, "bad");
    assert_eq!(scan.unreadable[0].invalid.field, "llm_context");
    assert!(scan.hashes.iter().any(|h| h.contact_id == "good"));
    assert!(!scan.hashes.iter().any(|h| h.contact_id == "bad"));
    s = s2;
    let _ = s.count().await.unwrap();
}

#[tokio::test]
async fn wal_level_replica_gives_a_clear_error() {
    let cluster = PgCluster::start(ClusterOptions {
        wal_level: "replica".into(),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let url = cluster.server().create_database().await;
    let mut s = PgStore::connect(cfg_for(&url)).await.unwrap();
    let err = s.migrate().await.unwrap_err();
    assert!(err.message.contains("wal_level"), "{err}");
    assert!(!err.is_transient());
    let err = s.read_changes(None, 10).await.unwrap_err();
    assert!(err.message.contains("wal_level"), "{err}");
    // Outbox mode works on the same server.
    let mut cfg = cfg_for(&url);
    cfg.cdc = CdcMode::Outbox;
    let mut s = PgStore::connect(cfg).await.unwrap();
    s.migrate().await.unwrap();
    s.write_batch(&[Contact::new("o", "O")]).await.unwrap();
    assert_eq!(s.read_changes(None, 10).await.unwrap().changes.len(), 1);
}

#[tokio::test]
async fn outbox_mode_works_the_same() {
    let (mut s, url) = fresh(CdcMode::Outbox).await;
    s.migrate().await.unwrap();
    other_app(
        &url,
        "INSERT INTO contacts (contact_id, canonical_name, tags, created_at) VALUES ('x1', 'Xavier', '[\"a\"]', '2020-01-01 10:00:00.5+02');
         INSERT INTO contacts (contact_id, canonical_name, llm_context) VALUES ('x2', 'Yolanda', '\"just a string\"');
         UPDATE contacts SET canonical_name = 'Xavier II' WHERE contact_id = 'x1';
         DELETE FROM contacts WHERE contact_id = 'x2';",
    )
    .await;
    let b1 = s.read_changes(None, 2).await.unwrap();
    assert_eq!(b1.changes.len(), 2);
    assert!(b1.has_more);
    let c0 = upserted(&b1.changes[0]);
    assert_eq!(c0.tags, vec!["a".to_string()]);
    assert_eq!(c0.created_at, parse_ts("2020-01-01T08:00:00.5Z"));
    assert_eq!(
        upserted(&b1.changes[1]).llm_context,
        Some(json!("just a string"))
    );
    // Not acknowledged: read again from the start → same changes.
    let again = s.read_changes(None, 2).await.unwrap();
    assert_eq!(again.changes, b1.changes);
    s.acknowledge(&b1.checkpoint).await.unwrap();
    let b2 = s.read_changes(None, 10).await.unwrap();
    assert_eq!(b2.changes.len(), 2);
    assert_eq!(upserted(&b2.changes[0]).canonical_name, "Xavier II");
    assert_eq!(
        b2.changes[1].kind,
        ChangeKind::Delete {
            contact_id: Some("x2".into())
        }
    );
    s.acknowledge(&b2.checkpoint).await.unwrap();
    assert!(s
        .read_changes(Some(&b2.checkpoint), 10)
        .await
        .unwrap()
        .changes
        .is_empty());
    assert_eq!(s.slot_health().await.unwrap().outbox_pending, Some(0));
    // Broken JSON in a TEXT column, outbox flavour.
    other_app(
        &url,
        "ALTER TABLE contacts ALTER COLUMN custom_attributes TYPE text;",
    )
    .await;
    let mut s = new_store(&url, CdcMode::Outbox).await;
    other_app(&url, "INSERT INTO contacts (contact_id, canonical_name, custom_attributes) VALUES ('b', 'B', '{oops');").await;
    let b = s.read_changes(Some(&b2.checkpoint), 10).await.unwrap();
    match &b.changes[0].kind {
        ChangeKind::Undecodable { invalid, .. } => assert_eq!(invalid.field, "custom_attributes"),
        other => panic!("expected undecodable, got {other:?}"),
    }
}

#[tokio::test]
async fn cdc_reset_recreates_the_slot() {
    let (mut s, url) = fresh(CdcMode::Slot).await;
    other_app(
        &url,
        "INSERT INTO contacts (contact_id, canonical_name) VALUES ('a', 'A');",
    )
    .await;
    let cp = s.cdc_reset().await.unwrap();
    assert!(s.read_changes(None, 10).await.unwrap().changes.is_empty());
    other_app(
        &url,
        "INSERT INTO contacts (contact_id, canonical_name) VALUES ('b', 'B');",
    )
    .await;
    let b = s.read_changes(Some(&cp), 10).await.unwrap();
    assert_eq!(b.changes.len(), 1);
}

#[tokio::test]
async fn notifier_wakes_on_a_commit() {
    let (s, url) = fresh(CdcMode::Slot).await;
    let wake = s.change_notifier().await.unwrap();
    assert!(wake.is_listening());
    other_app(
        &url,
        "INSERT INTO contacts (contact_id, canonical_name) VALUES ('n', 'N');",
    )
    .await;
    tokio::time::timeout(Duration::from_secs(30), wake.wait())
        .await
        .expect("no wake-up within 30 s of a commit");
}

/// `c` normalized, carrying its content hash (as the engine writes it).
fn hashed(mut c: Contact) -> Contact {
    c.normalize();
    c.content_hash = Some(contact_sync_core::content_hash(&c));
    c
}

/// A value of `contact_id`'s row (`expr` over its columns), read by
/// another connection.
async fn stored<T: for<'a> tokio_postgres::types::FromSql<'a>>(
    url: &str,
    contact_id: &str,
    expr: &str,
) -> T {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    let task = tokio::spawn(conn);
    let v = client
        .query_one(
            &format!("SELECT {expr} FROM contacts WHERE contact_id = $1"),
            &[&contact_id],
        )
        .await
        .unwrap()
        .get(0);
    drop(client);
    let _ = task.await;
    v
}

/// The `content_hash` column of `contact_id`.
async fn stored_hash(url: &str, contact_id: &str) -> Option<String> {
    stored(url, contact_id, "content_hash").await
}

/// `scan`'s records as (contact_id, content hash), hashed here.
async fn hashes_of_scan(s: &mut PgStore) -> Vec<(String, String)> {
    s.scan(None, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|mut c| {
            c.normalize();
            (c.contact_id.clone(), contact_sync_core::content_hash(&c))
        })
        .collect()
}

async fn scan_hashes_all(s: &mut PgStore, page: usize) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let rows = s.scan_hashes(after.as_deref(), page).await.unwrap();
        let Some(last) = rows.last().map(|r| r.contact_id.clone()) else {
            return out;
        };
        assert!(rows.len() <= page);
        out.extend(rows.into_iter().map(|r| (r.contact_id, r.hash)));
        after = Some(last);
    }
}

#[tokio::test]
async fn our_writes_keep_their_content_hash() {
    for cdc in [CdcMode::Slot, CdcMode::Outbox] {
        let (mut s, url) = fresh(cdc).await;
        let a = hashed(full_contact("c-a"));
        let b = hashed(Contact::new("c-b", "Bea"));
        let mut dead = hashed(Contact::new("c-c", "Cy"));
        dead.deleted_at = parse_ts("2024-01-01T00:00:00Z");
        dead.content_hash = Some(contact_sync_core::content_hash(&dead));
        let out = s
            .write_batch(&[b.clone(), a.clone(), dead.clone()])
            .await
            .unwrap();
        assert!(out
            .iter()
            .all(|o| matches!(o, WriteOutcome::Applied { .. })));
        assert_eq!(stored_hash(&url, "c-a").await, a.content_hash);
        assert_eq!(stored_hash(&url, "c-b").await, b.content_hash);
        let back = s.read(&["c-a".into()]).await.unwrap();
        assert_eq!(back[0].content_hash, a.content_hash);
        assert!(s.keeps_content_hash(), "{cdc:?}");
        let from_scan = hashes_of_scan(&mut s).await;
        assert_eq!(from_scan.len(), 3);
        assert_eq!(
            from_scan[2].1,
            contact_sync_core::hash::tombstone_hash(),
            "tombstone"
        );
        for page in [1, 2, 1000] {
            assert_eq!(scan_hashes_all(&mut s, page).await, from_scan, "{cdc:?}");
        }
        // A second migrate (the daemon's start) keeps the hashes.
        s.migrate().await.unwrap();
        assert_eq!(stored_hash(&url, "c-a").await, a.content_hash);
        assert_eq!(scan_hashes_all(&mut s, 2).await, from_scan);
        assert!(s.keeps_content_hash());
    }
}

#[tokio::test]
async fn other_writers_changes_clear_the_content_hash() {
    for cdc in [CdcMode::Slot, CdcMode::Outbox] {
        let (mut s, url) = fresh(cdc).await;
        let a = hashed(full_contact("c-a"));
        let b = hashed(Contact::new("c-b", "Bea"));
        s.write_batch(&[a.clone(), b.clone()]).await.unwrap();
        let (_, cp) = drain(&mut s, None, 100).await;
        let before = scan_hashes_all(&mut s, 10).await;
        assert_eq!(
            before[0],
            ("c-a".to_string(), a.content_hash.clone().unwrap())
        );
        other_app(
            &url,
            "UPDATE contacts SET job_title = 'Analyst' WHERE contact_id = 'c-a';
             INSERT INTO contacts (contact_id, canonical_name, content_hash) VALUES ('c-x', 'Xena', 'bogus');",
        )
        .await;
        assert_eq!(stored_hash(&url, "c-a").await, None, "{cdc:?}");
        assert_eq!(stored_hash(&url, "c-x").await, None, "{cdc:?}");
        assert_eq!(stored_hash(&url, "c-b").await, b.content_hash);
        let read = s.read(&["c-a".into()]).await.unwrap();
        assert_eq!(read[0].job_title.as_deref(), Some("Analyst"));
        assert_eq!(read[0].content_hash, None);
        let after = scan_hashes_all(&mut s, 10).await;
        assert_eq!(after, hashes_of_scan(&mut s).await);
        assert_eq!(after.len(), 3);
        let mut edited = a.clone();
        edited.job_title = Some("Analyst".into());
        assert_eq!(after[0].1, contact_sync_core::content_hash(&edited));
        assert_ne!(after[0].1, before[0].1);
        assert_eq!(after[1], before[1], "untouched row keeps its hash");
        // The change capture still sees the other app's writes.
        let (changes, _) = drain(&mut s, cp, 100).await;
        assert_eq!(changes.len(), 2, "{cdc:?}: {changes:#?}");
        assert_eq!(upserted(&changes[0]).job_title.as_deref(), Some("Analyst"));
        // Written by the store again: the hash is kept again.
        let mut again = hashed(edited);
        again.version += 1;
        again.content_hash = Some(contact_sync_core::content_hash(&again));
        s.write_batch(std::slice::from_ref(&again)).await.unwrap();
        assert_eq!(stored_hash(&url, "c-a").await, again.content_hash);
        // A transaction of the other app that sets the setting for itself
        // only: afterwards its session writes clear again.
        other_app(
            &url,
            "BEGIN; SET LOCAL contact_sync.writing = 'on'; COMMIT;
             UPDATE contacts SET notes = 'n' WHERE contact_id = 'c-b';",
        )
        .await;
        assert_eq!(stored_hash(&url, "c-b").await, None);
    }
}

#[tokio::test]
async fn existing_content_hashes_are_cleared_when_the_store_sets_up() {
    let url = harness::shared().create_database().await;
    // A table made elsewhere, with hashes nobody vouches for.
    other_app(
        &url,
        "CREATE TABLE contacts (contact_id text NOT NULL UNIQUE, canonical_name text, job_title text, content_hash text);
         INSERT INTO contacts VALUES ('e1', 'Eve', 'Spy', 'bogus'), ('e2', 'Ed', NULL, NULL);",
    )
    .await;
    let mut s = new_store(&url, CdcMode::Slot).await;
    assert_eq!(stored_hash(&url, "e1").await, None);
    let hashes = scan_hashes_all(&mut s, 10).await;
    assert_eq!(hashes, hashes_of_scan(&mut s).await);
    assert_ne!(hashes[0].1, "bogus");
    assert!(s.keeps_content_hash());
    // The store's writes keep theirs; a later set-up leaves them alone.
    let e3 = hashed(Contact::new("e3", "Eli"));
    s.write_batch(std::slice::from_ref(&e3)).await.unwrap();
    drop(s);
    let s = new_store(&url, CdcMode::Slot).await;
    assert_eq!(stored_hash(&url, "e3").await, e3.content_hash);
    // A table whose trigger went missing (an older version's set-up, or
    // dropped): a store that did not set up does not trust the column ...
    other_app(
        &url,
        "DROP TRIGGER contacts_forget_content_hash ON contacts;
         UPDATE contacts SET job_title = 'Boss', content_hash = 'stale' WHERE contact_id = 'e2';",
    )
    .await;
    drop(s);
    let mut s = PgStore::connect(cfg_for(&url)).await.unwrap();
    let hashes = scan_hashes_all(&mut s, 10).await;
    assert_eq!(hashes, hashes_of_scan(&mut s).await);
    assert!(!hashes.iter().any(|(_, h)| h == "stale"));
    assert!(!s.keeps_content_hash());
    // ... and setting up clears every hash before trusting them again.
    s.migrate().await.unwrap();
    assert_eq!(stored_hash(&url, "e2").await, None);
    assert_eq!(stored_hash(&url, "e3").await, None);
    assert_eq!(scan_hashes_all(&mut s, 10).await, hashes);
    assert!(s.keeps_content_hash());
    // A disabled trigger clears nothing: not trusted.
    other_app(
        &url,
        "ALTER TABLE contacts DISABLE TRIGGER contacts_forget_content_hash;",
    )
    .await;
    drop(s);
    let mut s = PgStore::connect(cfg_for(&url)).await.unwrap();
    let _ = s.scan_hashes(None, 10).await.unwrap();
    assert!(!s.keeps_content_hash());
}

/// Reads served from the read-ahead (one peek, many reads), in pages that
/// end inside transactions, acknowledged as they go, deliver every change
/// once and in commit order; a reader starting over from an acknowledged
/// position gets nothing again.
#[tokio::test]
async fn paged_reads_from_the_read_ahead_deliver_every_change_once_in_order() {
    let (mut s, url) = fresh(CdcMode::Slot).await;
    let mut script = String::new();
    let mut expected = Vec::new();
    for t in 0..150 {
        let rows = if t % 10 == 0 { 3 } else { 1 };
        script.push_str("BEGIN;");
        for r in 0..rows {
            let id = format!("r{t}-{r}");
            script.push_str(&format!(
                "INSERT INTO contacts (contact_id, canonical_name) VALUES ('{id}', 'N');"
            ));
            expected.push(id);
        }
        script.push_str("COMMIT;");
    }
    other_app(&url, &script).await;
    let mut got = Vec::new();
    let mut cp: Option<Checkpoint> = None;
    let mut first_cp: Option<Checkpoint> = None;
    loop {
        let b = s.read_changes(cp.as_ref(), 7).await.expect("read");
        assert!(b.changes.len() <= 7);
        got.extend(b.changes.iter().map(|c| upserted(c).contact_id.clone()));
        s.acknowledge(&b.checkpoint).await.expect("ack");
        first_cp.get_or_insert(b.checkpoint.clone());
        cp = Some(b.checkpoint);
        if !b.has_more {
            break;
        }
    }
    assert_eq!(got, expected);
    // From an older acknowledged position, or none: nothing again.
    let again = s.read_changes(first_cp.as_ref(), 7).await.unwrap();
    assert!(again.changes.is_empty());
    let again = s.read_changes(None, 7).await.unwrap();
    assert!(again.changes.is_empty());
}

/// A trigger of the user's that raises for some rows (their own
/// validation) refuses those records only: each is rejected naming its
/// reason, the rest of the batch applies. A trigger raising for every row
/// of a batch refuses the store's writes: the batch fails with a permanent
/// error that names the first record (the engine parks the store).
#[tokio::test]
async fn a_trigger_refusing_some_records_rejects_them_and_one_refusing_all_fails_the_batch() {
    let (mut s, url) = fresh(CdcMode::Slot).await;
    other_app(
        &url,
        "CREATE FUNCTION no_interns() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.job_title = 'Intern' THEN RAISE EXCEPTION 'interns are not kept here'; END IF; \
           IF NEW.job_title = 'Frozen' OR current_setting('app.frozen', true) = 'on' THEN \
             RAISE EXCEPTION 'writes are frozen'; END IF; \
           RETURN NEW; END $$; \
         CREATE TRIGGER no_interns BEFORE INSERT OR UPDATE ON contacts FOR EACH ROW EXECUTE FUNCTION no_interns();",
    )
    .await;
    let mut intern = Contact::new("c2", "Two");
    intern.job_title = Some("Intern".into());
    let out = s
        .write_batch(&[
            Contact::new("c1", "One"),
            intern,
            Contact::new("c3", "Three"),
        ])
        .await
        .unwrap();
    assert!(matches!(out[0], WriteOutcome::Applied { .. }), "{out:?}");
    assert!(
        matches!(&out[1], WriteOutcome::Rejected { field, reason }
            if field == "record" && reason.contains("interns are not kept here")),
        "{out:?}"
    );
    assert!(matches!(out[2], WriteOutcome::Applied { .. }), "{out:?}");
    let ids: Vec<String> = vec!["c1".into(), "c2".into(), "c3".into()];
    let held: Vec<String> = s
        .read(&ids)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.contact_id)
        .collect();
    assert_eq!(held, vec!["c1".to_string(), "c3".to_string()]);

    let frozen = |id: &str| {
        let mut c = Contact::new(id, "Frozen");
        c.job_title = Some("Frozen".into());
        c
    };
    let err = s
        .write_batch(&[frozen("c4"), frozen("c5")])
        .await
        .expect_err("every record refused: the store's error");
    assert_eq!(err.class, contact_sync_connector::RetryClass::Permanent);
    assert_eq!(err.record.as_deref(), Some("c4"));
    assert!(
        err.to_string().contains("writes are frozen") && err.to_string().contains("(record c4)"),
        "{err}"
    );
}

/// The native ids of a batch's outcomes, in the batch's order.
fn applied_ids(out: &[WriteOutcome]) -> Vec<String> {
    out.iter()
        .map(|o| match o {
            WriteOutcome::Applied { native_id } => native_id.clone(),
            other => panic!("expected applied, got {other:?}"),
        })
        .collect()
}

async fn index_names(url: &str) -> Vec<String> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.expect("connect");
    let task = tokio::spawn(conn);
    let names = client
        .query(
            "SELECT indexname::text FROM pg_indexes WHERE tablename = 'contacts' \
             AND indexname LIKE 'contacts_primary_%' ORDER BY 1",
            &[],
        )
        .await
        .expect("indexes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    drop(client);
    let _ = task.await;
    names
}

#[tokio::test]
async fn rows_the_engine_inserts_get_ids_in_write_order_and_keep_them() {
    let (mut s, url) = fresh(CdcMode::Slot).await;
    let mut ids = Vec::new();
    let mut contacts = Vec::new();
    for b in 0..3 {
        let batch: Vec<Contact> = (0..40)
            // Contact ids in no particular order: the ids follow the writes.
            .map(|i| Contact::new(format!("c-{:03}", ((b * 40 + i) * 37) % 120), "N"))
            .collect();
        ids.extend(applied_ids(&s.write_batch(&batch).await.expect("write")));
        contacts.extend(batch);
    }
    assert_eq!(ids.len(), 120);
    // Version 7 (time-ordered) uuids, each greater than the one before.
    assert!(
        ids.iter().all(|id| id.len() == 36 && &id[14..15] == "7"),
        "{ids:?}"
    );
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "not in write order: {ids:?}"
    );
    // An update keeps the row's id.
    for c in &mut contacts {
        c.version += 1;
    }
    let again = applied_ids(&s.write_batch(&contacts).await.expect("update"));
    assert_eq!(again, ids);

    // A user's table whose id has another default keeps its default.
    let url2 = harness::shared().create_database().await;
    other_app(
        &url2,
        "CREATE TABLE contacts (id uuid PRIMARY KEY DEFAULT '00000000-0000-4000-8000-00000000abcd', \
         contact_id text UNIQUE)",
    )
    .await;
    let mut s2 = new_store(&url2, CdcMode::Slot).await;
    let out = s2
        .write_batch(&[Contact::new("c-1", "N")])
        .await
        .expect("write");
    assert_eq!(applied_ids(&out), ["00000000-0000-4000-8000-00000000abcd"]);
    let _ = url;
}

#[tokio::test]
async fn a_bulk_load_into_an_empty_table_builds_the_identity_indexes_at_its_end() {
    let (mut s, url) = fresh(CdcMode::Slot).await;
    let both = ["contacts_primary_emails", "contacts_primary_phones"];
    assert_eq!(index_names(&url).await, both);
    s.begin_bulk_load().await.expect("begin");
    assert!(index_names(&url).await.is_empty(), "dropped for the load");
    let c = hashed(full_contact("c-ada"));
    s.write_batch(std::slice::from_ref(&c))
        .await
        .expect("write");
    // Identity lookups still answer (by a scan) meanwhile.
    let found = s
        .find_by_identity(&["ADA@example.com".into()], &[])
        .await
        .expect("find");
    assert_eq!(found.len(), 1);
    s.end_bulk_load().await.expect("end");
    assert_eq!(index_names(&url).await, both);
    let found = s
        .find_by_identity(&[], &["+442071234567".into()])
        .await
        .expect("find");
    assert_eq!(found.len(), 1);

    // Into a table that holds rows: nothing is dropped.
    s.begin_bulk_load().await.expect("begin");
    assert_eq!(index_names(&url).await, both);
    s.end_bulk_load().await.expect("end");

    // A load that never ended (a crash): the next set-up builds them.
    let (mut s2, url2) = fresh(CdcMode::Slot).await;
    s2.begin_bulk_load().await.expect("begin");
    drop(s2);
    assert!(index_names(&url2).await.is_empty());
    let _s3 = new_store(&url2, CdcMode::Slot).await;
    assert_eq!(index_names(&url2).await, both);
}

#[tokio::test]
async fn a_bulk_load_copies_inserts_straight_into_the_table_and_falls_back_on_a_refusal() {
    use contact_sync_connector::Expect;
    let (mut s, url) = fresh(CdcMode::Slot).await;
    other_app(
        &url,
        "ALTER TABLE contacts ADD CONSTRAINT not_bad CHECK (canonical_name <> 'Bad'); \
         CREATE TABLE seen (q text); \
         CREATE FUNCTION note_query() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           INSERT INTO seen VALUES (current_query()); RETURN NULL; END $$; \
         CREATE TRIGGER note AFTER INSERT ON contacts FOR EACH STATEMENT EXECUTE FUNCTION note_query();",
    )
    .await;
    s.begin_bulk_load().await.expect("begin");
    // Straight into the table: every field as the staged upsert writes it.
    let mut ada = hashed(full_contact("c-ada"));
    let (out, _) = s
        .write_batch_if(vec![ada.clone()], &[Expect::Absent])
        .await
        .expect("write");
    assert!(matches!(&out[0], WriteOutcome::Applied { native_id } if &native_id[14..15] == "7"));
    ada.normalize();
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await.expect("connect");
    let task = tokio::spawn(conn);
    let seen: Vec<String> = client
        .query("SELECT q FROM seen", &[])
        .await
        .expect("seen")
        .iter()
        .map(|r| r.get(0))
        .collect();
    drop(client);
    let _ = task.await;
    assert!(
        seen.len() == 1 && seen[0].starts_with("COPY \"public\".\"contacts\""),
        "written by {seen:?}"
    );
    assert_eq!(
        s.read(&["c-ada".to_string()]).await.unwrap(),
        vec![ada.clone()]
    );
    assert_eq!(stored_hash(&url, "c-ada").await, ada.content_hash.clone());
    // A value the table refuses fails the copy: the batch goes again
    // through staging, record by record, and only that record is refused.
    let batch = vec![
        Contact::new("c-1", "One"),
        Contact::new("c-2", "Bad"),
        Contact::new("c-3", "Three"),
    ];
    let (out, _) = s
        .write_batch_if(batch, &[Expect::Absent, Expect::Absent, Expect::Absent])
        .await
        .expect("write");
    assert!(matches!(out[0], WriteOutcome::Applied { .. }), "{out:?}");
    assert!(
        matches!(&out[1], WriteOutcome::Rejected { reason, .. } if reason.contains("not_bad")),
        "{out:?}"
    );
    assert!(matches!(out[2], WriteOutcome::Applied { .. }), "{out:?}");
    // A row already there is not overwritten: the write is refused.
    let (out, _) = s
        .write_batch_if(vec![Contact::new("c-1", "Other")], &[Expect::Absent])
        .await
        .expect("write");
    assert_eq!(out, vec![WriteOutcome::Changed]);
    s.end_bulk_load().await.expect("end");
    assert_eq!(s.count().await.unwrap(), 3);

    // A row someone inserts while the batch is written (here: a trigger,
    // inside the batch's own COPY) fails the copy with a unique violation:
    // the batch goes again through staging, and that write is refused as
    // `Changed` (someone else's row, never overwritten), the others applied.
    let (mut s, url) = fresh(CdcMode::Slot).await;
    s.begin_bulk_load().await.expect("begin");
    other_app(
        &url,
        "CREATE FUNCTION meddle() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
           IF NEW.contact_id = 'c-4' THEN \
             INSERT INTO contacts (contact_id, canonical_name) VALUES ('c-5', 'Theirs') \
             ON CONFLICT DO NOTHING; \
           END IF; RETURN NEW; END $$; \
         CREATE TRIGGER meddle BEFORE INSERT ON contacts FOR EACH ROW EXECUTE FUNCTION meddle();",
    )
    .await;
    let (out, _) = s
        .write_batch_if(
            vec![Contact::new("c-4", "Four"), Contact::new("c-5", "Five")],
            &[Expect::Absent, Expect::Absent],
        )
        .await
        .expect("write");
    assert!(matches!(out[0], WriteOutcome::Applied { .. }), "{out:?}");
    assert_eq!(out[1], WriteOutcome::Changed, "{out:?}");
    let five = s.read(&["c-5".to_string()]).await.unwrap();
    assert_eq!(five[0].canonical_name, "Theirs");
    s.end_bulk_load().await.expect("end");
    assert_eq!(s.count().await.unwrap(), 2);
}

/// The `version` column of `contact_id`.
async fn stored_version(url: &str, contact_id: &str) -> i64 {
    stored(url, contact_id, "version::bigint").await
}

/// Another app's change of a row's content that leaves `version` alone
/// raises it by one (so the engine owes the row no write of the version
/// alone); its own version, a save of nothing new, and the store's own
/// writes are left as they are. On a table made elsewhere with a `json`
/// column (a type without equality) and an `int` version, as well.
#[tokio::test]
async fn another_apps_edit_raises_the_version_by_one() {
    let (mut s, url) = fresh(CdcMode::Slot).await;
    let mut c = hashed(Contact::new("v1", "Vera"));
    c.version = 3;
    c.content_hash = Some(contact_sync_core::content_hash(&c));
    s.write_batch(std::slice::from_ref(&c)).await.unwrap();
    assert_eq!(stored_version(&url, "v1").await, 3, "the store's write");
    for (sql, want, what) in [
        ("SET job_title = 'Pilot'", 4, "an edit"),
        ("SET job_title = 'Pilot'", 4, "a save of nothing new"),
        ("SET notes = 'x', version = 9", 9, "the app's own version"),
        ("SET deleted_at = now()", 10, "a soft delete"),
    ] {
        let sql = format!("UPDATE contacts {sql} WHERE contact_id = 'v1'");
        other_app(&url, &sql).await;
        assert_eq!(stored_version(&url, "v1").await, want, "{what}");
    }
    let mut again = hashed(Contact::new("v1", "Vera"));
    again.version = 10;
    again.job_title = Some("Captain".into());
    again.content_hash = Some(contact_sync_core::content_hash(&again));
    s.write_batch(std::slice::from_ref(&again)).await.unwrap();
    assert_eq!(stored_version(&url, "v1").await, 10, "the store's own edit");

    let url = harness::shared().create_database().await;
    other_app(
        &url,
        "CREATE TABLE contacts (contact_id text NOT NULL UNIQUE, canonical_name text, \
         custom_attributes json, version int);
         INSERT INTO contacts VALUES ('e1', 'Eve', '{\"a\": 1}', 1);",
    )
    .await;
    let _s = new_store(&url, CdcMode::Slot).await;
    other_app(
        &url,
        "UPDATE contacts SET custom_attributes = '{\"a\": 2}' WHERE contact_id = 'e1'",
    )
    .await;
    assert_eq!(stored_version(&url, "e1").await, 2);
    other_app(
        &url,
        "UPDATE contacts SET canonical_name = 'Eve' WHERE contact_id = 'e1'",
    )
    .await;
    assert_eq!(stored_version(&url, "e1").await, 2);
    // The version column renamed: another app's UPDATE still works, and
    // nothing is raised any more.
    other_app(
        &url,
        "ALTER TABLE contacts RENAME COLUMN version TO v;
         UPDATE contacts SET canonical_name = 'Evelyn' WHERE contact_id = 'e1';",
    )
    .await;
    let (client, conn) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    let task = tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT canonical_name, v::bigint FROM contacts WHERE contact_id = 'e1'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, i64>(1)),
        ("Evelyn".to_string(), 2)
    );
    drop(client);
    let _ = task.await;
}
