//! Several engines on one state database, each doing part of the work (the
//! way several daemons share it, `[state] url`): one writes canonical and
//! runs `local`, the other runs `crm`. Two merges of one contact must never
//! both be made against the same journal entry: the second would overwrite
//! the first's edit without a conflict.
//!
//! The interleaving is forced with a failpoint: the `crm` engine has read
//! the journal and merged, and right before its commit the other engine
//! runs a whole cycle that journals and applies an edit of the same
//! contact made in `local`.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use contact_sync_connector::Store;
use contact_sync_engine::{Engine, EngineOptions, CANONICAL};
use contact_sync_state::StateDb;
use support::{person, settle, World};

/// An engine of `w` doing only `only`.
fn part(w: &World, only: &[&str], concurrent: bool) -> Engine {
    let state = StateDb::open(&w.state_path()).expect("state db");
    let stores: Vec<Box<dyn Store>> = vec![Box::new(w.local.store()), Box::new(w.crm.store())];
    Engine::new(
        state,
        Box::new(w.canonical.store()),
        stores,
        EngineOptions {
            batch_size: 7,
            only: Some(only.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>()),
            concurrent,
            ..Default::default()
        },
    )
    .expect("engine")
}

/// What the race left: canonical's C000, the open conflicts, and the
/// versions the journal holds with two different contents.
struct Outcome {
    canonical: contact_sync_core::Contact,
    open: usize,
    forked: Vec<i64>,
}

/// Runs the interleaving.
async fn race(concurrent: bool) -> Outcome {
    let w = World::new();
    w.canonical.user_upsert(person("C000", "Ada Lovelace"));
    {
        let mut e = w.engine();
        let mut progress = |_: &str, _: u64, _: u64| {};
        e.initial_sync(&mut progress).await.expect("initial sync");
        settle(&mut e, 5).await;
        w.assert_converged();
    }
    // Two people edit two fields of one contact, in two stores.
    let mut l = w.local.get("C000").expect("in local");
    l.job_title = Some("Chief Engineer".into());
    l.version += 1;
    w.local.user_upsert(l);
    let mut c = w.crm.all().into_iter().next().expect("in crm");
    c.notes = Some("Met at the conference".into());
    w.crm.user_upsert(c);

    // The engine writing canonical runs on its own thread, when told.
    let (go, go_rx) = mpsc::channel::<()>();
    let (done, done_rx) = mpsc::channel::<()>();
    let mut a = part(&w, &[CANONICAL, "local"], concurrent);
    let a_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        if go_rx.recv().is_ok() {
            rt.block_on(async { a.cycle().await.expect("cycle of the canonical engine") });
            done.send(()).expect("done");
        }
        a
    });
    // The crm engine, between its merge and its commit: the other engine
    // runs its whole cycle first (once; only on this thread).
    let scenario = fail::FailScenario::setup();
    let fired = Arc::new(AtomicBool::new(false));
    let handshake = Arc::new(Mutex::new((go, done_rx)));
    let me = std::thread::current().id();
    {
        let (fired, handshake) = (fired.clone(), handshake.clone());
        fail::cfg_callback("merge-before-commit", move || {
            if std::thread::current().id() == me && !fired.swap(true, Ordering::SeqCst) {
                let h = handshake.lock().unwrap();
                h.0.send(()).expect("go");
                h.1.recv().expect("the canonical engine's cycle");
            }
        })
        .expect("failpoint");
    }
    let mut b = part(&w, &["crm"], concurrent);
    b.cycle().await.expect("cycle of the crm engine");
    assert!(
        fired.load(Ordering::SeqCst),
        "the crm engine merged nothing"
    );
    scenario.teardown();
    drop(handshake);
    let mut a = a_thread.join().expect("canonical engine thread");
    // Both keep cycling until nothing moves.
    for _ in 0..4 {
        a.cycle().await.expect("cycle");
        b.cycle().await.expect("cycle");
    }
    let open = a.state().conflicts(true).expect("conflicts").len();
    let mut by_version = std::collections::BTreeMap::<i64, BTreeSet<String>>::new();
    for e in a.state().journal_of("C000", 1000).expect("journal") {
        by_version.entry(e.version).or_default().insert(e.hash);
    }
    w.assert_converged();
    Outcome {
        canonical: w.canonical.get("C000").expect("in canonical"),
        open,
        forked: by_version
            .into_iter()
            .filter(|(_, h)| h.len() > 1)
            .map(|(v, _)| v)
            .collect(),
    }
}

#[tokio::test]
async fn two_engines_merging_one_contact_at_once_keep_both_edits() {
    let o = race(true).await;
    let c = &o.canonical;
    assert_eq!(c.job_title.as_deref(), Some("Chief Engineer"), "{c:?}");
    assert_eq!(c.notes.as_deref(), Some("Met at the conference"), "{c:?}");
    assert_eq!(o.open, 0);
    // The second merge was made on top of the first: one content per
    // version, as with a single engine.
    assert!(
        o.forked.is_empty(),
        "versions with two contents: {:?}",
        o.forked
    );
}

/// The proof that the test above can fail: without the check at the
/// commit, the crm engine journals its merge made against the entry
/// before the local edit, under the same version as that edit with other
/// content (the journal forks), and the local edit is lost without a
/// conflict: the stores converge on the crm side alone.
#[tokio::test]
async fn without_the_journal_check_the_same_interleaving_loses_an_edit() {
    let o = race(false).await;
    assert!(
        !o.forked.is_empty(),
        "the interleaving did not happen: {:?}",
        o.canonical
    );
    assert_eq!(o.canonical.notes.as_deref(), Some("Met at the conference"));
    assert_eq!(
        o.canonical.job_title.as_deref(),
        Some("Engineer"),
        "{:?}",
        o.canonical
    );
    assert_eq!(o.open, 0, "the loss is silent");
}
