//! Backfill throughput: 100,000 contacts into Postgres through
//! `RecordSink::write_batch`, first as inserts, then as updates (version + 1),
//! then as conditional updates (`write_batch_if` with `Expect::Hash` of the
//! previous write and `external_ids[store]` set, as the engine sends them).
//! Target: ≥ 30,000 contacts/s. Starts a private cluster (test harness).
//!
//! `cargo bench -p contact-sync-postgres --features test-harness --bench backfill`
//! Env: `BENCH_CONTACTS` (default 100000), `BENCH_BATCHES` (batch sizes,
//! default `1000,5000`; a fresh database for each).

use std::time::Instant;

mod common;
use common::{contact, env, hashed};

use contact_sync_connector::{Expect, RecordSink, WriteOutcome};
use contact_sync_core::Contact;
use contact_sync_postgres::harness::{ClusterOptions, PgCluster};
use contact_sync_postgres::{PgConfig, PgStore};

/// Conditional writes; returns contacts/s.
async fn pass_if(
    store: &mut PgStore,
    contacts: &[Contact],
    expect: &[Expect],
    batch: usize,
) -> f64 {
    let start = Instant::now();
    for (chunk, exp) in contacts.chunks(batch).zip(expect.chunks(batch)) {
        let (out, _) = store
            .write_batch_if(chunk.to_vec(), exp)
            .await
            .expect("write_batch_if");
        assert!(
            out.iter()
                .all(|o| matches!(o, WriteOutcome::Applied { .. })),
            "not all applied"
        );
    }
    contacts.len() as f64 / start.elapsed().as_secs_f64()
}

async fn pass(store: &mut PgStore, contacts: &[Contact], batch: usize) -> f64 {
    let start = Instant::now();
    for chunk in contacts.chunks(batch) {
        let out = store.write_batch(chunk).await.expect("write_batch");
        assert!(
            out.iter()
                .all(|o| matches!(o, WriteOutcome::Applied { .. })),
            "not all applied"
        );
    }
    contacts.len() as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let n = env("BENCH_CONTACTS", 100_000);
    let batches: Vec<usize> = std::env::var("BENCH_BATCHES")
        .unwrap_or_else(|_| "1000,5000".into())
        .split(',')
        .filter_map(|b| b.trim().parse().ok())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cluster = PgCluster::start(ClusterOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    for batch in batches {
        rt.block_on(async {
        let url = cluster.server().create_database().await;
        let mut cfg = PgConfig::new("bench", &url);
            cfg.slot_name = format!("bench_{batch}");
            let mut store = PgStore::connect(cfg).await.expect("connect");
        store.migrate().await.expect("migrate");
        let mut contacts: Vec<Contact> = (0..n).map(contact).collect();
        let insert_rate = pass(&mut store, &contacts, batch).await;
        assert_eq!(store.count().await.expect("count"), n as u64);
        for c in &mut contacts {
            c.version += 1;
            c.job_title = Some("Senior Engineer".into());
            *c = hashed(c.clone());
        }
        let update_rate = pass(&mut store, &contacts, batch).await;
        let natives: Vec<String> = {
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect");
            tokio::spawn(conn);
            client
                .query("SELECT id::text FROM contacts ORDER BY contact_id COLLATE \"C\"", &[])
                .await
                .expect("row ids")
                .iter()
                .map(|r| r.get(0))
                .collect()
        };
        let expect: Vec<Expect> = contacts
            .iter()
            .map(|c| Expect::Hash(c.content_hash.clone().unwrap_or_default()))
            .collect();
        for (c, native) in contacts.iter_mut().zip(natives) {
            c.version += 1;
            c.job_title = Some("Staff Engineer".into());
            c.external_ids.insert("bench".into(), native);
            *c = hashed(c.clone());
        }
        let cond_rate = pass_if(&mut store, &contacts, &expect, batch).await;
        println!("postgres backfill: {n} contacts, batches of {batch} (slot mode, REPLICA IDENTITY FULL)");
        println!("  inserts: {insert_rate:>9.0} contacts/s (target >= 30000) {}", if insert_rate >= 30_000.0 { "PASS" } else { "BELOW TARGET" });
        println!("  updates: {update_rate:>9.0} contacts/s (target >= 30000) {}", if update_rate >= 30_000.0 { "PASS" } else { "BELOW TARGET" });
        println!("  conditional updates: {cond_rate:>9.0} contacts/s (Expect::Hash, external_ids set)");
    });
    }
}
