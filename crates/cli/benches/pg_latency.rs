//! Change committed in Postgres → visible in the local SQLite store, with
//! the engine running as the daemon does (woken by the store's NOTIFY
//! channel, polling interval 10 minutes).
//!
//! - default: 1,000 changes, one at a time (`PG_LATENCY_CHANGES`);
//! - busy (`PG_LATENCY_RATE=1000`, `PG_LATENCY_SECS=60`): single-row
//!   UPDATEs, each its own transaction, from 4 connections on a fixed
//!   schedule over 10,000 contacts, while a watcher reads local.db every
//!   10 ms; lag = from sending an edit to seeing it in local.db, through
//!   the whole engine (capture, merge, journal, canonical and local writes).
//!   `PG_LATENCY_BATCH` sets the engine's batch size (default 100),
//!   `PG_LATENCY_BUDGET_MS` its capture budget (default 250 as in the
//!   daemon; 0: none).
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
    let env = |k: &str| std::env::var(k).ok().and_then(|s| s.parse::<usize>().ok());
    let changes = env("PG_LATENCY_CHANGES").unwrap_or(1000);
    let rate = env("PG_LATENCY_RATE");
    let secs = env("PG_LATENCY_SECS").unwrap_or(60);
    let contacts = if rate.is_some() { 10_000 } else { 1000 };
    let server = harness::shared();
    let url = server.create_database().await;
    let dir = tempfile::tempdir().unwrap();
    let mut canonical = SqliteStore::open(&dir.path().join("canonical.db"), "canonical").unwrap();
    let mut g = Generator::new(3);
    for start in (0..contacts).step_by(1000) {
        let seed: Vec<_> = (start..start + 1000).map(|i| g.contact(i as u64)).collect();
        canonical.write_batch(&seed).await.unwrap();
    }
    let local_path = dir.path().join("local.db");
    let local = SqliteStore::open(&local_path, "local").unwrap();
    let mut cfg = PgConfig::new("supabase", url.clone());
    cfg.slot_name = format!("cs_bench_{}", std::process::id());
    let mut pg = PgStore::connect(cfg).await.unwrap();
    pg.migrate().await.unwrap();
    let notifier = pg.change_notifier().await.unwrap();
    let state = StateDb::open(&dir.path().join("state.db")).unwrap();
    let stores: Vec<Box<dyn Store>> = vec![Box::new(local), Box::new(pg)];
    let opts = EngineOptions {
        batch_size: env("PG_LATENCY_BATCH").unwrap_or(EngineOptions::default().batch_size),
        // As the daemon runs it (`[sync] capture_budget_ms`, default 250;
        // `PG_LATENCY_BUDGET_MS=0`: none).
        capture_budget: match env("PG_LATENCY_BUDGET_MS").unwrap_or(250) {
            0 => None,
            ms => Some(Duration::from_millis(ms as u64)),
        },
        ..EngineOptions::default()
    };
    let mut engine = Engine::new(state, Box::new(canonical), stores, opts).unwrap();
    let mut progress = |_: &str, _: u64, _: u64| {};
    engine.initial_sync(&mut progress).await.unwrap();
    engine.cycle().await.unwrap();
    let stop = engine.shutdown_flag();
    let wake = notifier.handle();
    let daemon = tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            if engine.cycle().await.expect("cycle").more {
                // The rest of a backlog: at once, as the daemon does.
                continue;
            }
            tokio::select! {
                _ = wake.notified() => {},
                _ = tokio::time::sleep(Duration::from_secs(600)) => {},
            }
        }
    });

    if let Some(rate) = rate {
        busy(&url, &local_path, rate, secs, contacts).await;
        daemon.abort();
        return;
    }
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

/// The busy mode (see the module docs).
async fn busy(url: &str, local_path: &std::path::Path, rate: usize, secs: usize, contacts: usize) {
    use std::sync::{Arc, Mutex};
    const WRITERS: usize = 4;
    let total = rate * secs;
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; total]));
    let start = Instant::now() + Duration::from_millis(200);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let sent = sent.clone();
        writers.push(tokio::spawn(async move {
            let stmt = client
                .prepare("UPDATE contacts SET job_title = $1 WHERE contact_id = $2")
                .await
                .unwrap();
            for i in (w..total).step_by(WRITERS) {
                let at = start + Duration::from_secs_f64(i as f64 / rate as f64);
                tokio::time::sleep_until(at.into()).await;
                let id = format!("c{:09}", i % contacts);
                let title = format!("busy {i}");
                sent.lock().unwrap()[i] = Some(Instant::now());
                client.execute(&stmt, &[&title, &id]).await.unwrap();
            }
        }));
    }
    // The watcher: every 10 ms, the edits local.db took since the last
    // look (a trigger of the bench's own notes each, so the watcher reads
    // only what is new instead of scanning the table).
    let local = rusqlite::Connection::open(local_path).unwrap();
    local.busy_timeout(Duration::from_secs(5)).unwrap();
    local
        .execute_batch(
            "CREATE TABLE bench_seen (seq INTEGER PRIMARY KEY, contact_id TEXT, title TEXT);
             CREATE TRIGGER bench_seen AFTER UPDATE OF job_title ON contacts
             WHEN NEW.job_title LIKE 'busy %'
             BEGIN INSERT INTO bench_seen (contact_id, title) VALUES (NEW.contact_id, NEW.job_title); END;",
        )
        .unwrap();
    let mut after = 0i64;
    let mut seen: Vec<Option<Instant>> = vec![None; total];
    let mut last_shown: Vec<usize> = vec![usize::MAX; contacts];
    let mut newest_seen = 0usize;
    let deadline = start + Duration::from_secs(secs as u64 + 120);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    loop {
        let now = Instant::now();
        let mut stmt = local
            .prepare_cached(
                "SELECT seq, contact_id, title FROM bench_seen WHERE seq > ?1 ORDER BY seq",
            )
            .unwrap();
        let rows = stmt
            .query_map([after], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .unwrap();
        for row in rows {
            let (seq, id, title) = row.unwrap();
            after = seq;
            let (Ok(k), Ok(i)) = (id[1..].parse::<usize>(), title[5..].parse::<usize>()) else {
                continue;
            };
            if k < contacts && i < total && last_shown[k] != i {
                last_shown[k] = i;
                seen[i].get_or_insert(now);
                newest_seen = newest_seen.max(i);
            }
        }
        drop(stmt);
        // Done when the last edit of every contact edited is shown.
        let done = (total.saturating_sub(contacts)..total).all(|i| last_shown[i % contacts] == i);
        if done && writers.iter().all(|w| w.is_finished()) {
            break;
        }
        if now > deadline {
            println!("stopped at the deadline: newest edit seen {newest_seen} of {total}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let caught_up = Instant::now();
    let cpu = process_cpu_secs();
    let sent = sent.lock().unwrap();
    let last_sent = sent.iter().flatten().max().copied().unwrap_or(start);
    let mut lat: Vec<Duration> = sent
        .iter()
        .zip(&seen)
        .filter_map(|(s, v)| Some(v.as_ref()?.saturating_duration_since((*s)?)))
        .collect();
    lat.sort();
    let superseded = total - lat.len();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "busy: {rate} edits/s for {secs} s over {contacts} contacts: {} seen ({superseded} superseded by a later edit of the same contact before being seen); \
         lag p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; caught up {:.2} s after the last edit; bench process CPU {cpu:.1} s (engine, writers, watcher); load average at start {}",
        lat.len(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3,
        caught_up.saturating_duration_since(last_sent).as_secs_f64(),
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
}

/// User + system CPU seconds of this process so far (/proc/self/stat).
fn process_cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the
    // 12th and stime the 13th of them, in clock ticks (100 per second).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}
