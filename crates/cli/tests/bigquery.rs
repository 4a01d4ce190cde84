//! End to end through the binary with BigQuery as the canonical store (the
//! local BigQuery emulator; its harness is shared with the store's tests).

#[path = "../../store-bigquery/tests/common/mod.rs"]
mod bq;

use std::path::Path;
use std::process::Command;

use serde_json::Value;

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_contact-sync"))
        .current_dir(dir)
        .args(["--config", "contact-sync.toml"])
        .args(args)
        .output()
        .expect("run contact-sync");
    assert!(
        out.status.success(),
        "contact-sync {args:?} failed ({:?}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn conn_local(d: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(d.join("contact-sync-data/local.db")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bigquery_canonical_seed_sync_and_local_edit_through_the_binary() {
    let Some(ds) = bq::TestDataset::new("cli").await else {
        return;
    };
    let url = bq::emulator_url().expect("emulator");
    let pg_url = contact_sync_postgres::harness::shared()
        .create_database()
        .await;
    let slot = format!("cs_bq_{}", std::process::id());
    // The only test in this binary: no other thread reads the environment.
    std::env::set_var("CS_BQ_TEST_PG_URL", &pg_url);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    std::fs::write(
        d.join("contact-sync.toml"),
        format!(
            "[canonical]\nkind = \"bigquery\"\nbase_url = \"{url}\"\nproject = \"test-project\"\ndataset = \"{}\"\nauth = \"none\"\n\n[stores.local]\nkind = \"sqlite\"\n\n[stores.supabase]\nkind = \"postgres\"\nurl = {{ env = \"CS_BQ_TEST_PG_URL\" }}\nslot_name = \"{slot}\"\n",
            ds.dataset
        ),
    )
    .unwrap();
    let run = |args: &'static [&'static str]| {
        let d = d.clone();
        tokio::task::spawn_blocking(move || ok(&d, args))
    };
    run(&["migrate"]).await.unwrap();
    run(&["seed", "--contacts", "40", "--invalid", "2"])
        .await
        .unwrap();
    let out = run(&["run", "--initial-sync", "--once", "--batch-size", "50"])
        .await
        .unwrap();
    assert!(
        out.contains("local") && out.contains("OK") && !out.contains("DRIFT"),
        "{out}"
    );

    let conn = rusqlite::Connection::open(d.join("contact-sync-data/local.db")).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM contacts", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 40);
    conn.execute(
        "UPDATE contacts SET job_title = 'Edited locally' WHERE contact_id = 'c000000005'",
        [],
    )
    .unwrap();
    run(&["run", "--once"]).await.unwrap();
    let c: Value =
        serde_json::from_str(&run(&["show", "c000000005", "--json"]).await.unwrap()).unwrap();
    assert_eq!(c["job_title"], "Edited locally", "{c}");
    assert_eq!(c["version"], 2, "{c}");
    assert_eq!(c["last_updated_by"], "local", "{c}");
    let dl: Value =
        serde_json::from_str(&run(&["dead-letters", "list", "--json"]).await.unwrap()).unwrap();
    assert_eq!(dl.as_array().unwrap().len(), 2, "{dl}");

    // Postgres got everything, and the local edit; an edit there reaches BigQuery.
    let (pg, conn) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let n: i64 = pg
        .query_one("SELECT count(*) FROM contacts", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 40);
    let t: String = pg
        .query_one(
            "SELECT job_title FROM contacts WHERE contact_id = 'c000000005'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(t, "Edited locally");
    pg.execute(
        "UPDATE contacts SET nickname = 'From PG' WHERE contact_id = 'c000000006'",
        &[],
    )
    .await
    .unwrap();
    run(&["run", "--once"]).await.unwrap();
    let c: Value =
        serde_json::from_str(&run(&["show", "c000000006", "--json"]).await.unwrap()).unwrap();
    assert_eq!(c["nickname"], "From PG", "{c}");
    assert_eq!(c["last_updated_by"], "supabase", "{c}");
    let nick: Option<String> = conn_local(&d)
        .query_row(
            "SELECT nickname FROM contacts WHERE contact_id = 'c000000006'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(nick.as_deref(), Some("From PG"));
    ds.cleanup().await;
}
