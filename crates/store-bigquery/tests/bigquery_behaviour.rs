//! What local-bigquery 0.4.0 does not do as BigQuery does, through a
//! loopback recording proxy in front of it that answers as BigQuery
//! documents: `tables.get` (the idle check), DML over rows in the
//! streaming buffer (refused), and requests over 10 MB (refused).
//!
//! **The idle check.**
//! local-bigquery 0.4.0 changes `lastModifiedTime` only on a metadata patch
//! (probed: not on DML INSERT/UPDATE/DELETE/MERGE, `insertAll` or load
//! jobs), counts row *versions* in `numRows` (an UPDATE adds one, a DELETE
//! removes none), so on it alone an idle check can be shown to skip
//! queries but not to notice the edits it must notice. BigQuery documents
//! `lastModifiedTime` as "the time when this table was last modified, in
//! milliseconds since the epoch" (REST reference, `tables` resource,
//! <https://cloud.google.com/bigquery/docs/reference/rest/v2/tables>), and
//! its `etag` as "not guaranteed to change when the table contents or the
//! fields numRows, numBytes, numLongTermBytes or lastModifiedTime change"
//! (the v2 API's generated `Table` reference): the contents move
//! `lastModifiedTime`, and Google's own DLP treats a table as modified
//! exactly "when the last_modified_time from BigQuery has been updated"
//! (`BigQueryTableModification.TABLE_MODIFIED_TIMESTAMP`).
//!
//! So these tests put a loopback recording proxy between the store and the
//! emulator. It forwards every call, records it, and answers `tables.get`
//! as BigQuery does: `lastModifiedTime` moves when the table's contents
//! changed since the last answer (judged by a digest of every row, read
//! straight from the emulator, not through the proxy), `numRows` is the
//! number of rows, `numBytes` their size. What is proven here: an idle
//! poll (and an idle engine cycle) sends no query job; an edit that moves
//! only `lastModifiedTime` (an unbumped UPDATE of the same size) makes the
//! next poll look and deliver it; and, with the proxy holding
//! `lastModifiedTime` still as the emulator does, that edit is not seen
//! until it moves — the idle check rests on that field. What is not proven
//! here: that BigQuery moves `lastModifiedTime` on every kind of write
//! (documented above, not testable without BigQuery).
//!
//! **The streaming buffer.** BigQuery refuses an UPDATE, DELETE or MERGE
//! that would touch rows still in the streaming buffer (rows written by
//! `insertAll`, for up to ~90 minutes) with HTTP 400, reason
//! `invalidQuery`, "… would affect rows in the streaming buffer, which is
//! not supported"; the emulator applies it. The proxy refuses a MERGE
//! carrying an id it is told is in the buffer, with that answer.
//!
//! **Requests over 10 MB.** BigQuery refuses an HTTP request larger than
//! 10 MB ("Request payload size exceeds the limit: 10485760 bytes", HTTP
//! 400); the emulator takes it. The proxy refuses such requests so.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use common::{python, TestDataset, PROJECT};
use contact_sync_bigquery::{BigQueryClient, BigQueryStore};
use contact_sync_connector::{
    Change, ChangeKind, ChangeSource, Checkpoint, RecordSink, StoreInfo, WriteOutcome,
};
use contact_sync_core::{content_hash, Contact};
use contact_sync_engine::{Engine, EngineOptions};
use contact_sync_sqlite::SqliteStore;
use contact_sync_state::StateDb;
use serde_json::Value;

/// What `tables.get` served for a table: `lastModifiedTime`, `numRows`,
/// `numBytes`.
type Served = (i64, i64, i64);

struct Proxy {
    upstream: String,
    http: reqwest::Client,
    /// Reads digests straight from the emulator.
    direct: BigQueryClient,
    /// Every call forwarded: (method, path).
    log: Mutex<Vec<(String, String)>>,
    /// Per table path: the contents digest last seen and the
    /// `lastModifiedTime` served.
    tables: Mutex<HashMap<String, (String, i64)>>,
    served: Mutex<Vec<Served>>,
    /// Hold `lastModifiedTime` still (as the emulator does on DML).
    frozen: AtomicBool,
    /// Ids "in the streaming buffer": a MERGE carrying one is refused.
    streaming: Mutex<Vec<String>>,
    /// MERGEs refused for the streaming buffer.
    refused: Mutex<usize>,
    /// The largest request body forwarded.
    largest: Mutex<usize>,
}

impl Proxy {
    /// Query jobs sent since the log was last cleared (`jobs.query`,
    /// `jobs.insert`).
    fn jobs(&self) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, p)| m == "POST" && (p.ends_with("/queries") || p.ends_with("/jobs")))
            .count()
    }

    fn table_gets(&self) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, p)| m == "GET" && table_path(p).is_some())
            .count()
    }

    fn clear(&self) {
        self.log.lock().unwrap().clear();
        self.served.lock().unwrap().clear();
    }

    /// `tables.get` as BigQuery answers it (see the module docs).
    async fn rewrite(&self, path: &str, (ds, table): (&str, &str), body: &mut Value) {
        let sql = format!(
            "SELECT COUNT(*) AS n, BIT_XOR(FARM_FINGERPRINT(TO_JSON_STRING(t))) AS d, \
             SUM(BYTE_LENGTH(TO_JSON_STRING(t))) AS b FROM `{PROJECT}.{ds}.{table}` t"
        );
        let res = self
            .direct
            .query(&sql, &[], "the proxy's digest")
            .await
            .expect("digest");
        let row = &res.rows[0];
        let int = |k: &str| row.get(k).and_then(Value::as_i64).unwrap_or(0);
        let digest = format!("{}:{}", int("n"), int("d"));
        let emulator_lmt: i64 = body["lastModifiedTime"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let now = chrono::Utc::now().timestamp_millis();
        let mut tables = self.tables.lock().unwrap();
        let e = tables
            .entry(path.to_string())
            .or_insert_with(|| (digest.clone(), emulator_lmt));
        if e.0 != digest && !self.frozen.load(Ordering::SeqCst) {
            e.0 = digest;
            e.1 = now.max(e.1 + 1);
        }
        let lmt = e.1.max(emulator_lmt);
        body["lastModifiedTime"] = Value::String(lmt.to_string());
        body["numRows"] = Value::String(int("n").to_string());
        body["numBytes"] = Value::String(int("b").to_string());
        self.served.lock().unwrap().push((lmt, int("n"), int("b")));
    }
}

/// `(dataset, table)` of a `tables.get` path.
fn table_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(&format!("/bigquery/v2/projects/{PROJECT}/datasets/"))?;
    let mut parts = rest.split('/');
    let (ds, t, table, end) = (parts.next()?, parts.next()?, parts.next()?, parts.next());
    (t == "tables" && end.is_none()).then_some((ds, table))
}

async fn handle(State(p): State<Arc<Proxy>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let pq = req
        .uri()
        .path_and_query()
        .map(|x| x.as_str().to_string())
        .unwrap_or_else(|| path.clone());
    let ctype = req.headers().get("content-type").cloned();
    let body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .expect("request body");
    p.log
        .lock()
        .unwrap()
        .push((method.to_string(), path.clone()));
    if body.len() > 10 * 1024 * 1024 {
        return answer(
            400,
            serde_json::json!({"error": {"code": 400,
                "message": "Request payload size exceeds the limit: 10485760 bytes.",
                "errors": [{"reason": "badRequest", "message": "Request payload size exceeds the limit: 10485760 bytes."}]}}),
        );
    }
    {
        let mut l = p.largest.lock().unwrap();
        *l = (*l).max(body.len());
    }
    if method == "POST" && path.ends_with("/queries") {
        let req: Value = serde_json::from_slice(&body).unwrap_or_default();
        let sql = req["query"].as_str().unwrap_or_default();
        let params = req["queryParameters"].to_string();
        let hit = sql.trim_start().starts_with("MERGE")
            && sql.contains(".contacts`")
            && p.streaming
                .lock()
                .unwrap()
                .iter()
                .any(|id| params.contains(&format!("\"{id}\"")));
        if hit {
            *p.refused.lock().unwrap() += 1;
            let m = "UPDATE or DELETE statement over table test-project.d.contacts would affect rows in the streaming buffer, which is not supported";
            return answer(
                400,
                serde_json::json!({"error": {"code": 400, "message": m,
                    "errors": [{"reason": "invalidQuery", "message": m}]}}),
            );
        }
    }
    let m = reqwest::Method::from_bytes(method.as_str().as_bytes()).expect("method");
    let mut fwd = p
        .http
        .request(m, format!("{}{pq}", p.upstream))
        .body(body.to_vec());
    if let Some(c) = ctype {
        fwd = fwd.header("content-type", c.as_bytes());
    }
    let resp = fwd.send().await.expect("the emulator answers");
    let status = resp.status().as_u16();
    let mut bytes = resp.bytes().await.expect("answer").to_vec();
    if method == "GET" && status == 200 {
        if let Some(t) = table_path(&path) {
            let mut v: Value = serde_json::from_slice(&bytes).expect("a table resource");
            p.rewrite(&path, t, &mut v).await;
            bytes = serde_json::to_vec(&v).expect("json");
        }
    }
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

fn answer(status: u16, v: Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = StatusCode::from_u16(status).expect("status");
    r.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    r
}

/// Starts the proxy on a free loopback port; returns its URL.
async fn proxy(ds: &TestDataset) -> (String, Arc<Proxy>) {
    let p = Arc::new(Proxy {
        upstream: common::url(),
        http: reqwest::Client::new(),
        direct: ds.client.clone(),
        log: Mutex::default(),
        tables: Mutex::default(),
        served: Mutex::default(),
        frozen: AtomicBool::new(false),
        streaming: Mutex::default(),
        refused: Mutex::default(),
        largest: Mutex::default(),
    });
    let app = axum::Router::new().fallback(handle).with_state(p.clone());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", l.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(l, app).await });
    (url, p)
}

fn contact(id: &str) -> Contact {
    let mut c = Contact::new(id, "Ida");
    c.version = 1;
    c.last_updated = Some(contact_sync_core::model::now());
    c.notes = Some("from the engine".into());
    c.content_hash = Some(content_hash(&c));
    c
}

async fn drain(store: &mut BigQueryStore, cp: &mut Checkpoint) -> Vec<Change> {
    let mut all = Vec::new();
    for _ in 0..20 {
        let b = store.read_changes(Some(cp), 100).await.expect("poll");
        store.acknowledge(&b.checkpoint).await.expect("ack");
        *cp = b.checkpoint;
        if b.changes.is_empty() {
            return all;
        }
        all.extend(b.changes);
    }
    panic!("never caught up");
}

/// Polls `n` times: nothing changes, nothing is asked but `tables.get`.
async fn assert_idle(store: &mut BigQueryStore, p: &Proxy, cp: &Checkpoint, n: usize, why: &str) {
    p.clear();
    for _ in 0..n {
        let b = store.read_changes(Some(cp), 100).await.expect("poll");
        assert!(b.changes.is_empty(), "{why}: {:?}", b.changes);
        assert_eq!(&b.checkpoint, cp, "{why}");
    }
    assert_eq!(
        p.jobs(),
        0,
        "{why}: no query job; sent {:?}",
        p.log.lock().unwrap()
    );
    assert_eq!(p.table_gets(), n, "{why}: one tables.get per poll");
}

#[tokio::test]
async fn an_idle_poll_sends_no_query_and_an_edit_moving_only_last_modified_time_is_seen() {
    let ds = TestDataset::create("idleproxy").await;
    let (url, p) = proxy(&ds).await;
    let mut cfg = ds.config();
    cfg.idle_check = true;
    BigQueryStore::migrate(&ds.client, &cfg)
        .await
        .expect("migrate");
    let client = BigQueryClient::emulator(&url, PROJECT).expect("client");
    let mut store = BigQueryStore::open(client, cfg).await.expect("open");
    store
        .write_batch(&[contact("a1"), contact("a2"), contact("a3")])
        .await
        .expect("seed");
    let b = store.read_changes(None, 100).await.expect("first poll");
    store.acknowledge(&b.checkpoint).await.expect("ack");
    let mut cp = b.checkpoint;
    drain(&mut store, &mut cp).await;
    assert_idle(&mut store, &p, &cp, 3, "idle table").await;
    let before = *p.served.lock().unwrap().last().expect("served");

    // An analyst's UPDATE that bumps nothing and keeps the row's size:
    // only lastModifiedTime tells.
    python(
        &ds,
        "run(f\"UPDATE {T} SET notes = 'from an analyst' WHERE contact_id = @id\", id='a1')",
    );
    p.clear();
    let got = drain(&mut store, &mut cp).await;
    let first = *p.served.lock().unwrap().first().expect("served");
    assert_eq!(
        (first.1, first.2),
        (before.1, before.2),
        "numRows/numBytes unchanged"
    );
    assert!(
        first.0 > before.0,
        "lastModifiedTime moved: {before:?} → {first:?}"
    );
    assert!(p.jobs() > 0, "the poll looked");
    assert!(
        got.iter().any(|c| matches!(&c.kind, ChangeKind::Upsert(x)
            if x.contact_id == "a1" && x.notes.as_deref() == Some("from an analyst"))),
        "{got:?}"
    );
    assert_idle(&mut store, &p, &cp, 2, "idle again").await;

    // A hard DELETE.
    python(
        &ds,
        "run(f\"DELETE FROM {T} WHERE contact_id = @id\", id='a2')",
    );
    let got = drain(&mut store, &mut cp).await;
    assert!(
        got.iter()
            .any(|c| c.native_id == "a2" && matches!(c.kind, ChangeKind::Delete { .. })),
        "{got:?}"
    );
    assert_idle(&mut store, &p, &cp, 2, "idle after the delete").await;

    // Control: with lastModifiedTime held still (the emulator's way), the
    // same kind of edit is not seen; it is once the field moves.
    p.frozen.store(true, Ordering::SeqCst);
    python(
        &ds,
        "run(f\"UPDATE {T} SET notes = 'from analyst 2!' WHERE contact_id = @id\", id='a3')",
    );
    assert_idle(&mut store, &p, &cp, 2, "lastModifiedTime held still").await;
    p.frozen.store(false, Ordering::SeqCst);
    let got = drain(&mut store, &mut cp).await;
    assert!(
        got.iter().any(|c| matches!(&c.kind, ChangeKind::Upsert(x)
            if x.contact_id == "a3" && x.notes.as_deref() == Some("from analyst 2!"))),
        "{got:?}"
    );
    assert_eq!(store.name(), "canonical");
    ds.cleanup().await;
}

#[tokio::test]
async fn an_idle_engine_cycle_sends_no_query_job_to_bigquery() {
    let ds = TestDataset::create("idlecycle").await;
    let (url, p) = proxy(&ds).await;
    let mut cfg = ds.config();
    cfg.idle_check = true;
    cfg.journal_table = None;
    BigQueryStore::migrate(&ds.client, &cfg)
        .await
        .expect("migrate");
    let mut seed = BigQueryStore::open(ds.client.clone(), cfg.clone())
        .await
        .expect("open");
    seed.write_batch(&[contact("e1"), contact("e2")])
        .await
        .expect("seed");
    let client = BigQueryClient::emulator(&url, PROJECT).expect("client");
    let canonical = BigQueryStore::open(client, cfg).await.expect("open");
    let dir = tempfile::tempdir().expect("tempdir");
    let local = SqliteStore::open(&dir.path().join("local.db"), "local").expect("sqlite");
    let mut e = Engine::new(
        StateDb::open_in_memory().expect("state"),
        Box::new(canonical),
        vec![Box::new(local)],
        EngineOptions::default(),
    )
    .expect("engine");
    let mut progress = |_: &str, _: u64, _: u64| {};
    e.initial_sync(&mut progress).await.expect("initial sync");
    // Cycles until one sends no job (the sweep after the initial sync and
    // the acknowledgements come first); a deadline, not a count.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        p.clear();
        let r = e.cycle().await.expect("cycle");
        assert!(r.errors().is_empty(), "{:?}", r.errors());
        if p.jobs() == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no cycle without a query job; last sent {:?}",
            p.log.lock().unwrap()
        );
    }
    // And it stays so.
    p.clear();
    e.cycle().await.expect("idle cycle");
    assert_eq!(p.jobs(), 0, "an idle cycle: {:?}", p.log.lock().unwrap());
    assert!(
        p.table_gets() >= 1,
        "the cycle looked at the table's metadata"
    );

    // An unbumped UPDATE by an analyst reaches the local store.
    python(
        &ds,
        "run(f\"UPDATE {T} SET notes = 'from an analyst' WHERE contact_id = @id\", id='e1')",
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        e.cycle().await.expect("cycle");
        let s = e.store_mut("local").expect("local");
        let got = s.read(&["e1".to_string()]).await.expect("read");
        if got.first().and_then(|c| c.notes.as_deref()) == Some("from an analyst") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the edit never arrived"
        );
    }
    // Journaled like any other edit: a new version whose change is the notes.
    let j = e.state().journal_of("e1", 10).expect("journal");
    let entry = j
        .iter()
        .find(|x| x.after.notes.as_deref() == Some("from an analyst"))
        .unwrap_or_else(|| panic!("no journal entry for the analyst's edit: {j:?}"));
    assert!(entry.version > entry.prev_version, "{entry:?}");
    assert!(
        entry.changes.iter().any(|c| c.field == "notes"),
        "{:?}",
        entry.changes
    );
    ds.cleanup().await;
}

/// A MERGE over a row still in the streaming buffer is refused by
/// BigQuery; the row is deferred (`Changed`: the engine tries again next
/// cycle) and the rest of the batch applies.
#[tokio::test]
async fn rows_in_the_streaming_buffer_are_deferred_and_the_rest_applies() {
    let ds = TestDataset::create("streambuf").await;
    let (url, p) = proxy(&ds).await;
    let cfg = ds.config();
    BigQueryStore::migrate(&ds.client, &cfg)
        .await
        .expect("migrate");
    let client = BigQueryClient::emulator(&url, PROJECT).expect("client");
    let mut store = BigQueryStore::open(client, cfg).await.expect("open");
    let ids = ["k1", "k2", "s1", "k3", "k4"];
    let seeded: Vec<Contact> = ids
        .iter()
        .filter(|i| **i != "s1")
        .map(|i| contact(i))
        .collect();
    store.write_batch(&seeded).await.expect("seed");
    // A pipeline streams s1 (insertAll): it sits in the streaming buffer.
    python(
        &ds,
        "errs = client.insert_rows_json(DS + '.contacts', [{'contact_id': 's1', 'canonical_name': 'Streamed', 'version': 1}])\nassert not errs, errs",
    );
    p.streaming.lock().unwrap().push("s1".into());
    let writes: Vec<Contact> = ids
        .iter()
        .map(|id| {
            let mut c = contact(id);
            c.canonical_name = "Engine".into();
            c.version = 2;
            c.content_hash = Some(content_hash(&c));
            c
        })
        .collect();
    let out = store
        .write_batch(&writes)
        .await
        .expect("not a failed batch");
    for (id, o) in ids.iter().zip(&out) {
        if *id == "s1" {
            assert_eq!(*o, WriteOutcome::Changed, "s1 deferred");
        } else {
            assert!(matches!(o, WriteOutcome::Applied { .. }), "{id}: {o:?}");
        }
    }
    assert!(*p.refused.lock().unwrap() >= 2, "halved until s1 was alone");
    let names: HashMap<String, String> = store
        .read(&ids.map(String::from))
        .await
        .expect("read")
        .into_iter()
        .map(|c| (c.contact_id, c.canonical_name))
        .collect();
    for id in ids {
        let want = if id == "s1" { "Streamed" } else { "Engine" };
        assert_eq!(names[id], want, "{id}");
    }
    // Once the buffer is flushed the deferred write applies.
    p.streaming.lock().unwrap().clear();
    let again = store
        .write_batch(std::slice::from_ref(&writes[2]))
        .await
        .expect("write");
    assert!(
        matches!(again[0], WriteOutcome::Applied { .. }),
        "{again:?}"
    );
    ds.cleanup().await;
}

/// BigQuery refuses requests over 10 MB: a batch of large contacts (about
/// 12 MB of rows) is split so that every request passes.
#[tokio::test]
async fn a_batch_over_10_mb_goes_in_requests_under_10_mb() {
    let ds = TestDataset::create("tenmb").await;
    let (url, p) = proxy(&ds).await;
    let cfg = ds.config();
    BigQueryStore::migrate(&ds.client, &cfg)
        .await
        .expect("migrate");
    let client = BigQueryClient::emulator(&url, PROJECT).expect("client");
    let mut store = BigQueryStore::open(client, cfg).await.expect("open");
    let big = "x".repeat(6_000);
    let writes: Vec<Contact> = (0..2_000)
        .map(|i| {
            let mut c = contact(&format!("b{i:04}"));
            c.notes = Some(format!("{i} {big}"));
            c.content_hash = Some(content_hash(&c));
            c
        })
        .collect();
    p.clear();
    let out = store.write_batch(&writes).await.expect("write");
    assert!(out
        .iter()
        .all(|o| matches!(o, WriteOutcome::Applied { .. })));
    let largest = *p.largest.lock().unwrap();
    assert!(largest <= 10 * 1024 * 1024, "largest request {largest} B");
    assert!(p.jobs() >= 2, "split: {} MERGE requests", p.jobs());
    assert_eq!(store.count().await.expect("count"), 2_000);
    ds.cleanup().await;
}
