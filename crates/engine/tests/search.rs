//! The contact search index follows canonical: filled from canonical by
//! the cycles after an initial sync (no journal entries needed) and for a
//! state database that predates it, and by every journaled change; deleted
//! and erased contacts leave it.

mod support;

use std::time::Duration;

use contact_sync_engine::Engine;
use contact_sync_state::{SEARCH_FILL_DONE, SEARCH_FILL_META};
use support::{person, settle, World};

fn found(e: &Engine, q: &str) -> Vec<String> {
    let mut ids: Vec<String> = e
        .state()
        .search_contacts(q, None, 100)
        .unwrap()
        .items
        .into_iter()
        .map(|h| h.contact_id)
        .collect();
    ids.sort();
    ids
}

fn seeded_world(n: usize) -> World {
    let w = World::new();
    for i in 0..n {
        let mut c = person(&format!("C{i:03}"), &format!("Person{i} Lovelace"));
        if i == 7 {
            c.canonical_name = "Ada Byron".into();
        }
        w.canonical.user_upsert(c);
    }
    w
}

#[tokio::test]
async fn the_cycle_after_an_initial_sync_indexes_canonical_without_journal_entries() {
    let w = seeded_world(23);
    let mut e = w.engine();
    let mut progress = |_: &str, _: u64, _: u64| {};
    e.initial_sync(&mut progress).await.expect("initial sync");
    assert_eq!(e.state().journal_head().unwrap(), 0, "nothing journaled");
    // The copy does not index; the next cycle fills the index (this world's
    // canonical also delivers its inserts as changes, which index
    // themselves: the fill alone is shown by the test below).
    e.cycle().await.expect("cycle");
    assert_eq!(found(&e, "byro"), ["C007"]);
    assert_eq!(found(&e, "c012@example.com"), ["C012"]);
    assert_eq!(found(&e, "lovelace").len(), 22);
    // The id of a contact that was never journaled.
    assert_eq!(found(&e, "C019"), ["C019"]);
    assert_eq!(
        e.state().meta(SEARCH_FILL_META).unwrap().as_deref(),
        Some(SEARCH_FILL_DONE),
        "the first cycle after the initial sync filled the index"
    );

    // A change from a store is journaled and re-indexed.
    let mut c = w.local.get("C007").unwrap();
    c.canonical_name = "Ada King".into();
    w.local.user_upsert(c);
    settle(&mut e, 5).await;
    assert!(found(&e, "byron").is_empty());
    assert_eq!(found(&e, "ada king"), ["C007"]);

    // A delete leaves the index; an erasure too, with its text.
    w.local.user_delete("C003");
    settle(&mut e, 5).await;
    assert!(found(&e, "person3").is_empty());
    e.forget("C012").await.expect("forget");
    assert!(found(&e, "c012@example.com").is_empty());
    assert!(found(&e, "person12").is_empty());
    assert_eq!(found(&e, "lovelace").len(), 20);
}

#[tokio::test]
async fn a_state_database_without_the_index_is_filled_from_canonical() {
    let w = seeded_world(23);
    let mut e = w.engine();
    assert_eq!(e.state().search_index_status().unwrap(), (0, true));
    // No time: nothing done, the fill is still owed.
    assert!(!e.fill_search_index_for(Duration::ZERO).await.unwrap());
    assert!(found(&e, "lovelace").is_empty());
    assert!(e
        .fill_search_index_for(Duration::from_secs(60))
        .await
        .unwrap());
    assert_eq!(e.state().journal_head().unwrap(), 0);
    assert_eq!(found(&e, "lovelace").len(), 22);
    assert_eq!(found(&e, "c012@exam"), ["C012"]);
    assert_eq!(e.state().search_index_status().unwrap(), (23, false));
    // Done once: a later call reads nothing.
    assert!(e.fill_search_index_for(Duration::ZERO).await.unwrap());
}
