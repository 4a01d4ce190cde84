//! What change capture and conditional writes cost, in query jobs (and
//! bytes, where the server reports them): an idle cycle, 100 and 1,000
//! changes at batch 100 (conditional write + capture), and one sweep over
//! a table of `BQ_BENCH_SWEEP_ROWS` rows (default 100,000, generated
//! server-side).
//!
//!   cargo bench -p contact-sync-bigquery --bench capture_cost

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use contact_sync_bigquery::{BigQueryStore, BigQueryUsage};
use contact_sync_connector::{ChangeSource, Checkpoint, Expect, RecordSink};
use contact_sync_core::synth::Generator;
use contact_sync_core::{content_hash, Contact};

fn diff(a: BigQueryUsage, b: BigQueryUsage) -> String {
    format!(
        "{} queries, {} calls, {} B processed, {} B billed",
        b.queries - a.queries,
        b.calls - a.calls,
        b.bytes_processed - a.bytes_processed,
        b.bytes_billed - a.bytes_billed
    )
}

async fn drain(store: &mut BigQueryStore, cp: &mut Option<Checkpoint>) -> usize {
    let mut n = 0;
    loop {
        let b = store.read_changes(cp.as_ref(), 100).await.expect("read");
        store.acknowledge(&b.checkpoint).await.expect("ack");
        n += b.changes.len();
        *cp = Some(b.checkpoint);
        if b.changes.is_empty() {
            return n;
        }
    }
}

#[tokio::main]
async fn main() {
    let rows: u64 = std::env::var("BQ_BENCH_SWEEP_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let ds = common::TestDataset::create("cost").await;
    let mut cfg = ds.config();
    cfg.idle_check = true;
    cfg.sweep_every = Some(3);
    BigQueryStore::migrate(&ds.client, &cfg)
        .await
        .expect("migrate");
    let mut store = BigQueryStore::open(ds.client.clone(), cfg.clone())
        .await
        .expect("open");
    let mut g = Generator::new(7);
    let base: Vec<Contact> = (0..1000).map(|i| g.contact(i)).collect();
    for chunk in base.chunks(100) {
        store.write_batch(chunk).await.expect("seed");
    }
    let mut cp = None;
    drain(&mut store, &mut cp).await;
    let u = store.usage();
    let t = Instant::now();
    for _ in 0..3 {
        drain(&mut store, &mut cp).await;
    }
    println!(
        "idle cycle (x3, after a sweep): {} in {:?}",
        diff(u, store.usage()),
        t.elapsed()
    );
    for n in [100usize, 1000] {
        let ids: Vec<String> = base[..n].iter().map(|c| c.contact_id.clone()).collect();
        let held_now = store.read(&ids).await.expect("read");
        let u = store.usage();
        let t = Instant::now();
        let writes: Vec<(Contact, Expect)> = held_now
            .into_iter()
            .map(|held| {
                let e = Expect::Hash(content_hash(&held));
                let mut w = held.clone();
                w.notes = Some(format!("edit {n}"));
                w.version += 1;
                w.last_updated = Some(contact_sync_core::model::now());
                (w, e)
            })
            .collect();
        for chunk in writes.chunks(100) {
            let (w, e): (Vec<Contact>, Vec<Expect>) = chunk.iter().cloned().unzip();
            store.write_batch_if(w, &e).await.expect("write");
        }
        let w = store.usage();
        let got = drain(&mut store, &mut cp).await;
        println!(
            "{n} changes at batch 100: writes {}; capture of {got} changes {}; total {:?}",
            diff(u, w),
            diff(w, store.usage()),
            t.elapsed()
        );
    }
    // The sweep at `rows` rows: rows generated server-side.
    let sql = format!(
        "INSERT INTO {} (contact_id, canonical_name, version) SELECT CONCAT('g', CAST(x AS STRING)), 'Gen', 1 FROM UNNEST(GENERATE_ARRAY(1, {rows})) AS x",
        ds.table_sql("contacts")
    );
    ds.client
        .query(&sql, &[], "generate rows")
        .await
        .expect("generate");
    let mut cfg2 = cfg.clone();
    cfg2.sweep_every = Some(1);
    let mut s2 = BigQueryStore::open(ds.client.clone(), cfg2)
        .await
        .expect("open");
    // First sweep: every generated row is new to the sidecar.
    let mut cp2 = cp.clone();
    let t = Instant::now();
    let u = s2.usage();
    let n = drain(&mut s2, &mut cp2).await;
    println!(
        "first sweep over {rows} new rows: {n} changes, {} in {:?}",
        diff(u, s2.usage()),
        t.elapsed()
    );
    // A sweep that finds nothing.
    let t = Instant::now();
    let u = s2.usage();
    let b = s2.read_changes(cp2.as_ref(), 100).await.expect("read");
    println!(
        "sweep over {} rows finding {} changes: {} in {:?}",
        rows + 1000,
        b.changes.len(),
        diff(u, s2.usage()),
        t.elapsed()
    );
    ds.cleanup().await;
}
