//! More of the SQLite store's behaviour, on real files in temp dirs: the
//! shared `RecordSink` conformance suite, a round trip of generated
//! contacts (all 33 fields) through writes, reads, scans and a reopen,
//! exact values (Unicode, escapes, numbers) through both the row and the
//! change-image decoders, change paging by checkpoint, and a user's open
//! transaction in the sqlite3 CLI while the store writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use contact_sync_connector::{
    Change, ChangeKind, ChangeSource, Checkpoint, RecordSink, StoreInfo, WriteOutcome,
};
use contact_sync_core::model::parse_ts;
use contact_sync_core::synth::Generator;
use contact_sync_core::{content_hash, validate, Contact, Email, Phone};
use contact_sync_sqlite::SqliteStore;
use rusqlite::Connection;
use serde_json::json;

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

fn normalized(c: &Contact) -> Contact {
    let mut c = c.clone();
    c.normalize();
    c
}

fn by_id(mut v: Vec<Contact>) -> BTreeMap<String, Contact> {
    v.drain(..).map(|c| (c.contact_id.clone(), c)).collect()
}

async fn scan_all(store: &mut SqliteStore, page: usize) -> Vec<Contact> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let got = store.scan(after.as_deref(), page).await.expect("scan");
        let Some(last) = got.last().map(|c| c.contact_id.clone()) else {
            break;
        };
        let full = got.len() == page;
        out.extend(got);
        if !full {
            break;
        }
        after = Some(last);
    }
    out
}

async fn changes_from(store: &mut SqliteStore, from: Option<&Checkpoint>) -> Vec<Change> {
    store
        .read_changes(from, 10_000)
        .await
        .expect("read_changes")
        .changes
}

#[tokio::test]
async fn keeps_the_record_sink_contract_as_local_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, mut store) = open(&dir, "local");
    contact_sync_memory::conformance::sink_contract(&mut store).await;
}

#[tokio::test]
async fn keeps_the_record_sink_contract_as_embedded_canonical() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, mut store) = open(&dir, "canonical");
    assert_eq!(store.name(), "canonical");
    assert!(store.keeps_version());
    contact_sync_memory::conformance::sink_contract(&mut store).await;
}

/// Generated contacts fill all 33 fields (external ids, a tombstone and
/// higher versions added here); every one reads back equal, by id and by
/// scan, with the same content hash, also after the file is reopened.
#[tokio::test]
async fn generated_contacts_round_trip_with_all_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, mut store) = open(&dir, "local");
    let mut g = Generator::new(42);
    let mut contacts: Vec<Contact> = (0..600u64).map(|i| g.contact(i)).collect();
    for (i, c) in contacts.iter_mut().enumerate() {
        c.external_ids = BTreeMap::from([
            ("twenty".to_string(), format!("7c1e{i:028x}")),
            ("supabase".to_string(), format!("{}", 5_000 + i)),
        ]);
        c.version = 1 + (i as i64 % 5);
        if i % 97 == 0 {
            c.deleted_at = parse_ts("2025-02-03T04:05:06.789012Z");
        }
        validate(&normalized(c)).expect("generated contacts are valid");
    }
    // One tombstone fills all 33 fields.
    let unset = |c: &Contact| -> Vec<String> {
        let v = serde_json::to_value(c).expect("json");
        v.as_object()
            .expect("object")
            .iter()
            .filter(|(_, v)| v.is_null())
            .map(|(k, _)| k.clone())
            .collect()
    };
    let full = contacts
        .iter_mut()
        .find(|c| unset(c) == ["deleted_at"])
        .expect("a generated contact with every other field set");
    full.deleted_at = parse_ts("2025-02-03T04:05:06.789012Z");
    assert!(unset(full).is_empty());

    for batch in contacts.chunks(250) {
        let out = store.write_batch(batch).await.expect("write_batch");
        assert!(
            out.iter()
                .all(|o| matches!(o, WriteOutcome::Applied { .. })),
            "{out:?}"
        );
    }
    let expected: BTreeMap<String, Contact> = by_id(contacts.iter().map(normalized).collect());

    let ids: Vec<String> = contacts.iter().map(|c| c.contact_id.clone()).collect();
    let read = by_id(store.read(&ids).await.expect("read"));
    assert_eq!(read.len(), expected.len());
    for (id, want) in &expected {
        let got = &read[id];
        assert_eq!(got, want, "read of {id}");
        assert_eq!(content_hash(got), content_hash(want), "hash of {id}");
    }

    let scanned = scan_all(&mut store, 64).await;
    let order: Vec<&str> = scanned.iter().map(|c| c.contact_id.as_str()).collect();
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(order, sorted, "scan is ordered by contact_id");
    assert_eq!(
        by_id(scanned),
        expected,
        "scan returns every record as written"
    );
    let live = expected.values().filter(|c| !c.is_deleted()).count() as u64;
    assert_eq!(store.count().await.expect("count"), live);

    // The store's own writes never show up as changes.
    assert!(changes_from(&mut store, None).await.is_empty());

    drop(store);
    let mut reopened = SqliteStore::open(&path, "local").expect("reopen");
    let again = by_id(reopened.read(&ids).await.expect("read after reopen"));
    assert_eq!(again, expected, "the file keeps everything across a reopen");
}

/// Values a user might type, through both decoders: the row (read) and the
/// change image the triggers record (read_changes) give the same contact.
#[tokio::test]
async fn exact_values_survive_rows_and_change_images() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, mut store) = open(&dir, "local");
    let mut c = Contact::new("c-exact", "Zoë \"Z\" O'Brien-Łukasiewicz");
    c.display_name = Some("זואי 🦀 \\ back\\slash".into());
    c.notes = Some("line one\nline two\ttabbed\r\n\u{1} control, NUL-free, emoji 👩‍👩‍👧".into());
    c.tags = vec!["ünïcödé".into(), "with \"quotes\"".into(), "日本語".into()];
    c.category_code = Some("B".into());
    c.subcategory_code = Some("B2".into());
    c.created_at = parse_ts("1999-12-31T23:59:59.999999Z");
    c.custom_attributes = Some(json!({
        "ratio": 2.718281828459045e-7,
        "tiny": 1e-300,
        "big": 18_446_744_073_709_551_615u64,
        "neg": -9_223_372_036_854_775_808i64,
        "nested": {"list": [1, "two", null, true, {"k": "v"}]},
        "escape\u{7}key": "a\u{0}b",
    }));
    c.llm_context = Some(json!({"how_met": "at the café", "closeness_level": 8}));
    c.emails = vec![Email {
        address: "zoe@example.com".into(),
        label: Some("ÉCOLE".into()),
        is_primary: true,
    }];
    c.phones = vec![Phone {
        number: "+353861234567".into(),
        label: None,
        is_primary: true,
    }];
    c.version = 3;
    let out = store
        .write_batch(std::slice::from_ref(&c))
        .await
        .expect("write");
    assert!(matches!(out[0], WriteOutcome::Applied { .. }), "{out:?}");
    let want = normalized(&c);
    let read = store
        .read(std::slice::from_ref(&c.contact_id))
        .await
        .expect("read");
    assert_eq!(read, vec![want.clone()]);

    // A user touches the row: the change image must decode to the same
    // content, with the new version.
    cli(&path)
        .execute(
            "UPDATE contacts SET version = version + 1 WHERE contact_id = 'c-exact'",
            [],
        )
        .expect("cli update");
    let changes = changes_from(&mut store, None).await;
    assert_eq!(changes.len(), 1, "{changes:?}");
    let ChangeKind::Upsert(seen) = &changes[0].kind else {
        panic!("expected an upsert, got {:?}", changes[0].kind);
    };
    let mut expected = want;
    expected.version = 4;
    assert_eq!(**seen, expected);
    assert_eq!(content_hash(seen), content_hash(&normalized(&c)));
}

/// Paging through many user changes by checkpoint loses and repeats
/// nothing, in commit order; `has_more` is exact.
#[tokio::test]
async fn change_pages_by_checkpoint_lose_and_repeat_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, mut store) = open(&dir, "local");
    let db = cli(&path);
    for i in 0..23 {
        db.execute(
            "INSERT INTO contacts (contact_id, canonical_name, version) VALUES (?1, ?2, 1)",
            rusqlite::params![format!("u{i:02}"), format!("User {i}")],
        )
        .expect("insert");
    }
    db.execute(
        "UPDATE contacts SET job_title = 'Editor', version = 2 WHERE contact_id = 'u03'",
        [],
    )
    .expect("update");
    db.execute("DELETE FROM contacts WHERE contact_id = 'u05'", [])
        .expect("delete");

    let all = store.read_changes(None, 1_000).await.expect("all");
    assert_eq!(all.changes.len(), 25);
    assert!(!all.has_more);

    let mut paged = Vec::new();
    let mut cp: Option<Checkpoint> = None;
    let mut pages = 0;
    loop {
        let b = store.read_changes(cp.as_ref(), 7).await.expect("page");
        pages += 1;
        assert!(b.changes.len() <= 7);
        let more = b.has_more;
        assert_eq!(
            more,
            paged.len() + b.changes.len() < 25,
            "has_more on page {pages}"
        );
        paged.extend(b.changes);
        cp = Some(b.checkpoint);
        if !more {
            break;
        }
    }
    assert_eq!(pages, 4);
    assert_eq!(paged, all.changes, "pages add up to one full read");
    assert_eq!(cp.as_ref(), Some(&all.checkpoint));

    // The update comes after the insert of the same record; the delete last.
    let pos = |pred: &dyn Fn(&Change) -> bool| paged.iter().position(pred).expect("change");
    let insert_u03 = pos(
        &|c| matches!(&c.kind, ChangeKind::Upsert(x) if x.contact_id == "u03" && x.version == 1),
    );
    let update_u03 = pos(
        &|c| matches!(&c.kind, ChangeKind::Upsert(x) if x.contact_id == "u03" && x.version == 2),
    );
    assert!(insert_u03 < update_u03);
    assert!(matches!(
        &paged[24].kind,
        ChangeKind::Delete { contact_id: Some(id) } if id == "u05"
    ));

    // Acknowledging twice, or an older checkpoint, changes nothing more.
    let mid = store.read_changes(None, 10).await.expect("first ten");
    store.acknowledge(&mid.checkpoint).await.expect("ack");
    store.acknowledge(&mid.checkpoint).await.expect("ack again");
    let rest = store.read_changes(None, 1_000).await.expect("rest");
    assert_eq!(rest.changes, all.changes[10..].to_vec());
    store
        .acknowledge(&all.checkpoint)
        .await
        .expect("ack everything");
    let none = store
        .read_changes(Some(&all.checkpoint), 10)
        .await
        .expect("at head");
    assert!(none.changes.is_empty() && !none.has_more);
    assert_eq!(none.checkpoint, all.checkpoint);
}

/// The capture switch is only ever seen on by other connections: after the
/// store's batches a user's edit is captured, and the store's are not.
#[tokio::test]
async fn capture_is_on_for_everyone_else_between_and_after_batches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, mut store) = open(&dir, "local");
    let db = cli(&path);
    let mut g = Generator::new(5);
    for round in 0..3u64 {
        let batch: Vec<Contact> = (round * 10..round * 10 + 10)
            .map(|i| g.contact(i))
            .collect();
        store.write_batch(&batch).await.expect("write");
        let suppress: i64 = db
            .query_row("SELECT suppress FROM _contact_sync_control", [], |r| {
                r.get(0)
            })
            .expect("control row");
        assert_eq!(suppress, 0, "capture must be on outside the store's batch");
        db.execute(
            "UPDATE contacts SET nickname = ?1 WHERE contact_id = ?2",
            rusqlite::params![format!("nick {round}"), Generator::contact_id(round * 10)],
        )
        .expect("cli edit");
    }
    let changes = changes_from(&mut store, None).await;
    let edited: Vec<(String, Option<String>)> = changes
        .iter()
        .map(|c| match &c.kind {
            ChangeKind::Upsert(x) => (x.contact_id.clone(), x.nickname.clone()),
            other => panic!("unexpected change {other:?}"),
        })
        .collect();
    assert_eq!(
        edited,
        (0..3u64)
            .map(|r| (Generator::contact_id(r * 10), Some(format!("nick {r}"))))
            .collect::<Vec<_>>(),
        "exactly the user's three edits"
    );
}

/// A user holding a write transaction open in the sqlite3 CLI delays the
/// store's batch (busy timeout) instead of failing it; both edits land.
#[tokio::test]
async fn a_users_open_transaction_delays_but_does_not_fail_a_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, mut store) = open(&dir, "local");
    let mut g = Generator::new(9);
    let first = g.contact(1);
    store
        .write_batch(std::slice::from_ref(&first))
        .await
        .expect("first write");

    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let user_path = path.clone();
    let user = std::thread::spawn(move || {
        let mut db = cli(&user_path);
        let tx = db
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .expect("begin immediate");
        tx.execute(
            "INSERT INTO contacts (contact_id, canonical_name) VALUES ('typed-by-hand', 'Hand Typed')",
            [],
        )
        .expect("insert");
        locked_tx.send(()).expect("signal");
        std::thread::sleep(Duration::from_millis(300));
        tx.commit().expect("commit");
    });
    locked_rx.recv().expect("user holds the lock");
    let second = g.contact(2);
    let out = store
        .write_batch(std::slice::from_ref(&second))
        .await
        .expect("the batch waits for the user's transaction");
    assert!(matches!(out[0], WriteOutcome::Applied { .. }), "{out:?}");
    user.join().expect("user thread");

    let ids = vec![
        first.contact_id.clone(),
        second.contact_id.clone(),
        "typed-by-hand".to_string(),
    ];
    assert_eq!(store.read(&ids).await.expect("read").len(), 3);
    let changes = changes_from(&mut store, None).await;
    assert_eq!(changes.len(), 1, "only the user's insert: {changes:?}");
}

/// JSON is stored with object keys in sorted order (the normal form), at
/// every depth; reads return the same normalized contact as before.
#[tokio::test]
async fn json_columns_are_stored_with_sorted_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, mut store) = open(&dir, "local");
    let mut c = Contact::new("c-keys", "Key Order");
    c.llm_context = Some(json!({
        "zeta": "last",
        "how_met": "first",
        "important_dates": [{"event": "birthday", "date": "1990-01-01"}],
    }));
    c.custom_attributes = Some(json!({"b": {"y": 1, "x": 2}, "a": [3, {"d": 4, "c": 5}]}));
    store
        .write_batch(std::slice::from_ref(&c))
        .await
        .expect("write");
    let (llm, custom): (String, String) = cli(&path)
        .query_row(
            "SELECT llm_context, custom_attributes FROM contacts WHERE contact_id = 'c-keys'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("raw row");
    assert_eq!(
        llm,
        r#"{"how_met":"first","important_dates":[{"date":"1990-01-01","event":"birthday"}],"zeta":"last"}"#
    );
    assert_eq!(custom, r#"{"a":[3,{"c":5,"d":4}],"b":{"x":2,"y":1}}"#);
    let read = store
        .read(std::slice::from_ref(&c.contact_id))
        .await
        .expect("read");
    assert_eq!(read, vec![normalized(&c)]);
    assert_eq!(content_hash(&read[0]), content_hash(&normalized(&c)));
}

/// Large pages (1,000 rows) keep contact_id order, leave
/// out exactly the undecodable rows wherever they fall, and still fill up.
#[tokio::test]
async fn large_pages_keep_order_and_skip_only_broken_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, mut store) = open(&dir, "local");
    let mut g = Generator::new(3);
    let contacts: Vec<Contact> = (0..1_500u64).map(|i| g.contact(i)).collect();
    for batch in contacts.chunks(500) {
        store.write_batch(batch).await.expect("write");
    }
    let broken = [0usize, 129, 700, 701, 1_499];
    let db = cli(&path);
    for i in broken {
        db.execute(
            "UPDATE contacts SET llm_context = '{\"how_met\": ' WHERE contact_id = ?1",
            [&contacts[i].contact_id],
        )
        .expect("break a row");
    }
    let want: Vec<String> = contacts
        .iter()
        .enumerate()
        .filter(|(i, _)| !broken.contains(i))
        .map(|(_, c)| c.contact_id.clone())
        .collect();

    let page = store.scan(None, 1_000).await.expect("scan");
    let got: Vec<&str> = page.iter().map(|c| c.contact_id.as_str()).collect();
    assert_eq!(
        got,
        want[..1_000].iter().map(String::as_str).collect::<Vec<_>>()
    );
    let rest = store
        .scan(Some(&want[999]), 1_000)
        .await
        .expect("scan rest");
    assert_eq!(rest.len(), want.len() - 1_000);
    assert_eq!(
        scan_all(&mut store, 700)
            .await
            .iter()
            .map(|c| c.contact_id.clone())
            .collect::<Vec<_>>(),
        want
    );

    let ids: Vec<String> = contacts.iter().map(|c| c.contact_id.clone()).collect();
    let read = by_id(store.read(&ids).await.expect("read"));
    assert_eq!(read.keys().cloned().collect::<Vec<_>>(), want);
    for (i, c) in contacts.iter().enumerate() {
        if !broken.contains(&i) {
            assert_eq!(read[&c.contact_id], normalized(c), "contact {i}");
        }
    }
}
