//! The no-silent-loss scenarios that were observed against a real
//! PostgreSQL (issue "No silent loss"), through the binary, on the private
//! cluster the harness starts: each lost data before; each must now lose
//! nothing, or pause the store with a clear reason until a person decides.
//!
//! 1. Right after an initial sync, edits in canonical and local.db while the
//!    slot still holds the backfill's own INSERTs: no edit is reverted.
//! 4. A renamed column never reads as "cleared": the store pauses, and the
//!    edits made meanwhile are merged once it is repaired.
//! 5. `DELETE FROM contacts` pauses the store (reject restores it);
//!    TRUNCATE pauses it (schema).
//! 6. A row inserted with a blank `contact_id` gets its minted id written
//!    in place: one row, not two.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use contact_sync_postgres::harness;
use tokio_postgres::Client;

fn run(dir: &Path, url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_contact-sync"))
        .current_dir(dir)
        .args(["--config", "contact-sync.toml"])
        .args(args)
        .env("TEST_PG_URL", url)
        .output()
        .expect("run contact-sync")
}

fn ok(dir: &Path, url: &str, args: &[&str]) -> String {
    let out = run(dir, url, args);
    assert!(
        out.status.success(),
        "contact-sync {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sqlite(dir: &Path, name: &str) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(dir.join("contact-sync-data").join(name)).expect("open db");
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

fn sqlite_value(dir: &Path, db: &str, id: &str, col: &str) -> Option<String> {
    sqlite(dir, db)
        .query_row(
            &format!("SELECT {col} FROM contacts WHERE contact_id = ?1"),
            [id],
            |r| r.get(0),
        )
        .expect("row")
}

async fn pg(url: &str) -> Client {
    let (c, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    c
}

async fn pg_count(c: &Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.expect("count").get(0)
}

/// A data directory with local.db and a Postgres store `supabase`, seeded
/// and initially synced.
async fn setup(contacts: &str, batch: &str) -> (tempfile::TempDir, String) {
    let server = harness::shared();
    let url = server.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let slot = format!("cs_nsl_{}_{}", std::process::id(), rand_suffix());
    std::fs::write(
        dir.path().join("contact-sync.toml"),
        format!(
            "[stores.local]\nkind = \"sqlite\"\n\n[stores.supabase]\nkind = \"postgres\"\nurl = {{ env = \"TEST_PG_URL\" }}\nslot_name = \"{slot}\"\n"
        ),
    )
    .unwrap();
    let (d, u) = (dir.path().to_path_buf(), url.clone());
    let contacts = contacts.to_string();
    let batch = batch.to_string();
    tokio::task::spawn_blocking(move || {
        ok(&d, &u, &["seed", "--contacts", &contacts]);
        ok(
            &d,
            &u,
            &["run", "--initial-sync", "--once", "--batch-size", &batch],
        );
    })
    .await
    .unwrap();
    (dir, url)
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// Runs `run --once` in a blocking task; returns its output.
async fn cycle(dir: &Path, url: &str, batch: &str) -> Output {
    let (d, u, b) = (dir.to_path_buf(), url.to_string(), batch.to_string());
    tokio::task::spawn_blocking(move || run(&d, &u, &["run", "--once", "--batch-size", &b]))
        .await
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_right_after_an_initial_sync_are_not_reverted_by_the_backfills_own_images() {
    let (dir, url) = setup("300", "10").await;
    let d = dir.path();
    let c = pg(&url).await;
    // The slot still holds the backfill's 300 INSERTs: what the engine wrote.
    // 20 edits in canonical, 20 in local.db, before the next cycle reads it.
    for i in 0..20 {
        sqlite(d, "canonical.db")
            .execute(
                "UPDATE contacts SET job_title = ?1 WHERE contact_id = ?2",
                [format!("canon-{i}"), format!("c{:09}", i)],
            )
            .unwrap();
        sqlite(d, "local.db")
            .execute(
                "UPDATE contacts SET nickname = ?1 WHERE contact_id = ?2",
                [format!("local-{i}"), format!("c{:09}", 100 + i)],
            )
            .unwrap();
    }
    for _ in 0..3 {
        let out = cycle(d, &url, "10").await;
        assert!(out.status.success(), "{}", stdout(&out));
    }
    for i in 0..20 {
        let a = format!("c{:09}", i);
        let b = format!("c{:09}", 100 + i);
        let want_a = format!("canon-{i}");
        let want_b = format!("local-{i}");
        for db in ["canonical.db", "local.db"] {
            assert_eq!(
                sqlite_value(d, db, &a, "job_title").as_deref(),
                Some(want_a.as_str()),
                "{db} {a}"
            );
            assert_eq!(
                sqlite_value(d, db, &b, "nickname").as_deref(),
                Some(want_b.as_str()),
                "{db} {b}"
            );
        }
        let row = c
            .query_one(
                "SELECT (SELECT job_title FROM contacts WHERE contact_id = $1), \
                        (SELECT nickname FROM contacts WHERE contact_id = $2)",
                &[&a, &b],
            )
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, Option<String>>(0).as_deref(),
            Some(want_a.as_str()),
            "postgres {a}"
        );
        assert_eq!(
            row.get::<_, Option<String>>(1).as_deref(),
            Some(want_b.as_str()),
            "postgres {b}"
        );
    }
    // Nothing was settled as a conflict: the images were the engine's own.
    let out = ok(d, &url, &["conflicts", "list", "--all", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(0), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_from_contacts_in_postgres_pauses_it_and_reject_restores_it() {
    let (dir, url) = setup("200", "100").await;
    let d = dir.path();
    let c = pg(&url).await;
    assert_eq!(c.execute("DELETE FROM contacts", &[]).await.unwrap(), 200);
    let out = cycle(d, &url, "100").await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("paused: 200 deletes"),
        "{}",
        stdout(&out)
    );
    let live = "SELECT count(*) FROM contacts WHERE deleted_at IS NULL";
    let canon: i64 = sqlite(d, "canonical.db")
        .query_row(live, [], |r| r.get(0))
        .unwrap();
    assert_eq!(canon, 200, "nothing of the mass delete reached canonical");
    let local: i64 = sqlite(d, "local.db")
        .query_row(live, [], |r| r.get(0))
        .unwrap();
    assert_eq!(local, 200, "nor local.db");

    ok(d, &url, &["reject", "supabase"]);
    let out = cycle(d, &url, "100").await;
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(
        pg_count(&c, "SELECT count(*) FROM contacts WHERE deleted_at IS NULL").await,
        200
    );
    // The write-back was the engine's own: the next cycle merges nothing.
    let out = cycle(d, &url, "100").await;
    assert!(out.status.success(), "{}", stdout(&out));
    assert_eq!(canon, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_column_pauses_the_store_and_nothing_reads_as_cleared() {
    let (dir, url) = setup("50", "100").await;
    let d = dir.path();
    let c = pg(&url).await;
    let id = "c000000007";
    let title_before = sqlite_value(d, "canonical.db", id, "job_title");
    assert!(title_before.is_some());
    c.batch_execute("ALTER TABLE contacts RENAME COLUMN job_title TO title")
        .await
        .unwrap();
    c.execute(
        "UPDATE contacts SET nickname = 'Renamed-era edit' WHERE contact_id = $1",
        &[&id],
    )
    .await
    .unwrap();
    let out = cycle(d, &url, "100").await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains("paused") && text.contains("job_title"),
        "{text}"
    );
    // Not "cleared": canonical and local keep the job title.
    assert_eq!(
        sqlite_value(d, "canonical.db", id, "job_title"),
        title_before
    );
    assert_eq!(sqlite_value(d, "local.db", id, "job_title"), title_before);
    let paused = ok(d, &url, &["paused", "--json"]);
    assert!(paused.contains("\"schema\""), "{paused}");

    // The person renames it back, recreates change capture and resumes:
    // the edit made meanwhile is found by the conditional write-back (the
    // row is not what the engine last saw) and merged, not overwritten.
    c.batch_execute("ALTER TABLE contacts RENAME COLUMN title TO job_title")
        .await
        .unwrap();
    ok(d, &url, &["cdc", "reset", "supabase"]);
    ok(d, &url, &["resume", "supabase"]);
    for _ in 0..2 {
        let (dd, u) = (d.to_path_buf(), url.clone());
        tokio::task::spawn_blocking(move || run(&dd, &u, &["run", "--initial-sync", "--once"]))
            .await
            .unwrap();
    }
    assert_eq!(
        sqlite_value(d, "canonical.db", id, "nickname").as_deref(),
        Some("Renamed-era edit")
    );
    assert_eq!(
        sqlite_value(d, "canonical.db", id, "job_title"),
        title_before
    );
    let paused = ok(d, &url, &["paused", "--json"]);
    assert_eq!(paused.trim(), "[]", "{paused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_pauses_the_store() {
    let (dir, url) = setup("40", "100").await;
    let d = dir.path();
    let c = pg(&url).await;
    c.batch_execute("TRUNCATE contacts").await.unwrap();
    let out = cycle(d, &url, "100").await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).to_lowercase().contains("truncate"),
        "{}",
        stdout(&out)
    );
    let live = "SELECT count(*) FROM contacts WHERE deleted_at IS NULL";
    let canon: i64 = sqlite(d, "canonical.db")
        .query_row(live, [], |r| r.get(0))
        .unwrap();
    assert_eq!(canon, 40, "a truncate is never read as 40 deletes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_inserted_with_a_blank_contact_id_gets_its_id_in_place() {
    let (dir, url) = setup("10", "100").await;
    let d = dir.path();
    let c = pg(&url).await;
    c.execute(
        "INSERT INTO contacts (contact_id, canonical_name, emails, version) \
         VALUES ('', 'Blank Id', '[{\"address\":\"blank.id@example.com\",\"is_primary\":true}]'::jsonb, 1)",
        &[],
    )
    .await
    .unwrap();
    for _ in 0..2 {
        let out = cycle(d, &url, "100").await;
        assert!(out.status.success(), "{}", stdout(&out));
    }
    let rows = c
        .query(
            "SELECT contact_id FROM contacts WHERE canonical_name = 'Blank Id'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one row, not a second one");
    let id: Option<String> = rows[0].get(0);
    let id = id.expect("an id");
    assert!(!id.trim().is_empty(), "the minted id is written in place");
    assert_eq!(
        sqlite_value(d, "canonical.db", &id, "canonical_name").as_deref(),
        Some("Blank Id")
    );
}

/// People data (issue 19): an erased contact stays erased when the slot
/// replays a backlog of its rows made before the erasure (edits by another
/// application that the engine had not captured yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_contact_stays_erased_after_a_postgres_backlog_replay() {
    let (dir, url) = setup("50", "100").await;
    let d = dir.path();
    let c = pg(&url).await;
    let id = "c000000003";
    // A backlog in the slot: three edits with personal data, not captured.
    for i in 0..3 {
        c.execute(
            "UPDATE contacts SET nickname = $1, notes = $2 WHERE contact_id = $3",
            &[&format!("Secret-{i}"), &format!("private note {i}"), &id],
        )
        .await
        .unwrap();
    }
    let (d2, u2) = (d.to_path_buf(), url.clone());
    let out = tokio::task::spawn_blocking(move || ok(&d2, &u2, &["forget", id]))
        .await
        .unwrap();
    assert!(
        out.contains("supabase") && out.contains("confirmed"),
        "{out}"
    );
    // The slot now replays the three edits (and the erasure's own write).
    for _ in 0..3 {
        let out = cycle(d, &url, "100").await;
        assert!(out.status.success(), "{}", stdout(&out));
    }
    for db in ["canonical.db", "local.db"] {
        let (name, nickname, deleted): (Option<String>, Option<String>, Option<String>) = sqlite(
            d, db,
        )
        .query_row(
            "SELECT canonical_name, nickname, deleted_at FROM contacts WHERE contact_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
        assert!(name.unwrap_or_default().is_empty(), "{db}: name back");
        assert!(nickname.is_none(), "{db}: replayed nickname {nickname:?}");
        assert!(deleted.is_some(), "{db}: live again");
    }
    let live = pg_count(
        &c,
        &format!(
            "SELECT count(*) FROM contacts WHERE contact_id = '{id}' \
             AND (deleted_at IS NULL OR coalesce(nickname, '') <> '' OR coalesce(notes, '') <> '')"
        ),
    )
    .await;
    assert_eq!(live, 0, "the erased row is back in Postgres");
    let mentions: i64 = sqlite(d, "state.db")
        .query_row(
            "SELECT (SELECT count(*) FROM journal WHERE after LIKE '%Secret-%' OR changes LIKE '%Secret-%')
                  + (SELECT count(*) FROM conflicts WHERE incoming LIKE '%Secret-%' OR canonical LIKE '%Secret-%')
                  + (SELECT count(*) FROM dead_letters WHERE payload LIKE '%Secret-%')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(mentions, 0, "the replayed personal data reached the state");
}

/// The version of `id` in each SQLite database and in Postgres.
async fn versions(d: &Path, c: &Client, id: &str) -> Vec<i64> {
    let mut v: Vec<i64> = ["canonical.db", "local.db"]
        .iter()
        .map(|db| {
            sqlite(d, db)
                .query_row(
                    "SELECT version FROM contacts WHERE contact_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .unwrap()
        })
        .collect();
    v.push(
        c.query_one("SELECT version FROM contacts WHERE contact_id = $1", &[&id])
            .await
            .unwrap()
            .get(0),
    );
    v
}

/// An app's edit in Postgres (the version left alone) reaches every store
/// at one version, and the row it edited is not written again by the
/// engine (no write of the version alone: the table's trigger raised it).
/// An app that raises the version on a save of nothing new does not make
/// Postgres refuse canonical's next edit as older.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_in_postgres_is_not_written_back_and_a_raised_version_blocks_nothing() {
    let (dir, url) = setup("20", "100").await;
    let d = dir.path();
    let c = pg(&url).await;
    let id = "c000000004";
    assert_eq!(versions(d, &c, id).await, vec![1, 1, 1]);
    let xmin: String = c
        .query_one(
            "UPDATE contacts SET job_title = 'Edited in Postgres' WHERE contact_id = $1 \
             RETURNING xmin::text",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    for _ in 0..2 {
        let out = cycle(d, &url, "100").await;
        assert!(out.status.success(), "{}", stdout(&out));
    }
    for db in ["canonical.db", "local.db"] {
        assert_eq!(
            sqlite_value(d, db, id, "job_title").as_deref(),
            Some("Edited in Postgres"),
            "{db}"
        );
    }
    assert_eq!(versions(d, &c, id).await, vec![2, 2, 2]);
    let now: String = c
        .query_one(
            "SELECT xmin::text FROM contacts WHERE contact_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(now, xmin, "the engine wrote the edited row again");

    // A save of nothing new at a raised version, then an edit in canonical.
    c.execute(
        "UPDATE contacts SET version = 7 WHERE contact_id = $1",
        &[&id],
    )
    .await
    .unwrap();
    let out = cycle(d, &url, "100").await;
    assert!(out.status.success(), "{}", stdout(&out));
    sqlite(d, "canonical.db")
        .execute(
            "UPDATE contacts SET notes = 'Edited in canonical', version = version + 1 \
             WHERE contact_id = ?1",
            [id],
        )
        .unwrap();
    for _ in 0..3 {
        let out = cycle(d, &url, "100").await;
        assert!(out.status.success(), "{}", stdout(&out));
    }
    let notes: Option<String> = c
        .query_one("SELECT notes FROM contacts WHERE contact_id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(notes.as_deref(), Some("Edited in canonical"));
    let v = versions(d, &c, id).await;
    assert!(v.iter().all(|x| *x == v[0]) && v[0] > 7, "{v:?}");
}
