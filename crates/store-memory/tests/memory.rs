//! MemoryStore: the store contract (through the conformance suite) and the
//! behaviour engine tests rely on (crash/restart, user edits, write log).

use contact_sync_connector::{
    Change, ChangeKind, ChangeSource, Checkpoint, RecordSink, RetryClass, StoreInfo, WriteOutcome,
};
use contact_sync_core::model::parse_ts;
use contact_sync_core::{content_hash, Contact, Email};
use contact_sync_memory::conformance::{sample_contact, sink_contract, source_contract};
use contact_sync_memory::{MemoryHandle, MemoryOptions, MemoryStore};

fn contact(id: &str, name: &str, version: i64) -> Contact {
    let mut c = Contact::new(id, name);
    c.version = version;
    c
}

fn upserted(ch: &Change) -> &Contact {
    match &ch.kind {
        ChangeKind::Upsert(c) => c,
        other => panic!("expected an upsert, got {other:?}"),
    }
}

#[tokio::test]
async fn keeps_the_sink_contract_in_every_mode() {
    for keeps_version in [true, false] {
        for own_ids in [false, true] {
            let opts = MemoryOptions::new(format!("mem-v{keeps_version}-own{own_ids}"))
                .keeps_version(keeps_version)
                .own_ids(own_ids);
            let (mut store, _) = MemoryStore::with_options(opts);
            sink_contract(&mut store).await;
        }
    }
}

#[tokio::test]
async fn keeps_the_source_contract() {
    for own_ids in [false, true] {
        let (mut store, handle) =
            MemoryStore::with_options(MemoryOptions::new("mem").own_ids(own_ids));
        // Changes from before the contract run must be skipped by it.
        handle.user_upsert(contact("pre-existing", "Old", 1));
        source_contract(&mut store).await;
    }
}

#[tokio::test]
async fn data_and_unacknowledged_changes_survive_a_restart() {
    let (mut store, handle) = MemoryStore::with_options(MemoryOptions::new("local"));
    store
        .write_batch(&[contact("c1", "Ada", 1), contact("c2", "Bob", 1)])
        .await
        .unwrap();
    let first = store.read_changes(None, 1).await.unwrap();
    assert_eq!(first.changes.len(), 1);
    assert!(first.has_more);
    store.acknowledge(&first.checkpoint).await.unwrap();
    drop(store); // crash

    let mut store = MemoryStore::new(handle.clone());
    assert_eq!(store.count().await.unwrap(), 2);
    let rest = store.read_changes(None, 10).await.unwrap();
    assert_eq!(
        rest.changes.len(),
        1,
        "only the unacknowledged change is left"
    );
    assert_eq!(upserted(&rest.changes[0]).contact_id, "c2");
    assert!(!rest.has_more);
    // Reading again from the stored checkpoint repeats it.
    let again = store
        .read_changes(Some(&first.checkpoint), 10)
        .await
        .unwrap();
    assert_eq!(again, rest);
    store.acknowledge(&rest.checkpoint).await.unwrap();
    assert!(handle.pending_changes().is_empty());
    let empty = store.read_changes(None, 10).await.unwrap();
    assert!(empty.changes.is_empty());
    assert_eq!(
        empty.checkpoint, rest.checkpoint,
        "empty read stays at the head"
    );
}

#[tokio::test]
async fn user_edits_are_stored_as_typed_and_read_normalized() {
    let (mut store, handle) = MemoryStore::with_options(MemoryOptions::new("local"));
    let mut c = contact("c1", "  Ada Lovelace ", 4);
    c.job_title = Some("".into());
    c.emails.push(Email {
        address: " Ada@Example.COM".into(),
        label: None,
        is_primary: true,
    });
    handle.user_upsert(c);
    let got = handle.get("c1").unwrap();
    assert_eq!(got.canonical_name, "Ada Lovelace");
    assert_eq!(got.job_title, None);
    assert_eq!(got.version, 4, "a user edit bumps nothing");
    let change = store.read_changes(None, 10).await.unwrap();
    assert_eq!(upserted(&change.changes[0]), &got);
    let found = store
        .find_by_identity(&["ada@example.com".into()], &[])
        .await
        .unwrap();
    assert_eq!(found, vec![got]);
}

#[tokio::test]
async fn hard_and_soft_deletes_appear_in_the_change_log() {
    let (mut store, handle) = MemoryStore::with_options(MemoryOptions::new("local"));
    handle.user_upsert(contact("c1", "Ada", 1));
    handle.user_upsert(contact("c2", "Bob", 1));
    let at = parse_ts("2025-01-01T00:00:00Z").unwrap();
    assert!(handle.user_soft_delete("c1", at));
    assert!(handle.user_delete("c2"));
    assert!(!handle.user_delete("c2"), "already gone");

    let changes = store.read_changes(None, 10).await.unwrap().changes;
    assert_eq!(changes.len(), 4);
    assert_eq!(upserted(&changes[2]).deleted_at, Some(at));
    assert_eq!(
        changes[3],
        Change {
            native_id: "c2".into(),
            kind: ChangeKind::Delete {
                contact_id: Some("c2".into())
            }
        }
    );
    assert_eq!(handle.get("c2"), None);
    assert_eq!(handle.all().len(), 1, "the soft-deleted record is kept");
    assert!(handle.live().is_empty());
    assert_eq!(store.count().await.unwrap(), 0);
}

#[tokio::test]
async fn engine_writes_are_echoed_unless_disabled() {
    let (mut echo, _) = MemoryStore::with_options(MemoryOptions::new("a"));
    echo.write_batch(&[contact("c1", "Ada", 1)]).await.unwrap();
    assert_eq!(echo.read_changes(None, 10).await.unwrap().changes.len(), 1);

    let (mut quiet, handle) =
        MemoryStore::with_options(MemoryOptions::new("b").echo_own_writes(false));
    quiet.write_batch(&[contact("c1", "Ada", 1)]).await.unwrap();
    assert!(quiet
        .read_changes(None, 10)
        .await
        .unwrap()
        .changes
        .is_empty());
    handle.user_upsert(contact("c1", "Ada L.", 1));
    assert_eq!(quiet.read_changes(None, 10).await.unwrap().changes.len(), 1);
}

#[tokio::test]
async fn write_log_counts_redundant_writes() {
    let (mut store, handle) = MemoryStore::with_options(MemoryOptions::new("local"));
    let v1 = contact("c1", "Ada", 1);
    store.write_batch(std::slice::from_ref(&v1)).await.unwrap();
    // The same record again: applied, but redundant.
    store.write_batch(std::slice::from_ref(&v1)).await.unwrap();
    // Same content at a newer version: not redundant (it brings the
    // store's version to canonical's).
    store.write_batch(&[contact("c1", "Ada", 2)]).await.unwrap();
    store
        .write_batch(&[contact("c1", "Ada L.", 3)])
        .await
        .unwrap();
    let w = handle.writes();
    assert_eq!(
        w.iter().map(|w| w.changed_content).collect::<Vec<_>>(),
        vec![true, false, true, true]
    );
    assert_eq!(w[0].hash, content_hash(&v1));
    assert_eq!(w[2].version, 2);
    assert!(w.iter().all(|w| w.applied && w.contact_id == "c1"));
    assert_eq!(handle.redundant_writes(), 1);
    // A stale write is logged as not applied.
    store.write_batch(&[contact("c1", "Old", 1)]).await.unwrap();
    assert!(!handle.writes()[4].applied);
    handle.clear_write_log();
    assert!(handle.writes().is_empty());
    // User edits are not engine writes.
    handle.user_upsert(contact("c1", "Ada", 9));
    assert!(handle.writes().is_empty());
}

#[tokio::test]
async fn without_versions_every_write_applies() {
    let (mut store, handle) =
        MemoryStore::with_options(MemoryOptions::new("crm").keeps_version(false));
    assert!(!store.keeps_version());
    store.write_batch(&[contact("c1", "New", 5)]).await.unwrap();
    let out = store
        .write_batch(&[contact("c1", "Older", 2)])
        .await
        .unwrap();
    assert!(matches!(out[0], WriteOutcome::Applied { .. }));
    let got = handle.get("c1").unwrap();
    assert_eq!(
        (got.canonical_name.as_str(), got.version),
        ("Older", 2),
        "version stored as given"
    );
}

#[tokio::test]
async fn own_ids_assign_native_ids_and_retries_reuse_them() {
    let (mut store, handle) = MemoryStore::with_options(MemoryOptions::new("crm").own_ids(true));
    let out = store.write_batch(&[contact("c1", "Ada", 1)]).await.unwrap();
    let WriteOutcome::Applied { native_id } = &out[0] else {
        panic!("{out:?}")
    };
    assert_ne!(native_id, "c1");
    let retry = store.write_batch(&[contact("c1", "Ada", 1)]).await.unwrap();
    assert_eq!(retry, out, "a retry lands on the same record");
    assert_eq!(handle.all().len(), 1);
    let changes = store.read_changes(None, 10).await.unwrap().changes;
    assert!(changes.iter().all(|c| &c.native_id == native_id));
}

#[tokio::test]
async fn a_record_created_without_id_gets_its_id_written_back() {
    for own_ids in [true, false] {
        let (mut store, handle) =
            MemoryStore::with_options(MemoryOptions::new("crm").own_ids(own_ids));
        let native = handle.user_create_without_id(sample_contact("ignored", 1));
        let change = store.read_changes(None, 10).await.unwrap();
        assert_eq!(change.changes[0].native_id, native);
        assert_eq!(upserted(&change.changes[0]).contact_id, "");
        assert_eq!(store.count().await.unwrap(), 1);
        assert!(
            store.scan(None, 10).await.unwrap().is_empty(),
            "no contact_id yet"
        );

        // The engine mints an id and writes it back, naming the native id.
        let mut back = sample_contact("minted-1", 1);
        back.external_ids.insert("crm".into(), native.clone());
        let out = store.write_batch(&[back.clone()]).await.unwrap();
        let expected_native = if own_ids {
            native.clone()
        } else {
            "minted-1".to_string()
        };
        assert_eq!(
            out,
            vec![WriteOutcome::Applied {
                native_id: expected_native
            }]
        );
        assert_eq!(handle.all().len(), 1, "own_ids={own_ids}: no duplicate");
        assert_eq!(
            handle.get("minted-1").map(|c| content_hash(&c)),
            Some(content_hash(&{
                let mut b = back.clone();
                b.normalize();
                b
            }))
        );
        assert_eq!(store.count().await.unwrap(), 1);
    }
}

#[tokio::test]
async fn a_second_record_cannot_take_a_held_contact_id() {
    let (mut store, handle) = MemoryStore::with_options(MemoryOptions::new("crm").own_ids(true));
    store.write_batch(&[contact("c1", "Ada", 1)]).await.unwrap();
    let native = handle.user_create_without_id(contact("", "Ada again", 1));
    let mut clash = contact("c1", "Ada again", 2);
    clash.external_ids.insert("crm".into(), native);
    let out = store.write_batch(&[clash]).await.unwrap();
    assert!(
        matches!(&out[0], WriteOutcome::Rejected { field, .. } if field == "contact_id"),
        "{out:?}"
    );
}

#[tokio::test]
async fn bad_checkpoints_are_permanent_errors() {
    let (mut store, _) = MemoryStore::with_options(MemoryOptions::new("local"));
    let err = store
        .read_changes(Some(&Checkpoint::new("lsn/0")), 10)
        .await
        .unwrap_err();
    assert_eq!(err.class, RetryClass::Permanent);
    assert!(err.to_string().starts_with("local:"), "{err}");
    let err = store.acknowledge(&Checkpoint::new("5")).await.unwrap_err();
    assert_eq!(err.class, RetryClass::Permanent, "beyond the head: {err}");
}

#[tokio::test]
async fn handles_share_one_store() {
    let handle = MemoryHandle::new(MemoryOptions::new("local"));
    let mut a = handle.store();
    let mut b = MemoryStore::new(handle.clone());
    a.write_batch(&[contact("c1", "Ada", 1)]).await.unwrap();
    assert_eq!(b.read(&["c1".into()]).await.unwrap().len(), 1);
    assert_eq!(b.name(), "local");
}
