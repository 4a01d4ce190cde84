//! The single-instance lock, across handles and across processes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use contact_sync_state::{StateDb, StateError};

mod support;

/// The process id in a holder's pid text ("1234", or on Postgres "1234 on host").
fn pid_of(shown: &str) -> String {
    shown.split_whitespace().next().unwrap_or("").to_string()
}

/// Waits (up to 10 s) for the lock to be free: a Postgres server ends a
/// killed client's session, and its locks, a moment after the kill.
fn wait_free(db: &StateDb) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while db.lock_holder().unwrap().is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "lock still held 10 s after the holder died"
        );
        std::thread::yield_now();
    }
}

/// Set in the child process spawned by `lock_is_released_when_holder_is_killed`.
const CHILD_ENV: &str = "CONTACT_SYNC_STATE_LOCK_CHILD_DB";

on_both! {
    fn second_lock_is_refused_with_holder_pid_until_first_is_dropped(place) {
        let first = place.open();
        let second = place.open();
        assert_eq!(first.lock_holder().unwrap(), None);

        let held = first.lock().unwrap();
        let me = std::process::id().to_string();
        match second.lock() {
            Err(e @ StateError::Locked { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&format!("pid {me}")), "{msg}");
                assert!(msg.contains(&place.target.describe()), "{msg}");
                if let StateError::Locked { pid, since, .. } = e {
                    assert_eq!(pid_of(&pid), me);
                    assert!(
                        contact_sync_core::model::parse_ts(&since).is_some(),
                        "since is a timestamp: {since}"
                    );
                }
            }
            Err(other) => panic!("expected Locked, got {other}"),
            Ok(_) => panic!("second lock succeeded while the first is held"),
        }
        // The same handle cannot take it twice either.
        if place.is_postgres() {
            assert!(matches!(first.lock(), Err(StateError::Locked { .. })));
        }
        let (pid, _since) = second.lock_holder().unwrap().expect("holder visible");
        assert_eq!(pid_of(&pid), me);
        // Probing does not take or break the lock.
        assert!(matches!(second.lock(), Err(StateError::Locked { .. })));

        drop(held);
        assert_eq!(second.lock_holder().unwrap(), None);
        let _again = second.lock().expect("lock free after drop");
        assert!(first.lock_holder().unwrap().is_some());
    }

    fn lock_is_released_when_holder_is_killed(place) {
        drop(place.open());

        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "lock_child_holder",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, place.env_value())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let child_pid = child.id().to_string();
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let locked = lines
            .by_ref()
            .map_while(|l| l.ok())
            .any(|l| l.contains(&format!("LOCKED {child_pid}")));
        if !locked {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child never reported holding the lock");
        }

        let db = place.open();
        match db.lock() {
            Err(StateError::Locked { pid, .. }) => assert_eq!(pid_of(&pid), child_pid),
            Err(other) => panic!("expected Locked, got {other}"),
            Ok(_) => {
                let _ = child.kill();
                panic!("took the lock while the child holds it");
            }
        }
        assert_eq!(
            db.lock_holder().unwrap().map(|(p, _)| pid_of(&p)),
            Some(child_pid)
        );

        // SIGKILL: no destructor runs; the OS (or the server) must release
        // the lock.
        child.kill().unwrap();
        child.wait().unwrap();

        wait_free(&db);
        let _lock = db.lock().expect("lock free after holder was killed");
        let me = std::process::id().to_string();
        assert_eq!(db.lock_holder().unwrap().map(|(p, _)| pid_of(&p)), Some(me));
    }
}

#[test]
fn in_memory_lock_always_succeeds() {
    let db = StateDb::open_in_memory().unwrap();
    let _a = db.lock().unwrap();
    let _b = db.lock().unwrap();
    assert_eq!(db.lock_holder().unwrap(), None);
}

/// Not a test on its own: when run as a child by
/// `lock_is_released_when_holder_is_killed`, takes the lock, says so on
/// stdout and waits to be killed. Without the variable it does nothing.
#[test]
fn lock_child_holder() {
    let Ok(target) = std::env::var(CHILD_ENV) else {
        return;
    };
    let db = StateDb::open_target(&support::target_from_env(&target)).unwrap();
    let _lock = db.lock().unwrap();
    println!("LOCKED {}", std::process::id());
    // Bounded, in case the parent dies before killing us.
    std::thread::sleep(std::time::Duration::from_secs(120));
}
