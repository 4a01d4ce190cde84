//! The one-shot commands: seed, status, show, conflicts, dead letters.

use std::process::ExitCode;

use anyhow::Context;
use contact_sync_core::model::format_ts;
use contact_sync_core::synth::Generator;
use contact_sync_core::Contact;
use contact_sync_engine::CANONICAL;
use contact_sync_state::{StateDb, StateTarget};
use serde::Serialize;

use crate::config::Config;
use contact_sync_core::prompt::{
    build_multi_contact_context, build_prompt_with_contact, PromptFormat, PromptOptions,
};

use crate::{stores, Cli, Command, ConflictAction, DeadLetterAction, PromptFormatArg};

pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = Config::load(cli.config.as_deref())?;
    let config_path = cli.config.clone();
    match cli.command {
        Command::Seed {
            contacts,
            invalid,
            seed,
            first_index,
        } => seed_contacts(&cfg, contacts, invalid, seed, first_index).await,
        Command::Run {
            initial_sync,
            once,
            interval,
            batch_size,
            safety_check,
            http_listen,
            no_http,
        } => {
            let o = crate::daemon::RunOptions {
                initial_sync,
                once,
                interval,
                batch_size,
                safety_check,
                http_listen,
                no_http,
                config_path,
            };
            crate::daemon::run(&cfg, o).await
        }
        Command::Duplicates {
            json,
            limit,
            min_score,
        } => crate::duplicates::duplicates(&cfg, json, limit, min_score).await,
        Command::Paused { json } => crate::guard::list(&cfg, json),
        Command::Approve { store } => {
            crate::guard::decide(&cfg, &store, contact_sync_state::Decision::Approve)
        }
        Command::Reject { store } => {
            crate::guard::decide(&cfg, &store, contact_sync_state::Decision::Reject)
        }
        Command::Resume { store } => {
            crate::guard::decide(&cfg, &store, contact_sync_state::Decision::Resume)
        }
        Command::Check { json } => {
            let report = safety_report(&cfg, config_path.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            } else {
                print!("{}", report.render_human());
            }
            Ok(ExitCode::from(report.exit_code() as u8))
        }
        Command::Service { kind, user } => {
            let exe = std::env::current_exe()?;
            let config = match &config_path {
                Some(p) => std::path::absolute(p)?,
                None => anyhow::bail!(
                    "service: pass --config with the configuration file the service should use"
                ),
            };
            let text = match kind {
                crate::ServiceKind::Systemd => {
                    contact_sync_ops::systemd_unit(&exe, &config, &user)?
                }
                crate::ServiceKind::Launchd => contact_sync_ops::launchd_plist(&exe, &config)?,
            };
            print!("{text}");
            Ok(ExitCode::SUCCESS)
        }
        Command::InitialSync { batch_size } => {
            crate::daemon::initial_sync_only(&cfg, batch_size).await
        }
        Command::Status { json } => {
            require_state(&cfg)?;
            status(&cfg, json).await
        }
        Command::People(cmd) => crate::people::dispatch(&cfg, cmd).await,
        Command::Show {
            contact_id,
            store,
            json,
        } => show(&cfg, &contact_id, store.as_deref(), json).await,
        Command::Conflicts { action } => match require_state(&cfg).map(|()| action)? {
            ConflictAction::List { json, all } => conflicts_list(&cfg, json, all),
            ConflictAction::Resolve { id, keep } => {
                crate::operator::conflicts_resolve(&cfg, id, keep).await
            }
        },
        Command::DeadLetters { action } => match require_state(&cfg).map(|()| action)? {
            DeadLetterAction::List { json, all, limit } => {
                crate::dead_letters::list(&cfg, json, all, limit)
            }
            DeadLetterAction::Retry { id } => crate::dead_letters::close(&cfg, id, true),
            DeadLetterAction::Dismiss { id } => crate::dead_letters::close(&cfg, id, false),
        },
        Command::State { action } => match action {
            crate::StateAction::MigrateToPostgres { from, json } => {
                crate::state_cmd::migrate_to_postgres(&cfg, from, json)
            }
        },
        Command::Cdc { action } => cdc(&cfg, action).await,
        Command::Drift { json, repair, wait } => {
            crate::operator::drift(&cfg, json, repair, wait).await
        }
        Command::Compact { json } => crate::retention::command(&cfg, json),
        Command::Migrate => {
            stores::migrate_all(&cfg).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Prompt {
            contacts,
            base_prompt,
            base_prompt_file,
            source,
            format,
            max_tokens,
            allow_excluded,
        } => {
            let base = match (base_prompt, base_prompt_file) {
                (Some(b), _) => Some(b),
                (None, Some(f)) => Some(
                    std::fs::read_to_string(&f)
                        .with_context(|| format!("cannot read {}", f.display()))?,
                ),
                (None, None) => None,
            };
            let opts = PromptOptions {
                max_tokens,
                allow_excluded,
                format: match format {
                    PromptFormatArg::Text => PromptFormat::Text,
                    PromptFormatArg::Json => PromptFormat::Json,
                },
            };
            prompt(&cfg, &contacts, base.as_deref(), source.as_deref(), &opts).await
        }
    }
}

async fn cdc(cfg: &Config, action: crate::CdcAction) -> anyhow::Result<ExitCode> {
    match action {
        crate::CdcAction::Status { store: name, json } => {
            let Some(crate::config::StoreConfig::Postgres(p)) = cfg.stores().get(&name) else {
                anyhow::bail!("{name:?} is not a Postgres store in the configuration");
            };
            let mut store = stores::pg_store(&name, p).await?;
            let h = store
                .slot_health()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            print_cdc_status(&name, p, &h, json)
        }
        crate::CdcAction::Reset { store, wait } => {
            crate::operator::cdc_reset(cfg, &store, wait).await
        }
    }
}

/// Runs the safety checks over the configured stores.
pub async fn safety_report(
    cfg: &Config,
    config_path: Option<&std::path::Path>,
) -> anyhow::Result<contact_sync_ops::CheckReport> {
    // A store that cannot even be opened is a failed check, not an error
    // of the command: the other checks still run.
    let mut opened: Vec<Box<dyn contact_sync_connector::Store>> = Vec::new();
    let mut unreachable: Vec<contact_sync_ops::Check> = Vec::new();
    let named = std::iter::once((CANONICAL.to_string(), cfg.canonical()))
        .chain(cfg.stores().iter().map(|(n, c)| (n.clone(), c)));
    for (name, sc) in named {
        match stores::open_store(cfg, &name, sc).await {
            Ok(s) => opened.push(s),
            Err(e) => unreachable.push(contact_sync_ops::Check::fail(
                format!("{name}: reachable"),
                format!("{e:#}"),
                "check the address, the credentials and that the store is running",
            )),
        }
    }
    let state_target = cfg.state_target()?;
    let all: Vec<&mut dyn contact_sync_connector::Store> = opened
        .iter_mut()
        .map(|s| s.as_mut() as &mut dyn contact_sync_connector::Store)
        .collect();
    let mut extra: Vec<Box<dyn contact_sync_ops::SafetyCheck>> =
        vec![Box::new(crate::checks::Fixed(unreachable))];
    let bigquery = std::iter::once((CANONICAL, cfg.canonical()))
        .chain(cfg.stores().iter().map(|(n, c)| (n.as_str(), c)))
        .filter_map(|(name, sc)| match sc {
            crate::config::StoreConfig::Bigquery(b) => Some((name, b)),
            _ => None,
        });
    for (name, b) in bigquery {
        match stores::bigquery_parts(name, b) {
            Ok((client, cfg)) => extra.push(Box::new(crate::checks::BigQueryCheck {
                name: name.to_string(),
                client,
                cfg,
            })),
            Err(e) => {
                tracing::debug!(store = %name, error = %e, "reported by the reachability check")
            }
        }
    }
    for (name, sc) in cfg.stores() {
        match sc {
            crate::config::StoreConfig::Postgres(p) => match stores::pg_store(name, p).await {
                Ok(store) => extra.push(Box::new(crate::checks::PgCdcCheck {
                    name: name.clone(),
                    store,
                    wal_warn_bytes: cfg.alerts.slot_wal_bytes(),
                })),
                Err(e) => {
                    tracing::debug!(store = %name, error = %e, "reported by the reachability check")
                }
            },
            crate::config::StoreConfig::Twenty(t) => {
                let store = stores::twenty_store(name, t)?;
                let pending = match open_state(cfg) {
                    Ok(st) => st.journal_head()? - st.cursor(name)?,
                    Err(_) => 0,
                };
                extra.push(Box::new(crate::checks::TwentySetupCheck {
                    name: name.clone(),
                    store,
                    pending,
                    interval_secs: cfg.sync.interval_secs,
                }));
            }
            _ => {}
        }
    }
    let has_secrets = match config_path {
        Some(p) => std::fs::read_to_string(p)
            .ok()
            .and_then(|t| t.parse::<toml::Table>().ok())
            .is_some_and(|t| holds_inline_secret(&t, "")),
        None => false,
    };
    Ok(contact_sync_ops::run_checks(contact_sync_ops::CheckInputs {
        config_path,
        config_has_secrets: has_secrets,
        state: &state_target,
        stores: all,
        extra,
        thresholds: contact_sync_ops::CheckThresholds::default(),
        now: contact_sync_core::model::now(),
    })
    .await)
}

/// Whether a configuration holds a secret written out in it (rather than
/// a `{ env = … }`, `{ file = … }` or `{ command = … }` reference): an API
/// key, webhook secret or password given as a plain string, a URL with a
/// password in it, or the alert webhook URL (such URLs carry their token).
fn holds_inline_secret(t: &toml::Table, path: &str) -> bool {
    t.iter().any(|(k, v)| {
        let here = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        match v {
            toml::Value::Table(inner) => holds_inline_secret(inner, &here),
            toml::Value::String(s) => {
                let key = k.to_ascii_lowercase();
                let secret_key = ["api_key", "secret", "password", "token"]
                    .iter()
                    .any(|w| key.contains(w));
                let url_with_password = key.ends_with("url")
                    && s.split_once("://").is_some_and(|(_, rest)| {
                        rest.split('/')
                            .next()
                            .and_then(|auth| auth.rsplit_once('@'))
                            .is_some_and(|(user, _)| user.contains(':'))
                    });
                let alert_url = here == "alerts.webhook_url";
                (secret_key && !s.is_empty()) || url_with_password || alert_url
            }
            _ => false,
        }
    })
}

/// `cdc status`: the change capture of a Postgres store, as a table or
/// JSON. Exit 1 when it is broken (no slot, or `wal_level` not logical in
/// slot mode).
fn print_cdc_status(
    name: &str,
    p: &crate::config::PostgresConfig,
    h: &contact_sync_postgres::SlotHealth,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let slot_mode = h.mode == contact_sync_postgres::CdcMode::Slot;
    let slot_name = p
        .slot_name
        .clone()
        .unwrap_or_else(|| contact_sync_postgres::PgConfig::new(name, "").slot_name);
    let healthy = !slot_mode || (h.exists && h.wal_level == "logical");
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "store": name,
                "mode": if slot_mode { "slot" } else { "outbox" },
                "wal_level": h.wal_level,
                "slot": slot_mode.then_some(&slot_name),
                "slot_exists": h.exists,
                "slot_active": h.active,
                "retained_wal_bytes": h.retained_wal_bytes,
                "confirmed_flush_lsn": h.confirmed_flush_lsn,
                "outbox_pending": h.outbox_pending,
                "healthy": healthy,
            }))?
        );
    } else {
        println!("{:<16} {name}", "store");
        if slot_mode {
            println!("{:<16} logical replication slot", "change capture");
            println!(
                "{:<16} {}{}",
                "wal_level",
                h.wal_level,
                if h.wal_level == "logical" {
                    ""
                } else {
                    "  (needs `logical`: set wal_level = logical and restart Postgres)"
                }
            );
            println!(
                "{:<16} {slot_name}: {}",
                "slot",
                match (h.exists, h.active) {
                    (false, _) =>
                        "MISSING (run `contact-sync cdc reset` or `contact-sync migrate`)",
                    (true, true) => "present, being read now",
                    (true, false) => "present, idle between reads",
                }
            );
            if let Some(b) = h.retained_wal_bytes {
                println!("{:<16} {:.1} MiB", "retained WAL", b as f64 / 1048576.0);
            }
            if let Some(l) = &h.confirmed_flush_lsn {
                println!("{:<16} {l}", "confirmed up to");
            }
        } else {
            println!("{:<16} outbox table (triggers)", "change capture");
            if let Some(n) = h.outbox_pending {
                println!("{:<16} {n} rows", "outbox pending");
            }
        }
    }
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// A closed stdout (`contact-sync dead-letters list --json | head -1`)
/// ends the command quietly instead of with a panic: the reader has what
/// it wanted.
pub fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info)
    }));
}

/// Opens a store by name (`canonical` or a configured store).
async fn open_named(
    cfg: &Config,
    name: &str,
) -> anyhow::Result<Box<dyn contact_sync_connector::Store>> {
    if name == CANONICAL {
        return stores::open_canonical(cfg).await;
    }
    let sc = cfg
        .stores()
        .get(name)
        .with_context(|| format!("no store named {name:?} in the configuration"))?;
    stores::open_store(cfg, name, sc).await
}

async fn prompt(
    cfg: &Config,
    ids: &[String],
    base: Option<&str>,
    source: Option<&str>,
    opts: &PromptOptions,
) -> anyhow::Result<ExitCode> {
    let name = source.unwrap_or(CANONICAL);
    let mut store = open_named(cfg, name).await?;
    let mut found = store.read(ids).await?;
    let mut ordered = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(i) = found.iter().position(|c| &c.contact_id == id) else {
            anyhow::bail!("contact {id} is not in store {name}");
        };
        let mut c = found.swap_remove(i);
        c.normalize();
        ordered.push(c);
    }
    warn_dead_letters(cfg, ids);
    let p = match (base, ordered.as_slice()) {
        (Some(b), [one]) => build_prompt_with_contact(b, one, opts)?,
        (base, many) => {
            let mut p = build_multi_contact_context(many, opts)?;
            if let Some(b) = base.filter(|b| !b.trim().is_empty()) {
                p.text = format!("{}\n\n{}", b.trim_end(), p.text);
            }
            p
        }
    };
    println!("{}", p.text);
    Ok(ExitCode::SUCCESS)
}

/// Dead letters looked at for `prompt`'s warning (the newest first).
const PROMPT_DEAD_LETTER_SCAN: usize = 10_000;

/// `prompt` renders a contact that has dead letters (the store holds the
/// last valid version; an edit somewhere was refused), and says so on
/// stderr, naming each dead letter: the prompt is a read-only view a person
/// asked for, and refusing would hide the contact with no way around it.
fn warn_dead_letters(cfg: &Config, ids: &[String]) {
    if !state_exists(cfg).unwrap_or(false) {
        return;
    }
    let Ok(state) = open_state(cfg) else {
        return;
    };
    let Ok(rows) = state.dead_letters(PROMPT_DEAD_LETTER_SCAN) else {
        return;
    };
    for d in rows.iter().filter(|d| ids.contains(&d.record)) {
        eprintln!(
            "warning: contact {} has dead letter #{} ({} store, field `{}`): a change to it was refused; \
             the prompt shows the last valid version (see `contact-sync dead-letters list`)",
            d.record, d.id, d.store, d.field
        );
    }
}

/// Opens the state database, creating it (and its directory) when missing.
/// A state database that exists but cannot be read is refused with what
/// to do about it.
pub fn open_state(cfg: &Config) -> anyhow::Result<StateDb> {
    let target = cfg.state_target()?;
    let StateTarget::Path(path) = &target else {
        let mut state = StateDb::open_target(&target)?;
        // A daemon holding leases: every commit of every connection it
        // opens checks that it still holds them all.
        state.set_fences(crate::cluster::current_fences());
        return Ok(state);
    };
    let existed = path.exists();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    match StateDb::open(path) {
        Ok(s) => Ok(s),
        Err(e) => {
            let text = e.to_string();
            let busy = text.contains("locked") || text.contains("busy");
            if existed && !busy {
                Err(anyhow::anyhow!(
                    "{text}\nhint: the state database is damaged or not one. Restore it from a backup \
                     (stop the daemon, copy the backup to {p}), or move it aside and start over with \
                     `contact-sync run --initial-sync` (its history, conflicts and dead letters are then \
                     lost, and every store is copied again from canonical)",
                    p = path.display()
                ))
            } else {
                Err(e.into())
            }
        }
    }
}

/// Whether the state database exists (a SQLite file, or a Postgres
/// database set up by contact-sync); creates nothing.
pub fn state_exists(cfg: &Config) -> anyhow::Result<bool> {
    Ok(StateDb::exists(&cfg.state_target()?)?)
}

/// Refuses when there is no state database: nothing is set up here (the
/// read-only and operator commands never create one).
pub fn require_state(cfg: &Config) -> anyhow::Result<()> {
    if state_exists(cfg)? {
        return Ok(());
    }
    anyhow::bail!(
        "nothing is set up here: there is no state database at {}. Run this where contact-sync \
         keeps its data, or pass --config with the configuration the daemon uses \
         (to set up: `contact-sync run --initial-sync`)",
        cfg.state_target()?.describe()
    )
}

/// Takes the single-daemon lock of the state database.
pub fn take_lock(state: &StateDb) -> anyhow::Result<contact_sync_state::StateLock> {
    match state.lock() {
        Ok(l) => Ok(l),
        Err(contact_sync_state::StateError::Locked { path, pid, since }) => Err(anyhow::anyhow!(
            "state database {} is in use by another contact-sync (pid {pid}, since {since}). \
             Stop it first (e.g. `systemctl stop contact-sync`, or `kill -TERM {}`); \
             never run two daemons on the same stores",
            path.display(),
            pid.split_whitespace().next().unwrap_or(&pid)
        )),
        Err(e) => Err(e.into()),
    }
}

/// `run` without a state database: refused when a store already holds
/// contacts (a lost state database would otherwise silently start over:
/// history, dead letters and conflicts gone, every store overwritten from
/// canonical) unless `--initial-sync` says to start (over).
pub async fn refuse_missing_state(cfg: &Config) -> anyhow::Result<()> {
    if state_exists(cfg)? {
        return Ok(());
    }
    let mut holding = Vec::new();
    let named = std::iter::once((CANONICAL.to_string(), cfg.canonical()))
        .chain(cfg.stores().iter().map(|(n, c)| (n.clone(), c)));
    for (name, sc) in named {
        // Only a database that exists can hold data (opening a SQLite
        // store would create it).
        if let crate::config::StoreConfig::Sqlite { path } = sc {
            if !cfg.sqlite_path(&name, path).exists() {
                continue;
            }
        }
        let Ok(mut store) = stores::open_store(cfg, &name, sc).await else {
            continue;
        };
        if let Ok(n) = store.count().await {
            if n > 0 {
                holding.push(format!("{name} ({n} contacts)"));
            }
        }
    }
    if holding.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "there is no state database at {}, but {} already hold data. If the state database was \
         lost, restore it from a backup: it holds the sync history, conflicts and dead letters. \
         To start over on purpose (first start with existing data, or the state is gone for good), \
         run `contact-sync run --initial-sync`: every store is then copied again from canonical",
        cfg.state_target()?.describe(),
        holding.join(", ")
    )
}

async fn seed_contacts(
    cfg: &Config,
    n: u64,
    invalid: u64,
    seed: u64,
    first: u64,
) -> anyhow::Result<ExitCode> {
    let mut canonical = stores::open_canonical(cfg).await?;
    let mut g = Generator::new(seed);
    let mut batch: Vec<Contact> = Vec::with_capacity(1000);
    let mut written = 0u64;
    for i in first..first + n + invalid {
        let c = if i < first + n {
            g.contact(i)
        } else {
            g.invalid_contact(i).0
        };
        batch.push(c);
        if batch.len() == 1000 {
            written += canonical.write_batch(&batch).await?.len() as u64;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        written += canonical.write_batch(&batch).await?.len() as u64;
    }
    // Tell the daemon to copy the new contacts everywhere at its next cycle.
    let mut state = open_state(cfg)?;
    let tx = state.tx()?;
    tx.set_meta(
        "backfill_requested_at",
        &format_ts(&contact_sync_core::model::now()),
    )?;
    tx.commit()?;
    println!(
        "seeded {written} contacts ({n} valid, {invalid} invalid on purpose) into the canonical store"
    );
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct StatusReport {
    running: bool,
    pid: Option<String>,
    since: Option<String>,
    canonical_contacts: u64,
    journal_head: i64,
    conflicts_open: u64,
    dead_letters: u64,
    stores: Vec<StoreLine>,
    /// Stores held back by a guard until a person decides.
    paused: Vec<contact_sync_state::PausedStore>,
    /// Operator requests the daemon has not finished (queued or running).
    requests: Vec<contact_sync_state::Request>,
    /// BigQuery's cost and journal table, when canonical is BigQuery.
    #[serde(skip_serializing_if = "Option::is_none")]
    bigquery: Option<crate::bq_wiring::BigQueryStatus>,
    /// Several daemons on a Postgres state database: who holds what.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    leases: Vec<contact_sync_state::lease::LeaseRow>,
}

#[derive(Serialize)]
struct StoreLine {
    store: String,
    contacts: Option<u64>,
    last_success: Option<String>,
    pending: i64,
    consecutive_errors: u64,
    last_error: Option<String>,
    drift_pct: Option<f64>,
    drift_checked_at: Option<String>,
    /// WAL a Postgres store's replication slot keeps, in bytes.
    retained_wal_bytes: Option<i64>,
}

async fn status(cfg: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let state = open_state(cfg)?;
    // On Postgres, the daemon holding the lease when several share it.
    let holder = state.lock_holder()?;
    let leases = state.leases()?;
    let head = state.journal_head()?;
    let mut canonical = stores::open_canonical(cfg).await?;
    let canonical_contacts = canonical.count().await?;
    let mut lines = Vec::new();
    let mut names = vec![CANONICAL.to_string()];
    names.extend(cfg.stores().keys().cloned());
    for name in names {
        let st = state.store_status(&name)?;
        let contacts = if name == CANONICAL {
            Some(canonical_contacts)
        } else {
            let sc = &cfg.stores()[&name];
            match stores::open_store(cfg, &name, sc).await {
                Ok(mut s) => s.count().await.ok(),
                Err(_) => None,
            }
        };
        let mut retained_wal_bytes = None;
        if let Some(crate::config::StoreConfig::Postgres(p)) = cfg.stores().get(&name) {
            if let Ok(mut pg) = stores::pg_store(&name, p).await {
                retained_wal_bytes = pg
                    .slot_health()
                    .await
                    .ok()
                    .and_then(|h| h.retained_wal_bytes);
            }
        }
        let drift: Option<serde_json::Value> = state
            .meta(&format!("drift:{name}"))?
            .and_then(|s| serde_json::from_str(&s).ok());
        lines.push(StoreLine {
            pending: head - state.cursor(&name)?,
            contacts,
            last_success: st.last_success.map(|t| format_ts(&t)),
            consecutive_errors: st.consecutive_errors,
            last_error: st.last_error,
            drift_pct: drift.as_ref().and_then(|d| d["drift_pct"].as_f64()),
            retained_wal_bytes,
            drift_checked_at: drift
                .as_ref()
                .and_then(|d| d["checked_at"].as_str().map(str::to_string)),
            store: name,
        });
    }
    let report = StatusReport {
        running: holder.is_some(),
        pid: holder.as_ref().map(|h| h.0.clone()),
        since: holder.as_ref().map(|h| h.1.clone()),
        canonical_contacts,
        journal_head: head,
        conflicts_open: state.open_conflict_count()?,
        dead_letters: state.open_dead_letter_count()?,
        stores: lines,
        paused: state.paused_stores()?,
        requests: state.unfinished_requests()?,
        bigquery: crate::bq_wiring::status(cfg, &state)?,
        leases,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    match (&report.pid, &report.since) {
        _ if !report.leases.is_empty() => {
            for l in &report.leases {
                if l.name.starts_with("member:") {
                    // A daemon's membership: only the running ones.
                    if l.live {
                        println!(
                            "daemon {} ({}): running since {}, renewed {}",
                            l.holder, l.info, l.acquired_at, l.heartbeat_at
                        );
                    }
                } else if l.live {
                    println!(
                        "lease {}: held by {} ({}), token {}, since {}, renewed {}, expires {}",
                        l.name,
                        l.holder,
                        l.info,
                        l.token,
                        l.acquired_at,
                        l.heartbeat_at,
                        l.expires_at
                    );
                } else {
                    println!(
                        "lease {}: free since {4}: no daemon holds it (last {} ({}), token {}); a waiting daemon takes it at its next poll",
                        l.name, l.holder, l.info, l.token, l.expires_at
                    );
                }
            }
        }
        (Some(pid), Some(since)) => println!("daemon: running (pid {pid}, since {since})"),
        _ => println!("daemon: not running"),
    }
    println!("canonical contacts: {}", report.canonical_contacts);
    println!("journal entries: {}", report.journal_head);
    println!(
        "{:<12} {:>9} {:<28} {:>8} {:>7} {:>8}",
        "store", "contacts", "last successful sync", "pending", "errors", "drift"
    );
    for l in &report.stores {
        println!(
            "{:<12} {:>9} {:<28} {:>8} {:>7} {:>8}",
            l.store,
            l.contacts.map_or("?".into(), |c| c.to_string()),
            l.last_success.clone().unwrap_or_else(|| "never".into()),
            l.pending,
            l.consecutive_errors,
            l.drift_pct.map_or("-".into(), |d| format!("{d:.2} %")),
        );
        if let Some(e) = &l.last_error {
            println!("{:<12} last error: {e}", "");
        }
        if let Some(w) = l.retained_wal_bytes {
            println!(
                "{:<12} replication slot retains {:.1} MiB of WAL",
                "",
                w as f64 / 1048576.0
            );
        }
    }
    println!("conflicts open: {}", report.conflicts_open);
    println!("dead letters: {}", report.dead_letters);
    if let Some(b) = &report.bigquery {
        crate::bq_wiring::print_status(b);
    }
    for r in &report.requests {
        println!(
            "request #{} {} {} ({} since {}): the daemon carries it out between its cycles",
            r.id,
            r.kind,
            r.args,
            r.status.as_str(),
            format_ts(&r.started_at.unwrap_or(r.created_at)),
        );
    }
    for p in &report.paused {
        println!(
            "PAUSED {} ({}): {} — see `contact-sync paused`",
            p.store,
            p.label(),
            p.reason
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(cfg: &Config, id: &str, store: Option<&str>, json: bool) -> anyhow::Result<ExitCode> {
    let name = store.unwrap_or(CANONICAL);
    let mut s = open_named(cfg, name).await?;
    let found = s.read(&[id.to_string()]).await?;
    let Some(c) = found.into_iter().next() else {
        eprintln!("contact {id} is not in store {name}");
        return Ok(ExitCode::from(1));
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        let v = serde_json::to_value(&c)?;
        if let serde_json::Value::Object(m) = v {
            for (k, v) in m {
                if v.is_null() || v == serde_json::json!([]) || v == serde_json::json!({}) {
                    continue;
                }
                println!(
                    "{k:<20} {}",
                    if let Some(s) = v.as_str() {
                        s.to_string()
                    } else {
                        v.to_string()
                    }
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn conflicts_list(cfg: &Config, json: bool, all: bool) -> anyhow::Result<ExitCode> {
    let state = open_state(cfg)?;
    let rows = state.conflicts(!all)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no {}conflicts", if all { "" } else { "open " });
    }
    for r in rows {
        println!(
            "#{} {} contact {} field {} ({}): canonical v{} {} | {} v{} {} (rule: {})",
            r.id,
            format_ts(&r.created_at),
            r.contact_id,
            r.conflict.field,
            r.status,
            r.conflict.canonical_version,
            r.conflict.canonical,
            r.store,
            r.conflict.incoming_version,
            r.conflict.incoming,
            r.conflict.resolution.as_str(),
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::holds_inline_secret;

    fn secret(toml_text: &str) -> bool {
        holds_inline_secret(&toml_text.parse::<toml::Table>().unwrap(), "")
    }

    #[test]
    fn only_secrets_written_out_count_as_secrets_in_the_config() {
        assert!(!secret(
            "[stores.t]\napi_key = { env = \"K\" }\nwebhook_secret = { file = \"/run/s\" }\n\n[stores.p]\nurl = { command = [\"vault\", \"read\"] }\n[alerts]\nwebhook_url = { env = \"HOOK\" }\n"
        ));
        assert!(!secret(
            "[stores.t]\nbase_url = \"https://crm.example.com\"\n"
        ));
        assert!(secret("[stores.t]\napi_key = \"abc\"\n"));
        assert!(secret(
            "[stores.t]\nbase_url = \"https://u:pw@crm.example.com/x\"\n"
        ));
        assert!(secret(
            "[alerts]\nwebhook_url = \"https://hooks.example.com/T0/abc\"\n"
        ));
    }
}
