//! The [`RecordSink`] and [`ChangeSource`] contracts as reusable checks.
//!
//! Each function takes a store, runs one part of the contract against it
//! and panics with a message naming the store, the check and what was
//! expected when the store breaks it. Store crates call them from their own
//! tests:
//!
//! ```ignore
//! #[tokio::test]
//! async fn my_store_keeps_the_contract() {
//!     let mut store = fresh_store().await;
//!     contact_sync_memory::conformance::sink_contract(&mut store).await;
//! }
//! ```
//!
//! The checks use their own `contact_id`s (`conformance-…`) and only compare
//! counts as differences, so the store may hold other data, but it must not
//! hold the suite's ids from an earlier run (use a fresh store).

use contact_sync_connector::{
    ChangeKind, ChangeSource, Checkpoint, RecordSink, StoreError, StoreInfo, WriteOutcome,
};
use contact_sync_core::model::parse_ts;
use contact_sync_core::{content_hash, Contact, Email, Phone, Timestamp};

const PREFIX: &str = "conformance-";

/// Every [`RecordSink`] check, in turn, on one store.
pub async fn sink_contract<S: RecordSink + StoreInfo>(store: &mut S) {
    write_and_read_back(store).await;
    idempotent_double_write(store).await;
    version_guard(store).await;
    outcomes_in_order(store).await;
    tombstones(store).await;
    scan_paging(store).await;
    find_by_identity(store).await;
    read_missing(store).await;
}

/// A realistic contact for the checks: most field groups set, with values
/// that need normalizing (mixed-case email, padded and blank text).
pub fn sample_contact(contact_id: &str, n: u32) -> Contact {
    let mut c = Contact::new(contact_id, format!("Conformance Person {n}"));
    c.first_name = Some("Conformance".into());
    c.last_name = Some(format!("Person {n} "));
    c.nickname = Some("  ".into());
    c.organization = Some("Example Ltd".into());
    c.job_title = Some("Tester".into());
    c.category_code = Some("G".into());
    c.subcategory_code = Some("G1".into());
    c.notes = Some(format!("Met at conformance run, record {n}."));
    c.tags = vec!["conformance".into(), "test".into()];
    c.source = Some("conformance".into());
    c.created_at = Some(ts("2024-01-02T03:04:05.123456Z"));
    c.llm_context = Some(serde_json::json!({
        "how_met": "a test suite",
        "closeness_level": 3,
        "key_interests": ["contracts", "idempotency"],
    }));
    c.emails = vec![
        Email {
            address: format!("{contact_id}@Example.COM"),
            label: Some("work".into()),
            is_primary: true,
        },
        Email {
            address: format!("other.{contact_id}@example.org"),
            label: None,
            is_primary: false,
        },
    ];
    c.phones = vec![Phone {
        number: format!("+4930{:07}", n),
        label: Some("mobile".into()),
        is_primary: true,
    }];
    c.version = 1;
    c.last_updated = Some(ts("2024-05-06T07:08:09.000001Z"));
    c.last_updated_by = Some("conformance".into());
    c
}

fn ts(s: &str) -> Timestamp {
    parse_ts(s).unwrap_or_else(|| panic!("conformance: bad timestamp literal {s}"))
}

fn id(check: &str, n: u32) -> String {
    format!("{PREFIX}{check}-{n:03}")
}

fn hash(c: &Contact) -> String {
    let mut c = c.clone();
    c.normalize();
    content_hash(&c)
}

fn ok<T>(store: &str, check: &str, what: &str, r: Result<T, StoreError>) -> T {
    r.unwrap_or_else(|e| panic!("{store}: conformance `{check}`: {what} failed: {e}"))
}

async fn write<S: RecordSink + StoreInfo>(
    store: &mut S,
    check: &str,
    batch: &[Contact],
) -> Vec<WriteOutcome> {
    let name = store.name().to_string();
    let outcomes = ok(&name, check, "write_batch", store.write_batch(batch).await);
    assert_eq!(
        outcomes.len(),
        batch.len(),
        "{name}: conformance `{check}`: write_batch must return one outcome per write"
    );
    outcomes
}

async fn write_applied<S: RecordSink + StoreInfo>(
    store: &mut S,
    check: &str,
    c: &Contact,
) -> String {
    let name = store.name().to_string();
    match write(store, check, std::slice::from_ref(c)).await.remove(0) {
        WriteOutcome::Applied { native_id } => native_id,
        other => panic!(
            "{name}: conformance `{check}`: writing {} version {} should apply, got {other:?}",
            c.contact_id, c.version
        ),
    }
}

/// Reads one record, checking it is normalized and carries its id.
async fn read_one<S: RecordSink + StoreInfo>(
    store: &mut S,
    check: &str,
    contact_id: &str,
) -> Option<Contact> {
    let name = store.name().to_string();
    let ids = [contact_id.to_string()];
    let mut got = ok(&name, check, "read", store.read(&ids).await);
    assert!(
        got.len() <= 1,
        "{name}: conformance `{check}`: read of one id returned {} records",
        got.len()
    );
    let c = got.pop()?;
    assert_eq!(
        c.contact_id, contact_id,
        "{name}: conformance `{check}`: read returned the wrong contact_id"
    );
    let mut n = c.clone();
    n.normalize();
    assert_eq!(
        n, c,
        "{name}: conformance `{check}`: read must return normalized records"
    );
    Some(c)
}

async fn count<S: RecordSink + StoreInfo>(store: &mut S, check: &str) -> u64 {
    let name = store.name().to_string();
    ok(&name, check, "count", store.count().await)
}

/// A write is applied and reads back with the same content (and version,
/// when the store keeps versions), normalized, with `contact_id` set.
pub async fn write_and_read_back<S: RecordSink + StoreInfo>(store: &mut S) {
    const CHECK: &str = "write and read back";
    let name = store.name().to_string();
    let c = sample_contact(&id("readback", 1), 1);
    write_applied(store, CHECK, &c).await;
    let got = read_one(store, CHECK, &c.contact_id)
        .await
        .unwrap_or_else(|| panic!("{name}: conformance `{CHECK}`: written record not found"));
    assert_eq!(
        hash(&got),
        hash(&c),
        "{name}: conformance `{CHECK}`: content read back differs from content written\n\
         written: {c:?}\nread: {got:?}"
    );
    assert!(
        !got.is_deleted(),
        "{name}: conformance `{CHECK}`: a live write read back as deleted"
    );
    if store.keeps_version() {
        assert_eq!(
            got.version, c.version,
            "{name}: conformance `{CHECK}`: version not kept"
        );
    }
}

/// Writing the same record twice leaves one record, as writing it once.
pub async fn idempotent_double_write<S: RecordSink + StoreInfo>(store: &mut S) {
    const CHECK: &str = "idempotent double write";
    let name = store.name().to_string();
    let before = count(store, CHECK).await;
    let c = sample_contact(&id("idem", 1), 2);
    let first = write_applied(store, CHECK, &c).await;
    let second = write_applied(store, CHECK, &c).await;
    assert_eq!(
        first, second,
        "{name}: conformance `{CHECK}`: a repeated write landed under another native id"
    );
    // The same write twice in one batch, as a retried batch may carry.
    let outcomes = write(store, CHECK, &[c.clone(), c.clone()]).await;
    for o in &outcomes {
        assert_eq!(
            o,
            &WriteOutcome::Applied {
                native_id: first.clone()
            },
            "{name}: conformance `{CHECK}`: a repeated write in one batch did not apply in place"
        );
    }
    let after = count(store, CHECK).await;
    assert_eq!(
        after,
        before + 1,
        "{name}: conformance `{CHECK}`: four writes of one contact must add one live record"
    );
    let got = read_one(store, CHECK, &c.contact_id).await;
    assert_eq!(
        got.as_ref().map(hash),
        Some(hash(&c)),
        "{name}: conformance `{CHECK}`: record content after repeated writes"
    );
}

/// A write older than the stored version is `Stale` and changes nothing;
/// equal or newer versions apply. Stores without versions apply everything.
pub async fn version_guard<S: RecordSink + StoreInfo>(store: &mut S) {
    const CHECK: &str = "version guard";
    let name = store.name().to_string();
    let cid = id("guard", 1);
    let mut v3 = sample_contact(&cid, 3);
    v3.version = 3;
    v3.job_title = Some("Version three".into());
    write_applied(store, CHECK, &v3).await;

    let mut v2 = v3.clone();
    v2.version = 2;
    v2.job_title = Some("Version two".into());
    let outcome = write(store, CHECK, std::slice::from_ref(&v2))
        .await
        .remove(0);
    let got = read_one(store, CHECK, &cid).await;
    if store.keeps_version() {
        assert_eq!(
            outcome,
            WriteOutcome::Stale { stored_version: 3 },
            "{name}: conformance `{CHECK}`: writing version 2 over version 3 must be Stale"
        );
        assert_eq!(
            got.as_ref().map(hash),
            Some(hash(&v3)),
            "{name}: conformance `{CHECK}`: a stale write changed the record"
        );
    } else {
        assert!(
            matches!(outcome, WriteOutcome::Applied { .. }),
            "{name}: conformance `{CHECK}`: a store without versions must apply every write, got {outcome:?}"
        );
    }

    let mut again = v3.clone();
    again.job_title = Some("Version three, edited".into());
    write_applied(store, CHECK, &again).await;
    let mut v4 = again.clone();
    v4.version = 4;
    v4.job_title = Some("Version four".into());
    write_applied(store, CHECK, &v4).await;
    let got = read_one(store, CHECK, &cid).await;
    assert_eq!(
        got.as_ref().map(hash),
        Some(hash(&v4)),
        "{name}: conformance `{CHECK}`: an equal then a newer version must apply"
    );
    if store.keeps_version() {
        assert_eq!(
            got.map(|c| c.version),
            Some(4),
            "{name}: conformance `{CHECK}`: stored version"
        );
    }
}

/// A batch returns one outcome per write, in order.
pub async fn outcomes_in_order<S: RecordSink + StoreInfo>(store: &mut S) {
    const CHECK: &str = "outcomes in order";
    let name = store.name().to_string();
    let mut held = sample_contact(&id("order", 2), 4);
    held.version = 5;
    write_applied(store, CHECK, &held).await;
    let mut old = held.clone();
    old.version = 1;
    old.notes = Some("older".into());
    let batch = [
        sample_contact(&id("order", 1), 5),
        old,
        sample_contact(&id("order", 3), 6),
    ];
    let outcomes = write(store, CHECK, &batch).await;
    let applied = |o: &WriteOutcome| matches!(o, WriteOutcome::Applied { .. });
    assert!(
        applied(&outcomes[0]) && applied(&outcomes[2]),
        "{name}: conformance `{CHECK}`: new records in a batch must apply, got {outcomes:?}"
    );
    if store.keeps_version() {
        assert_eq!(
            outcomes[1],
            WriteOutcome::Stale { stored_version: 5 },
            "{name}: conformance `{CHECK}`: the second outcome belongs to the second write"
        );
    }
}

/// Tombstones are kept as records with `deleted_at`: read and scan return
/// them, count and identity matching skip them.
pub async fn tombstones<S: RecordSink + StoreInfo>(store: &mut S) {
    const CHECK: &str = "tombstones";
    let name = store.name().to_string();
    let deleted_at = ts("2024-07-08T09:10:11.654321Z");
    let before = count(store, CHECK).await;

    let live = sample_contact(&id("tomb", 1), 7);
    write_applied(store, CHECK, &live).await;
    assert_eq!(
        count(store, CHECK).await,
        before + 1,
        "{name}: conformance `{CHECK}`: count after a live write"
    );
    let mut dead = live.clone();
    dead.version = 2;
    dead.deleted_at = Some(deleted_at);
    write_applied(store, CHECK, &dead).await;
    let got = read_one(store, CHECK, &dead.contact_id)
        .await
        .unwrap_or_else(|| {
            panic!("{name}: conformance `{CHECK}`: a tombstone must stay readable as a record")
        });
    assert_eq!(
        got.deleted_at,
        Some(deleted_at),
        "{name}: conformance `{CHECK}`: deleted_at read back"
    );
    assert_eq!(
        count(store, CHECK).await,
        before,
        "{name}: conformance `{CHECK}`: count must not include tombstones"
    );

    // A tombstone for a contact the store never had.
    let mut never = sample_contact(&id("tomb", 2), 8);
    never.deleted_at = Some(deleted_at);
    write_applied(store, CHECK, &never).await;
    let got = read_one(store, CHECK, &never.contact_id).await;
    assert_eq!(
        got.and_then(|c| c.deleted_at),
        Some(deleted_at),
        "{name}: conformance `{CHECK}`: a tombstone of an unknown contact must be stored"
    );
    assert_eq!(
        count(store, CHECK).await,
        before,
        "{name}: conformance `{CHECK}`: count after writing a new tombstone"
    );

    let email = format!("{}@example.com", dead.contact_id);
    let found = ok(
        &name,
        CHECK,
        "find_by_identity",
        store.find_by_identity(&[email], &[]).await,
    );
    assert!(
        found.iter().all(|c| c.contact_id != dead.contact_id),
        "{name}: conformance `{CHECK}`: find_by_identity must skip tombstones"
    );

    let scanned = scan_all(store, CHECK, 100).await;
    for cid in [&dead.contact_id, &never.contact_id] {
        assert!(
            scanned
                .iter()
                .any(|c| &c.contact_id == cid && c.is_deleted()),
            "{name}: conformance `{CHECK}`: scan must include tombstone {cid}"
        );
    }
}

/// Every record, page by page, checking order and page sizes.
async fn scan_all<S: RecordSink + StoreInfo>(
    store: &mut S,
    check: &str,
    limit: usize,
) -> Vec<Contact> {
    let name = store.name().to_string();
    let mut all: Vec<Contact> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = ok(
            &name,
            check,
            "scan",
            store.scan(after.as_deref(), limit).await,
        );
        assert!(
            page.len() <= limit,
            "{name}: conformance `{check}`: scan returned {} records for limit {limit}",
            page.len()
        );
        for c in &page {
            if let Some(prev) = all
                .last()
                .map(|p| p.contact_id.as_str())
                .or(after.as_deref())
            {
                assert!(
                    c.contact_id.as_str() > prev,
                    "{name}: conformance `{check}`: scan must be ordered by contact_id and \
                     after its cursor: {} came after {prev}",
                    c.contact_id
                );
            }
            all.push(c.clone());
        }
        if page.len() < limit {
            return all;
        }
        after = page.last().map(|c| c.contact_id.clone());
    }
}

/// Scan pages are ordered by `contact_id`, start after the cursor, respect
/// the limit and together hold every record once, tombstones included.
pub async fn scan_paging<S: RecordSink + StoreInfo>(store: &mut S) {
    const CHECK: &str = "scan paging";
    let name = store.name().to_string();
    let order = [4u32, 1, 6, 3, 7, 2, 5];
    let mut batch: Vec<Contact> = order
        .iter()
        .map(|n| sample_contact(&id("scan", *n), 20 + n))
        .collect();
    batch[2].deleted_at = Some(ts("2024-07-08T00:00:00Z"));
    for o in write(store, CHECK, &batch).await {
        assert!(
            matches!(o, WriteOutcome::Applied { .. }),
            "{name}: conformance `{CHECK}`: setup write failed: {o:?}"
        );
    }
    let expected: Vec<String> = (1..=7).map(|n| id("scan", n)).collect();
    for limit in [1usize, 2, 3, 1000] {
        let ids: Vec<String> = scan_all(store, CHECK, limit)
            .await
            .into_iter()
            .map(|c| c.contact_id)
            .filter(|c| c.starts_with(&format!("{PREFIX}scan-")))
            .collect();
        assert_eq!(
            ids, expected,
            "{name}: conformance `{CHECK}`: paging with limit {limit} must return each record once, in order"
        );
    }
    let after = id("scan", 3);
    let page = ok(&name, CHECK, "scan", store.scan(Some(&after), 2).await);
    let ids: Vec<&str> = page.iter().map(|c| c.contact_id.as_str()).collect();
    assert!(
        ids.len() == 2 && ids.iter().all(|i| *i > after.as_str()),
        "{name}: conformance `{CHECK}`: scan after {after} with limit 2 returned {ids:?}"
    );
    assert_eq!(
        ids[0],
        id("scan", 4),
        "{name}: conformance `{CHECK}`: scan must start right after its cursor"
    );
}

/// Identity matching finds live records by primary email (lower-cased) or
/// primary phone (E.164), and nothing for unknown keys.
pub async fn find_by_identity<S: RecordSink + StoreInfo>(store: &mut S) {
    const CHECK: &str = "find_by_identity";
    let name = store.name().to_string();
    let a = sample_contact(&id("ident", 1), 41);
    let b = sample_contact(&id("ident", 2), 42);
    write(store, CHECK, &[a.clone(), b.clone()]).await;

    let mine = |v: Vec<Contact>| -> Vec<String> {
        let mut ids: Vec<String> = v
            .into_iter()
            .map(|c| c.contact_id)
            .filter(|c| c.starts_with(&format!("{PREFIX}ident-")))
            .collect();
        ids.sort();
        ids
    };
    let a_email = format!("{}@example.com", a.contact_id);
    let found = ok(
        &name,
        CHECK,
        "find_by_identity",
        store.find_by_identity(&[a_email], &[]).await,
    );
    assert_eq!(
        mine(found),
        vec![a.contact_id.clone()],
        "{name}: conformance `{CHECK}`: lookup by primary email (stored as mixed case)"
    );
    let b_phone = b.phones[0].number.clone();
    let found = ok(
        &name,
        CHECK,
        "find_by_identity",
        store.find_by_identity(&[], &[b_phone]).await,
    );
    assert_eq!(
        mine(found),
        vec![b.contact_id.clone()],
        "{name}: conformance `{CHECK}`: lookup by primary phone"
    );
    let both = ok(
        &name,
        CHECK,
        "find_by_identity",
        store
            .find_by_identity(
                &[format!("{}@example.com", a.contact_id)],
                &[b.phones[0].number.clone()],
            )
            .await,
    );
    assert_eq!(
        mine(both),
        vec![a.contact_id.clone(), b.contact_id.clone()],
        "{name}: conformance `{CHECK}`: lookup by email or phone"
    );
    let none = ok(
        &name,
        CHECK,
        "find_by_identity",
        store
            .find_by_identity(&["nobody@example.invalid".into()], &["+19999999999".into()])
            .await,
    );
    assert!(
        mine(none).is_empty(),
        "{name}: conformance `{CHECK}`: unknown keys must match nothing"
    );
    let empty = ok(
        &name,
        CHECK,
        "find_by_identity",
        store.find_by_identity(&[], &[]).await,
    );
    assert!(
        empty.is_empty(),
        "{name}: conformance `{CHECK}`: no keys must match nothing, got {} records",
        empty.len()
    );
}

/// Reading ids the store does not have returns nothing for them, no error.
pub async fn read_missing<S: RecordSink + StoreInfo>(store: &mut S) {
    const CHECK: &str = "read of missing ids";
    let name = store.name().to_string();
    let present = sample_contact(&id("missing", 1), 51);
    write_applied(store, CHECK, &present).await;
    let missing = id("missing", 999);
    let got = ok(
        &name,
        CHECK,
        "read",
        store.read(std::slice::from_ref(&missing)).await,
    );
    assert!(
        got.is_empty(),
        "{name}: conformance `{CHECK}`: read of an unknown id returned {got:?}"
    );
    let got = ok(
        &name,
        CHECK,
        "read",
        store
            .read(&[missing.clone(), present.contact_id.clone()])
            .await,
    );
    let ids: Vec<&str> = got.iter().map(|c| c.contact_id.as_str()).collect();
    assert_eq!(
        ids,
        vec![present.contact_id.as_str()],
        "{name}: conformance `{CHECK}`: read of a known and an unknown id"
    );
    let got = ok(&name, CHECK, "read", store.read(&[]).await);
    assert!(
        got.is_empty(),
        "{name}: conformance `{CHECK}`: read of no ids returned records"
    );
}

/// The [`ChangeSource`] contract, for stores whose change stream shows the
/// store's own writes (triggers, logical replication): changes come after
/// their checkpoint, in commit order, repeatably until acknowledged, and
/// paging by checkpoint loses and repeats nothing.
pub async fn source_contract<S: ChangeSource + RecordSink + StoreInfo>(store: &mut S) {
    const CHECK: &str = "change source";
    let name = store.name().to_string();

    // Skip whatever the store already had.
    let mut head: Option<Checkpoint> = None;
    loop {
        let b = ok(
            &name,
            CHECK,
            "read_changes",
            store.read_changes(head.as_ref(), 100).await,
        );
        let more = b.has_more;
        head = Some(b.checkpoint);
        if !more {
            break;
        }
    }
    let head = head.unwrap_or_else(|| unreachable!("set in the loop"));
    let empty = ok(
        &name,
        CHECK,
        "read_changes",
        store.read_changes(Some(&head), 10).await,
    );
    assert!(
        empty.changes.is_empty() && !empty.has_more,
        "{name}: conformance `{CHECK}`: reading at the head must return nothing, got {empty:?}"
    );
    assert_eq!(
        empty.checkpoint, head,
        "{name}: conformance `{CHECK}`: an empty batch must return its input checkpoint"
    );

    let a1 = sample_contact(&id("source", 1), 61);
    let b = sample_contact(&id("source", 2), 62);
    let mut a2 = a1.clone();
    a2.version = 2;
    a2.job_title = Some("Edited".into());
    for c in [&a1, &b, &a2] {
        write_applied(store, CHECK, c).await;
    }

    let full = ok(
        &name,
        CHECK,
        "read_changes",
        store.read_changes(Some(&head), 1000).await,
    );
    assert!(
        !full.has_more,
        "{name}: conformance `{CHECK}`: has_more with room to spare"
    );
    let ours: Vec<(String, String)> = full
        .changes
        .iter()
        .filter_map(|ch| match &ch.kind {
            ChangeKind::Upsert(c) if c.contact_id.starts_with(PREFIX) => {
                Some((c.contact_id.clone(), hash(c)))
            }
            _ => None,
        })
        .collect();
    for c in [&a1, &b, &a2] {
        assert!(
            ours.iter().any(|(id, _)| id == &c.contact_id),
            "{name}: conformance `{CHECK}`: no change for written record {}",
            c.contact_id
        );
    }
    let last_a = ours.iter().rev().find(|(id, _)| id == &a1.contact_id);
    assert_eq!(
        last_a.map(|(_, h)| h.clone()),
        Some(hash(&a2)),
        "{name}: conformance `{CHECK}`: the last change of a record must carry its last content"
    );
    if let Some(first_a2) = ours
        .iter()
        .position(|(i, h)| i == &a1.contact_id && *h == hash(&a2))
    {
        assert!(
            !ours[first_a2..]
                .iter()
                .any(|(i, h)| i == &a1.contact_id && *h == hash(&a1)),
            "{name}: conformance `{CHECK}`: an earlier change came after a later one"
        );
    }

    let again = ok(
        &name,
        CHECK,
        "read_changes",
        store.read_changes(Some(&head), 1000).await,
    );
    assert_eq!(
        again, full,
        "{name}: conformance `{CHECK}`: reading again before acknowledging must return the same changes"
    );

    let mut paged = Vec::new();
    let mut cp = head.clone();
    loop {
        let page = ok(
            &name,
            CHECK,
            "read_changes",
            store.read_changes(Some(&cp), 1).await,
        );
        assert!(
            page.changes.len() <= 1,
            "{name}: conformance `{CHECK}`: limit 1 returned {} changes",
            page.changes.len()
        );
        if page.changes.is_empty() {
            assert!(
                !page.has_more,
                "{name}: conformance `{CHECK}`: empty page with has_more"
            );
            break;
        }
        assert!(
            paged.len() < full.changes.len() * 2 + 10,
            "{name}: conformance `{CHECK}`: paging by checkpoint does not advance"
        );
        paged.extend(page.changes);
        cp = page.checkpoint;
        if !page.has_more {
            break;
        }
    }
    assert_eq!(
        paged, full.changes,
        "{name}: conformance `{CHECK}`: paging by checkpoint must return the same changes, once each"
    );

    ok(
        &name,
        CHECK,
        "acknowledge",
        store.acknowledge(&full.checkpoint).await,
    );
    ok(
        &name,
        CHECK,
        "acknowledge (repeated)",
        store.acknowledge(&full.checkpoint).await,
    );
    ok(
        &name,
        CHECK,
        "acknowledge (older)",
        store.acknowledge(&head).await,
    );
    let after = ok(
        &name,
        CHECK,
        "read_changes",
        store.read_changes(Some(&full.checkpoint), 100).await,
    );
    assert!(
        after.changes.is_empty(),
        "{name}: conformance `{CHECK}`: changes after the acknowledged checkpoint: {:?}",
        after.changes
    );
}
