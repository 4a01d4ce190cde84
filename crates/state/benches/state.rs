//! Throughput of the state database's hot paths, on a real WAL file.
//!
//! `cargo bench -p contact-sync-state` (release build). Prints rows/s; no
//! assertions: numbers are for reading, not for failing builds.

use std::time::Instant;

use contact_sync_core::model::now;
use contact_sync_core::{Contact, Email, FieldChange, JournalEntry, Op};
use contact_sync_state::{StateDb, StoreRecord};
use serde_json::json;

const RECORDS: usize = 100_000;
const JOURNAL: usize = 10_000;

fn rate(label: &str, n: usize, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{label:<48} {n:>7} rows in {:>8.1} ms = {:>10.0} rows/s",
        secs * 1e3,
        n as f64 / secs
    );
}

fn record(i: usize, version: i64) -> StoreRecord {
    StoreRecord {
        store: "twenty".to_string(),
        contact_id: format!("c-{i:08}"),
        native_id: Some(format!("7f3c2a90-0000-4000-8000-{i:012}")),
        synced_version: version,
        hash: format!(
            "{:064x}",
            i as u128 * 0x9e37_79b9_7f4a_7c15 + version as u128
        ),
        deleted: false,
        ..Default::default()
    }
}

fn entry(i: usize) -> JournalEntry {
    let id = format!("c-{i:08}");
    let mut c = Contact::new(&id, format!("Person Number {i}"));
    c.first_name = Some("Person".into());
    c.last_name = Some(format!("Number {i}"));
    c.organization = Some("Example Corp".into());
    c.category_code = Some("G".into());
    c.subcategory_code = Some("G2".into());
    c.tags = vec!["work".into(), "bench".into()];
    c.notes = Some("Met at a conference; follow up about the project.".into());
    c.llm_context = Some(json!({
        "relationship_arc": "colleague",
        "key_interests": ["databases", "cycling", "jazz"],
        "closeness_level": 5,
        "important_dates": [{"date": "2020-05-01", "event": "met", "significance": "medium"}]
    }));
    c.emails = vec![Email {
        address: format!("person{i}@example.com"),
        label: Some("work".into()),
        is_primary: true,
    }];
    c.version = 2;
    c.last_updated = Some(now());
    c.last_updated_by = Some("twenty".into());
    JournalEntry {
        seq: 0,
        contact_id: id,
        version: 2,
        prev_version: 1,
        op: Op::Upsert,
        origin: "twenty".into(),
        changes: vec![FieldChange {
            field: "notes".into(),
            old: json!(null),
            new: json!("Met at a conference; follow up about the project."),
        }],
        conflicts: Vec::new(),
        hash: format!("{:064x}", i),
        after: c,
        at: now(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut db = StateDb::open(&dir.path().join("state.db"))?;

    let fresh: Vec<StoreRecord> = (0..RECORDS).map(|i| record(i, 1)).collect();
    let start = Instant::now();
    let tx = db.tx()?;
    for r in &fresh {
        tx.put_store_record(r)?;
    }
    tx.commit()?;
    rate("put_store_record, new, one tx", RECORDS, start);

    let updated: Vec<StoreRecord> = (0..RECORDS).map(|i| record(i, 2)).collect();
    let start = Instant::now();
    let tx = db.tx()?;
    for r in &updated {
        tx.put_store_record(r)?;
    }
    tx.commit()?;
    rate("put_store_record, replace, one tx", RECORDS, start);

    let ids: Vec<String> = (0..RECORDS).map(|i| format!("c-{i:08}")).collect();
    let start = Instant::now();
    let got = db.store_records("twenty", &ids)?;
    rate("store_records, bulk read", got.len(), start);
    assert_eq!(got.len(), RECORDS, "bulk read found every record");

    let start = Instant::now();
    for id in ids.iter().take(10_000) {
        db.store_record("twenty", id)?;
    }
    rate("store_record, one by one", 10_000, start);

    let entries: Vec<JournalEntry> = (0..JOURNAL).map(entry).collect();
    let start = Instant::now();
    let tx = db.tx()?;
    for e in &entries {
        tx.append_journal(e)?;
    }
    tx.commit()?;
    rate("append_journal, one tx", JOURNAL, start);

    let start = Instant::now();
    let mut after = 0;
    let mut read = 0;
    loop {
        let batch = db.journal_after(after, i64::MAX, 500)?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        read += batch.len();
    }
    rate("journal_after, batches of 500", read, start);
    Ok(())
}
