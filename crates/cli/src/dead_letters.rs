//! `contact-sync dead-letters list|retry|dismiss`: ordinary state
//! transactions, no lock — they work while the daemon runs (it picks a
//! retry up at its next cycle).

use std::process::ExitCode;

use contact_sync_core::model::{format_ts, now};
use contact_sync_engine::CANONICAL;
use contact_sync_state::{DeadLetterClosed, DeadLetterStatus, StateError};

use crate::commands::open_state;
use crate::config::Config;

/// `dead-letters list`: the open ones (everything with `--all`), newest first.
pub fn list(cfg: &Config, json: bool, all: bool, limit: usize) -> anyhow::Result<ExitCode> {
    let state = open_state(cfg)?;
    let rows = state.dead_letter_rows(!all, limit)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no {}dead letters", if all { "" } else { "open " });
    }
    for d in rows {
        let seen = if d.count > 1 {
            format!(
                " (seen {} times, last {})",
                d.count,
                format_ts(&d.last_seen)
            )
        } else {
            String::new()
        };
        let status = if d.status == DeadLetterStatus::Open {
            String::new()
        } else {
            format!(" [{}]", d.status.as_str())
        };
        println!(
            "#{} {} store {} record {} field `{}`: {}{seen}{status}",
            d.letter.id,
            format_ts(&d.letter.at),
            d.letter.store,
            d.letter.record,
            d.letter.field,
            d.letter.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `dead-letters retry ID` / `dismiss ID` (the console's buttons take the
/// same state call, `retry_or_dismiss_dead_letter`).
pub fn close(cfg: &Config, id: i64, retry: bool) -> anyhow::Result<ExitCode> {
    let mut state = open_state(cfg)?;
    let (dl, owed) = match state.retry_or_dismiss_dead_letter(id, retry, CANONICAL, now()) {
        Err(StateError::NotFound { .. }) => {
            eprintln!("no dead letter {id} (see `contact-sync dead-letters list --all`)");
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e.into()),
        Ok(DeadLetterClosed::AlreadyClosed { letter }) => {
            eprintln!(
                "dead letter {id} is already {} ({}); nothing done",
                letter.status.as_str(),
                letter.closed_at.map(|t| format_ts(&t)).unwrap_or_default()
            );
            return Ok(ExitCode::from(1));
        }
        Ok(DeadLetterClosed::Closed { letter, owed }) => (letter, owed),
    };
    let (store, record) = (&dl.letter.store, &dl.letter.record);
    match (retry, owed) {
        (true, true) => println!(
            "dead letter {id} retried: the next cycle looks at record {record} in {store} again \
             (canonical's record is written there on condition of what the engine last saw; \
             a record that changed there is read and merged; still refused → a new dead letter)"
        ),
        (true, false) => println!(
            "dead letter {id} closed: record {record} in {store} is read again when it changes there"
        ),
        (false, _) => println!(
            "dead letter {id} dismissed (the same refusal later is counted on it, not reopened)"
        ),
    }
    Ok(ExitCode::SUCCESS)
}
