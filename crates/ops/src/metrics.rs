//! Metrics: what the daemon knows about itself, as a [`MetricsSnapshot`],
//! rendered in the Prometheus text exposition format (version 0.0.4) by
//! [`render_prometheus`], and shared with the HTTP server through an
//! [`OpsHandle`].
//!
//! Two kinds of numbers meet here:
//! - **from the state database** (durable, survive restarts): pending
//!   journal entries, last success, consecutive errors, run totals, drift,
//!   open conflicts, dead letters, journal head. [`MetricsSnapshot::from_state`]
//!   reads them; the daemon calls it after every cycle and hands the result
//!   to [`OpsHandle::update`].
//! - **in-process counters** (reset when the process restarts, as
//!   Prometheus counters may): total errors per store, webhook and CDC
//!   events, cycles. The handle keeps them ([`OpsHandle::record_cycle`],
//!   [`OpsHandle::add_webhook_events`], [`OpsHandle::add_cdc_events`]) and
//!   overlays them on every snapshot it hands out.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use contact_sync_core::Timestamp;
use contact_sync_engine::{CycleReport, CANONICAL};
use contact_sync_state::StateDb;
use serde::Serialize;

use crate::health::{HealthStatus, HealthThresholds};
use crate::OpsError;

/// What the caller knows about one store that the state database does not:
/// its live contact count (from `RecordSink::count`, `None` when it could
/// not be counted) and, for a Postgres store with logical replication, the
/// WAL its slot retains.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreSample {
    /// The store's name (`canonical` for the canonical store).
    pub name: String,
    pub contacts: Option<u64>,
    pub retained_wal_bytes: Option<u64>,
}

impl StoreSample {
    /// A store with a known (or unknown) contact count and no replication slot.
    pub fn new(name: impl Into<String>, contacts: Option<u64>) -> Self {
        StoreSample {
            name: name.into(),
            contacts,
            retained_wal_bytes: None,
        }
    }
}

/// The numbers of one store.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StoreMetrics {
    pub store: String,
    /// Live contacts in the store at the last count; `None` when unknown.
    pub contacts: Option<u64>,
    /// Journal entries the store has not applied yet (journal head − cursor).
    pub pending: u64,
    /// Seconds since the store's last successful run (at snapshot time);
    /// `None` when it never succeeded.
    pub lag_seconds: Option<f64>,
    /// Failed runs since the last success (durable).
    pub consecutive_errors: u64,
    /// Failed runs seen by this process (in-process counter).
    pub errors_total: u64,
    /// Unix time of the last successful run.
    pub last_success_unix: Option<i64>,
    /// The most recent error text (kept after a later success). For
    /// `/health` and logs only: never rendered as a metric nor sent to an
    /// alert webhook.
    pub last_error: Option<String>,
    /// Drift in percent at the last verification (`drift:<store>` meta).
    pub drift_pct: Option<f64>,
    /// Unix time of that verification.
    pub drift_checked_unix: Option<i64>,
    /// Webhook deliveries received for this store (in-process counter).
    pub webhook_events_total: u64,
    /// Change-data-capture events received for this store (in-process counter).
    pub cdc_events_total: u64,
    /// WAL retained by the store's replication slot, when it has one.
    pub retained_wal_bytes: Option<u64>,
    /// Changes read from the store, all time (durable run totals).
    pub captured_total: u64,
    /// Changes merged into canonical, all time.
    pub merged_total: u64,
    /// Contacts written to the store, all time.
    pub written_total: u64,
    /// Echoes of the engine's own writes skipped, all time.
    pub echoes_skipped_total: u64,
    /// The store is paused by a guard, or parked after a permanent error,
    /// until a person decides: the kind (`mass_change`, `schema`,
    /// `failed`) and the reason (`contact-sync paused`).
    pub paused: Option<(String, String)>,
    /// What a store that bills per query (BigQuery) cost this process;
    /// `None` for stores that do not (in-process counters).
    pub query_cost: Option<QueryCost>,
}

/// What a store billed per query (BigQuery) cost: query jobs, bytes
/// processed and bytes billed (on-demand pricing charges the latter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueryCost {
    pub queries: u64,
    pub bytes_processed: u64,
    pub bytes_billed: u64,
}

impl QueryCost {
    fn add(&mut self, o: &QueryCost) {
        self.queries = self.queries.saturating_add(o.queries);
        self.bytes_processed = self.bytes_processed.saturating_add(o.bytes_processed);
        self.bytes_billed = self.bytes_billed.saturating_add(o.bytes_billed);
    }
}

/// How the last engine cycle went, as the daemon saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CycleOutcome {
    pub finished_at: Timestamp,
    pub duration_secs: f64,
    /// Why the whole cycle failed (canonical store or state database);
    /// `None` when it completed, even with failing stores.
    pub error: Option<String>,
    /// Stores that failed within a completed cycle.
    pub failed_stores: Vec<String>,
}

impl CycleOutcome {
    /// A completed cycle; stores whose report carries an error count as failed.
    pub fn from_report(report: &CycleReport, duration: Duration, finished_at: Timestamp) -> Self {
        CycleOutcome {
            finished_at,
            duration_secs: duration.as_secs_f64(),
            error: None,
            failed_stores: report
                .stores
                .iter()
                .filter(|s| s.error.is_some())
                .map(|s| s.store.clone())
                .collect(),
        }
    }

    /// A cycle that failed as a whole (`Engine::cycle` returned `Err`).
    /// `error` must not contain secrets (engine errors never do).
    pub fn failed(
        error: impl std::fmt::Display,
        duration: Duration,
        finished_at: Timestamp,
    ) -> Self {
        CycleOutcome {
            finished_at,
            duration_secs: duration.as_secs_f64(),
            error: Some(error.to_string()),
            failed_stores: Vec::new(),
        }
    }

    /// From the result of `Engine::cycle`.
    pub fn from_result<E: std::fmt::Display>(
        result: &Result<CycleReport, E>,
        duration: Duration,
        finished_at: Timestamp,
    ) -> Self {
        match result {
            Ok(report) => CycleOutcome::from_report(report, duration, finished_at),
            Err(e) => CycleOutcome::failed(e, duration, finished_at),
        }
    }

    /// Whether the cycle completed (stores may still have failed).
    pub fn completed(&self) -> bool {
        self.error.is_none()
    }
}

/// Everything `/metrics`, `/health` and the alerts look at.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    /// When the numbers were taken (lag is relative to this).
    pub taken_at: Timestamp,
    /// One entry per store, canonical first when present.
    pub stores: Vec<StoreMetrics>,
    pub conflicts_open: u64,
    pub dead_letters: u64,
    /// Highest journal seq.
    pub journal_head: i64,
    pub last_cycle: Option<CycleOutcome>,
    /// Cycles seen by this process (in-process counter).
    pub cycles_total: u64,
    /// Cycles that failed as a whole (in-process counter).
    pub cycle_failures_total: u64,
    /// Several daemons on one state database: this daemon's part of each
    /// lease (the engine's, each store's).
    pub leases: Vec<LeaseGauge>,
}

/// This daemon's part in a cluster (`[state] url`): whether it holds one
/// lease of the work (`engine`, `store:<name>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LeaseGauge {
    /// The lease's name (`engine`, `store:<name>`).
    pub name: String,
    /// This daemon's name in the lease table.
    pub holder: String,
    /// Whether this daemon holds it now.
    pub held: bool,
    /// The fencing token while held.
    pub token: Option<i64>,
}

fn unix(ts: &Timestamp) -> i64 {
    ts.timestamp()
}

fn secs_between(earlier: &Timestamp, later: &Timestamp) -> f64 {
    let d = *later - *earlier;
    d.num_microseconds()
        .map(|us| us as f64 / 1e6)
        .unwrap_or_else(|| d.num_seconds() as f64)
        .max(0.0)
}

impl MetricsSnapshot {
    /// Reads the durable numbers of `stores` (in that order; the store
    /// names and counts come from the caller, who has the stores open) from
    /// the state database. When `stores` is empty, every store the state
    /// database knows is listed, without counts. In-process counters are
    /// zero: [`OpsHandle`] overlays its own.
    pub fn from_state(
        state: &StateDb,
        stores: &[StoreSample],
        now: Timestamp,
    ) -> Result<MetricsSnapshot, OpsError> {
        let head = state.journal_head()?;
        let samples: Vec<StoreSample> = if stores.is_empty() {
            state
                .known_stores()?
                .into_iter()
                .map(|name| StoreSample::new(name, None))
                .collect()
        } else {
            stores.to_vec()
        };
        let mut out = Vec::with_capacity(samples.len());
        for sample in samples {
            let status = state.store_status(&sample.name)?;
            let cursor = state.cursor(&sample.name)?;
            let drift: Option<serde_json::Value> = state
                .meta(&format!("drift:{}", sample.name))?
                .and_then(|s| serde_json::from_str(&s).ok());
            let drift_pct = drift.as_ref().and_then(|d| d["drift_pct"].as_f64());
            let paused = state
                .paused(&sample.name)?
                .map(|p| (p.label().to_string(), p.reason));
            let drift_checked_unix = drift
                .as_ref()
                .and_then(|d| d["checked_at"].as_str())
                .and_then(contact_sync_core::model::parse_ts)
                .map(|t| unix(&t));
            out.push(StoreMetrics {
                pending: u64::try_from(head - cursor).unwrap_or(0),
                contacts: sample.contacts,
                lag_seconds: status.last_success.as_ref().map(|t| secs_between(t, &now)),
                consecutive_errors: status.consecutive_errors,
                errors_total: 0,
                last_success_unix: status.last_success.as_ref().map(unix),
                last_error: status.last_error.clone(),
                drift_pct,
                drift_checked_unix,
                webhook_events_total: 0,
                cdc_events_total: 0,
                retained_wal_bytes: sample.retained_wal_bytes,
                captured_total: status.totals.captured,
                merged_total: status.totals.applied,
                written_total: status.totals.written,
                echoes_skipped_total: status.totals.skipped_echo,
                paused,
                query_cost: None,
                store: sample.name,
            });
        }
        // Canonical first, the others in the given order.
        if let Some(i) = out.iter().position(|s| s.store == CANONICAL) {
            let c = out.remove(i);
            out.insert(0, c);
        }
        Ok(MetricsSnapshot {
            taken_at: now,
            stores: out,
            conflicts_open: state.open_conflict_count()?,
            dead_letters: state.open_dead_letter_count()?,
            journal_head: head,
            last_cycle: None,
            cycles_total: 0,
            cycle_failures_total: 0,
            leases: Vec::new(),
        })
    }

    /// The store called `name`.
    pub fn store(&self, name: &str) -> Option<&StoreMetrics> {
        self.stores.iter().find(|s| s.store == name)
    }

    /// Recomputes every store's lag as of `now` (lag keeps growing while
    /// the daemon is stuck, even though the snapshot is not refreshed).
    pub fn with_lag_at(mut self, now: Timestamp) -> Self {
        for s in &mut self.stores {
            s.lag_seconds = s
                .last_success_unix
                .map(|t| (now.timestamp_micros() as f64 / 1e6 - t as f64).max(0.0));
        }
        self.taken_at = now;
        self
    }
}

// --- Prometheus text format ---

/// The `Content-Type` of [`render_prometheus`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Escapes a label value: backslash, double quote and line feed.
pub fn escape_label_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes HELP text: backslash and line feed.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A sample value as the text format wants it (`+Inf`, `-Inf`, `NaN`).
fn fmt_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        // `{}` on f64 is the shortest text that round-trips, never exponent-free garbage.
        format!("{v}")
    }
}

struct Writer {
    out: String,
}

#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

impl Writer {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let _ = writeln!(self.out, "# HELP contact_sync_{name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE contact_sync_{name} {kind}");
    }

    fn sample(&mut self, name: &str, store: Option<&str>, value: f64) {
        match store {
            Some(s) => {
                let _ = writeln!(
                    self.out,
                    "contact_sync_{name}{{store=\"{}\"}} {}",
                    escape_label_value(s),
                    fmt_value(value)
                );
            }
            None => {
                let _ = writeln!(self.out, "contact_sync_{name} {}", fmt_value(value));
            }
        }
    }

    /// A per-store family; stores whose value is `None` have no sample.
    fn per_store(
        &mut self,
        snap: &MetricsSnapshot,
        name: &str,
        kind: Kind,
        help: &str,
        value: impl Fn(&StoreMetrics) -> Option<f64>,
    ) {
        self.family(name, kind, help);
        for s in &snap.stores {
            if let Some(v) = value(s) {
                self.sample(name, Some(&s.store), v);
            }
        }
    }

    fn global(&mut self, name: &str, kind: Kind, help: &str, value: Option<f64>) {
        self.family(name, kind, help);
        if let Some(v) = value {
            self.sample(name, None, v);
        }
    }
}

/// Renders a snapshot in the Prometheus text exposition format (0.0.4):
/// every family has `# HELP` and `# TYPE` lines, names start with
/// `contact_sync_`, per-store samples carry a `store` label (escaped), and
/// values that are unknown (a store never counted, never synced, without
/// a replication slot) have no sample rather than a made-up one.
pub fn render_prometheus(snap: &MetricsSnapshot) -> String {
    use Kind::{Counter, Gauge};
    let mut w = Writer { out: String::new() };
    let n = |v: u64| Some(v as f64);
    w.per_store(
        snap,
        "store_contacts",
        Gauge,
        "Live contacts in the store at the last count.",
        |s| s.contacts.map(|c| c as f64),
    );
    w.per_store(
        snap,
        "store_pending",
        Gauge,
        "Journal entries the store has not applied yet.",
        |s| n(s.pending),
    );
    w.per_store(
        snap,
        "store_lag_seconds",
        Gauge,
        "Seconds since the store's last successful sync.",
        |s| s.lag_seconds,
    );
    w.per_store(
        snap,
        "store_last_success_timestamp_seconds",
        Gauge,
        "Unix time of the store's last successful sync.",
        |s| s.last_success_unix.map(|t| t as f64),
    );
    w.per_store(
        snap,
        "store_paused",
        Gauge,
        "1 while a guard holds the store paused until a person decides (contact-sync paused).",
        |s| Some(if s.paused.is_some() { 1.0 } else { 0.0 }),
    );
    w.per_store(
        snap,
        "store_consecutive_errors",
        Gauge,
        "Failed sync runs of the store since its last success.",
        |s| n(s.consecutive_errors),
    );
    w.per_store(
        snap,
        "store_errors_total",
        Counter,
        "Failed sync runs of the store seen by this process.",
        |s| n(s.errors_total),
    );
    w.per_store(
        snap,
        "store_drift_percent",
        Gauge,
        "Percent of contacts missing, differing or extra in the store at the last verification.",
        |s| s.drift_pct,
    );
    w.per_store(
        snap,
        "store_drift_checked_timestamp_seconds",
        Gauge,
        "Unix time of the store's last drift verification.",
        |s| s.drift_checked_unix.map(|t| t as f64),
    );
    w.per_store(
        snap,
        "store_webhook_events_total",
        Counter,
        "Webhook deliveries received for the store by this process.",
        |s| n(s.webhook_events_total),
    );
    w.per_store(
        snap,
        "store_cdc_events_total",
        Counter,
        "Change-data-capture events received for the store by this process.",
        |s| n(s.cdc_events_total),
    );
    w.per_store(
        snap,
        "store_retained_wal_bytes",
        Gauge,
        "WAL bytes retained by the store's replication slot.",
        |s| s.retained_wal_bytes.map(|b| b as f64),
    );
    w.per_store(
        snap,
        "store_captured_total",
        Counter,
        "Changes read from the store.",
        |s| n(s.captured_total),
    );
    w.per_store(
        snap,
        "store_merged_total",
        Counter,
        "Changes of the store merged into canonical.",
        |s| n(s.merged_total),
    );
    w.per_store(
        snap,
        "store_written_total",
        Counter,
        "Contacts written to the store.",
        |s| n(s.written_total),
    );
    w.per_store(
        snap,
        "store_echoes_skipped_total",
        Counter,
        "Echoes of the engine's own writes skipped for the store.",
        |s| n(s.echoes_skipped_total),
    );
    w.per_store(
        snap,
        "store_bigquery_queries_total",
        Counter,
        "Query jobs the store (BigQuery) ran for this process: polls, sweeps, reads, MERGEs, journal appends.",
        |s| s.query_cost.map(|c| c.queries as f64),
    );
    w.per_store(
        snap,
        "store_bigquery_bytes_processed_total",
        Counter,
        "Bytes processed by the store's (BigQuery) query jobs for this process.",
        |s| s.query_cost.map(|c| c.bytes_processed as f64),
    );
    w.per_store(
        snap,
        "store_bigquery_bytes_billed_total",
        Counter,
        "Bytes billed for the store's (BigQuery) query jobs for this process (what on-demand pricing charges).",
        |s| s.query_cost.map(|c| c.bytes_billed as f64),
    );
    w.global(
        "conflicts_open",
        Gauge,
        "Conflicts waiting for a person.",
        n(snap.conflicts_open),
    );
    w.global(
        "dead_letters",
        Gauge,
        "Records refused by validation or by a store.",
        n(snap.dead_letters),
    );
    w.global(
        "journal_head",
        Gauge,
        "Highest journal sequence number.",
        Some(snap.journal_head as f64),
    );
    let last = snap.last_cycle.as_ref();
    w.global(
        "last_cycle_duration_seconds",
        Gauge,
        "Duration of the last sync cycle.",
        last.map(|c| c.duration_secs),
    );
    w.global(
        "last_cycle_timestamp_seconds",
        Gauge,
        "Unix time the last sync cycle finished.",
        last.map(|c| unix(&c.finished_at) as f64),
    );
    w.global(
        "last_cycle_success",
        Gauge,
        "1 when the last sync cycle completed, 0 when it failed.",
        last.map(|c| if c.completed() { 1.0 } else { 0.0 }),
    );
    w.global(
        "cycles_total",
        Counter,
        "Sync cycles run by this process.",
        n(snap.cycles_total),
    );
    w.global(
        "cycle_failures_total",
        Counter,
        "Sync cycles of this process that failed as a whole.",
        n(snap.cycle_failures_total),
    );
    if !snap.leases.is_empty() {
        // Only daemons sharing a state database have leases.
        w.family(
            "lease_held",
            Gauge,
            "1 when this daemon holds the lease (does that part of the work), 0 when another daemon does.",
        );
        for l in &snap.leases {
            let label = format!("{{lease=\"{}\"}}", escape_label_value(&l.name));
            let _ = writeln!(w.out, "contact_sync_lease_held{label} {}", u8::from(l.held));
        }
        w.family(
            "lease_token",
            Gauge,
            "The fencing token of each lease this daemon holds.",
        );
        for l in &snap.leases {
            if let Some(t) = l.token {
                let label = format!("{{lease=\"{}\"}}", escape_label_value(&l.name));
                let _ = writeln!(w.out, "contact_sync_lease_token{label} {t}");
            }
        }
    }
    w.out
}

// --- the shared handle ---

#[derive(Debug, Default, Clone)]
struct StoreCounters {
    errors: u64,
    webhook_events: u64,
    cdc_events: u64,
    query_cost: Option<QueryCost>,
}

#[derive(Debug, Default)]
struct Shared {
    snapshot: MetricsSnapshot,
    counters: BTreeMap<String, StoreCounters>,
    cycles: u64,
    cycle_failures: u64,
    last_cycle: Option<CycleOutcome>,
    health: HealthThresholds,
    leases: Vec<LeaseGauge>,
}

/// The daemon's live numbers, shared between the sync loop (writer), the
/// HTTP server and the webhook receivers. Cheap to clone; every clone sees
/// the same numbers. Never held across an `.await`.
#[derive(Debug, Clone, Default)]
pub struct OpsHandle {
    inner: Arc<RwLock<Shared>>,
}

impl OpsHandle {
    /// An empty handle: no snapshot yet, `/health` healthy ("no cycle yet").
    pub fn new(health: HealthThresholds) -> Self {
        OpsHandle {
            inner: Arc::new(RwLock::new(Shared {
                health,
                ..Shared::default()
            })),
        }
    }

    // A panic while holding the lock cannot leave the numbers inconsistent
    // in a harmful way (each write is one assignment), so poisoning is ignored.
    fn read(&self) -> RwLockReadGuard<'_, Shared> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Shared> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the durable numbers (from [`MetricsSnapshot::from_state`]).
    /// The snapshot's in-process counters and `last_cycle` are ignored:
    /// the handle's own are used.
    pub fn update(&self, snapshot: MetricsSnapshot) {
        self.write().snapshot = snapshot;
    }

    /// Counts a finished cycle: cycles, whole-cycle failures, and one error
    /// for each failed store. Becomes `last_cycle`.
    pub fn record_cycle(&self, outcome: CycleOutcome) {
        let mut g = self.write();
        g.cycles += 1;
        if !outcome.completed() {
            g.cycle_failures += 1;
        }
        for store in &outcome.failed_stores {
            g.counters.entry(store.clone()).or_default().errors += 1;
        }
        g.last_cycle = Some(outcome);
    }

    /// What the daemon calls after every cycle: counts `outcome`, reads
    /// the durable numbers of `stores` from `state`, and returns the merged
    /// snapshot (to hand to [`crate::Alerter::process`]). Synchronous, so
    /// no state borrow lives across an `.await`.
    pub fn after_cycle(
        &self,
        state: &StateDb,
        stores: &[StoreSample],
        outcome: CycleOutcome,
    ) -> Result<MetricsSnapshot, OpsError> {
        let at = outcome.finished_at;
        self.record_cycle(outcome);
        self.update(MetricsSnapshot::from_state(state, stores, at)?);
        Ok(self.snapshot_at(at))
    }

    /// Counts `n` webhook deliveries accepted for `store`.
    pub fn add_webhook_events(&self, store: &str, n: u64) {
        let mut g = self.write();
        let c = g.counters.entry(store.to_string()).or_default();
        c.webhook_events = c.webhook_events.saturating_add(n);
    }

    /// Counts `n` change-data-capture events received for `store`.
    pub fn add_cdc_events(&self, store: &str, n: u64) {
        let mut g = self.write();
        let c = g.counters.entry(store.to_string()).or_default();
        c.cdc_events = c.cdc_events.saturating_add(n);
    }

    /// Counts what a per-query billed store (BigQuery) cost in a cycle.
    pub fn add_query_cost(&self, store: &str, cost: QueryCost) {
        let mut g = self.write();
        let c = g.counters.entry(store.to_string()).or_default();
        c.query_cost
            .get_or_insert_with(QueryCost::default)
            .add(&cost);
    }

    /// This daemon's part of each lease (several daemons on one state
    /// database).
    pub fn set_leases(&self, leases: Vec<LeaseGauge>) {
        self.write().leases = leases;
    }

    /// The health thresholds in force.
    pub fn health_thresholds(&self) -> HealthThresholds {
        self.read().health.clone()
    }

    /// The current numbers: the last durable snapshot with the in-process
    /// counters and the last cycle overlaid, and lag recomputed at `now`.
    pub fn snapshot_at(&self, now: Timestamp) -> MetricsSnapshot {
        let g = self.read();
        let mut snap = g.snapshot.clone();
        for (name, c) in &g.counters {
            if snap.store(name).is_none() {
                snap.stores.push(StoreMetrics {
                    store: name.clone(),
                    ..StoreMetrics::default()
                });
            }
            if let Some(s) = snap.stores.iter_mut().find(|s| &s.store == name) {
                s.errors_total = c.errors;
                s.webhook_events_total = c.webhook_events;
                s.cdc_events_total = c.cdc_events;
                s.query_cost = c.query_cost;
            }
        }
        snap.last_cycle = g.last_cycle.clone();
        snap.cycles_total = g.cycles;
        snap.cycle_failures_total = g.cycle_failures;
        snap.leases = g.leases.clone();
        drop(g);
        snap.with_lag_at(now)
    }

    /// [`OpsHandle::snapshot_at`] now.
    pub fn snapshot(&self) -> MetricsSnapshot {
        self.snapshot_at(contact_sync_core::model::now())
    }

    /// Health as of `now`.
    pub fn health_at(&self, now: Timestamp) -> HealthStatus {
        let thresholds = self.health_thresholds();
        HealthStatus::evaluate(&self.snapshot_at(now), &thresholds)
    }

    /// Health now.
    pub fn health(&self) -> HealthStatus {
        self.health_at(contact_sync_core::model::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clustered_daemon_says_whether_it_holds_the_lease() {
        let h = OpsHandle::default();
        assert!(!render_prometheus(&h.snapshot()).contains("lease"));
        h.set_leases(vec![LeaseGauge {
            name: "engine".into(),
            holder: "host:1:ab".into(),
            held: false,
            token: None,
        }]);
        let text = render_prometheus(&h.snapshot());
        assert!(
            text.contains("contact_sync_lease_held{lease=\"engine\"} 0\n"),
            "{text}"
        );
        assert!(!text.contains("contact_sync_lease_token{"), "{text}");
        h.set_leases(vec![
            LeaseGauge {
                name: "engine".into(),
                holder: "host:1:ab".into(),
                held: true,
                token: Some(7),
            },
            LeaseGauge {
                name: "store:local".into(),
                holder: "host:1:ab".into(),
                held: false,
                token: None,
            },
        ]);
        let text = render_prometheus(&h.snapshot());
        assert!(
            text.contains("contact_sync_lease_held{lease=\"engine\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("contact_sync_lease_token{lease=\"engine\"} 7\n"),
            "{text}"
        );
        assert!(
            text.contains("contact_sync_lease_held{lease=\"store:local\"} 0\n"),
            "{text}"
        );
        assert_eq!(text.matches("# TYPE contact_sync_lease_held").count(), 1);
    }

    #[test]
    fn bigquery_cost_is_a_counter_per_store_and_only_for_billed_stores() {
        let h = OpsHandle::default();
        h.update(MetricsSnapshot {
            stores: vec![
                StoreMetrics {
                    store: "canonical".into(),
                    ..Default::default()
                },
                StoreMetrics {
                    store: "local".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        let c = QueryCost {
            queries: 2,
            bytes_processed: 1000,
            bytes_billed: 10_485_760,
        };
        h.add_query_cost("canonical", c);
        h.add_query_cost("canonical", c);
        let text = render_prometheus(&h.snapshot());
        assert!(text.contains("# TYPE contact_sync_store_bigquery_queries_total counter"));
        assert!(text.contains("contact_sync_store_bigquery_queries_total{store=\"canonical\"} 4"));
        assert!(text.contains(
            "contact_sync_store_bigquery_bytes_billed_total{store=\"canonical\"} 20971520"
        ));
        assert!(text.contains(
            "contact_sync_store_bigquery_bytes_processed_total{store=\"canonical\"} 2000"
        ));
        assert!(!text.contains("contact_sync_store_bigquery_queries_total{store=\"local\"}"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label_value(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape_label_value("x\ny"), "x\\ny");
        let snap = MetricsSnapshot {
            stores: vec![StoreMetrics {
                store: "we\"ird\\store\n".into(),
                pending: 3,
                ..Default::default()
            }],
            ..Default::default()
        };
        let text = render_prometheus(&snap);
        assert!(
            text.contains("contact_sync_store_pending{store=\"we\\\"ird\\\\store\\n\"} 3\n"),
            "{text}"
        );
    }

    #[test]
    fn special_values_use_the_text_format_spelling() {
        assert_eq!(fmt_value(f64::INFINITY), "+Inf");
        assert_eq!(fmt_value(f64::NEG_INFINITY), "-Inf");
        assert_eq!(fmt_value(f64::NAN), "NaN");
        assert_eq!(fmt_value(2.5), "2.5");
        assert_eq!(fmt_value(7.0), "7");
    }

    #[test]
    fn counters_survive_snapshot_updates_and_unknown_values_have_no_sample() {
        let ops = OpsHandle::default();
        ops.add_webhook_events("twenty", 2);
        ops.update(MetricsSnapshot {
            stores: vec![StoreMetrics {
                store: "twenty".into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        ops.add_webhook_events("twenty", 3);
        let snap = ops.snapshot();
        assert_eq!(
            snap.store("twenty").map(|s| s.webhook_events_total),
            Some(5)
        );
        let text = render_prometheus(&snap);
        assert!(!text.contains("contact_sync_store_contacts{"), "{text}");
        assert!(!text.contains("contact_sync_store_lag_seconds{"), "{text}");
        assert!(text.contains("# TYPE contact_sync_store_contacts gauge"));
    }
}
