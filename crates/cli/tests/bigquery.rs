//! End to end through the binary with BigQuery as the canonical store (the
//! local BigQuery emulator; its harness is shared with the store's tests).

#[path = "../../store-bigquery/tests/common/mod.rs"]
mod bq;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn run(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_contact-sync"))
        .current_dir(dir)
        .args(["--config", "contact-sync.toml"])
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .expect("run contact-sync")
}

fn ok(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = run(dir, args, envs);
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
    let ds = bq::TestDataset::create("cli").await;
    let url = bq::url();
    let pg_url = contact_sync_postgres::harness::shared()
        .create_database()
        .await;
    let slot = format!("cs_bq_{}", std::process::id());
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
        let (d, pg_url) = (d.clone(), pg_url.clone());
        tokio::task::spawn_blocking(move || ok(&d, args, &[("CS_BQ_TEST_PG_URL", &pg_url)]))
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
    // What BigQuery cost: the last cycle's and the day's queries and bytes
    // (the emulator reports 0 bytes; BigQuery its totals per job).
    let st: Value = serde_json::from_str(&run(&["status", "--json"]).await.unwrap()).unwrap();
    let usage = &st["bigquery"]["usage"];
    let last = usage["last_cycle"]["queries"].as_u64().unwrap_or(0);
    let today = usage["today"]["queries"].as_u64().unwrap_or(0);
    assert!(last > 0 && today >= last, "{st}");
    assert!(usage["today"]["bytes_billed"].is_u64(), "{st}");
    ds.cleanup().await;
}

/// The named check of `check --json`.
fn check_named<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_a_missing_table_a_misfit_table_and_reads_bigquerys_clock() {
    let ds = bq::TestDataset::create("check").await;
    let url = bq::url();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    // Canonical in BigQuery, and a second BigQuery store on an existing
    // table `people` with an INT64 id column (mapped) and no `notes`.
    std::fs::write(
        d.join("contact-sync.toml"),
        format!(
            "[canonical]\nkind = \"bigquery\"\nbase_url = \"{url}\"\nproject = \"test-project\"\ndataset = \"{ds}\"\nauth = \"none\"\n\n\
             [stores.warehouse]\nkind = \"bigquery\"\nbase_url = \"{url}\"\nproject = \"test-project\"\ndataset = \"{ds}\"\ntable = \"people\"\njournal_table = \"\"\nauth = \"none\"\ncolumns = {{ contact_id = \"id\" }}\n\n\
             [stores.plain]\nkind = \"bigquery\"\nbase_url = \"{url}\"\nproject = \"test-project\"\ndataset = \"{ds}\"\ntable = \"plain\"\njournal_table = \"\"\nauth = \"none\"\n",
            ds = ds.dataset
        ),
    )
    .unwrap();
    let check = |d: &Path| {
        let out = run(d, &["check", "--json"], &[]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "check --json: {e}\n{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out.status.code(), report)
    };

    // Nothing created yet: both fail, with `migrate` as the fix.
    let (code, r) = tokio::task::spawn_blocking({
        let d = d.clone();
        move || check(&d)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{r}");
    for store in ["canonical", "warehouse"] {
        let t = check_named(&r, &format!("{store}: table"));
        assert_eq!(t["level"], "fail", "{t}");
        assert!(
            t["message"].as_str().unwrap().contains("does not exist")
                && t["hint"].as_str().unwrap().contains("contact-sync migrate"),
            "{t}"
        );
        // The credentials can run a query: BigQuery's clock is read.
        let c = check_named(&r, &format!("{store}: clock"));
        assert_eq!(c["level"], "ok", "{c}");
        assert!(
            c["message"]
                .as_str()
                .unwrap()
                .contains("CURRENT_TIMESTAMP()"),
            "{c}"
        );
    }

    // `people` made by another tool: INT64 id, `notes` missing.
    let map = contact_sync_bigquery::ColumnMap::default().rename("contact_id", "id");
    let mut schema = contact_sync_bigquery::contacts_schema(&map);
    schema.retain(|f| f.name != "notes");
    schema[0].ty = "INT64".into();
    ds.client.create_dataset(&ds.dataset).await.unwrap();
    ds.client
        .create_table(&ds.dataset, "people", &schema, "made elsewhere")
        .await
        .unwrap();
    // `plain` made by another tool: fits, but not clustered by contact_id.
    let plain =
        contact_sync_bigquery::contacts_schema(&contact_sync_bigquery::ColumnMap::default());
    ds.client
        .create_table(&ds.dataset, "plain", &plain, "made elsewhere, unclustered")
        .await
        .unwrap();
    // ... and holding two rows of one contact id.
    ds.client
        .query(
            &format!(
                "INSERT INTO {} (contact_id, canonical_name, version) VALUES ('dup-1', 'A', 1), ('dup-1', 'B', 1), ('solo', 'C', 1)",
                ds.table_sql("plain")
            ),
            &[],
            "another tool's INSERT",
        )
        .await
        .unwrap();
    // `migrate` does not alter an existing table: it refuses, naming the column.
    let out = tokio::task::spawn_blocking({
        let d = d.clone();
        move || run(&d, &["migrate"], &[])
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("`notes`"), "{err}");
    contact_sync_bigquery::BigQueryStore::migrate(&ds.client, &ds.config())
        .await
        .expect("canonical's tables");
    let (code, r) = tokio::task::spawn_blocking({
        let d = d.clone();
        move || check(&d)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{r}");
    let t = check_named(&r, "canonical: table");
    assert_eq!(t["level"], "ok", "{t}");
    assert!(
        t["message"]
            .as_str()
            .unwrap()
            .contains("fits the contact (0 rows)"),
        "{t}"
    );
    // Made by `migrate`: clustered, no layout warning.
    assert!(
        r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["name"] != "canonical: table layout"),
        "{r}"
    );
    // Made elsewhere without clustering: every poll would scan it whole.
    let t = check_named(&r, "plain: table layout");
    assert_eq!(t["level"], "warn", "{t}");
    assert!(
        t["message"]
            .as_str()
            .unwrap()
            .contains("is not clustered by `contact_id`")
            && t["hint"]
                .as_str()
                .unwrap()
                .contains("CLUSTER BY `contact_id`"),
        "{t}"
    );
    // Duplicate ids are named (the store writes none of them).
    let t = check_named(&r, "plain: duplicate contact ids");
    assert_eq!(t["level"], "warn", "{t}");
    let msg = t["message"].as_str().unwrap();
    assert!(
        msg.contains("more than one row of test-project.")
            && msg.contains(": 1 (dup-1)")
            && !msg.contains("solo"),
        "{t}"
    );
    assert!(
        r["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["name"] != "canonical: duplicate contact ids"),
        "{r}"
    );
    let t = check_named(&r, "warehouse: table");
    assert_eq!(t["level"], "fail", "{t}");
    let (msg, hint) = (t["message"].as_str().unwrap(), t["hint"].as_str().unwrap());
    assert!(msg.contains("column `notes` is missing"), "{t}");
    assert!(!msg.contains("`id`"), "the INT64 id fits: {t}");
    assert!(hint.contains("ADD COLUMN `notes` STRING"), "{t}");
    ds.cleanup().await;
}

/// People data (issue 19) with BigQuery as canonical: `forget` scrubs the
/// BigQuery row and the local one, `export` shows the erasure and no
/// personal data, and an analyst's UPDATE bringing the row back is erased
/// again, never propagated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_and_export_with_bigquery_as_canonical() {
    let ds = bq::TestDataset::create("erase").await;
    let url = bq::url();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    std::fs::write(
        d.join("contact-sync.toml"),
        format!(
            "[canonical]\nkind = \"bigquery\"\nbase_url = \"{url}\"\nproject = \"test-project\"\ndataset = \"{}\"\nauth = \"none\"\n\n[stores.local]\nkind = \"sqlite\"\n",
            ds.dataset
        ),
    )
    .unwrap();
    let run = |args: Vec<String>| {
        let d = d.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            ok(&d, &args, &[])
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    run(args(&["migrate"])).await.unwrap();
    run(args(&["seed", "--contacts", "10"])).await.unwrap();
    run(args(&["run", "--initial-sync", "--once"]))
        .await
        .unwrap();
    let id = "c000000002";
    let before: Value =
        serde_json::from_str(&run(args(&["show", id, "--json"])).await.unwrap()).unwrap();
    let email = before["emails"][0]["address"]
        .as_str()
        .expect("an email")
        .to_string();
    let name = before["canonical_name"].as_str().unwrap().to_string();
    assert!(!name.is_empty(), "{before}");

    let out = run(args(&["forget", id])).await.unwrap();
    assert!(out.contains("canonical") && out.contains("local"), "{out}");
    let erased = |c: &Value| {
        c["canonical_name"].as_str().unwrap_or_default().is_empty()
            && c["emails"].as_array().is_none_or(|e| e.is_empty())
            && !c["deleted_at"].is_null()
    };
    let after: Value =
        serde_json::from_str(&run(args(&["show", id, "--json"])).await.unwrap()).unwrap();
    assert!(erased(&after), "canonical still holds data: {after}");
    let table = format!("`test-project.{}.contacts`", ds.dataset);
    let rows = ds
        .client
        .query(
            &format!("SELECT TO_JSON_STRING(t) AS j FROM {table} t WHERE contact_id = '{id}'"),
            &[],
            "reading the erased row",
        )
        .await
        .unwrap();
    let raw = serde_json::to_string(&rows.rows).unwrap();
    assert!(
        !raw.contains(&email) && !raw.contains(&name),
        "BigQuery row still holds personal data: {raw}"
    );
    let (local_name, local_deleted): (Option<String>, Option<String>) = conn_local(&d)
        .query_row(
            "SELECT canonical_name, deleted_at FROM contacts WHERE contact_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(local_name.unwrap_or_default().is_empty() && local_deleted.is_some());

    let doc = run(args(&["export", id])).await.unwrap();
    let v: Value = serde_json::from_str(&doc).unwrap();
    assert!(
        v["erasure"]["confirmed"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s == "canonical")),
        "{v}"
    );
    assert!(!doc.contains(&email) && !doc.contains(&name), "{doc}");

    // An analyst brings the row back in BigQuery: erased again.
    ds.client
        .query(
            &format!(
                "UPDATE {table} SET canonical_name = 'Back Again', deleted_at = NULL, \
                 last_updated = CURRENT_TIMESTAMP() WHERE contact_id = '{id}'"
            ),
            &[],
            "an analyst's UPDATE",
        )
        .await
        .unwrap();
    run(args(&["run", "--once"])).await.unwrap();
    let again: Value =
        serde_json::from_str(&run(args(&["show", id, "--json"])).await.unwrap()).unwrap();
    assert!(erased(&again), "brought back: {again}");
    let local_again: Option<String> = conn_local(&d)
        .query_row(
            "SELECT canonical_name FROM contacts WHERE contact_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    assert!(local_again.unwrap_or_default().is_empty(), "propagated");
    ds.cleanup().await;
}

/// Right after an initial sync nothing is journaled yet. An edit made in
/// BigQuery that change capture has not delivered (a bumped row waits out
/// the overlap window), and an edit of another field of that contact in
/// local.db, captured first: the BigQuery edit must not be reverted by the
/// local row's older values (it was, silently: canonical's row as read
/// served as the merge base; found by the soak benchmark, issue 15).
/// Without a base, both sides are kept apart as conflicts, never silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_in_bigquery_not_yet_captured_is_not_reverted_by_a_store_after_an_initial_sync() {
    let ds = bq::TestDataset::create("revert").await;
    let url = bq::url();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    std::fs::write(
        d.join("contact-sync.toml"),
        format!(
            "[canonical]\nkind = \"bigquery\"\nbase_url = \"{url}\"\nproject = \"test-project\"\ndataset = \"{}\"\nauth = \"none\"\nidle_check = false\n\n[stores.local]\nkind = \"sqlite\"\n",
            ds.dataset
        ),
    )
    .unwrap();
    let run = |args: &'static [&'static str]| {
        let d = d.clone();
        tokio::task::spawn_blocking(move || ok(&d, args, &[]))
    };
    run(&["migrate"]).await.unwrap();
    run(&["seed", "--contacts", "10"]).await.unwrap();
    run(&["initial-sync"]).await.unwrap();
    let id = "c000000003";
    let before: String = conn_local(&d)
        .query_row(
            "SELECT job_title FROM contacts WHERE contact_id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    ds.client
        .query(
            &format!(
                "UPDATE {} SET job_title = 'Edited in BigQuery', last_updated = CURRENT_TIMESTAMP() WHERE contact_id = @id",
                ds.table_sql("contacts")
            ),
            &[contact_sync_bigquery::QueryParam::string("id", id)],
            "test edit",
        )
        .await
        .unwrap();
    conn_local(&d)
        .execute(
            "UPDATE contacts SET nickname = 'Edited locally' WHERE contact_id = ?1",
            [id],
        )
        .unwrap();
    run(&["run", "--once"]).await.unwrap();

    let c: Value =
        serde_json::from_str(&run(&["show", "c000000003", "--json"]).await.unwrap()).unwrap();
    assert_eq!(
        c["job_title"], "Edited in BigQuery",
        "reverted to {before:?}: {c}"
    );
    // The local edit, without a base to tell it from canonical's value, is
    // a conflict on record (settled by the rules), not dropped silently.
    let all: Value = serde_json::from_str(
        &run(&["conflicts", "list", "--all", "--json"])
            .await
            .unwrap(),
    )
    .unwrap();
    let nickname = all
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["contact_id"] == id && r["conflict"]["field"] == "nickname");
    let kept = c["nickname"] == "Edited locally";
    assert!(
        kept || nickname.is_some_and(|r| r["conflict"]["incoming"] == "Edited locally"),
        "the local edit is neither kept nor on record: {c}\n{all}"
    );
    ds.cleanup().await;
}
