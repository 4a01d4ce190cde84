//! `contact-sync import FILE`: address books (vCard 4.0/3.0, Google
//! Contacts CSV) into canonical, through validation and identity matching
//! (see `contact_sync_engine::import`). The summary is printed before
//! anything is written; `--dry-run` prints it only.
//!
//! While a daemon runs, the write is queued as an operator request (the
//! records travel in it) and carried out by the daemon between its
//! cycles, waited for up to `--wait` seconds (exit 3 when not done yet).
//!
//! Exit codes: 0 every record imported (or already there); 1 some records
//! refused (the others were written); 2 the file cannot be read or its
//! format is unknown.

use std::path::Path;
use std::process::ExitCode;

use clap::ValueEnum;
use contact_sync_core::{Contact, Email, Phone};
use contact_sync_engine::{ImportAction, ImportRecord, ImportReport};

use crate::config::{Config, ConfigError};

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ImportFormat {
    /// vCard 4.0 (RFC 6350) or 3.0.
    Vcard,
    /// Google Contacts export ("Google CSV").
    GoogleCsv,
}

fn usage(msg: String) -> anyhow::Error {
    ConfigError(msg).into()
}

/// The format from the file name when not given.
fn format_of(path: &Path, given: Option<ImportFormat>) -> anyhow::Result<ImportFormat> {
    if let Some(f) = given {
        return Ok(f);
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("vcf" | "vcard") => Ok(ImportFormat::Vcard),
        Some("csv") => Ok(ImportFormat::GoogleCsv),
        _ => Err(usage(format!(
            "cannot tell the format of {} from its name: pass --format vcard or --format google-csv",
            path.display()
        ))),
    }
}

/// Reads the vCard cards of a file as import records.
pub fn vcard_records(bytes: &[u8]) -> Vec<ImportRecord> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    contact_sync_core::vcard::from_vcards(bytes)
        .into_iter()
        .map(|card| {
            let record = match &card.contact {
                Ok(c) if !c.canonical_name.is_empty() => {
                    format!("card {} ({})", card.index, c.canonical_name)
                }
                _ => format!("card {}", card.index),
            };
            ImportRecord {
                record,
                contact: card.contact,
            }
        })
        .collect()
}

/// Google writes several values in one cell separated by ` ::: `, and marks
/// the primary one's label with a leading `* `.
fn multi(v: &str) -> impl Iterator<Item = &str> {
    v.split(":::").map(str::trim).filter(|s| !s.is_empty())
}

fn label_of(l: &str) -> (Option<String>, bool) {
    let l = l.trim();
    let (l, primary) = match l.strip_prefix('*') {
        Some(rest) => (rest.trim(), true),
        None => (l, false),
    };
    ((!l.is_empty()).then(|| l.to_lowercase()), primary)
}

/// Reads a Google Contacts CSV (the current layout: "First Name",
/// "E-mail 1 - Label", "Organization Name"…, and the older one: "Given
/// Name", "E-mail 1 - Type", "Organization 1 - Name"…).
pub fn google_csv_records(bytes: &[u8]) -> anyhow::Result<Vec<ImportRecord>> {
    // Google writes a UTF-8 byte order mark.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut rdr = csv::ReaderBuilder::new().flexible(true).from_reader(bytes);
    let headers = rdr
        .headers()
        .map_err(|e| usage(format!("cannot read the CSV header: {e}")))?
        .clone();
    let col = |names: &[&str]| {
        names.iter().find_map(|n| {
            headers
                .iter()
                .position(|h| h.trim().eq_ignore_ascii_case(n))
        })
    };
    let first = col(&["First Name", "Given Name"]);
    let last = col(&["Last Name", "Family Name"]);
    let name = col(&["Name"]);
    if first.is_none() && last.is_none() && name.is_none() {
        return Err(usage(
            "this CSV has none of the columns of a Google Contacts export (\"First Name\", \"Last Name\", \"Name\")"
                .into(),
        ));
    }
    let middle = col(&["Middle Name", "Additional Name"]);
    let prefix = col(&["Name Prefix"]);
    let suffix = col(&["Name Suffix"]);
    let nickname = col(&["Nickname"]);
    let org = col(&["Organization Name", "Organization 1 - Name"]);
    let title = col(&["Organization Title", "Organization 1 - Title"]);
    let dept = col(&["Organization Department", "Organization 1 - Department"]);
    let notes = col(&["Notes"]);
    let labels = col(&["Labels", "Group Membership"]);
    let numbered = |kind: &str| {
        let mut out = Vec::new();
        for n in 1.. {
            let value = col(&[&format!("{kind} {n} - Value")]);
            let Some(value) = value else { break };
            let label = col(&[
                &format!("{kind} {n} - Label"),
                &format!("{kind} {n} - Type"),
            ]);
            out.push((label, value));
        }
        out
    };
    let email_cols = numbered("E-mail");
    let phone_cols = numbered("Phone");
    let mut out = Vec::new();
    for (i, row) in rdr.records().enumerate() {
        // Row 1 is the header.
        let line = i + 2;
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                out.push(ImportRecord {
                    record: format!("row {line}"),
                    contact: Err(format!("unreadable CSV row: {e}")),
                });
                continue;
            }
        };
        let get = |c: Option<usize>| {
            c.and_then(|c| row.get(c))
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let mut c = Contact::new("", "");
        c.first_name = get(first);
        c.last_name = get(last);
        c.middle_name = get(middle);
        c.name_prefix = get(prefix);
        c.name_suffix = get(suffix);
        c.nickname = get(nickname);
        c.organization = get(org);
        c.job_title = get(title);
        c.department = get(dept);
        c.notes = get(notes);
        c.canonical_name =
            get(name).unwrap_or_else(|| contact_sync_core::vcard::name_from_parts(&c));
        if let Some(l) = get(labels) {
            for t in multi(&l) {
                // Google's own system groups, not the user's labels.
                if !t.starts_with('*') && !t.eq_ignore_ascii_case("myContacts") {
                    c.tags.push(t.to_string());
                }
            }
        }
        for (lc, vc) in &email_cols {
            let (label, primary) = get(*lc).as_deref().map_or((None, false), label_of);
            for (k, address) in get(Some(*vc))
                .iter()
                .flat_map(|v| multi(v).map(str::to_string).collect::<Vec<_>>())
                .enumerate()
            {
                c.emails.push(Email {
                    address,
                    label: label.clone(),
                    is_primary: primary && k == 0 && !c.emails.iter().any(|e| e.is_primary),
                });
            }
        }
        for (lc, vc) in &phone_cols {
            let (label, primary) = get(*lc).as_deref().map_or((None, false), label_of);
            for (k, number) in get(Some(*vc))
                .iter()
                .flat_map(|v| multi(v).map(str::to_string).collect::<Vec<_>>())
                .enumerate()
            {
                c.phones.push(Phone {
                    number,
                    label: label.clone(),
                    is_primary: primary && k == 0 && !c.phones.iter().any(|p| p.is_primary),
                });
            }
        }
        let record = if c.canonical_name.is_empty() {
            format!("row {line}")
        } else {
            format!("row {line} ({})", c.canonical_name)
        };
        out.push(ImportRecord {
            record,
            contact: Ok(c),
        });
    }
    Ok(out)
}

fn print_summary(r: &ImportReport, dry_run: bool) {
    for i in &r.items {
        let id = i.contact_id.as_deref().unwrap_or("-");
        match i.action {
            ImportAction::New => println!("  new        {}  -> {id}", i.record),
            ImportAction::Updated => {
                println!(
                    "  updated    {}  -> {id} ({})",
                    i.record,
                    i.fields.join(", ")
                )
            }
            ImportAction::Unchanged => println!("  unchanged  {}  -> {id}", i.record),
            ImportAction::Refused => println!(
                "  REFUSED    {}  field {}: {}",
                i.record,
                i.fields.first().map_or("record", String::as_str),
                i.reason.as_deref().unwrap_or("")
            ),
        }
    }
    println!(
        "{}: {} new, {} updated, {} unchanged, {} refused",
        if dry_run {
            "nothing written"
        } else {
            "to import"
        },
        r.new,
        r.updated,
        r.unchanged,
        r.refused
    );
}

pub async fn import(
    cfg: &Config,
    file: &Path,
    format: Option<ImportFormat>,
    dry_run: bool,
    json: bool,
    wait: u64,
) -> anyhow::Result<ExitCode> {
    let format = format_of(file, format)?;
    let bytes =
        std::fs::read(file).map_err(|e| usage(format!("cannot read {}: {e}", file.display())))?;
    let records = match format {
        ImportFormat::Vcard => vcard_records(&bytes),
        ImportFormat::GoogleCsv => google_csv_records(&bytes)?,
    };
    if records.is_empty() {
        return Err(usage(format!("{} holds no contacts", file.display())));
    }
    if let [ImportRecord {
        contact: Err(why), ..
    }] = records.as_slice()
    {
        if format == ImportFormat::Vcard {
            return Err(usage(format!(
                "{} is not a vCard file: {why}",
                file.display()
            )));
        }
    }
    // Classify everything first (read only), print, then write.
    let mut reader = crate::daemon::build_readonly_engine(cfg).await?;
    let plan = reader.import(records.clone(), true).await?;
    drop(reader);
    let report = if dry_run || plan.new + plan.updated == 0 {
        plan
    } else {
        if !json {
            print_summary(&plan, false);
        }
        let args = serde_json::json!({ "records": &records });
        let done = crate::requests::here_or_daemon(
            cfg,
            contact_sync_state::RequestKind::Import,
            args,
            "import",
            std::time::Duration::from_secs(wait),
            || async {
                let mut engine = crate::daemon::build_engine(cfg, None).await?;
                Ok(engine.import(records, false).await?)
            },
        )
        .await?;
        let done = match done {
            Ok(d) => d,
            Err(code) => return Ok(code),
        };
        if !json {
            println!(
                "written to canonical (origin import): {} new, {} updated; the daemon copies them to every store at its next cycle",
                done.new, done.updated
            );
        }
        done
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if !report.written {
        print_summary(&report, true);
    }
    Ok(if report.refused > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
