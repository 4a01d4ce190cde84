//! Operator requests: `conflicts resolve`, `drift --repair` and `cdc reset`
//! drive the stores, which only the holder of the state database's lock
//! may do. Without a daemon the command takes the lock and does the work
//! itself; while a daemon runs it queues a request in the state database
//! (an ordinary transaction, no lock) and the daemon carries it out between
//! its cycles on its own engine, then records the outcome, which the
//! command may wait for.
//!
//! The daemon looks for queued requests (and new decisions about paused
//! stores) twice a second while it waits for its next cycle, on a
//! connection of its own, so a request is taken within a moment unless a
//! cycle is running; then it is taken when the cycle ends.

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use contact_sync_core::model::{format_ts, now};
use contact_sync_engine::Engine;
use contact_sync_state::{Request, RequestKind, RequestStatus, StateDb, StateError, StateLock};
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::backfill::Backfills;
use crate::config::{Config, StoreConfig};
use crate::daemon::Stopper;

/// Exit status of a command whose request the daemon has not finished
/// when its `--wait` ran out (the request stays queued).
pub const NOT_DONE_YET: u8 = 3;

/// How often the daemon looks for queued requests between cycles.
const WATCH_EVERY: Duration = Duration::from_millis(500);

/// How often a waiting command looks at its request.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// Who may drive the stores now.
pub enum Access {
    /// This command: it holds the lock (no daemon runs).
    Here(StateLock),
    /// A running daemon (or another command) holds the lock.
    Daemon { pid: String },
}

/// Takes the daemon's lock, or says who holds it.
pub fn access(state: &StateDb) -> anyhow::Result<Access> {
    match state.lock() {
        Ok(l) => Ok(Access::Here(l)),
        Err(StateError::Locked { pid, .. }) => Ok(Access::Daemon { pid }),
        Err(e) => Err(e.into()),
    }
}

/// Queues a request for the daemon; returns its id.
pub fn queue(state: &mut StateDb, kind: RequestKind, args: Value) -> anyhow::Result<i64> {
    let tx = state.tx()?;
    let id = tx.queue_request(kind, &args, now())?;
    tx.commit()?;
    tracing::debug!(request = id, kind = kind.as_str(), "queued for the daemon");
    Ok(id)
}

/// An unfinished request of `kind` whose arguments are `args`, if one is
/// queued or running already.
pub fn already_queued(
    state: &StateDb,
    kind: RequestKind,
    args: &Value,
) -> anyhow::Result<Option<Request>> {
    Ok(state
        .unfinished_requests()?
        .into_iter()
        .find(|r| r.kind == kind.as_str() && &r.args == args))
}

/// Waits up to `wait` for the daemon to finish request `id`; returns the
/// request as it is then (finished or not).
pub async fn wait_for(state: &StateDb, id: i64, wait: Duration) -> anyhow::Result<Request> {
    let deadline = Instant::now() + wait;
    loop {
        let r = state.request(id)?.ok_or_else(|| {
            anyhow::anyhow!("operator request {id} vanished from the state database")
        })?;
        if r.status.is_finished() || Instant::now() >= deadline {
            return Ok(r);
        }
        tokio::time::sleep(POLL_EVERY.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    }
}

/// What a command says when its request is not finished by its deadline.
pub fn not_done_yet(r: &Request, wait: Duration, pid: &str) -> ExitCode {
    let what = match r.status {
        RequestStatus::Running => "is being carried out",
        _ => "stays queued",
    };
    eprintln!(
        "request #{} {what}: the daemon (pid {pid}) did not finish it within {} s (a long cycle or \
         another request first?). It carries it out when it gets to it; `contact-sync status` \
         lists the requests still waiting",
        r.id,
        wait.as_secs()
    );
    ExitCode::from(NOT_DONE_YET)
}

/// The daemon: wakes `wake` while a request is queued, and once for each
/// new decision about a paused store (`approve`, `reject`, `resume`), from
/// a connection of its own, until the process ends.
pub fn watch(cfg: &Config, wake: Arc<Notify>) -> anyhow::Result<()> {
    let state = crate::commands::open_state(cfg)?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Decisions seen already: one the cycle could not carry out (a
        // failing reject) stays, and must not wake the loop over and over.
        let mut seen: HashSet<(String, String)> = HashSet::new();
        loop {
            tick.tick().await;
            let queued = state.has_queued_request();
            let decided = state.paused_stores().map(|ps| {
                ps.into_iter()
                    .filter_map(|p| p.decided_at.map(|t| (p.store, format_ts(&t))))
                    .collect::<HashSet<_>>()
            });
            match (queued, decided) {
                (Ok(queued), Ok(decided)) => {
                    let new = decided.iter().any(|d| !seen.contains(d));
                    seen = decided;
                    if queued || new {
                        wake.notify_one();
                    }
                }
                (Err(e), _) | (_, Err(e)) => {
                    tracing::debug!(error = %e, "cannot look for operator requests; trying again")
                }
            }
        }
    });
    Ok(())
}

/// The daemon at start-up: a request it was carrying out when it stopped
/// is failed, not repeated unasked.
pub fn fail_interrupted(state: &mut StateDb) -> anyhow::Result<()> {
    let tx = state.tx()?;
    let n = tx.fail_interrupted_requests(now())?;
    tx.commit()?;
    if n > 0 {
        tracing::warn!(
            requests = n,
            "operator requests interrupted by the last stop are marked failed"
        );
    }
    Ok(())
}

/// The daemon, between cycles: carries out every queued request, oldest
/// first, and records each outcome. A failed request is logged and
/// recorded; it does not stop the daemon (a state database error does
/// stop this round: the next one tries again).
pub async fn serve(cfg: &Config, engine: &mut Engine, backfills: &Backfills, stopper: &Stopper) {
    while !stopper.is_stopped() {
        let next = engine.state_mut().tx().and_then(|tx| {
            let r = tx.start_next_request(now())?;
            tx.commit()?;
            Ok(r)
        });
        let r = match next {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot take an operator request from the state database");
                return;
            }
        };
        let started = Instant::now();
        let outcome = carry_out(cfg, engine, backfills, &r).await;
        match &outcome {
            Ok(_) => tracing::info!(
                request = r.id,
                kind = %r.kind,
                "operator request carried out ({} ms)",
                started.elapsed().as_millis()
            ),
            Err(e) => {
                tracing::warn!(request = r.id, kind = %r.kind, error = %e, "operator request failed")
            }
        }
        let recorded = engine.state_mut().tx().and_then(|tx| {
            tx.finish_request(r.id, outcome.as_ref().map_err(String::as_str), now())?;
            tx.commit()
        });
        if let Err(e) = recorded {
            tracing::warn!(request = r.id, error = %e, "cannot record the outcome of an operator request");
            return;
        }
    }
}

async fn carry_out(
    cfg: &Config,
    engine: &mut Engine,
    backfills: &Backfills,
    r: &Request,
) -> Result<Value, String> {
    let Some(kind) = RequestKind::parse(&r.kind) else {
        return Err(format!(
            "unknown request {:?} (queued by a newer contact-sync?)",
            r.kind
        ));
    };
    match kind {
        RequestKind::ResolveConflict => {
            let id = r.args["conflict"]
                .as_i64()
                .ok_or_else(|| format!("request {}: no conflict id", r.id))?;
            let keep_incoming = r.args["keep"] == "incoming";
            engine
                .resolve_conflict(id, keep_incoming)
                .await
                .map_err(|e| e.to_string())?;
            Ok(
                json!({ "conflict": id, "kept": if keep_incoming { "incoming" } else { "canonical" } }),
            )
        }
        RequestKind::RepairDrift => {
            let out = crate::operator::check_drift(engine, true)
                .await
                .map_err(|e| format!("{e:#}"))?;
            serde_json::to_value(out).map_err(|e| e.to_string())
        }
        RequestKind::CdcReset => {
            let name = r.args["store"]
                .as_str()
                .ok_or_else(|| format!("request {}: no store", r.id))?;
            let Some(StoreConfig::Postgres(p)) = cfg.stores().get(name) else {
                return Err(format!(
                    "{name:?} is not a Postgres store in the daemon's configuration"
                ));
            };
            let mut store = crate::stores::pg_store(name, p)
                .await
                .map_err(|e| format!("{e:#}"))?;
            let cp = store.cdc_reset().await.map_err(|e| e.to_string())?;
            let owed = crate::operator::record_cdc_reset(engine.state_mut(), name, &cp)
                .map_err(|e| format!("{e:#}"))?;
            // The engine's copy of the store read from the old slot (or
            // outbox): this one, reset, takes its place.
            if !backfills.replace(name, Box::new(store)) {
                tracing::warn!(store = %name, "the daemon has no such store to reset; the state is reset for its next start");
            }
            Ok(json!({ "store": name, "owed": owed }))
        }
        RequestKind::Import => {
            let records: Vec<contact_sync_engine::ImportRecord> =
                serde_json::from_value(r.args["records"].clone())
                    .map_err(|e| format!("request {}: records: {e}", r.id))?;
            let report = engine
                .import(records, false)
                .await
                .map_err(|e| e.to_string())?;
            serde_json::to_value(report).map_err(|e| e.to_string())
        }
        RequestKind::Merge => {
            let (Some(keep), Some(other)) = (r.args["keep"].as_str(), r.args["other"].as_str())
            else {
                return Err(format!("request {}: no keep/other", r.id));
            };
            let report = engine
                .merge_contacts(keep, other, false)
                .await
                .map_err(|e| e.to_string())?;
            serde_json::to_value(report).map_err(|e| e.to_string())
        }
    }
}

/// Runs `work` here when no daemon holds the state database, else queues
/// `kind` with `args` for the daemon and waits up to `wait` for its result.
/// `Ok(Err(code))`: the daemon did not finish or failed (said on stderr).
pub async fn here_or_daemon<T, F, Fut>(
    cfg: &Config,
    kind: RequestKind,
    args: Value,
    what: &str,
    wait: Duration,
    work: F,
) -> anyhow::Result<Result<T, ExitCode>>
where
    T: serde::de::DeserializeOwned,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut state = crate::commands::open_state(cfg)?;
    match access(&state)? {
        Access::Here(_lock) => Ok(Ok(work().await?)),
        Access::Daemon { pid } => {
            let id = queue(&mut state, kind, args)?;
            eprintln!(
                "the daemon (pid {pid}) holds the state database: {what} queued as request #{id}, \
                 carried out by the daemon between its cycles; waiting up to {} s",
                wait.as_secs()
            );
            let r = wait_for(&state, id, wait).await?;
            match r.status {
                RequestStatus::Done => {
                    Ok(Ok(serde_json::from_value(r.result.unwrap_or_default())?))
                }
                RequestStatus::Failed => {
                    eprintln!(
                        "error: the daemon could not carry out the {what} (request #{id}): {}",
                        r.error.as_deref().unwrap_or("no reason recorded")
                    );
                    Ok(Err(ExitCode::from(1)))
                }
                _ => Ok(Err(not_done_yet(&r, wait, &pid))),
            }
        }
    }
}
