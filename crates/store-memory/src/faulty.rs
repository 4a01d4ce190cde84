//! [`FaultyStore`]: wraps any store and injects failures from a seeded,
//! deterministic [`FaultPlan`], controlled through a shared [`FaultControl`].
//!
//! Fault kinds:
//! - **fail before**: a transient error; the inner store is not called.
//! - **timeout**: a transient "timed out" error; the inner store is not called.
//! - **ack lost** (`write_batch`, `acknowledge` only): the inner call
//!   succeeds, then a transient error is returned, so the caller does not
//!   know the operation was applied.
//! - **crash**: after `crash_after_ops(n)` successful operations every call
//!   fails with a transient error (the store is down, as a killed process
//!   or a lost server looks) whose message contains "crash", until
//!   [`FaultControl::heal`]. The control outlives the store, so a test can
//!   drop the engine and store, heal, and restart on the same data.
//! - **schema break** ([`FaultControl::break_schema`]) and **permanent
//!   failure** ([`FaultControl::fail_permanently`]): every call fails with
//!   a paused or a permanent error, until healed; even while injection is
//!   disabled.
//!
//! The random draws depend only on the seed and the sequence of calls (two
//! per call, drawn before the inner call), never on the inner results, so
//! the same seed and the same calls give the same faults.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use contact_sync_connector::{
    ChangeBatch, ChangeSource, Checkpoint, Conditional, Expect, RecordSink, StoreError, StoreInfo,
    WriteOutcome,
};
use contact_sync_core::Contact;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// A store operation, for per-operation fault rates and the fault log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    ReadChanges,
    Acknowledge,
    WriteBatch,
    Read,
    Scan,
    Count,
    FindByIdentity,
}

impl Operation {
    /// Operations whose effect can be applied while the reply is lost.
    fn can_lose_ack(self) -> bool {
        matches!(self, Operation::WriteBatch | Operation::Acknowledge)
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::ReadChanges => "read_changes",
            Operation::Acknowledge => "acknowledge",
            Operation::WriteBatch => "write_batch",
            Operation::Read => "read",
            Operation::Scan => "scan",
            Operation::Count => "count",
            Operation::FindByIdentity => "find_by_identity",
        })
    }
}

/// Probabilities (0.0 to 1.0) of each fault on one call.
/// `fail_before + timeout` should not exceed 1.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct FaultRates {
    pub fail_before: f64,
    pub timeout: f64,
    /// Only for `write_batch` and `acknowledge`; ignored for other calls.
    pub ack_lost: f64,
}

/// What to inject: a seed, fault rates (default and per operation) and an
/// optional crash point.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    seed: u64,
    rates: FaultRates,
    per_operation: BTreeMap<Operation, FaultRates>,
    crash_after_ops: Option<u64>,
}

impl FaultPlan {
    /// A plan that injects nothing, with this seed.
    pub fn new(seed: u64) -> Self {
        FaultPlan {
            seed,
            rates: FaultRates::default(),
            per_operation: BTreeMap::new(),
            crash_after_ops: None,
        }
    }

    /// Probability of a transient failure before the call (default rates).
    pub fn fail_before(mut self, p: f64) -> Self {
        self.rates.fail_before = p;
        self
    }

    /// Probability of a transient timeout before the call (default rates).
    pub fn timeout(mut self, p: f64) -> Self {
        self.rates.timeout = p;
        self
    }

    /// Probability that a `write_batch` or `acknowledge` is applied but
    /// reported as failed (default rates).
    pub fn ack_lost(mut self, p: f64) -> Self {
        self.rates.ack_lost = p;
        self
    }

    /// Rates for one operation, replacing the default rates for it.
    pub fn for_operation(mut self, op: Operation, rates: FaultRates) -> Self {
        self.per_operation.insert(op, rates);
        self
    }

    /// After `n` successful operations, crash: every call fails with a
    /// transient "crash" error until [`FaultControl::heal`]. Healing re-arms
    /// it for another `n` operations; [`FaultControl::set_crash_after`]
    /// changes or removes it.
    pub fn crash_after_ops(mut self, n: u64) -> Self {
        self.crash_after_ops = Some(n);
        self
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn rates_for(&self, op: Operation) -> FaultRates {
        self.per_operation.get(&op).copied().unwrap_or(self.rates)
    }
}

/// A kind of injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    FailBefore,
    Timeout,
    AckLost,
    Crash,
}

/// Injected faults so far, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub fail_before: u64,
    pub timeout: u64,
    pub ack_lost: u64,
    pub crash: u64,
}

impl FaultCounts {
    pub fn total(&self) -> u64 {
        self.fail_before + self.timeout + self.ack_lost + self.crash
    }
}

/// One injected fault: the call number (counting every call through the
/// control, from 1), the operation and the kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InjectedFault {
    pub call: u64,
    pub operation: Operation,
    pub kind: FaultKind,
}

#[derive(Debug)]
struct ControlState {
    plan: FaultPlan,
    rng: SmallRng,
    enabled: bool,
    crashed: bool,
    /// Calls seen (every call, enabled or not).
    calls: u64,
    /// Successful operations since the start or the last heal.
    ok_ops: u64,
    counts: FaultCounts,
    injected: Vec<InjectedFault>,
    /// The store's schema or change stream "changed": every call fails with
    /// a [`StoreError::paused`] error with this text, until healed.
    schema_broken: Option<String>,
    /// Every call fails with a [`StoreError::permanent`] error with this
    /// text (bad credentials, a permission lost), until healed.
    failing: Option<String>,
}

impl ControlState {
    fn record(&mut self, operation: Operation, kind: FaultKind) {
        match kind {
            FaultKind::FailBefore => self.counts.fail_before += 1,
            FaultKind::Timeout => self.counts.timeout += 1,
            FaultKind::AckLost => self.counts.ack_lost += 1,
            FaultKind::Crash => self.counts.crash += 1,
        }
        self.injected.push(InjectedFault {
            call: self.calls,
            operation,
            kind,
        });
    }
}

/// Called before every operation of a store, with the operation and the
/// store's name: a test acts there as a user would between any two steps
/// of the engine (edits in any store, an outage).
pub type Hook = Arc<dyn Fn(Operation, &str) + Send + Sync>;

/// Shared control over the faults of one or more [`FaultyStore`]s. Cheap to
/// clone; all clones act on the same state.
#[derive(Clone)]
pub struct FaultControl {
    state: Arc<Mutex<ControlState>>,
    hook: Arc<Mutex<Option<Hook>>>,
}

impl fmt::Debug for FaultControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultControl")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// What to do with a call, decided before the inner store is called.
enum Decision {
    Proceed { lose_ack: bool },
    Fail(StoreError),
}

impl FaultControl {
    /// Enabled, following `plan`.
    pub fn new(plan: FaultPlan) -> Self {
        FaultControl {
            state: Arc::new(Mutex::new(ControlState {
                rng: SmallRng::seed_from_u64(plan.seed),
                plan,
                enabled: true,
                crashed: false,
                calls: 0,
                ok_ops: 0,
                counts: FaultCounts::default(),
                injected: Vec::new(),
                schema_broken: None,
                failing: None,
            })),
            hook: Arc::new(Mutex::new(None)),
        }
    }

    /// Runs `hook` before every operation of the stores under this control
    /// (replacing an earlier hook; `None` removes it).
    pub fn set_hook(&self, hook: Option<Hook>) {
        *self.hook.lock().unwrap_or_else(|e| e.into_inner()) = hook;
    }

    fn run_hook(&self, op: Operation, store: &str) {
        let hook = self.hook.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(h) = hook {
            h(op, store);
        }
    }

    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Inject faults again.
    pub fn enable(&self) {
        self.lock().enabled = true;
    }

    /// Stop injecting: every call passes through (a crash in force is
    /// suspended too), and no random draws are made.
    pub fn disable(&self) {
        self.lock().enabled = false;
    }

    pub fn is_enabled(&self) -> bool {
        self.lock().enabled
    }

    /// End a crash; the crash point, if any, re-arms for another `n`
    /// successful operations.
    pub fn heal(&self) {
        let mut s = self.lock();
        s.crashed = false;
        s.ok_ops = 0;
        s.schema_broken = None;
        s.failing = None;
    }

    /// The store's schema changes under the engine (a column renamed, the
    /// publication dropped): every call fails with a
    /// [`StoreError::paused`] error saying `what`, until
    /// [`heal`](Self::heal). Applies even while injection is disabled.
    pub fn break_schema(&self, what: &str) {
        self.lock().schema_broken = Some(what.to_string());
    }

    /// The store fails for good (its credentials revoked, a permission
    /// lost): every call fails with a [`StoreError::permanent`] error
    /// saying `what`, until [`heal`](Self::heal). Applies even while
    /// injection is disabled.
    pub fn fail_permanently(&self, what: &str) {
        self.lock().failing = Some(what.to_string());
    }

    /// Crash now (until [`heal`](Self::heal)).
    pub fn crash_now(&self) {
        self.lock().crashed = true;
    }

    pub fn is_crashed(&self) -> bool {
        self.lock().crashed
    }

    /// Change or remove the crash point; counts from now.
    pub fn set_crash_after(&self, n: Option<u64>) {
        let mut s = self.lock();
        s.plan.crash_after_ops = n;
        s.ok_ops = 0;
    }

    pub fn counts(&self) -> FaultCounts {
        self.lock().counts
    }

    /// Every injected fault, in order.
    pub fn injected(&self) -> Vec<InjectedFault> {
        self.lock().injected.clone()
    }

    fn before(&self, op: Operation, store: &str) -> Decision {
        let mut s = self.lock();
        s.calls += 1;
        if let Some(what) = &s.schema_broken {
            return Decision::Fail(StoreError::paused(store, format!("{op}: {what}")));
        }
        if let Some(what) = &s.failing {
            return Decision::Fail(StoreError::permanent(store, format!("{op}: {what}")));
        }
        if !s.enabled {
            return Decision::Proceed { lose_ack: false };
        }
        if s.crashed {
            s.record(op, FaultKind::Crash);
            return Decision::Fail(StoreError::transient(
                store,
                format!("{op}: injected crash: the store is down until healed"),
            ));
        }
        let rates = s.plan.rates_for(op);
        let r1: f64 = s.rng.gen();
        let r2: f64 = s.rng.gen();
        if r1 < rates.fail_before {
            s.record(op, FaultKind::FailBefore);
            return Decision::Fail(StoreError::transient(
                store,
                format!("{op}: injected failure before the call (nothing done)"),
            ));
        }
        if r1 < rates.fail_before + rates.timeout {
            s.record(op, FaultKind::Timeout);
            return Decision::Fail(StoreError::transient(
                store,
                format!("{op}: timed out (injected; nothing done)"),
            ));
        }
        Decision::Proceed {
            lose_ack: op.can_lose_ack() && r2 < rates.ack_lost,
        }
    }

    /// After the inner call: counts successes toward the crash point and
    /// turns a success into a lost acknowledgement when decided so.
    fn after<T>(
        &self,
        op: Operation,
        store: &str,
        lose_ack: bool,
        result: Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let value = result?;
        let mut s = self.lock();
        if !s.enabled {
            return Ok(value);
        }
        s.ok_ops += 1;
        if s.plan.crash_after_ops.is_some_and(|n| s.ok_ops >= n) {
            s.crashed = true;
        }
        if lose_ack {
            s.record(op, FaultKind::AckLost);
            return Err(StoreError::transient(
                store,
                format!(
                    "{op}: connection lost before the reply (injected; the operation was applied)"
                ),
            ));
        }
        Ok(value)
    }
}

/// A store wrapper that injects faults as its [`FaultControl`] says.
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    control: FaultControl,
}

impl<S> FaultyStore<S>
where
    S: ChangeSource + RecordSink + StoreInfo + Send,
{
    pub fn new(inner: S, control: FaultControl) -> Self {
        FaultyStore { inner, control }
    }

    pub fn control(&self) -> &FaultControl {
        &self.control
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: StoreInfo> StoreInfo for FaultyStore<S> {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn keeps_version(&self) -> bool {
        self.inner.keeps_version()
    }

    fn accepts(&self, contact: &Contact) -> bool {
        self.inner.accepts(contact)
    }

    fn keeps_content_hash(&self) -> bool {
        self.inner.keeps_content_hash()
    }

    fn conditional_writes(&self) -> Conditional {
        self.inner.conditional_writes()
    }

    fn logs_every_change(&self) -> bool {
        self.inner.logs_every_change()
    }
}

/// `CONTACT_SYNC_FAULT_TRACE=1` prints every call, its fault and its
/// result to stderr, in order with the test's own prints (to replay a
/// failing seed of a checker by reading what happened).
fn tracing_calls() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("CONTACT_SYNC_FAULT_TRACE").is_some())
}

/// Runs one inner call through the control.
macro_rules! guarded {
    ($self:ident, $op:expr, $call:expr) => {
        guarded!($self, $op, $call, |_r| String::new())
    };
    ($self:ident, $op:expr, $call:expr, $show:expr) => {{
        let op = $op;
        $self.control.run_hook(op, $self.inner.name());
        match $self.control.before(op, $self.inner.name()) {
            Decision::Fail(e) => {
                if tracing_calls() {
                    eprintln!("  [{}] {op}: FAILED {}", $self.inner.name(), e.message);
                }
                Err(e)
            }
            Decision::Proceed { lose_ack } => {
                let result = $call.await;
                if tracing_calls() {
                    let shown = match &result {
                        Ok(r) => ($show)(r),
                        Err(e) => format!("error {}", e.message),
                    };
                    eprintln!(
                        "  [{}] {op}{}: {shown}",
                        $self.inner.name(),
                        if lose_ack { " (ack lost)" } else { "" }
                    );
                }
                $self
                    .control
                    .after(op, $self.inner.name(), lose_ack, result)
            }
        }
    }};
}

#[async_trait]
impl<S> ChangeSource for FaultyStore<S>
where
    S: ChangeSource + RecordSink + StoreInfo + Send,
{
    async fn read_changes(
        &mut self,
        from: Option<&Checkpoint>,
        limit: usize,
    ) -> Result<ChangeBatch, StoreError> {
        guarded!(
            self,
            Operation::ReadChanges,
            self.inner.read_changes(from, limit),
            |b: &ChangeBatch| format!(
                "{:?} more={}",
                b.changes
                    .iter()
                    .map(|c| format!("{}:{:?}", c.native_id, c.kind)
                        .chars()
                        .take(60)
                        .collect::<String>())
                    .collect::<Vec<_>>(),
                b.has_more
            )
        )
    }

    async fn acknowledge(&mut self, upto: &Checkpoint) -> Result<(), StoreError> {
        guarded!(self, Operation::Acknowledge, self.inner.acknowledge(upto))
    }

    async fn current_position(&mut self) -> Result<Option<Checkpoint>, StoreError> {
        self.inner.current_position().await
    }

    fn metered_reads(&self) -> bool {
        self.inner.metered_reads()
    }
}

#[async_trait]
impl<S> RecordSink for FaultyStore<S>
where
    S: ChangeSource + RecordSink + StoreInfo + Send,
{
    async fn write_batch(&mut self, writes: &[Contact]) -> Result<Vec<WriteOutcome>, StoreError> {
        guarded!(self, Operation::WriteBatch, self.inner.write_batch(writes))
    }

    async fn write_batch_if(
        &mut self,
        writes: Vec<Contact>,
        expect: &[Expect],
    ) -> Result<(Vec<WriteOutcome>, Vec<Contact>), StoreError> {
        let shown: Vec<String> = if tracing_calls() {
            writes
                .iter()
                .zip(expect)
                .map(|(c, e)| {
                    format!(
                        "{} v{} del={} if {e:?}",
                        c.contact_id,
                        c.version,
                        c.is_deleted()
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        guarded!(
            self,
            Operation::WriteBatch,
            self.inner.write_batch_if(writes, expect),
            |r: &(Vec<WriteOutcome>, Vec<Contact>)| format!("{shown:?} -> {:?}", r.0)
        )
    }

    async fn read(&mut self, contact_ids: &[String]) -> Result<Vec<Contact>, StoreError> {
        guarded!(self, Operation::Read, self.inner.read(contact_ids))
    }

    async fn scan(
        &mut self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Contact>, StoreError> {
        guarded!(self, Operation::Scan, self.inner.scan(after, limit))
    }

    async fn count(&mut self) -> Result<u64, StoreError> {
        guarded!(self, Operation::Count, self.inner.count())
    }

    async fn find_by_identity(
        &mut self,
        emails: &[String],
        phones: &[String],
    ) -> Result<Vec<Contact>, StoreError> {
        guarded!(
            self,
            Operation::FindByIdentity,
            self.inner.find_by_identity(emails, phones)
        )
    }
}
