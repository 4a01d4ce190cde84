//! A small real deployment for the ops tests: a canonical and a `local`
//! in-memory store, synthetic contacts, a state database in a temp dir, and
//! an engine that has run its initial sync and one cycle.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use contact_sync_connector::Store;
use contact_sync_core::synth::Generator;
use contact_sync_core::{Contact, DeadLetter, FieldConflict, Resolution};
use contact_sync_engine::{Engine, EngineOptions};
use contact_sync_memory::{MemoryHandle, MemoryOptions};
use contact_sync_state::StateDb;

pub struct World {
    pub dir: tempfile::TempDir,
    pub canonical: MemoryHandle,
    pub local: MemoryHandle,
    pub contacts: Vec<Contact>,
}

impl World {
    /// `n` synthetic contacts in canonical.
    pub fn new(n: u64) -> World {
        let canonical = MemoryHandle::new(MemoryOptions::new("canonical").echo_own_writes(false));
        let local = MemoryHandle::new(MemoryOptions::new("local"));
        let mut g = Generator::new(7);
        let mut contacts = Vec::new();
        for i in 0..n {
            let c = g.contact(i);
            canonical.user_upsert(c.clone());
            contacts.push(c);
        }
        World {
            dir: tempfile::tempdir().expect("tempdir"),
            canonical,
            local,
            contacts,
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    /// An engine over the two stores, after its initial sync and one cycle.
    pub async fn synced_engine(&self) -> Engine {
        let state = StateDb::open(&self.state_path()).expect("state db");
        let stores: Vec<Box<dyn Store>> = vec![Box::new(self.local.store())];
        let mut engine = Engine::new(
            state,
            Box::new(self.canonical.store()),
            stores,
            EngineOptions::default(),
        )
        .expect("engine");
        let mut progress = |_: &str, _: u64, _: u64| {};
        let v = engine
            .initial_sync(&mut progress)
            .await
            .expect("initial sync");
        assert!(v.iter().all(|v| v.drift_pct == 0.0), "{v:?}");
        // Every contact edited once in canonical after the initial sync
        // (which journals nothing), so the journal holds one entry each.
        for c in &self.contacts {
            let mut c = self.canonical.get(&c.contact_id).expect("seeded");
            c.notes = Some("Edited after the initial sync".into());
            self.canonical.user_upsert(c);
        }
        engine.cycle().await.expect("cycle");
        engine
    }

    /// Every piece of contact data a leak test must not find.
    pub fn contact_texts(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.contacts {
            out.push(c.canonical_name.clone());
            out.extend(c.emails.iter().map(|e| e.address.clone()));
            out.extend(c.phones.iter().map(|p| p.number.clone()));
        }
        out
    }
}

/// Adds one dead letter and one open conflict, as the engine would.
pub fn add_dead_letter_and_conflict(state: &mut StateDb, contact: &Contact) {
    let tx = state.tx().expect("tx");
    tx.add_dead_letter(&DeadLetter {
        id: 0,
        store: "local".into(),
        record: contact.contact_id.clone(),
        field: "emails".into(),
        reason: "not an email address".into(),
        payload: None,
        at: contact_sync_core::model::now(),
    })
    .expect("dead letter");
    tx.add_conflict(
        &contact.contact_id,
        "local",
        &FieldConflict {
            field: "job_title".into(),
            base: serde_json::json!("Engineer"),
            canonical: serde_json::json!("Architect"),
            incoming: serde_json::json!("Designer"),
            canonical_version: 2,
            incoming_version: 2,
            resolution: Resolution::Open,
        },
        contact_sync_core::model::now(),
    )
    .expect("conflict");
    tx.commit().expect("commit");
}

/// Records `n` failed runs of `store` with this error text.
pub fn record_failures(state: &mut StateDb, store: &str, n: usize, error: &str) {
    let tx = state.tx().expect("tx");
    for _ in 0..n {
        tx.record_run(
            store,
            &Default::default(),
            Some(error),
            contact_sync_core::model::now(),
        )
        .expect("record run");
    }
    tx.commit().expect("commit");
}

/// Parses Prometheus text into (metric name, store label or "") → value,
/// checking that every sample line was understood and documented.
pub fn parse_metrics(text: &str) -> (prometheus_parse::Scrape, HashMap<(String, String), f64>) {
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("parse");
    let sample_lines = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .count();
    assert_eq!(
        scrape.samples.len(),
        sample_lines,
        "every sample parsed:\n{text}"
    );
    let mut values = HashMap::new();
    for s in &scrape.samples {
        assert!(s.metric.starts_with("contact_sync_"), "{}", s.metric);
        assert!(scrape.docs.contains_key(&s.metric), "HELP for {}", s.metric);
        let v = match s.value {
            prometheus_parse::Value::Counter(v) => {
                assert!(s.metric.ends_with("_total"), "counter {}", s.metric);
                v
            }
            prometheus_parse::Value::Gauge(v) => {
                assert!(!s.metric.ends_with("_total"), "gauge {}", s.metric);
                v
            }
            ref other => panic!("unexpected type for {}: {other:?}", s.metric),
        };
        let store = s.labels.get("store").unwrap_or("").to_string();
        let dup = values.insert((s.metric.clone(), store), v);
        assert!(dup.is_none(), "duplicate sample {}", s.metric);
    }
    (scrape, values)
}
