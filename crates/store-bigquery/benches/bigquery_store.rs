//! Writes 10,000 changed contacts into the BigQuery store on the local
//! emulator in batches of 100 and 500 and prints the number of jobs (must
//! be ≤ ceil(N / batch) + 2), contacts/s and the latency per call; then
//! reads every change back in pages of 1,000.
//!
//!   cargo bench -p contact-sync-bigquery --bench bigquery_store
//!
//! Env: CONTACT_SYNC_BQ_URL (else the emulator is installed/started as in
//! the tests), BQ_BENCH_CONTACTS (default 10000), BQ_BENCH_BATCHES
//! (default "100,500").

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use contact_sync_connector::{ChangeSource, RecordSink, WriteOutcome};
use contact_sync_core::synth::Generator;
use contact_sync_core::Contact;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

struct Pass {
    jobs: u64,
    elapsed: Duration,
    lat: Vec<Duration>,
}

async fn write_all(
    store: &mut contact_sync_bigquery::BigQueryStore,
    contacts: &[Contact],
    batch: usize,
) -> Pass {
    let jobs0 = store.jobs_issued();
    let mut lat = Vec::new();
    let t0 = Instant::now();
    for chunk in contacts.chunks(batch) {
        let t = Instant::now();
        let out = store.write_batch(chunk).await.expect("write_batch");
        lat.push(t.elapsed());
        assert!(
            out.iter()
                .all(|o| matches!(o, WriteOutcome::Applied { .. })),
            "every write must apply"
        );
    }
    let elapsed = t0.elapsed();
    lat.sort();
    Pass {
        jobs: store.jobs_issued() - jobs0,
        elapsed,
        lat,
    }
}

fn report(what: &str, n: usize, batch: usize, p: &Pass) -> bool {
    let budget = n.div_ceil(batch) as u64 + 2;
    let ok = p.jobs <= budget;
    println!(
        "{what:<22} batch {batch:>4}: {n} contacts, {jobs} jobs (budget {budget}: {verdict}), {rate:.0} contacts/s, \
         per call p50 {p50} p95 {p95} max {max}",
        jobs = p.jobs,
        verdict = if ok { "ok" } else { "OVER" },
        rate = n as f64 / p.elapsed.as_secs_f64(),
        p50 = ms(pct(&p.lat, 0.5)),
        p95 = ms(pct(&p.lat, 0.95)),
        max = ms(pct(&p.lat, 1.0)),
    );
    ok
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run());
}

async fn run() {
    let n: usize = std::env::var("BQ_BENCH_CONTACTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let batches: Vec<usize> = std::env::var("BQ_BENCH_BATCHES")
        .unwrap_or_else(|_| "100,500".into())
        .split(',')
        .filter_map(|b| b.trim().parse().ok())
        .collect();
    drop(common::TestDataset::create("bench").await);
    println!("BigQuery store on the local emulator (local-bigquery), {n} contacts");
    let mut g = Generator::new(42);
    let base: Vec<Contact> = (0..n as u64).map(|i| g.contact(i)).collect();
    let mut all_ok = true;
    for batch in batches {
        let ds = common::TestDataset::create("bench").await;
        let mut store = ds.store().await;
        let load = write_all(&mut store, &base, batch).await;
        all_ok &= report("initial load (new)", n, batch, &load);
        let now = contact_sync_core::model::now();
        let changed: Vec<Contact> = base
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c.version += 1;
                c.job_title = Some(format!("Changed {}", c.contact_id));
                c.last_updated = Some(now);
                c
            })
            .collect();
        let upd = write_all(&mut store, &changed, batch).await;
        all_ok &= report("changed contacts", n, batch, &upd);

        let jobs0 = store.jobs_issued();
        let t0 = Instant::now();
        let mut cp = None;
        let mut seen = 0;
        loop {
            let b = store
                .read_changes(cp.as_ref(), 1000)
                .await
                .expect("read_changes");
            seen += b.changes.len();
            cp = Some(b.checkpoint);
            if !b.has_more {
                break;
            }
        }
        let el = t0.elapsed();
        println!(
            "{:<22} page 1000: {seen} changes, {} jobs, {:.0} changes/s",
            "change capture",
            store.jobs_issued() - jobs0,
            seen as f64 / el.as_secs_f64()
        );
        assert_eq!(seen, n, "every changed contact is captured once");
        ds.cleanup().await;
    }
    if !all_ok {
        eprintln!("FAIL: more jobs than ceil(N / batch) + 2");
        std::process::exit(1);
    }
}
