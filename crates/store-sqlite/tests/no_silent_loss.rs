//! The SQLite store's part of "no silent loss", on real files: conditional
//! writes are checked and written in one transaction, so an edit made with
//! the sqlite3 CLI after the engine read a row is never overwritten; text
//! with a NUL byte or invalid UTF-8 is refused at capture naming the record
//! and the column, never passed on altered.

use std::path::{Path, PathBuf};
use std::time::Duration;

use contact_sync_connector::{
    ChangeKind, ChangeSource, Conditional, Expect, RecordSink, StoreInfo, WriteOutcome,
};
use contact_sync_core::hash::tombstone_hash;
use contact_sync_core::{content_hash, validate, Contact, Email};
use contact_sync_sqlite::SqliteStore;
use rusqlite::Connection;

fn open(dir: &tempfile::TempDir, name: &str) -> (PathBuf, SqliteStore) {
    let path = dir.path().join(format!("{name}.db"));
    let store = SqliteStore::open(&path, name).expect("open store");
    (path, store)
}

/// A second connection, as the sqlite3 CLI would open the file.
fn cli(path: &Path) -> Connection {
    let c = Connection::open(path).expect("open cli connection");
    c.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    c
}

fn person(id: &str, name: &str) -> Contact {
    let mut c = Contact::new(id, name);
    c.job_title = Some("Engineer".into());
    c.emails.push(Email {
        address: format!("{}@example.com", id.to_lowercase()),
        label: None,
        is_primary: true,
    });
    c.content_hash = Some(content_hash(&c));
    c
}

/// What the engine sends: the contact with its content hash.
fn with_hash(mut c: Contact) -> Contact {
    c.normalize();
    c.content_hash = Some(content_hash(&c));
    c
}

#[tokio::test]
async fn an_edit_made_after_the_engine_read_the_row_is_not_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, mut store) = open(&dir, "local");
    assert_eq!(store.conditional_writes(), Conditional::Atomic);
    let a = person("c1", "Ada");
    let seen = content_hash(&a);
    store
        .write_batch(std::slice::from_ref(&a))
        .await
        .expect("write");

    // A person edits the row in the sqlite3 CLI after the engine read it.
    cli(&path)
        .execute(
            "UPDATE contacts SET job_title = 'Consultant' WHERE contact_id = 'c1'",
            [],
        )
        .expect("user edit");

    let mut next = a.clone();
    next.version = 2;
    next.nickname = Some("Countess".into());
    let (outcomes, _) = store
        .write_batch_if(vec![with_hash(next.clone())], &[Expect::Hash(seen.clone())])
        .await
        .expect("conditional write");
    assert_eq!(outcomes, vec![WriteOutcome::Changed]);
    let held = store.read(&["c1".into()]).await.expect("read").remove(0);
    assert_eq!(
        held.job_title.as_deref(),
        Some("Consultant"),
        "the edit stays"
    );
    assert_eq!(held.nickname, None, "nothing of the refused write landed");

    // Conditional on what the row now holds, the write goes through.
    let now_held = content_hash(&held);
    let (outcomes, _) = store
        .write_batch_if(vec![with_hash(next)], &[Expect::Hash(now_held)])
        .await
        .expect("conditional write");
    assert!(
        matches!(outcomes[0], WriteOutcome::Applied { .. }),
        "{outcomes:?}"
    );
    let held = store.read(&["c1".into()]).await.expect("read").remove(0);
    assert_eq!(held.nickname.as_deref(), Some("Countess"));
}

#[tokio::test]
async fn absent_and_tombstone_conditions_and_outcome_order_in_a_mixed_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, mut store) = open(&dir, "local");
    store
        .write_batch(&[person("c1", "Ada"), person("c2", "Grace")])
        .await
        .expect("write");
    // A row inserted by hand that the engine never saw.
    cli(&path)
        .execute(
            "INSERT INTO contacts (contact_id, canonical_name, version) VALUES ('c3', 'Hand Made', 1)",
            [],
        )
        .expect("user insert");
    let writes = vec![
        with_hash(person("c1", "Ada L")),   // expects c1 as written: applied
        with_hash(person("c2", "Grace H")), // expects another content: changed
        with_hash(person("c3", "Engine's")), // expects absent, a row is there: changed
        with_hash(person("c4", "New")),     // expects absent: applied
        with_hash(person("c5", "Gone")),    // expects a tombstone, nothing there: applied
    ];
    let expect = vec![
        Expect::Hash(content_hash(&person("c1", "Ada"))),
        Expect::Hash("0000".into()),
        Expect::Absent,
        Expect::Absent,
        Expect::Hash(tombstone_hash().to_string()),
    ];
    let (outcomes, back) = store.write_batch_if(writes, &expect).await.expect("batch");
    assert_eq!(back.len(), 5, "the batch comes back whole");
    let kinds: Vec<&str> = outcomes
        .iter()
        .map(|o| match o {
            WriteOutcome::Applied { .. } => "applied",
            WriteOutcome::Changed => "changed",
            WriteOutcome::Stale { .. } => "stale",
            WriteOutcome::Rejected { .. } => "rejected",
        })
        .collect();
    assert_eq!(
        kinds,
        ["applied", "changed", "changed", "applied", "applied"]
    );
    let c3 = store.read(&["c3".into()]).await.expect("read").remove(0);
    assert_eq!(c3.canonical_name, "Hand Made", "the hand-made row stays");
    let c2 = store.read(&["c2".into()]).await.expect("read").remove(0);
    assert_eq!(c2.canonical_name, "Grace");
}

#[tokio::test]
async fn a_nul_byte_typed_in_the_cli_is_refused_at_capture_naming_the_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, mut store) = open(&dir, "local");
    store
        .write_batch(&[person("c1", "Ada")])
        .await
        .expect("write");
    cli(&path)
        .execute(
            "UPDATE contacts SET nickname = 'ab' || char(0) || 'cd' WHERE contact_id = 'c1'",
            [],
        )
        .expect("user edit");
    let batch = store.read_changes(None, 10).await.expect("changes");
    assert_eq!(batch.changes.len(), 1);
    // Capture hands the engine the record; validation (which every capture
    // runs) refuses it with the field named: it goes to dead letters and
    // never reaches canonical or another store.
    let ChangeKind::Upsert(c) = &batch.changes[0].kind else {
        panic!("expected an upsert, got {:?}", batch.changes[0].kind);
    };
    let refused = validate(c).expect_err("a NUL byte is refused");
    assert_eq!(refused.record, "c1");
    assert_eq!(refused.field, "nickname");
    assert!(refused.reason.contains("NUL"), "{}", refused.reason);
}

#[tokio::test]
async fn invalid_utf8_is_refused_at_capture_not_turned_into_replacement_characters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, mut store) = open(&dir, "local");
    store
        .write_batch(&[person("c1", "Ada")])
        .await
        .expect("write");
    // 0xFF is never valid UTF-8; SQLite stores the bytes as given.
    cli(&path)
        .execute(
            "UPDATE contacts SET job_title = CAST(X'41FF42' AS TEXT) WHERE contact_id = 'c1'",
            [],
        )
        .expect("user edit");
    let batch = store.read_changes(None, 10).await.expect("changes");
    assert_eq!(batch.changes.len(), 1);
    match &batch.changes[0].kind {
        ChangeKind::Undecodable { invalid, .. } => {
            assert_eq!(invalid.record, "c1");
            assert_eq!(invalid.field, "job_title");
            assert!(invalid.reason.contains("UTF-8"), "{}", invalid.reason);
        }
        other => panic!("expected the change refused, got {other:?}"),
    }
    // A real U+FFFD typed by a person is valid text and passes.
    cli(&path)
        .execute(
            "UPDATE contacts SET job_title = 'A\u{FFFD}B' WHERE contact_id = 'c1'",
            [],
        )
        .expect("user edit");
    let from = batch.checkpoint.clone();
    let batch = store.read_changes(Some(&from), 10).await.expect("changes");
    match &batch.changes[0].kind {
        ChangeKind::Upsert(c) => assert_eq!(c.job_title.as_deref(), Some("A\u{FFFD}B")),
        other => panic!("expected an upsert, got {other:?}"),
    }
}
