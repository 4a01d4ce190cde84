//! The capture budget (`EngineOptions::capture_budget`, the daemon's
//! `[sync] capture_budget_ms`): a store's backlog is merged in slices, and
//! the other stores' edits go out between them.

mod support;

use contact_sync_engine::{CycleReport, Engine};
use contact_sync_memory::{MemoryHandle, MemoryOptions};
use support::{person, World};

async fn seeded(n: usize) -> World {
    seeded_in(World::new(), n).await
}

async fn seeded_in(w: World, n: usize) -> World {
    for i in 0..n {
        w.canonical
            .user_upsert(person(&format!("C{i:03}"), &format!("Person {i}")));
    }
    let mut e = w.engine();
    let mut progress = |_: &str, _: u64, _: u64| {};
    e.initial_sync(&mut progress).await.expect("initial sync");
    for _ in 0..5 {
        e.cycle().await.expect("cycle");
    }
    w.assert_converged();
    w
}

fn id(i: usize) -> String {
    format!("C{i:03}")
}

/// A user edits the job title of contacts 0..n in `store`: `{label} {i}`.
fn mass_edit(store: &MemoryHandle, label: &str, n: usize) {
    for i in 0..n {
        let mut c = store.get(&id(i)).expect("contact");
        c.job_title = Some(format!("{label} {i}"));
        store.user_upsert(c);
    }
}

/// How many of contacts 0..n hold `{label} {i}` in `store`.
fn holding(store: &MemoryHandle, label: &str, n: usize) -> usize {
    (0..n)
        .filter(|i| store.get(&id(*i)).expect("contact").job_title == Some(format!("{label} {i}")))
        .count()
}

/// A user edits C039's notes in the CRM.
fn crm_edit(w: &World) {
    let mut c = w.crm.get("C039").expect("contact");
    c.notes = Some("edited in the CRM".into());
    w.crm.user_upsert(c);
}

fn crm_note(store: &MemoryHandle) -> Option<String> {
    store.get("C039").expect("C039").notes
}

/// An engine whose budget is spent at once: every capture and every
/// propagation stops after one batch.
fn sliced(w: &World) -> Engine {
    w.engine_with(|o| o.capture_budget = Some(std::time::Duration::ZERO))
}

/// Runs cycles until one leaves nothing for the next; returns how many.
async fn run_out(e: &mut Engine) -> usize {
    for n in 1..50 {
        if !e.cycle().await.expect("cycle").more {
            return n;
        }
    }
    panic!("the backlog never ended");
}

fn captured(r: &CycleReport, store: &str) -> u64 {
    r.stores
        .iter()
        .find(|s| s.store == store)
        .map_or(0, |s| s.stats.captured - s.stats.skipped_echo)
}

#[tokio::test]
async fn a_backlog_is_merged_in_slices_and_another_stores_edit_goes_out_between_them() {
    let w = seeded(40).await;
    // A backlog in local: 40 edits (6 batches of 7), and one edit in the CRM.
    mass_edit(&w.local, "Backlog", 40);
    crm_edit(&w);

    let mut e = sliced(&w);
    let first = e.cycle().await.expect("cycle");
    assert!(first.more, "the report asks for the next cycle at once");
    assert_eq!(captured(&first, "local"), 7, "one batch of local's backlog");
    assert_eq!(captured(&first, "crm"), 1);
    // The CRM's edit reached canonical in that cycle, behind local's
    // backlog (local itself is written once its backlog is merged: its
    // pending edits would race the writes).
    assert_eq!(crm_note(&w.canonical).as_deref(), Some("edited in the CRM"));
    assert_eq!(
        holding(&w.canonical, "Backlog", 40),
        7,
        "the rest of the backlog is left for later cycles"
    );

    // The rest follows, a batch a cycle, each edit merged once.
    let mut cycles = 1;
    let mut total = captured(&first, "local");
    loop {
        let r = e.cycle().await.expect("cycle");
        total += captured(&r, "local");
        cycles += 1;
        if !r.more {
            break;
        }
        assert!(cycles < 50, "the backlog never ended");
    }
    assert!(cycles >= 6, "sliced: {cycles} cycles");
    assert_eq!(
        total, 40,
        "every edit of the backlog captured once (echoes aside)"
    );
    assert_eq!(holding(&w.canonical, "Backlog", 40), 40);
    assert_eq!(holding(&w.crm, "Backlog", 40), 40);
    let head = e.state().journal_head().expect("head");
    let entries = e.state().journal_after(0, head, 100_000).expect("journal");
    for i in 0..40 {
        let n = entries
            .iter()
            .filter(|en| en.contact_id == id(i) && en.origin == "local")
            .count();
        assert_eq!(n, 1, "{}: journaled {n} times from local", id(i));
    }
    w.assert_converged();
}

#[tokio::test]
async fn a_restart_in_the_middle_of_a_sliced_backlog_reads_the_rest_again() {
    let w = seeded(30).await;
    mass_edit(&w.local, "Backlog", 30);
    let mut e = sliced(&w);
    assert!(e.cycle().await.expect("cycle").more);
    // The engine stops with the rest of the window kept in memory only.
    drop(e);
    let mut e = sliced(&w);
    run_out(&mut e).await;
    assert_eq!(holding(&w.crm, "Backlog", 30), 30);
    w.assert_converged();
}

#[tokio::test]
async fn a_canonical_backlog_is_sliced_and_a_crm_edit_reaches_local_before_its_end() {
    let w = seeded(40).await;
    // A mass edit in canonical (40 edits, 6 batches of 7) and one in the CRM.
    mass_edit(&w.canonical, "Mass", 40);
    crm_edit(&w);

    let mut e = sliced(&w);
    let first = e.cycle().await.expect("cycle");
    assert!(first.more, "the report asks for the next cycle at once");
    let first_slice = captured(&first, "canonical");
    assert!(
        (7..40).contains(&first_slice),
        "one batch of canonical's: {first_slice}"
    );
    // Local is written a batch at a time as well: the CRM's edit, journaled
    // after canonical's first slice, goes out in the second cycle, before
    // the rest of canonical's backlog is even read.
    assert!(e.cycle().await.expect("cycle").more);
    assert_eq!(
        crm_note(&w.local).as_deref(),
        Some("edited in the CRM"),
        "the CRM's edit reached local in the second cycle"
    );
    let in_local = holding(&w.local, "Mass", 40);
    assert!(
        in_local < 40,
        "canonical's backlog was sliced ({in_local} in local)"
    );

    let cycles = 2 + run_out(&mut e).await;
    assert!(cycles >= 6, "sliced: {cycles} cycles");
    assert_eq!(holding(&w.local, "Mass", 40), 40);
    w.assert_converged();
}

#[tokio::test]
async fn a_store_with_metered_reads_is_not_polled_in_every_slice_of_another_stores_backlog() {
    // A CRM whose every read is a request of its budget (as Twenty's polls).
    let mut w = World::new();
    w.crm = MemoryHandle::new(
        MemoryOptions::new("crm")
            .keeps_version(false)
            .own_ids(true)
            .metered_reads(true),
    );
    let w = seeded_in(w, 40).await;
    mass_edit(&w.canonical, "Mass", 40);
    let mut e = sliced(&w);
    let (crm_before, local_before) = (w.crm.reads(), w.local.reads());
    let cycles = run_out(&mut e).await as u64;
    assert!(cycles >= 6, "sliced: {cycles} cycles");
    assert_eq!(
        holding(&w.crm, "Mass", 40),
        40,
        "the CRM was written between the slices"
    );
    let (crm_reads, local_reads) = (w.crm.reads() - crm_before, w.local.reads() - local_before);
    assert!(
        local_reads >= cycles,
        "local is read in every slice: {local_reads} reads in {cycles} cycles"
    );
    assert_eq!(
        crm_reads, 1,
        "the CRM is read once, in the first cycle ({cycles} cycles)"
    );
    // The first cycle after the backlog reads it again (the echoes of
    // those writes).
    let more = e.cycle().await.expect("cycle").more;
    assert!(
        w.crm.reads() - crm_before > 1,
        "read again after the backlog"
    );
    if more {
        run_out(&mut e).await;
    }
    for _ in 0..3 {
        e.cycle().await.expect("cycle");
    }
    w.assert_converged();
}
