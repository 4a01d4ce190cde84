//! Server time of the console's pages over a big state database: 1M sync
//! records, 1M contacts in the search index (as an initial sync leaves
//! them: indexed, not journaled), 100k journal entries, 10k conflicts
//! (half open), 10k dead letters, 7 days of run history for 4 stores (the
//! overview's charts draw the last 24 h). Searches are POSTs (the query
//! stays out of URLs), with the CSRF token. Each page is fetched over loopback HTTP (the time includes the
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
    // The search index, as the initial sync's pages fill it (2,000 a page).
    let ti = Instant::now();
    let mut page = Vec::with_capacity(2000);
    for i in 0..RECORDS {
        page.push(contact(i));
        if page.len() == 2000 {
            tx.index_contacts(&page).unwrap();
            page.clear();
        }
    }
    eprintln!(
        "indexed {RECORDS} contacts in {:.1} s ({:.1} µs each)",
        ti.elapsed().as_secs_f64(),
        ti.elapsed().as_secs_f64() * 1e6 / RECORDS as f64
    );
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
    {
        let db = StateDb::open(&path).unwrap();
        let (n, _) = db.search_index_status().unwrap();
        let size = |sql: &str| -> f64 {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap_or(0) as f64 / (1 << 20) as f64
        };
        eprintln!(
            "state.db {:.0} MiB; search index: {n} contacts, {:.0} MiB (search_docs {:.0} + FTS {:.0})",
            std::fs::metadata(&path).unwrap().len() as f64 / (1 << 20) as f64,
            size("SELECT SUM(pgsize) FROM dbstat WHERE name LIKE 'search%' OR name LIKE 'sqlite_autoindex_search%'"),
            size("SELECT SUM(pgsize) FROM dbstat WHERE name = 'search_docs' OR name LIKE 'sqlite_autoindex_search_docs%'"),
            size("SELECT SUM(pgsize) FROM dbstat WHERE name LIKE 'search_fts%'"),
        );
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (c, mut rx) = console::Console::new(
            ConsoleConfig {
                state: contact_sync_state::StateTarget::Path(path.clone()),
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
        let session: serde_json::Value = http
            .get(format!("{base}/api/session"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let csrf = session["csrf_token"].as_str().unwrap().to_string();
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
            ("search <id>".into(), "POST /search c-00050000".into()),
            (
                "search <id> of a contact never journaled".into(),
                "POST /search c-00750000".into(),
            ),
            ("search <native id>".into(), "POST /search 999999".into()),
            (
                "search <email> (1 hit)".into(),
                "POST /search person999999@example.com".into(),
            ),
            (
                "search <part of an email> (1 hit)".into(),
                "POST /search person12345@exa".into(),
            ),
            (
                "search <name words> (1 hit)".into(),
                "POST /search number 765432".into(),
            ),
            (
                "search <name prefix> (1M hits, page 1)".into(),
                "POST /search pers".into(),
            ),
            (
                "search <name words> `number 5` (111,111 hits, page 1)".into(),
                "POST /search number 5".into(),
            ),
            ("search <no match>".into(), "POST /search zebra".into()),
            (
                "/api/search <name prefix>, limit 500".into(),
                "POST /api/search person".into(),
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
                let r = if let Some(q) = path.strip_prefix("POST /search ") {
                    http.post(format!("{base}/search"))
                        .form(&[("csrf", csrf.as_str()), ("q", q)])
                        .send()
                        .await
                        .unwrap()
                } else if let Some(q) = path.strip_prefix("POST /api/search ") {
                    http.post(format!("{base}/api/search"))
                        .header("X-CSRF-Token", &csrf)
                        .json(&json!({"q": q, "limit": 500}))
                        .send()
                        .await
                        .unwrap()
                } else {
                    http.get(&url).send().await.unwrap()
                };
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
