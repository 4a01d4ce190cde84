//! People data commands: `forget` (erasure), `export` (access), `history`
//! (the journal made readable).

use std::process::ExitCode;

use clap::Subcommand;
use contact_sync_core::model::format_ts;
use contact_sync_core::JournalEntry;
use serde_json::Value;

use crate::commands::{open_state, require_state, take_lock};
use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum PeopleCommand {
    /// Erase a contact's personal data everywhere (right to erasure):
    /// canonical and every store get an empty tombstone, the journal's
    /// history of it, its conflicts and dead letters are scrubbed, and a
    /// record without personal data remains (id, when, stores that
    /// confirmed). Writes to the stores: takes the daemon's lock (stop the
    /// daemon first). Exit 1 while a store has not confirmed (it gets the
    /// erasure at the next cycle; run forget again to see).
    Forget {
        contact_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Everything held about a contact (right of access) as one JSON
    /// document: canonical, every store's record, the sync records, the
    /// journal, conflicts and dead letters. Reads only.
    Export { contact_id: String },
    /// A contact's history: when, which store, which fields from what to
    /// what, conflicts and how they were settled.
    History {
        contact_id: String,
        #[arg(long)]
        json: bool,
    },
    /// All live contacts of canonical as vCard 4.0 (RFC 6350) on stdout,
    /// or those of one category. Category X (Exclude) only when asked for.
    Vcard {
        /// Only this category (A..H, X).
        #[arg(long)]
        category: Option<String>,
    },
    /// Merge two contacts that are one person: KEEP takes what it lacks
    /// from OTHER (fields it does not have; OTHER's emails, phones and tags
    /// are added), OTHER is deleted; both journaled with origin `merge`,
    /// and the daemon carries it to every store. While the daemon runs it
    /// is queued for the daemon and waited for. Exit 2 when either is not
    /// a live contact.
    Merge {
        keep: String,
        other: String,
        /// Print what would change; write nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        /// While the daemon runs: seconds to wait for it to carry out the
        /// merge (exit 3 when it has not by then; it stays queued).
        #[arg(long, default_value_t = 120, value_name = "SECS")]
        wait: u64,
    },
    /// Import an address book (vCard 4.0/3.0 or a Google Contacts CSV)
    /// into canonical: each record is matched to an existing contact by
    /// primary email or phone (never duplicated), validated, and the
    /// summary (new, updated, unchanged, refused with record and field)
    /// printed before anything is written. Written with origin `import`;
    /// the daemon copies them to every store. While the daemon runs the
    /// write is queued for it and waited for. Exit 1 when records were
    /// refused, 2 when the file cannot be read, 3 when the daemon has not
    /// done it within --wait.
    Import {
        file: std::path::PathBuf,
        /// Default: from the file name (.vcf/.vcard, .csv).
        #[arg(long, value_enum)]
        format: Option<crate::import::ImportFormat>,
        /// Print the summary only; write nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
        /// While the daemon runs: seconds to wait for it to carry out the
        /// import (exit 3 when it has not by then; it stays queued).
        #[arg(long, default_value_t = 120, value_name = "SECS")]
        wait: u64,
    },
}

pub async fn dispatch(cfg: &Config, cmd: PeopleCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        PeopleCommand::Forget { contact_id, json } => forget(cfg, &contact_id, json).await,
        PeopleCommand::Export { contact_id } => export(cfg, &contact_id).await,
        PeopleCommand::History { contact_id, json } => history(cfg, &contact_id, json),
        PeopleCommand::Vcard { category } => vcard(cfg, category.as_deref()).await,
        PeopleCommand::Merge {
            keep,
            other,
            dry_run,
            json,
            wait,
        } => merge(cfg, &keep, &other, dry_run, json, wait).await,
        PeopleCommand::Import {
            file,
            format,
            dry_run,
            json,
            wait,
        } => crate::import::import(cfg, &file, format, dry_run, json, wait).await,
    }
}

async fn forget(cfg: &Config, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    require_state(cfg)?;
    let mut engine = crate::daemon::build_engine(cfg, None).await?;
    let _lock = take_lock(engine.state())?;
    let report = engine.forget(id).await?;
    let all = report.stores.iter().all(|s| s.confirmed);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "contact {id} erased at {} (tombstone version {})",
            format_ts(&report.erasure.erased_at),
            report.erasure.version
        );
        println!(
            "scrubbed: {} journal entries, {} conflicts, {} dead letters",
            report.journal_entries_scrubbed, report.conflicts_removed, report.dead_letters_removed
        );
        for s in &report.stores {
            match &s.detail {
                None => println!("  {:<12} confirmed", s.store),
                Some(d) => println!("  {:<12} NOT YET: {d}", s.store),
            }
        }
    }
    Ok(if all {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn merge(
    cfg: &Config,
    keep: &str,
    other: &str,
    dry_run: bool,
    json: bool,
    wait: u64,
) -> anyhow::Result<ExitCode> {
    require_state(cfg)?;
    // Checked first on a read-only engine (runs beside a daemon).
    let mut reader = crate::daemon::build_readonly_engine(cfg).await?;
    let plan = match reader.merge_contacts(keep, other, true).await {
        Ok(r) => r,
        Err(contact_sync_engine::EngineError::Request(msg)) => {
            eprintln!("error: {msg}");
            return Ok(ExitCode::from(2));
        }
        Err(e) => return Err(e.into()),
    };
    drop(reader);
    let report = if dry_run {
        plan
    } else {
        let done = crate::requests::here_or_daemon(
            cfg,
            contact_sync_state::RequestKind::Merge,
            serde_json::json!({ "keep": keep, "other": other }),
            "merge",
            std::time::Duration::from_secs(wait),
            || async {
                let mut engine = crate::daemon::build_engine(cfg, None).await?;
                Ok(engine.merge_contacts(keep, other, false).await?)
            },
        )
        .await?;
        match done {
            Ok(r) => r,
            Err(code) => return Ok(code),
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let fields = if report.fields.is_empty() {
            "nothing new".to_string()
        } else {
            report.fields.join(", ")
        };
        let verb = if report.written {
            "merged"
        } else {
            "would merge (nothing written)"
        };
        println!("{verb}: {other} into {keep}; {keep} takes: {fields}; {other} is deleted");
    }
    Ok(ExitCode::SUCCESS)
}

async fn export(cfg: &Config, id: &str) -> anyhow::Result<ExitCode> {
    require_state(cfg)?;
    let mut engine = crate::daemon::build_engine(cfg, None).await?;
    let doc = engine.export_contact(id).await?;
    let nothing = doc["canonical"].is_null()
        && doc["journal"].as_array().is_none_or(|j| j.is_empty())
        && doc["erasure"].is_null()
        && doc["stores"]
            .as_object()
            .is_none_or(|m| m.values().all(Value::is_null));
    if nothing {
        eprintln!("no contact {id} in any store or the state database");
        return Ok(ExitCode::from(2));
    }
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(ExitCode::SUCCESS)
}

fn short(v: &Value) -> String {
    match v {
        Value::Null => "(none)".into(),
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

fn history(cfg: &Config, id: &str, json: bool) -> anyhow::Result<ExitCode> {
    require_state(cfg)?;
    let state = open_state(cfg)?;
    let mut entries: Vec<JournalEntry> = state.journal_of(id, 1_000_000)?;
    entries.reverse();
    let conflicts = state.conflicts_of(id)?;
    let erasure = state.erasure(id)?;
    if entries.is_empty() && erasure.is_none() {
        eprintln!("no history of contact {id} (never journaled, or past the retention window)");
        return Ok(ExitCode::from(2));
    }
    if json {
        let doc = serde_json::json!({
            "contact_id": id,
            "entries": entries.iter().map(|e| serde_json::json!({
                "seq": e.seq,
                "at": format_ts(&e.at),
                "origin": e.origin,
                "op": e.op.as_str(),
                "version": e.version,
                "prev_version": e.prev_version,
                "changes": e.changes,
                "conflicts": e.conflicts,
            })).collect::<Vec<_>>(),
            "conflicts": conflicts,
            "erasure": erasure,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("history of {id}");
    for e in &entries {
        let what = match (e.op.as_str(), e.prev_version) {
            ("delete", _) => "deleted",
            (_, 0) => "created",
            _ => "updated",
        };
        println!(
            "{}  v{} {what} by {}",
            format_ts(&e.at),
            e.version,
            e.origin
        );
        for c in &e.changes {
            println!("    {}: {} -> {}", c.field, short(&c.old), short(&c.new));
        }
        for c in &e.conflicts {
            println!(
                "    conflict on {}: canonical v{} {} vs incoming v{} {}; settled: {}",
                c.field,
                c.canonical_version,
                short(&c.canonical),
                c.incoming_version,
                short(&c.incoming),
                c.resolution.as_str()
            );
        }
    }
    for c in &conflicts {
        if c["status"] == "open" {
            println!(
                "OPEN conflict #{} on {} (store {}): waiting for a person (contact-sync conflicts resolve {})",
                c["id"], c["field"].as_str().unwrap_or("?"), c["store"].as_str().unwrap_or("?"), c["id"]
            );
        }
    }
    if let Some(er) = erasure {
        println!(
            "{}  erased (contact-sync forget); confirmed by: {}",
            format_ts(&er.erased_at),
            er.confirmed.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn vcard(cfg: &Config, category: Option<&str>) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let mut canonical = crate::stores::open_canonical(cfg).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut after: Option<String> = None;
    let mut n = 0u64;
    loop {
        let page = canonical.scan(after.as_deref(), 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.contact_id.clone());
        for mut c in page {
            c.normalize();
            let cat = c.category_code.as_deref();
            let wanted = match category {
                Some(want) => cat.is_some_and(|c| c.eq_ignore_ascii_case(want)),
                None => cat != Some("X"),
            };
            if wanted && !c.is_deleted() {
                out.write_all(contact_sync_core::vcard::to_vcard(&c).as_bytes())?;
                n += 1;
            }
        }
    }
    out.flush()?;
    eprintln!("{n} contacts written as vCard 4.0");
    Ok(ExitCode::SUCCESS)
}
