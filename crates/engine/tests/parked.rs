//! A store that fails with an error retrying cannot fix (bad credentials,
//! a permission lost) is parked: recorded as a `failed` pause, tried no
//! more, the other stores go on; `resume` or a changed configuration for
//! it tries it again. Transient errors are retried as before.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use contact_sync_core::model::now;
use contact_sync_engine::Engine;
use contact_sync_state::Decision;
use support::{person, settle, World};

/// A world whose stores pass every call through (faults are switched on
/// by hand), four contacts synced everywhere.
async fn synced() -> (World, Engine) {
    let w = World::passthrough();
    for i in 0..4 {
        w.canonical
            .user_upsert(person(&format!("C{i}"), &format!("Person {i}")));
    }
    let mut e = w.engine();
    let mut progress = |_: &str, _: u64, _: u64| {};
    e.initial_sync(&mut progress).await.expect("initial sync");
    settle(&mut e, 5).await;
    w.assert_converged();
    (w, e)
}

/// An edit of `field` made in the local store.
fn edit_local(w: &World, id: &str, title: &str) {
    let mut c = w.local.get(id).expect("in local");
    c.job_title = Some(title.into());
    w.local.user_upsert(c);
}

fn crm_title(w: &World, id: &str) -> Option<String> {
    w.crm
        .live()
        .into_iter()
        .find(|c| c.contact_id == id)
        .and_then(|c| c.job_title)
}

/// Counts the calls made to the crm store from now on.
fn count_crm_calls(w: &World) -> Arc<AtomicU64> {
    let n = Arc::new(AtomicU64::new(0));
    let seen = n.clone();
    w.faults.as_ref().unwrap()[2].set_hook(Some(Arc::new(move |_op, _store| {
        seen.fetch_add(1, Ordering::SeqCst);
    })));
    n
}

#[tokio::test]
async fn a_permanent_error_parks_the_store_and_resume_tries_it_again() {
    let (w, mut e) = synced().await;
    let crm = &w.faults.as_ref().unwrap()[2];
    crm.fail_permanently("authentication failed: the API key was revoked");
    edit_local(&w, "C1", "Edited in local");

    let r = e.cycle().await.expect("cycle");
    let crm_line = r.stores.iter().find(|s| s.store == "crm").unwrap();
    assert!(
        crm_line
            .error
            .as_deref()
            .is_some_and(|m| m.starts_with("paused:")),
        "{r:?}"
    );
    let paused = e.state().paused_stores().unwrap();
    assert_eq!(paused.len(), 1, "{paused:?}");
    let p = &paused[0];
    assert_eq!((p.store.as_str(), p.label()), ("crm", "failed"));
    assert!(
        p.reason
            .contains("authentication failed: the API key was revoked")
            && p.reason.contains("contact-sync resume crm"),
        "{}",
        p.reason
    );
    let shown = serde_json::to_value(p).unwrap();
    assert_eq!(shown["kind"], "failed", "{shown}");
    // The other stores go on: the edit reached canonical.
    assert_eq!(
        w.canonical.get("C1").unwrap().job_title.as_deref(),
        Some("Edited in local")
    );

    // Parked: not tried again, cycle after cycle, even once it would work.
    let calls = count_crm_calls(&w);
    crm.heal();
    for _ in 0..3 {
        let r = e.cycle().await.expect("cycle");
        let line = r.stores.iter().find(|s| s.store == "crm").unwrap();
        assert!(
            line.error.as_deref().is_some_and(|m| m.contains("paused")),
            "{r:?}"
        );
        assert!(
            r.stores
                .iter()
                .filter(|s| s.store != "crm")
                .all(|s| s.error.is_none()),
            "{r:?}"
        );
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "a parked store is left alone"
    );
    assert_eq!(crm_title(&w, "C1").as_deref(), Some("Engineer"));

    // A person resumes it: it catches up.
    let tx = e.state_mut().tx().unwrap();
    assert!(tx.decide("crm", Decision::Resume, now()).unwrap());
    tx.commit().unwrap();
    settle(&mut e, 5).await;
    assert!(e.state().paused_stores().unwrap().is_empty());
    assert_eq!(crm_title(&w, "C1").as_deref(), Some("Edited in local"));
    w.assert_converged();
}

#[tokio::test]
async fn a_parked_store_is_tried_again_when_its_configuration_changes() {
    let (w, e) = synced().await;
    drop(e);
    let crm = &w.faults.as_ref().unwrap()[2];
    let config = |h: &str| BTreeMap::from([("crm".to_string(), h.to_string())]);
    let mut e = w.engine_configured(config("key-1"));
    crm.fail_permanently("authentication failed");
    edit_local(&w, "C2", "Edited while parked");
    e.cycle().await.expect("cycle");
    let p = e.state().paused("crm").unwrap().expect("parked");
    assert_eq!(
        p.parked.as_ref().and_then(|x| x.config_hash.as_deref()),
        Some("key-1")
    );
    crm.heal();

    // Restarted with the same configuration: still parked.
    drop(e);
    let mut e = w.engine_configured(config("key-1"));
    e.cycle().await.expect("cycle");
    assert!(e.state().paused("crm").unwrap().is_some());
    assert_eq!(crm_title(&w, "C2").as_deref(), Some("Engineer"));
    // Restarted without knowing the configuration: only a person resumes.
    drop(e);
    let mut e = w.engine();
    e.cycle().await.expect("cycle");
    assert!(e.state().paused("crm").unwrap().is_some());

    // Restarted with a changed configuration for it: tried again.
    drop(e);
    let mut e = w.engine_configured(config("key-2"));
    settle(&mut e, 5).await;
    assert!(e.state().paused_stores().unwrap().is_empty());
    assert_eq!(crm_title(&w, "C2").as_deref(), Some("Edited while parked"));
    w.assert_converged();
}

#[tokio::test]
async fn transient_errors_are_retried_not_parked() {
    let (w, mut e) = synced().await;
    let crm = &w.faults.as_ref().unwrap()[2];
    crm.set_crash_after(Some(0));
    crm.crash_now();
    crm.enable();
    edit_local(&w, "C3", "Edited during an outage");
    for _ in 0..2 {
        let r = e.cycle().await.expect("cycle");
        let line = r.stores.iter().find(|s| s.store == "crm").unwrap();
        assert!(
            line.error.as_deref().is_some_and(|m| m.contains("crash")),
            "{r:?}"
        );
        assert!(e.state().paused_stores().unwrap().is_empty());
    }
    crm.heal();
    crm.set_crash_after(None);
    settle(&mut e, 5).await;
    assert_eq!(
        crm_title(&w, "C3").as_deref(),
        Some("Edited during an outage")
    );
    w.assert_converged();
}
