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
        assert!(quiet(&out, "local"), "nothing to report for local: {out}");
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

fn row(dir: &Path, store: &str, id: &str) -> (Option<String>, Option<String>, Option<String>) {
    db(dir, store)
        .query_row(
            "SELECT canonical_name, emails, deleted_at FROM contacts WHERE contact_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
}

/// Erased everywhere: a tombstone with every field cleared, no live row.
fn assert_erased(dir: &Path, id: &str) {
    for store in ["canonical.db", "local.db"] {
        let (name, emails, deleted) = row(dir, store, id);
        assert!(name.unwrap_or_default().is_empty(), "{store}: name left");
        assert!(
            emails.as_deref().is_none_or(|e| e == "[]"),
            "{store}: emails left: {emails:?}"
        );
        assert!(deleted.is_some(), "{store}: not a tombstone");
    }
}

fn state_mentions(dir: &Path, needle: &str) -> i64 {
    one(
        dir,
        "state.db",
        &format!(
            "SELECT (SELECT count(*) FROM journal WHERE after LIKE '%{needle}%' OR changes LIKE '%{needle}%')
                  + (SELECT count(*) FROM conflicts WHERE canonical LIKE '%{needle}%' OR incoming LIKE '%{needle}%' OR base LIKE '%{needle}%')
                  + (SELECT count(*) FROM dead_letters WHERE payload LIKE '%{needle}%' OR reason LIKE '%{needle}%')"
        ),
    )
}

#[test]
fn forget_erases_everywhere_and_a_stale_edit_or_a_reinsert_does_not_bring_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    synced(d);
    let id = "c000000001";
    // History with personal data: a phone edit, and a bad edit dead-lettered.
    set_phone(d, id, "(415) 555-0100");
    ok(d, &["run", "--once"]);
    set_phone(d, id, "020 7123 4567");
    ok(d, &["run", "--once"]);
    assert!(state_mentions(d, "555") > 0 && state_mentions(d, "020 7123") > 0);
    let email: String = one(
        d,
        "canonical.db",
        "SELECT json_extract(emails, '$[0].address') FROM contacts WHERE contact_id = 'c000000001'",
    );

    // Edited in local before the erasure reaches it (still in its backlog).
    db(d, "local.db")
        .execute(
            "UPDATE contacts SET notes = 'stale edit', phones = '[]' WHERE contact_id = ?1",
            [id],
        )
        .unwrap();
    let out = ok(d, &["forget", id]);
    assert!(out.contains("canonical    confirmed"), "{out}");
    assert!(out.contains("local        confirmed"), "{out}");
    assert_erased(d, id);
    assert_eq!(state_mentions(d, "555"), 0, "journal scrubbed");
    assert_eq!(state_mentions(d, "020 7123"), 0, "dead letters scrubbed");
    assert_eq!(state_mentions(d, &email), 0, "no email left in the state");
    assert_eq!(state_mentions(d, "stale edit"), 0);
    // The erasure record: id, when, which stores confirmed; nothing else.
    let confirmed: String = one(d, "state.db", "SELECT confirmed FROM erasures");
    assert_eq!(confirmed, r#"["canonical","local"]"#);

    // A re-insert under its id in local: not merged, erased again.
    db(d, "local.db")
        .execute(
            "UPDATE contacts SET canonical_name = 'Back Again', deleted_at = NULL, notes = 'x' WHERE contact_id = ?1",
            [id],
        )
        .unwrap();
    ok(d, &["run", "--once"]);
    assert_erased(d, id);
    db(d, "local.db")
        .execute("DELETE FROM contacts WHERE contact_id = ?1", [id])
        .unwrap();
    db(d, "local.db")
        .execute(
            "INSERT INTO contacts (contact_id, canonical_name, notes) VALUES (?1, 'Back Again', 'y')",
            [id],
        )
        .unwrap();
    ok(d, &["run", "--once"]);
    assert_erased(d, id);
    assert_eq!(state_mentions(d, "Back Again"), 0);
    // An edit made directly in canonical: erased again, not propagated.
    db(d, "canonical.db")
        .execute(
            "UPDATE contacts SET canonical_name = 'Canon Again', deleted_at = NULL WHERE contact_id = ?1",
            [id],
        )
        .unwrap();
    ok(d, &["run", "--once"]);
    assert_erased(d, id);
    assert_eq!(state_mentions(d, "Canon Again"), 0);
    // And it stays quiet afterwards.
    let out = ok(d, &["run", "--once"]);
    assert!(quiet(&out, "local"), "{out}");

    // History and export show the erasure, no personal data.
    let h = ok(d, &["history", id]);
    assert!(
        h.contains("deleted by erase") && h.contains("confirmed by: canonical, local"),
        "{h}"
    );
    let doc: serde_json::Value = serde_json::from_str(&ok(d, &["export", id])).unwrap();
    assert_eq!(
        doc["erasure"]["confirmed"],
        serde_json::json!(["canonical", "local"])
    );
    assert!(!doc.to_string().contains(&email));
}

#[test]
fn forget_of_an_unknown_contact_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    synced(d);
    let out = run(d, &["forget", "nobody"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no contact nobody"), "{err}");
}

#[test]
fn export_holds_every_store_journal_and_dead_letters_and_history_reads_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    synced(d);
    let id = "c000000001";
    set_phone(d, id, "(415) 555-0100");
    ok(d, &["run", "--once"]);
    set_phone(d, id, "020 7123 4567");
    ok(d, &["run", "--once"]);
    let doc: serde_json::Value = serde_json::from_str(&ok(d, &["export", id])).unwrap();
    assert_eq!(doc["canonical"]["phones"][0]["number"], "+14155550100");
    assert_eq!(
        doc["stores"]["local"]["phones"][0]["number"],
        "020 7123 4567"
    );
    assert_eq!(doc["journal"].as_array().unwrap().len(), 1);
    assert_eq!(doc["journal"][0]["origin"], "local");
    assert_eq!(doc["dead_letters"].as_array().unwrap().len(), 1);
    assert_eq!(doc["dead_letters"][0]["field"], "phones");
    assert_eq!(doc["sync_records"].as_array().unwrap().len(), 2);
    assert!(doc["erasure"].is_null());

    let h = ok(d, &["history", id]);
    assert!(h.contains("updated by local"), "{h}");
    assert!(h.contains("phones: "), "{h}");
    assert!(h.contains("+14155550100"), "{h}");
    let j: serde_json::Value = serde_json::from_str(&ok(d, &["history", id, "--json"])).unwrap();
    assert_eq!(j["entries"][0]["changes"][0]["field"], "phones");
    let out = run(d, &["export", "nobody"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn vcard_export_of_all_contacts_and_of_one_category() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    synced(d);
    set_phone(d, "c000000001", "(415) 555-0100");
    ok(d, &["run", "--once"]);
    let all = ok(d, &["vcard"]);
    let live_not_x: i64 = one(
        d,
        "canonical.db",
        "SELECT count(*) FROM contacts WHERE deleted_at IS NULL AND coalesce(category_code, '') != 'X'",
    );
    assert_eq!(
        all.matches("BEGIN:VCARD\r\nVERSION:4.0\r\n").count() as i64,
        live_not_x
    );
    assert!(all.contains("UID:urn:contact-sync:c000000001\r\n"));
    assert!(all.contains("tel:+14155550100"), "{all}");
    let cat: String = one(
        d,
        "canonical.db",
        "SELECT category_code FROM contacts WHERE contact_id = 'c000000001'",
    );
    let some = ok(d, &["vcard", "--category", &cat]);
    let n: i64 = one(
        d,
        "canonical.db",
        &format!(
            "SELECT count(*) FROM contacts WHERE deleted_at IS NULL AND category_code = '{cat}'"
        ),
    );
    assert_eq!(some.matches("END:VCARD\r\n").count() as i64, n);
}

/// Whether a cycle's output shows nothing captured, merged or written for
/// `store` (every store has its line, idle or not).
fn quiet(out: &str, store: &str) -> bool {
    out.lines()
        .filter(|l| l.trim_start().starts_with(&format!("{store} ")))
        .all(|l| {
            l.contains("captured      0")
                && l.contains("merged      0")
                && l.contains("written      0")
        })
}
