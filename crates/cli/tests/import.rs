//! `contact-sync import`: address books into canonical through the binary,
//! on the embedded default (canonical.db and local.db).

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

fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = run(dir, args);
    assert!(
        out.status.success(),
        "contact-sync {args:?}: {}",
        text(&out)
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

/// (contact_id, primary email) of the first seeded contact that has one.
fn someone(dir: &Path) -> (String, String) {
    db(dir, "canonical.db")
        .query_row(
            "SELECT contact_id, _primary_email FROM contacts WHERE _primary_email IS NOT NULL \
             ORDER BY contact_id LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

#[test]
fn a_vcard_of_a_contact_known_by_email_updates_it_and_a_new_one_is_added_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    synced(d);
    let (id, email) = someone(d);
    let before: i64 = one(d, "canonical.db", "SELECT count(*) FROM contacts");
    // vCard 3.0 for the known contact (email in other case), 4.0 for a new one.
    let vcf = format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Imported Name\r\nTITLE:Chief Importer\r\n\
         EMAIL;TYPE=INTERNET,pref:{}\r\nEND:VCARD\r\n\
         BEGIN:VCARD\r\nVERSION:4.0\r\nFN:Grace Hopper\r\nN:Hopper;Grace;;;\r\n\
         EMAIL;PREF=1:grace@navy.example\r\nTEL;VALUE=uri;TYPE=cell:tel:(415) 555-0199\r\n\
         ORG:US Navy\r\nEND:VCARD\r\n",
        email.to_uppercase()
    );
    std::fs::write(d.join("book.vcf"), vcf).unwrap();
    let out = ok(d, &["import", "book.vcf"]);
    assert!(out.contains("updated    card 1 (Imported Name)"), "{out}");
    assert!(out.contains(&format!("-> {id} (")), "{out}");
    assert!(out.contains("job_title"), "{out}");
    assert!(out.contains("new        card 2 (Grace Hopper)"), "{out}");
    assert!(
        out.contains("1 new, 1 updated, 0 unchanged, 0 refused"),
        "{out}"
    );
    // Updated in place, not duplicated.
    let after: i64 = one(d, "canonical.db", "SELECT count(*) FROM contacts");
    assert_eq!(after, before + 1);
    let (title, by): (String, String) = db(d, "canonical.db")
        .query_row(
            "SELECT job_title, last_updated_by FROM contacts WHERE contact_id = ?1",
            [&id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((title.as_str(), by.as_str()), ("Chief Importer", "import"));
    let phones: String = one(
        d,
        "canonical.db",
        "SELECT phones FROM contacts WHERE _primary_email = 'grace@navy.example'",
    );
    assert!(phones.contains("+14155550199"), "{phones}");
    // Journaled with origin import, and the daemon copies it to local.
    let hist = ok(d, &["history", &id]);
    assert!(hist.contains("by import"), "{hist}");
    assert!(hist.contains("job_title"), "{hist}");
    ok(d, &["run", "--once"]);
    let local_title: String = one(
        d,
        "local.db",
        &format!("SELECT job_title FROM contacts WHERE contact_id = '{id}'"),
    );
    assert_eq!(local_title, "Chief Importer");
    let grace: i64 = one(
        d,
        "local.db",
        "SELECT count(*) FROM contacts WHERE _primary_email = 'grace@navy.example'",
    );
    assert_eq!(grace, 1);
    // The same file again changes nothing.
    let again = ok(d, &["import", "book.vcf"]);
    assert!(
        again.contains("0 new, 0 updated, 2 unchanged, 0 refused"),
        "{again}"
    );
    let n: i64 = one(d, "canonical.db", "SELECT count(*) FROM contacts");
    assert_eq!(n, after);
}

const GOOGLE: &str = "\u{feff}First Name,Middle Name,Last Name,Nickname,Organization Name,Organization Title,Notes,Labels,E-mail 1 - Label,E-mail 1 - Value,E-mail 2 - Label,E-mail 2 - Value,Phone 1 - Label,Phone 1 - Value\n\
Ada,,Lovelace,,Analytical Engines,Analyst,first programmer,* myContacts ::: Friends,* Work,ada@example.com,Home,ada@home.example,Mobile,+44 20 7946 0018\n\
Bad,,Address,,,,,* myContacts,Work,not-an-email,,,,\n\
Alan,,Turing,,Bletchley,,,* myContacts,,alan@example.com,,,Work,415 555 0142 ::: 415 555 0143\n";

#[test]
fn a_google_csv_is_imported_a_bad_row_is_refused_by_name_and_a_dry_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    synced(d);
    std::fs::write(d.join("google.csv"), GOOGLE).unwrap();
    let count = |d: &Path| -> i64 { one(d, "canonical.db", "SELECT count(*) FROM contacts") };
    let journal = |d: &Path| -> i64 { one(d, "state.db", "SELECT count(*) FROM journal") };
    let (n0, j0) = (count(d), journal(d));

    // Dry run: the summary, exit 1 (a row is refused), nothing written.
    let out = run(d, &["import", "google.csv", "--dry-run"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("new        row 2 (Ada Lovelace)"), "{s}");
    assert!(
        s.contains("REFUSED    row 3 (Bad Address)  field emails"),
        "{s}"
    );
    assert!(s.contains("not-an-email"), "{s}");
    assert!(s.contains("new        row 4 (Alan Turing)"), "{s}");
    assert!(
        s.contains("nothing written: 2 new, 0 updated, 0 unchanged, 1 refused"),
        "{s}"
    );
    assert_eq!((count(d), journal(d)), (n0, j0));

    // For real: the good rows are written, the refused one named, exit 1.
    let out = run(d, &["import", "google.csv"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("REFUSED    row 3 (Bad Address)  field emails"),
        "{s}"
    );
    assert!(
        s.contains("written to canonical (origin import): 2 new, 0 updated"),
        "{s}"
    );
    assert_eq!(count(d), n0 + 2);
    let (org, title, tags, emails, phones, by): (String, String, String, String, String, String) =
        db(d, "canonical.db")
            .query_row(
                "SELECT organization, job_title, tags, emails, phones, last_updated_by FROM contacts \
                 WHERE _primary_email = 'ada@example.com'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .unwrap();
    assert_eq!(
        (org.as_str(), title.as_str()),
        ("Analytical Engines", "Analyst")
    );
    assert_eq!(tags, r#"["Friends"]"#);
    assert!(emails.contains("ada@home.example"), "{emails}");
    assert!(phones.contains("+442079460018"), "{phones}");
    assert_eq!(by, "import");
    let turing: String = one(
        d,
        "canonical.db",
        "SELECT phones FROM contacts WHERE _primary_email = 'alan@example.com'",
    );
    assert!(
        turing.contains("+14155550142") && turing.contains("+14155550143"),
        "{turing}"
    );
}

#[test]
fn an_unreadable_file_or_an_unknown_format_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("contact-sync.toml"), "").unwrap();
    let out = run(d, &["import", "missing.vcf"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read missing.vcf"));
    std::fs::write(d.join("notes.vcf"), "just some notes\n").unwrap();
    let out = run(d, &["import", "notes.vcf"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("notes.vcf is not a vCard file"));
    // A byte order mark and bare LF line ends are read.
    std::fs::write(
        d.join("lf.vcf"),
        "\u{feff}BEGIN:VCARD\nVERSION:3.0\nFN:Lf Person\nEMAIL:lf@example.com\nEND:VCARD\n",
    )
    .unwrap();
    let out = run(d, &["import", "lf.vcf", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("new        card 1 (Lf Person)"));
    std::fs::write(d.join("book.txt"), "x").unwrap();
    let out = run(d, &["import", "book.txt"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--format"));
    std::fs::write(d.join("other.csv"), "a,b\n1,2\n").unwrap();
    let out = run(d, &["import", "other.csv"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Google Contacts"));
}

#[test]
fn duplicates_lists_pairs_by_shared_email_and_similar_name_in_one_organization() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("contact-sync.toml"), "").unwrap();
    let csv = "First Name,Last Name,Organization Name,E-mail 1 - Label,E-mail 1 - Value,E-mail 2 - Label,E-mail 2 - Value\n\
        Grace,Hopper,US Navy,* Work,grace@navy.example,,\n\
        Grace,Hoper,US Navy,* Work,ghopper@navy.example,,\n\
        Edsger,Dijkstra,US Navy,* Work,ewd@navy.example,,\n\
        Ada,Lovelace,,* Home,ada@home.example,Work,ada@work.example\n\
        Countess,Lovelace,,* Work,ada@work.example,,\n";
    std::fs::write(d.join("book.csv"), csv).unwrap();
    ok(d, &["import", "book.csv"]);
    let out = ok(d, &["duplicates", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["contacts_scanned"], 5, "{out}");
    assert_eq!(v["pairs_found"], 2, "{out}");
    let pairs = v["pairs"].as_array().unwrap();
    let names = |p: &serde_json::Value| {
        let mut n = [
            p["a_name"].as_str().unwrap().to_string(),
            p["b_name"].as_str().unwrap().to_string(),
        ];
        n.sort();
        n
    };
    assert_eq!(names(&pairs[0]), ["Ada Lovelace", "Countess Lovelace"]);
    assert_eq!(pairs[0]["score"], 1.0);
    assert!(pairs[0]["reasons"][0]
        .as_str()
        .unwrap()
        .contains("same email ada@work.example"));
    assert_eq!(names(&pairs[1]), ["Grace Hoper", "Grace Hopper"]);
    assert!(pairs[1]["reasons"][0]
        .as_str()
        .unwrap()
        .contains("similar name"));
    // Bounded output: --limit 1 shows one and says how many there are.
    let shown = ok(d, &["duplicates", "--limit", "1"]);
    assert!(
        shown.contains("2 likely duplicate pairs among 5 contacts (1 shown"),
        "{shown}"
    );
    let out = run(d, &["duplicates", "--min-score", "1.5"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn a_bad_alert_threshold_is_a_clear_error_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("contact-sync.toml"),
        "[alerts]\nconsecutive_failures = 0\n",
    )
    .unwrap();
    let out = run(d, &["run", "--once"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("alerts.consecutive_failures must be at least 1"),
        "{}",
        text(&out)
    );
    std::fs::write(
        d.join("contact-sync.toml"),
        "[alerts]\ndrift_percent = 2.5\nlatency_secs = 60\nconsecutive_failures = 3\nslot_wal_mib = 64\n",
    )
    .unwrap();
    ok(d, &["run", "--initial-sync", "--once"]);
}

#[test]
fn merge_folds_a_duplicate_into_the_contact_kept_and_deletes_it_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("contact-sync.toml"), "").unwrap();
    let csv = "First Name,Last Name,Organization Name,Organization Title,E-mail 1 - Label,E-mail 1 - Value,Labels\n\
        Grace,Hopper,US Navy,,* Work,grace@navy.example,\n\
        Grace,Hoper,US Navy,Rear Admiral,* Work,ghopper@navy.example,* myContacts ::: Navy\n";
    std::fs::write(d.join("book.csv"), csv).unwrap();
    ok(d, &["run", "--initial-sync", "--once"]);
    ok(d, &["import", "book.csv"]);
    ok(d, &["run", "--once"]);
    let id_of = |email: &str| -> String {
        db(d, "canonical.db")
            .query_row(
                "SELECT contact_id FROM contacts WHERE _primary_email = ?1",
                [email],
                |r| r.get(0),
            )
            .unwrap()
    };
    let (keep, other) = (id_of("grace@navy.example"), id_of("ghopper@navy.example"));
    // Dry run: says what, writes nothing.
    let journal = |d: &Path| -> i64 { one(d, "state.db", "SELECT count(*) FROM journal") };
    let j0 = journal(d);
    let out = ok(d, &["merge", &keep, &other, "--dry-run"]);
    assert!(out.contains("would merge"), "{out}");
    assert!(
        out.contains("emails") && out.contains("job_title") && out.contains("tags"),
        "{out}"
    );
    assert_eq!(journal(d), j0);
    // For real.
    let out = ok(d, &["merge", &keep, &other]);
    assert!(
        out.starts_with(&format!("merged: {other} into {keep}")),
        "{out}"
    );
    let (emails, title, tags, by): (String, String, String, String) = db(d, "canonical.db")
        .query_row(
            "SELECT emails, job_title, tags, last_updated_by FROM contacts WHERE contact_id = ?1",
            [&keep],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert!(emails.contains("grace@navy.example") && emails.contains("ghopper@navy.example"));
    assert_eq!(
        (title.as_str(), tags.as_str(), by.as_str()),
        ("Rear Admiral", r#"["Navy"]"#, "merge")
    );
    let q = format!("SELECT deleted_at IS NOT NULL FROM contacts WHERE contact_id = '{other}'");
    assert!(one::<bool>(d, "canonical.db", &q));
    // The daemon carries both to local.
    ok(d, &["run", "--once"]);
    assert!(one::<bool>(d, "local.db", &q));
    let local_emails: String = one(
        d,
        "local.db",
        &format!("SELECT emails FROM contacts WHERE contact_id = '{keep}'"),
    );
    assert!(
        local_emails.contains("ghopper@navy.example"),
        "{local_emails}"
    );
    // No duplicates left; merging again, or an unknown id, exits 2.
    let dup = ok(d, &["duplicates"]);
    assert!(
        dup.contains("0 likely duplicate pairs among 1 contacts"),
        "{dup}"
    );
    let out = run(d, &["merge", &keep, &other]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("no live contact {other}")));
}
