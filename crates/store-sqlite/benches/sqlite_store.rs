//! Throughput of the SQLite store on 100k realistic contacts (all fields
//! filled), in batches/pages of 1,000: write_batch (insert), write_batch
//! (update, version + 1), scan. Run: `cargo bench -p contact-sync-sqlite`.
//! Set `SQLITE_BENCH_N` to change the number of contacts.
//!
//! Each line shows wall-clock throughput and, on Linux, throughput per
//! second of CPU time of the bench thread (`/proc/thread-self/schedstat`),
//! which stays meaningful when other processes share the machine.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use contact_sync_connector::{RecordSink, WriteOutcome};
use contact_sync_core::Contact;
use contact_sync_sqlite::SqliteStore;

const BATCH: usize = 1_000;

/// CPU time of this thread so far, in seconds (None off Linux).
fn cpu_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = s.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

/// Wall clock and CPU time of one phase.
struct Timer(Instant, Option<f64>);

impl Timer {
    fn start() -> Self {
        Timer(Instant::now(), cpu_secs())
    }
    fn report(&self, what: &str, n: usize) {
        let wall = self.0.elapsed().as_secs_f64();
        let cpu = match (self.1, cpu_secs()) {
            (Some(a), Some(b)) => format!(
                ", {:>9.0} contacts per CPU-second ({:.3} s CPU)",
                n as f64 / (b - a),
                b - a
            ),
            _ => String::new(),
        };
        println!(
            "{what:<20}{:>9.0} contacts/s ({n} in {wall:.3} s){cpu}",
            n as f64 / wall
        );
    }
}

async fn write_all(store: &mut SqliteStore, contacts: &[Contact]) {
    for batch in contacts.chunks(BATCH) {
        let out = store.write_batch(batch).await.expect("write_batch");
        assert!(out
            .iter()
            .all(|o| matches!(o, WriteOutcome::Applied { .. })));
    }
}

async fn run() {
    let n: usize = std::env::var("SQLITE_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bench.db");
    let mut store = SqliteStore::open(&path, "local").expect("open");

    let t = Timer::start();
    let mut contacts: Vec<Contact> = (0..n).map(common::full_contact).collect();
    t.report("generate", n);

    let t = Timer::start();
    write_all(&mut store, &contacts).await;
    t.report("write_batch insert", n);

    for c in &mut contacts {
        c.version += 1;
        c.job_title = Some("Distinguished Engineer".into());
    }
    let t = Timer::start();
    write_all(&mut store, &contacts).await;
    t.report("write_batch update", n);

    let t = Timer::start();
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
    t.report("scan", n);

    let ids: Vec<String> = contacts.iter().map(|c| c.contact_id.clone()).collect();
    let t = Timer::start();
    let mut got = 0usize;
    for chunk in ids.chunks(BATCH) {
        got += store.read(chunk).await.expect("read").len();
    }
    assert_eq!(got, n);
    t.report("read by id", n);

    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!("database file       {:.1} MiB", size as f64 / 1_048_576.0);
}

fn main() {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(run());
}
