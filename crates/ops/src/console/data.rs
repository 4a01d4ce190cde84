//! What the pages and the API show, read from the state database and the
//! daemon's live numbers; and the actions both take.

use contact_sync_core::model::now;
use contact_sync_core::{JournalEntry, Timestamp};
use contact_sync_engine::CANONICAL;
use contact_sync_state::{
    ConflictRow, ContactHit, DeadLetterClosed, DeadLetterRow, Decision, HistoryBucket, Page,
    PauseKind, PausedStore, StateError, StoreRecord,
};
use serde::Serialize;

use super::Console;
use crate::metrics::{CycleOutcome, MetricsSnapshot, StoreMetrics, StoreSample};
use crate::HealthStatus;

/// A store's state on the overview.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StoreState {
    Ok,
    /// Working, but behind, drifting or failing now and then.
    Degraded,
    /// Held back by a guard until a person decides.
    Paused,
    /// Failing run after run.
    Failing,
}

impl StoreState {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreState::Ok => "ok",
            StoreState::Degraded => "degraded",
            StoreState::Paused => "paused",
            StoreState::Failing => "failing",
        }
    }
}

/// One store on the overview: its numbers, its state and why.
#[derive(Debug, Clone, Serialize)]
pub struct OverviewStore {
    #[serde(flatten)]
    pub metrics: StoreMetrics,
    pub state: StoreState,
    /// Why it is not ok (none when ok).
    pub why: Vec<String>,
}

/// The overview.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    pub taken_at: Timestamp,
    pub stores: Vec<OverviewStore>,
    pub conflicts_open: u64,
    pub dead_letters: u64,
    pub paused: usize,
    pub journal_head: i64,
    pub last_cycle: Option<CycleOutcome>,
    pub cycles_total: u64,
    pub cycle_failures_total: u64,
    /// `ok`, `degraded` or `unhealthy`, as `/health` says.
    pub health: &'static str,
    /// What `/health` names (alerts firing).
    pub alerts: Vec<String>,
    /// Several daemons on one state database: who holds what.
    pub leases: Vec<contact_sync_state::lease::LeaseRow>,
    /// This daemon's part (its name in the lease table).
    pub this_daemon: Option<crate::LeaseGauge>,
}

/// One contact: its canonical record (as of its newest journal entry),
/// its sync record in every store, and its journal (newest first).
#[derive(Debug, Clone, Serialize)]
pub struct ContactView {
    pub contact_id: String,
    pub canonical: Option<JournalEntry>,
    pub stores: Vec<StoreRecord>,
    pub journal: Vec<JournalEntry>,
    /// The record as each store holds it now (read through the daemon);
    /// `None` when the daemon's loop was busy too long to answer.
    pub live: Option<Vec<super::StoreRead>>,
}

/// How long the contact view waits for the daemon to read the stores.
const LIVE_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// How many journal entries the contact view shows.
pub const JOURNAL_ROWS: usize = 200;

fn state_err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

pub(crate) async fn overview(c: &Console) -> Result<Overview, String> {
    let live = c.inner.ops.snapshot();
    let thresholds = c.inner.ops.health_thresholds();
    let samples: Vec<StoreSample> = if live.stores.is_empty() {
        c.inner
            .stores
            .iter()
            .map(|s| StoreSample::new(s.clone(), None))
            .collect()
    } else {
        live.stores
            .iter()
            .map(|s| {
                let mut sample = StoreSample::new(s.store.clone(), s.contacts);
                sample.retained_wal_bytes = s.retained_wal_bytes;
                sample
            })
            .collect()
    };
    let at = now();
    let mut snap = c
        .with_db(move |db| MetricsSnapshot::from_state(db, &samples, at).map_err(state_err))
        .await?;
    for s in &mut snap.stores {
        if let Some(l) = live.store(&s.store) {
            s.errors_total = l.errors_total;
            s.webhook_events_total = l.webhook_events_total;
            s.cdc_events_total = l.cdc_events_total;
            s.query_cost = l.query_cost;
        }
    }
    snap.last_cycle = live.last_cycle.clone();
    snap.cycles_total = live.cycles_total;
    snap.cycle_failures_total = live.cycle_failures_total;
    let health = HealthStatus::evaluate(&snap, &thresholds);
    let (health_word, reasons) = match &health {
        HealthStatus::Healthy => ("ok", Vec::new()),
        HealthStatus::Degraded(r) => ("degraded", r.clone()),
        HealthStatus::Unhealthy(r) => ("unhealthy", r.clone()),
    };
    let max_lag = thresholds.max_lag.as_secs_f64();
    let stores = snap
        .stores
        .iter()
        .map(|m| {
            let mut why = Vec::new();
            let state = if let Some((kind, reason)) = &m.paused {
                why.push(format!("{kind}: {reason}"));
                StoreState::Paused
            } else if m.consecutive_errors >= thresholds.max_store_failures {
                why.push(format!(
                    "{} failed runs in a row: {}",
                    m.consecutive_errors,
                    m.last_error.as_deref().unwrap_or("(no error text)")
                ));
                StoreState::Failing
            } else {
                if m.consecutive_errors > 0 {
                    why.push(format!(
                        "{} failed run(s): {}",
                        m.consecutive_errors,
                        m.last_error.as_deref().unwrap_or("(no error text)")
                    ));
                }
                if let Some(lag) = m.lag_seconds.filter(|l| *l > max_lag) {
                    why.push(format!("no success for {lag:.0} s"));
                }
                if let Some(d) = m.drift_pct.filter(|d| *d > 0.0) {
                    why.push(format!("drift {d:.2} % at the last check"));
                }
                if why.is_empty() {
                    StoreState::Ok
                } else {
                    StoreState::Degraded
                }
            };
            OverviewStore {
                metrics: m.clone(),
                state,
                why,
            }
        })
        .collect::<Vec<_>>();
    Ok(Overview {
        taken_at: snap.taken_at,
        paused: stores
            .iter()
            .filter(|s| s.state == StoreState::Paused)
            .count(),
        stores,
        conflicts_open: snap.conflicts_open,
        dead_letters: snap.dead_letters,
        journal_head: snap.journal_head,
        last_cycle: snap.last_cycle,
        cycles_total: snap.cycles_total,
        cycle_failures_total: snap.cycle_failures_total,
        health: health_word,
        alerts: reasons.iter().map(|r| r.to_string()).collect(),
        leases: c.with_db(|db| db.leases().map_err(state_err)).await?,
        this_daemon: live.leases.first().cloned(),
    })
}

pub(crate) async fn conflicts(
    c: &Console,
    all: bool,
    before: Option<i64>,
    limit: usize,
) -> Result<Page<ConflictRow>, String> {
    c.with_db(move |db| db.conflicts_page(!all, before, limit).map_err(state_err))
        .await
}

pub(crate) async fn dead_letters(
    c: &Console,
    before: Option<i64>,
    limit: usize,
) -> Result<Page<DeadLetterRow>, String> {
    c.with_db(move |db| db.dead_letter_rows_page(before, limit).map_err(state_err))
        .await
}

/// The run history of the last `hours` hours (the overview's charts).
pub(crate) async fn history(c: &Console, hours: i64) -> Result<Vec<HistoryBucket>, String> {
    let since = now() - chrono::Duration::hours(hours);
    c.with_db(move |db| db.run_history(&since).map_err(state_err))
        .await
}

/// A dead letter retried or dismissed (as `contact-sync dead-letters
/// retry|dismiss` does it: the same state call).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeadLetterAction {
    pub ok: bool,
    pub message: String,
    pub dead_letter: DeadLetterRow,
    /// A retry left the record owed a write in its store.
    pub owed: bool,
}

pub(crate) async fn close_dead_letter(
    c: &Console,
    id: i64,
    retry: bool,
) -> Result<DeadLetterAction, Refused> {
    let closed = c
        .with_db(move |db| Ok(db.retry_or_dismiss_dead_letter(id, retry, CANONICAL, now())))
        .await
        .map_err(|e| Refused(500, e))?;
    match closed {
        Err(StateError::NotFound { .. }) => Err(Refused(404, format!("no dead letter {id}"))),
        Err(e) => Err(Refused(500, e.to_string())),
        Ok(DeadLetterClosed::AlreadyClosed { letter }) => Err(Refused(
            409,
            format!(
                "dead letter {id} is already {}; nothing done",
                letter.status.as_str()
            ),
        )),
        Ok(DeadLetterClosed::Closed { letter, owed }) => {
            let (store, record) = (&letter.letter.store, &letter.letter.record);
            let message = match (retry, owed) {
                (true, true) => format!(
                    "Dead letter {id} retried: the next cycle looks at record {record} in {store} again."
                ),
                (true, false) => format!(
                    "Dead letter {id} closed: record {record} in {store} is read again when it changes there."
                ),
                (false, _) => format!("Dead letter {id} dismissed."),
            };
            Ok(DeadLetterAction {
                ok: true,
                message,
                dead_letter: letter,
                owed,
            })
        }
    }
}

/// The open conflicts of one contact.
pub(crate) async fn open_conflicts_of(
    c: &Console,
    contact_id: String,
) -> Result<Vec<ConflictRow>, String> {
    c.with_db(move |db| db.open_conflicts_of(&contact_id).map_err(state_err))
        .await
}

/// Settles some of a contact's open conflicts, each its own way (`true`:
/// keep incoming), one after another through the daemon's loop (the
/// engine's `resolve_conflict`, as `contact-sync conflicts resolve`).
/// Every id must be an open conflict of this contact (checked before any
/// is settled). Returns what was kept, per conflict.
pub(crate) async fn resolve_fields(
    c: &Console,
    contact_id: String,
    choices: Vec<(i64, bool)>,
) -> Result<Vec<String>, Refused> {
    if choices.is_empty() {
        return Err(Refused(
            400,
            "no choice was made: pick canonical or incoming for a field".into(),
        ));
    }
    let open = open_conflicts_of(c, contact_id.clone())
        .await
        .map_err(|e| Refused(500, e))?;
    let mut plan = Vec::new();
    for (id, keep_incoming) in choices {
        let Some(row) = open.iter().find(|r| r.id == id) else {
            return Err(Refused(
                409,
                format!("conflict {id} is not an open conflict of contact {contact_id} (settled meanwhile?); nothing done"),
            ));
        };
        plan.push((id, row.conflict.field.clone(), keep_incoming));
    }
    let mut done = Vec::new();
    for (id, field, keep_incoming) in plan {
        let kept = if keep_incoming {
            "incoming"
        } else {
            "canonical"
        };
        c.resolve(id, keep_incoming).await.map_err(|e| {
            let before = if done.is_empty() {
                String::new()
            } else {
                format!(" (settled before it: {})", done.join(", "))
            };
            Refused(
                409,
                format!("conflict {id} ({field}, keep {kept}): {e}{before}"),
            )
        })?;
        done.push(format!("{field}: kept {kept}"));
    }
    Ok(done)
}

pub(crate) async fn paused(c: &Console) -> Result<Vec<PausedStore>, String> {
    c.with_db(|db| db.paused_stores().map_err(state_err)).await
}

pub(crate) async fn contact(c: &Console, id: String) -> Result<Option<ContactView>, String> {
    let live = c.read_contact(id.clone(), LIVE_READ_WAIT).await;
    let found_live = live
        .as_ref()
        .is_some_and(|l| l.iter().any(|r| r.record.is_some()));
    c.with_db(move |db| {
        let canonical = db.latest_journal_entry(&id).map_err(state_err)?;
        let stores = db.store_records_of(&id).map_err(state_err)?;
        if canonical.is_none() && stores.is_empty() && !found_live {
            return Ok(None);
        }
        let journal = db.journal_of(&id, JOURNAL_ROWS).map_err(state_err)?;
        Ok(Some(ContactView {
            contact_id: id,
            canonical,
            stores,
            journal,
            live,
        }))
    })
    .await
}

/// A page of contacts found, and whether the search index is still being
/// filled from canonical (then some contacts may be missing).
#[derive(Debug, Clone, Serialize)]
pub struct SearchResults {
    #[serde(flatten)]
    pub page: Page<ContactHit>,
    pub index_filling: bool,
}

pub(crate) async fn search(
    c: &Console,
    q: String,
    before: Option<i64>,
    limit: usize,
) -> Result<SearchResults, String> {
    c.with_db(move |db| {
        let page = db.search_contacts(&q, before, limit).map_err(state_err)?;
        let index_filling = db
            .meta(contact_sync_state::SEARCH_FILL_META)
            .map_err(state_err)?
            .is_some_and(|v| v != contact_sync_state::SEARCH_FILL_DONE);
        Ok(SearchResults {
            page,
            index_filling,
        })
    })
    .await
}

/// Why an action was refused: the HTTP status and the message.
pub(crate) struct Refused(pub u16, pub String);

/// Records a decision about a paused store, checked as `contact-sync
/// approve | reject | resume` checks it. Returns what happens next.
pub(crate) async fn decide(
    c: &Console,
    store: String,
    decision: Decision,
) -> Result<String, Refused> {
    if !c.inner.stores.contains(&store) {
        return Err(Refused(404, format!("no store named {store:?}")));
    }
    c.with_db(move |db| {
        let Some(p) = db.paused(&store).map_err(state_err)? else {
            return Ok(Err(Refused(409, format!("{store} is not paused"))));
        };
        let fits = matches!(
            (p.kind, decision),
            (PauseKind::MassChange, Decision::Approve | Decision::Reject)
                | (PauseKind::Schema, Decision::Resume)
        );
        if !fits {
            let hint = match p.kind {
                PauseKind::MassChange => "approve or reject",
                PauseKind::Schema => "resume (after fixing what the reason names)",
            };
            return Ok(Err(Refused(
                409,
                format!("{store} is paused ({}): use {hint}", p.label()),
            )));
        }
        let tx = db.tx().map_err(state_err)?;
        tx.decide(&store, decision, now()).map_err(state_err)?;
        tx.commit().map_err(state_err)?;
        Ok(Ok(format!(
            "{store}: {} recorded; the daemon carries it out at its next cycle",
            decision.as_str()
        )))
    })
    .await
    .map_err(|e| Refused(500, e))?
}

/// Settles a conflict through the daemon's loop.
pub(crate) async fn resolve(c: &Console, id: i64, keep_incoming: bool) -> Result<String, Refused> {
    let row = c
        .with_db(move |db| db.conflict(id).map_err(state_err))
        .await
        .map_err(|e| Refused(500, e))?;
    match row {
        None => return Err(Refused(404, format!("no conflict with id {id}"))),
        Some(r) if r.status != "open" => {
            return Err(Refused(
                409,
                format!("conflict {id} is already settled ({})", r.status),
            ))
        }
        Some(_) => {}
    }
    c.resolve(id, keep_incoming)
        .await
        .map_err(|e| Refused(409, e))?;
    Ok(format!(
        "conflict {id} settled: kept {}",
        if keep_incoming {
            "incoming (propagated at the next cycle)"
        } else {
            "canonical"
        }
    ))
}
