//! The BigQuery store through the traits, on the local emulator.

mod common;

use std::collections::BTreeMap;

use common::{TestDataset, PROJECT};
use contact_sync_bigquery::{contacts_schema, BigQueryStore, ColumnMap, InsertRow, QueryParam};
use contact_sync_connector::{
    ChangeKind, ChangeSource, Checkpoint, RecordSink, RetryClass, StoreInfo, WriteOutcome,
};
use contact_sync_core::model::{format_ts, parse_ts};
use contact_sync_core::synth::Generator;
use contact_sync_core::{Contact, Email, JournalEntry, Op, Phone, Timestamp};
use serde_json::{json, Map, Value};

fn ts(s: &str) -> Timestamp {
    parse_ts(s).expect("timestamp literal")
}

/// A contact with every one of the 33 fields set.
fn full_contact(id: &str) -> Contact {
    let mut c = Contact::new(id, "Ada Augusta King");
    c.external_ids = BTreeMap::from([
        (
            "twenty".to_string(),
            "3f6c1e2a-0000-4000-8000-000000000001".to_string(),
        ),
        ("supabase".to_string(), "42".to_string()),
    ]);
    c.display_name = Some("Ada Lovelace".into());
    c.first_name = Some("Ada".into());
    c.middle_name = Some("Augusta".into());
    c.last_name = Some("King".into());
    c.name_prefix = Some("Countess".into());
    c.name_suffix = Some("FRS".into());
    c.nickname = Some("Enchantress of Numbers".into());
    c.phonetic_name = Some("AY-duh".into());
    c.organization = Some("Analytical Engine Ltd".into());
    c.job_title = Some("Programmer".into());
    c.department = Some("Notes".into());
    c.category_code = Some("G".into());
    c.subcategory_code = Some("G2".into());
    c.relationship_label = Some("collaborator".into());
    c.notes = Some("Wrote the first program; \"quotes\", back\\slash, ünïcødé, emoji 🧮.".into());
    c.tags = vec!["math".into(), "history".into(), "vip".into()];
    c.source = Some("import".into());
    c.created_at = Some(ts("1843-09-01T10:00:00.123456Z"));
    c.llm_context = Some(json!({
        "relationship_arc": "long correspondence",
        "key_interests": ["engines", "poetry"],
        "important_dates": [{"date": "1815-12-10", "event": "born", "significance": "high"}],
        "emotional_depth": 7, "closeness_level": 6, "blind_spots": [], "nested": {"a": [1, 2.5, null, true]}
    }));
    c.relationships =
        Some(json!([{"contact_id": "c-babbage", "relation": "mentor", "notes": "Charles"}]));
    c.communication_stats = Some(json!({"letters": 31, "last": "1852-11-27"}));
    c.social_profiles = Some(json!({"web": "https://example.org/ada"}));
    c.custom_attributes = Some(json!({"favourite_number": 1729}));
    c.emails = vec![
        Email {
            address: "ada@example.org".into(),
            label: Some("home".into()),
            is_primary: true,
        },
        Email {
            address: "countess@example.com".into(),
            label: None,
            is_primary: false,
        },
    ];
    c.phones = vec![
        Phone {
            number: "+442071234567".into(),
            label: Some("work".into()),
            is_primary: true,
        },
        Phone {
            number: "+15551234567".into(),
            label: None,
            is_primary: false,
        },
    ];
    c.version = 7;
    c.last_updated = Some(ts("2024-05-06T07:08:09.654321Z"));
    c.last_updated_by = Some("twenty".into());
    c.deleted_at = None;
    c.content_hash = Some("abc123".into());
    c
}

fn applied(o: &WriteOutcome) -> bool {
    matches!(o, WriteOutcome::Applied { .. })
}

/// Reads changes from `from` until the head, returning them and the head.
async fn drain(
    store: &mut BigQueryStore,
    from: Option<Checkpoint>,
    limit: usize,
) -> (Vec<contact_sync_connector::Change>, Checkpoint) {
    let mut cp = from;
    let mut all = Vec::new();
    loop {
        let b = store
            .read_changes(cp.as_ref(), limit)
            .await
            .expect("read_changes");
        all.extend(b.changes);
        // As the engine does once it applied the batch.
        store.acknowledge(&b.checkpoint).await.expect("acknowledge");
        cp = Some(b.checkpoint);
        if !b.has_more {
            return (all, cp.expect("checkpoint"));
        }
    }
}

fn upserts(changes: &[contact_sync_connector::Change]) -> Vec<(String, i64)> {
    changes
        .iter()
        .filter_map(|c| match &c.kind {
            ChangeKind::Upsert(c) => Some((c.contact_id.clone(), c.version)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn migrate_creates_the_designed_schema_and_is_idempotent() {
    let ds = TestDataset::create("migrate").await;
    let cfg = ds.config();
    let first = BigQueryStore::migrate(&ds.client, &cfg)
        .await
        .expect("migrate");
    assert!(first.created_dataset && first.created_table && first.created_journal_table);
    let second = BigQueryStore::migrate(&ds.client, &cfg)
        .await
        .expect("migrate again");
    assert_eq!(
        second,
        Default::default(),
        "a second migrate must create nothing"
    );

    let schema = ds
        .client
        .table_schema(&ds.dataset, "contacts")
        .await
        .expect("tables.get")
        .expect("contacts table exists");
    assert_eq!(schema.len(), 33);
    let col = |n: &str| {
        schema
            .iter()
            .find(|f| f.name == n)
            .unwrap_or_else(|| panic!("column {n}"))
    };
    assert_eq!(
        (
            col("contact_id").ty.as_str(),
            col("contact_id").mode.as_str()
        ),
        ("STRING", "REQUIRED")
    );
    assert_eq!(
        (col("version").ty.as_str(), col("version").mode.as_str()),
        ("INT64", "REQUIRED")
    );
    assert_eq!(
        (col("emails").ty.as_str(), col("emails").mode.as_str()),
        ("RECORD", "REPEATED")
    );
    let sub: Vec<&str> = col("phones")
        .fields
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(sub, ["number", "label", "is_primary"]);
    assert_eq!(
        (col("tags").ty.as_str(), col("tags").mode.as_str()),
        ("STRING", "REPEATED")
    );
    for j in [
        "llm_context",
        "relationships",
        "communication_stats",
        "social_profiles",
        "custom_attributes",
        "external_ids",
    ] {
        assert_eq!(col(j).ty, "JSON", "{j}");
    }
    for t in ["created_at", "last_updated", "deleted_at"] {
        assert_eq!(col(t).ty, "TIMESTAMP", "{t}");
    }
    // Laid out so polls, reads by id and MERGEs prune: clustered by
    // contact_id, partitioned by month of last_updated (the journal table
    // by month of `at`; the fingerprint sidecar clustered by contact_id).
    let layout = |t: &'static str| {
        let c = ds.client.clone();
        let d = ds.dataset.clone();
        async move {
            let r = c
                .table_resource(&d, t)
                .await
                .expect("tables.get")
                .unwrap_or_else(|| panic!("{t} exists"));
            (
                r["clustering"]["fields"].clone(),
                r["timePartitioning"]["type"].clone(),
                r["timePartitioning"]["field"].clone(),
            )
        }
    };
    assert_eq!(
        layout("contacts").await,
        (json!(["contact_id"]), json!("MONTH"), json!("last_updated"))
    );
    assert_eq!(
        layout("contact_changes").await,
        (json!(["contact_id"]), json!("MONTH"), json!("at"))
    );
    assert_eq!(
        layout("contacts_sync_fingerprints").await.0,
        json!(["contact_id"])
    );
    // The store opens on what migrate made, and the data survives a re-migrate.
    let mut store = BigQueryStore::open(ds.client.clone(), cfg.clone())
        .await
        .expect("open");
    store
        .write_batch(&[full_contact("m-1")])
        .await
        .expect("write");
    BigQueryStore::migrate(&ds.client, &cfg)
        .await
        .expect("migrate third time");
    assert_eq!(store.count().await.expect("count"), 1);
    ds.cleanup().await;
}

#[tokio::test]
async fn all_33_fields_round_trip() {
    let ds = TestDataset::create("roundtrip").await;
    let mut store = ds.store().await;
    let c = full_contact("rt-1");
    let mut tomb = full_contact("rt-2");
    tomb.deleted_at = Some(ts("2025-01-02T03:04:05.000006Z"));
    let outcomes = store
        .write_batch(&[c.clone(), tomb.clone()])
        .await
        .expect("write");
    assert!(outcomes.iter().all(applied), "{outcomes:?}");

    let mut got = store
        .read(&["rt-1".into(), "rt-2".into()])
        .await
        .expect("read");
    got.sort_by(|a, b| a.contact_id.cmp(&b.contact_id));
    let mut want = vec![c, tomb];
    for w in &mut want {
        w.normalize();
    }
    assert_eq!(got, want, "every field must read back as written");
    let scanned = store.scan(None, 10).await.expect("scan");
    assert_eq!(scanned, want, "scan returns the same records");
    let (changes, _) = drain(&mut store, None, 10).await;
    let from_changes: Vec<Contact> = changes
        .into_iter()
        .filter_map(|c| match c.kind {
            ChangeKind::Upsert(c) => Some(*c),
            _ => None,
        })
        .collect();
    assert_eq!(from_changes.len(), 2);
    for c in &from_changes {
        assert!(want.contains(c), "change source returned {c:?}");
    }
    ds.cleanup().await;
}

#[tokio::test]
async fn a_stale_replay_is_refused_and_changes_nothing() {
    let ds = TestDataset::create("guard").await;
    let mut store = ds.store().await;
    let mut v3 = full_contact("g-1");
    v3.version = 3;
    v3.job_title = Some("three".into());
    assert!(applied(
        &store
            .write_batch(std::slice::from_ref(&v3))
            .await
            .expect("write")[0]
    ));
    let before = store.read(&["g-1".into()]).await.expect("read");

    let mut v2 = v3.clone();
    v2.version = 2;
    v2.job_title = Some("two (old replay)".into());
    v2.tags = vec![];
    v2.llm_context = None;
    let jobs = store.jobs_issued();
    let out = store
        .write_batch(&[v2.clone(), full_contact("g-2")])
        .await
        .expect("write");
    assert_eq!(out[0], WriteOutcome::Stale { stored_version: 3 });
    assert!(applied(&out[1]), "{out:?}");
    assert_eq!(
        store.jobs_issued() - jobs,
        2,
        "a batch with a stale row costs the MERGE and one outcome query"
    );
    let after = store.read(&["g-1".into()]).await.expect("read");
    assert_eq!(after, before, "a stale write must not change the row");

    // A stale row and its newer version in one batch: the newer applies.
    let mut v4 = v3.clone();
    v4.version = 4;
    v4.job_title = Some("four".into());
    let out = store
        .write_batch(&[v4.clone(), v2.clone()])
        .await
        .expect("write");
    assert!(applied(&out[0]));
    assert_eq!(out[1], WriteOutcome::Stale { stored_version: 4 });
    let got = store.read(&["g-1".into()]).await.expect("read");
    assert_eq!(got[0].job_title.as_deref(), Some("four"));
    assert_eq!(got[0].version, 4);
    ds.cleanup().await;
}

#[tokio::test]
async fn replaying_a_batch_changes_nothing_and_costs_one_job() {
    let ds = TestDataset::create("replay").await;
    let mut store = ds.store().await;
    let mut g = Generator::new(7);
    let batch: Vec<Contact> = (0..40).map(|i| g.contact(i)).collect();
    let jobs = store.jobs_issued();
    let out = store.write_batch(&batch).await.expect("write");
    assert!(out.iter().all(applied), "{out:?}");
    assert_eq!(
        store.jobs_issued() - jobs,
        1,
        "a batch of new contacts is one MERGE job"
    );

    let (_, head) = drain(&mut store, None, 100).await;
    let snapshot = store.scan(None, 1000).await.expect("scan");
    assert_eq!(snapshot.len(), 40);

    let jobs = store.jobs_issued();
    let out = store.write_batch(&batch).await.expect("replay");
    assert!(
        out.iter().all(applied),
        "a replay at the same version counts as applied: {out:?}"
    );
    assert_eq!(store.jobs_issued() - jobs, 1, "a replay is one MERGE job");
    assert_eq!(store.scan(None, 1000).await.expect("scan"), snapshot);
    let again = store
        .read_changes(Some(&head), 100)
        .await
        .expect("read_changes");
    assert!(
        again.changes.is_empty(),
        "a replay must not show up as changes: {:?}",
        again.changes
    );
    assert_eq!(store.count().await.expect("count"), 40);
    ds.cleanup().await;
}

#[tokio::test]
async fn tombstones_are_versioned_rows() {
    let ds = TestDataset::create("tomb").await;
    let mut store = ds.store().await;
    let live = full_contact("t-1");
    store
        .write_batch(std::slice::from_ref(&live))
        .await
        .expect("write");
    let (_, head) = drain(&mut store, None, 100).await;
    assert_eq!(store.count().await.expect("count"), 1);

    let mut dead = live.clone();
    dead.version = 8;
    dead.deleted_at = Some(ts("2025-02-03T04:05:06Z"));
    dead.last_updated = Some(ts("2025-02-03T04:05:06Z"));
    assert!(applied(
        &store
            .write_batch(std::slice::from_ref(&dead))
            .await
            .expect("write")[0]
    ));
    assert_eq!(
        store.count().await.expect("count"),
        0,
        "tombstones are not counted"
    );
    let got = store.read(&["t-1".into()]).await.expect("read");
    assert_eq!(got[0].deleted_at, dead.deleted_at);
    assert!(store
        .find_by_identity(&["ada@example.org".into()], &[])
        .await
        .expect("find")
        .is_empty());
    let (changes, _) = drain(&mut store, Some(head), 100).await;
    assert_eq!(changes.len(), 1);
    match &changes[0].kind {
        ChangeKind::Upsert(c) => assert!(c.is_deleted() && c.version == 8),
        other => panic!("expected the tombstone, got {other:?}"),
    }
    // An older live version cannot resurrect it.
    let out = store
        .write_batch(std::slice::from_ref(&live))
        .await
        .expect("write");
    assert_eq!(out[0], WriteOutcome::Stale { stored_version: 8 });
    ds.cleanup().await;
}

/// A row as another tool would stream it in with insertAll.
fn foreign_row(id: &str, name: Option<&str>, version: i64, lu: &Timestamp) -> InsertRow {
    let mut m = Map::new();
    m.insert("contact_id".into(), json!(id));
    if let Some(n) = name {
        m.insert("canonical_name".into(), json!(n));
    }
    m.insert("version".into(), json!(version.to_string()));
    m.insert("last_updated".into(), json!(format_ts(lu)));
    m.insert("last_updated_by".into(), json!("other-tool"));
    m.insert(
        "emails".into(),
        json!([{"address": format!("{id}@Example.com"), "is_primary": true}]),
    );
    m.insert("llm_context".into(), json!("{\"how_met\": \"script\"}"));
    InsertRow {
        insert_id: Some(format!("{id}-{version}")),
        json: m,
    }
}

#[tokio::test]
async fn changes_by_other_tools_are_delivered_exactly_once_across_overlapping_polls() {
    let ds = TestDataset::create("capture").await;
    let mut store = ds.store().await;
    let (_, cp0) = drain(&mut store, None, 100).await;

    let now = contact_sync_core::model::now();
    let sec = |s: i64| chrono::Duration::seconds(s);
    ds.client
        .insert_all(
            &ds.dataset,
            "contacts",
            &[
                foreign_row("x-a", Some("Anna"), 1, &(now - sec(1))),
                foreign_row("x-b", Some("Bert"), 1, &now),
            ],
        )
        .await
        .expect("insertAll by another tool");
    let (first, cp1) = drain(&mut store, Some(cp0.clone()), 100).await;
    assert_eq!(upserts(&first), vec![("x-a".into(), 1), ("x-b".into(), 1)]);
    match &first[0].kind {
        ChangeKind::Upsert(c) => {
            assert_eq!(
                c.emails[0].address, "x-a@example.com",
                "records come normalized"
            );
            assert_eq!(c.llm_context, Some(json!({"how_met": "script"})));
            assert_eq!(c.last_updated_by.as_deref(), Some("other-tool"));
        }
        other => panic!("{other:?}"),
    }

    // Polling again delivers nothing twice.
    let again = store.read_changes(Some(&cp1), 100).await.expect("poll");
    assert!(again.changes.is_empty(), "{:?}", again.changes);
    assert_eq!(again.checkpoint, cp1);

    // A row committed late, with a last_updated before the watermark, is
    // still delivered (by the sweep), once.
    ds.client
        .insert_all(
            &ds.dataset,
            "contacts",
            &[foreign_row("x-c", Some("Cleo"), 1, &(now - sec(3)))],
        )
        .await
        .expect("late insert");
    let (late, cp2) = drain(&mut store, Some(cp1.clone()), 100).await;
    assert_eq!(upserts(&late), vec![("x-c".into(), 1)]);

    // Another tool edits a row with DML.
    let sql = format!(
        "UPDATE {} SET notes = @notes, version = version + 1, last_updated = CURRENT_TIMESTAMP() WHERE contact_id = @id",
        ds.table_sql("contacts")
    );
    ds.client
        .query(
            &sql,
            &[
                QueryParam::string("notes", "edited elsewhere"),
                QueryParam::string("id", "x-a"),
            ],
            "other tool's UPDATE",
        )
        .await
        .expect("DML by another tool");
    let (edit, cp3) = drain(&mut store, Some(cp2), 100).await;
    assert_eq!(upserts(&edit), vec![("x-a".into(), 2)]);
    let (none, _) = drain(&mut store, Some(cp3), 100).await;
    assert!(none.is_empty(), "{none:?}");

    // From the start, one change at a time: each row once, in order.
    let (paged, _) = drain(&mut store, Some(cp0), 1).await;
    let mut ids: Vec<(String, i64)> = upserts(&paged);
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(
        ids.last().map(|x| x.0.as_str()),
        Some("x-a"),
        "the edited row is the latest"
    );
    ids.sort();
    assert_eq!(
        ids,
        vec![("x-a".into(), 2), ("x-b".into(), 1), ("x-c".into(), 1)]
    );
    ds.cleanup().await;
}

#[tokio::test]
async fn bad_rows_written_by_another_tool_are_undecodable() {
    let ds = TestDataset::create("badrows").await;
    // An existing table that keeps JSON as text and has no NOT NULL name.
    let mut schema = contacts_schema(&ColumnMap::default());
    for f in &mut schema {
        if f.ty == "JSON" {
            f.ty = "STRING".into();
        }
        if f.name == "canonical_name" {
            f.mode = "NULLABLE".into();
        }
    }
    ds.client
        .create_dataset(&ds.dataset)
        .await
        .expect("dataset");
    ds.client
        .create_table(&ds.dataset, "contacts", &schema, "legacy")
        .await
        .expect("table");
    let cfg = ds.config();
    BigQueryStore::migrate(&ds.client, &cfg)
        .await
        .expect("migrate accepts the legacy table");
    let mut store = BigQueryStore::open(ds.client.clone(), cfg)
        .await
        .expect("open");

    let now = contact_sync_core::model::now();
    let mut bad_json = foreign_row("b-1", Some("Broken Json"), 1, &now);
    bad_json
        .json
        .insert("llm_context".into(), json!("{\"how_met\": "));
    let no_name = foreign_row("b-2", None, 1, &now);
    let mut bad_ids = foreign_row("b-3", Some("Bad Ids"), 1, &now);
    bad_ids.json.insert("external_ids".into(), json!("[1, 2]"));
    let good = foreign_row("g-1", Some("Good"), 1, &now);
    ds.client
        .insert_all(&ds.dataset, "contacts", &[bad_json, no_name, bad_ids, good])
        .await
        .expect("insertAll");

    let (changes, _) = drain(&mut store, None, 100).await;
    let mut bad: Vec<(String, String, String)> = Vec::new();
    for ch in &changes {
        if let ChangeKind::Undecodable { invalid, payload } = &ch.kind {
            assert!(payload.is_some(), "the raw row travels to the dead letter");
            assert_eq!(ch.native_id, invalid.record);
            bad.push((
                invalid.record.clone(),
                invalid.field.clone(),
                invalid.reason.clone(),
            ));
        }
    }
    bad.sort();
    let named: Vec<(&str, &str)> = bad
        .iter()
        .map(|(r, f, _)| (r.as_str(), f.as_str()))
        .collect();
    assert_eq!(
        named,
        [
            ("b-1", "llm_context"),
            ("b-2", "canonical_name"),
            ("b-3", "external_ids")
        ],
        "{bad:?}"
    );
    assert!(bad[0].2.contains("JSON"), "{bad:?}");
    assert_eq!(upserts(&changes), vec![("g-1".into(), 1)]);

    // Reads leave bad rows out without losing good ones behind them.
    let page = store.scan(None, 1).await.expect("scan");
    assert_eq!(
        page.iter()
            .map(|c| c.contact_id.as_str())
            .collect::<Vec<_>>(),
        ["g-1"]
    );
    // Writing into the legacy table keeps JSON as text that reads back.
    let mut c = full_contact("b-1");
    c.version = 2;
    assert!(applied(
        &store
            .write_batch(std::slice::from_ref(&c))
            .await
            .expect("write")[0]
    ));
    c.normalize();
    assert_eq!(store.read(&["b-1".into()]).await.expect("read"), vec![c]);
    ds.cleanup().await;
}

#[tokio::test]
async fn an_int64_id_table_works_through_the_column_mapping() {
    let ds = TestDataset::create("int64").await;
    let map = ColumnMap::default()
        .rename("contact_id", "id")
        .rename("canonical_name", "full_name")
        .rename("version", "rev");
    let mut schema = contacts_schema(&map);
    schema[0].ty = "INT64".into();
    assert_eq!(schema[0].name, "id");
    ds.client
        .create_dataset(&ds.dataset)
        .await
        .expect("dataset");
    ds.client
        .create_table(&ds.dataset, "people", &schema, "existing")
        .await
        .expect("table");
    let mut cfg = ds.config();
    cfg.table = "people".into();
    cfg.journal_table = None;
    cfg.columns = map;
    let report = BigQueryStore::migrate(&ds.client, &cfg)
        .await
        .expect("migrate");
    assert!(!report.created_table);
    let mut store = BigQueryStore::open(ds.client.clone(), cfg.clone())
        .await
        .expect("open");

    let batch: Vec<Contact> = ["101", "7", "2000", "not-a-number"]
        .iter()
        .map(|id| full_contact(id))
        .map(|mut c| {
            let id = c.contact_id.clone();
            c.emails[0].address = format!("p{id}@example.org");
            c.phones.clear();
            c
        })
        .collect();
    let out = store.write_batch(&batch).await.expect("write");
    assert!(out[..3].iter().all(applied), "{out:?}");
    assert!(
        matches!(&out[3], WriteOutcome::Rejected { field, .. } if field == "contact_id"),
        "{out:?}"
    );
    let got = store
        .read(&["7".into(), "nope".into()])
        .await
        .expect("read");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].contact_id, "7");
    assert_eq!(got[0].canonical_name, "Ada Augusta King");
    assert_eq!(got[0].version, 7);
    let ids: Vec<String> = store
        .scan(None, 10)
        .await
        .expect("scan")
        .into_iter()
        .map(|c| c.contact_id)
        .collect();
    assert_eq!(
        ids,
        ["101", "2000", "7"],
        "scan is in text order of contact_id"
    );
    let after: Vec<String> = store
        .scan(Some("101"), 10)
        .await
        .expect("scan")
        .into_iter()
        .map(|c| c.contact_id)
        .collect();
    assert_eq!(after, ["2000", "7"]);
    let found = store
        .find_by_identity(&["P2000@example.org".into()], &[])
        .await
        .expect("find");
    assert_eq!(
        found
            .iter()
            .map(|c| c.contact_id.as_str())
            .collect::<Vec<_>>(),
        ["2000"]
    );
    let mut old = batch[1].clone();
    old.version = 1;
    assert_eq!(
        store.write_batch(&[old]).await.expect("write")[0],
        WriteOutcome::Stale { stored_version: 7 }
    );

    // Another tool's row with an integer id comes through as text.
    let mut m = Map::new();
    m.insert("id".into(), json!("55"));
    m.insert("full_name".into(), json!("Fifty Five"));
    m.insert("rev".into(), json!("3"));
    m.insert(
        "last_updated".into(),
        json!(format_ts(&contact_sync_core::model::now())),
    );
    ds.client
        .insert_all(
            &ds.dataset,
            "people",
            &[InsertRow {
                insert_id: None,
                json: m,
            }],
        )
        .await
        .expect("insertAll");
    let (changes, _) = drain(&mut store, None, 100).await;
    assert!(upserts(&changes).contains(&("55".into(), 3)), "{changes:?}");

    // A mapping to a column that does not exist is refused, naming it.
    let mut wrong = cfg.clone();
    wrong.columns = wrong.columns.rename("notes", "remarks");
    let e = BigQueryStore::open(ds.client.clone(), wrong)
        .await
        .expect_err("bad mapping");
    assert_eq!(e.class, RetryClass::Permanent);
    assert!(
        e.message.contains("remarks") && e.message.contains("people"),
        "{e}"
    );
    ds.cleanup().await;
}

#[tokio::test]
async fn errors_from_a_missing_table_name_the_table() {
    let ds = TestDataset::create("missing").await;
    ds.client
        .create_dataset(&ds.dataset)
        .await
        .expect("dataset");
    let e = BigQueryStore::open(ds.client.clone(), ds.config())
        .await
        .expect_err("no table");
    assert_eq!(e.class, RetryClass::Permanent);
    let full = format!("{PROJECT}.{}.contacts", ds.dataset);
    assert!(e.message.contains(&full), "{e}");
    assert_eq!(e.store, "canonical");

    // The table disappears under an open store.
    let mut store = ds.store().await;
    ds.client
        .query(
            &format!("DROP TABLE {}", ds.table_sql("contacts")),
            &[],
            "drop",
        )
        .await
        .expect("DROP TABLE");
    let e = store
        .write_batch(&[full_contact("z-1")])
        .await
        .expect_err("write to a dropped table");
    assert_eq!(e.class, RetryClass::Permanent, "{e}");
    assert!(e.message.contains(&full), "{e}");
    let e = store
        .read_changes(None, 10)
        .await
        .expect_err("poll a dropped table");
    assert!(e.message.contains(&full) && !e.is_transient(), "{e}");
    ds.cleanup().await;
}

#[tokio::test]
async fn identity_lookup_uses_primary_keys_only() {
    let ds = TestDataset::create("ident").await;
    let mut store = ds.store().await;
    let a = full_contact("i-1");
    store
        .write_batch(std::slice::from_ref(&a))
        .await
        .expect("write");
    let by_primary = store
        .find_by_identity(&["ADA@example.org".into()], &[])
        .await
        .expect("find");
    assert_eq!(by_primary.len(), 1);
    let by_secondary = store
        .find_by_identity(&["countess@example.com".into()], &["+15551234567".into()])
        .await
        .expect("find");
    assert!(
        by_secondary.is_empty(),
        "secondary email/phone must not identify: {by_secondary:?}"
    );
    let by_phone = store
        .find_by_identity(&[], &["+442071234567".into()])
        .await
        .expect("find");
    assert_eq!(by_phone.len(), 1);
    ds.cleanup().await;
}

#[tokio::test]
async fn the_journal_is_appended_to_contact_changes_once() {
    let ds = TestDataset::create("journal").await;
    let store = ds.store().await;
    let entries: Vec<JournalEntry> = (1..=3)
        .map(|i| JournalEntry {
            seq: i,
            contact_id: format!("j-{i}"),
            version: 1,
            prev_version: 0,
            op: Op::Upsert,
            origin: "twenty".into(),
            changes: vec![contact_sync_core::FieldChange {
                field: "canonical_name".into(),
                old: Value::Null,
                new: json!("Jay"),
            }],
            conflicts: vec![],
            after: full_contact(&format!("j-{i}")),
            hash: "h".into(),
            at: contact_sync_core::model::now(),
        })
        .collect();
    assert_eq!(
        store.append_journal_rows(&entries).await.expect("append"),
        3
    );
    assert_eq!(
        store
            .append_journal_rows(&entries)
            .await
            .expect("append again (retry)"),
        0,
        "a retried append inserts nothing"
    );
    let res = ds
        .client
        .query(
            &format!(
                "SELECT contact_id, op, changed_fields, JSON_VALUE(after, '$.canonical_name') AS name FROM {} ORDER BY seq",
                ds.table_sql("contact_changes")
            ),
            &[],
            "read journal",
        )
        .await
        .expect("query");
    assert_eq!(res.rows.len(), 3, "a retried append is deduplicated by seq");
    assert_eq!(res.rows[0]["changed_fields"], json!(["canonical_name"]));
    assert_eq!(res.rows[0]["name"], json!("Ada Augusta King"));
    ds.cleanup().await;
}

#[tokio::test]
async fn store_info() {
    let ds = TestDataset::create("info").await;
    let store = ds.store().await;
    assert_eq!(store.name(), "canonical");
    assert!(store.keeps_version());
    assert_eq!(
        store.table_name(),
        format!("{PROJECT}.{}.contacts", ds.dataset)
    );
    ds.cleanup().await;
}

#[tokio::test]
async fn results_larger_than_a_page_are_read_page_by_page() {
    let url = common::url();
    let mut cfg = contact_sync_bigquery::ClientConfig::emulator(&url, PROJECT);
    cfg.page_size = 7;
    let client = contact_sync_bigquery::BigQueryClient::new(
        cfg,
        std::sync::Arc::new(contact_sync_bigquery::NoAuth),
    )
    .expect("client");
    let ds = TestDataset {
        client,
        dataset: format!("t_pages_{}", uuid::Uuid::new_v4().simple()),
    };
    let mut store = ds.store().await;
    let mut g = Generator::new(11);
    let batch: Vec<Contact> = (0..40).map(|i| g.contact(i)).collect();
    store.write_batch(&batch).await.expect("write");
    let before = ds.client.stats();
    let all = store.scan(None, 1000).await.expect("scan");
    let after = ds.client.stats();
    assert_eq!(all.len(), 40);
    assert_eq!(after.jobs - before.jobs, 1, "one query job");
    assert!(
        after.calls - before.calls >= 6,
        "40 rows in pages of 7 take 6 calls: {before:?} → {after:?}"
    );
    let (changes, _) = drain(&mut store, None, 1000).await;
    assert_eq!(changes.len(), 40);
    let mut ids: Vec<String> = all.iter().map(|c| c.contact_id.clone()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 40, "no row twice across pages");
    ds.cleanup().await;
}

#[tokio::test]
async fn unbounded_limits_are_served_in_pages() {
    let ds = TestDataset::create("unbounded").await;
    let mut store = ds.store().await;
    let mut g = Generator::new(3);
    let batch: Vec<Contact> = (0..5).map(|i| g.contact(i)).collect();
    store.write_batch(&batch).await.expect("write");
    assert_eq!(store.scan(None, usize::MAX).await.expect("scan").len(), 5);
    let b = store
        .read_changes(None, usize::MAX)
        .await
        .expect("read_changes");
    assert_eq!((b.changes.len(), b.has_more), (5, false));
    store.acknowledge(&b.checkpoint).await.expect("acknowledge");
    let none = store
        .read_changes(Some(&b.checkpoint), 0)
        .await
        .expect("read_changes");
    assert!(none.changes.is_empty() && !none.has_more);
    ds.cleanup().await;
}

/// A hard DELETE is found by the sweep only for rows whose fingerprint the
/// sidecar holds. Found by the soak benchmark (issue 15): acknowledged
/// fingerprints stayed in memory until the next sweep, so a process that
/// ended first (every `run --once`, a restart) left the sidecar without
/// them and deletes of those rows never arrived; and a batch read but never
/// applied (the cycle failed) was taken as acknowledged by the next batch
/// read from the same checkpoint, dropping a delete it carried.
#[tokio::test]
async fn hard_deletes_arrive_after_a_restart_and_after_an_abandoned_batch() {
    let ds = TestDataset::create("harddel").await;
    let mut first = ds.store().await;
    let t = ds.table_sql("contacts");
    let dml = |sql: String, id: &'static str| {
        let client = ds.client.clone();
        async move {
            client
                .query(&sql, &[QueryParam::string("id", id)], "another tool's DML")
                .await
                .expect("DML");
        }
    };
    for id in ["h-a", "h-b", "h-c"] {
        dml(
            format!(
                "INSERT INTO {t} (contact_id, canonical_name, version, last_updated) \
                 VALUES (@id, 'Someone', 1, TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 1 MINUTE))"
            ),
            id,
        )
        .await;
    }
    let gone = |changes: &[contact_sync_connector::Change]| -> Vec<String> {
        changes
            .iter()
            .filter(|c| matches!(c.kind, ChangeKind::Delete { .. }))
            .map(|c| c.native_id.clone())
            .collect()
    };

    // A process delivers and acknowledges the rows, then ends.
    let (seen, cp) = drain(&mut first, None, 100).await;
    assert_eq!(upserts(&seen).len(), 3, "{seen:?}");
    drop(first);
    dml(format!("DELETE FROM {t} WHERE contact_id = @id"), "h-a").await;
    // The next process sees the delete.
    let mut store = ds.store().await;
    let (changes, cp) = drain(&mut store, Some(cp), 100).await;
    assert_eq!(gone(&changes), vec!["h-a".to_string()], "{changes:?}");

    // A batch carrying a delete is read but never applied; the engine reads
    // again from the same checkpoint, gets another change and acknowledges
    // that batch: the delete must still arrive.
    dml(format!("DELETE FROM {t} WHERE contact_id = @id"), "h-b").await;
    let abandoned = store.read_changes(Some(&cp), 100).await.expect("read");
    assert_eq!(gone(&abandoned.changes), vec!["h-b".to_string()]);
    dml(
        format!(
            "UPDATE {t} SET notes = 'edited', last_updated = CURRENT_TIMESTAMP() WHERE contact_id = @id"
        ),
        "h-c",
    )
    .await;
    let other = store
        .read_changes(Some(&cp), 100)
        .await
        .expect("read again");
    assert_eq!(upserts(&other.changes), vec![("h-c".to_string(), 1)]);
    store.acknowledge(&other.checkpoint).await.expect("ack");
    let (rest, _) = drain(&mut store, Some(other.checkpoint), 100).await;
    assert_eq!(gone(&rest), vec!["h-b".to_string()], "{rest:?}");
    ds.cleanup().await;
}

/// What `drift` reports of a BigQuery table: every row it cannot read,
/// named (id, field, reason with the value masked), beside the hashes of
/// the rest, page by page. The bad rows are made as a user would, with
/// Google's official client: INSERTs whose `external_ids` is a JSON array,
/// or holds an object where an id belongs. (local-bigquery 0.4.0 refuses
/// an UPDATE of a JSON column: "Equality is not defined for arguments of
/// type JSON".)
#[tokio::test]
async fn scan_hashes_checked_names_every_row_it_cannot_read() {
    let ds = TestDataset::create("unreadable").await;
    let mut s = ds.store().await;
    let mut g = Generator::new(3);
    let seed: Vec<Contact> = (0..4).map(|i| g.contact(i)).collect();
    s.write_batch(&seed).await.expect("seed");
    common::python(
        &ds,
        r#"run(f"INSERT INTO {T} (contact_id, canonical_name, version, external_ids) VALUES ('c900000001', 'New Row', 1, JSON '[1, 2]')")
run(f"""INSERT INTO {T} (contact_id, canonical_name, version, external_ids) VALUES ('c000000002a', 'Other Row', 1, JSON '{{"crm": {{"n": "secret@example.com"}}}}')""")"#,
    );
    let id = Generator::contact_id;

    let all = s.scan_hashes_checked(None, 100).await.expect("scan");
    let ids: Vec<&str> = all.hashes.iter().map(|h| h.contact_id.as_str()).collect();
    assert_eq!(
        ids,
        [id(0), id(1), id(2), id(3)],
        "the readable rows are compared"
    );
    let bad: Vec<(&str, &str, &str)> = all
        .unreadable
        .iter()
        .map(|u| {
            (
                u.contact_id.as_str(),
                u.native_id.as_str(),
                u.invalid.field.as_str(),
            )
        })
        .collect();
    assert_eq!(
        bad,
        [
            ("c000000002a", "c000000002a", "external_ids"),
            ("c900000001", "c900000001", "external_ids")
        ]
    );
    let reason = all.unreadable[0].invalid.log_reason().to_string();
    assert!(reason.contains("crm"), "{reason}");
    assert!(!reason.contains("secret@example.com"), "masked: {reason}");
    assert_eq!(all.last.as_deref(), Some("c900000001"));
    // `scan` leaves them out, as before.
    assert_eq!(s.scan(None, 100).await.expect("scan").len(), 4);

    // Page by page: an unreadable row counts in the page and moves `last`.
    let mut after: Option<String> = None;
    let (mut hashes, mut unreadable) = (0, 0);
    loop {
        let p = s
            .scan_hashes_checked(after.as_deref(), 2)
            .await
            .expect("page");
        assert!(p.hashes.len() + p.unreadable.len() <= 2);
        hashes += p.hashes.len();
        unreadable += p.unreadable.len();
        match p.last {
            Some(l) => after = Some(l),
            None => break,
        }
    }
    assert_eq!((hashes, unreadable), (4, 2));
    ds.cleanup().await;
}
