//! Twenty store benchmarks against the fake server on loopback:
//!
//! 1. HTTP requests for an initial sync of N contacts (budget:
//!    ceil(N / batch_size) + provisioning).
//! 2. 429s when the client's configured rate matches the server's limit
//!    (window scaled down to 1 s): expected zero; and with the client set
//!    2× too fast: 429s absorbed, nothing lost.
//! 3. Webhook latency: a change made in Twenty → verified event queued in
//!    the store (the daemon wakes on it), p50/p95/max.
//!
//! 4. An initial sync against the fake with Twenty's real limits (100 per
//!    60 s and 100 per 1 s, Twenty's lossy token buckets) and the store's
//!    defaults (100/min, batch 200): requests (budget ceil(N/200) + 5) and
//!    wall time of the writes, and of `migrate` before them.
//!
//! Run: `cargo bench -p contact-sync-twenty` (add `-- quick` for smaller N).

use std::time::{Duration, Instant};

use contact_sync_connector::{RecordSink, WriteOutcome};
use contact_sync_core::synth::Generator;
use contact_sync_core::Contact;
use contact_sync_twenty::{webhook, Secret, TwentyConfig, TwentyStore};
use contact_sync_twenty_fake::{FakeConfig, FakeTwenty, RateLimit};

fn contacts(n: usize) -> Vec<Contact> {
    let mut g = Generator::new(42);
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while out.len() < n {
        let mut c = g.contact(i);
        i += 1;
        if c.category_code.as_deref() == Some("X") {
            continue;
        }
        c.normalize();
        out.push(c);
    }
    out
}

fn config(fake: &FakeTwenty) -> TwentyConfig {
    TwentyConfig::new(fake.base_url(), Secret::new(fake.api_key()))
}

async fn initial_sync(n: usize, batch: usize) {
    let fake = FakeTwenty::start(FakeConfig::default())
        .await
        .expect("fake");
    let mut cfg = config(&fake);
    cfg.batch_size = batch;
    cfg.requests_per_minute = 1_000_000;
    let mut store = TwentyStore::new(cfg).expect("store");
    store.migrate().await.expect("migrate");
    let provisioning_migrate = fake.counters().total;
    let cs = contacts(n);
    fake.reset_counters();
    let t0 = Instant::now();
    let out = store.write_batch(&cs).await.expect("write");
    let dt = t0.elapsed();
    assert!(out
        .iter()
        .all(|o| matches!(o, WriteOutcome::Applied { .. })));
    let c = fake.counters();
    let batches = n.div_ceil(batch) as u64;
    println!(
        "initial sync N={n:>5} batch={batch:>3}: {:>3} requests ({} batch creates, {} company calls; budget {batches} + provisioning; migrate itself {provisioning_migrate}) in {:>7.1} ms, {:.0} contacts/s",
        c.total,
        c.route("POST /rest/batch/people"),
        c.route("GET /rest/companies") + c.route("POST /rest/batch/companies"),
        dt.as_secs_f64() * 1e3,
        n as f64 / dt.as_secs_f64()
    );
    fake.stop().await;
}

async fn matched_rate(n: usize, client_factor: u32) {
    let limit = RateLimit {
        requests: 20,
        window: Duration::from_secs(1),
    };
    let fake = FakeTwenty::start(FakeConfig {
        rate_limit: Some(limit),
        ..FakeConfig::default()
    })
    .await
    .expect("fake");
    let mut cfg = config(&fake);
    cfg.requests_per_minute = limit.requests * client_factor;
    cfg.rate_window = limit.window;
    let mut store = TwentyStore::new(cfg).expect("store");
    let t0 = Instant::now();
    store.migrate().await.expect("migrate");
    let cs = contacts(n);
    store.write_batch(&cs).await.expect("write");
    let ids: Vec<String> = cs.iter().map(|c| c.contact_id.clone()).collect();
    let back = store.read(&ids).await.expect("read");
    let dt = t0.elapsed();
    let c = fake.counters();
    let s = store.stats();
    println!(
        "rate limit {}/{:?}, client at {}x: {} requests, {} answered 429 (client saw {}), waited {} ms, {}/{} contacts read back, {:.1} s",
        limit.requests,
        limit.window,
        client_factor,
        c.total,
        c.rate_limited,
        s.rate_limited,
        s.throttle_wait_ms,
        back.len(),
        n,
        dt.as_secs_f64()
    );
    fake.stop().await;
}

async fn real_limits(n: usize) {
    let fake = FakeTwenty::start(FakeConfig {
        rate_limit: Some(RateLimit::TWENTY_LONG),
        short_rate_limit: Some(RateLimit::TWENTY_SHORT),
        ..FakeConfig::default()
    })
    .await
    .expect("fake");
    let mut store = TwentyStore::new(config(&fake)).expect("store");
    let t0 = Instant::now();
    store.migrate().await.expect("migrate");
    let migrate = t0.elapsed();
    let migrate_requests = fake.counters().total;
    let cs = contacts(n);
    fake.reset_counters();
    let before = store.stats();
    let t0 = Instant::now();
    let out = store.write_batch(&cs).await.expect("write");
    let dt = t0.elapsed();
    assert!(out
        .iter()
        .all(|o| matches!(o, WriteOutcome::Applied { .. })));
    let c = fake.counters();
    let s = store.stats();
    let budget = n.div_ceil(200) as u64 + 5;
    println!(
        "real limits (100/60 s + 100/1 s), defaults (100/min, batch 200): initial sync N={n}: {} requests (budget {budget}: {}), {} answered 429, {:.1} s ({:.0} contacts/s); migrate before it: {migrate_requests} requests, {:.1} s",
        c.total,
        if c.total <= budget { "within" } else { "OVER" },
        s.rate_limited - before.rate_limited,
        dt.as_secs_f64(),
        n as f64 / dt.as_secs_f64(),
        migrate.as_secs_f64()
    );
    fake.stop().await;
}

async fn webhook_latency(samples: usize) {
    let fake = FakeTwenty::start(FakeConfig::default())
        .await
        .expect("fake");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}{}",
        listener.local_addr().expect("addr"),
        webhook::PATH
    );
    let mut cfg = config(&fake);
    cfg.requests_per_minute = 1_000_000;
    cfg.webhook_secret = Some(Secret::new("bench-secret"));
    cfg.webhook_url = Some(url);
    let mut store = TwentyStore::new(cfg).expect("store");
    let rx = store.webhook_receiver().expect("receiver");
    let router = webhook::router(rx.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    store.migrate().await.expect("migrate");
    let cs = contacts(1);
    store.write_batch(&cs).await.expect("write");
    while rx.queued() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = contact_sync_connector::ChangeSource::read_changes(&mut store, None, 100).await;
    let pid = store.person_id_for(&cs[0].contact_id);
    let http = reqwest::Client::new();
    let notify = rx.notify();
    let mut lat = Vec::with_capacity(samples);
    for i in 0..samples {
        let woke = notify.notified();
        let t0 = Instant::now();
        http.patch(format!("{}/rest/people/{pid}", fake.base_url()))
            .header("Authorization", format!("Bearer {}", fake.api_key()))
            .json(&serde_json::json!({"jobTitle": format!("edit {i}")}))
            .send()
            .await
            .expect("patch");
        tokio::time::timeout(Duration::from_secs(5), woke)
            .await
            .expect("webhook arrived");
        lat.push(t0.elapsed());
        let _ = contact_sync_connector::ChangeSource::read_changes(&mut store, None, 100).await;
    }
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e3;
    println!(
        "webhook: edit in Twenty → verified change queued: p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms ({samples} samples)",
        p(0.5),
        p(0.95),
        p(1.0)
    );
    fake.stop().await;
}

fn main() {
    let quick = std::env::args().any(|a| a == "quick");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sizes: &[usize] = if quick {
            &[100, 1000]
        } else {
            &[100, 1000, 5000]
        };
        for &n in sizes {
            for batch in [60, 200] {
                initial_sync(n, batch).await;
            }
        }
        real_limits(2000).await;
        let n = if quick { 300 } else { 1000 };
        matched_rate(n, 1).await;
        matched_rate(n, 2).await;
        webhook_latency(if quick { 50 } else { 200 }).await;
    });
}
