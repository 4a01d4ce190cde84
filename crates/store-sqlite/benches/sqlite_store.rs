//! Throughput of the SQLite store on 100k realistic contacts (all fields
//! filled), in batches/pages of 1,000: write_batch (insert), write_batch
//! (update, version + 1), scan. Run: `cargo bench -p contact-sync-sqlite`.
//! Set `SQLITE_BENCH_N` to change the number of contacts.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use contact_sync_connector::{RecordSink, WriteOutcome};
use contact_sync_core::Contact;
use contact_sync_sqlite::SqliteStore;

const BATCH: usize = 1_000;

fn rate(n: usize, secs: f64) -> String {
    format!("{:>9.0} contacts/s ({n} in {secs:.3} s)", n as f64 / secs)
}

async fn write_all(store: &mut SqliteStore, contacts: &[Contact]) -> f64 {
    let t = Instant::now();
    for batch in contacts.chunks(BATCH) {
        let out = store.write_batch(batch).await.expect("write_batch");
        assert!(out
            .iter()
            .all(|o| matches!(o, WriteOutcome::Applied { .. })));
    }
    t.elapsed().as_secs_f64()
}

async fn run() {
    let n: usize = std::env::var("SQLITE_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.db");
    let mut store = SqliteStore::open(&path, "local").expect("open");

    let t = Instant::now();
    let mut contacts: Vec<Contact> = (0..n).map(common::full_contact).collect();
    println!("generate            {}", rate(n, t.elapsed().as_secs_f64()));

    let secs = write_all(&mut store, &contacts).await;
    println!("write_batch insert  {}", rate(n, secs));

    for c in &mut contacts {
        c.version += 1;
        c.job_title = Some("Distinguished Engineer".into());
    }
    let secs = write_all(&mut store, &contacts).await;
    println!("write_batch update  {}", rate(n, secs));

    let t = Instant::now();
    let mut after: Option<String> = None;
    let mut seen = 0usize;
    loop {
        let page = store.scan(after.as_deref(), BATCH).await.expect("scan");
        seen += page.len();
        match page.last() {
            Some(c) if page.len() == BATCH => after = Some(c.contact_id.clone()),
            _ => break,
        }
    }
    assert_eq!(seen, n);
    println!("scan                {}", rate(n, t.elapsed().as_secs_f64()));

    let ids: Vec<String> = contacts.iter().map(|c| c.contact_id.clone()).collect();
    let t = Instant::now();
    let mut got = 0usize;
    for chunk in ids.chunks(BATCH) {
        got += store.read(chunk).await.expect("read").len();
    }
    assert_eq!(got, n);
    println!("read by id          {}", rate(n, t.elapsed().as_secs_f64()));

    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!("database file       {:.1} MiB", size as f64 / 1_048_576.0);
}

fn main() {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(run());
}
