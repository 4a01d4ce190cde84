//! Server time of the console's pages over a big state database: 1M sync
//! records, 100k journal entries, 10k conflicts (half open), 10k dead
//! letters, 7 days of run history for 4 stores (the overview's charts
//! draw the last 24 h). Each page is fetched over loopback HTTP (the time includes the
//! request on loopback); median and p95 of 30 fetches after 3 warm-ups.
//! `cargo bench -p contact-sync-ops --bench console`; `CONSOLE_BENCH_PAGES=overview`
//! measures only the pages whose name contains that text. Numbers in BENCHMARKS.md.

use std::time::{Duration, Instant};

use contact_sync_core::journal::{FieldChange, Op};
use contact_sync_core::model::{now, Email};
use contact_sync_core::{Contact, DeadLetter, FieldConflict, JournalEntry, Resolution};
use contact_sync_ops::console::{self, ConsoleConfig, ConsoleRequest};
use contact_sync_ops::{OpsHandle, ServerConfig};
use contact_sync_state::{RunStats, StateDb, StoreRecord, BUCKET_SECS};
use serde_json::json;

const RECORDS: usize = 1_000_000;
const JOURNAL: usize = 100_000;
const CONFLICTS: usize = 10_000;
const DEAD: usize = 10_000;

fn contact(i: usize) -> Contact {
    let mut c = Contact::new(format!("c-{i:08}"), format!("Person Number {i}"));
    c.first_name = Some("Person".into());
    c.last_name = Some(format!("Number {i}"));
    c.emails = vec![Email {
        address: format!("person{i}@example.com"),
        label: None,
        is_primary: true,
    }];
    c.notes = Some("Met at a conference; follow up about the project.".into());
    c
}

fn fill(db: &mut StateDb) {
    let t = Instant::now();
    let tx = db.tx().unwrap();
    let mut batch = Vec::with_capacity(10_000);
    for i in 0..RECORDS {
        batch.push(StoreRecord {
            store: "local".into(),
            contact_id: format!("c-{i:08}"),
            native_id: Some(i.to_string()),
            synced_version: 1,
            hash: format!("{i:064x}"),
            ..StoreRecord::default()
        });
        if batch.len() == 10_000 {
            tx.put_store_records(&batch).unwrap();
            batch.clear();
        }
    }
    for i in 0..JOURNAL {
        let c = contact(i);
        tx.append_journal(&JournalEntry {
            seq: 0,
            contact_id: c.contact_id.clone(),
            version: 2,
            prev_version: 1,
            op: Op::Upsert,
            origin: "local".into(),
            changes: vec![FieldChange {
                field: "notes".into(),
                old: json!(null),
                new: json!(c.notes),
            }],
            conflicts: Vec::new(),
            hash: format!("{i:064x}"),
            after: c,
            at: now(),
        })
        .unwrap();
    }
    for i in 0..CONFLICTS {
        let f = FieldConflict {
            field: "job_title".into(),
            base: json!("Engineer"),
            canonical: json!(format!("Senior Engineer {i}")),
            incoming: json!(format!("Staff Engineer {i}")),
            canonical_version: 2,
            incoming_version: 2,
            resolution: if i % 2 == 0 {
                Resolution::Open
            } else {
                Resolution::IncomingByTime
            },
        };
        tx.add_conflict(&format!("c-{i:08}"), "local", &f, now())
            .unwrap();
    }
    for i in 0..DEAD {
        tx.add_dead_letter(&DeadLetter {
            id: 0,
            store: "local".into(),
            record: format!("row-{i}"),
            field: "emails".into(),
            reason: format!("emails[0]: \"person{i}@\" is not an email address"),
            payload: Some(json!({"id": i, "emails": [format!("person{i}@")]})),
            at: now(),
        })
        .unwrap();
    }
    // Run history: a cycle per bucket for a week, 4 stores, with some
    // changes and now and then a failure (lag grows).
    let t0 = now();
    for k in (0..(7 * 24 * 3600 / BUCKET_SECS)).rev() {
        let at = t0 - chrono::Duration::seconds(k * BUCKET_SECS);
        for (j, store) in ["canonical", "local", "twenty", "supabase"]
            .iter()
            .enumerate()
        {
            let n = (k as u64 * 7 + j as u64 * 13) % 40;
            let stats = RunStats {
                captured: n,
                applied: n / 2,
                written: n / 3,
                ..RunStats::default()
            };
            let failed = (k + j as i64) % 29 < 3;
            tx.record_run(store, &stats, failed.then_some("timeout"), at)
                .unwrap();
        }
    }
    tx.commit().unwrap();
    eprintln!(
        "filled the state database in {:.1} s",
        t.elapsed().as_secs_f64()
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    fill(&mut StateDb::open(&path).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (c, mut rx) = console::Console::new(
            ConsoleConfig {
                state_path: path.clone(),
                stores: vec!["canonical".into(), "local".into()],
                token: None,
                allow_remote: false,
            },
            OpsHandle::default(),
        )
        .unwrap();
        // The daemon's side: answers reads with nothing (the stores are not
        // part of this measurement).
        tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                if let ConsoleRequest::ReadContact { reply, .. } = req {
                    let _ = reply.send(Vec::new());
                }
            }
        });
        let server = contact_sync_ops::serve(
            &ServerConfig::loopback(0),
            OpsHandle::default(),
            console::router(c),
        )
        .await
        .unwrap();
        let base = format!("http://{}", server.local_addr());
        let http = reqwest::Client::new();
        let mid_conflict = CONFLICTS / 2;
        let mid_dead = DEAD / 2;
        let pages = [
            (
                "overview / (with the 24 h charts, 4 stores)".to_string(),
                "/".to_string(),
            ),
            ("/api/history (24 h)".into(), "/api/history".into()),
            ("/conflicts (open, page 1)".into(), "/conflicts".into()),
            (
                "/conflicts (open, middle page)".into(),
                format!("/conflicts?before={mid_conflict}"),
            ),
            (
                "/conflicts?all=1 (page 1)".into(),
                "/conflicts?all=1".into(),
            ),
            ("/dead-letters (page 1)".into(), "/dead-letters".into()),
            (
                "/dead-letters (middle page)".into(),
                format!("/dead-letters?before={mid_dead}"),
            ),
            ("/paused".into(), "/paused".into()),
            (
                "/contact/<id> (journal part)".into(),
                "/contact/c-00050000".into(),
            ),
            ("/search?q=<id>".into(), "/search?q=c-00050000".into()),
            ("/search?q=<native id>".into(), "/search?q=999999".into()),
            (
                "/search?q=<email> (journal scan)".into(),
                "/search?q=person99999%40example.com".into(),
            ),
            ("/api/overview".into(), "/api/overview".into()),
            (
                "/api/conflicts?limit=500".into(),
                "/api/conflicts?limit=500".into(),
            ),
            (
                "/api/dead-letters?limit=500".into(),
                "/api/dead-letters?limit=500".into(),
            ),
        ];
        println!("| page | median ms | p95 ms | bytes |");
        println!("|---|---:|---:|---:|");
        let only = std::env::var("CONSOLE_BENCH_PAGES").unwrap_or_default();
        for (name, path) in pages.into_iter().filter(|(n, _)| n.contains(only.as_str())) {
            let url = format!("{base}{path}");
            let mut times: Vec<Duration> = Vec::new();
            let mut size = 0;
            for i in 0..33 {
                let t = Instant::now();
                let r = http.get(&url).send().await.unwrap();
                assert!(r.status().is_success(), "{path}: {}", r.status());
                let body = r.bytes().await.unwrap();
                if i >= 3 {
                    times.push(t.elapsed());
                }
                size = body.len();
            }
            times.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            println!(
                "| {name} | {:.2} | {:.2} | {size} |",
                ms(times[times.len() / 2]),
                ms(times[times.len() * 95 / 100])
            );
        }
        server.shutdown().await.unwrap();
    });
}
