//! `contact-sync`: the command line and the daemon.

mod backfill;
mod bq_wiring;
mod checks;
mod cluster;
mod commands;
mod config;
mod daemon;
mod dead_letters;
mod duplicates;
mod guard;
mod import;
mod operator;
mod people;
mod requests;
mod retention;
mod secret;
mod state_cmd;
mod stores;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// mimalloc: the engine allocates and frees many mid-sized contact records;
/// glibc's malloc spent a fifth of an initial sync consolidating free lists.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Keeps contacts identical across BigQuery, Twenty CRM, Supabase and a
/// local database. With no --config, everything lives in ./contact-sync-data/.
#[derive(Parser, Debug)]
#[command(name = "contact-sync", version, about)]
pub struct Cli {
    /// Configuration file (TOML). Default: the embedded SQLite set-up.
    #[arg(long, global = true, env = "CONTACT_SYNC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Log contact data unmasked (it is personal data; off by default:
    /// values quoted in log lines are masked, e.g. `"a***@e***"`).
    #[arg(long, global = true)]
    pub log_pii: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Put synthetic, realistic contacts into the canonical store.
    Seed {
        /// How many valid contacts.
        #[arg(long, default_value_t = 1000)]
        contacts: u64,
        /// How many invalid ones to add on purpose (they end up in dead letters).
        #[arg(long, default_value_t = 0)]
        invalid: u64,
        /// Random seed (same seed → same contacts).
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Index of the first contact (ids are c<index>).
        #[arg(long, default_value_t = 0)]
        first_index: u64,
    },
    /// The daemon: sync every --interval seconds and on change wake-ups
    /// until SIGINT/SIGTERM.
    Run {
        /// Backfill from canonical every store that has not finished a
        /// backfill, then verify it (a finished one is never redone by a
        /// restart; `contact-sync initial-sync` copies everything again).
        /// The daemon does this by itself for a store never backfilled.
        #[arg(long)]
        initial_sync: bool,
        /// Run one full cycle and exit.
        #[arg(long)]
        once: bool,
        /// Seconds between cycles (default from config, else 300).
        #[arg(long)]
        interval: Option<u64>,
        /// Changes per batch (default from config, else 100).
        #[arg(long)]
        batch_size: Option<usize>,
        /// Run the safety check first and refuse to start when it says UNSAFE.
        #[arg(long)]
        safety_check: bool,
        /// Address of the HTTP server (overrides `[server] listen`).
        #[arg(long)]
        http_listen: Option<std::net::SocketAddr>,
        /// No HTTP server (no /health, /metrics or webhooks).
        #[arg(long)]
        no_http: bool,
    },
    /// The safety checks: SAFE / SAFE_WITH_WARNINGS (exit 0) or UNSAFE (exit 1).
    Check {
        #[arg(long)]
        json: bool,
    },
    /// Print a service definition for this installation.
    Service {
        #[arg(value_enum)]
        kind: ServiceKind,
        /// User the service runs as (systemd).
        #[arg(long, default_value = "contact-sync")]
        user: String,
    },
    /// Backfill canonical → all stores with a progress bar, verify, print a summary.
    InitialSync {
        #[arg(long)]
        batch_size: Option<usize>,
    },
    /// Running or not, totals, per store: contacts, last sync, pending, errors, drift.
    Status {
        #[arg(long)]
        json: bool,
    },
    #[command(flatten)]
    People(people::PeopleCommand),
    /// One contact as a store holds it.
    Show {
        contact_id: String,
        /// Store to read from (default: canonical).
        #[arg(long)]
        store: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Likely duplicate contacts in canonical: the same email or phone, or
    /// a similar name (Jaro-Winkler) within the same organization; best
    /// first, at most --limit pairs.
    Duplicates {
        #[arg(long)]
        json: bool,
        /// Pairs to print at most.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Name similarity (0..1) from which two names of one organization
        /// are a likely pair.
        #[arg(long, default_value_t = 0.92)]
        min_score: f64,
    },
    /// Conflicts that need a person.
    Conflicts {
        #[command(subcommand)]
        action: ConflictAction,
    },
    /// Records refused by validation or by a store.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterAction,
    },
    /// Compare every store with canonical by content hash; --repair writes
    /// canonical's record again where a store lacks it or differs.
    /// Works while the daemon runs: a repair is then carried out by the
    /// daemon between its cycles, and waited for.
    Drift {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        repair: bool,
        /// With --repair while the daemon runs: seconds to wait for it
        /// (exit 3 when it has not finished by then; it stays queued).
        #[arg(long, default_value_t = 120, value_name = "SECS")]
        wait: u64,
    },
    /// Create what each store needs (tables, custom fields, webhooks).
    Migrate,
    /// Drop history older than `[state] retention_days` that nothing needs
    /// (the daemon does it daily; works while the daemon runs).
    Compact {
        #[arg(long)]
        json: bool,
    },
    /// The state database itself (moving it to Postgres).
    State {
        #[command(subcommand)]
        action: StateAction,
    },
    /// Change data capture of a database store.
    Cdc {
        #[command(subcommand)]
        action: CdcAction,
    },
    /// Stores paused by a guard (mass change, schema change) and why.
    Paused {
        #[arg(long)]
        json: bool,
    },
    /// Apply the changes a mass-change guard held back from STORE.
    Approve { store: String },
    /// Pass over the changes a mass-change guard held back from STORE and
    /// write canonical's records back to it.
    Reject { store: String },
    /// Try a store paused by the schema guard, or parked after a permanent
    /// error, again (once fixed).
    Resume { store: String },
    /// Build LLM prompt context from contacts.
    Prompt {
        /// Contact id (repeat for several contacts).
        #[arg(long = "contact", required = true)]
        contacts: Vec<String>,
        /// Text to put before the context.
        #[arg(long, conflicts_with = "base_prompt_file")]
        base_prompt: Option<String>,
        /// File whose text goes before the context.
        #[arg(long)]
        base_prompt_file: Option<PathBuf>,
        /// Store to read the contacts from (default: canonical).
        #[arg(long)]
        source: Option<String>,
        #[arg(long, value_enum, default_value_t = PromptFormatArg::Text)]
        format: PromptFormatArg,
        /// Token budget (approximate).
        #[arg(long, default_value_t = 2000)]
        max_tokens: usize,
        /// Let category X (Exclude) contacts into the prompt.
        #[arg(long)]
        allow_excluded: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum StateAction {
    /// Copy the SQLite state database (sync records, checkpoints, cursors,
    /// the journal, conflicts, dead letters, run history, pauses, requests,
    /// erasures, the search index) into the empty Postgres state database
    /// of `[state] url`, in one transaction, and verify the copy. The
    /// SQLite file is not changed. Needs every daemon and command on it
    /// stopped.
    MigrateToPostgres {
        /// The SQLite state database (default: `<data_dir>/state.db`).
        #[arg(long, value_name = "PATH")]
        from: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum CdcAction {
    /// Drop and recreate the replication slot (or outbox) of a Postgres
    /// store, then copy canonical to it again at the next cycle. While the
    /// daemon runs, the daemon does it between its cycles.
    Reset {
        store: String,
        /// While the daemon runs: seconds to wait for it (exit 3 when it
        /// has not finished by then; it stays queued).
        #[arg(long, default_value_t = 120, value_name = "SECS")]
        wait: u64,
    },
    /// Slot health: present, active, retained WAL (exit 1 when the slot
    /// or the outbox is missing).
    Status {
        store: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ServiceKind {
    Systemd,
    Launchd,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum PromptFormatArg {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum ConflictAction {
    /// Open conflicts (all with --all).
    List {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        all: bool,
    },
    /// Settle a conflict: keep the canonical value or take the incoming one
    /// (while the daemon runs: queued, and the daemon settles it between
    /// its cycles).
    Resolve {
        id: i64,
        #[arg(long, value_enum)]
        keep: Keep,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Keep {
    Canonical,
    Incoming,
}

#[derive(Subcommand, Debug)]
pub enum DeadLetterAction {
    /// The newest open dead letters (--all: dismissed and retried too).
    List {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Try the record again at the next cycle (works while the daemon runs).
    Retry { id: i64 },
    /// Leave it: off the open list (works while the daemon runs).
    Dismiss { id: i64 },
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    // tokio-postgres logs every server NOTICE ("already exists, skipping"
    // from the idempotent set-up) at info: shown only when asked for.
    let filter = EnvFilter::try_from_env("CONTACT_SYNC_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    commands::quiet_on_closed_stdout();
    let cli = Cli::parse();
    // Before anything is logged: contact values in log lines stay masked
    // unless --log-pii (the state database always keeps them in full).
    contact_sync_core::pii::set_log_pii(cli.log_pii);
    init_logging(cli.log_format);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(commands::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            if let Some(c) = e.downcast_ref::<config::ConfigError>() {
                eprintln!("error: {c}");
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
