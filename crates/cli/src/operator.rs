//! `drift [--repair]`, `conflicts resolve` and `cdc reset`, with or without
//! a running daemon.
//!
//! - `drift` (read-only) takes no lock: it reads canonical and every store
//!   (opened without set-up) and the state database through connections
//!   and transactions of its own, and records only the drift it found
//!   (`drift:<store>`, as the daemon's own check does).
//! - `conflicts resolve`, `drift --repair` and `cdc reset` drive the
//!   stores: without a daemon they take its lock and do the work here;
//!   while one runs they queue a request it carries out between its cycles
//!   (see [`crate::requests`]). `drift --repair` and `cdc reset` wait for
//!   the outcome (`--wait`); `conflicts resolve` says what will happen.

use std::process::ExitCode;
use std::time::Duration;

use contact_sync_connector::Checkpoint;
use contact_sync_core::model::{format_ts, now};
use contact_sync_engine::{Engine, RepairReport, StoreVerification};
use contact_sync_state::{RequestKind, RequestStatus, StateDb};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::commands::{open_state, require_state};
use crate::config::{Config, StoreConfig};
use crate::requests::{self, Access};
use crate::Keep;

/// What `drift` found and, with `--repair`, did.
#[derive(Debug, Serialize, Deserialize)]
pub struct DriftOutcome {
    /// Every store against canonical, before any repair.
    pub stores: Vec<StoreVerification>,
    pub repairs: Vec<RepairReport>,
    /// Drifting stores left alone because they are paused (a person
    /// decides first: repairing would merge what a guard holds back).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped_paused: Vec<String>,
    /// Every store again, after the repairs.
    pub after_repair: Option<Vec<StoreVerification>>,
}

impl DriftOutcome {
    /// Whether a store still differs from canonical.
    pub fn drifting(&self) -> bool {
        self.after_repair
            .as_ref()
            .unwrap_or(&self.stores)
            .iter()
            .any(|v| v.missing + v.differing + v.extra > 0 || !v.unreadable.is_empty())
    }

    fn print(&self, json: bool) -> anyhow::Result<()> {
        if json {
            println!("{}", serde_json::to_string_pretty(self)?);
            return Ok(());
        }
        crate::daemon::print_verification(&self.stores);
        for r in &self.repairs {
            println!(
                "repaired {}: {} contacts written again, {} changed there since the engine last saw them (merged into canonical, not overwritten), {} extra left alone",
                r.store, r.rewritten, r.merged, r.extra
            );
        }
        for s in &self.skipped_paused {
            println!(
                "not repaired {s}: it is paused (see `contact-sync paused`); settle that first"
            );
        }
        if let Some(a) = &self.after_repair {
            println!("after repair:");
            crate::daemon::print_verification(a);
        }
        Ok(())
    }

    fn exit_code(&self) -> ExitCode {
        if self.drifting() {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        }
    }
}

/// Compares every store with canonical; with `repair`, writes canonical's
/// record again where a store lacks it or differs (not in paused stores),
/// then compares again.
pub async fn check_drift(engine: &mut Engine, repair: bool) -> anyhow::Result<DriftOutcome> {
    let stores = engine.verify().await?;
    let mut out = DriftOutcome {
        stores,
        repairs: Vec::new(),
        skipped_paused: Vec::new(),
        after_repair: None,
    };
    if repair {
        for v in &out.stores {
            if v.missing + v.differing == 0 {
                continue;
            }
            if engine.state().paused(&v.store)?.is_some() {
                out.skipped_paused.push(v.store.clone());
                continue;
            }
            out.repairs.push(engine.repair(&v.store).await?);
        }
        out.after_repair = Some(engine.verify().await?);
    }
    Ok(out)
}

/// `drift [--json] [--repair [--wait SECS]]`.
pub async fn drift(cfg: &Config, json: bool, repair: bool, wait: u64) -> anyhow::Result<ExitCode> {
    require_state(cfg)?;
    if !repair {
        let mut engine = crate::daemon::build_readonly_engine(cfg).await?;
        let out = check_drift(&mut engine, false).await?;
        out.print(json)?;
        if !json && out.drifting() && engine.state().lock_holder()?.is_some() {
            println!(
                "note: the daemon is running; a contact changed since its last cycle shows as drift until its next one"
            );
        }
        return Ok(out.exit_code());
    }
    let mut state = open_state(cfg)?;
    match requests::access(&state)? {
        Access::Here(_lock) => {
            let mut engine = crate::daemon::build_engine(cfg, None).await?;
            let out = check_drift(&mut engine, true).await?;
            out.print(json)?;
            Ok(out.exit_code())
        }
        Access::Daemon { pid } => {
            let args = json!({});
            let id = match requests::already_queued(&state, RequestKind::RepairDrift, &args)? {
                Some(r) => r.id,
                None => requests::queue(&mut state, RequestKind::RepairDrift, args)?,
            };
            eprintln!(
                "the daemon (pid {pid}) holds the state database: drift repair queued as request #{id}, \
                 carried out by the daemon between its cycles; waiting up to {wait} s"
            );
            let wait = Duration::from_secs(wait);
            let r = requests::wait_for(&state, id, wait).await?;
            match r.status {
                RequestStatus::Done => {
                    let out: DriftOutcome = serde_json::from_value(r.result.unwrap_or_default())?;
                    out.print(json)?;
                    Ok(out.exit_code())
                }
                RequestStatus::Failed => {
                    eprintln!(
                        "error: the daemon could not repair drift (request #{id}): {}",
                        r.error.as_deref().unwrap_or("no reason recorded")
                    );
                    Ok(ExitCode::from(1))
                }
                _ => Ok(requests::not_done_yet(&r, wait, &pid)),
            }
        }
    }
}

/// `conflicts resolve ID --keep canonical|incoming`.
pub async fn conflicts_resolve(cfg: &Config, id: i64, keep: Keep) -> anyhow::Result<ExitCode> {
    let mut state = open_state(cfg)?;
    let Some(row) = state.conflict(id)? else {
        anyhow::bail!("no conflict with id {id} (see `contact-sync conflicts list --all`)");
    };
    if row.status != "open" {
        anyhow::bail!("conflict {id} is already settled ({})", row.status);
    }
    let kept = if keep == Keep::Incoming {
        "incoming"
    } else {
        "canonical"
    };
    match requests::access(&state)? {
        Access::Here(_lock) => {
            let mut engine = crate::daemon::build_engine(cfg, None).await?;
            engine.resolve_conflict(id, keep == Keep::Incoming).await?;
            println!(
                "conflict {id} settled: kept {}",
                if keep == Keep::Incoming {
                    "incoming (propagated at the next cycle)"
                } else {
                    "canonical"
                }
            );
        }
        Access::Daemon { pid } => {
            let args = json!({ "conflict": id, "keep": kept });
            let queued = state.unfinished_requests()?.into_iter().find(|r| {
                r.kind == RequestKind::ResolveConflict.as_str() && r.args["conflict"] == id
            });
            if let Some(r) = queued {
                anyhow::bail!(
                    "conflict {id} is already queued to be settled (request #{}, keep {}); the running daemon (pid {pid}) applies it at its next cycle",
                    r.id,
                    r.args["keep"].as_str().unwrap_or("?")
                );
            }
            let rid = requests::queue(&mut state, RequestKind::ResolveConflict, args)?;
            println!(
                "conflict {id}: queued (request #{rid}); the running daemon (pid {pid}) applies it at its next cycle, keeping {kept}{} \
                 (`contact-sync conflicts list --all` shows it settled then)",
                if keep == Keep::Incoming {
                    ", and sends it to every store"
                } else {
                    ""
                }
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `cdc reset STORE [--wait SECS]`.
pub async fn cdc_reset(cfg: &Config, name: &str, wait: u64) -> anyhow::Result<ExitCode> {
    let Some(StoreConfig::Postgres(p)) = cfg.stores().get(name) else {
        anyhow::bail!("{name:?} is not a Postgres store in the configuration");
    };
    require_state(cfg)?;
    let mut state = open_state(cfg)?;
    match requests::access(&state)? {
        Access::Here(_lock) => {
            let mut store = crate::stores::pg_store(name, p).await?;
            let cp = store
                .cdc_reset()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            record_cdc_reset(&mut state, name, &cp)?;
            print_cdc_reset(name, "The next cycle");
            Ok(ExitCode::SUCCESS)
        }
        Access::Daemon { pid } => {
            let args = json!({ "store": name });
            let id = match requests::already_queued(&state, RequestKind::CdcReset, &args)? {
                Some(r) => r.id,
                None => requests::queue(&mut state, RequestKind::CdcReset, args)?,
            };
            eprintln!(
                "the daemon (pid {pid}) holds the state database: the reset of {name}'s change capture is \
                 queued as request #{id}, carried out by the daemon between its cycles; waiting up to {wait} s"
            );
            let wait = Duration::from_secs(wait);
            let r = requests::wait_for(&state, id, wait).await?;
            match r.status {
                RequestStatus::Done => {
                    print_cdc_reset(name, "The daemon's next cycle");
                    Ok(ExitCode::SUCCESS)
                }
                RequestStatus::Failed => {
                    eprintln!(
                        "error: the daemon could not reset {name}'s change capture (request #{id}): {}",
                        r.error.as_deref().unwrap_or("no reason recorded")
                    );
                    Ok(ExitCode::from(1))
                }
                _ => Ok(requests::not_done_yet(&r, wait, &pid)),
            }
        }
    }
}

fn print_cdc_reset(name: &str, when: &str) {
    println!(
        "{name}: change capture recreated. {when} writes every record to {name} again, each on condition of what contact-sync last saw there: \
         a record edited while capture was broken is merged into canonical, not overwritten."
    );
}

/// Records that store `name`'s change capture was recreated and reads
/// from `cp` on: what the store holds is unknown now, so every record is
/// owed a write on condition of what the engine last saw there (a record
/// edited while capture was broken is found and merged), and a backfill is
/// asked for. Returns how many records are owed.
pub fn record_cdc_reset(state: &mut StateDb, name: &str, cp: &Checkpoint) -> anyhow::Result<u64> {
    let tx = state.tx()?;
    tx.set_checkpoint(name, cp.as_str())?;
    let owed = tx.owe_all(name)?;
    tx.set_meta("backfill_requested_at", &format_ts(&now()))?;
    tx.commit()?;
    tracing::info!(store = %name, owed, "every record owed a conditional write");
    Ok(owed)
}
