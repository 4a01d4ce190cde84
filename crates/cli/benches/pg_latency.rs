//! Change committed in Postgres → visible in the local SQLite store, with
//! the engine running as the daemon does (woken by the store's NOTIFY
//! channel, polling interval 10 minutes). 1,000 changes, one at a time.
//!
//! `cargo bench -p contact-sync --bench pg_latency` (a private PostgreSQL
//! cluster is started by the harness, or CONTACT_SYNC_PG_URL is used).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use contact_sync_connector::{RecordSink, Store};
use contact_sync_core::synth::Generator;
use contact_sync_engine::{Engine, EngineOptions};
use contact_sync_postgres::{harness, PgConfig, PgStore};
use contact_sync_sqlite::SqliteStore;
use contact_sync_state::StateDb;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let changes: usize = std::env::var("PG_LATENCY_CHANGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let server = harness::shared();
    let url = server.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let mut canonical = SqliteStore::open(&dir.path().join("canonical.db"), "canonical").unwrap();
    let mut g = Generator::new(3);
    let seed: Vec<_> = (0..1000).map(|i| g.contact(i)).collect();
    canonical.write_batch(&seed).await.unwrap();
    let local_path = dir.path().join("local.db");
    let local = SqliteStore::open(&local_path, "local").unwrap();
    let mut cfg = PgConfig::new("supabase", url.clone());
    cfg.slot_name = format!("cs_bench_{}", std::process::id());
    let mut pg = PgStore::connect(cfg).await.unwrap();
    pg.migrate().await.unwrap();
    let notifier = pg.change_notifier().await.unwrap();
    let state = StateDb::open(&dir.path().join("state.db")).unwrap();
    let stores: Vec<Box<dyn Store>> = vec![Box::new(local), Box::new(pg)];
    let mut engine =
        Engine::new(state, Box::new(canonical), stores, EngineOptions::default()).unwrap();
    let mut progress = |_: &str, _: u64, _: u64| {};
    engine.initial_sync(&mut progress).await.unwrap();
    engine.cycle().await.unwrap();
    let stop = engine.shutdown_flag();
    let wake = notifier.handle();
    let daemon = tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            engine.cycle().await.expect("cycle");
            tokio::select! {
                _ = wake.notified() => {},
                _ = tokio::time::sleep(Duration::from_secs(600)) => {},
            }
        }
    });

    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let local = rusqlite::Connection::open(&local_path).unwrap();
    local.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut lat = Vec::with_capacity(changes);
    for i in 0..changes {
        let id = format!("c{:09}", i % 1000);
        let title = format!("bench {i}");
        let t = Instant::now();
        client
            .execute(
                "UPDATE contacts SET job_title = $1 WHERE contact_id = $2",
                &[&title, &id],
            )
            .await
            .unwrap();
        loop {
            let got: Option<String> = local
                .query_row(
                    "SELECT job_title FROM contacts WHERE contact_id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .unwrap();
            if got.as_deref() == Some(title.as_str()) {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "change {i} never arrived"
            );
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "postgres → local over {changes} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3
    );
    daemon.abort();
}
