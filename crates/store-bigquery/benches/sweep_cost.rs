//! What the fingerprint sweep costs at large tables: for each size in
//! `BQ_BENCH_SWEEP_ROWS` (comma-separated, default `100000,300000`), a
//! table of that many realistic rows generated server-side (names, an
//! email, a phone, tags, notes, organization, timestamps), its sidecar
//! filled server-side as after a full sync, and then:
//!
//! - a sweep that finds nothing (the first poll after `open`: sweep + fast
//!   path poll), and a poll alone for comparison;
//! - a sweep that finds 1,000 rows (`BQ_BENCH_SWEEP_FOUND`; 0 skips it) an
//!   analyst changed without a bump, with their delivery and
//!   acknowledgement (sidecar update);
//!
//! each with wall time, query jobs, bytes processed/billed as the server
//! reports them (the emulator reports 0), request/answer bytes on the
//! wire, the load average, and the sizes: the table's and the sidecar's
//! logical bytes as BigQuery counts them (STRING 2 + UTF-8 bytes, INT64
//! and TIMESTAMP 8, BOOL 1; what an on-demand sweep query bills, since it
//! reads every column) and the sidecar's row count.
//!
//!   cargo bench -p contact-sync-bigquery --bench sweep_cost

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use contact_sync_bigquery::{BigQueryStore, BigQueryUsage};
use contact_sync_connector::{ChangeSource, Checkpoint};
use serde_json::Value;

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn diff(a: BigQueryUsage, b: BigQueryUsage, t: Duration) -> String {
    format!(
        "{:.1} s, {} query jobs, {} calls, {} B processed, {} B billed, {:.1} KB sent, {:.1} KB received, load {}",
        t.as_secs_f64(),
        b.queries - a.queries,
        b.calls - a.calls,
        b.bytes_processed - a.bytes_processed,
        b.bytes_billed - a.bytes_billed,
        (b.bytes_sent - a.bytes_sent) as f64 / 1e3,
        (b.bytes_received - a.bytes_received) as f64 / 1e3,
        load()
    )
}

async fn one(ds: &common::TestDataset, sql: &str, what: &str) -> serde_json::Map<String, Value> {
    let r = ds.client.query(sql, &[], what).await.expect(what);
    r.rows.into_iter().next().unwrap_or_default()
}

fn int(row: &serde_json::Map<String, Value>, k: &str) -> i64 {
    row.get(k).and_then(Value::as_i64).unwrap_or(0)
}

async fn run(rows: u64) {
    println!("== {rows} rows (load {})", load());
    let ds = common::TestDataset::create("sweepcost").await;
    let mut cfg = ds.config();
    cfg.sweep_every = Some(3);
    cfg.sweep_interval = Some(Duration::from_secs(900));
    BigQueryStore::migrate(&ds.client, &cfg)
        .await
        .expect("migrate");
    let t = ds.table_sql("contacts");
    let side = ds.table_sql("contacts_sync_fingerprints");
    let start = Instant::now();
    let chunk = 100_000u64;
    let mut from = 1;
    while from <= rows {
        let to = (from + chunk - 1).min(rows);
        let sql = format!(
            "INSERT INTO {t} (contact_id, canonical_name, display_name, first_name, last_name, organization, \
             job_title, notes, tags, source, created_at, emails, phones, version, last_updated, last_updated_by, content_hash) \
             SELECT CONCAT('c', LPAD(CAST(x AS STRING), 8, '0')), CONCAT('Person ', CAST(x AS STRING), ' Example'), \
             CONCAT('Person ', CAST(x AS STRING)), 'Person', CONCAT('Example', CAST(MOD(x, 997) AS STRING)), \
             'Example Corporation', 'Account Manager', CONCAT('Met at the conference, follow up about order ', CAST(x AS STRING)), \
             ['customer', 'newsletter'], 'import', TIMESTAMP '2025-01-01 00:00:00+00', \
             [STRUCT(CONCAT('person', CAST(x AS STRING), '@example.com') AS address, 'work' AS label, TRUE AS is_primary)], \
             [STRUCT(CONCAT('+1555', LPAD(CAST(x AS STRING), 7, '0')) AS number, 'mobile' AS label, TRUE AS is_primary)], \
             1, TIMESTAMP '2026-01-01 00:00:00+00', 'import', TO_HEX(SHA256(CAST(x AS STRING))) \
             FROM UNNEST(GENERATE_ARRAY({from}, {to})) AS x"
        );
        ds.client
            .query(&sql, &[], "generating rows")
            .await
            .expect("generate");
        from = to + 1;
    }
    println!("generated in {:.1} s", start.elapsed().as_secs_f64());
    // The sidecar as after a full sync: every row's fingerprint.
    let store = BigQueryStore::open(ds.client.clone(), cfg.clone())
        .await
        .expect("open");
    let start = Instant::now();
    let sql = format!(
        "INSERT INTO {side} (contact_id, fp) SELECT t.contact_id, {} FROM {t} t",
        store.fingerprint_sql("t")
    );
    ds.client
        .query(&sql, &[], "filling the sidecar")
        .await
        .expect("sidecar");
    println!("sidecar filled in {:.1} s", start.elapsed().as_secs_f64());
    drop(store);
    let sizes = one(
        &ds,
        &format!(
            "SELECT COUNT(*) AS n, SUM(\
               2 + BYTE_LENGTH(contact_id) + 2 + BYTE_LENGTH(canonical_name) + 2 + BYTE_LENGTH(display_name) \
             + 2 + BYTE_LENGTH(first_name) + 2 + BYTE_LENGTH(last_name) + 2 + BYTE_LENGTH(organization) \
             + 2 + BYTE_LENGTH(job_title) + 2 + BYTE_LENGTH(notes) + 2 + BYTE_LENGTH(source) \
             + 2 + BYTE_LENGTH(last_updated_by) + 2 + BYTE_LENGTH(content_hash) \
             + (SELECT SUM(2 + BYTE_LENGTH(g)) FROM UNNEST(tags) g) \
             + (SELECT SUM(2 + BYTE_LENGTH(e.address) + 2 + BYTE_LENGTH(e.label) + 1) FROM UNNEST(emails) e) \
             + (SELECT SUM(2 + BYTE_LENGTH(p.number) + 2 + BYTE_LENGTH(p.label) + 1) FROM UNNEST(phones) p) \
             + 8 + 8 + 8) AS b FROM {t}"
        ),
        "table size",
    )
    .await;
    let side_size = one(
        &ds,
        &format!("SELECT COUNT(*) AS n, SUM(2 + BYTE_LENGTH(contact_id) + 8) AS b FROM {side}"),
        "sidecar size",
    )
    .await;
    println!(
        "table: {} rows, {:.1} MB logical; sidecar: {} rows, {:.2} MB logical",
        int(&sizes, "n"),
        int(&sizes, "b") as f64 / 1e6,
        int(&side_size, "n"),
        int(&side_size, "b") as f64 / 1e6
    );
    let last = one(
        &ds,
        &format!("SELECT UNIX_MICROS(MAX(last_updated)) AS wm, MAX(contact_id) AS id FROM {t}"),
        "the last row",
    )
    .await;
    let cp = Checkpoint::new(format!(
        "{{\"v\":2,\"wm\":{},\"id\":{},\"n\":0}}",
        int(&last, "wm"),
        last.get("id").cloned().unwrap_or(Value::Null)
    ));

    // A sweep that finds nothing: the first poll after open sweeps.
    let mut store = BigQueryStore::open(ds.client.clone(), cfg.clone())
        .await
        .expect("open");
    let u = store.usage();
    let s = Instant::now();
    let b = store.read_changes(Some(&cp), 1000).await.expect("sweep");
    assert!(b.changes.is_empty(), "{} changes", b.changes.len());
    assert_eq!(store.usage().capture.sweeps, 1);
    println!(
        "sweep finding nothing + poll: {}",
        diff(u, store.usage(), s.elapsed())
    );
    let u = store.usage();
    let s = Instant::now();
    store.read_changes(Some(&cp), 1000).await.expect("poll");
    assert_eq!(store.usage().capture.sweeps, 1, "a poll alone");
    println!("poll alone: {}", diff(u, store.usage(), s.elapsed()));

    // Rows changed without a bump (BQ_BENCH_SWEEP_FOUND, default 1,000; 0
    // skips this step).
    let found: u64 = std::env::var("BQ_BENCH_SWEEP_FOUND")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    if found == 0 {
        ds.cleanup().await;
        return;
    }
    let every = (rows / found).max(1);
    ds.client
        .query(
            &format!(
                "UPDATE {t} SET notes = 'changed by an analyst' WHERE MOD(CAST(SUBSTR(contact_id, 2) AS INT64), {every}) = 0"
            ),
            &[],
            "unbumped update",
        )
        .await
        .expect("update");
    let mut store = BigQueryStore::open(ds.client.clone(), cfg.clone())
        .await
        .expect("open");
    let u = store.usage();
    let s = Instant::now();
    let mut cp = cp;
    let mut got = 0;
    loop {
        let b = store.read_changes(Some(&cp), 1000).await.expect("read");
        store.acknowledge(&b.checkpoint).await.expect("ack");
        cp = b.checkpoint;
        if b.changes.is_empty() {
            break;
        }
        got += b.changes.len();
    }
    println!(
        "sweep finding {got} unbumped changes, delivered and acknowledged: {}",
        diff(u, store.usage(), s.elapsed())
    );
    ds.cleanup().await;
}

#[tokio::main]
async fn main() {
    let sizes: Vec<u64> = std::env::var("BQ_BENCH_SWEEP_ROWS")
        .unwrap_or_else(|_| "100000,300000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "cores {}, load {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load()
    );
    for n in sizes {
        run(n).await;
    }
}
