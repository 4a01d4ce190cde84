//! Benchmarks of the embedded path (numbers go to BENCHMARKS.md):
//! - initial sync of N contacts, canonical SQLite → local SQLite, including
//!   its read-back verification: contacts/s and peak RSS;
//! - a full comparison of the two (what `drift` does);
//! - one cycle with 10 contacts changed among N.
//!
//! `cargo bench -p contact-sync --bench sync` (N = 100000; set
//! CONTACT_SYNC_BENCH_N for another size, e.g. 1000000, and
//! CONTACT_SYNC_BENCH_PAGE for another backfill page size).

use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use contact_sync_connector::{RecordSink, Store};
use contact_sync_core::synth::Generator;
use contact_sync_engine::{Engine, EngineOptions};
use contact_sync_sqlite::SqliteStore;
use contact_sync_state::StateDb;

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU time (user + system) of the whole process so far, in seconds.
fn cpu_secs() -> f64 {
    // /proc/self/stat fields 14 and 15: utime and stime in clock ticks.
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(f64::NAN)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: u64 = std::env::var("CONTACT_SYNC_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut canonical =
        SqliteStore::open(&dir.path().join("canonical.db"), "canonical").expect("canonical");
    let mut g = Generator::new(7);
    let t = Instant::now();
    let mut batch = Vec::with_capacity(5000);
    for i in 0..n {
        batch.push(g.contact(i));
        if batch.len() == 5000 {
            canonical.write_batch(&batch).await.expect("seed");
            batch.clear();
        }
    }
    if !batch.is_empty() {
        canonical.write_batch(&batch).await.expect("seed");
    }
    println!("seed: {n} contacts in {:.2} s", t.elapsed().as_secs_f64());
    let rss_before = peak_rss_mb();
    // From here on, the peak RSS counts from what the process holds after
    // seeding (writing 5 to clear_refs resets the high-water mark).
    let _ = std::fs::write("/proc/self/clear_refs", "5");

    let local = SqliteStore::open(&dir.path().join("local.db"), "local").expect("local");
    let state = StateDb::open(&dir.path().join("state.db")).expect("state");
    let canonical: Box<dyn Store> = Box::new(canonical);
    let mut engine = Engine::new(
        state,
        canonical,
        vec![Box::new(local)],
        EngineOptions {
            batch_size: 100,
            backfill_page: std::env::var("CONTACT_SYNC_BENCH_PAGE")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(EngineOptions::default().backfill_page),
            max_batches_per_cycle: 1000,
            ..Default::default()
        },
    )
    .expect("engine");
    let t = Instant::now();
    let cpu = cpu_secs();
    let mut progress = |_: &str, _: u64, _: u64| {};
    let v = engine
        .initial_sync(&mut progress)
        .await
        .expect("initial sync");
    let secs = t.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu;
    assert_eq!(v[0].matching, n, "{v:?}");
    println!(
        "initial sync (incl. verification): {n} contacts in {secs:.2} s = {:.0} contacts/s; {cpu:.2} s of CPU ({:.1} cores busy); peak RSS {:.0} MB (seeding's peak before it: {rss_before:.0} MB)",
        n as f64 / secs,
        cpu / secs,
        peak_rss_mb()
    );

    // The full comparison `drift` and the daemon's scheduled check run
    // (canonical decoded and validated, the store by its kept hashes).
    let t = Instant::now();
    engine.verify().await.expect("verify");
    let vsecs = t.elapsed().as_secs_f64();
    println!(
        "full comparison (verify / drift) of {n}: {vsecs:.2} s ({:.0} contacts/s)",
        n as f64 / vsecs
    );

    // 10 contacts edited in the local store, then one cycle.
    let conn = rusqlite::Connection::open(dir.path().join("local.db")).expect("open local");
    for i in 0..10u64 {
        let id = format!("c{:09}", i * (n / 10));
        conn.execute(
            "UPDATE contacts SET job_title = 'Benchmarker' WHERE contact_id = ?1",
            [&id],
        )
        .expect("edit");
    }
    let t = Instant::now();
    let r = engine.cycle().await.expect("cycle");
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    let merged: u64 = r.stores.iter().map(|s| s.stats.applied).sum();
    assert_eq!(merged, 10, "{r:?}");
    println!("cycle with 10 changed among {n}: {ms:.1} ms");
    let t = Instant::now();
    engine.cycle().await.expect("cycle");
    println!(
        "idle cycle among {n}: {:.1} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
}
