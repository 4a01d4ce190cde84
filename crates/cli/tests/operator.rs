//! Operator commands through the binary on the embedded default (SQLite
//! canonical and local): dead letters recorded once, `dead-letters retry`
//! and `dismiss` while the daemon runs, `compact` while the daemon runs,
//! `conflicts resolve` and `drift [--repair]` while the daemon runs, and a
//! request the daemon has not taken by the deadline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_contact-sync"))
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .current_dir(dir)
        .args(args)
        .env_remove("CONTACT_SYNC_CONFIG")
        .output()
        .expect("run contact-sync")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "contact-sync {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn json(dir: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&ok(dir, args)).expect("JSON output")
}

fn local(dir: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(dir.join("contact-sync-data/local.db")).expect("open db");
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

/// A daemon on a long interval (no HTTP); killed when dropped.
struct Daemon(Child);

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        let child = Command::new(bin())
            .current_dir(dir)
            .args(["run", "--no-http", "--interval", "3600"])
            .env_remove("CONTACT_SYNC_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the daemon");
        let d = Daemon(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while json(dir, &["status", "--json"])["running"] != true {
            assert!(
                Instant::now() < deadline,
                "the daemon did not take its lock in 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn db(dir: &Path, name: &str) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(dir.join("contact-sync-data").join(name)).expect("open db");
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

/// Waits until `f` holds, failing after `secs` seconds with `what`.
fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A job title as `show` gives it (canonical, or `--store`).
fn title(dir: &Path, id: &str, store: &str) -> Value {
    json(dir, &["show", id, "--store", store, "--json"])["job_title"].clone()
}

/// Changed in local.db behind the engine's back (its change rows
/// deleted): c11 edited, c12 deleted. Only a drift check finds it.
fn tamper_local(dir: &Path) {
    let local = local(dir);
    local
        .execute(
            "UPDATE contacts SET job_title = 'Tampered' WHERE contact_id = 'c000000011'",
            [],
        )
        .unwrap();
    local
        .execute("DELETE FROM contacts WHERE contact_id = 'c000000012'", [])
        .unwrap();
    local
        .execute("DELETE FROM _contact_sync_changes", [])
        .unwrap();
}

#[test]
fn conflicts_resolve_while_the_daemon_runs_is_settled_by_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["seed", "--contacts", "20"]);
    ok(d, &["run", "--initial-sync", "--once"]);
    let id = "c000000007";
    for (file, t) in [
        ("canonical.db", "Canonical title"),
        ("local.db", "Local title"),
    ] {
        db(d, file)
            .execute(
                "UPDATE contacts SET job_title = ?1, version = 2, last_updated = '2026-06-01T10:00:00.000000Z' WHERE contact_id = ?2",
                rusqlite::params![t, id],
            )
            .unwrap();
    }
    ok(d, &["run", "--once"]);
    let list = json(d, &["conflicts", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    let cid = list[0]["id"].as_i64().unwrap().to_string();
    assert_eq!(title(d, id, "local"), "Canonical title");

    let _daemon = Daemon::start(d);
    let out = ok(d, &["conflicts", "resolve", &cid, "--keep", "incoming"]);
    assert!(
        out.contains("queued")
            && out.contains("running daemon")
            && out.contains("keeping incoming"),
        "{out}"
    );
    // The daemon settles it between its cycles (its interval is an hour).
    wait_until("the daemon to settle the conflict", 60, || {
        json(d, &["conflicts", "list", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    });
    wait_until("the incoming value in every store", 60, || {
        title(d, id, "canonical") == "Local title" && title(d, id, "local") == "Local title"
    });
    let all = json(d, &["conflicts", "list", "--all", "--json"]);
    assert_eq!(all[0]["status"], "kept_incoming", "{all}");
    // Settled: a second decision is refused; so is an unknown conflict.
    let again = run(d, &["conflicts", "resolve", &cid, "--keep", "canonical"]);
    let (_, err) = text(&again);
    assert_eq!(again.status.code(), Some(1), "{err}");
    assert!(err.contains("already settled (kept_incoming)"), "{err}");
    let unknown = run(d, &["conflicts", "resolve", "9999", "--keep", "canonical"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown).1.contains("no conflict with id 9999"));
    assert!(json(d, &["status", "--json"])["requests"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn drift_and_drift_repair_work_while_the_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["seed", "--contacts", "100"]);
    ok(d, &["run", "--initial-sync", "--once"]);
    tamper_local(d);
    let _daemon = Daemon::start(d);

    // Read-only: beside the daemon, no lock needed.
    let out = run(d, &["drift", "--json"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "drift exits 1: {stdout}{stderr}"
    );
    let v: Value = serde_json::from_str(&stdout).unwrap();
    let l = &v["stores"][0];
    assert_eq!(
        (
            l["store"].as_str(),
            l["differing"].as_u64(),
            l["missing"].as_u64()
        ),
        (Some("local"), Some(1), Some(1)),
        "{v}"
    );
    assert!(v["repairs"].as_array().unwrap().is_empty(), "{v}");

    // The repair is carried out by the daemon, and waited for.
    let out = run(d, &["drift", "--repair"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("queued as request #1"), "{stderr}");
    assert!(
        stdout.contains("repaired local: ")
            && stdout.contains("2 changed there since the engine last saw them"),
        "{stdout}"
    );
    assert!(stdout.contains("after repair:"), "{stdout}");
    assert!(
        run(d, &["drift"]).status.success(),
        "no drift after the repair"
    );
    // Both edits made behind the engine's back were merged, not overwritten.
    assert_eq!(title(d, "c000000011", "canonical"), "Tampered");
    let gone = run(d, &["show", "c000000012", "--json"]);
    let (o, e) = text(&gone);
    assert!(
        !gone.status.success() || o.contains("deleted"),
        "c12 was deleted in local.db: {o}{e}"
    );
    let status = json(d, &["status", "--json"]);
    assert!(
        status["requests"].as_array().unwrap().is_empty(),
        "{status}"
    );
}

#[test]
fn a_request_not_taken_by_the_deadline_stays_queued_and_is_carried_out_later() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["seed", "--contacts", "30"]);
    ok(d, &["run", "--initial-sync", "--once"]);
    tamper_local(d);
    {
        // Something holds the daemon's lock but never serves requests.
        let state =
            contact_sync_state::StateDb::open(&d.join("contact-sync-data/state.db")).unwrap();
        let _lock = state.lock().unwrap();
        let out = run(d, &["drift", "--repair", "--wait", "1"]);
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
        assert!(
            stderr.contains("request #1 stays queued") && stderr.contains("within 1 s"),
            "{stderr}"
        );
        let status = json(d, &["status", "--json"]);
        let reqs = status["requests"].as_array().unwrap();
        assert_eq!(reqs.len(), 1, "{status}");
        assert_eq!(
            (reqs[0]["kind"].as_str(), reqs[0]["status"].as_str()),
            (Some("repair_drift"), Some("queued"))
        );
    }
    // A daemon takes it when it starts.
    let _daemon = Daemon::start(d);
    wait_until("the daemon to carry out the queued repair", 60, || {
        json(d, &["status", "--json"])["requests"]
            .as_array()
            .unwrap()
            .is_empty()
    });
    assert!(
        run(d, &["drift"]).status.success(),
        "no drift after the repair"
    );
    assert_eq!(title(d, "c000000011", "local"), "Tampered");
}

fn open_letters(dir: &Path) -> Vec<Value> {
    json(dir, &["dead-letters", "list", "--json"])
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_dead_letter_is_recorded_once_and_retried_or_dismissed_while_the_daemon_runs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["seed", "--contacts", "10"]);
    ok(d, &["run", "--initial-sync", "--once"]);

    // Two bad records in local.db.
    local(d)
        .execute_batch(
            "UPDATE contacts SET emails = '[{\"address\":\"not-an-email\",\"primary\":true}]' WHERE contact_id IN ('c000000003', 'c000000004');",
        )
        .unwrap();
    ok(d, &["run", "--once"]);
    ok(d, &["run", "--once"]);
    let letters = open_letters(d);
    assert_eq!(letters.len(), 2, "{letters:?}");
    for l in &letters {
        assert_eq!(l["store"], "local", "{l}");
        assert_eq!(l["count"], 1, "{l}");
        assert_eq!(l["status"], "open", "{l}");
    }
    let id_of = |rec: &str| {
        letters
            .iter()
            .find(|l| l["record"] == rec)
            .unwrap_or_else(|| panic!("no dead letter for {rec}: {letters:?}"))["id"]
            .as_i64()
            .unwrap()
    };
    let (bad3, bad4) = (id_of("c000000003"), id_of("c000000004"));

    // c3 is fixed at its source; c4 is left as it is and dismissed.
    local(d)
        .execute(
            "UPDATE contacts SET emails = '[{\"address\":\"fixed@example.com\",\"primary\":true}]' WHERE contact_id = 'c000000003'",
            [],
        )
        .unwrap();
    {
        let _daemon = Daemon::start(d);
        let out = ok(d, &["dead-letters", "retry", &bad3.to_string()]);
        assert!(out.contains("retried"), "{out}");
        let out = ok(d, &["dead-letters", "dismiss", &bad4.to_string()]);
        assert!(out.contains("dismissed"), "{out}");
        let again = run(d, &["dead-letters", "dismiss", &bad4.to_string()]);
        assert_eq!(again.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&again.stderr).contains("already dismissed"));
        let missing = run(d, &["dead-letters", "retry", "99999"]);
        assert_eq!(missing.status.code(), Some(1));
    }
    ok(d, &["run", "--once"]);
    ok(d, &["run", "--once"]);
    assert!(open_letters(d).is_empty(), "{:?}", open_letters(d));
    let c3: Value = json(d, &["show", "c000000003", "--json"]);
    assert_eq!(c3["emails"][0]["address"], "fixed@example.com", "{c3}");
    let all = json(d, &["dead-letters", "list", "--all", "--json"]);
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
    let status = json(d, &["status", "--json"]);
    assert_eq!(status["dead_letters"], 0, "{status}");
}

#[test]
fn compact_works_while_the_daemon_runs_and_keeps_what_the_stores_need() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["seed", "--contacts", "20"]);
    ok(d, &["run", "--initial-sync", "--once"]);
    // Two edits of each of 5 contacts: 10 journal entries, 5 superseded.
    for t in ["one", "two"] {
        local(d)
            .execute(
                &format!("UPDATE contacts SET nickname = '{t}' WHERE contact_id <= 'c000000004'"),
                [],
            )
            .unwrap();
        ok(d, &["run", "--once"]);
    }
    // Age the history by 60 days, as if the daemon had run for months.
    let state = rusqlite::Connection::open(d.join("contact-sync-data/state.db")).unwrap();
    state.busy_timeout(Duration::from_secs(10)).unwrap();
    let n = state
        .execute(
            "UPDATE journal SET at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-60 days')",
            [],
        )
        .unwrap();
    assert!(n >= 10, "{n}");
    drop(state);
    local(d)
        .execute(
            "UPDATE contacts SET job_title = 'After compaction' WHERE contact_id = 'c000000007'",
            [],
        )
        .unwrap();
    {
        // The daemon compacts after its first cycle (never done before);
        // `compact` by hand runs beside it.
        let _daemon = Daemon::start(d);
        let r = json(d, &["compact", "--json"]);
        assert!(r["journal_kept"].as_u64().unwrap() >= 5, "{r}");
    }
    // Beyond the window, one entry per contact is left.
    let state = rusqlite::Connection::open(d.join("contact-sync-data/state.db")).unwrap();
    let (rows, contacts): (i64, i64) = state
        .query_row(
            "SELECT COUNT(*), COUNT(DISTINCT contact_id) FROM journal",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(rows, contacts);
    assert!(rows >= 5 && (rows as usize) < n, "{rows} of {n}");
    drop(state);
    // The stores still sync after compaction.
    ok(d, &["run", "--once"]);
    let c: Value = json(d, &["show", "c000000007", "--json"]);
    assert_eq!(c["job_title"], "After compaction", "{c}");
    let status = json(d, &["status", "--json"]);
    for s in status["stores"].as_array().unwrap() {
        assert_eq!(s["pending"], 0, "{status}");
    }
}
