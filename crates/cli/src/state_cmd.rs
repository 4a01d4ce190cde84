//! `contact-sync state migrate-to-postgres`: the SQLite state database
//! copied into the Postgres one of `[state] url` (the copy itself, its
//! checks and its verification are `contact_sync_state::copy_sqlite_to_postgres`).

use std::path::PathBuf;
use std::process::ExitCode;

use contact_sync_state::StateTarget;

use crate::config::Config;

pub fn migrate_to_postgres(
    cfg: &Config,
    from: Option<PathBuf>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let url = match cfg.state_target()? {
        StateTarget::Url(url) => url,
        StateTarget::Path(_) => anyhow::bail!(
            "state migrate-to-postgres copies into the Postgres state database of `[state] url`, \
             and this configuration has none: set `[state] url = {{ env = \"STATE_DB_URL\" }}` \
             (without `path`) and pass the SQLite file with --from PATH when it is not \
             <data_dir>/state.db"
        ),
    };
    let from = from.unwrap_or_else(|| cfg.state_path());
    let report = match contact_sync_state::copy_sqlite_to_postgres(&from, &url) {
        Ok(r) => r,
        Err(contact_sync_state::MigrateError::NoSource { path }) => anyhow::bail!(
            "there is no SQLite state database at {}: pass the file with --from PATH",
            path.display()
        ),
        Err(e) => return Err(e.into()),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("Copied the state database");
    println!(
        "  from {} (SQLite, left unchanged)",
        report.source.display()
    );
    println!("  into {} (Postgres)", report.target);
    let width = report
        .tables
        .iter()
        .map(|t| t.table.len())
        .max()
        .unwrap_or(5);
    println!("  {:<width$}  {:>10}", "table", "rows");
    for t in &report.tables {
        println!("  {:<width$}  {:>10}", t.table, t.rows);
    }
    let entries = report
        .tables
        .iter()
        .find(|t| t.table == "journal")
        .map_or(0, |t| t.rows);
    println!(
        "Verified in {:.1} s: every table's row count read back; the journal's {} entries \
         (up to seq {}) read back with the same SHA-256 {}. The next journal seq is {}.",
        report.seconds,
        entries,
        report.journal_max_seq,
        report.journal_sha256,
        report.journal_next_seq
    );
    println!(
        "Next: run contact-sync with this configuration; it goes on from where the SQLite \
         state database was (no initial sync again). Keep {} as a backup, and run no daemon \
         on it again.",
        report.source.display()
    );
    Ok(ExitCode::SUCCESS)
}
