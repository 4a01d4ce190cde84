//! A test world: a canonical store and two other stores in memory, and a
//! state database in a temporary file that survives "crashes".

#![allow(dead_code)]

use std::path::PathBuf;

use contact_sync_connector::Store;
use contact_sync_core::{content_hash, Contact, Email};
use contact_sync_engine::{Engine, EngineOptions};
use contact_sync_memory::{FaultControl, FaultPlan, FaultyStore, MemoryHandle, MemoryOptions};
use contact_sync_state::StateDb;

pub struct World {
    pub dir: tempfile::TempDir,
    pub canonical: MemoryHandle,
    /// A database-like store: keeps versions, keyed by contact_id.
    pub local: MemoryHandle,
    /// A CRM-like store: no versions, its own ids.
    pub crm: MemoryHandle,
    pub faults: Option<Vec<FaultControl>>,
    pub batch_size: usize,
}

impl World {
    pub fn new() -> World {
        World {
            dir: tempfile::tempdir().expect("tempdir"),
            canonical: MemoryHandle::new(MemoryOptions::new("canonical").echo_own_writes(false)),
            local: MemoryHandle::new(MemoryOptions::new("local")),
            crm: MemoryHandle::new(MemoryOptions::new("crm").keeps_version(false).own_ids(true)),
            faults: None,
            // 7 unless BATCH says otherwise (soak runs with other batch sizes).
            batch_size: std::env::var("BATCH")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(7),
        }
    }

    /// Every store wrapped in a fault injector that passes every call
    /// through (faults and hooks are switched on by hand).
    pub fn passthrough() -> World {
        let w = World::new().with_faults([FaultPlan::new(1), FaultPlan::new(2), FaultPlan::new(3)]);
        for c in w.faults.as_ref().expect("faults") {
            c.disable();
        }
        w
    }

    /// Wraps every store in a fault injector with these plans.
    pub fn with_faults(mut self, plans: [FaultPlan; 3]) -> World {
        self.faults = Some(plans.into_iter().map(FaultControl::new).collect());
        self
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.path().join("state.db")
    }

    /// A fresh engine over the same data (a restart).
    pub fn engine(&self) -> Engine {
        self.engine_configured(Default::default())
    }

    /// [`World::engine`] with fingerprints of the stores' configurations.
    pub fn engine_configured(
        &self,
        config_hashes: std::collections::BTreeMap<String, String>,
    ) -> Engine {
        self.engine_with(|o| o.config_hashes = config_hashes)
    }

    /// [`World::engine`] with options changed by `f`.
    pub fn engine_with(&self, f: impl FnOnce(&mut EngineOptions)) -> Engine {
        let mut opts = EngineOptions {
            batch_size: self.batch_size,
            backfill_page: 5,
            max_batches_per_cycle: 1000,
            ..Default::default()
        };
        f(&mut opts);
        let state = StateDb::open(&self.state_path()).expect("state db");
        let wrap = |h: &MemoryHandle, i: usize| -> Box<dyn Store> {
            match &self.faults {
                Some(f) => Box::new(FaultyStore::new(h.store(), f[i].clone())),
                None => Box::new(h.store()),
            }
        };
        Engine::new(
            state,
            wrap(&self.canonical, 0),
            vec![wrap(&self.local, 1), wrap(&self.crm, 2)],
            opts,
        )
        .expect("engine")
    }

    pub fn heal(&self) {
        if let Some(f) = &self.faults {
            for c in f {
                c.heal();
                c.disable();
            }
        }
    }

    /// Live contacts of a store as (contact_id → content hash).
    pub fn live_hashes(h: &MemoryHandle) -> Vec<(String, String)> {
        h.live()
            .iter()
            .map(|c| (c.contact_id.clone(), content_hash(c)))
            .collect()
    }

    /// Asserts that every store holds exactly canonical's live contacts, with
    /// the same content, each once and with its contact id.
    pub fn assert_converged(&self) {
        let want = World::live_hashes(&self.canonical);
        for (name, h) in [("local", &self.local), ("crm", &self.crm)] {
            let all = h.all();
            let missing_id: Vec<_> = all.iter().filter(|c| c.contact_id.is_empty()).collect();
            assert!(
                missing_id.is_empty(),
                "{name} has records without contact_id: {missing_id:?}"
            );
            let got = World::live_hashes(h);
            if got != want {
                let diff: Vec<_> = want
                    .iter()
                    .filter(|w| !got.contains(w))
                    .map(|w| format!("canonical {}", w.0))
                    .chain(
                        got.iter()
                            .filter(|g| !want.contains(g))
                            .map(|g| format!("{name} {}", g.0)),
                    )
                    .collect();
                panic!("{name} differs from canonical: {diff:?}");
            }
        }
    }
}

/// A valid contact.
pub fn person(id: &str, name: &str) -> Contact {
    let mut c = Contact::new(id, name);
    c.category_code = Some("B".into());
    c.subcategory_code = Some("B1".into());
    c.job_title = Some("Engineer".into());
    c.emails.push(Email {
        address: format!("{}@example.com", id.to_lowercase()),
        label: None,
        is_primary: true,
    });
    c
}

/// Runs cycles until one does nothing (at most `max`); returns how many ran.
pub async fn settle(engine: &mut Engine, max: usize) -> usize {
    for i in 1..=max {
        let r = engine.cycle().await.expect("cycle");
        if std::env::var("DEBUG_CASE").is_ok() {
            let head = engine.state().journal_head().unwrap();
            eprintln!(
                "cycle {i}: head {head} {:?}",
                r.stores
                    .iter()
                    .map(|s| (&s.store, s.stats.captured, s.stats.applied, s.stats.written))
                    .collect::<Vec<_>>()
            );
        }
        assert!(r.errors().is_empty(), "cycle errors: {:?}", r.errors());
        let busy: u64 = r
            .stores
            .iter()
            .map(|s| s.stats.applied + s.stats.written + s.stats.captured)
            .sum();
        if busy == 0 {
            return i;
        }
    }
    panic!("did not settle in {max} cycles");
}
