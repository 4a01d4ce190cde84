//! The mass-change guard through the binary, on the embedded default: a
//! `DELETE FROM contacts` or a bulk blanking in local.db pauses that store
//! before anything is merged (canonical untouched, `status` and `paused`
//! say why), and a person settles it with `approve` or `reject`, which work
//! while nothing holds the daemon's lock and are carried out at the next
//! cycle.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

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

/// A cycle with a paused store: it says so and exits 1 (a store needs a
/// person), the other stores having run.
fn paused_cycle(dir: &Path) -> String {
    let out = run(dir, &["run", "--once"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("ERROR: paused:"), "{stdout}");
    stdout
}

const LIVE: &str = "SELECT count(*) FROM contacts WHERE deleted_at IS NULL";

/// 300 contacts in canonical and local, in sync.
fn synced(dir: &Path) {
    ok(dir, &["seed", "--contacts", "300"]);
    ok(dir, &["run", "--initial-sync", "--once"]);
    assert_eq!(count(dir, "local.db", LIVE), 300);
}

#[test]
fn delete_from_contacts_in_local_pauses_local_and_reject_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    synced(d);

    let n = db(d, "local.db")
        .execute("DELETE FROM contacts", [])
        .unwrap();
    assert_eq!(n, 300);
    let out = paused_cycle(d);
    assert!(out.contains("paused: 300 deletes"), "{out}");
    // Nothing of it was merged: canonical still holds every contact.
    assert_eq!(count(d, "canonical.db", LIVE), 300);
    let paused = json(d, &["paused", "--json"]);
    let p = &paused.as_array().unwrap()[0];
    assert_eq!(p["store"], "local");
    assert_eq!(p["kind"], "mass_change");
    assert_eq!(p["details"]["deletes"], 300, "{p}");
    let reason = p["reason"].as_str().unwrap();
    assert!(
        reason.contains("300 deletes") && reason.contains("contact-sync approve local"),
        "{reason}"
    );
    let status = ok(d, &["status"]);
    assert!(status.contains("PAUSED local (mass_change)"), "{status}");
    let check = run(d, &["check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "check says UNSAFE: {text}");
    assert!(
        text.contains("local paused") && text.contains("contact-sync approve local"),
        "{text}"
    );
    // Another cycle changes nothing while nobody decided.
    paused_cycle(d);
    assert_eq!(count(d, "canonical.db", LIVE), 300);
    assert_eq!(count(d, "local.db", "SELECT count(*) FROM contacts"), 0);

    // The wrong decision for this pause is refused with the right one named.
    let out = run(d, &["resume", "local"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("approve or reject"));

    let out = ok(d, &["reject", "local"]);
    assert!(out.contains("written back to local"), "{out}");
    ok(d, &["run", "--once"]);
    assert_eq!(
        count(d, "local.db", LIVE),
        300,
        "canonical's records are back"
    );
    assert_eq!(count(d, "canonical.db", LIVE), 300);
    assert!(json(d, &["paused", "--json"])
        .as_array()
        .unwrap()
        .is_empty());
    // And it stays in sync afterwards.
    let drift = run(d, &["drift"]);
    assert!(
        drift.status.success(),
        "{}",
        String::from_utf8_lossy(&drift.stdout)
    );
}

#[test]
fn a_bulk_blanking_pauses_local_and_approve_applies_it_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    synced(d);
    let with_org =
        "SELECT count(*) FROM contacts WHERE organization IS NOT NULL AND organization <> ''";
    let before = count(d, "canonical.db", with_org);
    assert!(before > 100, "seeded contacts have organizations: {before}");

    db(d, "local.db")
        .execute("UPDATE contacts SET organization = NULL", [])
        .unwrap();
    paused_cycle(d);
    assert_eq!(count(d, "canonical.db", with_org), before, "held back");
    let paused = json(d, &["paused", "--json"]);
    let p = &paused.as_array().unwrap()[0];
    assert_eq!(p["details"]["blanked"]["organization"], before, "{p}");

    ok(d, &["approve", "local"]);
    ok(d, &["run", "--once"]);
    assert_eq!(count(d, "canonical.db", with_org), 0, "approved: applied");
    assert!(json(d, &["paused", "--json"])
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn a_few_deletes_pass_the_guard() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    synced(d);
    // 20 of 300: under the guard's floor of 25 and its 10 % (30).
    db(d, "local.db")
        .execute(
            "DELETE FROM contacts WHERE id IN (SELECT id FROM contacts ORDER BY id LIMIT 20)",
            [],
        )
        .unwrap();
    ok(d, &["run", "--once"]);
    assert_eq!(count(d, "canonical.db", LIVE), 280);
    assert!(json(d, &["paused", "--json"])
        .as_array()
        .unwrap()
        .is_empty());
    let out = run(d, &["approve", "local"]);
    assert_eq!(out.status.code(), Some(1), "not paused: nothing to approve");
}
