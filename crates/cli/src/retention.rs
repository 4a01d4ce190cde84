//! Retention: `contact-sync compact`, and the daemon's daily run of the
//! same (see `contact_sync_state::StateDb::compact`). State transactions
//! only, no lock: `compact` works while the daemon runs.

use std::process::ExitCode;

use chrono::Duration;
use contact_sync_core::model::{format_ts, now, parse_ts};
use contact_sync_state::{CompactReport, StateDb, LAST_COMPACTED_META};

use crate::commands::open_state;
use crate::config::Config;

/// How often the daemon compacts.
const EVERY: Duration = Duration::hours(24);

/// Compacts with the configured audit window.
pub fn compact(state: &mut StateDb, retention_days: u32) -> anyhow::Result<CompactReport> {
    let at = now();
    Ok(state.compact(at - Duration::days(i64::from(retention_days)), at)?)
}

/// The daemon, after a cycle: compacts when the last run is a day old (or
/// never ran). A failure is logged; the next cycle tries again.
pub fn run_if_due(state: &mut StateDb, retention_days: u32) {
    let last = state
        .meta(LAST_COMPACTED_META)
        .ok()
        .flatten()
        .and_then(|s| parse_ts(&s));
    if last.is_some_and(|t| now() - t < EVERY) {
        return;
    }
    let started = std::time::Instant::now();
    match compact(state, retention_days) {
        Ok(r) => tracing::info!(
            journal_removed = r.journal_removed,
            journal_kept = r.journal_kept,
            conflicts_removed = r.conflicts_removed,
            dead_letters_removed = r.dead_letters_removed,
            requests_removed = r.requests_removed,
            history_removed = r.history_removed,
            retention_days,
            "state database compacted ({} ms)",
            started.elapsed().as_millis()
        ),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "compacting the state database failed; tried again after the next cycle")
        }
    }
}

/// `contact-sync compact`.
pub fn command(cfg: &Config, json: bool) -> anyhow::Result<ExitCode> {
    crate::commands::require_state(cfg)?;
    let mut state = open_state(cfg)?;
    let days = cfg.state.retention_days;
    let r = compact(&mut state, days)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "compacted (audit window {days} days, before {}): journal {} entries removed, {} kept \
         (everything after entry {} kept for the stores' cursors); {} settled conflicts, {} \
         closed dead letters and {} finished operator requests expired",
        format_ts(&(now() - Duration::days(i64::from(days)))),
        r.journal_removed,
        r.journal_kept,
        r.floor_seq,
        r.conflicts_removed,
        r.dead_letters_removed,
        r.requests_removed
    );
    Ok(ExitCode::SUCCESS)
}
