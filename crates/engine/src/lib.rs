//! The sync engine (DESIGN.md, "Sync semantics").
//!
//! One [`Engine`] drives one canonical store and any number of other stores
//! through the state database:
//!
//! 1. **Canonical apply** ([`canonical`]): journal entries not yet in the
//!    canonical store are written to it (the journal is the write-ahead log).
//! 2. **Capture** ([`capture`]): each store's changes are read from its
//!    checkpoint, validated (bad records become dead letters), echo-filtered
//!    by content hash, merged three-way into canonical, journaled; the batch's
//!    journal entries, conflicts, dead letters, sync records and the new
//!    checkpoint commit in one state transaction; then canonical is written
//!    and the store is told it may discard the changes.
//! 3. **Propagate** ([`propagate`]): each store consumes the journal from its
//!    own cursor, writes what it lacks, records the hash written, and only
//!    then advances its cursor.
//!
//! Invariants: a checkpoint or cursor advances only in the same transaction
//! that durably records what it covers; every store write is idempotent and
//! keyed by `contact_id`; a write whose content the store already has is
//! never sent (no echo, no loop), and a store is sent only the newest
//! journal entry of a contact that canonical holds (a replay sends nothing
//! new); after an unconfirmed canonical write, an edit made in canonical
//! meanwhile is not overwritten but merged three-way like any store's; a
//! version journaled from canonical is above every version a store agreed
//! with on other content, so a store's merge base is never mistaken for
//! another record of the same version.

mod backfill;
mod canonical;
mod capture;
mod drift;
mod error;
mod guard;
mod import;
mod merge_people;
mod people;
mod propagate;
mod search;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use contact_sync_connector::Store;
use contact_sync_core::model::Timestamp;
use contact_sync_state::{RunStats, StateDb};
use serde::Serialize;

pub use backfill::{BackfillProgress, StoreVerification};
pub use drift::RepairReport;
pub use drift::UnreadableRecord;
pub use error::EngineError;
pub use guard::MassChangeGuard;
pub use import::{ImportAction, ImportItem, ImportRecord, ImportReport, IMPORT_ORIGIN};
pub use merge_people::{MergeReport, MERGE_ORIGIN};
pub use people::{ErasureReport, ErasureStore, ERASE_ORIGIN};

/// The consumer name of the canonical store in cursors and sync records.
pub const CANONICAL: &str = "canonical";

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Changes read and journal entries written per batch.
    pub batch_size: usize,
    /// Contacts per page when backfilling a store.
    pub backfill_page: usize,
    /// Most batches read from one store in one cycle (bounds a cycle's length).
    pub max_batches_per_cycle: usize,
    /// The mass-change guard.
    pub guard: MassChangeGuard,
    /// The region national phone numbers are read in (`[sync]
    /// default_region`); `None`: only international numbers are accepted.
    pub default_region: Option<contact_sync_core::phone::Region>,
    /// A fingerprint of each store's configuration, by store name (no
    /// secrets in it). A store parked after a permanent error is kept with
    /// its fingerprint; an engine started with another one for that store
    /// tries it again. A store without one is only resumed by a person.
    pub config_hashes: std::collections::BTreeMap<String, String>,
    /// The work this engine does, when several daemons share the state
    /// database and each holds part of it (`[state] url`): [`CANONICAL`]
    /// (canonical's writes and capture) and the names of the stores whose
    /// capture and propagation it runs. `None`: all of it.
    pub only: Option<std::collections::BTreeSet<String>>,
    /// Other engines append to the same journal concurrently (several
    /// daemons): every merge checks, in its commit's transaction, that no
    /// entry was appended for its contacts since it read them, and merges
    /// again if one was. Off for a lone engine (nothing to race).
    pub concurrent: bool,
    /// How long a cycle spends at most filling the search index from
    /// canonical (after an initial sync), once its changes went out. The
    /// daemon sets none and fills it while it waits instead, a slice at a
    /// time, so that no edit waits behind the fill; `run --once` fills it
    /// after its cycle.
    pub search_fill_per_cycle: std::time::Duration,
    /// How long a cycle merges one store's changes at most before it goes
    /// on to write them to the other stores (the rest is merged by the next
    /// cycle, at once: [`CycleReport::more`]). Keeps the lag of every
    /// other store's edits short behind a backlog. `None`: a store's
    /// capture runs until it is drained or
    /// [`max_batches_per_cycle`](Self::max_batches_per_cycle) is reached
    /// (`run --once`, tests that expect one cycle to sync everything). The
    /// daemon sets it (`[sync] capture_budget_ms`).
    pub capture_budget: Option<std::time::Duration>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            batch_size: 100,
            backfill_page: 2000,
            max_batches_per_cycle: 1000,
            guard: MassChangeGuard::default(),
            default_region: None,
            config_hashes: std::collections::BTreeMap::new(),
            only: None,
            concurrent: false,
            search_fill_per_cycle: std::time::Duration::from_secs(20),
            capture_budget: None,
        }
    }
}

/// A source of "now", so tests can control time.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// What one cycle did, per store.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CycleReport {
    pub stores: Vec<StoreReport>,
    /// A store's capture stopped with changes left (its time budget, or
    /// the cycle's bound of batches): the next cycle should start at once.
    pub more: bool,
}

/// What one cycle did for one store.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreReport {
    pub store: String,
    pub stats: RunStats,
    pub error: Option<String>,
}

impl CycleReport {
    /// Errors of this cycle, as `store: message` lines.
    pub fn errors(&self) -> Vec<String> {
        self.stores
            .iter()
            .filter_map(|s| s.error.as_ref().map(|e| format!("{}: {e}", s.store)))
            .collect()
    }

    fn entry(&mut self, store: &str) -> &mut StoreReport {
        if let Some(i) = self.stores.iter().position(|s| s.store == store) {
            return &mut self.stores[i];
        }
        self.stores.push(StoreReport {
            store: store.to_string(),
            ..Default::default()
        });
        self.stores.last_mut().expect("just pushed")
    }
}

/// The sync engine. See the crate docs for the loop and its invariants.
pub struct Engine {
    state: StateDb,
    canonical: Box<dyn Store>,
    stores: Vec<Box<dyn Store>>,
    opts: EngineOptions,
    clock: Clock,
    shutdown: Arc<AtomicBool>,
    /// True after a canonical write failed (or at start-up): canonical may
    /// hold writes the engine did not see confirmed, so the next apply
    /// reads before it writes.
    canonical_uncertain: bool,
    /// Per store: the batches a capture cut short by its time budget read
    /// but did not merge ([`capture::Carry`]).
    carry: std::collections::HashMap<String, capture::Carry>,
    /// The last cycle stopped at its capture budget (this one goes on with
    /// the backlog), and when each store with metered reads was last read.
    continuing: bool,
    metered_read_at: std::collections::HashMap<String, std::time::Instant>,
}

/// In a cycle that goes on with a backlog, a store whose reads cost a
/// request of a shared budget (`ChangeSource::metered_reads`) is read at
/// most this often.
pub const METERED_READ_SPACING: std::time::Duration = std::time::Duration::from_secs(5);

impl Engine {
    /// An engine over `canonical` and the other `stores`. Store names must
    /// be unique and none may be named [`CANONICAL`].
    pub fn new(
        state: StateDb,
        canonical: Box<dyn Store>,
        stores: Vec<Box<dyn Store>>,
        opts: EngineOptions,
    ) -> Result<Engine, EngineError> {
        let mut names = std::collections::BTreeSet::new();
        for s in &stores {
            if s.name() == CANONICAL || !names.insert(s.name().to_string()) {
                return Err(EngineError::Config(format!(
                    "store name {:?} is used twice (or is reserved for the canonical store)",
                    s.name()
                )));
            }
        }
        Ok(Engine {
            state,
            canonical,
            stores,
            opts,
            clock: Arc::new(contact_sync_core::model::now),
            shutdown: Arc::new(AtomicBool::new(false)),
            canonical_uncertain: true,
            carry: std::collections::HashMap::new(),
            continuing: false,
            metered_read_at: std::collections::HashMap::new(),
        })
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    /// A flag that, once set, makes the engine stop after the batch in
    /// flight (SIGINT/SIGTERM).
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    pub fn state(&self) -> &StateDb {
        &self.state
    }

    pub fn state_mut(&mut self) -> &mut StateDb {
        &mut self.state
    }

    /// Whether this engine does `work` ([`CANONICAL`] or a store's name):
    /// see [`EngineOptions::only`].
    pub fn runs(&self, work: &str) -> bool {
        self.opts.only.as_ref().is_none_or(|o| o.contains(work))
    }

    /// Names of the non-canonical stores, in configuration order.
    pub fn store_names(&self) -> Vec<String> {
        self.stores.iter().map(|s| s.name().to_string()).collect()
    }

    /// The store called `name` (`canonical` for the canonical store).
    pub fn store_mut(&mut self, name: &str) -> Option<&mut (dyn Store + 'static)> {
        if name == CANONICAL {
            return Some(self.canonical.as_mut());
        }
        self.stores
            .iter_mut()
            .find(|s| s.name() == name)
            .map(|s| s.as_mut())
    }

    /// One full cycle: finish canonical writes, capture canonical's own
    /// changes, capture and merge every store's changes, then propagate the
    /// journal to every store. A failing store is reported and skipped; the
    /// others go on. A failing canonical store fails the cycle.
    pub async fn cycle(&mut self) -> Result<CycleReport, EngineError> {
        let mut report = CycleReport::default();
        // Every store this engine runs has its line in the report, idle or
        // not (another daemon reports the others).
        if self.runs(CANONICAL) {
            report.entry(CANONICAL);
        }
        for s in &self.stores {
            if self.runs(s.name()) {
                report.entry(s.name());
            }
        }
        if self.runs(CANONICAL) {
            self.apply_canonical(&mut report).await?;
            self.capture_canonical(&mut report).await?;
        }
        // Stores written to in this cycle: only those whose changes were
        // all captured (a store with changes left would have its pending
        // edits raced by the writes), and none that is paused.
        let mut writable = vec![false; self.stores.len()];
        for (i, w) in writable.iter_mut().enumerate() {
            if self.stopping() {
                break;
            }
            let name = self.stores[i].name().to_string();
            if !self.runs(&name) {
                continue;
            }
            let (runs, approved) = match self.settle_pause(i, &mut report).await {
                Ok(v) => v,
                Err(e) => {
                    self.store_failed(&name, "settling a pause", e, &mut report)?;
                    continue;
                }
            };
            if !runs {
                continue;
            }
            if self.stores[i].wants_held() {
                self.tell_held(i)?;
            }
            // A store with metered reads that had nothing left at its last
            // read is not read in every short cycle of a backlog (each read
            // of it is a request of its budget). It is written as if that
            // read had just been made: a cycle of a few seconds reads and
            // writes as far apart, and its writes are conditional (an edit
            // made there since refuses them and is captured).
            let metered = self.stores[i].metered_reads();
            if metered
                && self.continuing
                && self
                    .metered_read_at
                    .get(&name)
                    .is_some_and(|t| t.elapsed() < METERED_READ_SPACING)
            {
                *w = self.state.paused(&name)?.is_none();
                continue;
            }
            let read_at = std::time::Instant::now();
            match self.capture_store(i, &mut report, approved).await {
                Ok(drained) => {
                    if metered && drained {
                        self.metered_read_at.insert(name.clone(), read_at);
                    } else {
                        self.metered_read_at.remove(&name);
                    }
                    *w = drained && self.state.paused(&name)?.is_none()
                }
                Err(e) => self.store_failed(&name, "capture", e, &mut report)?,
            }
        }
        for (i, w) in writable.into_iter().enumerate() {
            if self.stopping() || !w {
                continue;
            }
            let name = self.stores[i].name().to_string();
            if let Err(e) = self.propagate_store(i, &mut report).await {
                self.store_failed(&name, "propagation", e, &mut report)?;
            }
        }
        // After the cycle's changes went out: the search index's fill from
        // canonical (after an initial sync, or for an older state
        // database) never delays them.
        if !self.stopping() && self.runs(CANONICAL) {
            self.fill_search_index().await;
        }
        let now = (self.clock)();
        let tx = self.state.tx()?;
        for s in &report.stores {
            tx.record_run(&s.store, &s.stats, s.error.as_deref(), now)?;
        }
        tx.commit()?;
        self.continuing = report.more;
        Ok(report)
    }

    /// A step of one store failed: reported (and the store paused when the
    /// error says its schema or stream changed, or parked when retrying
    /// cannot help); the others go on. An error that is not the store's
    /// fails the cycle.
    fn store_failed(
        &mut self,
        name: &str,
        step: &str,
        e: EngineError,
        report: &mut CycleReport,
    ) -> Result<(), EngineError> {
        // What a cut-short capture kept is read again after a failure, and a
        // store with metered reads is read at the next cycle.
        self.carry.remove(name);
        self.metered_read_at.remove(name);
        if !e.is_store_error() {
            return Err(e);
        }
        if self.pause_on_error(name, step, &e)? {
            report.entry(name).error = Some(format!("paused: {e}"));
            return Ok(());
        }
        tracing::warn!(store = %name, error = %e, alert = "sync_failure", "{step} failed");
        report.entry(name).error = Some(e.to_string());
        Ok(())
    }

    /// Tells store `i` what the state database says it holds (live
    /// records with a native id), so a record removed while no engine ran
    /// (a person destroyed in Twenty) is seen as a delete
    /// ([`contact_sync_connector::ChangeSource::held`]).
    fn tell_held(&mut self, i: usize) -> Result<(), EngineError> {
        let name = self.stores[i].name().to_string();
        let mut held = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .state
                .store_records_held(&name, after.as_deref(), 10_000)?;
            let Some(last) = page.last() else { break };
            after = Some(last.contact_id.clone());
            held.extend(
                page.into_iter()
                    .filter_map(|r| r.native_id.map(|n| (r.contact_id, n))),
            );
        }
        self.stores[i].held(held);
        Ok(())
    }

    /// Whether a capture or propagation that started at `since` has spent
    /// the cycle's [`EngineOptions::capture_budget`] (never without one).
    pub(crate) fn budget_spent(&self, since: std::time::Instant) -> bool {
        self.opts
            .capture_budget
            .is_some_and(|b| since.elapsed() >= b)
    }

    /// Pending journal entries for a store: journal head minus its cursor.
    pub fn pending(&self, store: &str) -> Result<i64, EngineError> {
        Ok(self.state.journal_head()? - self.state.cursor(store)?)
    }
}

/// The daemon runs cycles on a multi-threaded runtime: a cycle must stay
/// `Send` (no state transaction held across an await). Checked at compile
/// time.
#[allow(dead_code)]
fn _cycle_is_send(e: &'static mut Engine) {
    fn is_send<T: Send>(_: T) {}
    is_send(e.cycle());
}
