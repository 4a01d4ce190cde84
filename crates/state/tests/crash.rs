//! What survives when the writing process dies, and what another process
//! (e.g. `status`) sees while the daemon is mid-transaction.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use contact_sync_state::{StateDb, StoreRecord};

mod support;

const CHILD_ENV: &str = "CONTACT_SYNC_STATE_CRASH_CHILD_DB";

fn record(id: &str, version: i64) -> StoreRecord {
    StoreRecord {
        store: "twenty".into(),
        contact_id: id.into(),
        native_id: None,
        synced_version: version,
        hash: format!("h{version}"),
        deleted: false,
        ..Default::default()
    }
}

/// Not a test on its own: run as a child by
/// `committed_writes_survive_sigkill_and_open_transaction_vanishes`.
#[test]
fn crash_child_writer() {
    let Ok(target) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut db = StateDb::open_target(&support::target_from_env(&target)).unwrap();
    let tx = db.tx().unwrap();
    tx.set_cursor("twenty", 5).unwrap();
    tx.put_store_record(&record("c1", 5)).unwrap();
    tx.commit().unwrap();
    // A second batch, in flight when the process is killed.
    let tx = db.tx().unwrap();
    tx.set_cursor("twenty", 6).unwrap();
    tx.put_store_record(&record("c1", 6)).unwrap();
    tx.put_store_record(&record("c2", 6)).unwrap();
    println!("IN_FLIGHT {}", std::process::id());
    std::thread::sleep(std::time::Duration::from_secs(120));
    drop(tx);
}

on_both! {
    fn committed_writes_survive_sigkill_and_open_transaction_vanishes(place) {
        drop(place.open());

        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, place.env_value())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let marker = format!("IN_FLIGHT {}", child.id());
        let stdout = child.stdout.take().unwrap();
        let ready = BufReader::new(stdout)
            .lines()
            .map_while(|l| l.ok())
            .any(|l| l.contains(&marker));
        if !ready {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child never reached its in-flight transaction");
        }

        // While the child's transaction is open, a reader sees the committed
        // state without waiting for it.
        let reader = place.open();
        assert_eq!(reader.cursor("twenty").unwrap(), 5);
        assert_eq!(
            reader.store_record("twenty", "c1").unwrap(),
            Some(record("c1", 5))
        );
        drop(reader);

        child.kill().unwrap();
        child.wait().unwrap();

        let mut db = place.open();
        assert_eq!(db.cursor("twenty").unwrap(), 5);
        assert_eq!(
            db.store_record("twenty", "c1").unwrap(),
            Some(record("c1", 5))
        );
        assert!(db.store_record("twenty", "c2").unwrap().is_none());
        // And the database is writable again (no stale write lock).
        let tx = db.tx().unwrap();
        tx.set_cursor("twenty", 7).unwrap();
        tx.commit().unwrap();
        assert_eq!(db.cursor("twenty").unwrap(), 7);
    }
}
