//! `contact-sync state migrate-to-postgres`, through the binary: a SQLite
//! state database (canonical.db + local.db, with a journal, a conflict and
//! dead letters) moved into a fresh Postgres database of the test harness
//! (the server of `CONTACT_SYNC_PG_URL`, or a private cluster; it panics
//! with instructions when there is none), and the sync going on from it.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Two configurations over the same data directory: the state in SQLite
/// (`sqlite.toml`), then in Postgres (`pg.toml`).
struct Setup {
    dir: tempfile::TempDir,
    url: String,
}

const STORES: &str = "[stores.local]\nkind = \"sqlite\"\n";

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

impl Setup {
    fn new() -> Setup {
        let url = rt().block_on(contact_sync_postgres::harness::shared().create_database());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sqlite.toml"), STORES).unwrap();
        std::fs::write(
            dir.path().join("pg.toml"),
            format!("[state]\nurl = {{ env = \"STATE_DB_URL\" }}\n\n{STORES}"),
        )
        .unwrap();
        Setup { dir, url }
    }

    fn d(&self) -> &Path {
        self.dir.path()
    }

    fn cmd(&self, config: &str, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_contact-sync"));
        c.current_dir(self.d())
            .args(["--config", config])
            .args(args)
            .env_remove("CONTACT_SYNC_CONFIG")
            .env("STATE_DB_URL", &self.url);
        c
    }

    fn run(&self, config: &str, args: &[&str]) -> Output {
        self.cmd(config, args).output().expect("run contact-sync")
    }

    fn ok(&self, config: &str, args: &[&str]) -> String {
        let out = self.run(config, args);
        assert!(
            out.status.success(),
            "contact-sync {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn json(&self, config: &str, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(config, args)).expect("JSON output")
    }

    fn db(&self, name: &str) -> rusqlite::Connection {
        let c = rusqlite::Connection::open(self.d().join("contact-sync-data").join(name)).unwrap();
        c.busy_timeout(Duration::from_secs(10)).unwrap();
        c
    }

    fn job_title(&self, file: &str, id: &str) -> Option<String> {
        self.db(file)
            .query_row(
                "SELECT job_title FROM contacts WHERE contact_id = ?1",
                [id],
                |r| r.get(0),
            )
            .unwrap()
    }

    fn set_job_title(&self, file: &str, id: &str, title: &str) {
        self.db(file)
            .execute(
                "UPDATE contacts SET job_title = ?1 WHERE contact_id = ?2",
                [title, id],
            )
            .unwrap();
    }

    /// SHA-256 of the SQLite state database's content: the file and its
    /// write-ahead log (an absent log and an empty one hold the same: a
    /// read-only reader leaves an empty one behind).
    fn state_files(&self) -> String {
        let mut h = Sha256::new();
        for name in ["state.db", "state.db-wal"] {
            let p = self.d().join("contact-sync-data").join(name);
            let bytes = std::fs::read(&p).unwrap_or_default();
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(&bytes);
        }
        format!("{:x}", h.finalize())
    }

    /// A daemon polling every second.
    fn daemon(&self, config: &str) -> Child {
        self.cmd(config, &["run", "--interval", "1", "--no-http"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn daemon")
    }

    /// Waits for `cond` (every 50 ms) at most 60 s.
    fn wait_for(&self, what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Rows of a Postgres state table.
    fn pg_count(&self, table: &str) -> i64 {
        rt().block_on(async {
            let (c, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let exists: Option<String> = c
                .query_one("SELECT to_regclass($1)::text", &[&table])
                .await
                .unwrap()
                .get(0);
            if exists.is_none() {
                return -1;
            }
            c.query_one(&format!("SELECT count(*) FROM {table}"), &[])
                .await
                .unwrap()
                .get(0)
        })
    }
}

fn stop(mut daemon: Child) {
    let st = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = daemon.wait().unwrap();
    assert!(status.success(), "the daemon ended with {status}");
}

/// A cycle line of `run --once`: the number after `written` for `store`.
fn written(out: &str, store: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.split_whitespace().next() == Some(store))
        .unwrap_or_else(|| panic!("no cycle line for {store} in {out}"));
    let mut words = line.split_whitespace();
    words.find(|w| *w == "written");
    words.next().unwrap().parse().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_sqlite_state_database_moves_to_postgres_and_the_sync_goes_on() {
    let s = Setup::new();
    const SQ: &str = "sqlite.toml";
    const PG: &str = "pg.toml";
    s.ok(SQ, &["seed", "--contacts", "200", "--invalid", "3"]);
    let out = s.ok(SQ, &["run", "--initial-sync", "--once"]);
    assert!(out.contains("initial sync"), "{out}");
    // Some history: edits from the local store, and a conflict (both
    // sides at the same version and time).
    for i in 10..15 {
        s.set_job_title("local.db", &format!("c0000000{i}"), &format!("Edit {i}"));
    }
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
    s.ok(SQ, &["run", "--once"]);
    let conflicts = s.json(SQ, &["conflicts", "list", "--json"]);
    assert_eq!(conflicts.as_array().unwrap().len(), 1, "{conflicts}");
    let dead = s.json(SQ, &["dead-letters", "list", "--json"]);
    assert_eq!(dead.as_array().unwrap().len(), 3, "{dead}");
    let history = s.json(SQ, &["history", "c000000011", "--json"]);
    assert_eq!(history["entries"].as_array().unwrap().len(), 1, "{history}");
    let before = s.json(SQ, &["status", "--json"]);
    let head = before["journal_head"].as_i64().unwrap();
    assert!(head >= 5, "{before}");
    let files = s.state_files();

    // The move.
    let out = s.ok(PG, &["state", "migrate-to-postgres"]);
    assert!(out.contains("Copied the state database"), "{out}");
    assert!(out.contains("left unchanged"), "{out}");
    assert!(
        out.contains(&format!("up to seq {head})")),
        "the journal's seqs are kept: {out}"
    );
    assert!(
        out.contains(&format!("The next journal seq is {}", head + 1)),
        "{out}"
    );
    assert_eq!(s.state_files(), files, "the SQLite file is not changed");
    assert_eq!(s.pg_count("journal"), head);
    assert_eq!(s.pg_count("leases"), 0);

    // Everything listed as before, now from Postgres.
    assert_eq!(s.json(PG, &["conflicts", "list", "--json"]), conflicts);
    assert_eq!(s.json(PG, &["dead-letters", "list", "--json"]), dead);
    assert_eq!(
        s.json(PG, &["history", "c000000011", "--json"]),
        history,
        "the journal reads the same"
    );
    let after = s.json(PG, &["status", "--json"]);
    assert_eq!(after["journal_head"], head);
    assert_eq!(after["conflicts_open"], 1);
    assert_eq!(after["dead_letters"], 3);
    assert_eq!(after["canonical_contacts"], before["canonical_contacts"]);

    // No initial sync again: the next cycle has nothing to write.
    let out = s.ok(PG, &["run", "--once"]);
    assert!(!out.contains("initial sync"), "{out}");
    assert_eq!(written(&out, "local"), 0, "{out}");
    assert_eq!(written(&out, "canonical"), 0, "{out}");

    // The daemon on Postgres: an edit in local.db reaches canonical, and
    // its journal entry comes after the copied ones.
    let daemon = s.daemon(PG);
    s.set_job_title("local.db", "c000000042", "After the move");
    s.wait_for("the edit to reach canonical", || {
        s.job_title("canonical.db", "c000000042").as_deref() == Some("After the move")
    });
    stop(daemon);
    let entries = s.json(PG, &["history", "c000000042", "--json"]);
    let entries = entries["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["seq"], head + 1);

    // The copied conflict is settled like any other.
    let cid = conflicts[0]["id"].as_i64().unwrap().to_string();
    s.ok(PG, &["conflicts", "resolve", &cid, "--keep", "incoming"]);
    s.ok(PG, &["run", "--once"]);
    assert_eq!(
        s.job_title("canonical.db", id).as_deref(),
        Some("Local title")
    );
    assert_eq!(
        s.json(PG, &["conflicts", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn the_move_is_refused_while_the_sqlite_file_is_in_use_or_the_target_holds_state() {
    let s = Setup::new();
    const SQ: &str = "sqlite.toml";
    const PG: &str = "pg.toml";
    s.ok(SQ, &["seed", "--contacts", "20"]);
    s.ok(SQ, &["run", "--initial-sync", "--once"]);

    // A daemon on the SQLite file holds its lock.
    let daemon = s.daemon(SQ);
    s.wait_for("the daemon to hold the lock", || {
        s.json(SQ, &["status", "--json"])["running"] == true
    });
    let out = s.run(PG, &["state", "migrate-to-postgres"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "is in use by another contact-sync (pid {}",
            daemon.id()
        )),
        "{err}"
    );
    assert!(err.contains("stop the daemon or command"), "{err}");
    assert_eq!(s.pg_count("journal"), -1, "nothing was created in Postgres");
    stop(daemon);

    // Stopped: the move goes through once; a second finds state there.
    let report = s.json(PG, &["state", "migrate-to-postgres", "--json"]);
    let rows = |t: &str| {
        report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["table"] == t)
            .unwrap_or_else(|| panic!("no table {t} in {report}"))["rows"]
            .as_i64()
            .unwrap()
    };
    assert!(rows("store_records") >= 20, "{report}");
    assert_eq!(rows("store_records"), s.pg_count("store_records"));
    assert_eq!(rows("journal"), 0);
    assert_eq!(report["journal_next_seq"], 1);
    let out = s.run(PG, &["state", "migrate-to-postgres"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("is not empty (checkpoints: 2 rows"), "{err}");
    assert!(err.contains("nothing was copied"), "{err}");

    // Likewise a database a daemon started on (no copy, its own state).
    let fresh = rt().block_on(contact_sync_postgres::harness::shared().create_database());
    let other = Setup {
        dir: tempfile::tempdir().unwrap(),
        url: fresh,
    };
    std::fs::write(
        other.d().join("pg.toml"),
        format!("[state]\nurl = {{ env = \"STATE_DB_URL\" }}\n\n{STORES}"),
    )
    .unwrap();
    other.ok(PG, &["seed", "--contacts", "5"]);
    other.ok(PG, &["run", "--once"]);
    let from = s.d().join("contact-sync-data/state.db");
    let out = other.run(
        PG,
        &[
            "state",
            "migrate-to-postgres",
            "--from",
            from.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is not empty ("), "{}", stderr(&out));

    // No SQLite file where it is looked for.
    let out = other.run(PG, &["state", "migrate-to-postgres"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("there is no SQLite state database at"),
        "{}",
        stderr(&out)
    );
}
