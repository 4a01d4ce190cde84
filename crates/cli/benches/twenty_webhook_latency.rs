//! Edit in Twenty → signed webhook → change in the local SQLite store, with
//! the engine running as the daemon does (woken by the webhook receiver,
//! polling interval 10 minutes). Against the fake Twenty on loopback.
//!
//! `cargo bench -p contact-sync --bench twenty_webhook_latency`
//! (`TWENTY_LATENCY_CHANGES`, default 200).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use contact_sync_connector::{RecordSink, Store};
use contact_sync_core::synth::Generator;
use contact_sync_engine::{Engine, EngineOptions};
use contact_sync_sqlite::SqliteStore;
use contact_sync_state::StateDb;
use contact_sync_twenty::{webhook, Secret, TwentyConfig, TwentyStore};
use contact_sync_twenty_fake::{FakeConfig, FakeTwenty};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let changes: usize = std::env::var("TWENTY_LATENCY_CHANGES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let fake = FakeTwenty::start(FakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut canonical = SqliteStore::open(&dir.path().join("canonical.db"), "canonical").unwrap();
    let mut g = Generator::new(5);
    let seed: Vec<_> = (0..300)
        .map(|i| g.contact(i))
        .filter(|c| c.category_code.as_deref() != Some("X"))
        .collect();
    canonical.write_batch(&seed).await.unwrap();
    let local_path = dir.path().join("local.db");
    let local = SqliteStore::open(&local_path, "local").unwrap();

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = TwentyConfig::new(fake.base_url(), Secret::new(fake.api_key()));
    cfg.webhook_secret = Some(Secret::new("bench-webhook-secret"));
    cfg.webhook_url = Some(format!("http://127.0.0.1:{port}/webhooks/twenty"));
    let mut twenty = TwentyStore::new(cfg).unwrap();
    twenty.migrate().await.unwrap();
    let rx = twenty.webhook_receiver().expect("receiver");
    let ops = contact_sync_ops::OpsHandle::default();
    let _server = contact_sync_ops::serve(
        &contact_sync_ops::ServerConfig::loopback(port),
        ops,
        webhook::router(rx.clone()),
    )
    .await
    .unwrap();

    let state = StateDb::open(&dir.path().join("state.db")).unwrap();
    let stores: Vec<Box<dyn Store>> = vec![Box::new(local), Box::new(twenty)];
    let mut engine =
        Engine::new(state, Box::new(canonical), stores, EngineOptions::default()).unwrap();
    let mut progress = |_: &str, _: u64, _: u64| {};
    engine.initial_sync(&mut progress).await.unwrap();
    engine.cycle().await.unwrap();
    let stop = engine.shutdown_flag();
    let wake = rx.notify();
    let daemon = tokio::spawn(async move {
        while !stop.load(Ordering::SeqCst) {
            engine.cycle().await.expect("cycle");
            tokio::select! {
                _ = wake.notified() => {},
                _ = tokio::time::sleep(Duration::from_secs(600)) => {},
            }
        }
    });

    let people: Vec<_> = fake
        .people()
        .into_iter()
        .filter(|p| p["contactId"].is_string() && p["deletedAt"].is_null())
        .collect();
    let client = reqwest::Client::new();
    let local = rusqlite::Connection::open(&local_path).unwrap();
    local.busy_timeout(Duration::from_secs(5)).unwrap();
    let mut lat = Vec::with_capacity(changes);
    for i in 0..changes {
        let p = &people[i % people.len()];
        let (pid, cid) = (p["id"].as_str().unwrap(), p["contactId"].as_str().unwrap());
        let title = format!("webhook bench {i}");
        let t = Instant::now();
        let r = client
            .patch(format!("{}/rest/people/{pid}", fake.base_url()))
            .bearer_auth(fake.api_key())
            .json(&serde_json::json!({"jobTitle": title}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        loop {
            let got: Option<String> = local
                .query_row(
                    "SELECT job_title FROM contacts WHERE contact_id = ?1",
                    [cid],
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
        "twenty edit → webhook → local over {changes} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (webhooks delivered: {})",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        lat[lat.len() - 1].as_secs_f64() * 1e3,
        fake.counters().webhooks_delivered
    );
    daemon.abort();
}
