//! End to end through the binary, on the embedded default (SQLite files in a
//! temporary working directory).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_contact-sync"))
}

fn cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.current_dir(dir)
        .args(args)
        .env_remove("CONTACT_SYNC_CONFIG");
    c
}

fn run(dir: &Path, args: &[&str]) -> Output {
    cmd(dir, args).output().expect("run contact-sync")
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

fn db(dir: &Path, name: &str) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(dir.join("contact-sync-data").join(name)).expect("open db");
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

fn count(dir: &Path, name: &str, sql: &str) -> i64 {
    db(dir, name)
        .query_row(sql, [], |r| r.get(0))
        .expect("count")
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
fn seed_sync_edit_local_and_status_agree() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = ok(d, &["seed", "--contacts", "200", "--invalid", "5"]);
    assert!(out.contains("seeded 205 contacts"), "{out}");
    let out = ok(d, &["run", "--initial-sync", "--once"]);
    assert!(out.contains("verification:"), "{out}");
    assert!(out.contains("local") && out.contains("OK"), "{out}");

    // Every valid contact is in the local store, the invalid ones are not.
    assert_eq!(
        count(
            d,
            "local.db",
            "SELECT count(*) FROM contacts WHERE deleted_at IS NULL"
        ),
        200
    );
    let dl = json(d, &["dead-letters", "list", "--json"]);
    assert_eq!(dl.as_array().unwrap().len(), 5, "{dl}");
    for x in dl.as_array().unwrap() {
        assert_eq!(x["store"], "canonical");
        assert!(!x["field"].as_str().unwrap().is_empty());
        assert!(!x["reason"].as_str().unwrap().is_empty());
    }

    // A person edits the local SQLite database directly.
    let id = "c000000003";
    let n = db(d, "local.db")
        .execute(
            "UPDATE contacts SET job_title = 'Chief Gardener' WHERE contact_id = ?1",
            [id],
        )
        .unwrap();
    assert_eq!(n, 1);
    ok(d, &["run", "--once"]);
    let c = json(d, &["show", id, "--json"]);
    assert_eq!(c["job_title"], "Chief Gardener", "{c}");
    assert_eq!(c["version"], 2, "{c}");
    assert_eq!(c["last_updated_by"], "local", "{c}");

    let st = json(d, &["status", "--json"]);
    assert_eq!(st["running"], false);
    assert_eq!(st["dead_letters"], 5);
    assert_eq!(st["conflicts_open"], 0);
    let local = store(&st, "local");
    assert_eq!(local["contacts"], 200);
    assert_eq!(local["pending"], 0);
    assert_eq!(local["drift_pct"], 0.0);
    assert!(local["last_success"].is_string(), "{st}");
    // The human form says the same.
    let text = ok(d, &["status"]);
    assert!(
        text.contains("daemon: not running") && text.contains("dead letters: 5"),
        "{text}"
    );
}

#[test]
fn equal_versions_and_times_on_both_sides_make_one_open_conflict() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["seed", "--contacts", "20"]);
    ok(d, &["run", "--initial-sync", "--once"]);
    let id = "c000000007";
    let ts = "2026-06-01T10:00:00.000000Z";
    for (file, title) in [
        ("canonical.db", "Canonical title"),
        ("local.db", "Local title"),
    ] {
        db(d, file)
            .execute(
                "UPDATE contacts SET job_title = ?1, version = 2, last_updated = ?2 WHERE contact_id = ?3",
                rusqlite::params![title, ts, id],
            )
            .unwrap();
    }
    ok(d, &["run", "--once"]);
    let conflicts = json(d, &["conflicts", "list", "--json"]);
    let list = conflicts.as_array().unwrap();
    assert_eq!(list.len(), 1, "{conflicts}");
    assert_eq!(list[0]["contact_id"], id);
    assert_eq!(list[0]["conflict"]["field"], "job_title");
    assert_eq!(list[0]["conflict"]["canonical"], "Canonical title");
    assert_eq!(list[0]["conflict"]["incoming"], "Local title");
    // Canonical kept, and the local store brought back in line.
    assert_eq!(
        json(d, &["show", id, "--json"])["job_title"],
        "Canonical title"
    );
    assert_eq!(
        json(d, &["show", id, "--store", "local", "--json"])["job_title"],
        "Canonical title"
    );

    // Resolve by taking the incoming value.
    let cid = list[0]["id"].as_i64().unwrap().to_string();
    ok(d, &["conflicts", "resolve", &cid, "--keep", "incoming"]);
    ok(d, &["run", "--once"]);
    assert_eq!(
        json(d, &["show", id, "--store", "local", "--json"])["job_title"],
        "Local title"
    );
    assert_eq!(
        json(d, &["conflicts", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.1 GET on loopback; the whole response as text.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn local_rows(d: &Path) -> i64 {
    let p = d.join("contact-sync-data").join("local.db");
    if !p.exists() {
        return 0;
    }
    rusqlite::Connection::open(p)
        .and_then(|c| {
            c.busy_timeout(Duration::from_secs(5))?;
            c.query_row("SELECT count(*) FROM contacts", [], |r| r.get(0))
        })
        .unwrap_or(0)
}

#[test]
fn kill_9_during_initial_sync_then_restart_finishes_with_every_contact_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["seed", "--contacts", "10000"]);
    let mut child: Child = cmd(
        d,
        &["run", "--initial-sync", "--once", "--batch-size", "100"],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    wait_for("the backfill to start", Duration::from_secs(120), || {
        local_rows(d) > 0
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let partial = local_rows(d);
    assert!(
        partial < 10_000,
        "the kill came too late to test anything ({partial} rows)"
    );

    ok(d, &["run", "--once"]);
    assert_eq!(
        count(d, "local.db", "SELECT count(*) FROM contacts"),
        10_000
    );
    assert_eq!(
        count(
            d,
            "local.db",
            "SELECT count(DISTINCT contact_id) FROM contacts"
        ),
        10_000
    );
    let out = ok(d, &["initial-sync"]);
    assert!(out.contains("OK"), "{out}");
}

#[test]
fn a_second_daemon_refuses_and_sigterm_stops_the_first_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["seed", "--contacts", "10"]);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut first = cmd(d, &["run", "--interval", "1", "--http-listen", &listen])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(
        "the daemon to hold the lock",
        Duration::from_secs(60),
        || json(d, &["status", "--json"])["running"] == true,
    );
    // Health and metrics on loopback.
    wait_for("/health", Duration::from_secs(30), || {
        http_get(port, "/health").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
    });
    wait_for("a cycle in /metrics", Duration::from_secs(30), || {
        http_get(port, "/metrics").is_some_and(|r| r.contains("contact_sync_cycles_total 1"))
    });
    let metrics = http_get(port, "/metrics").unwrap();
    assert!(metrics.contains("store=\"local\""), "{metrics}");
    let second = run(d, &["run", "--once"]);
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("in use by another contact-sync"), "{err}");
    // The hint never invites a second daemon onto the same stores.
    assert!(
        err.contains("Stop it first") && !err.contains("another data directory"),
        "{err}"
    );

    let pid = first.id().to_string();
    let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(st.success());
    let status = first.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM must end the daemon cleanly"
    );
    assert_eq!(json(d, &["status", "--json"])["running"], false);
}

#[test]
fn bad_config_is_a_clear_error_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("bad.toml"), "[sync]\nbatch_size = \"many\"\n").unwrap();
    let out = run(d, &["--config", "bad.toml", "status"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("batch_size"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    let out = run(d, &["--config", "missing.toml", "status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read config file"));
}

#[test]
fn prompt_context_is_the_same_from_any_store_and_refuses_unknown_and_excluded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["seed", "--contacts", "300"]);
    ok(d, &["run", "--initial-sync", "--once"]);
    let conn = db(d, "canonical.db");
    let pick = |sql: &str| -> String { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    let normal = pick("SELECT contact_id FROM contacts WHERE category_code NOT IN ('X', 'H') ORDER BY contact_id LIMIT 1");
    let excluded = pick(
        "SELECT contact_id FROM contacts WHERE category_code = 'X' ORDER BY contact_id LIMIT 1",
    );
    let name = pick(&format!(
        "SELECT canonical_name FROM contacts WHERE contact_id = '{normal}'"
    ));

    let from_canonical = ok(
        d,
        &[
            "prompt",
            "--contact",
            &normal,
            "--base-prompt",
            "Write a birthday note.",
        ],
    );
    assert!(
        from_canonical.starts_with("Write a birthday note."),
        "{from_canonical}"
    );
    assert!(from_canonical.contains(&name), "{from_canonical}");
    let from_local = ok(
        d,
        &[
            "prompt",
            "--contact",
            &normal,
            "--base-prompt",
            "Write a birthday note.",
            "--source",
            "local",
        ],
    );
    assert_eq!(from_canonical, from_local);

    let small = ok(d, &["prompt", "--contact", &normal, "--max-tokens", "60"]);
    assert!(small.contains("omitted"), "{small}");

    let out = run(d, &["prompt", "--contact", "c999999999"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("c999999999"));
    let out = run(d, &["prompt", "--contact", &excluded]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&excluded) && err.contains("Exclude"), "{err}");
    let allowed = ok(
        d,
        &[
            "prompt",
            "--contact",
            &excluded,
            "--allow-excluded",
            "--format",
            "json",
        ],
    );
    let v: Value = serde_json::from_str(allowed.trim()).expect("json prompt");
    assert!(v.to_string().contains(&excluded), "{v}");
}

#[test]
fn check_says_safe_on_a_healthy_setup_and_unsafe_when_a_store_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["seed", "--contacts", "20"]);
    ok(d, &["run", "--initial-sync", "--once"]);
    let out = run(d, &["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("SAFE"), "{text}");
    let j = json(d, &["check", "--json"]);
    assert!(j.to_string().contains("verdict"), "{j}");

    // A Twenty store on a port where nothing listens.
    let port = free_port();
    std::fs::write(
        d.join("c.toml"),
        format!("[stores.local]\nkind = \"sqlite\"\n\n[stores.crm]\nkind = \"twenty\"\nbase_url = \"http://127.0.0.1:{port}\"\napi_key = {{ env = \"CHECK_TEST_KEY\" }}\n"),
    )
    .unwrap();
    let out = cmd(d, &["--config", "c.toml", "check"])
        .env("CHECK_TEST_KEY", "k-123-secret")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("UNSAFE") && text.contains("crm"), "{text}");
    assert!(
        !text.contains("k-123-secret")
            && !String::from_utf8_lossy(&out.stderr).contains("k-123-secret")
    );

    // run --safety-check refuses to start.
    let out = cmd(
        d,
        &["--config", "c.toml", "run", "--once", "--safety-check"],
    )
    .env("CHECK_TEST_KEY", "k")
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNSAFE"));

    // A service unit for this installation.
    let unit = ok(d, &["--config", "c.toml", "service", "systemd"]);
    assert!(
        unit.contains("ExecStart=") && unit.contains("c.toml") && unit.contains("Restart="),
        "{unit}"
    );
}

#[test]
fn drift_behind_the_engines_back_is_found_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["seed", "--contacts", "100"]);
    ok(d, &["run", "--initial-sync", "--once"]);
    assert!(run(d, &["drift"]).status.success(), "no drift after a sync");

    // Changed behind the engine's back: the change capture is bypassed.
    let local = db(d, "local.db");
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

    let out = run(d, &["drift", "--json"]);
    assert_eq!(out.status.code(), Some(1), "drift exits 1");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
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
    assert!(
        l["sample"].to_string().contains("c000000011")
            && l["sample"].to_string().contains("c000000012"),
        "{v}"
    );
    assert_eq!(l["drift_pct"], 2.0);

    // Both were changed in local.db behind the engine's back (their change
    // rows deleted): the repair does not overwrite them, it merges them
    // like any edit made there, so the edit and the delete reach canonical.
    let out = ok(d, &["drift", "--repair"]);
    assert!(
        out.contains("2 changed there since the engine last saw them"),
        "{out}"
    );
    assert!(run(d, &["drift"]).status.success());
    let c = json(d, &["show", "c000000011", "--json"]);
    assert_eq!(c["job_title"], "Tampered", "{c}");
    assert_eq!(c["last_updated_by"], "local", "{c}");
    let gone = run(d, &["show", "c000000012", "--json"]);
    let shown =
        String::from_utf8_lossy(&gone.stdout).to_string() + &String::from_utf8_lossy(&gone.stderr);
    assert!(
        !gone.status.success() || shown.contains("deleted"),
        "c000000012 was deleted in local.db: {shown}"
    );
    assert_eq!(
        json(d, &["status", "--json"])["stores"][1]["drift_pct"],
        0.0
    );
}

/// A loopback HTTP server that answers 200 to everything and keeps the
/// bodies it was sent (an alert webhook's receiver).
fn body_catcher() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).is_ok() {
                kept.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&body).into_owned());
            }
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, bodies)
}

#[test]
fn logs_mask_contact_values_unless_log_pii_while_dead_letters_keep_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (port, alerts) = body_catcher();
    std::fs::write(
        d.join("c.toml"),
        "[stores.local]\nkind = \"sqlite\"\n\n[alerts]\nwebhook_url = { env = \"PII_TEST_ALERT_URL\" }\n",
    )
    .unwrap();
    let run_c = |args: &[&str]| {
        let out = cmd(d, &[&["--config", "c.toml"], args].concat())
            .env(
                "PII_TEST_ALERT_URL",
                format!("http://127.0.0.1:{port}/alerts"),
            )
            .env("CONTACT_SYNC_LOG", "info")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "{args:?} failed:\nstdout: {stdout}\nstderr: {stderr}"
        );
        (stdout, stderr)
    };
    run_c(&["seed", "--contacts", "20"]);
    run_c(&["run", "--initial-sync", "--once"]);

    // Invalid emails typed into the local store and into canonical (the two
    // capture paths), and a conflict on a value (an alert is sent).
    let set_email = |file: &str, id: &str, email: &str| {
        let n = db(d, file)
            .execute(
                "UPDATE contacts SET emails = ?1, version = version + 1 WHERE contact_id = ?2",
                rusqlite::params![
                    format!(r#"[{{"address":"{email}","is_primary":true}}]"#),
                    id
                ],
            )
            .unwrap();
        assert_eq!(n, 1);
    };
    set_email("local.db", "c000000003", "ada.secret@example");
    set_email("canonical.db", "c000000004", "bob.hidden@example");
    let ts = "2026-06-01T10:00:00.000000Z";
    for (file, title) in [
        ("canonical.db", "Confidential Title One"),
        ("local.db", "Confidential Title Two"),
    ] {
        db(d, file)
            .execute(
                "UPDATE contacts SET job_title = ?1, version = 2, last_updated = ?2 WHERE contact_id = 'c000000007'",
                rusqlite::params![title, ts],
            )
            .unwrap();
    }
    let (_, log) = run_c(&["run", "--once"]);
    assert!(
        log.contains(r#""a***@e***" is not an email address"#)
            && log.contains(r#""b***@e***" is not an email address"#),
        "the refusals are logged, masked:\n{log}"
    );
    for raw in ["ada.secret", "bob.hidden", "Confidential Title"] {
        assert!(!log.contains(raw), "{raw} in the log:\n{log}");
    }
    // The dead letters keep the full reasons: a person needs them.
    let (text, _) = run_c(&["dead-letters", "list"]);
    assert!(
        text.contains(r#""ada.secret@example" is not an email address"#)
            && text.contains(r#""bob.hidden@example" is not an email address"#),
        "{text}"
    );
    // The alert went out, without contact data; nor does `check` show any.
    let sent = alerts.lock().unwrap().join("\n");
    assert!(sent.contains("conflict_detected"), "{sent}");
    let (check, check_log) = run_c(&["check"]);
    for raw in ["ada.secret", "bob.hidden", "Confidential Title", "a***@"] {
        assert!(!sent.contains(raw), "{raw} in an alert: {sent}");
        assert!(
            !check.contains(raw) && !check_log.contains(raw),
            "{raw} in check:\n{check}\n{check_log}"
        );
    }

    // With --log-pii the log shows the value.
    set_email("local.db", "c000000005", "cy.visible@example");
    let (_, log) = run_c(&["--log-pii", "run", "--once"]);
    assert!(
        log.contains(r#"\"cy.visible@example\" is not an email address"#)
            || log.contains(r#""cy.visible@example" is not an email address"#),
        "{log}"
    );
    let (text, _) = run_c(&["dead-letters", "list", "--json"]);
    let dl: Value = serde_json::from_str(&text).unwrap();
    let reasons: Vec<&str> = dl
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["reason"].as_str())
        .collect();
    for email in [
        "ada.secret@example",
        "bob.hidden@example",
        "cy.visible@example",
    ] {
        let want = format!("{email:?} is not an email address");
        assert!(
            reasons.contains(&want.as_str()),
            "{want} not in {reasons:?}"
        );
    }
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_lost_state_database_is_refused_unless_initial_sync_says_to_start_over() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["seed", "--contacts", "20"]);
    ok(d, &["run", "--initial-sync", "--once"]);
    let data = d.join("contact-sync-data");
    for f in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(data.join(f));
    }
    let out = run(d, &["run", "--once"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no state database")
            && err.contains("canonical (20 contacts)")
            && err.contains("local (20 contacts)")
            && err.contains("restore it from a backup")
            && err.contains("--initial-sync"),
        "{err}"
    );
    assert!(!data.join("state.db").exists(), "nothing created");
    // Read-only commands refuse too instead of creating an empty one.
    let out = run(d, &["dead-letters", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("no state database"),
        "{}",
        stderr_of(&out)
    );
    assert!(!data.join("state.db").exists(), "nothing created");
    // Starting over on purpose works.
    let text = ok(d, &["run", "--initial-sync", "--once"]);
    assert!(text.contains("local") && text.contains("OK"), "{text}");
}

#[test]
fn a_damaged_state_database_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["seed", "--contacts", "5"]);
    let state = d.join("contact-sync-data/state.db");
    let _ = std::fs::remove_file(d.join("contact-sync-data/state.db-wal"));
    let _ = std::fs::remove_file(d.join("contact-sync-data/state.db-shm"));
    std::fs::write(&state, b"this is not a SQLite database, it was overwritten").unwrap();
    for args in [&["status"][..], &["run", "--once"][..]] {
        let out = run(d, args);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("not a database")
                && err.contains("hint:")
                && err.contains("Restore it from a backup")
                && err.contains("run --initial-sync"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn status_outside_a_data_directory_creates_nothing_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = run(d, &["status"]);
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("nothing is set up here"), "{err}");
    assert!(
        !d.join("contact-sync-data").exists(),
        "status must not create a data directory"
    );
}

#[test]
fn a_closed_stdout_ends_a_listing_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["seed", "--contacts", "5", "--invalid", "2"]);
    ok(d, &["run", "--once"]);
    // `dead-letters list --json | true`: the reader is gone before the
    // command writes.
    let mut child = cmd(d, &["dead-letters", "list", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = stderr_of(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn batch_size_above_the_cap_is_refused_like_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["seed", "--contacts", "1"]);
    for args in [
        &["run", "--once", "--batch-size", "50000"][..],
        &["initial-sync", "--batch-size", "50000"][..],
    ] {
        let out = run(d, args);
        let err = stderr_of(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("--batch-size 50000 is out of range (1 to 10000)"),
            "{err}"
        );
    }
}

#[test]
fn idle_cycles_are_logged_at_info_one_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["seed", "--contacts", "3"]);
    ok(d, &["run", "--once"]);
    let out = run(d, &["run", "--once"]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("cycle: nothing to do ("))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("INFO") && lines[0].contains(" ms)"),
        "{err}"
    );
}

#[test]
fn check_does_not_call_secret_references_secrets() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port(); // nothing listens: the store is unreachable, which is fine here
    let p = d.join("contact-sync.toml");
    std::fs::write(
        &p,
        "[stores.db]\nkind = \"postgres\"\nurl = { env = \"PG_URL\" }\n\n[alerts]\nwebhook_url = { command = [\"echo\", \"http://127.0.0.1:9/hook\"] }\n",
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cmd(d, &["--config", "contact-sync.toml", "check"])
        .env(
            "PG_URL",
            format!("postgres://postgres:pw@127.0.0.1:{port}/x"),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("contact-sync.toml"), "{text}");
    assert!(!text.contains("contains secrets"), "{text}");
}

#[test]
fn prompt_renders_a_dead_lettered_contact_with_a_warning_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["seed", "--contacts", "5", "--invalid", "2"]);
    ok(d, &["run", "--once"]);
    // c000000006's notes are too long for the stores: canonical keeps it,
    // and the prompt shows it, saying there is a dead letter.
    let dl = json(d, &["dead-letters", "list", "--json"]);
    let id = dl
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["record"] == "c000000006")
        .map(|x| x["id"].as_i64().unwrap())
        .expect("a dead letter for c000000006");
    let out = run(d, &["prompt", "--contact", "c000000006"]);
    let err = stderr_of(&out);
    assert!(out.status.success(), "{err}");
    assert!(!out.stdout.is_empty());
    assert!(
        err.contains(&format!("contact c000000006 has dead letter #{id}"))
            && err.contains("field `notes`"),
        "{err}"
    );
    // A contact without dead letters: no warning.
    let out = run(d, &["prompt", "--contact", "c000000001"]);
    assert!(
        !stderr_of(&out).contains("dead letter"),
        "{}",
        stderr_of(&out)
    );
}

#[test]
fn a_second_interrupt_exits_at_once_with_a_non_zero_status() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A "Twenty" that accepts connections and never answers: the daemon's
    // backfill of it hangs in an HTTP call (30 s timeout).
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let seen = accepted.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().flatten() {
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
            held.push(s);
        }
    });
    std::fs::write(
        d.join("contact-sync.toml"),
        format!("[stores.local]\nkind = \"sqlite\"\n\n[stores.crm]\nkind = \"twenty\"\nbase_url = \"http://127.0.0.1:{port}\"\napi_key = {{ env = \"TW_KEY\" }}\n"),
    )
    .unwrap();
    let c = |args: &[&str]| {
        let mut c = cmd(d, &["--config", "contact-sync.toml"]);
        c.args(args).env("TW_KEY", "k");
        c
    };
    assert!(c(&["seed", "--contacts", "3"])
        .output()
        .unwrap()
        .status
        .success());
    let log = d.join("daemon.log");
    let mut daemon = c(&["run", "--no-http", "--interval", "600"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let log_text = || {
        let mut s = String::new();
        let _ = std::fs::File::open(&log).and_then(|mut f| f.read_to_string(&mut s));
        s
    };
    wait_for("the hung call to Twenty", Duration::from_secs(60), || {
        accepted.load(std::sync::atomic::Ordering::SeqCst)
    });
    let pid = daemon.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    wait_for(
        "the first interrupt to be seen",
        Duration::from_secs(10),
        || log_text().contains("shutdown requested"),
    );
    assert!(
        daemon.try_wait().unwrap().is_none(),
        "the hung call keeps the daemon busy: {}",
        log_text()
    );
    let second = Instant::now();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let status = daemon.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{}", log_text());
    assert!(
        second.elapsed() < Duration::from_secs(10),
        "exit took {:?}",
        second.elapsed()
    );
    assert!(
        log_text().contains("second interrupt: exiting now"),
        "{}",
        log_text()
    );
}
