//! The SQLite store against real SQLite files in temp dirs; user edits are
//! made through a second plain rusqlite connection, as the sqlite3 CLI would.

mod common;

use std::path::PathBuf;

use chrono::{TimeZone, Utc};
use contact_sync_connector::{
    ChangeKind, ChangeSource, Checkpoint, RecordSink, StoreInfo, WriteOutcome,
};
use contact_sync_core::model::ALL_FIELDS;
use contact_sync_core::{Contact, Email, Phone};
use contact_sync_sqlite::SqliteStore;
use rusqlite::Connection;

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    store: SqliteStore,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("local.db");
    let store = SqliteStore::open(&path, "local").expect("open store");
    Fixture {
        _dir: dir,
        path,
        store,
    }
}

/// A second connection, like the sqlite3 CLI.
fn cli(path: &PathBuf) -> Connection {
    let c = Connection::open(path).expect("open cli connection");
    c.busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy timeout");
    c
}

fn applied_id(o: &WriteOutcome) -> String {
    match o {
        WriteOutcome::Applied { native_id } => native_id.clone(),
        other => panic!("expected Applied, got {other:?}"),
    }
}

async fn all_changes(store: &mut SqliteStore) -> Vec<contact_sync_connector::Change> {
    store
        .read_changes(None, 1_000)
        .await
        .expect("read_changes")
        .changes
}

#[tokio::test]
async fn all_33_fields_round_trip() {
    let mut f = fixture();
    let mut c = common::full_contact(7);
    // Every field set, the tombstone too.
    c.deleted_at = Some(Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).unwrap());
    c.external_ids.insert("local".into(), "x".into());
    let json = serde_json::to_value(&c).expect("to json");
    for field in ALL_FIELDS {
        assert!(!json[*field].is_null(), "test contact must fill `{field}`");
    }
    assert_eq!(json.as_object().map(|m| m.len()), Some(33));

    let out = f
        .store
        .write_batch(std::slice::from_ref(&c))
        .await
        .expect("write");
    assert_eq!(out.len(), 1);
    applied_id(&out[0]);
    let back = f
        .store
        .read(std::slice::from_ref(&c.contact_id))
        .await
        .expect("read");
    assert_eq!(back, vec![c.clone()]);
    let scanned = f.store.scan(None, 10).await.expect("scan");
    assert_eq!(scanned, vec![c.clone()]);

    // Stored as documented: JSON text and RFC 3339 text.
    let db = cli(&f.path);
    let (emails, created, version): (String, String, i64) = db
        .query_row(
            "SELECT emails, created_at, version FROM contacts WHERE contact_id = ?1",
            [&c.contact_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("row");
    assert!(emails.starts_with("[{\"address\""), "{emails}");
    assert!(created.ends_with('Z') && created.contains('T'), "{created}");
    assert_eq!(version, c.version);
    assert_eq!(f.store.name(), "local");
    assert!(f.store.keeps_version());
    assert_eq!(f.store.path(), f.path.as_path());
}

#[tokio::test]
async fn writing_twice_is_idempotent() {
    let mut f = fixture();
    let batch: Vec<Contact> = (0..3).map(common::full_contact).collect();
    let first = f.store.write_batch(&batch).await.expect("write 1");
    let second = f.store.write_batch(&batch).await.expect("write 2");
    assert_eq!(first, second, "same row ids both times");
    assert_eq!(f.store.count().await.expect("count"), 3);
    let rows: i64 = cli(&f.path)
        .query_row("SELECT count(*) FROM contacts", [], |r| r.get(0))
        .expect("count rows");
    assert_eq!(rows, 3);
    let ids: Vec<String> = batch.iter().map(|c| c.contact_id.clone()).collect();
    let mut back = f.store.read(&ids).await.expect("read");
    back.sort_by(|a, b| a.contact_id.cmp(&b.contact_id));
    assert_eq!(back, batch);
}

#[tokio::test]
async fn lower_version_is_stale_and_changes_nothing() {
    let mut f = fixture();
    let mut c = common::full_contact(1);
    c.version = 5;
    c.job_title = Some("CEO".into());
    f.store
        .write_batch(std::slice::from_ref(&c))
        .await
        .expect("write v5");

    let mut older = c.clone();
    older.version = 4;
    older.job_title = Some("Intern".into());
    let out = f.store.write_batch(&[older]).await.expect("write v4");
    assert_eq!(out, vec![WriteOutcome::Stale { stored_version: 5 }]);
    let back = f
        .store
        .read(std::slice::from_ref(&c.contact_id))
        .await
        .expect("read");
    assert_eq!(back[0].job_title.as_deref(), Some("CEO"));

    // Equal version applies; higher applies.
    let mut same = c.clone();
    same.job_title = Some("Chair".into());
    applied_id(&f.store.write_batch(&[same]).await.expect("write v5 again")[0]);
    let mut newer = c.clone();
    newer.version = 6;
    newer.job_title = Some("Founder".into());
    applied_id(&f.store.write_batch(&[newer]).await.expect("write v6")[0]);
    let back = f
        .store
        .read(std::slice::from_ref(&c.contact_id))
        .await
        .expect("read");
    assert_eq!(back[0].job_title.as_deref(), Some("Founder"));
    assert_eq!(back[0].version, 6);
}

#[tokio::test]
async fn a_batch_mixes_outcomes_per_record() {
    let mut f = fixture();
    let mut a = common::full_contact(1);
    a.version = 3;
    f.store
        .write_batch(std::slice::from_ref(&a))
        .await
        .expect("seed");
    let mut stale = a.clone();
    stale.version = 2;
    let fresh = common::full_contact(2);
    let no_id = Contact::new("", "Nobody");
    let out = f
        .store
        .write_batch(&[stale, fresh.clone(), no_id])
        .await
        .expect("batch");
    assert_eq!(out[0], WriteOutcome::Stale { stored_version: 3 });
    applied_id(&out[1]);
    assert!(
        matches!(&out[2], WriteOutcome::Rejected { field, .. } if field == "contact_id"),
        "{:?}",
        out[2]
    );
    assert_eq!(f.store.count().await.expect("count"), 2);
}

#[tokio::test]
async fn tombstone_keeps_the_row_with_deleted_at() {
    let mut f = fixture();
    let c = common::full_contact(3);
    let row = applied_id(
        &f.store
            .write_batch(std::slice::from_ref(&c))
            .await
            .expect("write")[0],
    );
    let mut dead = c.clone();
    dead.version += 1;
    dead.deleted_at = Some(Utc.with_ymd_and_hms(2026, 11, 1, 12, 0, 0).unwrap());
    let row2 = applied_id(
        &f.store
            .write_batch(std::slice::from_ref(&dead))
            .await
            .expect("delete")[0],
    );
    assert_eq!(row, row2, "same row, kept");
    assert_eq!(f.store.count().await.expect("count"), 0, "not live");
    let back = f
        .store
        .read(std::slice::from_ref(&c.contact_id))
        .await
        .expect("read");
    assert_eq!(back, vec![dead.clone()]);
    assert_eq!(f.store.scan(None, 10).await.expect("scan"), vec![dead]);
}

#[tokio::test]
async fn user_edits_are_captured_with_the_full_row_and_own_writes_are_not() {
    let mut f = fixture();
    let c = common::full_contact(4);
    let row = applied_id(
        &f.store
            .write_batch(std::slice::from_ref(&c))
            .await
            .expect("write")[0],
    );
    assert!(
        all_changes(&mut f.store).await.is_empty(),
        "own write echoed"
    );

    let db = cli(&f.path);
    db.execute(
        "UPDATE contacts SET job_title = 'CTO' WHERE contact_id = ?1",
        [&c.contact_id],
    )
    .expect("user update");
    let changes = all_changes(&mut f.store).await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].native_id, row);
    let mut expected = c.clone();
    expected.job_title = Some("CTO".into());
    assert_eq!(changes[0].kind, ChangeKind::Upsert(Box::new(expected)));

    // Still nothing from the store's own writes after a user edit.
    let mut again = c.clone();
    again.version += 1;
    f.store.write_batch(&[again]).await.expect("write 2");
    assert_eq!(all_changes(&mut f.store).await.len(), 1);
    let suppress: i64 = db
        .query_row("SELECT suppress FROM _contact_sync_control", [], |r| {
            r.get(0)
        })
        .expect("control");
    assert_eq!(suppress, 0, "other connections only ever see capture on");
}

#[tokio::test]
async fn user_insert_without_contact_id_is_captured_with_its_row_id() {
    let mut f = fixture();
    let db = cli(&f.path);
    db.execute(
        "INSERT INTO contacts (canonical_name, emails, created_at) VALUES \
         ('Grace Hopper', '[{\"address\":\"Grace@Navy.mil\",\"is_primary\":true}]', '2024-05-06 07:08:09')",
        [],
    )
    .expect("user insert");
    let row = db.last_insert_rowid().to_string();
    let changes = all_changes(&mut f.store).await;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].native_id, row);
    let ChangeKind::Upsert(c) = &changes[0].kind else {
        panic!("expected upsert, got {:?}", changes[0].kind)
    };
    assert_eq!(c.contact_id, "");
    assert_eq!(c.canonical_name, "Grace Hopper");
    assert_eq!(c.version, 1);
    assert_eq!(c.primary_email(), Some("grace@navy.mil"));
    assert_eq!(
        c.created_at,
        Some(Utc.with_ymd_and_hms(2024, 5, 6, 7, 8, 9).unwrap())
    );
    // A record without contact_id is not a record of the sink yet.
    assert!(f.store.scan(None, 10).await.expect("scan").is_empty());
    assert_eq!(f.store.count().await.expect("count"), 0);
}

#[tokio::test]
async fn write_back_of_a_minted_id_updates_the_users_row() {
    let mut f = fixture();
    let db = cli(&f.path);
    db.execute(
        "INSERT INTO contacts (canonical_name) VALUES ('Ada Lovelace')",
        [],
    )
    .expect("user insert");
    let row = db.last_insert_rowid().to_string();
    let seen = f.store.read_changes(None, 10).await.expect("changes");
    f.store.acknowledge(&seen.checkpoint).await.expect("ack");

    let mut minted = Contact::new("minted-1", "Ada Lovelace");
    minted.external_ids.insert("local".into(), row.clone());
    minted.emails.push(Email {
        address: "ada@example.com".into(),
        label: None,
        is_primary: true,
    });
    let out = f
        .store
        .write_batch(std::slice::from_ref(&minted))
        .await
        .expect("write back");
    assert_eq!(
        out,
        vec![WriteOutcome::Applied {
            native_id: row.clone()
        }]
    );
    // Retrying the same write is idempotent (now keyed by contact_id).
    let out = f
        .store
        .write_batch(std::slice::from_ref(&minted))
        .await
        .expect("retry");
    assert_eq!(
        out,
        vec![WriteOutcome::Applied {
            native_id: row.clone()
        }]
    );

    let rows: Vec<(i64, Option<String>)> = db
        .prepare("SELECT id, contact_id FROM contacts")
        .expect("prepare")
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(
        rows,
        vec![(row.parse().unwrap(), Some("minted-1".to_string()))]
    );
    assert!(
        all_changes(&mut f.store).await.is_empty(),
        "write-back echoed"
    );
    let found = f
        .store
        .find_by_identity(&["ada@example.com".into()], &[])
        .await
        .expect("find");
    assert_eq!(found.len(), 1);
}

#[tokio::test]
async fn write_back_onto_a_contact_the_store_already_has_removes_the_duplicate() {
    let mut f = fixture();
    let existing = common::full_contact(9);
    let kept = applied_id(
        &f.store
            .write_batch(std::slice::from_ref(&existing))
            .await
            .expect("seed")[0],
    );
    let db = cli(&f.path);
    db.execute("INSERT INTO contacts (canonical_name) VALUES ('dup')", [])
        .expect("user insert");
    let dup = db.last_insert_rowid().to_string();

    let mut merged = existing.clone();
    merged.version += 1;
    merged.external_ids.insert("local".into(), dup);
    let out = f.store.write_batch(&[merged]).await.expect("write");
    assert_eq!(out, vec![WriteOutcome::Applied { native_id: kept }]);
    let rows: i64 = db
        .query_row("SELECT count(*) FROM contacts", [], |r| r.get(0))
        .expect("count");
    assert_eq!(rows, 1);
}

#[tokio::test]
async fn user_delete_is_a_delete_change() {
    let mut f = fixture();
    let c = common::full_contact(5);
    let row = applied_id(
        &f.store
            .write_batch(std::slice::from_ref(&c))
            .await
            .expect("write")[0],
    );
    let db = cli(&f.path);
    db.execute(
        "DELETE FROM contacts WHERE contact_id = ?1",
        [&c.contact_id],
    )
    .expect("user delete");
    db.execute("INSERT INTO contacts (canonical_name) VALUES ('x')", [])
        .expect("insert");
    db.execute("DELETE FROM contacts WHERE contact_id IS NULL", [])
        .expect("delete unnamed");
    let changes = all_changes(&mut f.store).await;
    assert_eq!(changes.len(), 3);
    assert_eq!(changes[0].native_id, row);
    assert_eq!(
        changes[0].kind,
        ChangeKind::Delete {
            contact_id: Some(c.contact_id.clone())
        }
    );
    assert_eq!(changes[2].kind, ChangeKind::Delete { contact_id: None });
}

#[tokio::test]
async fn broken_values_typed_by_a_user_are_undecodable_naming_record_and_field() {
    let mut f = fixture();
    let c = common::full_contact(6);
    f.store
        .write_batch(std::slice::from_ref(&c))
        .await
        .expect("write");
    let db = cli(&f.path);
    db.execute(
        "UPDATE contacts SET llm_context = '{\"relationship_arc\": \"oops' WHERE contact_id = ?1",
        [&c.contact_id],
    )
    .expect("broken json is accepted by sqlite");
    db.execute(
        "INSERT INTO contacts (canonical_name, created_at) VALUES ('Bad Date', 'last tuesday')",
        [],
    )
    .expect("insert");
    let bad_row = db.last_insert_rowid();
    db.execute(
        "INSERT INTO contacts (contact_id, canonical_name, emails) VALUES ('c-shape', 'Shape', '{\"address\": \"a@b.c\"}')",
        [],
    )
    .expect("insert");

    let changes = all_changes(&mut f.store).await;
    assert_eq!(changes.len(), 3);
    let undecodable: Vec<_> = changes
        .iter()
        .map(|ch| match &ch.kind {
            ChangeKind::Undecodable { invalid, payload } => {
                assert!(payload.is_some());
                (invalid.record.clone(), invalid.field.clone())
            }
            other => panic!("expected undecodable, got {other:?}"),
        })
        .collect();
    assert_eq!(
        undecodable,
        vec![
            (c.contact_id.clone(), "llm_context".to_string()),
            (format!("row {bad_row}"), "created_at".to_string()),
            ("c-shape".to_string(), "emails".to_string()),
        ]
    );
    // The payload is the row image, broken value included.
    if let ChangeKind::Undecodable {
        payload: Some(p), ..
    } = &changes[0].kind
    {
        assert_eq!(p["llm_context"], "{\"relationship_arc\": \"oops");
        assert_eq!(p["contact_id"], c.contact_id.as_str());
    }
    // Reads leave the broken row out instead of failing.
    assert!(f
        .store
        .read(std::slice::from_ref(&c.contact_id))
        .await
        .expect("read")
        .is_empty());
}

#[tokio::test]
async fn changes_replay_from_a_checkpoint_until_acknowledged() {
    let mut f = fixture();
    let db = cli(&f.path);
    for i in 0..5 {
        db.execute(
            "INSERT INTO contacts (contact_id, canonical_name) VALUES (?1, 'n')",
            [format!("u{i}")],
        )
        .expect("insert");
    }
    let first = f.store.read_changes(None, 2).await.expect("page 1");
    assert_eq!(first.changes.len(), 2);
    assert!(first.has_more);
    let replay = f.store.read_changes(None, 2).await.expect("page 1 again");
    assert_eq!(replay, first, "reading does not consume");

    let second = f
        .store
        .read_changes(Some(&first.checkpoint), 10)
        .await
        .expect("page 2");
    assert_eq!(second.changes.len(), 3);
    assert!(!second.has_more);
    let native: Vec<&str> = first
        .changes
        .iter()
        .chain(&second.changes)
        .map(|c| c.native_id.as_str())
        .collect();
    assert_eq!(native, vec!["1", "2", "3", "4", "5"], "commit order");

    // Acknowledging the first page discards only it.
    f.store.acknowledge(&first.checkpoint).await.expect("ack");
    f.store
        .acknowledge(&Checkpoint::new("1"))
        .await
        .expect("older ack is a no-op");
    let rest = f.store.read_changes(None, 10).await.expect("after ack");
    assert_eq!(rest.changes, second.changes);
    assert_eq!(rest.checkpoint, second.checkpoint);
    // An empty read keeps the checkpoint.
    let empty = f
        .store
        .read_changes(Some(&second.checkpoint), 10)
        .await
        .expect("empty");
    assert!(empty.changes.is_empty());
    assert_eq!(empty.checkpoint, second.checkpoint);
    assert!(f
        .store
        .read_changes(Some(&Checkpoint::new("not a number")), 10)
        .await
        .is_err());
    // Reopening the store keeps unacknowledged changes (durable).
    drop(f.store);
    let mut reopened = SqliteStore::open(&f.path, "local").expect("reopen");
    assert_eq!(
        reopened
            .read_changes(None, 10)
            .await
            .expect("after reopen")
            .changes,
        second.changes
    );
}

#[tokio::test]
async fn find_by_identity_matches_primary_email_or_phone() {
    let mut f = fixture();
    let mut a = Contact::new("a", "A");
    a.emails = vec![
        Email {
            address: "other@x.org".into(),
            label: None,
            is_primary: false,
        },
        Email {
            address: "ada@x.org".into(),
            label: None,
            is_primary: true,
        },
    ];
    let mut b = Contact::new("b", "B");
    b.phones = vec![Phone {
        number: "+15550100".into(),
        label: None,
        is_primary: false,
    }];
    let mut gone = Contact::new("gone", "G");
    gone.emails = vec![Email {
        address: "gone@x.org".into(),
        label: None,
        is_primary: true,
    }];
    gone.deleted_at = Some(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap());
    f.store.write_batch(&[a, b, gone]).await.expect("write");

    let ids = |v: Vec<Contact>| v.into_iter().map(|c| c.contact_id).collect::<Vec<_>>();
    let found = f
        .store
        .find_by_identity(&["ADA@x.org".into()], &[])
        .await
        .expect("find");
    assert_eq!(ids(found), vec!["a"]);
    let found = f
        .store
        .find_by_identity(&["other@x.org".into()], &[])
        .await
        .expect("find");
    assert!(found.is_empty(), "only the primary email matches");
    let found = f
        .store
        .find_by_identity(&["ada@x.org".into()], &["+15550100".into()])
        .await
        .expect("find");
    assert_eq!(ids(found), vec!["a", "b"]);
    let found = f
        .store
        .find_by_identity(&["gone@x.org".into()], &[])
        .await
        .expect("find");
    assert!(found.is_empty(), "tombstones are not matched");

    // A user edit of the emails keeps the identity index right.
    cli(&f.path)
        .execute(
            "UPDATE contacts SET emails = '[{\"address\":\"New@X.org\"}]' WHERE contact_id = 'b'",
            [],
        )
        .expect("user edit");
    let found = f
        .store
        .find_by_identity(&["new@x.org".into()], &[])
        .await
        .expect("find");
    assert_eq!(ids(found), vec!["b"]);
}

#[tokio::test]
async fn scan_pages_in_contact_id_order() {
    let mut f = fixture();
    let mut batch: Vec<Contact> = (0..10).map(common::full_contact).collect();
    batch.reverse();
    f.store.write_batch(&batch).await.expect("write");
    cli(&f.path)
        .execute("INSERT INTO contacts (canonical_name) VALUES ('no id')", [])
        .expect("insert");

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = f.store.scan(after.as_deref(), 3).await.expect("scan");
        assert!(page.len() <= 3);
        seen.extend(page.iter().map(|c| c.contact_id.clone()));
        match page.last() {
            Some(c) if page.len() == 3 => after = Some(c.contact_id.clone()),
            _ => break,
        }
    }
    let expected: Vec<String> = (0..10).map(common::id).collect();
    assert_eq!(seen, expected);
    let tail = f.store.scan(Some(&common::id(7)), 100).await.expect("tail");
    assert_eq!(tail.len(), 2);
}

#[tokio::test]
async fn scan_fills_its_page_past_an_undecodable_row() {
    let mut f = fixture();
    let batch: Vec<Contact> = (0..5).map(common::full_contact).collect();
    f.store.write_batch(&batch).await.expect("write");
    cli(&f.path)
        .execute(
            "UPDATE contacts SET tags = 'not json' WHERE contact_id = ?1",
            [common::id(1)],
        )
        .expect("break a row");
    let page = f.store.scan(None, 3).await.expect("scan");
    let ids: Vec<String> = page.into_iter().map(|c| c.contact_id).collect();
    assert_eq!(ids, vec![common::id(0), common::id(2), common::id(3)]);
}

/// Drift's scan (issue 13, observation 7): an undecodable row is named
/// (contact id, field), not left out silently, and paging goes past it.
#[tokio::test]
async fn a_checked_hash_scan_names_an_undecodable_row() {
    let mut f = fixture();
    let batch: Vec<Contact> = (0..5).map(common::full_contact).collect();
    f.store.write_batch(&batch).await.expect("write");
    cli(&f.path)
        .execute(
            "UPDATE contacts SET tags = 'not json' WHERE contact_id = ?1",
            [common::id(2)],
        )
        .expect("break a row");
    let first = f.store.scan_hashes_checked(None, 3).await.expect("scan");
    let ids: Vec<&str> = first.hashes.iter().map(|h| h.contact_id.as_str()).collect();
    assert_eq!(ids, vec![common::id(0), common::id(1)]);
    assert_eq!(first.unreadable.len(), 1);
    assert_eq!(first.unreadable[0].contact_id, common::id(2));
    assert_eq!(first.unreadable[0].invalid.field, "tags");
    assert_eq!(first.last.as_deref(), Some(common::id(2).as_str()));
    let rest = f
        .store
        .scan_hashes_checked(first.last.as_deref(), 3)
        .await
        .expect("scan on");
    let ids: Vec<&str> = rest.hashes.iter().map(|h| h.contact_id.as_str()).collect();
    assert_eq!(ids, vec![common::id(3), common::id(4)]);
    assert!(rest.unreadable.is_empty());
}

#[tokio::test]
async fn an_existing_contacts_table_keeps_working() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    {
        let db = Connection::open(&path).expect("open");
        db.execute_batch(
            "CREATE TABLE contacts (id INTEGER PRIMARY KEY, contact_id TEXT, canonical_name TEXT,
                                    emails TEXT, CHECK (length(canonical_name) < 40));
             INSERT INTO contacts (contact_id, canonical_name, emails)
             VALUES ('old-1', 'Old Timer', '[{\"address\":\"old@x.org\",\"is_primary\":true}]');",
        )
        .expect("old schema");
    }
    let mut store = SqliteStore::open(&path, "canonical").expect("open old file");
    let back = store.read(&["old-1".into()]).await.expect("read");
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].canonical_name, "Old Timer");
    assert_eq!(back[0].version, 1);
    let found = store
        .find_by_identity(&["old@x.org".into()], &[])
        .await
        .expect("find");
    assert_eq!(found.len(), 1, "identity columns back-filled");

    let mut newer = back[0].clone();
    newer.version = 2;
    newer.job_title = Some("Retired".into());
    let too_long = Contact::new("old-2", "x".repeat(60));
    let out = store.write_batch(&[newer, too_long]).await.expect("write");
    applied_id(&out[0]);
    assert!(
        matches!(&out[1], WriteOutcome::Rejected { .. }),
        "the table's own CHECK refuses one record, not the batch: {:?}",
        out[1]
    );
    drop(store);
    // Opening again is a no-op on the schema.
    let mut store = SqliteStore::open(&path, "canonical").expect("reopen");
    let back = store.read(&["old-1".into()]).await.expect("read");
    assert_eq!(back[0].job_title.as_deref(), Some("Retired"));
}

#[tokio::test]
async fn a_users_own_trigger_still_sees_the_stores_writes_but_capture_does_not() {
    let mut f = fixture();
    f.store
        .write_batch(&[common::full_contact(1)])
        .await
        .expect("write before the user's trigger");
    let db = cli(&f.path);
    db.execute_batch(
        "CREATE TABLE audit (contact_id TEXT);
         CREATE TRIGGER user_audit AFTER INSERT ON contacts
         BEGIN INSERT INTO audit VALUES (NEW.contact_id); END;",
    )
    .expect("user trigger");
    f.store
        .write_batch(&[common::full_contact(2)])
        .await
        .expect("write with the user's trigger");
    let audited: Vec<String> = db
        .prepare("SELECT contact_id FROM audit")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(audited, vec![common::id(2)]);
    assert!(
        all_changes(&mut f.store).await.is_empty(),
        "own writes echoed"
    );
    db.execute_batch("DROP TRIGGER user_audit")
        .expect("drop trigger");
    f.store
        .write_batch(&[common::full_contact(3)])
        .await
        .expect("write after the user's trigger is gone");
    assert!(
        all_changes(&mut f.store).await.is_empty(),
        "own writes echoed"
    );
    assert_eq!(f.store.count().await.expect("count"), 3);
}

#[tokio::test]
async fn scan_continues_after_stored_ids_with_stray_whitespace() {
    let mut f = fixture();
    let db = cli(&f.path);
    // A user typed ids with trailing spaces and one broken row among them.
    for (id, tags) in [("a ", "[]"), ("b ", "broken"), ("c ", "[]"), ("d", "[]")] {
        db.execute(
            "INSERT INTO contacts (contact_id, canonical_name, tags) VALUES (?1, 'n', ?2)",
            [id, tags],
        )
        .expect("insert");
    }
    let page = f.store.scan(None, 3).await.expect("scan");
    let ids: Vec<String> = page.into_iter().map(|c| c.contact_id).collect();
    assert_eq!(
        ids,
        vec!["a", "c", "d"],
        "filled past the broken row, no repeats"
    );
    let all = f.store.scan(None, 10).await.expect("scan all");
    assert_eq!(all.len(), 3);
    assert_eq!(f.store.count().await.expect("count"), 4);
}

/// `scan_hashes` answers from `content_hash` for rows as the engine wrote
/// them, and from the content for rows anyone else touched: a user's edit
/// clears the stored hash (a stale one would hide the edit from drift
/// checks and verification).
#[tokio::test]
async fn hash_scan_trusts_only_hashes_of_rows_as_the_engine_wrote_them() {
    use contact_sync_core::content_hash;
    let mut f = fixture();
    let mut written = Vec::new();
    for i in 0..3 {
        let mut c = common::full_contact(i);
        c.contact_id = format!("h{i}");
        c.normalize();
        c.content_hash = Some(content_hash(&c));
        written.push(c);
    }
    f.store.write_batch(&written).await.expect("write");
    let db = cli(&f.path);
    // A stored hash that is not the row's: only a row the engine wrote
    // keeps the value it was given, so the scan reports it as stored.
    db.execute_batch("PRAGMA recursive_triggers = ON")
        .expect("recursive triggers");
    db.execute(
        "UPDATE contacts SET job_title = 'Edited by hand' WHERE contact_id = 'h1'",
        [],
    )
    .expect("user update");
    db.execute(
        "UPDATE contacts SET content_hash = 'forged' WHERE contact_id = 'h2'",
        [],
    )
    .expect("user sets a hash");
    let stored: Vec<Option<String>> = db
        .prepare("SELECT content_hash FROM contacts ORDER BY contact_id")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(
        stored,
        vec![written[0].content_hash.clone(), None, None],
        "a write by anyone but the engine clears content_hash"
    );

    let hashes = f.store.scan_hashes(None, 10).await.expect("scan_hashes");
    let read = f.store.scan(None, 10).await.expect("scan");
    let expected: Vec<(String, String)> = read
        .iter()
        .map(|c| (c.contact_id.clone(), content_hash(c)))
        .collect();
    let got: Vec<(String, String)> = hashes.into_iter().map(|r| (r.contact_id, r.hash)).collect();
    assert_eq!(got, expected);
    assert_ne!(got[1].1, written[1].content_hash.clone().unwrap());
    assert_eq!(got[2].1, written[2].content_hash.clone().unwrap());
    // Paging: after the first id, from the second on.
    let page = f.store.scan_hashes(Some("h0"), 1).await.expect("page");
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].contact_id, "h1");
}

/// A `contacts` table contact-sync did not create (or whose triggers did
/// not forget hashes yet) may hold any `content_hash`: opening it clears
/// them, so no hash scan trusts a value nobody vouches for.
#[tokio::test]
async fn opening_a_table_made_elsewhere_trusts_none_of_its_hashes() {
    use contact_sync_core::content_hash;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("theirs.db");
    {
        let db = Connection::open(&path).expect("create");
        db.execute_batch(
            "CREATE TABLE contacts (id INTEGER PRIMARY KEY, contact_id TEXT UNIQUE,
               canonical_name TEXT, content_hash TEXT);
             INSERT INTO contacts (contact_id, canonical_name, content_hash)
               VALUES ('t1', 'Their Contact', 'whatever they wrote');",
        )
        .expect("their table");
    }
    let mut store = SqliteStore::open(&path, "local").expect("open");
    assert!(store.keeps_content_hash());
    let kept: Option<String> = cli(&path)
        .query_row(
            "SELECT content_hash FROM contacts WHERE contact_id = 't1'",
            [],
            |r| r.get(0),
        )
        .expect("row");
    assert_eq!(kept, None);
    let read = store.scan(None, 10).await.expect("scan");
    let hashes = store.scan_hashes(None, 10).await.expect("hashes");
    assert_eq!(hashes.len(), 1);
    assert_eq!(hashes[0].hash, content_hash(&read[0]));
    // Opening again (triggers current) keeps hashes the engine wrote.
    let mut c = read[0].clone();
    c.version += 1;
    c.content_hash = Some(content_hash(&c));
    store
        .write_batch(std::slice::from_ref(&c))
        .await
        .expect("write");
    drop(store);
    let _again = SqliteStore::open(&path, "local").expect("reopen");
    let kept: Option<String> = cli(&path)
        .query_row(
            "SELECT content_hash FROM contacts WHERE contact_id = 't1'",
            [],
            |r| r.get(0),
        )
        .expect("row");
    assert_eq!(kept, c.content_hash);
}

/// A bulk load drops the identity indexes and builds them again at the end;
/// identity lookups keep working meanwhile, and a crash in the middle (no
/// end) is repaired when the file is opened again.
#[tokio::test]
async fn a_bulk_load_suspends_the_identity_indexes_and_a_reopen_restores_them() {
    let mut f = fixture();
    let indexes = |path: &PathBuf| -> Vec<String> {
        cli(path)
            .prepare(
                "SELECT name FROM sqlite_schema WHERE type = 'index' \
                 AND name LIKE 'contacts_primary_%' ORDER BY name",
            )
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    };
    let both = vec![
        "contacts_primary_email".to_string(),
        "contacts_primary_phone".to_string(),
    ];
    assert_eq!(indexes(&f.path), both);
    f.store.begin_bulk_load().await.expect("begin");
    assert!(indexes(&f.path).is_empty());
    let c = common::full_contact(3);
    f.store
        .write_batch(std::slice::from_ref(&c))
        .await
        .expect("write");
    let email = c.primary_email().expect("has an email").to_string();
    let found = f
        .store
        .find_by_identity(std::slice::from_ref(&email), &[])
        .await
        .expect("lookup without the index");
    assert_eq!(found.len(), 1);
    f.store.end_bulk_load().await.expect("end");
    assert_eq!(indexes(&f.path), both);

    // Interrupted: begin, then the process dies.
    f.store.begin_bulk_load().await.expect("begin again");
    drop(f.store);
    let mut reopened = SqliteStore::open(&f.path, "local").expect("reopen");
    assert_eq!(indexes(&f.path), both);
    let found = reopened
        .find_by_identity(&[email], &[])
        .await
        .expect("lookup");
    assert_eq!(found.len(), 1);
}

/// The position an initial sync takes before copying (issue 14,
/// observation 9): none on an empty change table; after other programs'
/// inserts, the newest change, from which a read returns only what was
/// changed after it.
#[tokio::test]
async fn the_current_position_skips_the_changes_already_made() {
    let mut f = fixture();
    assert_eq!(f.store.current_position().await.expect("position"), None);
    let db = cli(&f.path);
    for i in 0..3 {
        db.execute(
            "INSERT INTO contacts (contact_id, canonical_name) VALUES (?1, 'n')",
            [format!("u{i}")],
        )
        .expect("insert");
    }
    let at = f
        .store
        .current_position()
        .await
        .expect("position")
        .expect("some");
    assert_eq!(at, Checkpoint::new("3"));
    assert!(f
        .store
        .read_changes(Some(&at), 10)
        .await
        .expect("read")
        .changes
        .is_empty());
    db.execute(
        "UPDATE contacts SET notes = 'later' WHERE contact_id = 'u1'",
        [],
    )
    .expect("edit");
    let later = f.store.read_changes(Some(&at), 10).await.expect("read");
    assert_eq!(later.changes.len(), 1);
    assert_eq!(later.changes[0].native_id, "2");
}
