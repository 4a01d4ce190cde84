//! The sync contract, scenario by scenario, with in-memory stores.

mod support;

use contact_sync_core::model::parse_ts;
use contact_sync_core::Contact;
use contact_sync_engine::CANONICAL;
use support::{person, settle, World};

async fn seeded(n: usize) -> (World, contact_sync_engine::Engine) {
    let w = World::new();
    for i in 0..n {
        w.canonical
            .user_upsert(person(&format!("C{i:03}"), &format!("Person {i}")));
    }
    let mut e = w.engine();
    let mut progress = |_: &str, _: u64, _: u64| {};
    let v = e.initial_sync(&mut progress).await.expect("initial sync");
    assert!(
        v.iter().all(|v| v.missing == 0 && v.differing == 0),
        "{v:?}"
    );
    settle(&mut e, 5).await;
    w.assert_converged();
    (w, e)
}

#[tokio::test]
async fn initial_sync_copies_everything_once_and_verifies() {
    let (w, mut e) = seeded(23).await;
    assert_eq!(w.local.live().len(), 23);
    assert_eq!(w.crm.live().len(), 23);
    let v = e.verify().await.unwrap();
    assert_eq!(v.len(), 2);
    for s in v {
        assert_eq!(
            (s.expected, s.matching, s.missing, s.extra),
            (23, 23, 0, 0),
            "{s:?}"
        );
    }
    // Nothing was sent twice.
    assert_eq!(w.local.redundant_writes(), 0);
    assert_eq!(w.crm.redundant_writes(), 0);
}

#[tokio::test]
async fn edit_in_one_store_reaches_canonical_and_the_others() {
    let (w, mut e) = seeded(5).await;
    let mut c = w.local.get("C002").unwrap();
    c.job_title = Some("Architect".into());
    w.local.user_upsert(c);
    settle(&mut e, 5).await;
    let canon = w.canonical.get("C002").unwrap();
    assert_eq!(canon.job_title.as_deref(), Some("Architect"));
    assert_eq!(canon.version, 2);
    assert_eq!(canon.last_updated_by.as_deref(), Some("local"));
    assert_eq!(
        w.crm.get("C002").unwrap().job_title.as_deref(),
        Some("Architect")
    );
    // The store the edit came from is brought to canonical's version.
    assert_eq!(w.local.get("C002").unwrap().version, 2);
    w.assert_converged();
    // The journal says who changed what, old → new.
    let j = e.state().journal_of("C002", 10).unwrap();
    let entry = j.iter().find(|x| x.version == 2).expect("journal entry v2");
    assert_eq!(entry.origin, "local");
    assert_eq!(entry.changes.len(), 1);
    assert_eq!(entry.changes[0].field, "job_title");
    assert_eq!(entry.changes[0].old, serde_json::json!("Engineer"));
    assert_eq!(entry.changes[0].new, serde_json::json!("Architect"));
    // No write echoed back to the store it came from, nothing sent twice.
    assert_eq!(w.local.redundant_writes(), 0, "{:?}", w.local.writes());
    assert_eq!(w.crm.redundant_writes(), 0, "{:?}", w.crm.writes());
}

#[tokio::test]
async fn unversioned_store_edit_counts_as_base_plus_one() {
    let (w, mut e) = seeded(3).await;
    let mut c = w.crm.get("C001").unwrap();
    c.notes = Some("met at the conference".into());
    w.crm.user_upsert(c);
    settle(&mut e, 5).await;
    let canon = w.canonical.get("C001").unwrap();
    assert_eq!(canon.notes.as_deref(), Some("met at the conference"));
    assert_eq!(
        (canon.version, canon.last_updated_by.as_deref()),
        (2, Some("crm"))
    );
    w.assert_converged();
}

#[tokio::test]
async fn same_field_equal_versions_equal_times_is_one_open_conflict() {
    let (w, mut e) = seeded(3).await;
    let t = parse_ts("2026-05-01T12:00:00Z").unwrap();
    let mut a = w.canonical.get("C000").unwrap();
    a.job_title = Some("CTO".into());
    a.version = 2;
    a.last_updated = Some(t);
    w.canonical.user_upsert(a);
    let mut b = w.local.get("C000").unwrap();
    b.job_title = Some("CEO".into());
    b.version = 2;
    b.last_updated = Some(t);
    w.local.user_upsert(b);
    settle(&mut e, 5).await;
    let open = e.state().conflicts(true).unwrap();
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].contact_id, "C000");
    assert_eq!(open[0].conflict.field, "job_title");
    assert_eq!(open[0].conflict.canonical, serde_json::json!("CTO"));
    assert_eq!(open[0].conflict.incoming, serde_json::json!("CEO"));
    // Canonical kept, and every store converges on it.
    assert_eq!(
        w.canonical.get("C000").unwrap().job_title.as_deref(),
        Some("CTO")
    );
    w.assert_converged();
    // A person takes the incoming value: it becomes a new version everywhere.
    e.resolve_conflict(open[0].id, true).await.unwrap();
    settle(&mut e, 5).await;
    let c = w.canonical.get("C000").unwrap();
    assert_eq!(c.job_title.as_deref(), Some("CEO"));
    assert_eq!(c.last_updated_by.as_deref(), Some("manual"));
    assert!(e.state().conflicts(true).unwrap().is_empty());
    w.assert_converged();
}

#[tokio::test]
async fn higher_version_wins_and_the_loser_is_journaled() {
    let (w, mut e) = seeded(2).await;
    let mut a = w.canonical.get("C001").unwrap();
    a.job_title = Some("Canonical title".into());
    a.version = 5;
    w.canonical.user_upsert(a);
    let mut b = w.local.get("C001").unwrap();
    b.job_title = Some("Local title".into());
    b.version = 2;
    w.local.user_upsert(b);
    settle(&mut e, 5).await;
    assert_eq!(
        w.canonical.get("C001").unwrap().job_title.as_deref(),
        Some("Canonical title")
    );
    assert!(
        e.state().conflicts(true).unwrap().is_empty(),
        "settled by rule, not open"
    );
    let lost = e
        .state()
        .journal_of("C001", 20)
        .unwrap()
        .into_iter()
        .flat_map(|j| j.conflicts)
        .any(|c| c.incoming == serde_json::json!("Local title"));
    assert!(lost, "the losing edit is recorded in the journal");
    // And inspectable like any conflict (`conflicts list --all`): both
    // values, the versions and the rule that decided.
    let all = e.state().conflicts(false).unwrap();
    let settled = all
        .iter()
        .find(|r| r.contact_id == "C001" && r.conflict.field == "job_title")
        .expect("the settled conflict is kept");
    assert_eq!(settled.status, "kept_canonical");
    assert_eq!(settled.store, "local");
    assert_eq!(
        settled.conflict.canonical,
        serde_json::json!("Canonical title")
    );
    assert_eq!(settled.conflict.incoming, serde_json::json!("Local title"));
    assert_eq!(settled.conflict.resolution.as_str(), "canonical_by_version");
    w.assert_converged();
}

#[tokio::test]
async fn delete_propagates_as_tombstone_and_delete_vs_edit_is_a_conflict() {
    let (w, mut e) = seeded(4).await;
    assert!(w.local.user_delete("C001"));
    settle(&mut e, 5).await;
    assert!(w.canonical.get("C001").unwrap().is_deleted());
    assert!(w.crm.get("C001").is_none_or(|c| c.is_deleted()));
    w.assert_converged();

    // Concurrent: canonical edited, CRM deleted, same cycle.
    let mut a = w.canonical.get("C002").unwrap();
    a.notes = Some("important".into());
    w.canonical.user_upsert(a);
    w.crm
        .user_soft_delete("C002", contact_sync_core::model::now());
    settle(&mut e, 5).await;
    let open = e.state().conflicts(true).unwrap();
    assert!(
        open.iter()
            .any(|c| c.contact_id == "C002" && c.conflict.field == "deleted_at"),
        "{open:?}"
    );
    assert!(
        !w.canonical.get("C002").unwrap().is_deleted(),
        "the delete is not silent"
    );
    w.assert_converged();
}

#[tokio::test]
async fn record_created_without_id_is_matched_or_minted_and_written_back() {
    let (w, mut e) = seeded(3).await;
    // A contact new in canonical, typed into the CRM by hand before it got there.
    w.canonical.user_upsert(person("C100", "Hundred"));
    let mut same = person("", "Hundred (typed in CRM)");
    same.emails[0].address = "c100@example.com".into();
    let n1 = w.crm.user_create_without_id(same);
    // A new person: gets a minted id.
    let mut fresh = person("", "Brand New");
    fresh.emails[0].address = "brand.new@example.com".into();
    let n2 = w.crm.user_create_without_id(fresh);
    settle(&mut e, 6).await;
    let r1 = w.crm.get_native(&n1).unwrap();
    assert_eq!(
        r1.contact_id, "C100",
        "matched by primary email and written back"
    );
    let r2 = w.crm.get_native(&n2).unwrap();
    assert!(!r2.contact_id.is_empty(), "minted id written back");
    assert_eq!(
        w.canonical.get(&r2.contact_id).unwrap().canonical_name,
        "Brand New"
    );
    assert_eq!(w.canonical.live().len(), 5, "no duplicate");
    assert_eq!(w.crm.live().len(), 5);
    w.assert_converged();
}

#[tokio::test]
async fn a_second_record_of_a_linked_contact_is_a_dead_letter_not_a_duplicate() {
    let (w, mut e) = seeded(3).await;
    let mut dup = person("", "Person One again");
    dup.emails[0].address = "c001@example.com".into();
    let n = w.crm.user_create_without_id(dup);
    settle(&mut e, 5).await;
    let dl = e.state().dead_letters(10).unwrap();
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(dl[0].record, format!("crm record {n}"));
    assert!(
        dl[0].reason.contains("duplicates contact C001"),
        "{}",
        dl[0].reason
    );
    assert_eq!(w.canonical.live().len(), 3);
}

#[tokio::test]
async fn bad_records_go_to_dead_letters_and_the_rest_syncs() {
    let (w, mut e) = seeded(3).await;
    let mut bad = w.local.get("C000").unwrap();
    bad.subcategory_code = Some("G7".into()); // not under B
    w.local.user_upsert(bad);
    let mut good = w.local.get("C001").unwrap();
    good.job_title = Some("Still synced".into());
    w.local.user_upsert(good);
    settle(&mut e, 5).await;
    let dl = e.state().dead_letters(10).unwrap();
    assert_eq!(dl.len(), 1, "{dl:?}");
    assert_eq!(
        (
            dl[0].store.as_str(),
            dl[0].record.as_str(),
            dl[0].field.as_str()
        ),
        ("local", "C000", "subcategory_code")
    );
    assert!(
        dl[0].reason.contains("not under category"),
        "{}",
        dl[0].reason
    );
    assert_eq!(
        w.canonical.get("C001").unwrap().job_title.as_deref(),
        Some("Still synced")
    );
    assert_eq!(
        w.canonical.get("C000").unwrap().subcategory_code.as_deref(),
        Some("B1")
    );
}

#[tokio::test]
async fn canonical_edits_by_other_tools_are_versioned_and_propagated() {
    let (w, mut e) = seeded(2).await;
    let mut a = w.canonical.get("C000").unwrap();
    a.organization = Some("Acme".into()); // version not bumped by the other tool
    w.canonical.user_upsert(a);
    settle(&mut e, 5).await;
    let c = w.canonical.get("C000").unwrap();
    assert_eq!((c.version, c.organization.as_deref()), (2, Some("Acme")));
    assert_eq!(
        w.local.get("C000").unwrap().organization.as_deref(),
        Some("Acme")
    );
    w.assert_converged();
}

#[tokio::test]
async fn restart_loses_nothing_and_replaying_the_journal_changes_nothing() {
    let (w, e) = seeded(6).await;
    drop(e);
    let mut c = w.local.get("C003").unwrap();
    c.nickname = Some("Tre".into());
    w.local.user_upsert(c);
    let mut e = w.engine();
    settle(&mut e, 5).await;
    assert_eq!(w.crm.get("C003").unwrap().nickname.as_deref(), Some("Tre"));
    w.local.clear_write_log();
    w.crm.clear_write_log();
    w.canonical.clear_write_log();
    // Rewind every cursor to the start of the journal and run again.
    {
        let tx = e.state_mut().tx().unwrap();
        for s in [CANONICAL, "local", "crm"] {
            tx.set_cursor(s, 0).unwrap();
        }
        tx.commit().unwrap();
    }
    settle(&mut e, 5).await;
    let applied =
        |h: &contact_sync_memory::MemoryHandle| h.writes().iter().filter(|w| w.applied).count();
    assert_eq!(applied(&w.local), 0, "{:?}", w.local.writes());
    assert_eq!(applied(&w.crm), 0, "{:?}", w.crm.writes());
    assert_eq!(applied(&w.canonical), 0, "{:?}", w.canonical.writes());
    w.assert_converged();
}

#[tokio::test]
async fn category_x_is_kept_out_of_stores_that_refuse_it() {
    // The memory store accepts everything; the rule lives in `accepts`, which
    // the Twenty store overrides. Here we check the engine keeps X contacts
    // in canonical and the database-like stores.
    let (w, mut e) = seeded(1).await;
    let mut x: Contact = w.canonical.get("C000").unwrap();
    x.category_code = Some("X".into());
    x.subcategory_code = None;
    w.canonical.user_upsert(x);
    settle(&mut e, 5).await;
    assert_eq!(
        w.local.get("C000").unwrap().category_code.as_deref(),
        Some("X")
    );
}

/// Sets every store's journal cursor back to 0 (a replay from the start).
fn rewind(e: &mut contact_sync_engine::Engine) {
    let tx = e.state_mut().tx().unwrap();
    for s in [CANONICAL, "local", "crm"] {
        tx.set_cursor(s, 0).unwrap();
    }
    tx.commit().unwrap();
}

#[tokio::test]
async fn a_contact_created_and_deleted_before_a_sync_is_never_sent_live() {
    let (mut w, _) = seeded(2).await;
    // One journal entry per batch: the create and the delete land in
    // different propagation batches.
    w.batch_size = 1;
    let mut e = w.engine();
    let mut c = person("N1", "Short-lived");
    c.emails[0].address = "n1@example.com".into();
    w.local.user_upsert(c);
    w.local
        .user_soft_delete("N1", contact_sync_core::model::now());
    settle(&mut e, 8).await;
    assert!(w.canonical.get("N1").unwrap().is_deleted());
    assert!(
        w.crm.writes().iter().all(|x| x.contact_id != "N1"),
        "crm never had N1 and needs nothing: {:?}",
        w.crm.writes()
    );
    w.assert_converged();
    // Replaying the journal does not create it, then delete it, either.
    w.crm.clear_write_log();
    rewind(&mut e);
    settle(&mut e, 30).await;
    assert!(w.crm.writes().is_empty(), "{:?}", w.crm.writes());
    w.assert_converged();
}

#[tokio::test]
async fn a_delete_kept_against_an_edit_with_a_higher_version_reaches_that_store() {
    let (w, mut e) = seeded(2).await;
    assert!(w.canonical.user_delete("C001"));
    // Edited twice in the local database, each time with a version bump:
    // the record there is now at a version above canonical's tombstone.
    for title in ["First", "Second"] {
        let mut c = w.local.get("C001").unwrap();
        c.job_title = Some(title.into());
        c.version += 1;
        w.local.user_upsert(c);
    }
    settle(&mut e, 6).await;
    // Delete racing an edit: a conflict, canonical (deleted) kept...
    assert!(w.canonical.get("C001").unwrap().is_deleted());
    let open = e.state().conflicts(true).unwrap();
    assert!(
        open.iter()
            .any(|c| c.contact_id == "C001" && c.conflict.field == "deleted_at"),
        "{open:?}"
    );
    // ...and the local database takes the tombstone despite its version.
    assert!(w.local.get("C001").unwrap().is_deleted());
    w.assert_converged();
}

#[tokio::test]
async fn a_delete_in_canonical_before_the_first_cycle_is_not_undone_by_a_store_edit() {
    // Initial sync copies the contacts without journaling them; canonical
    // then removes one outright while the local database edits it.
    let w = World::new();
    for i in 0..2 {
        w.canonical
            .user_upsert(person(&format!("C{i:03}"), &format!("Person {i}")));
    }
    let mut e = w.engine();
    let mut progress = |_: &str, _: u64, _: u64| {};
    e.initial_sync(&mut progress).await.unwrap();
    assert!(w.canonical.user_delete("C000"));
    let mut c = w.local.get("C000").unwrap();
    c.job_title = Some("Edited".into());
    w.local.user_upsert(c);
    settle(&mut e, 6).await;
    // The store never saw the delete: its edit races it (a conflict), it
    // does not bring the contact back.
    assert!(w.canonical.get("C000").unwrap().is_deleted());
    let open = e.state().conflicts(true).unwrap();
    assert!(
        open.iter()
            .any(|c| c.contact_id == "C000" && c.conflict.field == "deleted_at"),
        "{open:?}"
    );
    w.assert_converged();
}

#[tokio::test]
async fn an_edit_in_canonical_after_a_failed_canonical_write_is_merged_not_overwritten() {
    use contact_sync_memory::{FaultPlan, FaultRates, Operation};
    let writes_fail = FaultRates {
        fail_before: 1.0,
        timeout: 0.0,
        ack_lost: 0.0,
    };
    let w = World::new().with_faults([
        FaultPlan::new(1).for_operation(Operation::WriteBatch, writes_fail),
        FaultPlan::new(2),
        FaultPlan::new(3),
    ]);
    let faults = w.faults.clone().unwrap();
    faults[0].disable();
    for i in 0..2 {
        w.canonical
            .user_upsert(person(&format!("C{i:03}"), &format!("Person {i}")));
    }
    let mut e = w.engine();
    let mut progress = |_: &str, _: u64, _: u64| {};
    e.initial_sync(&mut progress).await.unwrap();
    settle(&mut e, 5).await;

    // An edit in the CRM is journaled, but canonical refuses the write.
    let mut c = w.crm.get("C001").unwrap();
    c.job_title = Some("From the CRM".into());
    w.crm.user_upsert(c);
    faults[0].enable();
    assert!(e.cycle().await.is_err(), "the canonical write fails");
    faults[0].disable();
    // Meanwhile someone edits another field directly in canonical.
    let mut c = w.canonical.get("C001").unwrap();
    c.notes = Some("From canonical".into());
    w.canonical.user_upsert(c);

    settle(&mut e, 6).await;
    let c = w.canonical.get("C001").unwrap();
    assert_eq!(
        (c.job_title.as_deref(), c.notes.as_deref()),
        (Some("From the CRM"), Some("From canonical"))
    );
    w.assert_converged();
}

#[tokio::test]
async fn a_second_delete_after_an_undelete_is_not_taken_for_an_echo() {
    let (w, mut e) = seeded(2).await;
    let t = contact_sync_core::model::now();
    assert!(w.canonical.user_soft_delete("C001", t));
    settle(&mut e, 5).await;
    assert!(w.local.get("C001").unwrap().is_deleted());
    // Brought back in canonical, then deleted again in the local database:
    // the new tombstone hashes like the old one, yet it is a real delete.
    let mut c = w.canonical.get("C001").unwrap();
    c.deleted_at = None;
    w.canonical.user_upsert(c);
    settle(&mut e, 5).await;
    assert!(!w.local.get("C001").unwrap().is_deleted());
    assert!(w.local.user_soft_delete("C001", t));
    settle(&mut e, 5).await;
    assert!(w.canonical.get("C001").unwrap().is_deleted());
    assert!(w.crm.get("C001").unwrap().is_deleted());
    w.assert_converged();
}

/// A store's first edit of a contact the initial sync copied (no journal
/// entry: its base is the version the sync wrote) races an edit of another
/// field made in canonical that canonical's capture has not delivered yet
/// (it lands after canonical's step of the cycle, as a BigQuery edit comes
/// only after its overlap window). Both fields are kept, merged field by
/// field from the base another store still holds: no conflict at all.
#[tokio::test]
async fn a_first_store_edit_after_the_initial_sync_merges_with_an_undelivered_canonical_edit() {
    use contact_sync_memory::{FaultPlan, Operation};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let w = World::new().with_faults([FaultPlan::new(1), FaultPlan::new(2), FaultPlan::new(3)]);
    for i in 0..2 {
        w.canonical
            .user_upsert(person(&format!("C{i:03}"), &format!("Person {i}")));
    }
    // Canonical was filled before contact-sync came (its change stream no
    // longer holds those inserts, as BigQuery's watermark starts at now).
    {
        use contact_sync_connector::ChangeSource;
        let mut s = w.canonical.store();
        s.acknowledge(&w.canonical.head_checkpoint()).await.unwrap();
    }
    let mut e = w.engine();
    let mut progress = |_: &str, _: u64, _: u64| {};
    e.initial_sync(&mut progress).await.unwrap();
    settle(&mut e, 5).await;
    let j = e.state().journal_of("C001", 5).unwrap();
    assert!(j.is_empty(), "{j:?}");

    let mut c = w.crm.get("C001").unwrap();
    c.job_title = Some("From the CRM".into());
    w.crm.user_upsert(c);
    let canonical = w.canonical.clone();
    let done = Arc::new(AtomicBool::new(false));
    w.faults.as_ref().unwrap()[2].set_hook(Some(Arc::new(move |op, _| {
        if op == Operation::ReadChanges && !done.swap(true, Ordering::SeqCst) {
            let mut c = canonical.get("C001").unwrap();
            c.notes = Some("From canonical".into());
            canonical.user_upsert(c);
        }
    })));

    settle(&mut e, 6).await;
    let conflicts = e.state().conflicts(false).unwrap();
    let c = w.canonical.get("C001").unwrap();
    assert_eq!(
        (c.job_title.as_deref(), c.notes.as_deref()),
        (Some("From the CRM"), Some("From canonical")),
        "{conflicts:?}"
    );
    assert!(conflicts.is_empty(), "merged field by field: {conflicts:?}");
    w.assert_converged();
}

/// A user edits canonical twice without bumping its version: the first
/// edit is journaled one version above what the row carries, and before the
/// engine writes that version back the second edit lands. The second edit
/// is made on top of the first, so it wins everywhere with no conflict
/// (before, it was merged against the older base, read as a conflict with
/// the first and settled by version against the user's newer value; the
/// three-daemon test found it, a failover widening the window).
#[tokio::test]
async fn a_second_unbumped_canonical_edit_before_the_first_is_written_back_wins() {
    use contact_sync_memory::{FaultPlan, Operation};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let w = World::new().with_faults([FaultPlan::new(1), FaultPlan::new(2), FaultPlan::new(3)]);
    w.canonical.user_upsert(person("C001", "Person 1"));
    let mut e = w.engine();
    let mut progress = |_: &str, _: u64, _: u64| {};
    e.initial_sync(&mut progress).await.unwrap();
    settle(&mut e, 5).await;
    let v1 = w.canonical.get("C001").unwrap();

    // The first edit, version not bumped.
    let mut first = v1.clone();
    first.notes = Some("first".into());
    w.canonical.user_upsert(first.clone());
    // The second lands just before the engine's first write to canonical
    // (the version write-back of the first), also unbumped.
    let canonical = w.canonical.clone();
    let done = Arc::new(AtomicBool::new(false));
    w.faults.as_ref().unwrap()[0].set_hook(Some(Arc::new(move |op, _| {
        if op == Operation::WriteBatch && !done.swap(true, Ordering::SeqCst) {
            let mut second = canonical.get("C001").unwrap();
            assert_eq!(second.notes.as_deref(), Some("first"));
            second.notes = Some("second".into());
            canonical.user_upsert(second);
        }
    })));
    settle(&mut e, 6).await;
    let conflicts = e.state().conflicts(false).unwrap();
    assert!(conflicts.is_empty(), "no conflict: {conflicts:?}");
    for (name, store) in [
        ("canonical", &w.canonical),
        ("local", &w.local),
        ("crm", &w.crm),
    ] {
        assert_eq!(
            store.get("C001").unwrap().notes.as_deref(),
            Some("second"),
            "{name}"
        );
    }
    w.assert_converged();
}

/// Issue 14, observation 9, for every canonical kind: the initial sync
/// stores canonical's position from before its copy as canonical's
/// checkpoint, so the first cycle reads only what changed since (here the
/// memory store's change log held the 40 seeded records), and an edit made
/// in canonical while the copy ran still arrives.
#[tokio::test]
async fn the_first_cycle_after_an_initial_sync_reads_only_edits_made_since_it_began() {
    let w = World::new();
    for i in 0..40 {
        w.canonical
            .user_upsert(person(&format!("C{i:03}"), &format!("Person {i}")));
    }
    let mut e = w.engine();
    let mut edited = false;
    let mut progress = |_: &str, done: u64, _: u64| {
        if done > 0 && !edited {
            edited = true;
            let mut c = w.canonical.get("C007").expect("C007");
            c.job_title = Some("Edited during the copy".into());
            w.canonical.user_upsert(c);
        }
    };
    e.initial_sync(&mut progress).await.expect("initial sync");
    assert!(edited);
    let r = e.cycle().await.expect("cycle");
    let captured: u64 = r
        .stores
        .iter()
        .filter(|s| s.store == CANONICAL)
        .map(|s| s.stats.captured)
        .sum();
    assert_eq!(captured, 1, "only the edit made during the copy: {r:?}");
    settle(&mut e, 5).await;
    for s in [&w.local, &w.crm] {
        assert_eq!(
            s.get("C007").and_then(|c| c.job_title).as_deref(),
            Some("Edited during the copy")
        );
    }
    w.assert_converged();
}

/// Right after an initial sync, a contact never journaled is edited in
/// canonical after canonical's capture and before a store's capture, which
/// meets the contact only as a record that store already holds (the echo
/// of the copy, or a user saving it unchanged). The store's capture reads
/// canonical for it: recording canonical's content as "seen" there made
/// canonical's capture skip the edit as an echo — lost without a conflict.
/// (With several daemons another daemon captures canonical at any time;
/// the cluster test found it.)
#[tokio::test]
async fn a_canonical_edit_read_by_a_stores_capture_before_canonical_journals_it_is_not_lost() {
    use contact_sync_memory::Operation;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let w = World::passthrough();
    for i in 0..3 {
        w.canonical
            .user_upsert(person(&format!("C{i:03}"), &format!("Person {i}")));
    }
    let mut e = w.engine();
    let mut progress = |_: &str, _: u64, _: u64| {};
    e.initial_sync(&mut progress).await.expect("initial sync");
    assert!(e.state().journal_of("C001", 1).unwrap().is_empty());
    // In the first cycle after the copy, when the engine reads local's changes (after canonical's capture in
    // this cycle): canonical's C001 is edited, and someone saves local's
    // C001 unchanged.
    let fired = Arc::new(AtomicBool::new(false));
    {
        let (canonical, local, fired) = (w.canonical.clone(), w.local.clone(), fired.clone());
        w.faults.as_ref().unwrap()[1].set_hook(Some(Arc::new(move |op, store| {
            if op == Operation::ReadChanges
                && store == "local"
                && !fired.swap(true, Ordering::SeqCst)
            {
                let mut c = canonical.get("C001").expect("in canonical");
                c.job_title = Some("Edited in canonical".into());
                c.version += 1;
                canonical.user_upsert(c);
                local.user_upsert(local.get("C001").expect("in local"));
            }
        })));
    }
    settle(&mut e, 6).await;
    assert!(fired.load(Ordering::SeqCst));
    assert_eq!(
        w.local.get("C001").unwrap().job_title.as_deref(),
        Some("Edited in canonical")
    );
    w.assert_converged();
}

/// A store's app that raises the version on every save, changed or not: a
/// save with nothing changed but the version is no edit, but the store now
/// holds a version above canonical's. Canonical's next edit must still
/// reach it (the store's version guard would refuse it as older, and no
/// capture would ever bring the "newer edit" in: lost for good).
#[tokio::test]
async fn a_save_that_only_raises_the_version_does_not_block_later_edits() {
    let (w, mut e) = seeded(3).await;
    let mut c = w.local.get("C001").unwrap();
    assert_eq!(c.version, 1);
    c.version = 5;
    w.local.user_upsert(c);
    settle(&mut e, 5).await;
    let mut k = w.canonical.get("C001").unwrap();
    k.job_title = Some("Edited in canonical".into());
    k.version += 1;
    w.canonical.user_upsert(k);
    settle(&mut e, 5).await;
    assert_eq!(
        w.local.get("C001").unwrap().job_title.as_deref(),
        Some("Edited in canonical"),
        "canonical's edit reached the store whose version was raised"
    );
    w.assert_converged();
}

/// The same in canonical: a tool saves a contact unchanged at a far higher
/// version; an edit made in a store afterwards is still taken by canonical
/// (its write at the journal's next version would be refused as older).
#[tokio::test]
async fn a_save_in_canonical_that_only_raises_the_version_does_not_block_edits() {
    let (w, mut e) = seeded(3).await;
    let mut k = w.canonical.get("C002").unwrap();
    k.version = 1_000;
    w.canonical.user_upsert(k);
    settle(&mut e, 5).await;
    let mut c = w.local.get("C002").unwrap();
    c.job_title = Some("Edited in local".into());
    w.local.user_upsert(c);
    settle(&mut e, 5).await;
    let canon = w.canonical.get("C002").unwrap();
    assert_eq!(canon.job_title.as_deref(), Some("Edited in local"));
    assert!(canon.version > 1_000, "{}", canon.version);
    w.assert_converged();
}
