//! Per-store initial syncs in the daemon: a store whose backfill has not
//! finished is held out of the sync cycles (its capture and propagation
//! report "waiting for its initial sync") and its backfill is retried with
//! exponential backoff, while the other stores keep syncing. A store that
//! cannot even be opened at start-up is held the same way. A finished
//! backfill is never redone by a restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use contact_sync_connector::{
    ChangeBatch, ChangeSource, Checkpoint, Conditional, Expect, HashScan, RecordHash, RecordSink,
    Store, StoreError, StoreInfo, WriteOutcome,
};
use contact_sync_core::Contact;
use contact_sync_engine::{Engine, EngineError, EngineOptions};
use contact_sync_state::StateDb;
use tokio::sync::Notify;

use crate::config::Config;
use crate::daemon::Stopper;

/// Whether store `name` needs a backfill: never finished one, one was
/// interrupted (the engine keeps its resume point in `backfill:<store>`),
/// or `seed` / `cdc reset` asked for one (`backfill_requested_at`) after
/// the last one finished (`backfill_completed_at:<store>`).
pub fn needs_backfill(state: &StateDb, name: &str) -> anyhow::Result<bool> {
    if state
        .meta(&format!("backfill:{name}"))?
        .is_some_and(|s| !s.is_empty())
    {
        return Ok(true);
    }
    let done = state
        .meta(&format!("backfill_completed_at:{name}"))?
        .unwrap_or_default();
    let requested = state.meta("backfill_requested_at")?.unwrap_or_default();
    Ok(done.is_empty() || (!requested.is_empty() && requested > done))
}

/// What the daemon and a [`Held`] store share.
#[derive(Default)]
struct GateState {
    held: AtomicBool,
    /// Why the store is held, for the error its operations return.
    reason: Mutex<String>,
    /// A store opened later, to replace the placeholder of a store that
    /// could not be opened at start-up.
    replacement: Mutex<Option<Box<dyn Store>>>,
    /// Whether the store in the engine is the placeholder.
    unopened: AtomicBool,
}

/// The daemon's handle on one store in the engine.
#[derive(Clone)]
pub struct Gate {
    name: String,
    state: Arc<GateState>,
}

impl Gate {
    fn hold(&self, reason: &str) {
        *lock(&self.state.reason) = reason.to_string();
        self.state.held.store(true, Ordering::SeqCst);
    }

    fn release(&self) {
        self.state.held.store(false, Ordering::SeqCst);
    }

    fn is_held(&self) -> bool {
        self.state.held.load(Ordering::SeqCst)
    }

    fn set_reason(&self, reason: String) {
        *lock(&self.state.reason) = reason;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A store as the engine sees it in the daemon: the real store, refusing
/// every operation while its initial sync is pending.
pub struct Held {
    name: String,
    inner: Box<dyn Store>,
    gate: Arc<GateState>,
}

impl Held {
    /// Wraps `inner`; the gate starts open.
    pub fn new(inner: Box<dyn Store>) -> (Held, Gate) {
        let name = inner.name().to_string();
        let gate = Arc::new(GateState::default());
        (
            Held {
                name: name.clone(),
                inner,
                gate: gate.clone(),
            },
            Gate { name, state: gate },
        )
    }

    /// A store that could not be opened (`why`): held until a backfill
    /// opens it.
    pub fn unopened(name: &str, why: &str) -> (Held, Gate) {
        let (h, g) = Held::new(Box::new(Unopened {
            name: name.to_string(),
        }));
        g.state.unopened.store(true, Ordering::SeqCst);
        g.hold(&format!("cannot be opened: {why}"));
        (h, g)
    }

    /// Takes the store opened since, if any; then refuses while held.
    fn ready(&mut self) -> Result<&mut Box<dyn Store>, StoreError> {
        if let Some(s) = lock(&self.gate.replacement).take() {
            self.inner = s;
            self.gate.unopened.store(false, Ordering::SeqCst);
        }
        if self.gate.held.load(Ordering::SeqCst) {
            return Err(StoreError::transient(
                self.name.clone(),
                format!(
                    "waiting for its initial sync ({})",
                    lock(&self.gate.reason).as_str()
                ),
            ));
        }
        Ok(&mut self.inner)
    }

    /// Answers a question about the store from the store opened since, if
    /// one is waiting to be taken.
    fn info<R>(&self, f: impl Fn(&dyn Store) -> R) -> R {
        match lock(&self.gate.replacement).as_deref() {
            Some(s) => f(s),
            None => f(self.inner.as_ref()),
        }
    }
}

#[async_trait]
impl ChangeSource for Held {
    async fn read_changes(
        &mut self,
        from: Option<&Checkpoint>,
        limit: usize,
    ) -> Result<ChangeBatch, StoreError> {
        self.ready()?.read_changes(from, limit).await
    }
    async fn acknowledge(&mut self, upto: &Checkpoint) -> Result<(), StoreError> {
        self.ready()?.acknowledge(upto).await
    }
    async fn current_position(&mut self) -> Result<Option<Checkpoint>, StoreError> {
        self.ready()?.current_position().await
    }
    fn wants_held(&self) -> bool {
        !self.gate.held.load(Ordering::SeqCst) && self.info(|s| s.wants_held())
    }
    fn metered_reads(&self) -> bool {
        // While held, every read fails as before (never skipped as if read).
        !self.gate.held.load(Ordering::SeqCst) && self.info(|s| s.metered_reads())
    }
    fn held(&mut self, records: Vec<(String, String)>) {
        if let Ok(s) = self.ready() {
            s.held(records);
        }
    }
}

#[async_trait]
impl RecordSink for Held {
    async fn write_batch(&mut self, writes: &[Contact]) -> Result<Vec<WriteOutcome>, StoreError> {
        self.ready()?.write_batch(writes).await
    }
    async fn write_batch_owned(
        &mut self,
        writes: Vec<Contact>,
    ) -> Result<(Vec<WriteOutcome>, Vec<Contact>), StoreError> {
        self.ready()?.write_batch_owned(writes).await
    }
    async fn write_batch_if(
        &mut self,
        writes: Vec<Contact>,
        expect: &[Expect],
    ) -> Result<(Vec<WriteOutcome>, Vec<Contact>), StoreError> {
        self.ready()?.write_batch_if(writes, expect).await
    }
    async fn begin_bulk_load(&mut self) -> Result<(), StoreError> {
        self.ready()?.begin_bulk_load().await
    }
    async fn end_bulk_load(&mut self) -> Result<(), StoreError> {
        self.ready()?.end_bulk_load().await
    }
    async fn read(&mut self, contact_ids: &[String]) -> Result<Vec<Contact>, StoreError> {
        self.ready()?.read(contact_ids).await
    }
    async fn scan(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Contact>, StoreError> {
        self.ready()?.scan(after, limit).await
    }
    async fn scan_hashes(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RecordHash>, StoreError> {
        self.ready()?.scan_hashes(after, limit).await
    }
    async fn scan_hashes_checked(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<HashScan, StoreError> {
        self.ready()?.scan_hashes_checked(after, limit).await
    }
    async fn count(&mut self) -> Result<u64, StoreError> {
        self.ready()?.count().await
    }
    async fn find_by_identity(
        &mut self,
        emails: &[String],
        phones: &[String],
    ) -> Result<Vec<Contact>, StoreError> {
        self.ready()?.find_by_identity(emails, phones).await
    }
}

impl StoreInfo for Held {
    fn name(&self) -> &str {
        &self.name
    }
    fn keeps_version(&self) -> bool {
        self.info(|s| s.keeps_version())
    }
    fn accepts(&self, contact: &Contact) -> bool {
        self.info(|s| s.accepts(contact))
    }
    fn keeps_content_hash(&self) -> bool {
        self.info(|s| s.keeps_content_hash())
    }
    fn conditional_writes(&self) -> Conditional {
        self.info(|s| s.conditional_writes())
    }
    fn logs_every_change(&self) -> bool {
        self.info(|s| s.logs_every_change())
    }
}

/// The placeholder of a store that could not be opened: every operation
/// fails (it is always held, so none reaches it).
struct Unopened {
    name: String,
}

impl Unopened {
    fn err(&self) -> StoreError {
        StoreError::transient(self.name.clone(), "not opened yet")
    }
}

#[async_trait]
impl ChangeSource for Unopened {
    async fn read_changes(
        &mut self,
        _: Option<&Checkpoint>,
        _: usize,
    ) -> Result<ChangeBatch, StoreError> {
        Err(self.err())
    }
    async fn acknowledge(&mut self, _: &Checkpoint) -> Result<(), StoreError> {
        Err(self.err())
    }
}

#[async_trait]
impl RecordSink for Unopened {
    async fn write_batch(&mut self, _: &[Contact]) -> Result<Vec<WriteOutcome>, StoreError> {
        Err(self.err())
    }
    async fn read(&mut self, _: &[String]) -> Result<Vec<Contact>, StoreError> {
        Err(self.err())
    }
    async fn scan(&mut self, _: Option<&str>, _: usize) -> Result<Vec<Contact>, StoreError> {
        Err(self.err())
    }
    async fn count(&mut self) -> Result<u64, StoreError> {
        Err(self.err())
    }
    async fn find_by_identity(
        &mut self,
        _: &[String],
        _: &[String],
    ) -> Result<Vec<Contact>, StoreError> {
        Err(self.err())
    }
}

impl StoreInfo for Unopened {
    fn name(&self) -> &str {
        &self.name
    }
    fn keeps_version(&self) -> bool {
        false
    }
}

/// The context of a backfill error that parked its store.
#[derive(Debug)]
struct Parked;

impl std::fmt::Display for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("parked")
    }
}

/// A store whose backfill is pending, with its retry schedule.
struct Pending {
    gate: Gate,
    backoff: backon::ExponentialBackoff,
    due: Instant,
    attempts: u32,
    /// Paused in the state database (parked after a permanent error, or a
    /// schema change): not tried until `resume` or a changed configuration
    /// lifts the pause.
    parked: bool,
}

fn backoff() -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(Duration::from_secs(300))
        .with_jitter()
        .without_max_times()
        .build()
}

/// The pending backfills of the daemon.
pub struct Backfills {
    gates: Vec<Gate>,
    pending: Vec<Pending>,
    batch_size: usize,
    /// What wakes the daemon; forwarded from stores opened late.
    wake: Arc<Notify>,
}

impl Backfills {
    pub fn new(gates: Vec<Gate>, batch_size: usize, wake: Arc<Notify>) -> Backfills {
        let mut b = Backfills {
            gates: Vec::new(),
            pending: Vec::new(),
            batch_size,
            wake,
        };
        for g in gates {
            if g.is_held() {
                // Could not be opened: its backfill opens it.
                b.add(g.clone());
            }
            b.gates.push(g);
        }
        b
    }

    fn add(&mut self, gate: Gate) {
        if !gate.is_held() {
            gate.hold("not started yet");
        }
        self.pending.push(Pending {
            gate,
            backoff: backoff(),
            due: Instant::now(),
            attempts: 0,
            parked: false,
        });
    }

    /// Holds every store that needs a backfill and is not pending yet, and
    /// notes which pending ones are paused: a store parked by its backfill
    /// waits for `resume` (or a changed configuration), then is tried at
    /// once with a fresh backoff.
    pub fn refresh(&mut self, state: &StateDb) -> anyhow::Result<()> {
        for p in &mut self.pending {
            match state.paused(&p.gate.name)? {
                Some(paused) => {
                    if !p.parked {
                        p.gate.set_reason(paused.reason);
                    }
                    p.parked = true;
                }
                None if p.parked => {
                    p.parked = false;
                    p.backoff = backoff();
                    p.due = Instant::now();
                }
                None => {}
            }
        }
        for g in self.gates.clone() {
            if self.pending.iter().any(|p| p.gate.name == g.name) {
                continue;
            }
            if needs_backfill(state, &g.name)? {
                self.add(g);
            }
        }
        Ok(())
    }

    /// [`Backfills::refresh`], logging a failure (the next call retries).
    pub fn refresh_logged(&mut self, state: &StateDb) {
        if let Err(e) = self.refresh(state) {
            tracing::warn!(error = %format!("{e:#}"), "cannot read the backfill state from the state database");
        }
    }

    /// Puts `store` in place of the engine's copy of store `name` (taken
    /// at its next operation): after its change capture was recreated by
    /// another handle, the old copy's read-ahead and positions are stale.
    /// False when the daemon has no such store.
    pub fn replace(&self, name: &str, store: Box<dyn Store>) -> bool {
        let Some(g) = self.gates.iter().find(|g| g.name == name) else {
            return false;
        };
        *lock(&g.state.replacement) = Some(store);
        true
    }

    /// When the next retry is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending
            .iter()
            .filter(|p| !p.parked)
            .map(|p| p.due)
            .min()
    }

    /// Stores still waiting for their backfill.
    pub fn waiting(&self) -> Vec<String> {
        self.pending.iter().map(|p| p.gate.name.clone()).collect()
    }

    /// Runs every backfill that is due, one store at a time, each on an
    /// engine of its own over that store; a success lets the store into
    /// the cycles, a failure is retried later. Returns the stores that
    /// finished.
    pub async fn run_due(&mut self, cfg: &Config, stopper: &Stopper) -> Vec<String> {
        let mut finished = Vec::new();
        let now = Instant::now();
        let mut i = 0;
        while i < self.pending.len() {
            if stopper.is_stopped() {
                break;
            }
            if self.pending[i].parked || self.pending[i].due > now {
                i += 1;
                continue;
            }
            let name = self.pending[i].gate.name.clone();
            self.pending[i].attempts += 1;
            match self.backfill_one(cfg, &name, stopper).await {
                Ok(true) => {
                    let p = self.pending.remove(i);
                    p.gate.release();
                    finished.push(name);
                    continue;
                }
                Ok(false) => break, // stopped
                Err(e) if e.downcast_ref::<Parked>().is_some() => {
                    let p = &mut self.pending[i];
                    p.parked = true;
                    p.gate.set_reason(format!("{e:#}"));
                    tracing::error!(
                        store = %name,
                        attempt = p.attempts,
                        error = %format!("{e:#}"),
                        alert = "sync_failure",
                        "initial sync of the store failed with an error retrying cannot fix; \
                         it is not retried until `contact-sync resume {name}` or its configuration changes"
                    );
                }
                Err(e) => {
                    let p = &mut self.pending[i];
                    let wait = p.backoff.next().unwrap_or(Duration::from_secs(300));
                    p.due = Instant::now() + wait;
                    p.gate.set_reason(format!("{e:#}"));
                    tracing::warn!(
                        store = %name,
                        attempt = p.attempts,
                        retry_in_secs = wait.as_secs_f64().round() as u64,
                        error = %format!("{e:#}"),
                        alert = "sync_failure",
                        "initial sync of the store failed; the other stores keep syncing, this one is retried"
                    );
                }
            }
            i += 1;
        }
        finished
    }

    /// One backfill attempt of store `name`: Ok(false) when a shutdown
    /// stopped it.
    async fn backfill_one(
        &mut self,
        cfg: &Config,
        name: &str,
        stopper: &Stopper,
    ) -> anyhow::Result<bool> {
        let sc = cfg
            .stores()
            .get(name)
            .ok_or_else(|| anyhow::anyhow!("store {name} is not in the configuration"))?;
        let store = crate::stores::open_for_sync(cfg, name, sc).await?;
        let state = crate::commands::open_state(cfg)?;
        let canonical = crate::stores::open_canonical(cfg).await?;
        let opts = EngineOptions {
            batch_size: self.batch_size,
            default_region: cfg.sync.region(),
            config_hashes: cfg.store_fingerprints(),
            // Other daemons merge the same contacts (several daemons).
            concurrent: crate::cluster::state_url(cfg)?.is_some(),
            ..EngineOptions::default()
        };
        let mut engine = Engine::new(state, canonical, vec![store], opts)?;
        stopper.watch(engine.shutdown_flag());
        tracing::info!(store = %name, "initial sync of the store");
        let results = match crate::daemon::do_initial_sync(&mut engine).await {
            Ok(results) => results,
            Err(e) => {
                let parked = match e.downcast_ref::<EngineError>() {
                    Some(ee) => engine.pause_on_error(name, "initial sync", ee)?,
                    None => false,
                };
                return Err(if parked { e.context(Parked) } else { e });
            }
        };
        if stopper.is_stopped() || results.is_empty() {
            return Ok(false);
        }
        self.open_if_unopened(cfg, name).await?;
        Ok(true)
    }

    /// Several daemons, on one that does not run the initial syncs: lets
    /// into the cycles every store whose backfill another daemon (the
    /// primary) has finished since. Returns the stores let in.
    pub async fn take_finished(
        &mut self,
        cfg: &Config,
        state: &StateDb,
    ) -> anyhow::Result<Vec<String>> {
        let mut finished = Vec::new();
        let mut i = 0;
        while i < self.pending.len() {
            let name = self.pending[i].gate.name.clone();
            if needs_backfill(state, &name)? {
                i += 1;
                continue;
            }
            self.open_if_unopened(cfg, &name).await?;
            let p = self.pending.remove(i);
            p.gate.release();
            finished.push(name);
        }
        Ok(finished)
    }

    /// A store that could not be opened at start-up: the engine's own copy
    /// of it, opened now.
    async fn open_if_unopened(&mut self, cfg: &Config, name: &str) -> anyhow::Result<()> {
        let gate = self
            .gates
            .iter()
            .find(|g| g.name == name)
            .expect("pending stores have gates")
            .clone();
        if gate.state.unopened.load(Ordering::SeqCst) {
            // The engine's own copy of the store, opened now.
            let mut opened = crate::stores::open_others_named(cfg, &[name]).await?;
            if let Some((_, n)) = opened.wakes.pop() {
                let (notify, wake) = (n.handle(), self.wake.clone());
                tokio::spawn(async move {
                    loop {
                        notify.notified().await;
                        wake.notify_one();
                    }
                });
            }
            let store = opened
                .stores
                .pop()
                .ok_or_else(|| anyhow::anyhow!("store {name} did not open"))?;
            *lock(&gate.state.replacement) = Some(store);
        }
        Ok(())
    }
}
