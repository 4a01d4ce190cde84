//! Change capture from the replication slot, on a private cluster (test
//! harness: fsync and full_page_writes off).
//!
//! `cargo bench -p contact-sync-postgres --features test-harness --bench capture`
//!
//! - `BENCH_MODE=first` (default): the first capture after a backfill.
//!   Writes `BENCH_CONTACTS` (default 100000) contacts through
//!   `write_batch_if` in pages of 2000 (as the engine's initial sync), makes
//!   one edit as a user (plain SQL), then drains the slot as the engine does
//!   (`read_changes` of 100, `acknowledge` after each batch) until it is
//!   empty or `BENCH_DEADLINE_S` (default 300) passes. Prints the time, the
//!   changes delivered (own writes among them), when the user's edit came,
//!   the WAL the slot retains before and after, and how long idle polls
//!   (once a second) take until it retains under 16 MiB. The backfill runs
//!   inside `begin_bulk_load` / `end_bulk_load` as the initial sync's does
//!   (`BENCH_BULK=0`: without, the capture then reads its WAL).
//! - `BENCH_MODE=busy`: `BENCH_RATES` (edits/s, default `1000`) for
//!   `BENCH_SECONDS` (default 60) each, on `BENCH_CONTACTS` (default 10000)
//!   rows: single-row UPDATEs in their own transactions from 4 connections
//!   (loopback), while one reader drains the slot (`read_changes` of 100,
//!   `acknowledge`, woken by NOTIFY). Lag = from sending an edit's UPDATE to
//!   `read_changes` returning it. Prints p50/p99/max per 10 s window and
//!   overall, and the backlog left when the edits stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{contact, env};

use contact_sync_connector::{ChangeKind, ChangeSource, Checkpoint, Expect, RecordSink};
use contact_sync_postgres::harness::{ClusterOptions, PgCluster};
use contact_sync_postgres::{PgConfig, PgStore};

async fn backfill(store: &mut PgStore, n: usize) -> Duration {
    let start = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + 2000).min(n);
        let page: Vec<_> = (i..end).map(contact).collect();
        let expect = vec![Expect::Absent; page.len()];
        let (out, _) = store.write_batch_if(page, &expect).await.expect("write");
        assert_eq!(out.len(), end - i);
        i = end;
    }
    start.elapsed()
}

async fn sql(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

fn mib(b: Option<i64>) -> f64 {
    b.unwrap_or(0) as f64 / 1048576.0
}

async fn first(url: &str) {
    let n = env("BENCH_CONTACTS", 100_000);
    let deadline = Duration::from_secs(env("BENCH_DEADLINE_S", 300) as u64);
    let mut cfg = PgConfig::new("bench", url);
    cfg.slot_name = "bench_first".into();
    let mut store = PgStore::connect(cfg).await.expect("connect");
    store.migrate().await.expect("migrate");
    // As the initial sync writes: inside a bulk load (its WAL skipped by the
    // capture when nobody else wrote meanwhile); BENCH_BULK=0 without.
    let bulk = env("BENCH_BULK", 1) == 1;
    if bulk {
        store.begin_bulk_load().await.expect("begin bulk load");
    }
    let took = backfill(&mut store, n).await;
    if bulk {
        store.end_bulk_load().await.expect("end bulk load");
    }
    let user = sql(url).await;
    user.execute(
        "UPDATE contacts SET notes = 'edited by a user' WHERE contact_id = $1",
        &[&"c-00000007"],
    )
    .await
    .expect("user edit");
    let before = store.slot_health().await.expect("health");
    println!(
        "backfill: {n} contacts in {:.1} s (bulk load: {bulk}); provenance: {}; slot retains {:.1} MiB",
        took.as_secs_f64(),
        before.provenance,
        mib(before.retained_wal_bytes)
    );
    let start = Instant::now();
    let mut from: Option<Checkpoint> = None;
    let (mut changes, mut own, mut batches) = (0usize, 0usize, 0usize);
    let mut edit_at: Option<Duration> = None;
    let mut first_read: Option<(Duration, usize)> = None;
    loop {
        let b = store.read_changes(from.as_ref(), 100).await.expect("read");
        batches += 1;
        if first_read.is_none() {
            first_read = Some((start.elapsed(), b.changes.len()));
        }
        for ch in &b.changes {
            changes += 1;
            if let ChangeKind::Upsert(c) = &ch.kind {
                if c.content_hash.is_some() {
                    own += 1;
                } else if c.notes.as_deref() == Some("edited by a user") {
                    edit_at.get_or_insert(start.elapsed());
                }
            }
        }
        store.acknowledge(&b.checkpoint).await.expect("ack");
        from = Some(b.checkpoint);
        if b.changes.is_empty() && !b.has_more {
            break;
        }
        if start.elapsed() > deadline {
            println!("  stopped at the deadline ({} s)", deadline.as_secs());
            break;
        }
    }
    let took = start.elapsed();
    let after = store.slot_health().await.expect("health");
    // PostgreSQL moves a slot's restart point (what decides the WAL it
    // keeps) only at xl_running_xacts records (every 15 s of activity):
    // poll as an idle daemon does, once a second, until the WAL is let go.
    let idle = Instant::now();
    let mut released = None;
    while idle.elapsed() < Duration::from_secs(60) {
        let b = store.read_changes(from.as_ref(), 100).await.expect("read");
        store.acknowledge(&b.checkpoint).await.expect("ack");
        from = Some(b.checkpoint);
        let h = store.slot_health().await.expect("health");
        if h.retained_wal_bytes.unwrap_or(0) < 16 << 20 {
            released = Some((idle.elapsed(), h.retained_wal_bytes));
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let (fr_t, fr_n) = first_read.unwrap_or_default();
    println!(
        "first capture: {:.2} s, {batches} reads, {changes} changes delivered ({own} own writes); \
         first read {:.3} s returned {fr_n}; the user's edit {}; slot retains {:.1} MiB after (was {:.1})",
        took.as_secs_f64(),
        fr_t.as_secs_f64(),
        edit_at
            .map(|t| format!("after {:.3} s", t.as_secs_f64()))
            .unwrap_or_else(|| "NOT delivered".into()),
        mib(after.retained_wal_bytes),
        mib(before.retained_wal_bytes),
    );
    match released {
        Some((t, b)) => println!(
            "  idle polls once a second: retains {:.1} MiB {:.1} s later",
            mib(b),
            t.as_secs_f64()
        ),
        None => println!("  idle polls once a second: still over 16 MiB after 60 s"),
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

async fn busy(url: &str) {
    let n = env("BENCH_CONTACTS", 10_000);
    let secs = env("BENCH_SECONDS", 60);
    let rates: Vec<usize> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| "1000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let mut cfg = PgConfig::new("bench", url);
    cfg.slot_name = "bench_busy".into();
    let mut store = PgStore::connect(cfg).await.expect("connect");
    store.migrate().await.expect("migrate");
    backfill(&mut store, n).await;
    let notifier = store.change_notifier().await.expect("listen");
    // Drain the backfill first.
    let mut from: Option<Checkpoint> = None;
    loop {
        let b = store.read_changes(from.as_ref(), 1000).await.expect("read");
        store.acknowledge(&b.checkpoint).await.expect("ack");
        from = Some(b.checkpoint);
        if b.changes.is_empty() && !b.has_more {
            break;
        }
    }
    let mut seq_base = 0usize;
    for rate in rates {
        let total = rate * secs;
        let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; total]));
        let done = Arc::new(AtomicBool::new(false));
        let mut editors = Vec::new();
        let conns = 4usize;
        let start = Instant::now();
        for k in 0..conns {
            let client = sql(url).await;
            let sent = sent.clone();
            editors.push(tokio::spawn(async move {
                let stmt = client
                    .prepare("UPDATE contacts SET notes = $1 WHERE contact_id = $2")
                    .await
                    .expect("prepare");
                // Edit j is due at start + j/rate; this connection sends
                // every conns-th edit, waiting for its time (bounded loop).
                let mut j = k;
                while j < total {
                    let due = start + Duration::from_secs_f64(j as f64 / rate as f64);
                    tokio::time::sleep_until(due.into()).await;
                    let note = format!("busy {}", seq_base + j);
                    let cid = format!("c-{:08}", (j * 7919) % n);
                    sent.lock().expect("lock")[j] = Some(Instant::now());
                    client.execute(&stmt, &[&note, &cid]).await.expect("edit");
                    j += conns;
                }
            }));
        }
        let edits_done = {
            let done = done.clone();
            tokio::spawn(async move {
                for e in editors {
                    e.await.expect("editor");
                }
                done.store(true, Ordering::SeqCst);
                Instant::now()
            })
        };
        // (second since start, lag ms)
        let mut lags: Vec<(u64, f64)> = Vec::with_capacity(total);
        let mut seen = 0usize;
        let mut backlog_end: Option<Instant> = None;
        let mut read_time = Duration::ZERO;
        let mut reads = 0usize;
        let limit = Instant::now() + Duration::from_secs(secs as u64 * 10 + 60);
        while seen < total && Instant::now() < limit {
            let t0 = Instant::now();
            let b = store.read_changes(from.as_ref(), 100).await.expect("read");
            read_time += t0.elapsed();
            reads += 1;
            let now = Instant::now();
            {
                let sent = sent.lock().expect("lock");
                for ch in &b.changes {
                    if let ChangeKind::Upsert(c) = &ch.kind {
                        let Some(s) = c.notes.as_deref().and_then(|s| s.strip_prefix("busy "))
                        else {
                            continue;
                        };
                        let Ok(j) = s.parse::<usize>() else { continue };
                        let Some(j) = j.checked_sub(seq_base) else {
                            continue;
                        };
                        if let Some(Some(at)) = sent.get(j) {
                            lags.push((
                                at.duration_since(start).as_secs(),
                                now.duration_since(*at).as_secs_f64() * 1000.0,
                            ));
                            seen += 1;
                        }
                    }
                }
            }
            store.acknowledge(&b.checkpoint).await.expect("ack");
            from = Some(b.checkpoint);
            if done.load(Ordering::SeqCst) && backlog_end.is_none() {
                backlog_end = Some(Instant::now());
            }
            if b.changes.is_empty() && !b.has_more {
                let _ = tokio::time::timeout(Duration::from_millis(200), notifier.wait()).await;
            }
        }
        let ended = edits_done.await.expect("editors");
        let caught_up = Instant::now();
        let sent_for = ended.duration_since(start).as_secs_f64();
        println!(
            "busy: {rate} edits/s asked for {secs} s on {n} rows: {total} edits sent in {sent_for:.1} s \
             ({:.0}/s achieved), {seen} captured; {reads} reads, {:.1} s inside read_changes; \
             caught up {:.2} s after the last edit",
            total as f64 / sent_for,
            read_time.as_secs_f64(),
            caught_up.duration_since(ended).as_secs_f64(),
        );
        let windows = secs.div_ceil(10) as u64;
        for w in 0..windows {
            let mut v: Vec<f64> = lags
                .iter()
                .filter(|(s, _)| *s / 10 == w)
                .map(|(_, l)| *l)
                .collect();
            println!(
                "  {:>3}-{:<3} s: {:>6} edits  lag p50 {:>8.1} ms  p99 {:>8.1} ms  max {:>8.1} ms",
                w * 10,
                w * 10 + 10,
                v.len(),
                pct(&mut v, 0.5),
                pct(&mut v, 0.99),
                pct(&mut v, 1.0)
            );
        }
        let mut all: Vec<f64> = lags.iter().map(|(_, l)| *l).collect();
        println!(
            "  overall: lag p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
            pct(&mut all, 0.5),
            pct(&mut all, 0.99),
            pct(&mut all, 1.0)
        );
        seq_base += total;
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cluster = PgCluster::start(ClusterOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    rt.block_on(async {
        let url = cluster.server().create_database().await;
        match std::env::var("BENCH_MODE").as_deref().unwrap_or("first") {
            "busy" => busy(&url).await,
            _ => first(&url).await,
        }
    });
}
