//! What the Postgres backend adds: fenced commits, and writers on several
//! connections (several daemons, the CLI beside a daemon) committing one
//! after another.

use contact_sync_core::model::now;
use contact_sync_core::{Contact, JournalEntry};
use contact_sync_state::{Fence, StateDb, StateError};

mod support;
use support::Place;

fn entry(id: &str) -> JournalEntry {
    JournalEntry::snapshot(Contact::new(id, "Ada Lovelace"), "local", now())
}

fn fence(holder: &str, token: i64) -> Fence {
    Fence {
        lease: "store:local".into(),
        holder: holder.into(),
        token,
    }
}

#[test]
fn a_commit_after_the_lease_was_taken_over_is_refused_and_leaves_nothing() {
    let place = Place::postgres();
    let mut db = place.open();
    place.exec(
        "INSERT INTO leases (name, holder, token, acquired_at, heartbeat_at, expires_at)
         VALUES ('store:local', 'daemon-a', 1, now(), now(), now() + interval '15 seconds')",
    );
    db.set_fence(Some(fence("daemon-a", 1)));
    let tx = db.tx().unwrap();
    tx.set_cursor("local", 1).unwrap();
    tx.append_journal(&entry("c1")).unwrap();
    tx.commit().unwrap();
    assert_eq!(
        (db.journal_head().unwrap(), db.cursor("local").unwrap()),
        (1, 1)
    );

    // Another daemon takes the lease over (its own connection).
    place.exec("UPDATE leases SET holder = 'daemon-b', token = 2 WHERE name = 'store:local'");
    let tx = db.tx().unwrap();
    tx.set_cursor("local", 2).unwrap();
    tx.append_journal(&entry("c2")).unwrap();
    tx.set_meta("k", "v").unwrap();
    match tx.commit() {
        Err(e @ StateError::Fenced { .. }) => {
            assert!(e.is_fenced());
            assert_eq!(
                e.to_string(),
                "lease store:local is no longer held by daemon-a (token 1): another daemon took over; nothing was committed"
            );
        }
        other => panic!("expected Fenced, got {other:?}"),
    }
    // Nothing of it is visible, to this connection or another.
    for reader in [&db, &place.open()] {
        assert_eq!(reader.journal_head().unwrap(), 1);
        assert_eq!(reader.cursor("local").unwrap(), 1);
        assert_eq!(reader.meta("k").unwrap(), None);
        assert!(reader.journal_of("c2", 10).unwrap().is_empty());
    }
    // The connection is usable: the new holder's fence commits.
    db.set_fence(Some(fence("daemon-b", 2)));
    let tx = db.tx().unwrap();
    tx.set_cursor("local", 3).unwrap();
    tx.commit().unwrap();
    assert_eq!(db.cursor("local").unwrap(), 3);
    // A lease that is gone altogether fences too.
    place.exec("DELETE FROM leases");
    let tx = db.tx().unwrap();
    tx.set_cursor("local", 4).unwrap();
    assert!(matches!(tx.commit(), Err(StateError::Fenced { .. })));
    assert_eq!(db.cursor("local").unwrap(), 3);
}

#[test]
fn sqlite_ignores_fences() {
    let place = Place::sqlite();
    let mut db = place.open();
    db.set_fence(Some(fence("daemon-a", 1)));
    let tx = db.tx().unwrap();
    tx.set_cursor("local", 1).unwrap();
    tx.commit().unwrap();
    assert_eq!(db.cursor("local").unwrap(), 1);
}

/// Two writers on one database, each its own connection, and a reader
/// following the journal as a store's cursor does: every transaction's
/// entries get consecutive seqs, and no entry ever appears below a head
/// the reader has seen (it would be skipped by a cursor past it).
#[test]
fn writers_on_two_connections_commit_one_after_another_in_seq_order() {
    const TXS: usize = 40;
    const PER_TX: usize = 5;
    let place = Place::postgres();
    drop(place.open());
    let done = std::sync::atomic::AtomicUsize::new(0);
    let (seen, batches) = std::thread::scope(|s| {
        let writers: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|w| {
                let mut db: StateDb = place.open();
                let done = &done;
                s.spawn(move || {
                    let mut batches = Vec::new();
                    for t in 0..TXS {
                        let tx = db.tx().unwrap();
                        let seqs: Vec<i64> = (0..PER_TX)
                            .map(|i| tx.append_journal(&entry(&format!("{w}-{t}-{i}"))).unwrap())
                            .collect();
                        tx.set_cursor(w, *seqs.last().unwrap()).unwrap();
                        tx.commit().unwrap();
                        batches.push(seqs);
                    }
                    done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    batches
                })
            })
            .collect();
        let reader = place.open();
        let done = &done;
        let follower = s.spawn(move || {
            // (head seen, how many entries at or below it then)
            let mut seen = Vec::new();
            while done.load(std::sync::atomic::Ordering::SeqCst) < 2 {
                let head = reader.journal_head().unwrap();
                let n = reader.journal_after(0, head, usize::MAX).unwrap().len();
                seen.push((head, n));
            }
            seen
        });
        let batches: Vec<Vec<i64>> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        (follower.join().unwrap(), batches)
    });
    for b in &batches {
        assert!(
            b.windows(2).all(|w| w[1] == w[0] + 1),
            "one transaction's seqs interleaved with another's: {b:?}"
        );
    }
    let db = place.open();
    let all = db.journal_after(0, i64::MAX, usize::MAX).unwrap();
    assert_eq!(all.len(), 2 * TXS * PER_TX);
    assert!(seen.len() > 1, "the reader never looked");
    for (head, n) in seen {
        let later = all.iter().filter(|e| e.seq <= head).count();
        assert_eq!(
            later, n,
            "entries appeared at or below head {head} after it was read"
        );
    }
}

/// Ends every state connection to the test's database (a server restart
/// or a network cut, as the client sees it).
fn cut_connections(place: &Place) {
    place.exec(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'contact-sync state' AND datname = current_database()",
    );
}

#[test]
fn a_lost_connection_is_replaced_and_a_transaction_on_it_is_not_committed() {
    let place = Place::postgres();
    let mut db = place.open();
    let lock = db.lock().unwrap();
    let tx = db.tx().unwrap();
    tx.set_cursor("local", 1).unwrap();
    tx.commit().unwrap();

    // Cut between transactions: the next read reconnects.
    cut_connections(&place);
    assert_eq!(db.cursor("local").unwrap(), 1);
    // The lock came back with the new connection.
    let other = place.open();
    assert!(matches!(other.lock(), Err(StateError::Locked { .. })));

    // Cut in the middle of a transaction: it fails, nothing of it stays,
    // and the next one works.
    let tx = db.tx().unwrap();
    tx.set_cursor("local", 2).unwrap();
    cut_connections(&place);
    let failed = tx.set_cursor("other", 2).and_then(|()| tx.commit());
    assert!(
        failed.is_err(),
        "a transaction on a lost connection committed"
    );
    let tx = db.tx().unwrap();
    tx.set_meta("after", "cut").unwrap();
    tx.commit().unwrap();
    assert_eq!(other.cursor("local").unwrap(), 1);
    assert_eq!(other.meta("after").unwrap().as_deref(), Some("cut"));
    drop(lock);
    drop(other.lock().expect("released"));

    // Lost while someone else takes the lock: this handle stops writing.
    let lock = db.lock().unwrap();
    cut_connections(&place);
    // (the other session was cut too; it opens again and takes the lock)
    let other = place.open();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let _theirs = loop {
        match other.lock() {
            Ok(l) => break l,
            Err(StateError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::yield_now()
            }
            Err(e) => panic!("{e}"),
        }
    };
    let err = db.tx().map(|_| ()).unwrap_err();
    assert!(
        err.to_string()
            .contains("another contact-sync holds the state database's lock now"),
        "{err}"
    );
    drop(lock);
}
