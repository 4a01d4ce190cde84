//! `contact-sync paused | approve | reject | resume`: a person's decisions
//! about stores the guards paused or a permanent error parked. They are rows in the state database,
//! written in an ordinary transaction without the daemon's lock, so they
//! work while the daemon runs; the daemon carries them out at its next cycle
//! (a stopped daemon at its next start).

use std::process::ExitCode;

use contact_sync_core::model::{format_ts, now};
use contact_sync_state::{Decision, PauseKind};

use crate::commands::open_state;
use crate::config::Config;

/// Lists paused stores with what is held back and how to settle each.
pub fn list(cfg: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let state = open_state(cfg)?;
    let paused = state.paused_stores()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&paused)?);
        return Ok(ExitCode::SUCCESS);
    }
    if paused.is_empty() {
        println!("no store is paused");
        return Ok(ExitCode::SUCCESS);
    }
    for p in &paused {
        println!(
            "{} paused since {} ({}): {}",
            p.store,
            format_ts(&p.since),
            p.label(),
            p.reason
        );
        if p.kind == PauseKind::MassChange {
            println!("    held back: {}", p.details);
        }
        match p.decision {
            Some(d) => println!(
                "    decided: {} (carried out at the daemon's next cycle)",
                d.as_str()
            ),
            None => match p.kind {
                PauseKind::MassChange => println!(
                    "    settle with: contact-sync approve {0}  |  contact-sync reject {0}",
                    p.store
                ),
                PauseKind::Schema if p.parked.is_some() => println!(
                    "    once fixed: contact-sync resume {0}  (or start the daemon with a changed [stores.{0}] configuration)",
                    p.store
                ),
                PauseKind::Schema => {
                    println!("    once fixed: contact-sync resume {}", p.store)
                }
            },
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Records a decision about a paused store.
pub fn decide(cfg: &Config, store: &str, decision: Decision) -> anyhow::Result<ExitCode> {
    if !cfg.stores().contains_key(store) {
        let known: Vec<&String> = cfg.stores().keys().collect();
        anyhow::bail!("no store named {store:?} in the configuration (stores: {known:?})");
    }
    let mut state = open_state(cfg)?;
    let Some(p) = state.paused(store)? else {
        eprintln!("{store} is not paused; nothing to decide");
        return Ok(ExitCode::from(1));
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
        eprintln!(
            "{store} is paused ({}): use {hint}. Reason: {}",
            p.label(),
            p.reason
        );
        return Ok(ExitCode::from(2));
    }
    let tx = state.tx()?;
    tx.decide(store, decision, now())?;
    tx.commit()?;
    let running = state.lock_holder()?.is_some();
    let what = match decision {
        Decision::Approve => format!("the held changes of {store} are merged and sent everywhere"),
        Decision::Reject => format!(
            "the held changes of {store} are passed over and canonical's records are written back to {store}"
        ),
        Decision::Resume => format!("{store} is tried again"),
    };
    if running {
        println!("recorded: {what} at the daemon's next cycle");
    } else {
        println!("recorded: {what} at the next `contact-sync run`");
    }
    Ok(ExitCode::SUCCESS)
}
