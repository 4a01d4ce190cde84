//! The BigQuery journal table through the binary (issue 14, item 7): after
//! each cycle every journal entry is appended to `contact_changes` exactly
//! once — also when an append failed and was retried at the next cycle,
//! and when the cursor was lost after an append (a crash between the
//! append and recording it). Read back with Google's official Python
//! client, as an analyst would.

#[path = "../../store-bigquery/tests/common/mod.rs"]
mod bq;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_contact-sync"))
        .current_dir(dir)
        .args(["--config", "contact-sync.toml"])
        .args(args)
        .output()
        .expect("run contact-sync")
}

fn ok(dir: &Path, args: &[&str]) -> (String, String) {
    let out = run(dir, args);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(
        out.status.success(),
        "contact-sync {args:?} failed ({:?}):\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    (stdout, stderr)
}

/// The `seq` column of the journal table, in order (duplicates kept).
fn journal_table_seqs(ds: &bq::TestDataset) -> Vec<i64> {
    let out = bq::python(
        ds,
        "rows = client.query(f'SELECT seq FROM `{DS}.contact_changes` ORDER BY seq').result()\n\
         print(json.dumps([r['seq'] for r in rows]))",
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn status(d: &Path) -> Value {
    serde_json::from_str(&ok(d, &["status", "--json"]).0).unwrap()
}

fn set_state_meta(d: &Path, key: &str, value: &str) {
    let c = rusqlite::Connection::open(d.join("contact-sync-data/state.db")).unwrap();
    c.execute(
        "UPDATE meta SET value = ?2 WHERE key = ?1",
        rusqlite::params![key, value],
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_journal_entry_reaches_the_journal_table_once_also_after_a_retry() {
    let ds = bq::TestDataset::create("cli_journal").await;
    let url = bq::url();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    std::fs::write(
        d.join("contact-sync.toml"),
        format!(
            "[canonical]\nkind = \"bigquery\"\nbase_url = \"{url}\"\nproject = \"test-project\"\n\
             dataset = \"{}\"\nauth = \"none\"\noverlap_secs = 0\nsweep_every = 1\nidle_check = false\n\n\
             [stores.local]\nkind = \"sqlite\"\n",
            ds.dataset
        ),
    )
    .unwrap();
    let blocking = |f: Box<dyn FnOnce() + Send>| tokio::task::spawn_blocking(f);
    let dd = d.clone();
    blocking(Box::new(move || {
        ok(&dd, &["migrate"]);
        ok(&dd, &["seed", "--contacts", "12"]);
    }))
    .await
    .unwrap();

    // The initial sync journals nothing (the first cycle after it reads
    // nothing again from canonical); edits of the 12 contacts in local.db
    // make 12 entries.
    let dd = d.clone();
    blocking(Box::new(move || {
        ok(
            &dd,
            &["run", "--initial-sync", "--once", "--batch-size", "50"],
        );
    }))
    .await
    .unwrap();
    let c = rusqlite::Connection::open(d.join("contact-sync-data/local.db")).unwrap();
    let n = c
        .execute("UPDATE contacts SET notes = 'Noted ' || contact_id", [])
        .unwrap();
    assert_eq!(n, 12);
    drop(c);

    // The journal table is gone when the next cycle appends: the append
    // fails, the cycle does not, and nothing is recorded as appended.
    bq::python(
        &ds,
        "client.delete_table(f'{DS}.contact_changes')\nprint('ok')",
    );
    let dd = d.clone();
    let (stdout, stderr) = tokio::task::spawn_blocking(move || ok(&dd, &["run", "--once"]))
        .await
        .unwrap();
    assert!(stderr.contains("journal table: append failed"), "{stderr}");
    assert!(stdout.contains("BigQuery:"), "{stdout}");
    let dd = d.clone();
    let s = tokio::task::spawn_blocking(move || status(&dd))
        .await
        .unwrap();
    let head = s["journal_head"].as_i64().unwrap();
    assert!(head >= 12, "{s}");
    assert_eq!(s["bigquery"]["journal_appended_seq"], 0, "{s}");
    assert_eq!(s["bigquery"]["journal_pending"], head, "{s}");

    // The table is back (`migrate`): the next cycle appends everything.
    let dd = d.clone();
    tokio::task::spawn_blocking(move || {
        ok(&dd, &["migrate"]);
        ok(&dd, &["run", "--once"]);
    })
    .await
    .unwrap();
    assert_eq!(journal_table_seqs(&ds), (1..=head).collect::<Vec<_>>());

    // Edits in local.db: their entries follow.
    let c = rusqlite::Connection::open(d.join("contact-sync-data/local.db")).unwrap();
    c.execute(
        "UPDATE contacts SET job_title = 'Edited ' || contact_id WHERE contact_id IN ('c000000001', 'c000000002', 'c000000003')",
        [],
    )
    .unwrap();
    drop(c);
    let dd = d.clone();
    let s = tokio::task::spawn_blocking(move || {
        ok(&dd, &["run", "--once"]);
        status(&dd)
    })
    .await
    .unwrap();
    let head2 = s["journal_head"].as_i64().unwrap();
    assert_eq!(head2, head + 3, "{s}");
    assert_eq!(s["bigquery"]["journal_pending"], 0, "{s}");
    assert!(
        s["bigquery"]["usage"]["today"]["queries"].as_u64().unwrap() > 0,
        "{s}"
    );
    assert_eq!(journal_table_seqs(&ds), (1..=head2).collect::<Vec<_>>());

    // The cursor lost after an append (a crash before it was recorded):
    // the next cycle appends again and nothing is there twice.
    let key = format!("journal_consumer:bigquery:{}.contact_changes", ds.dataset);
    set_state_meta(&d, &key, "2");
    let dd = d.clone();
    let s = tokio::task::spawn_blocking(move || {
        ok(&dd, &["run", "--once"]);
        status(&dd)
    })
    .await
    .unwrap();
    assert_eq!(s["bigquery"]["journal_appended_seq"], head2, "{s}");
    assert_eq!(journal_table_seqs(&ds), (1..=head2).collect::<Vec<_>>());

    // An analyst reads the edit from the table as JSON.
    let out = bq::python(
        &ds,
        "rows = list(client.query(f\"SELECT op, origin, JSON_VALUE(after, '$.job_title') AS t FROM `{DS}.contact_changes` WHERE contact_id = 'c000000002' ORDER BY seq DESC LIMIT 1\").result())\n\
         print(json.dumps([rows[0]['op'], rows[0]['origin'], rows[0]['t']]))",
    );
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        v,
        serde_json::json!(["upsert", "local", "Edited c000000002"])
    );
    ds.cleanup().await;
}
