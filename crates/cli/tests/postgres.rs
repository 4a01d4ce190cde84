//! End to end through the binary with a Postgres store (a private
//! PostgreSQL cluster with wal_level=logical, started by the harness).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use contact_sync_postgres::harness;

fn cmd(dir: &Path, url: &str, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_contact-sync"));
    c.current_dir(dir)
        .args(["--config", "contact-sync.toml"])
        .args(args)
        .env("TEST_PG_URL", url);
    c
}

fn ok(dir: &Path, url: &str, args: &[&str]) -> String {
    let out = cmd(dir, url, args).output().expect("run contact-sync");
    assert!(
        out.status.success(),
        "contact-sync {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The daemon (`run`, polling every 10 minutes, so only wake-ups explain
/// a change arriving sooner) on a free loopback port, its log to `stderr`.
fn spawn_daemon(d: &Path, url: &str, stderr: Stdio) -> (u16, std::process::Child) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let daemon = cmd(
        d,
        url,
        &["run", "--interval", "600", "--http-listen", &listen],
    )
    .stdout(Stdio::null())
    .stderr(stderr)
    .spawn()
    .unwrap();
    (port, daemon)
}

fn local_title(d: &Path, id: &str) -> Option<(Option<String>, Option<String>)> {
    let c = rusqlite::Connection::open(d.join("contact-sync-data/local.db")).ok()?;
    c.busy_timeout(Duration::from_secs(2)).ok()?;
    c.query_row(
        "SELECT job_title, deleted_at FROM contacts WHERE contact_id = ?1",
        [id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .ok()
}

async fn wait_local(
    d: &Path,
    what: &str,
    f: impl Fn(Option<(Option<String>, Option<String>)>) -> bool,
    id: &str,
) -> Duration {
    let start = Instant::now();
    loop {
        if f(local_title(d, id)) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_way_with_change_capture_and_wakeups() {
    let server = harness::shared();
    let url = server.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let slot = format!("cs_cli_{}", std::process::id());
    std::fs::write(
        d.join("contact-sync.toml"),
        format!(
            "[stores.local]\nkind = \"sqlite\"\n\n[stores.supabase]\nkind = \"postgres\"\nurl = {{ env = \"TEST_PG_URL\" }}\nslot_name = \"{slot}\"\n"
        ),
    )
    .unwrap();
    let (d2, u2) = (d.clone(), url.clone());
    let run = move |args: &'static [&'static str]| {
        let (d, u) = (d2.clone(), u2.clone());
        tokio::task::spawn_blocking(move || ok(&d, &u, args))
    };
    // No `migrate`: `run` sets the table and change capture up on first start.
    run(&["seed", "--contacts", "50"]).await.unwrap();
    let out = run(&["run", "--initial-sync", "--once"]).await.unwrap();
    assert!(out.contains("supabase") && !out.contains("DRIFT"), "{out}");

    let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let n: i64 = pg
        .query_one("SELECT count(*) FROM contacts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 50);

    // The daemon polls only every 10 minutes: changes arrive by wake-up.
    let (port, mut daemon) = spawn_daemon(&d, &url, Stdio::null());
    // Up, and its first cycle finished (the change wake-ups are on).
    let start = Instant::now();
    loop {
        let metrics = match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if metrics
            .lines()
            .any(|l| l.starts_with("contact_sync_cycles_total ") && !l.ends_with(" 0"))
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the daemon did not finish a cycle within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Another app inserts, updates and deletes rows in Postgres.
    pg.execute(
        "INSERT INTO contacts (contact_id, canonical_name, job_title, category_code, subcategory_code) VALUES ('pg-1', 'Made in Postgres', 'First', 'B', 'B1')",
        &[],
    )
    .await
    .unwrap();
    let t_insert = wait_local(
        &d,
        "the insert",
        |r| r.is_some_and(|(t, _)| t.as_deref() == Some("First")),
        "pg-1",
    )
    .await;
    pg.execute(
        "UPDATE contacts SET job_title = 'Second' WHERE contact_id = 'pg-1'",
        &[],
    )
    .await
    .unwrap();
    let t_update = wait_local(
        &d,
        "the update",
        |r| r.is_some_and(|(t, _)| t.as_deref() == Some("Second")),
        "pg-1",
    )
    .await;
    pg.execute("DELETE FROM contacts WHERE contact_id = 'c000000004'", &[])
        .await
        .unwrap();
    wait_local(
        &d,
        "the delete",
        |r| r.is_some_and(|(_, del)| del.is_some()),
        "c000000004",
    )
    .await;
    // Bad data from another app: a dead letter, nothing else stops.
    pg.execute(
        "INSERT INTO contacts (contact_id, canonical_name, category_code, subcategory_code) VALUES ('pg-bad', 'Bad Sub', 'B', 'C3')",
        &[],
    )
    .await
    .unwrap();
    pg.execute(
        "UPDATE contacts SET job_title = 'Third' WHERE contact_id = 'pg-1'",
        &[],
    )
    .await
    .unwrap();
    wait_local(
        &d,
        "the update after a bad row",
        |r| r.is_some_and(|(t, _)| t.as_deref() == Some("Third")),
        "pg-1",
    )
    .await;
    assert!(
        local_title(&d, "pg-bad").is_none(),
        "a bad row must not be synced"
    );

    // The cycle that wrote local.db counts its events when it ends: wait
    // for the count (with a deadline), not for one read to be late enough.
    let start = Instant::now();
    loop {
        let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("contact_sync_store_retained_wal_bytes{store=\"supabase\"}"),
            "{metrics}"
        );
        let cdc_events: f64 = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix("contact_sync_store_cdc_events_total{store=\"supabase\"} ")
            })
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0);
        if cdc_events >= 4.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "CDC events counted: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
    eprintln!("postgres → local: insert {t_insert:?}, update {t_update:?}");

    let dl = run(&["dead-letters", "list", "--json"]).await.unwrap();
    assert!(
        dl.contains("pg-bad") && dl.contains("subcategory_code"),
        "{dl}"
    );

    // The other way: an edit in the local store reaches Postgres.
    let c = rusqlite::Connection::open(d.join("contact-sync-data/local.db")).unwrap();
    c.execute(
        "UPDATE contacts SET job_title = 'From local' WHERE contact_id = 'c000000007'",
        [],
    )
    .unwrap();
    run(&["run", "--once"]).await.unwrap();
    let t: String = pg
        .query_one(
            "SELECT job_title FROM contacts WHERE contact_id = 'c000000007'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(t, "From local");
    let v: i64 = pg
        .query_one(
            "SELECT version FROM contacts WHERE contact_id = 'c000000007'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(v, 2);

    // Nothing loops: another cycle moves nothing.
    let out = run(&["run", "--once"]).await.unwrap();
    assert!(
        out.contains("supabase")
            && out
                .lines()
                .all(|l| !l.contains("written") || l.contains("written      0")),
        "{out}"
    );
    let status = run(&["status", "--json"]).await.unwrap();
    assert!(status.contains("\"pending\": 0"), "{status}");
    let st: serde_json::Value = serde_json::from_str(&status).unwrap();
    let sb = st["stores"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["store"] == "supabase")
        .unwrap();
    assert!(sb["retained_wal_bytes"].is_i64(), "{sb}");

    // The safety check sees a dropped slot (and says so), then a reset fixes it.
    let (dd, uu) = (d.clone(), url.clone());
    let check = |args: &'static [&'static str]| {
        let (d, u) = (dd.clone(), uu.clone());
        tokio::task::spawn_blocking(move || cmd(&d, &u, args).output().unwrap())
    };
    let out = check(&["check"]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("supabase: change capture") && text.contains("slot present"),
        "{text}"
    );
    assert!(
        text.contains("supabase: clock") && text.contains("s from this machine's"),
        "{text}"
    );
    pg.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    let out = check(&["check"]).await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("UNSAFE") && text.contains("is missing"),
        "{text}"
    );

    // Resetting change capture keeps everything in sync afterwards.
    let out = run(&["cdc", "reset", "supabase"]).await.unwrap();
    assert!(out.contains("recreated"), "{out}");
    pg.execute(
        "UPDATE contacts SET nickname = 'After reset' WHERE contact_id = 'c000000009'",
        &[],
    )
    .await
    .unwrap();
    run(&["run", "--once"]).await.unwrap();
    let nick: Option<String> = rusqlite::Connection::open(d.join("contact-sync-data/local.db"))
        .unwrap()
        .query_row(
            "SELECT nickname FROM contacts WHERE contact_id = 'c000000009'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(nick.as_deref(), Some("After reset"));

    // Daemon down while 1,000 changes are committed in Postgres: all arrive, once.
    for i in 0..1000 {
        let id = format!("c{:09}", 20 + i % 20);
        pg.execute(
            "UPDATE contacts SET notes = $1 WHERE contact_id = $2",
            &[&format!("change {i}"), &id],
        )
        .await
        .unwrap();
    }
    let out = run(&["run", "--once"]).await.unwrap();
    assert!(out.contains("supabase     captured   1000"), "{out}");
    let local = rusqlite::Connection::open(d.join("contact-sync-data/local.db")).unwrap();
    for k in 0..20 {
        let last = (0..1000).filter(|i| i % 20 == k).max().unwrap();
        let notes: String = local
            .query_row(
                "SELECT notes FROM contacts WHERE contact_id = ?1",
                [format!("c{:09}", 20 + k)],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(notes, format!("change {last}"));
    }
    let n: i64 = local
        .query_row("SELECT count(*) FROM contacts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 51, "nothing duplicated (50 seeded + pg-1)");

    // The same field edited in Postgres and locally, equal versions and
    // timestamps: one open conflict, canonical kept everywhere.
    let ts = "2026-06-01T10:00:00.000000Z";
    local
        .execute(
            "UPDATE contacts SET department = 'Local dept', version = version + 1, last_updated = ?1 WHERE contact_id = 'c000000015'",
            [ts],
        )
        .unwrap();
    let v: i64 = local
        .query_row(
            "SELECT version FROM contacts WHERE contact_id = 'c000000015'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    pg.execute(
        "UPDATE contacts SET department = 'PG dept', version = $1, last_updated = $2::text::timestamptz WHERE contact_id = 'c000000015'",
        &[&v, &ts],
    )
    .await
    .unwrap();
    run(&["run", "--once"]).await.unwrap();
    let conflicts: serde_json::Value =
        serde_json::from_str(&run(&["conflicts", "list", "--json"]).await.unwrap()).unwrap();
    let list = conflicts.as_array().unwrap();
    assert_eq!(list.len(), 1, "{conflicts}");
    assert_eq!(list[0]["contact_id"], "c000000015");
    assert_eq!(list[0]["conflict"]["field"], "department");
    run(&["run", "--once"]).await.unwrap();
    let canon: serde_json::Value =
        serde_json::from_str(&run(&["show", "c000000015", "--json"]).await.unwrap()).unwrap();
    let kept = canon["department"].as_str().unwrap().to_string();
    let pg_dept: String = pg
        .query_one(
            "SELECT department FROM contacts WHERE contact_id = 'c000000015'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let local_dept: String = local
        .query_row(
            "SELECT department FROM contacts WHERE contact_id = 'c000000015'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        (pg_dept.as_str(), local_dept.as_str()),
        (kept.as_str(), kept.as_str())
    );
}

/// `check` on a stopped Postgres: UNSAFE, naming the store; the URL's
/// password never printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_says_unsafe_when_postgres_is_stopped() {
    let cluster = tokio::task::spawn_blocking(|| {
        harness::PgCluster::start(harness::ClusterOptions::default()).expect("private cluster")
    })
    .await
    .unwrap();
    let url = cluster.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    std::fs::write(
        d.join("contact-sync.toml"),
        "[stores.local]\nkind = \"sqlite\"\n\n[stores.supabase]\nkind = \"postgres\"\nurl = { env = \"TEST_PG_URL\" }\nslot_name = \"cs_stopped\"\n",
    )
    .unwrap();
    let (d2, u2) = (d.clone(), url.clone());
    tokio::task::spawn_blocking(move || {
        ok(&d2, &u2, &["migrate"]);
        let out = cmd(&d2, &u2, &["check"]).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || cluster.stop().expect("stop"))
        .await
        .unwrap();
    let with_password = url.replacen(
        "postgres://postgres@",
        "postgres://postgres:Hidden-Pw-42@",
        1,
    );
    let out =
        tokio::task::spawn_blocking(move || cmd(&d, &with_password, &["check"]).output().unwrap())
            .await
            .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("UNSAFE") && text.contains("supabase"),
        "{text}"
    );
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        !text.contains("Hidden-Pw-42") && !err.contains("Hidden-Pw-42"),
        "{text}\n{err}"
    );
}

/// Waits for `f` with a deadline, polling (no fixed sleep decides anything).
async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn local_count(d: &Path) -> i64 {
    rusqlite::Connection::open(d.join("contact-sync-data/local.db"))
        .ok()
        .and_then(|c| {
            c.busy_timeout(Duration::from_secs(2)).ok()?;
            c.query_row(
                "SELECT count(*) FROM contacts WHERE deleted_at IS NULL",
                [],
                |r| r.get(0),
            )
            .ok()
        })
        .unwrap_or(0)
}

/// Postgres down when the daemon starts: the daemon stays up, backfills
/// and syncs the local store, retries the Postgres store's initial sync
/// with backoff, and finishes it once Postgres is back. A restart with
/// `--initial-sync` then redoes no finished backfill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_down_at_start_is_retried_while_the_others_sync() {
    let cluster = tokio::task::spawn_blocking(|| {
        harness::PgCluster::start(harness::ClusterOptions::default()).expect("private cluster")
    })
    .await
    .unwrap();
    let url = cluster.url("postgres");
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.stop().expect("stop");
        cluster
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    std::fs::write(
        d.join("contact-sync.toml"),
        "[stores.local]\nkind = \"sqlite\"\n\n[stores.supabase]\nkind = \"postgres\"\nurl = { env = \"TEST_PG_URL\" }\nslot_name = \"cs_down_at_start\"\n",
    )
    .unwrap();
    ok(&d, &url, &["seed", "--contacts", "30"]);
    let log = d.join("daemon.log");
    let out_file = d.join("daemon.out");
    let mut daemon = cmd(
        &d,
        &url,
        &["run", "--initial-sync", "--interval", "1", "--no-http"],
    )
    .stdout(std::fs::File::create(&out_file).unwrap())
    .stderr(std::fs::File::create(&log).unwrap())
    .spawn()
    .unwrap();
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    wait_until(
        "the local store's backfill",
        Duration::from_secs(60),
        || local_count(&d) == 30,
    )
    .await;
    wait_until(
        "a failed attempt at the Postgres store",
        Duration::from_secs(60),
        || log_text().contains("initial sync of the store failed"),
    )
    .await;
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the daemon must keep running: {}",
        log_text()
    );
    // The local store keeps syncing meanwhile: an edit there reaches canonical.
    rusqlite::Connection::open(d.join("contact-sync-data/local.db"))
        .unwrap()
        .execute(
            "UPDATE contacts SET job_title = 'While PG is down' WHERE contact_id = 'c000000003'",
            [],
        )
        .unwrap();
    let (d2, u2) = (d.clone(), url.clone());
    let canonical_title = move || -> String {
        let out = cmd(&d2, &u2, &["show", "c000000003", "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["job_title"].as_str().unwrap_or_default().to_string()
    };
    wait_until(
        "the local edit in canonical",
        Duration::from_secs(60),
        || canonical_title() == "While PG is down",
    )
    .await;

    // Postgres comes back: the retry backfills it, edit included.
    let cluster = tokio::task::spawn_blocking(move || {
        cluster.start_server().expect("start again");
        cluster
    })
    .await
    .unwrap();
    let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let start = Instant::now();
    loop {
        let n = pg
            .query_one("SELECT count(*) FROM contacts", &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0);
        let finished = std::fs::read_to_string(&out_file)
            .unwrap_or_default()
            .matches("initial sync finished")
            .count();
        if n == 30 && finished == 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "Postgres never backfilled ({n} rows): {}",
            log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let t: String = pg
        .query_one(
            "SELECT job_title FROM contacts WHERE contact_id = 'c000000003'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(t, "While PG is down");
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    assert_eq!(daemon.wait().unwrap().code(), Some(0), "{}", log_text());

    // A restart with --initial-sync redoes no finished backfill; the
    // idempotent set-up's NOTICEs ("already exists, skipping") stay out of
    // the log.
    let run_out = cmd(&d, &url, &["run", "--initial-sync", "--once"])
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&run_out.stdout),
        String::from_utf8_lossy(&run_out.stderr),
    );
    assert!(run_out.status.success(), "{out}\n{err}");
    assert!(
        out.contains("every store has finished its backfill already")
            && !out.contains("verification:"),
        "{out}"
    );
    assert!(
        !err.contains("already exists") && !err.contains("NOTICE"),
        "{err}"
    );

    // `cdc status`: a readable table, and JSON.
    let text = ok(&d, &url, &["cdc", "status", "supabase"]);
    assert!(
        text.contains("logical replication slot")
            && text.contains("cs_down_at_start: present")
            && text.contains("retained WAL")
            && !text.contains("SlotHealth"),
        "{text}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&ok(&d, &url, &["cdc", "status", "supabase", "--json"])).unwrap();
    assert_eq!(v["slot"], "cs_down_at_start", "{v}");
    assert_eq!(v["slot_exists"], true, "{v}");
    assert_eq!(v["healthy"], true, "{v}");
    drop(cluster);
}

/// `check` on a Postgres database without the contacts table points at
/// `migrate`, not at the credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_suggests_migrate_for_a_missing_table() {
    let server = harness::shared();
    let url = server.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    std::fs::write(
        d.join("contact-sync.toml"),
        "[stores.supabase]\nkind = \"postgres\"\nurl = { env = \"TEST_PG_URL\" }\nslot_name = \"cs_no_table\"\n",
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || cmd(&d, &url, &["check"]).output().unwrap())
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = text
        .lines()
        .skip_while(|l| !l.contains("store supabase reachable"))
        .take(3)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        line.contains("contact-sync migrate") && !line.contains("credentials"),
        "{text}"
    );
}

/// Propagation to a Postgres store fails with an error retrying cannot
/// fix (a trigger there refuses every write) while capturing from it
/// works: the store is parked, `/health` turns 503 naming it and the
/// error, `check` says UNSAFE naming it, the local store keeps syncing;
/// once fixed, `resume` (while the daemon runs) sends it the edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_failing_for_good_is_parked_named_and_resumed() {
    let server = harness::shared();
    let url = server.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    std::fs::write(
        d.join("contact-sync.toml"),
        "[stores.local]\nkind = \"sqlite\"\n\n[stores.supabase]\nkind = \"postgres\"\nurl = { env = \"TEST_PG_URL\" }\nslot_name = \"cs_refusing\"\n",
    )
    .unwrap();
    ok(&d, &url, &["seed", "--contacts", "10"]);
    ok(&d, &url, &["run", "--initial-sync", "--once"]);
    let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    pg.batch_execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'writes are frozen for maintenance'; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON contacts FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .await
    .unwrap();
    // An edit in the local store must reach Postgres, which refuses it.
    rusqlite::Connection::open(d.join("contact-sync-data/local.db"))
        .unwrap()
        .execute(
            "UPDATE contacts SET job_title = 'Refused by PG' WHERE contact_id = 'c000000002'",
            [],
        )
        .unwrap();
    let (port, mut daemon) = spawn_daemon(&d, &url, Stdio::null());
    let start = Instant::now();
    let body = loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/health")).await {
            let code = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            if code == 503 {
                break body;
            }
            assert!(code == 200, "unexpected /health status {code}: {body}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "/health never turned 503"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["status"], "unhealthy", "{body}");
    let reason = body["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["store"] == "supabase" && r["reason"] == "store_paused")
        .unwrap_or_else(|| panic!("no reason says supabase is parked: {body}"));
    assert_eq!(reason["kind"], "failed", "{body}");
    assert!(
        reason["message"].as_str().is_some_and(
            |m| m.contains("writes are frozen") && m.contains("contact-sync resume supabase")
        ),
        "{body}"
    );
    let paused: serde_json::Value =
        serde_json::from_str(&ok(&d, &url, &["paused", "--json"])).unwrap();
    assert_eq!(
        (paused[0]["store"].as_str(), paused[0]["kind"].as_str()),
        (Some("supabase"), Some("failed")),
        "{paused}"
    );
    let out = cmd(&d, &url, &["check"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("UNSAFE")
            && text.contains("supabase paused")
            && text.contains("parked after a permanent error"),
        "{text}"
    );
    // The edit itself reached canonical: only Postgres is stuck.
    let c: serde_json::Value =
        serde_json::from_str(&ok(&d, &url, &["show", "c000000002", "--json"])).unwrap();
    assert_eq!(c["job_title"], "Refused by PG");

    // Fixed, then resumed while the daemon runs: Postgres gets the edit.
    pg.batch_execute("DROP TRIGGER refuse ON contacts")
        .await
        .unwrap();
    let out = ok(&d, &url, &["resume", "supabase"]);
    assert!(out.contains("at the daemon's next cycle"), "{out}");
    let start = Instant::now();
    loop {
        let t: Option<String> = pg
            .query_one(
                "SELECT job_title FROM contacts WHERE contact_id = 'c000000002'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if t.as_deref() == Some("Refused by PG") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the resumed store never got the edit"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let paused = ok(&d, &url, &["paused"]);
    assert!(paused.contains("no store is paused"), "{paused}");
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
}

/// A store whose initial sync fails with an error retrying cannot fix (a
/// trigger there refuses every write) is parked like a store failing in
/// the cycles: `/health` names it, the local store syncs meanwhile, and its
/// backfill is not retried on a timer; once fixed, `resume` (while the
/// daemon runs) starts its backfill and it gets every contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_failing_for_good_parks_the_store_until_resume() {
    let server = harness::shared();
    let url = server.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    std::fs::write(
        d.join("contact-sync.toml"),
        "[stores.local]\nkind = \"sqlite\"\n\n[stores.supabase]\nkind = \"postgres\"\nurl = { env = \"TEST_PG_URL\" }\nslot_name = \"cs_refused_backfill\"\n",
    )
    .unwrap();
    ok(&d, &url, &["seed", "--contacts", "10"]);
    ok(&d, &url, &["migrate"]);
    let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    pg.batch_execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'writes are frozen for maintenance'; END $$; \
         CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON contacts FOR EACH ROW EXECUTE FUNCTION refuse();",
    )
    .await
    .unwrap();
    let log = d.join("daemon.log");
    let (port, mut daemon) =
        spawn_daemon(&d, &url, Stdio::from(std::fs::File::create(&log).unwrap()));
    let start = Instant::now();
    let body = loop {
        if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/health")).await {
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            let parked = body["reasons"].as_array().is_some_and(|rs| {
                rs.iter()
                    .any(|r| r["store"] == "supabase" && r["reason"] == "store_paused")
            });
            if parked {
                break body;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "/health never named supabase parked; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let reason = body["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["store"] == "supabase")
        .unwrap();
    assert_eq!(reason["kind"], "failed", "{body}");
    assert!(
        reason["message"]
            .as_str()
            .is_some_and(|m| m.contains("initial sync")
                && m.contains("writes are frozen")
                && m.contains("contact-sync resume supabase")),
        "{body}"
    );
    // The local store is not held back by it.
    wait_until(
        "the local store's backfill",
        Duration::from_secs(60),
        || local_count(&d) == 10,
    )
    .await;

    pg.batch_execute("DROP TRIGGER refuse ON contacts")
        .await
        .unwrap();
    let out = ok(&d, &url, &["resume", "supabase"]);
    assert!(out.contains("at the daemon's next cycle"), "{out}");
    let start = Instant::now();
    loop {
        let n: i64 = pg
            .query_one("SELECT count(*) FROM contacts", &[])
            .await
            .unwrap()
            .get(0);
        if n == 10 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the resumed store never got its backfill ({n} rows); log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let paused = ok(&d, &url, &["paused"]);
    assert!(paused.contains("no store is paused"), "{paused}");
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
    // Parked after its first failure: never retried on a timer while the
    // trigger refused (a backoff starts at 1 s, so retries would show).
    let text = std::fs::read_to_string(&log).unwrap();
    let failures = text
        .matches("initial sync of the store failed with an error retrying cannot fix")
        .count();
    let retried = text.matches("this one is retried").count();
    assert_eq!((failures, retried), (1, 0), "{text}");
}

/// `cdc reset` while the daemon runs: the slot is dropped under it, an
/// edit made in Postgres meanwhile is not in any slot, and capture fails
/// for good (the store is parked). `cdc reset` is carried out by the
/// daemon between its cycles; after `resume` the lost edit is found by the
/// conditional rewrite and merged, and later edits arrive from the new
/// slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdc_reset_while_the_daemon_runs_is_carried_out_by_the_daemon() {
    let server = harness::shared();
    let url = server.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let slot = format!("cs_live_reset_{}", std::process::id());
    std::fs::write(
        d.join("contact-sync.toml"),
        format!("[stores.local]\nkind = \"sqlite\"\n\n[stores.supabase]\nkind = \"postgres\"\nurl = {{ env = \"TEST_PG_URL\" }}\nslot_name = \"{slot}\"\n"),
    )
    .unwrap();
    ok(&d, &url, &["seed", "--contacts", "20"]);
    ok(&d, &url, &["run", "--initial-sync", "--once"]);
    let (pg, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut daemon = cmd(&d, &url, &["run", "--interval", "600", "--no-http"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status = |d: &Path, url: &str| -> serde_json::Value {
        serde_json::from_str(&ok(d, url, &["status", "--json"])).unwrap()
    };
    wait_until("the daemon to start", Duration::from_secs(60), || {
        status(&d, &url)["running"] == true
    })
    .await;

    pg.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    // The change wake-up runs a cycle, whose capture finds no slot.
    pg.execute(
        "UPDATE contacts SET nickname = 'Lost from capture' WHERE contact_id = 'c000000005'",
        &[],
    )
    .await
    .unwrap();
    wait_until("supabase to be parked", Duration::from_secs(60), || {
        status(&d, &url)["paused"].as_array().is_some_and(|p| {
            p.iter()
                .any(|p| p["store"] == "supabase" && p["kind"] == "failed")
        })
    })
    .await;

    let (d2, u2) = (d.clone(), url.clone());
    let out = tokio::task::spawn_blocking(move || {
        cmd(&d2, &u2, &["cdc", "reset", "supabase", "--wait", "60"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stderr.contains("queued as request #"), "{stderr}");
    assert!(
        stdout.contains("supabase: change capture recreated"),
        "{stdout}"
    );
    let present: i64 = pg
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(present, 1, "the daemon recreated the slot");

    let out = ok(&d, &url, &["resume", "supabase"]);
    assert!(out.contains("recorded"), "{out}");
    let nickname = |id: &str| -> Option<String> {
        let c = rusqlite::Connection::open(d.join("contact-sync-data/local.db")).ok()?;
        c.busy_timeout(Duration::from_secs(2)).ok()?;
        c.query_row(
            "SELECT nickname FROM contacts WHERE contact_id = ?1",
            [id],
            |r| r.get(0),
        )
        .ok()
        .flatten()
    };
    wait_until(
        "the edit made while capture was broken to reach local",
        Duration::from_secs(60),
        || nickname("c000000005").as_deref() == Some("Lost from capture"),
    )
    .await;
    wait_until("supabase to be resumed", Duration::from_secs(60), || {
        status(&d, &url)["paused"]
            .as_array()
            .is_some_and(|p| p.is_empty())
    })
    .await;
    // The daemon reads the new slot.
    pg.execute(
        "UPDATE contacts SET nickname = 'After live reset' WHERE contact_id = 'c000000006'",
        &[],
    )
    .await
    .unwrap();
    wait_until(
        "an edit after the reset to reach local",
        Duration::from_secs(60),
        || nickname("c000000006").as_deref() == Some("After live reset"),
    )
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status();
    assert_eq!(daemon.wait().unwrap().code(), Some(0));
    assert!(status(&d, &url)["requests"].as_array().unwrap().is_empty());
}
