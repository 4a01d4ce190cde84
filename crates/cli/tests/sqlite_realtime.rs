//! An edit made to local.db by another program wakes the daemon at once
//! (as a Postgres NOTIFY does), not at the next interval; a backlog is
//! worked off in slices; `run --once` fills the search index after its
//! cycle (the embedded SQLite set-up these tests share).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(PathBuf::from(env!("CARGO_BIN_EXE_contact-sync")));
    c.current_dir(dir)
        .arg("--config")
        .arg(dir.join("contact-sync.toml"))
        .args(args)
        .env_remove("CONTACT_SYNC_CONFIG");
    c
}

fn db(dir: &Path, name: &str) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(dir.join("contact-sync-data").join(name)).expect("open db");
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::park_timeout(Duration::from_millis(20));
    }
}

/// A data directory with configuration `config`, seeded with `contacts`
/// contacts (or none) and initially synced.
fn set_up(d: &Path, config: &str, contacts: Option<usize>) {
    std::fs::write(d.join("contact-sync.toml"), config).unwrap();
    if let Some(n) = contacts {
        assert!(cmd(d, &["seed", "--contacts", &n.to_string()])
            .status()
            .unwrap()
            .success());
    }
    assert!(cmd(d, &["run", "--initial-sync", "--once"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success());
}

/// Starts the daemon with an hour's interval and waits for its first
/// cycle; returns it and the path of its log.
fn start_daemon(d: &Path) -> (Daemon, PathBuf) {
    let log = d.join("daemon.log");
    let daemon = Daemon(
        cmd(d, &["run", "--no-http", "--interval", "3600"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("the daemon's first cycle", Duration::from_secs(60), || {
        read_log(&log).contains("cycle:")
    });
    (daemon, log)
}

fn read_log(path: &Path) -> String {
    let mut s = String::new();
    let _ = std::fs::File::open(path).and_then(|mut f| f.read_to_string(&mut s));
    s
}

/// Kills the daemon when the test ends, however it ends.
struct Daemon(std::process::Child);
impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn an_edit_in_local_db_reaches_canonical_long_before_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    set_up(d, "", Some(5));
    // From its first cycle on, only a wake-up runs another before an hour
    // has passed.
    let (mut daemon, log) = start_daemon(d);
    let log_text = || read_log(&log);
    let id: String = db(d, "local.db")
        .query_row(
            "SELECT contact_id FROM contacts ORDER BY contact_id LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let n = db(d, "local.db")
        .execute(
            "UPDATE contacts SET notes = 'typed into local.db' WHERE contact_id = ?1",
            [&id],
        )
        .unwrap();
    assert_eq!(n, 1);
    let took = wait_for(
        "the edit to reach canonical",
        Duration::from_secs(10),
        || {
            db(d, "canonical.db")
                .query_row(
                    "SELECT notes FROM contacts WHERE contact_id = ?1",
                    [&id],
                    |r| r.get::<_, Option<String>>(0),
                )
                .unwrap()
                .as_deref()
                == Some("typed into local.db")
        },
    );
    eprintln!("local.db edit reached canonical in {took:?}");
    assert!(daemon.0.try_wait().unwrap().is_none(), "{}", log_text());
    let by: String = db(d, "canonical.db")
        .query_row(
            "SELECT last_updated_by FROM contacts WHERE contact_id = ?1",
            [&id],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(by, "local");
}

#[test]
fn import_and_merge_while_the_daemon_runs_are_carried_out_by_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    set_up(d, "", None);
    // From its first cycle on, only a wake-up runs another before an hour
    // has passed.
    let (_daemon, log) = start_daemon(d);
    let log_text = || read_log(&log);
    std::fs::write(
        d.join("book.vcf"),
        "BEGIN:VCARD\r\nVERSION:4.0\r\nFN:Grace Hopper\r\nEMAIL:grace@navy.example\r\nEND:VCARD\r\n\
         BEGIN:VCARD\r\nVERSION:4.0\r\nFN:Grace Hoper\r\nTITLE:Rear Admiral\r\nEMAIL:gh@navy.example\r\nEND:VCARD\r\n",
    )
    .unwrap();
    let out = cmd(d, &["import", "book.vcf", "--wait", "60"])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}\n{}", log_text());
    assert!(said.contains("queued as request #"), "{said}");
    assert!(said.contains("2 new, 0 updated"), "{said}");
    let id_of = |email: &str| -> String {
        db(d, "canonical.db")
            .query_row(
                "SELECT contact_id FROM contacts WHERE _primary_email = ?1",
                [email],
                |r| r.get(0),
            )
            .unwrap()
    };
    let (keep, other) = (id_of("grace@navy.example"), id_of("gh@navy.example"));
    // The daemon copies the import to local without waiting for its interval.
    wait_for("the import to reach local", Duration::from_secs(10), || {
        db(d, "local.db")
            .query_row("SELECT count(*) FROM contacts", [], |r| r.get::<_, i64>(0))
            .unwrap()
            == 2
    });
    let out = cmd(d, &["merge", &keep, &other, "--wait", "60"])
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}\n{}", log_text());
    assert!(
        said.contains(&format!("merged: {other} into {keep}")),
        "{said}"
    );
    wait_for("the merge to reach local", Duration::from_secs(10), || {
        db(d, "local.db")
            .query_row(
                "SELECT deleted_at IS NOT NULL FROM contacts WHERE contact_id = ?1",
                [&other],
                |r| r.get::<_, bool>(0),
            )
            .unwrap()
    });
    let title: String = db(d, "local.db")
        .query_row(
            "SELECT job_title FROM contacts WHERE contact_id = ?1",
            [&keep],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(title, "Rear Admiral");
}

#[test]
fn a_backlog_beyond_the_capture_budget_is_worked_off_in_slices_without_waiting_for_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Batches of 5 and a budget of 1 ms: every cycle merges one batch.
    set_up(
        d,
        "[sync]\nbatch_size = 5\ncapture_budget_ms = 1\n",
        Some(200),
    );
    // From its first cycle on, only a wake-up runs another before an hour
    // has passed.
    let (mut daemon, log) = start_daemon(d);
    let log_text = || read_log(&log);
    let cycles_before = log_text().matches("cycle:").count();
    // Another program edits every contact in local.db at once: 40 batches.
    let n = db(d, "local.db")
        .execute("UPDATE contacts SET notes = 'mass note'", [])
        .unwrap();
    assert_eq!(n, 200);
    let count = |file: &str| -> i64 {
        db(d, file)
            .query_row(
                "SELECT count(*) FROM contacts WHERE notes = 'mass note'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    // One wake-up: without the next slice at once, the daemon would wait
    // for its hour after the first.
    let took = wait_for(
        "the whole backlog to reach canonical",
        Duration::from_secs(120),
        || count("canonical.db") == 200,
    );
    let slices = log_text().matches("cycle:").count() - cycles_before;
    eprintln!("200 edits reached canonical in {took:?}, {slices} cycles");
    assert!(
        slices >= 10,
        "the backlog was worked off in slices: {slices} cycles\n{}",
        log_text()
    );
    assert!(daemon.0.try_wait().unwrap().is_none(), "{}", log_text());
}

/// `run --initial-sync --once` fills the contact search index from
/// canonical after its cycle (no longer inside it): when it exits, the index
/// holds every contact and is marked complete, so the console's search
/// finds them all.
#[test]
fn run_once_fills_the_search_index_after_its_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    set_up(d, "", Some(30));
    let state = db(d, "state.db");
    let live: i64 = state
        .query_row(
            "SELECT COUNT(*) FROM search_docs WHERE deleted = 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let fill: String = state
        .query_row(
            "SELECT value FROM meta WHERE key = 'search_fill'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!((live, fill.as_str()), (30, "done"));
}
