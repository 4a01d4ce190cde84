//! The state database on Postgres (`[state] url`), through the binary:
//! SQLite stores, the state in a fresh Postgres database of the test
//! harness (the server of `CONTACT_SYNC_PG_URL`, or a private cluster; it
//! panics with instructions when there is none).

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

const PASSWORD: &str = "s3cret-state-pw";

struct Setup {
    dir: tempfile::TempDir,
    url: String,
}

impl Setup {
    fn new() -> Setup {
        let url = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(contact_sync_postgres::harness::shared().create_database());
        // A password (the test server trusts loopback and never asks for
        // it) that must never be shown.
        let url = url.replacen("://postgres@", &format!("://postgres:{PASSWORD}@"), 1);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("contact-sync.toml"),
            "[state]\nurl = { env = \"STATE_DB_URL\" }\n\n[stores.local]\nkind = \"sqlite\"\n",
        )
        .unwrap();
        Setup { dir, url }
    }

    fn d(&self) -> &Path {
        self.dir.path()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_contact-sync"));
        c.current_dir(self.d())
            .args(["--config", "contact-sync.toml"])
            .args(args)
            .env_remove("CONTACT_SYNC_CONFIG")
            .env("STATE_DB_URL", &self.url);
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run contact-sync")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "contact-sync {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).expect("JSON output")
    }

    fn db(&self, name: &str) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(self.d().join("contact-sync-data").join(name)).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c
    }

    fn local_rows(&self, distinct: bool) -> i64 {
        let p = self.d().join("contact-sync-data").join("local.db");
        if !p.exists() {
            return 0;
        }
        let sql = if distinct {
            "SELECT count(DISTINCT contact_id) FROM contacts"
        } else {
            "SELECT count(*) FROM contacts"
        };
        rusqlite::Connection::open(p)
            .and_then(|c| {
                c.busy_timeout(Duration::from_secs(5))?;
                c.query_row(sql, [], |r| r.get(0))
            })
            .unwrap_or(0)
    }
}

fn store<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["stores"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["store"] == name)
        .unwrap_or_else(|| panic!("no store {name} in {status}"))
}

#[test]
fn sync_status_and_conflicts_with_the_state_on_postgres() {
    let s = Setup::new();
    // Nothing set up yet: the operator commands say so and create nothing.
    let out = s.run(&["status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("there is no state database at postgres://"),
        "{err}"
    );
    if s.url.contains(PASSWORD) {
        assert!(
            !err.contains(PASSWORD),
            "the password is never shown: {err}"
        );
    }

    s.ok(&["seed", "--contacts", "200", "--invalid", "5"]);
    let out = s.ok(&["run", "--initial-sync", "--once"]);
    assert!(out.contains("local") && out.contains("OK"), "{out}");
    // The state is in Postgres, not in a file.
    assert!(!s.d().join("contact-sync-data/state.db").exists());
    assert_eq!(
        s.db("local.db")
            .query_row(
                "SELECT count(*) FROM contacts WHERE deleted_at IS NULL",
                [],
                |r| r.get::<_, i64>(0)
            )
            .unwrap(),
        200
    );
    let dl = s.json(&["dead-letters", "list", "--json"]);
    assert_eq!(dl.as_array().unwrap().len(), 5, "{dl}");

    // An edit on both sides at the same version and time: one open conflict.
    let id = "c000000007";
    let ts = "2026-06-01T10:00:00.000000Z";
    for (file, title) in [
        ("canonical.db", "Canonical title"),
        ("local.db", "Local title"),
    ] {
        s.db(file)
            .execute(
                "UPDATE contacts SET job_title = ?1, version = 2, last_updated = ?2 WHERE contact_id = ?3",
                rusqlite::params![title, ts, id],
            )
            .unwrap();
    }
    s.ok(&["run", "--once"]);
    let conflicts = s.json(&["conflicts", "list", "--json"]);
    let list = conflicts.as_array().unwrap();
    assert_eq!(list.len(), 1, "{conflicts}");
    assert_eq!(list[0]["contact_id"], id);
    assert_eq!(list[0]["conflict"]["incoming"], "Local title");

    let st = s.json(&["status", "--json"]);
    assert_eq!(st["running"], false);
    assert_eq!(st["dead_letters"], 5);
    assert_eq!(st["conflicts_open"], 1);
    let local = store(&st, "local");
    assert_eq!(local["contacts"], 200);
    assert_eq!(local["pending"], 0);
    assert!(local["last_success"].is_string(), "{st}");

    // Settled by a person, carried out by the next cycle.
    let cid = list[0]["id"].as_i64().unwrap().to_string();
    s.ok(&["conflicts", "resolve", &cid, "--keep", "incoming"]);
    s.ok(&["run", "--once"]);
    assert_eq!(
        s.json(&["show", id, "--store", "local", "--json"])["job_title"],
        "Local title"
    );
    assert_eq!(
        s.json(&["conflicts", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let out = s.run(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("state database"), "{text}");
    assert!(!text.contains(PASSWORD), "{text}");
}

#[test]
fn kill_9_during_initial_sync_then_restart_finishes_with_every_contact_once() {
    let s = Setup::new();
    s.ok(&["seed", "--contacts", "10000"]);
    let mut child = s
        .cmd(&["run", "--initial-sync", "--once", "--batch-size", "100"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while s.local_rows(false) == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for the backfill to start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let partial = s.local_rows(false);
    assert!(
        partial < 10_000,
        "the kill came too late to test anything ({partial} rows)"
    );

    // The killed daemon's lock and open transaction went with its session.
    s.ok(&["run", "--once"]);
    assert_eq!(s.local_rows(false), 10_000);
    assert_eq!(s.local_rows(true), 10_000);
    let out = s.ok(&["initial-sync"]);
    assert!(out.contains("OK"), "{out}");
    let st = s.json(&["status", "--json"]);
    assert_eq!(store(&st, "local")["contacts"], 10_000);
    assert_eq!(store(&st, "local")["pending"], 0);
}
