//! The single-instance lock, across handles and across processes.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use contact_sync_state::{StateDb, StateError};

/// Set in the child process spawned by `lock_is_released_when_holder_is_killed`.
const CHILD_ENV: &str = "CONTACT_SYNC_STATE_LOCK_CHILD_DB";

#[test]
fn second_lock_is_refused_with_holder_pid_until_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let first = StateDb::open(&path).unwrap();
    let second = StateDb::open(&path).unwrap();
    assert_eq!(first.lock_holder().unwrap(), None);

    let held = first.lock().unwrap();
    let me = std::process::id().to_string();
    match second.lock() {
        Err(e @ StateError::Locked { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&format!("pid {me}")), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            if let StateError::Locked { pid, since, .. } = e {
                assert_eq!(pid, me);
                assert!(
                    contact_sync_core::model::parse_ts(&since).is_some(),
                    "since is a timestamp: {since}"
                );
            }
        }
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => panic!("second lock succeeded while the first is held"),
    }
    let (pid, _since) = second.lock_holder().unwrap().expect("holder visible");
    assert_eq!(pid, me);
    // Probing does not take or break the lock.
    assert!(matches!(second.lock(), Err(StateError::Locked { .. })));

    drop(held);
    assert_eq!(second.lock_holder().unwrap(), None);
    let _again = second.lock().expect("lock free after drop");
    assert!(first.lock_holder().unwrap().is_some());
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
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return;
    };
    let db = StateDb::open(std::path::Path::new(&path)).unwrap();
    let _lock = db.lock().unwrap();
    println!("LOCKED {}", std::process::id());
    // Bounded, in case the parent dies before killing us.
    std::thread::sleep(std::time::Duration::from_secs(120));
}

#[test]
fn lock_is_released_when_holder_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    drop(StateDb::open(&path).unwrap());

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "lock_child_holder",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
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

    let db = StateDb::open(&path).unwrap();
    match db.lock() {
        Err(StateError::Locked { pid, .. }) => assert_eq!(pid, child_pid),
        Err(other) => panic!("expected Locked, got {other}"),
        Ok(_) => {
            let _ = child.kill();
            panic!("took the lock while the child holds it");
        }
    }
    assert_eq!(db.lock_holder().unwrap().map(|(p, _)| p), Some(child_pid));

    // SIGKILL: no destructor runs; the OS must release the lock.
    child.kill().unwrap();
    child.wait().unwrap();

    assert_eq!(db.lock_holder().unwrap(), None);
    let _lock = db.lock().expect("lock free after holder was killed");
    let me = std::process::id().to_string();
    assert_eq!(db.lock_holder().unwrap().map(|(p, _)| p), Some(me));
}
