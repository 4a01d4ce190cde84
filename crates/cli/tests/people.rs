//! People data through the binary, on the embedded default (canonical.db
//! and local.db): phone numbers as people type them, erasure, access.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_contact-sync"))
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(bin())
        .current_dir(dir)
        .arg("--config")
        .arg(dir.join("contact-sync.toml"))
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

fn db(dir: &Path, name: &str) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(dir.join("contact-sync-data").join(name)).expect("open db");
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

fn one<T: rusqlite::types::FromSql>(dir: &Path, name: &str, sql: &str) -> T {
    db(dir, name).query_row(sql, [], |r| r.get(0)).expect(sql)
}

/// Five contacts in canonical and local, in sync; national numbers are
/// read in the US.
fn synced(dir: &Path) {
    std::fs::write(
        dir.join("contact-sync.toml"),
        "[sync]\ndefault_region = \"US\"\n",
    )
    .unwrap();
    ok(dir, &["seed", "--contacts", "5"]);
    ok(dir, &["run", "--initial-sync", "--once"]);
}

fn set_phone(dir: &Path, id: &str, number: &str) {
    let phones = format!(r#"[{{"number":"{number}","label":"mobile","is_primary":true}}]"#);
    let n = db(dir, "local.db")
        .execute(
            "UPDATE contacts SET phones = ?1 WHERE contact_id = ?2",
            rusqlite::params![phones, id],
        )
        .unwrap();
    assert_eq!(n, 1);
}

fn phones_of(dir: &Path, store: &str, id: &str) -> (String, i64) {
    db(dir, store)
        .query_row(
            "SELECT phones, version FROM contacts WHERE contact_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

const E164: &str = r#"[{"number":"+14155550100","label":"mobile","is_primary":true}]"#;

#[test]
fn a_national_phone_typed_in_local_reaches_canonical_in_e164_and_nothing_echoes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    synced(d);
    let (_, v0) = phones_of(d, "canonical.db", "c000000001");
    set_phone(d, "c000000001", "(415) 555-0100");
    let out = ok(d, &["run", "--once"]);
    assert!(out.contains("dead letters    0"), "{out}");
    let (canon, v1) = phones_of(d, "canonical.db", "c000000001");
    assert_eq!(canon, E164);
    assert_eq!(v1, v0 + 1, "one edit, one version");
    // The store it came from holds the E.164 form too, at that version.
    assert_eq!(
        phones_of(d, "local.db", "c000000001"),
        (E164.to_string(), v1)
    );
    let journal: i64 = one(d, "state.db", "SELECT count(*) FROM journal");

    // The next cycles do nothing: the write-back is not captured as an edit.
    for _ in 0..2 {
        let out = ok(d, &["run", "--once"]);
        assert!(
            !out.contains("local "),
            "nothing to report for local: {out}"
        );
    }
    assert_eq!(
        one::<i64>(d, "state.db", "SELECT count(*) FROM journal"),
        journal
    );
    assert_eq!(phones_of(d, "canonical.db", "c000000001").1, v1);

    // Reformatting the same number is not an edit: no version, no journal
    // entry; local gets the E.164 form back.
    set_phone(d, "c000000001", "415.555.0100");
    ok(d, &["run", "--once"]);
    assert_eq!(
        phones_of(d, "canonical.db", "c000000001"),
        (E164.to_string(), v1)
    );
    assert_eq!(
        phones_of(d, "local.db", "c000000001"),
        (E164.to_string(), v1)
    );
    assert_eq!(
        one::<i64>(d, "state.db", "SELECT count(*) FROM journal"),
        journal
    );
    let drift = run(d, &["drift"]);
    assert!(
        drift.status.success(),
        "{}",
        String::from_utf8_lossy(&drift.stdout)
    );
}

#[test]
fn a_number_that_is_not_valid_is_a_dead_letter_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    synced(d);
    set_phone(d, "c000000002", "020 7123 4567");
    let out = run(d, &["run", "--once"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("dead letters    1"), "{stdout}");
    let (field, reason): (String, String) = db(d, "state.db")
        .query_row("SELECT field, reason FROM dead_letters", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(field, "phones");
    assert!(
        reason.contains("\"020 7123 4567\" is not a valid phone number in region US"),
        "{reason}"
    );
}
